"""The transfer figures of plots: two-layer nets against their NTK (TK fig. 4, supp. fig. 1a-b),
accuracy of targets on the examples of attack sources, and transferability curves (LOO fig. 3).

Synthetic, seeded inputs in the documented plain formats; each figure must be a real PNG
(signature, size, more than twenty colours) and must draw what is there: a single net or epoch,
None cosines and NaN accuracies are left out, not fatal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ntkrobust import plots
from ntkrobust.plots.two_layer import _budget

EPOCHS = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
TIME_PER_EPOCH = 0.01


def net_record(epoch: int, width: int, rng: np.random.Generator) -> dict[str, float]:
    """One epoch of a two-layer net: cosines near 0.9-0.99 (higher for wider nets), clean
    accuracy rising from 0.1 to 0.95, both attacks driving the accuracy towards 0."""
    rise = 1.0 - np.exp(-epoch / 300)
    cosine = 0.99 - 0.05 * np.log10(epoch + 1) / 4 * np.sqrt(1000 / width) + rng.normal(0, 0.003)
    clean = 0.1 + 0.85 * rise
    white_box = clean * np.exp(-epoch / 800)
    return {
        "epoch": epoch,
        "time": epoch * TIME_PER_EPOCH,
        "gradient_cosine": float(cosine),
        "gradient_cosine_q25": float(cosine - 0.04),
        "gradient_cosine_q75": float(min(cosine + 0.02, 1.0)),
        "clean_accuracy": float(clean),
        "white_box_accuracy": float(white_box),
        "ntk_attack_accuracy": float(min(clean, 1.05 * white_box + 0.01)),
        "random_accuracy": float(clean - 0.03),
    }


@pytest.fixture
def nets(rng) -> list[dict]:
    return [
        {"width": width, "seed": seed, "epochs": [net_record(e, width, rng) for e in EPOCHS]}
        for width in (1000, 10000)
        for seed in (0, 1)
    ]


@pytest.fixture
def kernel() -> dict:
    return {
        "epochs": [
            {
                "epoch": e,
                "time": e * TIME_PER_EPOCH,
                "clean_accuracy": 0.1 + 0.86 * (1 - np.exp(-e / 300)),
                "robust_accuracy": 0.9 * np.exp(-e / 700) * (1 - np.exp(-e / 300)),
            }
            for e in EPOCHS
        ]
    }


# -- what the two-layer figure draws (read off the figure as it is saved, not the PNG) ------------

#: the record key behind each accuracy line of the legend (``two_layer_transfer``'s docstring)
NET_ACCURACY_KEYS = {
    "net: own white-box attack": "white_box_accuracy",
    "net: NTK-generated examples": "ntk_attack_accuracy",
    "net: clean": "clean_accuracy",
    "net: random-sign perturbation": "random_accuracy",
}
KERNEL_ACCURACY_KEYS = {"NTK machine:\nits own attack": "robust_accuracy", "NTK machine: clean": "clean_accuracy"}


def legend_of(fig) -> dict[str, Any]:
    """The figure's one legend: each label's handle (a proxy line in the style of the series)."""
    (legend,) = fig.legends
    return {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)}


def recorded_points(records: list[dict], key: str) -> list[tuple[float, float]]:
    """(epoch, value) of ``key`` that a line must draw: epochs ≥ 1 (a log axis) whose value is
    neither None nor NaN, in the records' order."""
    return [
        (float(r["epoch"]), float(r[key]))
        for r in records
        if r["epoch"] >= 1 and r.get(key) is not None and np.isfinite(r[key])
    ]


def look(handle: Any) -> tuple[Any, float, float | None]:
    """What tells the accuracy lines of one net apart: dashes, width and alpha."""
    return handle.get_linestyle(), handle.get_linewidth(), handle.get_alpha()


def lines_like(ax, colour: Any, style: Any = None) -> list[list[tuple[float, float]]]:
    """The (x, y) points of each line of ``ax`` in ``colour`` (and, given a legend handle
    ``style``, drawn in its dashes, width and alpha)."""
    from matplotlib.colors import to_rgb

    return [
        list(zip(line.get_xdata().tolist(), line.get_ydata().tolist(), strict=True))
        for line in ax.get_lines()
        if to_rgb(line.get_color()) == to_rgb(colour) and (style is None or look(line) == look(style))
    ]


