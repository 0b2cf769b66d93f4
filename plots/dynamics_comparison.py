"""Training-dynamics figures that compare runs ("Rethinking adversarial training with NTK", RAT).

- ``baseline_distance_curves``: the kernel distance KD(Θ_t^baseline, Θ_t^run) of every run to a
  baseline run against the epoch (RAT sec. 5-6, figs. 5, 7, 9b-c, 17; LOO table 1 measures the
  same distance between a network and its parent);
- ``specialization_heatmaps``: the C × C kernel specialization matrices (KSM) of every run at
  chosen epochs, of the C-NTK, of the AE-NTK under the clean labels and under the net's own
  labels on the adversarial points (RAT figs. 3, 4, 8, 9d, 18; LOO sec. 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.plots._runs import _KERNELS, _OWN_LABELS, _label
from ntkrobust.plots._style import _colour, _empty, _floats, _heading, _plain, _pyplot, _save
from ntkrobust.plots.dynamics_curves import _Panel, _series_panels
from ntkrobust.plots.types import KernelKind, RunSummary

__all__ = ["SPECIALIZATION_KINDS", "baseline_distance_curves", "ksm_columns", "specialization_heatmaps"]


def _baseline_series(run: RunSummary, kind: str, key: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(epochs, KD to the baseline) of one kernel of the run, and why it is missing."""
    distance: Mapping[str, Any] = run.get("baseline_distance") or {}
    if not distance:
        return np.zeros(0), np.zeros(0), "no distance to the baseline"
    if kind not in distance:
        return np.zeros(0), np.zeros(0), (distance.get("undefined") or {}).get(kind, "not computed")
    return _floats(distance["epochs"]), _floats(distance[kind]), None


def baseline_distance_curves(runs: Sequence[RunSummary], path: Path, *, subtitle: str = "") -> None:
    """KD(Θ_t^baseline, Θ_t^run) = 1 − ⟨Θ₁, Θ₂⟩_F / (‖Θ₁‖_F ‖Θ₂‖_F) against the epoch, at the steps
    both runs tracked, one line per run (its ``baseline_distance``): the C-NTK on the left, the
    AE-NTK (dashed) on the right (RAT figs. 5, 7, 9b-c, 17). The baseline against itself is 0."""
    tracked = [k for k in _KERNELS if any(k[0] in (run.get("baseline_distance") or {}) for run in runs)]
    panels: list[_Panel] = [
        (kind, r"$\mathrm{KD}(\Theta_t^{\mathrm{baseline}},\, \Theta_t)$", name, False, [(kind, name, style, marker)])
        for kind, name, style, marker in tracked or _KERNELS[:1]
    ]
    baselines = sorted({str(d["baseline_label"]) for run in runs if (d := run.get("baseline_distance"))})
    _series_panels(
        runs,
        path,
        panels,
        heading="Kernel distance to the baseline run",
        subtitle=subtitle,
        ref=f"RAT figs. 5, 7, 17; baseline: {', '.join(baselines) or '?'}; at the steps both runs tracked",
        series=_baseline_series,
    )


SPECIALIZATION_KINDS: dict[str, tuple[KernelKind, str]] = {
    "specialization_clean": ("clean", "C-NTK under the clean labels"),
    "specialization_adversarial": ("adversarial", "AE-NTK under the clean labels"),
    "specialization_adversarial_labels": ("adversarial_labels", "AE-NTK under the net's own labels"),
}
"""The specialization figures: name → (kernel of the history's records, what it shows), RAT's
C-NTK (fig. 3), AE-NTK under clean labels "CL" and under adversarial labels "AL" (fig. 4)."""

_MANY_CLASSES = 10  # more classes: indices, not names, on the axes
_UNDEFINED_GREY = "0.8"  # a KSM column that is undefined; why, in the figure's note:
_GREY_NOTES = ("its class has no labelled point", "its class has zero mean alignment")
_SAME_EPOCH = 1e-9


