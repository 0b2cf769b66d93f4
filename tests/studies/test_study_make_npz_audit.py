"""Audit of ``studies.make_npz.run``: the dataset it saves is the seeded, class-balanced subset
that ``bridge.data.load_dataset`` draws (reloaded here by hand; the test split is
not cut when --n-test is not given)."""

from __future__ import annotations

import numpy as np

from ntkrobust.studies import DataSettings, make_npz
from ntkrobust.studies.make_npz import MakeNpzSettings


def test_the_saved_arrays_are_the_seeded_subset(tmp_path):
    from ntkrobust.bridge.data import load_dataset

    result = make_npz.run(MakeNpzSettings(data=DataSettings(classes=(3, 8), n_train=30, seed=7)))
    mine = load_dataset("digits", classes=[3, 8], n_train=30, n_test=None, seed=7)
    with np.load(result.save(tmp_path / "d.npz"), allow_pickle=False) as saved:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(saved[key], getattr(mine, key), err_msg=key)
    assert np.bincount(mine.y_train)[[3, 8]].tolist() == [15, 15] and mine.x_test.shape[0] > 30
