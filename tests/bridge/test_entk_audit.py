"""Empirical NTK, audited by routes of its own: per-example ``torch.func.jacrev`` over every
trainable parameter (a Python loop over examples, float64, J Jᵀ formed explicitly), a two-layer
net's kernel written out by hand in numpy, BatchNorm statistics computed by hand, and plans cut
from several tiny memory budgets (many parameter groups, one output at a time, sub-batches with a
partial last one) against one roomy pass. Tolerances: float64 throughout, the routes differ only
in summation order (relative 1e-11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from ntkrobust.bridge import distributed
from ntkrobust.bridge._entk_plan import KernelKind, plan_kernel
from ntkrobust.bridge.entk import BudgetError, empirical_ntk, rademacher_signs
from ntkrobust.bridge.jacobians import plan_parameter_groups
from ntkrobust.bridge.models import NTKLinear

TOL = 1e-11
SHAPE = (2, 5, 5)
C = 3


class Reused(nn.Module):
    """A dense layer called twice per forward pass: no outer-product factors, the generic route."""

    def __init__(self):
        super().__init__()
        self.first, self.shared, self.head = nn.Linear(50, 6), nn.Linear(6, 6), nn.Linear(6, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(torch.tanh(self.first(x.flatten(1))))))))


def tiny_nets() -> dict[str, nn.Module]:
    """An MLP (dense route), a CNN with biased convolutions (rows and Gram routes), a CNN whose
    first convolution takes the pooled shortcut (10 outputs; and with its bias frozen), a net
    reusing a dense layer, a net with BatchNorm (running statistics set away from their defaults),
    a net of convolutions alone, an NTK-parametrised twin (dense scales s, s_b ≠ 1), and one with
    frozen weights and biases."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(50, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, C))
    # two layers after the CNN's Gram convolution: its g_c·g′_d is not symmetric in (c, d)
    cnn = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(3, 4, 2), nn.Tanh(), nn.Flatten(),
        nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, C),
    )  # fmt: skip
    pooled = nn.Sequential(nn.Conv2d(2, 2, 2), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 10))
    pooled_frozen = nn.Sequential(nn.Conv2d(2, 2, 2), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 10))
    pooled_frozen[0].bias.requires_grad_(False)  # it still moves the ReLU's mask of the shortcut
    reused = Reused()
    bn = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(27, C))
    with torch.no_grad():
        bn[1].running_mean.uniform_(-0.5, 0.5)
        bn[1].running_var.uniform_(0.5, 2.0)
        bn[1].weight.uniform_(0.5, 1.5)
        bn[1].bias.uniform_(-0.5, 0.5)
    allconv = nn.Sequential(  # no dense layer at all: the convolutions' rows are the structured pass
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, C, 2, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    twin = nn.Sequential(
        nn.Flatten(), NTKLinear(50, 6, W_std=1.7, b_std=0.3), nn.ReLU(), NTKLinear(6, C, W_std=0.8, b_std=1.4)
    )
    frozen = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(),
        nn.Linear(4, C),
    )  # fmt: skip
    frozen[0].bias.requires_grad_(False)  # a frozen convolution bias still shifts its output
    frozen[3].bias.requires_grad_(False)  # a dense layer without a trainable bias: no s_b² term
    frozen[5].weight.requires_grad_(False)  # a dense layer whose weight is frozen: its bias alone
    return {name: net.double().eval() for name, net in locals().items() if isinstance(net, nn.Module)}


def jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J (N, C, P): one ``jacrev`` per example over every trainable parameter (frozen ones and
    buffers held as constants), eval mode, float64."""
    model = model.double().eval()
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    constants = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    constants |= {name: b.detach() for name, b in model.named_buffers()}

    def outputs(params: dict[str, torch.Tensor], example: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**constants, **params}, (example[None],))[0]

    rows = []
    for example in x.double():
        grads = jacrev(outputs)(params, example)
        rows.append(torch.cat([grads[name].flatten(1) for name in params], dim=1))
    return torch.stack(rows)


def reference(kind: str, j1: torch.Tensor, j2: torch.Tensor) -> np.ndarray:
    """The kind's kernel from explicit Jacobians (N1, C, P), (N2, C, P)."""
    full = torch.einsum("icp,jdp->ijcd", j1, j2).numpy()
    if kind == "full":
        return full
    blocks = np.einsum("ijcc->ijc", full)
    if kind == "class-blocks":
        return blocks
    if kind == "trace":
        return blocks.mean(axis=2)
    return blocks[:, :, int(kind.partition(":")[2])]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def points(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def jacobians() -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """name → (net, x1 (5 points), x2 (3 points), J(x1), J(x2))."""
    x1, x2 = points(5, 1), points(3, 2)
    return {name: (net, x1, x2, jacobian(net, x1), jacobian(net, x2)) for name, net in tiny_nets().items()}


KINDS = ["full", "class-blocks", "trace", "class:0", "class:2"]


@pytest.mark.parametrize("name", list(tiny_nets()))
@pytest.mark.parametrize("structured", [True, False], ids=["structured", "generic"])
def test_every_kind_is_the_jacrev_gram_symmetric_and_between_two_sets(jacobians, name, structured):
    """Every kind, Θ(x1, x1) and Θ(x1, x2), equals J J′ᵀ of the explicit Jacobians: catches a
    wrong transpose of the (c, d) pair (only visible between two sets), class blocks with the
    wrong diagonal, a dropped bias or scale in the dense factors, a dropped 1/C in the trace."""
    net, x1, x2, j1, j2 = jacobians[name]
    for kind in KINDS:
        for inputs, pair in (((x1,), (j1, j1)), ((x1, x2), (j1, j2))):
            got = empirical_ntk(net, *inputs, kind=kind, dtype=torch.float64, structured=structured)
            assert relative_error(got, reference(kind, *pair)) < TOL, (kind, len(inputs))


def test_the_rademacher_estimate_is_the_signed_jacobians_gram(jacobians):
    """rademacher:K = (1/KC) Σ_k (v_k J)(v_k J′)ᵀ with the signs v (K, C) drawn from the seed, from
    explicit Jacobians (not from the library's full kernel); the signs are fair ±1 draws."""
    for name in ("mlp", "cnn", "bn"):
        net, x1, x2, j1, j2 = jacobians[name]
        for draws, seed in ((1, 0), (5, 7)):
            signs = rademacher_signs(draws, C, seed)
            expected = torch.einsum("kc,icp,kd,jdp->ij", signs, j1, signs, j2).numpy() / (draws * C)
            got = empirical_ntk(net, x1, x2, kind=f"rademacher:{draws}", dtype=torch.float64, seed=seed)
            assert relative_error(got, expected) < TOL, (name, draws)
    signs = rademacher_signs(4000, 5, 3).numpy()
    assert signs.shape == (4000, 5) and set(np.unique(signs)) == {-1.0, 1.0}
    assert np.abs(signs.mean()) < 0.05 and np.abs(signs.T @ signs / 4000 - np.eye(5)).max() < 0.06
    np.testing.assert_array_equal(rademacher_signs(6, 4, 11), rademacher_signs(6, 4, 11))
    assert not torch.equal(rademacher_signs(6, 4, 11), rademacher_signs(6, 4, 12))


def test_a_two_layer_net_has_the_kernel_written_out_by_hand():
    """f(x) = V tanh(W x + b) + c: Θ_cd(x, x′) = δ_cd (σ·σ′ + 1) + Σ_j V_cj V_dj σ̇_j σ̇′_j (x·x′ + 1),
    numpy by hand, for the dense route and the generic one, every kind."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(50, 8), nn.Tanh(), nn.Linear(8, C)).double().eval()
    x1, x2 = points(4, 5), points(3, 6)
    w, b = net[1].weight.detach().numpy(), net[1].bias.detach().numpy()
    v = net[3].weight.detach().numpy()

    def features(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = x.reshape(x.shape[0], -1).numpy()
        pre = flat @ w.T + b
        return flat, np.tanh(pre), 1 - np.tanh(pre) ** 2

    (a1, s1, d1), (a2, s2, d2) = features(x1), features(x2)
    readout = (s1 @ s2.T + 1)[:, :, None, None] * np.eye(C)
    hidden = np.einsum("cj,dj,ij,kj->ikcd", v, v, d1, d2) * (a1 @ a2.T + 1)[:, :, None, None]
    full = readout + hidden
    for structured in (True, False):
        for kind in KINDS:
            expected = {
                "full": full,
                "class-blocks": np.einsum("ijcc->ijc", full),
                "trace": np.einsum("ijcc->ij", full) / C,
            }.get(kind)
            if expected is None:
                c = int(kind.partition(":")[2])
                expected = full[:, :, c, c]
            got = empirical_ntk(net, x1, x2, kind=kind, dtype=torch.float64, structured=structured)
            assert relative_error(got, expected) < TOL, (kind, structured)


def _passes(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor, kind: str, budget: int, structured: bool):
    try:
        return plan_kernel(net, x1, x2, kind, False, budget, None, torch.float64, structured, 0)
    except BudgetError:
        return None


def _tightest_plans(net, x1, x2, kind, structured):
    """The smallest budget on a ladder that still fits, and its plan."""
    ladder = [int(3_000 * 1.25**k) for k in range(30)]
    plans = [(budget, _passes(net, x1, x2, kind, budget, structured)) for budget in ladder]
    fitting = [(budget, plan) for budget, plan in plans if plan is not None]
    return fitting[:1]


@pytest.mark.parametrize("name", ["mlp", "cnn", "bn"])
@pytest.mark.parametrize("structured", [True, False], ids=["structured", "generic"])
def test_tiny_budgets_cut_many_passes_to_the_kernel_of_one(jacobians, name, structured):
    """The smallest budget that still fits (many parameter groups, tensors cut into slices, one
    output at a time for the class blocks and the trace, sub-batches of one or two with a partial
    last one) give the kernel of explicit Jacobians, as does one roomy pass."""
    net, x1, x2, j1, j2 = jacobians[name]
    many = 0
    for kind in ("class-blocks", "trace", "full"):
        for other, pair in ((x2, (j1, j2)), (None, (j1, j1))):  # None: symmetric, each group's rows once
            roomy = plan_kernel(net, x1, other, kind, False, 2**30, None, torch.float64, structured, 0)
            assert len(roomy.passes) <= 2 and min(roomy.batch) >= x1.shape[0]
            tight = _tightest_plans(net, x1, other, kind, structured)
            assert tight, "no budget on the ladder fits"
            for budget, plan in tight:
                many = max(many, len(plan.passes))
                options = {"kind": kind, "dtype": torch.float64, "structured": structured, "memory_budget": budget}
                got = empirical_ntk(net, x1, other, **options)
                assert relative_error(got, reference(kind, *pair)) < TOL, (kind, budget, other is None)
            assert min(tight[0][1].batch) < x2.shape[0]  # sub-batches smaller than either set
    if not structured:
        assert many >= 6  # several groups, and several outputs' passes


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_sub_batches_of_any_size_and_a_partial_last_one_give_the_kernel(jacobians, monkeypatch, size):
    """Sub-batches of ``size`` over 5 and 3 points: the last one partial (5 = 2 + 2 + 1, ...)."""
    from ntkrobust.bridge import _entk_plan as entk_plan

    monkeypatch.setattr(entk_plan, "_MAX_SUB_BATCH", size)
    for name in ("cnn", "bn"):
        net, x1, x2, j1, j2 = jacobians[name]
        plan = plan_kernel(net, x1, x2, "class-blocks", False, 2**30, None, torch.float64, False, 0)
        assert set(plan.batch) == {size}
        for structured in (True, False):
            for kind in ("full", "class-blocks"):
                got = empirical_ntk(net, x1, x2, kind=kind, dtype=torch.float64, structured=structured)
                assert relative_error(got, reference(kind, j1, j2)) < TOL, (name, kind, structured)
            got = empirical_ntk(net, x1, kind="trace", dtype=torch.float64, structured=structured)
            assert relative_error(got, reference("trace", j1, j1)) < TOL, (name, structured)


@pytest.mark.parametrize("kind", ["full", "class-blocks", "trace", "class:1"])
def test_gram_convolutions_in_blocks_of_one_row_mirror_to_the_jacrev_gram(jacobians, monkeypatch, kind):
    """The CNN's second convolution (one output position) takes its Grams; in blocks of one kernel
    row, each block's columns right of the diagonal are mirrored below it ((c, d) swapped too)."""
    from ntkrobust.bridge import convolutions

    net, x1, _, j1, _ = jacobians["cnn"]
    monkeypatch.setattr(convolutions, "_GRAM_BLOCK_ELEMENTS", 1)
    got = empirical_ntk(net, x1, kind=kind, dtype=torch.float64)
    assert relative_error(got, reference(kind, j1, j1)) < TOL


def test_batch_statistics_are_the_biased_ones_of_both_sets_computed_by_hand(jacobians):
    """batch_stats=True: the BatchNorm normalises with the mean and the biased variance of its
    input over both sets (numpy by hand, over examples and positions), held fixed: the kernel is
    the explicit Jacobians' of a copy whose running statistics are those."""
    import copy

    net, x1, x2, _, _ = jacobians["bn"]
    with torch.no_grad():
        pre = net[0](torch.cat([x1, x2])).numpy()  # (8, 3, 3, 3), the BatchNorm's input
    mean = pre.mean(axis=(0, 2, 3))
    variance = ((pre - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))  # biased: / n
    fixed = copy.deepcopy(net)
    with torch.no_grad():
        fixed[1].running_mean.copy_(torch.from_numpy(mean))
        fixed[1].running_var.copy_(torch.from_numpy(variance))
    j1, j2 = jacobian(fixed, x1), jacobian(fixed, x2)
    for kind in ("full", "class-blocks", "trace"):
        got = empirical_ntk(net, x1, x2, kind=kind, dtype=torch.float64, batch_stats=True)
        assert relative_error(got, reference(kind, j1, j2)) < TOL, kind
    with torch.no_grad():  # the symmetric kernel: the statistics of x1 alone
        pre = net[0](x1).numpy()
        fixed[1].running_mean.copy_(torch.from_numpy(pre.mean(axis=(0, 2, 3))))
        fixed[1].running_var.copy_(torch.from_numpy(pre.var(axis=(0, 2, 3))))
    j1 = jacobian(fixed, x1)
    got = empirical_ntk(net, x1, kind="class-blocks", dtype=torch.float64, batch_stats=True)
    assert relative_error(got, reference("class-blocks", j1, j1)) < TOL
    assert torch.equal(net[1].running_var, jacobians["bn"][0][1].running_var)  # the net is untouched


@pytest.mark.parametrize("kind", ["full", "class-blocks", "trace", "class:1", "rademacher:2"])
def test_emulated_ranks_share_the_passes_and_their_parts_sum_to_the_kernel(jacobians, monkeypatch, kind):
    """Three ranks emulated in one process (``distributed.rank`` / ``world_size`` patched, the
    all-reduce then a no-op): each computes its round-robin share of the passes, every share does
    some work, and the three parts add up to the one-process kernel."""
    net, x1, x2, _, _ = jacobians["bn"]
    ((budget, plan),) = _tightest_plans(net, x1, x2, kind, False)
    assert len(plan.passes) >= 3
    options = {"kind": kind, "dtype": torch.float64, "structured": False, "memory_budget": budget}
    whole = empirical_ntk(net, x1, x2, **options)
    parts = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        parts.append(empirical_ntk(net, x1, x2, **options))
    assert all(np.abs(part).max() > 1e-6 * np.abs(whole).max() for part in parts)
    assert relative_error(sum(parts), whole) < TOL
    kernel = torch.ones(2, 2, dtype=torch.float64)
    assert distributed.all_reduce_sum(kernel) is kernel and torch.equal(kernel, torch.ones(2, 2, dtype=torch.float64))


def test_parameter_groups_cut_the_flattened_parameters_in_order_within_capacity():
    """Concatenated in order, the groups' slices are exactly the parameters' elements (numpy by
    hand), every group within capacity, whole tensors wherever one fits in a fresh group."""
    sizes = {"a": 5, "b": 12, "c": 1, "d": 7, "e": 3}
    offsets = np.cumsum([0, *sizes.values()])
    start_of = dict(zip(sizes, offsets[:-1], strict=True))
    for capacity in range(1, 30):
        groups = plan_parameter_groups(sizes, capacity)
        pieces = [(start_of[name] + start, start_of[name] + stop) for group in groups for name, start, stop in group]
        flat = np.concatenate([np.arange(start, stop) for start, stop in pieces])
        np.testing.assert_array_equal(flat, np.arange(sum(sizes.values())))
        assert all(0 < sum(stop - start for _, start, stop in group) <= capacity for group in groups)
        for name, size in sizes.items():
            pieces = [(start, stop) for group in groups for n, start, stop in group if n == name]
            if size <= capacity:
                assert pieces == [(0, size)]
        assert len(groups) >= -(-sum(sizes.values()) // capacity)


@pytest.mark.parametrize("kind", ["class-blocks", "trace"])
def test_one_output_at_a_time_passes_cover_every_output_and_parameter_once(kind):
    """With C groups or more, every output c gets passes whose groups cover every element once."""
    from ntkrobust.bridge import _entk_plan as entk_plan

    sizes = {"a": 40, "b": 7, "c": 19}
    for capacity in (1, 2, 3, 4, 13, 20, 45):  # below C = 4 too: groups of one output's columns
        passes = entk_plan._plan_passes(KernelKind(kind), sizes, 4, capacity)
        outputs = {step.output for step in passes}
        assert outputs == set(range(4)), capacity
        for c in range(4):
            counts = {name: np.zeros(size, dtype=int) for name, size in sizes.items()}
            for step in passes:
                if step.output == c:
                    for name, start, stop in step.group:
                        counts[name][start:stop] += 1
            assert all((count == 1).all() for count in counts.values()), (capacity, c)


def test_each_kind_differentiates_the_outputs_it_says():
    """C outputs for the full kernel, its class blocks and the trace, one for a class, K for K draws."""
    for kind, outputs in (("full", 5), ("class-blocks", 5), ("trace", 5), ("class:0", 1), ("class:4", 1)):
        assert KernelKind.parse(kind).outputs(5) == outputs
    assert KernelKind.parse("rademacher:7").outputs(5) == 7
    with pytest.raises(ValueError, match="class 5 is not an output"):
        KernelKind.parse("class:5").outputs(5)


@pytest.mark.parametrize("n", [199, 250, 301, 450])
def test_symmetric_products_from_row_blocks_equal_the_plain_product(n):
    """A Aᵀ from its upper row blocks mirrored (2 or 3 blocks of uneven edges), numpy by hand."""
    from ntkrobust.bridge import entk

    a = torch.rand(2, n, 7, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    expected = np.einsum("bip,bjp->bij", a.numpy(), a.numpy())
    np.testing.assert_allclose(entk._products(a, a).numpy(), expected, rtol=1e-13, atol=1e-13)