def ksm_columns(runs: Sequence[RunSummary], epochs: Sequence[float] | None) -> list[list[float | None]]:
    """Per run, the tracked epoch of each column: ``epochs`` (None where the run did not track
    one), or by default its first and its last tracked epoch (one column for a single kernel)."""
    columns: list[list[float | None]] = []
    for run in runs:
        tracked = _floats([record.get("epoch") for record in run.get("kernels") or []])
        if epochs is None:
            columns.append(list(sorted({float(tracked[0]), float(tracked[-1])})) if tracked.size else [None])
            continue
        found = [tracked[np.abs(tracked - e) < _SAME_EPOCH] for e in epochs]
        columns.append([float(f[0]) if f.size else None for f in found])
    return columns


def specialization_at(run: RunSummary, kind: str, epoch: float | None) -> tuple[np.ndarray | None, str]:
    """The run's KSM of ``kind`` at ``epoch`` and "", its defined columns (NaN in the others) and
    why the others are undefined, or None and why it is missing."""
    if epoch is None:
        return None, "no kernel tracked at this epoch"
    record = next(r for r in run.get("kernels") or [] if abs(float(r["epoch"]) - epoch) < _SAME_EPOCH)
    metrics: Mapping[str, Any] | None = record.get(kind)  # type: ignore[assignment]  # a Mapping: computed keys
    if not isinstance(metrics, Mapping):
        return None, "the AE-NTK was not tracked" if kind != "clean" else "no C-NTK metrics recorded"
    reasons = metrics.get("undefined") or {}
    why = str(reasons.get("specialization_matrix") or reasons.get("mean_specialization") or "not recorded")
    why = why if why.startswith("specialization") else f"specialization: {why}"
    if "specialization_matrix" in metrics:
        return np.asarray(metrics["specialization_matrix"], dtype=np.float64), ""
    if "specialization_columns" in metrics:  # the defined columns; null (NaN here) in the others
        return np.asarray(metrics["specialization_columns"], dtype=np.float64), why
    return None, why


def _scale(runs: Sequence[RunSummary], columns: Sequence[Sequence[float | None]]) -> tuple[float, float]:
    """One colour scale for every KSM of the three figures: its lowest and highest value,
    around 1 (a class kernel aligned with class j as much as the mean class kernel is)."""
    values = [
        matrix[np.isfinite(matrix)]  # a column undefined (NaN) takes no part in the scale
        for run, epochs in zip(runs, columns, strict=True)
        for kind, _ in SPECIALIZATION_KINDS.values()
        for epoch in epochs
        if (matrix := specialization_at(run, kind, epoch)[0]) is not None and np.isfinite(matrix).any()
    ]
    low = min((float(m.min()) for m in values), default=0.0)
    high = max((float(m.max()) for m in values), default=2.0)
    return min(low, 1.0 - 1e-3), max(high, 1.0 + 1e-3)


def _tick_names(names: Sequence[str], c: int) -> list[str]:
    """The names of a panel's C classes: the run's class names, then indices for the classes past them."""
    return [_plain(n) for n in (list(names) + [str(k) for k in range(len(names), c)])[:c]]


def _class_ticks(ax: Any, names: Sequence[str], c: int, *, left: bool, bottom: bool) -> None:
    """Class names on the outer axes of the grid when there are at most ten classes."""
    if c <= _MANY_CLASSES:
        ticks = np.arange(c)
        labels = _tick_names(names, c)
        ax.set_xticks(ticks, labels if bottom else [], fontsize=7, rotation=90 if max(map(len, labels)) > 2 else 0)
        ax.set_yticks(ticks, labels if left else [], fontsize=7)
    elif not (left or bottom):
        ax.tick_params(labelleft=False, labelbottom=False)
    if bottom:
        ax.set_xlabel("label class j", fontsize=8)


