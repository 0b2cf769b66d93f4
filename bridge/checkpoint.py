"""Checkpoints that rebuild their own model.

A checkpoint is a ``torch.save`` of a plain dict: ``format`` (``CHECKPOINT_FORMAT``), ``config``
(the ``ModelConfig`` as plain values: registry name and constructor arguments), ``state_dict``,
and any extra plain entries a caller adds (epoch, optimiser state, history). A checkpoint of a
``LinearizedNetwork`` (``bridge.linearized``) also records ``linearization``: ``{"centered": bool}``;
its config is the parent's, and loading wraps the rebuilt parent again; a ``CenteredStandardNetwork``
records ``{"centered": True, "kind": "standard", "batchnorm": ...}`` and its state dict holds both
the trained network and the spawn. A checkpoint of an
``OutputChange`` (f − f₀, ``bridge.two_layer``) stores the trained net's weights and
``minus_initial: True``; f₀ is the config's own initialisation, rebuilt from its seed. It is written
atomically (temporary file in the same folder, then rename) and read with
``torch.load(weights_only=True)``, so loading never runs code from the file.
"""

from __future__ import annotations

import errno
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntkrobust._messages import class_names_listed, first_line, name_problem
from ntkrobust.bridge.files import not_a_file, program_kind, refusal_reason, write_atomically
from ntkrobust.bridge.linearized import CenteredStandardNetwork, LinearizedNetwork
from ntkrobust.bridge.models import ModelConfig, ModelError, build_model
from ntkrobust.bridge.two_layer import OutputChange

CHECKPOINT_FORMAT = "ntkrobust-checkpoint-v1"


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this tool; the message is one line."""


class ForeignFileError(CheckpointError):
    """A file that is no checkpoint of this tool at all (it may be a TorchScript or .pt2 model),
    as against one of ours that is damaged or does not fit its config. ``program``: "a TorchScript
    program" or "an exported program (.pt2)" where the file is one (``files.program_kind``)."""

    def __init__(self, message: str, program: str | None = None) -> None:
        super().__init__(message)
        self.program = program


def save_checkpoint(path: str | Path, model: nn.Module, config: ModelConfig, **extra: Any) -> Path:
    """Write ``model``'s weights and ``config`` (plus ``extra`` entries) to ``path`` atomically.

    For a ``LinearizedNetwork``, ``config`` is its parent's, and ``linearization`` is recorded from
    the model (an extra ``linearization`` or ``minus_initial`` entry, e.g. passed on from a loaded
    payload, must agree with the model); an extra ``format`` or ``state_dict`` is
    refused (``ValueError``), since it would replace the checkpoint's own."""
    # (an extra ``config`` is already Python's TypeError: the parameter's name)
    fixed = [key for key in ("format", "state_dict") if key in extra]
    if fixed:  # would replace the tag that marks the file as ours, or the model's weights
        raise ValueError(f"extra entry {fixed[0]!r} would replace the checkpoint's own")
    recorded = _linearization(model)
    if extra.pop("linearization", recorded) != recorded:
        raise ValueError(f"the model's linearization is {recorded}, not the extra entry's")
    minus_initial = isinstance(model, OutputChange)
    if bool(extra.pop("minus_initial", minus_initial)) != minus_initial:  # loading would wrap it wrongly
        raise ValueError(f"the model is {'' if minus_initial else 'not '}an OutputChange, unlike the extra entry")
    if isinstance(model, OutputChange):  # f0 is rebuilt from the config's seed
        extra["minus_initial"] = True
        model = model.network
    payload = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "state_dict": model.state_dict(), **extra}
    if recorded is not None:
        payload["linearization"] = recorded
    return write_atomically(path, lambda temporary: _save(payload, temporary))


def trained_classes(payload: dict[str, Any]) -> tuple[str, ...] | None:
    """The names of the classes a checkpoint's net was trained on, in the order of its outputs, as
    the history that ``train`` stores in every checkpoint records them; None where the checkpoint
    records none (a two-layer net, a checkpoint written by hand)."""
    history = payload.get("history")
    names = history.get("class_names") if isinstance(history, dict) else None
    # names a message can print on one line, as train wrote them: a forged file's are not read
    if isinstance(names, list) and names and all(isinstance(n, str) and name_problem(n) is None for n in names):
        return tuple(names)
    return None


def trained_on(names: Sequence[str] | None, outputs: int) -> str:
    """What a refusal of a net of ``outputs`` outputs says of the task it was trained on: "; it was
    trained on the classes (3, 8): give that task's --classes" where its checkpoint records as many
    classes as it has outputs (``trained_classes``), else nothing; past ten classes, the first ten
    names and then ", ... (100 classes)"."""
    if names is None or len(names) != max(outputs, 2):  # one output: a binary task's two classes
        return ""
    return f"; it was trained on the classes ({class_names_listed(names)}): give that task's --classes"


