"""Each command's flags in ``_cli_commands.py``, found by a mutation audit of that file (its eighth
round): the tests fail on mutations the neighbouring tests let through (a choice added to or
dropped from a flag, a required positional made optional, ``reproduce --out`` read as a bare
path, an empty ``--ksm-epochs`` taken for none, a help text that breaks its command's --help);
the list of commands is pinned beside them.

The independent route: the choices are written out here by hand from README.md (the sections
named beside each row) and the papers' attacks (REFERENCE.md: the Taylor attacks of TK supp.
eq. 16-22 are attacks on a kernel machine's outputs, not on a torch net's), never read from the
parser under test; each command line is a hand-written list through ``cli.main``, and a refusal
is one line on stderr with exit status 2, as every refusal of the command line is.
"""

from __future__ import annotations

import re

import pytest
from test_cli import settings  # the settings ``ntkrobust ARGV --out o`` hands to its study

#: README "What you can choose", the Kernel table: the analytic architectures
KERNELS = ("fc1", "fc2", "fc3", "fc4", "fc5", "conv1", "conv2", "two-layer")
#: README "Attack" table: the attacks of a kernel machine; a torch net takes the first two only
KERNEL_ATTACKS = ("fgsm", "pgd", "taylor-l1", "taylor-sum")
NET_ATTACKS = ("fgsm", "pgd")
TRANSFER = ["transfer", "--target", "t.pt"]

#: (command line before the flag, flag, every choice documented, settings field, repeatable flag,
#: a value refused: the one a neighbouring flag takes, where one is near)
DOCUMENTED_CHOICES = [
    (["attack"], "--arch", KERNELS, "arch", False, "mnist-cnn"),
    (["attack"], "--method", KERNEL_ATTACKS, "method", False, "cw"),
    (["features"], "--arch", KERNELS, "arch", True, "resnet18"),
    # README "Eigen-features": FGSM, or --feature-attack pgd, against the feature itself
    (["features"], "--feature-attack", NET_ATTACKS, "feature_attack", False, "taylor-l1"),
    # README "Empirical NTKs of torch nets": --split train|test, --dtype float64 beside float32
    (["entk"], "--split", ("train", "test"), "split", False, "val"),
    (["entk"], "--dtype", ("float32", "float64"), "dtype", False, "float16"),
    # README "Training and kernel dynamics": the --mode table and the list under it
    (["train"], "--mode", ("standard", "fgsm", "fgsm-noise", "pgd", "trades", "te"), "mode", False, "free"),
    (["train"], "--init", ("default", "normal", "truncated-normal", "uniform"), "init", False, "xavier"),
    (["train"], "--stage2-batchnorm", ("frozen", "train"), "stage2_batchnorm", False, "batch"),
    (["train"], "--augment", ("none", "crop-flip"), "augment", False, "flip"),
    (["train"], "--batchnorm", ("running", "batch", "both"), "batchnorm", False, "frozen"),
    # README "Robust accuracy as RobustBench measures it": train --final-eval autoattack
    (["train"], "--final-eval", ("none", "autoattack"), "final_eval", False, "pgd-20"),
    # README "Transfer": two-layer --method fgsm|pgd; transfer attacks nets with the same two and
    # takes registry models as --surrogate, not as --kernel-arch
    (["two-layer"], "--method", NET_ATTACKS, "method", False, "taylor-l1"),
    (TRANSFER, "--method", NET_ATTACKS, "method", False, "taylor-sum"),
    (TRANSFER, "--kernel-arch", KERNELS, "kernel_arch", True, "mnist-cnn"),
    # README "Reproducing the papers": --scale smoke, cpu or paper
    (["reproduce", "tk"], "--scale", ("smoke", "cpu", "paper"), "scale", False, "gpu"),
]
IDS = [f"{argv[0]} {flag}" for argv, flag, *_ in DOCUMENTED_CHOICES]


@pytest.mark.parametrize(("argv", "flag", "choices", "field", "repeated", "refused"), DOCUMENTED_CHOICES, ids=IDS)
def test_every_documented_choice_reaches_its_field(argv, flag, choices, field, repeated, refused):
    for choice in choices:
        value = getattr(settings([*argv, flag, choice]), field)
        assert value == ((choice,) if repeated else choice), (flag, choice, value)