def assert_draws_the_records(fig, nets: list[dict], kernel: dict) -> None:
    """Each legend label's line carries the values of the record key it names, per net (in the
    net's legend colour) and for the NTK machine, None and NaN values left out; a series with no
    value draws no line and an NTK series none in the legend either."""
    legend = legend_of(fig)
    (top,) = [ax for ax in fig.axes if ax.get_ylabel() == "gradient cosine"]
    (bottom,) = [ax for ax in fig.axes if ax.get_ylabel() == "accuracy"]
    for net in nets:
        colour = legend[f"m = {net['width']:,}, seed {net['seed']}"].get_color()
        cosines = recorded_points(net["epochs"], "gradient_cosine")
        assert lines_like(top, colour) == ([cosines] if cosines else []), net["seed"]
        for label, key in NET_ACCURACY_KEYS.items():
            points = recorded_points(net["epochs"], key)
            assert lines_like(bottom, colour, legend[label]) == ([points] if points else []), (net["seed"], label)
    for label, key in KERNEL_ACCURACY_KEYS.items():
        points = recorded_points(kernel.get("epochs") or [], key)
        if points:
            assert lines_like(bottom, legend[label].get_color(), legend[label]) == [points], label
        else:
            assert label not in legend
    for line in (*top.get_lines(), *bottom.get_lines()):
        assert np.isfinite(line.get_xydata()).all()


def test_two_layer_transfer(tmp_path, nets, kernel, assert_real_png, drawn):
    """Four nets and the NTK machine: every legend label's line is the series it names (the own
    white-box and NTK-generated accuracies differ by a few percent, which the PNG checks do not
    see), epoch 0 left out of the log axis."""
    path = tmp_path / "two_layer.png"
    plots.two_layer_transfer(nets, kernel, path, subtitle="MNIST, full-batch GD", method="fgsm", eps=0.3)
    assert_real_png(path)
    assert_draws_the_records(drawn["two_layer.png"], nets, kernel)
    assert set(legend_of(drawn["two_layer.png"])) >= {*NET_ACCURACY_KEYS, *KERNEL_ACCURACY_KEYS}


def test_two_layer_transfer_one_net_with_gaps(tmp_path, nets, kernel, assert_real_png, drawn):
    """One net; None cosines (some epochs, and all quartiles), a NaN accuracy, epoch 0 (off the log axis):
    those points are left out of their lines, the others drawn, and no quartile band is claimed."""
    records = [dict(r) for r in nets[0]["epochs"]]
    for i, record in enumerate(records):
        record["gradient_cosine_q25"] = record["gradient_cosine_q75"] = None
        if i % 3 == 0:
            record["gradient_cosine"] = None
    records[4]["white_box_accuracy"] = float("nan")
    records[5]["random_accuracy"] = None
    path = tmp_path / "gaps.png"
    net = {"width": 1000, "seed": 3, "epochs": records}
    plots.two_layer_transfer([net], kernel, path, eps=8 / 255)
    assert_real_png(path)
    fig = drawn["gaps.png"]
    assert_draws_the_records(fig, [net], kernel)
    legend = legend_of(fig)
    drawn_white_box = lines_like(
        fig.axes[1], legend["m = 1,000, seed 3"].get_color(), legend["net: own white-box attack"]
    )
    assert len(drawn_white_box[0]) == len(EPOCHS) - 2  # epoch 0 and the NaN one
    assert records[4]["epoch"] not in [x for x, _ in drawn_white_box[0]]
    assert not any("quartiles" in label for label in legend)


