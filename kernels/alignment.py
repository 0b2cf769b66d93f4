"""Aligning a finite net's training epochs with the kernel machine's time t.

Tsilivis & Kempe supp. C: a wide net trained by full-batch gradient descent follows the kernel
machine of eq. 7 (net output taken as f − f₀), with kernel time linear in the epoch. The paper
aligns by hand "on epoch = 10³ with a time-point for the NTK" and matches the other epochs
linearly; here the anchor's time is the least-squares match of the machine's training outputs
to the net's,
    t* = argmin_t ‖f_t(X) − (f − f₀)(X)‖²,   f_t(X) = V diag(λ₊ g_t(λ)) Vᵀ Y,
(λ₊ = max(λ, 0): a Gram's negative eigenvalues are rounding and fit nothing) computed from the
machine's eigendecomposition alone (no kernel rows), and epoch e maps to
t = e · t*/e*. Theory predicts the slope: gradient descent with learning rate η on
L = (1/2n) Σᵢ ‖f(xᵢ) − yᵢ‖² is the Euler scheme, of step η, of df/ds = −(1/n) Θ (f − Y); the
machine (learning rate 1) follows df/dt = −Θ (f − Y), so t = s/n and each full-batch epoch
advances t by η/n; ``theory_time_per_epoch`` gives it for comparison.

Shapes: outputs (n, k), the machine's targets' shape (±1 column, or one-hot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ntkrobust.kernels.machine import KernelMachine, spectral_filter


def _gain(machine: KernelMachine, time: float) -> np.ndarray:
    """λ·g_t(λ) per eigen-direction: how much of Y the machine has fitted along it at time t."""
    g = spectral_filter(
        machine.eigenvalues, time=time, ridge=machine.ridge, learning_rate=machine.learning_rate, cutoff=machine.cutoff
    )
    return np.maximum(machine.eigenvalues, 0.0) * g


def training_outputs(machine: KernelMachine, time: float) -> np.ndarray:
    """f_t on the machine's own training inputs, (n, k), from its eigendecomposition."""
    v = machine.eigenvectors
    return v @ (_gain(machine, time)[:, None] * (v.T @ machine.targets))


#: how many spans of the grid ``matching_time`` adds below it (each at least 6 decades of t)
_EXTENSIONS = 8


def matching_time(machine: KernelMachine, outputs: np.ndarray, *, grid: int = 400) -> float:
    """The t ≥ 0 whose f_t(X) is closest (least squares) to ``outputs`` (n, k).

    A log-spaced grid from 10⁻³ to 10³ of the time scales 1/(η(λ+ρ)) spanned by the kept
    eigenvalues (those of the filter g_t), then a golden-section refinement around the best grid
    point. Where the best point is the grid's first, the net has moved less than the machine does
    in 10⁻³ of its fastest time scale (f_t is then all but linear in t, and its best t lies
    further down): the grid is extended downward by its own span, up to ``_EXTENSIONS`` times
    (before, such a t came out as the grid's edge: 4.4 % high just below it, 10x at a tenth of
    it); 0.0 where the outputs are still best fitted as t → 0 (a net that has not moved).
    Past the grid's far end f_t(X) has converged to the last digit, so every later t fits as
    well: the earliest of them is returned.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.shape != machine.targets.shape:
        raise ValueError(f"outputs of shape {outputs.shape} do not match the targets' {machine.targets.shape}")
    if not np.all(np.isfinite(outputs)):  # every residual NaN: argmin took the grid's first time
        raise ValueError("outputs contain NaN or inf (a diverged net?)")
    v = machine.eigenvectors
    target_coef, output_coef = v.T @ machine.targets, v.T @ outputs  # the part outside span(V) is constant
    kept = np.maximum(machine.eigenvalues, 0.0) + machine.ridge
    kept = kept[kept > machine.cutoff]
    if kept.size == 0:
        raise ValueError("the machine has no eigen-direction to align with")
    rate = machine.learning_rate

    def residual(log_t: float) -> float:
        return float(np.sum((_gain(machine, math.exp(log_t))[:, None] * target_coef - output_coef) ** 2))

    def best_point(low: float, high: float) -> tuple[np.ndarray, int]:
        logs = np.linspace(low, high, grid)
        return logs, int(np.argmin([residual(s) for s in logs]))

    low, high = math.log(1e-3 / (rate * kept.max())), math.log(1e3 / (rate * kept.min()))
    logs, best = best_point(low, high)
    for _ in range(_EXTENSIONS):
        if best > 0:
            break
        # the next span down, ending one grid step above this one's edge (the bracket's top)
        logs, best = best_point(logs[0] - (high - low), logs[1])
    else:
        if best == 0:
            return 0.0
    a, b = logs[max(best - 1, 0)], logs[min(best + 1, grid - 1)]
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):  # the bracket shrinks by 0.618 per step: far below float resolution of t
        c, d = b - golden * (b - a), a + golden * (b - a)
        if residual(c) <= residual(d):
            b = d
        else:
            a = c
    return math.exp(0.5 * (a + b))


def aligned_times(epochs: Sequence[int], anchor_epoch: int, anchor_time: float) -> list[float]:
    """Kernel times of ``epochs``, linear in the epoch through (0, 0) and (anchor_epoch, anchor_time)."""
    if anchor_epoch < 1 or not anchor_time >= 0:
        raise ValueError(f"need an anchor epoch >= 1 and time >= 0, got {anchor_epoch} and {anchor_time}")
    return [float(e) * anchor_time / anchor_epoch for e in epochs]


def theory_time_per_epoch(learning_rate: float, n_train: int) -> float:
    """η/n: the kernel time of one full-batch epoch on the mean ℓ2 loss (1/2n) Σ ‖f − y‖²."""
    return learning_rate / n_train


__all__ = ["aligned_times", "matching_time", "theory_time_per_epoch", "training_outputs"]
