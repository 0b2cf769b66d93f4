"""Audit of the run-folder layout's checks (``bridge.runfolder``): what stands in a run's way,
what ``clear`` would remove, the leftovers of killed writes, and names that only look like a
checkpoint's. Each test failed on a mutant of the code that test_runfolder.py let through; the
folders are built here by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntkrobust.bridge.runfolder import RunFolder, checkpoint_epoch


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    "where",
    [
        lambda run: run.history,
        lambda run: run.probe,
        lambda run: run.checkpoint(2),
        lambda run: run.path / run.kernel_name(40),
    ],
    ids=["history", "probe", "checkpoint", "kernel"],
)
@pytest.mark.parametrize("what", ["folder", "dangling-link", "fifo"])
def test_whatever_is_no_file_where_a_run_writes_one_is_in_the_way(tmp_path, where, what):
    """A folder, a FIFO, or a link to nowhere (``exists()`` says False for it, yet the rename
    onto it would replace the link, not write where the user pointed) at any file the run writes."""
    import os

    run = RunFolder(tmp_path / "run")
    for path in (run.config, run.history, run.checkpoint(0), run.checkpoint(1), run.probe):
        _touch(path)
    _touch(run.path / run.kernel_name(0))
    assert run.in_the_way() == []  # files are what belongs there
    path = where(run)
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if what == "folder":
        path.mkdir()
    elif what == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(tmp_path / "nowhere")
    assert run.in_the_way() == [path]


def test_a_link_to_a_file_is_not_in_the_way(tmp_path):
    run = RunFolder(tmp_path / "run")
    _touch(tmp_path / "elsewhere.pt")
    run.checkpoint_dir.mkdir(parents=True)
    run.checkpoint(1).symlink_to(tmp_path / "elsewhere.pt")
    assert run.in_the_way() == []


def test_clears_is_true_exactly_for_what_clear_removes(tmp_path):
    """Checked on the resolved paths, as ``clear`` acts on the files themselves: a path that
    reaches a run file through ``..`` or a link is cleared, one that only starts with
    ``checkpoints/`` but leads out of it is not. And ``clear`` then removes just those."""
    run = RunFolder(tmp_path / "run")
    for path in (run.config, run.history, run.checkpoint(0), run.probe, run.path / run.kernel_name(7)):
        _touch(path)
    notes = _touch(run.path / "notes.txt")
    (tmp_path / "history-link.json").symlink_to(run.history)
    cleared = {
        run.config: True,
        run.history: True,
        run.checkpoint(0): True,
        run.probe: True,
        run.path / run.kernel_name(7): True,
        run.checkpoint_dir / ".." / "history.json": True,
        tmp_path / "history-link.json": True,
        notes: False,
        run.checkpoint_dir / ".." / "notes.txt": False,
        run.kernel_dir / ".." / "notes.txt": False,
        tmp_path / "run": False,
    }
    assert {path: run.clears(path) for path in cleared} == cleared
    run.clear()
    # (checkpoints/ and kernels/ are gone: the paths through them no longer exist)
    assert {path for path in cleared if path.exists()} == {notes, run.path} and notes.read_bytes() == b""


def test_clears_sees_through_a_link_to_the_run_folder(tmp_path):
    run = RunFolder(tmp_path / "real")
    _touch(run.checkpoint(1))
    (tmp_path / "alias").symlink_to(run.path)
    assert run.clears(tmp_path / "alias" / "checkpoints" / "epoch_001.pt")
    assert RunFolder(tmp_path / "alias").clears(run.checkpoint(1))


def test_only_the_hidden_temporaries_of_atomic_writes_are_removed(tmp_path):
    """``.NAME.*.tmp`` in the run folder, checkpoints/ and kernels/: removed. A user's visible
    ``*.tmp``, a folder named like a temporary, and temporaries elsewhere: kept."""
    run = RunFolder(tmp_path / "run")
    removed = [
        _touch(run.path / ".history.json.ab12.tmp"),
        _touch(run.checkpoint_dir / ".epoch_001.pt.x9.tmp"),
        _touch(run.kernel_dir / ".step_0000010.npz.q.tmp"),
    ]
    kept = [
        _touch(run.path / "notes.tmp"),
        _touch(run.checkpoint_dir / "epoch_002.tmp"),
        _touch(run.path / "figures" / ".plot.png.1.tmp"),
        _touch(tmp_path / ".history.json.zz.tmp"),
    ]
    (run.kernel_dir / ".folder.tmp").mkdir()
    assert sorted(run.remove_temporaries()) == sorted(removed)
    assert not any(path.exists() for path in removed)
    assert all(path.exists() for path in kept) and (run.kernel_dir / ".folder.tmp").is_dir()
    assert RunFolder(tmp_path / "none").remove_temporaries() == []  # no folder yet


@pytest.mark.parametrize("name", ["001.pt", "epoch001.pt", "epoch_1.pt.pt", "xepoch_001.pt", "epoch_-01.pt"])
def test_names_that_only_look_like_a_checkpoint_are_not_one(tmp_path, name):
    """``epoch_`` + ASCII digits + ``.pt``, the whole name: neither a missing prefix nor a doubled
    suffix is left out unnoticed."""
    assert checkpoint_epoch(Path("run/checkpoints") / name) is None
    run = RunFolder(tmp_path)
    _touch(run.checkpoint_dir / name)
    assert run.checkpoints() == []
