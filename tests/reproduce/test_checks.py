"""Every recipe's ``check`` on synthetic records: one that agrees, one that contradicts, and one
per inconclusive branch. The steps are the recipes' own (smoke scale, so the real step names and
settings); the records hold only the keys the checks read, shaped like the studies' results.json
and history.json, with numbers well on one side of each rule."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from ntkrobust.reproduce import VERDICTS, Step, Verdict, all_recipes
from ntkrobust.reproduce._recipe import Context

CTX = Context("smoke", None, Path("/nonexistent/steps"))
RECIPES = {recipe.name: recipe for recipe in all_recipes()}
METHODS = ("standard", "fgsm", "pgd", "te")


class FakeResults:
    """``Results`` without files: the records by step name."""

    def __init__(self, steps: Mapping[str, Step], records: Mapping[str, dict[str, Any]], ctx: Context = CTX):
        self.ctx = ctx
        self.steps = steps
        self.records = records

    def record(self, name: str) -> dict[str, Any]:
        return self.records[name]


def judge(name: str, records: dict[str, Any], edit: Callable[[dict[str, Step]], None] | None = None) -> Verdict:
    recipe = RECIPES[name]
    steps = {step.name: step for step in recipe.steps(CTX)}
    if edit is not None:
        edit(steps)
    return recipe.check(FakeResults(steps, records))


def no_decay(steps: dict[str, Step]) -> None:
    """The standard run without a learning-rate decay (``milestones=()``)."""
    step = steps["mnist-standard"]
    steps[step.name] = dataclasses.replace(step, settings=dataclasses.replace(step.settings, milestones=()))


# ---------------------------------------------------------------- records, shaped like the studies'


def features(rho: Any = -0.8, top: float = 0.5, rest: float = 0.1, rows: tuple[tuple[float, float], ...] = ()):
    """``features``: Spearman(index, robustness) and the robust-only kernels as (clean, own FGSM) per r."""
    table = {
        "spearman_index_robustness": rho,
        "mean_robustness_top10": top,
        "mean_robustness_rest": rest,
        "robust_only": [{"r": r, "clean": c, "fgsm_own": f} for r, (c, f) in enumerate(rows or ((0.9, 0.0),), 1)],
        "full_machine": {"clean_accuracy": 0.95, "fgsm_accuracy": 0.0},
    }
    config = {"data": "digits", "n_features": 20, "eps": 0.3}
    return {"mnist-features": {"architectures": {"fc2": table}, "config": config}}


def two_layer(narrow_cosine: float | None, wide_cosine: float | None, ntk: float, random: float = 0.8):
    def net(width: int, cosine: float | None, ntk_accuracy: float) -> dict[str, Any]:
        return {"width": width, "gradient_cosine": cosine, "clean_accuracy": 0.9, "white_box_accuracy": 0.0,
                "ntk_attack_accuracy": ntk_accuracy, "random_accuracy": random}  # fmt: skip

    return {"mnist-two-layer": {"nets": [net(1000, wide_cosine, ntk), net(100, narrow_cosine, 0.5)]}}


def transfer_row(name: str, tau: dict[str, Any], **accuracy: Any) -> dict[str, Any]:
    row = {"name": name, "clean_accuracy": 0.9, "white_box_accuracy": 0.0, "random_accuracy": 0.85,
           "ntk_attack_accuracy": {"fc2": 0.3}, "transfer_accuracy": {}, "transferability": tau}  # fmt: skip
    return row | accuracy


def tk_transfer(tau: Any, random_tau: Any):
    standard = transfer_row("mnist-standard epoch 3", {"NTK fc2": tau}, random_transferability=random_tau)
    pgd = transfer_row("mnist-pgd epoch 3", {"NTK fc2": 0.1}, random_transferability=0.0)
    return {"mnist-transfer-ntk": {"targets": [standard, pgd]}}


def loo_transfer(by_epoch: dict[int, Any]):
    tau: dict[str, Any] = {"NTK fc2": 0.9, "mnist-standard-linearized-1 epoch 1": 0.9, "mnist-standard-centered-1 "
                           "epoch 1": 0.9}  # fmt: skip
    tau |= {f"mnist-standard epoch {epoch}": value for epoch, value in by_epoch.items()}
    return {"mnist-transfer-epochs": {"targets": [transfer_row("mnist-standard epoch 3", tau)]}}


def run(mode: str, *, velocity=(1.0, 1.0, 1.0), ae_velocity=(1.0,), frobenius=(1.0, 1.0), top20=0.5, rank=5.0,
        specialization=0.5, ks=1.0, test_pgd=0.0) -> dict[str, Any]:  # fmt: skip
    """One run of a ``dynamics`` record: velocities, kernels by epoch, the last epoch's accuracy."""
    kernels = [
        {"epoch": float(epoch),
         "clean": {"frobenius_norm": f, "concentration_top20": top20, "effective_rank": rank,
                   "mean_specialization": specialization},
         "adversarial": {"mean_specialization": ks}}
        for epoch, f in enumerate(frobenius)
    ]  # fmt: skip
    clean = {"velocity": list(velocity), "velocity_epochs": [i + 0.5 for i in range(len(velocity))]}
    return {"mode": mode, "label": f"mnist-cnn {mode}", "kernels": kernels,
            "dynamics": {"clean": clean, "adversarial": {"velocity": list(ae_velocity)}},
            "epochs": [{"accuracy": {"running": {"test_clean": 0.9, "test_pgd": test_pgd}}}]}  # fmt: skip


