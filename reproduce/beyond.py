"""Findings beyond the three papers that this tool measures with the papers' nets:

- RobustBench practice: AutoAttack stays within a few points of PGD for PGD-AT (no gradient
  masking), while a catastrophically overfitted or noisy single-step net can hide behind PGD;
- the transfer matrix between every trained net (standard, FGSM-AT, FGSM-noise, PGD-AT, TE):
  adversarially trained targets resist every other net's examples best.
"""

from __future__ import annotations

from collections.abc import Sequence

from ntkrobust.reproduce._recipe import Context, Recipe, Results, Step, Verdict, at_most
from ntkrobust.reproduce._shared import (
    checkpoint,
    dynamics_family,
    evaluation_data,
    machine,
    mnist_data,
    ntk_points,
    training_run,
)

MODES = ("standard", "fgsm", "fgsm-noise", "pgd", "te")


def _runs(ctx: Context) -> list[Step]:
    return [training_run(ctx, dynamics_family(ctx), mode) for mode in MODES]


def _evaluate(ctx: Context) -> Sequence[Step]:
    from ntkrobust.studies.evaluate import EvaluateSettings

    runs = [run for run in _runs(ctx) if run.settings.mode in ("fgsm", "pgd", "te")]
    settings = EvaluateSettings(
        nets=tuple(str(checkpoint(ctx, run)) for run in runs),
        data=evaluation_data(ctx, runs[0]),
        device="cpu" if ctx.scale != "paper" else "auto",
    )
    minutes = {"smoke": 0.05, "cpu": 5.0, "paper": 30.0}[ctx.scale]
    step = Step(f"{dynamics_family(ctx)}-evaluate", "evaluate", settings, needs=tuple(r.name for r in runs),
                minutes=minutes)  # fmt: skip
    return [*runs, step]


def _evaluate_check(results: Results) -> Verdict:
    name = f"{dynamics_family(results.ctx)}-evaluate"
    nets = {entry["label"].split(" ")[0].rsplit("-", 1)[-1]: entry for entry in results.record(name)["nets"]}
    text = "; ".join(
        f"{label}: clean {n['accuracy']['clean']:.2f}, PGD-20 {n['accuracy']['pgd-20']:.2f}, AutoAttack "
        f"{n['accuracy']['autoattack']:.2f}{' (masking suspected)' if n['masking_suspected'] else ''}"
        for label, n in nets.items()
    )
    gap = {label: n["accuracy"]["pgd-20"] - n["accuracy"]["autoattack"] for label, n in nets.items()}
    numbers = {"accuracy": {label: n["accuracy"] for label, n in nets.items()}, "pgd20_minus_autoattack": gap}
    pgd = gap.get("pgd")
    if pgd is None:
        return Verdict("inconclusive", text, numbers)
    return Verdict("agrees" if at_most(pgd, 0.05) else "contradicts", text, numbers)


def _matrix(ctx: Context) -> Sequence[Step]:
    from ntkrobust.studies.transfer import TransferSettings

    runs = _runs(ctx)
    smoke = ctx.scale == "smoke"
    settings = TransferSettings(
        target=tuple(str(checkpoint(ctx, run)) for run in runs),
        data=mnist_data(ctx, n_test=150 if smoke else 1000) if ctx.scale != "paper" else runs[0].settings.data,
        kernel_arch=("fc2",),
        kernel_n=ntk_points(ctx),
        machine=machine(ctx),
        method="pgd",
        device="cpu" if ctx.scale != "paper" else "auto",
    )
    step = Step(f"{dynamics_family(ctx)}-transfer-matrix", "transfer", settings, needs=tuple(r.name for r in runs),
                minutes={"smoke": 0.05, "cpu": 1.2, "paper": 3.0}[ctx.scale])  # fmt: skip
    return [*runs, step]


def _matrix_check(results: Results) -> Verdict:
    name = f"{dynamics_family(results.ctx)}-transfer-matrix"
    rows = results.record(name)["targets"]
    by_mode = {row["name"].split(" ")[0].split("-", 1)[-1]: row for row in rows}
    standard, pgd = by_mode["standard"], by_mode["pgd"]
    foreign = [s for s in standard["transfer_accuracy"] if s != standard["name"] and s != pgd["name"]]
    better = [pgd["transfer_accuracy"][s] >= standard["transfer_accuracy"][s] for s in foreign]
    text = "accuracy under each other net's PGD examples: " + "; ".join(
        f"{mode}: " + ", ".join(f"{s.split(' ')[0]} {a:.2f}" for s, a in row["transfer_accuracy"].items()
                                if s != row["name"])
        for mode, row in by_mode.items()
    )  # fmt: skip
    numbers = {mode: row["transfer_accuracy"] for mode, row in by_mode.items()}
    return Verdict("agrees" if all(better) else "contradicts", text, numbers)


RECIPES = (
    Recipe(
        "beyond-autoattack", "beyond", "RobustBench practice",
        "AutoAttack finds at most a few points more than PGD-20 on a PGD-AT net (no gradient masking).",
        "agrees if PGD-20 accuracy minus AutoAttack accuracy of the PGD-AT net is ≤ 0.05, else contradicts",
        _evaluate, _evaluate_check,
        figures=lambda ctx: [(f"{dynamics_family(ctx)}-evaluate", "robust_accuracy.png", "accuracy under each attack")],
        paper_number="RobustBench practice (Croce & Hein 2020): AutoAttack a few points below PGD on robust nets; RAT "
        "table 1 (TE, CIFAR-10, 8/255): 4.7 points, PGD-20 55.17% against AutoAttack 50.50%",
    ),
    Recipe(
        "beyond-transfer-matrix", "beyond", "transfer matrix",
        "The PGD-AT net resists every other net's PGD examples at least as well as the standard net does.",
        "agrees if the PGD-AT target is at least as accurate as the standard target under every other source, else "
        "contradicts",
        _matrix, _matrix_check,
        figures=lambda ctx: [(f"{dynamics_family(ctx)}-transfer-matrix", "transfer.png", "transfer matrix")],
    ),
)  # fmt: skip
