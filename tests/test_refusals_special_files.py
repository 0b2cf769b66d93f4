"""Files that are no regular files, or that never end, wherever a command reads one.

A FIFO blocks its reader until a writer comes (for good, where none does), /dev/zero never ends,
/dev/null is empty, a folder or a loop of symbolic links cannot be read at all. Every command
either refuses such a stand-in in one line (exit 2, nothing written) or, for a file of its own
(a Gram cache entry, a lock), says what it does about it; none may hang. The readers are held to
that under an alarm: a read that blocks fails the test after ``HANG_SECONDS`` instead of
stalling the suite (``files.read_json`` blocked on a FIFO config.json until 1ce287a).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_refusals_fifth_audit import DIGITS

HANG_SECONDS = 30
ATTACK = ["attack", *DIGITS, "--arch", "fc1", "--quiet"]


class Hung(BaseException):
    """Raised by the alarm in a read that blocked: a BaseException, so no refusal of the CLI's
    (``except OSError``, ``except Exception``) can take it for an ordinary error."""


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    """The block, or ``Hung`` once it has run ``seconds``: a blocked ``open`` of a FIFO is
    interrupted by the signal, and the handler's exception ends it (PEP 475 retries only a call
    whose handler returns)."""

    def hung(signum: int, frame: object) -> None:
        raise Hung(f"still reading after {seconds} s: a reader blocked on a FIFO or an endless file")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def stand_in(path: Path, kind: str) -> Path:
    """``path`` replaced by a FIFO, a link to /dev/zero or /dev/null, a folder, or a loop of links."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path.with_name(f"{path.name}.other"))
        path.with_name(f"{path.name}.other").symlink_to(path)
    else:
        path.symlink_to(f"/dev/{kind}")
    return path


#: a run of one epoch with tracked kernels (probe.npz, step_*.npz), in seconds
TRAIN = ["train", *DIGITS, "--epochs", 1, "--model", "fc2", "--width", 8, "--track-kernel", 10, "--eval-n", 10]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    """The run folder of ``TRAIN``: copy it to change it."""
    from ntkrobust import cli

    out = tmp_path_factory.mktemp("special") / "run"
    assert cli.main([str(a) for a in [*TRAIN, "--quiet", "--out", out]]) == 0
    assert (out / "kernels" / "probe.npz").is_file()
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# -- bugs: each hung (or read without end) before the fix ----------------------------------------


def test_the_npz_reader_refuses_a_fifo_before_opening_it(tmp_path):
    """``files.read_npz`` (run folders' probe and kernel files, --data) opened the file to ask
    whether it can be read: ``open`` of a FIFO blocks until a writer comes. Now it says what the
    file is, as ``read_json`` does, and so does ``refusal_reason`` (the checkpoints' reader)."""
    from ntkrobust.bridge.files import NpzError, read_npz, refusal_reason

    fifo = stand_in(tmp_path / "a.npz", "fifo")
    with no_hang(), pytest.raises(NpzError, match=r"^is not a regular file$"):
        read_npz(fifo, ("x",))
    with no_hang():
        assert refusal_reason(fifo, ValueError("x")) == "is not a regular file"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # read nothing of it, and left it there


def test_dynamics_refuses_a_fifo_named_as_a_runs_probe(tracked_run, tmp_path, assert_refused):
    """``dynamics RUN`` hung for good on a FIFO named kernels/probe.npz (``runs._load_npz``
    checked only that the name exists). Now: one line naming the file, before any figure."""
    run = _copy(tracked_run, tmp_path)
    probe = stand_in(run / "kernels" / "probe.npz", "fifo")
    with no_hang():
        assert_refused(["dynamics", run, "--quiet"], f"{probe}: is not a regular file")


def test_a_fifo_in_the_gram_cache_is_recomputed_with_a_warning(tmp_path, run_cli):
    """A FIFO at a Gram cache entry's name blocked ``np.load`` for good (every attack, features
    or transfer run on that cache hung). Now it is no entry: a warning, the Gram computed, and the
    entry written in its place, as for a damaged file."""
    cache = tmp_path / "cache"
    code, _, err = run_cli([*ATTACK, "--cache-dir", cache, "--out", tmp_path / "first"])
    assert code == 0, err
    (entry,) = cache.glob("gram-*.npz")
    stand_in(entry, "fifo")
    with no_hang():
        code, _, err = run_cli([*ATTACK, "--cache-dir", cache, "--out", tmp_path / "second"])
    assert code == 0 and "Traceback" not in err, err
    assert f"Gram cache entry {entry} is corrupt or not this Gram's: recomputing and replacing it" in err
    assert entry.is_file() and (tmp_path / "second" / "results.json").is_file()


