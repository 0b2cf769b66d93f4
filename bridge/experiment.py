"""A training run on disk: train, track kernels and accuracies, checkpoint, resume.

The run folder (``ntkrobust train --out RUN``) is laid out as ``bridge.runfolder`` describes: the
configuration, the history, a checkpoint per epoch and the tracked kernels with their probe.

Every file is written atomically, in this order for each epoch: kernel files, checkpoint,
history. An interrupted run therefore loses at most the epoch in flight: ``resume``
(``bridge._resume``) restarts from the last checkpoint, drops kernel files of later steps, and,
because every random draw is seeded by (seed, epoch, step) (``bridge.training``), reproduces the
uninterrupted run. What is measured is a ``bridge.tracking.TrackingConfig``.

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

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ntkrobust._numbers import pixel_radius
from ntkrobust._progress import progress_bar
from ntkrobust.bridge import distributed
from ntkrobust.bridge._resume import RunFolderError, RunState, start_state
from ntkrobust.bridge.checkpoint import save_checkpoint
from ntkrobust.bridge.data import Dataset, balanced_indices, task_indices
from ntkrobust.bridge.files import write_atomically, write_json
from ntkrobust.bridge.models import ModelConfig
from ntkrobust.bridge.runfolder import RunFolder
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble
from ntkrobust.bridge.tracking import KernelTracker, TrackingConfig, clean_accuracy, pgd_accuracy
from ntkrobust.bridge.training import (
    TrainConfig,
    derived_seed,
    learning_rate,
    make_optimizer,
    replicated,
    train_epoch,
)

__all__ = ["RunFolderError", "TrackingConfig", "run_training"]


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


def _epoch_line(record: dict[str, Any], train: TrainConfig, tracking: TrackingConfig, attacked: int, tests: int) -> str:
    """The epoch's line; the PGD accuracies are on ``attacked`` of the ``tests`` test points
    (--eval-n), said after them where fewer: beside clean accuracy on all of them, a PGD accuracy
    could read as the larger."""
    mode, seconds = tracking.batchnorm[0], record["seconds"]
    scores = record["accuracy"][mode]
    parts = ["initialisation" if record["epoch"] == 0 else f"epoch {record['epoch']}/{train.epochs}"]
    if record.get("eps") is not None and record["eps"] < train.eps:
        parts.append(f"eps {pixel_radius(record['eps'])} (warming up)")
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f}")
    parts.append(f"test clean {scores['test_clean']:.3f}")
    parts.append(f"PGD-{tracking.steps} {scores['test_pgd']:.3f}")
    spent = [f"{seconds['train']:.1f} s training", f"{seconds['evaluate']:.1f} s evaluation"]
    spent.append(f"{seconds['track']:.1f} s kernels")
    full = record.get("full_evaluation")
    if full:  # on the same points as the per-epoch PGD
        parts.append(f"PGD-{full['steps']} {full['accuracy'][mode]['test_pgd']:.3f}")
        spent.append(f"{full['seconds']:.1f} s full evaluation")
    share = f" on {attacked} of {tests} points" if attacked < tests else ""
    return f"{parts[0]}: {', '.join(parts[1:])}{share} ({', '.join(spent)})"


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
        self.state = RunState()
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
        probe = None
        if self.trackers:  # the trackers' x and targets, from the host's data (no device read)
            probe = {
                "x": np.asarray(self.data.x_train[self.chosen]).astype(np.float32),
                "y": self.data.y_train[self.chosen],
                "targets": task_indices(self.data.y_train, self.data.classes)[self.chosen],
            }
        self.state = start_state(
            self.run,
            config,
            resume,
            model=self.model,
            optimizer=self.optimizer,
            device=self.device,
            epochs=self.train.epochs,
            steps_per_epoch=self.steps_per_epoch,
            ensemble=self.ensemble,
            probe=probe,
        )
        if probe is not None and self.state.write_probe:
            _save_arrays(self.run.probe, probe)
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
        # a loop left open by an error would name itself in every later loop's lines (_progress)
        with progress_bar(2 * len(tracking.batchnorm), "evaluating", "split", show=self.progress) as bar:
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
        with progress_bar(2 * len(modes), f"PGD-{attack.steps}", "split", show=self.progress) as bar:
            for mode in modes:
                accuracy[mode] = {}
                for split, x, y, subset in self._splits():
                    index = subset.to(x.device)
                    accuracy[mode][f"{split}_pgd"] = pgd_accuracy(
                        self.model, x[index], y[index], attack, batchnorm=mode, across_processes=True
                    )[0]
                    bar.update(1)
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
        _log.info(_epoch_line(record, self.train, self.tracking, len(self.eval_test), self.x_test.shape[0]))

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
        after_epoch = 0.0
        if self.tracking.every is None:
            after_epoch = self.track(self.state.step, probe_examples)
        elif epoch == self.train.epochs and self.state.step % self.tracking.every:
            # the trained net's kernel, off the grid of --track-every: every run ends on its own
            after_epoch = self.track(self.state.step, probe_examples)
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
