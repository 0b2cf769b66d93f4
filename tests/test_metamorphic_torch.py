"""Metamorphic tests of the torch half: attacks, training inputs, transfer and evaluation.

Each test runs a function twice, on inputs and on a transformation of them (the examples of a
batch permuted or cut into chunks, a net's classes relabelled, its logits shifted, a one-output
net written as two logits, a Normalize layer folded into the weights, ε set to 0 or raised, a set
duplicated or grown by a wrong point, transfer sources swapped), and checks the relation that the
docstrings imply between the two results. Definitions: ``attacks.threat`` (the ε-ball and the
box; robust accuracy = share still correct), ``attacks.pgd`` (the random start drawn from a
numpy generator seeded by ``seed``, by position in the batch), ``bridge.adversarial`` (the
random start of row i the i-th point's of ``seed``'s stream, whatever the batches),
``bridge.training`` (the modes' inputs and losses; each process's random starts those of its
rows in the whole batch), ``bridge.transfer`` (LOO's τ), ``bridge.evaluation`` (one output
attacked as the two logits (−f/2, f/2)).

The nets and data are the audits' own (``tests/bridge``): the float64 linear net of
``test_adversarial_audit``, the float64 tanh MLP of ``test_training_audit``, the separable linear
nets of ``test_evaluation_audit`` and the two-pixel net of ``test_transfer_audit``. Tolerances:
1e-12 absolute on float64 images in [0, 1] (the two runs take the same operations in another
order), exact where the two runs take the very same operations.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from test_adversarial_audit import _data as linear_data
from test_adversarial_audit import _linear_net
from test_evaluation_audit import EPS as SEPARABLE_EPS
from test_evaluation_audit import _separable_case
from test_training_audit import _data as tanh_data
from test_training_audit import _net as tanh_net
from test_transfer_audit import OWN, RANDOM, SOURCE, X, Y
from test_transfer_audit import _net as pixel_net
from torch import nn

from ntkrobust.attacks import (
    AttackSpec,
    ThreatModel,
    check_adversarial,
    fgsm,
    pgd,
    random_sign,
    robust_accuracy,
    taylor_max_l1,
    taylor_sum,
)
from ntkrobust.bridge.adversarial import (
    accuracy,
    adversarial_examples,
    attack_examples,
    cross_entropy_gradient,
    predict,
)
from ntkrobust.bridge.evaluation import accuracies, cw_margin_loss, robust_correct
from ntkrobust.bridge.models import Normalize
from ntkrobust.bridge.training import TrainConfig, training_inputs, training_loss
from ntkrobust.bridge.transfer import evaluate_target

TOL = 1e-12  # float64 images in [0, 1]: the same operations in another order
EPS = 0.1
STEP, STEPS = 0.03, 6


def _relabelled(net: nn.Sequential, perm: np.ndarray) -> nn.Sequential:
    """A copy of ``net`` whose output j is the old output ``perm[j]`` (the last layer's rows
    permuted): the label y of the old net is ``inverse[y]`` of the new one."""
    new = copy.deepcopy(net)
    last = new[-1]
    with torch.no_grad():
        last.weight.copy_(last.weight[torch.as_tensor(perm)])
        if last.bias is not None:
            last.bias.copy_(last.bias[torch.as_tensor(perm)])
    return new


def _attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, norm: str, **kw) -> torch.Tensor:
    """FGSM, or PGD of ``STEPS`` steps of ``STEP`` (ℓ2: the step scaled by 4), radius ``EPS`` (ℓ2: 4·EPS)."""
    scale = 4.0 if norm == "l2" else 1.0
    step = STEP * scale if method == "pgd" else None
    return adversarial_examples(net, x, y, method=method, eps=EPS * scale, step=step, steps=STEPS, norm=norm, **kw)


METHODS = [("fgsm", "linf"), ("fgsm", "l2"), ("pgd", "linf"), ("pgd", "l2")]


# -- the order and the chunks of a batch -----------------------------------------------------------


@pytest.mark.parametrize(("method", "norm"), METHODS)
def test_permuting_a_batch_permutes_its_deterministic_examples_and_keeps_the_accuracy(method, norm):
    """x → x[π], y → y[π]: FGSM and PGD without a random start give x_adv[π] (the gradient of the
    loss summed over the batch is each example's own, ``input_gradient``), and the accuracy on the
    examples is unchanged. With a random start the relation does not hold by design: the start is
    drawn by position from one generator per batch (``ThreatModel.random_start``), not per example.
    Tolerance 1e-12 (float64)."""
    net = tanh_net(seed=3)
    net.eval()
    x, y = tanh_data()
    perm = torch.as_tensor(np.random.default_rng(0).permutation(len(y)))
    kw = {"random_start": False} if method == "pgd" else {}
    adv = _attack(net, x, y, method, norm, **kw)
    adv_perm = _attack(net, x[perm], y[perm], method, norm, **kw)
    assert not torch.equal(adv, x)
    np.testing.assert_allclose(adv_perm.numpy(), adv[perm].numpy(), rtol=0, atol=TOL)
    assert accuracy(net, adv_perm, y[perm]) == accuracy(net, adv, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_from_a_permuted_start_permutes_its_examples(norm):
    """``attacks.pgd`` with ``start`` (the shared random start of each example): permuting the
    inputs, the labels and the start together permutes the examples, so the seeded start is the
    only place where the order of a batch enters PGD. 1e-12."""
    net = tanh_net(seed=4)
    net.eval()
    x, y = tanh_data(seed=2)
    eps = EPS if norm == "linf" else 4 * EPS
    start = ThreatModel(norm, eps).random_start(x, seed=5)
    perm = torch.as_tensor(np.random.default_rng(1).permutation(len(y)))
    gradient = cross_entropy_gradient(net)
    kw = {"eps": eps, "step": eps / 3, "steps": STEPS, "norm": norm}
    adv = pgd(gradient, x, y, start=start, **kw)
    adv_perm = pgd(gradient, x[perm], y[perm], start=start[perm], **kw)
    np.testing.assert_allclose(adv_perm.numpy(), adv[perm].numpy(), rtol=0, atol=TOL)


@pytest.mark.parametrize(("method", "norm"), METHODS)
def test_chunking_a_batch_changes_no_deterministic_attack_nor_the_accuracy(method, norm):
    """``batch_size`` 1, 3 (a partial last batch), 4 and N: the same FGSM / PGD examples as one
    batch, PGD with and without its random start (each point's start is its own, whatever the
    batches: until 2026-12-06 each batch drew from seed + its first row), the same predictions
    and the same accuracy (``in_batches`` writes every batch's rows; each example's gradient is
    its own). 1e-12; predictions exact."""
    net = tanh_net(seed=5)
    net.eval()
    x, y = tanh_data(seed=3)
    for kw in [{"random_start": False}, {"random_start": True}] if method == "pgd" else [{}]:
        whole = _attack(net, x, y, method, norm, batch_size=len(y), **kw)
        for batch_size in (1, 3, 4):
            chunked = _attack(net, x, y, method, norm, batch_size=batch_size, **kw)
            np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=0, atol=TOL)
    for batch_size in (1, 3, 4):
        assert torch.equal(predict(net, whole, batch_size=batch_size), predict(net, whole, batch_size=len(y)))
        assert accuracy(net, whole, y, batch_size=batch_size) == accuracy(net, whole, y, batch_size=len(y))


# -- relabelled classes, shifted logits, one output as two logits ----------------------------------


@pytest.mark.parametrize(("method", "norm"), METHODS)
def test_relabelling_the_classes_leaves_the_examples_and_the_accuracy(method, norm):
    """The last layer's rows permuted by σ and the labels mapped by σ⁻¹: the cross-entropy of each
    example is the same function of x, so FGSM, PGD (its random start depends on x and the seed
    alone: the relation holds with it) and PGD on the CW margin loss give the same examples,
    predictions map by σ⁻¹ and every accuracy is unchanged. 1e-12."""
    net = tanh_net(seed=6)
    net.eval()
    x, y = tanh_data(seed=4)
    perm = np.array([2, 0, 1])
    inverse = torch.as_tensor(np.argsort(perm))
    other = _relabelled(net, perm).eval()
    for loss in (None, cw_margin_loss):
        adv = _attack(net, x, y, method, norm, loss=loss)
        adv_other = _attack(other, x, inverse[y], method, norm, loss=loss)
        np.testing.assert_allclose(adv_other.numpy(), adv.numpy(), rtol=0, atol=TOL)
    assert torch.equal(predict(other, adv), inverse[predict(net, adv)])
    assert accuracy(other, adv, inverse[y]) == accuracy(net, adv, y)


def _varied_net(n: int = 12) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """The tanh MLP with steeper weights (its boundaries cross the box), 12 points and labels: its
    own predictions but every fourth moved to the next class (9 of 12 correct clean; PGD-20 at
    ε = 0.1 leaves 3)."""
    net = tanh_net(seed=8).eval()
    with torch.no_grad():
        net[1].weight.mul_(4)
        net[1].bias.copy_(-net[1].weight.sum(1) / 2)
        net[-1].weight.mul_(3)
    x, _ = tanh_data(n=n, seed=5)
    y = predict(net, x)
    y[::4] = (y[::4] + 1) % 3
    return net, x, y


def test_relabelled_classes_and_shifted_logits_leave_every_evaluation_verdict():
    """``robust_correct`` (clean, PGD-20, CW-100) per point: a relabelled net with relabelled labels
    and a net whose logits are all shifted by 3 (softmax, argmax and the CW margin z_y − max_{j≠y} z_j
    ignore a common shift) give the same verdicts as the net itself: the same random starts (seed,
    x) and the same loss landscapes. Verdicts exact."""
    net, x, y = _varied_net()
    perm = np.array([1, 2, 0])
    inverse = torch.as_tensor(np.argsort(perm))
    shifted = _relabelled(net, np.arange(3))
    with torch.no_grad():
        shifted[-1].bias += 3.0
    kw = {"eps": EPS, "channels": 1, "attacks": ("pgd-20", "cw-100"), "seed": 3}
    base = robust_correct(net, x, y, **kw)
    assert 0 < base["pgd-20"].sum() < base["clean"].sum()  # the attack flips some points, not all
    for other, labels in ((_relabelled(net, perm), inverse[y]), (shifted, y)):
        got = robust_correct(other.eval(), x, labels, **kw)
        assert set(got) == set(base)
        for name in base:
            np.testing.assert_array_equal(got[name], base[name], err_msg=name)


def _one_output_and_twin(seed: int = 0) -> tuple[nn.Sequential, nn.Sequential]:
    """A one-output linear net f (float64) and its two-logit twin (0, f): softmax(0, f) has the
    probabilities of the one-output loss softplus(−y f) (y = ±1) and argmax is index 1 iff f > 0."""
    generator = torch.Generator().manual_seed(seed)
    one = nn.Sequential(nn.Flatten(), nn.Linear(9, 1)).double()
    two = nn.Sequential(nn.Flatten(), nn.Linear(9, 2)).double()
    with torch.no_grad():
        one[1].weight.copy_(torch.randn((1, 9), generator=generator, dtype=torch.float64))
        one[1].bias.copy_(torch.tensor([-float(one[1].weight.sum()) / 2]))  # the boundary through the centre
        two[1].weight.zero_()
        two[1].bias.zero_()
        two[1].weight[1] = one[1].weight[0]
        two[1].bias[1] = one[1].bias[0]
    return one.eval(), two.eval()


@pytest.mark.parametrize(("method", "norm"), METHODS)
def test_a_one_output_net_is_attacked_and_evaluated_as_its_two_logit_twin(method, norm):
    """``bridge.adversarial``: one output predicts index 1 where f > 0 and its loss is softplus(−y f)
    = CE((0, f), y); ``bridge.evaluation``: one output is attacked as (−f/2, f/2), whose softmax is
    that of (0, f). So the examples, the predictions and the evaluation verdicts of the one-output
    net are those of its two-logit twin (0, f). Examples 1e-12, verdicts exact."""
    one, two = _one_output_and_twin()
    x, _ = tanh_data(n=16, seed=6)
    y = (torch.arange(16) % 2).long()
    adv_one = _attack(one, x, y, method, norm)
    adv_two = _attack(two, x, y, method, norm)
    np.testing.assert_allclose(adv_one.numpy(), adv_two.numpy(), rtol=0, atol=TOL)
    assert torch.equal(predict(one, adv_one), predict(two, adv_two))
    if method == "pgd" and norm == "linf":
        kw = {"eps": EPS, "channels": 1, "attacks": ("pgd-20", "cw-100"), "seed": 1}
        got, want = robust_correct(one, x, y, **kw), robust_correct(two, x, y, **kw)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_normalize_layer_in_the_net_is_the_same_attack_as_its_folded_weights():
    """``models.Normalize``: normalisation inside the model, so ε stays in pixel units. A linear net
    on (x − μ)/σ (per channel) is the linear net with weights W/σ and bias b − W·μ/σ on the raw
    pixels: the same function of the pixels, so the pixel-unit FGSM and PGD examples agree. (The
    data cannot be pre-transformed instead: attacks refuse inputs outside [0, 1].) 1e-10: the two
    forms round their logits differently, the steps follow the gradient's sign."""
    net = _linear_net(seed=2)
    x, y = linear_data(seed=3)  # (N, 1, 2, 2)
    mean, std = (0.4,), (0.3,)
    normalised = nn.Sequential(Normalize(mean, std), *net).double().eval()
    folded = _relabelled(net, np.arange(3))
    with torch.no_grad():
        w = net[1].weight
        mu, sigma = float(normalised[0].mean), float(normalised[0].std)  # its float32 buffers' values
        folded[1].weight.copy_(w / sigma)
        folded[1].bias.copy_(net[1].bias - w.sum(1) * mu / sigma)
    for method, norm in METHODS:
        a = _attack(normalised, x, y, method, norm)
        b = _attack(folded, x, y, method, norm)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-10, err_msg=f"{method} {norm}")


