"""Errors said in one line, as the command line prints them (DESIGN.md: one clear line on stderr).

Shared by both halves and the command line: torch's, numpy's and JAX's messages can run on for a
paragraph, and the first line is the one that says what went wrong.
"""

from __future__ import annotations

from collections.abc import Sequence


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An error's message as one line (its first), or its type's name when it has none. Longer
    than ``limit`` characters, it is cut after its last whole sentence that fits, else its last
    whole word, and ends in "…" ("… file not found. This is )" was cut mid-sentence)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if limit is None or len(line) <= limit:
        return line
    cut = line[: limit - 1]
    sentence = cut.rfind(". ")
    if sentence >= limit // 2:
        return cut[: sentence + 1] + " …"
    word = cut.rfind(" ")
    return (cut[:word] if word >= limit // 2 else cut).rstrip(" ,;:") + "…"


def class_names_listed(names: Sequence[str], most: int = 10) -> str:
    """Class names for a one-line message: the first ``most`` of them, and how many in all past that
    ("0, 1, 2, ..., 9, ... (100 classes)")."""
    return ", ".join(names[:most]) + (f", ... ({len(names)} classes)" if len(names) > most else "")


#: class names and run labels go into one-line messages, legends, titles and CSV rows
NAME_LIMIT = 120


def name_problem(name: str) -> str | None:
    """What makes ``name`` unfit for a one-line message or a legend, or None: text that is not
    printable on one line (a newline, an escape sequence that recolours the terminal), or longer
    than ``NAME_LIMIT`` characters (a label of 100,000 characters took matplotlib's layout 110 s)."""
    if not name.isprintable():
        return "is not printable text on one line"
    if len(name) > NAME_LIMIT:
        return f"is {len(name)} characters long, more than the {NAME_LIMIT} a name may have"
    return None


def shown_name(name: str, shown: int = 24) -> str:
    """``name`` quoted for a message that refuses it: its repr (escapes visible), cut to its first
    ``shown`` characters and "…" when longer, so a name of 100,000 characters stays one short line."""
    return repr(name) if len(name) <= shown else f"{name[:shown]!r}…"
