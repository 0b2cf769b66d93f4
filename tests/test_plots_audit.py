"""What the robust-accuracy, eigen-feature, transfer and kernel-picture figures and the shared
style helpers draw, artist by artist (a mutation audit of ``plots.evaluation``, ``plots.features``,
``plots.transfer``, ``plots.kernel_images``, ``plots._style`` and ``plots.types``; complements
tests/test_figures_audit.py).

The independent route: the inputs are small arrays and dicts written here; what each artist must
hold is worked out by hand from the docstrings (bar heights and annotations, limits padded by
8 % and clamped to [−0.02, 1.02], the chance label's free place, the ink of a cell from the
luminance of its colour, class-block edges from the class counts, a PNG's pixels from its size
in inches at 150 dpi) and compared with the artists caught as the figure is saved (``drawn``).
The types of ``plots.types`` are checked against the producers' real objects and by drawing
records built from the keys the types declare.
"""

from __future__ import annotations

import itertools
import struct
import typing

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb

from ntkrobust import plots
from ntkrobust.kernels.features import FeatureScores
from ntkrobust.kernels.robust_only import RobustOnlyResult
from ntkrobust.plots import types
from ntkrobust.plots._style import _line, _notes, _plain, _pyplot, _save, _show_gradient, _show_image


def subtitle_of(fig) -> str:
    (note,) = [a for a in fig.artists if a.get_gid() == "subtitle"]
    return " ".join(note.get_text().split())


# -- robust accuracy (evaluate) --------------------------------------------------------------------


def test_each_bar_is_annotated_with_its_value_and_a_nan_is_no_bar(tmp_path, drawn):
    """Every finite accuracy is a bar 0.8 / k × 0.92 high (k measures) with its value to three
    digits just right of its end; a NaN accuracy and a NaN worst case draw nothing; the axis
    holds accuracies up to 1 with room for the annotations (0 to 1.1, ticks every 0.2)."""
    accuracy = {"clean": 0.9125, "pgd-20": 0.5, "autoattack": float("nan"), "worst_case": float("nan")}
    plots.robust_accuracy_bars([{"label": "net", "accuracy": accuracy}], tmp_path / "bars.png")
    fig = drawn["bars.png"]
    ax = fig.axes[0]
    height = 0.8 / 3  # three measures are present: clean, pgd-20, autoattack
    assert [bar.get_width() for bar in ax.patches] == [0.9125, 0.5]
    np.testing.assert_allclose([bar.get_height() for bar in ax.patches], [height * 0.92] * 2, rtol=1e-12)
    texts = {t.get_text(): t.get_position() for t in ax.texts}
    assert set(texts) == {"0.912", "0.500"}  # .3f rounds 0.9125 to even
    np.testing.assert_allclose(texts["0.912"], (0.9125 + 0.01, 0 - height), rtol=0, atol=1e-12)
    np.testing.assert_allclose(texts["0.500"], (0.5 + 0.01, 0.0), rtol=0, atol=1e-12)
    assert [line for line in ax.lines if to_hex(line.get_color()) == "#000000"] == []
    assert ax.get_xlim() == (0.0, 1.1)
    np.testing.assert_allclose(ax.get_xticks(), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], rtol=0, atol=1e-12)


def test_the_worst_case_is_in_the_legend_only_when_recorded(tmp_path, drawn):
    """No net with a worst case: the legend names the measures only."""
    plots.robust_accuracy_bars([{"label": "net", "accuracy": {"clean": 0.9}}], tmp_path / "plain.png")
    assert [t.get_text() for t in drawn["plain.png"].legends[0].get_texts()] == ["clean"]
    nets = [{"label": "net", "accuracy": {"clean": 0.9, "worst_case": 0.4}}]
    plots.robust_accuracy_bars(nets, tmp_path / "worst.png")
    texts = [t.get_text() for t in drawn["worst.png"].legends[0].get_texts()]
    assert texts == ["clean", "worst case\nover the attacks"]
    nets = [{"label": "net", "accuracy": {"clean": 0.9, "autoattack": 0.4, "worst_case": 0.4}}]
    plots.robust_accuracy_bars(nets, tmp_path / "autoattack.png")
    assert "AutoAttack: Croce & Hein 2020" in subtitle_of(drawn["autoattack.png"])  # the reference in the subtitle


# -- eigen-features --------------------------------------------------------------------------------


