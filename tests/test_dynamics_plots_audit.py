"""What the training-dynamics figures draw, artist by artist, against numbers the test wrote (a
mutation audit of ``plots.dynamics_*`` and ``plots._runs``).

Every run summary here is a plain dict in the format of ``bridge.runs.dynamics_summary``, a few
points each. The independent route: the numbers a line, band, mesh or image must show are
written into the summary by the test or computed from it in numpy (mean and sample std with
ddof 1 over seeds, class-sorted kernels by a loop over the classes, cell edges at the midpoints
of the tracked epochs), and compared with the artists caught as the figure is saved (``drawn``):
Line2D data and style, the legend's labels matched to their lines by colour, PolyCollection
vertices of the seed bands, QuadMesh and AxesImage arrays, axis scales, titles and notes.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb

from ntkrobust import plots
from ntkrobust.plots._style import _RUN_COLOURS, _shade

BLUE, VERMILLION = _RUN_COLOURS[0], _RUN_COLOURS[1]


def panel(fig, title: str):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def vertical(line) -> bool:
    """An ``axvline``: x fixed, y across the axes (a switch or decay mark)."""
    x, y = np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)
    return x.size == 2 and x[0] == x[1] and list(y) == [0.0, 1.0] and line.get_transform() is not line.axes.transData


def data_lines(ax) -> list:
    """The drawn series of a panel: lines with points, not the vertical marks."""
    return [line for line in ax.lines if len(line.get_xdata()) and not vertical(line)]


def legend_colours(fig) -> dict[str, str]:
    legend = fig.legends[0]
    handles = legend.legend_handles
    colours = [h.get_color() if hasattr(h, "get_color") else h.get_facecolor() for h in handles]
    return {t.get_text(): to_hex(c) for t, c in zip(legend.get_texts(), colours, strict=True)}


def band_edges(collection, x: float) -> tuple[float, float]:
    """(low, high) of a fill_between band at ``x``."""
    vertices = collection.get_paths()[0].vertices
    at = vertices[np.isclose(vertices[:, 0], x), 1]
    return float(at.min()), float(at.max())


def note(fig) -> str:
    return " ".join(fig._supxlabel.get_text().split()) if fig._supxlabel is not None else ""


def metric_run(label: str, values: dict[str, list[float]], epochs=(0.0, 1.0, 2.0, 3.0), **extra) -> dict:
    """A run whose kernel records hold ``values[key]`` of the C-NTK (and ``adv_<key>`` of the AE-NTK)."""
    records = []
    for k, epoch in enumerate(epochs):
        record = {"epoch": float(epoch), "step": 10 * k + 7}
        for kind, prefix in (("clean", ""), ("adversarial", "adv_")):
            metrics = {
                key: v[k] for key, v in values.items() if key.startswith(prefix) and (prefix or "adv_" not in key)
            }
            if metrics:
                record[kind] = {key.removeprefix(prefix): v for key, v in metrics.items()}
        records.append(record)
    return {"label": label, "kernels": records, "kernel_epochs": list(epochs), **extra}


# -- seeds: mean ± sample std, in the run's colour ----------------------------------------------

SEED_RANKS = np.array([[3.0, 4.0, 6.0, 7.0], [3.5, 4.5, 5.0, 9.0], [2.0, 4.2, 7.5, 8.0]])


def seeded_run(label: str, ranks: np.ndarray) -> dict:
    seeds = [metric_run(f"{label}, seed {s}", {"effective_rank": list(r)}) for s, r in enumerate(ranks)]
    return {**seeds[0], "label": label, "seeds": list(range(len(ranks))), "seed_runs": seeds}


def test_a_seed_curve_is_the_mean_and_its_band_the_sample_std(tmp_path, drawn):
    """The line of a group of seeds is numpy's mean over them, the band mean ± std with ddof 1,
    both in the run's colour, the second run's in the second colour the legend names."""
    other = SEED_RANKS[:, ::-1] + 1.0
    runs = [seeded_run("seeds a", SEED_RANKS), seeded_run("seeds b", other)]
    plots.rank_and_specialization(runs, tmp_path / "rank.png")
    fig = drawn["rank.png"]
    ax = panel(fig, "effective rank")
    lines, bands = data_lines(ax), ax.collections
    assert len(lines) == len(bands) == 2
    colours = legend_colours(fig)
    assert (colours["seeds a"], colours["seeds b"]) == (to_hex(BLUE), to_hex(VERMILLION))
    for line, band, ranks, label in zip(lines, bands, (SEED_RANKS, other), ("seeds a", "seeds b"), strict=True):
        mean, std = ranks.mean(axis=0), ranks.std(axis=0, ddof=1)
        np.testing.assert_allclose(line.get_xdata(), [0.0, 1.0, 2.0, 3.0], rtol=0, atol=0)
        np.testing.assert_allclose(line.get_ydata(), mean, rtol=1e-12)
        assert to_hex(line.get_color()) == colours[label]
        assert to_hex(band.get_facecolor()[0]) == colours[label]
        for epoch, m, s in zip(range(4), mean, std, strict=True):
            np.testing.assert_allclose(band_edges(band, epoch), (m - s, m + s), rtol=1e-12)
    assert "mean ± std\nover the seeds" in colours


def test_two_runs_lines_match_their_legend_labels(tmp_path, drawn):
    """Run i's lines in the colour of its legend entry: the first run's values in blue."""
    first = metric_run("first", {"effective_rank": [1.0, 2.0, 3.0, 4.0], "mean_specialization": [1.0] * 4})
    second = metric_run("second", {"effective_rank": [9.0, 8.0, 7.0, 6.0], "mean_specialization": [2.0] * 4})
    plots.rank_and_specialization([first, second], tmp_path / "rank.png")
    fig = drawn["rank.png"]
    colours = legend_colours(fig)
    by_colour = {to_hex(line.get_color()): list(line.get_ydata()) for line in data_lines(panel(fig, "effective rank"))}
    assert by_colour[colours["first"]] == [1.0, 2.0, 3.0, 4.0]
    assert by_colour[colours["second"]] == [9.0, 8.0, 7.0, 6.0]
    spec = {
        to_hex(line.get_color()): list(line.get_ydata())
        for line in data_lines(panel(fig, "mean kernel specialization"))
    }
    assert spec[colours["first"]] == [1.0] * 4 and spec[colours["second"]] == [2.0] * 4


def test_a_seed_band_on_a_log_axis_floors_at_the_lowest_seed(tmp_path, drawn):
    """Frobenius norms 1, 1, 10 (mean 4, std 5.2): mean − std < 0 cannot be drawn on a log
    axis, the band's floor is then the lowest seed's value, 1; its top mean + std."""
    norms = np.array([[1.0, 2.0], [1.0, 2.0], [10.0, 2.5]])
    seeds = [metric_run(f"s{s}", {"frobenius_norm": list(n)}, epochs=(0.0, 1.0)) for s, n in enumerate(norms)]
    run = {**seeds[0], "label": "seeds", "seed_runs": seeds}
    plots.kernel_norm_and_concentration([run], tmp_path / "norm.png")
    ax = panel(drawn["norm.png"], "Frobenius norm")
    assert ax.get_yscale() == "log"
    mean, std = norms.mean(axis=0), norms.std(axis=0, ddof=1)
    assert mean[0] - std[0] < 0 < mean[1] - std[1]
    (band,) = ax.collections
    np.testing.assert_allclose(band_edges(band, 0.0), (1.0, mean[0] + std[0]), rtol=1e-12)
    np.testing.assert_allclose(band_edges(band, 1.0), (mean[1] - std[1], mean[1] + std[1]), rtol=1e-12)


def test_epochs_not_in_every_seed_are_left_out_and_counted(tmp_path, drawn):
    """A velocity that is NaN in one seed at epoch 1.5, and a metric record one seed lacks: the
    curves are drawn where every seed has a value, and the note says how many are not."""

    def dynamics_run(velocity):
        dyn = {"epochs": [0, 1, 2, 3], "velocity_epochs": [0.5, 1.5, 2.5], "velocity": velocity}
        dyn["distance_to_final"] = [0.3, 0.2, 0.1, 0.0]
        return {"label": "seed", "dynamics": {"clean": dyn}, "kernel_epochs": [0, 1, 2, 3]}

    seeds = [dynamics_run([0.2, 0.1, 0.05]), dynamics_run([0.4, float("nan"), 0.07])]
    plots.kernel_velocity_and_distance([{"label": "nan seed", "seed_runs": seeds}], tmp_path / "velocity.png")
    fig = drawn["velocity.png"]
    (line,) = data_lines(panel(fig, "kernel velocity"))
    assert list(line.get_xdata()) == [0.5, 2.5]
    np.testing.assert_allclose(line.get_ydata(), [0.3, 0.06], rtol=1e-12)
    assert "kernel velocity of nan seed (C-NTK) (1 epoch(s) not in every seed)" in note(fig)

    full = metric_run("s0", {"effective_rank": [1.0, 2.0, 3.0, 4.0]})
    short = metric_run("s1", {"effective_rank": [3.0, 4.0, 5.0]}, epochs=(0.0, 1.0, 2.0))
    plots.rank_and_specialization([{"label": "short seed", "seed_runs": [full, short]}], tmp_path / "rank.png")
    fig = drawn["rank.png"]
    (line,) = data_lines(panel(fig, "effective rank"))
    assert list(line.get_xdata()) == [0.0, 1.0, 2.0] and list(line.get_ydata()) == [2.0, 3.0, 4.0]
    assert "effective rank of short seed (C-NTK) (1 epoch(s) not in every seed)" in note(fig)


def test_a_nan_metric_is_left_out_and_noted(tmp_path, drawn):
    """A kernel record whose metric is NaN is not a point: the note counts it."""
    run = metric_run("nan", {"effective_rank": [1.0, float("nan"), 3.0, 4.0]})
    plots.rank_and_specialization([run], tmp_path / "rank.png")
    fig = drawn["rank.png"]
    (line,) = data_lines(panel(fig, "effective rank"))
    assert list(line.get_xdata()) == [0.0, 2.0, 3.0]
    assert "(not recorded; 1 of the 4 tracked kernels)" in note(fig)


# -- which numbers, at which epochs, on which axes ---------------------------------------------


def test_metrics_are_drawn_at_their_epochs_and_the_keys_their_titles_name(tmp_path, drawn):
    """x: the records' epochs (uneven, and not their steps); y: effective rank in its panel,
    the specialization in its own, the AE-NTK's dashed from its own records, the specialization
    under the net's own labels dotted."""
    epochs = (0.0, 0.5, 2.0, 5.0)
    values = {
        "effective_rank": [5.0, 4.0, 3.5, 3.0],
        "mean_specialization": [1.0, 1.1, 1.3, 1.6],
        "adv_effective_rank": [6.0, 5.5, 5.0, 4.0],
        "adv_mean_specialization": [1.0, 1.05, 1.1, 1.2],
    }
    run = metric_run("uneven", values, epochs=epochs)
    for record, own in zip(run["kernels"], (0.9, 1.0, 1.4, 1.8), strict=True):
        record["adversarial_labels"] = {"mean_specialization": own}
    plots.rank_and_specialization([run], tmp_path / "rank.png")
    fig = drawn["rank.png"]
    rank, spec = panel(fig, "effective rank"), panel(fig, "mean kernel specialization")
    assert rank.get_yscale() == spec.get_yscale() == "linear"
    styles = {line.get_linestyle(): line for line in data_lines(rank)}
    assert set(styles) == {"-", "--"}
    for line in data_lines(rank) + data_lines(spec):
        assert list(line.get_xdata()) == list(epochs)
    assert list(styles["-"].get_ydata()) == values["effective_rank"]
    assert list(styles["--"].get_ydata()) == values["adv_effective_rank"]
    styles = {line.get_linestyle(): list(line.get_ydata()) for line in data_lines(spec)}
    assert styles == {
        "-": values["mean_specialization"],
        "--": values["adv_mean_specialization"],
        ":": [0.9, 1.0, 1.4, 1.8],
    }
    assert "AE-NTK under the net's own labels" in legend_colours(fig)


