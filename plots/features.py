"""Figures of the kernel's eigen-features (TK sec. 4, supp. A, D.3).

- ``robustness_usefulness``: features in robustness-usefulness space, fig. 2 right and supp.
  figs. 2-3 (axes [0, 1], larger and darker markers for larger eigenvalues, chance marked);
- ``feature_gallery``: input gradients of chosen features of one image, one row per
  architecture: the top features (fig. 2 left) or the useful, non-robust ones (fig. 5);
- ``robust_only_curves``: accuracy of robust-features-only kernels against r, supp. figs. 4-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ntkrobust.plots._style import _grid, _pyplot, _save, _show_gradient, _show_image, _subtitle
from ntkrobust.plots.types import FeaturePanel, GalleryRow, RobustOnlyPanel

__all__ = ["feature_gallery", "robust_only_curves", "robustness_usefulness"]


def robustness_usefulness(
    panels: Sequence[FeaturePanel], path: Path, *, subtitle: str = "", useful_non_robust_below: float | None = None
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
    rows: Sequence[GalleryRow],
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


def robust_only_curves(panels: Sequence[RobustOnlyPanel], path: Path, *, subtitle: str = "") -> None:
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
