"""A run tracked under both BatchNorm statistics, seen as two runs (RAT sec. 4, figs. 3-4).

``train --batchnorm both`` evaluates and tracks every kernel twice: with BatchNorm's running
statistics (RAT's "w buffer", the history's top-level records) and with each batch's own ("w/o
buffer", under ``batch_statistics`` in every kernel record, ``clean_batch`` / ``adversarial_batch``
in the kernel files). RAT compares the two kernels' specialization side by side; ``dynamics``
draws them as two runs, one per statistics, so that every figure shows both:

- ``statistics_views(run)``: the run once per statistics it was tracked under, each labelled with
  it, whose kernel records, kernels and ``statistics`` are that statistics' (the epoch records are
  the run's: they hold the accuracies of both, and the accuracy figure draws a view's own);
- ``statistics_modes(run)``: the statistics the run tracked its kernels under, its history's first;
- ``statistics_groups(groups)``: every ``RunGroup`` (a run, or the seeds of one) as one group per
  statistics, in the order the run tracked them; a group tracked one way is itself.

numpy only, as ``bridge.runs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ntkrobust.bridge.run_groups import RunGroup
from ntkrobust.bridge.runs import TrainingRun

__all__ = ["STATISTICS", "statistics_groups", "statistics_modes", "statistics_views"]

#: how a view's label names its statistics (RAT: "w buffer" / "w/o buffer")
STATISTICS = {"running": "BatchNorm running stats", "batch": "BatchNorm batch stats"}


def statistics_modes(run: TrainingRun) -> list[str]:
    """The statistics the run tracked its kernels under, its history's first; [] where it says
    none it knows (a run without BatchNorm tracking, or a foreign history)."""
    tracking = run.config.get("tracking")
    modes = tracking.get("batchnorm") if isinstance(tracking, dict) else None
    if not isinstance(modes, list) or not all(mode in STATISTICS for mode in modes):
        return []
    return list(dict.fromkeys(modes))


def statistics_views(run: TrainingRun) -> list[TrainingRun]:
    """The run once per BatchNorm statistics it tracked its kernels under (module docstring); the
    run itself where it tracked them one way, where a kernel record lacks the other's, or where
    it is already one of the views (its labels were "…, BatchNorm running stats, BatchNorm …")."""
    modes = statistics_modes(run)
    if len(modes) < 2 or not run.kernel_records or run.statistics is not None:
        return [run]
    first, *others = modes
    if not all(isinstance(record.get(f"{mode}_statistics"), dict) for mode in others for record in run.kernel_records):
        return [run]
    views = [dataclasses.replace(run, label=f"{run.label}, {STATISTICS[first]}", statistics=first)]
    for mode in others:
        records: list[dict[str, Any]] = [
            {"step": record.get("step"), "file": record["file"], **record[f"{mode}_statistics"]}
            for record in run.kernel_records
        ]
        views.append(
            dataclasses.replace(
                run,
                label=f"{run.label}, {STATISTICS[mode]}",
                kernel_records=records,
                statistics=mode,
                kernel_suffix=f"_{mode}",
                clean_kernels=None,  # read from the kernel files' keys of this statistics
                adversarial_kernels=None,
            )
        )
    return views


def statistics_groups(groups: Sequence[RunGroup]) -> list[RunGroup]:
    """Every group once per BatchNorm statistics its runs tracked (module docstring)."""
    expanded: list[RunGroup] = []
    for group in groups:
        views = [statistics_views(run) for run in group.runs]
        if any(len(one) != len(views[0]) for one in views) or len(views[0]) == 1:
            expanded.append(group)  # the seeds of one command track alike: a mixed group stays whole
            continue
        for k, view in enumerate(views[0]):
            label = f"{group.label}, {STATISTICS[str(view.statistics)]}"
            expanded.append(dataclasses.replace(group, label=label, runs=[one[k] for one in views]))
    return expanded
