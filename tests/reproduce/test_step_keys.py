"""The keys of ``reproduce``'s steps, which decide what a finished reproduction folder reuses: a
changed key runs its step again (hours at paper scale). Pinned here for every step of every
recipe at every scale, so that a change of a study's settings (a new field, a changed default) or
of a recipe shows up as a failing test instead of a silent rerun in the users' folders."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from pathlib import Path

import pytest

from ntkrobust.reproduce._recipe import Context, Step, canonical
from ntkrobust.reproduce._store import StepStore

#: sha256 of {scale: {step: key}} for ``reproduce all`` at smoke (28 steps), cpu (28) and paper
#: (33) scale, as of version dfe2427. If a change means to run steps again, say which in the README
#: and put the new digest here; if not, mark the new setting ``studies._base.UNKEYED_AT_DEFAULT``.
KEYS_DIGEST = "1775e73215127db3de03217c36924cdf219e292474f7e788b97764d394ae0afa"


def _all_keys() -> dict[str, dict[str, str]]:
    run = importlib.import_module("ntkrobust.reproduce.run")  # the package's ``run`` is the function
    keys = {}
    for scale in ("smoke", "cpu", "paper"):
        root = None if scale == "smoke" else Path("/data")  # written $DATA in the keys: any folder
        ctx = run.context(run.ReproduceSettings(target="all", scale=scale, data_root=root, out=Path("/out")))
        steps, _ = run.plan(run.select("all"), ctx)
        store = StepStore(ctx)
        for name, step in steps.items():
            store.keys[name] = store.key(step)
        keys[scale] = dict(store.keys)
    return keys


def test_every_step_key_is_the_one_finished_folders_hold():
    keys = _all_keys()
    assert {scale: len(names) for scale, names in keys.items()} == {"smoke": 28, "cpu": 28, "paper": 33}
    assert hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest() == KEYS_DIGEST


def test_a_setting_added_later_is_keyed_only_away_from_its_default():
    """``evaluate --restarts`` came after the evaluate steps were recorded: at 1 their keys leave it
    out (the folders of before reuse them), at 3 it is in the key (another measurement)."""
    from ntkrobust.studies.evaluate import EvaluateSettings

    ctx = Context("smoke", None, Path("/out/steps"))
    plain = canonical(EvaluateSettings(nets=("a.pt",)), ctx)
    assert "restarts" not in plain and {"batch_size", "masking_gap", "nets"} <= set(plain)
    restarted = canonical(EvaluateSettings(nets=("a.pt",), restarts=3), ctx)
    assert restarted == {**plain, "restarts": 3}
    store = StepStore(ctx)
    one, three = (store.key(Step("e", "evaluate", EvaluateSettings(nets=("a.pt",), restarts=r))) for r in (1, 3))
    assert one != three


@pytest.mark.parametrize("default", [0, None, ""])
def test_only_marked_fields_are_left_out(default):
    """An unmarked field at its default stays in the key, whatever the default (0, None and "" are
    falsy: the rule reads the mark, not the value)."""
    from ntkrobust.studies._base import UNKEYED_AT_DEFAULT

    @dataclasses.dataclass(frozen=True)
    class Settings:
        marked: object = dataclasses.field(default=default, metadata=UNKEYED_AT_DEFAULT)
        plain: object = default

    ctx = Context("smoke", None, Path("/out/steps"))
    assert canonical(Settings(), ctx) == {"plain": default}
    assert canonical(Settings(marked=5), ctx) == {"marked": 5, "plain": default}
