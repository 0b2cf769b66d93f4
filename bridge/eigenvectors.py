"""Top eigenvectors of a net's empirical NTK, in parameter space and as images (LOO sec. 8, fig. 4).

Loo et al. 2022 (sec. 8, "Visualizing NTK eigenvectors"): with J = [φ(x_1) … φ(x_N)]ᵀ the
Jacobian of one scalar output f_c over a set X (φ(x) = ∇θ f_c(x)) and K = J Jᵀ = U Λ Uᵀ its
eNTK block, the right-singular vectors of J = U Σ Vᵀ are v_i = Jᵀ u_i / √λ_i. J itself is never
formed: Jᵀ u_i = ∂θ (u_iᵀ f_c(X)), the gradient of a weighted sum of the net's outputs. Each v_i is
then shown as the input x_i that maximises (or minimises) cos(v_i, φ(x_i)): 2k images for the top k.

Shapes, written once: X (N, C, H, W) in [0, 1]; K (N, N); eigenvalues (k,) descending; u (N, k);
v (k, P), P the number of trainable parameters, in ``model.named_parameters()`` order, each
tensor flattened; images (k, C, H, W) in [0, 1].

The net runs in eval mode throughout, so BatchNorm uses its running statistics (RAT's "w
buffer") and each example's output, hence its row of J, depends on that example alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ntkrobust import _load_order  # noqa: F401  (Triton before TensorFlow, before any torch.func)
from ntkrobust._progress import progress_iter
from ntkrobust.bridge.entk import auto_memory_budget, empirical_ntk
from ntkrobust.bridge.jacobians import activation_elements, as_inputs, dense_layers, transposed_products

__all__ = ["KernelRankError", "NTKEigenvectors", "eigenvector_images", "ntk_eigenvectors"]

_MAX_SUB_BATCH = 256
_STRUCTURED = True  # dense layers by their outer-product structure (False: the generic route, for tests)
_START_NOISE = 0.1  # std of the start logits z: x = sigmoid(z) ≈ 0.5 ± 0.025, grey with a little noise


class KernelRankError(ValueError):
    """An eigenvalue asked for is at the kernel's rounding level (its rank is below ``top``), so its
    eigenvector would picture noise. A ``ValueError``, kept apart from others (a failed ``eigh``'s
    ``LinAlgError`` is one too) so that callers can refuse exactly this case."""


@dataclass(frozen=True)
class NTKEigenvectors:
    """The top k eigenpairs of the class-``output`` eNTK block K = J Jᵀ on a set X.

    ``u[:, i]`` has its largest-magnitude entry positive (eigenvectors have no sign of their own;
    this fixes one, so runs agree), and ``v[i] = Jᵀ u[:, i] / ‖Jᵀ u[:, i]‖``.
    """

    eigenvalues: np.ndarray  # (k,) descending, float64
    u: np.ndarray  # (N, k) float64, orthonormal columns
    v: torch.Tensor  # (k, P) unit rows, the model's dtype and device
    output: int


def _eval_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode: the caller's model (its mode, buffers, ``.grad``) stays as it was."""
    return copy.deepcopy(model).eval()


def _trainable(net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, p) for name, p in net.named_parameters() if p.requires_grad]


