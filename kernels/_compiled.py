"""The jitted block programs of a kernel machine (``kernels.machine``), one set per architecture.

Each program takes a block of test points and one chunk of the training set with its dual
coefficients α as arguments, so one compilation serves every chunk, time t and feature
restriction: kernel rows Θ(x_b, X_c), logits Θ α, the loss gradient in one forward-backward pass
(supp. eq. 5 / 8, reverse mode or the closed form of supp. eq. 9), the VJP of the rows for many
chunks, and the output Jacobians of ``KernelMachine.output_jacobian`` (routes ``cotangents``,
``pairs``, ``dots``). ``loss_cotangent`` is ∂L/∂f of the attacks' cross-entropy.

Shapes: xb (B, *input) NCHW or flat; xc (n_c, layout...); α chunk (n_c, k); rows (B, n_c).
"""

from __future__ import annotations

from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.architectures import Architecture, per_architecture
from ntkrobust.kernels.relu import dot_kernel_partials, pairwise_dots


def loss_cotangent(f: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """∂L/∂f of the cross-entropy on outputs f (B, k) for targets ``index`` (B,), shape (B, k).

    One output: L = softplus(−y f) with y = ±1 (index 0 ↔ −1); k outputs: softmax cross-entropy.
    """
    if f.shape[1] == 1:
        y = 2.0 * index.astype(f.dtype) - 1.0
        return (-y * jax.nn.sigmoid(-y * f[:, 0]))[:, None]  # d softplus(−y f) / df
    return jax.nn.softmax(f, axis=1) - jax.nn.one_hot(index, f.shape[1], dtype=f.dtype)


class Compiled:
    """Jitted block functions of one architecture; α and the training chunk are arguments."""

    def __init__(self, arch: Architecture) -> None:
        self.arch = arch

        def rows(xb: jnp.ndarray, xc: jnp.ndarray) -> jnp.ndarray:
            return arch.kernel_fn(arch.to_layout(xb.astype(xc.dtype)), xc, "ntk")

        def rows_vjp(xb: jnp.ndarray, xc: jnp.ndarray, cot: jnp.ndarray, closed: bool) -> jnp.ndarray:
            z = arch.to_layout(xb.astype(xc.dtype))
            if closed:
                assert arch.kernel_vjp is not None
                g = arch.kernel_vjp(z, xc, cot)
            else:
                _, vjp = jax.vjp(lambda z_: arch.kernel_fn(z_, xc, "ntk"), z)
                (g,) = vjp(cot)
            return arch.from_layout(g, xb.shape)

        def logits(xb: jnp.ndarray, xc: jnp.ndarray, ac: jnp.ndarray) -> jnp.ndarray:
            return rows(xb, xc) @ ac

        def loss_grad_one_pass(xb, ib, xc, ac, closed):  # type: ignore[no-untyped-def]
            z = arch.to_layout(xb.astype(xc.dtype))
            if closed:
                assert arch.kernel_vjp is not None
                f = arch.kernel_fn(z, xc, "ntk") @ ac
                g = arch.kernel_vjp(z, xc, loss_cotangent(f, ib) @ ac.T)
            else:
                k, vjp = jax.vjp(lambda z_: arch.kernel_fn(z_, xc, "ntk"), z)
                (g,) = vjp(loss_cotangent(k @ ac, ib) @ ac.T)
            return arch.from_layout(g, xb.shape)

        def per_example(g: jnp.ndarray, xb: jnp.ndarray) -> jnp.ndarray:
            """Gradients (q, B, layout...) → (B, q, *xb.shape[1:])."""
            g = jax.vmap(lambda gi: arch.from_layout(gi, xb.shape))(g)
            return jnp.swapaxes(g, 0, 1)

        def jacobian(xb, xc, w, closed):  # type: ignore[no-untyped-def]
            # One VJP of the kernel rows per picked output q, cotangent w[:, q] (weights on X).
            z = arch.to_layout(xb.astype(xc.dtype))
            cots = jnp.swapaxes(w, 0, 1)  # (q, B, nc)
            if closed:
                kernel_vjp = arch.kernel_vjp
                assert kernel_vjp is not None
                g = jax.vmap(lambda c: kernel_vjp(z, xc, c))(cots)
            else:
                _, vjp = jax.vjp(lambda z_: arch.kernel_fn(z_, xc, "ntk"), z)
                g = jax.vmap(lambda c: vjp(c)[0])(cots)
            return per_example(g, xb)

        def pair_jacobian(xb, xc, w):  # type: ignore[no-untyped-def]
            # ∇ of Θ(x_b, x_j) for every pair at once: the kernel of single pairs, mapped over
            # pairs of broadcast copies, so one backward pass separates the B·n_c gradients.
            z = arch.to_layout(xb.astype(xc.dtype))
            b, nc = z.shape[0], xc.shape[0]
            left = jnp.broadcast_to(z[:, None], (b, nc, *z.shape[1:])).reshape(b * nc, *z.shape[1:])
            right = jnp.broadcast_to(xc[None], (b, nc, *xc.shape[1:])).reshape(b * nc, *xc.shape[1:])
            pair_kernel = jax.vmap(lambda u, v: arch.kernel_fn(u[None], v[None], "ntk")[0, 0])
            per_pair = jax.grad(lambda u: jnp.sum(pair_kernel(u, right)))(left).reshape(b, nc, -1)
            g = jnp.einsum("bjd,bqj->qbd", per_pair, w.astype(per_pair.dtype)).reshape(w.shape[1], *z.shape)
            return per_example(g, xb)

        def dot_jacobian(xb, xc, w):  # type: ignore[no-untyped-def]
            # Θ(x, x_j) = F(x·x_j, ‖x‖², ‖x_j‖²) entrywise, so ∇ₓΘ(x_b, x_j) = a_bj x_j + 2 s_bj x_b
            # with a = ∂F/∂(x·x_j), s = ∂F/∂‖x‖²: one backward pass of the elementwise F gives
            # them for every pair, and Σ_j w_qj ∇Θ is one matrix product with X.
            dot_kernel = arch.dot_kernel_fn
            assert dot_kernel is not None
            z = arch.to_layout(xb.astype(xc.dtype))
            sq1, sq2 = jnp.sum(z * z, axis=1), jnp.sum(xc * xc, axis=1)
            _, a, s = dot_kernel_partials(dot_kernel, pairwise_dots(z, xc), sq1, sq2, z.shape[1])
            w = w.astype(a.dtype)
            along_x2 = jnp.einsum("bqj,jd->bqd", w * a[:, None, :], xc)
            along_x1 = 2.0 * jnp.einsum("bqj,bj->bq", w, s)[:, :, None] * z[:, None, :]
            return per_example(jnp.swapaxes(along_x2 + along_x1, 0, 1), xb)

        self.rows = jax.jit(rows)
        self.pair_jacobian = jax.jit(pair_jacobian)
        self.rows_vjp = jax.jit(rows_vjp, static_argnums=3)
        self.logits = jax.jit(logits)
        self.loss_grad_one_pass = jax.jit(loss_grad_one_pass, static_argnums=4)
        self.jacobian = jax.jit(jacobian, static_argnames="closed")
        self.dot_jacobian = jax.jit(dot_jacobian)


#: the programs of an architecture, compiled once
compiled = per_architecture(Compiled)


__all__ = ["Compiled", "compiled", "loss_cotangent"]
