"""Audit of the settings and steps the studies share (``studies._common``, ``studies._base``):
the data subset, the training subsets, the threat model's schedule and spec, the torch network and
the results envelope, each against its documented rule recomputed by hand (``bridge.data``'s
seeded, class-balanced draws; ``attacks.pgd_schedule``; ``bridge.models``)."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, ThreatSettings
from ntkrobust.studies._base import envelope
from ntkrobust.studies._common import torch_network, training_subset


def test_the_data_is_the_seeded_subset_and_its_config_the_sizes_loaded():
    from ntkrobust.bridge.data import load_dataset

    settings = DataSettings(classes=(3, 8), n_train=30, seed=7)  # every test point of 3 and 8
    data = settings.load()
    mine = load_dataset("digits", classes=[3, 8], n_train=30, n_test=None, seed=7)
    np.testing.assert_array_equal(data.x_train, mine.x_train)
    np.testing.assert_array_equal(data.y_test, mine.y_test)
    assert data.x_test.shape[0] == mine.x_test.shape[0] > 30
    other = load_dataset("digits", classes=[3, 8], n_train=30, n_test=None, seed=0)
    assert not np.array_equal(data.x_train, other.x_train)  # the seed matters here
    config = settings.config(data)
    assert (config["n_train"], config["n_test"], config["classes"]) == (30, mine.x_test.shape[0], [3, 8])


def test_a_training_subset_is_balanced_and_drawn_from_the_seed():
    from ntkrobust.bridge.data import balanced_indices

    data = DataSettings(classes=(3, 8), n_train=60, n_test=10).load()
    subset = training_subset(data, 20, 4, "--kernel-n")
    chosen = balanced_indices(data.y_train, data.classes, 20, 4)
    np.testing.assert_array_equal(subset.x_train, data.x_train[chosen])
    assert np.bincount(subset.y_train)[[3, 8]].tolist() == [10, 10]
    assert not np.array_equal(chosen, balanced_indices(data.y_train, data.classes, 20, 0))
    np.testing.assert_array_equal(subset.x_test, data.x_test)  # the held-out points stay
    assert training_subset(data, None, 4, "--kernel-n") is data and training_subset(data, 60, 4, "--kernel-n") is data


@pytest.mark.parametrize(
    ("threat", "expected"),
    [
        (ThreatSettings(eps=0.2, step=0.07, steps=4), (0.2, 0.07, 4)),  # as given
        (ThreatSettings(norm="l2", eps=1.5, step=0.4, steps=2), (1.5, 0.4, 2)),
    ],
)
def test_the_threat_resolves_to_the_schedule_given(threat, expected):
    assert threat.resolve((1, 8, 8)) == expected


def test_the_default_schedule_is_the_attacks_standard_one():
    from ntkrobust.attacks import spec, standard_threat

    for channels, norm in ((1, "linf"), (3, "linf"), (3, "l2")):
        eps = standard_threat(channels, norm)[0]
        step, steps = spec.pgd_schedule(channels, norm, eps, None, None)
        assert ThreatSettings(norm=norm).resolve((channels, 8, 8)) == (eps, step, steps)


def test_the_spec_carries_the_schedule_start_and_seed():
    pgd = ThreatSettings(eps=0.2, step=0.07, steps=4, random_start=False).spec("pgd", (1, 8, 8), 9)
    assert (pgd.method, pgd.eps, pgd.norm, pgd.step, pgd.steps, pgd.random_start, pgd.seed) == (
        "pgd", 0.2, "linf", 0.07, 4, False, 9,
    )  # fmt: skip
    fgsm = ThreatSettings(eps=0.2).spec("fgsm", (1, 8, 8), 9)
    assert (fgsm.step, fgsm.steps, fgsm.seed) == (None, 1, 9)


def test_the_torch_network_is_the_registry_model_of_the_seed():
    import torch

    from ntkrobust.bridge.models import build_model, model_config

    data = DataSettings(classes=(3, 8), n_train=20, n_test=10).load()
    net, config = torch_network(data, model="fc1", width=6, checkpoint=None, seed=7)
    assert (config.model, config.width, config.seed, config.num_classes) == ("fc1", 6, 7, 2)
    mine = build_model(model_config("fc1", (1, 8, 8), 2, width=6, seed=7))
    for a, b in zip(net.state_dict().values(), mine.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_envelope_keeps_a_seed_of_zero_and_the_metrics_first():
    record = envelope("x", {"a": 1}, {"c": 2}, seconds={"total": 1.0}, argv=["x"], seed=0, warnings=[])
    assert record["seed"] == 0 and record["config"] == {"c": 2} and record["argv"] == ["x"]
    assert list(record)[:3] == ["command", "a", "config"]
    assert "seed" not in envelope("x", {}, {}, seconds=None, argv=None)
