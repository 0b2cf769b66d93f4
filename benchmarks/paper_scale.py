"""What RAT's ResNet-18 runs cost on this machine, measured through the command line and
extrapolated to the papers' scale (CIFAR-10's 50,000 training images, 200 epochs, a 500-point
empirical NTK after every epoch).

    python benchmarks/paper_scale.py --data cifar10 --data-root DATA/cifar10 [--device cuda]
        [--epochs 2] [--points 500] [--n-train N] [--width W] [--nproc-per-node K] [--out runs/paper-scale]

(``--data`` also takes an .npz, e.g. ``../shared/data/cifar10/cifar10_subset.npz``.) With
``--nproc-per-node k`` every command runs under ``torchrun --nproc-per-node k`` (k GPUs of one node,
or k gloo processes on a CPU): the seconds are those of the k processes together, as section
"Running at paper scale" of the README runs them; the peak memory is rank 0's GPU's.

Three measurements, each one ``python -m ntkrobust`` command as a user runs it:
1. ``train`` with RAT's PGD-AT flags (ε = 8/255, 10 steps of 2/255, crop-flip, lr 0.1, weight
   decay 5e-4, batch 128) and the tracking of --points probe points, for --epochs epochs;
2. the same with ``--mode standard``;
3. ``entk`` of ResNet-18 at initialisation on --points training points, kinds full (N, N, 10, 10),
   class-blocks (N, N, 10: what tracking takes) and rademacher:2 (the unbiased trace estimate of
   ``--estimator``): the kernel's seconds (``metrics.json``; data loading and start-up apart).
Each run's ``history.json`` has every epoch's seconds of training, kernel tracking and evaluation
(--eval-n points per split). The last epoch's are used: the first pays for the warm-up (cuDNN's
algorithm choice, the allocator). Two epochs leave the nets near chance, and ``train`` warns so:
that does not change what an epoch costs. Training scales with the number of images; a tracking point
(C-NTK and AE-NTK of the probe) and the evaluation do not. So 200 epochs on 50,000 images cost
200 x (train x 50,000 / n_train + evaluate) + 201 x track, printed in hours; the training epoch
on 50,000 images is set beside RAT's on one RTX 3090 (the text of its figure 6: 90 s with PGD
examples, 25 s on clean data, 18,000 s for a 200-epoch PGD-AT run, no kernels taken).

Writes ``paper_scale.json`` (the measurements and the flags that made them) into --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import ntkrobust_command

from ntkrobust.bridge.entk import KernelKind

#: CIFAR-10's training set and the papers' epochs: what the measurements are scaled to
PAPER_IMAGES, PAPER_EPOCHS = 50_000, 200
#: RAT (the text of its figure 6): seconds per epoch of ResNet-18 on CIFAR-10 on one RTX 3090
RAT_EPOCH_SECONDS = {"pgd": 90.0, "standard": 25.0}
RAT_PGD = ["--mode", "pgd", "--eps", "8/255", "--pgd-step", "2/255", "--pgd-steps", "10"]
RAT_TRAINING = ["--augment", "crop-flip", "--lr", "0.1", "--weight-decay", "5e-4", "--batch-size", "128"]
KINDS = ("full", "class-blocks", "rademacher:2")


def _ntkrobust(args: list[str], out: Path, processes: int) -> dict:
    """Run one command (its progress lines go to this process's stderr), under torchrun on more
    than one process; its record (rank 0 writes it)."""
    command = [*ntkrobust_command(processes), *args, "--out", str(out), "--force"]
    print(f"$ {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"paper_scale: {args[0]} exited {done.returncode} after {time.perf_counter() - start:.0f} s")
    record = out / ("metrics.json" if args[0] == "entk" else "history.json")
    return json.loads(record.read_text())


def _extrapolated(history: dict) -> dict:
    """The last epoch's seconds, and the paper-scale run's hours from them."""
    last = history["epochs"][-1]
    seconds = last["seconds"]
    n_train = history["dataset"]["n_train"]
    hours = {
        "train": PAPER_EPOCHS * seconds["train"] * PAPER_IMAGES / n_train / 3600,
        "track": (PAPER_EPOCHS + 1) * seconds["track"] / 3600,  # at initialisation and every epoch
        "evaluate": PAPER_EPOCHS * seconds["evaluate"] / 3600,
    }
    return {
        "n_train": n_train,
        "epoch_seconds": seconds,
        "accuracy": last["accuracy"],
        "peak_gpu_memory_mib": history.get("peak_gpu_memory_mib"),
        "gpu": history.get("gpu"),  # the device and whether it ran in TF32
        "paper_hours": hours,
        "paper_hours_total": sum(hours.values()),
        "paper_epoch_train_seconds": seconds["train"] * PAPER_IMAGES / n_train,
        # one tracking point against one epoch on the paper's 50,000 images
        "track_per_paper_epoch": seconds["track"] / (seconds["train"] * PAPER_IMAGES / n_train),
    }


def _mib(record: dict) -> str:
    """A record's peak GPU memory for the table (none on a CPU)."""
    peak = record["peak_gpu_memory_mib"]
    return "-" if peak is None else f"{peak:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="cifar10", help="cifar10 (with --data-root) or an .npz")
    parser.add_argument("--data-root", help="folder holding cifar10's files")
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training run (the last one is timed)")
    parser.add_argument("--points", type=int, default=500, help="kernel points (the probe of tracking)")
    parser.add_argument("--n-train", type=int, help="training images (default: all)")
    parser.add_argument("--eval-n", type=int, default=1000, help="points per split of each epoch's evaluation")
    parser.add_argument("--width", type=int, help="ResNet-18's base channels (default 64; smaller to check the script)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="entk kinds to time (comma-separated; none)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes (GPUs) per command, under torchrun")
    parser.add_argument("--out", type=Path, default=Path("runs/paper-scale"))
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch pays for the warm-up")
    if args.nproc_per_node < 1:
        parser.error("--nproc-per-node must be at least 1")
    kinds = [kind for kind in args.kinds.split(",") if kind and kind != "none"]
    for kind in kinds:  # before the training runs' minutes, not after them
        try:
            KernelKind.parse(kind)
        except ValueError as err:
            parser.error(f"--kinds: {err}")

    data = ["--data", args.data, *(["--data-root", args.data_root] if args.data_root else [])]
    data += ["--n-train", str(args.n_train)] if args.n_train else []
    model = ["--model", "resnet18", *(["--width", str(args.width)] if args.width else [])]
    common = [*data, *model, "--device", args.device]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"argv": sys.argv, "processes": args.nproc_per_node, "kernels": {}, "training": {}}

    record_file = args.out / "paper_scale.json"
    # the training runs first (what a paper-scale run costs), then the kernels alone; the record is
    # rewritten after each, so a run stopped by a time limit keeps what it measured
    tracking = ["--track-kernel", str(args.points), "--eval-n", str(args.eval_n), "--epochs", str(args.epochs)]
    for mode, flags in (("pgd", RAT_PGD), ("standard", ["--mode", "standard", "--eps", "8/255"])):
        train = ["train", *common, *flags, *RAT_TRAINING, *tracking]
        history = _ntkrobust(train, args.out / f"train-{mode}", args.nproc_per_node)
        results["training"][mode] = _extrapolated(history)
        record_file.write_text(json.dumps(results, indent=2))
    for kind in kinds:
        name = "entk-" + kind.replace(":", "")
        entk = ["entk", *common, "--points", str(args.points), "--kind", kind]
        record = _ntkrobust(entk, args.out / name, args.nproc_per_node)
        peak = record.get("peak_gpu_memory_mib")
        results["kernels"][kind] = {
            "seconds": record["seconds"]["kernel"],
            "peak_gpu_memory_mib": peak,
            "gpu": record.get("gpu"),
        }
        record_file.write_text(json.dumps(results, indent=2))

    gpu = next((run["gpu"] for run in results["training"].values() if run["gpu"]), None)
    device = args.device if gpu is None else f"{gpu['name']} (TF32 convolutions {gpu['tf32_convolutions']})"
    processes = f" x {args.nproc_per_node} processes" if args.nproc_per_node > 1 else ""
    print(
        f"ResNet-18{f' (width {args.width})' if args.width else ''} on {device}{processes}, {args.points} kernel points"
    )
    for mode, run in results["training"].items():
        s, hours = run["epoch_seconds"], run["paper_hours"]
        print(
            f"  train {mode:<9} last epoch on {run['n_train']} images: {s['train']:.1f} s training, "
            f"{s['track']:.1f} s tracking, {s['evaluate']:.1f} s evaluation; peak GPU memory {_mib(run)}"
        )
        print(
            f"    at {PAPER_EPOCHS} epochs of {PAPER_IMAGES:,} images: {run['paper_hours_total']:.2f} hours "
            f"(training {hours['train']:.2f}, tracking {hours['track']:.2f}, evaluation {hours['evaluate']:.2f}); "
            f"a tracking point = {run['track_per_paper_epoch']:.2f} of an epoch"
        )
        print(
            f"    a training epoch of {PAPER_IMAGES:,} images: {run['paper_epoch_train_seconds']:.1f} s "
            f"(RAT on an RTX 3090: {RAT_EPOCH_SECONDS[mode]:.0f} s)"
        )
    full = results["kernels"].get("full")
    for kind, kernel in results["kernels"].items():
        ratio = f"({kernel['seconds'] / full['seconds']:.2f} of full)" if full else ""
        print(f"  entk {kind:<14} {kernel['seconds']:8.1f} s  {ratio:<16} peak GPU memory {_mib(kernel)}")
    print(f"-> {record_file}")


if __name__ == "__main__":
    main()
