"""``dynamics``: figures of how the kernels of training runs moved (TK fig. 3, 6; LOO fig. 1, 4),
the runs overlaid, the kernel distance of every run to a baseline run and the kernel
specialization matrices at chosen epochs (RAT figs. 3-5, 7-9, 17-18), pictures of the top
NTK eigenvectors at initialisation and at the end of every run (LOO sec. 8), and of two-stage
training: the final accuracy of linearized / centered networks against their spawn epoch t'
(LOO fig. 2, table 2) and the training seconds of clean epochs before adversarial ones against
the final accuracy (RAT sec. 5, fig. 6, table 1).

Reads the run folders of ``train`` (a folder of ``train --seeds`` as one run: its curves drawn
as mean ± std over the seeds, LOO's n = 3); writes PNG figures and ``results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ntkrobust.studies._base import (
    Clock,
    StagedOutput,
    StudyError,
    StudyResult,
    changed_flags,
    checked_together,
    envelope,
    flags_do,
    log,
    warn,
)
from ntkrobust.studies._common import check_counts, check_distinct_files, torch_device


@dataclass(frozen=True)
class DynamicsSettings:
    runs: tuple[Path, ...]
    baseline: Path | None = None  # the run every run's kernels are compared with (RAT sec. 5)
    ksm_epochs: tuple[float, ...] = ()  # columns of the specialization figures (): first and last tracked
    eigenvectors: int = 0  # top eigenvectors pictured (0: none; minutes each on a CPU)
    eigenvector_class: int = 0
    eigenvector_steps: int = 200
    device: str = "auto"

    COUNTS: ClassVar[dict[str, int]] = {
        "eigenvectors": 0,
        "eigenvector_class": 0,
        "eigenvector_steps": 1,
    }  # checked by check_counts, as the parser does


@dataclass
class DynamicsResult(StudyResult):
    summaries: list[Any]
    eigenvector_rows: tuple[list[Any], list[Any]] | None
    subtitle: str

    def write_files(self, staged: StagedOutput) -> None:
        from ntkrobust import plots

        epochs = self.record["config"]["ksm_epochs"] or None
        clock = Clock()
        self.record["figures"] = plots.dynamics_figures(
            self.summaries,
            staged.stage,
            ksm_epochs=epochs,
            spawn_accuracy=self.record.get("spawn_accuracy"),
            switch_cost=self.record.get("switch_cost"),
        )
        clock.mark("figures", f"{len(self.record['figures'])} figures drawn")
        if self.eigenvector_rows is not None:
            rows, cosines = self.eigenvector_rows
            plots.eigenvector_pictures(rows, staged.path("eigenvectors.png"), cosines=cosines, subtitle=self.subtitle)
            self.record["figures"]["eigenvectors"] = "eigenvectors.png"

    def summary(self) -> str:
        figures = ", ".join(sorted(self.record.get("figures", {}).values()))
        return f"{len(self.summaries)} run(s): {figures}"


def _networks(runs: Sequence[Any]) -> list[tuple[str, Path, Any]]:
    """(label, checkpoint, its run): every run's network at its start ("start of LABEL"; ``_pictured_networks``
    says "initialisation" where it is not a linearized run's, and keeps each distinct one once),
    then every run's at its end."""
    from ntkrobust.bridge.files import not_a_file
    from ntkrobust.bridge.runfolder import RunFolder

    networks = [(f"start of {run.label}", RunFolder(run.path).checkpoint(0), run) for run in runs]
    for run in runs:
        folder = RunFolder(run.path)
        if not folder.probe.is_file():
            raise StudyError(f"{run.path} tracked no kernels: no probe to picture eigenvectors on (--eigenvectors 0)")
        # a FIFO or a folder at a checkpoint's name is no checkpoint: the latest would be an
        # earlier epoch's, pictured as the run's end without a word
        for blocked in (p for p in folder.in_the_way() if p.parent == folder.checkpoint_dir):
            raise StudyError(f"{blocked} {not_a_file(blocked)}, where a checkpoint of the run belongs")
        latest = folder.latest_checkpoint()
        if latest is None:
            raise StudyError(f"{run.path} has no checkpoints to picture its kernel's eigenvectors")
        networks.append((f"end of {run.label}", latest, run))
    return networks


