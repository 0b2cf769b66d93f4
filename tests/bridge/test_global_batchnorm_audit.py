"""Audit of ``bridge.global_batchnorm`` by routes it does not take:

- Chan's combination against numpy's two-pass variance and a Welford pass over the whole batch,
  on shares with far-apart means (the between-groups term Σ n_r (m_r − μ)² is most of σ²),
  unequal and empty shares (float64, 1e-12 relative);
- the gather over processes with a fake three-process group (rank, world size and an all-reduce
  that sums what the three processes contribute): each process's row lands at its own rank;
- ``convert`` keeps every setting of the layer it replaces (eps, momentum, affine, tracking), and
  the shared path then normalises with that eps and updates the running statistics with numpy's
  unbiased variance (ddof=1)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from ntkrobust.bridge import distributed, global_batchnorm
from ntkrobust.bridge.global_batchnorm import GlobalBatchNorm, combined_moments, convert, local_moments, shared_batch


def _welford(values: np.ndarray) -> tuple[float, float]:
    """Mean and biased variance of a 1-d array by Welford's one-pass update."""
    mean, m2 = 0.0, 0.0
    for k, v in enumerate(values, start=1):
        delta = v - mean
        mean += delta / k
        m2 += delta * (v - mean)
    return mean, m2 / len(values)


def test_chans_combination_is_the_two_pass_and_welford_variance_of_the_batch():
    rng = np.random.default_rng(0)
    # shares of 1, 0, 5 and 2 rows of (B, C=2, 3, 2) images, each share far from the others' mean
    shares = [rng.normal(loc, 0.3, size=(rows, 2, 3, 2)) for loc, rows in ((-4.0, 1), (0.0, 0), (3.0, 5), (10.0, 2))]
    x = np.concatenate(shares)
    rows = torch.stack([local_moments(torch.as_tensor(s)) for s in shares])
    mean, variance, n = combined_moments(rows)
    assert float(n) == x.shape[0] * 6
    for c in range(2):
        values = x[:, c].reshape(-1)
        two_pass = np.mean((values - values.mean()) ** 2)
        w_mean, w_var = _welford(values)
        assert float(mean[c]) == pytest.approx(values.mean(), rel=1e-12)
        assert float(variance[c]) == pytest.approx(two_pass, rel=1e-12)
        assert w_mean == pytest.approx(values.mean(), rel=1e-12) and w_var == pytest.approx(two_pass, rel=1e-12)
        within = sum(np.sum((s[:, c] - s[:, c].mean()) ** 2) for s in shares if len(s)) / len(values)
        assert two_pass > 10 * within  # the between-groups term dominates: dropping it shows


def test_local_moments_of_no_rows_are_zeros_and_of_rows_count_mean_and_squares():
    empty = local_moments(torch.zeros(0, 3, 2, 2, dtype=torch.float64))
    assert torch.equal(empty, torch.zeros(7, dtype=torch.float64))
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 2, 2) ** 1.5
    found = local_moments(torch.as_tensor(x)).numpy()
    per_channel = x.transpose(1, 0, 2, 3).reshape(3, -1)
    expected = [8.0, *per_channel.mean(1), *((per_channel - per_channel.mean(1, keepdims=True)) ** 2).sum(1)]
    np.testing.assert_allclose(found, expected, rtol=1e-12)


