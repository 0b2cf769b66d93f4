"""Gram matrices Θ(X1, X2) of an architecture's NTK: batched, float64, cached on disk.

A matrix whose intermediates fit the memory budget on one device is one jitted call of the
architecture's kernel on both input sets (no blocks, no padding). A symmetric Θ(X, X) of more
points is computed block pair by block pair, i <= j only, each block mirrored: about half the
products and half the recursion of the whole matrix (issue 20). Larger ones, and any on several
devices, go through ``nt.batch`` (which also spreads work over every local device), one row
block at a time so that a progress bar can follow a long computation. ``nt.batch`` needs both
sizes to be multiples of its batch size, so inputs are padded with copies of their last row
and the padding is cut away afterwards.

The cache key hashes the architecture (name and hyperparameters), the exact input bytes and
shapes, the dtype and the neural-tangents version, so a second run on the same data reuses
the matrix and any change of data or kernel misses. Files are ``.npz`` without pickles that
hold, beside the Gram, the full key it was computed for and a sha256 of its contents; a read
checks both (and the shape, dtype and finiteness), so a file that is truncated, emptied,
flipped, foreign or left over from another key is never used: it is recomputed and replaced.
Entries are written to a temporary file in the cache folder and renamed into place, so
concurrent runs never see (or leave) half an entry.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ntkrobust._progress import progress_bar
from ntkrobust.kernels._host import torch_values
from ntkrobust.kernels._jax import float64, jax, jnp, nt
from ntkrobust.kernels.architectures import Architecture, check_architecture, is_registered, per_architecture
from ntkrobust.kernels.relu import dot_kernel_rows, pairwise_dots

log = logging.getLogger("ntkrobust")

#: Bumped whenever the meaning of a cached file changes (2: entries carry their key and checksum).
CACHE_FORMAT = 2

#: What a cached Gram lookup did: "off" (no cache), "hit", "miss" (no entry yet), or
#: "recomputed: corrupt entry" (an entry was there but failed verification, and was replaced).
CacheOutcome = Literal["off", "hit", "miss", "recomputed: corrupt entry"]
CORRUPT_ENTRY: CacheOutcome = "recomputed: corrupt entry"

#: Bytes allowed for the intermediates of one kernel block (about 16 live arrays per entry).
DEFAULT_MEMORY_BUDGET = 512 * 2**20
_LIVE_ARRAYS = 16


def entries_within_budget(arch: Architecture, nchw_shape: tuple[int, ...], memory_budget: int) -> int:
    """How many kernel entries (at least 1) one block may hold within ``memory_budget`` bytes."""
    return max(memory_budget // (8 * _LIVE_ARRAYS * arch.entry_cost(nchw_shape)), 1)


def block_size(arch: Architecture, nchw_shape: tuple[int, ...], *, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Side of a square kernel block whose intermediates fit in ``memory_budget`` bytes."""
    return min(math.isqrt(entries_within_budget(arch, nchw_shape, memory_budget)), 512)


def default_cache_dir() -> Path:
    """``$NTKROBUST_CACHE``, else ``$XDG_CACHE_HOME/ntkrobust``, else ``~/.cache/ntkrobust``
    (a blank variable counts as unset: ``" "`` made a folder of that name)."""
    if os.environ.get("NTKROBUST_CACHE", "").strip():
        return Path(os.environ["NTKROBUST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "ntkrobust"


def cache_dir_source() -> str:
    """What chose ``default_cache_dir``, for messages about it."""
    if os.environ.get("NTKROBUST_CACHE", "").strip():
        return "$NTKROBUST_CACHE"
    return "$XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME", "").strip() else "the default cache folder"


def gram_cache_key(arch: Architecture, x1: np.ndarray, x2: np.ndarray | None) -> str:
    """The full cache key (sha256 hex) of the Gram matrix of these inputs. Only a registered
    architecture has one: a hand-built one's fingerprint does not say which kernel it computes."""
    if not is_registered(arch):
        raise ValueError(f"a hand-built architecture ({arch.fingerprint()}) has no Gram cache key")
    digest = hashlib.sha256()
    digest.update(f"{CACHE_FORMAT}|{arch.fingerprint()}|nt={version('neural-tangents')}|float64".encode())
    for x in (x1, x2):
        if x is None:
            digest.update(b"|symmetric")
            continue
        x = np.ascontiguousarray(torch_values(x))
        digest.update(f"|{x.dtype.str}{x.shape}|".encode())
        digest.update(x.tobytes())
    return digest.hexdigest()


def gram_cache_path(arch: Architecture, x1: np.ndarray, x2: np.ndarray | None, cache_dir: Path) -> Path:
    """Where the Gram matrix of these inputs is (or would be) cached."""
    return _entry_path(arch, gram_cache_key(arch, x1, x2), cache_dir)


def _entry_path(arch: Architecture, key: str, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"gram-{arch.name}-{key[:32]}.npz"


def _pad_rows(x: jnp.ndarray, multiple: int) -> jnp.ndarray:
    short = (-x.shape[0]) % multiple
    if short == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], short, axis=0)], axis=0)


