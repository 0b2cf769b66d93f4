"""Audit of ``bridge.evaluation`` against closed forms.

Independent route: a linear binary classifier, whose worst ℓ∞ perturbation is known exactly.
With margin m(x) = (w_y − w_o)·x + (b_y − b_o) (or (2y − 1)·f(x) for a one-output net f = w·x + b)
the smallest margin over the ball of radius ε is m(x) − ε‖w_y − w_o‖₁, reached at the corner
x − ε·sign(w_y − w_o), which stays in [0, 1] for points in [ε, 1 − ε]. Both the cross-entropy and
the CW margin loss have input gradients of that fixed sign (the logits are kept small, so the
softmax never saturates), and PGD moves 2.5ε in total: every gradient attack must end at the
corner, so its per-point verdict is the closed form's, exactly. Points within 0.05 of either
threshold are left out, so float32 rounding cannot flip a verdict. The worst case, the masking
flag and the CW loss are checked by hand on small tables; AutoAttack's configuration by a spy.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ntkrobust.bridge.evaluation import (
    MASKING_GAP,
    accuracies,
    autoattack_attacks,
    cw_margin_loss,
    masking_suspected,
    robust_correct,
)

warnings.filterwarnings("ignore", message="CUDA initialization")

EPS = 0.05
GRADIENT_ATTACKS = ("pgd-20", "pgd-100", "cw-100")


def _points(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return EPS + (1 - 2 * EPS) * torch.rand(n, 1, 4, 4, generator=generator)


def _separable_case(outputs: int, seed: int = 0, n: int = 80):
    """A linear net with ``outputs`` (1 or 2) outputs, points in [ε, 1 − ε], labels, and the
    closed-form verdicts (clean, robust); points within 0.05 of a threshold dropped."""
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(16, outputs)
    with torch.no_grad():
        model.weight.copy_(0.5 * torch.randn(outputs, 16, generator=generator))
        model.bias.zero_()
        direction = model.weight[0] if outputs == 1 else model.weight[1] - model.weight[0]
        model.bias[-1] = -float(direction.sum()) / 2  # the boundary through the centre of the box
    net = torch.nn.Sequential(torch.nn.Flatten(), model)
    x = _points(n, seed + 1)
    y = torch.randint(0, 2, (n,), generator=generator)
    w = direction.double()
    f = x.flatten(1).double() @ w + (model.bias[-1] if outputs == 1 else model.bias[1] - model.bias[0]).double()
    margin = torch.where(y == 1, f, -f)  # (2y − 1)·f: positive when correct
    worst = margin - EPS * w.abs().sum()
    keep = (margin.abs() > 0.05) & (worst.abs() > 0.05)
    x, y, margin, worst = x[keep], y[keep], margin[keep], worst[keep]
    clean, robust = (margin > 0).numpy(), (worst > 0).numpy()
    assert 10 < clean.sum() < len(clean) and 3 < robust.sum() < clean.sum()  # every verdict occurs
    return net.eval(), x, y, clean, robust


@pytest.mark.parametrize("outputs", [2, 1], ids=["two-logits", "one-output"])
def test_gradient_attacks_reach_the_closed_form_worst_case_of_a_linear_net(outputs):
    """PGD-20, PGD-100 and CW-100 each leave correct exactly the points whose margin exceeds
    ε‖w‖₁; an attack at ε/2, with one step, or with a tenth of the step leaves more; a one-output
    net read with its logits swapped gets the clean verdicts backwards."""
    net, x, y, clean, robust = _separable_case(outputs)
    correct = robust_correct(net, x, y, eps=EPS, channels=1, attacks=GRADIENT_ATTACKS)
    np.testing.assert_array_equal(correct["clean"], clean)
    for name in GRADIENT_ATTACKS:
        np.testing.assert_array_equal(correct[name], robust, err_msg=name)
    accuracy = accuracies(correct)
    assert accuracy["worst_case"] == pytest.approx(robust.mean())
    assert accuracy["clean"] == pytest.approx(clean.mean())


def test_autoattack_reaches_the_closed_form_worst_case_in_every_batch():
    """APGD-CE on the linear net, in batches of 7 (the last one partial): the verdict of every
    point, the last batch's included, is the closed form's."""
    net, x, y, clean, robust = _separable_case(2, seed=3, n=40)
    correct = robust_correct(
        net, x, y, eps=EPS, channels=1, attacks=("autoattack",), batch_size=7, autoattack_parts=["apgd-ce"]
    )
    assert len(x) % 7 != 0
    np.testing.assert_array_equal(correct["clean"], clean)
    np.testing.assert_array_equal(correct["autoattack"], robust)


class _Recorder:
    """Stands in for AutoAttack's run: records its configuration, returns the points unchanged."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, attack, x, y):
        self.calls.append(
            {
                "attacks": list(attack.attacks_to_run),
                "targets": (attack.apgd_targeted.n_target_classes, attack.fab.n_target_classes),
                "seed": attack.seed,
                "rows": x.shape[0],
                "eps": attack.epsilon,
            }
        )
        return x.clone(), y.clone()


