"""FGSM: the fast gradient (sign) method.

Paper:
    Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015;
    on kernel machines: Tsilivis & Kempe, eq. 2 and eq. 8 (binary), supp. eq. 7-8 (multiclass).

Threat model:
    ℓ∞ (default) or ℓ2 ball of radius ``eps`` in pixel units, intersected with [0, 1].
    ℓ∞: x̃ = clip(x + ε·sign(∇ₓL)); ℓ2: x̃ = clip(x + ε·∇ₓL/‖∇ₓL‖₂).

Arguments:
    loss_gradient: ``(x, y) -> ∇ₓ L`` with the shape and array type of ``x``, where L is the
        per-example loss to *increase* (for a kernel machine: cross-entropy on its outputs;
        for a binary machine this makes the step exactly −yε·sign(∇ₓf), eq. 8).
    x: inputs, NCHW (any shape with the batch first), values in [0, 1].
    y: labels in whatever form ``loss_gradient`` takes.
    eps: radius of the ball, ≥ 0.
    norm: ``"linf"`` (default) or ``"l2"``.

Shapes:
    x: (B, C, H, W) → x_adv: (B, C, H, W), same dtype and array type (numpy, JAX, torch).

Example:
    >>> x_adv = fgsm(machine.loss_gradient, x, machine.target_index(y), eps=0.3)
"""

from __future__ import annotations

from collections.abc import Callable

from ntkrobust.attacks._array import Array, ops_for
from ntkrobust.attacks.threat import Norm, ThreatModel, steepest_ascent

LossGradient = Callable[[Array, Array], Array]


def fgsm(loss_gradient: LossGradient, x: Array, y: Array, *, eps: float, norm: Norm = "linf") -> Array:
    """One steepest-ascent step of size ``eps`` on the loss, projected and clipped to [0, 1]."""
    threat = ThreatModel(norm=norm, eps=eps)
    threat.check_inputs(x)
    ops = ops_for(x)
    direction = ops.astype_like(steepest_ascent(loss_gradient(x, y), norm), x)
    return threat.project(x + eps * direction, x)
