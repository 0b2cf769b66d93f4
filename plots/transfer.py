"""Transfer of adversarial examples between nets and kernels (TK sec. 3; LOO sec. 5), from plain
dicts and arrays.

- ``transfer_heatmap``: accuracy of targets × attack sources, optionally transferability τ;
- ``transferability_curves``: τ of each source checkpoint against the epoch (LOO fig. 3).

The two-layer nets against their NTK (TK fig. 4, supp. fig. 1) are drawn by ``plots.two_layer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.plots._style import (
    _colour,
    _empty,
    _even_lines,
    _floats,
    _grid,
    _heading,
    _legend,
    _line,
    _plain,
    _pyplot,
    _save,
    _style_epoch_axes,
)
from ntkrobust.plots.types import TransferabilitySeries

__all__ = ["transfer_heatmap", "transferability_curves"]

_COLUMN_WRAP = 22  # characters per line of a column label of ``transfer_heatmap``


def _annotated_heatmap(
    fig: Any,
    ax: Any,
    values: np.ndarray,
    columns: Sequence[str],
    cmap_name: str,
    label: str,
    *,
    extend: str,
    own: np.ndarray | None = None,
) -> None:
    """``values`` (R, K) on [0, 1] colours (NaN light grey with "–"), the value in each cell in
    black or white by the cell's lightness; columns named below, rotated when long. Cells where
    ``own`` (R, K) holds are a target's own attack, shown in another column: light grey, "own"."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    cmap = colormaps[cmap_name].with_extremes(bad="0.9")
    norm = Normalize(0.0, 1.0)
    own = np.zeros(values.shape, dtype=bool) if own is None else own
    finite = np.isfinite(values) & ~own
    shown = np.ma.masked_array(np.where(finite, values, 0.0), mask=~finite)
    mesh = ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    rows, cols = values.shape
    size = 8.5 if cols <= 10 else 7.5
    for i in range(rows):
        for j in range(cols):
            if not finite[i, j]:
                text = "own" if own[i, j] else "–"
                ax.text(j, i, text, ha="center", va="center", fontsize=size - 1 if own[i, j] else size, color="0.45")
                continue
            r, g, b, _ = cmap(norm(float(np.clip(values[i, j], 0.0, 1.0))))
            ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "black"
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=size, color=ink)
    # "mnist-fgsm-noise epoch 5" as two lines of its words, not 22 characters and a lone "5"
    names = ["\n".join(_even_lines(_plain(c), _COLUMN_WRAP)) for c in columns]
    long = max((len(n) for n in names), default=0) > 6
    ax.set_xticks(
        np.arange(cols), names, rotation=40 if long else 0, ha="right" if long else "center", multialignment="right"
    )
    if long:
        for tick in ax.get_xticklabels():
            tick.set_rotation_mode("anchor")
    ax.tick_params(axis="x", labelsize=8.5, length=0)
    ax.tick_params(axis="y", length=0)
    ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = fig.colorbar(mesh, ax=ax, shrink=min(1.0, 0.5 + 0.1 * rows), aspect=15, pad=0.02, extend=extend)
    bar.set_label(label, fontsize=9)
    bar.ax.tick_params(labelsize=8)


def transfer_heatmap(
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    accuracy: np.ndarray,
    path: Path,
    *,
    transferability: tuple[Sequence[str], np.ndarray] | None = None,
    subtitle: str = "",
    title: str = "Transfer of adversarial examples",
    own_column: str | None = None,
) -> None:
    """Transfer of adversarial examples (TK sec. 3.2, LOO sec. 5): ``accuracy`` (R, K) of each
    target (row) on the examples of each attack source (column), NaN where not applicable; each
    cell annotated, dark = low accuracy = strong attack. ``transferability`` (column labels,
    τ (R, K′)) adds a panel of τ (LOO sec. 5: 1 = as strong as the target's own attack, 0 = no
    transfer), colours clipped to [0, 1], the annotations not.

    ``own_column`` names the column of each target's own white-box attack. A source column
    named after a target (its white-box examples, attacking the other targets) then repeats
    that column in the target's own row: the cell is shown once, in ``own_column``, and reads
    "own" in the source column; a source column left with no other row (a single target) is
    not drawn, in either panel. The inputs are not changed."""
    plt = _pyplot()
    accuracy = np.atleast_2d(np.asarray(accuracy, dtype=np.float64))
    if accuracy.ndim != 2 or accuracy.shape != (len(row_labels), len(column_labels)):
        raise ValueError(f"accuracy has shape {accuracy.shape}, not ({len(row_labels)}, {len(column_labels)})")
    given: list[tuple[Sequence[str], np.ndarray, str, str, str, str]] = [
        (column_labels, accuracy, "magma", "accuracy\n(low = strong attack)", "accuracy", "neither")
    ]
    if transferability is not None:
        tau_columns, tau = transferability
        tau = np.asarray(tau, dtype=np.float64)
        if tau.ndim != 2 or tau.shape != (len(row_labels), len(tau_columns)):
            raise ValueError(f"transferability has shape {tau.shape}, not ({len(row_labels)}, {len(tau_columns)})")
        finite = tau[np.isfinite(tau)]
        extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
            (bool((finite < 0).any()), bool((finite > 1).any()))
        ]
        given.append((tau_columns, tau, "Blues", "transferability τ", "transferability τ", extend))
    panels = [
        (*_without_self_pairs(row_labels, c, v, own_column), cmap, bar, heading, extend)
        for c, v, cmap, bar, heading, extend in given
    ]
    first_c, first_v, *_ = given[0]
    panels = [p for p in panels if p[0]] or [(*_without_self_pairs(row_labels, first_c, first_v, None), *given[0][2:])]
    cell_w, cell_h = 0.6, 0.42
    row_w = 0.3 + 0.075 * max((len(str(r)) for r in row_labels), default=1)
    col_h = 0.3 + 0.05 * max((min(len(str(c)), _COLUMN_WRAP) for p in panels for c in p[0]), default=1)
    widths = [max(len(p[0]), 2.5) for p in panels]  # a panel of one or two columns still holds its labels
    panel_h = cell_h * max(len(row_labels), 1) + col_h
    # many sources: the panels one above the other, so the figure keeps a printable width
    stacked = sum(widths) > 16
    if stacked:
        fig_w = max(5.5, row_w + cell_w * max(widths) + 1.7)
        fig_h = max(3.0, len(panels) * (panel_h + 0.6) + 1.3)
        fig, axes = plt.subplots(len(panels), 1, figsize=(fig_w, fig_h), squeeze=False, layout="constrained")
        panel_axes = list(axes[:, 0])
    else:
        fig_w = max(5.5, row_w + sum(cell_w * w + 1.3 for w in widths) + 0.4)
        fig_h = max(3.4, panel_h + 1.7)
        fig, axes = plt.subplots(
            1, len(panels), figsize=(fig_w, fig_h), squeeze=False, width_ratios=widths, layout="constrained"
        )
        panel_axes = list(axes[0])
    for k, (ax, (columns, values, own, cmap, bar_label, panel_title, extend)) in enumerate(
        zip(panel_axes, panels, strict=True)
    ):
        _annotated_heatmap(fig, ax, values, columns, cmap, bar_label, extend=extend, own=own)
        labelled = stacked or k == 0
        ax.set_yticks(np.arange(len(row_labels)), [_plain(r) for r in row_labels] if labelled else [], fontsize=9)
        ax.set_title(panel_title, fontsize=10)
        narrow = not stacked and len(columns) < 5
        ax.set_xlabel("attack source" + ("\n" if narrow else " ") + "(examples generated on)", fontsize=9)
        if labelled:
            ax.set_ylabel("target (evaluated model)", fontsize=9)
    ref = "TK sec. 3.2, LOO sec. 5; accuracy of each target (row) on the examples of each source (column)"
    if any(p[2].any() for p in panels):
        ref += f'; "own": the target\'s own examples, shown in "{_plain(own_column)}"'
    _heading(fig, _plain(title), subtitle, ref=ref)
    _save(fig, path)