def feature_scores(robustness, usefulness, chance, eigenvalue=None) -> FeatureScores:
    m = len(robustness)
    return FeatureScores(
        index=np.arange(m),
        eigenvalue=np.linspace(4.0, 1.0, m) if eigenvalue is None else np.asarray(eigenvalue, dtype=float),
        usefulness=np.asarray(usefulness, dtype=float),
        robustness=np.asarray(robustness, dtype=float),
        chance=chance,
        n_examples=20,
    )


def test_narrow_features_get_a_tenth_wide_axis_and_wide_ones_stop_near_0_and_1(tmp_path, drawn):
    """Robustness within 0.05 (0.30-0.35): the x axis is 0.1 wide about its centre 0.325, padded
    8 % of that; robustness 0-0.5 and usefulness up to 1: padding is clamped at −0.02 and 1.02."""
    narrow = feature_scores([0.30, 0.35, 0.32], [0.6, 0.8, 0.7], 0.5)
    wide = feature_scores([0.0, 0.5, 0.25], [0.5, 1.0, 0.7], 0.5)
    plots.robustness_usefulness([("narrow", narrow)], tmp_path / "n.png")
    plots.robustness_usefulness([("wide", wide)], tmp_path / "w.png")
    ax = next(a for a in drawn["n.png"].axes if a.get_title().startswith("narrow:"))
    np.testing.assert_allclose(ax.get_xlim(), (0.275 - 0.008, 0.375 + 0.008), rtol=1e-12)
    ax = next(a for a in drawn["w.png"].axes if a.get_title().startswith("wide:"))
    np.testing.assert_allclose(ax.get_xlim(), (-0.02, 0.5 + 0.04), rtol=1e-12)
    np.testing.assert_allclose(ax.get_ylim(), (0.5 - 0.04, 1.02), rtol=1e-12)


class Spots:
    """The three attributes ``_chance_label_place`` reads."""

    def __init__(self, robustness, usefulness, chance):
        self.robustness, self.usefulness, self.chance = np.asarray(robustness), np.asarray(usefulness), chance


def test_the_chance_label_goes_right_above_then_below_then_further_left():
    """On [0, 1]² with chance 0.5: free, the label sits at the right (0.9) above the line; a
    feature just above it there moves it below; features on both sides move it left to 0.7."""
    from ntkrobust.plots.features import _chance_label_place

    unit = ((0.0, 1.0), (0.0, 1.0))
    assert _chance_label_place(Spots([0.1], [0.9], 0.5), *unit) == (0.9, "bottom")
    assert _chance_label_place(Spots([0.9], [0.55], 0.5), *unit) == (0.9, "top")
    assert _chance_label_place(Spots([0.9, 0.9], [0.55, 0.45], 0.5), *unit) == (0.7, "bottom")


def test_the_feature_panel_title_shade_and_chance_label(tmp_path, drawn):
    """The title gives the number of features and Spearman(index, robustness), here by hand −0.8
    (robustness ranks 4, 5, 2, 3, 1 against 1-5); equal eigenvalues give every marker the largest
    size 122; a zero eigenvalue still has a positive colour on the log scale; the chance label
    sits on the chance line; the useful, non-robust corner is shaded from chance up to 1 and
    from robustness 0 to the threshold, which the subtitle names."""
    scores = feature_scores([0.3, 0.4, 0.1, 0.2, 0.0], [0.6, 0.7, 0.8, 0.65, 0.75], 0.55, [1.0] * 5)
    plots.robustness_usefulness([("net", scores)], tmp_path / "f.png", useful_non_robust_below=0.15)
    fig = drawn["f.png"]
    ax = next(a for a in fig.axes if a.get_title().startswith("net:"))
    ranks = np.array([4, 5, 2, 3, 1]) - 3.0
    rho = float(ranks @ (np.arange(5) - 2.0) / np.sqrt((ranks @ ranks) * 10.0))
    assert rho == pytest.approx(-0.8)
    assert ax.get_title() == f"net: first 5 features\nSpearman(index, robustness) = {rho:.2f}"
    (points,) = [c for c in ax.collections if c.get_offsets().shape[0] == 5]
    np.testing.assert_allclose(points.get_sizes(), [122.0] * 5, rtol=1e-12)
    (label,) = [t for t in ax.texts if t.get_text() == "chance"]
    assert label.get_position()[1] == 0.55
    (corner,) = [c for c in ax.collections if c is not points]
    vertices = corner.get_paths()[0].vertices
    assert (vertices[:, 0].min(), vertices[:, 0].max()) == (0.0, 0.15)
    assert (vertices[:, 1].min(), vertices[:, 1].max()) == (0.55, 1.0)
    assert "shaded: useful, robustness ≤ 0.15" in subtitle_of(fig)

    zero = feature_scores([0.3, 0.4, 0.1], [0.6, 0.7, 0.8], 0.5, [4.0, 1.0, 0.0])
    plots.robustness_usefulness([("zero", zero)], tmp_path / "z.png")
    ax = next(a for a in drawn["z.png"].axes if a.get_title().startswith("zero:"))
    colours = np.asarray(ax.collections[0].get_array())
    assert colours.min() > 0 and list(colours[1:]) == [1.0, 4.0]  # small eigenvalues first
    assert np.isfinite(ax.collections[0].get_sizes()).all()


