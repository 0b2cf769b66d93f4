"""Audit of ``bridge.runs``: run folders written here by hand, their kernel dynamics by loops.

The independent route: every run folder (``history.json``, ``kernels/probe.npz``,
``kernels/step_*.npz``) is written in this file with seeded float64 kernels, tracked at unevenly
spaced steps, the AE-NTK different from the C-NTK and the probe's class ids ``y`` different from
its output indices ``targets``. Every expected number is computed here from those kernels by
Python loops over their entries (the distance 1 − ⟨A, B⟩_F / (‖A‖_F ‖B‖_F), the velocity per
epoch at the interval midpoints, the distance to the *last* kernel, TK eq. 12's r and θ) and the
top-k truncation from an SVD of the PSD kernel (U S Uᵀ, not the eigensolver the code uses),
never through ``kernels.metrics``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.bridge.runs import (
    RunError,
    check_kernel_files,
    distinct_labels,
    dynamics_summary,
    json_summary,
    kernel_dynamics,
    load_run,
    run_label,
)

TOL = 1e-12  # float64 sums over a few dozen kernel entries
N = 5
STEPS_PER_EPOCH = 4
STEPS = (0, 2, 8, 14)  # epochs 0, 0.5, 2, 3.5: intervals of 0.5, 1.5 and 1.5 epochs


def psd_trajectory(seed: int, count: int = len(STEPS), n: int = N) -> list[np.ndarray]:
    """``count`` PSD kernels that drift apart, with entries no float32 holds exactly."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n, n))
    out = []
    for _ in range(count):
        out.append(phi @ phi.T)
        phi = phi + 0.5 * rng.normal(size=phi.shape)
    return out


def write_run(
    folder: Path,
    *,
    clean: list[np.ndarray],
    adversarial: list[np.ndarray] | None = None,
    steps: tuple[int, ...] = STEPS,
    with_epoch: bool = True,
    config: dict | None = None,
    label: str | None = "run",
    epochs: list[dict] | None = None,
    y: np.ndarray | None = None,
    targets: np.ndarray | None = None,
) -> Path:
    """A run folder in ``train --out``'s layout; kernel records with or without their ``epoch``."""
    (folder / "kernels").mkdir(parents=True)
    n = clean[0].shape[0]
    targets = np.arange(n) % 2 if targets is None else targets
    y = (np.arange(n) + 1) % 3 if y is None else y  # class ids other than the output indices
    np.savez(folder / "kernels" / "probe.npz", x=np.full((n, 1, 2, 2), 0.5), y=y, targets=targets)
    records = []
    for i, step in enumerate(steps):
        name = f"kernels/step_{step:06d}.npz"
        arrays = {"clean": clean[i]} | ({} if adversarial is None else {"adversarial": adversarial[i]})
        np.savez(folder / name, **arrays)
        record = {"step": step, "file": name}
        if with_epoch:
            record["epoch"] = step / STEPS_PER_EPOCH
        records.append(record)
    history = {
        "command": "train",
        "config": config or {"model": {"model": "fc2", "width": 8, "num_classes": 3}, "train": {"mode": "pgd"}},
        "class_names": ["a", "b", "c"],
        "steps_per_epoch": STEPS_PER_EPOCH,
        "epochs": epochs if epochs is not None else [{"epoch": 0, "step": 0, "mode": "init"}],
        "kernels": records,
    }
    if label is not None:
        history["label"] = label
    (folder / "history.json").write_text(json.dumps(history))
    return folder


def flat_norm(a: np.ndarray) -> float:
    return math.sqrt(sum(float(x) ** 2 for x in np.ravel(a)))


def loop_distance(a: np.ndarray, b: np.ndarray) -> float:
    dot = sum(float(x) * float(z) for x, z in zip(np.ravel(a), np.ravel(b), strict=True))
    return 1.0 - dot / (flat_norm(a) * flat_norm(b))