# -- the ε-ball, ε = 0 and a larger ε ---------------------------------------------------------------


def test_every_attack_stays_in_the_ball_and_the_box_and_eps_zero_gives_the_clean_inputs():
    """``attacks.threat``: every example satisfies ‖x_adv − x‖ ≤ ε and 0 ≤ x_adv ≤ 1; at ε = 0 the
    ball is the point x, so FGSM, PGD (its random start included), random sign, both Taylor
    attacks and the torch driver (through an ``AttackSpec``) return x exactly. Inputs reach the box's
    faces (0 and 1) so the clip binds."""
    net = tanh_net(seed=8)
    net.eval()
    x, y = tanh_data(seed=7)
    x = x.clone()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0
    gradient = cross_entropy_gradient(net)

    def jacobian(points):
        return torch.func.vmap(torch.func.jacrev(lambda p: net(p[None])[0]))(points)

    index = y.numpy()
    for norm in ("linf", "l2"):
        for eps in (0.0, 0.05, 0.3, 2.0):
            made = {
                "fgsm": fgsm(gradient, x, y, eps=eps, norm=norm),
                "pgd": pgd(gradient, x, y, eps=eps, step=0.1, steps=5, norm=norm, seed=2),
                "random sign": random_sign(x, eps=eps, norm=norm, seed=2),
                "taylor-l1": taylor_max_l1(jacobian, x, index, eps=eps, norm=norm),
                "taylor-sum": taylor_sum(jacobian, x, index, eps=eps, norm=norm),
                "spec": attack_examples(net, x, y, AttackSpec("pgd", eps, norm, step=0.1, steps=5, seed=1)),
            }
            for name, adv in made.items():
                check_adversarial(adv, x, ThreatModel(norm, eps))
                if eps == 0:
                    assert torch.equal(adv, x), f"{name} {norm} at eps 0"


