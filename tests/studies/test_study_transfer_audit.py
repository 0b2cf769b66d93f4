"""Audit of ``studies.transfer.run``: the examples it saves and every accuracy and τ it records,
recomputed by hand.

The independent route: the data and both training subsets are redrawn from the documented rule
(``bridge.data.balanced_indices`` with --seed), the analytic NTK machine fitted directly, the eNTK
surrogate rebuilt from ``bridge.surrogate`` (nets seeded --seed, --seed + 1, ...), the attack spec
written out here (PGD, its random start seeded by --seed), and the targets' accuracies counted with
plain torch predictions: a point counts under an attack only if it is correct at x too; τ is
Loo et al.'s (clean − other) / (clean − own). Every setting is off its default (seed 2, kernel-n
20, surrogate-n 16, two surrogate nets, ridge 0.05), so a value dropped on its way shows.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, ThreatSettings, transfer
from ntkrobust.studies.transfer import TransferSettings, transferability_series

SEED, EPS, STEP, STEPS = 2, 0.2, 0.1, 2
DATA = DataSettings(classes=(3, 8), n_train=60, n_test=30, seed=SEED)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two fc1 nets at initialisation (seeds 0 and 1) as targets, attacked by an fc1 NTK machine
    and an fc1:8 eNTK surrogate: (result, data, the targets' paths)."""
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config

    folder = tmp_path_factory.mktemp("transfer-audit")
    paths = []
    for seed in (0, 1):
        config = model_config("fc1", (1, 8, 8), 2, width=16, seed=seed)
        paths.append(save_checkpoint(folder / f"net{seed}.pt", build_model(config), config))
    settings = TransferSettings(
        target=tuple(str(p) for p in paths),
        data=DATA,
        kernel_arch=("fc1",),
        kernel_n=20,
        surrogate=("fc1:8",),
        surrogate_n=16,
        surrogate_nets=2,
        surrogate_ridge=0.05,
        device="cpu",
        method="pgd",
        threat=ThreatSettings(eps=EPS, step=STEP, steps=STEPS),
    )
    return transfer.run(settings), DATA.load(), paths


def _spec():
    from ntkrobust.attacks import AttackSpec

    return AttackSpec("pgd", EPS, "linf", STEP, STEPS, True, SEED)


def test_the_ntk_machines_examples_are_on_its_seeded_training_subset(run):
    from ntkrobust.attacks import robust_accuracy
    from ntkrobust.bridge.data import balanced_indices
    from ntkrobust.kernels import fit_kernel_machine, get_architecture
    from ntkrobust.kernels.adversarial import craft_adversarial

    result, data, _ = run
    chosen = balanced_indices(data.y_train, data.classes, 20, SEED)
    machine = fit_kernel_machine(
        get_architecture("fc1"), data.x_train[chosen], data.y_train[chosen], classes=data.classes
    )
    examples = craft_adversarial(machine, data.x_test, data.y_test, _spec())
    np.testing.assert_allclose(result.arrays["ntk_fc1"], examples, atol=1e-6)
    (about,) = [s for s in result.record["sources"] if s["name"] == "NTK fc1"]
    clean = machine.predict(data.x_test)
    assert about["kernel_clean_accuracy"] == robust_accuracy(clean, data.y_test)
    assert about["kernel_robust_accuracy"] == robust_accuracy(machine.predict(examples), data.y_test, clean)
    assert result.record["config"]["kernel_n"] == 20


def test_the_surrogates_examples_are_its_nets_on_their_own_subset(run):
    from ntkrobust.bridge.data import balanced_indices, task_indices
    from ntkrobust.bridge.models import model_config
    from ntkrobust.bridge.surrogate import fit_empirical_kernel_machine, initial_networks
    from ntkrobust.bridge.transfer import white_box_examples

    result, data, _ = run
    chosen = balanced_indices(data.y_train, data.classes, 16, SEED)
    nets = initial_networks(model_config("fc1", (1, 8, 8), 2, width=8, seed=SEED), 2)
    machine = fit_empirical_kernel_machine(
        nets, data.x_train[chosen], task_indices(data.y_train[chosen], data.classes), 2, ridge=0.05
    )
    examples = white_box_examples(machine, data.x_test, task_indices(data.y_test, data.classes), _spec())
    np.testing.assert_allclose(result.arrays["entk_fc1_8"], examples, atol=1e-5)
    config = result.record["config"]
    assert (config["surrogate_n"], config["surrogate_nets"], config["surrogate_ridge"]) == (16, 2, 0.05)
    (about,) = [s for s in result.record["sources"] if s["name"] == "eNTK fc1:8"]
    assert about["networks"] == 2 and about["model"]["seed"] == SEED and about["model"]["width"] == 8