def svd_truncation(k: np.ndarray, top: int) -> np.ndarray:
    """Rank-``top`` truncation of a PSD kernel: U S Uᵀ from its SVD, the top singular values."""
    u, s, _ = np.linalg.svd(k)
    return sum(s[i] * np.outer(u[:, i], u[:, i]) for i in range(top))


def expected_dynamics(kernels: list[np.ndarray], epochs: list[float], top: int) -> dict[str, list]:
    t = len(kernels)
    polar = {}
    for prefix, ks in (("", kernels), ("top_", [svd_truncation(k, top) for k in kernels])):
        span = flat_norm(ks[-1] - ks[0])
        polar[prefix + "polar_r"] = [flat_norm(k - ks[0]) / span for k in ks]
        polar[prefix + "polar_theta"] = [math.acos(min(1.0, 1.0 - loop_distance(k, ks[0]))) for k in ks]
    return {
        "epochs": list(epochs),
        "distance_matrix": [
            [loop_distance(a, b) if i != j else 0.0 for j, b in enumerate(kernels)] for i, a in enumerate(kernels)
        ],
        "velocity": [loop_distance(kernels[i], kernels[i + 1]) / (epochs[i + 1] - epochs[i]) for i in range(t - 1)],
        "velocity_epochs": [(epochs[i] + epochs[i + 1]) / 2 for i in range(t - 1)],
        "distance_to_final": [loop_distance(k, kernels[-1]) for k in kernels],
        **polar,
    }


def assert_dynamics(measured: dict, expected: dict) -> None:
    for key in (
        "epochs",
        "distance_matrix",
        "velocity",
        "velocity_epochs",
        "distance_to_final",
        "polar_r",
        "top_polar_r",
    ):
        np.testing.assert_allclose(measured[key], expected[key], rtol=1e-10, atol=TOL, err_msg=key)
    for key in ("polar_theta", "top_polar_theta"):  # acos(1 − d) keeps half the digits near 0
        np.testing.assert_allclose(measured[key], expected[key], rtol=1e-7, atol=1e-7, err_msg=key)


def test_a_runs_clean_and_adversarial_dynamics_are_its_kernels_by_hand(tmp_path):
    """dynamics_summary of a hand-written run: per-epoch velocity at the midpoints of uneven
    intervals, the distance to the last kernel, polar coordinates of the kernels and of their
    top-3 truncations, each of its own kind's kernels; the first and last clean kernels as written."""
    clean, adversarial = psd_trajectory(1), psd_trajectory(2)
    run = load_run(write_run(tmp_path / "run", clean=clean, adversarial=adversarial))
    epochs = [s / STEPS_PER_EPOCH for s in STEPS]
    np.testing.assert_array_equal(run.kernel_epochs, epochs)
    summary = dynamics_summary(run, top_k=3)
    for kind, kernels in (("clean", clean), ("adversarial", adversarial)):
        measured = summary["dynamics"][kind]
        assert measured["top_k"] == 3 and "undefined" not in measured
        assert_dynamics(measured, expected_dynamics(kernels, epochs, 3))
    assert summary["kernel_epochs"] == epochs
    assert [record["epoch"] for record in summary["kernels"]] == epochs
    assert [record["step"] for record in summary["kernels"]] == list(STEPS)
    for key, kernel in (("initial_kernel", clean[0]), ("final_kernel", clean[-1])):
        assert summary[key].dtype == np.float64
        np.testing.assert_array_equal(summary[key], kernel)  # float64 as written, not rounded to float32
    plain = json_summary(summary)
    assert not set(plain) & {"initial_kernel", "final_kernel"}
    json.dumps(plain)