def test_velocity_is_drawn_at_its_midpoints_on_a_log_axis(tmp_path, drawn):
    """LOO fig. 1a-b: velocity at the interval midpoints, log scale; distance to the final
    kernel at the tracked epochs, linear; the AE-NTK dashed."""
    clean = {
        "epochs": [0.0, 1.0, 3.0],
        "velocity_epochs": [0.5, 2.0],
        "velocity": [0.2, 0.01],
        "distance_to_final": [0.4, 0.1, 0.0],
    }
    adversarial = {**clean, "velocity": [0.3, 0.02], "distance_to_final": [0.5, 0.2, 0.0]}
    run = {"label": "moving", "dynamics": {"clean": clean, "adversarial": adversarial}, "kernel_epochs": [0, 1, 3]}
    plots.kernel_velocity_and_distance([run], tmp_path / "velocity.png")
    fig = drawn["velocity.png"]
    velocity, distance = panel(fig, "kernel velocity"), panel(fig, "distance to the final kernel")
    assert velocity.get_yscale() == "log" and distance.get_yscale() == "linear"
    got = {line.get_linestyle(): (list(line.get_xdata()), list(line.get_ydata())) for line in data_lines(velocity)}
    assert got == {"-": ([0.5, 2.0], [0.2, 0.01]), "--": ([0.5, 2.0], [0.3, 0.02])}
    got = {line.get_linestyle(): (list(line.get_xdata()), list(line.get_ydata())) for line in data_lines(distance)}
    assert got == {"-": ([0.0, 1.0, 3.0], [0.4, 0.1, 0.0]), "--": ([0.0, 1.0, 3.0], [0.5, 0.2, 0.0])}


