"""Audit of the eigen-features (TK sec. 4, eq. 9), the robust-only kernels (supp. D.3) and the
epoch ↔ time alignment (supp. C), each against a route that shares no code with the library.

- A *diagonal* Gram matrix: the two-layer NTK (supp. eq. 29) of training images on disjoint pixels
  is Θ(xᵢ, xⱼ) = 0 for i ≠ j (x·x' = 0) and ‖xᵢ‖²/2 on the diagonal. Its eigenvectors are the unit
  vectors e_π(i), π the order of decreasing norms, known without an eigensolver, so
  f⁽ⁱ⁾(x) = Θ(x, x_π(i)) g_t(λᵢ) y_π(i) with Θ(x, ·) written in numpy. For images in [0, 1],
  Θ(x, x_j) ≥ 0 with equality iff x·x_j = 0: which class each feature picks at x and at its FGSM
  point (the sign of the numpy gradient, by central differences) is counted by hand, as supp. A
  eq. 1-2 define usefulness and robustness (correct at x and at the attacked point).
- numpy's eigh of the numpy eq. 29 Gram at a finite time with ridge (prop. 1, eq. 33, by hand).
- the PGD scores of the Jacobian route in several blocks against one machine per feature attacked
  by the ordinary loop (``restricted_to([i])`` + ``craft_adversarial``).
- hand-made Gram matrices (``fit_kernel_machine(gram=...)``) with known spectra, zero eigenvalues
  included; full-batch gradient descent on a linear model whose NTK is that Gram, for the time
  per epoch of supp. C.
Everything float64; tolerances next to each comparison.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntkrobust.attacks import AttackSpec, ThreatModel, robust_accuracy
from ntkrobust.kernels import (
    IllConditionedWarning,
    feature_coefficients,
    feature_gradients,
    feature_outputs,
    feature_scores,
    fit_kernel_machine,
    get_architecture,
    loss_gradient_weights,
    robust_only_kernels,
)
from ntkrobust.kernels.adversarial import craft_adversarial
from ntkrobust.kernels.alignment import matching_time, theory_time_per_epoch, training_outputs

EPS = 0.1


def _eq29(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Supp. eq. 29 in plain numpy float64 (angle by atan2: exact 0 on the diagonal)."""
    a, b = x1.reshape(x1.shape[0], -1).astype(np.float64), x2.reshape(x2.shape[0], -1).astype(np.float64)
    dots = a @ b.T
    sq = np.sum(a * a, axis=1)[:, None] * np.sum(b * b, axis=1)[None, :]
    theta = np.arctan2(np.sqrt(np.maximum(sq - dots * dots, 0.0)), dots)
    return (0.5 - theta / (2 * np.pi)) * dots


def _filter(lam: np.ndarray, time: float, ridge: float = 0.0, rate: float = 1.0) -> np.ndarray:
    """g_t(λ) of eq. 7 by hand."""
    s = lam + ridge
    return 1.0 / s if math.isinf(time) else (1.0 - np.exp(-rate * time * s)) / s


# -- the diagonal machine -------------------------------------------------------------------------

# six training images of 1×4×4, image j on pixels 2j and 2j+1 only (pixels 12-15 empty); the
# squared norms are all different and their order is neither the given one nor its reverse
_TRAIN_VALUES = np.array([[0.5, 0.3], [0.9, 0.6], [0.2, 0.1], [0.7, 0.4], [1.0, 0.8], [0.4, 0.35]])
_TRAIN_LABELS = np.array([1, 0, 1, 1, 0, 1])  # class ids; classes (0, 1): 1 ↔ y = +1
TIME = 0.7


def _diagonal_data():
    x_train = np.zeros((6, 16))
    for j, (a, b) in enumerate(_TRAIN_VALUES):
        x_train[j, 2 * j : 2 * j + 2] = a, b
    # test points: per training support, absent (0), fragile (≤ ε: FGSM can erase it) or strong;
    # every test point has some mass on the empty pixels 12-15 (never parallel to a training image)
    rng = np.random.default_rng(7)
    kinds = rng.integers(0, 3, size=(16, 6))
    kinds[0] = 0  # one point overlapping no training image: every +1 feature reads it as −1
    x_test = np.zeros((16, 16))
    for q in range(16):
        for j in range(6):
            if kinds[q, j] == 1:
                x_test[q, 2 * j : 2 * j + 2] = rng.uniform(0.02, 0.08, size=2)
            elif kinds[q, j] == 2:
                x_test[q, 2 * j] = rng.uniform(0.3, 0.9)
                x_test[q, 2 * j + 1] = rng.uniform(0.0, 0.9)
        x_test[q, 12:] = rng.uniform(0.1, 0.9, size=4)
    y_test = rng.integers(0, 2, size=16)
    return x_train.reshape(6, 1, 4, 4), x_test.reshape(16, 1, 4, 4), y_test


