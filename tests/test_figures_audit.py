"""What the transfer, eigen-feature, robust-accuracy and kernel-picture figures draw, artist by
artist, against the numbers the test handed them (a mutation audit of ``plots.transfer``,
``plots.features``, ``plots.evaluation`` and ``plots.kernel_images``).

The independent route: the inputs are small arrays written here; what each artist must hold is
read off them in numpy (the points in eigenvalue order, LogNorm of the eigenvalues by hand, a
class sort by a loop over the classes, the bar of each measure at its documented place) and
compared with the artists caught as the figure is saved (``drawn``).
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex

from ntkrobust import plots
from ntkrobust.kernels.features import FeatureScores
from ntkrobust.kernels.robust_only import RobustOnlyResult
from ntkrobust.plots._style import _colour


def horizontal_levels(ax) -> list[float]:
    """The y of every ``axhline`` of a panel."""
    return [
        float(line.get_ydata()[0])
        for line in ax.lines
        if list(line.get_xdata()) == [0.0, 1.0] and line.get_ydata()[0] == line.get_ydata()[1]
    ]


# -- transfer (TK sec. 3.2, LOO sec. 5, fig. 3) ---------------------------------------------------


def test_transferability_curves_draw_tau_as_given_in_the_legends_colours(tmp_path, drawn):
    """LOO fig. 3: each series' τ against its source epochs (NaN left out), in the colour of its
    legend entry; grey reference lines at τ = 1 and τ = 0."""
    series = [
        ("standard", [0, 5, 10], [0.2, 0.7, 0.9]),
        ("linearized", [0, 5, 10], [0.1, float("nan"), 0.4]),
    ]
    plots.transferability_curves(series, tmp_path / "tau.png")
    fig = drawn["tau.png"]
    ax = fig.axes[0]
    legend = fig.legends[0]
    colours = {
        t.get_text(): to_hex(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }
    curves = [line for line in ax.lines if len(line.get_xdata()) and line.get_linestyle() == "-"]
    assert len(curves) == 2
    by_colour = {to_hex(line.get_color()): (list(line.get_xdata()), list(line.get_ydata())) for line in curves}
    assert by_colour[colours["standard"]] == ([0.0, 5.0, 10.0], [0.2, 0.7, 0.9])
    assert by_colour[colours["linearized"]] == ([0.0, 10.0], [0.1, 0.4])
    assert sorted(horizontal_levels(ax)) == [0.0, 1.0]
    span = 1.0 - 0.0  # the limits hold the points and both reference lines
    np.testing.assert_allclose(ax.get_ylim(), (0.0 - 0.06 * span, 1.0 + 0.1 * span), rtol=1e-12)


def test_transfer_heatmap_cells_are_the_values_and_tau_is_annotated_unclipped(tmp_path, drawn):
    """The colours are the accuracies and τ themselves (NaN masked), τ clipped only in colour:
    its cells read −0.20 and 1.20, and the colour bar of a τ below 0 only extends at its minimum."""
    accuracy = np.array([[0.9, 0.2, np.nan], [0.8, 0.5, 0.1]])
    tau = np.array([[-0.2, 0.5], [0.3, 0.75]])
    plots.transfer_heatmap(
        ["a", "b"], ["clean", "x", "y"], accuracy, tmp_path / "h.png", transferability=(["x", "y"], tau)
    )
    acc_ax, tau_ax = (ax for ax in drawn["h.png"].axes if ax.get_title() in ("accuracy", "transferability τ"))
    shown = acc_ax.images[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(shown), np.isnan(accuracy))
    np.testing.assert_array_equal(shown.filled(np.nan), accuracy)
    np.testing.assert_array_equal(tau_ax.images[0].get_array().filled(np.nan), tau)
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in tau_ax.texts}
    assert cells == {(0, 0): "-0.20", (0, 1): "0.50", (1, 0): "0.30", (1, 1): "0.75"}
    assert acc_ax.images[0].colorbar.extend == "neither" and tau_ax.images[0].colorbar.extend == "min"
    plots.transfer_heatmap(
        ["a"], ["x"], np.array([[0.5]]), tmp_path / "g.png", transferability=(["x"], np.array([[1.2]]))
    )
    tau_ax = next(ax for ax in drawn["g.png"].axes if ax.get_title() == "transferability τ")
    assert [t.get_text() for t in tau_ax.texts] == ["1.20"] and tau_ax.images[0].colorbar.extend == "max"


# -- eigen-features (TK fig. 2, 5, supp. figs. 2-5) ----------------------------------------------


def scores() -> FeatureScores:
    eigenvalue = np.array([8.0, 0.5, 2.0, 0.01, 1.0])  # not sorted: the drawing order must sort them
    return FeatureScores(
        index=np.arange(5),
        eigenvalue=eigenvalue,
        usefulness=np.array([0.6, 0.55, 0.7, 0.52, 0.65]),
        robustness=np.array([0.3, 0.1, 0.25, 0.12, 0.2]),
        chance=0.9,
        n_examples=40,
    )


def test_features_are_drawn_robustness_against_usefulness_small_eigenvalues_first(tmp_path, drawn):
    """TK fig. 2 right: x robustness, y usefulness, points from the smallest eigenvalue to the
    largest (the large dark markers on top), colour the eigenvalue, size 12 + 110 × its LogNorm
    shade; the chance line at the chance level; the x axis zoomed to the features (padded 8 %),
    the y axis to the features and the chance line."""
    s = scores()
    plots.robustness_usefulness([("net", s)], tmp_path / "features.png")
    ax = next(ax for ax in drawn["features.png"].axes if ax.get_title().startswith("net:"))
    (points,) = ax.collections
    order = np.argsort(s.eigenvalue)
    np.testing.assert_array_equal(points.get_offsets(), np.column_stack([s.robustness[order], s.usefulness[order]]))
    np.testing.assert_array_equal(points.get_array(), s.eigenvalue[order])
    shade = (np.log(s.eigenvalue) - np.log(0.01)) / (np.log(8.0) - np.log(0.01))
    np.testing.assert_allclose(points.get_sizes(), 12 + 110 * shade[order], rtol=1e-12)
    assert horizontal_levels(ax) == [0.9]
    np.testing.assert_allclose(ax.get_xlim(), (0.1 - 0.08 * 0.2, 0.3 + 0.08 * 0.2), rtol=1e-12)
    np.testing.assert_allclose(ax.get_ylim(), (0.52 - 0.08 * 0.38, 0.9 + 0.08 * 0.38), rtol=1e-12)


def test_robust_only_curves_name_each_accuracy_on_a_log_r_axis(tmp_path, drawn):
    """TK supp. figs. 4-5: one line per accuracy of f'_r, its legend label naming it, r on a log axis."""
    results = [
        RobustOnlyResult(
            r=r,
            clean=0.9 - k / 10,
            fgsm_own=0.1 + k / 20,
            pgd_own=0.05 + k / 30,
            fgsm_transfer=0.6 - k / 40,
            pgd_transfer=0.5 - k / 15,
        )
        for k, r in enumerate((1, 5, 20))
    ]
    plots.robust_only_curves([("net", results, 20)], tmp_path / "robust.png")
    ax = next(ax for ax in drawn["robust.png"].axes if ax.get_title() == "net")
    assert ax.get_xscale() == "log"
    labels = {
        "clean": "clean",
        "FGSM from full kernel": "fgsm_transfer",
        "PGD from full kernel": "pgd_transfer",
        "FGSM on f'_r (own)": "fgsm_own",
        "PGD on f'_r (own)": "pgd_own",
    }
    assert sorted(line.get_label() for line in ax.lines) == sorted(labels)
    for line in ax.lines:
        assert list(line.get_xdata()) == [1, 5, 20]
        assert list(line.get_ydata()) == [getattr(res, labels[line.get_label()]) for res in results]
    # FGSM and PGD often coincide (the README's CIFAR run: the own attacks at every r): each FGSM
    # line is dashed with hollow markers above its PGD twin, which was hidden under it before
    by_label = {line.get_label(): line for line in ax.lines}
    for fgsm, pgd in (("FGSM from full kernel", "PGD from full kernel"), ("FGSM on f'_r (own)", "PGD on f'_r (own)")):
        assert by_label[fgsm].get_linestyle() == "--" and by_label[pgd].get_linestyle() == "-"
        assert (
            by_label[fgsm].get_markerfacecolor() == "none" and by_label[fgsm].get_zorder() > by_label[pgd].get_zorder()
        )


