"""The shared look of every figure: pyplot, image panels, titles and notes, colours, lines, axes, legends.

Private to ``plots``: the figure modules import these helpers by name. matplotlib is imported
only when a figure is drawn (``_pyplot``), with the Agg backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.plots.types import KernelKind

_RUN_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
"""Okabe & Ito's colour-blind-safe palette (blue, vermillion, green, purple, orange, sky blue, black)."""

_MANY_POINTS = 40  # no markers on longer series
_SWITCH_STYLE = (0, (1, 2))  # dotted vertical line at a run's switch epoch
_DECAY_STYLE = "-."  # grey dash-dot vertical line where a learning rate decays

KernelStyle = tuple[KernelKind, str, str, str]
"""How a kernel's series are drawn: (kind, legend name, line style, marker)."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- pictures ----------------------------------------------------------------------------------


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


def _gradient_key(fig: Any, channels: int, raised: str, extra: str = "") -> None:
    """The key of ``_show_gradient``'s pictures under the figure: what red and blue mean (of the
    ``raised`` quantity) for grey images, the rescaling for colour ones; ``extra`` after it."""
    if channels == 1:
        key = f"red: raising the pixel raises {raised}, blue: lowers it; each picture on its own scale"
    else:
        key = "colour gradients: each picture's channels rescaled to [0, 1] together"
    key += f"; {extra}" if extra else ""
    fig.supxlabel(textwrap.fill(key, max(40, int(15 * fig.get_figwidth()))), fontsize=8, color="0.35")


def _grid(plt: Any, rows: int, cols: int, size: float) -> tuple[Any, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False, layout="constrained")
    return fig, axes


# -- text --------------------------------------------------------------------------------------


def _plain(text: Any) -> str:
    """User text (labels, subtitles) with ``$`` escaped, so that matplotlib does not read mathtext."""
    return str(text).replace("$", r"\$")


_TITLE_SIZE = 11.0  # the figure's one-line title
_SUBTITLE_SIZE = 8.5  # the details under it


def _even_lines(text: str, width: int) -> list[str]:
    """``text`` in as few lines of at most ``width`` characters as it needs (a word longer than
    that on a line of its own), the lines of even length: the narrowest width that needs no more
    lines, so no lone last word ("... epoch" and then "10")."""
    options: dict[str, Any] = {"break_long_words": False, "break_on_hyphens": False}
    lines = textwrap.wrap(text, width, **options)
    if len(lines) < 2:
        return lines
    for narrower in range(-(-len(text) // len(lines)), width):  # no narrower width holds it
        even = textwrap.wrap(text, narrower, **options)
        if len(even) <= len(lines):
            return even
    return lines


def _heading(fig: Any, heading: str, subtitle: str = "", *, ref: str = "") -> None:
    """A short title of one line (``heading``, bold) and under it, in smaller grey type, the
    details: ``ref`` (the paper's figure) and ``subtitle`` (what was run, user text), wrapped
    to the figure's width. The details sit in lines the title reserves below itself, so that
    constrained layout keeps the panels clear of them."""
    from matplotlib.text import Annotation

    inches = fig.get_figwidth()
    title = textwrap.fill(heading, width=max(30, int(11 * inches)), break_on_hyphens=False)
    details = " · ".join(p for p in (ref, _plain(subtitle)) if p)
    lines = _even_lines(details, max(40, int(16 * inches))) if details else []
    # blank title lines that hold the detail lines (plus a small gap above them)
    reserve = int(np.ceil((len(lines) * _SUBTITLE_SIZE + 0.1 * _TITLE_SIZE) / _TITLE_SIZE)) if lines else 0
    suptitle = fig.suptitle(title + "\n" * reserve, fontsize=_TITLE_SIZE, fontweight="bold", va="top")
    if lines:
        note = Annotation(
            "\n".join(lines),
            xy=(0.5, 0.0),
            xycoords=suptitle,
            xytext=(0, 1),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=_SUBTITLE_SIZE,
            color="0.3",
        )
        note.set_gid("subtitle")
        fig.add_artist(note)


def _notes(fig: Any, notes: Sequence[tuple[str, str]], *, said: Sequence[str] = ()) -> None:
    """What a figure could not draw, (what, why) pairs grouped by reason, in small grey type
    under the panels; ``said``: other sentences about what is drawn, before them."""
    reasons: dict[str, list[str]] = {}
    for what, why in notes:
        if what not in reasons.setdefault(why, []):
            reasons[why].append(what)
    if reasons or said:
        width = max(60, int(15 * fig.get_figwidth()))
        lines = [textwrap.fill(_plain(sentence), width) for sentence in said]
        lines += [
            textwrap.fill(_plain(f"not shown: {', '.join(whats)} ({why})"), width) for why, whats in reasons.items()
        ]
        text = "\n".join(lines[:5]) + (f"\n(and {len(lines) - 5} more)" if len(lines) > 5 else "")
        fig.supxlabel(text, fontsize=7.5, color="0.35")


def _empty(ax: Any, text: str) -> None:
    """An empty panel saying why, its text wrapped to the panel's width (9 pt: about 12 characters
    an inch, with a margin; 38 characters ran into the borders of a 3-inch panel), at the panel's
    centre whatever its data limits (in data coordinates a bar panel of 6 nets put it 90% down)."""
    width = ax.get_position().width * ax.figure.get_figwidth()
    chars = int(np.clip(10 * width, 18, 38))
    wrapped = textwrap.fill(_plain(text), chars)
    ax.text(0.5, 0.5, wrapped, ha="center", va="center", fontsize=9, color="0.35", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=150)
    _pyplot().close(fig)


# -- colours and lines -------------------------------------------------------------------------


def _colour(i: int) -> str:
    return _RUN_COLOURS[i % len(_RUN_COLOURS)]


def _shade(colour: str, amount: float) -> tuple[float, float, float]:
    """``colour`` blended towards white (amount > 0) or black (amount < 0) by |amount|."""
    from matplotlib.colors import to_rgb

    rgb = np.asarray(to_rgb(colour))
    target = 1.0 if amount > 0 else 0.0
    r, g, b = rgb + abs(amount) * (target - rgb)
    return float(r), float(g), float(b)


def _floats(values: Any) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64).reshape(-1)


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


_BAND_ALPHA = 0.25  # the mean ± std band of the runs of several seeds


def _band(ax: Any, x: Any, mean: Any, spread: Any, lowest: Any, colour: Any, *, log: bool = False) -> None:
    """The band mean ± spread behind a curve of several seeds; on a log axis its floor is the
    lowest seed's value where mean − spread is not positive."""
    x, mean, spread, lowest = _floats(x), _floats(mean), _floats(spread), _floats(lowest)
    low, high = mean - spread, mean + spread
    keep = np.isfinite(x) & np.isfinite(low) & np.isfinite(high)
    if log:
        low = np.where(low > 0, low, lowest)
        keep &= (low > 0) & (high > 0)
    if keep.any():
        ax.fill_between(x[keep], low[keep], high[keep], color=colour, alpha=_BAND_ALPHA, linewidth=0, zorder=1)


