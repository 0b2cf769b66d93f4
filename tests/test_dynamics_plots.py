"""Run folders of ``ntkrobust train`` (bridge.runs) and the training-dynamics figures (plots).

The runs are synthetic, written in the format of ``train --out RUN``: ``history.json``,
``kernels/probe.npz`` and one ``kernels/step_*.npz`` per tracked kernel. Feature maps Φ_c (one
per output) rotate towards the class directions and grow; the trace kernel is the mean of the
Φ_c Φ_cᵀ, and the metrics in the history come from ``kernels.metrics.kernel_metrics`` of the
full (N, N, C, C) kernel, as the trainer writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ntkrobust import plots
from ntkrobust.bridge.run_groups import baseline_distance, check_comparable, group_summary, load_run_groups
from ntkrobust.bridge.runs import (
    RunError,
    TrainingRun,
    dynamics_summary,
    json_summary,
    kernel_dynamics,
    load_run,
    load_runs,
)
from ntkrobust.kernels import metrics

C = 3
N = 24
EPOCHS = 4
STEPS = 5  # steps per epoch


def synthetic_kernels(
    targets: np.ndarray,
    epochs: np.ndarray,
    *,
    seed: int,
    growth: float,
    settle: float,
    features: int = 32,
    wobble: float = 0.0,
    align: float = 1.0,
) -> list[np.ndarray]:
    """Full kernels (N, N, C, C) at ``epochs``: rotation 1 − exp(−t / settle), norm × (1 + growth t²/E²)."""
    rng = np.random.default_rng(seed)
    n, c = targets.size, int(targets.max()) + 1
    y = metrics.one_hot(targets, c)
    start = rng.normal(size=(c, n, features)) / np.sqrt(features)
    goal = rng.normal(size=(c, n, features)) / np.sqrt(features) * 0.4
    goal += align * y.T[:, :, None] * rng.normal(size=(c, 1, features))  # class-aligned features
    last = max(float(epochs[-1]), 1.0)
    kernels = []
    for t in epochs:
        moved = 1.0 - np.exp(-t / settle) if settle > 0 else 0.0
        scale = 1.0 + growth * (t / last) ** 2
        phi = (1 - 0.7 * moved) * start + moved * goal + wobble * rng.normal(size=start.shape) / np.sqrt(features)
        full = np.zeros((n, n, c, c))
        for k in range(c):
            full[:, :, k, k] = scale * phi[k] @ phi[k].T
        kernels.append(full)
    return kernels


def accuracies(t: float, *, clean: float, pgd: float, seed: int) -> dict[str, float]:
    rise = 1.0 - np.exp(-1.5 * t)
    jitter = np.random.default_rng(seed).uniform(-0.03, 0.03, size=4)
    values = {
        "train_clean": 0.1 + (clean - 0.08) * rise,
        "test_clean": 0.1 + (clean - 0.1) * rise,
        "train_pgd": 0.05 + (pgd - 0.03) * rise,
        "test_pgd": 0.05 + (pgd - 0.05) * rise,
    }
    return {k: float(np.clip(v + j, 0, 1)) for (k, v), j in zip(values.items(), jitter, strict=True)}


def write_run(
    folder: Path,
    *,
    label: str,
    mode: str,
    growth: float,
    settle: float,
    seed: int,
    n: int = N,
    classes: int = C,
    epochs: int = EPOCHS,
    track_every: int | None = None,
    switch_epoch: int | None = None,
    batch: bool = False,
    linearized: bool = False,
    clean_accuracy: float = 0.95,
    pgd_accuracy: float = 0.05,
    wobble: float = 0.0,
    align: float = 1.0,
) -> Path:
    """A run folder in the format of ``ntkrobust train --out RUN``."""
    rng = np.random.default_rng(seed)
    kernel_dir = folder / "kernels"
    kernel_dir.mkdir(parents=True)
    targets = np.arange(n, dtype=np.int64) % classes
    x = rng.uniform(0, 1, size=(n, 1, 6, 6)).astype(np.float32)
    np.savez(kernel_dir / "probe.npz", x=x, y=targets + 1, targets=targets)
    every = track_every or STEPS
    steps = np.arange(0, epochs * STEPS + 1, every)
    kernel_epochs = steps / STEPS
    shape = {"wobble": wobble, "align": align}
    clean = synthetic_kernels(targets, kernel_epochs, seed=seed, growth=growth, settle=settle, **shape)
    adversarial = synthetic_kernels(
        targets, kernel_epochs, seed=seed + 1, growth=growth / 3, settle=settle / 2, **shape
    )
    if linearized:  # the eNTK of a linearized net does not move
        clean = [clean[0]] * len(clean)
        adversarial = [adversarial[0]] * len(adversarial)
    predicted = (targets + 1) % classes
    records = []
    for step, epoch, full, full_adv in zip(steps, kernel_epochs, clean, adversarial, strict=True):
        name = f"kernels/step_{step:07d}.npz"
        trace, trace_adv = metrics.trace_kernel(full), metrics.trace_kernel(full_adv)
        np.savez(
            folder / name,
            clean=trace,
            adversarial=trace_adv,
            x_adversarial=x,
            predicted_adversarial=predicted,
        )
        records.append(
            {
                "step": int(step),
                "epoch": float(epoch),
                "file": name,
                "clean": metrics.kernel_metrics(full, targets, num_classes=classes),
                "adversarial": metrics.kernel_metrics(full_adv, targets, num_classes=classes),
                "adversarial_labels": metrics.kernel_metrics(full_adv, predicted, num_classes=classes),
                "probe_accuracy": {"clean": 0.9, "pgd": 0.3},
            }
        )
    epoch_records = []
    for e in range(epochs + 1):
        accuracy = {"running": accuracies(e, clean=clean_accuracy, pgd=pgd_accuracy, seed=seed + e)}
        if batch:
            accuracy["batch"] = accuracies(e, clean=clean_accuracy - 0.04, pgd=pgd_accuracy + 0.03, seed=seed + 100 + e)
        record = {
            "epoch": e,
            "step": e * STEPS,
            "mode": "init" if e == 0 else (mode if switch_epoch is None or e > switch_epoch else "standard"),
            "lr": None if e == 0 else 0.1,
            "train_loss": None if e == 0 else float(2.0 * np.exp(-e / 2)),
            "accuracy": accuracy,
            "seconds": {"train": 1.0, "track": 0.5, "evaluate": 0.2},
        }
        if linearized:
            record["relative_magnitude"] = float(0.0 if e == 0 else 0.3 * e * np.exp(-e / 2))
        epoch_records.append(record)
    history = {
        "command": "train",
        "label": label,
        "config": {
            "model": {"model": "mnist-cnn", "input_shape": [1, 6, 6], "num_classes": classes, "width": 16},
            "mode": mode,
            "epochs": epochs,
            "switch_epoch": switch_epoch,
            "eps": 0.3,
            "linearize_from": "RUN0/checkpoints/epoch_001.pt" if linearized else None,
            "centered": False,
            "track_kernel": n,
            "track_every": track_every,
        },
        "class_names": [f"digit {k}" for k in range(classes)],
        "steps_per_epoch": STEPS,
        "epochs": epoch_records,
        "kernels": records,
        "versions": {"numpy": np.__version__},
        "argv": ["train", "--out", str(folder)],
    }
    (folder / "history.json").write_text(json.dumps(history, indent=1, allow_nan=False))
    return folder


@pytest.fixture(scope="module")
def run_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "standard": write_run(root / "standard", label="cnn standard", mode="standard", growth=30, settle=2, seed=1),
        "pgd": write_run(
            root / "pgd",
            label="cnn pgd",
            mode="pgd",
            growth=1,
            settle=0.5,
            seed=3,
            switch_epoch=1,
            batch=True,
            clean_accuracy=0.85,
            pgd_accuracy=0.6,
        ),
        "linearized": write_run(
            root / "linearized", label="cnn linearized", mode="standard", growth=0, settle=1, seed=5, linearized=True
        ),
        "single": write_run(root / "single", label="one kernel", mode="standard", growth=1, settle=1, seed=7, epochs=0),
    }


@pytest.fixture(scope="module")
def summaries(run_folders: dict[str, Path]) -> list[dict]:
    """Standard, PGD (switch epoch, batch accuracies) and linearized, in this order."""
    names = ("standard", "pgd", "linearized")
    return [dynamics_summary(run) for run in load_runs([run_folders[n] for n in names])]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# -- reading runs ----------------------------------------------------------------------------


def test_load_run_reads_the_history_probe_and_kernels(run_folders):
    run = load_run(run_folders["pgd"])
    assert isinstance(run, TrainingRun)
    assert run.label == "cnn pgd" and run.mode == "pgd" and run.switch_epoch == 1
    assert [e["epoch"] for e in run.epochs] == list(range(EPOCHS + 1))
    np.testing.assert_array_equal(run.kernel_epochs, np.arange(EPOCHS + 1, dtype=float))
    np.testing.assert_array_equal(run.probe_targets, np.arange(N) % C)
    np.testing.assert_array_equal(run.probe_labels, np.arange(N) % C + 1)
    assert run.class_names == ["digit 0", "digit 1", "digit 2"] and run.probe_size == N
    assert run.clean_kernels is not None and run.adversarial_kernels is not None
    assert len(run.clean_kernels) == len(run.adversarial_kernels) == EPOCHS + 1
    assert run.clean_kernels[0].shape == (N, N) and run.clean_kernels[0].dtype == np.float64

    lazy = load_run(run_folders["pgd"], kernels=False)
    assert lazy.clean_kernels is None
    np.testing.assert_array_equal(lazy.with_kernels().clean_kernels[-1], run.clean_kernels[-1])


def test_load_runs_makes_repeated_labels_distinct(run_folders):
    runs = load_runs([run_folders["standard"], run_folders["standard"].parent / "standard"], kernels=False)
    assert len({run.label for run in runs}) == 2


def test_not_a_run_folder_is_one_line(tmp_path):
    with pytest.raises(RunError, match=r"no history\.json") as error:
        load_run(tmp_path)
    one_line(error)
    with pytest.raises(RunError, match="no such directory"):
        load_run(tmp_path / "absent")


def test_corrupt_json_is_one_line(tmp_path):
    (tmp_path / "history.json").write_text('{"epochs": [\n{"epoch": 0,,}')
    with pytest.raises(RunError, match="unreadable JSON") as error:
        load_run(tmp_path)
    assert "line 2" in one_line(error)
    (tmp_path / "history.json").write_text('{"command": "train"}')
    with pytest.raises(RunError, match="not a training history"):
        load_run(tmp_path)


def test_missing_kernel_file_is_one_line(tmp_path):
    folder = write_run(tmp_path / "run", label="x", mode="standard", growth=1, settle=1, seed=0, epochs=2)
    (folder / "kernels" / "step_0000005.npz").unlink()
    with pytest.raises(RunError, match=r"missing kernel file kernels/step_0000005\.npz") as error:
        load_run(folder)
    one_line(error)


def test_a_kernel_file_that_is_no_npz_is_one_line(tmp_path):
    folder = write_run(tmp_path / "run", label="x", mode="standard", growth=1, settle=1, seed=0, epochs=2)
    np.save(folder / "kernels" / "step_0000005.npy", np.eye(N))
    (folder / "kernels" / "step_0000005.npy").replace(folder / "kernels" / "step_0000005.npz")
    with pytest.raises(RunError, match=r"step_0000005\.npz: not an \.npz \(zip\) archive") as error:
        load_run(folder)
    one_line(error)


def test_probe_size_mismatch_is_one_line(tmp_path):
    folder = write_run(tmp_path / "run", label="x", mode="standard", growth=1, settle=1, seed=0, epochs=1)
    np.savez(folder / "kernels" / "step_0000005.npz", clean=np.eye(N + 1), adversarial=np.eye(N + 1))
    with pytest.raises(RunError, match="probe size mismatch") as error:
        load_run(folder)
    one_line(error)
    load_run(folder, kernels=False)  # the history alone still reads


# -- kernel dynamics -------------------------------------------------------------------------


def test_kernel_dynamics_matches_kernels_metrics(run_folders):
    run = load_run(run_folders["standard"])
    kernels, epochs = run.clean_kernels, run.kernel_epochs
    dynamics = kernel_dynamics(kernels, epochs, top_k=20)
    json.dumps(dynamics, allow_nan=False)  # JSON-ready
    d = np.asarray(dynamics["distance_matrix"])
    np.testing.assert_allclose(d, metrics.distance_matrix(kernels))
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    assert len(dynamics["velocity"]) == len(dynamics["velocity_epochs"]) == len(kernels) - 1
    np.testing.assert_allclose(dynamics["velocity"], metrics.kernel_velocity(kernels, epochs))
    np.testing.assert_allclose(dynamics["velocity_epochs"], (epochs[:-1] + epochs[1:]) / 2)
    final = np.asarray(dynamics["distance_to_final"])
    np.testing.assert_allclose(final, metrics.distance_to_final(kernels))
    assert final[-1] == 0.0 and final[0] > 0
    r, theta = metrics.polar_coordinates(kernels)
    np.testing.assert_allclose(dynamics["polar_r"], r)
    np.testing.assert_allclose(dynamics["polar_theta"], theta)
    top_r, top_theta = metrics.polar_coordinates(kernels, top_k=20)
    np.testing.assert_allclose(dynamics["top_polar_r"], top_r)
    np.testing.assert_allclose(dynamics["top_polar_theta"], top_theta)
    assert "undefined" not in dynamics


def test_kernel_dynamics_of_a_single_kernel_and_a_small_probe(rng):
    kernel = rng.normal(size=(8, 8))
    dynamics = kernel_dynamics([kernel @ kernel.T], np.array([0.0]), top_k=20)
    assert dynamics["distance_matrix"] == [[0.0]] and dynamics["distance_to_final"] == [0.0]
    assert "velocity" not in dynamics and "polar_r" not in dynamics and "top_polar_r" not in dynamics
    assert set(dynamics["undefined"]) == {"velocity", "polar", "top_polar"}
    with pytest.raises(ValueError, match="strictly increasing"):
        kernel_dynamics([kernel, kernel], np.array([1.0, 1.0]))


def test_kernel_dynamics_of_a_frozen_kernel(summaries):
    linearized = summaries[2]
    dynamics = linearized["dynamics"]["clean"]
    assert dynamics["velocity"] == [0.0] * EPOCHS and dynamics["distance_to_final"] == [0.0] * (EPOCHS + 1)
    assert "polar" in dynamics["undefined"]


def test_dynamics_summary_is_plain_data(summaries):
    standard = summaries[0]
    assert standard["label"] == "cnn standard" and standard["probe_size"] == N
    assert set(standard["dynamics"]) == {"clean", "adversarial"}
    assert standard["initial_kernel"].shape == (N, N)
    assert summaries[1]["switch_epoch"] == 1 and summaries[2]["linearized"]
    json.dumps(json_summary(standard), allow_nan=False)


def test_single_kernel_run(run_folders):
    summary = dynamics_summary(load_run(run_folders["single"]))
    dynamics = summary["dynamics"]["clean"]
    assert dynamics["distance_matrix"] == [[0.0]] and dynamics["distance_to_final"] == [0.0]
    assert "velocity" not in dynamics and "polar_r" not in dynamics
    assert plots.applicable_figures([summary]) == [
        "kernel_distance",
        "norm_concentration",
        "velocity_distance",
        "rank_specialization",
        "kernel_images",
        "accuracy",
        "specialization_clean",
        "specialization_adversarial",
        "specialization_adversarial_labels",
    ]


# -- figures ---------------------------------------------------------------------------------


def two_stage_records() -> dict[str, dict]:
    """The records of ``bridge.run_groups.spawn_accuracy`` and ``switch_cost``, synthetic: two
    parents (the first among the runs) with linearized and centered networks spawned at epochs
    1, 2, 4 (centered ones of 3 seeds), and three PGD runs, two of which switched."""

    def point(epoch: int, clean: float, pgd: float, seeds: bool = False) -> dict:
        spread = {"seeds": 3, "test_clean_std": 0.02, "test_pgd_std": 0.05} if seeds else {}
        return {"label": f"spawned at {epoch}", "spawn_epoch": epoch, "test_clean": clean, "test_pgd": pgd, **spread}

    def line(parent: str, kind: str, seeds: bool = False, mode: str = "standard") -> dict:
        points = [point(e, 0.6 + 0.05 * e, 0.1 + 0.08 * e + 0.1 * seeds, seeds) for e in (1, 2, 4)]
        return {"parent": parent, "parent_label": parent, "kind": kind, "mode": mode, "points": points}

    parent = {"path": "standard", "label": "standard", "epochs": [0.0, 1.0, 2.0, 3.0, 4.0], "pgd": "per-epoch PGD-10"}
    parent |= {"test_clean": [0.1, 0.5, 0.7, 0.8, 0.85], "test_pgd": [0.02, 0.05, 0.06, 0.08, 0.1]}
    spawn = {
        "lines": [
            line("standard", "linearized"),
            line("standard", "centered", seeds=True),
            line("pgd", "centered", mode="pgd"),
        ],
        "parents": [parent],
    }
    runs = [
        {"label": "pgd", "mode": "pgd", "switch_epoch": None, "seconds_clean": 0.0, "seconds_adversarial": 90.0},
        {"label": "pgd after 2", "mode": "pgd", "switch_epoch": 2, "seconds_clean": 5.0, "seconds_adversarial": 45.0},
        {"label": "pgd after 1 clean, 3 seeds", "mode": "pgd", "switch_epoch": 1, "seconds_clean": 2.5},
    ]
    runs[1] |= {"test_clean": 0.8, "test_pgd": 0.4, "cost_of_full_at": 50 / 90, "pgd": "full evaluation, PGD-40"}
    runs[0] |= {"test_clean": 0.75, "test_pgd": 0.45, "pgd": "full evaluation, PGD-40"}
    runs[2] |= {"seconds_adversarial": 67.5, "test_clean": 0.78, "test_pgd": 0.42, "test_pgd_std": 0.03, "seeds": 3}
    runs[2]["estimated_cost_of_full_at"] = 0.75
    return {"spawn_accuracy": spawn, "switch_cost": {"runs": runs}}


@pytest.fixture(scope="module")
def figures(summaries, run_folders, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Every figure, once, for the three runs plus a single-kernel run and a run whose history
    lacks accuracies, the AE-NTK and most metrics (each figure must draw what is there)."""
    single = dynamics_summary(load_run(run_folders["single"]))
    bare = {**summaries[0], "label": "bare", "switch_epoch": None}
    bare["epochs"] = [{k: v for k, v in e.items() if k != "accuracy"} for e in bare["epochs"]]
    bare["kernels"] = [{"epoch": r["epoch"], "clean": {"frobenius_norm": 1.0 + r["epoch"]}} for r in bare["kernels"]]
    bare["dynamics"] = {"clean": bare["dynamics"]["clean"]}
    out = tmp_path_factory.mktemp("figures")
    runs = [*summaries, single, bare]
    return out, plots.dynamics_figures(runs, out, subtitle="synthetic runs, probe of 24 points", **two_stage_records())


