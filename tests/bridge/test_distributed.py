"""The empirical NTK of 2 gloo processes equals the single-process kernel, for every kind
(float64, 1e-10): each process sums its share of the parameter groups, one all-reduce adds them;
and distributed training equals one process's."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ntkrobust.bridge import distributed
from ntkrobust.bridge.entk import empirical_ntk
from ntkrobust.bridge.models import build_model, model_config

KINDS = ("full", "class-blocks", "trace", "class:2", "rademacher:3")
#: small enough that each kernel takes several passes (the structured layers' and a group's; at
#: half of it, without the structured route, 3-9 groups), so both ranks work; 4 times larger, one
BUDGET = 2**16


def _inputs() -> tuple[torch.nn.Module, torch.Tensor]:
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return build_model(model_config("mnist-cnn", (1, 8, 8), 4, width=2, seed=3)), x


def _kernels(budget: int = BUDGET) -> dict[str, np.ndarray]:
    model, x = _inputs()
    found = {kind: empirical_ntk(model, x, kind=kind, dtype=torch.float64, memory_budget=budget) for kind in KINDS}
    found["cross"] = empirical_ntk(model, x[:2], x[2:], kind="full", dtype=torch.float64, memory_budget=budget)
    for kind in ("class-blocks", "trace"):  # every parameter through the generic groups
        generic = {"kind": kind, "dtype": torch.float64, "memory_budget": budget // 2, "structured": False}
        found[f"generic {kind}"] = empirical_ntk(model, x, **generic)
    return found


@contextlib.contextmanager
def _in_group(rank: int, world: int, port: int) -> Iterator[None]:
    """This process as ``rank`` of a gloo group of ``world``. The body done, it leaves as the
    command line does (``distributed.leave``: the unreachable nets collected, a barrier, the
    teardown): a DistributedDataParallel wrapper freed after its group, at exit, or a process
    tearing its connections down while another still held them, aborted a process. After a
    failure it leaves at once (the other may never reach the barrier)."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    distributed.init_from_environment()
    try:
        yield
    except BaseException:
        torch.distributed.destroy_process_group()
        raise
    distributed.leave()


def test_leaving_frees_what_a_cycle_keeps_while_the_group_is_there() -> None:
    """``distributed.leave`` collects before its teardown: an object in a reference cycle (as a
    DistributedDataParallel wrapper can be) is freed while its group still exists, not at exit,
    where freeing a DDP wrapper after its group aborted a process (the ``_in_group`` note)."""
    import gc

    freed: list[bool] = []

    class Cyclic:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            freed.append(torch.distributed.is_initialized())

    init = f"tcp://127.0.0.1:{_free_port()}"
    torch.distributed.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    collecting = gc.isenabled()
    gc.disable()  # no collection but leave's
    try:
        Cyclic()
        assert freed == []
        distributed.leave()
    finally:
        if collecting:
            gc.enable()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert freed == [True]  # freed, and while the group was there


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    with _in_group(rank, world, port):
        assert distributed.active() and distributed.world_size() == world
        # each rank its own budget, as each GPU's free memory gives: they cut the passes from the
        # smallest (a larger one cuts fewer groups: its share of another list would be wrong)
        kernels = _kernels(BUDGET * (1 + 3 * rank))
        np.savez(Path(out) / f"rank{rank}.npz", **kernels)


def _torchrun(processes: int) -> list[str]:
    """``torchrun --nproc-per-node N -m ntkrobust`` of this interpreter, on a free port."""
    import sys

    port = str(_free_port())
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-port", port,
            "-m", "ntkrobust"]  # fmt: skip


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


