"""Files written atomically: a crash never leaves a half-written result (DESIGN.md, outputs); and
files read without unpickling, with a refusal said in a few words of ours (torch's and numpy's own
messages tell the reader to load the file unsafely)."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust._messages import first_line


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(temporary)`` fills a temporary file beside ``path``, which is renamed into place
    only if ``write`` succeeds. The file gets the mode of any new file (the umask's), not the
    private 0600 that ``mkstemp`` gives. Under torchrun only rank 0 writes (``bridge.distributed``):
    every process computes the same files, one of them keeps them."""
    path = Path(path)
    group = sys.modules.get("torch.distributed")  # looked up, not imported: this module stays light
    if group is not None and group.is_available() and group.is_initialized() and group.get_rank() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():  # before the write, and named as itself: os.replace names the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def add_file_bytes(digest: Any, path: Path) -> None:
    """Feed the bytes of the file ``path`` to ``digest`` (a ``hashlib`` object), a MiB at a time."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)


def file_digest(path: Path) -> str:
    """SHA-256 of one file's bytes (hex)."""
    digest = hashlib.sha256()
    add_file_bytes(digest, path)
    return digest.hexdigest()


def json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats (t = inf) become the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """``payload`` as strict, indented JSON, written atomically."""
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"
    return write_atomically(path, lambda temporary: temporary.write_text(text))


class JsonFileError(ValueError):
    """A JSON file that cannot be read; the message is the reason in a few words, for the caller
    to put after the file's name and what it was to be."""


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path``, or ``JsonFileError``: every reader of run and reproduction
    files says the same reasons (a parser's own errors are a traceback for arrays nested thousands
    deep, and a paragraph of advice for an integer of more digits than Python converts)."""
    path = Path(path)
    if special_file(path):
        raise JsonFileError("is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JsonFileError("not UTF-8 text") from None
    except OSError as error:
        raise JsonFileError(first_line(error)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise JsonFileError(f"unreadable JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:  # Python's parser recurses into each array and object
        raise JsonFileError("unreadable JSON (nested too deeply)") from None
    except ValueError as error:  # an integer of more than 4300 digits: its advice cut off
        raise JsonFileError(f"unreadable JSON ({first_line(error).split(';')[0]})") from None


def not_a_file(path: Path) -> str | None:
    """Why ``path`` is no regular file to read ("is a folder", "is not a regular file" for a FIFO
    or a device, "is a symbolic link that loops", "does not exist"), or None where it is one."""
    try:
        if path.is_file():
            return None
        if path.is_dir():
            return "is a folder"
        if path.exists():
            return "is not a regular file"
    except OSError as error:  # a name too long for the file system
        return error.strerror or first_line(error)
    return "is a symbolic link that loops" if path.is_symlink() and _loops(path) else "does not exist"


def special_file(path: Path) -> bool:
    """Whether ``path`` is a FIFO, a device or a socket: something that exists, neither a regular
    file nor a folder, whose open or read may block for good (a FIFO) or never end (/dev/zero)."""
    return not_a_file(path) == "is not a regular file"


def _loops(path: Path) -> bool:
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for a loop
        return True
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def program_kind(path: Path) -> str | None:
    """ "a TorchScript program" or "an exported program (.pt2)" when the zip archive ``path`` is one
    (told from its member names, nothing of it loaded), else None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return "a TorchScript program"
    if any(name.endswith("/archive_format") or "/models/" in name for name in names):
        return "an exported program (.pt2)"
    return None


def unreadable_reason(path: Path) -> str | None:
    """Why the file ``path`` cannot be opened for reading ("Permission denied", "Too many levels of
    symbolic links", "is not a regular file" for a FIFO, whose open blocks until a writer comes,
    or a device), or None: ``zipfile.is_zipfile`` says False for it, which reads as damage."""
    if special_file(path):  # checked before open(): a FIFO would block it
        return "is not a regular file"
    try:
        with open(path, "rb"):
            return None
    except OSError as error:
        return error.strerror or first_line(error)


