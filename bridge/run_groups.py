"""Several training runs at once: the seed runs of one curve (``train --seeds``: mean ± std
bands, LOO n = 3, RAT), the kernel distance of runs to a baseline run at the steps both
tracked (RAT figs. 5, 7, 9b-c, 17; LOO table 1), and two-stage training: the final accuracy
of linearized / centered networks against their spawn epoch t' (``spawn_accuracy``, LOO fig. 2,
table 2) and the training seconds of clean and adversarial epochs against the final accuracy
(``switch_cost``, RAT sec. 5, fig. 6, table 1).

The single run folder and its summary live in ``bridge.runs``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust._messages import first_line
from ntkrobust._numbers import is_real, is_whole
from ntkrobust.bridge import runs as run_folders
from ntkrobust.bridge.files import JsonFileError, read_json
from ntkrobust.bridge.runfolder import HISTORY_FILE
from ntkrobust.bridge.runs import RunError, TrainingRun, distinct_labels, inside_folder, load_run, probe_images
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
        record = read_json(listing)
    except JsonFileError as error:
        raise RunError(f"{listing}: {error}") from None
    try:
        names = [(int(entry["seed"]), str(entry["folder"])) for entry in record["runs"]]
    except (ValueError, KeyError, TypeError) as error:
        raise RunError(f"{listing}: not the {SEEDS_FILE} of train --seeds ({first_line(error)})") from None
    folders = [(seed, inside_folder(path, name, f"run folder of seed {seed}")) for seed, name in names]
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


def number_listing(values: Sequence[float]) -> str:
    """'0, 1, 2' or '0, 0.5, 1, 1.5, ..., 10 (21 numbers)': at most six numbers for a one-line
    message, the first four and the last."""
    shown = [f"{v:g}" for v in values]
    if len(shown) > 6:
        shown = [*shown[:4], "...", f"{shown[-1]} ({len(values)} numbers)"]
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


# -- two-stage training: spawned networks by spawn epoch (LOO), clean epochs before AT (RAT) ----


def _where(run: TrainingRun) -> Path:
    return run.path / HISTORY_FILE


@contextlib.contextmanager
def _reading(run: TrainingRun) -> Iterator[None]:
    """A history whose records have the wrong types as a ``RunError`` naming it, not a traceback."""
    try:
        yield
    except RunError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as error:
        raise RunError(f"{_where(run)}: malformed records ({type(error).__name__}: {first_line(error)})") from None


def _final(run: TrainingRun) -> dict[str, Any]:
    """The run's last epoch's test accuracy (``epoch_accuracy``), with the full evaluation's PGD."""
    if not run.epochs:
        raise RunError(f"{_where(run)}: no epoch records")
    return epoch_accuracy(run, len(run.epochs) - 1)


def _number(value: Any, what: str, run: TrainingRun) -> float:
    """``value`` as a float, or ``RunError`` naming ``what`` in the run's history."""
    if not is_real(value, finite=True):
        raise RunError(f"{_where(run)}: {what} is {json.dumps(value)[:40]}, not a number")
    return float(value)


def _accuracy_mode(run: TrainingRun) -> str:
    """The BatchNorm statistics of the accuracies a run reports: its first tracked mode."""
    tracking = run.config.get("tracking")
    modes = tracking.get("batchnorm") if isinstance(tracking, dict) else None
    return str(modes[0]) if isinstance(modes, list) and modes else "running"


def epoch_accuracy(run: TrainingRun, index: int, *, full: bool = True) -> dict[str, Any]:
    """Test accuracy of the run's epoch record ``index``, clean and under PGD, as the run reports
    it (its first BatchNorm mode): ``test_clean``, ``test_pgd``, ``pgd`` (where the PGD accuracy
    comes from: "full evaluation, PGD-S" when ``full`` and the epoch has one, else "per-epoch PGD-S")."""
    mode, record = _accuracy_mode(run), run.epochs[index]
    where = f"epoch record {index}"
    scores = (record.get("accuracy") or {}).get(mode)
    if not isinstance(scores, dict):
        raise RunError(f"{_where(run)}: {where} has no '{mode}' test accuracies")
    clean = _number(scores.get("test_clean"), f"{where}'s {mode} test_clean", run)
    evaluation = record.get("full_evaluation")
    if full and evaluation is not None:
        if not isinstance(evaluation, dict) or not isinstance(evaluation.get("accuracy"), dict):
            raise RunError(f"{_where(run)}: {where} has a malformed full_evaluation")
        scores = evaluation["accuracy"].get(mode) or {}
        pgd = _number(scores.get("test_pgd"), f"{where}'s full_evaluation {mode} test_pgd", run)
        return {"test_clean": clean, "test_pgd": pgd, "pgd": f"full evaluation, PGD-{evaluation.get('steps', '?')}"}
    tracking = run.config.get("tracking")
    steps = tracking.get("steps", "?") if isinstance(tracking, dict) else "?"
    pgd = _number(scores.get("test_pgd"), f"{where}'s {mode} test_pgd", run)
    return {"test_clean": clean, "test_pgd": pgd, "pgd": f"per-epoch PGD-{steps}"}


