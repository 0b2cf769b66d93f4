"""GlobalBatchNorm's own arithmetic against torch's BatchNorm (float64): the combined moments of
shares give the batch's mean and variance, and the shared path the normalisation, its gradients
and the running statistics torch gives. Here in one process, the gather over the processes
replaced by this process's one row (conftest's ``one_process_sharing``); the two-process run
against one process is in test_distributed.py."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from ntkrobust.bridge import global_batchnorm
from ntkrobust.bridge.global_batchnorm import GlobalBatchNorm, combined_moments, convert, local_moments, shared_batch


@pytest.mark.parametrize("shape", [(7, 3), (9, 3, 4, 4), (6, 3, 2, 3, 2)])
def test_the_moments_of_shares_combine_to_the_batchs(shape: tuple[int, ...]) -> None:
    """Rows cut into shares (one of them empty, as a process gets when a batch has fewer rows
    than processes) and combined: the mean and biased variance of the whole batch."""
    generator = torch.Generator().manual_seed(0)
    x = 5.0 + 2.0 * torch.randn(shape, generator=generator, dtype=torch.float64)
    variance, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], unbiased=False)
    cuts = [0, 2, 2, shape[0] // 2 + 1, shape[0]]
    rows = torch.stack([local_moments(x[a:b]) for a, b in itertools.pairwise(cuts)])
    found_mean, found_variance, n = combined_moments(rows)
    torch.testing.assert_close(found_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(found_variance, variance, rtol=1e-12, atol=1e-12)
    assert float(n) == x.numel() / 3


def test_float32_moments_do_not_cancel() -> None:
    """A channel whose mean is 10⁴ standard deviations from zero: float32 sums of x and x² lose
    every digit of the variance there; the combination of per-share deviations keeps it."""
    generator = torch.Generator().manual_seed(1)
    x = 100.0 + 0.01 * torch.randn(64, 2, 4, 4, generator=generator, dtype=torch.float64)
    variance = torch.var(x, dim=[0, 2, 3], unbiased=False)
    single = x.float()
    rows = torch.stack([local_moments(single[:32]), local_moments(single[32:])])
    torch.testing.assert_close(combined_moments(rows)[1].double(), variance, rtol=1e-4, atol=0.0)
    sums = single.sum([0, 2, 3]) / 1024, (single * single).sum([0, 2, 3]) / 1024
    assert not torch.allclose((sums[1] - sums[0] ** 2).double(), variance, rtol=0.1)  # the naive route


@pytest.mark.usefixtures("one_process_sharing")
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_the_shared_path_is_torchs_batchnorm(kind: str, momentum: float | None) -> None:
    """Output, input/weight/bias gradients and running statistics over three training steps."""
    generator = torch.Generator().manual_seed(1)
    reference = nn.BatchNorm1d(3, momentum=momentum) if kind == "1d" else nn.BatchNorm2d(3, momentum=momentum)
    reference = reference.double()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=generator)
        reference.bias.uniform_(-0.5, 0.5, generator=generator)
    layer = convert(copy.deepcopy(reference))
    assert isinstance(layer, GlobalBatchNorm)
    shape = (6, 3) if kind == "1d" else (6, 3, 4, 4)
    for step in range(3):
        x = (1.0 + step + torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_(True)
        weights = torch.randn(shape, generator=generator, dtype=torch.float64)
        outputs, gradients = [], []
        for net in (reference, layer):
            with shared_batch():
                out = net(x)
            outputs.append(out)
            gradients.append(torch.autograd.grad((out * weights).sum(), [x, net.weight, net.bias]))
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-12, atol=1e-12)
        for found, expected in zip(gradients[1], gradients[0], strict=True):
            torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(layer, name), getattr(reference, name), rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("one_process_sharing")
def test_a_layer_without_running_statistics_shares_in_eval_mode_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A RAT "w/o buffer" layer normalises with batch statistics in every mode, so the attacks of
    the training step (eval mode) take them over the shared batch as well."""
    reference = nn.BatchNorm2d(3, track_running_stats=False).double().eval()
    layer = convert(copy.deepcopy(reference)).eval()
    calls: list[torch.Tensor] = []
    monkeypatch.setattr(
        global_batchnorm, "_gather_over_processes", lambda local: calls.append(local) or local.unsqueeze(0)
    )
    x = torch.randn(5, 3, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with shared_batch():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-12, atol=1e-12)
    assert len(calls) == 1


def test_outside_a_shared_batch_it_is_a_plain_batchnorm() -> None:
    """No sharing outside ``shared_batch()`` nor in one process (evaluation with batch statistics
    holds whole batches per process); and the state dict keeps torch's keys."""
    reference = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)).double()
    net = convert(copy.deepcopy(reference))
    assert isinstance(net[1], GlobalBatchNorm)
    assert net.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with shared_batch():  # one process: sharing() is off
        assert not global_batchnorm.sharing()
        torch.testing.assert_close(net(x), reference(x), rtol=1e-12, atol=1e-12)
    for a, b in zip(net.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_linearized_nets_frozen_batchnorm_keeps_its_buffers() -> None:
    """``LinearizedNetwork`` holds the parent's weights, BatchNorm's included, as buffers: they stay
    buffers (``train --linearize-from`` under torchrun converted none before: a TypeError), the
    state dict and θ are unchanged, and so is the function."""
    from ntkrobust.bridge.linearized import LinearizedNetwork

    parent = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(27, 2)).double()
    reference = LinearizedNetwork(parent)
    net = convert(copy.deepcopy(reference))
    layer = net.parent[1]
    assert isinstance(layer, GlobalBatchNorm) and "weight" in layer._buffers and "bias" in layer._buffers
    assert dict(net.named_parameters()).keys() == dict(reference.named_parameters()).keys()
    assert net.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(net(x), reference(x), rtol=1e-12, atol=1e-12)