def test_two_layer_transfer_single_epoch_without_cosines(tmp_path, rng, assert_real_png, drawn):
    """One epoch, no cosine at all, no kernel epochs: each accuracy is one point, no cosine line,
    and the NTK machine is neither drawn nor in the legend."""
    record = net_record(1000, 1000, rng) | {"gradient_cosine": None, "time": None}
    record |= {"gradient_cosine_q25": None, "gradient_cosine_q75": None}
    path = tmp_path / "single.png"
    net = {"width": 1000, "seed": 0, "epochs": [record]}
    plots.two_layer_transfer([net], {"epochs": []}, path, method="pgd")
    assert_real_png(path)
    fig = drawn["single.png"]
    assert_draws_the_records(fig, [net], {"epochs": []})
    top, bottom = fig.axes[:2]
    assert top.get_lines() == [] and len(bottom.get_lines()) == len(NET_ACCURACY_KEYS)


def test_two_layer_transfer_without_epochs(tmp_path, assert_real_png, drawn):
    """Only epoch 0 (off the log axis), or no net at all: an empty figure, no line drawn."""
    path = tmp_path / "empty.png"
    plots.two_layer_transfer([{"width": 100, "seed": 0, "epochs": [{"epoch": 0}]}], {}, path)
    assert_real_png(path, colours=5)
    plots.two_layer_transfer([], {}, tmp_path / "none.png")
    assert_real_png(tmp_path / "none.png", colours=5)
    for name in ("empty.png", "none.png"):
        assert [line for ax in drawn[name].axes for line in ax.get_lines()] == []


def test_budget_reads_like_the_papers():
    assert _budget(8 / 255) == "ε = 8/255"
    assert _budget(0.3) == "ε = 0.3"
    assert _budget(None) == ""


def assert_pictures_show(fig, image: np.ndarray, rows: list[tuple[str, np.ndarray]], epochs: list[int]) -> None:
    """The grid of ``gradient_pictures``: the input top left, each row named after its model and
    showing that model's gradient of each epoch (column 1 + c for epochs[c]), the epochs as the
    top row's titles. Grey pictures are the gradient itself on a scale symmetric about 0; colour
    ones the gradient rescaled to [0, 1] (its docstring)."""
    axes = np.array(fig.axes).reshape(len(rows), 1 + len(epochs))
    (shown,) = axes[0, 0].get_images()
    expected_input = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
    np.testing.assert_array_equal(np.asarray(shown.get_array()), expected_input)
    assert axes[0, 0].get_title() == "input"
    assert [ax.get_title() for ax in axes[0, 1:]] == [f"epoch {e}" for e in epochs]
    for r, (label, gradients) in enumerate(rows):
        assert axes[r, 0].get_ylabel().replace("\n", " ") == label
        assert r == 0 or axes[r, 0].get_images() == []  # the input is shown once
        for c, gradient in enumerate(gradients):
            (picture,) = axes[r, 1 + c].get_images()
            if gradient.shape[0] == 1:
                np.testing.assert_array_equal(np.asarray(picture.get_array()), gradient[0])
                scale = np.abs(gradient).max()
                assert picture.get_clim() == (-scale, scale)
            else:
                rescaled = (gradient - gradient.min()) / (gradient.max() - gradient.min())
                np.testing.assert_allclose(
                    np.asarray(picture.get_array()), np.transpose(rescaled, (1, 2, 0)), atol=1e-15
                )


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)], ids=["digits", "mnist", "cifar"])
def test_gradient_pictures(tmp_path, rng, shape, assert_real_png, drawn):
    """Three models at three epochs, grey and colour: each picture is the gradient of the row's
    model at the column's epoch (the rows differ in noise about one base gradient, so a picture
    of the wrong epoch or model looks alike in the PNG but not here)."""
    image = rng.uniform(0, 1, shape)
    base = rng.normal(size=shape)
    epochs = [100, 1000, 10000]
    rows = [
        (label, np.stack([base + noise * rng.normal(size=shape) for _ in epochs]))
        for label, noise in (("width 1000", 0.5), ("width 10000", 0.2), ("NTK", 0.0))
    ]
    path = tmp_path / "gradients.png"
    plots.gradient_pictures(image, rows, epochs, path, subtitle="test image 0")
    assert_real_png(path)
    assert_pictures_show(drawn["gradients.png"], image, rows, epochs)


