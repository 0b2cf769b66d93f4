"""Mutation audit of the epoch ↔ time alignment (TK supp. C, ``kernels.alignment``) and of the
robust-only kernels (supp. D.3, ``kernels.robust_only``).

Independent routes: diagonal Gram matrices, whose eigenvectors are unit vectors, so that
f_t(X)_j = λⱼ g_t(λⱼ) Y_j of eq. 7 is written in numpy from the eigenvalues alone (with a ridge:
λⱼ (1 − e^{−η(λⱼ+ρ)t}) / (λⱼ+ρ)); the robust-only kernels on the disjoint-pixel two-layer machine of
``test_features_audit`` (its features known by hand), with the attacks replaced by stand-ins that
record which threat and schedule they were given. Every mutation named in a docstring survived
the earlier tests. Float64 throughout; tolerances next to each comparison.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_features_audit import EPS, TIME, _gram_machine, _hand_features, diagonal  # noqa: F401  (the fixture)

from ntkrobust.attacks import ThreatModel
from ntkrobust.kernels import IllConditionedWarning, robust_only_kernels
from ntkrobust.kernels.alignment import aligned_times, matching_time, training_outputs

# -- alignment: f_t(X) and the matched time on diagonal Grams ------------------------------------------


def test_training_outputs_at_infinite_time_leave_out_the_numerical_null_space():
    """diag(1, 0.5, 1e-20, 0.2): 1e-20 lies below the cutoff n·ε·λ_max ≈ 9e-16, so the machine leaves
    that direction out (pseudo-inverse) and f_∞(X) = P Y with P = diag(1, 1, 0, 1), exactly.
    Catches a gain λ·g_t(λ) computed without the cutoff: λ·(1/λ) = 1 puts Y₃ back (row 3 = Y₃ ≠ 0)."""
    lam = np.array([1.0, 0.5, 1e-20, 0.2])
    with pytest.warns(IllConditionedWarning, match="1 of 4 eigen-directions"):
        machine = _gram_machine(np.diag(lam))
    expected = np.array([1.0, 1.0, 0.0, 1.0])[:, None] * machine.targets
    assert np.abs(machine.targets[2]).max() == 1.0
    np.testing.assert_allclose(training_outputs(machine, math.inf), expected, rtol=0, atol=1e-14)


def test_matching_time_finds_early_times_set_by_a_large_ridge():
    """Ridge 100 (relative: ρ = 100·tr(Θ)/n = 93.75) on diag(2, 1, 0.5, 0.25): the time scales are
    1/(λ+ρ) ≈ 0.01, not 1/λ ≈ 1, so t = 1e-4 (η(λ+ρ)t ≈ 0.01, f_t(X) = λ(1 − e^{−(λ+ρ)t})/(λ+ρ) · Y by
    numpy) must be recovered to rtol 1e-9. Catches a grid whose time scales leave the ridge out
    (it starts at 1e-3/λ_max = 5e-4 and returns that)."""
    lam = np.array([2.0, 1.0, 0.5, 0.25])
    machine = _gram_machine(np.diag(lam), ridge=100.0)
    rho = 100.0 * lam.mean()
    assert machine.ridge == pytest.approx(rho, rel=1e-14)
    time = 1e-4
    outputs = (lam / (lam + rho) * -np.expm1(-time * (lam + rho)))[:, None] * machine.targets
    np.testing.assert_allclose(training_outputs(machine, time), outputs, rtol=1e-12, atol=0)
    assert matching_time(machine, outputs) == pytest.approx(time, rel=1e-9)


@pytest.mark.parametrize("time", [1e-5, 1e-6, 1e-12, 1e-30])
def test_matching_time_follows_a_net_that_moved_less_than_the_grid_starts_at(time):
    """The ridge machine above: the grid starts at 10⁻³ of the fastest time scale, 1e-3/93.75+2 ≈
    1.04e-5. A net that moved less (t = 1e-5 … 1e-30, f_t(X) all but linear in t) is matched to
    rtol 1e-9 by extending the grid downward; before, it came out as the grid's edge (1e-5: 4.4 %
    high, 1e-6: 10.4x, 1e-12: 10⁷x)."""
    lam = np.array([2.0, 1.0, 0.5, 0.25])
    machine = _gram_machine(np.diag(lam), ridge=100.0)
    rho = 100.0 * lam.mean()
    outputs = (lam / (lam + rho) * -np.expm1(-time * (lam + rho)))[:, None] * machine.targets
    assert matching_time(machine, outputs) == pytest.approx(time, rel=1e-9, abs=0)


def test_matching_time_of_a_net_that_has_not_moved_is_zero_and_of_a_converged_one_its_earliest_fit():
    """Outputs of zero are fitted best as t → 0: 0.0 (the grid's lowest point before). Outputs of a
    machine converged to the last digit (t = 10⁵, e^{−ηλ_min t} = e^{−12500}) are fitted as well
    by every later t: the earliest such time is returned, and its f_t(X) equals them to 1e-15."""
    lam = np.array([2.0, 1.0, 0.5, 0.25])
    machine = _gram_machine(np.diag(lam), ridge=100.0)
    assert matching_time(machine, np.zeros_like(machine.targets)) == 0.0
    machine = _gram_machine(np.diag(lam), learning_rate=0.5)
    converged = -np.expm1(-0.5 * 1e5 * lam)[:, None] * machine.targets
    found = matching_time(machine, converged)
    assert 0 < found < 1e5
    np.testing.assert_allclose(training_outputs(machine, found), converged, rtol=0, atol=1e-15)


def test_matching_time_finds_late_times_from_the_last_digits_of_the_outputs():
    """diag(2, 1, 0.5, 0.25), η = 0.5, t = 15/(ηλ_min): the slowest direction is fitted up to
    e^{−15} ≈ 3e-7, which float64 outputs still resolve (recovered to rtol 1e-8; the real code gets
    ~1e-11). Catches a grid that stops at 10 time scales instead of 10³ (it cannot return more than
    10/(ηλ_min)) and outputs read in float32 (which round e^{−15} away: 0.2 % off)."""
    lam = np.array([2.0, 1.0, 0.5, 0.25])
    machine = _gram_machine(np.diag(lam), learning_rate=0.5)
    time = 15.0 / (0.5 * lam.min())
    outputs = -np.expm1(-0.5 * time * lam)[:, None] * machine.targets
    assert matching_time(machine, outputs) == pytest.approx(time, rel=1e-8)


def test_matching_time_refuses_nan_outputs_and_a_machine_without_directions():
    """NaN outputs (a diverged net) make every residual NaN, and argmin would return the grid's
    first time as a match; a zero Gram keeps no direction (every time fits equally). Both must be
    refused with their own message, not a number or numpy's error about an empty reduction."""
    lam = np.array([2.0, 1.0, 0.5, 0.25])
    machine = _gram_machine(np.diag(lam))
    outputs = -np.expm1(-lam)[:, None] * machine.targets
    outputs[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        matching_time(machine, outputs)
    with pytest.warns(IllConditionedWarning, match="numerically zero"):
        zero = _gram_machine(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="no eigen-direction to align with"):
        matching_time(zero, np.zeros_like(zero.targets))


def test_aligned_times_keep_the_epochs_order_and_refuse_a_nan_anchor_time():
    """t = e·t*/e* for each epoch in the order given (callers zip epochs and times), by hand. A NaN
    anchor time (a failed match) would turn every epoch's time into NaN silently; ``not t >= 0``
    refuses it where ``t < 0`` does not. An infinite anchor is not NaN: its times are inf."""
    assert aligned_times([30, 0, 10], anchor_epoch=10, anchor_time=0.5) == [1.5, 0.0, 0.5]
    with pytest.raises(ValueError, match="time >= 0"):
        aligned_times([0, 10], anchor_epoch=10, anchor_time=math.nan)
    with pytest.raises(ValueError, match="time >= 0"):
        aligned_times([0, 10], anchor_epoch=10, anchor_time=-1e-9)
    assert aligned_times([10, 20], anchor_epoch=10, anchor_time=math.inf) == [math.inf, math.inf]


# -- robust-only kernels: the threat, the schedule, the r values ------------------------------------------


def _recording_attacks(monkeypatch):
    """Replace the attacks by stand-ins that return x unchanged and record (machine, spec)."""
    from ntkrobust.kernels import robust_only as robust_only_module

    seen = []

    def stand_in(m, x_, labels, spec):
        seen.append((m, spec))
        return np.asarray(x_)

    monkeypatch.setattr(robust_only_module, "craft_adversarial", stand_in)
    return seen


def test_robust_only_attacks_run_in_the_threats_norm_and_default_to_pgd_10_from_a_random_start(diagonal, monkeypatch):  # noqa: F811  (the imported fixture)
    """An ℓ2 threat of ε = 0.5: both the full machine's attacks and each kernel's own (2 + 2·2 calls)
    must be ℓ2 of radius 0.5; without a schedule PGD runs the paper's PGD-10 (module docstring) from
    a random start (``AttackSpec``: PGD starts at random unless told otherwise), seed 0. Catches
    FGSM or PGD fixed to ℓ∞ (every other test attacks in ℓ∞) and other defaults."""
    machine, _, x_test, y_test, _, _ = diagonal
    seen = _recording_attacks(monkeypatch)
    ranking = np.array([4, 0, 5, 2, 1, 3])
    robust_only_kernels(machine, ranking, [1, 3], x_test, y_test, ThreatModel("l2", 0.5), pgd_step=0.1)
    assert len(seen) == 6
    assert sorted(spec.method for _, spec in seen) == ["fgsm"] * 3 + ["pgd"] * 3
    assert all((spec.norm, spec.eps) == ("l2", 0.5) for _, spec in seen)
    pgd = [spec for _, spec in seen if spec.method == "pgd"]
    assert all((s.step, s.steps, s.random_start, s.seed) == (0.1, 10, True, 0) for s in pgd)


def test_r_beyond_a_short_ranking_is_refused(diagonal, monkeypatch):  # noqa: F811  (the imported fixture)
    """A ranking of 3 of the 6 eigen-indices: r = 4 would keep only those 3 features and report
    them as f'_4, so r must be refused by the ranking's length, not the machine's n; r = 3 is the
    sum of the three hand features Θ(x, x_π(i)) g_t(λᵢ) y_π(i) (rtol 1e-10)."""
    machine, x_train, x_test, y_test, order, lam = diagonal
    seen = _recording_attacks(monkeypatch)
    ranking = np.array([4, 0, 5])
    with pytest.raises(ValueError, match=r"r must be in \[1, 3\], got \[4\]"):
        robust_only_kernels(machine, ranking, [2, 4], x_test, y_test, ThreatModel("linf", EPS), pgd_step=0.03)
    (result,) = robust_only_kernels(machine, ranking, [3], x_test, y_test, ThreatModel("linf", EPS), pgd_step=0.03)
    want = _hand_features(x_test, x_train, order, lam)[:, ranking].sum(axis=1)
    kept = seen[2][0]  # after the two attacks of the full machine
    np.testing.assert_allclose(np.asarray(kept.logits(x_test))[:, 0], want, rtol=1e-10, atol=1e-14)
    assert result.clean == pytest.approx(np.mean((want > 0) == (y_test == 1)), abs=1e-15)


def test_results_follow_the_order_of_r_values(diagonal, monkeypatch):  # noqa: F811  (the imported fixture)
    """r = 6, 1, 4 in that order: result k belongs to r_values[k] (callers zip them), each with the
    clean accuracy of the sum of its r hand features at t = 0.7 (``TIME``). The three accuracies
    differ, so results sorted by r cannot pass."""
    machine, x_train, x_test, y_test, order, lam = diagonal
    _recording_attacks(monkeypatch)
    ranking = np.array([4, 0, 5, 2, 1, 3])
    r_values = [6, 1, 4]
    results = robust_only_kernels(machine, ranking, r_values, x_test, y_test, ThreatModel("linf", EPS), pgd_step=0.03)
    assert [res.r for res in results] == r_values
    hand = _hand_features(x_test, x_train, order, lam, time=TIME)
    clean = [float(np.mean((hand[:, ranking[:r]].sum(axis=1) > 0) == (y_test == 1))) for r in r_values]
    assert len(set(clean)) == 3, clean
    assert [res.clean for res in results] == pytest.approx(clean, abs=1e-15)
