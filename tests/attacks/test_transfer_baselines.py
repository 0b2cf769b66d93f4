"""The random-sign baseline and the transferability τ of Loo et al. sec. 5."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntkrobust.attacks import ThreatModel, check_adversarial, random_sign, transferability


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_sign_stays_in_the_threat_model_and_uses_the_budget(rng, norm):
    x = rng.uniform(0.2, 0.8, size=(16, 1, 6, 6)).astype(np.float32)
    eps = 0.1 if norm == "linf" else 0.3  # small enough that no pixel leaves [0, 1]
    x_noisy = random_sign(x, eps=eps, norm=norm, seed=3)
    check_adversarial(x_noisy, x, ThreatModel(norm=norm, eps=eps))
    delta = (x_noisy - x).reshape(16, -1)
    if norm == "linf":  # every pixel moves by ±ε (none is clipped: x lies in [0.2, 0.8])
        np.testing.assert_allclose(np.abs(delta), eps, rtol=1e-5)
        assert 0.3 < np.mean(delta > 0) < 0.7
    else:
        np.testing.assert_allclose(np.linalg.norm(delta, axis=1), eps, rtol=1e-5)


def test_random_sign_is_seeded_and_the_same_on_every_backend(rng):
    x = rng.uniform(0, 1, size=(4, 3, 5, 5)).astype(np.float32)
    a, b = random_sign(x, eps=0.03, seed=1), random_sign(x, eps=0.03, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, random_sign(x, eps=0.03, seed=2))
    np.testing.assert_allclose(random_sign(torch.as_tensor(x), eps=0.03, seed=1).numpy(), a, atol=1e-7)


def test_transferability_on_hand_made_accuracies():
    assert transferability(0.9, 0.5, 0.1) == pytest.approx(0.5)  # half the own attack's drop
    assert transferability(0.9, 0.1, 0.1) == pytest.approx(1.0)  # as strong as the own attack
    assert transferability(0.9, 0.9, 0.0) == pytest.approx(0.0)  # no effect
    assert transferability(0.8, 0.0, 0.2) == pytest.approx(8 / 6)  # stronger than the own attack
    assert transferability(0.8, 0.85, 0.4) == pytest.approx(-0.125)  # helps the target
    assert math.isnan(transferability(0.7, 0.5, 0.7))  # the own attack does nothing: undefined
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        transferability(1.2, 0.5, 0.1)
