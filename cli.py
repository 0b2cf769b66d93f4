"""ntkrobust command line: parse the flags into a study's settings, run it, save, print.

    ntkrobust attack   --data digits --arch fc2 --method fgsm --out runs/digits-fc2
    ntkrobust entk     --data digits --model mnist-cnn --n 100 --kind full --out runs/digits-entk
    ntkrobust two-layer --data digits --width 1000 --width 10000 --epochs 1000 --out runs/two-layer
    ntkrobust transfer --data digits --kernel-arch fc2 --target runs/cnn/checkpoints/epoch_010.pt --out runs/transfer
    ntkrobust make-npz --data mnist --data-root DIR --from-test-split --n-train 1000 --out mnist.npz

Every command is ``ntkrobust.studies.<command>.run(settings)``: the flags of a command are the
fields of its settings (``--no-X`` flags set a field ``X`` to False), and the experiment logic lives
in the study, usable from Python without argv. Outputs are written atomically (staged, then
renamed into place), so a failure leaves nothing half-written. Bad input prints one line on stderr
and exits with status 2. Heavy imports (JAX, neural-tangents, torch) happen inside the studies, so
``ntkrobust --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import logging
import os
import signal
import sys
import threading
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ntkrobust import AnalyticHalfMissing, retain_freed_memory
from ntkrobust._cli_commands import _ABOUT, COMMANDS
from ntkrobust._cli_flags import ARCHITECTURES, MODELS, PROG, UsageError, _Parser
from ntkrobust._messages import first_line
from ntkrobust.attacks.spec import METHODS, NET_METHODS
from ntkrobust.studies._base import StudyError, StudyWarning, checked_together, partial_result
from ntkrobust.studies._common import quiet_torch_warnings
from ntkrobust.studies._output import OutputLock, check_name_length, check_out_dir, check_out_file, check_writable
from ntkrobust.studies.train import AUGMENTATIONS, INITIALISATIONS, TRAINING_MODES

# the names the tests and users read from the command line module
__all__ = [
    "ARCHITECTURES",
    "AUGMENTATIONS",
    "COMMANDS",
    "INITIALISATIONS",
    "METHODS",
    "MODELS",
    "NET_METHODS",
    "PROG",
    "TRAINING_MODES",
    "build_parser",
    "main",
    "parse",
    "run_command",
    "settings_from",
    "study_settings",
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Adversarial robustness through neural tangent kernels.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (_, _, add_flags) in COMMANDS.items():
        help_text, description = _ABOUT[name]
        command = sub.add_parser(name, help=help_text, description=description)
        add_flags(command)
        for action in command._actions:  # names in any case: --method PGD, --arch FC2
            if action.choices and action.type is None and all(str(c) == str(c).lower() for c in action.choices):
                action.type = str.lower
    return parser


def _version() -> str:
    from ntkrobust import __version__

    return __version__


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed flags; an unknown flag is refused by its command's parser (which knows its flags)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def settings_from(cls: type, args: argparse.Namespace) -> Any:
    """``cls`` (a settings dataclass) from parsed flags: each field from the flag of its name (a
    nested settings dataclass from the same flags; ``X`` from ``--no-X``); a flag left unset
    (None) keeps the field's default; lists become tuples."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = settings_from(hints[f.name], args)
            continue
        if hasattr(args, f.name):
            value = getattr(args, f.name)
        elif hasattr(args, f"no_{f.name}"):
            value = not getattr(args, f"no_{f.name}")
        else:
            continue
        if value is not None:
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def study_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(module, settings)``: the module that runs ``args.command`` (a study, or ``reproduce``)
    and its settings built from the parsed flags. Imports the module; runs nothing."""
    module_name, settings_name, _ = COMMANDS[args.command]
    module = importlib.import_module(module_name if "." in module_name else f"ntkrobust.studies.{module_name}")
    return module, settings_from(getattr(module, settings_name), args)


def run_command(args: argparse.Namespace) -> int:
    """Settings from ``args``, the output checked and locked, the study run, its result saved and
    summarised. Under torchrun every process joins the group and runs the study (which shares its
    kernels); rank 0 alone checks and locks the output, saves and prints. Once it has finished in
    every process, each leaves the group (``distributed.leave``)."""
    if args.command == "reproduce" and _reproduce_listing(args):
        return 0
    rank = _launch_rank(args.command)
    retain_freed_memory()  # before the study allocates: reused pages, not fresh ones (_allocator.py)
    # JAX takes 75% of a GPU's memory when it starts by default, and torch in the same process
    # (transfer, two-layer, reproduce) would run out: it allocates as it goes, unless told otherwise
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    module, settings = study_settings(args)
    if rank is not None:
        from ntkrobust.bridge import distributed

        distributed.init_from_environment(getattr(settings, "device", "auto"))
    with contextlib.ExitStack() as locked:
        with checked_together():  # rank 0's refusal stops every process, on every node
            if not rank:  # one process, or rank 0 of several
                _check_output(args)
                locked.enter_context(OutputLock(args.out))
        if rank:  # rank 0 says what they all would: warnings and stage lines once
            logging.getLogger(PROG).setLevel(logging.ERROR)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StudyWarning)
                quiet_torch_warnings()
                module.run(settings, progress=False, argv=args.argv)
            distributed.leave()
            return 0
        return _run_and_save(args, module, settings, rank)


def _run_and_save(args: argparse.Namespace, module: Any, settings: Any, rank: int | None) -> int:
    """Rank 0's (or the one process's) study: run, saved into ``args.out`` (locked), summarised."""
    _show_stages(not args.quiet)
    with warnings.catch_warnings():
        warnings.simplefilter("always", StudyWarning)
        # here, not only where a study first uses torch: its checks' ``warned_after_checks``
        # restores the filters it found, and torch's first jvp came after them
        quiet_torch_warnings()
        shown = warnings.showwarning

        def say(message: Any, category: type[Warning], *rest: Any, **kw: Any) -> None:  # as soon as found
            if issubclass(category, StudyWarning):
                print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, *rest, **kw)

        warnings.showwarning = say
        try:
            result = module.run(settings, progress=not args.quiet and sys.stderr.isatty(), argv=args.argv)
        except BaseException as err:
            _save_finished_part(args, err)
            raise
        result.save(args.out, overwrite=True)  # --out and --force were checked before the compute
    summary = result.summary()
    if rank is not None:
        from ntkrobust.bridge import distributed

        summary += f" (world size {distributed.world_size()})"
    print(f"{summary}\n-> {args.out}" if "\n" in summary else f"{summary} -> {args.out}")
    if rank is not None:
        distributed.leave()
    return 0


def _check_output(args: argparse.Namespace) -> None:
    """The output of the command, checked before any compute."""
    beside = {"make-npz": "temporary file", "train": "lock", "reproduce": "lock"}.get(args.command, "staging folder")
    check_name_length(args.out, "--out", beside)
    if args.command == "make-npz":
        check_out_file(args.out, args.force, suffix=".npz")
    elif args.command in ("train", "reproduce"):  # the study checks its folder: it may be resumed
        check_writable(args.out, "--out")
    else:
        check_out_dir(args.out, args.force)
    if getattr(args, "force", False) and args.command != "train":  # train's study refuses inputs among what it clears
        _refuse_inputs_replaced(args)


def _refuse_inputs_replaced(args: argparse.Namespace) -> None:
    """With --force the command's files replace those of the same names in --out (make-npz: the
    file --out): an input file there may be one of them. ``attack --data OUT/adversarial.npz
    --out OUT --force`` overwrote its own input. Any file named on the command line (also after
    an ``=``, as in evaluate's MODEL=WEIGHTS) that sits directly in --out is refused, and so is
    an input folder that is --out itself (``dynamics RUN --out RUN --force`` wrote its figures
    among the run's files; the Gram cache is a folder the command writes too, and may be it)."""
    out = args.out.resolve()
    for name, value in vars(args).items():
        if name in ("out", "argv", "command", "cache_dir"):
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if not isinstance(item, str | Path):
                continue
            for text in dict.fromkeys((str(item), str(item).rpartition("=")[2])):
                try:
                    path = Path(text).resolve()
                    named, folder = path.is_file(), path.is_dir()
                except (OSError, RuntimeError):  # a name too long for a path, a loop of links: no file
                    continue
                if folder and path == out and args.command != "make-npz":
                    raise UsageError(f"--out {args.out} is the input folder {text}: choose another --out")
                if named and args.command == "make-npz" and path == out:
                    raise UsageError(f"--out {args.out} is the input {text}: --force would replace it; choose another")
                if named and args.command != "make-npz" and path.parent == out:
                    raise UsageError(
                        f"{text} lies in --out {args.out}, whose files --force replaces: choose another --out"
                    )


#: the commands that share their work between the processes of a torchrun launch
DISTRIBUTED_COMMANDS = ("entk", "train", "transfer", "dynamics", "evaluate")


def _rank_in_launch() -> int | None:
    """This process's rank when torchrun (or another launcher) started it as one of several
    (None otherwise), from the launcher's environment: known before any process group exists."""
    import os

    values = {}
    # RANK and LOCAL_RANK only mean something in a launch: LOCAL_RANK=-1 elsewhere says "not distributed"
    for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default).strip()
        if not (text.isascii() and text.isdigit()):
            raise UsageError(f"the environment variable {name}={text!r} is not a whole number >= 0 (set by torchrun)")
        values[name] = int(text)
        if name == "WORLD_SIZE" and values[name] <= 1:
            return None
    if values["RANK"] >= values["WORLD_SIZE"]:
        raise UsageError(f"RANK={values['RANK']} is not below WORLD_SIZE={values['WORLD_SIZE']} (set by torchrun)")
    return values["RANK"]


def _launch_rank(command: str) -> int | None:
    """``_rank_in_launch``, where a command that does not share its work is refused."""
    rank = _rank_in_launch()
    if rank is not None and command not in DISTRIBUTED_COMMANDS:
        raise UsageError(
            f"{command} does not share its work under torchrun yet (only {', '.join(DISTRIBUTED_COMMANDS)}); "
            "run it as one process"
        )
    if rank is not None:
        _check_rendezvous_environment()
    return rank


def _check_rendezvous_environment() -> None:
    """torchrun sets RANK, MASTER_ADDR and MASTER_PORT with WORLD_SIZE; set by hand without
    them, torch's rendezvous raised a traceback ("environment variable MASTER_ADDR expected")."""
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name, "").strip()]
    if missing:
        raise UsageError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE'].strip()} without {', '.join(missing)}: start the processes "
            "with torchrun (torchrun --nproc-per-node N -m ntkrobust ...), which sets them"
        )
    port = os.environ["MASTER_PORT"].strip()
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"the environment variable MASTER_PORT={port!r} is not a port number (set by torchrun)")


