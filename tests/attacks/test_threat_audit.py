"""Mutation audit of the threat model (``attacks.threat``) and its array operations
(``attacks._array``), fourth round: each test fails on a mutation that survived the earlier tests.

Independent routes: sizes and projections written by hand in numpy float64, the contract's own
numbers (its slack is float32 rounding of x ± ε, 1e-6), and a plain torch FGSM / PGD on a linear
model whose steps are known in closed form.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkrobust.attacks import EPS_SLACK, ThreatModel, check_adversarial, fgsm, perturbation_norms, pgd


def test_perturbation_norms_are_each_examples_own_sizes():
    """Hand-derived: row 0 moves by (0.3, −0.4, 0, 0), ℓ∞ 0.4 and ℓ2 0.5; row 1 by (0.01, 0, 0,
    0.02), ℓ∞ 0.02 and ℓ2 √5·0.01. A size taken over the whole batch (row 1 reported as 0.4)
    passed every earlier test, since ``check_adversarial`` only reads the largest."""
    x = np.full((2, 1, 2, 2), 0.5)
    delta = np.array([[0.3, -0.4, 0.0, 0.0], [0.01, 0.0, 0.0, 0.02]]).reshape(2, 1, 2, 2)
    sizes = perturbation_norms(x + delta, x)
    np.testing.assert_allclose(sizes["linf"], [0.4, 0.02], rtol=1e-12)
    np.testing.assert_allclose(sizes["l2"], [0.5, np.sqrt(5) * 0.01], rtol=1e-12)
    assert sizes["linf"].shape == sizes["l2"].shape == (2,)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_check_adversarial_allows_float32_rounding_beyond_eps_and_nothing_more(norm):
    """The contract's slack is the float32 rounding of x ± ε (``EPS_SLACK`` = 1e-6): a float64
    perturbation of ε + 1e-4 on one pixel breaks the ε-ball and must be refused; ε itself, and
    the float32 sum 0.3 + 0.1 (its rounding of 0.1 is about 1e-8), pass. A slack of 1e-2 passed
    every earlier test."""
    assert EPS_SLACK == 1e-6
    threat = ThreatModel(norm, 0.1)
    x = np.full((2, 1, 2, 2), 0.3)
    one_pixel = np.zeros_like(x)
    one_pixel[:, 0, 0, 0] = 1.0
    check_adversarial(x + 0.1 * one_pixel, x, threat)
    x32 = x.astype(np.float32)
    check_adversarial(x32 + np.float32(0.1) * one_pixel.astype(np.float32), x32, threat)
    with pytest.raises(AssertionError, match="exceeds"):
        check_adversarial(x + (0.1 + 1e-4) * one_pixel, x, threat)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_float64_gradient_keeps_float32_tensors_float32(norm):
    """torch promotes float32 + float64 to float64 as numpy does: a loss gradient of another dtype
    than the images (a float64 surrogate's on float32 images) must not leak into x_adv, whose
    dtype the contract keeps. FGSM's result is checked against the step written in numpy:
    clip(x + ε·d(w)), d = sign(w) or w/‖w‖₂ per example, in float32 to 1e-6. Dropping the cast
    on torch tensors (numpy's had a test) passed every earlier test."""
    x = torch.rand((3, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    w = torch.randn((3, 1, 3, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 0.1 if norm == "linf" else 0.5
    got = fgsm(lambda a, b: w, x, None, eps=eps, norm=norm)
    assert got.dtype == torch.float32
    w_np = w.numpy()
    d = np.sign(w_np) if norm == "linf" else w_np / np.linalg.norm(w_np.reshape(3, -1), axis=1)[:, None, None, None]
    np.testing.assert_allclose(got.numpy(), np.clip(x.numpy() + eps * d, 0, 1), rtol=0, atol=1e-6)
    stepped = pgd(lambda a, b: w, x, None, eps=eps, step=eps / 2, steps=2, norm=norm, random_start=False)
    assert stepped.dtype == torch.float32
    check_adversarial(stepped, x, ThreatModel(norm, eps))


def test_l2_projection_is_exact_for_a_small_ball():
    """Hand-derived at the scale of a small ε: δ = (3, 4)·1e-5 (‖δ‖ = 5e-5) onto the ball of
    ε = 1e-5 is (6, 8)·1e-6, and a δ of 1e-7 inside it stays. The guard against a zero ‖δ‖
    (1e-12) must not enter a projection whose ‖δ‖ lies above it: a guard of 1e-3 shrank δ to
    (3, 4)·1e-7 and passed every earlier test."""
    x = np.full((2, 1, 1, 2), 0.5)
    delta = np.array([[3e-5, 4e-5], [1e-7, 0.0]]).reshape(2, 1, 1, 2)
    got = ThreatModel("l2", 1e-5).project(x + delta, x) - x
    want = np.array([[6e-6, 8e-6], [1e-7, 0.0]]).reshape(2, 1, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-18)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_starts_and_steps_stay_on_the_images_device(norm):
    """The random start is drawn on the host and must go to the images' device (a GPU's), with
    their dtype; the meta device stands in for a GPU here (shapes, dtypes and a device, no
    values), as in the placement tests. A start made with ``torch.as_tensor`` (dtype kept,
    device dropped) lands on the CPU, and PGD's first step then mixes devices."""
    x = torch.empty((3, 1, 2, 2), device="meta", dtype=torch.float64)
    start = ThreatModel(norm, 0.1).random_start(x, seed=0)
    assert (start.device.type, start.dtype, tuple(start.shape)) == ("meta", torch.float64, (3, 1, 2, 2))
    for x_adv in (
        pgd(lambda a, b: 2 * a, x, None, eps=0.1, step=0.05, steps=2, norm=norm),
        fgsm(lambda a, b: 2 * a, x, None, eps=0.1, norm=norm),
    ):
        assert (x_adv.device.type, x_adv.dtype) == ("meta", torch.float64)


def test_robust_accuracy_refuses_clean_predictions_of_another_shape_and_an_empty_set():
    """One clean prediction for three points broadcast silently against them (numpy): the share
    still correct counted against the first point's clean verdict alone, 2/3 here where the
    points' own verdicts are unknown. It must be refused, as must an empty set, whose mean is NaN
    (numpy warns, and a run without warnings as errors would report NaN)."""
    from ntkrobust.attacks import robust_accuracy

    labels = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"clean predictions .* differ in shape"):
        robust_accuracy(np.array([0, 1, 0]), labels, np.array([0]))
    with pytest.raises(ValueError, match="empty set"):
        robust_accuracy(np.array([], dtype=int), np.array([], dtype=int))
    assert robust_accuracy(np.array([0, 1, 0]), labels, np.array([0, 2, 2])) == 1 / 3
