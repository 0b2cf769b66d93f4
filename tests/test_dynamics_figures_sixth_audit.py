"""What the training-dynamics figures draw where several runs, kernels or panels meet (a sixth
mutation audit of ``plots.dynamics*`` and ``plots._runs``).

The earlier audits read one run's numbers back; these read which run, which kernel and which
panel each number, mark, colour, colour limit and label belongs to when there are several. The
independent route: every run summary is a plain dict (the format of
``bridge.runs.dynamics_summary``) whose numbers differ between runs, kernels and epochs, written
by the test; the expected artists are those numbers, or numpy's sort / min / max / norm of them,
compared with the artists caught as the figure is saved (the ``drawn`` fixture): Line2D data,
colours and styles, axvline marks, QuadMesh and AxesImage arrays and colour limits, titles,
axis labels, the legend's texts and the notes and subtitle under and over the panels.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex
from test_dynamics_plots_audit import data_lines, panel, vertical

from ntkrobust import plots
from ntkrobust.plots._style import _RUN_COLOURS

BLUE, VERMILLION, GREEN = (to_hex(c) for c in _RUN_COLOURS[:3])


def marks(ax) -> list[tuple[float, str, object]]:
    """(epoch, colour, style) of each vertical mark, sorted by epoch."""
    found = [(float(line.get_xdata()[0]), to_hex(line.get_color()), line.get_linestyle()) for line in ax.lines]
    return sorted(m for m, line in zip(found, ax.lines, strict=True) if vertical(line))


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def legend_colours(fig) -> dict[str, str]:
    legend = fig.legends[0]
    colours = [h.get_color() if hasattr(h, "get_color") else h.get_facecolor() for h in legend.legend_handles]
    return {t.get_text(): to_hex(c) for t, c in zip(legend.get_texts(), colours, strict=True)}


def note(fig) -> str:
    return " ".join(fig._supxlabel.get_text().split()) if fig._supxlabel is not None else ""


def subtitle(fig) -> str:
    (annotation,) = [a for a in fig.artists if a.get_gid() == "subtitle"]
    return " ".join(annotation.get_text().split())


def band_edges(collection, x: float) -> tuple[float, float]:
    """(low, high) of a fill_between band at ``x``."""
    vertices = collection.get_paths()[0].vertices
    at = vertices[np.isclose(vertices[:, 0], x), 1]
    return float(at.min()), float(at.max())


def heading(fig) -> str:
    return fig.get_suptitle().strip()


def metric_run(label: str | None, values: dict[str, list[float]], epochs=(0.0, 1.0, 2.0, 3.0), **extra) -> dict:
    """A run whose kernel records hold ``values[key]`` of the C-NTK at ``epochs``."""
    records = [{"epoch": float(e), "clean": {k: v[i] for k, v in values.items()}} for i, e in enumerate(epochs)]
    run = {"kernels": records, "kernel_epochs": list(epochs), **extra}
    return run if label is None else {"label": label, **run}


# -- curves: which run, which kernel, which panel -----------------------------------------------


def test_each_switch_is_marked_in_its_runs_colour_and_none_at_epoch_0(tmp_path, drawn):
    """A switch at epoch 0 trained no clean epoch: no mark, in the curves or the accuracies (whose
    panel title says no "after epoch 0"); the other runs' switches in their own colours, at their
    own epochs, the legend naming the mark."""
    runs = [
        metric_run("none", {"effective_rank": [1.0, 2.0, 3.0, 4.0]}, switch_epoch=0, mode="pgd"),
        metric_run("two", {"effective_rank": [2.0, 3.0, 4.0, 5.0]}, switch_epoch=2, mode="pgd"),
        metric_run("three", {"effective_rank": [3.0, 4.0, 5.0, 6.0]}, switch_epoch=3, mode="pgd"),
    ]
    plots.rank_and_specialization(runs, tmp_path / "rank.png")
    fig = drawn["rank.png"]
    got = [(epoch, colour) for epoch, colour, _ in marks(panel(fig, "effective rank"))]
    assert got == [(2.0, VERMILLION), (3.0, GREEN)]
    assert "switch epoch\n(standard → adversarial)" in legend_texts(fig)

    for run, offset in zip(runs, (0.0, 0.1, 0.2), strict=True):
        run["epochs"] = [{"epoch": e, "accuracy": {"running": {"test_clean": offset + 0.2 * e}}} for e in range(4)]
    plots.accuracy_curves(runs, tmp_path / "accuracy.png")
    axes = [ax for ax in drawn["accuracy.png"].axes if ax.get_visible()]
    titles = ["none", "two\nstandard → pgd after epoch 2", "three\nstandard → pgd after epoch 3"]
    assert [ax.get_title() for ax in axes] == titles
    assert [[epoch for epoch, *_ in marks(ax)] for ax in axes] == [[], [2.0], [3.0]]


def test_runs_without_a_label_are_numbered_from_one(tmp_path, drawn):
    """``_label``: a run without a label is "run i+1" in the legend, in its colour."""
    runs = [
        metric_run(None, {"effective_rank": [1.0, 2.0, 3.0, 4.0]}),
        metric_run(None, {"effective_rank": [8.0, 7.0, 6.0, 5.0]}),
    ]
    plots.rank_and_specialization(runs, tmp_path / "rank.png")
    fig = drawn["rank.png"]
    colours = legend_colours(fig)
    assert colours["run 1"] == BLUE and colours["run 2"] == VERMILLION and "run 0" not in colours
    by_colour = {to_hex(line.get_color()): list(line.get_ydata()) for line in data_lines(panel(fig, "effective rank"))}
    assert by_colour == {BLUE: [1.0, 2.0, 3.0, 4.0], VERMILLION: [8.0, 7.0, 6.0, 5.0]}


def test_a_panel_with_nothing_on_its_log_axis_says_so_and_a_partial_one_leaves_out_only_its_zeros(tmp_path, drawn):
    """Frobenius norms of 0 cannot sit on the log axis: all of them, an empty panel that says so
    and a note counting the points; one of them, the others drawn (epochs 1-3) and one counted."""
    plots.kernel_norm_and_concentration([metric_run("flat", {"frobenius_norm": [0.0] * 4})], tmp_path / "flat.png")
    fig = drawn["flat.png"]
    ax = panel(fig, "Frobenius norm")
    assert not data_lines(ax)
    empty = "Frobenius norm: nothing to draw (see the note below)"
    assert [" ".join(t.get_text().split()) for t in ax.texts] == [empty]
    assert "Frobenius norm of flat (4 point(s) of C-NTK) (values ≤ 0, off the log axis)" in note(fig)

    run = metric_run("partial", {"frobenius_norm": [0.0, 1.0, 2.0, 4.0]})
    plots.kernel_norm_and_concentration([run], tmp_path / "partial.png")
    fig = drawn["partial.png"]
    ax = panel(fig, "Frobenius norm")
    (line,) = data_lines(ax)
    assert list(line.get_xdata()) == [1.0, 2.0, 3.0] and list(line.get_ydata()) == [1.0, 2.0, 4.0]
    assert ax.get_yscale() == "log"
    assert "Frobenius norm of partial (1 point(s) of C-NTK) (values ≤ 0, off the log axis)" in note(fig)


def test_concentration_panels_go_by_the_cutoff_as_a_number_each_its_own_key(tmp_path, drawn):
    """Cut-offs 5 and 20: left to right by p as a number (not "20" before "5"), each panel
    1 − its own key's concentration, on a log axis."""
    values = {"frobenius_norm": [1.0, 2.0], "concentration_top20": [0.9, 0.99], "concentration_top5": [0.5, 0.6]}
    plots.kernel_norm_and_concentration([metric_run("c", values, epochs=(0.0, 1.0))], tmp_path / "norm.png")
    fig = drawn["norm.png"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["Frobenius norm", "1 − concentration on the top 5", "1 − concentration on the top 20"]
    for p, expected in ((5, [0.5, 0.4]), (20, [0.1, 0.01])):
        ax = panel(fig, f"1 − concentration on the top {p}")
        (line,) = data_lines(ax)
        assert ax.get_yscale() == "log"
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-9)


