"""Replay the hostile-input matrix against the installed ``ntkrobust`` command (not a pytest module).

    python tests/hostile_matrix.py --work /tmp/hostile [--only NAME] [--keep]

Every case builds its hostile input in a fresh folder under ``--work`` (tiny files: digits-sized
data, payloads that only create a marker file), runs one command in a subprocess and checks:

- a refusal exits with status 2 and prints exactly one ``ntkrobust: error:`` line and no traceback;
- an accepted run exits 0;
- no payload marker appeared, no ``*.partial`` staging folder, ``*.lock``, ``.*.tmp`` or
  ``.ntkrobust-*`` (a lock's or a check's temporary) is left,
  and a refused command did not create its ``--out``.

Cases that need root (a read-only mount, a 2 MB tmpfs for the full disk) run when ``mount`` works
and are reported as skipped otherwise. Prints one line per case and the tally; each case's
command, exit status, stdout and stderr are kept in ``--work/CASE.log``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NTK = [sys.executable, "-m", "ntkrobust"]
SMALL = ["--n-train", "60", "--n-test", "30"]
DATA_COMMANDS: dict[str, list[str]] = {
    "attack": ["attack", "--no-cache", "--quiet"],
    "features": ["features", "--n-features", "5", "--robust-r", "none", "--no-cache", "--quiet"],
    "entk": ["entk", "--model", "fc1", "--n", "10", "--quiet"],
    "train": ["train", "--model", "fc1", "--epochs", "1", "--track-kernel", "0", "--eval-n", "10", "--quiet"],
    "two-layer": ["two-layer", "--width", "50", "--epochs", "2", "--quiet"],
    "make-npz": ["make-npz"],
}


@dataclass
class Case:
    name: str
    build: Callable[[Path], list[str]]  # folder -> argv (after ``ntkrobust``)
    expect: str = "refused"  # or "ok"
    needs_root: bool = False
    after: Callable[[Path], str | None] | None = None  # extra check: a failure message or None
    signal_after: tuple[int, float] | None = None  # (signal, seconds): interrupt the command


@dataclass
class Outcome:
    case: str
    verdict: str
    detail: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# -- hostile inputs ---------------------------------------------------------------------------


def digits_npz(path: Path, *, classes: int = 10) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = digits.target < classes
    x, y = (digits.images[keep] * 16).astype(np.uint8), digits.target[keep]
    np.savez_compressed(path, x_train=x[:120], y_train=y[:120], x_test=x[120:180], y_test=y[120:180])
    return path


def damaged_npz(folder: Path, damage: str) -> Path:
    path = digits_npz(folder / "data.npz")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        with zipfile.ZipFile(path) as archive:
            first = archive.infolist()[0]
        data[first.header_offset + 30 + len(first.filename) + first.compress_size // 2] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    elif damage == "random":
        data = bytearray(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    elif damage in ("encrypted", "method-99"):  # zipfile: RuntimeError / NotImplementedError
        for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
            at = data.find(signature)
            while at >= 0:
                if damage == "encrypted":
                    data[at + flags_at] |= 1
                else:
                    data[at + method_at : at + method_at + 2] = (99).to_bytes(2, "little")
                at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


def single_class_npz(folder: Path) -> Path:
    path = digits_npz(folder / "data.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["y_train"] = np.full_like(arrays["y_train"], 200)
    arrays["y_test"] = np.full_like(arrays["y_test"], 200)
    np.savez(path, **arrays)
    return path


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def hostile_pt2(folder: Path) -> Path:
    import torch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 8, 8),)), folder / "good.pt2")
    blob = io.BytesIO()
    torch.save((_Payload(folder / "MARKER"),), blob)
    path = folder / "evil.pt2"
    with zipfile.ZipFile(folder / "good.pt2") as good, zipfile.ZipFile(path, "w") as evil:
        for item in good.infolist():
            hostile = item.filename.endswith("sample_inputs/model.pt")
            evil.writestr(item, blob.getvalue() if hostile else good.read(item.filename))
    (folder / "good.pt2").unlink()
    return path


def truncated_mnist(folder: Path) -> Path:
    import gzip

    root = folder / "mnist"
    root.mkdir()
    images = bytes([0, 0, 8, 3]) + (40).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(40 * 784)
    labels = bytes([0, 0, 8, 1]) + (40).to_bytes(4, "big") + bytes(range(10)) * 4
    whole = gzip.compress(images)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(whole[: len(whole) // 2])
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return root


def train_run(folder: Path) -> Path:
    """A small finished training run with tracked kernels (made once, copied per case)."""
    cache = Path(os.environ["HOSTILE_WORK"]) / "_train_run"
    if not cache.exists():
        argv = ["train", *SMALL, "--model", "fc1", "--width", "16", "--epochs", "1", "--track-kernel", "10"]
        subprocess.run([*NTK, *argv, "--eval-n", "10", "--quiet", "--out", str(cache)], check=True)
    return Path(shutil.copytree(cache, folder / "run"))


def run_with(folder: Path, change: Callable[[Path], None]) -> Path:
    run = train_run(folder)
    change(run)
    return run


def probe_without_x(run: Path) -> None:
    with np.load(run / "kernels" / "probe.npz") as f:
        np.savez(run / "kernels" / "probe.npz", **{k: f[k] for k in f.files if k != "x"})


def probe_corrupt(run: Path) -> None:
    path = run / "kernels" / "probe.npz"
    path.write_bytes(path.read_bytes()[:100])


def history_wrong_types(run: Path) -> None:
    history = json.loads((run / "history.json").read_text())
    history["epochs"][1]["accuracy"] = "high"
    (run / "history.json").write_text(json.dumps(history))


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


def _cases() -> list[Case]:
    cases: list[Case] = []
    for damage in ("truncated", "flipped", "empty", "random", "encrypted", "method-99"):
        for command, argv in DATA_COMMANDS.items():
            cases.append(
                Case(
                    f"{damage}-npz/{command}",
                    lambda d, argv=argv, damage=damage: [*argv, "--data", str(damaged_npz(d, damage)), *_out(argv, d)],
                )
            )
    for command, argv in DATA_COMMANDS.items():
        cases.append(
            Case(
                f"single-class/{command}",
                lambda d, argv=argv: [*argv, "--data", str(single_class_npz(d)), *_out(argv, d)],
            )
        )
    cases += [
        Case(
            "truncated-mnist-gzip/attack",
            lambda d: [
                "attack",
                "--data",
                "mnist",
                "--data-root",
                str(truncated_mnist(d)),
                "--from-test-split",
                "--quiet",
                "--out",
                str(d / "out"),
            ],
        ),
        Case(
            "hostile-pt2/transfer",
            lambda d: ["transfer", *SMALL, "--target", str(hostile_pt2(d)), "--quiet", "--out", str(d / "out")],
        ),
        Case(
            "hostile-pt2-as-state-dict/transfer",
            lambda d: ["transfer", *SMALL, "--target", f"fc1={hostile_pt2(d)}", "--quiet", "--out", str(d / "out")],
        ),
        Case("folder-as-target/transfer", lambda d: ["transfer", *SMALL, "--target", str(d), "--out", str(d / "out")]),
        Case(
            "unknown-model-target/transfer",
            lambda d: ["transfer", *SMALL, "--target", f"nosuchmodel={d}/w.pt", "--out", str(d / "out")],
        ),
        Case("folder-as-checkpoint/entk", lambda d: ["entk", "--checkpoint", str(d), "--out", str(d / "out")]),
        Case(
            "probe-without-x/dynamics",
            lambda d: ["dynamics", str(run_with(d, probe_without_x)), "--eigenvectors", "1", "--out", str(d / "out")],
        ),
        Case(
            "probe-corrupt/dynamics", lambda d: ["dynamics", str(run_with(d, probe_corrupt)), "--out", str(d / "out")]
        ),
        Case(
            "history-wrong-types/dynamics",
            lambda d: [
                "dynamics",
                str(run_with(d, history_wrong_types)),
                "--eigenvectors",
                "0",
                "--out",
                str(d / "out"),
            ],
        ),
        Case("out-parent-is-a-file/attack", lambda d: ["attack", *SMALL, "--out", str(_file(d) / "out")]),
        Case("out-parent-is-a-file/make-npz", lambda d: ["make-npz", *SMALL, "--out", str(_file(d) / "d.npz")]),
        Case(
            "cache-dir-is-a-file/attack",
            lambda d: ["attack", *SMALL, "--cache-dir", str(_file(d)), "--out", str(d / "out")],
        ),
        Case("eps-zero/attack", lambda d: ["attack", *SMALL, "--eps", "0", "--out", str(d / "out")]),
        Case("n-train-below-classes/attack", lambda d: ["attack", "--n-train", "5", "--out", str(d / "out")]),
        Case(
            "kernel-n-too-large/transfer",
            lambda d: [
                "transfer",
                *SMALL,
                "--target",
                str(_checkpoint(d)),
                "--kernel-n",
                "100000",
                "--out",
                str(d / "out"),
            ],
        ),
        Case(
            "fifo-as-checkpoint/entk",
            lambda d: ["entk", "--checkpoint", str(_fifo(d, "net.pt")), "--out", str(d / "out")],
        ),
        Case(
            "link-loop-as-checkpoint/entk", lambda d: ["entk", "--checkpoint", str(_loop(d)), "--out", str(d / "out")]
        ),
        Case(
            "torchscript-as-checkpoint/entk",
            lambda d: ["entk", "--checkpoint", str(_torchscript(d)), "--out", str(d / "out")],
        ),
        Case(
            "torchscript-as-linearize-from/train",
            lambda d: [
                "train",
                "--epochs",
                "1",
                "--quiet",
                *SMALL,
                "--track-kernel",
                "10",
                "--linearize-from",
                str(_torchscript(d)),
                "--out",
                str(d / "run"),
            ],
        ),
        Case(
            "fifo-as-out/make-npz",
            lambda d: ["make-npz", *SMALL, "--force", "--out", str(_fifo(d, "d.npz"))],
            after=lambda d: None if stat.S_ISFIFO((d / "d.npz").stat().st_mode) else "the FIFO was replaced",
        ),
        # 230 bytes: no room for the staging folder's 26 more (found after the whole attack ran)
        Case("out-name-without-room/attack", lambda d: ["attack", *SMALL, "--out", str(d / ("a" * 230))]),
        Case(
            "switch-epoch-after-epochs/train",
            lambda d: [
                *DATA_COMMANDS["train"],
                *SMALL,
                "--mode",
                "pgd",
                "--switch-epoch",
                "2",
                "--out",
                str(d / "run"),
            ],
        ),
        Case(
            "seeds-beyond-2**63/two-layer",
            lambda d: [
                *DATA_COMMANDS["two-layer"],
                *SMALL,
                "--nets",
                "2",
                "--seed",
                str(2**63 - 1),
                "--out",
                str(d / "out"),
            ],
        ),
        Case("read-only-out/attack", _read_only, needs_root=True),
        Case("full-disk/train", _full_disk_train, needs_root=True, after=_resumable),
        Case("full-disk/attack", _full_disk_attack, needs_root=True),
        Case("concurrent-out/attack", _concurrent),
        Case("corrupt-cache-entry/attack", _corrupt_cache, expect="ok", after=_recomputed),
        Case("forged-cache-entry/attack", _forged_cache, expect="ok", after=_recomputed),
        Case(
            "overflowing-weights/entk",
            lambda d: ["entk", "--checkpoint", str(_overflowing_checkpoint(d)), "--n", "20", "--out", str(d / "out")],
        ),
        Case(
            "sigint/attack",
            lambda d: [
                "attack",
                "--method",
                "pgd",
                "--steps",
                "2000",
                "--no-cache",
                "--quiet",
                "--out",
                str(d / "out"),
            ],
            expect="interrupted",
            signal_after=(signal.SIGINT, 8.0),
        ),
        Case(
            "sigterm/train",
            lambda d: [*_LONG_TRAIN, "--out", str(d / "run")],
            expect="interrupted",
            signal_after=(signal.SIGTERM, 8.0),
        ),
        Case("sigkill-then-resume/train", _killed_run, expect="ok", after=_no_temporaries),
    ]
    return cases


_BACKGROUND: list[subprocess.Popen[bytes]] = []
_LONG_TRAIN = [
    "train",
    *SMALL,
    "--model",
    "fc1",
    "--epochs",
    "100000",
    "--track-kernel",
    "0",
    "--eval-n",
    "10",
    "--quiet",
]


def _wait_for(path: Path, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)


def _concurrent(folder: Path) -> list[str]:
    """A long training run holds --out while a second command wants it."""
    out = folder / "out"
    _BACKGROUND.append(subprocess.Popen([*NTK, *_LONG_TRAIN, "--out", str(out)]))
    _wait_for(folder / ".out.lock")
    return ["train", *SMALL, "--model", "fc1", "--epochs", "1", "--out", str(out), "--resume"]


def _corrupt_cache(folder: Path) -> list[str]:
    argv = ["attack", *SMALL, "--cache-dir", str(folder / "cache"), "--quiet"]
    subprocess.run([*NTK, *argv, "--out", str(folder / "first")], check=True, capture_output=True)
    (entry,) = (folder / "cache").glob("*.npz")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    return [*argv, "--out", str(folder / "out")]


def _forged_cache(folder: Path) -> list[str]:
    """The entry's Gram doubled and its checksum recomputed (anyone can): symmetric, a diagonal
    >= 0, only the hit's recomputed sample of entries tells it from the true one."""
    import hashlib

    argv = ["attack", *SMALL, "--cache-dir", str(folder / "cache"), "--quiet"]
    subprocess.run([*NTK, *argv, "--out", str(folder / "first")], check=True, capture_output=True)
    (entry,) = (folder / "cache").glob("*.npz")
    with np.load(entry, allow_pickle=False) as stored:
        key, gram = stored["key"], np.ascontiguousarray(2 * stored["gram"])
    checksum = hashlib.sha256(f"{gram.dtype.str}{gram.shape}|".encode() + gram.tobytes()).hexdigest()
    with open(entry, "wb") as f:
        np.savez(f, gram=gram, key=key, checksum=np.array(checksum))
    return [*argv, "--out", str(folder / "out")]


