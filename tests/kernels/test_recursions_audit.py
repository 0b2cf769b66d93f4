"""Mutation audit of the ReLU NTK recursions (``kernels.relu``, ``kernels.conv``), ninth round:
each test fails on a mutation of ``kernels/relu.py`` that survived the earlier tests (or that
only a test of another kernel caught). Every mutation of ``kernels/conv.py`` tried (window, padding,
fan-in, readout mean, diagonals, layer order) already failed test_conv.py's comparison with stax.

Independent routes: the closed-form arc-cosine NTK in numpy float64 (``_arc_cosine_ntk`` of
test_kernels_audit: arccos of the clipped cosine, not the code's atan2 of a thresholded sine),
exact identities of the kernel (θ = 0 on the diagonal, θ = π for antiparallel inputs without
bias), and stax nets built here. The inputs sit where the recursion has its edge cases: angles
just above the rounding threshold, norms from 1e-3 to 1e3, antiparallel pairs, a zero input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_kernels_audit import PAPER_W_STD, _arc_cosine_ntk, _diagonal_closed_form

from ntkrobust.kernels.relu import fully_connected_dot_ntk, fully_connected_entry_ntk, fully_connected_ntk


def _three_routes(x1: np.ndarray, x2: np.ndarray, **hyper) -> dict[str, np.ndarray]:
    """Θ(x1[i], x2[i]) for each row pair by the Gram route (its diagonal), the per-entry dots
    route and the broadcasting entry route (the latter two from numpy's x·x', ‖x‖², ‖x'‖²)."""
    from ntkrobust.kernels._jax import jnp

    dots, sq1, sq2 = np.sum(x1 * x2, axis=1), np.sum(x1 * x1, axis=1), np.sum(x2 * x2, axis=1)
    dim = x1.shape[1]
    entrywise = (jnp.asarray(dots), jnp.asarray(sq1), jnp.asarray(sq2), dim)
    return {
        "gram": np.diag(np.asarray(fully_connected_ntk(jnp.asarray(x1), jnp.asarray(x2), **hyper))),
        "dots": np.asarray(fully_connected_dot_ntk(*entrywise, **hyper)),
        "entry": np.asarray(fully_connected_entry_ntk(*entrywise, **hyper)),
    }


def test_small_angles_at_any_norm_are_geometry_not_rounding(jax_strict):
    """Pairs at angles 1e-6 .. 1e-2 rad (above the ~1.2e-7 rad below which ``sine_part`` takes
    the angle as rounding) with norms 1e-3 .. 1e3 (and 2x apart), no bias so the angle reaches
    the ReLU as it is: all three routes equal the numpy closed form at rtol 1e-9 (its arccos of a
    cosine 1 − θ²/2 is off by ~ε/θ ≈ 2e-10 rad). Catches the threshold made absolute (Σ₁₁Σ₂₂ −
    Σ² < 64ε instead of 64ε·Σ₁₁Σ₂₂: at norm 1e-3 every angle below ~0.2 rad became 0; only the
    two-layer Gram test saw it before) and a threshold 2²² ulps wide (θ < 3e-5 taken as 0)."""
    x1, x2 = [], []
    for scale in (1e-3, 1.0, 1e3):
        for theta in (1e-6, 1e-5, 1e-4, 1e-2):
            u, v = np.zeros(8), np.zeros(8)
            u[0] = scale
            v[0], v[1] = 2 * scale * math.cos(theta), 2 * scale * math.sin(theta)
            x1.append(u)
            x2.append(v)
    x1, x2 = np.array(x1), np.array(x2)
    hyper = {"depth": 2, "W_std": PAPER_W_STD, "b_std": 0.0}
    want = np.diag(_arc_cosine_ntk(x1, x2, 2, PAPER_W_STD, 0.0))
    for route, got in _three_routes(x1, x2, **hyper).items():
        np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=route)


