"""``studies.dynamics.run(settings)``: every figure of how the kernels of training runs moved, the
eigenvector pictures, the summary, and the run folders it refuses before any compute; the
kernel distance to a baseline run and the specialization heatmaps (RAT), and a folder of
``train --seeds`` drawn as one run, mean ± std over its seeds; the two-stage figures: networks
spawned from a parent's checkpoints against the spawn epoch (LOO fig. 2) and the cost of clean
epochs before adversarial ones (RAT sec. 5, table 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.bridge.eigenvectors import KernelRankError
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
    "specialization_adversarial.png",
    "specialization_adversarial_labels.png",
    "specialization_clean.png",
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
    # the PGD run is adversarial; under their own labels the nets leave classes without a point:
    # the figure draws the columns that are defined (it was not drawn, every panel undefined)
    figures = FIGURES | {"switch_cost.png"}
    assert record["warnings"] == []
    own = [k["adversarial_labels"] for mode in ("standard", "pgd") for k in tracked_runs[mode].record["kernels"]]
    assert any("specialization_columns" in metrics for metrics in own)
    assert {p.name for p in out.iterdir()} == figures | {"results.json"}
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["figures"].values()) == figures and saved["config"]["eigenvectors"] == 2
    assert list(saved["seconds"]) == ["runs", "summaries", "eigenvectors", "total"]
    assert saved["seconds"]["total"] >= sum(saved["seconds"][stage] for stage in ("runs", "summaries", "eigenvectors"))
    assert "spawn_accuracy" not in saved and [run["label"] for run in saved["switch_cost"]["runs"]] == ["fc2 pgd"]
    assert_real_png(out / "kernel_images.png")
    assert result.summary() == f"2 run(s): {', '.join(sorted(figures))}"


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, refuses):
    (tmp_path / "empty").mkdir()
    refuses(dynamics, DynamicsSettings(runs=(tmp_path / "empty",), eigenvectors=0), "history.json")


def test_eigenvectors_of_a_run_without_kernels_are_refused(untracked_run, refuses):
    settings = DynamicsSettings(runs=(untracked_run.out,), eigenvectors=1)
    refuses(dynamics, settings, "tracked no kernels: no probe to picture eigenvectors on", compute=NO_EIGENVECTORS)


def test_an_eigenvector_class_beyond_the_outputs_is_refused(tracked_runs, refuses):
    settings = DynamicsSettings(runs=runs(tracked_runs), eigenvectors=1, eigenvector_class=10)
    message = f"--eigenvector-class 10: the net of {settings.runs[0]} has 10 outputs (0 to 9)"
    refuses(dynamics, settings, message, compute=NO_EIGENVECTORS)


def _copy(tracked_runs, tmp_path):
    import shutil

    return Path(shutil.copytree(tracked_runs["standard"].out, tmp_path / "copy"))


def test_a_probe_without_images_is_one_line(tracked_runs, tmp_path, refuses):
    import numpy as np

    run = _copy(tracked_runs, tmp_path)
    with np.load(run / "kernels" / "probe.npz") as probe:
        kept = {k: probe[k] for k in probe.files if k != "x"}
    np.savez(run / "kernels" / "probe.npz", **kept)  # a KeyError on 'x' before the fix
    refuses(dynamics, DynamicsSettings(runs=(run,), eigenvectors=1), "lacks array(s) x ", compute=NO_EIGENVECTORS)


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


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_a_checkpoint_that_is_no_file_is_refused_not_passed_over(kind, tracked_runs, tmp_path, refuses):
    """A FIFO or a folder at the last checkpoint's name was skipped by ``RunFolder.checkpoints``:
    the epoch before it was pictured as the run's end, exit 0."""
    import os

    run = _copy(tracked_runs, tmp_path)
    last = run / "checkpoints" / "epoch_002.pt"
    last.unlink()
    if kind == "fifo":
        os.mkfifo(last)
    else:
        last.mkdir()
    said = "is not a regular file" if kind == "fifo" else "is a folder"
    message = f"{last} {said}, where a checkpoint of the run belongs"
    refuses(dynamics, DynamicsSettings(runs=(run,), eigenvectors=1), message, compute=NO_EIGENVECTORS)


