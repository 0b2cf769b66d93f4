"""``entk``: the empirical NTK of a torch net on a class-balanced set of points, clean (C-NTK) or
on the net's own PGD examples (AE-NTK, RAT sec. 3-4), with the kernel metrics of
``kernels.metrics`` and a class-sorted kernel image.

Outputs: ``kernel.npz``, ``metrics.json``, ``kernel.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ntkrobust._numbers import pixel_radius
from ntkrobust.studies._base import Clock, StagedOutput, StudyError, StudyResult, checked_together, envelope, warn
from ntkrobust.studies._common import (
    DataSettings,
    check_choice,
    check_counts,
    check_draws,
    check_linf_eps,
    pgd_schedule,
    torch_device,
    torch_network,
)

_SUMMARY_METRICS = ("effective_rank", "concentration_top20", "centered_alignment", "mean_specialization")


@dataclass(frozen=True)
class EntkSettings:
    data: DataSettings = field(default_factory=DataSettings)
    model: str | None = None  # registry model at initialisation (default fc2), or
    checkpoint: Path | None = None  # a checkpoint of this tool
    width: int | None = None
    batch_stats: bool = False
    n: int = 100
    split: str = "train"
    kind: str = "trace"
    adversarial_eps: float | None = None
    pgd_steps: int | None = None
    pgd_step: float | None = None
    dtype: str = "float32"
    memory_budget: int | None = None  # MiB
    device: str = "auto"

    COUNTS: ClassVar[dict[str, int]] = {
        "width": 1,
        "n": 1,
        "pgd_steps": 1,
        "memory_budget": 1,
    }  # checked by check_counts, as the parser does


@dataclass
class EntkResult(StudyResult):
    arrays: dict[str, np.ndarray]
    picture: dict[str, Any]

    def write_files(self, staged: StagedOutput) -> None:
        from ntkrobust import plots

        with open(staged.path("kernel.npz"), "wb") as f:
            np.savez_compressed(f, **self.arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
        plots.kernel_image(**self.picture, path=staged.path("kernel.png"))

    def summary(self) -> str:
        r = self.record
        metrics = r["metrics"]
        which = "AE-NTK" if r["config"]["adversarial"] else "C-NTK"
        text = ", ".join(f"{key.replace('_', ' ')} {metrics[key]:.3g}" for key in _SUMMARY_METRICS if key in metrics)
        return (
            f"{r['kind']} {which} of {r['network']['model']} ({r['network']['parameters']:,} parameters) on "
            f"{r['config']['n']} {r['dataset']['name']} points in {r['seconds']['kernel']:.1f} s: {text}"
        )


def _points(settings: EntkSettings, data: Any) -> tuple[np.ndarray, np.ndarray]:
    from ntkrobust.bridge.data import DataError, balanced_indices

    x_all, y_all = (data.x_train, data.y_train) if settings.split == "train" else (data.x_test, data.y_test)
    if settings.n > x_all.shape[0]:
        raise StudyError(f"--n {settings.n} exceeds the {x_all.shape[0]} {settings.split} points of the data")
    try:
        chosen = balanced_indices(y_all, data.classes, settings.n, settings.data.seed, what=settings.split)
    except DataError as err:
        raise StudyError(str(err)) from None
    return x_all[chosen], y_all[chosen]


def _check_batch_statistics(net: Any, inputs: Any, name: str) -> None:
    """--batch-stats needs BatchNorm layers, and a BatchNorm of 1 x 1 maps more than one point."""
    from ntkrobust.bridge.tracking import has_batchnorm, single_value_batchnorms

    if not has_batchnorm(net):
        raise StudyError(f"--batch-stats: {name} has no BatchNorm layers")
    if inputs.shape[0] == 1 and (layers := single_value_batchnorms(net, inputs.repeat(2, *[1] * (inputs.dim() - 1)))):
        raise StudyError(
            f"--batch-stats over one point: BatchNorm {layers[0]} would normalise over one value per channel; "
            "give --n 2 or more"
        )


def run(settings: EntkSettings, *, progress: bool = False, argv: list[str] | None = None) -> EntkResult:
    """The empirical NTK of the network of ``settings`` on ``settings.n`` points, and its metrics."""
    check_counts(settings)
    from ntkrobust.bridge.entk import KernelKind

    clock = Clock()
    # every process's own inputs, checked on all of them before the first collective (the
    # budget's): one that fails stops them all, the first says why
    with checked_together():
        try:
            kind = KernelKind.parse(settings.kind)
        except ValueError as err:
            raise StudyError(f"--kind: {err}") from None
        check_choice(settings.split, ("train", "test"), "--split")
        check_choice(settings.dtype, ("float32", "float64"), "--dtype")
        if settings.model is not None and settings.checkpoint is not None:
            raise StudyError("--model and --checkpoint name two networks: choose one")
        eps = settings.adversarial_eps
        if eps is not None:
            check_linf_eps(eps, "--adversarial-eps")
        if eps is None and (settings.pgd_step is not None or settings.pgd_steps is not None):
            raise StudyError("--pgd-step and --pgd-steps set the AE-NTK's attack: give --adversarial-eps too")
        data = settings.data.load()
        seed = settings.data.seed

        import torch

        from ntkrobust.attacks import AttackSpec
        from ntkrobust.bridge import distributed
        from ntkrobust.bridge.adversarial import pgd_examples, predict
        from ntkrobust.bridge.data import task_indices
        from ntkrobust.bridge.entk import (
            BudgetError,
            auto_memory_budget,
            check_memory_budget,
            empirical_ntk,
            with_batch_statistics,
        )
        from ntkrobust.bridge.models import parameter_count
        from ntkrobust.kernels.metrics import kernel_metrics

        device = torch_device(settings.device)
        notes: list[str] = []
        model, config = torch_network(
            data, model=settings.model, width=settings.width, checkpoint=settings.checkpoint, seed=seed, notes=notes
        )
        try:
            kind.outputs(config.num_classes)
        except ValueError as err:
            raise StudyError(f"--kind {settings.kind}: {err}") from None
        check_draws(settings.kind, "--kind", config.num_classes)
        x_clean, y = _points(settings, data)
        targets = task_indices(y, data.classes)
        dtype = torch.float64 if settings.dtype == "float64" else torch.float32
        net = model.to(device=device, dtype=dtype).eval()
        inputs = torch.as_tensor(x_clean, device=device, dtype=dtype)
        labels = torch.as_tensor(targets, device=device)
        if settings.batch_stats:
            _check_batch_statistics(net, inputs, config.model)
            net = with_batch_statistics(net, inputs)
    budget = auto_memory_budget(device) if settings.memory_budget is None else settings.memory_budget * 2**20
    budget = distributed.agreed_minimum(budget, device)  # the one every process plans with (and recorded)
    try:  # before the PGD examples: a budget too small is refused before any compute
        check_memory_budget(net, inputs, kind=kind, memory_budget=budget)
    except BudgetError as err:
        raise StudyError(f"--memory-budget {settings.memory_budget}: {err}") from None
    clean_pred = predict(net, inputs)
    adversarial: dict[str, Any] | None = None
    x_kernel, kernel_pred = inputs, clean_pred
    if eps is not None:
        step, steps = pgd_schedule(
            data.image_shape[0], "linf", eps, settings.pgd_step, settings.pgd_steps, flags=("--pgd-step", "--pgd-steps")
        )
        warn(
            notes,
            *AttackSpec("pgd", eps, "linf", step, steps).notes(
                data.image_shape[0], "AE-NTK PGD: ", ("--pgd-steps", "--pgd-step")
            ),
        )
        # under torchrun the same examples in every process (each attacks its share of the batches):
        # the kernel's passes are shared out and summed, and a GPU's attack need not repeat to the bit
        x_kernel = pgd_examples(net, inputs, labels, eps=eps, step=step, steps=steps, seed=seed, across_processes=True)
        kernel_pred = predict(net, x_kernel)
        adversarial = {"eps": eps, "step": step, "steps": steps, "norm": "linf", "random_start": True}
    clock.mark("inputs", f"{settings.n} {settings.split} points" + (" and their PGD examples" if adversarial else ""))
    try:
        kernel = empirical_ntk(net, x_kernel, kind=kind, memory_budget=budget, progress=progress)
    except BudgetError as err:
        raise StudyError(f"--memory-budget {settings.memory_budget}: {err}") from None
    clock.mark("kernel", f"{kind} empirical NTK of {config.model} on {settings.n} points")

    metrics: dict[str, Any] = {
        "kind": str(kind),
        "shape": list(kernel.shape),
        "metrics": kernel_metrics(kernel, targets, num_classes=config.num_classes),
        "network": {
            **config.to_dict(),
            "checkpoint": str(settings.checkpoint) if settings.checkpoint else None,
            "parameters": parameter_count(model),
            # with --adversarial-eps too, the statistics are those of the clean points, held fixed
            "batchnorm": "batch statistics of the clean points" if settings.batch_stats else "running statistics",
        },
        "accuracy_clean": float((clean_pred == labels).double().mean()),
    }
    adversarial_labels = kernel_pred.cpu().numpy()
    if adversarial is not None:
        # RAT sec. 4: AE-NTK specialization under clean labels (above) and adversarial labels
        metrics["accuracy_adversarial"] = float((kernel_pred == labels).double().mean())
        metrics["metrics_adversarial_labels"] = kernel_metrics(
            kernel, adversarial_labels, num_classes=config.num_classes
        )
    run_config = {
        **settings.data.config(data),
        "split": settings.split,
        "n": settings.n,
        "kind": str(kind),
        "adversarial": adversarial,
        "dtype": settings.dtype,
        "memory_budget_mib": budget // 2**20,
        "device": str(device),
    }
    seconds = {"inputs": clock.between("start", "inputs"), "kernel": clock.between("inputs", "kernel")}
    record = envelope(
        "entk", metrics, run_config, seconds=seconds, argv=argv, seed=seed, dataset=data.describe(), warnings=notes
    )
    arrays = {"kernel": kernel, "x": x_kernel.cpu().numpy().astype(np.float32), "y": y}
    if adversarial is not None:
        arrays |= {"x_clean": x_clean, "y_adversarial": np.asarray(data.classes)[adversarial_labels]}
    picture = _picture(settings, data, kernel, targets, kind, config, adversarial)
    return EntkResult(record, arrays=arrays, picture=picture, results_file="metrics.json")


def _picture(
    settings: EntkSettings, data: Any, kernel: np.ndarray, targets: np.ndarray, kind: Any, config: Any, adversarial: Any
) -> dict[str, Any]:
    """The arguments of the class-sorted kernel image."""
    from ntkrobust.kernels.metrics import trace_kernel

    which = "AE-NTK" if adversarial else "C-NTK"
    if kind.name == "class":  # the (N, N) block of one output
        label = f"block of class {data.class_name(data.classes[kind.index])}"
    elif kind.name == "rademacher":  # its index is the number of draws, not an output
        label = f"trace kernel, Rademacher estimate of {kind.index} draw{'s' if kind.index > 1 else ''}"
    else:  # a full (N, N, C, C) kernel is drawn as its trace, the mean of its C diagonal blocks
        label = {"full": "trace of the full kernel", "class-blocks": "trace of the class blocks"}.get(
            kind.name, "trace kernel"
        )
    checkpoint = settings.checkpoint
    subtitle = (
        f"{config.model} (width {config.width}), {settings.n} {data.name} {settings.split} points"
        + (
            f", PGD eps={pixel_radius(adversarial['eps'])} "
            f"({adversarial['steps']} steps of {pixel_radius(adversarial['step'])})"
            if adversarial
            else ""
        )
        + (f", from {checkpoint.name}" if checkpoint else ", at initialisation")
        + ("; drawn as the mean of its C diagonal output blocks Θ_cc" if kind.name in ("full", "class-blocks") else "")
    )
    return {
        "kernel": trace_kernel(kernel),
        "labels": targets,
        "class_names": [data.class_name(c) for c in data.classes],
        "title": f"Empirical {which}: {label}",
        "subtitle": subtitle,
    }
