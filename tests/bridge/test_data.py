"""Dataset specs and loaders, exercised on files the tests write themselves."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.bridge.data import DataError, load_dataset, read_idx, save_dataset_npz


def test_digits_is_the_offline_default_in_the_data_contract():
    data = load_dataset("digits")
    assert data.x_train.shape == (1198, 1, 8, 8) and data.x_test.shape == (599, 1, 8, 8)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.classes == tuple(range(10))


def test_binary_task_and_balanced_seeded_subsets():
    a = load_dataset("digits", classes=["8", "3"], n_train=51, n_test=20, seed=4)
    b = load_dataset("digits", classes=[8, 3], n_train=51, n_test=20, seed=4)
    c = load_dataset("digits", classes=[8, 3], n_train=51, n_test=20, seed=5)
    assert a.classes == (8, 3)  # task order as given: 8 is the negative class
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert sorted(np.bincount(a.y_train)[[3, 8]]) == [25, 26] and set(np.unique(a.y_test)) == {3, 8}
    assert np.bincount(a.y_test)[3] == np.bincount(a.y_test)[8] == 10


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def small_arrays(rng):
    return {
        "x_train": rng.integers(0, 256, size=(20, 5, 5), dtype=np.uint8),
        "y_train": np.arange(20) % 2,
        "x_test": rng.integers(0, 256, size=(8, 5, 5), dtype=np.uint8),
        "y_test": np.arange(8) % 2,
    }


def test_npz_uint8_nhw_becomes_nchw_float(tmp_path, small_arrays):
    data = load_dataset(write_npz(tmp_path / "d.npz", **small_arrays))
    assert data.x_train.shape == (20, 1, 5, 5) and data.x_train.dtype == np.float32
    np.testing.assert_allclose(data.x_train[:, 0] * 255, small_arrays["x_train"], atol=1e-4)


def test_npz_float_nchw_round_trips_through_make_npz_writer(tmp_path, small_arrays):
    arrays = dict(
        small_arrays, x_train=small_arrays["x_train"][:, None] / 255.0, x_test=small_arrays["x_test"][:, None] / 255.0
    )
    data = load_dataset(write_npz(tmp_path / "d.npz", **arrays), n_train=10)
    save_dataset_npz(data, tmp_path / "again.npz")
    again = load_dataset(str(tmp_path / "again.npz"))
    np.testing.assert_array_equal(again.x_train, data.x_train)
    np.testing.assert_array_equal(again.y_test, data.y_test)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"x_train": np.full((20, 5, 5), np.nan)}, "NaN"),
        ({"x_train": np.zeros((20, 5, 5, 1, 1))}, "shape"),
        ({"x_train": np.zeros((20, 5, 5, 3))}, "NHWC"),
        ({"y_train": np.arange(19) % 2}, "labels"),
        ({"x_train": np.full((20, 5, 5), 2.0)}, r"\[0, 1\]"),
        ({"x_test": np.zeros((8, 6, 6))}, "differ in shape"),
        ({"y_train": np.full(20, 0.5)}, "non-integer"),
    ],
)
def test_bad_npz_contents_are_one_line_errors(tmp_path, small_arrays, change, message):
    path = write_npz(tmp_path / "bad.npz", **{**small_arrays, **change})
    with pytest.raises(DataError, match=message) as err:
        load_dataset(path)
    assert "\n" not in str(err.value)


def test_npz_with_pickled_objects_is_refused(tmp_path, small_arrays):
    path = tmp_path / "objects.npz"
    np.savez(path, **{**small_arrays, "y_train": np.array([{"evil": 1}] * 20, dtype=object)})
    with pytest.raises(DataError, match="plain arrays: it holds pickled Python objects, which are never unpickled"):
        load_dataset(str(path))


@pytest.mark.parametrize("content", ["npy", "pickle", "text"])
def test_a_file_that_is_no_zip_archive_is_not_an_npz(tmp_path, content):
    path = tmp_path / "data.npz"
    if content == "npy":  # np.load reads it as one array: a TypeError traceback before the fix
        with open(path, "wb") as f:
            np.save(f, np.zeros((20, 5, 5)))
    elif content == "pickle":  # np.load would hand it to pickle with allow_pickle=True
        path.write_bytes(pickle.dumps({"x_train": 1}))
    else:
        path.write_text("x_train,y_train\n")
    with pytest.raises(DataError, match=r"of plain arrays: not an \.npz \(zip\) archive") as error:
        load_dataset(str(path))
    assert "\n" not in str(error.value) and "allow_pickle" not in str(error.value)


@pytest.mark.parametrize(
    ("folder", "name"), [("mnist", "mnist"), ("CIFAR100-data", "cifar100"), ("cifar10", "cifar10")]
)
def test_a_data_folder_given_as_the_dataset_is_told_the_flags_that_take_it(tmp_path, folder, name):
    """``--data ../shared/data/mnist`` said only "unknown dataset" (seen by following the README)."""
    (tmp_path / folder).mkdir()
    with pytest.raises(DataError) as error:
        load_dataset(str(tmp_path / folder))
    assert str(error.value).endswith(f"(for a folder of its files: --data {name} --data-root {tmp_path / folder})")
    with pytest.raises(DataError) as error:  # no folder there, or no dataset in its name: no guess
        load_dataset(str(tmp_path / "elsewhere" / folder))
    assert "--data-root" not in str(error.value)


def test_missing_keys_and_unknown_specs(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("/nonexistent/data.npz")
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(DataError, match=r"folder\.npz is a folder"):  # it said "does not exist"
        load_dataset(str(tmp_path / "folder.npz"))
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(DataError, match=r"fifo\.npz is not a regular file"):  # it said "does not exist"
        load_dataset(str(tmp_path / "fifo.npz"))
    with pytest.raises(DataError, match="needs --data-root"):
        load_dataset("mnist")


def test_subset_and_class_errors():
    with pytest.raises(DataError, match="only 1198"):
        load_dataset("digits", n_train=5000)
    with pytest.raises(DataError, match="only 117"):
        load_dataset("digits", classes=[3, 8], n_test=200)
    with pytest.raises(DataError, match="class 3 but the data has only 54"):
        load_dataset("digits", classes=[3, 8], n_test=116)  # 54 threes, 63 eights in the test split
    with pytest.raises(DataError, match="absent"):
        load_dataset("digits", classes=[3, 11])
    with pytest.raises(DataError, match="unknown class"):
        load_dataset("digits", classes=["cat", "dog"])


def indexed_images(first, n, channels, size):
    """uint8 images whose pixels say which record, channel, row and column they are:
    (7 * index + 101 * channel + 29 * row + col) % 256, with indices first, first + 1, ...
    Records differ from each other (7 is odd: 256 indices in turn give 256 distinct first pixels),
    a channel from the others and a row from its mirror image, so a reader that drops, shifts or
    reorders bytes, records or channels returns images other than these."""
    index = np.arange(first, first + n)[:, None, None, None]
    channel = np.arange(channels)[None, :, None, None]
    row, col = np.arange(size)[None, None, :, None], np.arange(size)[None, None, None, :]
    return ((7 * index + 101 * channel + 29 * row + col) % 256).astype(np.uint8)


def stored_bytes(x):
    """Loaded images (float32 in [0, 1], the byte / 255) back as the bytes they were read from."""
    assert x.dtype == np.float32
    scaled = x.astype(np.float64) * 255
    assert np.abs(scaled - np.rint(scaled)).max() < 1e-3, "a loaded pixel is no byte / 255"
    return np.rint(scaled).astype(np.uint8)


def record_indices(x, written):
    """Which written record each loaded image is: each must equal exactly one, pixel for pixel."""
    same = (stored_bytes(x)[:, None] == written[None]).reshape(x.shape[0], written.shape[0], -1).all(axis=2)
    assert (same.sum(axis=1) == 1).all(), "a loaded image equals no written record (or several)"
    return same.argmax(axis=1)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


#: the MNIST records the fixture writes: (first record index, count) per split; images of
#: shape (n, 1, 28, 28) (stored as NHW), labels index % 3 in file order
MNIST_RECORDS = {"train": (0, 30), "t10k": (100, 20)}


def mnist_records(split):
    first, n = MNIST_RECORDS[split]
    return indexed_images(first, n, 1, 28), np.arange(n) % 3


@pytest.fixture
def mnist_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in MNIST_RECORDS:
        images, labels = mnist_records(split)
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", images[:, 0])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return tmp_path


def test_mnist_torchvision_layout(mnist_root):
    data = load_dataset("mnist", root=mnist_root, classes=[0, 2])
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape[1:] == (1, 28, 28)
    assert set(np.unique(data.y_train)) == {0, 2}
    np.testing.assert_array_equal(read_idx(mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"), np.arange(20) % 3)


def test_mnist_images_are_the_idx_bytes_in_file_order_beside_their_labels(mnist_root):
    """Shapes and label sets held when the reader paired every image with another record's label
    (the images reversed): the loaded pixels must be the files' bytes / 255, record for record,
    row and column in place, and y[i] the label written with record i, in train and test files."""
    data = load_dataset("mnist", root=mnist_root, classes=[0, 2])
    for x, y, split in ((data.x_train, data.y_train, "train"), (data.x_test, data.y_test, "t10k")):
        images, labels = mnist_records(split)
        kept = np.isin(labels, [0, 2])
        np.testing.assert_array_equal(stored_bytes(x), images[kept])
        np.testing.assert_array_equal(y, labels[kept])
        np.testing.assert_array_equal(y, labels[record_indices(x, images)])  # each image with its own label


def test_mnist_test_set_only_needs_from_test_split(mnist_root):
    """Cut from the test file, both halves keep each image with its own label, in file order, and
    together hold every test record once."""
    for f in (mnist_root / "MNIST" / "raw").glob("train-*"):
        f.unlink()
    with pytest.raises(DataError, match="--from-test-split"):
        load_dataset("mnist", root=mnist_root)
    data = load_dataset("mnist", root=mnist_root, from_test_split=True, n_train=12)
    assert data.x_train.shape[0] == 12 and data.x_test.shape[0] == 8
    assert np.bincount(data.y_train).tolist() == [4, 4, 4]
    images, labels = mnist_records("t10k")
    train, test = record_indices(data.x_train, images), record_indices(data.x_test, images)
    np.testing.assert_array_equal(data.y_train, labels[train])
    np.testing.assert_array_equal(data.y_test, labels[test])
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # file order
    assert sorted([*train, *test]) == list(range(20))


def test_corrupt_idx_is_reported(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") * 3 + b"short")
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def cifar_batch(rng, n):
    return {
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": list(np.arange(n) % 10),
        b"batch_label": b"synthetic",
    }


@pytest.fixture
def cifar_root(tmp_path, rng):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump(cifar_batch(rng, 20), f, protocol=2)
    return tmp_path


def test_cifar10_python_batches_through_the_array_only_unpickler(cifar_root):
    data = load_dataset("cifar10", root=cifar_root, classes=["airplane", "automobile"])
    assert data.x_train.shape == (20, 3, 32, 32) and data.classes == (0, 1)
    assert data.class_name(1) == "automobile"


def test_cifar10_tampered_pickle_cannot_run_code(cifar_root, tmp_path):
    class Exploit:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Exploit(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar10", root=cifar_root)
    assert not (tmp_path / "pwned").exists()


def test_cifar10_binary_batches(tmp_path):
    """Each record is a label byte then 3072 pixel bytes, channel-major (R, G, B planes), rows of
    32: shapes alone held when the reader took the label byte as the first pixel and reversed the
    channels. The loaded images must be the written ones, batches in order 1-5, channels, rows
    and columns in place, and y[i] the label byte of record i."""
    base = tmp_path / "cifar-10-batches-bin"
    base.mkdir()
    written = {}
    for b, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        index = np.arange(10 * b, 10 * b + 10)
        images, labels = indexed_images(10 * b, 10, 3, 32), (3 * index + index // 10) % 10  # every class per batch
        np.concatenate([labels[:, None], images.reshape(10, 3072)], axis=1).astype(np.uint8).tofile(base / name)
        written[name] = images, labels
    data = load_dataset("cifar10", root=tmp_path)
    assert data.x_train.shape == (50, 3, 32, 32) and data.x_test.shape == (10, 3, 32, 32)
    batches = [written[f"data_batch_{i}.bin"] for i in range(1, 6)]
    train_images, train_labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    for x, y, (images, labels) in (
        (data.x_train, data.y_train, (train_images, train_labels)),
        (data.x_test, data.y_test, written["test_batch.bin"]),
    ):
        np.testing.assert_array_equal(stored_bytes(x), images)
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_array_equal(y, labels[record_indices(x, images)])


def _cifar100_part(rng, n):
    """A torchvision-layout CIFAR-100 file: fine labels 0..99 in turn, coarse labels beside them."""
    fine = np.arange(n) % 100
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    return {b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(), b"filenames": []}


def test_cifar100_python_files_with_their_fine_label_names(tmp_path, rng):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    parts = {"train": _cifar100_part(rng, 300), "test": _cifar100_part(rng, 200)}
    names = [f"class{i:02d}".encode() for i in range(100)]
    parts["meta"] = {b"fine_label_names": names, b"coarse_label_names": []}
    for name, content in parts.items():
        with open(base / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    data = load_dataset("cifar100", root=tmp_path, classes=["class07", "class42"], n_test=4)
    assert data.x_train.shape == (6, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.classes == (7, 42) and data.class_name(42) == "class42"
    stored = parts["train"][b"data"][7].reshape(3, 32, 32) / 255.0
    np.testing.assert_allclose(data.x_train[0], stored, rtol=1e-6)  # the first class-7 image, in order
    everything = load_dataset("cifar100", root=tmp_path)
    assert len(everything.classes) == 100 and everything.x_train.shape[0] == 300


def test_cifar100_binary_files_and_missing_ones(tmp_path):
    """Each record is a coarse label byte, a fine label byte, then 3072 pixel bytes: shapes and the
    label set held when the reader took the fine label as the first pixel. The loaded images must
    be the written ones, channels, rows and columns in place, y[i] the fine label of record i."""
    base = tmp_path / "cifar-100-binary"
    base.mkdir()
    written = {}
    for name, first, n in (("train.bin", 0, 200), ("test.bin", 200, 100)):
        images, fine = indexed_images(first, n, 3, 32), np.arange(n) % 100
        records = np.concatenate([(fine // 5)[:, None], fine[:, None], images.reshape(n, 3072)], axis=1)
        records.astype(np.uint8).tofile(base / name)
        written[name] = images, fine
    data = load_dataset("cifar100", root=tmp_path, classes=[3, 99])
    assert data.x_train.shape == (4, 3, 32, 32) and set(data.y_test) == {3, 99}
    everything = load_dataset("cifar100", root=tmp_path)
    for subset, task in ((data, [3, 99]), (everything, range(100))):
        for x, y, name in ((subset.x_train, subset.y_train, "train.bin"), (subset.x_test, subset.y_test, "test.bin")):
            images, fine = written[name]
            kept = np.isin(fine, task)
            np.testing.assert_array_equal(stored_bytes(x), images[kept])
            np.testing.assert_array_equal(y, fine[kept])
            np.testing.assert_array_equal(y, fine[record_indices(x, images)])
    (base / "train.bin").unlink()
    with pytest.raises(DataError, match=r"CIFAR-100 file missing under .*train\.bin"):
        load_dataset("cifar100", root=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="CIFAR-100 not found under"):
        load_dataset("cifar100", root=tmp_path / "empty")


def _compressed_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_a_damaged_npz_is_one_line(tmp_path, small_arrays, damage):
    path = _compressed_npz(tmp_path / "d.npz", small_arrays)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]  # BadZipFile before the fix
    elif damage == "flip":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            first = archive.infolist()[0]
        # the middle of the first member's compressed stream (after its 30-byte header and name):
        # zlib.error or a bad CRC before the fix
        data[first.header_offset + 30 + len(first.filename) + first.compress_size // 2] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="cannot read") as error:
        load_dataset(str(path))
    assert "\n" not in str(error.value)


def test_a_truncated_mnist_gzip_is_one_line(tmp_path):
    images = bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + bytes(16)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    whole = gzip.compress(images)
    path.write_bytes(whole[: len(whole) // 2])  # EOFError from gzip before the fix
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path)


def test_single_class_data_is_refused_at_load_time(tmp_path, small_arrays):
    arrays = dict(small_arrays, y_train=np.full(20, 200), y_test=np.full(8, 200))
    with pytest.raises(DataError, match="needs two classes or more; the data holds only class 200"):
        load_dataset(write_npz(tmp_path / "one.npz", **arrays))


def test_label_names_must_name_every_class(tmp_path, small_arrays):
    arrays = dict(small_arrays, y_train=np.arange(20) % 10, y_test=np.arange(8) % 10, label_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match="2 label_names for class ids up to 9"):
        load_dataset(write_npz(tmp_path / "names.npz", **arrays))


def test_fewer_training_points_than_classes_are_refused():
    with pytest.raises(DataError, match="--n-train 5 leaves classes without a training point: at least 10"):
        load_dataset("digits", n_train=5)
    assert load_dataset("digits", n_train=10).x_train.shape[0] == 10


def test_class_names_in_any_case(tmp_path, small_arrays):
    arrays = dict(small_arrays, label_names=np.array(["Cat", "Dog"]))
    assert load_dataset(write_npz(tmp_path / "pets.npz", **arrays), classes=["dog", "CAT"]).classes == (1, 0)


def test_a_failed_download_says_its_cause_and_removes_what_it_made(tmp_path, monkeypatch):
    """torchvision's message began "Error downloading X:" and the line was cut at that colon; the
    folders it had made (MNIST/raw) stayed behind."""
    import torchvision.datasets

    from ntkrobust.bridge._data_sources import _download

    class Offline:
        def __init__(self, root, train, download):
            (Path(root) / "MNIST" / "raw").mkdir(parents=True)
            (Path(root) / "MNIST" / "raw" / "part.gz").write_bytes(b"x")
            raise RuntimeError("Error downloading x.gz:\nTried https://mirror, got:\n<urlopen error offline>\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    fresh = tmp_path / "fresh"
    with pytest.raises(DataError, match=r"failed: Error downloading x\.gz: <urlopen error offline>$"):
        _download("mnist", fresh)
    assert not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine").write_text("keep")
    with pytest.raises(DataError):
        _download("mnist", kept)
    assert [p.name for p in kept.iterdir()] == ["mine"]