def test_the_gallery_names_each_row_and_blanks_missing_features(tmp_path, drawn, rng):
    """Rows of 2 and 0 features: each row named after its architecture, the second row's unused
    columns switched off and its first saying "none"; the first row does not."""
    image = rng.uniform(0, 1, (1, 4, 4))
    rows = [("fc2", rng.normal(size=(2, 1, 4, 4)), ["a", "b"]), ("cnn", np.zeros((0, 1, 4, 4)), [])]
    plots.feature_gallery(image, rows, tmp_path / "g.png")
    axes = np.array(drawn["g.png"].axes).reshape(2, 3)
    assert [axes[r, 0].get_ylabel() for r in range(2)] == ["fc2", "cnn"]
    assert [t.get_text() for t in axes[1, 1].texts] == ["none"] and len(axes[0, 1].texts) == 0
    assert [ax.axison for ax in axes[1, 1:]] == [False, False] and [ax.axison for ax in axes[0, 1:]] == [True, True]


def test_robust_only_panels_share_one_legend_on_the_right_and_the_full_accuracy_range(tmp_path, drawn):
    results = [RobustOnlyResult(r=r, clean=0.9, fgsm_own=0.1, pgd_own=0.0, fgsm_transfer=0.5, pgd_transfer=0.4)
               for r in (1, 10)]  # fmt: skip
    plots.robust_only_curves([("a", results), ("b", results, None)], tmp_path / "r.png")
    left, right = (ax for ax in drawn["r.png"].axes if ax.get_title() in ("a", "b"))
    assert left.get_legend() is None and right.get_legend() is not None
    assert left.get_ylim() == right.get_ylim() == (-0.02, 1.02)


def test_a_narrow_robust_only_panel_names_no_r_into_another(tmp_path, drawn):
    """One panel of r = 1, 2, 5, ..., 100 and all 1000 (the README's MNIST features command):
    "50" ran into "100" and "10" touched "20". The labels drawn are at least half their font size
    apart; "all (1000)" and the powers of ten are named, the ticks of the others stay."""
    rs = (1, 2, 5, 10, 20, 50, 100, 1000)
    results = [RobustOnlyResult(r=r, clean=0.9, fgsm_own=0.1, pgd_own=0.0, fgsm_transfer=0.5, pgd_transfer=0.4)
               for r in rs]  # fmt: skip
    plots.robust_only_curves([("fc2", results, 1000)], tmp_path / "r.png")
    fig = drawn["r.png"]
    (ax,) = (ax for ax in fig.axes if ax.get_title() == "fc2")
    fig.draw_without_rendering()
    named = [(t.get_text(), t.get_window_extent()) for t in ax.get_xticklabels() if t.get_text()]
    assert {"1", "10", "100", "all (1000)"} <= {text for text, _ in named}
    assert [float(t) for t in ax.get_xticks()] == [float(r) for r in rs]
    gap = 0.5 * ax.get_xticklabels()[0].get_fontsize() * fig.dpi / 72
    assert all(b.x0 - a.x1 >= gap for (_, a), (_, b) in itertools.pairwise(named)), named


# -- transfer heatmap and curves -------------------------------------------------------------------


def luminance_ink(cmap_name: str, value: float) -> str:
    from matplotlib import colormaps

    r, g, b, _ = colormaps[cmap_name](float(np.clip(value, 0.0, 1.0)))
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "black"


