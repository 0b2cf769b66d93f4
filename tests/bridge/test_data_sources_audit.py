"""Audit of ``bridge._data_sources``: the readers of scikit-learn's digits, MNIST's IDX files and
CIFAR-10/100's python and binary layouts, on tiny files whose every byte is written here.

Independent routes: IDX headers packed with ``struct`` (big-endian), CIFAR records laid out by
hand (label bytes, then 1024 red, 1024 green, 1024 blue bytes, rows of 32) and read back by index
arithmetic, never by the reader's reshape; the python batches pickled as Python 2's cPickle wrote
CIFAR's own files (strings as BINSTRING opcodes, which only the latin1 decoding reads back);
digits compared with scikit-learn's ``load_digits`` directly. Nothing here reads ``../shared``."""

from __future__ import annotations

import gzip
import io
import pickle
import re
import struct
from typing import ClassVar

import numpy as np
import pytest

from ntkrobust.bridge._data_sources import load_raw
from ntkrobust.bridge.data import DataError, load_dataset, read_idx

#: CIFAR-10's classes in the order of its ``batches.meta`` (label id 0..9)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def refused(message, spec, **kwargs):
    with pytest.raises(DataError, match=re.escape(message)) as error:
        load_dataset(str(spec), **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


# -- digits ----------------------------------------------------------------------------------------


def test_digits_are_sklearns_images_over_16_split_by_index_mod_3():
    """scikit-learn's 8x8 digits hold 0..16 per pixel: /16 puts them in [0, 1] with 16 at 1; the
    test split is every index with index % 3 == 2, each image beside its own target, rows as rows."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = load_raw("digits", root=None, download=False, want_train=True)
    test = np.arange(1797) % 3 == 2
    for split, rows in (("train", ~test), ("test", test)):
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        assert x.shape == (rows.sum(), 1, 8, 8) and x.dtype == np.float32
        np.testing.assert_array_equal(x[:, 0], (digits.images[rows] / 16.0).astype(np.float32))
        np.testing.assert_array_equal(x[:, 0].reshape(-1, 64), (digits.data[rows] / 16.0).astype(np.float32))
        np.testing.assert_array_equal(y, digits.target[rows])
    assert raw["x_train"].max() == 1.0 and raw["x_test"].max() == 1.0
    first_test = raw["x_test"][0, 0]  # index 2 of the bundled set
    np.testing.assert_array_equal(first_test * 16, digits.images[2])


# -- MNIST's IDX files -----------------------------------------------------------------------------


def idx_bytes(array, type_byte=0x08):
    """An IDX file: two zero bytes, the type byte, the number of dimensions, each size as a
    big-endian 32-bit integer, then the data."""
    return bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_read_idx_is_the_big_endian_header_then_row_major_bytes(tmp_path):
    body = bytes((7 * i + 3) % 256 for i in range(3 * 2 * 5))
    (tmp_path / "a").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 3, 2, 5) + body)
    array = read_idx(tmp_path / "a")
    assert array.shape == (3, 2, 5) and array.dtype == np.uint8
    for i in range(3):
        for j in range(2):
            for k in range(5):
                assert array[i, j, k] == body[10 * i + 5 * j + k]
    (tmp_path / "a.gz").write_bytes(gzip.compress((tmp_path / "a").read_bytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    # a size past 255 needs all four header bytes in big-endian order
    long = np.arange(300, dtype=np.uint8)
    (tmp_path / "b").write_bytes(idx_bytes(long))
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), long)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (idx_bytes(np.zeros((2, 2), np.uint8), type_byte=0x0D), "is not an unsigned-byte IDX file"),  # float32
        (b"\x01" + idx_bytes(np.zeros((2, 2), np.uint8))[1:], "is not an unsigned-byte IDX file"),
        (bytes([0, 0, 8]), "is not an unsigned-byte IDX file"),  # cut inside the magic number
        (b"", "is not an unsigned-byte IDX file"),
        (idx_bytes(np.zeros((2, 2), np.uint8)) + b"\x00", "is truncated or corrupt (shape (2, 2), 17 bytes)"),
        (idx_bytes(np.zeros((2, 2), np.uint8))[:-1], "is truncated or corrupt (shape (2, 2), 15 bytes)"),
    ],
    ids=["float type", "magic", "three bytes", "empty", "a byte too many", "a byte short"],
)
def test_an_idx_file_of_another_type_or_size_is_refused(tmp_path, content, message):
    (tmp_path / "f").write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_idx(tmp_path / "f")


def test_a_gzip_with_a_corrupt_deflate_stream_is_one_line(tmp_path):
    """A corrupt stream (not a truncated one) is zlib's error, not an OSError or EOFError."""
    whole = bytearray(gzip.compress(idx_bytes(np.arange(40, dtype=np.uint8)), mtime=0))
    whole[10] = 0x07  # the first deflate block: final, of the reserved type 3
    (tmp_path / "f.gz").write_bytes(bytes(whole))
    with pytest.raises(DataError, match=r"cannot read .*f\.gz: Error -3 while decompressing data: invalid block type"):
        read_idx(tmp_path / "f.gz")


def write_mnist(folder, split, first, labels, gz=False):
    """An IDX pair of ``len(labels)`` 4x5 images whose pixels are (first + record) * 3 + column."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    images = ((np.arange(first, first + n)[:, None, None] * 3 + np.arange(5)[None, None, :]) % 256) + np.zeros(
        (n, 4, 5), int
    )
    names = {"train": "train", "test": "t10k"}[split]
    for kind, array in (("images-idx3", images), ("labels-idx1", np.asarray(labels))):
        data = idx_bytes(array.astype(np.uint8))
        path = folder / f"{names}-{kind}-ubyte{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data) if gz else data)
    return images.astype(np.uint8)


@pytest.mark.parametrize("sub", [".", "MNIST/raw", "mnist", "MNIST"])
def test_mnist_files_are_found_in_each_documented_folder(tmp_path, sub):
    train = write_mnist(tmp_path / sub, "train", 0, [0, 1, 2, 0, 1, 2], gz=sub == "mnist")
    test = write_mnist(tmp_path / sub, "test", 50, [2, 1, 0, 1])
    data = load_dataset("mnist", root=tmp_path)
    np.testing.assert_array_equal(np.rint(data.x_train[:, 0] * 255), train)
    np.testing.assert_array_equal(np.rint(data.x_test[:, 0] * 255), test)
    assert data.y_train.tolist() == [0, 1, 2, 0, 1, 2] and data.y_test.tolist() == [2, 1, 0, 1]


def test_a_root_that_is_no_folder_is_named(tmp_path):
    for spec in ("mnist", "cifar10", "cifar100"):
        refused(f"data root {tmp_path / 'nowhere'} does not exist or is not a folder", spec, root=tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    refused(f"data root {tmp_path / 'file'} does not exist or is not a folder", "mnist", root=tmp_path / "file")


# -- CIFAR -------------------------------------------------------------------------------------------


def cifar_pixels(first, n):
    """(n, 3072) uint8 records: byte p of record i is (first + i + 5 * p) % 251, so records differ
    and every byte position inside a record holds its own value (251 is prime, 3072 not a multiple)."""
    return ((np.arange(first, first + n)[:, None] + 5 * np.arange(3072)[None, :]) % 251).astype(np.uint8)


def as_nchw(records):
    """The documented layout by index arithmetic: pixel (c, h, w) is byte 1024 c + 32 h + w."""
    c, h, w = np.indices((3, 32, 32))
    return records[:, 1024 * c + 32 * h + w]


def loaded_bytes(x):
    assert x.dtype == np.float32
    return np.rint(x.astype(np.float64) * 255).astype(np.uint8)


class Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle wrote the
    CIFAR python batches: Python 3 reads them back only with ``encoding="latin1"``."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        short = n < 256
        self.write(pickle.SHORT_BINSTRING + bytes([n]) if short else pickle.BINSTRING + struct.pack("<i", n))
        self.write(obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(path, content):
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(content)
    path.write_bytes(buffer.getvalue())


def write_cifar10_py(base, sizes, labels_of):
    """``sizes``: records per file name; returns {name: (pixels, labels)}."""
    base.mkdir(parents=True, exist_ok=True)
    written, first = {}, 0
    for name, n in sizes.items():
        pixels, labels = cifar_pixels(first, n), labels_of(np.arange(first, first + n))
        py2_pickle(base / name, {b"data": pixels, b"labels": labels.tolist(), b"batch_label": name.encode()})
        written[name], first = (pixels, labels), first + n
    return written


BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.mark.parametrize("folder", ["cifar-10-batches-py", "."])
def test_cifar10_python_batches_as_python2_wrote_them(tmp_path, folder):
    """Images NCHW (R, G, B planes, rows of 32), batches 1 to 5 in order, labels beside their
    images, CIFAR-10's ten names in label order; the batches found in the root itself too."""
    written = write_cifar10_py(tmp_path / folder, {**dict.fromkeys(BATCHES, 4), "test_batch": 10}, lambda i: i % 10)
    data = load_dataset("cifar10", root=tmp_path)
    train_pixels = np.concatenate([written[b][0] for b in BATCHES])
    np.testing.assert_array_equal(loaded_bytes(data.x_train), as_nchw(train_pixels))
    np.testing.assert_array_equal(data.y_train, np.arange(20) % 10)
    np.testing.assert_array_equal(loaded_bytes(data.x_test), as_nchw(written["test_batch"][0]))
    np.testing.assert_array_equal(data.y_test, np.arange(20, 30) % 10)
    assert list(data.label_names) == CIFAR10_CLASSES
    assert [data.class_name(c) for c in range(10)] == CIFAR10_CLASSES


@pytest.mark.parametrize("folder", ["cifar-10-batches-bin", "."])
def test_cifar10_binary_batches_in_the_root_itself(tmp_path, folder):
    base = tmp_path / folder
    base.mkdir(exist_ok=True)
    records = {}
    for k, name in enumerate([*BATCHES, "test_batch"]):
        pixels, labels = cifar_pixels(10 * k, 10), np.arange(10)[::-1]
        np.concatenate([labels[:, None], pixels], axis=1).astype(np.uint8).tofile(base / f"{name}.bin")
        records[name] = pixels
    data = load_dataset("cifar10", root=tmp_path)
    np.testing.assert_array_equal(loaded_bytes(data.x_test), as_nchw(records["test_batch"]))
    np.testing.assert_array_equal(data.y_test, np.arange(10)[::-1])
    assert list(data.label_names) == CIFAR10_CLASSES and data.x_train.shape == (50, 3, 32, 32)


def test_cifar10_missing_batches_are_named(tmp_path):
    sizes = {**dict.fromkeys(BATCHES, 2), "test_batch": 20}
    write_cifar10_py(tmp_path / "cifar-10-batches-py", sizes, lambda i: i % 10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    base = tmp_path / "cifar-10-batches-py"
    refused(f"CIFAR-10 files missing under {base}: data_batch_3, data_batch_5", "cifar10", root=tmp_path)
    assert load_dataset("cifar10", root=tmp_path, from_test_split=True).x_test.shape[0] == 10  # the test batch alone


def test_a_python2_batch_needs_its_latin1_strings_decoded(tmp_path):
    """Every pixel byte from 0 to 250 comes back: the array's data is a Python 2 string whose
    bytes above 127 an ASCII decoding would refuse."""
    written = write_cifar10_py(tmp_path / "cifar-10-batches-py", {"test_batch": 10}, lambda i: i % 10)
    raw = load_raw("cifar10", root=tmp_path, download=False, want_train=False)
    assert raw["x_test"].dtype == np.uint8
    np.testing.assert_array_equal(raw["x_test"].reshape(10, 3072), written["test_batch"][0])
    assert raw["x_test"].max() == 250


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], "is not a CIFAR-10 batch file"),
        ({"data": np.full((2, 3072), 0.5), "labels": [0, 1]}, "'data' holds ndarray float64, not integers"),
        ({"data": np.full((2, 3072), -1, np.int16), "labels": [0, 1]}, "pixels in [-1, -1], expected 0-255"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0.0, 1.0]}, "'labels' holds list float64, not integers"),
        ({"pixels": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, "is not a CIFAR-10 batch file (no data/labels)"),
    ],
    ids=["a list", "float pixels", "negative pixels", "float labels", "no data"],
)
def test_a_python_batch_of_other_contents_is_refused(tmp_path, content, message):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    with open(base / "test_batch", "wb") as f:
        pickle.dump(content, f, protocol=2)
    refused(message, "cifar10", root=tmp_path, from_test_split=True)


