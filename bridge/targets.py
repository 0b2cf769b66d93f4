"""Target networks of transfer studies: this tool's checkpoints, and bring-your-own models.

A target is named on the command line by one of
- ``PATH`` to a checkpoint of ``ntkrobust train`` or ``ntkrobust two-layer`` (it rebuilds its own
  model, linearized / centered wrappers and f − f₀ included), to a TorchScript file
  (``torch.jit.save`` of a traced or scripted model), or to a ``.pt2`` exported program
  (``torch.export.save``, TorchScript's successor; export it with a dynamic batch dimension): any
  architecture, no code needed here;
- ``MODEL=PATH`` or ``MODEL:WIDTH=PATH``: a plain state dict (``torch.save(model.state_dict())``)
  of a registered model (``bridge.models.MODELS``), built for the data's image shape and classes.
Every file is read with ``torch.load(weights_only=True)``. TorchScript files and exported programs
are code (their loaders run the file's graph, and ``torch.export.load`` falls back to a full
unpickle of the file's blobs, which runs whatever the file says): they load only with
``trust_code=True`` (``--trust-model-code``), never by default, and never as a fallback.

A target must take the data's images (N, C, H, W) in [0, 1] and return one logit per class of the
task, or a single logit for a binary task (``bridge.adversarial``'s convention). Anything else is
refused with a ``TargetError`` of one line, before any attack runs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntkrobust._messages import first_line
from ntkrobust._numbers import is_whole
from ntkrobust.bridge.checkpoint import (
    CheckpointError,
    ForeignFileError,
    check_state_dict,
    load_checkpoint,
    trained_classes,
    trained_on,
)
from ntkrobust.bridge.files import JsonFileError, not_a_file, read_json, refusal_reason
from ntkrobust.bridge.models import MODELS, ModelError, build_model, check_fits, model_config, parse_model_name
from ntkrobust.bridge.runfolder import checkpoint_epoch

#: characters of a loader's or a target's own error said after ours: torch's can run to a page
_SAID = 160


class TargetError(ValueError):
    """A target that cannot be loaded or does not fit the data; the message is one line."""


@dataclass
class Target:
    """A loaded target: its label, the model (eval mode) and what it is (for results.json)."""

    label: str
    model: nn.Module = field(repr=False)
    description: dict[str, Any]
    epoch: int | None = None  # the training epoch, when a checkpoint records it
    #: (dynamics, t') for a checkpoint in a run folder of ``ntkrobust train``: the run's name and
    #: the epoch for standard dynamics; "linearized" / "centered from PARENT" and the spawn epoch
    #: for linearized runs (LOO sec. 5 plots transferability against t')
    curve: tuple[str, int] | None = None
    #: the classes a checkpoint of ``train`` was trained on, in its outputs' order (``trained_classes``)
    class_names: tuple[str, ...] | None = None


def _label(path: Path) -> str:
    """``run-name epoch N`` for a checkpoint in a run folder (``bridge.runfolder``), else the file's stem."""
    found = checkpoint_epoch(path)
    if found is not None:
        run, epoch = found
        return f"{run.path.name} epoch {epoch}"
    return path.stem


def _curve(path: Path) -> tuple[str, int] | None:
    """Where a run folder's checkpoint sits among the dynamics of LOO sec. 5 (see ``Target.curve``)."""
    found = checkpoint_epoch(path)
    if found is None:
        return None
    run, epoch = found
    try:
        config = read_json(run.config)
        linearization = config.get("linearization")
        if linearization:
            kind = "centered" if linearization["centered"] else "linearized"
            kind = "centered-standard" if linearization.get("standard") else kind
            parent = Path(linearization["checkpoint"]).parent.parent.name
            return f"{kind} from {parent}", int(linearization["spawn_epoch"])
    except (JsonFileError, ValueError, KeyError, TypeError, AttributeError):
        pass  # not a run folder of this tool after all: the folder's name and the epoch
    return run.path.name, epoch


