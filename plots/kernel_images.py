"""Kernel matrices as pictures, their examples sorted by class (TK fig. 6 left).

- ``kernel_image``: one (N, N) kernel, class blocks outlined and named;
- ``_class_sorted`` / ``_class_blocks``: the sorting and the block outlines, shared with the
  training-dynamics grid of kernels (``plots.dynamics_kernels.kernel_images_grid``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.plots._style import _heading, _plain, _pyplot, _save

__all__ = ["kernel_image"]


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
    outlined and named. Block structure along the diagonal is class alignment of the kernel.
    ``title`` is the figure's one-line title, ``subtitle`` the details under it."""
    kernel, labels = np.asarray(kernel), np.asarray(labels)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or labels.shape != (kernel.shape[0],):
        raise ValueError(f"a square (N, N) kernel and N labels, got a kernel {kernel.shape} and labels {labels.shape}")
    # an empty kernel failed in max() of no names, a label past the names with an IndexError
    if (
        labels.size == 0
        or not np.issubdtype(labels.dtype, np.integer)
        or not 0 <= labels.min() <= labels.max() < len(class_names)
    ):
        raise ValueError(f"labels must be class indices into the {len(class_names)} class names, at least one point")
    plt = _pyplot()
    sorted_kernel, counts, edges = _class_sorted(kernel, labels, len(class_names))
    fig, ax = plt.subplots(figsize=(6.2, 5.4), layout="constrained")
    image = ax.imshow(sorted_kernel, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.85, label="Θ(x, x′)")
    _class_blocks(ax, counts, edges, class_names)
    ax.set_xlabel("point x′, sorted by class", fontsize=9)
    ax.set_ylabel("point x, sorted by class", fontsize=9)
    _heading(fig, _plain(title), subtitle, ref="TK fig. 6 left: examples sorted by class")
    _save(fig, path)