def test_dynamics_figures_writes_every_figure(figures, assert_real_png):
    out, written = figures
    assert written == {k: v for k, v in plots.DYNAMICS_FIGURES.items() if k != "baseline_distance"}
    assert sorted(p.name for p in out.iterdir()) == sorted(written.values())
    for name in written.values():
        assert_real_png(out / name)


def test_figures_of_runs_without_kernels_or_accuracies(run_folders, tmp_path):
    history_only = {**dynamics_summary(load_run(run_folders["pgd"])), "kernels": [], "dynamics": {}}
    history_only |= {"initial_kernel": None, "final_kernel": None}
    assert plots.applicable_figures([history_only]) == ["accuracy"]
    assert plots.applicable_figures([{"label": "empty"}]) == []
    assert plots.dynamics_figures([{"label": "empty"}], tmp_path) == {}


def test_eigenvector_pictures(tmp_path, rng, assert_real_png):
    k = 3
    rows = [(name, rng.uniform(0, 1, (k, 1, 8, 8)), rng.uniform(0, 1, (k, 1, 8, 8))) for name in ("init", "end")]
    cosines = [(rng.uniform(0, 1, k), -rng.uniform(0, 1, k)) for _ in rows]
    plots.eigenvector_pictures(rows, tmp_path / "eigen.png", cosines=cosines, subtitle="synthetic")
    assert_real_png(tmp_path / "eigen.png")
    colour = [("cifar $x$", rng.uniform(0, 1, (2, 3, 8, 8)), rng.uniform(0, 1, (2, 3, 8, 8)))]
    plots.eigenvector_pictures(colour, tmp_path / "colour.png")
    assert_real_png(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="cosine pairs"):
        plots.eigenvector_pictures(rows, tmp_path / "bad.png", cosines=cosines[:1])


