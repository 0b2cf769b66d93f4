"""Audit of ``studies.features.run``: every number it records, recomputed by hand.

The independent route: the digits subset is reloaded from its seed, split with
``bridge.data.stratified_halves`` (the documented rule: rank on the first half, evaluate on the
second), the NTK machine fitted directly with ``kernels.fit_kernel_machine`` (no Gram cache), and
the library's ``feature_scores`` / ``robust_only_kernels`` / ``craft_adversarial`` called with the
settings written out here, not read from the study. The derived numbers (useful non-robust
features, shares, means, the robustness ranking, the pictured features) are counted with numpy.
Every setting is off its default (seed 3, threshold 0.15, top-k 3, image 5, robust steps 3), so a
value that the study drops on the way to the library, or stores as its default, shows.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, ThreatSettings, features
from ntkrobust.studies.features import FeaturesSettings

SEED, EPS, N_FEATURES, THRESHOLD, TOP_K, IMAGE, ROBUST_STEPS = 3, 0.1, 14, 0.15, 3, 5, 3
DATA = DataSettings(n_train=60, n_test=40, seed=SEED)


@pytest.fixture(scope="module")
def by_hand():
    """The data, the halves, the machine and its feature scores, made without the study."""
    from ntkrobust.attacks import ThreatModel
    from ntkrobust.bridge.data import load_dataset, stratified_halves
    from ntkrobust.kernels import fit_kernel_machine, get_architecture
    from ntkrobust.kernels.features import feature_scores

    data = load_dataset("digits", n_train=60, n_test=40, seed=SEED)
    val, evaluation = stratified_halves(data.y_test, SEED)
    machine = fit_kernel_machine(get_architecture("fc2"), data.x_train, data.y_train, classes=data.classes)
    threat = ThreatModel("linf", EPS)
    scores = feature_scores(
        machine, data.x_test[val], data.y_test[val], threat, n_features=N_FEATURES, attack="fgsm", seed=SEED
    )
    return {"data": data, "val": val, "eval": evaluation, "machine": machine, "threat": threat, "scores": scores}


@pytest.fixture(scope="module")
def study():
    settings = FeaturesSettings(
        data=DATA,
        n_features=N_FEATURES,
        threat=ThreatSettings(eps=EPS),
        robust_r=(2, N_FEATURES, -1),  # r = --n-features applies: all the ranked ones
        robust_steps=ROBUST_STEPS,
        non_robust_below=THRESHOLD,
        top_k=TOP_K,
        image_index=IMAGE,
    )
    return features.run(settings)


def test_the_scores_are_the_libraries_on_the_ranking_half(study, by_hand):
    mine, theirs = by_hand["scores"], study.tables["fc2"]
    np.testing.assert_array_equal(theirs.index, np.arange(N_FEATURES))
    np.testing.assert_allclose(theirs.eigenvalue, mine.eigenvalue, rtol=1e-10)
    # shares of 20 points: the same counts, exactly
    np.testing.assert_array_equal(theirs.usefulness, mine.usefulness)
    np.testing.assert_array_equal(theirs.robustness, mine.robustness)
    assert theirs.n_examples == by_hand["val"].size == 20 and theirs.chance == mine.chance
    # the halves: disjoint, together every held-out point, the same class mix
    val, evaluation, y = by_hand["val"], by_hand["eval"], by_hand["data"].y_test
    assert np.intersect1d(val, evaluation).size == 0 and val.size + evaluation.size == 40
    assert np.bincount(y[val], minlength=10).tolist() == np.bincount(y[evaluation], minlength=10).tolist()


def test_the_derived_numbers_are_counted_from_the_scores(study, by_hand):
    mine = by_hand["scores"]
    entry = study.record["architectures"]["fc2"]
    useful = mine.usefulness > mine.chance
    weak = useful & (mine.robustness <= THRESHOLD)
    assert 6 < weak.sum() < useful.sum()  # enough to tell the threshold, the mask and the picture apart
    assert entry["useful_non_robust_features"] == np.flatnonzero(weak).tolist()
    assert entry["useful_non_robust_share"] == pytest.approx(weak.sum() / N_FEATURES, abs=1e-15)
    assert entry["useful_non_robust_share_of_useful"] == pytest.approx(weak.sum() / useful.sum(), abs=1e-15)
    assert entry["useful_share"] == pytest.approx(useful.sum() / N_FEATURES, abs=1e-15)
    assert entry["mean_robustness_top10"] == pytest.approx(mine.robustness[:10].sum() / 10, abs=1e-15)
    assert entry["mean_robustness_rest"] == pytest.approx(mine.robustness[10:].sum() / 4, abs=1e-15)
    assert entry["chance_usefulness"] == mine.chance


def test_the_full_machine_is_attacked_on_the_ranking_half(study, by_hand):
    from ntkrobust.attacks import AttackSpec
    from ntkrobust.kernels.adversarial import craft_adversarial

    machine, data, val = by_hand["machine"], by_hand["data"], by_hand["val"]
    x, y = data.x_test[val], data.y_test[val]
    clean = machine.predict(x) == y
    adv = machine.predict(craft_adversarial(machine, x, y, AttackSpec("fgsm", EPS, "linf"))) == y
    full = study.record["architectures"]["fc2"]["full_machine"]
    assert full == {"clean_accuracy": clean.mean(), "fgsm_accuracy": (clean & adv).mean()}  # still correct
    assert full["fgsm_accuracy"] < full["clean_accuracy"]


def test_the_robust_only_kernels_keep_the_most_robust_and_are_judged_on_the_other_half(study, by_hand):
    from ntkrobust.kernels.robust_only import robust_only_kernels

    robustness = by_hand["scores"].robustness
    # by hand: most robust first, ties by eigen-index (a stable sort), then the unscored features
    ranking = np.concatenate([np.argsort(-robustness, kind="stable"), np.arange(N_FEATURES, 60)])
    data, evaluation = by_hand["data"], by_hand["eval"]
    x, y = data.x_test[evaluation], data.y_test[evaluation]
    expected = robust_only_kernels(
        by_hand["machine"], ranking, [2, N_FEATURES, 60], x, y, by_hand["threat"],
        pgd_step=2.5 * EPS / ROBUST_STEPS, pgd_steps=ROBUST_STEPS, random_start=True, seed=SEED,
    )  # fmt: skip
    recorded = study.record["architectures"]["fc2"]["robust_only"]
    assert recorded == [r.as_dict() for r in expected]


def test_the_config_holds_the_values_given_and_the_ones_that_ran(study, by_hand):
    config = study.record["config"]
    assert config["n_features"] == N_FEATURES and config["feature_attack"] == "fgsm" and config["eps"] == EPS
    assert config["step"] is None and config["steps"] == 1  # FGSM features: no PGD schedule ran on them
    assert config["robust_steps"] == ROBUST_STEPS and config["robust_step"] == pytest.approx(2.5 * EPS / ROBUST_STEPS)
    assert config["random_start"] is True and config["robust_r"] == [2, N_FEATURES, 60]
    assert config["non_robust_below"] == THRESHOLD and config["image_index"] == IMAGE and config["top_k"] == TOP_K
    assert (config["validation_points"], config["evaluation_points"]) == (by_hand["val"].size, by_hand["eval"].size)
    assert study.record["seed"] == SEED and config["n_train"] == 60 and config["classes"] == list(range(10))


def test_the_pictures_are_the_gradients_of_the_features_they_name(study, by_hand):
    from ntkrobust.kernels.features import feature_gradients

    machine, data, scores = by_hand["machine"], by_hand["data"], by_hand["scores"]
    image, label = data.x_test[IMAGE], data.y_test[IMAGE]
    figures = study.figures
    np.testing.assert_array_equal(figures["image"], image)
    ((_, gallery, captions),) = figures["gallery"]
    np.testing.assert_allclose(gallery, feature_gradients(machine, image[None], label[None], [0, 1, 2])[0], rtol=1e-9)
    assert [c.split()[0] for c in captions] == ["#0", "#1", "#2"]
    weak = np.flatnonzero((scores.usefulness > scores.chance) & (scores.robustness <= THRESHOLD)).tolist()
    shown = weak[:3] + weak[-3:]  # the earliest and the latest three (TK fig. 5)
    ((_, strip, strip_captions),) = figures["strips"]
    assert [int(c.split()[0][1:]) for c in strip_captions] == shown
    np.testing.assert_allclose(strip, feature_gradients(machine, image[None], label[None], shown)[0], rtol=1e-9)


def test_the_csv_columns_hold_what_their_headers_name(study, by_hand, tmp_path, monkeypatch):
    from ntkrobust import plots

    for figure in ("robustness_usefulness", "feature_gallery", "robust_only_curves"):  # their own tests draw them
        monkeypatch.setattr(plots, figure, lambda *args, **kwargs: None)
    out = study.save(tmp_path / "run")
    with open(out / "features.csv") as f:
        rows = list(csv.DictReader(f))
    mine = by_hand["scores"]
    assert [float(r["usefulness"]) for r in rows] == pytest.approx(mine.usefulness.tolist(), abs=1e-6)
    assert [float(r["robustness"]) for r in rows] == pytest.approx(mine.robustness.tolist(), abs=1e-6)
    assert [float(r["eigenvalue"]) for r in rows] == pytest.approx(mine.eigenvalue.tolist(), rel=1e-10)


@pytest.mark.parametrize("random_start", [True, False])
def test_a_pgd_feature_attack_gets_its_schedule_start_and_seed(random_start, by_hand):
    """--feature-attack pgd: step, steps, the random start and the seed reach ``feature_scores``
    (robust-only kernels off: every held-out point ranks)."""
    from ntkrobust.kernels.features import feature_scores

    threat = ThreatSettings(eps=0.2, step=0.05, steps=1, random_start=random_start)  # the start decides
    settings = FeaturesSettings(
        data=DATA, n_features=6, feature_attack="pgd", threat=threat, robust_r=(), image_index=IMAGE
    )
    result = features.run(settings)
    data = by_hand["data"]
    from ntkrobust.attacks import ThreatModel

    mine = feature_scores(
        by_hand["machine"], data.x_test, data.y_test, ThreatModel("linf", 0.2), n_features=6, attack="pgd",
        step=0.05, steps=1, random_start=random_start, seed=SEED,
    )  # fmt: skip
    flipped = feature_scores(
        by_hand["machine"], data.x_test, data.y_test, ThreatModel("linf", 0.2), n_features=6, attack="pgd",
        step=0.05, steps=1, random_start=True, seed=0 if random_start else SEED,
    )  # fmt: skip
    assert not np.array_equal(flipped.robustness, mine.robustness)  # the start and its seed show here
    np.testing.assert_array_equal(result.tables["fc2"].robustness, mine.robustness)
    np.testing.assert_array_equal(result.tables["fc2"].usefulness, mine.usefulness)
    config = result.record["config"]
    assert (config["step"], config["steps"], config["random_start"]) == (0.05, 1, random_start)
    assert config["robust_steps"] is None and config["validation_points"] == 40


def test_the_robust_only_pgd_gets_the_step_steps_and_seed_given(by_hand):
    """A small --step (0.01, three steps) leaves the random start in charge, so the seed and the
    number of steps both show in the accuracies of the robust-only kernels."""
    from ntkrobust.kernels.features import feature_scores
    from ntkrobust.kernels.robust_only import robust_only_kernels

    settings = FeaturesSettings(
        data=DATA, n_features=4, threat=ThreatSettings(eps=0.2, step=0.01), robust_r=(1, 4), robust_steps=3,
        top_k=9, image_index=IMAGE,
    )  # fmt: skip
    result = features.run(settings)
    data, val, evaluation, machine = by_hand["data"], by_hand["val"], by_hand["eval"], by_hand["machine"]
    from ntkrobust.attacks import ThreatModel

    threat = ThreatModel("linf", 0.2)
    scores = feature_scores(machine, data.x_test[val], data.y_test[val], threat, n_features=4, seed=SEED)
    ranking = np.concatenate([np.argsort(-scores.robustness, kind="stable"), np.arange(4, 60)])

    def robust_only(step, steps, seed):
        x, y = data.x_test[evaluation], data.y_test[evaluation]
        kernels = robust_only_kernels(machine, ranking, [1, 4], x, y, threat, pgd_step=step, pgd_steps=steps, seed=seed)
        return [r.as_dict() for r in kernels]

    expected = robust_only(0.01, 3, SEED)
    assert result.record["architectures"]["fc2"]["robust_only"] == expected
    assert expected not in (robust_only(0.01, 3, 0), robust_only(0.01, 10, SEED))  # both would show
    config = result.record["config"]
    assert (config["robust_step"], config["robust_steps"], config["step"]) == (0.01, 3, None)
    assert config["top_k"] == 4 and len(result.figures["gallery"][0][2]) == 4  # at most the features scored


def test_the_full_machines_fgsm_accuracy_counts_only_points_correct_at_x_too(by_hand, monkeypatch, own_class_attack):
    from ntkrobust.kernels import adversarial

    data, machine = by_hand["data"], by_hand["machine"]
    monkeypatch.setattr(adversarial, "craft_adversarial", own_class_attack(data))
    settings = FeaturesSettings(data=DATA, n_features=6, threat=ThreatSettings(eps=EPS), robust_r=(), top_k=1)
    full = features.run(settings).record["architectures"]["fc2"]["full_machine"]
    clean = machine.predict(data.x_test) == data.y_test
    moved = machine.predict(own_class_attack(data)(None, data.x_test, data.y_test, None)) == data.y_test
    assert not clean.all() and moved[~clean].any()  # a wrong point made right: the conventions differ here
    assert full == {"clean_accuracy": clean.mean(), "fgsm_accuracy": (clean & moved).mean()}
