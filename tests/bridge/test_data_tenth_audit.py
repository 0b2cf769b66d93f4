"""Tenth-round mutation audit of the data readers (``bridge.data``, ``bridge._data_sources``): the
cases a mutated reader still passed the older tests on.

Independent routes: every file's bytes are written here by hand (IDX headers with ``struct``,
CIFAR records as label bytes then pixel bytes, pickles whose opcodes are spelled out or made by
``pickle`` at protocols 2 and 4 from plain lists and bytes); the expected sizes are the README's
(the official 10,000-image MNIST test set cut into 5,000 train / 5,000 test) and the published
per-digit counts of that set; images carry their record number in their pixels, so a loaded image
names the record it came from. Nothing here reads ``../shared``."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
import subprocess

import numpy as np
import pytest

from ntkrobust.bridge.data import DataError, load_dataset, read_idx


def refused(message, spec, **kwargs):
    with pytest.raises(DataError, match=re.escape(message)) as error:
        load_dataset(str(spec), **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def idx_file(path, array, magic=(0, 0, 8)):
    """An IDX file: the magic bytes (two zeros, then 0x08 for unsigned bytes), the number of
    dimensions, each size as a big-endian 32-bit integer, then the bytes row-major."""
    path.write_bytes(bytes([*magic, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())
    return path


# -- IDX magic -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "magic",
    [(1, 0, 8), (0, 1, 8), (0, 0x08, 8), (0, 0, 9), (0, 0, 0x0D)],
    ids=["first byte 1", "second byte 1", "second byte 8", "signed bytes", "floats"],
)
def test_an_idx_file_is_refused_unless_its_magic_is_zero_zero_eight(tmp_path, magic):
    """The IDX magic is 0x00 0x00 then the type byte (0x08: unsigned bytes); every one of the three
    is checked, the second zero as much as the first (a reader that checked two of them took a
    file starting 00 01 08 as MNIST)."""
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = idx_file(tmp_path / "t10k-images-idx3-ubyte", array, magic)
    with pytest.raises(DataError, match=re.escape(f"{path} is not an unsigned-byte IDX file")):
        read_idx(path)
    np.testing.assert_array_equal(read_idx(idx_file(tmp_path / "good", array)), array)  # the same bytes, right magic


# -- MNIST: the official test set cut in two -------------------------------------------------------

#: images per digit 0-9 in the official MNIST test set (LeCun et al.), 10,000 in all
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_the_official_test_set_is_cut_into_5000_train_and_5000_test(tmp_path):
    """README: ``--from-test-split`` cuts the 10,000-image test set into 5,000 training and 5,000
    test images. Here a test set of the official per-digit counts (2x2 images, shuffled with a
    seed; each image holds its record number as two base-256 digits): the train half is class
    balanced, 500 per digit, the test half is every other record, so its counts are the official
    ones less 500; no record is in both, each is beside its own label, both in file order."""
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), MNIST_TEST_COUNTS)).astype(np.uint8)
    record = np.arange(10000)
    images = np.stack([record % 256, record // 256, record % 256, record // 256], axis=1).reshape(10000, 2, 2)
    root = tmp_path / "MNIST" / "raw"
    root.mkdir(parents=True)
    idx_file(root / "t10k-images-idx3-ubyte", images.astype(np.uint8))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10000) + labels.tobytes())
    )
    data = load_dataset("mnist", root=tmp_path, from_test_split=True, seed=5)
    assert (
        data.name == "mnist (test split)"
        and data.x_train.shape == (5000, 1, 2, 2)
        and data.x_test.shape == (5000, 1, 2, 2)
    )

    def records(x):
        pixels = np.rint(x.astype(np.float64) * 255).astype(np.int64)
        assert (pixels[:, 0, 0, 0] == pixels[:, 0, 1, 0]).all() and (pixels[:, 0, 0, 1] == pixels[:, 0, 1, 1]).all()
        return pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 0, 1]

    train, test = records(data.x_train), records(data.x_test)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), record)
    np.testing.assert_array_equal(data.y_train, labels[train])
    np.testing.assert_array_equal(data.y_test, labels[test])
    assert np.bincount(data.y_train).tolist() == [500] * 10
    assert np.bincount(data.y_test).tolist() == [c - 500 for c in MNIST_TEST_COUNTS]


def test_an_uncompressed_idx_file_is_read_before_the_gzip_beside_it(tmp_path):
    """torchvision's ``MNIST/raw`` holds each file twice, gzipped and extracted; the extracted one is
    read first, so a damaged ``.gz`` left beside it (an interrupted download) does not matter."""
    root = tmp_path / "MNIST" / "raw"
    root.mkdir(parents=True)
    images, labels = np.arange(4 * 9, dtype=np.uint8).reshape(4, 3, 3), np.array([0, 1, 1, 0], np.uint8)
    for name, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        idx_file(root / name, array)
        (root / f"{name}.gz").write_bytes(gzip.compress(idx_file(tmp_path / "x", array).read_bytes())[:20])  # cut short
    data = load_dataset("mnist", root=tmp_path, from_test_split=True, n_train=2, seed=0)
    whole = np.concatenate([data.x_train, data.x_test])
    assert whole.shape == (4, 1, 3, 3)
    assert sorted(np.rint(whole[:, 0, 0, 0] * 255).astype(int).tolist()) == [0, 9, 18, 27]


# -- CIFAR: the torchvision folder before the root -------------------------------------------------


def py2_batch(path, labels, key=b"labels"):
    """A batch as a protocol-2 pickle of plain bytes and lists: every pixel of record i is 7 * label."""
    pixels = bytes(b for label in labels for b in [7 * label] * 3072)
    content = {b"data": np.frombuffer(pixels, np.uint8).reshape(len(labels), 3072), key: list(labels)}
    path.write_bytes(pickle.dumps(content, protocol=2))


def test_cifar10_batches_in_the_torchvision_folder_win_over_batches_in_the_root(tmp_path):
    """``ROOT/cifar-10-batches-py`` is the layout read; batches in ROOT itself only where that
    folder is absent (a reader that took the root first read the stray file here)."""
    (tmp_path / "cifar-10-batches-py").mkdir()
    py2_batch(tmp_path / "cifar-10-batches-py" / "test_batch", [0, 1, 0, 1])
    py2_batch(tmp_path / "test_batch", [5, 6, 5, 6])
    data = load_dataset("cifar10", root=tmp_path, from_test_split=True, seed=0)
    assert sorted([*data.y_train, *data.y_test]) == [0, 0, 1, 1] and data.classes == (0, 1)
    assert sorted(np.rint(255 * np.concatenate([data.x_train, data.x_test]).max(axis=(1, 2, 3))).tolist()) == [
        0,
        0,
        7,
        7,
    ]


def test_cifar100_files_in_the_torchvision_folder_win_over_files_in_the_root(tmp_path):
    (tmp_path / "cifar-100-python").mkdir()
    py2_batch(tmp_path / "cifar-100-python" / "test", [10, 20, 10, 20], key=b"fine_labels")
    py2_batch(tmp_path / "test", [1, 2, 1, 2], key=b"fine_labels")
    data = load_dataset("cifar100", root=tmp_path, from_test_split=True, seed=0)
    assert sorted([*data.y_train, *data.y_test]) == [10, 10, 20, 20] and data.classes == (10, 20)
    assert sorted(np.rint(255 * np.concatenate([data.x_train, data.x_test]).max(axis=(1, 2, 3))).tolist()) == [
        70,
        70,
        140,
        140,
    ]


# -- the unpickler's allow-list --------------------------------------------------------------------


def global_call(module, name, argument):
    """Protocol-2 opcodes for ``module.name(argument)``: GLOBAL, a unicode string, TUPLE1, REDUCE."""
    text = argument.encode()
    return (
        b"c" + module.encode() + b"\n" + name.encode() + b"\n" + b"X" + struct.pack("<I", len(text)) + text + b"\x85R"
    )


@pytest.mark.parametrize(
    ("module", "name", "code"),
    [
        ("builtins", "eval", "open({marker!r}, 'w').close()"),
        ("builtins", "exec", "open({marker!r}, 'w').close()"),
        ("builtins", "open", "{marker}"),
        ("builtins", "__import__", "os"),
        ("builtins", "getattr", "x"),
        ("os", "system", "touch {marker}"),
        ("posix", "system", "touch {marker}"),
        ("subprocess", "getoutput", "touch {marker}"),
        ("numpy", "load", "{marker}"),
        ("numpy", "frombuffer", "x"),
        ("pickle", "loads", "x"),
        ("numpy.core.multiarray", "frombuffer", "x"),
        ("_codecs", "decode", "x"),
    ],
)
def test_the_unpickler_refuses_every_global_outside_its_allow_list(tmp_path, module, name, code):
    """A tampered batch naming any callable outside the seven the arrays need (numpy's
    ``_reconstruct``/``scalar``/``ndarray``/``dtype``, ``_codecs.encode``) is refused by name before
    it runs: no marker file appears (an allow-list that let ``builtins`` through ran ``eval``)."""
    marker = tmp_path / "pwned"
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    call = global_call(module, name, code.format(marker=str(marker)))
    # {b"data": <call>, b"labels": []}: the call sits where the pixel array belongs
    (base / "test_batch").write_bytes(b"\x80\x02}(C\x04data" + call + b"C\x06labels]u.")
    message = refused(f"refusing to unpickle {module}.{name}: ", "cifar10", root=tmp_path, from_test_split=True)
    assert message.startswith("refusing to unpickle") and not marker.exists()  # the refusal itself, not re-wrapped


class _Payload:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize(
    ("function", "shown"), [(eval, "builtins.eval"), (exec, "builtins.exec"), (subprocess.call, "subprocess.call")]
)
def test_a_pickled_call_is_refused_at_every_protocol(tmp_path, protocol, function, shown):
    """``pickle`` itself writes the payload (GLOBAL at protocol 2, STACK_GLOBAL at 4 and 5)."""
    marker = tmp_path / "pwned"
    argument = ["touch", str(marker)] if function is subprocess.call else f"open({str(marker)!r}, 'w').close()"
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    content = {b"data": _Payload(function, argument), b"fine_labels": [0, 1]}
    (base / "test").write_bytes(pickle.dumps(content, protocol=protocol, fix_imports=False))
    refused(f"refusing to unpickle {shown}: ", "cifar100", root=tmp_path, from_test_split=True)
    assert not marker.exists()


# -- CIFAR-100's binary names file -----------------------------------------------------------------


def cifar100_binary(root, names_bytes):
    base = root / "cifar-100-binary"
    base.mkdir()
    for name, n in (("train.bin", 200), ("test.bin", 100)):
        fine = np.arange(n) % 100
        records = np.concatenate([(fine // 5)[:, None], fine[:, None], np.zeros((n, 3072), int)], axis=1)
        records.astype(np.uint8).tofile(base / name)
    (base / "fine_label_names.txt").write_bytes(names_bytes)
    return base / "fine_label_names.txt"


NAMES = [f"fine_{i:02d}" for i in range(100)]


def test_cifar100_binary_names_with_crlf_lines_and_a_blank_last_line(tmp_path):
    """One name per line, whitespace around them ignored: CRLF endings and the blank lines at the end
    of a file are no names (a reader splitting on line breaks took the blank line for a 101st)."""
    cifar100_binary(tmp_path, ("\r\n".join(NAMES) + "\r\n\r\n").encode())
    data = load_dataset("cifar100", root=tmp_path)
    assert data.label_names == tuple(NAMES)


def test_cifar100_binary_names_in_latin1_are_decoded_like_the_python_meta(tmp_path):
    """Bytes that are no UTF-8 are Latin-1, as for the names of the python layout and of an .npz;
    before the fix ``read_text`` raised ``UnicodeDecodeError`` (a traceback, not one line)."""
    names = [b"\xe9t\xe9", b"hiver", "猫".encode(), *(n.encode() for n in NAMES[3:])]
    cifar100_binary(tmp_path, b"\n".join(names) + b"\n")
    data = load_dataset("cifar100", root=tmp_path, classes=["été", "猫"])
    assert data.label_names[:3] == ("été", "hiver", "猫") and data.classes == (0, 2)


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (b"\x1b[31mred", "fine_label_names holds '\\x1b[31mred', which is not printable text on one line"),
        (b"x" * 5000, "fine_label_names holds 'xxxxxxxxxxxxxxxxxxxxxxxx'…, which is 5000 characters long"),
    ],
    ids=["escape sequence", "5000 characters"],
)
def test_cifar100_binary_names_unfit_for_a_legend_are_refused_like_the_python_meta(tmp_path, first, message):
    """The names file goes into the same messages, CSV rows and legends as the python layout's
    meta: a terminal escape or a 5,000-character name is refused the same way (before the fix the
    binary layout took both unchecked)."""
    path = cifar100_binary(tmp_path, b"\n".join([first, *(n.encode() for n in NAMES[1:])]) + b"\n")
    assert f"{path}: {message}" in refused(message, "cifar100", root=tmp_path)


# -- label names -----------------------------------------------------------------------------------


def test_label_names_of_floats_are_refused(tmp_path):
    """Names are strings or integers (class ids shown as text); floats are some other array saved
    under the key, refused rather than shown as "0.5"."""
    x = np.zeros((4, 1, 2, 2), np.uint8)
    path = tmp_path / "d.npz"
    y = np.array([0, 1, 0, 1])
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y, label_names=np.array([0.5, 1.5]))
    refused("label_names must be a list of names, one per class id; got float64 of shape (2,)", path)


@pytest.mark.parametrize("key", [b"data", b"labels"])
def test_a_ragged_list_in_a_batch_is_one_line(tmp_path, key):
    """A batch whose pixels or labels are ragged nested lists (numpy cannot make an array of them)
    is refused naming the key, not a ``ValueError`` traceback from numpy."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    content = {b"data": [[0] * 3072, [0] * 3071], b"labels": [0, 1]}
    if key == b"labels":
        content = {b"data": [[0] * 3072, [0] * 3072], b"labels": [[0], [1, 2]]}
    (base / "test_batch").write_bytes(pickle.dumps(content, protocol=2))
    refused(f"'{key.decode()}' holds list object, not integers", "cifar10", root=tmp_path, from_test_split=True)


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 3, 4), (2, 1, 3, 4), (1, 2, 1, 2, 3)])
def test_read_idx_reads_any_number_of_dimensions(tmp_path, shape):
    """The fourth magic byte is the number of dimensions, each with its big-endian size: a 4-D
    ``(N, C, H, W)`` file reads as NCHW and loads as images (a reader that capped it at three read
    the first size of the data as a header and refused the file)."""
    array = (np.arange(int(np.prod(shape))) * 11 % 256).astype(np.uint8).reshape(shape)
    np.testing.assert_array_equal(read_idx(idx_file(tmp_path / "a", array)), array)
    assert read_idx(tmp_path / "a").shape == shape