@pytest.mark.parametrize("outputs", [2, 1], ids=["two-logits", "one-output"])
def test_a_larger_eps_never_raises_fgsm_robust_accuracy_on_a_binary_linear_net(outputs):
    """FGSM on a binary linear net moves every pixel against the margin by min(ε, room to the box):
    the worst case of the ℓ∞ ball, so the share still correct can only fall as ε grows, and at the
    audit's ε (points in [ε, 1 − ε]) it is the closed-form share with margin > ε‖w‖₁. Exact."""
    net, x, y, clean, robust = _separable_case(outputs)
    shares = []
    clean_predictions = predict(net, x).numpy()
    for eps in np.linspace(0.0, 0.3, 13):
        adv = adversarial_examples(net, x, y, method="fgsm", eps=float(eps))
        shares.append(robust_accuracy(predict(net, adv).numpy(), y.numpy(), clean_predictions))
    assert shares[0] == clean.mean()
    assert all(b <= a for a, b in itertools.pairwise(shares)), shares
    assert shares[-1] < shares[0]
    adv = adversarial_examples(net, x, y, method="fgsm", eps=SEPARABLE_EPS)
    assert robust_accuracy(predict(net, adv).numpy(), y.numpy(), clean_predictions) == robust.mean()


# -- robust accuracy of a duplicated or a grown set -------------------------------------------------


