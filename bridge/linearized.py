"""Linearized and centered networks around a parent network (LOO sec. 2 and 4), in forward mode.

    f_lin(x) = f_θt(x) + J_θt(x)(θ − θt)        linearized ("lazy") dynamics, LOO sec. 2, item 2
    f_cen(x) =           J_θt(x)(θ − θt)        centered dynamics, LOO sec. 2, item 3
    f_cs(x)  = f_θ(x) − f_θt(x)                 centered standard network, LOO sec. 6, table 1

θt are the parent network's parameters at the spawn epoch t, J_θt(x) = ∇θ f(x)|θt is its
Jacobian (the feature map φ(x) of LOO sec. 2), and θ, initialised to θt, are the parameters
stage 2 trains. Both terms come from one forward-mode product, as LOO compute them with JAX:
``torch.func.jvp`` of the parent's ``functional_call`` at the primal θt along the tangent θ − θt
returns f0 = f_θt(x) as its primal output and Δf = J_θt(x)(θ − θt) as its tangent, without ever
forming J. Gradients with respect to θ (training) and to x (attacks) flow through it by autograd.

Shapes, written once: x (B, ...), whatever the parent takes; f0, Δf and every output (B, C).

What is frozen. θt and the parent's buffers are buffers of the wrapper, never trained. The parent
always runs in eval mode, whatever mode the wrapper is put in: BatchNorm normalises with its
running statistics and never updates them, because new statistics would change φ(x) (LOO sec. 2,
"we freeze the batchnorm running mean and standard deviation"; sec. 6, table 1).

Kernel. ∇θ f_lin(x) = ∇θ f_cen(x) = J_θt(x) for every θ, so the empirical NTK of the wrapper is
the parent's at θt, k_t, throughout stage 2. ``bridge.entk.empirical_ntk`` computes it from the
wrapper as it is: its structured route looks for dense layers whose weight is a trainable
parameter, finds none (the parent's layers hold θt as buffers), and leaves every θ to the generic
``vmap(jacrev)`` route, through the ``jvp``. ``tangent_network()`` returns a copy of the parent at
θt, whose kernel is the same and cheaper to compute (structured dense layers, no ``jvp``).

Relative magnitude (LOO sec. 4): the mean over examples of Δfᵀ Δf / f0ᵀ f0, how much of the
linearized output the first-order term carries.

State dict (``LinearizedNetwork(build_model(config), centered=c).load_state_dict(sd)`` restores it
exactly, so a checkpoint rebuilds the wrapper; ``bridge.checkpoint`` records ``centered``):

- ``theta.<name>``: θ, the only parameters, in the parent's parameter order, named by the parent's
  parameter name with ``.`` replaced by ``-`` (``layer1.0.conv1.weight`` → ``theta.layer1-0-conv1-weight``);
- ``parent.<name>``: θt under the parent's own parameter names (held as buffers), and the
  parent's buffers (BatchNorm statistics, the two-layer net's readout, normalisation constants).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp

from ntkrobust import _load_order  # noqa: F401  (Triton before TensorFlow, before any torch.func)
from ntkrobust.bridge.jacobians import as_inputs

__all__ = ["CenteredStandardNetwork", "LinearizedNetwork", "relative_magnitude"]

_SEPARATOR = "-"  # stands for "." in θ's names: parameter names may not contain dots


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The submodule that holds the tensor ``name`` (dotted), and the tensor's own name there."""
    path, _, leaf = name.rpartition(".")
    return module.get_submodule(path), leaf