def test_kernel_epochs_from_steps_when_records_hold_no_epoch(tmp_path):
    """epoch = step / steps_per_epoch, a fraction where a kernel was tracked inside an epoch."""
    run = load_run(write_run(tmp_path / "run", clean=psd_trajectory(3), with_epoch=False))
    np.testing.assert_array_equal(run.kernel_epochs, [0.0, 0.5, 2.0, 3.5])
    assert run.kernel_epochs.dtype == np.float64


def test_a_probe_of_exactly_top_k_points_has_top_polar_coordinates():
    """The top-k space needs k probe points (docstring): with N = k the truncation is the kernel
    itself, so the top-k coordinates are the whole kernel's; with N < k they are undefined."""
    kernels = psd_trajectory(4, count=3)
    epochs = [0.0, 1.0, 2.0]
    same = kernel_dynamics(kernels, np.array(epochs), top_k=N)
    assert "undefined" not in same
    np.testing.assert_allclose(same["top_polar_r"], same["polar_r"], rtol=1e-10, atol=TOL)
    np.testing.assert_allclose(same["top_polar_theta"], same["polar_theta"], rtol=1e-7, atol=1e-7)
    fewer = kernel_dynamics(kernels, np.array(epochs), top_k=N + 1)
    assert set(fewer["undefined"]) == {"top_polar"} and "top_polar_r" not in fewer
    assert fewer["polar_r"] == same["polar_r"]


def test_undefined_dynamics_are_named_by_what_is_missing():
    """A kernel that returns to Θ₀ has no polar radius (‖Θ_f − Θ₀‖ = 0): the reason is kept under
    ``polar`` / ``top_polar`` (the plots look there), the distances still measured. One kernel
    has no velocity; two have one."""
    k0, k1 = psd_trajectory(5, count=2)
    back = kernel_dynamics([k0, k1, k0], np.array([0.0, 1.0, 2.0]), top_k=2)
    assert set(back["undefined"]) == {"polar", "top_polar"}
    assert not {"polar_r", "polar_theta", "top_polar_r", "top_polar_theta"} & set(back)
    np.testing.assert_allclose(back["distance_to_final"], [0.0, loop_distance(k1, k0), 0.0], atol=TOL)
    one = kernel_dynamics([k0], np.array([2.0]), top_k=2)
    assert set(one["undefined"]) == {"velocity", "polar", "top_polar"}
    assert one["distance_matrix"] == [[0.0]] and one["distance_to_final"] == [0.0]
    two = kernel_dynamics([k0, k1], np.array([0.0, 0.25]), top_k=2)
    np.testing.assert_allclose(two["velocity"], [loop_distance(k0, k1) / 0.25], rtol=1e-10)
    assert two["velocity_epochs"] == [0.125]


def test_kernel_dynamics_measures_in_float64():
    """Two kernels a relative 1e-6 apart (Δ ⟂ K, ‖Δ‖ = s ‖K‖): d = 1 − 1/√(1 + s²) in closed form,
    which float32 kernels (resolution ~6e-8 per entry) would miss by several percent."""
    base = psd_trajectory(6, count=1)[0]
    delta = np.random.default_rng(6).normal(size=(N, N))
    delta = delta + delta.T
    delta -= np.sum(delta * base) / np.sum(base * base) * base
    s = 1e-6
    delta *= s * np.linalg.norm(base) / np.linalg.norm(delta)
    expected = s**2 / ((math.sqrt(1 + s**2) + 1) * math.sqrt(1 + s**2))  # 1 − 1/√(1 + s²) without cancellation
    dynamics = kernel_dynamics([base, base + delta], np.array([0.0, 2.0]), top_k=2)
    assert dynamics["distance_to_final"][0] == pytest.approx(expected, rel=1e-4, abs=0)
    assert dynamics["velocity"][0] == pytest.approx(expected / 2, rel=1e-4, abs=0)


