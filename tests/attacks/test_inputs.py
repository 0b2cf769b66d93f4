"""The shared attacks refuse what they cannot attack: images that are not floats in [0, 1] (numpy
arrays and host tensors alike), infinite steps, fractional step counts, negative seeds and batch
sizes, unknown norms. A Python-API audit found each of them returning garbage or failing deep
inside numpy: 0-255 images clipped to [0, 1] (perturbations of 254 at ε = 0.1), integer images
never moved, all-NaN examples from ``step=inf``, the ℓ2 step taken for any misspelt norm."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ntkrobust.attacks import AttackSpec, ThreatModel, check_batch_size, fgsm, pgd, steepest_ascent


def _gradient(x, y):
    return x * 0 + 1


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(4, 1, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("array", ["numpy", "torch"])
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x * 255, "inputs must lie in [0, 1] (pixel units), got values from"),
        (lambda x: x - 0.5, "inputs must lie in [0, 1] (pixel units), got values from -"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), "got values from nan"),
    ],
)
def test_images_outside_the_box_are_refused_on_the_host(images, array, change, message):
    x = change(images).astype(np.float32)
    x = torch.from_numpy(x) if array == "torch" else x
    for attack in (
        lambda: fgsm(_gradient, x, None, eps=0.1),
        lambda: pgd(_gradient, x, None, eps=0.1, step=0.01, steps=2),
    ):
        with pytest.raises(ValueError) as error:
            attack()
        assert str(error.value).startswith(message) or message in str(error.value), error.value


@pytest.mark.parametrize("array", ["numpy", "torch"])
def test_integer_images_are_refused(images, array):
    x = (images > 0.5).astype(np.uint8)
    x = torch.from_numpy(x) if array == "torch" else x
    with pytest.raises(TypeError, match=r"floating-point images in \[0, 1\], got dtype .*uint8"):
        pgd(_gradient, x, None, eps=0.3, step=0.05, steps=2)


def test_a_host_tensor_in_the_box_is_attacked_as_before(images):
    x = torch.from_numpy(images)
    x_adv = pgd(_gradient, x, None, eps=0.1, step=0.05, steps=3, seed=1)
    expected = pgd(_gradient, images, None, eps=0.1, step=0.05, steps=3, seed=1)
    np.testing.assert_allclose(x_adv.numpy(), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"step": float("inf")}, "the PGD step must be a finite number > 0, got inf"),
        ({"step": float("nan")}, "the PGD step must be a finite number > 0, got nan"),
        ({"step": 0.0}, "the PGD step must be a finite number > 0, got 0.0"),
        ({"steps": 2.5}, "the PGD steps must be a whole number >= 1, got 2.5"),
        ({"steps": 0}, "the PGD steps must be a whole number >= 1, got 0"),
        ({"seed": -1}, "the seed must be a whole number >= 0, got -1"),
    ],
)
def test_a_schedule_pgd_cannot_run_is_refused_by_the_attack_and_the_spec(images, kwargs, message):
    schedule = {"step": 0.01, "steps": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError) as error:
        pgd(_gradient, images, None, eps=0.1, **schedule)
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        AttackSpec("pgd", 0.1, "linf", **schedule)
    assert str(error.value) == message


def test_eps_is_checked_before_the_step_it_scales():
    assert AttackSpec.standard("fgsm", 1, eps=0.0).eps == 0.0  # a ball of one point: valid, as ThreatModel says
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0, got -0\.1"):
        AttackSpec.standard("pgd", 1, eps=-0.1)  # said about the PGD step before
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0, got '0\.1'"):
        ThreatModel("linf", "0.1")  # type: ignore[arg-type]  # a numpy ufunc error before


def test_an_unknown_norm_takes_no_step():
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        steepest_ascent(np.ones((1, 4)), "l1")  # type: ignore[arg-type]  # the l2 step before


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_a_batch_size_must_be_a_whole_number_of_at_least_one(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        check_batch_size(batch_size)


def test_a_jacobian_of_the_wrong_shape_is_refused_by_the_taylor_attacks(images):
    from ntkrobust.attacks import taylor_max_l1

    labels = np.arange(4) % 3
    # flattened rows: numpy failed to broadcast (4, 1, 8, 8) with (4, 4, 3, 64) before
    flat = lambda x: np.ones((x.shape[0], 3, 64))  # noqa: E731
    expected = "must return (B, k, *x.shape[1:]), got (4, 3, 64) for x of (4, 1, 8, 8)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        taylor_max_l1(flat, images, labels, eps=0.1)
    full = lambda x: np.ones((x.shape[0], 3, *x.shape[1:]))  # noqa: E731
    assert taylor_max_l1(full, images, labels, eps=0.1).shape == images.shape
