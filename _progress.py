"""Progress of long loops: a bar in a terminal, plain lines when stderr is a file.

``progress_bar(total, desc, unit, show=...)`` is tqdm's bar when ``show`` (the command line sets
it when stderr is a terminal). Otherwise it counts silently and, once a loop has run for
``LINE_EVERY`` seconds, logs one line to the ``ntkrobust`` logger at most every ``LINE_EVERY``
seconds ("eNTK (full): 12/40 chunks (30%), 95 s"), which the command line prints to stderr: a
kernel that takes a quarter of an hour under nohup or CI shows that it moves. Without a handler
on that logger (library use, ``--quiet``) nothing is printed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeVar

from tqdm.auto import tqdm

_T = TypeVar("_T")

__all__ = ["LINE_EVERY", "progress_bar", "progress_iter"]

#: seconds between two plain progress lines
LINE_EVERY = 60.0


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "tch", "x")) else "s")  # batches, epochs


class _Lines:
    """tqdm's ``update`` / ``close`` / context manager, as a line every ``LINE_EVERY`` seconds."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ""
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= LINE_EVERY:
            self.last = now
            share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            done = f"{self.n}/{self.total} {_plural(self.unit)}{share}"
            logging.getLogger("ntkrobust").info(f"{self.desc}: {done}, {now - self.start:.0f} s{self.postfix}")

    def set_postfix(self, **values: str) -> None:
        """tqdm's running figures, added to the next line."""
        self.postfix = "".join(f", {name} {value}" for name, value in values.items())

    def close(self) -> None:
        pass

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int, desc: str, unit: str, *, show: bool, leave: bool = False) -> Any:
    """tqdm's bar over ``total`` items when ``show``, else timed plain lines (module docstring)."""
    if show:
        return tqdm(total=total, desc=desc, unit=unit, leave=leave)
    return _Lines(total, desc, unit)


def progress_iter(items: Iterable[_T], desc: str, unit: str, *, show: bool, leave: bool = False) -> Iterator[_T]:
    """``items`` one by one, counted by ``progress_bar`` (a bar or timed plain lines). A range or
    a list is not copied (``range(steps)`` of a billion steps takes no memory)."""
    listed = items if isinstance(items, Sized) else list(items)
    with progress_bar(len(listed), desc, unit, show=show, leave=leave) as bar:
        for item in listed:
            yield item
            bar.update(1)