def test_the_checked_network_is_the_one_the_history_records(tracked_runs, tmp_path, refuses):
    """The checkpoints are checked against the model of the history ``load_run`` read: a
    config.json that cannot be read (here a FIFO, which blocked its reader for good) changes
    nothing, and a history that records no model is refused (the check was skipped silently)."""
    import os

    run = _copy(tracked_runs, tmp_path)
    (run / "config.json").unlink()
    os.mkfifo(run / "config.json")
    history = json.loads((run / "history.json").read_text())
    del history["config"]["model"]
    (run / "history.json").write_text(json.dumps(history))
    settings = DynamicsSettings(runs=(run,), eigenvectors=1)
    refuses(
        dynamics, settings, "copy's history records no model to check epoch_000.pt against", compute=NO_EIGENVECTORS
    )


# -- the kernel distance to a baseline run and the specialization heatmaps (RAT) ---------------

NO_SUMMARY = ("ntkrobust.bridge.runs.dynamics_summary", "ntkrobust.bridge.run_groups.baseline_distance")


def test_a_run_as_its_own_baseline_is_at_distance_zero(tracked_runs, tmp_path, drawn, assert_real_png):
    standard, pgd = runs(tracked_runs)
    result = dynamics.run(DynamicsSettings(runs=(standard, pgd), baseline=standard, ksm_epochs=(0, 2)))
    distances = result.record["baseline_distance"]
    assert list(result.record["seconds"]) == ["runs", "summaries", "total"]  # no eigenvectors asked for
    assert distances["baseline"] == str(standard) and distances["label"] == "fc2 standard"
    itself, other = distances["runs"]
    assert itself["steps"] == other["steps"] and len(itself["steps"]) == 3  # initialisation and two epochs
    assert itself["epochs"] == [0.0, 1.0, 2.0]
    assert itself["clean"] == [0.0] * 3 and itself["adversarial"] == [0.0] * 3
    assert other["clean"][0] == 0.0 < other["clean"][-1]  # one initialisation (seed), then apart
    assert other["adversarial"][-1] > 0
    out = result.save(tmp_path / "figures")
    saved = json.loads((out / "results.json").read_text())
    assert saved["baseline_distance"]["runs"][1]["clean"] == other["clean"]
    assert saved["config"]["baseline"] == str(standard) and saved["config"]["ksm_epochs"] == [0, 2]
    for name in ("baseline_distance.png", "specialization_clean.png", "specialization_adversarial.png"):
        assert_real_png(out / name)
    clean = drawn["baseline_distance.png"].axes[0]  # the C-NTK panel: the baseline's line first
    assert [list(line.get_ydata()) for line in clean.lines[:2]] == [[0.0] * 3, other["clean"]]
    heatmaps = drawn["specialization_clean.png"].axes
    assert [ax.get_title().split(" ·")[0] for ax in heatmaps[:4]] == ["epoch 0", "epoch 2"] * 2


def test_a_baseline_on_another_probe_is_refused(tracked_runs, tmp_path, refuses):
    import numpy as np

    run = _copy(tracked_runs, tmp_path)
    with np.load(run / "kernels" / "probe.npz") as probe:
        arrays = {k: probe[k] for k in probe.files}
    arrays["x"] = arrays["x"][::-1].copy()  # the same images in another order: another probe
    np.savez(run / "kernels" / "probe.npz", **arrays)
    settings = DynamicsSettings(runs=(run,), baseline=runs(tracked_runs)[0])
    error = refuses(dynamics, settings, "tracked their kernels on different probes", compute=NO_SUMMARY)
    assert str(run) in str(error) and str(runs(tracked_runs)[0]) in str(error)


def test_a_baseline_without_a_shared_step_is_refused(tracked_runs, untracked_run, refuses):
    settings = DynamicsSettings(runs=runs(tracked_runs), baseline=untracked_run.out)
    refuses(dynamics, settings, "shares no tracked step with the baseline", compute=NO_SUMMARY)


def test_a_specialization_epoch_a_run_did_not_track_is_refused(tracked_runs, refuses):
    settings = DynamicsSettings(runs=runs(tracked_runs), ksm_epochs=(0, 5))
    message = "--ksm-epochs 5: fc2 standard tracked no kernel at epoch 5 (tracked: 0, 1, 2)"
    refuses(dynamics, settings, message, compute=NO_SUMMARY)


