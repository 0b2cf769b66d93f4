"""The files of each dataset, read without running code: raw arrays for ``bridge.data``.

``load_raw(spec, ...)`` returns a dict of ``x_train, y_train, x_test, y_test`` as stored (uint8
or float, NCHW or NHW) and, where the source names its classes, ``label_names``; ``bridge.data``
checks and converts them to the data contract. Sources (DESIGN.md, data contract):
- ``digits``: scikit-learn's bundled 8x8 digits, a fixed split (index % 3 == 2 is test);
- ``mnist``: IDX files, gzipped or not, in ROOT or torchvision's ``ROOT/MNIST/raw``;
- ``cifar10`` / ``cifar100``: torchvision's python layout, read with an unpickler that rebuilds
  only numpy arrays, dicts, lists and strings (a tampered file cannot run code), or the binary
  layout;
- a path to an ``.npz`` of plain arrays (no pickles); a file of ``save_dataset_npz`` also holds
  ``classes``, its task's class ids in task order (the default task when it is read).
Downloads happen only with ``download=True`` (through torchvision, online).
"""

from __future__ import annotations

import gzip
import math
import pickle
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust._messages import first_line, name_problem, shown_name
from ntkrobust.bridge.files import NpzError, not_a_file, read_npz

__all__ = ["DATASETS", "DataError", "load_raw", "read_idx"]

#: Named datasets; any other spec must be a path to an ``.npz`` file.
DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10", "cifar100")


class DataError(ValueError):
    """Bad dataset spec, files or subset request; the message is one line meant for users."""


# -- sources --------------------------------------------------------------------------------


def load_raw(spec: str, *, root: str | Path | None, download: bool, want_train: bool) -> dict[str, Any]:
    if spec == "digits":
        return _digits()
    if spec in ("mnist", "cifar10", "cifar100"):
        if root is None:
            raise DataError(f"--data {spec} needs --data-root (the folder holding its files)")
        root = Path(root)
        if download:
            from ntkrobust.bridge import distributed  # torch, as torchvision's download needs it anyway

            with distributed.main_first():  # under torchrun: rank 0 downloads, the others find the files
                _download(spec, root)
        if not root.is_dir():
            raise DataError(f"data root {root} does not exist or is not a folder")
        readers = {"mnist": _mnist, "cifar10": _cifar10, "cifar100": _cifar100}
        return readers[spec](root, want_train)
    path = Path(spec)
    if path.suffix != ".npz":
        # a folder of MNIST's or CIFAR's files given as --data: say which flags take it
        named = next((name for name in ("cifar100", "cifar10", "mnist") if name in path.name.lower()), None)
        hint = f" (for a folder of its files: --data {named} --data-root {spec})" if named and path.is_dir() else ""
        raise DataError(f"unknown dataset {spec!r}: use {', '.join(DATASETS)} or a path to an .npz file{hint}")
    return _npz(path)


def _digits() -> dict[str, Any]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    test = np.arange(y.shape[0]) % 3 == 2
    return {"x_train": x[~test], "y_train": y[~test], "x_test": x[test], "y_test": y[test]}


def _npz(path: Path) -> dict[str, Any]:
    reason = not_a_file(path)  # a FIFO or a device exists, and is no .npz
    if reason:
        raise DataError(f"dataset file {path} {reason}")
    arrays = ("x_train", "y_train", "x_test", "y_test")
    try:
        out: dict[str, Any] = read_npz(path, (*arrays, "label_names", "classes"), required=arrays)
    except NpzError as error:
        raise DataError(f"cannot read {path} as an .npz of plain arrays: {error}") from None
    if "label_names" in out:
        out["label_names"] = _label_names(out["label_names"], str(path))
    if "classes" in out:
        out["classes"] = _task_classes(out["classes"], str(path))
    return out


def _task_classes(classes: Any, where: str) -> list[int]:
    """The task order a saved dataset records (``save_dataset_npz``): distinct class ids, 1-D."""
    array = np.asarray(classes)
    if array.ndim != 1 or array.dtype.kind not in "iu" or array.size < 2 or np.unique(array).size != array.size:
        raise DataError(
            f"{where}: classes must list two or more distinct class ids in task order; got {array.dtype} of "
            f"shape {array.shape}"
        )
    return [int(c) for c in array.tolist()]