def test_runs_and_plots_import_neither_torch_nor_jax():
    import subprocess
    import sys

    code = "import sys, ntkrobust.bridge.runs, ntkrobust.plots; print(sorted({'torch', 'jax'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- what the figures show (the figure objects, caught as they are saved) ----------------------


def small_angle_run(degrees: float) -> dict:
    """A run whose kernels turned by at most ``degrees`` (whole kernel and top-k space)."""
    theta = np.radians(np.array([0.0, 0.4, 0.7, 1.0]) * degrees)
    r = [0.0, 0.35, 0.7, 1.0]
    dynamics = {"epochs": [0, 1, 2, 3], "polar_r": r, "polar_theta": theta, "top_polar_r": r, "top_polar_theta": theta}
    return {"label": "turning", "kernel_epochs": [0, 1, 2, 3], "dynamics": {"clean": dynamics}}


@pytest.mark.parametrize(
    ("degrees", "ticks", "wedge"),
    [(4.0, ["0°", "1°", "2°", "3°", "4°", "5°"], 90.0), (60.0, ["0°", "15°", "30°", "45°", "60°", "75°"], 75.0)],
    ids=["small angles stretched", "large angles as they are"],
)
def test_polar_angular_axis_spans_the_data(tmp_path, drawn, assert_heading, degrees, ticks, wedge):
    """A kernel that turned by 4° fills a quarter circle, not a 5° sliver: the angular axis is
    stretched, its ticks (a readable few) still name the true angles, and the label says so."""
    plots.polar_trajectories([small_angle_run(degrees)], tmp_path / "polar.png", subtitle="angles")
    fig = drawn["polar.png"]
    polar = [ax for ax in fig.axes if ax.name == "polar"]
    assert len(polar) == 2
    for ax in polar:
        assert ax.get_thetamin() == 0.0 and ax.get_thetamax() == pytest.approx(wedge)
        assert [t.get_text() for t in ax.get_xticklabels()] == ticks
        last = ax.lines[0].get_xdata()[-1]  # the true angle, drawn on the stretched axis
        assert np.degrees(last) == pytest.approx(degrees * wedge / float(ticks[-1].rstrip("°")))
        stretched = any("stretched" in t.get_text() for t in ax.texts)
        assert stretched == (wedge != float(ticks[-1].rstrip("°")))
    assert_heading(fig, "angles")


