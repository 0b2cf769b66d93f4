"""The project's own FGSM / PGD (``attacks/``) driven by a torch net's loss gradient.

The attack algorithms are written once, backend-neutral; a torch net supplies
``∇ₓ CE(f(x), y)`` and the loop stays on the net's device. Used for AE-NTKs (kernels on the
net's own adversarial examples, RAT sec. 3), adversarial training and evaluation, and the net's
own white-box attack in transfer studies.

Outputs and labels, written once: a net with C ≥ 2 outputs predicts argmax f and its loss is the
softmax cross-entropy; a net with one output (a binary task trained on ±1 targets, like the
kernel machines of ``kernels.machine`` and the two-layer nets of TK supp. C) predicts index 1
where f > 0 and its loss is the binary cross-entropy softplus(−y f) with y = ±1 for index 1 / 0.

Shapes: x (B, C, H, W) in [0, 1] on the net's device; y (B,) int64 output indices.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ntkrobust.attacks import NET_METHODS, AttackSpec, Norm, check_batch_size, fgsm, pgd
from ntkrobust.attacks.threat import check_floating, outside_box_message
from ntkrobust.bridge import distributed

LossGradient = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, labels) -> its gradient in x
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> loss summed over the batch


def input_gradient(model: nn.Module, loss: Loss) -> LossGradient:
    """``(x, target) -> ∇ₓ loss(f(x), target)`` for a loss summed over the batch, so that each
    example's gradient is its own loss's (a mean would shrink it with the batch size)."""

    def gradient(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(loss(model(x), target), x)[0]

    return gradient


def classification_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_b of the cross-entropy of each example: softmax CE for C ≥ 2 outputs, softplus(−y f)
    with y = ±1 for one output (the loss of ``kernels.machine.loss_cotangent``)."""
    if logits.shape[1] == 1:
        sign = 2.0 * y.to(logits.dtype) - 1.0
        return F.softplus(-sign * logits[:, 0]).sum()
    return F.cross_entropy(logits, y, reduction="sum")


def cross_entropy_gradient(model: nn.Module) -> LossGradient:
    """``(x, y) -> ∇ₓ Σ_b CE(f(x_b), y_b)``: each example's own loss gradient."""
    return input_gradient(model, classification_loss)


def check_labels(y: torch.Tensor, outputs: int) -> None:
    """Refuse labels that are not output indices of a net with ``outputs`` outputs (0 and 1 for one
    output). A one-output net given ±1 labels would be attacked as if −1 were class 0 while its
    accuracy counts every −1 as wrong; an out-of-range label of a C-output net is a device-side
    assert on a GPU. No host read: on the CPU a bad label raises ``ValueError`` here; on a GPU the
    check is an assertion queued on the device (``torch._assert_async``) that stops the process
    at its next synchronisation, as the cross-entropy's own assert would, but for one output too."""
    _check_label_shape(y)
    _check_label_range(y, outputs)


def _check_label_range(y: torch.Tensor, outputs: int) -> None:
    if y.numel() == 0:
        return
    try:
        torch._assert_async(((y >= 0) & (y < max(outputs, 2))).all())
    except RuntimeError:  # raised at once for host tensors; reading them costs nothing
        low, high = torch.stack((y.min(), y.max())).tolist()
        raise ValueError(_label_range_message(low, high, outputs)) from None


