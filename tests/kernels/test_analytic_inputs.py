"""The analytic half refuses inputs it would answer wrongly. A Python-API audit found, before:
``craft_adversarial`` returning uninitialised memory for ``batch_size=-1``, clipping 0-255 images
into [0, 1] and leaving integer images unmoved (its batches turn into JAX arrays, which the
attacks do not read); ``feature_scores``' dot route scoring images of another shape, 0-255 or
NaN images; NHWC images taken by the convolutional kernels as other images; a Gram matrix with
a NaN entry fitted; duplicate eigen-indices shrinking r; the two-layer closed form in float32;
and ``range() arg 3 must not be zero`` or a ``ZeroDivisionError`` for inputs of 0 points."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.attacks import AttackSpec, ThreatModel
from ntkrobust.kernels import (
    compute_gram,
    craft_adversarial,
    feature_scores,
    fit_kernel_machine,
    get_architecture,
    robust_only_kernels,
    two_layer_ntk,
    two_layer_ntk_vjp,
    two_layer_stax_ntk,
)

FGSM = AttackSpec("fgsm", eps=0.1)


@pytest.fixture
def test_points(digits_binary):
    return digits_binary.x_test[:10], digits_binary.y_test[:10]


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda x: x * 255, ValueError, r"inputs must lie in \[0, 1\] \(pixel units\), got values from 0 to 255"),
        (lambda x: np.where(x > 0.9, np.nan, x), ValueError, r"inputs must lie in \[0, 1\]"),
        (lambda x: x.round().astype(np.uint8), TypeError, r"floating-point images in \[0, 1\], got dtype uint8"),
        (lambda x: x.tolist(), TypeError, r"x must be a numpy array of images, got list"),
    ],
)
def test_craft_adversarial_checks_the_host_images(fc2_binary, test_points, change, error, message):
    x, y = test_points
    with pytest.raises(error, match=message):
        craft_adversarial(fc2_binary, change(x), y, AttackSpec("pgd", eps=0.1, step=0.02, steps=2))


@pytest.mark.parametrize("batch_size", [-1, 0])
def test_craft_adversarial_needs_a_positive_batch_size(fc2_binary, test_points, batch_size):
    x, y = test_points
    with pytest.raises(ValueError, match=f"batch_size must be a whole number >= 1, got {batch_size}"):
        craft_adversarial(fc2_binary, x, y, FGSM, batch_size=batch_size)


def test_labels_are_whole_class_ids(fc2_binary, test_points):
    x, y = test_points
    with pytest.raises(ValueError, match="labels must be whole class ids"):
        craft_adversarial(fc2_binary, x, y + 0.4, FGSM)  # truncated to the class ids before
    with pytest.raises(ValueError, match="9 labels for 10 inputs"):
        craft_adversarial(fc2_binary, x, y[:9], FGSM)
    assert np.array_equal(fc2_binary.target_index(y.astype(np.float64)), fc2_binary.target_index(y))


@pytest.mark.parametrize("route", ["dots", "jacobian"])
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y: (np.concatenate([x, x], axis=1), y), r"inputs of shape \(2, 8, 8\) do not match"),
        (lambda x, y: (x * 255, y), r"inputs must lie in \[0, 1\]"),
        (lambda x, y: (np.full_like(x, np.nan), y), r"inputs must lie in \[0, 1\]"),
        (lambda x, y: (x[:-2], y), "need as many labels as inputs, and at least one: got 10 for 8"),
        (lambda x, y: (x[:0], y[:0]), "need as many labels as inputs, and at least one: got 0 for 0"),
    ],
)
def test_both_feature_routes_refuse_the_same_inputs(fc2_binary, test_points, route, change, message):
    x, y = change(*test_points)
    with pytest.raises(ValueError, match=message):
        feature_scores(fc2_binary, x, y, ThreatModel("linf", 0.1), n_features=3, route=route)


def test_nhwc_images_are_refused_by_the_convolutional_kernels(digits_binary):
    conv = get_architecture("conv1")
    nhwc = digits_binary.x_train[:6].transpose(0, 2, 3, 1)
    with pytest.raises(ValueError, match=r"look like NHWC .* x.transpose\(0, 3, 1, 2\)"):
        compute_gram(conv, nhwc)
    with pytest.raises(ValueError, match="look like NHWC"):
        fit_kernel_machine(conv, nhwc, digits_binary.y_train[:6])
    assert compute_gram(conv, digits_binary.x_train[:3]).shape == (3, 3)  # NCHW, one channel


def test_a_precomputed_gram_matrix_must_be_finite(digits_binary):
    x, y = digits_binary.x_train[:20], digits_binary.y_train[:20]
    gram = compute_gram(get_architecture("fc2"), x)
    gram[0, 1] = gram[1, 0] = np.nan  # eigh made finite, wrong eigenvalues of it
    with pytest.raises(ValueError, match="the Gram matrix contains NaN or inf"):
        fit_kernel_machine(get_architecture("fc2"), x, y, gram=gram)


def test_a_ranking_with_repeated_indices_is_refused(fc2_binary, test_points):
    x, y = test_points
    with pytest.raises(ValueError, match="ranking repeats eigen-indices"):
        robust_only_kernels(fc2_binary, np.zeros(30, int), [5], x, y, ThreatModel("linf", 0.1), pgd_step=0.02)


def test_the_two_layer_closed_form_is_float64_and_takes_flat_inputs(rng):
    x = rng.uniform(size=(4, 64))
    reference = compute_gram(get_architecture("two-layer"), x)
    assert two_layer_ntk(x, x).dtype == np.float64
    np.testing.assert_allclose(np.asarray(two_layer_ntk(x, x)), reference, rtol=1e-12)  # 1.4e-7 in float32
    assert two_layer_ntk_vjp(x, x, np.ones((4, 4))).dtype == np.float64
    assert two_layer_stax_ntk(x, x).dtype == np.float64
    with pytest.raises(ValueError, match=r"flat inputs \(N1, d\) and \(N2, d\), got \(4, 1, 8, 8\)"):
        two_layer_stax_ntk(x.reshape(4, 1, 8, 8), x.reshape(4, 1, 8, 8))  # an (N, N, 1, 1, 8, 8) array before
    with pytest.raises(ValueError, match=r"the cotangent must have shape \(4, 4\)"):
        two_layer_ntk_vjp(x, x, np.ones((4, 3)))


def test_inputs_of_no_points_are_refused_in_one_line(fc2_binary, digits_binary):
    x, y = digits_binary.x_train, digits_binary.y_train
    with pytest.raises(ValueError, match="no training points"):
        fit_kernel_machine(get_architecture("fc2"), x[:0], y[:0], classes=(3, 8))
    with pytest.raises(ValueError, match="inputs hold no points: 0 and 0 rows"):
        compute_gram(get_architecture("fc2"), x[:0])
    with pytest.raises(ValueError, match=r"inputs hold no points \(0 rows\)"):
        fc2_binary.predict(digits_binary.x_test[:0])


def test_small_silent_answers_are_refused(digits_binary):
    import torch

    from ntkrobust.bridge.models import ModelError, model_config
    from ntkrobust.kernels import spearman_correlation

    with pytest.raises(ValueError, match="inputs contain NaN or inf"):
        compute_gram(get_architecture("fc2"), torch.full((3, 1, 8, 8), float("nan")))  # a NaN Gram matrix before
    with pytest.raises(ValueError, match="values contain NaN or inf"):
        spearman_correlation([1, np.nan, 3, 4], [1, 2, 3, 4])  # 0.4 before: NaN ranked largest
    with pytest.raises(ValueError, match=r"one length, got shapes \(1,\) and \(3,\)"):
        spearman_correlation([1], [1, 2, 3])
    with pytest.raises(ModelError, match=r"num_classes must be whole numbers, got 2\.5"):
        model_config("mnist-cnn", (1, 8, 8), num_classes=2.5)  # type: ignore[arg-type]  # 2 outputs before
    assert spearman_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_matching_time_of_non_finite_outputs_is_refused(fc2_binary):
    from ntkrobust.kernels import matching_time

    with pytest.raises(ValueError, match="outputs contain NaN or inf"):
        matching_time(fc2_binary, np.full(fc2_binary.targets.shape, np.nan))  # 3.3e-5 before


def test_an_architecture_name_where_the_object_belongs_is_refused(digits_binary):
    from ntkrobust.kernels import gram_matrix, kernel_metrics

    x, y = digits_binary.x_train[:6], digits_binary.y_train[:6]
    # an AttributeError ('str' object has no attribute 'check_input') before
    calls = (lambda: compute_gram("fc2", x), lambda: gram_matrix("fc2", x), lambda: fit_kernel_machine("fc2", x, y))
    for call in calls:
        with pytest.raises(TypeError, match=r"got the string 'fc2': pass get_architecture\('fc2'\)"):
            call()
    with pytest.raises(TypeError, match=r"expected an Architecture .*, got int"):
        compute_gram(2, x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"an architecture is named by a string .*, got list"):
        get_architecture(["fc2"])  # type: ignore[arg-type]  # unhashable type: 'list' before
    # one cut-off where a sequence is expected ('int' object is not iterable before)
    assert kernel_metrics(np.eye(12), top=5)["concentration_top5"] == pytest.approx(5 / 12)