def test_a_polar_point_far_off_the_scale_is_drawn_on_the_rim_and_named(tmp_path, drawn):
    """A transient blow-up (a PGD-AT ResNet-18 on an H200: its kernel 4,000 times its start after
    a first epoch at lr 0.1, r = 4,906) would shrink every other point of the panel into the
    origin: it goes on the rim of the others, at its angle, and the note under the panels names it."""
    steady, blown = small_angle_run(30.0), small_angle_run(60.0)
    blown["label"] = "blown"
    for key in ("polar_r", "top_polar_r"):
        blown["dynamics"]["clean"][key] = [0.0, 4906.0, 1.2, 1.0]
    plots.polar_trajectories([steady, blown], tmp_path / "polar.png", subtitle="off the scale")
    fig = drawn["polar.png"]
    for ax in (ax for ax in fig.axes if ax.name == "polar"):
        assert ax.get_ylim()[1] == pytest.approx(1.08 * 1.2)  # the largest radius on the scale sets the rim
        assert max(max(line.get_ydata()) for line in ax.lines) == pytest.approx(1.08 * 1.2)
    note = " ".join(fig._supxlabel.get_text().split())  # wrapped to the figure's width
    assert "beyond r = 3" in note and "blown C-NTK: epoch 1 (r = 4,906)" in note
    plots.polar_trajectories([steady], tmp_path / "steady.png")  # on the scale: no note, the rim just past r = 1
    assert drawn["steady.png"]._supxlabel is None
    assert [ax.get_ylim()[1] for ax in drawn["steady.png"].axes if ax.name == "polar"] == [1.08, 1.08]


