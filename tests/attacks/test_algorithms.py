"""The shared attack algorithms on plain arrays: invariants, exact steps, backend neutrality."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.attacks import (
    ThreatModel,
    check_adversarial,
    dual_norm,
    fgsm,
    pgd,
    robust_accuracy,
    steepest_ascent,
    taylor_max_l1,
    taylor_sum,
)


@pytest.fixture
def batch(rng):
    x = rng.uniform(0, 1, size=(6, 1, 4, 4)).astype(np.float32)
    x[0, 0, 0, :2] = [0.0, 1.0]  # pixels at the box edges must stay inside [0, 1]
    return x


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3, 1.0])
def test_fgsm_and_pgd_keep_every_invariant(batch, rng, norm, eps):
    w = rng.standard_normal(batch.shape).astype(np.float32)
    grad = lambda x, y: w  # noqa: E731
    threat = ThreatModel(norm, eps)
    check_adversarial(fgsm(grad, batch, None, eps=eps, norm=norm), batch, threat)
    if eps > 0:
        check_adversarial(pgd(grad, batch, None, eps=eps, step=eps / 4, steps=7, norm=norm), batch, threat)


def test_linf_fgsm_is_the_sign_step_clipped(batch, rng):
    w = rng.standard_normal(batch.shape).astype(np.float32)
    x_adv = fgsm(lambda x, y: w, batch, None, eps=0.1)
    np.testing.assert_array_equal(x_adv, np.clip(batch + np.float32(0.1) * np.sign(w), 0, 1))


def test_l2_fgsm_moves_exactly_eps_when_no_pixel_clips():
    x = np.full((3, 1, 5, 5), 0.5, dtype=np.float32)
    w = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    x_adv = fgsm(lambda x, y: w, x, None, eps=0.2, norm="l2")
    sizes = np.linalg.norm((x_adv - x).reshape(3, -1), axis=1)
    np.testing.assert_allclose(sizes, 0.2, rtol=1e-5)


def test_zero_gradient_gives_no_step_not_nan(batch):
    x_adv = fgsm(lambda x, y: np.zeros_like(x), batch, None, eps=0.3, norm="l2")
    np.testing.assert_array_equal(x_adv, batch)


def test_pgd_on_a_linear_loss_reaches_the_ball_corner():
    # With a constant gradient, ℓ∞ PGD without random start ends at clip(x + ε·sign(w)).
    x = np.full((2, 1, 3, 3), 0.5, dtype=np.float32)
    w = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    x_adv = pgd(lambda x, y: w, x, None, eps=0.2, step=0.03, steps=20, random_start=False)
    np.testing.assert_allclose(x_adv, x + 0.2 * np.sign(w), atol=1e-6)


def test_random_start_is_seeded_and_inside_the_ball(batch):
    for norm in ("linf", "l2"):
        threat = ThreatModel(norm, 0.3)
        a, b = threat.random_start(batch, seed=5), threat.random_start(batch, seed=5)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, threat.random_start(batch, seed=6))
        check_adversarial(a, batch, threat)


def test_random_start_is_uniform_in_the_ball():
    """The start is uniform in the ε-ball (Madry et al.'s PGD; torchattacks' ℓ2 PGD draws its
    radius the same way): in ℓ∞ every pixel's offset is U(−ε, ε); in ℓ2 the direction is uniform
    on the sphere and the radius r has P(r ≤ t) = (t/ε)^d, so (r/ε)^d is U(0, 1). Kolmogorov-
    Smirnov tests at p > 0.001 on 4,000 draws of d = 4 pixels at 0.5, where the clip to [0, 1]
    never binds. A start of ±ε/10, or a radius of ε·U without the d-th root (half of its draws
    within ε/2, against 1/16 of the ball's volume), passed the test above."""
    from scipy import stats

    x = np.full((4000, 1, 2, 2), 0.5)
    offsets = ThreatModel("linf", 0.1).random_start(x, seed=0) - x
    assert stats.kstest(offsets.ravel(), stats.uniform(loc=-0.1, scale=0.2).cdf).pvalue > 1e-3
    # the fourth moment, 1/8 for d = 4, tells it from a normalised uniform cube's, 0.107
    _assert_uniform_in_the_l2_ball(ThreatModel("l2", 0.3).random_start(x, seed=0) - x, 0.3)


def _assert_uniform_in_the_l2_ball(offsets: np.ndarray, eps: float) -> None:
    """``offsets`` (n, ...) uniform in the ℓ2 ball of radius ``eps`` in d dimensions: the radius
    r has P(r ≤ t) = (t/ε)^d, so (r/ε)^d is U(0, 1) (Kolmogorov-Smirnov, p > 0.001), and the
    direction u is uniform on the sphere: E[u] = 0, E[u uᵀ] = I/d and E[u_i⁴] = 3/(d(d+2)), each
    within 5 standard errors (bounded by 1/√d, 1/d and the fourth moment's spread)."""
    from scipy import stats

    n = offsets.shape[0]
    offsets = offsets.reshape(n, -1)
    d = offsets.shape[1]
    radius = np.linalg.norm(offsets, axis=1)
    assert stats.kstest((radius / eps) ** d, "uniform").pvalue > 1e-3
    directions = offsets / radius[:, None]
    np.testing.assert_allclose(directions.mean(axis=0), 0, atol=5 / np.sqrt(d * n))
    np.testing.assert_allclose(directions.T @ directions / n, np.eye(d) / d, atol=5 / (d * np.sqrt(n)))
    assert abs(float((directions**4).mean()) - 3 / (d * (d + 2))) < 5 * 0.25 / np.sqrt(n)


def test_an_odd_number_of_pixels_gets_a_uniform_l2_direction_too():
    """ℓ2 directions come from Box–Muller pairs of normals; with d = 3 pixels the last pair's
    second normal is dropped. Uniform in the ball of d = 3 all the same (E[u_i⁴] = 1/5; a cube's
    would be 0.14)."""
    x = np.full((4000, 1, 1, 3), 0.5)
    _assert_uniform_in_the_l2_ball(ThreatModel("l2", 0.3).random_start(x, seed=3) - x, 0.3)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_rows_start_does_not_depend_on_the_rows_around_it(norm):
    """Row i of ``random_start(x[a:b], seed, first_row=a)`` is row a + i of ``random_start(x,
    seed)``, exactly, for any cut (one draw of all points, or any batches); a later seed or row
    is another draw. Until 2026-12-06 a batch's starts came from seed + its first row, so the
    same point got another start in batches of another size."""
    x = np.random.default_rng(0).random((11, 2, 3, 3))
    threat = ThreatModel(norm, 0.2)
    whole = threat.random_start(x, seed=7)
    for a, b in [(0, 4), (4, 11), (3, 4), (10, 11), (0, 11)]:
        np.testing.assert_array_equal(threat.random_start(x[a:b], seed=7, first_row=a), whole[a:b])
    assert not np.array_equal(threat.random_start(x[1:5], seed=7, first_row=0), whole[1:5])
    assert not np.array_equal(threat.random_start(x[:4], seed=8), whole[:4])
    with pytest.raises(ValueError, match="first_row must be a whole number >= 0, got -1"):
        threat.random_start(x, seed=7, first_row=-1)


@pytest.mark.parametrize("pixels", [(1, 3, 3), (2, 3, 3)])
def test_l2_starts_made_a_block_of_points_at_a_time_are_the_same_numbers(monkeypatch, pixels):
    """The ℓ2 noise is made from the stream a block of points at a time: blocks of one point,
    of three, or all at once give the same starts to the bit (odd and even d, from a later row)."""
    from ntkrobust.attacks import threat as threat_module

    x = np.random.default_rng(1).random((10, *pixels))
    threat = ThreatModel("l2", 0.4)
    whole = threat.random_start(x, seed=2, first_row=5)
    per_point = 2 * ((int(np.prod(pixels)) + 1) // 2) + 1
    for points in (1, 3):
        monkeypatch.setattr(threat_module, "START_BLOCK_VALUES", points * per_point)
        np.testing.assert_array_equal(threat.random_start(x, seed=2, first_row=5), whole)


def test_l2_starts_of_a_large_batch_take_a_blocks_temporaries_not_the_batchs(monkeypatch):
    """Peak host memory of the ℓ2 starts of 300 CIFAR-sized points (numpy's allocations, seen by
    tracemalloc) with blocks of 1,000 values: under 3.5 times the starts' own size (the noise, x
    + noise and the clipped result). Made for all points at once it was 6 times (the uniforms,
    Box–Muller's lengths, angles, cosines and sines and the direction, each of the batch's size)."""
    import tracemalloc

    from ntkrobust.attacks import threat as threat_module

    monkeypatch.setattr(threat_module, "START_BLOCK_VALUES", 1000)
    x = np.random.default_rng(2).random((300, 3, 32, 32))
    tracemalloc.start()
    try:
        start = ThreatModel("l2", 0.5).random_start(x, seed=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3.5 * start.nbytes, peak / start.nbytes


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_numpy_first_row_is_taken_as_a_python_one(norm):
    """``first_row`` from ``np.arange`` (a numpy integer, which ``is_whole`` takes): PCG64's
    ``advance`` raised OverflowError ("Python int too large to convert to C long") on it."""
    x = np.random.default_rng(0).random((6, 1, 2, 2))
    threat = ThreatModel(norm, 0.2)
    whole = threat.random_start(x, seed=7)
    for first in (np.int64(3), np.int32(3), np.uint64(3)):
        np.testing.assert_array_equal(threat.random_start(x[3:], seed=7, first_row=first), whole[3:])


def test_pgd_refuses_a_negative_first_row_with_or_without_a_random_start():
    """A bad ``first_row`` is refused whatever the start: without a random start or with a given
    one it was accepted silently (only ``random_start`` checked it)."""
    x = np.full((2, 1, 2, 2), 0.5)
    for kw in ({}, {"random_start": False}, {"start": x}):
        with pytest.raises(ValueError, match="first_row must be a whole number >= 0, got -1"):
            pgd(lambda z, y: z, x, None, eps=0.1, step=0.05, steps=1, first_row=-1, **kw)


def _converter(backend):
    if backend == "jax":
        from ntkrobust.kernels._jax import jnp

        return jnp.asarray
    import torch

    return torch.as_tensor


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_same_pgd_runs_on_every_backend(batch, rng, backend, norm):
    """One implementation: numpy, JAX and torch give the same iterates (same seed)."""
    # A loss whose gradient depends on x, so that the iterates actually differ step to step.
    w = rng.standard_normal(batch.shape).astype(np.float32)

    def make_grad(convert):
        w_b = convert(w)
        return lambda x, y: w_b * (x - 0.5) + w_b

    expected = pgd(make_grad(np.asarray), batch, None, eps=0.2, step=0.05, steps=5, norm=norm, seed=3)
    convert = _converter(backend)
    got = pgd(make_grad(convert), convert(batch), None, eps=0.2, step=0.05, steps=5, norm=norm, seed=3)
    assert type(got).__module__.split(".")[0] in (backend, "jaxlib")
    check_adversarial(got, convert(batch), ThreatModel(norm, 0.2))
    got_np = got.numpy() if backend == "torch" else np.asarray(got)
    np.testing.assert_allclose(got_np, expected, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jitted_jax_pgd_step_equals_the_eager_step(rng, norm, dtype, jax_strict):
    """On JAX arrays the update after the gradient is one jitted call: ℓ∞ iterates are identical to
    the eager operations, ℓ2 ones agree to rounding (XLA may sum the squares in another order)."""
    from ntkrobust.kernels._jax import jnp

    x = jnp.asarray(rng.uniform(0, 1, size=(20, 1, 12, 12)).astype(dtype))
    w = jnp.asarray(rng.standard_normal(x.shape).astype(dtype))
    grad = lambda xa, y: w * (xa - 0.5) + w  # noqa: E731
    eps, step = (0.3, 0.01) if norm == "linf" else (2.0, 0.1)
    got = pgd(grad, x, None, eps=eps, step=step, steps=10, norm=norm, seed=1)
    threat = ThreatModel(norm, eps)
    want = threat.random_start(x, 1)
    for _ in range(10):
        want = threat.project(want + step * steepest_ascent(grad(want, None), norm).astype(x.dtype), x)
    assert got.dtype == x.dtype
    if norm == "linf":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.finfo(dtype).eps)


def test_steepest_ascent_and_dual_norm_are_a_dual_pair(rng):
    g = rng.standard_normal((4, 3, 2, 2))
    for norm in ("linf", "l2"):
        d = steepest_ascent(g, norm)
        gain = np.sum(g * d, axis=(1, 2, 3), keepdims=True)
        np.testing.assert_allclose(gain, dual_norm(g, norm), rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_l2_steps_are_a_whole_eps_for_a_tiny_gradient(backend, jax_strict):
    """A non-zero gradient far below any floor (a confident net's cross-entropy gradient) still
    moves an ℓ2 step ε along g/‖g‖, also in float32, where ‖g‖² underflows to 0; a zero gradient
    moves nothing. With the former floor max(‖g‖, 1e-12) the steps were ε·1e-13/1e-12 and 0."""
    from ntkrobust.kernels._jax import jnp

    rows = np.zeros((3, 1, 2, 2), dtype=np.float32)
    rows[0, 0, 0] = [1e-13, -2e-13]  # below the old floor
    rows[1, 0, 1] = [3e-30, 4e-30]  # their squares underflow to 0 in float32
    x = np.full_like(rows, 0.5)
    convert = {"numpy": np.asarray, "torch": torch_tensor, "jax": jnp.asarray}[backend]
    g = convert(rows)
    direction = steepest_ascent(g, "l2")
    got = np.asarray(direction.numpy() if backend == "torch" else direction, dtype=np.float64)
    np.testing.assert_allclose(got[0, 0, 0], np.array([1, -2]) / np.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(got[1, 0, 1], [0.6, 0.8], rtol=1e-6)
    assert not got[2].any()
    x_adv = fgsm(lambda a, b: g, convert(x), None, eps=0.3, norm="l2")
    step = np.asarray(x_adv.numpy() if backend == "torch" else x_adv, dtype=np.float64) - x
    np.testing.assert_allclose(np.linalg.norm(step.reshape(3, -1), axis=1), [0.3, 0.3, 0.0], rtol=1e-6)


def torch_tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(a)


def test_taylor_binary_is_eq16(rng):
    x = rng.uniform(0.2, 0.8, size=(5, 1, 3, 3))
    z = rng.standard_normal((5, 1, 1, 3, 3))
    index = np.array([0, 1, 1, 0, 1])  # y = −1, +1, +1, −1, +1
    y = 2 * index - 1
    expected = np.clip(x - 0.1 * y[:, None, None, None] * np.sign(z[:, 0]), 0, 1)
    for attack in (taylor_max_l1, taylor_sum):
        np.testing.assert_allclose(attack(lambda _: z, x, index, eps=0.1), expected, atol=1e-12)


def test_taylor_multiclass_follows_eq20_and_eq22():
    x = np.full((1, 1, 1, 3), 0.5)
    # z_r for three classes; true class r* = 0.
    z = np.array([[[[[0.0, 0.0, 0.0]]], [[[1.0, -1.0, 0.1]]], [[[3.0, 0.1, -0.1]]]]])
    index = np.array([0])
    # eq. 20: ‖z_1 − z_0‖₁ = 2.1 < ‖z_2 − z_0‖₁ = 3.2, so push along sign(z_2 − z_0).
    np.testing.assert_allclose(taylor_max_l1(lambda _: z, x, index, eps=0.1), 0.5 + 0.1 * np.array([[[[1, 1, -1]]]]))
    # eq. 22: sign((z_1 − z_0) + (z_2 − z_0)) = sign(4, −0.9, 0).
    np.testing.assert_allclose(taylor_sum(lambda _: z, x, index, eps=0.1), 0.5 + 0.1 * np.array([[[[1, -1, 0]]]]))


def test_threat_model_rejects_bad_settings():
    with pytest.raises(ValueError, match="eps"):
        ThreatModel("linf", -0.1)
    with pytest.raises(ValueError, match="norm"):
        ThreatModel("l1", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step"):
        pgd(lambda x, y: x, np.zeros((1, 1, 2, 2)), None, eps=0.1, step=0.0, steps=3)


def test_inputs_outside_the_box_a_start_of_another_shape_and_binary_targets_beyond_1_are_refused(batch):
    """The clip to [0, 1] moved such inputs by more than eps; a start broadcast against x; a
    binary Taylor attack read target 5 as 1."""
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\] \(pixel units\), got values from"):
        fgsm(lambda x, y: x, batch * 2, None, eps=0.1)
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\]"):
        pgd(lambda x, y: x, np.full_like(batch, np.nan), None, eps=0.1, step=0.1, steps=1)
    with pytest.raises(ValueError, match="start must have the shape of x"):
        pgd(lambda x, y: x, batch, None, eps=0.1, step=0.1, steps=1, start=batch[0])
    z = np.ones((2, 1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"target_index must lie in \[0, 2\)"):
        taylor_max_l1(lambda _: z, batch[:2], np.array([0, 5]), eps=0.1)


def test_check_adversarial_catches_each_violation(batch):
    threat = ThreatModel("linf", 0.1)
    with pytest.raises(AssertionError, match="exceeds"):
        check_adversarial(np.clip(batch + 0.2, 0, 1), batch, threat)
    with pytest.raises(AssertionError, match=r"\[0, 1\]"):
        check_adversarial(batch + 0.05, batch, threat)
    with pytest.raises(AssertionError, match="non-finite"):
        bad = batch.copy()
        bad[0, 0, 0, 0] = np.nan
        check_adversarial(bad, batch, threat)
    with pytest.raises(AssertionError, match="dtype"):
        check_adversarial(batch.astype(np.float64), batch, threat)


def test_robust_accuracy_is_the_share_still_correct():
    assert robust_accuracy(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == 0.5
    with pytest.raises(ValueError):
        robust_accuracy(np.array([1]), np.array([1, 2]))


def test_a_threat_for_images_without_channels_is_refused():
    from ntkrobust.attacks import standard_threat

    assert standard_threat(np.int64(1))[0] == 0.3  # a numpy channel count, as shapes give it
    with pytest.raises(ValueError, match="images have one channel or more, got 0"):
        standard_threat(0)  # it answered with the colour threat
