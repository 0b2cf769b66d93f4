"""Minimised cases and a seeded regression sweep from differential fuzzing of the analytic kernels.

The fuzzing (throwaway scripts, 2026-12-06) drew fully connected ReLU kernels of depth 1-5,
W_std in [0.5, 3], b_std in {0, 1e-4, [0.05, 2]}, input dimension 1-64 and 1-12 points per side,
and convolutional kernels of depth 1-3 on 1-8 pixel sides with 1-3 channels, under the stresses
Gaussian, duplicated rows, a row shared by both sets, scaled copies (x, c·x), antipodal pairs,
near-parallel pairs (x + 1e-9 to 1e-4 noise), orthogonal pairs, all-zero rows, norms of 1e-8 and
1e8 (and mixed), zeroed pixel blocks and single-pixel images. It compared, in float64,
``fully_connected_ntk``, the dot route (``dot_kernel_rows``), the entry route
(``fully_connected_entry_ntk``), ``compute_gram`` and ``convolutional_ntk`` against stax's
``kernel_fn`` (relative 1e-9 of the largest entry) and, where they differed, against a 40-digit
mpmath recursion; the input gradients (``relu_step``'s VJP through ``jax.grad``,
``relu_step_forward``'s JVP along x·x' and ‖x‖², ``dot_kernel_partials``, the kernel machine's
``loss_gradient`` for fc and two-layer machines) against ``jax.grad``/``jax.jvp`` of a plain
``jnp.arctan2`` recursion (relative 1e-7 of the largest entry: the arctangent's closed-form
derivative against autodiff's, amplified by 1/r near a kink) and, at kinks where that reference
is NaN, against central differences of the kernel (relative 1e-4 of Σ|terms|: the difference
quotient's O(h) error at a cone-shaped kink). 172 fully connected draws (~2,300 comparisons), 82
convolutional draws (~350) and 376 kernel machines (fc and two-layer, ~750): ~3,400 comparisons.

Found:
- REAL: absolute 1e-30 floors in ``kernels.relu`` (``angle``'s JVP, ``safe_sqrt``'s JVP, the
  ``root > 1e-30`` kink tests of ``relu_step``'s VJP and ``relu_step_forward``'s JVP) make the
  scale-free kernels' derivatives scale-dependent: the two-layer machine's ``gradient="autodiff"``
  route is 24-100 % off for inputs of norm ~1e-8 (its closed form is right), fully connected
  gradients with b_std = 0 for norms ~1e-14. Fixed the same day (the floors became exact zero tests); the
  tests marked "failed before the fix" show it.
- reference artefacts: stax's K(x, x) (the diagonal, duplicated and shared rows, scaled copies)
  is off by up to ~1e-8, and so are near-parallel pairs closer than its rounding; the library is
  exact there (mpmath), since ``sine_part`` snaps θ to 0. stax gives K(x, −x) = −6.6e-10 where it
  is 0 (single-pixel images, b_std = 0), and its autodiff input gradient of convolutional kernels
  of ~1e-8 images is up to 40 % off its own central differences (the library's agrees with them).
- documented trade-off: a distinct pair within θ < √(64ε) ≈ 1.2e-7 rad is snapped to θ = 0 too;
  its kernel is then off by up to ~θ/π per layer (6.7e-8 measured at depth 5, where stax is
  within 2e-9) and its gradient is the kink's symmetric subgradient. With b_std > 0 every pair of
  inputs of norm ≲ 1e-7·b_std lands there (both feature vectors are ~the bias).
- undefined points: at kinks (θ = 0 or π) the library returns the symmetric subgradient (the
  central difference); at x = 0 with b_std = 0 (a cone point: K(0, x') = 0) it returns stax's
  finite value, which for depth > 1 is not the central difference (none is linear there).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntkrobust.attacks.threat import looks_channels_last
from ntkrobust.kernels import compute_gram, fit_kernel_machine, get_architecture
from ntkrobust.kernels._jax import jax, jnp, stax
from ntkrobust.kernels.architectures import convolutional, fully_connected
from ntkrobust.kernels.conv import convolutional_ntk
from ntkrobust.kernels.relu import (
    dot_kernel_partials,
    fully_connected_dot_kernel_fn,
    fully_connected_entry_ntk,
    fully_connected_ntk,
    pairwise_dots,
)
from ntkrobust.kernels.two_layer import two_layer_dot_ntk, two_layer_dot_partials, two_layer_ntk, two_layer_ntk_vjp


def _stax_fc(depth: int, W: float, b: float):  # type: ignore[no-untyped-def]
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(8, W_std=W, b_std=b, parameterization="ntk"), stax.Relu()]
    layers.append(stax.Dense(1, W_std=W, b_std=b, parameterization="ntk"))
    return stax.serial(*layers)[2]


def _stax_conv(depth: int, W: float, b: float):  # type: ignore[no-untyped-def]
    layers = []
    for _ in range(depth):
        layers += [stax.Conv(8, (3, 3), padding="SAME", W_std=W, b_std=b, parameterization="ntk"), stax.Relu()]
    layers += [stax.Flatten(), stax.Dense(1, W_std=W, b_std=b, parameterization="ntk")]
    return stax.serial(*layers)[2]


def _arctan2_fc(x1, x2, depth, W, b):  # type: ignore[no-untyped-def]
    """The recursion with ``jnp.arctan2``: differentiable by autodiff away from kinks."""
    w2, b2, d = W * W, b * b, x1.shape[1]
    S = w2 * pairwise_dots(x1, x2) / d + b2
    q1, q2 = w2 * jnp.sum(x1 * x1, axis=1) / d + b2, w2 * jnp.sum(x2 * x2, axis=1) / d + b2
    T = S
    for _ in range(depth):
        P = q1[:, None] * q2[None, :]
        r = jnp.sqrt(jnp.maximum(P - S * S, 0.0))
        kappa = 0.5 - jnp.arctan2(r, S) / (2 * math.pi)
        S, T = r / (2 * math.pi) + kappa * S, kappa * T
        q1, q2 = w2 * q1 / 2 + b2, w2 * q2 / 2 + b2
        S = w2 * S + b2
        T = w2 * T + S
    return T


def _rel(a, b) -> float:  # type: ignore[no-untyped-def]
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _diagonal_recursion(sq: float, d: int, depth: int, W: float, b: float) -> float:
    """K(x, x) (θ = 0, κ = 1/2 at every layer) from ‖x‖² alone, in plain Python floats."""
    w2, b2 = W * W, b * b
    S = w2 * sq / d + b2
    T = S
    for _ in range(depth):
        S, T = S / 2, T / 2
        S = w2 * S + b2
        T = w2 * T + S
    return T


# -- the real bug: absolute floors in scale-free derivatives -----------------------------------


def test_two_layer_autodiff_partials_are_scale_free():
    """Failed before the fix (absolute floors in kernels.relu). Minimised: x = (1e-8, 0), x' = (1e-8, 1e-8), θ = 45°.

    ‖x‖²‖x'‖² = 2e-32 < 1e-30: ``angle``'s JVP divided by max(s² + c², 1e-30) and ``safe_sqrt``'s
    JVP gave 0 below 1e-30, so the forward-mode partials of eq. 29 (the two-layer machine's
    ``gradient="autodiff"`` route) were 24 % (along x·x') and 100 % (along ‖x‖²) off the closed
    form, which has no floor. At x = (1, 0), x' = (1, 1) both routes agree to rounding."""
    for scale in (1.0, 1e-8):
        dots, sq1, sq2 = (jnp.asarray([[v * scale**2]]) for v in (1.0, 1.0, 2.0))
        closed = two_layer_dot_partials(dots, sq1, sq2, 2)
        along_dots = jax.jvp(lambda t, q=sq1, r=sq2: two_layer_dot_ntk(t, q, r, 2), (dots,), (jnp.ones_like(dots),))[1]
        along_sq1 = jax.jvp(lambda q, t=dots, r=sq2: two_layer_dot_ntk(t, q, r, 2), (sq1,), (jnp.ones_like(sq1),))[1]
        np.testing.assert_allclose(along_dots, closed[0], rtol=1e-12, err_msg=f"scale {scale}")
        np.testing.assert_allclose(along_sq1, closed[1], rtol=1e-12, err_msg=f"scale {scale}")


@pytest.mark.parametrize("scale", [1e-16, 1e-20, 1e-100, 1e100])
def test_two_layer_closed_form_vjp_is_scale_free(scale, rng):
    """Failed before the fix of 2026-12-06. Θ(cx, x') = c·Θ(x, x') (eq. 29 is homogeneous of degree
    1 in x), so ∇ₓΘ at cx is ∇ₓΘ at x, and so is the closed-form VJP (supp. eq. 9) of the machine's
    ``gradient="closed-form"``. ``two_layer_ntk_vjp`` floored ‖x‖² at 1e-30 and tested its kink
    by r <= 1e-7·‖x‖‖x'‖ with those floored norms: inputs of norm below 1e-15 got gradients
    39-62 % off (autodiff of the kernel: exact). With a zero row and a row parallel to a row of
    x' (kinks), checked also against autodiff of ``two_layer_ntk``."""
    x1, x2, cotangent = rng.random((3, 6)), rng.random((4, 6)), rng.standard_normal((3, 4))
    x1[1], x1[2] = 0.0, 3.0 * x2[0]
    one = np.asarray(two_layer_ntk_vjp(jnp.asarray(x1), jnp.asarray(x2), jnp.asarray(cotangent)))
    scaled = jnp.asarray(scale * x1)
    got = np.asarray(two_layer_ntk_vjp(scaled, jnp.asarray(x2), jnp.asarray(cotangent)))
    np.testing.assert_allclose(got, one, rtol=0, atol=1e-14 * np.abs(one).max())
    by_autodiff = jax.grad(lambda z: jnp.sum(jnp.asarray(cotangent) * two_layer_ntk(z, jnp.asarray(x2))))(scaled)
    np.testing.assert_allclose(got, np.asarray(by_autodiff), rtol=0, atol=1e-12 * np.abs(one).max())


def test_two_layer_machine_loss_gradient_routes_agree_on_tiny_inputs(rng):
    """Failed before the fix (absolute floors in kernels.relu). A two-layer machine on inputs of norm ~1e-8: its
    ``loss_gradient`` by ``gradient="autodiff"`` (forward mode through ``angle`` and ``sine_part``)
    was 42 % off the ``closed-form`` one (supp. eq. 9) and off autodiff of ``jnp.arctan2``."""
    x_train = 1e-8 * rng.standard_normal((6, 4))
    y = np.array([0, 1, 0, 1, 1, 0])
    x = 1e-8 * rng.standard_normal((3, 4))
    index = np.array([0, 1, 1])
    grads = []
    for gradient in ("autodiff", "closed-form"):
        machine = fit_kernel_machine(get_architecture("two-layer"), x_train, y, gradient=gradient)
        grads.append(np.asarray(machine.loss_gradient(x, index)))
    np.testing.assert_allclose(grads[0], grads[1], rtol=0, atol=1e-10 * np.abs(grads[1]).max())


@pytest.mark.parametrize("depth, W", [(1, 1.0), (5, 0.5)])
def test_fully_connected_gradients_are_homogeneous_without_bias(depth, W, rng):
    """Failed before the fix (depth 5; beyond the fuzzed 1e-8 norms). With b_std = 0 the
    kernel is homogeneous, Θ(cx, cx') = c²Θ(x, x'), so its input gradient scales by c. At c = 1e-14
    the last layers' r = √(Σ₁₁Σ₂₂ − Σ²) fell below the ``root > 1e-30`` kink test of
    ``relu_step``'s VJP and ``relu_step_forward``'s JVP, which then dropped the 1/r terms: 25 %
    (VJP) and 52 % (JVP) off."""
    x1, x2 = rng.standard_normal((3, 4)), rng.standard_normal((4, 4))
    w = jnp.asarray(rng.standard_normal((3, 4)))

    def vjp_and_jvp(c: float) -> tuple[np.ndarray, np.ndarray]:
        a, b = jnp.asarray(c * x1), jnp.asarray(c * x2)
        g = jax.grad(lambda z: jnp.sum(w * fully_connected_ntk(z, b, depth=depth, W_std=W, b_std=0.0)))(a)
        dots, sq1, sq2 = pairwise_dots(a, b), jnp.sum(a * a, axis=1)[:, None], jnp.sum(b * b, axis=1)[None, :]

        def entry(t):  # type: ignore[no-untyped-def]
            return fully_connected_entry_ntk(t, sq1, sq2, 4, depth=depth, W_std=W, b_std=0.0)

        return np.asarray(g), np.asarray(jax.jvp(entry, (dots,), (jnp.ones_like(dots),))[1])

    (g1, j1), (g_tiny, j_tiny) = vjp_and_jvp(1.0), vjp_and_jvp(1e-14)
    np.testing.assert_allclose(g_tiny / 1e-14, g1, rtol=1e-10, atol=1e-12 * np.abs(g1).max())
    np.testing.assert_allclose(j_tiny, j1, rtol=1e-10, atol=1e-12 * np.abs(j1).max())  # ∂Θ/∂(x·x') is scale-free


# -- reference artefacts: identical inputs --------------------------------------------------------


def test_identical_and_parallel_inputs_are_exact_where_stax_rounds(rng):
    """Duplicated rows, a row shared by both sets and scaled copies have θ = 0 at every layer.
    stax takes the arc-cosine of a cosine within rounding of 1 (its K(x, x) was up to 8.9e-9 off
    the 40-digit value in the fuzzing); the library's entries equal the κ = 1/2 recursion to
    rounding, on every route (kernel, dot rows, entry, ``compute_gram``), with b_std = 0 also
    K(x, c·x) = c·K(x, x)."""
    depth, W, d = 4, 2.97, 42
    x = rng.standard_normal((3, d))
    x1 = np.concatenate([x, x[:1]])  # a duplicated row
    for b in (0.0, 0.7):
        exact = np.array([_diagonal_recursion(float(np.sum(r * r)), d, depth, W, b) for r in x1])
        a = jnp.asarray(x1)
        sq = jnp.sum(a * a, axis=1)
        routes = {
            "kernel": fully_connected_ntk(a, a, depth=depth, W_std=W, b_std=b),
            "dot rows": fully_connected_dot_kernel_fn(depth, W, b)(
                pairwise_dots(a, a), *jnp.broadcast_arrays(sq[:, None], sq[None, :]), d
            ),
            "entry": fully_connected_entry_ntk(
                pairwise_dots(a, a), sq[:, None], sq[None, :], d, depth=depth, W_std=W, b_std=b
            ),
            "compute_gram": compute_gram(fully_connected(depth, W_std=W, b_std=b), x1),
        }
        for name, k in routes.items():
            k = np.asarray(k)
            np.testing.assert_allclose(np.diag(k), exact, rtol=1e-14, err_msg=name)
            np.testing.assert_allclose(k[0, 3], exact[0], rtol=1e-14, err_msg=name)
    c = 37.5
    k = np.asarray(fully_connected_ntk(jnp.asarray(x), jnp.asarray(c * x), depth=depth, W_std=W, b_std=0.0))
    exact = np.array([_diagonal_recursion(float(np.sum(r * r)), d, depth, W, 0.0) for r in x])
    np.testing.assert_allclose(np.diag(k), c * exact, rtol=1e-14)


def test_antipodal_and_zero_inputs_without_bias():
    """x and −x without bias (θ = π at the first layer): Θ = 0 for FC1, exactly. An all-zero input
    without bias has Σ₁₁ = 0 (an undefined angle, π/2 by convention): its row is 0, as stax's, and
    its input gradient (x = 0 is a cone point of a degree-1 homogeneous function) is finite and
    equal to stax's."""
    x = jnp.asarray([[1.0, -2.0, 0.5]])
    assert float(fully_connected_ntk(x, -x, depth=1, W_std=1.5, b_std=0.0)[0, 0]) == 0.0
    x1 = jnp.asarray([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    x2 = jnp.asarray([[0.0, 0.0, 0.0], [0.3, 1.0, 2.0]])
    for depth in (1, 3):
        ref = _stax_fc(depth, 1.5, 0.0)
        k = fully_connected_ntk(x1, x2, depth=depth, W_std=1.5, b_std=0.0)
        np.testing.assert_allclose(k, ref(x1, x2, "ntk"), rtol=1e-14, atol=0)
        assert float(k[0, 0]) == float(k[0, 1]) == float(k[1, 0]) == 0.0
        g = jax.grad(lambda z, n=depth: jnp.sum(fully_connected_ntk(z, x2, depth=n, W_std=1.5, b_std=0.0)))(x1)
        g_ref = jax.grad(lambda z, f=ref: jnp.sum(f(z, x2, "ntk")))(x1)
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, g_ref, rtol=1e-13)


def test_convolutional_antipodal_single_pixel_images_are_zero():
    """Minimised from a 4x5x1 draw: images with one nonzero pixel of opposite signs, b_std = 0, CONV1.
    Every pixel has θ = π (or Σ₁₁ = 0), so Θ = 0; stax returned −6.6e-10 (relative error 1 of a
    zero entry), the library 0 to rounding of K(x, x)."""
    x1, x2 = np.zeros((1, 4, 5, 1)), np.zeros((1, 4, 5, 1))
    x1[0, 3, 4, 0], x2[0, 3, 4, 0] = 0.5944478683541348, -0.9366009568765294
    a, c = jnp.asarray(x1), jnp.asarray(x2)
    k = float(convolutional_ntk(a, c, depth=1, W_std=2.3645, b_std=0.0)[0, 0])
    k11 = float(convolutional_ntk(a, a, depth=1, W_std=2.3645, b_std=0.0)[0, 0])
    k22 = float(convolutional_ntk(c, c, depth=1, W_std=2.3645, b_std=0.0)[0, 0])
    assert abs(k) <= 1e-15 * math.sqrt(k11 * k22)


# -- the documented trade-off: near-parallel pairs --------------------------------------------------


@pytest.mark.parametrize("theta", [1e-9, 1e-8, 1.1e-7])
def test_near_parallel_pairs_stay_within_the_documented_bound(theta):
    """A pair at angle θ below √(64ε) ≈ 1.2e-7 is taken as parallel (``sine_part``): the kernel is
    then off by at most ~θ/π relative per layer (``sine_part``'s docstring). Minimised from a depth-5
    draw that was 6.7e-8 off the 40-digit value where stax was within 2e-9; at θ ≤ 1e-8 stax's own
    rounding (~1e-8 rad) is the larger error."""
    x1 = jnp.asarray([[1.0, 0.0]])
    x2 = jnp.asarray([[math.cos(theta), math.sin(theta)]])
    for depth in (1, 5):
        k = float(fully_connected_ntk(x1, x2, depth=depth, W_std=2.29, b_std=0.0)[0, 0])
        ref = float(_stax_fc(depth, 2.29, 0.0)(x1, x2, "ntk")[0, 0])
        assert abs(k - ref) <= depth * (theta / math.pi + 2e-8) * abs(ref)


# -- undefined points: kinks get the symmetric subgradient -------------------------------------------


@pytest.mark.parametrize("pair", ["identical", "scaled", "antipodal", "zero_row"])
def test_kink_gradients_equal_central_differences(pair, rng):
    """At θ = 0 or π (x' = x, x' = c·x, x' = −x) and at an all-zero row, Θ has a cone-shaped kink
    and no gradient; stax's and ``jnp.arctan2``'s autodiff give NaN there. The library's VJP
    (``relu_step``), JVP (``relu_step_forward``) and ``dot_kernel_partials`` give the symmetric
    subgradient, which is the central difference's limit: they agree with it to O(h)."""
    depth, W, b, d = 3, 1.7, (0.0 if pair == "antipodal" else 0.4), 5
    x1 = rng.standard_normal((2, d))
    x2 = rng.standard_normal((3, d))
    x2[1] = {"identical": 1.0, "scaled": 3.0, "antipodal": -1.0, "zero_row": 0.0}[pair] * x1[0]
    if pair == "zero_row":
        x1[0] = 0.0
    a, c = jnp.asarray(x1), jnp.asarray(x2)
    w = jnp.asarray(rng.standard_normal((2, 3)))
    g = np.asarray(jax.grad(lambda z: jnp.sum(w * fully_connected_ntk(z, c, depth=depth, W_std=W, b_std=b)))(a))
    v = rng.standard_normal(x1.shape)
    h = 1e-6

    def f(t: float) -> float:
        return float(jnp.sum(w * _stax_fc(depth, W, b)(a + t * v, c, "ntk")))

    fd = (f(h) - f(-h)) / (2 * h)
    assert abs(float(np.sum(g * v)) - fd) <= 1e-5 * float(np.sum(np.abs(g * v)))
    # the JVP route and the VJP route give the same partials entry by entry
    dots, sq1, sq2 = pairwise_dots(a, c), jnp.sum(a * a, axis=1), jnp.sum(c * c, axis=1)
    _, along_dots, along_sq1 = dot_kernel_partials(fully_connected_dot_kernel_fn(depth, W, b), dots, sq1, sq2, d)

    def entry(t, q):  # type: ignore[no-untyped-def]
        return fully_connected_entry_ntk(t, q, sq2[None, :], d, depth=depth, W_std=W, b_std=b)

    q = jnp.broadcast_to(sq1[:, None], dots.shape)
    np.testing.assert_allclose(
        jax.jvp(entry, (dots, q), (jnp.ones_like(dots), jnp.zeros_like(q)))[1], along_dots, rtol=1e-12
    )
    np.testing.assert_allclose(
        jax.jvp(entry, (dots, q), (jnp.zeros_like(dots), jnp.ones_like(q)))[1], along_sq1, rtol=1e-12
    )


# -- the seeded sweep ---------------------------------------------------------------------------------

_STRESSES = ("gauss", "dup", "shared", "scaled", "antipodal", "orth", "zero", "big", "small")


def _draw(rng: np.random.Generator, stress: str, d: int, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    x1, x2 = rng.standard_normal((n1, d)), rng.standard_normal((n2, d))
    i, j = int(rng.integers(n1)), int(rng.integers(n2))
    if stress == "dup" and n1 > 1:
        x1[(i + 1) % n1] = x1[i]
    elif stress == "shared":
        x2[j] = x1[i]
    elif stress == "scaled":
        x2[j] = 10 ** rng.uniform(-3, 3) * x1[i]
    elif stress == "antipodal":
        x2[j] = -(10 ** rng.uniform(-1, 1)) * x1[i]
    elif stress == "orth" and d > 1:
        x2[j] -= (x2[j] @ x1[i]) / (x1[i] @ x1[i]) * x1[i]
    elif stress == "zero":
        x1[i] = 0.0
    elif stress in ("big", "small"):
        scale = 1e8 if stress == "big" else 1e-8
        x1 *= scale
        x2[j] *= scale
    return x1, x2


@pytest.mark.parametrize("seed", range(9))
def test_seeded_sweep_fully_connected(seed):
    """One draw per stress: every route of the kernel within 1e-9 of stax's largest entry, off the
    θ = 0 entries (stax's rounding, ~1e-8; exact there: see above), and the VJP within 1e-7 of
    autodiff of the ``jnp.arctan2`` recursion wherever that is finite (off kinks)."""
    rng = np.random.default_rng(1000 + seed)
    depth, W = int(rng.integers(1, 6)), float(rng.uniform(0.5, 3))
    b = float(rng.choice([0.0, 1e-4, rng.uniform(0.05, 2)]))
    d, n1, n2 = int(rng.integers(1, 65)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    x1, x2 = _draw(rng, _STRESSES[seed], d, n1, n2)
    a, c = jnp.asarray(x1), jnp.asarray(x2)
    ref = np.asarray(_stax_fc(depth, W, b)(a, c, "ntk"))
    n1_, n2_ = np.linalg.norm(x1, axis=1)[:, None], np.linalg.norm(x2, axis=1)[None, :]
    parallel = np.isclose(np.abs(x1 @ x2.T), n1_ * n2_, rtol=1e-12, atol=0)
    sq1, sq2 = jnp.sum(a * a, axis=1), jnp.sum(c * c, axis=1)
    routes = {
        "kernel": fully_connected_ntk(a, c, depth=depth, W_std=W, b_std=b),
        "entry": fully_connected_entry_ntk(
            pairwise_dots(a, c), sq1[:, None], sq2[None, :], d, depth=depth, W_std=W, b_std=b
        ),
    }
    if seed % 2 == 0:  # its own jitted program per architecture: half the draws keep the sweep short
        routes["compute_gram"] = compute_gram(fully_connected(depth, W_std=W, b_std=b), x1, x2)
    scale = np.abs(ref).max()
    for name, k in routes.items():
        err = np.abs(np.asarray(k) - ref)[~parallel]
        assert not err.size or err.max() <= 1e-9 * scale, (name, err.max() / scale)
    w = jnp.asarray(rng.standard_normal((n1, n2)))
    g = jax.grad(lambda z, y: jnp.sum(w * fully_connected_ntk(z, y, depth=depth, W_std=W, b_std=b)), (0, 1))(a, c)
    g_ref = jax.grad(lambda z, y: jnp.sum(w * _arctan2_fc(z, y, depth, W, b)), (0, 1))(a, c)
    assert all(np.all(np.isfinite(np.asarray(gi))) for gi in g)
    if all(np.all(np.isfinite(np.asarray(gi))) for gi in g_ref):
        assert max(_rel(g[0], g_ref[0]), _rel(g[1], g_ref[1])) <= 1e-7


@pytest.mark.parametrize("seed", range(3))
def test_seeded_sweep_convolutional(seed):
    """Small images (sides 1-4, 1-3 channels, depth 1-2) with a shared image, a zeroed pixel block or
    an all-zero image: ``convolutional_ntk`` and ``compute_gram`` within 1e-9 of stax (off the
    identical pairs), and the input gradient within 1e-7 of stax's where that is finite."""
    rng = np.random.default_rng(2000 + seed)
    depth, W = int(rng.integers(1, 3)), float(rng.uniform(0.5, 3))
    b = float(rng.choice([0.0, rng.uniform(0.05, 2)]))
    h, w_, ch = int(rng.integers(1, 5)), int(rng.integers(1, 5)), int(rng.integers(1, 4))
    x1, x2 = rng.standard_normal((3, h, w_, ch)), rng.standard_normal((2, h, w_, ch))
    identical = np.zeros((3, 2), dtype=bool)
    if seed == 0:
        x2[1] = x1[2]
        identical[2, 1] = True
    elif seed == 1:
        x1[:, : max(h // 2, 1)] = 0.0
        x2[:, : max(h // 2, 1)] = 0.0
    else:
        x1[0] = 0.0
    a, c = jnp.asarray(x1), jnp.asarray(x2)
    kf = _stax_conv(depth, W, b)
    ref = np.asarray(kf(a, c, "ntk"))
    scale = np.abs(ref).max()
    routes = [np.asarray(convolutional_ntk(a, c, depth=depth, W_std=W, b_std=b))]
    if not looks_channels_last((ch, h, w_)):  # refused as NHWC by the library's own convention
        nchw = np.transpose(x1, (0, 3, 1, 2)), np.transpose(x2, (0, 3, 1, 2))
        routes.append(compute_gram(convolutional(depth, W_std=W, b_std=b), *nchw))
    for k in routes:
        assert np.abs(k - ref)[~identical].max() <= 1e-9 * scale
        assert np.abs(k - ref)[identical].max(initial=0.0) <= 1e-7 * scale
    wts = jnp.asarray(rng.standard_normal((3, 2)))
    g = jax.grad(lambda z: jnp.sum(wts * convolutional_ntk(z, c, depth=depth, W_std=W, b_std=b)))(a)
    g_ref = jax.grad(lambda z: jnp.sum(wts * kf(z, c, "ntk")))(a)
    assert np.all(np.isfinite(np.asarray(g)))
    if np.all(np.isfinite(np.asarray(g_ref))):
        assert _rel(g, g_ref) <= 1e-7
