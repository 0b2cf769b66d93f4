"""Running steps once: OUT/steps/<name> holds a step's output, OUT/steps/<name>.json its record
(key, resolved config, seconds) once it finished.

A step whose record carries the same key is reused as it is. A training run that was
interrupted is resumed (``train --resume`` continues from its last checkpoint, exactly) when its
folder was started under the same key (``<name>.started``); any other leftover is removed and
the step runs again. A finished step's record is written last, so a kill at any point leaves
either a finished step or one that runs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntkrobust._numbers import is_real
from ntkrobust.bridge.files import JsonFileError, add_file_bytes, file_digest, read_json, write_json
from ntkrobust.reproduce._recipe import Context, Step, record_file, step_config, step_key
from ntkrobust.studies._base import log, restart_gpu_peak


@dataclass(frozen=True)
class StepRun:
    """What happened to a step in this reproduction."""

    name: str
    study: str
    key: str
    config: dict[str, Any]
    seconds: float  # the step's own seconds, when it ran (in this or an earlier invocation)
    reused: bool
    warnings: tuple[str, ...] = ()  # what the study warned of (a net left at chance, a weak attack)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _folder_digest(folder: Path) -> str:
    """SHA-256 over every file under ``folder`` (relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        add_file_bytes(digest, path)
        digest.update(b"\0")
    return digest.hexdigest()


def _remove(path: Path) -> None:
    """A step's leftover output, gone: its folder, or a file or symbolic link (a loop too) that
    took the folder's place (the step ran, then failed to save: "Not a directory")."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _warnings(record: Mapping[str, Any]) -> tuple[str, ...]:
    """A study's or a step record's warnings (none where the record holds no list of them)."""
    said = record.get("warnings")
    return tuple(str(text) for text in said) if isinstance(said, list) else ()


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if it is missing, unreadable or not an object."""
    try:
        found = read_json(path)
    except JsonFileError:
        return None
    return found if isinstance(found, dict) else None


class StepStore:
    """The finished steps of one reproduction folder."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.keys: dict[str, str] = {}

    def _record_path(self, name: str) -> Path:
        return self.ctx.steps_dir / f"{name}.json"

    def _started_path(self, name: str) -> Path:
        return self.ctx.steps_dir / f"{name}.started"

    def key(self, step: Step) -> str:
        missing = [n for n in step.needs if n not in self.keys]
        if missing:
            raise RuntimeError(f"step {step.name} needs {missing}, which have not run")  # a recipe bug
        return step_key(step, self.ctx, [self.keys[n] for n in step.needs])

    def _finished_record(self, step: Step, key: str) -> tuple[dict[str, Any] | None, str]:
        """The record of ``step`` finished under ``key`` whose output is still there as it
        finished, else None and why (where that is worth saying). A step whose output file was
        deleted or edited, or whose record was damaged, runs again: it used to count as finished,
        so every run of the command failed on a missing file, and an edited file's numbers went
        into the report as measured. Why is said for all but a step never finished and one whose
        config changed: a rerun that may take hours is a warning, which --quiet still prints."""
        path = self._record_path(step.name)
        record = _read_json(path)
        if record is None:  # none yet, or one this step's run overwrites
            return None, f"its record {path.name} is unreadable" if path.exists() or path.is_symlink() else ""
        if record.get("key") != key:
            return None, ""  # another config: a step of its own, which the key tells apart
        seconds = record.get("seconds")
        if not is_real(seconds) or not 0 <= seconds < math.inf:
            # NaN, a negative or an infinite time: a damaged record (the report failed on NaN)
            return None, f"its record {path.name} holds no time it took"
        output = self.ctx.step_dir(step.name) / record_file(step)
        if not output.is_file():
            return None, f"its {record_file(step)} is gone"
        # the file the checks read, as the step wrote it (a record of an earlier version holds no
        # digest and is taken as it is); the checkpoints beside it are not hashed again here: at
        # paper scale they are gigabytes, and no check reads them
        if "record_sha256" in record and record["record_sha256"] != file_digest(output):
            return None, f"its {record_file(step)} changed after the step finished"
        return record, ""

    def changed_since_finished(self, names: list[str]) -> bool:
        """Whether a file of any of these finished steps changed after it finished (or its
        record predates the digest): a check that cannot read them is then told apart from a
        recipe's bug."""
        for name in names:
            record = _read_json(self._record_path(name)) or {}
            if record.get("folder_sha256") != _folder_digest(self.ctx.step_dir(name)):
                return True
        return False

    def finished_steps(self, steps: Mapping[str, Step]) -> set[str]:
        """The names of ``steps`` (in plan order) finished under the keys they have now; their
        keys follow from the configs alone, so nothing runs."""
        keys: dict[str, str] = {}
        done = set()
        for name, step in steps.items():
            keys[name] = step_key(step, self.ctx, [keys[n] for n in step.needs])
            if self._finished_record(step, keys[name])[0] is not None:
                done.add(name)
        return done

    def run(self, step: Step, *, progress: bool, position: str) -> StepRun:
        """Reuse the step if finished under its key, else run it (resuming a training run)."""
        key = self.key(step)
        config = step_config(step, self.ctx)
        record, why = self._finished_record(step, key)
        if why:  # a warning, which --quiet still prints: the step may take hours
            log.warning(f"{position} {step.name}: {why}: it runs again")
        if record is not None:
            self.keys[step.name] = key
            log.info(f"{position} {step.name}: finished earlier, reused")
            said = _warnings(record)  # a record from before warnings were kept has none
            return StepRun(step.name, step.study, key, config, float(record["seconds"]), reused=True, warnings=said)
        folder = self.ctx.step_dir(step.name)
        started = _read_json(self._started_path(step.name))
        resume = step.study == "train" and started is not None and started.get("key") == key
        resume = resume and (folder / "config.json").is_file()
        if not resume:
            self._record_path(step.name).unlink(missing_ok=True)
            _remove(folder)
        self.ctx.steps_dir.mkdir(parents=True, exist_ok=True)
        write_json(self._started_path(step.name), {"key": key})
        log.info(f"{position} {step.name}: {step.study}{' (resumed)' if resume else ''}")
        clock = time.perf_counter()
        module = importlib.import_module(f"ntkrobust.studies.{step.study.replace('-', '_')}")
        restart_gpu_peak()  # the step's record holds its own peak, not an earlier step's
        settings = step.settings
        if step.study == "train":
            settings = dataclasses.replace(settings, resume=resume, force=False)
        result = module.run(settings, progress=progress, argv=None)
        result.save(folder, overwrite=True)  # the step's own folder
        seconds = time.perf_counter() - clock
        said = _warnings(result.record)
        record = {
            "key": key, "seconds": seconds, "folder_sha256": _folder_digest(folder),
            "record_sha256": file_digest(folder / record_file(step)), "warnings": list(said),
        }  # fmt: skip
        record |= config
        write_json(self._record_path(step.name), record)
        self._started_path(step.name).unlink(missing_ok=True)
        self.keys[step.name] = key
        log.info(f"{position} {step.name}: done in {seconds:.0f} s")
        return StepRun(step.name, step.study, key, config, seconds, reused=False, warnings=said)
