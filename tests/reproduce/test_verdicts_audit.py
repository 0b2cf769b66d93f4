"""The recipes' verdicts and the plan's settings where a mutation of ``reproduce/tk.py``,
``loo.py``, ``rat.py`` or ``_shared.py`` left ``test_checks.py`` and ``test_recipes_audit.py``
passing (the sixth mutation audit).

The checks read real ``Results``: each record is written by hand as JSON into the step's folder
under ``tmp_path`` (``history.json`` of a training run, ``results.json`` of any other study), with
only the keys the check reads, and numbers chosen on both sides of the rule's thresholds, worked
out by hand beside each case. The settings are compared with the values the README (section
"Reproducing the papers" and the sections whose commands the recipes repeat), ``_shared``'s
docstrings and the papers state; nothing trains."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ntkrobust.reproduce import Verdict, all_recipes
from ntkrobust.reproduce._recipe import Context, Results, Step, record_file
from ntkrobust.reproduce.run import plan

RECIPES = {recipe.name: recipe for recipe in all_recipes()}
DATA = Path("/nonexistent/data")
Edit = Callable[[dict[str, Step]], None]


def judge(
    tmp_path: Path, name: str, records: dict[str, Any], scale: str = "smoke", edit: Edit | None = None
) -> Verdict:
    """``name``'s check on ``records``, written into the step folders of its own steps at ``scale``."""
    ctx = Context(scale, None if scale == "smoke" else DATA, tmp_path / "steps")
    steps = {step.name: step for step in RECIPES[name].steps(ctx)}
    if edit is not None:
        edit(steps)
    for step_name, record in records.items():
        path = ctx.step_dir(step_name) / record_file(steps[step_name])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return RECIPES[name].check(Results(ctx, steps))


def standard_schedule(epochs: int, milestones: tuple[int, ...]) -> Edit:
    """The smoke plan's standard MNIST run with another schedule (the checks read its milestones)."""

    def edit(steps: dict[str, Step]) -> None:
        step = steps["mnist-standard"]
        settings = dataclasses.replace(step.settings, epochs=epochs, milestones=milestones)
        steps[step.name] = dataclasses.replace(step, settings=settings)

    return edit


# ---------------------------------------------------------------- records, shaped like the studies'


def epoch(running: dict[str, float], batch: dict[str, float] | None = None) -> dict[str, Any]:
    return {"accuracy": {"running": running} | ({} if batch is None else {"batch": batch})}


def batchnorm(*per_epoch: tuple[tuple[float, float], tuple[float, float]]) -> dict[str, Any]:
    """The BatchNorm run's history: (clean, PGD) with running and with batch statistics, per epoch."""
    epochs = [
        epoch({"test_clean": r[0], "test_pgd": r[1]}, {"test_clean": b[0], "test_pgd": b[1]}) for r, b in per_epoch
    ]
    return {"cifar-pgd-resnet18-bn": {"epochs": epochs}}


def two_layer(ntk: float, random: float, narrow_cosine: float = 0.5, wide_cosine: float = 0.9) -> dict[str, Any]:
    def net(width: int, cosine: float) -> dict[str, Any]:
        return {"width": width, "gradient_cosine": cosine, "clean_accuracy": 0.9, "white_box_accuracy": 0.0,
                "ntk_attack_accuracy": ntk, "random_accuracy": random}  # fmt: skip

    return {"mnist-two-layer": {"nets": [net(100, narrow_cosine), net(1000, wide_cosine)]}}


def tk_transfer(tau: float, random_tau: float) -> dict[str, Any]:
    def row(name: str, tau_ntk: float, tau_random: float) -> dict[str, Any]:
        return {"name": name, "clean_accuracy": 0.9, "white_box_accuracy": 0.0, "random_accuracy": 0.85,
                "ntk_attack_accuracy": {"fc2": 0.3}, "transferability": {"NTK fc2": tau_ntk},
                "random_transferability": tau_random}  # fmt: skip

    return {"mnist-transfer-ntk": {"targets": [row("mnist-standard epoch 5", tau, random_tau),
                                               row("mnist-pgd epoch 5", 0.1, 0.0)]}}  # fmt: skip


def loo_transfer(by_epoch: dict[int, float]) -> dict[str, Any]:
    tau = {f"mnist-standard epoch {e}": value for e, value in by_epoch.items()}
    return {"mnist-transfer-epochs": {"targets": [{"name": "mnist-standard epoch 5", "transferability": tau}]}}


