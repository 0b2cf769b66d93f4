"""Long loops print plain progress lines when no bar is shown (stderr is a file)."""

from __future__ import annotations

import logging

import pytest

from ntkrobust import _progress
from ntkrobust._progress import progress_bar, progress_iter


def test_plain_lines_come_at_most_every_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = iter([0.0, 10.0, 61.0, 70.0, 125.0])
    monkeypatch.setattr(_progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="ntkrobust"), progress_bar(4, "eNTK (full)", "chunk", show=False) as bar:
        for _ in range(4):
            bar.update(1)
    assert [r.getMessage() for r in caplog.records] == [
        "eNTK (full): 2/4 chunks (50%), 61 s",
        "eNTK (full): 4/4 chunks (100%), 125 s",
    ]


def test_iterated_loops_and_running_figures_print_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        assert list(progress_iter(iter("abc"), "robust-only", "kernel", show=False)) == ["a", "b", "c"]
        assert list(progress_iter(range(2), "two-layer", "epoch", show=False)) == [0, 1]
        # a range is not copied: the first of a billion steps comes at once (it took 20 GB before)
        assert next(progress_iter(range(10**9), "PGD", "step", show=False)) == 0
        with progress_bar(2, "epoch 1 (pgd)", "batch", show=False) as bar:
            bar.set_postfix(loss="0.512", acc="0.830")
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines[:3]] == [
        f"robust-only: {i}/3 kernels (%d%%)" % p for i, p in ((1, 33), (2, 67), (3, 100))
    ]
    assert lines[4].startswith("two-layer: 2/2 epochs (100%), ")
    assert lines[5].startswith("epoch 1 (pgd): 1/2 batches (50%), ") and lines[5].endswith(" s, loss 0.512, acc 0.830")


def test_a_terminal_gets_tqdm() -> None:
    from tqdm.auto import tqdm

    with progress_bar(3, "Gram", "block", show=True) as bar:
        assert isinstance(bar, tqdm)
        bar.update(3)


def test_the_entk_command_prints_lines_into_a_file(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``entk`` with stderr not a terminal: its kernel stage says how far it is."""
    from ntkrobust import cli

    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    flags = ["entk", "--data", "digits", "--model", "mnist-cnn", "--width", "2", "--points", "6"]
    assert cli.main([*flags, "--kind", "trace", "--memory-budget", "6", "--out", str(tmp_path / "k")]) == 0
    err = capsys.readouterr().err
    assert "ntkrobust: eNTK (trace): 1/" in err and "chunks (" in err


@pytest.mark.parametrize("route", ["dots", "jacobian"])
def test_feature_scores_under_pgd_say_which_step_they_are_at(
    route, fc2_multiclass, digits_multiclass, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``features --feature-attack pgd`` counted blocks of examples only: 400 features of 599
    digits under PGD-200 are one block, and with stderr in a file it printed no line in 400 s.
    Each PGD step now updates the bar with the pairs it attacks and its step."""
    from ntkrobust.attacks import ThreatModel
    from ntkrobust.kernels.features import feature_scores

    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    x, y = digits_multiclass.x_test[:20], digits_multiclass.y_test[:20]
    threat = ThreatModel("linf", 0.1)
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        feature_scores(fc2_multiclass, x, y, threat, n_features=5, attack="pgd", step=0.05, steps=3, route=route)
    lines = [r.getMessage() for r in caplog.records]
    during = [line for line in lines if line.startswith("feature pgd: 0/1 blocks (0%)")]
    assert [line.split(", PGD step ")[1] for line in during] == ["1/3", "2/3", "3/3"], lines
    assert ", pairs attacked " in during[0] and lines[-1].startswith("feature pgd: 1/1 blocks (100%)")


def test_a_loop_inside_another_names_the_loops_it_runs_in(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Lines of a PGD inside a robust-only kernel inside an architecture said only "PGD: 6/10
    steps": which r, which attack (seen by following the README on 2026-12-06)."""
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        for _ in progress_iter(["fc2", "conv2"], "features", "architecture", show=False):
            with progress_bar(1, "NTK-pgd", "batch", show=False) as batches:
                for _ in progress_iter(range(2), "PGD", "step", show=False):
                    pass
                batches.update(1)
    lines = [r.getMessage().split(",")[0] for r in caplog.records]
    assert lines == [
        "features 1/2 › NTK-pgd 1/1 › PGD: 1/2 steps (50%)",
        "features 1/2 › NTK-pgd 1/1 › PGD: 2/2 steps (100%)",
        "features 1/2 › NTK-pgd: 1/1 batches (100%)",
        "features: 1/2 architectures (50%)",
        "features 2/2 › NTK-pgd 1/1 › PGD: 1/2 steps (50%)",
        "features 2/2 › NTK-pgd 1/1 › PGD: 2/2 steps (100%)",
        "features 2/2 › NTK-pgd: 1/1 batches (100%)",
        "features: 2/2 architectures (100%)",
    ]
    assert not _progress._OPEN  # every loop closed


def test_a_long_item_still_says_that_its_loop_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One block of three minutes said nothing until it ended ("feature fgsm: 1/1 blocks (100%),
    180 s"): the heartbeat names the innermost open loop after ``HEARTBEAT_EVERY`` silent seconds."""
    import time

    monkeypatch.setattr(_progress, "HEARTBEAT_EVERY", 0.5)
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        with (
            progress_bar(3, "features", "architecture", show=False),
            progress_bar(1, "feature fgsm", "block", show=False),
        ):
            deadline = time.monotonic() + 10
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.05)
        said = [r.getMessage() for r in caplog.records]
    assert said and said[0].startswith("features 1/3 › feature fgsm: 0/1 blocks (0%), ")
    assert not any(line.startswith("features:") for line in said)  # the innermost loop alone


def _lines_of(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, events) -> list[str]:
    """The lines of a 40-batch loop driven by ``events`` (time, "update" n / "beat"), both of
    its clocks (the update lines' and the heartbeat's) set to each event's time."""
    now = [0.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(_progress, "_wall", lambda: now[0])
    with caplog.at_level(logging.INFO, logger="ntkrobust"), progress_bar(40, "epoch 1", "batch", show=False) as bar:
        for at, action, *n in events:
            now[0] = at
            bar.update(*n) if action == "update" else bar.beat()  # beat: what the heartbeat thread does
    return [r.getMessage() for r in caplog.records]


def test_a_heartbeat_line_and_an_update_line_are_not_said_seconds_apart(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop whose heartbeat spoke at 60 s and whose next item ended at 61 s said two lines a
    second apart ("epoch 1 (pgd): 15/40 batches (38%), 60 s", then "16/40 batches (40%), 60 s"):
    one line a minute, whichever of the two says it."""
    events = [(59.0, "update", 15), (60.0, "beat"), (61.0, "update", 1), (121.0, "update", 1)]
    assert _lines_of(monkeypatch, caplog, events) == [
        "epoch 1: 15/40 batches (38%), 60 s",
        "epoch 1: 17/40 batches (42%), 121 s",
    ]


def test_a_silent_heartbeat_check_leaves_the_update_lines_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat thread calls ``beat`` every second; only a beat that speaks (the loop silent
    for ``HEARTBEAT_EVERY``) restarts the update lines' minute. A beat at 59 s says nothing, so
    the update at 60 s still says its line (restarting the minute on every beat would leave the
    update lines to the heartbeat alone, a second late and never at the moment a batch ends)."""
    events = [(30.0, "update", 10), (59.0, "beat"), (60.0, "update", 5)]
    assert _lines_of(monkeypatch, caplog, events) == ["epoch 1: 15/40 batches (38%), 60 s"]