def test_every_process_row_lands_at_its_rank(monkeypatch):
    """Three fake processes: each contributes ``_gather_over_processes`` of its own moments, the
    all-reduce sums the three contributions; the result must be the three rows in rank order
    (a row at the wrong rank would mix or drop processes' statistics)."""
    locals_ = [torch.full((5,), float(r + 1), dtype=torch.float64) * torch.arange(1, 6) for r in range(3)]
    contributions = []
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "summed_over_processes", lambda t: t)  # one process's share of the sum
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        contributions.append(global_batchnorm._gather_over_processes(locals_[r]))
    gathered = sum(contributions)
    assert gathered.shape == (3, 5)
    torch.testing.assert_close(gathered, torch.stack(locals_), rtol=0, atol=0)
    # differentiable: the gradient of row r reaches process r's moments only
    local = locals_[1].clone().requires_grad_(True)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    weights = torch.arange(15, dtype=torch.float64).reshape(3, 5)
    (grad,) = torch.autograd.grad((global_batchnorm._gather_over_processes(local) * weights).sum(), local)
    torch.testing.assert_close(grad, weights[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "settings",
    [
        {"eps": 0.5, "momentum": 0.3},
        {"eps": 1e-3, "momentum": None},
        {"eps": 0.2, "affine": False},
        {"eps": 0.1, "track_running_stats": False},
    ],
)
def test_convert_keeps_the_layers_settings(settings):
    reference = nn.BatchNorm2d(3, **settings).double()
    net = convert(nn.Sequential(copy.deepcopy(reference)))
    layer = net[0]
    assert isinstance(layer, GlobalBatchNorm)
    for name in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
        assert getattr(layer, name) == getattr(reference, name), name


@pytest.mark.usefixtures("one_process_sharing")
def test_the_shared_path_normalises_with_the_layers_eps_and_numpys_unbiased_variance():
    """ε = 0.5 (large, so its use shows), momentum 0.3: out = (x − μ)/√(σ² + ε)·w + b with the
    biased σ², running_var ← 0.7·1 + 0.3·σ²·N/(N − 1), all by numpy."""
    layer = convert(nn.BatchNorm2d(2, eps=0.5, momentum=0.3).double())
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([2.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.5, 0.25]))
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(3, 2, 2, 2))
    layer.train()
    with shared_batch():
        out = layer(torch.as_tensor(x)).detach().numpy()
    for c, (w, b) in enumerate(((2.0, 0.5), (-1.0, 0.25))):
        values = x[:, c]
        expected = (values - values.mean()) / np.sqrt(values.var() + 0.5) * w + b
        np.testing.assert_allclose(out[:, c], expected, rtol=1e-12)
        assert float(layer.running_mean[c]) == pytest.approx(0.3 * values.mean(), rel=1e-12)
        assert float(layer.running_var[c]) == pytest.approx(0.7 + 0.3 * values.var(ddof=1), rel=1e-12)
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("cuts", [(0, 1, 4, 4, 9), (0, 9)])
def test_chans_combination_in_float32_stays_within_float32_rounding(cuts):
    """float32 shares of a batch with mean 50 and spread 1: the combined variance within 1e-5
    (relative) of float64's, whatever the cut."""
    x = 50.0 + torch.randn(9, 2, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    rows = torch.stack([local_moments(x.float()[a:b]) for a, b in itertools.pairwise(cuts)])
    _, variance, _ = combined_moments(rows)
    expected = x.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(variance.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.usefixtures("one_process_sharing")
def test_without_momentum_the_running_statistics_are_the_plain_average_of_the_batches():
    """momentum=None: torch's cumulative average, running = (1/k)·Σ over the k batches so far of
    the batch mean and unbiased variance (numpy, ddof=1), from the initial 0 and 1 dropped."""
    layer = convert(nn.BatchNorm1d(2, momentum=None).double()).train()
    rng = np.random.default_rng(3)
    batches = [rng.normal(loc, 2.0, size=(5, 2)) for loc in (1.0, -3.0, 4.0)]
    for k, x in enumerate(batches, start=1):
        with shared_batch():
            layer(torch.as_tensor(x))
        seen = np.stack(batches[:k])
        np.testing.assert_allclose(layer.running_mean.numpy(), seen.mean(1).mean(0), rtol=1e-12)
        np.testing.assert_allclose(layer.running_var.numpy(), seen.var(1, ddof=1).mean(0), rtol=1e-12)