@pytest.fixture(scope="module")
def diagonal():
    x_train, x_test, y_test = _diagonal_data()
    machine = fit_kernel_machine(get_architecture("two-layer"), x_train, _TRAIN_LABELS, classes=(0, 1), time=TIME)
    order = np.argsort(-np.sum(x_train.reshape(6, -1) ** 2, axis=1))  # π: eigen-index → training point
    assert not np.array_equal(order, np.arange(6)) and not np.array_equal(order, np.arange(6)[::-1])
    lam = np.sum(x_train.reshape(6, -1) ** 2, axis=1)[order] / 2
    return machine, x_train, x_test, y_test, order, lam


def _hand_features(x, x_train, order, lam, time=TIME):
    """f⁽ⁱ⁾(x) = Θ(x, x_π(i)) g_t(λᵢ) y_π(i) of the diagonal Gram, shape (N, n)."""
    y = 2.0 * _TRAIN_LABELS[order] - 1.0
    return _eq29(x, x_train[order]) * (_filter(lam, time) * y)[None]


def test_the_diagonal_grams_spectrum_is_its_diagonal_in_descending_order(diagonal):
    machine, _, _, _, order, lam = diagonal
    np.testing.assert_allclose(machine.eigenvalues, lam, rtol=1e-13)
    # vᵢ = ±e_π(i): each eigenvector is the unit vector of its training point
    np.testing.assert_allclose(np.abs(machine.eigenvectors), np.eye(6)[:, order], atol=1e-13)


def test_features_of_the_diagonal_gram_carry_the_filter_and_their_own_label(diagonal):
    """All n features in eigen-order (default indices) and a chosen subset, at t = 0.7 where
    λ g_t(λ) = 1 − e^{−0.7λ} ≤ 0.44 (far from λ⁻¹): f⁽ⁱ⁾ = Θ(x, x_π(i)) g_t(λᵢ) y_π(i), rtol 1e-10."""
    machine, x_train, x_test, _, order, lam = diagonal
    expected = _hand_features(x_test, x_train, order, lam)
    assert np.all(_filter(lam, TIME) * lam < 0.5)
    got = feature_outputs(machine, x_test)
    assert got.shape == (16, 6, 1)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got[:, :, 0], expected, rtol=1e-10, atol=1e-13 * scale)
    np.testing.assert_allclose(
        feature_outputs(machine, x_test, [4, 1])[:, :, 0], expected[:, [4, 1]], atol=1e-13 * scale
    )
    c = feature_coefficients(machine)[:, 0]  # cᵢ = g vᵢᵀY = ±g y_π(i) (sign of vᵢ)
    np.testing.assert_allclose(np.abs(c), _filter(lam, TIME), rtol=1e-12)
    np.testing.assert_allclose(
        feature_outputs(machine, x_test).sum(axis=1), np.asarray(machine.logits(x_test)), atol=1e-13
    )


def test_feature_indices_past_the_last_one_are_refused(diagonal):
    machine, _, x_test, y_test, _, _ = diagonal
    for bad in ([6], [0, 6], [-1]):
        with pytest.raises(ValueError, match="feature indices"):
            feature_outputs(machine, x_test, bad)
        with pytest.raises(ValueError, match="feature indices"):
            feature_coefficients(machine, bad)
        with pytest.raises(ValueError, match="feature indices"):
            feature_gradients(machine, x_test, y_test, bad)


def test_feature_gradients_are_central_differences_of_the_hand_features(diagonal):
    """∇ₓ(y·f⁽ⁱ⁾) against central differences (h = 1e-6) of the numpy features, at points whose
    pixels are all away from 0 and 1: rtol 1e-6 of the largest entry."""
    machine, x_train, _, _, order, lam = diagonal
    rng = np.random.default_rng(3)
    x = rng.uniform(0.1, 0.9, size=(3, 1, 4, 4))
    labels = np.array([1, 0, 1])
    sign = 2.0 * labels - 1.0
    features = [0, 3, 5]
    got = feature_gradients(machine, x, labels, features)
    assert got.shape == (3, 3, 1, 4, 4)
    h = 1e-6
    want = np.zeros((3, 3, 16))
    for p in range(16):
        step = np.zeros(16)
        step[p] = h
        up = _hand_features(x + step.reshape(1, 1, 4, 4), x_train, order, lam)[:, features]
        down = _hand_features(x - step.reshape(1, 1, 4, 4), x_train, order, lam)[:, features]
        want[:, :, p] = sign[:, None] * (up - down) / (2 * h)
    np.testing.assert_allclose(got.reshape(3, 3, 16), want, rtol=0, atol=1e-6 * np.abs(want).max())


