"""Several training runs at once: the seed runs of one curve (``train --seeds``: mean ± std
bands, LOO n = 3, RAT) and the kernel distance of runs to a baseline run at the steps both
tracked (RAT figs. 5, 7, 9b-c, 17; LOO table 1).

The single run folder and its summary live in ``bridge.runs``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.bridge import runs as run_folders
from ntkrobust.bridge.files import first_line
from ntkrobust.bridge.runfolder import HISTORY_FILE
from ntkrobust.bridge.runs import RunError, TrainingRun, distinct_labels, load_run, probe_images
from ntkrobust.kernels import metrics

SEEDS_FILE = "seeds.json"
"""What ``train --seeds S1,S2 --out OUT`` writes beside its run folders ``OUT/seed_S``."""


@dataclasses.dataclass(frozen=True, eq=False)
class RunGroup:
    """One RUN of ``dynamics``: a run folder (``seeds`` None), or a folder of ``train --seeds``
    whose runs are drawn as one curve, mean ± std over the seeds (LOO's n = 3, RAT's std).
    ``runs[0]`` is the first seed's run: the figures that picture one kernel draw it."""

    path: Path
    label: str
    runs: list[TrainingRun]
    seeds: list[int] | None = None


def seed_folders(path: str | Path) -> list[tuple[int, Path]] | None:
    """(seed, run folder) of every run of the ``train --seeds`` folder ``path``, in the order of
    its ``seeds.json``; None for a folder without one (``RunError`` for an unreadable one, and for
    seed runs whose ``seeds.json`` was never written: an interrupted ``train --seeds``)."""
    path = Path(path)
    listing = path / SEEDS_FILE
    if not listing.is_file():
        if not (path / HISTORY_FILE).is_file() and any(path.glob(f"seed_*/{HISTORY_FILE}")):
            raise RunError(f"{path}: seed runs without {SEEDS_FILE} (an unfinished train --seeds: --resume it)")
        return None
    try:
        record = json.loads(listing.read_text(encoding="utf-8"))
        folders = [(int(entry["seed"]), path / str(entry["folder"])) for entry in record["runs"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"{listing}: not the {SEEDS_FILE} of train --seeds ({first_line(error)})") from None
    if not folders:
        raise RunError(f"{listing}: lists no runs")
    return folders


def load_run_groups(paths: Sequence[str | Path], *, kernels: bool = True) -> list[RunGroup]:
    """One ``RunGroup`` per path, labels made distinct as ``load_runs`` does; the seeds of a
    group must share their epoch records and tracked epochs (``RunError`` otherwise): the mean
    over seeds is taken epoch by epoch."""
    groups = []
    for path in map(Path, paths):
        listed = seed_folders(path)
        if listed is None:
            run = load_run(path, kernels=kernels)
            groups.append(RunGroup(path, run.label, [run]))
            continue
        runs = [load_run(folder, kernels=kernels) for _, folder in listed]
        seeds = [seed for seed, _ in listed]
        _check_shared_epochs(path, seeds, runs)
        groups.append(RunGroup(path, f"{runs[0].label} ({len(runs)} seeds)", runs, seeds))
    labels = distinct_labels([group.label for group in groups], [group.path for group in groups])
    distinct = []
    for group, label in zip(groups, labels, strict=True):
        named = [label] if group.seeds is None else [f"{label}, seed {seed}" for seed in group.seeds]
        runs = [dataclasses.replace(run, label=name) for run, name in zip(group.runs, named, strict=True)]
        distinct.append(dataclasses.replace(group, label=label, runs=runs))
    return distinct


def _check_shared_epochs(path: Path, seeds: Sequence[int], runs: Sequence[TrainingRun]) -> None:
    first = runs[0]
    for seed, run in zip(seeds[1:], runs[1:], strict=True):
        for what, mine, theirs in (
            ("epoch records", [float(e["epoch"]) for e in run.epochs], [float(e["epoch"]) for e in first.epochs]),
            ("tracked kernels", run.kernel_epochs.tolist(), first.kernel_epochs.tolist()),
        ):
            if mine != theirs:
                raise RunError(
                    f"{path}: seed {seed} and seed {seeds[0]} differ in their {what} (epochs {number_listing(mine)} "
                    f"vs {number_listing(theirs)}): the seeds of one curve must share their epochs"
                )


def number_listing(values: Sequence[float], most: int = 6) -> str:
    """'0, 1, 2' or '0, 0.5, 1, ..., 10 (21)': numbers for a one-line message."""
    shown = [f"{v:g}" for v in values]
    if len(shown) > most:
        shown = [*shown[: most - 2], "...", shown[-1], f"({len(values)})"]
    return ", ".join(shown) if shown else "none"


def group_summary(group: RunGroup, *, baseline: TrainingRun | None = None, top_k: int = 20) -> dict[str, Any]:
    """A run's ``dynamics_summary``; for the seeds of a group the first seed's, labelled as the
    group, with ``seeds`` and every seed's summary under ``seed_runs`` (the curves' mean ± std).
    With ``baseline`` every summary has its ``baseline_distance`` (check the runs first with
    ``check_comparable``)."""
    summaries = []
    for run in group.runs:
        summary = run_folders.dynamics_summary(run, top_k=top_k)  # patchable where it lives
        if baseline is not None:
            summary["baseline_distance"] = baseline_distance(baseline, run)
        summaries.append(summary)
    if group.seeds is None:
        return summaries[0]
    return {**summaries[0], "label": group.label, "path": str(group.path), "seeds": group.seeds, "seed_runs": summaries}


def _steps(run: TrainingRun) -> list[int | float]:
    """The training step of every tracked kernel (its epoch where a record has no step)."""
    steps = [record.get("step") for record in run.kernel_records]
    return [float(e) if s is None else int(s) for s, e in zip(steps, run.kernel_epochs.tolist(), strict=True)]


def check_comparable(baseline: TrainingRun, run: TrainingRun) -> None:
    """``RunError`` unless ``run`` tracked a kernel at a step the baseline tracked too, on the
    same probe images (compared by content): distances between kernels on different points mean
    nothing."""
    mine, theirs = _steps(run), _steps(baseline)
    if not set(mine) & set(theirs):
        raise RunError(
            f"{run.path} shares no tracked step with the baseline {baseline.path} "
            f"(steps {number_listing(mine)} vs {number_listing(theirs)})"
        )
    if not np.array_equal(probe_images(run.path), probe_images(baseline.path)):
        raise RunError(
            f"{run.path} and the baseline {baseline.path} tracked their kernels on different probes "
            "(train both on the same data with the same --seed and --track-kernel)"
        )


def baseline_distance(baseline: TrainingRun, run: TrainingRun) -> dict[str, Any]:
    """KD(Θ_t^baseline, Θ_t^run) = 1 − ⟨K₁, K₂⟩ / (‖K₁‖ ‖K₂‖) at the steps both runs tracked
    (RAT sec. 5, figs. 5, 7, 9b-c, 17), of the C-NTK and of the AE-NTK, as JSON-ready lists:
    ``baseline`` (its folder), ``baseline_label``, ``steps``, ``epochs`` (the run's epoch of each
    step), ``clean`` and ``adversarial`` (the distances), ``undefined`` {kind: why} for a kernel
    not tracked by both or a zero kernel (that kind's key then absent)."""
    baseline, run = baseline.with_kernels(), run.with_kernels()
    at_baseline = {step: i for i, step in enumerate(_steps(baseline))}
    steps = _steps(run)
    shared = [(i, at_baseline[step]) for i, step in enumerate(steps) if step in at_baseline]
    result: dict[str, Any] = {
        "baseline": str(baseline.path),
        "baseline_label": baseline.label,
        "steps": [steps[i] for i, _ in shared],
        "epochs": [float(run.kernel_epochs[i]) for i, _ in shared],
    }
    undefined: dict[str, str] = {}
    for kind, mine, theirs in (
        ("clean", run.clean_kernels, baseline.clean_kernels),
        ("adversarial", run.adversarial_kernels, baseline.adversarial_kernels),
    ):
        if not mine or not theirs:
            undefined[kind] = "the AE-NTK was not tracked by both runs"
            continue
        try:
            result[kind] = [metrics.kernel_distance(theirs[j], mine[i]) for i, j in shared]
        except metrics.UndefinedMetricError as reason:
            undefined[kind] = str(reason)
    if undefined:
        result["undefined"] = undefined
    return result
