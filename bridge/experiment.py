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
                  "batch_statistics" (evaluated both ways: the same keys for the kernels taken
                  with batch statistics, whose arrays carry the suffix _batch), "seconds"}, ...],
     "versions": {...}, "argv": [...]}
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ntkrobust._progress import progress_bar
from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge import distributed
from ntkrobust.bridge.checkpoint import CheckpointError, check_state_dict, read_checkpoint, save_checkpoint
from ntkrobust.bridge.data import Dataset, balanced_indices, task_indices
from ntkrobust.bridge.files import first_line, write_atomically, write_json
from ntkrobust.bridge.models import ModelConfig
from ntkrobust.bridge.runfolder import CONFIG_FILE, RunFolder
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble
from ntkrobust.bridge.tracking import BATCHNORM_MODES, KernelTracker, clean_accuracy, pgd_accuracy
from ntkrobust.bridge.training import (
    TrainConfig,
    derived_seed,
    learning_rate,
    make_optimizer,
    replicated,
    train_epoch,
)

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
    ``steps``: the ℓ∞ PGD of the AE-NTK and of the per-epoch robust accuracies; ``eval_n``:
    class-balanced points per split for the PGD accuracies (clean accuracy uses the whole split;
    None: all); ``batchnorm``: evaluation modes, ``running`` and/or ``batch`` (RAT sec. 4).
    ``full_step``/``full_steps``: the stronger PGD of the full evaluation, on the same points, at
    the last epoch and every ``full_every`` epochs (None: no full evaluation).
    ``selection_seed``: seed of the probe and the evaluation points (None: the training seed), so
    runs of several training seeds share their probe.
    """

    eps: float
    step: float
    steps: int
    probe: int = 300
    every: int | None = None
    eval_n: int | None = 500
    batchnorm: tuple[str, ...] = ("running",)
    memory_budget: int | None = None
    full_step: float | None = None
    full_steps: int | None = None
    full_every: int | None = None
    selection_seed: int | None = None
    track_full: bool = False  # the full (N, N, C, C) kernels, not only their class blocks
    #: "exact", or "rademacher:K": the trace kernel estimated from K random-sign draws (bridge.entk), at
    #: K/C of the class blocks' cost, without the specialization metrics (they need the blocks)
    estimator: str = "exact"

    def __post_init__(self) -> None:
        if not self.batchnorm or any(mode not in BATCHNORM_MODES for mode in self.batchnorm):
            raise ValueError(f"batchnorm modes must be among {BATCHNORM_MODES}, got {self.batchnorm}")
        if (self.full_steps is None) != (self.full_step is None):
            raise ValueError("a full evaluation needs both its PGD step and its steps")
        if self.estimator != "exact":
            from ntkrobust.bridge.entk import KernelKind

            try:
                kind: str | None = KernelKind.parse(self.estimator).name
            except ValueError:  # rademacher:0, rademacher:x, or no kind at all
                kind = None
            if kind != "rademacher":
                raise ValueError(
                    f"--estimator must be exact or rademacher:K (K > 0 random-sign draws), got {self.estimator!r}"
                )
            if self.track_full:
                raise ValueError("--estimator estimates the trace kernel; --track-full asks for the exact full one")

    def attack(self, seed: int) -> AttackSpec:
        """The ℓ∞ PGD of the per-epoch robust accuracies (random start seeded by ``seed``)."""
        return AttackSpec("pgd", self.eps, "linf", self.step, self.steps, random_start=True, seed=seed)

    @property
    def kernel_kind(self) -> str:
        """The tracked kernels' kind: the full kernels, their class blocks, or an estimated trace."""
        if self.track_full:
            return "full"
        return "class-blocks" if self.estimator == "exact" else self.estimator

    def full_attack(self, seed: int) -> AttackSpec | None:
        """The ℓ∞ PGD of the full evaluation, or None."""
        if self.full_steps is None or self.full_step is None:
            return None
        return AttackSpec("pgd", self.eps, "linf", self.full_step, self.full_steps, random_start=True, seed=seed)

    def full_due(self, epoch: int, last: int) -> bool:
        """Whether epoch ``epoch`` (of ``last``) ends with a full evaluation."""
        if self.full_steps is None or epoch == 0:
            return False
        return epoch == last or (self.full_every is not None and epoch % self.full_every == 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "batchnorm": list(self.batchnorm)}


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    history: dict[str, Any] = field(default_factory=dict)
    te_averages: torch.Tensor | None = None  # TE's per-example averages (mode te)


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


