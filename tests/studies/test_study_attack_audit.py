"""Audit of ``studies.attack.run`` (and of the machine and threat settings it shares with the other
studies): the examples it saves and every number it records, recomputed by hand.

The independent route: the digits subset is reloaded from its seed, the NTK machine fitted
directly with ``kernels.fit_kernel_machine`` with the machine settings written out here (finite
time, ridge, learning rate), the attack spec written out here (PGD, its random start seeded by
--seed), the examples crafted with ``kernels.adversarial.craft_adversarial``, and the accuracies
and perturbation sizes counted with numpy. Every setting is off its default, so a setting that
the study or ``MachineSettings.fit`` / ``ThreatSettings.spec`` drops on the way shows.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, MachineSettings, ThreatSettings, attack
from ntkrobust.studies.attack import AttackSettings

SEED, EPS, STEP, STEPS = 5, 0.2, 0.05, 3
MACHINE = {"time": 200.0, "ridge": 0.1, "learning_rate": 0.5}


@functools.cache
def _run(random_start: bool):
    settings = AttackSettings(
        data=DataSettings(n_train=50, n_test=20, seed=SEED),
        machine=MachineSettings(**MACHINE),
        method="pgd",
        threat=ThreatSettings(eps=EPS, step=STEP, steps=STEPS, random_start=random_start),
    )
    return attack.run(settings)


@pytest.fixture(scope="module")
def machine():
    from ntkrobust.bridge.data import load_dataset
    from ntkrobust.kernels import fit_kernel_machine, get_architecture

    data = load_dataset("digits", n_train=50, n_test=20, seed=SEED)
    return data, fit_kernel_machine(
        get_architecture("fc2"), data.x_train, data.y_train, classes=data.classes, **MACHINE
    )


@pytest.mark.parametrize("random_start", [True, False])
def test_the_examples_and_accuracies_are_the_machines_under_the_given_attack(random_start, machine):
    from ntkrobust.attacks import AttackSpec
    from ntkrobust.kernels.adversarial import craft_adversarial

    data, fitted = machine
    result = _run(random_start)
    np.testing.assert_array_equal(result.x, data.x_test)
    np.testing.assert_array_equal(result.y, data.y_test)
    spec = AttackSpec("pgd", EPS, "linf", STEP, STEPS, random_start, SEED)
    x_adv = craft_adversarial(fitted, data.x_test, data.y_test, spec)
    np.testing.assert_allclose(result.x_adv, x_adv, atol=1e-6)
    record = result.record
    clean = fitted.predict(data.x_test) == data.y_test
    still = clean & (fitted.predict(x_adv) == data.y_test)
    assert record["clean_accuracy"] == clean.mean() and record["robust_accuracy"] == still.mean()
    assert record["robust_accuracy"] < record["clean_accuracy"]  # the attack bites
    delta = (result.x_adv - data.x_test).reshape(20, -1).astype(np.float64)
    assert record["perturbation"]["linf_max"] == pytest.approx(np.abs(delta).max(), rel=1e-6)
    assert record["perturbation"]["l2_mean"] == pytest.approx(np.linalg.norm(delta, axis=1).mean(), rel=1e-6)
    assert record["kernel"]["condition_number"] == pytest.approx(fitted.condition_number, rel=1e-9)
    config = record["config"]
    assert {key: config[key] for key in MACHINE} == MACHINE and config["precision"] == "float64"
    assert config["gradient"] == fitted.gradient != "auto"  # the route that ran, not the flag's "auto"
    assert (config["eps"], config["step"], config["steps"]) == (EPS, STEP, STEPS)
    assert config["random_start"] is random_start and record["seed"] == SEED and "seed" not in config


def test_the_saved_npz_holds_the_examples_the_clean_points_and_their_labels(machine, tmp_path):
    data, _ = machine
    result = _run(True)
    with np.load(result.save(tmp_path / "run") / "adversarial.npz") as saved:
        np.testing.assert_array_equal(saved["x"], data.x_test)
        np.testing.assert_array_equal(saved["y"], data.y_test)
        np.testing.assert_array_equal(saved["x_adv"], result.x_adv.astype(np.float32))
        assert np.abs(saved["x_adv"] - saved["x"]).max() > 0.5 * EPS


def test_the_robust_accuracy_counts_only_points_correct_at_x_too(machine, monkeypatch, own_class_attack):
    from ntkrobust.kernels import adversarial

    data, fitted = machine
    monkeypatch.setattr(adversarial, "craft_adversarial", own_class_attack(data))
    record = attack.run(
        AttackSettings(data=DataSettings(n_train=50, n_test=20, seed=SEED), machine=MachineSettings(**MACHINE))
    ).record
    clean = fitted.predict(data.x_test) == data.y_test
    moved = fitted.predict(own_class_attack(data)(None, data.x_test, data.y_test, None)) == data.y_test
    assert not clean.all() and moved[~clean].any()  # a wrong point made right: the conventions differ here
    assert record["robust_accuracy"] == (clean & moved).mean() < moved.mean()


def test_the_machine_attacked_is_fitted_with_the_settings_given(machine, monkeypatch):
    """The machine the attack is handed carries the --time, --ridge and --learning-rate given and
    has the outputs of the machine fitted here with them (at time 200 the examples alone could not
    tell a learning rate of 0.5 from 1: the signs of the converged directions agree)."""
    from ntkrobust.kernels import adversarial

    data, fitted = machine
    seen, real = [], adversarial.craft_adversarial

    def watched(attacked, x, y, spec, progress=False):
        seen.append(attacked)
        return real(attacked, x, y, spec, progress=progress)

    monkeypatch.setattr(adversarial, "craft_adversarial", watched)
    _run.__wrapped__(True)  # a fresh run, not the cached one
    (attacked,) = seen
    assert (fitted.time, fitted.learning_rate) == (200.0, 0.5) and fitted.ridge > 0  # ρ: 0.1 of the mean eigenvalue
    assert (attacked.time, attacked.ridge, attacked.learning_rate) == (fitted.time, fitted.ridge, fitted.learning_rate)
    np.testing.assert_allclose(
        np.asarray(attacked.logits(data.x_test)), np.asarray(fitted.logits(data.x_test)), rtol=1e-9, atol=1e-12
    )
