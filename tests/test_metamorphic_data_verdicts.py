"""Metamorphic tests of the data selection (``bridge.data``, ``studies.make_npz``) and of the
reproduction's verdicts (``reproduce``'s recipe checks and the report's counts): relations between
two runs of one function on transformed inputs.

Data: the order of ``--classes`` changes the task order and nothing else; class ids renamed by a
bijection (and the request renamed with them) draw the same records; records permuted in the file
come back permuted; a seed changes which points are drawn, never the class balance; points of
other classes added to a label vector shift the probe indices and change nothing else; a dataset
saved by ``save_dataset_npz`` (``make-npz``) reads back as the same task. Documented in
``bridge.data``'s docstrings, README "What you can choose" (``--classes a,b``: "the first one −1";
``make-npz`` "freezes any data selection").

Verdicts: each recipe's numbers moved along the claim never turn "agrees" into "contradicts"
(monotonicity, swept on a grid), and a rule on a difference of accuracies does not change when
both are moved by the same share k/n (rounding included: ``_recipe.at_least`` / ``at_most``);
runs, nets and spawns that a rule reads as a set judge the same in any order; the report's counts
are the verdicts' tally, whatever the order of the findings.

Small synthetic ``.npz`` files (the numbered records of ``test_data_audit``, whose pixels name
their record) and the synthetic records of ``test_checks`` (the recipes' own smoke-scale steps).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
import test_checks as checks  # synthetic step records and ``judge``
import test_data_audit as audit  # numbered records: a loaded image names its record
import test_report as reports  # findings and reports as the runner writes them

from ntkrobust.bridge.data import (
    balanced_indices,
    load_dataset,
    save_dataset_npz,
    stratified_halves,
    task_indices,
)
from ntkrobust.reproduce import VERDICTS
from ntkrobust.reproduce.report import render_markdown, summary_table_markdown, verdict_counts, write_report

RANK = {"contradicts": 0, "inconclusive": 1, "agrees": 2}


def _records(x: np.ndarray) -> list[int]:
    return audit.record_of(x).tolist()


# -- data: the order of --classes -----------------------------------------------------------------


def test_the_order_of_classes_changes_the_task_order_and_nothing_else(tmp_path):
    """``--classes 2,0`` and ``0,2`` select the same records of both splits in file order (the
    selection is ``np.isin``, a set); ``classes`` is the order given, and the task positions of
    ``task_indices`` (the net's outputs; binary: the first class −1) are each other's mirror. With
    an even ``--n-train`` the per-class counts are equal in both orders (no remainder to give)."""
    spec = audit.write(tmp_path)
    a, b = load_dataset(spec, classes=[2, 0]), load_dataset(spec, classes=[0, 2])
    assert a.classes == (2, 0) and b.classes == (0, 2)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    np.testing.assert_array_equal(task_indices(a.y_train, a.classes), 1 - task_indices(b.y_train, b.classes))
    for seed in (0, 5):
        counts = [
            np.bincount(load_dataset(spec, classes=order, n_train=6, n_test=2, seed=seed).y_train, minlength=3)
            for order in ([2, 0], [0, 2])
        ]
        assert counts[0].tolist() == counts[1].tolist() == [3, 0, 3]


# -- data: class ids renamed ------------------------------------------------------------------------

PI = {0: 7, 1: 3, 2: 5}  # a bijection that changes the sorted order of the ids


def _renamed(labels: np.ndarray) -> np.ndarray:
    return np.array([PI[int(c)] for c in labels])


@pytest.mark.parametrize("seed", [0, 4])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2)])
def test_renamed_class_ids_draw_the_same_records(tmp_path, seed, order):
    """Class ids π(c) in the file and ``--classes π(order)``: the same records in both splits, the
    same seeded, class-balanced subsets (drawn per class in task order, ``_balanced_subset``), the
    labels π(y), and the same task positions. A draw that read the ids' values (a sort, an id used
    as an index) would differ under a bijection that reorders them."""
    plain = audit.write(tmp_path, "plain.npz")
    renamed = audit.write(tmp_path, "renamed.npz", y_train=_renamed(audit.Y_TRAIN), y_test=_renamed(audit.Y_TEST))
    n_train, n_test = 2 * len(order) + 1, len(order) + 1
    a = load_dataset(plain, classes=list(order), n_train=n_train, n_test=n_test, seed=seed)
    b = load_dataset(renamed, classes=[PI[c] for c in order], n_train=n_train, n_test=n_test, seed=seed)
    assert _records(a.x_train) == _records(b.x_train) and _records(a.x_test) == _records(b.x_test)
    np.testing.assert_array_equal(_renamed(a.y_train), b.y_train)
    np.testing.assert_array_equal(_renamed(a.y_test), b.y_test)
    np.testing.assert_array_equal(task_indices(a.y_test, a.classes), task_indices(b.y_test, b.classes))


def test_renamed_labels_give_the_same_probe_indices():
    """``balanced_indices`` (the probe sets of the eNTK metrics) under a bijection of the ids with
    ``classes`` renamed alike: the same indices, for every seed and size."""
    labels = np.array([5, 1, 5, 5, 1, 9, 9, 5, 1, 9, 5, 1, 9, 1])
    rename = {5: 0, 1: 40, 9: 2}
    renamed = np.array([rename[int(c)] for c in labels])
    for seed, n, classes in itertools.product((0, 3), (3, 7), ((9, 5), (1, 9, 5))):
        np.testing.assert_array_equal(
            balanced_indices(labels, classes, n, seed),
            balanced_indices(renamed, tuple(rename[c] for c in classes), n, seed),
        )


def test_points_of_other_classes_shift_the_probe_indices_and_change_nothing_else():
    """Points of a class outside the task appended after the labels leave ``balanced_indices``
    unchanged; prepended (k of them), they shift every index by k: the draw picks among each class's
    members, whatever else the vector holds. An index into the members taken for an index into the
    labels would break the second."""
    labels = np.array([5, 1, 5, 5, 1, 9, 9, 5, 1, 9, 5, 1])
    other = np.full(4, 6)
    for seed in (0, 1, 8):
        base = balanced_indices(labels, (9, 5), 5, seed)
        np.testing.assert_array_equal(balanced_indices(np.concatenate([labels, other]), (9, 5), 5, seed), base)
        np.testing.assert_array_equal(balanced_indices(np.concatenate([other, labels]), (9, 5), 5, seed), base + 4)


# -- data: records permuted, seeds ----------------------------------------------------------------


def test_records_permuted_in_the_file_come_back_permuted(tmp_path):
    """The whole split (no subset) is loaded in file order: a file whose records (image and label
    together) are permuted loads as the same records in the permuted order, for any class request;
    a subset of it keeps the documented per-class counts."""
    rng = np.random.default_rng(3)
    sigma, tau = rng.permutation(15), rng.permutation(10)
    spec = audit.write(tmp_path, "a.npz")
    permuted = audit.write(
        tmp_path, "b.npz", x_train=audit.numbered(0, 15)[sigma], y_train=audit.Y_TRAIN[sigma],
        x_test=audit.numbered(100, 10)[tau], y_test=audit.Y_TEST[tau],
    )  # fmt: skip
    for classes in (None, [2, 0], [1, 2, 0]):
        a, b = load_dataset(spec, classes=classes), load_dataset(permuted, classes=classes)
        kept = set(_records(a.x_train))
        assert _records(b.x_train) == [r for r in sigma.tolist() if r in kept]
        kept_test = set(_records(a.x_test))
        assert _records(b.x_test) == [100 + r for r in tau.tolist() if 100 + r in kept_test]
        subset = load_dataset(permuted, classes=classes, n_train=7, seed=1)
        task = a.classes
        counts = np.bincount(task_indices(subset.y_train, task), minlength=len(task))
        assert counts.tolist() == [7 // len(task) + (i < 7 % len(task)) for i in range(len(task))]


def test_a_seed_changes_the_points_drawn_never_the_class_balance():
    """Seeds 0-7 of one request (digits, classes 8, 3, 1): every draw holds the documented counts
    per class (the first classes given take the remainder), distinct records of the task's classes
    only, and the seeds do not all draw the same points."""
    drawn = set()
    for seed in range(8):
        data = load_dataset("digits", classes=[8, 3, 1], n_train=20, n_test=10, seed=seed)
        assert np.bincount(data.y_train, minlength=10)[[8, 3, 1]].tolist() == [7, 7, 6]
        assert np.bincount(data.y_test, minlength=10)[[8, 3, 1]].tolist() == [4, 3, 3]
        assert len({row.tobytes() for row in data.x_train}) == 20
        drawn.add(data.x_train.tobytes())
    assert len(drawn) == 8


def test_the_train_and_test_split_cut_from_the_test_split_partition_it(tmp_path):
    """``--from-test-split``: the train points and the test points are disjoint and together are
    every test record of the task's classes, for any seed and any order of the classes (the
    train cut is ``_balanced_subset``, the test split ``np.setdiff1d`` of it)."""
    spec = audit.write(tmp_path)
    pool = (100 + np.flatnonzero(np.isin(audit.Y_TEST, [0, 2]))).tolist()
    for seed, classes in itertools.product((0, 1, 6), ([0, 2], [2, 0])):
        data = load_dataset(spec, classes=classes, from_test_split=True, seed=seed)
        train, test = _records(data.x_train), _records(data.x_test)
        assert not set(train) & set(test) and sorted(train + test) == pool


def test_stratified_halves_partition_any_labelling_and_ignore_order_preserving_renames():
    """``stratified_halves``: disjoint halves that cover every index, each class split as evenly as
    possible (the first half takes an odd one out); ids renamed by an increasing map (c → 10c + 3:
    the same sorted order of ``np.unique``, so the same per-class stream) give the same halves."""
    rng = np.random.default_rng(0)
    for trial in range(6):
        labels = rng.integers(0, 4, size=int(rng.integers(5, 30)))
        first, second = stratified_halves(labels, trial)
        assert not set(first) & set(second) and sorted([*first, *second]) == list(range(labels.size))
        for c in np.unique(labels):
            n_first, n_second = int(np.sum(labels[first] == c)), int(np.sum(labels[second] == c))
            assert n_first - n_second in (0, 1), (c, n_first, n_second)
        again = stratified_halves(10 * labels + 3, trial)
        np.testing.assert_array_equal(again[0], first)
        np.testing.assert_array_equal(again[1], second)


# -- data: a dataset saved and read back ------------------------------------------------------------


def test_a_saved_dataset_reads_back_as_the_same_task(tmp_path):
    """``save_dataset_npz`` then ``load_dataset`` of the file, no flags: the same arrays, label
    names and task classes *in the order given* (its docstring: the module "reads back unchanged";
    README: ``make-npz`` "freezes any data selection", and ``--classes a,b`` makes "the first one
    −1"). Two requests that differ only in the order of ``--classes`` (2,0 against 0,2) must read
    back as two different tasks, and a subset drawn from the saved file then gives the remainder to
    the class given first, as one drawn from the source does.

    Failed before the fix: the file held no class order, and every saved task read back in the
    sorted order of its ids: ``make-npz --classes 8,3`` gave a file whose task is (3, 8), 3 the
    negative class. The file now records ``classes``."""
    names = np.array(["zero", "one", "two"])
    spec = audit.write(tmp_path, label_names=names)
    for order in ([2, 0], [0, 2], [1, 2, 0]):
        data = load_dataset(spec, classes=order, n_train=8, seed=2)
        path = tmp_path / f"saved-{'-'.join(map(str, order))}.npz"
        save_dataset_npz(data, path)
        again = load_dataset(str(path))
        for key in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(again, key), getattr(data, key), err_msg=key)
        assert again.label_names == ("zero", "one", "two")
        assert again.classes == data.classes == tuple(order)
        counts = np.bincount(load_dataset(str(path), n_train=len(order) + 1, seed=0).y_train, minlength=3)
        assert counts[order[0]] == 2, (order, counts.tolist())


def test_make_npz_freezes_the_selection_it_resolved(tmp_path):
    """``make-npz`` of a request, then the saved file as ``--data`` alone: the same dataset as the
    request loads (arrays and task), for both orders of the classes. Failed before the fix for
    the order 8, 3 (see ``test_a_saved_dataset_reads_back_as_the_same_task``)."""
    from ntkrobust.studies import DataSettings, make_npz
    from ntkrobust.studies.make_npz import MakeNpzSettings

    for classes in ((3, 8), (8, 3)):
        settings = DataSettings(classes=classes, n_train=24, n_test=12, seed=3)
        path = make_npz.run(MakeNpzSettings(data=settings)).save(tmp_path / f"d{classes[0]}.npz")
        direct, frozen = settings.load(), DataSettings(data=str(path)).load()
        for key in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(frozen, key), getattr(direct, key), err_msg=key)
        assert frozen.classes == direct.classes == classes


# -- verdicts: monotone along the claim -------------------------------------------------------------

GRID = np.round(np.linspace(0.0, 1.0, 41), 6)

#: each recipe's records as a function of t in [0, 1], every number moving along the claim as t
#: grows (t = 0 well against it, t = 1 well for it); the builders are ``test_checks``'
FAMILIES = {
    "tk-fig2-features": lambda t: checks.features(rho=0.6 - 1.2 * t, top=0.1 + 0.4 * t, rest=0.3),
    # robust-only kernels that are less accurate and less robust: the claim ("not robust and accurate")
    "tk-suppD3-robust-only": lambda t: checks.features(rows=((0.9, 0.0), (0.9 - 0.6 * t, 0.4 - 0.3 * t))),
    "tk-fig4-two-layer": lambda t: checks.two_layer(narrow_cosine=0.5, wide_cosine=0.3 + 0.4 * t, ntk=0.9 - 0.8 * t),
    "tk-sec3-transfer": lambda t: checks.tk_transfer(tau=t, random_tau=0.1),
    "tk-fig6-kernel-growth": lambda t: checks.growth(((1, 5), (0.5, 0.5)), ((1, 9 - 8 * t), (0.5, 0.3 + 0.4 * t))),
    "loo-fig1-kernel-speed": lambda t: checks.standard_pgd(
        {"velocity": (1 + 5 * t, 1, 1, 1)}, {"velocity": (1 + 5 * t, 1, 1, 1)}
    ),
    "loo-fig1-rank-specialization": lambda t: checks.standard_pgd(
        {"rank": 5.0, "specialization": 0.5}, {"rank": 3 + 4 * t, "specialization": 0.7 - 0.4 * t}
    ),
    "loo-fig2-centered": lambda t: checks.spawns({1: 0.6, 2: 0.4 + 0.4 * t}, {1: 0.6, 2: 0.4 + 0.4 * t}),
    "loo-fig2-centered-robustness": lambda t: checks.spawned_robustness(centered=0.4 * t, linearized=0.1, standard=0.1),
    "loo-table2-centered-at": lambda t: checks.centered_at(centered=(0.6, 0.3 + 0.4 * t), pgd=(0.52, 0.5)),
    "loo-fig3-transfer": lambda t: checks.loo_transfer({0: 0.5 - 0.45 * t, 1: 0.3 + 0.5 * t, 2: 0.4, 3: 1.0}),
    "rat-fig1-threefold": lambda t: checks.threefold(first=1 + 5 * t, after_decay=0.5 + 2 * t),
    "rat-fig1-ae-distance": lambda t: checks.ae_velocity(standard=2, pgd=3 - 2 * t, te=3 - 2 * t),
    # |KS − 1| from rising with robust accuracy (t = 0) to falling with it (t = 1), linearly
    "rat-sec3-ks-robustness": lambda t: checks.ks(
        {
            m: (1 + (1 - t) * g + t * (1.6 - g), acc)
            for m, g, acc in (("standard", 0.1, 0.0), ("fgsm", 0.3, 0.1), ("pgd", 0.9, 0.4), ("te", 1.5, 0.5))
        }
    ),
    "rat-fig5-kernel-distance": lambda t: checks.distances((0.0, 0.3, 0.31, 0.32, 0.33, 0.33 - 0.05 + 0.15 * t)),
    "rat-fig2-batchnorm": lambda t: checks.batchnorm(running=(0.8, 0.2 + 0.4 * t), batch=(0.8, 0.4)),
    "rat-fig6-switch-cost": lambda t: checks.switch(share=1.0 - 0.5 * t, switched_pgd=0.2 + 0.2 * t),
    "rat-fig10-catastrophic-overfitting": lambda t: checks.overfitting(
        fgsm=(0.3, 0.4, 0.05), noise=(0.3, 0.4, 0.4 * t)
    ),
    "beyond-autoattack": lambda t: checks.evaluate(pgd=(0.4, 0.2 + 0.2 * t)),
    "beyond-transfer-matrix": lambda t: checks.matrix(pgd_under_te=0.1 + 0.4 * t),
}


def test_every_recipe_has_a_monotone_family():
    """Every recipe of ``all_recipes`` is swept below: a new recipe needs its family here."""
    assert set(FAMILIES) == set(checks.RECIPES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_numbers_moved_along_the_claim_never_turn_agreement_into_contradiction(name):
    """Each rule (the recipe's ``rule`` text) is one-sided in its numbers: moving them along the
    claim can only move the verdict from contradicts through inconclusive to agrees (never back).
    Swept on 41 points from well against the claim (contradicts) to well for it (agrees); a flipped
    comparison or a threshold on the wrong side shows as a step down."""
    verdicts = [checks.judge(name, FAMILIES[name](float(t))).verdict for t in GRID]
    assert verdicts[0] == "contradicts" and verdicts[-1] == "agrees", (verdicts[0], verdicts[-1])
    ranks = [RANK[v] for v in verdicts]
    steps_down = [
        (float(GRID[i]), verdicts[i], verdicts[i + 1]) for i in range(len(ranks) - 1) if ranks[i + 1] < ranks[i]
    ]
    assert not steps_down, steps_down


# -- verdicts: a difference of shares moved as a whole ------------------------------------------------

SHARES = [k / 20 for k in range(21)]  # accuracies and τ of 20 points: k/20

#: rules on a difference of two shares (``at_least`` / ``at_most`` with a margin): records of the
#: pair (a, b); the verdict may depend on a − b only
DIFFERENCES = {
    "tk-sec3-transfer": lambda a, b: checks.tk_transfer(tau=a, random_tau=b),  # τ exceeds noise's by 0.2
    "tk-fig4-two-layer": lambda a, b: checks.two_layer(narrow_cosine=0.3, wide_cosine=0.9, ntk=a, random=b),
    "beyond-autoattack": lambda a, b: checks.evaluate(pgd=(a, b)),  # PGD-20 − AutoAttack ≤ 0.05
    "loo-table2-centered-at": lambda a, b: checks.centered_at(centered=(0.9, a), pgd=(0.9, b)),  # gain ≥ 0.05
    "loo-fig2-centered-robustness": lambda a, b: checks.spawned_robustness(centered=a, linearized=b, standard=b),
    "rat-fig6-switch-cost": lambda a, b: checks.switch(share=0.6, switched_pgd=a, full_pgd=b),  # within 0.03
    "rat-fig2-batchnorm": lambda a, b: checks.batchnorm(running=(0.8, a), batch=(0.8, b)),  # gap > 0.02
}


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_a_rule_on_a_difference_judges_the_difference_alone(name):
    """Both shares moved by the same k/20: the verdict does not change, at the margin itself too (a
    gap of exactly 0.05 is 0.0499… or 0.0500…01 in floats depending on the pair; ``_recipe``'s
    ``at_least`` / ``at_most`` count a rounding as equal). Every pair of shares with a difference of
    at most 0.35 is compared with every shift of it that stays in [0, 1]."""
    seen: dict[int, dict[str, list[tuple[float, float]]]] = {}
    for a, b in itertools.product(SHARES, SHARES):
        if abs(a - b) > 0.35:
            continue
        verdict = checks.judge(name, DIFFERENCES[name](a, b)).verdict
        seen.setdefault(round(20 * (a - b)), {}).setdefault(verdict, []).append((a, b))
    split = {gap / 20: by for gap, by in seen.items() if len(by) > 1}
    assert not split, split
    assert len({next(iter(by)) for by in seen.values()}) > 1  # the rule does turn on the difference


# -- verdicts: what a rule reads as a set -----------------------------------------------------------


def _permuted(records: dict, step: str, *keys: str, seed: int = 0) -> dict:
    """``records`` with the list at ``records[step][keys...]`` in a seeded random order."""
    out = json.loads(json.dumps(records))
    target = out[step]
    for key in keys[:-1]:
        target = target[key]
    items = target[keys[-1]]
    target[keys[-1]] = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    return out


EVALUATE_NETS = ("mnist-evaluate", "nets")
#: (recipe, records, the list the rule reads as a set, as a path of keys): the verdict's numbers
#: are keyed by mode, width, label or spawn epoch, not by position
SETS = [
    # TK fig. 6 read its two runs by position until the checks looked them up by mode (Results.runs_by_mode)
    ("tk-fig6-kernel-growth", checks.growth(((1, 10), (0.5, 0.5)), ((1, 2), (0.5, 0.9))),
     ("mnist-dynamics-standard-pgd", "runs")),
    ("tk-fig6-kernel-growth", checks.growth(((1, 2), (0.5, 0.5)), ((1, 10), (0.5, 0.9))),
     ("mnist-dynamics-standard-pgd", "runs")),
    ("tk-fig4-two-layer", checks.two_layer(narrow_cosine=0.3, wide_cosine=0.9, ntk=0.1), ("mnist-two-layer", "nets")),
    ("tk-fig4-two-layer", checks.two_layer(narrow_cosine=0.9, wide_cosine=0.3, ntk=0.8), ("mnist-two-layer", "nets")),
    ("loo-fig1-kernel-speed", checks.standard_pgd({"velocity": (10, 1, 1, 1)}, {"velocity": (1, 1, 1, 1)}),
     ("mnist-dynamics-standard-pgd", "runs")),
    ("loo-fig1-rank-specialization", checks.standard_pgd({"rank": 5, "specialization": 0.8},
                                                         {"rank": 9, "specialization": 0.2}),
     ("mnist-dynamics-standard-pgd", "runs")),
    ("rat-fig1-ae-distance", checks.ae_velocity(standard=3, pgd=1, te=5), ("mnist-dynamics-methods", "runs")),
    ("rat-fig1-ae-distance", checks.ae_velocity(standard=5, pgd=1, te=2), ("mnist-dynamics-methods", "runs")),
    ("rat-sec3-ks-robustness", checks.ks({"standard": (3.0, 0.0), "fgsm": (2.0, 0.1), "pgd": (1.2, 0.4),
                                          "te": (1.05, 0.5)}), ("mnist-dynamics-methods", "runs")),
    ("rat-fig5-kernel-distance", checks.parting("pgd"), ("mnist-dynamics-methods", "baseline_distance", "runs")),
    ("rat-fig5-kernel-distance", checks.parting("standard", "fgsm", "pgd"),
     ("mnist-dynamics-methods", "baseline_distance", "runs")),
    ("loo-fig2-centered", checks.spawns({1: 0.5, 2: 0.8}, {1: 0.52, 2: 0.79}),
     ("mnist-dynamics-spawns", "spawn_accuracy", "lines")),
    ("beyond-autoattack", checks.evaluate(fgsm=(0.5, 0.1), pgd=(0.40, 0.38), te=(0.4, 0.4)), EVALUATE_NETS),
    ("beyond-autoattack", checks.evaluate(fgsm=(0.5, 0.5), pgd=(0.40, 0.10), te=(0.4, 0.4)), EVALUATE_NETS),
    ("beyond-transfer-matrix", checks.matrix(pgd_under_te=0.1), ("mnist-transfer-matrix", "targets")),
    ("beyond-transfer-matrix", checks.matrix(pgd_under_te=0.5), ("mnist-transfer-matrix", "targets")),
]  # fmt: skip


@pytest.mark.parametrize("case", SETS, ids=[f"{name}-{i}" for i, (name, *_) in enumerate(SETS)])
def test_runs_read_as_a_set_judge_the_same_in_any_order(case):
    """Nets sorted by width (TK fig. 4), runs keyed by mode (LOO fig. 1, RAT), nets keyed by label
    (beyond): the order in which the record lists them is no part of the finding. Five seeded
    orders each give the verdict of the record as written."""
    name, records, path = case
    expected = checks.judge(name, records).verdict
    for seed in range(5):
        assert checks.judge(name, _permuted(records, *path, seed=seed)).verdict == expected, seed


def test_spawn_points_and_source_epochs_are_read_as_sets():
    """LOO fig. 2 reads each kind's points by spawn epoch, the latest by ``max``; LOO fig. 3 sorts
    the sources' τ by epoch: the points and the τ in any order judge the same."""
    records = checks.spawned_robustness(centered=0.4, linearized=0.1, standard=0.0)
    for line in records["mnist-dynamics-spawns"]["spawn_accuracy"]["lines"]:
        line["points"].reverse()
    assert checks.judge("loo-fig2-centered-robustness", records).verdict == "agrees"
    for by_epoch, expected in (
        ({0: 0.05, 1: 0.6, 2: 0.8, 3: 1.0}, "agrees"),
        ({0: 0.5, 1: 0.6, 3: 1.0}, "contradicts"),
    ):
        for order in itertools.permutations(by_epoch):
            assert checks.judge("loo-fig3-transfer", checks.loo_transfer({e: by_epoch[e] for e in order})).verdict == (
                expected
            )


# -- the report's counts ----------------------------------------------------------------------------


def test_the_reports_counts_are_the_verdicts_tally_in_any_order(tmp_path):
    """``findings.json``'s summary, the count line of report.md and report.html, and the marks of
    the summary table equal the tally of the findings' verdicts (a ``Counter``), for findings in any
    order; a finding added changes its own verdict's count by one and no other."""
    rng = np.random.default_rng(11)
    verdicts = [VERDICTS[i] for i in rng.integers(0, 3, size=9)]
    findings = [reports.finding(f"recipe-{i}", v) for i, v in enumerate(verdicts)]
    tally = Counter(verdicts)
    expected = {v: tally.get(v, 0) for v in VERDICTS}
    for seed in range(3):
        order = [findings[i] for i in np.random.default_rng(seed).permutation(len(findings))]
        out = tmp_path / f"r{seed}"
        write_report(out, reports.make_report(order, out))
        saved = json.loads((out / "findings.json").read_text())
        assert saved["summary"] == expected == verdict_counts(order)
        line = f"9 findings: {expected['agrees']} agrees, {expected['contradicts']} contradicts, " + (
            f"{expected['inconclusive']} inconclusive."
        )
        assert line in (out / "report.md").read_text() and line in (out / "report.html").read_text()
        table = summary_table_markdown(reports.make_report(order, out))
        assert {v: table.count(f"**{v}**") for v in VERDICTS} == expected
    for verdict in VERDICTS:
        more = verdict_counts([*findings, reports.finding("extra", verdict)])
        assert {v: more[v] - expected[v] for v in VERDICTS} == {v: int(v == verdict) for v in VERDICTS}
    assert "0 agrees, 0 contradicts, 0 inconclusive" in render_markdown(reports.make_report([], tmp_path), tmp_path)
