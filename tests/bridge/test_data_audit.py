"""Audit of ``bridge.data``: the checks, class selection, seeded subsets and conversions of
``load_dataset``, and its helpers (``balanced_indices``, ``task_indices``, ``stratified_halves``,
``save_dataset_npz``), on tiny ``.npz`` files written here.

Independent routes: every image is uint8 with its record number in its pixels, so a loaded image
says which record it is (``record_of``); the documented draws (a ``default_rng(seed)`` stream,
per class in task order, ``choice`` without replacement, the first classes taking the remainder,
the test subset continuing the train subset's stream) are recomputed here with numpy by hand;
the error messages are matched against the field the refused value came from."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ntkrobust.bridge.data import (
    MAX_CLASS_ID,
    DataError,
    balanced_indices,
    load_dataset,
    save_dataset_npz,
    stratified_halves,
    task_indices,
)


def numbered(first, n, channels=1, size=3):
    """uint8 images of shape (n, channels, size, size) whose every pixel is the record number
    (first, first + 1, ...) plus its channel times 100: a loaded image names its record."""
    index = np.arange(first, first + n)[:, None, None, None]
    channel = np.arange(channels)[None, :, None, None]
    return np.broadcast_to(index + 100 * channel, (n, channels, size, size)).astype(np.uint8)


def record_of(x):
    """The record numbers of loaded images (float32 byte / 255), checking every pixel agrees."""
    assert x.dtype == np.float32
    scaled = np.rint(x.astype(np.float64) * 255).astype(np.int64)
    first = scaled[:, :1, :1, :1]
    channel = 100 * np.arange(x.shape[1])[None, :, None, None]
    assert (scaled == first + channel).all(), "a loaded image is no written record"
    return first[:, 0, 0, 0]


#: train labels: class 0 four times, class 1 five, class 2 six, interleaved (15 records)
Y_TRAIN = np.array([2, 0, 1, 2, 1, 0, 2, 1, 2, 0, 1, 2, 1, 0, 2])
#: test labels: 0, 1, 2 in turn (10 records: four 0s, three 1s, three 2s)
Y_TEST = np.arange(10) % 3


def write(tmp_path, name="d.npz", **changes):
    arrays = {"x_train": numbered(0, 15), "y_train": Y_TRAIN, "x_test": numbered(100, 10), "y_test": Y_TEST}
    arrays.update(changes)
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def refused(spec, message, **kwargs):
    """``load_dataset`` raises one ``DataError`` line containing ``message`` (a plain string)."""
    with pytest.raises(DataError, match=re.escape(message)) as error:
        load_dataset(spec, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


# -- the whole file, unselected ------------------------------------------------------------------


def test_every_record_is_loaded_in_file_order_beside_its_label_under_the_file_name(tmp_path):
    data = load_dataset(write(tmp_path, "tiny.npz"))
    assert data.name == "tiny.npz" and data.classes == (0, 1, 2) and data.label_names is None
    np.testing.assert_array_equal(record_of(data.x_train), np.arange(15))
    np.testing.assert_array_equal(record_of(data.x_test), np.arange(100, 110))
    np.testing.assert_array_equal(data.y_train, Y_TRAIN)
    np.testing.assert_array_equal(data.y_test, Y_TEST)
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint16])
def test_labels_of_any_integer_dtype_become_int64(tmp_path, dtype):
    data = load_dataset(write(tmp_path, y_train=Y_TRAIN.astype(dtype), y_test=Y_TEST.astype(dtype)))
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    np.testing.assert_array_equal(data.y_train, Y_TRAIN)


# -- class selection ------------------------------------------------------------------------------


def test_selected_classes_keep_their_ids_and_the_order_given(tmp_path):
    """Labels stay class ids (2 and 0, not task positions 0 and 1); every kept record is one of
    those classes, in file order, in both splits."""
    data = load_dataset(write(tmp_path), classes=[2, 0])
    assert data.classes == (2, 0)
    for x, y, labels, first in ((data.x_train, data.y_train, Y_TRAIN, 0), (data.x_test, data.y_test, Y_TEST, 100)):
        kept = np.flatnonzero(np.isin(labels, [0, 2]))
        np.testing.assert_array_equal(record_of(x), first + kept)
        np.testing.assert_array_equal(y, labels[kept])


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (["-1", "0"], "class -1 is absent from the data (present: 0, 1, 2)"),  # an id, not a name
        # int() refuses both though str.isdigit() took them for ids: a ValueError traceback before the fix
        (["--1", "0"], "unknown class '--1': give class ids"),
        (["\u00b2", "0"], "unknown class '\u00b2': give class ids"),  # superscript two
        ([0, 7], "class 7 is absent from the data (present: 0, 1, 2)"),
        ([0, 1, 0], "--classes names class 0 twice (0,1,0)"),
        ([1], "--classes needs at least two distinct classes, got 1"),
        (["1", 1], "--classes names class 1 twice (1,1)"),
    ],
)
def test_bad_class_requests_name_what_is_wrong(tmp_path, classes, message):
    refused(write(tmp_path), message, classes=classes)


def test_a_class_only_in_the_test_split_is_absent_from_the_train_split(tmp_path):
    """Class 2 is in the data (in the test split), so it is no unknown class: the train split lacks it."""
    spec = write(tmp_path, y_train=np.arange(15) % 2)
    refused(spec, "d.npz: class(es) [2] absent from the train split", classes=[0, 2])
    refused(spec, "d.npz: class(es) [2] absent from the train split")  # every class of the file


def test_a_class_only_in_the_train_split_is_absent_from_the_test_split(tmp_path):
    spec = write(tmp_path, y_test=np.arange(10) % 2)
    refused(spec, "d.npz: class(es) [2] absent from the test split", classes=[0, 2])
    refused(spec, "d.npz: class(es) [2] absent from the test split")


def test_label_names_must_cover_the_largest_class_id(tmp_path):
    """Three class ids need three names: two left class 2 nameless (shown as "2")."""
    refused(write(tmp_path, label_names=np.array(["a", "b"])), "d.npz: 2 label_names for class ids up to 2")
    data = load_dataset(write(tmp_path, "ok.npz", label_names=np.array(["zero", "one", "two"])))
    assert data.label_names == ("zero", "one", "two")


def test_class_names_and_describe(tmp_path):
    data = load_dataset(write(tmp_path, label_names=np.array(["zero", "one", "two"])), classes=["TWO", "one"])
    assert data.classes == (2, 1)
    assert [data.class_name(c) for c in (0, 1, 2, 3, -1)] == ["zero", "one", "two", "3", "-1"]
    assert data.describe() == {
        "name": "d.npz",
        "n_train": 11,
        "n_test": 6,
        "image_shape": [1, 3, 3],
        "classes": [2, 1],
        "class_names": ["two", "one"],
    }
    unnamed = load_dataset(write(tmp_path, "plain.npz"), classes=[2, 1])
    assert unnamed.describe()["class_names"] == ["2", "1"] and unnamed.class_name(2) == "2"


# -- subset sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["n_train", "n_test"])
def test_subset_sizes_below_one_are_refused(tmp_path, flag):
    refused(write(tmp_path), f"--{flag.replace('_', '-')} must be at least 1, got 0", **{flag: 0})
    refused(write(tmp_path), f"--{flag.replace('_', '-')} must be at least 1, got -3", **{flag: -3})


def test_fewer_training_points_than_classes_are_refused(tmp_path):
    refused(write(tmp_path), "--n-train 1 leaves classes without a training point: at least 2 for 2 classes",
            classes=[0, 1], n_train=1)  # fmt: skip
    refused(write(tmp_path), "--n-train 2 leaves classes without a training point: at least 3 for 3 classes", n_train=2)
    assert np.bincount(load_dataset(write(tmp_path), classes=[0, 1], n_train=2).y_train).tolist() == [1, 1]


def test_a_subset_of_every_point_of_the_split_is_the_split(tmp_path):
    """Classes 1 and 0 hold 9 train records (five 1s first: the remainder is theirs), the three
    classes 10 test records (four 0s): asking for all of them takes all of them, in file order."""
    data = load_dataset(write(tmp_path), classes=[1, 0], n_train=9)
    np.testing.assert_array_equal(record_of(data.x_train), np.flatnonzero(Y_TRAIN < 2))
    data = load_dataset(write(tmp_path), n_test=10)
    np.testing.assert_array_equal(record_of(data.x_test), np.arange(100, 110))
    refused(write(tmp_path), "asked for 11 test examples but the data has only 10", n_test=11)


def test_a_class_short_by_one_example_is_refused(tmp_path):
    """Class 0 has four train points, 15 / 3 classes asks five of it; class 1 three test points,
    7 / 2 classes asks four of it (the first class given takes the remainder)."""
    refused(write(tmp_path), "asked for 5 train examples of class 0 but the data has only 4", n_train=15)
    refused(write(tmp_path), "asked for 4 test examples of class 1 but the data has only 3", n_test=7, classes=[1, 0])


# -- the seeded, class-balanced draws, recomputed ------------------------------------------------


def drawn(rng, labels, classes, n):
    """The documented draw: per class in task order, the first ``n % len(classes)`` classes one
    more, ``rng.choice`` without replacement; the indices sorted (dataset order)."""
    per_class, extra = divmod(n, len(classes))
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=per_class + (i < extra), replace=False)
        for i, c in enumerate(classes)
    ]
    return np.sort(np.concatenate(chosen))


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_subsets_are_the_documented_draw_of_one_seeded_stream(tmp_path, seed):
    """Train first, then test from the same generator; the remainder goes to the first class given
    (class 2 here), so 5 train points are three 2s and two 0s, 3 test points two 2s and one 0."""
    data = load_dataset(write(tmp_path), classes=[2, 0], n_train=5, n_test=3, seed=seed)
    rng = np.random.default_rng(seed)
    kept_train, kept_test = np.flatnonzero(np.isin(Y_TRAIN, [2, 0])), np.flatnonzero(np.isin(Y_TEST, [2, 0]))
    train = kept_train[drawn(rng, Y_TRAIN[kept_train], (2, 0), 5)]
    test = kept_test[drawn(rng, Y_TEST[kept_test], (2, 0), 3)]
    np.testing.assert_array_equal(record_of(data.x_train), train)
    np.testing.assert_array_equal(record_of(data.x_test), 100 + test)
    np.testing.assert_array_equal(data.y_train, Y_TRAIN[train])
    np.testing.assert_array_equal(data.y_test, Y_TEST[test])
    assert np.bincount(data.y_train, minlength=3)[[2, 0]].tolist() == [3, 2]
    assert np.bincount(data.y_test, minlength=3)[[2, 0]].tolist() == [2, 1]


def test_the_remainder_goes_to_the_first_classes_given(tmp_path):
    for classes, counts in (([0, 1, 2], [3, 3, 2]), ([2, 1, 0], [2, 3, 3]), ([0, 2, 1], [3, 2, 3])):
        data = load_dataset(write(tmp_path), classes=classes, n_train=8)
        assert np.bincount(data.y_train, minlength=3).tolist() == counts, classes


def test_balanced_indices_is_the_documented_draw_of_its_seed():
    labels = np.array([5, 1, 5, 5, 1, 9, 9, 5, 1, 9, 5, 1])
    for seed in (0, 1, 7):
        expected = drawn(np.random.default_rng(seed), labels, (9, 5), 5)
        np.testing.assert_array_equal(balanced_indices(labels, (9, 5), 5, seed), expected)
    with pytest.raises(DataError, match=re.escape("asked for 13 probe examples but the data has only 12")):
        balanced_indices(labels, (9, 5), 13, 0)


# -- a train split cut from the test split -------------------------------------------------------


def test_from_test_split_cuts_half_of_the_selected_classes(tmp_path):
    """Classes 0 and 1 hold 7 of the 10 test records: 3 (7 // 2) go to train, the other 4 to test,
    both in file order, none of class 2; the name says where the data came from."""
    data = load_dataset(write(tmp_path), classes=[0, 1], from_test_split=True, seed=2)
    assert data.name == "d.npz (test split)"
    train, test = record_of(data.x_train) - 100, record_of(data.x_test) - 100
    assert train.size == 3 and test.size == 4
    assert sorted([*train, *test]) == np.flatnonzero(Y_TEST < 2).tolist()
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    np.testing.assert_array_equal(data.y_train, Y_TEST[train])
    np.testing.assert_array_equal(data.y_test, Y_TEST[test])
    assert np.bincount(data.y_train).tolist() == [2, 1]  # class 0 first: the remainder is its


def test_from_test_split_subsets_are_the_documented_draws(tmp_path):
    """The train part drawn from the task's test records, then the test subset from the rest,
    one generator for both."""
    for seed in (0, 1, 5):
        data = load_dataset(write(tmp_path), from_test_split=True, n_train=4, n_test=3, seed=seed)
        rng = np.random.default_rng(seed)
        train = drawn(rng, Y_TEST, (0, 1, 2), 4)
        rest = np.setdiff1d(np.arange(10), train)
        test = rest[drawn(rng, Y_TEST[rest], (0, 1, 2), 3)]
        np.testing.assert_array_equal(record_of(data.x_train), 100 + train)
        np.testing.assert_array_equal(record_of(data.x_test), 100 + test)
        np.testing.assert_array_equal(data.y_test, Y_TEST[test])


# -- checks on the arrays ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x_test": numbered(0, 10, channels=3)}, "train images (1, 3, 3) and test images (3, 3, 3) differ in shape"),
        ({"x_train": np.zeros((0, 1, 3, 3), np.uint8), "y_train": np.zeros(0, int)}, "x_train holds no images"),
        ({"x_train": numbered(0, 15).astype(bool)}, "x_train has dtype bool; expected uint8 0-255 or float 0-1"),
        ({"x_train": np.full((15, 1, 3, 3), -0.5)}, "x_train holds floats in [-0.5, -0.5]; expected [0, 1]"),
        ({"x_test": np.full((10, 1, 3, 3), np.nextafter(1.0, 2.0))}, "x_test holds floats in [1, 1]; expected [0, 1]"),
        ({"x_test": np.full((10, 1, 3, 3), -1, np.int16)}, "x_test holds integers in [-1, -1]; expected 0-255"),
        ({"x_test": np.full((10, 1, 3, 3), 256, np.int16)}, "x_test holds integers in [256, 256]; expected 0-255"),
        ({"y_train": Y_TRAIN[:, None]}, "y_train has shape (15, 1); expected a vector of class ids"),
        ({"y_test": Y_TEST.astype(bool)}, "y_test has dtype bool; expected integer class ids"),
        ({"y_test": np.where(Y_TEST == 0, -1, Y_TEST)}, "y_test holds negative class ids"),
        ({"y_train": np.where(Y_TRAIN == 2, np.inf, Y_TRAIN)}, "y_train holds non-integer labels"),
        ({"y_train": np.where(Y_TRAIN == 2, MAX_CLASS_ID + 1, Y_TRAIN)}, "y_train holds class id 2.14748e+09, above"),
    ],
    ids=[
        "channels",
        "no images",
        "bool",
        "negative float",
        "float above 1",
        "negative int",
        "int 256",
        "2-D labels",
        "bool labels",
        "label -1",
        "label inf",
        "label 2**31",
    ],
)
def test_arrays_outside_the_contract_are_refused_naming_the_field(tmp_path, change, message):
    refused(write(tmp_path, **change), message)


def test_the_largest_class_id_is_accepted(tmp_path):
    y_train, y_test = np.where(Y_TRAIN == 2, MAX_CLASS_ID, Y_TRAIN), np.where(Y_TEST == 2, MAX_CLASS_ID, Y_TEST)
    data = load_dataset(write(tmp_path, y_train=y_train, y_test=y_test))
    assert data.classes == (0, 1, MAX_CLASS_ID)
    np.testing.assert_array_equal(data.y_train, y_train)


def test_float_pixels_are_kept_and_become_float32(tmp_path):
    """Floats in [0, 1] are pixel values already: cast to float32, never divided by 255."""
    x = np.linspace(0.0, 1.0, 15 * 9).reshape(15, 1, 3, 3)
    data = load_dataset(write(tmp_path, x_train=x, x_test=x[:10]))
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    np.testing.assert_array_equal(data.x_train, x.astype(np.float32))
    assert data.x_train.max() == 1.0 and data.x_train.min() == 0.0


def test_integer_pixels_are_divided_by_255(tmp_path):
    x = (np.arange(15 * 9) * 2 % 256).reshape(15, 1, 3, 3).astype(np.int32)  # 0..254 and 255 below
    x[0, 0, 0, 0] = 255
    data = load_dataset(write(tmp_path, x_train=x))
    np.testing.assert_allclose(data.x_train, x / 255.0, rtol=0, atol=1e-7)
    assert data.x_train.dtype == np.float32 and data.x_train.max() == 1.0


# -- the writer ------------------------------------------------------------------------------------


def test_save_dataset_npz_writes_every_array_and_the_label_names(tmp_path):
    data = load_dataset(write(tmp_path, label_names=np.array(["zero", "one", "two"])), classes=[1, 2])
    save_dataset_npz(data, tmp_path / "again.npz")
    again = load_dataset(str(tmp_path / "again.npz"))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, key), getattr(data, key), err_msg=key)
    assert again.label_names == ("zero", "one", "two") and again.classes == (1, 2)
    np.testing.assert_array_equal(record_of(again.x_test), 100 + np.flatnonzero(Y_TEST > 0))


# -- task positions and halves ---------------------------------------------------------------------


def test_task_indices_are_positions_in_the_order_given():
    np.testing.assert_array_equal(task_indices(np.array([8, 3, 3, 8, 3]), (8, 3)), [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(task_indices(np.array([0, 7, 2]), (7, 2, 0)), [2, 0, 1])
    assert task_indices(np.array([3]), (8, 3)).dtype == np.int64
    with pytest.raises(DataError, match=re.escape("label 5 is not one of the task's classes [8, 3]")):
        task_indices(np.array([8, 5]), (8, 3))


def test_stratified_halves_are_the_documented_seeded_split():
    """Per class (sorted ids), a seeded permutation; the first half takes the larger part of an
    odd class. Recomputed by hand, and checked for what it promises: disjoint, complete, balanced."""
    labels = np.array([4, 1, 4, 4, 1, 6, 4, 6, 1, 4, 6])  # 5 fours, 3 ones, 3 sixes
    for seed in (0, 2, 9):
        first, second = stratified_halves(labels, seed)
        rng = np.random.default_rng(seed)
        mine_first, mine_second = [], []
        for c in (1, 4, 6):
            members = rng.permutation(np.flatnonzero(labels == c))
            mine_first += members[: (members.size + 1) // 2].tolist()
            mine_second += members[(members.size + 1) // 2 :].tolist()
        np.testing.assert_array_equal(first, sorted(mine_first))
        np.testing.assert_array_equal(second, sorted(mine_second))
        assert sorted([*first, *second]) == list(range(11))
        assert np.bincount(labels[first]).tolist() == [0, 2, 0, 0, 3, 0, 2]
        assert np.bincount(labels[second], minlength=7).tolist() == [0, 1, 0, 0, 2, 0, 1]
    assert len({tuple(stratified_halves(labels, seed)[0]) for seed in range(6)}) > 1  # the seed matters
