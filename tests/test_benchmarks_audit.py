"""The benchmark scripts' timing and ratio arithmetic, audited against a clock driven by the test:
every timed call advances it by seconds written here, so each median, pair, ratio, "met" and
extrapolation below is worked out by hand from those seconds (the scripts' goals reach the README
through these lines: a ratio inverted or a "met" for a missed goal would be a false claim there).

``benchmarks/_common.py`` (medians after a warm-up, calls in turn, waiting for a GPU, the data),
the printed lines of ``benchmarks/tracking_overhead.py`` (its training, attacks and kernels
replaced by calls that only move the clock) and of ``benchmarks/paper_scale.py`` (its commands
replaced by the records they would write)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_paper_scale import ROOT
from test_progress_audit import Clock

BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _module(name: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A benchmark script of this checkout, imported as when it runs (its folder on ``sys.path``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    assert Path(module.__file__).parent == BENCHMARKS  # this checkout's, not another's
    return module


def _clocked(module, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """``module``'s ``time.perf_counter`` is the test's clock (nothing else's is)."""
    monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=clock))


def _taking(clock: Clock, seconds: list[float], calls: list[str] | None = None, name: str = ""):  # type: ignore[no-untyped-def]
    """A call that moves the clock by the next of ``seconds`` (and logs ``name`` into ``calls``)."""

    def call() -> float:
        if calls is not None:
            calls.append(name)
        clock.now += seconds.pop(0)
        return clock.now

    return call


@pytest.fixture
def common(clock: Clock, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    module = _module("_common", monkeypatch)
    _clocked(module, clock, monkeypatch)
    return module


# ---- _common: medians, pairs, waiting, data ----------------------------------------------------


def test_the_median_leaves_the_warm_up_call_out(clock, common):
    """Calls of 100 (the warm-up), 4, 1, 2 s: the median of 4, 1, 2 is 2 (with the warm-up 3, the
    mean 7/3); every call made, no more."""
    seconds = [100.0, 4.0, 1.0, 2.0]
    assert common.median_seconds(_taking(clock, seconds), 3) == 2.0
    assert seconds == []


def test_the_median_of_an_even_count_is_the_middle_two_halved(clock, common):
    """4, 1, 2, 8 s after the warm-up: (2 + 4) / 2 = 3, not the lower (2) or the upper (4) middle."""
    seconds = [100.0, 4.0, 1.0, 2.0, 8.0]
    assert common.median_seconds(_taking(clock, seconds), 4) == 3.0
    assert seconds == []


def test_the_median_of_one_call_is_that_call(clock, common):
    seconds = [100.0, 0.25]
    assert common.median_seconds(_taking(clock, seconds), 1) == 0.25
    assert seconds == []


def test_pairs_are_the_two_calls_in_turn_each_timed_alone(clock, common):
    """first 10 s / second 20 s to warm up, then 1 / 3 s and 2 / 4 s: pairs (1, 3), (2, 4) in that
    order, the calls alternating (first, second, first, ...), the warm-ups in no pair."""
    calls: list[str] = []
    first = _taking(clock, [10.0, 1.0, 2.0], calls, "first")
    second = _taking(clock, [20.0, 3.0, 4.0], calls, "second")
    assert common.paired_seconds(first, second, 2) == [(1.0, 3.0), (2.0, 4.0)]
    assert calls == ["first", "second"] * 3


def test_a_gpu_call_returns_after_the_device_has_finished(common, monkeypatch):
    """``until_done``: the call, then ``torch.cuda.synchronize`` of its device, then its result; a
    CPU device synchronizes nothing."""
    import torch

    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: calls.append(("synchronize", device)))
    gpu = SimpleNamespace(type="cuda")

    def work() -> str:
        calls.append("work")
        return "result"

    assert common.until_done(work, gpu)() == "result"
    assert calls == ["work", ("synchronize", gpu)]
    calls.clear()
    assert common.until_done(work, torch.device("cpu"))() == "result"
    assert calls == ["work"]


