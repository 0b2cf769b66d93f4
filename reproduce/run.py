"""``ntkrobust reproduce``: run the recipes of a target, reuse finished steps, judge every
finding and write the report (``reproduce.report``).

The reproduction folder OUT holds ``reproduction.json`` (the scale and data root it was made
with: another reproduction's folder is refused), ``steps/`` (one folder per step, see
``reproduce._store``) and the report: ``report.html``, ``report.md``, ``findings.json``. The
report covers every target reproduced into OUT (``run``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ntkrobust.bridge.files import JsonFileError, json_safe, read_json, write_json
from ntkrobust.reproduce import beyond, loo, rat, tk
from ntkrobust.reproduce._recipe import PAPERS, SCALES, Context, Recipe, Results, Step, StepRecordError
from ntkrobust.reproduce._shared import DATA_FILES
from ntkrobust.reproduce._store import StepRun, StepStore
from ntkrobust.reproduce.report import check_finding, plural
from ntkrobust.studies._base import StudyError, StudyResult, log, versions

#: every recipe, by paper
RECIPES: dict[str, tuple[Recipe, ...]] = {"tk": tk.RECIPES, "loo": loo.RECIPES, "rat": rat.RECIPES,
                                          "beyond": beyond.RECIPES}  # fmt: skip
#: what ``reproduce TARGET`` accepts besides a recipe's name
GROUPS = (*RECIPES, "all")


def all_recipes() -> list[Recipe]:
    """Every recipe of every group (``RECIPES``), in the order of ``--list``."""
    return [recipe for group in RECIPES.values() for recipe in group]


def select(target: str) -> list[Recipe]:
    """The recipes of ``target``: a paper (tk, loo, rat), beyond, all, or one recipe's name."""
    if target == "all":
        return all_recipes()
    if target in RECIPES:
        return list(RECIPES[target])
    found = [recipe for recipe in all_recipes() if recipe.name == target]
    if not found:
        import difflib

        names = [recipe.name for recipe in all_recipes()]
        # "tk-fig2" for "tk-fig2-features": a recipe whose name starts with it first, else a near spelling
        close = [n for n in names if target and n.startswith(target)][:3]
        close = close or difflib.get_close_matches(target, names, n=1)
        meant = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise StudyError(
            f"unknown recipe {target!r}: choose {', '.join(GROUPS)} or a recipe of `reproduce --list`{meant}"
        )
    return found


@dataclass(frozen=True)
class ReproduceSettings:
    """What ``run`` reproduces: ``target`` (a recipe's name, a paper ``tk`` / ``loo`` / ``rat``,
    ``beyond`` or ``all``) at ``scale`` (``smoke``, ``cpu``, ``paper``: ``SCALES``) into the folder
    ``out`` (steps finished there under the same resolved config are reused), the real data read
    from ``data_root`` (the ``cpu`` and ``paper`` scales; ``smoke`` uses scikit-learn's digits)."""

    target: str
    out: Path
    scale: str = "smoke"
    data_root: Path | None = None


def context(settings: ReproduceSettings) -> Context:
    root = None if settings.data_root is None else Path(settings.data_root).resolve()
    return Context(settings.scale, root, Path(settings.out).resolve() / "steps")


def plan(recipes: Sequence[Recipe], ctx: Context) -> tuple[dict[str, Step], dict[str, list[str]]]:
    """Every step once, in an order where each follows the steps it reads; and each recipe's steps."""
    steps: dict[str, Step] = {}
    uses: dict[str, list[str]] = {}
    for recipe in recipes:
        uses[recipe.name] = []
        for step in recipe.steps(ctx):
            if step.name in steps and steps[step.name] != step:
                raise RuntimeError(f"two recipes define step {step.name} differently")  # a recipe bug
            missing = [n for n in step.needs if n not in steps]
            if missing:
                raise RuntimeError(f"step {step.name} comes before {missing}")  # a recipe bug
            steps.setdefault(step.name, step)
            uses[recipe.name].append(step.name)
    return steps, uses


def estimated_minutes(recipes: Sequence[Recipe], scale: str) -> float:
    steps, _ = plan(recipes, Context(scale, Path("DATA"), Path("OUT/steps")))
    return sum(step.minutes for step in steps.values())