def _reproduce_listing(args: argparse.Namespace) -> bool:
    """``reproduce [TARGET] --list`` prints the recipes (of TARGET); otherwise TARGET and --out
    are required. --scale defaults to smoke once the listing is ruled out."""
    if args.list:
        from ntkrobust.reproduce import listing

        unread = [f"--{name.replace('_', '-')}" for name in ("scale", "data_root", "out") if getattr(args, name)]
        if unread:
            raise UsageError(f"--list prints every scale's cost and runs nothing: leave out {', '.join(unread)}")
        print(listing(args.target or "all"))
        return True
    if args.target is None or args.out is None:
        raise UsageError("reproduce needs TARGET and --out (or --list)")
    return False


class _StageLines(logging.Formatter):
    """``ntkrobust: MESSAGE``, and ``ntkrobust: warning: MESSAGE`` for a warning, as the studies'
    warnings print (the Gram cache's warnings had no "warning:")."""

    def format(self, record: logging.LogRecord) -> str:
        said = "warning: " if record.levelno >= logging.WARNING else ""
        return f"{PROG}: {said}{record.getMessage()}"


def _show_stages(show: bool) -> None:
    """One line per finished stage or epoch on stderr (the ``ntkrobust`` logger), in a terminal
    beside the progress bars and in a file (nohup, CI, ``| tee``) on their own; with --quiet
    the warnings only."""
    logger = logging.getLogger(PROG)
    logger.handlers = [h for h in logger.handlers if not getattr(h, "ntkrobust_cli", False)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StageLines())
    handler.ntkrobust_cli = True  # type: ignore[attr-defined]
    handler.setLevel(logging.INFO if show else logging.WARNING)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that staging folders and locks are cleaned up."""


def _terminate(signum: int, frame: Any) -> NoReturn:
    raise _Terminated


def _save_finished_part(args: argparse.Namespace, err: BaseException) -> None:
    """The part of the study that finished before ``err`` stopped it (``evaluate``'s nets), saved
    into ``--out`` (checked and locked before the compute); ``_resumable`` then says so. Saved all
    or nothing: where saving fails too (a full disk), ``err`` is what the user hears about."""
    finished = partial_result(err)
    # the command's own study only: reproduce runs evaluate as a step, whose part is not its output
    if finished is not None and finished.record.get("command") == getattr(args, "command", None):
        with contextlib.suppress(Exception):
            finished.save(args.out, overwrite=True)
            args.saved_finished_part = True


def _kept(args: Any) -> str:
    """What to tell about a study's finished part, where ``_save_finished_part`` saved it."""
    if getattr(args, "saved_finished_part", False):
        return f"; the nets evaluated before it stopped are saved in {args.out} (results.json lists the others)"
    return ""


def _resumable(args: Any) -> str:
    """What to tell about a run that stopped early: a training run resumes from its last epoch,
    reproduce from its last step; an evaluation kept the nets it finished."""
    if kept := _kept(args):
        return kept
    if getattr(args, "command", None) == "train" and (args.out / "config.json").is_file():
        return f"; the run in {args.out} stays resumable: run the same command with --resume"
    if getattr(args, "command", None) == "reproduce" and args.out is not None and (args.out / "steps").is_dir():
        return f"; finished steps in {args.out} are kept: run the same command to resume"
    return ""


def _rank_if_sound() -> int | None:
    """``_rank_in_launch``, or None where the launcher's variables are what the error is about."""
    try:
        return _rank_in_launch()
    except UsageError:
        return None


def _speaker() -> str:
    """Who prints a final line: ``ntkrobust``, or under torchrun ``ntkrobust (rank R)`` for the
    ranks after 0, each of which prints its own (an error may be one process's alone)."""
    rank = _rank_if_sound()
    return PROG if not rank else f"{PROG} (rank {rank})"


def _later_rank() -> bool:
    """Whether this process is one of a launch's after rank 0 (not when the launch is broken)."""
    return bool(_rank_if_sound())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # θ, τ, ε of the help and messages on an ASCII terminal: \u03b8
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args: Any = None
    previous = (
        signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        args = parse(argv)
        args.argv = argv
        return run_command(args)
    except (UsageError, StudyError, FloatingPointError) as err:  # the last: a kernel or loss not finite
        if args is None and _later_rank():  # flags every process of a launch refuses alike: rank 0 says why
            return 2
        print(f"{_speaker()}: error: {err}{_kept(args)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        # a width or size too large for this machine: say so in one line (torch's messages run on)
        print(
            f"{_speaker()}: error: out of memory ({first_line(err)[:200]}); "
            "try fewer points, a smaller --width or --memory-budget"
            f"{_resumable(args)}",
            file=sys.stderr,
        )
        return 2
    except AnalyticHalfMissing as err:  # an environment without the pinned JAX: no traceback of its internals
        print(f"{_speaker()}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder made read-only during the run, ...
        where = f" ({err.filename})" if err.filename else ""
        print(f"{_speaker()}: error: {err.strerror or err}{where}{_resumable(args)}", file=sys.stderr)
        return 2
    except Exception as err:
        if not _stopped_with_another(err):
            if kept := _kept(args):  # before the traceback: what of the run is kept
                print(f"{_speaker()}: stopped by the error below{kept}", file=sys.stderr)
            raise
        return 2  # another process of the launch failed a check and said why
    except (KeyboardInterrupt, _Terminated) as err:
        print(
            f"{_speaker()}: {'terminated' if isinstance(err, _Terminated) else 'interrupted'}{_resumable(args)}",
            file=sys.stderr,
        )
        return 143 if isinstance(err, _Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stopped_with_another(err: BaseException) -> bool:
    """Whether ``err`` is ``bridge.distributed.StoppedWithAnother``: looked up, not imported (a
    launch's processes have imported it; a single process raises no such error)."""
    distributed = sys.modules.get("ntkrobust.bridge.distributed")
    return distributed is not None and isinstance(err, distributed.StoppedWithAnother)


def _out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, or torch's allocators failing (a RuntimeError on the CPU; the CUDA
    one subclasses it), told by their messages: torch need not be imported here."""
    text = str(err)
    return isinstance(err, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()


if __name__ == "__main__":
    sys.exit(main())
