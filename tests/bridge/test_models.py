"""The torch model registry and checkpoints that rebuild their own model."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from ntkrobust.bridge.files import refusal_reason
from ntkrobust.bridge.models import (
    MODELS,
    ModelConfig,
    ModelError,
    build_model,
    check_fits,
    model_config,
    parameter_count,
)

SHAPES = {name: (3, 8, 8) if name in ("cifar-cnn", "resnet18") else (1, 8, 8) for name in MODELS}
SMALL_WIDTH = {"resnet18": 4, "mnist-cnn": 4, "cifar-cnn": 4, "conv1": 8, "conv2": 8}


def small_config(name: str, **kwargs) -> ModelConfig:
    return model_config(name, SHAPES[name], 3, width=SMALL_WIDTH.get(name, 16), **kwargs)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_maps_nchw_batches_to_class_scores(name):
    model = build_model(small_config(name)).eval()
    out = model(torch.rand(5, *SHAPES[name]))
    assert out.shape == (5, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_seeded_build_is_reproducible_and_leaves_the_global_rng_alone(name):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(small_config(name, seed=7))
    assert torch.equal(torch.rand(1), expected_next)
    second = build_model(small_config(name, seed=7))
    other = build_model(small_config(name, seed=8))
    pairs = list(zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters(), strict=True))


def test_paper_nets_have_the_papers_layer_sizes():
    mnist = build_model(model_config("mnist-cnn", (1, 28, 28), 10))
    convs = [m for m in mnist.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in mnist.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64 * 7 * 7, 256), (256, 10)]
    cifar = build_model(model_config("cifar-cnn", (3, 32, 32), 10))
    assert [c.out_channels for c in cifar.modules() if isinstance(c, torch.nn.Conv2d)] == [32, 32, 64, 64, 128, 128]
    assert [type(m).__name__ for m in cifar.modules() if "Pool" in type(m).__name__] == ["MaxPool2d", "AvgPool2d"]


def test_the_deep_cifar_cnn_starts_with_a_signal():
    """Six plain ReLU convs: with He initialisation the logits of CIFAR-like inputs start at a
    usable scale (torch's default initialisation gives ~0.009, and SGD stalls at loss log 10)."""
    cifar = build_model(model_config("cifar-cnn", (3, 32, 32), 10, seed=0))
    with torch.no_grad():
        logits = cifar(torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert 0.05 < float(logits.std()) < 5.0
    assert all(not m.bias.detach().any() for m in cifar.modules() if isinstance(m, torch.nn.Conv2d))


def test_resnet18_is_torchvisions_with_a_small_image_stem():
    from torchvision.models import resnet18

    ours = build_model(model_config("resnet18", (3, 32, 32), 10)).state_dict()
    reference = resnet18(num_classes=10).state_dict()
    assert ours.keys() == reference.keys()
    differing = [key for key in ours if ours[key].shape != reference[key].shape]
    assert differing == ["conv1.weight"]  # 3x3 stem in place of 7x7
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)
    model = build_model(model_config("resnet18", (3, 32, 32), 10))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model.conv1.stride == (1, 1)


def test_two_layer_net_is_supp_eq_28():
    config = model_config("two-layer", (1, 8, 8), 4, width=4000)
    model = build_model(config)
    assert [name for name, _ in model.named_parameters()] == ["hidden.weight"]  # the readout A is frozen
    assert set(model.readout.unique().tolist()) == {-1.0, 1.0}
    assert model.hidden.weight.std().item() == pytest.approx(0.01, rel=0.02)
    x = torch.rand(3, 1, 8, 8)
    expected = torch.relu(x.flatten(1) @ model.hidden.weight.T) @ model.readout / math.sqrt(4000)
    torch.testing.assert_close(model(x), expected)


def test_twins_are_ntk_parameterised():
    """Standard-normal weights; a layer's output at init has variance W_std²·mean(h²) + b_std²."""
    model = build_model(model_config("fc1", (1, 8, 8), 2, width=20000))
    first = model[1]
    assert first.weight.std().item() == pytest.approx(1.0, rel=0.02)
    x = torch.rand(1, 1, 8, 8)
    pre = first(x.flatten(1))
    expected = 2.0 * x.pow(2).mean().item() + 0.01
    assert pre.var().item() == pytest.approx(expected, rel=0.05)


def test_width_is_the_twins_hidden_width():
    assert parameter_count(build_model(model_config("fc1", (1, 8, 8), 2, width=10))) == 64 * 10 + 10 + 10 * 2 + 2
    assert parameter_count(build_model(model_config("conv1", (1, 8, 8), 2, width=5))) == 9 * 5 + 5 + 5 * 64 * 2 + 2


def test_a_model_larger_than_the_free_memory_is_refused_before_it_is_allocated(monkeypatch):
    from ntkrobust.bridge import models

    config = model_config("fc2", (1, 8, 8), 10, width=64)  # 64·64 + 64·64 + 64·10 + biases: 8,970 floats
    monkeypatch.setattr(models, "available_memory", lambda: 8_970 * 4)
    build_model(config)  # fits exactly
    build_model(config, meta=True)  # shapes only: no memory to check
    monkeypatch.setattr(models, "available_memory", lambda: 8_969 * 4)
    with pytest.raises(ModelError, match=r"fc2 of width 64 has 8,970 parameters \(0.0 GiB\), more than the 0.0 GiB"):
        build_model(config)
    monkeypatch.setattr(models, "available_memory", lambda: None)  # not Linux: nothing to compare
    build_model(config)


@pytest.mark.parametrize(
    ("model", "width"),
    [("fc2", 4 * 10**9), ("mnist-cnn", 10**12), ("resnet18", 10**12), ("fc2", 2 * 10**19)],
    ids=["square-past-2^63", "cnn", "resnet", "width-past-2^63"],
)
def test_a_width_whose_weights_torch_cannot_count_is_refused(model, width):
    """fc2's hidden weight of 4e9 x 4e9 has more elements than int64 holds: torch's meta build
    (the memory check's) fails in its size arithmetic (RuntimeError) or in unpacking the width
    (TypeError); both are the model's error, not a traceback; checkpoints go through it too."""
    config = model_config(model, (1, 8, 8), 10, width=width)
    with pytest.raises(ModelError, match=rf"{model} of width {width} has a weight of more elements than torch"):
        build_model(config)
    with pytest.raises(ModelError, match="choose a smaller width"):
        build_model(config, meta=True)


def test_normalisation_lives_inside_the_model():
    plain = build_model(model_config("fc1", (3, 4, 4), 2, width=8))
    normalised = build_model(model_config("fc1", (3, 4, 4), 2, width=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25)))
    x = torch.rand(2, 3, 4, 4)
    shifted = (x - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / torch.tensor([0.2, 0.2, 0.25])[:, None, None]
    torch.testing.assert_close(normalised(x), plain(shifted))


def test_a_float64_nets_normalisation_is_its_mean_and_std_in_float64():
    """Built under torch's float64 default, as the float64 checks build nets, the mean and std are
    the float64 numbers given: they were float32 buffers, so 0.4 was 0.4000000059 inside the net."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        normalised = build_model(model_config("fc1", (2, 4, 4), 2, width=4, mean=(0.4, 0.7), std=(0.3, 0.1)))
        x = torch.rand(2, 2, 4, 4)
    finally:
        torch.set_default_dtype(default)
    layer = normalised[0]
    assert layer.mean.dtype == torch.float64 and layer.mean.flatten().tolist() == [0.4, 0.7]
    assert layer.std.flatten().tolist() == [0.3, 0.1]
    expected = torch.stack([(x[:, 0] - 0.4) / 0.3, (x[:, 1] - 0.7) / 0.1], dim=1)
    assert torch.equal(layer(x), expected)
    assert build_model(model_config("fc1", (2, 4, 4), 2, width=4, mean=(0.4, 0.7), std=(0.3, 0.1)))[0].mean.dtype == (
        torch.float32
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vgg"}, "unknown model"),
        ({"input_shape": (1, 2, 2), "name": "mnist-cnn"}, "at least 4x4"),
        ({"input_shape": (8, 8)}, "(channels, height, width)"),
        ({"width": 0}, "positive"),
        ({"mean": (0.5, 0.5), "std": (1.0, 1.0)}, "one value per input channel"),
        ({"mean": (0.5,)}, "both mean and std"),
        ({"mean": (0.5,), "std": (float("nan"),)}, "std must be finite, got [nan]"),  # NaN passed "std > 0"
        ({"mean": (float("inf"),), "std": (0.5,)}, "mean must be finite, got [inf]"),
    ],
)
def test_bad_model_requests_are_refused_in_one_line(kwargs, message):
    arguments = {"name": "fc1", "input_shape": (1, 8, 8), "num_classes": 2, **kwargs}
    with pytest.raises(ModelError, match=re.escape(message)) as error:
        model_config(arguments.pop("name"), arguments.pop("input_shape"), arguments.pop("num_classes"), **arguments)
    assert "\n" not in str(error.value)


def test_check_fits_names_both_shapes():
    config = small_config("mnist-cnn")
    check_fits(config, (1, 8, 8))
    with pytest.raises(ModelError, match=r"\(1, 8, 8\).*\(3, 32, 32\)"):
        check_fits(config, (3, 32, 32))


@pytest.mark.parametrize("name", ["two-layer", "resnet18", "conv1"])
def test_checkpoint_alone_rebuilds_its_model(tmp_path, name):
    config = small_config(name, seed=3)
    model = build_model(config)
    with torch.no_grad():  # make the weights differ from a fresh build
        for p in model.parameters():
            p.add_(0.5)
    path = save_checkpoint(tmp_path / "model.pt", model.eval(), config, epoch=4)
    rebuilt, loaded, payload = load_checkpoint(path)
    assert loaded == config and payload["epoch"] == 4
    x = torch.rand(3, *config.input_shape)
    torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place
    assert path.stat().st_mode & 0o044  # readable by others, like any file the user writes


@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("width", 16.5, "width must be whole numbers, got [16.5]"),  # int() read it as 16
        ("seed", 1.9, "seed must be whole numbers, got [1.9]"),  # f0 of an OutputChange from seed 1
        ("num_classes", True, "num_classes must be whole numbers, got [True]"),
        ("input_shape", [1, 8.0, 8], "input_shape must be whole numbers, got [1, 8.0, 8]"),
        ("input_shape", "1x8x8", "input_shape must be whole numbers, got '1x8x8'"),
        ("running_stats", "false", "running_stats is 'false'"),  # bool("false") is True
        ("model", None, "model is None"),
        ("init", 0, "init is 0"),
        ("mean", ["0.5"], "mean must be real numbers, got ['0.5']"),
        ("std", 0.5, "std must be real numbers, got 0.5"),
    ],
)
def test_a_checkpoints_config_is_read_as_written(tmp_path, entry, value, message):
    """A stored config whose numbers are not whole, or whose words and flags are of another type,
    is a damaged checkpoint: refused in one line, not read with ``int()`` or ``bool()``."""
    config = small_config("conv1", mean=(0.5,), std=(0.25,))
    path = save_checkpoint(tmp_path / "model.pt", build_model(config), config)
    payload = torch.load(path, weights_only=True)
    payload["config"][entry] = value
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value) == f"{path}: cannot rebuild its model (not a model config: {message})"
    payload["config"] = [1, 2]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"not a model config: list\)$"):
        load_checkpoint(path)


def test_a_config_takes_numpys_whole_numbers_but_no_float():
    config = model_config("fc1", (np.int64(1), 8, 8), np.int32(3), width=np.int64(16), seed=np.uint8(2))
    assert config == model_config("fc1", (1, 8, 8), 3, width=16, seed=2)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ModelError, match=re.escape("width must be whole numbers, got 16.0")):
        model_config("fc1", (1, 8, 8), 3, width=16.0)  # type: ignore[arg-type]


def test_foreign_files_are_not_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    pickled = tmp_path / "code.pt"
    pickled.write_bytes(pickle.dumps(print))  # a pickle that would call code: weights_only refuses it
    wrong_config = tmp_path / "config.pt"
    torch.save({"format": "ntkrobust-checkpoint-v1", "config": {"model": "nope"}, "state_dict": {}}, wrong_config)
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)  # a whole pickled module: torch's zip, objects inside
    reasons = {
        garbage: "not a zip archive",
        tensor: "no 'ntkrobust-checkpoint-v1' format tag",
        pickled: "not a zip archive",
        module: "holds pickled Python objects, which are never unpickled here",
        tmp_path / "missing.pt": "does not exist",
    }
    for path, reason in reasons.items():
        with pytest.raises(CheckpointError, match=re.escape(reason)) as error:
            read_checkpoint(path)
        # ours, not torch's advice to re-run torch.load with weights_only=False
        assert "\n" not in str(error.value) and "weights_only" not in str(error.value)
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        load_checkpoint(wrong_config)


def test_bridge_loads_torch_only_for_its_torch_half():
    import subprocess
    import sys

    code = (
        "import sys; from ntkrobust import bridge; assert 'torch' not in sys.modules and 'jax' not in sys.modules; "
        "assert callable(bridge.empirical_ntk) and 'torch' in sys.modules and 'jax' not in sys.modules; "
        "assert set(bridge.__all__) <= set(dir(bridge)); "
        "assert all(getattr(bridge, name) is not None for name in bridge.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[2]))


def test_a_long_loader_message_is_cut_at_a_word(tmp_path):
    archive = tmp_path / "other.npz"
    np.savez(archive, x=np.zeros(2))  # a zip archive, but not torch's
    words = "PytorchStreamReader failed reading zip archive: failed finding central directory. " * 3
    reason = refusal_reason(archive, RuntimeError(words + "\nsecond line"))
    assert len(reason) <= 122 and reason.endswith(" …") and words.startswith(reason[:-2])
    assert refusal_reason(archive, RuntimeError("short")) == "short"


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("init", ["default", "normal"])
def test_a_float64_default_builds_the_float32_nets_values(name, init):
    """Built under torch's float64 default (as the float64 checks build nets), a seed gives the
    float32 net's weights in float64, not other draws: the default initialisers and the re-draws
    drew in the default dtype, so a float64 check looked at another net than the float32 run."""
    if init != "default" and MODELS[name].analytic_twin is not None:
        pytest.skip("the NTK twins take the default initialisation only")
    config = small_config(name, init=init, seed=3)
    single = build_model(config)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        double = build_model(config)
    finally:
        torch.set_default_dtype(default)
    assert torch.get_default_dtype() == default
    for (key, a), (_, b) in zip(single.state_dict().items(), double.state_dict().items(), strict=True):
        assert b.dtype == (torch.float64 if a.is_floating_point() else a.dtype), key
        assert torch.equal(b, a.to(b.dtype)), key