@pytest.mark.parametrize(
    ("steps", "epochs_of", "reason"),
    [
        ((0, 4, 4), None, "strictly increasing"),  # the same step twice
        ((0, 8, 4), [0.0, 1.0, 2.0], "strictly increasing"),  # steps out of order, epochs in order
        ((0, 4, 8), [0.0, "inf", 2.0], "has epoch inf"),
    ],
)
def test_kernel_records_out_of_order_or_at_no_finite_epoch_are_refused(tmp_path, steps, epochs_of, reason):
    folder = write_run(tmp_path / "run", clean=psd_trajectory(7, count=3), steps=steps)
    history = json.loads((folder / "history.json").read_text())
    if epochs_of is not None:
        for record, epoch in zip(history["kernels"], epochs_of, strict=True):
            record["epoch"] = epoch
    (folder / "history.json").write_text(json.dumps(history))
    with pytest.raises(RunError, match=reason):
        load_run(folder, kernels=False)


def test_probe_labels_are_its_class_ids_and_targets_its_output_indices(tmp_path):
    y, targets = np.array([2, 0, 1, 2, 1]), np.array([1, 0, 1, 0, 1])
    run = load_run(write_run(tmp_path / "run", clean=psd_trajectory(8), y=y, targets=targets), kernels=False)
    np.testing.assert_array_equal(run.probe_labels, y)
    np.testing.assert_array_equal(run.probe_targets, targets)
    assert run.probe_labels.dtype == run.probe_targets.dtype == np.int64


def test_missing_class_names_are_the_output_indices_up_to_the_largest(tmp_path):
    folder = write_run(tmp_path / "run", clean=psd_trajectory(9), targets=np.array([0, 3, 1, 0, 2]))
    history = json.loads((folder / "history.json").read_text())
    del history["class_names"]
    (folder / "history.json").write_text(json.dumps(history))
    assert load_run(folder, kernels=False).class_names == ["0", "1", "2", "3"]
    history["class_names"] = ["a", "b", "c"]  # one fewer than the probe's outputs 0..3
    (folder / "history.json").write_text(json.dumps(history))
    with pytest.raises(RunError, match="3 class names but the probe has output index 3"):
        load_run(folder, kernels=False)


def test_an_ae_ntk_in_only_some_kernel_files_is_refused(tmp_path):
    folder = write_run(tmp_path / "run", clean=psd_trajectory(10), adversarial=psd_trajectory(11))
    np.savez(folder / "kernels" / f"step_{STEPS[1]:06d}.npz", clean=psd_trajectory(12, count=1)[0])
    with pytest.raises(RunError, match="only 3 of 4 kernel files hold an AE-NTK"):
        load_run(folder)


@pytest.mark.parametrize("kind", ["clean", "adversarial"])
def test_a_kernel_of_the_wrong_shape_is_refused_in_either_kind(tmp_path, kind):
    folder = write_run(tmp_path / "run", clean=psd_trajectory(13), adversarial=psd_trajectory(14))
    arrays = {"clean": psd_trajectory(15, count=1)[0], "adversarial": psd_trajectory(16, count=1)[0]}
    arrays[kind] = np.ones((N, N + 1))  # N rows, but not square
    np.savez(folder / "kernels" / f"step_{STEPS[2]:06d}.npz", **arrays)
    with pytest.raises(RunError, match=f"{kind} kernel of shape \\({N}, {N + 1}\\)"):
        load_run(folder)


def test_config_lifts_training_and_linearization_settings(tmp_path):
    """``train`` settings are lifted to the top of the config, over a stale top-level value; a
    linearization's checkpoint is ``linearize_from`` and makes the run ``linearized``."""
    config = {
        "mode": "standard",
        "model": {"model": "fc2", "width": 8, "num_classes": 3},
        "train": {"mode": "pgd", "switch_epoch": 0, "epochs": 3, "milestones": [2, 1]},
        "linearization": {"checkpoint": "parent/checkpoint_000001.pt"},
    }
    run = load_run(write_run(tmp_path / "run", clean=psd_trajectory(17), config=config), kernels=False)
    assert run.mode == "pgd" and run.switch_epoch == 0
    assert run.config["linearize_from"] == "parent/checkpoint_000001.pt"
    summary = dynamics_summary(run, top_k=2)
    assert summary["linearized"] is True and summary["switch_epoch"] == 0
    assert summary["milestones"] == [2, 1]  # as the configuration says them
    # switch epoch 0: adversarial from the first epoch, no "standard then"
    assert summary["description"] == "run: fc2 (width 8), linearized pgd training for 3 epochs, probe of 5 points"