def test_robust_accuracy_of_a_duplicated_set_and_of_a_set_grown_by_a_wrong_point():
    """Robust accuracy is the share still correct (``attacks.robust_accuracy``, RobustBench): the set
    taken twice has the same share (exactly: 2k/2n and k/n round alike); one more point wrong under
    attack, or right under attack but wrong clean, makes it k/(n + 1). ``bridge.adversarial.accuracy``
    and ``bridge.evaluation.accuracies`` (worst case included) keep their share on a set taken twice."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 11)
    clean = np.where(rng.random(11) < 0.8, labels, (labels + 1) % 3)
    attacked = np.where(rng.random(11) < 0.6, labels, (labels + 2) % 3)
    share = robust_accuracy(attacked, labels, clean)
    k = int(((attacked == labels) & (clean == labels)).sum())
    assert share == k / 11
    assert robust_accuracy(np.tile(attacked, 2), np.tile(labels, 2), np.tile(clean, 2)) == share
    grown = [(1, 2, 2), (1, 1, 2)]  # (label, attacked, clean): wrong under attack; right under attack, wrong clean
    for label, adv, cln in grown:
        got = robust_accuracy(np.append(attacked, adv), np.append(labels, label), np.append(clean, cln))
        assert got == k / 12
    net = tanh_net(seed=9)
    net.eval()
    x, y = tanh_data(seed=8)
    twice = torch.cat([x, x]), torch.cat([y, y])
    assert accuracy(net, *twice, batch_size=3) == accuracy(net, x, y)
    verdicts = {"clean": clean == labels, "pgd-20": attacked == labels}
    doubled = {name: np.tile(v, 2) for name, v in verdicts.items()}
    assert accuracies(doubled) == accuracies(verdicts)


class _FlatStep(nn.Module):
    """Logits (0, g) of a one-pixel image: g = −1 below 0.6, +1 above 0.61, linear between; its
    gradient is zero on both flats (a net that masks its gradients, as ``bridge.evaluation`` warns)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = 2 * ((x.flatten(1)[:, :1] - 0.6) / 0.01).clamp(0, 1) - 1
        return torch.cat([torch.zeros_like(g), g], dim=1)


