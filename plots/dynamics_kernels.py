"""Training-dynamics figures drawn as pictures: kernels and their trajectories (TK sec. 5, LOO sec. 3).

- ``kernel_distance_heatmaps``: d(Θ_s, Θ_t) between every two tracked epochs (TK fig. 3 left);
- ``polar_trajectories``: kernel trajectories in polar space (TK fig. 3 right, supp. fig. 8);
- ``kernel_images_grid``: class-sorted kernels at initialisation and at the end (TK fig. 6 left);
- ``eigenvector_pictures``: inputs aligned with the kernel's eigenvectors (LOO fig. 4), drawn
  from arrays rather than run summaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.plots._runs import _KERNELS, _all_runs, _decay_epochs, _label
from ntkrobust.plots._style import (
    _DECAY_STYLE,
    _MANY_POINTS,
    _colour,
    _empty,
    _epoch_ticks,
    _floats,
    _grid,
    _heading,
    _legend,
    _notes,
    _plain,
    _pyplot,
    _save,
    _shade,
    _show_image,
)
from ntkrobust.plots.kernel_images import _class_blocks, _class_sorted
from ntkrobust.plots.types import RunSummary

__all__ = ["eigenvector_pictures", "kernel_distance_heatmaps", "kernel_images_grid", "polar_trajectories"]


def kernel_distance_heatmaps(runs: Sequence[RunSummary], path: Path, *, subtitle: str = "") -> None:
    """Kernel distance d(Θ_s, Θ_t) between every two tracked epochs, one panel per run (TK fig. 3
    left): a row for the C-NTK and, when tracked, one for the AE-NTK; one colour scale per row,
    shared by its runs (the AE-NTK moves several times as far: on one scale the C-NTK's row read
    as a blank). A white dash-dot cross parts the epochs before a learning-rate decay from those
    after it (``train --milestones``; RAT fig. 1a reads its second phase from these blocks)."""
    plt = _pyplot()
    kinds = [k for k in _KERNELS if any(k[0] in (run.get("dynamics") or {}) for run in runs)] or [_KERNELS[0]]
    rows, cols = len(kinds), max(len(runs), 1)
    # "compressed" packs fixed-aspect (square) panels without the gaps "constrained" leaves
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols + 1.2, 3.65 * rows + 1.0), squeeze=False, layout="compressed"
    )
    decayed: set[float] = set()
    for row, (kind, name, _, _) in enumerate(kinds):
        matrices = [
            np.asarray(run["dynamics"][kind]["distance_matrix"])
            for run in runs
            if "distance_matrix" in (run.get("dynamics") or {}).get(kind, {})
        ]
        vmax = max((float(m.max()) for m in matrices), default=0.0) or 1.0
        mesh = None
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
            for milestone, edge in _decay_edges(run, t, edges):
                decayed.add(milestone)
                for line in (ax.axvline, ax.axhline):
                    line(edge, color="white", linestyle=_DECAY_STYLE, linewidth=1.0, alpha=0.85)
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
            bar = fig.colorbar(mesh, ax=axes[row, :], shrink=0.9)
            bar.set_label(
                rf"{name.split()[0]} kernel distance" + "\n"
                r"$1 - \langle\Theta_s, \Theta_t\rangle_F \,/\, (\|\Theta_s\|_F \|\Theta_t\|_F)$",
                fontsize=9,
            )
    if decayed:
        marks = "white dash-dot: the learning rate decays after epoch " + ", ".join(f"{m:g}" for m in sorted(decayed))
        subtitle = "; ".join(part for part in (subtitle, marks) if part)
    _heading(fig, "Kernel distance between tracked epochs", subtitle, ref="TK fig. 3 left")
    _save(fig, path)


def _decay_edges(run: RunSummary, epochs: np.ndarray, edges: np.ndarray) -> list[tuple[float, float]]:
    """(m, edge) for each of ``run``'s decays (the learning rate falls after epoch m): the cell edge
    that parts the tracked epochs up to m from the later ones; none for a decay outside them."""
    found = []
    for milestone in _decay_epochs([run]):
        before = int(np.searchsorted(epochs, milestone, side="right"))  # tracked epochs <= m
        if 0 < before < epochs.size:
            found.append((milestone, float(edges[before])))
    return found


#: the largest radius a polar panel draws: the last kernel lies at r = 1, and a trajectory seldom
#: strays far beyond it; a transient blow-up (a PGD-AT ResNet-18's kernel norm 4,000 times its
#: start after a first epoch at lr 0.1, r = 4,906) would otherwise shrink every other point into
#: the origin. Points beyond it are drawn on the rim of the others (open markers, at their angle) and
#: named under the panels.
_R_CAP = 3.0

_ANGLE_STEPS = (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 15.0, 30.0, 45.0)  # degrees
_MIN_WEDGE = 45.0  # degrees: a narrower angle range is stretched to a quarter circle


def _angle_axis(theta_max: float) -> tuple[float, float, float]:
    """The angular axis of a polar panel whose largest angle is ``theta_max`` (degrees): the
    upper limit (a whole number of ticks above the data), the tick step (at most 6 steps), and
    the stretch: angles under ``_MIN_WEDGE`` are drawn stretched to a quarter circle (an
    unstretched 4° wedge is a sliver), their ticks still naming the true angles."""
    top = max(theta_max, 1e-3) * 1.08
    step = next((s for s in _ANGLE_STEPS if top / s <= 6), 45.0)
    upper = min(180.0, step * np.ceil(top / step))
    stretch = 90.0 / upper if upper < _MIN_WEDGE else 1.0
    return float(upper), float(step), float(stretch)


def polar_trajectories(runs: Sequence[RunSummary], path: Path, *, subtitle: str = "") -> None:
    """Kernel trajectories in polar space (TK eq. 12, fig. 3 right; supp. fig. 8 for the top-k
    space): radius r_t = ‖Θ_t − Θ₀‖_F / ‖Θ_f − Θ₀‖_F, angle θ_t between Θ_t and Θ₀. Every run
    starts at the origin (Θ₀) and ends at r = 1 (star); its markers go from dark (early epochs)
    to light (late), C-NTK solid with filled markers, AE-NTK dashed with open ones. The angular
    axis spans the data's angles (``_angle_axis``): small angles are stretched to a quarter
    circle, the ticks naming the true angles and the axis label the stretch."""
    plt = _pyplot()
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.lines import Line2D

    top_k = next((int(d["top_k"]) for run in runs for d in (run.get("dynamics") or {}).values() if "top_k" in d), 20)
    panels = [("polar", "whole kernel"), ("top_polar", f"top-{top_k} eigenspace")]
    kinds = [k for k in _KERNELS if any(k[0] in (run.get("dynamics") or {}) for run in runs)]
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.8), subplot_kw={"projection": "polar"}, layout="constrained")
    # the r tick labels under a wedge lie outside what constrained layout reserves: room under them
    fig.get_layout_engine().set(rect=(0.0, 0.05, 1.0, 0.95))
    last_epoch = max((float(np.nanmax(_floats(run.get("kernel_epochs") or [0.0]))) for run in runs), default=1.0)
    norm = Normalize(vmin=0.0, vmax=last_epoch or 1.0)
    missing: dict[tuple[int, str], tuple[list[str], list[str]]] = {}  # (run, why) -> kernels, panels
    off_scale: dict[tuple[int, str], list[str]] = {}  # (run, kernel) -> "epoch E (r = R)", first panel's
    shown: set[int] = set()
    for ax, (key, name) in zip(axes, panels, strict=True):
        # this panel's coordinates first: its angles set the stretch of its angular axis, its radii
        # on the scale the rim
        drawn = [
            d for run in runs for kind, *_ in kinds if f"{key}_r" in (d := (run.get("dynamics") or {}).get(kind) or {})
        ]
        angles = [_floats(d[f"{key}_theta"]) for d in drawn]  # type: ignore[literal-required]  # the panel names the key
        radii = [_floats(d[f"{key}_r"]) for d in drawn]  # type: ignore[literal-required]
        finite = np.concatenate([np.zeros(1), *(a[np.isfinite(a)] for a in angles)])
        upper, step, stretch = _angle_axis(float(np.degrees(finite.max())))
        r_all = np.concatenate([np.zeros(1), *(r[np.isfinite(r)] for r in radii)])
        r_rim = max(1.05, 1.08 * float(r_all[r_all <= _R_CAP].max()))  # the rim of the points on the scale
        r_max = 0.0
        for i, run in enumerate(runs):
            colour = _colour(i)
            ramp: list[Any] = [_shade(colour, -0.6), colour, _shade(colour, 0.7)]
            shades = LinearSegmentedColormap.from_list("epochs", ramp)
            for kind, kind_name, style, marker in kinds:
                dynamics: Mapping[str, Any] | None = (run.get("dynamics") or {}).get(kind)  # a Mapping: computed keys
                if dynamics is None:
                    continue
                if f"{key}_r" not in dynamics:
                    reason = (dynamics.get("undefined") or {}).get(key, "not computed")
                    which, where = missing.setdefault((i, reason), ([], []))
                    which.extend(k for k in [kind_name.split()[0]] if k not in which)
                    where.extend(p for p in [name] if p not in where)
                    continue
                r, theta = _floats(dynamics[f"{key}_r"]), stretch * _floats(dynamics[f"{key}_theta"])
                t = _floats(dynamics["epochs"])
                beyond = r > _R_CAP
                if beyond.any():  # named once: the top-k panel's radii are the whole kernel's, nearly
                    off_scale.setdefault(
                        (i, kind_name.split()[0]),
                        [
                            f"epoch {e:g} (r = {v:,.0f})" if v >= 100 else f"epoch {e:g} (r = {v:.3g})"
                            for e, v in zip(t[beyond], r[beyond], strict=True)
                        ],
                    )
                    rim = np.full(int(beyond.sum()), r_rim)
                    ax.scatter(theta[beyond], rim, marker=marker, s=60, facecolors="none", edgecolors=colour,
                               linewidths=1.2, zorder=3, clip_on=False)  # fmt: skip
                r = np.minimum(r, r_rim)
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
                # every run ends at r = 1, often at one angle: later runs' stars smaller and on top,
                # so that each star of a pile shows
                size, order = 180 * 0.72 ** min(i, 5), 4 + 0.01 * i
                ax.scatter(
                    theta[-1], r[-1], marker="*", s=size, color=colour, edgecolors="black", linewidths=0.7, zorder=order
                )
                r_max = max(r_max, float(r.max()))
                shown.add(i)
        ax.set_title(name, fontsize=10, pad=12)
        if r_max == 0.0:
            ax.set_thetamax(90.0)
            ax.set_xticklabels([])
            ax.set_yticklabels([])
            ax.text(np.radians(45), 0.5, "nothing to draw", ha="center", va="center", fontsize=9, color="0.35")
            continue
        ax.scatter([0.0], [0.0], marker="o", s=50, color="black", zorder=5, clip_on=False)
        degrees = upper * stretch  # the wedge drawn
        ax.set_thetamin(0.0)
        ax.set_thetamax(degrees)
        ticks = np.arange(0.0, upper + step / 2, step)
        ax.set_xticks(np.radians(ticks * stretch), [f"{t:g}°" for t in ticks])
        ax.set_rlim(0.0, r_rim)
        stretched = f"\n(angular axis stretched ×{stretch:.3g};\nticks: the true angles)" if stretch != 1.0 else ""
        # both coordinates named in the corner outside the arc: a label under a polar wedge falls
        # outside what constrained layout reserves (it was cut at the bottom, or ran into the notes)
        radius = r"$r = \|\Theta_t - \Theta_0\|_F \,/\, \|\Theta_f - \Theta_0\|_F$"
        ax.text(
            1.0,
            1.0,
            radius + "\n" + r"$\theta$ = angle between $\Theta_t$ and $\Theta_0$" + stretched,
            transform=ax.transAxes,
            ha="right",
            va="top",
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
    listed = [
        f"{_label(runs[i], i)} {kernel}: {', '.join(points[:4])}" + (", ..." if len(points) > 4 else "")
        for (i, kernel), points in off_scale.items()
    ]
    said = [f"beyond r = {_R_CAP:g}, drawn on the rim at their angles (open markers): " + "; ".join(listed)]
    _notes(fig, notes, said=said if listed else [])
    _heading(fig, "Kernel trajectories in polar space", subtitle, ref="TK eq. 12, fig. 3 right; supp. fig. 8")
    _save(fig, path)


def kernel_images_grid(runs: Sequence[RunSummary], path: Path, *, subtitle: str = "") -> None:
    """Class-sorted trace C-NTKs side by side (TK fig. 6 left): at initialisation (one panel per
    distinct first kernel: runs of other seeds, or linearized runs, start elsewhere) and the last
    tracked kernel of every run, each with its own colour scale, whose maximum (and the Frobenius
    norm) the panel names, so that the growth of the kernel reads at a glance."""
    plt = _pyplot()
    panels = _starts(runs)
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
    _heading(
        fig,
        "Class-sorted trace C-NTK on the probe",
        subtitle,
        ref="TK fig. 6 left; each panel on its own colour scale",
    )
    _save(fig, path)


def _starts(runs: Sequence[RunSummary]) -> list[tuple[str, RunSummary, np.ndarray, int]]:
    """The panels of the runs' first kernels, each kernel once: "initialisation" where every run
    starts from the same one (index -1: drawn in black), else one per run that starts elsewhere,
    named and coloured as its run ("start of" a linearized run: its parent's kernel at t')."""
    starts: list[tuple[RunSummary, np.ndarray, int]] = []
    for i, run in enumerate(runs):
        if run.get("initial_kernel") is None:
            continue
        kernel = np.asarray(run["initial_kernel"])
        targets = list(run.get("probe_targets") or [])
        if not any(
            np.array_equal(kernel, seen) and targets == list(other.get("probe_targets") or [])
            for other, seen, _ in starts
        ):
            starts.append((run, kernel, i))
    if len(starts) == 1 and not starts[0][0].get("linearized"):
        return [("initialisation", starts[0][0], starts[0][1], -1)]
    return [
        (f"{'start' if run.get('linearized') else 'initialisation'} of {_label(run, i)}", run, kernel, i)
        for run, kernel, i in starts
    ]


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
        fig,
        "Inputs aligned with the kernel's eigenvectors",
        subtitle,
        ref="LOO fig. 4; max (upper) / min (lower) cosine with vᵢ",
    )
    _save(fig, path)
