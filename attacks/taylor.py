"""Taylor attacks on kernel machines: one step along the first-order change of the outputs.

Paper:
    Tsilivis & Kempe, "What Can the Neural Tangent Kernel Tell Us About Adversarial Robustness?",
    supplement B.2: f(x + η) ≈ f(x) + (ηᵀz₁, …, ηᵀz_k) with z_r = ∇ₓf_r(x) = DΘ(x, X)ᵀ α_r.
    - binary (one output, y ∈ {±1}), supp. eq. 16:        η = −ε·y·sign(z)
    - max-of-ℓ1 (multiclass), supp. eq. 20:              η = ε·sign(z_r − z_{r*}),
      r = argmax_{r ≠ r*} ‖z_r − z_{r*}‖₁
    - sum-of-Δz (multiclass), supp. eq. 22:              η = ε·sign(Σ_{r ≠ r*} (z_r − z_{r*}))
    r* is the true class. With one output both multiclass variants reduce to eq. 16.

Threat model:
    ℓ∞ as in the paper; ℓ2 by the same steepest-ascent rule with the dual norm (‖·‖₂ picks r,
    g/‖g‖₂ is the step). Clipped to [0, 1].

Arguments:
    output_jacobian: ``x -> z`` of shape (B, k, *x.shape[1:]), z[b, r] = ∇ₓ f_r(x_b).
    x: inputs, NCHW, values in [0, 1].
    target_index: (B,) host integer array: position r* of the true class among the k outputs;
        for a single-output (binary) machine 0 means y = −1 and 1 means y = +1.
    eps: radius of the ball, ≥ 0.
    norm: ``"linf"`` (default) or ``"l2"``.

Shapes:
    x: (B, C, H, W) → x_adv: (B, C, H, W), same dtype and array type.

Example:
    >>> x_adv = taylor_max_l1(machine.output_jacobian, x, machine.target_index(y), eps=0.3)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ntkrobust.attacks._array import Array, ops_for
from ntkrobust.attacks.threat import Norm, ThreatModel, dual_norm, steepest_ascent

OutputJacobian = Callable[[Array], Array]


def taylor_max_l1(
    output_jacobian: OutputJacobian, x: Array, target_index: np.ndarray, *, eps: float, norm: Norm = "linf"
) -> Array:
    """Supp. eq. 20: push towards the wrong class whose output gains most (eq. 16 if binary)."""
    return _taylor(output_jacobian, x, target_index, eps=eps, norm=norm, variant="max-l1")


def taylor_sum(
    output_jacobian: OutputJacobian, x: Array, target_index: np.ndarray, *, eps: float, norm: Norm = "linf"
) -> Array:
    """Supp. eq. 22: push along the summed output changes of all wrong classes (eq. 16 if binary)."""
    return _taylor(output_jacobian, x, target_index, eps=eps, norm=norm, variant="sum")


def _taylor(
    output_jacobian: OutputJacobian,
    x: Array,
    target_index: np.ndarray,
    *,
    eps: float,
    norm: Norm,
    variant: str,
) -> Array:
    threat = ThreatModel(norm=norm, eps=eps)
    threat.check_inputs(x)  # as fgsm and pgd: images in [0, 1], not 0-255 ones clipped into the box
    ops = ops_for(x)
    target_index = np.asarray(target_index, dtype=np.int64)
    z = output_jacobian(x)
    if len(z.shape) != x.ndim + 1 or tuple(z.shape[2:]) != tuple(x.shape[1:]):
        shapes = f"got {tuple(z.shape)} for x of {tuple(x.shape)}"
        raise ValueError(f"output_jacobian must return (B, k, *x.shape[1:]), {shapes}")
    batch, k = int(z.shape[0]), int(z.shape[1])
    if batch != x.shape[0] or target_index.shape != (batch,):
        raise ValueError(f"jacobian batch {batch}, inputs {x.shape[0]}, labels {target_index.shape} disagree")
    classes = 2 if k == 1 else k  # one output: 0 ↔ y = −1, 1 ↔ y = +1
    if target_index.min(initial=0) < 0 or target_index.max(initial=0) >= classes:
        raise ValueError(f"target_index must lie in [0, {classes}) (machine.target_index(labels) maps class ids)")
    if k == 1:
        # Eq. 16: η = −ε·y·d(z), y = ±1.
        sign_y = ops.from_numpy((2 * target_index - 1).reshape((batch,) + (1,) * (x.ndim - 1)), like=z)
        direction = -sign_y * steepest_ascent(z[:, 0], norm)
    else:
        true_mask = np.eye(k)[target_index].reshape((batch, k) + (1,) * (x.ndim - 1))
        true_mask_dev = ops.from_numpy(true_mask, like=z)
        z_true = (z * true_mask_dev).sum(1)  # .sum(1) means the same on numpy, JAX and torch
        deltas = z - z_true[:, None]  # (B, k, ...): z_r − z_{r*}; zero at r = r*
        if variant == "sum":
            direction = steepest_ascent(deltas.sum(1), norm)
        else:
            flat = deltas.reshape((batch * k, -1))
            # A writable host copy: JAX hands numpy a read-only view.
            gains = np.array(ops.to_numpy(dual_norm(flat, norm)), dtype=np.float64).reshape(batch, k)
            gains[np.arange(batch), target_index] = -np.inf
            pick = np.eye(k)[np.argmax(gains, axis=1)].reshape(true_mask.shape)
            direction = steepest_ascent((deltas * ops.from_numpy(pick, like=z)).sum(1), norm)
    return threat.project(x + eps * ops.astype_like(direction, x), x)
