"""Tenth-round mutation audit of ``bridge.transfer``, ``bridge.surrogate``,
``bridge.temporal_ensembling`` and ``bridge.augment``: the gaps the earlier audits left.

Independent routes, one per test: hand counts on a two-pixel net with a BatchNorm layer whose eval
output is readable from the input (class 0 iff x₀ − 0.4 > x₁), so that a net left in train mode
predicts from batch statistics and moves its running statistics; numpy's linear quantile written
out (h = (n − 1)·p); diagonal Grams (given, or the exact NTK δ_ab x·x' of a bias-free linear net on
orthogonal inputs) whose eigenvalues sit on either side of the documented cut-off N·C·eps·λmax, or
are exactly 0 under a ridge, solved by hand; explicit ``jacrev`` Jacobians of the trainable
parameters of a net with a frozen layer; the TE ramp written out with math; the crop's size
check at its boundary (MIN_SIDE = 16) in height and width."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_transfer_audit import OWN, SOURCE, X, Y, _images  # the same five points and attacks
from torch.func import functional_call, jacrev

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge.augment import CROP_PADDING, MIN_SIDE, check_augmentation
from ntkrobust.bridge.models import model_config
from ntkrobust.bridge.surrogate import (
    dual_coefficients,
    empirical_gram,
    fit_empirical_kernel_machine,
    initial_networks,
)
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble
from ntkrobust.bridge.transfer import cosine_summary, evaluate_target, white_box_examples

# --- transfer: the net is evaluated and attacked in eval mode, and left untouched ----------------


def _bn_net() -> torch.nn.Module:
    """Flatten, then BatchNorm1d(2) (no affine) with running mean (0.4, 0) and variance 1: in eval
    mode the logits are (x₀ − 0.4, x₁)/√(1 + 1e-5), class 0 iff x₀ − 0.4 > x₁. In train mode the
    batch's own statistics decide, and every forward pass moves the running statistics."""
    norm = torch.nn.BatchNorm1d(2, affine=False)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.4, 0.0]))
        norm.running_var.fill_(1.0)
    return torch.nn.Sequential(torch.nn.Flatten(), norm).double()


# Hand counts with the eval-mode rule x₀ − 0.4 > x₁ (1 = correct):
#   point            0  1  2  3  4
#   clean            1  1  1  1  0     Acc_b = 4/5
#   own              0  0  1  1  0     still correct 2/5
#   source           0  1  1  1  0     still correct 3/5
#   random           1  0  1  1  (1)   still correct 3/5 (point 4 is wrong clean)
RANDOM = _images([(0.9, 0.1), (0.3, 0.8), (0.6, 0.7), (0.6, 0.4), (0.9, 0.1)])


def _running(net: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for b in net.buffers()]


def test_evaluate_target_counts_a_train_mode_net_in_eval_mode_without_moving_its_statistics():
    """Given all examples (no attack run), ``evaluate_target`` must still predict in eval mode: in
    train mode the batch statistics change predictions (clean 3/5 here) and the running mean moves."""
    net = _bn_net().train()
    before = _running(net)
    result = evaluate_target(
        net, X, Y, AttackSpec("fgsm", eps=0.05), {"source": SOURCE}, random_examples=RANDOM, own_examples=OWN
    )
    assert result.clean_accuracy == pytest.approx(4 / 5)
    assert result.white_box_accuracy == pytest.approx(2 / 5)
    assert result.random_accuracy == pytest.approx(3 / 5)
    assert result.sources == pytest.approx({"source": 3 / 5})
    assert result.transferability()["source"] == pytest.approx((4 / 5 - 3 / 5) / (4 / 5 - 2 / 5))
    assert not net.training
    for old, new in zip(before, _running(net), strict=True):
        assert torch.equal(old, new)


def test_white_box_examples_attack_the_eval_mode_net_and_leave_it_in_eval_mode():
    """FGSM on the eval-mode logits (x₀ − 0.4, x₁)/s: the cross-entropy's input gradient has sign
    (−1, +1) for class 0 and (+1, −1) for class 1, so every pixel moves by ε against the label; the
    net handed over in train mode comes back in eval mode with its running statistics unmoved."""
    net = _bn_net().train()
    before = _running(net)
    own = white_box_examples(net, X, Y, AttackSpec("fgsm", eps=0.1))
    signs = np.where(Y == 0, 1.0, -1.0)[:, None, None, None] * np.array([-1.0, 1.0])
    np.testing.assert_allclose(own, X + 0.1 * signs, atol=1e-6)
    assert not net.training
    for old, new in zip(before, _running(net), strict=True):
        assert torch.equal(old, new)


