"""Twelfth audit (mutation testing) of the non-dynamics figures: ``plots.features``,
``plots.transfer``, ``plots.two_layer``, ``plots.evaluation``, ``plots.kernel_images`` and the
shared ``plots._style``.

Each test pins what a figure draws (artists' data, labels, colours, scales) against an
independent route: small inputs written here and what they must become worked out by hand or in
plain numpy. Figures are caught as they are saved (the ``drawn`` fixture of ``conftest``).
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb

from ntkrobust import plots
from ntkrobust.kernels.features import FeatureScores
from ntkrobust.plots._style import (
    _RUN_COLOURS,
    _band,
    _epoch_ticks,
    _heading,
    _legend,
    _notes,
    _pyplot,
    _readable_log_axis,
    _shade,
    _show_gradient,
    _tick_number,
)

# -- plots._style: the shared helpers ---------------------------------------------------------


def test_a_grey_gradient_is_red_where_it_raises_the_score_on_a_scale_symmetric_about_0():
    """``_show_gradient`` (grey): the diverging map with red for positive values (RdBu reversed:
    its top end is red) and the limits ±max|g|, here set by the most negative pixel, so that 0
    sits at the map's white centre. A colour gradient is rescaled to [0, 1] by its own min and
    max, computed here by hand."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2)
    grey = np.array([[[-3.0, 1.0], [0.5, 0.0]]])
    _show_gradient(axes[0], grey)
    image = axes[0].images[0]
    assert image.get_clim() == (-3.0, 3.0)
    top = image.get_cmap()(1.0)
    assert top[0] > 0.3 > top[2], "the top of the map (positive gradients) must be red"
    colour = np.arange(12, dtype=np.float64).reshape(3, 2, 2) - 4.0  # min -4, max 7
    _show_gradient(axes[1], colour)
    expected = np.transpose((colour + 4.0) / 11.0, (1, 2, 0))
    np.testing.assert_allclose(np.asarray(axes[1].images[0].get_array()), expected, rtol=1e-12)
    plt.close(fig)


def test_a_shade_moves_a_colour_towards_white_for_positive_amounts_and_black_for_negative():
    """``_shade(c, a)``: c + a (1 − c) for a > 0 (lighter: later seeds), (1 − |a|) c for a < 0."""
    rgb = np.asarray(to_rgb("#0072B2"))
    np.testing.assert_allclose(_shade("#0072B2", 0.5), rgb + 0.5 * (1.0 - rgb), rtol=1e-12)
    np.testing.assert_allclose(_shade("#0072B2", -0.25), 0.75 * rgb, rtol=1e-12)
    assert _shade("#0072B2", 0.0) == tuple(float(v) for v in rgb)


def test_a_log_band_floors_at_the_lowest_seed_where_mean_minus_spread_is_not_positive():
    """``_band`` on a log axis: where mean − spread ≤ 0 (here exactly 0 and below) the band's
    floor is the lowest seed's value, not a gap; elsewhere mean ± spread."""
    plt = _pyplot()
    fig, ax = plt.subplots()
    x, mean, spread, lowest = [0, 1, 2], [1.0, 1.0, 2.0], [1.0, 2.0, 1.0], [0.2, 0.3, 0.9]
    _band(ax, x, mean, spread, lowest, "red", log=True)
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices
    xs = sorted({float(px) for px in vertices[:, 0]})
    assert xs == [0.0, 1.0, 2.0]
    floor = [float(vertices[vertices[:, 0] == px, 1].min()) for px in xs]
    ceiling = [float(vertices[vertices[:, 0] == px, 1].max()) for px in xs]
    # floors: 1 − 1 = 0 → the lowest seed 0.2; 1 − 2 < 0 → 0.3; 2 − 1 = 1; ceilings: mean + spread
    np.testing.assert_allclose(floor, [0.2, 0.3, 1.0], rtol=1e-12)
    np.testing.assert_allclose(ceiling, [2.0, 3.0, 3.0], rtol=1e-12)
    plt.close(fig)


