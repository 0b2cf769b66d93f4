"""What the empirical NTK will compute before it computes it (``bridge.entk``): the kernel's kind,
the net made ready (device, dtype, BatchNorm statistics, random-sign outputs), and the passes over
the inputs cut from a memory budget, with each pass's sub-batch size.

The budget is split in two. One half holds what a pass keeps of every input: the structured
layers' factors and rows (at most a quarter of the budget; beyond it the convolutions take the
groups' route), and one parameter group's Jacobian in the rest. The other half holds one
sub-batch's activations and gradients; on a CPU the sub-batch is also kept near the allocator's
sweet spot (``_CPU_WORKING_BYTES``). ``bridge.entk``'s docstring says why each route
is taken. A plan depends only on the net, the inputs' count and shape, the kind and the budget,
so under torchrun every process makes the same one from the agreed (smallest) budget.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from ntkrobust._allocator import available_memory, freed_memory_retained
from ntkrobust._messages import first_line
from ntkrobust.attacks.threat import looks_channels_last
from ntkrobust.bridge import distributed
from ntkrobust.bridge.jacobians import (
    BudgetError,
    Group,
    JacobianEngine,
    activation_elements,
    as_inputs,
    forward_pass,
    plan_parameter_groups,
)

__all__ = [
    "AUTO_BUDGET_SHARE",
    "MIN_AUTO_BUDGET",
    "KernelKind",
    "Pass",
    "Plan",
    "auto_memory_budget",
    "plan_kernel",
    "rademacher_signs",
    "with_batch_statistics",
]

MIN_AUTO_BUDGET = 2**30  # the automatic budget: a share of the free memory, at least 1 GiB
AUTO_BUDGET_SHARE = 0.4
_MAX_SUB_BATCH = 128
#: On a CPU, a sub-batch's working memory is kept near one of these sizes, after the allocator.
#: With glibc's defaults, blocks above its mmap threshold (at most 32 MB) arrive as fresh pages at
#: every call, so sub-batches stay small: the MNIST CNN (4.8 MB per example) on 300 points took
#: 1.16 s at 128 examples, 0.76 s at 16; the conv2 twin (12.9 MB) 2.50 s at 128, 1.30 s at 4; the
#: CIFAR CNN (27 MB) 2.97 s at 128, 2.14 s at 4. With freed memory kept (``retain_freed_memory``,
#: as the command line runs) every block is reused and larger sub-batches pay fewer calls: class
#: blocks at 512 MB against 64 MB, two sweeps on 2 cores, the MNIST CNN (300 points) 0.80-0.95 of
#: the time, the CIFAR CNN (200) 0.81-0.87, ResNet-18 (40) 0.85-0.98; 1-2 GB were no better than
#: 512 MB beyond the noise. A GPU keeps the budget's size.
_CPU_WORKING_BYTES = 64 * 2**20
_CPU_WORKING_BYTES_RETAINED = 512 * 2**20


def _cpu_working_bytes() -> int:
    return _CPU_WORKING_BYTES_RETAINED if freed_memory_retained() else _CPU_WORKING_BYTES


#: rademacher:K past 2**31 draws would fit no machine (and overflowed torch's randint past 2**63)
_MAX_DRAWS = 2**31
_RADEMACHER_FORM = "rademacher:K (0 < K < 2**31 random-sign draws)"
_KIND_FORMS = f"full, class-blocks, trace, class:C (C an output index) or {_RADEMACHER_FORM}"


@dataclass(frozen=True)
class KernelKind:
    """What an empirical NTK holds: ``full`` (N1, N2, C, C), ``class-blocks`` (N1, N2, C),
    ``trace`` (N1, N2), ``class`` with the output ``index`` (N1, N2), or ``rademacher`` with
    ``index`` K random-sign draws, 0 < K < 2**31 (N1, N2). ``parse`` reads the text forms; a kind built
    directly is checked the same way."""

    name: str
    index: int | None = None
    #: the estimator's text form, as refusals say it (``bridge.tracking``'s --estimator too)
    RADEMACHER_FORM: ClassVar[str] = _RADEMACHER_FORM

    def __post_init__(self) -> None:
        indexed = {"class": lambda i: i >= 0, "rademacher": lambda i: 0 < i < _MAX_DRAWS}
        if self.name in ("full", "class-blocks", "trace") and self.index is None:
            return
        if self.name in indexed and isinstance(self.index, int) and indexed[self.name](self.index):
            return
        raise ValueError(f"kernel kind must be {_KIND_FORMS}, got {self.name!r} with index {self.index!r}")

    @classmethod
    def parse(cls, text: str) -> KernelKind:
        """``"full"``, ``"class-blocks"``, ``"trace"``, ``"class:C"`` or ``"rademacher:K"``; ValueError
        with one line otherwise."""
        head, _, tail = text.partition(":")
        with contextlib.suppress(ValueError):  # the kind's own check, said of the text given
            if text in ("full", "class-blocks", "trace"):
                return cls(text)
            if head in ("class", "rademacher") and tail.isdigit():
                return cls(head, int(tail))
        raise ValueError(f"kernel kind must be {_KIND_FORMS}, got {text!r}")

    def __str__(self) -> str:
        return self.name if self.index is None else f"{self.name}:{self.index}"

    def outputs(self, num_outputs: int) -> int:
        """How many outputs per example the Jacobian needs (C, 1 for one class, K for K draws)."""
        if self.name == "rademacher":
            return int(self.index or 0)
        if self.index is None:
            return num_outputs
        if not 0 <= self.index < num_outputs:
            raise ValueError(f"class {self.index} is not an output of a net with {num_outputs} outputs")
        return 1


def auto_memory_budget(device: torch.device | str = "cpu") -> int:
    """``AUTO_BUDGET_SHARE`` of the memory free now (the GPU's on CUDA), at least ``MIN_AUTO_BUDGET``."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = available_memory() or 8 * 2**30  # not Linux: assume a modest machine
    return max(int(AUTO_BUDGET_SHARE * free), MIN_AUTO_BUDGET)


def with_batch_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm layers use the statistics of ``x``.

    One no-grad forward pass over all of ``x`` in train mode with momentum 1 sets every running
    mean to the batch mean; torch stores the unbiased variance, so it is rescaled by (n−1)/n to the
    biased variance that train-mode normalisation divides by.
    """
    model = copy.deepcopy(model).eval()
    names = {id(m): name for name, m in model.named_modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    counts: dict[int, list[int]] = {}  # per layer, the count of numbers per channel of each call
    momenta = {id(norm): norm.momentum for norm in norms}

    def count(norm: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        given = args[0] if args else kwargs.get("input")  # self.bn(input=h) is a call too
        if isinstance(given, torch.Tensor):
            counts.setdefault(id(norm), []).append(given.numel() // given.shape[1])

    hooks: list[torch.utils.hooks.RemovableHandle] = []
    for norm in norms:
        if not norm.track_running_stats:  # a "w/o buffer" layer: give the copy buffers to hold x's statistics
            norm.track_running_stats = True
            reference = norm.weight if norm.weight is not None else next(model.parameters())
            features = norm.num_features
            norm.register_buffer("running_mean", torch.zeros(features, dtype=reference.dtype, device=reference.device))
            norm.register_buffer("running_var", torch.ones(features, dtype=reference.dtype, device=reference.device))
            norm.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=reference.device))
        norm.reset_running_stats()
        norm.momentum, norm.training = 1.0, True
        hooks.append(norm.register_forward_pre_hook(count, with_kwargs=True))
    forward_pass(model, x, hooks)
    for norm in norms:
        calls = counts.get(id(norm), [])
        if len(calls) > 1:  # each call normalises by its own input's statistics; one buffer holds one
            raise ValueError(
                f"BatchNorm layer {names[id(norm)]!r} is called {len(calls)} times in one forward pass: batch "
                "statistics give each call its own mean and variance, which its one pair of buffers cannot "
                "hold; use one BatchNorm layer per use (or its running statistics: batch_stats=False)"
            )
        if norm.running_var is not None and calls and calls[0] > 1:
            norm.running_var.mul_((calls[0] - 1) / calls[0])
        norm.momentum = momenta[id(norm)]
    return model.eval()


class _SignedOutputs(nn.Module):
    """f_v = v·f for each row v of ``signs`` (K, C): the K outputs of the Rademacher estimator."""

    def __init__(self, model: nn.Module, signs: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("signs", signs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) @ self.signs.T


def rademacher_signs(draws: int, num_outputs: int, seed: int) -> torch.Tensor:
    """(draws, C) independent fair ±1 signs, the same for a seed on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (draws, num_outputs), generator=generator).to(torch.float64) * 2 - 1