def test_a_point_wrong_clean_lowers_the_pgd_robust_accuracy_by_its_share():
    """Robust accuracy is the share *still* correct
    (``attacks.spec``: "robust accuracy = share still correct"; ``tracking.pgd_accuracy``: "the share
    of x still classified as y after attack (RobustBench's robust accuracy)"; ``evaluation.accuracies``:
    "the share of points still correct under each entry"). So adding to n points one that the net
    gets wrong clean makes the share n·a/(n + 1), whatever its attack does. Here four points at 0.95
    (flat, correct: PGD cannot move them out) and one at 0.5 (wrong clean) whose seeded random start
    lands on the correct flat, where the gradient is zero and PGD stays: before the fix it counted
    as correct under PGD-20, CW-100 and the per-epoch PGD (5/5 instead of 4/5). Exact."""
    eps, seed = 0.3, 0
    x = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.5], dtype=torch.float64).reshape(5, 1, 1, 1)
    y = torch.ones(5, dtype=torch.long)
    net = _FlatStep().eval()
    start = ThreatModel("linf", eps).random_start(x, seed)
    assert float(start[-1]) > 0.61 and predict(net, x).tolist() == [1, 1, 1, 1, 0]  # the setting described
    from ntkrobust.bridge.tracking import pgd_accuracy

    spec = AttackSpec("pgd", eps, step=0.0375, steps=20, seed=seed)
    kw = {"eps": eps, "channels": 1, "attacks": ("pgd-20", "cw-100"), "seed": seed}
    base, grown = accuracies(robust_correct(net, x[:4], y[:4], **kw)), accuracies(robust_correct(net, x, y, **kw))
    assert base == {"clean": 1.0, "pgd-20": 1.0, "cw-100": 1.0, "worst_case": 1.0}
    assert grown == {name: 4 / 5 for name in base}
    assert pgd_accuracy(net, x[:4], y[:4], spec)[0] == 1.0
    assert pgd_accuracy(net, x, y, spec)[0] == 4 / 5


