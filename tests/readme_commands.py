"""Run every command of README.md's ``bash`` blocks in order, as a newcomer would, and log each one.

    python tests/readme_commands.py CLONE [--skip-install] [--epochs-cap N]

CLONE is a fresh clone of the repository (with ``../shared/data`` beside it for the real-data
commands). Commands run in CLONE with its ``.venv/bin`` first on PATH, in bash (``source`` works),
one after another; each gets a line in ``CLONE/readme-run.log`` with its exit status, seconds, the
last line of its output and its last error line. ``--skip-install`` leaves out the quick start's
install steps (when the venv is already there) and runs the rest of their lines (the first one's
attack); ``--epochs-cap N`` runs ``two-layer`` commands with at most N epochs (they take an hour
at full length), so that the commands after them find their nets.
Not a test: with ``--epochs-cap 3`` it takes more than 80 minutes on 2 idle cores (the times the
README quotes beside its commands), hours on shared ones.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def commands(readme: str, languages: tuple[str, ...] = ("bash",)) -> list[str]:
    """The command lines of the README's code blocks in ``languages`` (its ``bash`` blocks, which
    run here; ``sh`` ones need GPUs), in order, comments and blanks left out."""
    blocks = re.findall(rf"```(?:{'|'.join(languages)})\n(.*?)```", readme, re.S)
    return [line for block in blocks for line in block.strip().splitlines() if line.strip() and line[0] != "#"]


def capped(command: str, cap: int | None) -> str:
    """``command`` with a two-layer run's --epochs (and --anchor-epoch) held to ``cap``."""
    if cap is None or not command.startswith("ntkrobust two-layer "):
        return command
    command = re.sub(r"--epochs (\d+)", lambda m: f"--epochs {min(int(m.group(1)), cap)}", command)
    return re.sub(
        r"--anchor-epoch (\d+)", lambda m: f"--anchor-epoch {max(1, min(int(m.group(1)), cap // 10))}", command
    )


def without_install(command: str) -> str:
    """``command`` without its install steps (``python3 -m venv ...``, ``... pip install ...``),
    the steps chained after them with ``&&`` kept; '' when nothing else is left."""
    steps = command.split(" && ")
    return " && ".join(s for s in steps if not re.match(r"python3 -m venv |\S*pip install ", s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path)
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--epochs-cap", type=int)
    args = parser.parse_args(argv)
    root = args.clone.resolve()
    env = dict(os.environ, PATH=f"{root / '.venv' / 'bin'}:{os.environ['PATH']}")
    failures = 0
    with open(root / "readme-run.log", "w") as log:
        for command in commands((root / "README.md").read_text()):
            if args.skip_install:
                kept = without_install(command)
                if kept != command:
                    print(f"SKIP the install steps of {command}", file=log, flush=True)
                if not kept:
                    continue
                command = kept
            command = capped(command, args.epochs_cap)
            start = time.time()
            done = subprocess.run(
                ["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, check=False
            )
            failures += done.returncode != 0
            out = (done.stdout.strip().splitlines() or [""])[-1][:300]
            errors = [line for line in done.stderr.splitlines() if "error" in line.lower()][-1:]
            print(
                f"{done.returncode} {time.time() - start:7.1f}s {command}\n    out: {out}\n    err: {errors}", file=log
            )
            log.flush()
    print(f"{failures} command(s) failed; see {root / 'readme-run.log'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
