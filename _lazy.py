"""Lazy public surfaces: a package's names load from their modules on first use.

``kernels`` and ``bridge`` list their public names in a table (name -> defining module) and
get ``__getattr__`` / ``__dir__`` from ``lazy_surface``, so ``import ntkrobust.kernels`` costs
nothing and ``ntkrobust --help`` never imports JAX or torch. The same names are imported under
``TYPE_CHECKING`` in each package for type checkers and editors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_surface(
    package: str, table: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` of ``package``: a name of ``table`` loads from its module."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name]), name)

    def __dir__() -> list[str]:
        return list(public)

    return __getattr__, __dir__
