"""The run-folder layout: file names, checkpoints by epoch, recognising a run's checkpoint, clearing a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntkrobust.bridge import targets
from ntkrobust.bridge.runfolder import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    KERNEL_DIR,
    PROBE_FILE,
    RunFolder,
    checkpoint_epoch,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_names_of_the_layout(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert (CONFIG_FILE, HISTORY_FILE, CHECKPOINT_DIR, KERNEL_DIR, PROBE_FILE) == (
        "config.json",
        "history.json",
        "checkpoints",
        "kernels",
        "kernels/probe.npz",
    )
    assert run.config == tmp_path / "run" / "config.json"
    assert run.history == tmp_path / "run" / "history.json"
    assert run.checkpoint_dir == tmp_path / "run" / "checkpoints"
    assert run.kernel_dir == tmp_path / "run" / "kernels"
    assert run.probe == tmp_path / "run" / "kernels" / "probe.npz"
    assert run.checkpoint(0) == tmp_path / "run" / "checkpoints" / "epoch_000.pt"
    assert run.checkpoint(1000).name == "epoch_1000.pt"
    assert run.kernel_name(0) == "kernels/step_0000000.npz"
    assert run.kernel_name(1234) == "kernels/step_0001234.npz"
    assert RunFolder(str(tmp_path)).path == tmp_path  # a str becomes a Path
    assert RunFolder(tmp_path) == RunFolder(tmp_path) and hash(RunFolder(tmp_path)) == hash(RunFolder(tmp_path))


def test_checkpoints_are_sorted_by_epoch(tmp_path):
    run = RunFolder(tmp_path)
    assert run.checkpoints() == [] and run.latest_checkpoint() is None  # no folder yet
    for epoch in (1000, 2, 999, 0, 10):
        _touch(run.checkpoint(epoch))
    for other in ("epoch_abc.pt", "epoch_.pt", "epoch_003.pt2", "other_004.pt", ".epoch_005.pt.x1.tmp"):
        _touch(run.checkpoint_dir / other)
    (run.checkpoint_dir / "epoch_006.pt").mkdir()  # a folder is no checkpoint
    assert run.checkpoints() == [run.checkpoint(e) for e in (0, 2, 10, 999, 1000)]
    assert run.latest_checkpoint() == run.checkpoint(1000)


def test_kernel_files_by_step(tmp_path):
    run = RunFolder(tmp_path)
    assert run.kernel_files() == {}
    for step in (40, 0, 10_000_000, 7):
        _touch(run.path / run.kernel_name(step))
    _touch(run.probe)
    assert list(run.kernel_files()) == [0, 7, 40, 10_000_000]
    assert run.kernel_files()[7] == run.path / run.kernel_name(7)


@pytest.mark.parametrize("epoch", [0, 7, 1000])
def test_checkpoint_epoch_of_a_runs_checkpoint(tmp_path, epoch):
    run = RunFolder(tmp_path / "standard")
    assert checkpoint_epoch(run.checkpoint(epoch)) == (run, epoch)


def test_a_link_to_a_runs_checkpoint_is_that_checkpoint(tmp_path):
    """``best.pt`` → ``runs/cnn/checkpoints/epoch_010.pt`` names the run and its epoch (was the
    link's stem, and no place on the dynamics curves); a dangling link or a loop is none."""
    run = RunFolder(tmp_path / "runs" / "cnn")
    _touch(run.checkpoint(10))
    best = tmp_path / "best.pt"
    best.symlink_to(run.checkpoint(10))
    assert checkpoint_epoch(best) == (RunFolder(run.path.resolve()), 10)
    assert targets._label(best) == "cnn epoch 10" and targets._curve(best) == ("cnn", 10)  # evaluate, transfer
    relative = tmp_path / "runs" / "latest.pt"
    relative.symlink_to(Path("cnn/checkpoints/epoch_010.pt"))
    assert checkpoint_epoch(relative) == (RunFolder(run.path.resolve()), 10)
    (tmp_path / "gone.pt").symlink_to(tmp_path / "runs" / "old" / "checkpoints" / "epoch_001.pt")
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    (tmp_path / "other.pt").symlink_to(tmp_path / "runs" / "cnn" / "config.json")
    for path in ("gone.pt", "a.pt", "other.pt"):
        assert checkpoint_epoch(tmp_path / path) is None


def test_checkpoint_epoch_of_a_relative_path():
    assert checkpoint_epoch(Path("runs/cnn/checkpoints/epoch_010.pt")) == (RunFolder(Path("runs/cnn")), 10)


@pytest.mark.parametrize(
    "path",
    [
        "run/checkpoints/epoch_abc.pt",
        "run/checkpoints/epoch_.pt",
        "run/checkpoints/epoch_001.pt2",
        "run/checkpoints/epoch_001",
        "run/checkpoints/step_001.pt",
        "run/checkpoints/epoch_²³.pt",
        "run/other/epoch_001.pt",
        "run/epoch_001.pt",
        "epoch_001.pt",
        "run/checkpoints/net.pt",
    ],
)
def test_checkpoint_epoch_of_other_paths(path):
    assert checkpoint_epoch(Path(path)) is None


def test_exists_and_clear_remove_only_the_runs_files(tmp_path):
    run = RunFolder(tmp_path)
    assert not run.exists()
    run.clear()  # nothing to clear: no error
    run.config.mkdir()
    assert not run.exists()  # config.json must be a file
    run.config.rmdir()
    for path in (run.config, run.history, run.checkpoint(0), run.checkpoint(3), run.probe):
        _touch(path)
    _touch(run.path / run.kernel_name(5))
    kept = [_touch(tmp_path / "notes.txt"), _touch(tmp_path / "figures" / "kernels.png")]
    assert run.exists()
    run.clear()
    assert not run.exists()
    assert sorted(p for p in tmp_path.rglob("*")) == sorted([*kept, tmp_path / "figures"])