def listing(target: str = "all") -> str:
    """The recipes of ``target`` with their claims and estimated cost per scale, then the cost of
    each group (``reproduce [TARGET] --list``)."""
    lines = [f"{'recipe':38} {'smoke':>7} {'cpu':>7} {'paper':>8}  claim"]
    for recipe in select(target):
        cost = [estimated_minutes([recipe], scale) for scale in SCALES]
        lines.append(
            f"{recipe.name:38} {cost[0]:6.1f}m {cost[1]:6.1f}m {cost[2] / 60:7.1f}h  "
            f"{recipe.paper} {recipe.reference}: "
            f"{recipe.claim}"
        )
    for group in GROUPS if target == "all" else ((target,) if target in GROUPS else ()):
        recipes = select(group)
        cost = [estimated_minutes(recipes, scale) for scale in SCALES]
        lines.append(
            f"{group:38} {cost[0]:6.1f}m {cost[1]:6.1f}m {cost[2] / 60:7.1f}h  (steps shared within it run once)"
        )
    lines.append(
        "smoke and cpu: minutes on 2 CPU cores; paper: hours on one RTX 3090, RAT's GPU (an H200 took about half)"
    )
    return "\n".join(lines)


def _data_name(step: Step) -> str | None:
    """ "mnist" or "cifar10": the data set a step reads (None: none, e.g. dynamics of runs)."""
    data = getattr(step.settings, "data", None)
    return None if data is None else "cifar10" if "cifar" in str(data.data) else "mnist"


def _check_data(steps: dict[str, Step], ctx: Context, recipes: Sequence[Recipe]) -> None:
    """Each data set the steps read loads (before any compute), or one line says which files where."""
    if ctx.scale == "smoke":
        return
    seen: list[Any] = []
    for step in steps.values():
        data = getattr(step.settings, "data", None)
        if data is None or data in seen:
            continue
        seen.append(data)
        try:
            data.load()
        except StudyError as err:
            files = DATA_FILES[(_data_name(step) or "mnist", ctx.scale)]
            raise StudyError(f"--scale {ctx.scale} reads {files} under --data-root {ctx.data_root}: {err}") from None


def _check_out(settings: ReproduceSettings, ctx: Context) -> dict[str, Any]:
    """The reproduction's identity; an OUT made by another one is refused."""
    identity = {"scale": ctx.scale, "data_root": None if ctx.data_root is None else str(ctx.data_root)}
    path = Path(settings.out) / "reproduction.json"
    if path.is_file():
        try:
            found = read_json(path)
        except JsonFileError:
            found = None
        if not isinstance(found, dict):
            raise StudyError(f"--out {settings.out}: reproduction.json is unreadable; choose another --out")
        if {k: found.get(k) for k in identity} != identity:
            raise StudyError(
                f"--out {settings.out} holds a reproduction at scale {found.get('scale')} with data root "
                f"{found.get('data_root')}; this one is scale {ctx.scale} with {identity['data_root']}: "
                "choose another --out"
            )
    elif Path(settings.out).is_dir() and any(Path(settings.out).iterdir()):
        raise StudyError(f"--out {settings.out} is not empty and holds no reproduction; choose another --out")
    return identity


def describe(names: Sequence[str]) -> str:
    """The recipes ``names`` as targets: "all", whole papers by name, then single recipes (past
    three parts: their number, and the first three)."""
    rest = set(names)
    if rest >= {recipe.name for recipe in all_recipes()}:
        return "all"
    parts = []
    for group, recipes in RECIPES.items():
        if {recipe.name for recipe in recipes} <= rest:
            parts.append(group)
            rest -= {recipe.name for recipe in recipes}
    parts += [recipe.name for recipe in all_recipes() if recipe.name in rest]
    if len(parts) > 3:
        return f"{len(names)} findings ({', '.join(parts[:3])}, ...)"
    return " + ".join(parts)


def _earlier_findings(out: Path, selected: Sequence[Recipe]) -> dict[str, dict[str, Any]]:
    """The findings of the report already in ``out`` that this target does not judge (by recipe
    name, in the report's order): the report keeps them. One that this version lacks is dropped."""
    path = out / "findings.json"
    if not path.is_file():
        return {}
    try:
        report = read_json(path)
        findings = report["findings"]
        created = report["reproduction"]["created"]
        earlier = {str(f["recipe"]): {**f, "judged": f.get("judged") or created} for f in findings}
    except (JsonFileError, KeyError, TypeError) as err:
        reason = str(err) if isinstance(err, JsonFileError) else f"not a report: {type(err).__name__}"
        raise _unreadable(out, reason) from None
    known = {recipe.name for recipe in all_recipes()}
    for name in earlier.keys() - known:
        log.info(f"{name}, a finding of the earlier report, is no recipe of this version: left out of the report")
    chosen = {recipe.name for recipe in selected}
    kept = {name: finding for name, finding in earlier.items() if name in known and name not in chosen}
    for name, finding in kept.items():  # the report shows them as they stand: checked now, not after the compute
        try:
            check_finding(finding)
        except ValueError as err:
            raise _unreadable(out, f"finding {name}: {err}") from None
    return kept


