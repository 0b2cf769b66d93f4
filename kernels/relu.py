"""The ReLU (arc-cosine) NTK recursion of fully connected nets, vectorised for the CPU.

neural-tangents evaluates the ReLU layer's angle θ = arccos(Σ₁₂ / √(Σ₁₁Σ₂₂)) with ``arctan2``,
which XLA's CPU backend runs as a scalar libm call: on 1M float64 entries it takes ~17 ms
against ~1 ms for a multiply-add, and it dominates the cost of FC kernels and of their input
gradients (the attacks). This module evaluates the same recursion (Jacot et al. 2018;
Arora et al. 2019; neural-tangents' ``Dense`` / ``Relu`` in NTK parameterisation) with an
arctangent made of arithmetic alone (range reduction and the Cephes rational approximation,
accurate to ~1 ulp), so XLA vectorises and fuses it. ``stax`` remains the definition: the
tests require agreement with ``stax.serial(...)``'s ``kernel_fn`` in float64.

Recursion for FC{L} = Dense, (ReLU, Dense) × L, with weight and bias scales σ_w, σ_b:
    Σ = σ_w² x·x'/d + σ_b²,  Θ = Σ,  and the same for the diagonals Σ₁₁, Σ₂₂;
    ReLU: s = √(Σ₁₁Σ₂₂ − Σ²), θ = atan2(s, Σ), κ = 1/2 − θ/(2π):
          Σ ← s/(2π) + κΣ,  Θ ← κΘ,  Σ₁₁ ← Σ₁₁/2,  Σ₂₂ ← Σ₂₂/2;
    Dense: Σ ← σ_w²Σ + σ_b²,  Θ ← σ_w²Θ + Σ  (diagonals: σ_w²Σᵢᵢ + σ_b²).
Identical inputs (the diagonal of a Gram matrix, a test point equal to a training point) have
θ = 0 at every layer, but their computed Σ₁₁Σ₂₂ − Σ² is rounding (the GEMM's x·x against the
sum of squares of the same row, and the residual of Σ₁₁Σ₂₂): its arc-cosine, ~√ε ≈ 1e-8 rad,
used to put 1e-9 to 1e-8 relative error on K(x, x), with stax's route as well. ``sine_part``
takes s = 0 where Σ₁₁Σ₂₂ − Σ² is within rounding of 0, so θ = 0 and κ = 1/2 exactly there.
Each ReLU layer carries a hand-written VJP (``relu_step``): the input gradients that attacks
need then cost about as much as the forward pass instead of several times more. The entrywise
form of the kernel for forward-mode autodiff (``fully_connected_entry_ntk``, the loss gradients of
``kernels._dot_route``) uses ``relu_step_forward``, the same layer with a hand-written JVP.
Shapes: x1 (N1, d), x2 (N2, d) → (N1, N2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from ntkrobust.kernels._jax import jax, jnp

# Cephes atan: for |r| <= 0.66, atan(r) = r + r·z·P(z)/Q(z), z = r².
_P = (
    -8.750608600031904122785e-1,
    -1.615753718733365076637e1,
    -7.500855792314704667340e1,
    -1.228866684490136173410e2,
    -6.485021904942025371773e1,
)
_Q = (
    2.485846490142306297962e1,
    1.650270098316988542046e2,
    4.328810604912902668951e2,
    4.853903996359136964868e2,
    1.945506571482613964425e2,
)
_TAN_3PI_8 = 2.41421356237309504880
_MOREBITS = 6.123233995736765886130e-17  # the part of π/2 that a float64 π/2 misses


def _atan_nonnegative(r: jnp.ndarray) -> jnp.ndarray:
    """atan(r) for r >= 0 (finite), arithmetic only."""
    big = r > _TAN_3PI_8
    mid = (r > 0.66) & ~big
    red = jnp.where(big, -1.0 / jnp.where(big, r, 1.0), jnp.where(mid, (r - 1.0) / (r + 1.0), r))
    base = jnp.where(big, math.pi / 2, jnp.where(mid, math.pi / 4, 0.0))
    extra = jnp.where(big, _MOREBITS, jnp.where(mid, 0.5 * _MOREBITS, 0.0))
    z = red * red
    p = (((_P[0] * z + _P[1]) * z + _P[2]) * z + _P[3]) * z + _P[4]
    q = ((((z + _Q[0]) * z + _Q[1]) * z + _Q[2]) * z + _Q[3]) * z + _Q[4]
    return base + (red * z * p / q + red + extra)


@jax.custom_jvp
def angle(sine_part: jnp.ndarray, cosine_part: jnp.ndarray) -> jnp.ndarray:
    """atan2(s, c) ∈ [0, π] for s >= 0; π/2 where both are 0 (neural-tangents' convention).

    Its derivative is given in closed form, (c·ds − s·dc)/(s² + c²): differentiating through
    the branches of the rational approximation would cost more than the forward pass.
    """
    both_zero = (sine_part == 0) & (cosine_part == 0)
    a = jnp.abs(cosine_part)
    vertical = a == 0
    ratio = sine_part / jnp.where(vertical, 1.0, a)
    first_quadrant = jnp.where(vertical, math.pi / 2, _atan_nonnegative(jnp.where(vertical, 0.0, ratio)))
    theta = jnp.where(cosine_part < 0, math.pi - first_quadrant, first_quadrant)
    return jnp.where(both_zero, math.pi / 2, theta)


def _ratio_or_zero(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
    """num / den where den > 0, else 0; the inner ``where`` keeps a NaN out of the unused branch."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


@angle.defjvp
def _angle_jvp(primals, tangents):  # type: ignore[no-untyped-def]
    (s, c), (ds, dc) = primals, tangents
    # 0 only where s = c = 0 (π/2 by convention, derivative 0). No absolute floor: θ is scale-free,
    # and a floor of 1e-30 shrank the derivative of inputs with ‖x‖‖x'‖ < 1e-15 (two-layer, x ~ 1e-8).
    return angle(s, c), _ratio_or_zero(c * ds - s * dc, s * s + c * c)


def pairwise_dots(x1: jnp.ndarray, x2: jnp.ndarray) -> jnp.ndarray:
    """x1 x2ᵀ contracting the feature axes directly: written as ``x1 @ x2.T``, XLA's CPU
    backend materialises a transposed copy of x2 (the whole training set) on every call."""
    return jax.lax.dot_general(x1, x2, (((1,), (1,)), ((), ())))


#: F(x·x', ‖x‖², ‖x'‖², d) entry by entry (``Architecture.dot_kernel_fn``)
_EntryFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, int], jnp.ndarray]


