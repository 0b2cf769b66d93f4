"""Mutation audit of the torch attack driver (``bridge.adversarial``), fourth round: each test
fails on a mutation of the driver that survived the earlier tests.

Independent route: a linear net f(x) = W·vec(x) + b in float64, whose softmax cross-entropy has
the closed-form input gradient Wᵀ(softmax f(x) − e_y) per example (written here in numpy), so
that FGSM is clip(x + ε·sign(Wᵀ(p − e_y))) and the gradient of a batch is known row by row.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ntkrobust.bridge.adversarial import adversarial_examples, cross_entropy_gradient, pgd_examples

warnings.filterwarnings("ignore", message="CUDA initialization")

N, CLASSES, SHAPE = 6, 3, (1, 2, 2)


def _linear_net(seed=0):
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, CLASSES)).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.randn((CLASSES, 4), generator=generator, dtype=torch.float64))
        net[1].bias.copy_(0.1 * torch.randn(CLASSES, generator=generator, dtype=torch.float64))
    return net.eval()


def _data(seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand((N, *SHAPE), generator=generator, dtype=torch.float64)
    return x, torch.arange(N) % CLASSES


def _closed_form_gradient(net, x, y):
    """∇ₓ CE(W·vec(x) + b, y) = Wᵀ(softmax − e_y), row by row, in numpy float64."""
    w, b = net[1].weight.detach().numpy(), net[1].bias.detach().numpy()
    logits = x.numpy().reshape(len(x), -1) @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(x)), y.numpy()] -= 1.0
    return (p @ w).reshape(x.shape)


def test_the_gradient_of_a_batch_is_each_examples_own_loss_gradient():
    """``cross_entropy_gradient`` differentiates the loss summed over the batch, so each row is its
    example's own ∇ₓ CE, the closed form here to 1e-12. A mean over the batch shrank every row
    by 1/6 and passed every earlier test (the attacks normalise their steps; the transfer
    study's cosines are scale-free), but not the function's contract."""
    net = _linear_net()
    x, y = _data()
    got = cross_entropy_gradient(net)(x, y)
    np.testing.assert_allclose(got.numpy(), _closed_form_gradient(net, x, y), rtol=1e-12, atol=1e-14)


def test_the_gradient_of_a_one_output_batch_is_each_examples_softplus_gradient():
    """One output f = w·vec(x) + b: the loss softplus(−s f), s = ±1 for label 1 / 0, has the
    closed-form gradient −s·σ(−s f)·w per example (numpy, 1e-12). A mean over the batch passed
    every earlier test, as for the cross-entropy."""
    generator = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.randn((1, 4), generator=generator, dtype=torch.float64))
        net[1].bias.fill_(0.05)
    x, _ = _data()
    y = torch.arange(N) % 2
    got = cross_entropy_gradient(net)(x, y)
    w = net[1].weight.detach().numpy()[0]
    f = x.numpy().reshape(N, -1) @ w + 0.05
    s = 2.0 * y.numpy() - 1.0
    want = (-s / (1.0 + np.exp(s * f)))[:, None] * w
    np.testing.assert_allclose(got.numpy().reshape(N, -1), want, rtol=1e-12, atol=1e-14)


def test_fgsm_is_the_closed_form_step_inside_no_grad_and_leaves_no_parameter_gradient():
    """FGSM of a linear net is clip(x + ε·sign(Wᵀ(p − e_y))) (closed form, 1e-12), also when the
    caller runs it under ``torch.no_grad()`` (an evaluation loop): the driver must switch autograd
    back on for its own input gradient. It takes the gradient in x alone: no parameter's
    ``.grad`` is filled (``loss.backward()`` there accumulated into the net's gradients, which
    the next optimiser step would apply), and the examples carry no autograd graph."""
    net = _linear_net()
    x, y = _data()
    want = np.clip(x.numpy() + 0.1 * np.sign(_closed_form_gradient(net, x, y)), 0, 1)
    got = adversarial_examples(net, x, y, method="fgsm", eps=0.1, batch_size=4)
    with torch.no_grad():
        quiet = adversarial_examples(net, x, y, method="fgsm", eps=0.1, batch_size=4)
    for examples in (got, quiet):
        np.testing.assert_allclose(examples.numpy(), want, rtol=0, atol=1e-12)
        assert not examples.requires_grad and examples.grad_fn is None
    assert all(p.grad is None for p in net.parameters())


def _plain_pgd(net, x, y, eps, step, steps, start):
    """ℓ∞ PGD written plainly: x̃ ← clip(x + clip(x̃ + step·sign ∇CE − x, −ε, ε), 0, 1), autograd."""
    x_adv = start
    for _ in range(steps):
        z = x_adv.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(z), y, reduction="sum")
        x_adv = x_adv + step * torch.autograd.grad(loss, z)[0].sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv


def test_a_spec_pgd_starts_each_batch_from_the_specs_own_seed():
    """``attack_examples`` of a PGD spec with seed 5, in batches of 4 of 6 points: every point
    starts from its row of x + U(−ε, ε) drawn for all 6 at once by numpy's default_rng(5),
    clipped to [0, 1], then takes the plain loop's steps (float64, 1e-12): the batches do not
    change a point's start. A spec whose seed was dropped (every run seeded 0) passed every
    earlier test; ``pgd_examples`` with the same seed gives the same examples."""
    from ntkrobust.attacks import AttackSpec
    from ntkrobust.bridge.adversarial import attack_examples

    net = _linear_net()
    x, y = _data()
    spec = AttackSpec("pgd", 0.1, step=0.04, steps=3, seed=5)
    got = attack_examples(net, x, y, spec, batch_size=4)
    noise = torch.from_numpy(np.random.default_rng(5).uniform(-0.1, 0.1, size=tuple(x.shape)))
    for rows in (slice(0, 4), slice(4, 6)):
        xs, ys = x[rows], y[rows]
        start = (xs + noise[rows]).clamp(0, 1)
        torch.testing.assert_close(got[rows], _plain_pgd(net, xs, ys, 0.1, 0.04, 3, start), rtol=0, atol=1e-12)
    same = pgd_examples(net, x, y, eps=0.1, step=0.04, steps=3, seed=5, batch_size=4)
    torch.testing.assert_close(got, same, rtol=0, atol=0)


class _GradModeSpy(nn.Module):
    """The linear net, recording whether autograd was on at each forward pass."""

    def __init__(self):
        super().__init__()
        self.net = _linear_net()
        self.grad_enabled: list[bool] = []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.net(x)


def test_predictions_are_int64_indices_and_build_no_autograd_graph():
    """``predict`` (int64 output indices: a float tensor compared equal to the argmax and passed
    every earlier test) and ``accuracy`` run their forward passes with autograd off: their results are
    the same either way (an argmax has no gradient), but a forward pass under autograd keeps
    every activation of the batch for a backward pass that never comes (a WideResNet's batch of
    256 on a GPU). The attack's own forwards need autograd on."""
    from ntkrobust.bridge.adversarial import accuracy, predict

    spy = _GradModeSpy().eval()
    x, y = _data()
    predictions = predict(spy, x, batch_size=4)
    # output indices (int64, as the labels), the argmax of W·vec(x) + b written in numpy
    w, b = spy.net[1].weight.detach().numpy(), spy.net[1].bias.detach().numpy()
    assert predictions.dtype == torch.int64
    np.testing.assert_array_equal(predictions.numpy(), (x.numpy().reshape(N, -1) @ w.T + b).argmax(1))
    accuracy(spy, x, y, batch_size=4)
    assert spy.grad_enabled == [False] * 4
    adversarial_examples(spy, x, y, method="fgsm", eps=0.1, batch_size=4)
    assert spy.grad_enabled[4:] == [True] * 2


def _moved_batchnorm_net():
    """The linear net followed by a BatchNorm whose running statistics are far from any batch's
    (mean 1, variance 4), left in train mode as a training loop leaves it: eval-mode and
    train-mode outputs differ, and a train-mode forward moves the running statistics."""
    net = nn.Sequential(*_linear_net(), nn.BatchNorm1d(CLASSES)).double()
    with torch.no_grad():
        net[2].running_mean.fill_(1.0)
        net[2].running_var.fill_(4.0)
        net[2].weight.copy_(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    return net.train()


def test_the_transfer_evaluation_attacks_and_predicts_in_eval_mode():
    """``white_box_examples`` and ``evaluate_target`` (``bridge.transfer``, the driver's callers in
    transfer studies) are handed nets left in train mode. Each must put the net in eval mode
    itself: the white-box examples are the plain FGSM step on an eval-mode copy (1e-12) and the
    clean accuracy is that of the copy's argmax counted here, and the running statistics do not
    move. Either call's ``eval()`` removed (the other one then did not cover it: examples given
    to ``evaluate_target``, or ``white_box_examples`` called alone) passed every earlier test."""
    import copy

    from ntkrobust.attacks import AttackSpec
    from ntkrobust.bridge.transfer import evaluate_target, white_box_examples

    x, y = _data()
    reference = copy.deepcopy(_moved_batchnorm_net()).eval()
    z = x.clone().requires_grad_(True)
    gradient = torch.autograd.grad(torch.nn.functional.cross_entropy(reference(z), y, reduction="sum"), z)[0]
    want = (x + 0.1 * gradient.sign()).clamp(0, 1).numpy()
    with torch.no_grad():
        clean_accuracy = float((reference(x).argmax(1) == y).double().mean())
    spec = AttackSpec("fgsm", eps=0.1)

    net = _moved_batchnorm_net()
    np.testing.assert_allclose(white_box_examples(net, x.numpy(), y.numpy(), spec), want, rtol=0, atol=1e-12)
    assert int(net[2].num_batches_tracked) == 0

    net = _moved_batchnorm_net()
    given = x.numpy()
    result = evaluate_target(net, x.numpy(), y.numpy(), spec, {}, random_examples=given, own_examples=given)
    assert result.clean_accuracy == clean_accuracy
    assert int(net[2].num_batches_tracked) == 0


def test_a_kernel_only_method_with_a_step_is_refused_not_run_as_pgd():
    """The Taylor attacks need a kernel machine's output Jacobian; a torch net given one, with a
    PGD schedule, must be refused: without the check it ran as PGD (any method other than FGSM
    did) and its accuracy would be reported under the Taylor attack's name."""
    x, y = _data()
    for method in ("taylor-l1", "taylor-sum"):
        with pytest.raises(ValueError, match="unknown white-box method"):
            adversarial_examples(_linear_net(), x, y, method=method, eps=0.1, step=0.04, steps=2)