def specialization_heatmaps(
    runs: Sequence[RunSummary],
    path: Path,
    *,
    figure: str = "specialization_clean",
    epochs: Sequence[float] | None = None,
    subtitle: str = "",
) -> None:
    """The kernel specialization matrices KSM[i, j] = A(Θ_ii, y_j y_jᵀ) / (C⁻¹ Σ_l A(Θ_ll, y_j y_jᵀ))
    of one kernel (``figure``, a key of ``SPECIALIZATION_KINDS``) from the runs' kernel records:
    rows = runs, columns = ``epochs`` (default: each run's first and last tracked epoch). A
    diverging map centred at 1 on one scale shared by the three specialization figures: red,
    class kernel i aligned with class j's labels more than the mean class kernel; a
    specialized kernel is red on its diagonal (RAT figs. 3, 4, 8, 9d, 18)."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    kind, shown = SPECIALIZATION_KINDS[figure]
    columns = ksm_columns(runs, epochs)
    low, high = _scale(runs, columns)
    norm = TwoSlopeNorm(vmin=low, vcenter=1.0, vmax=high)
    colours = plt.get_cmap("RdBu_r").with_extremes(bad=_UNDEFINED_GREY)  # an undefined column
    rows, cols = max(len(runs), 1), max((len(c) for c in columns), default=1)
    # "compressed" packs the square panels without the gaps "constrained" leaves
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.5 * cols + 2.6, 2.5 * rows + 1.4), squeeze=False, layout="compressed"
    )
    cells = [
        [(epoch, *specialization_at(run, kind, epoch)) for epoch in epochs]
        for run, epochs in zip(runs, columns, strict=True)
    ]
    shown_at = {(r, c) for r, row in enumerate(cells) for c, (_, matrix, _) in enumerate(row) if matrix is not None}
    # class names on the first drawn panel of a row and the last drawn panel of a column, and on
    # any panel whose run names its classes otherwise than that last one (another data set, or
    # the classes in another order): a column must not read one run's classes under another's names
    left = {r: min(c for rr, c in shown_at if rr == r) for r, _ in shown_at}
    bottom = {c: max(r for r, cc in shown_at if cc == c) for _, c in shown_at}
    classes = {
        (r, c): _tick_names(runs[r].get("class_names") or [], cells[r][c][1].shape[0])  # type: ignore[union-attr]
        for r, c in shown_at
    }
    image = None
    partial: dict[str, None] = {}  # why some columns are undefined, each kind of reason once
    for row, run in enumerate(runs):
        for col in range(cols):
            ax = axes[row, col]
            if col >= len(cells[row]):
                ax.axis("off")
                continue
            epoch, matrix, why = cells[row][col]
            when = "" if epoch is None else f"epoch {epoch:g}"
            if matrix is None:
                ax.set_title(when, fontsize=9)
                _empty(ax, why)
                ax.set_aspect("equal")
            else:
                image = ax.imshow(matrix, cmap=colours, norm=norm, interpolation="nearest")
                c = matrix.shape[0]
                undefined = int(np.isnan(matrix[0]).sum())
                said = (
                    f"{c - undefined}/{c} columns defined" if undefined else f"tr(KSM)/C = {np.trace(matrix) / c:.3f}"
                )
                ax.set_title(f"{when} · {said}", fontsize=9)
                if undefined:
                    partial[_GREY_NOTES[0] if "no labelled point" in why else _GREY_NOTES[1]] = None
                names = run.get("class_names") or []
                named_below = bottom[col] == row or classes[(row, col)] != classes[(bottom[col], col)]
                _class_ticks(ax, names, c, left=left[row] == col, bottom=named_below)
            for spine in ax.spines.values():
                spine.set_edgecolor(_colour(row))
                spine.set_linewidth(2)
            if col == 0:
                ax.set_ylabel(f"{_label(run, row)}\nclass kernel i", fontsize=8, color=_colour(row))
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=0.8)
        bar.set_label("KSM[i, j] (1: the mean class kernel's alignment)", fontsize=8)
    labels = "the net's own labels on its PGD examples (RAT's AL)" if kind == _OWN_LABELS[0] else "the true labels"
    _heading(
        fig,
        f"Kernel specialization: {shown}",
        subtitle,
        ref=f"RAT figs. 3, 4, 8, 18; LOO sec. 3; classes j: {labels}; one colour scale in the three "
        "specialization figures" + (f"; grey: an undefined column, {' or '.join(partial)}" if partial else ""),
    )
    _save(fig, path)
