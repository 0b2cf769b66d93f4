"""Bad input found by the third audit: each is one line, exit status 2, before any compute, and
nothing of the user's is lost (each test failed before its fix)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.bridge.checkpoint import save_checkpoint
from ntkrobust.bridge.models import build_model, model_config

DIGITS = ["--data", "digits", "--n-train", 30, "--n-test", 10]
TRAIN = ["train", *DIGITS, "--track-kernel", 10, "--eval-n", 10]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A digits fc2 (width 8) checkpoint, as ``train`` writes one."""
    config = model_config("fc2", (1, 8, 8), 10, width=8)
    return save_checkpoint(tmp_path / "net.pt", build_model(config), config, epoch=2)


def test_force_never_clears_the_checkpoint_a_linearized_run_starts_from(tmp_path, run_cli):
    run = tmp_path / "run"
    config = model_config("fc2", (1, 8, 8), 10, width=8)
    parent = save_checkpoint(run / "checkpoints" / "epoch_002.pt", build_model(config), config, epoch=2)
    (run / "config.json").write_text(json.dumps({"model": config.to_dict()}))
    argv = ["train", *DIGITS, "--epochs", 1, "--track-kernel", 0, "--linearize-from", parent, "--force"]
    code, _, err = run_cli([*argv, "--out", run])
    assert code == 2 and err.count("\n") == 1 and "which --force clears: choose another" in err, err
    assert parent.is_file() and (run / "config.json").is_file()  # --force had removed both


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*TRAIN, "--model", "fc2", "--width", 8, "--lr", "1e300"], "invalid lr for training: 1e+300"),
        ([*TRAIN, "--model", "fc2", "--width", 8, "--weight-decay", "1e300"], "invalid weight decay"),
        ([*TRAIN, "--epochs", 3, "--milestones", "1,1"], "invalid milestones for training: [1, 1]"),
        ([*TRAIN, "--epochs", 3, "--milestones", "2,1"], "invalid milestones for training: [2, 1]"),
        (["two-layer", *DIGITS, "--classes", "0,1", "--width", 16, "--lr", "1e300"], "within float32's range"),
        (["attack", *DIGITS, "--no-cache", "--ridge", "1e308"], "--ridge must be from 0 to 1e+06"),
        (["reproduce", "tk-fig2-features", "--data-root", "."], "--scale smoke runs on scikit-learn's digits"),
        (["evaluate", "--data", "digits", "--attacks", "pgd-20,pgd-20", "N"], "--attacks repeats an attack"),
        (["evaluate", "--data", "digits", "--masking-gap", "nan", "N"], "--masking-gap must be a finite number"),
        (
            [*TRAIN, "--estimator", "rademacher:0"],
            "--estimator must be exact or rademacher:K (0 < K < 2**31 random-sign",
        ),
        (["entk", "--data", "digits", "--model", "fc2", "--kind", "class:99"], "--kind class:99: class 99 is not"),
        (["attack", "--data", "digits", "--classes", "0,1,0"], "--classes names class 0 twice (0,1,0)"),
        (["transfer", "--data", "digits", "--target", "N", "--surrogate", "fc2:0"], "--surrogate fc2:0: num_classes"),
        (["transfer", "--data", "digits", "--target", "N", "--surrogate-n", 50], "--surrogate-n sets the eNTK surr"),
        (["attack", *DIGITS, "--steps", 7], "--steps sets PGD's schedule; --method fgsm takes none: leave it out"),
        (["attack", *DIGITS, "--step", 0.1, "--steps", 7], "--step / --steps set PGD's schedule; --method fgsm"),
    ],
)
def test_values_that_overflowed_repeated_or_went_unread_are_refused(argv, message, assert_refused):
    """lr 1e300 overflowed in torch's float32 update (a traceback), milestones 1,1 cut the rate
    twice, a ridge of 1e308 overflowed the machine, smoke reproductions recorded an unread root."""
    assert_refused(argv, message)


def test_a_net_or_run_named_twice_is_refused(tmp_path, checkpoint, assert_refused):
    same = tmp_path / "." / checkpoint.name
    assert_refused(["evaluate", "--data", "digits", checkpoint, same], "is named twice")
    assert_refused(["transfer", "--data", "digits", "--target", checkpoint, "--target", same], "is named twice")
    # a target's examples attack the other targets already: as a source too, a duplicate column of τ = 1
    assert_refused(["transfer", "--data", "digits", "--target", checkpoint, "--source", same], "is also a --target")
    (tmp_path / "run").mkdir()
    assert_refused(["dynamics", tmp_path / "run", f"{tmp_path / 'run'}/"], "is named twice")


def test_labels_beyond_any_class_id_are_refused(tmp_path, assert_refused):
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    y = (np.arange(20) % 2).astype(np.uint64) * np.uint64(2**63 + 5)  # cast to int64: a negative id
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    assert_refused(["attack", "--data", tmp_path / "d.npz"], "class id 9.22337e+18, above 2147483647")


def test_a_refused_run_leaves_no_folders_it_made(tmp_path, run_cli):
    code, _, err = run_cli(["attack", *DIGITS, "--eps", "nan", "--out", tmp_path / "a" / "b" / "out"])
    assert code == 2 and "--eps" in err
    assert not (tmp_path / "a").exists()


def test_an_attack_that_moves_no_pixel_says_so(tmp_path, run_cli):
    code, _, err = run_cli(["attack", *DIGITS, "--no-cache", "--time", "1e-300", "--out", tmp_path / "out"])
    assert code == 0 and "warning: the attack moved no pixel" in err
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["perturbation"]["linf_max"] == 0.0
    assert any("moved no pixel" in note for note in record["warnings"])


def test_entk_refuses_a_budget_too_small_before_its_pgd_examples(assert_refused, monkeypatch):
    from ntkrobust.bridge import adversarial

    def attacked(*args, **kwargs):
        raise AssertionError("the budget is checked before the PGD examples")

    monkeypatch.setattr(adversarial, "pgd_examples", attacked)
    argv = ["entk", "--data", "digits", "--model", "mnist-cnn", "--width", 64, "--points", 6]
    assert_refused([*argv, "--adversarial-eps", "0.1", "--memory-budget", 1], "--memory-budget 1: memory budget of")


def test_a_blank_cache_variable_counts_as_unset(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NTKROBUST_CACHE", " ")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    code, _, _ = run_cli(["attack", *DIGITS, "--out", tmp_path / "out"])
    assert code == 0 and not (tmp_path / " ").exists() and any((tmp_path / "xdg" / "ntkrobust").iterdir())
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NTKROBUST_CACHE", str(tmp_path / "file"))
    code, _, err = run_cli(["attack", *DIGITS, "--out", tmp_path / "out2"])
    assert code == 2 and "the Gram cache of $NTKROBUST_CACHE" in err and "set --cache-dir or pass --no-cache" in err


def test_a_resumed_config_that_differs_by_a_whole_section_stays_one_short_line():
    from ntkrobust.bridge._resume import _differences

    whole = {"lr": 0.1, "milestones": list(range(100)), "mode": "pgd"}
    (said,) = _differences({"train": None}, {"train": whole})
    assert said.startswith("train was None, now {'lr': 0.1") and said.endswith(" ...") and len(said) < 120
    assert _differences({"a": {"b": 1}}, {"a": {"b": 2}}) == ["a.b was 1, now 2"]