def test_the_command_runs_under_torchrun_on_more_than_one_process(common):
    assert common.ntkrobust_command(1) == [sys.executable, "-m", "ntkrobust"]
    assert common.ntkrobust_command(2) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "ntkrobust",
    ]  # fmt: skip


def test_without_mnist_the_data_are_seeded_balanced_noise_images(common, tmp_path):
    """30 training and 20 test images of MNIST's shape in [0, 1), classes 0-9 three and two times
    each, no test image among the training images; the same seed the same images, another not."""
    x_train, y_train, x_test, y_test, source = common.load_mnist(tmp_path / "absent", 30, 20, seed=3)
    assert x_train.shape == (30, 1, 28, 28) and x_test.shape == (20, 1, 28, 28)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert 0 <= min(x_train.min(), x_test.min()) and max(x_train.max(), x_test.max()) < 1
    assert np.bincount(y_train, minlength=10).tolist() == [3] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [2] * 10
    assert not any(np.array_equal(image, other) for image in x_test for other in x_train)
    again = common.load_mnist(tmp_path / "absent", 30, 20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again[:4], (x_train, y_train, x_test, y_test), strict=True))
    assert not np.array_equal(common.load_mnist(tmp_path / "absent", 30, 20, seed=4)[0], x_train)
    assert source == "synthetic uniform 28x28 images"


def test_with_mnist_the_data_are_cut_from_its_test_set(common, tmp_path, monkeypatch):
    """The folder, sizes and seed asked for reach ``load_dataset``, from the test split."""
    import ntkrobust.bridge.data

    asked: list[tuple] = []

    def load_dataset(name, **options):  # type: ignore[no-untyped-def]
        asked.append((name, options))
        return SimpleNamespace(x_train="xa", y_train="ya", x_test="xb", y_test="yb")

    monkeypatch.setattr(ntkrobust.bridge.data, "load_dataset", load_dataset)
    assert common.load_mnist(tmp_path, 30, 20, seed=3) == ("xa", "ya", "xb", "yb", f"real MNIST from {tmp_path}")
    assert asked == [("mnist", {"root": tmp_path, "from_test_split": True, "n_train": 30, "n_test": 20, "seed": 3})]


# ---- tracking_overhead.py: its printed lines from a clock moved by hand -----------------------

#: seconds of each call of the script, in the order it makes them (the first of each timing a warm-up)
STANDARD_EPOCHS = [
    *[100.0, 40.0, 10.0, 20.0],  # median_seconds: median 20 (mean 70/3; with the warm-up 30)
    *[100.0, 2.0, 4.0, 8.0],  # paired with the full kernel's points
    *[100.0, 2.0, 2.0, 2.0],  # ... class-blocks'
    *[100.0, 4.0, 1.0, 2.0],  # ... rademacher:2's
    *[100.0, 1.0, 2.0, 1.0],  # ... rademacher:1's
]
PGD_EPOCHS = [200.0, 300.0]  # --pgd-epochs 2, no warm-up: 250 a PGD-AT epoch
TRACKING = {
    # (kind, whether the probe is attacked): a standalone point, median 4
    ("class-blocks", True): [500.0, 5.0, 4.0, 2.0],
    # shared points: the class blocks' median 3 (mean 10/3), then paired; the other kinds paired
    ("class-blocks", False): [500.0, 3.0, 2.0, 5.0, 200.0, 2.0, 1.0, 4.0],
    ("full", False): [200.0, 3.0, 2.0, 4.0],
    ("rademacher:2", False): [200.0, 1.0, 2.0, 1.0],
    ("rademacher:1", False): [200.0, 3.0, 4.0, 2.0],
}
#: the evaluation: 1 s of clean accuracy plus the attack's seconds. PGD-40 first makes the probe's
#: examples once, untimed (1000 s), then 50 (warm-up), 7, 5, 6: medians 7 and (PGD-10) 4
CLEAN = [1.0] * 8
PGD_40 = [1000.0, 50.0, 7.0, 5.0, 6.0]
PGD_10 = [30.0, 2.0, 4.0, 3.0]