def test_cosine_quartiles_interpolate_linearly_between_order_statistics():
    """Four finite values, where the quartiles fall between order statistics: numpy's default
    (linear) quantile at p is v[⌊h⌋] + (h − ⌊h⌋)(v[⌊h⌋ + 1] − v[⌊h⌋]), h = (n − 1)·p, written out."""
    values = np.array([4.0, np.nan, 0.0, 2.0, 1.0])
    ordered = np.sort(values[np.isfinite(values)])

    def linear(p: float) -> float:
        h = (len(ordered) - 1) * p
        low = math.floor(h)
        return ordered[low] + (h - low) * (ordered[min(low + 1, len(ordered) - 1)] - ordered[low])

    assert (linear(0.25), linear(0.5), linear(0.75)) == (0.75, 1.5, 2.5)
    summary = cosine_summary(values)
    assert summary == pytest.approx({"mean": 7 / 4, "median": 1.5, "q25": 0.75, "q75": 2.5}, rel=1e-15)


# --- surrogate: the pseudo-inverse's cut-off is N·C·eps·λmax ------------------------------------


@pytest.mark.parametrize(("small", "kept"), [(2.5, False), (8.0, True)])
def test_dual_coefficients_drop_eigenvalues_at_most_nc_eps_times_the_largest(small, kept):
    """A diagonal (N·C) x (N·C) = 4 x 4 matrix (eigenvalues exact) with one eigenvalue of
    ``small``·eps: below N·C·eps·λmax = 4·eps it is singular to working precision (the docstring),
    so the least-norm solution leaves its coefficient 0; above it the plain solve gives Y/λ."""
    eps = np.finfo(np.float64).eps
    diagonal = np.array([1.0, 0.5, 0.25, small * eps])  # order (i, a): (0,0), (0,1), (1,0), (1,1)
    gram = np.diag(diagonal).reshape(2, 2, 2, 2).transpose(0, 2, 1, 3)  # entry ((i, a), (j, b)) → [i, j, a, b]
    targets = np.eye(2)  # vec(Y) = (1, 0, 0, 1)
    alpha = dual_coefficients(gram, targets)
    expected_last = 1.0 / (small * eps) if kept else 0.0
    np.testing.assert_allclose(alpha.reshape(-1), [1.0, 0.0, 0.0, expected_last], rtol=1e-12, atol=0)


def _fc1_networks(count: int = 1) -> list[torch.nn.Module]:
    return initial_networks(model_config("fc1", (1, 8, 8), 3, width=8, seed=6), count)


def test_the_numerical_rank_counts_the_ridged_eigenvalues():
    """X with its first point twice: Θ̄(X, X) has C zero eigenvalues, but the fit_info's rank is that
    of the solved matrix Θ̄ + ρ·I (the KernelFit comment): with ρ = 0.1·tr/(N·C) every eigenvalue
    plus ρ is at least ρ, far above N·C·eps·(λmax + ρ), so the rank is the full N·C = 18."""
    rng = np.random.default_rng(3)
    x_train = rng.uniform(0, 1, size=(6, 1, 8, 8)).astype(np.float32)
    x_train[-1] = x_train[0]
    y = np.array([0, 1, 2, 1, 2, 0])
    machine = fit_empirical_kernel_machine(_fc1_networks(), x_train, y, 3, ridge=0.1, module_dtype=torch.float64)
    info = machine.fit_info
    assert info is not None and info.eigenvalue_min is not None and info.eigenvalue_max is not None
    assert abs(info.eigenvalue_min) < 1e-12 * info.eigenvalue_max  # the repeated point: singular
    assert info.ridge_absolute > 1e-3 * info.eigenvalue_max
    assert info.numerical_rank == 18
    shift = info.ridge_absolute
    expected = (info.eigenvalue_max + shift) / (info.eigenvalue_min + shift)
    assert info.condition_number == pytest.approx(expected, rel=1e-12)


def test_a_class_id_equal_to_num_classes_is_refused_in_one_line():
    """Ids must lie in [0, num_classes): the id C itself is the off-by-one (one-hot has no column C)."""
    x_train = np.zeros((3, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="class ids") as error:
        fit_empirical_kernel_machine(_fc1_networks(), x_train, np.array([0, 1, 3]), 3)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("small", "rank"), [(2.5, 2), (8.0, 4)])
def test_the_numerical_rank_cut_is_nc_eps_times_the_largest_eigenvalue(small, rank):
    """A bias-free linear net f(x) = W x (C = 2 outputs) has the NTK Θ_ab(x, x') = δ_ab x·x'. With the
    orthogonal inputs (1, 0) and (0, √(small·eps)) the (N·C) x (N·C) = 4 x 4 Gram is exactly
    diag(1, 1, small·eps, small·eps): the two small eigenvalues count only above N·C·eps·λmax = 4·eps."""
    eps = np.finfo(np.float64).eps
    x_train = np.array([[1.0, 0.0], [0.0, math.sqrt(small * eps)]]).reshape(2, 1, 1, 2)
    layer = torch.nn.Linear(2, 2, bias=False)
    net = torch.nn.Sequential(torch.nn.Flatten(), layer).double()
    machine = fit_empirical_kernel_machine([net], x_train, np.array([0, 1]), 2, module_dtype=torch.float64)
    info = machine.fit_info
    assert info is not None and info.eigenvalue_max == pytest.approx(1.0, rel=1e-14)
    assert info.eigenvalue_min == pytest.approx(small * eps, rel=1e-6, abs=0)
    assert info.numerical_rank == rank


