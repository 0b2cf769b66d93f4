"""Specialization figures whose every panel is undefined are not drawn (``plots.undrawn_specializations``).

Under the net's own labels on its PGD examples a standard net may predict few classes, so every
KSM is undefined ("class 0 has no labelled point"): the figure was a grid of empty boxes (seen by
following the README on 2026-12-06, 3 of 4 panels empty with the README's runs, 4 of 4 with
shorter ones). Now it is drawn when one panel is defined, and ``dynamics`` warns otherwise.
"""

from __future__ import annotations

from typing import Any

from ntkrobust.plots import applicable_figures, undrawn_specializations

UNDEFINED = "specialization is undefined: class {} has no labelled point"


def _run(label: str, own_labels: list[list[list[float]] | int]) -> dict[str, Any]:
    """A run summary whose epoch e tracked a defined C-NTK KSM and, under its own labels, the
    matrix ``own_labels[e]`` or an undefined one (an int: the class without a point)."""
    kernels = []
    for epoch, own in enumerate(own_labels):
        labels = (
            {"undefined": {"specialization_matrix": UNDEFINED.format(own)}}
            if isinstance(own, int)
            else {"specialization_matrix": own}
        )
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
