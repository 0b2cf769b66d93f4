"""``cli.main``'s last line, exit status and signal handling, found by a mutation audit of
``cli.py``: each test failed on a mutation the neighbouring tests let through.

No compute runs: the study's ``run`` (or ``cli.run_command``) is replaced by one that raises the
error in question, so each test checks what ``main`` makes of it, against the line written out
here by hand (the independent route: the contract in ``cli.py``'s docstrings, not its code).
Under torchrun the launcher's variables are set with monkeypatch and the process group is never
joined (``distributed.init_from_environment`` replaced), so no rendezvous waits.
"""

from __future__ import annotations

import errno
import importlib
import io
import logging
import os
import signal
import sys
import warnings

import pytest

from ntkrobust.studies._base import StudyError


def _raising(error):
    def run(*args, **kwargs):
        raise error() if isinstance(error, type) else error

    return run


def _training_that_wrote_its_config(error):
    """A training run that started (its ``config.json`` written, as ``--resume`` reads it), then stopped."""

    def run(settings, **kwargs):
        settings.out.mkdir(parents=True)
        (settings.out / "config.json").write_text("{}")
        raise error() if isinstance(error, type) else error

    return run


def _training_stopped_before_its_config(error):
    """A training run that made its folder but stopped before its ``config.json``: nothing resumes."""

    def run(settings, **kwargs):
        settings.out.mkdir(parents=True)
        raise error() if isinstance(error, type) else error

    return run


# -- OSError: the reason and the file, one line, status 2 -----------------------------------------


def test_an_os_error_says_its_reason_and_its_file(tmp_path, run_cli, monkeypatch):
    """``strerror (filename)``, not Python's ``[Errno 28] ...: 'name'`` form; without a filename no
    empty parentheses."""
    where = str(tmp_path / "out" / "kernel.npz")
    monkeypatch.setattr("ntkrobust.studies.attack.run", _raising(OSError(errno.ENOSPC, "No space left", where)))
    code, stdout, stderr = run_cli(["attack", "--out", tmp_path / "out"])
    assert (code, stdout, stderr) == (2, "", f"ntkrobust: error: No space left ({where})\n")
    monkeypatch.setattr("ntkrobust.studies.attack.run", _raising(OSError(errno.EROFS, "Read-only file system")))
    code, _, stderr = run_cli(["attack", "--out", tmp_path / "out"])
    assert (code, stderr) == (2, "ntkrobust: error: Read-only file system\n")


