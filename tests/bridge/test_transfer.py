"""Transfer evaluation of a trained net: own white-box, random sign, NTK-crafted examples, τ."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntkrobust.attacks import AttackSpec, ThreatModel, check_adversarial
from ntkrobust.bridge.data import load_dataset, task_indices
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.transfer import (
    cosine_summary,
    evaluate_target,
    gradient_cosine,
    random_sign_examples,
    white_box_examples,
)
from ntkrobust.bridge.two_layer import train_full_batch

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=300, n_test=120, seed=0)


@pytest.fixture(scope="module")
def trained_net(digits):
    """A two-layer ReLU net (registry fc1, width 256) fitted to one-hot targets by gradient descent."""
    config = model_config("fc1", digits.image_shape, 10, width=256, seed=0)
    net = build_model(config)
    targets = torch.eye(10)[task_indices(digits.y_train, digits.classes)]
    train_full_batch(net, torch.as_tensor(digits.x_train), targets, learning_rate=2.0, epochs=300)
    return net.eval()


def test_ntk_attack_beats_random_sign_on_a_trained_digits_net(digits, trained_net):
    from ntkrobust.kernels import fit_kernel_machine, get_architecture
    from ntkrobust.kernels.adversarial import craft_adversarial

    machine = fit_kernel_machine(get_architecture("fc1"), digits.x_train, digits.y_train, ridge=1e-3)
    ntk = craft_adversarial(machine, digits.x_test, digits.y_test, AttackSpec("fgsm", EPS))
    y = task_indices(digits.y_test, digits.classes)
    attack = AttackSpec("fgsm", eps=EPS)
    result = evaluate_target(trained_net, digits.x_test, y, attack, {"NTK fc1": ntk})
    assert result.clean_accuracy > 0.85
    # the kernel's examples, made without the net, do far more than noise of the same size
    # (measured: clean 0.91, own FGSM 0.31, NTK 0.67, random sign 0.86)
    assert result.sources["NTK fc1"] < result.random_accuracy - 0.1
    assert result.white_box_accuracy <= result.sources["NTK fc1"] <= result.clean_accuracy
    assert result.random_accuracy <= result.clean_accuracy
    tau = result.transferability()["NTK fc1"]
    assert 0.25 < tau <= 1.0  # measured 0.40
    check_adversarial(result.white_box_examples, digits.x_test, ThreatModel("linf", EPS))


def test_own_examples_are_reused_and_counted_as_the_white_box_attack(digits, trained_net):
    y = task_indices(digits.y_test, digits.classes)
    attack = AttackSpec("pgd", eps=EPS, step=0.025, steps=5, seed=1)
    own = white_box_examples(trained_net, digits.x_test, y, attack)
    check_adversarial(own, digits.x_test, ThreatModel("linf", EPS))
    fresh = evaluate_target(trained_net, digits.x_test, y, attack, {"own": own})
    reused = evaluate_target(trained_net, digits.x_test, y, attack, {}, own_examples=own)
    assert fresh.white_box_accuracy == reused.white_box_accuracy == fresh.sources["own"]
    assert fresh.transferability()["own"] == pytest.approx(1.0)


def test_one_output_nets_predict_by_sign(digits):
    binary = load_dataset("digits", classes=[3, 8], n_train=60, n_test=30, seed=0)
    net = build_model(model_config("fc1", binary.image_shape, 1, width=64, seed=0))
    y = task_indices(binary.y_train, binary.classes)
    train_full_batch(
        net,
        torch.as_tensor(binary.x_train),
        torch.as_tensor(2.0 * y - 1.0)[:, None].float(),
        learning_rate=0.1,
        epochs=100,
    )
    y_test = task_indices(binary.y_test, binary.classes)
    result = evaluate_target(net, binary.x_test, y_test, AttackSpec("fgsm", eps=0.2), {})
    predicted = (net(torch.as_tensor(binary.x_test))[:, 0] > 0).long().numpy()
    assert result.clean_accuracy == pytest.approx(np.mean(predicted == y_test)) and result.clean_accuracy > 0.8
    assert result.white_box_accuracy < result.clean_accuracy


def test_random_sign_examples_follow_the_attacks_budget(digits):
    attack = AttackSpec("fgsm", eps=0.05, seed=4)
    noisy = random_sign_examples(digits.x_test, attack)
    check_adversarial(noisy, digits.x_test, ThreatModel("linf", 0.05))
    np.testing.assert_array_equal(noisy, random_sign_examples(digits.x_test, attack))


def test_gradient_cosine_and_its_summary(rng):
    a = rng.standard_normal((5, 1, 4, 4))
    cos = gradient_cosine(a, np.concatenate([2 * a[:3], -a[3:4], np.zeros_like(a[4:])]))
    np.testing.assert_allclose(cos[:4], [1, 1, 1, -1], atol=1e-12)
    assert math.isnan(cos[4])
    summary = cosine_summary(cos)
    assert summary["mean"] == pytest.approx(0.5) and summary["median"] == pytest.approx(1.0)
    assert cosine_summary(np.array([np.nan]))["mean"] is None
    with pytest.raises(ValueError, match="cannot be compared"):
        gradient_cosine(a, a[:, :, :2])


def test_white_box_attack_configuration():
    assert AttackSpec("fgsm", eps=0.3, step=0.1, steps=7).to_dict()["steps"] == 1
    with pytest.raises(ValueError, match="unknown attack method"):
        AttackSpec("cw", eps=0.3)
    with pytest.raises(ValueError, match="the PGD step must be a finite number > 0, got None"):
        AttackSpec("pgd", eps=0.3)