@pytest.mark.parametrize(("kind", "said"), [("fifo", "is not a regular file"), ("dir", "is a folder")])
def test_a_fifo_or_a_folder_in_place_of_the_out_lock_is_refused_and_left_alone(kind, said, tmp_path, assert_refused):
    """A FIFO named .OUT.lock beside --out hung every command (the lock's holder was read from
    it); a folder there was moved aside to .ntkrobust-stale-lock.PID and the run refused with
    "Is a directory (...stale-lock...)". (/dev/zero there was read until memory ran out: not run
    here.) Now: one line naming the lock, and the thing left where it was."""
    lock = stand_in(tmp_path / ".out.lock", kind)
    with no_hang():
        assert_refused([*ATTACK, "--no-cache"], f"--out {tmp_path / 'out'}: its lock {lock} {said}: move it away")
    assert (stat.S_ISFIFO if kind == "fifo" else stat.S_ISDIR)(os.lstat(lock).st_mode)
    assert not list(tmp_path.glob(".ntkrobust-stale-lock.*"))


def test_report_html_never_reads_a_fifo_figure(tmp_path):
    """report.html embeds each figure's bytes: a FIFO at a figure's path (a step folder is the
    user's) hung ``reproduce`` at its very end, and /dev/zero would be read without end.
    report.md already asked ``is_file``; now report.html does too: "figure missing"."""
    from ntkrobust.reproduce.report import render_html

    stand_in(tmp_path / "a.png", "fifo")
    figure = {"path": "a.png", "caption": "a FIFO"}
    finding = {"recipe": "r", "verdict": "agrees", "figures": [figure]}
    report = {"reproduction": {"out": str(tmp_path)}, "findings": [finding]}
    with no_hang():
        text = render_html(report, tmp_path)
    assert "(figure missing: a.png) a FIFO" in text


# -- what already holds: the most read files ------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("zero", "is not a regular file"),
        ("null", "is not a regular file"),
        ("dir", "is a folder"),
        ("loop", "is a symbolic link that loops"),
    ],
)
def test_data_npz_stand_ins_are_refused_in_one_line(kind, said, tmp_path, assert_refused):
    """--data X.npz: a device (endless or empty), a folder or a loop of links is named for what it
    is, before anything is read or written (``_data_sources._npz`` asks ``not_a_file`` first)."""
    data = stand_in(tmp_path / "x.npz", kind)
    with no_hang():
        assert_refused(["attack", "--data", data, "--n-train", 30, "--n-test", 10], f"dataset file {data} {said}")


@pytest.mark.parametrize("kind", ["dir", "loop", "zero"])
def test_dynamics_refuses_other_stand_ins_for_the_probe(kind, tracked_run, tmp_path, assert_refused):
    """A folder at kernels/probe.npz is "Is a directory"; a link out of the run folder (to
    /dev/zero, or a loop) is refused as lying outside it, never followed and read."""
    run = _copy(tracked_run, tmp_path)
    stand_in(run / "kernels" / "probe.npz", kind)
    said = "Is a directory" if kind == "dir" else "the probe, 'kernels/probe.npz', lies outside this folder"
    with no_hang():
        assert_refused(["dynamics", run, "--quiet"], said)


@pytest.mark.parametrize("name", ["kernels/probe.npz", "history.json"])
def test_train_resume_refuses_a_fifo_in_the_run_folder(name, tracked_run, tmp_path, run_cli):
    """train --resume refuses a FIFO where the run writes a file, before it reads or trains, and
    leaves the folder as it was."""
    run = _copy(tracked_run, tmp_path)
    fifo = stand_in(run / name, "fifo")
    before = sorted(p.name for p in run.rglob("*"))
    with no_hang():
        code, _, err = run_cli([*TRAIN, "--quiet", "--resume", "--out", run])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--resume: {fifo} is not a file, and the run writes one there: move it away" in err
    assert sorted(p.name for p in run.rglob("*")) == before and stat.S_ISFIFO(os.stat(fifo).st_mode)
