"""``evaluate``: RobustBench's attacks on trained digits nets, and the gradient-masking flag."""

from __future__ import annotations

import json

import pytest
import torch

from ntkrobust.studies import DataSettings
from ntkrobust.studies.evaluate import EvaluateSettings, run

DIGITS = DataSettings(n_train=300, n_test=60)
SMALL = DataSettings(n_train=300, n_test=30)  # the first 30 of the same test points: AutoAttack's time
NO_ATTACKS = ("ntkrobust.bridge.evaluation.robust_correct",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_training):
    from ntkrobust.studies import train

    out = tmp_path_factory.mktemp("evaluate") / "run"
    train.run(small_training(out, data=DIGITS, width=64, mode="standard", epochs=15, track_kernel=0, lr=0.5))
    return out / "checkpoints" / "epoch_015.pt"  # about 0.95 clean


def test_autoattack_is_at_least_as_strong_as_pgd(trained, tmp_path):
    result = run(EvaluateSettings(nets=(str(trained),), data=SMALL, eps=0.1))
    result.save(tmp_path / "out")
    (net,) = json.loads((tmp_path / "out" / "results.json").read_text())["nets"]
    accuracy = net["accuracy"]
    assert set(accuracy) == {"clean", "pgd-20", "pgd-100", "cw-100", "autoattack", "worst_case"}
    assert accuracy["clean"] > 0.5  # a trained net, so the attacks have something to take
    assert accuracy["autoattack"] <= accuracy["pgd-20"] <= accuracy["clean"]
    assert accuracy["worst_case"] <= min(accuracy[name] for name in ("pgd-20", "pgd-100", "cw-100", "autoattack"))
    assert not net["masking_suspected"]
    assert "autoattack" in result.summary()
    assert (tmp_path / "out" / "robust_accuracy.png").stat().st_size > 8000  # the figure beside the record


class _Rounding(torch.nn.Module):
    """A net that rounds its input to 1/4 steps first: its input gradient is 0 everywhere."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 4) / 4)


def test_a_net_that_masks_its_gradients_is_flagged(trained, tmp_path):
    from ntkrobust.bridge.checkpoint import load_checkpoint

    net, _, _ = load_checkpoint(trained)
    scripted = tmp_path / "rounding.pt"
    torch.jit.save(torch.jit.script(_Rounding(net).eval()), scripted)
    attacks = ("pgd-20", "autoattack")
    settings = EvaluateSettings(nets=(str(scripted),), data=SMALL, eps=0.3, attacks=attacks, trust_model_code=True)
    result = run(settings)
    (row,) = result.record["nets"]
    accuracy = row["accuracy"]
    # PGD finds no gradient to follow; Square, which needs none, does not care
    assert accuracy["pgd-20"] - accuracy["autoattack"] > 0.1 and row["masking_suspected"]
    assert "gradient masking suspected" in result.summary()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attacks": ("pgd-7",)}, "--attacks 'pgd-7'"),
        ({"attacks": ("pgd20",)}, "--attacks 'pgd20': choose from"),  # a newcomer's spelling: the hint below
        ({"attacks": ("PGD20",)}, "(did you mean pgd-20?)"),
        ({"attacks": ("autoatack",)}, "(did you mean autoattack?)"),
        ({"eps": 2.0}, "--eps must lie in (0, 1]"),
        ({"nets": ("nothing.pt",)}, "does not exist"),
    ],
)
def test_bad_settings_are_refused_before_any_attack(changes, message, refuses, trained):
    settings = EvaluateSettings(**{"nets": (str(trained),), "data": DIGITS, **changes})
    from ntkrobust.studies import evaluate

    refuses(evaluate, settings, message, compute=NO_ATTACKS)


def test_a_net_whose_outputs_do_not_match_the_classes_is_refused(trained, refuses):
    from ntkrobust.studies import evaluate

    three = DataSettings(classes=(0, 1, 2), n_train=60, n_test=30)
    refuses(evaluate, EvaluateSettings(nets=(str(trained),), data=three), "the task needs", compute=NO_ATTACKS)


def test_the_command_lines_attack_names_are_the_bridges():
    from ntkrobust.bridge import evaluation
    from ntkrobust.studies import evaluate

    assert evaluate.EVALUATION_ATTACKS == evaluation.EVALUATION_ATTACKS  # the CLI must not import torch


def test_autoattack_runs_only_the_parts_it_is_given(trained, caplog):
    """``benchmarks/autoattack_seeds.py`` runs single parts of AutoAttack (Square alone)."""
    from ntkrobust.bridge.checkpoint import load_checkpoint
    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.evaluation import robust_correct

    net = load_checkpoint(trained)[0].eval()
    data = SMALL.load()
    x, y = torch.as_tensor(data.x_test).float(), torch.as_tensor(task_indices(data.y_test, data.classes)).long()
    with caplog.at_level("INFO", logger="ntkrobust"):
        kept = robust_correct(net, x, y, eps=0.1, channels=1, attacks=("autoattack",), autoattack_parts=["apgd-ce"])
    ran = {m.split("after ")[1].split(":")[0] for m in caplog.messages if "robust accuracy after" in m}
    assert ran == {"APGD-CE"}  # with the standard parts: APGD-T, FAB-T and Square after it
    assert (kept["autoattack"] <= kept["clean"]).all()
    assert kept["autoattack"].mean() < kept["clean"].mean()  # it attacked: some correct points fell
