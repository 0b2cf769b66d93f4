"""An evaluation stopped part way (Ctrl-C, SIGTERM, an error in a later net) keeps the nets it
finished: the command line saves them into ``--out``, names the ones left in ``results.json``
and in its figure, and says so in its last line. Stopped before the first net is done, it
writes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ntkrobust import cli
from ntkrobust.bridge import evaluation

TASK = ["--classes", "3,8", "--n-train", "60", "--n-test", "20", "--eps", "0.1", "--attacks", "pgd-20"]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Three checkpoints of one short fc1 run on digits 3 vs 8 (epochs 0, 1, 2)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    argv = ["train", *TASK[:6], "--model", "fc1", "--width", "8", "--epochs", "2", "--lr", "0.1"]
    argv += ["--track-kernel", "0", "--eval-n", "10", "--eps", "0.1", "--pgd-steps", "1", "--eval-pgd-steps", "1"]
    assert cli.main([*argv, "--quiet", "--out", str(out)]) == 0
    return [str(out / "checkpoints" / f"epoch_{e:03d}.pt") for e in range(3)]


def stopping_at(monkeypatch, call: int, stop: BaseException):
    """``robust_correct`` as it is, except that its ``call``-th call raises ``stop``."""
    real, calls = evaluation.robust_correct, []

    def robust_correct(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise stop
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "robust_correct", robust_correct)


@pytest.mark.parametrize(
    ("stop", "code", "said"),
    [(KeyboardInterrupt(), 130, "ntkrobust: interrupted"), (cli._Terminated(), 143, "ntkrobust: terminated")],
)
def test_an_interrupt_keeps_the_nets_evaluated(nets, tmp_path, run_cli, monkeypatch, stop, code, said):
    stopping_at(monkeypatch, 3, stop)
    out = tmp_path / "evaluated"
    status, stdout, stderr = run_cli(["evaluate", *nets, *TASK, "--out", out])
    assert status == code and stdout == ""
    last = stderr.strip().splitlines()[-1]
    assert last == f"{said}; the nets evaluated before it stopped are saved in {out} (results.json lists the others)"
    record = json.loads((out / "results.json").read_text())
    assert [net["label"] for net in record["nets"]] == ["run epoch 0", "run epoch 1"]
    assert record["nets_not_evaluated"] == ["run epoch 2"]
    assert all(set(net["accuracy"]) == {"clean", "pgd-20", "worst_case"} for net in record["nets"])
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "robust_accuracy.png"]
    assert not list(tmp_path.glob(".*partial")) and not list(tmp_path.glob(".*lock"))


def test_the_kept_nets_are_those_a_whole_run_finds(nets, tmp_path, run_cli, monkeypatch):
    code, _, stderr = run_cli(["evaluate", *nets, *TASK, "--out", tmp_path / "whole"])
    assert code == 0, stderr
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert "nets_not_evaluated" not in whole
    stopping_at(monkeypatch, 2, KeyboardInterrupt())
    run_cli(["evaluate", *nets, *TASK, "--out", tmp_path / "stopped"])
    stopped = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert stopped["nets"] == whole["nets"][:1] and stopped["nets_not_evaluated"] == ["run epoch 1", "run epoch 2"]
    assert stopped["config"] == whole["config"]


def test_an_error_in_a_later_net_keeps_the_earlier_ones_and_shows_its_traceback(nets, tmp_path, monkeypatch, capsys):
    stopping_at(monkeypatch, 2, ValueError("a bug in the second net's evaluation"))
    out = tmp_path / "evaluated"
    with pytest.raises(ValueError, match="a bug in the second"):
        cli.main(["evaluate", *nets, *TASK, "--out", str(out)])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "ntkrobust: stopped by the error below; the nets evaluated before it stopped are saved in "
        f"{out} (results.json lists the others)"
    )
    assert json.loads((out / "results.json").read_text())["nets_not_evaluated"] == ["run epoch 1", "run epoch 2"]


def test_stopped_in_the_first_net_it_writes_nothing(nets, tmp_path, run_cli, monkeypatch):
    stopping_at(monkeypatch, 1, KeyboardInterrupt())
    status, _, stderr = run_cli(["evaluate", *nets, *TASK, "--out", tmp_path / "evaluated"])
    assert status == 130 and stderr.strip().splitlines()[-1] == "ntkrobust: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_to_the_command_keeps_the_nets_evaluated(nets, tmp_path):
    """The real signal, sent once the first net's line is out: ``timeout`` and schedulers stop a
    run this way."""
    out = tmp_path / "evaluated"
    attacks = ["--attacks", "pgd-20,pgd-100,cw-100"]  # longer per net: the signal lands inside the second
    argv = [sys.executable, "-m", "ntkrobust", "evaluate", *nets, *TASK[:-2], *attacks]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*argv, "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "epoch 0 evaluated" in line:
            process.send_signal(signal.SIGTERM)
            break
    lines += process.stderr.readlines()
    assert process.wait(timeout=120) == 143, "".join(lines)
    assert lines[-1].startswith("ntkrobust: terminated; the nets evaluated before it stopped are saved in")
    record = json.loads((out / "results.json").read_text())
    assert record["nets"][0]["label"] == "run epoch 0"
    assert record["nets_not_evaluated"][-1] == "run epoch 2"


def test_a_step_of_reproduce_does_not_save_its_part_as_reproduces_output(nets, tmp_path, monkeypatch, capsys):
    """``reproduce`` runs evaluate in-process as a step: an interrupt in the step's second net
    carries evaluate's part up to the command line, which saved it into reproduce's --out (its
    results.json and figure beside the steps) and said so instead of how reproduce resumes."""
    import importlib

    eval_module, eval_settings = cli.study_settings(cli.parse(["evaluate", *nets, *TASK, "--out", str(tmp_path / "x")]))
    stopping_at(monkeypatch, 2, KeyboardInterrupt())

    def reproduce(settings, *, progress=False, argv=None):  # what reproduce._store's StepStore.run does
        (settings.out / "steps").mkdir(parents=True, exist_ok=True)
        return eval_module.run(eval_settings, progress=progress, argv=None)

    monkeypatch.setattr(importlib.import_module("ntkrobust.reproduce.run"), "run", reproduce)
    out = tmp_path / "reproduced"
    assert cli.main(["reproduce", "tk-fig2-features", "--out", str(out), "--quiet"]) == 130
    assert sorted(p.name for p in out.iterdir()) == ["steps"]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"ntkrobust: interrupted; finished steps in {out} are kept: run the same command to resume"
    )
