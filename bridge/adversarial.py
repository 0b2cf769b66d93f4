"""The project's own FGSM / PGD (``attacks/``) driven by a torch net's loss gradient.

The attack algorithms are written once, backend-neutral; a torch net supplies
``∇ₓ CE(f(x), y)`` and the loop stays on the net's device. Used for AE-NTKs (kernels on the
net's own adversarial examples, RAT sec. 3), adversarial training and evaluation, and the net's
own white-box attack in transfer studies.

Outputs and labels, written once: a net with C ≥ 2 outputs predicts argmax f and its loss is the
softmax cross-entropy; a net with one output (a binary task trained on ±1 targets, like the
kernel machines of ``kernels.machine`` and the two-layer nets of TK supp. C) predicts index 1
where f > 0 and its loss is the binary cross-entropy softplus(−y f) with y = ±1 for index 1 / 0.

Shapes: x (B, C, H, W) in [0, 1] on the net's device; y (B,) int64 output indices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ntkrobust.attacks import NET_METHODS, AttackSpec, Norm, fgsm, pgd
from ntkrobust.bridge import distributed

LossGradient = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def input_gradient(model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LossGradient:
    """``(x, target) -> ∇ₓ loss(f(x), target)`` for a loss summed over the batch, so that each
    example's gradient is its own loss's (a mean would shrink it with the batch size)."""

    def gradient(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(loss(model(x), target), x)[0]

    return gradient


def classification_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_b of the cross-entropy of each example: softmax CE for C ≥ 2 outputs, softplus(−y f)
    with y = ±1 for one output (the loss of ``kernels.machine.loss_cotangent``)."""
    if logits.shape[1] == 1:
        sign = 2.0 * y.to(logits.dtype) - 1.0
        return F.softplus(-sign * logits[:, 0]).sum()
    return F.cross_entropy(logits, y, reduction="sum")


def cross_entropy_gradient(model: nn.Module) -> LossGradient:
    """``(x, y) -> ∇ₓ Σ_b CE(f(x_b), y_b)``: each example's own loss gradient."""
    return input_gradient(model, classification_loss)


def predicted_index(logits: torch.Tensor) -> torch.Tensor:
    """Output index predicted by logits (B, C): argmax, or f > 0 for one output."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


def in_batches(
    compute: Callable[[slice], torch.Tensor], out: torch.Tensor, *, batch_size: int, across_processes: bool = False
) -> torch.Tensor:
    """``out`` (zeros, one row per point) with ``compute(rows)`` at the rows of every batch of
    ``batch_size``; a batch's seed should come from ``rows.start``, so that its result depends on
    its rows alone. Under torchrun with ``across_processes`` each process computes its round-robin
    share of the batches and one all-reduce sums them into ``out`` (adding zeros is exact): every
    process holds every row, the same rows as one process computes."""
    starts = list(range(0, out.shape[0], batch_size))
    for start in distributed.share(starts) if across_processes else starts:
        rows = slice(start, start + batch_size)
        out[rows] = compute(rows)
    return distributed.all_reduce_sum(out) if across_processes else out


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 256, across_processes: bool = False
) -> torch.Tensor:
    """Predicted output indices (B,), in batches (``across_processes``: the batches split between the
    processes of a torchrun launch, every process gets all the predictions)."""
    return in_batches(
        lambda rows: predicted_index(model(x[rows])),
        torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
        batch_size=batch_size,
        across_processes=across_processes,
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> float:
    """Share of ``x`` that ``model`` classifies as ``y``."""
    return float((predict(model, x, batch_size=batch_size) == y).double().mean())


def adversarial_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str,
    eps: float,
    step: float | None = None,
    steps: int = 1,
    norm: Norm = "linf",
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    across_processes: bool = False,
) -> torch.Tensor:
    """The net's own white-box FGSM, or PGD (``step``, ``steps``, random start unless told
    otherwise), in batches, on the cross-entropy or on ``loss(logits, y)`` (summed over the
    batch); ``model`` should be in the mode it is evaluated in (eval mode, or frozen batch
    statistics). ``across_processes``: under torchrun the batches are split between the processes (the
    random start of the batch at row i is seeded by ``seed + i`` either way) and every process
    gets every example."""
    if method not in NET_METHODS:
        raise ValueError(f"unknown white-box method {method!r}: choose one of {', '.join(NET_METHODS)}")
    if method == "pgd" and step is None:
        raise ValueError("pgd needs a step size")
    gradient = cross_entropy_gradient(model) if loss is None else input_gradient(model, loss)

    def attacked(rows: slice) -> torch.Tensor:
        if method == "fgsm":
            return fgsm(gradient, x[rows], y[rows], eps=eps, norm=norm)
        assert step is not None
        return pgd(
            gradient, x[rows], y[rows], eps=eps, step=step, steps=steps, norm=norm, random_start=random_start,
            seed=seed + rows.start,
        )  # fmt: skip

    return in_batches(attacked, torch.zeros_like(x), batch_size=batch_size, across_processes=across_processes)


def attack_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: AttackSpec,
    *,
    batch_size: int = 256,
    across_processes: bool = False,
) -> torch.Tensor:
    """The white-box attack of ``spec`` (a method of ``attacks.NET_METHODS``) against ``model``
    (``across_processes``: see ``adversarial_examples``)."""
    return adversarial_examples(
        model,
        x,
        y,
        method=spec.method,
        eps=spec.eps,
        step=spec.step,
        steps=spec.steps,
        norm=spec.norm,
        random_start=spec.random_start,
        seed=spec.seed,
        batch_size=batch_size,
        across_processes=across_processes,
    )


def pgd_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    norm: Norm = "linf",
    seed: int = 0,
    batch_size: int = 256,
    across_processes: bool = False,
) -> torch.Tensor:
    """PGD with a random start (``attacks.pgd``) against ``model``, in batches (``across_processes``:
    see ``adversarial_examples``)."""
    return adversarial_examples(
        model,
        x,
        y,
        method="pgd",
        eps=eps,
        step=step,
        steps=steps,
        norm=norm,
        seed=seed,
        batch_size=batch_size,
        across_processes=across_processes,
    )
