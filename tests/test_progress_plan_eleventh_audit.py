"""Eleventh audit of the progress lines and the empirical NTK's plan, for mutations the earlier
tests let through.

Progress: a clock driven by the test (``test_progress_audit``'s) that does not start at zero, the
lines written out by hand, and tqdm's bar read from the captured stderr (a fake terminal): the
bar says its stage, its count out of the total and its unit.

Plan, its arithmetic written out by hand: the sub-batch of a pass on a GPU (the meta device
standing in, as in the placement tests) is half the budget over its bytes per example, with no
CPU working-set cap, which a CPU plan keeps; the full kernel never takes one output at a time,
however many groups; a convolution's Grams are priced by pairs of outputs for the full kind only
(``_gram_pays``'s products per pair, by hand); one class counts its one output against the
quarter of the budget that convolution rows may fill; a non-finite value in either set is
refused; a dtype is taken by its name with or without ``torch.``. The kernel values of these
routes are audited against explicit Jacobians in ``bridge/test_entk_audit.py``; here the plan."""

from __future__ import annotations

import logging

import pytest
import torch
from test_progress_audit import _lines, clock  # noqa: F401  (the fixture, by name)
from torch import nn

from ntkrobust._progress import progress_bar, progress_iter
from ntkrobust.bridge import _entk_plan as plan_module


def test_elapsed_seconds_count_from_the_loops_start_not_from_the_clocks_zero(clock, caplog):  # noqa: F811
    """``time.monotonic`` starts anywhere (here 5000 s): the line at 5060 s says 60 s, and the
    elapsed time is rounded to the nearest second (89.6 s after the start: 90 s, not 89)."""
    clock.now = 5000.0
    with caplog.at_level(logging.INFO, logger="ntkrobust"), progress_bar(3, "Gram", "block", show=False) as bar:
        clock.now = 5060.0
        bar.update(1)
        clock.now = 5089.6 + 60.0
        bar.update(1)
    assert _lines(caplog) == ["Gram: 1/3 blocks (33%), 60 s", "Gram: 2/3 blocks (67%), 150 s"]


def test_no_line_while_the_clock_has_not_moved(clock, caplog):  # noqa: F811
    """Updates at the loop's start, and again at the instant of the last line, print nothing more."""
    clock.now = 100.0
    with caplog.at_level(logging.INFO, logger="ntkrobust"), progress_bar(5, "PGD", "step", show=False) as bar:
        bar.update(1)  # 0 s after the start
        clock.now = 160.0
        bar.update(1)  # the line
        bar.update(1)  # the same instant
    assert _lines(caplog) == ["PGD: 2/5 steps (40%), 60 s"]


def test_a_one_item_loop_says_its_share(clock, caplog):  # noqa: F811
    """A total of one has a share (100%); only an unknown total (0) has none."""
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        for _ in progress_iter(["only"], "robust-only", "kernel", show=False):
            clock.now = 61.4
    assert _lines(caplog) == ["robust-only: 1/1 kernels (100%), 61 s"]


