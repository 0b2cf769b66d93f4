"""Tenth-round mutation audit of ``bridge.distributed`` and ``bridge.global_batchnorm``, by routes
the code does not take:

- the shares written out by hand for small n and world sizes 1-4 (``rows``: floor boundaries,
  contiguous, rank order; ``share``: round robin);
- ``sharing()`` follows ``shared_batch()`` (its default, nesting and reset) once a group is there,
  and a layer in eval mode with running statistics never gathers;
- the shared path without affine parameters, and with a global batch of one value, against numpy;
- ``leave``: the collection, the barrier, then the teardown, in that order; and outside a launch
  ``init_from_environment`` joins nothing;
- one 2-process gloo group against numpy float64 over the whole batch and one process's
  ``nn.BatchNorm2d`` (unequal shares, far-apart means; 1e-10): the output, every input gradient and
  the running statistics of two steps; a budget above 2³¹ bytes agreed exactly; the differentiable
  sum's backward with a non-contiguous gradient, with one shared with another input's, and with a
  caller's gradient (left unchanged: the reduction works on a copy); a check failing on rank 1
  alone (an error of a class the code cannot name) stops rank 0 as well, after its wait, and both
  leave the group. Exact (0) where only sums of small integers meet, 1e-10 where float64 sums
  differ in order.
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_distributed_audit import _free_port
from torch import nn

from ntkrobust.bridge import distributed, global_batchnorm
from ntkrobust.bridge.global_batchnorm import convert, shared_batch


def _emulate(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


#: (n, world) -> each rank's rows, by hand: rank r takes [⌊n·r/w⌋, ⌊n·(r + 1)/w⌋), so the larger
#: shares are the later ranks'
ROWS_BY_HAND = {
    (5, 1): [range(0, 5)],
    (5, 2): [range(0, 2), range(2, 5)],
    (5, 3): [range(0, 1), range(1, 3), range(3, 5)],
    (5, 4): [range(0, 1), range(1, 2), range(2, 3), range(3, 5)],
    (2, 3): [range(0, 0), range(0, 1), range(1, 2)],
    (3, 4): [range(0, 0), range(0, 1), range(1, 2), range(2, 3)],
    (7, 4): [range(0, 1), range(1, 3), range(3, 5), range(5, 7)],
    (0, 2): [range(0, 0), range(0, 0)],
    (8, 4): [range(0, 2), range(2, 4), range(4, 6), range(6, 8)],
}

#: (items, world) -> each rank's items, by hand: rank r takes items r, r + w, r + 2w, ...
ITEMS_BY_HAND = {
    ("abcde", 1): ["abcde"],
    ("abcde", 2): ["ace", "bd"],
    ("abcde", 3): ["ad", "be", "c"],
    ("abcde", 4): ["ae", "b", "c", "d"],
    ("ab", 4): ["a", "b", "", ""],
}


@pytest.mark.parametrize(("n", "world"), list(ROWS_BY_HAND))
def test_row_shares_are_the_ones_written_out_by_hand(n: int, world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for rank, expected in enumerate(ROWS_BY_HAND[n, world]):
        _emulate(monkeypatch, rank, world)
        assert list(range(n))[distributed.rows(n)] == list(expected), (n, world, rank)


@pytest.mark.parametrize(("items", "world"), list(ITEMS_BY_HAND))
def test_item_shares_are_the_ones_written_out_by_hand(items: str, world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for rank, expected in enumerate(ITEMS_BY_HAND[items, world]):
        _emulate(monkeypatch, rank, world)
        assert distributed.share(list(items)) == list(expected), (items, world, rank)


def test_sharing_follows_shared_batch_once_a_group_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group of several processes (``distributed.active`` replaced): sharing inside
    ``shared_batch()`` only, ``shared_batch(False)`` turns it off within, and leaving either block
    (normally or by an error) restores what was there before."""
    monkeypatch.setattr(distributed, "active", lambda: True)
    assert not global_batchnorm.sharing()
    with shared_batch():
        assert global_batchnorm.sharing()
        with shared_batch(False):
            assert not global_batchnorm.sharing()
        assert global_batchnorm.sharing()
    assert not global_batchnorm.sharing()
    with pytest.raises(RuntimeError, match="inside"), shared_batch():
        raise RuntimeError("inside")
    assert not global_batchnorm.sharing()


