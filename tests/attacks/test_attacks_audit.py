"""Mutation audit of the shared attacks (FGSM, PGD, projection, steps, random sign, the spec).

Each test checks the code against a route that does not share its code path: projections and
steps derived by hand, closed forms on linear models (where one FGSM step and PGD's corner are
exact), a torchattacks-style PGD loop written plainly in torch with autograd, and the numbers the
docstrings state. Every mutation named in a docstring survived the earlier tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkrobust.attacks import (
    AttackSpec,
    ThreatModel,
    check_adversarial,
    evaluation_schedule,
    fgsm,
    pgd,
    pgd_schedule,
    random_sign,
    robust_accuracy,
    steepest_ascent,
)

# --------------------------------------------------------------------------------------------
# projection onto the ε-ball, then the [0, 1] box


def test_l2_projection_is_the_nearest_ball_point_of_each_example_then_the_box():
    """Hand-derived: row 0 moves (0.6, 0.8) from x, ‖δ‖ = 1 > ε = 0.5, so δ → (0.3, 0.4) and the
    box then clips 0.9 + 0.3 to 1: (1.0, 0.5). Clipping to the box first would give δ = (0.1, 0.8)
    scaled by 0.5/‖δ‖ (0.0620, 0.4961). Row 1 lies inside the ball and must not move (ε/‖δ‖
    without min(1, ·) pushed it out to the sphere), nor be scaled by the whole batch's norm."""
    x = np.array([[0.9, 0.1, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]).reshape(2, 1, 2, 2)
    move = np.array([[0.6, 0.8, 0.0, 0.0], [0.01, 0.0, -0.02, 0.0]]).reshape(2, 1, 2, 2)
    got = ThreatModel("l2", 0.5).project(x + move, x)
    want = np.array([[1.0, 0.5, 0.5, 0.5], [0.51, 0.5, 0.48, 0.5]]).reshape(2, 1, 2, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_linf_projection_clips_each_pixel_to_its_interval():
    """ℓ∞: every pixel lands in [max(0, x − ε), min(1, x + ε)] nearest to where it was."""
    x = np.array([0.05, 0.5, 0.95, 0.5]).reshape(1, 1, 2, 2)
    x_adv = np.array([-0.5, 0.9, 1.7, 0.45]).reshape(1, 1, 2, 2)
    got = ThreatModel("linf", 0.1).project(x_adv, x)
    np.testing.assert_allclose(got, np.array([0.0, 0.6, 1.0, 0.45]).reshape(1, 1, 2, 2), rtol=0, atol=1e-12)


def test_check_adversarial_measures_an_l2_threat_in_l2():
    """16 pixels each moved by 0.05: ℓ∞ size 0.05, ℓ2 size 0.2 > ε = 0.1, which must be refused."""
    x = np.full((1, 1, 4, 4), 0.5)
    with pytest.raises(AssertionError, match="exceeds"):
        check_adversarial(x + 0.05, x, ThreatModel("l2", 0.1))
    check_adversarial(x + 0.05, x, ThreatModel("linf", 0.1))


# --------------------------------------------------------------------------------------------
# steepest-ascent directions


def test_l2_direction_is_a_unit_vector_per_example_whatever_the_other_rows_scale():
    """Rows of gradients of scale 1, 1e-20 and 1e-35 in one float32 batch: each row's direction is
    g/‖g‖₂ computed in float64 by numpy, row by row. Scaling by the whole batch's largest entry
    left the small rows at 1e-20 and 0 in float32; a whole-batch ‖g‖ shortened every row."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((3, 1, 3, 3))
    g = (base * np.array([1.0, 1e-20, 1e-35])[:, None, None, None]).astype(np.float32)
    got = np.asarray(steepest_ascent(g, "l2"), dtype=np.float64)
    g64 = g.astype(np.float64).reshape(3, -1)
    want = g64 / np.linalg.norm(g64, axis=1, keepdims=True)
    np.testing.assert_allclose(got.reshape(3, -1), want, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# FGSM and PGD on a linear binary model: closed forms


def _logistic_gradient(w, b):
    """∇ₓ log(1 + exp(−y f(x))) for f(x) = ⟨w, x⟩ + b: −y σ(−y f) w (per example, numpy)."""

    def gradient(x, y):
        f = (x * w).reshape(len(x), -1).sum(1) + b
        weight = -y / (1 + np.exp(y * f))
        return weight[:, None, None, None] * w

    return gradient


@pytest.mark.parametrize("norm, dual", [("linf", lambda w: np.abs(w).sum()), ("l2", np.linalg.norm)])
def test_fgsm_and_pgd_on_a_linear_model_lower_the_margin_by_eps_times_the_dual_norm(norm, dual):
    """For f(x) = ⟨w, x⟩ + b the loss gradient is a negative multiple of y·w, so FGSM (eq. 8) moves
    x by −yε·d(w), d = sign or w/‖w‖₂, and the margin y·f drops by exactly ε‖w‖_dual (‖w‖₁ for ℓ∞,
    ‖w‖₂ for ℓ2) while no pixel clips. PGD from x with step·steps ≥ ε ends at the same corner
    (the ball's maximiser of a linear loss), whatever the step."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((1, 1, 4, 4))
    x = rng.uniform(0.3, 0.7, size=(5, 1, 4, 4))
    y = np.array([1.0, -1.0, 1.0, -1.0, -1.0])
    margin = lambda a: y * ((a * w).reshape(5, -1).sum(1) + 0.1)  # noqa: E731
    eps = 0.1 if norm == "linf" else 0.5  # x ± ε stays inside [0, 1]
    gradient = _logistic_gradient(w, 0.1)
    expected_drop = eps * dual(w)
    x_fgsm = fgsm(gradient, x, y, eps=eps, norm=norm)
    np.testing.assert_allclose(margin(x) - margin(x_fgsm), expected_drop, rtol=1e-12)
    x_pgd = pgd(gradient, x, y, eps=eps, step=eps / 3, steps=5, norm=norm, random_start=False)
    np.testing.assert_allclose(x_pgd, x_fgsm, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_takes_exactly_steps_steps_of_size_step_inside_the_ball(norm):
    """A constant gradient w from x without a random start, step·steps = 0.3 < ε: no projection
    binds, so the last iterate is x + 3·step·d(w) exactly (d = sign(w) or w/‖w‖₂, hand-derived).
    One step short or one too many, a descent step, or ε/‖δ‖ without min(1, ·) (which throws the
    first iterate out to the sphere) each miss it."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((2, 1, 3, 3))
    x = np.full((2, 1, 3, 3), 0.5)
    eps = 0.4 if norm == "linf" else 1.0
    d = np.sign(w) if norm == "linf" else w / np.linalg.norm(w.reshape(2, -1), axis=1)[:, None, None, None]
    got = pgd(lambda a, b: w, x, None, eps=eps, step=0.1, steps=3, norm=norm, random_start=False)
    np.testing.assert_allclose(got, x + 0.3 * d, rtol=0, atol=1e-12)


def test_eps_zero_is_a_ball_of_one_point():
    """ε = 0: FGSM and PGD (random start included) return x itself, with its dtype."""
    x = np.random.default_rng(0).uniform(size=(3, 1, 4, 4)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal(x.shape)
    for norm in ("linf", "l2"):
        for x_adv in (
            fgsm(lambda a, b: w, x, None, eps=0.0, norm=norm),
            pgd(lambda a, b: w, x, None, eps=0.0, step=0.1, steps=3, norm=norm, seed=2),
        ):
            assert x_adv.dtype == np.float32
            np.testing.assert_array_equal(x_adv, x)


def test_a_float64_gradient_keeps_float32_images_float32():
    """The contract keeps x's dtype; a float64 gradient on float32 images (numpy promotes
    float32 + float64 to float64) must not leak into x_adv, in FGSM nor PGD (random start off,
    so only the step can promote)."""
    x = np.random.default_rng(0).uniform(size=(2, 1, 3, 3)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal(x.shape)  # float64
    for norm in ("linf", "l2"):
        assert fgsm(lambda a, b: w, x, None, eps=0.1, norm=norm).dtype == np.float32
        got = pgd(lambda a, b: w, x, None, eps=0.1, step=0.05, steps=2, norm=norm, random_start=False)
        assert got.dtype == np.float32


# --------------------------------------------------------------------------------------------
# PGD's start: random (seeded), none, or given


@pytest.mark.parametrize("seed", [3, 4])
def test_pgd_starts_from_the_seeded_uniform_draw_or_from_x(seed):
    """With a zero gradient PGD never moves from its start. The ℓ∞ start is x + U(−ε, ε) from
    ``numpy.random.default_rng(seed)``, clipped to [0, 1] (drawn here plainly); without a random
    start it is x itself. A start that ignored the flag or the seed would differ."""
    x = np.random.default_rng(0).uniform(size=(4, 1, 3, 3))
    zero = lambda a, b: np.zeros_like(a)  # noqa: E731
    want = np.clip(x + np.random.default_rng(seed).uniform(-0.2, 0.2, size=x.shape), 0, 1)
    got = pgd(zero, x, None, eps=0.2, step=0.05, steps=2, seed=seed)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(pgd(zero, x, None, eps=0.2, step=0.05, steps=2, random_start=False), x)


def test_pgd_starts_from_a_given_start_projected_onto_the_ball():
    """``start`` overrides the random start: inside the ball it is the start itself; outside it
    is projected before the first step. Hand-derived, ℓ∞ ε = 0.2: a start 0.4 above x goes to
    x + 0.2, and one step of 0.1 down (gradient −1) ends at x + 0.1; a start left unprojected
    went to x + 0.3 and then x + 0.2. ℓ2 ε = 0.2 on one pixel behaves the same."""
    x = np.full((2, 1, 2, 2), 0.5)
    zero = lambda a, b: np.zeros_like(a)  # noqa: E731
    inside = x + np.array([0.05, -0.1, 0.0, 0.15]).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(pgd(zero, x, None, eps=0.2, step=0.1, steps=1, start=inside), inside, atol=1e-12)
    down = lambda a, b: -np.ones_like(a)  # noqa: E731
    np.testing.assert_allclose(pgd(down, x, None, eps=0.2, step=0.1, steps=1, start=x + 0.4), x + 0.1, atol=1e-12)
    one_pixel = np.zeros_like(x)
    one_pixel[:, 0, 0, 0] = 1.0
    got = pgd(lambda a, b: -one_pixel, x, None, eps=0.2, step=0.1, steps=1, norm="l2", start=x + 0.4 * one_pixel)
    np.testing.assert_allclose(got, x + 0.1 * one_pixel, atol=1e-12)


# --------------------------------------------------------------------------------------------
# PGD against a torchattacks-style loop on a small nonlinear torch model


def _torch_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def _cross_entropy_gradient(model):
    def gradient(x, y):
        x = x.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
        return torch.autograd.grad(loss, x)[0]

    return gradient


def _torchattacks_pgd(model, x, y, start, eps, alpha, steps, norm):
    """The PGD / PGDL2 loops of torchattacks, written out (their random start replaced by
    ``start``): ℓ∞ adv ← clamp(x + clamp(adv + α·sign(g) − x, −ε, ε), 0, 1); ℓ2 adv ← adv +
    α·g/‖g‖, δ ← δ·min(1, ε/‖δ‖) per example, clamp to [0, 1]. The gradient is by autograd of the
    summed cross-entropy, so examples do not interact."""
    adv = start.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach()
        if norm == "linf":
            adv = adv + alpha * grad.sign()
            delta = torch.clamp(adv - x, min=-eps, max=eps)
        else:
            grad_norms = torch.linalg.vector_norm(grad.reshape(len(x), -1), dim=1)
            adv = adv + alpha * grad / grad_norms.reshape(-1, 1, 1, 1)
            delta = adv - x
            delta_norms = torch.linalg.vector_norm(delta.reshape(len(x), -1), dim=1)
            delta = delta * torch.clamp(eps / delta_norms, max=1.0).reshape(-1, 1, 1, 1)
        adv = torch.clamp(x + delta, 0, 1)
    return adv


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_is_the_torchattacks_loop_on_a_nonlinear_model(norm):
    """Seven steps of ε/4 on a tanh net, from a start inside the ball given to both; ℓ∞ agrees to
    rounding, ℓ2 to 1e-9 (the same operations in another order). Each step's gradient is taken
    at the iterate (not the clean x), the projection is around x (not the last iterate), and
    the result is the last iterate."""
    model = _torch_model()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((6, 1, 4, 4), generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 0.1 if norm == "linf" else 0.5
    start = ThreatModel(norm, eps).project(x + eps * (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype) - 1), x)
    want = _torchattacks_pgd(model, x, y, start, eps, eps / 4, 7, norm)
    got = pgd(_cross_entropy_gradient(model), x, y, eps=eps, step=eps / 4, steps=7, norm=norm, start=start)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    # the attack does its job here: the loss rises over the start's
    loss = lambda a: torch.nn.functional.cross_entropy(model(a), y, reduction="none")  # noqa: E731
    assert bool((loss(got) >= loss(start) - 1e-12).all())


def test_pgd_random_start_matches_a_plain_numpy_draw_on_torch():
    """PGD's default start on torch tensors is the numpy draw x + U(−ε, ε) of ``seed``, clipped:
    the torchattacks loop started there gives the same last iterate."""
    model = _torch_model()
    x = torch.rand((4, 1, 4, 4), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([2, 0, 1, 1])
    noise = np.random.default_rng(5).uniform(-0.1, 0.1, size=tuple(x.shape))
    start = torch.clamp(x + torch.from_numpy(noise), 0, 1)
    want = _torchattacks_pgd(model, x, y, start, 0.1, 0.03, 5, "linf")
    got = pgd(_cross_entropy_gradient(model), x, y, eps=0.1, step=0.03, steps=5, seed=5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# random sign


def test_l2_random_sign_is_uniform_on_the_sphere():
    """The ℓ2 baseline's direction is uniform on the unit sphere (a Gaussian normalised): in d = 4,
    E[u_i⁴] = 3/(d(d+2)) = 1/8. A normalised uniform cube gives 0.107; 20,000 draws put 1/8
    within 5 standard errors (0.2/√20000 each) and the cube's 13 of them away."""
    x = np.full((20000, 1, 2, 2), 0.5)
    u = (random_sign(x, eps=0.3, norm="l2", seed=4) - x).reshape(20000, 4) / 0.3
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-12)
    assert abs(float((u**4).mean()) - 1 / 8) < 5 * 0.2 / np.sqrt(20000)


# --------------------------------------------------------------------------------------------
# the spec: schedules, records and hints, numbers from the docstrings


def test_pgd_schedule_scales_the_standard_step_to_eps():
    """spec docstring: ``--eps 0.1`` on MNIST runs 40 steps of 0.01/3; ℓ2 grey: ε = 2.0, step
    0.125, so ε = 1 takes 0.0625; ε = 0 keeps the standard step."""
    step, steps = pgd_schedule(1, "linf", 0.1)
    assert steps == 40 and step == pytest.approx(0.01 / 3, rel=1e-12)
    assert pgd_schedule(1, "l2", 1.0) == (pytest.approx(0.0625, rel=1e-12), 40)
    assert pgd_schedule(3, "linf", 0.0) == (pytest.approx(2 / 255, rel=1e-12), 10)
    assert pgd_schedule(1, "linf", 0.1, step=0.5, steps=3) == (0.5, 3)


def test_evaluation_schedule_takes_the_longer_of_the_standard_and_2_5_eps_over_steps():
    """spec docstring: MNIST ε = 0.3: 10 steps of 0.075, 40 of 0.01875 (2.5·ε/steps beats 0.01);
    CIFAR-10 ε = 8/255: 10 steps of 2/255 (both rules agree) and 20 of 2/255 (the standard step
    beats 2.5·ε/20 = 1/255)."""
    assert evaluation_schedule(1, 0.3, 10)[0] == pytest.approx(0.075, rel=1e-12)
    assert evaluation_schedule(1, 0.3, 40) == (pytest.approx(0.01875, rel=1e-12), 40)
    assert evaluation_schedule(3, 8 / 255, 10)[0] == pytest.approx(2 / 255, rel=1e-12)
    assert evaluation_schedule(3, 8 / 255, 20)[0] == pytest.approx(2 / 255, rel=1e-12)


def test_standard_specs_take_the_threat_of_their_norm_and_keep_what_is_given():
    grey_l2 = AttackSpec.standard("pgd", 1, norm="l2")
    assert (grey_l2.eps, grey_l2.step, grey_l2.steps) == (2.0, 0.125, 40)
    assert AttackSpec.standard("pgd", 3, norm="l2").eps == 0.5
    assert AttackSpec.standard("pgd", 3).eps == pytest.approx(8 / 255)
    spec = AttackSpec.standard("pgd", 1, random_start=False, seed=9)
    assert spec.random_start is False and spec.seed == 9


def test_one_step_specs_record_no_schedule_and_pgd_records_its_own():
    fgsm_spec = AttackSpec("fgsm", 0.1)  # no step needed
    assert not fgsm_spec.iterative
    assert fgsm_spec.to_dict() == {
        "method": "fgsm",
        "eps": 0.1,
        "norm": "linf",
        "step": None,
        "steps": 1,
        "random_start": False,
        "seed": 0,
    }
    record = AttackSpec("pgd", 0.3, step=0.01, steps=40, seed=2).to_dict()
    assert (record["step"], record["steps"], record["random_start"], record["seed"]) == (0.01, 40, True, 2)


def test_the_budget_warning_fires_only_below_eps():
    """step·steps = 4·0.25 = 1.0 = ε exactly can cross the ball: no warning; 4·0.2 < 1 warns."""
    assert AttackSpec("pgd", 1.0, "l2", step=0.25, steps=4).budget_warning() is None
    message = AttackSpec("pgd", 1.0, "l2", step=0.2, steps=4).budget_warning()
    assert message is not None and "step*steps = 0.8" in message


def test_the_eps_hint_uses_twice_the_colour_radius_on_grey_images():
    """Grey images: ε ≤ 2·8/255 = 0.0627 reads as a colour radius (0.05 does, 0.1 does not);
    colour images: ε ≥ 0.1 reads as a grey radius."""
    assert "colour-image radius" in AttackSpec("fgsm", 0.05).eps_hint(1)
    assert AttackSpec("fgsm", 0.1).eps_hint(1) is None
    assert "grey-image radius" in AttackSpec("fgsm", 0.1).eps_hint(3)
    assert AttackSpec("fgsm", 0.05).eps_hint(3) is None


def test_robust_accuracy_with_clean_predictions_counts_points_correct_both_ways():
    """RobustBench: a point counts only if correct clean AND under attack (hand count: 1 of 4)."""
    labels = np.array([0, 1, 2, 3])
    attacked = np.array([0, 1, 0, 0])
    clean = np.array([0, 2, 2, 3])
    assert robust_accuracy(attacked, labels, clean) == 0.25
    assert robust_accuracy(attacked, labels) == 0.5