def test_a_cifar100_meta_that_is_no_dict_is_refused(tmp_path):
    """``meta`` is a dict holding ``fine_label_names``; a pickled list there is a damaged or foreign
    file, refused by name rather than taken as a meta without names."""
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    py2_batch(base / "test", [0, 1, 0, 1], key=b"fine_labels")
    (base / "meta").write_bytes(pickle.dumps([b"apple", b"aquarium_fish"], protocol=2))
    refused(f"{base / 'meta'} is not a CIFAR-100 meta file", "cifar100", root=tmp_path, from_test_split=True)


def test_cifar100_meta_names_that_are_no_strings_are_refused(tmp_path):
    """A ``fine_label_names`` list holding ``None`` beside the names is an array of objects, refused
    like any other non-string names, not shown as the name "None"."""
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    py2_batch(base / "test", [0, 1, 0, 1], key=b"fine_labels")
    (base / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple", None]}, protocol=2))
    refused(
        "fine_label_names must be a list of names, one per class id; got object of shape (2,)",
        "cifar100",
        root=tmp_path,
        from_test_split=True,
    )


def test_a_test_subset_of_the_whole_split_is_still_class_balanced(tmp_path):
    """``--n-test`` as large as the test split is no shortcut around the balance: the remainder goes
    to the first class given, so 10 of (four 0s, three 1s, three 2s) with class 1 first asks for four
    1s and is refused, while class 0 first takes every record, in file order."""
    x = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 2, 2), np.uint8)
    path = tmp_path / "d.npz"
    y = np.arange(10) % 3
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    refused("asked for 4 test examples of class 1 but the data has only 3", path, classes=[1, 0, 2], n_test=10)
    data = load_dataset(str(path), classes=[0, 1, 2], n_test=10, seed=4)
    np.testing.assert_array_equal(np.rint(data.x_test[:, 0, 0, 0] * 255), np.arange(10))
    np.testing.assert_array_equal(data.y_test, y)