def test_a_concentration_of_one_up_to_rounding_is_off_the_log_axis(tmp_path, drawn):
    """1 − concentration below 1e-12 is rounding: that point is left out (a concentration of 1),
    the others are drawn as 1 − it."""
    concentration = [1.0 - 1e-3, 1.0 - 1e-14, 1.0 - 1e-6]
    run = metric_run("c", {"concentration_top10": concentration, "frobenius_norm": [1.0, 2.0, 3.0]}, epochs=(0, 1, 2))
    plots.kernel_norm_and_concentration([run], tmp_path / "norm.png")
    fig = drawn["norm.png"]
    assert panel(fig, "Frobenius norm").get_yscale() == "log"
    ax = panel(fig, "1 − concentration on the top 10")
    (line,) = data_lines(ax)
    assert list(line.get_xdata()) == [0.0, 2.0]
    np.testing.assert_allclose(line.get_ydata(), [1e-3, 1e-6], rtol=1e-6)
    assert "concentrations of 1" in note(fig)


def test_the_switch_epoch_is_marked_where_it_is(tmp_path, drawn):
    run = metric_run("switched", {"effective_rank": [1.0, 2.0, 3.0, 4.0]}, switch_epoch=2, mode="pgd")
    run["epochs"] = [{"epoch": e, "accuracy": {"running": {"test_clean": 0.2 * e}}} for e in range(4)]
    plots.rank_and_specialization([run], tmp_path / "rank.png")
    plots.accuracy_curves([run], tmp_path / "accuracy.png")
    for name in ("rank.png", "accuracy.png"):
        ax = next(ax for ax in drawn[name].axes if ax.get_title())
        marks = [line for line in ax.lines if vertical(line)]
        assert [list(line.get_xdata()) for line in marks] == [[2.0, 2.0]], name
    (mark,) = [line for line in next(ax for ax in drawn["rank.png"].axes if ax.get_title()).lines if vertical(line)]
    assert to_hex(mark.get_color()) == to_hex(BLUE)  # in the run's colour