def test_description_counts_epochs_from_the_records_and_names_eps_of_a_switched_run(tmp_path):
    """Without ``epochs`` in the config, the largest epoch recorded (the init record is epoch 0);
    a standard run switched to adversarial training later has its eps shown."""
    config = {"model": "fc1", "mode": "standard", "switch_epoch": 2, "eps": 0.125}
    records = [{"epoch": e, "step": 4 * e, "mode": "init" if e == 0 else "standard"} for e in (0, 1, 2, 5)]
    run = load_run(write_run(tmp_path / "run", clean=psd_trajectory(18), config=config, epochs=records, label=None))
    assert run.label == "fc1 standard"  # "<model> <mode>" without a label
    assert dynamics_summary(run, top_k=2)["description"] == (
        "fc1 standard: fc1, standard then standard after epoch 2 training for 5 epochs, eps 0.125, probe of 5 points"
    )


def test_run_label_and_distinct_labels():
    assert run_label({"config": {"model": {"model": "cnn"}, "mode": "trades"}}, Path("x")) == "cnn trades"
    assert run_label({"config": {}}, Path("some/folder")) == "folder"
    labels = distinct_labels(["a", "a", "b"], [Path("x/r"), Path("y/r"), Path("z/s")])
    assert labels == ["a (r) #1", "a (r) #2", "b"]
    assert distinct_labels(["a", "a"], [Path("x/p"), Path("x/q")]) == ["a (p)", "a (q)"]


def test_an_epoch_record_without_an_epoch_number_is_refused(tmp_path):
    records = [{"epoch": 0, "step": 0, "mode": "init"}, {"epoch": None, "step": 4, "mode": "pgd"}]
    folder = write_run(tmp_path / "run", clean=psd_trajectory(19), epochs=records)
    with pytest.raises(RunError, match="epoch record 1 has malformed epoch"):
        load_run(folder, kernels=False)


def test_json_summary_drops_the_arrays_of_every_seed_run(tmp_path):
    run = load_run(write_run(tmp_path / "run", clean=psd_trajectory(20)))
    seed = dynamics_summary(run, top_k=2)
    group = {**seed, "seed_runs": [seed, seed]}
    plain = json_summary(group)
    assert all(not set(s) & {"initial_kernel", "final_kernel"} for s in plain["seed_runs"])
    json.dumps(plain)


@pytest.mark.parametrize(
    ("epochs", "kernels", "message"),
    [
        ([0.0, 1.0, 1.0], 3, "epochs must be strictly increasing"),  # a velocity over 0 epochs
        ([0.0, 2.0, 1.0], 3, "epochs must be strictly increasing"),
        ([0.0, 1.0], 3, "3 kernels but 2 epochs"),
        ([], 0, "at least one kernel"),
    ],
)
def test_kernel_dynamics_refuses_epochs_that_do_not_increase_or_do_not_fit(epochs, kernels, message):
    with pytest.raises(ValueError, match=message):
        kernel_dynamics(psd_trajectory(21, count=3)[:kernels], np.array(epochs), top_k=2)


def test_kernel_dynamics_refuses_a_kernel_with_nan():
    kernels = psd_trajectory(22, count=3)
    kernels[1][2, 3] = np.nan
    with pytest.raises(ValueError, match=r"kernel 1 \(epoch 0.5\) contains NaN or inf"):
        kernel_dynamics(kernels, np.array([0.0, 0.5, 1.0]), top_k=2)