def _label_names(names: Any, where: str, key: str = "label_names") -> list[str]:
    """One name per class id, in order: a 1-D array or list of strings (bytes decoded), or of
    numbers; anything else (a single string, a table, objects) is refused."""
    try:
        array = np.asarray(names)
    except ValueError:  # ragged nested lists
        array = np.asarray(None)
    if array.ndim != 1 or array.dtype.kind not in "USiu":
        raise DataError(
            f"{where}: {key} must be a list of names, one per class id; got {array.dtype} of shape {array.shape}"
        )
    listed = [_decoded(n) if isinstance(n, bytes) else str(n) for n in array.tolist()]
    for name in listed:  # names go into one-line messages, CSV rows and legends
        problem = name_problem(name)
        if problem:
            shown = shown_name(name)
            raise DataError(
                f"{where}: {key} holds {shown}, which {problem}: every name must be printable text on one line"
            )
    return listed


def _decoded(name: bytes) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:  # CIFAR's own files are ASCII; anything else as bytes
        return name.decode("latin1")


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(root: Path, name: str, subdirs: Sequence[str]) -> Path | None:
    for sub in subdirs:
        for candidate in (root / sub / name, root / sub / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # EOFError: a gzip cut short
        raise DataError(f"cannot read {path}: {first_line(err)}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + math.prod(shape):  # Python ints: np.prod wraps around at 2**64
        raise DataError(f"{path} is truncated or corrupt (shape {shape}, {len(data)} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _mnist(root: Path, want_train: bool) -> dict[str, Any]:
    subdirs = (".", "MNIST/raw", "mnist", "MNIST")
    out: dict[str, Any] = {}
    for split in ("train", "test") if want_train else ("test",):
        images, labels = (_find(root, n, subdirs) for n in _MNIST_FILES[split])
        if images is None or labels is None:
            hint = ""
            if split == "train" and _find(root, _MNIST_FILES["test"][0], subdirs) is not None:
                hint = "; only the test set is there: add --from-test-split to cut it into train and test"
            raise DataError(f"MNIST {split} files ({_MNIST_FILES[split][0]}[.gz]) not found under {root}{hint}")
        out[f"x_{split}"], out[f"y_{split}"] = read_idx(images), read_idx(labels)
    return out


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings and numpy arrays; refuses every other global."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: a CIFAR batch file holds only arrays and strings")


def _unpickle_dict(path: Path, what: str) -> dict[str, Any]:
    """A pickled dict of arrays, lists and strings (keys as str), read without running code."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except DataError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, LookupError, MemoryError) as err:
        # LookupError: _codecs.encode of an unknown codec; MemoryError: _reconstruct of a huge shape
        raise DataError(f"cannot read {what} {path}: {err}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a {what} file")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar_batch_py(path: Path, labels: str = "labels", what: str = "CIFAR-10 batch") -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_dict(path, what)
    if "data" not in batch or labels not in batch:
        raise DataError(f"{path} is not a {what} file (no data/{labels})")
    data, ids = _integers(batch["data"], path, "data"), _integers(batch[labels], path, labels)
    if data.ndim != 2 or data.shape[1] != 3072 or ids.shape != data.shape[:1]:
        raise DataError(
            f"{path} is not a {what} file: 'data' of shape {data.shape} and '{labels}' of shape {ids.shape} "
            "(expected (N, 3072) pixels and N labels)"
        )
    if data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):
        raise DataError(f"{path} is not a {what} file: pixels in [{data.min()}, {data.max()}], expected 0-255")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), ids.astype(np.int64)


def _integers(value: Any, path: Path, key: str) -> np.ndarray:
    """A pickled batch's ``key`` as an integer array, or ``DataError``: a string or a ragged list
    would otherwise be parsed (or fail) deep inside numpy's casts."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists
        array = np.asarray(None)
    if array.dtype.kind not in "ui":
        raise DataError(f"{path}: '{key}' holds {type(value).__name__} {array.dtype}, not integers")
    return array


def _cifar_batch_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3073:
        raise DataError(f"{path} is not a CIFAR-10 binary batch ({raw.size} bytes)")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


_CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar10(root: Path, want_train: bool) -> dict[str, Any]:
    layouts = (("cifar-10-batches-py", "", _cifar_batch_py), ("cifar-10-batches-bin", ".bin", _cifar_batch_bin))
    for folder, suffix, reader in layouts:
        base = root / folder
        if not base.is_dir() and (root / f"test_batch{suffix}").is_file():
            base = root
        if not (base / f"test_batch{suffix}").is_file():
            continue
        parts = {"test": [base / f"test_batch{suffix}"]}
        if want_train:
            parts["train"] = [base / f"data_batch_{i}{suffix}" for i in range(1, 6)]
        out: dict[str, Any] = {"label_names": list(_CIFAR_NAMES)}
        for split, files in parts.items():
            absent = [p.name for p in files if not p.is_file()]
            if absent:
                raise DataError(f"CIFAR-10 files missing under {base}: {', '.join(absent)}")
            xs, ys = zip(*(reader(p) for p in files), strict=True)
            out[f"x_{split}"], out[f"y_{split}"] = np.concatenate(xs), np.concatenate(ys)
        return out
    raise DataError(f"CIFAR-10 not found under {root} (expected cifar-10-batches-py/ or cifar-10-batches-bin/)")


def _cifar100_names(base: Path, binary: bool) -> list[str] | None:
    if binary:
        names = base / "fine_label_names.txt"
        if not names.is_file():
            return None
        lines = names.read_bytes().split()  # one name a line: decoded and checked as the python layout's
        return _label_names(lines, str(names), "fine_label_names") if lines else []
    meta = base / "meta"
    if not meta.is_file():
        return None
    listed = _unpickle_dict(meta, "CIFAR-100 meta").get("fine_label_names")
    if listed is None or (isinstance(listed, list | tuple) and not listed):
        return None
    return _label_names(listed, str(meta), "fine_label_names")


def _cifar100_part(path: Path, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    if not binary:
        return _cifar_batch_py(path, "fine_labels", "CIFAR-100")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3074:
        raise DataError(f"{path} is not a CIFAR-100 binary file ({raw.size} bytes)")
    records = raw.reshape(-1, 3074)  # coarse label, fine label, 3072 pixels
    return records[:, 2:].reshape(-1, 3, 32, 32), records[:, 1].astype(np.int64)


def _cifar100(root: Path, want_train: bool) -> dict[str, Any]:
    """The 100 fine classes of CIFAR-100, from torchvision's layout or the binary one."""
    for folder, suffix, binary in (("cifar-100-python", "", False), ("cifar-100-binary", ".bin", True)):
        base = root / folder
        if not base.is_dir() and (root / f"test{suffix}").is_file():
            base = root
        if not (base / f"test{suffix}").is_file():
            continue
        out: dict[str, Any] = {}
        names = _cifar100_names(base, binary)
        if names is not None:
            out["label_names"] = names
        for split in ("train", "test") if want_train else ("test",):
            path = base / f"{split}{suffix}"
            if not path.is_file():
                raise DataError(f"CIFAR-100 file missing under {base}: {path.name}")
            out[f"x_{split}"], out[f"y_{split}"] = _cifar100_part(path, binary)
        return out
    raise DataError(f"CIFAR-100 not found under {root} (expected cifar-100-python/ or cifar-100-binary/)")


def _download(spec: str, root: Path) -> None:
    """torchvision's download of ``spec`` into ``root``; a failed one removes what it made there."""
    before = set(root.iterdir()) if root.is_dir() else None
    try:
        import torchvision.datasets as tvd

        root.mkdir(parents=True, exist_ok=True)
        source = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[spec]
        for train in (True, False):
            source(root=str(root), train=train, download=True)
    except Exception as err:  # network, disk or archive errors: one line for the user
        if before is None:  # the folder is the download's: all of it goes
            made = [root]
        else:  # its folders and partial files in a folder of the user's (a retry starts clean)
            made = sorted(set(root.iterdir()) - before) if root.is_dir() else []
        for path in made:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise DataError(f"download of {spec} into {root} failed: {_download_reason(err)}") from None


def _download_reason(error: BaseException) -> str:
    """torchvision's "Error downloading X:" heads a list of the mirrors tried; the cause is last."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[-1]}"[:300]
    return first_line(error)