def concentrated_run() -> dict:
    """A run whose trace kernel has nearly all its spectrum in the top 10 (concentration 0.99999x)."""
    kernels = [
        {
            "epoch": float(e),
            "clean": {
                "frobenius_norm": 100.0 + 40 * e,
                "concentration_top10": 1.0 - 2e-6 * (1 + e) / 4,
                "concentration_top20": 1.0 if e == 3 else 1.0 - 4e-7 * (1 + e) / 4,  # 1: nothing beyond
            },
        }
        for e in range(4)
    ]
    return {"label": "concentrated", "kernels": kernels, "kernel_epochs": [0, 1, 2, 3]}


def test_concentration_is_drawn_as_its_remainder_on_a_log_axis(tmp_path, drawn, assert_heading):
    """Concentrations of 0.99999x: 1 − concentration on a log axis, no offset text ("1e-5 +
    9.999e-1") on any panel, ticks all plain numbers or m×10ᵏ; a concentration of exactly 1 is
    off the log axis and said so."""
    plots.kernel_norm_and_concentration([concentrated_run()], tmp_path / "norm.png", subtitle="near one")
    fig = drawn["norm.png"]
    FigureCanvasAgg(fig).draw()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "Frobenius norm",
        "1 − concentration on the top 10",
        "1 − concentration on the top 20",
    ]
    for ax in panels:
        assert ax.get_yscale() == "log"
        assert ax.yaxis.get_offset_text().get_text() == ""
        labels = [t.get_text() for t in ax.get_yticklabels(which="both") if t.get_text()]
        assert labels and not any("e-" in label or "e+" in label for label in labels), labels
        assert len({label.startswith("$") for label in labels}) == 1, labels  # all m×10ᵏ or all plain
    assert panels[1].get_ylabel().startswith("$1 - ")
    top10 = panels[1].lines[0].get_ydata()
    np.testing.assert_allclose(top10, 2e-6 * np.arange(1, 5) / 4, rtol=1e-6)
    assert "concentrations of 1" in fig._supxlabel.get_text() and "point(s) of" in fig._supxlabel.get_text()
    assert_heading(fig, "near one")


def test_a_metric_undefined_at_some_kernels_says_how_many(tmp_path, drawn):
    """A metric defined at some tracked kernels only is drawn there, and the note counts the others
    (it said "not shown" of the whole run beside the points it drew)."""
    why = "a single class among the net's own labels"
    kernels = [
        {"epoch": float(e), "clean": {"effective_rank": 3.0 + e, "mean_specialization": 1.0 + e}} for e in range(5)
    ]
    for e, record in enumerate(kernels):
        own = {"mean_specialization": 1.2} if e == 4 else {"undefined": {"mean_specialization": why}}
        record["adversarial_labels"] = own
    run = {"label": "partial", "kernels": kernels, "kernel_epochs": list(range(5))}
    plots.rank_and_specialization([run], tmp_path / "rank.png")
    fig = drawn["rank.png"]
    specialization = next(ax for ax in fig.axes if ax.get_title() == "mean kernel specialization")
    assert [list(line.get_xdata()) for line in specialization.lines if len(line.get_xdata())] == [
        [0.0, 1.0, 2.0, 3.0, 4.0],
        [4.0],
    ]
    assert f"({why}; 4 of the 5 tracked kernels)" in " ".join(fig._supxlabel.get_text().split())


def test_the_learning_rate_decay_is_marked(tmp_path, drawn):
    """RAT's second kernel-learning phase follows the decay (sec. 3.2, fig. 1): the curve figures
    and the accuracies mark the epochs after which the learning rate decays."""
    kernels = [{"epoch": float(e), "clean": {"effective_rank": 3.0 + e, "mean_specialization": 1.0}} for e in range(5)]
    run = {"label": "decayed", "kernels": kernels, "kernel_epochs": list(range(5)), "milestones": [3]}
    run["epochs"] = [{"epoch": e, "accuracy": {"running": {"test_clean": 0.5 + 0.1 * e}}} for e in range(5)]
    plots.rank_and_specialization([run], tmp_path / "rank.png")
    plots.accuracy_curves([run], tmp_path / "accuracy.png")
    for name in ("rank.png", "accuracy.png"):
        fig = drawn[name]
        for ax in (ax for ax in fig.axes if ax.get_title()):
            assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "-."] == [3.0]
        assert "learning-rate decay\n(after this epoch)" in [t.get_text() for t in fig.legends[0].get_texts()]
    plots.rank_and_specialization([{**run, "milestones": []}], tmp_path / "constant.png")
    assert all(line.get_linestyle() != "-." for ax in drawn["constant.png"].axes for line in ax.lines)


