"""``ntkrobust two-layer`` and ``ntkrobust transfer`` through ``main(argv)``, and their refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

TASK = ["--data", "digits", "--classes", "3,8", "--n-train", "60", "--n-test", "40"]


@pytest.fixture(scope="module")
def two_layer_run(tmp_path_factory):
    from ntkrobust import cli

    out = tmp_path_factory.mktemp("two-layer") / "run"
    argv = ["two-layer", *TASK, "--width", "300", "--nets", "2", "--epochs", "20", "--eps", "0.2", "--quiet"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    return out


def test_two_layer_writes_results_figures_and_checkpoints(two_layer_run, assert_real_png):
    out = two_layer_run
    assert sorted(p.name for p in out.iterdir()) == [
        "gradients.npz",
        "gradients.png",
        "net_w300_s0.pt",
        "net_w300_s1.pt",
        "results.json",
        "two_layer.png",
    ]
    results = json.loads((out / "results.json").read_text())
    for key in ("clean_accuracy", "white_box_accuracy", "ntk_attack_accuracy", "random_accuracy"):
        assert set(results[key]) == {"width 300, seed 0", "width 300, seed 1"}
    net = results["nets"][0]
    assert [row["epoch"] for row in net["epochs"]] == [1, 2, 5, 10, 20]
    assert all(-1 <= row["gradient_cosine"] <= 1 for row in net["epochs"])
    assert net["epochs"][-1]["gradient_cosine"] > 0.5  # the net has moved towards its kernel
    assert net["white_box_accuracy"] < net["random_accuracy"] <= net["clean_accuracy"]
    alignment = results["alignment"]
    assert alignment["anchor_epoch"] == 1 and 0.5 < alignment["fitted_over_theory"] < 2
    assert len(results["kernel"]["epochs"]) == 5 and results["config"]["attack"]["eps"] == 0.2
    with np.load(out / "gradients.npz", allow_pickle=False) as arrays:
        assert arrays["kernel"].shape == (5, 1, 8, 8) and arrays["net_w300_s1"].shape == (5, 1, 8, 8)
    assert_real_png(out / "two_layer.png")
    assert_real_png(out / "gradients.png")


def test_transfer_reports_the_matrix_for_checkpoints_torchscript_and_surrogates(
    two_layer_run, tmp_path, run_cli, assert_real_png
):
    import torch

    from ntkrobust.bridge.models import build_model, model_config

    net = build_model(model_config("fc1", (1, 8, 8), 2, width=16, seed=0)).eval()
    torch.jit.save(torch.jit.trace(net, torch.rand(2, 1, 8, 8)), tmp_path / "mine.ts")
    out = tmp_path / "transfer"
    argv = ["transfer", *TASK, "--kernel-arch", "fc1", "--kernel-arch", "two-layer", "--eps", "0.2"]
    argv += ["--target", two_layer_run / "net_w300_s0.pt", "--target", two_layer_run / "net_w300_s1.pt"]
    argv += ["--target", tmp_path / "mine.ts", "--surrogate", "fc1:32", "--surrogate-n", "30", "--quiet"]
    argv += ["--source", two_layer_run / "net_w300_s0.pt"]  # a source only, under its own label
    code, stdout, stderr = run_cli([*argv, "--out", out])
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    names = ["net_w300_s0", "net_w300_s1", "mine"]
    assert [t["name"] for t in results["targets"]] == names
    first = results["targets"][0]
    assert set(first["ntk_attack_accuracy"]) == {"fc1", "two-layer"} and set(first["surrogate_attack_accuracy"]) == {
        "fc1:32"
    }
    assert first["transfer_accuracy"]["net_w300_s0"] == first["white_box_accuracy"]
    assert first["transferability"]["net_w300_s0"] == pytest.approx(1.0)
    matrix = results["matrix"]
    assert matrix["columns"][:3] == ["clean", "random sign", "own white-box"]
    assert np.asarray(matrix["accuracy"]).shape == (3, 3 + 2 + 1 + 4) and matrix["columns"][-1] == "net_w300_s0 (2)"
    assert [s["kind"] for s in results["sources"]] == ["ntk", "ntk", "entk-surrogate", *["white-box"] * 4]
    assert [s["is_target"] for s in results["sources"][3:]] == [True, True, True, False]
    with np.load(out / "examples.npz", allow_pickle=False) as arrays:
        assert {"ntk_fc1", "ntk_two_layer", "entk_fc1_32", "random_sign", "x", "y"} == set(arrays.files)
    assert_real_png(out / "transfer.png")
    assert "net_w300_s0: clean" in stdout


def test_transfer_draws_transferability_against_the_epochs_of_a_run(tmp_path, run_cli, assert_real_png):
    run = tmp_path / "run"
    train = ["train", *TASK, "--model", "fc1", "--width", "32", "--epochs", "2", "--lr", "0.1", "--batch-size", "30"]
    train += ["--track-kernel", "0", "--eval-n", "10", "--eval-pgd-steps", "1", "--quiet"]
    assert run_cli([*train, "--out", run])[0] == 0
    checkpoints = run / "checkpoints"
    argv = ["transfer", *TASK, "--kernel-arch", "fc1", "--target", checkpoints / "epoch_002.pt", "--quiet"]
    argv += ["--source", checkpoints / "epoch_000.pt", "--source", checkpoints / "epoch_001.pt"]
    code, _, stderr = run_cli([*argv, "--out", tmp_path / "transfer"])
    assert code == 0, stderr
    assert_real_png(tmp_path / "transfer" / "transferability.png")
    results = json.loads((tmp_path / "transfer" / "results.json").read_text())
    assert set(results["targets"][0]["transferability"]) == {"NTK fc1", "run epoch 2", "run epoch 0", "run epoch 1"}


def _npz(path, side):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(20, 1, side, side)).astype(np.float32)
    np.savez(path, x_train=x, y_train=np.arange(20) % 2, x_test=x, y_test=np.arange(20) % 2)
    return path


def test_transfer_refusals(two_layer_run, tmp_path, assert_refused):
    ckpt = two_layer_run / "net_w300_s0.pt"
    (tmp_path / "junk.ts").write_bytes(b"PK\x03\x04 not a zip")
    small = _npz(tmp_path / "small.npz", 3)
    assert_refused(["transfer", *TASK, "--target", tmp_path / "junk.ts"], "not a torchscript that loads")
    assert_refused(
        ["transfer", "--data", small, "--target", ckpt], "takes images of shape (1, 8, 8), the data has (1, 3, 3)"
    )
    assert_refused(
        ["transfer", "--data", small, "--surrogate", "mnist-cnn", "--target", "fc1=" + str(tmp_path / "w.pt")],
        "does not exist",
    )
    import torch

    from ntkrobust.bridge.models import build_model, model_config

    torch.save(build_model(model_config("fc1", (1, 3, 3), 2, width=8)).state_dict(), tmp_path / "w.pt")
    assert_refused(
        ["transfer", "--data", small, "--surrogate", "mnist-cnn", "--target", "fc1:8=" + str(tmp_path / "w.pt")],
        "mnist-cnn needs images at least 4x4",
    )
    assert_refused(["transfer", *TASK, "--target", ckpt, "--kernel-arch", "fc1", "--kernel-arch", "fc1"], "repeats")
    assert_refused(["transfer", *TASK, "--target", ckpt, "--eps", "3"], "exceeds the [0, 1] pixel range")
    assert_refused(["transfer", *TASK, "--target", ckpt, "--surrogate-ridge", "-1"], "--surrogate-ridge must be")


def test_two_layer_refusals(assert_refused):
    base = ["two-layer", *TASK, "--epochs", "5"]
    assert_refused([*base, "--anchor-epoch", "9"], "is after the last epoch")
    assert_refused([*base, "--picture-index", "40"], "exceeds the 40 test points")
    assert_refused([*base, "--width", "10", "--width", "10"], "repeats a width")
    assert_refused([*base, "--lr", "0"], "--lr must be a finite number > 0")