def _hand_scores(x, y, x_train, order, lam):
    """Usefulness and FGSM robustness of every feature of the diagonal machine, by hand.

    A feature of a −1 training point has f ≤ 0 everywhere: it always says −1. A feature of a +1
    point says +1 iff x·x_j > 0; its FGSM point moves each pixel of x_j's support by ε against
    y·∂f/∂x (numpy central differences) and clips to [0, 1], and the feature's answer there is
    again whether x·x_j > 0. Counted over all points: correct at x, and correct at x and at the attack.
    """
    n_test, n = x.shape[0], lam.size
    xf = x.reshape(n_test, -1)
    f = _hand_features(x, x_train, order, lam)
    sign = 2.0 * y - 1.0
    useful, robust = np.zeros(n), np.zeros(n)
    for i in range(n):
        j = order[i]
        support = np.flatnonzero(x_train[j].reshape(-1))
        if _TRAIN_LABELS[j] == 0:
            correct = y == 0
            useful[i] = robust[i] = correct.mean()
            continue
        correct = (f[:, i] > 0) == (y == 1)
        still = np.zeros(n_test, dtype=bool)
        for q in np.flatnonzero(correct):
            adv = xf[q].copy()
            for p in support:
                step = np.zeros(16)
                step[p] = 1e-6
                up = _hand_features((xf[q] + step).reshape(1, 1, 4, 4), x_train, order, lam)[0, i]
                down = _hand_features((xf[q] - step).reshape(1, 1, 4, 4), x_train, order, lam)[0, i]
                adv[p] = np.clip(xf[q, p] - EPS * np.sign(sign[q] * (up - down)), 0.0, 1.0)
            still[q] = (adv[support] @ x_train[j].reshape(-1)[support] > 0) == (y[q] == 1)
        useful[i], robust[i] = correct.mean(), still.mean()
    return useful, robust


@pytest.mark.parametrize("route", ["dots", "jacobian"])
def test_scores_of_all_diagonal_features_are_counted_by_hand(diagonal, route):
    """n_features = n (every feature) on both routes, against the hand count of supp. A eq. 1-2;
    the hand count has robust < useful for some features and robust = useful for others."""
    machine, x_train, x_test, y_test, order, lam = diagonal
    scores = feature_scores(machine, x_test, y_test, ThreatModel("linf", EPS), n_features=6, route=route)
    useful, robust = _hand_scores(x_test, y_test, x_train, order, lam)
    assert np.any(robust < useful) and np.any(robust == useful) and np.any(robust > 0)
    np.testing.assert_allclose(scores.usefulness, useful, rtol=0, atol=1e-15)
    np.testing.assert_allclose(scores.robustness, robust, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(scores.index, np.arange(6))
    np.testing.assert_allclose(scores.eigenvalue, lam, rtol=1e-13)
    assert scores.chance == max(np.mean(y_test == 0), np.mean(y_test == 1))


def test_auto_takes_the_dot_route_where_the_kernel_has_one(diagonal, monkeypatch):
    """The two routes give the same scores, so which one "auto" took shows only in the calls:
    the dot route for a kernel of dots (two-layer) unless the Jacobian route is asked for (that
    conv kernels take the Jacobian route is checked in test_feature_rows.py)."""
    from ntkrobust.kernels import features as features_module

    machine, _, x_test, y_test, _, _ = diagonal
    calls = []
    for name in ("pair_scores", "_jacobian_route"):
        original = getattr(features_module, name)
        monkeypatch.setattr(
            features_module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k)
        )
    threat = ThreatModel("linf", EPS)
    feature_scores(machine, x_test[:4], y_test[:4], threat, n_features=2)
    feature_scores(machine, x_test[:4], y_test[:4], threat, n_features=2, route="jacobian")
    assert calls == ["pair_scores", "_jacobian_route"]


