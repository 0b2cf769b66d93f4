"""Eleventh audit of ``kernels.metrics`` and ``bridge.tracking``: the gaps that mutations of the two
modules left in the earlier tests, closed against independent routes.

- Metrics: kernels built from known orthonormal eigenvectors and a chosen spectrum (so the
  effective rank, the concentration and the truncation are known in closed form), the centring
  matrix H = I − 11ᵀ/N written out as a matrix, all in numpy float64.
- Tracking: the net's Jacobian in its parameters from ``torch.autograd.functional.jacobian`` of the
  flattened parameter vector (float64, one call for the whole probe), so that the tracked full kernel
  Θ_cd(x, x′) = ∂f_c(x)/∂θ · ∂f_d(x′)/∂θ, its trace kernel, the Rademacher estimate
  (1/KC) Σ_k (Σ_c v_kc J_c)(Σ_c v_kc J_c)ᵀ (``bridge.entk``'s docstring) and the metrics of the record
  are recomputed without ``bridge.entk``. Modes of the net (train / eval) are read module by module.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from ntkrobust.bridge._entk_plan import rademacher_signs
from ntkrobust.bridge.linearized import LinearizedNetwork
from ntkrobust.bridge.tracking import (
    KernelTracker,
    TrackingConfig,
    batch_statistics,
    clean_accuracy,
    has_batchnorm,
    pgd_accuracy,
    single_value_batchnorms,
)
from ntkrobust.kernels.metrics import (
    UndefinedMetricError,
    centered_alignment,
    effective_rank,
    eigenvalue_concentration,
    eigenvalues,
    kernel_metrics,
    top_eigenspace,
)

CLASSES = 4
EPS, STEP, STEPS = 0.1, 0.04, 4  # moves 2 of the 8 predictions, every class still predicted


def _spectral_kernel(rng: np.random.Generator, spectrum: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """K = V diag(λ) Vᵀ with V a seeded orthonormal basis: (K, V)."""
    v, _ = np.linalg.qr(rng.standard_normal((len(spectrum), len(spectrum))))
    return v @ np.diag(spectrum) @ v.T, v


def _erank(spectrum: list[float]) -> float:
    """exp(−Σ pᵢ log pᵢ), pᵢ = λᵢ / Σ λⱼ over the positive λ (LOO sec. 3), as a plain sum."""
    total = sum(x for x in spectrum if x > 0)
    return math.exp(-sum(x / total * math.log(x / total) for x in spectrum if x > 0))


# -- metrics ---------------------------------------------------------------------------------------


def test_spectral_metrics_of_full_and_class_blocks_kernels_are_those_of_the_trace_kernel(rng):
    """LOO sec. 3: every single-kernel statistic is of K̄ = C⁻¹ Σ_c K_{c,c}. Class blocks
    K_{c,c} = K̄ + D_c with Σ_c D_c = 0 have the trace kernel K̄ of a chosen spectrum, so the
    effective rank, the concentration and the top-k truncation of the full (N, N, C, C) and the
    class-blocks (N, N, C) kernel are known in closed form (N = 5, C = 3: no square reshaping)."""
    spectrum = [4.0, 2.0, 1.0, 0.5, 0.25]
    k_bar, v = _spectral_kernel(rng, spectrum)
    d = [rng.standard_normal((5, 5)) for _ in range(2)]
    d = [x + x.T for x in d]
    blocks = [k_bar + d[0], k_bar + d[1], k_bar - d[0] - d[1]]
    k3 = np.stack(blocks, axis=-1)
    full = rng.standard_normal((5, 5, 3, 3))  # off-diagonal blocks: noise that must not count
    for c in range(3):
        full[:, :, c, c] = blocks[c]
    squares = [x * x for x in spectrum]
    for kernel in (full, k3):
        np.testing.assert_allclose(eigenvalues(kernel), spectrum, rtol=0, atol=1e-12)
        assert effective_rank(kernel) == pytest.approx(_erank(spectrum), rel=1e-12)
        assert eigenvalue_concentration(kernel, 2) == pytest.approx(sum(squares[:2]) / sum(squares), rel=1e-12)
        top2 = sum(spectrum[i] * np.outer(v[:, i], v[:, i]) for i in range(2))
        np.testing.assert_allclose(top_eigenspace(kernel, 2), top2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-20, 1.0, 1e20])
def test_effective_rank_is_scale_free(rng, scale):
    """p_i = λ_i / Σ λ_j does not change when K is scaled: a kernel of tiny entries (an NTK of a
    net with small weights, or one in odd units) has the effective rank of its shape, which an
    absolute cut-off on the eigenvalues would take for a zero kernel."""
    spectrum = [3.0, 1.0, 1.0, 0.5]
    k, _ = _spectral_kernel(rng, spectrum)
    assert effective_rank(scale * k) == pytest.approx(_erank(spectrum), rel=1e-10)


def test_centred_alignment_of_a_kernel_dominated_by_its_constant_mode_is_defined(rng):
    """An NTK is often ~ a large constant plus a small structured part (‖HKH‖ / ‖K‖ ~ 1e-4 here):
    the centred alignment (Cortes et al. 2012) is that of the structured part, not "undefined".
    Reference: H as a matrix, A = ⟨HKH, HYYᵀH⟩_F / (‖HKH‖_F ‖HYYᵀH‖_F)."""
    labels = np.array([0, 1, 2, 0, 1, 2])
    a = rng.standard_normal((6, 6))
    small = a @ a.T
    k = 1e4 * np.ones((6, 6)) + small
    h = np.eye(6) - np.ones((6, 6)) / 6
    y = np.eye(3)[labels]
    kc, tc = h @ k @ h, h @ y @ y.T @ h
    assert 1e-6 < np.linalg.norm(kc) / np.linalg.norm(k) < 1e-3  # the regime this test is about
    expected = np.sum(kc * tc) / (np.linalg.norm(kc) * np.linalg.norm(tc))
    assert centered_alignment(k, labels) == pytest.approx(expected, abs=1e-9)
    assert kernel_metrics(k, labels)["centered_alignment"] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(UndefinedMetricError, match="centred kernel is zero"):
        centered_alignment(1e4 * np.ones((6, 6)), labels)  # only round-off left: undefined


def test_kernel_metrics_refuses_a_class_count_other_than_the_kernels(rng):
    """``num_classes`` names the kernel's output count; a full kernel of 3 classes measured as
    one of 4 is invalid input (docstring: "invalid input raises"), not a specialization matrix of
    the 3 blocks silently reported under another class count."""
    labels = np.array([0, 1, 2, 0, 1, 2])
    full = rng.standard_normal((6, 6, 3, 3))
    assert "mean_specialization" in kernel_metrics(full, labels, num_classes=3)
    with pytest.raises(ValueError, match="num_classes=4 but the kernel has 3 classes"):
        kernel_metrics(full, labels, num_classes=4)
    with pytest.raises(ValueError, match="num_classes=4 but the kernel has 3 classes"):
        kernel_metrics(full[:, :, range(3), range(3)], labels, num_classes=4)


# -- tracking: the kernels against the Jacobian ----------------------------------------------------


def _probe() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(2 * CLASSES, 1, 2, 2, generator=generator), torch.arange(CLASSES).repeat(2)


def _net() -> nn.Module:
    """A tiny MLP whose read-out is the least-squares fit of one-hot targets on its hidden features
    (an untrained net predicts nearly one class, and PGD would change few of its predictions)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, CLASSES))
    x, y = _probe()
    with torch.no_grad():
        features = torch.cat([net[:3](x), torch.ones(len(x), 1)], dim=1)  # (N, 7)
        solution = torch.linalg.lstsq(features, 4 * nn.functional.one_hot(y, CLASSES).float()).solution
        net[3].weight.copy_(solution[:6].T)
        net[3].bias.copy_(solution[6])
    return net.eval()