def features(rows: tuple[tuple[float, float], ...]) -> dict[str, Any]:
    table = {"robust_only": [{"r": r, "clean": c, "fgsm_own": f} for r, (c, f) in enumerate(rows, 1)],
             "full_machine": {"clean_accuracy": 0.95, "fgsm_accuracy": 0.0}}  # fmt: skip
    return {"mnist-features": {"architectures": {"fc2": table}, "config": {}}}


def method_run(mode: str, *, velocity=(1.0,), ae_velocity=(1.0,), ks=(1.0,), test_pgd=(0.0,)) -> dict[str, Any]:
    """One run of the methods' ``dynamics`` record: velocities, AE-NTK specialization per kernel
    and test PGD accuracy per epoch."""
    return {
        "mode": mode,
        "dynamics": {"clean": {"velocity": list(velocity)}, "adversarial": {"velocity": list(ae_velocity)}},
        "kernels": [{"epoch": float(e), "adversarial": {"mean_specialization": k}} for e, k in enumerate(ks)],
        "epochs": [epoch({"test_clean": 0.9, "test_pgd": a}) for a in test_pgd],
    }


def methods(name: str = "mnist-dynamics-methods", distance: dict[str, list[float]] | None = None,
            **by_mode: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    modes = ("standard", "fgsm", "pgd", "te")
    rows = [{"label": f"net {mode}", "clean": (distance or {}).get(mode, [0.0])} for mode in modes]
    runs = [method_run(mode, **by_mode.get(mode, {})) for mode in modes]
    return {name: {"runs": runs, "baseline_distance": {"runs": rows}}}


def same(distance: list[float]) -> dict[str, list[float]]:
    """The same C-NTK distance to TE's kernel by epoch for standard, FGSM-AT and PGD-AT."""
    return {mode: distance for mode in ("standard", "fgsm", "pgd")}


def overfitting(
    clean: tuple[float, ...],
    fgsm: tuple[float, ...] = (0.3, 0.4, 0.05),
    noise: tuple[float, ...] = (0.3, 0.4, 0.38),
    noise_clean: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Both runs' PGD and clean accuracy per epoch, 10 classes. By default FGSM-AT collapses (0.05
    is below half its peak, 0.4, and 0.35 under it) and FGSM-noise keeps 0.38 (≥ 0.2 and above
    0.05); FGSM-noise's clean accuracy is FGSM-AT's unless given."""

    def run(pgd: tuple[float, ...], accuracy: tuple[float, ...]) -> dict[str, Any]:
        epochs = [epoch({"test_clean": c, "test_pgd": a}) for c, a in zip(accuracy, pgd, strict=True)]
        return {"epochs": epochs, "dataset": {"classes": list(range(10))}, "config": {"tracking": {"steps": 10}}}

    return {"cifar-fgsm": run(fgsm, clean), "cifar-fgsm-noise": run(noise, noise_clean or clean)}


# ---------------------------------------------------------------- margins on shares k/n (bugs fixed)
#
# Accuracies are shares k/n, and the README says a rule's margin counts a float rounding as equal.
# These strict margins ("by > 0.02", "0.1 below", "exceeds by 0.2 / 0.3") were decided by the
# rounding of an exact gap instead: 0.32 − 0.30 is 0.0200…02 (> 0.02), 0.8 − 0.1 is 0.700…01
# (0.7 below it), 0.7 + 0.2 is 0.899…9 (0.9 above it), 0.15 + 0.3 is 0.449…96 (0.45 above it).


@pytest.mark.parametrize(
    ("running", "batch", "expected"),
    [
        ((0.8, 0.32), (0.8, 0.30), "inconclusive"),  # robust gap exactly 0.02 (4 of 200 points): not > 0.02
        ((0.8, 0.325), (0.8, 0.30), "agrees"),  # 0.025 (5 of 200): above it
        ((0.8, 0.30), (0.8, 0.32), "inconclusive"),  # w/o buffer ahead by exactly 0.02: not > 0.02
        ((0.8, 0.30), (0.8, 0.325), "contradicts"),
        ((0.85, 0.35), (0.80, 0.30), "inconclusive"),  # clean and robust gaps both 0.05: neither smaller
        ((0.84, 0.35), (0.80, 0.30), "agrees"),  # clean gap 0.04 < 0.05
        ((0.80, 0.32), (0.85, 0.30), "contradicts"),  # the clean gap (0.05) dominates the robust one (0.02)
    ],
)
def test_batchnorm_gaps_of_shares_are_compared_up_to_rounding(tmp_path, running, batch, expected) -> None:
    assert judge(tmp_path, "rat-fig2-batchnorm", batchnorm((running, batch))).verdict == expected


@pytest.mark.parametrize(
    ("ntk", "random", "expected"),
    [
        (0.7, 0.8, "inconclusive"),  # exactly 0.1 below random-sign noise (0.8 − 0.1 = 0.700…01 in floats)
        (0.6, 0.7, "inconclusive"),  # the same gap, rounded the other way (0.7 − 0.1 = 0.599…99)
        (0.698, 0.8, "agrees"),  # 0.102 below (1 of 500 test points more)
    ],
)
def test_two_layer_fooled_means_more_than_0_1_below_noise_whatever_the_rounding(tmp_path, ntk, random, expected):
    """The widest net's gradient is closer to the NTK's (0.9 > 0.5), so the verdict is agrees
    exactly when the NTK's FGSM leaves it more than 0.1 below random-sign noise."""
    assert judge(tmp_path, "tk-fig4-two-layer", two_layer(ntk, random)).verdict == expected


@pytest.mark.parametrize(
    ("tau", "random_tau", "expected"),
    [(0.9, 0.7, "contradicts"), (0.5, 0.3, "contradicts"), (0.905, 0.7, "agrees")],  # 0.2, 0.2, 0.205 above
)
def test_tk_transfer_exceeds_noise_by_0_2_whatever_the_rounding(tmp_path, tau, random_tau, expected) -> None:
    assert judge(tmp_path, "tk-sec3-transfer", tk_transfer(tau, random_tau)).verdict == expected


@pytest.mark.parametrize(
    ("by_epoch", "expected"),
    [
        ({0: 0.15, 1: 0.45, 5: 1.0}, "contradicts"),  # 0.3 above τ at initialisation (0.15 + 0.3 = 0.449…96)
        ({0: 0.1, 1: 0.4, 5: 1.0}, "contradicts"),  # 0.3 above (0.1 + 0.3 = 0.4 exactly)
        ({0: 0.15, 1: 0.455, 5: 1.0}, "agrees"),  # 0.305 above
    ],
)
def test_loo_transfer_exceeds_initialisation_by_0_3_whatever_the_rounding(tmp_path, by_epoch, expected) -> None:
    """Epoch 5 is the target itself (τ = 1 by definition) and is not a "later epoch"."""
    assert judge(tmp_path, "loo-fig3-transfer", loo_transfer(by_epoch)).verdict == expected


# ---------------------------------------------------------------- which number a verdict reads


def test_robust_only_quotes_the_kernel_that_decides_the_verdict(tmp_path) -> None:
    """r = 2 keeps clean 0.90 ≥ 0.5 and own-FGSM 0.25 ≥ 0.2, so the finding contradicts TK; the
    text must quote that kernel, not r = 1 (0.45 / 0.45), whose worse score is higher but which
    fails the clean bar."""
    verdict = judge(tmp_path, "tk-suppD3-robust-only", features(((0.45, 0.45), (0.9, 0.25))))
    assert verdict.verdict == "contradicts"
    assert "the best keeps clean 0.90 and own-FGSM 0.25 (r = 2)" in verdict.measured, verdict.measured


def test_ae_distance_compares_mean_velocities(tmp_path) -> None:
    """Standard's AE-NTK velocities (3, 3, 0) have mean 2 (median 3): PGD-AT's 2.5 is not below
    it, TE's 1 is, so the rule's "mean ... of PGD-AT and of TE" gives inconclusive."""
    records = methods(
        standard={"ae_velocity": (3.0, 3.0, 0.0)}, pgd={"ae_velocity": (2.5,)}, te={"ae_velocity": (1.0,)}
    )
    verdict = judge(tmp_path, "rat-fig1-ae-distance", records)
    assert verdict.verdict == "inconclusive"
    assert verdict.numbers["mean_ae_velocity"]["standard"] == 2.0


def test_ks_reads_the_last_kernel_and_the_last_epoch(tmp_path) -> None:
    """At the last kernel and epoch |KS − 1| falls as PGD accuracy rises (standard 2 at 0.0, FGSM
    1 at 0.1, PGD-AT 0.2 at 0.4, TE 0.05 at 0.5: ρ = −1, agrees); the first kernel's KS and the
    first epoch's accuracy are each in the reverse order, so either one read instead gives ρ = +1."""
    last = {"standard": (3.0, 0.0), "fgsm": (2.0, 0.1), "pgd": (1.2, 0.4), "te": (1.05, 0.5)}
    first = {"standard": (1.05, 0.5), "fgsm": (1.2, 0.4), "pgd": (2.0, 0.1), "te": (3.0, 0.0)}
    records = methods(**{m: {"ks": (first[m][0], last[m][0]), "test_pgd": (first[m][1], last[m][1])} for m in last})
    verdict = judge(tmp_path, "rat-sec3-ks-robustness", records)
    assert verdict.verdict == "agrees" and verdict.numbers["spearman"] == pytest.approx(-1.0)
    assert verdict.numbers["test_pgd"] == {m: acc for m, (_, acc) in last.items()}


def test_batchnorm_reads_the_last_epoch(tmp_path) -> None:
    """Epoch 1 has batch statistics 0.2 ahead in PGD accuracy (contradicts); the last epoch has
    running statistics 0.2 ahead at equal clean accuracy (agrees)."""
    records = batchnorm(((0.8, 0.2), (0.8, 0.4)), ((0.8, 0.4), (0.8, 0.2)))
    assert judge(tmp_path, "rat-fig2-batchnorm", records).verdict == "agrees"


def test_overfitting_reads_the_final_clean_accuracy(tmp_path) -> None:
    """FGSM-AT ends at clean accuracy 0.1, below 1.5 × chance (0.15): a failed run, inconclusive,
    though its first epochs were at 0.6."""
    verdict = judge(tmp_path, "rat-fig10-catastrophic-overfitting", overfitting((0.6, 0.6, 0.1)))
    assert verdict.verdict == "inconclusive" and "fgsm 0.10" in verdict.measured, verdict.measured


# ---------------------------------------------------------------- the decay the RAT rules judge


def test_paper_scale_rat_rules_judge_the_first_decay(tmp_path) -> None:
    """RAT's schedule decays at 100 and 150; its second kernel-learning phase follows the decay at
    100 (fig. 1a, fig. 5). The standard C-NTK moves 10 in epoch 1, 1 per epoch after, 5 in epoch
    101 and 0.5 in epoch 151: judged at 100, lazy median 1 < 10 / 3 and 5 > 1, agrees (at 150:
    0.5 < 1, contradicts). Distances to TE's kernel stay at 0.5 up to 100, grow 0.01 per epoch to
    1.0 at 150, then stay: at 100 the lazy phase moved 0 per epoch and 0.005 after, agrees (at 150:
    0.5 / 135 against 0, contradicts)."""
    velocity = [10.0] + [1.0] * 199
    velocity[100], velocity[150] = 5.0, 0.5
    distance = [0.0] + [0.5] * 100 + [0.5 + 0.01 * (e - 100) for e in range(101, 151)] + [1.0] * 50
    assert len(distance) == 201 and distance[150] == pytest.approx(1.0)
    records = methods("cifar-dynamics-methods", same(distance),
                      standard={"velocity": velocity})  # fmt: skip
    threefold = judge(tmp_path, "rat-fig1-threefold", records, scale="paper")
    assert threefold.verdict == "agrees" and threefold.numbers["milestone"] == 100, threefold.measured
    assert (threefold.numbers["before_decay"], threefold.numbers["after_decay"]) == (1.0, 5.0)
    distances = judge(tmp_path, "rat-fig5-kernel-distance", records, scale="paper")
    assert distances.verdict == "agrees", distances.measured
    assert distances.numbers["growth_after_decay_per_epoch"]["standard"] == pytest.approx(0.005)


def test_a_decay_at_the_last_epoch_is_no_decay_to_judge(tmp_path) -> None:
    """Milestone 5 of 5 epochs: the decay would act after training ends (5 velocities, 6
    distances). The threefold rule has no epoch after it (fast first phase: inconclusive), nor has
    the kernel-distance rule."""
    velocity = (10.0, 1.0, 1.0, 1.0, 1.0)
    records = methods(distance=same([0.0, 0.1, 0.1, 0.1, 0.1, 0.5]),
                      standard={"velocity": velocity})  # fmt: skip
    edit = standard_schedule(5, (5,))
    threefold = judge(tmp_path, "rat-fig1-threefold", records, edit=edit)
    assert threefold.verdict == "inconclusive" and "no learning-rate decay" in threefold.measured
    assert judge(tmp_path, "rat-fig5-kernel-distance", records, edit=edit).verdict == "inconclusive"


def test_a_decay_after_the_first_epoch_leaves_no_lazy_phase_to_compare(tmp_path) -> None:
    """Milestone 1: the lazy phase (from epoch max(1, 1 // 10) = 1 to the decay at 1) is empty, so
    the kernel-distance rule has nothing to compare: inconclusive, as without a decay."""
    records = methods(distance=same([0.0, 0.1, 0.5, 0.9, 1.3, 1.7]))
    verdict = judge(tmp_path, "rat-fig5-kernel-distance", records, edit=standard_schedule(5, (1,)))
    assert verdict.verdict == "inconclusive" and "no learning-rate decay inside" in verdict.measured


# ---------------------------------------------------------------- settings against stated values


def steps_at(scale: str) -> dict[str, Step]:
    return plan(all_recipes(), Context(scale, None if scale == "smoke" else DATA, Path("/nonexistent/steps")))[0]


def test_cpu_spawns_are_those_the_readme_reports() -> None:
    """README, loo-fig2-centered at cpu scale: "spawned at 1 ... spawned at 3"; ``loo._spawns``:
    below paper scale stage 2 keeps the parent's lr ("cpu: 0.05 for 2 epochs"), without a decay."""
    steps = steps_at("cpu")
    spawned = sorted(name for name in steps if name.startswith("mnist-standard-") and "-on-" not in name)
    assert spawned == ["mnist-standard-centered-1", "mnist-standard-centered-3", "mnist-standard-linearized-1",
                       "mnist-standard-linearized-3"]  # fmt: skip
    for name in spawned:
        settings = steps[name].settings
        assert (settings.epochs, settings.lr, settings.milestones, settings.centered) == (
            2,
            0.05,
            (),
            "centered" in name,
        )


def test_two_layer_nets_are_those_the_readme_reports() -> None:
    """README: at cpu scale the widths 100, 1000 and 4000 ("the widest two-layer net here (m =
    4000, 500 epochs on 500 images)"); the recipe: "500 training images ... (paper scale)"."""
    cpu, paper = steps_at("cpu")["mnist-two-layer"].settings, steps_at("paper")["mnist-two-layer"].settings
    assert (cpu.width, cpu.epochs, cpu.data.n_train) == ((100, 1000, 4000), 500, 500)
    assert paper.data.n_train == 500


def test_cpu_features_and_transfer_use_the_readmes_mnist_sizes() -> None:
    """The README's MNIST ``features`` command (--n-train 1000 --n-test 1000) and its ``transfer``
    table ("5000 training / 1000 held-out test images of the official test set"), which TK's cpu
    recipes repeat."""
    steps = steps_at("cpu")
    for name, sizes in (("mnist-features", (1000, 1000)), ("mnist-transfer-ntk", (5000, 1000))):
        data = steps[name].settings.data
        assert (data.data, data.from_test_split, data.n_train, data.n_test) == ("mnist", True, *sizes), name


def test_paper_scale_cifar_runs_track_and_evaluate_as_rat() -> None:
    """README: at paper scale 500-point kernels, robust accuracy per epoch by RAT's PGD-20 "on 1,000
    class-balanced test points"; its RAT command: --track-kernel 500 --eval-n 1000. Every CIFAR-10
    training run of the plan, RAT's BatchNorm ResNet-18 among them."""
    steps = steps_at("paper")
    runs = [name for name, step in steps.items() if step.study == "train" and name.startswith("cifar-")]
    assert "cifar-pgd-resnet18-bn" in runs and "cifar-standard" in runs
    for name in runs:
        settings = steps[name].settings
        assert (settings.track_kernel, settings.eval_n, settings.eval_pgd_steps) == (500, 1000, 20), name


def test_cpu_mnist_runs_take_trains_documented_defaults() -> None:
    """``_shared``'s table sets the MNIST CNN's epochs, lr and decay at cpu scale; the rest is
    ``train``'s defaults as the README lists them: "momentum 0.9, batch 128, no weight decay"."""
    steps = steps_at("cpu")
    for mode in ("standard", "fgsm", "fgsm-noise", "pgd", "te"):
        settings = steps[f"mnist-{mode}"].settings
        assert (settings.batch_size, settings.momentum, settings.weight_decay) == (128, 0.9, 0.0), mode


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_a_runs_checkpoint_is_the_file_train_writes(scale: str) -> None:
    """``_shared.checkpoint`` against ``RunFolder.checkpoint``, the name ``train`` saves an epoch
    under: by default the last epoch, which the trained nets that steps attack are."""
    from ntkrobust.bridge.runfolder import RunFolder
    from ntkrobust.reproduce._shared import checkpoint

    ctx = Context(scale, None if scale == "smoke" else DATA, Path("/nonexistent/steps"))
    steps = steps_at(scale)
    for name, step in steps.items():
        if step.study == "train":
            folder = RunFolder(ctx.step_dir(name))
            assert checkpoint(ctx, step) == folder.checkpoint(step.settings.epochs), name
            assert checkpoint(ctx, step, 1) == folder.checkpoint(1), name
    family = "cifar" if scale == "paper" else "mnist"
    # the trained nets: TK's transfer targets (sec. 3: "trained nets") and LOO table 2's nets
    nets = [Path(net) for net in steps[f"{family}-evaluate-centered-at"].settings.nets]
    nets += [Path(target) for target in steps["mnist-transfer-ntk"].settings.target]
    assert [net.parent.parent.name for net in nets[-2:]] == ["mnist-standard", "mnist-pgd"]
    assert [
        RunFolder(net.parent.parent).checkpoint(steps[net.parent.parent.name].settings.epochs) for net in nets
    ] == nets


def test_the_data_files_named_in_a_refusal_are_the_readmes() -> None:
    """README's scale table: cpu reads ``mnist/t10k-*-ubyte.gz`` (images and labels, section "Real
    data") and ``cifar10/cifar10_subset.npz``; paper ``mnist/`` (train and test) and
    ``cifar10/cifar-10-batches-py/``."""
    from ntkrobust.reproduce._shared import DATA_FILES

    assert "mnist/t10k-images-idx3-ubyte.gz" in DATA_FILES[("mnist", "cpu")]
    assert "mnist/t10k-labels-idx1-ubyte.gz" in DATA_FILES[("mnist", "cpu")]
    assert DATA_FILES[("cifar10", "cpu")] == "cifar10/cifar10_subset.npz"
    assert all(part in DATA_FILES[("mnist", "paper")] for part in ("train", "t10k", "images", "labels"))
    assert DATA_FILES[("cifar10", "paper")] == "cifar10/cifar-10-batches-py/"


def test_list_estimates_are_those_the_readme_quotes() -> None:
    """README's scale table: ``--list`` says 1.9 min at smoke scale, 55 min at cpu scale, and
    "about 52 GPU-hours for ``all``" at paper scale (rounded as the README rounds them)."""
    from ntkrobust.reproduce.run import estimated_minutes

    recipes = all_recipes()
    assert round(estimated_minutes(recipes, "smoke"), 1) == 1.9
    assert round(estimated_minutes(recipes, "cpu")) == 55
    assert round(estimated_minutes(recipes, "paper") / 60) == 52


def test_kernel_distance_reads_the_c_ntks_distance_not_the_ae_ntks(tmp_path) -> None:
    """A real ``baseline_distance`` row holds the C-NTK's distances ("clean") and the AE-NTK's
    ("adversarial"). The C-NTK's stay at 0.1 through the lazy phase (epochs 1-4) and grow 0.4
    after the decay (agrees); the AE-NTK's do the opposite (would contradict)."""
    records = methods(distance=same([0.0, 0.1, 0.1, 0.1, 0.1, 0.5]))
    for row in records["mnist-dynamics-methods"]["baseline_distance"]["runs"]:
        row["adversarial"] = [0.0, 0.9, 0.7, 0.5, 0.3, 0.3]
    verdict = judge(tmp_path, "rat-fig5-kernel-distance", records)
    assert verdict.verdict == "agrees", verdict.measured
    assert verdict.numbers["growth_after_decay_per_epoch"]["standard"] == pytest.approx(0.4)


def test_overfitting_chance_is_that_of_the_runs_classes(tmp_path) -> None:
    """Two classes: chance is 0.5, so FGSM-AT ending at clean accuracy 0.7 is below 1.5 × chance
    (0.75), a failed run (inconclusive); at 0.8 the collapse is judged (agrees)."""
    for clean, expected in ((0.7, "inconclusive"), (0.8, "agrees")):
        records = overfitting((0.9, 0.9, clean))
        for record in records.values():
            record["dataset"]["classes"] = [0, 1]
        assert judge(tmp_path / str(clean), "rat-fig10-catastrophic-overfitting", records).verdict == expected


def test_loo_speed_reads_the_velocities_of_loos_100_epochs_exactly(tmp_path) -> None:
    """At paper scale (200 epochs) the velocity over epoch 101 (midpoint 100.5) is not LOO's. The
    second half of the first 100 velocities (midpoints 50.5-99.5) holds 25 of 1 and 25 of 5:
    median 3, and the first velocity, 10, exceeds 3 × 3 (agrees); with the 101st (5) the median
    would be 5 (contradicts)."""
    velocity = [10.0] + [1.0] * 49 + [1.0, 5.0] * 25 + [5.0] * 100
    runs = [{"mode": mode, "dynamics": {"clean": {"velocity": velocity,
                                                   "velocity_epochs": [e + 0.5 for e in range(200)]}}}
            for mode in ("standard", "pgd")]  # fmt: skip
    verdict = judge(tmp_path, "loo-fig1-kernel-speed", {"cifar-dynamics-standard-pgd": {"runs": runs}}, scale="paper")
    assert verdict.verdict == "agrees" and verdict.numbers["standard"]["late_median"] == 3.0, verdict.measured


def test_overfitting_failed_run_is_fgsm_ats_own(tmp_path) -> None:
    """ "inconclusive if FGSM-AT's clean accuracy ends below 1.5× chance": FGSM-AT at 0.1 with
    FGSM-noise at 0.6 is a failed run (inconclusive); FGSM-AT at 0.6 with FGSM-noise at 0.1 is
    judged (FGSM-noise's PGD 0.38 ≥ 0.2 and above 0.05: agrees)."""
    failed = overfitting((0.6, 0.6, 0.1), noise_clean=(0.6, 0.6, 0.6))
    assert judge(tmp_path / "a", "rat-fig10-catastrophic-overfitting", failed).verdict == "inconclusive"
    judged = overfitting((0.6, 0.6, 0.6), noise_clean=(0.6, 0.6, 0.1))
    assert judge(tmp_path / "b", "rat-fig10-catastrophic-overfitting", judged).verdict == "agrees"


def test_overfitting_measures_fgsm_noise_against_its_own_peak(tmp_path) -> None:
    """FGSM-noise peaks at 0.9 and ends at 0.3: below half its own peak (0.45), though above half
    FGSM-AT's (0.2) and above FGSM-AT's final 0.05: not prevented, contradicts."""
    records = overfitting((0.6, 0.6, 0.6), noise=(0.3, 0.9, 0.3))
    assert judge(tmp_path, "rat-fig10-catastrophic-overfitting", records).verdict == "contradicts"


def test_overfitting_reports_the_peak_of_the_whole_curve(tmp_path) -> None:
    """FGSM-AT's PGD accuracy rises to its last epoch (0.1, 0.2, 0.3): no collapse (inconclusive),
    and the peak reported is 0.3, the last epoch's."""
    verdict = judge(tmp_path, "rat-fig10-catastrophic-overfitting", overfitting((0.6, 0.6, 0.6), fgsm=(0.1, 0.2, 0.3)))
    assert verdict.verdict == "inconclusive"
    assert (verdict.numbers["fgsm_peak"], verdict.numbers["fgsm_final"]) == (0.3, 0.3)


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_stage_2_runs_train_at_a_constant_lr(scale: str) -> None:
    """LOO's stage 2 (spawned linearized / centered nets, and centered AT on a frozen kernel)
    trains at one lr: README "6 epochs at lr 0.01" (cpu), "100 epochs at LOO's lr 0.01" (paper).
    The parent's decay (after epoch 7 of 10; at 100 and 150 of 200) would fall at or after stage
    2's last epoch, where ``train`` warns and the report marks the finding "(steps warned)"."""
    stage2 = {name: step for name, step in steps_at(scale).items() if step.study == "train"
              and step.settings.linearize_from is not None}  # fmt: skip
    assert any("-centered-on-" in name for name in stage2) and any("-linearized-" in name for name in stage2)
    for name, step in stage2.items():
        assert step.settings.milestones == (), name


def test_loo_speed_compares_the_first_epochs_velocity(tmp_path) -> None:
    """LOO fig. 1a: the kernel moves fast "in the first epochs" — the rule takes the first epoch's
    velocity. Velocities (2, 9, 1, 1): the second half's median is 1, and 2 does not exceed 3 × 1
    (contradicts), though the fastest epoch, 9, would."""
    runs = [{"mode": mode, "dynamics": {"clean": {"velocity": [2.0, 9.0, 1.0, 1.0],
                                                   "velocity_epochs": [0.5, 1.5, 2.5, 3.5]}}}
            for mode in ("standard", "pgd")]  # fmt: skip
    verdict = judge(tmp_path, "loo-fig1-kernel-speed", {"mnist-dynamics-standard-pgd": {"runs": runs}})
    assert verdict.verdict == "contradicts" and verdict.numbers["standard"]["ratio"] == 2.0, verdict.measured


def test_loo_rank_reads_the_final_kernel(tmp_path) -> None:
    """At epoch 0 PGD-AT's kernel has the higher effective rank and the lower specialization (would
    agree); at the final epoch the reverse (contradicts)."""

    def run(mode: str, first: tuple[float, float], last: tuple[float, float]) -> dict[str, Any]:
        kernels = [{"epoch": float(e), "clean": {"effective_rank": r, "mean_specialization": s}}
                   for e, (r, s) in enumerate((first, last))]  # fmt: skip
        return {"mode": mode, "kernels": kernels}

    runs = [run("standard", (5.0, 1.5), (9.0, 1.2)), run("pgd", (9.0, 1.2), (5.0, 1.5))]
    verdict = judge(tmp_path, "loo-fig1-rank-specialization", {"mnist-dynamics-standard-pgd": {"runs": runs}})
    assert verdict.verdict == "contradicts", verdict.measured
    assert verdict.numbers["effective_rank"] == {"standard": 9.0, "pgd": 5.0}


def test_batchnorm_reads_the_test_split_not_the_training_split(tmp_path) -> None:
    """A history's accuracies hold both splits (``bridge.experiment``): on the test split running
    statistics keep 0.2 more PGD accuracy (agrees); on the training split batch statistics do."""
    records = batchnorm(((0.8, 0.4), (0.8, 0.2)))
    accuracy = records["cifar-pgd-resnet18-bn"]["epochs"][-1]["accuracy"]
    accuracy["running"] |= {"train_clean": 0.9, "train_pgd": 0.1}
    accuracy["batch"] |= {"train_clean": 0.9, "train_pgd": 0.5}
    assert judge(tmp_path, "rat-fig2-batchnorm", records).verdict == "agrees"


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_kernel_machines_share_the_reproductions_gram_cache(scale: str) -> None:
    """``_shared.machine``: "Kernel machines with a Gram cache inside the reproduction (shared by
    its steps)": every step with a machine caches in STEPS/gram-cache."""
    steps = steps_at(scale)
    machines = {name: step.settings.machine for name, step in steps.items() if hasattr(step.settings, "machine")}
    assert {"mnist-features", "mnist-transfer-ntk"} <= set(machines)
    for name, settings in machines.items():
        assert (settings.cache_dir, settings.cache) == (Path("/nonexistent/steps/gram-cache"), True), name


def test_the_numbers_of_findings_json_are_those_compared(tmp_path) -> None:
    """``Verdict.numbers`` (findings.json: "the numbers the rule used") under their own names:
    TK fig. 2's ρ and robustness means, TK fig. 4's widest net (width 1000, not 100) and its
    accuracies, RAT fig. 2's clean and PGD accuracies by statistics. Every number differs."""
    table = {"spearman_index_robustness": -0.4, "mean_robustness_top10": 0.3, "mean_robustness_rest": 0.1}
    records = {"mnist-features": {"architectures": {"fc2": table}, "config": {"data": "digits", "n_features": 20,
                                                                             "eps": 0.3}}}  # fmt: skip
    assert dict(judge(tmp_path / "a", "tk-fig2-features", records).numbers) == {
        "spearman_index_robustness": -0.4, "mean_robustness_top10": 0.3, "mean_robustness_rest": 0.1}  # fmt: skip
    records = two_layer(ntk=0.2, random=0.8, narrow_cosine=0.25, wide_cosine=0.75)
    records["mnist-two-layer"]["nets"][0] |= {"ntk_attack_accuracy": 0.6, "random_accuracy": 0.7, "clean_accuracy": 0.8}
    assert dict(judge(tmp_path / "b", "tk-fig4-two-layer", records).numbers) == {
        "gradient_cosine": {100: 0.25, 1000: 0.75}, "widest": 1000, "ntk_attack_accuracy": 0.2,
        "random_accuracy": 0.8, "clean_accuracy": 0.9}  # fmt: skip
    numbers = judge(tmp_path / "c", "rat-fig2-batchnorm", batchnorm(((0.81, 0.42), (0.79, 0.21)))).numbers
    assert dict(numbers) == {"clean": {"running": 0.81, "batch": 0.79}, "pgd": {"running": 0.42, "batch": 0.21}}
