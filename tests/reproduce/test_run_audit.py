"""``reproduce.run`` with stand-in recipes: a group ``fake`` of three recipes over four steps of a
stand-in study (``ntkrobust.studies.audit_fake``, which records each call), so that which step
runs, how often and in which order, and what each finding of the report holds, are seen in
milliseconds. The expected findings are written out by hand from the recipes' own fields."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ntkrobust.reproduce._recipe import PAPERS, Context, Recipe, Results, Step, Verdict
from ntkrobust.studies._base import StudyError

reproduce_run = importlib.import_module("ntkrobust.reproduce.run")  # the package's `run` is a function
FAKE = "ntkrobust.studies.audit_fake"


@dataclass(frozen=True)
class FakeSettings:
    value: int


class Study:
    """The stand-in study: the values it ran, in order; its result writes results.json and a figure."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, settings: FakeSettings, *, progress: bool, argv: Any) -> Any:
        self.calls.append(settings.value)
        record = {"value": settings.value}

        class Result:
            def __init__(self) -> None:
                self.record = record

            def save(self, folder: Path, *, overwrite: bool = False) -> None:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "results.json").write_text(json.dumps(record))
                (folder / "figure.png").write_bytes(b"png")

        return Result()


#: the values of the steps (a test changes one to change that step's config)
VALUES = {"s1": 1, "s2": 2, "s3": 3, "s4": 4}


def _step(name: str, needs: tuple[str, ...] = (), minutes: float = 1.0) -> Step:
    return Step(name, "audit-fake", FakeSettings(VALUES[name]), needs=needs, minutes=minutes)


SEEN: dict[str, list[str]] = {}


def _check(recipe: str, verdict: str) -> Any:
    def check(results: Results) -> Verdict:
        SEEN[recipe] = sorted(results.steps)
        values = {name: results.record(name)["value"] for name in sorted(results.steps)}
        return Verdict(verdict, f"{recipe} measured {values}", {"values": values, "ratio": float("inf")})

    return check


def _recipes() -> tuple[Recipe, ...]:
    return (
        Recipe("fake-a", "TK", "fig. A", "claim A", "rule A", lambda ctx: [_step("s1", minutes=2.0),
               _step("s2", ("s1",))], _check("fake-a", "agrees"),
               figures=lambda ctx: [("s2", "figure.png", "caption A")], paper_number="number A"),
        Recipe("fake-b", "LOO", "fig. B", "claim B", "rule B", lambda ctx: [_step("s1", minutes=2.0), _step("s3")],
               _check("fake-b", "contradicts")),
        Recipe("fake-c", "RAT", "fig. C", "claim C", "rule C", lambda ctx: [_step("s4", minutes=0.5)],
               _check("fake-c", "inconclusive"), paper_number="number C"),
    )  # fmt: skip


@pytest.fixture
def study(monkeypatch: pytest.MonkeyPatch) -> Iterator[Study]:
    recorder = Study()
    module = types.ModuleType(FAKE)
    module.run = recorder.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, FAKE, module)
    monkeypatch.setattr(reproduce_run, "RECIPES", {"fake": _recipes()})
    monkeypatch.setattr(reproduce_run, "GROUPS", ("fake", "all"))
    values = dict(VALUES)
    SEEN.clear()
    yield recorder
    VALUES.clear()
    VALUES.update(values)


def reproduce(target: str, out: Path) -> dict[str, Any]:
    result = reproduce_run.run(reproduce_run.ReproduceSettings(target, out=out))
    result.save(out)
    return json.loads((out / "findings.json").read_text())


def steps_of(finding: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(step["name"], step["reused"]) for step in finding["steps"]]


