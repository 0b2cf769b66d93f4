"""The NTK of fully convolutional ReLU nets with a flatten readout, vectorised for the CPU.

neural-tangents' ``stax.Conv`` / ``stax.Relu`` evaluate this kernel with the scalar
``arctan2`` that ``kernels.relu`` replaces for dense nets (40-80 µs per Gram entry on 28x28x1
inputs). With a Flatten readout only same-pixel covariances reach the output (Novak et al.
2019, "Bayesian deep convolutional networks with many channels are Gaussian processes";
Arora et al. 2019 for the NTK; neural-tangents' ``diagonal_spatial`` route), so the recursion
is the dense one of ``kernels.relu`` run at every pixel, a 3x3 patch sum taking the place of
the dot product. ``stax`` remains the definition: the tests require agreement with its
``kernel_fn`` in float64.

Recursion for CONV{L} = L × (Conv 3x3 SAME, ReLU), Flatten, Dense(1), NTK parameterisation,
with weight and bias scales σ_w, σ_b, C input channels and B the 3x3 patch sum around a pixel
(zero padding, so border pixels sum fewer terms but are still divided by the fan-in 9·C):
    input Conv: Σ(p) = σ_w² B[x·x'/C](p)/9 + σ_b²,  Θ = Σ;  the same for Σ₁₁(p), Σ₂₂(p);
    ReLU, per pixel: ``kernels.relu.relu_step`` on (Σ, Θ) with that pixel's Σ₁₁, Σ₂₂; Σᵢᵢ ← Σᵢᵢ/2;
    Conv: Σ ← σ_w² B[Σ]/9 + σ_b²,  Θ ← σ_w² B[Θ]/9 + Σ  (diagonals: σ_w² B[Σᵢᵢ]/9 + σ_b²);
    Flatten + Dense: Σ ← σ_w² mean_p Σ + σ_b²,  Θ ← σ_w² mean_p Θ + Σ
(Flatten concatenates H·W pixels of equally distributed channels, so the readout's fan-in
normalisation turns the sum over pixels into a mean).

Shapes: x1 (N1, H, W, C), x2 (N2, H, W, C) in NHWC → Θ (N1, N2). The diagonals of both sides
are computed once, pixel-major: (depth, H, W, N). Θ is then computed one tile at a time, one
row of x1 against ≤ _TILE_PIXEL_ENTRIES / (H·W) columns of x2, with covariances of shape
(H, W, 1, k): pixel-major, so patch sums shift whole contiguous rows of k entries and the ReLU
is ``relu_step`` mapped over pixels. Why tiles: XLA's CPU runtime allocates a jitted call's
intermediates afresh on every call, and for whole (H, W, N1, N2) blocks these are tens of MB
that come straight from mmap (a page fault per 4 KiB, every call) and miss every cache. Tiles
of ~0.5 MB stay in cache and reuse one small buffer: 3x faster forward, 4x faster input
gradients than whole 16x64 blocks of 28x28 images. Each tile is checkpointed, so reverse mode
recomputes a tile's forward pass instead of storing the residuals of all tiles (Θ together
with its VJP thus costs two forward passes and one backward pass).
"""

from __future__ import annotations

import functools

from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.relu import relu_step

#: Target size (pixels x columns) of one tile's covariance arrays: 2¹⁶ float64 = 512 KiB.
_TILE_PIXEL_ENTRIES = 2**16


def _shifted_patch_sum(a: jnp.ndarray) -> jnp.ndarray:
    """B[a]: the sum over the 3x3 window around each pixel of the leading (H, W) axes, zero-padded.

    Shifted slices of a padded copy, in two passes of three (the window is separable), which
    XLA fuses into one loop.
    """
    padding = ((1, 1), (1, 1)) + ((0, 0),) * (a.ndim - 2)
    padded = jnp.pad(a, padding)
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


@jax.custom_vjp
def _patch_sum(a: jnp.ndarray) -> jnp.ndarray:
    """B[a], whose VJP is B again: the window is symmetric and zero padding is its own transpose.

    Autodiff would transpose the pads and slices into a chain of pads, slices and adds of
    padded copies, measured ~1.5x slower for the whole input gradient.
    """
    return _shifted_patch_sum(a)


def _patch_sum_fwd(a):  # type: ignore[no-untyped-def]
    return _shifted_patch_sum(a), None


def _patch_sum_bwd(_, g):  # type: ignore[no-untyped-def]
    return (_shifted_patch_sum(g),)


_patch_sum.defvjp(_patch_sum_fwd, _patch_sum_bwd)


