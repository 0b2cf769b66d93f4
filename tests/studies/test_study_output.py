"""Output locations: checked before compute, locked while written, no leftovers after kills,
full disks reported in one line (``studies._output`` and the command line around it)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

from ntkrobust.studies import StudyError
from ntkrobust.studies._output import OutputLock, StagedOutput, check_out_dir, check_out_file, remove_stale_staging


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_an_out_under_a_file_is_refused_before_compute(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudyError, match="is a file, not a folder"):
        check_out_dir(tmp_path / "file" / "sub" / "out", force=False)
    with pytest.raises(StudyError, match="exists and is not a folder"):
        check_out_file(tmp_path / "file" / "d.npz", force=False, suffix=".npz")
    with pytest.raises(StudyError, match="is a folder"):
        check_out_file(tmp_path, force=True, suffix="")


def test_an_out_where_no_file_can_be_created_is_refused(tmp_path, monkeypatch):
    import tempfile

    def refused(*args, **kwargs):  # what a read-only mount answers, even to root
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    with pytest.raises(StudyError, match=r"cannot create files in .* \(Read-only file system\)"):
        check_out_dir(tmp_path / "out", force=False)


def test_the_lock_refuses_a_live_holder_and_takes_a_stale_one(tmp_path):
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(f"{holder.pid}\n")
        with pytest.raises(StudyError, match=f"in use by another run \\(pid {holder.pid}"), OutputLock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    lock.write_text(f"{_dead_pid()}\n")  # its process is gone: taken over
    with OutputLock(out), OutputLock(out):  # and re-entrant within one process
        assert lock.read_text().split() == [str(os.getpid()), socket.gethostname()]
    assert not lock.exists()
    lock.write_text(f"{_dead_pid()} {socket.gethostname()}\n")  # with this host's name: the same
    with OutputLock(out):
        pass
    assert not lock.exists()


def test_a_lock_of_another_host_is_never_taken(tmp_path):
    """On storage that several machines share (a multi-node --out) a pid says nothing about a
    process elsewhere: not even this process's own pid on another host is taken as ours."""
    out, lock = tmp_path / "out", tmp_path / ".out.lock"
    for pid in (_dead_pid(), os.getpid()):
        lock.write_text(f"{pid} another node\n")  # a name may hold a space
        with pytest.raises(StudyError, match=f"in use by a run on another node \\(pid {pid}\\); if none"):
            with OutputLock(out):
                pass
        assert lock.read_text() == f"{pid} another node\n"


def test_a_host_name_with_a_space_is_this_hosts_own(tmp_path, monkeypatch):
    """The lock holds the whole name: cut at its space, this process would refuse its own lock."""
    from ntkrobust.studies import _output

    monkeypatch.setattr(_output, "_HOST", "my host")
    out = tmp_path / "out"
    with OutputLock(out), OutputLock(out):
        assert (tmp_path / ".out.lock").read_text() == f"{os.getpid()} my host\n"


def test_two_commands_into_one_out_cannot_both_run(tmp_path, run_cli):
    out = tmp_path / "out"
    (tmp_path / ".out.lock").write_text(f"{os.getppid()}\n")  # a live process holds it
    code, _, stderr = run_cli(["make-npz", "--n-train", "20", "--n-test", "10", "--out", tmp_path / "d.npz"])
    assert code == 0, stderr  # another output is not affected
    code, _, stderr = run_cli(["attack", "--n-train", "20", "--n-test", "10", "--out", out])
    assert code == 2 and "in use by another run" in stderr and stderr.count("\n") == 1
    assert not out.exists()


