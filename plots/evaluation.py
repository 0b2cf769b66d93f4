"""Robust accuracy of trained nets under RobustBench's attacks (``ntkrobust evaluate``).

- ``robust_accuracy_bars``: one group of bars per net, one bar per measure (clean, PGD-20,
  PGD-100, CW-100, AutoAttack; the attacks the record holds) and a line at the net's worst case.
  A net whose AutoAttack accuracy lies far below the gradient attacks' is marked: its gradient
  attacks were misled (gradient masking; Croce & Hein 2020, Athalye et al. 2018). Inputs:
  ``plots.types.EvaluatedNet``, the ``nets`` of ``evaluate``'s results.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.plots._style import _colour, _empty, _heading, _legend, _plain, _pyplot, _save
from ntkrobust.plots.types import EvaluatedNet

__all__ = ["robust_accuracy_bars"]

#: the measures in the order drawn (top to bottom in a group), with their names in the legend
MEASURES = (
    ("clean", "clean"),
    ("pgd-20", "PGD-20"),
    ("pgd-100", "PGD-100"),
    ("cw-100", "CW-100 (ℓ∞)"),
    ("autoattack", "AutoAttack"),
)
#: each measure's colour, by its place in MEASURES: the same in every figure, whichever attacks a
#: record holds (by its place among the measures present, PGD-100 took CW-100's colour where
#: PGD-20 was not run)
_COLOURS = {key: _colour(i) for i, (key, _) in enumerate(MEASURES)}
_MASKING = "#D55E00"  # vermillion: the mark of a suspected masking
_BAR = 0.8  # height of a group's bars together (groups are 1 apart)
_THIN = 0.02  # a bar narrower than this names its measure beside its value


def robust_accuracy_bars(nets: Sequence[EvaluatedNet], path: Path, *, subtitle: str = "") -> None:
    """Accuracy of every net under every measure its record holds, as grouped horizontal bars
    with the value at each bar's end, and the worst case over the attacks as a vertical black
    line across the net's group; a net with ``masking_suspected`` has its name in vermillion
    with "gradient masking suspected" under it."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = [(key, name) for key, name in MEASURES if any(key in (net.get("accuracy") or {}) for net in nets)]
    fig, ax = plt.subplots(figsize=(9.0, 1.6 + (0.3 * len(present) + 0.35) * max(len(nets), 1)), layout="constrained")
    if not nets or not present:
        _empty(ax, "no net was evaluated")
    height = _BAR / max(len(present), 1)
    for row, net in enumerate(nets):
        accuracy = net.get("accuracy") or {}
        for i, (key, name) in enumerate(present):
            value = accuracy.get(key)
            if value is None or not np.isfinite(value):
                continue
            y = row + (i - (len(present) - 1) / 2) * height
            ax.barh(y, value, height=height * 0.92, color=_COLOURS[key])
            # a bar too thin to show its colour names its measure: four bare "0.000" said not which
            named = f" {_plain(name)}" if value < _THIN else ""
            ax.text(value + 0.01, y, f"{value:.3f}{named}", va="center", fontsize=7)
        worst = accuracy.get("worst_case")
        if worst is not None and np.isfinite(worst):
            ax.plot([worst, worst], [row - _BAR / 2, row + _BAR / 2], color="black", linewidth=1.4)
            ax.text(1.095, row, f"worst\n{worst:.3f}", ha="right", va="center", fontsize=7)
    ax.set_yticks(range(len(nets)), [_net_label(net) for net in nets], fontsize=8)
    for tick, net in zip(ax.get_yticklabels(), nets, strict=True):
        if net.get("masking_suspected"):
            tick.set_color(_MASKING)
    ax.invert_yaxis()  # the first net on top, its measures in the legend's order
    ax.set_xlim(0, 1.1)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("accuracy on the test points (share still correct)", fontsize=9)
    ax.grid(axis="x", color="0.9")
    ax.set_axisbelow(True)
    extra: list[tuple[Any, str]] = [(Patch(color=_COLOURS[key]), name) for key, name in present]
    if any((net.get("accuracy") or {}).get("worst_case") is not None for net in nets):
        extra.append((Line2D([], [], color="black", linewidth=1.4), "worst case\nover the attacks"))
    _legend(fig, extra=extra)
    ran = {key for key, _ in present}
    _heading(fig, "Robust accuracy under RobustBench's attacks", subtitle, ref=_references(ran))
    _save(fig, path)


def _references(measures: set[str]) -> str:
    """The papers of the attacks drawn: AutoAttack's only when it ran."""
    papers = ["PGD: Madry et al. 2018"] if measures & {"pgd-20", "pgd-100"} else []
    papers += ["CW loss: Carlini & Wagner 2017"] if "cw-100" in measures else []
    papers += ["AutoAttack: Croce & Hein 2020"] if "autoattack" in measures else []
    return "; ".join(papers)


def _net_label(net: EvaluatedNet) -> str:
    label = _plain(net.get("label") or "?")
    return label + "\ngradient masking suspected" if net.get("masking_suspected") else label
