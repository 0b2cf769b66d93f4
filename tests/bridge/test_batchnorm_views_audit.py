"""Audit of ``bridge.batchnorm_views`` (RAT figs. 3-4, "w buffer" / "w/o buffer"): the views and
groups of runs built by hand here, without a training run, and every field of every view checked
against what the module docstring says it holds. The only other test draws a trained run through
``dynamics`` (tests/studies, ~2 min) and checks the labels and norms; here each rule is its own
case: one view per statistics in the history's order, the other statistics' records, suffix and
unloaded kernels, the run itself where it tracked one way or a record lacks the other's, and a
group split per statistics only when all its seeds were tracked alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ntkrobust.bridge.batchnorm_views import STATISTICS, statistics_groups, statistics_views
from ntkrobust.bridge.run_groups import RunGroup
from ntkrobust.bridge.runs import TrainingRun


def _records(with_batch: tuple[bool, ...] = (True, True)) -> list[dict[str, Any]]:
    """Kernel records as ``train --batchnorm both`` writes them: the first statistics' numbers at
    the top level, the other's under ``<mode>_statistics``."""
    records = []
    for step, has in enumerate(with_batch):
        record: dict[str, Any] = {"step": 10 * step, "file": f"kernels/k{step}.npz", "clean": {"trace": 1.0 + step}}
        if has:
            record["batch_statistics"] = {"clean": {"trace": -1.0 - step}, "adversarial": {"trace": 7.0}}
            record["running_statistics"] = {"clean": {"trace": 100.0 + step}}
        records.append(record)
    return records


def _run(modes: Any, *, label: str = "run", records: list[dict[str, Any]] | None = None) -> TrainingRun:
    tracking = {"batchnorm": modes} if modes is not None else {}
    records = _records() if records is None else records
    return TrainingRun(
        path=Path("/nonexistent") / label,
        label=label,
        history={"config": {"tracking": tracking}},
        epochs=[{"epoch": 1, "accuracy": {"running": {"test_clean": 0.5}, "batch": {"test_clean": 0.4}}}],
        kernel_records=records,
        kernel_epochs=np.arange(len(records), dtype=float),
        probe_targets=np.array([0, 1]),
        probe_labels=np.array([3, 8]),
        class_names=["3", "8"],
        clean_kernels=[np.eye(2)] * len(records),  # as if loaded: the other view must not reuse them
        adversarial_kernels=[2 * np.eye(2)] * len(records),
    )


@pytest.mark.parametrize(("modes", "other"), [(["running", "batch"], "batch"), (["batch", "running"], "running")])
def test_a_run_tracked_both_ways_is_two_views_in_its_historys_order(modes, other):
    run = _run(modes)
    first, second = statistics_views(run)
    # the first statistics: the run itself, labelled and marked, its records and kernels untouched
    assert first.statistics == modes[0] and first.label == f"run, {STATISTICS[modes[0]]}"
    assert first.kernel_records is run.kernel_records and first.kernel_suffix == ""
    assert first.clean_kernels is run.clean_kernels and first.adversarial_kernels is run.adversarial_kernels
    # the other: its records are step, file and that statistics' numbers, nothing of the first's
    assert second.statistics == other and second.label == f"run, {STATISTICS[other]}"
    expected = [{"step": r["step"], "file": r["file"], **r[f"{other}_statistics"]} for r in run.kernel_records]
    assert second.kernel_records == expected
    assert second.kernel_suffix == f"_{other}"  # the kernel files' keys "clean_batch", ...
    assert second.clean_kernels is None and second.adversarial_kernels is None  # re-read under the suffix
    # what both share: the epochs (both accuracies), the probe, the path
    for view in (first, second):
        assert view.epochs is run.epochs and view.path == run.path
        np.testing.assert_array_equal(view.kernel_epochs, run.kernel_epochs)
        np.testing.assert_array_equal(view.probe_targets, run.probe_targets)
    assert run.statistics is None and run.label == "run"  # the run itself is not modified


@pytest.mark.parametrize(
    "modes",
    [
        ["running"],  # one statistics: nothing to split
        ["batch"],
        ["running", "running"],  # repeated: still one
        ["running", "bogus"],  # a statistics it does not know
        "running,batch",  # not a list
        None,  # a history without BatchNorm tracking
    ],
)
def test_a_run_tracked_one_way_is_itself(modes):
    run = _run(modes)
    views = statistics_views(run)
    assert len(views) == 1 and views[0] is run


def test_a_record_lacking_the_other_statistics_keeps_the_run_whole():
    """Every record must hold the other's numbers (one lacking: the run itself), and a run without
    kernel records has nothing to split."""
    run = _run(["running", "batch"], records=_records((True, False, True)))
    assert statistics_views(run) == [run]
    bare = _run(["running", "batch"], records=[])
    assert statistics_views(bare) == [bare]


def test_groups_split_per_statistics_only_when_their_seeds_were_tracked_alike():
    seeds = [_run(["running", "batch"], label=f"seed {s}") for s in (0, 1, 2)]
    group = RunGroup(path=Path("/nonexistent/group"), label="TE", runs=seeds, seeds=[0, 1, 2])
    single = RunGroup(path=Path("/nonexistent/one"), label="PGD", runs=[_run(["running"], label="pgd")])
    expanded = statistics_groups([single, group])
    assert len(expanded) == 3 and expanded[0] is single  # tracked one way: itself, in place
    running, batch = expanded[1:]
    assert running.label == f"TE, {STATISTICS['running']}" and batch.label == f"TE, {STATISTICS['batch']}"
    assert running.seeds == batch.seeds == [0, 1, 2] and running.path == group.path
    # every seed's own view of that statistics, in the seeds' order
    assert [r.label for r in running.runs] == [f"seed {s}, {STATISTICS['running']}" for s in (0, 1, 2)]
    assert [r.label for r in batch.runs] == [f"seed {s}, {STATISTICS['batch']}" for s in (0, 1, 2)]
    assert all(r.statistics == "running" for r in running.runs)
    assert all(r.statistics == "batch" and r.kernel_suffix == "_batch" for r in batch.runs)
    # a mixed group (one seed tracked one way) stays whole rather than pairing unlike views
    mixed = RunGroup(path=Path("/nonexistent/mixed"), label="mixed", runs=[seeds[0], _run(["running"])])
    assert statistics_groups([mixed]) == [mixed]
