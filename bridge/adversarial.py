"""The project's own FGSM / PGD (``attacks/``) driven by a torch net's loss gradient.

The attack algorithms are written once, backend-neutral; a torch net supplies
``∇ₓ CE(f(x), y)`` and the loop stays on the net's device. Used for AE-NTKs (kernels on the
net's own adversarial examples, RAT sec. 3) and, later, adversarial training and evaluation.

Shapes: x (B, C, H, W) in [0, 1] on the net's device; y (B,) int64 output indices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attacks import Norm, pgd

LossGradient = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def input_gradient(model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LossGradient:
    """``(x, target) -> ∇ₓ loss(f(x), target)`` for a loss summed over the batch, so that each
    example's gradient is its own loss's (a mean would shrink it with the batch size)."""

    def gradient(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(loss(model(x), target), x)[0]

    return gradient


def cross_entropy_gradient(model: nn.Module) -> LossGradient:
    """``(x, y) -> ∇ₓ Σ_b CE(f(x_b), y_b)``: each example's own loss gradient."""
    return input_gradient(model, lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Predicted output indices (B,), in batches."""
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


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
) -> torch.Tensor:
    """PGD with a random start (``attacks.pgd``) against ``model``, in batches; ``model`` should
    be in the mode it is evaluated in (eval mode, or frozen batch statistics)."""
    gradient = cross_entropy_gradient(model)
    parts = []
    for i in range(0, x.shape[0], batch_size):
        batch = slice(i, i + batch_size)
        parts.append(pgd(gradient, x[batch], y[batch], eps=eps, step=step, steps=steps, norm=norm, seed=seed + i))
    return torch.cat(parts)