def test_a_second_batchnorm_statistics_reads_its_own_kernel_keys(tmp_path):
    """A run tracked under both statistics stores ``clean_batch`` / ``adversarial_batch`` beside
    ``clean`` / ``adversarial``; its view with ``kernel_suffix="_batch"`` reads those (and
    ``check_kernel_files`` checks them where a record names ``batch_statistics``)."""
    clean, adversarial = psd_trajectory(23), psd_trajectory(24)
    batch_clean, batch_adversarial = psd_trajectory(25), psd_trajectory(26)
    folder = write_run(tmp_path / "run", clean=clean, adversarial=adversarial)
    history = json.loads((folder / "history.json").read_text())
    for i, record in enumerate(history["kernels"]):
        arrays = {"clean": clean[i], "adversarial": adversarial[i]}
        np.savez(folder / record["file"], **arrays, clean_batch=batch_clean[i], adversarial_batch=batch_adversarial[i])
        record["batch_statistics"] = {}
    (folder / "history.json").write_text(json.dumps(history))
    run = load_run(folder, kernels=False)
    view = dataclasses.replace(run, kernel_suffix="_batch").with_kernels()
    for read, written in ((view.clean_kernels, batch_clean), (view.adversarial_kernels, batch_adversarial)):
        assert len(read) == len(written)
        for a, b in zip(read, written, strict=True):
            np.testing.assert_array_equal(a, b)
    check_kernel_files(folder, history["kernels"], N)
    np.savez(folder / history["kernels"][1]["file"], clean=clean[1], clean_batch=np.ones((N, N + 1)))
    with pytest.raises(RunError, match="clean_batch kernel of shape"):
        check_kernel_files(folder, history["kernels"], N)


def test_a_binary_net_of_one_output_may_name_two_classes(tmp_path):
    config = {"model": {"model": "fc2", "num_classes": 1}, "train": {"mode": "standard"}}
    folder = write_run(tmp_path / "run", clean=psd_trajectory(27), config=config, targets=np.zeros(N, dtype=np.int64))
    history = json.loads((folder / "history.json").read_text())
    history["class_names"] = ["cat", "dog"]
    (folder / "history.json").write_text(json.dumps(history))
    assert load_run(folder, kernels=False).class_names == ["cat", "dog"]
    history["class_names"] = ["cat", "dog", "eel"]  # more names than a binary net has classes
    (folder / "history.json").write_text(json.dumps(history))
    with pytest.raises(RunError, match="3 class names for a net of 1 outputs"):
        load_run(folder, kernels=False)


def test_summary_names_the_probes_output_indices_and_the_trace_estimator(tmp_path):
    """``probe_targets`` are the output indices (not the class ids ``y``); ``estimator`` the
    tracking's ("exact" for a run from before the option)."""
    y, targets = np.array([2, 0, 1, 2, 1]), np.array([1, 0, 1, 0, 1])
    config = {"model": "fc1", "train": {"mode": "pgd"}, "tracking": {"estimator": "rademacher:4"}}
    run = load_run(write_run(tmp_path / "a", clean=psd_trajectory(28), config=config, y=y, targets=targets))
    summary = dynamics_summary(run, top_k=2)
    assert summary["probe_targets"] == [1, 0, 1, 0, 1]
    assert summary["estimator"] == "rademacher:4"
    old = load_run(write_run(tmp_path / "b", clean=psd_trajectory(28), config={"model": "fc1"}))
    assert dynamics_summary(old, top_k=2)["estimator"] == "exact"


def test_a_negative_output_index_in_the_probe_is_refused(tmp_path):
    folder = write_run(tmp_path / "run", clean=psd_trajectory(29), targets=np.array([0, 1, -1, 0, 1]))
    with pytest.raises(RunError, match="negative output index -1"):
        load_run(folder, kernels=False)
