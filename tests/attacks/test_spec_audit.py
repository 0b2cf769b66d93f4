"""Mutation audit of the attack spec (``attacks.spec``), eighth round: each test fails on a
mutation of ``attacks/spec.py`` that survived the earlier tests.

Independent routes: the threat models written here by hand from REFERENCE.md ("Standard threat
models": MNIST ℓ∞ ε = 0.3, step 0.01, 40 steps; CIFAR-10 ℓ∞ 8/255, 2/255, 10 steps, 20 for
evaluation) and from the spec's docstring (ℓ2 ε = 2.0 grey / 0.5 colour, step 0.125; evaluation
steps max(standard step scaled to ε, 2.5·ε/steps); per-epoch PGD-10), every number derived
here in plain arithmetic rather than read from ``STANDARD_THREATS``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from ntkrobust.attacks import (
    AttackSpec,
    check_adversarial,
    evaluation_schedule,
    evaluation_steps,
    image_type,
    pgd_schedule,
    standard_threat,
)
from ntkrobust.attacks.spec import EPOCH_PGD_STEPS

# (channels, norm) -> (eps, step, steps), by hand: REFERENCE.md for ℓ∞, the spec's docstring for
# ℓ2 (its steps follow the image type, as ℓ∞'s do: 40 on grey images, 10 on colour ones)
BY_HAND = {
    (1, "linf"): (0.3, 0.01, 40),
    (3, "linf"): (8 / 255, 2 / 255, 10),
    (1, "l2"): (2.0, 0.125, 40),
    (3, "l2"): (0.5, 0.125, 10),
}


@pytest.mark.parametrize(("channels", "norm"), list(BY_HAND))
def test_every_standard_threat_and_its_spec_are_the_hand_written_table(channels, norm):
    """All four cells, each of its three numbers, through ``standard_threat`` and through the spec
    built from it (whose norm must be the one asked for). The colour ℓ2 step and steps (0.0625,
    40 passed before) and a spec built in ℓ∞ whatever the norm asked for (eps, step and steps
    came from the ℓ2 table all the same) survived the earlier tests."""
    eps, step, steps = BY_HAND[(channels, norm)]
    assert standard_threat(channels, norm) == pytest.approx((eps, step, steps), rel=1e-12)
    spec = AttackSpec.standard("pgd", channels, norm=norm)
    assert (spec.method, spec.norm, spec.steps) == ("pgd", norm, steps)
    assert (spec.eps, spec.step) == pytest.approx((eps, step), rel=1e-12)
    assert spec.threat.norm == norm and spec.threat.eps == pytest.approx(eps, rel=1e-12)


def test_an_l2_spec_measures_its_threat_in_l2():
    """``AttackSpec.threat`` is the ball the attack's results are checked in: 16 pixels each moved
    by 0.05 are 0.2 in ℓ2 (outside ε = 0.1) and 0.05 in ℓ∞ (inside). A threat built in ℓ∞ for
    every spec survived the earlier tests."""
    x = np.full((1, 1, 4, 4), 0.5)
    threat = AttackSpec("pgd", 0.1, "l2", step=0.05, steps=2).threat
    assert threat.norm == "l2"
    with pytest.raises(AssertionError, match="exceeds"):
        check_adversarial(x + 0.05, x, threat)


@pytest.mark.parametrize(("channels", "want"), [(1, "grey"), (2, "colour"), (3, "colour"), (4, "colour")])
def test_only_one_channel_is_grey(channels, want):
    """The docstring: 'grey' for one channel, else 'colour' (two-channel and RGBA images take the
    colour threat). Grey for up to two channels survived the earlier tests."""
    assert image_type(channels) == want


@pytest.mark.parametrize("channels", [1.0, 1.5, "3", None, True])
def test_a_channel_count_that_is_no_whole_number_is_refused(channels):
    """1.5 channels is no image: a ValueError naming it (without the whole-number check 1.0 and
    1.5 were answered 'grey', "3" raised a TypeError from comparing a str with 1; True, an int to
    isinstance, was answered 'grey')."""
    with pytest.raises(ValueError, match="images have one channel or more"):
        image_type(channels)  # type: ignore[arg-type]


def test_an_unknown_norm_is_named_by_the_standard_threat():
    """A ValueError naming the choices, not a KeyError of the table's (image type, norm) pair."""
    with pytest.raises(ValueError, match=r"unknown norm 'l1': choose one of linf, l2"):
        standard_threat(1, "l1")


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf")])
def test_schedules_refuse_an_eps_that_is_no_radius(eps):
    """``pgd_schedule`` scales only ε > 0 and otherwise keeps the standard step, so without its
    own check of ε a negative or NaN ε got the standard schedule (0.01, 40), and the evaluation
    schedule max(0.01, 2.5·ε/steps) = 0.01 for ε = −0.1; both must refuse it."""
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        pgd_schedule(1, "linf", eps)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        evaluation_schedule(1, eps, 10)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"step": 0.0}, "the PGD step must be a finite number > 0, got 0.0"),
        ({"step": -0.01}, "the PGD step must be a finite number > 0, got -0.01"),
        ({"steps": 0}, "the PGD steps must be a whole number >= 1, got 0"),
    ],
)
def test_a_given_schedule_is_checked_by_pgd_schedule(schedule, message):
    """A schedule given to ``pgd_schedule`` is checked there (the spec of a one-step method,
    which checks no schedule itself, and the studies take it from there): returned as given
    before, (0.0, 40) included."""
    with pytest.raises(ValueError) as error:
        pgd_schedule(1, "linf", 0.1, **schedule)
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        AttackSpec.standard("fgsm", 1, eps=0.1, **schedule)
    assert str(error.value) == message