# -- transfer: τ and the transfer matrix -------------------------------------------------------------


def _evaluation_numbers(result) -> tuple:
    return (result.clean_accuracy, result.white_box_accuracy, result.random_accuracy, result.sources)


def test_transfer_sources_equal_to_the_clean_inputs_or_the_own_examples_give_tau_zero_and_one():
    """LOO sec. 5, τ = (Acc_b − Acc_other)/(Acc_b − Acc_own): a "source" that is the clean inputs
    leaves the share still correct at Acc_b (τ = 0 exactly), one that is the target's own examples
    gives Acc_own (τ = 1 exactly); the sources' order in the mapping changes no value (swapped names
    swap their numbers)."""
    sources = {"clean": X, "own": OWN, "source": SOURCE}
    result = evaluate_target(
        pixel_net(), X, Y, AttackSpec("fgsm", 0.05), sources, random_examples=RANDOM, own_examples=OWN
    )
    tau = result.transferability()
    assert result.sources["clean"] == result.clean_accuracy and tau["clean"] == 0.0
    assert result.sources["own"] == result.white_box_accuracy and tau["own"] == 1.0
    swapped = {"source": OWN, "own": SOURCE, "clean": X}
    other = evaluate_target(
        pixel_net(), X, Y, AttackSpec("fgsm", 0.05), swapped, random_examples=RANDOM, own_examples=OWN
    )
    assert other.sources == {
        "clean": result.sources["clean"],
        "own": result.sources["source"],
        "source": result.sources["own"],
    }
    assert other.transferability()["source"] == 1.0


def test_transfer_numbers_ignore_the_order_of_the_points_and_the_names_of_the_classes():
    """Every accuracy of ``evaluate_target`` is a share over points: permuting the points (inputs,
    labels, sources, random and own examples alike) leaves them, and so does relabelling the target's
    classes (its two logits swapped, labels 1 − y) with its own FGSM examples made afresh (the
    cross-entropy is the same function of x). Exact."""
    attack = AttackSpec("fgsm", 0.05)
    sources = {"source": SOURCE, "own": OWN}
    base = evaluate_target(pixel_net(), X, Y, attack, sources, random_examples=RANDOM)
    perm = np.array([3, 0, 4, 1, 2])
    permuted = evaluate_target(
        pixel_net(),
        X[perm],
        Y[perm],
        attack,
        {k: v[perm] for k, v in sources.items()},
        random_examples=RANDOM[perm],
        own_examples=base.white_box_examples[perm],
    )
    assert _evaluation_numbers(permuted) == _evaluation_numbers(base)
    swapped = _relabelled(pixel_net(), np.array([1, 0]))
    relabelled = evaluate_target(swapped, X, 1 - Y, attack, sources, random_examples=RANDOM)
    assert _evaluation_numbers(relabelled) == _evaluation_numbers(base)
    np.testing.assert_array_equal(relabelled.white_box_examples, base.white_box_examples)


def test_the_transfer_matrix_rows_and_columns_follow_the_targets_and_sources():
    """``studies.transfer._matrix``: swapping two targets swaps their rows of accuracy and τ, and
    listing the sources in another order permutes the τ columns (and the accuracy columns after
    clean, random sign and own white-box) alike; no value changes."""
    from ntkrobust.studies.transfer import _matrix

    rows = []
    for name, target in (("a", pixel_net()), ("b", _relabelled(pixel_net(), np.array([1, 0])))):
        labels = Y if name == "a" else 1 - Y
        ev = evaluate_target(
            target,
            X,
            labels,
            AttackSpec("fgsm", 0.05),
            {"s": SOURCE, "o": OWN},
            random_examples=RANDOM,
            own_examples=OWN,
        )
        rows.append(
            {
                "name": name,
                "clean_accuracy": ev.clean_accuracy,
                "random_accuracy": ev.random_accuracy,
                "white_box_accuracy": ev.white_box_accuracy,
                "transfer_accuracy": ev.sources,
                "transferability": ev.transferability(),
            }
        )
    base = _matrix(rows, ["s", "o"])
    flipped = _matrix(rows[::-1], ["o", "s"])
    assert flipped["rows"] == base["rows"][::-1]
    acc, acc_flipped = np.array(base["accuracy"]), np.array(flipped["accuracy"])
    np.testing.assert_array_equal(acc_flipped, acc[::-1][:, [0, 1, 2, 4, 3]])
    tau, tau_flipped = np.array(base["transferability"]), np.array(flipped["transferability"])
    np.testing.assert_array_equal(tau_flipped, tau[::-1][:, ::-1])


