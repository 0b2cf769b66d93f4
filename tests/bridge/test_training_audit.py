"""Audit of the torch training loop (``bridge.training``) and the net's own attacks
(``bridge.adversarial``) against independent routes: SGD with momentum and weight decay written
by hand in float64 on a two-layer net, the shuffle and the random starts recomputed from their
documented seed rules, PGD / FGSM / TRADES inputs recomputed by plain torch loops, predictions
and accuracies counted by hand. Each test names the mistake it guards against."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkrobust.bridge.training as training
from ntkrobust.attacks import AttackSpec, pgd
from ntkrobust.bridge.adversarial import (
    accuracy,
    adversarial_examples,
    attack_examples,
    input_gradient,
    pgd_examples,
    predict,
)
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble
from ntkrobust.bridge.training import (
    TrainConfig,
    learning_rate,
    make_optimizer,
    train_epoch,
    training_inputs,
    training_loss,
)

warnings.filterwarnings("ignore", message="CUDA initialization")

N, CLASSES, SHAPE = 10, 3, (1, 3, 3)


def _data(n=N, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *SHAPE), generator=generator, dtype=torch.float64) * 0.8 + 0.1
    y = torch.arange(n) % CLASSES
    return x, y


def _net(batchnorm=False, seed=0, outputs=CLASSES):
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(9, 8)]
    layers += [nn.BatchNorm1d(8)] if batchnorm else []
    layers += [nn.Tanh(), nn.Linear(8, outputs)]
    return nn.Sequential(*layers).double()


def _shuffle(seed, epoch, n):
    """The documented rule: a permutation fixed by (seed, epoch), from SeedSequence([seed, 1, epoch])."""
    state = int(np.random.SeedSequence([seed, 1, epoch]).generate_state(1)[0])
    return np.random.default_rng(state).permutation(n)


def _forward(params, x):
    w1, b1, w2, b2 = params
    return torch.tanh(x.reshape(x.shape[0], -1) @ w1.T + b1) @ w2.T + b2


def _project(x_adv, x, eps):
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)


# -- the SGD epoch, written by hand ---------------------------------------------------------


def test_two_epochs_of_sgd_are_the_hand_written_momentum_and_weight_decay_updates():
    """Two epochs of ``train_epoch`` (standard mode) against SGD written out in float64: the
    epoch's shuffle from SeedSequence([seed, 1, epoch]), batches of 4 over 10 points (the last
    one partial, 2 points), the gradient of the batch's mean cross-entropy by autograd on a
    hand-written forward, weight decay added to every parameter's gradient, the momentum buffer
    b ← μb + g (b = g at the first step), p ← p − lr·b, and the rate halved after milestone 1.
    The summary's loss is the points' mean of the loss before each update and the running
    accuracy their share of correct predictions, both counted here. Tolerance 1e-12 (float64).
    Guards: momentum, weight decay or the milestone schedule dropped or misapplied, a loss sum
    taken for the mean, a shuffle that ignores the epoch, the last partial batch dropped."""
    x, y = _data()
    model = _net()
    config = TrainConfig(lr=0.1, momentum=0.9, weight_decay=0.05, milestones=(1,), gamma=0.5, batch_size=4, seed=3)
    optimizer = make_optimizer(model, config)
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [None] * len(params)
    for epoch in (1, 2):
        summary = train_epoch(model, optimizer, x, y, config, epoch, first_step=3 * (epoch - 1))
        lr = 0.1 if epoch == 1 else 0.05
        assert [group["lr"] for group in optimizer.param_groups] == [lr]
        order = _shuffle(3, epoch, N)
        loss_sum, correct = 0.0, 0
        for start in range(0, N, 4):
            index = torch.as_tensor(order[start : start + 4])
            leaves = [p.clone().requires_grad_(True) for p in params]
            logits = _forward(leaves, x[index])
            log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            loss = -log_p[torch.arange(index.shape[0]), y[index]].mean()
            grads = torch.autograd.grad(loss, leaves)
            loss_sum += float(loss.detach()) * index.shape[0]
            correct += int((logits.argmax(1) == y[index]).sum())
            for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                g = g + 0.05 * p
                buffers[i] = g if buffers[i] is None else 0.9 * buffers[i] + g
                params[i] = p - lr * buffers[i]
        for got, expected in zip(model.parameters(), params, strict=True):
            torch.testing.assert_close(got.detach(), expected, rtol=0, atol=1e-12)
        assert summary["steps"] == 3 and summary["mode"] == "standard" and summary["eps"] is None
        assert summary["train_loss"] == pytest.approx(loss_sum / N, rel=1e-12)
        assert summary["train_accuracy_running"] == pytest.approx(correct / N, rel=1e-15)


def test_the_step_schedule_enumerated_by_hand():
    """Milestones (2, 5), γ = 0.1: epochs 1-2 at lr, 3-5 at lr/10, 6-7 at lr/100 (a milestone m
    lowers the rate after epoch m); train_epoch sets every group's rate to it."""
    config = TrainConfig(lr=0.4, milestones=(2, 5), gamma=0.1, epochs=7)
    expected = [0.4, 0.4, 0.04, 0.04, 0.04, 0.004, 0.004]
    assert [learning_rate(config, e) for e in range(1, 8)] == pytest.approx(expected, rel=1e-15)
    x, y = _data()
    model = _net()
    optimizer = make_optimizer(model, config)
    train_epoch(model, optimizer, x, y, config, 3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.04, rel=1e-15)


