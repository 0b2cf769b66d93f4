"""One end-to-end run per command through ``cli.main(argv)``, as small as it gets: the files it
writes, its output (the study's summary of what it saved, then ``-> OUT``), warnings on stderr and
the argv in the record. What the numbers mean is tested on the studies (``tests/studies``)."""

from __future__ import annotations

import json
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import numpy as np
import pytest

from ntkrobust import cli
from ntkrobust.studies.entk import EntkResult
from ntkrobust.studies.features import FeaturesResult
from ntkrobust.studies.train import TrainResult
from ntkrobust.studies.transfer import TransferResult
from ntkrobust.studies.two_layer import TwoLayerResult

TASK = ["--classes", "3,8", "--n-train", "60", "--n-test", "40"]


def assert_printed(stdout: str, summary: str, out) -> None:
    """The CLI's output: the summary, then the output path (on a line of its own after several)."""
    assert stdout == (f"{summary}\n-> {out}\n" if "\n" in summary else f"{summary} -> {out}\n")


def results(path):
    return json.loads(path.read_text())


def test_attack(tmp_path, run_cli):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    argv = ["attack", "--n-train", "150", "--n-test", "40", "--method", "pgd", "--steps", "2", "--eps", "8/255"]
    argv += ["--force", "--out", str(out)]
    code, stdout, stderr = run_cli(argv)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["adversarial.npz", "old.txt", "results.json"]
    record = results(out / "results.json")
    assert record["config"]["eps"] == pytest.approx(8 / 255) and record["argv"] == argv
    ours = [line for line in stderr.splitlines() if line.startswith("ntkrobust: warning:")]  # not the stage lines
    assert "ntkrobust: data: digits, 150 train, 40 test (" in stderr  # a line per stage: stderr is no terminal
    assert ours == [f"ntkrobust: warning: {note}" for note in record["warnings"]]  # said as found, and recorded
    assert "PGD can move at most" in ours[0] and "raise --steps or --step" in ours[0]
    assert "eps 8/255 on grey-scale images is a colour-image radius" in ours[1]
    summary = (
        f"fc2 NTK machine on digits (150 train, 40 test): clean accuracy {record['clean_accuracy']:.3f}, "
        f"pgd linf eps=8/255: robust accuracy {record['robust_accuracy']:.3f}"
    )
    assert_printed(stdout, summary, out)
    assert not list(tmp_path.glob(".*partial"))


def test_features(tmp_path, run_cli):
    out = tmp_path / "features"
    argv = ["features", *TASK[:2], "--n-train", "40", "--n-test", "20", "--n-features", "5", "--eps", "0.1"]
    code, stdout, stderr = run_cli([*argv, "--robust-r", "none", "--out", out])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "feature_gallery.png",
        "features.csv",
        "results.json",
        "robustness_usefulness.png",
        "useful_non_robust.png",
    ]
    assert len((out / "features.csv").read_text().splitlines()) == 1 + 5
    record = results(out / "results.json")
    assert_printed(stdout, FeaturesResult(record, tables={}, figures={}).summary(), out)
    assert stdout.startswith("fc2: Spearman")


def test_entk(tmp_path, run_cli):
    out = tmp_path / "entk"
    code, stdout, stderr = run_cli(["entk", "--model", "fc1", "--width", "8", "--n", "10", "--out", out])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["kernel.npz", "kernel.png", "metrics.json"]
    with np.load(out / "kernel.npz") as arrays:
        assert arrays["kernel"].shape == (10, 10)
    record = results(out / "metrics.json")
    assert_printed(stdout, EntkResult(record, arrays={}, picture={}).summary(), out)
    assert stdout.startswith("trace C-NTK of fc1 (")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``ntkrobust train``: fc1 of width 16, two epochs on digits 3 vs 8 with kernels tracked on
    10 points: (argv, exit status, stdout, stderr)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", *TASK, "--model", "fc1", "--width", "16", "--epochs", "2", "--lr", "0.1", "--batch-size", "30"]
    argv += ["--eps", "0.1", "--pgd-steps", "1", "--eval-pgd-steps", "1", "--track-kernel", "10", "--eval-n", "10"]
    argv += ["--out", str(out)]
    stdout, stderr = StringIO(), StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = cli.main(argv)
    return argv, code, stdout.getvalue(), stderr.getvalue()


