"""Mutation audit of the Taylor attacks (Tsilivis & Kempe supp. eq. 16, 20, 22).

Independent routes: a plain per-example numpy loop over the equations (no masks, no batched
argmax), hand-picked Jacobians where the ℓ1 and ℓ2 rules pick different classes, and linear
multiclass models, where the first-order expansion is exact and the output gains can be read
off the outputs themselves.
"""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.attacks import taylor_max_l1, taylor_sum


def _reference(z, x, target, eps, norm, variant):
    """Eq. 16 / 20 / 22 one example at a time, written from the supplement."""
    out = np.empty_like(x)
    k = z.shape[1]
    for b in range(len(x)):
        zb = z[b].reshape(k, -1)
        if k == 1:  # eq. 16: η = −ε·y·d(z), y = ±1
            g = -(2 * target[b] - 1) * zb[0]
        else:
            rows = [r for r in range(k) if r != target[b]]
            deltas = {r: zb[r] - zb[target[b]] for r in rows}
            if variant == "sum":  # eq. 22
                g = sum(deltas[r] for r in rows)
            else:  # eq. 20 (ℓ∞: ‖·‖₁ picks r; ℓ2: ‖·‖₂)
                size = (lambda v: np.abs(v).sum()) if norm == "linf" else np.linalg.norm
                g = deltas[max(rows, key=lambda r: size(deltas[r]))]
        d = np.sign(g) if norm == "linf" else g / np.linalg.norm(g)
        out[b] = np.clip(x[b] + eps * d.reshape(x.shape[1:]), 0, 1)
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("k", [1, 4])
def test_taylor_attacks_are_the_per_example_equations(norm, k):
    """Random Jacobians with non-zero z_{r*} (a true-class row of 0 hid a step along z_r instead
    of z_r − z_{r*}) and a different true class in every row (a batch of one hid a label column
    applied to the whole batch, and one row's pick used for all)."""
    rng = np.random.default_rng(5)
    batch = 8
    x = rng.uniform(0, 1, size=(batch, 1, 3, 3))
    z = rng.standard_normal((batch, k, 1, 3, 3))
    target = rng.permutation(np.arange(batch) % (2 if k == 1 else k))
    eps = 0.1 if norm == "linf" else 0.4
    for attack, variant in ((taylor_max_l1, "max-l1"), (taylor_sum, "sum")):
        want = _reference(z, x, target, eps, norm, variant)
        np.testing.assert_allclose(attack(lambda _: z, x, target, eps=eps, norm=norm), want, rtol=0, atol=1e-12)


def test_the_l1_and_l2_rules_pick_different_classes():
    """Hand-made: z_1 − z_0 = (1, 1, 1, 1) has ‖·‖₁ = 4, ‖·‖₂ = 2; z_2 − z_0 = (3, 0, 0, 0) has 3
    and 3. ℓ∞ (eq. 20) pushes along sign(1, 1, 1, 1); ℓ2 along (1, 0, 0, 0)."""
    z0 = np.array([0.2, -0.1, 0.3, 0.0])
    z = np.stack([z0, z0 + 1.0, z0 + np.array([3.0, 0, 0, 0])]).reshape(1, 3, 1, 2, 2)
    x = np.full((1, 1, 2, 2), 0.5)
    target = np.array([0])
    np.testing.assert_allclose(taylor_max_l1(lambda _: z, x, target, eps=0.1), x + 0.1, atol=1e-12)
    got = taylor_max_l1(lambda _: z, x, target, eps=0.2, norm="l2")
    np.testing.assert_allclose(got, x + np.array([0.2, 0, 0, 0]).reshape(1, 1, 2, 2), atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_on_a_linear_model_max_l1_raises_the_best_wrong_margin_by_eps_times_its_dual_norm(norm):
    """For f(x) = W x + c the expansion is exact, z_r = W_r for every x. Read off the outputs
    alone: the largest margin gain max_r [(f_r − f_{r*})(x̃) − (f_r − f_{r*})(x)] over wrong classes
    equals ε·max_r ‖W_r − W_{r*}‖ (‖·‖₁ for ℓ∞, ‖·‖₂ for ℓ2), the most any single wrong class can
    gain in the ball; eq. 22's step raises the summed wrong margins by ε‖Σ_r (W_r − W_{r*})‖."""
    rng = np.random.default_rng(9)
    k, batch = 5, 6
    w = rng.standard_normal((k, 16))
    x = rng.uniform(0.35, 0.65, size=(batch, 1, 4, 4))  # x ± ε stays in [0, 1]
    target = np.array([0, 1, 2, 3, 4, 2])
    eps = 0.1 if norm == "linf" else 0.3
    outputs = lambda a: a.reshape(batch, -1) @ w.T + 0.5  # noqa: E731
    jacobian = lambda a: np.broadcast_to(w.reshape(1, k, 1, 4, 4), (len(a), k, 1, 4, 4))  # noqa: E731
    size = (lambda v: np.abs(v).sum(-1)) if norm == "linf" else (lambda v: np.linalg.norm(v, axis=-1))
    rows = np.arange(batch)
    wrong = np.ones((batch, k), dtype=bool)
    wrong[rows, target] = False

    def margins(a):
        f = outputs(a)
        return f - f[rows, target][:, None]

    gain = margins(taylor_max_l1(jacobian, x, target, eps=eps, norm=norm)) - margins(x)
    best = np.where(wrong, size(w[None] - w[target][:, None]), -np.inf).max(1)
    np.testing.assert_allclose(np.where(wrong, gain, -np.inf).max(1), eps * best, rtol=1e-10)
    gain = margins(taylor_sum(jacobian, x, target, eps=eps, norm=norm)) - margins(x)
    summed = (w[None] - w[target][:, None]).sum(1)
    np.testing.assert_allclose(gain.sum(1), eps * size(summed), rtol=1e-10)


def test_a_float64_jacobian_keeps_float32_images_float32():
    x = np.random.default_rng(0).uniform(size=(2, 1, 2, 2)).astype(np.float32)
    z = np.random.default_rng(1).standard_normal((2, 3, 1, 2, 2))
    for attack in (taylor_max_l1, taylor_sum):
        for norm in ("linf", "l2"):
            assert attack(lambda _: z, x, np.array([0, 2]), eps=0.1, norm=norm).dtype == np.float32


def test_a_target_index_of_k_is_refused():
    z = np.ones((1, 3, 1, 2, 2))
    with pytest.raises(ValueError, match=r"target_index must lie in \[0, 3\)"):
        taylor_sum(lambda _: z, np.full((1, 1, 2, 2), 0.5), np.array([3]), eps=0.1)
