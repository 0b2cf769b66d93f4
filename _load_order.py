"""Native-library load order shared by both halves: Triton's LLVM before TensorFlow's.

TensorFlow (imported by neural-tangents, or by the user) and Triton (loaded by torch through
``torch._dynamo`` at the first ``torch.func`` call) each carry their own copy of LLVM. TensorFlow
loads its libraries with ``RTLD_GLOBAL``, so a ``libtriton.so`` loaded after them binds LLVM's
globals to TensorFlow's copy and crashes the process (SIGSEGV, exit 139). ``load_triton_first``
runs when this module is first imported: by ``kernels._jax`` (before neural-tangents) and by
the torch half's ``torch.func`` modules (``bridge.jacobians``, ``bridge.entk``,
``bridge.eigenvectors``, ``bridge.linearized``; torch loads Triton at the first ``torch.func``
call, not at ``import torch``), so any import order works. Standard library only.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _tensorflow_loaded() -> bool:
    """Whether TensorFlow's libraries (and so its LLVM) are already in the process."""
    if any(name == "tensorflow" or name.startswith("tensorflow.") for name in list(sys.modules)):
        return True
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libtensorflow" in line for line in maps)
    except OSError:  # not Linux: no /proc, and no RTLD_GLOBAL clash of this kind either
        return False


def load_triton_first() -> None:
    """Load Triton (when installed) now, in a way TensorFlow's LLVM cannot break: before
    TensorFlow, or with ``RTLD_DEEPBIND`` when TensorFlow is already loaded."""
    if "triton" in sys.modules:
        return
    try:
        if importlib.util.find_spec("triton") is None:
            return
    except (ImportError, ValueError):
        return
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    flags = sys.getdlopenflags() if hasattr(sys, "getdlopenflags") else None
    isolate = bool(deepbind) and flags is not None and _tensorflow_loaded()
    if isolate:
        assert flags is not None
        sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401  (load order only)
    except ImportError:
        pass
    finally:
        if isolate:
            assert flags is not None
            sys.setdlopenflags(flags)


load_triton_first()