def _overflowing_checkpoint(folder: Path) -> Path:
    """A run's checkpoint with every weight times 1e20: finite, so it loads, and the net's
    outputs overflow float32 (its kernel holds inf)."""
    import torch

    path = _checkpoint(folder)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = {k: v * 1e20 if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    torch.save(payload, folder / "overflowing.pt")
    return folder / "overflowing.pt"


def _recomputed(folder: Path) -> str | None:
    first = json.loads((folder / "first" / "results.json").read_text())
    second = json.loads((folder / "out" / "results.json").read_text())
    if second["kernel"]["gram_cache"] != "recomputed: corrupt entry":
        return f"gram_cache says {second['kernel']['gram_cache']!r}"
    if first["clean_accuracy"] != second["clean_accuracy"]:
        return "the recomputed entry gave other results"
    return None


def _killed_run(folder: Path) -> list[str]:
    """A training run killed with SIGKILL (its lock and a half-written temporary stay behind)."""
    out = folder / "run"
    victim = subprocess.Popen([*NTK, *_LONG_TRAIN, "--out", str(out)])
    _wait_for(out / "checkpoints" / "epoch_002.pt")
    victim.kill()
    victim.wait()
    done = max(int(p.stem.removeprefix("epoch_")) for p in (out / "checkpoints").glob("epoch_*.pt"))
    (out / "checkpoints" / f".epoch_{done + 1:03d}.pt.x1y2z3.tmp").write_bytes(b"")
    (out / "target-epochs").write_text(str(done + 1))
    epochs = _LONG_TRAIN.index("--epochs")
    return [*_LONG_TRAIN[:epochs], "--epochs", str(done + 1), *_LONG_TRAIN[epochs + 2 :], "--out", str(out), "--resume"]


def _no_temporaries(folder: Path) -> str | None:
    history = json.loads((folder / "run" / "history.json").read_text())
    target = int((folder / "run" / "target-epochs").read_text())
    return None if history["epochs"][-1]["epoch"] == target else f"the resumed run did not end at epoch {target}"


def _out(argv: list[str], folder: Path) -> list[str]:
    return ["--out", str(folder / ("d.npz" if argv[0] == "make-npz" else "out"))]


def _file(folder: Path) -> Path:
    path = folder / "a-file"
    path.write_text("not a folder")
    return path


def _fifo(folder: Path, name: str) -> Path:
    os.mkfifo(folder / name)
    return folder / name


def _loop(folder: Path) -> Path:
    (folder / "a.pt").symlink_to(folder / "b.pt")
    (folder / "b.pt").symlink_to(folder / "a.pt")
    return folder / "a.pt"


def _torchscript(folder: Path) -> Path:
    """A TorchScript program where a checkpoint is expected: named, never run."""
    import torch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.jit.save(torch.jit.script(net), folder / "net.pt")
    return folder / "net.pt"


def _checkpoint(folder: Path) -> Path:
    return train_run(folder) / "checkpoints" / "epoch_001.pt"


def _read_only(folder: Path) -> list[str]:
    mount = folder / "ro"
    if not _mount(mount, "size=1m,ro"):
        raise PermissionError("cannot mount a read-only tmpfs here")
    return ["attack", *SMALL, "--out", str(mount / "out")]


def _full(folder: Path, leave: int) -> Path:
    mount = folder / "full"
    if not _mount(mount, "size=2m"):
        raise PermissionError("cannot mount a 2 MB tmpfs here")
    (mount / "filler").write_bytes(bytes(max(0, 2 * 2**20 - leave)))
    return mount


def _full_disk_train(folder: Path) -> list[str]:
    mount = _full(folder, leave=2 * 2**20)  # epoch 0's checkpoint (1.2 MB) fits, epoch 1's does not
    return [
        "train",
        *SMALL,
        "--model",
        "fc2",
        "--epochs",
        "2",
        "--track-kernel",
        "0",
        "--eval-n",
        "10",
        "--quiet",
        "--out",
        str(mount / "run"),
    ]


def _resumable(folder: Path) -> str | None:
    run = folder / "full" / "run"
    copy = Path(shutil.copytree(run, folder / "resumed"))
    argv = ["train", *SMALL, "--model", "fc2", "--epochs", "2", "--track-kernel", "0", "--eval-n", "10", "--quiet"]
    done = subprocess.run([*NTK, *argv, "--out", str(copy), "--resume"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"resume failed: {done.stderr.strip()[-200:]}"


def _full_disk_attack(folder: Path) -> list[str]:
    mount = _full(folder, leave=16 * 1024)
    return ["attack", "--no-cache", "--quiet", "--out", str(mount / "out")]


# -- running ------------------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    found = []
    for pattern in ("**/*.partial", "**/.*.lock", "**/.*.tmp", "**/.ntkrobust-*", "**/MARKER"):
        found += [str(p.relative_to(folder)) for p in folder.glob(pattern)]
    return found


def run_case(case: Case, work: Path) -> Outcome:
    folder = work / case.name.replace("/", "__")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    try:
        argv = case.build(folder)
    except PermissionError as err:
        return Outcome(case.name, "skipped", str(err))
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    out_was_there = out is not None and os.path.lexists(out)  # a FIFO put there by the case
    with subprocess.Popen(
        [*NTK, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder
    ) as process:
        if case.signal_after is not None:
            time.sleep(case.signal_after[1])
            process.send_signal(case.signal_after[0])
        stdout, stderr = process.communicate(timeout=900)
    done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    # the whole exchange stays beside the case's files: a failure that does not come back on a
    # rerun (the signal cases race the command) can still be read afterwards
    (folder.parent / f"{folder.name}.log").write_text(
        f"$ ntkrobust {' '.join(argv)}\nexit {process.returncode}\n--- stdout\n{stdout}--- stderr\n{stderr}"
    )
    while _BACKGROUND:  # a run that held the folder: terminated (which must clean up too)
        holder = _BACKGROUND.pop()
        holder.send_signal(signal.SIGTERM)
        holder.wait()
    seconds = time.perf_counter() - start
    errors = [line for line in done.stderr.splitlines() if line.startswith("ntkrobust: error:")]
    problems = []
    if "Traceback" in done.stderr:
        problems.append("traceback")
    if case.expect == "refused":
        if done.returncode != 2:
            problems.append(f"exit {done.returncode}")
        if len(errors) != 1:
            problems.append(f"{len(errors)} error lines")
        if out is not None and out.exists() and not out_was_there and not case.needs_root:
            problems.append("--out was created")
    elif case.expect == "interrupted":
        if done.returncode not in (130, 143) or len(done.stderr.strip().splitlines()) != 1:
            problems.append(f"exit {done.returncode}: {done.stderr.strip()[-200:]}")
    elif done.returncode != 0:
        problems.append(f"exit {done.returncode}: {done.stderr.strip()[-200:]}")
    problems += [f"left {p}" for p in _leftovers(folder)]
    if case.after is not None and (message := case.after(folder)):
        problems.append(message)
    for mount in (folder / "ro", folder / "full"):
        if mount.exists():
            subprocess.run(["umount", str(mount)], capture_output=True)
    detail = (
        errors[0].removeprefix("ntkrobust: error: ")[:150] if errors else (done.stdout + done.stderr).strip()[-150:]
    )
    return Outcome(case.name, "handled" if not problems else "FAILED", detail, seconds, problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--only", help="run the cases whose name contains this")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["HOSTILE_WORK"] = str(args.work.resolve())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    outcomes = []
    for case in _cases():
        if args.only and args.only not in case.name:
            continue
        outcome = run_case(case, args.work.resolve())
        outcomes.append(outcome)
        problems = f"  PROBLEMS: {'; '.join(outcome.problems)}" if outcome.problems else ""
        print(f"{outcome.verdict:8} {outcome.case:42} {outcome.seconds:5.1f} s  {outcome.detail}{problems}", flush=True)
    tally = {v: sum(o.verdict == v for o in outcomes) for v in ("handled", "FAILED", "skipped")}
    print(
        f"{len(outcomes)} cases: {tally['handled']} handled in one line (or ran as they should), "
        f"{tally['FAILED']} failed, {tally['skipped']} skipped"
    )
    return 1 if tally["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