def test_notes_and_legend_name_only_what_each_panel_was_meant_to_draw(tmp_path, drawn):
    """The net's own labels have a specialization and no effective rank: no note that the rank
    panel lacks it. A metric the second run lacks at one kernel is noted as the second run's. A
    run that tracked only the C-NTK: no AE-NTK in the legend."""
    first = metric_run("first", {"effective_rank": [5.0, 4.0, 3.0, 2.0], "mean_specialization": [1.0, 1.1, 1.2, 1.3]})
    second = metric_run(
        "second", {"effective_rank": [6.0, float("nan"), 4.0, 3.0], "mean_specialization": [1.0, 1.2, 1.4, 1.6]}
    )
    for record, own in zip(first["kernels"], (0.9, 1.0, 1.4, 1.8), strict=True):
        record["adversarial_labels"] = {"mean_specialization": own}
    plots.rank_and_specialization([first, second], tmp_path / "rank.png")
    fig = drawn["rank.png"]
    assert note(fig) == "not shown: effective rank of second (C-NTK) (not recorded; 1 of the 4 tracked kernels)"
    texts = legend_texts(fig)
    assert "C-NTK (clean probe)" in texts and "AE-NTK under the net's own labels" in texts
    assert "AE-NTK (PGD probe)" not in texts
    by_colour = {to_hex(line.get_color()): list(line.get_xdata()) for line in data_lines(panel(fig, "effective rank"))}
    assert by_colour == {BLUE: [0.0, 1.0, 2.0, 3.0], VERMILLION: [0.0, 2.0, 3.0]}


