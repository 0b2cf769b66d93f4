"""The plain inputs of the figures, described for the type checker and the reader.

``plots`` takes plain data and imports none of ``kernels``, ``bridge`` or ``attacks``: the
result objects of ``kernels`` are described here by the attributes a figure reads (Protocols),
the JSON-like records of ``bridge`` by their keys (TypedDicts; every key optional, since a
figure draws what is there and notes what is not). Numbers are plain floats or None; lists may
be numpy arrays wherever a figure reads them through ``np.asarray``.

Features (``robustness_usefulness``, ``feature_gallery``, ``robust_only_curves``):
``FeatureScoresLike`` (``kernels.features.FeatureScores``), ``RobustOnlyPoint``
(``kernels.robust_only.RobustOnlyResult``) and the panel / row tuples built from them.

Training dynamics (every figure of ``plots.dynamics``): ``RunSummary``, one per run, as built by
``bridge.runs.dynamics_summary`` (``json_summary`` is the same without the kernel arrays), with
its ``EpochRecord``, ``KernelRecord``, ``KernelDynamics`` and ``BaselineDistance`` parts; the
runs of several seeds as ``bridge.run_groups.group_summary`` builds them (``seed_runs``). The
two-stage figures read ``SpawnAccuracy`` (LOO fig. 2) and ``SwitchCost`` (RAT table 1), the
records of ``bridge.run_groups.spawn_accuracy`` and ``switch_cost``.

Robust accuracy (``robust_accuracy_bars``): ``EvaluatedNet``, the ``nets`` of ``evaluate``.

Transfer (``two_layer_transfer``): ``TwoLayerNet`` and ``TwoLayerKernel``, the ``nets`` and
``{"epochs": kernel}`` of ``bridge.two_layer.TwoLayerResult``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, TypedDict

import numpy as np

__all__ = [
    "Accuracies",
    "BaselineDistance",
    "EpochRecord",
    "FeaturePanel",
    "FeatureScoresLike",
    "GalleryRow",
    "KernelDynamics",
    "KernelKind",
    "KernelMachineEpoch",
    "KernelMetrics",
    "KernelRecord",
    "RobustOnlyPanel",
    "RobustOnlyPoint",
    "RunSummary",
    "SpawnAccuracy",
    "SpawnLine",
    "SpawnParent",
    "SpawnPoint",
    "SwitchCost",
    "SwitchCostRun",
    "TransferabilitySeries",
    "TwoLayerAccuracies",
    "TwoLayerEpoch",
    "TwoLayerKernel",
    "TwoLayerNet",
]

# -- features (TK fig. 2, fig. 5, supp. figs. 2-5) ---------------------------------------------


class FeatureScoresLike(Protocol):
    """The scores of features ``index`` that ``robustness_usefulness`` draws, one entry each
    (``kernels.features.FeatureScores``)."""

    @property
    def index(self) -> np.ndarray:  # (m,) eigen-index, 0 = largest eigenvalue
        ...

    @property
    def eigenvalue(self) -> np.ndarray:  # (m,)
        ...

    @property
    def usefulness(self) -> np.ndarray:  # (m,) held-out accuracy of the feature alone, in [0, 1]
        ...

    @property
    def robustness(self) -> np.ndarray:  # (m,) share correct at x and at the attack on the feature
        ...

    @property
    def chance(self) -> float:  # share of the most frequent held-out class
        ...

    def spearman_index_robustness(self) -> float:
        """Spearman correlation of eigen-index and robustness."""
        ...


class RobustOnlyPoint(Protocol):
    """Accuracies, in [0, 1], of the robust-features-only kernel f'_r at one r
    (``kernels.robust_only.RobustOnlyResult``)."""

    @property
    def r(self) -> int: ...

    @property
    def clean(self) -> float: ...

    @property
    def fgsm_own(self) -> float: ...

    @property
    def pgd_own(self) -> float: ...

    @property
    def fgsm_transfer(self) -> float: ...

    @property
    def pgd_transfer(self) -> float: ...


FeaturePanel = tuple[str, FeatureScoresLike]
"""(architecture name, its feature scores): one panel of ``robustness_usefulness``."""

GalleryRow = tuple[str, np.ndarray, Sequence[str]]
"""(architecture name, gradients (k, C, H, W), captions (k,)): one row of ``feature_gallery``."""

RobustOnlyPanel = tuple[str, Sequence[RobustOnlyPoint]] | tuple[str, Sequence[RobustOnlyPoint], int | None]
"""(architecture name, one point per r in increasing order[, n]): one panel of
``robust_only_curves``; n, the number of all features (training points), names r = n "all (n)"."""

# -- training dynamics (TK sec. 5, LOO sec. 3) -------------------------------------------------

KernelKind = Literal["clean", "adversarial", "adversarial_labels"]
"""The kernels of a tracked step: the C-NTK on the clean probe, the AE-NTK on its PGD examples,
and the AE-NTK under the net's own labels on those examples (specialization only)."""