# -- training inputs and losses ----------------------------------------------------------------------

TRAIN_MODES = ["fgsm", "fgsm-noise", "pgd", "trades"]


def _config(mode: str, **changes) -> TrainConfig:
    return TrainConfig(mode=mode, eps=EPS, pgd_step=STEP, pgd_steps=STEPS, **changes)


@pytest.mark.parametrize("mode", TRAIN_MODES)
def test_the_training_inputs_of_the_parts_of_a_batch_are_the_whole_batchs_cut(mode):
    """``training_inputs(..., part)``: every example starts where it would in one process (PGD's
    starts from its own rows' draws, the other modes' noise drawn for the whole batch and cut);
    the attack of each example then follows its own gradient (eval mode, no batch statistics). So
    the parts' inputs, concatenated, are the whole batch's. 1e-12."""
    net = tanh_net(seed=10)
    x, y = tanh_data(seed=9)
    config = _config(mode)
    whole = training_inputs(net, x, y, mode, config, seed=4)
    parts = [training_inputs(net, x, y, mode, config, seed=4, part=slice(a, b)) for a, b in ((0, 3), (3, 7), (7, 10))]
    np.testing.assert_allclose(torch.cat(parts).numpy(), whole.numpy(), rtol=0, atol=TOL)
    check_adversarial(whole, x, ThreatModel("linf", EPS))


@pytest.mark.parametrize("mode", ["pgd", "te"])
def test_a_process_draws_the_pgd_starts_of_its_own_rows_only(mode, monkeypatch):
    """Under torchrun a process draws its rows' starts (``first_row`` = its first row), not the
    whole batch's to cut: the draws a batch of B rows costs on the host are B / processes."""
    net = tanh_net(seed=10)
    x, y = tanh_data(seed=9)
    drawn: list[tuple[int, int]] = []
    original = ThreatModel.random_start

    def recorded(self, xs, seed, first_row=0):
        drawn.append((xs.shape[0], first_row))
        return original(self, xs, seed, first_row)

    monkeypatch.setattr(ThreatModel, "random_start", recorded)
    config = _config(mode, te_start=1, te_end=2) if mode == "te" else _config(mode)
    training_inputs(net, x, y, mode, config, seed=4, part=slice(3, 7))
    training_inputs(net, x, y, mode, config, seed=4)
    assert drawn == [(4, 3), (x.shape[0], 0)]


@pytest.mark.parametrize("mode", ["standard", *TRAIN_MODES])
def test_relabelling_the_classes_leaves_the_training_inputs_and_losses(mode):
    """The training attacks ascend the cross-entropy (FGSM, FGSM from noise, PGD) or TRADES's
    KL(p(x) ‖ p(x̃)), both the same functions of x when the last layer's rows and the labels are
    permuted alike (the KL sums over the classes); their random starts depend on x and the seed
    alone. So the inputs, the loss and its gradient in the first layer's weights are unchanged.
    1e-12."""
    net = tanh_net(seed=11)
    x, y = tanh_data(seed=10)
    perm = np.array([1, 2, 0])
    inverse = torch.as_tensor(np.argsort(perm))
    other = _relabelled(net, perm)
    config = _config(mode)
    got = {}
    for model, labels in ((net, y), (other, inverse[y])):
        model.train()
        inputs = training_inputs(model, x, labels, mode, config, seed=6)
        loss, _ = training_loss(model, x, labels, mode, config, seed=6)
        grad = torch.autograd.grad(loss, model[1].weight)[0]
        got[model is net] = (inputs, loss, grad)
    for a, b in zip(got[True], got[False], strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=0, atol=TOL)


