"""Reading the run summaries of the training-dynamics figures (``plots.types.RunSummary``).

One plain dict per training run, as built by ``bridge.runs.dynamics_summary``; any key may be
missing: a figure draws what is there and notes under its panels what is not. Run i has colour
``_colour(i)`` in every figure; C-NTK lines are solid, AE-NTK dashed.

- ``_label`` / ``_all_runs``: a run's legend label, and (index, label) of every run;
- ``_metric_series``: a kernel metric over the tracked kernels (``RunSummary["kernels"]``);
- ``_dynamics_series``: a series of the kernel dynamics (``RunSummary["dynamics"]``);
- ``_tracked_kinds``: the kernels (C-NTK, AE-NTK) some run tracked, with their line styles;
- ``_relative_magnitudes``: the per-epoch relative magnitude of linearized training;
- ``_mark_switches``: a dotted line in the run's colour at each run's switch epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ntkrobust.plots._style import _SWITCH_STYLE, KernelStyle, _colour, _floats, _plain
from ntkrobust.plots.types import RunSummary

_KERNELS: tuple[KernelStyle, ...] = (
    ("clean", "C-NTK (clean probe)", "-", "o"),
    ("adversarial", "AE-NTK (PGD probe)", "--", "s"),
)
_OWN_LABELS: KernelStyle = ("adversarial_labels", "AE-NTK under the net's own labels", ":", "^")

Series = Callable[[RunSummary, str, str], tuple[np.ndarray, np.ndarray, str | None]]
"""``series(run, kind, key)``: (epochs, values, why some or all are missing, or None)."""


def _label(run: RunSummary, i: int) -> str:
    return _plain(run.get("label") or f"run {i + 1}")


def _all_runs(runs: Sequence[RunSummary]) -> list[tuple[int, str]]:
    return [(i, _label(run, i)) for i, run in enumerate(runs)]


def _metric_series(run: RunSummary, kind: str, key: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(epochs, values) of a kernel metric over the tracked kernels, and why some are missing
    (None when none are, or when the run did not track this kernel at all)."""
    epochs, values, reasons = [], [], []
    for record in run.get("kernels") or []:
        metrics = record.get(kind)
        if not isinstance(metrics, dict):
            continue
        value = metrics.get(key)
        if isinstance(value, int | float) and np.isfinite(value):
            epochs.append(float(record["epoch"]))
            values.append(float(value))
        else:
            reasons.append((metrics.get("undefined") or {}).get(key, "not recorded"))
    return np.asarray(epochs), np.asarray(values), (reasons[0] if reasons else None)


def _dynamics_series(run: RunSummary, kind: str, key: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(epochs, values) of a ``kernel_dynamics`` series; velocity is drawn at its interval midpoints."""
    dynamics: Mapping[str, Any] | None = (run.get("dynamics") or {}).get(kind)  # a Mapping: read with computed keys
    if dynamics is None:
        return np.zeros(0), np.zeros(0), None
    if key not in dynamics:
        return np.zeros(0), np.zeros(0), (dynamics.get("undefined") or {}).get(key, "not computed")
    x = dynamics["velocity_epochs"] if key == "velocity" else dynamics["epochs"]
    return _floats(x), _floats(dynamics[key]), None


def _has_kind(run: RunSummary, kind: str) -> bool:
    return any(isinstance(record.get(kind), dict) for record in run.get("kernels") or [])


def _tracked_kinds(runs: Sequence[RunSummary]) -> list[KernelStyle]:
    """The kernels (C-NTK, AE-NTK) that some run tracked; the C-NTK when none did."""
    kinds = [k for k in _KERNELS if any(_has_kind(run, k[0]) or k[0] in (run.get("dynamics") or {}) for run in runs)]
    return kinds or [_KERNELS[0]]


def _mark_switches(ax: Any, runs: Sequence[RunSummary], indices: Sequence[int] | None = None) -> bool:
    """A dotted vertical line, in the run's colour, at each run's switch epoch."""
    marked = False
    for i, run in zip(indices if indices is not None else range(len(runs)), runs, strict=True):
        switch = run.get("switch_epoch")
        if switch is not None:
            ax.axvline(float(switch), color=_colour(i), linestyle=_SWITCH_STYLE, linewidth=1.2, zorder=0)
            marked = True
    return marked


def _relative_magnitudes(run: RunSummary) -> tuple[np.ndarray, np.ndarray]:
    records = [r for r in run.get("epochs") or [] if r.get("relative_magnitude") is not None]
    return _floats([r.get("epoch") for r in records]), _floats([r["relative_magnitude"] for r in records])
