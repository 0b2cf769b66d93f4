"""The empirical NTK's plan (``bridge._entk_plan``), its arithmetic written out by hand: the
sub-batch size at the exact edges of its budget (half the budget over the documented per-example
bytes, itemsize · (activations · (2 + C′) + kept + C′²)), the capacity left to the parameter
groups (half the budget less the structured layers' factors of every example of both sets), the
quarter of the budget at which convolution rows leave for the groups, each pass's sub-batch from
the whole tensors it touches, the automatic budget from the free memory, one-output passes from
exactly C groups up, and the BatchNorm statistics' copy keeping the net's own momentum.

The kernel's values under these plans are audited in ``test_entk_audit.py``; here the plans
themselves, so a plan that is merely more cautious (smaller sub-batches, more groups) or more
daring (past the budget) than documented fails too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkrobust.bridge import _entk_plan as plan_module
from ntkrobust.bridge import distributed
from ntkrobust.bridge._entk_plan import KernelKind, Pass, plan_kernel
from ntkrobust.bridge.entk import BudgetError, with_batch_statistics

SHAPE = (2, 5, 5)


def points(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Reused(nn.Module):
    """Two dense layers with factors (first: 50 → 6, head: 6 → 3) around a layer called twice,
    which only the generic groups can take (its 36 + 6 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.shared, self.head = nn.Linear(50, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(torch.tanh(self.first(x.flatten(1))))))))


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, int], int, int]]:
    """(sizes, outputs, capacity) of each ``_plan_passes`` call."""
    calls: list[tuple[dict[str, int], int, int]] = []
    original = plan_module._plan_passes

    def spy(kind, sizes, outputs, capacity):  # type: ignore[no-untyped-def]
        calls.append((dict(sizes), outputs, capacity))
        return original(kind, sizes, outputs, capacity)

    monkeypatch.setattr(plan_module, "_plan_passes", spy)
    return calls


