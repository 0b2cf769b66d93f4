"""What counts as a number where a count, a seed, a scale or a recorded time is checked.

Shared by every layer's checks (attacks, kernels, bridge, studies, reproduce) so that they agree:
Python's ``True == 1`` and ``isinstance(True, int)`` would let a bool pass as a count of 1 or a
step of 1.0, so a bool is never a number here; numpy's integers and floats are (``numbers``
registers them). Each caller keeps its own bounds and its own one-line message.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, TypeGuard


def is_whole(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is a whole number: an int or a numpy integer, not a bool (``2.0`` is not)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value: Any, *, finite: bool = False) -> TypeGuard[float]:
    """Whether ``value`` is a real number, not a bool; with ``finite``, one that a finite float
    holds (not NaN or ±∞, and no int beyond float's range, which ``math.isfinite`` raises on)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    try:
        return not finite or math.isfinite(value)
    except OverflowError:
        return False


def pixel_radius(value: float) -> str:
    """A radius or step in pixel units as the papers write it: ``0.3`` and ``0.01`` as decimals,
    a multiple of 1/255 that has no short decimal as ``8/255`` (not ``0.03137``), else 4 figures.
    ε is always recorded as the float; this is only how it is printed."""
    short = float(f"{value:.3g}")
    if math.isclose(value, short, rel_tol=1e-6):  # 0.3 · 2/3 is 0.2 (0.19999999999999998), not 51/255
        return f"{short:g}"
    whole = round(value * 255)
    if whole > 0 and math.isclose(value, whole / 255, rel_tol=1e-6):  # a float32 copy too
        return f"{whole}/255"
    return f"{value:.4g}"