@pytest.mark.parametrize(
    "content",
    [
        # _codecs.encode("a", "bogus"): a LookupError traceback before the fix
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00bogus\x86R.",
        # _reconstruct(ndarray, (2**50,), "b"): a petabyte, a MemoryError traceback before the fix
        b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x07"
        + (2**50).to_bytes(7, "little")
        + b"\x85U\x01b\x87R.",
    ],
    ids=["unknown codec", "petabyte array"],
)
def test_a_tampered_batch_calling_allowed_globals_badly_is_one_line(tmp_path, content):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    (base / "test_batch").write_bytes(content)
    refused(f"cannot read CIFAR-10 batch {base / 'test_batch'}: ", "cifar10", root=tmp_path, from_test_split=True)


@pytest.mark.parametrize(
    ("spec", "folder", "name", "size", "message"),
    [
        ("cifar10", "cifar-10-batches-bin", "test_batch.bin", 3074, "is not a CIFAR-10 binary batch (3074 bytes)"),
        ("cifar10", "cifar-10-batches-bin", "test_batch.bin", 3072, "is not a CIFAR-10 binary batch (3072 bytes)"),
        ("cifar100", "cifar-100-binary", "test.bin", 3073, "is not a CIFAR-100 binary file (3073 bytes)"),
        ("cifar100", "cifar-100-binary", "test.bin", 2 * 3074 + 1, "is not a CIFAR-100 binary file (6149 bytes)"),
    ],
)
def test_a_binary_file_of_a_partial_record_is_refused(tmp_path, spec, folder, name, size, message):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / name).write_bytes(bytes(size))
    refused(message, spec, root=tmp_path, from_test_split=True)


