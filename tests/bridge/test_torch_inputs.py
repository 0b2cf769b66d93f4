"""The torch half's attacks and accuracies refuse what they would answer wrongly. A Python-API
audit found, before: ``batch_size=-1`` returning all-zero examples and an accuracy computed
without the model (the share of label 0); 0-255 images clipped into [0, 1] and NaN images scored
as class 0; 0 points giving NaN; numpy arrays failing inside torch; any misspelt BatchNorm mode
evaluated with running statistics. On a GPU the range checks add no host read (the accuracy's
comes back with its share, the attacks' is queued on the device): ``test_host_reads.py``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge.adversarial import accuracy, adversarial_examples, predict
from ntkrobust.bridge.tracking import clean_accuracy, pgd_accuracy

PGD = AttackSpec("pgd", eps=0.1, step=0.02, steps=2)


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


@pytest.fixture
def points() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(9, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.arange(9) % 3


SCORERS = {
    "accuracy": lambda model, x, y: accuracy(model, x, y),
    "clean_accuracy": lambda model, x, y: clean_accuracy(model, x, y),
    "pgd_accuracy": lambda model, x, y: pgd_accuracy(model, x, y, PGD),
    "adversarial_examples": lambda model, x, y: adversarial_examples(model, x, y, method="fgsm", eps=0.1),
}


@pytest.mark.parametrize("scorer", list(SCORERS))
@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda x: x * 255, ValueError, r"inputs must lie in \[0, 1\] \(pixel units\), got values from"),
        (lambda x: torch.full_like(x, float("nan")), ValueError, r"inputs must lie in \[0, 1\].* nan"),
        (lambda x: (x > 0.5).long(), TypeError, r"floating-point images in \[0, 1\], got dtype torch.int64"),
        (lambda x: x.numpy(), TypeError, r"images must be a torch.Tensor \(torch.from_numpy\), got ndarray"),
    ],
)
def test_images_that_are_no_images_in_the_box_are_refused(net, points, scorer, change, error, message):
    x, y = points
    with pytest.raises(error, match=message):
        SCORERS[scorer](net, change(x), y)


@pytest.mark.parametrize("scorer", list(SCORERS))
def test_numpy_labels_are_refused(net, points, scorer):
    x, y = points
    with pytest.raises(TypeError, match=r"labels must be a torch.Tensor \(torch.from_numpy\), got ndarray"):
        SCORERS[scorer](net, x, y.numpy())


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused(net, points, batch_size):
    x, y = points
    for call in (
        lambda: accuracy(net, x, y, batch_size=batch_size),
        lambda: predict(net, x, batch_size=batch_size),
        lambda: adversarial_examples(net, x, y, method="fgsm", eps=0.1, batch_size=batch_size),
    ):
        with pytest.raises(ValueError, match=f"batch_size must be a whole number >= 1, got {batch_size}"):
            call()


@pytest.mark.parametrize("scorer", ["accuracy", "clean_accuracy", "pgd_accuracy"])
def test_the_accuracy_of_no_points_is_refused(net, points, scorer):
    x, y = points
    with pytest.raises(ValueError, match="accuracy of an empty set is undefined"):
        SCORERS[scorer](net, x[:0], y[:0])


@pytest.mark.parametrize("mode", ["Batch", "runing", ""])
def test_a_misspelt_batchnorm_mode_is_refused(net, points, mode):
    x, y = points
    for call in (
        lambda: clean_accuracy(net, x, y, batchnorm=mode),
        lambda: pgd_accuracy(net, x, y, PGD, batchnorm=mode),
    ):
        with pytest.raises(ValueError, match=f"batchnorm must be one of .*, got '{mode}'"):
            call()


def test_good_inputs_score_as_before(net, points):
    x, y = points
    expected = float((net(x).argmax(1) == y).double().mean())
    assert accuracy(net, x, y, batch_size=4) == expected
    assert clean_accuracy(net, x, y, batchnorm="batch") == expected  # no BatchNorm: the same net
    examples = adversarial_examples(net, x, y, method="fgsm", eps=0.1, batch_size=4)
    assert float((examples - x).abs().max()) == pytest.approx(0.1, abs=1e-6)
    assert np.isfinite(examples.numpy()).all()


def test_the_kernel_device_and_dtype_are_checked_in_one_line(net, points):
    from ntkrobust.bridge.entk import empirical_ntk

    x = points[0]
    by_name = empirical_ntk(net, x, dtype="float64")  # a name, as in numpy: to() refused it before
    np.testing.assert_array_equal(by_name, empirical_ntk(net, x, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"dtype must be a floating torch dtype such as torch\.float64, got 'int64'"):
        empirical_ntk(net, x, dtype="int64")
    with pytest.raises(TypeError, match=r"got torch\.int32"):
        empirical_ntk(net, x, dtype=torch.int32)
    # torch's message listed its 20 backends before
    with pytest.raises(ValueError, match=r"unknown device 'gpu': e.g. 'cpu', 'cuda' or 'cuda:1'"):
        empirical_ntk(net, x, device="gpu")


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_a_channels_last_input_shape_is_refused_by_the_models(shape):
    from ntkrobust.bridge.models import ModelError, model_config

    # resnet18 was built for 28 channels of 28x1 images before (mnist-cnn said "at least 4x4, got 28x1")
    for name in ("resnet18", "mnist-cnn"):
        with pytest.raises(ModelError, match=re.escape(f"input shape {shape} looks like (height, width, channels)")):
            model_config(name, shape, 10)
    assert model_config("resnet18", (shape[2], *shape[:2]), 10).input_shape == (shape[2], *shape[:2])


@pytest.mark.parametrize("shape", [(2, 6, 3), (4, 8, 1), (2, 5, 1)])
def test_two_or_four_channel_nchw_images_of_width_one_or_three_are_taken_as_nchw(shape, tmp_path):
    """No image format has more than 4 channels, so (2, 6, 3) is two channels of 6x3, not a 2x6
    colour image: the models, the data loader and the convolutional kernels take it (all of them
    refused it as channels last before: the first axis was not 1 or 3 and the last was)."""
    from ntkrobust.attacks.threat import looks_channels_last
    from ntkrobust.bridge.data import load_dataset
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.kernels import compute_gram, get_architecture

    assert not looks_channels_last(shape)
    net = build_model(model_config("conv1", shape, 2))
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0))
    assert net(x).shape == (4, 2)
    assert compute_gram(get_architecture("conv1"), x.double().numpy()).shape == (4, 4)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x.numpy(), y_train=np.arange(4) % 2, x_test=x.numpy(), y_test=np.arange(4) % 2)
    assert load_dataset(str(path)).x_train.shape == (4, *shape)
    assert looks_channels_last((5, 5, 3)) and looks_channels_last((28, 28, 1))
