"""``studies.attack.run(settings)``: the NTK machine under its own black-box examples (TK eq. 7-8),
the files its result saves, its summary, and the settings it refuses before any compute."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.attacks import ThreatModel, check_adversarial
from ntkrobust.studies import DataSettings, MachineSettings, ThreatSettings, attack
from ntkrobust.studies.attack import AttackSettings

SMALL = DataSettings(n_train=150, n_test=40)
NO_FIT = ("ntkrobust.studies._common.MachineSettings.fit",)


@pytest.fixture(scope="module")
def pgd():
    """PGD of 5 steps of the standard 0.01 against the fc2 machine, eps 0.3 (MNIST-like grey)."""
    return attack.run(AttackSettings(data=SMALL, method="pgd", threat=ThreatSettings(steps=5)))


def test_pgd_lowers_the_accuracy_of_a_good_machine(pgd):
    record = pgd.record
    assert record["command"] == "attack"
    assert 0.85 <= record["clean_accuracy"] <= 1.0
    assert record["robust_accuracy"] < record["clean_accuracy"]
    config = record["config"]
    assert config["arch"] == "fc2" and config["method"] == "pgd" and config["time"] == math.inf
    assert config["eps"] == 0.3 and config["step"] == 0.01 and config["steps"] == 5  # MNIST-like grey defaults
    assert (config["n_train"], config["n_test"], config["classes"]) == (150, 40, list(range(10)))
    assert record["kernel"]["outputs"] == 10 and record["kernel"]["gram_cache"] in ("miss", "hit")
    assert 0 < record["perturbation"]["linf_max"] <= 0.3 + 1e-6
    assert record["seed"] == 0 and record["versions"]["neural-tangents"] == "0.6.5"
    assert record["argv"] is None  # run from Python


def test_pgd_that_cannot_reach_eps_is_warned_about(pgd):
    (warning,) = pgd.record["warnings"]
    assert "PGD can move at most step*steps = 0.05" in warning and "less than eps = 0.3" in warning


def test_save_writes_strict_json_and_the_examples(pgd, tmp_path):
    out = tmp_path / "run"
    assert pgd.save(out) == out
    assert sorted(p.name for p in out.iterdir()) == ["adversarial.npz", "results.json"]
    saved = json.loads((out / "results.json").read_text())  # strict JSON: no Infinity/NaN literals
    assert saved["config"]["time"] == "inf"
    assert saved["robust_accuracy"] == pgd.record["robust_accuracy"] and saved["warnings"] == pgd.record["warnings"]
    with np.load(out / "adversarial.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["x", "x_adv", "y"]
        x, x_adv, y = f["x"], f["x_adv"], f["y"]
    assert x.shape == x_adv.shape == (40, 1, 8, 8) and x_adv.dtype == np.float32 and y.dtype == np.int64
    check_adversarial(x_adv, x, ThreatModel("linf", 0.3))
    assert not list(tmp_path.glob(".*partial"))  # staging folder cleaned up


def test_summary_names_the_machine_the_attack_and_both_accuracies(pgd):
    record = pgd.record
    assert pgd.summary() == (
        f"fc2 NTK machine on digits (150 train, 40 test): clean accuracy {record['clean_accuracy']:.3f}, "
        f"pgd linf eps=0.3: robust accuracy {record['robust_accuracy']:.3f}"
    )


@pytest.mark.parametrize("method", ["fgsm", "taylor-l1", "taylor-sum"])
def test_methods_on_a_binary_task(method):
    data = DataSettings(classes=(3, 8), n_train=150, n_test=40)
    record = attack.run(AttackSettings(data=data, method=method, threat=ThreatSettings(eps=0.2))).record
    assert record["config"]["classes"] == [3, 8] and record["kernel"]["outputs"] == 1
    assert record["config"]["method"] == method and record["config"]["eps"] == 0.2
    assert record["robust_accuracy"] < record["clean_accuracy"]


def test_two_layer_uses_the_closed_form_gradient_and_the_cache(tmp_path):
    def run(cache: bool):
        machine = MachineSettings(cache_dir=tmp_path / "cache", cache=cache)
        settings = AttackSettings(data=SMALL, arch="two-layer", machine=machine, threat=ThreatSettings(norm="l2"))
        return attack.run(settings).record

    first, second, uncached = run(True), run(True), run(False)
    assert first["config"]["gradient"] == "closed-form" and first["config"]["eps"] == 2.0  # the l2 standard
    assert [r["kernel"]["gram_cache"] for r in (first, second, uncached)] == ["miss", "hit", "off"]
    assert first["robust_accuracy"] == second["robust_accuracy"] == uncached["robust_accuracy"]
    # the accuracies alone cannot tell a wrong cached Gram (clean 1.0, robust 0.0 at ε 2.0 here):
    # its conditioning and the attack it steers can
    assert first["kernel"]["condition_number"] == second["kernel"]["condition_number"]
    assert first["kernel"]["condition_number"] == uncached["kernel"]["condition_number"]
    assert first["perturbation"] == second["perturbation"] == uncached["perturbation"]


@pytest.fixture
def nan_npz(tmp_path):
    path = tmp_path / "nan.npz"
    x = np.full((10, 1, 4, 4), np.nan, np.float32)
    np.savez(path, x_train=x, y_train=np.arange(10) % 2, x_test=x, y_test=np.arange(10) % 2)
    return path


@pytest.fixture
def misshapen_npz(tmp_path):
    path = tmp_path / "shape.npz"
    np.savez(path, x_train=np.zeros((10, 4)), y_train=np.arange(10) % 2, x_test=np.zeros((3, 4)), y_test=np.arange(3))
    return path


#: AttackSettings fields (the data as DataSettings fields) -> the refusal
BAD = {
    "unknown dataset": ({"data": "imagenet"}, "unknown dataset"),
    "missing data root": ({"data": "mnist", "data_root": Path("/nonexistent/mnist")}, "does not exist"),
    "mnist without root": ({"data": "mnist"}, "needs --data-root"),
    "class absent": ({"classes": (3, 12)}, "absent"),
    "one class": ({"classes": (3,)}, "at least two distinct classes"),
    "subset too large": ({"n_train": 5000}, "only 1198"),
    "zero subset": ({"n_test": 0}, "--n-test must be a whole number >= 1, got 0"),
    "negative eps": ({"threat": ThreatSettings(eps=-0.1)}, "--eps must be"),
    "eps in 0-255 units": ({"threat": ThreatSettings(eps=8.0)}, "did you mean 8/255"),
    # beyond the box's l2 diameter (8 for 8x8 digits) every image is within reach; 1e6 was accepted
    "l2 eps beyond the box": (
        {"threat": ThreatSettings(norm="l2", eps=1e6)},
        "--eps 1e+06 exceeds 8, the l2 diameter of the [0, 1] box of 1x8x8 images (pixel units)",
    ),
    "l2 eps in 0-255 units": ({"threat": ThreatSettings(norm="l2", eps=128.0)}, "did you mean 128/255?"),
    "negative time": ({"machine": MachineSettings(time=-1.0)}, "--time must be"),
    "negative ridge": ({"machine": MachineSettings(ridge=-1.0)}, "--ridge must be"),
    "closed form for fc2": ({"machine": MachineSettings(gradient="closed-form")}, "only for two-layer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_settings_are_refused_before_the_machine_is_fit(case, refuses):
    changes, message = BAD[case]
    data_fields = {key: value for key, value in changes.items() if key not in ("threat", "machine")}
    settings = AttackSettings(
        data=DataSettings(**{"n_train": 150, "n_test": 40, **data_fields}),
        **{key: value for key, value in changes.items() if key in ("threat", "machine")},
    )
    refuses(attack, settings, message, compute=NO_FIT)


@pytest.mark.parametrize("fixture, message", [("nan_npz", "NaN"), ("misshapen_npz", "NCHW or NHW")])
def test_bad_npz_is_refused(fixture, message, request, refuses):
    path = request.getfixturevalue(fixture)
    refuses(attack, AttackSettings(data=DataSettings(data=str(path))), message, compute=NO_FIT)
