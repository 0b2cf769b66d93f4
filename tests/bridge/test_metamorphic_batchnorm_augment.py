"""Metamorphic tests of the BatchNorm machinery, the crop-flip augmentation, temporal ensembling and
the initialisations: each runs a function twice, on inputs and on a transformation of them, and
checks the relation the docstrings imply between the two results.

- ``bridge.global_batchnorm`` (shared path, one process: conftest's ``one_process_sharing``): the
  normalisation commutes with a permutation of the rows and of the spatial positions; a per-channel
  shift, a per-channel sign and a common scale s with ε → s²ε leave it (the shift and scale moving
  the running statistics by their closed form); Chan's combination is associative and ignores the
  order of the shares and empty ones; k steps of momentum m give the closed-form running statistics;
- ``bridge.tracking.batch_statistics`` ("w/o buffer") is eval mode ("w buffer") once each
  BatchNorm's running statistics are its batch's, is a net built without running statistics in
  eval mode, is the converted net's shared path, and is ``with_batch_statistics``'s frozen copy on
  that batch (which is then per example); an evaluation with it between two "w buffer" ones leaves
  the second, whatever batch it saw (a bug fixed with this file: see that test);
- ``bridge.training``: standard training is blind to the running statistics (FGSM, attacking in
  eval mode, is not); TE of weight 0, or before its ramp, is PGD-AT; TE's clean targets of an
  example do not depend on its batch-mates; TE's averages follow the data's order and a constant
  prediction is its own target; a full-batch epoch with one shared crop-flip draw ignores
  the order of the data (per-example draws follow the positions, so they do not);
- ``bridge.augment``: the crop-flip outputs of an image over all draws are closed under mirroring
  (162 of a colour image, 81 of a symmetric or a grey one); zero padding makes it the identity or a
  mirror; the dtype changes nothing but the rounding;
- ``bridge.initialisation``: the re-draw depends on the generator alone, not on the weights it
  replaces; NTK layers are linear in (W_std, b_std) and have their documented output variance;
- ``bridge.batchnorm_views``: a run tracked the other way round gives the same per-statistics views;
  ``statistics_groups`` maps groups one by one.

Not repeated (pinned in test_metamorphic_training, test_global_batchnorm*, test_augment*,
test_temporal_ensembling*, test_initialisation_audit): k emulated ranks against one BatchNorm, flat
cuts of a batch combined, cumulative (momentum None) averages, augmentation linearity, channel and
position rules of the draws, TE's closed form, per-example and per-class updates, the TE ramp,
relabelled and reordered full-batch epochs without augmentation, He draws per fan-in, width doubling.

Tolerances: float64 throughout; 1e-12 where the two runs take the same operations in another order
or scaled, 1e-10 after whole epochs of SGD, exact where pixels are only moved or the very same
operations run; the statistical check at 4 standard errors.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_augment_init import _images
from test_batchnorm_views_audit import _records, _run
from test_metamorphic_training import _assert_close, _epochs, _te_config
from test_training_audit import _data as tanh_data
from test_training_audit import _net as tanh_net
from torch import nn

from ntkrobust.bridge import augment as augment_module
from ntkrobust.bridge import global_batchnorm
from ntkrobust.bridge.augment import CROP_PADDING, augment
from ntkrobust.bridge.batchnorm_views import STATISTICS, statistics_groups, statistics_views
from ntkrobust.bridge.global_batchnorm import combined_moments, convert, local_moments, shared_batch
from ntkrobust.bridge.initialisation import initialise
from ntkrobust.bridge.models import NTKConv2d, NTKLinear, build_model, model_config, without_running_statistics
from ntkrobust.bridge.run_groups import RunGroup
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble
from ntkrobust.bridge.tracking import batch_statistics
from ntkrobust.bridge.training import _te_regulariser

TOL = 1e-12
EPOCHS_TOL = 1e-10


def _layer(eps: float = 1e-5, momentum: float | None = 0.3, channels: int = 3, seed: int = 0) -> nn.Module:
    """A converted BatchNorm2d in float64 with a non-trivial affine part, in train mode."""
    generator = torch.Generator().manual_seed(seed)
    layer = convert(nn.BatchNorm2d(channels, eps=eps, momentum=momentum).double()).train()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=generator)
        layer.bias.uniform_(-0.5, 0.5, generator=generator)
    return layer


def _batch(shape: tuple[int, ...], seed: int, loc: float = 2.0, scale: float = 3.0) -> torch.Tensor:
    return loc + scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _shared(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with shared_batch():
        return layer(x)


# -- GlobalBatchNorm's shared path -----------------------------------------------------------------


@pytest.mark.usefixtures("one_process_sharing")
def test_the_shared_path_commutes_with_a_permutation_of_the_rows_and_of_the_positions():
    """``local_moments`` takes the count, mean and squared deviations "over every axis but the
    channel axis 1": the statistics are symmetric functions of the rows and of the positions. So
    the batch given with its rows permuted, or with its H·W positions permuted (the same way in
    every row and channel), normalises to the first output permuted alike, moves the running
    statistics to the same values, and gives the affine parameters the same gradients (the loss
    weights permuted with the rows). A reduction over the wrong axes, or a row paired with another's
    statistics, breaks it. 7x3x4x5 in float64, 1e-12."""
    x = _batch((7, 3, 4, 5), seed=1)
    weights = _batch(x.shape, seed=2, loc=0.0, scale=1.0)
    rows = torch.as_tensor(np.random.default_rng(0).permutation(7))
    positions = torch.as_tensor(np.random.default_rng(1).permutation(20))

    def moved(t: torch.Tensor, how: str) -> torch.Tensor:
        if how == "rows":
            return t[rows]
        return t.flatten(2)[:, :, positions].reshape(t.shape) if how == "positions" else t

    results = {}
    for how in ("none", "rows", "positions"):
        layer = _layer()
        out = _shared(layer, moved(x, how))
        grads = torch.autograd.grad((out * moved(weights, how)).sum(), [layer.weight, layer.bias])
        results[how] = (out, grads, layer.running_mean.clone(), layer.running_var.clone())
    base = results["none"]
    for how in ("rows", "positions"):
        out, grads, mean, var = results[how]
        _assert_close(out, moved(base[0], how))
        for found, expected in zip(grads, base[1], strict=True):
            _assert_close(found, expected)
        _assert_close(mean, base[2])
        _assert_close(var, base[3])


@pytest.mark.usefixtures("one_process_sharing")
def test_per_channel_shifts_signs_and_a_scale_with_its_eps_leave_the_normalisation():
    """The shared path is out = (x − μ)/√(σ² + ε)·w + b (module docstring: the biased σ² over the
    whole batch, ε the layer's). So x_c → s·σ_c·x_c + β_c, with σ_c = ±1, β_c any shift and
    ε → s²ε, gives out_c → σ_c·(out_c − b_c) + b_c: the shift leaves (x − μ), the sign flips it, and
    s cancels between (x − μ) and √(σ² + ε) only when ε scales with s² (an ε outside the root, or
    none, shows here: ε = 0.5 is large). The running statistics after one step from (0, 1) follow:
    running_mean → s·σ_c·running_mean + m·β_c, running_var → s²·(running_var − (1 − m)) + (1 − m).
    Float64, 1e-12 (relative to the numbers' size)."""
    s, momentum = 2.5, 0.3
    signs = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    shifts = torch.tensor([10.0, -4.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    x = _batch((6, 3, 3, 3), seed=3)
    layer, other = _layer(eps=0.5, momentum=momentum), _layer(eps=0.5 * s * s, momentum=momentum)
    out = _shared(layer, x)
    moved = _shared(other, s * signs * x + shifts)
    bias = layer.bias.detach().view(1, 3, 1, 1)
    _assert_close(moved, signs * (out - bias) + bias)
    _assert_close(other.running_mean, s * signs.flatten() * layer.running_mean + momentum * shifts.flatten())
    _assert_close(other.running_var, s * s * (layer.running_var - (1 - momentum)) + (1 - momentum))


def _row(mean: torch.Tensor, variance: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The ``local_moments`` row of a union whose combined moments are (mean, biased variance, n)."""
    return torch.cat([n.view(1), mean, n * variance])


def test_chans_combination_is_associative_and_ignores_the_order_of_the_shares_and_empty_ones():
    """``combined_moments`` gives "the mean and biased variance of the union of the row sets": the
    union does not depend on how it is grouped or ordered. So shares of 1, 4, 0, 2 and 6 rows,
    combined in rank order, in reverse order, without the empty share, or as a tree (the first two
    shares combined, written back as a row (N, μ, N·σ²), then combined with the rest: what a
    two-level all-reduce would do) give the same moments, and the whole batch's. A weighting per
    share instead of per count, or N − 1 anywhere, shows with the unequal shares. 1e-12."""
    x = _batch((13, 4, 2, 3), seed=4, loc=5.0)
    cuts = [0, 1, 5, 5, 7, 13]
    rows = torch.stack([local_moments(x[a:b]) for a, b in itertools.pairwise(cuts)])
    flat = combined_moments(rows)
    variance, mean = torch.var_mean(x, dim=[0, 2, 3], unbiased=False)
    _assert_close(flat[0], mean)
    _assert_close(flat[1], variance)
    assert float(flat[2]) == 13 * 6
    tree = combined_moments(torch.stack([_row(*combined_moments(rows[:2])), *rows[2:]]))
    for found in (combined_moments(rows.flip(0)), combined_moments(rows[[0, 1, 3, 4]]), tree):
        for a, b in zip(found, flat, strict=True):
            _assert_close(a, b)


@pytest.mark.usefixtures("one_process_sharing")
@pytest.mark.parametrize("momentum", [0.3, 1.0])
def test_k_shared_steps_give_the_closed_form_running_statistics(momentum):
    """``_update_running_statistics``: running ← (1 − m)·running + m·batch, the variance unbiased
    (N/(N − 1)). Unrolled over k steps from r₀: r_k = (1 − m)^k·r₀ + Σ_j m(1 − m)^(k−j)·b_j. Four
    batches of 5, 2, 9 and 3 rows from a running state that is not torch's (0, 1), so that r₀'s
    weight shows; m = 1 keeps the last batch's alone. A biased variance, or N − 1 taken from the
    rows instead of rows × positions, breaks it. 1e-12."""
    layer = _layer(momentum=momentum, channels=2)
    start_mean = torch.tensor([0.7, -1.2], dtype=torch.float64)
    start_var = torch.tensor([2.0, 0.4], dtype=torch.float64)
    layer.running_mean.copy_(start_mean)
    layer.running_var.copy_(start_var)
    batches = [_batch((n, 2, 2, 2), seed=10 + n, loc=float(n)) for n in (5, 2, 9, 3)]
    for x in batches:
        _shared(layer, x)
    k = len(batches)
    expected_mean, expected_var = (1 - momentum) ** k * start_mean, (1 - momentum) ** k * start_var
    for j, x in enumerate(batches, start=1):
        variance, mean = torch.var_mean(x, dim=[0, 2, 3], unbiased=True)
        expected_mean = expected_mean + momentum * (1 - momentum) ** (k - j) * mean
        expected_var = expected_var + momentum * (1 - momentum) ** (k - j) * variance
    _assert_close(layer.running_mean, expected_mean)
    _assert_close(layer.running_var, expected_var)
    assert int(layer.num_batches_tracked) == k


# -- "w buffer" and "w/o buffer" ---------------------------------------------------------------------


def _resnet(running_stats: bool = True) -> nn.Module:
    net = build_model(model_config("resnet18", (3, 8, 8), 4, width=2, seed=3, running_stats=running_stats)).double()
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.5, 0.5, generator=generator)
    return net


def test_running_statistics_equal_to_the_batchs_make_the_w_buffer_view_the_w_o_buffer_view(monkeypatch):
    """``batch_statistics``: "eval mode except that every BatchNorm normalises with the statistics
    of the batch it sees and leaves its running statistics as they are" (RAT's "w/o buffer"); eval
    mode ("w buffer") normalises with the running ones. So a ResNet whose every BatchNorm holds as
    running statistics the mean and biased variance of what it sees in the "w/o buffer" forward
    gives in eval mode the "w/o buffer" outputs (layer by layer the inputs agree); the net built
    from the same seed without running statistics (``without_running_statistics``: "normalises each
    batch with the batch's own statistics in ... evaluation") gives them in eval mode too; and the
    converted net (``GlobalBatchNorm``) inside ``shared_batch`` of one process gives them as well,
    its buffers and batch count left as they were. The unbiased variance as running statistics, or
    a "w/o buffer" forward in plain eval mode, breaks it. ResNet-18 of width 2 on 8x8, float64,
    1e-10 (18 layers deep)."""
    net = _resnet()
    x = _images(6, 3, side=8, seed=5).double()
    seen: dict[nn.Module, torch.Tensor] = {}
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, args[0].detach())) for m in norms]
    before = copy.deepcopy(net.state_dict())
    with torch.no_grad(), batch_statistics(net):
        without = net(x)
    for hook in hooks:
        hook.remove()
    for key, value in before.items():
        assert torch.equal(net.state_dict()[key], value), key
    assert net.training  # kept_modes: the modes it had (a built net is in train mode)
    converted = convert(copy.deepcopy(net))
    with monkeypatch.context() as patch:
        patch.setattr(global_batchnorm, "sharing", lambda: True)
        patch.setattr(global_batchnorm, "_gather_over_processes", lambda local: local.unsqueeze(0))
        with torch.no_grad(), batch_statistics(converted), shared_batch():
            _assert_close(converted(x), without, EPOCHS_TOL)
    for key, value in before.items():
        assert torch.equal(converted.state_dict()[key], value), key
    free = _resnet(running_stats=False).eval()
    with torch.no_grad():
        _assert_close(free(x), without, EPOCHS_TOL)
        for m in norms:
            variance, mean = torch.var_mean(seen[m], dim=[0, 2, 3], unbiased=False)
            m.running_mean.copy_(mean)
            m.running_var.copy_(variance)
        _assert_close(net.eval()(x), without, EPOCHS_TOL)


@pytest.mark.parametrize("converted", [False, True])
def test_a_w_o_buffer_evaluation_of_any_batch_leaves_the_w_buffer_net(monkeypatch, converted):
    """``batch_statistics`` "leaves its running statistics as they are ... its batch count too": an
    evaluation with batch statistics between two with running statistics must not change the
    second, whatever batch it saw. Here the batch in between holds a row with an inf and one with a
    NaN pixel (a diverging net's activations, or an attack's non-finite examples, look alike to
    BatchNorm): its statistics are not finite, and "momentum 0 keeps the running ones: running ←
    (1 − 0)·running + 0·batch" does not hold in floating point (0·inf and 0·NaN are NaN). For a
    plain BatchNorm and for a converted one on the shared path (one process). The "w buffer"
    outputs after it are the ones before, bit for bit, and so is the state dict.

    Before the fix (the commit after 7c0d998) the running mean and variance became NaN, and every
    later "w buffer" evaluation, attack in eval mode and training step with them (running ←
    (1 − m)·NaN + m·batch) stayed NaN. The fix restores the buffers on leaving, as the batch count
    already was."""
    x, y = tanh_data()
    net = tanh_net(batchnorm=True, seed=3)
    _epochs(net, x, y, _te_config(mode="standard", batch_size=4), epochs=(1,))
    if converted:
        net = convert(net)
        monkeypatch.setattr(global_batchnorm, "sharing", lambda: True)
        monkeypatch.setattr(global_batchnorm, "_gather_over_processes", lambda local: local.unsqueeze(0))
    before = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        first = net.eval()(x)
    odd = x.clone()
    odd[1, 0, 0, 0], odd[4, 0, 1, 2] = float("inf"), float("nan")
    with torch.no_grad(), batch_statistics(net), shared_batch(converted):
        net(odd)
    for key, value in before.items():
        assert torch.equal(net.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(net(x), first)


def test_a_copy_frozen_at_a_batchs_statistics_is_the_w_o_buffer_net_on_it_and_then_per_example():
    """``with_batch_statistics(model, x)``: "a copy of model in eval mode whose BatchNorm layers use
    the statistics of x" (the running variance rescaled from torch's unbiased to the biased one that
    normalisation divides by). So on x itself it gives what ``batch_statistics`` ("w/o buffer")
    gives, for a ResNet with running statistics and for its twin without them; the model itself is
    left as it was; and, in eval mode with those statistics frozen, the copy is per example: any
    rows of x, reordered, give the same rows of its output. Without the (n − 1)/n rescaling the
    first relation breaks. Float64, 1e-10."""
    from ntkrobust.bridge._entk_plan import with_batch_statistics

    x = _images(6, 3, side=8, seed=9).double()
    rows = torch.tensor([4, 1, 5])
    for running in (True, False):
        net = _resnet(running_stats=running)
        before = copy.deepcopy(net.state_dict())
        with torch.no_grad(), batch_statistics(net):
            without = net(x)
        frozen = with_batch_statistics(net, x)
        with torch.no_grad():
            _assert_close(frozen(x), without, EPOCHS_TOL)
            _assert_close(frozen(x[rows]), without[rows], EPOCHS_TOL)
        assert net.state_dict().keys() == before.keys() and net.training
        for key, value in before.items():
            assert torch.equal(net.state_dict()[key], value), key


@pytest.mark.parametrize("mode", ["standard", "fgsm"])
def test_standard_training_is_blind_to_the_running_statistics_and_an_eval_mode_attack_is_not(mode):
    """``bridge.training``: "the update runs in train mode", where BatchNorm normalises with the
    batch's statistics whether or not it keeps running ones; "adversarial examples are made in eval
    mode (BatchNorm running statistics)". So two epochs of standard training of a BatchNorm net and
    of its twin without running statistics (``without_running_statistics``) end at the same
    parameters; FGSM's examples, made with the running statistics in one net and the batch's in the
    other, take them apart. A training step in eval mode breaks the first. Float64, 1e-10."""
    x, y = tanh_data()
    nets = [tanh_net(batchnorm=True, seed=5), without_running_statistics(tanh_net(batchnorm=True, seed=5))]
    config = _te_config(mode=mode, batch_size=4)
    for net in nets:
        _epochs(net, x, y, config)
    parameters = [dict(net.named_parameters()) for net in nets]
    if mode == "standard":
        for name, value in parameters[0].items():
            _assert_close(parameters[1][name], value, EPOCHS_TOL)
    else:
        assert float((parameters[1]["1.weight"] - parameters[0]["1.weight"]).detach().abs().max()) > 1e-6


# -- temporal ensembling in training -----------------------------------------------------------------


def test_te_of_weight_zero_or_before_its_ramp_trains_as_pgd_and_keeps_the_batchnorm_buffers():
    """``temporal_ensembling``: the loss is CE + w(e)·(1/C)Σ_c(softmax − t)², "before s the loss is
    PGD-AT's", and PGD maximises the same loss; the clean predictions are taken in eval mode. So a
    BatchNorm net trained two epochs in mode te with TE weight 0, or two epochs of a run whose ramp
    starts at epoch 3, takes PGD-AT's steps: the same parameters and running
    statistics, and the same batch count (a clean forward in train mode would add to it). TE's
    averages are still updated in the first case and untouched in the second. Exact: the very same
    operations and seeds."""
    x, y = tanh_data()
    reference = tanh_net(batchnorm=True, seed=2)
    _epochs(reference, x, y, _te_config(mode="pgd", epochs=3))
    cases = [
        (_te_config(te_weight=0.0), TemporalEnsemble.empty(len(y), 3, 1, 2, maximum=0.0)),
        (_te_config(epochs=4, te_start=3, te_end=4), TemporalEnsemble.empty(len(y), 3, 3, 4)),
    ]
    for config, ensemble in cases:
        net = tanh_net(batchnorm=True, seed=2)
        _epochs(net, x, y, config, ensemble=ensemble)
        for (name, a), (_, b) in zip(reference.state_dict().items(), net.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
        assert (float(ensemble.averages.abs().sum()) > 0) == (config.te_start == 1)


def test_te_targets_of_an_example_do_not_depend_on_its_batch_mates():
    """``_te_regulariser`` takes TE's clean predictions "in eval mode, as the authors' code": with
    running statistics, each example's prediction is its own. So the targets of 8 examples updated
    as one batch are those of the two halves updated apart (and of the batch reversed, reversed),
    the net stays in train mode and its BatchNorm buffers do not move. A "w/o buffer" net
    (normalising with the batch's statistics in eval mode too) gives other targets to a half: the
    relation is the running statistics'. 1e-12."""
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(8, 1, 3, 3, generator=generator, dtype=torch.float64)
    index = torch.arange(8)

    def targets(net: nn.Module, cuts: list[torch.Tensor]) -> torch.Tensor:
        ensemble = TemporalEnsemble.empty(8, 3, 1, 2)
        found = torch.empty(8, 3, dtype=torch.float64)
        for rows in cuts:
            t, weight = _te_regulariser(net, x[rows], index[rows], ensemble, 2)
            assert t is not None and weight == ensemble.weight(2)
            found[rows] = t
        return found

    net = tanh_net(batchnorm=True, seed=1).train()
    net[2].running_mean.uniform_(-0.5, 0.5, generator=generator)
    before = copy.deepcopy(net.state_dict())
    whole = targets(net, [index])
    _assert_close(targets(net, [index[:4], index[4:]]), whole)
    _assert_close(targets(net, [index.flip(0)]), whole)
    assert net.training and all(m.training for m in net.modules())
    for key, value in before.items():
        assert torch.equal(net.state_dict()[key], value), key
    free = without_running_statistics(tanh_net(batchnorm=True, seed=1)).train()
    assert not torch.allclose(targets(free, [index[:4], index[4:]]), targets(free, [index]), rtol=0, atol=1e-6)


class _Frozen(nn.Module):
    """A linear classifier that SGD cannot move: its weights are buffers, and its one parameter
    enters the output times 0 (a zero gradient, so momentum SGD with weight decay keeps it 0)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(12)
        self.register_buffer("weight", torch.randn(3, 9, generator=generator, dtype=torch.float64))
        self.still = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight) + 0.0 * self.still


def test_te_averages_are_indexed_like_the_data_and_a_constant_prediction_is_its_own_target():
    """``train_epoch``: ``ensemble`` "holds TE's per-example averages, indexed like x", each
    example's updated when its mini-batch is drawn. With a net whose predictions never change, two
    epochs in batches of 4 (a last batch of 2) fold each example's one prediction p_i in twice:
    z_i = (1 − α)(1 + α)·p_i, so the target z_i/Σ_c z_ic is p_i itself. The same data given in
    another order (labels with it) then holds the same averages in that order: row j of the second
    run's is row π(j) of the first's. Averages kept by shuffled position instead of by example
    break the second relation. 1e-12."""
    x, y = tanh_data()
    order = torch.as_tensor(np.random.default_rng(7).permutation(len(y)))
    config = _te_config(epochs=2, te_start=1, te_end=2)
    averages = []
    for data, labels in ((x, y), (x[order], y[order])):
        ensemble = TemporalEnsemble.empty(len(labels), 3, 1, 2, maximum=config.te_weight)
        _epochs(_Frozen(), data, labels, config, ensemble=ensemble)
        averages.append(ensemble.averages)
    with torch.no_grad():
        p = F.softmax(_Frozen()(x), dim=1)
    alpha = ensemble.momentum
    _assert_close(averages[0], (1 - alpha) * (1 + alpha) * p)
    _assert_close(averages[1], averages[0][order])
    _assert_close(averages[0] / averages[0].sum(1, keepdim=True), p)


# -- augmentation --------------------------------------------------------------------------------------


def _outputs(x: torch.Tensor, copies: int = 3000, seed: int = 21) -> torch.Tensor:
    """The distinct crop-flip outputs of one image over ``copies`` per-example draws, flattened."""
    return torch.unique(augment(x.expand(copies, -1, -1, -1).contiguous(), seed=seed).flatten(1), dim=0)


def _as_set(rows: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(row) for row in rows.tolist()}


def test_the_crop_flip_outputs_of_an_image_are_closed_under_mirroring():
    """``augment``: zero padding of 4 on each side, a crop at an offset drawn uniformly from 0..8 in
    each direction, a left-right flip with probability 1/2 for colour images only. Mirroring the
    image maps the draw (top, left, flip) to (top, 8 − left, flip) and back, so over all draws the
    outputs of the mirrored image, mirrored, are the image's own: 9·9·2 = 162 distinct ones for a
    generic colour image (3000 draws meet all), 81 for a left-right symmetric image (its flip is
    another offset's crop), whose set is then closed under mirroring, and for a grey image (never
    flipped). Offsets from 0..7 only, or an asymmetric padding, break it. Exact: pixels are
    only moved."""
    x = _images(1, 3, side=16, seed=6).double()
    mine, mirrored = _outputs(x), _outputs(x.flip(-1))
    assert mine.shape[0] == (2 * CROP_PADDING + 1) ** 2 * 2
    assert _as_set(mine) == _as_set(mirrored.view(-1, 3, 16, 16).flip(-1).flatten(1))
    symmetric = torch.cat([x[..., :8], x[..., :8].flip(-1)], dim=-1)
    found = _outputs(symmetric)
    assert found.shape[0] == (2 * CROP_PADDING + 1) ** 2
    assert _as_set(found) == _as_set(found.view(-1, 3, 16, 16).flip(-1).flatten(1))
    grey = _outputs(x[:, :1])
    assert grey.shape[0] == (2 * CROP_PADDING + 1) ** 2
    assert _as_set(grey) == _as_set(_outputs(x[:, :1].flip(-1)).view(-1, 1, 16, 16).flip(-1).flatten(1))


def test_without_padding_crop_flip_is_the_identity_or_the_mirror_and_the_dtype_only_rounds(monkeypatch):
    """``augment`` pads by ``CROP_PADDING`` and crops back "at a random offset" from 0 to twice the
    padding: with no padding the only offset is 0, so every colour example comes back as itself or
    its mirror image (both occur in 12 draws), every grey one as itself. A padding or offset range
    fixed elsewhere than ``CROP_PADDING`` breaks it. And the draws come from the seed alone, so a
    float32 batch augments to the float64 batch's result rounded, shape and dtype kept. Exact."""
    x = _images(12, 3, seed=7).double()
    with monkeypatch.context() as patch:
        patch.setattr(augment_module, "CROP_PADDING", 0)
        out = augment(x, seed=3)
        assert torch.equal(augment(x[:, :1], seed=3), x[:, :1])
    same = [torch.equal(out[i], x[i]) for i in range(12)]
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(12)]
    assert all(a or b for a, b in zip(same, mirrored, strict=True)) and any(same) and any(mirrored)
    single = augment(x.float(), seed=5)
    assert single.dtype == torch.float32 and single.shape == x.shape
    assert torch.equal(single, augment(x, seed=5).float())


class _Tiny(nn.Sequential):
    def __init__(self, seed: int):
        torch.manual_seed(seed)
        super().__init__(nn.Flatten(), nn.Linear(3 * 16 * 16, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
        self.double()


@pytest.mark.parametrize("mode", ["standard", "fgsm"])
def test_a_full_batch_epoch_with_one_shared_crop_flip_ignores_the_order_of_the_data(mode):
    """``augment_shared`` draws "one offset and one flip for the whole mini-batch", seeded by
    (seed, step) alone; with one batch per epoch the loss is the mean over all points, BatchNorm's
    statistics are the whole batch's and FGSM steps per point: so 10 colour 16x16 images given in
    another order, labels permuted with them, train two epochs to the same weights and running
    statistics. Per-example draws belong to the batch positions (``augment``), so the same data
    reordered then takes other crops: the weights differ. A shared draw applied per position, or
    labels left unpermuted by the augmentation, breaks the first. Float64, 1e-10."""
    x = _images(10, 3, seed=8).double()
    y = torch.arange(10) % 3
    order = torch.as_tensor(np.random.default_rng(5).permutation(10))
    for shared in (True, False):
        config = _te_config(mode=mode, batch_size=13, augment="crop-flip", augment_shared=shared, lr=0.05)
        nets = [_Tiny(seed=1), _Tiny(seed=1)]
        _epochs(nets[0], x, y, config)
        _epochs(nets[1], x[order], y[order], config)
        pairs = list(zip(nets[0].state_dict().items(), nets[1].state_dict().items(), strict=True))
        if shared:
            for (name, a), (_, b) in pairs:
                if a.is_floating_point():
                    _assert_close(b, a, EPOCHS_TOL)
                else:
                    assert torch.equal(a, b), name
        else:
            assert float((nets[1][1].weight - nets[0][1].weight).detach().abs().max()) > 1e-6


# -- initialisation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["normal", "truncated-normal", "uniform"])
def test_the_redraw_depends_on_the_generator_alone_not_on_the_weights_it_replaces(name):
    """``initialise`` "re-draws every conv and linear layer" from the generator it is given, and
    ``build_model`` initialises "from config.seed" (``torch.Generator().manual_seed(seed)``). So a
    ResNet built from seed 9 with torch's defaults and then re-drawn from a generator of seed 5 holds
    the conv and linear weights of the ResNet built from seed 5 with that initialisation (a draw
    from the global RNG, which ``build_model`` seeds with the config's seed, would differ), zero
    biases, and BatchNorm's weight 1 and bias 0 from either. Exact."""
    drawn = build_model(model_config("resnet18", (3, 8, 8), 4, width=2, seed=5, init=name))
    redrawn = initialise(
        build_model(model_config("resnet18", (3, 8, 8), 4, width=2, seed=9)), name, torch.Generator().manual_seed(5)
    )
    other = build_model(model_config("resnet18", (3, 8, 8), 4, width=2, seed=9))
    for (key, a), (_, b), (_, c) in zip(
        drawn.state_dict().items(), redrawn.state_dict().items(), other.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key
        if key.endswith("weight") and a.dim() > 1:
            assert not torch.equal(a, c), key  # the defaults of seed 9 were replaced
    for module in redrawn.modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and module.bias is not None:
            assert float(module.bias.detach().abs().sum()) == 0


def test_ntk_layers_are_linear_in_w_std_and_b_std_and_have_their_documented_variance():
    """``NTKLinear``: W_std/√fan_in · W h + b_std · b with W, b ~ N(0, 1) (``NTKConv2d`` alike, fan_in
    = channels · 9). So for one draw the output is linear in (W_std, b_std): f(a, b) = a·f(1, 0) +
    b·f(0, 1) (1e-12); and over 20000 outputs its variance is W_std²·|h|²/fan_in + b_std² (for the
    convolution, at an interior position, the sum of the squared 3x3 patch), within 4 standard
    errors of a sample variance (σ²·4·√(2/n)). A √ missing from the fan, or b_std squared in the
    forward pass, shows."""
    h = torch.rand(2, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    patch = torch.rand(1, 4, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for build, inputs, fan, energy in (
        (lambda a, b: NTKLinear(64, 20000, W_std=a, b_std=b), h, 64, (h * h).sum(1)),
        (lambda a, b: NTKConv2d(4, 20000, W_std=a, b_std=b), patch, 36, (patch[:, :, 1:4, 1:4] ** 2).sum((1, 2, 3))),
    ):

        def out(a: float, b: float, build=build, inputs=inputs) -> torch.Tensor:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(3)
                layer = build(a, b).double()
            with torch.no_grad():
                result = layer(inputs)
            return result[:, :, 2, 2] if result.dim() == 4 else result

        _assert_close(out(1.5, 0.3), 1.5 * out(1.0, 0.0) + 0.3 * out(0.0, 1.0))
        found = out(1.5, 0.3)
        expected = 1.5**2 * energy / fan + 0.3**2
        for row in range(found.shape[0]):
            n = found.shape[1]
            assert float(found[row].var()) == pytest.approx(float(expected[row]), rel=4 * math.sqrt(2 / n))


# -- RAT's two views of a run ----------------------------------------------------------------------------


def _numbers(view) -> list:
    return [(record["step"], record["clean"]) for record in view.kernel_records]


def test_a_run_tracked_the_other_way_round_gives_the_same_views_and_groups_map_one_by_one():
    """``statistics_views``: one view per statistics, "whose kernel records ... are that
    statistics'", labelled with it; the first statistics' numbers at the records' top level, the
    other's under ``<mode>_statistics``. So a run tracked ["running", "batch"] and the same run
    tracked ["batch", "running"] (its records' two levels swapped) give the same view of each
    statistics: label, ``statistics`` and numbers, in the history's order. And
    ``statistics_groups`` expands "every group" on its own: the groups of two runs expanded together
    are the two expanded apart, concatenated, in either order. Exact."""
    records = _records()
    swapped = [
        {"step": r["step"], "file": r["file"], **r["batch_statistics"], "running_statistics": {"clean": r["clean"]}}
        for r in records
    ]
    first = statistics_views(_run(["running", "batch"], records=records))
    second = statistics_views(_run(["batch", "running"], records=swapped))
    assert [v.statistics for v in first] == ["running", "batch"]
    assert [v.statistics for v in second] == ["batch", "running"]
    for view, other in zip(first, second[::-1], strict=True):
        assert view.label == other.label == f"run, {STATISTICS[view.statistics]}"
        assert _numbers(view) == _numbers(other)
    groups = [
        RunGroup(Path("a"), "a", [_run(["running", "batch"], label="a"), _run(["running", "batch"], label="a2")]),
        RunGroup(Path("b"), "b", [_run(["batch"], label="b")]),
    ]
    for order in (groups, groups[::-1]):
        together = statistics_groups(order)
        apart = [g for group in order for g in statistics_groups([group])]
        assert [(g.label, [r.label for r in g.runs]) for g in together] == [
            (g.label, [r.label for r in g.runs]) for g in apart
        ]
    assert len(statistics_groups(groups)) == 3


def test_the_views_of_a_run_are_their_own_views():
    """``statistics_views`` of a view is that view: expanded again, the first view (whose records
    still hold the other statistics) became two, "run, BatchNorm running stats, BatchNorm running
    stats" and "run, BatchNorm running stats, BatchNorm batch stats" (round 12's smell)."""
    views = statistics_views(_run(["running", "batch"], records=_records()))
    again = [expanded for view in views for expanded in statistics_views(view)]
    assert [(v.label, v.statistics, _numbers(v)) for v in again] == [
        (v.label, v.statistics, _numbers(v)) for v in views
    ]
