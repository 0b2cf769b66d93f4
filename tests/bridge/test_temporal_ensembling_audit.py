"""Audit of ``bridge.temporal_ensembling`` (Dong et al. 2022; Laine & Aila's ramp) by numpy:

- w(e) on the authors' whole schedule (s = 90, E = 150 of 200) against the closed form
  w_max·exp(−5(1 − (e − s)/(E − s))²), 0 before s, w_max after E: continuous at E, non-decreasing;
- z_i ← α z_i + (1 − α) softmax(f(x_i)) over several updates of overlapping index sets, by a numpy
  recursion, and t = z / Σ_c z;
- the loss as a sum of per-example terms: any split of the batch adds up to the whole, and each
  example's term is CE + w·mean_c (p_c − t_c)² by numpy (float64, 1e-12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntkrobust.bridge.temporal_ensembling import TE_MOMENTUM, TE_RAMP, TE_WEIGHT, TemporalEnsemble, te_loss, te_weight


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_ramp_on_the_authors_schedule():
    assert (TE_MOMENTUM, TE_WEIGHT) == (0.9, 300.0) and TE_RAMP == (0.45, 0.75)  # 90 and 150 of 200
    start, end = round(TE_RAMP[0] * 200), round(TE_RAMP[1] * 200)
    assert (start, end) == (90, 150)
    weights = np.array([te_weight(e, start, end) for e in range(201)])
    epochs = np.arange(201)
    phase = 1.0 - (epochs - start) / (end - start)
    expected = np.where(epochs < start, 0.0, np.where(epochs > end, 300.0, 300.0 * np.exp(-5.0 * phase**2)))
    np.testing.assert_allclose(weights, expected, rtol=1e-14, atol=0)
    assert weights[89] == 0 and weights[90] == pytest.approx(300 * math.exp(-5), rel=1e-14)  # starts at s
    assert weights[120] == pytest.approx(300 * math.exp(-1.25), rel=1e-14)  # halfway
    assert weights[150] == weights[151] == 300.0 and np.all(np.diff(weights) >= 0)
    assert te_weight(120, start, end, maximum=30.0) == pytest.approx(30 * math.exp(-1.25), rel=1e-14)


def test_the_moving_averages_follow_the_numpy_recursion():
    rng = np.random.default_rng(0)
    ensemble = TemporalEnsemble.empty(6, 4, start=0, end=1)
    z = np.zeros((6, 4))
    for index in ([0, 1, 2], [2, 3], [0, 2, 5], [2]):  # example 2 updated four times, 4 never
        logits = rng.normal(0, 2, size=(len(index), 4))
        targets = ensemble.update(torch.as_tensor(index), torch.as_tensor(logits, dtype=torch.float32))
        z[index] = 0.9 * z[index] + 0.1 * _softmax(logits)
        np.testing.assert_allclose(ensemble.averages.numpy(), z, rtol=1e-6, atol=1e-12)  # float32 logits
        np.testing.assert_allclose(targets.double().numpy(), z[index] / z[index].sum(1, keepdims=True), rtol=1e-6)
        assert targets.dtype == torch.float32  # the logits' dtype
    # example 2: Σ_c z = 1 − 0.9⁴ (each update adds 0.1 of a distribution); 4 is still all zero
    assert ensemble.averages[2].sum().item() == pytest.approx(1 - 0.9**4, rel=1e-12)
    assert ensemble.averages[4].abs().sum().item() == 0.0
    assert ensemble.active(0) and not TemporalEnsemble.empty(2, 2, start=3, end=5).active(2)


def test_the_loss_is_a_sum_of_per_example_terms():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, size=(5, 3))
    y = np.array([0, 2, 1, 1, 0])
    t = _softmax(rng.normal(size=(5, 3)))
    p = _softmax(logits)
    per_example = -np.log(p[np.arange(5), y]) + 7.0 * ((p - t) ** 2).mean(1)
    as_t = (torch.as_tensor(logits), torch.as_tensor(y), torch.as_tensor(t))
    assert float(te_loss(*as_t, 7.0)) == pytest.approx(per_example.sum(), rel=1e-12)
    halves = [te_loss(*(a[s] for a in as_t), 7.0) for s in (slice(0, 2), slice(2, 5))]
    assert float(sum(halves)) == pytest.approx(per_example.sum(), rel=1e-12)
    # the regulariser's gradient pulls the prediction towards t: logits moved along −∇ lower it
    logits_t = as_t[0].clone().requires_grad_(True)
    regulariser = te_loss(logits_t, as_t[1], as_t[2], 7.0) - te_loss(logits_t, as_t[1], None, 7.0)
    (grad,) = torch.autograd.grad(regulariser, logits_t)
    moved = (logits_t - 1e-3 * grad).detach()
    after = te_loss(moved, as_t[1], as_t[2], 7.0) - te_loss(moved, as_t[1], None, 7.0)
    assert float(after) < float(regulariser.detach())
