"""Twelfth audit: the linearized and centered networks (LOO sec. 2 and 4) and TK's two-layer experiment.

Each test pins behaviour that a plausible one-line slip in ``bridge.linearized``, ``bridge.two_layer``
or ``studies.two_layer`` would change without the older tests noticing, and checks it against an
independent route: a name collision built by hand, a mode read off the modules, a plain gradient
descent loop, a hand count of the 1-2-5 sequence, a refusal message.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkrobust.bridge.linearized import CenteredStandardNetwork, LinearizedNetwork, relative_magnitude
from ntkrobust.bridge.training import READ_EVERY
from ntkrobust.bridge.two_layer import OutputChange, TwoLayerConfig, log_epochs, train_full_batch
from ntkrobust.studies import two_layer
from ntkrobust.studies.two_layer import TwoLayerSettings


def _net_with_batchnorm(seed: int = 0) -> nn.Module:
    """A small float64 net whose output depends on BatchNorm's mode, with non-trivial running statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def _x(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- bridge.linearized --------------------------------------------------------------------------


def test_parameter_names_that_collide_once_dots_become_dashes_are_refused():
    """θ is keyed by the parent's parameter name with ``.`` → ``-``; ``l.0.weight`` (a Sequential's
    first layer) and ``l-0.weight`` (a module named ``l-0``) both become ``l-0-weight``. The wrapper
    must refuse them: without the check the ParameterDict would silently hold one θ for two
    parameters, and f_lin would move both layers with the same shift."""
    parent = nn.Module()
    parent.add_module("l", nn.Sequential(nn.Linear(2, 2)))
    parent.add_module("l-0", nn.Linear(2, 2))
    names = [name for name, _ in parent.named_parameters()]
    assert "l.0.weight" in names and "l-0.weight" in names  # the collision, built by hand
    with pytest.raises(ValueError, match="both map to the name"):
        LinearizedNetwork(parent)


def test_a_misspelt_stage_two_batchnorm_mode_is_refused():
    """``batchnorm`` is ``frozen`` or ``train``; anything else would fall through ``_freeze_batchnorm``
    and silently run LOO table 1's "Standard Batchnorm" variant under another name."""
    with pytest.raises(ValueError, match="frozen or train"):
        CenteredStandardNetwork(_net_with_batchnorm(), batchnorm="freeze")