def _jacobian(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    """(N, C, P) ∂f_c(x_n)/∂θ in float64, by differentiating the outputs of the whole probe in the
    flattened parameter vector (no vmap, no per-example batching, no ``bridge.entk``)."""
    double = copy.deepcopy(net).double()
    names = [name for name, _ in double.named_parameters()]
    shapes = [p.shape for _, p in double.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in double.parameters()])

    def outputs(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [math.prod(s) for s in shapes])
        params = {n: p.reshape(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
        return torch.func.functional_call(double, params, (x.double(),))

    return torch.autograd.functional.jacobian(outputs, flat).numpy()


@pytest.fixture(scope="module")
def tracked_full():
    x, y = _probe()
    net = _net()
    tracker = KernelTracker(x=x, targets=y, num_classes=CLASSES, eps=EPS, step=STEP, steps=STEPS, seed=5, kind="full")
    arrays, record = tracker.track(net)
    return net, x, y, arrays, record


def _metrics_by_hand(full: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Kernel-target alignment A(K̄, YYᵀ), effective rank of K̄ and mean specialization
    C⁻¹ Σ_c KSM(c, c) (LOO sec. 3, RAT sec. 3.1) of a full kernel, from their definitions."""
    c = full.shape[2]
    blocks = [full[:, :, i, i] for i in range(c)]
    k_bar = sum(blocks) / c
    y = np.eye(c)[labels]

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    a = np.array([[cosine(blocks[i], np.outer(y[:, j], y[:, j])) for j in range(c)] for i in range(c)])
    spectrum = np.sort(np.linalg.eigvals((k_bar + k_bar.T) / 2).real)[::-1]
    return {
        "kernel_target_alignment": cosine(k_bar, y @ y.T),
        "effective_rank": _erank(list(spectrum)),
        "mean_specialization": float(np.mean([a[i, i] / a[:, i].mean() for i in range(c)])),
    }


def test_the_tracked_full_kernels_and_their_metrics_are_those_of_the_jacobian(tracked_full):
    """kind="full": the C-NTK is J(x) J(x)ᵀ on the clean probe and the AE-NTK J(x_adv) J(x_adv)ᵀ on
    the stored PGD examples, their trace kernels the mean of the C diagonal blocks, and the record's
    metrics those of these kernels under the targets (clean, adversarial) and under the net's
    predictions on x_adv (adversarial_labels). float32 net, float64 reference: relative 1e-5."""
    net, x, y, arrays, record = tracked_full
    x_adv = torch.from_numpy(arrays["x_adversarial"])
    assert 0.05 < float((x_adv - x).abs().max()) <= EPS + 1e-6  # the AE-NTK is taken at other points
    with torch.no_grad():
        predicted = net(x_adv).numpy().argmax(axis=1)
    assert (predicted != y.numpy()).any()  # adversarial labels that are not the targets
    np.testing.assert_array_equal(arrays["predicted_adversarial"], predicted)
    for key, points, label_sets in (
        ("clean", x, {"clean": y.numpy()}),
        ("adversarial", x_adv, {"adversarial": y.numpy(), "adversarial_labels": predicted}),
    ):
        j = _jacobian(net, points)
        full = np.einsum("ncp,mdp->nmcd", j, j)
        atol = 1e-6 * np.abs(full).max()
        np.testing.assert_allclose(arrays[f"{key}_full"], full, rtol=1e-5, atol=atol, err_msg=key)
        k_bar = sum(full[:, :, c, c] for c in range(CLASSES)) / CLASSES
        np.testing.assert_allclose(arrays[key], k_bar, rtol=1e-5, atol=atol, err_msg=key)
        for name, labels in label_sets.items():
            for metric, value in _metrics_by_hand(full, labels).items():
                assert record[name][metric] == pytest.approx(value, rel=1e-4), (name, metric)
    assert record["adversarial"]["mean_specialization"] != pytest.approx(
        record["adversarial_labels"]["mean_specialization"], rel=1e-3
    )  # the two label sets give different numbers here, so a swap shows


def test_the_tracked_rademacher_estimate_is_the_signed_jacobian_average():
    """kind="rademacher:K": (1/KC) Σ_k (Σ_c v_kc J_c)(Σ_c v_kc J_c)ᵀ with the K seeded sign vectors
    (seed 0, ``bridge.entk``'s docstring), on the clean probe and on the stored PGD examples: the
    1/K and 1/C are in it (a sum instead of the mean is 24 times too large)."""
    x, y = _probe()
    net = _net()
    tracker = KernelTracker(x=x, targets=y, num_classes=CLASSES, eps=EPS, step=STEP, steps=STEPS, kind="rademacher:6")
    arrays, record = tracker.track(net)
    signs = rademacher_signs(6, CLASSES, 0).numpy()  # (K, C)
    for key, points in (("clean", x), ("adversarial", torch.from_numpy(arrays["x_adversarial"]))):
        j = _jacobian(net, points)
        mixed = np.einsum("kc,ncp->knp", signs, j)  # ∇f_v for each draw v
        expected = np.einsum("knp,kmp->nm", mixed, mixed) / (6 * CLASSES)
        np.testing.assert_allclose(arrays[key], expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max(), err_msg=key)
        exact = np.einsum("ncp,mcp->nm", j, j) / CLASSES
        assert np.abs(expected - exact).max() > 1e-3 * np.abs(exact).max()  # an estimate, not the exact trace
    assert "mean_specialization" not in record["clean"]


# -- tracking: the modes the evaluations leave behind -----------------------------------------------


def _bn_dropout_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.2), nn.ReLU(), nn.Linear(6, CLASSES)
    )


def _modes(net: nn.Module) -> list[bool]:
    return [module.training for module in net.modules()]


@pytest.mark.parametrize("batchnorm", ["running", "batch"])
@pytest.mark.parametrize("training", [True, False])
def test_evaluations_and_tracking_give_the_net_its_mode_back(batchnorm, training):
    """A run that tracks every k steps evaluates in the middle of an epoch and trains on: the
    accuracy, the PGD accuracy, the tracker and ``batch_statistics`` put the net in eval mode (or
    BatchNorm-only train mode) for themselves and leave every module (Dropout, BatchNorm) in the
    mode the net had, BatchNorm momentum included."""
    x, y = _probe()
    net = _bn_dropout_net().train(training)
    before = _modes(net)
    assert all(mode is training for mode in before)
    clean_accuracy(net, x, y, batchnorm=batchnorm)
    assert _modes(net) == before
    pgd_accuracy(net, x, y, TrackingConfig(eps=0.1, step=0.05, steps=2).attack(0), batchnorm=batchnorm)
    assert _modes(net) == before
    KernelTracker(x=x, targets=y, num_classes=CLASSES, eps=0.1, step=0.05, steps=2, batchnorm=batchnorm).track(net)
    assert _modes(net) == before
    with batch_statistics(net) as inside:
        assert not inside.training and not inside[3].training and inside[2].training  # BatchNorm alone in train mode
    assert _modes(net) == before and net[2].momentum == 0.1


def test_single_value_batchnorms_include_a_frozen_parents_norm_without_running_statistics():
    """A BatchNorm without running statistics normalises with the batch's even in eval mode, so
    inside a linearized net's frozen (eval) parent it still needs two values per channel; one
    with running statistics there does not (it is frozen)."""
    torch.manual_seed(0)
    parent = nn.Sequential(
        nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.ReLU(), nn.Linear(6, CLASSES)
    )
    x, _ = _probe()
    assert single_value_batchnorms(LinearizedNetwork(parent), x) == ["parent.2"]
    frozen = copy.deepcopy(parent)
    frozen[2] = nn.BatchNorm1d(6)
    assert single_value_batchnorms(LinearizedNetwork(frozen), x) == []
    assert single_value_batchnorms(frozen, x) == ["2"]  # trained itself: batch statistics


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        (nn.BatchNorm1d(3), True),
        (nn.BatchNorm2d(3), True),
        (nn.BatchNorm3d(3), True),
        (nn.SyncBatchNorm(3), True),
        (nn.LazyBatchNorm1d(), True),
        (nn.GroupNorm(1, 3), False),
        (nn.InstanceNorm2d(3), False),
        (nn.LayerNorm(3), False),
    ],
)
def test_has_batchnorm_sees_every_batchnorm_and_no_other_norm(norm, expected):
    assert has_batchnorm(nn.Sequential(nn.Linear(3, 3), norm)) is expected


def test_a_full_evaluation_needs_its_step_and_its_steps_together():
    """``full_step`` without ``full_steps`` (or the reverse) is refused: either alone would leave a
    full evaluation half-configured (``full_attack`` returns None and the step is unread)."""
    for half in ({"full_step": 0.01}, {"full_steps": 5}):
        with pytest.raises(ValueError, match="a full evaluation needs both its PGD step and its steps"):
            TrackingConfig(eps=0.1, step=0.03, steps=2, **half)
    assert TrackingConfig(eps=0.1, step=0.03, steps=2, full_step=0.01, full_steps=5).full_attack(1) is not None
