"""Audit of ``bridge.files`` (atomic writes, what is no file to read, the refusal reasons) and of
``_messages``: each test failed on a mutant of the code that the other tests let through. Files
are built here by hand; the expected values are read off the file system (``os.stat``, listings)
rather than from the code under test."""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from pathlib import Path

import pytest

from ntkrobust._messages import NAME_LIMIT, first_line, name_problem, shown_name
from ntkrobust.bridge.files import (
    JsonFileError,
    json_safe,
    not_a_file,
    program_kind,
    read_json,
    refusal_reason,
    write_atomically,
    write_json,
)
from ntkrobust.bridge.runfolder import RunFolder

# -- write_atomically: all or nothing ----------------------------------------------------------


class _Boom(Exception):
    pass


@pytest.mark.parametrize("error", [_Boom, OSError, KeyboardInterrupt], ids=["exception", "oserror", "interrupt"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    """The write fails after half its bytes (an exception, a full disk, Ctrl-C): the old file is
    there byte for byte and the folder holds nothing else (the temporary file is removed)."""
    path = tmp_path / "results.json"
    path.write_text("old contents\n")

    def half(temporary: Path) -> None:
        temporary.write_text("half of the new")
        raise error("stopped")

    with pytest.raises(error):
        write_atomically(path, half)
    assert path.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_failed_first_write_leaves_nothing_at_all(tmp_path):
    path = tmp_path / "new" / "results.json"
    with pytest.raises(_Boom):
        write_atomically(path, lambda temporary: (temporary.write_text("x"), (_ for _ in ()).throw(_Boom())))
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_the_temporary_file_is_hidden_beside_the_target_where_a_resume_finds_it(tmp_path):
    """The temporary file sits in the target's folder (so the rename never crosses file systems)
    and is named ``.NAME.*.tmp``, the pattern ``RunFolder.remove_temporaries`` clears after a kill."""
    run = RunFolder(tmp_path / "run")
    target = run.checkpoint(3)
    seen: list[Path] = []

    def killed(temporary: Path) -> None:
        seen.append(temporary)
        temporary.write_bytes(b"partial")
        os.link(temporary, temporary.with_name(temporary.name + ".kept"))  # what a kill -9 would leave
        raise _Boom

    with pytest.raises(_Boom):
        write_atomically(target, killed)
    (temporary,) = seen
    assert temporary.parent == target.parent
    assert temporary.name.startswith(".epoch_003.pt.") and temporary.name.endswith(".tmp")
    left = temporary.with_name(temporary.name + ".kept")
    left.rename(temporary)  # the leftover under the temporary's own name
    assert run.remove_temporaries() == [temporary] and not temporary.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_a_written_file_gets_the_mode_of_any_new_file(tmp_path, umask):
    """``mkstemp`` makes 0600 files; the written file has the umask's mode, as ``open`` gives."""
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        written = write_atomically(tmp_path / "atomic.txt", lambda temporary: temporary.write_text("x"))
    finally:
        os.umask(old)
    assert os.stat(written).st_mode & 0o777 == os.stat(plain).st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(("rank", "written"), [(0, True), (1, False), (3, False)])
def test_under_torchrun_only_rank_zero_writes(tmp_path, monkeypatch, rank, written):
    """Every process computes the same file; only rank 0 writes it, the others do not even call
    the writer (a process group faked on ``torch.distributed``)."""
    import torch.distributed as group

    monkeypatch.setattr(group, "is_available", lambda: True)
    monkeypatch.setattr(group, "is_initialized", lambda: True)
    monkeypatch.setattr(group, "get_rank", lambda group=None: rank)
    calls = []

    def write(temporary: Path) -> None:
        calls.append(temporary)
        temporary.write_text("rank 0's")

    path = tmp_path / "out" / "file.txt"
    assert write_atomically(path, write) == path
    assert path.exists() is written and len(calls) == int(written)
    if not written:
        assert not path.parent.exists() or list(path.parent.iterdir()) == []


# -- strict JSON ----------------------------------------------------------------------------------


def test_non_finite_floats_become_strings_wherever_they_sit(tmp_path):
    payload = {"t": math.inf, "neg": -math.inf, "bad": math.nan, "list": [1.0, math.nan], "tuple": (math.inf, 2)}
    payload["nested"] = {"deeper": [(-math.inf,)]}
    expected = {"t": "inf", "neg": "-inf", "bad": "nan", "list": [1.0, "nan"], "tuple": ["inf", 2]}
    expected["nested"] = {"deeper": [["-inf"]]}
    assert json_safe(payload) == expected
    path = write_json(tmp_path / "r.json", payload)

    def strict(constant: str) -> None:
        raise AssertionError(f"non-strict JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=strict) == expected
    assert path.read_text().endswith("}\n")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "unreadable JSON (nested too deeply)"),
        (b"{", "unreadable JSON (Expecting property name enclosed in double quotes at line 1)"),
        (b"1" * 5000, "unreadable JSON (Exceeds the limit (4300 digits) for integer string conversion"),
    ],
    ids=["not-utf8", "deep", "syntax", "huge-int"],
)
def test_read_json_says_one_short_reason(tmp_path, content, reason):
    path = tmp_path / "f.json"
    path.write_bytes(content)
    with pytest.raises(JsonFileError) as error:
        read_json(path)
    assert str(error.value).startswith(reason) and "\n" not in str(error.value), str(error.value)
    assert "sys.set_int_max_str_digits" not in str(error.value)


