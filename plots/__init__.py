"""Figures of ntkrobust: the one plotting module (DESIGN.md keeps plots out of the packages).

Each function takes plain arrays or result objects and writes one PNG to ``path``; the CLI
stages the files and moves them into place. matplotlib is imported lazily with the Agg
backend, so nothing here needs a display.

Figures (Tsilivis & Kempe):
- ``robustness_usefulness``: features in robustness-usefulness space, fig. 2 right and supp.
  figs. 2-3 (axes [0, 1], larger and darker markers for larger eigenvalues, chance marked);
- ``feature_gallery``: input gradients of chosen features of one image, one row per
  architecture: the top features (fig. 2 left) or the useful, non-robust ones (fig. 5);
- ``robust_only_curves``: accuracy of robust-features-only kernels against r, supp. figs. 4-5;
- ``kernel_image``: a kernel matrix with its examples sorted by class, fig. 6 left.
Training dynamics of the empirical NTK (``ntkrobust train`` runs; TK sec. 5, LOO sec. 3), from
plain per-run dicts (``bridge.runs.dynamics_summary``), all written by ``dynamics_figures``:
- ``kernel_distance_heatmaps`` (TK fig. 3 left), ``polar_trajectories`` (fig. 3 right, supp.
  fig. 8), ``kernel_norm_and_concentration`` (fig. 6 right, supp. fig. 7),
  ``kernel_images_grid`` (fig. 6 left), ``accuracy_curves`` (supp. fig. 6);
- ``kernel_velocity_and_distance`` and ``rank_and_specialization`` (LOO fig. 1),
  ``relative_magnitude_curve`` (LOO sec. 4); ``eigenvector_pictures`` (LOO fig. 4) on its own.
Transfer (TK sec. 3.2, supp. C; LOO sec. 5), from plain dicts and arrays:
- ``two_layer_transfer``: gradient cosine between two-layer nets and their NTK, and the nets'
  accuracy under their own and the NTK's attacks, against the epoch (TK fig. 4, supp. fig. 1a);
- ``gradient_pictures``: loss gradients of one image per model and epoch (TK supp. fig. 1b);
- ``transfer_heatmap``: accuracy of targets × attack sources, optionally transferability τ;
- ``transferability_curves``: τ of each source checkpoint against the epoch (LOO fig. 3).
Image conventions: inputs are (C, H, W) in [0, 1]; a gradient is drawn with a diverging map
centred at 0 for grey images and rescaled to [0, 1] per picture for colour images.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show_image(ax: Any, image: np.ndarray) -> None:
    """An input image (C, H, W) in [0, 1]."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(np.clip(np.transpose(image, (1, 2, 0)), 0.0, 1.0))
    ax.set_xticks([])
    ax.set_yticks([])


def _show_gradient(ax: Any, gradient: np.ndarray) -> None:
    """A gradient (C, H, W): red = raises the score, blue = lowers it (grey); rescaled RGB (colour)."""
    if gradient.shape[0] == 1:
        scale = float(np.abs(gradient).max()) or 1.0
        ax.imshow(gradient[0], cmap="RdBu_r", vmin=-scale, vmax=scale)
    else:
        low, high = float(gradient.min()), float(gradient.max())
        ax.imshow(np.transpose((gradient - low) / ((high - low) or 1.0), (1, 2, 0)))
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(plt: Any, rows: int, cols: int, size: float) -> tuple[Any, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False, layout="constrained")
    return fig, axes


def _subtitle(fig: Any, text: str) -> None:
    """A figure title wrapped to the figure's width (about 13 characters per inch at size 10)."""
    if text:
        fig.suptitle(
            textwrap.fill(text, width=max(40, int(13 * fig.get_figwidth())), break_on_hyphens=False), fontsize=10
        )


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=150)
    _pyplot().close(fig)


def robustness_usefulness(
    panels: Sequence[tuple[str, Any]], path: Path, *, subtitle: str = "", useful_non_robust_below: float | None = None
) -> None:
    """One panel per architecture: ``panels`` holds (name, FeatureScores) pairs."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    fig, axes = _grid(plt, 1, len(panels), 4.2)
    for ax, (name, scores) in zip(axes[0], panels, strict=True):
        lam = np.maximum(scores.eigenvalue, np.finfo(float).tiny)
        norm = LogNorm(vmin=lam.min(), vmax=lam.max()) if lam.max() > lam.min() else None
        shade = norm(lam) if norm is not None else np.ones_like(lam)
        order = np.argsort(lam)  # small eigenvalues first, so the large dark markers stay on top
        points = ax.scatter(
            scores.robustness[order],
            scores.usefulness[order],
            s=12 + 110 * np.asarray(shade)[order],
            c=lam[order],
            cmap="Blues",
            norm=norm,
            edgecolors="0.25",
            linewidths=0.4,
            zorder=3,
        )
        ax.axhline(scores.chance, color="0.4", linestyle="--", linewidth=1, zorder=1)
        ax.text(0.99, scores.chance + 0.01, "chance", ha="right", va="bottom", fontsize=8, color="0.3")
        if useful_non_robust_below is not None:  # the useful, non-robust corner (supp. A, item 3)
            ax.fill_between([0, useful_non_robust_below], scores.chance, 1.0, color="tab:red", alpha=0.08, zorder=0)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("robustness (accuracy under attack on the feature)")
        ax.set_ylabel("usefulness (held-out accuracy)")
        rho = scores.spearman_index_robustness()
        ax.set_title(
            f"{name}: first {scores.index.size} features\nSpearman(index, robustness) = {rho:.2f}", fontsize=10
        )
        ax.grid(alpha=0.3)
        fig.colorbar(points, ax=ax, fraction=0.046, pad=0.04, label="eigenvalue")
    _subtitle(fig, subtitle)
    _save(fig, path)


def feature_gallery(
    image: np.ndarray,
    rows: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    path: Path,
    *,
    subtitle: str = "",
) -> None:
    """Rows (name, gradients (k, C, H, W), captions (k,)): the image, then each feature's gradient.

    TK fig. 2 left (the top features, one row per architecture) and fig. 5 (chosen features).
    """
    plt = _pyplot()
    cols = 1 + max(max(g.shape[0], 1) for _, g, _ in rows)
    fig, axes = _grid(plt, len(rows), cols, 1.9)
    for r, (name, gradients, captions) in enumerate(rows):
        _show_image(axes[r, 0], image)
        axes[r, 0].set_ylabel(name, fontsize=10)
        for c in range(1, cols):
            ax = axes[r, c]
            if c - 1 < gradients.shape[0]:
                _show_gradient(ax, gradients[c - 1])
                ax.set_title(captions[c - 1], fontsize=7.5)
            else:
                ax.axis("off")
        if gradients.shape[0] == 0:
            axes[r, 1].text(0.0, 0.5, "none", fontsize=9, va="center")
    axes[0, 0].set_title("input", fontsize=9)
    _subtitle(fig, subtitle)
    _save(fig, path)


def robust_only_curves(panels: Sequence[tuple[str, Sequence[Any]]], path: Path, *, subtitle: str = "") -> None:
    """One panel per architecture: accuracy of f'_r against r (``RobustOnlyResult`` lists)."""
    plt = _pyplot()
    fig, axes = _grid(plt, 1, len(panels), 4.4)
    styles = [
        ("clean", "clean", "tab:blue", "-", "o"),
        ("fgsm_transfer", "FGSM from full kernel", "tab:red", "--", "s"),
        ("pgd_transfer", "PGD from full kernel", "tab:purple", ":", "D"),
        ("fgsm_own", "FGSM on f'_r (own)", "tab:orange", "-", "^"),
        ("pgd_own", "PGD on f'_r (own)", "tab:green", "-", "v"),
    ]
    for ax, (name, results) in zip(axes[0], panels, strict=True):
        r = np.array([res.r for res in results])
        for key, label, color, line, marker in styles:
            ax.plot(r, [getattr(res, key) for res in results], line, color=color, marker=marker, ms=4, label=label)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("r, most robust features kept")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: robust-features-only kernels", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0, -1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    _subtitle(fig, subtitle)
    _save(fig, path)