@pytest.mark.parametrize(
    ("cuda", "device", "expected"),
    [
        (True, "auto", "nccl"),
        (True, "cuda", "nccl"),
        (True, "cpu", "gloo"),
        (False, "auto", "gloo"),
        (False, "cuda", "gloo"),
    ],
)
def test_the_backend_follows_the_commands_device(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, device: str, expected: str
) -> None:
    """NCCL reduces CUDA tensors only: ``--device cpu`` on a machine with GPUs takes gloo (and
    ``--device cuda`` without one gets gloo too, and then the study's own one-line refusal)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert distributed.backend(device) == expected


def test_entk_under_torchrun_writes_the_single_process_kernel_once(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m ntkrobust entk``: rank 0 alone writes, the kernel is the
    one-process kernel (float64, 1e-10)."""
    import subprocess

    flags = ["entk", "--data", "digits", "--model", "mnist-cnn", "--width", "4", "--points", "12", "--kind", "full"]
    flags += ["--dtype", "float64", "--memory-budget", "6", "--quiet"]
    done = subprocess.run(
        [*_torchrun(2), *flags, "--out", str(tmp_path / "two")],
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


def _command_rank(rank: int, world: int, port: int, out: str) -> None:
    from ntkrobust import cli

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    flags = ["entk", "--data", "digits", "--model", "fc2", "--width", "16", "--points", "8", "--kind", "trace"]
    status = cli.main([*flags, "--quiet", "--out", str(Path(out) / "kernel")])
    left = not torch.distributed.is_initialized()
    (Path(out) / f"rank{rank}.txt").write_text(f"{status} {left}")


def test_every_process_leaves_the_group_when_the_command_has_finished(tmp_path: Path) -> None:
    """A command under torchrun ends with every process out of the group (on GPUs torch warns,
    once per process, of an NCCL group left for exit): rank 0 after saving, the others after it."""
    import torch.multiprocessing as mp

    mp.spawn(_command_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)] == ["0 True"] * 2
    assert (tmp_path / "kernel" / "kernel.npz").is_file()