def _seed_mean(measured: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' values as one: numbers as their mean (with ``<key>_std``, the sample standard
    deviation, and ``seeds`` for several), text as the shared text (" / "-joined when it differs)."""
    merged: dict[str, Any] = {}
    for key, value in measured[0].items():
        values = [one[key] for one in measured]
        if is_whole(value) and len(set(values)) == 1:
            merged[key] = value  # a count the seeds share
        elif is_real(value):
            merged[key] = float(np.mean(values))
            if len(values) > 1:
                merged[f"{key}_std"] = float(np.std(values, ddof=1))
        else:
            merged[key] = " / ".join(dict.fromkeys(map(str, values))) if value is not None else None
    if len(measured) > 1:
        merged["seeds"] = len(measured)
    return merged


SPAWN_KINDS = ("linearized", "centered", "centered-standard")
"""The networks trained around a parent's checkpoint (LOO sec. 2, table 1)."""


def spawned_from(run: TrainingRun) -> tuple[str, Path, int] | None:
    """(kind, parent run folder, spawn epoch t') of a run trained around a checkpoint
    ``PARENT/checkpoints/epoch_NNN.pt``; None for a run without a ``linearization``."""
    from ntkrobust.bridge.runfolder import checkpoint_epoch

    linearization = run.config.get("linearization")
    if linearization is None:
        return None
    checkpoint = linearization.get("checkpoint") if isinstance(linearization, dict) else None
    if not isinstance(checkpoint, str) or not checkpoint:
        raise RunError(f"{_where(run)}: config.linearization has no checkpoint path")
    epoch = linearization.get("spawn_epoch")
    if epoch is None and (located := checkpoint_epoch(Path(checkpoint))) is not None:
        epoch = located[1]  # a history written before spawn_epoch was: the checkpoint's name
    if not is_whole(epoch) or epoch < 0:
        raise RunError(f"{_where(run)}: config.linearization.spawn_epoch is {json.dumps(epoch)[:40]}, not an epoch")
    kind = SPAWN_KINDS[2] if linearization.get("standard") else SPAWN_KINDS[int(bool(linearization.get("centered")))]
    return kind, Path(checkpoint).parent.parent, epoch


def _parent_record(run: TrainingRun) -> dict[str, Any]:
    """A parent's clean and per-epoch PGD test accuracy at every epoch (the reference line)."""
    scores = [epoch_accuracy(run, i, full=False) for i in range(len(run.epochs))]
    return {
        "path": str(run.path),
        "label": run.label,
        "epochs": [
            _number(record.get("epoch"), f"epoch record {i}'s epoch", run) for i, record in enumerate(run.epochs)
        ],
        "test_clean": [s["test_clean"] for s in scores],
        "test_pgd": [s["test_pgd"] for s in scores],
        "pgd": scores[-1]["pgd"] if scores else None,
    }


