"""Seconds per epoch of ``ntkrobust train`` on 2 processes (torchrun, gloo on CPUs, NCCL on GPUs)
against 1 process, measured in one run.

    python benchmarks/distributed_training.py [--mnist ../shared/data/mnist] [--n-train 5000]
        [--epochs 2] [--modes standard,pgd] [--device cpu|cuda]

Each mode trains the MNIST CNN (cut from the official MNIST test set when present, else scikit-learn's
digits) for --epochs epochs, once as one process and once under
``torchrun --nproc-per-node 2``, with the same global batch (128) and seed, no kernel tracking,
and per-epoch evaluation on --eval-n points per split. Each run's history.json has its seconds
per epoch (training and evaluation apart); the script prints the median over the epochs after
the first (which pays for start-up) and the ratio 2 processes / 1 process, and how far apart the
two runs ended (in float32 the gradient all-reduce sums in another order, and PGD's signs
amplify that; in float64 the test suite finds the weights of one process to 1e-10). torchrun
sets OMP_NUM_THREADS=1 in each process unless it is set; the single process keeps torch's
default (one thread per core), as a user would run both.

On one machine's 2 CPU cores no speed-up is expected: the two processes share the cores that one
process already uses, and every step adds an all-reduce of the gradients. The ratio tells a GPU
user what the processes' coordination costs; the test suite checks that the results are equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import SHARED_MNIST, ntkrobust_command


def _train(flags: list[str], out: Path, processes: int) -> dict:
    """One ``ntkrobust train`` run; its history."""
    done = subprocess.run([*ntkrobust_command(processes), *flags, "--out", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"train on {processes} process(es) failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "history.json").read_text())


def _per_epoch(history: dict, part: str) -> float:
    """Median seconds of ``part`` (train / evaluate) over the epochs after the first."""
    epochs = [e for e in history["epochs"] if e["epoch"] >= 1]
    later = epochs[1:] or epochs
    return statistics.median(e["seconds"][part] for e in later)


def _largest_gap(a: dict, b: dict) -> float:
    """The largest difference between two nested accuracy records (same keys)."""
    if isinstance(a, dict):
        return max((_largest_gap(a[k], b[k]) for k in a), default=0.0)
    return abs(float(a) - float(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval-n", type=int, default=500)
    parser.add_argument("--modes", default="standard,pgd")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.mnist.exists():
        data = ["--data", "mnist", "--data-root", str(args.mnist.parent), "--from-test-split"]
        data += ["--n-train", str(args.n_train), "--n-test", "1000"]
        source = f"real MNIST from {args.mnist}, {args.n_train} training images"
    else:
        data = ["--data", "digits"]
        source = "scikit-learn digits"
    import os

    import torch

    print(f"data: {source}; MNIST CNN, batch 128, {args.epochs} epochs, device {args.device}")
    threads = os.environ.get("OMP_NUM_THREADS")
    print(
        f"threads: 1 process uses {torch.get_num_threads()} torch threads; torchrun gives each process "
        f"{threads or '1 (its default OMP_NUM_THREADS)'}"
    )
    for mode in args.modes.split(","):
        flags = ["train", *data, "--mode", mode, "--epochs", str(args.epochs), "--batch-size", "128"]
        flags += ["--track-kernel", "0", "--eval-n", str(args.eval_n), "--full-eval-steps", "0"]
        flags += ["--device", args.device, "--quiet"]
        if mode != "standard":  # PGD-10 of 0.075 at ε 0.3, the training attack of the cpu-scale runs
            flags += ["--pgd-steps", "10", "--pgd-step", "0.075"]
        with tempfile.TemporaryDirectory() as tmp:
            one = _train(flags, Path(tmp) / "one", 1)
            two = _train(flags, Path(tmp) / "two", 2)
        gap = _largest_gap(one["epochs"][-1]["accuracy"], two["epochs"][-1]["accuracy"])
        loss_gap = abs(one["epochs"][-1]["train_loss"] - two["epochs"][-1]["train_loss"])
        print(
            f"-- {mode}: last epoch on 1 vs 2 processes: largest accuracy difference {gap:.4f}, "
            f"training loss difference {loss_gap:.2e} (float32: the all-reduce sums in another order)"
        )
        for part in ("train", "evaluate"):
            t1, t2 = _per_epoch(one, part), _per_epoch(two, part)
            print(f"{part:>8} seconds per epoch: 1 process {t1:.2f}, 2 processes {t2:.2f}, ratio {t2 / t1:.2f}")


if __name__ == "__main__":
    main()
