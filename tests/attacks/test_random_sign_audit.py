"""Mutation audit of the random-sign baseline (``attacks.random_sign``).

Independent routes: counts of signs over many pixels, examples and seeds against the binomial
law of a fair, independent ±1 per pixel (bounds of 5 standard errors, stated in each test); the
noise of a seed depends only on the seed and the shape, so the same draw near the box must be the
draw at x = 0.5 clipped to [0, 1] (module docstring: x̃ = clip(x + ε·s) and clip(x + ε·u)). Every
mutation named in a docstring survived the earlier tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.attacks import ThreatModel, check_adversarial, random_sign


def _signs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The ±1 of every pixel of ``random_sign`` at ε = 0.1 from x = 0.5 (no pixel reaches the box)."""
    x = np.full(shape, 0.5)
    delta = random_sign(x, eps=0.1, seed=seed) - x
    np.testing.assert_allclose(np.abs(delta), 0.1, rtol=1e-12)
    return np.sign(delta)


def test_linf_signs_are_fair_coins():
    """2000 examples of 3×4×4 = 96,000 pixels: the share of +1 is 1/2 within 5 standard errors
    (5·0.5/√96000 = 0.008). Catches a biased draw (+0.1 on the Gaussian gives P(+) = 0.54)."""
    signs = _signs((2000, 3, 4, 4), seed=6)
    assert abs(float(np.mean(signs > 0)) - 0.5) < 5 * 0.5 / np.sqrt(signs.size)


def test_linf_signs_are_independent_across_examples_channels_and_pixels():
    """Agreement of two independent fair signs is 1/2: between neighbouring examples (1999·48
    pairs), between channel 0 and every other channel (2000·2·16), and between neighbouring pixels
    of a row (2000·3·4·3); each share within 5 standard errors of 1/2. Catches one pattern for the
    whole batch, examples that repeat (or negate) their neighbour, and one sign per channel."""
    signs = _signs((2000, 3, 4, 4), seed=8)
    pairs = {
        "examples": signs[1:] == signs[:-1],
        "channels": signs[:, 1:] == signs[:, :1],
        "pixels": signs[..., 1:] == signs[..., :-1],
    }
    for name, agree in pairs.items():
        assert abs(float(np.mean(agree)) - 0.5) < 5 * 0.5 / np.sqrt(agree.size), name


def test_every_channel_moves_by_eps():
    """Three channels, x in [0.2, 0.8]: every pixel of every channel moves by exactly ±ε (rtol 1e-6
    in float32), not only the first channel's (the single-channel tests cannot tell)."""
    x = np.random.default_rng(1).uniform(0.2, 0.8, size=(8, 3, 5, 5)).astype(np.float32)
    delta = random_sign(x, eps=0.05, seed=2) - x
    np.testing.assert_allclose(np.abs(delta), 0.05, rtol=1e-4)
    for c in range(3):
        assert 0.3 < float(np.mean(delta[:, c] > 0)) < 0.7, c


def test_seeds_draw_unrelated_patterns():
    """Seeds 0-9 on 2000 pixels: every pair of seeds agrees on 1/2 of the signs within 5 standard
    errors (0.056), not only seeds 1 and 2 (a seed halved or taken modulo gives pairs that agree
    everywhere)."""
    patterns = [_signs((20, 1, 10, 10), seed=s).ravel() for s in range(10)]
    for a in range(10):
        for b in range(a + 1, 10):
            agree = float(np.mean(patterns[a] == patterns[b]))
            assert abs(agree - 0.5) < 5 * 0.5 / np.sqrt(patterns[a].size), (a, b, agree)


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 0.8)])
def test_noise_near_the_box_is_the_same_draw_clipped_to_zero_one(norm, eps):
    """x = 0 and x = 1 with the seed and shape of a draw made at x = 0.5 (where nothing is
    clipped): x̃ = clip(x + ε·s) resp. clip(x + ε·u) must be that draw's step added to x and
    clipped, and stay in the threat model (in ℓ2 each clipped example is still within ε).
    Catches clipping left out (pixels at −0.3 or 1.3, here for ℓ2 too)."""
    shape = (6, 2, 4, 4)
    half = np.full(shape, 0.5)
    step = random_sign(half, eps=eps, norm=norm, seed=5) - half
    norms = np.linalg.norm(step.reshape(6, -1), axis=1) if norm == "l2" else np.abs(step).max(axis=(1, 2, 3))
    np.testing.assert_allclose(norms, eps, rtol=1e-12)
    assert np.abs(step).max() <= 0.5  # x = 0.5 reaches no bound, so ``step`` is ε·s (ε·u) itself
    for value in (0.0, 1.0):
        x = np.full(shape, value)
        got = random_sign(x, eps=eps, norm=norm, seed=5)
        np.testing.assert_allclose(got, np.clip(x + step, 0.0, 1.0), rtol=0, atol=1e-12)
        check_adversarial(got, x, ThreatModel(norm=norm, eps=eps))
        assert np.any(got != x) and np.any(got == x)  # some pixels moved, the others clipped back


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_zero_budget_leaves_every_pixel_where_it_was(norm):
    """ε = 0 (the first point of an ε sweep) is a ball of one point: x̃ = x exactly, pixels at the
    bounds 0 and 1 included. Catches a floor on ε (1e-3 would move every pixel)."""
    x = np.random.default_rng(3).uniform(0, 1, size=(5, 3, 4, 4))
    x[0] = 0.0
    x[1] = 1.0
    np.testing.assert_array_equal(random_sign(x, eps=0.0, norm=norm, seed=9), x)
