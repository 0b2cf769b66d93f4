"""Supp. eq. 29 in closed form against neural-tangents, and supp. eq. 9 against autodiff."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.two_layer import two_layer_dot_ntk, two_layer_ntk, two_layer_ntk_vjp, two_layer_stax_ntk

# Off the diagonal both routes agree to float64 rounding. On the diagonal (x = x') stax takes
# arccos of a cosine within rounding of 1, where its slope is infinite: ~√ε ≈ 1e-8 relative
# error, so stax's diagonal is compared at 1e-7. The closed form's diagonal is exact (θ = 0):
# ‖x‖²/2 to float64 rounding of ‖x‖² (measured ≤ 2e-15 on MNIST), tested at 1e-14.
OFF_DIAGONAL_RTOL = 1e-12
STAX_DIAGONAL_RTOL = 1e-7
EXACT_DIAGONAL_RTOL = 1e-14


@pytest.fixture
def points(rng):
    return jnp.asarray(rng.uniform(0, 1, size=(12, 20))), jnp.asarray(rng.standard_normal((9, 20)))


def test_closed_form_equals_stax_equivalent_in_float64(points, jax_strict):
    x1, x2 = points
    np.testing.assert_allclose(two_layer_ntk(x1, x2), two_layer_stax_ntk(x1, x2), rtol=OFF_DIAGONAL_RTOL, atol=1e-13)
    k_closed, k_stax = np.asarray(two_layer_ntk(x1, x1)), np.asarray(two_layer_stax_ntk(x1, x1))
    off = ~np.eye(12, dtype=bool)
    np.testing.assert_allclose(k_closed[off], k_stax[off], rtol=OFF_DIAGONAL_RTOL)
    np.testing.assert_allclose(np.diag(k_closed), np.diag(k_stax), rtol=STAX_DIAGONAL_RTOL)
    assert k_closed.dtype == np.float64


def test_closed_form_matches_eq29_by_hand():
    x = jnp.asarray([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    # angles 0, π/4, π/2 from the first point
    expected = [0.5 * 1.0, (0.5 - (math.pi / 4) / (2 * math.pi)) * 1.0, (0.5 - 0.25) * 0.0]
    np.testing.assert_allclose(two_layer_ntk(x[:1], x)[0], expected, rtol=1e-12)
    assert float(two_layer_ntk(x[2:], x[2:])[0, 0]) == pytest.approx(0.5 * 4.0)


def test_closed_form_vjp_equals_autodiff(points, rng):
    x1, x2 = points
    cot = jnp.asarray(rng.standard_normal((12, 9)))
    _, vjp = jax.vjp(lambda z: two_layer_ntk(z, x2), x1)
    np.testing.assert_allclose(two_layer_ntk_vjp(x1, x2, cot), vjp(cot)[0], rtol=1e-10, atol=1e-12)


def test_vjp_at_a_training_point_is_finite():
    # x parallel to x': the kernel has a kink; we take the symmetric subgradient, never NaN.
    x = jnp.asarray([[0.3, 0.4], [0.6, 0.8], [1.0, 0.0]])
    g = two_layer_ntk_vjp(x, x, jnp.ones((3, 3)))
    assert np.all(np.isfinite(np.asarray(g)))


def test_diagonal_is_exactly_half_the_squared_norm(rng, jax_strict):
    """Θ(x, x) = (1/2 − arccos(1)/(2π))‖x‖² = ‖x‖²/2, here in exact rational arithmetic; an
    arccos of the rounded cosine, 1 − O(ε), put 1e-9 to 1e-8 relative error on it."""
    x_np = rng.uniform(0, 1, size=(40, 64))
    x_np[x_np < 0.3] = 0.0
    exact = np.array([float(sum(Fraction(float(v)) ** 2 for v in row) / 2) for row in x_np])
    x = jnp.asarray(x_np)
    np.testing.assert_allclose(np.diag(jax.jit(two_layer_ntk)(x, x)), exact, rtol=EXACT_DIAGONAL_RTOL)
    flipped = np.asarray(jax.jit(two_layer_ntk)(x[:8], jnp.asarray(x_np[::-1].copy())))
    np.testing.assert_allclose(np.fliplr(flipped).diagonal(), exact[:8], rtol=EXACT_DIAGONAL_RTOL)
    sq = jnp.sum(x * x, axis=1)
    np.testing.assert_allclose(two_layer_dot_ntk(sq, sq, sq, 64), exact, rtol=EXACT_DIAGONAL_RTOL)


def test_vjp_at_and_near_a_training_point_equals_autodiff(points, rng):
    # At x = x' both take θ = 0 and the kink's symmetric subgradient; near x' both stay finite.
    x1, _ = points
    direction = rng.standard_normal(20)
    direction *= float(jnp.linalg.norm(x1[2])) / np.linalg.norm(direction)
    near = [x1[2] + h * direction for h in (1e-12, 1e-9, 1e-5)]
    x = jnp.concatenate([x1[:2], jnp.stack(near)])
    cot = jnp.asarray(rng.standard_normal((5, 12)))
    _, vjp = jax.vjp(lambda z: two_layer_ntk(z, x1), x)
    closed, auto = np.asarray(two_layer_ntk_vjp(x, x1, cot)), np.asarray(vjp(cot)[0])
    assert np.all(np.isfinite(closed)) and np.all(np.isfinite(auto))
    np.testing.assert_allclose(closed[:2], auto[:2], rtol=1e-12, atol=1e-14 * float(np.abs(auto).max()))
    np.testing.assert_allclose(closed[-1], auto[-1], rtol=1e-6, atol=1e-8 * float(np.abs(auto).max()))


def _eq29_numpy(s, p, q):
    """Θ(s, ‖x‖², ‖x'‖²) of eq. 29 in plain numpy float64."""
    return (0.5 - np.arccos(s / np.sqrt(p * q)) / (2 * np.pi)) * s


def test_dot_partials_equal_central_differences_of_eq29(rng):
    """∂Θ/∂(x·x') and ∂Θ/∂‖x‖² against numpy central differences of eq. 29 (step 1e-6 of each
    coordinate: truncation and rounding both near 1e-10 relative), away from the kink."""
    from ntkrobust.kernels.two_layer import two_layer_dot_partials

    a, b = rng.uniform(0.1, 1, size=(6, 5)), rng.standard_normal((6, 5))
    s, p, q = np.sum(a * b, axis=1), np.sum(a * a, axis=1), np.sum(b * b, axis=1)
    along_dot, along_sq1 = (
        np.asarray(v) for v in two_layer_dot_partials(jnp.asarray(s), jnp.asarray(p), jnp.asarray(q), 5)
    )
    hs, hp = 1e-6 * np.sqrt(p * q), 1e-6 * p
    fd_dot = (_eq29_numpy(s + hs, p, q) - _eq29_numpy(s - hs, p, q)) / (2 * hs)
    fd_sq1 = (_eq29_numpy(s, p + hp, q) - _eq29_numpy(s, p - hp, q)) / (2 * hp)
    np.testing.assert_allclose(along_dot, fd_dot, rtol=1e-7)
    np.testing.assert_allclose(along_sq1, fd_sq1, rtol=1e-6, atol=1e-9 * np.abs(fd_sq1).max())
    # and the module docstring's A + B, −B·u·‖x'‖/(2‖x‖)
    u = s / np.sqrt(p * q)
    big_a, big_b = 0.5 - np.arccos(u) / (2 * np.pi), u / (2 * np.pi * np.sqrt(1 - u * u))
    np.testing.assert_allclose(along_dot, big_a + big_b, rtol=1e-12)
    np.testing.assert_allclose(along_sq1, -big_b * u * np.sqrt(q) / (2 * np.sqrt(p)), rtol=1e-10, atol=1e-15)


def test_vjp_equals_the_docstring_gradient_in_numpy(rng):
    """Σ_j w_ij ∇Θ(x_i, x_j) with ∇ₓΘ(x, x') = (A + B)·x' − B·u·(‖x'‖/‖x‖)·x, in numpy."""
    x1, x2 = rng.uniform(0, 1, size=(4, 6)), rng.standard_normal((3, 6))
    w = rng.standard_normal((4, 3))
    n1, n2 = np.linalg.norm(x1, axis=1), np.linalg.norm(x2, axis=1)
    expected = np.zeros_like(x1)
    for i in range(4):
        for j in range(3):
            u = x1[i] @ x2[j] / (n1[i] * n2[j])
            big_a, big_b = 0.5 - np.arccos(u) / (2 * np.pi), u / (2 * np.pi * np.sqrt(1 - u * u))
            expected[i] += w[i, j] * ((big_a + big_b) * x2[j] - big_b * u * n2[j] / n1[i] * x1[i])
    got = np.asarray(two_layer_ntk_vjp(jnp.asarray(x1), jnp.asarray(x2), jnp.asarray(w)))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13 * np.abs(expected).max())
    assert np.asarray(two_layer_ntk(jnp.asarray(x1), jnp.asarray(x2))).shape == (4, 3)