def test_an_epoch_axis_narrower_than_one_epoch_spans_one_epoch_about_its_centre():
    """``_epoch_ticks``: an axis 0.8 epochs wide (5 to 5.8) is widened to one epoch about its
    centre 5.4, (4.9, 5.9), and its one whole epoch 5 is the only tick."""
    plt = _pyplot()
    fig, ax = plt.subplots()
    ax.set_xlim(5.0, 5.8)
    _epoch_ticks(ax.xaxis)
    np.testing.assert_allclose(ax.get_xlim(), (4.9, 5.9), rtol=1e-12)
    assert list(ax.get_xticks()) == [5.0]
    plt.close(fig)


def test_log_tick_labels_read_as_powers_of_ten_even_a_rounding_error_below_one():
    """``_tick_number``: m×10ᵏ outside the plain range; a tick a float rounding error below
    10⁻³ (how a locator may compute it) reads 10⁻³, not 10×10⁻⁴; within range a plain number."""
    just_below = np.nextafter(np.nextafter(np.nextafter(1e-3, 0.0), 0.0), 0.0)  # three ulps below 10⁻³
    assert np.floor(np.log10(just_below)) == -4  # a bare floor of log10 would say 10×10⁻⁴
    assert _tick_number(just_below, plain=False) == r"$10^{-3}$"
    assert _tick_number(2e-6, plain=False) == r"$2\times10^{-6}$"
    assert _tick_number(2000.0, plain=True) == "2000"
    assert _tick_number(0.0, plain=True) == "" and _tick_number(float("nan"), plain=False) == ""