def standard_pgd(standard: dict[str, Any], pgd: dict[str, Any]):
    return {"mnist-dynamics-standard-pgd": {"runs": [run("standard", **standard), run("pgd", **pgd)]}}


def methods(distance_to_te: dict[str, tuple[float, ...]] | None = None, **by_mode: dict[str, Any]):
    """``dynamics`` over the four methods' runs, with each run's C-NTK distance to TE's kernel by
    epoch (the smoke schedule's 6 points, epochs 0-5, its decay after epoch 4; TE's own: 0)."""
    given = distance_to_te or {}
    distance = [{"label": f"mnist-cnn {mode}", "clean": list(given.get(mode, (0.0,) * 6))} for mode in METHODS]
    runs = [run(mode, **by_mode.get(mode, {})) for mode in METHODS]
    return {"mnist-dynamics-methods": {"runs": runs, "baseline_distance": {"runs": distance}}}


def parting(*modes: str):
    """Distances to TE's kernel that move 0.01 per epoch in the lazy phase (epochs 1-4) and grow
    0.1 after the decay for ``modes``; the others grow as little after it as before."""
    return methods({mode: (0.0, 0.3, 0.31, 0.32, 0.33, 0.43 if mode in modes else 0.335)
                    for mode in ("standard", "fgsm", "pgd")})  # fmt: skip


def threefold(first: float, after_decay: float):
    """The standard run's C-NTK velocity by epoch: ``first``, then 1 (the lazy phase, and the epoch
    before the decay), ``after_decay`` in the epoch after the smoke schedule's decay, then 1."""
    settings = next(s for s in RECIPES["rat-fig1-threefold"].steps(CTX) if s.name == "mnist-standard").settings
    velocity = [first] + [1.0] * (settings.epochs - 1)
    velocity[settings.milestones[0]] = after_decay
    return methods(standard={"velocity": velocity})


def ae_velocity(standard: float, pgd: float, te: float):
    return methods(**{m: {"ae_velocity": (v,)} for m, v in (("standard", standard), ("pgd", pgd), ("te", te))})


def ks(pairs: dict[str, tuple[float, float]]):
    """(AE-NTK mean specialization, test PGD accuracy) by method."""
    return methods(**{mode: {"ks": k, "test_pgd": acc} for mode, (k, acc) in pairs.items()})


def spawns(linearized: dict[int, float], centered: dict[int, float]):
    lines = [{"kind": kind, "points": [{"spawn_epoch": e, "test_clean": acc} for e, acc in points.items()]}
             for kind, points in (("linearized", linearized), ("centered", centered))]  # fmt: skip
    return {"mnist-dynamics-spawns": {"spawn_accuracy": {"lines": lines}}}


