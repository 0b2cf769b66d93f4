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

import importlib
from typing import Any

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
    "batch_statistics": "ntkrobust.bridge.tracking",
    "clean_accuracy": "ntkrobust.bridge.tracking",
    "pgd_accuracy": "ntkrobust.bridge.tracking",
    "RunFolderError": "ntkrobust.bridge.experiment",
    "TrackingConfig": "ntkrobust.bridge.experiment",
    "run_training": "ntkrobust.bridge.experiment",
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

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "balanced_indices",
    "load_dataset",
    "read_idx",
    "save_dataset_npz",
    "stratified_halves",
    "task_indices",
    *_TORCH_HALF,
]


def __getattr__(name: str) -> Any:
    if name not in _TORCH_HALF:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    return getattr(importlib.import_module(_TORCH_HALF[name]), name)


def __dir__() -> list[str]:
    return __all__