@pytest.mark.parametrize(("channels", "key"), [(1, "red: raising the pixel raises the feature's score"), (3, "colour")])
def test_the_feature_gallery_says_what_its_colours_and_captions_mean(tmp_path, drawn, rng, channels, key):
    image = rng.uniform(0, 1, (channels, 5, 5))
    plots.feature_gallery(image, [("net", rng.normal(size=(2, channels, 5, 5)), ["f0", "f1"])], tmp_path / "g.png")
    said = " ".join(drawn["g.png"]._supxlabel.get_text().split())
    assert said.startswith(key) and said.endswith("u: usefulness, r: robustness (TK supp. A eqs. 1-2)")


def test_the_feature_gallery_shows_each_features_gradient_in_order(tmp_path, drawn, rng):
    """TK fig. 2 left: the image, then feature k's gradient in column k + 1 under its caption."""
    image = rng.uniform(0, 1, (1, 5, 5))
    gradients = rng.normal(size=(3, 1, 5, 5))
    plots.feature_gallery(image, [("net", gradients, ["f0", "f1", "f2"])], tmp_path / "gallery.png")
    axes = [ax for ax in drawn["gallery.png"].axes if ax.images]
    np.testing.assert_array_equal(axes[0].images[0].get_array(), image[0])
    for ax, gradient, caption in zip(axes[1:], gradients, ["f0", "f1", "f2"], strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), gradient[0])
        scale = float(np.abs(gradient).max())
        assert ax.get_title() == caption and ax.images[0].get_clim() == (-scale, scale)


# -- robust accuracy (evaluate) ------------------------------------------------------------------