def _check_same_model(path: Path, found: dict[str, Any], history: dict[str, Any]) -> None:
    """Refuse a checkpoint whose network is not the one its run trained: the model its run's
    history (already read and checked by ``load_run``) records, the same as its config.json.
    A history that records no model cannot vouch for the checkpoint, so it is refused too."""
    config = history.get("config")
    trained = config.get("model") if isinstance(config, dict) else None
    if not isinstance(trained, dict):
        raise StudyError(f"{path.parent.parent}'s history records no model to check {path.name} against")
    differ = [key for key in ("model", "width", "num_classes", "input_shape") if trained.get(key) != found.get(key)]
    if differ:
        what = ", ".join(f"{key} {found.get(key)} (run: {trained.get(key)})" for key in differ)
        raise StudyError(f"{path} is not the network its run trained: {what}")


def _check_pictured(settings: DynamicsSettings, path: Path, run: Any, model: Any, config: Any, x: Any) -> None:
    """Refuse, before any eigenvector is computed, what would fail (or mislead) only in the middle
    of the computation: more eigenvectors than probe points, a probe the network cannot take,
    a diverged network (NaN weights: ``eigh`` fails on its kernel)."""
    import torch

    _check_same_model(path, config.to_dict(), run.history)
    if not 0 <= settings.eigenvector_class < config.num_classes:
        raise StudyError(
            f"--eigenvector-class {settings.eigenvector_class}: the net of {path.parent.parent} has "
            f"{config.num_classes} outputs (0 to {config.num_classes - 1})"
        )
    if not 1 <= settings.eigenvectors <= x.shape[0]:
        raise StudyError(
            f"--eigenvectors {settings.eigenvectors}: the probe of {path.parent.parent} has {x.shape[0]} points; "
            f"ask for 1 to {x.shape[0]}"
        )
    if tuple(x.shape[1:]) != tuple(config.input_shape):
        raise StudyError(
            f"{path.parent.parent}: probe images of shape {tuple(x.shape[1:])}, "
            f"but the network {path.name} takes {tuple(config.input_shape)}"
        )
    weights = model.state_dict().items()
    if not all(bool(torch.isfinite(t).all()) for _, t in weights if t.is_floating_point()):
        raise StudyError(f"{path}: the network's weights hold NaN or inf (a diverged run?)")


def _pictured_networks(
    settings: DynamicsSettings, runs: Sequence[Any], device: Any
) -> list[tuple[str, Path, Any, Any]]:
    """(label, checkpoint, network whose kernel is pictured, probe images) of every network,
    all loaded and checked before any eigenvector is computed."""
    from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint
    from ntkrobust.bridge.linearized import CenteredStandardNetwork, LinearizedNetwork
    from ntkrobust.bridge.runfolder import checkpoint_epoch
    from ntkrobust.bridge.runs import RunError, probe_images

    loaded: list[tuple[str, Path, Any, Any]] = []
    for label, path, run in _networks(runs):
        try:
            model, config, _ = load_checkpoint(path)
            located = checkpoint_epoch(path)
            assert located is not None  # every path of _networks is a run folder's checkpoint
            x = probe_images(located[0].path)
        except (CheckpointError, RunError) as err:
            raise StudyError(str(err)) from None
        _check_pictured(settings, path, run, model, config, x)
        if isinstance(model, LinearizedNetwork | CenteredStandardNetwork):
            network = model.tangent_network()  # its kernel is its parent's at θt, for every θ
        else:
            network = model  # and its start is its initialisation
            label = label.replace("start of ", "initialisation of ", 1) if label.startswith("start of ") else label
        loaded.append((label, path, network.to(device).eval(), x))
    return _distinct_starts(loaded, len(runs))