__all__ = [
    "DYNAMICS_FIGURES",
    "accuracy_curves",
    "applicable_figures",
    "dynamics_figures",
    "dynamics_subtitle",
    "eigenvector_pictures",
    "feature_gallery",
    "gradient_pictures",
    "kernel_distance_heatmaps",
    "kernel_image",
    "kernel_images_grid",
    "kernel_norm_and_concentration",
    "kernel_velocity_and_distance",
    "polar_trajectories",
    "rank_and_specialization",
    "relative_magnitude_curve",
    "robust_only_curves",
    "robustness_usefulness",
    "transfer_heatmap",
    "transferability_curves",
    "two_layer_transfer",
]


def _class_sorted(
    kernel: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel with rows and columns sorted by class (stable), the class counts and block edges."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_kernel = np.asarray(kernel)[np.ix_(order, order)]
    counts = np.bincount(labels[order], minlength=num_classes)
    edges = np.concatenate([[0], np.cumsum(counts)])
    return sorted_kernel, counts, edges


def _class_blocks(ax: Any, counts: np.ndarray, edges: np.ndarray, class_names: Sequence[str]) -> None:
    """Outline the class blocks of a class-sorted kernel and name them on both axes."""
    for edge in edges[1:-1]:
        ax.axhline(edge - 0.5, color="white", linewidth=0.6)
        ax.axvline(edge - 0.5, color="white", linewidth=0.6)
    present = [i for i, count in enumerate(counts) if count]
    centres = [(edges[i] + edges[i + 1] - 1) / 2 for i in present]
    names = [class_names[i] for i in present]
    ax.set_xticks(centres, names, rotation=90 if max(len(n) for n in names) > 3 else 0, fontsize=8)
    ax.set_yticks(centres, names, fontsize=8)


def kernel_image(
    kernel: np.ndarray,
    labels: np.ndarray,
    path: Path,
    *,
    class_names: Sequence[str],
    title: str,
    subtitle: str = "",
) -> None:
    """An (N, N) kernel with rows and columns sorted by class (TK fig. 6 left), class blocks
    outlined and named. Block structure along the diagonal is class alignment of the kernel."""
    plt = _pyplot()
    sorted_kernel, counts, edges = _class_sorted(kernel, labels, len(class_names))
    fig, ax = plt.subplots(figsize=(6.2, 5.4), layout="constrained")
    image = ax.imshow(sorted_kernel, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.85, label="Θ(x, x′)")
    _class_blocks(ax, counts, edges, class_names)
    ax.set_title(title)
    if subtitle:
        _subtitle(fig, subtitle)
    _save(fig, path)


# -- training dynamics of the empirical NTK ----------------------------------------------------
#
# These figures take *run summaries*: one plain dict per training run, as built by
# ``bridge.runs.dynamics_summary`` (this module never imports bridge). The keys used:
#   "label" str, "mode" str, "switch_epoch" int | None, "description" str, "class_names" [str],
#   "probe_targets" [int] (N), "epochs" [history epoch records], "kernels" [history kernel
#   records, each with "epoch" and the metric dicts "clean" / "adversarial" /
#   "adversarial_labels"], "kernel_epochs" [float], "dynamics" {"clean": kernel_dynamics,
#   "adversarial": kernel_dynamics}, "initial_kernel" / "final_kernel" (N, N) arrays or None.
# Any key may be missing: a figure draws what is there and notes under its panels what is not.
# Run i has colour _RUN_COLOURS[i] in every figure; C-NTK lines are solid, AE-NTK dashed.

_RUN_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
"""Okabe & Ito's colour-blind-safe palette (blue, vermillion, green, purple, orange, sky blue, black)."""

_KERNELS = (
    ("clean", "C-NTK (clean probe)", "-", "o"),
    ("adversarial", "AE-NTK (PGD probe)", "--", "s"),
)
_OWN_LABELS = ("adversarial_labels", "AE-NTK under the net's own labels", ":", "^")
_MANY_POINTS = 40  # no markers on longer series
_SWITCH_STYLE = (0, (1, 2))  # dotted vertical line at a run's switch epoch


def _colour(i: int) -> str:
    return _RUN_COLOURS[i % len(_RUN_COLOURS)]


def _shade(colour: str, amount: float) -> tuple[float, float, float]:
    """``colour`` blended towards white (amount > 0) or black (amount < 0) by |amount|."""
    from matplotlib.colors import to_rgb

    rgb = np.asarray(to_rgb(colour))
    target = 1.0 if amount > 0 else 0.0
    r, g, b = rgb + abs(amount) * (target - rgb)
    return float(r), float(g), float(b)


def _plain(text: Any) -> str:
    """User text (labels, subtitles) with ``$`` escaped, so that matplotlib does not read mathtext."""
    return str(text).replace("$", r"\$")


def _label(run: Any, i: int) -> str:
    return _plain(run.get("label") or f"run {i + 1}")


def _floats(values: Any) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64).reshape(-1)


def _metric_series(run: Any, kind: str, key: str) -> tuple[np.ndarray, np.ndarray, str | None]:
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


def _dynamics_series(run: Any, kind: str, key: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(epochs, values) of a ``kernel_dynamics`` series; velocity is drawn at its interval midpoints."""
    dynamics = (run.get("dynamics") or {}).get(kind)
    if dynamics is None:
        return np.zeros(0), np.zeros(0), None
    if key not in dynamics:
        return np.zeros(0), np.zeros(0), (dynamics.get("undefined") or {}).get(key, "not computed")
    x = dynamics["velocity_epochs"] if key == "velocity" else dynamics["epochs"]
    return _floats(x), _floats(dynamics[key]), None


def _has_kind(run: Any, kind: str) -> bool:
    return any(isinstance(record.get(kind), dict) for record in run.get("kernels") or [])


def _tracked_kinds(runs: Sequence[Any]) -> list[tuple[str, str, str, str]]:
    """The kernels (C-NTK, AE-NTK) that some run tracked; the C-NTK when none did."""
    kinds = [k for k in _KERNELS if any(_has_kind(run, k[0]) or k[0] in (run.get("dynamics") or {}) for run in runs)]
    return kinds or [_KERNELS[0]]


def _line(ax: Any, x: Any, y: Any, colour: Any, style: Any, marker: str, *, log: bool = False, **kwargs: Any) -> int:
    """One series (NaN and, on a log axis, non-positive values left out); returns the points left out."""
    x, y = _floats(x), _floats(y)
    keep = np.isfinite(x) & np.isfinite(y)
    if log:
        keep &= y > 0
    if keep.any():
        ax.plot(
            x[keep],
            y[keep],
            linestyle=style,
            color=colour,
            marker=marker if keep.sum() <= _MANY_POINTS else None,
            markersize=kwargs.pop("markersize", 3.5),
            markerfacecolor=colour if style == "-" else "white",
            linewidth=kwargs.pop("linewidth", 1.7),
            **kwargs,
        )
    return int((~keep).sum())


def _epoch_ticks(axis: Any) -> None:
    """Whole epochs as ticks; an axis around a single epoch spans one epoch either side."""
    from matplotlib.ticker import MaxNLocator

    low, high = axis.get_view_interval()
    if abs(high - low) < 1:
        centre = (low + high) / 2
        axis.set_view_interval(centre - 0.5, centre + 0.5, ignore=True)
        low, high = axis.get_view_interval()
    whole = np.arange(np.ceil(min(low, high)), np.floor(max(low, high)) + 1)
    if whole.size <= 2:  # MaxNLocator would fall back to fractional ticks
        axis.set_ticks(whole if whole.size else [round((low + high) / 2, 2)])
    else:
        axis.set_major_locator(MaxNLocator(integer=True))


def _style_epoch_axes(ax: Any, ylabel: str, title: str, *, log: bool = False) -> None:
    _epoch_ticks(ax.xaxis)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="major")
    if log:
        _readable_log_axis(ax)


def _readable_log_axis(ax: Any) -> None:
    """A log y axis; within less than a decade, ticks read as plain numbers, not 2×10⁻¹."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.grid(alpha=0.12, which="minor")
    low, high = ax.get_ylim()
    if low > 0 and high / low < 30:
        every = high / low <= 3  # label every minor tick only on a very short axis

        def minor(value: float, _: Any) -> str:
            mantissa = round(value / 10 ** np.floor(np.log10(value)), 6)
            return f"{value:.3g}" if every or mantissa in (2.0, 3.0, 5.0) else ""

        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(minor))
        ax.tick_params(axis="y", which="both", labelsize=8)


