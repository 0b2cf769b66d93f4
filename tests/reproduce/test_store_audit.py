"""The store of finished steps (``reproduce._store``) and the step keys (``reproduce._recipe``),
with a stand-in study in place of a real one: a module ``ntkrobust.studies.audit_fake`` whose
``run`` records every call and writes a ``results.json`` and a figure, and a ``train`` whose
``run`` records the settings it was handed. What a record holds is recomputed here by hand
(sha256 of the bytes with ``hashlib``, the folder digest from its definition), not read back
through the store's own helpers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ntkrobust.reproduce import _store
from ntkrobust.reproduce._recipe import Context, Step, canonical, record_file, record_float, step_config, step_key
from ntkrobust.reproduce._store import StepStore

FAKE = "ntkrobust.studies.audit_fake"


@dataclass(frozen=True)
class FakeSettings:
    value: int = 0
    reads: tuple[Path, ...] = ()
    resume: bool = False
    force: bool = False


class FakeResult:
    def __init__(self, record: dict[str, Any]):
        self.record = record

    def save(self, folder: Path, *, overwrite: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(self.record))
        (folder / "figure.png").write_bytes(b"png " + str(self.record["value"]).encode())


class Recorder:
    """The stand-in study: every call's settings, and what to do on the next one."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.warnings: list[str] = []
        self.fail: BaseException | None = None

    def run(self, settings: Any, *, progress: bool, argv: Any) -> FakeResult:
        self.calls.append(settings)
        if self.fail is not None:
            raise self.fail
        return FakeResult({"value": settings.value, "warnings": list(self.warnings)})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    module = types.ModuleType(FAKE)
    module.run = recorder.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, FAKE, module)
    return recorder


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context("smoke", tmp_path / "data", tmp_path / "out" / "steps")


