"""The third paper, "Rethinking adversarial training with NTK" (RAT): the findings this tool can measure, as recipes.

- fig. 1 / sec. 3.2: threefold kernel evolution: kernel learning, a lazy phase, and a second
  change after the learning-rate decay; AE-NTKs of AT move less than the standard one's;
- sec. 3.2: specialization (KS) of the AE-NTK close to 1 goes with robustness;
- fig. 5: measured from TE's kernel, the methods' kernels stay put in the lazy phase and part
  after the learning-rate decay;
- fig. 2 / sec. 4: BatchNorm without running statistics ("w/o buffer") changes robust, not
  clean, accuracy;
- fig. 6 / sec. 5: clean training first, AT after, costs less at equal robustness;
- fig. 10 / sec. 6: FGSM-AT overfits catastrophically; per-example noise prevents it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from ntkrobust.kernels.metrics import spearman_correlation
from ntkrobust.reproduce._recipe import Context, Recipe, Results, Step, Verdict, at_least, at_most
from ntkrobust.reproduce._shared import dynamics_family, dynamics_step, run_name, runs_by_mode, training_run

METHODS = ("standard", "fgsm", "pgd", "te")
#: RAT sec. 5: a clean epoch takes 25 s and an adversarial one 90 s (ResNet-18, one RTX 3090)
RAT_CLEAN_EPOCH_PRICE = 25 / 90


def _methods(ctx: Context) -> list[Step]:
    family = dynamics_family(ctx)
    return [training_run(ctx, family, mode) for mode in METHODS]


def _methods_dynamics(ctx: Context) -> Sequence[Step]:
    runs = _methods(ctx)
    last = runs[0].settings.epochs
    # TE's kernel is the baseline of the kernel distances, as RAT's fig. 5 takes it
    step = dynamics_step(ctx, f"{dynamics_family(ctx)}-dynamics-methods", runs, baseline=runs[-1], ksm_epochs=(0, last))
    return [*runs, step]


def _records(results: Results) -> dict[str, dict[str, Any]]:
    name = f"{dynamics_family(results.ctx)}-dynamics-methods"
    return runs_by_mode(results, name)


def _milestone(results: Results) -> int | None:
    # by name: another family's standard run (TK's MNIST CNN at paper scale) has other milestones
    milestones = results.steps[run_name(dynamics_family(results.ctx), "standard")].settings.milestones
    return milestones[0] if milestones else None


def _lazy_start(milestone: int | None) -> int:
    """The first epoch of the lazy phase: RAT sec. 3.2 finds it "between the 10-th epoch and 100-th
    epoch" of a schedule that decays at 100, so a tenth of the way to the decay (at least 1)."""
    return max(1, (milestone or 0) // 10)


def _threefold_check(results: Results) -> Verdict:
    runs = _records(results)
    m = _milestone(results)
    velocity = runs["standard"]["dynamics"]["clean"]["velocity"]
    lazy = statistics.median(velocity[_lazy_start(m) : m if m and m > 1 else None] or velocity)
    numbers: dict[str, Any] = {"velocity_standard": velocity, "lazy_median": lazy, "milestone": m}
    fast_then_lazy = velocity[0] > 3 * lazy
    text = f"standard C-NTK velocity {velocity[0]:.3g} in epoch 1, median {lazy:.3g} in the lazy phase"
    if m is None or m >= len(velocity):  # no decay to judge, but the rule's fast first phase still is
        verdict = "inconclusive" if fast_then_lazy else "contradicts"
        return Verdict(verdict, text + "; no learning-rate decay in this schedule", numbers)
    before, after = velocity[m - 1], velocity[m]
    numbers |= {"before_decay": before, "after_decay": after}
    text += f"; {before:.3g} in the epoch before the decay (after epoch {m}), {after:.3g} in the epoch after it"
    moves_again = after > before
    verdict = "agrees" if fast_then_lazy and moves_again else "contradicts"
    why = "" if moves_again else " (the decay slowed the kernel: no second kernel-learning phase)"
    return Verdict(verdict, text + why + ("" if fast_then_lazy else " (no fast first phase)"), numbers)


def _ae_distance_check(results: Results) -> Verdict:
    runs = _records(results)
    mean = {mode: statistics.fmean(run["dynamics"]["adversarial"]["velocity"]) for mode, run in runs.items()}
    text = "mean AE-NTK velocity: " + ", ".join(f"{mode} {value:.3g}" for mode, value in mean.items())
    at_smaller = [mean[m] < mean["standard"] for m in ("pgd", "te")]
    verdict = "agrees" if all(at_smaller) else "contradicts" if not any(at_smaller) else "inconclusive"
    return Verdict(verdict, text, {"mean_ae_velocity": mean})


def _ks_check(results: Results) -> Verdict:
    runs = _records(results)
    robust = {m: run["epochs"][-1]["accuracy"]["running"]["test_pgd"] for m, run in runs.items()}
    ks = {m: run["kernels"][-1]["adversarial"]["mean_specialization"] for m, run in runs.items()}
    gap = {m: abs(value - 1) for m, value in ks.items()}
    rho = spearman_correlation([robust[m] for m in runs], [gap[m] for m in runs])
    rho = 0.0 if math.isnan(rho) else rho  # constant (e.g. every net at PGD accuracy 0): no order either way
    text = (
        "at the last epoch, AE-NTK mean specialization (test PGD accuracy): "
        + ", ".join(f"{m} {ks[m]:.3g} ({robust[m]:.3f})" for m in runs)
        + f"; Spearman(robust accuracy, |KS − 1|) = {rho:.2f}"
    )
    verdict = "agrees" if rho < 0 else "contradicts" if rho > 0 else "inconclusive"
    return Verdict(verdict, text, {"mean_specialization_adversarial": ks, "test_pgd": robust, "spearman": rho})


def _baseline_check(results: Results) -> Verdict:
    name = f"{dynamics_family(results.ctx)}-dynamics-methods"
    rows = {row["label"].split(" ")[-1]: row["clean"] for row in results.record(name)["baseline_distance"]["runs"]}
    distances = {mode: rows[mode] for mode in METHODS if mode != "te"}
    text = "C-NTK distance to TE's kernel by epoch: " + "; ".join(
        f"{mode}: " + ", ".join(f"{d:.3f}" for d in distance) for mode, distance in distances.items()
    )
    m = _milestone(results)
    numbers: dict[str, Any] = {"distance_to_te": distances, "milestone": m}
    last = len(next(iter(distances.values()))) - 1
    if m is None or not 1 < m < last:
        return Verdict("inconclusive", text + " (no learning-rate decay inside the schedule)", numbers)
    # per epoch: how far each distance moved in the lazy phase (from its start to the decay), and
    # how much it grew after the decay
    start = _lazy_start(m)
    lazy = {mode: abs(d[m] - d[start]) / (m - start) for mode, d in distances.items()}
    after = {mode: (d[last] - d[m]) / (last - m) for mode, d in distances.items()}
    numbers |= {"lazy_change_per_epoch": lazy, "growth_after_decay_per_epoch": after}
    parts = [mode for mode in distances if after[mode] > lazy[mode]]
    moves = ", ".join(f"{mode} {lazy[mode]:.4f} → {after[mode]:+.4f}" for mode in distances)
    text += f"; per epoch, lazy phase → after the decay (after epoch {m}): {moves}"
    verdict = "agrees" if len(parts) == len(distances) else "contradicts" if not parts else "inconclusive"
    return Verdict(verdict, text, numbers)


def _batchnorm(ctx: Context) -> Sequence[Step]:
    width = {"smoke": 4, "cpu": 8, "paper": 64}[ctx.scale]
    epochs = {"smoke": 2, "cpu": 6, "paper": 200}[ctx.scale]
    step = training_run(
        ctx, "cifar", "pgd", suffix="-resnet18-bn", model="resnet18", width=width, batchnorm="both", epochs=epochs,
        lr={"smoke": 0.1, "cpu": 0.05, "paper": 0.1}[ctx.scale],  # BatchNorm: ResNet-18 takes RAT's larger rates
        milestones=() if ctx.scale != "paper" else (100, 150),
        track_kernel={"smoke": 10, "cpu": 50, "paper": 500}[ctx.scale],
        eval_n={"smoke": 60, "cpu": 200, "paper": 1000}[ctx.scale],
    )  # fmt: skip
    minutes = {"smoke": 0.05, "cpu": 3.0, "paper": 320.0}[ctx.scale]
    run = Step(step.name, step.study, step.settings, minutes=minutes)
    return [run, dynamics_step(ctx, "cifar-dynamics-batchnorm", [run], ksm_epochs=(0, epochs))]


def _batchnorm_check(results: Results) -> Verdict:
    history = results.record(run_name("cifar", "pgd", "-resnet18-bn"))
    last = history["epochs"][-1]["accuracy"]
    clean = {mode: last[mode]["test_clean"] for mode in ("running", "batch")}
    robust = {mode: last[mode]["test_pgd"] for mode in ("running", "batch")}
    clean_gap, robust_gap = abs(clean["running"] - clean["batch"]), robust["running"] - robust["batch"]
    text = (
        f"ResNet-18 after PGD-AT, test clean / PGD: w buffer {clean['running']:.3f} / {robust['running']:.3f}, w/o "
        f"buffer {clean['batch']:.3f} / {robust['batch']:.3f}"
    )
    # accuracies are shares k/n: a float rounding of a gap counts as equal (0.32 − 0.30 is 0.0200…02, not
    # "> 0.02"; |0.85 − 0.80| is 0.0499…93 against 0.35 − 0.30's 0.0499…99, equal gaps, not "smaller")
    if not at_most(robust_gap, 0.02) and not at_least(clean_gap, robust_gap):
        verdict = "agrees"  # the buffer adds more than 0.02 of robustness, and moves clean accuracy less
    elif not at_least(robust_gap, -0.02) or not at_most(clean_gap, abs(robust_gap)):
        verdict = "contradicts"  # the buffer costs more than 0.02 of robustness, or moves clean accuracy more
    else:
        verdict = "inconclusive"
    return Verdict(verdict, text, {"clean": clean, "pgd": robust})


def _switch(ctx: Context) -> Sequence[Step]:
    family = dynamics_family(ctx)
    full = training_run(ctx, family, "pgd")
    at = {"smoke": 1, "cpu": 4, "paper": 100}[ctx.scale]
    switched = training_run(ctx, family, "pgd", suffix=f"-switch{at}", switch_epoch=at)
    return [full, switched, dynamics_step(ctx, f"{family}-dynamics-switch", [full, switched])]


def _switch_check(results: Results) -> Verdict:
    name = f"{dynamics_family(results.ctx)}-dynamics-switch"
    full, switched = results.record(name)["switch_cost"]["runs"]
    share = switched["estimated_cost_of_full_at"]
    clean_epochs, epochs = switched["epochs_clean"], switched["epochs_clean"] + switched["epochs_adversarial"]
    # the share is set by the schedule (the clean epochs' fraction) and by the price of a clean
    # epoch against an adversarial one, which differs between machines: RAT's 25 s against 90 s
    ratio = (switched["seconds_clean"] / max(clean_epochs, 1)) / (switched["seconds_adversarial"] / switched[
        "epochs_adversarial"])  # fmt: skip
    at_rats_price = (clean_epochs * RAT_CLEAN_EPOCH_PRICE + epochs - clean_epochs) / epochs
    text = (
        f"switch after {clean_epochs} of {epochs} epochs: test clean {switched['test_clean']:.3f}, "
        f"{switched['pgd']} {switched['test_pgd']:.3f}, against {full['test_clean']:.3f} / {full['test_pgd']:.3f} for "
        f"PGD-AT throughout; the switch costs {share:.0%} of full AT (from its own epoch times; a clean epoch here "
        f"{ratio:.2f} of an adversarial one, RAT's {RAT_CLEAN_EPOCH_PRICE:.2f}: at RAT's price this schedule would "
        f"cost {at_rats_price:.0%})"
    )
    robust_kept = at_least(switched["test_pgd"], full["test_pgd"] - 0.03)
    verdict = "agrees" if share < 0.9 and robust_kept else "contradicts"
    numbers = {"cost_share": share, "clean_epoch_price": ratio, "cost_share_at_rats_price": at_rats_price}
    return Verdict(verdict, text, numbers | {"switched": switched, "full": full})


def _overfitting(ctx: Context) -> Sequence[Step]:
    runs = [training_run(ctx, "cifar", mode) for mode in ("fgsm", "fgsm-noise")]
    return [*runs, dynamics_step(ctx, "cifar-dynamics-fgsm", runs)]


def _overfitting_check(results: Results) -> Verdict:
    curves, clean = {}, {}
    for mode in ("fgsm", "fgsm-noise"):
        history = results.record(run_name("cifar", mode))
        curves[mode] = [epoch["accuracy"]["running"]["test_pgd"] for epoch in history["epochs"]]
        clean[mode] = history["epochs"][-1]["accuracy"]["running"]["test_clean"]
        chance = 1 / len(history["dataset"]["classes"])
    peak, final = max(curves["fgsm"]), curves["fgsm"][-1]
    collapsed = final < 0.5 * peak and peak - final > 0.05
    text = (
        f"test PGD-{history['config']['tracking']['steps']} accuracy by epoch: "
        + "; ".join(f"{mode}: " + ", ".join(f"{a:.2f}" for a in curve) for mode, curve in curves.items())
        + "; final clean accuracy: "
        + ", ".join(f"{mode} {a:.2f}" for mode, a in clean.items())
    )
    numbers = {"test_pgd": curves, "fgsm_peak": peak, "fgsm_final": final, "test_clean": clean}
    if not at_least(clean["fgsm"], 1.5 * chance):  # a net at chance lost everything, not only its robustness
        return Verdict("inconclusive", text + " (FGSM-AT's clean accuracy is at chance: training failed)", numbers)
    if not collapsed:
        return Verdict("inconclusive", text + " (FGSM-AT did not overfit catastrophically)", numbers)
    noise_peak = max(curves["fgsm-noise"])
    prevented = curves["fgsm-noise"][-1] >= 0.5 * noise_peak and curves["fgsm-noise"][-1] > final
    return Verdict("agrees" if prevented else "contradicts", text, numbers)


def _dynamics_figures(ctx: Context, *files: tuple[str, str]) -> list[tuple[str, str, str]]:
    return [(f"{dynamics_family(ctx)}-dynamics-methods", file, caption) for file, caption in files]


RECIPES = (
    Recipe(
        "rat-fig1-threefold", "RAT", "fig. 1a, sec. 3.2",
        "The kernel evolves in three phases: fast kernel learning, a lazy phase where it barely moves, and a second "
        "change after the learning-rate decay.",
        "agrees if the standard run's first-epoch C-NTK velocity exceeds 3× the lazy phase's median (from a tenth "
        "of the way to the decay, at least epoch 1, to the decay) and the epoch "
        "after the decay moves more than the one before; contradicts if either fails; inconclusive if the schedule "
        "has no decay and the first phase is fast",
        _methods_dynamics, _threefold_check,
        figures=lambda ctx: _dynamics_figures(ctx, ("velocity_distance.png", "kernel velocity, all methods")),
        paper_number="qualitative (KD near 0 between epochs 10 and 100, sharp change after the decay at 100)",
    ),
    Recipe(
        "rat-fig1-ae-distance", "RAT", "fig. 1d, sec. 3.2",
        "The AE-NTKs of adversarially trained nets move less than the standard net's (they converge to a robust "
        "kernel).",
        "agrees if the mean AE-NTK velocity of PGD-AT and of TE are both below standard training's; contradicts if "
        "neither; else inconclusive",
        _methods_dynamics, _ae_distance_check,
        figures=lambda ctx: _dynamics_figures(ctx, ("kernel_distance.png", "kernel distance heatmaps")),
        paper_number="qualitative",
    ),
    Recipe(
        "rat-sec3-ks-robustness", "RAT", "sec. 3.2, fig. 1",
        "The AE-NTK's kernel specialization (KS) is close to 1 for robust nets: the closer to 1, the more robust.",
        "agrees if Spearman(test PGD accuracy, |KS_AE − 1|) over the methods' nets is negative, contradicts if "
        "positive",
        _methods_dynamics, _ks_check,
        figures=lambda ctx: _dynamics_figures(ctx, ("specialization_adversarial.png", "AE-NTK specialization "
                                                    "matrices (clean labels)")),
        paper_number="qualitative",
    ),
    Recipe(
        "rat-fig5-kernel-distance", "RAT", "fig. 5, sec. 5",
        "Measured from TE's kernel, the training methods' kernels converge and stay frozen in the lazy phase, and "
        "become very different in the second kernel-learning stage after the learning-rate decay.",
        "agrees if, for each of standard, FGSM-AT and PGD-AT, the C-NTK distance to TE's kernel grows more per epoch "
        "after the decay than it moved per epoch in the lazy phase (from a tenth of the way to the decay, at least "
        "epoch 1, to the decay); contradicts if for none; "
        "else inconclusive (also without a decay inside the schedule)",
        _methods_dynamics, _baseline_check,
        figures=lambda ctx: _dynamics_figures(ctx, ("baseline_distance.png", "kernel distance to TE's kernel")),
        paper_number="qualitative (TE as the baseline; fig. 5)",
    ),
    Recipe(
        "rat-fig2-batchnorm", "RAT", "fig. 2, sec. 4",
        "Evaluating with batch statistics instead of BatchNorm's running estimates (\"w/o buffer\") leaves clean "
        "accuracy alone but lowers robust accuracy.",
        "agrees if PGD accuracy with running statistics exceeds that with batch statistics by > 0.02 and the clean "
        "gap is smaller; contradicts if robust accuracy is higher w/o buffer by > 0.02 or the clean gap dominates; "
        "else inconclusive",
        _batchnorm, _batchnorm_check,
        figures=lambda ctx: [("cifar-dynamics-batchnorm", "accuracy.png", "accuracy with running and batch statistics"),
                             ("cifar-dynamics-batchnorm", "specialization_adversarial.png",
                              "AE-NTK specialization, running and batch statistics (w and w/o buffer; fig. 4)")],
        paper_number="CIFAR-10 ResNet-18: close clean accuracy, \"quite different\" robust test accuracy (fig. 2)",
    ),
    Recipe(
        "rat-fig6-switch-cost", "RAT", "fig. 6, table 1, sec. 5",
        "Training clean first and adversarially after the switch costs less than AT throughout at equal robustness.",
        "agrees if the switched run costs < 90% of full AT (from its own epoch times) and its PGD accuracy is within "
        "0.03 of full AT's or above, else contradicts",
        _switch, _switch_check,
        figures=lambda ctx: [(f"{dynamics_family(ctx)}-dynamics-switch", "switch_cost.png", "cost against robustness")],
        paper_number="switching at epoch 100 of 200: 11,500 s, 63.88% of full AT's 18,000 s (sec. 5: clean epochs "
        "25 s, adversarial 90 s); TE 100 PGD-20 54.16% against TE's 55.17% (app. C table 1)",
    ),
    Recipe(
        "rat-fig10-catastrophic-overfitting", "RAT", "fig. 10, sec. 6",
        "FGSM-AT overfits catastrophically (its robust test accuracy collapses); per-example anisotropic noise "
        "prevents it.",
        "inconclusive if FGSM-AT's clean accuracy ends below 1.5× chance (a failed run), or unless FGSM-AT's "
        "final PGD accuracy is below half its peak and 0.05 under it; else agrees if "
        "FGSM-noise ends at least at half its peak and above FGSM-AT, contradicts otherwise",
        _overfitting, _overfitting_check,
        figures=lambda ctx: [("cifar-dynamics-fgsm", "accuracy.png", "clean and PGD accuracy through training")],
        paper_number="CIFAR-10: FGSM-AT nets \"suddenly lose robustness on the test set\" (sec. 6); the variant keeps "
        "it (fig. 10)",
    ),
)  # fmt: skip
