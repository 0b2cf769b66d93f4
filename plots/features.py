"""Figures of the kernel's eigen-features (TK sec. 4, supp. A, D.3).

- ``robustness_usefulness``: features in robustness-usefulness space, fig. 2 right and supp.
  figs. 2-3 (axes zoomed to the features, larger and darker markers for larger eigenvalues,
  chance marked);
- ``feature_gallery``: input gradients of chosen features of one image, one row per
  architecture: the top features (fig. 2 left) or the useful, non-robust ones (fig. 5);
- ``robust_only_curves``: accuracy of robust-features-only kernels against r, supp. figs. 4-5
  (r = n, all features, named "all (n)").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.plots._style import _gradient_key, _grid, _heading, _pyplot, _save, _show_gradient, _show_image
from ntkrobust.plots.types import FeaturePanel, GalleryRow, RobustOnlyPanel

__all__ = ["feature_gallery", "robust_only_curves", "robustness_usefulness"]


def _feature_limits(panels: Sequence[FeaturePanel]) -> tuple[tuple[float, float], tuple[float, float]]:
    """x (robustness) and y (usefulness) limits of every panel: the features of all panels and
    the chance lines, padded, at least 0.1 wide, within [0, 1] (with a margin)."""

    def limits(values: np.ndarray) -> tuple[float, float]:
        values = values[np.isfinite(values)]
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        if high - low < 0.1:
            centre = (low + high) / 2
            low, high = centre - 0.05, centre + 0.05
        pad = 0.08 * (high - low)
        return max(-0.02, low - pad), min(1.02, high + pad)

    robustness = [np.asarray(scores.robustness, dtype=np.float64).ravel() for _, scores in panels]
    usefulness = [np.asarray(scores.usefulness, dtype=np.float64).ravel() for _, scores in panels]
    chance = [np.array([float(scores.chance)]) for _, scores in panels]
    x = limits(np.concatenate([np.zeros(0), *robustness]))
    return x, limits(np.concatenate([np.zeros(0), *usefulness, *chance]))


def _chance_label_place(scores: Any, xlim: tuple[float, float], ylim: tuple[float, float]) -> tuple[float, str]:
    """Where the chance line's label covers no feature: (centre in axes fractions, vertical
    alignment), from the right end of the line to the left, above it before below it."""
    x = (np.asarray(scores.robustness, dtype=np.float64) - xlim[0]) / (xlim[1] - xlim[0])
    y = (np.asarray(scores.usefulness, dtype=np.float64) - ylim[0]) / (ylim[1] - ylim[0])
    chance = (float(scores.chance) - ylim[0]) / (ylim[1] - ylim[0])
    for centre in (0.9, 0.7, 0.5, 0.3, 0.1):
        across = (x > centre - 0.14) & (x < centre + 0.14)  # the label's width and a marker's radius
        for va, low, high in (("bottom", chance - 0.02, chance + 0.08), ("top", chance - 0.08, chance + 0.02)):
            if not (across & (y > low) & (y < high)).any():
                return centre, va
    return 0.9, "bottom"


def robustness_usefulness(
    panels: Sequence[FeaturePanel], path: Path, *, subtitle: str = "", useful_non_robust_below: float | None = None
) -> None:
    """One panel per architecture: ``panels`` holds (name, FeatureScores) pairs. Every panel is
    zoomed to the features of all panels, the chance line kept in view (``_feature_limits``)."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm
    from matplotlib.transforms import blended_transform_factory

    fig, axes = _grid(plt, 1, len(panels), 4.2)
    fig.set_figwidth(fig.get_figwidth() + 0.8)
    fig.set_figheight(fig.get_figheight() + 0.4)
    xlim, ylim = _feature_limits(panels)
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
        x, va = _chance_label_place(scores, xlim, ylim)
        along = blended_transform_factory(ax.transAxes, ax.transData)  # x in the axes, y in the data
        ax.text(x, scores.chance, "chance", transform=along, ha="center", va=va, fontsize=8, color="0.3")
        if useful_non_robust_below is not None:  # the useful, non-robust corner (supp. A, item 3)
            ax.fill_between([0, useful_non_robust_below], scores.chance, 1.0, color="tab:red", alpha=0.08, zorder=0)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_xlabel("robustness (accuracy under attack on the feature)")
        ax.set_ylabel("usefulness (held-out accuracy)")
        rho = scores.spearman_index_robustness()
        ax.set_title(
            f"{name}: first {scores.index.size} features\nSpearman(index, robustness) = {rho:.2f}", fontsize=10
        )
        ax.grid(alpha=0.3)
        fig.colorbar(points, ax=ax, fraction=0.046, pad=0.04, label="eigenvalue")
    ref = "TK fig. 2 right, supp. figs. 2-3; larger, darker markers: larger eigenvalues"
    if useful_non_robust_below is not None:
        ref += f"; shaded: useful, robustness ≤ {useful_non_robust_below:g}"
    _heading(fig, "Eigen-features: robustness and usefulness", subtitle, ref=ref)
    _save(fig, path)


