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

Shapes: rows (B, C′, P_layer), the layer's parameters in the order (O, I·k·k [+ 1 for the bias]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvLayer", "conv_layers", "conv_rows"]


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

    @property
    def size(self) -> int:
        """Parameters per output in its rows."""
        weight = self.module.weight
        return weight.numel() + (weight.shape[0] if self.bias else 0)


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


def conv_layers(
    model: nn.Module, example: torch.Tensor, trainable: set[str], outputs: int | None = None
) -> dict[str, ConvLayer]:
    """The plain convolutions with a trainable weight, each called exactly once per forward pass,
    for a Jacobian of ``outputs`` of the net's outputs (None: all of them)."""
    candidates = {
        name: module for name, module in model.named_modules() if _plain(module) and f"{name}.weight" in trainable
    }
    calls: dict[int, int] = {}
    inputs: dict[int, torch.Tensor] = {}
    shapes: dict[int, tuple[int, ...]] = {}

    def seen(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
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
    layers = {}
    for name, conv in candidates.items():
        bias = f"{name}.bias" if f"{name}.bias" in trainable else None
        patch = conv.weight[0].numel() + (1 if bias else 0)
        tap = pooled.get(id(conv), conv) if 2 * differentiated >= patch else conv
        if calls.get(id(conv)) != 1 or calls.get(id(tap)) != 1 or inputs[id(conv)].dim() != 4:
            continue
        layers[name] = ConvLayer(conv, f"{name}.weight", bias, tap, shapes[id(tap)], _square_pool(tap) or 1)
    return layers


def _patches(layer: ConvLayer, a: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, I·k·k [+1], H, W): each output position's input patch (and a 1 for the bias)."""
    conv = layer.module
    padding = conv.padding
    assert not isinstance(padding, str), "a padding by name takes the generic route"
    patches = F.unfold(a, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride)
    if layer.bias:
        patches = torch.cat([patches, patches.new_ones(patches.shape[0], 1, patches.shape[2])], 1)
    return patches.reshape(a.shape[0], -1, height, width)


def conv_rows(
    layer: ConvLayer, weight: torch.Tensor, bias: torch.Tensor | None, g: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """(B, C′, P_layer) from g (B, C′, *tap_shape), the gradients at the tap's output, and the
    layer's input a (B, I, H, W) (the net's input for a pooled first convolution). ``weight`` and
    ``bias`` are the layer's values (the bias even when frozen: it moves the ReLU's mask)."""
    batch, outputs, channels = g.shape[:3]
    if layer.pool == 1:
        patches = _patches(layer, a, *g.shape[3:]).flatten(2)  # (B, K, S)
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
