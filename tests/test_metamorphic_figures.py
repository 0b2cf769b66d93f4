"""Metamorphic tests of the figures (``plots``): what each curve, bar, cell and label shows, read
back off the Figure's artists after drawing twice, on inputs and on a transformation of them.

The transformations: runs, nets, series, rows or panels given in another order (and the seeds of a
group listed in another order), epochs thinned to a subset, a kernel or a gradient scaled by
c > 0, a log-axis series scaled by a power of ten, classes relabelled (the class names permuted
with the points' labels), probe points permuted while each class keeps its order, targets and
sources of a transfer matrix permuted. The relations follow from the docstrings: the legend and
the colours name each run (``plots._runs``: run i has colour i, its label in the legend), a
kernel picture is sorted by class in its order within a class (``kernel_images._class_sorted``),
each kernel picture has its own colour scale and names its maximum and Frobenius norm
(``kernel_images_grid``), a gradient picture has its own scale (``_show_gradient``), the transfer
cells are on [0, 1] with their values written in them (``transfer_heatmap``), the log axes' tick
labels name their ticks (``_readable_log_axis``), a KSM cell is named by its classes
(``specialization_heatmaps``).

Every relation is read off the artists (Line2D data, colours and styles, vertical marks, bands,
images, meshes and their colour limits, bars, texts, tick labels, titles, legends), never off the
inputs. The figures are caught as they are saved and never rendered to PNG (``caught``); only
the log-axis test draws its figure, to format its tick labels. Tolerances: exact where both
figures hold the very same numbers, 1e-12 relative where the second one took them through other
float operations (a mean over reordered seeds, a product by c).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from test_dynamics_plots_audit import data_lines, legend_colours, vertical
from test_plots_audit import feature_scores
from test_transfer_plots import net_record

from ntkrobust import plots

RTOL = 1e-12
EPOCHS = (0.0, 1.0, 2.0, 3.0, 4.0)
CLASSES = ("cat", "dog", "ship")
N = 9  # probe points


@pytest.fixture
def caught(monkeypatch) -> dict[str, object]:
    """The figures saved while a test runs, by file name, caught instead of written (the PNG is
    not the point here, the artists are; rendering two figures per relation would dominate)."""
    from matplotlib.figure import Figure

    figures: dict[str, object] = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, *a, **k: figures.__setitem__(Path(path).name, fig))
    return figures


# -- run summaries with every series a figure reads, different in every run --------------------


def _metrics(rng: np.random.Generator) -> dict:
    return {
        "frobenius_norm": float(10 ** rng.uniform(0.3, 2.5)),
        "concentration_top10": float(1 - 10 ** rng.uniform(-4, -1)),
        "effective_rank": float(rng.uniform(1, 20)),
        "mean_specialization": float(rng.uniform(0.5, 2)),
        "specialization_matrix": rng.uniform(0.4, 1.8, size=(3, 3)).tolist(),
    }


def _dynamics(rng: np.random.Generator, epochs: tuple[float, ...]) -> dict:
    t = len(epochs)
    d = rng.uniform(0.01, 0.5, size=(t, t))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    theta = np.concatenate([[0.0], np.sort(rng.uniform(0.05, 0.6, t - 1))])
    r = np.concatenate([[0.0], rng.uniform(0.2, 1.4, t - 2), [1.0]])
    e = np.asarray(epochs)
    return {
        "epochs": list(epochs),
        "top_k": 5,
        "distance_matrix": d.tolist(),
        "velocity": rng.uniform(0.01, 1.0, t - 1).tolist(),
        "velocity_epochs": ((e[:-1] + e[1:]) / 2).tolist(),
        "distance_to_final": np.concatenate([rng.uniform(0.05, 0.5, t - 1), [0.0]]).tolist(),
        "polar_r": r.tolist(),
        "polar_theta": theta.tolist(),
        "top_polar_r": (0.9 * r).tolist(),
        "top_polar_theta": (1.1 * theta).tolist(),
    }


def _kernel(rng: np.random.Generator) -> np.ndarray:
    phi = rng.normal(size=(N, 4))
    return phi @ phi.T + 0.1 * np.eye(N)


def full_run(label: str, seed: int, *, switch: int | None = None, milestones=(), seeds: int = 0) -> dict:
    """A run summary (``bridge.runs.dynamics_summary``'s format) whose every number is its own:
    C-NTK, AE-NTK and own-labels metrics at ``EPOCHS``, kernel dynamics of both kernels, a
    distance to a baseline, relative magnitudes and accuracies per epoch, its two kernels; with
    ``seeds``, a group of that many seed runs (``seed_runs``) under its label."""
    rng = np.random.default_rng(seed)
    kernels = [
        {
            "epoch": e,
            "step": 10 * k,
            "clean": _metrics(rng),
            "adversarial": _metrics(rng),
            "adversarial_labels": {
                "mean_specialization": float(rng.uniform(0.5, 2)),
                "specialization_matrix": rng.uniform(0.4, 1.8, size=(3, 3)).tolist(),
            },
        }
        for k, e in enumerate(EPOCHS)
    ]
    keys = ("test_clean", "test_pgd", "train_clean", "train_pgd")
    epochs = [
        {
            "epoch": int(e),
            "relative_magnitude": float(10 ** rng.uniform(-3, 0)),
            "accuracy": {"running": {k: float(rng.uniform(0, 1)) for k in keys}},
        }
        for e in EPOCHS
    ]
    run = {
        "label": label,
        "mode": "pgd",
        "switch_epoch": switch,
        "milestones": list(milestones),
        "class_names": list(CLASSES),
        "probe_targets": (np.arange(N) % 3).tolist(),
        "kernels": kernels,
        "kernel_epochs": list(EPOCHS),
        "epochs": epochs,
        "dynamics": {"clean": _dynamics(rng, EPOCHS), "adversarial": _dynamics(rng, EPOCHS)},
        "baseline_distance": {
            "baseline_label": "the baseline",
            "epochs": list(EPOCHS),
            "clean": rng.uniform(0, 0.3, len(EPOCHS)).tolist(),
            "adversarial": rng.uniform(0, 0.6, len(EPOCHS)).tolist(),
        },
        "initial_kernel": _kernel(rng),
        "final_kernel": 3 * _kernel(rng),
    }
    if seeds:
        group = [
            full_run(f"{label}, seed {s}", 100 * seed + s, switch=switch, milestones=milestones) for s in range(seeds)
        ]
        run = {**group[0], "label": label, "seeds": list(range(seeds)), "seed_runs": group}
    return run


def three_runs() -> list[dict]:
    """Three runs: a group of three seeds, a run switching after epoch 2 with a decay after 3,
    and a plain one."""
    return [
        full_run("seeds", 1, seeds=3),
        full_run("switching", 2, switch=2, milestones=(3,)),
        full_run("plain", 3),
    ]


ORDERS = ((2, 0, 1), (1, 0, 2))
"""Two other orders of three runs, a rotation and a swap: together they move every run to every
place, so that no rule tying a label, colour or scale to a place rather than to a run holds under
both (a rotation alone misses a label taken from the next run, a swap alone one taken from the
mirrored place)."""


def reordered(runs: list[dict], order: tuple[int, ...]) -> list[dict]:
    """The runs in ``order``, a group's seeds listed backwards."""
    moved = [runs[i] for i in order]
    return [{**r, "seed_runs": r["seed_runs"][::-1]} if r.get("seed_runs") else r for r in moved]


# -- reading the figures -------------------------------------------------------------------------


def hexed(colour) -> str:
    return to_hex(colour, keep_alpha=False)


def curve_panels(fig) -> dict[tuple, np.ndarray]:
    """What each run shows in each panel, by the run's legend label (matched by colour): its
    lines (line style, x, y), its seed bands (vertices), and its vertical marks (x, style); the
    decay marks (grey) under "decay"."""
    by_colour = {c: label for label, c in legend_colours(fig).items()}
    shown: dict[tuple, np.ndarray] = {}
    for ax in fig.axes:
        title = ax.get_title()
        if not title or not ax.lines:
            continue
        for line in data_lines(ax):
            key = (title, by_colour[hexed(line.get_color())], "line", str(line.get_linestyle()))
            assert key not in shown, key
            shown[key] = np.asarray(line.get_xydata(), dtype=float)
        marks: dict[str, list] = {}
        for line in ax.lines:
            if vertical(line):
                who = by_colour.get(hexed(line.get_color()), "decay")
                marks.setdefault(who, []).append(float(line.get_xdata()[0]))
        for who, xs in marks.items():
            shown[(title, who, "marks")] = np.sort(xs)
        count: dict[str, int] = {}
        for band in ax.collections:
            who = by_colour[hexed(band.get_facecolor()[0])]
            count[who] = count.get(who, 0) + 1
            shown[(title, who, "band", count[who])] = band.get_paths()[0].vertices
    return shown


def assert_same_drawing(first: dict, second: dict, *, rtol: float = RTOL) -> None:
    assert sorted(first, key=str) == sorted(second, key=str)
    for key, value in first.items():
        np.testing.assert_allclose(second[key], value, rtol=rtol, atol=1e-15, err_msg=str(key))


CURVE_FIGURES = (
    plots.kernel_norm_and_concentration,
    plots.kernel_velocity_and_distance,
    plots.rank_and_specialization,
    plots.baseline_distance_curves,
    plots.relative_magnitude_curve,
)


@pytest.mark.parametrize("figure", CURVE_FIGURES, ids=lambda f: f.__name__)
def test_runs_in_another_order_draw_each_labels_curves_bands_and_marks_unchanged(tmp_path, caught, figure):
    """Run i is drawn in colour i and named in the legend in that colour (``plots._runs``): the
    same runs in another order, a group's seeds listed backwards, must draw under each legend
    label the same lines (per kernel style), the same mean ± std band (the mean and ddof-1 std
    of ``_seed_band`` do not depend on the seeds' order) and the same switch marks; the decay
    marks stay where they were. A label attached to another run's data fails here."""
    runs = three_runs()
    figure(runs, tmp_path / "a.png")
    first = curve_panels(caught["a.png"])
    assert any(key[2] == "band" for key in first) and any(key[1] == "switching" for key in first)
    for k, order in enumerate(ORDERS):
        figure(reordered(runs, order), tmp_path / f"{k}.png")
        assert_same_drawing(first, curve_panels(caught[f"{k}.png"]))


def accuracy_panels(fig) -> dict[tuple, np.ndarray]:
    """Per panel title (its run): each line (style, marker, lighter or not) and its points, the
    title being in the colour of the run's two test lines; and the panel's vertical marks."""
    shown = {}
    for ax in fig.axes:
        if not ax.get_visible() or not ax.lines:
            continue
        title, colour = ax.get_title(), hexed(ax.title.get_color())
        lines = data_lines(ax)
        tests = [line for line in lines if hexed(line.get_color()) == colour]
        assert len(tests) == 2, title  # test clean and test PGD in the title's colour
        for line in lines:
            light = hexed(line.get_color()) != colour
            key = (title, str(line.get_linestyle()), line.get_marker(), light)
            shown[key] = np.asarray(line.get_xydata(), dtype=float)
        shown[(title, "marks")] = np.sort([float(line.get_xdata()[0]) for line in ax.lines if vertical(line)])
    return shown


def test_accuracy_panels_follow_their_runs_in_another_order(tmp_path, caught):
    """``accuracy_curves``: one panel per run, titled with its label in its colour, test lines in
    that colour and train ones lighter. Reordered runs move the panels and change their colours,
    never what a titled panel draws."""
    runs = three_runs()
    plots.accuracy_curves(runs, tmp_path / "a.png")
    for k, order in enumerate(ORDERS):
        plots.accuracy_curves(reordered(runs, order), tmp_path / f"{k}.png")
        assert_same_drawing(accuracy_panels(caught["a.png"]), accuracy_panels(caught[f"{k}.png"]))


def picture_panels(fig) -> dict[tuple, np.ndarray]:
    """Every image and mesh by its panel's title and its row's label (the y label of the row's
    first panel: the run of a row of specialization matrices): the array, its colour limits and
    the cell edges of a mesh. A panel framed in another colour than its row label is refused."""
    panels = [ax for ax in fig.axes if ax.get_title()]  # not the colour bars
    rows = {}
    for ax in panels:
        spec = ax.get_subplotspec()
        if spec.colspan.start == 0:
            rows[spec.rowspan.start] = ax
    shown = {}
    for ax in panels:
        row = rows[ax.get_subplotspec().rowspan.start]
        if row.get_ylabel() not in ("", "epoch"):  # a row named by its run: every panel of it in the run's colour
            assert hexed(ax.spines["left"].get_edgecolor()) == hexed(row.yaxis.label.get_color())
        for k, image in enumerate([*ax.images, *(c for c in ax.collections if hasattr(c, "get_coordinates"))]):
            key = (ax.get_title(), row.get_ylabel().split("\n")[0], k)
            shown[(*key, "array")] = np.ma.getdata(image.get_array())
            shown[(*key, "limits")] = np.asarray(image.get_clim(), dtype=float)
            if hasattr(image, "get_coordinates"):
                shown[(*key, "edges")] = image.get_coordinates()
    return shown


def row_labels(fig) -> dict[str, str]:
    """The run named at the left of each row of a grid of pictures, by the row's frame colour."""
    return {
        hexed(ax.spines["left"].get_edgecolor()): ax.get_ylabel().split("\n")[0]
        for ax in fig.axes
        if ax.get_ylabel() and ax.images
    }


@pytest.mark.parametrize(
    "figure", (plots.kernel_distance_heatmaps, plots.kernel_images_grid, plots.specialization_heatmaps)
)
def test_runs_in_another_order_keep_each_titled_picture_and_its_colour_limits(tmp_path, caught, figure):
    """The pictures of runs (TK fig. 3 left and fig. 6 left, RAT figs. 3-4): each panel names its
    run (title or row label); reordered runs must show the same matrix, on the same colour limits
    (one scale per kernel row for the distances, per panel for the kernels, one for all KSMs:
    none depends on the order) and the same cell edges; a row of KSMs is framed in the colour of
    the run it names."""
    runs = three_runs()
    for run in runs:
        run["initial_kernel"] = runs[0]["initial_kernel"]  # one "initialisation" panel, shared
    figure(runs, tmp_path / "a.png")
    first = picture_panels(caught["a.png"])
    assert len({key[:3] for key in first}) >= 3
    for k, order in enumerate(ORDERS):
        figure(reordered(runs, order), tmp_path / f"{k}.png")
        assert_same_drawing(first, picture_panels(caught[f"{k}.png"]), rtol=0)
    if figure is plots.specialization_heatmaps:
        for fig in caught.values():
            assert sorted(row_labels(fig).values()) == ["plain", "seeds", "switching"]


def polar_lines(fig) -> dict[tuple, np.ndarray]:
    """Each trajectory line of each polar panel by its run's legend label and its kernel's style."""
    by_colour = {c: label for label, c in legend_colours(fig).items()}
    return {
        (ax.get_title(), by_colour[hexed(line.get_color())], str(line.get_linestyle())): line.get_xydata()
        for ax in fig.axes
        if ax.name == "polar"
        for line in ax.lines
    }


def test_polar_trajectories_of_runs_in_another_order_keep_each_labels_trajectory(tmp_path, caught):
    """TK fig. 3 right: every run's trajectory (r, θ) in its colour, named in the legend; the
    angular stretch depends on the largest angle of all runs, not on their order."""
    runs = three_runs()
    plots.polar_trajectories(runs, tmp_path / "a.png")
    first = polar_lines(caught["a.png"])
    assert len(first) == 12  # 3 runs x 2 kernels x 2 panels
    for k, order in enumerate(ORDERS):
        plots.polar_trajectories(reordered(runs, order), tmp_path / f"{k}.png")
        assert_same_drawing(first, polar_lines(caught[f"{k}.png"]), rtol=0)


# -- epochs thinned ------------------------------------------------------------------------------


def thinned(run: dict, keep: tuple[float, ...]) -> dict:
    """The run with only the kernel records, epoch records and kernel dynamics at ``keep``."""
    run = {**run, "kernels": [r for r in run["kernels"] if r["epoch"] in keep]}
    run["epochs"] = [r for r in run["epochs"] if r["epoch"] in keep]
    run["kernel_epochs"] = list(keep)
    at = [EPOCHS.index(e) for e in keep]
    dynamics = {}
    for kind, d in run["dynamics"].items():
        d = {**d, "epochs": list(keep), "distance_matrix": np.asarray(d["distance_matrix"])[np.ix_(at, at)].tolist()}
        d["distance_to_final"] = [d["distance_to_final"][i] for i in at]
        for key in ("velocity", "velocity_epochs"):
            del d[key]  # velocities of other intervals: not a subset
        dynamics[kind] = d
    run["dynamics"] = dynamics
    return run


@pytest.mark.parametrize(
    "figure",
    (plots.kernel_norm_and_concentration, plots.rank_and_specialization, plots.accuracy_curves),
    ids=lambda f: f.__name__,
)
def test_thinned_epochs_draw_the_subset_of_points_at_the_same_epochs(tmp_path, caught, figure):
    """Tracking only some epochs (``train --track-every``) removes the other points: every line
    of the thinned runs is the full line's points at the kept epochs, same x, same y, in the same
    run's panel and legend colour."""
    runs = [full_run("first", 4), full_run("second", 5)]
    keep = (0.0, 2.0, 4.0)
    figure(runs, tmp_path / "a.png")
    figure([thinned(run, keep) for run in runs], tmp_path / "b.png")
    read = accuracy_panels if figure is plots.accuracy_curves else curve_panels
    full, some = read(caught["a.png"]), read(caught["b.png"])
    lines = [key for key in full if key[-1] != "marks" and "marks" not in key]
    assert lines and sorted(lines, key=str) == sorted((k for k in some if "marks" not in k), key=str)
    for key in lines:
        points = full[key]
        np.testing.assert_array_equal(some[key], points[np.isin(points[:, 0], keep)], err_msg=str(key))


def test_a_thinned_distance_matrix_is_the_submatrix_on_cells_centred_on_the_kept_epochs(tmp_path, caught):
    """``kernel_distance_heatmaps`` draws d(Θ_s, Θ_t) on cells centred on the tracked epochs,
    however spaced: the kept epochs' rows and columns, each cell still holding its epoch."""
    runs = [full_run("first", 6)]
    keep = (0.0, 1.0, 4.0)
    plots.kernel_distance_heatmaps(runs, tmp_path / "a.png")
    plots.kernel_distance_heatmaps([thinned(runs[0], keep)], tmp_path / "b.png")
    panels = [[ax for ax in caught[f].axes if ax.get_title()] for f in ("a.png", "b.png")]
    assert len(panels[0]) == len(panels[1]) == 2  # the C-NTK and the AE-NTK
    for full_ax, some_ax in zip(*panels, strict=True):
        assert full_ax.get_title() == some_ax.get_title()
        (full_mesh,), (some_mesh,) = full_ax.collections, some_ax.collections
        at = [EPOCHS.index(e) for e in keep]
        full_cells = np.ma.getdata(full_mesh.get_array()).reshape(len(EPOCHS), -1)
        np.testing.assert_array_equal(
            np.ma.getdata(some_mesh.get_array()).reshape(len(keep), -1), full_cells[np.ix_(at, at)]
        )
        edges = some_mesh.get_coordinates()[0, :, 0]
        np.testing.assert_allclose(edges[1:-1], (np.asarray(keep[:-1]) + keep[1:]) / 2, rtol=0, atol=1e-12)
        assert all(lo < e < hi for lo, e, hi in zip(edges[:-1], keep, edges[1:], strict=True)), edges


# -- scaled numbers --------------------------------------------------------------------------------


def tick_value(text: str) -> float:
    """The number a tick label of ``_readable_log_axis`` names: 0.002, 200, 10^{3}, 2\\times10^{-6}."""
    text = text.strip("$")
    if "10^{" in text:
        mantissa, _, power = text.partition("10^{")
        mantissa = mantissa.replace(r"\times", "") or "1"
        return float(mantissa) * 10.0 ** int(power.rstrip("}"))
    return float(text)


def major_ticks(ax) -> list[tuple[float, float]]:
    """(location, named value) of each major tick in view, the figure drawn to format them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(ax.figure).draw()
    low, high = ax.get_ylim()
    return [
        (float(tick.get_loc()), tick_value(tick.label1.get_text()))
        for tick in ax.yaxis.get_major_ticks()
        if low <= tick.get_loc() <= high and tick.label1.get_text()
    ]


def scaled_norms(run: dict, c: float) -> dict:
    kernels = [
        {
            **r,
            **{kind: {**r[kind], "frobenius_norm": c * r[kind]["frobenius_norm"]} for kind in ("clean", "adversarial")},
        }
        for r in run["kernels"]
    ]
    return {**run, "kernels": kernels}


@pytest.mark.parametrize("power", [1, 6])
def test_norms_scaled_by_a_power_of_ten_shift_the_log_curve_and_ticks_still_name_the_drawn_values(
    tmp_path, caught, power
):
    """TK fig. 6 right: the Frobenius norm on a log axis. Norms × 10ᵏ draw each point × 10ᵏ, the
    concentrations unchanged; the view and its major ticks move up by 10ᵏ, and every tick label,
    plain or m×10ᵏ (``_readable_log_axis``), names the value at its tick, before and after."""
    c = 10.0**power
    runs = [full_run("first", 7), full_run("second", 8)]
    plots.kernel_norm_and_concentration(runs, tmp_path / "a.png")
    plots.kernel_norm_and_concentration([scaled_norms(run, c) for run in runs], tmp_path / "b.png")
    first, second = curve_panels(caught["a.png"]), curve_panels(caught["b.png"])
    for key, points in first.items():
        expected = points * [1.0, c] if key[0] == "Frobenius norm" and key[2] == "line" else points
        np.testing.assert_allclose(second[key], expected, rtol=RTOL, err_msg=str(key))
    axes = [
        next(ax for ax in fig.axes if ax.get_title() == "Frobenius norm") for fig in (caught["a.png"], caught["b.png"])
    ]
    ticks = [major_ticks(ax) for ax in axes]
    for drawn_ticks in ticks:
        assert len(drawn_ticks) >= 2
        for loc, named in drawn_ticks:
            assert named == pytest.approx(loc, rel=1e-9), drawn_ticks
    assert [loc for loc, _ in ticks[1]] == pytest.approx([c * loc for loc, _ in ticks[0]], rel=1e-9)
    np.testing.assert_allclose(axes[1].get_ylim(), c * np.asarray(axes[0].get_ylim()), rtol=1e-9)


def kernel_panels(fig) -> dict[str, tuple[np.ndarray, tuple[float, float], float, float]]:
    """Per kernel panel (title's first line): its image, colour limits, and the Frobenius norm
    and maximum the title and colour bar name."""
    shown = {}
    for ax in fig.axes:
        if not ax.images:
            continue
        head, norm = ax.get_title().split("\n")
        bar = next(a for a in fig.axes if a.get_xlabel().startswith("Θ(x, x′), this panel's scale") and
                   a.get_position().x0 >= ax.get_position().x0 - 0.05 and
                   a.get_position().x1 <= ax.get_position().x1 + 0.05)  # fmt: skip
        named_max = float(bar.get_xlabel().rsplit("max ", 1)[1].rstrip(")"))
        image = ax.images[0]
        shown[head] = (np.asarray(image.get_array()), image.get_clim(), float(norm.rsplit("= ", 1)[1]), named_max)
    return shown


def test_kernels_scaled_by_c_scale_the_pictures_and_the_numbers_they_name_not_their_colours(tmp_path, caught):
    """``kernel_images_grid``: each panel on its own colour scale, naming its maximum and norm.
    Kernels × c (c = 1000) draw images × c, colour limits × c, and the named norm and maximum × c
    (to their 3 digits); the colours, the image on its own limits, are unchanged."""
    c = 1000.0
    runs = [full_run("first", 9), full_run("second", 10)]
    plots.kernel_images_grid(runs, tmp_path / "a.png")
    scaled = [{**r, "initial_kernel": c * r["initial_kernel"], "final_kernel": c * r["final_kernel"]} for r in runs]
    plots.kernel_images_grid(scaled, tmp_path / "b.png")
    first, second = kernel_panels(caught["a.png"]), kernel_panels(caught["b.png"])
    assert len(first) == 4 and sorted(first) == sorted(second)
    for head, (image, limits, norm, top) in first.items():
        image_c, limits_c, norm_c, top_c = second[head]
        np.testing.assert_allclose(image_c, c * image, rtol=RTOL)
        np.testing.assert_allclose(limits_c, c * np.asarray(limits), rtol=RTOL)
        np.testing.assert_allclose(
            (image_c - limits_c[0]) / np.ptp(limits_c), (image - limits[0]) / np.ptp(limits), atol=1e-12
        )
        assert norm_c == pytest.approx(c * norm, rel=5e-3) and top_c == pytest.approx(c * top, rel=5e-3)


def test_distances_scaled_by_c_keep_their_colours_on_the_rows_shared_scale(tmp_path, caught):
    """``kernel_distance_heatmaps``: one colour scale per kernel row, from 0 to the row's largest
    distance. Distances × c (e.g. another normalisation) draw the cells × c on limits × c: every
    cell's colour, the value on its limits, is unchanged."""
    c = 3.0
    runs = [full_run("first", 11), full_run("second", 12)]
    scaled = []
    for run in runs:
        dynamics = {
            k: {**d, "distance_matrix": (c * np.asarray(d["distance_matrix"])).tolist()}
            for k, d in run["dynamics"].items()
        }
        scaled.append({**run, "dynamics": dynamics})
    plots.kernel_distance_heatmaps(runs, tmp_path / "a.png")
    plots.kernel_distance_heatmaps(scaled, tmp_path / "b.png")
    first, second = picture_panels(caught["a.png"]), picture_panels(caught["b.png"])
    for key in first:
        if key[-1] == "array":
            limits = (*key[:-1], "limits")
            np.testing.assert_allclose(second[key], c * first[key], rtol=RTOL)
            np.testing.assert_allclose(second[limits], c * first[limits], rtol=RTOL)
            colour = first[key] / first[limits][1]
            np.testing.assert_allclose(second[key] / second[limits][1], colour, rtol=RTOL)


def gradient_colours(fig) -> dict[tuple, np.ndarray]:
    """The RGBA of every picture, by (its row, its column): the colours a reader sees."""
    shown = {}
    for ax in fig.axes:
        for image in ax.images:
            spec = ax.get_subplotspec()
            shown[(spec.rowspan.start, spec.colspan.start)] = image.to_rgba(image.get_array(), norm=True)
    return shown


@pytest.mark.parametrize("channels", [1, 3])
def test_gradients_scaled_by_c_show_the_same_colours_on_their_own_scale(tmp_path, caught, rng, channels):
    """Each gradient picture is on its own scale (``_show_gradient``: grey on a diverging map
    from −max|g| to max|g|, colour rescaled to [0, 1]): gradients × c (c > 0) show every pixel in
    the same colour, in ``feature_gallery`` and ``gradient_pictures``, the input image unchanged."""
    c = 250.0
    image = rng.uniform(0, 1, (channels, 5, 5))
    gradients = rng.normal(size=(2, channels, 5, 5))
    plots.feature_gallery(image, [("net", gradients, ["f1", "f2"])], tmp_path / "a.png")
    plots.feature_gallery(image, [("net", c * gradients, ["f1", "f2"])], tmp_path / "b.png")
    plots.gradient_pictures(image, [("net", gradients)], [1, 10], tmp_path / "c.png")
    plots.gradient_pictures(image, [("net", c * gradients)], [1, 10], tmp_path / "d.png")
    for one, other in (("a.png", "b.png"), ("c.png", "d.png")):
        first, second = gradient_colours(caught[one]), gradient_colours(caught[other])
        assert len(first) == 3 and sorted(first) == sorted(second)
        for key, colours in first.items():
            np.testing.assert_allclose(second[key], colours, atol=1e-12, err_msg=str(key))


def picture_rows(fig, *, eigen: bool = False) -> dict[str, list]:
    """Per row name, its pictures in column order. The picture grids: the y label of a row's first
    panel names it, its pictures lie right of that panel. ``eigen`` (``eigenvector_pictures``): the
    bold first line of the upper row's label names a kernel's two rows, each picture read with the
    cosine its title names."""
    rows: dict[int, list] = {}
    names: dict[int, str] = {}
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        row = spec.rowspan.start
        if ax.get_ylabel():
            names[row] = ax.get_ylabel().split("\n")[0]
        if not ax.images:
            continue
        picture = np.asarray(ax.images[0].get_array())
        if eigen:
            cosine = float(ax.get_title().rsplit("cos ", 1)[1])
            rows.setdefault(row - row % 2, []).append(
                ((row % 2, spec.colspan.start), np.append(picture.ravel(), cosine))
            )
        elif spec.colspan.start > 0:
            rows.setdefault(row, []).append((spec.colspan.start, picture))
    return {names[row]: sorted(pics, key=lambda p: p[0]) for row, pics in rows.items()}


@pytest.mark.parametrize("figure", ["feature_gallery", "gradient_pictures", "eigenvector_pictures"])
def test_rows_in_another_order_keep_each_named_rows_pictures(tmp_path, caught, rng, figure):
    """The picture grids name each row at its left (an architecture, a model, a kernel): rows given
    in another order must show under each name the same pictures in the same columns (the
    eigenvector pictures' cosine titles with them)."""
    grads = {name: rng.normal(size=(2, 1, 4, 4)) for name in ("fc", "cnn", "ntk")}
    image = rng.uniform(0, 1, (1, 4, 4))
    order = (["fc", "cnn", "ntk"], ["ntk", "fc", "cnn"])
    for name, names in zip(("a.png", "b.png"), order, strict=True):
        if figure == "feature_gallery":
            plots.feature_gallery(image, [(n, grads[n], [f"{n} 1", f"{n} 2"]) for n in names], tmp_path / name)
        elif figure == "gradient_pictures":
            plots.gradient_pictures(image, [(n, grads[n]) for n in names], [1, 5], tmp_path / name)
        else:
            rows = [(n, np.clip(grads[n], 0, 1), np.clip(-grads[n], 0, 1)) for n in names]
            cosines = [(np.abs(grads[n][:, 0, 0, 0]), -np.abs(grads[n][:, 0, 0, 1])) for n in names]
            plots.eigenvector_pictures(rows, tmp_path / name, cosines=cosines)
    eigen = figure == "eigenvector_pictures"
    first, second = picture_rows(caught["a.png"], eigen=eigen), picture_rows(caught["b.png"], eigen=eigen)
    assert len(first) == 3 and sorted(first) == sorted(second)
    for name, pictures in first.items():
        assert len(pictures) == len(second[name])
        for (col, array), (col_b, array_b) in zip(pictures, second[name], strict=True):
            assert col == col_b
            np.testing.assert_array_equal(array_b, array, err_msg=name)


# -- classes relabelled, points permuted -------------------------------------------------------


def named_blocks(ax) -> dict[tuple[str, str], np.ndarray]:
    """The picture of a class-sorted kernel cut into its named blocks: (row class, column class)
    → the block, each class's rows read off its tick, centred on its block (the blocks in tick order)."""
    image = np.asarray(ax.images[0].get_array())
    names = [t.get_text() for t in ax.get_xticklabels()]
    centres = np.asarray(ax.get_xticks(), dtype=float)
    spans, start = {}, 0
    for name, centre in zip(names, centres, strict=True):  # centre = (first + last) / 2 of a block
        end = round(2 * centre) + 1 - start
        spans[name] = np.arange(start, end)
        start = end
    assert start == image.shape[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    return {(a, b): image[np.ix_(spans[a], spans[b])] for a in names for b in names}


def relabelled_classes(labels: np.ndarray, names: list[str], sigma: list[int]) -> tuple[np.ndarray, list[str]]:
    """Class k renamed σ(k): the labels mapped through σ, the names permuted so that every point
    keeps its class name (new name σ(k) = old name k)."""
    new_names = [""] * len(names)
    for k, s in enumerate(sigma):
        new_names[s] = names[k]
    return np.asarray(sigma)[labels], new_names


def test_relabelled_classes_move_each_named_block_of_a_kernel_picture_intact(tmp_path, caught, rng):
    """``kernel_image`` sorts the points by class index (stable), outlines and names the blocks.
    Classes relabelled by σ, their names with them (each point keeps its class name), reorder the
    blocks: every (row class, column class) block, read under its names, is the same matrix; so
    in ``kernel_images_grid`` (``probe_targets``, ``class_names``)."""
    labels = rng.integers(0, 4, size=14)
    labels[:4] = [0, 1, 2, 3]
    names = ["plane", "car", "bird", "frog"]
    phi = rng.normal(size=(14, 5))
    kernel = phi @ phi.T
    new_labels, new_names = relabelled_classes(labels, names, [2, 0, 3, 1])
    plots.kernel_image(kernel, labels, tmp_path / "a.png", class_names=names, title="k")
    plots.kernel_image(kernel, new_labels, tmp_path / "b.png", class_names=new_names, title="k")
    run = {"label": "r", "final_kernel": kernel, "probe_targets": labels.tolist(), "class_names": names}
    plots.kernel_images_grid([run], tmp_path / "c.png")
    run = {**run, "probe_targets": new_labels.tolist(), "class_names": new_names}
    plots.kernel_images_grid([run], tmp_path / "d.png")
    for one, other in (("a.png", "b.png"), ("c.png", "d.png")):
        (first_ax,), (second_ax,) = ([ax for ax in caught[f].axes if ax.images] for f in (one, other))
        first, second = named_blocks(first_ax), named_blocks(second_ax)
        assert sorted(first) == sorted(second) and len(first) == 16
        assert [t.get_text() for t in first_ax.get_xticklabels()] != [t.get_text() for t in second_ax.get_xticklabels()]
        for key, block in first.items():
            np.testing.assert_array_equal(second[key], block, err_msg=str(key))


def test_points_permuted_keeping_each_class_in_order_draw_the_same_kernel_picture(tmp_path, caught, rng):
    """The sort is stable: points permuted so that each class keeps its points' order (classes
    interleaved otherwise) give the very same picture; any permutation keeps every named block's
    values (the block permuted within)."""
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    phi = rng.normal(size=(10, 4))
    kernel = phi @ phi.T
    order = np.array([1, 4, 0, 2, 7, 3, 5, 8, 6, 9])  # classes interleaved, each in its order
    assert all(np.all(np.diff(order[labels[order] == c]) > 0) for c in range(3))
    shuffle = rng.permutation(10)
    names = ["a", "b", "c"]
    for name, perm in (("a.png", np.arange(10)), ("b.png", order), ("c.png", shuffle)):
        plots.kernel_image(kernel[np.ix_(perm, perm)], labels[perm], tmp_path / name, class_names=names, title="k")
    pictures = {name: caught[name].axes[0].images[0].get_array() for name in ("a.png", "b.png", "c.png")}
    np.testing.assert_array_equal(pictures["b.png"], pictures["a.png"])
    first, third = named_blocks(caught["a.png"].axes[0]), named_blocks(caught["c.png"].axes[0])
    for key, block in first.items():
        np.testing.assert_array_equal(np.sort(third[key], axis=None), np.sort(block, axis=None), err_msg=str(key))


def ksm_cells(ax, rows: list[str], columns: list[str]) -> dict[tuple[str, str], float]:
    """A KSM panel read by its class names: (class kernel i, label class j) → the cell."""
    image = np.asarray(ax.images[0].get_array())
    return {(a, b): float(image[i, j]) for i, a in enumerate(rows) for j, b in enumerate(columns)}


def ksm_run(label: str, seed: int, names: list[str], sigma: list[int] | None = None) -> dict:
    """A run with KSMs at every epoch (the figure's columns: the first and the last); with σ, the
    same run with class k renamed σ(k):
    KSM'[σ(i), σ(j)] = KSM[i, j], its class names permuted with it."""
    run = full_run(label, seed)
    if sigma is None:
        return {**run, "class_names": names}
    inverse = np.argsort(sigma)
    kernels = []
    for record in run["kernels"]:
        record = dict(record)
        for kind in ("clean", "adversarial", "adversarial_labels"):
            ksm = np.asarray(record[kind]["specialization_matrix"])
            record[kind] = {**record[kind], "specialization_matrix": ksm[np.ix_(inverse, inverse)].tolist()}
        kernels.append(record)
    return {**run, "kernels": kernels, "class_names": relabelled_classes(np.arange(3), names, sigma)[1]}


def ksm_read(fig) -> dict[tuple, float]:
    """Every KSM cell of the figure by (row's run, column title, class i, class j), the classes
    read as a reader reads them: i off the row's left panel, j off the nearest panel at or below
    this one in its column that names its classes."""
    grid = {}
    for ax in fig.axes:
        if ax.images:
            spec = ax.get_subplotspec()
            grid[(spec.rowspan.start, spec.colspan.start)] = ax
    cells = {}
    for (r, c), ax in grid.items():
        left = grid[(r, min(cc for rr, cc in grid if rr == r))]
        below = [grid[(rr, c)] for rr in sorted(rr for rr, cc in grid if cc == c and rr >= r)]
        names = [[t.get_text() for t in panel.get_xticklabels()] for panel in below]
        x = next(n for n in names if any(n))
        y = [t.get_text() for t in left.get_yticklabels()]
        run = left.get_ylabel().split("\n")[0]
        for (a, b), v in ksm_cells(ax, y, x).items():
            cells[(run, ax.get_title().split(" · ")[0], a, b)] = v
    return cells


def test_relabelled_classes_keep_each_named_ksm_cell(tmp_path, caught):
    """RAT's KSM[i, j] is indexed by classes: a run whose classes are renamed by σ (its KSMs
    permuted KSM'[σ(i), σ(j)] = KSM[i, j], its class names with them) must show under each pair of
    class names the same cell; the mean specialization tr(KSM)/C in the title is unchanged."""
    names = ["cat", "dog", "ship"]
    plots.specialization_heatmaps([ksm_run("r", 13, names)], tmp_path / "a.png")
    plots.specialization_heatmaps([ksm_run("r", 13, names, [1, 2, 0])], tmp_path / "b.png")
    first, second = ksm_read(caught["a.png"]), ksm_read(caught["b.png"])
    assert len(first) == 2 * 9 and sorted(first) == sorted(second)
    for key, value in first.items():
        assert second[key] == value, key
    titles = [sorted(ax.get_title() for ax in caught[f].axes if ax.images) for f in ("a.png", "b.png")]
    assert titles[0] == titles[1]


def test_a_run_with_relabelled_classes_beside_another_keeps_each_named_ksm_cell(tmp_path, caught):
    """Two runs in one KSM figure, the upper one's classes renamed by σ (its KSMs and class names
    permuted together): each of its cells, read under the class names the figure gives its row
    and column, must be the cell of the same run drawn alone with the same names. (A bug this round
    found: the column's class names were the bottom run's, so the upper run's columns were named by
    another run's class order; a panel whose run names its classes otherwise now names them.)"""
    names = ["cat", "dog", "ship"]
    upper = ksm_run("upper", 14, names, [1, 2, 0])
    plots.specialization_heatmaps([upper], tmp_path / "alone.png")
    plots.specialization_heatmaps([upper, ksm_run("lower", 15, names)], tmp_path / "both.png")
    alone, both = ksm_read(caught["alone.png"]), ksm_read(caught["both.png"])
    assert len(alone) == 2 * 9
    for key, value in alone.items():
        assert both[key] == value, key


# -- transfer ------------------------------------------------------------------------------------


def transfer_cells(fig) -> dict[tuple, tuple]:
    """Every cell of every panel by (panel title, target, source): (image value or None, the text
    written in it, the text's colour), read off the tick labels, the image and the texts."""
    cells = {}
    for ax in fig.axes:
        if not ax.images:
            continue
        rows = [t.get_text() for t in ax.get_yticklabels()]
        columns = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
        if not any(rows):  # a side-by-side panel leaves the targets to the first one
            rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        image = ax.images[0].get_array()
        for text in ax.texts:
            j, i = (round(v) for v in text.get_position())
            value = None if np.ma.is_masked(image[i, j]) else float(image[i, j])
            cells[(ax.get_title(), rows[i], columns[j])] = (value, text.get_text(), hexed(text.get_color()))
        assert ax.images[0].get_clim() == (0.0, 1.0)
    return cells


@pytest.mark.parametrize("own", [None, "own attack"])
def test_transfer_targets_and_sources_permuted_move_each_cell_with_its_text(tmp_path, caught, rng, own):
    """``transfer_heatmap``: rows = targets, columns = attack sources, each cell coloured on the
    fixed [0, 1] scale and annotated with its value (``own``: a target's own cell in a source
    column named after it reads "own"). Targets and both panels' sources permuted (the matrices
    with them) must leave every (target, source) cell's colour value, text and ink unchanged."""
    targets = ["net a", "net b", "ntk"]
    sources = ["own attack", "net a", "ntk", "noise"]
    accuracy = rng.uniform(0, 1, (3, 4))
    accuracy[1, 3] = np.nan
    tau_columns = ["net a", "net b", "ntk"]
    tau = rng.uniform(-0.2, 1.2, (3, 3))
    rows, cols, tau_cols = [2, 0, 1], [3, 1, 0, 2], [1, 2, 0]
    plots.transfer_heatmap(
        targets, sources, accuracy, tmp_path / "a.png", transferability=(tau_columns, tau), own_column=own
    )
    plots.transfer_heatmap(
        [targets[i] for i in rows],
        [sources[j] for j in cols],
        accuracy[np.ix_(rows, cols)],
        tmp_path / "b.png",
        transferability=([tau_columns[j] for j in tau_cols], tau[np.ix_(rows, tau_cols)]),
        own_column=own,
    )
    first, second = transfer_cells(caught["a.png"]), transfer_cells(caught["b.png"])
    assert len(first) >= 3 * 6 and sorted(first) == sorted(second)
    assert first == second


def series_points(fig) -> dict[str, tuple]:
    """``transferability_curves``: each legend label's line, matched by colour, with its marker
    (which must be the legend entry's)."""
    (legend,) = fig.legends
    shown = {}
    ax = fig.axes[0]
    for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
        lines = [
            line
            for line in ax.lines
            if hexed(line.get_color()) == hexed(handle.get_color())
            and len(line.get_xdata())
            and line.get_marker() not in ("None", "", None)
        ]
        if handle.get_marker() in ("None", "", None):
            continue
        (line,) = lines
        assert line.get_marker() == handle.get_marker()
        shown[text.get_text()] = line.get_xydata().tolist()
    return shown


def test_transferability_series_in_another_order_keep_their_points_under_their_labels(tmp_path, caught, rng):
    """LOO fig. 3: one line per series, colour and marker by position, named in the legend in the
    same colour and marker; series in another order keep their points under their labels, and
    the y range (all τ, 0 and 1) stays."""
    series = [
        (name, [0, 1, 2, 4], rng.uniform(-0.1, 1.1, 4).tolist()) for name in ("standard", "linearized", "centered")
    ]
    plots.transferability_curves(series, tmp_path / "a.png")
    plots.transferability_curves(series[::-1], tmp_path / "b.png")
    first, second = series_points(caught["a.png"]), series_points(caught["b.png"])
    assert len(first) == 3 and first == second
    assert caught["a.png"].axes[0].get_ylim() == caught["b.png"].axes[0].get_ylim()


def two_layer_lines(fig) -> dict[tuple, list]:
    """``two_layer_transfer``: each net's lines by its legend label (matched by colour), per panel
    and line style; and its band."""
    (legend,) = fig.legends
    by_colour = {}
    for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
        if text.get_text().startswith("m = "):
            by_colour[hexed(handle.get_color())] = text.get_text()
    shown = {}
    for ax in fig.axes:
        for line in ax.lines:
            who = by_colour.get(hexed(line.get_color()))
            if who:
                shown[(ax.get_ylabel(), who, str(line.get_linestyle()), line.get_linewidth())] = (
                    line.get_xydata().tolist()
                )
        for band in ax.collections:
            who = by_colour.get(hexed(band.get_facecolor()[0]))
            if who:
                shown[(ax.get_ylabel(), who, "band")] = band.get_paths()[0].vertices.tolist()
    return shown


def test_two_layer_nets_in_another_order_keep_their_colour_label_and_lines(tmp_path, caught, rng):
    """TK fig. 4: one colour per width (widths in increasing order), later seeds lighter, named
    "m = width, seed s": the colour depends on the width and seed, not on the nets' order, so nets
    in another order draw the very same lines and bands under the same labels and colours."""
    nets = [
        {"width": width, "seed": seed, "epochs": [net_record(e, width, rng) for e in (0, 1, 3, 10, 30)]}
        for width in (100, 1000)
        for seed in (0, 1)
    ]
    kernel = {
        "epochs": [
            {"epoch": e, "time": 0.01 * e, "clean_accuracy": 0.9, "robust_accuracy": 0.1 + 0.01 * e}
            for e in (1, 3, 10, 30)
        ]
    }
    plots.two_layer_transfer(nets, kernel, tmp_path / "a.png")
    plots.two_layer_transfer([nets[3], nets[0], nets[2], nets[1]], kernel, tmp_path / "b.png")
    first, second = two_layer_lines(caught["a.png"]), two_layer_lines(caught["b.png"])
    assert len({key[1] for key in first}) == 4 and first == second
    colours = [legend_colours(caught[f]) for f in ("a.png", "b.png")]
    assert {k: v for k, v in colours[0].items() if k.startswith("m = ")} == {
        k: v for k, v in colours[1].items() if k.startswith("m = ")
    }


# -- bars ---------------------------------------------------------------------------------------


def bars_by_label(ax, labels: list[str], measures: dict[str, str]) -> dict[tuple, float]:
    """Each horizontal bar by (the y tick label of its group, the legend name of its colour):
    its width; and each value text by the same keys."""
    ticks = np.asarray(ax.get_yticks(), dtype=float)
    shown = {}
    for bar in ax.patches:
        y = bar.get_y() + bar.get_height() / 2
        group = labels[int(np.argmin(np.abs(ticks - y)))]
        shown[
            (
                group,
                measures.get(hexed(bar.get_facecolor()), hexed(bar.get_facecolor())),
                round(y - ticks[labels.index(group)], 9),
            )
        ] = bar.get_width()
    for text in ax.texts:
        y = text.get_position()[1]
        group = labels[int(np.argmin(np.abs(ticks - y)))]
        shown[(group, "text", round(y - ticks[labels.index(group)], 9))] = text.get_text()
    return shown


def test_nets_in_another_order_keep_each_bar_value_text_and_masking_mark(tmp_path, caught):
    """``robust_accuracy_bars``: one group per net (its name on the y axis, vermillion when masking
    is suspected), one bar per measure in the legend's colour at its place, its value beside it,
    the worst case a black line across the group. Nets in another order: every (net, measure)
    bar, text and worst-case line unchanged, the masking mark on the same net."""
    nets = [
        {"label": "fast", "accuracy": {"clean": 0.91, "pgd-20": 0.42, "autoattack": 0.12, "worst_case": 0.12},
         "masking_suspected": True},
        {"label": "robust", "accuracy": {"clean": 0.81, "pgd-20": 0.52, "pgd-100": 0.50, "autoattack": 0.47,
                                         "worst_case": 0.47}},
        {"label": "plain", "accuracy": {"clean": 0.97, "pgd-20": 0.01}},
    ]  # fmt: skip
    plots.robust_accuracy_bars(nets, tmp_path / "a.png")
    plots.robust_accuracy_bars([nets[2], nets[0], nets[1]], tmp_path / "b.png")
    read = []
    for fig in (caught["a.png"], caught["b.png"]):
        ax = fig.axes[0]
        measures = {
            hexed(h.get_facecolor()): t.get_text()
            for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles, strict=True)
            if hasattr(h, "get_facecolor") and t.get_text() in ("clean", "PGD-20", "PGD-100", "AutoAttack")
        }
        labels = [t.get_text().split("\n")[0] for t in ax.get_yticklabels()]
        worst = {labels[round(np.mean(line.get_ydata()))]: line.get_xdata()[0] for line in ax.lines}
        masked = sorted(t.get_text().split("\n")[0] for t in ax.get_yticklabels() if hexed(t.get_color()) == "#d55e00")
        read.append((bars_by_label(ax, labels, measures), worst, masked))
    assert read[0][0] == read[1][0] and len(read[0][0]) == 2 * 9 + 2  # bars, values, two worst-case numbers
    assert read[0][1] == read[1][1] == {"fast": 0.12, "robust": 0.47}
    assert read[0][2] == read[1][2] == ["fast"]


def test_switch_cost_runs_in_another_order_keep_each_runs_bars_and_texts(tmp_path, caught):
    """``switch_cost_bars``: per run (its tick names it and its switch) stacked seconds (clean,
    then adversarial, their total written at the end) and its clean and PGD accuracy bars with
    their values. Runs in another order keep every bar and text under their run's tick."""
    runs = [
        {"label": "full AT", "mode": "pgd", "switch_epoch": None, "seconds_clean": 0.0,
         "seconds_adversarial": 300.0, "test_clean": 0.80, "test_pgd": 0.45},
        {"label": "switch 3", "mode": "pgd", "switch_epoch": 3, "seconds_clean": 30.0,
         "seconds_adversarial": 200.0, "test_clean": 0.83, "test_pgd": 0.41, "cost_of_full_at": 0.77},
        {"label": "switch 5", "mode": "pgd", "switch_epoch": 5, "seconds_clean": 50.0,
         "seconds_adversarial": 150.0, "test_clean": 0.86, "test_pgd": 0.36, "cost_of_full_at": 0.67,
         "test_clean_std": 0.01, "test_pgd_std": 0.02},
    ]  # fmt: skip
    plots.switch_cost_bars({"runs": runs}, tmp_path / "a.png")
    plots.switch_cost_bars({"runs": [runs[1], runs[2], runs[0]]}, tmp_path / "b.png")
    read = []
    for fig in (caught["a.png"], caught["b.png"]):
        seconds, accuracy = fig.axes[0], fig.axes[1]
        labels = [t.get_text() for t in seconds.get_yticklabels()]
        shown = {}
        for ax in (seconds, accuracy):
            for key, value in bars_by_label(ax, labels, {}).items():
                shown[(ax.get_title(), *key)] = value
            for bar in ax.patches:
                if ax is seconds:  # a stacked bar starts where the clean seconds end
                    y = bar.get_y() + bar.get_height() / 2
                    shown[(labels[round(y)], "starts at", hexed(bar.get_facecolor()))] = bar.get_x()
        read.append(shown)
    assert read[0] == read[1] and len(read[0]) >= 3 * 5


def spawn_points(fig) -> dict[tuple, list]:
    """``spawn_accuracy_curves``: per panel (parent) and kind (the legend name of the line's
    colour), the clean and PGD lines' points with x taken back to the spawn epoch (the kinds are
    dodged sideways by a few hundredths of the panel's span); the parent's grey lines."""
    (legend,) = fig.legends
    kinds = {
        hexed(h.get_color()): t.get_text()
        for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
        if hasattr(h, "get_color")
    }
    shown = {}
    for ax in fig.axes:
        for line in ax.lines:
            kind = kinds.get(hexed(line.get_color()))
            if kind is None or line.get_linewidth() == 1.0:
                kind = "parent"
            x, y = line.get_xdata(), line.get_ydata()
            assert np.all(np.abs(x - np.round(x)) < 0.1)  # dodged by less than a tenth of an epoch here
            shown[(ax.get_title(), kind, str(line.get_linestyle()))] = list(
                zip(np.round(x).tolist(), y.tolist(), strict=True)
            )
    return shown


def test_spawned_lines_in_another_order_keep_each_kinds_points_in_its_parents_panel(tmp_path, caught):
    """LOO fig. 2: one panel per parent, a colour per kind named in the legend, the parent's own
    accuracy in grey. Lines given in another order change the colours and the sideways dodge,
    never which points a kind's line draws in which parent's panel."""

    def line(parent, kind, mode, shift):
        points = [
            {"spawn_epoch": e, "test_clean": 0.5 + shift + 0.01 * e, "test_pgd": 0.2 + shift - 0.01 * e}
            for e in (0, 1, 2)
        ]
        return {"parent": parent, "parent_label": parent, "kind": kind, "mode": mode, "points": points}

    lines = [
        line("p1", "linearized", "standard", 0.0),
        line("p1", "centered", "standard", 0.1),
        line("p2", "centered", "pgd", 0.2),
        line("p2", "linearized", "standard", 0.3),
    ]
    parents = [{"path": "p1", "epochs": [0, 1, 2], "test_clean": [0.3, 0.6, 0.7], "test_pgd": [0.1, 0.2, 0.25]}]
    plots.spawn_accuracy_curves({"lines": lines, "parents": parents}, tmp_path / "a.png")
    plots.spawn_accuracy_curves({"lines": lines[::-1], "parents": parents}, tmp_path / "b.png")
    first, second = spawn_points(caught["a.png"]), spawn_points(caught["b.png"])
    assert len({key[1] for key in first}) == 4 and first == second


# -- features -------------------------------------------------------------------------------------


def feature_panels(fig) -> dict[str, tuple]:
    """Per panel title: the features' points with their sizes and colour values (as a set: the
    drawing order is by eigenvalue), the chance level and the axis limits."""
    shown = {}
    for ax in fig.axes:
        if not ax.collections or not ax.get_title():
            continue
        points = ax.collections[0]
        rows = np.column_stack([points.get_offsets(), points.get_sizes(), points.get_array()])
        chance = [line.get_ydata()[0] for line in ax.lines]
        shown[ax.get_title()] = (sorted(map(tuple, rows.tolist())), chance, ax.get_xlim(), ax.get_ylim())
    return shown


def test_features_and_panels_permuted_draw_the_same_points_under_each_title(tmp_path, caught, rng):
    """TK fig. 2 right: every feature a point (robustness, usefulness), sized and coloured by its
    eigenvalue, the limits shared by all panels. Features listed in another order (each with its
    index, eigenvalue, scores) and panels in another order draw the same points under each
    panel's title (Spearman of index and robustness included), on the same limits."""
    made = {}
    for name in ("fc", "cnn"):
        m = 12
        made[name] = (rng.uniform(0, 0.6, m), rng.uniform(0.4, 1, m), np.sort(10 ** rng.uniform(-3, 1, m))[::-1])
    plots.robustness_usefulness([(n, feature_scores(*made[n][:2], 0.5, made[n][2])) for n in made], tmp_path / "a.png")
    permuted = []
    for n in reversed(list(made)):
        robustness, usefulness, eigen = made[n]
        perm = rng.permutation(robustness.size)
        scores = feature_scores(robustness[perm], usefulness[perm], 0.5, eigen[perm])
        scores = dataclasses.replace(scores, index=np.arange(robustness.size)[perm])
        permuted.append((n, scores))
    plots.robustness_usefulness(permuted, tmp_path / "b.png")
    first, second = feature_panels(caught["a.png"]), feature_panels(caught["b.png"])
    assert len(first) == 2 and first.keys() == second.keys()
    for title, drawn_a in first.items():
        drawn_b = second[title]
        np.testing.assert_allclose(drawn_b[0], drawn_a[0], rtol=RTOL)
        assert drawn_b[1:] == drawn_a[1:], title
