"""The empirical NTK of 2 gloo processes equals the single-process kernel, for every kind
(float64, 1e-10): each process sums its share of the parameter groups, one all-reduce adds them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from ntkrobust.bridge import distributed
from ntkrobust.bridge.entk import empirical_ntk
from ntkrobust.bridge.models import build_model, model_config

KINDS = ("full", "class-blocks", "trace", "class:2", "rademacher:3")
#: small enough that the MNIST CNN's parameters are cut into several groups, so both ranks work
BUDGET = 2**21


def _inputs() -> tuple[torch.nn.Module, torch.Tensor]:
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return build_model(model_config("mnist-cnn", (1, 8, 8), 4, width=2, seed=3)), x


def _kernels() -> dict[str, np.ndarray]:
    model, x = _inputs()
    found = {kind: empirical_ntk(model, x, kind=kind, dtype=torch.float64, memory_budget=BUDGET) for kind in KINDS}
    found["cross"] = empirical_ntk(model, x[:2], x[2:], kind="full", dtype=torch.float64, memory_budget=BUDGET)
    return found


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    distributed.init_from_environment()
    try:
        assert distributed.active() and distributed.world_size() == world
        kernels = _kernels()
        np.savez(Path(out) / f"rank{rank}.npz", **kernels)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_kernel_of_two_processes_is_the_single_process_kernel(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _kernels()
    for rank in (0, 1):
        with np.load(tmp_path / f"rank{rank}.npz") as found:
            for kind, kernel in single.items():
                np.testing.assert_allclose(found[kind], kernel, rtol=1e-10, atol=1e-10, err_msg=f"{kind}, rank {rank}")


def test_the_shares_cover_every_item_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not distributed.active() and distributed.is_main()  # one process: no group
    assert distributed.share([1, 2, 3]) == [1, 2, 3]
    items = list(range(7))
    parts = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        parts.append(distributed.share(items))
    assert sorted(item for part in parts for item in part) == items and all(parts)


def test_entk_under_torchrun_writes_the_single_process_kernel_once(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m ntkrobust entk``: rank 0 alone writes, the kernel is the
    one-process kernel (float64, 1e-10)."""
    import subprocess
    import sys

    flags = ["entk", "--data", "digits", "--model", "mnist-cnn", "--width", "4", "--points", "12", "--kind", "full"]
    flags += ["--dtype", "float64", "--memory-budget", "6", "--quiet"]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
    ]
    done = subprocess.run(
        [*launcher, "-m", "ntkrobust", *flags, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("(world size 2)") == 1  # one summary, from rank 0
    from ntkrobust import cli

    assert cli.main([*flags, "--out", str(tmp_path / "one")]) == 0
    with np.load(tmp_path / "two" / "kernel.npz") as two, np.load(tmp_path / "one" / "kernel.npz") as one:
        np.testing.assert_allclose(two["kernel"], one["kernel"], rtol=1e-10, atol=1e-10)


def test_a_command_that_does_not_share_its_work_is_refused_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ntkrobust import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["attack", "--out", str(tmp_path / "out")]) == 2
    assert "attack does not share its work under torchrun yet (only entk)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
