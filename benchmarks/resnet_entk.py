"""ResNet-18's empirical NTK on CIFAR-10 points, by kernel kind: seconds and peak memory.

    python benchmarks/resnet_entk.py [--data ../shared/data/cifar10/cifar10_subset.npz]
        [--cases 50:full,50:class-blocks,50:rademacher:2,500:class-blocks,500:rademacher:2]
        [--device cpu|cuda] [--out runs/resnet-entk]

Each case is one ``ntkrobust entk --model resnet18`` (width 64, 11.2 M parameters, float32) in a
process of its own, so its peak resident memory is its own. It prints, per case, the kernel's
seconds (from the run's metrics.json: the kernel alone, data loading apart), the process's peak
memory, and the ratio of the seconds to the full kind's at the same number of points when that
case ran too. Issue 19's goal: a 500-point trace or class-blocks kernel completes on a 2-core
machine within 24 GB. Each 500-point exact case takes tens of minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import ROOT

DEFAULT_CASES = "50:full,50:class-blocks,50:rademacher:2,500:class-blocks,500:rademacher:2"
#: runs the command line in this process and prints its peak resident memory (KiB on Linux)
_MEASURED = (
    "import resource, sys\n"
    "from ntkrobust import cli\n"
    "code = cli.main(sys.argv[1:])\n"
    "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_subset.npz")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="POINTS:KIND,... (kinds of ntkrobust entk --kind)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "resnet-entk")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found: this benchmark needs CIFAR-10 points (--data)")

    print(f"ResNet-18 (width 64) eNTK on {args.data.name}, device {args.device}")
    seconds: dict[tuple[int, str], float] = {}
    for case in args.cases.split(","):
        points, kind = case.split(":", 1)
        out = args.out / f"n{points}-{kind.replace(':', '')}"
        flags = ["entk", "--data", str(args.data), "--model", "resnet18", "--points", points, "--kind", kind]
        flags += ["--device", args.device, "--force", "--quiet", "--out", str(out)]
        done = subprocess.run([sys.executable, "-c", _MEASURED, *flags], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{points:>4} points {kind:>14}: failed ({done.stderr.strip().splitlines()[-1:]})", flush=True)
            continue
        peak_gb = int(done.stdout.split("peak_rss_kib")[-1].split()[0]) * 1024 / 1e9
        kernel = json.loads((out / "metrics.json").read_text())["seconds"]["kernel"]
        seconds[(int(points), kind)] = kernel
        full = seconds.get((int(points), "full"))
        ratio = f", {kernel / full:.2f} of full" if full and kind != "full" else ""
        print(f"{points:>4} points {kind:>14}: {kernel:7.1f} s, peak memory {peak_gb:5.1f} GB{ratio}", flush=True)


if __name__ == "__main__":
    main()
