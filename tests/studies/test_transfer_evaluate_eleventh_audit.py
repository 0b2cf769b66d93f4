"""Eleventh audit of ``evaluate`` / ``transfer`` and ``bridge.evaluation``: what the mutation audit
of round 11 found unchecked.

Independent routes. AutoAttack's configuration is read off the attack object by a spy in place of
its run, against the standard version as README ("Robust accuracy") and REFERENCE.md describe it
(Croce & Hein's reference settings: one restart of APGD and FAB, 100 iterations, Square with 5000
queries). The masking flag and the one-output net's two logits are checked on values written out
here. ``evaluate``'s rows are checked with a recorder in place of the attacks that returns each
net's own clean verdicts (a plain torch forward pass) and a fixed attack verdict, on two nets whose
accuracies differ: a constant net (always class 0: exactly half of the class-balanced points) and
an untrained fc1. ``transfer``'s stored config is checked against settings all off their defaults,
with the expensive steps replaced by cheap stand-ins.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ntkrobust.bridge.evaluation import masking_suspected, robust_correct
from ntkrobust.studies import DataSettings, evaluate
from ntkrobust.studies.evaluate import EvaluateSettings

warnings.filterwarnings("ignore", message="CUDA initialization")

SEED = 4
DATA = DataSettings(classes=(3, 8), n_train=20, n_test=20, seed=SEED)


def _checkpoint(path, classes: int, seed: int, constant: bool = False):
    """An fc1 checkpoint of width 16 on 8x8 digits; ``constant``: every weight zero and the last
    bias favouring output 0, so the net answers output 0 for every input."""
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config

    config = model_config("fc1", (1, 8, 8), classes, width=16, seed=seed)
    net = build_model(config)
    if constant:
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.zero_()
            net[3].bias[0] = 1.0
    return save_checkpoint(path, net, config)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate-eleventh")
    return _checkpoint(folder / "random.pt", 2, seed=1), _checkpoint(folder / "constant.pt", 2, 0, constant=True)


class _Spy:
    """Stands in for AutoAttack's ``run_standard_evaluation``: records the attack's settings and
    the batch size it is given, returns the points unchanged."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def __call__(self, attack, x, y, batch_size=250):
        self.seen.append(
            {
                "version": attack.version,
                "norm": attack.norm,
                "restarts": (attack.apgd.n_restarts, attack.apgd_targeted.n_restarts, attack.fab.n_restarts),
                "iterations": (attack.apgd.n_iter, attack.apgd_targeted.n_iter, attack.fab.n_iter),
                "queries": attack.square.n_queries,
                "batch_size": batch_size,
            }
        )
        return x.clone(), y.clone()


def test_autoattack_runs_the_standard_version_with_the_given_batch_size(monkeypatch):
    """The standard version (not "plus", whose APGD-CE and FAB restart five times): one restart
    of APGD-CE, APGD-T and FAB-T, 100 iterations each, Square with 5000 queries, ℓ∞; and each run
    of at most ``batch_size`` points is handed that batch size (400 here: with AutoAttack's default
    250 a run of 400 points would split in two, each reseeded alike)."""
    from pyautoattack import AutoAttack

    spy = _Spy()
    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", lambda self, x, y, **given: spy(self, x, y, **given))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    robust_correct(net, x, torch.arange(6) % 4, eps=0.03, channels=1, attacks=("autoattack",), batch_size=400)
    (seen,) = spy.seen
    assert seen == {
        "version": "standard",
        "norm": "Linf",
        "restarts": (1, 1, 1),
        "iterations": (100, 100, 100),
        "queries": 5000,
        "batch_size": 400,
    }


def test_masking_counts_cw_100_among_the_gradient_attacks():
    """CW-100 is one of the gradient attacks AutoAttack is compared with: CW-100 alone at 0.6
    against AutoAttack at 0.4 is flagged; beside PGD-20 at 0.5, CW-100 at 0.35 is the strongest
    gradient attack, and AutoAttack at 0.3 is within 0.1 of it (not flagged, though 0.2 below
    PGD-20)."""
    assert masking_suspected({"cw-100": 0.6, "autoattack": 0.4})
    assert not masking_suspected({"pgd-20": 0.5, "cw-100": 0.35, "autoattack": 0.3})
    assert masking_suspected({"pgd-20": 0.5, "autoattack": 0.3})  # the same without CW-100