def _without_self_pairs(
    rows: Sequence[str], columns: Sequence[str], values: np.ndarray, own_column: str | None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The columns, values and "own" cells of a panel of ``transfer_heatmap``: with an
    ``own_column``, the cells of a target against its own white-box examples in a source column
    named after it are marked, and source columns of nothing but such cells are left out."""
    rows, columns = [str(r) for r in rows], [str(c) for c in columns]
    own = np.array([[c != own_column and c == r for c in columns] for r in rows], dtype=bool).reshape(values.shape)
    if own_column is None:
        own[:] = False
    keep = np.asarray(~own.all(axis=0)) if len(rows) else np.ones(len(columns), dtype=bool)
    return [c for c, k in zip(columns, keep, strict=True) if k], values[:, keep], own[:, keep]


_SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def transferability_curves(
    series: Sequence[TransferabilitySeries],
    path: Path,
    *,
    subtitle: str = "",
) -> None:
    """Adversarial transferability τ of the examples of each source checkpoint (epoch t′) to one
    target (LOO fig. 3): ``series`` (label, source epochs, τ), e.g. standard, linearized and
    centered training. τ = 1: as strong as the target's own attack; τ = 0: no transfer."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, axes = _grid(plt, 1, 1, 4.6)
    fig.set_figwidth(fig.get_figwidth() + 2.2)
    ax = axes[0, 0]
    handles: list[tuple[Any, str]] = []
    values = [0.0, 1.0]
    for i, (label, epochs, tau) in enumerate(series):
        marker = _SERIES_MARKERS[i % len(_SERIES_MARKERS)]
        y = _floats(tau)
        values.extend(y[np.isfinite(y)].tolist())
        _line(ax, epochs, y, _colour(i), "-", marker, markersize=4.5, zorder=3)
        handles.append((Line2D([], [], color=_colour(i), marker=marker, ms=5, linewidth=1.7), _plain(label)))
    for level in (1.0, 0.0):  # explained in the legend: a label on the line would hide points near it
        ax.axhline(level, color="0.35", linestyle="--", linewidth=0.9, zorder=1)
    handles.append(
        (
            Line2D([], [], color="0.35", linestyle="--", linewidth=0.9),
            "τ = 1: as strong as the target's own attack\nτ = 0: no transfer",
        )
    )
    span = max(values) - min(values)
    ax.set_ylim(min(values) - 0.06 * span, max(values) + 0.1 * span)
    if any(np.isfinite(_floats(e)).any() for _, e, _ in series):
        _style_epoch_axes(ax, "transferability τ", "source checkpoints against the target")
    else:
        _empty(ax, "no transferability values")
        ax.set_ylabel("transferability τ")
    spawned = any(label.startswith(("linearized", "centered")) for label, _, _ in series)
    # a linearized or centered net's examples sit at the parent's epoch it was trained from (LOO sec. 5)
    ax.set_xlabel("source epoch t′" + ("\n(linearized / centered nets: their spawn epoch)" if spawned else ""))
    _legend(fig, extra=handles)
    ref = "LOO fig. 3; the examples of each source checkpoint, evaluated on the target"
    _heading(fig, "Adversarial transferability to the target", subtitle, ref=ref)
    _save(fig, path)
