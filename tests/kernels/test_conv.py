"""The vectorised convolutional NTK (``kernels.conv``) against neural-tangents stax.

Compilation dominates the cost of these tests, so every check goes through one jitted
"kernel and input VJP" function per (kernel, input shape), shared across tests.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from ntkrobust.kernels import conv as conv_module
from ntkrobust.kernels import get_architecture
from ntkrobust.kernels._jax import jax, jnp

SHAPES = [(8, 8, 1), (6, 7, 3)]
N = 5  # images per side; equal sides let Θ(x1, x2) and Θ(x1, x1) share one compilation


@functools.cache
def _kernel_and_vjp(name: str, reference: bool):
    """jit((x1, x2, cotangent) ↦ (Θ(x1, x2), cotangentᵀ ∂Θ/∂x1)) for the fast or the stax kernel."""
    arch = get_architecture(name)
    kernel_fn = arch.reference_kernel_fn if reference else arch.kernel_fn
    assert kernel_fn is not None

    @jax.jit
    def kernel_and_vjp(x1, x2, cotangent):
        k, vjp = jax.vjp(lambda z: kernel_fn(z, x2, "ntk"), x1)
        return k, vjp(cotangent)[0]

    return kernel_and_vjp


def _inputs(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """x1 (N, H, W, C) in [0, 1] with an all-zero image first, x2 (N, H, W, C) of mixed signs."""
    x1 = rng.uniform(0, 1, size=(N, *shape))
    x1[0] = 0.0
    return jnp.asarray(x1), jnp.asarray(rng.standard_normal((N, *shape)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["conv1", "conv2"])
def test_kernel_and_its_input_gradient_equal_stax_in_float64(name, shape, rng, jax_strict):
    fast, ref = _kernel_and_vjp(name, False), _kernel_and_vjp(name, True)
    x1, x2 = _inputs(rng, shape)
    cotangent = jnp.asarray(rng.standard_normal((N, N)))
    k_fast, g_fast = fast(x1, x2, cotangent)
    k_ref, g_ref = ref(x1, x2, cotangent)
    np.testing.assert_allclose(k_fast, k_ref, rtol=1e-12)
    np.testing.assert_allclose(g_fast, g_ref, rtol=1e-10, atol=1e-14 * float(jnp.abs(g_ref).max()))
    # x against itself: the diagonal carries the √ε rounding of any arc-cosine route (~1e-8).
    k_fast, k_ref = np.asarray(fast(x1, x1, cotangent)[0]), np.asarray(ref(x1, x1, cotangent)[0])
    off = ~np.eye(N, dtype=bool)
    np.testing.assert_allclose(k_fast[off], k_ref[off], rtol=1e-12)
    np.testing.assert_allclose(np.diag(k_fast), np.diag(k_ref), rtol=1e-7)


def test_tiles_and_their_padding_leave_the_kernel_unchanged(rng, jax_strict, monkeypatch):
    x1, x2 = _inputs(rng, SHAPES[1])
    whole = _kernel_and_vjp("conv2", False)(x1, x2, jnp.zeros((N, N)))[0]
    # Two columns per tile: five columns become tiles of 2, 2 and 1 + 1 padding column.
    monkeypatch.setattr(conv_module, "_TILE_PIXEL_ENTRIES", 2 * 6 * 7)
    tiled = get_architecture("conv2").kernel_fn(x1, x2, "ntk")
    np.testing.assert_allclose(tiled, whole, rtol=1e-14)


def test_tiles_and_their_padding_leave_the_input_gradient_unchanged(rng, jax_strict, monkeypatch):
    """The padding column of the last tile (a zero image) is cut off before the cotangent reaches
    it, but a NaN in its part of the VJP would still poison x1's gradient (0 · NaN). Without a bias
    its covariances are exactly 0, where the angle's derivative divides by s² + c² = 0: the tiled
    VJP of a bias-free conv2 must equal the untiled one to rtol 1e-12, and be finite."""
    from ntkrobust.kernels.architectures import convolutional

    kernel_fn = convolutional(2, b_std=0.0).kernel_fn
    assert kernel_fn is not None
    _, x2 = _inputs(rng, SHAPES[1])
    x1 = jnp.asarray(rng.uniform(0.1, 1.0, size=(N, *SHAPES[1])))  # no zero image: only the padding is one
    cotangent = jnp.asarray(rng.standard_normal((N, N)))

    def vjp():  # a new function per call: jax.jit of the same function would reuse its first trace
        return jax.jit(lambda a, b, c: jax.vjp(lambda z: kernel_fn(z, b, "ntk"), a)[1](c)[0])

    whole = np.asarray(vjp()(x1, x2, cotangent))
    monkeypatch.setattr(conv_module, "_TILE_PIXEL_ENTRIES", 2 * 6 * 7)  # tiles of 2, 2 and 1 + 1 padding
    tiled = np.asarray(vjp()(x1, x2, cotangent))
    assert np.isfinite(whole).all() and np.isfinite(tiled).all()
    np.testing.assert_allclose(tiled, whole, rtol=1e-12, atol=1e-15 * float(np.abs(whole).max()))


def test_float32_stays_float32(rng, jax_strict):
    kernel_fn = get_architecture("conv2").kernel_fn
    x1, x2 = _inputs(rng, SHAPES[0])
    k64 = _kernel_and_vjp("conv2", False)(x1, x2, jnp.zeros((N, N)))[0]
    k32 = jax.jit(lambda a, b: kernel_fn(a, b, "ntk"))(x1.astype(jnp.float32), x2.astype(jnp.float32))
    assert k32.dtype == jnp.float32
    np.testing.assert_allclose(k32, k64, rtol=1e-5)


def test_pairs_under_vmap_equal_the_diagonal_of_the_cross_kernel(rng, jax_strict):
    """How ``KernelMachine.output_jacobian``'s pairs route calls the kernel: one pair at a time."""
    kernel_fn = get_architecture("conv2").kernel_fn
    a, b = _inputs(rng, SHAPES[1])
    pair_kernel = jax.vmap(lambda u, v: kernel_fn(u[None], v[None], "ntk")[0, 0])

    @jax.jit
    def pairs_and_their_gradients(u, v):
        k, vjp = jax.vjp(lambda u_: pair_kernel(u_, v), u)
        return k, vjp(jnp.ones_like(k))[0]

    k_pairs, g_pairs = pairs_and_their_gradients(a, b)
    # With the identity as cotangent, row i of the cross kernel's VJP is ∇ Θ(a_i, b_i).
    k_cross, g_rows = _kernel_and_vjp("conv2", False)(a, b, jnp.eye(N))
    np.testing.assert_allclose(k_pairs, np.diag(k_cross), rtol=1e-13)
    np.testing.assert_allclose(g_pairs, g_rows, rtol=1e-12, atol=1e-15 * float(jnp.abs(g_rows).max()))


def test_only_the_ntk_is_available():
    kernel_fn = get_architecture("conv1").kernel_fn
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="NTK only"):
        kernel_fn(x, x, "nngp")
