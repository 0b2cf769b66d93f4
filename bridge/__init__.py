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

from bridge.data import (
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
    "MODELS": "bridge.models",
    "ModelConfig": "bridge.models",
    "ModelError": "bridge.models",
    "build_model": "bridge.models",
    "model_config": "bridge.models",
    "CheckpointError": "bridge.checkpoint",
    "load_checkpoint": "bridge.checkpoint",
    "save_checkpoint": "bridge.checkpoint",
    "BudgetError": "bridge.entk",
    "KernelKind": "bridge.entk",
    "empirical_ntk": "bridge.entk",
    "with_batch_statistics": "bridge.entk",
    "LinearizedNetwork": "bridge.linearized",
    "relative_magnitude": "bridge.linearized",
    "adversarial_examples": "bridge.adversarial",
    "cross_entropy_gradient": "bridge.adversarial",
    "pgd_examples": "bridge.adversarial",
    "TrainConfig": "bridge.training",
    "train_epoch": "bridge.training",
    "KernelTracker": "bridge.tracking",
    "batch_statistics": "bridge.tracking",
    "clean_accuracy": "bridge.tracking",
    "pgd_accuracy": "bridge.tracking",
    "RunFolderError": "bridge.experiment",
    "TrackingConfig": "bridge.experiment",
    "run_training": "bridge.experiment",
    "NTKEigenvectors": "bridge.eigenvectors",
    "eigenvector_images": "bridge.eigenvectors",
    "ntk_eigenvectors": "bridge.eigenvectors",
    "RunError": "bridge.runs",
    "TrainingRun": "bridge.runs",
    "dynamics_summary": "bridge.runs",
    "load_run": "bridge.runs",
    "load_runs": "bridge.runs",
    "OutputChange": "bridge.two_layer",
    "KernelAtTime": "bridge.two_layer",
    "TwoLayerConfig": "bridge.two_layer",
    "train_full_batch": "bridge.two_layer",
    "two_layer_experiment": "bridge.two_layer",
    "WhiteBoxAttack": "bridge.transfer",
    "TargetEvaluation": "bridge.transfer",
    "evaluate_target": "bridge.transfer",
    "white_box_examples": "bridge.transfer",
    "gradient_cosine": "bridge.transfer",
    "Target": "bridge.targets",
    "TargetError": "bridge.targets",
    "load_target": "bridge.targets",
    "EmpiricalKernelMachine": "bridge.surrogate",
    "fit_empirical_kernel_machine": "bridge.surrogate",
    "initial_networks": "bridge.surrogate",
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
