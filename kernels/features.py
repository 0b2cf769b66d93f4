"""Eigen-features of a kernel machine: their outputs, gradients, usefulness and robustness.

Tsilivis & Kempe sec. 4, eq. 9 (supp. eq. 31): with Θ(X, X) = Σᵢ λᵢ vᵢ vᵢᵀ (descending),
    f_∞(x) = Σᵢ f⁽ⁱ⁾(x),   f⁽ⁱ⁾(x) = λᵢ⁻¹ Θ(x, X) vᵢ vᵢᵀ Y.
Here every feature carries the machine's spectral filter g_t(λᵢ) in place of λᵢ⁻¹ (the same at
t = ∞ without ridge), so Σᵢ f⁽ⁱ⁾ = f_t for any machine. Each feature is a scalar projection
times a fixed output vector,
    f⁽ⁱ⁾(x) = pᵢ(x) cᵢ,   pᵢ(x) = Θ(x, X) vᵢ,   cᵢ = g_t(λᵢ) vᵢᵀ Y  (k outputs),
so its loss gradient is a scalar times ∇ₓpᵢ(x). Scoring attacks each (example, feature) pair on
its own: for kernels of x·x', ‖x‖², ‖x'‖² (dense nets) ``kernels._feature_rows`` takes each
pair's gradient and its attacked projection from kernel rows indexed by the pair (two GEMMs of
pairs × pixels × training points in all); any other kernel takes every feature's gradient from
one Jacobian of the projections (``KernelMachine.output_jacobian`` with the eigenvectors as
weights) and its attacked projections from the projection machine's logits.

Supp. A, eq. 1-2: a feature's *usefulness* is its accuracy on held-out data; its *robustness*
the accuracy that survives an attack on that feature itself: the share of points classified
correctly both at x and at the attacked point (eq. 2 takes the infimum over a ball that contains
x, so a point the feature already gets wrong is not robust; RobustBench counts the same way).

Supp. prop. 1, eq. 32-33: ∇ₓL(f_∞) = Σᵢ αᵢ ∇ₓL(f⁽ⁱ⁾) with αᵢ = cᵢ·∂L(f_∞) / cᵢ·∂L(f⁽ⁱ⁾), which
is (σ(f_∞) − ŷ)/(σ(f⁽ⁱ⁾) − ŷ) for one output.

Shapes: x (N, C, H, W) in [0, 1]; labels (N,) class ids; m = number of features scored;
outputs (N, m, k); gradients (N, m, C, H, W); scores (m,).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ntkrobust._progress import progress_bar
from ntkrobust.attacks import ThreatModel, check_schedule, fgsm, pgd
from ntkrobust.kernels._feature_rows import counted_steps, fixed_gradient, pair_scores
from ntkrobust.kernels._jax import float64, jnp
from ntkrobust.kernels.machine import KernelMachine, loss_cotangent, predicted_index, spectral_filter
from ntkrobust.kernels.metrics import spearman_correlation

ATTACKS: tuple[str, ...] = ("fgsm", "pgd")

#: Routes of ``feature_scores``: "dots" (pair-indexed kernel rows, for kernels with
#: ``Architecture.dot_kernel_fn``; ``kernels._feature_rows``) and "jacobian" (any kernel).
ROUTES: tuple[str, ...] = ("auto", "dots", "jacobian")

#: Bytes for one block of feature Jacobians (N_block × m × input size, float64).
_JACOBIAN_BUDGET = 256 * 2**20


def _indices(machine: KernelMachine, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    # default: every eigen-direction the machine has (a restricted machine has fewer than n_train)
    idx = np.arange(machine.eigenvalues.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= machine.eigenvalues.shape[0]:
        raise ValueError(f"feature indices must lie in [0, {machine.eigenvalues.shape[0]})")
    return idx


def feature_coefficients(machine: KernelMachine, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """cᵢ = g_t(λᵢ) vᵢᵀ Y for the chosen features, shape (m, k)."""
    idx = _indices(machine, indices)
    g = spectral_filter(
        machine.eigenvalues[idx],
        time=machine.time,
        ridge=machine.ridge,
        learning_rate=machine.learning_rate,
        cutoff=machine.cutoff,
    )
    return g[:, None] * (machine.eigenvectors[:, idx].T @ machine.targets)


def projection_machine(machine: KernelMachine, indices: Sequence[int] | np.ndarray | None = None) -> KernelMachine:
    """The machine whose outputs are the projections pᵢ(x) = Θ(x, X) vᵢ, shape (N, m)."""
    return machine.with_dual_coef(machine.eigenvectors[:, _indices(machine, indices)])


def feature_outputs(
    machine: KernelMachine, x: np.ndarray, indices: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """f⁽ⁱ⁾(x) for the chosen features (default: all of the machine's eigen-directions, n unless
    ``restricted_to``), shape (N, m, k); Σᵢ over all = f_t(x)."""
    idx = _indices(machine, indices)
    p = np.asarray(projection_machine(machine, idx).logits(x), dtype=np.float64)
    return p[:, :, None] * feature_coefficients(machine, idx)[None]


def feature_gradients(
    machine: KernelMachine, x: np.ndarray, labels: np.ndarray, indices: Sequence[int] | np.ndarray
) -> np.ndarray:
    """∇ₓ of each feature's score for the true class, shape (N, m, C, H, W) (TK fig. 2 left, 5).

    The score is y·f⁽ⁱ⁾ (y = ±1) for one output and f⁽ⁱ⁾_y for k outputs: the picture shows
    what, according to feature i, makes x look like its own class.
    """
    idx = _indices(machine, indices)
    c = feature_coefficients(machine, idx)  # (m, k)
    target = machine.target_index(labels)
    if c.shape[1] == 1:
        scale = (2.0 * target - 1.0)[:, None] * c[None, :, 0]  # (N, m)
    else:
        scale = c[:, target].T
    z = np.asarray(projection_machine(machine, idx).output_jacobian(x), dtype=np.float64)
    return z * scale.reshape(*scale.shape, *([1] * (z.ndim - 2)))


@float64
def loss_gradient_weights(
    machine: KernelMachine, x: np.ndarray, labels: np.ndarray, indices: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """αᵢ(x, y) of supp. prop. 1 for the chosen features, shape (N, m).

    ±inf where the feature's own loss gradient vanishes (cᵢ·∂L(f⁽ⁱ⁾) = 0); then αᵢ∇L(f⁽ⁱ⁾) is
    that feature's share cᵢ·∂L(f_∞) ∇pᵢ, which the identity still needs.
    """
    idx = _indices(machine, indices)
    target = jnp.asarray(machine.target_index(labels))
    c = feature_coefficients(machine, idx)
    full = np.asarray(loss_cotangent(jnp.asarray(np.asarray(machine.logits(x), np.float64)), target))  # (N, k)
    f = feature_outputs(machine, x, idx)  # (N, m, k)
    n, m, k = f.shape
    own = np.asarray(loss_cotangent(jnp.asarray(f.reshape(n * m, k)), jnp.repeat(target, m))).reshape(n, m, k)
    numerator = full @ c.T  # (N, m)
    denominator = np.einsum("nmk,mk->nm", own, c)
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator


@dataclass(frozen=True)
class FeatureScores:
    """Usefulness and robustness of features ``index`` (TK fig. 2 right), one entry per feature."""

    index: np.ndarray  # (m,) eigen-index, 0 = largest eigenvalue
    eigenvalue: np.ndarray  # (m,)
    usefulness: np.ndarray  # (m,) held-out accuracy of f⁽ⁱ⁾
    robustness: np.ndarray  # (m,) share correct at x and at the attack on f⁽ⁱ⁾
    chance: float  # share of the most frequent held-out class: the bar for "useful"
    n_examples: int

    def useful(self) -> np.ndarray:
        """Features that beat guessing the most frequent class (supp. A, item 3)."""
        return self.usefulness > self.chance

    def useful_non_robust(self, threshold: float) -> np.ndarray:
        """Useful features whose robustness is at most ``threshold`` (γ ≈ 0 of supp. A)."""
        return self.useful() & (self.robustness <= threshold)

    def spearman_index_robustness(self) -> float:
        """Spearman correlation of eigen-index and robustness (< 0: robustness at the top)."""
        return spearman_correlation(self.index, self.robustness)


@float64
def feature_scores(
    machine: KernelMachine,
    x: np.ndarray,
    labels: np.ndarray,
    threat: ThreatModel,
    *,
    n_features: int = 100,
    attack: str = "fgsm",
    step: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    seed: int = 0,
    progress: bool = False,
    route: str = "auto",
) -> FeatureScores:
    """Score the first ``n_features`` features on held-out (x, labels).

    Robustness attacks each feature on its own loss, with the shared ``attacks.fgsm`` (or
    ``attacks.pgd``, step/steps as there, each example's random start drawn as
    ``craft_adversarial`` draws it for batches of up to 1000). Only the pairs (example, feature) that
    are correct at x are attacked: the others count as non-robust whatever the attack does.
    Routes (the same scores): "dots", for kernels of x·x', ‖x‖², ‖x'‖² (``dot_kernel_fn``),
    takes each attacked pair's gradient and attacked projection from kernel rows indexed by the
    pair (``kernels._feature_rows``); "jacobian", for any kernel, takes every feature's FGSM
    gradient from one projection Jacobian per block of examples. "auto": "dots" where it exists.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown feature attack {attack!r}: choose one of {', '.join(ATTACKS)}")
    if attack == "pgd":
        check_schedule(step, steps)
    if not 1 <= n_features <= machine.eigenvalues.shape[0]:
        raise ValueError(f"n_features must be in [1, {machine.eigenvalues.shape[0]}], got {n_features}")
    if route not in ROUTES or (route == "dots" and machine.arch.dot_kernel_fn is None):
        raise ValueError(f"feature route {route!r} is not available for {machine.arch.name}")
    x = np.asarray(x)
    # the "dots" route reads pixels by the machine's permutation: a wrong shape, a pixel range or
    # NaN there is no error of its own, and the two routes must refuse the same inputs
    if tuple(x.shape[1:]) != machine.input_shape:
        raise ValueError(f"inputs of shape {tuple(x.shape[1:])} do not match training inputs {machine.input_shape}")
    if not x.shape[0] or len(labels) != x.shape[0]:
        raise ValueError(f"need as many labels as inputs, and at least one: got {len(labels)} for {x.shape[0]}")
    threat.check_inputs(x)
    target = machine.target_index(labels)
    idx = np.arange(n_features)
    c = feature_coefficients(machine, idx)  # (m, k)
    # Each example's PGD start, shared by all its features.
    x_start = np.asarray(threat.random_start(x, seed)) if attack == "pgd" and random_start else None
    if route == "dots" or (route == "auto" and machine.arch.dot_kernel_fn is not None):
        correct, robust = pair_scores(
            machine,
            x,
            target,
            c,
            threat,
            attack=attack,
            pgd_step=step,
            pgd_steps=steps,
            starts=x_start,
            progress=progress,
        )
    else:
        correct, robust = _jacobian_route(machine, x, target, c, threat, attack, step, steps, x_start, progress)
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    return FeatureScores(
        index=idx,
        eigenvalue=machine.eigenvalues[idx].copy(),
        usefulness=correct / x.shape[0],
        robustness=robust / x.shape[0],
        chance=float(counts.max() / labels.size),
        n_examples=int(x.shape[0]),
    )


