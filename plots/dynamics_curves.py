"""Training-dynamics figures drawn as curves against the epoch, one line per run (TK sec. 5, LOO fig. 1, sec. 4).

- ``kernel_norm_and_concentration``: norm and spectral concentration (TK fig. 6 right, supp. fig. 7);
- ``kernel_velocity_and_distance``: velocity and distance to the final kernel (LOO fig. 1a-b);
- ``rank_and_specialization``: effective rank and kernel specialization (LOO fig. 1c-d);
- ``accuracy_curves``: train / test accuracy, clean and under PGD (TK supp. fig. 6);
- ``relative_magnitude_curve``: the first-order term of linearized training (LOO sec. 4).

A run of several seeds (``RunSummary["seed_runs"]``) is drawn as its mean with a band of ± one
sample standard deviation (``fill_between``), as LOO (n = 3) and RAT report their runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.plots._runs import (
    _KERNELS,
    _OWN_LABELS,
    Series,
    _all_runs,
    _dynamics_series,
    _has_kind,
    _label,
    _mark_decays,
    _mark_switches,
    _metric_series,
    _relative_magnitudes,
    _seeded,
    _tracked_kinds,
)
from ntkrobust.plots._style import (
    _SWITCH_STYLE,
    KernelStyle,
    _band,
    _band_handle,
    _colour,
    _empty,
    _floats,
    _grid,
    _heading,
    _legend,
    _line,
    _notes,
    _plain,
    _pyplot,
    _save,
    _shade,
    _style_epoch_axes,
)
from ntkrobust.plots.types import RunSummary

__all__ = [
    "accuracy_curves",
    "kernel_norm_and_concentration",
    "kernel_velocity_and_distance",
    "rank_and_specialization",
    "relative_magnitude_curve",
]

_Panel = tuple[str, str, str, bool, Sequence[KernelStyle]]


def _series_panels(
    runs: Sequence[RunSummary],
    path: Path,
    panels: Sequence[_Panel],
    *,
    heading: str,
    subtitle: str,
    ref: str,
    series: Series = _metric_series,
) -> None:
    """Panels of per-run curves against the epoch: (key, y label, title, log y, kernels) each;
    ``series(run, kind, key)`` gives (epochs, values, why missing); the run's colour throughout,
    C-NTK solid, AE-NTK dashed, a dotted vertical line at a switch epoch; the runs of several
    seeds as their mean with a band of ± one standard deviation."""
    plt = _pyplot()
    fig, axes = _grid(plt, 1, len(panels), 4.0)
    fig.set_figwidth(fig.get_figwidth() + 2.4)
    fig.set_figheight(fig.get_figheight() + 0.7)
    missing: dict[tuple[str, int, str], list[str]] = {}  # (panel, run, why) -> kernels
    used_kinds: set[str] = set()
    switch = banded = decay = False
    for ax, (key, ylabel, title, log, kinds) in zip(axes[0], panels, strict=True):
        drawn = False
        for i, run in enumerate(runs):
            for kind, kind_name, style, marker in kinds:
                short = kind_name.split(" (")[0]
                x, y, spread, lowest, reason = _seeded(run, series, kind, key)
                if reason is not None:
                    missing.setdefault((title, i, reason), []).append(short)
                if x.size == 0:
                    continue
                if spread is not None:
                    _band(ax, x, y, spread, lowest, _colour(i), log=log)
                    banded = True
                dropped = _line(ax, x, y, _colour(i), style, marker, log=log)
                if dropped:  # said as points of the run: the run itself is drawn
                    off = _RESIDUAL_OFF_AXIS if key.startswith(_CONCENTRATION) else "values ≤ 0, off the log axis"
                    missing.setdefault((title, i, off), []).append(f"{dropped} point(s) of {short}")
                drawn = drawn or dropped < x.size
                used_kinds.add(kind)
        if drawn:
            switch = _mark_switches(ax, runs) or switch
            decay = _mark_decays(ax, runs) or decay
            _style_epoch_axes(ax, ylabel, title, log=log)
        else:
            ax.set_title(title, fontsize=10)
            _empty(ax, f"{title}: nothing to draw" + (" (see the note below)" if missing else ""))
    kinds_used = [k for k in (*_KERNELS, _OWN_LABELS) if k[0] in used_kinds]
    _legend(fig, _all_runs(runs), kinds_used, switch=switch, decay=decay, extra=_band_legend(banded))
    notes = [
        (f"{title} of {_label(runs[i], i)} ({' and '.join(which)})", why) for (title, i, why), which in missing.items()
    ]
    _notes(fig, notes)
    _heading(fig, heading, subtitle, ref=ref)
    _save(fig, path)


def _band_legend(banded: bool) -> list[tuple[Any, str]]:
    return [(_band_handle(), "mean ± std\nover the seeds")] if banded else []


_CONCENTRATION = "concentration_top"
_RESIDUAL_FLOOR = 1e-12  # 1 − concentration below this is rounding: the concentration is 1
_RESIDUAL_OFF_AXIS = "concentrations of 1 (nothing beyond the top p), off the log axis"


def _residual_series(run: RunSummary, kind: str, key: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``_metric_series``, with 1 − the concentration of a ``concentration_top*`` key: the
    share of Σ λᵢ² beyond the top p, which a log axis reads where the concentration is 0.99999;
    0 (off the log axis) where that share is rounding."""
    x, y, reason = _metric_series(run, kind, key)
    if key.startswith(_CONCENTRATION):
        y = 1.0 - y
        y[y < _RESIDUAL_FLOOR] = 0.0
    return x, y, reason


