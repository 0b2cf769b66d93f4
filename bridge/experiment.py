"""A training run on disk: train, track kernels and accuracies, checkpoint, resume.

The run folder (``ntkrobust train --out RUN``) is laid out as ``bridge.runfolder`` describes: the
configuration, the history, a checkpoint per epoch and the tracked kernels with their probe.

Every file is written atomically, in this order for each epoch: kernel files, checkpoint,
history. An interrupted run therefore loses at most the epoch in flight: ``resume`` restarts
from the last checkpoint, drops kernel files of later steps, and, because every random draw is
seeded by (seed, epoch, step) (``bridge.training``), reproduces the uninterrupted run.

``history.json`` (strict JSON)::

    {"command": "train", "label": str, "config": {...}, "class_names": [...], "steps_per_epoch": int,
     "eval_points": {"train": n, "test": n},
     "epochs": [{"epoch": 0 (initialisation), "step", "mode", "lr", "train_loss", "train_accuracy_running",
                 "accuracy": {"running" | "batch": {"train_clean", "train_pgd", "test_clean", "test_pgd"}},
                 "relative_magnitude" (linearized runs), "seconds": {"train", "track", "evaluate"}}, ...],
     "kernels": [{"step", "epoch" (= step / steps_per_epoch), "file", "clean", "adversarial",
                  "adversarial_labels" (kernels.metrics.kernel_metrics dicts), "probe_accuracy",
                  "seconds"}, ...],
     "versions": {...}, "argv": [...]}
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ntkrobust.bridge.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from ntkrobust.bridge.data import Dataset, balanced_indices, task_indices
from ntkrobust.bridge.files import write_atomically, write_json
from ntkrobust.bridge.models import ModelConfig
from ntkrobust.bridge.runfolder import CONFIG_FILE, RunFolder
from ntkrobust.bridge.tracking import BATCHNORM_MODES, KernelTracker, clean_accuracy, pgd_accuracy
from ntkrobust.bridge.training import TrainConfig, derived_seed, learning_rate, make_optimizer, train_epoch

__all__ = ["RunFolderError", "TrackingConfig", "run_training"]

# config keys a resumed run may change: more epochs continue the same trajectory, and the
# machine it runs on is not part of the experiment
_RESUMABLE_CHANGES = (("train", "epochs"), ("device",))


class RunFolderError(ValueError):
    """A run folder that cannot be started or resumed as asked; the message is one line."""


@dataclass(frozen=True)
class TrackingConfig:
    """What is measured during training.

    ``probe``: class-balanced training points of the tracked kernels (0: no kernels);
    ``every``: track every this many steps instead of after every epoch; ``eps``/``step``/
    ``steps``: the ℓ∞ PGD of the AE-NTK and of the robust accuracies; ``eval_n``: class-balanced
    points per split for the PGD accuracies (clean accuracy uses the whole split; None: all);
    ``batchnorm``: evaluation modes, ``running`` and/or ``batch`` (RAT sec. 4).
    """

    eps: float
    step: float
    steps: int
    probe: int = 300
    every: int | None = None
    eval_n: int | None = 500
    batchnorm: tuple[str, ...] = ("running",)
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        if not self.batchnorm or any(mode not in BATCHNORM_MODES for mode in self.batchnorm):
            raise ValueError(f"batchnorm modes must be among {BATCHNORM_MODES}, got {self.batchnorm}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "batchnorm": list(self.batchnorm)}


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    history: dict[str, Any] = field(default_factory=dict)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))
    for path in _RESUMABLE_CHANGES:
        holder = config
        for key in path[:-1]:
            holder = holder.get(key, {})
        holder.pop(path[-1], None)
    return config


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]} was {old!r}, now {new!r}"]


def _subset(labels: np.ndarray, classes: tuple[int, ...], n: int | None, seed: int, what: str) -> np.ndarray:
    if n is None or n >= labels.shape[0]:
        return np.arange(labels.shape[0])
    return balanced_indices(labels, classes, n, seed, what=what)


def _evaluation_subset(
    labels: np.ndarray, classes: tuple[int, ...], n: int | None, seed: int, probe: np.ndarray | None
) -> np.ndarray:
    """The training points of the PGD accuracy: ``n`` class-balanced ones (None: all); with a
    ``probe`` (len ≤ n), the probe first, then class-balanced points from the rest."""
    if probe is None:
        return _subset(labels, classes, n, seed, "train")
    if n is not None and n <= probe.shape[0]:
        return probe
    rest = np.setdiff1d(np.arange(labels.shape[0]), probe)
    extra = rest[_subset(labels[rest], classes, None if n is None else n - probe.shape[0], seed, "train")]
    return np.concatenate([probe, extra])


def _save_arrays(path: Path, arrays: dict[str, Any]) -> None:
    def write(temporary: Path) -> None:
        with temporary.open("wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)

    write_atomically(path, write)


def run_training(
    out: Path,
    model: nn.Module,
    model_config: ModelConfig,
    data: Dataset,
    train: TrainConfig,
    tracking: TrackingConfig,
    *,
    config: dict[str, Any],
    label: str,
    device: torch.device,
    resume: bool = False,
    kernel_network: Callable[[nn.Module], nn.Module] | None = None,
    relative_magnitude: Callable[[nn.Module, torch.Tensor], float] | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``model`` as ``train`` says, measuring as ``tracking`` says, into ``out``.

    ``config`` is the whole resolved configuration (stored in ``config.json``; ``resume``
    refuses a folder whose stored one differs, except in ``train.epochs`` and ``device``).
    ``kernel_network(model)`` gives the network whose eNTK is tracked (default: the model);
    ``relative_magnitude(model, x_test)`` is recorded per epoch when given (linearized runs).
    Returns the history (as written to ``history.json``).
    """
    run = RunFolder(out)
    if tracking.probe > data.x_train.shape[0]:
        raise RunFolderError(
            f"the probe set ({tracking.probe}) is larger than the {data.x_train.shape[0]} training points"
        )
    model = model.to(device)
    dtype = next(model.parameters()).dtype
    x_train = torch.as_tensor(data.x_train, device=device, dtype=dtype)
    y_train = torch.as_tensor(task_indices(data.y_train, data.classes), device=device)
    x_test = torch.as_tensor(data.x_test, device=device, dtype=dtype)
    y_test = torch.as_tensor(task_indices(data.y_test, data.classes), device=device)
    eval_test = torch.as_tensor(_subset(data.y_test, data.classes, tracking.eval_n, train.seed, "test"))
    optimizer = make_optimizer(model, train)
    steps_per_epoch = math.ceil(x_train.shape[0] / train.batch_size)
    tracker: KernelTracker | None = None
    # The AE-NTK needs PGD examples of the probe; the evaluation attacks training points with the
    # same threat and BatchNorm mode anyway. When the kernels are taken after every epoch and the
    # evaluation set is large enough, it is made of the probe first (then other class-balanced
    # points), so the kernels reuse its examples instead of attacking the probe a second time.
    chosen = np.arange(0)
    shared = False
    if tracking.probe:
        chosen = balanced_indices(data.y_train, data.classes, tracking.probe, train.seed, what="probe")
        shared = tracking.every is None and (tracking.eval_n is None or tracking.eval_n >= tracking.probe)
    eval_train = torch.as_tensor(
        _evaluation_subset(data.y_train, data.classes, tracking.eval_n, train.seed, chosen if shared else None)
    )
    if tracking.probe:
        tracker = KernelTracker(
            x=x_train[torch.as_tensor(chosen, device=device)],
            targets=y_train[torch.as_tensor(chosen, device=device)],
            num_classes=len(data.classes),
            eps=tracking.eps,
            step=tracking.step,
            steps=tracking.steps,
            seed=derived_seed(train.seed, 3),
            batchnorm=tracking.batchnorm[0],
            memory_budget=tracking.memory_budget,
        )

    state = _start(run, model, optimizer, config, resume, device)
    if not state.history:
        state.history = {
            "command": "train",
            "label": label,
            "config": config,
            "class_names": [data.class_name(c) for c in data.classes],
            "steps_per_epoch": steps_per_epoch,
            "eval_points": {"train": int(eval_train.shape[0]), "test": int(eval_test.shape[0])},
            "epochs": [],
            "kernels": [],
            **(metadata or {}),
        }
        if tracker is not None:
            arrays = {
                "x": tracker.x.cpu().numpy().astype(np.float32),
                "y": data.y_train[chosen],
                "targets": tracker.targets.cpu().numpy(),
            }
            _save_arrays(run.probe, arrays)
    else:
        state.history.update({"config": config, **(metadata or {})})
    history = state.history

    def track(step: int, probe_examples: torch.Tensor | None = None) -> float:
        if tracker is None:
            return 0.0
        network = model if kernel_network is None else kernel_network(model)
        arrays, record = tracker.track(model, network, x_adv=probe_examples)
        name = run.kernel_name(step)
        _save_arrays(run.path / name, arrays)
        history["kernels"].append({"step": step, "epoch": step / steps_per_epoch, "file": name, **record})
        return float(record["seconds"])

    def evaluate() -> tuple[dict[str, Any], float, torch.Tensor | None]:
        """(accuracies, seconds, PGD examples of the probe when the evaluation made them)."""
        start = time.perf_counter()
        result: dict[str, Any] = {}
        probe_examples = None
        for mode in tracking.batchnorm:
            scores: dict[str, float] = {}
            for split, x, y, subset in (("train", x_train, y_train, eval_train), ("test", x_test, y_test, eval_test)):
                index = subset.to(x.device)
                scores[f"{split}_clean"] = clean_accuracy(model, x, y, batchnorm=mode)
                scores[f"{split}_pgd"], x_adv = pgd_accuracy(
                    model,
                    x[index],
                    y[index],
                    eps=tracking.eps,
                    step=tracking.step,
                    steps=tracking.steps,
                    seed=derived_seed(train.seed, 4),
                    batchnorm=mode,
                )
                if shared and split == "train" and mode == tracking.batchnorm[0]:
                    probe_examples = x_adv[: tracking.probe]  # the probe comes first in eval_train
            result[mode] = scores
        if relative_magnitude is not None:
            result["relative_magnitude"] = relative_magnitude(model, x_test)
        return result, time.perf_counter() - start, probe_examples

    def checkpoint(epoch: int) -> None:
        save_checkpoint(
            run.checkpoint(epoch),
            model,
            model_config,
            epoch=epoch,
            step=state.step,
            optimizer=optimizer.state_dict(),
            history=history,
        )
        write_json(run.history, history)

    epochs_bar = tqdm(total=train.epochs, initial=state.epoch, desc="training", unit="epoch", disable=not progress)
    if state.epoch == 0 and not history["epochs"]:
        scores, evaluate_seconds, probe_examples = evaluate()
        track_seconds = track(0, probe_examples)
        magnitude = scores.pop("relative_magnitude", None)
        record = {"epoch": 0, "step": 0, "mode": "init", "lr": None, "train_loss": None, "accuracy": scores}
        if magnitude is not None:
            record["relative_magnitude"] = magnitude
        record["seconds"] = {"train": 0.0, "track": track_seconds, "evaluate": evaluate_seconds}
        history["epochs"].append(record)
        checkpoint(0)
    step_track_seconds = [0.0]  # tracking inside an epoch, taken out of its training time

    def after_step(step: int) -> None:
        state.step = step
        if tracking.every is not None and step % tracking.every == 0:
            step_track_seconds[0] += track(step)

    for epoch in range(state.epoch + 1, train.epochs + 1):
        step_track_seconds[0] = 0.0

        summary = train_epoch(
            model,
            optimizer,
            x_train,
            y_train,
            train,
            epoch,
            first_step=state.step,
            after_step=after_step,
            progress=progress,
        )
        train_seconds = summary.pop("seconds") - step_track_seconds[0]
        scores, evaluate_seconds, probe_examples = evaluate()
        track_seconds = step_track_seconds[0] + (track(state.step, probe_examples) if tracking.every is None else 0.0)
        magnitude = scores.pop("relative_magnitude", None)
        record = {"epoch": epoch, "step": state.step, **summary, "lr": learning_rate(train, epoch), "accuracy": scores}
        if magnitude is not None:
            record["relative_magnitude"] = magnitude
        record["seconds"] = {"train": train_seconds, "track": track_seconds, "evaluate": evaluate_seconds}
        history["epochs"].append(record)
        state.epoch = epoch
        checkpoint(epoch)
        shown = scores[tracking.batchnorm[0]]
        epochs_bar.set_postfix(
            loss=f"{summary['train_loss']:.3f}", test=f"{shown['test_clean']:.3f}", pgd=f"{shown['test_pgd']:.3f}"
        )
        epochs_bar.update(1)
    epochs_bar.close()
    write_json(run.history, history)
    return history


