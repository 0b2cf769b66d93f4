"""Empirical NTK of any PyTorch network, through ``torch.func``, under a memory budget.

    Θ_{cc′}(x, x′) = ∇_θ f_c(x) · ∇_θ f_{c′}(x′)            (Jacot et al. 2018; LOO sec. 3)

Kinds (the shapes of neural-tangents, written once):
- ``full``: (N1, N2, C, C), every pair of outputs;
- ``class-blocks``: (N1, N2, C), the C diagonal blocks Θ_cc alone (all that the trace and the
  specialization metrics need, about 1/C of the full kernel's products);
- ``trace``: (N1, N2), the mean of the C diagonal class blocks (LOO's "trace kernel", RAT);
- ``class:c``: (N1, N2), the block of output c alone;
- ``rademacher:K``: (N1, N2), an unbiased estimate of ``trace`` from K random-sign combinations
  of the outputs, at K/C of its cost (see below).

The randomized trace estimator. With v ∈ {±1}^C of independent fair signs, the net
f_v = Σ_c v_c f_c has the kernel ∇f_v(x)·∇f_v(x′) = Σ_cd v_c v_d Θ_cd(x, x′), whose mean over v is
Σ_c Θ_cc(x, x′) (E v_c v_d = δ_cd): C times the trace kernel. K draws v_1..v_K, one Jacobian row
each, give the estimate (1/KC) Σ_k ∇f_vk(x)·∇f_vk(x′). Its variance for one entry is
(1/(K C²)) Σ_{c≠d} Θ_cd (Θ_cd + Θ_dc) (Hutchinson's estimator on the C × C block): zero when the
off-diagonal blocks vanish (the infinite-width limit, Θ ⊗ I_C), largest for a net whose outputs
share their gradients. The same K signs serve every entry of one kernel (drawn from ``seed``), so
the estimate is a proper kernel: symmetric and positive semi-definite.

Under torchrun (``bridge.distributed``) the parameter groups are shared out between the processes
and one all-reduce sums their parts: the same kernel, each process doing 1/N of the passes.

How it is computed. The Jacobian of a large net over all inputs never exists at once. The
trainable parameters are cut into groups (whole tensors, or slices of a flattened tensor when one
tensor alone is too big), so that the per-example Jacobian of every input with respect to one
group fits half the memory budget; the inputs go through ``vmap(jacrev(f))`` in sub-batches sized
so that their activations and gradients fit the other half (and, on a CPU, about 64 MB under
glibc's default allocator, 512 MB with freed memory kept: ``bridge._entk_plan``). Then Θ =
Σ_groups J_g(X1) J_g(X2)ᵀ, exactly, whatever the grouping (the tests check chunked = unchunked).
When ``x2`` is omitted the kernel is symmetric and each group's Jacobian is computed once. The
class blocks and the trace of a net that needs C groups or more take one output at a time, through
groups C times larger (``_entk_plan._plan_passes``): C times fewer backward passes for the same forward
passes.

Dense layers are cheaper still. For ``nn.Linear`` (and the twins' ``NTKLinear``) applied to one
vector per example, y = s·W h + s_b·b, the gradient of output c is s·g_c hᵀ for W and s_b·g_c for
b, with g_c = ∂f_c/∂y. So the layer adds (s² h·h′ + s_b²)(g_c·g′_d) to Θ_{cd}(x, x′) without ever
forming its per-example gradients (the "structured derivatives" of neural-tangents, Novak et al.
2022): g comes from differentiating with respect to a zero added to y, h from the layer's input.
Plain convolutions (``nn.Conv2d``) come from the same pass: their Jacobian rows are g Pᵀ, the
gradient at their output times their unfolded input (``bridge.convolutions``), formed with one
batched product per layer, and a first convolution followed by ReLU and average pooling is
differentiated only down to the pooling's output. A convolution with few output positions and
many parameters (ResNet-18's last stage) keeps no rows: its share is the Gram of its gradients
over output positions times the Gram of its patches (``bridge.convolutions``). The rows and Gram
factors are kept for every example, so when they would take more than a quarter of the budget the
row convolutions go through the groups instead, and then, if still too large, the Gram ones. A
module's hooks see only its own calls, so when the kernel is planned the operations of a forward
pass that take a structured layer's weight outside its call are noted (``jacobians.used_outside``)
and each structured layer's gradient at the first input is checked against ``torch.func``'s
(``JacobianEngine.unfaithful_layers``): a weight also used outside its module's call takes the groups.

BatchNorm. With ``batch_stats=False`` the net runs in eval mode with its running statistics (RAT's
"w buffer"). With ``batch_stats=True`` (RAT's "w/o buffer") every BatchNorm layer normalises with
the mean and (biased) variance of the kernel's own input set, computed once in one forward pass
and then held fixed: a per-example kernel cannot differentiate through statistics that couple the
examples without depending on how they are chunked. A model whose BatchNorm keeps no running
statistics at all (``ModelConfig.running_stats = False``) always takes its kernel this way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ntkrobust import _load_order  # noqa: F401  (Triton before TensorFlow, before any torch.func)
from ntkrobust._progress import progress_bar
from ntkrobust.bridge import distributed
from ntkrobust.bridge._entk_plan import (
    AUTO_BUDGET_SHARE,
    MIN_AUTO_BUDGET,
    KernelKind,
    Pass,
    auto_memory_budget,
    plan_kernel,
    rademacher_signs,
    with_batch_statistics,
)
from ntkrobust.bridge.convolutions import add_gram_share
from ntkrobust.bridge.jacobians import BudgetError, DenseLayer, JacobianEngine

__all__ = [
    "AUTO_BUDGET_SHARE",
    "KINDS",
    "MIN_AUTO_BUDGET",
    "BudgetError",
    "KernelKind",
    "auto_memory_budget",
    "check_memory_budget",
    "empirical_ntk",
    "rademacher_signs",
    "with_batch_statistics",
]

KINDS = ("full", "class-blocks", "trace", "class", "rademacher")
#: Row blocks of a symmetric product A Aᵀ: only the b(b+1)/2 blocks on and above the diagonal
#: are multiplied, (b+1)/(2b) of the GEMM's products; blocks of fewer rows multiply slower.
#: Measured on 2 cores (one output's rows, P = 0.4-1M): 150 rows gain nothing from 2 or 3 blocks
#: (1.02-1.07 of the GEMM's time), so they take the plain GEMM; 200 rows 0.89 in 2 blocks, 300
#: rows 0.85 and 500 rows 0.83-0.87 in 2 or 3.
_SYMMETRIC_BLOCKS = 3
_MIN_BLOCK_ROWS = 100


def _products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A Bᵀ over the last two axes (A (..., N1, P), B (..., N2, P)); when B is A (a kernel of one
    input set), from the blocks on and above the diagonal, each mirrored below it."""
    if b is not a:
        return a @ b.transpose(-1, -2)
    n = a.shape[-2]
    blocks = max(1, min(_SYMMETRIC_BLOCKS, n // _MIN_BLOCK_ROWS))
    edges = [n * i // blocks for i in range(blocks + 1)]
    out = a.new_empty(*a.shape[:-2], n, n)
    for i in range(blocks):
        rows = slice(edges[i], edges[i + 1])
        for j in range(i, blocks):
            cols = slice(edges[j], edges[j + 1])
            out[..., rows, cols] = a[..., rows, :] @ a[..., cols, :].transpose(-1, -2)
            if j > i:
                out[..., cols, rows] = out[..., rows, cols].transpose(-1, -2)
    return out


def _contract(kind: KernelKind, j1: torch.Tensor, j2: torch.Tensor) -> torch.Tensor:
    """J1 (N1, C′, P) and J2 (N2, C′, P) → the kind's kernel contribution (J2 is J1: symmetric)."""
    n1, outputs, width = j1.shape
    n2 = j2.shape[0]
    if kind.name == "full":
        flat1 = j1.reshape(n1 * outputs, width)
        product = _products(flat1, flat1 if j2 is j1 else j2.reshape(n2 * outputs, width))
        return product.reshape(n1, outputs, n2, outputs).permute(0, 2, 1, 3)
    # J1_c J2_cᵀ for each output c: 1/C of the full kernel's products
    per_output = j1.transpose(0, 1)
    blocks = _products(per_output, per_output if j2 is j1 else j2.transpose(0, 1))
    if kind.name == "class-blocks":
        return blocks.permute(1, 2, 0)
    # trace or one class: Σ_c J1_c J2_cᵀ (one class: C′ = 1); the trace's 1/C comes at the end
    return blocks.sum(0)


def _contract_dense(
    kind: KernelKind,
    layer: DenseLayer,
    factors1: tuple[torch.Tensor, torch.Tensor],
    factors2: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """A dense layer's kernel contribution (s² h·h′ + s_b²)(g_c·g′_d) from its factors."""
    (g1, h1), (g2, h2) = factors1, factors2
    scale = layer.w_scale**2 * (h1 @ h2.T)
    if layer.bias is not None:
        scale = scale + layer.b_scale**2
    gradients = _contract(kind, g1, g2)
    extra = {"full": (None, None), "class-blocks": (None,)}.get(kind.name, ())
    return gradients * scale[(slice(None), slice(None), *extra)]


def empirical_ntk(
    model: nn.Module,
    x1: np.ndarray | torch.Tensor,
    x2: np.ndarray | torch.Tensor | None = None,
    *,
    kind: str | KernelKind = "trace",
    batch_stats: bool = False,
    memory_budget: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = False,
    structured: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """The empirical NTK Θ(x1, x2) (Θ(x1, x1) if ``x2`` is None) of ``model``, as float64 numpy.

    Args:
        model: any torch module mapping (B, ...) inputs to (B, C) outputs; not modified.
        x1, x2: inputs, NCHW in [0, 1] (any shape the model takes), numpy or torch.
        kind: ``"full"`` (N1, N2, C, C), ``"class-blocks"`` (N1, N2, C): the C diagonal blocks
            only, all that the trace kernel and the specialization metrics need, at 1/C of the
            full kernel's products; ``"trace"`` (N1, N2): their mean C⁻¹ Σ_c Θ_cc, Loo et al.'s
            trace kernel (the trace over outputs divided by C); ``"class:c"`` (N1, N2): block c;
            ``"rademacher:K"`` (N1, N2): an unbiased estimate of ``"trace"`` from K random-sign
            combinations of the outputs (``seed``).
        batch_stats: BatchNorm with the statistics of the inputs (see the module docstring)
            instead of the running statistics.
        memory_budget: bytes of working memory for Jacobians and activations (the kernel itself,
            the output, is extra); default ``auto_memory_budget(device)``. ``BudgetError`` when
            not even one chunk fits. A larger budget means fewer parameter groups, hence fewer
            passes over the inputs.
        device: where to compute (default: where the model's parameters are).
        dtype: compute dtype, e.g. ``torch.float64`` (or ``"float64"``) to compare kernels
            (default: the model's).
        progress: show a progress bar over parameter groups and sub-batches.
        structured: dense layers by their outer-product structure (see the module docstring);
            False puts every parameter through the generic Jacobian groups (the same kernel).
        seed: the random signs of ``"rademacher:K"`` (the other kinds are exact).

    Raises ``FloatingPointError`` when the kernel holds NaN or inf (weights that make the net
    overflow: a diverged run, a damaged checkpoint).
    """
    plan = plan_kernel(model, x1, x2, kind, batch_stats, memory_budget, device, dtype, structured, seed)
    kind, a, b = plan.kind, plan.a, plan.b
    # under torchrun each rank sums its share of the passes; all-reduced below
    mine = distributed.share(list(zip(plan.passes, plan.batch, strict=True)))
    passes, batch = [step for step, _ in mine], [size for _, size in mine]

    shape = (a.shape[0], a.shape[0] if b is None else b.shape[0])
    outputs = plan.outputs
    trailing = {"full": (outputs, outputs), "class-blocks": (outputs,)}.get(kind.name, ())
    kernel = torch.zeros(shape + trailing, dtype=torch.float64, device=a.device)
    _add_passes(kernel, kind, plan.engine, passes, batch, a, b, progress)
    distributed.all_reduce_sum(kernel)
    if kind.name == "trace":
        kernel /= outputs * (plan.num_outputs if plan.estimated else 1)
    values = kernel.cpu().numpy()
    if not np.isfinite(values).all():  # every metric of it would be NaN: say why, where it happened
        raise FloatingPointError(
            f"the empirical NTK of {shape[0]} points is not finite (NaN or inf): the net's outputs "
            f"or their gradients overflow {str(a.dtype).removeprefix('torch.')}"
        )
    return values


def check_memory_budget(
    model: nn.Module,
    x1: np.ndarray | torch.Tensor,
    x2: np.ndarray | torch.Tensor | None = None,
    *,
    kind: str | KernelKind = "trace",
    batch_stats: bool = False,
    memory_budget: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    structured: bool = True,
) -> None:
    """Raise ``BudgetError`` now if ``empirical_ntk`` with these arguments would, without
    computing the kernel: a long run (``train`` tracks a kernel after its first evaluation)
    refuses a budget too small before it starts. Under torchrun every process calls it."""
    plan_kernel(model, x1, x2, kind, batch_stats, memory_budget, device, dtype, structured, seed=0)


def _add_passes(
    kernel: torch.Tensor,
    kind: KernelKind,
    engine: JacobianEngine,
    passes: list[Pass],
    batch: list[int],
    a: torch.Tensor,
    b: torch.Tensor | None,
    progress: bool,
) -> None:
    """Add each pass's share of Θ(a, b) into ``kernel``, sub-batch by sub-batch (``batch[i]``
    examples at a time in pass i)."""
    steps = sum(math.ceil(a.shape[0] / size) + (0 if b is None else math.ceil(b.shape[0] / size)) for size in batch)
    with progress_bar(steps, f"eNTK ({kind})", "chunk", show=progress) as bar:
        for step, size in zip(passes, batch, strict=True):
            if step.group is None:
                f1 = _rows_in_sub_batches(engine.factors, a, size, bar)
                f2 = f1 if b is None else _rows_in_sub_batches(engine.factors, b, size, bar)
                for name, layer in engine.dense.items():
                    kernel += _contract_dense(kind, layer, f1["dense"][name], f2["dense"][name]).to(torch.float64)
                for name in f1["conv"]:  # f2 is f1 for a kernel of one set: _contract sees it is symmetric
                    kernel += _contract(kind, f1["conv"][name], f2["conv"][name]).to(torch.float64)
                for name in f1["gram"]:
                    add_gram_share(kernel, kind.name, f1["gram"][name], f2["gram"][name])
                del f1, f2
                continue
            jacobian = functools.partial(engine.jacobian, step.group, output=step.output)
            j1 = _rows_in_sub_batches(jacobian, a, size, bar)
            j2 = j1 if b is None else _rows_in_sub_batches(jacobian, b, size, bar)
            if step.output is None:
                kernel += _contract(kind, j1, j2).to(torch.float64)
            else:  # one output's block: column c of the class blocks, or one term of the trace
                block = _contract(KernelKind("class", step.output), j1, j2).to(torch.float64)
                if kind.name == "class-blocks":
                    kernel[:, :, step.output] += block
                else:
                    kernel += block
            del j1, j2


def _rows_in_sub_batches(compute: Callable[[torch.Tensor], Any], x: torch.Tensor, size: int, bar: Any) -> Any:
    """``compute`` over sub-batches of ``x`` (a tensor, or nested dicts / tuples of them, with the
    examples first), written into one tensor per result of all the rows as they come: a group's
    Jacobian is never held twice (as parts and as their concatenation), and each pass allocates
    blocks of the same sizes, which a process that keeps its freed memory reuses rather than
    fragmenting its heap."""
    rows: list[torch.Tensor] = []
    spec = None
    for start in range(0, x.shape[0], size):
        parts, spec = tree_flatten(compute(x[start : start + size]))
        if not rows:
            rows = [part.new_empty((x.shape[0], *part.shape[1:])) for part in parts]
        for whole, part in zip(rows, parts, strict=True):
            whole[start : start + part.shape[0]] = part
        del parts
        bar.update(1)
    assert spec is not None, "no rows"
    return tree_unflatten(rows, spec)
