"""Progress of long loops: a bar in a terminal, plain lines when stderr is a file.

``progress_bar(total, desc, unit, show=...)`` is tqdm's bar when ``show`` (the command line sets
it when stderr is a terminal). Otherwise it counts silently and, once a loop has run for
``LINE_EVERY`` seconds, logs one line to the ``ntkrobust`` logger at most every ``LINE_EVERY``
seconds ("eNTK (full): 12/40 chunks (30%), 95 s"), which the command line prints to stderr: a
kernel that takes a quarter of an hour under nohup or CI shows that it moves. Without a handler
on that logger (library use, ``--quiet``) nothing is printed.

A loop inside another names the loops it runs in ("features (fc2) 1/2 › PGD: 6/10 steps (60%),
68 s"), and a loop whose item takes long (one block of three minutes) still says every
``HEARTBEAT_EVERY`` seconds that it runs: a daemon thread looks at the innermost open loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sized
from time import monotonic as _wall  # the heartbeat's clock, whatever a test makes of time.monotonic
from typing import Any, TypeVar

from tqdm.auto import tqdm

_T = TypeVar("_T")

__all__ = ["LINE_EVERY", "progress_bar", "progress_iter"]

#: seconds between two plain progress lines
LINE_EVERY = 60.0
#: seconds without a line after which the innermost open loop says that it still runs
HEARTBEAT_EVERY = 60.0

_OPEN: list[_Lines] = []  # the loops counting now, outermost first (one thread: the command's)
_LOCK = threading.Lock()
_STOP = threading.Event()  # never set: the thread is a daemon and ends with the process
_beating: threading.Thread | None = None


def _plural(unit: str) -> str:
    if unit.endswith("y") and not unit.endswith(("ay", "ey", "oy", "uy")):  # Square's queries
        return unit[:-1] + "ies"
    return unit + ("es" if unit.endswith(("s", "sh", "tch", "x")) else "s")  # batches, epochs


class _Lines:
    """tqdm's ``update`` / ``close`` / context manager, as a line every ``LINE_EVERY`` seconds."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.start_wall = self.said_wall = _wall()
        with _LOCK:
            self.within = [f"{outer.desc} {min(outer.n + 1, outer.total)}/{outer.total} › " for outer in _OPEN]
            _OPEN.append(self)
        _start_heartbeat()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= LINE_EVERY:
            self.last = now
            self._say(now - self.start)

    def _say(self, seconds: float) -> None:
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        done = f"{self.n}/{self.total} {_plural(self.unit)}{share}"
        self.said_wall = _wall()
        line = f"{''.join(self.within)}{self.desc}: {done}, {seconds:.0f} s{self.postfix}"
        logging.getLogger("ntkrobust").info(line)

    def beat(self) -> None:
        """The heartbeat's line, when this loop has said nothing for ``HEARTBEAT_EVERY`` seconds."""
        now = _wall()
        if now - self.said_wall >= HEARTBEAT_EVERY:
            self._say(now - self.start_wall)
            # the next update's line a whole interval after this one: a batch that ended a second
            # after the heartbeat printed a second line ("15/40 batches, 60 s", "16/40 batches, 60 s")
            self.last = time.monotonic()

    def set_postfix(self, **values: str) -> None:
        """tqdm's running figures, added to the next line."""
        self.postfix = "".join(f", {name} {value}" for name, value in values.items())

    def close(self) -> None:
        with _LOCK:
            if self in _OPEN:
                _OPEN.remove(self)

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _heartbeat() -> None:
    """Every second: the innermost open loop says that it runs if it has been silent too long."""
    while not _STOP.wait(1.0):  # an Event's wait: a test that patches time.sleep does not make it spin
        with _LOCK:
            innermost = _OPEN[-1] if _OPEN else None
        if innermost is not None:
            innermost.beat()


def _start_heartbeat() -> None:
    global _beating
    with _LOCK:
        if _beating is None:
            _beating = threading.Thread(target=_heartbeat, name="ntkrobust-progress", daemon=True)
            _beating.start()


def _after_fork() -> None:  # a forked child has no heartbeat thread, and no loop of its parent's
    global _beating, _LOCK
    _beating, _LOCK = None, threading.Lock()  # the parent's thread may have held the lock
    _OPEN.clear()


os.register_at_fork(after_in_child=_after_fork)


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
