"""Figures of two-stage training: what a network trained in a second stage keeps of the first.

- ``spawn_accuracy_curves``: the final test accuracy, clean and under PGD, of linearized,
  centered and centered standard networks against the spawn epoch t' of the parent checkpoint
  they were trained around, one panel per parent, the parent's own accuracy at epoch t' in grey
  (Loo et al. 2022, "LOO", fig. 2 and table 2);
- ``switch_cost_bars``: the training seconds of adversarial runs split into clean epochs (before
  the switch epoch) and adversarial ones, beside their final clean and PGD test accuracy
  ("Rethinking adversarial training with NTK", "RAT", sec. 5, fig. 6 and table 1).

Both read the records of ``bridge.run_groups`` (``plots.types.SpawnAccuracy`` and ``SwitchCost``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.plots._style import (
    _colour,
    _epoch_ticks,
    _floats,
    _grid,
    _heading,
    _legend,
    _line,
    _notes,
    _plain,
    _pyplot,
    _save,
)
from ntkrobust.plots.types import SpawnAccuracy, SpawnLine, SwitchCost, SwitchCostRun

__all__ = ["spawn_accuracy_curves", "switch_cost_bars"]

_REFERENCE = "0.55"  # the parent's own accuracy, a thin grey line
_CLEAN_EPOCHS, _ADVERSARIAL_EPOCHS = "#56B4E9", "#D55E00"  # sky blue, vermillion
_ACCURACY = "#0072B2"  # clean bars filled, PGD bars hatched


def _line_name(line: SpawnLine) -> str:
    """ "centered", or "centered, pgd in stage 2" for a network trained adversarially around θt."""
    mode = line.get("mode") or "standard"
    return str(line.get("kind") or "?") + ("" if mode == "standard" else f", {mode} in stage 2")


def _sources(records: Sequence[Any]) -> str:
    return " / ".join(dict.fromkeys(str(r.get("pgd") or "PGD") for r in records)) or "PGD"


def _error_bars(ax: Any, x: Any, y: Any, spread: Any, colour: Any, *, horizontal: bool = False) -> bool:
    """± the sample std over seeds, where the records have one; whether any was drawn."""
    x, y, spread = _floats(x), _floats(y), _floats(spread)
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(spread)
    if not keep.any():
        return False
    where = {"xerr": spread[keep]} if horizontal else {"yerr": spread[keep]}
    points = (y[keep], x[keep]) if horizontal else (x[keep], y[keep])
    ax.errorbar(*points, **where, fmt="none", ecolor=colour, elinewidth=1.0, capsize=3, zorder=3)
    return True


def _seed_handle(seeded: bool) -> list[tuple[Any, str]]:
    from matplotlib.lines import Line2D

    if not seeded:
        return []
    return [(Line2D([], [], color="0.3", marker="|", ms=9, linewidth=0), "± sample std\nover the seeds")]


_DODGE = 0.035  # of a panel's span of epochs, between the points of two kinds at one epoch


def _dodged(spawns: Sequence[Any], index: int, count: int, span: float) -> np.ndarray:
    """The spawn epochs of the ``index``-th of ``count`` kinds, moved sideways by a few pixels'
    worth so that kinds that end at the same accuracy (centered and linearized networks often
    do) stay visible side by side instead of one dot covering the other; the middle kind stays
    on its epoch."""
    return _floats(spawns) + (index - (count - 1) / 2) * _DODGE * max(span, 1.0)


def _spawn_panel(ax: Any, lines: Sequence[SpawnLine], names: list[str], reference: Any) -> bool:
    """One parent's panel: its spawned networks by kind, side by side at each spawn epoch, its own
    accuracy in grey; whether a point has seeds."""
    seeded = False
    # the panel's x-range, the parent's epochs included: the sideways step is a share of it
    spawned = [p.get("spawn_epoch") for line in lines for p in line.get("points") or []]
    every = _floats(spawned + list((reference or {}).get("epochs") or []))
    every = every[np.isfinite(every)]
    span = float(every.max() - every.min()) if every.size else 1.0
    here = [name for name in names if name in {_line_name(line) for line in lines}]  # this panel's kinds
    if reference is not None:
        for key, style in (("test_clean", "-"), ("test_pgd", "--")):
            x, y = _floats(reference.get("epochs") or []), _floats(reference.get(key) or [])
            ax.plot(x, y, color=_REFERENCE, linestyle=style, linewidth=1.0, marker=".", ms=3, zorder=1)
    for line in lines:
        colour = _colour(names.index(_line_name(line)))
        points = line.get("points") or []
        spawns = _dodged([p.get("spawn_epoch") for p in points], here.index(_line_name(line)), len(here), span)
        for key, style, marker in (("test_clean", "-", "o"), ("test_pgd", "--", "s")):
            scores = [p.get(key) for p in points]
            _line(ax, spawns, scores, colour, style, marker, markersize=5, zorder=2)
            seeded = _error_bars(ax, spawns, scores, [p.get(f"{key}_std") for p in points], colour) or seeded
    ax.set_ylim(-0.02, 1.02)
    _epoch_ticks(ax.xaxis)
    ax.set_xlabel("spawn epoch t'")
    ax.set_ylabel("final test accuracy")
    ax.grid(alpha=0.3)
    return seeded


def spawn_accuracy_curves(record: SpawnAccuracy, path: Path, *, subtitle: str = "") -> None:
    """LOO fig. 2, table 2: the final clean (solid) and PGD (dashed) test accuracy of every kind
    of network spawned from a parent checkpoint, against the spawn epoch t', one panel per
    parent, a colour per kind; the parent's own accuracy at epoch t' (clean and per-epoch PGD)
    as a thin grey line when the parent is among the runs."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    lines = list(record.get("lines") or [])
    parents = list(dict.fromkeys(line.get("parent") for line in lines))
    names = list(dict.fromkeys(_line_name(line) for line in lines))
    references = {reference.get("path"): reference for reference in record.get("parents") or []}
    fig, axes = _grid(plt, 1, max(len(parents), 1), 4.2)
    fig.set_figwidth(fig.get_figwidth() + 2.6)
    fig.set_figheight(fig.get_figheight() + 0.8)
    seeded, notes = False, []
    for ax, parent in zip(axes[0], parents, strict=False):
        mine = [line for line in lines if line.get("parent") == parent]
        label = str(mine[0].get("parent_label") or Path(str(parent)).name)
        if parent not in references:
            notes.append((f"the accuracy of the parent {label} at epoch t'", "the parent run is not among the RUNs"))
        seeded = _spawn_panel(ax, mine, names, references.get(parent)) or seeded
        ax.set_title(textwrap.fill(_plain(f"parent: {label}"), 40), fontsize=10)
    points = [point for line in lines for point in line.get("points") or []]
    styles = [
        (Line2D([], [], color="0.2", ls="-", marker="o", ms=4), "clean test accuracy"),
        (
            Line2D([], [], color="0.2", ls="--", marker="s", markerfacecolor="white", ms=4),
            f"PGD test accuracy\n({_sources(points)})",
        ),
    ]
    if references:
        pgd = _sources(list(references.values()))
        handle = Line2D([], [], color=_REFERENCE, linewidth=1.0, marker=".", ms=3)
        styles.append((handle, f"parent at epoch t'\n(clean; {pgd} dashed)"))
    _legend(fig, list(enumerate(names)), extra=styles + _seed_handle(seeded))
    _notes(fig, notes)
    _heading(
        fig,
        "Final accuracy against the spawn epoch t'",
        subtitle,
        ref="LOO fig. 2, table 2; every point a network trained around its parent's checkpoint of epoch t' "
        "(the kinds drawn side by side at each t')",
    )
    _save(fig, path)


