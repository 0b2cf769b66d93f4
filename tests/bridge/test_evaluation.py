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


def test_restart_seeds_start_at_the_seed_and_meet_no_other_seed():
    """Restart 0 is the plain evaluation's seed; the others are distinct from each other and from
    every small seed a user gives (seed + restart would hand seed 1's starts to seed 0's restart
    1), and below 2**63 (the largest seed taken)."""
    from ntkrobust.bridge.evaluation import restart_seed

    assert [restart_seed(seed, 0) for seed in (0, 7, 2**63 - 1)] == [0, 7, 2**63 - 1]
    later = {restart_seed(seed, r) for seed in range(50) for r in range(1, 20)}
    assert len(later) == 50 * 19
    assert not later & set(range(100_000))
    assert all(0 <= s < 2**63 for s in later)
    assert restart_seed(3, 2) == restart_seed(3, 2)  # a function of (seed, restart) alone
    # pinned: another rule (the order of the entropy, 32-bit words) would change recorded accuracies
    assert [restart_seed(0, 1), restart_seed(5, 2), restart_seed(2**63 - 1, 3)] == [
        5836529245451711556, 4160164373342109173, 2542839430063486525,
    ]  # fmt: skip


def test_restarts_count_a_point_only_if_every_start_fails(trained_digits_net):
    """``restarts=3``: PGD-20 and CW-100 each run from the starts of ``restart_seed(5, r)``, r = 0,
    1, 2, and a point is robust only if clean-correct and correct after all three; computed here
    by hand from ``adversarial_examples`` on every point in every restart (the independent route:
    ``robust_correct`` attacks only the points still standing). ``restarts=1`` is the plain
    evaluation, and ``on_attack`` reports the accuracy under the restarts so far after each."""
    from ntkrobust.attacks import evaluation_schedule
    from ntkrobust.bridge.adversarial import adversarial_examples, predict
    from ntkrobust.bridge.evaluation import restart_seed

    model, x, y = trained_digits_net
    eps, attacks = 0.06, ("pgd-20", "cw-100")
    said: list[tuple[str, float]] = []
    correct = robust_correct(
        model, x, y, eps=eps, channels=1, attacks=attacks, seed=5, restarts=3,
        on_attack=lambda name, accuracy: said.append((name, accuracy)),
    )  # fmt: skip
    clean = (predict(model, x) == y).numpy()
    for name, loss in (("pgd-20", None), ("cw-100", cw_margin_loss)):
        step, steps = evaluation_schedule(1, eps, int(name.split("-")[1]))
        expected = clean.copy()
        for r in range(3):
            x_adv = adversarial_examples(
                model, x, y, method="pgd", eps=eps, step=step, steps=steps, seed=restart_seed(5, r), loss=loss
            )
            expected &= (predict(model, x_adv) == y).numpy()
        np.testing.assert_array_equal(correct[name], expected)
    assert [name for name, _ in said] == [
        "pgd-20 restart 1/3", "pgd-20 restart 2/3", "pgd-20", "cw-100 restart 1/3", "cw-100 restart 2/3", "cw-100",
    ]  # fmt: skip
    for first in (0, 3):  # never rising: each restart can only take points away
        assert said[first][1] >= said[first + 1][1] >= said[first + 2][1]
    once = robust_correct(model, x, y, eps=eps, channels=1, attacks=attacks, seed=5)
    plain = robust_correct(model, x, y, eps=eps, channels=1, attacks=attacks, seed=5, restarts=1)
    assert all(np.array_equal(once[name], plain[name]) for name in once)
    np.testing.assert_array_equal(once["pgd-20"] & correct["pgd-20"], correct["pgd-20"])  # a subset
    assert correct["cw-100"].sum() < once["cw-100"].sum()  # here the later starts take one more point
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        robust_correct(model, x, y, eps=eps, channels=1, attacks=attacks, restarts=0)