@pytest.mark.parametrize(("argv", "flag", "choices", "field", "repeated", "refused"), DOCUMENTED_CHOICES, ids=IDS)
def test_an_undocumented_choice_is_refused_by_the_parser_with_the_documented_list(
    argv, flag, choices, field, repeated, refused, run_cli
):
    """Refused while parsing, naming the flag (the studies' own checks come later and name
    ``--arch`` for transfer's --kernel-arch), and the list it offers is the documented one
    exactly (in any order): a choice added to the parser, which a study may not take, shows there."""
    code, _, err = run_cli([*argv, flag, refused, "--out", "o"])
    assert code == 2 and err.count("\n") == 1, err
    found = re.search(rf"argument {flag}: invalid choice: '{refused}' \(choose from (.*?)\)", err)
    assert found, err
    assert sorted(c.strip().strip("'") for c in found.group(1).split(",")) == sorted(choices)


def test_evaluate_needs_a_net_from_the_parser(run_cli):
    """README: ``ntkrobust evaluate NET [NET ...]``: no NET is the parser's usage error (with an
    optional positional it would be left to the study, after the output checks)."""
    code, _, err = run_cli(["evaluate", "--data", "digits", "--out", "o"])
    assert code == 2 and err == "ntkrobust: error: evaluate: the following arguments are required: NET\n", err


@pytest.mark.parametrize("out", ["", "  "])
def test_reproduce_refuses_an_empty_out_like_every_command(tmp_path, run_cli, monkeypatch, out):
    """``Path("")`` is the working folder: ``reproduce tk --out ''`` would write its steps and
    reports there, unasked. Refused as the other commands' --out is."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["reproduce", "tk", "--out", out])
    assert code == 2 and err.count("\n") == 1, err
    assert "reproduce: argument --out: an empty --out names no folder" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("epochs", ["", " "])
def test_dynamics_refuses_ksm_epochs_that_name_no_epoch(run_cli, epochs):
    """``--ksm-epochs ''`` names no epoch; read as the flag left out (each run's first and last
    epoch) it would go unread, as ``train --seeds ''`` once ran one run: refused, like every
    empty list."""
    code, _, err = run_cli(["dynamics", "r", "--ksm-epochs", epochs, "--out", "o"])
    assert code == 2 and err.count("\n") == 1, err
    assert "argument --ksm-epochs: expected epochs (numbers >= 0) separated by commas" in err, err


@pytest.mark.parametrize("index", ["-1", "2.5"])
def test_features_refuses_an_image_index_that_is_no_image_in_the_parser(run_cli, index):
    """``--image-index`` names a held-out image, as ``--picture-index`` and
    ``--eigenvector-class`` name theirs: -1 (numpy's last image, not one the user counted) and
    2.5 are refused by the parser, one line and exit status 2, before any data is read."""
    code, _, err = run_cli(["features", "--image-index", index, "--out", "o"])
    assert code == 2 and err.count("\n") == 1, err
    assert "argument --image-index:" in err, err


#: README: every command of the tool, each with its section
README_COMMANDS = [
    "attack",
    "features",
    "entk",
    "train",
    "dynamics",
    "two-layer",
    "transfer",
    "evaluate",
    "reproduce",
    "make-npz",
]


def test_the_help_lists_every_command(capsys):
    """README: ``ntkrobust --help`` lists the commands."""
    from ntkrobust import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code in (0, None)
    listed = re.search(r"\{([a-z,-]+)\}", out)
    assert listed and sorted(listed.group(1).split(",")) == sorted(README_COMMANDS), out[:300]


@pytest.mark.parametrize("command", README_COMMANDS)
def test_every_commands_help_prints_and_exits_0(command, capsys):
    """README: ``ntkrobust COMMAND --help`` lists its flags. argparse %-formats every help text
    when it prints one: a bare ``%`` (``40% of the free memory``) or a misspelt ``%(default)s``
    in one flag's help makes that command's --help a traceback; only ``train --help`` ran before."""
    from ntkrobust import cli

    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    out, err = capsys.readouterr()
    assert stop.value.code in (0, None) and err == "", err
    assert out.startswith(f"usage: ntkrobust {command} ") and "--help" in out, out[:200]
