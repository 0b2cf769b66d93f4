"""Per-example Jacobian rows of convolutions from one batched backward pass, for ``bridge.jacobians``.

A convolution y = W ⋆ a + b has, for output c of the net, the per-example gradient

    ∂f_c/∂W = g_c Pᵀ,   ∂f_c/∂b = g_c 1        (g_c = ∂f_c/∂y (O, S), P = unfold(a) (I·k·k, S))

over the S output positions (BackPACK, Dangel et al. 2020; Opacus). So the gradients g_c at every
convolution's output, which one backward pass per output gives, and the inputs a, which the
forward pass sees, make its Jacobian rows with one batched product per layer: no per-example
weight gradient through ``vmap``'s grouped convolutions, and no backward pass per parameter group.

A first convolution followed by ReLU and average pooling (TK's MNIST CNN: conv, ReLU, avgpool)
goes further. Its input x needs no gradient, and between its output and the pooling's the maps
are fixed for each example: the ReLU's mask m (which the output does not change, m being piecewise
constant in W) and the pooling's average over each p × p cell. So with g_c at the pooling's output
(O, Q) and the patches pooled once per example,

    M[o, k, q] = (1/p²) Σ_{s ∈ cell q} m[o, s] P[k, s],     ∂f_c/∂W[o, k] = Σ_q g_c[o, q] M[o, k, q],

the backward pass stops at the pooling's output: the C′ gradients at full resolution (the pooling
and ReLU backward of every output, memory-bound) are replaced by one M per example. M costs as
much whatever C′ is, so this pays only for enough outputs: on the MNIST CNN (patches of K = 10
with the bias, 300 points) the kernel took 1.29, 1.05, 1.05, 0.89 and 0.82 of the plain route's
time for C′ = 1, 2, 3, 5 and 10. Hence the rule here, C′ ≥ K/2 (the class blocks of MNIST's ten
classes, not the one- and two-draw Rademacher estimates).

A convolution with few output positions S and many parameters (ResNet-18's last stage on CIFAR:
S = 16, 2.4M weights) is cheaper still without its rows. Its share of Θ_cd(x, x′) is

    ⟨g_c Pᵀ, g′_d P′ᵀ⟩ = Σ_{s,t} (g_c[:, s]·g′_d[:, t]) (P[:, s]·P′[:, t]),

the Gram of the gradients over positions times the Gram of the patches, which does not depend on
the outputs (the structured derivatives of Novak et al. 2022). Per pair of examples that is
S²(C′·O + K) products, against C′·O·K for the rows (C′ the output products per pair: C′² for the
full kernel), and it keeps S(C′·O + K) numbers per example, not C′·O·K. Both routes take only
the pairs on and above the diagonal of a kernel of one input set. So a layer takes this route
(``ConvLayer.gram``) where S²(C′·O + K) < C′·O·K: on ResNet-18 at 32 × 32 its last stage's 3 × 3
convolutions, not its earlier stages, the MNIST CNN's or the CIFAR CNN's layers.

Shapes: rows (B, C′, P_layer), the layer's parameters in the order (O, I·k·k [+ 1 for the bias]);
a Gram layer's factors g (B, C′, O, S) and patches (B, K, S).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvLayer", "add_gram_share", "conv_factors", "conv_layers", "conv_rows"]


@dataclass(frozen=True)
class ConvLayer:
    """A convolution handled by its structure. ``tap`` is the module at whose output the gradient
    g is taken: the convolution itself, or the average pooling two modules after it (``pool`` > 1)."""

    module: nn.Conv2d
    weight: str  # parameter names
    bias: str | None
    tap: nn.Module
    tap_shape: tuple[int, ...]  # one example's output of ``tap``
    pool: int = 1
    gram: bool = False  # its kernel share from the Grams of g and of the patches, without rows

    @property
    def patch(self) -> int:
        """K: the numbers of one output position's patch (with a 1 for a trainable bias)."""
        return _patch_size(self.module, self.bias)

    @property
    def size(self) -> int:
        """Parameters per output in its rows."""
        return self.module.weight.shape[0] * self.patch

    def stored(self, outputs: int) -> int:
        """Numbers kept per example for ``outputs`` outputs: its rows, or its g and patches."""
        if self.gram:
            return math.prod(self.tap_shape[1:]) * (outputs * self.tap_shape[0] + self.patch)
        return outputs * self.size


def _patch_size(conv: nn.Conv2d, bias: str | None) -> int:
    return conv.weight[0].numel() + (1 if bias else 0)


