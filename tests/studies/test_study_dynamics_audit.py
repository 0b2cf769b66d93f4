"""``studies.dynamics.run`` on tiny synthetic run folders whose every kernel the test wrote: the
numbers in results.json and in the figures, against numpy by hand (a mutation audit).

The run folders are written here in the format of ``train --out RUN`` (``history.json``,
``kernels/probe.npz``, ``kernels/step_*.npz``), six probe points, kernels tracked at unevenly
spaced epochs 0, 1, 3, 4 (a velocity per *epoch* differs from one per tracking interval there),
the AE-NTK different from the C-NTK. The independent route: the kernel distance
1 − ⟨A, B⟩_F / (‖A‖_F ‖B‖_F), the velocity d(Θ_t, Θ_{t+1}) / (e_{t+1} − e_t) at the interval
midpoints and the distance to the *last* kernel computed in numpy from the kernels as written,
not through ``kernels.metrics``; the metrics the figures draw are the history's own numbers.
No training, and the figures drawn one at a time from the result's summaries (save draws them
all) except where saving is what is tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ntkrobust import plots
from ntkrobust.studies import dynamics
from ntkrobust.studies.dynamics import DynamicsSettings

N, C = 6, 3
STEPS_PER_EPOCH = 5
STEPS = (0, 5, 15, 20)  # epochs 0, 1, 3, 4: the intervals are 1, 2 and 1 epochs long
EPOCHS = [s / STEPS_PER_EPOCH for s in STEPS]


def kernels(seed: int, count: int = len(STEPS)) -> list[np.ndarray]:
    """``count`` symmetric PSD (N, N) trace kernels that drift apart, seeded."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(N, 4))
    out = []
    for _ in range(count):
        out.append(phi @ phi.T)
        phi = phi + 0.6 * rng.normal(size=phi.shape)
    return out


def by_hand_distance(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 - float(np.sum(a * b)) / (np.sqrt(np.sum(a * a)) * np.sqrt(np.sum(b * b)))


def ksm(seed: int) -> list[list[float]]:
    """A stand-in C × C specialization matrix (the figures draw what the history holds)."""
    return (1.0 + 0.1 * np.random.default_rng(seed).normal(size=(C, C))).tolist()


def write_run(folder: Path, *, label: str, seed: int, probe_seed: int = 0) -> dict[str, list[np.ndarray]]:
    """A run folder of ``train``'s format; returns the clean and AE kernels written."""
    (folder / "kernels").mkdir(parents=True)
    targets = np.arange(N) % C
    x = np.random.default_rng(probe_seed).uniform(0, 1, size=(N, 1, 4, 4)).astype(np.float32)
    np.savez(folder / "kernels" / "probe.npz", x=x, y=targets, targets=targets)
    clean, adversarial = kernels(seed), kernels(seed + 1000)
    records = []
    for k, (step, epoch) in enumerate(zip(STEPS, EPOCHS, strict=True)):
        name = f"kernels/step_{step:07d}.npz"
        np.savez(
            folder / name, clean=clean[k], adversarial=adversarial[k], x_adversarial=x, predicted_adversarial=targets
        )
        metric = {
            kind: {
                "frobenius_norm": float(np.linalg.norm(kernel)),
                "effective_rank": 2.0 + 0.1 * k + offset,
                "mean_specialization": 1.0 + 0.05 * k + offset,
                "specialization_matrix": ksm(seed + 10 * k + int(100 * offset)),
            }
            for kind, kernel, offset in (("clean", clean[k], 0.0), ("adversarial", adversarial[k], 0.5))
        }
        records.append({"step": step, "epoch": epoch, "file": name, **metric})
    epochs = [
        {
            "epoch": e,
            "step": e * STEPS_PER_EPOCH,
            "mode": "init" if e == 0 else "standard",
            "accuracy": {"running": {"test_clean": 0.1 + 0.2 * e + 0.01 * seed, "test_pgd": 0.05 * e}},
        }
        for e in range(int(EPOCHS[-1]) + 1)
    ]
    history = {
        "command": "train",
        "label": label,
        "config": {
            "model": {"model": "fc2", "input_shape": [1, 4, 4], "num_classes": C, "width": 8},
            "mode": "standard",
            "epochs": int(EPOCHS[-1]),
            "seed": seed,
            "track_kernel": N,
        },
        "class_names": [f"c{k}" for k in range(C)],
        "steps_per_epoch": STEPS_PER_EPOCH,
        "epochs": epochs,
        "kernels": records,
    }
    (folder / "history.json").write_text(json.dumps(history))
    return {"clean": clean, "adversarial": adversarial}


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path, dict, dict]:
    a, b = tmp_path / "a", tmp_path / "b"
    return a, b, write_run(a, label="run a", seed=1), write_run(b, label="run b", seed=2)