def test_the_cli_reads_baseline_and_ksm_epochs():
    from ntkrobust import cli

    args = cli.build_parser().parse_args(
        ["dynamics", "a", "--baseline", "b", "--ksm-epochs", "0,2.5,2.5", "--out", "o"]
    )
    settings = cli.settings_from(DynamicsSettings, args)
    assert settings.baseline == Path("b") and settings.ksm_epochs == (0.0, 2.5)
    defaults = cli.settings_from(DynamicsSettings, cli.build_parser().parse_args(["dynamics", "a", "--out", "o"]))
    assert defaults.baseline is None and defaults.ksm_epochs == ()


# -- a folder of train --seeds: one run, mean ± std over its seeds -----------------------------


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory, small_training):
    """``train --seeds 0,1`` of one epoch, saved (seeds.json beside seed_0 and seed_1)."""
    from ntkrobust.studies import train

    result = train.run(small_training(tmp_path_factory.mktemp("seeds") / "run", epochs=1, seeds=(0, 1)))
    return result.save(result.out)


def _accuracies(folder: Path, key: str) -> list[float]:
    history = json.loads((folder / "history.json").read_text())
    return [record["accuracy"]["running"][key] for record in history["epochs"]]


def test_a_folder_of_seeds_is_one_run_drawn_as_mean_and_std(seed_runs, tmp_path, drawn, assert_heading):
    import numpy as np

    from ntkrobust.plots._runs import _metric_series, _seeded

    result = dynamics.run(DynamicsSettings(runs=(seed_runs,)))
    (group,) = result.record["runs"]
    assert group["label"] == "fc2 standard (2 seeds)" and group["seeds"] == [0, 1]
    assert [seed["path"] for seed in group["seed_runs"]] == [str(seed_runs / "seed_0"), str(seed_runs / "seed_1")]
    out = result.save(tmp_path / "figures")
    # under the nets' own labels some classes have no point: drawn with those columns grey
    assert {p.name for p in out.iterdir()} == FIGURES - {"eigenvectors.png"} | {"results.json"}

    # the curves: numpy's mean and sample std of the seeds' own numbers
    each = np.array([_accuracies(seed_runs / f"seed_{s}", "test_clean") for s in (0, 1)])
    accuracy = drawn["accuracy.png"].axes[0]
    test_clean = accuracy.lines[0]
    np.testing.assert_allclose(test_clean.get_ydata(), each.mean(axis=0))
    band = accuracy.collections[0].get_paths()[0].vertices
    for epoch, mean, std in zip([0, 1], each.mean(axis=0), each.std(axis=0, ddof=1), strict=True):
        at = band[np.isclose(band[:, 0], epoch), 1]
        np.testing.assert_allclose([at.min(), at.max()], [mean - std, mean + std])
    summary = result.summaries[0]
    norms = np.array([[r["clean"]["frobenius_norm"] for r in seed["kernels"]] for seed in summary["seed_runs"]])
    epochs, mean, spread, _, missing = _seeded(summary, _metric_series, "clean", "frobenius_norm")
    assert epochs.tolist() == [0.0, 1.0] and missing is None
    np.testing.assert_allclose(mean, norms.mean(axis=0))
    np.testing.assert_allclose(spread, norms.std(axis=0, ddof=1))

    # the pictures: the first seed's kernels, and the subtitle says so
    np.testing.assert_array_equal(summary["final_kernel"], summary["seed_runs"][0]["final_kernel"])
    assert_heading(drawn["kernel_images.png"], "runs of several seeds pictured by their first seed (seed 0)")
    assert_heading(drawn["norm_concentration.png"], "runs of several seeds: mean ± sample std over 2 seeds (band)")


