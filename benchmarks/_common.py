"""Shared by the benchmark scripts: timing and the data they run on."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ntkrobust import retain_freed_memory

ROOT = Path(__file__).resolve().parents[1]

#: Benchmarks measure what the command line runs with: freed memory kept for reuse (glibc; see
#: ``ntkrobust/_allocator.py``). ``NTKROBUST_MALLOC=system`` measures the default allocator.
ALLOCATOR = "freed memory retained" if retain_freed_memory() else "the system allocator's defaults"

#: The real MNIST test set of the steering repository, when it is checked out beside this one.
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def ntkrobust_command(processes: int) -> list[str]:
    """``python -m ntkrobust`` as a user starts it: under torchrun (``torch.distributed.run``,
    one node) on more than one process."""
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)] if processes > 1 else []
    return [sys.executable, *launcher, "-m", "ntkrobust"]


def wait_for_device(device) -> None:  # type: ignore[no-untyped-def]
    """Wait until a GPU has run every kernel queued on it: a CUDA call returns as soon as its work
    is queued, so a time taken without this can stop before the work does."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def until_done(fn: Callable[[], object], device) -> Callable[[], object]:  # type: ignore[no-untyped-def]
    """``fn`` that returns only once ``device`` has finished its work (see ``wait_for_device``)."""

    def call() -> object:
        result = fn()
        wait_for_device(device)
        return result

    return call


def against_goal(value: float, goal: float, *, at_most: bool, digits: int, width: int = 0) -> tuple[str, str]:
    """(``value`` printed with ``digits`` decimals in ``width`` characters, "met" or "NOT met").

    The verdict is the unrounded value's. Where ``digits`` decimals would round the value onto the
    goal's other side (1.004 against "<= 1.0" printed "1.00 ... NOT met"), it is printed with as
    many more as it takes, up to 6 more, so the number printed agrees with its verdict."""
    met = value <= goal if at_most else value >= goal
    shown = digits
    text = f"{value:{width}.{shown}f}"
    while shown < digits + 6 and (float(text) <= goal if at_most else float(text) >= goal) != met:
        shown += 1
        text = f"{value:{width}.{shown}f}"
    return text, "met" if met else "NOT met"


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call (compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_seconds(first: Callable[[], object], second: Callable[[], object], pairs: int) -> list[tuple[float, float]]:
    """Wall times of ``first`` and ``second`` called in turn, ``pairs`` times after one warm-up
    call of each: each pair's ratio compares the two at the same moment of a machine whose speed
    drifts (a shared VM's can change by half within minutes)."""
    first()
    second()
    times = []
    for _ in range(pairs):
        start = time.perf_counter()
        first()
        middle = time.perf_counter()
        second()
        times.append((middle - start, time.perf_counter() - middle))
    return times


def load_mnist(mnist: Path, n_train: int, n_test: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """(x_train, y_train, x_test, y_test, source): real MNIST cut from its test set when the
    folder exists, else uniform noise images of the same shape (ten balanced classes)."""
    if mnist.exists():
        from ntkrobust.bridge.data import load_dataset

        data = load_dataset("mnist", root=mnist, from_test_split=True, n_train=n_train, n_test=n_test, seed=seed)
        return data.x_train, data.y_train, data.x_test, data.y_test, f"real MNIST from {mnist}"
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n_train + n_test, 1, 28, 28)).astype(np.float32)
    y = np.arange(n_train + n_test) % 10
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], "synthetic uniform 28x28 images"