def kernel_norm_and_concentration(runs: Sequence[RunSummary], path: Path, *, subtitle: str = "") -> None:
    """Frobenius norm of the trace eNTK (log scale) and its concentration Σ_{i≤p} λᵢ² / Σ λᵢ² on the
    top-p eigenvalues for every recorded cut-off p, against the epoch (TK fig. 6 right, supp. fig. 7).
    The concentration is drawn as 1 − it on a log axis, the share of the spectrum beyond the top
    p: concentrations near 1 differ in their fifth decimal, which a linear axis shows only with
    an offset (1e-5 + 9.999e-1)."""
    cutoffs = sorted(
        {
            int(key.removeprefix("concentration_top"))
            for run in runs
            for record in run.get("kernels") or []
            for kind, *_ in _KERNELS
            for key in record.get(kind) or {}
            if key.startswith("concentration_top") and key.removeprefix("concentration_top").isdigit()
        }
    ) or [10, 20]
    kinds = _tracked_kinds(runs)
    panels: list[_Panel] = [("frobenius_norm", r"$\|\bar\Theta\|_F$  (log scale)", "Frobenius norm", True, kinds)]
    panels += [
        (
            f"{_CONCENTRATION}{p}",
            rf"$1 - \sum_{{i \leq {p}}} \lambda_i^2 \;/\; \sum_i \lambda_i^2$  (log scale)",
            f"1 − concentration on the top {p}",
            True,
            kinds,
        )
        for p in cutoffs
    ]
    _series_panels(
        runs,
        path,
        panels,
        heading="Kernel norm and spectral concentration",
        subtitle=subtitle,
        ref="TK fig. 6 right, supp. fig. 7; 1 − concentration: the share of Σλᵢ² beyond the top p eigenvalues",
        series=_residual_series,
    )


def kernel_velocity_and_distance(runs: Sequence[RunSummary], path: Path, *, subtitle: str = "") -> None:
    """Kernel velocity dS/dt (finite differences between tracked kernels, per epoch, drawn at the
    interval midpoints; log scale) and the kernel distance to the final kernel (LOO fig. 1a-b)."""
    kinds = _tracked_kinds(runs)
    _series_panels(
        runs,
        path,
        [
            ("velocity", r"$dS/dt$  (kernel distance per epoch, log scale)", "kernel velocity", True, kinds),
            (
                "distance_to_final",
                r"$S(\Theta_t, \Theta_{\mathrm{final}})$",
                "distance to the final kernel",
                False,
                kinds,
            ),
        ],
        heading="Kernel velocity and distance to the final kernel",
        subtitle=subtitle,
        ref="LOO fig. 1a-b",
        series=_dynamics_series,
    )


def rank_and_specialization(runs: Sequence[RunSummary], path: Path, *, subtitle: str = "") -> None:
    """Effective rank exp(−Σ pᵢ log pᵢ) of the trace eNTK and mean kernel specialization tr(KSM)/C
    (LOO fig. 1c-d); the AE-NTK's specialization also under the net's own labels on the AEs (dotted)."""
    kinds = _tracked_kinds(runs)
    own = [_OWN_LABELS] if any(_has_kind(run, _OWN_LABELS[0]) for run in runs) else []
    _series_panels(
        runs,
        path,
        [
            (
                "effective_rank",
                r"$\exp(-\sum_i p_i \log p_i),\;\; p_i = \lambda_i / \sum_j \lambda_j$",
                "effective rank",
                False,
                kinds,
            ),
            (
                "mean_specialization",
                r"$\mathrm{tr}(\mathrm{KSM}) \,/\, C$",
                "mean kernel specialization",
                False,
                [*kinds, *own],
            ),
        ],
        heading="Effective rank and kernel specialization",
        subtitle=subtitle,
        ref="LOO fig. 1c-d",
    )


_ACCURACIES = (
    ("test_clean", "test, clean", 0.0, "-", "o"),
    ("test_pgd", "test, PGD", 0.0, "--", "o"),
    ("train_clean", "train, clean", 0.5, "-", "^"),
    ("train_pgd", "train, PGD", 0.5, "--", "^"),
)


