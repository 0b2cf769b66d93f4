"""Eigen-features (TK eq. 9), their scores (supp. A), prop. 1 and robust-only kernels (supp. D.3).

Independent routes: a plain numpy eigendecomposition of the Gram matrix; one machine per
feature (``restricted_to([i])``) attacked by the ordinary ``craft_adversarial`` loop;
the machine's own loss gradients; scipy's Spearman correlation.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from ntkrobust import _progress
from ntkrobust.attacks import AttackSpec, ThreatModel, robust_accuracy
from ntkrobust.kernels import (
    compute_gram,
    feature_coefficients,
    feature_gradients,
    feature_outputs,
    feature_scores,
    fit_kernel_machine,
    get_architecture,
    loss_gradient_weights,
    robust_only_kernels,
    robustness_ranking,
    spearman_correlation,
)
from ntkrobust.kernels.adversarial import craft_adversarial
from ntkrobust.kernels.features import FeatureScores


@pytest.mark.parametrize("task", ["binary", "multiclass"])
@pytest.mark.parametrize("time", [math.inf, 2.0])
def test_features_sum_to_the_machine(task, time, fc2_binary, fc2_multiclass, digits_binary, digits_multiclass):
    machine = (fc2_binary if task == "binary" else fc2_multiclass).at_time(time)
    x = (digits_binary if task == "binary" else digits_multiclass).x_test
    f = feature_outputs(machine, x)
    assert f.shape == (x.shape[0], machine.n_train, machine.n_outputs)
    expected = np.asarray(machine.logits(x))
    np.testing.assert_allclose(f.sum(axis=1), expected, rtol=0, atol=1e-10 * np.abs(expected).max())


def test_features_equal_a_plain_eigendecomposition(fc2_multiclass, digits_multiclass):
    """f⁽ⁱ⁾ = λᵢ⁻¹ Θ(x, X) vᵢ vᵢᵀ Y from numpy's eigh of an independently computed Gram matrix."""
    arch, data = fc2_multiclass.arch, digits_multiclass
    gram = compute_gram(arch, data.x_train)
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1], vec[:, ::-1]
    rows = compute_gram(arch, data.x_test, data.x_train)
    targets = np.eye(10)[data.y_train]
    top = 15  # well-separated eigenvalues: each vᵢ is defined up to its sign, which cancels
    expected = np.stack([(rows @ vec[:, i])[:, None] * (vec[:, i] @ targets)[None] / lam[i] for i in range(top)], 1)
    np.testing.assert_allclose(feature_outputs(fc2_multiclass, data.x_test, range(top)), expected, atol=1e-9)


def loop_scores(machine, x, labels, config, m):
    """Usefulness and robustness by one machine per feature, attacked by the ordinary loop."""
    usefulness, robustness = [], []
    for i in range(m):
        single = machine.restricted_to([i])
        clean = single.predict(x)
        adv = single.predict(craft_adversarial(single, x, labels, config))
        usefulness.append(robust_accuracy(clean, labels))
        robustness.append(robust_accuracy(adv, labels, clean))
    return np.array(usefulness), np.array(robustness)


@pytest.mark.parametrize(
    ("task", "norm", "eps", "attack"),
    [
        ("binary", "linf", 0.1, "fgsm"),
        ("multiclass", "linf", 0.1, "fgsm"),
        ("multiclass", "l2", 1.0, "fgsm"),
        ("binary", "linf", 0.1, "pgd"),
        ("multiclass", "linf", 0.1, "pgd"),
    ],
)
def test_vectorised_scores_equal_a_per_feature_loop(
    task, norm, eps, attack, fc2_binary, fc2_multiclass, digits_binary, digits_multiclass
):
    machine = fc2_binary if task == "binary" else fc2_multiclass
    data = digits_binary if task == "binary" else digits_multiclass
    x, y = data.x_test[:40], data.y_test[:40]
    threat = ThreatModel(norm, eps)
    m = 12
    pgd_args = {"step": eps / 4, "steps": 5, "seed": 3}
    scores = feature_scores(machine, x, y, threat, n_features=m, attack=attack, **(pgd_args if attack == "pgd" else {}))
    config = AttackSpec(attack, threat.eps, threat.norm, **(pgd_args if attack == "pgd" else {}))
    usefulness, robustness = loop_scores(machine, x, y, config, m)
    np.testing.assert_array_equal(scores.usefulness, usefulness)
    np.testing.assert_array_equal(scores.robustness, robustness)
    assert np.all(scores.robustness <= scores.usefulness)
    assert scores.robustness.sum() < scores.usefulness.sum()  # the attacks do bite
    np.testing.assert_array_equal(scores.eigenvalue, machine.eigenvalues[:m])


