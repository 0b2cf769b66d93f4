"""Datasets as every command sees them: NCHW float32 images in [0, 1], int64 class ids.

Dataset specs (DESIGN.md, data contract; their files are read by ``bridge._data_sources``):
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, always available offline); a
  fixed split puts every third image (index % 3 == 2) in the test set: 1198 train, 599 test.
- ``mnist``: the IDX files of torchvision's layout (``ROOT/MNIST/raw``), or directly in ROOT,
  gzipped or not.
- ``cifar10``: ``ROOT/cifar-10-batches-py`` (torchvision's layout; read with an unpickler that
  only rebuilds numpy arrays, so a tampered file cannot run code) or ``cifar-10-batches-bin``.
- ``cifar100``: ``ROOT/cifar-100-python`` (torchvision's layout: ``train``, ``test`` and ``meta``,
  read the same way; the 100 fine labels and their names) or ``cifar-100-binary``.
- a path to an ``.npz`` with ``x_train, y_train, x_test, y_test`` (uint8 0-255 or float 0-1,
  NCHW or NHW; optional ``label_names``, and ``classes``: the task order that ``save_dataset_npz``
  records, the default of ``classes`` below), loaded without pickles.

Then, in this order: ``from_test_split`` (use only the official test split, cut into train and
test: for a root that holds only the MNIST test set), ``classes`` (a binary or smaller task;
ids or label names), and class-balanced, seeded ``n_train`` / ``n_test`` subsets.
Downloads happen only with ``download=True`` (through torchvision, online).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.attacks.threat import looks_channels_last
from ntkrobust.bridge._data_sources import DATASETS, DataError, load_raw, read_idx

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "balanced_indices",
    "load_dataset",
    "read_idx",
    "save_dataset_npz",
    "stratified_halves",
    "task_indices",
]


@dataclass(frozen=True)
class Dataset:
    """A classification task, train and test splits, in the data contract."""

    name: str
    x_train: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[int, ...]  # the task's class ids, in task order (binary: (negative, positive))
    label_names: tuple[str, ...] | None = None  # name of every class id of the source, if known

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def class_name(self, class_id: int) -> str:
        if self.label_names is not None and 0 <= class_id < len(self.label_names):
            return self.label_names[class_id]
        return str(class_id)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "image_shape": list(self.image_shape),
            "classes": list(self.classes),
            "class_names": [self.class_name(c) for c in self.classes],
        }


# -- public entry point ---------------------------------------------------------------------


def load_dataset(
    spec: str,
    *,
    root: str | Path | None = None,
    classes: Sequence[int | str] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    download: bool = False,
    from_test_split: bool = False,
) -> Dataset:
    """Load ``spec`` and cut it down as asked; raises ``DataError`` with a one-line reason."""
    for flag, n in (("--n-train", n_train), ("--n-test", n_test)):
        if n is not None and n < 1:
            raise DataError(f"{flag} must be at least 1, got {n}")
    raw = load_raw(spec, root=root, download=download, want_train=not from_test_split)
    name = spec if spec in DATASETS else Path(spec).name
    xte, yte = _to_images(raw["x_test"], "x_test"), _to_labels(raw["y_test"], "y_test")
    if from_test_split:  # the train split is cut from the test split below
        xtr, ytr = xte[:0], yte[:0]
    else:
        xtr, ytr = _to_images(raw["x_train"], "x_train"), _to_labels(raw["y_train"], "y_train")
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{name}: x_{split} has {x.shape[0]} images but y_{split} has {y.shape[0]} labels")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{name}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ in shape")
    label_names = raw.get("label_names")
    rng = np.random.default_rng(seed)

    requested = classes or raw.get("classes")  # else the task order of a file of save_dataset_npz (make-npz)
    task = (
        _resolve_classes(requested, label_names, np.union1d(ytr, yte))
        if requested
        else tuple(int(c) for c in np.unique(np.concatenate([ytr, yte])))
    )
    if len(task) < 2:
        raise DataError(f"{name}: a classification task needs two classes or more; the data holds only class {task[0]}")
    if label_names is not None and max(task) >= len(label_names):
        raise DataError(
            f"{name}: {len(label_names)} label_names for class ids up to {max(task)}: one name per class id, in order"
        )
    if n_train is not None and n_train < len(task):
        raise DataError(
            f"--n-train {n_train} leaves classes without a training point: at least {len(task)} for {len(task)} classes"
        )
    if from_test_split:
        pool_x, pool_y = xte, yte
        keep = np.isin(pool_y, task)
        pool_x, pool_y = pool_x[keep], pool_y[keep]
        take = n_train if n_train is not None else pool_y.shape[0] // 2
        train_idx = _balanced_subset(pool_y, task, take, rng, what="train (from the test split)")
        rest = np.setdiff1d(np.arange(pool_y.shape[0]), train_idx)
        xtr, ytr, xte, yte = pool_x[train_idx], pool_y[train_idx], pool_x[rest], pool_y[rest]
        n_train = None
        name = f"{name} (test split)"
    for split, y in (("train", ytr), ("test", yte)):
        absent = [c for c in task if not np.any(y == c)]
        if absent:
            raise DataError(f"{name}: class(es) {absent} absent from the {split} split")
    keep_tr, keep_te = np.isin(ytr, task), np.isin(yte, task)
    xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
    if n_train is not None:
        idx = _balanced_subset(ytr, task, n_train, rng, what="train")
        xtr, ytr = xtr[idx], ytr[idx]
    if n_test is not None:
        idx = _balanced_subset(yte, task, n_test, rng, what="test")
        xte, yte = xte[idx], yte[idx]
    return Dataset(name, xtr, ytr, xte, yte, task, tuple(label_names) if label_names is not None else None)


# -- subsets and classes --------------------------------------------------------------------


def _resolve_classes(
    requested: Sequence[int | str], label_names: Sequence[str] | None, present: np.ndarray
) -> tuple[int, ...]:
    out: list[int] = []
    for c in requested:
        text = str(c).strip()
        if re.fullmatch(r"-?\d+", text):  # what int() reads: "--1" and "²" (isdigit) are no ids
            cid = int(text)
        elif label_names is not None and text.lower() in (lowered := [str(n).lower() for n in label_names]):
            ids = [i for i, name in enumerate(lowered) if name == text.lower()]  # names in any case: Cat, cat, CAT
            if len(ids) > 1:  # ImageNet's names hold "crane" twice
                raise DataError(f"class name {text!r} names classes {', '.join(map(str, ids))}: give the class id")
            cid = ids[0]
        else:
            known = f" (names: {', '.join(label_names)})" if label_names is not None else ""
            raise DataError(f"unknown class {text!r}: give class ids{known}")
        if cid not in present:
            raise DataError(f"class {cid} is absent from the data (present: {', '.join(map(str, present))})")
        if cid in out:
            raise DataError(f"--classes names class {cid} twice ({','.join(map(str, requested))})")
        out.append(cid)
    if len(out) < 2:
        raise DataError(f"--classes needs at least two distinct classes, got {','.join(map(str, requested))}")
    return tuple(out)


def _balanced_subset(
    y: np.ndarray, classes: Sequence[int], n: int, rng: np.random.Generator, *, what: str
) -> np.ndarray:
    """Indices of ``n`` examples, as equal per class as possible (the first classes get the
    remainder), drawn without replacement, returned in dataset order."""
    if n > y.shape[0]:
        raise DataError(f"asked for {n} {what} examples but the data has only {y.shape[0]}")
    per_class, extra = divmod(n, len(classes))
    chosen = []
    for i, c in enumerate(classes):
        want = per_class + (1 if i < extra else 0)
        members = np.flatnonzero(y == c)
        if want > members.size:
            raise DataError(f"asked for {want} {what} examples of class {c} but the data has only {members.size}")
        chosen.append(rng.choice(members, size=want, replace=False))
    return np.sort(np.concatenate(chosen))


def balanced_indices(labels: np.ndarray, classes: Sequence[int], n: int, seed: int, *, what: str = "") -> np.ndarray:
    """Indices of ``n`` examples of ``labels``, class-balanced over ``classes``, seeded, in order:
    the probe sets of empirical-NTK metrics (LOO sec. 3: "500 class-balanced training points")."""
    return _balanced_subset(np.asarray(labels), classes, n, np.random.default_rng(seed), what=what or "probe")


def task_indices(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Class ids → their position in the task's ``classes`` (the index of the net's output)."""
    lookup = {int(c): i for i, c in enumerate(classes)}
    try:
        return np.array([lookup[int(label)] for label in labels], dtype=np.int64)
    except KeyError as err:
        raise DataError(f"label {err.args[0]} is not one of the task's classes {list(classes)}") from None


