"""Every flag of every command reaches its study: ``cli.main`` with the study's ``run`` replaced by
a recorder, one non-default value per flag, and each field of the settings object the study gets
compared with the value written on the command line, computed here by hand (8/255 as Python's
correctly rounded 8 / 255, names lowered, lists as tuples in the order given). A flag silently
dropped, filled into another field, parsed with the wrong type or left at a changed default fails
here; so does a flag added without a row (the table must cover every flag of the parser).

Also: the boundaries of the value types (0 and 1 for counts, 2**63 - 1 for seeds, fractions and
signs of numbers), and what --quiet, --force and --out hand to the run and to its saving.
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import math
import re
import sys
from pathlib import Path

import pytest

from ntkrobust import cli
from ntkrobust._cli_flags import (
    _int_list,
    _non_negative_int,
    _number,
    _positive_int,
    _r_list,
    _seed,
    _seed_list,
)

MAX_WHOLE = 2**63 - 1

#: the data flags every data command shares: (argv, field, expected)
DATA = [
    (["--data", "d.npz"], "data.data", "d.npz"),
    (["--data-root", "root"], "data.data_root", Path("root")),
    (["--download"], "data.download", True),
    (["--from-test-split"], "data.from_test_split", True),
    (["--classes", " 3 ,8,1"], "data.classes", ("3", "8", "1")),
    (["--n-train", "37"], "data.n_train", 37),
    (["--n-test", "11"], "data.n_test", 11),
    (["--seed", "5"], "data.seed", 5),
]

#: the kernel-machine flags of attack, features and transfer (cache dir: see the rows below)
MACHINE = [
    (["--time", "3/4"], "machine.time", 0.75),
    (["--ridge", "1/3"], "machine.ridge", 1 / 3),
    (["--learning-rate", "2.5e-1"], "machine.learning_rate", 0.25),
    (["--gradient", "Closed-Form"], "machine.gradient", "closed-form"),
    (["--precision", "float32"], "machine.precision", "float32"),
]

#: the threat flags (--eps, --step, --steps, --norm, --no-random-start)
THREAT = [
    (["--norm", "L2"], "threat.norm", "l2"),
    (["--eps", "8/255"], "threat.eps", 8 / 255),
    (["--step", "2/255"], "threat.step", 2 / 255),
    (["--steps", "7"], "threat.steps", 7),
    (["--no-random-start"], "threat.random_start", False),
]

#: command -> list of (argv, field, expected); each list is run as one command line. Commands with
#: mutually exclusive flags have a second line (command + "#2").
ROWS = {
    "attack": [
        *DATA,
        (["--arch", "Conv2"], "arch", "conv2"),
        *MACHINE,
        (["--cache-dir", "gram"], "machine.cache_dir", Path("gram")),
        (["--method", "taylor-l1"], "method", "taylor-l1"),
        *THREAT,
    ],
    "attack#2": [(["--no-cache"], "machine.cache", False)],
    "features#2": [(["--cache-dir", "g"], "machine.cache_dir", Path("g"))],
    "transfer#2": [
        (["--target", "t.pt"], "target", ("t.pt",)),
        (["--cache-dir", "g"], "machine.cache_dir", Path("g")),
    ],
    "features": [
        *DATA,
        (["--arch", "fc3", "--arch", "two-layer"], "arch", ("fc3", "two-layer")),
        *MACHINE,
        (["--no-cache"], "machine.cache", False),
        (["--n-features", "17"], "n_features", 17),
        (["--norm", "l2"], "threat.norm", "l2"),
        (["--eps", "1/10"], "threat.eps", 0.1),
        (["--feature-attack", "PGD"], "feature_attack", "pgd"),
        (["--step", "3/100"], "threat.step", 0.03),
        (["--steps", "4"], "threat.steps", 4),
        (["--no-random-start"], "threat.random_start", False),
        (["--image-index", "3"], "image_index", 3),
        (["--top-k", "3"], "top_k", 3),
        (["--non-robust-below", "1/8"], "non_robust_below", 0.125),
        (["--robust-r", "7,all,2"], "robust_r", (7, -1, 2)),
        (["--robust-steps", "6"], "robust_steps", 6),
    ],
    "entk": [
        *DATA,
        (["--checkpoint", "net.pt"], "checkpoint", Path("net.pt")),
        (["--width", "9"], "width", 9),
        (["--batch-stats"], "batch_stats", True),
        (["--points", "23"], "n", 23),
        (["--split", "Test"], "split", "test"),
        (["--kind", "rademacher:4"], "kind", "rademacher:4"),
        (["--adversarial-eps", "4/255"], "adversarial_eps", 4 / 255),
        (["--pgd-steps", "3"], "pgd_steps", 3),
        (["--pgd-step", "1/255"], "pgd_step", 1 / 255),
        (["--dtype", "float64"], "dtype", "float64"),
        (["--memory-budget", "64"], "memory_budget", 64),
        (["--device", "CPU"], "device", "cpu"),
    ],
    "entk#2": [
        (["--model", "fc3"], "model", "fc3"),
        (["--n", "1"], "n", 1),
    ],
    "train": [
        *DATA,
        (["--model", "fc2"], "model", "fc2"),
        (["--width", "12"], "width", 12),
        (["--init", "Truncated-Normal"], "init", "truncated-normal"),
        (["--linearize-from", "p.pt"], "linearize_from", Path("p.pt")),
        (["--centered"], "centered", True),
        (["--centered-standard"], "centered_standard", True),
        (["--stage2-batchnorm", "train"], "stage2_batchnorm", "train"),
        (["--mode", "TRADES"], "mode", "trades"),
        (["--epochs", "0"], "epochs", 0),
        (["--lr", "1/20"], "lr", 0.05),
        (["--momentum", "0.5"], "momentum", 0.5),
        (["--weight-decay", "5e-4"], "weight_decay", 5e-4),
        (["--milestones", "9,3"], "milestones", (9, 3)),
        (["--gamma", "1/4"], "gamma", 0.25),
        (["--batch-size", "1"], "batch_size", 1),
        (["--eps", "8/255"], "eps", 8 / 255),
        (["--pgd-steps", "2"], "pgd_steps", 2),
        (["--pgd-step", "2/255"], "pgd_step", 2 / 255),
        (["--trades-beta", "1/2"], "trades_beta", 0.5),
        (["--switch-epoch", "0"], "switch_epoch", 0),
        (["--augment", "crop-flip"], "augment", "crop-flip"),
        (["--augment-shared"], "augment_shared", True),
        (["--te-start", "1"], "te_start", 1),
        (["--te-end", "2"], "te_end", 2),
        (["--te-weight", "3/2"], "te_weight", 1.5),
        (["--eps-warmup", "0"], "eps_warmup", 0),
        (["--track-kernel", "0"], "track_kernel", 0),
        (["--track-every", "5"], "track_every", 5),
        (["--track-full"], "track_full", True),
        (["--estimator", "rademacher:3"], "estimator", "rademacher:3"),
        (["--eval-n", "13"], "eval_n", 13),
        (["--eval-pgd-steps", "4"], "eval_pgd_steps", 4),
        (["--full-eval-steps", "0"], "full_eval_steps", 0),
        (["--final-eval", "AutoAttack"], "final_eval", "autoattack"),
        (["--full-eval-every", "2"], "full_eval_every", 2),
        (["--batchnorm", "both"], "batchnorm", "both"),
        (["--memory-budget", "32"], "memory_budget", 32),
        (["--device", "cuda"], "device", "cuda"),
        (["--seeds", "4, 0,2"], "seeds", (4, 0, 2)),
        (["--resume"], "resume", True),
    ],
    "dynamics": [
        (["r1", "r2"], "runs", (Path("r1"), Path("r2"))),
        (["--baseline", "b"], "baseline", Path("b")),
        (["--ksm-epochs", "5,0,5,1/2"], "ksm_epochs", (5.0, 0.0, 0.5)),
        (["--eigenvectors", "3"], "eigenvectors", 3),
        (["--eigenvector-class", "2"], "eigenvector_class", 2),
        (["--eigenvector-steps", "1"], "eigenvector_steps", 1),
        (["--device", "cpu"], "device", "cpu"),
    ],
    "two-layer": [
        *DATA,
        (["--width", "30", "--width", "10"], "width", (30, 10)),
        (["--nets", "3"], "nets", 3),
        (["--epochs", "1"], "epochs", 1),
        (["--lr", "1/16"], "lr", 0.0625),
        (["--log-every", "4"], "log_every", 4),
        (["--anchor-epoch", "2"], "anchor_epoch", 2),
        (["--device", "cpu"], "device", "cpu"),
        (["--method", "Pgd"], "method", "pgd"),
        *THREAT,
        (["--picture-index", "0"], "picture_index", 0),
    ],
    "two-layer#2": [(["--picture-index", "4"], "picture_index", 4)],
    "transfer": [
        *DATA,
        (["--target", "a.pt", "--target", "b.pt"], "target", ("a.pt", "b.pt")),
        (["--source", "c.pt"], "source", ("c.pt",)),
        (["--examples", "a.npz", "--examples", "b.npz"], "examples", ("a.npz", "b.npz")),
        (["--trust-model-code"], "trust_model_code", True),
        (["--kernel-arch", "fc1", "--kernel-arch", "CONV1"], "kernel_arch", ("fc1", "conv1")),
        (["--surrogate", "fc2:16"], "surrogate", ("fc2:16",)),
        (["--kernel-n", "40"], "kernel_n", 40),
        (["--surrogate-nets", "2"], "surrogate_nets", 2),
        (["--surrogate-ridge", "1/1000"], "surrogate_ridge", 0.001),
        (["--surrogate-n", "50"], "surrogate_n", 50),
        (["--device", "cpu"], "device", "cpu"),
        *MACHINE,
        (["--no-cache"], "machine.cache", False),
        (["--method", "pgd"], "method", "pgd"),
        *THREAT,
    ],
    "evaluate": [
        (["n1.pt", "m=n2.pt"], "nets", ("n1.pt", "m=n2.pt")),
        *DATA,
        (["--eps", "8/255"], "eps", 8 / 255),
        (["--attacks", "CW-100, pgd-20"], "attacks", ("cw-100", "pgd-20")),
        (["--masking-gap", "1/5"], "masking_gap", 0.2),
        (["--batch-size", "7"], "batch_size", 7),
        (["--restarts", "5"], "restarts", 5),
        (["--trust-model-code"], "trust_model_code", True),
        (["--device", "cpu"], "device", "cpu"),
    ],
    "make-npz": DATA,
    "reproduce": [
        (["loo"], "target", "loo"),
        (["--scale", "CPU"], "scale", "cpu"),
        (["--data-root", "dr"], "data_root", Path("dr")),
    ],
}

#: flags that the command line reads itself (output, progress, listing), not the settings
CLI_OWN = {"help", "out", "force", "quiet", "list"}


def _get(settings, dotted: str):
    for name in dotted.split("."):
        settings = getattr(settings, name)
    return settings


class _Recorded:
    """What ``cli.main`` handed to the study's run and to the result's ``save``."""

    def __init__(self):
        self.calls = []
        self.saved = []

    def run(self, settings, progress, argv):
        self.calls.append((settings, progress, argv))
        logging.getLogger("ntkrobust").info("a stage finished")
        recorded = self

        class Result:
            def save(self, out, *, overwrite=False):
                recorded.saved.append(Path(out))

            def summary(self):
                return "recorded"

        return Result()


@pytest.fixture
def recorded(monkeypatch):
    """``recorded(argv) -> (settings, progress, argv, saved)``: ``cli.main(argv)`` with every
    command's study ``run`` replaced by a recorder (nothing is computed)."""
    recorder = _Recorded()
    for module_name, _, _ in cli.COMMANDS.values():
        module = importlib.import_module(module_name if "." in module_name else f"ntkrobust.studies.{module_name}")
        monkeypatch.setattr(module, "run", recorder.run)
    monkeypatch.setattr("ntkrobust.cli._rank_in_launch", lambda: None)

    def call(argv):
        recorder.calls.clear()
        recorder.saved.clear()
        code = cli.main([str(a) for a in argv])
        assert code == 0 and len(recorder.calls) == 1, (code, argv)
        return (*recorder.calls[0], list(recorder.saved))

    return call


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[command]