def step(name: str = "a", value: int = 1, needs: tuple[str, ...] = (), **settings: Any) -> Step:
    return Step(name, "audit-fake", FakeSettings(value=value, **settings), needs=needs)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_digest(folder: Path) -> str:
    """By its definition: relative path, NUL, bytes, NUL, for every file in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def record_of(ctx: Context, name: str) -> dict[str, Any]:
    return json.loads((ctx.steps_dir / f"{name}.json").read_text())


# ---------------------------------------------------------------- a step runs once, then is reused


def test_a_finished_step_is_recorded_and_reused_as_it_finished(ctx: Context, fake: Recorder) -> None:
    """The record holds the key, the seconds, the digests of results.json and of the folder (by
    hand here), the study's warnings and the resolved config; a second store reuses the step
    without calling the study, with the recorded seconds and warnings."""
    fake.warnings = ["a weak attack"]
    first = StepStore(ctx).run(step(), progress=False, position="[1/1]")
    assert len(fake.calls) == 1 and not first.reused and first.warnings == ("a weak attack",)
    folder = ctx.step_dir("a")
    record = record_of(ctx, "a")
    assert record["key"] == first.key == step_key(step(), ctx, [])
    assert record["record_sha256"] == sha256((folder / "results.json").read_bytes())
    assert record["folder_sha256"] == folder_digest(folder)
    assert record["warnings"] == ["a weak attack"] and record["seconds"] == first.seconds >= 0
    assert {k: record[k] for k in ("study", "settings")} == step_config(step(), ctx) == first.config
    assert record["settings"]["value"] == 1 and record["study"] == "audit-fake"
    assert not (ctx.steps_dir / "a.started").exists()  # finished: nothing to resume
    fake.warnings = []
    again = StepStore(ctx).run(step(), progress=False, position="[1/1]")
    assert len(fake.calls) == 1, "a finished step ran again"
    assert again.reused and again.seconds == record["seconds"] and again.warnings == ("a weak attack",)
    assert (again.key, again.config, again.name, again.study) == (first.key, first.config, "a", "audit-fake")
    assert StepStore(ctx).finished_steps({"a": step()}) == {"a"}


def test_the_seconds_include_saving_the_step(ctx: Context, fake: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step's seconds run from the study's start to its files on disk, saved once (a clock
    that counts its readings stands in; saving reads it once)."""
    ticks = iter(range(100))
    monkeypatch.setattr(_store, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    saves: list[Path] = []
    real_save = FakeResult.save

    def counted_save(self: FakeResult, folder: Path, *, overwrite: bool = False) -> None:
        next(ticks)
        saves.append(folder)
        real_save(self, folder, overwrite=overwrite)

    monkeypatch.setattr(FakeResult, "save", counted_save)
    run = StepStore(ctx).run(step(), progress=False, position="")
    assert saves == [ctx.step_dir("a")]
    assert run.seconds == 2.0 == record_of(ctx, "a")["seconds"]  # start 0, the save's reading 1, the end 2


def test_a_changed_config_or_a_changed_needed_step_runs_again(ctx: Context, fake: Recorder) -> None:
    """A step is reused only under its key: another setting, or a step it reads that ran under
    another key, runs it again (the stale record and folder replaced)."""
    store = StepStore(ctx)
    store.run(step("a", 1), progress=False, position="")
    store.run(step("b", 5, needs=("a",)), progress=False, position="")
    assert [s.value for s in fake.calls] == [1, 5]
    plan = {"a": step("a", 2), "b": step("b", 5, needs=("a",))}
    assert StepStore(ctx).finished_steps(plan) == set()  # b reads a, whose key changed
    assert StepStore(ctx).finished_steps({"a": step("a", 1), "b": step("b", 5, needs=("a",))}) == {"a", "b"}
    store = StepStore(ctx)
    runs = [store.run(s, progress=False, position="") for s in plan.values()]
    assert [s.value for s in fake.calls] == [1, 5, 2, 5] and not any(r.reused for r in runs)
    assert record_of(ctx, "a")["settings"]["value"] == 2
    assert json.loads((ctx.step_dir("a") / "results.json").read_text())["value"] == 2


def test_resume_and_force_are_not_part_of_the_key(ctx: Context) -> None:
    """How a step runs (resume, force) is not what it measures; the study is."""
    plain = step()
    for how in ({"resume": True}, {"force": True}):
        assert step_key(step(**how), ctx, []) == step_key(plain, ctx, [])
    other_study = dataclasses.replace(plain, study="audit-other")
    assert step_key(other_study, ctx, []) != step_key(plain, ctx, [])
    assert step_config(other_study, ctx)["study"] == "audit-other"
    assert step_key(plain, ctx, ["k1"]) != step_key(plain, ctx, ["k2"]) != step_key(plain, ctx, [])


def test_folders_are_written_relative_to_the_reproduction(ctx: Context) -> None:
    """$STEPS and $DATA stand for the reproduction's folders, at any depth below them; other
    paths stay as they are."""
    assert canonical(ctx.steps_dir, ctx) == "$STEPS"
    assert canonical(ctx.steps_dir / "a" / "checkpoints" / "epoch_005.pt", ctx) == "$STEPS/a/checkpoints/epoch_005.pt"
    assert ctx.data_root is not None
    assert canonical(ctx.data_root / "mnist", ctx) == "$DATA/mnist"
    assert canonical(Path("/elsewhere/x"), ctx) == "/elsewhere/x"
    reads = step(reads=(ctx.steps_dir / "a", ctx.data_root / "cifar10"))
    assert step_config(reads, ctx)["settings"]["reads"] == ["$STEPS/a", "$DATA/cifar10"]
    moved = Context("smoke", Path("/else/data"), Path("/else/out/steps"))
    moved_reads = step(reads=(moved.steps_dir / "a", Path("/else/data") / "cifar10"))
    assert step_key(moved_reads, moved, []) == step_key(reads, ctx, [])


def test_a_record_that_is_no_object_is_a_step_record_error(ctx: Context, fake: Recorder) -> None:
    """A check reading a results.json that holds no object is told which step's file it is."""
    from ntkrobust.reproduce._recipe import Results, StepRecordError

    StepStore(ctx).run(step(), progress=False, position="")
    (ctx.step_dir("a") / "results.json").write_text("[1, 2]")
    with pytest.raises(StepRecordError, match=r"step a: .*results\.json is not a record \(list\)"):
        Results(ctx, {"a": step()}).record("a")


def test_record_helpers() -> None:
    """A training run's checks read history.json, every other study's results.json; a number a
    study wrote as None reads as NaN (never as 0, a number a rule would judge)."""
    assert record_file(Step("r", "train", None)) == "history.json"
    assert record_file(Step("r", "dynamics", None)) == "results.json"
    assert math.isnan(record_float(None)) and math.isnan(record_float("nan"))
    assert record_float("-inf") == -math.inf and record_float(0.25) == 0.25


@pytest.mark.parametrize(
    "damage",
    [{"seconds": -1.0}, {"seconds": 1e400}, {"seconds": "nan"}, {"seconds": True}, {"seconds": None}, {"key": "x"}],
    ids=["negative", "infinite", "nan", "bool", "none", "other-key"],
)
def test_a_damaged_record_runs_again(ctx: Context, fake: Recorder, damage: dict[str, Any]) -> None:
    StepStore(ctx).run(step(), progress=False, position="")
    path = ctx.steps_dir / "a.json"
    text = json.dumps({**json.loads(path.read_text()), **damage}).replace("Infinity", "1e400")
    path.write_text(text)
    run = StepStore(ctx).run(step(), progress=False, position="")
    assert len(fake.calls) == 2 and not run.reused
    assert StepStore(ctx).run(step(), progress=False, position="").reused


@pytest.mark.parametrize("text", ["[1, 2]", '"a string"', "{broken"])
def test_a_record_that_is_no_object_runs_again(ctx: Context, fake: Recorder, text: str) -> None:
    StepStore(ctx).run(step(), progress=False, position="")
    (ctx.steps_dir / "a.json").write_text(text)
    assert not StepStore(ctx).run(step(), progress=False, position="").reused and len(fake.calls) == 2


def test_a_missing_or_edited_output_runs_again_and_the_folder_digest_sees_a_rename(
    ctx: Context, fake: Recorder
) -> None:
    StepStore(ctx).run(step(), progress=False, position="")
    results = ctx.step_dir("a") / "results.json"
    results.unlink()
    assert not StepStore(ctx).run(step(), progress=False, position="").reused
    results.write_text(results.read_text().replace("1", "7"))
    assert not StepStore(ctx).run(step(), progress=False, position="").reused and len(fake.calls) == 3
    assert not StepStore(ctx).changed_since_finished(["a"])
    figure = ctx.step_dir("a") / "figure.png"
    figure.rename(ctx.step_dir("a") / "figure2.png")  # the same bytes under another name
    assert StepStore(ctx).changed_since_finished(["a"])
    assert StepStore(ctx).run(step(), progress=False, position="").reused  # the checks' file is untouched


# ---------------------------------------------------------------- failures and resuming


def test_a_failed_step_leaves_no_record_and_runs_again(ctx: Context, fake: Recorder) -> None:
    """A study that fails leaves neither a record nor its earlier output (of another key): the
    step counts as not finished, and the next invocation runs it."""
    StepStore(ctx).run(step("a", 1), progress=False, position="")
    fake.fail = RuntimeError("out of memory")
    with pytest.raises(RuntimeError):
        StepStore(ctx).run(step("a", 2), progress=False, position="")
    assert not (ctx.steps_dir / "a.json").exists() and not ctx.step_dir("a").exists()
    assert json.loads((ctx.steps_dir / "a.started").read_text()) == {"key": step_key(step("a", 2), ctx, [])}
    assert StepStore(ctx).finished_steps({"a": step("a", 1)}) == set()
    fake.fail = None
    assert not StepStore(ctx).run(step("a", 2), progress=False, position="").reused
    assert [s.value for s in fake.calls] == [1, 2, 2]


@pytest.fixture
def train(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """``train`` replaced: it writes config.json into its folder first, as the study does."""
    from ntkrobust.studies import train as train_study

    recorder = Recorder()

    def run(settings: Any, *, progress: bool, argv: Any) -> Any:
        recorder.calls.append(settings)
        settings.out.mkdir(parents=True, exist_ok=True)
        if not settings.resume:
            assert not any(settings.out.iterdir()), "a fresh run found leftovers"
        (settings.out / "config.json").write_text("{}")
        if recorder.fail is not None:
            raise recorder.fail

        class Saved:
            def __init__(self) -> None:
                self.record: dict[str, Any] = {"epochs": []}

            def save(self, folder: Path, *, overwrite: bool = False) -> None:
                (folder / "history.json").write_text(json.dumps(self.record))

        return Saved()

    monkeypatch.setattr(train_study, "run", run)
    return recorder


def train_step(ctx: Context, epochs: int = 2) -> Step:
    from ntkrobust.studies.train import TrainSettings

    return Step("t", "train", TrainSettings(out=ctx.step_dir("t"), mode="standard", epochs=epochs, force=True))


def test_an_interrupted_training_run_resumes_under_the_same_key_only(ctx: Context, train: Recorder) -> None:
    """``train --resume`` continues an interrupted run started under the same key (its
    config.json written); force is off either way. Under another key, or for another study,
    the leftover goes."""
    train.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        StepStore(ctx).run(train_step(ctx), progress=False, position="")
    (ctx.step_dir("t") / "epoch_001.pt").write_text("a checkpoint")
    train.fail = None
    StepStore(ctx).run(train_step(ctx), progress=False, position="")
    assert [(s.resume, s.force) for s in train.calls] == [(False, False), (True, False)]
    assert (ctx.step_dir("t") / "epoch_001.pt").is_file()  # resumed in place
    assert not (ctx.steps_dir / "t.started").exists()
    # interrupted again under another key: a fresh run, the leftover removed
    train.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        StepStore(ctx).run(train_step(ctx, 3), progress=False, position="")
    (ctx.step_dir("t") / "epoch_001.pt").write_text("a checkpoint")
    train.fail = None
    StepStore(ctx).run(train_step(ctx, 4), progress=False, position="")
    assert [s.resume for s in train.calls[2:]] == [False, False]
    assert not (ctx.step_dir("t") / "epoch_001.pt").exists()


def test_no_resume_without_config_json(ctx: Context, train: Recorder) -> None:
    """A started marker of the same key whose folder holds no config.json (the run never began)
    starts afresh."""
    ctx.steps_dir.mkdir(parents=True)
    (ctx.steps_dir / "t.started").write_text(json.dumps({"key": step_key(train_step(ctx), ctx, [])}))
    ctx.step_dir("t").mkdir()
    (ctx.step_dir("t") / "stray.txt").write_text("x")
    StepStore(ctx).run(train_step(ctx), progress=False, position="")
    assert [s.resume for s in train.calls] == [False] and not (ctx.step_dir("t") / "stray.txt").exists()


def test_other_studies_never_resume(ctx: Context, fake: Recorder) -> None:
    ctx.steps_dir.mkdir(parents=True)
    (ctx.steps_dir / "a.started").write_text(json.dumps({"key": step_key(step(), ctx, [])}))
    ctx.step_dir("a").mkdir()
    (ctx.step_dir("a") / "config.json").write_text("{}")
    (ctx.step_dir("a") / "stray.txt").write_text("x")
    StepStore(ctx).run(step(), progress=False, position="")
    assert not (ctx.step_dir("a") / "stray.txt").exists()
    assert fake.calls[0].resume is False  # the settings as the recipe gave them


def test_a_link_in_the_folders_place_is_removed(ctx: Context, fake: Recorder, tmp_path: Path) -> None:
    """A symbolic link where the step's folder belongs is removed, not followed (the folder it
    points to stays)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    ctx.steps_dir.mkdir(parents=True)
    ctx.step_dir("a").symlink_to(elsewhere, target_is_directory=True)
    StepStore(ctx).run(step(), progress=False, position="")
    assert (elsewhere / "keep.txt").read_text() == "mine" and sorted(p.name for p in elsewhere.iterdir()) == [
        "keep.txt"
    ]
    assert ctx.step_dir("a").is_dir() and not ctx.step_dir("a").is_symlink()


def test_the_gpu_peak_restarts_before_each_study(ctx: Context, fake: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step's record holds its own GPU peak: the peak restarts after the study's module is
    imported and before it runs, once per step that runs (none for a reused step)."""
    events: list[str] = []
    monkeypatch.setattr(_store, "restart_gpu_peak", lambda: events.append("restart"))
    original = fake.run
    module = sys.modules[FAKE]
    module.run = lambda settings, **kw: events.append("run") or original(settings, **kw)  # type: ignore[attr-defined]
    StepStore(ctx).run(step(), progress=False, position="")
    StepStore(ctx).run(step(), progress=False, position="")
    assert events == ["restart", "run"]


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_no_key_of_the_whole_plan_depends_on_where_out_lives(scale: str) -> None:
    """Every step of ``reproduce all`` keeps its key when OUT moves: the checkpoints a transfer
    or evaluate step reads are given as text (``str(checkpoint)``), which stayed absolute in the
    key, so a moved reproduction ran 5 of its 28 steps again (the transfer and evaluate steps)."""
    from ntkrobust.reproduce import all_recipes
    from ntkrobust.reproduce.run import plan

    def keys(out: str) -> dict[str, str]:
        ctx = Context(scale, Path("/data") if scale != "smoke" else None, Path(out) / "steps")
        steps, _ = plan(all_recipes(), ctx)
        found: dict[str, str] = {}
        for name, one in steps.items():
            found[name] = step_key(one, ctx, [found[n] for n in one.needs])
        return found

    here, there = keys("/a/out"), keys("/b/c/out")
    assert here.keys() == there.keys() and [n for n in here if here[n] != there[n]] == []
    ctx = Context(scale, Path("/data") if scale != "smoke" else None, Path("/a/out/steps"))
    transfer = plan(all_recipes(), ctx)[0]["mnist-transfer-ntk"]
    targets = step_config(transfer, ctx)["settings"]["target"]
    assert targets == [f"$STEPS/mnist-{mode}/checkpoints/epoch_{transfer.settings.target[0][-6:-3]}.pt"
                       for mode in ("standard", "pgd")]  # fmt: skip
    assert canonical("/a/out/steps-other/x", ctx) == "/a/out/steps-other/x"  # a sibling is no step's folder