@pytest.mark.usefixtures("one_process_sharing")
def test_eval_mode_with_running_statistics_never_gathers(monkeypatch: pytest.MonkeyPatch) -> None:
    """In eval mode a layer that tracks running statistics normalises with them, shared batch or
    not (each process's evaluation holds its own batches): torch's eval output, no gather, and the
    buffers untouched."""
    reference = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        reference.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        reference.running_var.copy_(torch.tensor([2.0, 0.5, 3.0]))
    reference.eval()
    layer = convert(copy.deepcopy(reference))
    monkeypatch.setattr(global_batchnorm, "_gather_over_processes", lambda local: pytest.fail("gathered in eval"))
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with shared_batch():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_mean, reference.running_mean, rtol=0, atol=0)
    assert int(layer.num_batches_tracked) == 0


def test_convert_keeps_eval_mode() -> None:
    """A net converted in eval mode stays in eval mode, so its BatchNorm keeps using (and not
    updating) the running statistics."""
    reference = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).double().eval()
    net = convert(copy.deepcopy(reference))
    assert not net.training and not net[1].training
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    torch.testing.assert_close(net(x), reference(x), rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("one_process_sharing")
def test_convert_carries_the_batch_count_of_a_cumulative_average() -> None:
    """momentum=None after 2 batches of plain BatchNorm1d: the converted layer's third batch enters
    the running mean with weight 1/3 (the count carried over), as torch's layer does (1e-12)."""
    reference = nn.BatchNorm1d(2, momentum=None).double().train()
    rng = np.random.default_rng(8)
    batches = [torch.as_tensor(rng.normal(loc, 1.0, size=(4, 2))) for loc in (1.0, 5.0, -2.0)]
    for x in batches[:2]:
        reference(x)
    layer = convert(copy.deepcopy(reference))
    with shared_batch():
        layer(batches[2])
    reference(batches[2])
    assert int(layer.num_batches_tracked) == 3
    expected = np.mean([x.numpy().mean(0) for x in batches], axis=0)
    np.testing.assert_allclose(layer.running_mean.numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(layer.running_var, reference.running_var, rtol=1e-12, atol=0)


@pytest.mark.usefixtures("one_process_sharing")
def test_a_3d_batchnorm_is_converted_and_shared() -> None:
    """BatchNorm3d (B, C, D, H, W) is converted too, and its shared path is torch's (1e-12)."""
    reference = nn.BatchNorm3d(2).double().train()
    layer = convert(nn.Sequential(copy.deepcopy(reference)))[0]
    assert isinstance(layer, global_batchnorm.GlobalBatchNorm)
    x = torch.randn(3, 2, 2, 2, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with shared_batch():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_var, reference.running_var, rtol=1e-12, atol=0)


@pytest.mark.usefixtures("one_process_sharing")
def test_a_1d_input_is_refused_with_torchs_message() -> None:
    layer = convert(nn.BatchNorm1d(3).double()).train()
    with pytest.raises(ValueError, match="expected at least 2D input"), shared_batch():
        layer(torch.zeros(3, dtype=torch.float64))


@pytest.mark.usefixtures("one_process_sharing")
def test_the_shared_path_without_affine_parameters_is_numpys_normalisation() -> None:
    """affine=False: out = (x − μ)/√(σ² + ε), no weight nor bias (numpy, biased σ², 1e-12)."""
    layer = convert(nn.BatchNorm2d(2, affine=False, eps=0.25).double()).train()
    x = np.random.default_rng(7).normal(-1.0, 2.0, size=(3, 2, 2, 3))
    with shared_batch():
        out = layer(torch.as_tensor(x)).numpy()
    for c in range(2):
        values = x[:, c]
        np.testing.assert_allclose(out[:, c], (values - values.mean()) / np.sqrt(values.var() + 0.25), rtol=1e-12)


@pytest.mark.usefixtures("one_process_sharing")
def test_a_global_batch_of_one_value_keeps_the_running_statistics_finite() -> None:
    """One row of a BatchNorm1d over every process (N = 1, as the last batch of 1 row gives): its
    variance 0 enters the running variance as 0 (no 0/0), the mean as itself: 0.9·1 and 0.1·x."""
    layer = convert(nn.BatchNorm1d(2).double()).train()
    x = torch.tensor([[3.0, -2.0]], dtype=torch.float64)
    with shared_batch():
        layer(x)
    torch.testing.assert_close(layer.running_mean, 0.1 * x[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(layer.running_var, torch.full((2,), 0.9, dtype=torch.float64), rtol=1e-12, atol=0)


def test_leave_collects_then_waits_for_every_process_then_tears_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """The order ``leave``'s docstring gives, with the group's calls recorded: the collection, the
    barrier (a process tearing down while another still holds its connections aborted it), the
    teardown."""
    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed.gc, "collect", lambda: calls.append("collect"))
    monkeypatch.setattr(distributed, "_barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.leave()
    assert calls == ["collect", "barrier", "destroy"]


def test_in_one_process_main_first_runs_its_body_and_leave_does_nothing() -> None:
    """Without a group: ``main_first`` is just its body (no barrier to wait at) and ``leave``
    returns (no group to tear down)."""
    assert not torch.distributed.is_initialized()
    ran: list[bool] = []
    with distributed.main_first():
        ran.append(True)
    distributed.leave()
    assert ran == [True] and not torch.distributed.is_initialized()


def test_outside_a_launch_no_group_is_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WORLD_SIZE (or 1): ``init_from_environment`` is a no-op, whatever else is set."""
    for world in (None, "1"):
        if world is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.delenv("MASTER_ADDR", raising=False)
        distributed.init_from_environment("cpu")
        assert not torch.distributed.is_initialized()


# ---- one 2-process gloo group ----------------------------------------------------------------

#: the whole batch both processes see: 7 rows, rows 3-6 (rank 1's) shifted by 6 per channel, so
#: the between-shares term is most of the variance
_SHAPE = (7, 3, 2, 2)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(10 + step)
    x = torch.randn(_SHAPE, generator=generator, dtype=torch.float64)
    x[3:] += torch.tensor([6.0, -6.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)
    weights = torch.randn(_SHAPE, generator=generator, dtype=torch.float64)
    return x, weights


def _layer() -> nn.BatchNorm2d:
    layer = nn.BatchNorm2d(3, eps=0.1, momentum=0.3).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64))
        layer.bias.copy_(torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64))
    return layer


class _NodeCheckFailed(Exception):
    """A check's error of no class the code names: ``failing_together`` must gather any error."""


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    torch.set_num_threads(1)
    distributed._SAY_WHY_S = 0.01
    distributed.init_from_environment("cpu")
    found: dict[str, object] = {}
    try:
        # budgets in bytes above 2³¹ (a GPU's free memory), 7 bytes apart: the smaller, exactly
        found["budget"] = distributed.agreed_minimum(80_000_000_001 + 7 * (1 - rank))
        # a gradient that reaches the sum transposed (not contiguous): Σ_r v_rᵀ on every rank; the
        # same gradient tensor also reaches z (an addition passes it on as is): z's stays v_rᵀ
        x = torch.full((3, 2), 1.0 + rank, dtype=torch.float64, requires_grad=True)
        z = torch.zeros((3, 2), dtype=torch.float64, requires_grad=True)
        v = torch.arange(6, dtype=torch.float64).reshape(2, 3) * (rank + 1)
        ((distributed.summed_over_processes(x) + z).t() * v).sum().backward()
        found["transposed grad"], found["own grad"] = x.grad.clone(), z.grad.clone()
        # a contiguous gradient handed in by the caller: reduced into a copy, the caller's unchanged
        given = v.t().contiguous()
        (reduced,) = torch.autograd.grad(distributed.summed_over_processes(x), x, grad_outputs=given)
        found["given grad"] = (reduced, given)
        # GlobalBatchNorm over this rank's rows of two batches
        layer = convert(_layer()).train()
        steps = []
        for step in range(2):
            whole, weights = _batch(step)
            part = distributed.rows(whole.shape[0])
            xr = whole[part].clone().requires_grad_(True)
            with shared_batch():
                output = layer(xr)
            (output * weights[part]).sum().backward()
            steps.append({"part": (part.start, part.stop), "out": output.detach(), "x grad": xr.grad})
        found["steps"] = steps
        found["weight grad"], found["bias grad"] = layer.weight.grad.clone(), layer.bias.grad.clone()
        found["running"] = (layer.running_mean.clone(), layer.running_var.clone(), int(layer.num_batches_tracked))
        # a check that fails on rank 1 alone: rank 0 stops too, after its wait, and both leave
        slept: list[float] = []
        sleep, distributed.time.sleep = distributed.time.sleep, slept.append  # the wait, recorded
        try:
            with distributed.failing_together():
                if rank == 1:
                    raise _NodeCheckFailed("rank 1's check")
            found["check"] = "passed"
        except distributed.StoppedWithAnother as stopped:
            found["check"] = f"stopped: {stopped}"
        except _NodeCheckFailed as own:
            found["check"] = f"own: {own}"
        finally:
            distributed.time.sleep = sleep
        found["slept"] = slept
        found["left"] = not torch.distributed.is_initialized()
    finally:
        (Path(out) / f"rank{rank}.pkl").write_bytes(pickle.dumps(found))
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_two_gloo_processes_against_numpy_and_one_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    found = [pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes()) for rank in (0, 1)]
    # one process's reference: nn.BatchNorm2d over the whole batch, the loss Σ_r L_r
    reference = _layer().train()
    running_mean, running_var = np.zeros(3), np.ones(3)
    for step in range(2):
        whole, weights = _batch(step)
        x = whole.clone().requires_grad_(True)
        (reference(x) * weights).sum().backward()
        # numpy float64 over the whole batch: biased variance to normalise, unbiased for the buffer
        values = whole.numpy().transpose(1, 0, 2, 3).reshape(3, -1)
        mu, var = values.mean(1), values.var(1)
        expected = (whole.numpy() - mu.reshape(1, 3, 1, 1)) / np.sqrt(var.reshape(1, 3, 1, 1) + 0.1)
        expected = expected * np.array([1.5, -0.5, 2.0]).reshape(1, 3, 1, 1) + np.array([0.1, 0.2, -0.3]).reshape(
            1, 3, 1, 1
        )
        running_mean = 0.7 * running_mean + 0.3 * mu
        running_var = 0.7 * running_var + 0.3 * values.var(1, ddof=1)
        pieces = [found[rank]["steps"][step] for rank in (0, 1)]
        assert [piece["part"] for piece in pieces] == [(0, 3), (3, 7)]
        out = torch.cat([piece["out"] for piece in pieces]).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10, err_msg=f"step {step}")
        # every process's input gradient includes every process's loss through μ and σ²
        x_grad = torch.cat([piece["x grad"] for piece in pieces])
        torch.testing.assert_close(x_grad, x.grad, rtol=1e-10, atol=1e-10)
    # each process's weight gradient is its own loss's (DDP averages them); together one process's
    for name in ("weight", "bias"):
        together = found[0][f"{name} grad"] + found[1][f"{name} grad"]
        torch.testing.assert_close(together, getattr(reference, name).grad, rtol=1e-10, atol=1e-10)
    v_sum = torch.arange(6, dtype=torch.float64).reshape(2, 3).t() * 3  # v_0ᵀ + v_1ᵀ
    for rank in (0, 1):
        mean, var, tracked = found[rank]["running"]
        np.testing.assert_allclose(mean.numpy(), running_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(var.numpy(), running_var, rtol=1e-10, atol=1e-12)
        assert tracked == 2
        assert found[rank]["budget"] == 80_000_000_001
        torch.testing.assert_close(found[rank]["transposed grad"], v_sum, rtol=0, atol=0)
        torch.testing.assert_close(found[rank]["own grad"], v_sum * (rank + 1) / 3, rtol=0, atol=0)
        torch.testing.assert_close(found[rank]["given grad"][0], v_sum, rtol=0, atol=0)
        torch.testing.assert_close(found[rank]["given grad"][1], v_sum * (rank + 1) / 3, rtol=0, atol=0)
        assert found[rank]["left"], rank
    assert found[0]["check"] == "stopped: rank 1 of the launch failed a check before the compute"
    assert found[1]["check"] == "own: rank 1's check"
    assert found[0]["slept"] == [0.01] and found[1]["slept"] == []