class LinearizedNetwork(nn.Module):
    """f_lin(x) = f_θt(x) + J_θt(x)(θ − θt); centered: f_cen(x) = J_θt(x)(θ − θt).

    ``parent`` is copied (later changes to it do not reach the wrapper); its current parameters
    are θt, and θ starts at θt, so a fresh wrapper computes the parent's function (or zero,
    centered). ``parameters()`` yields θ only: what an optimiser should train. Parent parameters
    with ``requires_grad=False`` stay frozen at their value and are not part of θ.
    """

    centered: bool

    def __init__(self, parent: nn.Module, *, centered: bool = False) -> None:
        super().__init__()
        if len(list(parent.named_parameters(remove_duplicate=False))) != len(list(parent.named_parameters())):
            raise ValueError("a parent with shared (tied) parameters cannot be linearized")
        parent = copy.deepcopy(parent)
        self._anchored: list[str] = []  # the parent's parameter names, in its order
        self._trained: list[str] = []  # those of θ (the rest had requires_grad=False)
        theta = nn.ParameterDict()  # filled key by key: built from a plain dict, it would sort them
        for name, parameter in list(parent.named_parameters()):
            # θt becomes a buffer under its own name: the parent's modules still find it as
            # ``self.weight``, ``.to()`` moves it, the state dict keeps it, no optimiser sees it
            module, leaf = _owner(parent, name)
            del module._parameters[leaf]
            module.register_buffer(leaf, parameter.detach())
            self._anchored.append(name)
            if not parameter.requires_grad:
                continue
            key = name.replace(".", _SEPARATOR)
            if key in theta:
                raise ValueError(f"parameters {name!r} and another both map to the name {key!r}")
            theta[key] = nn.Parameter(parameter.detach().clone())
            self._trained.append(name)
        if not theta:
            raise ValueError("the parent has no trainable parameters, so nothing to linearize")
        self.parent = parent.eval()
        self.theta = theta
        self.centered = bool(centered)

    def train(self, mode: bool = True) -> LinearizedNetwork:
        """Set the wrapper's mode; the parent stays in eval mode (frozen BatchNorm, LOO sec. 2)."""
        super().train(mode)
        self.parent.eval()
        return self

    def components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f0, Δf) = (f_θt(x), J_θt(x)(θ − θt)), both (B, C), from one ``jvp``."""
        anchors = {name: self.parent.get_buffer(name) for name in self._trained}
        shifts = {name: self.theta[name.replace(".", _SEPARATOR)] - anchor for name, anchor in anchors.items()}

        def parent_at(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.parent, params, (x,))

        primal, tangent = jvp(parent_at, (anchors,), (shifts,))[:2]  # the stubs allow an aux third
        return primal, tangent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0, delta = self.components(x)
        return delta if self.centered else f0 + delta

    def tangent_network(self) -> nn.Module:
        """The frozen parent at θt (a copy, in eval mode) with its parameters restored as
        parameters: its empirical NTK equals this model's, for every θ."""
        network = copy.deepcopy(self.parent)
        for name in self._anchored:  # in the parent's order, so its parameter order comes back
            module, leaf = _owner(network, name)
            value = module._buffers.pop(leaf)
            assert value is not None  # every anchor was registered as a tensor
            module.register_parameter(leaf, nn.Parameter(value, requires_grad=name in self._trained))
        return network.eval()

    def extra_repr(self) -> str:
        return f"centered={self.centered}"


class CenteredStandardNetwork(nn.Module):
    """f_θ(x) − f_θt(x): the full non-linear network, trained from θt, minus its output at the
    spawn (LOO sec. 6, table 1's "centered standard" network). Unlike the linearized networks its
    kernel moves: it is the trained network's, ∇θ f_θ (``tangent_network``).

    ``batchnorm``: ``frozen`` runs the trained network's BatchNorm with the spawn's running
    statistics throughout (as the linearized networks do); ``train`` lets it normalise with each
    batch's statistics in training and update its running ones (LOO table 1's "Standard Batchnorm"). The spawn
    copy always runs in eval mode and is never trained.
    """

    def __init__(self, parent: nn.Module, *, batchnorm: str = "frozen") -> None:
        super().__init__()
        if batchnorm not in ("frozen", "train"):
            raise ValueError(f"stage-2 BatchNorm is frozen or train, not {batchnorm!r}")
        self.network = copy.deepcopy(parent)
        self.spawn = copy.deepcopy(parent).eval()
        for parameter in self.spawn.parameters():
            parameter.requires_grad_(False)
        self.batchnorm = batchnorm
        self._freeze_batchnorm()  # from the start: a parent in train mode would not be frozen

    def train(self, mode: bool = True) -> CenteredStandardNetwork:
        super().train(mode)
        self.spawn.eval()
        self._freeze_batchnorm()
        return self

    def _freeze_batchnorm(self) -> None:
        """``frozen``: the trained network's BatchNorm layers in eval mode (spawn statistics)."""
        if self.batchnorm == "frozen":
            for module in self.network.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not under no_grad: an attack's input gradient is ∇x f_θ − ∇x f_θt, the spawn's term
        # included (its parameters are frozen, so training's gradient is ∇θ f_θ alone either way)
        return self.network(x) - self.spawn(x)

    def tangent_network(self) -> nn.Module:
        """The trained network alone (a copy, eval mode): ∇θ f_cs = ∇θ f_θ, so the same kernel."""
        return copy.deepcopy(self.network).eval()

    def extra_repr(self) -> str:
        return f"batchnorm={self.batchnorm}"


def relative_magnitude(model: LinearizedNetwork, x: torch.Tensor | np.ndarray, *, batch_size: int = 256) -> float:
    """LOO sec. 4: the mean over the examples of x of Δfᵀ Δf / f0ᵀ f0, without gradients, in
    batches. x goes to the model's device and dtype. 0 for a fresh wrapper; not finite if the parent
    outputs exactly zero for some example."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    reference = next(iter(model.parameters()))
    inputs = as_inputs(x, reference.device, reference.dtype)
    if inputs.shape[0] == 0:
        raise ValueError("relative magnitude of an empty input set")
    total = 0.0
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            f0, delta = model.components(inputs[start : start + batch_size])
            ratios = delta.double().pow(2).sum(1) / f0.double().pow(2).sum(1)
            total += float(ratios.sum())
    return total / inputs.shape[0]
