"""Output locations: checked before any compute, locked while a run writes, staged atomically.

- ``check_out_dir`` / ``check_out_file`` / ``check_writable``: an ``--out`` (or a cache folder)
  that cannot be created is refused before the compute starts, not after it.
- ``OutputLock``: a run holds ``.NAME.lock`` beside its ``--out`` (linked in whole, so never seen
  empty, or created with ``O_EXCL``; holding the holder's pid and host), so a second run into the
  same folder is refused instead of silently replacing the first one's files; a lock whose process
  is gone from this host is stale and taken over (one of another host's is left to the user: no
  process there can be asked).
- ``StagedOutput``: files are written into a hidden ``.NAME.PID.*.partial`` folder beside
  ``--out`` and moved in only when all of them were written; staging folders of processes that
  died (SIGKILL) are removed by the next run into the same parent.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType

from ntkrobust.bridge.files import not_a_file
from ntkrobust.studies._errors import StudyError

#: this machine's name, in a lock beside its pid: on storage that several machines share, a pid
#: alone cannot tell a live run elsewhere from a dead one here
_HOST = socket.gethostname() or "unknown"


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def _holder(text: str | None) -> tuple[int, str | None] | None:
    """A lock's process id and host (None for a lock written before hosts were recorded)."""
    try:
        pid, _, host = (text or "").strip().partition(" ")  # a host's name may hold spaces
        return int(pid), host or None
    except ValueError:
        return None


def check_writable(path: Path, flag: str) -> None:
    """Refuse ``path`` when the nearest folder that exists above it (or itself) is a file or
    does not let this process create files there (tried, not guessed: root on a read-only mount,
    permissions, a full inode table)."""
    _refuse_dangling_link(path, flag)
    if path.exists() and not path.is_dir():
        raise StudyError(f"{flag} {path} exists and is not a folder")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StudyError(f"{flag} {path}: {ancestor} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ntkrobust-check.", dir=ancestor))
    except OSError as err:
        raise StudyError(f"{flag} {path}: cannot create files in {ancestor} ({err.strerror})") from None


#: what the names made beside an ``--out`` add to its name: the staging folder
#: ``.NAME.PID.XXXXXXXX.partial`` (a pid of up to 7 digits, Linux's largest pid_max), an atomic
#: write's ``.NAME.XXXXXXXX.tmp`` (make-npz's file) and the lock ``.NAME.lock`` (a run folder)
BESIDE = {
    "staging folder": len(".." + "4194304" + "." + "XXXXXXXX" + ".partial"),
    "temporary file": len(".." + "XXXXXXXX" + ".tmp"),
    "lock": len("." + ".lock"),
}


def check_name_length(path: Path, flag: str, beside: str = "staging folder") -> None:
    """Refuse an ``--out`` whose name leaves no room for the hidden ``beside`` made next to it: the
    move into place failed with "File name too long" only after the whole compute, naming the
    hidden staging folder."""
    ancestor = path.parent
    while ancestor != ancestor.parent and not _is_folder(ancestor):
        ancestor = ancestor.parent
    try:
        limit = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in path.parent.parts:
        if len(os.fsencode(part)) > limit:
            raise StudyError(f"{flag}: the folder name {part[:24]}… is longer than the {limit} bytes a name may have")
    size, room = len(os.fsencode(path.name)), limit - BESIDE[beside]
    if size > room:
        raise StudyError(
            f"{flag}'s name is {size} bytes long ({path.name[:24]}…); the hidden {beside} made beside it "
            f"adds {BESIDE[beside]}, beyond the {limit} bytes a name may have there: use at most {room}"
        )


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system
        return False


def _refuse_dangling_link(path: Path, flag: str) -> None:
    # exists() follows the link: a dangling one passes every other check, and writing the
    # output after the compute then fails
    if path.is_symlink() and not path.exists():
        raise StudyError(f"{flag} {path} is a link to {os.readlink(path)}, which does not exist")