def refusal_reason(path: Path, error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` or ``np.load(allow_pickle=False)`` refused ``path``,
    in a few words."""
    unreadable = unreadable_reason(path)
    if unreadable:
        return unreadable
    if not zipfile.is_zipfile(path):  # torch.save and np.savez both write zip archives
        return "not a zip archive, or a truncated one"
    if isinstance(error, pickle.UnpicklingError) or "allow_pickle" in str(error):
        return "it holds pickled Python objects, which are never unpickled here: that could run code"
    text = first_line(error)  # torch's can run on for a paragraph: cut at a word
    return text if len(text) <= 120 else text[: text.rfind(" ", 0, 120)] + " …"


class NpzError(ValueError):
    """An .npz that cannot be read as plain arrays; the message is one line without the path."""


def read_npz(path: Path, keys: Sequence[str] | None, *, required: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (those it holds; None: all of them, in the archive's order) of the .npz
    at ``path``, never unpickling; ``NpzError`` when it is not a zip archive of plain arrays
    (``np.load`` reads a .npy as one array and any other file as a pickle) or lacks one of ``required``."""
    unreadable = unreadable_reason(path)
    if unreadable:
        raise NpzError(unreadable)
    if not zipfile.is_zipfile(path):
        raise NpzError("not an .npz (zip) archive, or a truncated one")
    try:
        if keys is None:
            with zipfile.ZipFile(path) as archive:
                keys = [info.filename.removesuffix(".npy") for info in archive.infolist()]
        _check_declared_sizes(path, keys)
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in required if k not in data.files]
            if missing:
                raise NpzError(f"lacks array(s) {', '.join(missing)} (has {', '.join(data.files) or 'none'})")
            return {k: np.asarray(data[k]) for k in keys if k in data.files}
    except NpzError:
        raise
    # a truncated or corrupted archive (bad zip, bad CRC, a broken deflate stream), or object arrays
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise NpzError(refusal_reason(path, error)) from None
    # zipfile's own refusals of a member it cannot read (tracebacks before): NotImplementedError
    # for an unknown compression method, and RuntimeError, its base class, for an encrypted one
    except NotImplementedError:
        raise NpzError("a member of it is compressed by a method this zip reader does not support") from None
    except RuntimeError as error:
        if "encrypted" not in str(error):
            raise
        raise NpzError("a member of it is encrypted (password-protected); numpy reads plain archives") from None
    except MemoryError:  # arrays within the machine's memory (checked first) that still did not fit
        raise NpzError("its arrays do not fit in this machine's memory") from None


def _physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _check_declared_sizes(path: Path, keys: Sequence[str]) -> None:
    """``NpzError`` for an array of ``keys`` whose .npy header declares more bytes than its
    archive member holds, or than this machine's memory. numpy allocates the declared shape
    before reading a byte of data, so a corrupt or hostile header (10^12 floats in a few bytes)
    would otherwise end in a MemoryError (or in swapping) instead of a refusal. What a member
    holds is the zip directory's uncompressed size; a directory forged to match the header is
    still held to the memory bound, and reading stops with an error where the data ends."""
    memory = _physical_memory()
    with zipfile.ZipFile(path) as archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        for key in keys:
            info = members.get(key)
            if info is None:
                continue
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                except ValueError:
                    continue  # not a .npy: np.load hands back its bytes, which the caller refuses
                # version 3 differs from 2 only in a UTF-8 header, which an ASCII one also is
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                try:
                    shape, _, dtype = read_header(member)
                except (ValueError, SyntaxError, RecursionError, MemoryError, OverflowError):
                    raise NpzError(f"{key} has an unreadable .npy header") from None
                held = info.file_size - member.tell()
            declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            if declared > held:
                raise NpzError(
                    f"{key} declares shape {shape} of {dtype} ({_bytes(declared)}) but holds {_bytes(held)}: "
                    "a corrupt or forged array header"
                )
            if memory is not None and declared > memory:
                raise NpzError(f"{key} of shape {shape} needs {_bytes(declared)}, more than this machine's memory")


def _bytes(count: int) -> str:
    """A byte count for a message: '812 bytes', '3.6 TiB'."""
    size, unit = float(count), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{count} bytes" if unit == "bytes" else f"{size:.3g} {unit}"
