"""Mutation audit of the analytic kernels: each check takes a route independent of the code it
tests (the closed-form arc-cosine kernel in numpy float64, stax built here from the paper's
hyperparameters rather than the registry's, the budget arithmetic written out, the cache key's
contract), so a constant or a layer changed in one place cannot be changed in the reference too."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntkrobust.kernels import compute_gram, get_architecture
from ntkrobust.kernels.architectures import convolutional, fully_connected
from ntkrobust.kernels.gram import block_size, cached_gram, entries_within_budget, gram_cache_key, gram_cache_path

#: Tsilivis & Kempe, supp. D.2: every registered net uses W_std = √2, b_std = 0.1
PAPER_W_STD, PAPER_B_STD = math.sqrt(2.0), 0.1


def _arc_cosine_ntk(x1: np.ndarray, x2: np.ndarray, depth: int, w_std: float, b_std: float) -> np.ndarray:
    """Θ of Dense, (ReLU, Dense) × depth by the closed-form arc-cosine kernels (Cho & Saul 2009;
    Jacot et al. 2018) in numpy float64: Σ' = √(Σ₁₁Σ₂₂)(sin θ + (π − θ) cos θ)/(2π),
    Θ' = Θ (π − θ)/(2π), with θ = arccos of the clipped cosine. Not the code's atan2 form."""
    w2, b2 = w_std**2, b_std**2
    d = x1.shape[1]
    s = w2 * (x1 @ x2.T) / d + b2
    q1 = w2 * np.sum(x1 * x1, axis=1) / d + b2
    q2 = w2 * np.sum(x2 * x2, axis=1) / d + b2
    t = s.copy()
    for _ in range(depth):
        norms = np.sqrt(np.outer(q1, q2))
        theta = np.arccos(np.clip(s / norms, -1.0, 1.0))
        s_relu = norms * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
        t_relu = t * (np.pi - theta) / (2 * np.pi)
        q1, q2 = q1 / 2, q2 / 2  # θ = 0 on the diagonal: (π·q)/(2π)
        s = w2 * s_relu + b2
        t = w2 * t_relu + s
        q1, q2 = w2 * q1 + b2, w2 * q2 + b2
    return t


def _diagonal_closed_form(x: np.ndarray, depth: int) -> np.ndarray:
    """K(x, x) of fc{depth} at the paper's scales with θ = 0 exactly (numpy's arccos of a cosine
    rounded near 1 is off by ~√ε there): Σ ← σ_w² Σ/2 + σ_b², Θ ← σ_w² Θ/2 + Σ."""
    w2, b2 = PAPER_W_STD**2, PAPER_B_STD**2
    s = w2 * np.sum(x * x, axis=1) / x.shape[1] + b2
    t = s.copy()
    for _ in range(depth):
        s = w2 * s / 2 + b2
        t = w2 * t / 2 + s
    return t


@pytest.fixture
def pair(rng):
    # mixed signs: angles across (0, π), so the π − θ factor and the sine part both matter
    return rng.standard_normal((7, 12)), rng.standard_normal((5, 12))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_registered_fc_kernels_are_the_closed_form_arc_cosine_ntk_with_the_papers_scales(depth, pair, jax_strict):
    """fc{depth} from the registry against the closed form at W_std = √2, b_std = 0.1 and that
    depth: catches a wrong π factor, a wrong diagonal recursion, a wrong registry depth or scale."""
    from ntkrobust.kernels._jax import jnp

    arch = get_architecture(f"fc{depth}")
    assert dict(arch.hyperparameters) == {"depth": depth, "W_std": PAPER_W_STD, "b_std": PAPER_B_STD}
    x1, x2 = pair
    got = np.asarray(arch.kernel_fn(jnp.asarray(x1), jnp.asarray(x2), "ntk"))
    np.testing.assert_allclose(got, _arc_cosine_ntk(x1, x2, depth, PAPER_W_STD, PAPER_B_STD), rtol=1e-12)
    # the dots route (entry by entry, used by the Gram and the Jacobians) is the same kernel
    dots = jnp.asarray(x1 @ x2.T)
    sq1 = jnp.broadcast_to(jnp.asarray(np.sum(x1 * x1, axis=1))[:, None], dots.shape)
    sq2 = jnp.broadcast_to(jnp.asarray(np.sum(x2 * x2, axis=1))[None, :], dots.shape)
    np.testing.assert_allclose(np.asarray(arch.dot_kernel_fn(dots, sq1, sq2, 12)), got, rtol=1e-12)


def test_the_diagonal_is_the_closed_form_with_theta_zero(pair, jax_strict):
    """K(x, x) against the closed form at θ = 0 exactly (no arccos of a rounded cosine): the
    rational recursion Σ ← σ_w² Σ/2 + σ_b², Θ ← σ_w² Θ/2 + Σ, at rtol 1e-13."""
    from ntkrobust.kernels._jax import jnp

    x1, _ = pair
    got = np.diag(np.asarray(get_architecture("fc3").kernel_fn(jnp.asarray(x1), jnp.asarray(x1), "ntk")))
    np.testing.assert_allclose(got, _diagonal_closed_form(x1, 3), rtol=1e-13)


def test_antiparallel_inputs_take_theta_pi(rng, jax_strict):
    """x' = −x: cos θ = −1 after the first layer's bias pulls it inside (−1, 1) only slightly;
    the closed form with the clipped cosine is the route (an unclipped arccos would be NaN)."""
    from ntkrobust.kernels._jax import jnp

    x = rng.standard_normal((3, 20))
    for name, depth in (("fc1", 1), ("fc2", 2)):
        got = np.asarray(get_architecture(name).kernel_fn(jnp.asarray(x), jnp.asarray(-x), "ntk"))
        np.testing.assert_allclose(got, _arc_cosine_ntk(x, -x, depth, PAPER_W_STD, PAPER_B_STD), rtol=1e-10)


def _stax_conv(depth: int, w_std: float, b_std: float):
    """depth × (Conv 3x3 SAME, ReLU), Flatten, Dense(1), NTK parameterisation, built here."""
    from ntkrobust.kernels._jax import stax

    scales = {"W_std": w_std, "b_std": b_std, "parameterization": "ntk"}
    layers = []
    for _ in range(depth):
        layers += [stax.Conv(4, (3, 3), padding="SAME", **scales), stax.Relu()]
    return stax.serial(*layers, stax.Flatten(), stax.Dense(1, **scales))[2]


@pytest.mark.parametrize("depth", [1, 2])
def test_registered_conv_kernels_are_stax_built_from_the_paper(depth, rng, jax_strict):
    """conv{depth} against stax.serial built here at W_std = √2, b_std = 0.1 (the registry's own
    reference is built from the same constants as its kernel, so it cannot see them change);
    at depth 1 also a net of other scales, whose kernel must follow them."""
    from ntkrobust.kernels._jax import jnp

    arch = get_architecture(f"conv{depth}")
    assert dict(arch.hyperparameters) == {"depth": depth, "W_std": PAPER_W_STD, "b_std": PAPER_B_STD}
    x1 = jnp.asarray(rng.standard_normal((3, 5, 4, 2)))  # NHWC, non-square
    x2 = jnp.asarray(rng.standard_normal((4, 5, 4, 2)))
    reference = _stax_conv(depth, PAPER_W_STD, PAPER_B_STD)
    np.testing.assert_allclose(arch.kernel_fn(x1, x2, "ntk"), reference(x1, x2, "ntk"), rtol=1e-12)
    if depth == 1:
        custom = convolutional(1, W_std=1.2, b_std=0.3)
        reference = _stax_conv(1, 1.2, 0.3)
        np.testing.assert_allclose(custom.kernel_fn(x1, x2, "ntk"), reference(x1, x2, "ntk"), rtol=1e-12)


def test_other_scales_are_other_kernels_with_other_cache_keys(pair, tmp_path, jax_strict):
    """A registered net with other hyperparameters computes its own closed form, and its Gram
    has its own cache entry: two configurations never share one (each is a miss, then a hit
    holding its own values; a shared key would make the second a 'recomputed' corrupt entry)."""
    x1, x2 = pair
    custom = fully_connected(2, W_std=1.3, b_std=0.4)
    default = get_architecture("fc2")
    assert custom is not default and custom is fully_connected(2, W_std=1.3, b_std=0.4)
    assert gram_cache_key(custom, x1, x2) != gram_cache_key(default, x1, x2)
    assert gram_cache_path(custom, x1, x2, tmp_path) != gram_cache_path(default, x1, x2, tmp_path)
    expected = {custom: _arc_cosine_ntk(x1, x2, 2, 1.3, 0.4), default: _arc_cosine_ntk(x1, x2, 2, PAPER_W_STD, 0.1)}
    for arch in (custom, default):
        gram, outcome = cached_gram(arch, x1, x2, cache_dir=tmp_path)
        assert outcome == "miss"
        np.testing.assert_allclose(gram, expected[arch], rtol=1e-12)
    for arch in (custom, default):
        gram, outcome = cached_gram(arch, x1, x2, cache_dir=tmp_path)
        assert outcome == "hit"
        np.testing.assert_allclose(gram, expected[arch], rtol=1e-12)
    assert convolutional(1, b_std=0.0) is not get_architecture("conv1")


def test_the_cache_key_covers_the_shapes_and_not_only_the_bytes(rng):
    """Inputs with the same bytes in another shape (another image size, another point count
    on each side) are other Grams: the key must differ."""
    arch = get_architecture("fc1")
    x = rng.uniform(0, 1, size=(4, 1, 3, 6))
    keys = {
        gram_cache_key(arch, x, x[:2]),
        gram_cache_key(arch, x.reshape(4, 1, 6, 3), x[:2].reshape(2, 1, 6, 3)),
        gram_cache_key(arch, x.reshape(2, 1, 6, 6), x[:2]),
        gram_cache_key(arch, x, None),
        gram_cache_key(arch, x.astype(np.float32), x[:2].astype(np.float32)),
    }
    assert len(keys) == 5
    assert gram_cache_key(arch, x.copy(), x[:2].copy()) == gram_cache_key(arch, x, x[:2])


def test_block_sizes_follow_the_budget_arithmetic():
    """8 bytes × 16 live arrays × entry_cost per entry, the block side its integer square root,
    capped at 512, at least 1 entry; entry_cost is H·W for convolutions and 1 for dense nets."""
    fc, conv = get_architecture("fc2"), get_architecture("conv1")
    assert fc.entry_cost((3, 1, 6, 5)) == 1 and conv.entry_cost((3, 1, 6, 5)) == 30
    assert entries_within_budget(conv, (3, 1, 6, 5), 8 * 16 * 30 * 100) == 100
    assert entries_within_budget(conv, (3, 1, 6, 5), 8 * 16 * 30 * 100 - 1) == 99
    assert entries_within_budget(fc, (3, 1, 6, 5), 1) == 1
    assert block_size(fc, (3, 1, 6, 5), memory_budget=8 * 16 * 64) == 8
    assert block_size(conv, (3, 1, 6, 5), memory_budget=8 * 16 * 30 * 63) == 7
    assert block_size(fc, (3, 1, 6, 5), memory_budget=2**40) == 512


@pytest.mark.parametrize("n", [9, 14, 20])
def test_symmetric_blocks_cover_every_entry_once_against_the_closed_form(n, rng, jax_strict):
    """A symmetric Gram cut into many row blocks (side 2 or 3, ragged last block) against the
    numpy closed form entry by entry (its diagonal at θ = 0 exactly): a block pair missed,
    mirrored wrong or off by one row shows, and the result is exactly symmetric."""
    x = rng.standard_normal((n, 1, 2, 3))
    arch = get_architecture("fc2")
    gram = compute_gram(arch, x, memory_budget=8 * 16 * 5)  # 5 entries: side 2
    flat = x.reshape(n, -1)
    expected = _arc_cosine_ntk(flat, flat, 2, PAPER_W_STD, PAPER_B_STD)
    np.fill_diagonal(expected, _diagonal_closed_form(flat, 2))  # θ = 0 exactly there
    np.testing.assert_allclose(gram, expected, rtol=1e-12)
    assert np.array_equal(gram, gram.T)
    cross = compute_gram(arch, x[: n - 2], x[2:], memory_budget=8 * 16 * 5)
    np.testing.assert_allclose(cross, expected[: n - 2, 2:], rtol=1e-12)


def _central_difference(f, x: np.ndarray, direction: np.ndarray, h: float = 1e-5) -> float:
    """(f(x + h v) − f(x − h v)) / 2h in float64: error ~h²·f''' ≈ 1e-10 relative here."""
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.mark.parametrize("depth", [1, 3])
def test_input_gradients_and_tangents_are_derivatives_of_the_closed_form(depth, pair, rng, jax_strict):
    """The hand-written VJP (``relu_step``, reverse mode: attacks) and JVP (``relu_step_forward``,
    forward mode: the loss gradients of the dots route) against central differences of the numpy
    closed form along random directions, at rtol 1e-6 (differences' error ~1e-10)."""
    from ntkrobust.kernels._jax import jax, jnp

    arch = get_architecture(f"fc{depth}")
    x1, x2 = pair
    w = rng.standard_normal((7, 5))
    v = rng.standard_normal(x1.shape)

    def closed(z: np.ndarray) -> float:
        return float(np.sum(w * _arc_cosine_ntk(z, x2, depth, PAPER_W_STD, PAPER_B_STD)))

    grad = np.asarray(
        jax.grad(lambda z: jnp.sum(jnp.asarray(w) * arch.kernel_fn(z, jnp.asarray(x2), "ntk")))(jnp.asarray(x1))
    )
    np.testing.assert_allclose(np.sum(grad * v), _central_difference(closed, x1, v), rtol=1e-6)

    # forward mode along x·x' and along ‖x1‖² of every entry at once
    dots, sq1, sq2 = x1 @ x2.T, np.sum(x1 * x1, axis=1)[:, None], np.sum(x2 * x2, axis=1)[None, :]

    def entry(d_, s1_):
        return arch.entry_kernel_fn(d_, s1_, jnp.asarray(sq2), 12)

    def closed_entry(d_: np.ndarray, s1_: np.ndarray) -> np.ndarray:
        # Θ as a function of (x·x', ‖x1‖²) through the closed form: Σ, Σ₁₁ are affine in them
        w2, b2 = PAPER_W_STD**2, PAPER_B_STD**2
        s, q1, q2 = w2 * d_ / 12 + b2, w2 * s1_ / 12 + b2, w2 * sq2 / 12 + b2
        t = s.copy()
        for _ in range(depth):
            norms = np.sqrt(q1 * q2)
            theta = np.arccos(np.clip(s / norms, -1.0, 1.0))
            s_relu = norms * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
            t = w2 * t * (np.pi - theta) / (2 * np.pi)
            q1, q2 = w2 * q1 / 2 + b2, w2 * q2 / 2 + b2
            s = w2 * s_relu + b2
            t = t + s
        return t

    ones_d, zeros_s = jnp.ones_like(jnp.asarray(dots)), jnp.zeros_like(jnp.asarray(sq1))
    _, along_dots = jax.jvp(entry, (jnp.asarray(dots), jnp.asarray(sq1)), (ones_d, zeros_s))
    fd_dots = (closed_entry(dots + 1e-5, sq1) - closed_entry(dots - 1e-5, sq1)) / 2e-5
    np.testing.assert_allclose(np.asarray(along_dots), fd_dots, rtol=1e-6)
    _, along_sq = jax.jvp(
        entry, (jnp.asarray(dots), jnp.asarray(sq1)), (jnp.zeros_like(ones_d), jnp.ones_like(zeros_s))
    )
    fd_sq = (closed_entry(dots, sq1 + 1e-5) - closed_entry(dots, sq1 - 1e-5)) / 2e-5
    np.testing.assert_allclose(np.asarray(along_sq), fd_sq, rtol=1e-6)


def test_angle_and_safe_sqrt_derivatives_are_the_closed_forms(rng, jax_strict):
    """∂atan2(s, c) = (c ds − s dc)/(s² + c²), d√x = dx/(2√x) (0 at x <= 0): the custom JVPs
    that the two-layer kernel's autodiff goes through, against the formulas in numpy."""
    from ntkrobust.kernels._jax import jax, jnp
    from ntkrobust.kernels.relu import angle, safe_sqrt

    s, c = rng.uniform(0.1, 2.0, 20), rng.standard_normal(20)
    ds, dc = rng.standard_normal(20), rng.standard_normal(20)
    _, tangent = jax.jvp(angle, (jnp.asarray(s), jnp.asarray(c)), (jnp.asarray(ds), jnp.asarray(dc)))
    np.testing.assert_allclose(np.asarray(tangent), (c * ds - s * dc) / (s * s + c * c), rtol=1e-13)
    x = rng.uniform(0.1, 3.0, 20)
    _, root_tangent = jax.jvp(safe_sqrt, (jnp.asarray(x),), (jnp.ones(20),))
    np.testing.assert_allclose(np.asarray(root_tangent), 0.5 / np.sqrt(x), rtol=1e-14)
    _, at_zero = jax.jvp(safe_sqrt, (jnp.asarray([0.0, -1.0]),), (jnp.ones(2),))
    assert np.array_equal(np.asarray(at_zero), [0.0, 0.0])


@pytest.mark.parametrize("kind", ["scaled", "asymmetric"])
def test_a_cached_gram_off_by_more_than_rounding_is_not_a_hit(kind, rng, tmp_path, jax_strict):
    """An entry with its own key and a recomputed checksum whose Gram is off by 1e-6 relative
    (all of it scaled, or one pair of mirrored entries apart): far above float64 rounding
    (the 1e-9 the routes part by), so the cache must recompute it rather than hand it out."""
    from ntkrobust.kernels import gram as gram_module

    arch = get_architecture("fc1")
    x = rng.standard_normal((6, 1, 2, 2))  # 6 points: the recomputed sample covers every entry
    true, outcome = cached_gram(arch, x, cache_dir=tmp_path)
    assert outcome == "miss"
    forged = true * (1 + 1e-6) if kind == "scaled" else true.copy()
    if kind == "asymmetric":
        forged[0, 1] *= 1 + 1e-6
    path = gram_cache_path(arch, x, None, tmp_path)
    gram_module._write_entry(path, gram_cache_key(arch, x, None), forged)
    again, outcome = cached_gram(arch, x, cache_dir=tmp_path)
    assert outcome == "recomputed: corrupt entry"
    np.testing.assert_array_equal(again, true)


def test_kernels_are_float64_where_the_caller_left_x64_off(pair, jax_strict):
    """The suite runs with ``JAX_ENABLE_X64`` (conftest), which hides the ``float64`` wrapper: a
    mutant that never switched x64 on passed every fast test. Here x64 is off as in a user's
    process, and the Gram still matches the float64 closed form at 1e-12 (float32 gives ~1e-7),
    and the caller's setting is back to float32 afterwards."""
    from jax.experimental import disable_x64

    from ntkrobust.kernels._jax import jnp, x64_enabled

    x1, x2 = pair
    with disable_x64():
        assert not x64_enabled() and jnp.ones(2).dtype == jnp.float32  # the precondition
        got = compute_gram(get_architecture("fc2"), x1.reshape(7, 1, 3, 4), x2.reshape(5, 1, 3, 4))
        assert not x64_enabled() and jnp.ones(2).dtype == jnp.float32  # the caller's setting kept
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _arc_cosine_ntk(x1, x2, 2, PAPER_W_STD, PAPER_B_STD), rtol=1e-12)
