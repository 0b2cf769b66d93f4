"""Audit of ``bridge.surrogate`` (TK supp. B): the empirical-NTK machine f(x) = Θ̄(x, X) α with
(Θ̄(X, X) + ρ·tr/(N·C)·I) vec(α) = vec(Y), Θ̄ the mean over S initialisations.

Independent route: explicit float64 Jacobians J_s (N·C, P) from ``torch.func.jacrev`` of each
network's ``functional_call``, Θ̂_s = J_s J_sᵀ, the mean over s, the ridge added once to the
(N·C) x (N·C) matrix, numpy's solve and eigvalsh; then every output of the machine, its α and
every number of its ``KernelFit`` compared (relative 1e-8: float64 throughout, the solve of a
system of condition ~1e3-1e5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from ntkrobust.bridge.models import model_config
from ntkrobust.bridge.surrogate import fit_empirical_kernel_machine, initial_networks

N, C, SHAPE = 6, 3, (1, 8, 8)
CASES = {  # name: (image shape, width); mnist-cnn's C x C blocks are not symmetric, resnet18 has BatchNorm
    "fc1": ((1, 8, 8), 8),
    "mnist-cnn": ((1, 8, 8), 2),
    "resnet18": ((3, 6, 6), 2),
}
REL = 1e-8


def _data(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x_train = rng.uniform(0, 1, size=(N, *shape)).astype(np.float32)
    x_test = rng.uniform(0, 1, size=(4, *shape)).astype(np.float32)
    return x_train, np.array([0, 1, 2, 0, 1, 2]), x_test


def _jacobian(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """(len(x)·C, P): row (i, a) = ∇θ f_a(x_i) at the net's parameters, float64."""
    net = net.double().eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    inputs = torch.as_tensor(x, dtype=torch.float64)
    jac = jacrev(lambda p: functional_call(net, p, (inputs,)))(params)  # each (B, C, *shape)
    return torch.cat([j.reshape(len(x) * C, -1) for j in jac.values()], dim=1).numpy()


def _explicit(nets, x_train, x_test, y, ridge):
    """(α (N, C), test outputs (B, C), the matrix Θ̄(X, X) without ridge, train outputs)."""
    train = [_jacobian(net, x_train) for net in nets]
    test = [_jacobian(net, x_test) for net in nets]
    gram = np.mean([j @ j.T for j in train], axis=0)  # (N·C, N·C), entry ((i, a), (j, b))
    cross = np.mean([t @ j.T for t, j in zip(test, train, strict=True)], axis=0)
    shift = ridge * np.trace(gram) / (N * C)
    targets = np.eye(C)[y]
    alpha = np.linalg.solve(gram + shift * np.eye(N * C), targets.reshape(-1))
    return alpha.reshape(N, C), (cross @ alpha).reshape(-1, C), gram, (gram @ alpha).reshape(N, C)