@pytest.mark.parametrize(
    "changes",
    [{"milestones": (0, 2)}, {"milestones": (2, 2)}, {"milestones": (3, 2)}, {"momentum": 1.0}, {"switch_epoch": -1}],
)
def test_bad_schedules_are_refused(changes):
    """A milestone 0 or a repeated one would lower the rate before epoch 1 or twice; momentum 1
    never forgets a gradient."""
    with pytest.raises(ValueError, match="invalid"):
        TrainConfig(**changes)


def test_switch_epoch_zero_trains_adversarially_from_the_start():
    """``switch_epoch = 0``: no clean epoch (epochs 1..0), the same as no switch."""
    config = TrainConfig(mode="pgd", switch_epoch=0)
    assert config.mode_at(1) == "pgd"


def test_te_ramp_of_one_epoch_is_refused():
    with pytest.raises(ValueError, match="te_start < te_end"):
        TrainConfig(mode="te", epochs=3, te_start=2, te_end=2)


# -- seeds -----------------------------------------------------------------------------------


def test_every_step_of_a_run_draws_its_own_attack_and_augmentation(monkeypatch):
    """Two epochs of 3 steps: the six training attacks and the six augmentations each get their
    own seed (a seed keyed by the batch of the epoch repeats every epoch, one keyed by the epoch
    repeats within it); and epoch 2's shuffle is not epoch 1's."""
    attacks, augmentations = [], []
    real_inputs, real_augment = training.training_inputs, training.augment

    def spy_inputs(model, x, y, mode, config, seed, te, part=None):
        attacks.append(seed)
        return real_inputs(model, x, y, mode, config, seed, te, part)

    def spy_augment(x, *, seed, shared=False):
        augmentations.append(seed)
        return real_augment(x, seed=seed, shared=shared)

    monkeypatch.setattr(training, "training_inputs", spy_inputs)
    monkeypatch.setattr(training, "augment", spy_augment)
    x, y = _data()
    model = _net()
    config = TrainConfig(mode="pgd", eps=0.1, pgd_step=0.05, pgd_steps=1, batch_size=4, augment="crop-flip", seed=1)
    optimizer = make_optimizer(model, config)
    for epoch in (1, 2):
        train_epoch(model, optimizer, x, y, config, epoch, first_step=3 * (epoch - 1))
    assert len(attacks) == len(augmentations) == 6
    assert len(set(attacks)) == 6 and len(set(augmentations)) == 6
    assert not np.array_equal(_shuffle(1, 1, N), _shuffle(1, 2, N))


# -- the training attacks, recomputed --------------------------------------------------------


def _moved_statistics_net():
    """A BatchNorm net whose running statistics are far from any batch's: an attack run in train
    mode (batch statistics) takes other gradients than one in eval mode."""
    model = _net(batchnorm=True)
    with torch.no_grad():
        model[2].running_mean.fill_(0.7)
        model[2].running_var.fill_(3.0)
    return model.train()


def _ce_gradient(net, x, y):
    z = x.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(net(z), y, reduction="sum"), z)[0]


