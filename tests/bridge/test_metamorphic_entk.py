"""Metamorphic tests of the empirical NTK's internals (``bridge.entk``, ``bridge._entk_plan``,
``bridge.jacobians``, ``bridge.convolutions``): relations between two or more kernels of
transformed nets or inputs, which the definition

    Θ_{cd}(x, x′) = Σ_p ∂f_c(x)/∂θ_p · ∂f_d(x′)/∂θ_p            (``bridge.entk``'s docstring)

implies whatever route (dense factors, convolution rows, Gram factors, the pooled shortcut,
generic groups) each parameter takes:

- the kernel is a sum over parameters: the kernels of a partition of the trainable parameters
  (the others frozen) add up to the whole net's, and scaling the last layer's weight by c scales
  the rest's share by c² and leaves its own;
- a net whose outputs are summed over two branches, or mixed by a matrix M, has the kernel of the
  sum (Θ₁ + Θ₂ for disjoint parameters, 4Θ for one branch twice) or Mᵀ Θ M;
- a bias-free ReLU net (convolutions, average and max pooling, dense layers) is positively
  homogeneous in its input, and so is each per-example gradient: Θ(αx, βx′) = αβ Θ(x, x′);
- transposing the images and every convolution's kernel (with its strides, paddings, dilations)
  permutes the parameters, so the kernel does not change;
- under batch statistics (RAT's "w/o buffer"), the statistics are the input set's biased mean
  and variance: a set given twice has the same statistics, so its kernel is the original tiled,
  and the kernel between two sets is the off-diagonal block of the kernel of their union.

Small seeded float64 nets of ``test_entk_audit``; tolerances 1e-11 relative (the routes differ in
summation order only) unless stated.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_entk_audit import _tightest_plans, points, relative_error, tiny_nets
from torch import nn

from ntkrobust.bridge._entk_plan import plan_kernel
from ntkrobust.bridge.entk import empirical_ntk
from ntkrobust.bridge.models import build_model, model_config

TOL = 1e-11
KINDS = ["full", "class-blocks", "trace", "class:1", "rademacher:4"]
#: the tiny nets whose routes differ: dense, convolution rows and Grams, the pooled shortcut, BatchNorm, scales
NAMES = ["mlp", "cnn", "pooled", "bn", "allconv", "twin", "frozen"]


def _ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, kind: str = "full", **kw) -> np.ndarray:
    return empirical_ntk(model, x1, x2, kind=kind, dtype=torch.float64, **kw)


def _close(got: np.ndarray, want: np.ndarray, tol: float = TOL) -> None:
    assert relative_error(got, want) < tol, relative_error(got, want)


def _only(model: nn.Module, names: set[str]) -> nn.Module:
    """A copy of ``model`` whose trainable parameters are those of ``names`` alone."""
    copied = copy.deepcopy(model)
    for name, p in copied.named_parameters():
        p.requires_grad_(name in names)
    return copied


def _trainable(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


# -- the kernel is a sum over parameters ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_kernels_of_each_trainable_parameter_alone_add_up_to_the_nets(name):
    """Θ = Σ_p J_p J′_pᵀ (``bridge.entk``: "Θ = Σ_groups J_g(X1) J_g(X2)ᵀ, exactly, whatever the
    grouping"): with every parameter tensor trainable alone (the rest frozen), the kernels add up
    to the whole net's, for every kind and between two sets. Freezing changes the routes (a dense
    layer whose weight is frozen sends its bias to the groups; a frozen bias still shifts a
    convolution's ReLU mask), so each route is checked against the others; the Rademacher
    estimate is linear in the kernel of its fixed signed outputs, so it adds up too."""
    net = tiny_nets()[name]
    x1, x2 = points(4, 11), points(3, 12)
    names = _trainable(net)
    for kind in KINDS:
        whole = _ntk(net, x1, x2, kind)
        parts = sum(_ntk(_only(net, {p}), x1, x2, kind) for p in names)
        _close(parts, whole)
    # the symmetric route (one set), split in two halves of the parameters
    half = set(names[::2])
    whole = _ntk(net, x1, kind="full")
    _close(_ntk(_only(net, half), x1) + _ntk(_only(net, set(names) - half), x1), whole)


@pytest.mark.parametrize("name", ["mlp", "cnn", "bn", "twin"])
def test_scaling_the_last_layers_weight_scales_the_rest_of_the_kernel_by_its_square(name):
    """f = s·W h(x; θ′) + s_b b (the last dense layer): ∂f/∂W = s g hᵀ and ∂f/∂b = s_b g do not
    depend on W (g = ∂f/∂y = I), while every earlier gradient is ∂f/∂h · ∂h/∂θ′ = s Wᵀ(...), linear
    in W. So W → cW gives Θ(c) = Θ_last + c² Θ_rest, with Θ_last the kernel of the last layer alone
    and Θ_rest that of the other parameters (``bridge.entk``'s dense factors (s² h·h′ + s_b²)(g·g′)
    for the first, the other routes for the second). c = −2.5 and 0.3, every exact kind."""
    net = tiny_nets()[name]
    x1, x2 = points(4, 13), points(3, 14)
    head = [m for m in net.modules() if hasattr(m, "weight") and m.weight.ndim == 2][-1]
    last = {n for n, p in net.named_parameters() if p is head.weight or p is head.bias}
    rest = set(_trainable(net)) - last
    for kind in KINDS[:4]:
        k_last = _ntk(_only(net, last), x1, x2, kind)
        k_rest = _ntk(_only(net, rest), x1, x2, kind)
        for c in (-2.5, 0.3):
            scaled = copy.deepcopy(net)
            scaled_head = [m for m in scaled.modules() if hasattr(m, "weight") and m.weight.ndim == 2][-1]
            with torch.no_grad():
                scaled_head.weight.mul_(c)
            _close(_ntk(scaled, x1, x2, kind), k_last + c**2 * k_rest)


# -- nets built from other nets -----------------------------------------------------------------------


class _Sum(nn.Module):
    """f(x) = a(x) + b(x): two branches (the same module twice when ``b`` is ``a``)."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


class _Mixed(nn.Module):
    """f(x) = g(x) M: the outputs of ``inner`` mixed by a fixed (C, C′) matrix."""

    def __init__(self, inner: nn.Module, mixing: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.register_buffer("mixing", mixing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) @ self.mixing


def _views(full: np.ndarray) -> dict[str, np.ndarray]:
    """Each exact kind from a full kernel (N1, N2, C, C) (``bridge.entk``'s kinds)."""
    blocks = np.einsum("ijcc->ijc", full)
    return {"full": full, "class-blocks": blocks, "trace": blocks.mean(axis=2), "class:1": blocks[:, :, 1]}


@pytest.mark.parametrize(("first", "second"), [("cnn", "mlp"), ("pooled", "allconv"), ("bn", "twin")])
def test_two_branches_summed_have_the_sum_of_their_kernels_and_one_branch_twice_four_times_its_own(first, second):
    """f = f₁ + f₂ with disjoint parameters: ∇θ f = (∇θ₁ f₁, ∇θ₂ f₂), so Θ = Θ₁ + Θ₂ (every
    exact kind). f = f₁ + f₁ (one module called twice, so no layer of it takes a structured route:
    ``dense_layers`` and ``conv_layers`` want one call per pass): ∇θ f = 2∇θ f₁, so Θ = 4Θ₁.
    The pooled net has 10 outputs: its branch is mixed down to three by a fixed matrix."""
    nets = tiny_nets()
    a, b = nets[first], nets[second]
    if first == "pooled":
        a = _Mixed(a, torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(10, 3))
    x1, x2 = points(4, 15), points(3, 16)
    for kind in KINDS[:4]:
        one, other = _ntk(a, x1, x2, kind), _ntk(b, x1, x2, kind)
        _close(_ntk(_Sum(a, b), x1, x2, kind), one + other)
        _close(_ntk(_Sum(a, a), x1, x2, kind), 4 * one)


@pytest.mark.parametrize("name", ["cnn", "pooled", "allconv", "bn"])
def test_mixing_the_outputs_by_a_matrix_transforms_the_class_axes(name):
    """f′ = f M (M fixed, C × C′): ∇θ f′_c = Σ_e M_ec ∇θ f_e, so Θ′_cd = Σ_ef M_ec M_fd Θ_ef, i.e.
    Mᵀ Θ M on the class axes of the full kernel; the class blocks, trace and one class of f′ are
    its diagonal, mean and one entry (every kind, two sets and one). M has more columns than
    rows for the pooled net (10 → 4 outputs: the shortcut's ``2C′ ≥ K`` rule then changes) and a
    zero column elsewhere (an output with a zero kernel)."""
    net = tiny_nets()[name]
    c = next(m for m in reversed(list(net.modules())) if hasattr(m, "weight")).weight.shape[0]
    generator = torch.Generator().manual_seed(5)
    columns = 4
    mixing = torch.randn(c, columns, generator=generator, dtype=torch.float64)
    if name != "pooled":
        mixing[:, 2] = 0
    mixed = _Mixed(net, mixing)
    x1, x2 = points(4, 17), points(3, 18)
    m = mixing.numpy()
    for second in (x2, None):
        full = _ntk(net, x1, second, "full")
        want = _views(np.einsum("ijef,ec,fd->ijcd", full, m, m))
        for kind, expected in want.items():
            got = _ntk(mixed, x1, second, kind)
            _close(got, expected)


class _Concat(nn.Module):
    """f(x) = (b₁(x), ..., b_C(x)): one output from each branch (each branch (B, 1))."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def test_outputs_of_disjoint_branches_have_a_block_diagonal_kernel_that_rademacher_estimates_exactly():
    """f_c = b_c(x) with disjoint parameters: Θ_cd = 0 for c ≠ d and Θ_cc is branch c's kernel,
    so the full kernel is block diagonal, class:c is branch c's and the trace their mean. Then
    the Rademacher estimate (1/KC) Σ_k Σ_cd v_kc v_kd Θ_cd = (1/C) Σ_c Θ_cc (v² = 1) is the trace
    kernel exactly, for any K and seed: its documented variance "zero when the off-diagonal blocks
    vanish" (``bridge.entk``'s docstring). Branches of three routes (convolution rows and Grams, the
    pooled shortcut mixed down to one output, dense), between two sets and of one."""
    nets = tiny_nets()
    column = torch.linspace(-1, 1, 10, dtype=torch.float64)[:, None]
    three = torch.tensor([[1.0, 0.0], [0.5, 1.0], [-2.0, 1.0]], dtype=torch.float64)
    branches = [_Mixed(nets["cnn"], three[:, :1]), _Mixed(nets["pooled"], column), _Mixed(nets["mlp"], three[:, 1:])]
    net = _Concat(branches)
    x1, x2 = points(4, 27), points(3, 28)
    for second in (x2, None):
        full = _ntk(net, x1, second, "full")
        each = [_ntk(branch, x1, second, "trace") for branch in branches]
        want = np.zeros_like(full)
        for c, kernel in enumerate(each):
            want[:, :, c, c] = kernel
        _close(full, want)
        trace = _ntk(net, x1, second, "trace")
        _close(trace, sum(each) / 3)
        for c in range(3):
            _close(_ntk(net, x1, second, f"class:{c}"), each[c])
        for draws, seed in ((1, 0), (3, 7), (10, 1)):
            _close(_ntk(net, x1, second, f"rademacher:{draws}", seed=seed), trace)


class _Tied(nn.Module):
    """Two dense layers and two convolutions of which the second holds the first's weight (one
    parameter, two uses: ``named_parameters`` names it once, after the first)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.conv_a, self.conv_b = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.conv_b.weight = self.conv_a.weight
        self.dense_a, self.dense_b, self.head = nn.Linear(50, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.dense_a.bias = self.dense_b.bias  # dense_b's bias, named after dense_a
        self.tied = nn.Linear(4, 4)
        self.tied.weight = self.dense_b.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv_b(torch.tanh(self.conv_a(x)))).flatten(1)
        return self.head(torch.tanh(self.tied(torch.tanh(self.dense_b(torch.tanh(self.dense_a(h)))))))


