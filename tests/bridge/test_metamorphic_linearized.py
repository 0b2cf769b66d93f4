"""Metamorphic tests of linearized and centered nets, eNTK eigenvectors, the eNTK surrogate and the
two-layer net and kernel: two runs of the same function, one on transformed inputs, and the relation
the docstrings imply between their results.

Definitions: ``bridge.linearized`` f_lin = f_θt + J_θt(θ − θt), f_cen = J_θt(θ − θt), f_cs = f_θ − f_θt;
``bridge.eigenvectors.ntk_eigenvectors`` the top eigenpairs of K = J_c J_cᵀ with u's largest entry
positive and v = Jᵀu/‖Jᵀu‖; ``bridge.surrogate`` f(x) = Θ(x, X)(Θ(X, X) + ρ·tr/(N·C)·I)⁻¹ Y with the
mean kernel of S nets; ``bridge.models.TwoLayerNet`` f(x) = m^{-1/2} Aᵀ relu(W x) (TK supp. eq. 28) and
``kernels.two_layer`` its NTK (supp. eq. 29).

Tolerances: 1e-12 relative for float64 runs that take the same operations on reordered or
rescaled numbers; 1e-9 relative where a linear solve or an eigendecomposition of a reordered
matrix sits in between (its rounding depends on the order); 0.05 relative for a width-40000 net
against its infinite-width kernel (fluctuations ~ 1/√m).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_linearized import flat, inputs, parent_network, shifted
from test_surrogate import CLASSES, as64, networks

from ntkrobust.bridge.data import load_dataset
from ntkrobust.bridge.eigenvectors import ntk_eigenvectors
from ntkrobust.bridge.entk import empirical_ntk
from ntkrobust.bridge.linearized import CenteredStandardNetwork, LinearizedNetwork
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.surrogate import dual_coefficients, fit_empirical_kernel_machine
from ntkrobust.kernels.two_layer import two_layer_ntk, two_layer_ntk_vjp

EXACT = 1e-12
SOLVED = 1e-9


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _direction(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.Tensor:
    size = sum(p.numel() for p in model.parameters())
    return scale * torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _move(net: torch.nn.Module, delta: torch.Tensor) -> torch.nn.Module:
    """``net`` with every parameter moved by its slice of the flat ``delta`` (parameter order)."""
    with torch.no_grad():
        for p, d in zip(net.parameters(), delta.split([p.numel() for p in net.parameters()]), strict=True):
            p.add_(d.reshape(p.shape))
    return net


class _Outputs(torch.nn.Module):
    """A net with its outputs reordered (``order``) and scaled by ``scale``: no parameters of its own."""

    def __init__(self, net: torch.nn.Module, order, scale: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("order", torch.as_tensor(order, dtype=torch.long))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, self.order] * self.scale


# -- linearized and centered networks ---------------------------------------------------------


@pytest.mark.parametrize("name", ["fc2", "resnet18"])
def test_linearized_output_is_affine_along_a_ray_and_minus_the_centered_one_is_the_parent(name):
    """f_lin(θt + 2Δ) − f_lin(θt) = 2 (f_lin(θt + Δ) − f_lin(θt)) and f_cen(θt + 2Δ) = 2 f_cen(θt + Δ)
    (the module docstring: both are affine / linear in θ − θt), and f_lin(θ) − f_cen(θ) = f_θt(x)
    for the same θ, whatever θ (the two share the jvp's primal). At θ = θt: f_lin = parent, f_cen = 0."""
    parent = parent_network(name)
    x = inputs(name, 5)
    delta = _direction(parent, 3)
    with torch.no_grad():
        f0 = parent(x)
        lin, cen = LinearizedNetwork(parent), LinearizedNetwork(parent, centered=True)
        assert _relative(lin(x), f0) < EXACT and float(cen(x).abs().max()) == 0.0
        one_lin, one_cen = shifted(lin, delta)(x), shifted(cen, delta)(x)
        assert _relative(one_lin - cen(x), f0) < EXACT  # the same θ in both: the difference is f_θt
        two_lin, two_cen = shifted(lin, 2 * delta)(x), shifted(cen, 2 * delta)(x)
    assert float((one_lin - f0).abs().max()) > 1e-3 * float(f0.abs().max())  # Δ moves the output
    assert _relative(two_lin - f0, 2 * (one_lin - f0)) < 1e-10  # f0 cancels: relative to the change
    assert _relative(two_cen, 2 * one_cen) < EXACT


@pytest.mark.parametrize("name", ["mnist-cnn", "resnet18"])
def test_wrappers_are_equivariant_under_a_permutation_of_the_batch(name):
    """Every wrapper runs its parent in eval mode (frozen BatchNorm: LOO sec. 2), so each example's
    output depends on that example alone: f(x[π]) = f(x)[π] for the linearized, centered and centered
    standard nets away from θt, in train mode too; and a sub-batch gives the same rows."""
    parent = parent_network(name)
    x = inputs(name, 6, seed=2)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    lin = shifted(LinearizedNetwork(parent), _direction(parent, 4))
    cen = shifted(LinearizedNetwork(parent, centered=True), _direction(parent, 4))
    standard = CenteredStandardNetwork(parent).train()  # frozen BatchNorm even in train mode
    _move(standard.network, _direction(parent, 4))
    with torch.no_grad():
        for model in (lin.train(), cen.train(), standard):
            whole = model(x)
            assert _relative(model(x[perm]), whole[perm]) < EXACT, type(model).__name__
            assert _relative(model(x[:2]), whole[:2]) < EXACT, type(model).__name__  # no batch statistics


def test_centered_standard_network_is_the_moved_net_minus_the_spawn():
    """f_cs = f_θ − f_θt (LOO sec. 6, table 1): 0 at θ = θt, and after moving θ by Δ exactly the
    independent run of a copy of the parent moved by Δ, minus the parent. Its kernel is the moved
    net's (``tangent_network``), so at θ = θt it equals the linearized wrapper's (the parent's)."""
    parent = parent_network("resnet18")
    x = inputs("resnet18", 4, seed=1)
    standard = CenteredStandardNetwork(parent)
    with torch.no_grad():
        assert float(standard(x).abs().max()) == 0.0
    kernel = empirical_ntk(standard.tangent_network(), x, kind="full")
    assert _relative(kernel, empirical_ntk(LinearizedNetwork(parent), x, kind="full")) < 1e-10
    moved = _move(copy.deepcopy(parent), _direction(parent, 5))
    _move(standard.network, _direction(parent, 5))
    with torch.no_grad():
        assert _relative(standard(x), moved(x) - parent(x)) < EXACT


def test_linearized_kernel_is_the_parents_wherever_theta_is():
    """∇θ f_lin = ∇θ f_cen = J_θt for every θ (module docstring, "Kernel"): the eNTK of wrappers at
    two different θ, centered or not, is the same as the parent's at θt."""
    parent = parent_network("fc2")
    x = inputs("fc2", 4, seed=3)
    reference = empirical_ntk(parent, x, kind="full")
    for centered, seed in ((False, 6), (True, 7)):
        model = shifted(LinearizedNetwork(parent, centered=centered), _direction(parent, seed, scale=0.5))
        assert float((flat(model.parameters()) - flat(model.tangent_network().parameters())).abs().max()) > 0.1
        assert _relative(empirical_ntk(model, x, kind="full"), reference) < 1e-10


# -- eNTK eigenvectors ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fc2", "mnist-cnn"])
def test_eigenvectors_follow_a_permutation_of_the_probe_points(name):
    """K(X[π], X[π]) = K[π][:, π]: same eigenvalues; u's rows permuted (the sign rule, largest entry
    positive, does not depend on the order); v = Jᵀu/‖Jᵀu‖ unchanged (a sum over the points)."""
    model = parent_network(name)
    x = inputs(name, 7, seed=4)
    perm = np.array([6, 2, 0, 5, 1, 3, 4])
    a = ntk_eigenvectors(model, x, output=1, top=3)
    b = ntk_eigenvectors(model, x[torch.as_tensor(perm)], output=1, top=3)
    assert _relative(b.eigenvalues, a.eigenvalues) < SOLVED
    assert _relative(b.u, a.u[perm]) < 1e-7  # eigenvector rounding ~ eps / spectral gap
    assert _relative(b.v.numpy(), a.v.numpy()) < 1e-7


def test_eigenvectors_follow_the_class_through_a_permutation_of_the_outputs():
    """The class-``output`` block is that of f_output alone: a net whose outputs are reordered by σ
    has, for ``output=j``, the block of the original class σ(j), so the same eigenpairs. A class
    index mixed with another (or a class order assumed) breaks it."""
    model = parent_network("mnist-cnn")
    x = inputs("mnist-cnn", 6, seed=5)
    order = [2, 0, 1]
    permuted = _Outputs(model, order).eval()
    for j in range(3):
        a = ntk_eigenvectors(model, x, output=order[j], top=2)
        b = ntk_eigenvectors(permuted, x, output=j, top=2)
        assert _relative(b.eigenvalues, a.eigenvalues) < EXACT
        assert _relative(b.u, a.u) < 1e-9
        assert _relative(b.v.numpy(), a.v.numpy()) < 1e-9
    assert _relative(ntk_eigenvectors(model, x, output=0, top=2).eigenvalues, a.eigenvalues) > 1e-3


# -- the eNTK surrogate -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=24, n_test=8, seed=1)


def _predict(machine, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return machine(as64(x)).numpy()


def _fit(nets, x, y, *, ridge: float = 1e-2):
    return fit_empirical_kernel_machine(nets, x, y, CLASSES, ridge=ridge, module_dtype=torch.float64)


def test_surrogate_ignores_the_order_of_its_training_points_and_of_its_networks(digits):
    """f(x) = Σ_j Θ(x, x_j) α_j with α solving a system over the pairs (x_j, y_j): the training pairs
    permuted together give the same predictions (α permuted alike), and so does the list of S nets
    reversed (Θ̄ is their mean)."""
    nets = networks("fc1", 16, 2)
    base = _fit(nets, digits.x_train, digits.y_train)
    perm = np.random.default_rng(0).permutation(len(digits.y_train))
    moved = _fit(nets, digits.x_train[perm], digits.y_train[perm])
    reversed_nets = _fit(nets[::-1], digits.x_train, digits.y_train)
    expected = _predict(base, digits.x_test)
    assert _relative(_predict(moved, digits.x_test), expected) < SOLVED
    assert _relative(moved.alpha, base.alpha[perm]) < SOLVED
    assert _relative(_predict(reversed_nets, digits.x_test), expected) < SOLVED
    assert moved.fit_info.train_accuracy == base.fit_info.train_accuracy


def test_surrogate_is_unchanged_by_a_kernel_scale_with_its_relative_ridge(digits):
    """Outputs scaled by s scale every kernel by s², and ρ is relative to tr(Θ)/(N·C)
    (``dual_coefficients``), so f = s²Θ(x, X)(s²Θ + s²ρ̄I)⁻¹Y is unchanged; α scales by 1/s²."""
    nets = networks("fc1", 16, 1)
    scale = 3.0
    base = _fit(nets, digits.x_train, digits.y_train)
    scaled = _fit([_Outputs(nets[0], list(range(CLASSES)), scale)], digits.x_train, digits.y_train)
    assert _relative(_predict(scaled, digits.x_test), _predict(base, digits.x_test)) < SOLVED
    assert _relative(scaled.alpha * scale**2, base.alpha) < SOLVED
    assert scaled.fit_info.ridge_absolute == pytest.approx(scale**2 * base.fit_info.ridge_absolute, rel=EXACT)
    jacobian = np.random.default_rng(1).standard_normal((4, 2, 9))  # (N, C, P)
    gram = np.einsum("iap,jbp->ijab", jacobian, jacobian)  # PSD (N, N, C, C)
    targets = np.eye(2)[[0, 1, 1, 0]]
    alpha = dual_coefficients(gram, targets, ridge=0.1)
    assert _relative(7.0 * dual_coefficients(7.0 * gram, targets, ridge=0.1), alpha) < SOLVED


def test_surrogate_follows_a_relabelling_of_the_classes(digits):
    """Nets whose outputs are reordered by σ, with labels relabelled by σ⁻¹ (so the one-hot targets
    follow the outputs), give predictions whose columns are the original ones reordered by σ."""
    nets = networks("fc1", 16, 1)
    order = np.random.default_rng(2).permutation(CLASSES)
    inverse = np.argsort(order)
    base = _fit(nets, digits.x_train, digits.y_train)
    relabelled = _fit([_Outputs(nets[0], order)], digits.x_train, inverse[np.asarray(digits.y_train)])
    assert _relative(_predict(relabelled, digits.x_test), _predict(base, digits.x_test)[:, order]) < SOLVED


# -- the two-layer net and its kernel ---------------------------------------------------------


def _two_layer(width: int, seed: int = 0, d: int = 6, k: int = 3) -> torch.nn.Module:
    return build_model(model_config("two-layer", (1, 1, d), k, width=width, seed=seed)).double().eval()


def test_two_layer_net_is_invariant_under_a_permutation_of_hidden_units():
    """f = m^{-1/2} Σ_i a_i relu(w_i·x) is a sum over units: rows of W permuted with the rows of A leave
    the function and its eNTK (a sum over the same units) unchanged."""
    net = _two_layer(12)
    x = torch.rand(5, 1, 1, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.hidden.weight.copy_(net.hidden.weight[perm])
        other.readout.copy_(net.readout[perm])
        assert _relative(other(x), net(x)) < EXACT
    assert _relative(empirical_ntk(other, x, kind="full"), empirical_ntk(net, x, kind="full")) < EXACT


def test_two_layer_net_of_duplicated_units():
    """Every unit duplicated (width 2m): Σ over 2m units is twice the sum over m, the scale 1/√(2m),
    so f_2m = √2 f_m, while Θ_2m = (1/2m)·2·Σ_m = Θ_m (the NTK of eq. 29 is width-free)."""
    net = _two_layer(10)
    x = torch.rand(5, 1, 1, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    wide = _two_layer(20)
    with torch.no_grad():
        wide.hidden.weight.copy_(torch.cat([net.hidden.weight] * 2))
        wide.readout.copy_(torch.cat([net.readout] * 2))
        assert _relative(wide(x), math.sqrt(2) * net(x)) < EXACT
    assert _relative(empirical_ntk(wide, x, kind="full"), empirical_ntk(net, x, kind="full")) < EXACT


def test_a_very_wide_two_layer_net_has_the_closed_form_kernel():
    """Θ_c(x, x') = (1/m) Σ_i a_ic² 1[w_i·x > 0] 1[w_i·x' > 0] x·x' → (1/2 − θ/2π) x·x' (supp. eq. 29)
    for each class c, and 0 between classes c ≠ c' only on average: the diagonal blocks to 5%."""
    d, n = 6, 5
    net = _two_layer(40000, seed=3, d=d, k=2)
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 0.3
    empirical = empirical_ntk(net, x.reshape(n, 1, 1, d), kind="full")
    analytic = np.asarray(two_layer_ntk(x.numpy(), x.numpy()))
    for c in range(2):
        assert _relative(empirical[:, :, c, c], analytic) < 0.05


def test_two_layer_closed_form_is_homogeneous_rotation_invariant_and_permutation_equivariant():
    """Eq. 29 depends on x, x' through x·x' and the angle: Θ(QX, QX') = Θ (Q orthogonal),
    Θ(aX, bX') = ab Θ (a, b > 0), Θ(X[π], X'[σ]) = Θ[π][:, σ]. Its input gradient (supp. eq. 9) is
    then of degree 0 in x and 1 in x', and follows the same permutations with the cotangent."""
    rng = np.random.default_rng(5)
    x1, x2 = rng.standard_normal((5, 7)), rng.standard_normal((6, 7))
    q, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    kernel = np.asarray(two_layer_ntk(x1, x2))
    assert _relative(two_layer_ntk(x1 @ q, x2 @ q), kernel) < 1e-10
    assert _relative(two_layer_ntk(2.0 * x1, 0.5 * x2), kernel) < EXACT
    pi, sigma = rng.permutation(5), rng.permutation(6)
    assert _relative(two_layer_ntk(x1[pi], x2[sigma]), kernel[pi][:, sigma]) < EXACT
    w = rng.standard_normal((5, 6))
    grad = np.asarray(two_layer_ntk_vjp(x1, x2, w))
    assert _relative(two_layer_ntk_vjp(3.0 * x1, x2, w), grad) < 1e-10
    assert _relative(two_layer_ntk_vjp(x1, 3.0 * x2, w), 3.0 * grad) < 1e-10
    assert _relative(two_layer_ntk_vjp(x1[pi], x2[sigma], w[pi][:, sigma]), grad[pi]) < EXACT
    assert _relative(two_layer_ntk_vjp(x1 @ q, x2 @ q, w), grad @ q) < 1e-10


# -- the studies' records ---------------------------------------------------------------------


UNCOMPARED = ("gram_cache", "seconds")  # a process-wide cache's hit or miss, wall-clock times


def _same_numbers(mine, theirs, path: str = "") -> None:
    """Two JSON-like records equal key by key (but ``UNCOMPARED``), floats to 1e-9 relative."""
    if isinstance(mine, dict):
        assert mine.keys() == theirs.keys(), path
        for key in mine.keys() - set(UNCOMPARED):
            _same_numbers(mine[key], theirs[key], f"{path}.{key}")
    elif isinstance(mine, list | tuple):
        assert len(mine) == len(theirs), path
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            _same_numbers(a, b, f"{path}[{i}]")
    elif isinstance(mine, float) and isinstance(theirs, float):
        assert mine == pytest.approx(theirs, rel=1e-9, abs=1e-12, nan_ok=True), path
    else:
        assert mine == theirs, path


def test_features_records_do_not_depend_on_the_order_of_the_architectures():
    """``features`` fits one machine per architecture on the same data and split
    (``_one_architecture``): --arch listed in another order gives the same record per name."""
    from ntkrobust.studies import DataSettings, ThreatSettings, features
    from ntkrobust.studies.features import FeaturesSettings

    def record(arch):
        settings = FeaturesSettings(
            data=DataSettings(n_train=40, n_test=40),
            arch=arch,
            n_features=6,
            threat=ThreatSettings(eps=0.1),
            robust_r=(1, -1),
        )
        return features.run(settings).record["architectures"]

    forward, backward = record(("fc2", "two-layer")), record(("two-layer", "fc2"))
    assert list(backward) == ["two-layer", "fc2"]
    _same_numbers(forward, dict(backward))


def test_two_layer_records_do_not_depend_on_the_order_of_the_later_widths(binary_task):
    """``two_layer_experiment`` anchors epoch ↔ t on the first width and seed alone, and every net is
    seeded by its own (width, seed): the widths after the first listed in another order give the
    same kernel rows and the same per-net records keyed by (width, seed)."""
    from ntkrobust.studies import ThreatSettings, two_layer

    def result(widths):
        settings = two_layer.TwoLayerSettings(
            data=binary_task, width=widths, nets=1, epochs=6, threat=ThreatSettings(eps=0.2)
        )
        return two_layer.run(settings).experiment

    a, b = result((20, 30, 40)), result((20, 40, 30))
    assert a.time_per_epoch == pytest.approx(b.time_per_epoch, rel=EXACT)
    _same_numbers(a.kernel, b.kernel)
    by_key = {(net["width"], net["seed"]): net for net in b.nets}
    assert [(net["width"], net["seed"]) for net in b.nets] == [(20, 0), (40, 0), (30, 0)]
    for net in a.nets:
        _same_numbers(net, by_key[(net["width"], net["seed"])], str(net["width"]))