def test_pgd_training_inputs_are_a_plain_loop_in_eval_mode_from_the_seeded_uniform_start():
    """PGD-AT's inputs: a start x + U(−ε, ε) drawn by numpy's default_rng(seed) (clipped to
    [0, 1]), then ``pgd_steps`` steps x ← Π(x + step·sign ∇CE) on the net in eval mode (running
    BatchNorm statistics), written here as a plain loop on a copy. Float64, exact up to 1e-12.
    Guards: no random start, a fixed seed, a step or step count off, the attack in train mode."""
    x, y = _data()
    model = _moved_statistics_net()
    eps, step, steps, seed = 0.1, 0.03, 4, 11
    config = TrainConfig(mode="pgd", eps=eps, pgd_step=step, pgd_steps=steps)
    got = training_inputs(model, x, y, "pgd", config, seed)
    reference = copy.deepcopy(model).eval()
    x_adv = (x + torch.as_tensor(np.random.default_rng(seed).uniform(-eps, eps, size=tuple(x.shape)))).clamp(0, 1)
    for _ in range(steps):
        x_adv = _project(x_adv + step * _ce_gradient(reference, x_adv, y).sign(), x, eps)
    torch.testing.assert_close(got, x_adv, rtol=0, atol=1e-12)
    assert model.training and int(model[2].num_batches_tracked) == 0


