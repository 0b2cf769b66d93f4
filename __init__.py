"""ntkrobust: adversarial robustness through neural tangent kernels.

One installed name over the project's folders (the build maps this folder onto ``ntkrobust``):

- ``ntkrobust.kernels``: the analytic half (infinite-width NTKs from neural-tangents, kernel
  machines, eigen-features, Gram-matrix metrics);
- ``ntkrobust.bridge``: the finite-net half (torch models, data, empirical NTKs, training with
  kernel tracking, linearized dynamics, transfer);
- ``ntkrobust.attacks``: threat models, the attack spec and the attack algorithms of both halves;
- ``ntkrobust.studies``: one module per command, the only place that joins the two halves;
- ``ntkrobust.plots``: every figure;
- ``ntkrobust.cli``: the command line (``ntkrobust`` or ``python -m ntkrobust``).

Importing ``ntkrobust`` imports nothing heavy: each subpackage loads its names on first use.
``retain_freed_memory()`` makes a Python session keep and reuse the memory it frees, as the
command line does (glibc; large tensors without page faults, see ``_allocator.py``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ntkrobust._allocator import retain_freed_memory

try:
    __version__ = version("ntkrobust")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"


class AnalyticHalfMissing(ImportError):
    """JAX or neural-tangents does not import here as the analytic half needs them (raised by
    ``kernels._jax``; the command line says it in one line): neither installed, or a JAX newer
    than neural-tangents 0.6.5 knows (JAX 0.11 has no ``jax.core.Jaxpr``)."""


__all__ = ["AnalyticHalfMissing", "__version__", "retain_freed_memory"]
