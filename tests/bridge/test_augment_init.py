"""Crop-flip augmentation (per example, shared, seeded) and the initialisations of RAT app. B."""

from __future__ import annotations

import math

import pytest
import torch

from ntkrobust.bridge.augment import CROP_PADDING, augment, check_augmentation
from ntkrobust.bridge.initialisation import TRUNCATED_STD_CORRECTION, initialise
from ntkrobust.bridge.models import ModelConfig, ModelError, build_model, model_config
from ntkrobust.bridge.training import TrainConfig, train_epoch


def _images(batch: int, channels: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, channels, side, side), generator=torch.Generator().manual_seed(seed))


def _offsets(x: torch.Tensor, out: torch.Tensor) -> list[tuple[int, int, bool]]:
    """(top, left, flipped) of every augmented example, found by trying every crop."""
    padded = torch.nn.functional.pad(x, (CROP_PADDING,) * 4)
    side = x.shape[-1]
    found = []
    for i in range(x.shape[0]):
        matches = [
            (top, left, flip)
            for top in range(2 * CROP_PADDING + 1)
            for left in range(2 * CROP_PADDING + 1)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, top : top + side, left : left + side].flip(-1)
                if flip
                else padded[i, :, top : top + side, left : left + side],
            )
        ]
        assert len(matches) == 1, matches  # random images: exactly one crop matches
        found.append(matches[0])
    return found


def test_crop_flip_crops_the_padded_image_and_flips_colour_images_per_example():
    x = _images(64, 3)
    out = augment(x, seed=1)
    assert out.shape == x.shape and out.dtype == x.dtype
    draws = _offsets(x, out)
    assert len(set(draws)) > 20  # one draw per example
    flipped = sum(flip for _, _, flip in draws)
    assert 16 <= flipped <= 48  # about half (binomial(64, 1/2): 4 sigma)
    assert torch.equal(out, augment(x, seed=1)) and not torch.equal(out, augment(x, seed=2))


def test_grey_images_are_only_cropped():
    x = _images(64, 1)
    assert not any(flip for _, _, flip in _offsets(x, augment(x, seed=3)))


def test_shared_augmentation_draws_once_per_batch():
    x = _images(16, 3)
    draws = _offsets(x, augment(x, seed=4, shared=True))
    assert len(set(draws)) == 1


def test_images_too_small_for_the_crop_are_refused():
    check_augmentation("crop-flip", (3, 32, 32))
    check_augmentation("none", (1, 8, 8))
    with pytest.raises(ValueError, match="8x8 images are too small"):
        check_augmentation("crop-flip", (1, 8, 8))
    with pytest.raises(ValueError, match="unknown augmentation"):
        check_augmentation("cutout", (3, 32, 32))


def test_an_augmented_epoch_is_reproducible():
    x, y = _images(40, 3, seed=5), torch.arange(40) % 4
    weights = []
    for _ in range(2):
        model = build_model(model_config("fc1", (3, 16, 16), 4, width=16, seed=0))
        config = TrainConfig(mode="fgsm", eps=0.03, batch_size=10, lr=0.1, augment="crop-flip")
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, config, 1)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("name", ["normal", "truncated-normal", "uniform"])
def test_each_initialisation_draws_its_distribution(name):
    layer = torch.nn.Linear(800, 1000)
    initialise(layer, name, torch.Generator().manual_seed(0))
    w, std = layer.weight.detach().double(), math.sqrt(2 / 800)
    assert float(w.mean()) == pytest.approx(0, abs=0.01 * std)
    assert float(w.std()) == pytest.approx(std, rel=0.01)  # 800k draws: the variance 2/fan_in
    assert torch.count_nonzero(layer.bias) == 0
    bound = {"normal": None, "truncated-normal": 2 * std / TRUNCATED_STD_CORRECTION, "uniform": math.sqrt(3) * std}
    kurtosis = float(((w / std) ** 4).mean())  # kurtosis: 3 normal, 1.8 uniform, 2.37 cut at 2 sigma
    expected = {"normal": 3.0, "truncated-normal": 2.366, "uniform": 1.8}[name]
    assert kurtosis == pytest.approx(expected, abs=0.05)
    if bound[name] is not None:
        assert float(w.abs().max()) <= bound[name] + 1e-12


def test_the_initialisation_is_part_of_the_model_config():
    config = model_config("mnist-cnn", (1, 28, 28), 10, width=4, seed=3, init="uniform")
    assert ModelConfig.from_dict(config.to_dict()) == config
    a, b = build_model(config), build_model(config)
    default = build_model(model_config("mnist-cnn", (1, 28, 28), 10, width=4, seed=3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(a.parameters()), next(default.parameters()))
    with pytest.raises(ModelError, match="draws its weights as its analytic kernel assumes"):
        model_config("fc2", (1, 8, 8), 10, init="normal")
    with pytest.raises(ModelError, match="unknown initialisation"):
        model_config("mnist-cnn", (1, 28, 28), 10, init="xavier")
