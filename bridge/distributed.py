"""torch.distributed for the torch half: the process group of a ``torchrun`` launch, and the
few collectives the commands need.

``torchrun --nproc-per-node N -m ntkrobust entk ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` / ``MASTER_PORT`` set; ``init_from_environment`` joins them into
one group (NCCL when the command runs on GPUs, gloo on CPUs). The empirical NTK is a sum over
parameter groups, Θ = Σ_g J_g(X1) J_g(X2)ᵀ, so each rank computes the passes ``share(items)``
gives it and one ``all_reduce_sum`` assembles the kernel on every rank, equal to the
single-process kernel up to the order of the float64 sums. Only rank 0 writes files
(``is_main``).

Every rank must make the same collectives in the same order, so whatever decides how the work is
cut or whether it goes on is made equal first: a budget each rank measures itself
(``agreed_minimum``), a decision from files rank 0 writes (``from_main``), a loss read summed
(``all_reduce_sum``), and the checks before the compute (``failing_together``: a refusal on one
rank stops every rank, not just its own node's). ``summed_over_processes`` is the differentiable
sum (BatchNorm over the global batch); ``main_first`` lets rank 0 write shared files (a download)
before the others read. ``leave`` ends a command that finished in every process.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "StoppedWithAnother",
    "active",
    "agreed_minimum",
    "all_reduce_sum",
    "backend",
    "failing_together",
    "from_main",
    "init_from_environment",
    "is_main",
    "launched",
    "leave",
    "main_first",
    "rank",
    "rows",
    "share",
    "summed_over_processes",
    "world_size",
]

T = TypeVar("T")

#: How long a process waits in a collective for the others: the longest wait is a download by rank
#: 0 into ``--data-root`` (``main_first``: CIFAR-100 is 161 MB) while the others wait at a barrier.
#: torch's defaults are 10 minutes for NCCL and 30 for gloo: the same command would abort on GPUs
#: where it passes on CPUs. A process that fails ends the launch sooner (torchrun stops the others).
COLLECTIVE_TIMEOUT = timedelta(minutes=60)
#: how long the processes that ``failing_together`` stops wait before they exit
_SAY_WHY_S = 2.0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def backend(device: str = "auto") -> str:
    """The collectives' backend for a command on ``device`` (``auto``, ``cpu`` or ``cuda``): NCCL
    when its tensors live on GPUs, gloo otherwise, including ``--device cpu`` on a machine with
    GPUs (NCCL reduces CUDA tensors only)."""
    return "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"


def init_from_environment(device: str = "auto") -> None:
    """Join the launcher's process group, once: NCCL with one GPU per process (``LOCAL_RANK``)
    when the command runs on GPUs, gloo otherwise (``backend``)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    chosen = backend(device)
    if chosen == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    with _signals_end_the_process():
        dist.init_process_group(backend=chosen, timeout=COLLECTIVE_TIMEOUT)