def feature_gallery(
    image: np.ndarray,
    rows: Sequence[GalleryRow],
    path: Path,
    *,
    subtitle: str = "",
    heading: str = "Input gradients of eigen-features",
) -> None:
    """Rows (name, gradients (k, C, H, W), captions (k,)): the image, then each feature's gradient.

    TK fig. 2 left (the top features, one row per architecture) and fig. 5 (chosen features);
    ``heading`` names which features the figure shows.
    """
    plt = _pyplot()
    cols = 1 + max(max(g.shape[0], 1) for _, g, _ in rows)
    fig, axes = _grid(plt, len(rows), cols, 1.9)
    fig.set_figwidth(max(fig.get_figwidth(), 5.0))
    fig.set_figheight(fig.get_figheight() + 0.6)
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
    _gradient_key(
        fig, np.asarray(image).shape[0], "the feature's score", "u: usefulness, r: robustness (TK supp. A eqs. 1-2)"
    )
    _heading(fig, heading, subtitle, ref="TK fig. 2 left, fig. 5")
    _save(fig, path)


def _r_ticks(ax: Any, r: np.ndarray, everything: int | None) -> None:
    """Plain ticks on the log r axis: every r drawn where they are few and apart (at most 8, each
    at least 1.5 times the one before), else the powers of ten in range; r = ``everything`` (all
    features, the full machine) as "all (n)", any other tick within a factor 5 of it left out
    (their labels would run into each other)."""
    from matplotlib.ticker import NullFormatter

    low, high = float(r.min()), float(r.max())
    drawn = np.unique(r[r != everything] if everything is not None else r).astype(float)
    if drawn.size <= 8 and np.all(drawn[1:] >= 1.5 * drawn[:-1]):
        candidates = drawn.tolist()
    else:
        candidates = [10.0**k for k in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)]
    ticks = [
        p for p in candidates if low <= p <= high and (everything is None or not everything / 5 < p < everything * 5)
    ]
    labels = [f"{p:.0f}" for p in ticks]
    if everything is not None and np.any(r == everything):
        ticks.append(float(everything))
        labels.append(f"all ({everything})")
    ax.set_xticks(ticks, labels)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _unlabel_crowded_ticks(ax: Any) -> None:
    """Blank the labels of the r axis that would run into another as drawn (a narrow panel of
    r = 1, 2, 5, ..., 100 ran "50" into "100"). Labels are taken in turn, "all (n)" first, then
    the powers of ten, then the rest from the left, each kept when it ends or starts at least half
    its font size from every label kept before it; the ticks stay. Needs the figure drawn."""
    labels = ax.get_xticklabels()
    texts = [label.get_text() for label in labels]
    boxes = [label.get_window_extent() for label in labels]

    def rank(i: int) -> tuple[bool, bool, int]:
        power_of_ten = texts[i].isdigit() and texts[i].rstrip("0") == "1"
        return (not texts[i].startswith("all ("), not power_of_ten, i)

    kept: list[int] = []
    for i in sorted((i for i, text in enumerate(texts) if text), key=rank):
        gap = 0.5 * labels[i].get_fontsize() * ax.figure.dpi / 72
        if all(boxes[i].x0 - boxes[j].x1 >= gap or boxes[j].x0 - boxes[i].x1 >= gap for j in kept):
            kept.append(i)
    if len(kept) < sum(map(bool, texts)):
        ax.set_xticks(list(ax.get_xticks()), [text if i in kept else "" for i, text in enumerate(texts)])


def robust_only_curves(panels: Sequence[RobustOnlyPanel], path: Path, *, subtitle: str = "") -> None:
    """One panel per architecture: accuracy of f'_r against r (``RobustOnlyResult`` lists); a
    panel's optional third entry n, the number of all features, labels r = n "all (n)"."""
    plt = _pyplot()
    fig, axes = _grid(plt, 1, len(panels), 4.4)
    fig.set_figheight(fig.get_figheight() + 0.4)
    # FGSM and PGD often reach the same accuracy (a binary machine's loss is monotone along the
    # sign direction): each FGSM series is dashed, with hollow markers, over its PGD twin, so
    # that both stay visible where they coincide
    styles = [
        ("clean", "clean", "tab:blue", "-", "o"),
        ("fgsm_transfer", "FGSM from full kernel", "tab:red", "--", "s"),
        ("pgd_transfer", "PGD from full kernel", "tab:purple", "-", "D"),
        ("fgsm_own", "FGSM on f'_r (own)", "tab:orange", "--", "^"),
        ("pgd_own", "PGD on f'_r (own)", "tab:green", "-", "v"),
    ]
    for ax, (name, results, *rest) in zip(axes[0], panels, strict=True):
        r = np.array([res.r for res in results])
        for key, label, color, line, marker in styles:
            fgsm = key.startswith("fgsm")
            ax.plot(r, [getattr(res, key) for res in results], line, color=color, marker=marker, label=label,
                    ms=7 if fgsm else 4, mfc="none" if fgsm else color, zorder=3 if fgsm else 2)  # fmt: skip
        ax.set_xscale("log")
        if r.size:
            _r_ticks(ax, r, int(rest[0]) if rest and rest[0] is not None else None)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("r, most robust features kept")
        ax.set_ylabel("accuracy")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0, -1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    _heading(fig, "Robust-features-only kernels", subtitle, ref="TK supp. figs. 4-5")
    fig.draw_without_rendering()  # the layout, so the labels' drawn extents are known
    for ax in axes[0]:
        _unlabel_crowded_ticks(ax)
    _save(fig, path)