def test_a_log_axis_up_to_ten_thousand_is_plain_and_a_short_one_labels_2_3_5():
    """``_readable_log_axis``: plain numbers for an axis within 0.001 to 10⁵ (1 to 10⁴ here:
    "1000", not 10³); on an axis of a factor 5 (more than 3, under 30) the minor ticks at 2, 3
    and 5 are labelled and the others (4) not; on one of a factor 2 every minor tick is."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3)
    axes[0].set_ylim(1.0, 1e4)
    _readable_log_axis(axes[0])
    major = axes[0].yaxis.get_major_formatter()
    assert major(1000.0, 0) == "1000" and major(10000.0, 0) == "10000"
    axes[1].set_ylim(1.0, 5.0)
    _readable_log_axis(axes[1])
    minor = axes[1].yaxis.get_minor_formatter()
    assert [minor(v, 0) for v in (2.0, 3.0, 4.0, 5.0)] == ["2", "3", "", "5"]
    axes[2].set_ylim(2.0, 4.0)
    _readable_log_axis(axes[2])
    assert axes[2].yaxis.get_minor_formatter()(4.0, 0) == "4"
    # limits set after the call are followed: wider than 30, no minor labels; beyond 10⁵, m×10ᵏ
    axes[2].set_ylim(1.0, 1e6)
    assert axes[2].yaxis.get_minor_formatter()(4.0, 0) == ""
    assert axes[2].yaxis.get_major_formatter()(1000.0, 0) == "$10^{3}$"
    plt.close(fig)


def test_the_legend_gives_solid_kernels_filled_markers_and_others_white_ones():
    """``_legend``: a run's entry in its palette colour; a kernel drawn solid has markers filled
    like its line, a dashed one white-faced markers (as ``_line`` draws them)."""
    plt = _pyplot()
    fig = plt.figure()
    _legend(fig, runs=[(0, "a"), (2, "b")], kinds=[("ntk", "NTK", "-", "o"), ("entk", "eNTK", "--", "s")])
    legend = fig.legends[0]
    handles = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles, strict=True))
    assert to_hex(handles["a"].get_color()) == to_hex(_RUN_COLOURS[0])
    assert to_hex(handles["b"].get_color()) == to_hex(_RUN_COLOURS[2])
    assert to_rgb(handles["NTK"].get_markerfacecolor()) == to_rgb("0.2")
    assert to_rgb(handles["eNTK"].get_markerfacecolor()) == to_rgb("white")
    plt.close(fig)


def test_the_heading_details_put_the_papers_reference_before_the_subtitle():
    """``_heading``: the details under the title read "ref · subtitle"."""
    plt = _pyplot()
    fig = plt.figure(figsize=(8, 3))
    _heading(fig, "Title", "what was run", ref="TK fig. 2")
    (note,) = [a for a in fig.artists if a.get_gid() == "subtitle"]
    assert note.get_text().replace("\n", " ") == "TK fig. 2 · what was run"
    plt.close(fig)


def test_notes_name_each_missing_thing_once_per_reason():
    """``_notes``: the same (what, why) twice is named once; things of one reason are listed
    together."""
    plt = _pyplot()
    fig = plt.figure(figsize=(6, 3))
    _notes(fig, [("loss", "not recorded"), ("loss", "not recorded"), ("accuracy", "not recorded")])
    assert fig._supxlabel.get_text() == "not shown: loss, accuracy (not recorded)"
    plt.close(fig)


# -- plots.features ----------------------------------------------------------------------------


def scores(robustness, usefulness, chance=0.1) -> FeatureScores:
    robustness, usefulness = np.asarray(robustness, dtype=np.float64), np.asarray(usefulness, dtype=np.float64)
    m = robustness.size
    return FeatureScores(
        index=np.arange(m),
        eigenvalue=np.logspace(0, -2, m),
        usefulness=usefulness,
        robustness=robustness,
        chance=chance,
        n_examples=50,
    )


def test_robustness_is_the_x_axis_and_usefulness_the_y_axis_by_their_labels(tmp_path, drawn):
    """TK fig. 2 right: robustness across, usefulness up; the axis labels must say so, since the
    points are drawn (robustness, usefulness)."""
    plots.robustness_usefulness([("fc", scores([0.1, 0.2, 0.6], [0.9, 0.5, 0.3]))], tmp_path / "ru.png")
    ax = drawn["ru.png"].axes[0]
    assert ax.get_xlabel().startswith("robustness") and ax.get_ylabel().startswith("usefulness")
    offsets = ax.collections[0].get_offsets()
    assert sorted(map(float, offsets[:, 0])) == [0.1, 0.2, 0.6]


def r_tick_labels(r, everything) -> list[str]:
    from ntkrobust.plots.features import _r_ticks

    plt = _pyplot()
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.plot(r, np.ones(len(r)))
    _r_ticks(ax, np.asarray(r), everything)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
    return labels


def test_r_ticks_follow_the_documented_rule():
    """``_r_ticks``, its docstring applied by hand: eight r each ≥ 1.5× the last are all named;
    nine (or closer ones) get the powers of ten, only those within [min r, max r] (2..50: just
    10, not 1 or 100); r = n is "all (n)" only when drawn, and a tick within a factor 5 of n (30
    of n = 100) is left out while one outside it (10) stays."""
    assert r_tick_labels([1, 2, 3, 5, 10, 20, 50, 100], None) == ["1", "2", "3", "5", "10", "20", "50", "100"]
    assert r_tick_labels([2, 3, 4, 5, 6, 7, 8, 9, 50], None) == ["10"]
    assert r_tick_labels([1, 2, 5], 100) == ["1", "2", "5"]
    assert r_tick_labels([1, 2, 5, 10, 30, 100], 100) == ["1", "2", "5", "10", "all (100)"]


# -- plots.transfer ----------------------------------------------------------------------------


def heatmap_axes(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def subtitle_of(fig) -> str:
    (note,) = [a for a in fig.artists if a.get_gid() == "subtitle"]
    return note.get_text().replace("\n", " ")


def test_two_panels_of_nine_sources_are_stacked_and_each_names_the_targets(tmp_path, drawn, rng):
    """``transfer_heatmap``: panels of 9 + 9 columns (more than 16 together) go one above the
    other, so the figure keeps a printable width, and each stacked panel names the targets."""
    rows, columns = ["t0", "t1"], [f"s{k}" for k in range(9)]
    accuracy, tau = rng.uniform(0, 1, (2, 9)), rng.uniform(0, 1, (2, 9))
    plots.transfer_heatmap(rows, columns, accuracy, tmp_path / "h.png", transferability=(columns, tau))
    panels = heatmap_axes(drawn["h.png"])
    top, bottom = panels["accuracy"].get_position(), panels["transferability τ"].get_position()
    assert top.y0 > bottom.y1, "the τ panel must sit below the accuracy panel"
    for ax in panels.values():
        assert [t.get_text() for t in ax.get_yticklabels()] == rows


def test_the_own_attack_is_explained_only_when_a_cell_reads_own(tmp_path, drawn):
    """The note on "own" cells is in the details only when some cell is a target's own attack:
    an ``own_column`` with no source column named after a target marks nothing."""
    accuracy = np.array([[0.9, 0.2], [0.8, 0.3]])
    plots.transfer_heatmap(["a", "b"], ["white-box", "x"], accuracy, tmp_path / "none.png", own_column="white-box")
    assert '"own"' not in subtitle_of(drawn["none.png"])
    plots.transfer_heatmap(["a", "b"], ["white-box", "a"], accuracy, tmp_path / "own.png", own_column="white-box")
    assert '"own": the target\'s own examples, shown in "white-box"' in subtitle_of(drawn["own.png"])


def test_the_own_column_itself_is_never_marked_own(tmp_path, drawn):
    """``_without_self_pairs``: only a source column named after a target, other than
    ``own_column``, repeats the target's own attack; a target that happens to share the own
    column's name keeps its value there (drawn, not "own")."""
    accuracy = np.array([[0.25, 0.5], [0.75, 0.125]])
    plots.transfer_heatmap(["own", "b"], ["own", "b"], accuracy, tmp_path / "h.png", own_column="own")
    ax = heatmap_axes(drawn["h.png"])["accuracy"]
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    assert texts == {(0, 0): "0.25", (1, 0): "0.50", (0, 1): "0.75", (1, 1): "own"}


