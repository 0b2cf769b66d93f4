"""Metamorphic tests of the analytic half and the kernel metrics: relations between two runs.

Each test runs a function twice, on inputs and on a transformation of them (points permuted,
classes relabelled, a kernel scaled, training points duplicated, time traded for learning rate,
outputs of a net permuted, memory budgets that force chunks), and checks the relation that the
definitions imply between the two results. Such relations catch what a check of one input
misses: an index mixed with another, a class order or point order assumed, a normalisation by
the wrong count. Definitions: ``kernels.metrics``' docstring (TK = Tsilivis & Kempe 2022, LOO =
Loo et al. 2022), eq. 7 of TK in ``kernels.machine``, eq. 9 in ``kernels.features``, supp. D.3
in ``kernels.robust_only``, and ``bridge.entk``'s kinds. Small seeded float64 data (the tiny
images of ``test_machine_audit``, seeded random kernels); tolerances are stated where used.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_machine_audit import FC_BUDGET_4, N_TRAIN, tiny_data
from test_metrics import full_kernel, psd

from ntkrobust.kernels import IllConditionedWarning, metrics

TOL = 1e-12  # float64 metrics of kernels of a few dozen entries of order one
C3 = 3


def _labels(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Seeded labels with every class present (a permutation of a cyclic sequence)."""
    return rng.permutation(np.arange(n) % c)


