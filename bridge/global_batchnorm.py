"""BatchNorm over the global batch of distributed training, the same on gloo (CPUs) and NCCL (GPUs).

Under torchrun every process takes a contiguous share of each mini-batch
(``bridge.training.train_epoch``). A BatchNorm layer that normalises with batch statistics
(train mode, or a RAT "w/o buffer" layer in any mode) must then take them over the whole batch,
or the processes' updates are not those of one process. ``GlobalBatchNorm`` does so inside
``shared_batch()``: each process sums its rows' shifted values and squares per channel,

    s₁ = Σ (x − K),   s₂ = Σ (x − K)²,   n = rows × spatial positions,

one differentiable all-reduce adds (s₁, s₂, n) over the processes, and

    μ = K + s₁/N,   σ² = s₂/N − (s₁/N)²

are the batch's mean and biased variance, exactly what one process computes from all the rows
(up to the order of the sums). K is the layer's running mean, a shift that keeps the difference
of squares away from cancellation once the running mean tracks the data (zero for a layer
without running statistics). The all-reduce's backward is an all-reduce of the gradients, so the
gradient each process takes through μ and σ² includes every process's loss, as one process's
would: training and the attacks of the training step (which, for a "w/o buffer" layer, run on
batch statistics) are those of one process (tested against nn.BatchNorm in float64, 1e-10).
Running statistics are updated with the global μ and the unbiased σ²·N/(N − 1), as torch does.

Outside ``shared_batch()`` (evaluation with batch statistics, kernels, TE's clean predictions,
anything where each process holds whole batches of its own) the layer is a plain BatchNorm. Why
not ``nn.SyncBatchNorm``: it refuses CPU tensors, so no test on this project's CPUs could run it,
and it synchronises in every train-mode forward of a distributed run, including the per-process
evaluation with batch statistics (``bridge.tracking.batch_statistics``), where the processes hold
different batches, and different numbers of them: it would mix their statistics or wait forever.

Shapes: x (B, C, ...) for every BatchNorm1d/2d/3d.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ntkrobust.bridge import distributed

__all__ = ["GlobalBatchNorm", "batch_moments", "convert", "shared_batch", "sharing"]

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


def _sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes, differentiably (its backward sums the gradients)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)


def batch_moments(
    x: torch.Tensor, shift: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (C,), biased variance (C,), count N ()) of x over every axis but the channel axis 1,
    from the sums of this process's rows shifted by ``shift`` (C,), added over the processes by
    ``reduce`` (none: this process's rows alone). N stays on the device: no host read per layer."""
    axes = [0, *range(2, x.dim())]
    centred = x - shift.view(1, -1, *([1] * (x.dim() - 2)))
    count = torch.full((1,), x.numel() // max(x.shape[1], 1), dtype=x.dtype, device=x.device)
    sums = torch.cat([centred.sum(axes), (centred * centred).sum(axes), count])
    if reduce is not None:
        sums = reduce(sums)
    channels, n = x.shape[1], sums[-1]
    mean_shift = sums[:channels] / n
    variance = sums[channels : 2 * channels] / n - mean_shift * mean_shift
    return shift + mean_shift, variance.clamp_min(0.0), n


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
        shift = torch.zeros(self.num_features, dtype=input.dtype, device=input.device)
        if self.running_mean is not None:
            shift = self.running_mean.detach().clone()  # cloned: updated in place below
        mean, variance, n = batch_moments(input, shift, _sum_over_processes)
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
        m the momentum or, without one, 1/batches (a cumulative average)."""
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = variance * n / (n - 1).clamp_min(1.0)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm layer replaced (in place where it is nested) by a
    ``GlobalBatchNorm`` holding the same parameters and buffers; other modules untouched."""
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, GlobalBatchNorm):
        layer = GlobalBatchNorm(
            model.num_features,
            eps=model.eps,
            momentum=model.momentum,
            affine=model.affine,
            track_running_stats=model.track_running_stats,
        )
        layer.weight, layer.bias = model.weight, model.bias
        layer.running_mean, layer.running_var = model.running_mean, model.running_var
        layer.num_batches_tracked = model.num_batches_tracked
        layer.train(model.training)
        return layer
    for name, child in model.named_children():
        model.add_module(name, convert(child))
    return model
