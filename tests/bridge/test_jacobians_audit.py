"""``bridge.jacobians`` audited directly, against a route of its own: a Python loop of
``torch.autograd.grad`` per example and per output of tiny float64 nets (one backward pass for
each (n, c), nothing vectorised, no ``torch.func``), flattened in the parameters' order.

Checked: the group Jacobians (B, C′, P_group) of the engine for every cut of the parameters, one
output or all; the dense layers' factors g hᵀ with their scales and the convolutions' rows, in
float64; Jᵀw over sub-batches of every size; the inputs' dtype; and that the observing forward
passes leave no hook behind. Tolerances: float64, the routes differ only in summation order
(absolute 1e-12 on entries of order 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkrobust.bridge.jacobians import (
    JacobianEngine,
    activation_elements,
    as_inputs,
    dense_layers,
    forward_pass,
    plan_parameter_groups,
    transposed_products,
)
from ntkrobust.bridge.models import NTKLinear

TOL = 1e-12
C = 3


def nets() -> dict[str, nn.Module]:
    """An MLP with an NTK-parametrised layer (scales ≠ 1), a CNN with BatchNorm (running
    statistics away from their defaults: buffers that the Jacobians must use) and a frozen
    weight, all float64 and in eval mode."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.Tanh(), NTKLinear(5, 4, W_std=1.7, b_std=0.3), nn.Tanh(),
                        nn.Linear(4, C))  # fmt: skip
    cnn = nn.Sequential(nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4, 4),
                        nn.Tanh(), nn.Linear(4, C))  # fmt: skip
    with torch.no_grad():
        cnn[1].running_mean.uniform_(-0.5, 0.5)
        cnn[1].running_var.uniform_(0.5, 2.0)
    cnn[4].weight.requires_grad_(False)
    return {"mlp": mlp.double().eval(), "cnn": cnn.double().eval()}


INPUTS = {"mlp": (2, 2, 2), "cnn": (2, 3, 3)}


def inputs(name: str, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *INPUTS[name], generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def loop_jacobian(net: nn.Module, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """(N, C, P): ∂f_c(x_n)/∂θ by one ``autograd.grad`` per (n, c), the parameters ``names``
    flattened and concatenated in that order."""
    params = dict(net.named_parameters())
    rows = []
    for n in range(x.shape[0]):
        out = net(x[n : n + 1])[0]
        per_output = []
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], [params[name] for name in names], retain_graph=True)
            per_output.append(torch.cat([g.reshape(-1) for g in grads]))
        rows.append(torch.stack(per_output))
    return torch.stack(rows)


