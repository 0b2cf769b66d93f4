"""Fifteenth audit (mutation testing of the changes of one day; its heartbeat case is in
test_progress.py): ``looks_channels_last`` (a width of 4 is not a channel count) and the blanked
labels of the robust-only figure's r axis (no more than needed, "all (n)" before the powers of
ten, the rest from the left, every panel)."""

from __future__ import annotations

import itertools

import pytest

from ntkrobust import plots
from ntkrobust.attacks.threat import looks_channels_last
from ntkrobust.kernels.robust_only import RobustOnlyResult

# --- attacks.threat.looks_channels_last ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8, 4), (5, 6, 4), (28, 28, 2)])
def test_a_last_axis_of_two_or_four_is_a_width_not_channels(shape):
    """Channels last means a grey or colour count (1 or 3) last: (8, 8, 4) is 8 channels of 8x4,
    and the models take it as such (taking RGBA or grey-and-alpha last as channels too refused
    NCHW images of width 2 or 4); (8, 8, 1) and (8, 8, 3) are refused as before."""
    from ntkrobust.bridge.models import model_config

    assert not looks_channels_last(shape)
    assert model_config("conv1", shape, 2).input_shape == shape
    assert looks_channels_last((8, 8, 1)) and looks_channels_last((8, 8, 3))


# --- plots.robust_only_curves: which r labels are blanked ---------------------------------------


def _panel(name: str, rs: tuple[int, ...], everything: int | None):
    """A panel of the robust-only figure: the same accuracies at every r."""
    results = [RobustOnlyResult(r=r, clean=0.9, fgsm_own=0.1, pgd_own=0.0, fgsm_transfer=0.5, pgd_transfer=0.4)
               for r in rs]  # fmt: skip
    return (name, results, everything)


def _labels(tmp_path, drawn, panels):
    """Each panel's r labels as drawn, by title: [(text, extent of the full label), ...] (a
    blanked label's extent that of its text put back), and the gap the labels keep."""
    plots.robust_only_curves(panels, tmp_path / "r.png")
    fig = drawn["r.png"]
    fig.draw_without_rendering()
    found = {}
    for name, _, everything in panels:
        (ax,) = (ax for ax in fig.axes if ax.get_title() == name)
        texts = [t.get_text() for t in ax.get_xticklabels()]
        ticks = list(ax.get_xticks())
        full = [f"all ({everything})" if everything is not None and t == everything else f"{t:.0f}" for t in ticks]
        ax.set_xticks(ticks, full)
        fig.draw_without_rendering()
        found[name] = list(zip(texts, [t.get_window_extent() for t in ax.get_xticklabels()], strict=True))
    gap = 0.5 * fig.axes[0].get_xticklabels()[0].get_fontsize() * fig.dpi / 72
    return found, gap


def _apart(a, b, gap: float) -> bool:
    return b.x0 - a.x1 >= gap or a.x0 - b.x1 >= gap


@pytest.mark.parametrize(
    "rs",
    [(1, 2, 5, 10, 20, 50, 100, 1000), (1, 2, 3, 10, 20, 30, 100, 1000)],
)
def test_every_panel_blanks_the_labels_that_run_into_one_and_no_other(tmp_path, drawn, rs):
    """Two narrow panels of r up to 100 and all 1000: in each, the labels named are at least half
    their font size apart, and every blanked label would have run into a named one (nothing
    blanked that had room: the gap is half the font size, not more); the second panel is
    blanked too, not only the first."""
    found, gap = _labels(tmp_path, drawn, [_panel("fc2", rs, 1000), _panel("cnn", rs, 1000)])
    for name, labels in found.items():
        named = [box for text, box in labels if text]
        blanked = [box for text, box in labels if not text]
        assert blanked, name  # these panels are crowded
        assert all(_apart(a, b, gap) for a, b in itertools.pairwise(named)), name
        assert all(any(not _apart(box, kept, gap) for kept in named) for box in blanked), name


def test_the_left_label_of_a_crowded_pair_and_all_n_before_a_power_of_ten_are_named(tmp_path, drawn):
    """The labels other than "all (n)" and the powers of ten are taken from the left: of "2" and
    "3", which run into each other, "2" is named. "all (n)" is taken before the powers of ten:
    with n = 500 it is named and "100", which runs into it, is blanked (one narrow panel each)."""
    found, _ = _labels(tmp_path, drawn, [_panel("fc2", (1, 2, 3, 10, 20, 30, 100, 1000), 1000)])
    first = {text for text, _ in found["fc2"]}
    assert "2" in first and "3" not in first
    found, _ = _labels(tmp_path, drawn, [_panel("fc2", (1, 2, 5, 10, 20, 50, 100, 500), 500)])
    second = {text for text, _ in found["fc2"]}
    assert "all (500)" in second and "100" not in second