def test_each_accuracy_panel_is_its_runs_in_its_colour_with_its_own_decays(tmp_path, drawn):
    """One panel per run (four runs: two rows of three, the two spare panels hidden), titled with
    the run's label in its colour, its lines in that colour, and only its own learning-rate
    decays marked."""
    runs = []
    for i, (label, milestones) in enumerate((("first", [1]), ("second", []), ("third", [2]), ("fourth", []))):
        epochs = [{"epoch": e, "accuracy": {"running": {"test_clean": 0.1 * i + 0.2 * e}}} for e in range(3)]
        runs.append({"label": label, "epochs": epochs, "milestones": milestones})
    plots.accuracy_curves(runs, tmp_path / "accuracy.png")
    fig = drawn["accuracy.png"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 6 and len(axes) == 4
    for i, (ax, run) in enumerate(zip(axes, runs, strict=True)):
        colour = to_hex(_RUN_COLOURS[i])
        assert ax.get_title() == run["label"] and to_hex(ax.title.get_color()) == colour
        (line,) = data_lines(ax)
        assert to_hex(line.get_color()) == colour
        np.testing.assert_allclose(line.get_ydata(), [0.1 * i, 0.1 * i + 0.2, 0.1 * i + 0.4], rtol=1e-12)
        assert [epoch for epoch, _, style in marks(ax) if style == "-."] == [float(m) for m in run["milestones"]]


def test_relative_magnitude_counts_only_its_nonpositive_values_as_off_the_axis(tmp_path, drawn):
    """0.5, 0, not recorded, 0.05 at epochs 0-3: the 0 cannot sit on the log axis (noted, one
    point); the epoch without a record is not a point at all (not counted)."""
    records = [{"epoch": e, "relative_magnitude": v} for e, v in enumerate((0.5, 0.0, None, 0.05))]
    plots.relative_magnitude_curve([{"label": "rm", "epochs": records}], tmp_path / "relative.png")
    fig = drawn["relative.png"]
    (line,) = data_lines(fig.axes[0])
    assert list(line.get_xdata()) == [0.0, 3.0] and list(line.get_ydata()) == [0.5, 0.05]
    assert fig.axes[0].get_yscale() == "log"
    assert note(fig) == "not shown: 1 point(s) of rm (values ≤ 0, off the log axis)"


# -- pictures: the distance matrices, polar trajectories and kernel images of several runs ------

CLEAN_D = [np.array([[0.0, 0.1, 0.3], [0.1, 0.0, 0.2], [0.3, 0.2, 0.0]]), np.array([[0.0, 0.05], [0.05, 0.0]])]
ADV_D = [np.array([[0.0, 0.4, 0.9], [0.4, 0.0, 0.7], [0.9, 0.7, 0.0]]), np.array([[0.0, 0.6], [0.6, 0.0]])]


def test_each_distance_panel_is_its_kernels_matrix_on_its_kernels_scale(tmp_path, drawn):
    """A row per kernel: the AE-NTK row its own matrices up to its own largest distance (0.9),
    the C-NTK row up to 0.3; every panel titled in its run's colour; a decay (after epoch 0.5)
    before the first tracked epoch parts no block."""
    runs = []
    for i, epochs in enumerate(([1.0, 2.0, 3.0], [1.0, 3.0])):
        dynamics = {
            kind: {"epochs": epochs, "distance_matrix": matrices[i].tolist()}
            for kind, matrices in (("clean", CLEAN_D), ("adversarial", ADV_D))
        }
        runs.append({"label": f"r{i}", "dynamics": dynamics, "milestones": [0.5]})
    plots.kernel_distance_heatmaps(runs, tmp_path / "distance.png")
    fig = drawn["distance.png"]
    for kind, name, matrices, vmax in (
        ("clean", "C-NTK (clean probe)", CLEAN_D, 0.3),
        ("adversarial", "AE-NTK (PGD probe)", ADV_D, 0.9),
    ):
        for i in range(2):
            ax = panel(fig, f"r{i}\n{name}")
            (mesh,) = ax.collections
            n = matrices[i].shape[0]
            np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(n, n), matrices[i])
            assert (mesh.norm.vmin, mesh.norm.vmax) == (0.0, vmax), (kind, i)
            assert to_hex(ax.title.get_color()) == to_hex(_RUN_COLOURS[i])
            assert not [line for line in ax.lines if line.get_linestyle() == "-."]
    assert "dash-dot" not in subtitle(fig)


