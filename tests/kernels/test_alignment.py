"""Epoch ↔ kernel-time alignment (TK supp. C): f_t(X) from the spectrum, the matched time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntkrobust.kernels import fit_kernel_machine, get_architecture
from ntkrobust.kernels.alignment import aligned_times, matching_time, theory_time_per_epoch, training_outputs


@pytest.fixture(scope="module")
def machine(digits_multiclass):
    data = digits_multiclass
    return fit_kernel_machine(get_architecture("two-layer"), data.x_train[:80], data.y_train[:80], time=0.0)


@pytest.mark.parametrize("time", [1e-3, 0.05, 2.0, math.inf])
def test_training_outputs_equal_the_machines_logits_on_its_own_inputs(machine, digits_multiclass, time):
    # independent route: kernel rows Θ(X, X) α_t, against V diag(λ g_t(λ)) Vᵀ Y from the spectrum
    at_t = machine.at_time(time)
    expected = np.asarray(at_t.logits(digits_multiclass.x_train[:80]))
    np.testing.assert_allclose(training_outputs(machine, time), expected, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("time", [2e-3, 0.07, 3.0])
def test_matching_time_recovers_the_time_of_the_machines_own_outputs(machine, time):
    assert matching_time(machine, training_outputs(machine, time)) == pytest.approx(time, rel=1e-6)


def test_matching_time_of_noisy_outputs_is_close(machine, rng):
    outputs = training_outputs(machine, 0.05)
    noisy = outputs + 0.01 * np.abs(outputs).max() * rng.standard_normal(outputs.shape)
    assert matching_time(machine, noisy) == pytest.approx(0.05, rel=0.05)


def test_matching_time_refuses_outputs_of_another_shape(machine):
    with pytest.raises(ValueError, match="do not match"):
        matching_time(machine, np.zeros((80, 3)))


def test_aligned_times_are_linear_through_the_anchor():
    assert aligned_times([0, 10, 20, 1000], anchor_epoch=10, anchor_time=0.5) == [0.0, 0.5, 1.0, 50.0]
    assert theory_time_per_epoch(0.01, 200) == pytest.approx(5e-5)
    with pytest.raises(ValueError):
        aligned_times([1], anchor_epoch=0, anchor_time=1.0)


def _eq29_gram(x):
    """Supp. eq. 29 in plain numpy float64 (angle by atan2: exact 0 on the diagonal)."""
    a = x.reshape(x.shape[0], -1).astype(np.float64)
    dots = a @ a.T
    sq = np.sum(a * a, axis=1)
    theta = np.arctan2(np.sqrt(np.maximum(sq[:, None] * sq[None, :] - dots * dots, 0.0)), dots)
    return (0.5 - theta / (2 * np.pi)) * dots


RIDGE, RATE = 0.02, 40.0


@pytest.fixture(scope="module")
def ridged(digits_multiclass):
    """A ridge and a learning rate far from 1: each must enter f_t and the time grid."""
    data = digits_multiclass
    machine = fit_kernel_machine(
        get_architecture("two-layer"), data.x_train[:30], data.y_train[:30], time=0.0, ridge=RIDGE, learning_rate=RATE
    )
    return machine, _eq29_gram(data.x_train[:30])


@pytest.mark.parametrize("scaled_time", [0.01, 1.0, 30.0])
def test_training_outputs_of_a_ridged_machine_equal_a_matrix_exponential(ridged, scaled_time):
    """f_t(X) = Θ (Θ+ρI)⁻¹ (I − e^{−η(Θ+ρI)t}) Y by scipy's expm, t in units of 1/(ηλ_max)."""
    import scipy.linalg

    machine, gram = ridged
    n = gram.shape[0]
    shifted = gram + RIDGE * np.trace(gram) / n * np.eye(n)
    time = scaled_time / (RATE * np.linalg.eigvalsh(gram)[-1])
    expected = gram @ np.linalg.solve(
        shifted, (np.eye(n) - scipy.linalg.expm(-RATE * time * shifted)) @ machine.targets
    )
    np.testing.assert_allclose(training_outputs(machine, time), expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("scaled_time", [0.01, 1.0, 30.0])
def test_matching_time_of_a_ridged_machine_with_a_learning_rate(ridged, scaled_time):
    """The time scales are 1/(η(λ+ρ)): a grid without η misses the early times."""
    machine, gram = ridged
    time = scaled_time / (RATE * np.linalg.eigvalsh(gram)[-1])
    assert matching_time(machine, training_outputs(machine, time)) == pytest.approx(time, rel=1e-6)