def test_an_idx_size_uses_all_four_header_bytes_even_for_a_short_file(tmp_path):
    """A header claiming 2**24 + 5 bytes over 5 bytes of data is truncated: the size's top byte
    counts (a reader that skipped it read the size as 5 and took the hostile file whole)."""
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 2**24 + 5) + bytes(5))
    with pytest.raises(DataError, match=re.escape(f"{path} is truncated or corrupt (shape (16777221,), 13 bytes)")):
        read_idx(path)


def test_grey_nhwc_images_are_refused_not_read_as_channels(tmp_path):
    """(N, H, W, 1) is NHWC with one channel: refused with the hint, not loaded as H channels of
    W x 1 images (a check that looked only for a last axis of 3 let it through)."""
    x = np.zeros((4, 5, 5, 1), np.uint8)
    path = tmp_path / "d.npz"
    y = np.array([0, 1, 0, 1])
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    refused("x_test has shape (4, 5, 5, 1), which looks like NHWC; transpose it to NCHW", path)


def test_class_ids_and_names_are_read_without_surrounding_spaces(tmp_path):
    """``classes`` as typed in a list ("2, 0", or a name with a space after it): the ids and names
    are stripped before they are read, and keep the order given."""
    x = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 2, 2), np.uint8)
    path = tmp_path / "d.npz"
    y = np.arange(6) % 3
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y, label_names=np.array(["cat", "dog", "emu"]))
    assert load_dataset(str(path), classes=[" 2", "0 "]).classes == (2, 0)
    assert load_dataset(str(path), classes=["dog ", " cat"]).classes == (1, 0)