@dataclass(frozen=True)
class Plan:
    """What ``empirical_ntk`` decides before the first product: the prepared net's Jacobian
    engine, the passes over the inputs and each pass's sub-batch size."""

    kind: KernelKind
    a: torch.Tensor
    b: torch.Tensor | None
    engine: JacobianEngine
    passes: list[Pass]
    batch: list[int]
    outputs: int
    num_outputs: int
    estimated: bool


def _as_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):  # torch lists all of its backends: say what a user writes
        raise ValueError(f"unknown device {device!r}: e.g. 'cpu', 'cuda' or 'cuda:1'") from None


def _as_floating_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A floating torch dtype, also from its name ("float64"): an integer dtype has no gradients."""
    named = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not (isinstance(named, torch.dtype) and named.is_floating_point):
        raise TypeError(f"dtype must be a floating torch dtype such as torch.float64, got {dtype!r}")
    return named


def plan_kernel(
    model: nn.Module,
    x1: np.ndarray | torch.Tensor,
    x2: np.ndarray | torch.Tensor | None,
    kind: str | KernelKind,
    batch_stats: bool,
    memory_budget: int | None,
    device: str | torch.device | None,
    dtype: torch.dtype | str | None,
    structured: bool,
    seed: int,
) -> Plan:
    """The net on its device and dtype, its engine and the passes that fit ``memory_budget``
    (``BudgetError`` when none does); the arguments are ``empirical_ntk``'s."""
    kind = KernelKind.parse(kind) if isinstance(kind, str) else kind
    first = next(iter(model.parameters()), None)
    if first is None:
        raise ValueError("the model has no parameters, so no tangent kernel")
    device = _as_device(device) if device is not None else first.device
    dtype = first.dtype if dtype is None else _as_floating_dtype(dtype)
    net = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    a = as_inputs(x1, device, dtype)
    b = None if x2 is None else as_inputs(x2, device, dtype)
    if b is not None and a.shape[1:] != b.shape[1:]:
        raise ValueError(f"inputs of shapes {tuple(a.shape[1:])} and {tuple(b.shape[1:])}: one kernel takes one")
    # every entry of the kernel would be NaN (one read of the inputs per kernel; the meta device,
    # which stands in for CUDA in the placement tests, has no values to read)
    if a.device.type != "meta" and not all(bool(torch.isfinite(t).all()) for t in ((a,) if b is None else (a, b))):
        raise ValueError("inputs contain NaN or inf")
    buffer_free = any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats for m in net.modules()
    )
    if batch_stats or buffer_free:  # a BatchNorm without running statistics only has the batch's
        net = with_batch_statistics(net, a if b is None else torch.cat([a, b]))
    if memory_budget is None:
        memory_budget = auto_memory_budget(device)
    # under torchrun the ranks cut the passes from one budget, the smallest: each reads its own GPU
    memory_budget = distributed.agreed_minimum(memory_budget, device)

    with torch.no_grad():
        try:
            probe = net(a[:1])
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as error:  # "mat1 and mat2 shapes cannot be multiplied" says too little
            said = first_line(error)
            if a.ndim == 4 and looks_channels_last(tuple(a.shape[1:])):  # as compute_gram says it
                said += f"; images of shape {tuple(a.shape[1:])} look like NHWC (channels last): transpose them "
                said += "to NCHW with x.permute(0, 3, 1, 2)"
            raise ValueError(f"the model does not take inputs of shape {tuple(a.shape[1:])}: {said}") from None
    # a (B, C, H, W) map or a tuple was "too many values to unpack (expected 3)" deep in a contraction
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2:
        got = f"shape {tuple(probe.shape)}" if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ValueError(f"the model must map a batch to (batch, outputs) scores, got {got} for one input")
    _check_vmap(net, a[:1])
    num_outputs = probe.shape[1]
    outputs = kind.outputs(num_outputs)
    estimated = kind.name == "rademacher"
    if estimated:  # the trace of the K signed outputs' kernel, rescaled at the end
        net = _SignedOutputs(net, rademacher_signs(outputs, num_outputs, seed).to(device=device, dtype=dtype))
        kind = KernelKind("trace")
    itemsize = torch.finfo(dtype).bits // 8
    samples = a.shape[0] + (0 if b is None else b.shape[0])
    unsound = None  # checked once, by the first engine
    for convolutions in ("all", "gram", "none"):
        # the convolutions' rows (then Gram factors) of every example at once would crowd out the
        # groups: they take the groups' route, where they are chunked like any parameter
        engine = JacobianEngine(
            net,
            kind.index,
            a[:1],
            structured=structured,
            convolutions=convolutions,
            paired=kind.name == "full",
            unsound=unsound,
        )
        unsound = engine.unsound
        if not engine.convs or samples * itemsize * _structured_numbers(engine, outputs) <= memory_budget // 4:
            break
    if not engine.params:
        raise ValueError("the model has no trainable parameters, so no tangent kernel")
    factor_bytes = samples * itemsize * _structured_numbers(engine, outputs)
    passes = _plan_passes(kind, engine.sizes(), outputs, (memory_budget // 2 - factor_bytes) // (samples * itemsize))
    if engine.dense or engine.convs:
        passes.insert(0, Pass(None, None))  # the structured layers' pass
    activations = activation_elements(net, a[:1])
    batch = [  # of every pass on every rank: a budget too small for one is refused alike everywhere
        _sub_batch_size(
            _kept(p, engine, outputs),
            activations,
            1 if p.output is not None else outputs,
            itemsize,
            memory_budget,
            cpu=device.type == "cpu",
        )
        for p in passes
    ]
    return Plan(kind, a, b, engine, passes, batch, outputs, num_outputs, estimated)


def _check_vmap(net: nn.Module, example: torch.Tensor) -> None:
    """``ValueError`` in one line when the net cannot run under ``torch.func.vmap``, which every
    per-example Jacobian takes: an ``nn.GRU``, ``nn.LSTM`` or ``nn.RNN`` has no batching rule, and
    inside ``jacrev`` the error was "output with shape [1, 5] doesn't match the broadcast shape
    [3, 1, 5]" from the first sub-batch. One forward pass of one example."""
    if example.device.type == "meta":  # the placement tests' stand-in for CUDA: no values to run
        return
    try:
        with torch.no_grad():
            vmap(lambda one: net(one[None])[0])(example)
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as error:
        said = first_line(error)
        raise ValueError(
            f"the model cannot run under torch.func.vmap, which its per-example Jacobians need: {said}"
        ) from None


def _structured_numbers(engine: JacobianEngine, outputs: int) -> int:
    """What the structured layers' pass keeps per example (for the whole kernel, of every
    example): the dense layers' factors g (C′ × out) and h (in), and the convolutions' rows
    (C′ × P_layer) or Gram factors."""
    dense = sum(
        outputs * engine.params[d.weight].shape[0] + engine.params[d.weight].shape[1] for d in engine.dense.values()
    )
    return dense + sum(layer.stored(outputs) for layer in engine.convs.values())


def _kept(step: Pass, engine: JacobianEngine, outputs: int) -> int:
    """Numbers one example's result holds in a pass: the structured layers' factors and rows, or a
    group's Jacobian (C′ gradients of every whole tensor the group touches: a sliced tensor's full
    gradient is formed before it is sliced)."""
    if step.group is None:
        return _structured_numbers(engine, outputs)
    touched = sum(engine.params[name].numel() for name in {name for name, _, _ in step.group})
    return (1 if step.output is not None else outputs) * touched


@dataclass(frozen=True)
class Pass:
    """One pass over the inputs: a parameter group (None: the structured layers' factors and rows) and the
    output it differentiates (None: every selected output at once)."""

    group: Group | None
    output: int | None


def _plan_passes(kind: KernelKind, sizes: dict[str, int], outputs: int, capacity: int) -> list[Pass]:
    """The parameter groups, for all C outputs at once or, for the class blocks and the trace of
    a net that needs many groups, one output at a time.

    A group's Jacobian of N examples holds N·C·P_g numbers, so with all outputs at once the groups
    are C times smaller and C times more numerous, and every pass runs a forward pass and C
    backward passes down to its group's first layer. The class blocks and the trace never pair
    two outputs, so they can take one output at a time through groups C times larger: the same
    number of forward passes, and C times fewer backward passes (each as deep as its larger
    group). Measured on ResNet-18 (24 CIFAR points, class blocks, 2 cores): with 15 or 50 groups
    at once, one output at a time took 0.70 of the time (34.8 s vs 49.6 s; 72 s vs 103 s); with 5
    groups (40 points) 1.24 times as long, each output's pass then running the whole depth. Hence
    one output at a time from C groups up."""
    if not sizes:  # every parameter took the dense layers' route
        return []
    if capacity < outputs:
        if kind.name in ("class-blocks", "trace") and capacity >= 1:
            return [Pass(group, c) for c in range(outputs) for group in plan_parameter_groups(sizes, capacity)]
        raise BudgetError("memory budget too small for even one parameter's Jacobian column")
    together = plan_parameter_groups(sizes, capacity // outputs)
    if kind.name in ("class-blocks", "trace") and outputs > 1 and len(together) >= outputs:
        return [Pass(group, c) for c in range(outputs) for group in plan_parameter_groups(sizes, capacity)]
    return [Pass(group, None) for group in together]


def _sub_batch_size(
    kept: int,
    activations: int,
    outputs: int,
    itemsize: int,
    memory_budget: int,
    *,
    cpu: bool = False,
) -> int:
    """How many examples go through a pass at once.

    Working memory per example: the forward activations and C′ backward copies of them, the
    ``kept`` numbers of its result (its Jacobian, or its factors and rows), and jacrev's C′ one-hot
    cotangents of C′ numbers each, which vmap holds for every example: negligible for a net's C
    outputs, but 4 GB at 20 examples for ``rademacher:5000``, which the budget did not see.
    """
    per_example = itemsize * (activations * (2 + outputs) + kept + outputs * outputs)
    size = min((memory_budget // 2) // per_example, _MAX_SUB_BATCH)
    if cpu and size >= 1:
        size = min(size, max(1, _cpu_working_bytes() // per_example))
    if size < 1:
        raise BudgetError(
            f"memory budget of {_mib(memory_budget)} MiB is too small for one example's Jacobian chunk "
            f"(needs about {_mib(2 * per_example)} MiB)"
        )
    return size


def _mib(size: int) -> str:
    """Bytes in MiB to three figures, without an exponent from 1000 MiB up ("0.00763", "16.1", "2048")."""
    mib = size / 2**20
    return f"{mib:.3g}" if mib < 999.5 else f"{mib:.0f}"