def test_fgsm_with_anisotropic_noise_is_the_plain_recomputation():
    """fgsm-noise (RAT sec. 6): σ ~ U(0, ε) per example and pixel, then z ~ N(0, I) from the same
    numpy generator, the start x + σ⊙z projected onto the ε-ball ∩ [0, 1], one signed step of ε
    (eval mode) and the projection again. Float64, 1e-12. Guards: the noise's scale, σ shared by
    the examples, an unprojected start or result."""
    x, y = _data()
    model = _moved_statistics_net()
    eps, seed = 0.1, 5
    got = training_inputs(model, x, y, "fgsm-noise", TrainConfig(mode="fgsm-noise", eps=eps), seed)
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.0, eps, size=tuple(x.shape))
    start = _project(x + torch.as_tensor(sigma * rng.standard_normal(size=tuple(x.shape))), x, eps)
    reference = copy.deepcopy(model).eval()
    expected = _project(start + eps * _ce_gradient(reference, start, y).sign(), x, eps)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_fgsm_training_inputs_use_running_statistics():
    """FGSM-AT's signed step is taken on the net in eval mode (running BatchNorm statistics)."""
    x, y = _data()
    model = _moved_statistics_net()
    got = training_inputs(model, x, y, "fgsm", TrainConfig(mode="fgsm", eps=0.1, pgd_step=0.01), 0)
    expected = _project(x + 0.1 * _ce_gradient(copy.deepcopy(model).eval(), x, y).sign(), x, 0.1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_trades_inputs_are_the_plain_kl_ascent_from_a_small_gaussian_start():
    """TRADES' inner attack (Zhang et al. 2019, alg. 1): p = softmax f(x) (eval mode), the start
    x + 0.001·N(0, I) from torch.Generator().manual_seed(seed), then PGD on KL(p ‖ softmax f(x̃)).
    Float64, 1e-12. Guards: the KL's arguments swapped, the start's scale or seed, p taken over
    the wrong axis."""
    x, y = _data()
    model = _moved_statistics_net()
    eps, step, steps, seed = 0.1, 0.03, 3, 9
    config = TrainConfig(mode="trades", eps=eps, pgd_step=step, pgd_steps=steps)
    got = training_inputs(model, x, y, "trades", config, seed)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        log_p = F.log_softmax(reference(x), dim=1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    x_adv = _project(x + 0.001 * noise, x, eps)
    for _ in range(steps):
        z = x_adv.clone().requires_grad_(True)
        kl = (log_p.exp() * (log_p - F.log_softmax(reference(z), dim=1))).sum()
        x_adv = _project(x_adv + step * torch.autograd.grad(kl, z)[0].sign(), x, eps)
    torch.testing.assert_close(got, x_adv, rtol=0, atol=1e-12)


def test_trades_gradient_flows_through_the_clean_probabilities():
    """The TRADES loss CE(f(x), y) + β·KL(p(x) ‖ p(x̃)) is differentiated through both p(x) and
    p(x̃) (Zhang et al.'s code does not detach the clean term); its parameter gradient is
    compared with autograd on the formula written here. Float64, 1e-12 relative."""
    x, y = _data()
    model = _net().train()
    config = TrainConfig(mode="trades", eps=0.1, pgd_step=0.03, pgd_steps=2, trades_beta=6.0)
    x_adv = training_inputs(model, x, y, "trades", config, 4)
    reference = copy.deepcopy(model)
    loss, _ = training_loss(model, x, y, "trades", config, 4)
    got = torch.autograd.grad(loss, list(model.parameters()))
    log_p, log_q = F.log_softmax(reference(x), dim=1), F.log_softmax(reference(x_adv), dim=1)
    expected_loss = (-log_p[torch.arange(N), y] + 6.0 * (log_p.exp() * (log_p - log_q)).sum(1)).mean()
    expected = torch.autograd.grad(expected_loss, list(reference.parameters()))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_training_inputs_leave_an_eval_mode_net_in_eval_mode():
    x, y = _data()
    model = _net(batchnorm=True).eval()
    training_inputs(model, x, y, "pgd", TrainConfig(mode="pgd", eps=0.1, pgd_step=0.03, pgd_steps=1), 0)
    assert not model.training


@pytest.mark.parametrize(
    ("mode", "forwards"), [("standard", 1), ("fgsm", 1), ("fgsm-noise", 1), ("pgd", 1), ("te", 1), ("trades", 2)]
)
def test_only_the_update_moves_batchnorm_running_statistics(mode, forwards):
    """One epoch of 3 steps on a BatchNorm net: its running statistics are updated by the training
    forward passes alone (TRADES has two per step, clean and adversarial), never by the attack,
    TE's averages, the finite-output check or a tracking callback that leaves the net in eval mode
    (num_batches_tracked counts the train-mode forwards)."""
    x, y = _data()
    model = _net(batchnorm=True)
    ramp = {"te_start": 1, "te_end": 2, "epochs": 2} if mode == "te" else {}
    config = TrainConfig(mode=mode, eps=0.1, pgd_step=0.03, pgd_steps=2, batch_size=4, **ramp)
    ensemble = TemporalEnsemble.empty(N, CLASSES, 1, 2) if mode == "te" else None
    train_epoch(
        model, make_optimizer(model, config), x, y, config, 1, after_step=lambda step: model.eval(), ensemble=ensemble
    )
    assert int(model[2].num_batches_tracked) == 3 * forwards


# -- the net's own attacks and accuracies, recomputed ---------------------------------------


def test_predictions_and_accuracy_counted_by_hand_over_a_partial_last_batch():
    """10 points in batches of 4 and of 3 (a partial last batch): ``predict`` is argmax f row by
    row and ``accuracy`` the share of the 10 labels it matches, counted here (4 of 10)."""
    x, _ = _data()
    model = _net().eval()
    with torch.no_grad():
        expected = model(x).argmax(1)
    assert torch.equal(predict(model, x, batch_size=4), expected)
    labels = expected.clone()
    labels[4:] = (labels[4:] + 1) % CLASSES  # the first 4 right, the other 6 wrong
    assert accuracy(model, x, labels, batch_size=3) == 0.4
    assert accuracy(model, x, expected, batch_size=7) == 1.0


def test_one_output_nets_predict_index_one_only_where_f_is_positive_and_are_attacked_on_softplus():
    """A one-output net predicts 1 where f > 0 (f = 0 is index 0); FGSM on softplus(−s f),
    s = ±1 for label 1 / 0, of a linear f = w·x + b moves x by −ε·s·sign(w) (closed form), then
    clipped to [0, 1]."""
    x, _ = _data()
    linear = nn.Sequential(nn.Flatten(), nn.Linear(9, 1)).double()
    with torch.no_grad():
        linear[1].weight.copy_(torch.linspace(-1, 1, 9).reshape(1, 9) + 0.05)
        linear[1].bias.fill_(-0.1)
    labels = torch.arange(N) % 2
    sign = 2.0 * labels.double() - 1.0
    got = adversarial_examples(linear, x, labels, method="fgsm", eps=0.1, batch_size=4)
    step = -0.1 * sign[:, None, None, None] * linear[1].weight.sign().reshape(1, *SHAPE)
    torch.testing.assert_close(got, (x + step).clamp(0, 1), rtol=0, atol=1e-15)
    zero = nn.Sequential(nn.Flatten(), nn.Linear(9, 1)).double()
    nn.init.zeros_(zero[1].weight), nn.init.zeros_(zero[1].bias)
    assert predict(zero, x).tolist() == [0] * N


def _plain_pgd(model, x, y, eps, step, steps, start, loss=None):
    x_adv = start
    for _ in range(steps):
        z = x_adv.clone().requires_grad_(True)
        value = F.cross_entropy(model(z), y, reduction="sum") if loss is None else loss(model(z), y)
        x_adv = _project(x_adv + step * torch.autograd.grad(value, z)[0].sign(), x, eps)
    return x_adv


def test_pgd_without_random_start_and_each_batch_seeded_by_its_first_row():
    """``attack_examples`` of a PGD spec without random start is the plain loop from x itself;
    with random starts, row i starts from the i-th point's draws of the seed's stream: rows 4-7
    of a run in batches of 4 are those of a run in one batch (and of rows 4-7 alone with their
    place, ``first_row=4``, given to ``pgd``)."""
    x, y = _data()
    model = _net().eval()
    spec = AttackSpec("pgd", 0.1, step=0.03, steps=3, random_start=False, seed=2)
    torch.testing.assert_close(
        attack_examples(model, x, y, spec, batch_size=4), _plain_pgd(model, x, y, 0.1, 0.03, 3, x), rtol=0, atol=1e-12
    )
    whole = pgd_examples(model, x, y, eps=0.1, step=0.03, steps=3, seed=2, batch_size=4)
    one_batch = pgd_examples(model, x, y, eps=0.1, step=0.03, steps=3, seed=2, batch_size=len(x))
    torch.testing.assert_close(whole, one_batch, rtol=0, atol=0)
    gradient = input_gradient(model, lambda logits, labels: F.cross_entropy(logits, labels, reduction="sum"))
    alone = pgd(gradient, x[4:8], y[4:8], eps=0.1, step=0.03, steps=3, seed=2, first_row=4)
    torch.testing.assert_close(whole[4:8], alone, rtol=0, atol=0)
    twice = pgd_examples(model, x[:4].repeat(2, 1, 1, 1), y[:4].repeat(2), eps=0.1, step=0.03, steps=1, batch_size=4)
    assert not torch.equal(twice[:4], twice[4:])  # each batch its own start


def test_a_given_loss_is_the_one_attacked():
    """``adversarial_examples(loss=...)`` ascends that loss, here the cross-entropy towards class
    0 negated (a targeted attack), recomputed by the plain loop."""
    x, y = _data()
    model = _net().eval()

    def towards_zero(logits, labels):
        return -F.cross_entropy(logits, torch.zeros_like(labels), reduction="sum")

    got = adversarial_examples(
        model, x, y, method="pgd", eps=0.1, step=0.03, steps=2, random_start=False, loss=towards_zero
    )
    torch.testing.assert_close(got, _plain_pgd(model, x, y, 0.1, 0.03, 2, x, towards_zero), rtol=0, atol=1e-12)


@pytest.mark.parametrize("route", ["fgsm", "pgd", "spec-fgsm", "spec-pgd"])
def test_l2_attacks_stay_in_the_l2_ball(route):
    """ℓ2 attacks of radius 0.5 on 9-pixel images: every perturbation's ℓ2 norm ≤ 0.5 (an ℓ∞ one of
    0.5 would reach 1.5) and it moves the points."""
    x, y = _data()
    model = _net().eval()
    if route == "fgsm":
        got = adversarial_examples(model, x, y, method="fgsm", eps=0.5, norm="l2")
    elif route == "pgd":
        got = pgd_examples(model, x, y, eps=0.5, step=0.2, steps=3, norm="l2")
    else:
        method = route.split("-")[1]
        spec = AttackSpec(
            method, 0.5, norm="l2", step=0.2 if method == "pgd" else None, steps=3 if method == "pgd" else 1
        )
        got = attack_examples(model, x, y, spec)
    norms = (got - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= 0.5 + 1e-12 and float(norms.max()) > 0.2


def test_pgd_without_a_step_is_refused():
    x, y = _data()
    with pytest.raises(ValueError, match="pgd needs a step size"):
        adversarial_examples(_net(), x, y, method="pgd", eps=0.1, steps=2)


@pytest.mark.parametrize("other_finite", [True, False])
def test_a_process_with_finite_outputs_stops_when_another_ones_are_not(monkeypatch, other_finite):
    """Two processes simulated in one: this one (rank 0, its half of every batch) has finite
    outputs after the last update; the other's read is its own with the finite share 1/2 or 0
    (its outputs NaN or inf). The sum 1/2 + 0 must stop both (one process's overflow is the whole
    run's: their weights are the same); 1/2 + 1/2 finishes the epoch."""
    import ntkrobust.bridge.distributed as distributed

    def reduced(read):
        other = read.clone()
        if read.shape[0] == 3 and not other_finite:  # the epoch's last read: sums and the finite share
            other[2] = 0.0
        return read + other

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "all_reduce_sum", reduced)
    x, y = _data()
    model = _net()
    config = TrainConfig(lr=0.1, batch_size=4)
    if other_finite:
        assert train_epoch(model, make_optimizer(model, config), x, y, config, 1)["steps"] == 3
    else:
        with pytest.raises(FloatingPointError, match="outputs became NaN or inf after the last update of epoch 1"):
            train_epoch(model, make_optimizer(model, config), x, y, config, 1)


def test_te_attack_ascends_the_regularised_loss():
    """TE-AT's attack (Dong et al. 2022) ascends CE + w·(1/C)Σ_c (softmax f − t)², the batch's
    targets t and weight w included, from the seeded uniform start, in eval mode: a plain loop
    on that loss here. w = 50 makes the regulariser's gradient count. Float64, 1e-12."""
    x, y = _data()
    model = _moved_statistics_net()
    eps, step, steps, seed, weight = 0.1, 0.03, 3, 8, 50.0
    targets = torch.rand((N, CLASSES), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = targets / targets.sum(1, keepdim=True)
    config = TrainConfig(mode="te", epochs=2, te_start=1, te_end=2, eps=eps, pgd_step=step, pgd_steps=steps)
    got = training_inputs(model, x, y, "te", config, seed, te=(targets, weight))
    reference = copy.deepcopy(model).eval()

    def regularised(logits, labels):
        spread = ((F.softmax(logits, dim=1) - targets) ** 2).mean(dim=1).sum()
        return F.cross_entropy(logits, labels, reduction="sum") + weight * spread

    start = (x + torch.as_tensor(np.random.default_rng(seed).uniform(-eps, eps, size=tuple(x.shape)))).clamp(0, 1)
    expected = _plain_pgd(reference, x, y, eps, step, steps, start, regularised)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_te_averages_fold_in_each_examples_own_prediction():
    """After one TE epoch from empty averages, example i's average is (1 − momentum)·softmax f(x_i)
    of its own clean prediction, whichever batch of the shuffle it came in. The rate is 1e-12, so
    the net stays where it was to ~1e-12 and its predictions are taken once here; tolerance 1e-9."""
    x, y = _data()
    model = _net()
    config = TrainConfig(
        mode="te",
        epochs=2,
        te_start=1,
        te_end=2,
        lr=1e-12,
        momentum=0.0,
        eps=0.1,
        pgd_step=0.03,
        pgd_steps=1,
        batch_size=4,
    )
    with torch.no_grad():
        probabilities = F.softmax(model(x), dim=1)
    ensemble = TemporalEnsemble.empty(N, CLASSES, 1, 2)
    train_epoch(model, make_optimizer(model, config), x, y, config, 1, ensemble=ensemble)
    expected = (1 - ensemble.momentum) * probabilities
    torch.testing.assert_close(ensemble.averages, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", ["standard", "te"])
def test_the_processes_shares_of_the_loss_average_to_the_batchs_mean(mode):
    """Distributed training's loss on a share of the batch is its rows' sum × replicas / batch, so
    the mean of the two processes' losses (what DistributedDataParallel's gradient average
    differentiates) is the whole batch's mean loss, with shares of 5 and 5 rows and of 4 and 6;
    for TE the loss CE + w·(1/C)Σ_c (softmax f − t)² on the whole batch's attack (each share
    attacks its rows from the whole batch's random start). Float64, 1e-12."""
    from ntkrobust.bridge.temporal_ensembling import te_loss

    x, y = _data()
    model = _net()
    config = TrainConfig(mode=mode, epochs=2, te_start=1, te_end=2, eps=0.1, pgd_step=0.03, pgd_steps=2)
    targets = torch.full((N, CLASSES), 1 / CLASSES, dtype=torch.float64)
    te = (targets, 20.0) if mode == "te" else (None, 0.0)
    inputs = training_inputs(model, x, y, mode, config, 3, te)
    with torch.no_grad():
        mean = te_loss(model(inputs), y, te[0], te[1]) / N
        for cut in (5, 4):
            shares = [
                training_loss(model, x, y, mode, config, 3, te, part=part, replicas=2)[0]
                for part in (slice(0, cut), slice(cut, N))
            ]
            torch.testing.assert_close(sum(shares) / 2, mean, rtol=1e-12, atol=0)


def test_accuracy_refuses_inputs_below_zero():
    """Inputs outside [0, 1] are refused on either side (a negative pixel is no image either)."""
    x, y = _data()
    x[3, 0, 0, 0] = -0.25
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\] \(pixel units\), got values from -0.25 to"):
        accuracy(_net(), x, y)
