"""Audit of ``studies.evaluate.run``: what it hands the attacks and what it makes of their verdicts.

Two independent routes. (1) The attacks are replaced by a recorder that returns verdicts fixed
here: the inputs it is given (the test points, their labels as output indices, eps, the attacks,
the seed, AutoAttack's batch size) are compared with the data and the settings, and the recorded
accuracies and masking flag with counts done by hand. (2) A real PGD-20
run on an untrained net at --seed 3, against ``bridge.evaluation.robust_correct`` called directly
and the clean accuracy counted with a plain torch forward pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkrobust.studies import DataSettings, evaluate
from ntkrobust.studies.evaluate import EvaluateSettings

SEED = 3
DATA = DataSettings(classes=(3, 8), n_train=20, n_test=20, seed=SEED)


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config

    config = model_config("fc1", (1, 8, 8), 2, width=16, seed=1)
    return save_checkpoint(tmp_path_factory.mktemp("evaluate-audit") / "net.pt", build_model(config), config)


def test_the_attacks_get_the_settings_and_their_verdicts_are_counted(net_file, monkeypatch):
    from ntkrobust.bridge import evaluation
    from ntkrobust.bridge.data import task_indices

    data = DATA.load()
    n = data.x_test.shape[0]
    verdicts = {  # clean 0.8, PGD-20 0.6, AutoAttack 0.4: a gap of 0.2
        "clean": np.arange(n) < 0.8 * n,
        "pgd-20": np.arange(n) < 0.6 * n,
        "autoattack": np.arange(n) < 0.4 * n,
    }
    given = {}

    def recorder(model, x, y, **kwargs):
        given.update(x=x.numpy(), y=y.numpy(), **kwargs)
        return {name: verdicts[name] for name in ("clean", *kwargs["attacks"])}

    monkeypatch.setattr(evaluation, "robust_correct", recorder)
    settings = EvaluateSettings(
        nets=(str(net_file),), data=DATA, eps=0.05, attacks=("pgd-20", "autoattack"), masking_gap=0.3,
        batch_size=7, device="cpu",
    )  # fmt: skip
    result = evaluate.run(settings)
    np.testing.assert_array_equal(given["x"], data.x_test)
    np.testing.assert_array_equal(given["y"], task_indices(data.y_test, data.classes))  # 0 and 1, not 3 and 8
    assert (given["eps"], given["channels"], given["seed"], given["batch_size"]) == (0.05, 1, SEED, 7)
    assert tuple(given["attacks"]) == ("pgd-20", "autoattack")
    (row,) = result.record["nets"]
    assert row["accuracy"] == pytest.approx({"clean": 0.8, "pgd-20": 0.6, "autoattack": 0.4, "worst_case": 0.4})
    assert row["masking_suspected"] is False  # 0.6 - 0.4 = 0.2 is within the gap of 0.3 given
    config = result.record["config"]
    assert (config["masking_gap"], config["autoattack_batch_size"], config["eps"]) == (0.3, 7, 0.05)
    assert config["autoattack_attacks"] == evaluation.autoattack_attacks(2)  # the binary task's parts

    settings = EvaluateSettings(nets=(str(net_file),), data=DATA, eps=0.05, attacks=("pgd-20", "autoattack"))
    (row,) = evaluate.run(settings).record["nets"]
    assert row["masking_suspected"] is True  # beyond the standard gap of 0.1


def test_a_real_pgd_run_is_the_bridges_at_the_seed(net_file):
    from ntkrobust.bridge.checkpoint import load_checkpoint
    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.evaluation import accuracies, robust_correct

    settings = EvaluateSettings(nets=(str(net_file),), data=DATA, eps=0.02, attacks=("pgd-20",), device="cpu")
    (row,) = evaluate.run(settings).record["nets"]
    data = DATA.load()
    net = load_checkpoint(net_file)[0].eval()
    x, y = torch.as_tensor(data.x_test).float(), torch.as_tensor(task_indices(data.y_test, data.classes))
    with torch.no_grad():
        clean = (net(x).argmax(1) == y).double().mean().item()
    mine = accuracies(robust_correct(net, x, y, eps=0.02, channels=1, attacks=("pgd-20",), seed=SEED))
    assert row["accuracy"] == pytest.approx(mine, abs=1e-15) and row["accuracy"]["clean"] == pytest.approx(clean)
    assert 0 < row["accuracy"]["pgd-20"] < row["accuracy"]["clean"]  # partly broken: the seed could show


def test_restarts_reach_the_attacks_the_record_and_the_figure(net_file, monkeypatch, tmp_path):
    """``restarts`` goes to ``robust_correct`` as given (1 by default), the record's config keeps
    it, and the figure's subtitle says it where it is more than one. Refused, before any data is
    loaded: 0 restarts, and restarts with AutoAttack alone (its runs have their own)."""
    from ntkrobust import plots
    from ntkrobust.bridge import evaluation
    from ntkrobust.studies._base import StudyError

    given, subtitles = [], []
    monkeypatch.setattr(
        evaluation,
        "robust_correct",
        lambda model, x, y, **kw: given.append(kw["restarts"]) or {"clean": np.ones(len(y), bool), "pgd-20": None},
    )
    monkeypatch.setattr(evaluation, "accuracies", lambda correct: {"clean": 1.0, "pgd-20": 0.5, "worst_case": 0.5})
    monkeypatch.setattr(plots, "robust_accuracy_bars", lambda nets, path, *, subtitle: subtitles.append(subtitle))
    for restarts, attacks in ((4, ("pgd-20",)), (1, ("pgd-20",)), (2, ("pgd-20", "autoattack", "cw-100"))):
        settings = EvaluateSettings(nets=(str(net_file),), data=DATA, attacks=attacks, restarts=restarts)
        result = evaluate.run(settings)
        assert result.record["config"]["restarts"] == restarts
        result.write_files(type("Staged", (), {"path": lambda self, name: tmp_path / name})())
    assert given == [4, 1, 2]
    assert subtitles[0].endswith("; PGD-20: 4 random starts per point")  # the attacks that restarted
    assert "random starts" not in subtitles[1]
    assert subtitles[2].endswith("; PGD-20, CW-100: 2 random starts per point")  # not AutoAttack

    def refused(**kw):
        monkeypatch.setattr(DataSettings, "load", lambda self: pytest.fail("data loaded before the refusal"))
        with pytest.raises(StudyError, match="--restarts") as error:
            evaluate.run(EvaluateSettings(nets=(str(net_file),), data=DATA, **kw))
        return str(error.value)

    assert "AutoAttack has its own" in refused(attacks=("autoattack",), restarts=2)
    assert ">= 1" in refused(restarts=0)
