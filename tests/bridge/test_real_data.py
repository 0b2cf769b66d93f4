"""The readers on the real files of ``../shared/data`` against facts published about them: the
official MNIST test set's class counts and first labels, CIFAR-10's test batch's first labels and
its per-channel means (R > G > B). Skipped where ``../shared`` is absent (CI's fresh clone); the
synthetic-file tests of ``test_data.py`` check the byte layouts everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.bridge._data_sources import load_raw
from ntkrobust.bridge.data import load_dataset

pytestmark = pytest.mark.shared_data

#: the official MNIST test set (LeCun et al.): images per digit 0-9, and its first ten labels
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TEST_FIRST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
#: CIFAR-10's test_batch: its first ten labels (cat, ship, ship, airplane, frog, ...)
CIFAR10_TEST_FIRST = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_the_official_mnist_test_set(shared_file):
    root = shared_file("mnist")
    raw = load_raw("mnist", root=root, download=False, want_train=False)
    x, y = raw["x_test"], raw["y_test"]
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == MNIST_TEST_COUNTS and y[:10].tolist() == MNIST_TEST_FIRST
    data = load_dataset("mnist", root=root, from_test_split=True)
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1:] == (1, 28, 28)
    assert 0 <= data.x_test.min() and data.x_test.max() == 1
    # the mean pixel of MNIST's test images is 0.1325 (0.1307 for the training set)
    whole = np.concatenate([data.x_train, data.x_test])
    assert whole.shape[0] == 10000 and abs(float(whole.mean()) - 0.1325) < 0.0005


def test_the_cifar10_subset(shared_file):
    path = shared_file("cifar10", "cifar10_subset.npz")
    data = load_dataset(str(path))
    assert data.x_train.shape == (4660, 3, 32, 32) and data.x_test.shape == (932, 3, 32, 32)
    assert data.y_test[:10].tolist() == CIFAR10_TEST_FIRST  # the first 932 of the official test batch
    # CIFAR-10's channel means are about (0.491, 0.482, 0.447): red, green, blue in that order
    means = data.x_train.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(means, [0.4914, 0.4822, 0.4465], atol=0.005)