def _relu_per_pixel(S, T, d1, d2):  # type: ignore[no-untyped-def]
    """``relu_step`` at every pixel: S, T (H, W, n1, n2), d1 (H, W, n1), d2 (H, W, n2)."""
    H, W = S.shape[:2]
    flat = lambda a: a.reshape((H * W, *a.shape[2:]))  # noqa: E731
    S, T = jax.vmap(relu_step)(flat(S), flat(T), flat(d1), flat(d2))
    return S.reshape((H, W, *S.shape[1:])), T.reshape((H, W, *T.shape[1:]))


def _diagonals(x: jnp.ndarray, depth: int, w2: float, b2: float) -> jnp.ndarray:
    """Σᵢᵢ(p) entering each ReLU layer: x (N, H, W, C) → (depth, H, W, N)."""
    q = w2 / 9 * _patch_sum(jnp.moveaxis(jnp.sum(x * x, axis=3), 0, 2) / x.shape[3]) + b2
    out = [q]
    for _ in range(depth - 1):
        q = w2 / 9 * _patch_sum(q / 2) + b2
        out.append(q)
    return jnp.stack(out)


def _tile(x1, q1, x2, q2, *, depth, w2, b2):  # type: ignore[no-untyped-def]
    """Θ of one row against k columns: x1 (H, W, C), q1 (depth, H, W), x2 (H, W, C, k),
    q2 (depth, H, W, k) → (k,)."""
    n_channels = x1.shape[2]
    # Channel by channel: a dot_general batched over pixels runs H·W tiny products (~3x slower).
    dots = x1[:, :, 0, None] * x2[:, :, 0]
    for c in range(1, n_channels):
        dots = dots + x1[:, :, c, None] * x2[:, :, c]
    nngp = w2 / 9 * _patch_sum(dots[:, :, None, :] / n_channels) + b2  # (H, W, 1, k)
    ntk = nngp  # inputs carry no tangent kernel: the first layer's Θ is its Σ
    for layer in range(depth):
        nngp, ntk = _relu_per_pixel(nngp, ntk, q1[layer][:, :, None], q2[layer])
        if layer < depth - 1:
            nngp = w2 / 9 * _patch_sum(nngp) + b2
            ntk = w2 / 9 * _patch_sum(ntk) + nngp
    nngp = w2 * jnp.mean(nngp, axis=(0, 1)) + b2
    return (w2 * jnp.mean(ntk, axis=(0, 1)) + nngp)[0]


def convolutional_ntk(
    x1: jnp.ndarray, x2: jnp.ndarray, get: str = "ntk", *, depth: int, W_std: float, b_std: float
) -> jnp.ndarray:
    """The NTK of depth × (3x3 SAME Conv, ReLU), Flatten, Dense in NTK parameterisation: (N1, N2)."""
    if get != "ntk":
        raise ValueError("the vectorised convolutional kernel returns the NTK only (get='ntk')")
    if depth < 1:
        raise ValueError(f"a convolutional kernel needs depth >= 1, got {depth}")
    w2, b2 = float(W_std) ** 2, float(b_std) ** 2  # Python floats stay weakly typed: float32 stays float32
    n1, n2 = x1.shape[0], x2.shape[0]
    H, W, C = x2.shape[1:]
    q1 = jnp.moveaxis(_diagonals(x1, depth, w2, b2), 3, 0)  # (N1, depth, H, W)
    q2 = _diagonals(x2, depth, w2, b2)  # (depth, H, W, N2)
    # Columns in n_tiles equal tiles of k; padding columns (zeros: finite throughout) are cut off at the end.
    n_tiles = -(-n2 // max(_TILE_PIXEL_ENTRIES // (H * W), 1))
    k = -(-n2 // n_tiles)
    pad = ((0, 0),) * 3 + ((0, n_tiles * k - n2),)
    x2_tiles = jnp.pad(jnp.transpose(x2, (1, 2, 3, 0)), pad).reshape((H, W, C, n_tiles, k))
    x2_tiles = jnp.moveaxis(x2_tiles, 3, 0)  # (n_tiles, H, W, C, k)
    q2_tiles = jnp.moveaxis(jnp.pad(q2, pad).reshape((depth, H, W, n_tiles, k)), 3, 0)
    tile = jax.checkpoint(functools.partial(_tile, depth=depth, w2=w2, b2=b2))

    def row(x1_q1):  # type: ignore[no-untyped-def]
        xi, qi = x1_q1
        return jax.lax.map(lambda x2_q2: tile(xi, qi, *x2_q2), (x2_tiles, q2_tiles))

    ntk = jax.lax.map(row, (x1, q1))  # (N1, n_tiles, k)
    return ntk.reshape((n1, n_tiles * k))[:, :n2]


def convolutional_kernel_fn(depth: int, W_std: float, b_std: float):  # type: ignore[no-untyped-def]
    """``kernel_fn(x1, x2, get='ntk')`` of CONV{depth}, in the neural-tangents calling convention."""
    return functools.partial(convolutional_ntk, depth=depth, W_std=W_std, b_std=b_std)