def test_relative_magnitude_is_every_epoch_on_a_log_axis(tmp_path, drawn):
    """LOO sec. 4: the relative magnitude of every epoch record that has one, epoch 0 included,
    log scale; a run that records it has the figure whether or not it is linearized; it keeps
    its colour (and its switch mark) when a run before it has none."""
    records = [{"epoch": e, "relative_magnitude": v} for e, v in enumerate((0.5, 0.2, None, 0.05))]
    run = {"label": "rm", "epochs": records, "switch_epoch": 1}
    assert "relative_magnitude" in plots.applicable_figures([run])
    plots.relative_magnitude_curve([{"label": "none", "epochs": [{"epoch": 0}]}, run], tmp_path / "relative.png")
    fig = drawn["relative.png"]
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    (line,) = data_lines(ax)
    assert list(line.get_xdata()) == [0.0, 1.0, 3.0] and list(line.get_ydata()) == [0.5, 0.2, 0.05]
    (mark,) = [m for m in ax.lines if vertical(m)]
    assert to_hex(line.get_color()) == to_hex(mark.get_color()) == to_hex(VERMILLION) == legend_colours(fig)["rm"]


ACCURACY = {
    "running": {"test_clean": [0.1, 0.5, 0.8], "test_pgd": [0.05, 0.2, 0.3], "train_clean": [0.12, 0.6, 0.9]},
    "batch": {"test_clean": [0.11, 0.4, 0.7], "test_pgd": [0.02, 0.1, 0.15], "train_clean": [0.1, 0.55, 0.85]},
}
ACCURACY["running"]["train_pgd"] = [0.06, 0.35, 0.45]
ACCURACY["batch"]["train_pgd"] = [0.03, 0.25, 0.3]


