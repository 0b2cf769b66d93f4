"""What a reproduction is made of: steps (one study run each), recipes (a paper's finding as a
check on the results of steps) and the scales they run at.

A ``Step`` is one call of a study (``ntkrobust.studies.<study>.run(settings)``) whose output
lives in ``OUT/steps/<name>``. Steps are shared by name: two recipes that need the same training
run list the same step, and it runs once. A step is identified by its *resolved config* (the
study, its settings with the reproduction's folders abstracted, and the keys of the steps it
reads), so a finished step is reused only while that config is unchanged.

A ``Recipe`` states one finding of one paper: the claim in a sentence, the paper's number where
it gives one, the steps that measure it at a scale, and ``check``, the claim as a rule on the
steps' results that returns a ``Verdict`` (agrees / contradicts / inconclusive, with the numbers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntkrobust.bridge.files import JsonFileError, json_safe, read_json
from ntkrobust.studies._base import keyed

#: the scales a reproduction runs at (``--scale``)
SCALES = ("smoke", "cpu", "paper")
#: the outcomes of a check
VERDICTS = ("agrees", "contradicts", "inconclusive")
#: the papers, as the report names them
PAPERS = {
    "TK": "Tsilivis & Kempe 2022, What can the neural tangent kernel tell us about adversarial robustness?",
    "LOO": "Loo et al. 2022, Evolution of neural tangent kernels under benign and adversarial training",
    "RAT": "Rethinking adversarial training with neural tangent kernel",
    "beyond": "beyond the papers: measured by this tool, no paper's number",
}


@dataclass(frozen=True)
class Context:
    """Where a reproduction reads and writes: its scale, the user's data folder and OUT/steps."""

    scale: str
    data_root: Path | None
    steps_dir: Path

    def step_dir(self, name: str) -> Path:
        return self.steps_dir / name


@dataclass(frozen=True)
class Step:
    """One study run: ``ntkrobust.studies.<study>.run(settings)`` into ``OUT/steps/<name>``.

    ``needs``: the steps whose folders ``settings`` reads (they run first, and their keys are
    part of this step's key). ``minutes``: the estimated cost at the step's scale (2 CPU cores at
    smoke and cpu scale, one GPU at paper scale), for ``reproduce --list``.
    """

    name: str
    study: str
    settings: Any
    needs: tuple[str, ...] = ()
    minutes: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: the verdict, one or two sentences with the numbers, and the numbers."""

    verdict: str
    measured: str
    numbers: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")


#: accuracies are shares k/n, and a rule's margin is a decimal: 0.35 − 0.30 is 0.04999… in floats,
#: so a gap of exactly the margin failed "at least 0.05". Comparisons with a margin allow this much
_ROUNDING = 1e-9


def at_least(value: float, bound: float) -> bool:
    """``value`` ≥ ``bound``, a float rounding below counted as equal."""
    return value >= bound - _ROUNDING


def at_most(value: float, bound: float) -> bool:
    """``value`` ≤ ``bound``, a float rounding above counted as equal."""
    return value <= bound + _ROUNDING


def record_float(value: Any) -> float:
    """A number of a record as a float: strict JSON writes NaN and the infinities as "nan", "inf",
    "-inf", and some studies write an undefined number (τ, ρ) as None, read here as NaN."""
    return float("nan") if value is None else float(value)


class Results:
    """The records of finished steps, for checks: ``results.record("mnist-standard")`` is the step's
    results JSON (``history.json`` of a training run)."""

    def __init__(self, ctx: Context, steps: Mapping[str, Step]):
        self.ctx = ctx
        self.steps = steps

    def folder(self, name: str) -> Path:
        return self.ctx.step_dir(name)

    def record(self, name: str) -> dict[str, Any]:
        path = self.folder(name) / record_file(self.steps[name])
        try:
            record = read_json(path)
        except JsonFileError as error:  # edited or damaged since the step finished
            raise StepRecordError(f"step {name}: {path}: {error}") from None
        if not isinstance(record, dict):
            raise StepRecordError(f"step {name}: {path} is not a record ({type(record).__name__})")
        return record


class StepRecordError(Exception):
    """A finished step's record cannot be read (a folder edited or damaged after the step)."""


def record_file(step: Step) -> str:
    """The file of a finished step that its recipes' checks read: a training run's history,
    any other study's results."""
    return "history.json" if step.study == "train" else "results.json"


@dataclass(frozen=True)
class Recipe:
    """One finding of one paper, measured by ``steps(ctx)`` and judged by ``check(results)``."""

    name: str
    paper: str  # a key of PAPERS
    reference: str  # "fig. 2", "table 1", "sec. 6"
    claim: str
    rule: str  # the check in words: what decides agrees / contradicts / inconclusive
    steps: Callable[[Context], Sequence[Step]]
    check: Callable[[Results], Verdict]
    figures: Callable[[Context], Sequence[tuple[str, str, str]]] = lambda ctx: ()  # (step, file, caption)
    paper_number: str | None = None


def canonical(value: Any, ctx: Context) -> Any:
    """``value`` (settings, paths, tuples, ...) as plain JSON, with the reproduction's folders
    written ``$STEPS`` and ``$DATA`` so that the key does not depend on where OUT lives (also in a
    path given as text: a transfer step's checkpoints were absolute, and a moved OUT ran them again).
    A settings field marked ``studies._base.UNKEYED_AT_DEFAULT`` is left out at its default."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: canonical(getattr(value, f.name), ctx)
            for f in dataclasses.fields(value)
            if keyed(f, getattr(value, f.name))  # a setting added later keeps old keys at its default
        }
    if isinstance(value, Path):
        text = str(value)
        for prefix, name in ((ctx.steps_dir, "$STEPS"), (ctx.data_root, "$DATA")):
            if prefix is not None and (value == prefix or prefix in value.parents):
                text = name + "/" + str(value.relative_to(prefix)) if value != prefix else name
                break
        return text
    if isinstance(value, dict):
        return {str(k): canonical(v, ctx) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v, ctx) for v in value]
    if isinstance(value, str) and any(
        prefix is not None and (value == str(prefix) or value.startswith(str(prefix) + "/"))
        for prefix in (ctx.steps_dir, ctx.data_root)
    ):  # a checkpoint or data file given as text (transfer's targets, evaluate's nets, the CIFAR subset)
        return canonical(Path(value), ctx)
    return json_safe(value)  # NaN and the infinities (e.g. --time inf) as strict JSON's strings


def step_config(step: Step, ctx: Context) -> dict[str, Any]:
    """The step's resolved config: its study and settings (``resume`` / ``force`` left out: they
    say how to run it, not what it measures)."""
    settings = canonical(step.settings, ctx)
    for transient in ("resume", "force"):
        settings.pop(transient, None)
    return {"study": step.study, "settings": settings}


def step_key(step: Step, ctx: Context, needed_keys: Sequence[str]) -> str:
    """sha256 of the resolved config and the keys of the steps it reads."""
    text = json.dumps({"config": step_config(step, ctx), "needs": list(needed_keys)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