def _unreadable(out: Path, reason: str) -> StudyError:
    return StudyError(
        f"--out {out}: findings.json, the report of the reproduction there, is unreadable ({reason}); "
        "delete it (the steps stay and are reused) or choose another --out"
    )


class Checked(NamedTuple):
    """A checked reproduction: the target's recipes, then those of the report already in --out
    (``_earlier_findings``: their findings as that report holds them, in ``earlier``); every step
    of them in order, and each recipe's steps."""

    recipes: list[Recipe]
    ctx: Context
    steps: dict[str, Step]
    uses: dict[str, list[str]]
    earlier: dict[str, dict[str, Any]]
    identity: dict[str, Any]  # what reproduction.json records (``_check_out``)


def check(settings: ReproduceSettings) -> Checked:
    """Everything that can be wrong with the settings, found before any compute."""
    if settings.scale not in SCALES:
        raise StudyError(f"unknown scale {settings.scale!r}: choose {', '.join(SCALES)}")
    recipes = select(settings.target)
    ctx = context(settings)
    if ctx.scale != "smoke" and ctx.data_root is None:
        # the data sets its steps read at this scale (LOO's and RAT's are MNIST's below paper scale
        # and CIFAR-10's at it), from the plan under a stand-in root
        stand_in = dataclasses.replace(ctx, data_root=Path("DIR"))
        needed = sorted({name for step in plan(recipes, stand_in)[0].values() if (name := _data_name(step))})
        files = " and ".join(DATA_FILES[(name, ctx.scale)] for name in needed)
        raise StudyError(f"--scale {ctx.scale} needs --data-root DIR holding {files}")
    if ctx.scale == "smoke" and ctx.data_root is not None:  # it would be recorded, though unread
        raise StudyError("--scale smoke runs on scikit-learn's digits and reads no --data-root: leave it out")
    if ctx.data_root is not None and not ctx.data_root.is_dir():
        raise StudyError(f"--data-root {settings.data_root} is not a folder")
    identity = _check_out(settings, ctx)
    target_steps, _ = plan(recipes, ctx)
    if settings.scale == "paper":
        import torch

        if not torch.cuda.is_available():
            hours = estimated_minutes(recipes, "paper") / 60
            raise StudyError(
                f"--scale paper needs a GPU (about {hours:.0f} GPU-hours for {settings.target}); none found"
            )
    _check_data(target_steps, ctx, recipes)
    earlier = _earlier_findings(Path(settings.out), recipes)
    recipes += [recipe for recipe in all_recipes() if recipe.name in earlier]
    steps, uses = plan(recipes, ctx)
    return Checked(recipes, ctx, steps, uses, earlier, identity)


def machine() -> dict[str, Any]:
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a broken driver must not stop the report
        gpu = None
    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count() or 0, "gpu": gpu}


@dataclass
class ReproduceResult(StudyResult):
    """The report of a reproduction (``report.write_report``), saved into its OUT."""

    out: Path = field(kw_only=True)

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """The report in the reproduction's own folder (``overwrite``: the folder is its own)."""
        from ntkrobust.reproduce.report import write_report

        write_report(Path(out), self.record)
        return Path(out)

    def summary(self) -> str:
        from ntkrobust.reproduce.report import verdict_counts

        counts = verdict_counts(self.record["findings"])
        kept = " (kept from the earlier report)"
        lines = [f"{f['recipe']}: {f['verdict']}{kept if f.get('kept') else ''}" for f in self.record["findings"]]
        tally = ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
        return "\n".join([*lines, f"{plural(len(lines), 'finding')}: {tally}; report.html, report.md, findings.json"])


