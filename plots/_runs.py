"""Reading the run summaries of the training-dynamics figures (``plots.types.RunSummary``).

One plain dict per training run, as built by ``bridge.runs.dynamics_summary``; any key may be
missing: a figure draws what is there and notes under its panels what is not. Run i has colour
``_colour(i)`` in every figure; C-NTK lines are solid, AE-NTK dashed.

- ``_label`` / ``_all_runs``: a run's legend label, and (index, label) of every run;
- ``_metric_series``: a kernel metric over the tracked kernels (``RunSummary["kernels"]``);
- ``_dynamics_series``: a series of the kernel dynamics (``RunSummary["dynamics"]``);
- ``_tracked_kinds``: the kernels (C-NTK, AE-NTK) some run tracked, with their line styles;
- ``_relative_magnitudes``: the per-epoch relative magnitude of linearized training;
- ``_mark_switches``: a dotted line in the run's colour at each run's switch epoch;
- ``_decay_epochs`` / ``_mark_decays``: the epochs after which a learning rate decays, and a grey
  dash-dot line at each;
- ``_seeded`` / ``_seed_band``: a series of a run, or of the runs of several seeds
  (``RunSummary["seed_runs"]``) as their mean ± std.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ntkrobust._numbers import is_real
from ntkrobust.plots._style import _DECAY_STYLE, _SWITCH_STYLE, KernelStyle, _colour, _floats, _plain
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
    (None when none are, or when the run did not track this kernel at all; where others are
    drawn, how many are missing)."""
    epochs, values, reasons = [], [], []
    for record in run.get("kernels") or []:
        metrics = record.get(kind)
        if not isinstance(metrics, dict):
            continue
        value = metrics.get(key)
        if is_real(value, finite=True):
            epochs.append(float(record["epoch"]))
            values.append(float(value))
        else:
            reasons.append((metrics.get("undefined") or {}).get(key, "not recorded"))
    if reasons and values:  # the others are drawn: the note says how many are not
        reasons[0] += f"; {len(reasons)} of the {len(reasons) + len(values)} tracked kernels"
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


def _decay_epochs(runs: Sequence[RunSummary]) -> list[float]:
    """The epochs after which some run's learning rate decays (``train --milestones``), sorted."""
    return sorted({float(m) for run in runs for m in run.get("milestones") or []})


def _mark_decays(ax: Any, runs: Sequence[RunSummary]) -> bool:
    """A thin grey dash-dot line at every epoch after which a run's learning rate decays
    (``train --milestones``): RAT's second kernel-learning phase starts there (sec. 3.2)."""
    epochs = _decay_epochs(runs)
    for epoch in epochs:
        ax.axvline(epoch, color="0.55", linestyle=_DECAY_STYLE, linewidth=0.9, zorder=0)
    return bool(epochs)


def _mark_switches(ax: Any, runs: Sequence[RunSummary], indices: Sequence[int] | None = None) -> bool:
    """A dotted vertical line, in the run's colour, at each run's switch epoch (none at epoch 0:
    such a run trained no clean epoch)."""
    marked = False
    for i, run in zip(indices if indices is not None else range(len(runs)), runs, strict=True):
        switch = run.get("switch_epoch")
        if switch:
            ax.axvline(float(switch), color=_colour(i), linestyle=_SWITCH_STYLE, linewidth=1.2, zorder=0)
            marked = True
    return marked


def _relative_magnitudes(run: RunSummary) -> tuple[np.ndarray, np.ndarray]:
    records = [r for r in run.get("epochs") or [] if r.get("relative_magnitude") is not None]
    return _floats([r.get("epoch") for r in records]), _floats([r["relative_magnitude"] for r in records])


class Curve(NamedTuple):
    """What a curve figure draws of one run: its series, or for the runs of several seeds the
    mean and the spread over them."""

    epochs: np.ndarray
    values: np.ndarray  # the run's values, or the mean over its seeds
    spread: np.ndarray | None  # the sample standard deviation over the seeds; None for one run
    lowest: np.ndarray | None  # the lowest seed's value (the band's floor on a log axis)
    missing: str | None  # why some or all values are missing


def _seed_band(curves: Sequence[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std, lowest) of the seeds' curves (epochs, values), at the epochs where
    every seed has a finite value: the mean, the sample standard deviation (ddof 1, as the
    spread of train's seeds.json; 0 for a single seed) and the lowest seed's value."""
    tables = []
    for x, y in curves:
        x, y = _floats(x), _floats(y)
        keep = np.isfinite(x) & np.isfinite(y)
        tables.append(dict(zip(x[keep].tolist(), y[keep].tolist(), strict=True)))
    shared = sorted(set.intersection(*(set(table) for table in tables))) if tables else []
    if not shared:
        return np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)
    values = np.asarray([[table[epoch] for epoch in shared] for table in tables], dtype=np.float64)
    spread = values.std(axis=0, ddof=1) if len(tables) > 1 else np.zeros(len(shared))
    return np.asarray(shared), values.mean(axis=0), spread, values.min(axis=0)


def _seeded(run: RunSummary, series: Series, kind: str, key: str) -> Curve:
    """``series(run, kind, key)`` as a ``Curve``; for the runs of several seeds its mean ± std
    over them, at the epochs every seed has (the others noted as missing)."""
    seeds = run.get("seed_runs")
    if not seeds:
        x, y, reason = series(run, kind, key)
        return Curve(x, y, None, None, reason)
    drawn = [series(seed, kind, key) for seed in seeds]
    reason = next((why for *_, why in drawn if why is not None), None)
    x, mean, spread, lowest = _seed_band([(x, y) for x, y, _ in drawn])
    finite = max(int((np.isfinite(_floats(x)) & np.isfinite(_floats(y))).sum()) for x, y, _ in drawn)
    if reason is None and x.size < finite:
        reason = f"{finite - x.size} epoch(s) not in every seed"
    return Curve(x, mean, spread, lowest, reason)