def test_a_log_axis_across_decades_names_its_ticks_alike(tmp_path, drawn, assert_heading):
    """Values from 5×10⁻⁶ to 2×10⁻³: every tick m×10ᵏ, not 10⁻⁵ beside a plain 0.001."""
    records = [{"epoch": e, "relative_magnitude": 5e-6 * 20**e} for e in range(4)]
    plots.relative_magnitude_curve([{"label": "wide", "epochs": records}], tmp_path / "relative.png")
    fig = drawn["relative.png"]
    FigureCanvasAgg(fig).draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels(which="both") if t.get_text()]
    assert len(labels) >= 3 and all(label.startswith("$") for label in labels), labels


def test_every_dynamics_figure_has_a_one_line_title_and_a_subtitle(summaries, tmp_path, drawn, assert_heading, rng):
    plots.dynamics_figures(summaries, tmp_path, subtitle="synthetic runs, probe of 24 points", **two_stage_records())
    rows = [("init", rng.uniform(0, 1, (2, 1, 8, 8)), rng.uniform(0, 1, (2, 1, 8, 8)))]
    plots.eigenvector_pictures(rows, tmp_path / "eigen.png", subtitle="synthetic runs, probe of 24 points")
    labels = np.arange(N) % C
    names = ["digit 0", "digit 1", "digit 2"]
    kernel = summaries[0]["final_kernel"]
    plots.kernel_image(
        kernel, labels, tmp_path / "kernel.png", class_names=names, title="Empirical C-NTK: trace kernel"
    )
    assert set(drawn) == {*plots.DYNAMICS_FIGURES.values(), "eigen.png", "kernel.png"} - {"baseline_distance.png"}
    for name, fig in drawn.items():
        subtitle = "" if name == "kernel.png" else "synthetic runs, probe of 24 points"
        assert_heading(fig, subtitle)
    assert drawn["kernel.png"].get_suptitle().strip() == "Empirical C-NTK: trace kernel"


# -- several runs: the seeds of one curve, the distance to a baseline, specialization (RAT) -----


def write_seeds(folder: Path, seeds: tuple[int, ...] = (0, 1, 2), **changes) -> Path:
    """A folder of ``train --seeds``: one run per seed in seed_S, on the first seed's probe, and seeds.json."""
    import shutil

    for s in seeds:
        write_run(folder / f"seed_{s}", label="cnn seeds", mode="pgd", growth=2 + s, settle=1, seed=11 + s, **changes)
        if s != seeds[0]:
            shutil.copy(folder / f"seed_{seeds[0]}" / "kernels" / "probe.npz", folder / f"seed_{s}" / "kernels")
    listing = {"command": "train", "seeds": list(seeds), "runs": [{"seed": s, "folder": f"seed_{s}"} for s in seeds]}
    (folder / "seeds.json").write_text(json.dumps(listing))
    return folder


@pytest.fixture(scope="module")
def seeds_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_seeds(tmp_path_factory.mktemp("seeds") / "seeds", wobble=0.3)


def test_seed_band_is_numpys_mean_and_sample_std():
    from ntkrobust.plots._runs import _seed_band

    curves = [([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0]), ([0, 1, 2, 3], [2.0, 2.0, 5.0, np.nan]), ([1, 2, 3, 9], [1.0] * 4)]
    epochs, mean, std, lowest = _seed_band(curves)  # epoch 0 and 9 are not in every seed, 3 is NaN in one
    shared = np.array([[2.0, 3.0], [2.0, 5.0], [1.0, 1.0]])
    np.testing.assert_array_equal(epochs, [1.0, 2.0])
    np.testing.assert_allclose(mean, shared.mean(axis=0))
    np.testing.assert_allclose(std, shared.std(axis=0, ddof=1))
    np.testing.assert_array_equal(lowest, shared.min(axis=0))
    _, _, alone, _ = _seed_band(curves[:1])
    np.testing.assert_array_equal(alone, np.zeros(4))  # one seed: no spread


def test_a_folder_of_seeds_is_one_group(seeds_folder, run_folders):
    groups = load_run_groups([seeds_folder, run_folders["standard"]])
    assert [g.label for g in groups] == ["cnn seeds (3 seeds)", "cnn standard"]
    assert groups[0].seeds == [0, 1, 2] and groups[1].seeds is None
    assert [run.label for run in groups[0].runs] == [f"cnn seeds (3 seeds), seed {s}" for s in range(3)]
    summary = group_summary(groups[0])
    assert summary["label"] == "cnn seeds (3 seeds)" and summary["seeds"] == [0, 1, 2]
    assert [seed["path"] for seed in summary["seed_runs"]] == [str(seeds_folder / f"seed_{s}") for s in range(3)]
    np.testing.assert_array_equal(summary["final_kernel"], summary["seed_runs"][0]["final_kernel"])
    json.dumps(json_summary(summary), allow_nan=False)  # every seed's kernel arrays left out


def test_seeds_that_do_not_share_their_epochs_are_one_line(tmp_path):
    folder = write_seeds(tmp_path / "seeds", seeds=(0, 1))
    history = json.loads((folder / "seed_1" / "history.json").read_text())
    history["kernels"] = history["kernels"][:-1]
    (folder / "seed_1" / "history.json").write_text(json.dumps(history))
    with pytest.raises(RunError, match=r"seed 1 and seed 0 differ in their tracked kernels") as error:
        load_run_groups([folder])
    one_line(error)
    (folder / "seeds.json").write_text("{}")
    with pytest.raises(RunError, match=r"not the seeds\.json of train --seeds"):
        load_run_groups([folder])


def test_baseline_distance_is_the_kernel_distance_at_shared_steps(seeds_folder, run_folders, tmp_path):
    import shutil

    baseline = load_run(seeds_folder / "seed_0")
    sparse = write_run(tmp_path / "sparse", label="x", mode="standard", growth=3, settle=1, seed=5, track_every=10)
    shutil.copy(seeds_folder / "seed_0" / "kernels" / "probe.npz", sparse / "kernels")
    other = load_run(sparse)
    check_comparable(baseline, other)
    distance = baseline_distance(baseline, other)
    assert distance["steps"] == [0, 10, 20] and distance["epochs"] == [0.0, 2.0, 4.0]
    for kind, mine, theirs in (
        ("clean", other.clean_kernels, baseline.clean_kernels),
        ("adversarial", other.adversarial_kernels, baseline.adversarial_kernels),
    ):
        expected = [metrics.kernel_distance(theirs[2 * i], mine[i]) for i in range(3)]
        np.testing.assert_allclose(distance[kind], expected)
    itself = baseline_distance(baseline, baseline)
    assert itself["clean"] == itself["adversarial"] == [0.0] * (EPOCHS + 1)
    with pytest.raises(RunError, match="tracked their kernels on different probes") as error:
        check_comparable(baseline, load_run(run_folders["standard"]))
    one_line(error)


