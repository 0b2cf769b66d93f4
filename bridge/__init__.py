"""The finite-net half: data loading, torch models, checkpoints, empirical NTKs.

The data loaders (numpy only) load eagerly; the torch half (``bridge.models``,
``bridge.checkpoint``, ``bridge.entk``, ``bridge.adversarial``) loads on first use of one of its
names, so data-only commands never pay for importing torch.

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
