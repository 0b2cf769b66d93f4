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
import warnings
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
    argv += ["--precision", "float32", "--no-cache", "--method", "pgd", "--norm", "l2"]
    argv += ["--eps", "8/255", "--step", "0.5", "--steps", "7", "--no-random-start"]
    assert settings(argv) == AttackSettings(
        data=DataSettings("d.npz", Path("root"), True, True, ("3", "8"), 50, 20, 4),
        arch="two-layer",
        machine=MachineSettings(math.inf, 1e-3, 0.5, "closed-form", "float32", None, cache=False),
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "x.pt", "--attacks", "pgd-20,,cw-100"], "'pgd-20,,cw-100' has an empty item"),
        (["train", "--milestones", "1,,2"], "'1,,2' has an empty item"),
        (["train", "--seeds", ","], "',' has an empty item"),
        (["train", "--seeds", ""], "name at least one seed"),  # ran one run, --seeds unread
        (["features", "--robust-r", "1,,2"], "'1,,2' has an empty item"),
        (["attack", "--classes", "3,,8"], "'3,,8' has an empty item"),
        (["dynamics", "r", "--ksm-epochs", "0,,5"], "'0,,5' has an empty item"),
    ],
)
def test_a_list_with_an_empty_or_repeated_item_is_refused(argv, message, run_cli):
    """An empty item was dropped without a word ('1,,2' read as '1,2')."""
    code, _, stderr = run_cli([*argv, "--out", "o"])
    assert code == 2 and stderr.count("\n") == 1 and message in stderr, stderr


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
    "negative seed": (["attack", "--seed", "-1"], "--seed: must be at least 0"),
    "a cache turned off": (["attack", "--no-cache", "--cache-dir", "c"], "not allowed with argument --no-cache"),
    "seed too large": (["train", "--seeds", f"0,{2**63}"], "--seeds: must be at most 2**63 - 1"),
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


#: refused before the compute that used to come first (found by review: each was refused after
#: the kernel machines' fit and attacks, or failed with a traceback)
BEFORE_THE_COMPUTE = {
    "unknown surrogate": (["--surrogate", "alexnet"], "unknown model 'alexnet'"),
    "repeated surrogate": (["--surrogate", "fc2", "--surrogate", "fc2"], "--surrogate repeats a surrogate"),
    "surrogate-n": (["--surrogate", "fc2", "--surrogate-n", "5000"], "--surrogate-n 5000 exceeds"),
    "kernel-n below the classes": (["--kernel-n", "5"], "--kernel-n 5 is fewer than the 10 classes"),
}


@pytest.mark.parametrize("case", list(BEFORE_THE_COMPUTE))
def test_transfer_checks_its_sources_before_the_compute(case, assert_refused, monkeypatch):
    monkeypatch.setattr("ntkrobust.studies.transfer.load_targets", _never_reached)
    flags, message = BEFORE_THE_COMPUTE[case]
    assert_refused(["transfer", "--target", "t.pt", *flags], message)


ENTK_FLAGS_THAT_DO_NOTHING = {
    "batch statistics without BatchNorm": (["--model", "fc2", "--batch-stats"], "fc2 has no BatchNorm layers"),
    "batch statistics of one point": (
        ["--model", "resnet18", "--width", "2", "--batch-stats", "--n", "1"],
        "would normalise over one value per channel",
    ),
    "an attack without eps": (["--model", "fc2", "--pgd-steps", "3"], "give --adversarial-eps too"),
}


ENTK_FLAGS_THAT_DO_NOTHING |= {
    "a data root for digits": (["--data-root", "somewhere"], "--data-root applies to mnist, cifar10 and cifar100"),
    "a download of an npz": (["--data", "d.npz", "--download"], "--download applies to mnist, cifar10 and cifar100"),
}