def test_each_step_runs_once_in_order_and_each_finding_holds_its_own(study: Study, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = reproduce("fake", out)
    assert study.calls == [1, 2, 3, 4]  # s1 shared by two recipes: once
    assert SEEN == {"fake-a": ["s1", "s2"], "fake-b": ["s1", "s3"], "fake-c": ["s4"]}  # a check sees its own steps
    a, b, c = report["findings"]
    assert [f["recipe"] for f in (a, b, c)] == ["fake-a", "fake-b", "fake-c"]
    assert (steps_of(a), steps_of(b), steps_of(c)) == (
        [("s1", False), ("s2", False)], [("s1", False), ("s3", False)], [("s4", False)])  # fmt: skip
    assert {k: a[k] for k in ("paper", "paper_title", "reference", "claim", "paper_number", "rule", "verdict")} == {
        "paper": "TK", "paper_title": PAPERS["TK"], "reference": "fig. A", "claim": "claim A",
        "paper_number": "number A", "rule": "rule A", "verdict": "agrees"}  # fmt: skip
    assert a["measured"] == "fake-a measured {'s1': 1, 's2': 2}"
    assert a["numbers"] == {"values": {"s1": 1, "s2": 2}, "ratio": "inf"}  # strict JSON
    assert (b["verdict"], b["paper_title"], b["paper_number"], c["verdict"]) == (
        "contradicts", PAPERS["LOO"], None, "inconclusive")  # fmt: skip
    assert a["figures"] == [{"path": "steps/s2/figure.png", "caption": "caption A"}] and b["figures"] == []
    assert (out / a["figures"][0]["path"]).is_file()
    for finding in (a, b, c):
        assert finding["seconds"] == sum(step["seconds"] for step in finding["steps"])
    seconds = {step["name"]: step["seconds"] for f in (a, b, c) for step in f["steps"]}
    assert report["reproduction"]["steps_seconds"] == pytest.approx(sum(seconds.values()), abs=1e-12)
    # every recipe there is (the group "fake" alone here): "all"
    assert (report["reproduction"]["target"], report["reproduction"]["asked"]) == ("all", "fake")
    assert json.loads((out / "reproduction.json").read_text())["target"] == "all"
    # again: every step reused, nothing runs, the steps' own time is still theirs
    again = reproduce("fake", out)
    assert study.calls == [1, 2, 3, 4]
    assert all(reused for f in again["findings"] for _, reused in steps_of(f))
    assert again["reproduction"]["steps_seconds"] == pytest.approx(sum(seconds.values()), abs=1e-12)
    assert [f["measured"] for f in again["findings"]] == [f["measured"] for f in (a, b, c)]
    summary = reproduce_run.run(reproduce_run.ReproduceSettings("fake", out=out)).summary()
    assert summary == (
        "fake-a: agrees\nfake-b: contradicts\nfake-c: inconclusive\n"
        "3 findings: 1 agrees, 1 contradicts, 1 inconclusive; report.html, report.md, findings.json"
    )


def test_a_step_that_changed_runs_again_with_the_steps_that_read_it(study: Study, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reproduce("fake-a", out)
    VALUES["s1"] = 10
    report = reproduce("fake-a", out)
    assert study.calls == [1, 2, 10, 2]  # s2 reads s1: its key changed too
    assert steps_of(report["findings"][0]) == [("s1", False), ("s2", False)]
    assert "kept" not in report["findings"][0] and "'s1': 10" in report["findings"][0]["measured"]


def test_earlier_findings_are_judged_again_or_kept_and_nothing_runs_for_them(study: Study, tmp_path: Path) -> None:
    """The report keeps the findings of earlier targets: judged again from their finished steps
    (reused, listed), or, where a step's config changed since, kept as judged then, its steps not
    run; the report in the recipes' order, its target naming every finding it holds."""
    out = tmp_path / "out"
    first = reproduce("fake-b", out)["findings"][0]
    report = reproduce("fake-a", out)
    assert study.calls == [1, 3, 2]
    a, b = report["findings"]  # in the recipes' order, not the order reproduced
    assert (a["recipe"], b["recipe"]) == ("fake-a", "fake-b") and "kept" not in b
    assert steps_of(b) == [("s1", True), ("s3", True)] and b["measured"] == first["measured"]
    assert steps_of(a) == [("s1", True), ("s2", False)]
    assert report["reproduction"]["target"] == "fake-a + fake-b" and report["reproduction"]["asked"] == "fake-a"
    assert json.loads((out / "reproduction.json").read_text())["target"] == "fake-a + fake-b"
    findings = json.loads((out / "findings.json").read_text())
    findings["reproduction"]["created"] = "2020-01-01T00:00:00+00:00"  # when fake-b was judged last
    (out / "findings.json").write_text(json.dumps(findings))
    VALUES["s3"] = 30  # fake-b's step changes: reproducing fake-c neither runs nor judges it
    for _ in range(2):
        report = reproduce("fake-c", out)
        assert study.calls == [1, 3, 2, 4]
        kept = {f["recipe"]: f for f in report["findings"]}["fake-b"]
        assert kept["kept"] and kept["measured"] == first["measured"] and kept["judged"] == "2020-01-01T00:00:00+00:00"
    assert [f["recipe"] for f in report["findings"]] == ["fake-a", "fake-b", "fake-c"]
    assert report["reproduction"]["target"] == "all"
    summary = reproduce_run.run(reproduce_run.ReproduceSettings("fake-c", out=out)).summary().splitlines()
    assert summary[1] == "fake-b: contradicts (kept from the earlier report)" and summary[0] == "fake-a: agrees"
    # the target itself is never kept: reproducing fake-b runs its changed step
    report = reproduce("fake-b", out)
    assert study.calls == [1, 3, 2, 4, 30]
    b = {f["recipe"]: f for f in report["findings"]}["fake-b"]
    assert "kept" not in b and steps_of(b) == [("s1", True), ("s3", False)]


def test_plan_orders_shares_and_refuses(tmp_path: Path) -> None:
    ctx = Context("smoke", None, tmp_path / "steps")
    steps, uses = reproduce_run.plan(_recipes(), ctx)
    assert list(steps) == ["s1", "s2", "s3", "s4"]
    assert uses == {"fake-a": ["s1", "s2"], "fake-b": ["s1", "s3"], "fake-c": ["s4"]}
    clash = dataclasses.replace(_recipes()[1], steps=lambda ctx: [Step("s1", "audit-fake", FakeSettings(99))])
    with pytest.raises(RuntimeError, match="define step s1 differently"):
        reproduce_run.plan([_recipes()[0], clash], ctx)
    backwards = dataclasses.replace(_recipes()[0], steps=lambda ctx: [_step("s2", ("s1",)), _step("s1")])
    with pytest.raises(RuntimeError, match=r"step s2 comes before \['s1'\]"):
        reproduce_run.plan([backwards], ctx)


def test_cost_counts_a_shared_step_once_and_lists_hours_at_paper_scale(study: Study) -> None:
    recipes = _recipes()
    assert reproduce_run.estimated_minutes(recipes, "smoke") == 2.0 + 1.0 + 1.0 + 0.5
    assert reproduce_run.estimated_minutes(recipes[:2], "paper") == 4.0
    lines = reproduce_run.listing("fake").splitlines()
    assert lines[1].split() == ["fake-a", "3.0m", "3.0m", "0.1h", "TK", "fig.", "A:", "claim", "A"]
    assert lines[4].split()[:4] == ["fake", "4.5m", "4.5m", "0.1h"]


def test_describe_names_papers_whole_and_shortens_past_three_parts() -> None:
    names = [recipe.name for recipe in reproduce_run.all_recipes()]
    assert reproduce_run.describe(names) == "all"
    tk = [recipe.name for recipe in reproduce_run.RECIPES["tk"]]
    loo = [recipe.name for recipe in reproduce_run.RECIPES["loo"]]
    assert reproduce_run.describe([*tk, loo[0], loo[1]]) == f"tk + {loo[0]} + {loo[1]}"
    assert reproduce_run.describe([*tk, *loo[:3]]) == f"{len(tk) + 3} findings (tk, {loo[0]}, {loo[1]}, ...)"
    assert reproduce_run.describe([loo[1], tk[0]]) == f"{tk[0]} + {loo[1]}"  # in the recipes' order


def test_another_data_root_is_another_reproduction(tmp_path: Path) -> None:
    out, root = tmp_path / "out", tmp_path / "data"
    out.mkdir()
    root.mkdir()
    (out / "reproduction.json").write_text(json.dumps({"scale": "cpu", "data_root": str(tmp_path / "other")}))
    settings = reproduce_run.ReproduceSettings("tk", out=out, scale="cpu", data_root=root)
    with pytest.raises(StudyError, match="holds a reproduction at scale cpu with data root"):
        reproduce_run._check_out(settings, reproduce_run.context(settings))
    (out / "reproduction.json").write_text(json.dumps({"scale": "cpu", "data_root": str(root.resolve())}))
    identity = reproduce_run._check_out(settings, reproduce_run.context(settings))
    assert identity == {"scale": "cpu", "data_root": str(root.resolve())}


def test_the_data_a_step_reads_is_named_in_the_refusal(tmp_path: Path) -> None:
    """RAT's BatchNorm finding reads the CIFAR-10 subset at cpu scale: the refusal names its file
    (it named MNIST's for every step)."""
    with pytest.raises(StudyError, match=r"needs --data-root DIR holding cifar10/cifar10_subset\.npz$"):
        reproduce_run.check(reproduce_run.ReproduceSettings("rat-fig2-batchnorm", out=tmp_path / "o", scale="cpu"))
    ctx = Context("cpu", Path("/d"), Path("/o/steps"))
    steps, _ = reproduce_run.plan(reproduce_run.select("rat-fig2-batchnorm"), ctx)
    assert {name: reproduce_run._data_name(step) for name, step in steps.items()} == {
        "cifar-pgd-resnet18-bn": "cifar10", "cifar-dynamics-batchnorm": None}  # fmt: skip


def test_each_data_set_loads_once_before_any_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    from ntkrobust.studies import DataSettings

    loaded: list[str] = []
    monkeypatch.setattr(DataSettings, "load", lambda self: loaded.append(self.data))
    ctx = Context("cpu", Path("/d"), Path("/o/steps"))
    steps, _ = reproduce_run.plan(reproduce_run.select("tk"), ctx)
    reproduce_run._check_data(steps, ctx, reproduce_run.select("tk"))
    datas = [step.settings.data for step in steps.values() if getattr(step.settings, "data", None) is not None]
    distinct = [d for i, d in enumerate(datas) if d not in datas[:i]]
    assert len(loaded) == len(distinct) < len(datas)