# -- out of memory: any case of the words, one line ------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 3200000000 bytes.",  # XLA's (JAX) wording
        "CUDA out of memory. Tried to allocate 2.00 GiB",  # torch's
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1600000 bytes",
    ],
)
def test_out_of_memory_is_told_in_any_case_of_the_words(message, tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr("ntkrobust.studies.attack.run", _raising(RuntimeError(message)))
    code, _, stderr = run_cli(["attack", "--out", tmp_path / "out"])
    expected = f"ntkrobust: error: out of memory ({message}); try fewer points, a smaller --width or --memory-budget\n"
    assert (code, stderr) == (2, expected)


def test_other_errors_of_a_study_are_not_swallowed(tmp_path, run_cli, monkeypatch):
    """Only another rank's ``StoppedWithAnother`` ends silently with status 2; a bug's own error
    keeps its traceback (a ValueError is neither a refusal nor out of memory)."""
    monkeypatch.setattr("ntkrobust.studies.attack.run", _raising(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        run_cli(["attack", "--out", tmp_path / "out"])


# -- the resume hint: where a run resumes, and only there ----------------------------------------

TRAIN = ["train", "--data", "digits", "--n-train", "30", "--n-test", "10"]


@pytest.mark.parametrize(
    ("error", "line", "status"),
    [
        (KeyboardInterrupt, "ntkrobust: interrupted{hint}\n", 130),
        (
            RuntimeError("CUDA out of memory. Tried to allocate 1 GiB"),
            "ntkrobust: error: out of memory (CUDA out of memory. Tried to allocate 1 GiB); "
            "try fewer points, a smaller --width or --memory-budget{hint}\n",
            2,
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "ntkrobust: error: No space left on device{hint}\n", 2),
    ],
)
def test_a_training_run_that_stopped_says_it_resumes_only_once_it_can(
    error, line, status, tmp_path, run_cli, monkeypatch
):
    """``train --resume`` reads the run's ``config.json``: with it the line says to resume, and
    without it (a folder made, nothing to resume from) it says nothing of the kind."""
    out = tmp_path / "run"
    monkeypatch.setattr("ntkrobust.studies.train.run", _training_that_wrote_its_config(error))
    code, _, stderr = run_cli([*TRAIN, "--out", out])
    hint = f"; the run in {out} stays resumable: run the same command with --resume"
    assert (code, stderr) == (status, line.format(hint=hint))
    other = tmp_path / "fresh"
    monkeypatch.setattr("ntkrobust.studies.train.run", _training_stopped_before_its_config(error))
    code, _, stderr = run_cli([*TRAIN, "--out", other])
    assert (code, stderr) == (status, line.format(hint=""))


def test_a_reproduction_says_it_resumes_once_a_step_finished(tmp_path, run_cli, monkeypatch):
    """``reproduce`` keeps its finished steps in OUT/steps: the hint needs that folder, not OUT alone."""
    reproduce = importlib.import_module("ntkrobust.reproduce.run")

    def stopped(settings, **kwargs):
        settings.out.mkdir(parents=True, exist_ok=True)
        if settings.out.name == "with-steps":
            (settings.out / "steps").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce, "run", stopped)
    out = tmp_path / "with-steps"
    code, _, stderr = run_cli(["reproduce", "tk", "--out", out])
    hint = f"; finished steps in {out} are kept: run the same command to resume"
    assert (code, stderr) == (130, f"ntkrobust: interrupted{hint}\n")
    code, _, stderr = run_cli(["reproduce", "tk", "--out", tmp_path / "none-yet"])
    assert (code, stderr) == (130, "ntkrobust: interrupted\n")


# -- SIGTERM: 143, "terminated", and the handler that was there before given back ---------------


class _Sentinel(Exception):
    """Raised by the handler installed before ``main``: reaching it means ``main`` did not install its own."""


def _sentinel_handler(signum, frame):
    raise _Sentinel


def test_sigterm_ends_the_command_with_143_and_restores_the_handler(tmp_path, run_cli, monkeypatch):
    """SIGTERM raised in-process while the study runs: ``main`` catches it (its handler), prints
    one line, returns 128 + 15, and puts back the handler it found (here a sentinel, which
    would raise if ``main`` had not installed its own)."""
    monkeypatch.setattr("ntkrobust.studies.attack.run", lambda *a, **k: signal.raise_signal(signal.SIGTERM))
    before = signal.signal(signal.SIGTERM, _sentinel_handler)
    try:
        code, _, stderr = run_cli(["attack", "--out", tmp_path / "out"])
        assert (code, stderr) == (143, "ntkrobust: terminated\n")
        assert signal.getsignal(signal.SIGTERM) is _sentinel_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_sigterm_during_training_says_the_run_resumes(tmp_path, run_cli, monkeypatch):
    out = tmp_path / "run"

    def stopped(settings, **kwargs):
        settings.out.mkdir(parents=True)
        (settings.out / "config.json").write_text("{}")
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr("ntkrobust.studies.train.run", stopped)
    before = signal.signal(signal.SIGTERM, _sentinel_handler)
    try:
        code, _, stderr = run_cli([*TRAIN, "--out", out])
    finally:
        signal.signal(signal.SIGTERM, before)
    hint = f"; the run in {out} stays resumable: run the same command with --resume"
    assert (code, stderr) == (143, f"ntkrobust: terminated{hint}\n")


# -- under torchrun: who speaks, and rank 0's checks --------------------------------------------


@pytest.fixture
def launch(monkeypatch):
    """``launch(rank)``: the variables torchrun sets for a process of 2, the group never joined."""
    from ntkrobust.bridge import distributed

    monkeypatch.setattr(distributed, "init_from_environment", lambda *a, **k: None)

    def set_rank(rank):
        for name, value in {
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500",
        }.items():
            monkeypatch.setenv(name, value)

    return set_rank


ENTK = ["entk", "--data", "digits", "--model", "fc2", "--points", "4"]


@pytest.mark.parametrize(("rank", "speaker"), [(0, "ntkrobust"), (1, "ntkrobust (rank 1)")])
@pytest.mark.parametrize(
    ("error", "said"),
    [
        (StudyError("--data-root: no such folder on this node"), "error: --data-root: no such folder on this node"),
        (
            MemoryError("8 GiB"),
            "error: out of memory (8 GiB); try fewer points, a smaller --width or --memory-budget",
        ),
        (KeyboardInterrupt, "interrupted"),
    ],
)
def test_each_rank_names_itself_in_its_own_error_and_rank_zero_does_not(
    rank, speaker, error, said, launch, tmp_path, run_cli, monkeypatch
):
    """An error after the flags were read may be one process's alone (its node lacks the data):
    every rank prints its own line, the later ones with their rank, rank 0 as a single process."""
    launch(rank)
    monkeypatch.setattr("ntkrobust.studies.entk.run", _raising(error))
    code, _, stderr = run_cli([*ENTK, "--out", tmp_path / "k"])
    assert (code, stderr) == (130 if error is KeyboardInterrupt else 2, f"{speaker}: {said}\n")


def test_rank_zero_of_a_launch_checks_the_output_before_the_compute(launch, tmp_path, run_cli, monkeypatch):
    """Rank 0 alone checks --out (rank 1 would see the same folder on shared storage and race)."""
    launch(0)
    out = tmp_path / "k"
    out.mkdir()
    (out / "kept.txt").write_text("x")
    monkeypatch.setattr("ntkrobust.studies.entk.run", _raising(AssertionError("ran before --out was checked")))
    code, _, stderr = run_cli([*ENTK, "--out", out])
    assert code == 2 and stderr.startswith("ntkrobust: error: ") and str(out) in stderr, stderr
    assert stderr.count("\n") == 1 and os.listdir(out) == ["kept.txt"]


@pytest.mark.parametrize(("port", "refused"), [("65535", False), ("65536", True), ("0", True)])
def test_master_port_must_be_a_port_number(port, refused, launch, tmp_path, run_cli, monkeypatch):
    """Ports run from 1 to 65535; a launch set by hand beyond them met torch's rendezvous."""
    launch(1)
    monkeypatch.setenv("MASTER_PORT", port)
    monkeypatch.setattr("ntkrobust.studies.entk.run", _raising(StudyError("reached the study")))
    code, _, stderr = run_cli([*ENTK, "--out", tmp_path / "k"])
    said = f"the environment variable MASTER_PORT={port!r} is not a port number (set by torchrun)"
    assert (code, stderr) == (2, f"ntkrobust (rank 1): error: {said if refused else 'reached the study'}\n")


@pytest.fixture
def package_logger():
    """The ``ntkrobust`` logger with a handler of the test's own (whatever earlier tests attached),
    its level put back afterwards (``setLevel`` also clears the level cache)."""
    logger = logging.getLogger("ntkrobust")
    level, handlers, propagate = logger.level, logger.handlers, logger.propagate
    records: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.DEBUG)
    catcher.emit = records.append
    logger.handlers = [catcher]
    yield records
    logger.handlers, logger.propagate = handlers, propagate
    logger.setLevel(level)


def test_a_later_rank_runs_the_study_quietly_and_leaves_the_group(
    launch, package_logger, tmp_path, run_cli, monkeypatch
):
    """Rank 1 runs the same study as rank 0 (which says it all): no bars, no stage lines or
    warnings, no check of --out (rank 0's, shared: a non-empty one without --force is rank 0's to
    refuse), no summary, and it leaves the group once done."""
    from ntkrobust.bridge import distributed
    from ntkrobust.studies._base import StudyWarning

    launch(1)
    seen = {}

    def study(settings, *, progress, argv):
        seen["progress"] = progress
        logging.getLogger("ntkrobust").warning("a stage line rank 0 says")
        warnings.warn("a warning rank 0 says", StudyWarning, stacklevel=1)

    left = []
    monkeypatch.setattr("ntkrobust.studies.entk.run", study)
    monkeypatch.setattr(distributed, "leave", lambda: left.append(True))
    out = tmp_path / "k"
    out.mkdir()
    (out / "rank0s.txt").write_text("x")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        code, stdout, stderr = run_cli([*ENTK, "--out", out])
    assert (code, stdout, stderr) == (0, "", "")
    assert seen == {"progress": False} and left == [True] and package_logger == []
    assert not [w for w in shown if issubclass(w.category, StudyWarning)]
    assert os.listdir(out) == ["rank0s.txt"]


class _Result:
    def __init__(self, summary):
        self.text = summary

    def save(self, out, *, overwrite=False):
        out.mkdir()
        (out / "results.json").write_text("{}")

    def summary(self):
        return self.text


@pytest.mark.parametrize(
    ("summary", "line"),
    [("K 4x4", "K 4x4 (world size 2) -> {out}\n"), ("K 4x4\nacc 0.5", "K 4x4\nacc 0.5 (world size 2)\n-> {out}\n")],
)
def test_rank_zero_saves_says_the_world_size_and_leaves_the_group(
    summary, line, launch, tmp_path, run_cli, monkeypatch
):
    """Rank 0's summary names the launch's size; a summary of several lines puts the arrow on its own."""
    from ntkrobust.bridge import distributed

    launch(0)
    left = []
    monkeypatch.setattr("ntkrobust.studies.entk.run", lambda *a, **k: _Result(summary))
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "leave", lambda: left.append(True))
    out = tmp_path / "k"
    code, stdout, _ = run_cli([*ENTK, "--quiet", "--out", out])
    assert (code, stdout, left) == (0, line.format(out=out), [True])
    assert os.listdir(out) == ["results.json"]