def trainable(net: nn.Module) -> list[str]:
    return [name for name, p in net.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("capacity", [3, 7, 20, 10_000])
def test_group_jacobians_are_the_per_example_per_output_gradients(name, capacity):
    """Every cut of the trainable parameters (slices of three elements, tensors split across groups,
    one group for all): the groups' Jacobians, side by side, are the loop's (N, C, P), for all
    outputs and for each output alone (``output=c`` and an engine of one ``output_index``)."""
    net, x = nets()[name], inputs(name)
    expected = loop_jacobian(net, x, trainable(net))
    engine = JacobianEngine(net, None, x[:1], structured=False)
    assert list(engine.sizes()) == trainable(net)  # frozen ones are left out, the order kept
    groups = plan_parameter_groups(engine.sizes(), capacity)
    whole = torch.cat([engine.jacobian(group, x) for group in groups], dim=2)
    assert whole.shape == expected.shape and whole.dtype == torch.float64
    torch.testing.assert_close(whole, expected, rtol=0, atol=TOL)
    for c in (0, C - 1):
        one = torch.cat([engine.jacobian(group, x, output=c) for group in groups], dim=2)
        torch.testing.assert_close(one, expected[:, c : c + 1], rtol=0, atol=TOL)
    fixed = JacobianEngine(net, 1, x[:1], structured=False)
    only = torch.cat([fixed.jacobian(group, x) for group in groups], dim=2)
    torch.testing.assert_close(only, expected[:, 1:2], rtol=0, atol=TOL)


def test_dense_factors_give_the_dense_gradients_with_their_scales():
    """For every dense layer, s_w·g hᵀ and s_b·g are the loop's gradients of its weight and bias
    (the NTK layer's scales 1.7/√5 and 0.3 included), float64, for all outputs and one."""
    net, x = nets()["mlp"], inputs("mlp")
    for index in (None, 2):
        engine = JacobianEngine(net, index, x[:1])
        assert set(engine.dense) == {"1", "3", "5"} and engine.sizes() == {}
        dense = engine.factors(x)["dense"]
        for name, layer in engine.dense.items():
            g, h = dense[name]
            assert g.dtype == h.dtype == torch.float64
            expected = loop_jacobian(net, x, [layer.weight, layer.bias])
            if index is not None:
                expected = expected[:, index : index + 1]
            weight = layer.w_scale * torch.einsum("nco,ni->ncoi", g, h).flatten(2)
            got = torch.cat([weight, layer.b_scale * g], dim=2)
            torch.testing.assert_close(got, expected, rtol=0, atol=TOL, msg=name)
    assert engine.dense["3"].w_scale == pytest.approx(1.7 / 5**0.5) and engine.dense["3"].b_scale == 0.3


class Doubled(nn.Linear):
    """A subclass of ``nn.Linear`` whose output is 2(W h + b): not the plain layer's outer product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_a_subclass_of_linear_goes_through_the_groups_to_its_gradients():
    """Only exact ``nn.Linear`` / ``NTKLinear`` take the factors: a subclass's weight and bias stay
    with the groups, whose Jacobian is the loop's (its factor s·g hᵀ would miss the 2)."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Flatten(), Doubled(8, 4), nn.Tanh(), nn.Linear(4, C)).double().eval()
    x = inputs("mlp")
    engine = JacobianEngine(net, None, x[:1])
    assert set(engine.dense) == {"3"} and list(engine.sizes()) == ["1.weight", "1.bias"]
    (group,) = plan_parameter_groups(engine.sizes(), 10_000)
    expected = loop_jacobian(net, x, ["1.weight", "1.bias"])
    torch.testing.assert_close(engine.jacobian(group, x), expected, rtol=0, atol=TOL)


def test_convolution_rows_are_the_gradients_of_weight_and_bias():
    """A plain convolution's rows (B, C′, P) are the loop's gradients of its weight and bias,
    ordered per output channel o: [W_o (its 8 taps), b_o] (its patches carry a row of ones)."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Tanh(), nn.Flatten(), nn.Linear(12, C)).double().eval()
    x = inputs("cnn")
    engine = JacobianEngine(net, None, x[:1])
    assert set(engine.convs) == {"0"}
    rows = engine.factors(x)["conv"]["0"]
    weight, bias = loop_jacobian(net, x, ["0.weight", "0.bias"]).split([24, 3], dim=2)
    expected = torch.cat([weight.unflatten(2, (3, 8)), bias.unsqueeze(3)], dim=3).flatten(2)
    torch.testing.assert_close(rows, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 6, 7, 50])
def test_transposed_products_are_the_weighted_sums_of_gradients(batch_size):
    """Jᵀw_i = Σ_n Σ_c w_i[n, c] ∂f_c(x_n)/∂θ from the loop, for sub-batches of every size (a
    partial last one, one of everything): each example counted once, the sub-batches summed."""
    net, x = nets()["cnn"], inputs("cnn", n=7)
    names = trainable(net)
    weights = torch.randn(3, 7, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = dict(net.named_parameters())
    products = transposed_products(net, x, weights, [params[n] for n in names], batch_size=batch_size)
    jac = loop_jacobian(net, x, names)
    for i in range(3):
        got = torch.cat([t.reshape(-1) for t in products[i]])
        torch.testing.assert_close(got, torch.einsum("nc,ncp->p", weights[i], jac), rtol=0, atol=1e-11)


def test_inputs_keep_the_dtype_asked_for_exactly():
    """float64 values that float32 cannot hold come back exact, from numpy, lists and torch."""
    x = np.array([[1 + 2**-40, -3.0e-300]])
    for given in (x, x.tolist(), torch.from_numpy(x)):
        got = as_inputs(given, "cpu", torch.float64)
        assert got.dtype == torch.float64 and np.array_equal(got.numpy(), x)
    assert as_inputs(x, "cpu", torch.float32).dtype == torch.float32


class Pair(nn.Module):
    """A leaf whose output is a tuple, not a tensor."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, 2 * x


def test_observing_forward_passes_count_exactly_and_leave_no_hook():
    """``activation_elements`` is the sum of the leaves' output sizes (50 + 7 + 7 + 3 here, the
    container's own output not counted twice), and never less than the example's size; the
    dense-layer probe and the counter remove their hooks, also when the forward pass raises."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(50, 7), nn.Tanh(), nn.Linear(7, C)).double()
    example = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    assert activation_elements(net, example) == 50 + 7 + 7 + C
    # a net whose only leaf returns no tensor still keeps its input: the count is at least that
    assert activation_elements(Pair(), example) == example.numel()
    dense_layers(net, example, {name for name, _ in net.named_parameters()})
    modules = list(net.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)
    handle = net[1].register_forward_hook(lambda *_: None)
    with pytest.raises(RuntimeError):
        forward_pass(net, torch.zeros(1, 3, dtype=torch.float64), [handle])
    assert not net[1]._forward_hooks