def test_the_table_names_every_flag_of_every_command():
    """A flag without a row would go unchecked: every parser destination is in the table (or is
    one the command line reads itself), and every command is."""
    assert {key.split("#")[0] for key in ROWS} == set(cli.COMMANDS)
    for command in cli.COMMANDS:
        rows = [row for key, rows in ROWS.items() if key.split("#")[0] == command for row in rows]
        flags = {token for argv, _, _ in rows for token in argv if token.startswith("--")}
        for action in _subparser(command)._actions:
            if action.dest in CLI_OWN:
                continue
            if action.option_strings:
                assert flags & set(action.option_strings), f"{command} {action.option_strings}: no row"
            else:  # a positional: its row has no flag
                assert any(field == action.dest for _, field, _ in rows), f"{command} {action.dest}: no row"


@pytest.mark.parametrize("key", list(ROWS))
def test_every_flag_fills_its_own_field_with_the_value_given(key, recorded, tmp_path):
    command = key.split("#")[0]
    rows = ROWS[key]
    positional = [token for argv, _, _ in rows for token in argv if not argv[0].startswith("--")]
    flags = [token for argv, _, _ in rows for token in argv if argv[0].startswith("--")]
    out = tmp_path / ("o.npz" if command == "make-npz" else "o")
    settings, _, _, saved = recorded([command, *positional, *flags, "--out", out])
    assert saved == [out]
    for argv, field, expected in rows:
        value = _get(settings, field)
        assert value == expected and type(value) is type(expected), (argv, field, value, expected)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_quiet_turns_the_progress_bars_off_and_argv_reaches_the_run(command, recorded, tmp_path, monkeypatch):
    """In a terminal (stderr.isatty) the run shows progress bars unless --quiet; the run gets the
    command line as typed (it is recorded with the results)."""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    positional = {"dynamics": ["r"], "evaluate": ["n.pt"], "reproduce": ["tk"], "transfer": ["--target", "t.pt"]}
    out = tmp_path / ("o.npz" if command == "make-npz" else "o")
    argv = [command, *positional.get(command, []), "--out", str(out)]
    _, progress, given, _ = recorded(argv)
    assert progress is True and given == argv
    assert "ntkrobust: a stage finished" in terminal.getvalue()  # the stage lines
    terminal.truncate(0)
    terminal.seek(0)
    _, progress, given, _ = recorded([*argv, "--quiet"])
    assert progress is False and given == [*argv, "--quiet"]
    assert "a stage finished" not in terminal.getvalue()