def test_heatmap_colours_span_0_to_1_and_each_cells_ink_contrasts(tmp_path, drawn):
    """The colour scale is [0, 1] whatever the values (0.2-0.4 here), dark cells (magma at 0.05)
    read in white and light ones (0.95) in black; each panel's colour bar names its quantity."""
    accuracy = np.array([[0.05, 0.95], [0.2, 0.4]])
    plots.transfer_heatmap(["a", "b"], ["x", "y"], accuracy, tmp_path / "h.png",
                           transferability=(["x"], np.array([[0.1], [0.9]])))  # fmt: skip
    acc_ax, tau_ax = (ax for ax in drawn["h.png"].axes if ax.get_title() in ("accuracy", "transferability τ"))
    norm = acc_ax.images[0].norm
    assert (norm.vmin, norm.vmax) == (0.0, 1.0)
    for text in acc_ax.texts:
        j, i = (round(v) for v in text.get_position())
        assert to_hex(text.get_color()) == to_hex(luminance_ink("magma", accuracy[i, j])), text.get_text()
    assert {t.get_text(): to_hex(t.get_color()) for t in acc_ax.texts}["0.05"] == to_hex("white")
    assert {t.get_text(): to_hex(t.get_color()) for t in acc_ax.texts}["0.95"] == to_hex("black")
    assert acc_ax.images[0].colorbar.ax.get_ylabel() == "accuracy\n(low = strong attack)"
    assert tau_ax.images[0].colorbar.ax.get_ylabel() == "transferability τ"


def test_own_cells_are_not_coloured_and_a_source_of_only_own_cells_is_dropped(tmp_path, drawn):
    """Two targets and their own columns: the "own" cells are masked (light grey) in the image;
    a τ panel whose only column is the single target's own is not drawn at all, and the
    subtitle explains "own" only where such a cell is shown."""
    accuracy = np.array([[0.9, 0.1, 0.05, 0.4], [0.8, 0.2, 0.5, 0.1]])
    plots.transfer_heatmap(["a", "b"], ["clean", "own", "a", "b"], accuracy, tmp_path / "own.png", own_column="own")
    (ax,) = [ax for ax in drawn["own.png"].axes if ax.get_title() == "accuracy"]
    np.testing.assert_array_equal(np.ma.getmaskarray(ax.images[0].get_array()), [[0, 0, 1, 0], [0, 0, 0, 1]])
    assert '"own": the target\'s own examples' in subtitle_of(drawn["own.png"])

    plots.transfer_heatmap(["a"], ["clean", "own", "a"], accuracy[:1, :3], tmp_path / "one.png",
                           transferability=(["a"], np.array([[1.0]])), own_column="own")  # fmt: skip
    assert [ax.get_title() for ax in drawn["one.png"].axes if ax.get_title()] == ["accuracy"]
    plots.transfer_heatmap(["a"], ["clean", "own"], accuracy[:1, :2], tmp_path / "none.png", own_column="own")
    assert '"own"' not in subtitle_of(drawn["none.png"])


def test_stacked_panels_each_name_the_targets_and_long_columns_are_rotated(tmp_path, drawn, rng):
    """Many sources stack the panels, each with the targets' names; side by side only the first
    has them. Column labels longer than 6 characters are rotated 40°, short ones not."""
    columns = [f"source {k}" for k in range(20)]
    plots.transfer_heatmap(["a", "b"], columns, rng.uniform(0, 1, (2, 20)), tmp_path / "s.png",
                           transferability=(columns, rng.uniform(0, 1, (2, 20))))  # fmt: skip
    heat = [ax for ax in drawn["s.png"].axes if ax.get_title()]
    assert [[t.get_text() for t in ax.get_yticklabels()] for ax in heat] == [["a", "b"], ["a", "b"]]
    assert {t.get_rotation() for t in heat[0].get_xticklabels()} == {40.0}
    plots.transfer_heatmap(["a", "b"], ["x", "y"], rng.uniform(0, 1, (2, 2)), tmp_path / "n.png",
                           transferability=(["x", "y"], rng.uniform(0, 1, (2, 2))))  # fmt: skip
    heat = [ax for ax in drawn["n.png"].axes if ax.get_title()]
    assert [[t.get_text() for t in ax.get_yticklabels()] for ax in heat] == [["a", "b"], ["", ""]]
    assert {t.get_rotation() for t in heat[0].get_xticklabels()} == {0.0}


