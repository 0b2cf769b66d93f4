"""The few array operations the attack algorithms need, for numpy, JAX and torch arrays.

The attack algorithms are written once against this small interface so that the same FGSM
and PGD run on a kernel machine's JAX arrays and on a torch net's tensors, on whatever device
the data already lives on (no host round trip per step). Backends are recognised by the
array's type; JAX and torch are imported only when such an array shows up.

Every per-example reduction returns shape ``(B, 1, ..., 1)`` so it broadcasts against the
batch it came from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ntkrobust._upload import upload

Array = Any  # numpy.ndarray | jax.Array | torch.Tensor

_TINY = 1e-12  # guards divisions by a zero norm (a projection's δ, a random start's direction)


class _ArrayModuleOps:
    """numpy and jax.numpy share these names; ``xp`` is the module."""

    def __init__(self, xp: Any, name: str) -> None:
        self.xp = xp
        self.name = name

    def sign(self, x: Array) -> Array:
        return self.xp.sign(x)

    def abs(self, x: Array) -> Array:
        return self.xp.abs(x)

    def clip(self, x: Array, lo: Array | float, hi: Array | float) -> Array:
        return self.xp.clip(x, lo, hi)

    def where(self, cond: Array, a: Array, b: Array) -> Array:
        return self.xp.where(cond, a, b)

    def sqrt(self, x: Array) -> Array:
        return self.xp.sqrt(x)

    def maximum(self, x: Array, floor: float) -> Array:
        return self.xp.maximum(x, floor)

    def reduce(self, x: Array, how: str) -> Array:
        axes = tuple(range(1, x.ndim))
        if how == "sum":
            return self.xp.sum(x, axis=axes, keepdims=True)
        return self.xp.max(x, axis=axes, keepdims=True)

    def astype_like(self, x: Array, like: Array) -> Array:
        return self.xp.asarray(x, dtype=like.dtype)

    def from_numpy(self, a: np.ndarray, like: Array) -> Array:
        arr = self.xp.asarray(a, dtype=like.dtype)
        if self.name == "jax":  # follow ``like`` onto its device (GPU, TPU)
            import jax

            devices = like.devices() if hasattr(like, "devices") else None
            if devices and len(devices) == 1:
                arr = jax.device_put(arr, next(iter(devices)))
        return arr

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x)


class _TorchOps(_ArrayModuleOps):
    """torch has numpy's names for sign, abs, clip, where and sqrt; the rest differs."""

    def __init__(self) -> None:
        import torch

        super().__init__(torch, "torch")

    def maximum(self, x: Array, floor: float) -> Array:
        return self.xp.clamp(x, min=floor)

    def reduce(self, x: Array, how: str) -> Array:
        dims = tuple(range(1, x.ndim))
        if how == "sum":
            return self.xp.sum(x, dim=dims, keepdim=True)
        return self.xp.amax(x, dim=dims, keepdim=True)

    def astype_like(self, x: Array, like: Array) -> Array:
        return x.to(dtype=like.dtype)

    def from_numpy(self, a: np.ndarray, like: Array) -> Array:
        return upload(a, like)  # no round trip per attack, i.e. per training step

    def to_numpy(self, x: Array) -> np.ndarray:
        return x.detach().cpu().numpy()


_CACHE: dict[str, _ArrayModuleOps] = {}


def _make(key: str) -> _ArrayModuleOps:
    if key == "numpy":
        return _ArrayModuleOps(np, "numpy")
    if key == "jax":
        import jax.numpy as jnp

        return _ArrayModuleOps(jnp, "jax")
    return _TorchOps()


def ops_for(x: Array) -> _ArrayModuleOps:
    """The operations for the backend that owns ``x`` (numpy, JAX or torch)."""
    module = type(x).__module__
    if module.startswith("jax") or module.startswith("jaxlib"):
        key = "jax"
    elif module.startswith("torch"):
        key = "torch"
    elif isinstance(x, np.ndarray):
        key = "numpy"
    else:
        raise TypeError(f"unsupported array type {type(x).__name__}: expected numpy, JAX or torch")
    if key not in _CACHE:
        _CACHE[key] = _make(key)
    return _CACHE[key]
