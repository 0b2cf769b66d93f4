"""TE (Dong et al. 2022): the weight's ramp, the loss by hand, the moving averages, an epoch."""

from __future__ import annotations

import math

import pytest
import torch

from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble, te_loss, te_weight
from ntkrobust.bridge.training import TrainConfig, train_epoch


def test_the_weight_ramps_from_start_to_end():
    assert te_weight(3, 4, 8) == 0.0
    assert te_weight(4, 4, 8) == pytest.approx(300 * math.exp(-5))
    assert te_weight(6, 4, 8) == pytest.approx(300 * math.exp(-5 * 0.25))
    assert te_weight(8, 4, 8) == te_weight(20, 4, 8) == 300.0


def test_the_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    by_hand = 0.0
    for i in range(2):
        z = logits[i].exp() / logits[i].exp().sum()
        by_hand += -math.log(z[y[i]]) + 10.0 * float(((z - targets[i]) ** 2).sum()) / 3
    assert float(te_loss(logits, y, targets, 10.0)) == pytest.approx(by_hand, rel=1e-12)
    plain = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    assert float(te_loss(logits, y, None, 10.0)) == float(te_loss(logits, y, targets, 0.0)) == float(plain)


def test_the_averages_move_with_momentum_and_are_normalised():
    ensemble = TemporalEnsemble.empty(4, 3, start=1, end=2)
    first = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    second = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    index = torch.tensor([1, 3])
    ensemble.update(index, first)
    targets = ensemble.update(index, second)
    p1, p2 = first.softmax(1), second.softmax(1)
    expected = 0.9 * 0.1 * p1 + 0.1 * p2
    torch.testing.assert_close(ensemble.averages[index], expected)
    torch.testing.assert_close(targets, expected / expected.sum(1, keepdim=True))
    assert float(ensemble.averages[[0, 2]].abs().sum()) == 0  # examples not drawn keep 0


def test_an_epoch_updates_the_averages_only_once_the_ramp_started():
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 4
    model = build_model(model_config("fc1", (1, 8, 8), 4, width=16, seed=0))
    config = TrainConfig(
        mode="te", epochs=3, eps=0.1, pgd_step=0.05, pgd_steps=2, batch_size=10, lr=0.1, te_start=2, te_end=3
    )
    ensemble = TemporalEnsemble.empty(40, 4, 2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = train_epoch(model, optimizer, x, y, config, 1, ensemble=ensemble)
    assert float(ensemble.averages.abs().sum()) == 0 and math.isfinite(first["train_loss"])
    train_epoch(model, optimizer, x, y, config, 2, first_step=4, ensemble=ensemble)
    assert torch.allclose(ensemble.averages.sum(1), torch.full((40,), 0.1, dtype=torch.float64))


@pytest.mark.parametrize(("start", "end", "epochs"), [(None, None, 3), (2, 2, 3), (1, 4, 3), (0, 2, 3)])
def test_a_te_run_without_room_for_its_ramp_is_refused(start, end, epochs):
    with pytest.raises(ValueError, match="te ramps its weight"):
        TrainConfig(mode="te", epochs=epochs, te_start=start, te_end=end)


def test_the_weight_after_the_ramp_is_configurable_and_checked(tmp_path):
    from ntkrobust.bridge.data import load_dataset
    from ntkrobust.bridge.experiment import TrackingConfig, _TrainingRun
    from ntkrobust.bridge.runfolder import RunFolder

    with pytest.raises(ValueError, match="invalid TE weight"):
        TrainConfig(mode="te", epochs=3, te_start=1, te_end=2, te_weight=-1.0)
    data = load_dataset("digits", n_train=50, n_test=20)
    config = model_config("fc1", data.image_shape, 10, width=8)
    train = TrainConfig(mode="te", epochs=3, te_start=1, te_end=2, te_weight=30.0)
    tracking = TrackingConfig(eps=0.1, step=0.05, steps=2, probe=0)
    run = _TrainingRun(
        RunFolder(tmp_path), build_model(config), config, data, train, tracking,
        device=torch.device("cpu"), kernel_network=None, relative_magnitude=None,
    )  # fmt: skip
    assert run.ensemble is not None and run.ensemble.weight(5) == 30.0
