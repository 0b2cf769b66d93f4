"""Empirical NTK of any PyTorch network, through ``torch.func``, under a memory budget.

    Θ_{cc′}(x, x′) = ∇_θ f_c(x) · ∇_θ f_{c′}(x′)            (Jacot et al. 2018; LOO sec. 3)

Kinds (the shapes of neural-tangents, written once):
- ``full``: (N1, N2, C, C), every pair of outputs;
- ``trace``: (N1, N2), the mean of the C diagonal class blocks (LOO's "trace kernel", RAT);
- ``class:c``: (N1, N2), the block of output c alone.

How it is computed. The Jacobian of a large net over all inputs never exists at once. The
trainable parameters are cut into groups (whole tensors, or slices of a flattened tensor when one
tensor alone is too big), so that the per-example Jacobian of every input with respect to one
group fits half the memory budget; the inputs go through ``vmap(jacrev(f))`` in sub-batches sized
so that their activations and gradients fit the other half. Then Θ = Σ_groups J_g(X1) J_g(X2)ᵀ,
exactly, whatever the grouping (the tests check chunked = unchunked). When ``x2`` is omitted the
kernel is symmetric and each group's Jacobian is computed once.

BatchNorm. With ``batch_stats=False`` the net runs in eval mode with its running statistics (RAT's
"w buffer"). With ``batch_stats=True`` (RAT's "w/o buffer") every BatchNorm layer normalises with
the mean and (biased) variance of the kernel's own input set, computed once in one forward pass
and then held fixed: a per-example kernel cannot differentiate through statistics that couple the
examples without depending on how they are chunked.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from tqdm.auto import tqdm

KINDS = ("full", "trace", "class")
DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes of working memory: Jacobian groups plus activations
_MAX_SUB_BATCH = 128


class BudgetError(ValueError):
    """The memory budget cannot hold even the smallest chunk; the message says what is needed."""


@dataclass(frozen=True)
class KernelKind:
    """``full``, ``trace`` or ``class`` (with the output ``index``)."""

    name: str
    index: int | None = None

    @classmethod
    def parse(cls, text: str) -> KernelKind:
        """``"full"``, ``"trace"`` or ``"class:C"``; ValueError with one line otherwise."""
        if text in ("full", "trace"):
            return cls(text)
        head, _, tail = text.partition(":")
        if head == "class" and tail.isdigit():
            return cls("class", int(tail))
        raise ValueError(f"kernel kind must be full, trace or class:C (C an output index), got {text!r}")

    def __str__(self) -> str:
        return self.name if self.index is None else f"{self.name}:{self.index}"

    def outputs(self, num_outputs: int) -> int:
        """How many outputs per example the Jacobian needs (C, or 1 for one class)."""
        if self.index is None:
            return num_outputs
        if not 0 <= self.index < num_outputs:
            raise ValueError(f"class {self.index} is not an output of a net with {num_outputs} outputs")
        return 1


# A group is a list of (parameter name, start, stop) over the flattened parameter.
Group = list[tuple[str, int, int]]


def plan_parameter_groups(sizes: dict[str, int], capacity: int) -> list[Group]:
    """Cut parameters (name → element count, in order) into consecutive groups of at most
    ``capacity`` elements; a tensor larger than what is left in a group is sliced."""
    if capacity < 1:
        raise BudgetError("memory budget too small for even one parameter's Jacobian column")
    groups: list[Group] = []
    current: Group = []
    room = capacity
    for name, size in sizes.items():
        start = 0
        while start < size:
            stop = min(size, start + room)
            current.append((name, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                groups.append(current)
                current, room = [], capacity
    if current:
        groups.append(current)
    return groups


def with_batch_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm layers use the statistics of ``x``.

    One no-grad forward pass over all of ``x`` in train mode with momentum 1 sets every running
    mean to the batch mean; torch stores the unbiased variance, so it is rescaled by (n−1)/n to the
    biased variance that train-mode normalisation divides by.
    """
    model = copy.deepcopy(model).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    counts: dict[int, int] = {}
    hooks = []
    for norm in norms:
        if not norm.track_running_stats:
            raise ValueError("a BatchNorm layer without running statistics has no per-example kernel")
        norm.reset_running_stats()
        norm.momentum, norm.training = 1.0, True
        hooks.append(
            norm.register_forward_pre_hook(
                lambda m, args: counts.__setitem__(id(m), args[0].numel() // args[0].shape[1])
            )
        )
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    for norm in norms:
        n = counts[id(norm)]
        if norm.running_var is not None and n > 1:
            norm.running_var.mul_((n - 1) / n)
        norm.momentum = 0.1
    return model.eval()


def _activation_elements(model: nn.Module, example: torch.Tensor) -> int:
    """Elements of every leaf module's output for one example: the activations a backward keeps."""
    total = 0

    def count(_module: nn.Module, _args: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return max(total, example.numel())


class _JacobianEngine:
    """Per-example Jacobians of the selected outputs with respect to one parameter group."""

    def __init__(self, model: nn.Module, output_index: int | None):
        self.model = model
        self.params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        self.frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
        self.buffers = {name: b.detach() for name, b in model.named_buffers()}
        self.output_index = output_index

    def sizes(self) -> dict[str, int]:
        return {name: p.numel() for name, p in self.params.items()}

    def jacobian(self, group: Group, x: torch.Tensor) -> torch.Tensor:
        """(B, C′, P_group) for a sub-batch ``x`` (B, ...)."""
        pieces = {f"{name}:{start}": self.params[name].reshape(-1)[start:stop] for name, start, stop in group}

        def outputs(pieces: dict[str, torch.Tensor], example: torch.Tensor) -> torch.Tensor:
            params = dict(self.params)
            for name, start, stop in group:
                flat = self.params[name].reshape(-1)
                piece = pieces[f"{name}:{start}"]
                if stop - start < flat.numel():  # rebuild the tensor around the differentiated slice
                    piece = torch.cat([flat[:start], piece, flat[stop:]])
                params[name] = piece.reshape(self.params[name].shape)
            out = functional_call(self.model, (params, self.frozen, self.buffers), (example.unsqueeze(0),))[0]
            return out if self.output_index is None else out[self.output_index : self.output_index + 1]

        jac = vmap(jacrev(outputs), in_dims=(None, 0))(pieces, x)
        return torch.cat([jac[key].flatten(2) for key in pieces], dim=2)


def _contract(kind: KernelKind, j1: torch.Tensor, j2: torch.Tensor) -> torch.Tensor:
    """J1 (N1, C′, P) and J2 (N2, C′, P) → the kind's kernel contribution."""
    n1, outputs, width = j1.shape
    n2 = j2.shape[0]
    if kind.name == "full":
        product = j1.reshape(n1 * outputs, width) @ j2.reshape(n2 * outputs, width).T
        return product.reshape(n1, outputs, n2, outputs).permute(0, 2, 1, 3)
    # trace or one class: Σ_c J1_c J2_cᵀ (one class: C′ = 1); the trace's 1/C comes at the end
    return torch.bmm(j1.transpose(0, 1), j2.permute(1, 2, 0)).sum(0)


def empirical_ntk(
    model: nn.Module,
    x1: np.ndarray | torch.Tensor,
    x2: np.ndarray | torch.Tensor | None = None,
    *,
    kind: str | KernelKind = "trace",
    batch_stats: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The empirical NTK Θ(x1, x2) (Θ(x1, x1) if ``x2`` is None) of ``model``, as float64 numpy.

    Args:
        model: any torch module mapping (B, ...) inputs to (B, C) outputs; not modified.
        x1, x2: inputs, NCHW in [0, 1] (any shape the model takes), numpy or torch.
        kind: ``"full"`` (N1, N2, C, C), ``"trace"`` (N1, N2) or ``"class:c"`` (N1, N2).
        batch_stats: BatchNorm with the statistics of the inputs (see the module docstring)
            instead of the running statistics.
        memory_budget: bytes of working memory for Jacobians and activations (the kernel itself,
            the output, is extra). ``BudgetError`` when not even one chunk fits.
        device: where to compute (default: where the model's parameters are).
        dtype: compute dtype, e.g. ``torch.float64`` to compare kernels (default: the model's).
        progress: show a progress bar over parameter groups and sub-batches.
    """
    kind = KernelKind.parse(kind) if isinstance(kind, str) else kind
    first = next(iter(model.parameters()), None)
    if first is None:
        raise ValueError("the model has no parameters, so no tangent kernel")
    device = torch.device(device) if device is not None else first.device
    dtype = dtype or first.dtype
    net = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    a = torch.as_tensor(np.asarray(x1) if not isinstance(x1, torch.Tensor) else x1).to(device, dtype)
    b = (
        None
        if x2 is None
        else torch.as_tensor(np.asarray(x2) if not isinstance(x2, torch.Tensor) else x2).to(device, dtype)
    )
    if batch_stats:
        net = with_batch_statistics(net, a if b is None else torch.cat([a, b]))

    with torch.no_grad():
        num_outputs = net(a[:1]).shape[1]
    outputs = kind.outputs(num_outputs)
    engine = _JacobianEngine(net, kind.index)
    if not engine.params:
        raise ValueError("the model has no trainable parameters, so no tangent kernel")
    itemsize = torch.finfo(dtype).bits // 8
    samples = a.shape[0] + (0 if b is None else b.shape[0])
    capacity = (memory_budget // 2) // (samples * outputs * itemsize)
    groups = plan_parameter_groups(engine.sizes(), capacity)
    activations = _activation_elements(net, a[:1])

    shape = (a.shape[0], a.shape[0] if b is None else b.shape[0])
    kernel = torch.zeros(
        shape + ((outputs, outputs) if kind.name == "full" else ()), dtype=torch.float64, device=device
    )
    sizes = [_sub_batch_size(group, engine, activations, outputs, itemsize, memory_budget) for group in groups]
    steps = sum(math.ceil(a.shape[0] / size) + (0 if b is None else math.ceil(b.shape[0] / size)) for size in sizes)
    with tqdm(total=steps, desc=f"eNTK ({kind})", unit="chunk", disable=not progress, leave=False) as bar:
        for group, size in zip(groups, sizes, strict=True):
            j1 = _group_jacobian(engine, group, a, size, bar)
            j2 = j1 if b is None else _group_jacobian(engine, group, b, size, bar)
            kernel += _contract(kind, j1, j2).to(torch.float64)
            del j1, j2
    if kind.name == "trace":
        kernel /= outputs
    return kernel.cpu().numpy()


def _sub_batch_size(
    group: Group, engine: _JacobianEngine, activations: int, outputs: int, itemsize: int, memory_budget: int
) -> int:
    """How many examples go through ``vmap(jacrev)`` at once for ``group``.

    Working memory per example: the forward activations and C′ backward copies of them, plus
    C′ gradients of every whole tensor the group touches (a sliced tensor's full gradient is
    formed before it is sliced).
    """
    touched = sum(engine.params[name].numel() for name in {name for name, _, _ in group})
    per_example = itemsize * (activations * (2 + outputs) + outputs * touched)
    size = min((memory_budget // 2) // per_example, _MAX_SUB_BATCH)
    if size < 1:
        raise BudgetError(
            f"memory budget of {memory_budget} bytes is too small for one example's Jacobian chunk "
            f"(needs about {2 * per_example / 2**20:.1f} MiB)"
        )
    return size


def _group_jacobian(engine: _JacobianEngine, group: Group, x: torch.Tensor, size: int, bar: tqdm) -> torch.Tensor:
    parts = []
    for start in range(0, x.shape[0], size):
        parts.append(engine.jacobian(group, x[start : start + size]))
        bar.update(1)
    return torch.cat(parts)