def test_the_diagonal_is_exact_at_large_norms(rng, jax_strict):
    """K(x, x) for inputs of norm ~1e3·√d, where the GEMM's x·x and the row's sum of squares
    part by ~ε·10⁶ in absolute terms: the angle must still be 0 exactly (rational recursion,
    ``_diagonal_closed_form``, rtol 1e-13), for x against itself and against a copy. With the
    threshold absolute instead of relative to Σ₁₁Σ₂₂ these entries took θ ~ 1e-8 rad."""
    from ntkrobust.kernels._jax import jnp

    x = 1e3 * rng.uniform(0, 1, size=(24, 64))
    want = _diagonal_closed_form(x, 3)
    hyper = {"depth": 3, "W_std": PAPER_W_STD, "b_std": 0.1}
    gram = np.asarray(fully_connected_ntk(jnp.asarray(x), jnp.asarray(x), **hyper))
    np.testing.assert_allclose(np.diag(gram), want, rtol=1e-13)
    copy = np.asarray(fully_connected_ntk(jnp.asarray(x[:6]), jnp.asarray(x[::-1].copy()), **hyper))
    np.testing.assert_allclose(np.fliplr(copy).diagonal(), want[:6], rtol=1e-13)


@pytest.mark.parametrize("depth", [1, 3])
def test_antiparallel_inputs_without_bias_are_orthogonal_inputs_one_layer_shallower(depth, rng, jax_strict):
    """x' = −c·x with b_std = 0: the first ReLU sees θ = π exactly, so Σ and Θ after it are 0
    and the diagonals σ_w²·(σ_w²‖x‖²/d)/2, σ_w²·c²(…)/2: the kernel of depth L is that of
    depth L − 1 on the exactly orthogonal pair α·e₁, c·α·e₂ with α² = σ_w²‖x‖²/d (0 for
    L = 1). Closed form on that pair at rtol 1e-12 (atol 1e-14 of the scale for L = 1), all
    three routes, c from 1e-3 to 1e3. Catches the rounding threshold applied near θ = 0 only:
    then the computed θ = π − ~1e-8 left Θ' = Θ(π − θ)/2π ~ 1e-9·Θ instead of 0."""
    x = rng.standard_normal((8, 10))
    c = np.array([1.0, 3.7, 1e-3, 1e3, 0.5, 2.0, 1.0, 7.0])[:, None]
    w2 = PAPER_W_STD**2
    alpha = np.sqrt(w2 * np.sum(x * x, axis=1) / x.shape[1])
    u, v = np.zeros((8, 2)), np.zeros((8, 2))
    u[:, 0], v[:, 1] = alpha, c[:, 0] * alpha
    want = np.diag(_arc_cosine_ntk(u, v, depth - 1, PAPER_W_STD, 0.0))
    scale = 1e-14 * float(np.max(alpha**2 * c[:, 0]))
    for route, got in _three_routes(x, -c * x, depth=depth, W_std=PAPER_W_STD, b_std=0.0).items():
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=scale if depth == 1 else 0.0, err_msg=route)


def _stax_fc(depth: int, w_std: float, b_std: float):
    """Dense, (ReLU, Dense) × depth, NTK parameterisation, built here (not the registry's)."""
    from ntkrobust.kernels._jax import stax

    scales = {"W_std": w_std, "b_std": b_std, "parameterization": "ntk"}
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(16, **scales), stax.Relu()]
    return stax.serial(*layers, stax.Dense(1, **scales))[2]


