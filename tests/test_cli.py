"""The command line without the compute: flags -> settings (``cli.settings_from``), bad input as
one line with exit status 2, the output checks made before a study runs, and ``--help``.

One end-to-end run per command is in ``test_cli_runs.py``; what the studies compute, and every
setting they refuse, is tested on ``run(settings)`` in ``tests/studies``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ntkrobust import cli
from ntkrobust.reproduce import ReproduceSettings
from ntkrobust.studies import DataSettings, MachineSettings, ThreatSettings
from ntkrobust.studies.attack import AttackSettings
from ntkrobust.studies.dynamics import DynamicsSettings
from ntkrobust.studies.entk import EntkSettings
from ntkrobust.studies.evaluate import EvaluateSettings
from ntkrobust.studies.features import FeaturesSettings
from ntkrobust.studies.make_npz import MakeNpzSettings
from ntkrobust.studies.train import TrainSettings
from ntkrobust.studies.transfer import TransferSettings
from ntkrobust.studies.two_layer import TwoLayerSettings


def settings(argv: list[object]):
    """The settings ``ntkrobust ARGV --out o`` hands to its study."""
    args = cli.build_parser().parse_args([*map(str, argv), "--out", "o"])
    module, name, _ = cli.COMMANDS[args.command]
    module = module if "." in module else f"ntkrobust.studies.{module}"
    return cli.settings_from(getattr(importlib.import_module(module), name), args)


# -- flags -> settings ---------------------------------------------------------------------------

#: command -> (its required flags, the settings they give: every other field at its default)
MINIMAL = {
    "attack": ([], AttackSettings()),
    "features": ([], FeaturesSettings()),
    "entk": ([], EntkSettings()),
    "train": ([], TrainSettings(out=Path("o"))),
    "dynamics": (["r"], DynamicsSettings(runs=(Path("r"),))),
    "two-layer": ([], TwoLayerSettings()),
    "transfer": (["--target", "t.pt"], TransferSettings(target=("t.pt",))),
    "make-npz": ([], MakeNpzSettings()),
    "evaluate": (["n.pt"], EvaluateSettings(nets=("n.pt",))),
    "reproduce": (["tk"], ReproduceSettings(target="tk", out=Path("o"))),
}


def test_every_command_runs_a_study():
    assert set(MINIMAL) == set(cli.COMMANDS)


@pytest.mark.parametrize("command", list(MINIMAL))
def test_unset_flags_keep_the_settings_defaults(command):
    flags, expected = MINIMAL[command]
    assert settings([command, *flags]) == expected


@dataclass(frozen=True)
class Inner:
    flag: bool = True
    n: int = 3


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    items: tuple[str, ...] = ()
    name: str = "x"
    absent: int = 7


def test_settings_from_nests_negates_keeps_defaults_and_makes_tuples():
    args = argparse.Namespace(no_flag=True, n=None, items=["a", "b"], name="y", unrelated=1)
    assert cli.settings_from(Outer, args) == Outer(Inner(flag=False, n=3), ("a", "b"), "y", 7)


def test_data_machine_and_threat_flags_fill_the_shared_groups():
    argv = ["attack", "--data", "d.npz", "--data-root", "root", "--download", "--from-test-split"]
    argv += ["--classes", "3, 8", "--n-train", "50", "--n-test", "20", "--seed", "4", "--arch", "two-layer"]
    argv += ["--time", "inf", "--ridge", "1e-3", "--learning-rate", "0.5", "--gradient", "closed-form"]
    argv += ["--precision", "float32", "--cache-dir", "cache", "--no-cache", "--method", "pgd", "--norm", "l2"]
    argv += ["--eps", "8/255", "--step", "0.5", "--steps", "7", "--no-random-start"]
    assert settings(argv) == AttackSettings(
        data=DataSettings("d.npz", Path("root"), True, True, ("3", "8"), 50, 20, 4),
        arch="two-layer",
        machine=MachineSettings(math.inf, 1e-3, 0.5, "closed-form", "float32", Path("cache"), cache=False),
        method="pgd",
        threat=ThreatSettings("l2", 8 / 255, 0.5, 7, random_start=False),
    )


def test_repeated_and_list_flags_become_tuples():
    features = settings(["features", "--arch", "fc2", "--arch", "two-layer", "--robust-r", "1,5,all"])
    assert features.arch == ("fc2", "two-layer") and features.robust_r == (1, 5, -1)
    assert settings(["features", "--robust-r", "none", "--feature-attack", "pgd"]).robust_r == ()
    assert settings(["two-layer", "--width", "10", "--width", "20", "--nets", "2"]).width == (10, 20)
    argv = ["transfer", "--target", "a.pt", "--target", "b.pt", "--source", "c.pt"]
    argv += ["--kernel-arch", "fc1", "--kernel-arch", "conv1", "--surrogate", "fc1:32", "--surrogate", "fc2"]
    transfer = settings(argv)
    assert (transfer.target, transfer.source) == (("a.pt", "b.pt"), ("c.pt",))
    assert (transfer.kernel_arch, transfer.surrogate) == (("fc1", "conv1"), ("fc1:32", "fc2"))
    assert settings(["train", "--milestones", "50,75"]).milestones == (50, 75)
    assert settings(["dynamics", "a", "b"]).runs == (Path("a"), Path("b"))
    for each in (features, transfer):
        hash(each)  # frozen and hashable: no list slipped through


def test_command_specific_flags():
    argv = ["entk", "--checkpoint", "net.pt", "--batch-stats", "--kind", "class:3", "--adversarial-eps", "8/255"]
    entk = settings([*argv, "--pgd-steps", "3", "--split", "test", "--memory-budget", "512", "--device", "cpu"])
    assert (entk.checkpoint, entk.model, entk.batch_stats, entk.kind) == (Path("net.pt"), None, True, "class:3")
    assert (entk.adversarial_eps, entk.pgd_steps, entk.split, entk.memory_budget) == (8 / 255, 3, "test", 512)
    argv = ["train", "--linearize-from", "p.pt", "--centered", "--mode", "trades", "--switch-epoch", "2", "--force"]
    train = settings([*argv, "--batchnorm", "both", "--track-kernel", "0", "--epochs", "0"])
    assert train.out == Path("o") and train.force and not train.resume  # a run folder is the study's own
    assert (train.linearize_from, train.centered, train.mode, train.switch_epoch) == (Path("p.pt"), True, "trades", 2)
    assert (train.batchnorm, train.track_kernel, train.epochs) == ("both", 0, 0)
    dynamics = settings(["dynamics", "r", "--eigenvectors", "0", "--eigenvector-class", "3"])
    assert (dynamics.eigenvectors, dynamics.eigenvector_class) == (0, 3)


def test_cli_lists_match_the_library():
    from ntkrobust.attacks import METHODS
    from ntkrobust.bridge.models import MODELS
    from ntkrobust.bridge.training import MODES
    from ntkrobust.kernels import ARCHITECTURES

    assert cli.ARCHITECTURES == ARCHITECTURES and cli.METHODS == METHODS
    assert tuple(MODELS) == cli.MODELS and cli.TRAINING_MODES == MODES


# -- bad input: one line, exit status 2 ----------------------------------------------------------

#: refused by the parser
BAD_FLAGS = {
    "unknown command": (["bogus"], "invalid choice: 'bogus'"),
    "unknown flag": (["attack", "--bogus"], "unrecognized arguments: --bogus"),
    "unknown architecture": (["attack", "--arch", "resnet"], "invalid choice"),
    "zero subset": (["attack", "--n-test", "0"], "at least 1"),
    "bad number": (["attack", "--time", "soon"], "not a number"),
    "one class": (["attack", "--classes", "3"], "at least two"),
    "bad r": (["features", "--robust-r", "0"], "at least 1"),
    "features architecture": (["features", "--arch", "resnet"], "invalid choice"),
    "model and checkpoint": (["entk", "--model", "fc1", "--checkpoint", "n.pt"], "not allowed with"),
    "unknown mode": (["train", "--mode", "free"], "invalid choice: 'free'"),
    "no runs": (["dynamics"], "the following arguments are required: RUN_DIR"),
    "no target": (["transfer"], "the following arguments are required: --target"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flags_are_one_line_exit_2_and_write_nothing(case, assert_refused):
    assert_refused(*BAD_FLAGS[case])


#: refused by the study (a StudyError), one per command
STUDY_ERRORS = {
    "attack": (["attack", "--eps", "8"], "did you mean 8/255"),
    "features": (["features", "--non-robust-below", "2"], "--non-robust-below must lie in [0, 1]"),
    "entk": (["entk", "--model", "fc1", "--kind", "diag"], "full, class-blocks, trace, class:C"),
    "train": (["train", "--centered"], "--centered needs --linearize-from"),
    "dynamics": (["dynamics", "/nonexistent/run"], "not a run folder"),
    "two-layer": (["two-layer", "--lr", "0"], "--lr must be a finite number > 0"),
    "transfer": (["transfer", "--target", "t.pt", "--surrogate-ridge", "-1"], "--surrogate-ridge must be"),
}


@pytest.mark.parametrize("command", list(STUDY_ERRORS))
def test_study_errors_are_one_line_exit_2_and_write_nothing(command, assert_refused):
    assert_refused(*STUDY_ERRORS[command])


def test_make_npz_refuses_bad_data_as_one_line(tmp_path, run_cli):
    code, _, stderr = run_cli(["make-npz", "--data", "imagenet", "--out", tmp_path / "d.npz"])
    assert code == 2 and stderr.count("\n") == 1 and "unknown dataset 'imagenet'" in stderr
    assert "Traceback" not in stderr and not list(tmp_path.iterdir())


def test_an_interrupt_exits_130(run_cli, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ntkrobust.studies.attack.run", interrupted)
    code, _, stderr = run_cli(["attack", "--out", tmp_path / "out"])
    assert code == 130 and stderr == "ntkrobust: interrupted\n"


# -- the output, checked before the study runs ---------------------------------------------------

#: every command writing a folder, with its required flags (reproduce checks its own: tests/reproduce)
FOLDER_COMMANDS = {
    command: flags for command, (flags, _) in MINIMAL.items() if command not in ("make-npz", "reproduce")
}


def _no_compute(monkeypatch, command):
    """The study (for train, its training) fails if reached: the CLI's check must come first."""

    def never(*args, **kwargs):
        raise AssertionError("the output was not checked before the compute")

    module = cli.COMMANDS[command][0]
    target = "ntkrobust.bridge.experiment.run_training" if command == "train" else f"ntkrobust.studies.{module}.run"
    monkeypatch.setattr(target, never)


