"""Mutation audit of what every study shares (``studies._base``, ``studies._common``), fifth
round: each test states the documented rule and recomputes it by an independent route
(``importlib.metadata`` for the versions, the file system for what ``save`` leaves, a fake clock for
the seconds, the closed-form extent of the [0, 1] box, bounds tried at and just past their edge)."""

from __future__ import annotations

import json
import logging
import math
import platform
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, StudyError, StudyWarning, ThreatSettings, _base
from ntkrobust.studies._base import (
    Clock,
    StudyResult,
    changed_flags,
    envelope,
    flags_do,
    number_text,
    warn,
    warned_after_checks,
)
from ntkrobust.studies._common import (
    MAX_RIDGE,
    MAX_WHOLE,
    MachineSettings,
    check_count,
    check_linf_eps,
    check_ridge,
    check_seed_count,
    load_targets,
    torch_network,
    training_subset,
)

#: the distributions every record names (the package, its array and kernel stacks, torch)
_DISTRIBUTIONS = ("ntkrobust", "numpy", "jax", "jaxlib", "neural-tangents", "scikit-learn", "torch", "torchvision")


def _installed(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


# --- the envelope --------------------------------------------------------------------------------


def test_the_versions_are_each_distributions_own_and_pythons():
    """Each version read again from ``importlib.metadata`` under the distribution's own name (numpy's
    version under torch's name differs), Python's from ``sys.version_info``."""
    import sys

    got = _base.versions()
    assert got == {"python": "{}.{}.{}".format(*sys.version_info[:3])} | {d: _installed(d) for d in _DISTRIBUTIONS}
    assert got["python"] == platform.python_version()
    assert got["numpy"] == np.__version__ and got["numpy"] != got["torch"]


def test_the_envelope_holds_every_shared_key_in_order_and_as_given():
    """Every key given lands once, in the documented order, with the value passed (warnings and argv
    as lists of all their items, whatever sequence they came in)."""
    record = envelope(
        "train",
        {"accuracy": 0.5, "loss": 1.25},
        {"epochs": 3},
        seconds={"total": 2.5, "data": 0.5},
        argv=("train", "--epochs", "3"),
        seed=0,
        dataset={"name": "digits", "n_train": 20},
        warnings=("first", "second", "third"),
    )
    assert list(record) == [
        "command", "accuracy", "loss", "config", "seed", "dataset", "warnings", "seconds", "versions", "argv",
    ]  # fmt: skip
    assert record["command"] == "train" and record["config"] == {"epochs": 3} and record["seed"] == 0
    assert record["dataset"] == {"name": "digits", "n_train": 20}
    assert record["warnings"] == ["first", "second", "third"]
    assert record["seconds"] == {"total": 2.5, "data": 0.5}
    assert record["argv"] == ["train", "--epochs", "3"]  # the argv given, not this process's
    assert record["versions"] == _base.versions()
    bare = envelope("x", {}, {}, seconds=None, argv=None)
    assert list(bare) == ["command", "config", "versions", "argv"] and bare["argv"] is None


def test_warn_records_and_raises_each_text_once_and_skips_empty_ones():
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn(notes, "a", None, "", "b")
    assert notes == ["a", "b"]
    assert [(str(w.message), w.category) for w in caught] == [("a", StudyWarning), ("b", StudyWarning)]
    assert Path(caught[0].filename).resolve() == Path(__file__).resolve()  # said where warn was called


def test_warnings_after_checks_are_held_to_the_end_each_one_said_and_dropped_on_an_error():
    """Inside the body nothing reaches the outer handler; after it, every warning, repeated ones
    too (a warning said twice from one line is two warnings); after an error, none."""
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with warned_after_checks():
            for text in ("x", "x", "y"):
                warnings.warn(text, StudyWarning, stacklevel=1)
            assert outer == []  # held back while the checks run
    assert [(str(w.message), w.category) for w in outer] == [("x", StudyWarning)] * 2 + [("y", StudyWarning)]
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with pytest.raises(StudyError), warned_after_checks():
            warnings.warn("said before the refusal", StudyWarning, stacklevel=1)
            raise StudyError("refused")
    assert outer == []


def test_changed_flags_are_the_fields_unequal_to_their_defaults_spelled_as_flags():
    @dataclass(frozen=True)
    class Settings:
        n_steps: int = 1
        pair: tuple[int, int] = (1, 2)
        rate: float = 0.0

    # an equal value that is another object (a tuple built anew, 0 as an int) is not a change
    built = tuple(int(v) for v in "12")
    assert changed_flags(Settings(pair=built, rate=0), ("n_steps", "pair", "rate")) == []
    assert changed_flags(Settings(n_steps=2, rate=0.5), ("n_steps", "rate")) == ["--n-steps", "--rate"]
    assert changed_flags(Settings(n_steps=2), ("n_steps",), {"n_steps": "--k"}) == ["--k"]
    assert MachineSettings(learning_rate=0.5, cache=False).given() == ["--learning-rate", "--no-cache"]
    assert MachineSettings().given() == []
    assert MachineSettings(time=5.0, learning_rate=0.5).config()["learning_rate"] == 0.5


def test_a_machine_at_time_zero_is_allowed():
    """t = 0 is the machine at initialisation (TK eq. 7 with t = 0): a valid time, below it none."""
    MachineSettings(time=0.0, cache=False).check(["two-layer"])
    with pytest.raises(StudyError, match="--time must be >= 0"):
        MachineSettings(time=-1e-12, cache=False).check(["two-layer"])


def test_number_text_and_flags_do():
    assert number_text(0.123456, 3) == "0.123" and number_text(2.0, 0) == "2"
    for nothing in (None, math.nan, math.inf, -math.inf):
        assert number_text(nothing, 3) == "undefined"
    assert flags_do(["--a"], "set") == "--a sets"
    assert flags_do(["--a", "--b"], "set") == "--a / --b set"


def test_the_clock_measures_each_stage_from_the_mark_before_it(monkeypatch, caplog):
    """A fake ``perf_counter`` (0, 1, 4, 10, 15 s): stages logged with the seconds since the latest
    mark, ``between`` as last minus first, ``since_start`` from the start mark."""
    ticks = iter([0.0, 1.0, 4.0, 10.0, 15.0])
    monkeypatch.setattr(_base.time, "perf_counter", lambda: next(ticks))
    clock = Clock()  # start at 0
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        clock.mark("data", "data loaded")  # 1
        clock.mark("fit", "machine fitted")  # 4
        clock.mark("attack")  # 10
    assert [r.getMessage() for r in caplog.records] == ["data loaded (1.0 s)", "machine fitted (3.0 s)"]
    assert clock.between("data", "attack") == 9.0 and clock.between("start", "fit") == 4.0
    assert clock.since_start() == 15.0


# --- saving through a staging folder ------------------------------------------------------------


class _Result(StudyResult):
    def __init__(self, record, fail=False):
        super().__init__(record)
        self.fail = fail

    def write_files(self, staged):
        staged.path("array.txt").write_text("1 2 3\n")
        if self.fail:
            raise OSError("disk full")


def test_save_stages_beside_out_then_moves_everything_in(tmp_path, monkeypatch):
    """What the file system holds: while the JSON is written, ``out`` does not exist and the JSON
    goes to a hidden folder beside it; afterwards ``out`` holds the files and the parent nothing
    else."""
    import ntkrobust.bridge.files as files

    out = tmp_path / "run"
    seen = []
    real = files.write_json

    def watched(path, payload):
        seen.append((Path(path).parent, out.exists()))
        return real(path, payload)

    monkeypatch.setattr(files, "write_json", watched)
    record = {"command": "x", "value": 1.5, "time": math.inf, "argv": ["x"]}
    assert _Result(record).save(out) == out
    ((staging, out_existed),) = seen
    assert staging.parent == tmp_path and staging.name.startswith(".run.") and not out_existed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left
    assert sorted(p.name for p in out.iterdir()) == ["array.txt", "results.json"]
    assert json.loads((out / "results.json").read_text()) == record | {"time": "inf"}  # strict JSON


def test_a_failed_save_leaves_neither_out_nor_a_staging_folder(tmp_path):
    with pytest.raises(OSError, match="disk full"):
        _Result({"command": "x"}, fail=True).save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_a_json_that_cannot_be_written_leaves_nothing_in_out(tmp_path):
    """A record JSON cannot hold (an object) fails after the arrays were staged: nothing of it
    reaches ``out``."""
    with pytest.raises(TypeError):
        _Result({"command": "x", "value": object()}).save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_with_files_is_refused_unless_overwrite(tmp_path):
    """A newcomer's ``AttackResult.save`` into an ``evaluate`` folder replaced its results.json and
    left its robust_accuracy.png: one study's results beside another's figure. Now a folder that
    holds files is refused, nothing written; ``overwrite=True`` (the command line's ``--force``)
    replaces the files of the same names. An empty folder is as good as a new one."""
    out = tmp_path / "run"
    out.mkdir()
    _Result({"command": "x"}).save(out)  # empty: fine
    (out / "robust_accuracy.png").write_bytes(b"png")
    with pytest.raises(StudyError, match=r"holds files already: save\(out, overwrite=True\)"):
        _Result({"command": "y"}).save(out)
    assert json.loads((out / "results.json").read_text()) == {"command": "x"}  # untouched
    _Result({"command": "y"}).save(out, overwrite=True)
    assert json.loads((out / "results.json").read_text()) == {"command": "y"}
    assert sorted(p.name for p in out.iterdir()) == ["array.txt", "results.json", "robust_accuracy.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left by the refusal


# --- the settings and steps the studies share ---------------------------------------------------


def test_the_settings_defaults_are_the_documented_ones():
    """digits (offline), seed 0; the converged (t = inf), unregularised machine of η = 1 in float64
    with the cache on; the standard ℓ∞ threat with a random start."""
    data = DataSettings()
    assert (data.data, data.seed, data.classes, data.n_train, data.n_test, data.from_test_split) == (
        "digits", 0, None, None, None, False,
    )  # fmt: skip
    machine = MachineSettings()
    assert (machine.time, machine.ridge, machine.learning_rate, machine.gradient, machine.precision) == (
        math.inf, 0.0, 1.0, "auto", "float64",
    )  # fmt: skip
    assert machine.cache is True and machine.cache_dir is None
    threat = ThreatSettings()
    assert (threat.norm, threat.eps, threat.step, threat.steps, threat.random_start) == ("linf", None, None, None, True)


def test_the_data_config_records_what_was_asked_and_what_was_loaded(tmp_path):
    settings = DataSettings(classes=(3, 8), n_train=12, n_test=6, seed=2, from_test_split=True)
    data = settings.load()
    config = settings.config(data)
    assert config == {
        "data": "digits", "data_root": None, "from_test_split": True, "classes": [3, 8], "n_train": 12, "n_test": 6,
    }  # fmt: skip
    assert DataSettings(data_root=tmp_path).config(data)["data_root"] == str(tmp_path)
    # sizes not asked for are the sizes loaded: every training point of 3 and 8 (bridge.data directly)
    from ntkrobust.bridge.data import load_dataset

    unasked = DataSettings(classes=(3, 8), n_test=6)
    everything = load_dataset("digits", classes=[3, 8], n_test=6, seed=0).x_train.shape[0]
    assert unasked.config(unasked.load())["n_train"] == everything > 12


def test_the_l2_radius_may_reach_the_diameter_of_the_whole_image_box():
    """The ℓ2 diameter of [0, 1]^(C·H·W) is sqrt(C·H·W), every channel counted: 3x2x2 -> sqrt(12)."""
    extent = math.sqrt(3 * 2 * 2)
    eps, _, _ = ThreatSettings(norm="l2", eps=extent, steps=2).resolve((3, 2, 2))
    assert eps == extent
    with pytest.raises(StudyError, match="exceeds"):
        ThreatSettings(norm="l2", eps=extent * (1 + 1e-9), steps=2).resolve((3, 2, 2))
    assert ThreatSettings(eps=1.0, steps=2).resolve((1, 8, 8))[0] == 1.0  # ℓ∞: the whole pixel range
    with pytest.raises(StudyError, match="exceeds"):
        ThreatSettings(eps=1.0 + 1e-9, steps=2).resolve((1, 8, 8))


def test_a_training_subset_takes_any_size_from_one_per_class_to_all():
    data = DataSettings(classes=(3, 8), n_train=10, n_test=4).load()
    two = training_subset(data, 2, 0, "--kernel-n")  # one point of each class
    assert sorted(two.y_train.tolist()) == [3, 8]
    with pytest.raises(StudyError, match="fewer than the 2 classes"):
        training_subset(data, 1, 0, "--kernel-n")
    assert training_subset(data, 10, 0, "--kernel-n") is data
    with pytest.raises(StudyError, match="exceeds the 10 training points"):
        training_subset(data, 11, 0, "--kernel-n")


def test_the_default_torch_network_is_fc2():
    data = DataSettings(classes=(3, 8), n_train=4, n_test=2).load()
    _, config = torch_network(data, model=None, width=4, checkpoint=None, seed=0)
    assert config.model == "fc2"


@pytest.mark.parametrize("minimum", [0, 1])
def test_counts_are_whole_numbers_from_the_minimum_to_two_to_the_63_minus_one(minimum):
    check_count(minimum, minimum, "--n")
    check_count(MAX_WHOLE, minimum, "--n")
    assert MAX_WHOLE == 2**63 - 1
    for bad in (minimum - 1, MAX_WHOLE + 1, True, 2.0):
        with pytest.raises(StudyError):
            check_count(bad, minimum, "--n")


def test_seeds_of_several_nets_may_end_at_two_to_the_63_minus_one():
    check_seed_count(2**63 - 3, 3, "--seeds")  # seeds ..., 2**63 - 1
    with pytest.raises(StudyError, match="choose --seed 9223372036854775805 or less"):
        check_seed_count(2**63 - 2, 3, "--seeds")


def test_ridges_and_linf_radii_take_their_closed_ranges():
    for ridge in (0.0, MAX_RIDGE):
        check_ridge(ridge, "--ridge")
    for bad in (-1e-12, MAX_RIDGE * (1 + 1e-12), math.nan, math.inf):
        with pytest.raises(StudyError):
            check_ridge(bad, "--ridge")
    check_linf_eps(1.0, "--eps")
    for bad in (0.0, 1.0 + 1e-12):
        with pytest.raises(StudyError):
            check_linf_eps(bad, "--eps")


def test_targets_named_alike_get_numbered_labels(monkeypatch):
    """``bridge.targets.load_target`` replaced by a stand-in: the labels made unique are the first
    as loaded, then "(2)", "(3)", in order."""
    import ntkrobust.bridge.targets as targets

    @dataclass
    class Target:
        label: str
        class_names: tuple[str, ...] | None = None  # a net that records no classes: nothing to check

    monkeypatch.setattr(targets, "load_target", lambda spec, **kw: Target(spec.split("=")[0]))
    data = DataSettings(classes=(3, 8), n_train=4, n_test=2).load()
    loaded = load_targets(["net=a.pt", "net=b.pt", "other=c.pt", "net=d.pt"], data, "cpu")
    assert [t.label for t in loaded] == ["net", "net (2)", "other", "net (3)"]


def test_the_machine_keeps_every_user_warning_of_the_fit_and_only_those(monkeypatch):
    """``cached_gram`` and ``fit_kernel_machine`` replaced by stand-ins that warn: the notes are
    the UserWarnings (StudyWarning is one), not a DeprecationWarning."""
    import ntkrobust.kernels as kernels
    import ntkrobust.kernels.gram as gram

    def fake_gram(arch, x, **kw):
        warnings.warn("a singular Gram", StudyWarning, stacklevel=1)
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
        return np.eye(len(x)), "off"

    @dataclass
    class Machine:
        n_outputs: int = 2
        condition_number: float = 1.0
        dropped_directions: int = 0

    def fake_fit(*args, **kw):
        warnings.warn("plain user warning", UserWarning, stacklevel=1)
        return Machine()

    monkeypatch.setattr(gram, "cached_gram", fake_gram)
    monkeypatch.setattr(kernels, "fit_kernel_machine", fake_fit)
    data = DataSettings(classes=(3, 8), n_train=4, n_test=2).load()
    _, notes, kernel = MachineSettings(cache=False).fit("two-layer", data, progress=False)
    assert notes == ["a singular Gram", "plain user warning"]
    assert kernel["gram_cache"] == "off" and kernel["outputs"] == 2


def test_as_many_rademacher_draws_as_outputs_are_allowed_and_one_more_refused():
    """ "more draws than the net has outputs" is refused: K = C costs what the exact trace does."""
    from ntkrobust.studies._common import check_draws

    check_draws("rademacher:10", "--kernel", 10)
    check_draws("trace", "--kernel", 10)
    with pytest.raises(StudyError, match="11 draws cost more"):
        check_draws("rademacher:11", "--kernel", 10)