def _mark_switches(ax: Any, runs: Sequence[Any], indices: Sequence[int] | None = None) -> bool:
    """A dotted vertical line, in the run's colour, at each run's switch epoch."""
    marked = False
    for i, run in zip(indices if indices is not None else range(len(runs)), runs, strict=True):
        if run.get("switch_epoch") is not None:
            ax.axvline(float(run["switch_epoch"]), color=_colour(i), linestyle=_SWITCH_STYLE, linewidth=1.2, zorder=0)
            marked = True
    return marked


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, textwrap.fill(_plain(text), 38), ha="center", va="center", fontsize=9, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(
    fig: Any,
    runs: Sequence[tuple[int, str]] = (),
    kinds: Sequence[tuple[str, str, str, str]] = (),
    *,
    switch: bool = False,
    extra: Sequence[tuple[Any, str]] = (),
) -> None:
    """One legend for the figure, right of the panels: runs (index, label) by colour, kernels by
    line style, a switch-epoch line, then ``extra`` (handle, label) pairs."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_colour(i), linewidth=3) for i, _ in runs]
    labels = [label for _, label in runs]
    for _, name, style, marker in kinds:
        face = "0.2" if style == "-" else "white"
        handles.append(Line2D([], [], color="0.2", ls=style, marker=marker, markerfacecolor=face, ms=4))
        labels.append(name)
    if switch:
        handles.append(Line2D([], [], color="0.3", ls=_SWITCH_STYLE, linewidth=1.2))
        labels.append("switch epoch\n(standard → adversarial)")
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)


def _all_runs(runs: Sequence[Any]) -> list[tuple[int, str]]:
    return [(i, _label(run, i)) for i, run in enumerate(runs)]


def _notes(fig: Any, notes: Sequence[tuple[str, str]]) -> None:
    """What a figure could not draw, (what, why) pairs grouped by reason, in small grey type
    under the panels."""
    reasons: dict[str, list[str]] = {}
    for what, why in notes:
        if what not in reasons.setdefault(why, []):
            reasons[why].append(what)
    if reasons:
        width = max(60, int(15 * fig.get_figwidth()))
        lines = [
            textwrap.fill(_plain(f"not shown: {', '.join(whats)} ({why})"), width) for why, whats in reasons.items()
        ]
        text = "\n".join(lines[:5]) + (f"\n(and {len(lines) - 5} more)" if len(lines) > 5 else "")
        fig.supxlabel(text, fontsize=7.5, color="0.35")


def _heading(fig: Any, heading: str, subtitle: str) -> None:
    _subtitle(fig, f"{heading}. {_plain(subtitle)}" if subtitle else heading)


def kernel_distance_heatmaps(runs: Sequence[Any], path: Path, *, subtitle: str = "") -> None:
    """Kernel distance d(Θ_s, Θ_t) between every two tracked epochs, one panel per run (TK fig. 3
    left): a row for the C-NTK and, when tracked, one for the AE-NTK; one colour scale for all."""
    plt = _pyplot()
    kinds = [k for k in _KERNELS if any(k[0] in (run.get("dynamics") or {}) for run in runs)] or [_KERNELS[0]]
    rows, cols = len(kinds), max(len(runs), 1)
    # "compressed" packs fixed-aspect (square) panels without the gaps "constrained" leaves
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols + 1.2, 3.3 * rows + 0.9), squeeze=False, layout="compressed"
    )
    matrices = [
        np.asarray(run["dynamics"][kind]["distance_matrix"])
        for run in runs
        for kind, *_ in kinds
        if "distance_matrix" in (run.get("dynamics") or {}).get(kind, {})
    ]
    vmax = max((float(m.max()) for m in matrices), default=0.0) or 1.0
    mesh = None
    for row, (kind, name, _, _) in enumerate(kinds):
        for col, run in enumerate(runs):
            ax = axes[row, col]
            ax.set_title(f"{_label(run, col)}\n{name}", fontsize=9, color=_colour(col))
            dynamics = (run.get("dynamics") or {}).get(kind, {})
            if "distance_matrix" not in dynamics:
                reason = (dynamics.get("undefined") or {}).get("distance_matrix", f"no {name.split()[0]} tracked")
                _empty(ax, reason)
                continue
            d = np.asarray(dynamics["distance_matrix"], dtype=np.float64)
            t = _floats(dynamics["epochs"])
            if t.size > 1:  # cells centred on the tracked epochs, however they are spaced
                inner = (t[:-1] + t[1:]) / 2
                edges = np.concatenate([[t[0] - (inner[0] - t[0])], inner, [t[-1] + (t[-1] - inner[-1])]])
            else:
                edges = np.array([t[0] - 0.5, t[0] + 0.5])
            mesh = ax.pcolormesh(edges, edges, d, cmap="viridis", vmin=0.0, vmax=vmax, shading="flat")
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylim(edges[-1], edges[0])  # matrix orientation: the first epoch top left
            ax.set_aspect("equal")
            ax.set_xlabel("epoch")
            ax.set_ylabel("epoch")
            _epoch_ticks(ax.xaxis)
            _epoch_ticks(ax.yaxis)
            for spine in ax.spines.values():
                spine.set_edgecolor(_colour(col))
                spine.set_linewidth(2)
    if mesh is not None:
        fig.colorbar(
            mesh,
            ax=axes,
            shrink=0.8,
            label=r"kernel distance  $1 - \langle\Theta_s, \Theta_t\rangle_F \,/\, (\|\Theta_s\|_F \|\Theta_t\|_F)$",
        )
    _heading(fig, "Kernel rotation: distance between the kernels of every two tracked epochs (TK fig. 3)", subtitle)
    _save(fig, path)


def polar_trajectories(runs: Sequence[Any], path: Path, *, subtitle: str = "") -> None:
    """Kernel trajectories in polar space (TK eq. 12, fig. 3 right; supp. fig. 8 for the top-k
    space): radius r_t = ‖Θ_t − Θ₀‖_F / ‖Θ_f − Θ₀‖_F, angle θ_t between Θ_t and Θ₀. Every run
    starts at the origin (Θ₀) and ends at r = 1 (star); its markers go from dark (early epochs)
    to light (late), C-NTK solid with filled markers, AE-NTK dashed with open ones."""
    plt = _pyplot()
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.lines import Line2D

    top_k = next((int(d["top_k"]) for run in runs for d in (run.get("dynamics") or {}).values() if "top_k" in d), 20)
    panels = [("polar", "whole kernel"), ("top_polar", f"top-{top_k} eigenspace")]
    kinds = [k for k in _KERNELS if any(k[0] in (run.get("dynamics") or {}) for run in runs)]
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.8), subplot_kw={"projection": "polar"}, layout="constrained")
    last_epoch = max((float(np.nanmax(_floats(run.get("kernel_epochs") or [0.0]))) for run in runs), default=1.0)
    norm = Normalize(vmin=0.0, vmax=last_epoch or 1.0)
    missing: dict[tuple[int, str], tuple[list[str], list[str]]] = {}  # (run, why) -> kernels, panels
    shown: set[int] = set()
    for ax, (key, name) in zip(axes, panels, strict=True):
        theta_max, r_max = 0.0, 0.0
        for i, run in enumerate(runs):
            colour = _colour(i)
            ramp: list[Any] = [_shade(colour, -0.6), colour, _shade(colour, 0.7)]
            shades = LinearSegmentedColormap.from_list("epochs", ramp)
            for kind, kind_name, style, marker in kinds:
                dynamics = (run.get("dynamics") or {}).get(kind)
                if dynamics is None:
                    continue
                if f"{key}_r" not in dynamics:
                    reason = (dynamics.get("undefined") or {}).get(key, "not computed")
                    which, where = missing.setdefault((i, reason), ([], []))
                    which.extend(k for k in [kind_name.split()[0]] if k not in which)
                    where.extend(p for p in [name] if p not in where)
                    continue
                r, theta = _floats(dynamics[f"{key}_r"]), _floats(dynamics[f"{key}_theta"])
                t = _floats(dynamics["epochs"])
                ax.plot(theta, r, linestyle=style, color=colour, linewidth=1.2, alpha=0.85, zorder=2)
                ax.scatter(
                    theta,
                    r,
                    c=t,
                    cmap=shades,
                    norm=norm,
                    s=28 if r.size <= _MANY_POINTS else 9,
                    marker=marker,
                    edgecolors=colour if style != "-" else "none",
                    linewidths=0.8,
                    zorder=3,
                )
                ax.scatter(
                    theta[-1], r[-1], marker="*", s=180, color=colour, edgecolors="black", linewidths=0.7, zorder=4
                )
                theta_max, r_max = max(theta_max, float(theta.max())), max(r_max, float(r.max()))
                shown.add(i)
        ax.set_title(name, fontsize=10, pad=12)
        if r_max == 0.0:
            ax.set_thetamax(90.0)
            ax.set_xticklabels([])
            ax.set_yticklabels([])
            ax.text(np.radians(45), 0.5, "nothing to draw", ha="center", va="center", fontsize=9, color="0.35")
            continue
        ax.scatter([0.0], [0.0], marker="o", s=50, color="black", zorder=5, clip_on=False)
        degrees = min(180.0, max(5.0, float(np.ceil(np.degrees(theta_max) * 1.15))))
        ax.set_thetamin(0.0)
        ax.set_thetamax(degrees)
        ax.set_rlim(0.0, max(1.05, 1.08 * r_max))
        ax.annotate(
            r"$r = \|\Theta_t - \Theta_0\|_F \;/\; \|\Theta_f - \Theta_0\|_F$",
            xy=(0.0, ax.get_rmax() / 2),
            xytext=(0, -20),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=9,
            annotation_clip=False,
        )
        ax.text(
            np.radians(degrees) * 0.5,
            ax.get_rmax() * 1.16,
            r"$\theta$ = angle between $\Theta_t$ and $\Theta_0$",
            ha="center",
            va="center",
            rotation=degrees * 0.5 - 90,
            fontsize=9,
        )
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.4)
    grey = LinearSegmentedColormap.from_list("epochs", ["0.1", "0.5", "0.88"])
    scalar = plt.cm.ScalarMappable(norm=norm, cmap=grey)
    fig.colorbar(scalar, ax=list(axes), shrink=0.55, pad=0.02, label="epoch (marker shade: darker = earlier)")
    start = Line2D([], [], color="black", marker="o", linestyle="none", ms=6)
    end = Line2D([], [], color="0.7", marker="*", markeredgecolor="black", linestyle="none", ms=11)
    shown_runs = [(i, label) for i, label in _all_runs(runs) if i in shown]
    _legend(fig, shown_runs, kinds, extra=[(start, r"start $\Theta_0$ (origin)"), (end, r"end $\Theta_f$ (r = 1)")])
    notes = [
        (f"{_label(runs[i], i)} {' and '.join(which)} ({' and '.join(where)})", why)
        for (i, why), (which, where) in missing.items()
    ]
    _notes(fig, notes)
    _heading(fig, "Kernel trajectories in polar space (TK eq. 12, fig. 3; supp. fig. 8)", subtitle)
    _save(fig, path)


_Panel = tuple[str, str, str, bool, Sequence[tuple[str, str, str, str]]]


def _series_panels(
    runs: Sequence[Any],
    path: Path,
    panels: Sequence[_Panel],
    *,
    heading: str,
    subtitle: str,
    series: Any = _metric_series,
) -> None:
    """Panels of per-run curves against the epoch: (key, y label, title, log y, kernels) each;
    ``series(run, kind, key)`` gives (epochs, values, why missing); the run's colour throughout,
    C-NTK solid, AE-NTK dashed, a dotted vertical line at a switch epoch."""
    plt = _pyplot()
    fig, axes = _grid(plt, 1, len(panels), 4.0)
    fig.set_figwidth(fig.get_figwidth() + 2.4)
    fig.set_figheight(fig.get_figheight() + 0.7)
    missing: dict[tuple[str, int, str], list[str]] = {}  # (panel, run, why) -> kernels
    used_kinds: set[str] = set()
    switch = False
    for ax, (key, ylabel, title, log, kinds) in zip(axes[0], panels, strict=True):
        drawn = False
        for i, run in enumerate(runs):
            for kind, kind_name, style, marker in kinds:
                short = kind_name.split(" (")[0]
                x, y, reason = series(run, kind, key)
                if reason is not None:
                    missing.setdefault((title, i, reason), []).append(short)
                if x.size == 0:
                    continue
                dropped = _line(ax, x, y, _colour(i), style, marker, log=log)
                if dropped:
                    missing.setdefault((title, i, f"{dropped} value(s) ≤ 0, off the log axis"), []).append(short)
                drawn = drawn or dropped < x.size
                used_kinds.add(kind)
        if drawn:
            switch = _mark_switches(ax, runs) or switch
            _style_epoch_axes(ax, ylabel, title, log=log)
        else:
            ax.set_title(title, fontsize=10)
            _empty(ax, f"{title}: nothing to draw" + (" (see the note below)" if missing else ""))
    kinds_used = [k for k in (*_KERNELS, _OWN_LABELS) if k[0] in used_kinds]
    _legend(fig, _all_runs(runs), kinds_used, switch=switch)
    notes = [
        (f"{title} of {_label(runs[i], i)} ({' and '.join(which)})", why) for (title, i, why), which in missing.items()
    ]
    _notes(fig, notes)
    _heading(fig, heading, subtitle)
    _save(fig, path)


def kernel_norm_and_concentration(runs: Sequence[Any], path: Path, *, subtitle: str = "") -> None:
    """Frobenius norm of the trace eNTK (log scale) and its concentration Σ_{i≤p} λᵢ² / Σ λᵢ² on the
    top-p eigenvalues for every recorded cut-off p, against the epoch (TK fig. 6 right, supp. fig. 7)."""
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
            f"concentration_top{p}",
            rf"$\sum_{{i \leq {p}}} \lambda_i^2 \;/\; \sum_i \lambda_i^2$",
            f"concentration on the top {p} eigenvalues",
            False,
            kinds,
        )
        for p in cutoffs
    ]
    _series_panels(
        runs,
        path,
        panels,
        heading="Kernel norm and concentration of its spectrum on the top eigenvalues (TK fig. 6, supp. fig. 7)",
        subtitle=subtitle,
    )


def kernel_velocity_and_distance(runs: Sequence[Any], path: Path, *, subtitle: str = "") -> None:
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
        heading="Kernel velocity and distance to the final kernel (LOO fig. 1a-b)",
        subtitle=subtitle,
        series=_dynamics_series,
    )


def rank_and_specialization(runs: Sequence[Any], path: Path, *, subtitle: str = "") -> None:
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
        heading="Effective rank and mean kernel specialization (LOO fig. 1c-d)",
        subtitle=subtitle,
    )


def kernel_images_grid(runs: Sequence[Any], path: Path, *, subtitle: str = "") -> None:
    """Class-sorted trace C-NTKs side by side (TK fig. 6 left): at initialisation (of the first
    run) and the last tracked kernel of every run, each with its own colour scale, whose maximum
    (and the Frobenius norm) the panel names, so that the growth of the kernel reads at a glance."""
    plt = _pyplot()
    panels: list[tuple[str, Any, np.ndarray, int]] = []
    first = next((run for run in runs if run.get("initial_kernel") is not None), None)
    if first is not None:
        panels.append(("initialisation", first, np.asarray(first["initial_kernel"]), -1))
    for i, run in enumerate(runs):
        if run.get("final_kernel") is not None:
            epoch = _floats(run.get("kernel_epochs") or [np.nan])[-1]
            when = f" (epoch {epoch:g})" if np.isfinite(epoch) else ""
            panels.append((f"end of {_label(run, i)}{when}", run, np.asarray(run["final_kernel"]), i))
    size = 3.9
    # "compressed" packs fixed-aspect (square) panels without the gaps "constrained" leaves
    fig, axes = plt.subplots(
        1, max(len(panels), 1), figsize=(size * max(len(panels), 1), size + 1.9), squeeze=False, layout="compressed"
    )
    if not panels:
        _empty(axes[0, 0], "no tracked kernels")
    for ax, (title, run, kernel, index) in zip(axes[0], panels, strict=True):
        labels = np.asarray(run.get("probe_targets") or np.zeros(kernel.shape[0], dtype=int), dtype=np.int64)
        names = [str(n) for n in run.get("class_names") or []]
        names += [str(c) for c in range(len(names), int(labels.max()) + 1)]
        sorted_kernel, counts, edges = _class_sorted(kernel, labels, len(names))
        image = ax.imshow(sorted_kernel, cmap="viridis", interpolation="nearest")
        bar = fig.colorbar(image, ax=ax, shrink=0.85, location="bottom", pad=0.02)
        bar.set_label(f"Θ(x, x′), this panel's scale (max {float(np.max(kernel)):.3g})", fontsize=8)
        bar.ax.tick_params(labelsize=7)
        _class_blocks(ax, counts, edges, names)
        colour = "black" if index < 0 else _colour(index)
        ax.set_title(
            rf"{title}" + "\n" + rf"$\|\bar\Theta\|_F$ = {np.linalg.norm(kernel):.3g}", fontsize=9, color=colour
        )
        for spine in ax.spines.values():
            spine.set_edgecolor("0.3" if index < 0 else colour)
            spine.set_linewidth(2)
    _heading(fig, "Trace C-NTK on the probe, sorted by class, each panel on its own colour scale (TK fig. 6)", subtitle)
    _save(fig, path)


_ACCURACIES = (
    ("test_clean", "test, clean", 0.0, "-", "o"),
    ("test_pgd", "test, PGD", 0.0, "--", "o"),
    ("train_clean", "train, clean", 0.5, "-", "^"),
    ("train_pgd", "train, PGD", 0.5, "--", "^"),
)


def accuracy_curves(runs: Sequence[Any], path: Path, *, subtitle: str = "") -> None:
    """Train / test accuracy on clean and PGD inputs against the epoch, one panel per run (TK supp.
    fig. 6): test in the run's colour, train lighter, clean solid, PGD dashed; accuracies with
    BatchNorm batch statistics, when recorded, as thin lines with × markers; a dotted vertical
    line at the epoch where training switches from standard to adversarial."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, axes = _grid(plt, 1, max(len(runs), 1), 3.8)
    fig.set_figwidth(fig.get_figwidth() + 1.9)
    fig.set_figheight(fig.get_figheight() + 0.6)
    batch_seen, notes = False, []
    for i, (ax, run) in enumerate(zip(axes[0], runs, strict=True)):
        records = run.get("epochs") or []
        x = _floats([record.get("epoch") for record in records])
        drawn = False
        for source in ("running", "batch"):
            for key, _, light, style, marker in _ACCURACIES:
                y = _floats([((record.get("accuracy") or {}).get(source) or {}).get(key) for record in records])
                if not np.isfinite(y).any():
                    continue
                colour = _shade(_colour(i), light) if light else _colour(i)
                if source == "running":
                    _line(ax, x, y, colour, style, marker)
                else:
                    _line(ax, x, y, colour, style, "x", linewidth=0.9, markersize=4.5, alpha=0.9)
                    batch_seen = True
                drawn = True
        title = _label(run, i)
        if run.get("switch_epoch") is not None:
            title += f"\nstandard → {_plain(run.get('mode') or 'adversarial')} after epoch {run['switch_epoch']}"
            ax.axvline(float(run["switch_epoch"]), color="0.3", linestyle=_SWITCH_STYLE, linewidth=1.2, zorder=0)
        if not drawn:
            ax.set_title(title, fontsize=10, color=_colour(i))
            _empty(ax, "no accuracies recorded")
            notes.append((f"accuracies of {_label(run, i)}", "not recorded"))
            continue
        ax.set_ylim(-0.02, 1.02)
        _style_epoch_axes(ax, "accuracy", title)
        ax.title.set_color(_colour(i))
    handles = []
    for _, name, light, style, marker in _ACCURACIES:
        colour = _shade("#333333", 0.55) if light else "#333333"
        face = colour if style == "-" else "white"
        handles.append((Line2D([], [], color=colour, ls=style, marker=marker, markerfacecolor=face, ms=4), name))
    if batch_seen:
        handles.append((Line2D([], [], color="0.3", marker="x", linewidth=0.9, ms=5), "BatchNorm batch\nstatistics"))
    if any(run.get("switch_epoch") is not None for run in runs):
        handles.append((Line2D([], [], color="0.3", ls=_SWITCH_STYLE), "switch epoch"))
    _legend(fig, extra=handles)
    _notes(fig, notes)
    _heading(fig, "Accuracy during training; test in the run's colour, train lighter (TK supp. fig. 6)", subtitle)
    _save(fig, path)