def test_a_kernel_or_loss_not_finite_is_one_line(tmp_path, run_cli, monkeypatch):
    """numpy's ``errstate(all="raise")`` and the studies' finiteness checks raise FloatingPointError."""
    monkeypatch.setattr("ntkrobust.studies.attack.run", _raising(FloatingPointError("the kernel is not finite")))
    code, _, stderr = run_cli(["attack", "--out", tmp_path / "out"])
    assert (code, stderr) == (2, "ntkrobust: error: the kernel is not finite\n")


def test_a_rank_stopped_by_anothers_refusal_says_nothing_and_exits_2(launch, tmp_path, run_cli, monkeypatch):
    """The rank that refused says why (``failing_together``); the one it stopped adds nothing."""
    from ntkrobust.bridge import distributed

    launch(1)
    monkeypatch.setattr("ntkrobust.studies.entk.run", _raising(distributed.StoppedWithAnother("rank 0 failed")))
    code, stdout, stderr = run_cli([*ENTK, "--out", tmp_path / "k"])
    assert (code, stdout, stderr) == (2, "", "")


def test_train_leaves_its_inputs_under_force_to_its_study(tmp_path, run_cli, monkeypatch):
    """``train --force`` clears only its run's own files (the study refuses an input among them):
    a data file kept in --out is not one, so the command line's check for other commands'
    ``--force`` (every file directly in --out replaced) must not refuse it."""
    out = tmp_path / "run"
    out.mkdir()
    data = out / "data.npz"
    data.write_bytes(b"")
    monkeypatch.setattr("ntkrobust.studies.train.run", _raising(StudyError("reached the study")))
    code, _, stderr = run_cli(["train", "--data", data, "--force", "--out", out])
    assert (code, stderr) == (2, "ntkrobust: error: reached the study\n")


