"""The command line's vocabulary: its parser class (one-line errors with 'did you mean'), the
value types of its flags, and the flag groups several commands share (data, machine, threat,
attack, device, output). The commands themselves are in ``_cli_commands``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

from ntkrobust.studies._common import MAX_WHOLE
from ntkrobust.studies.evaluate import EVALUATION_ATTACKS

PROG = "ntkrobust"
ARCHITECTURES = ("fc1", "fc2", "fc3", "fc4", "fc5", "conv1", "conv2", "two-layer")  # = kernels.ARCHITECTURES
MODELS = (*ARCHITECTURES, "mnist-cnn", "cifar-cnn", "resnet18")  # = bridge.models.MODELS


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise UsageError(
            f"{self.prog.removeprefix(PROG).strip() + ': ' if self.prog != PROG else ''}"
            f"{message}{_did_you_mean(self, message)}"
        )

    def _print_message(self, message: str, file: Any = None) -> None:  # argparse: SupportsWrite[str] | None
        """argparse's, without swallowing a failed write: ``--help`` into a full disk is then
        cli.main's one error line and exit status 2, not a silent exit 0. A reader that stopped
        early (``--help | head -1``) is no error, as argparse has it."""
        if message:
            file = file or sys.stderr
            try:
                file.write(message)
                file.flush()
            except BrokenPipeError:
                pass


def _did_you_mean(parser: argparse.ArgumentParser, message: str) -> str:
    """' (did you mean --eps?)' for a mistyped flag or choice, else ''."""
    import difflib
    import re

    if message.startswith("unrecognized arguments:"):
        flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
        guesses = [
            match[0]
            for word in message.split(":", 1)[1].split()
            if word.startswith("--") and (match := difflib.get_close_matches(word.split("=")[0], flags, n=1))
        ]
    elif found := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message):
        choices = [c.strip().strip("'") for c in found.group(2).split(",")]
        guesses = difflib.get_close_matches(found.group(1).lower(), choices, n=1)
    else:
        return ""
    return f" (did you mean {' '.join(guesses)}?)" if guesses else ""


def _number(text: str) -> float:
    """A float, 'inf', or a fraction such as 8/255."""
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _out_path(text: str) -> Path:
    """--out as a path; an empty one is refused (``Path("")`` is the working folder, where the
    files went unasked)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty --out names no folder (use . for the working folder)")
    return Path(text)


def _class_list(text: str) -> list[str]:
    items = _items(text)
    if len(items) < 2:
        raise argparse.ArgumentTypeError(f"--classes needs at least two comma-separated classes, got {text!r}")
    return items


def _int_at_least(minimum: int):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if value > MAX_WHOLE:
            raise argparse.ArgumentTypeError(f"must be at most 2**63 - 1, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _seed(text: str) -> int:
    """A seed: 0 <= seed < 2**63 (torch's and numpy's generators take no more, and --seeds and
    --nets count up from it)."""
    return _non_negative_int(text)


def _items(text: str) -> list[str]:
    """The comma-separated items of ``text``, stripped; an empty one is refused ('1,,2' and ','
    were read as '1,2' and as no list at all). Empty ``text`` is no items."""
    items = [item.strip() for item in text.split(",")]
    if text.strip() and not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item: separate the values by single commas")
    return [item for item in items if item]


def _int_list(text: str) -> tuple[int, ...]:
    """'50,75' → (50, 75), each at least 1."""
    return tuple(_positive_int(item) for item in _items(text))


def _seed_list(text: str) -> tuple[int, ...]:
    """'0,1,2' → (0, 1, 2), each at least 0; at least one."""
    seeds = tuple(_seed(item) for item in _items(text))
    if not seeds:  # "" ran one run of the default seed, as if --seeds were not given
        raise argparse.ArgumentTypeError("name at least one seed")
    return seeds


def _attack_list(text: str) -> tuple[str, ...]:
    """'pgd-20,autoattack' → ('pgd-20', 'autoattack'), each one of EVALUATION_ATTACKS."""
    names = tuple(item.lower() for item in _items(text))
    for name in names:
        if name not in EVALUATION_ATTACKS:
            raise argparse.ArgumentTypeError(f"{name!r} is none of {', '.join(EVALUATION_ATTACKS)}")
    if not names:
        raise argparse.ArgumentTypeError("name at least one attack")
    return names


def _r_list(text: str) -> tuple[int, ...]:
    """'1,5,all' → (1, 5, -1); 'none' → ()."""
    if text.strip().lower() == "none":
        return ()
    values = []
    for item in (t.lower() for t in _items(text)):
        if item == "all":
            values.append(-1)
            continue
        values.append(_positive_int(item))
    if not values:
        raise argparse.ArgumentTypeError("--robust-r needs at least one value (or 'none')")
    return tuple(values)


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", default="digits", help="digits (default, offline), mnist, cifar10, cifar100, or a path to an .npz"
    )
    g.add_argument("--data-root", type=Path, help="folder holding the mnist / cifar10 / cifar100 files")
    g.add_argument(
        "--download", action="store_true", help="download mnist / cifar10 / cifar100 into --data-root (online)"
    )
    g.add_argument(
        "--from-test-split",
        action="store_true",
        help="use only the official test split, cut into train (--n-train, default half) and test (the rest)",
    )
    g.add_argument("--classes", type=_class_list, help="task classes, ids or names: 'a,b' is a binary task")
    g.add_argument("--n-train", type=_positive_int, help="class-balanced training subset size (default: all)")
    g.add_argument(
        "--n-test",
        type=_positive_int,
        help="class-balanced test subset size (default: all); drawn after the training subset, so the test points "
        "depend on --n-train, --classes and --seed too: keep them when comparing runs",
    )
    g.add_argument(
        "--seed", type=_seed, default=0, help="seed of subsets, initialisations, shuffles and random starts (default 0)"
    )