def _distinct_starts(loaded: list[tuple[str, Path, Any, Any]], runs: int) -> list[tuple[str, Path, Any, Any]]:
    """Each run's starting network once: runs of one seed start from the same weights (one row,
    "initialisation"), runs of other seeds or linearized runs (their parent at t') from their own."""
    import numpy as np
    import torch

    def same(a: tuple[str, Path, Any, Any], b: tuple[str, Path, Any, Any]) -> bool:
        one, other = a[2].state_dict(), b[2].state_dict()
        return (
            type(a[2]) is type(b[2])
            and one.keys() == other.keys()
            and all(one[k].shape == other[k].shape and torch.equal(one[k], other[k]) for k in one)
            and np.array_equal(a[3], b[3])  # the probes (images, as the runs saved them)
        )

    starts: list[tuple[str, Path, Any, Any]] = []
    for start in loaded[:runs]:
        if not any(same(start, kept) for kept in starts):
            starts.append(start)
    if len(starts) == 1 and starts[0][0].startswith("initialisation of "):  # shared by every run
        starts = [("initialisation", *starts[0][1:])]
    return starts + loaded[runs:]


def eigenvector_rows(
    settings: DynamicsSettings, networks: Sequence[tuple[str, Path, Any, Any]], progress: bool
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """LOO fig. 4: pictures of the top eigenvectors of the class kernel on the probe, for the
    ``_pictured_networks``: the networks the runs start from (each distinct one once) and every
    run's at its end."""
    from ntkrobust.bridge.eigenvectors import KernelRankError, eigenvector_images, ntk_eigenvectors

    rows, cosines, summary = [], [], {}
    for label, path, network, x in networks:
        try:
            eigen = ntk_eigenvectors(network, x, output=settings.eigenvector_class, top=settings.eigenvectors)
        except KernelRankError as err:  # a kernel of rank below --eigenvectors: one line, not a traceback
            raise StudyError(f"{path}: {err}") from None
        pictures = [
            eigenvector_images(
                network,
                eigen,
                maximize=maximize,
                steps=settings.eigenvector_steps,
                image_shape=tuple(x.shape[1:]),
                seed=0,
                progress=progress,
            )
            for maximize in (True, False)
        ]
        log.info(f"eigenvectors of the {label} network pictured")
        rows.append((label, pictures[0][0], pictures[1][0]))
        cosines.append((pictures[0][1], pictures[1][1]))
        summary[label] = {
            "checkpoint": str(path),
            "eigenvalues": [float(v) for v in eigen.eigenvalues],
            "cosine_max": [float(c) for c in pictures[0][1]],
            "cosine_min": [float(c) for c in pictures[1][1]],
        }
    return rows, cosines, summary


def _check_ksm_epochs(epochs: Sequence[float], groups: Sequence[Any]) -> None:
    """Every run (its first seed: the one pictured) tracked a kernel at every epoch asked for."""
    import numpy as np

    from ntkrobust.bridge.run_groups import number_listing

    for epoch in epochs:
        for group in groups:
            tracked = group.runs[0].kernel_epochs
            if not np.any(np.abs(tracked - epoch) < 1e-9):
                raise StudyError(
                    f"--ksm-epochs {epoch:g}: {group.label} tracked no kernel at epoch {epoch:g} "
                    f"(tracked: {number_listing(tracked.tolist())})"
                )


def _baseline(settings: DynamicsSettings, groups: Sequence[Any]) -> Any:
    """The baseline run (a folder of seeds: its first seed), checked against every run to compare."""
    from ntkrobust.bridge.run_groups import check_comparable, load_run_groups

    if settings.baseline is None:
        return None
    given = next((group for group in groups if group.path.resolve() == settings.baseline.resolve()), None)
    baseline = (given or load_run_groups([settings.baseline])[0]).runs[0]  # one of the runs: read once
    for group in groups:
        for run in group.runs:
            check_comparable(baseline, run)
    return baseline


def _same_statistics(baseline: Any, group: Any) -> Any:
    """The baseline as seen under the BatchNorm statistics of ``group``'s kernels (a view of a run
    tracked both ways, ``bridge.batchnorm_views``, or the one statistics a run tracked) where the
    baseline tracked its kernels under it too: KD(Θ_t^baseline, Θ_t^run) then compares kernels of
    one statistics, and a run is at distance 0 from itself under either; else the baseline as given."""
    from ntkrobust.bridge.batchnorm_views import statistics_modes, statistics_views

    run = group.runs[0]
    statistics = run.statistics or next(iter(statistics_modes(run)), None)
    if baseline is None or statistics is None or statistics_modes(baseline)[:1] == [statistics]:
        return baseline
    return next((view for view in statistics_views(baseline) if view.statistics == statistics), baseline)


def _summary(group: Any, baseline: Any) -> Any:
    """The group's dynamics; a history whose records have the wrong types is one line, not a traceback."""
    from ntkrobust.bridge.run_groups import group_summary

    try:
        return group_summary(group, baseline=_same_statistics(baseline, group))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:
        kind = type(err).__name__
        path = group.path
        raise StudyError(f"{path}: malformed {path.name}/history.json records ({kind}: {err})") from None


def _two_stage_records(groups: Sequence[Any]) -> dict[str, Any]:
    """results.json's ``spawn_accuracy`` (LOO fig. 2, table 2: spawned networks by spawn epoch)
    and ``switch_cost`` (RAT sec. 5, table 1: seconds of clean and adversarial epochs), each
    only when some run is one it draws: a linearized / centered run, an adversarial run."""
    from ntkrobust.bridge.run_groups import spawn_accuracy, switch_cost

    spawned, adversarial = spawn_accuracy(groups), switch_cost(groups)
    return {
        name: record
        for name, record, key in (("spawn_accuracy", spawned, "lines"), ("switch_cost", adversarial, "runs"))
        if record[key]
    }


def _baseline_record(summaries: Sequence[Any], baseline: Any) -> dict[str, Any]:
    """results.json's ``baseline_distance``: the baseline and every run's (every seed's) distances."""
    entries = []
    for summary in summaries:
        for seed, one in zip(summary.get("seeds") or [None], summary.get("seed_runs") or [summary], strict=True):
            entries.append({"label": summary["label"], "path": one["path"], "seed": seed, **one["baseline_distance"]})
    return {"baseline": str(baseline.path), "label": baseline.label, "runs": entries}


def _check_unread(settings: DynamicsSettings) -> None:
    """Refuse the picture flags without pictures. (``--device`` is read without them too: it
    picks the backend of a torchrun launch.)"""
    if settings.eigenvectors:
        return
    unread = changed_flags(settings, ("eigenvector_class", "eigenvector_steps"))
    if unread:
        pronoun = "them" if len(unread) > 1 else "it"
        raise StudyError(
            f"{flags_do(unread, 'set')} the eigenvector pictures: give --eigenvectors K, or leave {pronoun} out"
        )


def _undrawn(summaries: Sequence[Any], ksm_epochs: Sequence[float] | None) -> list[str]:
    """Say which figures a user might look for are not drawn, and why (warned now, and in the record):
    the kernel figures of runs that tracked no kernel, the specialization figures whose every panel
    is undefined."""
    from ntkrobust import plots

    notes: list[str] = []
    untracked = [str(summary.get("label")) for summary in summaries if not summary.get("kernels")]
    if len(untracked) == len(summaries):
        warn(notes, "no run tracked a kernel (trained with --track-kernel 0?): no kernel figures, only accuracies")
        return notes
    if untracked:
        warn(notes, f"{', '.join(untracked)} tracked no kernel (--track-kernel 0?): it is in no kernel figure")
    for name, why in plots.undrawn_specializations(summaries, ksm_epochs).items():
        if why != "not tracked":
            said = why.replace("specialization is undefined: ", "")
            warn(notes, f"{name}.png not drawn: the specialization is undefined in every panel ({said})")
    return notes


def run(settings: DynamicsSettings, *, progress: bool = False, argv: list[str] | None = None) -> DynamicsResult:
    """Read the run folders, check what the flags ask of them, and prepare every figure that
    applies to them."""
    check_counts(settings)
    from ntkrobust import plots
    from ntkrobust.bridge.batchnorm_views import statistics_groups
    from ntkrobust.bridge.run_groups import load_run_groups
    from ntkrobust.bridge.runs import RunError, json_summary

    clock = Clock()
    # the runs and networks as every process reads them, checked on all of them before the first
    # collective (the eigenvectors' kernels): one that fails stops them all, the first says why
    with checked_together():
        _check_unread(settings)
        check_distinct_files([str(path) for path in settings.runs], "run")
        try:
            groups = load_run_groups(settings.runs)
            baseline = _baseline(settings, groups)
            _check_ksm_epochs(settings.ksm_epochs, groups)
            # the pictured networks are loaded and checked here, before the kernel trajectories are
            # measured: a checkpoint or probe they refuse ends the command before any compute
            networks = (
                _pictured_networks(settings, [group.runs[0] for group in groups], torch_device(settings.device))
                if settings.eigenvectors
                else None
            )
            clock.mark("runs", f"{len(groups)} run(s) read")
            two_stage = _two_stage_records(groups)
            # a run tracked under both BatchNorm statistics is drawn as two (RAT figs. 3-4)
            summaries = [_summary(group, baseline) for group in statistics_groups(groups)]
        except RunError as err:
            raise StudyError(str(err)) from None
    clock.mark("summaries", "kernel trajectories measured")
    notes = _undrawn(summaries, settings.ksm_epochs or None)
    metrics: dict[str, Any] = {"runs": [json_summary(summary) for summary in summaries], **two_stage}
    if baseline is not None:
        metrics["baseline_distance"] = _baseline_record(summaries, baseline)
    rows = None
    if networks is not None:
        pictures, cosines, about = eigenvector_rows(settings, networks, progress)
        rows = (pictures, cosines)
        metrics["eigenvectors"] = about
        clock.mark("eigenvectors", f"top {settings.eigenvectors} eigenvectors pictured")
    config = {
        "runs": [str(path) for path in settings.runs],
        "baseline": None if settings.baseline is None else str(settings.baseline),
        "ksm_epochs": list(settings.ksm_epochs),
        "eigenvectors": settings.eigenvectors,
        "eigenvector_class": settings.eigenvector_class,
        "eigenvector_steps": settings.eigenvector_steps,
    }
    names = summaries[0].get("class_names") or []
    output = settings.eigenvector_class
    name = str(names[output]) if output < len(names) else str(output)
    # the class the output stands for: output 0 of a 3-vs-8 task is class 3
    which = f"class {name}" if name == str(output) else f"output {output} (class {name})"
    subtitle = f"top {settings.eigenvectors} eigenvectors of the eNTK of {which} on the probe set; " + (
        plots.dynamics_subtitle(summaries)
    )
    seconds = {"runs": clock.between("start", "runs"), "summaries": clock.between("runs", "summaries")}
    if settings.eigenvectors:
        seconds["eigenvectors"] = clock.between("summaries", "eigenvectors")
    seconds["total"] = clock.since_start()
    record = envelope("dynamics", metrics, config, seconds=seconds, argv=argv, warnings=notes)
    return DynamicsResult(record, summaries=summaries, eigenvector_rows=rows, subtitle=subtitle)
