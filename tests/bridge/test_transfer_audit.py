"""Audit of ``bridge.transfer``: every accuracy of ``evaluate_target`` and LOO's τ counted by hand on
a crafted two-pixel net whose prediction is readable from its input (class 0 iff x₀ > x₁), with
examples chosen so that capping by clean correctness, and each argument of τ, changes the number.

Hand counts (five points, three correct clean; 1 = correct):

    point                 0  1  2  3  4
    clean                 1  1  1  0  0     Acc_b = 3/5
    own examples          0  0  1  1  1     still correct: 1/5   (plain: 3/5)
    source examples       0  1  1  1  0     still correct: 2/5   (plain: 3/5)
    random examples       0  1  1  1  1     still correct: 2/5   (plain: 4/5)

τ(source) = (3/5 − 2/5) / (3/5 − 1/5) = 1/2 (swapped: 2). The random-sign floor is checked against
its definition: every pixel moved by exactly ε (l∞) or every example by exactly ε in l2, away
from the box, seeded by the attack's seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge.transfer import (
    cosine_summary,
    evaluate_target,
    gradient_cosine,
    random_sign_examples,
    white_box_examples,
)


def _net(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """Logits (x₀, x₁) of a (N, 1, 1, 2) image: class 0 iff x₀ > x₁."""
    layer = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
    return torch.nn.Sequential(torch.nn.Flatten(), layer).to(dtype).eval()


def _images(pairs: list[tuple[float, float]]) -> np.ndarray:
    return np.array(pairs, dtype=np.float32).reshape(-1, 1, 1, 2)


X = _images([(0.9, 0.1), (0.8, 0.3), (0.2, 0.7), (0.6, 0.4), (0.3, 0.6)])
Y = np.array([0, 0, 1, 1, 0])
OWN = _images([(0.1, 0.9), (0.3, 0.8), (0.2, 0.7), (0.4, 0.6), (0.6, 0.3)])
SOURCE = _images([(0.1, 0.9), (0.8, 0.3), (0.2, 0.7), (0.4, 0.6), (0.3, 0.6)])
RANDOM = _images([(0.1, 0.9), (0.8, 0.3), (0.2, 0.7), (0.4, 0.6), (0.6, 0.3)])
SMALL = AttackSpec("fgsm", eps=0.05)  # margins are >= 0.2: FGSM of this size flips nothing


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_accuracies_are_the_share_still_correct_counted_by_hand(dtype):
    result = evaluate_target(
        _net(dtype), X, Y, SMALL, {"source": SOURCE, "own again": OWN}, random_examples=RANDOM, own_examples=OWN
    )
    assert result.clean_accuracy == pytest.approx(3 / 5)
    assert result.white_box_accuracy == pytest.approx(1 / 5)  # 3/5 if not capped by clean
    assert result.random_accuracy == pytest.approx(2 / 5)  # 4/5 if not capped
    assert result.sources == pytest.approx({"source": 2 / 5, "own again": 1 / 5})  # 3/5 each if not capped
    assert result.white_box_examples is OWN
    tau = result.transferability()
    assert tau["source"] == pytest.approx(0.5)  # (Acc_b − Acc_other)/(Acc_b − Acc_own); 2.0 swapped
    assert tau["own again"] == pytest.approx(1.0)


def test_without_given_examples_the_own_attack_and_the_random_floor_are_made_here():
    """Small ε: neither the net's own FGSM nor random signs flip a prediction, so both
    accuracies are the clean 3/5 and τ is NaN (no drop); given examples are used as given."""
    net = _net()
    made = evaluate_target(net, X, Y, SMALL, {"source": SOURCE})
    assert made.white_box_accuracy == made.random_accuracy == pytest.approx(3 / 5)
    np.testing.assert_array_equal(made.white_box_examples, white_box_examples(net, X, Y, SMALL))
    assert made.white_box_examples.dtype == X.dtype
    assert math.isnan(made.transferability()["source"])
    given = evaluate_target(net, X, Y, SMALL, {"source": SOURCE}, own_examples=OWN)
    assert given.white_box_accuracy == pytest.approx(1 / 5) and given.random_accuracy == pytest.approx(3 / 5)
    floor = evaluate_target(net, X, Y, SMALL, {}, own_examples=OWN, random_examples=RANDOM)
    assert floor.random_accuracy == pytest.approx(2 / 5) and floor.white_box_accuracy == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="do not match"):
        evaluate_target(net, X, Y, SMALL, {"bad": SOURCE[:3]}, own_examples=OWN)


def test_the_own_white_box_attack_is_fgsm_of_the_attacks_size():
    """On logits (x₀, x₁) the cross-entropy's input gradient has sign (−1, +1) for class 0 and
    (+1, −1) for class 1: FGSM moves each pixel by exactly ε against the label."""
    attack = AttackSpec("fgsm", eps=0.1)
    own = white_box_examples(_net(), X, Y, attack)
    signs = np.where(Y == 0, 1.0, -1.0)[:, None, None, None] * np.array([-1.0, 1.0])
    np.testing.assert_allclose(own, X + 0.1 * signs, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_sign_examples_move_by_the_full_eps_seeded_by_the_attack(norm):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.3, 0.7, size=(6, 1, 4, 4)).astype(np.float32)  # away from the box
    attack = AttackSpec("fgsm", eps=0.1, norm=norm, seed=3)
    noisy = random_sign_examples(x, attack)
    delta = (noisy - x).reshape(6, -1).astype(np.float64)
    if norm == "linf":
        np.testing.assert_allclose(np.abs(delta), 0.1, atol=1e-6)  # every pixel by ±ε
        assert 0.3 < np.mean(delta > 0) < 0.7
    else:
        np.testing.assert_allclose(np.linalg.norm(delta, axis=1), 0.1, atol=1e-6)
    np.testing.assert_array_equal(noisy, random_sign_examples(x, AttackSpec("fgsm", eps=0.1, norm=norm, seed=3)))
    other = random_sign_examples(x, AttackSpec("fgsm", eps=0.1, norm=norm, seed=4))
    assert not np.array_equal(noisy, other)
    assert not np.array_equal(noisy, random_sign_examples(x, AttackSpec("fgsm", eps=0.1, norm=norm)))


def test_gradient_cosine_and_quartiles_by_hand():
    a = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[1.0, 0.0], [5.0, 0.0], [0.0, -1.0], [0.0, 0.0], [1.0, 1.0]])
    cos = gradient_cosine(a, b)
    np.testing.assert_allclose(cos[[0, 1, 2, 4]], [0.6, 1.0, -1.0, 1 / math.sqrt(2)], rtol=1e-12)
    assert math.isnan(cos[3])
    summary = cosine_summary(np.array([0.4, np.nan, -0.2, 0.0, 0.8, 0.2]))
    # the five finite values -0.2, 0, 0.2, 0.4, 0.8: numpy's linear quantiles are the 2nd, 3rd, 4th
    assert summary == pytest.approx({"mean": 0.24, "median": 0.2, "q25": 0.0, "q75": 0.4})
