"""A refusal on one process of a launch stops every process, with one line from the process that
refused (``bridge.distributed.failing_together``). Each of 2 gloo processes runs the command line
in a folder of its own, as two nodes with storage of their own would: a relative --data or --out
is then there for one process and not for the other. Without the agreement the process that did
not refuse went on into a collective and waited there (across nodes, for up to an hour)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ntkrobust import cli

#: a process still running after this long waits for one that has stopped: a failed agreement
DEADLINE_S = 150


def _node_rank(rank: int, world: int, port: int, out: str, argv: list[str]) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    os.chdir(Path(out) / f"node{rank}")
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        status = cli.main(argv)
    left = not torch.distributed.is_initialized()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"status": status, "stderr": said.getvalue(), "left": left}))


def _launch(tmp_path: Path, argv: list[str]) -> list[dict[str, object]]:
    """``argv`` on 2 processes, rank R in ``tmp_path/nodeR``: each one's status, stderr, and
    whether it left the group."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.spawn(_node_rank, args=(2, port, str(tmp_path), argv), nprocs=2, join=False)
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"a process still ran {DEADLINE_S} s after the launch: it waits for one that stopped")
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def _nodes(tmp_path: Path) -> tuple[Path, Path]:
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
    return tmp_path / "node0", tmp_path / "node1"


def test_data_missing_on_one_node_stops_both_processes_with_its_one_line(tmp_path: Path) -> None:
    node0, _ = _nodes(tmp_path)
    assert cli.main(["make-npz", "--n-train", "40", "--n-test", "20", "--quiet", "--out", str(node0 / "data.npz")]) == 0
    out = tmp_path / "kernel"
    argv = ["entk", "--data", "data.npz", "--model", "fc2", "--width", "8", "--points", "8", "--kind", "trace"]
    found = _launch(tmp_path, [*argv, "--quiet", "--out", str(out)])
    assert [f["status"] for f in found] == [2, 2]
    assert found[0]["stderr"] == ""  # rank 0 could read its data: the other says why they stopped
    lines = str(found[1]["stderr"]).splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntkrobust (rank 1): error: ") and "data.npz" in lines[0]
    assert all(f["left"] for f in found)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node0", "node1", "rank0.json", "rank1.json"]  # no lock


def test_rank_zeros_refusal_of_the_output_stops_both_processes(tmp_path: Path) -> None:
    _nodes(tmp_path)
    out = tmp_path / "kernel"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    argv = ["entk", "--data", "digits", "--model", "fc2", "--width", "8", "--points", "8", "--kind", "trace"]
    found = _launch(tmp_path, [*argv, "--quiet", "--out", str(out)])
    assert [f["status"] for f in found] == [2, 2]
    assert str(found[0]["stderr"]).splitlines() == [
        f"ntkrobust: error: --out {out} exists and is not empty (use --force to overwrite)"
    ]
    assert found[1]["stderr"] == ""
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]
    assert not (tmp_path / ".kernel.lock").exists()


def test_resuming_an_out_that_one_node_cannot_see_is_refused_before_training(tmp_path: Path) -> None:
    node0, _ = _nodes(tmp_path)
    argv = ["train", "--data", "digits", "--n-train", "100", "--n-test", "50", "--model", "mnist-cnn", "--width", "4"]
    argv += ["--track-kernel", "10", "--eval-n", "20", "--full-eval-steps", "0", "--batch-size", "50", "--quiet"]
    assert cli.main([*argv, "--epochs", "1", "--out", str(node0 / "run")]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in (node0 / "run").rglob("*")}
    found = _launch(tmp_path, [*argv, "--epochs", "2", "--resume", "--out", "run"])  # node0/run for rank 0 only
    assert [f["status"] for f in found] == [2, 2]
    assert found[0]["stderr"] == ""
    assert str(found[1]["stderr"]).splitlines() == [
        "ntkrobust (rank 1): error: --resume: run holds no run (no config.json) on rank 1, where rank 0 found one: "
        "--out must be on storage every node shares"
    ]
    assert {p.name: p.stat().st_mtime_ns for p in (node0 / "run").rglob("*")} == before  # untouched


@pytest.mark.parametrize(("rank", "said"), [("0", True), ("1", False)])
def test_a_flag_every_process_refuses_is_said_by_rank_zero_alone(
    rank: str, said: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every process of a launch parses the same flags: 16 processes would print 16 copies."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert cli.main(["entk", "--data", "digits", "--points", "-3", "--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert err == "ntkrobust: error: entk: argument --n/--points: must be at least 1, got -3\n" if said else err == ""
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"RANK": "0"}, "WORLD_SIZE=2 without MASTER_ADDR, MASTER_PORT: start the processes with torchrun"),
        ({"MASTER_ADDR": "h", "MASTER_PORT": "1"}, "WORLD_SIZE=2 without RANK: start the processes with torchrun"),
        ({"RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "abc"}, "MASTER_PORT='abc' is not a port number"),
    ],
)
def test_a_launch_environment_set_by_hand_without_torchrun_is_one_line(
    environment: dict[str, str], message: str, assert_refused: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WORLD_SIZE without the rest of torchrun's variables met torch's rendezvous: a traceback."""
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"WORLD_SIZE": "2", **environment}.items():
        monkeypatch.setenv(name, value)
    assert_refused(["entk", "--data", "digits", "--points", 10], message)


def test_a_net_missing_on_one_node_stops_evaluate_before_any_attack(tmp_path: Path) -> None:
    """``evaluate`` under a launch: every process loads the nets inside the agreed checks."""
    node0, _ = _nodes(tmp_path)
    train = ["train", "--data", "digits", "--n-train", "60", "--n-test", "20", "--width", "4", "--epochs", "1"]
    train += ["--track-kernel", "0", "--eval-n", "20", "--full-eval-steps", "0", "--quiet"]
    assert cli.main([*train, "--out", str(node0 / "run")]) == 0
    out = tmp_path / "evaluate"
    argv = ["evaluate", "run/checkpoints/epoch_001.pt", "--data", "digits", "--n-test", "20", "--attacks", "pgd-20"]
    found = _launch(tmp_path, [*argv, "--quiet", "--out", str(out)])
    assert [f["status"] for f in found] == [2, 2]
    assert found[0]["stderr"] == ""
    lines = str(found[1]["stderr"]).splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntkrobust (rank 1): error: ") and "epoch_001.pt" in lines[0]
    assert all(f["left"] for f in found)
    assert not out.exists()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_process_waiting_for_a_launch_that_never_comes_ends_on_sigterm(tmp_path: Path) -> None:
    """A complete launch environment set by hand, and no other process: rank 0 waits in torch's
    rendezvous (in C++, where no Python handler runs). It ignored SIGTERM and Ctrl-C there for up
    to COLLECTIVE_TIMEOUT (an hour); now they end it at once, and nothing was written."""
    import signal
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    out = tmp_path / "kernel"
    argv = ["entk", "--data", "digits", "--model", "fc2", "--width", "8", "--points", "8", "--kind", "trace"]
    process = subprocess.Popen(
        [sys.executable, "-m", "ntkrobust", *argv, "--quiet", "--out", str(out)],
        env=os.environ | launch,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not _listening(port):  # rank 0 hosts the rendezvous: listening, it waits for rank 1
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "rank 0 never began its rendezvous"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            pytest.fail("still waiting in the rendezvous 30 s after SIGTERM")
    assert process.returncode == -signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no lock
