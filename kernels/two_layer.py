"""The two-layer ReLU NTK in closed form, and its input gradient without autodiff.

Tsilivis & Kempe, supplement C: the net of eq. 28,
    f(x) = m^{-1/2} A·relu(W x),  A ∈ {±1}^{m×k} frozen,  W ~ N(0, 0.01²),
has the NTK of eq. 29 (only W is trained; the scale of W cancels in the ReLU's indicator):
    Θ(x, x') = (1/2 − arccos(u)/(2π))·xᵀx',   u = xᵀx' / (‖x‖‖x'‖).

Supp. eq. 9 notes that for such analytic kernels the input gradient of the kernel machine,
∇ₓf_r(x) = DΘ(x, X)ᵀ α_r, needs no autodiff. Writing A(u) = 1/2 − arccos(u)/(2π) and
B(u) = u / (2π√(1 − u²)),
    ∇ₓΘ(x, x') = (A + B)·x' − B·u·(‖x'‖/‖x‖)·x,
so a cotangent w on the kernel rows (the weights of every Θ(x_i, x_j)) gives
    Σ_j w_ij ∇Θ(x_i, x_j) = Σ_j w_ij (A_ij + B_ij) x_j − (Σ_j w_ij B_ij u_ij ‖x_j‖) x_i / ‖x_i‖.
At u = ±1 (x parallel to a training point) Θ has a cone-shaped kink and no gradient; there
we take the symmetric subgradient B = 0.

Shapes: x1 (N1, d), x2 (N2, d) flat inputs; kernel (N1, N2); cotangent (N1, N2) → (N1, d).
"""

from __future__ import annotations

import math

from ntkrobust.kernels._jax import float64, jnp, stax
from ntkrobust.kernels.relu import angle, pairwise_dots, sine_part


def _geometry(x1: jnp.ndarray, x2: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """Dot products s, norms, and the angle θ = arccos(u) computed as atan2(√(‖x‖²‖x'‖² − s²), s)
    (the vectorised ``kernels.relu.angle``: libm's arccos is a scalar call on CPUs; the root is
    ``kernels.relu.sine_part``, exactly 0 within rounding, so identical inputs get θ = 0)."""
    dots = pairwise_dots(x1, x2)
    sq1, sq2 = jnp.sum(x1 * x1, axis=1), jnp.sum(x2 * x2, axis=1)
    root = sine_part(sq1[:, None] * sq2[None, :], dots)
    # an all-zero input's norm is read as 1: its dots and its root are 0, so nothing it multiplies
    # survives (a floor of 1e-30 on ‖x‖² instead put the norm of inputs below 1e-15 at 1e-15)
    n1 = jnp.sqrt(jnp.where(sq1 > 0, sq1, 1.0))
    n2 = jnp.sqrt(jnp.where(sq2 > 0, sq2, 1.0))
    return dots, root, angle(root, dots), n1, n2


def _check_flat(x1: jnp.ndarray, x2: jnp.ndarray) -> None:
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"the two-layer NTK takes flat inputs (N1, d) and (N2, d), got {x1.shape} and {x2.shape}")


@float64
def two_layer_ntk(x1: jnp.ndarray, x2: jnp.ndarray, get: str = "ntk") -> jnp.ndarray:
    """Supp. eq. 29 between every row of ``x1`` and of ``x2``: shape (N1, N2), float64 (as every
    Gram matrix of the package, ``kernels._jax.float64``)."""
    if get != "ntk":
        raise ValueError("the two-layer closed form is an NTK only (get='ntk')")
    _check_flat(x1, x2)
    sq1, sq2 = jnp.sum(x1 * x1, axis=1), jnp.sum(x2 * x2, axis=1)
    return two_layer_dot_ntk(pairwise_dots(x1, x2), sq1[:, None], sq2[None, :], x1.shape[1])


def two_layer_dot_ntk(dots: jnp.ndarray, sq1: jnp.ndarray, sq2: jnp.ndarray, dim: int) -> jnp.ndarray:
    """Eq. 29 entry by entry from x·x', ‖x‖², ‖x'‖² (broadcastable arrays); ``dim`` is unused."""
    theta = angle(sine_part(sq1 * sq2, dots), dots)
    return (0.5 - theta / (2 * math.pi)) * dots


