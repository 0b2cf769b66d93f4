"""One place that imports JAX and neural-tangents, configured the way this package needs them.

float64 without changing the process's JAX default
    Gram matrices are compared and inverted in float64, and JAX makes float64 arrays only while
    ``jax_enable_x64`` is on. The package never sets that flag for the process: a user's own JAX
    code keeps its float32 defaults (``jnp.ones``, ``jax.random.uniform``, ...). Instead, the
    entry points that compute (``compute_gram``, ``fit_kernel_machine``, the ``KernelMachine``
    methods, the feature and attack functions) are wrapped in ``float64``, which switches the
    flag on for the calling thread for the duration of the call (``jax.experimental.enable_x64``,
    thread-local; jit caches keep one compiled version per setting). Consequences:

    - the float64 arrays they return (``logits``, ``loss_gradient`` of float64 inputs, a
      machine's ``x_train``) stay float64, but JAX arithmetic on them in float32 user code gives
      float32, as for any float64 array there; ``np.asarray`` keeps them exact;
    - called on a tracer of the caller's own ``jax.grad`` / ``jit`` / ``vmap``, an entry point
      runs at the caller's precision (float32 unless the caller enabled x64): switching the
      flag inside a trace breaks JAX 0.4.38 (lowering errors and "Executable expected parameter
      ... incompatible size" when float64 values cross into float32-traced code);
    - the low-level kernel functions (``Architecture.kernel_fn``, ``kernels.relu``,
      ``kernels.conv``, ``kernels.two_layer``) compute at the precision of their caller;
    - whoever wants float64 JAX everywhere (e.g. tests that compare against stax in float64)
      sets ``jax_enable_x64`` itself: the wrappers then do nothing.

Import order: TensorFlow, Triton
    TensorFlow and Triton (which torch loads through ``torch._dynamo``, e.g. at the first
    ``torch.func.jacrev``) each carry their own copy of LLVM. TensorFlow loads its libraries
    with ``RTLD_GLOBAL``, so when ``libtriton.so`` is loaded after them, its references to LLVM's
    globals bind to TensorFlow's copy and its static initialisers crash the process (SIGSEGV,
    exit 139, or "LLVM ERROR: inconsistency in registered CommandLine options"). Triton first,
    then TensorFlow, is fine. Hence, on import of this module:

    - Triton, when installed and not yet loaded, is loaded now (0.2 s; it does not import
      torch), before anything can bring TensorFlow in; if TensorFlow is already loaded (the user
      imported ``tensorflow`` or ``neural_tangents`` first), Triton is loaded with
      ``RTLD_DEEPBIND`` so that it binds its own LLVM;
    - neural-tangents 0.6.5 imports its ``experimental`` module (the eNTK of TensorFlow models,
      which imports TensorFlow and tf2jax) eagerly from its ``__init__``; nothing this package
      uses needs it. When this module is the first to import neural-tangents, ``experimental``
      is a stand-in that imports the real module, TensorFlow included, on the first use of one
      of its names, so ``neural_tangents.experimental.empirical_ntk_fn_tf`` still works.

    The torch half's modules that use ``torch.func`` run the same guard
    (``ntkrobust._load_order.load_triton_first``), so every import order works.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import numpy as np

from ntkrobust._load_order import load_triton_first

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _DeferredModule(types.ModuleType):
    """Stands in for a module until one of its names is used, then imports the real one."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):  # metadata probes (inspect, pickle)
            raise AttributeError(name)
        return getattr(self._load(), name)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def _load(self) -> types.ModuleType:
        name = self.__name__
        if sys.modules.get(name) is self:
            load_triton_first()
            del sys.modules[name]
            try:
                real = importlib.import_module(name)  # also sets it on the parent package
            except BaseException:
                sys.modules[name] = self
                raise
        else:
            real = importlib.import_module(name)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and getattr(sys.modules[parent], child, None) is self:
            setattr(sys.modules[parent], child, real)
        self.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
        return real


