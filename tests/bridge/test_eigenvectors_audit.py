"""NTK eigenvectors (LOO sec. 8), audited by routes of their own: the explicit Jacobian of one
output by ``torch.func.jacrev`` (float64), its kernel's eigendecomposition in numpy, v_i =
Jᵀ u_i / √λ_i formed by hand, and the cosines of the returned images recomputed from their
explicit gradients, for both directions (argmax and argmin)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from ntkrobust.bridge.eigenvectors import eigenvector_images, ntk_eigenvectors

SHAPE = (1, 4, 4)
OUTPUT = 2


def _net() -> nn.Module:
    """A convolution (generic route) and two biased dense layers (structured route), 3 outputs."""
    torch.manual_seed(4)
    return (
        nn.Sequential(nn.Conv2d(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(18, 6), nn.Tanh(), nn.Linear(6, 3))
        .double()
        .eval()
    )


def _jacobian(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    """(N, P): ∇θ f_OUTPUT(x_n) by ``jacrev`` per example, parameters in ``named_parameters`` order."""
    params = {name: p.detach() for name, p in net.named_parameters()}

    def output(params: dict[str, torch.Tensor], example: torch.Tensor) -> torch.Tensor:
        return functional_call(net, params, (example[None],))[0, OUTPUT]

    rows = []
    for example in x:
        grads = jacrev(output)(params, example)
        rows.append(torch.cat([grads[name].reshape(-1) for name in params]))
    return torch.stack(rows).numpy()


@pytest.fixture(scope="module")
def eigen():
    net = _net()
    x = torch.rand(9, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return net, x, ntk_eigenvectors(net, x, output=OUTPUT, top=4)


def numpy_top_eigenpairs(kernel: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy's ``eigh`` by hand: the ``top`` eigenpairs descending, each u with its
    largest-magnitude entry positive (the sign ``ntk_eigenvectors`` fixes)."""
    values, vectors = np.linalg.eigh(kernel)
    values, vectors = values[::-1][:top], vectors[:, ::-1][:, :top]
    return values, vectors * np.sign(vectors[np.abs(vectors).argmax(0), np.arange(top)])


def test_v_is_jt_u_over_sqrt_lambda_from_a_numpy_eigendecomposition(eigen):
    """numpy: K = J Jᵀ, its top 4 eigenpairs descending, each u with its largest-magnitude entry
    positive, v_i = Jᵀ u_i / √λ_i (unit norm since ‖Jᵀ u_i‖² = λ_i)."""
    net, x, found = eigen
    jacobian = _jacobian(net, x)
    values, vectors = numpy_top_eigenpairs(jacobian @ jacobian.T, 4)
    assert np.all(np.diff(values) < -1e-6 * values[0])  # distinct: the eigenvectors are defined
    np.testing.assert_allclose(found.eigenvalues, values, rtol=1e-10)
    np.testing.assert_allclose(found.u, vectors, rtol=0, atol=1e-8)
    expected = (jacobian.T @ vectors / np.sqrt(values)).T
    np.testing.assert_allclose(found.v.numpy(), expected, rtol=0, atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(found.v.numpy(), axis=1), 1.0, rtol=1e-10)


def _cosines(net: nn.Module, images: np.ndarray, v: np.ndarray) -> np.ndarray:
    gradients = _jacobian(net, torch.from_numpy(images).double())
    return np.einsum("kp,kp->k", gradients, v) / np.linalg.norm(gradients, axis=1)


def test_images_maximise_and_minimise_the_cosine_they_return(eigen):
    """The returned cosines are those of the returned images (explicit gradients, the images
    rounded to float32: 1e-5); maximising never ends below the start, minimising never above, and
    the minimised cosines are the lower ones, some of them negative (a sign lost would show)."""
    net, _, found = eigen
    v = found.v.numpy()
    options = {"image_shape": SHAPE, "seed": 2}
    start_images, start = eigenvector_images(net, found, maximize=True, steps=0, **options)
    np.testing.assert_allclose(start, _cosines(net, start_images, v), rtol=0, atol=1e-5)
    high_images, high = eigenvector_images(net, found, maximize=True, steps=25, lr=0.1, **options)
    low_images, low = eigenvector_images(net, found, maximize=False, steps=25, lr=0.1, **options)
    np.testing.assert_allclose(high, _cosines(net, high_images, v), rtol=0, atol=1e-5)
    np.testing.assert_allclose(low, _cosines(net, low_images, v), rtol=0, atol=1e-5)
    assert np.all(high >= start - 1e-12) and np.all(low <= start + 1e-12)
    assert np.all(high > low + 0.1) and (low < 0).any()