def two_layer_dot_partials(
    dots: jnp.ndarray, sq1: jnp.ndarray, sq2: jnp.ndarray, dim: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """∂Θ/∂(x·x') and ∂Θ/∂‖x‖² of eq. 29 entry by entry, in closed form (supp. eq. 9).

    With r = √(‖x‖²‖x'‖² − (x·x')²) and κ = A(u) = 1/2 − θ/(2π): ∂θ/∂(x·x') = −1/r and
    ∂θ/∂‖x‖² = (x·x')‖x'‖²/(2r‖x‖²‖x'‖²), so ∂Θ/∂(x·x') = κ + (x·x')/(2πr) = A + B and
    ∂Θ/∂‖x‖² = −(x·x')²‖x'‖²/(4πr‖x‖²‖x'‖²) = −B·u·‖x'‖/(2‖x‖): ∇ₓΘ = a x' + 2 s x is the
    formula of the module docstring. At the kink (r = 0) the 1/r terms are 0 (B = 0).
    """
    prod = sq1 * sq2
    root = sine_part(prod, dots)
    kappa = 0.5 - angle(root, dots) / (2 * math.pi)
    smooth = root > 0
    inv_root = jnp.where(smooth, 1.0 / jnp.where(smooth, root, 1.0), 0.0)
    inv_prod = jnp.where(prod > 0, 1.0 / jnp.where(prod > 0, prod, 1.0), 0.0)
    along_dot = kappa + dots * inv_root / (2 * math.pi)
    along_sq1 = -(dots * dots) * sq2 * inv_root * inv_prod / (4 * math.pi)
    return along_dot, along_sq1


@float64
def two_layer_ntk_vjp(x1: jnp.ndarray, x2: jnp.ndarray, cotangent: jnp.ndarray) -> jnp.ndarray:
    """Σ_j cotangent[i, j]·∇_{x1_i} Θ(x1_i, x2_j) in closed form (supp. eq. 9): shape (N1, d)."""
    _check_flat(x1, x2)
    if tuple(cotangent.shape) != (x1.shape[0], x2.shape[0]):
        raise ValueError(f"the cotangent must have shape {(x1.shape[0], x2.shape[0])}, got {tuple(cotangent.shape)}")
    dots, root, theta, n1, n2 = _geometry(x1, x2)
    norms = n1[:, None] * n2[None, :]
    u = jnp.clip(dots / norms, -1.0, 1.0)
    a = 0.5 - theta / (2 * math.pi)
    # B = u / (2π sin θ) with sin θ = root / (‖x‖‖x'‖); zero at the kink, where ``sine_part``
    # returns exactly 0 (θ below 1.2e-7 rad), as in ``two_layer_dot_partials`` and the relu routes
    kinked = root == 0
    b = jnp.where(kinked, 0.0, u * norms / (2 * math.pi * jnp.where(kinked, 1.0, root)))
    along_x2 = (cotangent * (a + b)) @ x2
    along_x1 = jnp.sum(cotangent * b * u * n2[None, :], axis=1) / n1
    return along_x2 - along_x1[:, None] * x1


@float64
def two_layer_stax_ntk(x1: jnp.ndarray, x2: jnp.ndarray) -> jnp.ndarray:
    """Eq. 29 through neural-tangents, an independent route used to verify the closed form.

    For Dense(W_std=1) → ReLU → Dense(W_std=1) without biases in NTK parameterisation,
    ntk − nngp is the part of the NTK contributed by the first layer alone (the frozen
    readout's contribution is the nngp term), and the 1/d of the NTK parameterisation is
    undone by the factor d.
    """
    _, _, kernel_fn = stax.serial(
        stax.Dense(1, W_std=1.0, b_std=None, parameterization="ntk"),
        stax.Relu(),
        stax.Dense(1, W_std=1.0, b_std=None, parameterization="ntk"),
    )
    _check_flat(x1, x2)
    k = kernel_fn(x1, x2, ("nngp", "ntk"))
    return x1.shape[1] * (k.ntk - k.nngp)
