"""NTK eigenvectors (LOO sec. 8): against an explicit Jacobian, sub-batched, and as images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkrobust.bridge.eigenvectors import NTKEigenvectors, eigenvector_images, ntk_eigenvectors
from ntkrobust.bridge.models import build_model, model_config

TOL = 1e-8  # float64 throughout where routes are compared
CASES = {  # name: (input shape, width); N = 12 inputs, 3 outputs
    "fc2": ((1, 8, 8), 16),
    "conv1": ((1, 8, 8), 4),
    "mnist-cnn": ((1, 8, 8), 2),  # torch's nn.Linear, where conv1 and fc2 have NTKLinear
    "resnet18": ((3, 8, 8), 2),  # BatchNorm: the rows of J are taken with the running statistics
}
OUTPUT = 1


def tiny_model(name: str) -> torch.nn.Module:
    shape, width = CASES[name]
    model = build_model(model_config(name, shape, 3, width=width, seed=1))
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model.train()  # non-trivial running statistics
        with torch.no_grad():
            model(torch.rand(8, *shape, generator=torch.Generator().manual_seed(5)))
    return model.eval()


def inputs(name: str, n: int = 12, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, *CASES[name][0], generator=torch.Generator().manual_seed(0), dtype=dtype)


def explicit_jacobian(model: torch.nn.Module, x: torch.Tensor, output: int) -> np.ndarray:
    """J (N, P): row n = ∇θ f_output(x_n), one autograd call per example, parameters in order."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for example in x:
        grads = torch.autograd.grad(model(example[None])[0, output], params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).detach().numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_v_are_the_right_singular_vectors_of_the_jacobian(name):
    model, x = tiny_model(name).double(), inputs(name)
    eigen = ntk_eigenvectors(model, x, output=OUTPUT, top=4)
    jacobian = explicit_jacobian(model.eval(), x, OUTPUT)
    v = eigen.v.numpy()
    assert eigen.eigenvalues.shape == (4,) and eigen.u.shape == (12, 4) and v.shape == (4, jacobian.shape[1])
    assert eigen.v.dtype == torch.float64 and eigen.output == OUTPUT
    assert np.all(np.diff(eigen.eigenvalues) <= 0)
    singular = np.linalg.svd(jacobian, compute_uv=False)[:4]
    np.testing.assert_allclose(eigen.eigenvalues, singular**2, rtol=TOL)  # λ_i = σ_i²
    scale = np.sqrt(eigen.eigenvalues[0])
    # J v_i = √λ_i u_i, signs included (v_i = Jᵀ u_i / ‖Jᵀ u_i‖)
    np.testing.assert_allclose(jacobian @ v.T, eigen.u * np.sqrt(eigen.eigenvalues), rtol=0, atol=TOL * scale)
    np.testing.assert_allclose(v @ v.T, np.eye(4), rtol=0, atol=TOL)
    # and the u are eigenvectors of K = J Jᵀ, with the sign convention (largest entry positive)
    kernel = jacobian @ jacobian.T
    np.testing.assert_allclose(kernel @ eigen.u, eigen.u * eigen.eigenvalues, rtol=0, atol=TOL * eigen.eigenvalues[0])
    assert np.all(eigen.u[np.abs(eigen.u).argmax(0), np.arange(4)] > 0)