#: what it prints after its data line, worked out by hand from the seconds above. Pairs of epochs
#: and points: full (2, 3) (4, 2) (8, 4): ratios 1.5, 0.5, 0.5, median 0.5 (not the medians' ratio
#: 3 / 4); class-blocks (2, 2) (2, 1) (2, 4): 1, 0.5, 2, median exactly 1.0: met; rademacher:2
#: (4, 1) (1, 2) (2, 1): 0.25, 2, 0.5; rademacher:1 (1, 3) (2, 4) (1, 2): 3, 2, 2: not met. Shares
#: on 6,000 images (full MNIST 10x as many): 4 / 20 = 0.2 (not met), 4 / 250, 3 / 20 = 0.15
#: (exactly the goal: met), 3 / 250.
TRACKING_LINES = """\
epoch, standard training:    20.00 s
epoch, PGD-40 AT:           250.00 s
one tracking point:           4.00 s  standalone (PGD-40 of the probe + C-NTK + AE-NTK + metrics)
one tracking point:           3.00 s  shared (evaluation's PGD examples; C-NTK, AE-NTK, metrics)
evaluation, PGD-40:           7.00 s  (clean on all, PGD-40 on 10; one split)
evaluation, PGD-10:           4.00 s  (train's per-epoch default; the same points)
per-epoch evaluation, PGD-10 / PGD-40: 0.571; PGD-10 evaluation of both splits / standard epoch 0.40, \
/ PGD-40 AT epoch 0.032
tracking point, full         :    3.00 s =  0.50 standard epochs (pairs 0.50-1.50; goal <= 1.0: met), \
1.50 of class-blocks
tracking point, class-blocks :    2.00 s =  1.00 standard epochs (pairs 0.50-2.00; goal <= 1.0: met), \
1.00 of class-blocks
tracking point, rademacher:2 :    1.00 s =  0.50 standard epochs (pairs 0.25-2.00; goal <= 1.0: met), \
0.50 of class-blocks
tracking point, rademacher:1 :    3.00 s =  2.00 standard epochs (pairs 2.00-3.00; goal <= 1.0: NOT met), \
1.50 of class-blocks
standalone tracking / standard epoch:  0.200  (goal <= 0.15: NOT met); extrapolated to full MNIST \
(60k, epochs 10x longer) 0.020
standalone tracking / PGD-AT epoch:  0.016  (goal <= 0.15: met); extrapolated to full MNIST \
(60k, epochs 10x longer) 0.002
shared tracking / standard epoch:  0.150  (goal <= 0.15: met); extrapolated to full MNIST \
(60k, epochs 10x longer) 0.015
shared tracking / PGD-AT epoch:  0.012  (goal <= 0.15: met); extrapolated to full MNIST \
(60k, epochs 10x longer) 0.001
"""