def test_n_features_outside_one_to_n_is_refused_as_such(diagonal):
    machine, _, x_test, y_test, _, _ = diagonal
    for bad in (0, 7):
        with pytest.raises(ValueError, match="n_features must be in"):
            feature_scores(machine, x_test, y_test, ThreatModel("linf", EPS), n_features=bad)


# -- robust-only kernels at a finite time ----------------------------------------------------------


def test_robust_only_kernels_keep_each_features_filter_and_the_pgd_settings(diagonal, monkeypatch):
    """f'_r at t = 0.7 is Σ_{i∈R} Θ(x, x_π(i)) g_t(λᵢ) y_π(i) (the diagonal hand features), not
    the same features with λ⁻¹; the attacks are stand-ins that record their machine and setting."""
    from ntkrobust.kernels import robust_only as robust_only_module

    machine, x_train, x_test, y_test, order, lam = diagonal
    seen = []

    def stand_in(m, x_, labels, spec):
        seen.append((m, spec))
        return np.asarray(x_)

    monkeypatch.setattr(robust_only_module, "craft_adversarial", stand_in)
    ranking = np.array([4, 0, 5, 2, 1, 3])
    results = robust_only_kernels(
        machine, ranking, [1, 3], x_test, y_test, ThreatModel("linf", EPS), pgd_step=0.03, pgd_steps=2,
        random_start=False, seed=4,
    )  # fmt: skip
    hand = _hand_features(x_test, x_train, order, lam)
    infinite = _hand_features(x_test, x_train, order, lam, time=math.inf)
    kept_machines = [m for m, _ in seen if m is not machine][::2]  # own FGSM, then own PGD, per r
    assert len(kept_machines) == 2
    for r, kept, result in zip((1, 3), kept_machines, results, strict=True):
        want = hand[:, ranking[:r]].sum(axis=1)
        np.testing.assert_allclose(np.asarray(kept.logits(x_test))[:, 0], want, rtol=1e-10, atol=1e-14)
        assert np.abs(infinite[:, ranking[:r]].sum(axis=1) - want).max() > 0.1 * np.abs(want).max()
        assert result.r == r
        assert result.clean == pytest.approx(np.mean((want > 0) == (y_test == 1)), abs=1e-15)
    pgd_specs = [spec for _, spec in seen if spec.method == "pgd"]
    assert len(pgd_specs) == 3
    assert all(
        (s.eps, s.norm, s.step, s.steps, s.random_start, s.seed) == (EPS, "linf", 0.03, 2, False, 4) for s in pgd_specs
    )


def test_robust_only_kernel_of_all_features_of_a_finite_time_machine_is_the_machine(diagonal):
    """r = n gives back f_t itself at t = 0.7 (all accuracies equal to the full machine's)."""
    machine, _, x_test, y_test, _, _ = diagonal
    ranking = np.array([4, 0, 5, 2, 1, 3])
    (result,) = robust_only_kernels(machine, ranking, [6], x_test, y_test, ThreatModel("linf", EPS), pgd_step=0.05)
    clean = machine.predict(x_test)
    assert result.clean == robust_accuracy(clean, y_test)
    adv = machine.predict(craft_adversarial(machine, x_test, y_test, AttackSpec("fgsm", EPS, "linf")))
    assert result.fgsm_own == result.fgsm_transfer == robust_accuracy(adv, y_test, clean)


def test_r_outside_one_to_n_is_refused_as_such(diagonal):
    """r = 0 would keep no feature (a machine of no eigen-direction), r = n + 1 more than there are."""
    machine, _, x_test, y_test, _, _ = diagonal
    for bad in (0, 7):
        with pytest.raises(ValueError, match=r"r must be in \[1, 6\], got \[" + str(bad)):
            robust_only_kernels(machine, np.arange(6), [3, bad], x_test, y_test, ThreatModel("linf", EPS), pgd_step=0.1)


# -- prop. 1 at a finite time with ridge ------------------------------------------------------------