def _relative_magnitudes(run: Any) -> tuple[np.ndarray, np.ndarray]:
    records = [r for r in run.get("epochs") or [] if r.get("relative_magnitude") is not None]
    return _floats([r.get("epoch") for r in records]), _floats([r["relative_magnitude"] for r in records])


def relative_magnitude_curve(runs: Sequence[Any], path: Path, *, subtitle: str = "") -> None:
    """Relative magnitude of the first-order to the zeroth-order term of linearized training,
    against the epoch, log scale (LOO sec. 4, fig. 2c); runs without it are left out."""
    plt = _pyplot()
    fig, axes = _grid(plt, 1, 1, 4.6)
    fig.set_figwidth(fig.get_figwidth() + 2.4)
    ax = axes[0, 0]
    notes: list[tuple[str, str]] = []
    shown = []
    for i, run in enumerate(runs):
        x, y = _relative_magnitudes(run)
        if x.size:
            dropped = _line(ax, x, y, _colour(i), "-", "o", log=True)
            if dropped:
                notes.append((_label(run, i), f"{dropped} value(s) ≤ 0, off the log axis"))
            if dropped < x.size:
                shown.append(i)
    if shown:
        _mark_switches(ax, [runs[i] for i in shown], shown)
        ylabel = r"$\Delta f^\top \Delta f \,/\, f_0^\top f_0$  (mean over test points)"
        _style_epoch_axes(ax, ylabel, "linearized training", log=True)
    else:
        _empty(ax, "no run records a relative magnitude")
    _legend(fig, [(i, _label(runs[i], i)) for i in shown])
    _notes(fig, notes)
    _heading(fig, "Relative magnitude of the first-order term in linearized training (LOO sec. 4)", subtitle)
    _save(fig, path)