def accuracy_run(**extra) -> dict:
    epochs = [
        {"epoch": e, "accuracy": {s: {k: v[e] for k, v in keys.items()} for s, keys in ACCURACY.items()}}
        for e in range(3)
    ]
    return {"label": "acc", "epochs": epochs, **extra}


def test_accuracy_lines_are_their_split_input_and_statistics(tmp_path, drawn):
    """TK supp. fig. 6: test in the run's colour, train lighter, clean solid, PGD dashed; the
    batch statistics' accuracies as thin lines with × markers; a run drawn per statistics
    ("statistics": "batch") draws that statistics' accuracies alone, as its main lines."""
    plots.accuracy_curves([accuracy_run()], tmp_path / "accuracy.png")
    ax = drawn["accuracy.png"].axes[0]
    blue = to_rgb(BLUE)
    for line in data_lines(ax):
        assert list(line.get_xdata()) == [0.0, 1.0, 2.0]
    lighter = _shade(BLUE, 0.5)  # train: the run's colour blended halfway to white
    for source, markers in (("running", ("o", "^")), ("batch", ("x",))):
        lines = [line for line in data_lines(ax) if line.get_marker() in markers]
        for split, colour in (("test", blue), ("train", lighter)):
            got = {line.get_linestyle(): list(line.get_ydata()) for line in lines if to_rgb(line.get_color()) == colour}
            assert got == {"-": ACCURACY[source][f"{split}_clean"], "--": ACCURACY[source][f"{split}_pgd"]}, source
    plots.accuracy_curves([accuracy_run(statistics="batch")], tmp_path / "batch.png")
    ax = drawn["batch.png"].axes[0]
    assert not [line for line in ax.lines if line.get_marker() == "x"]
    test = {line.get_linestyle(): list(line.get_ydata()) for line in data_lines(ax) if line.get_marker() == "o"}
    assert test == {"-": ACCURACY["batch"]["test_clean"], "--": ACCURACY["batch"]["test_pgd"]}


# -- pictures: distances between epochs, polar trajectories, class-sorted kernels ---------------


