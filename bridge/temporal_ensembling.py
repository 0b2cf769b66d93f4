"""TE: PGD-AT with a temporal-ensembling regulariser (Dong et al., "Exploring Memorization in
Adversarial Training", ICLR 2022), RAT's strongest baseline (RAT figs. 1, 5-9, table 1).

Every training example i keeps a moving average of the net's predictions on it,
z_i ← α z_i + (1 − α) softmax(f(x_i)) (α = 0.9, z_i = 0 at the start, clean inputs, eval mode),
updated each time its mini-batch is drawn from the ramp's start on, and the target
t_i = z_i / Σ_c z_ic. The loss on a mini-batch B of PGD examples x̃ is

    (1/|B|) Σ_i [ CE(f(x̃_i), y_i) + w(e) · (1/C) Σ_c (softmax(f(x̃_i))_c − t_ic)² ],

and PGD maximises the same loss (per example) to make x̃. The weight ramps up with the epoch e as
in temporal ensembling (Laine & Aila 2017): w(e) = w_max · exp(−5 (1 − (e − s)/(E − s))²) for
s ≤ e ≤ E, 0 before s and w_max after E; the authors' defaults are w_max = 300, s = 90, E = 150
of 200 epochs. Before s the loss is PGD-AT's.

The averages z live in every checkpoint, so a resumed run continues them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TE_MOMENTUM", "TE_WEIGHT", "TemporalEnsemble", "te_loss", "te_weight"]

TE_MOMENTUM = 0.9
TE_WEIGHT = 300.0
#: the authors' ramp, as a share of the epochs (90 and 150 of 200)
TE_RAMP = (0.45, 0.75)


def te_weight(epoch: int, start: int, end: int, maximum: float = TE_WEIGHT) -> float:
    """w(e): 0 before ``start``, the sigmoid-shaped ramp up to ``end``, ``maximum`` after it."""
    if epoch < start:
        return 0.0
    if epoch > end:
        return maximum
    phase = 1.0 - (epoch - start) / (end - start)
    return maximum * math.exp(-5.0 * phase * phase)


def te_loss(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, weight: float) -> torch.Tensor:
    """Σ over the batch of CE(f, y) + w·(1/C) Σ_c (softmax(f)_c − t_c)²: each example's own loss,
    so PGD's per-example gradients do not shrink with the batch (divide by |B| for the mean)."""
    loss = F.cross_entropy(logits, y, reduction="sum")
    if targets is None or weight == 0:
        return loss
    return loss + weight * ((F.softmax(logits, dim=1) - targets) ** 2).mean(dim=1).sum()


@dataclass
class TemporalEnsemble:
    """The per-example moving averages ``averages`` (N, C) of a training set and the ramp."""

    averages: torch.Tensor
    start: int
    end: int
    momentum: float = TE_MOMENTUM
    maximum: float = TE_WEIGHT

    @classmethod
    def empty(
        cls,
        n: int,
        classes: int,
        start: int,
        end: int,
        *,
        maximum: float = TE_WEIGHT,
        device: torch.device | str = "cpu",
    ) -> TemporalEnsemble:
        return cls(torch.zeros(n, classes, dtype=torch.float64, device=device), start, end, maximum=maximum)

    def weight(self, epoch: int) -> float:
        return te_weight(epoch, self.start, self.end, self.maximum)

    def active(self, epoch: int) -> bool:
        return epoch >= self.start

    @torch.no_grad()
    def update(self, index: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
        """Fold the batch's clean predictions into the averages of ``index``; the normalised
        targets t of those examples, in the logits' dtype."""
        probabilities = F.softmax(clean_logits.double(), dim=1)
        self.averages[index] = self.momentum * self.averages[index] + (1 - self.momentum) * probabilities
        averages = self.averages[index]
        return (averages / averages.sum(dim=1, keepdim=True)).to(clean_logits.dtype)