def test_a_zero_input_without_bias_has_stax_input_gradient_on_both_autodiff_routes(rng, jax_strict):
    """A zero input of a net without bias: Σ₁₁ = Σ₁₂ = 0, so every entry of its row sits at
    atan2(0, 0) and at Σ₁₁Σ₂₂ = 0, where neural-tangents takes θ = π/2. Its kernel row is 0
    and its input gradient is stax's (a net built here; rtol 1e-11): through ``relu_step``'s VJP
    (reverse mode, attacks) and through ``relu_step_forward``'s JVP (forward mode, the dots
    route's loss gradients: ∇ₓΘ(x, x'ⱼ) = a x'ⱼ + 2 s x from the tangents a along x·x' and s
    along ‖x‖²). Catches atan2(0, 0) taken as 0 (κ = 1/2 instead of 1/4 at the first ReLU), the
    VJP's 1/Σ₁₁Σ₂₂ and the JVP's dΣᵢᵢ/Σᵢᵢ left unguarded (NaN gradients)."""
    from ntkrobust.kernels._jax import jax, jnp

    x1 = rng.standard_normal((4, 6))
    x1[0] = 0.0
    x2 = jnp.asarray(rng.standard_normal((5, 6)))
    w = jnp.asarray(rng.standard_normal((4, 5)))
    hyper = {"depth": 2, "W_std": 1.3, "b_std": 0.0}
    reference = _stax_fc(2, 1.3, 0.0)
    want = np.asarray(jax.grad(lambda z: jnp.sum(w * reference(z, x2, "ntk")))(jnp.asarray(x1)))
    assert np.all(np.isfinite(want)) and np.abs(want[0]).max() > 0.01  # the precondition
    np.testing.assert_array_equal(np.asarray(fully_connected_ntk(jnp.asarray(x1), x2, **hyper))[0], 0.0)
    reverse = np.asarray(jax.grad(lambda z: jnp.sum(w * fully_connected_ntk(z, x2, **hyper)))(jnp.asarray(x1)))
    np.testing.assert_allclose(reverse, want, rtol=1e-11, atol=1e-14)

    dots = jnp.asarray(x1) @ x2.T
    sq1, sq2 = jnp.asarray(np.sum(x1 * x1, axis=1))[:, None], jnp.sum(x2 * x2, axis=1)[None, :]

    def entry(d_, s_):
        return fully_connected_entry_ntk(d_, s_, sq2, 6, **hyper)

    a = jax.jvp(entry, (dots, sq1), (jnp.ones_like(dots), jnp.zeros_like(sq1)))[1]
    s = jax.jvp(entry, (dots, sq1), (jnp.zeros_like(dots), jnp.ones_like(sq1)))[1]
    forward = np.asarray((w * a) @ x2 + 2 * jnp.sum(w * s, axis=1, keepdims=True) * jnp.asarray(x1))
    np.testing.assert_allclose(forward, want, rtol=1e-11, atol=1e-14)


def test_dot_kernel_partials_are_the_derivatives_along_the_dot_and_along_the_norm(rng, jax_strict):
    """``dot_kernel_partials`` returns Θ, a = ∂Θ/∂(x·x') and s = ∂Θ/∂‖x‖² of every entry (the
    feature and Jacobian routes build ∇ₓΘ = a x' + 2 s x from them). Against central differences
    of the numpy closed form, entry by entry (rtol 1e-6; the differences' error is ~1e-10): along
    a direction orthogonal to the row x the norm stays put (dΘ = a·(v·x')), along x itself
    dΘ = a·x·x' + 2 s‖x‖². Catches a and s handed back in each other's place."""
    from ntkrobust.kernels._jax import jnp
    from ntkrobust.kernels.relu import dot_kernel_partials, dot_kernel_rows, fully_connected_dot_kernel_fn

    x1, x2 = rng.standard_normal((5, 12)), rng.standard_normal((4, 12))
    dots, sq1, sq2 = x1 @ x2.T, np.sum(x1 * x1, axis=1), np.sum(x2 * x2, axis=1)
    kernel = fully_connected_dot_kernel_fn(2, 1.3, 0.4)
    args = (jnp.asarray(dots), jnp.asarray(sq1), jnp.asarray(sq2), 12)
    k, a, s = (np.asarray(v) for v in dot_kernel_partials(kernel, *args))
    want = _arc_cosine_ntk(x1, x2, 2, 1.3, 0.4)
    np.testing.assert_allclose(k, want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(dot_kernel_rows(kernel, *args)), want, rtol=1e-12)

    def along(v: np.ndarray) -> np.ndarray:
        h = 1e-5
        return (_arc_cosine_ntk(x1 + h * v, x2, 2, 1.3, 0.4) - _arc_cosine_ntk(x1 - h * v, x2, 2, 1.3, 0.4)) / (2 * h)

    v = rng.standard_normal(x1.shape)
    v -= np.sum(v * x1, axis=1, keepdims=True) / sq1[:, None] * x1  # orthogonal to each row
    np.testing.assert_allclose(a * (v @ x2.T), along(v), rtol=1e-6)
    np.testing.assert_allclose(a * dots + 2 * s * sq1[:, None], along(x1), rtol=1e-6)