def _defer_tensorflow_half_of_neural_tangents() -> None:
    """Put a stand-in for ``neural_tangents.experimental`` in place before the package loads."""
    name = "neural_tangents.experimental"
    if "neural_tangents" in sys.modules or name in sys.modules:
        return
    try:
        package = importlib.util.find_spec("neural_tangents")  # finds, does not import
        locations = package.submodule_search_locations if package is not None else None
        spec = importlib.machinery.PathFinder.find_spec(name, list(locations)) if locations else None
    except (ImportError, ValueError):
        return
    if spec is None:
        return
    stand_in = _DeferredModule(name, "neural_tangents.experimental, imported on first use (see ntkrobust.kernels._jax)")
    stand_in.__spec__ = spec
    stand_in.__file__ = spec.origin
    stand_in.__loader__ = spec.loader
    stand_in.__package__ = name if spec.submodule_search_locations is not None else "neural_tangents"
    if spec.submodule_search_locations is not None:
        stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = stand_in


def _one_gpu_per_process() -> None:
    """Under torchrun (several processes, one GPU each from ``LOCAL_RANK``), this process's JAX
    takes only its own GPU, and allocates as it goes. By default every process's JAX would shard
    over every GPU of the node and take 75% of each one's memory when it starts: the second
    process, or torch on the same GPU, would run out of memory. A user's own settings (the
    ``jax_cuda_visible_devices`` flag set before, ``XLA_PYTHON_CLIENT_PREALLOCATE``) are left
    alone. Called before JAX makes its backends, which read both. (In one process the command
    line sets no preallocation, ``cli.run_command``; an import alone changes nothing there.)"""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "LOCAL_RANK" not in os.environ:
        return
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if jax.config.read("jax_cuda_visible_devices") == "all":
        jax.config.update("jax_cuda_visible_devices", os.environ["LOCAL_RANK"])


load_triton_first()
_defer_tensorflow_half_of_neural_tangents()

try:
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt
    from jax.experimental import enable_x64 as _enable_x64
    from neural_tangents import stax
except ImportError as _error:
    from ntkrobust import AnalyticHalfMissing
    from ntkrobust._messages import first_line

    raise AnalyticHalfMissing(
        "the analytic half (JAX, neural-tangents) does not import here "
        f"({type(_error).__name__}: {first_line(_error)}); "
        "it needs the pinned jax 0.4.38 and neural-tangents 0.6.5, which `pip install -e .` installs"
    ) from _error

_one_gpu_per_process()


def x64_enabled() -> bool:
    """Whether JAX makes 64-bit types in this thread right now (globally or in a ``float64`` call)."""
    return bool(jax.config.read("jax_enable_x64"))


def _traced(args: tuple[object, ...], kwargs: dict[str, object]) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs)))


def float64(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with ``jax_enable_x64`` on in this thread, leaving the process default alone.

    A no-op where x64 is already on, and where an argument is a tracer of the caller's own
    transformation (the call then runs at the caller's precision; see the module docstring).
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if x64_enabled() or _traced(args, kwargs):
            return fn(*args, **kwargs)
        with _enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


def point_sharding(arrays: tuple[jnp.ndarray, ...]) -> Any:
    """Points split over every local JAX device (their first axis), or None with one device or
    under a caller's trace. Each device computes the kernel rows, logits, gradients or feature
    scores of its own points against the whole (replicated) training set, so the sums inside every
    entry are the one-device sums: the results are the same (tested with 2 host devices)."""
    if jax.local_device_count() < 2 or any(isinstance(a, jax.core.Tracer) for a in arrays):
        return None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    return NamedSharding(Mesh(np.array(jax.local_devices()), ("points",)), PartitionSpec("points"))


__all__ = ["float64", "jax", "jnp", "nt", "point_sharding", "stax", "x64_enabled"]