def test_a_float32_machine_casts_float64_inputs_differentiably():
    """``forward`` casts x to the module's dtype: a float64 batch into the float32 machine gives
    float32 outputs equal to those of the float32 batch, and an input gradient of the input's dtype."""
    rng = np.random.default_rng(4)
    x_train = rng.uniform(0, 1, size=(6, 1, 8, 8)).astype(np.float32)
    machine = fit_empirical_kernel_machine(_fc1_networks(), x_train, np.array([0, 1, 2, 0, 1, 2]), 3)
    x = torch.as_tensor(rng.uniform(0, 1, size=(2, 1, 8, 8)), dtype=torch.float64).requires_grad_(True)
    out = machine(x)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    with torch.no_grad():
        assert torch.equal(out.detach(), machine(x.detach().float()))
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert grad.dtype == torch.float64 and bool(grad.abs().sum() > 0)


def test_networks_with_different_output_counts_are_refused_not_broadcast():
    """A 3-output and a 1-output net: their full Grams (N, N, 3, 3) and (N, N, 1, 1) would broadcast
    in a plain sum; the mean kernel of such nets is meaningless and must be refused."""
    torch.manual_seed(0)
    three = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 3)).double()
    one = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 1)).double()
    x = np.array([[0.2, 0.7], [0.9, 0.1]]).reshape(2, 1, 1, 2)
    assert empirical_gram([three], x).shape == (2, 2, 3, 3)
    with pytest.raises(ValueError, match="disagree"):
        empirical_gram([three, one], x)


# --- augment: the size check's boundary and both sides ------------------------------------------


def test_the_crop_accepts_sides_of_exactly_min_side_and_checks_height_and_width():
    """``check_augmentation``: sides of at least MIN_SIDE = 4·4 = 16 pixels (its message); 16 itself
    passes, 15 in either the height or the width is refused, for grey and colour images."""
    assert (CROP_PADDING, MIN_SIDE) == (4, 16)
    for channels in (1, 3):
        check_augmentation("crop-flip", (channels, 16, 16))
        for shape in ((channels, 15, 16), (channels, 16, 15), (channels, 8, 32), (channels, 32, 8)):
            with pytest.raises(ValueError, match="too small"):
                check_augmentation("crop-flip", shape)
        check_augmentation("none", (channels, 8, 32))