class _PooledTiedBias(nn.Module):
    """A first convolution taking the pooled shortcut whose bias is held by a module registered
    before it (so ``named_parameters`` names it after that one): the shortcut's ReLU mask needs it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.other = nn.Conv2d(2, 2, 1)
        with torch.no_grad():
            self.other.bias.copy_(torch.tensor([0.3, -0.4]))
        self.body = nn.Sequential(nn.Conv2d(2, 2, 2), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 10))
        self.body[0].bias = self.other.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.other(x).mean((1, 2, 3))[:, None]


@pytest.mark.parametrize("name", ["tied", "pooled"])
def test_a_parameter_shared_by_two_layers_has_the_gradient_of_both_uses(name):
    """A bug this round found, fixed in ``bridge.jacobians``. A parameter that two modules hold (tied
    weights) gets ∂f/∂θ = Σ_uses of its two uses' gradients, and ``structured=False`` "puts every
    parameter through the generic Jacobian groups (the same kernel)" (``empirical_ntk``'s
    docstring). The structured route took the first module's factors (or rows) alone for
    the tied tensor and dropped the other use (7% off), and the pooled shortcut looked its
    convolution's bias up by the convolution's name, so a bias named after another module was
    left out of its ReLU mask (58% off). The kernel must equal the generic route's, and the
    tied tensors alone plus the rest must add up to it (every exact kind, two sets and one)."""
    net = (_Tied() if name == "tied" else _PooledTiedBias()).double().eval()
    x1, x2 = points(4, 29), points(3, 30)
    for kind in KINDS[:4]:
        generic = _ntk(net, x1, x2, kind, structured=False)
        _close(_ntk(net, x1, x2, kind), generic)
        _close(_ntk(net, x1, kind=kind), _ntk(net, x1, kind=kind, structured=False))
        tied = {"conv_a.weight", "dense_a.bias", "dense_b.weight"} if name == "tied" else {"other.bias"}
        rest = set(_trainable(net)) - tied
        _close(_ntk(_only(net, tied), x1, x2, kind) + _ntk(_only(net, rest), x1, x2, kind), generic)


# -- transformations of the inputs ----------------------------------------------------------------------


def _homogeneous_net() -> nn.Module:
    """A bias-free ReLU net through every convolution route and both poolings: a first
    convolution followed by ReLU and disjoint average pooling (the pooled shortcut, with ten
    outputs), a strided dilated padded convolution (rows), a max pooling, a convolution of one
    output position (Gram factors), and two dense layers."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 3, 2, bias=False), nn.ReLU(), nn.AvgPool2d(2),  # 8×8 → 7×7 → 3×3
        nn.Conv2d(3, 4, 2, stride=1, padding=1, dilation=2, bias=False), nn.ReLU(), nn.MaxPool2d(2),  # 3×3 → 1×1
        nn.Conv2d(4, 6, 1, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 10, bias=False),
    ).double().eval()  # fmt: skip


