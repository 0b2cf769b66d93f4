"""BatchNorm over the global batch of distributed training, the same on gloo (CPUs) and NCCL (GPUs).

Under torchrun every process takes a contiguous share of each mini-batch
(``bridge.training.train_epoch``). A BatchNorm layer that normalises with batch statistics
(train mode, or a RAT "w/o buffer" layer in any mode) must then take them over the whole batch,
or the processes' updates are not those of one process. ``GlobalBatchNorm`` does so inside
``shared_batch()``: each process takes its rows' count, mean and sum of squared deviations per
channel (two passes over its own rows: the mean, then the deviations from it),

    n_r = rows × spatial positions,   m_r = Σ x / n_r,   M_r = Σ (x − m_r)²,

one differentiable all-reduce of a (processes, 2C + 1) matrix, each process's row its own and the
rest zeros, gives every process every row, and Chan et al.'s combination of moments

    N = Σ n_r,   μ = Σ n_r m_r / N,   σ² = (Σ M_r + Σ n_r (m_r − μ)²) / N

gives the batch's mean and biased variance, what one process computes from all the rows up to
rounding. (Sums of x and x², or of x shifted by the running mean, would need no per-process
rows, but their difference of squares cancels in float32 wherever the mean is far from the shift,
as it is at the first steps: tests/bridge/test_global_batchnorm.py.) The all-reduce's backward
is an all-reduce of the gradients, so the gradient each process takes through μ and σ² includes
every process's loss, as one process's would: training and the attacks of the training step
(which, for a "w/o buffer" layer, run on batch statistics) are those of one process (tested
against nn.BatchNorm in float64, 1e-10).
Running statistics are updated with the global μ and the unbiased σ²·N/(N − 1), as torch does.

Outside ``shared_batch()`` (evaluation with batch statistics, kernels, TE's clean predictions,
anything where each process holds whole batches of its own) the layer is a plain BatchNorm. Why
not ``nn.SyncBatchNorm``: it refuses CPU tensors, so no test on this project's CPUs could run it,
and it synchronises in every train-mode forward of a distributed run, including the per-process
evaluation with batch statistics (``bridge.tracking.batch_statistics``), where the processes hold
different batches, and different numbers of them: it would mix their statistics, or their
collectives would not match (that behaviour, tried here, aborts the evaluation test).

Shapes: x (B, C, ...) for every BatchNorm1d/2d/3d.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

from ntkrobust.bridge import distributed

__all__ = ["GlobalBatchNorm", "combined_moments", "convert", "local_moments", "shared_batch", "sharing"]

_SHARED = contextvars.ContextVar("ntkrobust_shared_batch", default=False)


@contextlib.contextmanager
def shared_batch(shared: bool = True) -> Iterator[None]:
    """Within: the rows a process feeds its net are its share of one batch spread over the
    processes, so every ``GlobalBatchNorm`` on batch statistics takes them over all the rows."""
    token = _SHARED.set(shared)
    try:
        yield
    finally:
        _SHARED.reset(token)


def sharing() -> bool:
    """Whether this call is inside ``shared_batch()`` of a process group of several processes."""
    return _SHARED.get() and distributed.active()


def _gather_over_processes(local: torch.Tensor) -> torch.Tensor:
    """(processes, *local.shape): every process's ``local``, in rank order, differentiably: one
    all-reduce (whose backward sums the gradients over the processes) of rows that are zero but
    for each process's own, the collective that gloo and NCCL both have."""
    own = torch.zeros(distributed.world_size(), dtype=local.dtype, device=local.device)
    own[distributed.rank()] = 1.0
    return distributed.summed_over_processes(own.view(-1, *([1] * local.dim())) * local.unsqueeze(0))


def local_moments(x: torch.Tensor) -> torch.Tensor:
    """(2C + 1,): this process's count n, per-channel means m (C,) and sums of squared deviations
    M (C,) of x over every axis but the channel axis 1 (zeros for no rows)."""
    axes = [0, *range(2, x.dim())]
    count = torch.full((1,), x.numel() // max(x.shape[1], 1), dtype=x.dtype, device=x.device)
    mean = x.sum(axes) / count.clamp_min(1.0)
    deviations = x - mean.view(1, -1, *([1] * (x.dim() - 2)))
    return torch.cat([count, mean, (deviations * deviations).sum(axes)])


def combined_moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (C,), biased variance (C,), count N ()) of the union of the row sets whose
    ``local_moments`` are the rows of ``rows`` (R, 2C + 1) (Chan et al.'s combination).
    Everything stays on the device: no host read per layer."""
    channels = (rows.shape[1] - 1) // 2
    counts, means, squares = rows[:, :1], rows[:, 1 : channels + 1], rows[:, channels + 1 :]
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    spread = means - mean
    return mean, (squares.sum(0) + (counts * spread * spread).sum(0)) / total, total


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm layer (any of 1d/2d/3d) that, inside ``shared_batch()`` of a distributed run,
    normalises with the statistics of the rows of every process; a plain BatchNorm otherwise.
    Built by ``convert``, with the parameters and buffers of the layer it replaces (the same
    state-dict keys, so checkpoints load into the unconverted net)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        batch_statistics = self.training or self.running_mean is None
        if not (batch_statistics and sharing()):
            return super().forward(input)
        self._check_input_dim(input)
        mean, variance, n = combined_moments(_gather_over_processes(local_moments(input)))
        if self.training and self.track_running_stats and self.running_mean is not None:
            self._update_running_statistics(mean.detach(), variance.detach(), n)
        view = (1, -1, *([1] * (input.dim() - 2)))
        out = (input - mean.view(view)) * torch.rsqrt(variance.view(view) + self.eps)
        if self.affine:
            out = out * self.weight.view(view) + self.bias.view(view)
        return out

    @torch.no_grad()
    def _update_running_statistics(self, mean: torch.Tensor, variance: torch.Tensor, n: torch.Tensor) -> None:
        """torch's update: running ← (1 − m)·running + m·batch, the variance unbiased (N/(N − 1)),
        m the momentum or, without one, 1/batches (a cumulative average). No host read: torch's
        own layer takes ``float(num_batches_tracked)`` for m, a device sync per layer and step on
        a GPU; here m stays a tensor on the device."""
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        dtype = self.running_mean.dtype
        factor: float | torch.Tensor = (
            self.num_batches_tracked.to(dtype).reciprocal() if self.momentum is None else self.momentum
        )
        unbiased = variance * n / (n - 1).clamp_min(1.0)
        self.running_mean.lerp_(mean.to(dtype), factor)  # (1 − m)·running + m·batch
        self.running_var.lerp_(unbiased.to(dtype), factor)


def convert(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm layer replaced (in place where it is nested) by a
    ``GlobalBatchNorm`` holding the same parameters and buffers (a weight and bias held as
    buffers, as ``LinearizedNetwork`` holds them, stay buffers); other modules untouched."""
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, GlobalBatchNorm):
        layer = GlobalBatchNorm(
            model.num_features,
            eps=model.eps,
            momentum=model.momentum,
            affine=model.affine,
            track_running_stats=model.track_running_stats,
        )
        for name in ("weight", "bias"):
            if name in model._parameters:
                setattr(layer, name, model._parameters[name])
            else:  # held as a buffer (a linearized net's frozen θt): a buffer here too
                del layer._parameters[name]
                layer.register_buffer(name, model._buffers[name])
        layer.running_mean, layer.running_var = model.running_mean, model.running_var
        layer.num_batches_tracked = model.num_batches_tracked
        layer.train(model.training)
        return layer
    for name, child in model.named_children():
        model.add_module(name, convert(child))
    return model
