"""``studies.two_layer.run(settings)``: TK supp. C, two-layer nets against their NTK through training
(the nets of ``conftest.two_layer_nets``), the files its result saves, its summary, and the
settings it refuses before any compute."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ntkrobust.studies import two_layer
from ntkrobust.studies.two_layer import TwoLayerSettings

NO_TRAINING = ("ntkrobust.kernels.fit_kernel_machine", "ntkrobust.bridge.two_layer.two_layer_experiment")


def test_nets_move_towards_their_kernel(two_layer_nets):
    record = two_layer_nets[0].record
    for key in ("clean_accuracy", "white_box_accuracy", "ntk_attack_accuracy", "random_accuracy"):
        assert set(record[key]) == {"width 300, seed 0", "width 300, seed 1"}
    net = record["nets"][0]
    assert [row["epoch"] for row in net["epochs"]] == [1, 2, 5, 10, 20]
    assert all(-1 <= row["gradient_cosine"] <= 1 for row in net["epochs"])
    assert net["epochs"][-1]["gradient_cosine"] > 0.5  # the net has moved towards its kernel
    assert net["white_box_accuracy"] < net["random_accuracy"] <= net["clean_accuracy"]
    alignment = record["alignment"]
    assert alignment["anchor_epoch"] == 1 and 0.5 < alignment["fitted_over_theory"] < 2
    assert len(record["kernel"]["epochs"]) == 5 and record["config"]["attack"]["eps"] == 0.2
    assert record["config"]["seeds"] == [0, 1] and record["config"]["measured_epochs"] == [1, 2, 5, 10, 20]


def test_save_writes_results_figures_arrays_and_checkpoints(two_layer_nets, assert_real_png):
    out = two_layer_nets[1]
    assert sorted(p.name for p in out.iterdir()) == [
        "gradients.npz",
        "gradients.png",
        "net_w300_s0.pt",
        "net_w300_s1.pt",
        "results.json",
        "two_layer.png",
    ]
    assert json.loads((out / "results.json").read_text())["nets"][1]["checkpoint"] == "net_w300_s1.pt"
    with np.load(out / "gradients.npz", allow_pickle=False) as arrays:
        assert arrays["kernel"].shape == (5, 1, 8, 8) and arrays["net_w300_s1"].shape == (5, 1, 8, 8)
        assert arrays["epochs"].tolist() == [1, 2, 5, 10, 20]
    assert_real_png(out / "two_layer.png")
    assert_real_png(out / "gradients.png")


def points(records: list[dict], key: str) -> list[tuple[float, float]]:
    """(epoch, value) of ``key`` over the epochs ≥ 1 (a log axis) where it is neither None nor NaN."""
    return [
        (float(r["epoch"]), float(r[key]))
        for r in records
        if r["epoch"] >= 1 and r.get(key) is not None and np.isfinite(r[key])
    ]


def drawn_points(ax, colour, style) -> list[list[tuple[float, float]]]:
    """The points of the lines of ``ax`` in ``colour`` and in the dashes, width and alpha of the
    legend handle ``style``."""
    from matplotlib.colors import to_rgb

    def look(line):
        return line.get_linestyle(), line.get_linewidth(), line.get_alpha()

    return [
        list(zip(line.get_xdata().tolist(), line.get_ydata().tolist(), strict=True))
        for line in ax.get_lines()
        if to_rgb(line.get_color()) == to_rgb(colour) and look(line) == look(style)
    ]


def test_the_figures_draw_what_results_json_and_gradients_npz_hold(two_layer_nets, tmp_path, drawn):
    """The saved figures show the run's own numbers: in two_layer.png each legend label's line
    (per net, in its legend colour) is the recorded series it names, the NTK machine's its own
    attack; in gradients.png each picture is the saved gradient of its row's model at its
    column's epoch. A PNG check sees neither a swapped series nor a wrong picture."""
    out = two_layer_nets[0].save(tmp_path / "run")
    record = json.loads((out / "results.json").read_text())
    fig = drawn["two_layer.png"]
    (legend,) = fig.legends
    handles = {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)}
    (bottom,) = [ax for ax in fig.axes if ax.get_ylabel() == "accuracy"]
    claimed = {
        "net: own white-box attack": "white_box_accuracy",
        "net: NTK-generated examples": "ntk_attack_accuracy",
        "net: clean": "clean_accuracy",
        "net: random-sign perturbation": "random_accuracy",
    }
    for net in record["nets"]:
        colour = handles[f"m = {net['width']}, seed {net['seed']}"].get_color()
        for label, key in claimed.items():
            assert drawn_points(bottom, colour, handles[label]) == [points(net["epochs"], key)], (net["seed"], label)
    ntk = handles["NTK machine:\nits own attack"]
    assert drawn_points(bottom, ntk.get_color(), ntk) == [points(record["kernel"]["epochs"], "robust_accuracy")]

    with np.load(out / "gradients.npz", allow_pickle=False) as arrays:
        shown = two_layer.picture_epochs(arrays["epochs"].tolist())
        at = [arrays["epochs"].tolist().index(e) for e in shown]
        rows = [(f"net, width 300, seed {s}", arrays[f"net_w300_s{s}"][at]) for s in (0, 1)]
        rows.append(("NTK", arrays["kernel"][at]))
    axes = np.array(drawn["gradients.png"].axes).reshape(len(rows), 1 + len(shown))
    assert [ax.get_title() for ax in axes[0, 1:]] == [f"epoch {e}" for e in shown]
    for r, (label, gradients) in enumerate(rows):
        assert axes[r, 0].get_ylabel().replace("\n", " ") == label
        for c, gradient in enumerate(gradients):
            (picture,) = axes[r, 1 + c].get_images()
            np.testing.assert_array_equal(np.asarray(picture.get_array()), gradient[0])  # one channel: as it is


