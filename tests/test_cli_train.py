"""``ntkrobust train`` through ``main(argv)``: a tracked run, --resume, linearized runs, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

SMALL = ["--data", "digits", "--n-train", "100", "--n-test", "60", "--model", "fc2", "--width", "32"]
FAST = ["--lr", "0.1", "--batch-size", "50", "--eps", "0.1", "--pgd-steps", "2", "--eval-pgd-steps", "2"]
TRACK = ["--track-kernel", "20", "--eval-n", "30", "--quiet"]


def train_args(*extra: object) -> list[str]:
    return ["train", *SMALL, *FAST, *TRACK, *map(str, extra)]


def test_train_writes_a_tracked_run(tmp_path, run_cli):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli([*train_args("--mode", "pgd", "--epochs", "2"), "--out", out])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "history.json", "kernels"]
    assert len(list((out / "checkpoints").glob("epoch_*.pt"))) == 3
    assert len(list((out / "kernels").glob("step_*.npz"))) == 3
    history = json.loads((out / "history.json").read_text())
    assert [r["mode"] for r in history["epochs"]] == ["init", "pgd", "pgd"]
    assert history["config"]["train"]["eps"] == 0.1 and history["config"]["model"]["model"] == "fc2"
    assert history["label"] == "fc2 pgd" and history["steps_per_epoch"] == 2
    assert "torch" in history["versions"] and history["argv"][0] == "train"
    assert "fc2 pgd: 2 epochs" in stdout and "Frobenius" in stdout


def test_checkpoint_of_a_run_loads_for_entk(tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli([*train_args("--epochs", "1", "--track-kernel", "0"), "--out", out])[0] == 0
    code, _, stderr = run_cli(
        [
            "entk",
            *SMALL[:6],
            "--checkpoint",
            out / "checkpoints" / "epoch_001.pt",
            "--n",
            "10",
            "--quiet",
            "--out",
            tmp_path / "entk",
        ]
    )
    assert code == 0, stderr


def test_resume_continues_a_run(tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli([*train_args("--epochs", "1"), "--out", out])[0] == 0
    code, _, stderr = run_cli([*train_args("--epochs", "2", "--resume"), "--out", out])
    assert code == 0, stderr
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [0, 1, 2]
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2


def test_resume_refuses_a_different_configuration(tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli([*train_args("--epochs", "1", "--track-kernel", "0"), "--out", out])[0] == 0
    before = (out / "history.json").read_text()
    code, _, stderr = run_cli(
        [*train_args("--epochs", "1", "--track-kernel", "0", "--lr", "0.2", "--resume"), "--out", out]
    )
    assert code == 2 and stderr.count("\n") == 1
    assert "different configuration: train.lr was 0.1, now 0.2" in stderr
    assert (out / "history.json").read_text() == before


def test_linearized_and_centered_runs(tmp_path, run_cli):
    parent = tmp_path / "parent"
    assert run_cli([*train_args("--epochs", "1", "--track-kernel", "0"), "--out", parent])[0] == 0
    checkpoint = parent / "checkpoints" / "epoch_001.pt"
    for flags in ([], ["--centered"]):
        out = tmp_path / ("centered" if flags else "linearized")
        argv = ["train", *SMALL[:6], *FAST, *TRACK, "--epochs", "1", "--linearize-from", checkpoint, *flags]
        code, _stdout, stderr = run_cli([*argv, "--out", out])
        assert code == 0, stderr
        history = json.loads((out / "history.json").read_text())
        assert history["config"]["linearization"]["centered"] == bool(flags)
        assert history["config"]["linearization"]["spawn_epoch"] == 1
        magnitudes = [r["relative_magnitude"] for r in history["epochs"]]
        assert magnitudes[0] == 0.0 and magnitudes[1] > 0
        # the linearized network's kernel is frozen: the C-NTK is the parent's at every epoch
        with (
            np.load(out / "kernels" / "step_0000000.npz") as first,
            np.load(out / "kernels" / "step_0000002.npz") as last,
        ):
            np.testing.assert_allclose(first["clean"], last["clean"], rtol=1e-6, atol=1e-9)
    centered = json.loads((tmp_path / "centered" / "history.json").read_text())
    assert centered["epochs"][0]["accuracy"]["running"]["test_clean"] == pytest.approx(0.1)  # f = 0: class 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "free"], "invalid choice: 'free'"),
        (["--eps", "1.5"], "--eps must lie in (0, 1]"),
        (["--eps", "0"], "--eps must lie in (0, 1]"),
        (["--track-kernel", "500"], "--track-kernel 500 exceeds the 100 training points"),
        (["--centered"], "--centered needs --linearize-from"),
        (["--switch-epoch", "2"], "--switch-epoch switches from clean training"),
        (["--momentum", "1.5"], "invalid momentum for training: 1.5"),
        (["--resume"], "holds no run to continue"),
        (["--resume", "--force"], "choose one"),
        (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--eps", "2"], ""),
    ],
)
def test_bad_input_is_refused(assert_refused, extra, message):
    assert_refused(train_args("--epochs", "1", *extra), message)


def test_bad_linearization_checkpoint(tmp_path, assert_refused):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    plain = ["train", *SMALL[:6], *FAST, *TRACK]
    assert_refused([*plain, "--linearize-from", garbage], "is not a checkpoint of this tool")
    assert_refused([*plain, "--linearize-from", tmp_path / "missing.pt"], "does not exist")
    assert_refused(train_args("--linearize-from", garbage), "--model / --width do not apply")


# -- dynamics -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A standard and a PGD run of two epochs each (module-scoped: the dynamics tests share them)."""
    from ntkrobust import cli

    root = tmp_path_factory.mktemp("runs")
    for mode in ("standard", "pgd"):
        assert cli.main([*train_args("--mode", mode, "--epochs", "2"), "--out", str(root / mode)]) == 0
    return root / "standard", root / "pgd"


def test_dynamics_renders_every_figure(tmp_path, run_cli, two_runs, assert_real_png):
    out = tmp_path / "figures"
    argv = ["dynamics", *two_runs, "--eigenvectors", "2", "--eigenvector-steps", "5", "--quiet", "--out", out]
    code, stdout, stderr = run_cli(argv)
    assert code == 0, stderr
    expected = {
        "accuracy.png",
        "eigenvectors.png",
        "kernel_distance.png",
        "kernel_images.png",
        "norm_concentration.png",
        "polar.png",
        "rank_specialization.png",
        "velocity_distance.png",
    }
    assert {p.name for p in out.iterdir()} == expected | {"results.json"}
    results = json.loads((out / "results.json").read_text())
    assert [run["label"] for run in results["runs"]] == ["fc2 standard", "fc2 pgd"]
    assert set(results["figures"].values()) == expected
    rows = results["eigenvectors"]
    assert list(rows) == ["initialisation", "end of fc2 standard", "end of fc2 pgd"]
    assert all(len(row["eigenvalues"]) == 2 for row in rows.values())
    assert_real_png(out / "kernel_images.png")
    assert "2 run(s)" in stdout


def test_dynamics_refuses_a_folder_that_is_not_a_run(tmp_path, assert_refused):
    (tmp_path / "empty").mkdir()
    assert_refused(["dynamics", tmp_path / "empty", "--eigenvectors", "0"], "history.json")


def test_dynamics_refuses_eigenvectors_of_a_run_without_kernels(tmp_path, run_cli, assert_refused):
    run = tmp_path / "untracked"
    assert run_cli([*train_args("--epochs", "1", "--track-kernel", "0"), "--out", run])[0] == 0
    assert_refused(["dynamics", run], "tracked no kernels: no probe to picture eigenvectors on")