def test_seeds_that_do_not_share_their_epochs_are_refused(seed_runs, tmp_path, refuses):
    import shutil

    copy = Path(shutil.copytree(seed_runs, tmp_path / "seeds"))
    history = json.loads((copy / "seed_1" / "history.json").read_text())
    history["epochs"] = history["epochs"][:1]
    (copy / "seed_1" / "history.json").write_text(json.dumps(history))
    message = "seed 1 and seed 0 differ in their epoch records (epochs 0 vs 0, 1): the seeds of one curve must"
    refuses(dynamics, DynamicsSettings(runs=(copy,)), message, compute=NO_SUMMARY)
    (copy / "seeds.json").unlink()  # an interrupted train --seeds
    refuses(dynamics, DynamicsSettings(runs=(copy,)), "seed runs without seeds.json", compute=NO_SUMMARY)


def test_a_folder_of_seeds_as_baseline_is_its_first_seed(seed_runs, tracked_runs):
    standard = runs(tracked_runs)[0]
    result = dynamics.run(DynamicsSettings(runs=(seed_runs, standard), baseline=seed_runs))
    distances = result.record["baseline_distance"]
    assert distances["baseline"] == str(seed_runs / "seed_0") and distances["label"] == "fc2 standard (2 seeds), seed 0"
    first, second, other = distances["runs"]
    assert (first["seed"], second["seed"], other["seed"]) == (0, 1, None)
    assert first["clean"] == [0.0, 0.0] and second["clean"][0] > 0  # another initialisation


def test_runs_from_other_initialisations_each_show_their_own(seed_runs, tracked_runs, drawn, tmp_path):
    standard, other = runs(tracked_runs)[0], seed_runs / "seed_1"  # seed 0 and seed 1
    settings = DynamicsSettings(runs=(standard, other), eigenvectors=1, eigenvector_steps=2)
    result = dynamics.run(settings)
    result.save(tmp_path / "two")
    assert result.subtitle.startswith("top 1 eigenvectors of the eNTK of class 0 on the probe set; ")
    record = result.record
    first, second = (run["label"] for run in record["runs"])
    starts = [f"initialisation of {first}", f"initialisation of {second}"]
    assert list(record["eigenvectors"]) == [*starts, f"end of {first}", f"end of {second}"]
    titles = [ax.get_title().split("\n")[0] for ax in drawn["kernel_images.png"].axes if ax.get_title()]
    assert titles[:2] == starts and len(titles) == 4
    record = dynamics.run(DynamicsSettings(runs=runs(tracked_runs), eigenvectors=1, eigenvector_steps=2)).record
    assert next(iter(record["eigenvectors"])) == "initialisation"  # one seed: one shared start


def test_a_run_tracked_under_both_batchnorm_statistics_is_drawn_as_two(tmp_path, small_training, drawn, tracked_runs):
    """RAT figs. 3-4 set the kernels of running statistics ("w buffer") beside those of batch
    statistics ("w/o buffer"); a run of --batchnorm both records both, and dynamics draws both
    (it drew the running statistics' alone)."""
    import numpy as np

    from ntkrobust.studies import train

    run = train.run(small_training(tmp_path / "bn", model="resnet18", width=2, epochs=1, batchnorm="both")).out
    history = json.loads((run / "history.json").read_text())
    result = dynamics.run(DynamicsSettings(runs=(run, runs(tracked_runs)[0])))
    result.save(tmp_path / "figures")
    summaries = result.record["runs"]
    running, batch = summaries[:2]
    assert (running["statistics"], batch["statistics"]) == ("running", "batch") and "statistics" not in summaries[2]
    assert running["label"].endswith(", BatchNorm running stats") and batch["label"].endswith(", BatchNorm batch stats")
    for summary, key in ((running, None), (batch, "batch_statistics")):
        recorded = [record if key is None else record[key] for record in history["kernels"]]
        norms = [record["clean"]["frobenius_norm"] for record in recorded]
        assert [record["clean"]["frobenius_norm"] for record in summary["kernels"]] == norms
        # the distances are those of the kernels the run stored for that statistics
        with np.load(run / history["kernels"][-1]["file"]) as arrays:
            kernel = arrays["clean" if key is None else "clean_batch"]
        assert np.isclose(np.linalg.norm(kernel), norms[-1], rtol=1e-6)
    assert running["kernels"][0]["clean"] != batch["kernels"][0]["clean"]
    rows = [ax.get_ylabel() for ax in drawn["specialization_adversarial.png"].axes if ax.get_ylabel()]
    assert sum("BatchNorm batch stats" in " ".join(row.split()) for row in rows) == 1, rows
    accuracy = drawn["accuracy.png"]
    panels = [ax for ax in accuracy.axes if ax.get_title()]
    assert len(panels) == 3  # one per statistics, and the other run
    test_clean = next(line for line in panels[1].lines if len(line.get_xdata())).get_ydata()  # its own, as main
    assert list(test_clean) == [record["accuracy"]["batch"]["test_clean"] for record in history["epochs"]]