def _blocks(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """A full (N, N, C, C) kernel with distinct PSD diagonal blocks and non-zero cross blocks."""
    full = full_kernel([psd(rng, n) for _ in range(c)])
    for i in range(c):
        for j in range(c):
            if i != j:
                full[:, :, i, j] = 0.1 * rng.standard_normal((n, n))
    return full


# -- metrics: scaling ------------------------------------------------------------------------------


def test_scaling_a_kernel_leaves_the_scale_free_metrics_and_scales_the_norm_and_trace():
    """K → cK (c > 0): the Frobenius cosine (distance, alignment; LOO's S), the centred and
    kernel-target alignments (cosines, Cortes et al. 2012), the effective rank (pᵢ = λᵢ/Σλ) and the
    concentration (Σλ²/Σλ²) do not change; ‖K̄‖_F and tr K̄ scale by c, the top-k truncation by c,
    and the specialization matrix (a ratio of alignments of each class block, each scale-free) does
    not change even when every class block has its own positive scale. 1e-12 relative."""
    rng = np.random.default_rng(1)
    n = 9
    full = _blocks(rng, n, C3)
    labels = _labels(rng, n, C3)
    other = psd(rng, n)
    k = metrics.trace_kernel(full)
    for c in (1e-3, 7.5, 3e4):
        ck = c * k
        assert metrics.kernel_distance(ck, other) == pytest.approx(metrics.kernel_distance(k, other), abs=TOL)
        assert metrics.kernel_alignment(other, ck) == pytest.approx(metrics.kernel_alignment(other, k), abs=TOL)
        for fn in (metrics.kernel_target_alignment, metrics.centered_alignment):
            assert fn(ck, labels) == pytest.approx(fn(k, labels), abs=TOL)
        assert metrics.effective_rank(ck) == pytest.approx(metrics.effective_rank(k), rel=TOL)
        for p in (1, 3, n):
            assert metrics.eigenvalue_concentration(ck, p) == pytest.approx(
                metrics.eigenvalue_concentration(k, p), abs=TOL
            )
        assert metrics.frobenius_norm(c * full) == pytest.approx(c * metrics.frobenius_norm(full), rel=TOL)
        np.testing.assert_allclose(metrics.top_eigenspace(ck, 3), c * metrics.top_eigenspace(k, 3), rtol=1e-10)
    per_block = full * np.array([0.01, 1.0, 300.0])[None, None, :, None]  # rows of the class axes
    np.testing.assert_allclose(
        metrics.specialization_matrix(per_block, labels), metrics.specialization_matrix(full, labels), rtol=1e-11
    )


def test_trajectory_metrics_under_scaling_and_a_change_of_time_units():
    """Distances are scale-free, so scaling each kernel of a trajectory by its own c_t > 0 leaves
    the distance matrix, velocity (LOO fig. 1a), distance to the final kernel (fig. 1b) and the
    polar angle θ (TK eq. 12) unchanged; one common c also leaves the polar radius r (a ratio of
    norms) unchanged. Times s·t + b give the velocity divided by s (dS/dt). 1e-12 absolute."""
    rng = np.random.default_rng(2)
    base = psd(rng, 6)
    ks = [base + 0.3 * t * psd(rng, 6) for t in range(5)]
    scales = [0.5, 2.0, 40.0, 1e-2, 3.0]
    scaled = [c * k for c, k in zip(scales, ks, strict=True)]
    np.testing.assert_allclose(metrics.distance_matrix(scaled), metrics.distance_matrix(ks), atol=TOL)
    np.testing.assert_allclose(metrics.distance_to_final(scaled), metrics.distance_to_final(ks), atol=TOL)
    times = np.array([0.0, 1.0, 2.5, 3.0, 7.0])
    velocity = metrics.kernel_velocity(ks, times)
    np.testing.assert_allclose(metrics.kernel_velocity(scaled, times), velocity, atol=TOL)
    np.testing.assert_allclose(metrics.kernel_velocity(ks, 4.0 * times + 11.0), velocity / 4.0, rtol=1e-12)
    r, theta = metrics.polar_coordinates(ks)
    np.testing.assert_allclose(metrics.polar_coordinates(scaled)[1], theta, atol=TOL)
    np.testing.assert_allclose(metrics.polar_coordinates([9.0 * k for k in ks])[0], r, rtol=1e-12)
    for top_k in (2, 6):  # the truncation is equivariant under scaling: the same relations
        r_k, theta_k = metrics.polar_coordinates(ks, top_k=top_k)
        np.testing.assert_allclose(metrics.polar_coordinates(scaled, top_k=top_k)[1], theta_k, atol=1e-11)
        np.testing.assert_allclose(metrics.polar_coordinates([9.0 * k for k in ks], top_k=top_k)[0], r_k, rtol=1e-11)


def test_distance_to_itself_is_zero_and_distances_are_symmetric():
    """d(K, K) = 0 exactly (½‖u − u‖²), d(K₁, K₂) = d(K₂, K₁) (symmetric in its definition), the
    distance matrix is symmetric with a zero diagonal and its last column is the distance to the
    final kernel (the same d, two functions), whose last entry is 0."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5, 2, 2))
    assert metrics.kernel_distance(a, a) == 0.0 and metrics.kernel_distance(b, b) == 0.0
    c = rng.standard_normal((5, 5))
    assert metrics.kernel_distance(a, c) == metrics.kernel_distance(c, a)
    ks = [psd(rng, 5) for _ in range(4)]
    d = metrics.distance_matrix(ks)
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    np.testing.assert_allclose(metrics.distance_to_final(ks), d[:, -1], atol=TOL)
    assert metrics.distance_to_final(ks)[-1] == 0.0


def test_centred_alignment_ignores_what_centring_removes_and_spectra_add_under_direct_sums():
    """H(K + a11ᵀ + 1vᵀ + w1ᵀ)H = HKH (H1 = 0), so the centred alignment (Cortes et al. 2012) does
    not change when a constant and rank-one row/column terms are added, while the uncentred
    kernel-target alignment does. The block-diagonal K ⊕ K has each eigenvalue twice: its effective
    rank is twice K's (the entropy gains log 2) and its top-2p concentration is K's top-p one."""
    rng = np.random.default_rng(9)
    n = 9
    k = psd(rng, n)
    labels = _labels(rng, n, C3)
    ones = np.ones(n)
    shifted = k + 3.0 + np.outer(ones, rng.standard_normal(n)) + np.outer(rng.standard_normal(n), ones)
    assert metrics.centered_alignment(shifted, labels) == pytest.approx(metrics.centered_alignment(k, labels), abs=TOL)
    assert abs(metrics.kernel_target_alignment(shifted, labels) - metrics.kernel_target_alignment(k, labels)) > 1e-3
    double = np.zeros((2 * n, 2 * n))
    double[:n, :n] = double[n:, n:] = k
    assert metrics.effective_rank(double) == pytest.approx(2 * metrics.effective_rank(k), rel=1e-12)
    for p in (1, 4, n):
        assert metrics.eigenvalue_concentration(double, 2 * p) == pytest.approx(
            metrics.eigenvalue_concentration(k, p), abs=TOL
        )


def test_dropping_middle_kernels_changes_no_distance_that_does_not_read_them():
    """The polar coordinates (TK eq. 12) refer to the first and the last kernel only, and the
    distance to the final kernel to the last only: a sub-trajectory with the same endpoints keeps
    their values at the kept kernels, and its distance matrix is the sub-matrix. The velocity of the
    reversed trajectory, at times −t reversed, is the velocity reversed. 1e-12."""
    rng = np.random.default_rng(10)
    ks = [psd(rng, 5) + 0.5 * t * psd(rng, 5) for t in range(6)]
    keep = [0, 2, 3, 5]
    sub = [ks[i] for i in keep]
    r, theta = metrics.polar_coordinates(ks)
    r_sub, theta_sub = metrics.polar_coordinates(sub)
    np.testing.assert_allclose(r_sub, r[keep], rtol=1e-12)
    np.testing.assert_allclose(theta_sub, theta[keep], atol=TOL)
    np.testing.assert_allclose(metrics.distance_to_final(sub), metrics.distance_to_final(ks)[keep], atol=TOL)
    np.testing.assert_allclose(metrics.distance_matrix(sub), metrics.distance_matrix(ks)[np.ix_(keep, keep)], atol=0)
    times = np.array([0.0, 0.5, 2.0, 2.5, 4.0, 9.0])
    np.testing.assert_allclose(
        metrics.kernel_velocity(ks[::-1], -times[::-1]), metrics.kernel_velocity(ks, times)[::-1], rtol=1e-12
    )


def test_spectral_metrics_and_distances_are_invariant_under_a_change_of_basis():
    """K → QKQᵀ (Q orthogonal) keeps the spectrum, hence the effective rank, every concentration,
    ‖K‖_F and tr K, and conjugating two kernels by the same Q keeps their Frobenius inner product,
    hence their distance; the top-k truncation is conjugated alike. A statistic read from the
    diagonal or the entries instead of the eigenvalues breaks this. 1e-11."""
    rng = np.random.default_rng(12)
    n = 8
    k, other = psd(rng, n, rank=5), psd(rng, n)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    rotated = q @ k @ q.T
    np.testing.assert_allclose(metrics.eigenvalues(rotated), metrics.eigenvalues(k), atol=1e-11 * np.abs(k).max())
    assert metrics.effective_rank(rotated) == pytest.approx(metrics.effective_rank(k), rel=1e-11)
    for p in (1, 2, 5):
        assert metrics.eigenvalue_concentration(rotated, p) == pytest.approx(
            metrics.eigenvalue_concentration(k, p), abs=1e-11
        )
    assert metrics.frobenius_norm(rotated) == pytest.approx(metrics.frobenius_norm(k), rel=1e-12)
    distance = metrics.kernel_distance(k, other)
    assert metrics.kernel_distance(rotated, q @ other @ q.T) == pytest.approx(distance, abs=1e-12)
    _close(metrics.top_eigenspace(rotated, 3), q @ metrics.top_eigenspace(k, 3) @ q.T, 1e-11)


# -- metrics: permutations of points and of classes ------------------------------------------------


def test_permuting_points_with_their_labels_leaves_every_kernel_metric_unchanged():
    """Point order is arbitrary: a full kernel K[p][:, p] with labels[p] gives the same
    ``kernel_metrics`` (norm, trace, effective rank, concentrations, kernel-target and centred
    alignment, specialization matrix), and two kernels permuted alike keep their distance.
    1e-11 absolute (eigenvalues of a permuted matrix differ in round-off only)."""
    rng = np.random.default_rng(4)
    n = 10
    full = _blocks(rng, n, C3)
    labels = _labels(rng, n, C3)
    p = rng.permutation(n)
    moved = full[p][:, p]
    want = metrics.kernel_metrics(full, labels, top=(1, 4))
    got = metrics.kernel_metrics(moved, labels[p], top=(1, 4))
    assert got.keys() == want.keys() and "undefined" not in want
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-11, atol=1e-11, err_msg=key)
    other = _blocks(rng, n, C3)
    assert metrics.kernel_distance(moved, other[p][:, p]) == pytest.approx(
        metrics.kernel_distance(full, other), abs=TOL
    )


def test_relabelling_classes_permutes_the_specialization_matrix_and_keeps_the_alignments():
    """A permutation σ of the class ids (labels → σ(labels), class axes of the full kernel moved
    so that block σ(c) is the old block c): KSM'[σ(i), σ(j)] = KSM[i, j] (LOO sec. 3), so its mean
    tr/C is unchanged, and so are the trace kernel (a mean over classes), the kernel-target and the
    centred alignment (YYᵀ does not see class names). Also for the class-blocks (N, N, C) kernel."""
    rng = np.random.default_rng(5)
    n, c = 12, 4
    full = _blocks(rng, n, c)
    labels = _labels(rng, n, c)
    sigma = np.array([2, 0, 3, 1])
    inverse = np.argsort(sigma)
    moved = full[:, :, inverse][:, :, :, inverse]
    new_labels = sigma[labels]
    ksm = metrics.specialization_matrix(full, labels)
    new_ksm = metrics.specialization_matrix(moved, new_labels)
    np.testing.assert_allclose(new_ksm[np.ix_(sigma, sigma)], ksm, rtol=1e-12)
    blocks_kernel = np.einsum("nmcc->nmc", moved)
    np.testing.assert_allclose(metrics.specialization_matrix(blocks_kernel, new_labels), new_ksm, rtol=1e-12)
    assert metrics.mean_specialization(new_ksm) == pytest.approx(metrics.mean_specialization(ksm), rel=1e-12)
    np.testing.assert_allclose(metrics.trace_kernel(moved), metrics.trace_kernel(full), rtol=1e-13)
    for fn in (metrics.kernel_target_alignment, metrics.centered_alignment):
        assert fn(moved, new_labels) == pytest.approx(fn(full, labels), abs=TOL)
    assert not np.allclose(new_ksm, ksm)  # the relation is not trivially the identity


def test_duplicating_every_point_leaves_the_normalised_metrics_unchanged():
    """Each point twice (K → K ⊗ J₂, labels repeated): ⟨K⊗J, YYᵀ⊗J⟩ = 4⟨K, YYᵀ⟩ and each norm
    doubles, so the kernel-target alignment is unchanged; centring commutes with the duplication
    (the means over 2N rows are those over N), so the centred alignment is unchanged; the spectrum
    becomes 2λ and N zeros, so effective rank and concentration are unchanged; each class block's
    alignment with y_j y_jᵀ is unchanged, so is the KSM. A normalisation by N (not N²) or by the
    wrong class count breaks these. 1e-10 (zero eigenvalues come back as round-off)."""
    rng = np.random.default_rng(6)
    n = 8
    full = _blocks(rng, n, C3)
    labels = _labels(rng, n, C3)
    twice = np.tile(full, (2, 2, 1, 1))
    labels2 = np.tile(labels, 2)
    want = metrics.kernel_metrics(full, labels, top=(1, 3))
    got = metrics.kernel_metrics(twice, labels2, top=(1, 3))
    for key in ("effective_rank", "concentration_top1", "concentration_top3", "kernel_target_alignment"):
        assert got[key] == pytest.approx(want[key], rel=1e-10), key
    assert got["centered_alignment"] == pytest.approx(want["centered_alignment"], rel=1e-10)
    np.testing.assert_allclose(got["specialization_matrix"], want["specialization_matrix"], rtol=1e-10)
    assert got["trace"] == pytest.approx(2 * want["trace"], rel=1e-12)
    assert got["frobenius_norm"] == pytest.approx(2 * want["frobenius_norm"], rel=1e-12)


def test_the_trace_kernel_is_the_mean_of_the_class_blocks_whatever_the_kind():
    """K̄ = C⁻¹ Σ_c K_{c,c} (module docstring): the full kernel, its class blocks (N, N, C) and
    the (N, N) trace kernel itself give the same trace kernel and the same ``kernel_metrics`` (the
    KSM only for the two kinds that carry class blocks); the off-diagonal blocks count for none."""
    rng = np.random.default_rng(7)
    n = 7
    full = _blocks(rng, n, C3)
    labels = _labels(rng, n, C3)
    blocks = np.einsum("nmcc->nmc", full)
    mean = sum(metrics.class_kernel(full, c) for c in range(C3)) / C3
    for kernel in (full, blocks, mean):
        np.testing.assert_allclose(metrics.trace_kernel(kernel), mean, rtol=1e-14)
    want = metrics.kernel_metrics(full, labels)
    for kernel in (blocks, mean):
        got = metrics.kernel_metrics(kernel, labels)
        for key in got:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
    off = full.copy()
    off[:, :, 0, 1] += 5.0
    for key, value in metrics.kernel_metrics(off, labels).items():
        np.testing.assert_allclose(value, want[key], rtol=1e-12, err_msg=key)


def test_spearman_is_rank_based_symmetric_and_flips_sign_with_one_order():
    """Spearman's ρ reads ranks only: a strictly increasing map of either argument leaves it,
    permuting the pairs jointly leaves it, swapping the arguments leaves it, and reversing one
    order (negation) flips its sign; ties share their mean rank, so duplicating every pair leaves
    it too. 1e-12."""
    rng = np.random.default_rng(8)
    a = rng.integers(0, 6, size=15).astype(float)  # ties
    b = a + rng.standard_normal(15)
    rho = metrics.spearman_correlation(a, b)
    p = rng.permutation(15)
    assert metrics.spearman_correlation(np.exp(a), b**3) == pytest.approx(rho, abs=TOL)
    assert metrics.spearman_correlation(a[p], b[p]) == pytest.approx(rho, abs=TOL)
    assert metrics.spearman_correlation(b, a) == pytest.approx(rho, abs=TOL)
    assert metrics.spearman_correlation(-a, b) == pytest.approx(-rho, abs=TOL)
    assert metrics.spearman_correlation(np.tile(a, 2), np.tile(b, 2)) == pytest.approx(rho, abs=TOL)


# -- the kernel machine (eq. 7) -------------------------------------------------------------------

TIME, RIDGE, RATE = 0.7, 0.02, 1.7
N_TEST = 9


@pytest.fixture(scope="module")
def data(jax_strict):
    return tiny_data(seed=21, n_test=N_TEST)


def _fit(arch_name: str, x_train, y_train, **kw):
    from ntkrobust.kernels import fit_kernel_machine, get_architecture

    kw = {"time": TIME, "ridge": RIDGE, "learning_rate": RATE} | kw
    return fit_kernel_machine(get_architecture(arch_name), x_train, y_train, **kw)


def _close(got, want, rel: float) -> None:
    """Equal to ``rel`` of the largest |entry| of ``want`` (entries near 0 carry round-off)."""
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=rel * np.abs(want).max())


def _outputs(machine, x, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, loss gradients (true classes from ``labels``) and output Jacobians at x."""
    return (
        np.asarray(machine.logits(x)),
        np.asarray(machine.loss_gradient(x, machine.target_index(labels))),
        np.asarray(machine.output_jacobian(x)),
    )


@pytest.mark.parametrize("name", ["fc2", "conv1"])
def test_permuting_the_training_points_leaves_the_machine_and_permutes_its_gram(name, data):
    """f_t(x) = Θ(x, X) V g_t(Λ) Vᵀ Y (eq. 7) is a sum over training points: (X, Y) → (X[p], Y[p])
    changes Θ(X, X) to P Θ Pᵀ (so the same spectrum, eigenvectors permuted) and leaves logits,
    loss gradients and output Jacobians at test points, at a finite time with a ridge and at t = ∞.
    Both machines compute their Gram matrix (gram_matrix) themselves. 1e-9 of the largest entry
    (t = ∞ amplifies round-off by the condition number)."""
    from ntkrobust.kernels import gram_matrix

    x_train, x_test, y3, _ = data
    p = np.random.default_rng(0).permutation(N_TRAIN)
    machine = _fit(name, x_train, y3)
    moved = _fit(name, x_train[p], y3[p])
    gram = gram_matrix(machine.arch, x_train)
    _close(gram_matrix(machine.arch, x_train[p]), gram[np.ix_(p, p)], 1e-13)
    np.testing.assert_allclose(moved.eigenvalues, machine.eigenvalues, rtol=1e-11)
    labels = y3[:N_TEST]
    for got, want in zip(_outputs(moved, x_test, labels), _outputs(machine, x_test, labels), strict=True):
        _close(got, want, 1e-10)
    at_infinity = machine.at_time(math.inf)
    _close(moved.at_time(math.inf).logits(x_test), at_infinity.logits(x_test), 1e-9)


def test_permuting_test_points_permutes_every_output(data):
    """Test points are independent (blocks are a matter of memory): x → x[q] gives logits,
    predictions, loss gradients (targets permuted alike) and output Jacobians permuted by q."""
    x_train, x_test, y3, _ = data
    machine = _fit("fc2", x_train, y3)
    q = np.random.default_rng(1).permutation(N_TEST)
    labels = y3[:N_TEST]
    for got, want in zip(_outputs(machine, x_test[q], labels[q]), _outputs(machine, x_test, labels), strict=True):
        _close(got, want[q], 1e-12)
    np.testing.assert_array_equal(machine.predict(x_test[q]), machine.predict(x_test)[q])


def test_the_order_of_classes_permutes_the_outputs_and_changes_no_prediction(data):
    """``classes`` orders the outputs: classes (2, 0, 1) give the one-hot targets' columns, hence α's
    and the logits', in that order (f' = f[:, [2, 0, 1]]); the predicted class ids and the loss
    gradients of the same labels do not change. Binary: classes (9, 5) swap y = −1 and +1, so
    f' = −f, the same predictions, and the same loss softplus(−y f) with its gradient. 1e-12."""
    x_train, x_test, y3, y2 = data
    labels3, labels2 = y3[:N_TEST], y2[:N_TEST]
    machine = _fit("fc2", x_train, y3)
    order = (2, 0, 1)
    moved = _fit("fc2", x_train, y3, classes=order)
    f, g, z = _outputs(machine, x_test, labels3)
    f2, g2, z2 = _outputs(moved, x_test, labels3)
    _close(f2, f[:, order], 1e-12)
    _close(g2, g, 1e-12)
    _close(z2, z[:, order], 1e-12)
    np.testing.assert_array_equal(moved.predict(x_test), machine.predict(x_test))
    binary = _fit("fc2", x_train, y2, classes=(5, 9))
    swapped = _fit("fc2", x_train, y2, classes=(9, 5))
    f, g, z = _outputs(binary, x_test, labels2)
    f2, g2, z2 = _outputs(swapped, x_test, labels2)
    _close(f2, -f, 1e-12)
    _close(g2, g, 1e-12)
    _close(z2, -z, 1e-12)
    np.testing.assert_array_equal(swapped.predict(x_test), binary.predict(x_test))


def test_a_binary_machine_is_the_difference_of_the_two_one_hot_outputs(data):
    """The binary task as one ±1 output (module docstring) and as two one-hot outputs are the same
    kernel regression on targets related linearly (y = e₁ − e₀), so f_± = f₁ − f₀ (eq. 7 is linear
    in Y), and the losses agree: softmax cross-entropy on (f₀, f₁) is softplus(−y (f₁ − f₀)), so
    the loss gradients are equal and the predictions are the same. The two-output machine is the
    binary one with one-hot targets (``dataclasses.replace`` of ``targets``, then ``at_time``)."""
    x_train, x_test, _, y2 = data
    labels = y2[:N_TEST]
    binary = _fit("fc2", x_train, y2)
    two = dataclasses.replace(binary, targets=np.eye(2)[binary.target_index(y2)]).at_time(TIME)
    assert two.n_outputs == 2 and binary.n_outputs == 1
    f2 = np.asarray(two.logits(x_test))
    _close(binary.logits(x_test)[:, 0], f2[:, 1] - f2[:, 0], 1e-12)
    index = binary.target_index(labels)
    _close(two.loss_gradient(x_test, index), binary.loss_gradient(x_test, index), 1e-12)
    np.testing.assert_array_equal(two.predict(x_test), binary.predict(x_test))


def test_only_the_product_of_time_and_learning_rate_matters(data):
    """g_t(λ) = (1 − e^{−η(λ+ρ)t})/(λ+ρ) depends on η and t through ηt alone (eq. 7), so
    (t, η) = (0.7, 1.7) and (1.7, 0.7) are one machine; refitting at t₂ equals ``at_time(t₂)`` of a
    machine fitted at t₁. 1e-12 of the largest logit."""
    x_train, x_test, y3, _ = data
    machine = _fit("fc2", x_train, y3)
    _close(_fit("fc2", x_train, y3, time=RATE, learning_rate=TIME).logits(x_test), machine.logits(x_test), 1e-12)
    _close(_fit("fc2", x_train, y3, time=5.0).logits(x_test), machine.at_time(5.0).logits(x_test), 1e-12)
    _close(machine.at_time(5.0).at_time(TIME).logits(x_test), machine.logits(x_test), 1e-12)


def test_large_finite_times_and_vanishing_ridges_approach_the_limit(data):
    """t → ∞: g_t(λ) → 1/(λ+ρ) with error e^{−η(λ+ρ)t}/(λ+ρ); at ηt(λ_min+ρ) = 60 that is e^{−60}
    of the limit, so f_t = f_∞ to round-off (1e-10). ρ → 0: f_ρ − f_0 is O(ρ·cond), so a relative
    ridge of 1e-10 moves the t = ∞ logits by less than 1e-5 relative, while 1e-2 moves them more."""
    x_train, x_test, y3, _ = data
    machine = _fit("fc2", x_train, y3, time=math.inf)
    kept_min = machine.eigenvalues[-1] + machine.ridge
    late = machine.at_time(60.0 / (RATE * kept_min))
    _close(late.logits(x_test), machine.logits(x_test), 1e-10)
    ridgeless = _fit("fc2", x_train, y3, time=math.inf, ridge=0.0)
    tiny = _fit("fc2", x_train, y3, time=math.inf, ridge=1e-10)
    want = np.asarray(ridgeless.logits(x_test))
    _close(tiny.logits(x_test), want, 1e-5)
    assert np.abs(np.asarray(machine.logits(x_test)) - want).max() > 1e-5 * np.abs(want).max()


def test_every_training_point_twice_is_the_machine_at_twice_the_time(data):
    """Gradient flow on the ℓ2 loss summed over points (eq. 7, no 1/n: the module docstring) sees
    each duplicated point twice: Θ' = J₂ ⊗ Θ has eigenvalues 2λ (and n zeros, left out as the
    numerical null space), and f'_t = Σ 2 g_t(2λ) Θ(x, X) v vᵀ Y = f_{2t} since 2 g_t(2λ) = g_{2t}(λ).
    At t = ∞ (Moore-Penrose) the duplicated machine is the original one. Ridgeless; 1e-10 at
    finite times, 1e-8 at t = ∞."""
    x_train, x_test, y3, _ = data
    machine = _fit("fc2", x_train, y3, ridge=0.0)
    with pytest.warns(IllConditionedWarning, match=f"{N_TRAIN} of {2 * N_TRAIN}"):
        twice = _fit("fc2", np.concatenate([x_train, x_train]), np.concatenate([y3, y3]), ridge=0.0)
    assert twice.dropped_directions == N_TRAIN
    for t in (TIME, 4.0):
        _close(twice.at_time(t).logits(x_test), machine.at_time(2 * t).logits(x_test), 1e-10)
    _close(twice.at_time(math.inf).logits(x_test), machine.at_time(math.inf).logits(x_test), 1e-8)


def test_memory_budgets_that_cut_test_blocks_and_training_chunks_change_nothing(data):
    """70 test points under a budget of 4-point training chunks (the last padded) and 64-point test
    blocks (the last padded with 58 copies): logits, loss gradients and the output Jacobian on
    every route equal those of the roomy machine (one block, one chunk). Memory is a plan, not a
    result. 1e-10 of the largest entry."""
    x_train, _, y3, _ = data
    x_test = tiny_data(seed=22, n_test=70)[1]
    labels = np.resize(y3, 70)
    machine = _fit("fc2", x_train, y3)
    small = dataclasses.replace(machine, memory_budget=FC_BUDGET_4)
    assert small._blocks().test == 64 and small._blocks().train == 4  # the precondition: both cut
    assert machine._blocks().test >= 70 and machine._blocks().train == N_TRAIN
    for got, want in zip(_outputs(small, x_test, labels), _outputs(machine, x_test, labels), strict=True):
        _close(got, want, 1e-10)
    for route in ("cotangents", "pairs"):
        _close(small.output_jacobian(x_test, route=route), machine.output_jacobian(x_test), 1e-10)


def test_a_duplicated_training_set_with_a_relative_ridge_is_the_original_with_half_of_it(data):
    """ρ is relative to tr(Θ)/n (module docstring), which duplication leaves unchanged, so the
    duplicated Gram's directions have 2λ + ρ: 2 g_t(2λ + ρ) = (1 − e^{−(2λ+ρ)ηt})/(λ + ρ/2) =
    g_{2t}(λ) with ridge ρ/2. The duplicated machine with relative ridge r at t is the original
    with r/2 at 2t, and at t = ∞ too. A ridge relative to tr(Θ) (no 1/n), or to the wrong n,
    breaks it. 1e-10."""
    x_train, x_test, y3, _ = data
    twice = _fit("fc2", np.concatenate([x_train, x_train]), np.concatenate([y3, y3]), ridge=RIDGE)
    assert twice.dropped_directions == 0  # the ridge lifts the duplicates' null space above the cutoff
    half = _fit("fc2", x_train, y3, ridge=RIDGE / 2)
    for t in (TIME, math.inf):
        _close(twice.at_time(t).logits(x_test), half.at_time(2 * t).logits(x_test), 1e-10)


def test_restrictions_to_complementary_eigen_directions_add_up_to_the_machine(data):
    """α_t = Σᵢ g_t(λᵢ) vᵢ vᵢᵀ Y is a sum over eigen-directions (``restricted_to``): the logits,
    output Jacobians and dual coefficients of the restrictions to a set R and to its
    complement add up to the machine's, every index gives the machine back, the restriction
    commutes with ``at_time``, and ``with_dual_coef`` is linear in the weights. 1e-10."""
    x_train, x_test, y3, _ = data
    machine = _fit("fc2", x_train, y3)
    chosen = np.array([11, 0, 4, 7, 2])
    rest = np.setdiff1d(np.arange(N_TRAIN), chosen)
    a, b = machine.restricted_to(chosen), machine.restricted_to(rest)
    _close(np.asarray(a.logits(x_test)) + np.asarray(b.logits(x_test)), machine.logits(x_test), 1e-10)
    _close(np.asarray(a.dual_coef) + np.asarray(b.dual_coef), machine.dual_coef, 1e-10)
    _close(
        np.asarray(a.output_jacobian(x_test)) + np.asarray(b.output_jacobian(x_test)),
        machine.output_jacobian(x_test),
        1e-10,
    )
    _close(machine.restricted_to(np.arange(N_TRAIN)[::-1]).logits(x_test), machine.logits(x_test), 1e-12)
    _close(a.at_time(3.0).logits(x_test), machine.at_time(3.0).restricted_to(chosen).logits(x_test), 1e-12)
    w1, w2 = np.random.default_rng(11).standard_normal((2, N_TRAIN, 4))
    both = np.asarray(machine.with_dual_coef(w1 + w2).logits(x_test))
    _close(
        np.asarray(machine.with_dual_coef(w1).logits(x_test)) + machine.with_dual_coef(w2).logits(x_test), both, 1e-12
    )


# -- eigen-features (eq. 9) and robust-features-only kernels (supp. D.3) --------------------------

THREAT_EPS = 0.1


def _assert_distinct_spectrum(machine) -> None:
    """Eigen-features are defined up to sign only where eigenvalues are simple: the precondition."""
    lam = machine.eigenvalues
    assert np.min(-np.diff(lam)) > 1e-6 * lam[0]


def test_eigen_features_do_not_depend_on_the_order_of_the_training_points(data):
    """f⁽ⁱ⁾(x) = Θ(x, X) vᵢ g_t(λᵢ) vᵢᵀ Y (eq. 9) is even in vᵢ and invariant under a joint
    permutation of X, Y and vᵢ's entries: the feature outputs, their true-class score gradients, the
    weights αᵢ of supp. prop. 1 and the coefficients up to sign are those of the permuted training
    set; the projections pᵢ = Θ(x, X)vᵢ agree up to one sign per feature (the sign of cᵢ). Chosen
    indices in any order give those columns. 1e-9 of the largest entry."""
    from ntkrobust.kernels import feature_coefficients, feature_gradients, feature_outputs, loss_gradient_weights
    from ntkrobust.kernels.features import projection_machine

    x_train, x_test, y3, _ = data
    labels = y3[:N_TEST]
    machine = _fit("fc2", x_train, y3)
    p = np.random.default_rng(2).permutation(N_TRAIN)
    moved = _fit("fc2", x_train[p], y3[p])
    _assert_distinct_spectrum(machine)
    f = feature_outputs(machine, x_test)
    _close(feature_outputs(moved, x_test), f, 1e-9)
    _close(f.sum(axis=1), machine.logits(x_test), 1e-10)  # Σᵢ f⁽ⁱ⁾ = f_t (features docstring)
    picked = np.array([7, 0, 12, 3])
    _close(feature_outputs(moved, x_test, picked), f[:, picked], 1e-9)
    _close(feature_gradients(moved, x_test, labels, picked), feature_gradients(machine, x_test, labels, picked), 1e-9)
    weights = loss_gradient_weights(machine, x_test, labels, picked)
    np.testing.assert_allclose(loss_gradient_weights(moved, x_test, labels, picked), weights, rtol=1e-7)
    c, c_moved = feature_coefficients(machine), feature_coefficients(moved)
    signs = np.sign(np.sum(c * c_moved, axis=1))
    _close(c_moved, c * signs[:, None], 1e-9)
    proj = np.asarray(projection_machine(machine).logits(x_test))
    _close(projection_machine(moved).logits(x_test), proj * signs[None, :], 1e-9)


def _scores(machine, x, labels, **kw) -> np.ndarray:
    """(usefulness, robustness) of every feature under FGSM, stacked (2, n)."""
    from ntkrobust.attacks import ThreatModel
    from ntkrobust.kernels import feature_scores

    s = feature_scores(machine, x, labels, ThreatModel("linf", THREAT_EPS), n_features=machine.n_train, **kw)
    return np.stack([s.usefulness, s.robustness])


@pytest.mark.parametrize("route", ["dots", "jacobian"])
def test_feature_scores_are_counts_over_points_in_any_order_and_class_order(route, data):
    """Usefulness and robustness (supp. A eq. 1-2) are shares of test points: permuting the test
    points, permuting the training points (the features are the same, see above), or swapping a
    binary task's classes (y and every f⁽ⁱ⁾ change sign together, so the loss softplus(−y f), its
    FGSM point and every decision are unchanged) gives the same scores, on both routes, which
    equal each other ("the same scores", ``feature_scores``). Exact: counts of decisions."""
    x_train, x_test, _, y2 = data
    labels = y2[:N_TEST]
    machine = _fit("fc2", x_train, y2, classes=(5, 9))
    want = _scores(machine, x_test, labels, route=route)
    assert want[0].max() > 0 and want[1].max() > 0  # the counts are not all zero
    q = np.random.default_rng(3).permutation(N_TEST)
    np.testing.assert_array_equal(_scores(machine, x_test[q], labels[q], route=route), want)
    p = np.random.default_rng(4).permutation(N_TRAIN)
    moved = _fit("fc2", x_train[p], y2[p], classes=(5, 9))
    np.testing.assert_array_equal(_scores(moved, x_test, labels, route=route), want)
    swapped = _fit("fc2", x_train, y2, classes=(9, 5))
    np.testing.assert_array_equal(_scores(swapped, x_test, labels, route=route), want)
    other = "jacobian" if route == "dots" else "dots"
    np.testing.assert_array_equal(_scores(machine, x_test, labels, route=other), want)


def test_robust_only_kernels_depend_on_the_set_of_kept_features_not_their_order(data):
    """f'_r = Σ_{i∈R_r} f⁽ⁱ⁾ (supp. D.3) depends on the set R_r of the first r indices of the
    ranking only: rankings that order the same first r indices differently give the same result
    for that r, exactly. With r = n, f'_r is the full machine: its own attacks are the transferred
    ones, so fgsm_own = fgsm_transfer and pgd_own = pgd_transfer, and clean is the machine's
    accuracy."""
    from ntkrobust.attacks import ThreatModel, robust_accuracy
    from ntkrobust.kernels import robust_only_kernels

    x_train, x_test, y3, _ = data
    labels = y3[:N_TEST]
    machine = _fit("fc2", x_train, y3)
    threat = ThreatModel("linf", THREAT_EPS)
    kw = {"pgd_step": 0.04, "pgd_steps": 2, "seed": 5}
    ranking = np.random.default_rng(6).permutation(N_TRAIN)
    reordered = ranking.copy()
    reordered[:5] = ranking[:5][::-1]
    first = robust_only_kernels(machine, ranking, [5, N_TRAIN], x_test, labels, threat, **kw)
    second = robust_only_kernels(machine, reordered, [5, N_TRAIN], x_test, labels, threat, **kw)
    assert [r.as_dict() for r in first] == [r.as_dict() for r in second]
    whole = first[1]
    assert whole.fgsm_own == whole.fgsm_transfer and whole.pgd_own == whole.pgd_transfer
    assert whole.clean == robust_accuracy(machine.predict(x_test), labels)


def test_features_of_a_restricted_machine_are_those_features_of_the_machine(data):
    """A machine restricted to eigen-directions R (``restricted_to``: sorted, features numbered by
    their position among R) has the features f⁽ⁱ⁾ of those directions, each with its own g_t(λᵢ):
    by default (all of its features) they are the machine's features R, their coefficients those
    rows, and they sum to the restricted machine's logits ("Σᵢ f⁽ⁱ⁾ = f_t for any machine", the
    features docstring; supp. D.3's f'_r is the sum of its features). 1e-10.

    Failed before the fix: the default feature indices were ``arange(n_train)``, checked against
    the r < n eigenvalues of a restricted machine, so the defaults raised ValueError
    (``kernels.features._indices`` and ``feature_scores``' bound now count the machine's
    eigen-directions)."""
    from ntkrobust.attacks import ThreatModel
    from ntkrobust.kernels import feature_coefficients, feature_outputs, feature_scores

    x_train, x_test, y3, _ = data
    machine = _fit("fc2", x_train, y3)
    chosen = np.array([9, 1, 5, 12])
    kept = np.sort(chosen)
    restricted = machine.restricted_to(chosen)
    got = feature_outputs(restricted, x_test)
    _close(got, feature_outputs(machine, x_test, kept), 1e-10)
    _close(got.sum(axis=1), restricted.logits(x_test), 1e-10)
    _close(feature_coefficients(restricted), feature_coefficients(machine, kept), 1e-12)
    threat = ThreatModel("linf", THREAT_EPS)
    scores = feature_scores(restricted, x_test, y3[:N_TEST], threat, n_features=len(kept))
    whole = feature_scores(machine, x_test, y3[:N_TEST], threat, n_features=N_TRAIN)
    np.testing.assert_array_equal(scores.usefulness, whole.usefulness[kept])
    np.testing.assert_array_equal(scores.robustness, whole.robustness[kept])


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_feature_scores_are_per_feature_and_per_point_whatever_the_blocks(attack, data, monkeypatch):
    """Each (example, feature) pair is scored on its own (``feature_scores``; PGD's start drawn per
    example for the whole set): scoring the first 5 features gives the first 5 of scoring all, and
    budgets that cut the 40 examples into blocks (19-point blocks on the dots route, 3-point blocks
    on the Jacobian route) give the same counts as one block. Exact: counts of decisions."""
    from ntkrobust.attacks import ThreatModel
    from ntkrobust.kernels import features
    from ntkrobust.kernels.gram import entries_within_budget

    x_train, _, y3, _ = data
    x_test = tiny_data(seed=23, n_test=40)[1]
    labels = np.resize(y3, 40)
    machine = _fit("fc2", x_train, y3)
    kw = {"attack": attack} | ({"step": 0.04, "steps": 2, "seed": 3} if attack == "pgd" else {})
    threat = ThreatModel("linf", THREAT_EPS)
    small = dataclasses.replace(machine, memory_budget=FC_BUDGET_4)
    assert entries_within_budget(machine.arch, (1, 12), FC_BUDGET_4) // N_TRAIN < 40  # the precondition
    for route in ("dots", "jacobian"):
        want = _scores(machine, x_test, labels, route=route, **kw)
        assert want[1].max() > 0
        few = features.feature_scores(machine, x_test, labels, threat, n_features=5, route=route, **kw)
        np.testing.assert_array_equal(np.stack([few.usefulness, few.robustness]), want[:, :5])
        if route == "dots":
            np.testing.assert_array_equal(_scores(small, x_test, labels, route=route, **kw), want)
        else:
            monkeypatch.setattr(features, "_JACOBIAN_BUDGET", 3 * N_TRAIN * 12 * 8)
            np.testing.assert_array_equal(_scores(machine, x_test, labels, route=route, **kw), want)


# -- the empirical NTK of torch nets (bridge.entk) ------------------------------------------------

NETS = {"fc2": ((1, 4, 4), 12), "conv1": ((1, 5, 5), 3)}  # name: (input shape, width); dense and conv routes


def _net(name: str):
    from ntkrobust.bridge.models import build_model, model_config

    shape, width = NETS[name]
    model = build_model(model_config(name, shape, C3, width=width, seed=3)).double().eval()
    generator = torch.Generator().manual_seed(4)
    x1, x2 = torch.rand(6, *shape, generator=generator), torch.rand(4, *shape, generator=generator)
    return model, x1.double(), x2.double()


def _entk(model, x1, x2=None, kind="full"):
    from ntkrobust.bridge.entk import empirical_ntk

    return empirical_ntk(model, x1, x2, kind=kind, dtype=torch.float64)


@pytest.mark.parametrize("name", list(NETS))
def test_entk_permutes_with_its_points_and_transposes_with_its_arguments(name):
    """Θ_{cd}(x, x′) = ∇θ f_c(x)·∇θ f_d(x′) (``bridge.entk``) is per pair of points: permuting x1
    and x2 permutes the kernel's point axes (every kind); swapping x1 and x2 transposes both the
    point and the output axes (Θ_{cd}(x, x′) = Θ_{dc}(x′, x)); and Θ(x) of one set (from the block
    triangle, each Jacobian once) equals Θ(x, x) with the set given twice (the general route).
    1e-11 relative (float64, summation order only)."""
    model, x1, x2 = _net(name)
    p, q = np.random.default_rng(7).permutation(6), np.random.default_rng(8).permutation(4)
    for kind in ("full", "class-blocks", "trace"):
        k12 = _entk(model, x1, x2, kind)
        _close(_entk(model, x1[p], x2[q], kind), k12[p][:, q], 1e-11)
        swapped = _entk(model, x2, x1, kind)
        axes = {"full": (1, 0, 3, 2), "class-blocks": (1, 0, 2), "trace": (1, 0)}[kind]
        _close(swapped, k12.transpose(axes), 1e-11)
        k11 = _entk(model, x1, kind=kind)
        _close(_entk(model, x1[p], kind=kind), k11[p][:, p], 1e-11)
        _close(_entk(model, x1, x1.clone(), kind), k11, 1e-11)


class _PermutedOutputs(torch.nn.Module):
    """A net whose output c is output σ[c] of ``model``."""

    def __init__(self, model: torch.nn.Module, sigma: np.ndarray):
        super().__init__()
        self.inner, self.sigma = model, torch.as_tensor(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[:, self.sigma]


def test_permuting_a_nets_outputs_permutes_the_class_axes_and_relabels_the_specialization():
    """Output c of the new net is output σ[c] of the old, so Θ′_{cd} = Θ_{σ[c]σ[d]}: the full
    kernel's class axes and the class blocks are permuted by σ, the trace kernel (a mean over
    classes) is unchanged, and with the labels renamed alike (class σ[c] → c) the specialization
    matrix is permuted (KSM′[c, d] = KSM[σ[c], σ[d]]) and its mean kept (LOO sec. 3). 1e-11."""
    model, x1, _ = _net("fc2")
    sigma = np.array([2, 0, 1])
    permuted = _PermutedOutputs(model, sigma)
    full = _entk(model, x1)
    _close(_entk(permuted, x1), full[:, :, sigma][:, :, :, sigma], 1e-11)
    blocks = _entk(model, x1, kind="class-blocks")
    _close(_entk(permuted, x1, kind="class-blocks"), blocks[:, :, sigma], 1e-11)
    _close(_entk(permuted, x1, kind="trace"), _entk(model, x1, kind="trace"), 1e-11)
    labels = np.array([0, 1, 2, 2, 1, 0])
    renamed = np.argsort(sigma)[labels]  # the old class σ[c] is the new class c
    ksm = metrics.specialization_matrix(full, labels)
    new_ksm = metrics.specialization_matrix(_entk(permuted, x1, kind="class-blocks"), renamed)
    np.testing.assert_allclose(new_ksm, ksm[np.ix_(sigma, sigma)], rtol=1e-10)


@pytest.mark.parametrize("name", list(NETS))
def test_the_entk_kinds_are_views_of_one_full_kernel(name):
    """``class-blocks`` is the diagonal of the full kernel's class axes, ``trace`` their mean and
    ``class:c`` one block (``bridge.entk`` kinds): computed separately, they agree with the full
    kernel, and ``kernel_metrics`` of the full, class-blocks and trace kinds agree where defined.
    1e-11 relative."""
    model, x1, _ = _net(name)
    full = _entk(model, x1)
    blocks = _entk(model, x1, kind="class-blocks")
    _close(blocks, np.einsum("nmcc->nmc", full), 1e-11)
    _close(_entk(model, x1, kind="trace"), np.einsum("nmcc->nm", full) / C3, 1e-11)
    for c in range(C3):
        _close(_entk(model, x1, kind=f"class:{c}"), full[:, :, c, c], 1e-11)
    labels = np.array([0, 1, 2, 2, 1, 0])
    want = metrics.kernel_metrics(full, labels, top=(1, 3))
    for kernel in (blocks, _entk(model, x1, kind="trace")):
        for key, value in metrics.kernel_metrics(kernel, labels, top=(1, 3)).items():
            np.testing.assert_allclose(value, want[key], rtol=1e-9, atol=1e-12, err_msg=key)