def test_gradient_pictures_one_row_one_epoch_and_mismatch(tmp_path, rng, assert_real_png, drawn):
    """One model at one epoch is a grid of two pictures, the input and its gradient; gradients
    for a different number of epochs are refused."""
    image, rows = rng.uniform(0, 1, (1, 8, 8)), [("NTK", rng.normal(size=(1, 1, 8, 8)))]
    path = tmp_path / "one.png"
    plots.gradient_pictures(image, rows, [10], path)
    assert_real_png(path)
    assert_pictures_show(drawn["one.png"], image, rows, [10])
    with pytest.raises(ValueError, match="2 gradients for 3 epochs"):
        plots.gradient_pictures(
            rng.uniform(0, 1, (1, 8, 8)), [("NTK", rng.normal(size=(2, 1, 8, 8)))], [1, 2, 3], tmp_path / "bad.png"
        )


TARGETS = ["mnist-cnn standard epoch 15", "mnist-cnn adversarial epoch 15", "NTK fc2", "eNTK mnist-cnn"]
SOURCES = [
    "mnist-cnn standard epoch 1",
    "mnist-cnn standard epoch 15",
    "mnist-cnn adversarial epoch 15",
    "NTK fc2",
    "NTK fc3",
    "eNTK mnist-cnn",
    "eNTK init",
    "random signs",
]


def test_transfer_heatmap_with_transferability(tmp_path, rng, assert_real_png):
    accuracy = rng.uniform(0, 0.9, (len(TARGETS), len(SOURCES)))
    accuracy[2, 3] = accuracy[3, 5] = np.nan  # a kernel is not attacked with its own examples here
    tau = rng.uniform(-0.2, 1.2, (len(TARGETS), 7))  # beyond [0, 1]: colours clip, annotations do not
    tau[0, 0] = np.nan
    path = tmp_path / "heatmap.png"
    plots.transfer_heatmap(TARGETS, SOURCES, accuracy, path, transferability=(SOURCES[:7], tau), subtitle="PGD")
    height, width = assert_real_png(path)
    plots.transfer_heatmap(TARGETS[:1], SOURCES[:2], accuracy[:1, :2], tmp_path / "small.png", title="small")
    small_height, small_width = assert_real_png(tmp_path / "small.png")
    assert width > small_width and height > small_height  # sized from the rows and columns


def test_transfer_heatmap_stacks_its_panels_for_many_sources(tmp_path, rng, assert_real_png):
    sources = [f"run epoch {e}" for e in range(20)]
    accuracy, tau = rng.uniform(0, 1, (3, 23)), rng.uniform(0, 1, (3, 20))
    columns = ["clean", "random sign", "own white-box", *sources]
    plots.transfer_heatmap(TARGETS[:3], columns, accuracy, tmp_path / "wide.png", transferability=(sources, tau))
    height, width = assert_real_png(tmp_path / "wide.png")
    assert width < 3.5 * height  # one panel above the other, not 43 columns side by side