def test_train(trained):
    argv, code, stdout, stderr = trained
    assert code == 0, stderr
    out = cli.build_parser().parse_args(argv).out
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "history.json", "kernels"]
    assert len(list((out / "checkpoints").glob("epoch_*.pt"))) == 3
    history = results(out / "history.json")
    assert history["argv"] == argv and history["label"] == "fc1 standard"
    assert_printed(stdout, TrainResult(history, out=out, label=history["label"]).summary(), out)
    assert stdout.startswith("fc1 standard: 2 epochs")
    # stderr is not a terminal here (as under nohup or CI): a plain line per epoch
    prefixes = ("ntkrobust: initialisation:", "ntkrobust: epoch")
    epochs = [line for line in stderr.splitlines() if line.startswith(prefixes)]
    assert [line.split(":")[1].strip() for line in epochs] == ["initialisation", "epoch 1/2", "epoch 2/2"]
    assert all("test clean" in line and "s training" in line for line in epochs)


def test_quiet_silences_the_stage_lines(tmp_path, run_cli):
    argv = ["attack", "--n-train", "60", "--n-test", "20", "--quiet", "--out", tmp_path / "out"]
    code, _, stderr = run_cli(argv)
    assert code == 0 and "ntkrobust: data:" not in stderr
    code, _, stderr = run_cli([*argv[:-3], "--out", tmp_path / "loud"])
    assert code == 0 and "ntkrobust: data: digits, 60 train, 20 test" in stderr


def test_dynamics(trained, tmp_path, run_cli):
    run = cli.build_parser().parse_args(trained[0]).out
    out = tmp_path / "dynamics"
    code, stdout, stderr = run_cli(["dynamics", run, "--eigenvectors", "0", "--out", out])
    assert code == 0, stderr
    figures = sorted(results(out / "results.json")["figures"].values())
    assert "eigenvectors.png" not in figures and "kernel_images.png" in figures
    assert sorted(p.name for p in out.iterdir()) == sorted([*figures, "results.json"])
    assert_printed(stdout, f"1 run(s): {', '.join(figures)}", out)


def test_two_layer(tmp_path, run_cli):
    out = tmp_path / "two-layer"
    argv = ["two-layer", *TASK[:2], "--n-train", "30", "--n-test", "20", "--width", "20", "--width", "30"]
    code, stdout, stderr = run_cli([*argv, "--epochs", "3", "--out", out])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "gradients.npz",
        "gradients.png",
        "net_w20_s0.pt",
        "net_w30_s0.pt",
        "results.json",
        "two_layer.png",
    ]
    record = results(out / "results.json")
    assert record["config"]["widths"] == [20, 30]
    summary = TwoLayerResult(record, experiment=None, figures={}).summary()
    assert len(summary.splitlines()) == 2  # one line per net, then the path on its own line
    assert_printed(stdout, summary, out)