def test_sub_batches_give_the_same_v_as_one_batch(monkeypatch):
    from ntkrobust.bridge import eigenvectors

    model, x = tiny_model("conv1").double(), inputs("conv1")
    whole = ntk_eigenvectors(model, x, output=OUTPUT, top=3)
    batches: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))  # the copy keeps it
    monkeypatch.setattr(eigenvectors, "_MAX_SUB_BATCH", 5)
    chunked = ntk_eigenvectors(model, x, output=OUTPUT, top=3)
    assert batches[-3:] == [5, 5, 2]  # the gradient pass went through three sub-batches
    np.testing.assert_array_equal(chunked.eigenvalues, whole.eigenvalues)
    torch.testing.assert_close(chunked.v, whole.v, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def conv1_eigen():
    model = tiny_model("conv1").double()
    return model, ntk_eigenvectors(model, inputs("conv1"), output=OUTPUT, top=3)


def test_images_raise_or_lower_the_cosine(conv1_eigen):
    model, eigen = conv1_eigen
    shape = CASES["conv1"][0]
    options = {"image_shape": shape, "seed": 3}
    start_images, start = eigenvector_images(model, eigen, maximize=True, steps=0, **options)
    np.testing.assert_allclose(start_images, 0.5, atol=0.1)  # grey with a little noise:
    # x = sigmoid(z), z ~ N(0, 0.1²), so x ≈ 0.5 + z/4: mean 0.5 and std 0.025 over the 192 pixels
    # (standard errors 0.0018 and 0.0013); pure grey, or noise half or twice as large, fails
    assert abs(start_images.mean() - 0.5) < 0.01 and 0.018 < start_images.std() < 0.032
    high_images, high = eigenvector_images(model, eigen, maximize=True, steps=40, **options)
    low_images, low = eigenvector_images(model, eigen, maximize=False, steps=40, **options)
    assert high_images.shape == low_images.shape == (3, *shape) and high.shape == low.shape == (3,)
    assert high_images.dtype == low_images.dtype == np.float32 and high.dtype == np.float64
    for images in (high_images, low_images):
        assert images.min() >= 0 and images.max() <= 1
    # each image is its best iterate, so never worse than the start; the top eigenvector starts
    # near cos 0.97 (grey's gradient is mostly along v_1), the others rise by ~0.6 and all fall by
    # ~0.4 or more: margin 0.2
    assert np.all(high >= start) and np.all(high[1:] > start[1:] + 0.2)
    assert np.all(low < start - 0.2)
    again, cosines = eigenvector_images(model, eigen, maximize=True, steps=40, **options)
    np.testing.assert_array_equal(again, high_images)
    np.testing.assert_array_equal(cosines, high)
    other, _ = eigenvector_images(model, eigen, maximize=True, steps=40, image_shape=shape, seed=4)
    assert np.abs(other - high_images).max() > 1e-3


def test_returned_cosines_are_those_of_the_returned_images(conv1_eigen):
    model, eigen = conv1_eigen
    # 40 steps up: the top eigenvector's cosine wanders, its best iterate is not its last one
    images, cosines = eigenvector_images(model, eigen, maximize=True, steps=40, image_shape=CASES["conv1"][0], seed=3)
    gradients = explicit_jacobian(model.eval(), torch.from_numpy(images).double(), OUTPUT)  # (k, P)
    v = eigen.v.numpy()
    expected = np.einsum("kp,kp->k", gradients, v) / np.linalg.norm(gradients, axis=1)
    np.testing.assert_allclose(cosines, expected, rtol=0, atol=1e-5)  # the images are rounded to float32


@pytest.mark.parametrize("name", ["conv1", "mnist-cnn"])
def test_dense_layers_by_structure_equal_the_generic_route(monkeypatch, name):
    from ntkrobust.bridge import eigenvectors
    from ntkrobust.bridge.jacobians import dense_layers

    model = tiny_model(name).double()
    shape = CASES[name][0]
    trainable = {key for key, p in model.named_parameters() if p.requires_grad}
    assert dense_layers(model, torch.rand(1, *shape, dtype=torch.float64), trainable)  # the route is taken
    eigen = ntk_eigenvectors(model, inputs(name), output=OUTPUT, top=2)
    structured = eigenvector_images(model, eigen, maximize=True, steps=5, image_shape=shape)
    monkeypatch.setattr(eigenvectors, "_STRUCTURED", False)
    generic = eigenvector_images(model, eigen, maximize=True, steps=5, image_shape=shape)
    np.testing.assert_allclose(structured[1], generic[1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(structured[0], generic[0], rtol=0, atol=1e-6)  # float32 images


def test_a_batchnorm_model_is_left_as_it_was():
    model = tiny_model("resnet18")
    model.train()  # a train-mode caller: neither its mode nor its running statistics may change
    before = {key: value.clone() for key, value in model.state_dict().items()}
    x = inputs("resnet18", 6, torch.float32)
    eigen = ntk_eigenvectors(model, x, output=0, top=2)
    images, cosines = eigenvector_images(model, eigen, maximize=True, steps=3, image_shape=CASES["resnet18"][0])
    assert images.shape == (2, 3, 8, 8) and np.all(np.isfinite(cosines))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    # eval mode inside: the same v as for the caller's model in eval mode
    torch.testing.assert_close(ntk_eigenvectors(model.eval(), x, output=0, top=2).v, eigen.v)


def test_bad_requests_are_refused(conv1_eigen):
    model, eigen = conv1_eigen
    with pytest.raises(ValueError, match="top must be between 1 and the number of inputs"):
        ntk_eigenvectors(model, inputs("conv1", 3), output=OUTPUT, top=4)
    wrong = NTKEigenvectors(eigen.eigenvalues, eigen.u, eigen.v[:, 1:], eigen.output)
    with pytest.raises(ValueError, match="parameters"):
        eigenvector_images(model, wrong, maximize=True, steps=1, image_shape=CASES["conv1"][0])