@pytest.mark.parametrize(
    ("classes", "attacks", "targets"),
    [
        (2, ["apgd-ce", "fab", "square"], 1),
        (3, ["apgd-ce", "apgd-dlr", "fab-t", "square"], 2),
        (4, ["apgd-ce", "apgd-t", "fab-t", "square"], 3),
        (12, ["apgd-ce", "apgd-t", "fab-t", "square"], 9),
    ],
)
def test_autoattack_is_configured_per_task_and_seeded_per_batch(monkeypatch, classes, attacks, targets):
    """As many target classes as wrong classes (at most 9); APGD-DLR for 3 classes; each batch
    seeded with seed + its first row; ε passed through; an unchanged x_adv leaves the clean
    verdicts (the verdict is taken on what AutoAttack returns)."""
    from pyautoattack import AutoAttack

    recorder = _Recorder()
    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", lambda self, x, y, batch_size=250: recorder(self, x, y))
    assert autoattack_attacks(classes) == attacks
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, classes)).eval()
    x = _points(10, 0)
    y = torch.arange(10) % classes
    correct = robust_correct(net, x, y, eps=0.03, channels=1, attacks=("autoattack",), seed=5, batch_size=4)
    assert [c["seed"] for c in recorder.calls] == [5, 9, 13]
    assert [c["rows"] for c in recorder.calls] == [4, 4, 2]
    assert all(c["attacks"] == attacks and c["targets"] == (targets, targets) for c in recorder.calls)
    assert all(c["eps"] == 0.03 for c in recorder.calls)
    np.testing.assert_array_equal(correct["autoattack"], correct["clean"])
    recorder.calls.clear()
    robust_correct(net, x, y, eps=0.03, channels=1, attacks=("autoattack",), autoattack_parts=["square"])
    assert [c["attacks"] for c in recorder.calls] == [["square"]]


def test_the_model_is_evaluated_in_eval_mode():
    """A linear net behind Dropout(0.5), handed over in training mode: robust_correct switches it
    to eval mode, so the clean verdicts are the linear net's closed form (with dropout active
    about half the inputs would be zeroed and many verdicts would change)."""
    net, x, y, clean, robust = _separable_case(2, seed=4)
    dropped = torch.nn.Sequential(torch.nn.Dropout(0.5), net).train()
    torch.manual_seed(0)
    correct = robust_correct(dropped, x, y, eps=EPS, channels=1, attacks=("pgd-20",))
    assert not dropped.training
    np.testing.assert_array_equal(correct["clean"], clean)
    np.testing.assert_array_equal(correct["pgd-20"], robust)


def test_on_attack_reports_each_attacks_own_accuracy():
    net, x, y, _clean, robust = _separable_case(2, seed=5)
    seen: list[tuple[str, float]] = []
    robust_correct(net, x, y, eps=EPS, channels=1, attacks=("pgd-20", "cw-100"), on_attack=lambda *a: seen.append(a))
    assert seen == [("pgd-20", pytest.approx(robust.mean())), ("cw-100", pytest.approx(robust.mean()))]