def test_label_names_must_reach_the_largest_class_id_of_the_task(tmp_path):
    """One name per class id, in order, up to the task's largest id: a task of classes 0 and 5 with
    two names has as many names as classes but none for id 5 (a check counting the task's classes
    took it)."""
    x = np.zeros((4, 1, 2, 2), np.uint8)
    path = tmp_path / "d.npz"
    y = np.array([0, 5, 0, 5])
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y, label_names=np.array(["zero", "one"]))
    refused("d.npz: 2 label_names for class ids up to 5: one name per class id, in order", path)


def test_the_python_layout_is_read_before_the_binary_one(tmp_path):
    """With both of CIFAR-10's layouts under the root, ``cifar-10-batches-py`` (torchvision's) is
    the one read, as the data contract lists it first."""
    (tmp_path / "cifar-10-batches-py").mkdir()
    py2_batch(tmp_path / "cifar-10-batches-py" / "test_batch", [0, 1, 0, 1])
    (tmp_path / "cifar-10-batches-bin").mkdir()
    records = [bytes([label]) + bytes(3072) for label in (8, 9, 8, 9)]
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"".join(records))
    data = load_dataset("cifar10", root=tmp_path, from_test_split=True, seed=0)
    assert data.classes == (0, 1)


def test_a_batch_key_that_is_no_utf8_is_ignored_like_any_other_extra_key(tmp_path):
    """Keys are Python 2 strings decoded as Latin-1, which reads any byte: a key b"\\xe9t\\xe9" beside
    ``data`` and ``labels`` is one more unused key, not a ``UnicodeDecodeError`` traceback."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    content = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 0, 1], b"\xe9t\xe9": b"x"}
    (base / "test_batch").write_bytes(pickle.dumps(content, protocol=2))
    data = load_dataset("cifar10", root=tmp_path, from_test_split=True, seed=0)
    assert sorted([*data.y_train, *data.y_test]) == [0, 0, 1, 1]


def test_a_folder_named_like_an_idx_file_is_passed_over(tmp_path):
    """Only files are candidates: a folder ``ROOT/t10k-images-idx3-ubyte`` (an archive tool's
    output) is skipped and the files in ``ROOT/MNIST/raw`` are read."""
    (tmp_path / "t10k-images-idx3-ubyte").mkdir()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    idx_file(raw / "t10k-images-idx3-ubyte", np.arange(4 * 4, dtype=np.uint8).reshape(4, 2, 2))
    idx_file(raw / "t10k-labels-idx1-ubyte", np.array([0, 1, 0, 1], np.uint8))
    data = load_dataset("mnist", root=tmp_path, from_test_split=True, seed=0)
    assert data.x_train.shape == (2, 1, 2, 2) and data.x_test.shape == (2, 1, 2, 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [True, False]}, "'labels' holds list bool, not integers"),
        ({b"data": np.zeros((2, 3072, 1), np.uint8), b"labels": [0, 1]}, "'data' of shape (2, 3072, 1)"),
    ],
    ids=["bool labels", "3-D data"],
)
def test_a_batch_of_bool_labels_or_3d_pixels_is_refused(tmp_path, content, message):
    """Labels are integers (not booleans, which numpy would cast to 0 and 1) and pixels an
    (N, 3072) table (a trailing axis of 1 would reshape to the same images unasked)."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    (base / "test_batch").write_bytes(pickle.dumps(content, protocol=2))
    refused(message, "cifar10", root=tmp_path, from_test_split=True)
