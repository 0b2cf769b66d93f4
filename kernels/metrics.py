"""Gram-matrix metrics of NTKs, shared by analytic kernels and empirical NTKs of torch nets.

Pure numpy (no JAX, no torch), everything in float64.

Shapes (neural-tangents conventions): a kernel is a square Gram matrix (N, N), a full kernel
(N, N, C, C) or its class blocks alone (N, N, C), whose trace kernel is the mean of its C
diagonal class blocks,
    K̄ = C⁻¹ Σ_c K_{c,c},   K_{c,c} = full[:, :, c, c]   (Loo et al. sec. 3),
which every single-kernel statistic uses, as Loo et al. do "unless otherwise stated". A kernel
sequence (T kernels of one shape) is a training trajectory; labels are (N,) int class ids;
Y (N, C) their one-hot matrix and y_c = Y[:, c]; λ₁ ≥ … ≥ λ_N the eigenvalues of K̄.

Papers (shared/papers): TK = Tsilivis & Kempe 2022, LOO = Loo et al. 2022, RAT = Rethinking
adversarial training with NTK.
- kernel distance d(K₁, K₂) = 1 − ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F): TK sec. 5, LOO's S, RAT's KD;
  alignment A = 1 − d (LOO sec. 3, RAT sec. 3.1; Cortes et al. 2012, uncentred);
- velocity dS/dt and distance to the final kernel: LOO sec. 3, fig. 1a-b;
- polar coordinates r_t = ‖Θ_t − Θ₀‖_F / ‖Θ_f − Θ₀‖_F, θ_t = arccos(1 − d(Θ_t, Θ₀)): TK eq. 12,
  and the same on the top-k eigenspace (TK supp. fig. 8, top 20);
- concentration Σ_{i≤p} λᵢ² / Σᵢ λᵢ²: TK sec. 5 "Concentration on subspaces";
- effective rank exp(−Σ pᵢ log pᵢ), pᵢ = λᵢ / Σⱼ λⱼ: LOO sec. 3, RAT's KER (Roy & Vetterli 2007);
- kernel specialization KSM(i, j) = A(K_{i,i}, y_j y_jᵀ) / (C⁻¹ Σ_l A(K_{l,l}, y_j y_jᵀ)) and its
  mean tr(KSM) / C: LOO sec. 3, RAT's M_ks and KS.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ntkrobust.kernels._host import host_array


class UndefinedMetricError(ValueError):
    """The metric is undefined for this input (e.g. the distance to a zero kernel)."""


def _finite(array: ArrayLike, name: str = "kernel") -> np.ndarray:
    x = host_array(array, np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _full(kernel: ArrayLike) -> np.ndarray:
    k = _finite(kernel)
    if k.ndim == 4 and k.shape[0] == k.shape[1] and k.shape[2] == k.shape[3]:
        return k
    raise ValueError(f"expected a full kernel (N, N, C, C), got shape {k.shape}")


def _sequence(kernels: Iterable[ArrayLike], at_least: int) -> list[np.ndarray]:
    ks = [_finite(k) for k in kernels]
    if len(ks) < at_least:
        raise ValueError(f"expected at least {at_least} kernel(s), got {len(ks)}")
    if any(k.shape != ks[0].shape for k in ks):
        raise ValueError(f"kernels differ in shape: {sorted({k.shape for k in ks})}")
    return ks


def _unit(x: np.ndarray) -> np.ndarray:
    flat = x.ravel()
    scale = np.max(np.abs(flat), initial=0.0)
    if scale == 0:
        raise UndefinedMetricError("kernel distance is undefined for a zero kernel")
    flat = flat / scale  # rescale first so that the norm cannot overflow
    return flat / np.linalg.norm(flat)


def _unit_distance(u: np.ndarray, v: np.ndarray) -> float:
    # 1 − u·v = ½‖u − v‖² for unit vectors; this form keeps the relative precision of the tiny
    # distances between neighbouring epochs (and is exactly 0 for identical kernels).
    return float(np.clip(0.5 * np.sum((u - v) ** 2), 0.0, 2.0))


def class_blocks(kernel: ArrayLike) -> np.ndarray:
    """The C diagonal class blocks (C, N, N) of a full (N, N, C, C) kernel, or of the class-blocks
    kernel (N, N, C) that holds only them (``bridge.entk``'s ``class-blocks`` kind)."""
    k = _finite(kernel)
    if k.ndim == 3 and k.shape[0] == k.shape[1]:
        return np.moveaxis(k, 2, 0)
    return np.einsum("nmcc->cnm", _full(k))


def trace_kernel(kernel: ArrayLike) -> np.ndarray:
    """(N, N) unchanged, or the mean of the diagonal class blocks of an (N, N, C, C) or a
    class-blocks (N, N, C) kernel."""
    k = _finite(kernel)
    if k.ndim == 2 and k.shape[0] == k.shape[1]:
        return k
    if k.ndim in (3, 4):
        return class_blocks(k).mean(axis=0)
    if k.ndim == 2:
        raise ValueError(f"expected a square kernel (N, N), got shape {k.shape}")
    raise ValueError(f"expected a kernel of shape (N, N), (N, N, C) or (N, N, C, C), got shape {k.shape}")


def class_kernel(full: ArrayLike, c: int) -> np.ndarray:
    """The class block K_{c,c} = full[:, :, c, c] of a full kernel."""
    k = _full(full)
    c = operator.index(c)
    if not 0 <= c < k.shape[2]:
        raise ValueError(f"class {c} is out of range for a kernel with {k.shape[2]} classes")
    return k[:, :, c, c]


def kernel_distance(k1: ArrayLike, k2: ArrayLike) -> float:
    """d = 1 − ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F) ∈ [0, 2] (TK sec. 5, LOO's S, RAT's KD), any equal shapes."""
    a, b = _finite(k1), _finite(k2)
    if a.shape != b.shape:
        raise ValueError(f"kernels differ in shape: {a.shape} and {b.shape}")
    return _unit_distance(_unit(a), _unit(b))


def kernel_alignment(k1: ArrayLike, k2: ArrayLike) -> float:
    """A = 1 − d, the cosine similarity of two kernels (LOO sec. 3, RAT sec. 3.1)."""
    return 1.0 - kernel_distance(k1, k2)


def distance_matrix(kernels: Sequence[ArrayLike]) -> np.ndarray:
    """(T, T) pairwise kernel distances of a trajectory (TK fig. 3, left): symmetric, zero diagonal."""
    units = [_unit(k) for k in _sequence(kernels, 1)]
    d = np.zeros((len(units), len(units)))
    for i in range(len(units)):
        for j in range(i + 1, len(units)):
            d[i, j] = d[j, i] = _unit_distance(units[i], units[j])
    return d


def kernel_velocity(kernels: Sequence[ArrayLike], times: ArrayLike | None = None) -> np.ndarray:
    """(T − 1,) finite-difference dS/dt = d(K_t, K_{t+1}) / (time_{t+1} − time_t) (LOO fig. 1a)."""
    units = [_unit(k) for k in _sequence(kernels, 2)]
    t = np.arange(len(units), dtype=np.float64) if times is None else _finite(times, "times")
    if t.shape != (len(units),):
        raise ValueError(f"times must have shape ({len(units)},), got {t.shape}")
    if not np.all(np.diff(t) > 0):
        raise ValueError("times must be strictly increasing")
    steps = np.array([_unit_distance(u, v) for u, v in itertools.pairwise(units)])
    return steps / np.diff(t)


def distance_to_final(kernels: Sequence[ArrayLike]) -> np.ndarray:
    """(T,) d(K_t, K_{T−1}), the distance of every kernel to the last one (LOO fig. 1b)."""
    units = [_unit(k) for k in _sequence(kernels, 1)]
    return np.array([_unit_distance(u, units[-1]) for u in units])


def _eigh(kernel: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Descending eigenpairs of the symmetrised trace kernel."""
    k = trace_kernel(kernel)
    values, vectors = np.linalg.eigh((k + k.T) / 2)
    return values[::-1], vectors[:, ::-1]


def top_eigenspace(kernel: ArrayLike, k: int) -> np.ndarray:
    """(N, N) rank-k truncation Σ_{i≤k} λᵢ vᵢ vᵢᵀ of the trace kernel (TK supp. fig. 8)."""
    values, vectors = _eigh(kernel)
    k = operator.index(k)
    if not 1 <= k <= values.shape[0]:
        raise ValueError(f"top_k must lie in [1, {values.shape[0]}], got {k}")
    return (vectors[:, :k] * values[:k]) @ vectors[:, :k].T


def polar_coordinates(kernels: Sequence[ArrayLike], *, top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(r, θ), each (T,), of TK eq. 12 relative to the first (Θ₀) and last (Θ_f) kernel.

    With ``top_k`` every kernel is first replaced by ``top_eigenspace(kernel, top_k)``. θ is
    computed as the angle 2·atan2(‖u − v‖, ‖u + v‖) between the unit kernels u, v, which equals
    arccos(1 − d) but stays accurate near θ = 0, where arccos loses half the digits.
    """
    ks = _sequence(kernels, 1)
    if top_k is not None:
        ks = [top_eigenspace(k, top_k) for k in ks]
    span = np.linalg.norm(ks[-1] - ks[0])
    if span == 0:
        raise UndefinedMetricError("polar radius is undefined: the final kernel equals the initial one")
    r = np.array([np.linalg.norm(k - ks[0]) / span for k in ks])
    u0 = _unit(ks[0])
    units = [_unit(k) for k in ks]
    theta = np.array([2 * np.arctan2(np.linalg.norm(u - u0), np.linalg.norm(u + u0)) for u in units])
    return r, theta


def frobenius_norm(kernel: ArrayLike) -> float:
    """‖K̄‖_F of the trace kernel (TK fig. 6a); for a full kernel that is not the norm of the 4D array."""
    return float(np.linalg.norm(trace_kernel(kernel)))


def eigenvalues(kernel: ArrayLike) -> np.ndarray:
    """(N,) eigenvalues λ₁ ≥ … ≥ λ_N of the symmetrised trace kernel."""
    return _eigh(kernel)[0]


def eigenvalue_concentration(kernel: ArrayLike, p: int) -> float:
    """Σ_{i≤p} λᵢ² / Σᵢ λᵢ², the weight of the top-p eigenspace (TK sec. 5, fig. 6b)."""
    return _concentration(eigenvalues(kernel), p)


def _concentration(values: np.ndarray, p: int) -> float:
    p = operator.index(p)
    if not 1 <= p <= values.shape[0]:
        raise ValueError(f"p must lie in [1, {values.shape[0]}], got {p}")
    squares = values**2
    if squares.sum() == 0:
        raise UndefinedMetricError("eigenvalue concentration is undefined for a zero kernel")
    return float(squares[:p].sum() / squares.sum())


def effective_rank(kernel: ArrayLike) -> float:
    """exp(−Σ pᵢ log pᵢ), pᵢ = λᵢ / Σⱼ λⱼ (LOO sec. 3, RAT's KER) of the PSD trace kernel.

    Negative eigenvalues are round-off of a PSD kernel and count as 0, as does 0·log 0.
    """
    return _effective_rank(eigenvalues(kernel))


def _effective_rank(values: np.ndarray) -> float:
    values = np.clip(values, 0.0, None)
    if values.sum() == 0:
        raise UndefinedMetricError("effective rank is undefined for a kernel without positive eigenvalues")
    p = values[values > 0] / values.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def one_hot(labels: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """(N, C) float64 indicator matrix Y of int class ids; C defaults to max(labels) + 1."""
    y = host_array(labels)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1D array of int class ids, got {y.dtype} {y.shape}")
    if y.min() < 0:
        raise ValueError(f"labels must be non-negative, got {y.min()}")
    c = int(y.max()) + 1 if num_classes is None else operator.index(num_classes)
    if y.max() >= c:
        raise ValueError(f"label {y.max()} is out of range for {c} classes")
    return (y[:, None] == np.arange(c)).astype(np.float64)


def _one_hot_for(kernel: np.ndarray, labels: ArrayLike, num_classes: int | None) -> np.ndarray:
    y = one_hot(labels, num_classes)
    if y.shape[0] != kernel.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for a kernel on {kernel.shape[0]} points")
    return y


def kernel_target_alignment(kernel: ArrayLike, labels: ArrayLike, *, num_classes: int | None = None) -> float:
    """A(K̄, YYᵀ), the uncentred kernel-target alignment (Cortes et al. 2012)."""
    k = trace_kernel(kernel)
    y = _one_hot_for(k, labels, num_classes)
    return kernel_alignment(k, y @ y.T)


def _centre(m: np.ndarray) -> np.ndarray:
    """H M H with H = I − 11ᵀ/N, without forming H."""
    return m - m.mean(axis=0) - m.mean(axis=1)[:, None] + m.mean()


def centered_alignment(kernel: ArrayLike, labels: ArrayLike, *, num_classes: int | None = None) -> float:
    """A(H K̄ H, H YYᵀ H), H = I − 11ᵀ/N, the centred alignment of Cortes et al. 2012."""
    k = trace_kernel(kernel)
    y = _one_hot_for(k, labels, num_classes)
    target = y @ y.T
    kc, tc = _centre(k), _centre(target)
    # Centring a constant matrix leaves round-off (mean of N equal floats), not an exact zero.
    for name, centred, raw in (("kernel", kc, k), ("label matrix", tc, target)):
        if np.linalg.norm(centred) <= 1e-12 * np.linalg.norm(raw):
            raise UndefinedMetricError(f"centred alignment is undefined: the centred {name} is zero")
    return kernel_alignment(kc, tc)


def _specialization(full: ArrayLike, labels: ArrayLike, num_classes: int | None) -> tuple[np.ndarray, str | None]:
    """The KSM with NaN in the columns it cannot define, and why they are undefined (None: none is)."""
    blocks = class_blocks(full)
    k = np.moveaxis(blocks, 0, 2)
    c = blocks.shape[0]
    if num_classes is not None and operator.index(num_classes) != c:
        raise ValueError(f"num_classes={num_classes} but the kernel has {c} classes")
    y = _one_hot_for(k, labels, c)
    counts = y.sum(axis=0)
    norms = np.linalg.norm(blocks, axis=(1, 2))
    if np.any(norms == 0):
        raise UndefinedMetricError(f"specialization is undefined: class kernel {np.argmin(norms)} is zero")
    # ⟨K, y yᵀ⟩_F = yᵀ K y and ‖y yᵀ‖_F = ‖y‖² = class count, so A needs no N×N label matrices;
    # optimize: two matrix products instead of one loop over C·C·N·N terms (3 ms, not 11, at C=10, N=300)
    products = np.einsum("nj,inm,mj->ij", y, blocks, y, optimize=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a class without points: 0/0, NaN by design
        alignment = products / (norms[:, None] * counts[None, :])
        mean = alignment.mean(axis=0)
        ksm = alignment / mean[None, :]
    absent, unaligned = counts == 0, ~(counts == 0) & (mean == 0)
    ksm[:, absent | unaligned] = np.nan
    if np.any(absent):
        return ksm, f"{_classes(absent)} no labelled point"
    if np.any(unaligned):
        return ksm, f"{_classes(unaligned)} zero mean alignment"
    return ksm, None


def _classes(which: np.ndarray) -> str:
    """The subject of a sentence on the True entries of ``which``: "class 3 has", "classes 0 and 3 have"."""
    found = [str(c) for c in np.flatnonzero(which)]
    if len(found) == 1:
        return f"class {found[0]} has"
    return f"classes {', '.join(found[:-1])} and {found[-1]} have"


def specialization_matrix(full: ArrayLike, labels: ArrayLike, *, num_classes: int | None = None) -> np.ndarray:
    """(C, C) KSM[i, j] = A(K_{i,i}, y_j y_jᵀ) / (C⁻¹ Σ_l A(K_{l,l}, y_j y_jᵀ)) (LOO sec. 3, RAT's M_ks),
    from a full (N, N, C, C) kernel or its class blocks (N, N, C): it needs nothing else.
    ``UndefinedMetricError`` unless every column is defined (``specialization_columns`` keeps the others)."""
    ksm, undefined = _specialization(full, labels, num_classes)
    if undefined is not None:
        raise UndefinedMetricError(f"specialization is undefined: {undefined}")
    return ksm


def specialization_columns(full: ArrayLike, labels: ArrayLike, *, num_classes: int | None = None) -> np.ndarray:
    """``specialization_matrix`` with NaN in the columns it cannot define: a class j with no
    labelled point (the net's own labels on its PGD examples often miss classes) or with zero mean
    alignment; the other columns are the same numbers. ``UndefinedMetricError`` when no column is
    defined or a class kernel is zero."""
    ksm, undefined = _specialization(full, labels, num_classes)
    if np.all(np.isnan(ksm)):
        raise UndefinedMetricError(f"specialization is undefined: {undefined}")
    return ksm


def mean_specialization(ksm: ArrayLike) -> float:
    """KS = tr(KSM) / C, the mean kernel specialization (LOO sec. 3, RAT sec. 3.1)."""
    m = _finite(ksm, "specialization matrix")
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"expected a square specialization matrix (C, C), got shape {m.shape}")
    return float(np.trace(m) / m.shape[0])


def kernel_metrics(
    kernel: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    top: int | Sequence[int] = (10, 20),
    num_classes: int | None = None,
) -> dict[str, Any]:
    """The single-kernel metrics that apply, as JSON-ready plain floats and lists.

    Keys: ``frobenius_norm``, ``trace`` (of the trace kernel), ``effective_rank``,
    ``concentration_top{p}`` for each p in ``top`` (one cut-off or several) with p ≤ N; with labels also
    ``kernel_target_alignment`` and ``centered_alignment``, and for a full (N, N, C, C) or a
    class-blocks (N, N, C) kernel ``specialization_matrix`` (nested list C × C) and
    ``mean_specialization``, or, when some columns are undefined (a class without labelled
    points), ``specialization_columns``: the defined columns, null in the others. A metric that is
    undefined for this input (``UndefinedMetricError``, e.g. centred alignment with a single
    class, specialization with a class absent from the labels) is left out, and its reason is
    kept under ``undefined`` (metric name → message); invalid input raises.
    """
    k = trace_kernel(kernel)
    cutoffs = [operator.index(p) for p in ((top,) if isinstance(top, int) else top)]
    if any(p < 1 for p in cutoffs):
        raise ValueError(f"top cut-offs must be positive, got {cutoffs}")
    metrics: dict[str, Any] = {
        "frobenius_norm": frobenius_norm(k),
        "trace": float(np.trace(k)),
    }
    values = eigenvalues(k)  # one eigendecomposition for all spectral metrics
    _record(metrics, "effective_rank", functools.partial(_effective_rank, values))
    for p in cutoffs:
        if p <= k.shape[0]:
            _record(metrics, f"concentration_top{p}", functools.partial(_concentration, values, p))
    if labels is None:
        return _with_reasons(metrics)
    _record(metrics, "kernel_target_alignment", lambda: kernel_target_alignment(k, labels, num_classes=num_classes))
    _record(metrics, "centered_alignment", lambda: centered_alignment(k, labels, num_classes=num_classes))
    if np.ndim(kernel) in (3, 4):
        try:
            ksm, undefined = _specialization(kernel, labels, num_classes)
        except UndefinedMetricError as reason:
            metrics.setdefault("undefined", {})["mean_specialization"] = str(reason)
            return _with_reasons(metrics)
        if undefined is None:
            metrics["specialization_matrix"] = ksm.tolist()
            metrics["mean_specialization"] = mean_specialization(ksm)
        else:  # the columns it defines, null in the others; no mean over an incomplete diagonal
            if not np.all(np.isnan(ksm)):
                metrics["specialization_columns"] = [[None if np.isnan(v) else float(v) for v in row] for row in ksm]
            metrics.setdefault("undefined", {})["mean_specialization"] = f"specialization is undefined: {undefined}"
    return _with_reasons(metrics)


def _record(metrics: dict[str, Any], key: str, compute: Callable[[], float]) -> None:
    """Store ``compute()`` under ``key``, or why the metric is undefined for this input."""
    try:
        metrics[key] = compute()
    except UndefinedMetricError as reason:
        metrics.setdefault("undefined", {})[key] = str(reason)


def _with_reasons(metrics: dict[str, Any]) -> dict[str, Any]:
    """Put the ``undefined`` reasons, if any, last."""
    reasons = metrics.pop("undefined", None)
    return metrics if reasons is None else {**metrics, "undefined": reasons}


def spearman_correlation(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman's ρ: Pearson correlation of the ranks (ties share their mean rank); nan if constant."""
    a, b = host_array(a, np.float64), host_array(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1D arrays of one length, got shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):  # NaN ranked as the largest value
        raise ValueError("values contain NaN or inf")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denominator) if denominator > 0 else float("nan")


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    first = np.r_[True, sorted_v[1:] != sorted_v[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], v.size]
    mean_rank = (starts + ends - 1) / 2.0
    ranks = np.empty_like(v)
    ranks[order] = mean_rank[group]
    return ranks