def test_velocity_and_distance_to_final_are_the_kernels_by_hand(two_runs, tmp_path, drawn):
    """results.json and velocity_distance.png: the velocity per epoch between consecutive
    tracked kernels at the interval midpoints, the distance to the last kernel, of the C-NTK and
    (its own kernels) of the AE-NTK."""
    a, b, kernels_a, kernels_b = two_runs
    result = dynamics.run(DynamicsSettings(runs=(a, b)))
    saved = json.loads(json.dumps(result.record))  # what results.json holds
    plots.kernel_velocity_and_distance(result.summaries, tmp_path / "velocity_distance.png")
    assert [run["label"] for run in saved["runs"]] == ["run a", "run b"]
    gaps = np.diff(EPOCHS)
    for run, written in zip(saved["runs"], (kernels_a, kernels_b), strict=True):
        for kind in ("clean", "adversarial"):
            ks = written[kind]
            dyn = run["dynamics"][kind]
            velocity = [by_hand_distance(ks[i], ks[i + 1]) / gaps[i] for i in range(len(ks) - 1)]
            np.testing.assert_allclose(dyn["velocity"], velocity, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(dyn["velocity_epochs"], [0.5, 2.0, 3.5], rtol=0, atol=0)
            final = [by_hand_distance(k, ks[-1]) for k in ks]
            np.testing.assert_allclose(dyn["distance_to_final"], final, rtol=1e-9, atol=1e-12)
            matrix = [[by_hand_distance(p, q) for q in ks] for p in ks]
            np.testing.assert_allclose(dyn["distance_matrix"], matrix, rtol=1e-9, atol=1e-12)
    # the figure: velocity panel (log) and distance panel (linear), lines in run, kind order
    fig = drawn["velocity_distance.png"]
    velocity_ax, distance_ax = (ax for ax in fig.axes if ax.get_title())
    assert velocity_ax.get_yscale() == "log" and distance_ax.get_yscale() == "linear"
    for ax, key in ((velocity_ax, "velocity"), (distance_ax, "distance_to_final")):
        drawn_lines = [line for line in ax.lines if line.get_linestyle() in ("-", "--")]
        expected = [(run["dynamics"][kind], kind) for run in saved["runs"] for kind in ("clean", "adversarial")]
        assert len(drawn_lines) == len(expected)
        for line, (dyn, kind) in zip(drawn_lines, expected, strict=True):
            assert line.get_linestyle() == ("-" if kind == "clean" else "--")
            x = dyn["velocity_epochs"] if key == "velocity" else dyn["epochs"]
            np.testing.assert_allclose(line.get_xdata(), x, rtol=0, atol=0)
            np.testing.assert_allclose(line.get_ydata(), dyn[key], rtol=0, atol=0)


def test_the_metric_curves_are_the_history_records_at_their_epochs(two_runs, tmp_path, drawn):
    """rank_specialization.png: the C-NTK's and the AE-NTK's effective rank from their own
    records, at the tracked epochs (0, 1, 3, 4), not at the steps."""
    a, *_ = two_runs
    plots.rank_and_specialization(dynamics.run(DynamicsSettings(runs=(a,))).summaries, tmp_path / "rank.png")
    history = json.loads((a / "history.json").read_text())
    rank_ax, _ = (ax for ax in drawn["rank.png"].axes if ax.get_title())
    solid = next(line for line in rank_ax.lines if line.get_linestyle() == "-")
    dashed = next(line for line in rank_ax.lines if line.get_linestyle() == "--")
    assert solid.get_xdata().tolist() == EPOCHS == dashed.get_xdata().tolist()
    assert solid.get_ydata().tolist() == [r["clean"]["effective_rank"] for r in history["kernels"]]
    assert dashed.get_ydata().tolist() == [r["adversarial"]["effective_rank"] for r in history["kernels"]]


def test_the_specialization_columns_are_the_epochs_asked_for(two_runs, tmp_path, drawn, monkeypatch):
    """``ksm_epochs`` (1, 3) are the columns of the KSM figures the saved result draws, not the
    default first and last tracked epochs; each panel the history's matrix of its kernel at that
    epoch. (The one test that saves: the study hands ``ksm_epochs`` to the figures there.)"""
    from ntkrobust.plots import dynamics as figures

    applicable = figures.applicable_figures  # saving draws the KSM figures alone (the others take seconds)
    monkeypatch.setattr(
        figures, "applicable_figures", lambda *a, **k: [n for n in applicable(*a, **k) if n.startswith("special")]
    )
    a, *_ = two_runs
    result = dynamics.run(DynamicsSettings(runs=(a,), ksm_epochs=(1, 3)))
    result.save(tmp_path / "out")
    assert sorted(drawn) == ["specialization_adversarial.png", "specialization_clean.png"]  # no own-label records
    history = json.loads((a / "history.json").read_text())
    for figure, kind in (("specialization_clean.png", "clean"), ("specialization_adversarial.png", "adversarial")):
        panels = [ax for ax in drawn[figure].axes if ax.images]
        assert [ax.get_title().split(" ·")[0] for ax in panels] == ["epoch 1", "epoch 3"]
        for ax, record in zip(panels, (history["kernels"][1], history["kernels"][2]), strict=True):
            np.testing.assert_array_equal(ax.images[0].get_array(), record[kind]["specialization_matrix"])


def test_an_epoch_near_but_not_at_a_tracked_one_is_refused(two_runs, refuses):
    a, *_ = two_runs
    refuses(
        dynamics, DynamicsSettings(runs=(a,), ksm_epochs=(2,)), "--ksm-epochs 2: run a tracked no kernel at epoch 2"
    )


def write_seeds(folder: Path, seeds: tuple[int, ...]) -> list[dict[str, list[np.ndarray]]]:
    written = [write_run(folder / f"seed_{s}", label="seeded", seed=20 + s) for s in seeds]
    listing = {"command": "train", "seeds": list(seeds), "runs": [{"seed": s, "folder": f"seed_{s}"} for s in seeds]}
    (folder / "seeds.json").write_text(json.dumps(listing))
    return written


def test_a_folder_of_seeds_as_baseline_gives_each_seed_its_own_distance(tmp_path, drawn):
    """The baseline is the first seed; results.json has every seed's distance to it, each by
    hand (the first seed's 0), and the baseline figure the mean ± sample std (ddof 1) of them."""
    seeds = tmp_path / "seeds"
    written = write_seeds(seeds, (0, 1, 2))
    other = tmp_path / "other"
    other_kernels = write_run(other, label="other", seed=7)
    result = dynamics.run(DynamicsSettings(runs=(seeds, other), baseline=seeds))
    record = json.loads(json.dumps(result.record))  # what results.json holds
    plots.baseline_distance_curves(result.summaries, tmp_path / "baseline_distance.png")
    assert len(record["runs"]) == 2
    distances = record["baseline_distance"]
    assert distances["baseline"] == str(seeds / "seed_0")
    base = written[0]
    expected = {
        (entry_seed, kind): [by_hand_distance(base[kind][i], mine[kind][i]) for i in range(len(STEPS))]
        for entry_seed, mine in ((0, written[0]), (1, written[1]), (2, written[2]), (None, other_kernels))
        for kind in ("clean", "adversarial")
    }
    assert [entry["seed"] for entry in distances["runs"]] == [0, 1, 2, None]
    for entry in distances["runs"]:
        for kind in ("clean", "adversarial"):
            np.testing.assert_allclose(entry[kind], expected[(entry["seed"], kind)], rtol=1e-9, atol=1e-12)
    each = np.array([expected[(s, "adversarial")] for s in (0, 1, 2)])
    panels = [ax for ax in drawn["baseline_distance.png"].axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["C-NTK (clean probe)", "AE-NTK (PGD probe)"]
    mean_line = panels[1].lines[0]
    np.testing.assert_allclose(mean_line.get_xdata(), EPOCHS, rtol=0, atol=0)
    np.testing.assert_allclose(mean_line.get_ydata(), each.mean(axis=0), rtol=1e-12, atol=1e-15)
    band = panels[1].collections[0].get_paths()[0].vertices
    std = each.std(axis=0, ddof=1)
    for epoch, mean, spread in zip(EPOCHS, each.mean(axis=0), std, strict=True):
        at = band[np.isclose(band[:, 0], epoch), 1]
        np.testing.assert_allclose([at.min(), at.max()], [mean - spread, mean + spread], rtol=1e-9, atol=1e-12)


def test_the_kernel_pictures_are_the_first_and_last_clean_kernels(two_runs, tmp_path, drawn):
    """kernel_images.png (TK fig. 6 left): the C-NTK written at the first tracked step and at the
    last, rows and columns sorted by class (a loop over the classes), not the AE-NTK's."""
    a, _, written, _ = two_runs
    (summary,) = dynamics.run(DynamicsSettings(runs=(a,))).summaries
    plots.kernel_images_grid([summary], tmp_path / "images.png")
    start, end = (ax for ax in drawn["images.png"].axes if ax.images)
    labels = np.arange(N) % C
    order = [i for c in range(C) for i in range(N) if labels[i] == c]
    for ax, kernel in ((start, written["clean"][0]), (end, written["clean"][-1])):
        np.testing.assert_array_equal(ax.images[0].get_array(), kernel[np.ix_(order, order)])
    assert end.get_title().startswith("end of run a (epoch 4)")
