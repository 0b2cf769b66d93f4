"""``benchmarks/paper_scale.py``, which tells a GPU owner what RAT's runs will cost: its scaling to
200 epochs of 50,000 images, and (slow) the whole script on a CPU with a small ResNet."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper_scale.py"


def _script():  # type: ignore[no-untyped-def]
    if str(SCRIPT.parent) not in sys.path:  # its ``_common``, as when it runs as a script
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("paper_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_last_epoch_is_scaled_to_the_papers_runs():
    """Training grows with the images, a tracking point and the evaluation do not; a tracking
    point at initialisation and after each of the 200 epochs."""
    first = {"train": 99.0, "track": 99.0, "evaluate": 99.0}  # the warm-up epoch: not used
    last = {"train": 2.0, "track": 3.0, "evaluate": 0.5}
    history = {
        "dataset": {"n_train": 5000},
        "epochs": [{"seconds": first, "accuracy": {}}, {"seconds": last, "accuracy": {"test_clean": 0.5}}],
    }
    run = _script()._extrapolated(history)
    assert run["paper_epoch_train_seconds"] == pytest.approx(20.0)  # 2 s on 5,000 images, 10x the images
    assert run["paper_hours"] == pytest.approx(
        {"train": 200 * 20 / 3600, "track": 201 * 3 / 3600, "evaluate": 200 * 0.5 / 3600}
    )
    assert run["paper_hours_total"] == pytest.approx((4000 + 603 + 100) / 3600)
    assert run["track_per_paper_epoch"] == pytest.approx(3 / 20)
    assert run["peak_gpu_memory_mib"] is None and run["gpu"] is None  # a CPU's history has neither


@pytest.mark.slow  # four commands of a width-4 ResNet-18 on 2 CPU cores: about a minute each way
@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "2 gloo processes under torchrun"])
def test_the_script_runs_on_a_cpu(tmp_path: Path, processes: int) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "images.npz"  # CIFAR-shaped: RAT's crop-flip needs sides of 16 pixels or more
    x_train, x_test = (rng.uniform(0, 1, (n, 3, 32, 32)).astype(np.float32) for n in (200, 50))
    np.savez(data, x_train=x_train, y_train=np.arange(200) % 10, x_test=x_test, y_test=np.arange(50) % 10)
    out = tmp_path / "out"
    flags = ["--data", str(data), "--device", "cpu", "--width", "4", "--points", "20", "--eval-n", "20"]
    flags += ["--nproc-per-node", str(processes)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *flags, "--kinds", "full,rademacher:2", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "paper_scale.json").read_text())
    assert set(record["kernels"]) == {"full", "rademacher:2"} and set(record["training"]) == {"pgd", "standard"}
    history = json.loads((out / "train-pgd" / "history.json").read_text())
    assert record["training"]["pgd"]["epoch_seconds"] == history["epochs"][-1]["seconds"]
    assert history["config"]["train"]["eps"] == pytest.approx(8 / 255)  # RAT's flags reached train
    assert "a training epoch of 50,000 images" in done.stdout and "entk rademacher:2" in done.stdout
    # its progress: each command's line and the commands' own stage lines
    launched = "$ -m ntkrobust" if processes == 1 else "$ -m torch.distributed.run --nproc-per-node 2 -m ntkrobust"
    assert done.stderr.count(launched) == 4 and "epoch 2/2" in done.stderr
    assert record["processes"] == processes


def test_a_kernel_kind_it_cannot_take_is_refused_before_the_training_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--kinds", "full,fulll", "--device", "cpu", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: --kinds: kernel kind must be" in done.stderr and "'fulll'" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing written, nothing run