def spawned_robustness(centered: float, linearized: float, standard: float):
    """PGD accuracy after stage 2 from the latest spawn (the earlier spawn: none), and the
    standard parent's at its last epoch's full evaluation."""
    lines = [{"kind": kind, "points": [{"spawn_epoch": e, "test_clean": 0.9, "test_pgd": pgd if e == 2 else 0.0,
                                        "pgd": "full evaluation, PGD-5"} for e in (1, 2)]}
             for kind, pgd in (("linearized", linearized), ("centered", centered))]  # fmt: skip
    parent = history({"running": {"test_clean": 0.9, "test_pgd": 0.5}})  # per-epoch PGD: not the one compared
    parent["epochs"][-1]["full_evaluation"] = {"accuracy": {"running": {"test_pgd": standard}}}
    return {"mnist-dynamics-spawns": {"spawn_accuracy": {"lines": lines}}, "mnist-standard": parent}


def history(*per_epoch: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A training run's history.json: the accuracies of each epoch, by BatchNorm statistics."""
    return {"epochs": [{"accuracy": accuracy} for accuracy in per_epoch]}


def batchnorm(running: tuple[float, float], batch: tuple[float, float]):
    def accuracy(clean_pgd: tuple[float, float]) -> dict[str, float]:
        return {"test_clean": clean_pgd[0], "test_pgd": clean_pgd[1]}

    return {"cifar-pgd-resnet18-bn": history({"running": accuracy(running), "batch": accuracy(batch)})}


def switch(share: float, switched_pgd: float, full_pgd: float = 0.4):
    full = {"test_clean": 0.9, "test_pgd": full_pgd}
    switched = {"estimated_cost_of_full_at": share, "epochs_clean": 1, "epochs_adversarial": 4, "seconds_clean": 1.0,
                "seconds_adversarial": 40.0, "test_clean": 0.9, "pgd": "PGD-5", "test_pgd": switched_pgd}  # fmt: skip
    return {"mnist-dynamics-switch": {"switch_cost": {"runs": [full, switched]}}}


def overfitting(fgsm: tuple[float, ...], noise: tuple[float, ...], clean: float = 0.6):
    """PGD accuracy by epoch of both runs; every epoch at clean accuracy ``clean`` (10 classes)."""

    def curve(pgd: tuple[float, ...]) -> dict[str, Any]:
        run = history(*({"running": {"test_pgd": a, "test_clean": clean}} for a in pgd))
        return run | {"dataset": {"classes": list(range(10))}, "config": {"tracking": {"steps": 20}}}

    return {"cifar-fgsm": curve(fgsm), "cifar-fgsm-noise": curve(noise)}


def evaluate(**pgd20_autoattack: tuple[float, float]):
    nets = [
        {"label": f"mnist-{mode} epoch 3", "masking_suspected": False,
         "accuracy": {"clean": 0.9, "pgd-20": p, "autoattack": a}}
        for mode, (p, a) in pgd20_autoattack.items()
    ]  # fmt: skip
    return {"mnist-evaluate": {"nets": nets}}


def centered_at(centered: tuple[float, float], pgd: tuple[float, float], masking: bool = False,
                adversarial_kernel: tuple[float, float] | None = (0.5, 0.45)):  # fmt: skip
    """``evaluate`` of centered AT on the benign kernel, PGD-AT and centered AT on PGD-AT's kernel
    (None: not run, as in a folder of an earlier version): (PGD-20, AutoAttack) accuracy each."""
    rows = [("mnist-pgd-centered-on-standard-5 epoch 2", centered, masking), ("mnist-pgd epoch 5", pgd, False)]
    if adversarial_kernel is not None:
        rows.append(("mnist-pgd-centered-on-pgd-5 epoch 2", adversarial_kernel, False))
    nets = [{"label": label, "masking_suspected": flag, "accuracy": {"clean": 0.9, "pgd-20": p, "autoattack": a}}
            for label, (p, a), flag in rows]  # fmt: skip
    return {"mnist-evaluate-centered-at": {"nets": nets}}


def matrix(pgd_under_te: float):
    """Targets under each net's PGD examples: the PGD-AT target at 0.5 or ``pgd_under_te``, standard at 0.3."""
    names = [f"mnist-{mode} epoch 3" for mode in ("standard", "fgsm", "fgsm-noise", "pgd", "te")]
    sources = ["NTK fc2", *names]
    rows = []
    for name in names:
        accuracy = {s: 0.0 if s == name else 0.3 if "standard" in name else 0.5 for s in sources}
        if "pgd" in name:
            accuracy["mnist-te epoch 3"] = pgd_under_te
        rows.append({"name": name, "transfer_accuracy": accuracy})
    return {"mnist-transfer-matrix": {"targets": rows}}


# ---------------------------------------------------------------- (recipe, verdict, records[, edit steps])

NAN = "nan"  # how strict JSON (bridge.files.write_json) writes an undefined ρ or τ
CASES = [
    ("tk-fig2-features", "agrees", features(rho=-0.8, top=0.5, rest=0.1)),
    ("tk-fig2-features", "contradicts", features(rho=0.6, top=0.5, rest=0.1)),
    ("tk-fig2-features", "contradicts", features(rho=-0.8, top=0.1, rest=0.5)),  # the top not more robust
    ("tk-fig2-features", "inconclusive", features(rho=NAN, top=0.0, rest=0.0)),  # no feature robust: ρ undefined
    ("tk-suppD3-robust-only", "agrees", features(rows=((0.9, 0.0), (0.3, 0.3), (0.1, 0.1)))),
    ("tk-suppD3-robust-only", "contradicts", features(rows=((0.9, 0.0), (0.6, 0.25), (0.35, 0.35)))),  # any r counts
    ("tk-fig4-two-layer", "agrees", two_layer(narrow_cosine=0.3, wide_cosine=0.9, ntk=0.1)),
    ("tk-fig4-two-layer", "contradicts", two_layer(narrow_cosine=0.9, wide_cosine=0.3, ntk=0.8)),
    ("tk-fig4-two-layer", "inconclusive", two_layer(narrow_cosine=0.3, wide_cosine=0.9, ntk=0.8)),  # closer, not fooled
    ("tk-fig4-two-layer", "inconclusive", two_layer(narrow_cosine=0.9, wide_cosine=0.3, ntk=0.1)),  # fooled, not closer
    ("tk-fig4-two-layer", "inconclusive", two_layer(narrow_cosine=None, wide_cosine=0.3, ntk=0.1)),  # no finite cosine
    ("tk-sec3-transfer", "agrees", tk_transfer(tau=0.9, random_tau=0.1)),
    ("tk-sec3-transfer", "contradicts", tk_transfer(tau=0.2, random_tau=0.1)),
    ("tk-sec3-transfer", "inconclusive", tk_transfer(tau=NAN, random_tau=None)),  # own FGSM: no drop
    ("tk-fig6-kernel-growth", "agrees", standard_pgd({"frobenius": (1, 10), "top20": 0.5},
                                                     {"frobenius": (1, 2), "top20": 0.9})),
    ("tk-fig6-kernel-growth", "contradicts", standard_pgd({"frobenius": (1, 2), "top20": 0.5},
                                                          {"frobenius": (1, 10), "top20": 0.9})),
    ("tk-fig6-kernel-growth", "inconclusive", standard_pgd({"frobenius": (1, 10), "top20": 0.9},
                                                           {"frobenius": (1, 2), "top20": 0.5})),
    ("loo-fig1-kernel-speed", "agrees", standard_pgd({"velocity": (10, 1, 1, 1)}, {"velocity": (10, 2, 1, 1)})),
    ("loo-fig1-kernel-speed", "contradicts", standard_pgd({"velocity": (10, 1, 1, 1)}, {"velocity": (1, 1, 1, 1)})),
    ("loo-fig1-rank-specialization", "agrees", standard_pgd({"rank": 5, "specialization": 0.8},
                                                            {"rank": 9, "specialization": 0.2})),
    ("loo-fig1-rank-specialization", "contradicts", standard_pgd({"rank": 9, "specialization": 0.2},
                                                                 {"rank": 5, "specialization": 0.8})),
    ("loo-fig1-rank-specialization", "inconclusive", standard_pgd({"rank": 5, "specialization": 0.2},
                                                                  {"rank": 9, "specialization": 0.8})),
    ("loo-fig2-centered", "agrees", spawns({1: 0.5, 2: 0.8}, {1: 0.52, 2: 0.79})),
    ("loo-fig2-centered", "contradicts", spawns({1: 0.8, 2: 0.5}, {1: 0.8, 2: 0.5})),
    ("loo-fig2-centered", "inconclusive", spawns({1: 0.5, 2: 0.8}, {1: 0.3, 2: 0.6})),  # centered 0.2 behind
    ("loo-fig2-centered-robustness", "agrees", spawned_robustness(centered=0.4, linearized=0.1, standard=0.0)),
    ("loo-fig2-centered-robustness", "contradicts", spawned_robustness(centered=0.02, linearized=0.0, standard=0.0)),
    ("loo-fig2-centered-robustness", "inconclusive", spawned_robustness(centered=0.4, linearized=0.38, standard=0.0)),
    ("loo-table2-centered-at", "agrees", centered_at(centered=(0.76, 0.70), pgd=(0.52, 0.50))),
    # PGD's gain is gone under AutoAttack: judged by AutoAttack, masking or not
    ("loo-table2-centered-at", "contradicts", centered_at(centered=(0.76, 0.30), pgd=(0.52, 0.50), masking=True)),
    ("loo-table2-centered-at", "inconclusive", centered_at(centered=(0.55, 0.52), pgd=(0.52, 0.50))),
    ("loo-table2-centered-at", "agrees", centered_at(centered=(0.76, 0.70), pgd=(0.52, 0.50), adversarial_kernel=None)),
    ("loo-fig3-transfer", "agrees", loo_transfer({0: 0.05, 1: 0.6, 2: 0.8, 3: 1.0})),
    ("loo-fig3-transfer", "contradicts", loo_transfer({0: 0.5, 1: 0.6, 2: 0.8, 3: 1.0})),
    ("loo-fig3-transfer", "contradicts", loo_transfer({0: 0.05, 1: 0.1, 2: 0.2, 3: 1.0})),  # later epochs no better
    ("loo-fig3-transfer", "inconclusive", loo_transfer({0: NAN, 1: NAN, 2: NAN, 3: NAN})),  # own PGD: no drop
    ("loo-fig3-transfer", "inconclusive", loo_transfer({1: 0.6, 2: 0.8, 3: 1.0})),  # no source at initialisation
    ("rat-fig1-threefold", "agrees", threefold(first=10, after_decay=5)),
    ("rat-fig1-threefold", "contradicts", threefold(first=1, after_decay=5)),  # no fast first phase
    ("rat-fig1-threefold", "contradicts", threefold(first=10, after_decay=0.5)),  # no second phase after the decay
    ("rat-fig1-threefold", "inconclusive", threefold(first=10, after_decay=1), no_decay),
    ("rat-fig1-threefold", "contradicts", threefold(first=1, after_decay=1), no_decay),  # nor a fast first phase
    ("rat-fig1-ae-distance", "agrees", ae_velocity(standard=5, pgd=1, te=2)),
    ("rat-fig1-ae-distance", "contradicts", ae_velocity(standard=1, pgd=5, te=2)),
    ("rat-fig1-ae-distance", "inconclusive", ae_velocity(standard=3, pgd=1, te=5)),
    ("rat-sec3-ks-robustness", "agrees",
     ks({"standard": (3.0, 0.0), "fgsm": (2.0, 0.1), "pgd": (1.2, 0.4), "te": (1.05, 0.5)})),
    ("rat-sec3-ks-robustness", "contradicts",
     ks({"standard": (1.05, 0.0), "fgsm": (1.2, 0.1), "pgd": (2.0, 0.4), "te": (3.0, 0.5)})),
    ("rat-sec3-ks-robustness", "inconclusive",  # every net equally (not) robust: ties, ρ = 0
     ks({"standard": (3.0, 0.0), "fgsm": (2.0, 0.0), "pgd": (1.2, 0.0), "te": (1.05, 0.0)})),
    ("rat-fig5-kernel-distance", "agrees", parting("standard", "fgsm", "pgd")),
    ("rat-fig5-kernel-distance", "contradicts", parting()),
    ("rat-fig5-kernel-distance", "inconclusive", parting("pgd")),  # one method parts, two do not
    ("rat-fig5-kernel-distance", "inconclusive", parting("standard", "fgsm", "pgd"), no_decay),
    ("rat-fig2-batchnorm", "agrees", batchnorm(running=(0.8, 0.4), batch=(0.8, 0.2))),
    ("rat-fig2-batchnorm", "contradicts", batchnorm(running=(0.8, 0.2), batch=(0.8, 0.4))),
    ("rat-fig2-batchnorm", "contradicts", batchnorm(running=(0.9, 0.4), batch=(0.5, 0.2))),  # the clean gap dominates
    ("rat-fig2-batchnorm", "inconclusive", batchnorm(running=(0.8, 0.31), batch=(0.8, 0.3))),
    ("rat-fig6-switch-cost", "agrees", switch(share=0.6, switched_pgd=0.39)),
    ("rat-fig6-switch-cost", "contradicts", switch(share=0.95, switched_pgd=0.4)),
    ("rat-fig6-switch-cost", "contradicts", switch(share=0.6, switched_pgd=0.2)),
    ("rat-fig10-catastrophic-overfitting", "agrees", overfitting(fgsm=(0.3, 0.4, 0.05), noise=(0.3, 0.4, 0.38))),
    ("rat-fig10-catastrophic-overfitting", "contradicts", overfitting(fgsm=(0.3, 0.4, 0.05), noise=(0.3, 0.4, 0.02))),
    ("rat-fig10-catastrophic-overfitting", "inconclusive", overfitting(fgsm=(0.3, 0.4, 0.39), noise=(0.3, 0.4, 0.4))),
    (  # a run that fell to chance: its robust accuracy collapsed with everything else, not by overfitting
        "rat-fig10-catastrophic-overfitting",
        "inconclusive",
        overfitting(fgsm=(0.3, 0.4, 0.05), noise=(0.3, 0.4, 0.38), clean=0.1),
    ),
    ("beyond-autoattack", "agrees", evaluate(fgsm=(0.5, 0.1), pgd=(0.40, 0.38), te=(0.4, 0.4))),
    ("beyond-autoattack", "contradicts", evaluate(fgsm=(0.5, 0.5), pgd=(0.40, 0.10), te=(0.4, 0.4))),
    ("beyond-autoattack", "inconclusive", evaluate(fgsm=(0.5, 0.1))),  # no PGD-AT net
    ("beyond-transfer-matrix", "agrees", matrix(pgd_under_te=0.5)),
    ("beyond-transfer-matrix", "contradicts", matrix(pgd_under_te=0.1)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_check_verdict(case: tuple) -> None:
    name, expected, records, *edit = case
    verdict = judge(name, records, *edit)
    assert verdict.verdict == expected, verdict.measured
    assert verdict.measured.strip()
    json.dumps(verdict.numbers)  # plain data: the report writes it to findings.json


def test_every_recipe_is_covered() -> None:
    covered: dict[str, set[str]] = {}
    for name, verdict, *_ in CASES:
        assert verdict in VERDICTS
        covered.setdefault(name, set()).add(verdict)
    assert set(covered) == set(RECIPES), "a recipe without tests of its check (or a test of no recipe)"
    for name, verdicts in covered.items():
        assert {"agrees", "contradicts"} <= verdicts, name
        if "inconclusive" in RECIPES[name].rule:  # the rule states an inconclusive branch: test it
            assert "inconclusive" in verdicts, name


class _Asked(Exception):
    """The name of the first record a check asked for."""


class AskingResults:
    """``Results`` that answer no record: the first name asked for ends the check."""

    def __init__(self, ctx: Context, steps: Mapping[str, Step]):
        self.ctx, self.steps = ctx, steps

    def record(self, name: str) -> dict[str, Any]:
        raise _Asked(name)


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_every_check_reads_its_own_recipes_steps_in_the_whole_plan(scale):
    """In ``reproduce all`` every recipe's check reads the steps of its own recipe, at every scale:
    at paper scale LOO's kernel dynamics are ResNet-18's on CIFAR-10 while TK's MNIST runs carry
    the same step suffixes (a check that took the first name ending in "-dynamics-standard-pgd"
    judged TK's MNIST CNN). Here each check sees the whole plan; ``reproduce`` itself gives it
    its own recipe's steps alone."""
    from ntkrobust.reproduce.run import plan

    ctx = Context(scale, Path("/nonexistent/data"), Path("/nonexistent/steps"))
    recipes = all_recipes()
    steps, uses = plan(recipes, ctx)
    for recipe in recipes:
        own = {name: steps[name] for name in uses[recipe.name]}
        with pytest.raises(_Asked) as asked:
            recipe.check(AskingResults(ctx, steps))
        assert str(asked.value) in own, (recipe.name, str(asked.value))


def test_paper_scale_settings_follow_the_papers():
    """The paper-scale plan trains as the papers did: TK supp. E's MNIST CNN (lr 1e-2 fixed, no
    weight decay or momentum, batch 300, PGD-20 of α = 0.1, kernels on 300 points), RAT sec. 3.1's
    ResNet-18 (lr 0.1 decayed at 100 and 150, weight decay 5e-4, crop-flip, PGD-10 of 2/255, 500
    kernel points); LOO's transfer target is epoch 100; and no NTK machine on all 50,000 CIFAR-10
    images."""
    from ntkrobust.reproduce.run import plan

    steps, _ = plan(all_recipes(), Context("paper", Path("/nonexistent/data"), Path("/nonexistent/steps")))
    mnist, cifar = steps["mnist-pgd"].settings, steps["cifar-pgd"].settings
    assert (mnist.lr, mnist.milestones, mnist.weight_decay, mnist.momentum, mnist.batch_size) == (
        0.01,
        (),
        0.0,
        0.0,
        300,
    )
    assert (mnist.epochs, mnist.pgd_steps, mnist.pgd_step, mnist.track_kernel, mnist.augment) == (
        200,
        20,
        0.1,
        300,
        "none",
    )
    assert steps["mnist-standard"].settings.pgd_steps is None  # PGD's schedule only where PGD trains
    assert (cifar.model, cifar.lr, cifar.milestones, cifar.weight_decay, cifar.momentum) == (
        "resnet18",
        0.1,
        (100, 150),
        5e-4,
        0.9,
    )
    assert (cifar.batch_size, cifar.augment, cifar.track_kernel, cifar.epochs) == (128, "crop-flip", 500, 200)
    assert cifar.eval_pgd_steps == 20  # RAT sec. 3.1: "PGD-20 to generate AEs on the test set"
    measured = judge("rat-fig10-catastrophic-overfitting", overfitting(fgsm=(0.3, 0.05), noise=(0.3, 0.3))).measured
    assert measured.startswith("test PGD-20 accuracy by epoch")  # as the runs' records say, not a fixed PGD-10
    for name in ("cifar-transfer-epochs", "cifar-transfer-matrix"):  # fc2 on 10,000 images, not all 50,000
        assert steps[name].settings.kernel_arch == ("fc2",) and steps[name].settings.kernel_n == 10000
    for kind in ("linearized", "centered"):  # LOO's stage 2: 100 epochs at lr 0.01 (their code's second_lr)
        spawn = steps[f"cifar-standard-{kind}-100"].settings
        assert (spawn.epochs, spawn.lr, spawn.centered) == (100, 0.01, kind == "centered")
    centered = steps["cifar-pgd-centered-on-standard-100"].settings  # LOO sec. 7: AT on K_t=100,benign
    assert (centered.centered, centered.epochs, centered.eps_warmup, centered.lr) == (True, 100, 0, 0.01)
    assert centered.linearize_from == Path("/nonexistent/steps/cifar-standard/checkpoints/epoch_100.pt")
    on_adversarial = steps["cifar-pgd-centered-on-pgd-100"].settings  # and on K_t=100,adv
    assert on_adversarial.linearize_from == Path("/nonexistent/steps/cifar-pgd/checkpoints/epoch_100.pt")
    assert dataclasses.replace(on_adversarial, linearize_from=None, out=None) == dataclasses.replace(
        centered, linearize_from=None, out=None
    )
    loo = steps["cifar-transfer-epochs"].settings  # LOO sec. 5: the target f_stan,t=100, not also a source
    assert loo.target == (str(Path("/nonexistent/steps/cifar-standard/checkpoints/epoch_100.pt")),)
    assert loo.target[0] not in loo.source


def test_loo_fig1_is_judged_at_loos_length_and_rats_lazy_phase_starts_a_tenth_of_the_way():
    """A 200-epoch run (RAT's schedule at paper scale) is judged on LOO fig. 1's 100 epochs: the
    kernels after the decay at 100 change the verdict here and are not read. RAT's lazy phase runs
    from epoch 10 of a schedule that decays at 100 (RAT sec. 3.2); from epoch 1 at 7."""
    from ntkrobust.reproduce.rat import _lazy_start

    records = standard_pgd({"frobenius": [1.0] * 201}, {"frobenius": [1.0] * 201})
    for run_record in records["mnist-dynamics-standard-pgd"]["runs"]:
        run_record["dynamics"]["clean"]["velocity"] = [10.0] + [1.0] * 99 + [50.0] * 100  # fast again after 100
        run_record["dynamics"]["clean"]["velocity_epochs"] = [i + 0.5 for i in range(200)]
        for epoch, kernel in enumerate(run_record["kernels"]):
            up_to_100 = {"standard": (5.0, 1.5), "pgd": (6.0, 1.2)}[run_record["mode"]]
            after_100 = {"standard": (9.0, 1.0), "pgd": (4.0, 2.0)}[run_record["mode"]]
            rank, spec = up_to_100 if epoch <= 100 else after_100
            kernel["clean"] |= {"effective_rank": rank, "mean_specialization": spec}
    rank = judge("loo-fig1-rank-specialization", records)
    assert rank.verdict == "agrees" and "at epoch 100 (LOO's length)" in rank.measured, rank.measured
    speed = judge("loo-fig1-kernel-speed", records)
    assert speed.verdict == "agrees" and speed.numbers["standard"]["late_median"] == 1.0
    assert (_lazy_start(100), _lazy_start(7), _lazy_start(None)) == (10, 1, 1)


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_every_pgd_of_the_plan_can_reach_its_eps(scale):
    """No step attacks with a PGD whose steps cannot take an example to ε: LOO fig. 3's transfer
    step took MNIST's PGD-40 step (0.01) for 10 steps, so its examples stayed within 0.1 of their
    start at ε = 0.3 (the study warned; the cpu report did not say)."""
    from ntkrobust.bridge.training import PGD_MODES
    from ntkrobust.reproduce.run import plan
    from ntkrobust.studies._train_settings import resolve_threat

    steps, _ = plan(all_recipes(), Context(scale, Path("/nonexistent/data"), Path("/nonexistent/steps")))
    checked = []
    for name, step in steps.items():
        settings = step.settings
        if not hasattr(settings, "data"):  # dynamics: figures of finished runs, no attack
            continue
        channels = 3 if settings.data.data.startswith("cifar") else 1
        if step.study == "train" and settings.mode in PGD_MODES:
            threat = resolve_threat(settings, channels)
            eps, reach = threat.eps, threat.step * threat.steps
        elif getattr(settings, "method", None) == "pgd" and hasattr(settings, "threat"):
            eps, step_size, count = settings.threat.resolve((channels, 28, 28) if channels == 1 else (3, 32, 32))
            reach = step_size * count
        else:
            continue
        checked.append(name)
        assert reach >= eps - 1e-12, (name, reach, eps)
    assert any("transfer-epochs" in name for name in checked) and any("-pgd" in name for name in checked)


def test_loo_table2_reports_centered_at_on_the_adversarial_kernel_where_it_ran():
    """LOO table 2's third row (centered AT on the PGD-AT net's kernel) stands beside the verdict
    without deciding it; a folder whose evaluation has no such net still reads."""
    both = judge("loo-table2-centered-at", centered_at(centered=(0.76, 0.70), pgd=(0.52, 0.50)))
    assert "centered AT on the PGD-AT kernel of epoch 5" in both.measured
    assert both.numbers["accuracy"]["centered_adversarial_kernel"]["autoattack"] == 0.45
    alone = judge("loo-table2-centered-at", centered_at((0.76, 0.70), (0.52, 0.50), adversarial_kernel=None))
    assert "PGD-AT kernel" not in alone.measured and alone.verdict == both.verdict == "agrees"