def test_a_one_output_net_is_attacked_through_logits_of_the_same_softmax():
    """(−f/2, f/2): the second logit's softmax is sigmoid(f), the one-output net's probability of
    the second class, and the logit difference is f itself (the CW margin of the net)."""
    from ntkrobust.bridge.evaluation import _TwoLogits

    f = torch.tensor([[-3.0], [-0.5], [0.0], [0.25], [7.0]], dtype=torch.float64)
    logits = _TwoLogits(torch.nn.Identity())(f)
    torch.testing.assert_close(logits.softmax(1)[:, 1], torch.sigmoid(f[:, 0]), rtol=0, atol=1e-15)
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], f[:, 0], rtol=0, atol=0)


def _recorder(given: list):
    """In place of ``robust_correct``: each net's clean verdicts by a plain forward pass, and
    under every attack the clean verdicts of the first half of the points only."""

    def record(model, x, y, **kwargs):
        given.append({"model": model, "x": x, "y": y, **kwargs})
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).numpy()
        first_half = np.arange(len(y)) < len(y) // 2
        return {"clean": clean, **{name: clean & first_half for name in kwargs["attacks"]}}

    return record


def test_each_net_is_evaluated_and_recorded_under_its_own_label(nets, monkeypatch):
    """Two nets, a random fc1 and a constant one (class 0 everywhere, so exactly half of the
    balanced test points): each row carries its own net's label, file and accuracies, counted by
    hand with a plain forward pass of the net loaded here."""
    from ntkrobust.bridge import evaluation
    from ntkrobust.bridge.checkpoint import load_checkpoint
    from ntkrobust.bridge.data import task_indices

    given: list = []
    monkeypatch.setattr(evaluation, "robust_correct", _recorder(given))
    settings = EvaluateSettings(nets=tuple(str(p) for p in nets), data=DATA, eps=0.05, attacks=("pgd-20",))
    rows = evaluate.run(settings).record["nets"]
    data = DATA.load()
    x, y = torch.as_tensor(data.x_test).float(), torch.as_tensor(task_indices(data.y_test, data.classes))
    half = (torch.arange(len(y)) < len(y) // 2).numpy()
    expected = []
    for path in nets:
        net = load_checkpoint(path)[0].eval()
        with torch.no_grad():
            clean = (net(x).argmax(1) == y).numpy()
        expected.append({"clean": clean.mean(), "pgd-20": (clean & half).mean(), "worst_case": (clean & half).mean()})
    assert expected[1]["clean"] == 0.5 and expected[0]["clean"] != 0.5  # the two rows can be told apart
    assert [r["label"] for r in rows] == ["random", "constant"]
    assert [r["net"]["path"] for r in rows] == [str(p) for p in nets]
    for row, accuracy in zip(rows, expected, strict=True):
        assert row["accuracy"] == pytest.approx(accuracy, abs=1e-15)
    assert len(given) == 2 and given[0]["model"] is not given[1]["model"]


def test_the_default_eps_is_the_standard_grey_image_radius_and_the_config_says_what_ran(nets, monkeypatch):
    """Without --eps the attacks get ℓ∞ ε = 0.3 (REFERENCE.md: MNIST's standard threat; digits
    are grey images), and the config records it; with AutoAttack not among the attacks, no
    AutoAttack parts, batch size or masking gap are recorded (None: nothing of them ran)."""
    from ntkrobust.bridge import evaluation

    given: list = []
    monkeypatch.setattr(evaluation, "robust_correct", _recorder(given))
    config = evaluate.run(EvaluateSettings(nets=(str(nets[0]),), data=DATA, attacks=("pgd-20",))).record["config"]
    assert given[0]["eps"] == 0.3 and config["eps"] == 0.3 and config["norm"] == "linf"
    assert config["attacks"] == ["pgd-20"]
    assert (config["autoattack_attacks"], config["autoattack_batch_size"], config["masking_gap"]) == (None, None, None)


def test_a_three_class_task_records_apgd_dlr_in_place_of_apgd_t(tmp_path, monkeypatch):
    """README: with three classes the untargeted APGD-DLR takes APGD-T's place (its targeted loss
    needs a fourth logit); the config lists the parts for the task's classes, not the binary ones."""
    from ntkrobust.bridge import evaluation

    monkeypatch.setattr(evaluation, "robust_correct", _recorder([]))
    path = _checkpoint(tmp_path / "three.pt", 3, seed=0)
    three = DataSettings(classes=(0, 1, 2), n_train=30, n_test=30, seed=SEED)
    settings = EvaluateSettings(nets=(str(path),), data=three, eps=0.05, attacks=("pgd-20", "autoattack"))
    config = evaluate.run(settings).record["config"]
    assert config["autoattack_attacks"] == ["apgd-ce", "apgd-dlr", "fab-t", "square"]


def test_a_masking_gap_of_zero_flags_any_shortfall(nets, monkeypatch):
    """--masking-gap 0 is allowed (a finite number >= 0) and recorded; AutoAttack any amount below
    PGD-20 is then flagged, equal accuracies are not (the recorder's verdicts are equal here)."""
    from ntkrobust.bridge import evaluation

    monkeypatch.setattr(evaluation, "robust_correct", _recorder([]))
    settings = EvaluateSettings(
        nets=(str(nets[0]),), data=DATA, eps=0.05, attacks=("pgd-20", "autoattack"), masking_gap=0.0
    )
    (row,) = evaluate.run(settings).record["nets"]
    assert row["accuracy"]["pgd-20"] == row["accuracy"]["autoattack"] and row["masking_suspected"] is False
    assert evaluate.run(settings).record["config"]["masking_gap"] == 0.0
    assert masking_suspected({"pgd-20": 0.5, "autoattack": 0.5 - 1e-9}, gap=0.0)


def test_transfer_records_its_settings_and_an_undefined_tau_as_none(tmp_path, monkeypatch):
    """A random fc1 and a constant target (class 0 for every input, at epoch 3) attacked by an eNTK
    surrogate alone. No attack can move the constant net, so its every accuracy is exactly 1/2
    (clean, own white-box, random sign, every source's) and its τ = (clean − other) / (clean − own)
    is 0/0: recorded as None (random sign) and NaN in its matrix row, never the random net's row;
    the summary gives each attack's own accuracy. The config names what ran: no analytic NTK
    machine (with --surrogate and no --kernel-arch there is none, not the default fc2), the
    surrogate, --trust-model-code, the machine's settings (their defaults, recorded all the same),
    the data's classes and test points. The surrogate's fit
    (JAX, seconds of imports) is replaced by a stand-in whose examples are the test points."""
    from ntkrobust.studies import ThreatSettings, transfer
    from ntkrobust.studies.transfer import TransferSettings

    def stand_in(settings, config, fit_data, attack, device, progress):
        return fit_data.x_test.copy(), {"model": config.to_dict(), "networks": settings.surrogate_nets}

    monkeypatch.setattr(transfer, "_surrogate_examples", stand_in)

    target = _checkpoint(tmp_path / "constant.pt", 2, 0, constant=True)
    torch.save(torch.load(target, weights_only=True) | {"epoch": 3}, target)  # a run's epoch 3
    settings = TransferSettings(
        target=(str(_checkpoint(tmp_path / "random.pt", 2, seed=1)), str(target)),
        data=DATA,
        surrogate=("fc1:8",),
        surrogate_n=12,
        trust_model_code=True,
        device="cpu",
        threat=ThreatSettings(eps=0.2),
    )
    result = transfer.run(settings)
    record = result.record
    random, row = record["targets"]
    assert row["epoch"] == 3 and random["epoch"] is None
    accuracies = [row["clean_accuracy"], row["white_box_accuracy"], row["random_accuracy"]]
    assert accuracies == [0.5, 0.5, 0.5] and set(row["transfer_accuracy"].values()) == {0.5}
    assert row["random_transferability"] is None
    assert [s["name"] for s in record["sources"]] == ["eNTK fc1:8", "random", "constant"]
    assert row["ntk_attack_accuracy"] == {}
    # each target's own τ row in the matrix: the random net's τ of the unmoved stand-in examples is
    # (clean − clean) / (clean − own) = 0 and of its own examples 1; the constant net's are all 0/0
    assert random["clean_accuracy"] > random["white_box_accuracy"]  # τ is defined for the random net
    tau = np.asarray(record["matrix"]["transferability"], dtype=float)
    np.testing.assert_allclose(tau[0, :2], [0.0, 1.0], rtol=0, atol=1e-12)
    assert np.isnan(tau[1]).all() and record["matrix"]["rows"] == ["random", "constant"]
    own = f"own fgsm {random['white_box_accuracy']:.3f}, random sign {random['random_accuracy']:.3f}"
    assert own in result.summary().splitlines()[0]  # the own attack's accuracy, not the clean one
    config = record["config"]
    assert config["kernel_archs"] == [] and config["surrogates"] == ["fc1:8"] and config["trust_model_code"] is True
    assert {key: config[key] for key in ("time", "ridge", "learning_rate", "gradient", "precision")} == {
        "time": math.inf,
        "ridge": 0.0,
        "learning_rate": 1.0,
        "gradient": "auto",
        "precision": "float64",
    }
    assert config["classes"] == [3, 8] and config["n_test"] == 20
