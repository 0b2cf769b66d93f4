"""Structured convolution routes of the empirical NTK (``bridge.convolutions``), audited on tiny nets
built so that each route (rows g Pᵀ, the pooled-first shortcut, the Gram route) is actually taken
or actually refused, against an independent route: per-example ``torch.func.jacrev`` over every
trainable parameter in float64, J Jᵀ formed explicitly. Tolerance: relative 1e-10 (float64, the
routes differ only in summation order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from ntkrobust.bridge import convolutions
from ntkrobust.bridge.convolutions import _gram_pays, conv_layers
from ntkrobust.bridge.entk import empirical_ntk

TOL = 1e-10


def jacrev_gram(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> np.ndarray:
    """Θ[i, j, c, d] = J(x1_i)[c] · J(x2_j)[d], J from jacrev over all trainable parameters."""
    params = {name: p.detach() for name, p in net.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in net.named_parameters() if not p.requires_grad}

    def jacobian(x: torch.Tensor) -> torch.Tensor:
        rows = []
        for example in x:
            jac = jacrev(lambda p, e=example: functional_call(net, (p, frozen), (e[None],))[0])(params)
            rows.append(torch.cat([j.reshape(j.shape[0], -1) for j in jac.values()], 1))
        return torch.stack(rows)

    return torch.einsum("iap,jbp->ijab", jacobian(x1), jacobian(x2)).numpy()


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def routes(net: nn.Module, shape: tuple[int, ...], *, paired: bool = False) -> dict[str, int | str]:
    """Layer name → pooling p (1: rows g Pᵀ) or "gram", for a Jacobian of all outputs."""
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    example = torch.rand(1, *shape, dtype=torch.float64)
    layers = conv_layers(net, example, trainable, paired=paired)
    return {name: "gram" if layer.gram else layer.pool for name, layer in layers.items()}


def inputs(shape: tuple[int, ...], n1: int = 4, n2: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x1 = torch.rand(n1, *shape, generator=generator, dtype=torch.float64) - 0.3
    x2 = torch.rand(n2, *shape, generator=generator, dtype=torch.float64) - 0.3
    return x1, x2


def check_kernels(net: nn.Module, shape: tuple[int, ...]) -> None:
    """The full kernel between two sets and the class blocks of one set equal the jacrev Grams."""
    x1, x2 = inputs(shape)
    full = empirical_ntk(net, x1, x2, kind="full", dtype=torch.float64)
    assert relative_error(full, jacrev_gram(net, x1, x2)) < TOL
    blocks = empirical_ntk(net, x1, kind="class-blocks", dtype=torch.float64)
    assert relative_error(blocks, np.einsum("ijcc->ijc", jacrev_gram(net, x1, x1))) < TOL


def pooled_net(conv: nn.Conv2d, pool: nn.Module, features: int, outputs: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(conv, nn.ReLU(), pool, nn.Flatten(), nn.Linear(features, outputs)).double().eval()


def test_pooled_shortcut_of_a_strided_dilated_padded_convolution():
    """The shortcut's ReLU mask must be taken with the convolution's stride, padding and dilation:
    10 x 10 → 4 x 4 (stride 2, dilation 2, padding 1), pooled to 2 x 2; K = 10, 5 outputs."""
    torch.manual_seed(0)
    net = pooled_net(nn.Conv2d(1, 2, 3, stride=2, dilation=2, padding=1), nn.AvgPool2d(2), 8)
    assert routes(net, (1, 10, 10)) == {"0": 2}
    check_kernels(net, (1, 10, 10))


def test_pooled_shortcut_masks_exact_zero_pre_activations_like_relu():
    """A zero bias and inputs zero on their left half: pre-activations exactly 0 there, where
    ReLU's derivative (torch's, and jacrev's) is 0, so the mask is m = (y > 0), not (y >= 0)."""
    net = pooled_net(nn.Conv2d(1, 2, 2), nn.AvgPool2d(2), 8)  # 6 x 6 → 5 x 5 → 2 x 2, K = 5
    with torch.no_grad():
        net[0].bias.zero_()
    assert routes(net, (1, 6, 6)) == {"0": 2}
    x1, x2 = inputs((1, 6, 6))
    x1[..., :3] = 0
    x2[..., :3] = 0
    full = empirical_ntk(net, x1, x2, kind="full", dtype=torch.float64)
    assert relative_error(full, jacrev_gram(net, x1, x2)) < TOL