def run(settings: ReproduceSettings, *, progress: bool = False, argv: list[str] | None = None) -> ReproduceResult:
    """Run (or reuse) every step of the target's recipes, then judge each finding. The findings
    of the report already in --out stay in it: judged again where their steps are all finished
    (nothing runs for them), else kept as that report judged them, marked so."""
    recipes, ctx, steps, uses, earlier, identity = check(settings)
    started = datetime.datetime.now().astimezone()
    clock = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [recipe for recipe in recipes if recipe.name not in earlier]
    target = describe([recipe.name for recipe in recipes])
    write_json(out / "reproduction.json", {**identity, "target": target})
    total = estimated_minutes(chosen, settings.scale)
    needed = [name for name in steps if any(name in uses[recipe.name] for recipe in chosen)]
    kept = f"; the report keeps {plural(len(earlier), 'earlier finding')}" if earlier else ""
    log.info(f"reproduce {settings.target} at scale {settings.scale}: {plural(len(chosen), 'finding')}, "
             f"{plural(len(needed), 'step')}, estimated {total:.1f} min{kept}")  # fmt: skip
    store = StepStore(ctx)
    runs: dict[str, StepRun] = {}
    for i, name in enumerate(needed, 1):
        runs[name] = store.run(steps[name], progress=progress, position=f"[{i}/{len(needed)}]")
    finished = store.finished_steps(steps)
    judged = [recipe for recipe in recipes if all(name in finished for name in uses[recipe.name])]
    for name in steps:  # the steps of earlier findings, all finished: reused
        if name not in runs and any(name in uses[recipe.name] for recipe in judged):
            runs[name] = store.run(steps[name], progress=progress, position="[earlier report]")
    findings = []
    for recipe in recipes:
        recipe_runs = [runs[n] for n in uses[recipe.name] if n in runs]
        # a check sees its own recipe's steps only: one that read another recipe's (another
        # family's runs, at another scale) would fail here rather than judge the wrong net
        results = Results(ctx, {name: steps[name] for name in uses[recipe.name]})
        if recipe.name not in earlier:
            findings.append(_finding(recipe, ctx, results, recipe_runs, store))
            continue
        try:  # an earlier finding cannot stop this target's report: kept as it was when not judged
            if recipe not in judged:
                raise StudyError("its steps are not all finished under this version's configs")
            findings.append(_finding(recipe, ctx, results, recipe_runs, store))
        except (StudyError, StepRecordError, KeyError, TypeError, ValueError, IndexError) as err:
            log.info(f"{recipe.name}: kept from the earlier report ({str(err)[:120]})")
            findings.append({**earlier[recipe.name], "kept": True})
    order = {recipe.name: i for i, recipe in enumerate(all_recipes())}
    findings.sort(key=lambda finding: order[finding["recipe"]])
    record = {
        "reproduction": {
            "target": target, "asked": settings.target, "scale": settings.scale,
            "data_root": None if ctx.data_root is None else str(ctx.data_root), "out": str(out),
            "created": started.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(), "seconds": time.perf_counter() - clock,
            "steps_seconds": sum(run.seconds for run in runs.values()),
            "argv": argv,
        },
        "findings": findings,
    }  # fmt: skip
    return ReproduceResult(record, out=out)


def _finding(recipe: Recipe, ctx: Context, results: Results, runs: list[StepRun], store: StepStore) -> dict[str, Any]:
    try:
        verdict = recipe.check(results)
    except StepRecordError as err:
        raise StudyError(f"{err}: delete that step's folder under {ctx.steps_dir} to run it again") from None
    except (KeyError, TypeError, ValueError, IndexError) as err:
        if not store.changed_since_finished([run.name for run in runs]):
            raise  # the steps' files are as they finished: a bug in the recipe, with its traceback
        raise StudyError(
            f"{recipe.name}: its steps' records under {ctx.steps_dir} do not hold what it reads ({type(err).__name__}: "
            f"{str(err)[:80]}); delete the steps it uses to run them again"
        ) from None
    log.info(f"{recipe.name}: {verdict.verdict}")
    steps_root = ctx.steps_dir.parent
    figures = [
        {"path": str((ctx.step_dir(step) / file).relative_to(steps_root)), "caption": caption}
        for step, file, caption in recipe.figures(ctx)
    ]
    return {
        "recipe": recipe.name, "paper": recipe.paper, "paper_title": PAPERS[recipe.paper],
        "reference": recipe.reference, "claim": recipe.claim, "paper_number": recipe.paper_number,
        "measured": verdict.measured, "numbers": json_safe(verdict.numbers), "verdict": verdict.verdict,
        "rule": recipe.rule, "figures": figures, "steps": [run.to_dict() for run in runs],
        "seconds": sum(run.seconds for run in runs),
    }  # fmt: skip