def holds_files(out: Path) -> bool:
    """Whether ``out`` is a folder with anything in it (what ``--out`` without ``--force`` and
    ``StudyResult.save`` without ``overwrite`` refuse)."""
    return out.is_dir() and any(out.iterdir())


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, a non-empty folder unless ``force``, or that cannot be
    created."""
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} exists and is not a folder")
    if holds_files(out) and not force:
        raise StudyError(f"--out {out} exists and is not empty (use --force to overwrite)")
    check_writable(out, "--out")


def check_out_file(out: Path, force: bool, *, suffix: str) -> None:
    """Refuse an output file without ``suffix``, an existing one unless ``force``, a folder, or
    one whose folder cannot be created."""
    if out.suffix != suffix:
        raise StudyError(f"--out must name an {suffix} file, got {out}")
    _refuse_dangling_link(out, "--out")
    if out.is_dir():
        raise StudyError(f"--out {out} is a folder")
    if out.exists() and not out.is_file():  # --force replaced a FIFO or a device with a file
        raise StudyError(f"--out {out} is not a regular file")
    if out.exists() and not force:
        raise StudyError(f"--out {out} exists (use --force to overwrite)")
    check_writable(out.parent, "--out's folder")


class OutputLock:
    """``with OutputLock(out):`` holds ``.NAME.lock`` beside ``out`` for this process.

    Re-entrant within one process (a study that locks inside a command that already did); a
    lock of a live process is a ``StudyError``; one of a dead process is removed and taken."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.parent / f".{out.name}.lock"
        self.owned = False
        self.made: list[Path] = []  # the folders above ``out`` that taking the lock created

    def __enter__(self) -> OutputLock:
        self.made = [folder for folder in (self.path.parent, *self.path.parent.parents) if not folder.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            for _ in range(3):  # a stale lock is removed, then taken; a lost race shows the winner's
                if self._create():
                    self.owned = True
                    return self
                squatter = not_a_file(self.path)  # a FIFO would block the read for good, /dev/zero never end it
                if squatter in ("is not a regular file", "is a folder"):
                    raise StudyError(f"--out {self.out}: its lock {self.path} {squatter}: move it away")
                text = _read(self.path)
                holder = _holder(text)
                if holder is not None:
                    pid, host = holder
                    if host not in (None, _HOST):  # a process on another machine: none to ask if it lives
                        raise StudyError(
                            f"--out {self.out} is in use by a run on {host} (pid {pid}); if none is running there, "
                            f"delete its lock {self.path}"
                        )
                    if pid == os.getpid():
                        return self  # already ours: the outer holder releases it
                    if _alive(pid):
                        raise StudyError(f"--out {self.out} is in use by another run (pid {pid}, lock {self.path})")
                self._remove_stale(text)  # its process is gone
        except BaseException:  # a full disk: no folders left behind
            self._remove_made_folders()
            raise
        raise StudyError(f"cannot take the lock {self.path}: another run keeps taking it")

    def _create(self) -> bool:
        """Create the lock already holding this process's pid and host, or False where one exists.
        It is written under a name of its own, then linked in: another run never sees it empty
        (it would take an empty lock for a stale one)."""
        line = f"{os.getpid()} {_HOST}\n"
        # a fixed-length name: it fits wherever the lock's name does
        handle, written = tempfile.mkstemp(prefix=".ntkrobust-lock.", dir=self.path.parent)
        try:
            os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide the holder from another user's run
            with os.fdopen(handle, "w") as f:
                f.write(line)
            os.link(written, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            return self._create_in_place(line)  # a file system without hard links
        finally:
            os.unlink(written)

    def _create_in_place(self, line: str) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(handle, "w") as f:
                f.write(line)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return True

    def _remove_stale(self, text: str | None) -> None:
        """Remove the lock read as ``text`` and judged stale. It is moved aside first and compared:
        a run that took it over in the meantime (having judged it stale too) gets its lock back,
        instead of two runs each holding one."""
        aside = self.path.with_name(f".ntkrobust-stale-lock.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another run removed it
            return
        if _read(aside) != text:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False
            self._remove_made_folders()

    def _remove_made_folders(self) -> None:
        for folder in self.made:  # deepest first: a refused run leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote there), or gone
                break


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove staging folders of ``out`` left by processes that no longer run; the removed ones."""
    removed = []
    # .NAME.PID.RANDOM.partial exactly: that of an --out named NAME.N has a dot more (N is no pid)
    own = re.compile(rf"\.{re.escape(out.name)}\.(\d+)\.[^.]+\.partial")
    for stage in out.parent.glob(f".{glob.escape(out.name)}.*.partial"):
        match = own.fullmatch(stage.name)
        if match and not _alive(int(match[1])) and stage.is_dir():
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    return removed


class StagedOutput:
    """Files written into a hidden staging folder beside ``out`` and moved in on ``commit``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out)
        self.stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))

    def path(self, name: str) -> Path:
        return self.stage / name

    def commit(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for f in sorted(self.stage.iterdir()):
            os.replace(f, self.out / f.name)
        self.stage.rmdir()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.stage)
