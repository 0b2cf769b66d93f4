"""Mutation audit of the Gram matrices (sixth round): the routes a Gram takes (one call, block
pairs i <= j, ``nt.batch`` with padding) against neural-tangents' own ``kernel_fn(x1, x2, "ntk")``
in one call on tiny float64 inputs, with every kernel call recorded so that a route that ignores
the memory budget shows even where its values are right; the cache key's fields one by one; and
forged entries (their own key, a recomputed sha256) that only one of the read checks refuses.
On several devices: a fresh interpreter with two host devices (``test_devices``' runner)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from ntkrobust.kernels import compute_gram, get_architecture
from ntkrobust.kernels import gram as gram_module
from ntkrobust.kernels.gram import (
    CORRUPT_ENTRY,
    cached_gram,
    entries_within_budget,
    gram_cache_key,
    gram_cache_path,
)

RTOL = 1e-12  # float64 routes part by rounding only


def _one_call(arch, x1, x2=None):
    """neural-tangents' ``kernel_fn`` on the whole inputs in one call: the reference route."""
    from ntkrobust.kernels._jax import jnp

    a = arch.to_layout(jnp.asarray(x1, jnp.float64))
    b = a if x2 is None else arch.to_layout(jnp.asarray(x2, jnp.float64))
    return np.asarray(arch.kernel_fn(a, b, "ntk"), dtype=np.float64)


def _budget(arch, shape, entries: int) -> int:
    """The memory budget (bytes) that holds exactly ``entries`` kernel entries per block."""
    return 8 * 16 * arch.entry_cost(shape) * entries


@pytest.fixture
def recorded(monkeypatch):
    """Every kernel evaluation ``compute_gram`` makes: ("whole", rows, columns) for a jitted call
    of the whole-matrix program, ("batch", batch_size, rows, columns) for a call through
    ``nt.batch`` (which evaluates batch_size x batch_size blocks)."""
    calls: list[tuple] = []
    whole = gram_module._whole_gram
    real_nt = gram_module.nt

    def spy_whole(arch):
        kernel = whole(arch)
        return lambda u, v: calls.append(("whole", u.shape[0], v.shape[0])) or kernel(u, v)

    def spy_batch(fn, *, batch_size, **options):
        batched = real_nt.batch(fn, batch_size=batch_size, **options)
        return lambda a, b, get: calls.append(("batch", batch_size, a.shape[0], b.shape[0])) or batched(a, b, get)

    monkeypatch.setattr(gram_module, "_whole_gram", spy_whole)
    monkeypatch.setattr(gram_module, "nt", types.SimpleNamespace(batch=spy_batch))
    return calls


# (name, rows of x1, rows of x2 (None: symmetric), entries the budget holds, the route expected)
ROUTES = [
    ("fc2", 7, 5, 35, "whole"),  # exactly the budget: one call, no blocks
    ("fc2", 7, 5, 34, "batch"),  # one entry over it: blocks of side 5, both sides padded
    ("fc2", 14, None, 4, "pairs"),  # side 2 from the budget: 7 blocks, more than the six at least
    ("fc2", 9, None, 81, "whole"),  # exactly the budget, and fewer than 256 points
    ("conv1", 10, 7, 16, "batch"),  # side 4: row blocks 4, 4, 2 (+2 padding), columns 7 (+1)
]