@pytest.mark.parametrize("eps", [1e-4, 1e-3, 0.05])
def test_every_eps_above_zero_scales_the_standard_step(eps):
    """The standard step scales with ε all the way down to 0 (only ε = 0 keeps it): 0.01·ε/0.3 on
    grey images, (2/255)·ε/(8/255) = ε/4 on colour ones, 0.125·ε/0.5 = ε/4 in colour ℓ2. Keeping
    the standard 0.01 for every ε ≤ 1e-3 (a step 100 times ε = 1e-4) survived the earlier tests."""
    assert pgd_schedule(1, "linf", eps) == (pytest.approx(0.01 * eps / 0.3, rel=1e-12), 40)
    assert pgd_schedule(3, "linf", eps) == (pytest.approx(eps / 4, rel=1e-12), 10)
    assert pgd_schedule(3, "l2", eps) == (pytest.approx(eps / 4, rel=1e-12), 10)


def test_a_step_given_to_the_standard_spec_is_kept():
    """``AttackSpec.standard(step=0.05)`` runs steps of 0.05 (40 of them on grey images): the
    standard 0.01 replaced the given step and survived the earlier tests."""
    spec = AttackSpec.standard("pgd", 1, step=0.05)
    assert (spec.eps, spec.step, spec.steps) == (0.3, 0.05, 40)
    spec = AttackSpec.standard("pgd", 3, norm="l2", eps=0.25, step=0.1, steps=7)
    assert (spec.norm, spec.eps, spec.step, spec.steps) == ("l2", 0.25, 0.1, 7)


