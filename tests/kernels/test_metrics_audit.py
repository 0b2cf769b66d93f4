"""Audit of ``kernels.metrics`` against its definitions, recomputed here with plain loops.

Every expected value is computed in this file from the module docstring's (and the papers')
definitions by explicit Python loops over entries, classes and eigenpairs of small seeded or
hand-made kernels, never by the code under test: the Frobenius cosine as a double sum, the trace
kernel as the mean of the C diagonal class blocks entry by entry, the centring matrix
H = I − 11ᵀ/N as a matrix, eigenvalues of the symmetrised kernel from numpy's general
(non-symmetric) eigenvalue solver, and kernels built from known orthonormal eigenvectors. The
kernels are chosen so that plausible slips give other numbers: non-symmetric kernels (a missing
symmetrisation, rows and columns swapped), trajectories whose steps differ from their distances
to the first kernel, spectra with negative eigenvalues, probes with as many points as a cut-off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntkrobust.kernels.metrics import (
    UndefinedMetricError,
    centered_alignment,
    class_blocks,
    distance_matrix,
    distance_to_final,
    effective_rank,
    eigenvalue_concentration,
    eigenvalues,
    kernel_distance,
    kernel_metrics,
    kernel_target_alignment,
    kernel_velocity,
    polar_coordinates,
    specialization_matrix,
    top_eigenspace,
    trace_kernel,
)

TOL = 1e-12  # float64 sums of a few dozen terms of order one


def loop_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 − ⟨A, B⟩_F / (‖A‖_F ‖B‖_F), as sums over every entry."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(y) ** 2 for y in b))
    return 1.0 - dot / (na * nb)


def loop_trace_kernel(blocks_last: np.ndarray) -> np.ndarray:
    """C⁻¹ Σ_c K[:, :, c] of a class-blocks kernel (N, N, C), entry by entry."""
    n, _, c = blocks_last.shape
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = sum(blocks_last[i, j, k] for k in range(c)) / c
    return out


def loop_alignment(k: np.ndarray, target: np.ndarray) -> float:
    return 1.0 - loop_distance(k, target)


def orthonormal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q


# -- distances, velocity, distance to the final kernel -------------------------------------------


def test_kernel_distance_of_non_symmetric_and_full_kernels_is_the_frobenius_cosine(rng):
    """Non-symmetric (N, N) and full (N, N, C, C) kernels with mixed signs: the distance is the
    cosine of the flat arrays, whatever the sign of their largest entry."""
    for shape in [(5, 5), (4, 4, 3, 3), (4, 4, 3)]:
        a, b = rng.standard_normal(shape), rng.standard_normal(shape)
        assert kernel_distance(a, b) == pytest.approx(loop_distance(a, b), abs=TOL)
    a = -np.abs(rng.standard_normal((4, 4)))  # every entry negative: the largest |entry| is negative
    b = np.abs(rng.standard_normal((4, 4)))
    assert kernel_distance(a, b) == pytest.approx(loop_distance(a, b), abs=TOL)
    assert kernel_distance(a, b) > 1.0


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_kernel_distance_of_huge_and_tiny_kernels_neither_overflows_nor_underflows(rng, scale):
    """‖K‖_F of entries ~1e200 overflows float64 unless the kernel is rescaled first; the
    distance is scale-free, so it must equal that of the kernels at scale 1."""
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    expected = loop_distance(a, b)
    with np.errstate(all="ignore"):  # the point is the answer, not the route's warnings
        assert kernel_distance(scale * a, scale * b) == pytest.approx(expected, abs=TOL)
        assert kernel_distance(scale * a, a) == pytest.approx(0.0, abs=TOL)


def trajectory(rng: np.random.Generator, t: int = 5, n: int = 4) -> list[np.ndarray]:
    """Kernels whose neighbour distances, distances to the first and to the last all differ."""
    kernels = [rng.standard_normal((n, n))]
    for _ in range(t - 1):
        kernels.append(kernels[-1] + 0.6 * rng.standard_normal((n, n)))
    return kernels


def test_velocity_is_the_step_between_neighbours_over_its_time(rng):
    """dS/dt = d(K_t, K_{t+1}) / (τ_{t+1} − τ_t) (LOO fig. 1a): neighbours, not the first kernel,
    divided by the interval, not by the time itself."""
    kernels = trajectory(rng)
    times = np.array([0.0, 0.25, 1.0, 3.0, 3.5])
    expected = [loop_distance(kernels[i], kernels[i + 1]) / (times[i + 1] - times[i]) for i in range(4)]
    to_first = [loop_distance(kernels[0], kernels[i + 1]) for i in range(4)]
    assert not np.allclose(expected, to_first)  # the trajectory tells the two apart
    np.testing.assert_allclose(kernel_velocity(kernels, times), expected, rtol=1e-12, atol=TOL)
    unit = [loop_distance(kernels[i], kernels[i + 1]) for i in range(4)]
    np.testing.assert_allclose(kernel_velocity(kernels), unit, rtol=1e-12, atol=TOL)


def test_distance_to_final_and_distance_matrix_by_loops(rng):
    kernels = trajectory(rng)
    np.testing.assert_allclose(
        distance_to_final(kernels), [loop_distance(k, kernels[-1]) for k in kernels], rtol=1e-12, atol=TOL
    )
    expected = np.array([[loop_distance(a, b) if a is not b else 0.0 for b in kernels] for a in kernels])
    np.testing.assert_allclose(distance_matrix(kernels), expected, rtol=1e-12, atol=TOL)


# -- class blocks and the trace kernel --------------------------------------------------------------


@pytest.mark.parametrize(("n", "c"), [(4, 3), (3, 3)])  # N = C: a misplaced class axis keeps the shape
def test_trace_kernel_of_a_class_blocks_kernel_is_the_mean_over_its_classes(rng, n, c):
    """A class-blocks kernel (N, N, C) (``bridge.entk``'s ``class-blocks`` kind) holds K_{c,c} at
    [:, :, c]; its blocks are not symmetric here, so a transposed block shows."""
    k3 = rng.standard_normal((n, n, c))
    expected = loop_trace_kernel(k3)
    np.testing.assert_allclose(trace_kernel(k3), expected, rtol=0, atol=TOL)
    blocks = class_blocks(k3)
    assert blocks.shape == (c, n, n)
    for cls in range(c):
        np.testing.assert_array_equal(blocks[cls], k3[:, :, cls])
    # the same blocks as the diagonal of a full kernel give the same trace kernel
    full = rng.standard_normal((n, n, c, c))
    for cls in range(c):
        full[:, :, cls, cls] = k3[:, :, cls]
    np.testing.assert_allclose(trace_kernel(full), expected, rtol=0, atol=TOL)
    np.testing.assert_array_equal(class_blocks(full), blocks)


# -- spectra -------------------------------------------------------------------------------------


def test_eigenvalues_are_those_of_the_symmetrised_kernel(rng):
    """Of (K + Kᵀ)/2, found here by numpy's general eigenvalue solver (no symmetric one), for a
    kernel that is far from symmetric: an eigensolver fed K itself reads one triangle only."""
    k = rng.standard_normal((6, 6))
    s = np.array([[(k[i, j] + k[j, i]) / 2 for j in range(6)] for i in range(6)])
    expected = np.sort(np.linalg.eigvals(s).real)[::-1]
    np.testing.assert_allclose(eigenvalues(k), expected, rtol=1e-10, atol=1e-12)
    assert eigenvalues(k).dtype == np.float64


def test_top_eigenspace_keeps_the_largest_eigenvalues_with_their_signs(rng):
    """Σ_{i≤k} λᵢ vᵢ vᵢᵀ for K = Σ λᵢ vᵢ vᵢᵀ built from known orthonormal vᵢ, with negative λ
    among the top k: the truncation keeps the k largest values as they are."""
    v = orthonormal(rng, 5)
    lam = np.array([3.0, -0.5, 2.0, -4.0, 1.0])  # descending: 3, 2, 1, −0.5, −4
    k = sum(lam[i] * np.outer(v[:, i], v[:, i]) for i in range(5))
    order = [0, 2, 4, 1, 3]
    for top in (1, 2, 4, 5):
        expected = sum(lam[i] * np.outer(v[:, i], v[:, i]) for i in order[:top])
        np.testing.assert_allclose(top_eigenspace(k, top), expected, rtol=0, atol=1e-12)
    # of a non-symmetric kernel: the truncation of its symmetric part
    a = rng.standard_normal((5, 5))
    s = (a + a.T) / 2
    np.testing.assert_allclose(top_eigenspace(a, 5), s, rtol=0, atol=1e-12)


def test_polar_coordinates_by_hand(rng):
    """TK eq. 12: r_t = ‖Θ_t − Θ₀‖_F / ‖Θ_f − Θ₀‖_F, θ_t = arccos(1 − d(Θ_t, Θ₀)), computed here
    with loops on a random trajectory (no straight line), and its top-2 version from kernels
    truncated with known eigenvectors."""
    kernels = trajectory(rng)
    span = math.sqrt(sum(float(x) ** 2 for x in (kernels[-1] - kernels[0]).ravel()))
    r_expected = [math.sqrt(sum(float(x) ** 2 for x in (k - kernels[0]).ravel())) / span for k in kernels]
    theta_expected = [math.acos(1.0 - loop_distance(k, kernels[0])) for k in kernels]
    r, theta = polar_coordinates(kernels)
    np.testing.assert_allclose(r, r_expected, rtol=1e-12, atol=TOL)
    np.testing.assert_allclose(theta, theta_expected, rtol=1e-7, atol=1e-7)  # arccos near 0 keeps half the digits


def test_concentration_and_effective_rank_by_hand_with_negative_eigenvalues(rng):
    """Concentration Σ_{i≤p} λᵢ² / Σᵢ λᵢ² over all eigenvalues (signed ones squared); effective
    rank with negative eigenvalues counted as 0 (docstring), from a known spectrum."""
    v = orthonormal(rng, 4)
    lam = [3.0, 1.0, -1.0, -2.0]
    k = sum(lam[i] * np.outer(v[:, i], v[:, i]) for i in range(4))
    total = sum(x * x for x in lam)
    for p, top in [(1, [3.0]), (2, [3.0, 1.0]), (3, [3.0, 1.0, -1.0]), (4, lam)]:
        assert eigenvalue_concentration(k, p) == pytest.approx(sum(x * x for x in top) / total, abs=TOL)
    positive = [3.0 / 4.0, 1.0 / 4.0]  # p_i = λ_i / Σ_j max(λ_j, 0)
    assert effective_rank(k) == pytest.approx(math.exp(-sum(q * math.log(q) for q in positive)), rel=1e-12)


def test_spectral_metrics_of_a_zero_kernel_are_undefined():
    zero = np.zeros((3, 3))
    with pytest.raises(UndefinedMetricError, match="concentration"):
        eigenvalue_concentration(zero, 1)
    m = kernel_metrics(zero, top=(1, 3))
    assert set(m["undefined"]) == {"effective_rank", "concentration_top1", "concentration_top3"}
    assert m["frobenius_norm"] == 0.0 and m["trace"] == 0.0


def test_kernel_metrics_reports_a_cut_off_equal_to_the_probe_size(rng):
    """concentration_top{p} for every p ≤ N (docstring), p = N included (then exactly 1 up to
    rounding), p > N left out."""
    a = rng.standard_normal((10, 10))
    k = a @ a.T
    m = kernel_metrics(k, top=(3, 10, 11))
    assert "concentration_top11" not in m
    assert m["concentration_top10"] == pytest.approx(1.0, abs=TOL)
    lam = np.sort(np.linalg.eigvals(k).real)[::-1]
    assert m["concentration_top3"] == pytest.approx(sum(x * x for x in lam[:3]) / sum(x * x for x in lam), rel=1e-10)
    assert m["trace"] == pytest.approx(sum(k[i, i] for i in range(10)), rel=1e-12)


# -- alignments ----------------------------------------------------------------------------------


def test_centered_alignment_of_a_non_symmetric_kernel_uses_h_k_h(rng):
    """A(H K̄ H, H Y Yᵀ H) with H = I − 11ᵀ/N formed as a matrix: for a non-symmetric kernel the
    row and column means differ, so centring rows where columns belong shows."""
    labels = np.array([0, 1, 2, 1, 0, 2, 2])
    n = labels.size
    k = rng.standard_normal((n, n)) + np.arange(n)[:, None]  # rows far from columns
    h = np.eye(n) - np.ones((n, n)) / n
    target = np.array([[1.0 if labels[i] == labels[j] else 0.0 for j in range(n)] for i in range(n)])
    expected = loop_alignment(h @ k @ h, h @ target @ h)
    assert centered_alignment(k, labels) == pytest.approx(expected, abs=TOL)


def test_kernel_target_alignment_of_full_and_class_blocks_kernels_uses_the_trace_kernel(rng):
    labels = np.array([0, 1, 1, 0, 1])
    k3 = rng.standard_normal((5, 5, 2))
    full = rng.standard_normal((5, 5, 2, 2))
    full[:, :, 0, 0], full[:, :, 1, 1] = k3[:, :, 0], k3[:, :, 1]
    target = np.array([[1.0 if labels[i] == labels[j] else 0.0 for j in range(5)] for i in range(5)])
    expected = loop_alignment(loop_trace_kernel(k3), target)
    assert kernel_target_alignment(full, labels) == pytest.approx(expected, abs=TOL)
    assert kernel_target_alignment(k3, labels) == pytest.approx(expected, abs=TOL)


# -- specialization -------------------------------------------------------------------------------


def loop_specialization(blocks_last: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """KSM[i, j] = A(K_{i,i}, y_j y_jᵀ) / (C⁻¹ Σ_l A(K_{l,l}, y_j y_jᵀ)) (LOO sec. 3), with the
    label matrices y_j y_jᵀ written out."""
    n, _, c = blocks_last.shape
    a = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            y = [1.0 if labels[m] == j else 0.0 for m in range(n)]
            a[i, j] = loop_alignment(blocks_last[:, :, i], np.outer(y, y))
    return np.array([[a[i, j] / (sum(a[l_, j] for l_ in range(c)) / c) for j in range(c)] for i in range(c)])


def test_specialization_of_a_class_blocks_kernel_by_loops(rng):
    """From the class blocks (N, N, C) alone, as from a full kernel holding them; kernel_metrics
    reports it for both (docstring: "for a full (N, N, C, C) or a class-blocks (N, N, C) kernel")."""
    labels = np.array([0, 1, 2, 0, 1, 2, 1, 0])
    k3 = np.stack([(lambda a: a @ a.T)(rng.standard_normal((8, 8))) for _ in range(3)], axis=-1)
    expected = loop_specialization(k3, labels)
    np.testing.assert_allclose(specialization_matrix(k3, labels), expected, rtol=1e-12, atol=TOL)
    m = kernel_metrics(k3, labels)
    np.testing.assert_allclose(m["specialization_matrix"], expected, rtol=1e-12, atol=TOL)
    assert m["mean_specialization"] == pytest.approx(sum(expected[i, i] for i in range(3)) / 3, rel=1e-12)
    full = rng.standard_normal((8, 8, 3, 3))
    for c in range(3):
        full[:, :, c, c] = k3[:, :, c]
    np.testing.assert_allclose(specialization_matrix(full, labels), expected, rtol=1e-12, atol=TOL)


def test_specialization_with_a_zero_class_kernel_or_a_zero_mean_is_undefined(rng):
    """A(0, ·) divides by ‖0‖ = 0, and a class j whose alignments average to 0 has no ratio: both
    are UndefinedMetricError, which kernel_metrics records (not a division by zero)."""
    labels = np.array([0, 1, 0, 1])
    a = rng.standard_normal((4, 4))
    p = a @ a.T
    zero_block = np.stack([p, np.zeros((4, 4))], axis=-1)
    with pytest.raises(UndefinedMetricError, match="class kernel 1 is zero"):
        specialization_matrix(zero_block, labels)
    opposite = np.stack([p, -p], axis=-1)  # A(K₁, ·) = −A(K₀, ·): every column mean is 0
    with pytest.raises(UndefinedMetricError, match="zero mean alignment"):
        specialization_matrix(opposite, labels)
    m = kernel_metrics(opposite, labels)
    assert "specialization_matrix" not in m and "zero mean alignment" in m["undefined"]["mean_specialization"]