def test_the_angle_derivative_at_the_origin_is_zero_and_the_two_layer_gradient_at_a_zero_input_is_finite(
    rng, jax_strict
):
    """``angle``'s JVP at (s, c) = (0, 0) is 0, not 0/0: an all-zero input puts every entry of its
    row there, and the two-layer kernel (supp. eq. 29, Θ = (1/2 − θ/2π)·x·x', differentiated by
    autodiff through that JVP) then has the input gradient (1/4)·Σⱼ wⱼ x'ⱼ at x = 0 (θ = π/2 by
    neural-tangents' convention, and x·x' = 0 removes the angle's term), written out here in
    numpy (rtol 1e-13). Catches the JVP's denominator s² + c² left unguarded (NaN gradients)."""
    from ntkrobust.kernels._jax import jax, jnp
    from ntkrobust.kernels.relu import angle
    from ntkrobust.kernels.two_layer import two_layer_ntk

    zero = jnp.zeros(3)
    _, tangent = jax.jvp(angle, (zero, zero), (jnp.ones(3), jnp.asarray([1.0, -2.0, 0.0])))
    np.testing.assert_array_equal(np.asarray(tangent), 0.0)
    x1 = rng.standard_normal((3, 6))
    x1[0] = 0.0
    x2, w = rng.standard_normal((4, 6)), rng.standard_normal((3, 4))
    grad = jax.grad(lambda z: jnp.sum(jnp.asarray(w) * two_layer_ntk(z, jnp.asarray(x2))))(jnp.asarray(x1))
    np.testing.assert_allclose(np.asarray(grad)[0], 0.25 * w[0] @ x2, rtol=1e-13)


def test_the_rounding_threshold_of_the_sine_part_sits_where_its_docstring_puts_it():
    """``sine_part`` is exactly 0 where Σ₁₁Σ₂₂ − Σ₁₂² <= 64ε·Σ₁₁Σ₂₂ (identical inputs measure up to
    ~24ε there) and √(Σ₁₁Σ₂₂ − Σ₁₂²) above: at 32ε (either sign of Σ₁₂) it is 0, at 128ε and
    1024ε it is the root (rtol 0.05: the residual prod − Σ₁₂² carries ~1ε of rounding). Catches
    a threshold of 8ε, below the rounding it must absorb (the diagonal tests' inputs measure
    only ≤ 7ε), and one wider than documented."""
    from ntkrobust.kernels._jax import jnp
    from ntkrobust.kernels.relu import sine_part

    eps = float(np.finfo(np.float64).eps)
    prod = 4.0
    ulps = np.array([32.0, 32.0, 128.0, 128.0, 1024.0])
    cov = np.sqrt(prod - ulps * eps * prod) * np.array([1, -1, 1, -1, 1])
    got = np.asarray(sine_part(jnp.full(5, prod), jnp.asarray(cov)))
    np.testing.assert_array_equal(got[:2], 0.0)
    np.testing.assert_allclose(got[2:], np.sqrt(ulps[2:] * eps * prod), rtol=0.05)