def _build_whole_gram(arch: Architecture) -> Any:
    program = _dots_gram(arch) if arch.dot_kernel_fn is not None else lambda u, v: arch.kernel_fn(u, v, "ntk")
    return jax.jit(program)


#: ``arch``'s kernel on two whole input sets as one jitted program, one per architecture.
_whole_gram = per_architecture(_build_whole_gram)


def _dots_gram(arch: Architecture) -> Any:
    """Θ(U, V) = F(U Vᵀ, ‖u‖², ‖v‖²) entry by entry (``Architecture.dot_kernel_fn``, dense nets):
    the GEMM, then F on plain (N1, N2) arrays (``relu.dot_kernel_rows``): ~1.7x faster for fc2
    on 1500 MNIST images than ``kernel_fn``, equal to rounding (3e-16 relative)."""
    dot_kernel = arch.dot_kernel_fn
    assert dot_kernel is not None

    def gram(u: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
        dots = jax.lax.optimization_barrier(pairwise_dots(u, v))  # the GEMM stays a GEMM
        return dot_kernel_rows(dot_kernel, dots, jnp.sum(u * u, axis=1), jnp.sum(v * v, axis=1), u.shape[1])

    return gram


#: Below this many points a symmetric Gram within the budget is one call; above it, it is cut
#: into at least this many row blocks so that each block pair is computed once.
_SYMMETRIC_WHOLE_BELOW = 256
_SYMMETRIC_MIN_BLOCKS = 6
#: block results computed ahead of the one being copied to the host
_IN_FLIGHT = 2
#: largest asymmetry of a cached training Gram, and largest difference of its sampled entries
#: from their recomputation, relative to the largest entry: the routes part by rounding (float64)
_ROUNDING = 1e-9
#: points per side of the cached Gram's block that a hit recomputes (``_agrees_with_a_sample``)
_SAMPLE = 8


@float64
def compute_gram(
    arch: Architecture,
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
) -> np.ndarray:
    """Θ(x1, x2) (Θ(x1, x1) if ``x2`` is None) in float64 from NCHW inputs: shape (N1, N2).
    Inputs of two shapes, and NaN or inf in host inputs, are refused (ValueError)."""
    check_architecture(arch)
    symmetric = x2 is None
    x1 = torch_values(x1)
    x2_ = x1 if x2 is None else torch_values(x2)
    for x in (x1,) if symmetric else (x1, x2_):
        if not hasattr(x, "shape"):
            raise TypeError(f"inputs must be arrays (numpy, JAX or torch), got {type(x).__name__}")
        if isinstance(x, np.ndarray) and not np.all(np.isfinite(x)):
            raise ValueError("inputs contain NaN or inf")
    if tuple(x2_.shape[1:]) != tuple(x1.shape[1:]):
        raise ValueError(f"inputs of shapes {tuple(x1.shape[1:])} and {tuple(x2_.shape[1:])}: one kernel takes one")
    if not (x1.shape[0] and x2_.shape[0]):
        raise ValueError(f"inputs hold no points: {x1.shape[0]} and {x2_.shape[0]} rows")
    arch.check_input(tuple(x1.shape))
    a = arch.to_layout(jnp.asarray(x1, dtype=jnp.float64))
    b = arch.to_layout(jnp.asarray(x2_, dtype=jnp.float64))
    n1, n2 = a.shape[0], b.shape[0]
    devices = jax.local_device_count()
    within = entries_within_budget(arch, tuple(x1.shape), memory_budget)
    if devices == 1 and n1 * n2 <= within and (not symmetric or n1 < _SYMMETRIC_WHOLE_BELOW):
        # the whole matrix within the budget: one jitted program, no padding, no blocks (issue 20)
        out = np.asarray(_whole_gram(arch)(a, b), dtype=np.float64)
        return 0.5 * (out + out.T) if symmetric else out
    if devices == 1 and symmetric:
        # as many blocks as the budget needs and at least _SYMMETRIC_MIN_BLOCKS, evened out so
        # that the last block's padding is less than one row per block
        count = max(-(-n1 // math.isqrt(within)), _SYMMETRIC_MIN_BLOCKS)
        return _symmetric_gram(arch, a, -(-n1 // count), progress)
    side = min(block_size(arch, tuple(x1.shape), memory_budget=memory_budget), max(n1, n2))
    batched = nt.batch(arch.kernel_fn, batch_size=side, device_count=-1, store_on_device=True)
    rows_per_call = side * devices
    a = _pad_rows(a, rows_per_call)
    # the columns too in whole row blocks: nt.batch cuts x2 by gcd(x1 rows, x2 rows) / devices, so
    # on 2 devices an odd block side times an odd block count failed (5 x 3 points: "n1 = 10, batch 4")
    b = _pad_rows(b, rows_per_call)
    out = np.empty((n1, n2), dtype=np.float64)
    starts = range(0, n1, rows_per_call)
    with progress_bar(len(starts), f"Gram {arch.name} {n1}x{n2}", "block", show=progress) as bar:
        for start in starts:
            block = np.asarray(batched(a[start : start + rows_per_call], b, "ntk"))
            stop = min(start + rows_per_call, n1)
            out[start:stop] = block[: stop - start, :n2]
            bar.update(1)
    if symmetric:
        out = 0.5 * (out + out.T)  # exact symmetry for the eigendecomposition
    return out


def _symmetric_gram(arch: Architecture, a: jnp.ndarray, side: int, progress: bool) -> np.ndarray:
    """Θ(X, X) from the row-block pairs i <= j alone, each mirrored into (j, i): Θ is symmetric,
    so this is (1 + 1/blocks)/2 of the whole matrix's products and elementwise recursion. Blocks
    have ``side`` rows (the last one padded with copies of the last row: one compiled shape)."""
    n = a.shape[0]
    padded = _pad_rows(a, side)
    count = padded.shape[0] // side
    blocks = [padded[i * side : (i + 1) * side] for i in range(count)]
    rows = [slice(i * side, min((i + 1) * side, n)) for i in range(count)]
    pairs = [(i, j) for i in range(count) for j in range(i, count)]
    kernel = _whole_gram(arch)
    out = np.empty((n, n), dtype=np.float64)

    def store(i: int, j: int, result: jnp.ndarray) -> None:
        block = np.asarray(result, dtype=np.float64)[: rows[i].stop - rows[i].start, : rows[j].stop - rows[j].start]
        if i == j:
            out[rows[i], rows[i]] = 0.5 * (block + block.T)  # exact symmetry for the eigendecomposition
        else:
            out[rows[i], rows[j]] = block
            out[rows[j], rows[i]] = block.T

    # a few blocks in flight: JAX computes the next block while this one is copied to the host
    pending: list[tuple[int, int, jnp.ndarray]] = []
    with progress_bar(len(pairs), f"Gram {arch.name} {n}x{n}", "block", show=progress) as bar:
        for i, j in pairs:
            pending.append((i, j, kernel(blocks[i], blocks[j])))
            if len(pending) > _IN_FLIGHT:
                store(*pending.pop(0))
                bar.update(1)
        for item in pending:
            store(*item)
            bar.update(1)
    return out


def gram_matrix(arch: Architecture, x1: np.ndarray, x2: np.ndarray | None = None, **options: Any) -> np.ndarray:
    """``compute_gram`` through the on-disk cache (keywords: ``cache_dir``, where the matrices are
    kept by a key of the architecture and the inputs, None for no cache; ``memory_budget``;
    ``progress``), the Gram matrix alone (``kernels.gram.cached_gram`` also says whether it hit)."""
    return cached_gram(arch, x1, x2, **options)[0]


def cached_gram(
    arch: Architecture,
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    cache_dir: Path | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
) -> tuple[np.ndarray, CacheOutcome]:
    """``gram_matrix`` and what the cache did (``CacheOutcome``): only a verified entry is a hit."""
    check_architecture(arch)
    if cache_dir is not None and not is_registered(arch):
        log.warning("%s is hand-built: its Gram is not cached on disk", arch.fingerprint())
        cache_dir = None
    if cache_dir is None:
        return compute_gram(arch, x1, x2, memory_budget=memory_budget, progress=progress), "off"
    key = gram_cache_key(arch, x1, x2)
    path = _entry_path(arch, key, cache_dir)
    shape = (x1.shape[0], (x1 if x2 is None else x2).shape[0])
    outcome: CacheOutcome = "miss"
    if path.exists() or path.is_symlink():
        gram = _read_entry(path, key, shape, square=x2 is None)
        if gram is not None and _agrees_with_a_sample(arch, gram, x1, x2):
            log.info("Gram cache hit: %s", path)
            return gram, "hit"
        log.warning("Gram cache entry %s is corrupt or not this Gram's: recomputing and replacing it", path)
        outcome = CORRUPT_ENTRY
    gram = compute_gram(arch, x1, x2, memory_budget=memory_budget, progress=progress)
    try:
        _write_entry(path, key, gram)
    except OSError as err:  # a full disk: the Gram is computed, the cache only saves a later run time
        log.warning("the Gram could not be cached in %s (%s): a later run computes it again", path.parent, err.strerror)
    return gram, outcome


def _checksum(gram: np.ndarray) -> str:
    """sha256 of a Gram's dtype, shape and bytes."""
    gram = np.ascontiguousarray(gram)
    return hashlib.sha256(f"{gram.dtype.str}{gram.shape}|".encode() + gram.tobytes()).hexdigest()


def _read_entry(path: Path, key: str, shape: tuple[int, int], square: bool) -> np.ndarray | None:
    """The entry's Gram if it verifies (key, checksum, shape, float64, finite; a training Gram
    symmetric, its diagonal >= 0), else None. The checksum catches damage, not forgery: anyone
    can recompute it. The symmetry and the diagonal refuse a forged entry that breaks what every
    kernel's Gram is, and ``cached_gram`` then recomputes a sample of its entries. A FIFO, a
    device or a folder in its place is none (np.load would block on a FIFO for good)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            stored_key, stored_sum, gram = str(f["key"][()]), str(f["checksum"][()]), f["gram"]
    except Exception:  # a damaged file can fail anywhere in zipfile, zlib or numpy's reader
        return None
    if stored_key != key or gram.shape != shape or gram.dtype != np.float64 or stored_sum != _checksum(gram):
        return None
    if not np.all(np.isfinite(gram)):
        return None
    if square and (np.any(np.diagonal(gram) < 0) or np.abs(gram - gram.T).max(initial=0.0) > _ROUNDING * _scale(gram)):
        return None
    return gram


@float64
def _agrees_with_a_sample(arch: Architecture, gram: np.ndarray, x1: Any, x2: Any) -> bool:
    """Whether ``_SAMPLE`` x ``_SAMPLE`` entries of a cached Gram, at rows and columns drawn
    afresh each time (no seed: a forger cannot know which), equal the same entries recomputed,
    within ``_ROUNDING``. One small jitted program, about a second to compile: a forged entry
    that keeps its symmetry (zeros, a multiple of the true Gram, another kernel's) is refused."""
    rng = np.random.default_rng()
    hosts = [np.asarray(x.detach().cpu() if hasattr(x, "detach") else x) for x in (x1, x1 if x2 is None else x2)]
    picks = [np.sort(rng.choice(h.shape[0], min(_SAMPLE, h.shape[0]), replace=False)) for h in hosts]
    if x2 is None:
        picks[1] = picks[0]
    a, b = (arch.to_layout(jnp.asarray(h[p], dtype=jnp.float64)) for h, p in zip(hosts, picks, strict=True))
    sample = np.asarray(_whole_gram(arch)(a, b), dtype=np.float64)
    stored = gram[np.ix_(picks[0], picks[1])]
    return bool(np.abs(sample - stored).max() <= _ROUNDING * max(_scale(sample), np.finfo(np.float64).tiny))


def _scale(gram: np.ndarray) -> float:
    return float(np.abs(gram).max(initial=0.0))


def _write_entry(path: Path, key: str, gram: np.ndarray) -> None:
    """The entry, filled in a temporary file beside ``path`` and renamed over whatever is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)  # a folder squatting on the entry's name
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")  # one per writer, even per thread
    try:
        with open(tmp, "xb") as f:
            np.savez(f, gram=gram, key=np.array(key), checksum=np.array(_checksum(gram)))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