def test_checkpoints_load_as_two_layer_nets(two_layer_nets):
    from ntkrobust.bridge.checkpoint import load_checkpoint

    _, config, payload = load_checkpoint(two_layer_nets[1] / "net_w300_s0.pt")
    assert (config.model, config.width, config.num_classes) == ("two-layer", 300, 1)  # one output: a binary task
    assert payload["epoch"] == 20


def test_summary_has_a_line_per_net(two_layer_nets):
    result = two_layer_nets[0]
    lines = result.summary().splitlines()
    assert [line.split(" after ")[0] for line in lines] == ["two-layer width 300 seed 0", "two-layer width 300 seed 1"]
    net = result.record["nets"][0]
    assert f"gradient cosine {net['gradient_cosine']:.3f}; accuracy clean {net['clean_accuracy']:.3f}" in lines[0]
    assert "own fgsm" in lines[0] and "NTK fgsm" in lines[0]


def test_an_undefined_gradient_cosine_is_said_in_the_summary_and_the_log(two_layer_nets, caplog):
    """``cosine_summary`` gives None where no example's two gradients are both non-zero (a net
    whose units are all dead): the lines say so instead of failing on the format."""
    from ntkrobust.bridge.two_layer import _log_net

    result = two_layer_nets[0]
    net = {**result.record["nets"][0], "gradient_cosine": None}
    undefined = dataclasses.replace(result, record={**result.record, "nets": [net]})
    assert "gradient cosine undefined; accuracy clean" in undefined.summary()
    with caplog.at_level("INFO", logger="ntkrobust"):
        _log_net(net, 20)
    assert "20 epochs, gradient cosine undefined, clean" in caplog.text


def test_picture_epochs_spread_on_a_log_scale():
    assert two_layer.picture_epochs([1, 2, 5, 10, 20]) == [2, 10, 20]  # log 20 · (1/3, 2/3, 1)
    assert two_layer.picture_epochs([1, 3]) == [1, 3]


#: TwoLayerSettings fields (beside 5 epochs on the binary task) -> the refusal
BAD = {
    "anchor after the end": ({"anchor_epoch": 9}, "is after the last epoch"),
    "picture index": ({"picture_index": 40}, "exceeds the 40 test points"),
    "repeated width": ({"width": (10, 10)}, "repeats a width"),
    "zero lr": ({"lr": 0.0}, "--lr must be a finite number > 0"),
}


def test_seeds_beyond_torchs_range_are_refused_before_training(binary_task, refuses):
    """--nets 2 from the largest seed: the first net trained in full, then the second was refused
    as "seed must lie in [0, 2**63), got 9223372036854775808", a seed never given."""
    import dataclasses

    data = dataclasses.replace(binary_task, seed=2**63 - 1)
    message = "--nets 2 seeds its nets --seed to --seed + 1, and 9223372036854775808 is beyond 2**63 - 1"
    refuses(two_layer, TwoLayerSettings(data=data, epochs=5, nets=2), message, compute=NO_TRAINING)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_settings_are_refused_before_training(case, binary_task, refuses):
    fields, message = BAD[case]
    refuses(two_layer, TwoLayerSettings(data=binary_task, epochs=5, **fields), message, compute=NO_TRAINING)


def test_the_memory_check_sizes_the_nets_of_a_binary_task_with_one_output(binary_task, monkeypatch):
    """A binary task's nets have the machine's one ±1 output (``checkpoints load as two-layer
    nets`` above: num_classes 1); the memory check before any compute sized them with two."""
    from ntkrobust.bridge import models

    checked = []

    def record(config, copies=1):
        checked.append((config.num_classes, copies))
        raise models.ModelError("recorded")

    monkeypatch.setattr(models, "check_memory", record)
    with pytest.raises(two_layer.StudyError, match="recorded"):
        two_layer.run(TwoLayerSettings(data=binary_task, epochs=5, width=(300,)))
    assert checked == [(1, 2)]