@pytest.mark.parametrize("flag", [["--scale", "smoke"], ["--data-root", "."], ["--out", "o"]])
def test_reproduce_list_refuses_each_flag_it_would_not_read(flag, run_cli):
    code, stdout, stderr = run_cli(["reproduce", "--list", *flag])
    assert (code, stdout) == (2, "")
    assert stderr == f"ntkrobust: error: --list prints every scale's cost and runs nothing: leave out {flag[0]}\n"


def test_reproduce_list_of_a_target_lists_its_recipes_alone(run_cli):
    """``reproduce tk --list``: the rows are the recipes whose names start ``tk-`` (from the
    recipe table, not the listing), the target's total, and none of the other papers'."""
    from ntkrobust.reproduce import all_recipes

    code, stdout, stderr = run_cli(["reproduce", "tk", "--list"])
    assert (code, stderr) == (0, "")
    rows = [line.split()[0] for line in stdout.splitlines()[1:-1]]
    assert rows == [*(r.name for r in all_recipes() if r.name.startswith("tk-")), "tk"]


# -- argparse's own output (--help, --version): a failed write is an error, a closed reader is not ------


class _Unwritable(io.StringIO):
    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["--version"]])
def test_help_into_a_full_disk_is_one_line_and_status_2(argv, run_cli, monkeypatch):
    """argparse swallows an OSError of its own output, so ``--help > /dev/full`` exited 0 with no help."""
    monkeypatch.setattr(sys, "stdout", _Unwritable(OSError(errno.ENOSPC, "No space left on device")))
    code, _, stderr = run_cli(argv)
    assert (code, stderr) == (2, "ntkrobust: error: No space left on device\n")


def test_help_into_a_reader_that_stopped_early_exits_0_quietly(run_cli, monkeypatch, capsys):
    """``ntkrobust --help | head -1``: the pipe closed by the reader is no error (as argparse has it)."""
    monkeypatch.setattr(sys, "stdout", _Unwritable(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    with pytest.raises(SystemExit) as stop:
        run_cli(["--help"])
    assert stop.value.code in (0, None)
    assert capsys.readouterr().err == ""
