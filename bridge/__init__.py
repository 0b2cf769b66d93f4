"""The finite-net half: data loading, torch models, checkpoints, empirical NTKs.

Only the data loaders are imported here (numpy only); import ``bridge.models``,
``bridge.checkpoint``, ``bridge.entk`` and ``bridge.adversarial`` for the torch half, so that
data-only commands never pay for importing torch.

Never imports JAX; exchanges numpy arrays with ``kernels``.
"""

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
]