def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices in two halves with the same class mix (odd counts favour the first).

    Used to rank features on one half of the held-out data and evaluate on the other.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = (members.size + 1) // 2
        first.append(members[:cut])
        second.append(members[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


# -- conversions ----------------------------------------------------------------------------


def _to_images(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "uif":
        raise DataError(f"{what} has dtype {x.dtype}; expected uint8 0-255 or float 0-1")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{what} has shape {x.shape}; expected NCHW or NHW images")
    if looks_channels_last(x.shape[1:]):
        raise DataError(f"{what} has shape {x.shape}, which looks like NHWC; transpose it to NCHW")
    if x.shape[0] == 0:
        raise DataError(f"{what} holds no images")
    if 0 in x.shape[1:]:  # images of no pixels: nothing to reduce over, nothing to learn from
        raise DataError(f"{what} has shape {x.shape}: images with a zero-size dimension")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise DataError(f"{what} contains NaN or infinite values")
        if x.min() < 0.0 or x.max() > 1.0:
            raise DataError(f"{what} holds floats in [{x.min():.3g}, {x.max():.3g}]; expected [0, 1]")
        return x.astype(np.float32)
    if x.min() < 0 or x.max() > 255:
        raise DataError(f"{what} holds integers in [{x.min()}, {x.max()}]; expected 0-255")
    return (x.astype(np.float32) / 255.0).astype(np.float32)


#: the largest class id a label may hold (a larger one is a corrupt or foreign file)
MAX_CLASS_ID = 2**31 - 1


def _to_labels(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}; expected a vector of class ids")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{what} holds non-integer labels")
    elif y.dtype.kind not in "ui":
        raise DataError(f"{what} has dtype {y.dtype}; expected integer class ids")
    if y.size and y.min() < 0:
        raise DataError(f"{what} holds negative class ids")
    if y.size and y.max() > MAX_CLASS_ID:  # checked before the cast, which wraps 2**63 to a negative id
        raise DataError(f"{what} holds class id {y.max():.6g}, above {MAX_CLASS_ID}: labels are class ids")
    return y.astype(np.int64)


def save_dataset_npz(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` as an ``.npz`` this module reads back unchanged (float32 images, and the
    task's classes in task order: ``--classes 8,3`` stays 8, 3, not the sorted 3, 8)."""
    arrays: dict[str, np.ndarray] = {
        "x_train": dataset.x_train,
        "y_train": dataset.y_train,
        "x_test": dataset.x_test,
        "y_test": dataset.y_test,
        "classes": np.asarray(dataset.classes, dtype=np.int64),
    }
    if dataset.label_names is not None:
        arrays["label_names"] = np.asarray(dataset.label_names, dtype=str)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