# -- two-stage training: spawned networks (LOO fig. 2, table 2), clean epochs first (RAT sec. 5) --


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory, small_training, tracked_runs):
    """{name: run folder}, read only: ``parent`` (the tracked standard run of two epochs), networks
    linearized around its checkpoints of epochs 1 and 2 and centered around epoch 1's (one epoch
    each), ``pgd`` (the tracked PGD run) and ``switch``: PGD after one clean epoch, of two."""
    from ntkrobust.studies import train

    root = tmp_path_factory.mktemp("two-stage")
    parent = tracked_runs["standard"].out
    spawned = {"model": None, "width": None, "epochs": 1, "track_kernel": 0}
    settings = {
        "linearized_1": {"linearize_from": parent / "checkpoints" / "epoch_001.pt", **spawned},
        "linearized_2": {"linearize_from": parent / "checkpoints" / "epoch_002.pt", **spawned},
        "centered_1": {"linearize_from": parent / "checkpoints" / "epoch_001.pt", "centered": True, **spawned},
        "switch": {"mode": "pgd", "switch_epoch": 1, "epochs": 2, "track_kernel": 0},
    }
    folders = {name: train.run(small_training(root / name, **changes)).out for name, changes in settings.items()}
    return {"parent": parent, "pgd": tracked_runs["pgd"].out, **folders}


def _epochs(folder: Path) -> list[dict]:
    return json.loads((folder / "history.json").read_text())["epochs"]


def test_spawned_networks_against_their_spawn_epoch(two_stage, tmp_path, drawn, assert_heading):
    names = ("parent", "linearized_1", "linearized_2", "centered_1")
    result = dynamics.run(DynamicsSettings(runs=tuple(two_stage[name] for name in names)))
    record = result.record["spawn_accuracy"]
    assert "switch_cost" not in result.record  # every run trained clean
    linearized, centered = record["lines"]
    assert (linearized["kind"], centered["kind"]) == ("linearized", "centered")
    assert linearized["parent"] == centered["parent"] == str(two_stage["parent"])
    for line, spawned in ((linearized, ("linearized_1", "linearized_2")), (centered, ("centered_1",))):
        assert [point["spawn_epoch"] for point in line["points"]] == [int(name[-1]) for name in spawned]
        for point, name in zip(line["points"], spawned, strict=True):
            last = _epochs(two_stage[name])[-1]  # by hand: the full evaluation's PGD of the last epoch
            assert point["test_clean"] == last["accuracy"]["running"]["test_clean"]
            assert point["test_pgd"] == last["full_evaluation"]["accuracy"]["running"]["test_pgd"]
            assert point["pgd"] == "full evaluation, PGD-3" and point["path"] == str(two_stage[name])
    (parent,) = record["parents"]
    assert parent["epochs"] == [0.0, 1.0, 2.0] and parent["pgd"] == "per-epoch PGD-2"
    by_hand = [r["accuracy"]["running"] for r in _epochs(two_stage["parent"])]
    assert parent["test_clean"] == [r["test_clean"] for r in by_hand]
    assert parent["test_pgd"] == [r["test_pgd"] for r in by_hand]
    out = result.save(tmp_path / "figures")
    assert json.loads((out / "results.json").read_text())["spawn_accuracy"] == record
    assert "switch_cost.png" not in result.record["figures"].values()
    (panel,) = drawn["spawn_accuracy.png"].axes
    reference = [list(line.get_ydata()) for line in panel.lines[:2]]  # the parent's, in grey, first
    assert reference == [parent["test_clean"], parent["test_pgd"]]
    assert [list(line.get_ydata()) for line in panel.lines[2:4]] == [
        [p[key] for p in linearized["points"]] for key in ("test_clean", "test_pgd")
    ]
    assert_heading(drawn["spawn_accuracy.png"], "LOO fig. 2, table 2")