def _legend_colours(fig, count: int) -> dict[str, str]:
    """The first ``count`` entries of the figure's legend: name → colour of its patch."""
    legend = fig.legends[0]
    return {
        t.get_text(): to_hex(h.get_facecolor())
        for t, h in zip(legend.get_texts()[:count], legend.legend_handles[:count], strict=True)
    }


def test_robust_accuracy_bars_are_each_measure_in_its_place_and_colour(tmp_path, drawn):
    """A group per net, its measures top to bottom in the legend's order and colours (the y axis
    grows downwards), the worst case a black line at the worst-case accuracy."""
    accuracy = {"clean": 0.9, "pgd-20": 0.5, "pgd-100": 0.45, "cw-100": 0.3, "autoattack": 0.35, "worst_case": 0.3}
    nets = [{"label": "one", "accuracy": accuracy}, {"label": "two", "accuracy": {**accuracy, "clean": 0.8}}]
    plots.robust_accuracy_bars(nets, tmp_path / "robust.png")
    fig = drawn["robust.png"]
    ax = fig.axes[0]
    assert ax.yaxis_inverted()
    measures = ["clean", "pgd-20", "pgd-100", "cw-100", "autoattack"]
    height = 0.8 / len(measures)
    bars = ax.patches
    assert len(bars) == 2 * len(measures)
    for b, bar in enumerate(bars):
        row, i = divmod(b, len(measures))
        assert bar.get_width() == nets[row]["accuracy"][measures[i]]
        assert bar.get_y() + bar.get_height() / 2 == pytest.approx(row + (i - 2) * height)
        assert to_hex(bar.get_facecolor()) == to_hex(_colour(i))
    assert _legend_colours(fig, 5) == {
        name: to_hex(_colour(i)) for i, name in enumerate(["clean", "PGD-20", "PGD-100", "CW-100 (ℓ∞)", "AutoAttack"])
    }
    worst = [line for line in ax.lines if line.get_color() == "black"]
    assert [list(line.get_xdata()) for line in worst] == [[0.3, 0.3], [0.3, 0.3]]
    assert [list(line.get_ydata()) for line in worst] == [[-0.4, 0.4], [0.6, 1.4]]


def test_each_measure_keeps_its_colour_whichever_attacks_a_record_holds(tmp_path, drawn):
    """PGD-100 and AutoAttack without PGD-20 and CW-100: each bar and legend entry in the colour the
    measure has in the full figure (by its place among the measures present, PGD-100 took PGD-20's
    colour and AutoAttack PGD-100's)."""
    plots.robust_accuracy_bars([{"label": "one", "accuracy": {"clean": 0.9, "pgd-100": 0.4, "autoattack": 0.3}}],
                               tmp_path / "some.png")  # fmt: skip
    fig = drawn["some.png"]
    assert [to_hex(bar.get_facecolor()) for bar in fig.axes[0].patches] == [to_hex(_colour(i)) for i in (0, 2, 4)]
    assert _legend_colours(fig, 3) == {
        "clean": to_hex(_colour(0)),
        "PGD-100": to_hex(_colour(2)),
        "AutoAttack": to_hex(_colour(4)),
    }


# -- a class-sorted kernel (TK fig. 6 left) -------------------------------------------------------


def test_a_kernel_picture_is_sorted_by_class_in_rows_and_columns(tmp_path, drawn, rng):
    """Rows and columns sorted by class, examples of one class in their order (a stable sort:
    40 points with ties), each class named at the centre of its block."""
    n = 40
    labels = rng.integers(0, 3, size=n)
    kernel = rng.normal(size=(n, n))  # not symmetric: sorting rows alone would show
    plots.kernel_image(kernel, labels, tmp_path / "k.png", class_names=["a", "b", "c"], title="kernel")
    ax = next(ax for ax in drawn["k.png"].axes if ax.images)
    order = [i for c in range(3) for i in range(n) if labels[i] == c]
    np.testing.assert_array_equal(ax.images[0].get_array(), kernel[np.ix_(order, order)])
    counts = np.bincount(labels, minlength=3)
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    np.testing.assert_allclose(ax.get_yticks(), starts + (counts - 1) / 2, rtol=0, atol=1e-12)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_a_measure_one_net_lacks_is_still_drawn_for_the_others(tmp_path, drawn):
    """The measures drawn are those some net's record holds: CW-100 of one net only is a bar of
    that net, in CW-100's colour, with no bar for the other."""
    nets = [
        {"label": "with cw", "accuracy": {"clean": 0.9, "cw-100": 0.4}},
        {"label": "without", "accuracy": {"clean": 0.8}},
    ]
    plots.robust_accuracy_bars(nets, tmp_path / "partial.png")
    fig = drawn["partial.png"]
    bars = fig.axes[0].patches
    assert [bar.get_width() for bar in bars] == [0.9, 0.4, 0.8]
    assert [to_hex(bar.get_facecolor()) for bar in bars] == [to_hex(_colour(i)) for i in (0, 3, 0)]  # CW-100 is 4th
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["clean", "CW-100 (ℓ∞)"]