@pytest.mark.parametrize("command", list(FOLDER_COMMANDS))
def test_a_non_empty_out_without_force_is_left_alone(command, tmp_path, run_cli, monkeypatch):
    _no_compute(monkeypatch, command)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = run_cli([command, *FOLDER_COMMANDS[command], "--out", out])
    assert code == 2 and stderr.count("\n") == 1
    assert f"--out {out} exists and is not empty (use --force to overwrite)" in stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("command", ["attack", "train"])
def test_an_out_that_is_a_file_is_refused(command, tmp_path, run_cli, monkeypatch):
    _no_compute(monkeypatch, command)
    out = tmp_path / "results"
    out.write_text("mine")
    code, _, stderr = run_cli([command, "--force", "--out", out])
    assert code == 2 and stderr.count("\n") == 1 and "exists and is not a folder" in stderr
    assert out.read_text() == "mine"


def test_make_npz_refuses_to_overwrite(tmp_path, run_cli):
    npz = tmp_path / "d.npz"
    npz.write_bytes(b"precious")
    code, _, stderr = run_cli(["make-npz", "--out", npz])
    assert code == 2 and stderr.count("\n") == 1 and "exists (use --force" in stderr
    assert npz.read_bytes() == b"precious"


def test_make_npz_wants_an_npz_name(tmp_path, run_cli):
    code, _, stderr = run_cli(["make-npz", "--out", tmp_path / "d.txt"])
    assert code == 2 and stderr.count("\n") == 1 and "--out must name an .npz file" in stderr
    assert not list(tmp_path.iterdir())


# -- help ----------------------------------------------------------------------------------------


def test_help_is_instant_no_heavy_imports():
    code = (
        "import sys\nfrom ntkrobust import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('jax', 'neural_tangents', 'torch', 'tensorflow', 'matplotlib') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(cli.__file__).parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["attack", "--epss", "0.1"],
            "ntkrobust: error: attack: unrecognized arguments: --epss 0.1 (did you mean --eps?)",
        ),
        (["atack"], "(did you mean attack?)"),
        (["attack", "--arch", "fc7"], "attack: argument --arch: invalid choice: 'fc7'"),
    ],
)
def test_error_lines_say_it_once_and_guess(argv, line, run_cli, tmp_path):
    code, _, stderr = run_cli([*argv, "--out", tmp_path / "out"])
    assert code == 2 and line in stderr and stderr.count("ntkrobust") == 1 and stderr.count("\n") == 1


def test_names_in_any_case_and_the_version(run_cli, tmp_path):
    args = cli.parse(["attack", "--method", "PGD", "--arch", "FC2", "--norm", "Linf", "--out", str(tmp_path)])
    assert (args.method, args.arch, args.norm) == ("pgd", "fc2", "linf")
    with pytest.raises(SystemExit):
        cli.main(["--version"])
