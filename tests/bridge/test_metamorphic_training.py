"""Metamorphic tests of the torch training machinery: augmentation, temporal ensembling, global
BatchNorm over emulated ranks, initialisation, the seeded epochs and checkpoints.

Each test runs a function twice, on inputs and on a transformation of them, and checks the relation
the docstrings imply between the two results:

- ``bridge.global_batchnorm``: a batch cut into k contiguous shares (``distributed.rows``), each
  normalised by its rank's ``GlobalBatchNorm`` with the moments of every share, is the plain
  BatchNorm of the whole batch (outputs, summed gradients, every rank's running statistics);
- ``bridge.augment``: zero padding, cropping and flipping are linear maps of the pixels chosen by
  the draws alone, the same for every channel; the draws belong to the batch positions (per
  example) or to the whole batch (``shared``);
- ``bridge.temporal_ensembling``: z_i ← α z_i + (1 − α) softmax(f(x_i)) from z_i = 0 unrolls to
  z = (1 − α) Σ_j α^(k−j) p_j, so t = z / Σ_c z is the bias-corrected average (the softmax itself
  after one update); the update is per example and per class;
- ``te_weight``: a function of (e − s)/(E − s), linear in its maximum;
- ``bridge.training``: a relabelling of the classes (labels and last-layer rows together) carries
  through whole epochs of momentum SGD, TE's averages included; a full-batch epoch of a
  deterministic mode ignores the order of the data; ``switch_epoch`` epochs are standard ones, and
  the ε warm-up and step schedule shift with it;
- ``bridge.initialisation``: every weight is a standard draw times √(2/fan_in) from one generator
  taken layer by layer; NTK twins and He-initialised nets keep their output variance when widths
  double (statistical, 4 standard errors);
- ``bridge.checkpoint``: a converted (GlobalBatchNorm) net's checkpoint is the plain net's;
- ``train_epoch`` under two gloo processes whose shares of the last batch are one row or none
  trains to one process's weights (a real bug on main: see that test).

The relations already pinned elsewhere are not repeated here: the row shares reassembled
(test_distributed_audit), the training inputs of a batch's parts (test_metamorphic_torch), a
relabelling of one training step (ditto), a resume against the uninterrupted run (test_resume_audit)
and across process counts (test_distributed), two gloo processes against one on shares of 13 rows
and more (ditto).

Tolerances: float64 (but the checkpoint's and the statistical test's float32 nets); 1e-12 where
the two runs take the same operations in another order, 1e-10 after whole epochs of SGD, exact
where they take the very same operations.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_augment_init import _images
from test_metamorphic_torch import _relabelled
from test_training_audit import CLASSES, N
from test_training_audit import _data as tanh_data
from test_training_audit import _net as tanh_net
from torch import nn

from ntkrobust.bridge import distributed, global_batchnorm
from ntkrobust.bridge.augment import augment
from ntkrobust.bridge.checkpoint import load_checkpoint, save_checkpoint
from ntkrobust.bridge.global_batchnorm import convert, local_moments, shared_batch
from ntkrobust.bridge.initialisation import initialise
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble, te_weight
from ntkrobust.bridge.training import TrainConfig, learning_rate, make_optimizer, train_epoch

TOL = 1e-12
EPOCHS_TOL = 1e-10


def _assert_close(found: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    torch.testing.assert_close(found, expected, rtol=tol, atol=tol)


# -- global BatchNorm over k emulated ranks ------------------------------------------------------


def _emulate_ranks(monkeypatch: pytest.MonkeyPatch, x: torch.Tensor, world: int) -> list[int]:
    """A group of ``world`` processes in this one: ``rank()`` is read from the list returned (set
    its one entry to switch rank), and the all-reduce of ``_gather_over_processes`` adds to this
    rank's own row the other ranks' rows, the ``local_moments`` of their shares of ``x``
    (``distributed.rows``), computed differentiably from ``x``: what the real all-reduce sums."""
    current = [0]
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "rank", lambda: current[0])

    def all_reduce(own: torch.Tensor) -> torch.Tensor:
        here = current[0]
        others = []
        for r in range(world):
            current[0] = r
            share = x[distributed.rows(x.shape[0])]
            others.append(torch.zeros_like(own[0]) if r == here else local_moments(share))
        current[0] = here
        return own + torch.stack(others)

    monkeypatch.setattr(distributed, "summed_over_processes", all_reduce)
    return current


@pytest.mark.parametrize(
    ("kind", "momentum", "n", "world"),
    [("2d", 0.1, 7, 2), ("2d", None, 7, 3), ("2d", 0.3, 3, 4), ("1d", 0.1, 9, 4), ("no-buffer", None, 8, 3)],
)
def test_the_shares_of_k_ranks_through_global_batchnorm_are_plain_batchnorm_of_the_whole_batch(
    monkeypatch, kind, momentum, n, world
):
    """``GlobalBatchNorm`` (module docstring): inside ``shared_batch()`` each process normalises
    its rows with Chan's combination of every process's moments, "what one process computes from
    all the rows", and updates its running statistics with the global μ and σ²·N/(N − 1). So k
    ranks, each with its contiguous share (``distributed.rows``; 3 rows on 4 ranks leaves one
    empty), give outputs whose concatenation in rank order is nn.BatchNorm2d's on the whole
    batch; the sum over the ranks of each rank's gradients (the all-reduce's backward sums them)
    is the whole batch's; and every rank's running statistics are the single layer's, over two
    training steps; for BatchNorm1d on (B, C, L) too, and for a RAT "w/o buffer" layer (no running
    statistics) in eval mode, which normalises with batch statistics in every mode. Float64, 1e-12
    (1e-10 on the gradients)."""
    generator = torch.Generator().manual_seed(5)
    if kind == "1d":
        reference, shape = nn.BatchNorm1d(3, momentum=momentum).double(), (n, 3, 4)
    else:
        reference, shape = nn.BatchNorm2d(3, momentum=momentum, track_running_stats=kind == "2d").double(), (n, 3, 2, 3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=generator)
        reference.bias.uniform_(-0.5, 0.5, generator=generator)
    reference.train(kind != "no-buffer")
    layers = [convert(copy.deepcopy(reference)) for _ in range(world)]
    for step in range(2):
        x = (2.0 * step + 3.0 * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_(True)
        weights = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        expected = reference(x)
        wanted = torch.autograd.grad((expected * weights).sum(), [x, reference.weight, reference.bias])
        with monkeypatch.context() as patch:
            current = _emulate_ranks(patch, x, world)
            outputs, losses = [], []
            for r, layer in enumerate(layers):
                current[0] = r
                part = distributed.rows(n)
                with shared_batch():
                    out = layer(x[part])
                outputs.append(out)
                losses.append((out * weights[part]).sum())
            sums = [torch.zeros_like(t) for t in wanted]
            for layer, loss in zip(layers, losses, strict=True):
                for total, grad in zip(sums, torch.autograd.grad(loss, [x, layer.weight, layer.bias]), strict=True):
                    total += grad
        _assert_close(torch.cat(outputs), expected)
        for found, grad in zip(sums, wanted, strict=True):
            _assert_close(found, grad, EPOCHS_TOL)
        for layer in layers:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(reference, name) is None:
                    assert getattr(layer, name) is None
                else:
                    _assert_close(getattr(layer, name), getattr(reference, name))


# -- augmentation ------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_augmentation_is_linear_in_the_pixels_and_the_same_for_every_channel(shared):
    """Zero padding, a crop and a left-right flip move and drop pixels and bring in zeros, chosen
    by the draws of ``seed`` alone (``augment``: "drawn from numpy.random.default_rng(seed)"): for
    one seed the map is linear, augment(a·x₁ + b·x₂) = a·augment(x₁) + b·augment(x₂), and it
    treats every channel alike, so permuting the channels permutes the result's. The all-ones
    batch augments to a 0/1 mask, 1 inside the crop: images in [0, 1] stay there. On 16x20
    images, so that height and width cannot be confused unseen. Exact for the
    mask and the channels (pixels are only moved), 1e-12 for the sums."""
    generator = torch.Generator().manual_seed(1)
    x1, x2 = (torch.rand(12, 3, 16, 20, generator=generator, dtype=torch.float64) for _ in range(2))
    seed = 17
    combined = augment(2.5 * x1 - 0.75 * x2, seed=seed, shared=shared)
    _assert_close(combined, 2.5 * augment(x1, seed=seed, shared=shared) - 0.75 * augment(x2, seed=seed, shared=shared))
    channels = torch.tensor([2, 0, 1])
    assert torch.equal(
        augment(x1[:, channels], seed=seed, shared=shared), augment(x1, seed=seed, shared=shared)[:, channels]
    )
    mask = augment(torch.ones_like(x1), seed=seed, shared=shared)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert bool((mask.sum(dim=(2, 3)) >= (16 - 4) * (20 - 4)).all())  # at most 4 padded rows and columns
    out = augment(x1, seed=seed, shared=shared)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out * mask, out)  # no image pixel outside the crop's window


def test_per_example_draws_belong_to_the_batch_positions_and_a_shared_draw_to_the_batch():
    """``augment``: one (offset, flip) draw per example in batch order, or with ``shared`` one for
    the whole batch. So (a) replacing example j changes row j of the result alone; (b) the shared
    augmentation commutes with a permutation of the batch, augment(x[π]) = augment(x)[π]; and
    (c) the shared draw of a batch is the per-example draw of a batch of one (the generator is
    asked for the same numbers), applied to every example. Exact: pixels are only moved."""
    x = _images(10, 3, seed=3)
    other = x.clone()
    other[4] = _images(1, 3, seed=9)[0]
    base, changed = augment(x, seed=8), augment(other, seed=8)
    rows = [i for i in range(10) if not torch.equal(base[i], changed[i])]
    assert rows == [4]
    perm = torch.as_tensor(np.random.default_rng(0).permutation(10))
    assert torch.equal(augment(x[perm], seed=8, shared=True), augment(x, seed=8, shared=True)[perm])
    shared = augment(x, seed=8, shared=True)
    for i in range(10):
        assert torch.equal(shared[i : i + 1], augment(x[i : i + 1], seed=8))
    assert not torch.equal(shared, base)  # per example: other draws


# -- temporal ensembling -----------------------------------------------------------------------


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.double(), dim=1)


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_te_targets_are_the_bias_corrected_exponential_average_of_the_recorded_predictions(momentum):
    """Unrolled from z = 0, z_k = (1 − α) Σ_j α^(k−j) p_j; every p_j sums to 1 over the classes,
    so Σ_c z_k = 1 − α^k and t_k = Σ_j α^(k−j) p_j / Σ_j α^(k−j): the bias-corrected average,
    which after one update is the softmax itself whatever α (module docstring: α = 0.9, z_i = 0
    at the start, t_i = z_i / Σ_c z_ic). Checked against the direct formula over the recorded
    predictions of 5 updates of 6 examples; 1e-12."""
    ensemble = TemporalEnsemble.empty(6, 4, start=1, end=2)
    ensemble.momentum = momentum
    index = torch.arange(6)
    generator = torch.Generator().manual_seed(7)
    recorded = []
    for k in range(1, 6):
        logits = 3.0 * torch.randn(6, 4, generator=generator, dtype=torch.float64)
        recorded.append(_softmax(logits))
        targets = ensemble.update(index, logits)
        powers = torch.tensor([momentum ** (k - j) for j in range(1, k + 1)], dtype=torch.float64)
        stacked = torch.stack(recorded)  # (k, 6, 4)
        direct = (1 - momentum) * torch.einsum("j,jnc->nc", powers, stacked)
        _assert_close(ensemble.averages, direct)
        _assert_close(targets, torch.einsum("j,jnc->nc", powers, stacked) / powers.sum())
        if k == 1:
            _assert_close(targets, recorded[0])


def test_te_updates_are_per_example_and_per_class():
    """``TemporalEnsemble.update`` folds each example's own prediction into its own row: the same
    updates with the batch permuted (index and logits alike) give the same averages and the
    targets permuted; a batch folded in as two halves gives what it gives at once; logits shifted
    by a constant per row (softmax's invariance) change nothing; and relabelled classes (the
    logits' columns permuted) permute the averages' and targets' columns. 1e-12."""
    generator = torch.Generator().manual_seed(8)
    batches = [
        (torch.tensor(index), 2.0 * torch.randn(len(index), 3, generator=generator, dtype=torch.float64))
        for index in ([0, 3, 5, 1], [2, 4, 0, 6], [6, 1, 3, 2])
    ]
    columns = torch.tensor([2, 0, 1])

    def run(transform) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ensemble = TemporalEnsemble.empty(7, 3, start=1, end=2)
        targets = [transform(ensemble, index, logits) for index, logits in batches]
        return ensemble.averages, targets

    base, targets = run(lambda e, i, z: e.update(i, z))
    perm = torch.tensor([3, 0, 2, 1])
    permuted, permuted_targets = run(lambda e, i, z: e.update(i[perm], z[perm]))
    _assert_close(permuted, base)
    for found, expected in zip(permuted_targets, targets, strict=True):
        _assert_close(found, expected[perm])
    halves, _ = run(lambda e, i, z: torch.cat([e.update(i[:2], z[:2]), e.update(i[2:], z[2:])]))
    _assert_close(halves, base)
    shift = torch.tensor([[5.0], [-3.0], [0.5], [100.0]], dtype=torch.float64)
    shifted, _ = run(lambda e, i, z: e.update(i, z + shift))
    _assert_close(shifted, base)
    relabelled, relabelled_targets = run(lambda e, i, z: e.update(i, z[:, columns]))
    _assert_close(relabelled, base[:, columns])
    for found, expected in zip(relabelled_targets, targets, strict=True):
        _assert_close(found, expected[:, columns])
    assert float(base.sum(dim=1).min()) > 0  # every example was drawn


def test_the_te_ramp_depends_on_the_ramps_phase_alone_and_is_linear_in_its_maximum():
    """w(e) = w_max · exp(−5 (1 − (e − s)/(E − s))²) on [s, E], 0 before, w_max after (module
    docstring): shifting e, s and E by the same epochs, or scaling all three by the same factor,
    leaves it (the phase is unchanged); scaling w_max scales it. 1e-12 relative."""
    for epoch in range(0, 25):
        weight = te_weight(epoch, 5, 15, 300.0)
        assert te_weight(epoch + 7, 12, 22, 300.0) == pytest.approx(weight, rel=TOL, abs=0)
        assert te_weight(3 * epoch, 15, 45, 300.0) == pytest.approx(weight, rel=TOL, abs=0)
        assert te_weight(epoch, 5, 15, 30.0) == pytest.approx(weight / 10, rel=TOL, abs=0)


# -- whole epochs ------------------------------------------------------------------------------


def _epochs(model, x, y, config, epochs=(1, 2), ensemble=None) -> list[dict]:
    optimizer = make_optimizer(model, config)
    steps = math.ceil(x.shape[0] / config.batch_size)
    return [
        train_epoch(model, optimizer, x, y, config, epoch, first_step=(epoch - 1) * steps, ensemble=ensemble)
        for epoch in epochs
    ]


def _te_config(**changes) -> TrainConfig:
    values = {
        "mode": "te",
        "epochs": 2,
        "te_start": 1,
        "te_end": 2,
        "te_weight": 30.0,
        "lr": 0.2,
        "momentum": 0.9,
        "weight_decay": 1e-3,
        "batch_size": 4,
        "eps": 0.1,
        "pgd_step": 0.03,
        "pgd_steps": 2,
        "seed": 3,
    }
    return TrainConfig(**{**values, **changes})


@pytest.mark.parametrize("mode", ["te", "trades", "fgsm-noise"])
def test_relabelled_classes_carry_through_two_epochs_and_the_te_averages(mode):
    """Every loss of the modes (CE, TRADES's KL, TE's (1/C)Σ_c (softmax − t)²) sums over the
    classes, every random draw is keyed by (seed, epoch, step) and not by a label, and TE's
    averages are per class (``bridge.training`` module docstring): so two epochs of momentum SGD
    with weight decay on a net whose last layer's rows are permuted by σ and labels relabelled by
    σ⁻¹ end at the first run's weights with the last layer's rows permuted, the same losses and
    running accuracies, and TE's averages with their columns permuted. Float64, 1e-10."""
    x, y = tanh_data()
    net = tanh_net(seed=4)
    perm = np.array([1, 0, 2])  # a transposition: a cyclic relabelling commutes with a roll of the classes
    other = _relabelled(net, perm)
    labels = torch.as_tensor(np.argsort(perm))[y]
    config = _te_config(mode=mode)
    ensembles = (
        [TemporalEnsemble.empty(N, CLASSES, 1, 2, maximum=30.0) for _ in range(2)] if mode == "te" else [None] * 2
    )
    first = _epochs(net, x, y, config, ensemble=ensembles[0])
    second = _epochs(other, x, labels, config, ensemble=ensembles[1])
    for a, b in zip(first, second, strict=True):
        for key in ("train_loss", "train_accuracy_running", "steps"):
            assert a[key] == pytest.approx(b[key], rel=EPOCHS_TOL, abs=EPOCHS_TOL), key
    _assert_close(other[1].weight, net[1].weight, EPOCHS_TOL)
    _assert_close(other[-1].weight, net[-1].weight[torch.as_tensor(perm)], EPOCHS_TOL)
    _assert_close(other[-1].bias, net[-1].bias[torch.as_tensor(perm)], EPOCHS_TOL)
    if mode == "te":
        assert float(ensembles[0].averages.abs().sum()) > 0
        _assert_close(ensembles[1].averages, ensembles[0].averages[:, torch.as_tensor(perm)], EPOCHS_TOL)


@pytest.mark.parametrize("mode", ["standard", "fgsm"])
def test_a_full_batch_epoch_of_a_deterministic_mode_ignores_the_order_of_the_data(mode):
    """With one batch per epoch, the loss is the mean over all the points (the shuffle only
    reorders them) and FGSM's step depends on each point alone (no random start): so the data
    given in another order, examples and labels permuted together, train to the same weights,
    losses and accuracies over three epochs of momentum SGD (a pairing of examples with other
    labels, or a batch drawn with another's rows, would show). Float64, 1e-10."""
    x, y = tanh_data()
    order = torch.as_tensor(np.random.default_rng(2).permutation(N))
    config = _te_config(mode=mode, batch_size=N + 3)
    nets = [tanh_net(seed=6, batchnorm=True), tanh_net(seed=6, batchnorm=True)]
    first = _epochs(nets[0], x, y, config, epochs=(1, 2, 3))
    second = _epochs(nets[1], x[order], y[order], config, epochs=(1, 2, 3))
    for a, b in zip(first, second, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=EPOCHS_TOL)
        assert a["train_accuracy_running"] == b["train_accuracy_running"]
    for (name, a), (_, b) in zip(nets[0].state_dict().items(), nets[1].state_dict().items(), strict=True):
        if a.is_floating_point():
            _assert_close(b, a, EPOCHS_TOL)
        else:
            assert torch.equal(b, a), name


def test_switch_epochs_are_standard_epochs_and_the_schedules_shift_with_them():
    """``switch_epoch = k`` trains clean for epochs 1..k (``TrainConfig.mode_at``), and standard
    training draws nothing from the seed: PGD with k = 2 trains epochs 1-2 to the standard run's
    weights, bit for bit. ``eps_at`` counts the adversarial batches after the switch, so the warm-up
    of a run switched at k is that of an unswitched run shifted by k epochs, and depends on the
    share of the batches done (batch 2b + 1 of 2B is batch b of B); ``learning_rate``
    applies γ per milestone passed, so milestones and epochs shifted alike give the same rate.
    Exact."""
    x, y = tanh_data()
    nets = [tanh_net(seed=7), tanh_net(seed=7)]
    _epochs(nets[0], x, y, _te_config(mode="pgd", switch_epoch=2, epochs=3))
    _epochs(nets[1], x, y, _te_config(mode="standard", epochs=3))
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    plain = TrainConfig(mode="pgd", eps=0.3, eps_warmup=3, epochs=10)
    switched = TrainConfig(mode="pgd", eps=0.3, eps_warmup=3, epochs=14, switch_epoch=4)
    for epoch in range(1, 7):
        for batch in range(5):
            assert switched.eps_at(epoch + 4, batch, 5) == plain.eps_at(epoch, batch, 5)
            # twice the batches per epoch: batch 2b + 1 of 10 has done the share b + 1 of 5 has
            assert plain.eps_at(epoch, 2 * batch + 1, 10) == pytest.approx(plain.eps_at(epoch, batch, 5), rel=TOL)
    early = TrainConfig(milestones=(2, 5), gamma=0.5, epochs=12)
    late = TrainConfig(milestones=(6, 9), gamma=0.5, epochs=12)
    for epoch in range(1, 8):
        assert learning_rate(late, epoch + 4) == learning_rate(early, epoch)


# -- initialisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["normal", "truncated-normal", "uniform"])
def test_initial_weights_are_one_standard_draw_scaled_by_root_two_over_fan_in(name):
    """``initialise``: every conv and linear weight is drawn from the generator, layer after layer
    in ``modules()`` order, with variance 2/fan_in (fan_in = in_features, or in_channels·k·k), its
    bias zeroed, BatchNorm left alone. So layers of 216 weights with fan-ins 27 and 54, linear or
    convolutional, drawn from the same seed hold the same standard draw times √(2/fan_in) (a fan
    taken from the outputs would scale them the other way); and a net of two such layers holds
    what the two layers hold when initialised one after the other from one generator, two
    different draws. Float64, 1e-12."""
    layers = [nn.Linear(27, 8), nn.Conv2d(3, 8, 3), nn.Linear(54, 4), nn.Conv2d(6, 4, 3)]
    fans = [27, 27, 54, 54]
    standard = []
    for layer, fan in zip(layers, fans, strict=True):
        layer.double()
        initialise(layer, name, torch.Generator().manual_seed(11))
        standard.append(layer.weight.detach().flatten() / math.sqrt(2.0 / fan))
        assert float(layer.bias.detach().abs().sum()) == 0
    for other in standard[1:]:
        _assert_close(other, standard[0])
    net = nn.Sequential(nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(27, 8)).double()
    batchnorm = copy.deepcopy(net[1].state_dict())
    initialise(net, name, torch.Generator().manual_seed(11))
    generator = torch.Generator().manual_seed(11)
    alone = [initialise(layer.double(), name, generator) for layer in (nn.Conv2d(6, 4, 3), nn.Linear(27, 8))]
    _assert_close(net[0].weight, alone[0].weight)
    _assert_close(net[3].weight, alone[1].weight)
    _assert_close(net[0].weight.detach().flatten() / math.sqrt(2.0 / 54), standard[0])
    second = net[3].weight.detach().flatten() / math.sqrt(2.0 / 27)
    assert float((second - standard[0]).abs().min()) > 0  # the next draw, not the first again
    for key, value in batchnorm.items():
        assert torch.equal(net[1].state_dict()[key], value)


@pytest.mark.parametrize(
    ("model", "init", "widths", "tolerance"),
    [("fc2", "default", (64, 128), 0.10), ("mnist-cnn", "normal", (16, 32), 0.20)],
)
def test_doubling_the_widths_keeps_the_output_variance_at_initialisation(model, init, widths, tolerance):
    """The NTK twins draw N(0, 1) parameters and scale by W_std/√fan_in in the forward pass
    (``NTKLinear``); the He initialisations draw with variance 2/fan_in (``initialisation``): in
    both the second moment of each layer's outputs does not depend on the widths before it (the
    fan-in cancels the sum's length). So the mean squared output over 300 seeds, 16 inputs and 256
    outputs is the same at width w and 2w. The tolerance is 4 standard errors of the ratio (1.6 %
    and 2.4 % for fc2's two means, 4 % and 2.7 % for the CNN's, measured over the seeds). A twin
    without the 1/√fan_in (the standard parameterisation) grows it with the width, and He's
    variance taken as the standard deviation shrinks it; a fan taken from the outputs does not show
    here (along a chain of layers the widths cancel out of Π fan_in/fan_out: the exact test above
    pins the fan)."""
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    means = []
    for width in widths:
        moments = []
        for seed in range(300):
            net = build_model(model_config(model, (1, 8, 8), 256, width=width, seed=seed, init=init))
            with torch.no_grad():
                moments.append(float((net(x).double() ** 2).mean()))
        means.append(np.mean(moments))
    assert means[1] / means[0] == pytest.approx(1.0, abs=tolerance)


# -- checkpoints -------------------------------------------------------------------------------


def test_a_converted_nets_checkpoint_is_the_plain_nets(tmp_path):
    """``GlobalBatchNorm`` is "built by ``convert``, with the parameters and buffers of the layer it
    replaces (the same state-dict keys, so checkpoints load into the unconverted net)": a ResNet
    trained one step with its BatchNorms converted, saved and loaded, is the plain ResNet with the
    converted one's state dict (bit for bit) and outputs in train and eval mode (outside
    ``shared_batch()`` the layer is a plain BatchNorm); saving the loaded net again writes the
    same state dict. Exact."""
    config = model_config("resnet18", (3, 8, 8), 4, width=2, seed=0)
    model = convert(build_model(config)).train()
    x = _images(6, 3, side=8, seed=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), torch.arange(6) % 4).backward()
    optimizer.step()
    save_checkpoint(tmp_path / "converted.pt", model, config)
    loaded, _, _ = load_checkpoint(tmp_path / "converted.pt")
    assert not any(isinstance(m, global_batchnorm.GlobalBatchNorm) for m in loaded.modules())
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for train in (False, True):
        copies = [copy.deepcopy(model).train(train), copy.deepcopy(loaded).train(train)]
        with torch.no_grad():
            assert torch.equal(copies[0](x), copies[1](x))
    save_checkpoint(tmp_path / "again.pt", loaded, config)
    again, _, _ = load_checkpoint(tmp_path / "again.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


# -- two gloo processes, a share of one row or none ---------------------------------------------

#: (model, points, running statistics): 7 points in batches of 4 leave a last batch of 3, shared
#: 1 / 2 by two processes; 5 leave a last batch of 1, shared 0 / 1
SMALL_SHARES = (("resnet18", 7, False), ("mnist-cnn", 5, True))


def _small_share_epoch(case: tuple[str, int, bool], replicate: bool) -> tuple[dict[str, np.ndarray], float]:
    """One standard epoch of ``case`` on 8x8 images in batches of 4. The ResNet-18 without running
    statistics (``train --batchnorm batch``) normalises 1x1 maps in its last stage."""
    from ntkrobust.bridge.training import replicated

    name, n, running = case
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y = torch.arange(n) % 4
    model = build_model(model_config(name, (1, 8, 8), 4, width=2, seed=1, running_stats=running)).double()
    replica = None
    if replicate:  # as bridge.experiment does under torchrun
        model, replica = replicated(model, torch.device("cpu"))
    config = TrainConfig(mode="standard", epochs=1, lr=0.05, batch_size=4, seed=2)
    summary = train_epoch(model, make_optimizer(model, config), x, y, config, 1, replica=replica)
    return {key: p.detach().numpy().copy() for key, p in model.state_dict().items()}, summary["train_loss"]


def _small_share_rank(rank: int, world: int, port: int, out: str) -> None:
    from test_distributed import _in_group

    with _in_group(rank, world, port):
        for case in SMALL_SHARES:
            weights, loss = _small_share_epoch(case, replicate=True)
            np.savez(f"{out}/{case[0]}-rank{rank}.npz", loss=np.array(loss), **weights)


def test_two_processes_with_a_share_of_one_row_or_none_train_to_the_weights_of_one(tmp_path):
    """``train_epoch`` under torchrun: "every process draws the same shuffle ... and takes its
    contiguous share of the rows, and the gradients are averaged, so the updates are those of one
    process with the same global batch". A run that one process trains must then train alike in
    two: here with last batches of 3 rows (``check_last_batch`` lets them through) and of 1 row (a
    net without BatchNorm), shared 1 / 2 and 0 / 1 by the two processes.

    A bug this round found (the first case; fixed in a7c4734): the end-of-epoch check that the
    net's outputs are finite (``_finite_share``) ran rank 0's one row through the net in eval mode
    outside ``shared_batch()``, where a BatchNorm without running statistics normalised over the
    row's own single value per channel, and torch raised ("Expected more than 1 value per channel
    when training"): the launch died after its first epoch. The check now takes the shared batch's
    statistics, every process forwarding its rows, the empty share of the second case too.
    Float64, 1e-10 (relative and absolute: statistics over 3 rows amplify the rounding of the
    all-reduced sums to ~1e-11)."""
    import torch.multiprocessing as mp
    from test_distributed import _free_port

    mp.spawn(_small_share_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for case in SMALL_SHARES:
        weights, loss = _small_share_epoch(case, replicate=False)
        for rank in (0, 1):
            with np.load(tmp_path / f"{case[0]}-rank{rank}.npz") as found:
                assert float(found["loss"]) == pytest.approx(loss, rel=EPOCHS_TOL)
                for key, value in weights.items():
                    np.testing.assert_allclose(found[key], value, rtol=EPOCHS_TOL, atol=EPOCHS_TOL, err_msg=key)