def _jacobian_route(  # type: ignore[no-untyped-def]
    machine: KernelMachine, x, target, c, threat: ThreatModel, attack, step, steps, x_start, progress
) -> tuple[np.ndarray, np.ndarray]:
    """Correct and robust counts per feature for any kernel (supp. A eq. 1-2): FGSM takes every
    feature's gradient from one projection Jacobian per block of examples."""
    n_features = c.shape[0]
    proj = projection_machine(machine, np.arange(n_features))
    correct = np.zeros(n_features)
    robust = np.zeros(n_features)
    per_example = n_features * int(np.prod(x.shape[1:])) * 8
    block = max(1, _JACOBIAN_BUDGET // per_example)
    starts = range(0, x.shape[0], block)
    with progress_bar(len(starts), f"feature {attack}", "block", show=progress) as bar:
        for number, start in enumerate(starts, 1):
            xb, tb = x[start : start + block], target[start : start + block]
            p = np.asarray(proj.logits(xb), dtype=np.float64)  # (B, m)
            hit = predicted_index(p[:, :, None] * c[None]) == tb[:, None]  # (B, m)
            correct += hit.sum(axis=0)
            rows, cols = np.nonzero(hit)
            if rows.size == 0:
                bar.update(1)
                continue
            x_pairs, t_pairs = xb[rows], tb[rows]
            if attack == "fgsm":
                # Gradients of the attacked pairs only: each example's correct features, padded
                # to the longest list with feature 0 (the padding is never read).
                slot = np.arange(rows.size) - np.searchsorted(rows, rows)  # position within its row
                picked = np.zeros((xb.shape[0], slot.max() + 1), dtype=np.int64)
                picked[rows, slot] = cols
                jac = np.asarray(proj.output_jacobian(xb, picked))  # (B, q, C, H, W)
                weight = _loss_weight(p[rows, cols], c[cols], t_pairs)
                grads = jac[rows, slot] * weight.reshape(-1, *([1] * (x.ndim - 1))).astype(x.dtype)
                gradient = functools.partial(fixed_gradient, grads)
                x_adv = fgsm(gradient, x_pairs, t_pairs, eps=threat.eps, norm=threat.norm)
            else:
                assert step is not None
                pairs = f"{rows.size:,}" + (f" in block {number}" if len(starts) > 1 else "")
                x_adv = pgd(
                    counted_steps(_pair_loss_gradient(proj, c, cols), bar, pairs, steps),
                    x_pairs,
                    t_pairs,
                    eps=threat.eps,
                    norm=threat.norm,
                    step=step,
                    steps=steps,
                    start=None if x_start is None else x_start[start : start + block][rows],
                    random_start=False,
                )
            p_adv = _selected(proj, np.asarray(x_adv), cols)
            still = predicted_index(p_adv[:, None] * c[cols]) == t_pairs
            np.add.at(robust, cols, still.astype(np.float64))
            bar.update(1)
    return correct, robust


def _loss_weight(p: np.ndarray, c: np.ndarray, target: np.ndarray) -> np.ndarray:
    """s with ∇ₓL(pᵢ cᵢ) = s ∇ₓpᵢ: cᵢ·∂L/∂f at f = pᵢ cᵢ, for pairs p (P,), c (P, k), target (P,)."""
    cot = np.asarray(loss_cotangent(jnp.asarray(p[:, None] * c), jnp.asarray(target)))
    return np.sum(cot * c, axis=1)


def _selected(proj: KernelMachine, x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """pᵢ(x_q) for feature i = cols[q] of each row q."""
    return np.asarray(proj.logits(x), dtype=np.float64)[np.arange(x.shape[0]), cols]


def _pair_loss_gradient(proj: KernelMachine, c: np.ndarray, cols: np.ndarray):  # type: ignore[no-untyped-def]
    """Loss gradient of (example, feature) pairs at moving points, for PGD: s·∇ₓp_{cols[q]}(x_q)."""

    def loss_gradient(x_: np.ndarray, target: np.ndarray) -> np.ndarray:
        weight = _loss_weight(_selected(proj, x_, cols), c[cols], np.asarray(target))
        g = np.asarray(proj.output_jacobian(x_, cols[:, None]))[:, 0]
        return g * weight.reshape(-1, *([1] * (x_.ndim - 1))).astype(x_.dtype)

    return loss_gradient


def robustness_ranking(scores: FeatureScores, n_train: int) -> np.ndarray:
    """Eigen-indices by robustness (highest first, ties by index), then the unscored ones in order."""
    scored = scores.index[np.lexsort((scores.index, -scores.robustness))]
    rest = np.setdiff1d(np.arange(n_train), scores.index)
    return np.concatenate([scored, rest])


__all__ = [
    "ATTACKS",
    "ROUTES",
    "FeatureScores",
    "feature_coefficients",
    "feature_gradients",
    "feature_outputs",
    "feature_scores",
    "loss_gradient_weights",
    "projection_machine",
    "robustness_ranking",
    "spearman_correlation",
]
