"""``studies.make_npz.run(settings)``: a resolved dataset saved as one .npz that every study's data
settings accept, its summary, and the data it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, StudyError, attack, make_npz
from ntkrobust.studies.make_npz import MakeNpzSettings


@pytest.fixture(scope="module")
def digits38():
    return make_npz.run(MakeNpzSettings(data=DataSettings(classes=(3, 8), n_train=60)))


def test_the_dataset_is_resolved(digits38):
    data = digits38.dataset
    assert data.x_train.shape[0] == 60 and tuple(data.classes) == (3, 8)
    assert set(np.unique(data.y_train)) == {3, 8} and np.bincount(data.y_train)[[3, 8]].tolist() == [30, 30]
    n_test = data.x_test.shape[0]
    assert digits38.summary() == f"digits: 60 train, {n_test} test, classes [3, 8]"


def test_save_writes_one_npz_that_an_attack_reads(digits38, tmp_path):
    path = tmp_path / "digits38.npz"
    assert digits38.save(path) == path
    assert [p.name for p in tmp_path.iterdir()] == ["digits38.npz"]  # no temporary left behind
    with np.load(path, allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays["x_train"], digits38.dataset.x_train)
    record = attack.run(attack.AttackSettings(data=DataSettings(data=str(path)))).record
    assert record["config"]["n_train"] == 60 and record["config"]["classes"] == [3, 8]
    assert record["config"]["n_test"] == digits38.dataset.x_test.shape[0]


def test_bad_data_is_refused(refuses):
    refuses(make_npz, MakeNpzSettings(data=DataSettings(data="imagenet")), "unknown dataset 'imagenet'")


def test_a_split_too_small_to_hold_every_class_is_refused(refuses, tmp_path):
    """A file whose test split misses a class is refused by every command that reads it: make-npz
    wrote one (--n-test 5 of 10 classes) that nothing could take."""
    message = "--n-test 5 leaves 5 class(es) without a test point, and a dataset file's splits must hold every class"
    refuses(make_npz, MakeNpzSettings(data=DataSettings(n_test=5)), message)
    made = make_npz.run(MakeNpzSettings(data=DataSettings(n_test=10))).save(tmp_path / "ten.npz")
    assert attack.run(attack.AttackSettings(data=DataSettings(data=str(made)))).record["config"]["n_test"] == 10


def test_an_existing_file_is_replaced_only_when_asked(tmp_path):
    """``MakeNpzResult.save`` refuses an existing file (it replaced it silently), as the command
    line does without ``--force``; ``overwrite=True`` replaces it."""
    result = make_npz.run(MakeNpzSettings(data=DataSettings(n_test=10)))
    (tmp_path / "data.npz").write_bytes(b"mine")
    with pytest.raises(StudyError, match=r"exists: save\(out, overwrite=True\) replaces it"):
        result.save(tmp_path / "data.npz")
    assert (tmp_path / "data.npz").read_bytes() == b"mine"
    result.save(tmp_path / "data.npz", overwrite=True)
    assert (tmp_path / "data.npz").read_bytes() != b"mine"