def _start(
    run: RunFolder,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    resume: bool,
    device: torch.device,
) -> _State:
    """A fresh run (writes ``config.json``), or the state of the last checkpoint of a resumed one."""
    stored = run.config
    if not resume:
        write_json(stored, config)
        return _State()
    if not run.exists():
        raise RunFolderError(f"--resume: {run.path} holds no run (no {CONFIG_FILE})")
    try:
        previous = json.loads(stored.read_text())
    except (OSError, ValueError) as error:
        raise RunFolderError(f"--resume: cannot read {stored} ({error})") from None
    differences = _differences(_comparable(previous), _comparable(json.loads(json.dumps(config))))
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise RunFolderError(f"--resume: {run.path} was made with a different configuration: {differences[0]}{more}")
    write_json(stored, config)  # the epochs may have grown
    latest = run.latest_checkpoint()
    if latest is None:
        return _State()
    try:
        payload = read_checkpoint(latest, map_location=device)
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        state = _State(epoch=int(payload["epoch"]), step=int(payload["step"]), history=payload["history"])
    except (CheckpointError, KeyError, RuntimeError, ValueError) as error:
        raise RunFolderError(f"--resume: cannot resume from {latest} ({str(error).splitlines()[0][:160]})") from None
    for step, stale in run.kernel_files().items():  # kernels of the interrupted epoch
        if step > state.step:
            stale.unlink()
    return state