def spawn_accuracy(groups: Sequence[RunGroup]) -> dict[str, Any]:
    """LOO fig. 2, table 2: the final test accuracy, clean and under PGD (the last epoch's full
    evaluation when it has one), of the networks trained around a parent's checkpoint, against
    the spawn epoch t'. ``lines``: one per parent, kind and stage-2 training mode, each with its
    ``points`` by spawn epoch (the runs of several seeds as their mean, ``_std``); ``parents``:
    the parents among the runs, their accuracy at every epoch. Empty lists without spawned runs."""
    given = {run.path.resolve(): run for group in groups for run in group.runs}
    lines: dict[tuple[Path, str, str], dict[str, Any]] = {}
    for group in groups:
        with _reading(group.runs[0]):
            spawned, mode = spawned_from(group.runs[0]), group.runs[0].mode or "?"
        if spawned is None:
            continue
        kind, parent, epoch = spawned
        measured = []
        for run in group.runs:
            with _reading(run):
                measured.append(_final(run))
        finals = _seed_mean(measured)
        found = given.get(parent.resolve())  # the parent among the runs: named by its path there
        line = lines.setdefault(
            (parent.resolve(), kind, mode),
            {
                "parent": str(found.path if found is not None else parent),
                "parent_label": found.label if found is not None else parent.name,
                "kind": kind,
                "mode": mode,
                "points": [],
            },
        )
        line["points"].append({"label": group.label, "path": str(group.path), "spawn_epoch": epoch, **finals})
    for line in lines.values():
        line["points"].sort(key=lambda point: point["spawn_epoch"])
    parents = dict.fromkeys(parent for parent, _, _ in lines)
    records = []
    for parent in parents:
        if parent in given:
            with _reading(given[parent]):
                records.append(_parent_record(given[parent]))
    return {"lines": list(lines.values()), "parents": records}


def _training_seconds(run: TrainingRun) -> dict[str, Any]:
    """Seconds of training (``seconds.train``) in clean epochs (mode "standard") and in
    adversarial ones (any other mode; the initialisation record counts in neither)."""
    spent = {"seconds_clean": 0.0, "seconds_adversarial": 0.0, "epochs_clean": 0, "epochs_adversarial": 0}
    for i, record in enumerate(run.epochs):
        mode = record.get("mode")
        if mode == "init":
            continue
        if not isinstance(mode, str):
            raise RunError(f"{_where(run)}: epoch record {i} has no mode")
        seconds = record.get("seconds")
        train = _number(
            seconds.get("train") if isinstance(seconds, dict) else seconds, f"epoch record {i}'s seconds.train", run
        )
        kind = "clean" if mode == "standard" else "adversarial"
        spent[f"seconds_{kind}"] += train
        spent[f"epochs_{kind}"] += 1
    return spent


def switch_cost(groups: Sequence[RunGroup]) -> dict[str, Any]:
    """RAT sec. 5, fig. 6, table 1: of every adversarial run (its mode not "standard"), the
    seconds of training in clean and in adversarial epochs and the final test accuracy, clean
    and under PGD; a run that switched (``switch_epoch`` of 1 or more) also as a share of the
    training seconds of a full AT run (no switch, or a switch at epoch 0: no clean epoch either
    way) of the same mode and epochs, ``cost_of_full_at``, and as the share its own epoch times
    give (every epoch adversarial at its mean adversarial epoch's seconds),
    ``estimated_cost_of_full_at``: runs made under different machine loads compare by that one
    only."""
    entries = []
    for group in groups:
        first = group.runs[0]
        with _reading(first):
            mode, switch = first.mode, first.switch_epoch
        if mode in (None, "standard"):
            continue
        measured = []
        for run in group.runs:
            with _reading(run):
                measured.append({**_training_seconds(run), **_final(run)})
        merged = _seed_mean(measured)
        merged["seconds_total"] = merged["seconds_clean"] + merged["seconds_adversarial"]
        entries.append({"label": group.label, "path": str(group.path), "mode": mode, "switch_epoch": switch, **merged})
    for entry in entries:
        epochs = entry["epochs_clean"] + entry["epochs_adversarial"]
        switched = bool(entry["switch_epoch"])  # a switch at epoch 0 trains no clean epoch: it is full AT
        if switched and entry["epochs_adversarial"] and entry["seconds_adversarial"] > 0:
            # the run's own epoch times, so that a full AT run made under another load cannot skew it
            per_adversarial_epoch = entry["seconds_adversarial"] / entry["epochs_adversarial"]
            entry["estimated_cost_of_full_at"] = entry["seconds_total"] / (epochs * per_adversarial_epoch)
        full = [
            other for other in entries
            if not other["switch_epoch"] and other["mode"] == entry["mode"]
            and other["epochs_clean"] + other["epochs_adversarial"] == epochs
        ]  # fmt: skip
        if switched and full and full[0]["seconds_total"] > 0:
            entry["full_at"] = full[0]["label"]
            entry["cost_of_full_at"] = entry["seconds_total"] / full[0]["seconds_total"]
    return {"runs": entries}
