"""What one forward pass of a net shows about it, for ``bridge.jacobians``: ``forward_pass`` runs
one under observing hooks, and ``used_outside`` names the layers whose weight or bias an operation
takes outside the layer's own call (``F.linear(h, self.a.weight)`` in a ``forward``), which the
structured route of the empirical NTK cannot see through the layer's hooks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["forward_pass", "used_outside"]


def forward_pass(model: nn.Module, x: torch.Tensor, hooks: list[torch.utils.hooks.RemovableHandle]) -> None:
    """One no-grad forward pass of ``x`` that the ``hooks`` observe; the hooks go afterwards."""
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()


#: reads of a tensor's metadata, not of its values (``self.a.weight.shape[0]`` in a forward)
_METADATA = frozenset(
    [getattr(torch.Tensor, name).__get__ for name in ("shape", "dtype", "device", "ndim", "requires_grad")]
    + [torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel]
)


class _OutsideUses(TorchFunctionMode):
    """Names the layers whose weight or bias an op takes outside the layer's own call (a read of
    its shape aside)."""

    def __init__(self, owners: dict[int, str]):
        super().__init__()
        self.owners = owners  # id of a layer's weight or bias → the layer's name
        self.inside: set[str] = set()
        self.outside: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        for value in () if func in _METADATA else tree_flatten((args, kwargs or {}))[0]:
            name = self.owners.get(id(value)) if isinstance(value, torch.Tensor) else None
            if name is not None and name not in self.inside:
                self.outside.add(name)
        return func(*args, **(kwargs or {}))


def used_outside(model: nn.Module, example: torch.Tensor, layers: dict[str, nn.Module]) -> set[str]:
    """The ``layers`` (name → module) whose weight or bias a forward pass of ``example`` hands to
    an op outside the module's own call (``F.linear(h, self.a.weight)``, ``self.a.bias.sin()``):
    their gradient is not the module's alone, whatever the example's values."""
    if not layers:
        return set()
    owners = {
        id(tensor): name
        for name, module in layers.items()
        for tensor in (module.weight, getattr(module, "bias", None))
        if isinstance(tensor, torch.Tensor)
    }
    mode = _OutsideUses(owners)
    hooks = []
    for name, module in layers.items():
        hooks.append(module.register_forward_pre_hook(lambda m, args, name=name: mode.inside.add(name)))
        hooks.append(module.register_forward_hook(lambda m, args, out, name=name: mode.inside.discard(name)))
    with mode:
        forward_pass(model, example, hooks)
    return mode.outside
