"""Sixteenth audit (mutation testing of ``evaluate --restarts`` and of the refusal of outputs that
are not (B, C) logits): ``robust_correct``'s restart loop against verdicts fixed by hand (the
seed of each restart, the AND of the restarts, the accuracy so far on each line counting
clean-correct points only, no line where nobody listens); the classes ``robust_correct`` hands
AutoAttack (two for a one-output net); the study's refusal of restarts where no PGD or CW runs,
and no more (not of one start, not beside PGD); a record written before restarts existed still
drawn; and a net whose outputs are no tensor refused as such, naming no classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkrobust.bridge import evaluation
from ntkrobust.bridge.evaluation import restart_seed, robust_correct
from ntkrobust.studies import DataSettings, evaluate
from ntkrobust.studies.evaluate import EvaluateSettings

# --- bridge.evaluation.robust_correct: the restart loop --------------------------------------------

SEED = 7
CLEAN = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
# each restart's verdicts, by restart; point 6 is wrong clean, but every attack lands it right
RESTARTS = [
    np.array([1, 1, 1, 1, 0, 0, 1, 0], bool),
    np.array([1, 1, 0, 1, 1, 0, 1, 1], bool),
    np.array([0, 1, 1, 1, 1, 0, 1, 1], bool),
]


@pytest.fixture
def fixed_verdicts(monkeypatch):
    """``robust_correct`` with the clean verdicts ``CLEAN`` and, for the attack seeded by
    ``restart_seed(SEED, r)``, the verdicts ``RESTARTS[r]`` of the points it is given (any other
    seed fails the test); the (attack's steps, seed, places) of each run are listed in the order
    run, places None for every point, and each run's points are checked to be those places'."""
    by_seed = {restart_seed(SEED, r): verdicts for r, verdicts in enumerate(RESTARTS)}
    runs: list[tuple[int, int, list[int] | None]] = []
    images = torch.rand(len(CLEAN), 1, 2, 2)

    def attacked(model, x, y, *, steps, seed, places=None, **kwargs):
        runs.append((steps, seed, None if places is None else places.tolist()))
        if seed not in by_seed:
            pytest.fail(f"an attack seeded {seed}, no restart's seed")
        chosen = slice(None) if places is None else places
        assert torch.equal(x, images[chosen]), "the points attacked are not those of their places"
        return by_seed[seed][chosen].copy()

    monkeypatch.setattr(evaluation, "_pgd_correct", attacked)
    monkeypatch.setattr(evaluation, "_correct", lambda model, x, y, across_processes: CLEAN.copy())
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    return net, images, torch.zeros(len(CLEAN), dtype=torch.long), runs


def test_each_restart_line_counts_the_clean_correct_points_that_survived_every_restart_so_far(fixed_verdicts):
    """Three restarts of PGD-20 then CW-100, seeded ``restart_seed(7, r)``, r = 0, 1, 2, in that
    order. A point counts only if it is clean-correct and survived every restart so far: 4/8 after
    the first, 3/8 after the second, 2/8 after the last (the verdicts). The suite checked only that
    these lines never rise, which the accuracy of the restarts without the clean mask (5/8, 4/8,
    then 2/8 masked) and the accuracy of the latest restart alone (4/8, 4/8, 2/8) also do."""
    net, x, y, runs = fixed_verdicts
    said: list[tuple[str, float]] = []
    correct = robust_correct(
        net, x, y, eps=0.1, channels=1, attacks=("pgd-20", "cw-100"), seed=SEED, restarts=3,
        on_attack=lambda name, accuracy: said.append((name, accuracy)),
    )  # fmt: skip
    seeds = [restart_seed(SEED, r) for r in range(3)]
    # the first restart attacks every point, the later ones the clean-correct points still standing
    standing = [None, [0, 1, 2, 3], [0, 1, 3]]
    assert runs == [(steps, s, p) for steps in (20, 100) for s, p in zip(seeds, standing, strict=True)]
    expected = CLEAN & RESTARTS[0] & RESTARTS[1] & RESTARTS[2]
    assert expected.tolist() == [0, 1, 0, 1, 0, 0, 0, 0]
    for name in ("pgd-20", "cw-100"):
        np.testing.assert_array_equal(correct[name], expected)
    assert said == [
        (f"{name}{line}", accuracy)
        for name in ("pgd-20", "cw-100")
        for line, accuracy in ((" restart 1/3", 4 / 8), (" restart 2/3", 3 / 8), ("", 2 / 8))
    ]


def test_restarts_run_without_anyone_to_tell(fixed_verdicts):
    """``on_attack`` is optional: with ``restarts=3`` and no ``on_attack`` the verdicts are those
    found when someone listens (a restart line sent to None would be a TypeError; every test of
    the restarts passed an ``on_attack``)."""
    net, x, y, _ = fixed_verdicts
    correct = robust_correct(net, x, y, eps=0.1, channels=1, attacks=("pgd-20",), seed=SEED, restarts=3)
    np.testing.assert_array_equal(correct["pgd-20"], CLEAN & RESTARTS[0] & RESTARTS[1] & RESTARTS[2])


# --- bridge.evaluation.robust_correct -> bridge._autoattack: the classes ---------------------------


@pytest.mark.parametrize("outputs, targets", [(1, 1), (3, 2), (4, 3), (12, 9)])
def test_autoattack_targets_the_classes_of_the_nets_logits(outputs, targets, monkeypatch):
    """``autoattack_correct`` takes the classes from ``robust_correct`` (it no longer runs a
    forward pass of its own): APGD-T and FAB-T target min(9, classes - 1) classes, where a
    one-output net has two classes (its logits (−f/2, f/2)), so one target, not zero. The suite
    pinned the targets of nets of 2 classes or more, but never ran a targeted part
    (``autoattack_parts``, as benchmarks/autoattack_seeds.py gives them) against a one-output
    net, where handing over its one output would leave APGD-T and FAB-T no class to target."""
    from pyautoattack import AutoAttack

    seen = []

    def spy(self, x, y, batch_size=250):
        seen.append((self.apgd_targeted.n_target_classes, self.fab.n_target_classes))
        return x.clone(), y.clone()

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", spy)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, outputs)).eval()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4) % max(outputs, 2)
    robust_correct(net, x, y, eps=0.03, channels=1, attacks=("autoattack",), autoattack_parts=["apgd-t", "fab-t"])
    assert seen == [(targets, targets)]


# --- studies.evaluate: the refusal of restarts, the record, the figure -----------------------------

DATA = DataSettings(classes=(3, 8), n_train=20, n_test=20, seed=3)


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config

    config = model_config("fc1", (1, 8, 8), 2, width=16, seed=1)
    return save_checkpoint(tmp_path_factory.mktemp("sixteenth") / "net.pt", build_model(config), config)


@pytest.fixture
def recorded(monkeypatch):
    """``robust_correct`` replaced by a recorder: the keyword arguments of each call, and every
    point correct clean and under every attack."""
    given: list[dict] = []

    def record(model, x, y, **kwargs):
        given.append(kwargs)
        return {name: np.ones(len(y), bool) for name in ("clean", *kwargs["attacks"])}

    monkeypatch.setattr(evaluation, "robust_correct", record)
    return given


def test_one_start_by_default_and_autoattack_alone_runs_with_it(net_file, recorded):
    """Without ``restarts`` an evaluation is the plain one (one start, ``restarts=1`` handed to
    the attacks and recorded), and AutoAttack alone runs with it: the refusal is of more than one
    start. The suite ran the study with AutoAttack alone only with ``restarts=2`` (refused), so a
    refusal of every AutoAttack-only evaluation (``restarts >= 1``) passed it."""
    result = evaluate.run(EvaluateSettings(nets=(str(net_file),), data=DATA, attacks=("autoattack",)))
    assert [kw["restarts"] for kw in recorded] == [1]
    assert result.record["config"]["restarts"] == 1


def test_restarts_beside_autoattack_are_run_not_refused(net_file, recorded):
    """The refusal is for restarts where no PGD or CW runs: beside PGD-20, AutoAttack does not
    make ``--restarts 2`` unread, and the run goes ahead with it (a refusal whenever AutoAttack
    is among the attacks passed every test of the suite)."""
    settings = EvaluateSettings(nets=(str(net_file),), data=DATA, attacks=("pgd-20", "autoattack"), restarts=2)
    result = evaluate.run(settings)
    assert [kw["restarts"] for kw in recorded] == [2]
    assert result.record["config"]["restarts"] == 2


@pytest.mark.parametrize("attacks", [(), ("autoattack", "autoattack")])
def test_restarts_without_pgd_or_cw_are_refused_before_the_data_is_loaded(attacks, net_file, monkeypatch):
    """No attack at all, or AutoAttack named twice: no PGD or CW either, so ``restarts=2`` is
    refused as with AutoAttack alone, before any data is loaded. Comparing the attacks with
    ``("autoattack",)`` instead of as a set would run a clean-only evaluation that leaves the
    restarts unread, and leave the twice-named AutoAttack to a later refusal, after the data."""
    from ntkrobust.studies._base import StudyError

    monkeypatch.setattr(DataSettings, "load", lambda self: pytest.fail("data loaded before the refusal"))
    with pytest.raises(StudyError, match="--restarts repeats PGD and CW"):
        evaluate.run(EvaluateSettings(nets=(str(net_file),), data=DATA, attacks=attacks, restarts=2))


def test_a_record_from_before_restarts_is_drawn_as_one_start(net_file, recorded, monkeypatch, tmp_path):
    """A results.json written before ``restarts`` existed has no such key in its config: its
    figure is drawn (one start, nothing said of starts), not a KeyError. The suite drew only
    records made by the current code, which always have the key."""
    from ntkrobust import plots

    subtitles: list[str] = []
    monkeypatch.setattr(plots, "robust_accuracy_bars", lambda nets, path, *, subtitle: subtitles.append(subtitle))
    result = evaluate.run(EvaluateSettings(nets=(str(net_file),), data=DATA, attacks=("pgd-20",)))
    del result.record["config"]["restarts"]
    result.write_files(type("Staged", (), {"path": lambda self, name: tmp_path / name})())
    (subtitle,) = subtitles
    assert "ε =" in subtitle and "random starts" not in subtitle


# --- bridge.targets._check_outputs: outputs that are no tensor --------------------------------------


class _Pair(torch.nn.Module):
    """A net that returns a tuple (logits, features), as some model zoos' nets do: no tensor."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(1)
        return flat[:, :10], flat


def test_outputs_that_are_no_tensor_are_refused_by_their_type_naming_no_classes():
    """A tuple is refused as a TargetError naming its type, with nothing of the classes of a
    binary checkpoint (no width to compare them with; the old width of -1 named them). The
    suite's refusals were of tensors only, where a width test that asked a tuple for its
    ``ndim`` (an AttributeError, not a refusal) would pass."""
    from ntkrobust.bridge.targets import Target, TargetError, _check_outputs

    target = Target("pair", _Pair(), {"path": "pair.pt"}, class_names=("3", "8"))
    with pytest.raises(TargetError) as error:
        _check_outputs(target, (1, 8, 8), 2, "cpu")
    assert str(error.value) == "pair.pt returns tuple for 2 images; the task needs (2, 2) logits or (2, 1)"
