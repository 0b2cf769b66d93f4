"""The finite-net half: data loading, torch models, checkpoints, empirical NTKs, training with
kernel tracking, linearized dynamics, NTK eigenvectors, and the reader of training runs.

The data loaders (numpy only) load eagerly; everything else (``bridge.models``,
``bridge.checkpoint``, ``bridge.entk``, ``bridge.adversarial``, ``bridge.training``,
``bridge.tracking``, ``bridge.experiment``, ``bridge.linearized``, ``bridge.eigenvectors``, and the
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