@pytest.mark.parametrize("case", list(ENTK_FLAGS_THAT_DO_NOTHING))
def test_entk_refuses_flags_it_would_ignore_or_fail_on(case, assert_refused, monkeypatch):
    # the modules that bind empirical_ntk at import are imported first: one imported while it is
    # patched would keep the patch after the test (it failed later tests run in the same process)
    import ntkrobust.bridge.eigenvectors
    import ntkrobust.bridge.surrogate
    import ntkrobust.bridge.tracking  # noqa: F401

    monkeypatch.setattr("ntkrobust.bridge.entk.empirical_ntk", _never_reached)
    flags, message = ENTK_FLAGS_THAT_DO_NOTHING[case]
    assert_refused(["entk", *flags], message)


def test_features_refuses_an_empty_evaluation_half_before_the_compute(assert_refused, monkeypatch):
    monkeypatch.setattr("ntkrobust.studies.features._one_architecture", _never_reached)
    flags = ["--n-train", "30", "--n-features", "5", "--n-test", "10", "--robust-r", "1"]
    assert_refused(["features", *flags], "evaluates on the other half, which is empty")


def _never_reached(*args, **kwargs):
    raise AssertionError("the compute started before the check")


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


def test_torchs_jit_script_notice_stays_hidden_after_the_checks(run_cli, tmp_path, monkeypatch):
    """torch's first ``torch.func.jvp`` (train --linearize-from) said that ``torch.jit.script`` is
    deprecated: the filter set with the study's checks was dropped when they ended."""
    from ntkrobust.studies._base import warned_after_checks
    from ntkrobust.studies._common import torch_device

    def jvp_after_the_checks(*args, **kwargs):
        with warned_after_checks():
            torch_device("cpu")
        warnings.warn(
            "`torch.jit.script` is deprecated. Please switch to `torch.compile`.", FutureWarning, stacklevel=1
        )
        raise KeyboardInterrupt

    monkeypatch.setattr("ntkrobust.studies.train.run", jvp_after_the_checks)
    with warnings.catch_warnings(record=True) as shown:
        warnings.resetwarnings()  # not pytest's filters, which hide this notice too
        code, _, stderr = run_cli(["train", "--out", tmp_path / "out"])
    assert code == 130 and stderr == "ntkrobust: interrupted\n"
    assert not [w for w in shown if "torch.jit.script" in str(w.message)]