def test_the_distance_heatmap_is_the_matrix_on_cells_centred_on_the_epochs(tmp_path, drawn):
    """TK fig. 3 left: the mesh holds the distance matrix as it is (row s, column t), its cell
    edges halfway between tracked epochs 0, 1, 3 (−0.5, 0.5, 2, 4), on one colour scale per
    kernel row up to the largest distance of that row."""
    t = [0.0, 1.0, 3.0]
    d1 = np.array([[0.0, 0.1, 0.3], [0.1, 0.0, 0.25], [0.3, 0.25, 0.0]])
    d2 = 0.5 * d1
    runs = [
        {"label": f"run {i}", "dynamics": {"clean": {"epochs": t, "distance_matrix": d.tolist()}}}
        for i, d in enumerate((d1, d2))
    ]
    runs[1]["dynamics"]["clean"]["distance_matrix"][0][2] = 0.05  # not symmetric: a flip would show
    plots.kernel_distance_heatmaps(runs, tmp_path / "distance.png")
    axes = [ax for ax in drawn["distance.png"].axes if ax.get_title().startswith("run ")]
    assert len(axes) == 2
    for ax, run in zip(axes, runs, strict=True):
        (mesh,) = ax.collections
        matrix = np.asarray(run["dynamics"]["clean"]["distance_matrix"])
        np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(3, 3), matrix)
        corners = mesh.get_coordinates()
        np.testing.assert_allclose(corners[0, :, 0], [-0.5, 0.5, 2.0, 4.0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(corners[:, 0, 1], [-0.5, 0.5, 2.0, 4.0], rtol=0, atol=1e-12)
        assert (mesh.norm.vmin, mesh.norm.vmax) == (0.0, 0.3)
        assert ax.get_ylim() == (4.0, -0.5)  # matrix orientation: the first epoch at the top


def polar_run() -> dict:
    dyn = {
        "epochs": [0.0, 1.0, 2.0, 4.0],
        "polar_r": [0.0, 0.5, 0.8, 1.0],
        "polar_theta": np.radians([0.0, 20.0, 30.0, 40.0]).tolist(),
        "top_polar_r": [0.0, 0.3, 0.9, 1.0],
        "top_polar_theta": np.radians([0.0, 10.0, 35.0, 50.0]).tolist(),
    }
    return {"label": "polar", "kernel_epochs": [0.0, 1.0, 2.0, 4.0], "dynamics": {"clean": dyn}}


def test_polar_trajectories_draw_each_panels_own_coordinates(tmp_path, drawn):
    """TK eq. 12: the whole kernel's (r, θ) in its panel, the top-k space's in the other, the
    markers shaded by their epoch, the star at the last kernel (r = 1)."""
    run = polar_run()
    plots.polar_trajectories([run], tmp_path / "polar.png")
    whole, top = (ax for ax in drawn["polar.png"].axes if ax.name == "polar")
    dyn = run["dynamics"]["clean"]
    for ax, key in ((whole, "polar"), (top, "top_polar")):
        (line,) = ax.lines
        np.testing.assert_allclose(line.get_ydata(), dyn[f"{key}_r"], rtol=0, atol=0)
        np.testing.assert_allclose(line.get_xdata(), dyn[f"{key}_theta"], rtol=1e-12)  # 50° and 40°: not stretched
        shaded = next(c for c in ax.collections if c.get_array() is not None and len(c.get_offsets()) == 4)
        np.testing.assert_array_equal(shaded.get_array(), dyn["epochs"])
        assert (shaded.norm.vmin, shaded.norm.vmax) == (0.0, 4.0)  # shades from epoch 0 to the last
        star = next(c for c in ax.collections if len(c.get_offsets()) == 1 and c.get_offsets()[0][1] > 0)
        np.testing.assert_allclose(star.get_offsets()[0], [dyn[f"{key}_theta"][-1], 1.0], rtol=1e-12)


def sorted_by_hand(kernel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    order = [i for c in sorted(set(labels.tolist())) for i in range(labels.size) if labels[i] == c]
    return kernel[np.ix_(order, order)]


def test_kernel_pictures_are_class_sorted_first_and_last_kernels(tmp_path, drawn, rng):
    """TK fig. 6 left: the initial kernel and the final one, rows and columns sorted by class in
    their order within a class, the class names centred on their blocks; the end panel named
    with the last tracked epoch."""
    n = 40
    labels = rng.integers(0, 3, size=n)
    phi = rng.normal(size=(n, 5))
    initial, final = phi @ phi.T, (phi + rng.normal(size=phi.shape)) @ (phi + rng.normal(size=phi.shape)).T
    run = {
        "label": "pictured",
        "initial_kernel": initial,
        "final_kernel": final,
        "probe_targets": labels.tolist(),
        "class_names": ["a", "b", "c"],
        "kernel_epochs": [0.0, 2.0, 5.0],
    }
    plots.kernel_images_grid([run], tmp_path / "images.png")
    start, end = (ax for ax in drawn["images.png"].axes if ax.images)
    np.testing.assert_array_equal(start.images[0].get_array(), sorted_by_hand(initial, labels))
    np.testing.assert_array_equal(end.images[0].get_array(), sorted_by_hand(final, labels))
    assert start.get_title().startswith("initialisation\n") and end.get_title().startswith("end of pictured (epoch 5)")
    counts = np.bincount(labels, minlength=3)
    centres = np.concatenate([[0], np.cumsum(counts)])[:-1] + (counts - 1) / 2
    np.testing.assert_allclose(end.get_xticks(), centres, rtol=0, atol=1e-12)
    assert [t.get_text() for t in end.get_yticklabels()] == ["a", "b", "c"]


def test_runs_from_different_first_kernels_each_show_theirs(tmp_path, drawn, rng):
    """One start panel per distinct first kernel, in its run's order: "initialisation of" a
    trained run, "start of" a linearized one (its parent's kernel at t')."""
    phi = rng.normal(size=(6, 3))
    labels = [0, 1, 0, 1, 0, 1]
    firsts = (phi @ phi.T, phi @ phi.T + np.eye(6), phi @ phi.T)
    runs = [
        {"label": f"run {i}", "initial_kernel": k, "final_kernel": 2 * k, "probe_targets": labels}
        for i, k in enumerate(firsts)
    ]
    runs[1]["linearized"] = True
    plots.kernel_images_grid(runs, tmp_path / "images.png")
    pictures = [ax for ax in drawn["images.png"].axes if ax.images]
    titles = [ax.get_title().split("\n")[0] for ax in pictures]
    assert titles == ["initialisation of run 0", "start of run 1", "end of run 0", "end of run 1", "end of run 2"]
    np.testing.assert_array_equal(pictures[1].images[0].get_array(), sorted_by_hand(firsts[1], np.array(labels)))


def test_eigenvector_pictures_put_maximising_inputs_above_minimising_ones(tmp_path, drawn, rng):
    """LOO fig. 4: the upper row the maximising inputs with their cosines, the lower the
    minimising ones with theirs."""
    high, low = rng.uniform(0, 1, (2, 1, 4, 4)), rng.uniform(0, 1, (2, 1, 4, 4))
    cosines = [(np.array([0.91, 0.82]), np.array([-0.73, -0.64]))]
    plots.eigenvector_pictures([("net", high, low)], tmp_path / "eigen.png", cosines=cosines)
    axes = [ax for ax in drawn["eigen.png"].axes if ax.images]
    assert len(axes) == 4
    for ax, image in zip(axes, [*high, *low], strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), image[0])
    assert [ax.get_title() for ax in axes] == ["v1\ncos +0.91", "v2\ncos +0.82", "cos -0.73", "cos -0.64"]


# -- comparisons: the distance to a baseline, the specialization matrices ----------------------


def test_the_baseline_distance_panels_show_their_own_kernel(tmp_path, drawn):
    distance = {"epochs": [0.0, 1.0, 2.0], "clean": [0.0, 0.1, 0.2], "adversarial": [0.0, 0.3, 0.5]}
    run = {"label": "compared", "baseline_distance": {**distance, "baseline_label": "base"}}
    plots.baseline_distance_curves([run], tmp_path / "baseline.png")
    fig = drawn["baseline.png"]
    for title, kind, style in (("C-NTK (clean probe)", "clean", "-"), ("AE-NTK (PGD probe)", "adversarial", "--")):
        (line,) = data_lines(panel(fig, title))
        assert line.get_linestyle() == style
        assert list(line.get_xdata()) == distance["epochs"] and list(line.get_ydata()) == distance[kind]


def test_specialization_figures_show_their_kernels_matrix_and_its_trace(tmp_path, drawn):
    """RAT figs. 3-4: each figure its own kernel's KSM (C-NTK, AE-NTK, AE-NTK under the net's own
    labels), titled with tr(KSM)/C, on one diverging scale from the lowest to the highest entry
    of all three figures."""
    matrices = {
        kind: np.array([[1.5, 0.9], [0.7, 1.2]]) + shift
        for kind, shift in (("clean", 0.0), ("adversarial", 0.2), ("adversarial_labels", -0.4))
    }
    kernels = [{"epoch": 0.0, **{k: {"specialization_matrix": m.tolist()} for k, m in matrices.items()}}]
    run = {"label": "ksm", "kernels": kernels, "class_names": ["x", "y"]}
    figures = plots.dynamics_comparison.SPECIALIZATION_KINDS
    for name in figures:
        plots.specialization_heatmaps([run], tmp_path / f"{name}.png", figure=name)
    low = min(float(m.min()) for m in matrices.values())
    high = max(float(m.max()) for m in matrices.values())
    for name, (kind, _) in figures.items():
        (ax,) = [ax for ax in drawn[f"{name}.png"].axes if ax.images]
        image = ax.images[0]
        np.testing.assert_array_equal(image.get_array(), matrices[kind])
        assert ax.get_title() == f"epoch 0 · tr(KSM)/C = {np.trace(matrices[kind]) / 2:.3f}"
        assert (image.norm.vmin, image.norm.vcenter, image.norm.vmax) == pytest.approx((low, 1.0, high))


# -- two-stage figures ----------------------------------------------------------------------------


def test_spawn_accuracy_error_bars_and_parent_lines(tmp_path, drawn):
    """LOO fig. 2: the parent's clean accuracy solid and its PGD accuracy dashed in grey; a point
    of seeds with an error bar of ± one std."""
    points = [
        {"spawn_epoch": 1, "test_clean": 0.6, "test_pgd": 0.2, "test_clean_std": 0.05, "test_pgd_std": 0.01},
        {"spawn_epoch": 3, "test_clean": 0.7, "test_pgd": 0.3, "test_clean_std": 0.02, "test_pgd_std": 0.04},
    ]
    parent = {
        "path": "p",
        "epochs": [0, 1, 2, 3],
        "test_clean": [0.1, 0.5, 0.6, 0.7],
        "test_pgd": [0.0, 0.1, 0.15, 0.2],
    }
    record = {"lines": [{"parent": "p", "kind": "linearized", "points": points}], "parents": [parent]}
    plots.spawn_accuracy_curves(record, tmp_path / "spawn.png")
    (ax,) = drawn["spawn.png"].axes
    grey = {line.get_linestyle(): list(line.get_ydata()) for line in ax.lines if line.get_color() == "0.55"}
    assert grey == {"-": parent["test_clean"], "--": parent["test_pgd"]}
    bars = [c for c in ax.collections if c.get_segments()]
    assert len(bars) == 2
    for bars_of, key in zip(bars, ("test_clean", "test_pgd"), strict=True):
        spans = sorted((float(s[0][1]), float(s[1][1])) for s in bars_of.get_segments())
        expected = sorted((p[key] - p[f"{key}_std"], p[key] + p[f"{key}_std"]) for p in points)
        np.testing.assert_allclose(spans, expected, rtol=1e-12)


def test_switch_cost_accuracy_bars_clean_above_pgd(tmp_path, drawn):
    runs = [{"label": "r", "mode": "pgd", "seconds_clean": 1.0, "seconds_adversarial": 2.0}]
    runs[0] |= {"test_clean": 0.8, "test_pgd": 0.3}
    plots.switch_cost_bars({"runs": runs}, tmp_path / "cost.png")
    _, accuracy = drawn["cost.png"].axes
    clean, pgd = accuracy.patches
    assert clean.get_width() == 0.8 and pgd.get_width() == 0.3
    assert clean.get_y() + clean.get_height() / 2 == pytest.approx(-0.2)  # the clean bar above, y grows down
    assert pgd.get_y() + pgd.get_height() / 2 == pytest.approx(0.2)


def test_a_single_tracked_kernel_has_its_distance_and_says_why_no_velocity(tmp_path, drawn):
    """One tracked kernel: no velocity (it needs two), but a distance to the final kernel (0):
    the figure applies, draws the distance and names the reason for the velocity."""
    why = "kernel velocity needs at least two tracked kernels"
    dyn = {"epochs": [2.0], "distance_matrix": [[0.0]], "distance_to_final": [0.0], "undefined": {"velocity": why}}
    run = {"label": "single", "dynamics": {"clean": dyn}, "kernel_epochs": [2.0]}
    assert plots.applicable_figures([run]) == ["kernel_distance", "velocity_distance"]
    plots.kernel_velocity_and_distance([run], tmp_path / "velocity.png")
    fig = drawn["velocity.png"]
    (line,) = data_lines(panel(fig, "distance to the final kernel"))
    assert list(line.get_xdata()) == [2.0] and list(line.get_ydata()) == [0.0]
    assert not data_lines(panel(fig, "kernel velocity"))
    assert f"kernel velocity of single (C-NTK) ({why})" in note(fig)