def test_polar_trajectories_of_two_kernels_and_runs_each_draw_their_own(tmp_path, drawn):
    """The AE-NTK's (r, θ) dashed, the C-NTK's solid, each from its own series, the second run's
    in its colour; the marker shades run from epoch 0 to the last epoch of any run (6)."""
    theta = np.radians

    def dynamics(r, deg, top_r, top_deg, epochs):
        return {
            "epochs": epochs,
            "polar_r": r,
            "polar_theta": theta(deg).tolist(),
            "top_polar_r": top_r,
            "top_polar_theta": theta(top_deg).tolist(),
        }

    first = {
        "label": "first",
        "kernel_epochs": [0.0, 1.0, 4.0],
        "dynamics": {
            "clean": dynamics([0.0, 0.5, 1.0], [0.0, 20.0, 50.0], [0.0, 0.3, 1.0], [0.0, 10.0, 60.0], [0.0, 1.0, 4.0]),
            "adversarial": dynamics(
                [0.0, 0.7, 1.0], [0.0, 30.0, 55.0], [0.0, 0.6, 1.0], [0.0, 25.0, 70.0], [0.0, 1.0, 4.0]
            ),
        },
    }
    second = {
        "label": "second",
        "kernel_epochs": [0.0, 3.0, 6.0],
        "dynamics": {
            "clean": dynamics([0.0, 0.2, 1.0], [0.0, 5.0, 45.0], [0.0, 0.4, 1.0], [0.0, 15.0, 48.0], [0.0, 3.0, 6.0])
        },
    }
    plots.polar_trajectories([first, second], tmp_path / "polar.png")
    whole, top = (ax for ax in drawn["polar.png"].axes if ax.name == "polar")
    for ax, key in ((whole, "polar"), (top, "top_polar")):
        got = {(to_hex(line.get_color()), line.get_linestyle()): line for line in ax.lines}
        expected = {
            (BLUE, "-"): first["dynamics"]["clean"],
            (BLUE, "--"): first["dynamics"]["adversarial"],
            (VERMILLION, "-"): second["dynamics"]["clean"],
        }
        assert set(got) == set(expected)
        for which, series in expected.items():
            np.testing.assert_allclose(got[which].get_ydata(), series[f"{key}_r"], rtol=0, atol=0)
            np.testing.assert_allclose(got[which].get_xdata(), series[f"{key}_theta"], rtol=1e-12)
        shaded = [c for c in ax.collections if c.get_array() is not None and len(c.get_offsets()) == 3]
        assert len(shaded) == 3
        assert {(c.norm.vmin, c.norm.vmax) for c in shaded} == {(0.0, 6.0)}


def sorted_by_hand(kernel: np.ndarray, labels: list[int]) -> np.ndarray:
    order = [i for c in sorted(set(labels)) for i in range(len(labels)) if labels[i] == c]
    return kernel[np.ix_(order, order)]