def test_train_gets_out_and_force_others_get_their_output_checked(recorded, tmp_path):
    """train's run folder is its own (--out, --force are settings); the other commands refuse a
    non-empty --out unless --force."""
    settings, _, _, _ = recorded(["train", "--out", tmp_path / "run", "--force"])
    assert settings.out == tmp_path / "run" and settings.force is True and settings.resume is False
    settings, _, _, _ = recorded(["train", "--out", tmp_path / "run2"])
    assert settings.force is False
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert cli.main(["attack", "--out", str(full)]) == 2
    settings, _, _, _ = recorded(["attack", "--out", full, "--force"])
    assert settings.threat.eps is None  # unset: the study's standard eps
    npz = tmp_path / "d.npz"
    npz.write_bytes(b"x")
    assert cli.main(["make-npz", "--out", str(npz)]) == 2 and npz.read_bytes() == b"x"
    _, _, _, saved = recorded(["make-npz", "--out", npz, "--force"])
    assert saved == [npz]


# -- the value types at their bounds --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8/255", 8 / 255),
        ("-1/4", -0.25),
        ("-3", -3.0),
        ("inf", math.inf),
        ("1e-3", 0.001),
        ("10/4", 2.5),
        (" 2/3", 2 / 3),
    ],
)
def test_numbers_and_fractions(text, value):
    assert _number(text) == value