def test_the_cost_of_clean_epochs_before_adversarial_ones(two_stage, tmp_path, drawn, assert_heading):
    result = dynamics.run(DynamicsSettings(runs=(two_stage["pgd"], two_stage["switch"], two_stage["parent"])))
    assert "spawn_accuracy" not in result.record
    full, switch = result.record["switch_cost"]["runs"]  # the standard run costs nothing adversarial
    seconds = {name: [r["seconds"]["train"] for r in _epochs(two_stage[name])] for name in ("pgd", "switch")}
    assert [r["mode"] for r in _epochs(two_stage["switch"])] == ["init", "standard", "pgd"]
    assert (full["switch_epoch"], full["seconds_clean"], full["seconds_adversarial"]) == (
        None,
        0.0,
        sum(seconds["pgd"]),
    )
    assert (switch["switch_epoch"], switch["seconds_clean"]) == (1, seconds["switch"][1])
    assert switch["seconds_adversarial"] == seconds["switch"][2]
    assert switch["cost_of_full_at"] == pytest.approx(sum(seconds["switch"]) / sum(seconds["pgd"]))
    assert switch["full_at"] == "fc2 pgd" and "cost_of_full_at" not in full
    # from its own epochs alone: 1 clean + 1 adversarial, as if both epochs were adversarial
    own = sum(seconds["switch"]) / (2 * seconds["switch"][2])
    assert switch["estimated_cost_of_full_at"] == pytest.approx(own) and "estimated_cost_of_full_at" not in full
    for entry, name in ((full, "pgd"), (switch, "switch")):
        last = _epochs(two_stage[name])[-1]
        assert entry["test_clean"] == last["accuracy"]["running"]["test_clean"]
        assert entry["test_pgd"] == last["full_evaluation"]["accuracy"]["running"]["test_pgd"]
    out = result.save(tmp_path / "figures")
    assert json.loads((out / "results.json").read_text())["switch_cost"] == result.record["switch_cost"]
    assert "spawn_accuracy.png" not in result.record["figures"].values()
    bars, accuracies = drawn["switch_cost.png"].axes
    widths = [patch.get_width() for patch in bars.patches]  # clean seconds of both runs, then adversarial
    assert widths == [0.0, seconds["switch"][1], sum(seconds["pgd"]), seconds["switch"][2]]
    assert [patch.get_width() for patch in accuracies.patches][:2] == [full["test_clean"], switch["test_clean"]]
    assert_heading(drawn["switch_cost.png"], "RAT sec. 5, fig. 6, table 1")


def test_two_stage_figures_are_drawn_only_when_the_runs_allow(two_stage, tracked_runs):
    from ntkrobust import plots

    def applicable(*names):
        record = dynamics.run(DynamicsSettings(runs=tuple(two_stage[name] for name in names))).record
        stages = {key: record.get(key) for key in ("spawn_accuracy", "switch_cost")}
        drawn = plots.applicable_figures(record["runs"], **stages)
        return sorted(name for name in drawn if name in stages), sorted(k for k, v in stages.items() if v)

    assert applicable("parent") == ([], [])
    assert applicable("linearized_1", "linearized_2") == (["spawn_accuracy"], ["spawn_accuracy"])
    assert applicable("switch") == (["switch_cost"], ["switch_cost"])
    spawned = dynamics.run(DynamicsSettings(runs=(two_stage["centered_1"],))).record["spawn_accuracy"]
    assert spawned["parents"] == [] and spawned["lines"][0]["parent_label"] == "standard"  # the parent's folder
    alone = dynamics.run(DynamicsSettings(runs=(two_stage["switch"],))).record["switch_cost"]["runs"][0]
    assert "cost_of_full_at" not in alone  # no full AT run to compare with