@pytest.fixture
def no_cpu_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sub-batches limited by the budget alone (the CPU's working-set cap far away)."""
    monkeypatch.setattr(plan_module, "_CPU_WORKING_BYTES", 2**50)
    monkeypatch.setattr(plan_module, "_CPU_WORKING_BYTES_RETAINED", 2**50)


@pytest.mark.parametrize(
    ("kept", "activations", "outputs", "itemsize"), [(5, 10, 3, 8), (1000, 1, 1, 4), (0, 7, 12, 8), (37, 100, 2, 2)]
)
def test_the_sub_batch_is_half_the_budget_over_the_documented_bytes_per_example(kept, activations, outputs, itemsize):
    """At budget 2·k·b it is k; one byte less, k − 1 (b the bytes per example by hand)."""
    per_example = itemsize * (activations * (2 + outputs) + kept + outputs * outputs)
    size = plan_module._sub_batch_size
    for k in (1, 2, 3, 7, 128):
        assert size(kept, activations, outputs, itemsize, 2 * k * per_example) == k
        assert size(kept, activations, outputs, itemsize, 2 * k * per_example + 1) == k
        if k > 1:
            assert size(kept, activations, outputs, itemsize, 2 * k * per_example - 1) == k - 1
    assert size(kept, activations, outputs, itemsize, 2 * 1000 * per_example) == 128  # at most 128
    with pytest.raises(BudgetError, match=rf"\(needs about {2 * per_example / 2**20:.3g} MiB\)$"):
        size(kept, activations, outputs, itemsize, 2 * per_example - 1)


def test_a_refusal_says_the_budget_and_what_one_example_needs():
    """One example of 2**20 kept numbers in float64 (8.04 MiB with its activations and
    cotangents) needs twice that: half the budget is the sub-batch's."""
    per_example = 8 * (1000 * (2 + 3) + 2**20 + 3 * 3)
    budget = 2 * per_example - 1
    expected = f"memory budget of {budget / 2**20:.3g} MiB is too small for one example's Jacobian chunk "
    expected += f"(needs about {2 * per_example / 2**20:.3g} MiB)"
    assert expected.endswith("(needs about 16.1 MiB)")
    with pytest.raises(BudgetError) as refused:
        plan_module._sub_batch_size(2**20, 1000, 3, 8, budget)
    assert str(refused.value) == expected


def test_on_a_cpu_the_working_set_caps_what_the_budget_allows(monkeypatch):
    per_example = 8 * (10 * 5 + 5 + 9)
    size = plan_module._sub_batch_size
    monkeypatch.setattr(plan_module, "freed_memory_retained", lambda: False)
    monkeypatch.setattr(plan_module, "_CPU_WORKING_BYTES", 5 * per_example + 3)
    assert size(5, 10, 3, 8, 2 * 4 * per_example, cpu=True) == 4  # the budget is the smaller
    assert size(5, 10, 3, 8, 2 * 9 * per_example, cpu=True) == 5  # the working set is
    assert size(5, 10, 3, 8, 2 * 9 * per_example, cpu=False) == 9
    monkeypatch.setattr(plan_module, "_CPU_WORKING_BYTES", 1)
    assert size(5, 10, 3, 8, 2 * 9 * per_example, cpu=True) == 1  # at least one example


@pytest.mark.parametrize(("kind", "outputs"), [("full", 3), ("class:1", 1)])
@pytest.mark.parametrize("budget", [2**20, 123_457])
@pytest.mark.parametrize("second_set", [True, False])
def test_the_groups_get_half_the_budget_less_every_examples_factors(seen, kind, outputs, budget, second_set):
    """Factors kept per example: g (C′ × out) and h (in) of each dense layer with factors,
    C′·6 + 50 and C′·3 + 6; of every example of both sets, in float64."""
    x1, x2 = points(5, 1), (points(3, 2) if second_set else None)
    samples = 8 if second_set else 5
    plan_kernel(Reused().double(), x1, x2, kind, False, budget, None, torch.float64, True, 0)
    factors = (outputs * 6 + 50) + (outputs * 3 + 6)
    capacity = (budget // 2 - samples * 8 * factors) // (samples * 8)
    assert seen == [({"shared.weight": 36, "shared.bias": 6}, outputs, capacity)]


def test_the_budget_is_the_one_the_ranks_agree_on(seen, monkeypatch):
    """Under torchrun the plan is cut from the smallest rank's budget (``agreed_minimum``)."""
    monkeypatch.setattr(distributed, "agreed_minimum", lambda budget, device: budget // 3)
    plan_kernel(Reused().double(), points(5, 1), None, "full", False, 3 * 2**20, None, torch.float64, True, 0)
    factors = (3 * 6 + 50) + (3 * 3 + 6)
    assert seen[0][2] == (2**20 // 2 - 5 * 8 * factors) // (5 * 8)


@pytest.mark.parametrize(("kind", "one_at_a_time"), [("class-blocks", True), ("full", False)])
def test_each_pass_takes_the_sub_batch_of_the_whole_tensors_it_touches(no_cpu_cap, kind, one_at_a_time):
    """An MLP (7 + 50·7 + 3 + 7·3 parameters, activations 50 + 7 + 7 + 3 = 67 per example) over
    25 + 15 examples, capacity 200 numbers per example: groups of at most 200 elements for one
    output, 200 // 3 = 66 for all three; the first weight is cut, and a pass over a slice of it
    holds its whole gradient (C′·350 numbers) while it is formed."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(50, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    numel = {"1.weight": 350, "1.bias": 7, "3.weight": 21, "3.bias": 3}
    budget = 2 * 200 * 40 * 8  # capacity 200 over 25 + 15 examples in float64
    plan = plan_kernel(net, points(25, 1), points(15, 2), kind, False, budget, None, torch.float64, False, 0)
    assert all((step.output is not None) is one_at_a_time for step in plan.passes)
    sliced = [step for step in plan.passes if any(stop - start < numel[name] for name, start, stop in step.group)]
    assert sliced, "the budget cuts no tensor"
    c = 1 if one_at_a_time else 3
    for step, batch in zip(plan.passes, plan.batch, strict=True):
        assert c * sum(stop - start for _, start, stop in step.group) <= 200, step  # within the capacity
        kept = c * sum(numel[name] for name in {name for name, _, _ in step.group})
        per_example = 8 * (67 * (2 + c) + kept + c * c)
        assert batch == min((budget // 2) // per_example, 128), step
    if one_at_a_time:  # the second group touches every tensor, the first one only the first weight
        assert len(set(plan.batch)) > 1


def _conv_net() -> nn.Module:
    """A convolution (3 × 2·3·3 + 3 = 57 parameters; 9 positions, so rows, not Grams) and a
    dense layer 27 → 3 with factors."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 3)).double()


def test_convolution_rows_stay_while_they_fit_a_quarter_of_the_budget(seen):
    """Rows (C′·57) and dense factors (C′·3 + 27) of 5 examples in float64 take up the quarter
    exactly at budget B; at B − 1 the convolution goes to the groups (its 54 + 3 parameters)."""
    numbers = 3 * 57 + (3 * 3 + 27)
    edge = 4 * 5 * 8 * numbers
    plan_kernel(_conv_net(), points(5, 3), None, "full", False, edge, None, torch.float64, True, 0)
    plan_kernel(_conv_net(), points(5, 3), None, "full", False, edge - 1, None, torch.float64, True, 0)
    assert [sizes for sizes, _, _ in seen] == [{}, {"0.weight": 54, "0.bias": 3}]
    assert seen[1][2] == ((edge - 1) // 2 - 5 * 8 * (3 * 3 + 27)) // (5 * 8)


@pytest.mark.parametrize(
    ("free", "expected"), [(10 * 2**30, int(0.4 * 10 * 2**30)), (2**30, 2**30), (None, int(0.4 * 8 * 2**30))]
)
def test_the_automatic_budget_is_a_share_of_the_free_memory_and_at_least_one_gib(monkeypatch, free, expected):
    monkeypatch.setattr(plan_module, "available_memory", lambda: free)
    assert plan_module.auto_memory_budget("cpu") == expected


def test_the_automatic_budget_of_a_gpu_is_its_free_memory_not_its_total(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (3 * 2**30, 80 * 2**30))
    assert plan_module.auto_memory_budget("cuda:1") == int(0.4 * 3 * 2**30)
    assert asked == [torch.device("cuda:1")]


def test_a_plan_without_a_budget_asks_for_its_devices(monkeypatch, seen):
    asked = []
    monkeypatch.setattr(plan_module, "auto_memory_budget", lambda device="unasked": asked.append(device) or 2**20)
    plan_kernel(Reused().double(), points(5, 1), None, "full", False, None, "cpu", "float32", True, 0)
    assert asked == [torch.device("cpu")]
    factors = (3 * 6 + 50) + (3 * 3 + 6)
    assert seen[0][2] == (2**20 // 2 - 5 * 4 * factors) // (5 * 4)  # float32 from its name: 4 bytes


def test_exactly_c_groups_of_all_outputs_go_one_output_at_a_time():
    """Capacity 8 for C = 2 outputs: groups of 4 of 8 elements, exactly C = 2 of them, so one
    output at a time through one group of 8; with capacity 9, 2 groups (of 4) again."""
    sizes = {"a": 8}
    for capacity in (8, 9):
        passes = plan_module._plan_passes(KernelKind("class-blocks"), sizes, 2, capacity)
        assert passes == [Pass([("a", 0, 8)], 0), Pass([("a", 0, 8)], 1)], capacity
    # capacity 10: groups of 5, two of them again; 16: one group of 8, all outputs together
    assert plan_module._plan_passes(KernelKind("trace"), sizes, 2, 16) == [Pass([("a", 0, 8)], None)]


def test_a_capacity_of_exactly_c_takes_all_outputs_together_one_element_each():
    passes = plan_module._plan_passes(KernelKind("full"), {"a": 3}, 3, 3)
    assert passes == [Pass([("a", i, i + 1)], None) for i in range(3)]
    with pytest.raises(BudgetError):
        plan_module._plan_passes(KernelKind("full"), {"a": 3}, 3, 2)


def test_one_output_keeps_its_passes_whole():
    """A net of one output (or one class, one draw): no per-output split to make."""
    passes = plan_module._plan_passes(KernelKind("trace"), {"a": 5, "b": 4}, 1, 3)
    assert [step.output for step in passes] == [None] * len(passes) and len(passes) >= 3


def test_the_batch_statistics_copy_keeps_the_nets_momentum_and_statistics_of_two_points():
    """Momentum 0.3 (set to 1 only while the statistics are taken); two points' biased variance."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(50, 4), nn.BatchNorm1d(4, momentum=0.3), nn.Linear(4, 2)).double()
    x = points(2, 5)
    copy = with_batch_statistics(net, x)
    assert copy[2].momentum == 0.3 and net[2].momentum == 0.3 and not copy.training
    pre = net[1](x.flatten(1)).detach()
    mean = (pre[0] + pre[1]) / 2
    torch.testing.assert_close(copy[2].running_mean, mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        copy[2].running_var, ((pre[0] - mean) ** 2 + (pre[1] - mean) ** 2) / 2, rtol=1e-12, atol=1e-14
    )


def test_rademacher_draws_stop_below_two_to_the_31():
    assert KernelKind("rademacher", 2**31 - 1).outputs(10) == 2**31 - 1
    with pytest.raises(ValueError, match="rademacher:K"):
        KernelKind("rademacher", 2**31)
    with pytest.raises(ValueError, match="rademacher:K"):
        KernelKind.parse(f"rademacher:{2**31}")


@pytest.mark.parametrize(
    ("size", "said"),
    [(8000, "0.00763"), (16857360, "16.1"), (2**20 * 999.7, "1000"), (2**31, "2048"), (10, "9.54e-06")],
)
def test_a_refusal_says_sizes_in_mib_to_three_figures_without_an_exponent_from_1000_up(size, said):
    """A tiny budget of the Python API was "needs about 0.0 MiB"; from 1000 MiB up whole MiB."""
    assert plan_module._mib(int(size)) == said