def write_cifar100_binary(base, name, first, n):
    fine = (np.arange(first, first + n) * 7) % 100
    pixels = cifar_pixels(first, n)
    np.concatenate([(fine // 5)[:, None], fine[:, None], pixels], axis=1).astype(np.uint8).tofile(base / name)
    return pixels, fine


@pytest.mark.parametrize("folder", ["cifar-100-binary", "."])
def test_cifar100_binary_files_with_their_names_file(tmp_path, folder):
    """Each record: coarse byte, fine byte, 3072 pixel bytes; the names, one per line, from
    ``fine_label_names.txt`` beside the files; the files found in the root itself too."""
    base = tmp_path / folder
    base.mkdir(exist_ok=True)
    train = write_cifar100_binary(base, "train.bin", 0, 200)
    test = write_cifar100_binary(base, "test.bin", 200, 100)
    names = [f"fine_{i:02d}" for i in range(100)]
    (base / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    data = load_dataset("cifar100", root=tmp_path)
    for x, y, (pixels, fine) in ((data.x_train, data.y_train, train), (data.x_test, data.y_test, test)):
        np.testing.assert_array_equal(loaded_bytes(x), as_nchw(pixels))
        np.testing.assert_array_equal(y, fine)
    assert list(data.label_names) == names and data.class_name(42) == "fine_42"
    assert load_dataset("cifar100", root=tmp_path, classes=["fine_07", "fine_13"]).classes == (7, 13)


def test_cifar100_python_files_nchw_with_fine_labels(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    written = {}
    for name, first, n in (("train", 0, 200), ("test", 200, 100)):
        fine = (np.arange(first, first + n) * 3) % 100
        pixels = cifar_pixels(first, n)
        content = {b"data": pixels, b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()}
        py2_pickle(base / name, content)
        written[name] = pixels, fine
    py2_pickle(base / "meta", {b"fine_label_names": [], b"coarse_label_names": []})  # no names: ids only
    data = load_dataset("cifar100", root=tmp_path)
    assert data.label_names is None and data.class_name(5) == "5"
    for x, y, split in ((data.x_train, data.y_train, "train"), (data.x_test, data.y_test, "test")):
        pixels, fine = written[split]
        np.testing.assert_array_equal(loaded_bytes(x), as_nchw(pixels))
        np.testing.assert_array_equal(y, fine)


def test_cifar100_files_of_other_contents_name_cifar100(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    with open(base / "test", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, f, protocol=2)  # CIFAR-10's key
    refused("is not a CIFAR-100 file (no data/fine_labels)", "cifar100", root=tmp_path, from_test_split=True)
    refused(f"CIFAR-100 file missing under {base}: train", "cifar100", root=tmp_path)


# -- label names -------------------------------------------------------------------------------------


def small_npz(path, **extra):
    x = np.zeros((4, 1, 2, 2), np.uint8)
    np.savez(path, x_train=x, y_train=np.array([0, 1, 0, 1]), x_test=x, y_test=np.array([1, 0, 1, 0]), **extra)
    return str(path)


def test_label_names_may_be_numbers_or_latin1_bytes(tmp_path):
    """One name per class id: numbers are names too (shown as text); bytes that are no UTF-8 are
    Latin-1 (CIFAR's own files are ASCII)."""
    numbers = load_dataset(small_npz(tmp_path / "n.npz", label_names=np.array([10, 20])))
    assert numbers.label_names == ("10", "20") and numbers.class_name(1) == "20"
    latin = load_dataset(small_npz(tmp_path / "l.npz", label_names=np.array([b"\xe9t\xe9", b"hiver"])))
    assert latin.label_names == ("été", "hiver")