def _linearization(model: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint records of a stage-2 wrapper (None for any other model)."""
    if isinstance(model, LinearizedNetwork):
        return {"centered": model.centered}
    if isinstance(model, CenteredStandardNetwork):
        return {"centered": True, "kind": "standard", "batchnorm": model.batchnorm}
    return None


def _wrapped(model: nn.Module, linearization: Any) -> nn.Module:
    """The stage-2 wrapper a checkpoint's ``linearization`` entry names, around ``model``."""
    if not isinstance(linearization, dict) or not isinstance(linearization.get("centered"), bool):
        raise TypeError(f"bad linearization entry {linearization!r}")
    kind = linearization.get("kind", "linearized")
    if kind == "standard":
        if not linearization["centered"]:  # the centered standard net is f - f0 by construction
            raise TypeError("bad linearization entry: a stage-2 standard net is centered, not centered: False")
        batchnorm = linearization.get("batchnorm", "frozen")
        if batchnorm not in ("frozen", "train"):  # the wrapper's ValueError would escape the loaders
            raise TypeError(f"bad linearization entry: stage-2 BatchNorm is frozen or train, not {batchnorm!r}")
        return CenteredStandardNetwork(model, batchnorm=batchnorm)
    if kind != "linearized":
        raise TypeError(f"bad linearization entry: its kind is linearized or standard, not {kind!r}")
    return LinearizedNetwork(model, centered=linearization["centered"])


def _save(payload: dict[str, Any], path: Path) -> None:
    """``torch.save``, with a failed write reported as the ``OSError`` it is: torch's zip writer
    says "unexpected pos ..." (a RuntimeError) when the disk fills up under it."""
    try:
        torch.save(payload, path)
    except RuntimeError as error:
        reason = first_line(error)
        full = shutil.disk_usage(path.parent).free < 2**20
        code, text = (errno.ENOSPC, os.strerror(errno.ENOSPC)) if full else (errno.EIO, f"torch.save failed: {reason}")
        raise OSError(code, text, str(path)) from None


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dict, checked to be one of ours (``CheckpointError`` otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    reason = not_a_file(path)  # a FIFO, /dev/zero or a loop of links "did not exist"
    if reason:
        raise CheckpointError(f"checkpoint {path} {reason}")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is not the user's business
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling, zip and format errors all mean "not ours"
        program = program_kind(path)
        if program:  # torch's own words on it are a paragraph about weights_only and PyTorch 2.6
            raise ForeignFileError(
                f"{path} is {program}, not a checkpoint of this tool: this needs the weights and model name "
                "that train writes (evaluate and transfer run programs with --trust-model-code)",
                program,
            ) from None
        raise ForeignFileError(f"{path} is not a checkpoint of this tool ({refusal_reason(path, error)})") from None
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ForeignFileError(  # torch.save(model.state_dict()): weights without the model that reads them
            f"{path} is not a checkpoint of this tool but a bare state dict, without the model it belongs to: "
            f"evaluate and transfer take it as MODEL[:WIDTH]={path} for a registry model; for the other "
            "commands save the net with ntkrobust.bridge.checkpoint.save_checkpoint"
        )
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ForeignFileError(f"{path} is not a checkpoint of this tool (no '{CHECKPOINT_FORMAT}' format tag)")
    return payload


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """``(model, config, payload)``: the model rebuilt from the stored config, weights loaded; a
    ``LinearizedNetwork`` around it when the payload records a ``linearization``, an
    ``OutputChange`` (f − f₀) when it records ``minus_initial``."""
    payload = read_checkpoint(path, map_location=map_location)
    try:
        config = ModelConfig.from_dict(payload.get("config") or {})
        # the state dict is checked against a shapes-only build first: a config that claims a
        # huge width must not allocate its model before the weights show they do not fit it
        shapes = _assembled(build_model(config, meta=True), payload)
        check_state_dict(path, payload.get("state_dict"), shapes, read_to=map_location)
        model = _assembled(build_model(config), payload)
        model.load_state_dict(payload["state_dict"])
        if payload.get("minus_initial"):
            model = OutputChange(model, build_model(config))
    except (ModelError, KeyError, RuntimeError, TypeError) as error:
        first = first_line(error)
        raise CheckpointError(f"{path}: cannot rebuild its model ({first[:160]})") from None
    return model, config, payload


def _assembled(model: nn.Module, payload: dict[str, Any]) -> nn.Module:
    """``model`` in the stage-2 wrapper the payload records, if any (its state dict is the wrapper's)."""
    return _wrapped(model, payload["linearization"]) if "linearization" in payload else model


def check_state_dict(
    path: str | Path, state_dict: Any, model: nn.Module, *, read_to: str | torch.device = "cpu"
) -> None:
    """Refuse, in one line naming the tensor, weights that do not fit ``model`` (its names and
    shapes; ``model`` may live on the meta device) or that ``load_state_dict`` would take without
    complaint and train or evaluate wrongly: NaN or infinite values, and integer or boolean
    values where the model holds floating point ones (copied in, they silently change results).
    A tensor of the file without values (left on the meta device when it was read to
    ``read_to``, the ``map_location`` of ``torch.load``) or of a sparse layout is refused too: the
    checks of its values raised RuntimeError, a traceback from ``train --resume``."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: its state_dict is not a dict of tensors")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the model does not"
        raise CheckpointError(f"{path}: cannot rebuild its model (its state dict {what})")
    for key, wanted in expected.items():
        value = state_dict[key]
        # no values to check or copy (a traceback below); read to the meta device, as the tests of
        # --device placement do, a meta tensor is what the file should give
        if value.layout != torch.strided or value.device.type != torch.device(read_to).type:
            raise CheckpointError(
                f"{path}: {key} is not a dense tensor of values (layout {value.layout}, device {value.device.type})"
            )
        if value.shape != wanted.shape:
            raise CheckpointError(
                f"{path}: cannot rebuild its model ({key} has shape {tuple(value.shape)}, "
                f"its config's model needs {tuple(wanted.shape)})"
            )
        if wanted.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{path}: {key} holds {value.dtype} values, the model's are {wanted.dtype}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {key} holds NaN or infinite values")
