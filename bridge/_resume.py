"""Starting a run folder, afresh or from its last checkpoint (``bridge.experiment``'s ``--resume``).

A resume refuses a folder whose stored configuration differs from the new one in anything but
``_RESUMABLE_CHANGES`` (more epochs continue the same trajectory; the device and the kernels'
memory budget are not part of the experiment), and a checkpoint that its run could not have
written (``_checkpoint_state``). Both are checked before anything is written: a refused resume
leaves the folder as it was. Because every random draw of a run is seeded by (seed, epoch, step)
(``bridge.training``), the resumed run takes the uninterrupted run's steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkrobust._messages import first_line
from ntkrobust._numbers import is_whole
from ntkrobust.bridge import distributed
from ntkrobust.bridge.checkpoint import CheckpointError, check_state_dict, read_checkpoint
from ntkrobust.bridge.files import JsonFileError, NpzError, read_json, read_npz, write_json
from ntkrobust.bridge.runfolder import CONFIG_FILE, RunFolder
from ntkrobust.bridge.runs import RunError, check_kernel_files
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble

__all__ = ["RunFolderError", "RunState", "start_state"]


class RunFolderError(ValueError):
    """A run folder that cannot be started or resumed as asked; the message is one line."""


# config keys a resumed run may change: more epochs continue the same trajectory, and the
# machine it runs on is not part of the experiment, nor is the working memory its kernels are
# computed in (it sets how the sums are chunked, as the device sets how they are rounded)
_RESUMABLE_CHANGES = (("train", "epochs"), ("device",), ("tracking", "memory_budget"))


@dataclass
class RunState:
    epoch: int = 0
    step: int = 0
    history: dict[str, Any] = field(default_factory=dict)
    te_averages: torch.Tensor | None = None  # TE's per-example averages (mode te)
    # whether the probe file is to be written: a fresh run's, or a resumed one's that is missing
    # or damaged (the probe is drawn alike from the same configuration)
    write_probe: bool = True


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))
    for path in _RESUMABLE_CHANGES:
        holder = config
        for key in path[:-1]:
            holder = holder.get(key, {}) if isinstance(holder, dict) else {}
        if isinstance(holder, dict):  # an edited config.json's "train": 5 is a difference, not a crash
            holder.pop(path[-1], None)
    return config


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]} was {_short(old)}, now {_short(new)}"]


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a whole section that differs stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]} ..."


def start_state(
    run: RunFolder,
    config: dict[str, Any],
    resume: bool,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epochs: int,
    steps_per_epoch: int,
    ensemble: TemporalEnsemble | None,
    probe: dict[str, np.ndarray] | None = None,
) -> RunState:
    """A fresh run (writes ``config.json``), or the state of the last checkpoint of a resumed one.

    A resume reads and checks the stored configuration and the whole checkpoint before it writes
    anything: a refused resume leaves the folder as it was. The checkpoint is loaded into ``model``
    and ``optimizer`` (on ``device``) once it is checked against them, against ``epochs`` (the
    run's length now), ``steps_per_epoch`` and TE's ``ensemble`` (``RunFolderError`` in one line
    otherwise). With kernel tracking, ``probe`` holds the probe's arrays as this configuration
    draws them: a resume refuses a probe file that holds others (the data changed), and kernel
    files of the checkpoint's steps that ``dynamics`` could not read (they cannot be taken again);
    a missing or unreadable probe file is only flagged (``write_probe``), to be written."""
    if not resume:
        write_json(run.config, config)
        return RunState()
    # rank 0's view of the folder under torchrun: a node whose listing of shared storage lags
    # would otherwise load another epoch, and its weights would part from the others' silently
    latest = distributed.from_main(run.latest_checkpoint())
    state = RunState()
    # every process reads the folder itself: one that cannot (an --out that not every node
    # shares) stops them all before the first collective of the training
    with distributed.failing_together():
        _check_config(run, config)
        blocked = run.in_the_way()
        if blocked:
            raise RunFolderError(f"--resume: {blocked[0]} is not a file, and the run writes one there: move it away")
        if latest is not None:
            try:
                payload = read_checkpoint(latest, map_location=device)
                check_state_dict(latest, payload.get("state_dict"), model, read_to=device)
                state = _checkpoint_state(payload, steps_per_epoch, ensemble)
            except CheckpointError as error:  # its message names the file
                raise RunFolderError(f"--resume: {error}") from None
            except ValueError as error:
                raise RunFolderError(f"--resume: cannot resume from {latest} ({first_line(error)[:160]})") from None
            if state.epoch > epochs:  # config.json would say fewer epochs than the history holds
                raise RunFolderError(
                    f"--resume: {run.path} has trained {state.epoch} epochs already, more than the "
                    f"{epochs} asked: give --epochs {state.epoch} or more"
                )
            try:
                model.load_state_dict(payload["state_dict"])
                optimizer.load_state_dict(payload["optimizer"])
                _check_optimizer_state(optimizer)
            except (KeyError, RuntimeError, TypeError, ValueError) as error:
                raise RunFolderError(f"--resume: cannot resume from {latest} ({first_line(error)[:160]})") from None
        if probe is not None and latest is not None:
            state.write_probe = _check_tracked(run, state.history.get("kernels", []), probe)
    write_json(run.config, config)  # the epochs may have grown
    for step, stale in run.kernel_files().items():  # kernels of the interrupted epoch
        if step > state.step and distributed.is_main():
            stale.unlink(missing_ok=True)
    return state


def _check_config(run: RunFolder, config: dict[str, Any]) -> None:
    """``RunFolderError`` unless ``run`` holds a configuration that ``config`` may resume."""
    stored = run.config
    if not run.exists():
        # rank 0 checked that it does (studies.train): here another rank cannot see it
        elsewhere = f" on rank {distributed.rank()}, where rank 0 found one: --out must be on storage every node shares"
        raise RunFolderError(
            f"--resume: {run.path} holds no run (no {CONFIG_FILE}){elsewhere if distributed.rank() else ''}"
        )
    try:
        previous = read_json(stored)
    except JsonFileError as error:
        raise RunFolderError(f"--resume: {stored}: {error}") from None
    if not isinstance(previous, dict):
        raise RunFolderError(f"--resume: {stored} is not a run's configuration (a JSON object)")
    differences = _differences(_comparable(previous), _comparable(json.loads(json.dumps(config))))
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise RunFolderError(f"--resume: {run.path} was made with a different configuration: {differences[0]}{more}")


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """``ValueError`` unless every tensor of the loaded optimizer state (SGD's momentum buffers)
    has its parameter's shape and holds finite floats: ``load_state_dict`` takes any tensors,
    and a wrong one failed only at the first step, as a traceback."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if not isinstance(value, torch.Tensor) or value.ndim == 0:
                    continue  # a step count
                if value.shape != parameter.shape or not value.is_floating_point():
                    raise ValueError(
                        f"its optimizer's {name} of shape {tuple(value.shape)} ({value.dtype}) is not "
                        f"one for a parameter of shape {tuple(parameter.shape)}"
                    )
                if not torch.isfinite(value).all():
                    raise ValueError(f"its optimizer's {name} holds NaN or infinite values")


def _check_tracked(run: RunFolder, records: list[Any], probe: dict[str, np.ndarray]) -> bool:
    """Whether ``run``'s probe file must be written again (missing or unreadable); ``RunFolderError``
    when it holds other points than ``probe``, or when a kernel file of ``records`` is damaged."""
    try:
        stored = read_npz(run.probe, tuple(probe), required=tuple(probe)) if run.probe.is_file() else None
    except NpzError:
        stored = None
    if stored is not None and not all(np.array_equal(stored[key], value) for key, value in probe.items()):
        raise RunFolderError(
            f"--resume: {run.probe} holds other probe points than this configuration draws from the data: "
            "was the data changed since the run began?"
        )
    try:
        check_kernel_files(run.path, records, next(iter(probe.values())).shape[0])
    except RunError as error:  # its message names the file
        raise RunFolderError(
            f"--resume: {error}; a kernel tracked before the checkpoint cannot be taken again: start over with --force"
        ) from None
    return stored is None


def _checkpoint_state(payload: dict[str, Any], steps_per_epoch: int, ensemble: TemporalEnsemble | None) -> RunState:
    """The state a checkpoint holds, checked to be one its run wrote (``ValueError`` otherwise): an
    epoch of at least 0, a history of exactly the epochs 0 to it, the step count at the end of
    that epoch, and TE's averages, finite and of the ensemble's shape. A hand-edited or corrupt one
    would otherwise train nothing, rewrite history.json without the epochs before it, or (without
    its averages) start TE's moving averages again from zero, off the uninterrupted run."""
    epoch, step, history = payload.get("epoch"), payload.get("step"), payload.get("history")
    if not is_whole(epoch) or epoch < 0:
        raise ValueError(f"its epoch {epoch!r} is not a whole number >= 0")
    if not isinstance(history, dict) or not all(isinstance(history.get(key), list) for key in ("epochs", "kernels")):
        raise ValueError("its history is not a training run's (no lists of epochs and kernels)")
    records = history["epochs"]
    numbers = [record.get("epoch") if isinstance(record, dict) else None for record in records]
    if len(numbers) != epoch + 1 or numbers != list(range(epoch + 1)):
        raise ValueError(f"it claims epoch {epoch}, but its history holds {len(records)} epoch records")
    if not all(map(is_whole, numbers)):  # 1.0 == 1 and True == 1; resumed, it is printed and written back as is
        raise ValueError(f"its history's epoch records are not numbered 0 to {epoch} in whole numbers")
    if not is_whole(step) or step != epoch * steps_per_epoch:
        raise ValueError(
            f"its step {step!r} is not {epoch * steps_per_epoch}, the step count at the end of epoch {epoch}"
        )
    averages = payload.get("te_averages")
    if ensemble is not None:  # a te run writes them into every checkpoint, the initialisation's too
        shape = tuple(ensemble.averages.shape)
        if not isinstance(averages, torch.Tensor) or tuple(averages.shape) != shape:
            raise ValueError(f"its te_averages are not a tensor of shape {shape}")
        if not bool(torch.isfinite(averages).all()):
            raise ValueError("its te_averages hold NaN or infinite values")
    return RunState(epoch=epoch, step=step, history=history, te_averages=averages)
