"""Gram-matrix metrics (TK sec. 5 eq. 12, LOO sec. 3, RAT sec. 3.1) on hand-computed kernels.

Independent routes: singular values (RAT's definition of KER) against eigenvalues, an explicit
centring matrix H, explicit label matrices y yᵀ, closed forms for straight-line trajectories.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.kernels.metrics import (
    UndefinedMetricError,
    centered_alignment,
    class_kernel,
    distance_matrix,
    distance_to_final,
    effective_rank,
    eigenvalue_concentration,
    eigenvalues,
    frobenius_norm,
    kernel_alignment,
    kernel_distance,
    kernel_metrics,
    kernel_target_alignment,
    kernel_velocity,
    mean_specialization,
    one_hot,
    polar_coordinates,
    specialization_matrix,
    top_eigenspace,
    trace_kernel,
)

ROOT = Path(__file__).resolve().parents[2]


def psd(rng: np.random.Generator, n: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((n, n if rank is None else rank))
    return a @ a.T


def test_distance_of_scaled_negated_and_orthogonal_kernels(rng):
    k = psd(rng, 6)
    assert kernel_distance(k, 3.7 * k) == pytest.approx(0.0, abs=1e-15)
    assert kernel_distance(k, k) == 0.0
    assert kernel_distance(k, -k) == pytest.approx(2.0, abs=1e-15)
    assert kernel_distance(np.diag([1.0, -1.0]), np.eye(2)) == pytest.approx(1.0, abs=1e-15)
    assert kernel_distance(np.diag([1.0, 0.0]), np.array([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(1.0, abs=1e-15)
    other = psd(rng, 6)
    cosine = np.sum(k * other) / (np.linalg.norm(k) * np.linalg.norm(other))
    assert kernel_distance(k, other) == pytest.approx(1 - cosine, abs=1e-14)
    assert kernel_alignment(k, other) == pytest.approx(cosine, abs=1e-14)
    # full kernels are compared as flat arrays
    full = rng.standard_normal((3, 3, 2, 2))
    assert kernel_distance(full, 2 * full) == pytest.approx(0.0, abs=1e-15)


def test_tiny_distances_keep_relative_precision(rng):
    k = psd(rng, 6)
    delta = rng.standard_normal((6, 6))
    delta -= np.sum(delta * k) / np.sum(k * k) * k  # Δ ⟂ K: d(K, K + Δ) = 1 − 1/√(1 + s²), s = ‖Δ‖/‖K‖
    delta *= 1e-6 * np.linalg.norm(k) / np.linalg.norm(delta)
    s2 = 1e-12
    expected = s2 / ((math.sqrt(1 + s2) + 1) * math.sqrt(1 + s2))  # the same, without cancellation
    assert kernel_distance(k, k + delta) == pytest.approx(expected, rel=1e-6, abs=0)  # 1 − u·v is off by ~1e-4


def test_distance_matrix_is_pairwise_distance(rng):
    kernels = [psd(rng, 5) for _ in range(4)]
    d = distance_matrix(kernels)
    assert d.shape == (4, 4)
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    expected = [[kernel_distance(a, b) for b in kernels] for a in kernels]
    np.testing.assert_allclose(d, expected, atol=1e-15)


def test_velocity_with_uneven_times_and_distance_to_final():
    a, b = np.diag([1.0, 0.0]), np.array([[0.0, 1.0], [1.0, 0.0]])
    kernels = [a, 2 * a, -a, b]  # distances between neighbours: 0, 2, 1
    np.testing.assert_allclose(kernel_velocity(kernels, [0.0, 0.5, 1.5, 5.5]), [0.0, 2.0, 0.25], atol=1e-15)
    np.testing.assert_allclose(kernel_velocity(kernels), [0.0, 2.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(distance_to_final(kernels), [1.0, 1.0, 1.0, 0.0], atol=1e-15)
    assert distance_to_final(kernels[:3])[-1] == 0.0


def test_trace_and_class_kernels_of_a_full_kernel(rng):
    blocks = [psd(rng, 4) for _ in range(3)]
    # Kronecker-like: K_c ⊗ e_c e_cᵀ puts K_c in the class block (c, c)
    full = sum(np.multiply.outer(b, np.outer(e, e)) for b, e in zip(blocks, np.eye(3), strict=True))
    full = full + np.einsum("nm,cd->nmcd", psd(rng, 4), 1 - np.eye(3))  # off-diagonal blocks do not count
    np.testing.assert_allclose(trace_kernel(full), (blocks[0] + blocks[1] + blocks[2]) / 3, atol=1e-13)
    np.testing.assert_array_equal(class_kernel(full, 1), full[:, :, 1, 1])
    np.testing.assert_allclose(class_kernel(full, 2), blocks[2], atol=1e-13)
    k = psd(rng, 4)
    np.testing.assert_array_equal(trace_kernel(k.astype(np.float32)), k.astype(np.float32))
    assert trace_kernel(k.astype(np.float32)).dtype == np.float64
    assert frobenius_norm(full) == pytest.approx(np.linalg.norm(trace_kernel(full)))


def test_effective_rank_hand_cases_and_singular_value_route(rng):
    for n in (1, 3, 10):
        assert effective_rank(np.eye(n)) == pytest.approx(n, abs=1e-12)
    v = rng.standard_normal(7)
    assert effective_rank(np.outer(v, v)) == pytest.approx(1.0, abs=1e-12)  # round-off eigenvalues clipped
    assert effective_rank(np.diag([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0, abs=1e-12)
    k = psd(rng, 8)
    sigma = np.linalg.svd(k, compute_uv=False)  # RAT: singular values, equal to λ for a PSD kernel
    p = sigma / sigma.sum()
    assert effective_rank(k) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-12)
    np.testing.assert_allclose(eigenvalues(k), sigma, rtol=1e-10)
    assert np.all(np.diff(eigenvalues(k)) <= 0)


def test_concentration(rng):
    v = rng.standard_normal(6)
    assert eigenvalue_concentration(np.outer(v, v), 1) == pytest.approx(1.0, abs=1e-12)
    for p in (1, 3, 5):
        assert eigenvalue_concentration(np.eye(5), p) == pytest.approx(p / 5, abs=1e-15)
    assert eigenvalue_concentration(np.diag([3.0, 4.0, 0.0]), 1) == pytest.approx(16 / 25)


def test_top_eigenspace(rng):
    k = psd(rng, 6)
    np.testing.assert_allclose(top_eigenspace(k, 6), k, atol=1e-12)
    low = psd(rng, 6, rank=2)
    np.testing.assert_allclose(top_eigenspace(low, 2), low, atol=1e-12)
    one = top_eigenspace(k, 1)
    assert np.linalg.matrix_rank(one) == 1
    assert np.linalg.eigvalsh(one)[-1] == pytest.approx(np.linalg.eigvalsh(k)[-1])


def test_polar_endpoints_and_straight_line(rng):
    k0 = rng.standard_normal((5, 5))
    k0 = k0 + k0.T
    delta = rng.standard_normal((5, 5))
    delta = delta + delta.T
    delta -= np.sum(delta * k0) / np.sum(k0 * k0) * k0  # Δ ⟂ K₀, so tan θ_t = t ‖Δ‖ / ‖K₀‖
    ts = np.array([0.0, 1e-9, 0.1, 0.35, 0.8, 1.0])  # θ(1e-9) ~ 1e-9: arccos(1 − d) would return 0
    r, theta = polar_coordinates([k0 + t * delta for t in ts])
    np.testing.assert_allclose(r, ts, atol=1e-12)
    assert r[0] == 0.0 and theta[0] == 0.0 and r[-1] == 1.0
    np.testing.assert_allclose(theta, np.arctan(ts * np.linalg.norm(delta) / np.linalg.norm(k0)), rtol=1e-7, atol=1e-15)
    kernels = [k0 + t * delta for t in ts]
    arccos = [np.arccos(1 - kernel_distance(k, k0)) for k in kernels]
    np.testing.assert_allclose(theta[2:], arccos[2:], atol=1e-7)  # eq. 12 as written, away from θ = 0


def test_polar_top_k_is_polar_of_truncated_kernels(rng):
    kernels = [psd(rng, 8) for _ in range(4)]
    r, theta = polar_coordinates(kernels, top_k=3)
    r_ref, theta_ref = polar_coordinates([top_eigenspace(k, 3) for k in kernels])
    np.testing.assert_allclose(r, r_ref, atol=1e-12)
    np.testing.assert_allclose(theta, theta_ref, atol=1e-12)
    assert not np.allclose(theta, polar_coordinates(kernels)[1])


def test_kernel_target_and_centered_alignment(rng):
    labels = np.array([0, 1, 2, 1, 0, 2, 2])
    y = one_hot(labels)
    np.testing.assert_array_equal(y, np.eye(3)[labels])
    assert kernel_target_alignment(y @ y.T, labels) == pytest.approx(1.0, abs=1e-15)
    assert centered_alignment(y @ y.T, labels) == pytest.approx(1.0, abs=1e-15)
    k = psd(rng, 7)
    h = np.eye(7) - np.ones((7, 7)) / 7
    kc, tc = h @ k @ h, h @ y @ y.T @ h
    expected = np.sum(kc * tc) / (np.linalg.norm(kc) * np.linalg.norm(tc))
    assert centered_alignment(k, labels) == pytest.approx(expected, abs=1e-12)
    shifted = k + 5.0 * np.ones((7, 7))
    assert centered_alignment(shifted, labels) == pytest.approx(centered_alignment(k, labels), abs=1e-12)
    assert abs(kernel_target_alignment(shifted, labels) - kernel_target_alignment(k, labels)) > 1e-3
    assert one_hot(labels, num_classes=5).shape == (7, 5)
    assert kernel_target_alignment(k, labels, num_classes=5) == kernel_target_alignment(k, labels)


def full_kernel(blocks: list[np.ndarray]) -> np.ndarray:
    n, c = blocks[0].shape[0], len(blocks)
    full = np.zeros((n, n, c, c))
    for i, block in enumerate(blocks):
        full[:, :, i, i] = block
    return full


def test_specialization_matrix(rng):
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 2])
    y = one_hot(labels)
    specialized = full_kernel([np.outer(y[:, c], y[:, c]) for c in range(3)])
    ksm = specialization_matrix(specialized, labels)
    np.testing.assert_allclose(ksm, 3 * np.eye(3), atol=1e-12)  # A = δ_ij, so KSM = C·I
    assert mean_specialization(ksm) == pytest.approx(3.0)
    assert np.min(np.diag(ksm)) > np.max(ksm[~np.eye(3, dtype=bool)])

    shared = psd(rng, 8)
    ksm = specialization_matrix(full_kernel([shared] * 3), labels)
    np.testing.assert_allclose(ksm, np.ones((3, 3)), atol=1e-12)
    assert mean_specialization(ksm) == pytest.approx(1.0)

    blocks = [psd(rng, 8) for _ in range(3)]
    full = full_kernel(blocks) + rng.standard_normal((8, 8, 3, 3)) * (1 - np.eye(3))  # off-diagonal blocks ignored
    a = np.array([[kernel_alignment(b, np.outer(y[:, j], y[:, j])) for j in range(3)] for b in blocks])
    np.testing.assert_allclose(specialization_matrix(full, labels), a / a.mean(axis=0), rtol=1e-12)


def test_kernel_metrics_keys_and_values(rng):
    """Every value ``kernel_metrics`` reports is the metric its key names, of the trace kernel
    K̄ = C⁻¹ Σ_c K_{c,c} (module docstring): the norm and the kernel-target alignment are
    computed here from their definitions, so that a wrong formula inside ``kernel_metrics``
    (|K| summed instead of ‖K̄‖_F, a squared alignment) cannot pass as the right one."""
    labels = np.repeat(np.arange(3), 4)
    blocks = [psd(rng, 12) for _ in range(3)]
    full = full_kernel(blocks)
    m = kernel_metrics(full, labels, top=(10, 20))
    json.dumps(m)  # JSON-ready
    assert set(m) == {
        "frobenius_norm",
        "trace",
        "effective_rank",
        "concentration_top10",
        "kernel_target_alignment",
        "centered_alignment",
        "specialization_matrix",
        "mean_specialization",
    }
    k = trace_kernel(full)
    k_bar = (blocks[0] + blocks[1] + blocks[2]) / 3  # the mean of the diagonal class blocks
    # frobenius_norm: ‖K̄‖_F = √(Σ_nm K̄_nm²) (TK fig. 6a), of the (N, N) trace kernel, not the 4D array
    assert m["frobenius_norm"] == pytest.approx(np.sqrt(np.sum(k_bar**2)), rel=1e-12)
    assert m["frobenius_norm"] != pytest.approx(np.sqrt(np.sum(full**2)), rel=1e-3)
    # kernel_target_alignment: A(K̄, YYᵀ) = ⟨K̄, YYᵀ⟩_F / (‖K̄‖_F ‖YYᵀ‖_F), Y one-hot (Cortes et al. 2012, uncentred)
    target = np.equal.outer(labels, labels).astype(np.float64)  # (YYᵀ)_nm = 1 where labels agree
    alignment = np.sum(k_bar * target) / (np.sqrt(np.sum(k_bar**2)) * np.sqrt(np.sum(target**2)))
    assert 0.05 < alignment < 0.95  # a value whose square is a different number
    assert m["kernel_target_alignment"] == pytest.approx(alignment, rel=1e-12)
    assert m["trace"] == pytest.approx(np.trace(k))
    assert m["effective_rank"] == effective_rank(k)
    assert m["concentration_top10"] == eigenvalue_concentration(k, 10)
    assert m["centered_alignment"] == centered_alignment(k, labels)
    np.testing.assert_array_equal(m["specialization_matrix"], specialization_matrix(full, labels))
    assert all(type(v) is float for key, v in m.items() if key != "specialization_matrix")

    assert set(kernel_metrics(k, top=(2,))) == {"frobenius_norm", "trace", "effective_rank", "concentration_top2"}
    single_class = kernel_metrics(full, np.zeros(12, dtype=np.int64), num_classes=3)
    assert "centered_alignment" not in single_class and "specialization_matrix" not in single_class
    assert set(single_class["undefined"]) == {"centered_alignment", "mean_specialization"}
    assert "classes 1 and 2 have no labelled point" in single_class["undefined"]["mean_specialization"]
    assert single_class["specialization_columns"][0][1:] == [None, None]  # column 0 defined, 1 and 2 null
    assert list(single_class)[-1] == "undefined"
    assert "kernel_target_alignment" in single_class


def test_import_needs_neither_jax_nor_torch():
    code = "import sys, ntkrobust.kernels.metrics; assert 'jax' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


K3 = np.eye(3)
NAN = np.diag([1.0, np.nan, 1.0])
INF = np.diag([1.0, np.inf, 1.0])
FULL = np.ones((3, 3, 2, 2))
LABELS = np.array([0, 1, 1])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: trace_kernel(np.ones((3, 4, 3))), "shape"),  # (3, 3, 3) is a class-blocks kernel
        (lambda: trace_kernel(np.ones((3, 4))), "square"),
        (lambda: trace_kernel(np.ones((3, 3, 2, 3))), "full kernel"),
        (lambda: trace_kernel(NAN), "NaN or inf"),
        (lambda: kernel_distance(INF, K3), "NaN or inf"),
        (lambda: class_kernel(K3, 0), "full kernel"),
        (lambda: class_kernel(FULL, 2), "out of range"),
        (lambda: kernel_distance(K3, np.eye(4)), "differ in shape"),
        (lambda: kernel_distance(K3, np.zeros((3, 3))), "zero kernel"),
        (lambda: distance_matrix([]), "at least 1"),
        (lambda: distance_matrix([K3, np.eye(2)]), "differ in shape"),
        (lambda: kernel_velocity([K3]), "at least 2"),
        (lambda: kernel_velocity([K3, 2 * K3], [0.0]), "times must have shape"),
        (lambda: kernel_velocity([K3, 2 * K3, K3], [0.0, 1.0, 1.0]), "strictly increasing"),
        (lambda: distance_to_final([]), "at least 1"),
        (lambda: top_eigenspace(K3, 0), "top_k"),
        (lambda: top_eigenspace(K3, 4), "top_k"),
        (lambda: polar_coordinates([K3, 2 * K3, K3]), "final kernel equals the initial"),
        (lambda: polar_coordinates([K3]), "final kernel equals the initial"),
        (lambda: eigenvalue_concentration(K3, 0), "p must lie"),
        (lambda: eigenvalue_concentration(K3, 4), "p must lie"),
        (lambda: effective_rank(np.zeros((3, 3))), "positive eigenvalues"),
        (lambda: effective_rank(-K3), "positive eigenvalues"),
        (lambda: one_hot(np.array([0, -1])), "non-negative"),
        (lambda: one_hot(np.array([0, 3]), num_classes=3), "out of range"),
        (lambda: one_hot(np.array([0.0, 1.0])), "int class ids"),
        (lambda: one_hot(np.zeros((2, 2), dtype=np.int64)), "int class ids"),
        (lambda: kernel_target_alignment(K3, np.array([0, 1])), "2 labels for a kernel on 3 points"),
        (lambda: centered_alignment(K3, np.zeros(3, dtype=np.int64)), "centred label matrix is zero"),
        (lambda: centered_alignment(0.1 * np.ones((3, 3)), LABELS), "centred kernel is zero"),
        (lambda: specialization_matrix(K3, LABELS), "full kernel"),
        (lambda: specialization_matrix(np.ones((3, 3, 3, 3)), LABELS), "class 2 has no labelled point"),
        (lambda: specialization_matrix(FULL, LABELS, num_classes=3), "num_classes"),
        (lambda: specialization_matrix(FULL, np.array([0, 1])), "2 labels"),
        (lambda: mean_specialization(np.ones((2, 3))), "square specialization matrix"),
        (lambda: kernel_metrics(K3, top=(0,)), "positive"),
    ],
)
def test_invalid_input_is_a_value_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_undefined_metrics_are_their_own_error():
    with pytest.raises(UndefinedMetricError):
        kernel_distance(np.eye(2), np.zeros((2, 2)))
    with pytest.raises(UndefinedMetricError):
        specialization_matrix(np.ones((3, 3, 3, 3)), LABELS)


def test_a_torch_kernel_that_requires_grad_is_measured_as_its_values(rng):
    """An eNTK computed with autograd on (``Tensor.requires_grad``): numpy's conversion refused it
    ("Can't call numpy() on Tensor that requires grad")."""
    import torch

    full = np.stack([np.stack([psd(rng, 6) for _ in range(2)], -1) for _ in range(2)], -1)  # (6, 6, 2, 2)
    labels = np.array([0, 1, 0, 1, 1, 0])
    tensor = torch.tensor(full, requires_grad=True)
    expected = kernel_metrics(full, labels)
    measured = kernel_metrics(tensor, torch.tensor(labels))
    assert json.dumps(measured, sort_keys=True, default=str) == json.dumps(expected, sort_keys=True, default=str)
    assert kernel_distance(tensor[..., 0, 0], 2 * tensor[..., 0, 0]) == pytest.approx(0.0, abs=1e-15)
    assert kernel_velocity([tensor, tensor * 1.5], times=torch.tensor([0.0, 1.0])).shape == (1,)