def dot_kernel_rows(
    dot_kernel: _EntryFn, dots: jnp.ndarray, sq1: jnp.ndarray, sq2: jnp.ndarray, dim: int
) -> jnp.ndarray:
    """Θ = F(dots, ‖x1‖², ‖x2‖²) on plain (N1, N2) arrays, from the products x1 x2ᵀ and the
    squared norms (N1,) and (N2,). XLA's CPU backend vectorises F over plain arrays but not over
    the row and column broadcasts of ``kernel_fn``'s recursion (~1.7x for fc2)."""
    return dot_kernel(dots, jnp.broadcast_to(sq1[:, None], dots.shape), jnp.broadcast_to(sq2[None, :], dots.shape), dim)


def dot_kernel_partials(
    dot_kernel: _EntryFn, dots: jnp.ndarray, sq1: jnp.ndarray, sq2: jnp.ndarray, dim: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """``dot_kernel_rows`` with a = ∂Θ/∂(x1·x2) and s = ∂Θ/∂‖x1‖² of every entry. F is
    elementwise, so one VJP with cotangent 1 gives both at once; then ∇_{x1}Θ(x1_b, x2_j) =
    a_bj x2_j + 2 s_bj x1_b."""
    s2 = jnp.broadcast_to(sq2[None, :], dots.shape)
    k, vjp = jax.vjp(lambda d_, s_: dot_kernel(d_, s_, s2, dim), dots, jnp.broadcast_to(sq1[:, None], dots.shape))
    a, s = vjp(jnp.ones_like(k))
    return k, a, s


@jax.custom_jvp
def safe_sqrt(x: jnp.ndarray) -> jnp.ndarray:
    """√max(x, 0) whose derivative is 0 (not ∞) where x <= 0, as in neural-tangents."""
    return jnp.sqrt(jnp.maximum(x, 0.0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):  # type: ignore[no-untyped-def]
    (x,), (dx,) = primals, tangents
    root = safe_sqrt(x)
    # x > 0, not an absolute floor: ``sine_part`` already sends rounding to exactly 0, and a floor
    # zeroed the derivative of every entry of tiny inputs (gap < 1e-30: ‖x‖‖x'‖ ~ 1e-16)
    return root, _ratio_or_zero(dx, 2 * root)  # root > 0 exactly where x > 0


#: Σ₁₁Σ₂₂ − Σ² of identical inputs measures up to ~24ε·Σ₁₁Σ₂₂ (MNIST, CIFAR-10, digits and
#: Gaussian inputs, d = 30 to 3072, float64 and float32, every layer of fc5); below this many ε
#: it is taken as exactly 0.
IDENTICAL_ULPS = 64


def sine_part(prod: jnp.ndarray, cov: jnp.ndarray) -> jnp.ndarray:
    """s = √(prod − cov²) for prod = Σ₁₁Σ₂₂, cov = Σ₁₂: the sine part of θ = atan2(s, cov).

    Exactly 0 where prod − cov² <= 64ε·prod, i.e. where θ (or π − θ) is below √(64ε): 1.2e-7
    rad in float64, 2.8e-3 in float32. There the computed cos θ is within rounding of ±1 and
    its arc-cosine, ~√ε, is rounding rather than geometry; identical (and parallel) inputs get
    θ = 0 exactly, with the kink's symmetric subgradient as input gradient. A distinct pair that
    close loses at most ~θ/π relative, the size of the rounding it replaces. One compare and
    select per entry: the Gram stays one GEMM plus fused elementwise work.
    """
    gap = prod - cov**2
    tol = IDENTICAL_ULPS * float(jnp.finfo(jnp.result_type(gap)).eps)
    return safe_sqrt(jnp.where(gap > tol * prod, gap, 0.0))


def _relu_forward(S, T, d1, d2):  # type: ignore[no-untyped-def]
    P = d1[:, None] * d2[None, :]
    root = sine_part(P, S)
    kappa = 0.5 - angle(root, S) / (2 * math.pi)
    # Materialise r and κ once: left to itself XLA re-inlines the ~30-operation angle into
    # every consumer fusion (Σ', Θ', the VJP residuals), which made each layer ~5x slower.
    root, kappa = jax.lax.optimization_barrier((root, kappa))
    return (root / (2 * math.pi) + kappa * S, kappa * T), (S, T, P, root, kappa, d1, d2)


@jax.custom_vjp
def relu_step(S: jnp.ndarray, T: jnp.ndarray, d1: jnp.ndarray, d2: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One ReLU layer of the recursion: (Σ, Θ) → (s/(2π) + κΣ, κΘ), diagonals d1 (N1,), d2 (N2,).

    Its VJP is written out (autodiff's is ~8x slower than the forward on CPUs). With
    P = d1 d2ᵀ, r = √(P − Σ²), θ = atan2(r, Σ), κ = 1/2 − θ/(2π):
        ∂Σ'/∂Σ = κ,  ∂Σ'/∂P = r/(4πP),  ∂κ/∂Σ = 1/(2πr),  ∂κ/∂P = −Σ/(4πPr).
    At the kink r = 0 (identical inputs; ``sine_part``) the 1/r terms are taken as 0, as in
    neural-tangents: the symmetric subgradient.
    """
    return _relu_forward(S, T, d1, d2)[0]


def _relu_step_fwd(S, T, d1, d2):  # type: ignore[no-untyped-def]
    return _relu_forward(S, T, d1, d2)


def _relu_step_bwd(residuals, cotangents):  # type: ignore[no-untyped-def]
    S, T, P, root, kappa, d1, d2 = residuals
    gS_out, gT_out = cotangents
    smooth = root > 0  # the kink is exactly r = 0 (``sine_part``); no absolute floor: Θ is homogeneous
    inv_root = jnp.where(smooth, 1.0 / jnp.where(smooth, root, 1.0), 0.0)
    inv_P = 1.0 / jnp.where(P > 0, P, 1.0)
    g_S = kappa * gS_out + T * inv_root * gT_out / (2 * math.pi)
    g_T = kappa * gT_out
    g_P = (root * gS_out - T * S * inv_root * gT_out) * inv_P / (4 * math.pi)
    return g_S, g_T, jnp.sum(g_P * d2[None, :], axis=1), jnp.sum(g_P * d1[:, None], axis=0)


relu_step.defvjp(_relu_step_fwd, _relu_step_bwd)


def _dense_relu_recursion(
    nngp: jnp.ndarray,
    diag1: jnp.ndarray,
    diag2: jnp.ndarray,
    *,
    depth: int,
    w2: float,
    b2: float,
    step: Callable[..., tuple[jnp.ndarray, jnp.ndarray]] | None = None,
) -> jnp.ndarray:
    """Θ after ``depth`` × (ReLU, Dense) from the first Dense layer's Σ (N1, N2) and diagonals;
    ``step`` is the ReLU layer (``relu_step``, or ``relu_step_forward`` for forward mode)."""
    step = relu_step if step is None else step
    ntk = nngp
    for _ in range(depth):
        nngp, ntk = step(nngp, ntk, diag1, diag2)
        diag1, diag2 = diag1 / 2, diag2 / 2
        nngp = w2 * nngp + b2
        ntk = w2 * ntk + nngp
        diag1, diag2 = w2 * diag1 + b2, w2 * diag2 + b2
    return ntk


def fully_connected_ntk(
    x1: jnp.ndarray, x2: jnp.ndarray, get: str = "ntk", *, depth: int, W_std: float, b_std: float
) -> jnp.ndarray:
    """The NTK of Dense, (ReLU, Dense) × depth in NTK parameterisation: shape (N1, N2)."""
    if get != "ntk":
        raise ValueError("the vectorised fully connected kernel returns the NTK only (get='ntk')")
    w2, b2 = float(W_std) ** 2, float(b_std) ** 2  # Python floats stay weakly typed: float32 stays float32
    d = x1.shape[1]
    return _dense_relu_recursion(
        w2 * pairwise_dots(x1, x2) / d + b2,
        w2 * jnp.sum(x1 * x1, axis=1) / d + b2,
        w2 * jnp.sum(x2 * x2, axis=1) / d + b2,
        depth=depth,
        w2=w2,
        b2=b2,
    )


def fully_connected_dot_ntk(
    dots: jnp.ndarray, sq1: jnp.ndarray, sq2: jnp.ndarray, dim: int, *, depth: int, W_std: float, b_std: float
) -> jnp.ndarray:
    """The same kernel entry by entry from x·x', ‖x‖², ‖x'‖² (arrays of one shape) and d = dim.

    Each entry is the recursion on a 1x1 problem, mapped over the entries, so the derivatives
    with respect to ‖x‖² come out per entry (``KernelMachine.output_jacobian``'s dots route).
    """
    w2, b2 = float(W_std) ** 2, float(b_std) ** 2

    def entry(dot: jnp.ndarray, s1: jnp.ndarray, s2: jnp.ndarray) -> jnp.ndarray:
        one = (w2 * dot / dim + b2).reshape(1, 1)
        d1, d2 = (w2 * s1 / dim + b2).reshape(1), (w2 * s2 / dim + b2).reshape(1)
        return _dense_relu_recursion(one, d1, d2, depth=depth, w2=w2, b2=b2)[0, 0]

    for _ in range(dots.ndim):
        entry = jax.vmap(entry)
    return entry(dots, sq1, sq2)


@jax.custom_jvp
def relu_step_forward(S, T, d1, d2):  # type: ignore[no-untyped-def]
    """``relu_step`` with a hand-written JVP instead of a VJP, for forward-mode autodiff.

    The same derivatives as ``relu_step``'s VJP (dP = d(d1 d2)):
        dκ = dΣ/(2πr) − Σ dP/(4πPr),  dΣ' = κ dΣ + r dP/(4πP),  dΘ' = κ dΘ + Θ dκ,
    with the 1/r terms 0 at the kink. Written out, they reuse r and κ: JAX's rules for
    ``sine_part`` and ``angle`` would add a square root's and an arctangent's divides per entry.
    Broadcasting: S, T (N1, N2), d1 (N1, 1), d2 (1, N2).
    """
    root = sine_part(d1 * d2, S)
    kappa = 0.5 - angle(root, S) / (2 * math.pi)
    return root / (2 * math.pi) + kappa * S, kappa * T


@relu_step_forward.defjvp
def _relu_step_forward_jvp(primals, tangents):  # type: ignore[no-untyped-def]
    S, T, d1, d2 = primals
    dS, dT, dd1, dd2 = tangents
    P = d1 * d2
    root = sine_part(P, S)
    kappa = 0.5 - angle(root, S) / (2 * math.pi)
    smooth = root > 0  # the kink is exactly r = 0 (``sine_part``); no absolute floor: Θ is homogeneous
    inv_root = jnp.where(smooth, 1.0 / jnp.where(smooth, root, 1.0), 0.0)
    # dP/P on the diagonals' vectors, not per entry; 0 for a zero diagonal (an all-zero input
    # without bias), whose entries all sit on the kink
    dP_over_P = _ratio_or_zero(dd1, d1) + _ratio_or_zero(dd2, d2)
    d_kappa = (dS - 0.5 * S * dP_over_P) * inv_root / (2 * math.pi)
    out = (root / (2 * math.pi) + kappa * S, kappa * T)
    return out, (kappa * dS + root * dP_over_P / (4 * math.pi), kappa * dT + T * d_kappa)


def fully_connected_entry_ntk(
    dots: jnp.ndarray, sq1: jnp.ndarray, sq2: jnp.ndarray, dim: int, *, depth: int, W_std: float, b_std: float
) -> jnp.ndarray:
    """``fully_connected_dot_ntk`` written to broadcast (dots (N1, N2), sq1 (N1, 1), sq2 (1, N2))
    and for forward-mode autodiff: the same operations as ``fully_connected_ntk`` after its GEMM,
    so Θ is equal to rounding, and ``jax.jvp`` along x·x' or ‖x‖² gives one partial derivative of
    every entry in one fused elementwise pass (``KernelMachine.loss_gradient``'s dots route).
    At the kink (``sine_part`` = 0) the 1/r terms vanish, as in ``relu_step``'s VJP."""
    w2, b2 = float(W_std) ** 2, float(b_std) ** 2
    nngp, diag1, diag2 = w2 * dots / dim + b2, w2 * sq1 / dim + b2, w2 * sq2 / dim + b2
    return _dense_relu_recursion(nngp, diag1, diag2, depth=depth, w2=w2, b2=b2, step=relu_step_forward)


def fully_connected_kernel_fn(depth: int, W_std: float, b_std: float):  # type: ignore[no-untyped-def]
    """``kernel_fn(x1, x2, get='ntk')`` of FC{depth}, in the neural-tangents calling convention."""
    return functools.partial(fully_connected_ntk, depth=depth, W_std=W_std, b_std=b_std)


def fully_connected_dot_kernel_fn(depth: int, W_std: float, b_std: float):  # type: ignore[no-untyped-def]
    """``dot_kernel_fn(dots, sq1, sq2, dim)`` of FC{depth} (see ``fully_connected_dot_ntk``)."""
    return functools.partial(fully_connected_dot_ntk, depth=depth, W_std=W_std, b_std=b_std)


def fully_connected_entry_kernel_fn(depth: int, W_std: float, b_std: float):  # type: ignore[no-untyped-def]
    """``entry_kernel_fn(dots, sq1, sq2, dim)`` of FC{depth} (see ``fully_connected_entry_ntk``)."""
    return functools.partial(fully_connected_entry_ntk, depth=depth, W_std=W_std, b_std=b_std)