def eigenvector_pictures(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray]],
    path: Path,
    *,
    cosines: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    subtitle: str = "",
) -> None:
    """LOO fig. 4: for each kernel (label, maximising (k, C, H, W), minimising (k, C, H, W)) the
    inputs that maximise (upper row) and minimise (lower row) the cosine with the kernel's
    eigenvector vᵢ, i = 1..k, inputs in [0, 1]; ``cosines``, one (max (k,), min (k,)) pair per
    kernel, titles each input with its final cosine."""
    plt = _pyplot()
    if cosines is not None and len(cosines) != len(rows):
        raise ValueError(f"{len(cosines)} cosine pairs for {len(rows)} kernels")
    cols = max((max(hi.shape[0], lo.shape[0]) for _, hi, lo in rows), default=1) or 1
    fig, axes = _grid(plt, 2 * max(len(rows), 1), cols, 1.75)
    fig.set_figwidth(fig.get_figwidth() + 1.0)
    fig.set_figheight(fig.get_figheight() + 0.6)
    for r, (label, highest, lowest) in enumerate(rows):
        for half, (images, which) in enumerate(((highest, "max"), (lowest, "min"))):
            row = 2 * r + half
            for c in range(cols):
                ax = axes[row, c]
                if c >= images.shape[0]:
                    ax.axis("off")
                    continue
                _show_image(ax, np.asarray(images[c]))
                title = f"v{c + 1}" if row == 0 else ""
                if cosines is not None:
                    cosine = f"cos {float(np.asarray(cosines[r][half])[c]):+.2f}"
                    title = f"{title}\n{cosine}" if title else cosine
                if title:
                    ax.set_title(title, fontsize=8)
            name = f"{_plain(label)}\n{which} cos" if half == 0 else f"{which} cos"
            axes[row, 0].set_ylabel(name, fontsize=8.5, fontweight="bold" if half == 0 else "normal")
    _heading(
        fig, "Inputs aligned with the kernel's eigenvectors vᵢ: max (upper) / min (lower) cosine (LOO fig. 4)", subtitle
    )
    _save(fig, path)


