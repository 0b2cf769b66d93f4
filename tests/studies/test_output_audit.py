"""Audit of the output locations (``studies._output``): the checks before compute, the lock
beside ``--out`` and the staging folder.

The independent routes: the file system itself (``os.listdir``, ``os.stat``'s inode, names
created with ``os.mkdir`` / ``os.open`` up to the limit ``os.pathconf`` reports), locks held by
other processes (subprocesses that take or test the lock), and the name lengths written here by
hand from the documented formats (``.NAME.lock``, ``.NAME.PID.XXXXXXXX.partial``,
``.NAME.XXXXXXXX.tmp``). This process runs as root here, so the read-only cases are made by a
refusing ``mkdtemp`` (what a read-only mount answers even to root), not by ``chmod``."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest

from ntkrobust.studies import StudyError, _output
from ntkrobust.studies._output import (
    OutputLock,
    StagedOutput,
    check_name_length,
    check_out_dir,
    check_out_file,
    check_writable,
    remove_stale_staging,
)


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _try_lock_elsewhere(out) -> str:
    """What another process says when it takes ``OutputLock(out)``: "taken" or the refusal."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from ntkrobust.studies import StudyError
        from ntkrobust.studies._output import OutputLock
        try:
            with OutputLock(Path({str(out)!r})):
                print("taken")
        except StudyError as err:
            print(err)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --- the checks before compute ---------------------------------------------------------------