def test_staging_folders_of_dead_processes_are_removed(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / f".out.{_dead_pid()}.abc.partial"
    live = tmp_path / f".out.{os.getpid()}.def.partial"
    stale.mkdir()
    live.mkdir()
    assert remove_stale_staging(out) == [stale]
    staged = StagedOutput(out)
    assert staged.stage.name.startswith(f".out.{os.getpid()}.") and live.exists()
    staged.discard()


def _one_error_line(stderr: str) -> str:
    """The single error line of a refusal (warnings may precede it; a traceback may not)."""
    errors = [line for line in stderr.splitlines() if line.startswith("ntkrobust: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, run_cli, monkeypatch):
    import ntkrobust.bridge.files as files

    def full(path, payload):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(files, "write_json", full)
    out = tmp_path / "out"
    code, _, stderr = run_cli(["attack", "--n-train", "20", "--n-test", "10", "--out", out])
    assert code == 2 and "No space left on device" in _one_error_line(stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no out, no staging folder, no lock


def test_a_full_disk_during_training_says_the_run_resumes(tmp_path, run_cli, monkeypatch):
    import ntkrobust.bridge.checkpoint as checkpoint

    saved = checkpoint._save

    def fills_up(payload, path):
        if payload.get("epoch") == 1:  # the second checkpoint does not fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        saved(payload, path)

    monkeypatch.setattr(checkpoint, "_save", fills_up)
    argv = ["train", "--n-train", "100", "--n-test", "60", "--model", "fc2", "--width", "16", "--epochs", "2"]
    argv += ["--track-kernel", "0", "--eval-n", "20", "--eval-pgd-steps", "1", "--out", tmp_path / "run"]
    code, _, stderr = run_cli(argv)
    line = _one_error_line(stderr)
    assert code == 2 and "No space left on device" in line
    assert "stays resumable: run the same command with --resume" in line
    monkeypatch.setattr(checkpoint, "_save", saved)
    code, stdout, stderr = run_cli([*argv, "--resume"])
    assert code == 0, stderr
    assert "2 epochs" in stdout


def test_resume_removes_the_temporaries_of_a_killed_write(tmp_path, small_training):
    from ntkrobust.studies import train

    first = train.run(small_training(tmp_path / "run", epochs=1, track_kernel=0))
    leftover = first.out / "checkpoints" / ".epoch_002.pt.x1y2z3.tmp"
    leftover.write_bytes(b"")  # what a SIGKILL during a checkpoint write leaves
    train.run(small_training(tmp_path / "run", epochs=2, track_kernel=0, resume=True))
    assert not leftover.exists()
    assert not (tmp_path / ".run.lock").exists()


def test_a_cache_dir_that_is_a_file_is_refused_before_compute(tmp_path):
    from ntkrobust.studies import MachineSettings

    (tmp_path / "cache").write_text("x")
    with pytest.raises(StudyError, match=r"--cache-dir .* exists and is not a folder"):
        MachineSettings(cache_dir=tmp_path / "cache").check(["fc2"])
    MachineSettings(cache_dir=tmp_path / "cache", cache=False).check(["fc2"])  # not used: not checked


def test_records_carry_the_peak_gpu_memory_when_cuda_was_used(monkeypatch):
    """``peak_gpu_memory_mib`` and the GPU's float32 precision (TF32 or not) join a record when
    torch used CUDA, and only then; TF32 only where the GPU has it (Ampere and later); the peak
    counts from ``restart_gpu_peak``."""
    import sys
    import types

    from ntkrobust.studies._base import envelope, restart_gpu_peak

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    record = envelope("x", {}, {}, seconds=None, argv=None)
    assert "peak_gpu_memory_mib" not in record and "gpu" not in record  # no GPU here
    peak = [3 * 2**20]
    cuda = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True,
                                 max_memory_allocated=lambda: peak[0], get_device_name=lambda: "H200",
                                 get_device_capability=lambda: (9, 0),
                                 reset_peak_memory_stats=lambda: peak.__setitem__(0, 0),
                                 matmul=types.SimpleNamespace(allow_tf32=True))  # fmt: skip
    backends = types.SimpleNamespace(cudnn=types.SimpleNamespace(allow_tf32=True), cuda=cuda)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, backends=backends))
    record = envelope("x", {}, {}, seconds=None, argv=None)
    assert record["peak_gpu_memory_mib"] == 3.0
    assert record["gpu"] == {"name": "H200", "tf32_convolutions": True, "tf32_matmul": True}
    cuda.matmul.allow_tf32 = False
    assert envelope("x", {}, {}, seconds=None, argv=None)["gpu"]["tf32_matmul"] is False
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")  # TF32 off for cuBLAS and cuDNN, whatever torch allows
    assert envelope("x", {}, {}, seconds=None, argv=None)["gpu"]["tf32_convolutions"] is False
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    # a GPU before Ampere has no TF32 units: the setting is on, the arithmetic is float32
    cuda.get_device_name, cuda.get_device_capability = (lambda: "V100"), (lambda: (7, 0))
    record = envelope("x", {}, {}, seconds=None, argv=None)
    assert record["gpu"] == {"name": "V100", "tf32_convolutions": False, "tf32_matmul": False}
    restart_gpu_peak()  # the next study of the process counts its own peak
    assert envelope("x", {}, {}, seconds=None, argv=None)["peak_gpu_memory_mib"] == 0.0
