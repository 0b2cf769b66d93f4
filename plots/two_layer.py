"""Two-layer nets and their NTK (TK sec. 3.2, supp. C), from plain dicts and arrays.

- ``two_layer_transfer``: gradient cosine between two-layer nets and their NTK, and the nets'
  accuracy under their own and the NTK's attacks, against the epoch (TK fig. 4, supp. fig. 1a),
  from per-net dicts of per-epoch records (``TwoLayerNet``) and the NTK's (``TwoLayerKernel``);
- ``gradient_pictures``: loss gradients of one image per model and epoch (TK supp. fig. 1b).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust._numbers import pixel_radius
from ntkrobust.plots._style import (
    _colour,
    _empty,
    _floats,
    _gradient_key,
    _grid,
    _heading,
    _legend,
    _line,
    _plain,
    _pyplot,
    _save,
    _shade,
    _show_gradient,
    _show_image,
)
from ntkrobust.plots.types import TwoLayerKernel, TwoLayerNet

__all__ = ["gradient_pictures", "two_layer_transfer"]

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
    return f"ε = {pixel_radius(eps)}"


def _seed_shades(nets: Sequence[TwoLayerNet]) -> tuple[list[tuple[float, float, float]], list[str]]:
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


def _epoch_records(
    records: Iterable[Mapping[str, Any]] | None, keys: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The epochs ≥ 1 of per-epoch records (a log axis) and the values of ``keys`` there."""
    records = list(records or [])
    epochs = _floats([r.get("epoch") for r in records])
    keep = np.isfinite(epochs) & (np.nan_to_num(epochs, nan=0.0) >= 1)
    values = {key: _floats([r.get(key) for r in records])[keep] for key in keys}
    return epochs[keep], values


def _time_per_epoch(nets: Sequence[TwoLayerNet], kernel: TwoLayerKernel | None) -> float | None:
    """The ratio t / epoch of the aligned NTK time (median over all records), None if unknown."""
    records = [r for net in nets for r in net.get("epochs") or []] + list((kernel or {}).get("epochs") or [])
    epochs = _floats([r.get("epoch") for r in records])
    times = _floats([r.get("time") for r in records])
    ok = np.isfinite(epochs) & np.isfinite(times)
    ok[ok] &= (epochs[ok] > 0) & (times[ok] > 0)
    return float(np.median(times[ok] / epochs[ok])) if ok.any() else None


def two_layer_transfer(
    nets: Sequence[TwoLayerNet],
    kernel: TwoLayerKernel | None,
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
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7.4, 6.4), sharex=True, height_ratios=[1.0, 1.35], layout="constrained"
    )
    shades, labels = _seed_shades(nets)
    all_epochs, lowest, band, cosines_seen, short = _draw_nets(top, bottom, nets, shades)
    kx, kvalues = _epoch_records((kernel or {}).get("epochs"), ["robust_accuracy", "clean_accuracy"])
    all_epochs.append(kx)
    kernel_robust = np.isfinite(kvalues["robust_accuracy"]).any()
    kernel_clean = np.isfinite(kvalues["clean_accuracy"]).any()
    kernel_marker = "D" if kx.size < _SHORT else ""
    _line(bottom, kx, kvalues["robust_accuracy"], "black", _KERNEL_STYLE, kernel_marker, linewidth=1.6, zorder=4)
    _line(bottom, kx, kvalues["clean_accuracy"], "0.45", (0, (1, 1.6)), kernel_marker, linewidth=1.1, zorder=2)

    epochs = np.concatenate(all_epochs) if all_epochs else np.zeros(0)
    _two_layer_axes(top, bottom, epochs, lowest, cosines_seen=cosines_seen, ratio=_time_per_epoch(nets, kernel))
    handles: list[tuple[Any, str]] = _two_layer_handles(shades, labels, band=band, short=short, nets=bool(nets))
    handles += _kernel_handles(kernel_marker, robust=bool(kernel_robust), clean=bool(kernel_clean))
    _legend(fig, extra=handles)
    attack = " ".join(p for p in (_plain(method).upper(), _budget(eps)) if p)
    _heading(fig, f"Two-layer nets and their NTK, {attack}", subtitle, ref="TK fig. 4, supp. fig. 1a")
    _save(fig, path)