@pytest.mark.slow  # two torchrun launchers and one process: ~15 s
def test_two_nodes_through_the_rendezvous_flags(tmp_path: Path) -> None:
    """Two torchrun launchers with ``--nnodes 2`` and c10d rendezvous (two "nodes" on this host,
    one process each): the one-process kernel, written once."""
    import subprocess
    import sys

    endpoint = f"127.0.0.1:{_free_port()}"
    flags = ["entk", "--data", "digits", "--model", "mnist-cnn", "--width", "4", "--points", "12", "--kind", "full"]
    flags += ["--dtype", "float64", "--memory-budget", "6", "--quiet"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes", "-m", "ntkrobust"]
    nodes = [
        subprocess.Popen([*launcher, *flags, "--out", str(tmp_path / "two")], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0]
    assert sum(out.count("(world size 2)") for out in outputs) == 1  # one summary, from rank 0
    from ntkrobust import cli

    assert cli.main([*flags, "--out", str(tmp_path / "one")]) == 0
    with np.load(tmp_path / "two" / "kernel.npz") as two, np.load(tmp_path / "one" / "kernel.npz") as one:
        np.testing.assert_allclose(two["kernel"], one["kernel"], rtol=1e-10, atol=1e-10)


def _main_first_rank(rank: int, world: int, port: int, out: str) -> None:
    import time

    folder = Path(out)
    with _in_group(rank, world, port):
        with distributed.main_first():  # a slow writer: rank 1 must find the whole file
            if rank == 0:
                time.sleep(1.0)
                (folder / "data.txt").write_text("complete")
            else:
                (folder / "seen.txt").write_text((folder / "data.txt").read_text())
        try:
            with distributed.main_first():  # rank 0 fails: rank 1 is released, not left waiting
                if rank == 0:
                    raise OSError("no network")
                (folder / "released.txt").write_text("yes")
        except OSError:
            pass


def test_rank_zero_goes_first_and_releases_the_others_when_it_fails(tmp_path: Path) -> None:
    """``main_first`` (the download of ``--data-root`` under torchrun): rank 0's body ends before
    the others' begin, and its failure still lets them go on."""
    import torch.multiprocessing as mp

    mp.spawn(_main_first_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "seen.txt").read_text() == "complete"
    assert (tmp_path / "released.txt").read_text() == "yes"


def test_a_budget_too_small_is_refused_by_every_process(tmp_path: Path) -> None:
    """Every process checks every pass's memory, not only its share's: the one that holds the
    pass too large no longer raises alone while the other waits in the all-reduce (on gloo, a
    connection error and a traceback; on NCCL, a hang until torchrun kills it)."""
    import subprocess

    flags = ["entk", "--data", "digits", "--model", "fc2", "--width", "8192", "--points", "20"]
    flags += ["--memory-budget", "1", "--quiet", "--out", str(tmp_path / "out")]
    done = subprocess.run([*_torchrun(2), *flags], capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    for speaker in ("ntkrobust", "ntkrobust (rank 1)"):
        assert done.stderr.count(f"{speaker}: error: --memory-budget 1: memory budget of") == 1, done.stderr[-2000:]
    assert "Connection closed" not in done.stderr and not (tmp_path / "out").exists()


def test_warnings_and_stage_lines_are_said_once_under_torchrun(tmp_path: Path) -> None:
    """Rank 0 prints the study's warnings and stage lines; the other processes, which would say
    the same, say nothing (they printed the warnings in Python's own format). The AE-NTK's PGD
    examples, attacked a share of the batches per process and assembled, give the one-process
    kernel (float64, 1e-10)."""
    import subprocess

    from ntkrobust import cli

    flags = ["entk", "--data", "digits", "--model", "fc2", "--width", "64", "--points", "300", "--dtype", "float64"]
    flags += ["--adversarial-eps", "0.3", "--pgd-steps", "3"]
    done = subprocess.run(
        [*_torchrun(2), *flags, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("ntkrobust: warning: AE-NTK PGD: PGD can move at most") == 1, done.stderr
    assert done.stderr.count("empirical NTK of fc2 on 300 points") == 1 and "Warning" not in done.stderr
    assert cli.main([*flags, "--quiet", "--out", str(tmp_path / "one")]) == 0
    one, two = (np.load(tmp_path / name / "kernel.npz")["kernel"] for name in ("one", "two"))
    np.testing.assert_allclose(two, one, rtol=1e-10, atol=1e-10 * np.abs(one).max())


def test_a_command_that_does_not_share_its_work_is_refused_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ntkrobust import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["attack", "--out", str(tmp_path / "out")]) == 2
    message = "attack does not share its work under torchrun yet (only entk, train, transfer, dynamics, evaluate)"
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_rank_variables_outside_a_launch_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOCAL_RANK=-1 says "not distributed" in other tools' setups; torchrun's values may carry spaces."""
    from ntkrobust import cli

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "-1")
    monkeypatch.setenv("RANK", "x")
    assert cli._rank_in_launch() is None
    monkeypatch.setenv("WORLD_SIZE", " 2 ")
    monkeypatch.setenv("RANK", "1 ")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert cli._rank_in_launch() == 1


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"WORLD_SIZE": "abc"}, "the environment variable WORLD_SIZE='abc' is not a whole number >= 0"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, "the environment variable RANK='x' is not a whole number >= 0"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "the environment variable LOCAL_RANK='-1' is not a whole number"),
    ],
)
def test_a_broken_launch_environment_is_one_line(
    environment: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ntkrobust import cli

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["entk", "--data", "digits", "--model", "fc2", "--points", "4", "--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert err == f"ntkrobust: error: {message}" + err.partition(message)[2] and err.count("\n") == 1
    assert not (tmp_path / "k").exists()


# -- distributed training -------------------------------------------------------------------------

MODES = ("standard", "pgd", "fgsm-noise", "trades", "te")
#: (model, mode, BatchNorm running statistics, linearized): every mode on the MNIST CNN (no
#: BatchNorm); a ResNet-18 whose BatchNorm takes the statistics of the whole batch over both
#: processes, with running statistics (train-mode updates) and without ("w/o buffer": the attacks
#: on batch statistics as well), in modes of one forward, two forwards (TRADES) and none attacked;
#: and stage 2 of LOO's linearized dynamics around a ResNet-18 (its BatchNorm frozen, its weights
#: held as buffers: what ``train --linearize-from`` trains)
Case = tuple[str, str, bool, bool]
CASES: tuple[Case, ...] = (
    *(("mnist-cnn", mode, True, False) for mode in MODES),
    ("resnet18", "standard", True, False),
    ("resnet18", "trades", True, False),
    ("resnet18", "pgd", False, False),
    ("resnet18", "standard", True, True),
)


def _case_name(case: Case) -> str:
    model, mode, running, linearized = case
    return f"{model}-{mode}" + ("" if running else "-no-buffer") + ("-linearized" if linearized else "")


def _training(case: Case) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, object]:
    from ntkrobust.bridge.data import load_dataset, task_indices
    from ntkrobust.bridge.linearized import LinearizedNetwork
    from ntkrobust.bridge.training import TrainConfig

    name, mode, running, linearized = case
    data = load_dataset("digits", n_train=90, n_test=30, seed=0)
    x = torch.as_tensor(data.x_train, dtype=torch.float64)
    y = torch.as_tensor(task_indices(data.y_train, data.classes))
    width = 4 if name == "mnist-cnn" else 2
    config = model_config(name, data.image_shape, 10, width=width, seed=2, running_stats=running)
    model = build_model(config).double()
    if linearized:
        model = LinearizedNetwork(model)
    ramp = {"te_start": 1, "te_end": 2} if mode == "te" else {}
    train = TrainConfig(mode=mode, epochs=2, lr=0.1, batch_size=32, eps=0.1, pgd_step=0.05, pgd_steps=3, seed=4, **ramp)
    return model, x, y, train  # 90 points in batches of 32: the last batch (26) splits 13 / 13


def _train_two_epochs(case: Case, replicate: bool) -> tuple[dict[str, np.ndarray], list[float]]:
    from ntkrobust.bridge.training import make_optimizer, replicated, train_epoch

    model, x, y, config = _training(case)
    replica = None
    if replicate:  # as bridge.experiment does under torchrun
        model, replica = replicated(model, torch.device("cpu"))
    optimizer = make_optimizer(model, config)
    ensemble = None
    if config.mode == "te":  # its regulariser from the first epoch on, ramped to its weight by the second
        from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble

        ensemble = TemporalEnsemble.empty(x.shape[0], 10, 1, 2, maximum=30.0)
    losses = [
        train_epoch(model, optimizer, x, y, config, epoch, replica=replica, ensemble=ensemble)["train_loss"]
        for epoch in (1, 2)
    ]
    # the weights and, for BatchNorm, the running statistics
    return {name: p.detach().numpy().copy() for name, p in model.state_dict().items()}, losses


def _training_rank(rank: int, world: int, port: int, out: str) -> None:
    with _in_group(rank, world, port):
        for case in CASES:
            weights, losses = _train_two_epochs(case, replicate=True)
            np.savez(Path(out) / f"{_case_name(case)}-rank{rank}.npz", losses=np.array(losses), **weights)


def test_two_processes_train_to_the_weights_of_one(tmp_path: Path) -> None:
    """2 gloo processes, each with its share of every mini-batch (random starts drawn for the whole
    batch; BatchNorm statistics over both shares), reach the weights, running statistics and
    losses of one process with the same global batch and plain BatchNorm: float64, 1e-10."""
    import torch.multiprocessing as mp

    mp.spawn(_training_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for case in CASES:
        name = _case_name(case)
        weights, losses = _train_two_epochs(case, replicate=False)
        for rank in (0, 1):
            with np.load(tmp_path / f"{name}-rank{rank}.npz") as found:
                np.testing.assert_allclose(found["losses"], losses, rtol=1e-10, err_msg=f"{name} losses")
                for key, value in weights.items():
                    np.testing.assert_allclose(found[key], value, rtol=1e-10, atol=1e-12, err_msg=f"{name} {key}")


def _diverging_outcome() -> str:
    """How one epoch on this process's share ends, where the second share holds an infinite row."""
    from ntkrobust.bridge.training import TrainConfig, make_optimizer, replicated, train_epoch

    model = build_model(model_config("fc2", (1, 8, 8), 3, width=8, seed=0))
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x[-1] = float("inf")  # a row of the second process's share: its loss alone is not finite
    y = torch.arange(8) % 3
    config = TrainConfig(mode="standard", epochs=1, batch_size=8)  # one batch: every step is read
    model, replica = replicated(model, torch.device("cpu"))
    try:
        train_epoch(model, make_optimizer(model, config), x, y, config, 1, replica=replica)
    except FloatingPointError as error:
        return str(error)
    return "finished"


def _diverging_rank(rank: int, world: int, port: int, out: str) -> None:
    with _in_group(rank, world, port):
        (Path(out) / f"rank{rank}.txt").write_text(_diverging_outcome())


def _overflowing_rank(rank: int, world: int, port: int, out: str) -> None:
    """One step at lr 1e30 on this process's share: a finite loss, then inf outputs."""
    from ntkrobust.bridge.training import TrainConfig, make_optimizer, replicated, train_epoch

    with _in_group(rank, world, port):
        model = build_model(model_config("fc2", (1, 8, 8), 3, width=8, seed=0))
        x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        config = TrainConfig(mode="standard", epochs=1, batch_size=8, lr=1e30)
        model, replica = replicated(model, torch.device("cpu"))
        try:
            outcome = str(
                train_epoch(model, make_optimizer(model, config), x, torch.arange(8) % 3, config, 1, replica=replica)
            )
        except FloatingPointError as error:
            outcome = str(error)
        (Path(out) / f"rank{rank}.txt").write_text(outcome)


def test_a_loss_that_diverges_on_one_process_stops_every_process(tmp_path: Path) -> None:
    """The loss is read summed over the processes, so all of them decide alike that it diverged;
    before, the one holding the non-finite rows raised alone and the other failed (gloo) or would
    wait (NCCL) in the epoch's all-reduce."""
    import torch.multiprocessing as mp

    mp.spawn(_diverging_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    outcomes = {(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)}
    assert outcomes == {"the training loss became nan by step 1 (epoch 1)"}, outcomes


def test_outputs_that_overflow_after_the_last_update_stop_every_process(tmp_path: Path) -> None:
    """Each process adds 1/2 for its share's finite outputs to the epoch's last read: 0 here, and
    both say so (the epochs that finish, in the tests above, sum to 1)."""
    import torch.multiprocessing as mp

    mp.spawn(_overflowing_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    outcomes = {(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)}
    assert outcomes == {"the net's outputs became NaN or inf after the last update of epoch 1"}, outcomes


def test_train_under_torchrun_and_resumed_in_one_process(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m ntkrobust train`` writes one run (rank 0) with the history
    of a one-process run (float32: 1e-5); resumed on one process it continues to the same weights."""
    import json
    import subprocess

    from ntkrobust import cli

    flags = ["train", "--data", "digits", "--n-train", "100", "--n-test", "60", "--mode", "pgd", "--eps", "0.1"]
    flags += ["--pgd-steps", "3", "--pgd-step", "0.05", "--width", "8", "--batch-size", "30", "--lr", "0.05"]
    flags += ["--track-kernel", "10", "--eval-n", "30", "--full-eval-steps", "0", "--quiet"]
    two = tmp_path / "two"
    done = subprocess.run(
        [*_torchrun(2), *flags, "--epochs", "1", "--out", str(two)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("(world size 2)") == 1
    assert "Warning" not in done.stderr, done.stderr[-2000:]  # e.g. torch's deprecations, every run
    assert cli.main([*flags, "--epochs", "1", "--out", str(tmp_path / "one")]) == 0

    def history(folder: Path) -> dict:
        return json.loads((folder / "history.json").read_text())

    a, b = history(two)["epochs"][-1], history(tmp_path / "one")["epochs"][-1]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert a["accuracy"] == b["accuracy"]
    assert cli.main([*flags, "--epochs", "2", "--resume", "--out", str(two)]) == 0
    assert cli.main([*flags, "--epochs", "2", "--out", str(tmp_path / "one2")]) == 0
    first = torch.load(two / "checkpoints" / "epoch_002.pt", weights_only=True)["state_dict"]
    second = torch.load(tmp_path / "one2" / "checkpoints" / "epoch_002.pt", weights_only=True)["state_dict"]
    for name, value in second.items():
        torch.testing.assert_close(first[name], value, rtol=1e-4, atol=1e-5)


def test_several_seeds_under_torchrun_and_resumed(tmp_path: Path) -> None:
    """``train --seeds`` under torchrun: rank 0 alone locks and checks the folder (every process
    took the lock before, and all but one failed), and every process resumes the same runs."""
    import json
    import subprocess

    from ntkrobust import cli

    flags = ["train", "--data", "digits", "--n-train", "60", "--n-test", "30", "--model", "fc2", "--width", "16"]
    flags += ["--track-kernel", "0", "--eval-n", "20", "--full-eval-steps", "0", "--seeds", "0,1", "--quiet"]
    two = tmp_path / "two"
    for extra in (["--epochs", "1"], ["--epochs", "2", "--resume"]):
        done = subprocess.run(
            [*_torchrun(2), *flags, *extra, "--out", str(two)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert cli.main([*flags, "--epochs", "2", "--out", str(tmp_path / "one")]) == 0
    for seed in (0, 1):
        a, b = (
            json.loads((f / f"seed_{seed}" / "history.json").read_text())["epochs"] for f in (two, tmp_path / "one")
        )
        assert [e["epoch"] for e in a] == [0, 1, 2]  # continued, not started again
        assert a[-1]["train_loss"] == pytest.approx(b[-1]["train_loss"], rel=1e-5)


@pytest.mark.slow  # two torchrun launches and their one-process runs: 35-40 s
def test_surrogate_and_eigenvectors_under_torchrun_equal_one_process(tmp_path: Path) -> None:
    """The eNTK surrogate of ``transfer`` and the eigenvector pictures of ``dynamics`` take their
    kernels through the shared ``empirical_ntk``: under torchrun (2 processes) the surrogate's
    examples and the eigenvalues are those of one process."""
    import json
    import subprocess

    from ntkrobust import cli

    run = tmp_path / "run"
    train = ["train", "--data", "digits", "--n-train", "200", "--n-test", "100", "--model", "mnist-cnn"]
    train += ["--width", "8", "--epochs", "1", "--track-kernel", "20", "--eval-n", "50", "--full-eval-steps", "0"]
    assert cli.main([*train, "--quiet", "--out", str(run)]) == 0
    transfer = ["transfer", "--data", "digits", "--n-train", "200", "--n-test", "100", "--kernel-arch", "fc2"]
    transfer += [
        "--surrogate",
        "mnist-cnn:8",
        "--surrogate-n",
        "60",
        "--target",
        str(run / "checkpoints" / "epoch_001.pt"),
    ]
    dynamics = ["dynamics", str(run), "--eigenvectors", "1", "--eigenvector-steps", "20"]
    for flags, name in ((transfer, "transfer"), (dynamics, "dynamics")):
        done = subprocess.run(
            [*_torchrun(2), *flags, "--quiet", "--out", str(tmp_path / f"{name}-2")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert cli.main([*flags, "--quiet", "--out", str(tmp_path / f"{name}-1")]) == 0
    with (
        np.load(tmp_path / "transfer-2" / "examples.npz") as two,
        np.load(tmp_path / "transfer-1" / "examples.npz") as one,
    ):
        np.testing.assert_array_equal(two["entk_mnist_cnn_8"], one["entk_mnist_cnn_8"])

    def eigenvalues(folder: Path) -> list[list[float]]:
        found = json.loads((folder / "results.json").read_text())["eigenvectors"]
        return [entry["eigenvalues"] for entry in found.values()]

    np.testing.assert_allclose(eigenvalues(tmp_path / "dynamics-2"), eigenvalues(tmp_path / "dynamics-1"), rtol=1e-5)


# -- per-epoch evaluation -------------------------------------------------------------------------


def _evaluation() -> dict[str, np.ndarray]:
    """Clean and PGD accuracies of a BatchNorm net, with running and with batch statistics, on
    600 points: three evaluation batches of 256, 256 and 88, so each process gets whole batches."""
    from ntkrobust.attacks import AttackSpec
    from ntkrobust.bridge.global_batchnorm import convert
    from ntkrobust.bridge.tracking import clean_accuracy, pgd_accuracy

    model = build_model(model_config("resnet18", (3, 8, 8), 3, width=2, seed=1)).double()
    if distributed.active():  # the net as bridge.experiment holds it under torchrun: its
        model = convert(model)  # BatchNorm shares nothing here (each process has whole batches)
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(600, 3, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (600,), generator=generator)
    attack = AttackSpec("pgd", 0.1, "linf", step=0.05, steps=2, seed=11)
    found: dict[str, np.ndarray] = {}
    for mode in ("running", "batch"):
        accuracy, x_adv = pgd_accuracy(model, x, y, attack, batchnorm=mode, across_processes=True)
        found[f"{mode}-pgd"] = np.array([accuracy])
        found[f"{mode}-examples"] = x_adv.numpy()
        found[f"{mode}-clean"] = np.array([clean_accuracy(model, x, y, batchnorm=mode, across_processes=True)])
    # the buffers as they were, batch counts included: the processes evaluated different numbers
    # of batches, and training does not broadcast the buffers (training.replicated)
    found["buffers"] = torch.cat([b.double().reshape(-1) for b in model.buffers()]).numpy()
    return found


def _evaluation_rank(rank: int, world: int, port: int, out: str) -> None:
    with _in_group(rank, world, port):
        np.savez(Path(out) / f"evaluation-rank{rank}.npz", **_evaluation())


def test_two_processes_evaluate_their_shares_to_the_accuracies_of_one(tmp_path: Path) -> None:
    """Each process attacks and predicts its share of the evaluation batches (each batch seeded
    and normalised as in one process); the accuracies and every PGD example are one process's,
    exactly (float64), on both processes."""
    import torch.multiprocessing as mp

    mp.spawn(_evaluation_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _evaluation()
    assert 0.0 < single["running-clean"][0] < 1.0 and not np.array_equal(
        single["running-examples"], single["batch-examples"]
    )
    for rank in (0, 1):
        with np.load(tmp_path / f"evaluation-rank{rank}.npz") as found:
            for name, value in single.items():
                np.testing.assert_array_equal(found[name], value, err_msg=f"{name}, rank {rank}")


# -- RobustBench's evaluation (evaluate, train --final-eval) --------------------------------------

#: 28 points in AutoAttack runs of 8: rank 0 attacks rows 0-7 and 16-23, rank 1 rows 8-15 and 24-27
ROBUST_POINTS, ROBUST_BATCH, ROBUST_SEED, ROBUST_EPS = 28, 8, 3, 0.06


def _robust_net() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random linear 3-class net on random 8x8 images, labelled by its own predictions (every
    clean point correct) except the first 2. (A random CNN's outputs hardly move with its input:
    no attack took a point of one at eps 0.3.) At eps 0.06 PGD-20 leaves 5 of the 26, AutoAttack
    4: the attacks take some points and not others, and AutoAttack's runs are short."""
    from ntkrobust.bridge.adversarial import predict

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with torch.no_grad():
        weight = torch.randn(3, 65, generator=torch.Generator().manual_seed(2)) / 8
        model[1].weight.copy_(weight[:, :64])
        model[1].bias.copy_(weight[:, 64])
    x = torch.rand(ROBUST_POINTS, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = predict(model.eval(), x)
    y[:2] = (y[:2] + 1) % 3
    return model, x, y


def _robust_flags() -> tuple[dict[str, np.ndarray], list[list[int]]]:
    """``robust_correct``'s verdicts (across processes under a launch) and the AutoAttack runs
    this process made: [points, seed] of each (each attack of a run takes the run's seed)."""
    from unittest import mock

    from pyautoattack import AutoAttack

    from ntkrobust.bridge.evaluation import robust_correct

    model, x, y = _robust_net()
    runs: list[list[int]] = []
    run_standard_evaluation = AutoAttack.run_standard_evaluation

    def counted(self: AutoAttack, x: torch.Tensor, y: torch.Tensor, **kw: object) -> object:
        runs.append([int(x.shape[0]), int(self.seed)])
        return run_standard_evaluation(self, x, y, **kw)

    with mock.patch.object(AutoAttack, "run_standard_evaluation", counted):
        flags = robust_correct(
            model, x, y, eps=ROBUST_EPS, channels=1, seed=ROBUST_SEED, batch_size=ROBUST_BATCH, across_processes=True
        )
    return flags, runs


def test_autoattack_runs_each_batch_as_autoattack_seeded_by_its_first_row() -> None:
    """The per-batch runs are pyautoattack's standard evaluation of each batch with seed + its first
    row, to the point (the independent route: the reference code called directly), with 3 classes
    the untargeted APGD-DLR in place of APGD-T (whose loss fails with an IndexError there)."""
    from pyautoattack import AutoAttack

    from ntkrobust.bridge.adversarial import predict

    flags, runs = _robust_flags()
    assert runs == [[8, 3], [8, 11], [8, 19], [4, 27]]  # seeded by the seed + the first row
    assert flags["clean"][2:].all() and not flags["clean"][:2].any()
    assert 0 < flags["autoattack"].sum() < flags["clean"].sum()  # the attack takes some points, not all
    assert (flags["autoattack"] <= flags["clean"]).all()
    model, x, y = _robust_net()
    direct = []
    for start in range(0, ROBUST_POINTS, ROBUST_BATCH):
        rows = slice(start, start + ROBUST_BATCH)
        attack = AutoAttack(model, norm="Linf", eps=ROBUST_EPS, version="standard", seed=ROBUST_SEED + start)
        # 3 classes: no targeted DLR loss (it needs a fourth logit), the untargeted one in its place
        attack.attacks_to_run = ["apgd-ce", "apgd-dlr", "fab-t", "square"]
        attack.fab.n_target_classes = 2
        attack.logger.setLevel(logging.WARNING)
        x_adv, _ = attack.run_standard_evaluation(x[rows], y[rows], batch_size=ROBUST_BATCH)
        direct.append((predict(model, x_adv) == y[rows]).numpy())
    np.testing.assert_array_equal(flags["autoattack"], np.concatenate(direct))


def _robust_rank(rank: int, world: int, port: int, out: str) -> None:
    with _in_group(rank, world, port):
        flags, runs = _robust_flags()
        np.savez(Path(out) / f"robust-rank{rank}.npz", runs=np.array(runs), **flags)


def test_two_processes_share_the_autoattack_runs_to_the_verdicts_of_one(tmp_path: Path) -> None:
    """Under a launch each process makes its share of the AutoAttack runs (rows 0-7 and 16-23 on
    rank 0, 8-15 and 24-27 on rank 1), and both get one process's verdict for every point and
    attack (PGD and CW too: their batches are seeded by their first row as well)."""
    import torch.multiprocessing as mp

    mp.spawn(_robust_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single, _ = _robust_flags()
    for rank, runs in ((0, [[8, 3], [8, 19]]), (1, [[8, 11], [4, 27]])):
        with np.load(tmp_path / f"robust-rank{rank}.npz") as found:
            assert found["runs"].tolist() == runs
            for name, value in single.items():
                np.testing.assert_array_equal(found[name], value, err_msg=f"{name}, rank {rank}")


def test_evaluate_under_torchrun_gives_one_processs_accuracies_on_a_three_class_task(tmp_path: Path) -> None:
    """``train --final-eval autoattack`` on a 3-class task (it failed with an IndexError in
    AutoAttack's targeted DLR loss) under torchrun, and ``torchrun --nproc-per-node 2 -m ntkrobust
    evaluate`` of its net: AutoAttack's runs of 8 points shared between the processes, the
    accuracies of one process on one thread (as torchrun gives each process) exactly, written once.
    About 30 s: three launches with AutoAttack."""
    import json
    import subprocess

    from ntkrobust import cli

    task = ["--data", "digits", "--classes", "0,1,2", "--n-test", "30"]
    train = ["train", *task, "--n-train", "150", "--epochs", "4", "--lr", "0.1", "--width", "16", "--batch-size", "16"]
    train += ["--track-kernel", "0", "--final-eval", "autoattack", "--eval-n", "30", "--quiet"]
    done = subprocess.run(
        [*_torchrun(2), *train, "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((tmp_path / "run" / "history.json").read_text())["final_evaluation"]
    assert final["autoattack_attacks"] == ["apgd-ce", "apgd-dlr", "fab-t", "square"]
    assert final["accuracy"]["clean"] > 0.5  # something for the attacks to take
    evaluate = ["evaluate", str(tmp_path / "run" / "checkpoints" / "epoch_004.pt"), *task, "--eps", "0.1"]
    evaluate += ["--attacks", "pgd-20,autoattack", "--batch-size", "8", "--quiet"]
    done = subprocess.run(
        [*_torchrun(2), *evaluate, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("(world size 2)") == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main([*evaluate, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    two, one = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("two", "one"))
    assert two["nets"] == one["nets"]
    assert two["config"]["autoattack_attacks"] == ["apgd-ce", "apgd-dlr", "fab-t", "square"]
    assert two["config"]["autoattack_batch_size"] == 8
    accuracy = one["nets"][0]["accuracy"]
    assert accuracy["autoattack"] < accuracy["clean"]


def _restarted_flags() -> dict[str, np.ndarray]:
    """PGD-20 and CW-100 from 3 random starts per point, in batches of 256 (one here: rank 1 adds
    its empty share to every restart's all-reduce)."""
    from ntkrobust.bridge.evaluation import robust_correct

    model, x, y = _robust_net()
    return robust_correct(
        model, x, y, eps=ROBUST_EPS, channels=1, seed=ROBUST_SEED, attacks=("pgd-20", "cw-100"), restarts=3,
        across_processes=True,
    )  # fmt: skip


def _restarted_rank(rank: int, world: int, port: int, out: str) -> None:
    with _in_group(rank, world, port):
        np.savez(Path(out) / f"restarted-rank{rank}.npz", **_restarted_flags())


def test_two_processes_restart_pgd_to_the_verdicts_of_one(tmp_path: Path) -> None:
    """``evaluate --restarts`` under a launch: every process runs the same restarts' collectives in
    the same order and gets one process's verdicts for every point."""
    import torch.multiprocessing as mp

    mp.spawn(_restarted_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _restarted_flags()
    assert 0 < single["pgd-20"].sum() < single["clean"].sum()  # the attack takes some points, not all
    for rank in (0, 1):
        with np.load(tmp_path / f"restarted-rank{rank}.npz") as found:
            for name, value in single.items():
                np.testing.assert_array_equal(found[name], value, err_msg=f"{name}, rank {rank}")