def test_loss_gradient_weights_of_a_ridged_machine_at_a_finite_time_follow_eq33():
    """αᵢ = (σ(f_t) − ŷ)/(σ(f⁽ⁱ⁾) − ŷ) with f_t and f⁽ⁱ⁾ from numpy's eigh of the numpy eq. 29
    Gram (t = 0.3, ρ = 0.05·tr/n, η = 2): the full output is f_t, not f_∞. rtol 1e-8."""
    rng = np.random.default_rng(5)
    x_tr, x = rng.uniform(size=(12, 1, 4, 4)), rng.uniform(size=(5, 1, 4, 4))
    y_tr, y = np.arange(12) % 2, np.array([0, 1, 1, 0, 1])
    time, ridge, rate = 0.3, 0.05, 2.0
    machine = fit_kernel_machine(
        get_architecture("two-layer"), x_tr, y_tr, classes=(0, 1), time=time, ridge=ridge, learning_rate=rate
    )
    gram = _eq29(x_tr, x_tr)
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1], vec[:, ::-1]
    g = _filter(lam, time, ridge * np.trace(gram) / 12, rate)
    f_i = (_eq29(x, x_tr) @ vec) * (g * (vec.T @ (2.0 * y_tr - 1.0)))[None]  # (N, n)
    f_t = f_i.sum(axis=1, keepdims=True)
    y_hat = y.astype(np.float64)[:, None]
    sigmoid = lambda f: 1.0 / (1.0 + np.exp(-f))  # noqa: E731
    expected = (sigmoid(f_t) - y_hat) / (sigmoid(f_i) - y_hat)
    np.testing.assert_allclose(loss_gradient_weights(machine, x, y), expected, rtol=1e-8)


def test_a_direction_the_machine_drops_is_a_zero_feature(diagonal):
    """The diagonal Gram with its smallest eigenvalue set to 1e-18 (below the cutoff n·eps·λ_max):
    the machine leaves that direction out, so its feature is 0 (coefficient, outputs, gradient)
    and the other five still sum to f_t; the rest are the hand features."""
    _, x_train, x_test, y_test, order, lam = diagonal
    gram = np.diag(np.sum(x_train.reshape(6, -1) ** 2, axis=1) / 2)
    gram[order[-1], order[-1]] = 1e-18
    for time in (TIME, math.inf):
        with pytest.warns(IllConditionedWarning, match="1 of 6 eigen-directions"):
            machine = fit_kernel_machine(
                get_architecture("two-layer"), x_train, _TRAIN_LABELS, classes=(0, 1), time=time, gram=gram
            )
        assert machine.dropped_directions == 1
        np.testing.assert_array_equal(feature_coefficients(machine, [5]), [[0.0]])
        f = feature_outputs(machine, x_test)[:, :, 0]
        np.testing.assert_array_equal(f[:, 5], 0.0)
        np.testing.assert_array_equal(feature_gradients(machine, x_test, y_test, [5]), 0.0)
        hand = _hand_features(x_test, x_train, order, lam, time)[:, :5]
        np.testing.assert_allclose(f[:, :5], hand, rtol=1e-10, atol=1e-13 * np.abs(hand).max())
        np.testing.assert_allclose(f.sum(axis=1), np.asarray(machine.logits(x_test))[:, 0], rtol=1e-12, atol=1e-14)


# -- the Jacobian route's PGD scores in several blocks ----------------------------------------------


@pytest.mark.parametrize(("route", "random_start"), [("jacobian", True), ("dots", False)])
def test_pgd_scores_equal_one_machine_per_feature(diagonal, monkeypatch, route, random_start):
    """PGD feature scores against one restricted machine per feature attacked by
    ``craft_adversarial``: the Jacobian route in blocks of 5 examples over 16 (5, 5, 5, 1), each
    block with its own random starts; the dot route without random starts, as asked."""
    from ntkrobust.kernels import features as features_module

    machine, _, x, y, _, _ = diagonal
    m, threat = 6, ThreatModel("linf", EPS)
    monkeypatch.setattr(features_module, "_JACOBIAN_BUDGET", 5 * m * x[0].size * 8)
    pgd = {"step": EPS / 2, "steps": 2, "seed": 6}
    scores = feature_scores(
        machine, x, y, threat, n_features=m, attack="pgd", route=route, random_start=random_start, **pgd
    )
    spec = AttackSpec("pgd", EPS, "linf", EPS / 2, 2, random_start, 6)
    useful, robust = [], []
    for i in range(m):
        single = machine.restricted_to([i])
        clean = single.predict(x)
        useful.append(robust_accuracy(clean, y))
        robust.append(robust_accuracy(single.predict(craft_adversarial(single, x, y, spec)), y, clean))
    np.testing.assert_array_equal(scores.usefulness, useful)
    np.testing.assert_array_equal(scores.robustness, robust)
    assert 0 < sum(robust) < sum(useful)


# -- alignment (supp. C) on hand-made spectra -------------------------------------------------------