def load_target(
    spec: str,
    *,
    image_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device | str = "cpu",
    trust_code: bool = False,
    role: str = "target",
) -> Target:
    """The target named by ``spec`` (see the module docstring), checked against the data.

    ``trust_code``: also accept TorchScript and ``.pt2`` files, whose loading runs code from the
    file; without it they are refused before anything of theirs is loaded. ``role``: what a
    refusal calls the net ("target", or transfer's "--source")."""
    try:
        return _load(spec, image_shape, num_classes, device, trust_code)
    except TargetError as error:  # the helpers say what is wrong; the role is said here, once
        raise TargetError(f"{role} {error}") from None


def _load(
    spec: str, image_shape: tuple[int, ...], num_classes: int, device: torch.device | str, trust_code: bool
) -> Target:
    model_name, width, path = _parse(spec)
    if path.is_dir():
        raise TargetError(f"{path} is a folder, not a model file")
    reason = not_a_file(path)
    if reason:
        raise TargetError(f"{path} {reason}")
    if model_name is not None:
        target = _state_dict_target(path, model_name, width, image_shape, num_classes)
    else:
        target = _file_target(path, image_shape, trust_code, device)
    target.model = target.model.to(device).eval()
    _check_outputs(target, image_shape, num_classes, device)
    return target


def _parse(spec: str) -> tuple[str | None, int | None, Path]:
    head, sep, tail = spec.partition("=")
    if not sep or Path(spec).exists():
        return None, None, Path(spec)
    if head.partition(":")[0] not in MODELS:
        raise TargetError(f"{spec}: unknown model {head.partition(':')[0]!r} (MODEL is one of {', '.join(MODELS)})")
    try:
        name, width = parse_model_name(head)
    except ModelError as error:
        raise TargetError(f"{error}") from None
    if not tail.strip():  # Path("") is the working folder: "target . is a folder" said nothing useful
        raise TargetError(f"{spec}: no weights file after '=' (MODEL=WEIGHTS)")
    return name, width, Path(tail)


def _file_target(path: Path, image_shape: tuple[int, ...], trust_code: bool, device: torch.device | str) -> Target:
    label = _label(path)
    try:
        model, config, payload = load_checkpoint(path)
    except ForeignFileError as checkpoint_error:
        if not trust_code:  # refused before torch's loaders see the file: they would run its code
            program = checkpoint_error.program
            said = (
                f"{path} is {program}, which carries"
                if program
                else f"{first_line(checkpoint_error)}; a TorchScript or .pt2 file carries"
            )
            raise TargetError(f"{said} code and loads only with --trust-model-code") from None
        # torch.export.load accepts only .pt2 files (and logs a traceback for anything else)
        kind, loader = (
            ("exported program", functools.partial(_exported_program, device=device))
            if path.suffix == ".pt2"
            else ("torchscript", _torchscript)
        )
        try:
            with _quiet_torch():
                return Target(label, loader(path), {"path": str(path), "kind": kind})
        except TargetError:
            raise
        except Exception as error:
            raise TargetError(
                f"{first_line(checkpoint_error, _SAID)}; not a {kind} that loads ({first_line(error, 80)})"
            ) from None
    except CheckpointError as damaged:  # one of ours that does not load: no code file to suggest
        raise TargetError(first_line(damaged)) from None  # ours, one line: a long path must not cut its reason
    try:
        check_fits(config, image_shape)
    except ModelError as error:
        raise TargetError(f"{path}: {error}") from None
    epoch = payload.get("epoch")
    kind = "linearized" if "linearization" in payload else "checkpoint"
    description = {"path": str(path), "kind": kind, **config.to_dict()}
    if "linearization" in payload:
        description["centered"] = payload["linearization"]["centered"]
    if payload.get("minus_initial"):
        description["output"] = "f - f0"
    return Target(
        label,
        model,
        description,
        epoch=epoch if is_whole(epoch) else None,
        curve=_curve(path),
        class_names=trained_classes(payload),
    )


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """No warnings and no log records from torch's loaders: a refusal is one line of ours."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _torchscript(path: Path) -> nn.Module:
    return torch.jit.load(str(path), map_location="cpu")  # then ``.to()`` moves it as any module


class _ExportedProgram(nn.Module):
    """An exported program's module behind the usual interface: its graph refuses ``eval()`` and
    already runs in the mode it was exported in, so it sits outside the module tree (where
    ``.to()`` does not reach it: ``_exported_program`` puts it on its device)."""

    program: nn.Module

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "program", program)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def _exported_program(path: Path, device: torch.device | str) -> nn.Module:
    from torch.export.passes import move_to_device_pass

    program = torch.export.load(str(path))
    batch = _fixed_batch(program)
    if batch is not None:  # its graph asserts the size: every batch but that one fails mid-attack
        raise TargetError(
            f"{path} was exported for batches of exactly {batch} images; export it with a dynamic batch "
            "(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},)))"
        )
    # the pass moves the weights and the devices written into the graph's own ops as well
    return _ExportedProgram(move_to_device_pass(program, device).module())


def _fixed_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size an exported program's input is fixed to (None: a dynamic batch dimension)."""
    inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" and node.name in inputs else None
        if isinstance(value, torch.Tensor) and value.ndim > 0 and isinstance(value.shape[0], int):
            return value.shape[0]
    return None


