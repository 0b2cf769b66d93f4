"""What ``plots.two_layer`` draws, artist by artist, against numbers the test wrote (a mutation
audit of ``two_layer_transfer``, ``gradient_pictures`` and ``_budget``).

The records are plain dicts in the format of ``plots.types.TwoLayerNet`` / ``TwoLayerKernel``, a
few epochs each. The independent route: what an artist must hold is worked out here by hand from
the docstrings (the colour of seed j of n blended j / (n − 1) × 50 % towards white, the NTK time
per epoch as the median of t / epoch, the epoch axis padded by a factor 1.25, the cosine axis
down to the lowest cosine or quartile) and compared with the artists caught as the figure is
saved (``drawn``): legend handles, Line2D data and markers, the quartile band's vertices, the
secondary axis' limits after a draw, axis scales and limits, texts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from ntkrobust import plots
from ntkrobust.plots._style import _RUN_COLOURS
from ntkrobust.plots.two_layer import _budget

QUARTILES = "gradient cosine,\nquartiles q25-q75"
NO_COSINES = "no gradient cosines recorded"


def record(epoch: float, *, time: float | None = None, cosine: float | None = 0.9, q25=None, q75=None, acc=0.5) -> dict:
    """One measured epoch: the given cosine and quartiles, every accuracy ``acc``."""
    return {
        "epoch": epoch,
        "time": time,
        "gradient_cosine": cosine,
        "gradient_cosine_q25": q25,
        "gradient_cosine_q75": q75,
        "clean_accuracy": acc,
        "white_box_accuracy": acc / 2,
        "ntk_attack_accuracy": acc / 3,
        "random_accuracy": acc - 0.01,
    }


def kernel_of(epochs, ratio: float = 0.01) -> dict:
    return {
        "epochs": [
            {"epoch": e, "time": e * ratio, "clean_accuracy": 0.9, "robust_accuracy": 0.2 + 0.01 * i}
            for i, e in enumerate(epochs)
        ]
    }


def marker(artist) -> str:
    """The marker of a line or legend handle, "" for none."""
    return "" if artist.get_marker() in ("", "None", None) else artist.get_marker()


def legend_of(fig) -> dict:
    (legend,) = fig.legends
    return {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)}


def panels(fig):
    (top,) = [ax for ax in fig.axes if ax.get_ylabel() == "gradient cosine"]
    (bottom,) = [ax for ax in fig.axes if ax.get_ylabel() == "accuracy"]
    return top, bottom


def axhline_levels(ax) -> list[float]:
    return [
        float(line.get_ydata()[0])
        for line in ax.lines
        if list(line.get_xdata()) == [0.0, 1.0] and line.get_ydata()[0] == line.get_ydata()[1]
    ]


def whiten(colour: str, amount: float) -> np.ndarray:
    """``colour`` blended ``amount`` of the way to white, by hand."""
    rgb = np.asarray(to_rgb(colour))
    return rgb + amount * (1.0 - rgb)


# -- colours: one per width (increasing), later seeds lighter -------------------------------------


def test_one_colour_per_width_in_increasing_order_and_later_seeds_lighter(tmp_path, drawn):
    """Widths sorted increasingly take colours 0, 1, ...; the seeds of a width sorted by seed,
    seed j of n blended 0.5 j / (n − 1) towards white (the first the colour itself). The nets are
    handed over in neither order, so a colour by position or a reversed sort shows; each net's
    cosine line is drawn in its legend colour."""
    nets = [
        {"width": 10000, "seed": 1, "epochs": [record(1, cosine=0.81), record(2, cosine=0.82)]},
        {"width": 100, "seed": 2, "epochs": [record(1, cosine=0.71), record(2, cosine=0.72)]},
        {"width": 100, "seed": 0, "epochs": [record(1, cosine=0.51), record(2, cosine=0.52)]},
        {"width": 100, "seed": 1, "epochs": [record(1, cosine=0.61), record(2, cosine=0.62)]},
    ]
    plots.two_layer_transfer(nets, None, tmp_path / "shades.png")
    fig = drawn["shades.png"]
    legend = legend_of(fig)
    expected = {
        "m = 100, seed 0": (whiten(_RUN_COLOURS[0], 0.0), [0.51, 0.52]),
        "m = 100, seed 1": (whiten(_RUN_COLOURS[0], 0.25), [0.61, 0.62]),
        "m = 100, seed 2": (whiten(_RUN_COLOURS[0], 0.5), [0.71, 0.72]),
        "m = 10,000, seed 1": (whiten(_RUN_COLOURS[1], 0.0), [0.81, 0.82]),
    }
    top, _ = panels(fig)
    for label, (rgb, cosines) in expected.items():
        np.testing.assert_allclose(to_rgb(legend[label].get_color()), rgb, rtol=0, atol=1e-12, err_msg=label)
        (line,) = [line for line in top.get_lines() if np.allclose(to_rgb(line.get_color()), rgb, atol=1e-12)]
        assert list(line.get_ydata()) == cosines


# -- axes: the log epoch axis, the cosine range, the aligned NTK time on top ------------------------


def test_the_top_axis_is_the_median_ntk_time_per_epoch(tmp_path, drawn):
    """t / epoch over every record with both positive: 0.01 six times, 0.03 twice (a slower
    net) gives the median 0.01 (the mean would be 0.0175); the top axis maps the epoch axis by
    e ↦ 0.01 e, so after a draw its limits are the epoch limits × 0.01."""
    nets = [
        {"width": 10, "seed": 0, "epochs": [record(e, time=0.01 * e) for e in (1, 2, 4)]},
        {"width": 20, "seed": 0, "epochs": [record(e, time=0.03 * e) for e in (1, 2)]},
    ]
    kernel = kernel_of([0, 1, 2, 4], ratio=0.01)  # epoch 0 at time 0: no ratio
    plots.two_layer_transfer(nets, kernel, tmp_path / "time.png")
    fig = drawn["time.png"]
    top, bottom = panels(fig)
    (second,) = top.child_axes
    assert second.get_xlabel() == "NTK time t  (t = 0.01 × epoch)"
    fig.canvas.draw()
    np.testing.assert_allclose(second.get_xlim(), np.asarray(bottom.get_xlim()) * 0.01, rtol=1e-12)


def test_the_epoch_axis_is_logarithmic_and_padded_around_every_epoch(tmp_path, drawn):
    """Epochs ≥ 1 of the nets and of the kernel on a log axis from min / 1.25 to max × 1.25 (the
    kernel's epoch 1000 beyond the nets' 100 widens it); the cosine axis from the lowest cosine
    or quartile − 0.03 (a quartile of −0.2 below the lowest cosine 0.1) to 1.03, a line at 0
    when it goes below 0; the accuracies on [−0.02, 1.02]."""
    epochs = [
        record(2, cosine=0.1, q25=-0.2, q75=0.3),
        record(10, cosine=0.5, q25=0.4, q75=0.6),
        record(100, cosine=0.9, q25=0.85, q75=0.95),
    ]
    plots.two_layer_transfer([{"width": 10, "seed": 0, "epochs": epochs}], kernel_of([1, 1000]), tmp_path / "a.png")
    top, bottom = panels(drawn["a.png"])
    assert bottom.get_xscale() == "log" == top.get_xscale()
    np.testing.assert_allclose(bottom.get_xlim(), (1 / 1.25, 1000 * 1.25), rtol=1e-12)
    np.testing.assert_allclose(top.get_ylim(), (-0.2 - 0.03, 1.03), rtol=1e-12)
    assert axhline_levels(top) == [0.0]
    np.testing.assert_allclose(bottom.get_ylim(), (-0.02, 1.02), rtol=1e-12)

    positive = [record(e, cosine=0.5 + 0.1 * k, q25=0.4, q75=0.8) for k, e in enumerate((1, 10))]
    plots.two_layer_transfer([{"width": 10, "seed": 0, "epochs": positive}], None, tmp_path / "b.png")
    top, bottom = panels(drawn["b.png"])
    np.testing.assert_allclose(top.get_ylim(), (0.0 - 0.03, 1.03), rtol=1e-12)  # down to 0 at least
    assert axhline_levels(top) == []  # no zero line when nothing lies below it
    np.testing.assert_allclose(bottom.get_xlim(), (1 / 1.25, 10 * 1.25), rtol=1e-12)


def test_a_single_epoch_is_one_plain_tick_on_both_axes(tmp_path, drawn):
    """One epoch (50, t = 0.5): the log axis spans a factor 2 either side, one tick "50" below
    and one tick at t = 0.5 on the NTK time axis above."""
    net = {"width": 10, "seed": 0, "epochs": [record(50, time=0.5)]}
    plots.two_layer_transfer([net], None, tmp_path / "one.png")
    top, bottom = panels(drawn["one.png"])
    np.testing.assert_allclose(bottom.get_xlim(), (25.0, 100.0), rtol=1e-12)
    assert list(bottom.get_xticks()) == [50.0]
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["50"]
    (second,) = top.child_axes
    np.testing.assert_allclose(second.get_xticks(), [0.5], rtol=1e-12)
    assert second.get_xlabel() == "NTK time t  (t = 0.01 × epoch)"


# -- the quartile band -----------------------------------------------------------------------------


def band_edges(collection, x: float) -> tuple[float, float]:
    vertices = collection.get_paths()[0].vertices
    at = vertices[np.isclose(vertices[:, 0], x), 1]
    return float(at.min()), float(at.max())


def test_the_band_spans_the_quartiles_and_one_epoch_is_an_error_bar(tmp_path, drawn):
    """Several epochs: a band from q25 to q75 at each epoch (the mean cosine lies inside, not on
    an edge); one epoch: a vertical bar from q25 to q75 instead; either way the legend names the
    quartiles."""
    from matplotlib.collections import LineCollection, PolyCollection

    quartiles = {1: (0.2, 0.6), 3: (0.3, 0.8), 9: (0.5, 0.9)}
    epochs = [record(e, cosine=0.55, q25=q25, q75=q75) for e, (q25, q75) in quartiles.items()]
    plots.two_layer_transfer([{"width": 10, "seed": 0, "epochs": epochs}], None, tmp_path / "band.png")
    fig = drawn["band.png"]
    top, _ = panels(fig)
    (band,) = [c for c in top.collections if isinstance(c, PolyCollection)]
    for e, (q25, q75) in quartiles.items():
        assert band_edges(band, e) == pytest.approx((q25, q75), abs=1e-12)
    assert QUARTILES in legend_of(fig)

    one = {"width": 10, "seed": 0, "epochs": [record(4, cosine=0.55, q25=0.25, q75=0.7)]}
    plots.two_layer_transfer([one], None, tmp_path / "bar.png")
    fig = drawn["bar.png"]
    top, _ = panels(fig)
    assert not [c for c in top.collections if isinstance(c, PolyCollection)]
    (bar,) = [c for c in top.collections if isinstance(c, LineCollection)]
    np.testing.assert_allclose(bar.get_segments()[0], [[4.0, 0.25], [4.0, 0.7]], rtol=1e-12)
    assert QUARTILES in legend_of(fig)


def test_a_missing_cosine_is_said_only_when_no_cosine_was_recorded(tmp_path, drawn):
    """Quartiles but no mean cosine at any epoch: the top panel says so; with a cosine it does not."""
    none = [record(e, cosine=None, q25=0.1, q75=0.3) for e in (1, 2)]
    plots.two_layer_transfer([{"width": 10, "seed": 0, "epochs": none}], None, tmp_path / "none.png")
    top, _ = panels(drawn["none.png"])
    assert [t.get_text() for t in top.texts] == [NO_COSINES]
    some = [record(e, cosine=0.2, q25=0.1, q75=0.3) for e in (1, 2)]
    plots.two_layer_transfer([{"width": 10, "seed": 0, "epochs": some}], None, tmp_path / "some.png")
    top, _ = panels(drawn["some.png"])
    assert NO_COSINES not in [t.get_text() for t in top.texts]


# -- markers: only on series of fewer than three points -------------------------------------------

ACCURACY_MARKERS = {
    "white_box_accuracy": "o",
    "ntk_attack_accuracy": "s",
    "clean_accuracy": "^",
    "random_accuracy": "x",
}


@pytest.mark.parametrize("count", [2, 3])
def test_markers_only_on_series_of_fewer_than_three_points(tmp_path, drawn, count):
    """Two points: each accuracy line of the net has its marker (o, s, ^, x), the NTK machine's
    lines a diamond, and the legend's style entries show them; three points: no markers on the
    accuracy lines or in the legend."""
    epochs = [1, 10, 100][:count]
    net = {"width": 10, "seed": 0, "epochs": [record(e, acc=0.6 + 0.01 * k) for k, e in enumerate(epochs)]}
    plots.two_layer_transfer([net], kernel_of(epochs), tmp_path / "m.png")
    fig = drawn["m.png"]
    _, bottom = panels(fig)
    short = count < 3
    for line in bottom.get_lines():
        y = list(line.get_ydata())
        if to_rgb(line.get_color()) in (to_rgb("black"), to_rgb("0.45")):  # the NTK machine
            assert marker(line) == ("D" if short else ""), y
            continue
        key = next(k for k in ACCURACY_MARKERS if y == [r[k] for r in net["epochs"]])
        assert marker(line) == (ACCURACY_MARKERS[key] if short else ""), key
    legend = legend_of(fig)
    names = {"net: own white-box attack": "o", "net: NTK-generated examples": "s", "net: clean": "^"}
    names["net: random-sign perturbation"] = "x"
    for label, symbol in names.items():
        assert marker(legend[label]) == (symbol if short else ""), label
    for label in ("NTK machine:\nits own attack", "NTK machine: clean"):
        assert marker(legend[label]) == ("D" if short else ""), label


# -- the title's budget and the gradient pictures' key ------------------------------------------------


def test_the_budget_reads_like_the_papers_and_heads_the_figure(tmp_path, drawn):
    """A multiple of 1/255 below 0.25 as k/255, any other budget in three significant digits, an
    unknown or infinite one not at all; the title names the attack and its budget."""
    assert _budget(8 / 255) == "ε = 8/255" and _budget(2 / 255) == "ε = 2/255"
    assert _budget(0.25) == "ε = 0.25" and _budget(0.125) == "ε = 0.125" and _budget(1.0) == "ε = 1"
    assert _budget(math.nan) == "" == _budget(math.inf)
    net = {"width": 10, "seed": 0, "epochs": [record(1), record(2)]}
    plots.two_layer_transfer([net], None, tmp_path / "t.png", method="pgd", eps=8 / 255)
    assert drawn["t.png"].get_suptitle().startswith("Two-layer nets and their NTK, PGD ε = 8/255")
    plots.two_layer_transfer([net], None, tmp_path / "u.png", method="fgsm", eps=math.nan)
    assert drawn["u.png"].get_suptitle().strip() == "Two-layer nets and their NTK, FGSM"


@pytest.mark.parametrize(
    ("channels", "key"),
    [(1, "red: raising the pixel raises the loss"), (3, "colour gradients: each picture's channels rescaled")],
)
def test_the_gradient_pictures_key_matches_grey_or_colour(tmp_path, drawn, rng, channels, key):
    """Grey gradients on a diverging map get the red / blue key; colour ones the rescaling note."""
    image = rng.uniform(0, 1, (channels, 6, 6))
    rows = [("NTK", rng.normal(size=(2, channels, 6, 6)))]
    plots.gradient_pictures(image, rows, [1, 10], tmp_path / "g.png")
    note = " ".join(drawn["g.png"]._supxlabel.get_text().split())
    assert note.startswith(key)