def test_a_dangling_link_as_out_is_refused_by_every_check(tmp_path):
    """A link to nothing passes ``exists()``; the write after the compute then fails."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    for check in (lambda: check_writable(link, "--out"), lambda: check_out_dir(link, force=True)):
        with pytest.raises(StudyError, match=r"is a link to .*nowhere, which does not exist"):
            check()
    npz = tmp_path / "d.npz"
    npz.symlink_to(tmp_path / "nowhere.npz")
    with pytest.raises(StudyError, match=r"d.npz is a link to .*nowhere.npz, which does not exist"):
        check_out_file(npz, force=True, suffix=".npz")
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "out"]  # nothing made while checking


def test_check_writable_names_a_file_where_a_folder_is_wanted(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudyError, match=r"^--out .*file exists and is not a folder$"):
        check_writable(tmp_path / "file", "--out")
    with pytest.raises(StudyError, match=r"file/a/b: .*file is a file, not a folder$"):
        check_writable(tmp_path / "file" / "a" / "b", "--out")


def test_the_probe_is_made_in_the_nearest_folder_that_exists_and_removed(tmp_path, monkeypatch):
    """The folder a write is tried in is ``tmp/a`` for ``tmp/a/b/c`` (``b`` does not exist yet),
    and the probe leaves the folder as it was (listed before and after)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep").write_text("x")
    tried = []
    real = tempfile.mkdtemp

    def recorded(*args, **kwargs):
        tried.append(kwargs["dir"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", recorded)
    check_writable(tmp_path / "a" / "b" / "c", "--out")
    check_out_dir(tmp_path / "a" / "b" / "c", force=False)
    check_out_file(tmp_path / "a" / "b" / "d.npz", force=False, suffix=".npz")
    assert [os.fspath(d) for d in tried] == [os.fspath(tmp_path / "a")] * 3
    assert sorted(os.listdir(tmp_path)) == ["a"] and sorted(os.listdir(tmp_path / "a")) == ["keep"]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_any_refusal_to_create_a_file_is_one_study_error(tmp_path, monkeypatch, code):
    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    for check in (lambda: check_out_dir(tmp_path / "out", force=False),
                  lambda: check_out_file(tmp_path / "d.npz", force=False, suffix=".npz")):  # fmt: skip
        with pytest.raises(StudyError, match=f"cannot create files in .* \\({os.strerror(code)}\\)"):
            check()


def test_a_non_empty_out_needs_force_and_force_lets_it_pass(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    check_out_dir(out, force=False)  # empty: no force needed
    (out / ".hidden").write_text("x")  # any entry counts, a hidden one too
    with pytest.raises(StudyError, match=r"exists and is not empty \(use --force"):
        check_out_dir(out, force=False)
    check_out_dir(out, force=True)
    assert os.listdir(out) == [".hidden"]


def test_an_existing_output_file_needs_force_and_passes_with_it(tmp_path):
    npz = tmp_path / "d.npz"
    check_out_file(npz, force=False, suffix=".npz")
    npz.write_bytes(b"old")
    with pytest.raises(StudyError, match=r"exists \(use --force to overwrite\)"):
        check_out_file(npz, force=False, suffix=".npz")
    check_out_file(npz, force=True, suffix=".npz")  # replaced later: its folder is what is checked
    with pytest.raises(StudyError, match=r"--out must name an .npz file, got .*d.npy"):
        check_out_file(tmp_path / "d.npy", force=True, suffix=".npz")
    assert npz.read_bytes() == b"old"


def test_name_lengths_fit_exactly_what_the_file_system_takes(tmp_path):
    """The longest ``--out`` name accepted leaves its lock, staging folder and temporary exactly
    ``NAME_MAX`` bytes long: the file system creates each at that length and refuses one byte
    more (ENAMETOOLONG). Formats by hand: ``.N.lock`` adds 6, ``.N.4194304.XXXXXXXX.partial``
    adds 2 + 7 + 1 + 8 + 8 = 26, ``.N.XXXXXXXX.tmp`` adds 2 + 8 + 4 = 14."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    beside = {"lock": (6, lambda n: f".{n}.lock"),
              "staging folder": (26, lambda n: f".{n}.4194304.abcdefgh.partial"),
              "temporary file": (14, lambda n: f".{n}.abcdefgh.tmp")}  # fmt: skip
    for kind, (added, made) in beside.items():
        longest = "n" * (limit - added)
        check_name_length(tmp_path / longest, "--out", kind)
        with pytest.raises(StudyError, match=f"use at most {limit - added}$"):
            check_name_length(tmp_path / (longest + "n"), "--out", kind)
        assert len(made(longest)) == limit
        os.mkdir(tmp_path / made(longest))  # fits
        with pytest.raises(OSError) as too_long:
            os.mkdir(tmp_path / made(longest + "n"))
        assert too_long.value.errno == errno.ENAMETOOLONG
        os.rmdir(tmp_path / made(longest))
    # the real makers at the longest name: the lock, the staging folder, the atomic write
    longest = "n" * (limit - 6)
    with OutputLock(tmp_path / longest):
        assert os.listdir(tmp_path) == [f".{longest}.lock"]
    from ntkrobust.bridge.files import write_atomically

    write_atomically(tmp_path / ("t" * (limit - 14)), lambda p: p.write_bytes(b"x"))
    staged = StagedOutput(tmp_path / ("s" * (limit - 26)))
    assert len(staged.stage.name) == 2 + (limit - 26) + len(str(os.getpid())) + 1 + 8 + len(".partial")
    staged.discard()


def test_name_lengths_count_bytes_and_every_folder_above(tmp_path):
    """ "é" is two bytes in UTF-8: a name of few characters and many bytes is refused; a folder
    name of exactly ``NAME_MAX`` bytes above ``--out`` is taken (it exists), one byte more is not."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    room = limit - 6
    wide = "é" * (room // 2 + 1)  # fewer characters than room, more bytes
    assert len(wide) <= room < len(wide.encode())
    with pytest.raises(StudyError, match=f"name is {len(wide.encode())} bytes long"):
        check_name_length(tmp_path / wide, "--out", "lock")
    (tmp_path / ("d" * limit)).mkdir()
    check_name_length(tmp_path / ("d" * limit) / "out", "--out", "lock")
    with pytest.raises(StudyError, match=f"is longer than the {limit} bytes a name may have"):
        check_name_length(tmp_path / ("d" * (limit + 1)) / "out", "--out", "lock")


# --- the lock ----------------------------------------------------------------------------------


def test_each_out_has_its_own_hidden_lock_named_after_its_whole_name(tmp_path):
    """``a.x`` and ``a.y`` share a stem, not a lock: both are held at once, and another process
    holding ``a.x``'s does not block ``a.y``."""
    with OutputLock(tmp_path / "a.x"), OutputLock(tmp_path / "a.y"):
        assert sorted(os.listdir(tmp_path)) == [".a.x.lock", ".a.y.lock"]
        assert _try_lock_elsewhere(tmp_path / "a.y").startswith("--out ")  # held: refused
        assert _try_lock_elsewhere(tmp_path / "a.z") == "taken"
    assert os.listdir(tmp_path) == []


def test_an_inner_lock_of_the_same_process_leaves_the_outer_one_held(tmp_path):
    """Re-entrant: after the inner ``with`` the lock is still there, with this pid, and another
    process is still refused; only the outer one's exit removes it."""
    out, lock = tmp_path / "out", tmp_path / ".out.lock"
    with OutputLock(out):
        with OutputLock(out):
            pass
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        said = _try_lock_elsewhere(out)
        assert said.startswith(f"--out {out} is in use by another run (pid {os.getpid()}"), said
    assert os.listdir(tmp_path) == []
    assert _try_lock_elsewhere(out) == "taken"


def test_a_lock_of_pid_zero_or_an_empty_lock_is_stale(tmp_path):
    """No process has pid 0 (``kill(0, 0)`` would signal this process group, which lives); a lock
    left empty (a kill between its creation and its write) names no process: both are taken."""
    out, lock = tmp_path / "out", tmp_path / ".out.lock"
    for content in (f"0 {socket.gethostname()}\n", "0\n", ""):
        lock.write_text(content)
        with OutputLock(out):
            assert lock.read_text().split() == [str(os.getpid()), socket.gethostname()]
        assert os.listdir(tmp_path) == []


def test_a_holder_this_process_may_not_signal_is_alive(tmp_path, monkeypatch):
    """``kill(pid, 0)`` answers EPERM for another user's live process (not for root, so the
    answer is made here): its lock is refused and kept."""
    out, lock = tmp_path / "out", tmp_path / ".out.lock"
    pid = _dead_pid()
    lock.write_text(f"{pid} {socket.gethostname()}\n")

    def not_permitted(target, signal):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "kill", not_permitted)
    with pytest.raises(StudyError, match=f"in use by another run \\(pid {pid}, lock "):
        with OutputLock(out):
            pass
    monkeypatch.undo()
    assert lock.read_text() == f"{pid} {socket.gethostname()}\n"


def test_a_lock_held_by_a_live_process_elsewhere_is_kept_while_it_runs(tmp_path):
    """Another process holds the lock (it takes it itself and waits): this one is refused, the
    lock keeps the holder's pid, and once the holder exits the lock is gone."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from ntkrobust.studies._output import OutputLock
        with OutputLock(Path({str(out)!r})):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyError, match=f"in use by another run \\(pid {holder.pid}, lock "):
            with OutputLock(out):
                pass
        assert (tmp_path / ".out.lock").read_text() == f"{holder.pid} {socket.gethostname()}\n"
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and os.listdir(tmp_path) == []


def test_the_folders_a_lock_made_are_removed_deepest_first_unless_written(tmp_path):
    with OutputLock(tmp_path / "a" / "b" / "c" / "out"):
        assert os.listdir(tmp_path / "a" / "b" / "c") == [".out.lock"]
    assert os.listdir(tmp_path) == []
    (tmp_path / "a").mkdir()
    with OutputLock(tmp_path / "a" / "b" / "c" / "out"):
        (tmp_path / "a" / "b" / "c" / "out").mkdir()  # the run wrote: its folders stay
    assert os.listdir(tmp_path / "a" / "b" / "c") == ["out"]


def test_a_lock_whose_write_fails_leaves_no_lock_and_no_folders(tmp_path, monkeypatch):
    """The lock is created (O_EXCL) and then written: a write that fails (a full disk; here a
    host name the file's encoding cannot write) left an empty lock and the folders made for it.
    Failed before the fix: ``.out.lock`` (0 bytes) and ``a/b`` stayed."""
    monkeypatch.setattr(_output, "_HOST", "host\udcff")  # a lone surrogate: no UTF-8 for it
    with pytest.raises(UnicodeEncodeError):
        with OutputLock(tmp_path / "a" / "b" / "out"):
            pass
    assert os.listdir(tmp_path) == []


def test_a_lock_is_never_seen_empty(tmp_path, monkeypatch):
    """Another run that reads the lock between its creation and its write finds it empty and
    takes it for a stale one (an empty lock names no process). So every moment the lock's name
    exists, it holds its line: each call into the file system is watched. Failed before the fix:
    the lock existed, empty, when its file was opened for the write."""
    out, lock = tmp_path / "out", tmp_path / ".out.lock"
    seen = []

    def watched(name):
        real = getattr(os, name)

        def call(*args, **kwargs):
            if lock.exists():
                seen.append((name, lock.read_text()))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, call)

    for name in ("open", "fdopen", "write", "link", "unlink", "rename"):
        watched(name)
    with OutputLock(out):
        seen.append(("held", lock.read_text()))
        assert lock.stat().st_mode & 0o777 == 0o644  # another user's run reads the holder
    line = f"{os.getpid()} {socket.gethostname()}\n"
    assert seen and all(text == line for _, text in seen), seen
    assert os.listdir(tmp_path) == []


def test_a_stale_lock_taken_over_by_another_run_first_is_left_to_it(tmp_path, monkeypatch):
    """Two runs find the same stale lock; the other one removes it and takes the lock while this
    one asks whether the dead holder lives. This one must then refuse, not remove the other's
    fresh lock and run beside it. Made by hand: asking about the dead pid lets a live process
    take the lock first. Failed before the fix: this run removed that lock and took its own."""
    out, lock = tmp_path / "out", tmp_path / ".out.lock"
    dead = _dead_pid()
    lock.write_text(f"{dead} {socket.gethostname()}\n")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    real_alive = _output._alive

    def another_run_takes_it_meanwhile(pid):
        if pid == dead:
            lock.unlink()
            lock.write_text(f"{other.pid} {socket.gethostname()}\n")
        return real_alive(pid)

    monkeypatch.setattr(_output, "_alive", another_run_takes_it_meanwhile)
    try:
        with pytest.raises(StudyError, match=f"in use by another run \\(pid {other.pid}, lock "):
            with OutputLock(out):
                pass
        assert lock.read_text() == f"{other.pid} {socket.gethostname()}\n"
        assert os.listdir(tmp_path) == [".out.lock"]
    finally:
        other.kill()
        other.wait()


def test_a_lock_on_a_file_system_without_hard_links_is_made_in_place(tmp_path, monkeypatch):
    """Where ``link`` is refused (EPERM: FAT, some network mounts), the lock is created with
    O_EXCL and written; it holds the same line and goes when released."""

    def no_links(*args, **kwargs):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    out, lock = tmp_path / "out", tmp_path / ".out.lock"
    with OutputLock(out):
        assert os.listdir(tmp_path) == [".out.lock"]
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        assert _try_lock_elsewhere(out).startswith(f"--out {out} is in use by another run (pid {os.getpid()}")
    assert os.listdir(tmp_path) == []


# --- the staging folder ------------------------------------------------------------------------


def test_a_new_staging_folder_removes_the_dead_ones_of_its_out_only(tmp_path):
    """``StagedOutput(out)`` itself clears the staging folders of dead processes; a file of such
    a name, and the staging folders of another ``--out``, stay."""
    dead = _dead_pid()
    stale = tmp_path / f".out.{dead}.abcdefgh.partial"
    stale.mkdir()
    (stale / "half.npz").write_bytes(b"x")
    not_a_folder = tmp_path / f".out.{dead}.ijklmnop.partial"
    not_a_folder.write_text("x")
    others = tmp_path / f".other.{dead}.qrstuvwx.partial"
    others.mkdir()
    staged = StagedOutput(tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == sorted([not_a_folder.name, others.name, staged.stage.name])
    assert remove_stale_staging(tmp_path / "out") == []
    staged.discard()
    assert sorted(os.listdir(tmp_path)) == sorted([not_a_folder.name, others.name])


def test_a_live_staging_folder_of_an_out_whose_name_extends_this_one_stays(tmp_path):
    """``run.<N>`` (a date, a seed) is another ``--out``: its live staging folder
    ``.run.<N>.<PID>.XXXXXXXX.partial`` also matches ``.run.*.partial``, and N, read as the pid of
    a process that is gone, had a run into ``run`` delete the folder mid-run. Failed before the
    fix: the live folder was removed (with N a dead pid, and N 20241205, no pid at all)."""
    for number in (_dead_pid(), 20241205):
        live = StagedOutput(tmp_path / f"run.{number}")  # this process is alive
        (live.path("results.json")).write_text("{}")
        assert remove_stale_staging(tmp_path / "run") == []
        StagedOutput(tmp_path / "run").discard()
        assert live.stage.is_dir() and os.listdir(live.stage) == ["results.json"]
        live.discard()
    assert os.listdir(tmp_path) == []


def test_glob_characters_in_an_out_name_are_taken_literally(tmp_path):
    """``run[1]`` as a glob matches ``run1``: its stale staging folders are its own to remove,
    not those of ``run1``."""
    dead = _dead_pid()
    mine = tmp_path / f".run[1].{dead}.abcdefgh.partial"
    theirs = tmp_path / f".run1.{dead}.abcdefgh.partial"
    mine.mkdir()
    theirs.mkdir()
    assert remove_stale_staging(tmp_path / "run[1]") == [mine]
    assert os.listdir(tmp_path) == [theirs.name]


def test_commit_moves_each_staged_file_and_leaves_no_staging_folder(tmp_path):
    """A move, not a copy: each file keeps its inode (``os.stat``); the hidden folder is gone."""
    out = tmp_path / "out"
    staged = StagedOutput(out)
    assert staged.stage.name.startswith(f".out.{os.getpid()}.") and staged.stage.name.endswith(".partial")
    inodes = {}
    for name, payload in (("a.json", b"{}"), ("b.npz", b"\x00" * 100)):
        staged.path(name).write_bytes(payload)
        inodes[name] = os.stat(staged.path(name)).st_ino
    assert os.listdir(tmp_path) == [staged.stage.name]  # nothing in place before the commit
    staged.commit()
    assert os.listdir(tmp_path) == ["out"] and sorted(os.listdir(out)) == ["a.json", "b.npz"]
    assert {name: os.stat(out / name).st_ino for name in inodes} == inodes
    assert (out / "b.npz").read_bytes() == b"\x00" * 100


def test_discard_leaves_nothing_behind(tmp_path):
    staged = StagedOutput(tmp_path / "sub" / "out")
    staged.path("x.json").write_text("{}")
    staged.discard()
    assert os.listdir(tmp_path / "sub") == []