def _draw_nets(
    top: Any, bottom: Any, nets: Sequence[TwoLayerNet], shades: Sequence[tuple[float, float, float]]
) -> tuple[list[np.ndarray], float, bool, bool, bool]:
    """Each net's gradient cosine (top, its q25-q75 band shaded) and accuracies (bottom) in its
    shade; returns the epochs drawn per net, the lowest cosine or quartile (0 at most), and
    whether a band, a finite cosine and a short series with markers were drawn."""
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
    return all_epochs, lowest, band, cosines_seen, short


def _two_layer_axes(
    top: Any, bottom: Any, epochs: np.ndarray, lowest: float, *, cosines_seen: bool, ratio: float | None
) -> None:
    """Titles and labels; the shared log epoch axis (one plain tick for a single epoch), the
    cosine range down to ``lowest``, and the aligned NTK time t = ``ratio`` × epoch on top."""
    from matplotlib.ticker import NullLocator

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
        return
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
    if ratio is not None:
        second = top.secondary_xaxis("top", functions=(lambda e: e * ratio, lambda t: t / ratio))
        second.set_xlabel(f"NTK time t  (t = {ratio:.3g} × epoch)", fontsize=9)
        if single:
            second.set_xticks([low * ratio], [f"{low * ratio:g}"])
            second.xaxis.set_minor_locator(NullLocator())
        second.tick_params(labelsize=8)


def _two_layer_handles(
    shades: Sequence[tuple[float, float, float]], labels: Sequence[str], *, band: bool, short: bool, nets: bool
) -> list[tuple[Any, str]]:
    """Legend entries of the nets: one colour per net, the quartile band, the accuracy line styles."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[tuple[Any, str]] = [
        (Line2D([], [], color=colour, linewidth=3), label) for colour, label in zip(shades, labels, strict=True)
    ]
    if band:
        handles.append((Patch(color="0.5", alpha=0.3, linewidth=0), "gradient cosine,\nquartiles q25-q75"))
    for _, name, style, width, alpha, mark in _TRANSFER_ACCURACIES if nets else ():
        line = Line2D([], [], color="0.2", ls=style, linewidth=width, alpha=alpha, marker=mark if short else "")
        line.set_markerfacecolor("0.2" if style == "-" else "white")
        handles.append((line, f"net: {name}"))
    return handles


def _kernel_handles(marker: str, *, robust: bool, clean: bool) -> list[tuple[Any, str]]:
    """Legend entries of the NTK machine's accuracies, those that were drawn."""
    from matplotlib.lines import Line2D

    handles: list[tuple[Any, str]] = []
    if robust:
        line = Line2D([], [], color="black", ls=_KERNEL_STYLE, linewidth=1.6, marker=marker, mfc="white")
        handles.append((line, "NTK machine:\nits own attack"))
    if clean:
        line = Line2D([], [], color="0.45", ls=(0, (1, 1.6)), linewidth=1.1, marker=marker, mfc="white")
        handles.append((line, "NTK machine: clean"))
    return handles


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
            # wrapped to the row's height: "net, width 500, seed 0" ran into the next row's name
            ax.set_ylabel(textwrap.fill(_plain(rows[r][0]), 18), fontsize=10, fontweight="bold")
    for r, (_, gradients) in enumerate(rows):
        for c, epoch in enumerate(epochs):
            ax = axes[r, c + 1]
            _show_gradient(ax, np.asarray(gradients[c], dtype=np.float64))
            if r == 0:
                ax.set_title(f"epoch {epoch}", fontsize=9)
    if not rows or not len(epochs):
        for ax in axes[:, 1:].ravel():
            _empty(ax, "no gradients")
    _gradient_key(fig, image.shape[0], "the loss")
    _heading(fig, "Input gradients of the loss during training", subtitle, ref="TK supp. fig. 1b")
    _save(fig, path)
