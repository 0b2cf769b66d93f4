"""Random starts of rows picked out of a data set (``ThreatModel.random_start(places=...)``, used
by ``evaluate --restarts`` to attack only the points still standing): each row gets the start its
point gets when the whole set is attacked, to the bit, for both norms and any picking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkrobust.attacks.pgd import pgd
from ntkrobust.attacks.threat import ThreatModel


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.5)])
@pytest.mark.parametrize(
    "picked",
    [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [3], [0, 2, 3, 4, 9, 10], [10, 2, 3], [], [5, 5]],
    ids=["all", "one", "runs", "out-of-order", "none", "twice"],
)
def test_each_picked_row_starts_where_the_whole_set_starts_it(norm, eps, picked):
    """Rows in runs of consecutive places, alone, out of order or twice: the starts of the whole
    set of 11 points indexed by the places (numpy and torch alike)."""
    threat = ThreatModel(norm=norm, eps=eps)
    x = np.random.default_rng(0).random((11, 3, 5, 5))
    places = np.array(picked, dtype=np.int64)
    whole = threat.random_start(x, seed=4)
    np.testing.assert_array_equal(threat.random_start(x[places], 4, places=places), whole[places])
    found = threat.random_start(torch.as_tensor(x[places]), 4, places=places)
    np.testing.assert_array_equal(found.numpy(), whole[places])
    # the places say where each row sits: first_row is not added to them
    np.testing.assert_array_equal(threat.random_start(x[places], 4, first_row=3, places=places), whole[places])


def test_pgd_from_the_places_is_pgd_on_the_whole_set_at_those_rows():
    """PGD of 6 steps on a linear loss's sign gradients: the picked rows' iterates are the whole
    set's at those rows (the start is the only random part)."""
    weights = np.random.default_rng(1).standard_normal((1, 1, 4, 4))

    def gradient(x, y):
        return np.broadcast_to(weights * (1.0 - 2.0 * y[:, None, None, None]), x.shape)

    x = np.random.default_rng(2).random((9, 1, 4, 4))
    y = np.arange(9) % 2
    places = np.array([1, 2, 6, 8])
    whole = pgd(gradient, x, y, eps=0.2, step=0.05, steps=6, seed=3)
    picked = pgd(gradient, x[places], y[places], eps=0.2, step=0.05, steps=6, seed=3, places=places)
    np.testing.assert_array_equal(picked, whole[places])


@pytest.mark.parametrize(
    "places, said",
    [
        (np.array([0, 1]), "places must be 3 whole numbers >= 0, one per row"),
        (np.array([0, -1, 2]), "places must be 3 whole numbers >= 0"),
        (np.array([0.0, 1.0, 2.0]), "places must be 3 whole numbers >= 0"),
        (np.array([[0, 1, 2]]), "places must be 3 whole numbers >= 0"),
    ],
)
def test_places_that_do_not_name_one_point_per_row_are_refused(places, said):
    with pytest.raises(ValueError, match=said):
        ThreatModel(norm="linf", eps=0.1).random_start(np.zeros((3, 1, 2, 2)), 0, places=places)


def test_adversarial_examples_refuse_places_of_another_length():
    """Before the first batch: a batch's slice of the places would hide the mismatch."""
    from ntkrobust.bridge.adversarial import adversarial_examples

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x, y = torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"places must hold one place per point, 5, got shape \(4,\)"):
        adversarial_examples(net, x, y, method="pgd", eps=0.1, step=0.05, steps=2, places=np.arange(4))
