"""Host arrays from whatever the kernel functions are handed: numpy, JAX or torch.

A torch tensor is read through its values, detached and copied from its device: numpy's own
conversion refuses a tensor that requires grad or lies on a GPU ("Can't call numpy() on Tensor
that requires grad"). Duck-typed, so that ``kernels`` imports no torch: the analytic half runs
where torch is not installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_torch(a: object) -> bool:
    """Whether ``a`` is a torch tensor (by its module and ``detach``, without importing torch)."""
    return type(a).__module__.split(".")[0] == "torch" and hasattr(a, "detach")


def torch_values(a: Any) -> Any:
    """A torch tensor's values as a numpy array; anything else (numpy, JAX, a list) as it is, so
    that a JAX array stays on its device."""
    return a.detach().cpu().numpy() if is_torch(a) else a


def host_array(a: Any, dtype: Any = None) -> np.ndarray:
    """``a`` as a numpy array (in ``dtype`` if given), a torch tensor through its values."""
    return np.asarray(torch_values(a), dtype=dtype)
