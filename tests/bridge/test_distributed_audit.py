"""Mutation audit of ``bridge.distributed``: the shares of emulated ranks in one process must
reassemble the whole batch (every row, every item exactly once, in order for ``rows``), and the
collectives are checked against what each rank can compute alone in one 2-process gloo group."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from ntkrobust.bridge import distributed


def _emulate(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_row_shares_reassemble_every_row_once_in_order(world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rows(n)`` of ranks 0..world-1 concatenated is range(n) exactly (contiguous, in rank
    order), sizes differing by at most one, for n below, at and above the world size."""
    for n in range(0, 3 * world + 2):
        pieces = []
        for rank in range(world):
            _emulate(monkeypatch, rank, world)
            pieces.append(list(range(n))[distributed.rows(n)])
        assert [i for piece in pieces for i in piece] == list(range(n)), (n, world)
        sizes = [len(piece) for piece in pieces]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


@pytest.mark.parametrize("world", [2, 3, 5])
def test_item_shares_are_a_partition_round_robin(world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``share`` of each emulated rank: disjoint, together every item once, rank r the items
    r, r + world, ... (the round robin the passes' all-reduce assumes)."""
    items = [f"pass{i}" for i in range(11)]
    parts = []
    for rank in range(world):
        _emulate(monkeypatch, rank, world)
        parts.append(distributed.share(items))
        assert parts[-1] == items[rank::world]
    assert sorted(x for part in parts for x in part) == sorted(items)


def test_one_process_collectives_are_the_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a group: rank 0 of 1, every collective returns its input unchanged (the same
    object for the in-place ones), and a failing check raises its own error."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched() and not distributed.active()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    t = torch.arange(3.0)
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [0.0, 1.0, 2.0]
    assert distributed.summed_over_processes(t) is t
    assert distributed.agreed_minimum(17) == 17 and distributed.from_main({"a": 1}) == {"a": 1}
    assert distributed.rows(5) == slice(0, 5) and distributed.share("abc") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="mine"), distributed.failing_together():
        raise ValueError("mine")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _collectives_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    torch.set_num_threads(1)
    distributed._SAY_WHY_S = 0.0  # the stopped rank need not wait for the other to say why
    distributed.init_from_environment("cpu")
    lines = []
    try:
        assert distributed.rank() == rank and distributed.world_size() == world and distributed.is_main() == (rank == 0)
        # each rank a different budget: every rank must plan with the smallest
        lines.append(f"min {distributed.agreed_minimum(100 - 30 * rank)}")
        lines.append(f"main {distributed.from_main(f'value of rank {rank}')}")
        summed = distributed.all_reduce_sum(torch.tensor([1.0 + rank, 10.0 * rank], dtype=torch.float64))
        lines.append(f"sum {summed.tolist()}")
        # the differentiable sum: y = Σ_r x_r; L = Σ_r (r + 1)·y, so ∂L/∂x_r = Σ_r' (r' + 1) on every rank
        x = torch.tensor([2.0 + rank], dtype=torch.float64, requires_grad=True)
        y = distributed.summed_over_processes(x)
        ((rank + 1) * y).sum().backward()
        lines.append(f"grad {y.item()} {x.grad.item()} {x.item()}")
        # ranks 1 and 0 both fail: rank 0 (the lowest) raises its own error, rank 1 stops with it
        try:
            with distributed.failing_together():
                raise RuntimeError(f"check of rank {rank}")
        except distributed.StoppedWithAnother as stopped:
            lines.append(f"stopped {stopped}")
        except RuntimeError as own:
            lines.append(f"own {own}")
    finally:
        (Path(out) / f"rank{rank}.txt").write_text("\n".join(lines))
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_collectives_of_two_gloo_processes(tmp_path: Path) -> None:
    """In a 2-process gloo group: the smallest budget, rank 0's decision, the sum on every rank,
    the differentiable sum's forward and backward (each an all-reduce), and the first failing
    rank's own error with ``StoppedWithAnother`` elsewhere."""
    import torch.multiprocessing as mp

    mp.spawn(_collectives_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        lines = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert lines[:4] == ["min 70", "main value of rank 0", "sum [3.0, 10.0]", f"grad 5.0 3.0 {2.0 + rank}"], rank
        expected = (
            "own check of rank 0" if rank == 0 else "stopped rank 0 of the launch failed a check before the compute"
        )
        assert lines[4] == expected
