"""Audit of ``bridge.linearized`` (LOO sec. 2, 4) through routes the module does not take.

- f_lin = f_θt + J_θt(θ − θt) and f_cen = J_θt(θ − θt) against an explicit float64 Jacobian from
  ``torch.func.jacrev`` (reverse mode, one call for all rows) at θt, for a random θ − θt;
- Taylor's theorem: f_θ(x) − f_lin(x) = O(|θ − θt|²), so halving the step divides the gap by ~4
  (a linearization anchored anywhere but θt, or missing f0, leaves a gap of first order);
- f_cs = f_θ − f_θt against two plain copies of the net evaluated by hand, BatchNorm frozen or
  not, also before any ``train()``/``eval()`` call on the wrapper;
- LOO's relative magnitude mean_i |Δf_i|² / |f0_i|² by numpy from the explicit J.
Tolerances: 1e-10 relative to the largest value (float64, different summation orders)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from ntkrobust.bridge.linearized import CenteredStandardNetwork, LinearizedNetwork, relative_magnitude
from ntkrobust.bridge.models import build_model, model_config

TOL = 1e-10


def _parent(name: str) -> torch.nn.Module:
    """A float64 net in eval mode; a ResNet's BatchNorm given non-trivial running statistics."""
    shape = (3, 6, 6) if name == "resnet18" else (1, 6, 6)
    model = build_model(model_config(name, shape, 3, width=2 if name == "resnet18" else 6, seed=7)).double()
    with torch.no_grad():
        model.train()
        model(torch.rand(8, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3)
    return model.eval()


def _x(parent: torch.nn.Module, n: int, seed: int = 2) -> torch.Tensor:
    channels = next((m.in_channels for m in parent.modules() if isinstance(m, torch.nn.Conv2d)), 1)
    return torch.rand(n, channels, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _jacobian(parent: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B·C, P) at the parent's parameters, columns in its parameter order."""
    params = {k: v.detach() for k, v in parent.named_parameters()}
    jac = jacrev(lambda p: functional_call(parent, p, (x,)))(params)
    return torch.cat([j.reshape(x.shape[0] * 3, -1) for j in jac.values()], dim=1)


def _direction(parent: torch.nn.Module, seed: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in parent.parameters()]


def _set_theta(model: LinearizedNetwork, parent: torch.nn.Module, step: list[torch.Tensor], scale: float) -> None:
    with torch.no_grad():
        for theta, anchor, d in zip(model.parameters(), parent.parameters(), step, strict=True):
            theta.copy_(anchor + scale * d)


def _moved(parent: torch.nn.Module, step: list[torch.Tensor], scale: float) -> torch.nn.Module:
    net = copy.deepcopy(parent)
    with torch.no_grad():
        for p, d in zip(net.parameters(), step, strict=True):
            p.add_(scale * d)
    return net.eval()


def _close(found: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    scale = float(expected.detach().abs().max())
    gap = float((found - expected).detach().abs().max())
    assert gap <= tol * scale, gap / scale


@pytest.mark.parametrize("name", ["fc1", "mnist-cnn", "resnet18"])
def test_linearized_and_centered_outputs_are_f0_plus_j_times_the_shift(name):
    parent = _parent(name)
    x = _x(parent, 3)
    step = _direction(parent)
    jacobian = _jacobian(parent, x)
    shift = torch.cat([0.05 * d.reshape(-1) for d in step])
    expected_delta = (jacobian @ shift).reshape(3, 3)
    f0 = parent(x).detach()
    for centered in (False, True):
        model = LinearizedNetwork(parent, centered=centered)
        _set_theta(model, parent, step, 0.05)
        got_f0, delta = model.components(x)
        _close(got_f0, f0)
        _close(delta, expected_delta)
        _close(model(x), expected_delta if centered else f0 + expected_delta)


def _smooth() -> torch.nn.Module:
    """A smooth net (tanh, BatchNorm on running statistics): Taylor's remainder is exactly second
    order, where ReLU kinks and max-pooling (the registry's CNNs) blur it at small steps."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3),
    ).double()  # fmt: skip
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("name", ["fc1", "smooth"])
def test_the_gap_to_the_true_network_is_second_order_in_the_step(name):
    """|f_{θt+εd} − f_lin| / ε² stays put as ε halves (ratio of gaps 4 ± 0.6): f_lin is the
    tangent at θt, not at θ (ratio 2), and carries f0 (ratio 1)."""
    parent = _parent(name) if name == "fc1" else _smooth()
    x = _x(parent, 4)
    step = _direction(parent, seed=5)
    model = LinearizedNetwork(parent)
    gaps = []
    for eps in (0.02, 0.01, 0.005):
        _set_theta(model, parent, step, eps)
        truth = _moved(parent, step, eps)(x)
        gaps.append(float((truth - model(x)).detach().abs().max()))
    ratios = [gaps[0] / gaps[1], gaps[1] / gaps[2]]
    assert all(3.4 < r < 4.6 for r in ratios), (gaps, ratios)
    assert gaps[0] > 1e-9  # the net is not linear in θ: the gap is measurable


def test_relative_magnitude_from_the_explicit_jacobian():
    """mean_i |J_i d|² / |f0_i|² by numpy, batches that do not divide the 7 examples."""
    parent = _parent("mnist-cnn")
    x = _x(parent, 7)
    step = _direction(parent, seed=9)
    model = LinearizedNetwork(parent)
    _set_theta(model, parent, step, 0.1)
    delta = (_jacobian(parent, x) @ torch.cat([0.1 * d.reshape(-1) for d in step])).reshape(7, 3).numpy()
    f0 = parent(x).detach().numpy()
    expected = float(np.mean((delta**2).sum(1) / (f0**2).sum(1)))
    for batch_size in (1, 3, 7, 100):
        assert relative_magnitude(model, x, batch_size=batch_size) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("parent_mode", ["eval", "train"])
@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_the_centered_standard_network_is_the_trained_net_minus_the_spawn(batchnorm, parent_mode):
    """f_cs = f_θ − f_θt by hand with two plain copies: the spawn always on its running
    statistics and never updated; the trained net's BatchNorm on running statistics ("frozen")
    or on the batch's in train mode ("train"); zero at θ = θt in eval mode, and, for "frozen", in
    train mode too, also straight after construction (no train()/eval() call yet)."""
    parent = _parent("resnet18")
    if parent_mode == "train":
        parent.train()
    x = _x(parent, 6)
    spawn_state = {k: v.clone() for k, v in parent.state_dict().items()}
    net = CenteredStandardNetwork(parent, batchnorm=batchnorm)
    spawn = copy.deepcopy(parent).eval()
    if batchnorm == "frozen":  # straight after construction
        assert float(net(x).detach().abs().max()) == 0.0
    assert all(torch.equal(v, spawn_state[k]) for k, v in net.spawn.state_dict().items())  # never updated
    step = _direction(parent, seed=4)
    with torch.no_grad():
        for p, d in zip(net.network.parameters(), step, strict=True):
            p.add_(0.1 * d)
    trained = _moved(parent, step, 0.1)
    net.eval()
    _close(net(x), trained(x) - spawn(x))
    net.train()
    expected = (trained if batchnorm == "frozen" else copy.deepcopy(trained).train())(x) - spawn(x)
    _close(net(x), expected)
    assert all(torch.equal(v, spawn_state[k]) for k, v in net.spawn.state_dict().items())