def _tracking_overhead(seconds: dict, repeats: int, clock: Clock, monkeypatch, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """What the script prints after its data line, on its own model and data (6,000 noise images,
    a probe of 10) with its training, attacks and tracking points replaced by calls that move the
    clock by ``seconds`` (each call the next of its key's; every one of them used, no more)."""
    from ntkrobust.bridge import tracking, training

    script = _module("tracking_overhead", monkeypatch)
    for module in (script, _module("_common", monkeypatch)):  # its own timing and its medians and pairs
        _clocked(module, clock, monkeypatch)
    attacks = {"PGD-40": script.MNIST_PGD, "PGD-10": script.EPOCH_PGD}
    queues = {attacks.get(key, key): list(taken) for key, taken in seconds.items()}

    def take(key) -> None:  # type: ignore[no-untyped-def]
        clock.now += queues[key].pop(0)

    def train_epoch(model, optimizer, x, y, config, epoch):  # type: ignore[no-untyped-def]
        take(config.mode)

    def track(self, model, kernel_network=None, *, x_adv=None, progress=False):  # type: ignore[no-untyped-def]
        take((self.kind, x_adv is None))

    def pgd_accuracy(model, x, y, attack, **options):  # type: ignore[no-untyped-def]
        take(attack)
        return 0.0, x

    monkeypatch.setattr(training, "train_epoch", train_epoch)
    monkeypatch.setattr(tracking.KernelTracker, "track", track)
    monkeypatch.setattr(tracking, "pgd_accuracy", pgd_accuracy)
    monkeypatch.setattr(tracking, "clean_accuracy", lambda *args, **options: take("clean"))
    flags = ["--mnist", str(tmp_path / "absent"), "--n-train", "6000", "--probe", "10", "--eval-n", "10"]
    flags += ["--repeats", str(repeats), "--pgd-epochs", str(len(seconds["pgd"])), "--device", "cpu"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert script.main(flags) == 0
    assert all(left == [] for left in queues.values()), queues
    return printed.getvalue().split("\n", 1)[1]


def test_tracking_overhead_prints_the_ratios_of_the_seconds_it_timed(clock, monkeypatch, tmp_path):
    """Every printed figure the one worked out by hand from the seconds above (3 repeats)."""
    seconds = {"standard": STANDARD_EPOCHS, "pgd": PGD_EPOCHS, "clean": CLEAN, "PGD-40": PGD_40, "PGD-10": PGD_10}
    assert _tracking_overhead(seconds | TRACKING, 3, clock, monkeypatch, tmp_path) == TRACKING_LINES


def test_an_even_number_of_pairs_has_the_middle_two_ratios_halved(clock, monkeypatch, tmp_path):
    """2 pairs per kind: full (2, 3) (4, 2): ratios 1.5 and 0.5, median 1.0 (met; the upper middle
    1.5 would not be), points 3 and 2 s: 2.5 s; class-blocks (1, 1) (2, 3): 1 and 1.5, 1.25 (not
    met), 2 s; rademacher:2 (4, 1) (4, 3): 0.25 and 0.75, 0.5, 2 s; rademacher:1 (256, 128)
    (256, 386): 0.5 and 1.5078125, 1.00390625 (not met: printed 1.004, where two decimals would
    read 1.00), 257 s. A standard epoch 10 and 30 s after the warm-up: 20 s; a shared point
    2.0078125 and 4 s: 3.00390625, 0.1502 of it (not met: printed 0.1502, not 0.150)."""
    seconds = {
        "standard": [
            *[100.0, 10.0, 30.0],  # median_seconds, then paired with full, class-blocks, rademacher:2 and :1
            *[100.0, 2.0, 4.0], *[100.0, 1.0, 2.0], *[100.0, 4.0, 4.0], *[100.0, 256.0, 256.0],
        ],
        "pgd": [250.0],
        "clean": [1.0] * 6,
        "PGD-40": [1000.0, 50.0, 7.0, 5.0],
        "PGD-10": [30.0, 2.0, 4.0],
        ("class-blocks", True): [500.0, 5.0, 3.0],
        ("class-blocks", False): [500.0, 2.0078125, 4.0, 200.0, 1.0, 3.0],
        ("full", False): [200.0, 3.0, 2.0],
        ("rademacher:2", False): [200.0, 1.0, 3.0],
        ("rademacher:1", False): [200.0, 128.0, 386.0],
    }  # fmt: skip
    printed = _tracking_overhead(seconds, 2, clock, monkeypatch, tmp_path).splitlines()
    assert printed[0] == "epoch, standard training:    20.00 s"
    assert [line for line in printed if line.startswith("tracking point")] == [
        "tracking point, full         :    2.50 s =  1.00 standard epochs (pairs 0.50-1.50; goal <= 1.0: met), "
        "1.25 of class-blocks",
        "tracking point, class-blocks :    2.00 s =  1.25 standard epochs (pairs 1.00-1.50; goal <= 1.0: NOT met), "
        "1.00 of class-blocks",
        "tracking point, rademacher:2 :    2.00 s =  0.50 standard epochs (pairs 0.25-0.75; goal <= 1.0: met), "
        "1.00 of class-blocks",
        "tracking point, rademacher:1 :  257.00 s = 1.004 standard epochs (pairs 0.50-1.51; goal <= 1.0: NOT met), "
        "128.50 of class-blocks",
    ]
    full_mnist = "; extrapolated to full MNIST (60k, epochs 10x longer)"
    assert printed[-4:] == [
        f"standalone tracking / standard epoch:  0.200  (goal <= 0.15: NOT met){full_mnist} 0.020",
        f"standalone tracking / PGD-AT epoch:  0.016  (goal <= 0.15: met){full_mnist} 0.002",
        f"shared tracking / standard epoch: 0.1502  (goal <= 0.15: NOT met){full_mnist} 0.015",
        f"shared tracking / PGD-AT epoch:  0.012  (goal <= 0.15: met){full_mnist} 0.001",
    ]


# ---- paper_scale.py: its table from the records of its commands --------------------------------


def _history(n_train: int, seconds: dict, gpu: dict | None) -> dict:
    return {
        "dataset": {"n_train": n_train},
        "epochs": [
            {"seconds": {"train": 99.0, "track": 99.0, "evaluate": 99.0}, "accuracy": {}},  # the warm-up epoch
            {"seconds": seconds, "accuracy": {"test_clean": 0.5}},
        ],
        "peak_gpu_memory_mib": 2048.0 if gpu else None,
        "gpu": gpu,
    }


def test_paper_scale_prints_hours_and_kernel_ratios_from_its_records(monkeypatch, capsys, tmp_path):
    """PGD-AT: 5,000 images in 10 s, a tracking point 36 s, evaluation 18 s: an epoch of 50,000
    images 100 s, 200 of them 20000 s = 5.56 h, 201 points 7236 s = 2.01 h, evaluation 3600 s =
    1 h, 8.57 h in all, a point 0.36 of an epoch. Standard: 2,500 images in 1.25 s (25 s on 50,000,
    1.39 h), points 8 s (201 of them 0.45 h), evaluation 0 s: 1.84 h; a point 0.32 of an epoch. Kernels: full 8 s,
    class-blocks 2 s (0.25 of full), rademacher:2 1 s (0.125, printed 0.12 as Python rounds it)."""
    script = _module("paper_scale", monkeypatch)
    gpu = {"name": "Fake GPU", "tf32_convolutions": False}  # the first run's record has none: the second's named
    records = {
        "train-pgd": _history(5000, {"train": 10.0, "track": 36.0, "evaluate": 18.0}, None),
        "train-standard": _history(2500, {"train": 1.25, "track": 8.0, "evaluate": 0.0}, gpu),
        "entk-full": {"seconds": {"kernel": 8.0}, "peak_gpu_memory_mib": 1024.0},
        "entk-class-blocks": {"seconds": {"kernel": 2.0}, "peak_gpu_memory_mib": None},
        "entk-rademacher2": {"seconds": {"kernel": 1.0}, "peak_gpu_memory_mib": 512.0},
    }
    monkeypatch.setattr(script, "_ntkrobust", lambda args, out, processes: records[out.name])
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["paper_scale.py", "--points", "20", "--out", str(out)])
    script.main()
    assert capsys.readouterr().out == (
        "ResNet-18 on Fake GPU (TF32 convolutions False), 20 kernel points\n"
        "  train pgd       last epoch on 5000 images: 10.0 s training, 36.0 s tracking, 18.0 s evaluation; "
        "peak GPU memory -\n"
        "    at 200 epochs of 50,000 images: 8.57 hours (training 5.56, tracking 2.01, evaluation 1.00); "
        "a tracking point = 0.36 of an epoch\n"
        "    a training epoch of 50,000 images: 100.0 s (RAT on an RTX 3090: 90 s)\n"
        "  train standard  last epoch on 2500 images: 1.2 s training, 8.0 s tracking, 0.0 s evaluation; "
        "peak GPU memory 2,048 MiB\n"
        "    at 200 epochs of 50,000 images: 1.84 hours (training 1.39, tracking 0.45, evaluation 0.00); "
        "a tracking point = 0.32 of an epoch\n"
        "    a training epoch of 50,000 images: 25.0 s (RAT on an RTX 3090: 25 s)\n"
        "  entk full                8.0 s  (1.00 of full)   peak GPU memory 1,024 MiB\n"
        "  entk class-blocks        2.0 s  (0.25 of full)   peak GPU memory -\n"
        "  entk rademacher:2        1.0 s  (0.12 of full)   peak GPU memory 512 MiB\n"
        f"-> {out / 'paper_scale.json'}\n"
    )
    written = json.loads((out / "paper_scale.json").read_text())
    assert written["kernels"]["class-blocks"]["seconds"] == 2.0
    assert written["training"]["pgd"]["paper_hours_total"] == pytest.approx((20000 + 7236 + 3600) / 3600)


def test_paper_scale_without_a_full_kernel_prints_no_ratio(monkeypatch, capsys, tmp_path):
    script = _module("paper_scale", monkeypatch)
    history = _history(5000, {"train": 10.0, "track": 36.0, "evaluate": 18.0}, None)
    records = {"train-pgd": history, "train-standard": history}
    records["entk-class-blocks"] = {"seconds": {"kernel": 2.0}, "peak_gpu_memory_mib": None}
    monkeypatch.setattr(script, "_ntkrobust", lambda args, out, processes: records[out.name])
    flags = ["--kinds", "class-blocks", "--device", "cpu", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", ["paper_scale.py", *flags])
    script.main()
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "ResNet-18 on cpu, 500 kernel points"
    assert printed[-2] == "  entk class-blocks        2.0 s                   peak GPU memory -"


def test_paper_scale_reads_the_record_its_command_writes(monkeypatch, tmp_path):
    """``entk`` writes ``metrics.json``, ``train`` ``history.json``: each command's own is read."""
    script = _module("paper_scale", monkeypatch)
    ran: list[list[str]] = []

    def run(command, stdout):  # type: ignore[no-untyped-def]
        ran.append(command)
        folder = Path(command[command.index("--out") + 1])
        folder.mkdir()
        (folder / "metrics.json").write_text('{"from": "metrics"}')
        (folder / "history.json").write_text('{"from": "history"}')
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(script.subprocess, "run", run)
    assert script._ntkrobust(["entk", "--kind", "full"], tmp_path / "a", 1) == {"from": "metrics"}
    assert script._ntkrobust(["train", "--epochs", "2"], tmp_path / "b", 2) == {"from": "history"}
    entk = ["entk", "--kind", "full", "--out", str(tmp_path / "a"), "--force"]
    assert ran[0] == [sys.executable, "-m", "ntkrobust", *entk]
    assert ran[1][1:5] == ["-m", "torch.distributed.run", "--nproc-per-node", "2"]


@pytest.mark.parametrize(
    ("value", "goal", "at_most", "digits", "expected"),
    [
        (0.85, 1.0, True, 2, ("0.85", "met")),
        (1.0, 1.0, True, 2, ("1.00", "met")),  # on the goal: met, as printed
        (1.004, 1.0, True, 2, ("1.004", "NOT met")),  # "1.00 ... NOT met" before
        (1.00001, 1.0, True, 2, ("1.00001", "NOT met")),
        (1.0 + 1e-12, 1.0, True, 2, ("1.00000000", "NOT met")),  # at most 6 more decimals
        (19.96, 20.0, False, 1, ("19.96", "NOT met")),  # at least: "20.0x ... NOT met" before
        (20.04, 20.0, False, 1, ("20.0", "met")),  # rounded onto the goal from its side: as it was
        (0.1502, 0.15, True, 3, ("0.1502", "NOT met")),
        (float("nan"), 1.0, True, 2, ("nan", "NOT met")),
    ],
)
def test_a_printed_ratio_agrees_with_its_verdict(value, goal, at_most, digits, expected, monkeypatch):
    """``against_goal`` decides on the unrounded value and prints as many decimals as it takes for
    the printed number to sit on the same side of the goal as its verdict."""
    against_goal = _module("_common", monkeypatch).against_goal
    assert against_goal(value, goal, at_most=at_most, digits=digits) == expected
    assert against_goal(value, goal, at_most=at_most, digits=digits, width=9)[0] == expected[0].rjust(9)
