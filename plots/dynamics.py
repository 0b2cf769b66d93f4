"""The training-dynamics figures of a set of runs, together (``ntkrobust dynamics``).

``dynamics_figures`` draws every figure that applies to the run summaries (``RunSummary``, one
per run, from ``bridge.runs.dynamics_summary``) under the fixed file names of
``DYNAMICS_FIGURES``; ``applicable_figures`` says which, ``dynamics_subtitle`` what the runs
share. The figures themselves live in ``plots.dynamics_kernels`` (pictures of kernels),
``plots.dynamics_curves`` (curves against the epoch), ``plots.dynamics_comparison`` (the
distance to a baseline run and the specialization matrices, RAT) and ``plots.dynamics_stages``
(two-stage training: accuracy against the spawn epoch t', LOO fig. 2, table 2; the cost of
clean epochs before adversarial ones, RAT sec. 5, fig. 6, table 1), the last two drawn from the
records of ``bridge.run_groups.spawn_accuracy`` / ``switch_cost``. A run summary of several
seeds (``seed_runs``) is drawn as its mean ± std in the curves and by its first seed in the
pictures; the subtitles say so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ntkrobust._numbers import is_real, pixel_radius
from ntkrobust.plots._runs import _has_kind, _label, _relative_magnitudes
from ntkrobust.plots.dynamics_comparison import (
    SPECIALIZATION_KINDS,
    baseline_distance_curves,
    ksm_columns,
    specialization_at,
    specialization_heatmaps,
)
from ntkrobust.plots.dynamics_curves import (
    accuracy_curves,
    kernel_norm_and_concentration,
    kernel_velocity_and_distance,
    rank_and_specialization,
    relative_magnitude_curve,
)
from ntkrobust.plots.dynamics_kernels import kernel_distance_heatmaps, kernel_images_grid, polar_trajectories
from ntkrobust.plots.dynamics_stages import spawn_accuracy_curves, switch_cost_bars
from ntkrobust.plots.types import RunSummary, SpawnAccuracy, SwitchCost

__all__ = ["DYNAMICS_FIGURES", "applicable_figures", "dynamics_figures", "dynamics_subtitle", "undrawn_specializations"]


DYNAMICS_FIGURES = {
    "kernel_distance": "kernel_distance.png",
    "polar": "polar.png",
    "norm_concentration": "norm_concentration.png",
    "velocity_distance": "velocity_distance.png",
    "rank_specialization": "rank_specialization.png",
    "kernel_images": "kernel_images.png",
    "accuracy": "accuracy.png",
    "relative_magnitude": "relative_magnitude.png",
    "baseline_distance": "baseline_distance.png",
    **{name: f"{name}.png" for name in SPECIALIZATION_KINDS},
    "spawn_accuracy": "spawn_accuracy.png",
    "switch_cost": "switch_cost.png",
}
"""The figures of ``dynamics_figures``: name → file name in its output folder."""


def dynamics_subtitle(runs: Sequence[RunSummary], *, kernels: bool = True) -> str:
    """What the runs share, in a line: data set, model, probe size, attack (the legend names the
    runs); a fact that differs between runs is given per run. Without ``kernels``: data set,
    model and the PGD radius only (the figures of accuracies and seconds)."""

    def facts(key: str, phrase: str) -> str | None:
        values = [run.get(key) for run in runs]
        if key == "probe_size":  # a run that tracked no kernel has a probe of 0 points: none to speak of
            values = [v or None for v in values]
        if key == "eps":  # 8/255, as the command was given, not 0.03137
            values = [pixel_radius(v) if is_real(v) else None for v in values]
        present = [v for v in values if v is not None]
        if not present:
            return None
        if len(set(map(str, present))) == 1:
            return phrase.format(present[0])
        if key == "probe_size":  # one phrase with the sizes in legend order, not one per run; a
            # run without kernels keeps its place ("20 / – / 30"): "20 / 30" paired the sizes with
            # the first two runs of the legend
            return phrase.format(" / ".join("–" if v is None else str(v) for v in values))
        runs_of: dict[str, list[str]] = {}  # each value once, with the runs that have it
        for i, (run, v) in enumerate(zip(runs, values, strict=True)):
            if v is not None:
                runs_of.setdefault(phrase.format(v), []).append(_label(run, i))
        return ", ".join(f"{value} ({' and '.join(labels)})" for value, labels in runs_of.items())

    if not kernels or not any(run.get("probe_size") for run in runs):  # no probe to speak of ("a probe of 0 points")
        return "; ".join(p for p in (facts("dataset", "{}"), facts("model", "{}"), facts("eps", "PGD eps {}")) if p)
    adversarial = any("adversarial" in (run.get("dynamics") or {}) for run in runs)
    parts = [
        facts("dataset", "{}"),
        facts("model", "{}"),
        facts("probe_size", "trace eNTK on a probe of {} points"),
        _estimators(runs),
        facts("eps", "AE-NTK on its PGD examples (eps {})") if adversarial else None,
    ]
    return "; ".join(p for p in parts if p)


def _estimators(runs: Sequence[RunSummary]) -> str | None:
    """How the tracked trace kernels were taken, where a run estimated them (``--estimator
    rademacher:K``): "Rademacher estimate of K draws", per run where the runs differ."""

    def phrase(estimator: str) -> str:
        head, _, draws = estimator.partition(":")
        if head != "rademacher" or not draws.isdigit():  # "exact", or what a foreign history says
            return estimator
        return f"Rademacher estimate of {draws} draw{'s' * (int(draws) > 1)}"

    estimators = [run.get("estimator", "exact") for run in runs]
    if all(e == "exact" for e in estimators):
        return None
    if len(set(estimators)) == 1:
        return phrase(estimators[0])
    return ", ".join(f"{phrase(e)} ({_label(run, i)})" for i, (run, e) in enumerate(zip(runs, estimators, strict=True)))


def applicable_figures(
    runs: Sequence[RunSummary],
    *,
    spawn_accuracy: SpawnAccuracy | None = None,
    switch_cost: SwitchCost | None = None,
    ksm_epochs: Sequence[float] | None = None,
) -> list[str]:
    """The ``DYNAMICS_FIGURES`` that ``dynamics_figures`` draws for these run summaries: kernel
    figures need a run with tracked kernels, the polar one a run whose kernel moved, the
    relative magnitude a run that records it, accuracy a run with epoch records; a
    specialization figure a panel whose matrix is defined (at ``ksm_epochs``: ``undrawn_specializations``
    says why not); the spawn accuracy a network trained around a parent's checkpoint (a line of
    ``spawn_accuracy``), the switch cost an adversarial run (a run of ``switch_cost``)."""
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
        "baseline_distance": any(run.get("baseline_distance") for run in runs),
        **{name: name not in undrawn_specializations(runs, ksm_epochs) for name in SPECIALIZATION_KINDS},
        "spawn_accuracy": bool(spawn_accuracy and spawn_accuracy.get("lines")),
        "switch_cost": bool(switch_cost and switch_cost.get("runs")),
    }
    return [name for name in DYNAMICS_FIGURES if applies[name]]


def undrawn_specializations(runs: Sequence[RunSummary], ksm_epochs: Sequence[float] | None = None) -> dict[str, str]:
    """{figure: why} for the specialization figures of a kernel some run tracked whose every panel
    is undefined (at ``ksm_epochs``): a figure of empty boxes says less than a line would (the
    net's own labels on PGD examples of a standard net may miss most classes). A kernel no run
    tracked is named too, "not tracked"."""
    columns = ksm_columns(runs, ksm_epochs)
    undrawn = {}
    for name, (kind, _) in SPECIALIZATION_KINDS.items():
        if not any(_has_kind(run, kind) for run in runs):
            undrawn[name] = "not tracked"
            continue
        tracked = [(run, epochs) for run, epochs in zip(runs, columns, strict=True) if run.get("kernels")]
        panels = [specialization_at(run, kind, epoch) for run, epochs in tracked for epoch in epochs]
        if all(matrix is None for matrix, _ in panels):  # a run without kernels has empty panels alone
            undrawn[name] = "; ".join(dict.fromkeys(why for _, why in panels))
    return undrawn


_PICTURES = {"kernel_distance", "polar", "kernel_images", *SPECIALIZATION_KINDS}
"""The figures that picture one run's kernels: a run of several seeds by its first seed."""


def _seeds_note(name: str, runs: Sequence[RunSummary]) -> str:
    """How a figure draws the runs of several seeds, for its subtitle ("" without any)."""
    groups = [run for run in runs if len(run.get("seed_runs") or []) > 1]
    if not groups:
        return ""
    if name in _PICTURES:
        first = sorted({str(seeds[0]) if (seeds := run.get("seeds")) else "?" for run in groups})
        return f"runs of several seeds pictured by their first seed (seed {' / '.join(first)})"
    counts = sorted({len(run.get("seed_runs") or []) for run in groups})
    return f"runs of several seeds: mean ± sample std over {' / '.join(map(str, counts))} seeds (band)"


def dynamics_figures(
    runs: Sequence[RunSummary],
    out_dir: Path,
    *,
    subtitle: str = "",
    ksm_epochs: Sequence[float] | None = None,
    spawn_accuracy: SpawnAccuracy | None = None,
    switch_cost: SwitchCost | None = None,
) -> dict[str, str]:
    """Every applicable training-dynamics figure (``applicable_figures``) of the run summaries
    ``runs`` into ``out_dir``, under the fixed names of ``DYNAMICS_FIGURES``; returns
    {figure: file name} of those written. ``subtitle`` defaults to the runs' descriptions (for
    the two-stage figures: of the runs they draw); ``ksm_epochs`` are the columns of the
    specialization figures (default: each run's first and last tracked epoch);
    ``spawn_accuracy`` and ``switch_cost`` the records of ``bridge.run_groups`` of the same name.
    The eigenvector figure (needs torch to compute) is ``eigenvector_pictures``, called on its own."""
    draw: dict[str, Callable[..., None]] = {
        "kernel_distance": kernel_distance_heatmaps,
        "polar": polar_trajectories,
        "norm_concentration": kernel_norm_and_concentration,
        "velocity_distance": kernel_velocity_and_distance,
        "rank_specialization": rank_and_specialization,
        "kernel_images": kernel_images_grid,
        "accuracy": accuracy_curves,
        "relative_magnitude": relative_magnitude_curve,
        "baseline_distance": baseline_distance_curves,
        **{
            name: functools.partial(specialization_heatmaps, figure=name, epochs=ksm_epochs)
            for name in SPECIALIZATION_KINDS
        },
    }
    stages: dict[str, tuple[Callable[..., None], Any]] = {
        "spawn_accuracy": (spawn_accuracy_curves, spawn_accuracy),
        "switch_cost": (switch_cost_bars, switch_cost),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for name in applicable_figures(runs, spawn_accuracy=spawn_accuracy, switch_cost=switch_cost, ksm_epochs=ksm_epochs):
        if name in stages:
            figure, record = stages[name]
            drawn = _drawn_runs(runs, record)
            figure(
                record, out_dir / DYNAMICS_FIGURES[name], subtitle=subtitle or dynamics_subtitle(drawn, kernels=False)
            )
        else:
            note = _seeds_note(name, runs)
            text = subtitle or dynamics_subtitle(runs)
            draw[name](runs, out_dir / DYNAMICS_FIGURES[name], subtitle="; ".join(p for p in (text, note) if p))
        written[name] = DYNAMICS_FIGURES[name]
    return written


def _drawn_runs(runs: Sequence[RunSummary], record: Any) -> list[RunSummary]:
    """The run summaries of the runs a two-stage record draws (by their folders)."""
    entries = [*(record.get("runs") or []), *(record.get("parents") or [])]
    entries += [point for line in record.get("lines") or [] for point in line.get("points") or []]
    paths = {str(entry.get("path")) for entry in entries}
    return [run for run in runs if str(run.get("path")) in paths] or list(runs)