KernelMetrics = Mapping[str, Any]
"""``kernels.metrics.kernel_metrics`` of one kernel: floats ``frobenius_norm``, ``trace``,
``effective_rank``, ``concentration_top{p}`` (one per cut-off p), ``kernel_target_alignment``,
``centered_alignment``, ``mean_specialization``, the nested list ``specialization_matrix``, and
``undefined`` {metric: why it is missing}. A mapping, not a TypedDict: the figures read the
``concentration_top{p}`` keys by name."""


class Accuracies(TypedDict, total=False):
    """Accuracies of one epoch, in [0, 1], with one kind of BatchNorm statistics."""

    train_clean: float
    train_pgd: float
    test_clean: float
    test_pgd: float


class EpochRecord(TypedDict, total=False):
    """One epoch of a training history (``history.json`` "epochs"; epoch 0 is the initialisation)."""

    epoch: int
    step: int
    mode: str
    lr: float | None
    train_loss: float | None
    accuracy: Mapping[str, Accuracies]  # "running" and, when recorded, "batch" statistics
    relative_magnitude: float  # linearized runs only
    seconds: Mapping[str, float]


class KernelRecord(TypedDict, total=False):
    """One tracked kernel of a training history, its epoch made explicit (``history.json`` "kernels")."""

    step: int
    epoch: float
    file: str
    clean: KernelMetrics  # the C-NTK on the clean probe
    adversarial: KernelMetrics  # the AE-NTK on the probe's PGD examples
    adversarial_labels: KernelMetrics  # the AE-NTK under the net's own labels on those examples
    probe_accuracy: Mapping[str, float]
    seconds: float


class KernelDynamics(TypedDict, total=False):
    """How a kernel trajectory of T kernels moved (``bridge.runs.kernel_dynamics``); a key that
    could not be computed is absent and ``undefined`` says why."""

    epochs: Sequence[float]  # (T,)
    top_k: int
    distance_matrix: Sequence[Sequence[float]]  # (T, T)
    velocity: Sequence[float]  # (T - 1,) per epoch, at ``velocity_epochs``
    velocity_epochs: Sequence[float]  # (T - 1,) interval midpoints
    distance_to_final: Sequence[float]  # (T,)
    polar_r: Sequence[float]  # (T,)
    polar_theta: Sequence[float]  # (T,) radians
    top_polar_r: Sequence[float]  # (T,) in the top-``top_k`` eigenspace
    top_polar_theta: Sequence[float]
    undefined: Mapping[str, str]  # name ("velocity", "polar", "top_polar", ...) -> why


class BaselineDistance(TypedDict, total=False):
    """KD(Θ_t^baseline, Θ_t^run) at the steps both runs tracked (``bridge.run_groups.baseline_distance``,
    RAT sec. 5); a kernel whose distances could not be measured is absent, ``undefined`` says why."""

    baseline: str  # the baseline's folder
    baseline_label: str
    steps: Sequence[int]  # (S,) the shared steps
    epochs: Sequence[float]  # (S,) the run's epoch at each
    clean: Sequence[float]  # (S,) of the C-NTKs
    adversarial: Sequence[float]  # (S,) of the AE-NTKs
    undefined: Mapping[str, str]  # kind -> why


class RunSummary(TypedDict, total=False):
    """One training run (``bridge.runs.dynamics_summary``); run i has colour i in every figure.
    The runs of several seeds (``bridge.run_groups.group_summary``): the first seed's summary, with the
    group's label and path, ``seeds`` and every seed's summary under ``seed_runs``."""

    label: str
    path: str
    mode: str | None
    switch_epoch: int | None  # the epoch after which training switched to ``mode``
    milestones: Sequence[int]  # the epochs after which the learning rate decays
    linearized: bool
    description: str
    dataset: str | None
    model: str | None
    eps: float | None
    probe_size: int
    estimator: str  # of the tracked trace kernel: "exact", or "rademacher:K" (its unbiased estimate)
    class_names: Sequence[str]
    probe_targets: Sequence[int]  # (N,) output indices of the probe points
    epochs: Sequence[EpochRecord]
    kernels: Sequence[KernelRecord]
    kernel_epochs: Sequence[float]  # (T,)
    dynamics: Mapping[str, KernelDynamics]  # "clean" and, when tracked, "adversarial"
    initial_kernel: np.ndarray | None  # (N, N) first clean kernel
    final_kernel: np.ndarray | None  # (N, N) last clean kernel
    baseline_distance: BaselineDistance  # with dynamics --baseline
    #: a run tracked under both BatchNorm statistics is drawn once per statistics
    #: (``bridge.batchnorm_views``): "running" or "batch", whose kernels and accuracies these are
    statistics: str
    seeds: Sequence[int]  # the runs of several seeds: their seeds, the first one pictured
    seed_runs: Sequence[RunSummary]  # one summary per seed: the curves' mean ± std