def _gram_machine(gram: np.ndarray, **kwargs) -> object:
    """A machine whose Θ(X, X) is ``gram`` (its kernel rows are never read by the alignment)."""
    n = gram.shape[0]
    x = np.random.default_rng(0).uniform(size=(n, 1, 2, 2))
    labels = np.arange(n) % 3
    return fit_kernel_machine(get_architecture("two-layer"), x, labels, classes=range(3), gram=gram, **kwargs)


def test_matching_time_recovers_times_across_the_whole_spectrum():
    """A diagonal Gram with eigenvalues 1e-2 … 10 in a shuffled order (vᵢ = unit vectors), η = 0.5:
    f_t(X)_j = (1 − e^{−η t Θ_jj}) Y_j, and each of 25 times from 1e-3/(ηλ_max) to 5/(ηλ_min) (later
    every direction is fitted to e^{−5} and t is no longer defined by the outputs) is recovered from
    those outputs to rtol 1e-7, whichever side of the best grid point it lies on."""
    lam = np.array([1.0, 1e-2, 10.0, 0.1, 3.0, 0.03, 0.3])
    machine = _gram_machine(np.diag(lam), learning_rate=0.5)
    for time in np.geomspace(1e-3 / (0.5 * 10.0), 5 / (0.5 * 1e-2), 25):
        expected = -np.expm1(-0.5 * time * lam)[:, None] * machine.targets
        np.testing.assert_allclose(training_outputs(machine, time), expected, rtol=1e-12, atol=1e-15)
        assert matching_time(machine, expected) == pytest.approx(time, rel=1e-7), time


def test_the_matched_time_of_perturbed_outputs_is_the_least_squares_one():
    """Outputs off every f_t (f_{0.4} plus a fixed perturbation): the matched time is the
    minimiser of the *squared* distance Σ (f_t(X) − outputs)², found here by scipy's bounded
    Brent search on a numpy residual of the diagonal Gram (f_t(X)_j = (1 − e^{−η t λ_j}) Y_j);
    the minimiser of the absolute distance lies 40 % away. rtol 1e-6."""
    from scipy.optimize import minimize_scalar

    lam = np.array([1.0, 1e-2, 10.0, 0.1, 3.0, 0.03, 0.3])
    machine = _gram_machine(np.diag(lam), learning_rate=0.5)
    targets = machine.targets
    outputs = -np.expm1(-0.5 * 0.4 * lam)[:, None] * targets
    outputs = outputs + 0.2 * np.random.default_rng(2).standard_normal(outputs.shape) * lam[:, None] ** 0.25

    def distance(log_t, power):
        return np.sum(np.abs(-np.expm1(-0.5 * np.exp(log_t) * lam)[:, None] * targets - outputs) ** power)

    best = {
        power: math.exp(minimize_scalar(distance, bounds=(-8.0, 8.0), args=(power,), method="bounded",
                                        options={"xatol": 1e-12}).x)
        for power in (1, 2)
    }  # fmt: skip
    assert abs(best[1] / best[2] - 1) > 0.2, best
    assert matching_time(machine, outputs) == pytest.approx(best[2], rel=1e-6)


def test_epochs_of_gradient_descent_on_a_linear_model_advance_the_time_by_lr_over_n():
    """Full-batch gradient descent on f = Φw, L = (1/2n) Σ ‖f − y‖², whose NTK is ΦΦᵀ (rank 5 of 8:
    three dropped directions): after E epochs at rate η the outputs are f_t(X) at t = E η/n,
    up to the Euler error O(η λ/n) = 1e-3 (rtol 1e-2 on the matched time)."""
    rng = np.random.default_rng(11)
    n, p = 8, 5
    phi = rng.standard_normal((n, p))
    gram = phi @ phi.T
    with pytest.warns(IllConditionedWarning, match="3 of 8 eigen-directions"):
        machine = _gram_machine(gram)
    assert machine.dropped_directions == 3
    lr = 1e-3 * n / np.linalg.eigvalsh(gram)[-1]
    w = np.zeros((p, machine.targets.shape[1]))
    matched, predicted, done = [], [], 0
    for epochs in (200, 2000, 20000):
        for _ in range(epochs - done):
            w -= lr * phi.T @ (phi @ w - machine.targets) / n
        done = epochs
        f = phi @ w
        predicted.append(epochs * theory_time_per_epoch(lr, n))
        matched.append(matching_time(machine, f))
        np.testing.assert_allclose(training_outputs(machine, predicted[-1]), f, rtol=0, atol=2e-3)
    np.testing.assert_allclose(matched, predicted, rtol=1e-2)
