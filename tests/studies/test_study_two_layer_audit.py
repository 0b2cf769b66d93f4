"""Audit of ``studies.two_layer.run``: the kernel side of every measured epoch, the alignment and
the config, recomputed by hand.

The independent route: the two-layer NTK machine is fitted directly (``kernels.fit_kernel_machine``)
and moved to each recorded time t with ``at_time``; its FGSM examples (seeded by --seed), clean and
still-correct accuracies and the loss gradient of the pictured test point are computed here and
compared with the record and ``gradients.npz``'s arrays. The epoch <-> t slope must be the anchor
net's matched time over the anchor epoch, and the anchor net is the first net itself (same width,
seed and learning rate), so its own matched time at the anchor epoch is the anchor time. Every
setting is off its default (seed 4, lr 0.05, anchor epoch 2, picture 3, measured every 2 epochs).
"""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, ThreatSettings, two_layer
from ntkrobust.studies.two_layer import TwoLayerSettings

SEED, LR, EPS, PICTURE, ANCHOR = 4, 0.05, 0.2, 3, 2
DATA = DataSettings(classes=(3, 8), n_train=40, n_test=20, seed=SEED)


@pytest.fixture(scope="module")
def study():
    settings = TwoLayerSettings(
        data=DATA, width=(64,), epochs=6, lr=LR, log_every=2, anchor_epoch=ANCHOR, device="cpu",
        threat=ThreatSettings(eps=EPS), picture_index=PICTURE,
    )  # fmt: skip
    return two_layer.run(settings), DATA.load()


def test_the_kernel_at_every_measured_epoch_is_the_machine_at_that_time(study):
    from ntkrobust.attacks import AttackSpec, robust_accuracy
    from ntkrobust.kernels import fit_kernel_machine, get_architecture
    from ntkrobust.kernels.adversarial import craft_adversarial

    result, data = study
    machine = fit_kernel_machine(get_architecture("two-layer"), data.x_train, data.y_train, classes=data.classes)
    spec = AttackSpec("fgsm", EPS, "linf", None, 1, True, SEED)
    per_epoch = result.record["alignment"]["time_per_epoch"]
    rows = result.record["kernel"]["epochs"]
    assert [row["epoch"] for row in rows] == [2, 4, 6]
    for i, row in enumerate(rows):
        assert row["time"] == pytest.approx(row["epoch"] * per_epoch, rel=1e-12)
        at_t = machine.at_time(row["time"])
        clean = at_t.predict(data.x_test)
        examples = craft_adversarial(at_t, data.x_test, data.y_test, spec)
        assert row["clean_accuracy"] == robust_accuracy(clean, data.y_test)
        assert row["robust_accuracy"] == robust_accuracy(at_t.predict(examples), data.y_test, clean)
        gradient = np.asarray(at_t.loss_gradient(data.x_test, machine.target_index(data.y_test)))
        np.testing.assert_allclose(result.experiment.kernel_pictures[i], gradient[PICTURE], rtol=1e-6, atol=1e-12)
    assert any(row["robust_accuracy"] < row["clean_accuracy"] for row in rows)  # the attack bites


def test_the_alignment_is_anchored_on_the_first_net_at_the_anchor_epoch(study):
    result, _ = study
    alignment = result.record["alignment"]
    assert alignment["anchor_epoch"] == ANCHOR
    assert alignment["time_per_epoch"] == pytest.approx(alignment["anchor_time"] / ANCHOR, rel=1e-12)
    # the anchor net is the first net, trained the same way: its own matched time at the anchor epoch
    (net,) = result.record["nets"]
    (at_anchor,) = [row for row in net["epochs"] if row["epoch"] == ANCHOR]
    assert at_anchor["matched_time"] == pytest.approx(alignment["anchor_time"], rel=1e-9)
    assert alignment["theory_time_per_epoch"] == pytest.approx(LR / 40, rel=1e-12)  # η/n, n = 40 train
    assert alignment["fitted_over_theory"] == pytest.approx(alignment["time_per_epoch"] / (LR / 40), rel=1e-12)
    assert 0.5 < alignment["fitted_over_theory"] < 2  # the nets trained at the η the theory was given


def test_the_config_and_pictures_hold_the_values_given(study):
    result, data = study
    config = result.record["config"]
    assert config["lr"] == LR and config["seeds"] == [SEED] and config["widths"] == [64] and config["epochs"] == 6
    assert config["measured_epochs"] == [2, 4, 6] and config["picture_index"] == PICTURE
    assert config["attack"]["seed"] == SEED and config["attack"]["eps"] == EPS
    np.testing.assert_array_equal(result.figures["image"], data.x_test[PICTURE])
    assert result.experiment.net_pictures[0].shape == (3, 1, 8, 8)


@pytest.mark.parametrize(("epochs", "anchor"), [(250, 2), (1000, 10), (49, 1), (5, 1)])
def test_the_default_anchor_is_a_hundredth_of_the_epochs(epochs, anchor):
    """TK supp. C anchors at 1e3 of 1e5 epochs: --anchor-epoch defaults to epochs / 100, at least 1."""
    assert two_layer._check(TwoLayerSettings(data=DATA, epochs=epochs)) == anchor


def test_the_kernels_robust_accuracy_counts_only_points_correct_at_x_too(monkeypatch, own_class_attack):
    from ntkrobust.kernels import adversarial, fit_kernel_machine, get_architecture

    data = DATA.load()
    monkeypatch.setattr(adversarial, "craft_adversarial", own_class_attack(data))
    settings = TwoLayerSettings(data=DATA, width=(16,), epochs=2, lr=LR, device="cpu", threat=ThreatSettings(eps=EPS))
    rows = two_layer.run(settings).record["kernel"]["epochs"]
    machine = fit_kernel_machine(get_architecture("two-layer"), data.x_train, data.y_train, classes=data.classes)
    moved_x = own_class_attack(data)(None, data.x_test, data.y_test, None)
    differ = False
    for row in rows:
        at_t = machine.at_time(row["time"])
        clean = at_t.predict(data.x_test) == data.y_test
        moved = at_t.predict(moved_x) == data.y_test
        differ |= bool(moved[~clean].any())
        assert row["robust_accuracy"] == (clean & moved).mean()
    assert differ  # a wrong point made right at some epoch: the conventions differ here


def test_the_kernels_examples_are_made_by_the_machine_at_each_rows_time(monkeypatch):
    """The NTK-generated examples of a measured epoch come from the machine at that epoch's time
    t (the one the row reports), with the run's attack: the attack is watched as the study calls
    it. Its accuracies alone could not tell: FGSM's signs at t and 2t agree at early times."""
    from ntkrobust.kernels import adversarial

    calls, real = [], adversarial.craft_adversarial

    def watched(machine, x, y, spec, progress=False):
        calls.append((machine.time, spec))
        return real(machine, x, y, spec, progress=progress)

    monkeypatch.setattr(adversarial, "craft_adversarial", watched)
    settings = TwoLayerSettings(data=DATA, width=(16,), epochs=2, lr=LR, device="cpu", threat=ThreatSettings(eps=EPS))
    rows = two_layer.run(settings).record["kernel"]["epochs"]
    assert [t for t, _ in calls] == pytest.approx([row["time"] for row in rows], rel=1e-12)
    assert {(s.method, s.eps, s.seed) for _, s in calls} == {("fgsm", EPS, SEED)}