DYNAMICS_FIGURES = {
    "kernel_distance": "kernel_distance.png",
    "polar": "polar.png",
    "norm_concentration": "norm_concentration.png",
    "velocity_distance": "velocity_distance.png",
    "rank_specialization": "rank_specialization.png",
    "kernel_images": "kernel_images.png",
    "accuracy": "accuracy.png",
    "relative_magnitude": "relative_magnitude.png",
}
"""The figures of ``dynamics_figures``: name → file name in its output folder."""


def dynamics_subtitle(runs: Sequence[Any]) -> str:
    """What the runs share, in a line: data set, model, probe size, attack (the legend names the
    runs); a fact that differs between runs is given per run."""

    def facts(key: str, phrase: str) -> str | None:
        values = [run.get(key) for run in runs]
        present = [v for v in values if v is not None]
        if not present:
            return None
        if len(set(map(str, present))) == 1:
            return phrase.format(present[0])
        if key == "probe_size":  # one phrase with the sizes in legend order, not one per run
            return phrase.format(" / ".join(str(v) for v in present))
        per_run = (
            f"{phrase.format(v)} ({_label(run, i)})"
            for i, (run, v) in enumerate(zip(runs, values, strict=True))
            if v is not None
        )
        return ", ".join(per_run)

    adversarial = any("adversarial" in (run.get("dynamics") or {}) for run in runs)
    parts = [
        facts("dataset", "{}"),
        facts("model", "{}"),
        facts("probe_size", "trace eNTK on a probe of {} points"),
        facts("eps", "AE-NTK on its PGD examples (eps {:.4g})") if adversarial else None,
    ]
    return "; ".join(p for p in parts if p)


def applicable_figures(runs: Sequence[Any]) -> list[str]:
    """The ``DYNAMICS_FIGURES`` that ``dynamics_figures`` draws for these run summaries: kernel
    figures need a run with tracked kernels, the polar one a run whose kernel moved, the
    relative magnitude a run that records it, accuracy a run with epoch records."""
    dynamics = [d for run in runs for d in (run.get("dynamics") or {}).values()]
    tracked = any(run.get("kernels") for run in runs)
    applies = {
        "kernel_distance": any("distance_matrix" in d for d in dynamics),
        "polar": any("polar_r" in d or "top_polar_r" in d for d in dynamics),
        "norm_concentration": tracked,
        "velocity_distance": any("distance_to_final" in d for d in dynamics),
        "rank_specialization": tracked,
        "kernel_images": any(run.get("final_kernel") is not None for run in runs),
        "accuracy": any(run.get("epochs") for run in runs),
        "relative_magnitude": any(_relative_magnitudes(run)[0].size for run in runs),
    }
    return [name for name in DYNAMICS_FIGURES if applies[name]]