def test_without_a_full_evaluation_the_per_epoch_pgd_is_reported(two_stage, tmp_path):
    import shutil

    run = Path(shutil.copytree(two_stage["linearized_2"], tmp_path / "copy"))
    history = json.loads((run / "history.json").read_text())
    del history["epochs"][-1]["full_evaluation"]
    (run / "history.json").write_text(json.dumps(history))
    (point,) = dynamics.run(DynamicsSettings(runs=(run,))).record["spawn_accuracy"]["lines"][0]["points"]
    assert point["pgd"] == "per-epoch PGD-2"
    assert point["test_pgd"] == history["epochs"][-1]["accuracy"]["running"]["test_pgd"]


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("linearized_1", ("config", "linearization", "spawn_epoch", "early"), 'spawn_epoch is "early", not an epoch'),
        ("linearized_1", ("config", "linearization", "checkpoint", 3), "config.linearization has no checkpoint path"),
        ("switch", ("epochs", 1, "seconds", "train", "slow"), 'epoch record 1\'s seconds.train is "slow", not a'),
        ("switch", ("epochs", 2, "full_evaluation", "accuracy", "running", "high"), "malformed records (Attr"),
    ],
)
def test_a_malformed_two_stage_history_is_one_line(two_stage, tmp_path, refuses, name, damage, message):
    import shutil

    run = Path(shutil.copytree(two_stage[name], tmp_path / "copy"))
    history = json.loads((run / "history.json").read_text())
    *keys, last, value = damage
    target = history
    for key in keys:
        target = target[key]
    target[last] = value
    (run / "history.json").write_text(json.dumps(history))
    error = refuses(dynamics, DynamicsSettings(runs=(run,)), message, compute=NO_SUMMARY)
    assert str(run / "history.json") in str(error)


def test_a_kernel_of_rank_below_the_eigenvectors_asked_for_is_one_line(tracked_runs, monkeypatch):
    """``ntk_eigenvectors``' refusal of an eigenvalue at the rounding level (repeated probe points, a
    dead net) ends the command in one line naming the checkpoint, not in a traceback."""

    def rank_one(*args, **kwargs):
        raise KernelRankError("an eigenvector has a zero eigenvalue (λ_2 = 1e-16, λ_1 = 5.8, rounding level 2e-15)")

    monkeypatch.setattr("ntkrobust.bridge.eigenvectors.ntk_eigenvectors", rank_one)
    with pytest.raises(dynamics.StudyError, match=r"epoch_\d+\.pt: an eigenvector has a zero eigenvalue") as caught:
        dynamics.run(DynamicsSettings(runs=runs(tracked_runs), eigenvectors=2, eigenvector_steps=5))
    assert "\n" not in str(caught.value)


def test_a_failed_eigendecomposition_is_not_reported_as_a_rank_refusal(tracked_runs, monkeypatch):
    """Only the rank refusal becomes the one-line StudyError: any other ValueError from
    ``ntk_eigenvectors`` (numpy's ``LinAlgError`` is one) is a bug to see in full, not a user's input."""

    def no_convergence(*args, **kwargs):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr("ntkrobust.bridge.eigenvectors.ntk_eigenvectors", no_convergence)
    with pytest.raises(np.linalg.LinAlgError, match="did not converge"):
        dynamics.run(DynamicsSettings(runs=runs(tracked_runs), eigenvectors=2, eigenvector_steps=5))


def test_runs_without_kernels_are_said_to_be_in_no_kernel_figure(tracked_runs, untracked_run, tmp_path):
    """A run trained with --track-kernel 0 drew accuracy.png alone, without a word, under a
    subtitle of "a probe of 0 points" (seen by following the README on 2026-12-06)."""
    from ntkrobust import plots

    alone = dynamics.run(DynamicsSettings(runs=(untracked_run.out,)))
    assert alone.record["warnings"] == [
        "no run tracked a kernel (trained with --track-kernel 0?): no kernel figures, only accuracies"
    ]
    assert "probe" not in plots.dynamics_subtitle(alone.summaries)
    assert set(alone.save(tmp_path / "alone").iterdir()) >= {tmp_path / "alone" / "accuracy.png"}
    mixed = dynamics.run(DynamicsSettings(runs=(untracked_run.out, tracked_runs["standard"].out)))
    label = mixed.record["runs"][0]["label"]
    assert mixed.record["warnings"][0] == f"{label} tracked no kernel (--track-kernel 0?): it is in no kernel figure"
    assert not any(
        "tracked no kernel" in note
        for note in dynamics.run(DynamicsSettings(runs=runs(tracked_runs))).record["warnings"]
    )