@pytest.mark.parametrize(
    "pool, features",
    [
        (nn.AvgPool2d(2, padding=1), 2 * 25),  # padded cells
        (nn.AvgPool2d(2, ceil_mode=True), 2 * 25),  # a partial last cell
        (nn.AvgPool2d(3, stride=2), 2 * 16),  # overlapping cells
        (nn.AvgPool2d(2, divisor_override=3), 2 * 16),  # not the cell's mean
    ],
)
def test_poolings_other_than_disjoint_cell_means_take_the_rows(pool, features):
    """With 5 outputs ≥ K/2 the shortcut would be taken for a plain AvgPool2d(2) (the control);
    these poolings are not the mean over disjoint p x p cells, so the layer takes its rows."""
    control = pooled_net(nn.Conv2d(1, 2, 2), nn.AvgPool2d(2), 2 * 16)  # 10 x 10 → 9 x 9 → 4 x 4
    assert routes(control, (1, 10, 10)) == {"0": 2}
    net = pooled_net(nn.Conv2d(1, 2, 2), pool, features)
    assert routes(net, (1, 10, 10)) == {"0": 1}
    check_kernels(net, (1, 10, 10))


def test_a_pooled_first_convolution_never_takes_the_gram_route():
    """Conv(4 → 4, 3 x 3) on 4 x 4: S = 4 positions, K = 37, 20 outputs: S²(C′O + K) < C′OK, so
    the Grams would pay, but the gradient is taken at the pooling (1 x 1), not at the convolution."""
    net = pooled_net(nn.Conv2d(4, 4, 3), nn.AvgPool2d(2), 4, outputs=20)
    assert _gram_pays(20, 4, 4, 37)
    assert routes(net, (4, 4, 4)) == {"0": 2}
    x1, x2 = inputs((4, 4, 4), 3, 2)
    full = empirical_ntk(net, x1, x2, kind="full", dtype=torch.float64)
    assert relative_error(full, jacrev_gram(net, x1, x2)) < TOL


def test_the_gram_route_only_where_it_takes_strictly_fewer_products():
    """S = 1 (1 x 1 input, 1 x 1 kernel), K = 2, one output: Grams 1·(O + 2) against rows 2·O
    products, equal for O = 2 (rows), fewer for O = 3 (Grams). Both kernels equal jacrev's."""
    assert not _gram_pays(1, 2, 1, 2) and _gram_pays(1, 3, 1, 2)
    for channels, expected in ((2, 1), (3, "gram")):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, channels, 1), nn.Tanh(), nn.Flatten(), nn.Linear(channels, 1)).double()
        assert routes(net.eval(), (1, 1, 1)) == {"0": expected}
        check_kernels(net, (1, 1, 1))


class PoolTwice(nn.Module):
    """conv → ReLU → pool, and the same pooling applied again: the tap is called twice."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.AvgPool2d(2))
        self.head = nn.Linear(2 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body[2](self.body(x)).flatten(1))


class ConvTwice(nn.Module):
    """conv → ReLU → pool, and the same convolution applied to the input once more."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.AvgPool2d(2))
        self.head = nn.Linear(2 * 4 * 4 + 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = torch.tanh(self.body[0](x)).mean((2, 3))
        return self.head(torch.cat([self.body(x).flatten(1), extra], 1))


@pytest.mark.parametrize("module", [PoolTwice, ConvTwice])
def test_a_convolution_or_pooling_called_twice_takes_the_generic_route(module):
    torch.manual_seed(0)
    net = module().double().eval()
    assert routes(net, (1, 9, 9)) == {}
    check_kernels(net, (1, 9, 9))


@pytest.mark.parametrize("kind", ["full", "trace"])
def test_gram_blocks_of_one_row_between_two_input_sets(monkeypatch, kind):
    """Between two different sets every column of each block of rows is taken (not only those
    right of the diagonal): blocks of one kernel row, 5 x 3 examples, against jacrev."""
    monkeypatch.setattr(convolutions, "_GRAM_BLOCK_ELEMENTS", 1)
    torch.manual_seed(0)
    if kind == "full":  # S = 2, O = 2, K = 5, 16 output pairs: 4(2·16 + 5) < 160
        net, shape = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(4, 4)).double().eval(), (1, 2, 3)
        assert routes(net, shape, paired=True) == {"0": "gram"}
    else:
        net, shape = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Tanh(), nn.Flatten(), nn.Linear(3, 1)).double(), (1, 1, 1)
        assert routes(net.eval(), shape) == {"0": "gram"}
    x1, x2 = inputs(shape, 5, 3)
    kernel = empirical_ntk(net, x1, x2, kind=kind, dtype=torch.float64)
    reference = jacrev_gram(net, x1, x2)
    assert relative_error(kernel, reference if kind == "full" else np.einsum("ijcc->ij", reference)) < TOL


