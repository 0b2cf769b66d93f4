"""Progress lines and bars, audited against a clock driven by the test and the lines written out by
hand: a line exactly when ``LINE_EVERY`` seconds have passed since the last one (not a second
later), the count of items whose loop body has run, each unit's plural, the running figures of
the latest ``set_postfix`` only, tqdm's ``leave``, INFO records of the ``ntkrobust`` logger (which
``--quiet`` hides), and the command line's choice of bar, lines or neither."""

from __future__ import annotations

import logging
import sys

import pytest

from ntkrobust import _progress
from ntkrobust._progress import progress_bar, progress_iter


class Clock:
    """``time.monotonic`` as the test sets it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    ticking = Clock()
    monkeypatch.setattr(_progress.time, "monotonic", ticking)
    return ticking


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_line_comes_when_exactly_the_interval_has_passed(clock, caplog):
    """Lines at 60 s and at 120 s (60 s after the last line, not after the start), none at 119.9 s."""
    with caplog.at_level(logging.INFO, logger="ntkrobust"), progress_bar(4, "Gram", "block", show=False) as bar:
        for now in (59.9, 60.0, 119.9, 120.0):
            clock.now = now
            bar.update(1)
    assert _lines(caplog) == ["Gram: 2/4 blocks (50%), 60 s", "Gram: 4/4 blocks (100%), 120 s"]


@pytest.mark.parametrize(
    ("unit", "plural"),
    [("box", "boxes"), ("brush", "brushes"), ("batch", "batches"), ("class", "classes"), ("step", "steps")],
)
def test_each_unit_gets_its_plural(clock, caplog, unit, plural):
    with caplog.at_level(logging.INFO, logger="ntkrobust"), progress_bar(2, "loop", unit, show=False) as bar:
        clock.now = 60.0
        bar.update(1)
    assert _lines(caplog) == [f"loop: 1/2 {plural} (50%), 60 s"]


def test_a_loop_of_unknown_length_says_no_share(clock, caplog):
    """total 0 (nothing known): the count alone, no division by zero."""
    with caplog.at_level(logging.INFO, logger="ntkrobust"), progress_bar(0, "stream", "item", show=False) as bar:
        clock.now = 60.0
        bar.update(3)
    assert _lines(caplog) == ["stream: 3/0 items, 60 s"]


def test_a_line_carries_the_latest_running_figures_only(clock, caplog):
    with caplog.at_level(logging.INFO, logger="ntkrobust"), progress_bar(3, "epoch 2", "batch", show=False) as bar:
        bar.set_postfix(loss="0.9")
        clock.now = 60.0
        bar.update(1)
        bar.set_postfix(loss="0.7", acc="0.5")
        clock.now = 120.0
        bar.update(1)
    assert _lines(caplog) == [
        "epoch 2: 1/3 batches (33%), 60 s, loss 0.9",
        "epoch 2: 2/3 batches (67%), 120 s, loss 0.7, acc 0.5",
    ]


def test_an_item_is_counted_once_its_loop_body_has_run(clock, caplog):
    """Each body takes 60 s on the clock: the line at 60 s counts the first item as done."""
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        for _ in progress_iter(["a", "b", "c"], "robust-only", "kernel", show=False):
            clock.now += 60.0
    assert _lines(caplog) == [f"robust-only: {i}/3 kernels ({p}%), {60 * i} s" for i, p in ((1, 33), (2, 67), (3, 100))]


def test_lines_are_info_records_of_the_package_logger(clock, caplog):
    """--quiet keeps the ``ntkrobust`` logger's WARNING records only: progress must sit below."""
    with caplog.at_level(logging.INFO, logger="ntkrobust"), progress_bar(1, "x", "step", show=False) as bar:
        clock.now = 60.0
        bar.update(1)
    ((record,),) = [caplog.records]
    assert (record.name, record.levelno) == ("ntkrobust", logging.INFO)


@pytest.mark.parametrize("leave", [False, True])
def test_bars_keep_or_clear_their_line_as_asked(monkeypatch, leave):
    made = []
    real = _progress.tqdm

    def recorded(**kwargs):
        made.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(_progress, "tqdm", recorded)
    with progress_bar(2, "Gram", "block", show=True, leave=leave) as bar:
        assert bar.leave is leave
    assert list(progress_iter(range(2), "Gram", "block", show=True, leave=leave)) == [0, 1]
    assert [kwargs["leave"] for kwargs in made] == [leave, leave]
    assert list(progress_iter(range(2), "Gram", "block", show=True)) == [0, 1]
    assert made[-1]["leave"] is False  # the default: the bar's line is cleared at the end


@pytest.mark.parametrize(("quiet", "terminal"), [(True, True), (True, False), (False, True)])
def test_the_command_line_shows_a_bar_in_a_terminal_and_nothing_when_quiet(
    tmp_path, monkeypatch, capsys, quiet, terminal
):
    """``entk`` with stderr a terminal or a file, with and without --quiet: a bar (tqdm's rate
    "chunk/s") only in a terminal without --quiet, plain lines never here (the file case without
    --quiet is ``test_progress.test_the_entk_command_prints_lines_into_a_file``)."""
    from ntkrobust import cli

    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    flags = ["entk", "--data", "digits", "--model", "mnist-cnn", "--width", "2", "--points", "6", "--kind", "trace"]
    assert (
        cli.main([*flags, "--memory-budget", "6", "--out", str(tmp_path / "k"), *(["--quiet"] if quiet else [])]) == 0
    )
    err = capsys.readouterr().err
    assert ("chunk/s" in err) is (terminal and not quiet), err
    assert "eNTK (trace): 1/" not in err, err  # a bar reads "eNTK (trace):  33%|...| 1/3"