def test_each_transferability_series_has_its_own_marker_as_in_the_legend(tmp_path, drawn):
    series = [(name, [1, 2], [0.2, 0.4]) for name in ("standard", "linearized", "centered")]
    plots.transferability_curves(series, tmp_path / "tau.png")
    fig = drawn["tau.png"]
    legend = {t.get_text(): h for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles, strict=True)}
    curves = [line for line in fig.axes[0].lines if list(line.get_xdata()) == [1.0, 2.0]]
    markers = {to_hex(line.get_color()): line.get_marker() for line in curves}
    assert [markers[to_hex(legend[name].get_color())] for name, *_ in series] == ["o", "s", "^"]
    assert [legend[name].get_marker() for name, *_ in series] == ["o", "s", "^"]


# -- class-sorted kernel picture -------------------------------------------------------------------


def test_class_blocks_are_outlined_between_classes_and_only_present_classes_named(tmp_path, drawn):
    """Labels 2, 0, 2, 0, 0 of classes "zero", "one", "two": blocks of 3 and 2 points, one white
    line each way at the boundary 2.5 (none at the picture's edges), the absent class "one" not
    named, the names alike on both axes and turned upright when long; a non-square kernel or
    labels of the wrong length are refused."""
    kernel = np.arange(25.0).reshape(5, 5)
    plots.kernel_image(kernel, np.array([2, 0, 2, 0, 0]), tmp_path / "k.png", class_names=["zero", "one", "two"],
                       title="kernel")  # fmt: skip
    fig = drawn["k.png"]
    ax = next(a for a in fig.axes if a.images)
    # (the empty class between them repeats the boundary: the same line twice)
    assert {line.get_ydata()[0] for line in ax.lines if list(line.get_xdata()) == [0, 1]} == {2.5}
    assert {line.get_xdata()[0] for line in ax.lines if list(line.get_ydata()) == [0, 1]} == {2.5}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["zero", "two"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["zero", "two"]
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {90.0}
    assert ax.images[0].colorbar.ax.get_ylabel() == "Θ(x, x′)"
    with pytest.raises(ValueError, match="square"):
        plots.kernel_image(np.zeros((3, 4)), np.zeros(3, dtype=int), tmp_path / "b.png", class_names=["a"], title="t")
    with pytest.raises(ValueError, match="square"):
        plots.kernel_image(np.zeros((3, 3)), np.zeros(4, dtype=int), tmp_path / "b.png", class_names=["a"], title="t")


# -- the shared style helpers ----------------------------------------------------------------------


def test_images_and_gradients_are_shown_on_their_documented_scales(rng):
    """An input in [0, 1]: grey on the fixed scale [0, 1], colour clipped to it; a grey gradient
    on a scale symmetric about 0 (±1 for an all-zero gradient, not a degenerate [0, 0])."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3)
    _show_image(axes[0], np.full((1, 3, 3), 0.4))
    assert axes[0].images[0].get_clim() == (0.0, 1.0)
    colour = rng.uniform(-0.5, 1.5, (3, 4, 4))
    _show_image(axes[1], colour)
    np.testing.assert_array_equal(axes[1].images[0].get_array(), np.clip(np.transpose(colour, (1, 2, 0)), 0, 1))
    _show_gradient(axes[2], np.zeros((1, 3, 3)))
    assert axes[2].images[0].get_clim() == (-1.0, 1.0)
    plt.close(fig)


def test_a_line_leaves_out_what_it_cannot_draw_and_marks_only_short_series():
    """``_line`` returns how many points it left out (NaN, and on a log axis 0 and below); a
    series of up to 40 points has markers, white-faced unless solid; a longer one none."""
    plt = _pyplot()
    fig, ax = plt.subplots()
    assert _line(ax, [1, 2, 3, 4], [1.0, 0.0, np.nan, 2.0], "red", "--", "o", log=True) == 2
    (line,) = ax.lines
    assert list(line.get_xdata()) == [1.0, 4.0] and list(line.get_ydata()) == [1.0, 2.0]
    assert to_rgb(line.get_markerfacecolor()) == to_rgb("white")
    assert _line(ax, np.arange(40), np.ones(40), "red", "-", "o") == 0
    assert ax.lines[1].get_marker() == "o" and to_rgb(ax.lines[1].get_markerfacecolor()) == to_rgb("red")
    _line(ax, np.arange(41), np.ones(41), "red", "-", "o")
    assert ax.lines[2].get_marker() in ("None", "", None)
    plt.close(fig)


def test_notes_show_five_lines_and_count_the_rest():
    plt = _pyplot()
    fig = plt.figure(figsize=(6, 3))
    _notes(fig, [(f"metric {k}", f"reason {k}") for k in range(6)])
    lines = fig._supxlabel.get_text().split("\n")
    assert len(lines) == 6 and lines[-1] == "(and 1 more)" and lines[4].startswith("not shown: metric 4")
    plt.close(fig)


def test_user_text_is_not_read_as_mathtext_and_figures_are_saved_at_150_dpi(tmp_path):
    assert _plain("net $x$ 5") == r"net \$x\$ 5"
    plt = _pyplot()
    fig = plt.figure(figsize=(2.0, 1.0))
    _save(fig, tmp_path / "f.png")
    header = (tmp_path / "f.png").read_bytes()[16:24]
    assert struct.unpack(">II", header) == (300, 150)


# -- plots.types against the producers and the figures -----------------------------------------


def declared(typed_dict) -> set[str]:
    return set(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


def protocol_members(protocol) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_the_protocols_name_attributes_of_the_kernels_results():
    """Every member of ``FeatureScoresLike`` and ``RobustOnlyPoint`` is an attribute of the result
    class it describes (a misspelt member would describe nothing)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(FeatureScores)} | set(vars(FeatureScores))
    assert protocol_members(types.FeatureScoresLike) <= fields
    assert protocol_members(types.RobustOnlyPoint) == {f.name for f in dataclasses.fields(RobustOnlyResult)}