def test_each_kernel_image_has_its_own_order_colour_limits_norm_and_maximum(tmp_path, drawn, rng):
    """Two runs on different probe labels, kernels 10 times apart: each panel its own kernel
    sorted by its own run's labels, colour limits its own min and max, its title its own norm and
    its colour bar its own maximum; a linearized run alone starts at its parent's kernel ("start
    of"), not at an initialisation."""
    phi = rng.normal(size=(6, 3))
    base = phi @ phi.T
    labels = [[0, 1, 0, 1, 0, 1], [1, 1, 0, 0, 1, 0]]
    kernels = {
        "initialisation of r0": (base, labels[0]),
        "start of r1": (10.0 * base + np.eye(6), labels[1]),
        "end of r0": (3.0 * base, labels[0]),
        "end of r1": (30.0 * base + 2.0 * np.eye(6), labels[1]),
    }
    runs = [
        {"label": f"r{i}", "initial_kernel": kernels[start][0], "final_kernel": kernels[f"end of r{i}"][0]}
        for i, start in enumerate(("initialisation of r0", "start of r1"))
    ]
    for run, targets in zip(runs, labels, strict=True):
        run["probe_targets"] = targets
    runs[1]["linearized"] = True
    plots.kernel_images_grid(runs, tmp_path / "images.png")
    pictures = [ax for ax in drawn["images.png"].axes if ax.images]
    assert [ax.get_title().split("\n")[0] for ax in pictures] == list(kernels)
    for ax, (kernel, targets) in zip(pictures, kernels.values(), strict=True):
        image = ax.images[0]
        np.testing.assert_array_equal(image.get_array(), sorted_by_hand(kernel, targets))
        np.testing.assert_allclose(image.get_clim(), (kernel.min(), kernel.max()), rtol=1e-12)
        assert ax.get_title().split("\n")[1].endswith(f"= {np.linalg.norm(kernel):.3g}")
        assert f"(max {kernel.max():.3g})" in image.colorbar.ax.get_xlabel()

    alone = {**runs[1], "label": "lin"}
    plots.kernel_images_grid([alone], tmp_path / "alone.png")
    titles = [ax.get_title().split("\n")[0] for ax in drawn["alone.png"].axes if ax.images]
    assert titles == ["start of lin", "end of lin"]


# -- comparisons: the baseline, the specialization matrices --------------------------------------


def test_the_baseline_named_over_the_distances_is_the_baseline_not_the_run(tmp_path, drawn):
    distance = {"epochs": [0.0, 1.0], "clean": [0.0, 0.2], "baseline_label": "the baseline"}
    plots.baseline_distance_curves([{"label": "compared", "baseline_distance": distance}], tmp_path / "base.png")
    text = subtitle(drawn["base.png"])
    assert "baseline: the baseline" in text and "baseline: compared" not in text


def ksm_run(label: str, shift: float) -> dict:
    kernels = []
    for e in (0.0, 1.0, 2.0):
        matrix = np.array([[1.5, 0.9], [0.7, 1.2]]) + shift + 0.1 * e
        kernels.append({"epoch": e, **{k: {"specialization_matrix": matrix.tolist()} for k in ("clean",)}})
    return {"label": label, "kernels": kernels, "class_names": ["x", "y"]}


def test_specialization_rows_are_named_and_framed_in_their_runs_colour(tmp_path, drawn):
    """Rows = runs: each row's label names its run in its colour and every panel of the row is
    framed in it; an epoch 1.5 that no run tracked is an empty panel (not the nearest epoch);
    the heading says which labels the classes j are."""
    runs = [ksm_run("first", 0.0), ksm_run("second", 0.3)]
    plots.specialization_heatmaps(runs, tmp_path / "clean.png", figure="specialization_clean", epochs=(0.0, 1.5, 2.0))
    fig = drawn["clean.png"]
    grid = np.asarray(fig.axes[:6]).reshape(2, 3)
    for row, (run, colour) in enumerate(zip(runs, (BLUE, VERMILLION), strict=True)):
        assert grid[row, 0].get_ylabel() == f"{run['label']}\nclass kernel i"
        assert to_hex(grid[row, 0].yaxis.label.get_color()) == colour
        for ax in grid[row]:
            assert {to_hex(spine.get_edgecolor()) for spine in ax.spines.values()} == {colour}
        assert not grid[row, 1].images
        assert "no kernel tracked at this epoch" in " ".join(grid[row, 1].texts[0].get_text().split())
        last = run["kernels"][2]["clean"]["specialization_matrix"]
        np.testing.assert_allclose(grid[row, 2].images[0].get_array(), last, rtol=0, atol=0)
        # the diverging map is centred at 1 (a class kernel aligned as much as the mean one), not
        # at the middle of the shared scale 0.7 (first run, epoch 0) to 2.0 (second run, epoch 2)
        norm = grid[row, 2].images[0].norm
        assert (norm.vmin, norm.vcenter, norm.vmax) == pytest.approx((0.7, 1.0, 2.0), rel=1e-12)
    assert plots.dynamics_comparison.ksm_columns(runs, (1.5, 2.0)) == [[None, 2.0], [None, 2.0]]
    assert "classes j: the true labels" in subtitle(fig)
    for record in runs[0]["kernels"]:
        record["adversarial_labels"] = record["clean"]
    plots.specialization_heatmaps(runs[:1], tmp_path / "own.png", figure="specialization_adversarial_labels")
    assert "classes j: the net's own labels on its PGD examples (RAT's AL)" in subtitle(drawn["own.png"])