def _close(found, expected, rel=REL):
    found, expected = np.asarray(found, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert np.abs(found - expected).max() <= rel * np.abs(expected).max(), np.abs(found - expected).max()


@pytest.mark.parametrize(
    ("name", "count", "ridge"),
    [("fc1", 1, 0.0), ("fc1", 2, 0.0), ("fc1", 3, 0.05), ("mnist-cnn", 2, 0.0), ("resnet18", 2, 0.01)],
)
def test_the_machine_is_the_mean_kernels_regression_by_explicit_jacobians(name, count, ridge):
    """The explicit route puts every net in eval mode (BatchNorm on its running statistics, as
    ``empirical_gram`` documents): the machine's v = J(X)ᵀα must be taken in that mode too."""
    shape, width = CASES[name]
    x_train, y, x_test = _data(shape=shape)
    nets = initial_networks(model_config(name, shape, C, width=width, seed=2), count)
    machine = fit_empirical_kernel_machine(nets, x_train, y, C, ridge=ridge, module_dtype=torch.float64)
    alpha, outputs, gram, fitted = _explicit(nets, x_train, x_test, y, ridge)
    assert machine.alpha is not None
    _close(machine.alpha, alpha)
    with torch.no_grad():
        _close(machine(torch.as_tensor(x_test, dtype=torch.float64)).numpy(), outputs)
        on_train = machine(torch.as_tensor(x_train, dtype=torch.float64)).numpy()
    _close(on_train, fitted)
    if ridge == 0:  # N·C = 18 ≪ P = 547: the mean kernel interpolates, whatever S
        np.testing.assert_allclose(on_train, np.eye(C)[y], atol=1e-7)
    info = machine.fit_info
    assert info is not None and info.n_networks == count and info.n_train == N
    eigenvalues = np.linalg.eigvalsh(gram)
    shift = ridge * np.trace(gram) / (N * C)
    assert info.ridge == ridge and info.ridge_absolute == pytest.approx(shift, rel=1e-12, abs=0)
    assert info.eigenvalue_min == pytest.approx(eigenvalues[0], rel=1e-8)
    assert info.eigenvalue_max == pytest.approx(eigenvalues[-1], rel=1e-10)
    condition = (eigenvalues[-1] + shift) / (eigenvalues[0] + shift)
    assert info.condition_number == pytest.approx(condition, rel=1e-6)
    assert info.numerical_rank == N * C  # full rank: every eigenvalue far above N·C·eps·λmax
    assert info.train_max_residual == pytest.approx(np.abs(fitted - np.eye(C)[y]).max(), rel=1e-6, abs=1e-9)
    assert info.train_accuracy == pytest.approx(np.mean(fitted.argmax(1) == y))


def test_a_ridge_shifts_the_spectrum_once():
    """ρ = 1: the solved matrix is Θ̄ + tr(Θ̄)/(N·C)·I, so the machine's train outputs are
    Θ̄ (Θ̄ + mean-eigenvalue·I)⁻¹ Y, visibly short of Y; twice the shift (or none) is not."""
    x_train, y, x_test = _data(1)
    nets = initial_networks(model_config("fc1", SHAPE, C, width=8, seed=5), 2)
    machine = fit_empirical_kernel_machine(nets, x_train, y, C, ridge=1.0, module_dtype=torch.float64)
    alpha, _, _, fitted = _explicit(nets, x_train, x_test, y, 1.0)
    _close(machine.alpha, alpha)
    assert machine.fit_info is not None
    assert machine.fit_info.train_max_residual == pytest.approx(np.abs(fitted - np.eye(C)[y]).max(), rel=1e-8)
    for wrong in (0.0, 2.0):  # the ridge of the wrong size gives other coefficients
        other, _, _, _ = _explicit(nets, x_train, x_test, y, wrong)
        assert np.abs(other - alpha).max() > 1e-3 * np.abs(alpha).max()


def test_a_repeated_training_point_lowers_the_numerical_rank_by_c():
    """X with its first point twice: Θ̄(X, X) has C exactly-zero eigenvalues (rounding noise of
    either sign, ~1e-16 relative), so the rank above N·C·eps·λmax is (N − 1)·C; the pseudo-inverse
    still interpolates."""
    x_train, y, _ = _data(2)
    x_train[-1], y[-1] = x_train[0], y[0]
    nets = initial_networks(model_config("fc1", SHAPE, C, width=8, seed=6), 2)
    machine = fit_empirical_kernel_machine(nets, x_train, y, C, module_dtype=torch.float64)
    info = machine.fit_info
    assert info is not None and info.numerical_rank == (N - 1) * C
    gram = np.mean([(j := _jacobian(net, x_train)) @ j.T for net in nets], axis=0)
    eigenvalues = np.linalg.eigvalsh(gram)
    assert np.sum(eigenvalues > N * C * np.finfo(np.float64).eps * eigenvalues[-1]) == (N - 1) * C
    assert info.train_max_residual < 1e-6 and info.condition_number is not None
