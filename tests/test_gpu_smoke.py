"""``benchmarks/gpu_smoke.sh``, the GPU owner's first command, kept working without a GPU: on
the CPU (``GPU_SMOKE_DEVICE=cpu``, its torchrun block with 2 gloo processes) every command runs,
none is skipped, and 2 processes' kernel is one process's. Its GPU run is not tested here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: every command the script runs on the CPU with its torchrun block, in order
COMMANDS = (
    "entk-mnist-cnn", "entk-resnet18", "entk-rademacher", "train-pgd", "dynamics", "train-resnet-bn",
    "two-layer", "transfer", "evaluate-pt2", "evaluate", "attack-analytic", "analytic-devices",
    "train-resnet-bn-standard", "train-pgd-float32", "entk-resnet18-float32", "evaluate-float32",
    "train-pgd-float32-2gpu", "train-resnet-bn-standard-2gpu", "evaluate-float32-2gpu", "entk-resnet18-float32-2gpu",
)  # fmt: skip


@pytest.mark.slow  # every command of the script on 2 CPU cores: ~10 minutes
@pytest.mark.skipif(shutil.which("bash") is None, reason="the script is a bash script")
def test_gpu_smoke_script_runs_every_command_on_the_cpu(tmp_path: Path) -> None:
    env = os.environ | {"GPU_SMOKE_DEVICE": "cpu", "GPU_SMOKE_TORCHRUN": "1", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_smoke.sh"), str(tmp_path / "smoke")],
        env=env, capture_output=True, text=True, timeout=1800, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = [line.split()[0] for line in done.stdout.splitlines() if re.match(r"^\S+ +[0-9.]+ s ", line)]
    assert ran == list(COMMANDS)
    assert "SKIPPED" not in done.stdout
    assert done.stdout.rstrip().endswith(f"gpu_smoke: every command passed; records in {tmp_path / 'smoke'}")
    assert re.search(r"^structured-route check +kept (\d+) of \1 convolutions, 1 of 1 dense$", done.stdout, re.M)
    # the shared kernel against one process's, as the script prints it (float32 on the CPU)
    difference = re.search(r"entk-resnet18-float32-2gpu: largest difference (\S+) of the largest", done.stdout)
    assert difference is not None and float(difference.group(1)) < 1e-5
    # the last epoch's loss, 1 process against 2, each on one thread: the BatchNorm ResNet's two
    # steps 2.5e-6 apart here, with AVX2 kernels as with AVX-512 (5.2e-3 with BatchNorm per
    # process; over a whole epoch rounding reached 3.3e-4 to 6.6e-3 on this machine, 1.5e-8 on
    # another); PGD's CNN 3.7e-4, rounding that its sign steps turn into whole steps (in float64
    # the distributed tests find its weights to 1e-10)
    losses = dict(re.findall(r"(\S+) train_loss: 1 GPU \S+, 2 GPUs \S+ \(relative difference (\S+)\)", done.stdout))
    assert set(losses) == {"train-pgd-float32-2gpu", "train-resnet-bn-standard-2gpu"}, losses
    assert float(losses["train-resnet-bn-standard-2gpu"]) < 1e-4 and float(losses["train-pgd-float32-2gpu"]) < 5e-3
    # RobustBench's attacks shared by 2 processes against one (on one thread, as each of them): equal
    evaluated = re.search(r"evaluate-float32-2gpu: (.*) \(equal", done.stdout)
    assert evaluated is not None
    pairs = re.findall(r"1 GPU (\S+), 2 GPUs (\S+?)(?:,|$)", evaluated.group(1))
    assert len(pairs) == 4 and all(a == b for a, b in pairs), evaluated.group(0)
    # a net that learned, so the comparison can fail: at chance every attack reads 0.100 anyway
    clean, pgd = (float(a) for a, _ in pairs[:2])
    assert clean > 0.3 and pgd < clean - 0.1, evaluated.group(0)
