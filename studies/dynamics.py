"""``dynamics``: figures of how the kernels of training runs moved (TK fig. 3, 6; LOO fig. 1, 4),
the runs overlaid, and pictures of the top NTK eigenvectors at initialisation and at the end of
every run (LOO sec. 8).

Reads the run folders of ``train``; writes PNG figures and ``results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntkrobust.studies._base import StagedOutput, StudyError, StudyResult, envelope, log
from ntkrobust.studies._common import torch_device


@dataclass(frozen=True)
class DynamicsSettings:
    runs: tuple[Path, ...]
    eigenvectors: int = 0  # top eigenvectors pictured (0: none; minutes each on a CPU)
    eigenvector_class: int = 0
    eigenvector_steps: int = 200
    device: str = "auto"


@dataclass
class DynamicsResult(StudyResult):
    summaries: list[Any]
    eigenvector_rows: tuple[list[Any], list[Any]] | None
    subtitle: str

    def write_files(self, staged: StagedOutput) -> None:
        from ntkrobust import plots

        self.record["figures"] = plots.dynamics_figures(self.summaries, staged.stage)
        if self.eigenvector_rows is not None:
            rows, cosines = self.eigenvector_rows
            plots.eigenvector_pictures(rows, staged.path("eigenvectors.png"), cosines=cosines, subtitle=self.subtitle)
            self.record["figures"]["eigenvectors"] = "eigenvectors.png"

    def summary(self) -> str:
        figures = ", ".join(sorted(self.record.get("figures", {}).values()))
        return f"{len(self.summaries)} run(s): {figures}"


def _networks(runs: Sequence[Any]) -> list[tuple[str, Path]]:
    """(label, checkpoint): the first run's network at initialisation, every run's at its end."""
    from ntkrobust.bridge.runfolder import RunFolder

    networks = [("initialisation", RunFolder(runs[0].path).checkpoint(0))]
    for run in runs:
        folder = RunFolder(run.path)
        if not folder.probe.is_file():
            raise StudyError(f"{run.path} tracked no kernels: no probe to picture eigenvectors on (--eigenvectors 0)")
        latest = folder.latest_checkpoint()
        if latest is None:
            raise StudyError(f"{run.path} has no checkpoints to picture its kernel's eigenvectors")
        networks.append((f"end of {run.label}", latest))
    return networks


def _check_same_model(path: Path, found: dict[str, Any]) -> None:
    """Refuse a checkpoint whose network is not the one its run folder's config.json trained."""
    import json

    from ntkrobust.bridge.runfolder import checkpoint_epoch

    located = checkpoint_epoch(path)
    try:
        trained = json.loads(located[0].config.read_text())["model"] if located else None
    except (OSError, ValueError, KeyError, TypeError):
        trained = None  # no readable config.json: nothing to compare with
    if not isinstance(trained, dict):
        return
    differ = [key for key in ("model", "width", "num_classes", "input_shape") if trained.get(key) != found.get(key)]
    if differ:
        what = ", ".join(f"{key} {found.get(key)} (run: {trained.get(key)})" for key in differ)
        raise StudyError(f"{path} is not the network its run trained: {what}")


def _pictured_networks(
    settings: DynamicsSettings, runs: Sequence[Any], device: Any
) -> list[tuple[str, Path, Any, Any]]:
    """(label, checkpoint, network whose kernel is pictured, probe images) of every network,
    all loaded and checked before any eigenvector is computed."""
    from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint
    from ntkrobust.bridge.linearized import LinearizedNetwork
    from ntkrobust.bridge.runfolder import checkpoint_epoch
    from ntkrobust.bridge.runs import RunError, probe_images

    loaded = []
    for label, path in _networks(runs):
        try:
            model, config, _ = load_checkpoint(path)
            located = checkpoint_epoch(path)
            assert located is not None  # every path of _networks is a run folder's checkpoint
            x = probe_images(located[0].path)
        except (CheckpointError, RunError) as err:
            raise StudyError(str(err)) from None
        _check_same_model(path, config.to_dict())
        if not 0 <= settings.eigenvector_class < config.num_classes:
            raise StudyError(
                f"--eigenvector-class {settings.eigenvector_class}: the nets have {config.num_classes} outputs"
            )
        # a linearized net's kernel is its parent's at θt, for every θ
        network = model.tangent_network() if isinstance(model, LinearizedNetwork) else model
        loaded.append((label, path, network.to(device).eval(), x))
    return loaded


def eigenvector_rows(
    settings: DynamicsSettings, runs: Sequence[Any], progress: bool
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """LOO fig. 4: pictures of the top eigenvectors of the class kernel on the probe, for the
    network at initialisation (the first run's) and at the end of every run."""
    from ntkrobust.bridge.eigenvectors import eigenvector_images, ntk_eigenvectors

    rows, cosines, summary = [], [], {}
    for label, path, network, x in _pictured_networks(settings, runs, torch_device(settings.device)):
        eigen = ntk_eigenvectors(network, x, output=settings.eigenvector_class, top=settings.eigenvectors)
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


def _summary(run: Any, dynamics_summary: Any) -> Any:
    """The run's dynamics; a history whose records have the wrong types is one line, not a traceback."""
    try:
        return dynamics_summary(run)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:
        kind = type(err).__name__
        raise StudyError(f"{run.path}: malformed {run.path.name}/history.json records ({kind}: {err})") from None


def run(settings: DynamicsSettings, *, progress: bool = False, argv: list[str] | None = None) -> DynamicsResult:
    """Read the run folders and prepare every figure that applies to them."""
    from ntkrobust import plots
    from ntkrobust.bridge.runs import RunError, dynamics_summary, json_summary, load_runs

    try:
        runs = load_runs(settings.runs)
        summaries = [_summary(run, dynamics_summary) for run in runs]
    except RunError as err:
        raise StudyError(str(err)) from None
    metrics: dict[str, Any] = {"runs": [json_summary(summary) for summary in summaries]}
    rows = None
    if settings.eigenvectors:
        pictures, cosines, about = eigenvector_rows(settings, runs, progress)
        rows = (pictures, cosines)
        metrics["eigenvectors"] = about
    config = {
        "runs": [str(path) for path in settings.runs],
        "eigenvectors": settings.eigenvectors,
        "eigenvector_class": settings.eigenvector_class,
        "eigenvector_steps": settings.eigenvector_steps,
    }
    subtitle = (
        f"top {settings.eigenvectors} eigenvectors of the class-{settings.eigenvector_class} eNTK "
        f"on the probe set; {plots.dynamics_subtitle(summaries)}"
    )
    record = envelope("dynamics", metrics, config, seconds=None, argv=argv)
    return DynamicsResult(record, summaries=summaries, eigenvector_rows=rows, subtitle=subtitle)