def test_a_bias_free_relu_net_has_a_kernel_homogeneous_in_each_input():
    """ReLU, average and max pooling and bias-free linear maps are positively homogeneous, so
    f(αx) = α f(x) and, the ReLU masks and max-pool choices being those of x, every per-example
    gradient (dense factors h, convolution patches, pooled patches, Gram patches) scales by α:
    Θ(αx, βx′) = αβ Θ(x, x′) for α, β > 0, every kind, and Θ(αx) = α² Θ(x) for one set. The net
    is checked to take the pooled shortcut, convolution rows, a Gram convolution and dense layers."""
    net = _homogeneous_net()
    x1 = torch.rand(4, 2, 8, 8, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    x2 = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    engine = plan_kernel(net, x1, x2, "class-blocks", False, 2**28, None, torch.float64, True, 0).engine
    assert {layer.pool for layer in engine.convs.values()} == {1, 2}, engine.convs
    assert any(layer.gram for layer in engine.convs.values()), engine.convs
    assert len(engine.dense) == 2 and not engine.sizes()
    alpha, beta = 3.5, 0.25
    for kind in KINDS:
        _close(_ntk(net, alpha * x1, beta * x2, kind), alpha * beta * _ntk(net, x1, x2, kind))
        _close(_ntk(net, alpha * x1, kind=kind), alpha**2 * _ntk(net, x1, kind=kind))
        # the tightest budget: the convolutions through the groups, in slices, one output at a time
        budget = _tight_budget(net, x1, x2, kind)
        tight = _ntk(net, alpha * x1, beta * x2, kind, memory_budget=budget)
        _close(tight, alpha * beta * _ntk(net, x1, x2, kind))


def _tight_budget(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor, kind: str) -> int:
    """The smallest budget of ``test_entk_audit``'s ladder that fits; its plan is checked to send
    the convolutions to the groups (fewer structured convolutions than a roomy budget)."""
    [(budget, plan)] = _tightest_plans(net, x1, x2, kind, True)
    roomy = plan_kernel(net, x1, x2, kind, False, 2**30, None, torch.float64, True, 0)
    assert len(plan.engine.convs) < len(roomy.engine.convs) and len(plan.passes) > len(roomy.passes)
    return budget


class _Transposed(nn.Module):
    """Swaps the last two axes (height and width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)


def _transposed_copy(net: nn.Sequential) -> nn.Sequential:
    """The net for transposed images: each convolution with its kernel transposed and its
    kernel size, stride, padding and dilation swapped, then the maps transposed back before the
    flattening (so the dense layers see the original's features)."""
    layers: list[nn.Module] = []
    for module in net:
        if isinstance(module, nn.Flatten):
            layers.append(_Transposed())
        if isinstance(module, nn.Conv2d):
            padding = module.padding if isinstance(module.padding, str) else module.padding[::-1]
            conv = nn.Conv2d(
                module.in_channels, module.out_channels, module.kernel_size[::-1], stride=module.stride[::-1],
                padding=padding, dilation=module.dilation[::-1], groups=module.groups, bias=module.bias is not None,
                padding_mode=module.padding_mode,
            ).double()  # fmt: skip
            with torch.no_grad():
                conv.weight.copy_(module.weight.transpose(-1, -2))
                if module.bias is not None:
                    conv.bias.copy_(module.bias)
            layers.append(conv)
        else:
            layers.append(copy.deepcopy(module))
    return nn.Sequential(*layers).eval()


def _transposable_nets() -> dict[str, nn.Sequential]:
    """ "routes": rectangular kernels, unequal strides, paddings and dilations through the pooled
    shortcut, convolution rows and a Gram convolution (8×10 → 7×10 → 3×5 → 3×2 → 1×1); "generic":
    convolutions that ``unfold`` cannot reproduce (two groups, padding "same" of an even kernel,
    circular padding), which take the groups' route."""
    torch.manual_seed(4)
    routes = nn.Sequential(
        nn.Conv2d(2, 3, (2, 3), padding=(0, 1)), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)), nn.Tanh(),
        nn.Conv2d(4, 5, (3, 2), bias=True), nn.ReLU(),
        nn.Flatten(), nn.Linear(5, 10),
    )  # fmt: skip
    generic = nn.Sequential(
        nn.Conv2d(2, 4, (2, 3), groups=2, stride=(2, 1)), nn.ReLU(),  # 8×10 → 4×8
        nn.Conv2d(4, 2, (2, 4), padding="same", dilation=(1, 2)), nn.Tanh(),
        nn.Conv2d(2, 2, (3, 1), padding=(1, 0), padding_mode="circular"), nn.ReLU(),
        nn.Flatten(), nn.Linear(64, 3),
    )  # fmt: skip
    return {"routes": routes.double().eval(), "generic": generic.double().eval()}


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")
@pytest.mark.parametrize("name", ["routes", "generic"])
def test_transposing_the_images_and_the_convolutions_leaves_the_kernel(name):
    """Transposing every image (H ↔ W) and every convolution (its kernel transposed, its size,
    stride, padding and dilation swapped) transposes every feature map: the outputs do not change,
    and each parameter's gradient is the original's transposed, a permutation of the parameters,
    so the kernel does not change (every kind, two sets and one, and at the tightest budget that
    fits, where the convolutions go through the groups). Rectangular kernels, unequal strides,
    paddings and dilations catch a height taken for a width in the patches
    (``convolutions._patches``) of the rows, the pooled shortcut and the Gram route."""
    net = _transposable_nets()[name]
    x1 = torch.rand(4, 2, 8, 10, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    x2 = torch.rand(3, 2, 8, 10, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    engine = plan_kernel(net, x1, x2, "class-blocks", False, 2**28, None, torch.float64, True, 0).engine
    if name == "routes":
        assert {layer.pool for layer in engine.convs.values()} == {1, 2}, engine.convs
        assert any(layer.gram for layer in engine.convs.values()), engine.convs
    else:
        assert not engine.convs
    flipped = _transposed_copy(net)
    t1, t2 = x1.transpose(-1, -2), x2.transpose(-1, -2)
    torch.testing.assert_close(flipped(t1), net(x1), rtol=1e-12, atol=1e-12)
    for kind in KINDS:
        want = _ntk(net, x1, x2, kind)
        _close(_ntk(flipped, t1, t2, kind), want)
        _close(_ntk(flipped, t1, kind=kind), _ntk(net, x1, kind=kind))
        if name == "routes":
            _close(_ntk(flipped, t1, t2, kind, memory_budget=_tight_budget(flipped, t1, t2, kind)), want)


# -- batch statistics ---------------------------------------------------------------------------------


def _resnet() -> nn.Module:
    model = build_model(model_config("resnet18", (3, 6, 6), 3, width=2, seed=2)).double()
    model.train()  # running statistics away from their defaults, which batch statistics must ignore
    with torch.no_grad():
        model(torch.rand(8, 3, 6, 6, generator=torch.Generator().manual_seed(23), dtype=torch.float64) * 3)
    return model.eval()


def test_batch_statistics_of_a_set_given_twice_tile_the_kernel_and_two_sets_are_a_block_of_their_union():
    """With ``batch_stats=True`` every BatchNorm normalises with the biased mean and variance of
    the kernel's input set (``bridge.entk``'s docstring, RAT's "w/o buffer"), then held fixed.
    The set given twice, [x; x], has the same mean and biased variance (the unbiased one would
    change by (2n−1)/(2n) · n/(n−1)), so its kernel is Θ(x) tiled 2 × 2; and Θ(x1, x2) takes the
    statistics of x1 ∪ x2, so it is the off-diagonal block of Θ([x1; x2]) (and Θ(x2, x1) the
    other one). On the tiny BatchNorm net and a ResNet-18 of width 2 (residual blocks, downsample
    BatchNorm), full and trace kinds."""
    nets = {"bn": tiny_nets()["bn"], "resnet": _resnet()}
    for name, net in nets.items():
        shape = (2, 5, 5) if name == "bn" else (3, 6, 6)
        generator = torch.Generator().manual_seed(24)
        x1 = torch.rand(4, *shape, generator=generator, dtype=torch.float64)
        x2 = torch.rand(3, *shape, generator=generator, dtype=torch.float64) + 0.5
        for kind in ("full", "trace"):
            once = _ntk(net, x1, kind=kind, batch_stats=True)
            twice = _ntk(net, torch.cat([x1, x1]), kind=kind, batch_stats=True)
            _close(twice, np.tile(once, (2, 2) + (1,) * (once.ndim - 2)))
            union = _ntk(net, torch.cat([x1, x2]), kind=kind, batch_stats=True)
            _close(_ntk(net, x1, x2, kind, batch_stats=True), union[:4, 4:])
            _close(_ntk(net, x2, x1, kind, batch_stats=True), union[4:, :4])
            # and the running statistics' kernel is not that one: the relation is not vacuous
            assert relative_error(_ntk(net, x1, kind=kind), once) > 1e-3


def test_permuting_batchnorm_channels_with_their_convolutions_leaves_the_kernel():
    """Permuting a convolution's output channels together with the next BatchNorm's weight, bias
    and running statistics and the next layer's input channels leaves the function, and permutes
    the parameters: the kernel does not change, with running or batch statistics (a statistic
    computed for the wrong channel, or counted over the wrong axis, would not follow)."""
    net = tiny_nets()["bn"]
    perm = torch.tensor([2, 0, 1])
    permuted = copy.deepcopy(net)
    conv, norm, head = permuted[0], permuted[1], permuted[4]
    with torch.no_grad():
        conv.weight.copy_(net[0].weight[perm])
        conv.bias.copy_(net[0].bias[perm])
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(norm, key).copy_(getattr(net[1], key)[perm])
        head.weight.copy_(net[4].weight.reshape(-1, 3, 9)[:, perm].reshape(-1, 27))
    x1, x2 = points(4, 25), points(3, 26)
    torch.testing.assert_close(permuted(x1), net(x1), rtol=1e-12, atol=1e-12)
    for batch_stats in (False, True):
        for kind in ("full", "class-blocks", "trace"):
            want = _ntk(net, x1, x2, kind, batch_stats=batch_stats)
            _close(_ntk(permuted, x1, x2, kind, batch_stats=batch_stats), want)