def test_specialization_heatmaps(summaries, tmp_path, drawn, assert_heading):
    """Rows = runs, columns = epochs; one colour scale in the three figures; class names on the
    outer axes; a record without the matrix an empty panel that says why."""
    bare = {**summaries[0], "label": "bare"}
    bare["kernels"] = [{"epoch": r["epoch"], "clean": {"frobenius_norm": 1.0}} for r in bare["kernels"]]
    runs = [summaries[0], summaries[1], bare]
    for name in plots.dynamics_comparison.SPECIALIZATION_KINDS:
        plots.specialization_heatmaps(runs, tmp_path / f"{name}.png", figure=name, epochs=(0, 3), subtitle="ksm")
    fig = drawn["specialization_clean.png"]
    assert_heading(fig, "ksm")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(" ·")[0] for ax in panels] == ["epoch 0", "epoch 3"] * 3
    images = [ax.images[0] for ax in panels if ax.images]
    assert len(images) == 4
    np.testing.assert_allclose(images[-1].get_array(), summaries[1]["kernels"][3]["clean"]["specialization_matrix"])
    scales = {
        (image.norm.vmin, image.norm.vmax) for figure in drawn.values() for ax in figure.axes for image in ax.images
    }
    assert len(scales) == 1  # one scale in the three figures
    names = ["digit 0", "digit 1", "digit 2"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == names
    assert [t.get_text() for t in panels[2].get_xticklabels()] == names  # the last row that has a matrix
    assert not any(t.get_text() for t in panels[1].get_yticklabels())
    assert "not recorded" in " ".join(panels[4].texts[0].get_text().split()) and not panels[4].images


def test_ksm_columns_default_to_the_first_and_last_tracked_epoch(summaries):
    from ntkrobust.plots.dynamics_comparison import ksm_columns

    assert ksm_columns(summaries[:1], None) == [[0.0, float(EPOCHS)]]
    assert ksm_columns(summaries[:1], (1, 2.5)) == [[1.0, None]]
    assert ksm_columns([{"label": "no kernels"}], None) == [[None]]


def test_seed_bands_and_baseline_figures(seeds_folder, tmp_path, drawn, assert_real_png):
    """A group of seeds is one curve with a band in every curve figure, one picture (its first
    seed) in the others; the baseline figure draws every run's distance to the baseline."""
    (group,) = load_run_groups([seeds_folder])
    summary = group_summary(group, baseline=group.runs[0])
    written = plots.dynamics_figures([summary], tmp_path, subtitle="seeds")
    assert "baseline_distance" in written
    for name in ("norm_concentration", "velocity_distance", "rank_specialization", "accuracy", "baseline_distance"):
        assert_real_png(tmp_path / written[name])
        bands = [c for ax in drawn[written[name]].axes for c in ax.collections]
        assert bands, name
    clean = drawn["baseline_distance.png"].axes[0]
    each = np.array([seed["baseline_distance"]["clean"] for seed in summary["seed_runs"]])
    np.testing.assert_allclose(clean.lines[0].get_ydata(), each.mean(axis=0))
    assert each[0].tolist() == [0.0] * (EPOCHS + 1)  # the first seed is the baseline


# -- two-stage training: accuracy against the spawn epoch (LOO fig. 2), switch cost (RAT table 1) --


def test_two_stage_figures_need_their_records():
    records = two_stage_records()
    assert plots.applicable_figures([{"label": "bare"}], **records) == ["spawn_accuracy", "switch_cost"]
    empty = {"spawn_accuracy": {"lines": [], "parents": []}, "switch_cost": {"runs": []}}
    assert plots.applicable_figures([{"label": "bare"}], **empty) == []


def test_spawn_accuracy_panels_by_parent(tmp_path, drawn, assert_real_png, assert_heading):
    record = two_stage_records()["spawn_accuracy"]
    plots.spawn_accuracy_curves(record, tmp_path / "spawn.png", subtitle="synthetic")
    assert_real_png(tmp_path / "spawn.png")
    fig = drawn["spawn.png"]
    assert_heading(fig, "LOO fig. 2, table 2")
    standard, adversarial = fig.axes  # one panel per parent
    assert [ax.get_title() for ax in fig.axes] == ["parent: standard", "parent: pgd"]
    parent = record["parents"][0]
    assert [list(line.get_ydata()) for line in standard.lines[:2]] == [parent["test_clean"], parent["test_pgd"]]
    centered = record["lines"][1]["points"]  # of seeds: ± their std as error bars
    assert list(standard.lines[4].get_ydata()) == [p["test_clean"] for p in centered]
    # the two kinds of a panel side by side at each spawn epoch (1, 2, 4 in a panel of epochs 0-4: 0.14 apart),
    # so that equal accuracies stay visible; the lone kind of a panel stays on its epoch
    linearized_x, centered_x = standard.lines[2].get_xdata(), standard.lines[4].get_xdata()
    np.testing.assert_allclose(linearized_x, [0.93, 1.93, 3.93])
    np.testing.assert_allclose(centered_x, [1.07, 2.07, 4.07])
    np.testing.assert_allclose(adversarial.lines[0].get_xdata(), [1.0, 2.0, 4.0])
    bars = [c for c in standard.collections if c.get_segments()]
    assert len(bars) == 2 and len(adversarial.collections) == 0
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == ["linearized", "centered", "centered, pgd in stage 2"]
    assert "± sample std\nover the seeds" in legend and "parent at epoch t'\n(clean; per-epoch PGD-10 dashed)" in legend
    note = fig._supxlabel.get_text()  # the second parent is not among the runs: no reference line
    assert "the accuracy of the parent pgd at epoch t' (the parent run is not among the RUNs)" in note


def test_switch_cost_bars_stack_clean_and_adversarial_seconds(tmp_path, drawn, assert_real_png, assert_heading):
    runs = two_stage_records()["switch_cost"]["runs"]
    plots.switch_cost_bars({"runs": runs}, tmp_path / "cost.png", subtitle="synthetic")
    assert_real_png(tmp_path / "cost.png")
    fig = drawn["cost.png"]
    assert_heading(fig, "RAT sec. 5, fig. 6, table 1")
    seconds, accuracy = fig.axes
    assert [p.get_width() for p in seconds.patches] == [0.0, 5.0, 2.5, 90.0, 45.0, 67.5]
    assert [p.get_x() for p in seconds.patches[3:]] == [0.0, 5.0, 2.5]  # stacked on the clean seconds
    texts = [t.get_text() for t in seconds.texts]
    assert texts == ["90 s", "50 s\n56% of the full AT run's seconds", "70 s\n75% of full AT (own epoch times)"]
    ticks = [t.get_text() for t in seconds.get_yticklabels()]
    assert ticks[0].endswith("full pgd (no clean epochs)") and ticks[1].endswith("clean epochs 1–2, then pgd")
    assert ticks[2].endswith("clean epoch 1, then pgd")
    assert [p.get_width() for p in accuracy.patches] == [0.75, 0.8, 0.78, 0.45, 0.4, 0.42]
    assert len([c for c in accuracy.collections if c.get_segments()]) == 1  # the seeds' PGD spread
    canvas = FigureCanvasAgg(fig)  # every label ends inside its panel (one ran across the border)
    canvas.draw()
    renderer = canvas.get_renderer()
    right = seconds.get_window_extent(renderer).x1
    assert all(t.get_window_extent(renderer).x1 < right for t in seconds.texts)
    assert "clean epochs (standard)" in [t.get_text() for t in fig.legends[0].get_texts()]
    plots.switch_cost_bars({"runs": runs[:1]}, tmp_path / "full.png")  # full AT alone: no clean bar to name
    assert "clean epochs (standard)" not in [t.get_text() for t in drawn["full.png"].legends[0].get_texts()]


def test_the_subtitle_says_where_the_trace_kernels_were_estimated():
    """``train --estimator rademacher:K`` tracks an unbiased estimate of the trace eNTK: the
    figures' line says so (it said "trace eNTK" alone), per run where the runs differ."""
    from ntkrobust.plots.dynamics import dynamics_subtitle

    def run(label, estimator):
        return {"label": label, "dataset": "digits", "model": "fc2 (width 8)", "probe_size": 20, "estimator": estimator}

    exact = dynamics_subtitle([run("a", "exact"), run("b", "exact")])
    assert exact == "digits; fc2 (width 8); trace eNTK on a probe of 20 points"
    assert dynamics_subtitle([run("a", "rademacher:2")]) == exact + "; Rademacher estimate of 2 draws"
    mixed = dynamics_subtitle([run("a", "exact"), run("b", "rademacher:1")])
    assert mixed == exact + "; exact (a), Rademacher estimate of 1 draw (b)"
    assert dynamics_subtitle([{k: v for k, v in run("a", "").items() if k != "estimator"}]) == exact  # older runs
    assert dynamics_subtitle([run("a", "rademacher:x")]) == exact + "; rademacher:x"  # as a foreign file says it


def test_a_fact_that_differs_names_each_value_once_with_its_runs():
    from ntkrobust.plots.dynamics import dynamics_subtitle

    runs = [{"label": label, "model": model} for label, model in (("a", "m1"), ("b", "m2"), ("c", "m1"))]
    assert dynamics_subtitle(runs, kernels=False) == "m1 (a and c), m2 (b)"


def test_a_kernel_picture_of_mismatched_labels_is_refused(tmp_path):
    from ntkrobust.plots import kernel_image

    with pytest.raises(
        ValueError, match=r"a square \(N, N\) kernel and N labels, got a kernel \(6, 6\) and labels \(2,\)"
    ):
        kernel_image(np.eye(6), np.array([0, 1]), tmp_path / "k.png", class_names=["a", "b"], title="t")
    assert not (tmp_path / "k.png").exists()  # it drew the 2 x 2 corner


def test_the_kernel_distance_blocks_are_parted_at_the_decay(tmp_path, drawn):
    """kernel_distance.png parts the epochs up to a decay from the later ones (RAT fig. 1a reads
    its second phase from these blocks): a line on the cell edge after the milestone, whatever the
    tracking's spacing; none for a decay outside the tracked epochs."""
    epochs = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0]
    matrix = np.abs(np.subtract.outer(epochs, epochs)).tolist()
    dynamics = {"clean": {"distance_matrix": matrix, "epochs": epochs}}
    runs = [
        {"label": "decayed", "dynamics": dynamics, "milestones": [2, 9]},
        {"label": "constant", "dynamics": dynamics, "milestones": []},
    ]
    plots.kernel_distance_heatmaps(runs, tmp_path / "kernel_distance.png")
    fig = drawn["kernel_distance.png"]
    decayed, constant = (ax for ax in fig.axes if ax.get_title().startswith(("decayed", "constant")))
    marks = [line for line in decayed.lines if line.get_linestyle() == "-."]
    assert sorted(float(line.get_xdata()[0]) for line in marks if line.get_xdata()[0] == line.get_xdata()[1]) == [2.5]
    assert sorted(float(line.get_ydata()[0]) for line in marks if line.get_ydata()[0] == line.get_ydata()[1]) == [2.5]
    assert not [line for line in constant.lines if line.get_linestyle() == "-."]
    texts = [" ".join(t.get_text().split()) for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert any(text.endswith("white dash-dot: the learning rate decays after epoch 2") for text in texts), texts
