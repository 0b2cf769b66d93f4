"""The finite-net half: data loading, torch models, checkpoints, empirical NTKs, training with
kernel tracking, linearized dynamics, NTK eigenvectors, the reader of training runs, and transfer
studies (the two-layer experiment of TK supp. C, target nets, empirical-NTK surrogates).

The data loaders (numpy only) load eagerly; everything else (``bridge.models``,
``bridge.checkpoint``, ``bridge.entk``, ``bridge.adversarial``, ``bridge.training``,
``bridge.tracking``, ``bridge.experiment``, ``bridge.linearized``, ``bridge.eigenvectors``,
``bridge.two_layer``, ``bridge.transfer``, ``bridge.targets``, ``bridge.surrogate``, and the
numpy-only ``bridge.runs``) loads on first use of one of its names, so data-only commands never
pay for importing torch.

Never imports JAX; exchanges numpy arrays with ``kernels``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ntkrobust._lazy import lazy_surface
from ntkrobust.bridge.data import (
    DATASETS,
    DataError,
    Dataset,
    balanced_indices,
    load_dataset,
    read_idx,
    save_dataset_npz,
    stratified_halves,
    task_indices,
)

_TORCH_HALF = {
    "MODELS": "ntkrobust.bridge.models",
    "ModelConfig": "ntkrobust.bridge.models",
    "ModelError": "ntkrobust.bridge.models",
    "build_model": "ntkrobust.bridge.models",
    "model_config": "ntkrobust.bridge.models",
    "CheckpointError": "ntkrobust.bridge.checkpoint",
    "load_checkpoint": "ntkrobust.bridge.checkpoint",
    "save_checkpoint": "ntkrobust.bridge.checkpoint",
    "BudgetError": "ntkrobust.bridge.entk",
    "KernelKind": "ntkrobust.bridge.entk",
    "check_memory_budget": "ntkrobust.bridge.entk",
    "empirical_ntk": "ntkrobust.bridge.entk",
    "with_batch_statistics": "ntkrobust.bridge.entk",
    "LinearizedNetwork": "ntkrobust.bridge.linearized",
    "relative_magnitude": "ntkrobust.bridge.linearized",
    "adversarial_examples": "ntkrobust.bridge.adversarial",
    "attack_examples": "ntkrobust.bridge.adversarial",
    "cross_entropy_gradient": "ntkrobust.bridge.adversarial",
    "pgd_examples": "ntkrobust.bridge.adversarial",
    "TrainConfig": "ntkrobust.bridge.training",
    "train_epoch": "ntkrobust.bridge.training",
    "KernelTracker": "ntkrobust.bridge.tracking",
    "TrackingConfig": "ntkrobust.bridge.tracking",
    "batch_statistics": "ntkrobust.bridge.tracking",
    "clean_accuracy": "ntkrobust.bridge.tracking",
    "pgd_accuracy": "ntkrobust.bridge.tracking",
    "RunFolderError": "ntkrobust.bridge.experiment",
    "run_training": "ntkrobust.bridge.experiment",
    "KernelRankError": "ntkrobust.bridge.eigenvectors",
    "NTKEigenvectors": "ntkrobust.bridge.eigenvectors",
    "eigenvector_images": "ntkrobust.bridge.eigenvectors",
    "ntk_eigenvectors": "ntkrobust.bridge.eigenvectors",
    "RunError": "ntkrobust.bridge.runs",
    "TrainingRun": "ntkrobust.bridge.runs",
    "dynamics_summary": "ntkrobust.bridge.runs",
    "load_run": "ntkrobust.bridge.runs",
    "load_runs": "ntkrobust.bridge.runs",
    "CHECKPOINT_DIR": "ntkrobust.bridge.runfolder",
    "CONFIG_FILE": "ntkrobust.bridge.runfolder",
    "HISTORY_FILE": "ntkrobust.bridge.runfolder",
    "KERNEL_DIR": "ntkrobust.bridge.runfolder",
    "PROBE_FILE": "ntkrobust.bridge.runfolder",
    "RunFolder": "ntkrobust.bridge.runfolder",
    "checkpoint_epoch": "ntkrobust.bridge.runfolder",
    "OutputChange": "ntkrobust.bridge.two_layer",
    "KernelAtTime": "ntkrobust.bridge.two_layer",
    "TwoLayerConfig": "ntkrobust.bridge.two_layer",
    "train_full_batch": "ntkrobust.bridge.two_layer",
    "two_layer_experiment": "ntkrobust.bridge.two_layer",
    "TargetEvaluation": "ntkrobust.bridge.transfer",
    "evaluate_target": "ntkrobust.bridge.transfer",
    "white_box_examples": "ntkrobust.bridge.transfer",
    "gradient_cosine": "ntkrobust.bridge.transfer",
    "Target": "ntkrobust.bridge.targets",
    "TargetError": "ntkrobust.bridge.targets",
    "load_target": "ntkrobust.bridge.targets",
    "EmpiricalKernelMachine": "ntkrobust.bridge.surrogate",
    "fit_empirical_kernel_machine": "ntkrobust.bridge.surrogate",
    "initial_networks": "ntkrobust.bridge.surrogate",
}

if TYPE_CHECKING:  # the names as type checkers and editors see them; at run time they load lazily
    from ntkrobust.bridge.adversarial import adversarial_examples, attack_examples, cross_entropy_gradient, pgd_examples
    from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from ntkrobust.bridge.eigenvectors import KernelRankError, NTKEigenvectors, eigenvector_images, ntk_eigenvectors
    from ntkrobust.bridge.entk import BudgetError, KernelKind, check_memory_budget, empirical_ntk, with_batch_statistics
    from ntkrobust.bridge.experiment import RunFolderError, run_training
    from ntkrobust.bridge.linearized import LinearizedNetwork, relative_magnitude
    from ntkrobust.bridge.models import MODELS, ModelConfig, ModelError, build_model, model_config
    from ntkrobust.bridge.runfolder import (
        CHECKPOINT_DIR,
        CONFIG_FILE,
        HISTORY_FILE,
        KERNEL_DIR,
        PROBE_FILE,
        RunFolder,
        checkpoint_epoch,
    )
    from ntkrobust.bridge.runs import RunError, TrainingRun, dynamics_summary, load_run, load_runs
    from ntkrobust.bridge.surrogate import EmpiricalKernelMachine, fit_empirical_kernel_machine, initial_networks
    from ntkrobust.bridge.targets import Target, TargetError, load_target
    from ntkrobust.bridge.tracking import KernelTracker, TrackingConfig, batch_statistics, clean_accuracy, pgd_accuracy
    from ntkrobust.bridge.training import TrainConfig, train_epoch
    from ntkrobust.bridge.transfer import TargetEvaluation, evaluate_target, gradient_cosine, white_box_examples
    from ntkrobust.bridge.two_layer import (
        KernelAtTime,
        OutputChange,
        TwoLayerConfig,
        train_full_batch,
        two_layer_experiment,
    )

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "DATASETS",
    "HISTORY_FILE",
    "KERNEL_DIR",
    "MODELS",
    "PROBE_FILE",
    "BudgetError",
    "CheckpointError",
    "DataError",
    "Dataset",
    "EmpiricalKernelMachine",
    "KernelAtTime",
    "KernelKind",
    "KernelRankError",
    "KernelTracker",
    "LinearizedNetwork",
    "ModelConfig",
    "ModelError",
    "NTKEigenvectors",
    "OutputChange",
    "RunError",
    "RunFolder",
    "RunFolderError",
    "Target",
    "TargetError",
    "TargetEvaluation",
    "TrackingConfig",
    "TrainConfig",
    "TrainingRun",
    "TwoLayerConfig",
    "adversarial_examples",
    "attack_examples",
    "balanced_indices",
    "batch_statistics",
    "build_model",
    "check_memory_budget",
    "checkpoint_epoch",
    "clean_accuracy",
    "cross_entropy_gradient",
    "dynamics_summary",
    "eigenvector_images",
    "empirical_ntk",
    "evaluate_target",
    "fit_empirical_kernel_machine",
    "gradient_cosine",
    "initial_networks",
    "load_checkpoint",
    "load_dataset",
    "load_run",
    "load_runs",
    "load_target",
    "model_config",
    "ntk_eigenvectors",
    "pgd_accuracy",
    "pgd_examples",
    "read_idx",
    "relative_magnitude",
    "run_training",
    "save_checkpoint",
    "save_dataset_npz",
    "stratified_halves",
    "task_indices",
    "train_epoch",
    "train_full_batch",
    "two_layer_experiment",
    "white_box_examples",
    "with_batch_statistics",
]


__getattr__, __dir__ = lazy_surface(__name__, _TORCH_HALF, __all__)
