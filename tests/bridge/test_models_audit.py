"""Audit of ``bridge.models`` by routes that do not go through the models' own code.

- ResNet-18: the parameter count of the CIFAR layout (11,173,962 at width 64 for 3x32x32 and 10
  classes: torchvision's 11,181,642 less the 7x7 stem's 9,408 plus a 3x3 stem's 1,728), and a
  count by formula at any width; the stage output shapes (strides 1, 2, 2, 2); every BatchNorm
  configured as torchvision's; a forward pass rewritten with ``torch.nn.functional`` from the
  model's own weights; the conv weights' spread against He's fan-out law.
- The NTK twins and the paper CNNs: a float64 forward written by hand (numpy / functional) from
  the module's weights, with the literal constants W_std = √2, b_std = 0.1 of the docstring, so
  a lost ReLU, a layer too few, a wrong scale or a pooling swapped shows as a different output.
- The NTK limit: the empirical NTK of fc1 and of the two-layer net (gradients by autograd, one
  output at a time) against their closed forms (the arc-cosine recursion of Jacot et al.; supp.
  eq. 29), written in numpy here: the error falls with the width.
- The registry's argument checks at their boundaries, and nets without running statistics.
Tiny nets on seeded data; float64 where numbers are compared.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntkrobust.bridge.models import (
    MODELS,
    ModelError,
    build_model,
    model_config,
    parameter_count,
    parse_model_name,
)

SQRT2, B = math.sqrt(2.0), 0.1  # the analytic kernels' W_std and b_std (module docstring)


def _resnet18_count(width: int, channels: int, classes: int) -> int:
    """Parameters of ResNet-18 with a 3x3 stem, counted by formula (BasicBlock: two 3x3 convs
    and two BatchNorms; a 1x1 conv + BatchNorm shortcut where a stage changes width or stride)."""
    w = width
    count = 9 * channels * w + 2 * w  # stem conv (no bias) + bn1
    inplanes = w
    for planes in (w, 2 * w, 4 * w, 8 * w):
        for block in range(2):
            cin = inplanes if block == 0 else planes
            count += 9 * cin * planes + 2 * planes + 9 * planes * planes + 2 * planes
            if block == 0 and (cin != planes or planes != w):
                count += cin * planes + 2 * planes
        inplanes = planes
    return count + 8 * w * classes + classes


def test_resnet18_has_the_cifar_layouts_parameter_count():
    """11,173,962: the count every CIFAR ResNet-18 reports; and the formula at two small widths."""
    assert _resnet18_count(64, 3, 10) == 11_173_962
    # shapes only (meta device): the count needs no 11M-weight initialisation
    assert parameter_count(build_model(model_config("resnet18", (3, 32, 32), 10), meta=True)) == 11_173_962
    for width, channels, classes in ((4, 1, 3), (6, 3, 7)):
        model = build_model(model_config("resnet18", (channels, 8, 8), classes, width=width))
        assert parameter_count(model) == _resnet18_count(width, channels, classes)


def test_resnet18_stages_halve_the_side_after_the_first():
    model = build_model(model_config("resnet18", (3, 32, 32), 10, width=4)).eval()
    shapes = {}
    for name in ("bn1", "layer1", "layer2", "layer3", "layer4", "avgpool"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert shapes == {
        "bn1": (2, 4, 32, 32),
        "layer1": (2, 4, 32, 32),
        "layer2": (2, 8, 16, 16),
        "layer3": (2, 16, 8, 8),
        "layer4": (2, 32, 4, 4),
        "avgpool": (2, 32, 1, 1),
    }


def test_resnet18_batchnorms_are_torchvisions():
    """Same eps, momentum, affine and running statistics as torchvision's ResNet-18, module by module."""
    from torchvision.models import resnet18

    ours = dict(build_model(model_config("resnet18", (3, 32, 32), 10, width=64), meta=True).named_modules())
    reference = {n: m for n, m in resnet18(num_classes=10).named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert len(reference) == 20
    for name, bn in reference.items():
        mine = ours[name]
        assert isinstance(mine, torch.nn.BatchNorm2d), name
        got = (mine.eps, mine.momentum, mine.affine, mine.track_running_stats, mine.num_features)
        assert got == (bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.num_features), name
        assert (bn.eps, bn.momentum) == (1e-5, 0.1)


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


def _block(x: torch.Tensor, block, stride: int) -> torch.Tensor:
    out = F.relu(_bn(F.conv2d(x, block.conv1.weight, stride=stride, padding=1), block.bn1))
    out = _bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
    if block.downsample is not None:
        x = _bn(F.conv2d(x, block.downsample[0].weight, stride=stride), block.downsample[1])
    return F.relu(out + x)


def test_resnet18_forward_matches_a_functional_rewrite():
    """Eval-mode forward with random running statistics, float64: stem conv-BN-ReLU, two
    BasicBlocks per stage (stride 2 in the first block of stages 2-4), global average pool, fc."""
    model = build_model(model_config("resnet18", (3, 16, 16), 5, width=4, seed=1)).double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.weight.copy_(1 + 0.2 * torch.randn(module.num_features, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=generator))
        x = torch.rand(3, 3, 16, 16, generator=generator, dtype=torch.float64)
        h = F.relu(_bn(F.conv2d(x, model.conv1.weight, padding=1), model.bn1))
        for index, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
            assert len(stage) == 2
            h = _block(h, stage[0], 1 if index == 0 else 2)
            h = _block(h, stage[1], 1)
        expected = h.mean(dim=(2, 3)) @ model.fc.weight.T + model.fc.bias
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_resnet18_convs_are_he_initialised_by_fan_out():
    """torchvision: N(0, 2/fan_out), fan_out = out_channels · kernel area. The stem (3 → 64) and
    the 1x1 shortcuts (w → 2w) have fan_in ≠ fan_out; the sample std of n weights is within
    5/√(2n) (5 standard errors) of the law's, and at least 25% from the fan-in law's there."""
    model = build_model(model_config("resnet18", (3, 32, 32), 10, width=64, seed=0))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20  # 1 stem + 16 block convs + 3 shortcuts
    for conv in convs:
        out, _cin, kh, kw = conv.weight.shape
        expected = math.sqrt(2 / (out * kh * kw))
        n = conv.weight.numel()
        assert abs(conv.weight.std().item() / expected - 1) < 5 / math.sqrt(2 * n), conv
    stem = model.conv1.weight
    assert abs(stem.std().item() / math.sqrt(2 / 27) - 1) > 0.25  # not fan-in: 27 vs 576


def _twin_forward(model: torch.nn.Sequential, x: np.ndarray, convolutional: bool) -> np.ndarray:
    """float64 numpy: h ← relu(√2/√fan_in · W h + 0.1 · b) per hidden layer, then the same
    affine map without ReLU; the conv layers are 3x3 'SAME' cross-correlations written as loops."""
    layers = [m for m in model if hasattr(m, "weight")]
    h = x
    for index, layer in enumerate(layers):
        w = layer.weight.detach().double().numpy()
        b = layer.bias.detach().double().numpy()
        last = index == len(layers) - 1
        if w.ndim == 4:
            cin = w.shape[1]
            padded = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
            side_h, side_w = h.shape[2:]
            out = np.zeros((h.shape[0], w.shape[0], side_h, side_w))
            for i in range(3):
                for j in range(3):
                    out += np.einsum("nchw,oc->nohw", padded[:, :, i : i + side_h, j : j + side_w], w[:, :, i, j])
            h = SQRT2 / math.sqrt(cin * 9) * out + B * b[None, :, None, None]
        else:
            flat = h.reshape(h.shape[0], -1)
            h = SQRT2 / math.sqrt(flat.shape[1]) * flat @ w.T + B * b
        if not last:
            h = np.maximum(h, 0)
    assert convolutional == any(layer.weight.ndim == 4 for layer in layers)
    return h


@pytest.mark.parametrize("name", ["fc1", "fc2", "fc3", "fc5", "conv1", "conv2"])
def test_twins_forward_matches_the_ntk_parameterisation_by_hand(name):
    depth = int(name[-1])
    shape = (2, 5, 5) if name.startswith("conv") else (1, 4, 4)
    model = build_model(model_config(name, shape, 3, width=6, seed=2)).double()
    layers = [m for m in model if hasattr(m, "weight")]
    assert len(layers) == depth + 1 and sum(isinstance(m, torch.nn.ReLU) for m in model) == depth
    with torch.no_grad():  # O(1) biases so that b_std matters as much as W_std
        for layer in layers:
            layer.bias.normal_(0, 3.0, generator=torch.Generator().manual_seed(1))
    x = np.random.default_rng(0).random((4, *shape))
    expected = _twin_forward(model, x, name.startswith("conv"))
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def _ntk_by_autograd(model: torch.nn.Module, x: torch.Tensor, output: int) -> np.ndarray:
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for point in x:
        grads = torch.autograd.grad(model(point[None])[0, output], params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)
    return (jac @ jac.T).numpy()


def _fc1_ntk(x: np.ndarray) -> np.ndarray:
    """Jacot et al.'s recursion for √2/√d · W x + 0.1 b, ReLU, the same readout (NTK
    parameterisation): Σ₀ = 2xx′/d + 0.01; Σ₁ = 2·√(Σ₀Σ₀′)(sin θ + (π − θ) cos θ)/(2π) + 0.01;
    Σ̇₁ = 2(π − θ)/(2π); Θ = Σ₁ + Σ₀·Σ̇₁."""
    flat = x.reshape(x.shape[0], -1)
    s0 = 2 * flat @ flat.T / flat.shape[1] + B**2
    norms = np.sqrt(np.diag(s0))
    cos = np.clip(s0 / np.outer(norms, norms), -1, 1)
    theta = np.arccos(cos)
    s1 = 2 * np.outer(norms, norms) * (np.sin(theta) + (np.pi - theta) * cos) / (2 * np.pi) + B**2
    return s1 + s0 * 2 * (np.pi - theta) / (2 * np.pi)


def _two_layer_ntk(x: np.ndarray) -> np.ndarray:
    """Supp. eq. 29: Θ(x, x′) = (π − θ)/(2π) · x·x′ (only W trained)."""
    flat = x.reshape(x.shape[0], -1)
    dots = flat @ flat.T
    norms = np.sqrt(np.diag(dots))
    theta = np.arccos(np.clip(dots / np.outer(norms, norms), -1, 1))
    return (np.pi - theta) / (2 * np.pi) * dots


@pytest.mark.parametrize(("name", "analytic"), [("fc1", _fc1_ntk), ("two-layer", _two_layer_ntk)])
def test_empirical_ntk_approaches_the_closed_form_as_width_grows(name, analytic):
    """Relative Frobenius error, mean over 2 seeds and both outputs: falls ~1/√width; at width
    4096 it is below 0.08 and at least 3x below the width-64 error (measured: fc1 0.175 → 0.022,
    two-layer 0.090 → 0.014)."""
    x = np.random.default_rng(0).random((6, 1, 4, 4))
    reference = analytic(x)

    def error(width: int) -> float:
        errors = []
        for seed in range(2):
            model = build_model(model_config(name, (1, 4, 4), 2, width=width, seed=seed)).double()
            for output in range(2):
                kernel = _ntk_by_autograd(model, torch.from_numpy(x), output)
                errors.append(np.linalg.norm(kernel - reference) / np.linalg.norm(reference))
        return float(np.mean(errors))

    narrow, wide = error(64), error(4096)
    assert wide < 0.08 and wide < narrow / 3, (narrow, wide)


def test_twin_readout_output_variance_at_init_follows_the_law():
    """fc1 at width 512 on one input h: over 400 seeds the output f = √2/√m · v·relu(z) + 0.1 b
    has variance 2·E[relu(z)²] + 0.01 with E[relu(z)²] = Σ₀/2 (z ~ N(0, Σ₀), Σ₀ = 2‖x‖²/d + 0.01):
    Var f = Σ₀ + 0.01. 400 draws give the variance to ±5 standard errors of √(2/400) ≈ 7%: bound 0.36
    (measured ratio 0.915)."""
    x = torch.from_numpy(np.random.default_rng(1).random((1, 1, 4, 4)))
    sigma0 = 2 * float((x**2).sum()) / 16 + 0.01
    outputs = []
    for seed in range(400):  # width 512: the law holds to O(1/m) there
        model = build_model(model_config("fc1", (1, 4, 4), 1, width=512, seed=seed)).double()
        with torch.no_grad():
            outputs.append(float(model(x)[0, 0]))
    variance = float(np.var(outputs))
    assert abs(variance / (sigma0 + 0.01) - 1) < 0.36, (variance, sigma0 + 0.01)


def _mnist_forward(model, x: torch.Tensor) -> torch.Tensor:
    c1, c2 = (m for m in model if isinstance(m, torch.nn.Conv2d))
    l1, l2 = (m for m in model if isinstance(m, torch.nn.Linear))
    h = F.avg_pool2d(F.relu(F.conv2d(x, c1.weight, c1.bias, padding=1)), 2)
    h = F.avg_pool2d(F.relu(F.conv2d(h, c2.weight, c2.bias, padding=1)), 2)
    return F.linear(F.relu(F.linear(h.flatten(1), l1.weight, l1.bias)), l2.weight, l2.bias)


def _cifar_forward(model, x: torch.Tensor) -> torch.Tensor:
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    (linear,) = (m for m in model if isinstance(m, torch.nn.Linear))
    h = x
    for index, conv in enumerate(convs):
        h = F.relu(F.conv2d(h, conv.weight, conv.bias, padding=1))
        if index == 1:
            h = F.max_pool2d(h, 2)
    return F.linear(F.avg_pool2d(h, 2).flatten(1), linear.weight, linear.bias)


@pytest.mark.parametrize(("name", "forward"), [("mnist-cnn", _mnist_forward), ("cifar-cnn", _cifar_forward)])
def test_paper_cnns_forward_matches_supp_e_by_hand(name, forward):
    """TK supp. E written with ``torch.nn.functional`` from the module's weights (random biases
    so that a bias the model drops would show), float64."""
    channels = 1 if name == "mnist-cnn" else 3
    model = build_model(model_config(name, (channels, 8, 8), 4, width=3, seed=0)).double()
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    x = torch.rand(5, channels, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model(x), forward(model, x), rtol=1e-12, atol=1e-12)


def test_paper_cnns_parameter_counts_by_formula():
    w, c, k = 3, 1, 4
    mnist = (9 * c * w + w) + (9 * w * 2 * w + 2 * w) + (2 * w * 2 * 2 * 8 * w + 8 * w) + (8 * w * k + k)
    assert parameter_count(build_model(model_config("mnist-cnn", (c, 8, 8), k, width=w))) == mnist
    chans = [3, w, w, 2 * w, 2 * w, 4 * w, 4 * w]
    cifar = sum(9 * a * b + b for a, b in itertools.pairwise(chans)) + 4 * w * 2 * 2 * k + k
    assert parameter_count(build_model(model_config("cifar-cnn", (3, 8, 8), k, width=w))) == cifar


def test_cifar_cnn_is_he_initialised_by_fan_in_with_zero_biases():
    """N(0, 2/fan_in) (the comment's He initialisation), checked to 5 standard errors on the layers
    where fan_in ≠ fan_out (3 → 32, 32 → 64, 64 → 128, and the linear layer); zero biases."""
    model = build_model(model_config("cifar-cnn", (3, 32, 32), 10, seed=0))
    layers = [m for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for layer in layers:
        weight = layer.weight
        fan_in = weight[0].numel()
        assert abs(weight.std().item() / math.sqrt(2 / fan_in) - 1) < 5 / math.sqrt(2 * weight.numel()), layer
        assert not layer.bias.detach().any()


@pytest.mark.parametrize(
    ("name", "width"),
    [
        ("fc1", 512),
        ("fc5", 512),
        ("conv1", 64),
        ("conv2", 64),
        ("two-layer", 1024),
        ("mnist-cnn", 32),
        ("resnet18", 64),
    ],
)
def test_default_widths_are_the_registrys(name, width):
    shape = (3, 8, 8) if name == "resnet18" else (1, 8, 8)
    assert model_config(name, shape, 2).width == width == MODELS[name].default_width


def test_registry_argument_checks_at_their_boundaries():
    model_config("mnist-cnn", (1, 4, 4), 2)  # exactly the smallest side
    model_config("fc1", (1, 8, 8), 1)  # one output (a binary task)
    model_config("fc1", (1, 8, 8), 2, seed=2**63 - 1)
    refused = [
        ({"num_classes": 0}, "positive"),
        ({"seed": 2**63}, "seed must lie in [0, 2**63)"),
        ({"seed": -1}, "seed must lie"),
        ({"mean": (0.5,), "std": (0.0,)}, "std must be positive"),
        ({"input_shape": (8, 8, 1)}, "looks like (height, width, channels)"),
        ({"input_shape": (3, 8, 8), "mean": (0.5,), "std": (1.0,)}, "one value per input channel"),
        ({"num_classes": 2.5}, "whole numbers"),
    ]
    for kwargs, message in refused:
        arguments = {"input_shape": (1, 8, 8), "num_classes": 2, **kwargs}
        with pytest.raises(ModelError, match=re_escape(message)):
            model_config("fc1", arguments.pop("input_shape"), arguments.pop("num_classes"), **arguments)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("name", ["fc1", "conv1", "two-layer"])
def test_twins_refuse_another_initialisation(name):
    with pytest.raises(ModelError, match="draws its weights as its analytic kernel assumes"):
        model_config(name, (1, 8, 8), 2, init="normal")
    model_config("mnist-cnn", (1, 8, 8), 2, init="normal")  # a paper net may re-draw


def test_parse_model_name():
    assert parse_model_name("fc1") == ("fc1", None)
    assert parse_model_name("resnet18:16") == ("resnet18", 16)
    for text in ("fc1:wide", "fc1:-3", "fc1:2.5"):
        with pytest.raises(ModelError, match="must be a whole number"):
            parse_model_name(text)


def test_a_net_without_running_statistics_normalises_by_the_batch_in_eval_mode():
    """RAT's "w/o buffer": no buffers in the state dict, and in eval mode the output of a batch
    is the training-mode output (batch statistics), not that of the initial running ones."""
    config = model_config("resnet18", (3, 8, 8), 3, width=4, running_stats=False)
    model = build_model(config)
    keys = model.state_dict().keys()
    assert not any("running" in key or "num_batches" in key for key in keys)
    assert all(not bn.track_running_stats for bn in model.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    torch.testing.assert_close(eval_out, train_out, rtol=1e-6, atol=1e-6)
    tracked = build_model(model_config("resnet18", (3, 8, 8), 3, width=4)).eval()
    with torch.no_grad():
        assert not torch.allclose(tracked(x), tracked.train()(x), atol=1e-3)  # the check can fail