@pytest.mark.parametrize(
    "error",
    [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1600000 bytes")],
)
def test_running_out_of_memory_is_one_line(error, run_cli, tmp_path, monkeypatch):
    def too_large(*args, **kwargs):
        raise error

    monkeypatch.setattr("ntkrobust.studies.attack.run", too_large)
    code, _, stderr = run_cli(["attack", "--out", tmp_path / "out"])
    assert code == 2 and stderr.count("\n") == 1 and "error: out of memory (" in stderr, stderr


def test_other_runtime_errors_are_not_taken_for_memory(run_cli, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr("ntkrobust.studies.attack.run", broken)
    with pytest.raises(RuntimeError, match="mat1"):
        run_cli(["attack", "--out", tmp_path / "out"])


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


@pytest.mark.parametrize("command", ["attack", "train", "make-npz"])
def test_an_out_that_is_a_dangling_link_is_refused(command, tmp_path, run_cli, monkeypatch):
    """exists() follows a link: a dangling --out passed every check and failed after the compute."""
    _no_compute(monkeypatch, command)
    out = tmp_path / ("results.npz" if command == "make-npz" else "results")
    out.symlink_to(tmp_path / "gone" / "folder")
    code, _, stderr = run_cli([command, "--out", out])
    assert code == 2 and stderr.count("\n") == 1 and "which does not exist" in stderr, stderr
    assert out.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize(
    ("argv", "where"),
    [
        (["attack", "--data", "{out}/adversarial.npz"], "lies in --out"),  # its own output's name
        (["features", "--data", "{out}/mine.npz"], "lies in --out"),
        (["evaluate", "fc2={out}/weights.pt", "--data", "digits"], "lies in --out"),  # after the =
        (["make-npz", "--data", "{out}"], "is the input"),
    ],
    ids=["attack-own-name", "features", "evaluate-model-weights", "make-npz"],
)
def test_force_refuses_an_input_among_the_files_it_replaces(argv, where, tmp_path, run_cli, monkeypatch):
    """``attack --data OUT/adversarial.npz --out OUT --force`` read its data, then replaced the
    file with its own output (train refused this for what it clears, no other command did)."""
    command = argv[0]
    if command != "make-npz":
        _no_compute(monkeypatch, command)
    out = tmp_path / ("d.npz" if command == "make-npz" else "run")
    if command != "make-npz":
        out.mkdir()
    name = argv[-1] if command != "evaluate" else argv[1].split("=")[1]
    source = Path(name.format(out=out))
    source.write_bytes(b"precious")
    code, _, stderr = run_cli([*(a.format(out=out) for a in argv), "--force", "--out", out])
    assert code == 2 and stderr.count("\n") == 1 and where in stderr and "choose another" in stderr, stderr
    assert source.read_bytes() == b"precious"


def test_force_refuses_an_input_folder_that_is_out(tmp_path, run_cli, monkeypatch):
    """``dynamics RUN --out RUN --force`` wrote its results and figures among the run's files."""
    _no_compute(monkeypatch, "dynamics")
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text("{}")
    code, _, stderr = run_cli(["dynamics", run, "--force", "--out", f"{run}/"])
    assert code == 2 and stderr.count("\n") == 1 and "is the input folder" in stderr, stderr
    assert [p.name for p in run.iterdir()] == ["history.json"]


def test_force_keeps_inputs_below_out_and_an_empty_out_is_refused(tmp_path, run_cli, monkeypatch):
    """Only the files directly in --out are replaced: data in OUT/inner/ is an input like any
    other, and the command reaches its study. An empty --out was the working folder (Path(""))."""

    def reached(*args, **kwargs):
        raise RuntimeError("the study was reached")

    monkeypatch.setattr("ntkrobust.studies.attack.run", reached)
    inner = tmp_path / "run" / "inner"
    inner.mkdir(parents=True)
    (inner / "d.npz").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="the study was reached"):
        run_cli(["attack", "--data", inner / "d.npz", "--force", "--out", tmp_path / "run"])
    code, _, stderr = run_cli(["attack", "--out", ""])
    assert code == 2 and stderr.count("\n") == 1 and "an empty --out names no folder" in stderr, stderr


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


@pytest.mark.parametrize(("given", "kept"), [(None, "false"), ("true", "true")])
def test_the_command_line_keeps_jax_from_taking_three_quarters_of_a_gpu(given, kept, tmp_path, monkeypatch):
    """A command can run both halves on one GPU (transfer, two-layer, reproduce): JAX allocates as
    it goes instead of taking 75% of the GPU's memory when it starts, unless the user says so.
    Importing the package alone leaves the setting to its user (tests/kernels/test_devices.py)."""
    import os

    environment = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
    if given is not None:
        environment["XLA_PYTHON_CLIENT_PREALLOCATE"] = given
    monkeypatch.setattr(os, "environ", environment)
    argv = ["attack", "--data", "digits", "--n-train", "30", "--n-test", "10", "--quiet", "--out", str(tmp_path / "a")]
    assert cli.main(argv) == 0
    assert environment["XLA_PYTHON_CLIENT_PREALLOCATE"] == kept


def test_an_environment_without_the_analytic_half_is_one_line(tmp_path):
    """JAX 0.11 (a GPU image's) breaks neural-tangents 0.6.5's import (``jax.core.Jaxpr``): the
    command printed that traceback. Simulated with neural-tangents made unimportable."""
    out = tmp_path / "out"
    script = (
        "import sys; sys.modules['neural_tangents'] = None\n"
        "from ntkrobust.cli import main\n"
        f"sys.exit(main(['attack', '--n-train', '50', '--n-test', '20', '--quiet', '--out', {str(out)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("ntkrobust: error: the analytic half (JAX, neural-tangents) does not import here (")
    assert "jax 0.4.38 and neural-tangents 0.6.5" in done.stderr and not out.exists()