#: one line per epoch for logs (the command line shows it on stderr unless --quiet)
_log = logging.getLogger("ntkrobust")


def _epoch_line(record: dict[str, Any], train: TrainConfig, tracking: TrackingConfig) -> str:
    mode, seconds = tracking.batchnorm[0], record["seconds"]
    scores = record["accuracy"][mode]
    parts = ["initialisation" if record["epoch"] == 0 else f"epoch {record['epoch']}/{train.epochs}"]
    if record.get("eps") is not None and record["eps"] < train.eps:
        parts.append(f"eps {record['eps']:.4g} (warming up)")
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f}")
    parts.append(f"test clean {scores['test_clean']:.3f}, PGD-{tracking.steps} {scores['test_pgd']:.3f}")
    spent = [f"{seconds['train']:.1f} s training", f"{seconds['evaluate']:.1f} s evaluation"]
    spent.append(f"{seconds['track']:.1f} s kernels")
    full = record.get("full_evaluation")
    if full:
        parts.append(f"PGD-{full['steps']} {full['accuracy'][mode]['test_pgd']:.3f}")
        spent.append(f"{full['seconds']:.1f} s full evaluation")
    return f"{parts[0]}: {', '.join(parts[1:])} ({', '.join(spent)})"


class _TrainingRun:
    """A run in progress: the data as tensors on the device, the evaluation subsets, the kernel
    tracker, the optimizer and the state (epoch, step, history), with what measures the model
    and writes the run folder."""

    def __init__(
        self,
        run: RunFolder,
        model: nn.Module,
        model_config: ModelConfig,
        data: Dataset,
        train: TrainConfig,
        tracking: TrackingConfig,
        *,
        device: torch.device,
        kernel_network: Callable[[nn.Module], nn.Module] | None,
        relative_magnitude: Callable[[nn.Module, torch.Tensor], float] | None,
    ) -> None:
        self.run, self.model_config, self.data, self.train, self.tracking = run, model_config, data, train, tracking
        self.device, self.kernel_network, self.relative_magnitude = device, kernel_network, relative_magnitude
        self.model = model = model.to(device)
        # under torchrun: BatchNorm over the whole batch of the training step, and the
        # DistributedDataParallel wrapper whose backward averages the gradients of the processes
        # (each takes its share of every mini-batch: bridge.training.train_epoch)
        self.replica: nn.Module | None = None
        if distributed.active():
            model, self.replica = replicated(model, device)
            self.model = model
        dtype = next(model.parameters()).dtype
        self.x_train = torch.as_tensor(data.x_train, device=device, dtype=dtype)
        self.y_train = torch.as_tensor(task_indices(data.y_train, data.classes), device=device)
        self.x_test = torch.as_tensor(data.x_test, device=device, dtype=dtype)
        self.y_test = torch.as_tensor(task_indices(data.y_test, data.classes), device=device)
        chooser = train.seed if tracking.selection_seed is None else tracking.selection_seed
        self.eval_test = torch.as_tensor(_subset(data.y_test, data.classes, tracking.eval_n, chooser, "test"))
        self.optimizer = make_optimizer(model, train)
        self.steps_per_epoch = math.ceil(self.x_train.shape[0] / train.batch_size)
        # The AE-NTK needs PGD examples of the probe; the evaluation attacks training points with the
        # same threat and BatchNorm mode anyway. When the kernels are taken after every epoch and the
        # evaluation set is large enough, it is made of the probe first (then other class-balanced
        # points), so the kernels reuse its examples instead of attacking the probe a second time.
        self.chosen = np.arange(0)
        self.shared = False
        if tracking.probe:
            self.chosen = balanced_indices(data.y_train, data.classes, tracking.probe, chooser, what="probe")
            self.shared = tracking.every is None and (tracking.eval_n is None or tracking.eval_n >= tracking.probe)
        self.eval_train = torch.as_tensor(
            _evaluation_subset(
                data.y_train, data.classes, tracking.eval_n, chooser, self.chosen if self.shared else None
            )
        )
        # one tracker per BatchNorm mode: with both, the kernels are also taken with batch statistics
        self.trackers = [self._make_tracker(mode) for mode in tracking.batchnorm] if tracking.probe else []
        self.ensemble = None
        if train.mode == "te":
            assert train.te_start is not None and train.te_end is not None  # TrainConfig checks
            n, classes = self.x_train.shape[0], len(data.classes)
            self.ensemble = TemporalEnsemble.empty(
                n, classes, train.te_start, train.te_end, maximum=train.te_weight, device=device
            )
        self.state = _State()
        self.step_track_seconds = 0.0  # tracking inside an epoch, taken out of its training time
        self.progress = False  # bars for the evaluation and the kernels (set by run_training)

    def _make_tracker(self, batchnorm: str) -> KernelTracker:
        chosen = torch.as_tensor(self.chosen, device=self.device)
        return KernelTracker(
            x=self.x_train[chosen],
            targets=self.y_train[chosen],
            num_classes=len(self.data.classes),
            eps=self.tracking.eps,
            step=self.tracking.step,
            steps=self.tracking.steps,
            seed=derived_seed(self.train.seed, 3),
            batchnorm=batchnorm,
            memory_budget=self.tracking.memory_budget,
            kind=self.tracking.kernel_kind,
        )

    @property
    def history(self) -> dict[str, Any]:
        return self.state.history

    def start(self, config: dict[str, Any], resume: bool, label: str, metadata: dict[str, Any] | None) -> None:
        """Start the folder afresh (history header, probe file) or take up its last checkpoint."""
        self.state = _start(self, config, resume)
        if self.ensemble is not None and self.state.te_averages is not None:
            self.ensemble.averages = self.state.te_averages.to(self.device, torch.float64)
        if self.state.history:
            self.state.history.update({"config": config, **(metadata or {})})
            return
        self.state.history = {
            "command": "train",
            "label": label,
            "config": config,
            "class_names": [self.data.class_name(c) for c in self.data.classes],
            "steps_per_epoch": self.steps_per_epoch,
            "eval_points": {"train": int(self.eval_train.shape[0]), "test": int(self.eval_test.shape[0])},
            "epochs": [],
            "kernels": [],
            **(metadata or {}),
        }
        if self.trackers:
            arrays = {
                "x": self.trackers[0].x.cpu().numpy().astype(np.float32),
                "y": self.data.y_train[self.chosen],
                "targets": self.trackers[0].targets.cpu().numpy(),
            }
            _save_arrays(self.run.probe, arrays)

    def check_budget(self) -> None:
        """``BudgetError`` before anything runs when the probe's kernels would not fit."""
        network = self.model if self.kernel_network is None else self.kernel_network(self.model)
        for tracker in self.trackers:
            tracker.check_budget(network)

    def track(self, step: int, probe_examples: torch.Tensor | None = None) -> float:
        """Take the kernels at ``step`` into their file and the history; their seconds."""
        if not self.trackers:
            return 0.0
        network = self.model if self.kernel_network is None else self.kernel_network(self.model)
        arrays, record = self.trackers[0].track(self.model, network, x_adv=probe_examples, progress=self.progress)
        for tracker in self.trackers[1:]:  # the batch-statistics kernels of a run evaluated both ways
            more_arrays, more = tracker.track(self.model, network, progress=self.progress)
            arrays |= {f"{key}_{tracker.batchnorm}": value for key, value in more_arrays.items()}
            record["seconds"] += more.pop("seconds")
            record[f"{tracker.batchnorm}_statistics"] = more
        name = self.run.kernel_name(step)
        _save_arrays(self.run.path / name, arrays)
        self.history["kernels"].append({"step": step, "epoch": step / self.steps_per_epoch, "file": name, **record})
        return float(record["seconds"])

    def _splits(self) -> tuple[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor], ...]:
        return (
            ("train", self.x_train, self.y_train, self.eval_train),
            ("test", self.x_test, self.y_test, self.eval_test),
        )

    def evaluate(self) -> tuple[dict[str, Any], float, torch.Tensor | None]:
        """(accuracies, seconds, PGD examples of the probe when the evaluation made them)."""
        start = time.perf_counter()
        tracking = self.tracking
        result: dict[str, Any] = {}
        probe_examples = None
        bar = progress_bar(2 * len(tracking.batchnorm), "evaluating", "split", show=self.progress)
        for mode in tracking.batchnorm:
            scores: dict[str, float] = {}
            for split, x, y, subset in self._splits():
                index = subset.to(x.device)
                # under torchrun each process evaluates its share of the batches
                scores[f"{split}_clean"] = clean_accuracy(self.model, x, y, batchnorm=mode, across_processes=True)
                scores[f"{split}_pgd"], x_adv = pgd_accuracy(
                    self.model,
                    x[index],
                    y[index],
                    tracking.attack(derived_seed(self.train.seed, 4)),
                    batchnorm=mode,
                    across_processes=True,
                )
                if self.shared and split == "train" and mode == tracking.batchnorm[0]:
                    probe_examples = x_adv[: tracking.probe]  # the probe comes first in eval_train
                bar.update(1)
            result[mode] = scores
        bar.close()
        if self.relative_magnitude is not None:
            result["relative_magnitude"] = self.relative_magnitude(self.model, self.x_test)
        return result, time.perf_counter() - start, probe_examples

    def full_evaluation(self) -> dict[str, Any]:
        """The PGD accuracies of the full evaluation on the per-epoch evaluation's points."""
        start = time.perf_counter()
        attack = self.tracking.full_attack(derived_seed(self.train.seed, 5))
        assert attack is not None  # only called when full_due
        accuracy: dict[str, dict[str, float]] = {}
        modes = self.tracking.batchnorm
        bar = progress_bar(2 * len(modes), f"PGD-{attack.steps}", "split", show=self.progress)
        for mode in modes:
            accuracy[mode] = {}
            for split, x, y, subset in self._splits():
                index = subset.to(x.device)
                accuracy[mode][f"{split}_pgd"] = pgd_accuracy(
                    self.model, x[index], y[index], attack, batchnorm=mode, across_processes=True
                )[0]
                bar.update(1)
        bar.close()
        seconds = time.perf_counter() - start
        return {"steps": attack.steps, "step": attack.step, "accuracy": accuracy, "seconds": seconds}

    def checkpoint(self, epoch: int) -> None:
        save_checkpoint(
            self.run.checkpoint(epoch),
            self.model,
            self.model_config,
            epoch=epoch,
            step=self.state.step,
            optimizer=self.optimizer.state_dict(),
            history=self.history,
            **({} if self.ensemble is None else {"te_averages": self.ensemble.averages.cpu()}),
        )
        write_json(self.run.history, self.history)

    def record_epoch(self, head: dict[str, Any], scores: dict[str, Any], seconds: dict[str, float]) -> None:
        """Append the epoch's record (``head``, then the accuracies, the relative magnitude of
        linearized runs and the seconds) to the history, and checkpoint the epoch."""
        magnitude = scores.pop("relative_magnitude", None)
        record = {**head, "accuracy": scores}
        if magnitude is not None:
            record["relative_magnitude"] = magnitude
        if self.tracking.full_due(head["epoch"], self.train.epochs):
            record["full_evaluation"] = self.full_evaluation()
        record["seconds"] = seconds
        self.history["epochs"].append(record)
        self.state.epoch = head["epoch"]
        self.checkpoint(head["epoch"])
        _log.info(_epoch_line(record, self.train, self.tracking))

    def record_initialisation(self) -> None:
        scores, evaluate_seconds, probe_examples = self.evaluate()
        track_seconds = self.track(0, probe_examples)
        head = {"epoch": 0, "step": 0, "mode": "init", "lr": None, "train_loss": None}
        self.record_epoch(head, scores, {"train": 0.0, "track": track_seconds, "evaluate": evaluate_seconds})

    def after_step(self, step: int) -> None:
        self.state.step = step
        if self.tracking.every is not None and step % self.tracking.every == 0:
            self.step_track_seconds += self.track(step)

    def run_epoch(self, epoch: int, progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train, evaluate and track epoch ``epoch`` and record it; (training summary, accuracies)."""
        self.step_track_seconds = 0.0
        summary = train_epoch(
            self.model,
            self.optimizer,
            self.x_train,
            self.y_train,
            self.train,
            epoch,
            first_step=self.state.step,
            after_step=self.after_step,
            progress=progress,
            ensemble=self.ensemble,
            replica=self.replica,
        )
        train_seconds = summary.pop("seconds") - self.step_track_seconds
        scores, evaluate_seconds, probe_examples = self.evaluate()
        after_epoch = self.track(self.state.step, probe_examples) if self.tracking.every is None else 0.0
        track_seconds = self.step_track_seconds + after_epoch
        head = {"epoch": epoch, "step": self.state.step, **summary, "lr": learning_rate(self.train, epoch)}
        self.record_epoch(head, scores, {"train": train_seconds, "track": track_seconds, "evaluate": evaluate_seconds})
        return summary, scores


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
    trainer = _TrainingRun(
        run,
        model,
        model_config,
        data,
        train,
        tracking,
        device=device,
        kernel_network=kernel_network,
        relative_magnitude=relative_magnitude,
    )
    trainer.progress = progress
    trainer.check_budget()  # a budget too small is refused now, not after the first evaluation
    trainer.start(config, resume, label, metadata)
    epochs_bar = tqdm(
        total=train.epochs, initial=trainer.state.epoch, desc="training", unit="epoch", disable=not progress
    )
    if trainer.state.epoch == 0 and not trainer.history["epochs"]:
        trainer.record_initialisation()
    for epoch in range(trainer.state.epoch + 1, train.epochs + 1):
        summary, scores = trainer.run_epoch(epoch, progress)
        shown = scores[tracking.batchnorm[0]]
        epochs_bar.set_postfix(
            loss=f"{summary['train_loss']:.3f}", test=f"{shown['test_clean']:.3f}", pgd=f"{shown['test_pgd']:.3f}"
        )
        epochs_bar.update(1)
    epochs_bar.close()
    write_json(run.history, trainer.history)
    return trainer.history


def _start(trainer: _TrainingRun, config: dict[str, Any], resume: bool) -> _State:
    """A fresh run (writes ``config.json``), or the state of the last checkpoint of a resumed one.

    A resume reads and checks the stored configuration and the whole checkpoint before it writes
    anything: a refused resume leaves the folder as it was."""
    run = trainer.run
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
    if not isinstance(previous, dict):
        raise RunFolderError(f"--resume: {stored} is not a run's configuration (a JSON object)")
    differences = _differences(_comparable(previous), _comparable(json.loads(json.dumps(config))))
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise RunFolderError(f"--resume: {run.path} was made with a different configuration: {differences[0]}{more}")
    latest = run.latest_checkpoint()
    state = _State() if latest is None else _resumed(trainer, latest)
    write_json(stored, config)  # the epochs may have grown
    for step, stale in run.kernel_files().items():  # kernels of the interrupted epoch
        if step > state.step and distributed.is_main():
            stale.unlink(missing_ok=True)
    return state


def _resumed(trainer: _TrainingRun, latest: Path) -> _State:
    """The state of checkpoint ``latest``, loaded into the trainer's model and optimizer once it is
    checked (``RunFolderError`` in one line otherwise)."""
    try:
        payload = read_checkpoint(latest, map_location=trainer.device)
        check_state_dict(latest, payload.get("state_dict"), trainer.model)
        state = _checkpoint_state(payload, trainer.steps_per_epoch, trainer.ensemble)
    except CheckpointError as error:  # its message names the file
        raise RunFolderError(f"--resume: {error}") from None
    except ValueError as error:
        raise RunFolderError(f"--resume: cannot resume from {latest} ({first_line(error)[:160]})") from None
    if state.epoch > trainer.train.epochs:  # config.json would say fewer epochs than the history holds
        raise RunFolderError(
            f"--resume: {trainer.run.path} has trained {state.epoch} epochs already, more than the "
            f"{trainer.train.epochs} asked: give --epochs {state.epoch} or more"
        )
    try:
        trainer.model.load_state_dict(payload["state_dict"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise RunFolderError(f"--resume: cannot resume from {latest} ({first_line(error)[:160]})") from None
    return state


def _checkpoint_state(payload: dict[str, Any], steps_per_epoch: int, ensemble: TemporalEnsemble | None) -> _State:
    """The state a checkpoint holds, checked to be one its run wrote (``ValueError`` otherwise): an
    epoch of at least 0, a history of exactly the epochs 0 to it, the step count at the end of
    that epoch, and TE's averages of the ensemble's shape. A hand-edited or corrupt one would
    otherwise train nothing, or rewrite history.json without the epochs before it."""
    epoch, step, history = payload.get("epoch"), payload.get("step"), payload.get("history")
    if not _whole(epoch) or epoch < 0:
        raise ValueError(f"its epoch {epoch!r} is not a whole number >= 0")
    if not isinstance(history, dict) or not all(isinstance(history.get(key), list) for key in ("epochs", "kernels")):
        raise ValueError("its history is not a training run's (no lists of epochs and kernels)")
    records = history["epochs"]
    numbers = [record.get("epoch") if isinstance(record, dict) else None for record in records]
    if len(numbers) != epoch + 1 or numbers != list(range(epoch + 1)):
        raise ValueError(f"it claims epoch {epoch}, but its history holds {len(records)} epoch records")
    if not _whole(step) or step != epoch * steps_per_epoch:
        raise ValueError(
            f"its step {step!r} is not {epoch * steps_per_epoch}, the step count at the end of epoch {epoch}"
        )
    averages = payload.get("te_averages")
    if ensemble is not None and averages is not None:
        shape = tuple(ensemble.averages.shape)
        if not isinstance(averages, torch.Tensor) or tuple(averages.shape) != shape:
            raise ValueError(f"its te_averages are not a tensor of shape {shape}")
    return _State(epoch=epoch, step=step, history=history, te_averages=averages)


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