def _state_dict_target(
    path: Path, name: str, width: int | None, image_shape: tuple[int, ...], num_classes: int
) -> Target:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = refusal_reason(path, error)
        raise TargetError(f"{path} is not a state dict that loads safely ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TargetError(f"{path} is not a state dict (a dict of tensors)")
    # a binary task's net may have one logit (as two-layer writes them): tried after the two
    failure = None
    for outputs in (num_classes, 1) if num_classes == 2 else (num_classes,):
        try:
            config = model_config(name, image_shape, outputs, width=width)
            model = build_model(config)
            model.load_state_dict(state)
        except (ModelError, RuntimeError) as error:
            failure = error if failure is None else failure
            continue
        try:  # it fits: now the values that load_state_dict copies in without a word (NaN, integers)
            check_state_dict(path, state, model)
        except CheckpointError as error:
            raise TargetError(str(error)) from None
        return Target(_label(path), model, {"path": str(path), "kind": "state-dict", **config.to_dict()})
    tried = " (tried with 2 outputs and with 1)" if num_classes == 2 else ""
    raise TargetError(f"{path} does not fit the {name} model{tried}: {_mismatch(failure)}")


def _mismatch(error: BaseException | None) -> str:
    """What does not fit: ``load_state_dict`` says it on the line after its heading ("Error(s) in
    loading state_dict for Net:"), a size mismatch or the missing and unexpected keys; the first
    of them (one line), the others left out."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1][:240]
    return first_line(error, _SAID) if error is not None else "unknown"


def _check_outputs(target: Target, image_shape: tuple[int, ...], num_classes: int, device: torch.device | str) -> None:
    """One forward pass on a blank image: the shape must go in, and the logits must fit the task
    and be differentiable floats (every white-box attack, transfer's references included, takes
    the gradient of a cross-entropy of them with respect to the images)."""
    path = target.description["path"]
    probe = torch.zeros((2, *image_shape), device=device, requires_grad=True)
    try:
        outputs = target.model(probe)
    except Exception as error:
        said = first_line(error, _SAID)
        raise TargetError(f"{path} does not take images of shape {tuple(image_shape)}: {said}") from None
    allowed = {num_classes, 1} if num_classes == 2 else {num_classes}
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2 or outputs.shape[1] not in allowed:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        # the classes it was trained on, where its logits have a width to compare with them
        logits = isinstance(outputs, torch.Tensor) and outputs.ndim == 2
        raise TargetError(
            f"{path} returns {shape} for 2 images; "
            f"the task needs (2, {num_classes}) logits"
            + (" or (2, 1)" if num_classes == 2 else "")
            + (trained_on(target.class_names, outputs.shape[1]) if logits else "")
        )
    if not outputs.is_floating_point():
        raise TargetError(f"{path} returns {outputs.dtype} logits; attacks need floating-point ones")
    # requires_grad alone is no proof: a net's parameters give it to logits of detached images
    if not outputs.requires_grad or torch.autograd.grad(outputs.sum(), probe, allow_unused=True)[0] is None:
        raise TargetError(
            f"{path} returns logits without a gradient to the images "
            "(detached, or computed under no_grad): white-box attacks need one"
        )