# -- two-stage figures ---------------------------------------------------------------------------


def test_spawned_kinds_keep_their_legend_colour_and_parents_their_own_reference(tmp_path, drawn):
    """A panel without the first kind still draws "centered" in the legend's colour for it; each
    parent's panel its own grey reference; the sideways step is a share of the span of every
    kind's spawn epochs (epochs 1-9 in the third panel: ± 0.035 × 8 / 2)."""

    def line(parent: str, kind: str, epochs, clean) -> dict:
        points = [{"spawn_epoch": e, "test_clean": c, "test_pgd": c / 4} for e, c in zip(epochs, clean, strict=True)]
        return {"parent": parent, "parent_label": parent, "kind": kind, "points": points}

    record = {
        "lines": [
            line("p1", "linearized", (1, 2, 4), (0.6, 0.65, 0.7)),
            line("p1", "centered", (1, 2, 4), (0.5, 0.55, 0.6)),
            line("p2", "centered", (1, 2, 4), (0.4, 0.45, 0.5)),
            line("p3", "linearized", (1, 2), (0.3, 0.35)),
            line("p3", "centered", (1, 9), (0.2, 0.25)),
        ],
        "parents": [
            {"path": "p1", "epochs": [0, 2, 4], "test_clean": [0.1, 0.5, 0.8], "test_pgd": [0.0, 0.1, 0.2]},
            {"path": "p2", "epochs": [0, 2, 4], "test_clean": [0.2, 0.3, 0.4], "test_pgd": [0.05, 0.06, 0.07]},
        ],
    }
    plots.spawn_accuracy_curves(record, tmp_path / "spawn.png")
    fig = drawn["spawn.png"]
    colours = legend_colours(fig)
    assert (colours["linearized"], colours["centered"]) == (BLUE, VERMILLION)
    p1, p2, p3 = fig.axes
    for ax, parent in ((p1, record["parents"][0]), (p2, record["parents"][1])):
        grey = {line.get_linestyle(): list(line.get_ydata()) for line in ax.lines if line.get_color() == "0.55"}
        assert grey == {"-": parent["test_clean"], "--": parent["test_pgd"]}
    solid = {to_hex(ln.get_color()): ln for ln in p2.lines if ln.get_linestyle() == "-" and ln.get_color() != "0.55"}
    assert list(solid) == [VERMILLION] and list(solid[VERMILLION].get_ydata()) == [0.4, 0.45, 0.5]
    np.testing.assert_allclose(solid[VERMILLION].get_xdata(), [1.0, 2.0, 4.0], rtol=0, atol=1e-12)
    solid = {to_hex(ln.get_color()): ln for ln in p3.lines if ln.get_linestyle() == "-"}
    np.testing.assert_allclose(solid[BLUE].get_xdata(), [0.86, 1.86], rtol=0, atol=1e-12)
    np.testing.assert_allclose(solid[VERMILLION].get_xdata(), [1.14, 9.14], rtol=0, atol=1e-12)