def test_every_accuracy_and_tau_is_counted_by_hand(run):
    import torch

    from ntkrobust.bridge.checkpoint import load_checkpoint
    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.transfer import random_sign_examples, white_box_examples

    result, data, paths = run
    y = task_indices(data.y_test, data.classes)
    nets = [load_checkpoint(p)[0].eval() for p in paths]
    own = [white_box_examples(net, data.x_test, y, _spec()) for net in nets]
    noisy = random_sign_examples(data.x_test, _spec())
    np.testing.assert_array_equal(result.arrays["random_sign"], noisy)
    np.testing.assert_array_equal(result.arrays["y"], data.y_test)  # class ids, as the data has them
    np.testing.assert_array_equal(result.arrays["x"], data.x_test)
    sources = {
        "NTK fc1": result.arrays["ntk_fc1"],
        "eNTK fc1:8": result.arrays["entk_fc1_8"],
        "net0": own[0],
        "net1": own[1],
    }

    def correct(net, x):
        with torch.no_grad():
            return net(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy() == y

    def tau(clean, other, mine):
        return (clean - other) / (clean - mine) if clean != mine else math.nan

    rows = result.record["targets"]
    assert [r["name"] for r in rows] == ["net0", "net1"]
    matrix = []
    for net, mine, row in zip(nets, own, rows, strict=True):
        at_x = correct(net, data.x_test)
        clean, white, random = at_x.mean(), (at_x & correct(net, mine)).mean(), (at_x & correct(net, noisy)).mean()
        others = {name: (at_x & correct(net, x)).mean() for name, x in sources.items()}
        assert row["clean_accuracy"] == pytest.approx(clean, abs=1e-12)
        assert row["white_box_accuracy"] == pytest.approx(white, abs=1e-12)
        assert row["random_accuracy"] == pytest.approx(random, abs=1e-12)
        assert row["transfer_accuracy"] == pytest.approx(others, abs=1e-12)
        assert row["ntk_attack_accuracy"] == pytest.approx({"fc1": others["NTK fc1"]}, abs=1e-12)
        assert row["surrogate_attack_accuracy"] == pytest.approx({"fc1:8": others["eNTK fc1:8"]}, abs=1e-12)
        taus = {name: tau(clean, acc, white) for name, acc in others.items()}
        assert row["transferability"] == pytest.approx(taus, abs=1e-12, nan_ok=True)
        random_tau = tau(clean, random, white)
        assert row["random_transferability"] == (None if math.isnan(random_tau) else pytest.approx(random_tau))
        matrix.append([clean, random, white, *others.values()])
    assert clean > white  # the attack bites: τ is defined
    table = result.record["matrix"]
    assert table["columns"] == ["clean", "random sign", "own white-box", *sources]
    np.testing.assert_allclose(np.asarray(table["accuracy"]), np.asarray(matrix), atol=1e-12)
    assert table["transferability_columns"] == list(sources)


def test_the_attack_in_the_config_is_the_one_that_ran(run):
    attack = run[0].record["config"]["attack"]
    assert (attack["method"], attack["eps"], attack["step"], attack["steps"]) == ("pgd", EPS, STEP, STEPS)
    assert attack["random_start"] is True and attack["seed"] == SEED and run[0].record["seed"] == SEED


def _net(label, epoch, curve):
    return SimpleNamespace(label=label, epoch=epoch, curve=curve)


def test_the_transferability_series_takes_each_positions_latest_checkpoint_against_the_first_target():
    """LOO fig. 3 by hand: the first target is the reference (its row's τ), never a point; a
    position's latest epoch wins; a series needs two points."""
    first = _net("first", 9, ("run", 9))  # the reference: not a point of its own series
    second = _net("second", 4, ("run", 4))  # a second target is a source too
    extra = [
        _net("a", 0, ("run", 0)),
        _net("b", 2, ("lin", 1)),
        _net("c", 5, ("lin", 1)),  # the same position, later: it replaces b
        _net("d", 1, ("lin", 3)),
        _net("e", 3, ("alone", 0)),  # one point: no series
    ]
    taus = {"first": 1.0, "second": 0.4, "a": 0.1, "b": 0.2, "c": 0.3, "d": 0.5, "e": 0.6}
    rows = [{"transferability": taus}, {"transferability": {k: -v for k, v in taus.items()}}]
    series = transferability_series([first, second], extra, rows)
    assert series == [("lin", [1, 3], [0.3, 0.5]), ("run", [0, 4], [0.1, 0.4])]


def test_the_ntk_machines_robust_accuracy_counts_only_points_correct_at_x_too(run, monkeypatch, own_class_attack):
    from ntkrobust.bridge.data import balanced_indices
    from ntkrobust.kernels import adversarial, fit_kernel_machine, get_architecture

    _, data, paths = run
    monkeypatch.setattr(adversarial, "craft_adversarial", own_class_attack(data))
    settings = TransferSettings(
        target=(str(paths[0]),),
        data=DATA,
        kernel_arch=("fc1",),
        kernel_n=20,
        device="cpu",
        threat=ThreatSettings(eps=EPS),
    )
    (about, *_) = transfer.run(settings).record["sources"]
    chosen = balanced_indices(data.y_train, data.classes, 20, SEED)
    machine = fit_kernel_machine(
        get_architecture("fc1"), data.x_train[chosen], data.y_train[chosen], classes=data.classes
    )
    clean = machine.predict(data.x_test) == data.y_test
    moved = machine.predict(own_class_attack(data)(None, data.x_test, data.y_test, None)) == data.y_test
    assert not clean.all() and moved[~clean].any()  # a wrong point made right: the conventions differ here
    assert about["kernel_clean_accuracy"] == clean.mean()
    assert about["kernel_robust_accuracy"] == (clean & moved).mean()