@contextlib.contextmanager
def _signals_end_the_process() -> Iterator[None]:
    """SIGTERM and SIGINT with their default actions in the ``with`` body (the main thread only).
    The rendezvous waits in C++ for the other processes (up to ``COLLECTIVE_TIMEOUT``), and a
    Python handler runs only once it returns: a launch whose other processes never came ignored
    ``kill`` and Ctrl-C for an hour (seen with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set
    by hand). Nothing is written or locked before the group is joined, so an end at once leaves
    nothing behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_DFL) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def leave() -> None:
    """The command finished in this process: wait until it has in every process, then leave the
    group (nothing when there is none).

    PyTorch asks every process to destroy its group at the end (since 2.4 an NCCL group left for
    exit prints a warning per process: pending work may not have finished). The barrier first: a
    process that tears its connections down while another still holds them (rank 0, saving) can
    abort that one (seen once on gloo). Before both, a collection: what the command no longer
    reaches but a reference cycle keeps (a DistributedDataParallel wrapper can be) is otherwise
    freed after the group, at exit, which aborted a process ("terminate called without an active
    exception"): a script of 2 gloo processes that trained a DDP net and left, as this does
    without the collection, lost one in about 1 launch in 11 (4 in 45), and none in 120 with it.
    Called on success only: after a failure another process
    may be waiting in a collective that never completes, and the teardown would wait with it
    (NCCL flushes pending work first); torchrun stops the others instead. The exception: a
    check that stopped every rank together (``failing_together``), where none waits elsewhere."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if active():
        _barrier()
    dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or a single process: the one that writes files and prints."""
    return rank() == 0


def share(items: Sequence[T]) -> list[T]:
    """This rank's items, round robin: every item on exactly one rank."""
    return list(items[rank() :: world_size()])


def rows(n: int) -> slice:
    """This rank's contiguous share of n rows (sizes differ by at most one; all of them in one process)."""
    return slice(n * rank() // world_size(), n * (rank() + 1) // world_size())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place, on every rank (a no-op in one process). gloo
    reduces CPU tensors only, so a CUDA tensor under gloo goes through the host; NCCL reduces
    CUDA tensors only, so under NCCL (``backend``: commands on GPUs) pass a tensor on the GPU."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


class _SumOverProcesses(torch.autograd.Function):
    """y = Σ_r x_r on every rank; its backward, ∂L/∂x_r = Σ_r' ∂L_r'/∂y, is the same all-reduce of
    the gradients (L = Σ_r L_r, each process's loss)."""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:
        return _all_reduce(tensor.clone(), dist.ReduceOp.SUM)

    @staticmethod
    def backward(ctx: object, gradient: torch.Tensor) -> torch.Tensor:
        return _all_reduce(gradient.contiguous().clone(), dist.ReduceOp.SUM)


def summed_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, out of place and differentiably: the gradient each rank
    takes is the sum of every rank's (``tensor`` itself in one process). torch's own
    ``torch.distributed.nn.functional.all_reduce`` does the same and is deprecated; its
    replacement differentiates only in recent versions."""
    return _SumOverProcesses.apply(tensor) if active() else tensor


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body, then the other ranks do (in one process: just the body): work on
    files every rank then reads, such as a download into the shared ``--data-root``, which the
    ranks would otherwise write over each other. Rank 0 releases the others even when its body
    fails, so they fail on their own rather than wait."""
    if not active():
        yield
        return
    if not is_main():
        _barrier()
    try:
        yield
    finally:
        if is_main():
            _barrier()


def _barrier() -> None:
    # NCCL's barrier is told the device (set from LOCAL_RANK), or torch warns that it guesses
    nccl = dist.get_backend() == "nccl"
    dist.barrier(device_ids=[torch.cuda.current_device()] if nccl else None)


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself in one process): a decision every rank
    must make alike from files that rank 0 alone writes (which runs of a folder to resume), taken
    before it writes any."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class StoppedWithAnother(Exception):
    """This process stopped because another process of the launch failed a check before the
    compute (``failing_together``); that one says why, so this one says nothing more."""


@contextlib.contextmanager
def failing_together() -> Iterator[None]:
    """The checks in the body pass on every rank or stop every rank: each rank runs the body (the
    checks of every rank, or those that rank 0 alone makes of the files it writes), then all learn
    which failed. The lowest failing rank raises its own error; every other rank raises
    ``StoppedWithAnother``, so a launch prints one line for one cause. (Nothing happens in one
    process: the body's error is just raised.)

    Without it a rank that refuses (``--data-root`` or ``--out`` missing on its node, a lock held)
    leaves the others in their next collective. On one node torchrun stops them; across nodes an
    NCCL group may wait for ``COLLECTIVE_TIMEOUT``. The body may make a collective only where no
    rank can have failed before it (a download's ``main_first`` follows checks of the flags
    alone): a rank that failed earlier would never reach it. An interruption (``KeyboardInterrupt``,
    SIGTERM: not an ``Exception``) is not gathered; torchrun delivers it to every process."""
    if not active():
        yield
        return
    failure: Exception | None = None
    try:
        yield
    except Exception as error:  # any error: the others must learn of it, whatever it is
        failure = error
    failed: list[bool | None] = [None] * world_size()
    dist.all_gather_object(failed, failure is not None)
    first = next((r for r, did in enumerate(failed) if did), None)
    if first is None:
        return
    here = rank()
    with contextlib.suppress(Exception):  # the error to raise is the check's, whatever the teardown does
        leave()  # every rank stops here, none waits in a collective: the group can go
    if failure is not None and first == here:
        raise failure
    # torchrun stops the other processes once one has exited: give the one that says why the time
    # to say it (and to be the failure torchrun reports first)
    with contextlib.suppress(BaseException):  # torchrun's SIGTERM meanwhile: still without a line
        time.sleep(_SAY_WHY_S)
    raise StoppedWithAnother(f"rank {first} of the launch failed a check before the compute")


def agreed_minimum(value: int, device: torch.device | str = "cpu") -> int:
    """The smallest of the ranks' ``value``, on every rank (``value`` itself in one process).

    What every rank must plan with where each measures its own: a memory budget read from each
    GPU's free memory, from which the ranks cut the same work into their shares (``share``).
    Plans from different budgets would split different lists: some work done twice, some never,
    and the all-reduce summing it without an error. ``device``: where the command's tensors live
    (NCCL reduces GPU tensors only)."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    return int(_all_reduce(tensor, dist.ReduceOp.MIN).item())


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType) -> torch.Tensor:
    if not active():
        return tensor
    if tensor.is_cuda and dist.get_backend() == "gloo":
        host = tensor.cpu()
        dist.all_reduce(host, op=op)
        tensor.copy_(host)
    else:
        dist.all_reduce(tensor, op=op)
    return tensor
