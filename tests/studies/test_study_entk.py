"""``studies.entk.run(settings)``: the empirical NTK of every registered model, AE-NTK on the net's
own PGD examples, checkpoints, the files its result saves, its summary, and the settings it
refuses before any compute."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ntkrobust.bridge.files import json_safe
from ntkrobust.bridge.models import MODELS, build_model, model_config
from ntkrobust.studies import DataSettings, entk
from ntkrobust.studies.entk import EntkSettings

SMALL_WIDTH = {"resnet18": 4, "mnist-cnn": 4, "cifar-cnn": 4, "conv1": 8, "conv2": 8}
NO_KERNEL = ("ntkrobust.bridge.entk.empirical_ntk", "ntkrobust.bridge.adversarial.pgd_examples")


def small(model: str, **changes) -> EntkSettings:
    return EntkSettings(model=model, width=SMALL_WIDTH.get(model, 32), n=20, **changes)


@pytest.fixture(scope="module")
def colour_digits(tmp_path_factory):
    """Digits made three-channel through an npz (60 train, 20 test), for the colour nets."""
    from ntkrobust.bridge.data import load_dataset, save_dataset_npz

    digits = load_dataset("digits", n_train=60, n_test=20, seed=0)
    colour = dataclasses.replace(
        digits, x_train=np.repeat(digits.x_train, 3, axis=1), x_test=np.repeat(digits.x_test, 3, axis=1)
    )
    path = tmp_path_factory.mktemp("colour") / "colour.npz"
    save_dataset_npz(colour, path)
    return DataSettings(data=str(path))


@pytest.mark.parametrize("model", MODELS)
def test_every_registered_model_on_digits(tmp_path, model, request):
    data = request.getfixturevalue("colour_digits") if model in ("cifar-cnn", "resnet18") else DataSettings()
    result = entk.run(small(model, data=data))
    out = result.save(tmp_path / model)
    assert sorted(p.name for p in out.iterdir()) == ["kernel.npz", "kernel.png", "metrics.json"]
    with np.load(out / "kernel.npz", allow_pickle=False) as arrays:
        kernel, x, y = arrays["kernel"], arrays["x"], arrays["y"]
    assert kernel.shape == (20, 20) and x.shape[0] == 20 and np.bincount(y).tolist() == [2] * 10
    np.testing.assert_allclose(kernel, kernel.T, rtol=1e-5, atol=1e-6 * np.abs(kernel).max())
    assert np.linalg.eigvalsh(kernel.astype(np.float64)).min() > -1e-4 * np.abs(kernel).max()  # PSD
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(json_safe(result.record)))  # the record, as strict JSON
    assert metrics["network"]["model"] == model and metrics["kind"] == "trace" and metrics["shape"] == [20, 20]
    assert 1 <= metrics["metrics"]["effective_rank"] <= 20
    assert result.summary().startswith(f"trace C-NTK of {model} (")
    assert result.picture["title"] == "Empirical C-NTK: trace kernel"


def test_full_kernel_with_metrics_and_image(tmp_path, assert_real_png):
    result = entk.run(small("mnist-cnn", kind="full", dtype="float64"))
    assert result.arrays["kernel"].shape == (20, 20, 10, 10) and result.arrays["kernel"].dtype == np.float64
    record = result.record
    ksm = np.array(record["metrics"]["specialization_matrix"])
    assert ksm.shape == (10, 10) and record["metrics"]["mean_specialization"] == pytest.approx(np.trace(ksm) / 10)
    assert record["config"]["device"] == "cpu" and record["versions"]["torch"] and record["argv"] is None
    out = result.save(tmp_path / "full")
    with np.load(out / "kernel.npz") as arrays:
        assert arrays["kernel"].shape == (20, 20, 10, 10)
    assert_real_png(out / "kernel.png")
    assert result.picture["title"] == "Empirical C-NTK: trace of the full kernel"  # its picture is the trace
    assert "mean of its C diagonal output blocks" in result.picture["subtitle"]
    summary = result.summary()
    assert summary.startswith("full C-NTK of mnist-cnn (") and "on 20 digits points" in summary
    assert "mean specialization" in summary


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        ("rademacher:2", "trace kernel, Rademacher estimate of 2 draws"),  # more than 2 are refused
        ("rademacher:1", "trace kernel, Rademacher estimate of 1 draw"),
        ("class:1", "block of class 8"),
    ],
)
def test_the_picture_names_the_kernel_of_a_binary_task(tmp_path, kind, label):
    """rademacher:K's K counts draws, not an output: with K at least the task's classes, the picture
    looked it up as a class and failed after the kernel (IndexError); below, it was titled as
    the block of class K."""
    result = entk.run(small("fc2", kind=kind, data=DataSettings(classes=(3, 8))))
    assert result.picture["title"] == f"Empirical C-NTK: {label}"
    assert result.arrays["kernel"].shape == (20, 20)
    result.save(tmp_path / "out")


def test_adversarial_kernel_is_on_the_nets_own_pgd_examples(tmp_path):
    result = entk.run(small("fc2", adversarial_eps=0.3, pgd_steps=5, kind="full"))
    arrays = result.arrays
    x, x_clean, y_adv = arrays["x"], arrays["x_clean"], arrays["y_adversarial"]
    assert np.abs(x - x_clean).max() <= 0.3 + 1e-6 and np.abs(x - x_clean).max() > 0.1
    assert x.min() >= 0 and x.max() <= 1 and y_adv.shape == (20,)
    record = result.record
    assert record["config"]["adversarial"] == {
        "eps": 0.3,
        "step": 0.01,
        "steps": 5,
        "norm": "linf",
        "random_start": True,
    }
    assert record["accuracy_adversarial"] <= record["accuracy_clean"]  # 0.0 and 0.05: this net is untrained
    # so the accuracies say little; the net's own loss says that these are its PGD examples: higher
    # at every point (2.56 to 2.89 on average here, where random signs of the same size lower it)
    import torch
    import torch.nn.functional as F

    network = record["network"]
    net = build_model(model_config("fc2", (1, 8, 8), 10, width=network["width"], seed=network["seed"])).eval()
    with torch.no_grad():
        logits = {name: net(torch.as_tensor(arrays[name])) for name in ("x", "x_clean")}
        labels = torch.as_tensor(arrays["y"])
        loss = {name: F.cross_entropy(out, labels, reduction="none") for name, out in logits.items()}
    assert bool((loss["x"] > loss["x_clean"]).all())
    assert np.array_equal(logits["x"].argmax(1).numpy(), y_adv)
    assert "mean_specialization" in record["metrics_adversarial_labels"] or len(set(y_adv)) < 10
    assert ", PGD eps=0.3 (5 steps of 0.01)" in result.picture["subtitle"]  # ε the steps cannot reach: said
    assert "AE-NTK" in result.summary()
    with np.load(result.save(tmp_path / "ae") / "kernel.npz") as saved:
        assert sorted(saved.files) == ["kernel", "x", "x_clean", "y", "y_adversarial"]


def test_checkpoint_rebuilds_the_model_and_batch_stats_change_the_kernel(tmp_path):
    from ntkrobust.bridge.checkpoint import save_checkpoint

    config = model_config("resnet18", (1, 8, 8), 10, width=2, seed=5)
    path = save_checkpoint(tmp_path / "net.pt", build_model(config), config)
    kernels = {}
    for batch_stats in (False, True):
        result = entk.run(EntkSettings(checkpoint=path, n=20, batch_stats=batch_stats))
        kernels[batch_stats] = result.arrays["kernel"]
        assert result.record["network"]["seed"] == 5 and result.record["network"]["checkpoint"] == str(path)
    assert np.abs(kernels[False] - kernels[True]).max() > 1e-3 * np.abs(kernels[False]).max()


@pytest.fixture
def foreign_files(tmp_path):
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.data import Dataset, save_dataset_npz

    (tmp_path / "garbage.pt").write_bytes(b"\x00 not a checkpoint")
    colour = model_config("cifar-cnn", (3, 8, 8), 10, width=2)
    save_checkpoint(tmp_path / "colour.pt", build_model(colour), colour)
    binary = model_config("fc1", (1, 8, 8), 2, width=4)
    save_checkpoint(tmp_path / "binary.pt", build_model(binary), binary)
    save_checkpoint(tmp_path / "trained-binary.pt", build_model(binary), binary, history={"class_names": ["3", "8"]})
    one_logit = model_config("two-layer", (1, 8, 8), 1, width=4)  # as two-layer writes for a binary task
    save_checkpoint(tmp_path / "one-logit.pt", build_model(one_logit), one_logit)
    x = np.random.default_rng(0).random((20, 1, 2, 2), dtype=np.float32)
    y = np.arange(20) % 2
    save_dataset_npz(Dataset("tiny", x, y, x, y, (0, 1)), tmp_path / "tiny.npz")
    return tmp_path


#: (folder of foreign_files -> EntkSettings fields) -> the refusal
BAD = {
    "foreign checkpoint": (lambda d: {"checkpoint": d / "garbage.pt"}, "is not a checkpoint of this tool"),
    "missing checkpoint": (lambda d: {"checkpoint": d / "nothing.pt"}, "does not exist"),
    "shape mismatch": (lambda d: {"checkpoint": d / "colour.pt"}, "takes images of shape (3, 8, 8)"),
    "class mismatch": (lambda d: {"checkpoint": d / "binary.pt"}, "has 2 outputs, the data has 10 classes"),
    "class mismatch, classes recorded": (
        lambda d: {"checkpoint": d / "trained-binary.pt"},
        "has 2 outputs, the data has 10 classes; it was trained on the classes (3, 8): give that task's --classes",
    ),
    "one-logit binary net": (
        lambda d: {"checkpoint": d / "one-logit.pt", "data": DataSettings(classes=(3, 8))},
        "has 1 output, a one-logit binary net (as two-layer writes); this command needs one output per class, 2 here",
    ),
    "width with checkpoint": (lambda d: {"checkpoint": d / "binary.pt", "width": 3}, "--width applies to --model"),
    "model too big for data": (
        lambda d: {"model": "mnist-cnn", "data": DataSettings(data=str(d / "tiny.npz"))},
        "needs images at least 4x4",
    ),
    "kind": (lambda d: {"model": "fc1", "kind": "diag"}, "full, class-blocks, trace, class:C"),
    "class out of range": (lambda d: {"model": "fc1", "kind": "class:10"}, "class 10 is not an output"),
    "eps": (lambda d: {"model": "fc1", "adversarial_eps": 8.0}, "must lie in (0, 1]"),
    "zero eps": (lambda d: {"model": "fc1", "adversarial_eps": 0.0}, "must lie in (0, 1]"),
    "eps just above 1": (lambda d: {"model": "fc1", "adversarial_eps": 1.0000001}, "(pixel units), got 1.0000001"),
    "pgd step": (lambda d: {"model": "fc1", "adversarial_eps": 0.1, "pgd_step": -1.0}, "--pgd-step must be"),
    "too many points": (lambda d: {"model": "fc1", "n": 5000}, "exceeds the 1198 train points"),
    "unknown model": (lambda d: {"model": "vgg"}, "unknown model 'vgg'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_settings_are_refused_before_the_kernel(case, foreign_files, refuses):
    fields, message = BAD[case]
    refuses(entk, EntkSettings(**{"n": 10, **fields(foreign_files)}), message, compute=NO_KERNEL)


def test_a_memory_budget_below_one_example_is_refused(refuses):
    refuses(entk, EntkSettings(model="resnet18", n=10, memory_budget=1), "too small for one example")


def test_cuda_request_without_a_gpu_is_refused(refuses):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    refuses(entk, EntkSettings(model="fc1", device="cuda"), "no CUDA device", compute=NO_KERNEL)