def test_transfer_heatmap_all_nan_and_bad_shapes(tmp_path, assert_real_png):
    plots.transfer_heatmap(["net"], ["NTK"], np.array([[np.nan]]), tmp_path / "nan.png")
    assert_real_png(tmp_path / "nan.png", colours=5)
    with pytest.raises(ValueError, match=r"accuracy has shape \(1, 3\), not \(1, 2\)"):
        plots.transfer_heatmap(["a"], ["x", "y"], np.zeros((1, 3)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="accuracy has shape"):  # not silently reshaped
        plots.transfer_heatmap(["a", "b"], ["x", "y"], np.zeros((1, 4)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="transferability has shape"):
        plots.transfer_heatmap(
            ["a"], ["x"], np.zeros((1, 1)), tmp_path / "bad.png", transferability=(["x", "y"], np.zeros((1, 3)))
        )


def test_transferability_curves(tmp_path, assert_real_png, drawn):
    epochs = np.arange(0, 101, 5)
    series = [
        ("standard", epochs, 1 - np.exp(-epochs / 5) - epochs / 400),
        ("linearized", epochs, 0.95 * (1 - np.exp(-epochs / 8)) - epochs / 500),
        ("centered", epochs, 0.1 + 0.15 * (1 - np.exp(-epochs / 20))),
    ]
    series[1][2][3] = np.nan
    path = tmp_path / "tau.png"
    plots.transferability_curves(series, path, subtitle="target: standard net at epoch 100")
    assert_real_png(path)
    assert drawn["tau.png"].axes[0].get_xlabel() == "source epoch t′\n(linearized / centered nets: their spawn epoch)"
    plots.transferability_curves(series[:1], tmp_path / "standard.png")
    assert drawn["standard.png"].axes[0].get_xlabel() == "source epoch t′"


def test_transferability_curves_single_point_and_nothing(tmp_path, assert_real_png):
    plots.transferability_curves([("standard", [10], [0.7])], tmp_path / "one.png")
    assert_real_png(tmp_path / "one.png")
    plots.transferability_curves([("standard", [], [])], tmp_path / "none.png")
    assert_real_png(tmp_path / "none.png", colours=5)


# -- what the figures show (the figure objects, caught as they are saved) ----------------------


def columns_of(ax) -> list[str]:
    return [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]


def test_a_single_targets_own_attack_is_one_column(tmp_path, drawn, assert_heading):
    """One target: its white-box examples are the "own white-box" column; the source column
    named after it (τ 1 by definition) is not drawn again, in either panel."""
    columns = ["clean", "random sign", "own white-box", "NTK fc2", "net epoch 4"]
    accuracy = np.array([[0.9, 0.85, 0.03, 0.2, 0.03]])
    tau = np.array([[0.76, 1.0]])
    plots.transfer_heatmap(
        ["net epoch 4"],
        columns,
        accuracy,
        tmp_path / "one.png",
        transferability=(columns[3:], tau),
        own_column="own white-box",
        subtitle="one target",
    )
    fig = drawn["one.png"]
    heat = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in heat] == ["accuracy", "transferability τ"]
    assert columns_of(heat[0]) == ["clean", "random sign", "own white-box", "NTK fc2"]
    assert columns_of(heat[1]) == ["NTK fc2"]
    assert [t.get_text() for t in heat[1].texts] == ["0.76"]
    assert_heading(fig, "one target")


def test_several_targets_show_each_own_attack_once(tmp_path, drawn, assert_heading):
    """Two targets: each one's column as a source attacks the other, so it stays; the cell
    against itself (the diagonal) repeats "own white-box" and reads "own" instead."""
    targets = ["a", "b"]
    columns = ["clean", "random sign", "own white-box", "NTK fc2", "a", "b"]
    accuracy = np.array([[0.9, 0.8, 0.05, 0.3, 0.05, 0.4], [0.8, 0.7, 0.1, 0.2, 0.5, 0.1]])
    tau = np.array([[0.7, 1.0, 0.59], [0.86, 0.43, 1.0]])
    plots.transfer_heatmap(
        targets, columns, accuracy, tmp_path / "two.png", transferability=(columns[3:], tau), own_column="own white-box"
    )
    accuracy_ax, tau_ax = [ax for ax in drawn["two.png"].get_axes() if ax.get_title()]
    assert columns_of(accuracy_ax) == columns and columns_of(tau_ax) == ["NTK fc2", "a", "b"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in accuracy_ax.texts}
    assert cells[(0, 4)] == cells[(1, 5)] == "own" and cells[(0, 5)] == "0.40" and cells[(1, 4)] == "0.50"
    assert [t.get_text() for t in tau_ax.texts].count("own") == 2
    plots.transfer_heatmap(targets, columns, accuracy, tmp_path / "plain.png")  # no own column: all drawn
    assert "own" not in [t.get_text() for t in drawn["plain.png"].axes[0].texts]


def test_the_transfer_study_draws_a_targets_own_attack_once(tmp_path, drawn, assert_heading):
    """Through ``TransferResult``: the heatmap leaves out the target's column as a source; the
    matrix in results.json keeps it; the summary gives τ of every black-box source."""
    import json

    from ntkrobust.studies.transfer import TransferResult

    target = {
        "name": "net epoch 4",
        "clean_accuracy": 0.9,
        "white_box_accuracy": 0.03,
        "random_accuracy": 0.85,
        "transfer_accuracy": {"NTK fc2": 0.2, "eNTK fc1": 0.5, "net epoch 4": 0.03},
        "transferability": {"NTK fc2": 0.8046, "eNTK fc1": float("nan"), "net epoch 4": 1.0},
    }
    matrix = {
        "rows": ["net epoch 4"],
        "columns": ["clean", "random sign", "own white-box", "NTK fc2", "eNTK fc1", "net epoch 4"],
        "accuracy": [[0.9, 0.85, 0.03, 0.2, 0.5, 0.03]],
        "transferability_columns": ["NTK fc2", "eNTK fc1", "net epoch 4"],
        "transferability": [[0.8046, None, 1.0]],
    }
    sources = [{"name": "NTK fc2", "kind": "ntk"}, {"name": "eNTK fc1", "kind": "entk-surrogate"}]
    record = {
        "command": "transfer",
        "config": {"attack": {"method": "fgsm"}},
        "targets": [target],
        "sources": [*sources, {"name": "net epoch 4", "kind": "white-box"}],
        "matrix": matrix,
    }
    result = TransferResult(record, arrays={"x": np.zeros((1, 1, 2, 2))}, figures={"subtitle": "digits", "curves": []})
    out = result.save(tmp_path / "out")
    accuracy_ax, tau_ax = [ax for ax in drawn["transfer.png"].get_axes() if ax.get_title()]
    assert columns_of(accuracy_ax) == ["clean", "random sign", "own white-box", "NTK fc2", "eNTK fc1"]
    assert columns_of(tau_ax) == ["NTK fc2", "eNTK fc1"]
    assert json.loads((out / "results.json").read_text())["matrix"]["columns"] == matrix["columns"]
    assert result.summary() == (
        "net epoch 4: clean 0.900, own fgsm 0.030, random sign 0.850, NTK fc2 0.200, eNTK fc1 0.500; "
        "tau NTK fc2 0.80, eNTK fc1 undefined"
    )


def test_every_transfer_figure_has_a_one_line_title_and_a_subtitle(tmp_path, drawn, assert_heading, nets, kernel, rng):
    plots.two_layer_transfer(nets, kernel, tmp_path / "two_layer.png", subtitle="MNIST, full-batch GD", eps=0.3)
    image, gradients = rng.uniform(0, 1, (1, 8, 8)), rng.normal(size=(2, 1, 8, 8))
    plots.gradient_pictures(image, [("NTK", gradients)], [1, 10], tmp_path / "gradients.png", subtitle="MNIST")
    accuracy, tau = rng.uniform(0, 1, (len(TARGETS), len(SOURCES))), rng.uniform(0, 1, (len(TARGETS), 7))
    plots.transfer_heatmap(
        TARGETS, SOURCES, accuracy, tmp_path / "heatmap.png", transferability=(SOURCES[:7], tau), subtitle="PGD"
    )
    series = [("standard", [1, 2, 3], [0.2, 0.5, 0.7])]
    plots.transferability_curves(series, tmp_path / "tau.png", subtitle="target: standard net")
    subtitles = {
        "two_layer.png": "MNIST, full-batch GD",
        "gradients.png": "MNIST",
        "heatmap.png": "PGD",
        "tau.png": "target: standard net",
    }
    assert set(drawn) == set(subtitles)
    for name, subtitle in subtitles.items():
        assert_heading(drawn[name], subtitle)


def test_long_column_labels_and_subtitles_wrap_into_even_lines():
    from ntkrobust.plots._style import _even_lines

    assert _even_lines("mnist-fgsm-noise epoch 5", 22) == ["mnist-fgsm-noise", "epoch 5"]  # not "... epoch", "5"
    assert _even_lines("mnist-standard epoch 5", 22) == ["mnist-standard epoch 5"]
    assert _even_lines("", 22) == [] and _even_lines("a-very-long-path-name x", 8) == ["a-very-long-path-name", "x"]
    subtitle = "accuracy = share still correct; target mnist-standard epoch 10"
    assert _even_lines(subtitle, 56) == ["accuracy = share still correct;", "target mnist-standard epoch 10"]
