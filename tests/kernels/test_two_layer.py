"""Supp. eq. 29 in closed form against neural-tangents, and supp. eq. 9 against autodiff."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.two_layer import two_layer_ntk, two_layer_ntk_vjp, two_layer_stax_ntk

# Off the diagonal both routes agree to float64 rounding. On the diagonal (x = x') arccos is
# evaluated at 1 − O(ε), where its slope is infinite: any route carries ~√ε ≈ 1e-8 relative
# error there, so diagonal entries are compared at 1e-7.
OFF_DIAGONAL_RTOL = 1e-12
DIAGONAL_RTOL = 1e-7


@pytest.fixture
def points(rng):
    return jnp.asarray(rng.uniform(0, 1, size=(12, 20))), jnp.asarray(rng.standard_normal((9, 20)))


def test_closed_form_equals_stax_equivalent_in_float64(points, jax_strict):
    x1, x2 = points
    np.testing.assert_allclose(two_layer_ntk(x1, x2), two_layer_stax_ntk(x1, x2), rtol=OFF_DIAGONAL_RTOL, atol=1e-13)
    k_closed, k_stax = np.asarray(two_layer_ntk(x1, x1)), np.asarray(two_layer_stax_ntk(x1, x1))
    off = ~np.eye(12, dtype=bool)
    np.testing.assert_allclose(k_closed[off], k_stax[off], rtol=OFF_DIAGONAL_RTOL)
    np.testing.assert_allclose(np.diag(k_closed), np.diag(k_stax), rtol=DIAGONAL_RTOL)
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
