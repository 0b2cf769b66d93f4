"""The empirical-NTK surrogate (TK supp. B): against the kernel route Θ(x, X)α, interpolation,
input gradients, a PGD attack on digits, the dual solve and its singular fallback, bad input.
float64 wherever values are compared."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntkrobust.bridge.adversarial import pgd_examples, predict
from ntkrobust.bridge.data import load_dataset
from ntkrobust.bridge.entk import empirical_ntk
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.surrogate import (
    EmpiricalKernelMachine,
    dual_coefficients,
    empirical_gram,
    fit_empirical_kernel_machine,
    initial_networks,
)

CLASSES = 10


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=30, n_test=12, seed=0)


def networks(name: str, width: int, count: int) -> list[torch.nn.Module]:
    return initial_networks(model_config(name, (1, 8, 8), CLASSES, width=width, seed=3), count)


def as64(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


# --- 1: the module is the kernel machine ---------------------------------------------------


@pytest.mark.parametrize(("name", "width", "count"), [("fc1", 16, 1), ("mnist-cnn", 4, 1), ("mnist-cnn", 4, 2)])
def test_outputs_equal_the_kernel_route(digits, name, width, count):
    nets = networks(name, width, count)
    machine = fit_empirical_kernel_machine(
        nets, digits.x_train, digits.y_train, CLASSES, ridge=1e-2, module_dtype=torch.float64
    )
    assert machine.alpha is not None and machine.alpha.shape == (30, CLASSES)
    kernel = np.mean(
        [empirical_ntk(net, digits.x_test, digits.x_train, kind="full", dtype=torch.float64) for net in nets], 0
    )
    expected = torch.as_tensor(np.einsum("ijab,jb->ia", kernel, machine.alpha))
    with torch.no_grad():
        actual = machine(as64(digits.x_test))
    assert actual.dtype == torch.float64 and actual.shape == (12, CLASSES)
    torch.testing.assert_close(actual, expected, rtol=1e-8, atol=1e-8 * float(expected.abs().max()))
    assert len(machine.networks) == count and machine.fit_info is not None and machine.fit_info.n_networks == count


# --- 2: interpolation ------------------------------------------------------------------------


def test_ridgeless_machine_interpolates_and_a_ridge_does_not(digits):
    x, y = digits.x_train[:20], digits.y_train[:20]  # N·C = 200 against P = 4810 parameters
    onehot = F.one_hot(torch.as_tensor(y), CLASSES).double()
    nets = networks("fc1", 64, 1)
    ridgeless = fit_empirical_kernel_machine(nets, x, y, CLASSES, module_dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ridgeless(as64(x)), onehot, rtol=0, atol=1e-6)
    info = ridgeless.fit_info
    assert info is not None
    assert info.train_accuracy == 1.0 and info.train_max_residual < 1e-6 and info.numerical_rank == 200
    assert 0 < info.eigenvalue_min <= info.eigenvalue_max and np.isfinite(info.condition_number)
    assert info.n_train == 20 and info.ridge == 0.0 and info.dtype == "float64"
    ridged = fit_empirical_kernel_machine(nets, x, y, CLASSES, ridge=0.1, module_dtype=torch.float64)
    with torch.no_grad():
        gap = float((ridged(as64(x)) - onehot).abs().max())
    assert ridged.fit_info is not None
    assert 1e-3 < gap < 1 and gap == pytest.approx(ridged.fit_info.train_max_residual, rel=1e-6)
    assert ridged.fit_info.condition_number < info.condition_number
    json_ready = ridged.fit_info.to_dict()
    assert json_ready["ridge"] == 0.1 and json_ready["ridge_absolute"] > 0 and json_ready["module_dtype"] == "float64"


# --- 3: input gradients ----------------------------------------------------------------------


def test_input_gradients_match_finite_differences(digits):
    machine = fit_empirical_kernel_machine(
        networks("mnist-cnn", 4, 2), digits.x_train, digits.y_train, CLASSES, ridge=1e-2, module_dtype=torch.float64
    )
    assert not any(p.requires_grad for p in machine.parameters())
    x, y = as64(digits.x_test), torch.as_tensor(digits.y_test)

    def loss(inputs: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(machine(inputs), y, reduction="sum")

    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        difference = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
    assert float(difference) == pytest.approx(float((grad * direction).sum()), rel=1e-5)
    # a float32 module takes float32 inputs and gives float32 gradients
    machine32 = fit_empirical_kernel_machine(
        networks("fc1", 16, 1), digits.x_train, digits.y_train, CLASSES, ridge=1e-2
    )
    x32 = torch.as_tensor(digits.x_test).requires_grad_(True)
    (grad32,) = torch.autograd.grad(F.cross_entropy(machine32(x32), y), x32)
    assert grad32.dtype == torch.float32 and torch.isfinite(grad32).all() and grad32.abs().sum() > 0


# --- 4: attacked white-box --------------------------------------------------------------------


def test_pgd_on_the_surrogate_lowers_its_accuracy_within_the_ball():
    data = load_dataset("digits", n_train=100, n_test=60, seed=0)
    machine = fit_empirical_kernel_machine(
        networks("fc1", 64, 1), data.x_train, data.y_train, CLASSES, ridge=1e-3, spectrum=False
    )
    assert machine.fit_info is not None and machine.fit_info.condition_number is None
    assert machine.fit_info.train_accuracy == 1.0
    machine.train()
    assert not machine.training and not any(m.training for m in machine.modules())
    x, y = torch.as_tensor(data.x_test), torch.as_tensor(data.y_test)
    clean = float((predict(machine, x) == y).float().mean())
    eps = 0.1
    x_adv = pgd_examples(machine, x, y, eps=eps, step=0.025, steps=10)
    robust = float((predict(machine, x_adv) == y).float().mean())
    assert clean > 0.7 and robust < clean - 0.3
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and torch.isfinite(x_adv).all()
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


# --- 5: the dual solve -----------------------------------------------------------------------


def test_dual_coefficients_solve_the_ridged_system():
    rng = np.random.default_rng(0)
    n, c = 5, 3
    factor = rng.standard_normal((n * c, n * c))
    matrix = factor @ factor.T + np.eye(n * c)
    gram = matrix.reshape(n, c, n, c).transpose(0, 2, 1, 3)  # entry ((i, a), (j, b)) → [i, j, a, b]
    targets = rng.standard_normal((n, c))
    alpha = dual_coefficients(gram, targets)
    np.testing.assert_allclose(alpha.reshape(-1), np.linalg.solve(matrix, targets.reshape(-1)), rtol=1e-10)
    np.testing.assert_allclose(np.einsum("ijab,jb->ia", gram, alpha), targets, atol=1e-10)
    ridged = dual_coefficients(gram, targets, ridge=0.5)
    shifted = matrix + 0.5 * np.trace(matrix) / (n * c) * np.eye(n * c)
    np.testing.assert_allclose(ridged.reshape(-1), np.linalg.solve(shifted, targets.reshape(-1)), rtol=1e-10)


def test_singular_gram_falls_back_to_the_pseudo_inverse(digits):
    x = np.concatenate([digits.x_train[:8], digits.x_train[:1]])  # the first point twice
    y = np.concatenate([digits.y_train[:8], digits.y_train[:1]])
    gram = empirical_gram(networks("fc1", 16, 2), x)
    assert gram.shape == (9, 9, CLASSES, CLASSES)
    targets = np.eye(CLASSES)[y]
    alpha = dual_coefficients(gram, targets)
    assert np.isfinite(alpha).all()
    np.testing.assert_allclose(alpha[0], alpha[8], atol=1e-8 * np.abs(alpha).max())  # least norm: an even split
    np.testing.assert_allclose(np.einsum("ijab,jb->ia", gram, alpha), targets, atol=1e-8)
    matrix = gram.transpose(0, 2, 1, 3).reshape(90, 90)
    pinv = np.linalg.pinv(matrix, rcond=90 * np.finfo(np.float64).eps, hermitian=True) @ targets.reshape(-1)
    np.testing.assert_allclose(alpha.reshape(-1), pinv, atol=1e-8 * np.abs(pinv).max())


# --- 6: bad input and the networks -----------------------------------------------------------


def test_bad_input_is_refused_in_one_line(digits):
    nets = networks("fc1", 8, 1)
    cases = [
        (lambda: fit_empirical_kernel_machine(nets, digits.x_train, digits.y_train[:-1], CLASSES), "one class id"),
        (lambda: fit_empirical_kernel_machine(nets, digits.x_train, digits.y_train, CLASSES + 1), "outputs"),
        (lambda: fit_empirical_kernel_machine(nets, digits.x_train, digits.y_train + 10, CLASSES), "class ids"),
        (lambda: fit_empirical_kernel_machine([], digits.x_train, digits.y_train, CLASSES), "at least one"),
        (lambda: dual_coefficients(np.zeros((3, 3, 2, 2)), np.zeros((4, 2))), "targets must be"),
        (lambda: dual_coefficients(np.zeros((3, 3, 2, 2)), np.zeros((3, 2)), ridge=-1), "ridge"),
        (lambda: EmpiricalKernelMachine([]), "at least one"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError, match=words) as error:
            call()
        assert "\n" not in str(error.value)


def test_initial_networks_are_the_registry_models_at_successive_seeds():
    config = model_config("fc1", (1, 8, 8), CLASSES, width=8, seed=5)
    nets = initial_networks(config, 2)
    for offset, net in enumerate(nets):
        expected = build_model(dataclasses.replace(config, seed=5 + offset)).state_dict()
        assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    assert not torch.equal(nets[0][1].weight, nets[1][1].weight)
    with pytest.raises(ValueError, match="at least one"):
        initial_networks(config, 0)
