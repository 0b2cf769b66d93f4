"""``ntkrobust entk`` through ``main(argv)``: every registered model, AE-NTK, checkpoints, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ntkrobust import cli

SMALL_WIDTH = {"resnet18": "4", "mnist-cnn": "4", "cifar-cnn": "4", "conv1": "8", "conv2": "8"}


def entk_args(model: str, *extra: object) -> list[str]:
    return ["entk", "--model", model, "--width", SMALL_WIDTH.get(model, "32"), "--n", "20", "--quiet", *map(str, extra)]


def test_registry_matches_the_cli_list():
    from ntkrobust.bridge.models import MODELS

    assert tuple(MODELS) == cli.MODELS


@pytest.mark.parametrize("model", cli.MODELS)
def test_every_registered_model_on_digits(tmp_path, run_cli, model):
    out = tmp_path / model
    data = ["--data", "digits"]
    if model in ("cifar-cnn", "resnet18"):  # colour nets: digits made three-channel through an npz
        from ntkrobust.bridge.data import load_dataset, save_dataset_npz

        digits = load_dataset("digits", n_train=60, n_test=20, seed=0)
        colour = dataclasses.replace(
            digits, x_train=np.repeat(digits.x_train, 3, axis=1), x_test=np.repeat(digits.x_test, 3, axis=1)
        )
        save_dataset_npz(colour, tmp_path / "colour.npz")
        data = ["--data", tmp_path / "colour.npz"]
    code, stdout, stderr = run_cli([*entk_args(model), *data, "--out", out])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["kernel.npz", "kernel.png", "metrics.json"]
    with np.load(out / "kernel.npz", allow_pickle=False) as arrays:
        kernel, x, y = arrays["kernel"], arrays["x"], arrays["y"]
    assert kernel.shape == (20, 20) and x.shape[0] == 20 and np.bincount(y).tolist() == [2] * 10
    np.testing.assert_allclose(kernel, kernel.T, rtol=1e-5, atol=1e-6 * np.abs(kernel).max())
    assert np.linalg.eigvalsh(kernel.astype(np.float64)).min() > -1e-4 * np.abs(kernel).max()  # PSD
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["network"]["model"] == model and metrics["kind"] == "trace"
    assert 1 <= metrics["metrics"]["effective_rank"] <= 20
    assert "C-NTK" in stdout


def test_full_kernel_with_metrics_and_image(tmp_path, run_cli, assert_real_png):
    out = tmp_path / "full"
    code, _, stderr = run_cli([*entk_args("mnist-cnn", "--kind", "full", "--dtype", "float64"), "--out", out])
    assert code == 0, stderr
    with np.load(out / "kernel.npz") as arrays:
        kernel = arrays["kernel"]
    assert kernel.shape == (20, 20, 10, 10)
    metrics = json.loads((out / "metrics.json").read_text())
    ksm = np.array(metrics["metrics"]["specialization_matrix"])
    assert ksm.shape == (10, 10) and metrics["metrics"]["mean_specialization"] == pytest.approx(np.trace(ksm) / 10)
    assert metrics["config"]["device"] == "cpu" and metrics["versions"]["torch"]
    assert_real_png(out / "kernel.png")


def test_adversarial_kernel_is_on_the_nets_own_pgd_examples(tmp_path, run_cli):
    out = tmp_path / "ae"
    args = entk_args("fc2", "--adversarial-eps", "0.3", "--pgd-steps", "5", "--kind", "full")
    code, stdout, stderr = run_cli([*args, "--out", out])
    assert code == 0, stderr
    with np.load(out / "kernel.npz") as arrays:
        x, x_clean, y_adv = arrays["x"], arrays["x_clean"], arrays["y_adversarial"]
    assert np.abs(x - x_clean).max() <= 0.3 + 1e-6 and np.abs(x - x_clean).max() > 0.1
    assert x.min() >= 0 and x.max() <= 1 and y_adv.shape == (20,)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["adversarial"] == {
        "eps": 0.3,
        "step": 0.01,
        "steps": 5,
        "norm": "linf",
        "random_start": True,
    }
    assert metrics["accuracy_adversarial"] <= metrics["accuracy_clean"]
    assert "mean_specialization" in metrics["metrics_adversarial_labels"] or len(set(y_adv)) < 10
    assert "AE-NTK" in stdout


def test_checkpoint_rebuilds_the_model_and_batch_stats_change_the_kernel(tmp_path, run_cli):
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config

    config = model_config("resnet18", (1, 8, 8), 10, width=2, seed=5)
    model = build_model(config)
    path = save_checkpoint(tmp_path / "net.pt", model, config)
    runs = {}
    for name, extra in (("running", []), ("batch", ["--batch-stats"])):
        out = tmp_path / name
        code, _, stderr = run_cli(["entk", "--checkpoint", path, "--n", "20", "--quiet", *extra, "--out", out])
        assert code == 0, stderr
        runs[name] = np.load(out / "kernel.npz")["kernel"]
        assert json.loads((out / "metrics.json").read_text())["network"]["seed"] == 5
    assert np.abs(runs["running"] - runs["batch"]).max() > 1e-3 * np.abs(runs["running"]).max()


@pytest.fixture
def foreign_files(tmp_path):
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00 not a checkpoint")
    colour = model_config("cifar-cnn", (3, 8, 8), 10, width=2)
    save_checkpoint(tmp_path / "colour.pt", build_model(colour), colour)
    binary = model_config("fc1", (1, 8, 8), 2, width=4)
    save_checkpoint(tmp_path / "binary.pt", build_model(binary), binary)
    return tmp_path


BAD = {
    "foreign checkpoint": (["--checkpoint", "{dir}/garbage.pt"], "is not a checkpoint of this tool"),
    "missing checkpoint": (["--checkpoint", "{dir}/nothing.pt"], "does not exist"),
    "shape mismatch": (["--checkpoint", "{dir}/colour.pt"], "takes images of shape (3, 8, 8)"),
    "class mismatch": (["--checkpoint", "{dir}/binary.pt"], "has 2 outputs, the data has 10 classes"),
    "width with checkpoint": (["--checkpoint", "{dir}/binary.pt", "--width", "3"], "--width applies to --model"),
    "model too big for data": (["--model", "mnist-cnn", "--data", "{dir}/tiny.npz"], "needs images at least 4x4"),
    "budget": (["--model", "resnet18", "--memory-budget", "1"], "too small for one example"),
    "kind": (["--model", "fc1", "--kind", "diag"], "full, trace or class:C"),
    "class out of range": (["--model", "fc1", "--kind", "class:10"], "class 10 is not an output"),
    "eps": (["--model", "fc1", "--adversarial-eps", "8"], "must lie in (0, 1]"),
    "zero eps": (["--model", "fc1", "--adversarial-eps", "0"], "must lie in (0, 1]"),
    "pgd step": (["--model", "fc1", "--adversarial-eps", "0.1", "--pgd-step", "-1"], "--pgd-step must be"),
    "too many points": (["--model", "fc1", "--n", "5000"], "exceeds the 1198 train points"),
    "unknown model": (["--model", "vgg"], "unknown model 'vgg'"),
    "model and checkpoint": (["--model", "fc1", "--checkpoint", "{dir}/binary.pt"], "not allowed with"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, foreign_files, assert_refused):
    from ntkrobust.bridge.data import Dataset, save_dataset_npz

    argv, message = BAD[case]
    x = np.random.default_rng(0).random((20, 1, 2, 2), dtype=np.float32)
    y = np.arange(20) % 2
    save_dataset_npz(Dataset("tiny", x, y, x, y, (0, 1)), foreign_files / "tiny.npz")
    assert_refused(["entk", "--quiet", "--n", "10", *[a.format(dir=foreign_files) for a in argv]], message)


def test_cuda_request_without_a_gpu_is_refused(assert_refused):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert_refused(["entk", "--model", "fc1", "--device", "cuda"], "no CUDA device")
