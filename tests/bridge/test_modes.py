"""Evaluations and training attacks return a net in the modes it came in, module by module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge._modes import kept_modes
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.tracking import batch_statistics, clean_accuracy, pgd_accuracy
from ntkrobust.bridge.training import TrainConfig, training_inputs


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


@pytest.fixture
def half_frozen() -> nn.Module:
    """A ResNet-18 in train mode whose first BatchNorm is held in eval mode (a frozen norm, as
    in fine-tuning): the mixture ``model.train(was_training)`` did not give back."""
    model = build_model(model_config("resnet18", (3, 8, 8), 3, width=2, seed=0)).train()
    model.bn1.eval()
    return model


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 8, 8, generator=generator), torch.arange(6) % 3


@pytest.mark.parametrize(
    "use",
    [
        lambda net, x, y: clean_accuracy(net, x, y),
        lambda net, x, y: clean_accuracy(net, x, y, batchnorm="batch"),
        lambda net, x, y: pgd_accuracy(net, x, y, AttackSpec("pgd", 0.1, step=0.05, steps=2), batchnorm="batch"),
        lambda net, x, y: training_inputs(net, x, y, "pgd", TrainConfig(eps=0.1, pgd_steps=2), seed=0),
        lambda net, x, y: training_inputs(net, x, y, "trades", TrainConfig(eps=0.1, pgd_steps=2), seed=0),
    ],
    ids=["clean", "clean-batch-statistics", "pgd-batch-statistics", "pgd-training-attack", "trades-training-attack"],
)
def test_a_net_comes_back_in_its_own_mixture_of_modes(half_frozen, use):
    before = _modes(half_frozen)
    use(half_frozen, *_data())
    assert _modes(half_frozen) == before
    assert not half_frozen.bn1.training and half_frozen.layer1[0].bn1.training  # the mixture, named


def test_batch_statistics_gives_back_the_modes_momenta_and_counts_after_an_error(half_frozen):
    before = _modes(half_frozen)
    counts = {n: b.clone() for n, b in half_frozen.named_buffers() if n.endswith("num_batches_tracked")}
    with pytest.raises(RuntimeError, match="inside"), batch_statistics(half_frozen) as net:
        assert all(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
        assert not net.layer1.training  # everything else in eval mode
        net(_data()[0])
        raise RuntimeError("inside")
    assert _modes(half_frozen) == before
    assert all(m.momentum == 0.1 for m in half_frozen.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(torch.equal(b, counts[n]) for n, b in half_frozen.named_buffers() if n in counts)


def test_kept_modes_sets_flags_without_calling_train_overrides():
    """Each flag is set as recorded, not through ``train()``: an override that would decide the
    modes again (a linearized net's parent stays in eval) is not asked."""

    class Stubborn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(2, 2)
            self.calls = 0

        def train(self, mode: bool = True) -> Stubborn:
            self.calls += 1
            return super().train(mode)

    net = Stubborn()
    net.training, net.inner.training = True, False
    calls = net.calls
    with kept_modes(net):
        net.training = net.inner.training = False
        net.inner.training = True
    assert (net.training, net.inner.training, net.calls) == (True, False, calls)