def test_evaluation_and_per_epoch_schedules_are_the_docstrings():
    """The spec docstring and REFERENCE.md: per-epoch PGD-10 of 0.075 at MNIST's ε = 0.3 and of
    2/255 at CIFAR-10's 8/255; a full evaluation PGD-40 of 0.01875 on grey images (2.5·0.3/40)
    and PGD-20 of 2/255 on colour ones (2.5·(8/255)/20 = 1/255 is shorter); steps given are kept.
    A per-epoch count of 7, an evaluation count of 10 on colour or 100 on grey images, and
    given evaluation steps replaced by the standard ones survived the earlier tests here."""
    assert evaluation_schedule(1, 0.3, EPOCH_PGD_STEPS) == (pytest.approx(0.075, rel=1e-12), 10)
    assert evaluation_schedule(3, 8 / 255, EPOCH_PGD_STEPS) == (pytest.approx(2 / 255, rel=1e-12), 10)
    assert evaluation_schedule(1, 0.3, evaluation_steps(1)) == (pytest.approx(0.01875, rel=1e-12), 40)
    assert evaluation_schedule(3, 8 / 255, evaluation_steps(3)) == (pytest.approx(2 / 255, rel=1e-12), 20)
    assert (evaluation_steps(1, 7), evaluation_steps(3, 7), evaluation_steps(4)) == (7, 7, 20)


def test_an_evaluation_of_no_steps_is_refused_by_name():
    """0 steps: the ValueError of the schedule, not a ZeroDivisionError from 2.5·ε/0 (which the
    check ``steps < 0`` let through)."""
    with pytest.raises(ValueError, match="an evaluation PGD needs steps >= 1, got 0"):
        evaluation_schedule(1, 0.3, 0)


def test_pgd_without_a_count_of_steps_is_pgd_1():
    """The dataclass's ``steps`` defaults to 1 (a PGD of one step is valid); a default of 0 made
    ``AttackSpec("pgd", eps, step=...)`` unbuildable and survived the earlier tests."""
    spec = AttackSpec("pgd", 0.1, step=0.05)
    assert spec.steps == 1 and spec.to_dict()["steps"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pgd-l2", 0.1), "unknown attack method 'pgd-l2': choose one of fgsm, pgd, taylor-l1, taylor-sum"),
        (("fgsm", -0.1), "eps must be a finite number >= 0, got -0.1"),
        (("fgsm", float("nan")), "eps must be a finite number >= 0, got nan"),
        (("fgsm", 0.1, "l1"), "unknown norm 'l1'"),
    ],
)
def test_a_spec_refuses_an_unknown_method_an_eps_that_is_no_radius_and_an_unknown_norm(args, message):
    """Built directly (not by ``standard``, whose schedule checks ε first): each check of
    ``__post_init__`` dropped on its own survived the earlier tests."""
    with pytest.raises(ValueError, match=re.escape(message)):
        AttackSpec(*args)


@pytest.mark.parametrize("method", ["taylor-l1", "taylor-sum"])
def test_the_first_order_output_attacks_are_one_step_methods(method):
    """TK supp. eq. 20 / 22 take one step of ε: they need no schedule and record none, as FGSM.
    Dropping 'taylor-sum' from the methods, or counting every method but FGSM as iterative
    (which then demanded a PGD step), survived the earlier tests."""
    spec = AttackSpec(method, 0.1)
    assert not spec.iterative
    one_step = {"method": method, "eps": 0.1, "norm": "linf", "step": None, "steps": 1, "random_start": False}
    assert spec.to_dict() == {**one_step, "seed": 0}


def test_a_one_step_spec_records_one_step_whatever_it_was_given():
    """FGSM given a schedule (ignored) records step None and steps 1, and warns of no budget
    (step·steps = 0.02 < ε = 0.3 is no concern of one step of ε); a record of steps 5, or the
    warning, survived the earlier tests."""
    spec = AttackSpec("fgsm", 0.3, step=0.01, steps=2, seed=3)
    assert (spec.to_dict()["step"], spec.to_dict()["steps"], spec.to_dict()["seed"]) == (None, 1, 3)
    spec = AttackSpec("fgsm", 0.3, step=0.01, steps=5)
    assert spec.to_dict()["steps"] == 1
    assert spec.budget_warning() is None and spec.notes(1) == []