def dynamics_figures(runs: Sequence[Any], out_dir: Path, *, subtitle: str = "") -> dict[str, str]:
    """Every applicable training-dynamics figure (``applicable_figures``) of the run summaries
    ``runs`` into ``out_dir``, under the fixed names of ``DYNAMICS_FIGURES``; returns
    {figure: file name} of those written. ``subtitle`` defaults to the runs' descriptions. The
    eigenvector figure (needs torch to compute) is ``eigenvector_pictures``, called on its own."""
    draw = {
        "kernel_distance": kernel_distance_heatmaps,
        "polar": polar_trajectories,
        "norm_concentration": kernel_norm_and_concentration,
        "velocity_distance": kernel_velocity_and_distance,
        "rank_specialization": rank_and_specialization,
        "kernel_images": kernel_images_grid,
        "accuracy": accuracy_curves,
        "relative_magnitude": relative_magnitude_curve,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subtitle = subtitle or dynamics_subtitle(runs)
    written: dict[str, str] = {}
    for name in applicable_figures(runs):
        draw[name](runs, out_dir / DYNAMICS_FIGURES[name], subtitle=subtitle)
        written[name] = DYNAMICS_FIGURES[name]
    return written


# -- transfer of adversarial examples (TK sec. 3.2, supp. C; LOO sec. 5) ------------------------
#
# Plain inputs, no result objects: per-net dicts of per-epoch records for the two-layer nets and
# their NTK (TK fig. 4, supp. fig. 1a), gradient arrays (supp. fig. 1b), accuracy matrices of
# targets against attack sources, and transferability curves τ(t′) (LOO fig. 3).

# lines of the bottom panel of ``two_layer_transfer``: key, legend label, style, width, alpha, and
# the marker that a series of fewer than three points gets (markers only then)
_TRANSFER_ACCURACIES = (
    ("white_box_accuracy", "own white-box attack", "-", 1.8, 1.0, "o"),
    ("ntk_attack_accuracy", "NTK-generated examples", (0, (4.5, 2)), 1.8, 1.0, "s"),
    ("clean_accuracy", "clean", (0, (1, 1.6)), 1.1, 0.9, "^"),
    ("random_accuracy", "random-sign perturbation", "-", 0.9, 0.35, "x"),
)
_SHORT = 3  # series with fewer points than this get markers
_KERNEL_STYLE = (0, (6, 2, 1.5, 2))  # dash-dot: the NTK machine under its own attack


def _budget(eps: float | None) -> str:
    """ε as the papers write it: 8/255 for a multiple of 1/255, else a short decimal."""
    if eps is None or not np.isfinite(eps):
        return ""
    steps = eps * 255
    if eps > 0 and abs(steps - round(steps)) < 1e-6 and round(steps) not in (0, 255) and eps < 0.25:
        return f"ε = {round(steps)}/255"
    return f"ε = {eps:.3g}"


def _seed_shades(nets: Sequence[Any]) -> tuple[list[tuple[float, float, float]], list[str]]:
    """Per net: its colour (one colour per width, widths in increasing order; later seeds of a
    width lighter) and its legend label."""
    widths = sorted({int(net.get("width") or 0) for net in nets})
    shades, labels = [], []
    for net in nets:
        width = int(net.get("width") or 0)
        k = widths.index(width)
        same = sorted((n for n in nets if int(n.get("width") or 0) == width), key=lambda n: n.get("seed") or 0)
        j = next(i for i, n in enumerate(same) if n is net)
        shades.append(_shade(_colour(k), 0.5 * j / max(len(same) - 1, 1)))  # j = 0: the colour itself
        seed = net.get("seed")
        labels.append(f"m = {width:,}" + (f", seed {seed}" if seed is not None else ""))
    return shades, labels


def _epoch_records(records: Any, keys: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The epochs ≥ 1 of per-epoch records (a log axis) and the values of ``keys`` there."""
    records = list(records or [])
    epochs = _floats([r.get("epoch") for r in records])
    keep = np.isfinite(epochs) & (np.nan_to_num(epochs, nan=0.0) >= 1)
    values = {key: _floats([r.get(key) for r in records])[keep] for key in keys}
    return epochs[keep], values


def _time_per_epoch(nets: Sequence[Any], kernel: Any) -> float | None:
    """The ratio t / epoch of the aligned NTK time (median over all records), None if unknown."""
    records = [r for net in nets for r in net.get("epochs") or []] + list((kernel or {}).get("epochs") or [])
    epochs = _floats([r.get("epoch") for r in records])
    times = _floats([r.get("time") for r in records])
    ok = np.isfinite(epochs) & np.isfinite(times)
    ok[ok] &= (epochs[ok] > 0) & (times[ok] > 0)
    return float(np.median(times[ok] / epochs[ok])) if ok.any() else None


def two_layer_transfer(
    nets: Sequence[Any],
    kernel: Any,
    path: Path,
    *,
    subtitle: str = "",
    method: str = "fgsm",
    eps: float | None = None,
) -> None:
    """Two-layer nets against their NTK during training (TK fig. 4; supp. fig. 1a for MNIST).

    ``nets``: one dict per trained net, {"width", "seed", "epochs": [{"epoch", "time",
    "gradient_cosine", "gradient_cosine_q25", "gradient_cosine_q75", "clean_accuracy",
    "white_box_accuracy", "ntk_attack_accuracy", "random_accuracy"}]}; ``kernel``: {"epochs":
    [{"epoch", "time", "clean_accuracy", "robust_accuracy"}]}, the NTK machine at the aligned
    time under its own attack. Top: mean cosine between the loss gradients of the net (f − f₀)
    and of the NTK prediction f_t (supp. eq. 30), the q25-q75 band shaded. Bottom: the net's
    accuracy under its own white-box attack (solid) and on the NTK's examples (dashed), clean
    (dotted) and under random signs (faint); the NTK machine under its own attack (black
    dash-dot). One colour per width, later seeds lighter; epochs ≥ 1 on a log axis, the
    aligned kernel time t on the top axis. None or NaN values are left out.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullLocator

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7.4, 6.4), sharex=True, height_ratios=[1.0, 1.35], layout="constrained"
    )
    shades, labels = _seed_shades(nets)
    cosine_keys = ("gradient_cosine", "gradient_cosine_q25", "gradient_cosine_q75")
    all_epochs: list[np.ndarray] = []
    lowest, band = 0.0, False
    cosines_seen = short = False
    for net, colour in zip(nets, shades, strict=True):
        x, values = _epoch_records(net.get("epochs"), [*cosine_keys, *(k for k, *_ in _TRANSFER_ACCURACIES)])
        all_epochs.append(x)
        cos, q25, q75 = (values[k] for k in cosine_keys)
        both = np.isfinite(q25) & np.isfinite(q75)
        if both.sum() > 1:
            top.fill_between(x[both], q25[both], q75[both], color=colour, alpha=0.16, linewidth=0, zorder=1)
            band = True
        elif both.any():  # one epoch: an error bar instead of a band
            top.vlines(x[both], q25[both], q75[both], color=colour, alpha=0.5, linewidth=3, zorder=1)
            band = True
        finite = np.concatenate([v[np.isfinite(v)] for v in (cos, q25, q75)])
        if finite.size:
            lowest = min(lowest, float(finite.min()))
            cosines_seen = cosines_seen or bool(np.isfinite(cos).any())
        _line(top, x, cos, colour, "-", "o", markersize=3, zorder=3)
        for key, _, style, width, alpha, mark in _TRANSFER_ACCURACIES:
            marker = mark if 0 < np.isfinite(values[key]).sum() < _SHORT else ""  # one point still shows
            short = short or bool(marker)
            _line(bottom, x, values[key], colour, style, marker, linewidth=width, alpha=alpha, zorder=3)
    kx, kvalues = _epoch_records((kernel or {}).get("epochs"), ["robust_accuracy", "clean_accuracy"])
    all_epochs.append(kx)
    kernel_robust = np.isfinite(kvalues["robust_accuracy"]).any()
    kernel_clean = np.isfinite(kvalues["clean_accuracy"]).any()
    kernel_marker = "D" if kx.size < _SHORT else ""
    _line(bottom, kx, kvalues["robust_accuracy"], "black", _KERNEL_STYLE, kernel_marker, linewidth=1.6, zorder=4)
    _line(bottom, kx, kvalues["clean_accuracy"], "0.45", (0, (1, 1.6)), kernel_marker, linewidth=1.1, zorder=2)

    epochs = np.concatenate(all_epochs) if all_epochs else np.zeros(0)
    top.set_ylabel("gradient cosine")
    top.set_title(
        r"loss-gradient alignment  $\cos(\nabla_x \mathcal{L}(f_t),\ \nabla_x \mathcal{L}(f - f_0))$"
        r"  ($f_t$: NTK, $f - f_0$: net)",
        fontsize=10,
    )
    bottom.set_ylabel("accuracy")
    bottom.set_xlabel("epoch (net)")
    bottom.set_title("accuracy of the nets under attack", fontsize=10)
    if not epochs.size:
        _empty(top, "no epochs ≥ 1 recorded")
        _empty(bottom, "no epochs ≥ 1 recorded")
    else:
        low, high = float(epochs.min()), float(epochs.max())
        single = low == high
        bottom.set_xscale("log")
        bottom.set_xlim(*((low / 2, low * 2) if single else (low / 1.25, high * 1.25)))
        if single:  # one epoch: one plain tick, not 2×10¹ and 3×10¹ around it
            bottom.set_xticks([low], [f"{low:g}"])
            bottom.xaxis.set_minor_locator(NullLocator())
        if not cosines_seen:
            top.text(0.5, 0.5, "no gradient cosines recorded", transform=top.transAxes, ha="center", fontsize=9)
        top.set_ylim(lowest - 0.03, 1.03)
        if lowest < 0:
            top.axhline(0.0, color="0.5", linewidth=0.8, zorder=0)
        bottom.set_ylim(-0.02, 1.02)
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="major")
            ax.grid(alpha=0.1, which="minor")
        ratio = _time_per_epoch(nets, kernel)
        if ratio is not None:
            second = top.secondary_xaxis("top", functions=(lambda e: e * ratio, lambda t: t / ratio))
            second.set_xlabel(f"NTK time t  (t = {ratio:.3g} × epoch)", fontsize=9)
            if single:
                second.set_xticks([low * ratio], [f"{low * ratio:g}"])
                second.xaxis.set_minor_locator(NullLocator())
            second.tick_params(labelsize=8)

    handles: list[tuple[Any, str]] = [
        (Line2D([], [], color=colour, linewidth=3), label) for colour, label in zip(shades, labels, strict=True)
    ]
    if band:
        handles.append((Patch(color="0.5", alpha=0.3, linewidth=0), "gradient cosine,\nquartiles q25-q75"))
    for _, name, style, width, alpha, mark in _TRANSFER_ACCURACIES if nets else ():
        line = Line2D([], [], color="0.2", ls=style, linewidth=width, alpha=alpha, marker=mark if short else "")
        line.set_markerfacecolor("0.2" if style == "-" else "white")
        handles.append((line, f"net: {name}"))
    if kernel_robust:
        line = Line2D([], [], color="black", ls=_KERNEL_STYLE, linewidth=1.6, marker=kernel_marker, mfc="white")
        handles.append((line, "NTK machine:\nits own attack"))
    if kernel_clean:
        line = Line2D([], [], color="0.45", ls=(0, (1, 1.6)), linewidth=1.1, marker=kernel_marker, mfc="white")
        handles.append((line, "NTK machine: clean"))
    _legend(fig, extra=handles)
    attack = " ".join(p for p in (_plain(method).upper(), _budget(eps)) if p)
    _heading(fig, f"Two-layer nets and their NTK, {attack} (TK fig. 4, supp. fig. 1a)", subtitle)
    _save(fig, path)


