"""``studies.dynamics.run(settings)``: every figure of how the kernels of training runs moved, the
eigenvector pictures, the summary, and the run folders it refuses before any compute."""

from __future__ import annotations

import json
from pathlib import Path

from ntkrobust.studies import dynamics
from ntkrobust.studies.dynamics import DynamicsSettings

NO_EIGENVECTORS = ("ntkrobust.bridge.eigenvectors.ntk_eigenvectors",)
FIGURES = {
    "accuracy.png",
    "eigenvectors.png",
    "kernel_distance.png",
    "kernel_images.png",
    "norm_concentration.png",
    "polar.png",
    "rank_specialization.png",
    "velocity_distance.png",
}


def runs(tracked_runs):
    return tuple(tracked_runs[mode].out for mode in ("standard", "pgd"))


def test_dynamics_renders_every_figure(tracked_runs, tmp_path, assert_real_png):
    result = dynamics.run(DynamicsSettings(runs=runs(tracked_runs), eigenvectors=2, eigenvector_steps=5))
    record = result.record
    assert [run["label"] for run in record["runs"]] == ["fc2 standard", "fc2 pgd"]
    rows = record["eigenvectors"]
    assert list(rows) == ["initialisation", "end of fc2 standard", "end of fc2 pgd"]
    assert all(len(row["eigenvalues"]) == 2 and len(row["cosine_max"]) == 2 for row in rows.values())
    out = result.save(tmp_path / "figures")
    assert {p.name for p in out.iterdir()} == FIGURES | {"results.json"}
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["figures"].values()) == FIGURES and saved["config"]["eigenvectors"] == 2
    assert_real_png(out / "kernel_images.png")
    assert result.summary() == f"2 run(s): {', '.join(sorted(FIGURES))}"


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, refuses):
    (tmp_path / "empty").mkdir()
    refuses(dynamics, DynamicsSettings(runs=(tmp_path / "empty",), eigenvectors=0), "history.json")


def test_eigenvectors_of_a_run_without_kernels_are_refused(untracked_run, refuses):
    settings = DynamicsSettings(runs=(untracked_run.out,), eigenvectors=1)
    refuses(dynamics, settings, "tracked no kernels: no probe to picture eigenvectors on", compute=NO_EIGENVECTORS)


def test_an_eigenvector_class_beyond_the_outputs_is_refused(tracked_runs, refuses):
    settings = DynamicsSettings(runs=runs(tracked_runs), eigenvectors=1, eigenvector_class=10)
    refuses(dynamics, settings, "--eigenvector-class 10: the nets have 10 outputs", compute=NO_EIGENVECTORS)


def _copy(tracked_runs, tmp_path):
    import shutil

    return Path(shutil.copytree(tracked_runs["standard"].out, tmp_path / "copy"))


def test_a_probe_without_images_is_one_line(tracked_runs, tmp_path, refuses):
    import numpy as np

    run = _copy(tracked_runs, tmp_path)
    with np.load(run / "kernels" / "probe.npz") as probe:
        kept = {k: probe[k] for k in probe.files if k != "x"}
    np.savez(run / "kernels" / "probe.npz", **kept)  # a KeyError on 'x' before the fix
    refuses(dynamics, DynamicsSettings(runs=(run,), eigenvectors=1), "no 'x' array", compute=NO_EIGENVECTORS)


def test_a_history_with_wrong_types_is_one_line(tracked_runs, tmp_path, refuses):
    run = _copy(tracked_runs, tmp_path)
    history = json.loads((run / "history.json").read_text())
    history["epochs"][1]["accuracy"] = "high"  # an AttributeError in the summary before the fix
    (run / "history.json").write_text(json.dumps(history))
    refuses(dynamics, DynamicsSettings(runs=(run,), eigenvectors=0), "epoch record 1 has malformed accuracy")


def test_a_final_checkpoint_of_another_network_is_refused(tracked_runs, tmp_path, refuses):
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config

    run = _copy(tracked_runs, tmp_path)
    other = model_config("fc1", (1, 8, 8), 10, width=8)
    save_checkpoint(run / "checkpoints" / "epoch_002.pt", build_model(other), other, epoch=2)
    settings = DynamicsSettings(runs=(run,), eigenvectors=1)
    refuses(dynamics, settings, "is not the network its run trained: model fc1 (run: fc2)", compute=NO_EIGENVECTORS)