def test_switch_cost_error_bars_lie_along_each_accuracy_bar(tmp_path, drawn):
    """± std of the final accuracies as horizontal error bars at the bar's height: clean 0.8 ±
    0.05 at y = −0.2, PGD 0.3 ± 0.02 at y = +0.2."""
    run = {"label": "r", "mode": "pgd", "seconds_clean": 1.0, "seconds_adversarial": 2.0}
    run |= {"test_clean": 0.8, "test_clean_std": 0.05, "test_pgd": 0.3, "test_pgd_std": 0.02}
    plots.switch_cost_bars({"runs": [run]}, tmp_path / "cost.png")
    _, accuracy = drawn["cost.png"].axes
    segments = [np.asarray(c.get_segments()[0]) for c in accuracy.collections if c.get_segments()]
    assert len(segments) == 2
    np.testing.assert_allclose(segments[0], [[0.75, -0.2], [0.85, -0.2]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(segments[1], [[0.28, 0.2], [0.32, 0.2]], rtol=0, atol=1e-12)


# -- dynamics_figures: which figure under which file, and what the subtitles say -----------------

HEADINGS = {
    "kernel_distance.png": "Kernel distance between tracked epochs",
    "polar.png": "Kernel trajectories in polar space",
    "norm_concentration.png": "Kernel norm and spectral concentration",
    "rank_specialization.png": "Effective rank and kernel specialization",
    "kernel_images.png": "Class-sorted trace C-NTK on the probe",
    "accuracy.png": "Accuracy during training",
}


def test_each_file_holds_its_figure_and_seeds_are_named_as_drawn(tmp_path, drawn):
    """A run of seeds 7 and 9: every file its own figure (by its heading); the curves say they
    draw the mean ± std over 2 seeds, the pictures that they show the first seed, 7."""
    ksm = [[1.2, 0.8], [0.8, 1.2]]  # a defined matrix: a figure of undefined panels alone is not drawn
    seeds = [
        metric_run(
            f"s{s}",
            {
                "frobenius_norm": [1.0 + s, 2.0 + s],
                "effective_rank": [3.0 + s, 2.0],
                "specialization_matrix": [ksm] * 2,
            },
            epochs=(0, 1),
        )
        for s in (0, 1)
    ]
    for seed, accuracy in zip(seeds, (0.3, 0.5), strict=True):
        seed["epochs"] = [{"epoch": e, "accuracy": {"running": {"test_clean": accuracy + 0.1 * e}}} for e in (0, 1)]
    dynamics = {"epochs": [0, 1], "distance_matrix": [[0.0, 0.2], [0.2, 0.0]], "polar_r": [0.0, 1.0]}
    dynamics["polar_theta"] = [0.0, 0.5]
    kernel = np.diag([1.0, 2.0, 3.0, 4.0])
    run = {**seeds[0], "label": "seeds", "seeds": [7, 9], "seed_runs": seeds, "dynamics": {"clean": dynamics}}
    run |= {"initial_kernel": kernel, "final_kernel": 2 * kernel, "probe_targets": [0, 1, 0, 1]}
    written = plots.dynamics_figures([run], tmp_path, subtitle="synthetic")
    assert set(HEADINGS) <= set(written.values())
    for name, title in HEADINGS.items():
        assert heading(drawn[name]) == title, name
    pictured = "synthetic; runs of several seeds pictured by their first seed (seed 7)"
    banded = "synthetic; runs of several seeds: mean ± sample std over 2 seeds (band)"
    for name in ("kernel_distance.png", "polar.png", "kernel_images.png", "specialization_clean.png"):
        assert subtitle(drawn[name]).endswith(pictured), name
    for name in ("norm_concentration.png", "rank_specialization.png", "accuracy.png"):
        assert subtitle(drawn[name]).endswith(banded), name


def test_the_two_stage_subtitles_describe_only_the_runs_they_draw(tmp_path, drawn):
    """The switch-cost figure draws run "a" (an MNIST run): its subtitle names MNIST, not the
    CIFAR-10 run that is not drawn. A fact that differs: the probe sizes in legend order."""
    runs = [{"label": "a", "path": "a", "dataset": "mnist"}, {"label": "b", "path": "b", "dataset": "cifar10"}]
    cost = {"runs": [{"label": "a", "path": "a", "mode": "pgd", "seconds_adversarial": 3.0, "test_clean": 0.9}]}
    assert plots.dynamics_figures(runs, tmp_path, switch_cost=cost) == {"switch_cost": "switch_cost.png"}
    text = subtitle(drawn["switch_cost.png"])
    assert text.endswith("· mnist") and "cifar10" not in text
    sizes = [{"label": "a", "probe_size": 30}, {"label": "b", "probe_size": 20}]
    assert plots.dynamics_subtitle(sizes) == "trace eNTK on a probe of 30 / 20 points"
    sizes.insert(1, {"label": "c"})  # a run without kernels keeps its place in the legend's order
    assert plots.dynamics_subtitle(sizes) == "trace eNTK on a probe of 30 / – / 20 points"


@pytest.mark.parametrize("switch", [None, 0])
def test_a_run_that_never_trained_clean_has_no_switch_in_its_accuracy_title(tmp_path, drawn, switch):
    epochs = [{"epoch": e, "accuracy": {"running": {"test_clean": 0.2 + 0.1 * e}}} for e in range(3)]
    plots.accuracy_curves([{"label": "full", "epochs": epochs, "switch_epoch": switch}], tmp_path / "a.png")
    (ax,) = drawn["a.png"].axes
    assert ax.get_title() == "full" and not marks(ax)
    assert "switch epoch" not in legend_texts(drawn["a.png"])


# -- bands of seeds, a single tracked kernel, one kernel of the baseline ------------------------


def test_seed_bands_are_in_their_lines_colour_and_floored_on_the_log_axis(tmp_path, drawn):
    """Accuracies of two seeds: the train band as light as the train line (the run's colour
    halfway to white), the test band the run's colour. Relative magnitudes 0.1 and 0.9 of two
    seeds (mean 0.5, std 0.566): mean − std < 0, so on the log axis the band's floor is the
    lowest seed, 0.1."""
    from ntkrobust.plots._style import _shade

    seeds = []
    for s, (test, train, rm) in enumerate(((0.4, 0.6, 0.1), (0.5, 0.8, 0.9))):
        epochs = [
            {"epoch": e, "relative_magnitude": rm, "accuracy": {"running": {"test_clean": test, "train_clean": train}}}
            for e in (0, 1)
        ]
        seeds.append({"label": f"s{s}", "epochs": epochs})
    run = {**seeds[0], "label": "seeds", "seed_runs": seeds}
    plots.accuracy_curves([run], tmp_path / "accuracy.png")
    (ax,) = drawn["accuracy.png"].axes
    lines = {round(float(line.get_ydata()[0]), 6): to_hex(line.get_color()) for line in data_lines(ax)}
    assert lines == {0.45: BLUE, 0.7: to_hex(_shade(BLUE, 0.5))}
    bands = {round(float(np.mean(band_edges(c, 0.0))), 6): to_hex(c.get_facecolor()[0]) for c in ax.collections}
    assert bands == lines

    plots.relative_magnitude_curve([run], tmp_path / "relative.png")
    (band,) = drawn["relative.png"].axes[0].collections
    std = np.std([0.1, 0.9], ddof=1)
    np.testing.assert_allclose(band_edges(band, 0.0), (0.1, 0.5 + std), rtol=1e-12)


def test_a_single_tracked_kernel_is_one_cell_centred_on_its_epoch(tmp_path, drawn):
    """One tracked kernel at epoch 2: its distance (0) is one cell from 1.5 to 2.5."""
    run = {"label": "single", "dynamics": {"clean": {"epochs": [2.0], "distance_matrix": [[0.0]]}}}
    plots.kernel_distance_heatmaps([run], tmp_path / "distance.png")
    (mesh,) = next(ax for ax in drawn["distance.png"].axes if ax.get_title().startswith("single")).collections
    corners = mesh.get_coordinates()
    np.testing.assert_allclose(corners[0, :, 0], [1.5, 2.5], rtol=0, atol=1e-12)
    np.testing.assert_allclose(corners[:, 0, 1], [1.5, 2.5], rtol=0, atol=1e-12)


def test_a_baseline_distance_of_the_c_ntk_alone_is_one_panel(tmp_path, drawn):
    """No run has the AE-NTK's distance to the baseline: one panel, the C-NTK's, no empty one."""
    distance = {"epochs": [0.0, 1.0], "clean": [0.0, 0.2], "baseline_label": "base"}
    plots.baseline_distance_curves([{"label": "compared", "baseline_distance": distance}], tmp_path / "base.png")
    fig = drawn["base.png"]
    assert [ax.get_title() for ax in fig.axes] == ["C-NTK (clean probe)"]
    (line,) = data_lines(fig.axes[0])
    assert list(line.get_ydata()) == [0.0, 0.2]