def _accuracy_series(run: RunSummary, source: str, key: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(epochs, accuracies) of one split and input (``key``) with ``source`` BatchNorm statistics."""
    records = run.get("epochs") or []
    x = _floats([record.get("epoch") for record in records])
    y = _floats([((record.get("accuracy") or {}).get(source) or {}).get(key) for record in records])
    return x, y, None


def accuracy_curves(runs: Sequence[RunSummary], path: Path, *, subtitle: str = "") -> None:
    """Train / test accuracy on clean and PGD inputs against the epoch, one panel per run (TK supp.
    fig. 6): test in the run's colour, train lighter, clean solid, PGD dashed; accuracies with
    BatchNorm batch statistics, when recorded, as thin lines with × markers (a run drawn once per
    statistics, ``statistics`` in its summary: that statistics' accuracies alone, as the main
    lines); a dotted vertical line at the epoch where training switches from standard to
    adversarial."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    # at most 3 panels a row: five runs in one row made a figure too wide to read at page width
    cols = min(max(len(runs), 1), 3)
    fig, axes = _grid(plt, -(-max(len(runs), 1) // cols), cols, 3.8)
    fig.set_figwidth(fig.get_figwidth() + 1.9)
    fig.set_figheight(fig.get_figheight() + 0.6)
    for ax in axes.ravel()[len(runs) :]:
        ax.set_visible(False)
    batch_seen = banded = decay = False
    notes = []
    for i, (ax, run) in enumerate(zip(axes.ravel()[: len(runs)], runs, strict=True)):
        drawn = False
        main = run.get("statistics") or "running"
        for source in (main,) if run.get("statistics") else ("running", "batch"):
            for key, _, light, style, marker in _ACCURACIES:
                x, y, spread, lowest, _ = _seeded(run, _accuracy_series, source, key)
                if not np.isfinite(y).any():
                    continue
                colour = _shade(_colour(i), light) if light else _colour(i)
                if spread is not None:
                    _band(ax, x, y, spread, lowest, colour)
                    banded = True
                if source == main:
                    _line(ax, x, y, colour, style, marker)
                else:
                    _line(ax, x, y, colour, style, "x", linewidth=0.9, markersize=4.5, alpha=0.9)
                    batch_seen = True
                drawn = True
        title = _label(run, i)
        switch = run.get("switch_epoch")
        if switch:  # a switch at epoch 0 trained no clean epoch: nothing to mark
            title += f"\nstandard → {_plain(run.get('mode') or 'adversarial')} after epoch {switch}"
            ax.axvline(float(switch), color="0.3", linestyle=_SWITCH_STYLE, linewidth=1.2, zorder=0)
        if not drawn:
            ax.set_title(title, fontsize=10, color=_colour(i))
            _empty(ax, "no accuracies recorded")
            notes.append((f"accuracies of {_label(run, i)}", "not recorded"))
            continue
        ax.set_ylim(-0.02, 1.02)
        decay = _mark_decays(ax, [run]) or decay
        _style_epoch_axes(ax, "accuracy", title)
        ax.title.set_color(_colour(i))
    handles = []
    for _, name, light, style, marker in _ACCURACIES:
        colour = _shade("#333333", 0.55) if light else "#333333"
        face = colour if style == "-" else "white"
        handles.append((Line2D([], [], color=colour, ls=style, marker=marker, markerfacecolor=face, ms=4), name))
    if batch_seen:
        handles.append((Line2D([], [], color="0.3", marker="x", linewidth=0.9, ms=5), "BatchNorm batch\nstatistics"))
    if any(run.get("switch_epoch") for run in runs):
        handles.append((Line2D([], [], color="0.3", ls=_SWITCH_STYLE), "switch epoch"))
    _legend(fig, decay=decay, extra=handles + _band_legend(banded))
    _notes(fig, notes)
    _heading(fig, "Accuracy during training", subtitle, ref="TK supp. fig. 6; test in the run's colour, train lighter")
    _save(fig, path)


def relative_magnitude_curve(runs: Sequence[RunSummary], path: Path, *, subtitle: str = "") -> None:
    """Relative magnitude of the first-order to the zeroth-order term of linearized training,
    against the epoch, log scale (LOO sec. 4, fig. 2c); runs without it are left out."""
    plt = _pyplot()
    fig, axes = _grid(plt, 1, 1, 4.6)
    fig.set_figwidth(fig.get_figwidth() + 2.4)
    ax = axes[0, 0]
    notes: list[tuple[str, str]] = []
    shown = []
    banded = False
    for i, run in enumerate(runs):
        x, y, spread, lowest, _ = _seeded(run, lambda run, *_: (*_relative_magnitudes(run), None), "", "")
        if x.size:
            if spread is not None:
                _band(ax, x, y, spread, lowest, _colour(i), log=True)
                banded = True
            dropped = _line(ax, x, y, _colour(i), "-", "o", log=True)
            if dropped:
                notes.append((f"{dropped} point(s) of {_label(run, i)}", "values ≤ 0, off the log axis"))
            if dropped < x.size:
                shown.append(i)
    if shown:
        _mark_switches(ax, [runs[i] for i in shown], shown)
        ylabel = r"$\Delta f^\top \Delta f \,/\, f_0^\top f_0$  (mean over test points)"
        _style_epoch_axes(ax, ylabel, "linearized training", log=True)
    else:
        _empty(ax, "no run records a relative magnitude")
    _legend(fig, [(i, _label(runs[i], i)) for i in shown], extra=_band_legend(banded))
    _notes(fig, notes)
    _heading(fig, "First-order term of linearized training", subtitle, ref="LOO sec. 4")
    _save(fig, path)