def _band_handle() -> Any:
    """The legend entry of the seed bands."""
    from matplotlib.patches import Patch

    return Patch(facecolor="0.45", alpha=_BAND_ALPHA + 0.1, edgecolor="none")


# -- axes --------------------------------------------------------------------------------------


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


def _tick_number(value: float, *, plain: bool) -> str:
    """A tick of a log axis: a plain number (0.002, 0.5, 200) or m×10ᵏ (2×10⁻⁶)."""
    if not np.isfinite(value) or value <= 0:
        return ""
    if plain:
        return np.format_float_positional(value, precision=3, unique=True, fractional=False, trim="-")
    exponent = int(np.floor(np.log10(value) + 1e-9))
    mantissa = round(value / 10.0**exponent, 2)
    if mantissa >= 10:  # 9.999e-3 rounds to 10: write 10⁻² rather than 10×10⁻³
        exponent, mantissa = exponent + 1, 1
    power = rf"10^{{{exponent}}}"
    return rf"${power}$" if mantissa == 1 else rf"${mantissa:g}\times{power}$"


def _readable_log_axis(ax: Any) -> None:
    """A log y axis whose ticks all read alike, no offset text: plain numbers when the axis lies
    within 0.001 to 10⁵, m×10ᵏ otherwise; within less than a factor of 30, minor ticks at 2, 3
    and 5 (every minor tick within a factor of 3) labelled too. The limits are read when the
    ticks are drawn, so a caller's later ``set_ylim`` or data is followed."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.grid(alpha=0.12, which="minor")

    def plain() -> bool:
        low, high = ax.get_ylim()
        return 1e-3 <= low and high <= 1e5

    def minor(value: float, _: Any) -> str:
        low, high = ax.get_ylim()
        if not (low > 0 and high / low < 30):
            return ""
        every = high / low <= 3  # label every minor tick only on a very short axis
        mantissa = round(value / 10 ** np.floor(np.log10(value)), 6)
        return _tick_number(value, plain=plain()) if every or mantissa in (2.0, 3.0, 5.0) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _tick_number(value, plain=plain())))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


# -- legends -----------------------------------------------------------------------------------


def _legend(
    fig: Any,
    runs: Sequence[tuple[int, str]] = (),
    kinds: Sequence[KernelStyle] = (),
    *,
    switch: bool = False,
    decay: bool = False,
    extra: Sequence[tuple[Any, str]] = (),
) -> None:
    """One legend for the figure, right of the panels: runs (index, label) by colour, kernels by
    line style, a switch-epoch line, a learning-rate decay line, then ``extra`` (handle, label) pairs."""
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
    if decay:
        handles.append(Line2D([], [], color="0.55", ls=_DECAY_STYLE, linewidth=0.9))
        labels.append("learning-rate decay\n(after this epoch)")
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