def test_unknown_attacks_are_refused():
    net, x, y, _, _ = _separable_case(2)
    with pytest.raises(ValueError, match="unknown evaluation attack 'fgsm'"):
        robust_correct(net, x, y, eps=EPS, channels=1, attacks=("pgd-20", "fgsm"))


def test_worst_case_includes_the_clean_verdict():
    """A point wrong on clean data but right under an attack (a random start can do that) is not
    robust: the worst case is the AND over clean and every attack (1/4 here), not over the
    attacks alone (2/4) nor an OR (4/4)."""
    correct = {
        "clean": np.array([False, True, True, True]),
        "pgd-20": np.array([True, True, True, False]),
        "autoattack": np.array([True, False, True, True]),
    }
    assert accuracies(correct) == {"clean": 0.75, "pgd-20": 0.75, "autoattack": 0.75, "worst_case": 0.25}


def test_masking_compares_autoattack_with_the_strongest_gradient_attack():
    """The strongest gradient attack is the one with the lowest accuracy: PGD-100 at 0.3 against
    AutoAttack at 0.25 is a gap of 0.05, no masking, even though PGD-20 sits at 0.5. The default
    gap is 0.1, and a gap of exactly ``gap`` is not flagged."""
    assert MASKING_GAP == 0.1
    assert not masking_suspected({"pgd-20": 0.5, "pgd-100": 0.3, "autoattack": 0.25})
    assert masking_suspected({"pgd-20": 0.5, "autoattack": 0.35})  # 0.15 > 0.1
    assert not masking_suspected({"pgd-20": 0.75, "autoattack": 0.625}, gap=0.125)
    assert masking_suspected({"pgd-20": 0.75, "autoattack": 0.5}, gap=0.125)
    assert not masking_suspected({"pgd-20": 0.75})  # no AutoAttack: nothing to compare
    assert not masking_suspected({"autoattack": 0.1, "clean": 0.9})  # no gradient attack


def test_cw_margin_loss_keeps_pushing_past_the_boundary_by_kappa_50():
    """κ = 50 (the TRADES / MART CW∞): a point already wrong by 10 still contributes −(50 − 10),
    so PGD keeps widening the wrong margin; one wrong by 60 contributes 0; its gradient with
    respect to the logits is (−1 on z_y, +1 on the largest other) until then."""
    logits = torch.tensor([[0.0, 10.0, 2.0], [0.0, 60.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = cw_margin_loss(logits, y)
    assert float(loss.detach()) == pytest.approx(-40.0)
    loss.backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert math.isclose(float(cw_margin_loss(torch.tensor([[3.0, 1.0]]), torch.tensor([0]))), -52.0)


def test_each_gradient_attack_runs_with_its_own_schedule_loss_and_seed(monkeypatch):
    """A spy in place of ``adversarial_examples`` (returning the points unchanged): PGD-20 and
    PGD-100 on the cross-entropy, CW-100 on the margin loss, each at the full ε, with its own
    step count, a step of at least 2.5·ε/steps (the whole budget reachable) and the caller's seed."""
    from ntkrobust.attacks import evaluation_schedule
    from ntkrobust.bridge import evaluation

    calls: list[dict] = []

    def spy(model, x, y, **kwargs):
        calls.append(kwargs)
        return x.clone()

    monkeypatch.setattr(evaluation, "adversarial_examples", spy)
    net, x, y, clean, _ = _separable_case(2, seed=6)
    correct = robust_correct(net, x, y, eps=0.2, channels=1, attacks=GRADIENT_ATTACKS, seed=11)
    assert [(c["method"], c["steps"], c["loss"]) for c in calls] == [
        ("pgd", 20, None),
        ("pgd", 100, None),
        ("pgd", 100, cw_margin_loss),
    ]
    for call in calls:
        assert call["eps"] == 0.2 and call["seed"] == 11
        assert call["step"] == evaluation_schedule(1, 0.2, call["steps"])[0]
        assert call["step"] * call["steps"] >= 2.5 * 0.2 - 1e-12
    for name in GRADIENT_ATTACKS:  # unchanged points: the clean verdicts
        np.testing.assert_array_equal(correct[name], clean)
