"""The finite-net half: data loading now; torch models, empirical NTKs and training to come.

Never imports JAX; exchanges numpy arrays with ``kernels``.
"""

from bridge.data import DATASETS, DataError, Dataset, load_dataset, read_idx, save_dataset_npz, stratified_halves

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "load_dataset",
    "read_idx",
    "save_dataset_npz",
    "stratified_halves",
]