def test_a_centered_series_explains_its_spawn_epoch_and_a_standard_one_does_not(tmp_path, drawn):
    """LOO sec. 5: a linearized or a centered net's examples sit at the epoch it was spawned
    from; the x label says so when either kind is drawn, and only then."""
    plots.transferability_curves([("centered, lr 0.1", [1, 2], [0.3, 0.4])], tmp_path / "c.png")
    assert drawn["c.png"].axes[0].get_xlabel() == "source epoch t′\n(linearized / centered nets: their spawn epoch)"
    plots.transferability_curves([("standard", [1, 2], [0.3, 0.4])], tmp_path / "s.png")
    assert drawn["s.png"].axes[0].get_xlabel() == "source epoch t′"


def test_cell_ink_follows_the_luma_of_the_cells_colour(tmp_path, drawn):
    """Each annotation is black on a light cell and white on a dark one, by the cell's luma
    (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B, dark below 0.55). magma at 0.7 is an orange
    whose luma is just light (black ink), though with red and blue weights swapped it would read
    dark; 0.1 is dark, 0.95 light."""
    from matplotlib import colormaps

    values = [0.1, 0.7, 0.95]
    plots.transfer_heatmap(["t"], ["a", "b", "c"], np.array([values]), tmp_path / "ink.png")
    ax = heatmap_axes(drawn["ink.png"])["accuracy"]
    inks = {t.get_text(): to_hex(t.get_color()) for t in ax.texts}
    for v in values:
        r, g, b, _ = colormaps["magma"](v)
        luma = 0.299 * r + 0.587 * g + 0.114 * b
        assert inks[f"{v:.2f}"] == to_hex("white" if luma < 0.55 else "black"), v
    assert inks["0.70"] == to_hex("black")