def gradient_pictures(
    image: np.ndarray,
    rows: Sequence[tuple[str, np.ndarray]],
    epochs: Sequence[int],
    path: Path,
    *,
    subtitle: str = "",
) -> None:
    """Loss gradients of one test image during training (TK supp. fig. 1b): ``image`` (C, H, W)
    in [0, 1], ``rows`` (label, gradients (len(epochs), C, H, W)), e.g. the nets of width 10³
    and 10⁴ and the NTK; one column per epoch, the image left of the first row. Grey gradients
    on a diverging map centred at 0, colour ones rescaled to [0, 1], each picture on its own scale."""
    plt = _pyplot()
    image = np.asarray(image, dtype=np.float64)
    for label, gradients in rows:
        if np.asarray(gradients).shape[0] != len(epochs):
            raise ValueError(f"{label}: {np.asarray(gradients).shape[0]} gradients for {len(epochs)} epochs")
    fig, axes = _grid(plt, max(len(rows), 1), 1 + max(len(epochs), 1), 1.75)
    fig.set_figheight(fig.get_figheight() + 0.7)
    fig.set_layout_engine("compressed")  # packs the square pictures without constrained's gaps
    for r in range(axes.shape[0]):
        ax = axes[r, 0]
        if r == 0:
            _show_image(ax, image)
            ax.set_title("input", fontsize=9)
        else:  # blank, but keeps its y label: the row's name
            ax.set_xticks([])
            ax.set_yticks([])
            ax.patch.set_visible(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
        if r < len(rows):
            ax.set_ylabel(_plain(rows[r][0]), fontsize=10, fontweight="bold")
    for r, (_, gradients) in enumerate(rows):
        for c, epoch in enumerate(epochs):
            ax = axes[r, c + 1]
            _show_gradient(ax, np.asarray(gradients[c], dtype=np.float64))
            if r == 0:
                ax.set_title(f"epoch {epoch}", fontsize=9)
    if not rows or not len(epochs):
        for ax in axes[:, 1:].ravel():
            _empty(ax, "no gradients")
    if image.shape[0] == 1:
        key = "red: raising the pixel raises the loss, blue: lowers it; each picture on its own scale"
    else:
        key = "colour gradients: each picture's channels rescaled to [0, 1] together"
    fig.supxlabel(textwrap.fill(key, max(40, int(15 * fig.get_figwidth()))), fontsize=8, color="0.35")
    _heading(fig, "Input gradients of the loss during training (TK supp. fig. 1b)", subtitle)
    _save(fig, path)


_COLUMN_WRAP = 22  # characters per line of a column label of ``transfer_heatmap``


def _annotated_heatmap(
    fig: Any, ax: Any, values: np.ndarray, columns: Sequence[str], cmap_name: str, label: str, *, extend: str
) -> None:
    """``values`` (R, K) on [0, 1] colours (NaN light grey with "–"), the value in each cell in
    black or white by the cell's lightness; columns named below, rotated when long."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    cmap = colormaps[cmap_name].with_extremes(bad="0.9")
    norm = Normalize(0.0, 1.0)
    finite = np.isfinite(values)
    shown = np.ma.masked_array(np.where(finite, values, 0.0), mask=~finite)
    mesh = ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    rows, cols = values.shape
    size = 8.5 if cols <= 10 else 7.5
    for i in range(rows):
        for j in range(cols):
            if not finite[i, j]:
                ax.text(j, i, "–", ha="center", va="center", fontsize=size, color="0.45")
                continue
            r, g, b, _ = cmap(norm(float(np.clip(values[i, j], 0.0, 1.0))))
            ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "black"
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=size, color=ink)
    names = [textwrap.fill(_plain(c), _COLUMN_WRAP, break_on_hyphens=False) for c in columns]
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
    title: str = "Accuracy of each target model on adversarial examples from each source",
) -> None:
    """Transfer of adversarial examples (TK sec. 3.2, LOO sec. 5): ``accuracy`` (R, K) of each
    target (row) on the examples of each attack source (column), NaN where not applicable; each
    cell annotated, dark = low accuracy = strong attack. ``transferability`` (column labels,
    τ (R, K′)) adds a panel of τ (LOO sec. 5: 1 = as strong as the target's own attack, 0 = no
    transfer), colours clipped to [0, 1], the annotations not."""
    plt = _pyplot()
    accuracy = np.atleast_2d(np.asarray(accuracy, dtype=np.float64))
    if accuracy.ndim != 2 or accuracy.shape != (len(row_labels), len(column_labels)):
        raise ValueError(f"accuracy has shape {accuracy.shape}, not ({len(row_labels)}, {len(column_labels)})")
    panels: list[tuple[Sequence[str], np.ndarray, str, str, str, str]] = [
        (column_labels, accuracy, "magma", "accuracy  (low = strong attack)", "accuracy", "neither")
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
        panels.append((tau_columns, tau, "Blues", "transferability τ", "transferability τ", extend))
    cell_w, cell_h = 0.6, 0.42
    row_w = 0.3 + 0.075 * max((len(str(r)) for r in row_labels), default=1)
    col_h = 0.3 + 0.05 * max((min(len(str(c)), _COLUMN_WRAP) for p in panels for c in p[0]), default=1)
    widths = [max(len(p[0]), 1) for p in panels]
    panel_h = cell_h * max(len(row_labels), 1) + col_h
    # many sources: the panels one above the other, so the figure keeps a printable width
    stacked = sum(widths) > 16
    if stacked:
        fig_w = max(5.5, row_w + cell_w * max(widths) + 1.7)
        fig_h = max(3.0, len(panels) * (panel_h + 0.6) + 0.9)
        fig, axes = plt.subplots(len(panels), 1, figsize=(fig_w, fig_h), squeeze=False, layout="constrained")
        panel_axes = list(axes[:, 0])
    else:
        fig_w = max(5.5, row_w + sum(cell_w * w + 1.3 for w in widths) + 0.4)
        fig_h = max(3.0, panel_h + 1.3)
        fig, axes = plt.subplots(
            1, len(panels), figsize=(fig_w, fig_h), squeeze=False, width_ratios=widths, layout="constrained"
        )
        panel_axes = list(axes[0])
    for k, (ax, (columns, values, cmap, bar_label, panel_title, extend)) in enumerate(
        zip(panel_axes, panels, strict=True)
    ):
        _annotated_heatmap(fig, ax, values, columns, cmap, bar_label, extend=extend)
        labelled = stacked or k == 0
        ax.set_yticks(np.arange(len(row_labels)), [_plain(r) for r in row_labels] if labelled else [], fontsize=9)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("attack source (examples generated on)", fontsize=9)
        if labelled:
            ax.set_ylabel("target (evaluated model)", fontsize=9)
    _heading(fig, _plain(title), subtitle)
    _save(fig, path)


_SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def transferability_curves(
    series: Sequence[tuple[str, Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
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
        _style_epoch_axes(ax, "transferability τ", "examples of each source checkpoint, evaluated on the target")
    else:
        _empty(ax, "no transferability values")
        ax.set_ylabel("transferability τ")
    ax.set_xlabel("source epoch t′")
    _legend(fig, extra=handles)
    _heading(fig, "Adversarial transferability to the target (LOO fig. 3)", subtitle)
    _save(fig, path)