def test_a_folder_in_the_way_of_an_atomic_write_is_named_itself_and_nothing_is_written(tmp_path):
    """``os.replace`` onto a folder names the temporary file (".x.json.abc.tmp"), which the
    one-line refusals then quoted; the folder is now named, before anything is written."""
    from ntkrobust.bridge.files import write_json

    (tmp_path / "x.json").mkdir()
    with pytest.raises(IsADirectoryError) as error:
        write_json(tmp_path / "x.json", {"a": 1})
    assert error.value.filename == str(tmp_path / "x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_read_json_refuses_a_fifo_and_a_device_before_reading(tmp_path):
    """A FIFO named config.json blocked its reader until something wrote to it (for good, in a
    hostile run folder), and /dev/zero never ends: neither is read."""
    os.mkfifo(tmp_path / "config.json")
    for path in (tmp_path / "config.json", Path("/dev/zero")):
        with pytest.raises(JsonFileError, match=r"^is not a regular file$"):
            read_json(path)


def test_read_json_of_a_folder_or_missing_file_is_the_systems_words(tmp_path):
    with pytest.raises(JsonFileError, match=r"^\[Errno 21\] Is a directory"):
        read_json(tmp_path)
    with pytest.raises(JsonFileError, match=r"^\[Errno 2\] No such file or directory"):
        read_json(tmp_path / "none.json")


# -- what is no regular file --------------------------------------------------------------------


def test_not_a_file_names_each_kind_of_non_file(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    expected = {
        "file": None,
        "link": None,  # a link to a file is that file
        "folder": "is a folder",
        "fifo": "is not a regular file",
        "a": "is a symbolic link that loops",
        "dangling": "does not exist",
        "missing": "does not exist",
        "x" * 300: "File name too long",  # ENAMETOOLONG: pathlib raises it, not False
    }
    assert {name: not_a_file(tmp_path / name) for name in expected} == expected
    assert not_a_file(Path("/dev/null")) == "is not a regular file"  # a device


# -- program_kind: told from member names, nothing loaded ---------------------------------------


def _zip(path: Path, *names: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"")
    return path


@pytest.mark.parametrize(
    ("names", "kind"),
    [
        (("net/constants.pkl", "net/data.pkl"), "a TorchScript program"),
        (("net/code/__torch__.py", "net/data.pkl"), "a TorchScript program"),
        (("net/archive_format", "net/data.pkl"), "an exported program (.pt2)"),
        (("net/models/model.json",), "an exported program (.pt2)"),
        (("archive/data.pkl", "archive/version"), None),  # what torch.save writes
        ((), None),
    ],
)
def test_program_kind_from_the_member_names(tmp_path, names, kind):
    assert program_kind(_zip(tmp_path / "f.bin", *names)) == kind


def test_program_kind_of_what_is_no_zip_archive_is_none(tmp_path):
    (tmp_path / "junk").write_bytes(b"not a zip")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for name in ("junk", "missing", "a", "x" * 300):
        assert program_kind(tmp_path / name) is None, name
    assert program_kind(tmp_path) is None  # a folder: IsADirectoryError


# -- refusal_reason ------------------------------------------------------------------------------


def test_refusal_reasons_in_a_few_words(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    archive = _zip(tmp_path / "a.pt", "archive/data.pkl")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    said = "it holds pickled Python objects, which are never unpickled here: that could run code"
    assert refusal_reason(junk, pickle.UnpicklingError("x")) == "not a zip archive, or a truncated one"
    assert refusal_reason(archive, pickle.UnpicklingError("Weights only load failed.\nlong")) == said
    assert refusal_reason(archive, ValueError("Object arrays cannot be loaded when allow_pickle=False")) == said
    assert refusal_reason(tmp_path / "a", ValueError("x")) == "Too many levels of symbolic links"
    assert refusal_reason(tmp_path / "missing", ValueError("x")) == "No such file or directory"
    assert refusal_reason(archive, RuntimeError("short one\nsecond line")) == "short one"


def test_a_long_loader_message_is_cut_at_a_word(tmp_path):
    archive = _zip(tmp_path / "a.pt", "archive/data.pkl")
    words = " ".join(f"word{i:03d}" for i in range(40))  # 319 characters of 7-letter words
    said = refusal_reason(archive, RuntimeError(words))
    assert said.endswith(" …") and len(said) <= 122 and words.startswith(said[:-2])
    assert said[:-2] == words[: words.rfind(" ", 0, 120)]
    exact = "x" * 120
    assert refusal_reason(archive, RuntimeError(exact)) == exact  # 120 characters are kept whole


# -- _messages -----------------------------------------------------------------------------------


def test_first_line_of_an_error():
    assert first_line(ValueError("\n  what went wrong\nand a paragraph")) == "what went wrong"
    assert first_line(ValueError("what went wrong\nand more"), 15) == "what went wrong"  # fits: whole
    assert first_line(ValueError("what went wrong\nand more"), 4) == "wha…"  # no word fits: cut in it
    # torch's message under a limit of 80 ended "file not found. This is )" inside a parenthesis
    said = "PytorchStreamReader failed locating file constants.pkl: file not found. This is a zip file"
    assert first_line(RuntimeError(said), 80) == said[: said.index(" This")] + " …"
    assert first_line(ValueError("one two three four five six"), 16) == "one two three…"
    assert all(len(first_line(ValueError("x " * 50), n)) <= n for n in range(2, 60))
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(OSError("  \n ")) == "OSError"


def test_a_name_fits_up_to_the_limit_and_printable_on_one_line():
    assert NAME_LIMIT == 120
    assert name_problem("x" * 120) is None
    assert name_problem("x" * 121) == "is 121 characters long, more than the 120 a name may have"
    for bad in ("two\nlines", "red\x1b[31m", "tab\there", "bell\x07"):
        assert name_problem(bad) == "is not printable text on one line", bad
    assert name_problem("σ = 0.1, ε-ball") is None  # printable Unicode is fine


def test_a_shown_name_is_whole_up_to_its_limit():
    assert shown_name("x" * 24) == repr("x" * 24)
    assert shown_name("x" * 25) == repr("x" * 24) + "…"
    assert shown_name("ab", shown=1) == "'a'…"
    assert shown_name("a\nb") == "'a\\nb'"