class SpawnPoint(TypedDict, total=False):
    """One network trained around its parent's checkpoint at epoch t' (LOO fig. 2, table 2): its
    final test accuracy, clean and under PGD (``pgd``: which attack); the runs of several seeds as
    their mean, with ``seeds`` and the sample standard deviations ``<key>_std``."""

    label: str
    path: str
    spawn_epoch: int
    test_clean: float
    test_pgd: float
    pgd: str  # "full evaluation, PGD-40" or "per-epoch PGD-10"
    seeds: int
    test_clean_std: float
    test_pgd_std: float


class SpawnLine(TypedDict, total=False):
    """The networks of one kind spawned from one parent run, by spawn epoch."""

    parent: str  # the parent's run folder
    parent_label: str
    kind: str  # "linearized", "centered" or "centered-standard"
    mode: str  # the stage-2 training mode
    points: Sequence[SpawnPoint]


class SpawnParent(TypedDict, total=False):
    """A parent run among the runs: its test accuracy at every epoch (per-epoch PGD throughout)."""

    path: str
    label: str
    epochs: Sequence[float]
    test_clean: Sequence[float]
    test_pgd: Sequence[float]
    pgd: str


class SpawnAccuracy(TypedDict, total=False):
    """``bridge.run_groups.spawn_accuracy``: what ``spawn_accuracy_curves`` draws."""

    lines: Sequence[SpawnLine]
    parents: Sequence[SpawnParent]


class SwitchCostRun(TypedDict, total=False):
    """One adversarial run (RAT sec. 5, table 1): training seconds in clean and in adversarial
    epochs and its final test accuracy; a switching run also relative to full AT."""

    label: str
    path: str
    mode: str
    switch_epoch: int | None  # None or 0: adversarial from the first epoch (full AT)
    seconds_clean: float
    seconds_adversarial: float
    seconds_total: float
    epochs_clean: int
    epochs_adversarial: int
    test_clean: float
    test_pgd: float
    pgd: str
    full_at: str  # the full AT run it is compared with
    cost_of_full_at: float  # seconds_total / the full AT run's
    estimated_cost_of_full_at: float  # seconds_total / (epochs x its own mean adversarial epoch)
    seeds: int
    test_clean_std: float
    test_pgd_std: float


class SwitchCost(TypedDict, total=False):
    """``bridge.run_groups.switch_cost``: what ``switch_cost_bars`` draws."""

    runs: Sequence[SwitchCostRun]


# -- robust accuracy (``evaluate``) -----------------------------------------------------------


class EvaluatedNet(TypedDict, total=False):
    """One of the ``nets`` of ``evaluate``'s results.json: what ``robust_accuracy_bars`` draws.
    ``accuracy``: in [0, 1] by measure (``clean``, ``pgd-20``, ``pgd-100``, ``cw-100``,
    ``autoattack``, ``worst_case``; those that ran)."""

    label: str
    accuracy: Mapping[str, float]
    masking_suspected: bool


# -- transfer (TK sec. 3.2, supp. C; LOO sec. 5) -----------------------------------------------


class TwoLayerAccuracies(TypedDict, total=False):
    """Accuracies, in [0, 1], of a two-layer net on the test points at one measured epoch."""

    clean_accuracy: float
    white_box_accuracy: float  # under the net's own attack
    ntk_attack_accuracy: float  # on the NTK machine's adversarial examples
    random_accuracy: float  # under a random-sign perturbation
    gradient_cosine: float | None  # mean over the examples; None when no cosine is finite


class TwoLayerEpoch(TwoLayerAccuracies, total=False):
    """One measured epoch (≥ 1) of a two-layer net against the NTK machine at the aligned time."""

    epoch: int
    time: float | None  # the aligned NTK time t
    matched_time: float
    train_loss: float
    gradient_cosine_median: float | None
    gradient_cosine_q25: float | None
    gradient_cosine_q75: float | None


class TwoLayerNet(TwoLayerAccuracies, total=False):
    """One trained two-layer net: width m, seed, its numbers at the last measured epoch, and
    every measured epoch."""

    width: int
    seed: int
    epochs: Sequence[TwoLayerEpoch]


class KernelMachineEpoch(TypedDict, total=False):
    """The NTK machine at the time aligned with one measured epoch, under its own attack."""

    epoch: int
    time: float
    clean_accuracy: float
    robust_accuracy: float


class TwoLayerKernel(TypedDict, total=False):
    """The NTK machine of ``two_layer_transfer``: its records at the measured epochs."""

    epochs: Sequence[KernelMachineEpoch]


TransferabilitySeries = tuple[str, Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]
"""(label, source epochs t′, transferability τ at each): one curve of ``transferability_curves``."""
