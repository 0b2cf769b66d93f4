"""What a training run measures: kernels on a fixed probe set, and clean / PGD accuracies.

Kernel tracking (TK sec. 5 and supp. E, LOO sec. 3, RAT sec. 3): at initialisation and after
every epoch (or every k steps), the empirical NTK of the net on a fixed, class-balanced probe set
of training points,
- C-NTK: on the clean probe points;
- AE-NTK: on the net's own PGD examples of them (RAT sec. 3), with its metrics under the clean
  labels and under the net's predictions on those examples, the "adversarial labels" (RAT sec. 4).
The C diagonal class blocks (N, N, C) are computed (``kind="class-blocks"``; the full (N, N, C, C)
kernel with ``kind="full"``, at C times the cost of the products): they give the specialization
metrics, and the trace kernel (N, N), their mean, is what is kept on disk and compared across time.

BatchNorm at evaluation (RAT sec. 4): ``"running"`` uses the running statistics ("w buffer");
``"batch"`` normalises every evaluation batch with its own statistics ("w/o buffer"), including a
batch of adversarial examples while they are being crafted, without touching the running ones.

Shapes: x (N, C, H, W) in [0, 1]; y (N,) int64 output indices; kernels (N, N) float64.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge._modes import kept_modes
from ntkrobust.bridge.adversarial import accuracy, attack_examples, pgd_examples, predict
from ntkrobust.bridge.entk import KernelKind, check_memory_budget, empirical_ntk
from ntkrobust.bridge.jacobians import forward_pass
from ntkrobust.kernels.metrics import kernel_metrics, trace_kernel

__all__ = [
    "BATCHNORM_MODES",
    "KernelTracker",
    "TrackingConfig",
    "batch_statistics",
    "clean_accuracy",
    "has_batchnorm",
    "pgd_accuracy",
    "single_value_batchnorms",
]

BATCHNORM_MODES = ("running", "batch")


@dataclass(frozen=True)
class TrackingConfig:
    """What is measured during training.

    ``probe``: class-balanced training points of the tracked kernels (0: no kernels);
    ``every``: track every this many steps instead of after every epoch; ``eps``/``step``/
    ``steps``: the ℓ∞ PGD of the AE-NTK and of the per-epoch robust accuracies; ``eval_n``:
    class-balanced points per split for the PGD accuracies (clean accuracy uses the whole split;
    None: all); ``batchnorm``: evaluation modes, ``running`` and/or ``batch`` (RAT sec. 4).
    ``full_step``/``full_steps``: the stronger PGD of the full evaluation, on the same points, at
    the last epoch and every ``full_every`` epochs (None: no full evaluation).
    ``selection_seed``: seed of the probe and the evaluation points (None: the training seed), so
    runs of several training seeds share their probe. ``memory_budget``: bytes for one kernel
    pass's intermediates (None: ``bridge.entk``'s default from the free memory; the CLI's
    ``--memory-budget`` is in MiB, and ``config.json`` records this field in bytes).
    """

    eps: float
    step: float
    steps: int
    probe: int = 300
    every: int | None = None
    eval_n: int | None = 500
    batchnorm: tuple[str, ...] = ("running",)
    memory_budget: int | None = None
    full_step: float | None = None
    full_steps: int | None = None
    full_every: int | None = None
    selection_seed: int | None = None
    track_full: bool = False  # the full (N, N, C, C) kernels, not only their class blocks
    #: "exact", or "rademacher:K": the trace kernel estimated from K random-sign draws (bridge.entk), at
    #: K/C of the class blocks' cost, without the specialization metrics (they need the blocks)
    estimator: str = "exact"

    def __post_init__(self) -> None:
        if not self.batchnorm or any(mode not in BATCHNORM_MODES for mode in self.batchnorm):
            raise ValueError(f"batchnorm modes must be among {BATCHNORM_MODES}, got {self.batchnorm}")
        if (self.full_steps is None) != (self.full_step is None):
            raise ValueError("a full evaluation needs both its PGD step and its steps")
        if self.estimator != "exact":
            try:
                kind: str | None = KernelKind.parse(self.estimator).name
            except ValueError:  # rademacher:0, rademacher:x, or no kind at all
                kind = None
            if kind != "rademacher":
                raise ValueError(f"--estimator must be exact or {KernelKind.RADEMACHER_FORM}, got {self.estimator!r}")
            if self.track_full:
                raise ValueError("--estimator estimates the trace kernel; --track-full asks for the exact full one")

    def attack(self, seed: int) -> AttackSpec:
        """The ℓ∞ PGD of the per-epoch robust accuracies (random start seeded by ``seed``)."""
        return AttackSpec("pgd", self.eps, "linf", self.step, self.steps, random_start=True, seed=seed)

    @property
    def kernel_kind(self) -> str:
        """The tracked kernels' kind: the full kernels, their class blocks, or an estimated trace."""
        if self.track_full:
            return "full"
        return "class-blocks" if self.estimator == "exact" else self.estimator

    def full_attack(self, seed: int) -> AttackSpec | None:
        """The ℓ∞ PGD of the full evaluation, or None."""
        if self.full_steps is None or self.full_step is None:
            return None
        return AttackSpec("pgd", self.eps, "linf", self.full_step, self.full_steps, random_start=True, seed=seed)

    def full_due(self, epoch: int, last: int) -> bool:
        """Whether epoch ``epoch`` (of ``last``) ends with a full evaluation: the last one (the
        initialisation of a run of 0 epochs, as ``--final-eval`` takes it) and every ``full_every``."""
        if self.full_steps is None or (epoch == 0 and last != 0):
            return False
        return epoch == last or (self.full_every is not None and epoch % self.full_every == 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "batchnorm": list(self.batchnorm)}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def single_value_batchnorms(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The BatchNorm layers that, training, normalise with the batch's statistics over one value
    per channel per example (1 × 1 maps, or a BatchNorm1d): a batch of one example leaves them a
    single value, which torch refuses. Found by a forward pass of ``x`` (two or more examples)
    through a copy of ``model`` in train mode (a linearized net's frozen parent stays in eval)."""
    net = copy.deepcopy(model).train()
    found: list[str] = []

    def seen(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            batch_statistics = module.training or getattr(module, "running_mean", None) is None
            if batch_statistics and math.prod(args[0].shape[2:]) == 1:
                found.append(name)

        return hook

    norms = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    forward_pass(net, x, [m.register_forward_pre_hook(seen(name)) for name, m in norms])
    return found


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode except that every BatchNorm normalises with the statistics of the
    batch it sees and leaves its running statistics as they are (RAT's "w/o buffer"), its batch
    count too: under torchrun the processes evaluate different numbers of batches, and their
    buffers must stay equal (DistributedDataParallel does not broadcast them: ``replicated``).
    The buffers are restored on leaving: momentum 0 alone leaves them only for finite batch
    statistics (0·inf and 0·NaN are NaN), and a batch with a non-finite value made them NaN."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    saved = [{name: getattr(m, name).clone() for name in buffers if getattr(m, name) is not None} for m in norms]
    with kept_modes(model):
        model.eval()
        try:
            for m in norms:
                # train mode makes BatchNorm use the batch's statistics; momentum 0 keeps the running
                # ones for finite statistics (running ← 1·running + 0·batch), the restore for any
                m.momentum = 0.0
                m.train()
            yield model
        finally:
            for m, momentum, kept in zip(norms, momenta, saved, strict=True):
                m.momentum = momentum
                for name, value in kept.items():
                    if getattr(m, name) is not None:
                        getattr(m, name).copy_(value)


@contextlib.contextmanager
def _evaluation(model: nn.Module, batchnorm: str) -> Iterator[nn.Module]:
    if batchnorm not in BATCHNORM_MODES:  # any other spelling evaluated with running statistics
        raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    if batchnorm == "batch":
        with batch_statistics(model):
            yield model
        return
    with kept_modes(model):
        model.eval()
        yield model


def clean_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batchnorm: str = "running", across_processes: bool = False
) -> float:
    """Share of ``x`` classified as ``y``, BatchNorm in ``batchnorm`` mode (``across_processes``: the
    batches split between the processes of a torchrun launch, see ``adversarial.predict``)."""
    with _evaluation(model, batchnorm) as net:
        return accuracy(net, x, y, across_processes=across_processes)


def pgd_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackSpec,
    *,
    batchnorm: str = "running",
    across_processes: bool = False,
) -> tuple[float, torch.Tensor]:
    """``(accuracy, x_adv)``: the share of ``x`` classified as ``y`` before and after ``attack``
    (RobustBench's robust accuracy: share still correct), and its examples, BatchNorm in ``batchnorm`` mode for the
    attack and the prediction alike (``across_processes``: the batches split between the processes of a
    torchrun launch, each batch attacked as in one process; every process gets every example)."""
    with _evaluation(model, batchnorm) as net:
        x_adv = attack_examples(net, x, y, attack, across_processes=across_processes)
        return accuracy(net, x_adv, y, clean=x, across_processes=across_processes), x_adv


@dataclass
class KernelTracker:
    """The probe set and how its kernels are taken.

    ``x`` (N, C, H, W) and ``targets`` (N,) live on the net's device; ``eps``/``step``/``steps``
    make the AE-NTK's PGD examples (ℓ∞, random start seeded by ``seed``, the same for every
    tracking point so only the net changes), unless ``track`` is handed PGD examples of the probe
    already made with that threat (a training run reuses its evaluation's: no second attack).
    """

    x: torch.Tensor
    targets: torch.Tensor
    num_classes: int
    eps: float
    step: float
    steps: int
    seed: int = 0
    batchnorm: str = "running"
    memory_budget: int | None = None
    #: ``class-blocks`` (N, N, C): all the metrics need, 1/C of the full kernel's products; ``full``
    kind: str = "class-blocks"

    def check_budget(self, network: nn.Module) -> None:
        """``BudgetError`` now if ``track``'s kernels of ``network`` would not fit the budget."""
        check_memory_budget(
            network, self.x, kind=self.kind, batch_stats=self.batchnorm == "batch", memory_budget=self.memory_budget
        )

    def track(
        self,
        model: nn.Module,
        kernel_network: nn.Module | None = None,
        *,
        x_adv: torch.Tensor | None = None,
        progress: bool = False,
    ) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, record)``: the trace C-NTK / AE-NTK and the AE inputs for the kernel file,
        and the JSON record (metrics of both kernels, probe accuracies, seconds).

        ``kernel_network``: the network whose eNTK is the model's kernel (default the model; the
        frozen parent for linearized dynamics). ``x_adv``: PGD examples of the probe against
        ``model`` under this tracker's threat and BatchNorm mode, if already made. ``progress``:
        bars over the chunks of each kernel."""
        start = time.perf_counter()
        tangent = model if kernel_network is None else kernel_network
        labels = self.targets.cpu().numpy()
        with _evaluation(model, self.batchnorm) as net:
            predicted_clean = predict(net, self.x)
            if x_adv is None:  # under torchrun the same examples in every process: their kernel's
                # passes are shared out and summed, and a GPU's attack need not repeat to the bit
                x_adv = pgd_examples(
                    net,
                    self.x,
                    self.targets,
                    eps=self.eps,
                    step=self.step,
                    steps=self.steps,
                    seed=self.seed,
                    across_processes=True,
                )
            predicted_adv = predict(net, x_adv)
        options: dict[str, Any] = {
            "kind": self.kind,
            "batch_stats": self.batchnorm == "batch",
            "memory_budget": self.memory_budget,
        }
        clean = empirical_ntk(tangent, self.x, progress=progress, **options)
        adversarial = empirical_ntk(tangent, x_adv, progress=progress, **options)
        adversarial_labels = predicted_adv.cpu().numpy()
        record: dict[str, Any] = {
            "clean": kernel_metrics(clean, labels, num_classes=self.num_classes),
            "adversarial": kernel_metrics(adversarial, labels, num_classes=self.num_classes),
            "adversarial_labels": kernel_metrics(adversarial, adversarial_labels, num_classes=self.num_classes),
            "probe_accuracy": {
                "clean": float((predicted_clean == self.targets).double().mean()),
                # still correct, as pgd_accuracy counts it
                "pgd": float(((predicted_adv == self.targets) & (predicted_clean == self.targets)).double().mean()),
            },
        }
        arrays = {
            "clean": trace_kernel(clean),
            "adversarial": trace_kernel(adversarial),
            "x_adversarial": x_adv.detach().cpu().numpy().astype(np.float32),
            "predicted_adversarial": adversarial_labels.astype(np.int64),
        }
        if self.kind == "full":  # --track-full: the (N, N, C, C) kernels themselves, for later analysis
            arrays |= {"clean_full": np.asarray(clean), "adversarial_full": np.asarray(adversarial)}
        record["seconds"] = time.perf_counter() - start
        return arrays, record
