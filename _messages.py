"""Errors said in one line, as the command line prints them (DESIGN.md: one clear line on stderr).

Shared by both halves and the command line: torch's, numpy's and JAX's messages can run on for a
paragraph, and the first line is the one that says what went wrong.
"""

from __future__ import annotations


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An error's message as one line (its first, cut to ``limit`` characters), or its type's
    name when it has none."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
