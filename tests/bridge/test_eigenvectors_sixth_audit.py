"""Mutation audit of the eNTK eigenvectors (sixth round): what the earlier audits left open, each
against a route of its own (a Jacobian known in closed form, numpy's ``eigh`` by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_eigenvectors_audit import numpy_top_eigenpairs
from torch import nn

from ntkrobust.bridge.eigenvectors import KernelRankError, eigenvector_images, ntk_eigenvectors


def test_an_eigenvector_of_an_exactly_zero_kernel_is_refused_not_divided_by_zero():
    """A bias-free dense layer on black images: ∇θ f_c(x) = x ⊗ e_c = 0 exactly, so K = J Jᵀ = 0
    and Jᵀ u = 0 for every u. v = Jᵀ u / ‖Jᵀ u‖ would be 0/0 (NaN pictures downstream): refused
    with the remedy. The same net on varied images gives v = the unit rows of Jᵀ u, checked by
    hand (J's rows are the flattened images in the block of output c, zeros elsewhere)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False)).double()
    with pytest.raises(KernelRankError, match=r"an eigenvector has a zero eigenvalue \(λ_2 = 0, .*\): ask for fewer"):
        ntk_eigenvectors(net, np.zeros((4, 1, 4, 4)), output=1, top=2)
    x = np.random.default_rng(3).uniform(0, 1, size=(4, 1, 4, 4))
    found = ntk_eigenvectors(net, x, output=1, top=2)
    flat = x.reshape(4, 16)
    jacobian = np.zeros((4, 3, 16))
    jacobian[:, 1] = flat  # ∂f_1/∂W is x in row 1 of W
    jacobian = jacobian.reshape(4, 48)
    values, vectors = numpy_top_eigenpairs(flat @ flat.T, 2)
    np.testing.assert_allclose(found.eigenvalues, values, rtol=1e-12)
    expected = (jacobian.T @ vectors / np.sqrt(values)).T
    np.testing.assert_allclose(found.v.numpy(), expected, rtol=0, atol=1e-12)
    assert torch.isfinite(found.v).all()


OUTPUT = 2
SHAPE = (1, 2, 8)  # not square: an image with H and W swapped has another shape


@pytest.fixture(scope="module")
def frozen_first_layer():
    """A frozen dense layer (16 → 6, tanh) and a trainable one (6 → 3): the trainable Jacobian of
    output c is closed-form, ∇θ f_c(x) = [h(x) in row c of W₂, 1 at b₂[c]], h = tanh(W₁x + b₁), with
    the 21 trainable parameters in ``named_parameters`` order (W₂ row-major, then b₂)."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    net[1].requires_grad_(False)
    x = np.random.default_rng(5).uniform(0, 1, size=(8, *SHAPE))
    return net, x, ntk_eigenvectors(net, x, output=OUTPUT, top=3)


def _hidden(net: nn.Module, images: np.ndarray) -> np.ndarray:
    w, b = net[1].weight.detach().numpy(), net[1].bias.detach().numpy()
    return np.tanh(images.reshape(len(images), -1).astype(np.float64) @ w.T + b)


def _jacobian(net: nn.Module, images: np.ndarray) -> np.ndarray:
    rows = np.zeros((len(images), 21))
    rows[:, OUTPUT * 6 : (OUTPUT + 1) * 6] = _hidden(net, images)
    rows[:, 18 + OUTPUT] = 1.0
    return rows


def test_frozen_parameters_are_neither_in_the_kernel_nor_in_v(frozen_first_layer):
    """K = H Hᵀ + 1 over the trainable layer alone; numpy's eigh by hand (descending, the
    largest-magnitude entry of each u positive), v_i = Jᵀ u_i / √λ_i of length 21, not 123."""
    net, x, found = frozen_first_layer
    jacobian = _jacobian(net, x)
    values, vectors = numpy_top_eigenpairs(jacobian @ jacobian.T, 3)
    assert np.all(np.diff(values) < -1e-6 * values[0])  # distinct: the eigenvectors are defined
    assert found.v.shape == (3, 21)
    np.testing.assert_allclose(found.eigenvalues, values, rtol=1e-10)
    np.testing.assert_allclose(found.u, vectors, rtol=0, atol=1e-8)
    np.testing.assert_allclose(found.v.numpy(), (jacobian.T @ vectors / np.sqrt(values)).T, rtol=0, atol=1e-8)


def test_the_last_step_is_scored_and_the_cosines_are_the_closed_form_ones(frozen_first_layer):
    """cos(v_i, φ(x)) = (v_i·φ(x)) / ‖φ(x)‖ in closed form on the returned images (float32: 1e-5).
    One Adam step must be scored: with ``steps=1`` the images may only be the start or the one
    step, and the step moves some cosine up (maximising) or down (minimising) by more than 1e-3:
    a loop that never scores its last iterate returns the start unchanged."""
    net, _, found = frozen_first_layer
    v = found.v.numpy()

    def closed_form(images: np.ndarray) -> np.ndarray:
        phi = _jacobian(net, images)
        return np.einsum("kp,kp->k", phi, v) / np.linalg.norm(phi, axis=1)

    options = {"image_shape": SHAPE, "seed": 1, "lr": 0.1}
    start_images, start = eigenvector_images(net, found, maximize=True, steps=0, **options)
    np.testing.assert_allclose(start, closed_form(start_images), rtol=0, atol=1e-5)
    for maximize, direction in ((True, 1.0), (False, -1.0)):
        images, cosines = eigenvector_images(net, found, maximize=maximize, steps=1, **options)
        assert images.shape == (3, *SHAPE)
        np.testing.assert_allclose(cosines, closed_form(images), rtol=0, atol=1e-5)
        assert np.all(direction * (cosines - start) >= -1e-6)  # never worse than the start
        assert np.any(direction * (cosines - start) > 1e-3), (maximize, cosines, start)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_an_eigenvalue_at_the_rounding_level_is_refused(dtype):
    """Four copies of one image: the kernel J Jᵀ has rank 1, so λ_2 is rounding noise (8.9e-16 of
    λ_1 = 5.76 in float64) and its eigenvector pictures nothing: refused below N·eps·λ_1 of the
    net's dtype. The rank-1 eigenpair itself is still given, with λ_1 = 4‖∇θ f_c‖² by hand."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    x = np.repeat(np.random.default_rng(0).uniform(0, 1, size=(1, 1, 4, 4)), 4, axis=0)
    with pytest.raises(KernelRankError, match=r"an eigenvector has a zero eigenvalue \(λ_2 = .*: ask for fewer"):
        ntk_eigenvectors(net, x, output=1, top=2)
    found = ntk_eigenvectors(net, x, output=1, top=1)
    grads = torch.autograd.grad(net(torch.as_tensor(x[:1], dtype=dtype))[0, 1], list(net.parameters()))
    squared = sum(float((g.double() ** 2).sum()) for g in grads)
    np.testing.assert_allclose(found.eigenvalues, [4 * squared], rtol=1e-12 if dtype == torch.float64 else 1e-5)
