"""Specialization figures whose every panel is undefined are not drawn (``plots.undrawn_specializations``).

Under the net's own labels on its PGD examples a standard net may predict few classes, so every
KSM is undefined ("class 0 has no labelled point"): the figure was a grid of empty boxes (seen by
following the README on 2026-12-06, 3 of 4 panels empty with the README's runs, 4 of 4 with
shorter ones). Now it is drawn when one panel is defined, and ``dynamics`` warns otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ntkrobust.kernels.metrics import UndefinedMetricError, specialization_matrix
from ntkrobust.plots import applicable_figures, undrawn_specializations

UNDEFINED = "specialization is undefined: class {} has no labelled point"


def _run(label: str, own_labels: list[Any]) -> dict[str, Any]:
    """A run summary whose epoch e tracked a defined C-NTK KSM and, under its own labels, the
    matrix ``own_labels[e]``, an undefined one (an int: the class without a point) or the
    metrics given (a dict)."""
    kernels = []
    for epoch, own in enumerate(own_labels):
        if isinstance(own, dict):
            labels = own
        elif isinstance(own, int):
            labels = {"undefined": {"specialization_matrix": UNDEFINED.format(own)}}
        else:
            labels = {"specialization_matrix": own}
        kernels.append({"epoch": epoch, "clean": {"specialization_matrix": [[1.5, 0.5], [0.5, 1.5]]},
                        "adversarial_labels": labels})  # fmt: skip
    return {"label": label, "path": label, "kernels": kernels, "epochs": [{"epoch": 0}]}


def test_a_figure_whose_every_panel_is_undefined_is_named_with_its_reasons_and_not_drawn():
    runs = [_run("standard", [0, 1]), _run("pgd", [0, 0])]
    undrawn = undrawn_specializations(runs)
    reasons = "; ".join(UNDEFINED.format(c) for c in (0, 1))
    assert undrawn == {"specialization_adversarial": "not tracked", "specialization_adversarial_labels": reasons}
    figures = applicable_figures(runs)
    assert "specialization_clean" in figures and "specialization_adversarial_labels" not in figures


def test_one_defined_panel_draws_the_figure():
    runs = [_run("standard", [0, 1]), _run("pgd", [0, [[1.2, 0.8], [0.9, 1.1]]])]
    assert "specialization_adversarial_labels" not in undrawn_specializations(runs)
    assert "specialization_adversarial_labels" in applicable_figures(runs)
    # the columns asked for decide: at epoch 0 alone every panel is undefined again
    assert "specialization_adversarial_labels" in undrawn_specializations(runs, [0.0])
    assert "specialization_adversarial_labels" not in applicable_figures(runs, ksm_epochs=[0.0])


def test_the_defined_columns_of_a_kernel_are_recorded_and_equal_the_alignment_ratios(rng):
    """Three of five classes labelled: ``kernel_metrics`` records ``specialization_columns``, the
    three defined columns (against an explicit loop of A(K_ii, y_j y_jᵀ) / mean_l A(K_ll, y_j y_jᵀ))
    and null in the two others, and no mean over an incomplete diagonal."""
    from ntkrobust.kernels.metrics import kernel_alignment, kernel_metrics, specialization_columns

    n, c = 12, 5
    factors = rng.standard_normal((c, n, 4))
    blocks = np.stack([f @ f.T for f in factors], axis=-1)  # (N, N, C): PSD class kernels
    labels = np.array([0, 2, 4] * 4)
    columns = specialization_columns(blocks, labels)
    for j in range(c):
        y = (labels == j).astype(np.float64)
        if not y.any():
            assert np.all(np.isnan(columns[:, j]))
            continue
        aligned = np.array([kernel_alignment(blocks[:, :, i], np.outer(y, y)) for i in range(c)])
        np.testing.assert_allclose(columns[:, j], aligned / aligned.mean(), rtol=1e-12)
    metrics = kernel_metrics(blocks, labels)
    assert "specialization_matrix" not in metrics and "mean_specialization" not in metrics
    assert (
        metrics["undefined"]["mean_specialization"]
        == "specialization is undefined: classes 1 and 3 have no labelled point"
    )
    recorded = np.array(metrics["specialization_columns"], dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(recorded), np.isnan(columns))
    np.testing.assert_array_equal(recorded[~np.isnan(recorded)], columns[~np.isnan(columns)])
    with pytest.raises(UndefinedMetricError, match="classes 1 and 3 have no labelled point"):
        specialization_matrix(blocks, labels)


def test_a_panel_with_undefined_columns_is_drawn_with_them_grey(tmp_path):
    """A KSM of which one column is defined is drawn (the others grey), says how many columns are
    undefined in its title and why in the figure's note, and takes part in the colour scale
    through its finite numbers only."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.text import Text

    from ntkrobust.plots import dynamics_comparison

    reason = "specialization is undefined: class 1 has no labelled point"
    partial = {"specialization_columns": [[1.3, None], [0.7, None]], "undefined": {"mean_specialization": reason}}
    runs = [_run("standard", [partial]), _run("pgd", [[[1.2, 0.8], [0.9, 1.1]]])]
    assert "specialization_adversarial_labels" not in undrawn_specializations(runs)
    matrix, why = dynamics_comparison.specialization_at(runs[0], "adversarial_labels", 0.0)
    assert matrix is not None and np.isnan(matrix[:, 1]).all() and matrix[:, 0].tolist() == [1.3, 0.7]
    assert why == reason
    titles: list[str] = []
    texts: list[str] = []
    save = dynamics_comparison._save

    def keep(fig, path):
        titles.extend(ax.get_title() for ax in fig.axes)
        texts.extend(" ".join(t.get_text().split()) for t in fig.findobj(Text))  # the note is wrapped
        save(fig, path)

    try:
        dynamics_comparison._save = keep
        dynamics_comparison.specialization_heatmaps(
            runs, tmp_path / "ksm.png", figure="specialization_adversarial_labels"
        )
    finally:
        dynamics_comparison._save = save
        plt.close("all")
    assert "epoch 0 · 1/2 columns defined" in titles
    assert "epoch 0 · tr(KSM)/C = 1.150" in titles
    assert any("grey: an undefined column, its class has no labelled point" in text for text in texts)
    assert (tmp_path / "ksm.png").stat().st_size > 0