def test_the_tau_colour_bar_extends_only_past_values_outside_0_to_1(tmp_path, drawn):
    """τ is coloured on [0, 1]; the colour bar gets an arrow at an end only where some τ lies
    beyond it: τ = 0 and 1 exactly need none, −0.2 and 1.3 one at each end."""
    accuracy = np.array([[0.5, 0.5]])
    extends = {}
    for name, tau in (("edges", [[0.0, 1.0]]), ("below", [[-0.2, 1.0]]), ("both", [[-0.2, 1.3]])):
        plots.transfer_heatmap(["t"], ["a", "b"], accuracy, tmp_path / f"{name}.png", transferability=(["a", "b"], tau))
        extends[name] = heatmap_axes(drawn[f"{name}.png"])["transferability τ"].images[0].colorbar.extend
    assert extends == {"edges": "neither", "below": "min", "both": "both"}


# -- plots.two_layer ---------------------------------------------------------------------------


def test_the_ntk_time_per_epoch_ignores_records_of_time_zero():
    """``_time_per_epoch``: the median of t / epoch over the records with epoch and time both
    positive; time 0 (not yet measured) must not pull the median to 0. Here the positive
    ratios are 0.02, 0.03, 0.03 (median 0.03); counting the two zero times it would be 0.02."""
    from ntkrobust.plots.two_layer import _time_per_epoch

    net = {"width": 10, "epochs": [{"epoch": 1, "time": 0.0}, {"epoch": 2, "time": 0.0}, {"epoch": 3, "time": 0.06}]}
    kernel = {"epochs": [{"epoch": 4, "time": 0.12}, {"epoch": 2, "time": 0.06}, {"epoch": 0, "time": 0.0}]}
    assert _time_per_epoch([net], kernel) == pytest.approx(0.03)


def test_the_legend_marks_short_series_like_the_lines_solid_filled_others_white(tmp_path, drawn):
    """Two epochs (fewer than three): the accuracy lines carry markers, filled for the solid
    line (own white-box attack) and white for the dashed ones (``_line``); the legend entries
    must match what is drawn: the same marker and face per line style."""
    epochs = [
        {"epoch": e, "gradient_cosine": 0.5, "white_box_accuracy": 0.2, "ntk_attack_accuracy": 0.4,
         "clean_accuracy": 0.9, "random_accuracy": 0.8}
        for e in (1, 2)
    ]  # fmt: skip
    plots.two_layer_transfer([{"width": 10, "seed": 0, "epochs": epochs}], None, tmp_path / "t.png")
    legend = drawn["t.png"].legends[0]
    handles = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles, strict=True))
    solid, dashed = handles["net: own white-box attack"], handles["net: NTK-generated examples"]
    assert solid.get_marker() == "o" and to_rgb(solid.get_markerfacecolor()) == to_rgb("0.2")
    assert dashed.get_marker() == "s" and to_rgb(dashed.get_markerfacecolor()) == to_rgb("white")


# -- two refusals and one tick the audit led to ---------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [np.array([0, 1, 3]), np.array([0, -1, 1]), np.array([0.0, 1.0, 1.0]), np.zeros(0, dtype=int)],
    ids=["past-the-names", "negative", "float", "empty"],
)
def test_kernel_image_refuses_labels_that_name_no_class(tmp_path, labels):
    """A label past the names was an IndexError in the block outlines, an empty kernel a
    ValueError of ``max()`` on no names; a negative label an IndexError in ``bincount``."""
    n = labels.shape[0]
    with pytest.raises(ValueError, match=r"^labels must be class indices into the 3 class names"):
        plots.kernel_image(np.eye(n), labels, tmp_path / "k.png", class_names=["a", "b", "c"], title="t")
    assert not (tmp_path / "k.png").exists()


def test_a_log_tick_whose_mantissa_rounds_to_ten_takes_the_next_power():
    """9.999e-3 rounded to two decimals of its mantissa is 10: the tick reads 10⁻², not 10×10⁻³."""
    assert _tick_number(9.999e-3, plain=False) == r"$10^{-2}$"
    assert _tick_number(0.01, plain=False) == r"$10^{-2}$"
    assert _tick_number(9.9e-3, plain=False) == r"$9.9\times10^{-3}$"
