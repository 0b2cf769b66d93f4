"""Black-box NTK attacks on kernel machines: eq. 8 exactly, invariants, and real accuracy drops."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.attacks import METHODS, AttackSpec, ThreatModel, check_adversarial, robust_accuracy
from ntkrobust.kernels import craft_adversarial
from ntkrobust.kernels._jax import jax, jnp


def config(method, norm="linf", eps=0.2):
    return AttackSpec(method, eps, norm, step=eps / 4, steps=10, seed=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_every_method_keeps_the_invariants(
    method, norm, task, fc2_binary, fc2_multiclass, digits_binary, digits_multiclass
):
    machine, data = (fc2_binary, digits_binary) if task == "binary" else (fc2_multiclass, digits_multiclass)
    eps = 0.2 if norm == "linf" else 1.0
    x = data.x_test[:25]
    x_adv = craft_adversarial(machine, x, data.y_test[:25], config(method, norm, eps), batch_size=10)
    assert isinstance(x_adv, np.ndarray)
    check_adversarial(x_adv, x, ThreatModel(norm, eps))
    assert np.any(x_adv != x)


@pytest.mark.parametrize("method", METHODS)
def test_batches_attack_their_own_points(method, fc2_multiclass, digits_multiclass):
    """Batches of 10 give each point the attack that one batch of all gives it: its own label and,
    for PGD, its own random start, the one of a single call on all 25 points (ℓ∞ and ℓ2). Every
    study attacks fewer points than the default batch of 1000, but the MNIST test set's 10,000 go
    through ten batches; a loop that gave every batch the first batch's labels passed the other
    tests, and until 2026-12-06 each batch drew its starts from seed + its first row, so robust
    accuracy moved with the batch size. The steps agree exactly up to a float32 rounding of the
    projection (ℓ∞: signs) or of the gradient's norm (ℓ2)."""
    x, y = digits_multiclass.x_test[:25], digits_multiclass.y_test[:25]
    specs = [config(method)]
    if method == "pgd":
        specs.append(AttackSpec("pgd", 1.0, "l2", step=0.3, steps=3, seed=4))
    for spec in specs:
        batched = craft_adversarial(fc2_multiclass, x, y, spec, batch_size=10)
        np.testing.assert_allclose(batched, craft_adversarial(fc2_multiclass, x, y, spec), rtol=0, atol=1e-6)


@pytest.mark.parametrize("time", [0.5, np.inf])
def test_binary_fgsm_is_eq8_exactly(fc2_binary, digits_binary, time):
    """x̃ = clip(x − yε·sign(∇ₓf_t(x))), with ∇ₓf_t by autodiff of the machine's outputs."""
    machine = fc2_binary.at_time(time)
    x = digits_binary.x_test
    y = 2.0 * machine.target_index(digits_binary.y_test) - 1.0
    grad_f = np.asarray(jax.grad(lambda xb: jnp.sum(machine.logits(xb)))(jnp.asarray(x)))
    expected = np.clip(x - np.float32(0.1) * y[:, None, None, None].astype(np.float32) * np.sign(grad_f), 0, 1)
    got = craft_adversarial(machine, x, digits_binary.y_test, config("fgsm", eps=0.1))
    np.testing.assert_array_equal(got, expected)


def test_binary_taylor_attacks_equal_fgsm_at_infinity(fc2_binary, digits_binary):
    """Eq. 16 and eq. 8 coincide for the converged binary machine (z = ∇ₓf_∞)."""
    x, y = digits_binary.x_test, digits_binary.y_test
    fg = craft_adversarial(fc2_binary, x, y, config("fgsm", eps=0.1))
    for method in ("taylor-l1", "taylor-sum"):
        np.testing.assert_array_equal(craft_adversarial(fc2_binary, x, y, config(method, eps=0.1)), fg)


@pytest.mark.parametrize("method", METHODS)
def test_attacks_lower_accuracy_on_digits(method, fc2_multiclass, digits_multiclass):
    x, y = digits_multiclass.x_test, digits_multiclass.y_test
    clean = robust_accuracy(fc2_multiclass.predict(x), y)
    attacked = robust_accuracy(fc2_multiclass.predict(craft_adversarial(fc2_multiclass, x, y, config(method))), y)
    assert clean > 0.85
    assert attacked < clean - 0.4, f"{method}: clean {clean}, attacked {attacked}"


def test_pgd_is_at_least_as_strong_as_fgsm_here(fc2_multiclass, digits_multiclass):
    x, y = digits_multiclass.x_test, digits_multiclass.y_test
    acc = {
        m: robust_accuracy(fc2_multiclass.predict(craft_adversarial(fc2_multiclass, x, y, config(m, eps=0.1))), y)
        for m in ("fgsm", "pgd")
    }
    assert acc["pgd"] <= acc["fgsm"]


def test_attack_config_validates():
    with pytest.raises(ValueError, match="unknown attack"):
        AttackSpec("cw", 0.1)
    with pytest.raises(ValueError, match="the PGD step must be a finite number > 0, got None"):
        AttackSpec("pgd", 0.1, step=None, steps=10)