def _plain(conv: nn.Module) -> bool:
    """An ``nn.Conv2d`` that ``unfold`` reproduces: one group, zero padding given as numbers."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _square_pool(module: nn.Module) -> int:
    """p for an ``AvgPool2d`` over disjoint p × p cells without padding (else 0)."""
    if type(module) is not nn.AvgPool2d or module.padding not in (0, (0, 0)) or module.ceil_mode:
        return 0
    if module.divisor_override is not None:
        return 0
    size, stride = module.kernel_size, module.stride or module.kernel_size
    sizes = {size} if isinstance(size, int) else set(size)
    strides = {stride} if isinstance(stride, int) else set(stride)
    return sizes.pop() if len(sizes) == 1 and sizes == strides else 0


def _pooled_first(model: nn.Module, example: torch.Tensor, inputs: dict[int, torch.Tensor]) -> dict[int, nn.Module]:
    """Convolutions that see the net's input and are followed, in a ``Sequential``, by ReLU and
    an average pooling of disjoint cells: conv id → that pooling."""
    found = {}
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent)
        for conv, relu, pool in zip(children, children[1:], children[2:], strict=False):
            if inputs.get(id(conv)) is example and type(relu) is nn.ReLU and _square_pool(pool) > 1:
                found[id(conv)] = pool
    return found


def _gram_pays(products: int, channels: int, positions: int, patch: int) -> bool:
    """The Grams over S positions take fewer products per pair of examples than the rows."""
    return positions**2 * (products * channels + patch) < products * channels * patch


def conv_layers(
    model: nn.Module, example: torch.Tensor, trainable: set[str], outputs: int | None = None, *, paired: bool = False
) -> dict[str, ConvLayer]:
    """The plain convolutions with a trainable weight, each called exactly once per forward pass,
    for a Jacobian of ``outputs`` of the net's outputs (None: all of them), in a kernel that pairs
    every two outputs (``paired``, the full kind) or only each with itself."""
    candidates = {
        name: module for name, module in model.named_modules() if _plain(module) and f"{name}.weight" in trainable
    }
    calls: dict[int, int] = {}
    inputs: dict[int, torch.Tensor] = {}
    shapes: dict[int, tuple[int, ...]] = {}

    def seen(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        # any leaf module is seen: one that returns a tuple (nn.LSTM) or takes its input by
        # keyword (``self.conv(input=x)``, which the taps do not keep) has no shape to keep
        calls[id(module)] = calls.get(id(module), 0) + 1
        if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
            inputs[id(module)] = args[0]
            shapes[id(module)] = tuple(output.shape[1:])

    hooks = [m.register_forward_hook(seen) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            result = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    differentiated = outputs or result.shape[1]
    pooled = _pooled_first(model, example, inputs)
    products = differentiated**2 if paired else differentiated
    layers = {}
    for name, conv in candidates.items():
        bias = f"{name}.bias" if f"{name}.bias" in trainable else None
        patch = _patch_size(conv, bias)
        tap = pooled.get(id(conv), conv) if 2 * differentiated >= patch else conv
        if calls.get(id(conv)) != 1 or calls.get(id(tap)) != 1 or id(conv) not in inputs or id(tap) not in shapes:
            continue
        if inputs[id(conv)].dim() != 4:
            continue
        channels, *size = shapes[id(conv)]
        gram = tap is conv and _gram_pays(products, channels, math.prod(size), patch)
        layers[name] = ConvLayer(conv, f"{name}.weight", bias, tap, shapes[id(tap)], _square_pool(tap) or 1, gram)
    return layers


def _patches(layer: ConvLayer, a: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, I·k·k [+1], H, W): each output position's input patch (and a 1 for the bias)."""
    conv = layer.module
    padding = conv.padding
    assert not isinstance(padding, str), "a padding by name takes the generic route"
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = conv.kernel_size, padding, conv.stride, conv.dilation
    batch, channels = a.shape[:2]
    # F.unfold's layout (I, kh, kw) written one kernel offset at a time from strided views of the
    # padded input: the same numbers, and the bias row without a concatenation. Faster than
    # unfold's im2col on the CPU (51 vs 141 ms for 300 inputs of 32 x 14 x 14), though a tracking
    # point of the MNIST CNN gains only about 2% on idle cores (benchmarks/RESULTS.md)
    padded = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a
    patches = a.new_empty(batch, channels * kh * kw + (1 if layer.bias else 0), height, width)
    body = patches[:, : channels * kh * kw].view(batch, channels, kh * kw, height, width)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + (height - 1) * sh + 1, sh)
            columns = slice(j * dw, j * dw + (width - 1) * sw + 1, sw)
            body[:, :, i * kw + j] = padded[:, :, rows, columns]
    if layer.bias:
        patches[:, -1] = 1
    return patches