def test_the_centered_standard_networks_tangent_network_is_in_eval_mode_whatever_the_wrappers_mode():
    """With ``batchnorm="train"`` the trained network runs BatchNorm on batch statistics while the
    wrapper trains; its tangent network (whose kernel is the model's, LOO sec. 4) must be an eval-mode
    copy: on one batch its output is the trained network's with running statistics (computed here by
    hand from the BatchNorm formula), not the batch-normalised one, and it is a copy."""
    net = CenteredStandardNetwork(_net_with_batchnorm(), batchnorm="train").train()
    assert net.network[1].training  # the setting under test: BatchNorm on batch statistics
    tangent = net.tangent_network()
    assert not any(module.training for module in tangent.modules())
    x = _x(6)
    layers = net.network
    bn = layers[1]
    hidden = layers[0](x)
    normalised = (hidden - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    expected = layers[3](torch.tanh(normalised))
    torch.testing.assert_close(tangent(x), expected, rtol=1e-12, atol=1e-12)
    assert tangent is not net.network and tangent[0].weight is not net.network[0].weight


def test_the_relative_magnitude_of_no_examples_is_refused_by_name():
    """The mean over an empty set is undefined: a ``ValueError`` saying so, not a ``ZeroDivisionError``."""
    model = LinearizedNetwork(_net_with_batchnorm().eval())
    with pytest.raises(ValueError, match="empty"):
        relative_magnitude(model, torch.zeros(0, 4, dtype=torch.float64))


# --- bridge.two_layer -----------------------------------------------------------------------------


@pytest.mark.parametrize(("epochs", "every"), [(0, None), (-3, None), (10, 0), (10, -1)])
def test_log_epochs_refuses_counts_below_one_by_name(epochs, every):
    """``epochs`` and ``every`` must be ≥ 1, refused with the project's message: ``every=-1`` would
    otherwise give an empty range and measure the last epoch only, and 0 would fail inside ``range``
    or ``log10`` with an unrelated message."""
    name = "epochs" if epochs < 1 else "every"
    with pytest.raises(ValueError, match=f"{name} must be >= 1"):
        log_epochs(epochs, every)


def test_a_diverged_loss_is_reported_at_its_epoch_before_any_measurement():
    """Targets of 1e20 overflow float32's squared loss at once: the loss before the first step
    (epoch 1) is already infinite. ``train_full_batch`` must name epoch 1 (not 0, an off-by-one in
    the read-back), and raise before ``on_epoch(1)`` runs: nothing is measured on a diverged net,
    even when the epoch is not a READ_EVERY multiple."""
    assert READ_EVERY > 1  # epoch 1 is read only because it is measured
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    seen: list[int] = []
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 1 \("):
        train_full_batch(
            model, torch.ones(4, 2), torch.full((4, 1), 1e20), learning_rate=0.1, epochs=3,
            on_epoch=seen.append, measure_at=[1],
        )  # fmt: skip
    assert seen == []


def test_the_experiments_default_learning_rate_is_tk_supp_c():
    """TK supp. C trains the two-layer nets "with a fixed learning rate of 10⁻²"."""
    config = TwoLayerConfig(widths=(8,), seeds=(0,), epochs=3, measure_at=(3,), anchor_epoch=1)
    assert config.learning_rate == 1e-2


def test_the_initial_copy_is_frozen_in_eval_mode_from_construction():
    """``OutputChange`` copies f₀ and freezes it: even built from a module in train mode, and before any
    ``train()``/``eval()`` call, f₀ runs on BatchNorm's running statistics (the hand formula), never
    the batch's, and has no trainable parameters."""
    initial = _net_with_batchnorm().train()
    view = OutputChange(_net_with_batchnorm(seed=1), initial)
    assert not view.initial.training
    assert not any(p.requires_grad for p in view.initial.parameters())
    x = _x(6)
    bn = initial[1]
    normalised = (initial[0](x) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(view.initial(x), initial[3](torch.tanh(normalised)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 3])
def test_targets_whose_rows_do_not_match_the_inputs_are_refused(rows):
    """One target row would broadcast against every output (a silently wrong loss); three against five
    inputs would fail deep in the loss. Both are refused up front, naming the two counts."""
    with pytest.raises(ValueError, match=f"5 inputs but {rows} targets"):
        train_full_batch(nn.Linear(2, 1), torch.zeros(5, 2), torch.zeros(rows, 1), learning_rate=0.1, epochs=1)


# --- studies.two_layer ----------------------------------------------------------------------------

NO_TRAINING = ("ntkrobust.kernels.fit_kernel_machine", "ntkrobust.bridge.two_layer.two_layer_experiment")


def test_three_measured_epochs_or_fewer_are_all_pictured():
    """Supp. fig. 1b shows three epochs: with exactly three measured, all three are shown. (The log
    spread would pick 2 for both 1/3 and 2/3 of log 5, and drop epoch 1.)"""
    assert two_layer.picture_epochs([1, 2, 5]) == [1, 2, 5]
    assert two_layer.picture_epochs([4]) == [4]


def test_an_anchor_one_epoch_past_the_end_is_refused_before_training(binary_task, refuses):
    """The boundary of ``--anchor-epoch``: epochs + 1 is already after the last epoch, refused as a
    one-line study error before the kernel machine is fitted (not a ``ValueError`` from the config
    after it)."""
    settings = TwoLayerSettings(data=binary_task, epochs=5, anchor_epoch=6)
    refuses(two_layer, settings, "--anchor-epoch 6 is after the last epoch (5)", compute=NO_TRAINING)


def test_the_memory_check_counts_each_net_with_its_initial_copy(binary_task, refuses, monkeypatch):
    """Each net is held with its f₀ copy, so the check needs twice one net's weights. A two-layer net
    of width m on 8x8 digits with k classes holds W (m x 64) and the readout (m x k), float32: the
    free memory is set to 1.5 such nets, which one copy would fit and two do not."""
    width, classes = 1000, len(binary_task.classes)
    one_net = width * (64 + classes) * 4
    monkeypatch.setattr("ntkrobust.bridge.models.available_memory", lambda: int(1.5 * one_net))
    settings = TwoLayerSettings(data=binary_task, width=(width,), epochs=5)
    refuses(two_layer, settings, "the 2 copies held at once take", compute=NO_TRAINING)


def test_a_rate_beyond_float32s_range_is_refused_before_training(binary_task, refuses):
    """The nets train in float32: a rate of 1e39 (past float32's largest, about 3.4e38) would turn
    every step into inf and fail only at the first read-back; it is refused up front by name."""
    settings = TwoLayerSettings(data=binary_task, epochs=5, lr=1e39)
    refuses(two_layer, settings, "within float32's range", compute=NO_TRAINING)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"picture_index": -1}, "--picture-index must be a whole number >= 0, got -1"),
        ({"nets": 0}, "--nets must be a whole number >= 1, got 0"),
    ],
)
def test_counts_below_their_minimum_are_refused_before_training(binary_task, refuses, fields, message):
    """``run`` checks the settings' counts itself (a study called from Python skips the parser): a
    picture index of -1 would otherwise picture the last test point under index -1, and 0 nets
    would fail in the experiment's config after the kernel machine was fitted."""
    refuses(two_layer, TwoLayerSettings(data=binary_task, epochs=5, **fields), message, compute=NO_TRAINING)


def test_the_summary_puts_each_accuracy_under_its_own_name():
    """One line per net, each number after its own label: four distinct accuracies written by hand
    in a record, so a swapped pair of keys shows."""
    net = {
        "width": 7, "seed": 3, "gradient_cosine": 0.5, "clean_accuracy": 0.875,
        "white_box_accuracy": 0.125, "ntk_attack_accuracy": 0.25, "random_accuracy": 0.625,
    }  # fmt: skip
    record = {"config": {"attack": {"method": "fgsm"}, "epochs": 9}, "nets": [net]}
    (line,) = two_layer.TwoLayerResult(record, experiment=None, figures={}).summary().splitlines()
    assert line == (
        "two-layer width 7 seed 3 after 9 epochs: gradient cosine 0.500; accuracy clean 0.875, "
        "own fgsm 0.125, NTK fgsm 0.250, random sign 0.625"
    )