def test_transfer(trained, tmp_path, run_cli):
    checkpoints = cli.build_parser().parse_args(trained[0]).out / "checkpoints"
    out = tmp_path / "transfer"
    argv = ["transfer", *TASK, "--kernel-arch", "fc1", "--target", checkpoints / "epoch_002.pt"]
    argv += ["--source", checkpoints / "epoch_000.pt", "--source", checkpoints / "epoch_001.pt", "--out", out]
    code, stdout, stderr = run_cli(argv)
    assert code == 0, stderr
    names = ["examples.npz", "results.json", "transfer.png", "transferability.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    record = results(out / "results.json")
    assert_printed(stdout, TransferResult(record, arrays={}, figures={}).summary(), out)
    assert stdout.startswith("run epoch 2: clean")


def test_torch_half_runs_without_jax(trained, tmp_path):
    """entk, train, transfer with an eNTK surrogate, evaluate and dynamics (the eigenvector
    pictures of the train run made here) import nothing of the analytic half: a GPU image with
    torch alone runs them (``benchmarks/gpu_smoke.sh`` counts on it). Here JAX, neural-tangents
    and TensorFlow are packages that raise ImportError when imported."""
    import os
    import subprocess
    import sys

    blocked = tmp_path / "blocked"
    for name in ("jax", "jaxlib", "neural_tangents", "tensorflow"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    target = cli.build_parser().parse_args(trained[0]).out / "checkpoints" / "epoch_002.pt"
    attack = ["--pgd-steps", "1", "--eps", "0.1", "--eval-pgd-steps", "1", "--eval-n", "10"]
    argvs = [
        ["entk", *TASK, "--model", "fc1", "--width", "16", "--points", "12", "--kind", "class-blocks"],
        ["train", *TASK, "--model", "fc1", "--width", "16", "--epochs", "1", *attack, "--track-kernel", "10"],
        ["transfer", *TASK, "--surrogate", "fc1:16", "--surrogate-n", "20", "--target", str(target)],
        ["evaluate", str(target), *TASK, "--eps", "0.1", "--attacks", "pgd-20", "--n-test", "20"],
        ["dynamics", str(tmp_path / "train"), "--eigenvectors", "1", "--eigenvector-steps", "5"],
    ]
    argvs = [[*argv, "--quiet", "--out", str(tmp_path / argv[0])] for argv in argvs]
    code = f"from ntkrobust import cli\nfor argv in {argvs!r}:\n    assert cli.main(argv) == 0, argv\n"
    records = ["entk/metrics.json", "train/history.json", "transfer/results.json", "evaluate/results.json"]
    records.append("dynamics/eigenvectors.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [record for record in records if not (tmp_path / record).is_file()] == []


def test_make_npz(tmp_path, run_cli):
    from ntkrobust.bridge.data import load_dataset

    npz = tmp_path / "digits38.npz"
    code, stdout, stderr = run_cli(["make-npz", "--classes", "3,8", "--n-train", "60", "--out", npz])
    assert code == 0, stderr
    assert [p.name for p in tmp_path.iterdir()] == ["digits38.npz"]
    data = load_dataset(str(npz))
    assert data.x_train.shape[0] == 60 and list(data.classes) == [3, 8]
    assert_printed(stdout, f"digits: 60 train, {data.x_test.shape[0]} test, classes [3, 8]", npz)


def test_features_prints_its_warnings(tmp_path, run_cli):
    """A singular Gram (duplicated training images) is said on stderr, as attack says it."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.images * 16).astype(np.uint8)[:60], digits.target[:60] % 2
    data = tmp_path / "duplicated.npz"
    np.savez(data, x_train=np.concatenate([x[:30], x[:30]]), y_train=np.tile(y[:30], 2), x_test=x[30:], y_test=y[30:])
    argv = ["features", "--data", data, "--n-features", "5", "--robust-r", "none", "--no-cache", "--quiet"]
    code, _, stderr = run_cli([*argv, "--out", tmp_path / "out"])
    assert code == 0, stderr
    assert "ntkrobust: warning: fc2: Gram matrix is numerically singular" in stderr


@pytest.mark.parametrize("command", ["train", "two-layer"])
def test_a_diverging_run_is_one_line(tmp_path, run_cli, command):
    """A learning rate that makes the loss overflow ends the run with one line and status 2, not
    a traceback; train keeps its finished epochs (only the initialisation's: the net's outputs
    are inf after the first epoch's last update, though its loss was finite), two-layer writes
    nothing."""
    out = tmp_path / command
    argv = [command, *TASK, "--lr", "1e30", "--epochs", "2", "--out", out, "--quiet"]
    argv += ["--width", "16", "--track-kernel", "0", "--eval-n", "20"] if command == "train" else ["--width", "20"]
    code, stdout, stderr = run_cli(argv)
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1 and "diverged" in stderr, stderr
    assert ("try a smaller --lr" if command == "train" else "learning rate 1e+30 too large") in stderr
    if command == "train":
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch_000.pt"]
    else:
        assert not out.exists()