def test_scores_of_a_convolutional_kernel_take_the_pair_route(digits_multiclass):
    """conv with 12 outputs uses the per-pair Jacobian; the loop uses one VJP per machine."""
    data = digits_multiclass
    machine = fit_kernel_machine(get_architecture("conv1"), data.x_train[:60], data.y_train[:60], classes=range(10))
    x, y = data.x_test[:20], data.y_test[:20]
    threat = ThreatModel("linf", 0.1)
    scores = feature_scores(machine, x, y, threat, n_features=12)
    usefulness, robustness = loop_scores(machine, x, y, AttackSpec("fgsm", threat.eps, threat.norm), 12)
    np.testing.assert_array_equal(scores.usefulness, usefulness)
    np.testing.assert_array_equal(scores.robustness, robustness)


@pytest.mark.parametrize(("name", "route"), [("conv1", "pairs"), ("fc2", "dots"), ("two-layer", "dots")])
def test_jacobian_routes_and_picked_outputs_agree(name, route, digits_multiclass):
    """Every route of output_jacobian against one VJP per output (autodiff or supp. eq. 9)."""
    data = digits_multiclass
    machine = fit_kernel_machine(get_architecture(name), data.x_train[:30], data.y_train[:30], classes=range(10))
    x = data.x_test[:7].astype(np.float64)
    fast = np.asarray(machine.output_jacobian(x, route=route))
    cotangents = np.asarray(machine.output_jacobian(x, route="cotangents"))
    # α of a ridgeless machine is large and the sums over training points cancel: compare at
    # 1e-9 of the largest entry, not entry by entry.
    scale = np.abs(cotangents).max()
    np.testing.assert_allclose(fast, cotangents, rtol=0, atol=1e-9 * scale)
    pick = np.array([[0, 3], [9, 9], [1, 0], [1, 2], [5, 5], [2, 8], [7, 4]])
    picked = np.asarray(machine.output_jacobian(x, pick, route=route))
    np.testing.assert_allclose(picked, cotangents[np.arange(7)[:, None], pick], rtol=0, atol=1e-9 * scale)
    with pytest.raises(ValueError, match="outputs must lie"):
        machine.output_jacobian(x, pick + 1)


