"""The command line through ``main(argv)``: outputs, the interface files, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntkrobust import cli
from ntkrobust.attacks import ThreatModel, check_adversarial

DIGITS_SMALL = ["--n-train", "150", "--n-test", "40"]


def test_attack_writes_the_interface_files(tmp_path, run_cli):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["attack", *DIGITS_SMALL, "--method", "pgd", "--steps", "5", "--out", out])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["adversarial.npz", "results.json"]
    results = json.loads((out / "results.json").read_text())  # strict JSON: no Infinity/NaN literals
    assert 0.85 <= results["clean_accuracy"] <= 1.0
    assert results["robust_accuracy"] < results["clean_accuracy"]
    config = results["config"]
    assert config["arch"] == "fc2" and config["method"] == "pgd" and config["time"] == "inf"
    assert config["eps"] == 0.3 and config["step"] == 0.01 and config["steps"] == 5  # MNIST-like grey defaults
    assert results["seed"] == 0 and results["versions"]["neural-tangents"] == "0.6.5"
    with np.load(out / "adversarial.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["x", "x_adv", "y"]
        x, x_adv, y = f["x"], f["x_adv"], f["y"]
    assert x.shape == x_adv.shape == (40, 1, 8, 8) and x_adv.dtype == np.float32 and y.dtype == np.int64
    check_adversarial(x_adv, x, ThreatModel("linf", 0.3))
    assert "robust accuracy" in stdout
    assert not list(tmp_path.glob(".*partial"))  # staging folder cleaned up


@pytest.mark.parametrize("method", ["fgsm", "taylor-l1", "taylor-sum"])
def test_attack_methods_and_binary_tasks(tmp_path, run_cli, method):
    out = tmp_path / method
    args = ["attack", "--classes", "3,8", *DIGITS_SMALL, "--method", method, "--eps", "0.2", "--out", out]
    code, _, stderr = run_cli(args)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["classes"] == [3, 8] and results["kernel"]["outputs"] == 1
    assert results["robust_accuracy"] < results["clean_accuracy"]


def test_two_layer_uses_the_closed_form_gradient_and_the_cache(tmp_path, run_cli):
    args = ["attack", *DIGITS_SMALL, "--arch", "two-layer", "--norm", "l2", "--cache-dir", tmp_path / "cache"]
    assert run_cli([*args, "--out", tmp_path / "a"])[0] == 0
    assert run_cli([*args, "--out", tmp_path / "b"])[0] == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert first["config"]["gradient"] == "closed-form" and first["config"]["eps"] == 2.0
    assert (first["kernel"]["gram_cache"], second["kernel"]["gram_cache"]) == ("miss", "hit")
    assert first["robust_accuracy"] == second["robust_accuracy"]


def test_pgd_that_cannot_reach_eps_is_warned_about(tmp_path, run_cli):
    args = ["attack", *DIGITS_SMALL, "--method", "pgd", "--steps", "10", "--out", tmp_path / "r"]
    code, _, stderr = run_cli(args)
    assert code == 0 and "warning: PGD can move at most" in stderr
    assert "step*steps" in json.loads((tmp_path / "r" / "results.json").read_text())["warnings"][0]


def test_fraction_eps_and_force(tmp_path, run_cli):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    code, _, _ = run_cli(["attack", *DIGITS_SMALL, "--eps", "8/255", "--force", "--out", out])
    assert code == 0
    assert json.loads((out / "results.json").read_text())["config"]["eps"] == pytest.approx(8 / 255)


def test_make_npz_then_attack_it(tmp_path, run_cli):
    npz = tmp_path / "digits38.npz"
    assert run_cli(["make-npz", "--classes", "3,8", "--n-train", "60", "--out", npz])[0] == 0
    code, _, stderr = run_cli(["attack", "--data", npz, "--out", tmp_path / "run"])
    assert code == 0, stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["n_train"] == 60


@pytest.fixture
def nan_npz(tmp_path):
    path = tmp_path / "nan.npz"
    x = np.full((10, 1, 4, 4), np.nan, np.float32)
    np.savez(path, x_train=x, y_train=np.arange(10) % 2, x_test=x, y_test=np.arange(10) % 2)
    return path


@pytest.fixture
def misshapen_npz(tmp_path):
    path = tmp_path / "shape.npz"
    np.savez(path, x_train=np.zeros((10, 4)), y_train=np.arange(10) % 2, x_test=np.zeros((3, 4)), y_test=np.arange(3))
    return path


BAD_INPUTS = {
    "unknown architecture": (["--arch", "resnet"], "invalid choice"),
    "unknown dataset": (["--data", "imagenet"], "unknown dataset"),
    "missing data root": (["--data", "mnist", "--data-root", "/nonexistent/mnist"], "does not exist"),
    "mnist without root": (["--data", "mnist"], "needs --data-root"),
    "negative eps": (["--eps", "-0.1"], "--eps must be"),
    "eps in 0-255 units": (["--eps", "8"], "did you mean 8/255"),
    "class absent": (["--classes", "3,12"], "absent"),
    "subset too large": (["--n-train", "5000"], "only 1198"),
    "zero subset": (["--n-test", "0"], "at least 1"),
    "bad number": (["--time", "soon"], "not a number"),
    "negative time": (["--time", "-1"], "--time must be"),
    "closed form for fc2": (["--gradient", "closed-form"], "only for two-layer"),
    "one class": (["--classes", "3"], "at least two"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, assert_refused):
    extra, message = BAD_INPUTS[case]
    assert_refused(["attack", *extra], message)


@pytest.mark.parametrize("fixture, message", [("nan_npz", "NaN"), ("misshapen_npz", "NCHW or NHW")])
def test_bad_npz_is_one_line_exit_2(fixture, message, request, tmp_path, run_cli):
    path = request.getfixturevalue(fixture)
    code, _, stderr = run_cli(["attack", "--data", path, "--out", tmp_path / "out"])
    assert code == 2 and stderr.count("\n") == 1 and message in stderr
    assert not (tmp_path / "out").exists()


def test_existing_non_empty_out_without_force_is_left_alone(tmp_path, run_cli):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = run_cli(["attack", "--out", out])
    assert code == 2 and "--force" in stderr and stderr.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_make_npz_refuses_to_overwrite(tmp_path, run_cli):
    npz = tmp_path / "d.npz"
    npz.write_bytes(b"precious")
    code, _, stderr = run_cli(["make-npz", "--out", npz])
    assert code == 2 and "exists" in stderr and npz.read_bytes() == b"precious"


def test_cli_lists_match_the_library():
    from ntkrobust.attacks import METHODS
    from ntkrobust.kernels import ARCHITECTURES

    assert cli.ARCHITECTURES == ARCHITECTURES and cli.METHODS == METHODS


def test_help_is_instant_no_heavy_imports():
    code = (
        "import sys\nfrom ntkrobust import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('jax', 'neural_tangents', 'torch', 'tensorflow', 'matplotlib') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(cli.__file__).parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
