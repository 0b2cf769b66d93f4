"""The vectorised ReLU NTK recursion against neural-tangents stax, and the arithmetic arctangent."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntkrobust.kernels import ARCHITECTURES, get_architecture
from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.relu import angle

# Dense-input kernels with an independent route; the convolutional ones are tested in test_conv.py.
WITH_REFERENCE = [
    n
    for n in ARCHITECTURES
    if get_architecture(n).reference_kernel_fn is not None and get_architecture(n).layout == "flat"
]


def test_every_fully_connected_kernel_has_a_reference():
    assert {"fc1", "fc2", "fc3", "fc4", "fc5", "two-layer"} <= set(WITH_REFERENCE)


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_kernel_and_its_input_gradient_equal_stax_in_float64(name, rng, jax_strict):
    arch = get_architecture(name)
    x1 = jnp.asarray(rng.uniform(0, 1, size=(14, 30)))
    x2 = jnp.asarray(rng.uniform(0, 1, size=(11, 30)))
    fast, ref = arch.kernel_fn, arch.reference_kernel_fn
    np.testing.assert_allclose(fast(x1, x2, "ntk"), ref(x1, x2, "ntk"), rtol=1e-13)
    # x against itself: the diagonal carries the √ε rounding of any arc-cosine route (~1e-8).
    k_fast, k_ref = np.asarray(fast(x1, x1, "ntk")), np.asarray(ref(x1, x1, "ntk"))
    off = ~np.eye(14, dtype=bool)
    np.testing.assert_allclose(k_fast[off], k_ref[off], rtol=1e-13)
    np.testing.assert_allclose(np.diag(k_fast), np.diag(k_ref), rtol=1e-7)
    w = jnp.asarray(rng.standard_normal((14, 11)))
    g_fast = jax.grad(lambda z: jnp.sum(w * fast(z, x2, "ntk")))(x1)
    g_ref = jax.grad(lambda z: jnp.sum(w * ref(z, x2, "ntk")))(x1)
    np.testing.assert_allclose(g_fast, g_ref, rtol=1e-11, atol=1e-14 * float(jnp.abs(g_ref).max()))


def test_angle_matches_arctan2_to_rounding():
    c = np.concatenate([np.linspace(-1, 1, 20001), [1 - 1e-15, -1 + 1e-15, 1e-300, -1e-300, 0.66, -0.66]])
    s = np.sqrt(np.maximum(1 - c * c, 0))
    got = np.asarray(angle(jnp.asarray(s), jnp.asarray(c)))
    np.testing.assert_allclose(got, np.arctan2(s, c), rtol=0, atol=4.5e-16)
    scaled = np.asarray(angle(jnp.asarray(3e5 * s), jnp.asarray(3e5 * c)))
    np.testing.assert_allclose(scaled, np.arctan2(s, c), rtol=0, atol=4.5e-16)
    assert float(angle(jnp.asarray(0.0), jnp.asarray(0.0))) == pytest.approx(math.pi / 2)
    assert float(angle(jnp.asarray(1.0), jnp.asarray(0.0))) == pytest.approx(math.pi / 2)