def _check_tensors(x: object, y: object) -> None:
    """The torch half takes tensors (``torch.from_numpy`` of a data set's arrays): numpy arrays
    failed deep inside torch ('Int64DType' object has no attribute 'is_floating_point')."""
    for name, value in (("images", x), ("labels", y)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (torch.from_numpy), got {type(value).__name__}")


def _check_label_shape(y: torch.Tensor, points: int | None = None) -> None:
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool or y.ndim != 1:
        raise ValueError(f"labels must be a 1D tensor of int output indices, got {y.dtype} of shape {tuple(y.shape)}")
    if points is not None and y.shape[0] != points:
        raise ValueError(f"{y.shape[0]} labels for {points} inputs")


def _label_range_message(low: int, high: int, outputs: int) -> str:
    binary = " (one output: 0 where f < 0, 1 where f > 0, not ±1)" if outputs == 1 else ""
    classes = max(outputs, 2)
    net = f"a net with {outputs} output(s){binary}"
    return f"labels must be output indices 0..{classes - 1} of {net}; got labels from {low} to {high}"


def _checking_labels(loss: Loss, y: torch.Tensor) -> Loss:
    """``loss`` that checks the range of all of ``y`` (its shape checked already) against the width
    of the logits it first sees: once per attack (the net's own forward pass tells its number of
    outputs), not once per step."""
    checked = False

    def checked_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        nonlocal checked
        if not checked:
            _check_label_range(y, logits.shape[1])
            checked = True
        return loss(logits, target)

    return checked_loss


def predicted_index(logits: torch.Tensor) -> torch.Tensor:
    """Output index predicted by logits (B, C): argmax, or f > 0 for one output."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


def in_batches(
    compute: Callable[[slice], torch.Tensor], out: torch.Tensor, *, batch_size: int, across_processes: bool = False
) -> torch.Tensor:
    """``out`` (zeros, one row per point) with ``compute(rows)`` at the rows of every batch of
    ``batch_size``; a batch's random draws should depend on its rows alone (PGD's starts take
    ``rows.start`` as their ``first_row``; AutoAttack's runs are seeded by it). Under torchrun with
    ``across_processes`` each process computes its round-robin share of the batches and one
    all-reduce sums them into ``out`` (adding zeros is exact): every process holds every row, the
    same rows as one process computes."""
    check_batch_size(batch_size)
    starts = list(range(0, out.shape[0], batch_size))
    for start in distributed.share(starts) if across_processes else starts:
        rows = slice(start, start + batch_size)
        out[rows] = compute(rows)
    return distributed.all_reduce_sum(out) if across_processes else out


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 256, across_processes: bool = False
) -> torch.Tensor:
    """Predicted output indices (B,), in batches (``across_processes``: the batches split between the
    processes of a torchrun launch, every process gets all the predictions)."""
    return in_batches(
        lambda rows: predicted_index(model(x[rows])),
        torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
        batch_size=batch_size,
        across_processes=across_processes,
    )


@torch.no_grad()
def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    clean: torch.Tensor | None = None,
    batch_size: int = 256,
    across_processes: bool = False,
) -> float:
    """Share of ``x`` that ``model`` classifies as ``y``; with ``clean``, the points that ``x``
    holds adversarial examples of, the share still correct (robust accuracy as RobustBench counts
    it: a point wrong clean is not robust, even where its attack lands right, as a random start
    can). Labels that are not output indices of ``model`` are refused (``check_labels``), and so
    are inputs outside [0, 1] or NaN (whose argmax would be class 0). ``across_processes``: see
    ``predict``."""
    _check_tensors(x, y)
    check_floating(x)
    if clean is not None and clean.shape != x.shape:
        raise ValueError(f"clean points of shape {tuple(clean.shape)} for examples of shape {tuple(x.shape)}")
    if not x.shape[0]:
        raise ValueError("accuracy of an empty set is undefined")
    outputs = 0

    def predicted(rows: slice) -> torch.Tensor:
        nonlocal outputs
        logits = model(x[rows])
        outputs = logits.shape[1]
        index = predicted_index(logits)
        if clean is None:
            return index
        return torch.where(predicted_index(model(clean[rows])) == y[rows], index, -1)  # -1: no label

    predictions = in_batches(
        predicted,
        torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
        batch_size=batch_size,
        across_processes=across_processes,
    )
    _check_label_shape(y, x.shape[0])
    share = (predictions == y).double().mean()
    # the inputs' and the labels' ranges come back in the read that brings the share: no extra
    # synchronisation (NaN inputs make their minimum NaN)
    share, low, high, darkest, brightest = torch.stack(
        (share, y.min().double(), y.max().double(), x.min().double(), x.max().double())
    ).tolist()
    if outputs and (low < 0 or high >= max(outputs, 2)):  # under torchrun a process may have no batch
        raise ValueError(_label_range_message(int(low), int(high), outputs))
    if not 0 <= darkest <= brightest <= 1:
        raise ValueError(outside_box_message(darkest, brightest))
    return share


def adversarial_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str,
    eps: float,
    step: float | None = None,
    steps: int = 1,
    norm: Norm = "linf",
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    loss: Loss | None = None,
    across_processes: bool = False,
    progress: bool = False,
    places: np.ndarray | None = None,
) -> torch.Tensor:
    """The net's own white-box FGSM, or PGD (``step``, ``steps``, random start unless told
    otherwise), in batches, on the cross-entropy or on ``loss(logits, y)`` (summed over the
    batch); ``model`` should be in the mode it is evaluated in (eval mode, or frozen batch
    statistics). ``across_processes``: under torchrun the batches are split between the processes (the
    random start of row i is the i-th point's of ``seed``'s stream either way, whatever the batches)
    and every process gets every example. ``progress``: PGD's steps as a bar (else a line a minute).
    ``places``: row i's random start is point ``places[i]``'s instead (rows picked out of a data
    set: ``ThreatModel.random_start``)."""
    if method not in NET_METHODS:
        raise ValueError(f"unknown white-box method {method!r}: choose one of {', '.join(NET_METHODS)}")
    if method == "pgd" and step is None:
        raise ValueError("pgd needs a step size")
    _check_tensors(x, y)
    _check_label_shape(y, x.shape[0])  # before the first batch: its slice of y would hide a mismatch
    if places is not None and np.shape(places) != (x.shape[0],):
        raise ValueError(f"places must hold one place per point, {x.shape[0]}, got shape {np.shape(places)}")
    gradient = input_gradient(model, _checking_labels(classification_loss if loss is None else loss, y))

    def attacked(rows: slice) -> torch.Tensor:
        if method == "fgsm":
            return fgsm(gradient, x[rows], y[rows], eps=eps, norm=norm)
        assert step is not None
        return pgd(
            gradient, x[rows], y[rows], eps=eps, step=step, steps=steps, norm=norm, random_start=random_start,
            seed=seed, first_row=rows.start, places=None if places is None else places[rows], progress=progress,
        )  # fmt: skip

    return in_batches(attacked, torch.zeros_like(x), batch_size=batch_size, across_processes=across_processes)


def attack_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: AttackSpec,
    *,
    batch_size: int = 256,
    across_processes: bool = False,
) -> torch.Tensor:
    """The white-box attack of ``spec`` (a method of ``attacks.NET_METHODS``) against ``model``
    (``across_processes``: see ``adversarial_examples``)."""
    return adversarial_examples(
        model,
        x,
        y,
        method=spec.method,
        eps=spec.eps,
        step=spec.step,
        steps=spec.steps,
        norm=spec.norm,
        random_start=spec.random_start,
        seed=spec.seed,
        batch_size=batch_size,
        across_processes=across_processes,
    )


def pgd_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    norm: Norm = "linf",
    seed: int = 0,
    batch_size: int = 256,
    across_processes: bool = False,
) -> torch.Tensor:
    """PGD with a random start (``attacks.pgd``) against ``model``, in batches (``across_processes``:
    see ``adversarial_examples``)."""
    return adversarial_examples(
        model,
        x,
        y,
        method="pgd",
        eps=eps,
        step=step,
        steps=steps,
        norm=norm,
        seed=seed,
        batch_size=batch_size,
        across_processes=across_processes,
    )
