"""Hostile or corrupt dataset files: each is one ``DataError`` line, raised before any array the
file declares is allocated or reduced (the tracebacks a review found: zero-size images, a 0-d
``label_names``, an .npy header declaring terabytes, CIFAR batches and IDX headers that lie)."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

from ntkrobust.bridge import files
from ntkrobust.bridge.data import DataError, load_dataset, read_idx


@pytest.fixture
def arrays(rng):
    return {
        "x_train": rng.random((8, 1, 4, 4)).astype(np.float32),
        "y_train": np.arange(8) % 2,
        "x_test": rng.random((4, 1, 4, 4)).astype(np.float32),
        "y_test": np.arange(4) % 2,
    }


def refused(spec, message, **kwargs):
    with pytest.raises(DataError, match=message) as error:
        load_dataset(str(spec), **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def idx(path, shape, body=None):
    header = bytes([0, 0, 8, len(shape)]) + b"".join(int(s).to_bytes(4, "big") for s in shape)
    path.write_bytes(header + (bytes(int(np.prod(shape))) if body is None else body))


# -- images of no pixels (a ValueError from x.min() before the fix) ------------------------------


def test_npz_images_with_a_zero_size_dimension_are_refused(tmp_path, arrays):
    path = npz(tmp_path / "d.npz", **{**arrays, "x_train": np.zeros((8, 1, 0, 4), np.float32)})
    refused(path, r"x_train has shape \(8, 1, 0, 4\): images with a zero-size dimension")


def test_mnist_images_with_a_zero_size_dimension_are_refused(tmp_path):
    idx(tmp_path / "t10k-images-idx3-ubyte", (10, 0, 28))
    idx(tmp_path / "t10k-labels-idx1-ubyte", (10,), bytes(range(10)))
    refused("mnist", r"x_test has shape \(10, 1, 0, 28\): images with a zero-size", root=tmp_path, from_test_split=True)


def test_an_idx_header_whose_size_wraps_around_is_truncated(tmp_path):
    # 2**22 * 2**21 * 2**21 = 2**64: np.prod wrapped to 0, the length check passed, reshape failed
    idx(tmp_path / "images", (2**22, 2**21, 2**21), b"")
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "images")


# -- label names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names, shape", [(np.array("cat"), r"<U3 of shape \(\)"), (np.array([[1, 2], [3, 4]]), r"shape \(2, 2\)")]
)
def test_label_names_that_are_no_list_are_refused(tmp_path, arrays, names, shape):
    path = npz(tmp_path / "d.npz", **arrays, label_names=names)  # 0-d: a TypeError before the fix
    refused(path, f"label_names must be a list of names, one per class id; got .*{shape}")


def test_label_names_on_several_lines_are_refused(tmp_path, arrays):
    """A name goes into one-line messages, CSV rows and legends."""
    names = np.array(["cat", "dog\nrm -rf"])
    refused(
        npz(tmp_path / "d.npz", **arrays, label_names=names),
        r"holds 'dog\\nrm -rf', which is not printable text on one line",
    )


def test_a_label_name_too_long_for_a_legend_is_refused(tmp_path, arrays):
    """One printable name of 100,000 characters passed: entk, features and dynamics then took
    three to twenty times as long in matplotlib's layout. 120 characters at most."""
    ok = npz(tmp_path / "ok.npz", **arrays, label_names=np.array(["a" * 120, "b"]))
    assert load_dataset(str(ok)).class_name(0) == "a" * 120
    long = npz(tmp_path / "d.npz", **arrays, label_names=np.array(["a" * 100_000, "b"]))
    refused(long, r"holds 'aaaaaaaaaaaaaaaaaaaaaaaa'…, which is 100000 characters long, more than the 120")


def test_a_name_of_two_classes_is_refused_only_when_asked_for(tmp_path, rng):
    """ImageNet's names hold "crane" twice: the file loads, picking a class by that name does not."""
    y = np.arange(12) % 3
    path = npz(tmp_path / "d.npz", x_train=rng.random((12, 1, 4, 4)), y_train=y, x_test=rng.random((6, 1, 4, 4)),
               y_test=y[:6], label_names=np.array(["crane", "Crane", "kite"]))  # fmt: skip
    assert load_dataset(str(path), classes=["0", "kite"]).classes == (0, 2)
    with pytest.raises(DataError, match=r"class name 'crane' names classes 0, 1: give the class id"):
        load_dataset(str(path), classes=["crane", "kite"])


def test_utf8_label_names_stored_as_bytes_are_decoded_as_utf8(tmp_path, arrays):
    names = np.array(["猫".encode(), b"chien"])
    assert load_dataset(str(npz(tmp_path / "d.npz", **arrays, label_names=names))).label_names == ("猫", "chien")