def test_trades_with_beta_zero_is_the_standard_loss_and_its_loss_is_affine_in_beta():
    """TRADES: CE(f(x), y) + β·KL(p(x) ‖ p(x̃)), x̃ from PGD on the KL alone (β does not enter the
    attack). So β = 0 is the standard loss and its gradient, and the loss at β = 2 is the loss at
    β = 0 plus twice the KL term measured at β = 1 (the same x̃). 1e-12."""
    net = tanh_net(seed=12)
    net.train()
    x, y = tanh_data(seed=11)
    loss = {}
    for beta in (0.0, 1.0, 2.0):
        loss[beta], _ = training_loss(net, x, y, "trades", _config("trades", trades_beta=beta), seed=8)
    standard, _ = training_loss(net, x, y, "standard", _config("standard"), seed=8)
    assert abs(float((loss[0.0] - standard).detach())) <= TOL
    grads = [torch.autograd.grad(v, net[1].weight, retain_graph=True)[0] for v in (loss[0.0], standard)]
    np.testing.assert_allclose(grads[0].numpy(), grads[1].numpy(), rtol=0, atol=TOL)
    loss = {beta: float(value.detach()) for beta, value in loss.items()}
    assert loss[1.0] - loss[0.0] > 0
    assert abs(loss[2.0] - loss[0.0] - 2 * (loss[1.0] - loss[0.0])) <= TOL


# -- kernel tracking over a run ----------------------------------------------------------------------


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def test_tracked_kernels_follow_a_relabelling_of_the_classes_and_a_permutation_of_the_probe():
    """``KernelTracker.track``: the trace kernel is the mean of the C class blocks of the eNTK, so
    permuting the outputs (last layer's rows, labels by σ⁻¹) leaves the C-NTK, the AE-NTK (the PGD
    examples are unchanged: same start, same loss), their scalar metrics and the probe accuracies,
    maps the adversarial predictions by σ⁻¹ and permutes the specialization matrix to S[σ][:, σ].
    Permuting the probe points (with their PGD examples handed in: the random start is drawn by
    position) permutes both kernels' rows and columns and leaves every metric. 1e-10 relative
    (float64 eNTK products in another order)."""
    from ntkrobust.bridge.tracking import KernelTracker

    net, x, y = _varied_net(n=9)
    perm = np.array([2, 0, 1])
    inverse = torch.as_tensor(np.argsort(perm))
    settings = {"num_classes": 3, "eps": EPS, "step": STEP, "steps": 5, "seed": 2}
    arrays, record = KernelTracker(x=x, targets=y, **settings).track(net)
    other, other_record = KernelTracker(x=x, targets=inverse[y], **settings).track(_relabelled(net, perm).eval())
    for name in ("clean", "adversarial", "x_adversarial"):
        np.testing.assert_allclose(other[name], arrays[name], rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(other["predicted_adversarial"], inverse.numpy()[arrays["predicted_adversarial"]])
    assert other_record["probe_accuracy"] == record["probe_accuracy"]
    for kernel in ("clean", "adversarial"):
        got, want = other_record[kernel], record[kernel]
        assert _scalars(got) == pytest.approx(_scalars(want), rel=1e-10)
        spec = np.asarray(want["specialization_matrix"])
        np.testing.assert_allclose(got["specialization_matrix"], spec[perm][:, perm], rtol=1e-10)
    order = torch.as_tensor(np.random.default_rng(4).permutation(len(y)))
    x_adv = torch.as_tensor(arrays["x_adversarial"], dtype=x.dtype)  # kept in float32: the base again from them
    arrays, record = KernelTracker(x=x, targets=y, **settings).track(net, x_adv=x_adv)
    moved, moved_record = KernelTracker(x=x[order], targets=y[order], **settings).track(net, x_adv=x_adv[order])
    for name in ("clean", "adversarial"):
        np.testing.assert_allclose(moved[name], arrays[name][order][:, order], rtol=1e-10, atol=1e-12, err_msg=name)
    assert moved_record["probe_accuracy"] == record["probe_accuracy"]
    for kernel in ("clean", "adversarial", "adversarial_labels"):
        assert _scalars(moved_record[kernel]) == pytest.approx(_scalars(record[kernel]), rel=1e-10)


def test_robust_accuracy_refuses_clean_points_of_another_shape():
    """``accuracy(x_adv, y, clean=x)`` pairs each example with its clean point row by row: clean
    points of another shape are refused, not broadcast."""
    x = torch.full((3, 1, 1, 1), 0.95, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"clean points of shape \(2, 1, 1, 1\) for examples of shape \(3, 1, 1, 1\)"):
        accuracy(_FlatStep().eval(), x, torch.ones(3, dtype=torch.long), clean=x[:2])