def test_feature_gradients_are_the_single_feature_machines_jacobian(fc2_binary, digits_binary):
    x, y = digits_binary.x_test[:6].astype(np.float64), digits_binary.y_test[:6]
    g = feature_gradients(fc2_binary, x, y, [0, 4, 7])
    sign = np.where(fc2_binary.target_index(y) == 1, 1.0, -1.0)
    for col, i in enumerate([0, 4, 7]):
        jac = np.asarray(fc2_binary.restricted_to([i]).output_jacobian(x))[:, 0]
        np.testing.assert_allclose(g[:, col], sign[:, None, None, None] * jac, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_loss_gradient_decomposition_of_proposition_1(task, digits_binary, digits_multiclass):
    data = digits_binary if task == "binary" else digits_multiclass
    machine = fit_kernel_machine(get_architecture("fc1"), data.x_train[:40], data.y_train[:40], classes=data.classes)
    x, y = data.x_test[:8].astype(np.float64), data.y_test[:8]
    alpha = loss_gradient_weights(machine, x, y)
    assert alpha.shape == (8, 40) and np.all(np.isfinite(alpha))
    total = sum(
        alpha[:, i, None, None, None] * np.asarray(machine.restricted_to([i]).loss_gradient(x, machine.target_index(y)))
        for i in range(machine.n_train)
    )
    expected = np.asarray(machine.loss_gradient(x, machine.target_index(y)))
    np.testing.assert_allclose(total, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
    if task == "binary":  # eq. 33 as written: (σ(f_∞) − ŷ) / (σ(f⁽ⁱ⁾) − ŷ)
        y_hat = machine.target_index(y)[:, None]
        sigmoid = lambda f: 1.0 / (1.0 + np.exp(-f))  # noqa: E731
        f_inf = np.asarray(machine.logits(x))
        f_i = feature_outputs(machine, x)[:, :, 0]
        np.testing.assert_allclose(alpha, (sigmoid(f_inf) - y_hat) / (sigmoid(f_i) - y_hat), rtol=1e-9)


def test_restricted_machines(fc2_multiclass, digits_multiclass):
    x = digits_multiclass.x_test
    n = fc2_multiclass.n_train
    full = fc2_multiclass.restricted_to(np.arange(n)[::-1])
    np.testing.assert_allclose(full.logits(x), fc2_multiclass.logits(x), rtol=0, atol=1e-12)
    some = [3, 0, 17]
    np.testing.assert_allclose(
        fc2_multiclass.restricted_to(some).logits(x), feature_outputs(fc2_multiclass, x, some).sum(1), atol=1e-12
    )
    later = fc2_multiclass.restricted_to(some).at_time(5.0)
    np.testing.assert_allclose(
        later.logits(x), feature_outputs(fc2_multiclass.at_time(5.0), x, some).sum(1), atol=1e-12
    )
    with pytest.raises(ValueError):
        fc2_multiclass.restricted_to([n])


def test_feature_coefficients_carry_the_spectral_filter(fc2_binary):
    c = feature_coefficients(fc2_binary, [0, 1])
    v = fc2_binary.eigenvectors[:, :2]
    np.testing.assert_allclose(c[:, 0], (v.T @ fc2_binary.targets[:, 0]) / fc2_binary.eigenvalues[:2])


def test_spearman_matches_scipy_with_ties(rng):
    from scipy.stats import spearmanr

    a = rng.integers(0, 5, size=50).astype(float)
    b = rng.standard_normal(50)
    b[::7] = 0.3  # ties on both sides
    assert spearman_correlation(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman_correlation(np.arange(10), -np.arange(10.0)) == pytest.approx(-1.0)
    assert math.isnan(spearman_correlation(np.arange(5), np.ones(5)))


def test_scores_helpers():
    scores = FeatureScores(
        index=np.arange(4),
        eigenvalue=np.array([4.0, 3.0, 2.0, 1.0]),
        usefulness=np.array([0.5, 0.9, 0.8, 0.4]),
        robustness=np.array([0.5, 0.6, 0.0, 0.2]),
        chance=0.5,
        n_examples=10,
    )
    np.testing.assert_array_equal(scores.useful(), [False, True, True, False])
    np.testing.assert_array_equal(scores.useful_non_robust(0.05), [False, False, True, False])
    np.testing.assert_array_equal(robustness_ranking(scores, 6), [1, 0, 3, 2, 4, 5])
    assert scores.spearman_index_robustness() == pytest.approx(-0.6)  # 1 - 6·16/(4·15)


def test_robust_only_kernels_end_at_the_full_machine(fc2_binary, digits_binary, monkeypatch, caplog):
    x, y = digits_binary.x_test[:30], digits_binary.y_test[:30]
    threat = ThreatModel("linf", 0.1)
    scores = feature_scores(fc2_binary, x, y, threat, n_features=20)
    ranking = robustness_ranking(scores, fc2_binary.n_train)
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        results = robust_only_kernels(fc2_binary, ranking, [1, 5, fc2_binary.n_train], x, y, threat, pgd_step=0.025)
    assert [r.r for r in results] == [1, 5, fc2_binary.n_train]
    # without a bar (stderr a file) each kernel says it is done: a CIFAR r takes minutes
    lines = [m.getMessage().split(" (")[0] for m in caplog.records if m.getMessage().startswith("robust-only:")]
    assert lines == [f"robust-only: {i}/3 kernels" for i in (1, 2, 3)]
    full = results[-1]
    clean = fc2_binary.predict(x)
    adv = fc2_binary.predict(craft_adversarial(fc2_binary, x, y, AttackSpec("fgsm", threat.eps, threat.norm)))
    assert full.clean == robust_accuracy(clean, y)
    assert full.fgsm_own == full.fgsm_transfer == robust_accuracy(adv, y, clean)
    assert full.pgd_own == full.pgd_transfer
    first = results[0]  # the single most robust feature is as robust as its score says
    assert first.clean == scores.usefulness[ranking[0]]
    assert first.fgsm_own == scores.robustness[ranking[0]]
    with pytest.raises(ValueError):
        robust_only_kernels(fc2_binary, ranking, [0], x, y, threat, pgd_step=0.025)


def test_bad_arguments(fc2_binary, digits_binary):
    x, y = digits_binary.x_test[:5], digits_binary.y_test[:5]
    threat = ThreatModel("linf", 0.1)
    with pytest.raises(ValueError, match="n_features"):
        feature_scores(fc2_binary, x, y, threat, n_features=fc2_binary.n_train + 1)
    with pytest.raises(ValueError, match="unknown feature attack"):
        feature_scores(fc2_binary, x, y, threat, attack="cw")
    with pytest.raises(ValueError, match="the PGD step must be a finite number > 0, got None"):
        feature_scores(fc2_binary, x, y, threat, attack="pgd")
    with pytest.raises(ValueError, match="feature indices"):
        feature_outputs(fc2_binary, x, [-1])


# -- eq. 9 with the full filter, multiclass gradients, the scores' bookkeeping ------------------


def _eq29_gram(x1, x2):
    """Supp. eq. 29 in plain numpy float64 (angle by atan2: exact 0 on the diagonal)."""
    a, b = x1.reshape(x1.shape[0], -1).astype(np.float64), x2.reshape(x2.shape[0], -1).astype(np.float64)
    dots = a @ b.T
    sq = np.sum(a * a, axis=1)[:, None] * np.sum(b * b, axis=1)[None, :]
    theta = np.arctan2(np.sqrt(np.maximum(sq - dots * dots, 0.0)), dots)
    return (0.5 - theta / (2 * np.pi)) * dots


def test_features_of_a_ridged_machine_at_a_finite_time_follow_eq9(digits_multiclass):
    """f⁽ⁱ⁾(x) = Θ(x, X) vᵢ · g_t(λᵢ) vᵢᵀ Y with g_t(λ) = (1 − e^{−η(λ+ρ)t})/(λ+ρ), from numpy's
    eigh of the numpy Gram matrix: every factor of the filter (t, ρ, η ≠ 1) is visible."""
    data = digits_multiclass
    x_tr, y_tr, x_te = data.x_train[:14], data.y_train[:14], data.x_test[:6]
    time, ridge, rate = 0.4, 0.05, 3.0
    machine = fit_kernel_machine(
        get_architecture("two-layer"), x_tr, y_tr, classes=range(10), time=time, ridge=ridge, learning_rate=rate
    )
    gram, rows = _eq29_gram(x_tr, x_tr), _eq29_gram(x_te, x_tr)
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1], vec[:, ::-1]
    rho = ridge * np.trace(gram) / 14
    g = (1 - np.exp(-rate * time * (lam + rho))) / (lam + rho)
    top = 6
    assert np.min(np.abs(np.diff(lam[: top + 1]))) > 1e-6 * lam[0]  # distinct: vᵢ defined up to sign
    targets = np.eye(10)[y_tr]
    c = g[:top, None] * (vec[:, :top].T @ targets)  # (m, k), sign of vᵢ
    np.testing.assert_allclose(np.abs(feature_coefficients(machine, range(top))), np.abs(c), rtol=1e-8, atol=1e-14)
    expected = (rows @ vec[:, :top])[:, :, None] * c[None]  # the two signs of vᵢ cancel
    got = feature_outputs(machine, x_te, range(top))
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12 * np.abs(expected).max())
    everything = feature_outputs(machine, x_te).sum(axis=1)
    np.testing.assert_allclose(everything, rows @ (vec @ (g[:, None] * (vec.T @ targets))), rtol=1e-8, atol=1e-12)


def test_multiclass_feature_gradients_score_the_true_class(fc2_multiclass, digits_multiclass):
    """k outputs: ∇ₓ f⁽ⁱ⁾_y(x), the single-feature machine's Jacobian row of the true class."""
    x, y = digits_multiclass.x_test[:6].astype(np.float64), digits_multiclass.y_test[:6]
    target = fc2_multiclass.target_index(y)
    assert len(set(target.tolist())) > 1
    g = feature_gradients(fc2_multiclass, x, y, [0, 5])
    for col, i in enumerate([0, 5]):
        jac = np.asarray(fc2_multiclass.restricted_to([i]).output_jacobian(x))  # (N, k, C, H, W)
        want = jac[np.arange(6), target]
        np.testing.assert_allclose(g[:, col], want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_usefulness_and_chance_are_shares_of_the_held_out_set(fc2_binary, digits_binary):
    """Usefulness = share of x that sign(pᵢ cᵢ) puts in its class (counted by hand from
    feature_outputs); chance = share of the most frequent class (3:1 here, not 1/2)."""
    data = digits_binary
    first, second = (np.flatnonzero(data.y_test == c) for c in data.classes)
    pick = np.concatenate([first[:9], second[:3]])
    x, y = data.x_test[pick], data.y_test[pick]
    scores = feature_scores(fc2_binary, x, y, ThreatModel("linf", 0.1), n_features=5)
    assert scores.chance == 0.75 and scores.n_examples == 12
    f = feature_outputs(fc2_binary, x, range(5))[:, :, 0]
    correct = (f > 0) == (fc2_binary.target_index(y) == 1)[:, None]
    np.testing.assert_array_equal(scores.usefulness, correct.mean(axis=0))
    np.testing.assert_array_equal(scores.index, np.arange(5))


def test_ranking_breaks_ties_by_eigen_index_and_thresholds_are_inclusive():
    scores = FeatureScores(
        index=np.arange(5),
        eigenvalue=np.array([5.0, 4.0, 3.0, 2.0, 1.0]),
        usefulness=np.array([0.9, 0.9, 0.9, 0.9, 0.9]),
        robustness=np.array([0.5, 0.7, 0.5, 0.7, 0.0]),
        chance=0.5,
        n_examples=10,
    )
    np.testing.assert_array_equal(robustness_ranking(scores, 7), [1, 3, 0, 2, 4, 5, 6])
    np.testing.assert_array_equal(scores.useful_non_robust(0.0), [False, False, False, False, True])
    np.testing.assert_array_equal(scores.useful_non_robust(0.5), [True, False, True, False, True])


def test_jacobian_route_in_several_blocks_equals_one_block(fc2_multiclass, digits_multiclass, monkeypatch):
    """A Jacobian budget of 7 examples: blocks of 7, 7 and 6, each with its own labels."""
    from ntkrobust.kernels import features as features_module

    x, y = digits_multiclass.x_test[:20], digits_multiclass.y_test[:20]
    threat, m = ThreatModel("linf", 0.1), 6
    whole = feature_scores(fc2_multiclass, x, y, threat, n_features=m, route="jacobian")
    monkeypatch.setattr(features_module, "_JACOBIAN_BUDGET", 7 * m * x[0].size * 8)
    blocked = feature_scores(fc2_multiclass, x, y, threat, n_features=m, route="jacobian")
    np.testing.assert_array_equal(blocked.usefulness, whole.usefulness)
    np.testing.assert_array_equal(blocked.robustness, whole.robustness)
    assert whole.usefulness.sum() > 0 and whole.robustness.sum() < whole.usefulness.sum()


def test_robust_only_accuracies_of_one_kernel_by_hand(fc2_binary, digits_binary):
    """f'_r for r = 3 of a given ranking: Θ(x, X) Σ_{i∈R} λᵢ⁻¹ vᵢ vᵢᵀ Y by numpy (its clean
    predictions), and each attacked accuracy counted as correct at x and at the attack: its own
    FGSM and PGD-3, and the full machine's FGSM and PGD-3 examples."""
    x, y = digits_binary.x_test[:24], digits_binary.y_test[:24]
    threat, ranking = ThreatModel("linf", 0.1), np.array([7, 2, 11, 0, 1])
    (result,) = robust_only_kernels(fc2_binary, ranking, [3], x, y, threat, pgd_step=0.04, pgd_steps=3, seed=2)
    assert result.r == 3
    kept = ranking[:3]
    v, lam = fc2_binary.eigenvectors[:, kept], fc2_binary.eigenvalues[kept]
    rows = compute_gram(fc2_binary.arch, x, digits_binary.x_train)
    f = rows @ (v @ ((v.T @ fc2_binary.targets) / lam[:, None]))
    machine = fc2_binary.restricted_to(kept)
    clean = machine.predict(x)
    np.testing.assert_array_equal(clean, np.where(f[:, 0] > 0, digits_binary.classes[1], digits_binary.classes[0]))
    assert result.clean == pytest.approx(np.mean(clean == y), abs=1e-12)
    fgsm_spec = AttackSpec("fgsm", 0.1, "linf")
    pgd_spec = AttackSpec("pgd", 0.1, "linf", 0.04, 3, True, 2)
    expected = {
        "fgsm_own": craft_adversarial(machine, x, y, fgsm_spec),
        "pgd_own": craft_adversarial(machine, x, y, pgd_spec),
        "fgsm_transfer": craft_adversarial(fc2_binary, x, y, fgsm_spec),
        "pgd_transfer": craft_adversarial(fc2_binary, x, y, pgd_spec),
    }
    for name, x_adv in expected.items():
        still = (machine.predict(x_adv) == y) & (clean == y)
        assert getattr(result, name) == pytest.approx(np.mean(still), abs=1e-12), name


def test_robust_only_kernels_wire_machines_attacks_and_the_clean_condition(fc2_binary, digits_binary, monkeypatch):
    """The attacks replaced by stand-ins that move each x to another test point (a shift of the
    batch per machine and method): the recorded calls show which machine each attack runs on,
    and the accuracies are counted by hand, correct at x and at the "attacked" point."""
    from ntkrobust.kernels import robust_only as robust_only_module

    x, y = digits_binary.x_test[:24], digits_binary.y_test[:24]
    ranking = np.array([7, 2, 11, 0, 1])
    shifts = {("full", "fgsm"): 1, ("full", "pgd"): 2, ("own", "fgsm"): 3, ("own", "pgd"): 5}
    calls = []

    def stand_in(machine, x_, labels, spec):
        who = "full" if machine is fc2_binary else "own"
        calls.append((who, spec, machine))
        return np.roll(np.asarray(x_), shifts[who, spec.method], axis=0)

    monkeypatch.setattr(robust_only_module, "craft_adversarial", stand_in)
    threat = ThreatModel("linf", 0.1)
    (result,) = robust_only_kernels(fc2_binary, ranking, [3], x, y, threat, pgd_step=0.04, pgd_steps=3, seed=2)
    assert [(who, spec.method) for who, spec, _ in calls] == list(shifts)
    pgd_specs = [spec for _, spec, _ in calls if spec.method == "pgd"]
    assert all((s.eps, s.norm, s.step, s.steps, s.seed) == (0.1, "linf", 0.04, 3, 2) for s in pgd_specs)
    kept = calls[2][2]
    np.testing.assert_array_equal(kept.eigenvalues, np.sort(fc2_binary.eigenvalues[ranking[:3]])[::-1])
    single = fc2_binary.restricted_to(ranking[:3])
    clean = single.predict(x)
    assert result.clean == pytest.approx(np.mean(clean == y), abs=1e-12)
    wrong_then_right = False
    for (who, method), shift in shifts.items():
        at_attack = single.predict(np.roll(x, shift, axis=0)) == y
        wrong_then_right |= bool(np.any(at_attack & (clean != y)))
        want = np.mean(at_attack & (clean == y))
        got = getattr(result, f"{method}_{'transfer' if who == 'full' else 'own'}")
        assert got == pytest.approx(want, abs=1e-12), (who, method)
    assert wrong_then_right  # the clean condition changes the count here
