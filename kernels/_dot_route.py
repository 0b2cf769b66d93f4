"""Loss gradients of dot kernels as two matrix products plus elementwise passes.

For kernels of x·x', ‖x‖², ‖x'‖² only (dense nets, the two-layer kernel of supp. eq. 29),
Θ(x, x_j) = F(x·x_j, ‖x‖², ‖x_j‖²) entry by entry, so ∇ₓΘ(x_b, x_j) = a_bj x_j + 2 s_bj x_b with
a = ∂F/∂(x·x'), s = ∂F/∂‖x‖². The input gradient of the loss (supp. eq. 5 and 8; DΘ(x, X)ᵀ α of
supp. eq. 9) is then, with W = ∂L/∂f αᵀ (B, n) the cotangent on the kernel rows,
    ∇ₓL(x_b) = Σ_j W_bj ∇ₓΘ(x_b, x_j) = [(W∘a) X]_b + 2 (Σ_j W_bj s_bj) x_b:
the GEMM of the dot products x·X (shared with the logits f = F(·) α) and one more GEMM of the
same size, plus elementwise work. The partials come from forward-mode autodiff of F
(``Architecture.entry_kernel_fn``, ``jax.jvp`` along one argument) or, for the closed-form
gradient, from ``Architecture.dot_partials_fn`` (supp. eq. 9).

Why three programs (profile: fc2, 500 × 2000 MNIST, float64, 2 shared CPU cores; issue 20):
each GEMM takes ~35 ms and one fused pass of F over the B×n entries ~10 ms, but reverse-mode
autodiff of F (the VJP of ``kernel_fn``, the route before this one) took ~100 ms. XLA's CPU
backend does not duplicate a floating-point divide into several consumers, so every divide of
the arctangent's range reduction and of 1/r with more than one user became an array of its
own: ~16 passes over B×n arrays. The same happens to F's value and its two partials computed in
one program (~190 ms). Each elementwise result here is the single output of its own program
(f, W∘a, Σ_j W∘s), so XLA fuses all of F into one loop: three passes of F, no intermediates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.architectures import Architecture, per_architecture
from ntkrobust.kernels.relu import pairwise_dots


def _loss_cotangent(f: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    from ntkrobust.kernels.machine import loss_cotangent  # machine imports this module

    return loss_cotangent(f, index)


@dataclass(frozen=True)
class DotPrograms:
    """The jitted programs of one dot kernel and gradient kind (see the module docstring)."""

    forward: Callable[..., tuple[jnp.ndarray, jnp.ndarray]]  # (xb, xc, sq2, ac) -> dots, f
    dots: Callable[..., jnp.ndarray]  # (xb, xc) -> dots
    norm_weights: Callable[..., jnp.ndarray]  # (dots, sq2, xb, ib, f, ac) -> v = Σ_j W∘s (B,)
    gradient: Callable[..., jnp.ndarray]  # (dots, sq2, xb, ib, f, xc, ac, v) -> (W∘a) X + 2 v x, NCHW


def build(arch: Architecture, closed: bool) -> DotPrograms:
    """Programs for ``arch`` with partials by autodiff of F or, if ``closed``, in closed form."""
    entry = arch.entry_kernel_fn
    assert entry is not None
    if closed:
        assert arch.dot_partials_fn is not None
        partials = arch.dot_partials_fn

        def along_dots(dots, sq1, sq2, dim):  # type: ignore[no-untyped-def]
            return partials(dots, sq1, sq2, dim)[0]  # XLA drops the unused partial

        def along_norm(dots, sq1, sq2, dim):  # type: ignore[no-untyped-def]
            return partials(dots, sq1, sq2, dim)[1]
    else:

        def along_dots(dots, sq1, sq2, dim):  # type: ignore[no-untyped-def]
            return jax.jvp(lambda d: entry(d, sq1, sq2, dim), (dots,), (jnp.ones_like(dots),))[1]

        def along_norm(dots, sq1, sq2, dim):  # type: ignore[no-untyped-def]
            # sq1 is (B, 1): the tangent 1 moves ‖x_b‖² in every entry of row b at once
            return jax.jvp(lambda q: entry(dots, q, sq2, dim), (sq1,), (jnp.ones_like(sq1),))[1]

    def layout(xb: jnp.ndarray, xc: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        z = arch.to_layout(xb.astype(xc.dtype))
        return z, jnp.sum(z * z, axis=1)[:, None]

    def dots(xb, xc):  # type: ignore[no-untyped-def]
        return pairwise_dots(layout(xb, xc)[0], xc)

    def forward(xb, xc, sq2, ac):  # type: ignore[no-untyped-def]
        z, sq1 = layout(xb, xc)
        d = pairwise_dots(z, xc)
        return d, entry(d, sq1, sq2, z.shape[1]) @ ac

    def weights(ib, f, ac):  # type: ignore[no-untyped-def]
        return _loss_cotangent(f, ib) @ ac.T  # W = ∂L/∂f αᵀ, (B, n)

    def norm_weights(d, sq2, xb, ib, f, ac):  # type: ignore[no-untyped-def]
        z, sq1 = layout(xb, ac)
        return jnp.sum(weights(ib, f, ac) * along_norm(d, sq1, sq2, z.shape[1]), axis=1)

    def gradient(d, sq2, xb, ib, f, xc, ac, v):  # type: ignore[no-untyped-def]
        z, sq1 = layout(xb, xc)
        wa = weights(ib, f, ac) * along_dots(d, sq1, sq2, z.shape[1])
        # The barrier keeps W∘a out of the GEMM: fused into it, XLA's CPU backend leaves the
        # BLAS routine for a loop (kernels._feature_rows measured ~1.8x slower).
        return arch.from_layout(jax.lax.optimization_barrier(wa) @ xc + 2.0 * v[:, None] * z, xb.shape)

    return DotPrograms(
        forward=jax.jit(forward),
        dots=jax.jit(dots),
        norm_weights=jax.jit(norm_weights),
        gradient=jax.jit(gradient),
    )


_built = per_architecture(build)


def programs_for(arch: Architecture, closed: bool) -> DotPrograms | None:
    """The programs of ``arch``, or None where it has no dot route (convolutional kernels, or a
    closed form without ``dot_partials_fn``): those keep the reverse-mode route."""
    if arch.entry_kernel_fn is None or (closed and arch.dot_partials_fn is None):
        return None
    return _built(arch, closed)


def loss_gradient_block(
    programs: DotPrograms,
    xb: jnp.ndarray,
    ib: jnp.ndarray,
    chunks: list[tuple[jnp.ndarray, jnp.ndarray]],
    norms: list[jnp.ndarray],
) -> jnp.ndarray:
    """∇ₓL of one test block against the training chunks (x_c, α_c) with their ‖x_j‖² (1, n_c)
    (kept by the machine: for one example, computing them reads the training set once more),
    NCHW at the chunks' dtype.

    One chunk: its dot products serve the logits and both gradient passes. Several chunks: all
    logits first (the loss needs the whole sum), then each later chunk's dot products once more
    and its share of the gradient, instead of keeping every chunk's (the budget that cut the
    chunks forbids it); the first chunk's are still at hand.
    """
    d, f = programs.forward(xb, chunks[0][0], norms[0], chunks[0][1])
    for (xc, ac), sq2 in zip(chunks[1:], norms[1:], strict=True):
        f = f + programs.forward(xb, xc, sq2, ac)[1]
    g = None
    for i, ((xc, ac), sq2) in enumerate(zip(chunks, norms, strict=True)):  # ∇ₓL sums over training points
        if i > 0:  # the first chunk's dot products are still those of its forward pass
            d = programs.dots(xb, xc)
        v = programs.norm_weights(d, sq2, xb, ib, f, ac)
        gc = programs.gradient(d, sq2, xb, ib, f, xc, ac, v)
        g = gc if g is None else g + gc
    assert g is not None
    return g