@pytest.mark.parametrize("name, n1, n2, entries, route", ROUTES)
def test_every_route_equals_one_kernel_call_and_no_call_exceeds_the_budget(
    name, n1, n2, entries, route, rng, recorded, jax_strict
):
    """Values: each route against one ``kernel_fn`` call on the whole inputs (float64, 1e-12),
    symmetric Grams exactly symmetric. Route: a matrix within the budget is one call of its full
    shape; otherwise every block holds at most the budget's entries (a route that ignores the
    budget computes the right values with more memory, which no value test sees)."""
    arch = get_architecture(name)
    x1 = rng.uniform(0, 1, size=(n1, 1, 4, 4))
    x2 = None if n2 is None else rng.uniform(0, 1, size=(n2, 1, 4, 4))
    budget = _budget(arch, x1.shape, entries)
    assert entries_within_budget(arch, x1.shape, budget) == entries
    gram = compute_gram(arch, x1, x2, memory_budget=budget)
    np.testing.assert_allclose(gram, _one_call(arch, x1, x2), rtol=RTOL)
    assert gram.shape == (n1, n1 if n2 is None else n2) and gram.dtype == np.float64
    if n2 is None:
        np.testing.assert_array_equal(gram, gram.T)
    kinds = {call[0] for call in recorded}
    assert kinds == {"whole" if route == "pairs" else route}, recorded
    if route == "whole":
        assert recorded == [("whole", n1, n1 if n2 is None else n2)]
    elif route == "batch":
        side = recorded[0][1]
        assert side * side <= entries and (side + 1) ** 2 > entries  # the largest square block
        assert all(call[2] % side == 0 and call[3] % side == 0 for call in recorded)  # padded to whole blocks
        assert len(recorded) == -(-n1 // side)  # one call per row block
    else:  # block pairs: six blocks at least, each within the budget, the padding under a row a block
        side = recorded[0][1]
        count = -(-n1 // side)
        assert side * side <= entries and count >= 6 and count * side - n1 < count
        assert recorded == [("whole", side, side)] * (count * (count + 1) // 2)  # i <= j only


def test_the_cache_key_covers_the_format_the_neural_tangents_version_and_the_dtype(rng, tmp_path, monkeypatch):
    """Each field of the key, changed alone, changes the key (and so the entry: a miss, never a
    hit of a matrix computed under another meaning). Same bytes and shape in another dtype
    (uint8 200 is int8 -56) are other images."""
    arch = get_architecture("fc1")
    x = rng.uniform(0, 1, size=(4, 1, 2, 3))
    key = gram_cache_key(arch, x, None)
    assert cached_gram(arch, x, cache_dir=tmp_path)[1] == "miss"
    assert cached_gram(arch, x, cache_dir=tmp_path)[1] == "hit"
    with monkeypatch.context() as patch:
        patch.setattr(gram_module, "CACHE_FORMAT", gram_module.CACHE_FORMAT + 1)
        assert gram_cache_key(arch, x, None) != key
        assert cached_gram(arch, x, cache_dir=tmp_path)[1] == "miss"
    with monkeypatch.context() as patch:
        patch.setattr(gram_module, "version", lambda package: "0.0.0-another")
        assert gram_cache_key(arch, x, None) != key
        assert cached_gram(arch, x, cache_dir=tmp_path / "other")[1] == "miss"
    assert gram_cache_key(arch, x, None) == key  # and back
    pixels = rng.integers(128, 256, size=(4, 1, 2, 3)).astype(np.uint8)
    signed = pixels.view(np.int8)
    assert signed.shape == pixels.shape and signed.tobytes() == pixels.tobytes()
    assert gram_cache_key(arch, pixels, None) != gram_cache_key(arch, signed, None)
    assert gram_cache_key(arch, x, None) != gram_cache_key(arch, x.view(np.int64), None)


@pytest.fixture
def entry(rng, tmp_path):
    """A 12-point training Gram cached for real, its key, path and the inputs: more points than
    the recomputed 8 x 8 sample, so only ``_read_entry``'s own checks see every entry."""
    arch = get_architecture("fc1")
    x = rng.uniform(0, 1, size=(12, 1, 2, 3))
    gram, outcome = cached_gram(arch, x, cache_dir=tmp_path)
    assert outcome == "miss"
    np.testing.assert_allclose(gram, _one_call(arch, x), rtol=RTOL)
    return arch, x, gram, gram_cache_key(arch, x, None), gram_cache_path(arch, x, None, tmp_path)


def _with(gram: np.ndarray, change) -> np.ndarray:
    gram = gram.copy()
    change(gram)
    return gram


def _negative_diagonal(g):
    g[3, 3] = -g[3, 3]


def _one_nan_pair(g):
    g[2, 9] = g[9, 2] = np.nan


def _one_inf_on_the_diagonal(g):
    g[5, 5] = np.inf


def _asymmetric_by_1e_6(g):
    g[1, 7] *= 1 + 1e-6


FORGERIES = {
    "negative diagonal": lambda g: _with(g, _negative_diagonal),
    "NaN pair": lambda g: _with(g, _one_nan_pair),
    "inf on the diagonal": lambda g: _with(g, _one_inf_on_the_diagonal),
    "asymmetric by 1e-6": lambda g: _with(g, _asymmetric_by_1e_6),
    "float32": lambda g: g.astype(np.float32),
    "long double": lambda g: g.astype(np.longdouble),
    "one point short": lambda g: g[:-1, :-1].copy(),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_entry_with_its_own_key_and_checksum_is_refused_by_the_read(forgery, entry, tmp_path):
    """``_write_entry`` forges an entry as a writer would (the right key, the checksum of what it
    holds): the read must refuse each defect by itself, wherever it sits (not only inside a sample)."""
    _, _, gram, key, path = entry
    assert gram_module._read_entry(path, key, gram.shape, square=True) is not None  # the genuine one reads
    gram_module._write_entry(path, key, FORGERIES[forgery](gram))
    with np.errstate(invalid="ignore"):
        assert gram_module._read_entry(path, key, gram.shape, square=True) is None


@pytest.mark.parametrize("forgery", ["long double", "one point too many", "another key"])
def test_forged_entries_the_sample_check_would_pass_are_recomputed(forgery, entry):
    """Entries whose sampled values are all right, so only the read's key, shape and dtype checks
    can refuse them: the true Gram in long double, the true Gram with a row and a column too many,
    the true Gram filed under another key (another format or version). Each is recomputed
    (float64, shape (12, 12), equal to the genuine one) and then replaced by a verified entry."""
    arch, x, gram, key, path = entry
    if forgery == "long double":
        gram_module._write_entry(path, key, gram.astype(np.longdouble))
    elif forgery == "one point too many":
        bigger = np.pad(gram, ((0, 1), (0, 1)), mode="edge")
        gram_module._write_entry(path, key, bigger)
    else:
        gram_module._write_entry(path, "0" * 64, gram)
    again, outcome = cached_gram(arch, x, cache_dir=path.parent)
    assert outcome == CORRUPT_ENTRY
    assert again.dtype == np.float64 and again.shape == (12, 12)
    np.testing.assert_array_equal(again, gram)
    assert cached_gram(arch, x, cache_dir=path.parent)[1] == "hit"


def test_a_dangling_link_in_the_entrys_place_is_a_corrupt_entry_replaced_by_a_file(rng, tmp_path):
    """A symlink to nowhere sits where the entry goes: an entry was there and failed (not a plain
    miss), and it is replaced by a real file that the next run hits."""
    arch = get_architecture("fc1")
    x = rng.uniform(0, 1, size=(5, 1, 2, 3))
    path = gram_cache_path(arch, x, None, tmp_path)
    path.symlink_to(tmp_path / "nowhere.npz")
    gram, outcome = cached_gram(arch, x, cache_dir=tmp_path)
    assert outcome == CORRUPT_ENTRY
    np.testing.assert_allclose(gram, _one_call(arch, x), rtol=RTOL)
    assert path.is_file() and not path.is_symlink()
    assert cached_gram(arch, x, cache_dir=tmp_path)[1] == "hit"


def test_a_cache_folder_that_does_not_exist_yet_is_created(rng, tmp_path):
    arch = get_architecture("fc1")
    x = rng.uniform(0, 1, size=(5, 1, 2, 3))
    folder = tmp_path / "not" / "yet"
    assert cached_gram(arch, x, cache_dir=folder)[1] == "miss"
    assert gram_cache_path(arch, x, None, folder).is_file()
    assert cached_gram(arch, x, cache_dir=folder)[1] == "hit"


def test_the_second_input_is_checked_as_the_first(rng):
    """NaN, no points or another channel count in x2 alone is refused with the same message as
    in x1 (a NaN Gram column, a (7, 0) matrix or a shape error deep in the kernel otherwise)."""
    arch = get_architecture("fc2")
    x1 = rng.uniform(0, 1, size=(7, 1, 4, 4))
    x2 = rng.uniform(0, 1, size=(5, 1, 4, 4))
    with pytest.raises(ValueError, match="inputs contain NaN or inf"):
        compute_gram(arch, x1, np.where(x2 > 0.5, np.nan, x2))
    with pytest.raises(ValueError, match="inputs contain NaN or inf"):
        compute_gram(arch, x1, np.where(x2 > 0.5, np.inf, x2))
    with pytest.raises(ValueError, match="inputs hold no points: 7 and 0 rows"):
        compute_gram(arch, x1, x2[:0])
    with pytest.raises(ValueError, match=r"inputs of shapes \(1, 4, 4\) and \(2, 4, 4\)"):
        compute_gram(arch, x1, np.concatenate([x2, x2], axis=1))


_TWO_DEVICES = r"""
import sys

import numpy as np

from ntkrobust.kernels import get_architecture, gram
from ntkrobust.kernels._jax import jax

whole_calls, batch_calls = [], []
whole, batch = gram._whole_gram, gram.nt.batch


class _Spy:
    @staticmethod
    def batch(fn, *, batch_size, **options):
        batched = batch(fn, batch_size=batch_size, **options)
        return lambda a, b, get: batch_calls.append((batch_size, a.shape[0], b.shape[0])) or batched(a, b, get)


gram._whole_gram = lambda arch: (lambda u, v: whole_calls.append(u.shape[0]) or whole(arch)(u, v))
gram.nt = _Spy
arch = get_architecture("fc2")
rng = np.random.default_rng(0)
x, y = rng.uniform(0, 1, size=(13, 1, 4, 4)), rng.uniform(0, 1, size=(6, 1, 4, 4))
found = {"devices": jax.local_device_count()}
cases = {"symmetric": (x, None, 16), "cross": (x[:9], y, 9), "small": (x[:5], y[:3], None)}
for name, (a, b, entries) in cases.items():
    budget = {} if entries is None else {"memory_budget": 8 * 16 * entries}
    before = len(whole_calls), len(batch_calls)
    found[name] = gram.compute_gram(arch, a, b, **budget)
    flat = a.reshape(len(a), -1), (a if b is None else b).reshape(len(a if b is None else b), -1)
    found[name + "_reference"] = np.asarray(arch.kernel_fn(*flat, "ntk"))
    found[name + "_calls"] = [len(whole_calls) - before[0], len(batch_calls) - before[1]]
found["batch_calls"] = np.array(batch_calls).reshape(-1, 3)
np.savez(sys.argv[1], **found)
"""


def test_on_two_devices_every_gram_goes_through_nt_batch_over_both(tmp_path):
    """Two host devices (fresh interpreters, ``test_devices``' runner): a symmetric Gram of 13
    points and a 9 x 6 one with small budgets, and a 5 x 3 one within the default budget, each
    against one ``kernel_fn`` call in the same interpreter (float64, 1e-12), the symmetric one
    exactly symmetric. On two devices no route of one device is taken (no whole-matrix or
    block-pair call) and every ``nt.batch`` call takes two blocks of rows, one per device, and
    whole blocks of columns, each block within the budget."""
    from test_devices import _one_and_two_devices

    one, two = _one_and_two_devices(tmp_path, _TWO_DEVICES)
    assert int(one["devices"]) == 1 and int(two["devices"]) == 2
    for run in (one, two):
        for name in ("symmetric", "cross", "small"):
            np.testing.assert_allclose(run[name], run[name + "_reference"], rtol=RTOL, err_msg=name)
        np.testing.assert_array_equal(run["symmetric"], run["symmetric"].T)
        assert run["small"].shape == (5, 3) and run["cross"].shape == (9, 6)
    assert list(one["small_calls"]) == [1, 0] and list(one["symmetric_calls"])[1] == 0  # one device's routes
    for name in ("symmetric", "cross", "small"):
        assert two[name + "_calls"][0] == 0 and two[name + "_calls"][1] >= 1, name
    side, rows, columns = two["batch_calls"].T
    assert np.all(rows == 2 * side) and np.all(columns % side == 0)
    assert list(side[: two["symmetric_calls"][1]]) == [4] * 2 and side[-1] == 5  # 16 entries: 4; 5 x 3: 5


def test_an_entry_one_ulp_off_its_stored_checksum_is_refused(entry):
    """The zip's CRC and the recomputed sample cannot see a mirrored pair of entries one ulp off
    (a valid zip, 1e-16 relative, possibly outside the sample): only the sha256 can, and the read
    must then refuse the entry (the cached Gram is recomputed and equals the genuine one)."""
    arch, x, gram, key, path = entry
    with np.load(path, allow_pickle=False) as f:
        stored = {name: f[name] for name in f.files}
    off = gram.copy()
    off[4, 10] = off[10, 4] = np.nextafter(gram[4, 10], np.inf)
    np.savez(path, gram=off, key=stored["key"], checksum=stored["checksum"])
    assert gram_module._read_entry(path, key, gram.shape, square=True) is None
    again, outcome = cached_gram(arch, x, cache_dir=path.parent)
    assert outcome == CORRUPT_ENTRY
    np.testing.assert_array_equal(again, gram)


_UNPICKLED: list[str] = []


def _unpickled() -> str:
    _UNPICKLED.append("code ran")
    return "a key"


class _Payload:
    """Unpickling it calls ``_unpickled``: what a hostile cache file could run instead."""

    def __reduce__(self):
        return _unpickled, ()


def test_an_entry_holding_a_pickle_is_refused_without_unpickling_it(entry):
    """Cache folders may be shared: an entry whose key is a pickled object must be refused by
    ``np.load(allow_pickle=False)`` before any of its code runs, then recomputed and replaced."""
    arch, x, gram, _, path = entry
    _UNPICKLED.clear()
    np.savez(path, gram=gram, key=np.array([_Payload()], dtype=object), checksum=np.array(gram_module._checksum(gram)))
    again, outcome = cached_gram(arch, x, cache_dir=path.parent)
    assert _UNPICKLED == [] and outcome == CORRUPT_ENTRY
    np.testing.assert_array_equal(again, gram)
    assert cached_gram(arch, x, cache_dir=path.parent)[1] == "hit"


def test_the_default_cache_folder_skips_blank_variables(tmp_path, monkeypatch):
    """``$NTKROBUST_CACHE``, else ``$XDG_CACHE_HOME/ntkrobust``, else ``~/.cache/ntkrobust``, a blank
    variable counting as unset (a folder named " " otherwise), and the message naming the one used."""
    from ntkrobust.kernels.gram import cache_dir_source, default_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NTKROBUST_CACHE", " ")
    monkeypatch.setenv("XDG_CACHE_HOME", "\t")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ntkrobust"
    assert cache_dir_source() == "the default cache folder"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ntkrobust" and cache_dir_source() == "$XDG_CACHE_HOME"
    monkeypatch.setenv("NTKROBUST_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" and cache_dir_source() == "$NTKROBUST_CACHE"


def test_a_foreign_gram_differing_in_two_of_nine_points_never_passes_the_sample(rng, tmp_path):
    """The Gram of the same 9 inputs with 2 of them replaced, under the entry's key and its own
    checksum: symmetric, finite, a positive diagonal, so only the recomputed 8 x 8 sample can
    refuse it, and any 8 of 9 points include one of the 2 (pigeonhole): refused at every one of
    24 reads, whichever rows are drawn (a sample of 4 points would pass a read 28% of the time)."""
    arch = get_architecture("fc1")
    x = rng.uniform(0, 1, size=(9, 1, 2, 3))
    gram, outcome = cached_gram(arch, x, cache_dir=tmp_path)
    assert outcome == "miss"
    other = x.copy()
    other[[2, 7]] = rng.uniform(0, 1, size=(2, *x.shape[1:]))
    foreign = compute_gram(arch, other)
    path, key = gram_cache_path(arch, x, None, tmp_path), gram_cache_key(arch, x, None)
    for _ in range(24):
        gram_module._write_entry(path, key, foreign)
        again, outcome = cached_gram(arch, x, cache_dir=tmp_path)
        assert outcome == CORRUPT_ENTRY
        np.testing.assert_array_equal(again, gram)