def test_every_record_key_is_optional():
    """A figure draws what is there: no key of a record type is required."""
    for name in types.__all__:
        kind = getattr(types, name)
        if typing.is_typeddict(kind):
            assert kind.__required_keys__ == frozenset(), name


def test_records_built_from_the_declared_keys_are_drawn(tmp_path, drawn):
    """Records whose keys are exactly those ``TwoLayerEpoch``, ``KernelMachineEpoch`` and
    ``EvaluatedNet`` declare: every accuracy line of the two-layer figure (and the NTK machine's
    own attack) is drawn, and the evaluated net's masking mark shows."""
    epoch_keys, kernel_keys = declared(types.TwoLayerEpoch), declared(types.KernelMachineEpoch)
    assert {"epoch", "time", "gradient_cosine", "gradient_cosine_q25", "gradient_cosine_q75"} <= epoch_keys
    epochs = [{key: float(e) if key in ("epoch", "time") else 0.5 for key in epoch_keys} for e in (1, 2, 3)]
    kernel = [{key: float(e) if key in ("epoch", "time") else 0.25 for key in kernel_keys} for e in (1, 2, 3)]
    net = {key: 0.5 for key in declared(types.TwoLayerNet)} | {"width": 10, "seed": 0, "epochs": epochs}
    plots.two_layer_transfer([net], {"epochs": kernel}, tmp_path / "t.png")
    fig = drawn["t.png"]
    bottom = next(ax for ax in fig.axes if ax.get_ylabel() == "accuracy")
    assert len(bottom.get_lines()) == 4 + 2  # the net's four accuracies, the machine's two
    assert {"NTK machine:\nits own attack", "NTK machine: clean"} <= {t.get_text() for t in fig.legends[0].get_texts()}

    record = {key: True for key in declared(types.EvaluatedNet)} | {"label": "net", "accuracy": {"clean": 0.9}}
    plots.robust_accuracy_bars([record], tmp_path / "e.png")
    assert "gradient masking suspected" in drawn["e.png"].axes[0].get_yticklabels()[0].get_text()


def test_r_values_each_half_again_the_last_are_all_named():
    """r = 1, 2, 3, 5, 10: each at least 1.5 times the one before (3 / 2 exactly), few enough:
    every r is a tick, not just the powers of ten."""
    from ntkrobust.plots.features import _r_ticks

    plt = _pyplot()
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    _r_ticks(ax, np.array([1, 2, 3, 5, 10]), None)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "5", "10"]
    plt.close(fig)


def test_an_empty_panel_says_why_at_its_centre_whatever_its_data_limits():
    """``_empty`` on a panel whose data limits are not 0-1 (a bar panel of 6 nets) puts its text at
    the panel's centre: the text's anchor read back in display coordinates is the axes' centre."""
    from ntkrobust.plots._style import _empty, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    try:
        ax.set_xlim(0, 1.1)
        ax.set_ylim(5.5, -0.5)  # as barh draws 6 nets, top to bottom
        _empty(ax, "no net was evaluated")
        (text,) = ax.texts
        anchor = text.get_transform().transform(text.get_position())
        centre = ax.transAxes.transform((0.5, 0.5))
        np.testing.assert_allclose(anchor, centre, atol=1e-9)
    finally:
        plt.close(fig)
