"""One place that imports JAX and neural-tangents, configured the way this package needs them.

- float64 must be available (kernel Gram matrices are compared and inverted in float64), and
  JAX only allows it when ``jax_enable_x64`` is set before arrays are made.
- neural-tangents 0.6.5 imports TensorFlow (through tf2jax) at import time; TensorFlow's C++
  start-up chatter about missing CUDA drivers is not ours to print, so it is held back and
  shown only if the import fails.
- TensorFlow and Triton (which torch.func loads through torch._dynamo when the torch half runs
  in the same process) each carry their own LLVM. Loading Triton's after TensorFlow's aborts the
  process ("LLVM ERROR: inconsistency in registered CommandLine options"); the other order is
  fine. So Triton, when installed, is loaded first (0.2 s; it does not import torch).
"""

from __future__ import annotations

import os
import sys
import tempfile
from types import ModuleType


def _import_neural_tangents() -> tuple[ModuleType, ModuleType]:
    try:
        import triton  # noqa: F401  (load order only, see the module docstring)
    except ImportError:
        pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # The chatter comes from C++ (absl) straight to file descriptor 2, so redirecting
    # sys.stderr is not enough: park fd 2 on a temporary file for the duration of the import.
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import neural_tangents as nt
            from neural_tangents import stax
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return nt, stax


import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

nt, stax = _import_neural_tangents()

__all__ = ["jax", "jnp", "nt", "stax"]
