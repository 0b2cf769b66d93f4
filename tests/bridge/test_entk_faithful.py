"""The structured eNTK route's check of itself (``JacobianEngine.unfaithful_layers``).

The structured route finds a layer's gradient through its module's calls (the gradient at the
module's output, its input). A weight also used outside those calls (``F.linear(h,
self.a.weight)`` in a ``forward``) had that use's gradient dropped: the kernel of the nets below was
58-66% off against ``structured=False`` before the check (and 24% in an earlier test net). At plan
time each structured layer's ∇(v·f) at one example is now set against ``torch.func.grad``'s, and a
layer that differs takes the generic groups. Tolerances: float64 kernels against the generic route,
1e-10 relative to the largest entry (the routes differ in summation order only).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ntkrobust.bridge.entk import empirical_ntk
from ntkrobust.bridge.jacobians import JacobianEngine
from ntkrobust.bridge.models import NTKLinear, build_model, model_config

KINDS = ["full", "class-blocks", "trace", "class:1", "rademacher:3"]


class DenseOutside(nn.Module):
    """Module ``a`` is called once, but its weight also enters through ``F.linear`` (times
    ``share``); ``b`` is used only through its call."""

    def __init__(self, share: float = 0.5):
        super().__init__()
        self.a, self.b, self.share = nn.Linear(8, 6), nn.Linear(6, 3), share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)
        h = torch.tanh(self.a(z)) + self.share * torch.tanh(F.linear(2 * z, self.a.weight))
        return self.b(h)


class ConvOutside(nn.Module):
    """Convolution ``c`` is called once, and its weight is used again by ``F.conv2d``."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(1, 2, 2), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.c(x)) + 0.5 * torch.tanh(F.conv2d(x.flip(-1), self.c.weight))
        return self.d(h.flatten(1))


class BiasOutside(nn.Module):
    """Only the bias of ``a`` is used outside its call."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x.flatten(1)) + 0.3 * self.a.bias.sin()))


def _inputs(shape: tuple[int, ...], n: int = 5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(3), dtype=dtype)


def _net(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().double().eval()


CASES = [(DenseOutside, (2, 2, 2), "a", "b"), (ConvOutside, (1, 3, 3), "c", "d"), (BiasOutside, (8,), "a", "b")]


@pytest.mark.parametrize(("cls", "shape", "outside", "inside"), CASES)
def test_a_layer_used_outside_its_module_is_named_and_left_to_the_groups(cls, shape, outside, inside):
    net, x = _net(cls), _inputs(shape)
    engine = JacobianEngine(net, None, x[:1])
    structured = {**engine.dense, **engine.convs}
    assert outside not in structured and inside in structured
    assert engine.sizes()[f"{outside}.weight"] > 0  # the groups take it


@pytest.mark.parametrize(("cls", "shape", "outside", "inside"), CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_kernel_of_such_a_net_is_the_generic_routes(cls, shape, outside, inside, kind):
    net, x = _net(cls), _inputs(shape)
    structured = empirical_ntk(net, x, kind=kind)
    generic = empirical_ntk(net, x, kind=kind, structured=False)
    np.testing.assert_allclose(structured, generic, rtol=0, atol=1e-10 * np.abs(generic).max())


def test_a_small_use_outside_is_still_found_in_float64():
    """A use adding 1e-4 of the weight's gradient is far above float64's √eps (1.5e-8)."""
    net, x = _net(lambda: DenseOutside(share=1e-4)), _inputs((2, 2, 2))
    assert "a" not in JacobianEngine(net, None, x[:1]).dense
    np.testing.assert_allclose(
        empirical_ntk(net, x, kind="full"), empirical_ntk(net, x, kind="full", structured=False), rtol=1e-10
    )


def _faithful_nets() -> list[tuple[str, nn.Module, tuple[int, ...], set[str]]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.Tanh(), NTKLinear(5, 4, W_std=1.7, b_std=0.3), nn.Tanh(),
                        nn.Linear(4, 3))  # fmt: skip
    cnn = build_model(model_config("mnist-cnn", (1, 28, 28), num_classes=10))
    return [("mlp", mlp, (2, 2, 2), {"1", "3", "5"}), ("mnist-cnn", cnn, (1, 28, 28), {"0", "3", "7", "9"})]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(2))
def test_a_net_whose_weights_are_used_in_their_modules_keeps_every_structured_layer(case, dtype):
    """The NTK-parametrised layer (scales ≠ 1), the MNIST CNN's pooled first convolution and its
    plain one, in float32 too (√eps = 3.5e-4 there: no false alarm)."""
    _, net, shape, layers = _faithful_nets()[case]
    net = net.to(dtype).eval()
    x = _inputs(shape, n=2, dtype=dtype)
    engine = JacobianEngine(net, None, x[:1])
    assert set(engine.dense) | set(engine.convs) == layers
    assert engine.unfaithful_layers(x) == []
    assert engine.unfaithful_layers(x[1:]) == []


def test_the_check_leaves_no_hook_behind():
    net, x = _net(DenseOutside), _inputs((2, 2, 2))
    JacobianEngine(net, None, x[:1])
    for module in net.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


class _PrecisionSpy(nn.Module):
    """Records, at every forward pass, whether cuDNN and CUDA matrix products may take TF32."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(1, 2, 2), nn.Linear(8, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return self.d(torch.tanh(self.c(x)).flatten(1))


@pytest.mark.parametrize("matmul", [True, False])
def test_the_check_runs_without_tf32_and_restores_the_settings(matmul):
    """On a GPU, TF32 would put the two routes about 1e-3 apart (above float32's √eps): the check
    turns it off for its own passes only, and the user's settings come back."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, matmul
    try:
        net, x = _net(_PrecisionSpy), _inputs((1, 3, 3))
        engine = JacobianEngine(net, None, x[:1])
        assert set(engine.dense) | set(engine.convs) == {"c", "d"}
        net.seen.clear()
        assert engine.unfaithful_layers(x) == []
        assert net.seen == [(False, False)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, matmul)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


class ReadsItsShape(nn.Module):
    """Reads its layers' shapes, dtype and device in ``forward`` (no value of them: no gradient)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1).to(dtype=self.a.weight.dtype, device=self.a.weight.device)
        assert z.shape[1] == self.a.weight.shape[1] == self.a.weight.size(1) and self.b.weight.ndim == 2
        return self.b(torch.tanh(self.a(z)))


def test_a_read_of_a_weights_shape_outside_its_module_keeps_the_structured_route():
    net, x = _net(ReadsItsShape), _inputs((2, 2, 2))
    engine = JacobianEngine(net, None, x[:1])
    assert set(engine.dense) == {"a", "b"}