def test_a_net_with_a_frozen_layer_gives_the_kernel_of_its_trainable_parameters():
    """θ is what ``requires_grad`` marks (``bridge.linearized``): with the first layer's weight
    frozen, the machine is the regression of the NTK J Jᵀ over the other parameters only, J by
    ``torch.func.jacrev`` with the frozen weight held fixed (float64; relative 1e-9). The machine
    is in eval mode throughout, as documented, even after ``train()``."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    ).double()
    net[1].weight.requires_grad_(False)
    rng = np.random.default_rng(0)
    x_train, x_test = rng.uniform(0, 1, (4, 1, 2, 2)), rng.uniform(0, 1, (3, 1, 2, 2))
    y = np.array([0, 1, 2, 1])
    machine = fit_empirical_kernel_machine([net], x_train, y, 3, module_dtype=torch.float64)
    trainable = {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in net.named_parameters() if not v.requires_grad}
    assert list(frozen) == ["1.weight"]

    def jacobian(x: np.ndarray) -> np.ndarray:
        inputs = torch.as_tensor(x)
        jac = jacrev(lambda p: functional_call(net, {**p, **frozen}, (inputs,)))(trainable)
        return torch.cat([j.reshape(len(x) * 3, -1) for j in jac.values()], dim=1).numpy()

    train, test = jacobian(x_train), jacobian(x_test)
    alpha = np.linalg.solve(train @ train.T, np.eye(3)[y].reshape(-1))
    assert machine.alpha is not None
    assert np.abs(machine.alpha.reshape(-1) - alpha).max() <= 1e-9 * np.abs(alpha).max()
    expected = (test @ train.T @ alpha).reshape(3, 3)
    with torch.no_grad():
        found = machine(torch.as_tensor(x_test)).numpy()
    assert np.abs(found - expected).max() <= 1e-9 * np.abs(expected).max()
    assert not any(module.training for module in machine.modules())
    machine.train()
    assert not any(module.training for module in machine.modules())


def test_a_ridged_fit_of_an_exactly_singular_gram_by_hand():
    """A bias-free linear net f(x) = W x (C = 2) on the inputs (1, 0) and (0, 0): the Gram is exactly
    diag(1, 1, 0, 0) (the zero input has a zero Jacobian), tr/(N·C) = 1/2, so ρ = 0.5 adds 0.25.
    By hand: α = vec(Y)/(λ + 0.25) = (0.8, 0, 0, 4); train outputs (0.8, 0) and (0, 0): accuracy 1/2,
    max residual 1; the solved matrix's condition (1 + 0.25)/(0 + 0.25) = 5 and rank 4, though
    λmin = 0 (the KernelFit comments: both of the ridged matrix)."""
    x_train = np.array([[1.0, 0.0], [0.0, 0.0]]).reshape(2, 1, 1, 2)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False)).double()
    machine = fit_empirical_kernel_machine([net], x_train, np.array([0, 1]), 2, ridge=0.5, module_dtype=torch.float64)
    assert machine.alpha is not None
    np.testing.assert_allclose(machine.alpha, [[0.8, 0.0], [0.0, 4.0]], rtol=1e-14, atol=0)
    info = machine.fit_info
    assert info is not None
    assert (info.eigenvalue_min, info.eigenvalue_max) == (0.0, pytest.approx(1.0, rel=1e-15))
    assert info.ridge_absolute == pytest.approx(0.25, rel=1e-15)
    assert info.condition_number == pytest.approx(5.0, rel=1e-14)
    assert info.numerical_rank == 4
    assert info.train_accuracy == 0.5 and info.train_max_residual == pytest.approx(1.0, rel=1e-14)


# --- temporal ensembling: the ramp the trainer reads, and when the averages start ----------------


def test_the_ensembles_weight_is_the_ramp_of_its_own_schedule_and_it_starts_at_s():
    """``TemporalEnsemble.weight`` (what the trainer multiplies the regulariser by) against the closed
    form w_max·exp(−5(1 − (e − s)/(E − s))²) on s = 4, E = 8, w_max = 30, written out with math;
    the averages are updated from epoch s on whatever w_max is, 0 included (the module docstring)."""
    ensemble = TemporalEnsemble.empty(3, 2, start=4, end=8, maximum=30.0)
    for epoch in range(11):
        if epoch < 4:
            expected = 0.0
        elif epoch > 8:
            expected = 30.0
        else:
            expected = 30.0 * math.exp(-5.0 * (1.0 - (epoch - 4) / 4) ** 2)
        assert ensemble.weight(epoch) == pytest.approx(expected, rel=1e-14, abs=0)
        assert ensemble.active(epoch) == (epoch >= 4)
    silent = TemporalEnsemble.empty(3, 2, start=4, end=8, maximum=0.0)
    assert [silent.active(e) for e in (3, 4, 9)] == [False, True, True]
    assert silent.weight(9) == 0.0


def test_the_trainer_weights_tes_regulariser_by_the_ramp_of_the_epoch_it_trains(monkeypatch):
    """Four epochs of TE on a tiny net, ramp s = 2, E = 4, w_max = 30: every loss of epoch e gets
    w(e) of the closed form (0 and no targets before s; 30·e^{−5(1−(e−s)/(E−s))²} from s on), so
    the weight is the epoch being trained, not the one before (which would leave epoch s without
    its regulariser) and the targets are there from epoch s on. The loss is recorded on its way in."""
    from torch import nn

    from ntkrobust.bridge import training
    from ntkrobust.bridge.training import TrainConfig, make_optimizer, train_epoch

    seen: list[tuple[int, float, bool]] = []
    real = training.te_loss
    epoch_now = [0]

    def recording(logits, labels, targets, weight):  # type: ignore[no-untyped-def]
        seen.append((epoch_now[0], weight, targets is not None))
        return real(logits, labels, targets, weight)

    monkeypatch.setattr(training, "te_loss", recording)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    x = torch.rand((6, 1, 2, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(6) % 3
    config = TrainConfig(mode="te", epochs=4, te_start=2, te_end=4, te_weight=30.0, batch_size=3, lr=0.1)
    ensemble = TemporalEnsemble.empty(6, 3, 2, 4, maximum=30.0)
    optimizer = make_optimizer(model, config)
    for epoch in range(1, 5):
        epoch_now[0] = epoch
        train_epoch(model, optimizer, x, y, config, epoch, ensemble=ensemble)
    expected = {1: 0.0, 2: 30.0 * math.exp(-5.0), 3: 30.0 * math.exp(-1.25), 4: 30.0}
    assert {e for e, _, _ in seen} == {1, 2, 3, 4}
    for epoch, weight, has_targets in seen:
        assert weight == pytest.approx(expected[epoch], rel=1e-14, abs=0)
        assert has_targets == (epoch >= 2)
