"""The vectorised ReLU NTK recursion against neural-tangents stax and, on the diagonal, against
exact arithmetic; the arithmetic arctangent."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from ntkrobust.kernels import ARCHITECTURES, get_architecture
from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.relu import angle, sine_part

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
    # x against itself: stax's diagonal takes the arc-cosine of a cosine within rounding of 1
    # (~√ε ≈ 1e-8 rad), so it is off by up to ~1e-8; the exact diagonal is tested below.
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


# On the diagonal the angle is 0 at every layer and the recursion is rational; Fraction
# evaluates it exactly from the float64 inputs and hyperparameters. The fast route's only error
# there is float64 rounding: the dot products (a few ε for d = 64), then a few operations per
# layer (measured ≤ 1.1e-15 at depth 5 here, ≤ 2e-15 on MNIST), so 1e-14 (~45ε) is float64
# precision with margin. An arc-cosine of the rounded cosine, 1 − O(ε), gives ~√ε ≈ 1e-8 rad
# and 1e-10 to 1e-8 relative error: what this test caught before ``sine_part``.
DIAGONAL_RTOL = 1e-14
FC_NAMES = ["fc1", "fc2", "fc3", "fc4", "fc5"]


def _exact_fc_diagonal(x: np.ndarray, depth: int, W_std: float, b_std: float) -> np.ndarray:
    """Θ(x, x) of FC{depth} in exact rational arithmetic (θ = 0: κ = 1/2 and s = 0 at every layer)."""
    w2, b2 = Fraction(W_std) ** 2, Fraction(b_std) ** 2
    out = []
    for row in x:
        nngp = w2 * sum(Fraction(float(v)) ** 2 for v in row) / len(row) + b2
        ntk = nngp
        for _ in range(depth):
            nngp = w2 * nngp / 2 + b2
            ntk = w2 * ntk / 2 + nngp
        out.append(float(ntk))
    return np.array(out)


@pytest.fixture
def digits_like(rng):
    """40 points in [0, 1]^64 with 0s, like the digits / MNIST pixels."""
    x = rng.uniform(0, 1, size=(40, 64))
    x[x < 0.3] = 0.0
    return x


@pytest.mark.parametrize("name", FC_NAMES)
def test_diagonal_equals_exact_arithmetic(name, digits_like, jax_strict):
    arch = get_architecture(name)
    hp = arch.hyperparameters
    exact = _exact_fc_diagonal(digits_like, hp["depth"], hp["W_std"], hp["b_std"])
    x = jnp.asarray(digits_like)
    gram = jax.jit(lambda a, b: arch.kernel_fn(a, b, "ntk"))
    np.testing.assert_allclose(np.diag(gram(x, x)), exact, rtol=DIAGONAL_RTOL)
    # identical inputs in separate arrays (a batched Gram block; a test point equal to a training point)
    flipped = np.asarray(gram(x[:8], jnp.asarray(digits_like[::-1].copy())))
    np.testing.assert_allclose(np.fliplr(flipped).diagonal(), exact[:8], rtol=DIAGONAL_RTOL)
    # the dots route (KernelMachine.output_jacobian) on x·x = ‖x‖² = ‖x'‖²
    sq = jnp.sum(x * x, axis=1)
    dots_route = jax.jit(arch.dot_kernel_fn, static_argnums=3)(sq, sq, sq, x.shape[1])
    np.testing.assert_allclose(dots_route, exact, rtol=DIAGONAL_RTOL)


def test_float32_diagonal_is_exact_to_float32_rounding(digits_like, jax_strict):
    # The arc-cosine route was off by ~√ε₃₂ ≈ 3e-4 here; float32 rounding alone is a few ε₃₂
    # (measured ≤ 4ε₃₂).
    arch = get_architecture("fc3")
    hp = arch.hyperparameters
    exact = _exact_fc_diagonal(digits_like, hp["depth"], hp["W_std"], hp["b_std"])
    x = jnp.asarray(digits_like, dtype=jnp.float32)
    k = arch.kernel_fn(x, x, "ntk")
    assert k.dtype == jnp.float32
    np.testing.assert_allclose(np.diag(np.asarray(k, dtype=np.float64)), exact, rtol=32 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("name", ["fc1", "fc3"])
def test_input_gradient_at_and_near_a_training_point(name, digits_like, rng, jax_strict):
    """Attacks differentiate Θ(x, X) in x: at x = x' (the kink) the gradient is the symmetric
    subgradient, neural-tangents' convention; near x' it stays finite on both sides of the
    threshold below which ``sine_part`` takes the angle as 0 (~1.2e-7 rad)."""
    arch = get_architecture(name)
    train = jnp.asarray(digits_like[:10])
    direction = rng.standard_normal(64)
    direction *= np.linalg.norm(digits_like[2]) / np.linalg.norm(direction)
    steps = [1e-12, 1e-9, 1e-7, 1e-5]
    test = jnp.asarray(np.stack([digits_like[0], digits_like[1]] + [digits_like[2] + h * direction for h in steps]))
    w = jnp.asarray(rng.standard_normal((test.shape[0], 10)))
    g_fast = np.asarray(jax.grad(lambda z: jnp.sum(w * arch.kernel_fn(z, train, "ntk")))(test))
    g_ref = np.asarray(jax.grad(lambda z: jnp.sum(w * arch.reference_kernel_fn(z, train, "ntk")))(test))
    assert np.all(np.isfinite(g_fast))
    # at x = x' stax's gradient carries its √ε-rounded angle (~1e-9 relative)
    np.testing.assert_allclose(g_fast[:2], g_ref[:2], rtol=1e-6, atol=1e-9 * float(np.abs(g_ref).max()))
    # far enough from x' for the angle to be geometry, not rounding, both routes agree again
    np.testing.assert_allclose(g_fast[-1], g_ref[-1], rtol=1e-3, atol=1e-4 * float(np.abs(g_ref[-1]).max()))
    np.testing.assert_allclose(
        arch.kernel_fn(test, train, "ntk"), arch.reference_kernel_fn(test, train, "ntk"), rtol=1e-7
    )


def test_sine_part_is_exactly_zero_within_rounding_of_parallel():
    prod = jnp.asarray([4.0, 4.0, 4.0, 4.0, 0.0, 4.0])
    cov = jnp.asarray([2.0, 2.0 * (1 - 8e-16), -2.0 * (1 - 8e-16), 2.0 * (1 - 1e-12), 0.0, 1.0])
    got = np.asarray(sine_part(prod, cov))
    assert got[0] == got[1] == got[2] == got[4] == 0.0  # cos θ = ±(1 − 8e-16): rounding, θ = 0 or π
    np.testing.assert_allclose(got[3], math.sqrt(4.0 - (2.0 * (1 - 1e-12)) ** 2), rtol=1e-3)  # θ ≈ 1.4e-6 rad
    assert got[5] == pytest.approx(math.sqrt(3.0), rel=1e-15)
    assert float(angle(jnp.asarray(got[1]), cov[1])) == 0.0
    assert float(angle(jnp.asarray(got[2]), cov[2])) == math.pi
