"""Audit of ``bridge.initialisation`` (RAT app. B): every conv and linear weight drawn from the named
distribution with variance 2/fan_in, fan_in = in_channels x kernel area, biases zero.

Independent routes: scipy's Kolmogorov-Smirnov test against the exact CDF of each distribution
(N(0, 2/fan_in); N(0, σ²) cut at ±2σ with σ = √(2/fan_in)/0.8796; U(±√(6/fan_in))), on a conv layer
whose fan_in (in x kh x kw) differs from both in_channels and fan_out, so the fan is checked
too, and the truncated normal's constants recomputed from scipy. Seeded draws of ~200k weights;
a correct draw passes with p > 1e-3 (the seeds are fixed, so the test is deterministic), and every
mutation checked (fan_out, in_channels alone, ±3σ, no variance correction, a wrong bound) gives
p < 1e-30 there."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ntkrobust.bridge.initialisation import TRUNCATED_STD_CORRECTION, initialise

P_MIN = 1e-3  # KS p-value a correct draw must exceed (fixed seeds: deterministic)


def _conv() -> torch.nn.Conv2d:
    """fan_in = 16·5·3 = 240; in_channels 16 and fan_out 512·15 = 7680 differ from it."""
    return torch.nn.Conv2d(16, 512, (5, 3), bias=True)


def _distribution(name: str, fan_in: int) -> stats.rv_continuous:
    std = math.sqrt(2.0 / fan_in)
    if name == "normal":
        return stats.norm(0.0, std)
    if name == "uniform":
        bound = math.sqrt(6.0 / fan_in)
        return stats.uniform(-bound, 2 * bound)
    sigma = std / stats.truncnorm(-2, 2).std()  # scipy's constant, not the module's
    return stats.truncnorm(-2, 2, loc=0.0, scale=sigma)


def test_the_truncation_constant_is_the_std_of_a_standard_normal_cut_at_two():
    assert TRUNCATED_STD_CORRECTION == pytest.approx(stats.truncnorm(-2, 2).std(), rel=1e-14)


@pytest.mark.parametrize("name", ["normal", "truncated-normal", "uniform"])
def test_conv_weights_follow_the_distribution_of_variance_two_over_fan_in(name):
    layer = _conv()
    initialise(layer, name, torch.Generator().manual_seed(11))
    w = layer.weight.detach().double().numpy().ravel()
    assert w.size == 512 * 240
    reference = _distribution(name, fan_in=240)
    result = stats.kstest(w, reference.cdf)
    assert result.pvalue > P_MIN, (name, result)
    assert np.var(w) == pytest.approx(2.0 / 240, rel=0.02)  # 123k draws: ~0.4% standard error
    assert np.count_nonzero(layer.bias.detach().numpy()) == 0
    if name != "normal":  # bounded: nothing beyond the support, and the support is reached
        low, high = reference.support()
        assert w.min() >= low - 1e-7 and w.max() <= high + 1e-7
        assert w.max() > 0.99 * high and w.min() < 0.99 * low


@pytest.mark.parametrize("name", ["normal", "truncated-normal", "uniform"])
def test_every_layer_is_redrawn_with_its_own_fan_and_batchnorm_is_left_alone(name):
    """A conv - BatchNorm - linear net: each weight its own fan's variance, every bias zero (the
    last layer included), BatchNorm weight 1 and bias 0 untouched, and the draws a function of
    the generator's seed alone."""
    torch.manual_seed(0)  # the constructors' defaults: not what is checked
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.Flatten(), torch.nn.Linear(576, 300)
    )
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    initialise(model, name, torch.Generator().manual_seed(3))
    for layer, fan_in in ((model[0], 72), (model[3], 576)):
        w = layer.weight.detach().double().numpy().ravel()
        assert stats.kstest(w, _distribution(name, fan_in).cdf).pvalue > P_MIN, (name, fan_in)
        assert np.count_nonzero(layer.bias.detach().numpy()) == 0
    assert torch.equal(model[1].weight, torch.ones(64)) and torch.equal(model[1].bias, torch.zeros(64))
    assert torch.equal(model[1].running_mean, torch.full((64,), 0.5))
    again = torch.nn.Sequential(
        torch.nn.Conv2d(8, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.Flatten(), torch.nn.Linear(576, 300)
    )
    initialise(again, name, torch.Generator().manual_seed(3))
    for index in (0, 3):  # the same generator seed, the same draws
        assert torch.equal(again[index].weight, model[index].weight)
    other = initialise(torch.nn.Linear(576, 300), name, torch.Generator().manual_seed(4))
    assert not torch.equal(other.weight, model[3].weight)


def test_the_three_distributions_differ_in_shape_only():
    """Same variance, different shape: each sample is rejected by the other two's CDFs (so the
    KS tests above do tell them apart at this size)."""
    samples = {}
    for name in ("normal", "truncated-normal", "uniform"):
        layer = _conv()
        initialise(layer, name, torch.Generator().manual_seed(5))
        samples[name] = layer.weight.detach().double().numpy().ravel()
    for name, w in samples.items():
        for other in samples:
            p = stats.kstest(w, _distribution(other, 240).cdf).pvalue
            assert (p > P_MIN) == (other == name), (name, other, p)