def test_eps_zero_gets_no_hint_and_twice_the_colour_radius_still_does():
    """ε = 0 (the clean point of a curve over ε) is no radius of either image type; ε = 16/255 =
    2·(8/255) exactly is the last grey-image ε read as a colour radius, and the hint names
    CIFAR-10's radius as 8/255 (a colour radius of 8/256 would read 0.03125). Hinting at ε = 0, a
    strict '<', and a colour radius of 8/256 (threshold 0.0625 < 16/255 = 0.06275) each survived the
    earlier tests."""
    assert AttackSpec("fgsm", 0.0).eps_hint(1) is None and AttackSpec("fgsm", 0.0).eps_hint(3) is None
    hint = AttackSpec("fgsm", 16 / 255).eps_hint(1)
    assert hint is not None and "colour-image radius" in hint and "CIFAR-10's standard is 8/255;" in hint
    assert AttackSpec("fgsm", 16 / 255 + 1e-9).eps_hint(1) is None


def test_notes_are_prefixed_name_the_flags_given_and_leave_out_what_is_fine():
    """``notes``: nothing when the budget and ε are fine (PGD-40 of 0.01 at MNIST's 0.3: 0.4 ≥
    0.3); otherwise each note prefixed with ``what``, the budget note naming the flags given (the
    evaluation's, here). Keeping None entries, dropping the prefix, or naming the default flags
    survived the earlier tests."""
    assert AttackSpec("pgd", 0.3, step=0.01, steps=40).notes(1) == []
    notes = AttackSpec("pgd", 0.05, step=0.001, steps=10).notes(1, "evaluation PGD: ", ("--eval-steps", "--eval-step"))
    assert len(notes) == 2 and all(note.startswith("evaluation PGD: ") for note in notes)
    assert "step*steps = 0.01" in notes[0] and "raise --eval-steps or --eval-step" in notes[0]
    assert "colour-image radius" in notes[1]


def test_a_spec_cannot_change_after_its_checks():
    """The spec is checked once, when built: a mutable one could be set to PGD-0 afterwards and
    reach the attacks unchecked. Frozen, its fields refuse assignment, and two specs of the same
    values are equal and hash alike (a mutable dataclass has no hash). A mutable dataclass
    survived the earlier tests."""
    import dataclasses

    spec = AttackSpec("pgd", 0.3, step=0.01, steps=40)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 0  # type: ignore[misc]
    assert spec == AttackSpec("pgd", 0.3, step=0.01, steps=40)
    assert hash(spec) == hash(AttackSpec("pgd", 0.3, step=0.01, steps=40))
    with pytest.raises(ValueError, match="the PGD steps must be a whole number >= 1, got 0"):
        dataclasses.replace(spec, steps=0)


@pytest.mark.parametrize("method", ["fgsm", "taylor-l1", "taylor-sum"])
def test_a_one_step_spec_holds_what_its_record_says(method):
    """A one-step method starts at x and takes no schedule: its spec holds step None, steps 1 and
    random_start False whatever it was given, so the attributes, the record and equality agree
    (before, ``AttackSpec("fgsm", ...).random_start`` stayed True while its record said False,
    and two FGSM specs that differed only in an unread start compared unequal)."""
    given = AttackSpec(method, 0.1, step=0.02, steps=7, random_start=True, seed=3)
    assert (given.step, given.steps, given.random_start) == (None, 1, False)
    assert given == AttackSpec(method, 0.1, seed=3) and hash(given) == hash(AttackSpec(method, 0.1, seed=3))
    assert given.to_dict() == {
        "method": method,
        "eps": 0.1,
        "norm": "linf",
        "step": None,
        "steps": 1,
        "random_start": False,
        "seed": 3,
    }
    standard = AttackSpec.standard(method, 1)
    assert (standard.step, standard.steps, standard.random_start) == (None, 1, False)
    # PGD keeps what it is given
    pgd = AttackSpec("pgd", 0.1, step=0.02, steps=7, random_start=True, seed=3)
    assert (pgd.step, pgd.steps, pgd.random_start) == (0.02, 7, True)