@pytest.mark.parametrize("text", ["1/0", "8/", "x", ""])
def test_not_numbers(text):
    with pytest.raises(argparse.ArgumentTypeError):
        _number(text)


def test_counts_at_their_bounds():
    """Positive counts start at 1, non-negative ones and seeds at 0; all end at 2**63 - 1."""
    assert (_positive_int("1"), _non_negative_int("0"), _seed("0")) == (1, 0, 0)
    assert _positive_int(str(MAX_WHOLE)) == _non_negative_int(str(MAX_WHOLE)) == _seed(str(MAX_WHOLE)) == MAX_WHOLE
    for parse, text in [
        (_positive_int, "0"),
        (_non_negative_int, "-1"),
        (_seed, "-1"),
        (_positive_int, str(MAX_WHOLE + 1)),
        (_seed, str(MAX_WHOLE + 1)),
        (_positive_int, "1.5"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_lists_keep_order_and_bounds():
    assert _seed_list("3,0,3") == (3, 0, 3) and _int_list("1, 2") == (1, 2) and _int_list("") == ()
    assert _r_list("All,1") == (-1, 1) and _r_list(" NONE ") == ()
    for parse, text in [(_int_list, "0"), (_r_list, "0"), (_seed_list, "-1")]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["two-layer", "--nets", "0"], "must be at least 1, got 0"),
        (["two-layer", "--epochs", "0"], "must be at least 1, got 0"),
        (["attack", "--steps", "0"], "must be at least 1, got 0"),
        (["attack", "--n-train", "0"], "must be at least 1, got 0"),
        (["attack", "--n-test", "0"], "must be at least 1, got 0"),
        (["attack", "--classes", "3"], "at least two comma-separated classes"),
        (["entk", "--n", "0"], "must be at least 1, got 0"),
        (["train", "--milestones", "3,0"], "must be at least 1, got 0"),
        (["dynamics", "r", "--ksm-epochs", "-1"], "numbers >= 0"),
        (["dynamics", "r", "--eigenvector-class", "-1"], "must be at least 0, got -1"),
        (["two-layer", "--picture-index", "-1"], "must be at least 0, got -1"),
        (["train", "--seeds", "-1"], "must be at least 0, got -1"),
        (["attack", "--seed", str(MAX_WHOLE + 1)], "must be at most 2**63 - 1"),
    ],
)
def test_counts_below_their_bound_are_refused_by_the_parser(argv, said):
    """Refused while parsing (not later by a study, for another reason)."""
    with pytest.raises(cli.UsageError, match=re.escape(said)):
        cli.parse([*argv, "--out", "o"])


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["train", "--switch-epoch", "0"], "switch_epoch", 0),
        (["train", "--eps-warmup", "0"], "eps_warmup", 0),
        (["train", "--full-eval-steps", "0"], "full_eval_steps", 0),
        (["dynamics", "r", "--eigenvectors", "0", "--ksm-epochs", "0"], "ksm_epochs", (0.0,)),
        (["dynamics", "r", "--eigenvectors", "0"], "eigenvectors", 0),
        (["attack", "--seed", str(MAX_WHOLE)], "data.seed", MAX_WHOLE),
    ],
)
def test_zero_and_the_largest_seed_are_accepted(argv, field, value, recorded, tmp_path):
    settings, _, _, _ = recorded([*argv, "--out", tmp_path / "o"])
    assert _get(settings, field) == value