def test_make_npz_refuses_a_0d_label_names_in_one_line(tmp_path, arrays, run_cli):
    path = npz(tmp_path / "d.npz", **arrays, label_names=np.array("cat"))
    code, _, stderr = run_cli(["make-npz", "--data", path, "--out", tmp_path / "out.npz"])
    assert code == 2 and stderr.startswith("ntkrobust: error: ") and stderr.count("\n") == 1, stderr
    assert "label_names must be a list of names" in stderr and not (tmp_path / "out.npz").exists()


# -- an .npy header declaring more than the file holds ------------------------------------------


def npy_header(shape, dtype="<f4"):
    """An .npy version 1.0 header alone, as numpy pads it."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * ((len(text) + 11 + 63) // 64 * 64 - len(text) - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


def test_an_npy_header_declaring_terabytes_is_refused_before_allocating(tmp_path, arrays):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", npy_header((10**6, 1, 1000, 1000)))  # 3.6 TiB, no data
        for key in ("y_train", "x_test", "y_test"):
            buffer = io.BytesIO()
            np.save(buffer, arrays[key])
            archive.writestr(f"{key}.npy", buffer.getvalue())
    # an _ArrayMemoryError traceback before the fix
    refused(path, r"x_train declares shape \(1000000, 1, 1000, 1000\) of float32 \(3.64 TiB\) but holds 0 bytes")


def _zip_flags(data: bytes, *, flag: int = 0, method: int | None = None) -> bytes:
    """``data`` (a zip archive) with ``flag`` set in every member's general-purpose bits and, given
    ``method``, another compression method, in the local headers and the central directory."""
    out = bytearray(data)
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = out.find(signature)
        while at >= 0:
            out[at + flags_at] |= flag
            if method is not None:
                out[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
            at = out.find(signature, at + 4)
    return bytes(out)


@pytest.mark.parametrize(
    ("flag", "method", "message"),
    [(1, None, "is encrypted \\(password-protected\\)"), (0, 99, "compressed by a method this zip reader")],
    ids=["encrypted", "compression method 99"],
)
def test_a_member_zipfile_cannot_read_is_one_line(tmp_path, arrays, flag, method, message):
    """zipfile raises RuntimeError for an encrypted member and NotImplementedError for an unknown
    compression method: tracebacks from every .npz reader (data, run folders, probes) before."""
    path = npz(tmp_path / "d.npz", **arrays)
    path.write_bytes(_zip_flags(path.read_bytes(), flag=flag, method=method))
    refused(path, message)
    with pytest.raises(files.NpzError, match=message):
        files.read_npz(path, ("x_train",))


def test_arrays_beyond_the_machines_memory_are_refused(tmp_path, arrays, monkeypatch):
    path = npz(tmp_path / "d.npz", **arrays)
    monkeypatch.setattr(files, "_physical_memory", lambda: 100)
    refused(path, r"x_train of shape \(8, 1, 4, 4\) needs 512 bytes, more than this machine's memory")


def test_a_memory_error_while_reading_is_one_line(tmp_path, arrays, monkeypatch):
    path = npz(tmp_path / "d.npz", **arrays)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(files.np, "load", out_of_memory)
    refused(path, "do not fit in this machine's memory")


# -- CIFAR files whose contents are not what they claim ------------------------------------------


def cifar10_test_batch(root, batch):
    base = root / "cifar-10-batches-py"
    base.mkdir()
    with open(base / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return root


@pytest.mark.parametrize(
    "batch, message",
    [
        # a reshape ValueError before the fix
        ({"data": np.zeros((10, 100), np.uint8), "labels": list(range(10))}, r"'data' of shape \(10, 100\)"),
        # ValueErrors from numpy's casts of a string before the fix
        ({"data": "hello", "labels": [1]}, "'data' holds str <U5, not integers"),
        ({"data": np.zeros((10, 3072), np.uint8), "labels": "abc"}, "'labels' holds str <U3, not integers"),
        ({"data": np.zeros((10, 3072), np.uint8), "labels": [0, 1]}, r"'labels' of shape \(2,\)"),
        ({"data": np.full((2, 3072), 300), "labels": [0, 1]}, r"pixels in \[300, 300\], expected 0-255"),
    ],
)
def test_a_cifar10_batch_of_the_wrong_contents_is_one_line(tmp_path, batch, message):
    refused("cifar10", message, root=cifar10_test_batch(tmp_path, batch), from_test_split=True)


def test_cifar100_label_names_that_are_no_list_are_refused(tmp_path, rng):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    test = {"data": rng.integers(0, 256, (10, 3072)).astype(np.uint8), "fine_labels": list(range(10))}
    for name, content in (("meta", {"fine_label_names": 5}), ("test", test)):  # a TypeError before the fix
        with open(base / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    refused("cifar100", "meta: fine_label_names must be a list of names", root=tmp_path, from_test_split=True)