def _run_tick(run: SwitchCostRun) -> str:
    """The run's label over when it switched: "clean epochs 1–k, then pgd" or "full pgd"."""
    switch, mode = run.get("switch_epoch"), run.get("mode") or "adversarial"
    when = {
        None: f"full {mode} (no clean epochs)",
        0: f"full {mode} (switch epoch 0)",
        1: f"clean epoch 1, then {mode}",
    }
    text = when.get(switch, f"clean epochs 1–{switch}, then {mode}")
    return textwrap.fill(_plain(run.get("label") or "?"), 30) + "\n" + _plain(text)


def _seconds_panel(ax: Any, runs: Sequence[SwitchCostRun]) -> list[tuple[float, Any]]:
    """Stacked bars of the seconds in clean and in adversarial epochs, the total at their end
    (the labels, as (start, text))."""
    y = np.arange(len(runs))
    clean = _floats([run.get("seconds_clean") for run in runs])
    adversarial = _floats([run.get("seconds_adversarial") for run in runs])
    ax.barh(y, clean, height=0.6, color=_CLEAN_EPOCHS)
    ax.barh(y, adversarial, left=clean, height=0.6, color=_ADVERSARIAL_EPOCHS)
    total = np.nan_to_num(clean) + np.nan_to_num(adversarial)
    longest = float(total.max()) if total.size and total.max() > 0 else 1.0
    labels = []
    for i, run in enumerate(runs):
        text = f"{total[i]:.3g} s"
        if run.get("estimated_cost_of_full_at") is not None:  # from its own epochs: load-proof
            text += f"\n{run['estimated_cost_of_full_at']:.0%} of full AT (own epoch times)"
        if run.get("cost_of_full_at") is not None:
            text += f"\n{run['cost_of_full_at']:.0%} of the full AT run's seconds"
        start = total[i] + 0.02 * longest
        labels.append((start, ax.text(start, i, text, va="center", ha="left", fontsize=8)))
    ax.set_xlim(0, longest * 1.45)  # widened to the labels once the figure is laid out (_room_for)
    ax.set_yticks(y, [_run_tick(run) for run in runs], fontsize=8)
    ax.set_ylim(len(runs) - 0.5, -0.5)  # the first run on top
    ax.set_xlabel("seconds of training (kernel tracking and evaluation excluded)")
    ax.set_title("training cost", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return labels


def _room_for(ax: Any, labels: Sequence[tuple[float, Any]]) -> None:
    """Widen the x limit so that every (start, text) label ends inside the axes: a text's width is
    fixed in pixels, so it takes the share w / W of the axes' width W whatever the limit, and ends
    inside when start <= limit (1 - w / W). Called on the finished figure (its layout sizes W)."""
    limit = ax.get_xlim()[1]
    ax.figure.draw_without_rendering()
    renderer = ax.figure.canvas.get_renderer()
    width = ax.get_window_extent(renderer).width
    for start, text in labels:
        share = 1.1 * text.get_window_extent(renderer).width / width  # and some space after it
        if share < 0.9:  # a text wider than the axes cannot fit at any limit
            limit = max(limit, start / (1 - share))
    ax.set_xlim(0, limit)


def _accuracy_panel(ax: Any, runs: Sequence[SwitchCostRun]) -> bool:
    """Bars of the final clean (filled) and PGD (hatched) test accuracy, the value at their end;
    whether a run has seeds."""
    y = np.arange(len(runs))
    seeded = False
    for key, offset, fill in (("test_clean", -0.2, _ACCURACY), ("test_pgd", 0.2, "white")):
        values = _floats([run.get(key) for run in runs])
        hatch = None if fill == _ACCURACY else "////"
        ax.barh(y + offset, values, height=0.38, color=fill, edgecolor=_ACCURACY, hatch=hatch, linewidth=0.8)
        spread = _floats([run.get(f"{key}_std") for run in runs])
        seeded = _error_bars(ax, y + offset, values, spread, "0.2", horizontal=True) or seeded
        for i, (value, std) in enumerate(zip(values, np.nan_to_num(spread), strict=True)):
            if np.isfinite(value):  # the value beyond the bar and its error bar
                ax.text(value + std + 0.015, i + offset, f"{value:.2f}", va="center", ha="left", fontsize=7.5)
    ax.set_xlim(0, 1.15)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("final test accuracy")
    ax.set_title("final accuracy", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return seeded


def switch_cost_bars(record: SwitchCost, path: Path, *, subtitle: str = "") -> None:
    """RAT sec. 5, fig. 6, table 1: per adversarial run, the seconds of training spent in clean
    epochs (before its switch epoch) and in adversarial ones, stacked (left), and its final
    clean and PGD test accuracy (right); a switching run's total also as a share of a full AT
    run's of the same mode and epochs."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    runs = list(record.get("runs") or [])
    fig, axes = plt.subplots(
        1, 2, figsize=(11.5, 2.6 + 0.75 * len(runs)), sharey=True, width_ratios=(1.3, 1), layout="constrained"
    )
    labels = _seconds_panel(axes[0], runs)
    seeded = _accuracy_panel(axes[1], runs)
    modes = " / ".join(dict.fromkeys(str(run.get("mode") or "?") for run in runs))
    switched = any(np.nan_to_num(_floats([run.get("seconds_clean")]))[0] > 0 for run in runs)
    handles = [(Patch(color=_CLEAN_EPOCHS), "clean epochs (standard)")] if switched else []  # only where drawn
    handles += [
        (Patch(color=_ADVERSARIAL_EPOCHS), f"adversarial epochs ({modes})"),
        (Patch(facecolor=_ACCURACY, edgecolor=_ACCURACY), "clean test accuracy"),
        (Patch(facecolor="white", edgecolor=_ACCURACY, hatch="////"), f"PGD test accuracy\n({_sources(runs)})"),
    ]
    _legend(fig, extra=handles + _seed_handle(seeded))
    _heading(
        fig,
        "Training cost of adversarial training and its final accuracy",
        subtitle,
        ref="RAT sec. 5, fig. 6, table 1; clean epochs before the switch epoch, adversarial after",
    )
    _room_for(axes[0], labels)
    _save(fig, path)
