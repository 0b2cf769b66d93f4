"""Flags that the other flags leave unread: refused (one line, exit status 2, nothing written), or
in ``train``, whose sweeps pass one schedule to every mode, warned and recorded. Each test failed
before its fix: the value was accepted and silently ignored."""

from __future__ import annotations

import json

import pytest

DIGITS = ["--data", "digits", "--n-train", 30, "--n-test", 10]
TRAIN = ["train", *DIGITS, "--model", "fc2", "--width", 8, "--epochs", 0, "--track-kernel", 0, "--eval-n", 10]


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (
            ["--mode", "standard", "--pgd-steps", 3],
            "--pgd-steps sets the PGD of --mode pgd, trades, te; --mode standard",
        ),
        (["--mode", "fgsm", "--pgd-steps", 3, "--pgd-step", 0.1], "--pgd-steps / --pgd-step set the PGD of"),
        (["--mode", "pgd", "--trades-beta", 3], "--trades-beta weighs the robust loss of --mode trades; --mode pgd"),
    ],
)
def test_train_warns_of_attack_flags_its_mode_does_not_read(tmp_path, run_cli, flags, said):
    code, _, err = run_cli([*TRAIN, *flags, "--out", tmp_path / "run"])
    assert code == 0 and f"warning: {said}" in err, err
    record = json.loads((tmp_path / "run" / "history.json").read_text())
    assert any(said in note for note in record["warnings"])


def test_train_reads_its_attack_flags_in_silence_where_the_mode_uses_them(tmp_path, run_cli):
    argv = [*TRAIN, "--mode", "trades", "--pgd-steps", 3, "--pgd-step", 0.1, "--trades-beta", 3]
    code, _, err = run_cli([*argv, "--out", tmp_path / "run"])
    assert code == 0 and "does not read" not in err, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (config["pgd_steps"], config["pgd_step"], config["trades_beta"]) == (3, 0.1, 3.0)


def test_train_records_the_default_trades_beta(tmp_path, run_cli):
    code, _, _ = run_cli([*TRAIN, "--mode", "trades", "--out", tmp_path / "run"])
    assert code == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["trades_beta"] == 6.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["features", *DIGITS, "--n-features", 2, "--robust-r", "none", "--robust-steps", 5],
            "--robust-steps sets the PGD of the robust-only kernels, which --robust-r none skips",
        ),
        (["features", *DIGITS, "--n-features", 2, "--steps", 20], "--steps sets the PGD of --feature-attack pgd; fgsm"),
        (
            ["features", *DIGITS, "--n-features", 2, "--robust-r", "none", "--no-random-start"],
            "--no-random-start sets the PGD of --feature-attack pgd and of the robust-only kernels; --feature-attack",
        ),
        (["attack", *DIGITS, "--learning-rate", 0.001], "--learning-rate is the η of a finite --time; at --time inf"),
        (["attack", *DIGITS, "--no-random-start"], "--no-random-start sets where PGD starts; --method fgsm"),
        (
            ["transfer", *DIGITS, "--target", "N", "--surrogate", "fc2:8", "--ridge", 0.5, "--no-cache"],
            "--ridge / --no-cache set the NTK machines; none is built: add --kernel-arch",
        ),
        (
            ["transfer", *DIGITS, "--target", "N", "--surrogate", "fc2:8", "--kernel-n", 20],
            "--kernel-n sets the analytic NTK machines' training points; none is built",
        ),
        (
            ["evaluate", "--data", "digits", "--attacks", "pgd-20", "--masking-gap", 0.3, "N"],
            "--masking-gap compares AutoAttack with PGD-20 / PGD-100 / CW-100",
        ),
        (
            ["evaluate", "--data", "digits", "--attacks", "pgd-20", "--batch-size", 3, "N"],
            "--batch-size sets AutoAttack's runs (PGD and CW run in 256s): --attacks needs autoattack",
        ),
        (
            ["evaluate", "--data", "digits", "--attacks", "autoattack", "--restarts", 3, "N"],
            "--restarts repeats PGD and CW from new random starts (AutoAttack has its own): --attacks needs",
        ),
        (["dynamics", "RUN", "--eigenvector-steps", 5], "--eigenvector-steps sets the eigenvector pictures: give"),
        (
            ["dynamics", "RUN", "--eigenvector-class", 1, "--eigenvector-steps", 5],
            "--eigenvector-class / --eigenvector-steps set the eigenvector pictures: give --eigenvectors K, or",
        ),
    ],
)
def test_flags_that_would_go_unread_are_refused(argv, message, assert_refused):
    assert_refused(argv, message)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--gamma", 0.5], "--gamma scales the learning rate at --milestones; there are none"),
        (["--track-every", 2, "--estimator", "rademacher:2"], "--track-every / --estimator shape the tracked kernels"),
        (
            ["--epochs", 1, "--milestones", "1,3", "--full-eval-every", 2],
            "--milestones 1,3 and --full-eval-every 2 come at or after the last of --epochs 1: only a --resume",
        ),
    ],
)
def test_train_warns_of_schedule_and_tracking_flags_it_does_not_read(tmp_path, run_cli, flags, said):
    code, _, err = run_cli([*TRAIN, *flags, "--out", tmp_path / "run"])
    assert code == 0 and f"warning: {said}" in err, err


def test_train_refuses_in_one_line_what_it_also_would_have_warned_of(tmp_path, run_cli):
    """--milestones 5,1 with --epochs 1: the warning that 5 comes after the last epoch was said
    before the refusal of the order (two lines); warnings now wait for the checks to pass."""
    code, _, err = run_cli([*TRAIN, "--epochs", 1, "--milestones", "5,1", "--out", tmp_path / "run"])
    assert code == 2 and err.count("\n") == 1 and "invalid milestones for training: [5, 1]" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [["--scale", "cpu"], ["--out", "X"], ["--data-root", "."]])
def test_reproduce_list_refuses_the_flags_of_a_run(run_cli, flags):
    code, out, err = run_cli(["reproduce", "--list", *flags])
    assert code == 2 and err.count("\n") == 1 and "--list prints every scale's cost and runs nothing" in err, err
    assert not out


def test_reproduce_list_of_a_target_lists_its_recipes_alone(run_cli):
    from ntkrobust.reproduce import select

    code, out, _ = run_cli(["reproduce", "tk", "--list"])
    listed = [line.split()[0] for line in out.splitlines()[1:-1]]
    assert code == 0 and listed == [*(r.name for r in select("tk")), "tk"]


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_no_reproduce_step_sets_a_flag_its_study_leaves_unread(scale):
    """The recipes' own settings pass the checks above (a dynamics step's --device once tripped
    the eigenvector check after its training steps had run): the checks that need no data."""
    from pathlib import Path

    from ntkrobust.reproduce import all_recipes
    from ntkrobust.reproduce._recipe import Context
    from ntkrobust.reproduce.run import plan
    from ntkrobust.studies import _train_settings, dynamics, features

    steps, _ = plan(all_recipes(), Context(scale, Path("DATA"), Path("OUT/steps")))
    checked = set()
    for step in steps.values():
        settings = step.settings
        if step.study == "train":
            assert _train_settings.unread_flags(settings) == [], step.name
        elif step.study == "dynamics":
            dynamics._check_unread(settings)
        elif step.study == "features":
            features._check_unread(settings)
        if hasattr(settings, "method") and hasattr(settings, "threat"):
            settings.threat.spec(settings.method, (1, 28, 28), 0)
        checked.add(step.study)
    assert {"train", "dynamics", "features", "transfer", "two-layer"} <= checked
