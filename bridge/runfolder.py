"""The layout of a training run folder (``ntkrobust train --out RUN``), owned here alone.

::

    RUN/config.json                   the resolved configuration (what --resume compares)
    RUN/history.json                  one record per epoch (accuracies) and per tracked kernel (metrics)
    RUN/checkpoints/epoch_000.pt      weights at initialisation, then after every epoch, with the
                                      optimiser state and the history so far (bridge.checkpoint)
    RUN/kernels/probe.npz             x (N, C, H, W) float32, y (N,) class ids, targets (N,) output indices
    RUN/kernels/step_0000000.npz      clean / adversarial (N, N) float64 trace kernels, x_adversarial,
                                      predicted_adversarial (output indices)

Checkpoints are numbered by epoch (at least 3 digits), kernel files by training step (at least 7
digits); ``history.json`` names each kernel file relative to the run folder. The writer is
``bridge.experiment`` (which also documents the contents of ``history.json``), the reader
``bridge.runs``; ``bridge.targets`` recognises a run's checkpoint by its place in the layout.

Paths and names only: no file is read here (pathlib, no numpy, no torch).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import overload

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "HISTORY_FILE",
    "KERNEL_DIR",
    "PROBE_FILE",
    "RunFolder",
    "checkpoint_epoch",
]

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"
KERNEL_DIR = "kernels"
PROBE_FILE = f"{KERNEL_DIR}/probe.npz"

_CHECKPOINT = ("epoch_", ".pt")  # prefix and suffix of a checkpoint's name, around its epoch
_KERNEL = ("step_", ".npz")  # the same for a tracked kernel's file, around its step


class _Member:
    """A file or folder of the layout, read as an attribute of a ``RunFolder``: its path there."""

    def __init__(self, relative: str) -> None:
        self.relative = relative

    @overload
    def __get__(self, run: None, owner: type[RunFolder]) -> _Member: ...
    @overload
    def __get__(self, run: RunFolder, owner: type[RunFolder]) -> Path: ...
    def __get__(self, run: RunFolder | None, owner: type[RunFolder]) -> Path | _Member:
        return self if run is None else run.path / self.relative


@dataclass(frozen=True)
class RunFolder:
    """The files of the run folder ``path`` (which need not exist yet)."""

    path: Path
    config = _Member(CONFIG_FILE)
    history = _Member(HISTORY_FILE)
    checkpoint_dir = _Member(CHECKPOINT_DIR)
    kernel_dir = _Member(KERNEL_DIR)
    probe = _Member(PROBE_FILE)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def checkpoint(self, epoch: int) -> Path:
        """The checkpoint of ``epoch`` (0: initialisation)."""
        prefix, suffix = _CHECKPOINT
        return self.checkpoint_dir / f"{prefix}{epoch:03d}{suffix}"

    def kernel_name(self, step: int) -> str:
        """The file of the kernel tracked at ``step``, relative to the run folder (as ``history.json``
        stores it)."""
        prefix, suffix = _KERNEL
        return f"{KERNEL_DIR}/{prefix}{step:07d}{suffix}"

    def checkpoints(self) -> list[Path]:
        """The saved epoch checkpoints, sorted by epoch."""
        return list(_numbered(self.checkpoint_dir, _CHECKPOINT).values())

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint of the last saved epoch (None before the first)."""
        found = self.checkpoints()
        return found[-1] if found else None

    def kernel_files(self) -> dict[int, Path]:
        """{step: file} of the tracked kernel files on disk, in step order."""
        return _numbered(self.kernel_dir, _KERNEL)

    def in_the_way(self) -> list[Path]:
        """Paths where the run writes a file (its history, a checkpoint, a tracked kernel) that
        hold something else, a folder say: a resume would train an epoch before failing to
        write it."""
        candidates = [self.history, self.probe, *_named(self.checkpoint_dir, _CHECKPOINT)]
        candidates += _named(self.kernel_dir, _KERNEL)
        return [path for path in candidates if (path.exists() or path.is_symlink()) and not path.is_file()]

    def exists(self) -> bool:
        """Whether the folder holds a run (its configuration is a file)."""
        return self.config.is_file()

    def clear(self) -> None:
        """Remove a previous run's files (configuration, history, checkpoints, kernels), nothing else."""
        for folder in (self.checkpoint_dir, self.kernel_dir):
            shutil.rmtree(folder, ignore_errors=True)
        for file in (self.config, self.history):
            file.unlink(missing_ok=True)

    def clears(self, path: Path) -> bool:
        """Whether ``clear`` removes ``path``."""
        path = path.resolve()
        if path in (self.config.resolve(), self.history.resolve()):
            return True
        return any(path.is_relative_to(folder.resolve()) for folder in (self.checkpoint_dir, self.kernel_dir))

    def remove_temporaries(self) -> list[Path]:
        """Remove the hidden ``.NAME.*.tmp`` files of atomic writes that a killed run left behind
        (in the run folder, checkpoints/ and kernels/); the removed ones. Only while no other
        process writes this run (the run's lock is held)."""
        removed = []
        for folder in (self.path, self.checkpoint_dir, self.kernel_dir):
            for temporary in folder.glob(".*.tmp") if folder.is_dir() else ():
                if temporary.is_file():
                    temporary.unlink()
                    removed.append(temporary)
        return removed


def checkpoint_epoch(path: Path) -> tuple[RunFolder, int] | None:
    """(its run folder, epoch) when ``path`` is ``RUN/checkpoints/epoch_NNN.pt`` or a link to one
    (``best.pt`` → ``runs/cnn/checkpoints/epoch_010.pt``: the run's checkpoint), else None."""
    path = Path(path)
    epoch = _number(path.name, _CHECKPOINT)
    if epoch is None or path.parent.name != CHECKPOINT_DIR:
        if not path.is_symlink():
            return None
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link or a loop of links
            return None
        return checkpoint_epoch(target)  # a resolved path is no link: one step of recursion
    return RunFolder(path.parent.parent), epoch


def _number(name: str, pattern: tuple[str, str]) -> int | None:
    """N for a file named prefix + N (ASCII digits) + suffix, else None."""
    prefix, suffix = pattern
    digits = name.removeprefix(prefix).removesuffix(suffix)
    if len(digits) + len(prefix) + len(suffix) != len(name) or not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits)


def _named(folder: Path, pattern: tuple[str, str]) -> list[Path]:
    """Whatever in ``folder`` has a name of ``pattern``'s prefix and suffix (files or not), sorted."""
    prefix, suffix = pattern
    return sorted(folder.glob(f"{prefix}*{suffix}"))


def _numbered(folder: Path, pattern: tuple[str, str]) -> dict[int, Path]:
    """{N: file} of the files in ``folder`` named after ``pattern``, sorted by N (none: {})."""
    found: dict[int, Path] = {}
    for path in _named(folder, pattern):
        number = _number(path.name, pattern)
        if number is not None and path.is_file():
            found[number] = path
    return dict(sorted(found.items()))