def test_a_terminal_bar_says_its_stage_its_count_of_the_total_and_its_unit(monkeypatch, capsys):
    """stderr a (fake) terminal: tqdm's bar, drawn on the captured stderr, carries the stage's
    label, "3/3" (the total known) and the unit's rate, e.g. "Gram (test): 100%|...| 3/3 [..., block/s]"."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress_bar(3, "Gram (test)", "block", show=True, leave=True) as bar:
        bar.update(3)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("Gram (test): 100%"), err
    assert "| 3/3 [" in final and "block/s]" in final, err


@pytest.mark.parametrize(("device", "expected"), [("cpu", 3), ("meta", 20)])
def test_only_a_cpu_plan_keeps_its_sub_batches_to_the_cpu_working_set(monkeypatch, device, expected):
    """An MLP 50 → 7 → 3 whose dense layers all take the structured route: one pass, keeping the
    factors (3·7 + 50) + (3·3 + 7) = 87 numbers per example, activations 50 + 7 + 7 + 3 = 67, so
    8 · (67 · (2 + 3) + 87 + 3²) = 3448 bytes per example in float64. A budget of 2 · 20 · 3448
    gives 20 on a GPU (the meta device here); a CPU working set of 3 examples' bytes caps it at 3."""
    per_example = 8 * (67 * (2 + 3) + (3 * 7 + 50) + (3 * 3 + 7) + 3 * 3)
    assert per_example == 3448
    monkeypatch.setattr(plan_module, "freed_memory_retained", lambda: False)
    monkeypatch.setattr(plan_module, "_CPU_WORKING_BYTES", 3 * per_example + 7)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(50, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.rand(30, 2, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    plan = plan_module.plan_kernel(net, x, None, "full", False, 2 * 20 * per_example, device, None, True, 0)
    assert plan.passes == [plan_module.Pass(None, None)] and plan.batch == [expected]


@pytest.mark.parametrize("capacity", [3, 4, 5])
def test_the_full_kernel_pairs_every_output_in_each_pass_however_many_groups(capacity):
    """The full kernel pairs outputs c and d, so no pass may take one output alone: 300 elements
    in groups of capacity // 3 = 1 element (300 passes, well past C), each with every output."""
    passes = plan_module._plan_passes(plan_module.KernelKind("full"), {"a": 300}, 3, capacity)
    assert passes == [plan_module.Pass([("a", i, i + 1)], None) for i in range(300)]


@pytest.mark.parametrize(
    ("kind", "gram"),
    [("full", True), ("class-blocks", False), ("trace", False), ("class:1", False), ("rademacher:4", False)],
)
def test_only_the_full_kind_prices_a_convolution_by_pairs_of_outputs(kind, gram):
    """``test_entk``'s convolution (S = 2 positions, O = 2 channels, K = 5, C = 4): Grams take
    4(2p + 5) products per pair of examples, rows 10p. The full kernel pairs every two outputs,
    p = C² = 16: 148 < 160, the Grams; the diagonal kinds (and 4 draws, a trace) p = 4: 52 > 40,
    and one class p = 1: 28 > 10, the rows."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(4, 4)).double()
    x = torch.rand(4, 1, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    plan = plan_module.plan_kernel(net, x, None, kind, False, 2**30, None, None, True, 0)
    assert [layer.gram for layer in plan.engine.convs.values()] == [gram]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_value_in_either_set_is_refused(bad):
    """Every entry of the kernel would be NaN: one bad value in x1, or in x2 alone, is refused."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).double()
    finite = torch.zeros(3, 6, dtype=torch.float64)
    spoiled = finite.clone()
    spoiled[2, 4] = bad
    for x1, x2 in ((spoiled, None), (spoiled, finite), (finite, spoiled)):
        with pytest.raises(ValueError, match="inputs contain NaN or inf"):
            plan_module.plan_kernel(net, x1, x2, "full", False, 2**30, None, None, True, 0)
    plan_module.plan_kernel(net, finite, finite, "full", False, 2**30, None, None, True, 0)  # the control


def test_one_class_prices_the_convolution_rows_for_its_one_output():
    """class:1 differentiates C′ = 1 output: rows 1·57 and dense factors 1·3 + 27 of 5 examples in
    float64 fill the quarter of the budget exactly at 4·5·8·87 (the net's 3 outputs would need
    4·5·8·207). At that budget the convolution keeps its rows; one byte less, it joins the groups."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 3)).double()
    x = torch.rand(5, 2, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    edge = 4 * 5 * 8 * (1 * 57 + (1 * 3 + 27))
    kept = plan_module.plan_kernel(net, x, None, "class:1", False, edge, None, None, True, 0)
    assert list(kept.engine.convs) == ["0"] and kept.engine.sizes() == {}
    left = plan_module.plan_kernel(net, x, None, "class:1", False, edge - 1, None, None, True, 0)
    assert not left.engine.convs and left.engine.sizes() == {"0.weight": 54, "0.bias": 3}


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("float64", torch.float64), ("torch.float32", torch.float32), (torch.float16, torch.float16)],
)
def test_a_dtype_is_taken_by_its_name_with_or_without_the_torch_prefix(name, dtype):
    assert plan_module._as_floating_dtype(name) is dtype
    for bad in ("int64", "torch.int32", "float65"):
        with pytest.raises(TypeError, match="floating torch dtype"):
            plan_module._as_floating_dtype(bad)
