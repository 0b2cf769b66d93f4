"""The kernel machine of eq. 7 against independent routes: nt.predict, direct solves, autodiff."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from ntkrobust.kernels import (
    IllConditionedWarning,
    InputRangeWarning,
    compute_gram,
    fit_kernel_machine,
    get_architecture,
)
from ntkrobust.kernels._jax import jax, jnp, nt


def direct_logits(arch, x_train, targets, x, time=math.inf, ridge_abs=0.0):
    """f_t by a plain solve / matrix exponential: no eigendecomposition shared with the machine."""
    import scipy.linalg

    gram = compute_gram(arch, x_train) + ridge_abs * np.eye(x_train.shape[0])
    if math.isinf(time):
        coef = np.linalg.solve(gram, targets)
    else:
        coef = np.linalg.solve(gram, (np.eye(gram.shape[0]) - scipy.linalg.expm(-time * gram)) @ targets)
    return compute_gram(arch, x, x_train) @ coef


def test_f0_is_zero_and_ft_tends_to_f_inf(fc2_binary, digits_binary):
    x = digits_binary.x_test
    assert np.abs(np.asarray(fc2_binary.at_time(0.0).logits(x))).max() == 0.0
    f_inf = np.asarray(fc2_binary.logits(x))
    gaps = [np.abs(np.asarray(fc2_binary.at_time(t).logits(x)) - f_inf).max() for t in (1e-2, 1.0, 1e2, 1e6)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-6 * np.abs(f_inf).max()


def test_ridgeless_machine_at_infinity_interpolates_training_labels(
    fc2_binary, fc2_multiclass, digits_binary, digits_multiclass
):
    f = np.asarray(fc2_binary.logits(digits_binary.x_train))
    np.testing.assert_allclose(f, fc2_binary.targets, atol=1e-6)
    np.testing.assert_array_equal(fc2_binary.predict(digits_binary.x_train), digits_binary.y_train)
    f = np.asarray(fc2_multiclass.logits(digits_multiclass.x_train))
    np.testing.assert_allclose(f, np.eye(10)[digits_multiclass.y_train], atol=1e-6)


@pytest.mark.parametrize("time", [0.05, 3.0, math.inf])
def test_eq7_matches_neural_tangents_predict(fc2_multiclass, digits_multiclass, time):
    """nt.predict.gradient_descent_mse measures time in units of 1/y_train.size (its MSE is a mean)."""
    machine = fc2_multiclass.at_time(time)
    gram = compute_gram(machine.arch, digits_multiclass.x_train)
    k_test = compute_gram(machine.arch, digits_multiclass.x_test, digits_multiclass.x_train)
    predict = nt.predict.gradient_descent_mse(jnp.asarray(gram), jnp.asarray(machine.targets))
    nt_time = None if math.isinf(time) else time * machine.targets.size
    expected = predict(nt_time, 0.0, 0.0, jnp.asarray(k_test))[1]
    np.testing.assert_allclose(machine.logits(digits_multiclass.x_test), expected, rtol=1e-6, atol=1e-8)


def test_finite_time_and_ridge_match_direct_solves(digits_binary):
    arch = get_architecture("fc1")
    x_tr, x_te = digits_binary.x_train[:40], digits_binary.x_test[:10]
    y_tr = digits_binary.y_train[:40]
    machine = fit_kernel_machine(arch, x_tr, y_tr, classes=digits_binary.classes, time=0.01)
    targets = machine.targets
    np.testing.assert_allclose(machine.logits(x_te), direct_logits(arch, x_tr, targets, x_te, time=0.01), rtol=1e-8)
    ridged = fit_kernel_machine(arch, x_tr, y_tr, classes=digits_binary.classes, ridge=0.1)
    rho = 0.1 * np.trace(compute_gram(arch, x_tr)) / 40
    assert ridged.ridge == pytest.approx(rho)
    np.testing.assert_allclose(ridged.logits(x_te), direct_logits(arch, x_tr, targets, x_te, ridge_abs=rho), rtol=1e-8)


def _cross_entropy_gradient_by_autodiff(machine, x, index):
    """∇ₓ of the summed cross-entropy through jax.grad of Θ(x, X)·α, α from a plain solve."""
    arch = machine.arch
    gram = compute_gram(
        arch, np.asarray(machine.arch.from_layout(machine.x_train, (machine.n_train, *machine.input_shape)))
    )
    alpha = jnp.asarray(np.linalg.solve(gram, machine.targets))

    def loss(xb):
        f = arch.kernel_fn(arch.to_layout(xb), machine.x_train, "ntk") @ alpha
        if f.shape[1] == 1:
            y = 2.0 * jnp.asarray(index) - 1.0
            return jnp.sum(jax.nn.softplus(-y * f[:, 0]))
        return -jnp.sum(jax.nn.log_softmax(f, axis=1)[jnp.arange(f.shape[0]), jnp.asarray(index)])

    return np.asarray(jax.grad(loss)(jnp.asarray(x, jnp.float64)))


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_loss_gradient_equals_autodiff_of_the_direct_formula(
    task, fc2_binary, fc2_multiclass, digits_binary, digits_multiclass
):
    machine, data = (fc2_binary, digits_binary) if task == "binary" else (fc2_multiclass, digits_multiclass)
    x = data.x_test[:16].astype(np.float64)
    index = machine.target_index(data.y_test[:16])
    got = np.asarray(machine.loss_gradient(x, index))
    want = _cross_entropy_gradient_by_autodiff(machine, x, index)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())


def test_chunked_evaluation_equals_one_block(fc2_multiclass, digits_multiclass):
    """A memory budget that forces 64-example test blocks and 4-point training chunks."""
    import dataclasses

    small = dataclasses.replace(fc2_multiclass, memory_budget=8 * 16 * 64 * 4)
    assert small._blocks().train < small.n_train
    x = digits_multiclass.x_test[:70].astype(np.float64)
    index = fc2_multiclass.target_index(digits_multiclass.y_test[:70])
    np.testing.assert_allclose(small.logits(x), fc2_multiclass.logits(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        small.loss_gradient(x, index), fc2_multiclass.loss_gradient(x, index), rtol=1e-8, atol=1e-12
    )
    np.testing.assert_allclose(
        small.output_jacobian(x[:5]), fc2_multiclass.output_jacobian(x[:5]), rtol=1e-8, atol=1e-12
    )


def test_output_jacobian_rows_are_gradients_of_each_output(fc2_multiclass, digits_multiclass):
    x = jnp.asarray(digits_multiclass.x_test[:3], jnp.float64)
    z = np.asarray(fc2_multiclass.output_jacobian(x))
    assert z.shape == (3, 10, 1, 8, 8)
    for r in (0, 7):
        g = jax.grad(lambda xb, r=r: jnp.sum(fc2_multiclass.logits(xb)[:, r]))(x)
        np.testing.assert_allclose(z[:, r], g, rtol=1e-8, atol=1e-12)


def test_closed_form_gradient_equals_autodiff_for_two_layer(digits_multiclass):
    arch = get_architecture("two-layer")
    data = digits_multiclass
    closed = fit_kernel_machine(arch, data.x_train, data.y_train, gradient="closed-form")
    auto = fit_kernel_machine(arch, data.x_train, data.y_train, gradient="autodiff")
    x = data.x_test[:20].astype(np.float64)
    index = closed.target_index(data.y_test[:20])
    np.testing.assert_allclose(closed.loss_gradient(x, index), auto.loss_gradient(x, index), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(closed.output_jacobian(x), auto.output_jacobian(x), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="closed-form"):
        fit_kernel_machine(get_architecture("fc2"), data.x_train[:10], data.y_train[:10], gradient="closed-form")


def test_duplicated_training_points_warn_and_stay_finite(digits_binary):
    x = np.concatenate([digits_binary.x_train[:30], digits_binary.x_train[:5]])
    y = np.concatenate([digits_binary.y_train[:30], digits_binary.y_train[:5]])
    with pytest.warns(IllConditionedWarning, match="singular"):
        machine = fit_kernel_machine(get_architecture("fc2"), x, y, classes=digits_binary.classes)
    assert machine.dropped_directions >= 5
    f = np.asarray(machine.logits(x))
    assert np.all(np.isfinite(f))
    np.testing.assert_allclose(f, machine.targets, atol=1e-5)  # consistent duplicates: still interpolated


def test_a_zero_gram_warns_and_predicts_zero(digits_binary):
    """The two-layer NTK (no biases) of all-zero images is the zero matrix: every direction is
    dropped, the condition number is inf (it raised on the empty set of kept eigenvalues)."""
    x = np.zeros_like(digits_binary.x_train[:12])
    with pytest.warns(IllConditionedWarning, match="zero: all 12 of 12"):
        machine = fit_kernel_machine(get_architecture("two-layer"), x, digits_binary.y_train[:12])
    assert machine.condition_number == math.inf and machine.dropped_directions == 12
    assert np.abs(np.asarray(machine.logits(digits_binary.x_test[:5]))).max() == 0.0


def test_well_conditioned_machine_does_not_warn(digits_binary):
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)
        fit_kernel_machine(get_architecture("fc2"), digits_binary.x_train, digits_binary.y_train)


@pytest.mark.parametrize(("white", "said"), [(16, "divide them by 16"), (255, "divide them by 255")])
def test_images_in_pixel_counts_warn_and_name_their_white(digits_binary, white, said):
    """scikit-learn's digits as loaded (0-16) or 8-bit images (0-255) fit a machine, but not the
    one of pixel units: the NTK with biases is not scale-free (its predictions change)."""
    x, y = digits_binary.x_train[:40], digits_binary.y_train[:40]
    with pytest.warns(InputRangeWarning, match=f"x_train runs from 0 to {white}: if these are images, {said}"):
        counts = fit_kernel_machine(get_architecture("fc2"), np.round(x * white), y)
    units = fit_kernel_machine(get_architecture("fc2"), np.round(x * white) / white, y)
    test = digits_binary.x_test[:20]
    assert not np.allclose(np.asarray(counts.logits(test * white)), np.asarray(units.logits(test)), atol=1e-3)


def test_the_range_warning_points_at_the_callers_line(digits_binary):
    """``stacklevel`` past the ``@float64`` wrapper: the warning names this file, not _jax.py."""
    x, y = digits_binary.x_train[:40], digits_binary.y_train[:40]
    with pytest.warns(InputRangeWarning) as caught:
        fit_kernel_machine(get_architecture("fc2"), x * 255, y)
    assert [w.filename for w in caught if w.category is InputRangeWarning] == [__file__]


def test_the_conditioning_warning_points_at_the_callers_line(digits_binary):
    x, y = digits_binary.x_train[:20], digits_binary.y_train[:20]
    with pytest.warns(IllConditionedWarning, match="duplicated inputs") as caught:
        fit_kernel_machine(get_architecture("fc2"), np.concatenate([x, x]), np.concatenate([y, y]))
    assert {w.filename for w in caught if w.category is IllConditionedWarning} == {__file__}


def test_inputs_a_rounding_above_one_are_told_to_be_clipped_not_divided(digits_binary):
    """A maximum of 1.0000001 is rounding, not a scale of 16: the advice is to clip."""
    x, y = digits_binary.x_train[:40].copy(), digits_binary.y_train[:40]
    x[0, 0] = 1.0000001
    with pytest.warns(InputRangeWarning, match=r"from 0 to 1.0000001: if these are images, clip them to \[0, 1\]"):
        fit_kernel_machine(get_architecture("fc2"), x, y)


def test_pixel_units_and_centred_features_do_not_warn(digits_binary):
    x, y = digits_binary.x_train[:40], digits_binary.y_train[:40]
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        fit_kernel_machine(get_architecture("fc2"), x, y)
        fit_kernel_machine(get_architecture("fc2"), x - x.mean(), y)  # below 0: features, not images


def test_labels_map_to_outputs(fc2_binary, digits_binary):
    assert fc2_binary.classes == (3, 8) and fc2_binary.n_outputs == 1
    np.testing.assert_array_equal(fc2_binary.target_index([3, 8, 8]), [0, 1, 1])
    with pytest.raises(ValueError, match="not one of"):
        fc2_binary.target_index([5])
    with pytest.raises(ValueError, match="do not match"):
        fc2_binary.logits(np.zeros((2, 1, 4, 4), np.float32))


def test_class_ids_for_target_indices_and_bad_inputs_are_refused(fc2_binary, digits_binary):
    """The attacks' examples once passed class ids (3, 8) where the gradient takes positions
    (0, 1): the gradient read them as other targets and FGSM left the accuracy at 0.50."""
    from ntkrobust.attacks import fgsm
    from ntkrobust.kernels import loss_cotangent

    x, y = digits_binary.x_test[:6], digits_binary.y_test[:6]
    with pytest.raises(ValueError, match=r"target indices must lie in \[0, 2\) .*machine.target_index"):
        fgsm(fc2_binary.loss_gradient, x, y, eps=0.3)
    with pytest.raises(ValueError, match=r"must be \(6,\) integers"):
        fc2_binary.loss_gradient(x, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        loss_cotangent(np.zeros((2, 3)), np.array([0, 7]))
    with pytest.raises(ValueError, match="NaN or inf"):
        fc2_binary.predict(np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x))
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_kernel_machine(get_architecture("fc2"), np.full_like(x, np.nan), y)
    with pytest.raises(ValueError, match="integer class ids"):
        fit_kernel_machine(get_architecture("fc2"), x, y + 0.5)


def test_the_gradient_of_a_torch_input_is_a_torch_tensor(fc2_binary, digits_binary):
    """The attacks run on numpy, JAX and torch arrays alike: a torch batch through the kernel
    machine's gradient (it raised numpy's "Cannot interpret 'torch.float32' as a data type")."""
    import torch

    from ntkrobust.attacks import pgd

    x, index = digits_binary.x_test[:4], fc2_binary.target_index(digits_binary.y_test[:4])
    g = fc2_binary.loss_gradient(torch.as_tensor(x), torch.as_tensor(index))
    assert isinstance(g, torch.Tensor) and g.dtype == torch.float32
    np.testing.assert_allclose(g.numpy(), np.asarray(fc2_binary.loss_gradient(x, index)), rtol=1e-6, atol=1e-9)
    x_adv = pgd(fc2_binary.loss_gradient, torch.as_tensor(x), index, eps=0.1, step=0.05, steps=2, seed=1)
    expected = pgd(fc2_binary.loss_gradient, x, index, eps=0.1, step=0.05, steps=2, seed=1)
    assert isinstance(x_adv, torch.Tensor)
    np.testing.assert_allclose(x_adv.numpy(), np.asarray(expected), atol=1e-6)


def test_float32_evaluation_agrees_with_float64(fc2_multiclass, digits_multiclass):
    """float32 rows and gradients: ~1e-6 relative error, the same attack directions."""
    fast = fc2_multiclass.with_precision("float32")
    x = digits_multiclass.x_test
    index = fc2_multiclass.target_index(digits_multiclass.y_test)
    f64, f32 = np.asarray(fc2_multiclass.logits(x)), np.asarray(fast.logits(x))
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, f64, atol=1e-4 * np.abs(f64).max())
    np.testing.assert_array_equal(fast.predict(x), fc2_multiclass.predict(x))
    g64, g32 = np.asarray(fc2_multiclass.loss_gradient(x, index)), np.asarray(fast.loss_gradient(x, index))
    np.testing.assert_allclose(g32, g64, atol=1e-4 * np.abs(g64).max())
    assert np.mean(np.sign(g32) == np.sign(g64)) > 0.999
    with pytest.raises(ValueError, match="precision"):
        fc2_multiclass.with_precision("float16")


def test_a_spectral_filter_of_negative_time_ridge_or_rate_is_refused():
    from ntkrobust.kernels.machine import spectral_filter

    eigenvalues = np.array([2.0, 1.0])
    np.testing.assert_allclose(
        spectral_filter(eigenvalues, time=math.inf, ridge=0.0, learning_rate=1.0, cutoff=0.0), [0.5, 1]
    )
    for bad in ({"learning_rate": -1.0}, {"time": -1.0}, {"ridge": -0.5}):
        arguments = {"time": 1.0, "ridge": 0.0, "learning_rate": 1.0, "cutoff": 0.0} | bad
        with pytest.raises(ValueError, match="need time >= 0, ridge >= 0 and learning_rate > 0"):
            spectral_filter(eigenvalues, **arguments)


def test_predicted_index_reads_the_outputs_last_and_refuses_squeezed_ones():
    from ntkrobust.kernels import predicted_index

    f = np.array([[0.3], [-0.2], [1.5]])
    assert predicted_index(f).tolist() == [1, 0, 1]  # one output: its sign
    assert predicted_index(np.array([[0.1, 0.7, 0.2], [0.9, 0.0, 0.1]])).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"outputs must be \(\.\.\., k\).*got shape \(3,\)"):
        predicted_index(f[:, 0])  # argmax over the points was 2, one index for three points


# -- eq. 7 against numpy and scipy alone (no neural-tangents, no shared eigendecomposition) ------


def _eq29_gram(x1, x2):
    """Supp. eq. 29 in plain numpy float64: (1/2 − θ/(2π)) x·x', θ the angle between x and x'
    (atan2 of the sine and cosine parts: exact 0 on the diagonal, unlike arccos of a rounded 1)."""
    a, b = x1.reshape(x1.shape[0], -1).astype(np.float64), x2.reshape(x2.shape[0], -1).astype(np.float64)
    dots = a @ b.T
    sq = np.sum(a * a, axis=1)[:, None] * np.sum(b * b, axis=1)[None, :]
    theta = np.arctan2(np.sqrt(np.maximum(sq - dots * dots, 0.0)), dots)
    return (0.5 - theta / (2 * np.pi)) * dots


#: a small two-layer machine at a finite time, with a ridge and a learning rate other than 1:
#: every factor of g_t(λ) = (1 − e^{−η(λ+ρ)t})/(λ+ρ) then shows in the outputs
TIME, RIDGE, RATE = 0.3, 0.05, 2.5


@pytest.fixture(scope="module")
def tiny(digits_binary, jax_strict):
    data = digits_binary
    x_tr, y_tr, x_te = data.x_train[:12], data.y_train[:12], data.x_test[:5]
    machine = fit_kernel_machine(
        get_architecture("two-layer"), x_tr, y_tr, classes=data.classes, time=TIME, ridge=RIDGE, learning_rate=RATE
    )
    gram = _eq29_gram(x_tr, x_tr)
    return machine, x_tr, x_te, gram, _eq29_gram(x_te, x_tr)


def test_spectral_filter_by_hand():
    """g_t(λ) = (1 − e^{−η(λ+ρ)t})/(λ+ρ); a negative λ counts as 0; λ+ρ at or below the cutoff is 0."""
    from ntkrobust.kernels.machine import spectral_filter

    lam = np.array([3.0, 1.0, 0.0, -1e-3])
    got = spectral_filter(lam, time=0.7, ridge=0.2, learning_rate=1.5, cutoff=1e-10)
    shifted = np.array([3.2, 1.2, 0.2, 0.2])
    np.testing.assert_allclose(got, (1 - np.exp(-1.5 * 0.7 * shifted)) / shifted, rtol=1e-14)
    got = spectral_filter(lam, time=math.inf, ridge=0.0, learning_rate=1.5, cutoff=1e-10)
    np.testing.assert_array_equal(got, [1 / 3.0, 1.0, 0.0, 0.0])
    got = spectral_filter(lam[:2], time=0.0, ridge=0.2, learning_rate=1.5, cutoff=1e-10)
    np.testing.assert_array_equal(got, [0.0, 0.0])


def test_eigendecomposition_is_descending_and_numpys(tiny):
    machine, _, _, gram, _ = tiny
    lam = np.linalg.eigvalsh(gram)[::-1]
    np.testing.assert_allclose(machine.eigenvalues, lam, rtol=1e-10, atol=1e-12 * lam[0])
    assert np.all(np.diff(machine.eigenvalues) <= 0)
    v = machine.eigenvectors  # Θ vᵢ = λᵢ vᵢ, column by column, orthonormal
    np.testing.assert_allclose(gram @ v, v * machine.eigenvalues[None, :], atol=1e-10 * lam[0])
    np.testing.assert_allclose(v.T @ v, np.eye(v.shape[0]), atol=1e-12)


def test_finite_time_ridge_and_learning_rate_match_a_matrix_exponential(tiny):
    """f_t(x) = Θ(x, X) (Θ+ρI)⁻¹ (I − e^{−η(Θ+ρI)t}) Y, ρ = ridge·tr(Θ)/n, by scipy's expm."""
    import scipy.linalg

    machine, _, x_te, gram, rows = tiny
    n = gram.shape[0]
    rho = RIDGE * np.trace(gram) / n
    assert machine.ridge == pytest.approx(rho, rel=1e-12)
    shifted = gram + rho * np.eye(n)
    for t in (TIME, 4.0):
        coef = np.linalg.solve(shifted, (np.eye(n) - scipy.linalg.expm(-RATE * t * shifted)) @ machine.targets)
        got = np.asarray(machine.at_time(t).logits(x_te))
        np.testing.assert_allclose(got, rows @ coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(  # t = ∞: the ridge solve, whatever the learning rate
        np.asarray(machine.at_time(math.inf).logits(x_te)), rows @ np.linalg.solve(shifted, machine.targets), rtol=1e-9
    )


def test_restricted_machines_keep_their_time(tiny):
    """restricted_to(R) at time t: Θ(x, X) Σ_{i∈R} g_t(λᵢ) vᵢ vᵢᵀ Y, from numpy's eigh (each vᵢ's
    sign cancels in vᵢ vᵢᵀ)."""
    machine, _, x_te, gram, rows = tiny
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1], vec[:, ::-1]
    chosen = [4, 0, 2]
    assert np.min(np.abs(np.diff(lam[:6]))) > 1e-6 * lam[0]  # distinct: each vᵢ defined up to sign
    rho = machine.ridge
    for t in (TIME, 2.0):
        g = (1 - np.exp(-RATE * t * (lam[chosen] + rho))) / (lam[chosen] + rho)
        coef = vec[:, chosen] @ (g[:, None] * (vec[:, chosen].T @ machine.targets))
        got = np.asarray(machine.at_time(t).restricted_to(chosen).logits(x_te))
        np.testing.assert_allclose(got, rows @ coef, rtol=1e-8, atol=1e-12)
