"""The Gram cache verifies what it reads: an entry that is damaged, foreign or another key's is a
miss that is recomputed, replaced and reported as such, never a traceback and never used."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

import ntkrobust.kernels.gram as gram_module
from ntkrobust.kernels import compute_gram, get_architecture
from ntkrobust.kernels.gram import CORRUPT_ENTRY, cached_gram, gram_cache_path

ARCH = "fc1"


@pytest.fixture
def inputs(rng):
    """Five tiny images and five others of the same shape."""
    return rng.uniform(0, 1, size=(5, 1, 6, 6)), rng.uniform(0, 1, size=(5, 1, 6, 6))


@pytest.fixture
def true_gram(inputs):
    return compute_gram(get_architecture(ARCH), inputs[0])


@pytest.fixture
def no_compute(monkeypatch):
    """From here on, computing a Gram is an error: only a verified cache entry can answer."""

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    return lambda: monkeypatch.setattr(gram_module, "compute_gram", fail)


def _entry(tmp_path, inputs):
    """A valid entry for ``inputs[0]``, and its path."""
    arch = get_architecture(ARCH)
    assert cached_gram(arch, inputs[0], cache_dir=tmp_path)[1] == "miss"
    return gram_cache_path(arch, inputs[0], None, tmp_path)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _truncated(path, inputs, tmp_path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _emptied(path, inputs, tmp_path):
    path.write_bytes(b"")


def _flipped_data_byte(path, inputs, tmp_path):
    data = path.read_bytes()
    path.write_bytes(_flip(data, len(data) // 2))


def _random_bytes(path, inputs, tmp_path):
    path.write_bytes(np.random.default_rng(1).bytes(2000))


def _foreign_gram(path, inputs, tmp_path):
    """A valid .npz holding another finite Gram of the right shape (the review's 0.90 case)."""
    np.savez(path, gram=compute_gram(get_architecture(ARCH), inputs[1]))


def _foreign_gram_beside_the_key(path, inputs, tmp_path):
    """The entry's own key and checksum, another Gram: the checksum no longer matches."""
    with np.load(path, allow_pickle=False) as f:
        kept = {name: f[name] for name in f.files if name != "gram"}
    np.savez(path, gram=compute_gram(get_architecture(ARCH), inputs[1]), **kept)


def _another_keys_entry(path, inputs, tmp_path):
    """A genuine entry of other inputs (same shape) copied over this one."""
    arch = get_architecture(ARCH)
    cached_gram(arch, inputs[1], cache_dir=tmp_path)
    shutil.copyfile(gram_cache_path(arch, inputs[1], None, tmp_path), path)


def _wrong_shape(path, inputs, tmp_path):
    np.savez(path, gram=np.eye(4))


def _wrong_dtype(path, inputs, tmp_path):
    np.savez(path, gram=compute_gram(get_architecture(ARCH), inputs[0]).astype(np.float32))


def _not_finite(path, inputs, tmp_path):
    np.savez(path, gram=np.full((5, 5), np.nan))


def _missing_arrays(path, inputs, tmp_path):
    np.savez(path, other=np.zeros(3))


def _a_plain_npy(path, inputs, tmp_path):
    np.save(path.with_suffix(".tmp.npy"), compute_gram(get_architecture(ARCH), inputs[0]))
    path.with_suffix(".tmp.npy").replace(path)


def _a_directory(path, inputs, tmp_path):
    path.unlink()
    (path / "inside").mkdir(parents=True)


def _forged(path, transform) -> None:
    """The entry's own key, ``transform`` of its Gram, and that Gram's checksum recomputed (anyone
    can: the checksum catches damage, not forgery)."""
    with np.load(path, allow_pickle=False) as f:
        key, gram = f["key"], f["gram"]
    forged = np.ascontiguousarray(transform(gram))
    np.savez(path, gram=forged, key=key, checksum=np.array(gram_module._checksum(forged)))


def _forged_negated(path, inputs, tmp_path):
    """−K: symmetric, checksum right, but a negative diagonal no kernel has (the sweep's case)."""
    _forged(path, lambda g: -g)


def _forged_asymmetric(path, inputs, tmp_path):
    """One entry above the diagonal changed: it silently changed a kernel machine's accuracy."""

    def shift(g):
        g = g.copy()
        g[0, 1] *= 1.5
        return g

    _forged(path, shift)


def _forged_zero(path, inputs, tmp_path):
    """Symmetric, a diagonal >= 0, its checksum right: only the recomputed sample refuses it."""
    _forged(path, np.zeros_like)


def _forged_scaled(path, inputs, tmp_path):
    """Twice the true Gram (positive definite like it): only the recomputed sample refuses it."""
    _forged(path, lambda g: 2 * g)


CORRUPTIONS = [
    _truncated,
    _emptied,
    _flipped_data_byte,
    _random_bytes,
    _foreign_gram,
    _foreign_gram_beside_the_key,
    _another_keys_entry,
    _wrong_shape,
    _wrong_dtype,
    _not_finite,
    _missing_arrays,
    _a_plain_npy,
    _a_directory,
    _forged_negated,
    _forged_asymmetric,
    _forged_zero,
    _forged_scaled,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_a_corrupt_entry_is_recomputed_replaced_and_reported(corrupt, inputs, true_gram, tmp_path, no_compute):
    arch = get_architecture(ARCH)
    path = _entry(tmp_path, inputs)
    corrupt(path, inputs, tmp_path)
    gram, outcome = cached_gram(arch, inputs[0], cache_dir=tmp_path)
    np.testing.assert_array_equal(gram, true_gram)
    assert outcome == CORRUPT_ENTRY == "recomputed: corrupt entry"
    no_compute()  # the entry was replaced by a good one: the next run is a verified hit
    gram, outcome = cached_gram(arch, inputs[0], cache_dir=tmp_path)
    assert outcome == "hit" and path.is_file()
    np.testing.assert_array_equal(gram, true_gram)


def test_no_single_flipped_byte_fails_or_is_used(inputs, true_gram, tmp_path, monkeypatch):
    """Bytes all over an entry flipped in turn: the right Gram comes back (a hit only if the flip
    spared everything that matters, e.g. a zip timestamp), never a traceback."""
    arch = get_architecture(ARCH)
    path = _entry(tmp_path, inputs)
    good = path.read_bytes()
    monkeypatch.setattr(gram_module, "compute_gram", lambda *args, **kwargs: true_gram.copy())
    outcomes = []
    for at in range(0, len(good), 3):  # every third byte: headers, arrays, central directory
        path.write_bytes(_flip(good, at))
        gram, outcome = cached_gram(arch, inputs[0], cache_dir=tmp_path)
        np.testing.assert_array_equal(gram, true_gram, err_msg=f"byte {at} flipped")
        outcomes.append(outcome)
    assert outcomes.count(CORRUPT_ENTRY) > 0.8 * len(outcomes)
    assert set(outcomes) <= {"hit", CORRUPT_ENTRY}


def test_fresh_and_reused_entries_are_miss_then_hit_and_no_cache_is_off(inputs, true_gram, tmp_path, no_compute):
    arch = get_architecture(ARCH)
    assert cached_gram(arch, inputs[0])[1] == "off"
    _entry(tmp_path, inputs)
    no_compute()
    gram, outcome = cached_gram(arch, inputs[0], cache_dir=tmp_path)
    assert outcome == "hit"
    np.testing.assert_array_equal(gram, true_gram)


def test_a_full_disk_leaves_the_gram_computed_and_uncached(inputs, true_gram, tmp_path, monkeypatch, caplog):
    """The cache only saves a later run time: a write that fails (a full disk) is a warning naming
    the folder, not the command's end ("No space left on device", without a path, after the Gram
    was computed); nothing half-written is left in the cache."""
    import errno
    import logging

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gram_module.np, "savez", full)
    with caplog.at_level(logging.WARNING, logger="ntkrobust"):
        gram, outcome = cached_gram(get_architecture(ARCH), inputs[0], cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(gram, true_gram)
    assert outcome == "miss" and [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    assert f"could not be cached in {tmp_path / 'cache'}" in caplog.text and "No space left on device" in caplog.text


def test_concurrent_writers_of_one_entry_all_succeed_and_leave_a_valid_entry(
    inputs, true_gram, tmp_path, monkeypatch, no_compute
):
    """Eight threads of one process miss together and write the same entry at the same moment."""
    arch = get_architecture(ARCH)
    writers = 8
    together = threading.Barrier(writers)

    def compute(*args, **kwargs):
        together.wait(timeout=30)
        return true_gram.copy()

    monkeypatch.setattr(gram_module, "compute_gram", compute)
    results: list[tuple[np.ndarray, str] | BaseException] = []

    def write():
        try:
            results.append(cached_gram(arch, inputs[0], cache_dir=tmp_path))
        except BaseException as err:
            results.append(err)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(r, tuple) and r[1] == "miss" for r in results) and len(results) == writers, results
    assert [p.name for p in tmp_path.iterdir()] == [gram_cache_path(arch, inputs[0], None, tmp_path).name]
    no_compute()
    gram, outcome = cached_gram(arch, inputs[0], cache_dir=tmp_path)
    assert outcome == "hit"
    np.testing.assert_array_equal(gram, true_gram)


def test_the_study_record_says_what_the_cache_did(tmp_path):
    """``MachineSettings.fit`` reports the cache's own outcome, and a foreign Gram never reaches
    the machine (the review's clean accuracy of 0.90 instead of 1.00)."""
    from ntkrobust.bridge.data import load_dataset
    from ntkrobust.studies import MachineSettings

    data = load_dataset("digits", classes=[3, 8], n_train=20, n_test=10, seed=0)
    cached = MachineSettings(cache_dir=tmp_path)
    reference, _, record = MachineSettings(cache=False).fit("fc1", data, False)
    assert record["gram_cache"] == "off"
    outcomes = [cached.fit("fc1", data, False)[2]["gram_cache"] for _ in range(2)]
    path = gram_cache_path(get_architecture("fc1"), data.x_train, None, tmp_path)
    path.write_bytes(np.random.default_rng(2).bytes(512))
    outcomes.append(cached.fit("fc1", data, False)[2]["gram_cache"])
    np.savez(path, gram=compute_gram(get_architecture("fc1"), data.x_train**2))  # finite, right shape
    machine, _, record = cached.fit("fc1", data, False)
    outcomes.append(record["gram_cache"])
    assert outcomes == ["miss", "hit", CORRUPT_ENTRY, CORRUPT_ENTRY]
    np.testing.assert_array_equal(machine.eigenvalues, reference.eigenvalues)
