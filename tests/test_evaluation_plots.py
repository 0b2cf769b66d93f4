"""The robust-accuracy figure of ``evaluate`` (``plots.robust_accuracy_bars``): synthetic records
in the documented format (``plots.types.EvaluatedNet``); each figure must be a real PNG, draw
what the records hold (an attack that did not run, a NaN, no worst case) and mark a net whose
gradients are suspected of masking."""

from __future__ import annotations

import math

from ntkrobust import plots

ALL = {"clean": 0.95, "pgd-20": 0.70, "pgd-100": 0.69, "cw-100": 0.70, "autoattack": 0.66, "worst_case": 0.66}
MASKED = {"clean": 0.92, "pgd-20": 0.42, "pgd-100": 0.40, "cw-100": 0.36, "autoattack": 0.0, "worst_case": 0.0}


def test_every_measure_of_every_net_is_drawn_and_masking_marked(tmp_path, assert_real_png, monkeypatch):
    from matplotlib.colors import to_hex

    import ntkrobust.plots.evaluation as evaluation

    drawn = []
    save = evaluation._save
    monkeypatch.setattr(evaluation, "_save", lambda fig, path: (drawn.append(fig), save(fig, path)))
    nets = [
        {"label": "mnist-pgd-centered-on-standard-10 epoch 6", "accuracy": MASKED, "masking_suspected": True},
        {"label": "mnist-pgd epoch 10", "accuracy": ALL, "masking_suspected": False},
    ]
    plots.robust_accuracy_bars(nets, tmp_path / "both.png", subtitle="mnist, 200 test points; ℓ∞ ε = 0.3")
    assert_real_png(tmp_path / "both.png", colours=5)
    (ax,) = [a for a in drawn[0].axes if a.get_yticklabels()]
    values = sorted(round(bar.get_width(), 2) for bar in ax.patches)
    assert values == sorted(round(v, 2) for net in (MASKED, ALL) for k, v in net.items() if k != "worst_case")
    masked, plain = ax.get_yticklabels()
    assert "gradient masking suspected" in masked.get_text() and "masking" not in plain.get_text()
    assert to_hex(masked.get_color()) == evaluation._MASKING.lower() != to_hex(plain.get_color())


def test_a_record_with_fewer_measures_or_none_is_drawn(tmp_path, assert_real_png):
    partial = {"label": "net $x$", "accuracy": {"clean": 0.9, "autoattack": math.nan}}  # $: no mathtext
    plots.robust_accuracy_bars([partial], tmp_path / "partial.png")
    assert_real_png(tmp_path / "partial.png", colours=5)
    plots.robust_accuracy_bars([], tmp_path / "none.png")
    assert_real_png(tmp_path / "none.png", min_bytes=4000, colours=3)


def test_the_references_follow_the_attacks_and_thin_bars_and_the_worst_case_are_named(tmp_path, monkeypatch):
    """A newcomer's run of ``--attacks pgd-20,pgd-100,cw-100`` (2026-12-06): the figure cited
    AutoAttack, which had not run; a standard net's three bars at 0.000 had no width, so their
    values said not which attack was which; the worst case was a line without its number."""
    import ntkrobust.plots.evaluation as evaluation
    from ntkrobust.plots._style import _heading

    headings: list[str] = []
    texts: list[list[str]] = []
    save = evaluation._save
    monkeypatch.setattr(
        evaluation,
        "_heading",
        lambda fig, title, subtitle, ref: (headings.append(ref), _heading(fig, title, subtitle, ref=ref)),
    )
    monkeypatch.setattr(
        evaluation,
        "_save",
        lambda fig, path: (texts.append([t.get_text() for ax in fig.axes for t in ax.texts]), save(fig, path)),
    )
    standard = {"clean": 0.96, "pgd-20": 0.0, "pgd-100": 0.0, "cw-100": 0.0, "worst_case": 0.0}
    robust = {"clean": 0.905, "pgd-20": 0.555, "pgd-100": 0.55, "cw-100": 0.535, "worst_case": 0.495}
    nets = [{"label": "standard", "accuracy": standard}, {"label": "pgd", "accuracy": robust}]
    plots.robust_accuracy_bars(nets, tmp_path / "gradient.png")
    assert headings[-1] == "PGD: Madry et al. 2018; CW loss: Carlini & Wagner 2017"
    assert {"0.000 PGD-20", "0.000 PGD-100", "0.000 CW-100 (ℓ∞)", "0.555", "worst\n0.000", "worst\n0.495"} <= set(
        texts[-1]
    )
    plots.robust_accuracy_bars([{"label": "pgd", "accuracy": ALL}], tmp_path / "all.png")
    assert headings[-1].endswith("AutoAttack: Croce & Hein 2020")
