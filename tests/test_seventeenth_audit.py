"""Seventeenth audit (mutation testing of the restarts that attack only the points left standing:
``ThreatModel.random_start(places=...)``, ``pgd(places=...)``, ``adversarial_examples(places=...)``
and ``robust_correct``'s restart loop): the places of picked rows followed across the batches of
``adversarial_examples`` (the suite picked rows only in one batch, so every batch starting from
the first batch's places passed it), and the refusal of places that do not name one point per
row made by ``adversarial_examples`` itself, before the first batch (the suite tried only places
too short, which the batches' own slices refuse too: places too long, or of two dimensions,
passed it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkrobust.bridge.adversarial import adversarial_examples


def _linear_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()


def test_picked_rows_keep_their_places_across_batches():
    """Five rows picked out of ten, attacked in batches of 2: each gets the PGD iterate it gets
    when the ten are attacked at once (the start is the only random part, and a linear net's
    gradient at a row depends on that row alone). Every batch must take its own slice of the
    places: a batch handed the first batch's places (the rows' places restarting at 0 in each
    batch) starts rows 2 to 4 at points 1 and 4 again, and ``robust_correct`` hands
    ``adversarial_examples`` its batches of 256, so only an evaluation of more than 256 points
    standing would show it."""
    net = _linear_net()
    x = torch.rand(10, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.arange(10) % 3
    places = np.array([1, 4, 5, 8, 9])
    attack = {"method": "pgd", "eps": 0.1, "step": 0.01, "steps": 1, "seed": 6}
    whole = adversarial_examples(net, x, y, **attack)
    picked = adversarial_examples(net, x[places], y[places], batch_size=2, places=places, **attack)
    torch.testing.assert_close(picked, whole[places], rtol=0, atol=0)


@pytest.mark.parametrize(
    "places, shape",
    [(np.arange(6), r"\(6,\)"), (np.arange(4)[:, None], r"\(4, 1\)")],
    ids=["too-long", "two-dimensional"],
)
def test_places_not_one_per_point_are_refused_before_the_first_batch(places, shape):
    """Four points in batches of 2: six places, or four in a column, are refused by
    ``adversarial_examples``, naming the points and the places' shape. Six places are cut to
    two per batch by the batches' slices, so a check of too few places alone lets them through
    unnoticed; a column of places is refused by each batch's ``random_start`` instead, after the
    batches are shared out (under torchrun a process given no batch would wait on the others)."""
    net = _linear_net()
    x, y = torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"places must hold one place per point, 4, got shape {shape}"):
        adversarial_examples(net, x, y, method="pgd", eps=0.1, step=0.05, steps=1, batch_size=2, places=places)
