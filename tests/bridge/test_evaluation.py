"""``bridge.evaluation``: the CW margin loss by hand, the worst case per point, and the gradient
attacks of ``robust_correct`` lowering a trained net's accuracy (the study's test runs AutoAttack
and checks only AutoAttack ≤ PGD-20 ≤ clean, so CW-100 and PGD-100 were free to do nothing)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ntkrobust.bridge.data import load_dataset, task_indices
from ntkrobust.bridge.evaluation import CW_KAPPA, accuracies, cw_margin_loss, robust_correct
from ntkrobust.bridge.models import build_model, model_config

warnings.filterwarnings("ignore", message="CUDA initialization")


def test_cw_margin_loss_by_hand():
    """−Σ_b relu(z_y − max_{j≠y} z_j + κ): a point correct by 2 adds −(2 + κ); one already wrong
    by more than κ adds 0; the largest other logit counts, not the sum or the mean of them."""
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [0.0, 0.0, 60.0], [1.0, 4.0, 4.5]])
    y = torch.tensor([0, 1, 0, 1])
    expected = -((3 - 1 + CW_KAPPA) + (2 - 5 + CW_KAPPA) + 0.0 + (4 - 4.5 + CW_KAPPA))
    assert float(cw_margin_loss(logits, y)) == pytest.approx(expected, abs=1e-5)


def test_worst_case_counts_a_point_only_if_it_survives_every_attack():
    """Two attacks that each leave half the points correct, but different halves: the worst case is
    the share correct under both (1/4), not the smallest accuracy (1/2)."""
    correct = {
        "clean": np.array([True, True, True, True]),
        "pgd-20": np.array([True, True, False, False]),
        "cw-100": np.array([False, True, True, False]),
    }
    assert accuracies(correct) == {"clean": 1.0, "pgd-20": 0.5, "cw-100": 0.5, "worst_case": 0.25}


@pytest.fixture(scope="module")
def trained_digits_net():
    """An fc2 of width 64 on 300 digits, 150 full-batch steps of SGD at lr 0.5: 0.85 clean on the
    60 held-out points."""
    data = load_dataset("digits", n_train=300, n_test=60, seed=0)
    model = build_model(model_config("fc2", data.image_shape, len(data.classes), width=64, seed=0))
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(task_indices(data.y_train, data.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), torch.as_tensor(data.x_test), torch.as_tensor(task_indices(data.y_test, data.classes))


def test_every_gradient_attack_lowers_a_trained_nets_accuracy(trained_digits_net):
    """At ε = 0.1 each of PGD-20, PGD-100 and CW-100 leaves far fewer points correct than clean
    (0.28, 0.28 and 0.23 against 0.85), and none turns a wrong point right: CW's loss with its
    sign flipped (PGD then widens the margin) left every clean-correct point correct."""
    model, x, y = trained_digits_net
    correct = robust_correct(model, x, y, eps=0.1, channels=1, attacks=("pgd-20", "pgd-100", "cw-100"))
    accuracy = accuracies(correct)
    assert accuracy["clean"] > 0.8
    for name in ("pgd-20", "pgd-100", "cw-100"):
        assert accuracy[name] < accuracy["clean"] - 0.2, accuracy
        assert not np.any(correct[name] & ~correct["clean"]), f"{name} made a wrong point right"


class _Saturated(torch.nn.Module):
    """The net's logits × 10⁴: the same predictions, but in float32 the softmax of a confident
    point is one-hot, so its cross-entropy's gradient is exactly 0."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e4 * self.net(x)


def test_cw_finds_what_a_saturated_cross_entropy_hides(trained_digits_net):
    """Why CW-100 stands beside PGD-100: on the saturated net PGD on the cross-entropy leaves
    0.83 of the points correct (its gradients are 0; only its random start moves them), the
    margin loss 0.23, as on the net itself. A CW that took the cross-entropy passed the test
    above."""
    model, x, y = trained_digits_net
    accuracy = accuracies(
        robust_correct(_Saturated(model).eval(), x, y, eps=0.1, channels=1, attacks=("pgd-100", "cw-100"))
    )
    assert accuracy["pgd-100"] > accuracy["clean"] - 0.1
    assert accuracy["cw-100"] < accuracy["clean"] - 0.4, accuracy


def test_pgd_shows_its_steps_as_a_bar_when_asked_and_finds_the_same_examples(monkeypatch):
    """``robust_correct(progress=True)`` (a terminal) shows PGD's and CW's steps as bars, one per
    batch; without it they are timed lines. The verdicts are the same either way."""
    import importlib

    pgd_module = importlib.import_module("ntkrobust.attacks.pgd")  # the package's ``pgd`` is the function
    shown = []
    real = pgd_module.progress_iter

    def recorded(items, desc, unit, *, show, leave=False):
        shown.append((desc, unit, show))
        return real(items, desc, unit, show=False, leave=leave)  # no bar on the test's stderr

    monkeypatch.setattr(pgd_module, "progress_iter", recorded)
    net = build_model(model_config("fc1", (1, 8, 8), 10, width=8)).eval()
    data = load_dataset("digits", n_train=20, n_test=300)
    x, y = torch.as_tensor(data.x_test).float(), torch.as_tensor(task_indices(data.y_test, data.classes))
    quiet = robust_correct(net, x, y, eps=0.1, channels=1, attacks=("pgd-20", "cw-100"))
    assert shown == [("PGD", "step", False)] * 4  # two attacks, two batches of 256 each
    shown.clear()
    barred = robust_correct(net, x, y, eps=0.1, channels=1, attacks=("pgd-20", "cw-100"), progress=True)
    assert shown == [("PGD", "step", True)] * 4
    assert all(np.array_equal(quiet[name], barred[name]) for name in quiet)
