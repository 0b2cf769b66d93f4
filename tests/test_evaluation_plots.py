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