def ntk_eigenvectors(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    *,
    output: int,
    top: int = 4,
    memory_budget: int | None = None,
) -> NTKEigenvectors:
    """The ``top`` eigenpairs of Θ_output(X, X) and their parameter-space vectors v_i ∝ Jᵀ u_i.

    Args:
        model: maps (B, C, H, W) to (B, outputs); not modified. Computed in its dtype and on its
            device (cast it with ``.double()`` to compare against an explicit Jacobian).
        x: the set X, (N, C, H, W) in [0, 1], numpy or torch.
        output: the output index c whose scalar function f_c is analysed.
        top: how many eigenpairs (1 ≤ top ≤ N).
        memory_budget: bytes of working memory, for the kernel (``empirical_ntk``) and for the
            sub-batches of X in the gradients; default ``auto_memory_budget``.

    Raises ``FloatingPointError`` (from ``empirical_ntk``) when the kernel is not finite, and
    ``KernelRankError`` (a ``ValueError``) when an eigenvalue asked for is at the kernel's rounding
    level (N·eps·λ_1 of the model's dtype): its eigenvector would be noise.
    """
    net = _eval_copy(model)
    params = _trainable(net)
    if not params:
        raise ValueError("the model has no trainable parameters, so no tangent kernel")
    first = params[0][1]
    xs = as_inputs(x, first.device, first.dtype)
    n = xs.shape[0]
    if not 1 <= top <= n:
        raise ValueError(f"top must be between 1 and the number of inputs ({n}), got {top}")
    if memory_budget is None:
        memory_budget = auto_memory_budget(first.device)

    # a kernel of NaN or inf (where eigh fails with a LinAlgError that names neither) is refused there
    kernel = empirical_ntk(net, xs, kind=f"class:{output}", memory_budget=memory_budget)
    eigenvalues, vectors = np.linalg.eigh(kernel)  # ascending
    eigenvalues, vectors = eigenvalues[::-1][:top].copy(), vectors[:, ::-1][:, :top].copy()
    signs = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(top)])
    vectors *= np.where(signs == 0, 1.0, signs)
    # an eigenvalue at the kernel's rounding level (rank below ``top``: repeated inputs, a dead net)
    # has an eigenvector of rounding noise, and v = Jᵀu/‖Jᵀu‖ of it (0/0 for an exact zero) pictures nothing
    floor = n * torch.finfo(first.dtype).eps * max(float(eigenvalues[0]), 0.0)
    if eigenvalues[-1] <= floor:
        raise KernelRankError(
            f"an eigenvector has a zero eigenvalue (λ_{top} = {eigenvalues[-1]:.3g}, λ_1 = {eigenvalues[0]:.3g}, "
            f"rounding level {floor:.2g}): ask for fewer (top) or more varied inputs"
        )

    # Jᵀ u_i = ∂θ Σ_n u_ni f_c(x_n): u_i as weights on output c alone. Memory: the activations
    # of one sub-batch.
    itemsize = torch.finfo(first.dtype).bits // 8
    per_example = 3 * itemsize * activation_elements(net, xs[:1])  # activations and their gradients
    size = max(1, min(memory_budget // per_example, _MAX_SUB_BATCH))
    with torch.no_grad():
        outputs = net(xs[:1]).shape[1]
    weights = torch.zeros(top, n, outputs, dtype=first.dtype, device=first.device)
    weights[:, :, output] = torch.as_tensor(vectors.T, dtype=first.dtype, device=first.device)
    products = transposed_products(net, xs, weights, [p for _, p in params], batch_size=size)
    v = torch.stack([torch.cat([g.reshape(-1) for g in grads]) for grads in products])
    norms = v.norm(dim=1, keepdim=True)  # ‖Jᵀ u_i‖ = √λ_i, above the rounding level checked above
    return NTKEigenvectors(eigenvalues=eigenvalues, u=vectors, v=(v / norms).detach(), output=output)


def eigenvector_images(
    model: nn.Module,
    eigen: NTKEigenvectors,
    *,
    maximize: bool,
    steps: int = 200,
    lr: float = 0.05,
    image_shape: tuple[int, int, int],
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One image per eigenvector: x_i = argmax (or argmin) cos(v_i, ∇θ f_output(x_i)).

    x_i = sigmoid(z_i) stays in [0, 1] without clipping; z starts at small seeded noise around 0
    (grey 0.5) and follows Adam with step ``lr`` for ``steps`` steps; each image is its best
    iterate, the start included (``steps=0`` gives the start). The k images are optimised
    together, as one batch: per-example parameter gradients φ(x_i) by ``vmap(grad(f))``
    (torch.func), differentiated once more with respect to z. On the CPU this is 10-20% faster
    than k separate ``autograd.grad(create_graph=True)`` calls, and dense layers taken by their
    structure (below) halve an MNIST CNN's step; then the convolutions dominate.

    Returns:
        images (k, C, H, W) float32 in [0, 1], and the cosines (k,) float64 of those images.
    """
    net = _eval_copy(model)
    named = _trainable(net)
    if not named:
        raise ValueError("the model has no trainable parameters, so no tangent kernel")
    first = named[0][1]
    if eigen.v.shape[1] != sum(p.numel() for _, p in named):
        raise ValueError(f"v has {eigen.v.shape[1]} parameters, the model {sum(p.numel() for _, p in named)}")
    params = {name: p.detach() for name, p in named}
    frozen = {name: p.detach() for name, p in net.named_parameters() if not p.requires_grad}
    buffers = {name: b.detach() for name, b in net.named_buffers()}
    # v split into per-tensor views, so v_i · φ(x_i) is a sum over tensors with no (k, P) concatenation
    v = eigen.v.to(first.device, first.dtype)
    pieces, offset = {}, 0
    for name, p in params.items():
        pieces[name] = v[:, offset : offset + p.numel()].reshape(v.shape[0], *p.shape)
        offset += p.numel()
    # Dense layers y = s·W h + s_b·b by their structure (as in bridge.entk): φ_W(x) = s·g hᵀ and
    # φ_b(x) = s_b·g, with g = ∂f/∂y, so v·φ = s·gᵀ V h + s_b·g·v_b and ‖φ‖² = (s²‖h‖² + s_b²)‖g‖²,
    # and the (k, out, in) per-example gradients (most of an MNIST CNN's P) are never formed.
    dense = dense_layers(net, torch.full((1, *image_shape), 0.5, dtype=first.dtype, device=first.device), set(params))
    if not _STRUCTURED:
        dense = {}
    structured = {name for layer in dense.values() for name in (layer.weight, layer.bias) if name}
    generic = {name: p for name, p in params.items() if name not in structured}
    zeros = {name: params[layer.weight].new_zeros(params[layer.weight].shape[0]) for name, layer in dense.items()}

    def scalar(
        generic: dict[str, torch.Tensor], shifts: dict[str, torch.Tensor], image: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs: dict[str, torch.Tensor] = {}

        def tap(name: str):  # type: ignore[no-untyped-def]
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
                inputs[name] = args[0][0]  # h, the layer's input
                return output + shifts[name]  # ∂f/∂shift = g

            return hook

        hooks = [layer.module.register_forward_hook(tap(name)) for name, layer in dense.items()]
        try:
            out = functional_call(net, ({**params, **generic}, frozen, buffers), (image[None],))[0, eigen.output]
        finally:
            for hook in hooks:
                hook.remove()
        return out, inputs

    # (k, C, H, W) → ({name: (k, *shape)}, {layer: g (k, out)}), {layer: h (k, in)}
    per_example = vmap(grad(scalar, argnums=(0, 1), has_aux=True), in_dims=(None, None, 0))

    def cosines(z: torch.Tensor) -> torch.Tensor:
        (phi, g), h = per_example(generic, zeros, torch.sigmoid(z))
        dots = [(phi[name] * pieces[name]).flatten(1).sum(1) for name in generic]
        squares = [phi[name].flatten(1).pow(2).sum(1) for name in generic]
        for name, layer in dense.items():
            weight = torch.bmm(pieces[layer.weight], h[name][:, :, None])[:, :, 0]  # V h (k, out)
            dots.append(layer.w_scale * (g[name] * weight).sum(1))
            gg, hh = g[name].pow(2).sum(1), h[name].pow(2).sum(1)
            squares.append(layer.w_scale**2 * gg * hh)
            if layer.bias is not None:
                dots.append(layer.b_scale * (g[name] * pieces[layer.bias]).sum(1))
                squares.append(layer.b_scale**2 * gg)
        return torch.stack(dots).sum(0) / torch.stack(squares).sum(0).sqrt()  # (k,); ‖v_i‖ = 1

    generator = torch.Generator().manual_seed(seed)  # on the CPU, so a seed gives the same start anywhere
    k = v.shape[0]
    z = _START_NOISE * torch.randn(k, *image_shape, generator=generator, dtype=torch.float64)
    z = z.to(first.device, first.dtype).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    sign = -1.0 if maximize else 1.0  # Adam minimises sign · cos
    # The objective is piecewise smooth (ReLU) and Adam's fixed-size steps wander near an optimum
    # (the top eigenvector, already near cos 0.97 at grey, drifts by ±0.02): keep each image's
    # best iterate, so the result is never worse than the start.
    best_z, best = z.detach().clone(), torch.full((k,), math.inf, dtype=first.dtype, device=first.device)
    for step in progress_iter(range(steps + 1), "eigenvector images", "step", show=progress):
        with torch.set_grad_enabled(step < steps):  # the last iterate is only scored
            objective = sign * cosines(z)  # (k,); the images are independent: one sum, k gradients
        with torch.no_grad():
            better = objective < best
            best = torch.where(better, objective.detach(), best)
            # where, not boolean indexing: that reads the mask's count back, a round trip a step
            best_z = torch.where(better.view(-1, *([1] * len(image_shape))), z.detach(), best_z)
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        objective.sum().backward()
        optimizer.step()
    images = torch.sigmoid(best_z)
    return images.cpu().numpy().astype(np.float32), (sign * best).cpu().numpy().astype(np.float64)