def test_the_engine_chooses_routes_for_the_outputs_it_differentiates():
    """One output (a class or a Rademacher draw) needs C′ = 1 < K/2: the rows, not the shortcut, and
    C′ = 1 pair of outputs for the full-kernel rule; all 5 outputs: the shortcut (K = 5)."""
    from ntkrobust.bridge.jacobians import JacobianEngine

    net = pooled_net(nn.Conv2d(1, 2, 2), nn.AvgPool2d(2), 2 * 16)
    example = torch.rand(1, 1, 10, 10, dtype=torch.float64)
    assert JacobianEngine(net, None, example).convs["0"].pool == 2
    assert JacobianEngine(net, 0, example).convs["0"].pool == 1
    # S = 2, O = 2, K = 5: Grams for the 16 pairs of 4 outputs, rows for one output
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(4, 4)).double().eval()
    example = torch.rand(1, 1, 2, 3, dtype=torch.float64)
    assert JacobianEngine(dense, None, example, paired=True).convs["0"].gram
    assert not JacobianEngine(dense, 0, example, paired=True).convs["0"].gram


@pytest.mark.parametrize(
    "activation, pool",
    [(nn.Tanh(), nn.AvgPool2d(2)), (nn.ReLU(), nn.AvgPool2d(1))],
    ids=["tanh-then-pool", "relu-then-1x1-pool"],
)
def test_the_shortcut_needs_a_relu_and_cells_larger_than_one(activation, pool):
    """Tanh has no fixed 0/1 mask; a 1 x 1 pooling passes the ReLU's output on, so a gradient
    taken at it would miss the ReLU's mask: both take the rows at the convolution's output."""
    torch.manual_seed(0)
    features = 2 * (16 if isinstance(activation, nn.Tanh) else 81)  # 10 x 10 → 9 x 9
    net = nn.Sequential(nn.Conv2d(1, 2, 2), activation, pool, nn.Flatten(), nn.Linear(features, 5)).double().eval()
    trainable = {name for name, _ in net.named_parameters()}
    layers = conv_layers(net, torch.rand(1, 1, 10, 10, dtype=torch.float64), trainable)
    assert layers["0"].pool == 1 and layers["0"].tap is net[0] and not layers["0"].gram
    check_kernels(net, (1, 10, 10))


class ScaledConv(nn.Conv2d):
    """A subclass with its own forward (here 2·(W ⋆ a + b)): not what ``unfold`` reproduces."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_a_subclass_of_conv2d_takes_the_generic_route():
    torch.manual_seed(0)
    net = nn.Sequential(ScaledConv(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 16, 3)).double().eval()
    assert routes(net, (1, 5, 5)) == {}
    check_kernels(net, (1, 5, 5))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("kernel", "padding", "stride", "dilation"),
    [
        ((3, 3), (1, 1), (1, 1), (1, 1)),
        ((2, 3), (2, 0), (1, 3), (2, 1)),
        ((5, 5), (0, 0), (2, 2), (1, 1)),
        ((1, 1), (0, 0), (1, 1), (1, 1)),
    ],
)
def test_patches_equal_unfold_at_every_stride_padding_and_dilation(kernel, padding, stride, dilation, bias):
    """The patches, written one kernel offset at a time, hold exactly ``F.unfold``'s numbers in its
    layout (input channel, kernel row, kernel column), with a row of ones for a trainable bias."""
    conv = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    a = torch.rand(2, 3, 11, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    height, width = conv(a).shape[2:]
    layer = convolutions.ConvLayer(conv, "weight", "bias" if bias else None, conv, (4, height, width))
    unfolded = torch.nn.functional.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)
    if bias:
        unfolded = torch.cat([unfolded, torch.ones(2, 1, unfolded.shape[2], dtype=torch.float64)], 1)
    patches = convolutions._patches(layer, a, height, width)
    assert patches.shape == (2, unfolded.shape[1], height, width)
    assert torch.equal(patches.flatten(2), unfolded)