def conv_factors(layer: ConvLayer, g: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gram layer's g (B, C′, O, S) and patches (B, K, S), from g (B, C′, O, H, W), the gradients
    at its output, and its input a (B, I, H_in, W_in)."""
    return g.flatten(3), _patches(layer, a, *g.shape[3:]).flatten(2)


def conv_rows(
    layer: ConvLayer, weight: torch.Tensor, bias: torch.Tensor | None, g: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """(B, C′, P_layer) from g (B, C′, *tap_shape), the gradients at the tap's output, and the
    layer's input a (B, I, H, W) (the net's input for a pooled first convolution). ``weight`` and
    ``bias`` are the layer's values (the bias even when frozen: it moves the ReLU's mask)."""
    batch, outputs, channels = g.shape[:3]
    if layer.pool == 1:
        g, patches = conv_factors(layer, g, a)  # (B, C′, O, S), (B, K, S)
        rows = torch.bmm(g.reshape(batch, outputs * channels, -1), patches.transpose(1, 2))
        return rows.reshape(batch, outputs, -1)
    with torch.no_grad():
        conv, p = layer.module, layer.pool
        mask = (F.conv2d(a, weight, bias, conv.stride, conv.padding, conv.dilation) > 0).to(a.dtype)
        patches = _patches(layer, a, *mask.shape[2:])
        h, w = g.shape[3:]
        pooled = None  # M (B, O, K, h, w): the masked patches summed over each cell
        for i in range(p):
            for j in range(p):
                cell_mask = mask[:, :, i : h * p : p, j : w * p : p].unsqueeze(2)
                cell_patches = patches[:, :, i : h * p : p, j : w * p : p].unsqueeze(1)
                if pooled is None:
                    pooled = cell_mask * cell_patches
                else:
                    pooled.addcmul_(cell_mask, cell_patches)
        assert pooled is not None
        pooled = pooled.mul_(1 / p**2).flatten(3).flatten(0, 1)  # (B·O, K, Q)
    per_channel = g.flatten(3).transpose(1, 2).flatten(0, 1)  # (B·O, C′, Q)
    rows = torch.bmm(per_channel, pooled.transpose(1, 2))  # (B·O, C′, K)
    return rows.reshape(batch, channels, outputs, -1).transpose(1, 2).reshape(batch, outputs, -1)


#: Elements of one block of the Gram route's products (rows of the kernel at a time): 256 MB in float64
_GRAM_BLOCK_ELEMENTS = 2**25


def add_gram_share(
    kernel: torch.Tensor,
    kind: str,
    factors1: tuple[torch.Tensor, torch.Tensor],
    factors2: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Add a Gram convolution's share Σ_{s,t} (g_c[:, s]·g′_d[:, t]) (P[:, s]·P′[:, t]) into
    ``kernel``, from g (N, C′, O, S) and patches (N, K, S) of each input set, a block of the
    kernel's rows at a time. ``kind``: ``"full"`` (kernel (N1, N2, C′, C′)), ``"class-blocks"``
    ((N1, N2, C′)) or any other for the sum over the outputs ((N1, N2)). When ``factors2`` is
    ``factors1`` the kernel is symmetric: each block of rows is taken from its diagonal on and
    mirrored below it, half the products."""
    symmetric = factors2 is factors1
    (g1, p1), (g2, p2) = factors1, factors2
    n2, outputs, channels, positions = g2.shape

    def by_position(g: torch.Tensor) -> torch.Tensor:
        """full: (N·C′·S, O), every output apart; class blocks: (C′, N·S, O), one product per
        output; trace and one class: (N·S, C′·O), the outputs summed by the product."""
        if kind == "full":
            return g.permute(0, 1, 3, 2).reshape(-1, channels)
        if kind == "class-blocks":
            return g.permute(1, 0, 3, 2).reshape(outputs, -1, channels)
        return g.permute(0, 3, 1, 2).reshape(-1, outputs * channels)

    gradients2 = by_position(g2).transpose(-1, -2)
    patches2 = p2.transpose(1, 2).reshape(n2 * positions, -1).T  # (K, N2·S)
    per_row = {"full": outputs**2, "class-blocks": outputs}.get(kind, 1) + 1
    size = max(1, _GRAM_BLOCK_ELEMENTS // (per_row * positions**2 * n2))
    mirrored = {"full": (1, 0, 3, 2), "class-blocks": (1, 0, 2)}.get(kind, (1, 0))  # Θ(x′, x) from Θ(x, x′)
    for start in range(0, g1.shape[0], size):
        rows = slice(start, start + size)
        n1 = g1[rows].shape[0]
        first = start if symmetric else 0  # the columns taken: from the diagonal on, or all
        m = n2 - first
        patch = p1[rows].transpose(1, 2).reshape(n1 * positions, -1) @ patches2[:, first * positions :]
        patch = patch.reshape(n1, positions, m, positions)
        grads = by_position(g1[rows]) @ gradients2[..., first * (outputs if kind == "full" else 1) * positions :]
        if kind == "full":  # (i, c, s, j, d, t) → (i, j, c, d)
            grads = grads.reshape(n1, outputs, positions, m, outputs, positions)
            share = torch.einsum("icsjdt,isjt->ijcd", grads, patch)
        elif kind == "class-blocks":  # (c, i, s, j, t) → (i, j, c)
            share = torch.einsum("cisjt,isjt->ijc", grads.reshape(outputs, n1, positions, m, positions), patch)
        else:
            share = torch.einsum("isjt,isjt->ij", grads.reshape(n1, positions, m, positions), patch)
        share = share.to(torch.float64)
        kernel[rows, first:] += share
        if symmetric:  # the rows below this block, from its columns right of the diagonal block
            kernel[start + n1 :, rows] += share[:, n1:].permute(*mirrored)