def _add_machine_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--time", type=_number, default=math.inf, help="training time t of eq. 7 (default inf)")
    g.add_argument("--ridge", type=_number, default=0.0, help="ridge relative to tr(Θ)/n (default 0)")
    g.add_argument(
        "--learning-rate", type=_number, default=1.0, help="η of eq. 7, read with a finite --time (default 1)"
    )
    g.add_argument(
        "--gradient",
        default="auto",
        choices=("auto", "autodiff", "closed-form"),
        help="input gradients: closed form (supp. eq. 9, two-layer only) or autodiff (default auto: the closed "
        "form where one exists)",
    )
    g.add_argument(
        "--precision",
        default="float64",
        choices=("float64", "float32"),
        help="arithmetic of test-time kernel rows and gradients; the Gram matrix is always float64 (default float64)",
    )
    cache = g.add_mutually_exclusive_group()  # a folder for the cache that --no-cache turns off
    cache.add_argument(
        "--cache-dir",
        type=Path,
        help="Gram-matrix cache (default $NTKROBUST_CACHE, else $XDG_CACHE_HOME/ntkrobust, else ~/.cache/ntkrobust)",
    )
    cache.add_argument("--no-cache", action="store_true", help="do not read or write the Gram-matrix cache")


def _add_threat_flags(
    g: argparse._ArgumentGroup,
    *,
    steps_help: str,
    step_help: str = "PGD step size (default: standard, scaled with --eps)",
    between: Sequence[Any] = (),
) -> None:
    """--norm, --eps, (``between``: extra (args, kwargs) flags), --step, --steps, --no-random-start."""
    g.add_argument("--norm", default="linf", choices=("linf", "l2"), help="threat model (default linf)")
    g.add_argument("--eps", type=_number, help="radius in pixel units, e.g. 0.3 or 8/255 (default: standard)")
    for flag_args, flag_kwargs in between:
        g.add_argument(*flag_args, **flag_kwargs)
    g.add_argument("--step", type=_number, help=step_help)
    g.add_argument("--steps", type=_positive_int, help=steps_help)
    g.add_argument("--no-random-start", action="store_true", help="start PGD at x instead of a random point")


def _add_attack_flags(p: argparse.ArgumentParser, *, choices: Sequence[str], method_help: str) -> Any:
    """The "attack" group: --method and the threat flags; returns the group for more flags."""
    g = p.add_argument_group("attack")
    g.add_argument("--method", default="fgsm", choices=choices, help=method_help)
    _add_threat_flags(g, steps_help="PGD steps (default: 40 grey-scale, 10 colour)")
    return g


def _add_device_flag(g: Any) -> None:
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")


def _add_output_flags(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument("--out", type=_out_path, required=True, help=what)
    p.add_argument("--force", action="store_true", help="overwrite an existing, non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage / epoch lines")


#: command -> (help, description) of its parser
