"""The settings of every step of ``reproduce all`` at each scale, against what the recipes'
documentation says (``reproduce._shared``'s table and comments) and the papers' stated values,
quoted beside each assertion (TK supp. C-E, LOO sec. 2-7, RAT sec. 3.1-6). The plan is built
under stand-in folders; nothing runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ntkrobust.reproduce import all_recipes, select
from ntkrobust.reproduce._recipe import Context, Step
from ntkrobust.reproduce.run import plan

DATA, OUT = Path("/nonexistent/data"), Path("/nonexistent/out/steps")


def steps_at(scale: str, target: str = "all") -> dict[str, Step]:
    ctx = Context(scale, None if scale == "smoke" else DATA, OUT)
    recipes = all_recipes() if target == "all" else select(target)
    return plan(recipes, ctx)[0]


def settings_of(steps: dict[str, Step], name: str, *fields: str) -> tuple[Any, ...]:
    return tuple(getattr(steps[name].settings, f) for f in fields)


# ---------------------------------------------------------------- the scales' data and schedules


def test_cpu_scale_follows_the_documented_table() -> None:
    """``_shared``: MNIST from the official test set at cpu scale (cut 5,000 / 5,000), the MNIST
    CNN for 10 epochs at lr 0.05 decayed after epoch 7; PGD-AT at ε 0.3 with 10 steps of 0.075
    and a 3-epoch warm-up; TE's weight a tenth of Dong et al.'s 300; the CIFAR CNN 15 epochs at lr
    0.01 with crop-flip and weight decay 5e-4 on the subset (200 evaluation points, 50 kernel
    points); the ResNet-18 of RAT's BatchNorm finding at width 8, lr 0.05."""
    steps = steps_at("cpu")
    standard = steps["mnist-standard"].settings
    data = standard.data
    assert (data.data, data.data_root, data.from_test_split) == ("mnist", DATA / "mnist", True)
    assert standard.data.n_train is None and standard.data.n_test is None  # the split's own 5,000 / 5,000
    assert settings_of(steps, "mnist-standard", "model", "epochs", "lr", "milestones", "momentum") == (
        "mnist-cnn", 10, 0.05, (7,), 0.9)  # fmt: skip
    assert settings_of(steps, "mnist-standard", "track_kernel", "eval_n", "augment") == (200, 500, "none")
    for mode in ("pgd", "te"):
        assert settings_of(steps, f"mnist-{mode}", "pgd_steps", "pgd_step", "eps_warmup") == (10, 0.075, 3)
    assert steps["mnist-te"].settings.te_weight == 30.0
    assert steps["mnist-standard"].settings.te_weight == 300.0  # unread there; the study's default
    for mode in ("standard", "fgsm", "fgsm-noise"):
        assert settings_of(steps, f"mnist-{mode}", "pgd_steps", "pgd_step", "eps_warmup") == (None, None, 0)
    for mode in ("fgsm", "fgsm-noise"):
        cifar = steps[f"cifar-{mode}"].settings
        assert cifar.data.data == str(DATA / "cifar10" / "cifar10_subset.npz")
        assert (cifar.model, cifar.epochs, cifar.lr, cifar.milestones, cifar.weight_decay, cifar.augment) == (
            "cifar-cnn", 15, 0.01, (), 5e-4, "crop-flip")  # fmt: skip
        assert (cifar.eval_n, cifar.track_kernel) == (200, 50)
    bn = steps["cifar-pgd-resnet18-bn"].settings
    assert (bn.model, bn.width, bn.lr, bn.epochs, bn.milestones, bn.batchnorm, bn.track_kernel, bn.eval_n) == (
        "resnet18", 8, 0.05, 6, (), "both", 50, 200)  # fmt: skip


def test_smoke_scale_runs_on_digits_in_seconds() -> None:
    steps = steps_at("smoke")
    run = steps["mnist-pgd"].settings
    assert (run.data.data, run.data.n_train, run.data.n_test) == ("digits", 600, 150)
    assert (run.epochs, run.milestones, run.lr, run.batch_size, run.width, run.eps) == (5, (4,), 0.1, 32, 16, 0.1)
    assert (run.pgd_steps, run.pgd_step, run.eval_pgd_steps, run.full_eval_steps) == (3, 0.04, 3, 5)
    assert steps["mnist-evaluate"].settings.data.n_test == 30


def test_the_kernel_dynamics_run_on_the_mnist_cnn_below_paper_scale_shared_with_tk() -> None:
    """``_shared``: at cpu scale LOO's and RAT's kernel-dynamics findings use the MNIST CNN runs
    that TK's recipes train too (one run per mode, shared by name); at paper scale ResNet-18 on
    CIFAR-10, as LOO and RAT train it."""
    for scale, family in (("smoke", "mnist"), ("cpu", "mnist"), ("paper", "cifar")):
        tk = set(steps_at(scale, "tk"))
        loo, rat = steps_at(scale, "loo-fig1-kernel-speed"), steps_at(scale, "rat-fig1-threefold")
        assert f"{family}-standard" in loo and f"{family}-pgd" in loo and f"{family}-te" in rat
        assert ({"mnist-standard", "mnist-pgd"} <= set(loo)) == (family == "mnist")
        assert ({"mnist-standard", "mnist-pgd"} <= set(loo) & tk) == (family == "mnist")
        model = loo[f"{family}-standard"].settings.model
        assert model == ("resnet18" if scale == "paper" else "mnist-cnn")


def test_evaluation_and_ntk_points_per_scale() -> None:
    """``evaluation_data``: 30 digits / 200 / 1,000 class-balanced test points; ``ntk_points``:
    every training point below paper scale, 10,000 at paper scale."""
    for scale, n in (("smoke", 30), ("cpu", 200), ("paper", 1000)):
        steps = steps_at(scale)
        family = "cifar" if scale == "paper" else "mnist"
        for name in (f"{family}-evaluate", f"{family}-evaluate-centered-at"):
            assert steps[name].settings.data.n_test == n, (scale, name)
        for name in (f"{family}-transfer-matrix", f"{family}-transfer-epochs"):
            assert steps[name].settings.kernel_n == (10000 if scale == "paper" else None), (scale, name)


def test_a_linearized_run_takes_its_network_from_the_checkpoint() -> None:
    for scale in ("smoke", "cpu", "paper"):
        family = "cifar" if scale == "paper" else "mnist"
        for name, step in steps_at(scale).items():
            settings = step.settings
            if step.study == "train" and settings.linearize_from is not None:
                assert (settings.model, settings.width) == (None, None), (scale, name)
                assert name.startswith(f"{family}-")


# ---------------------------------------------------------------- against the papers


def test_tk_paper_scale_follows_tk() -> None:
    """TK supp. E: the MNIST CNN on MNIST's 60,000 training images, 200 epochs. Supp. D.3: FGSM
    of ε = 0.3 on MNIST, kernels on 10K training images, the first 100 features (fig. 2), PGD-10
    for the robust-only kernels (supp. fig. 4). Supp. C: widths 10³ and 10⁴ among the two-layer
    nets, lr 10⁻² (the study's default)."""
    steps = steps_at("paper")
    mnist = steps["mnist-standard"].settings
    assert (mnist.data.data, mnist.data.from_test_split, mnist.data.n_train, mnist.epochs) == ("mnist", False, 60000,
                                                                                               200)  # fmt: skip
    features = steps["mnist-features"].settings
    assert (features.data.n_train, features.n_features, features.threat.eps, features.robust_steps) == (
        10000, 100, 0.3, 10)  # fmt: skip
    assert features.arch == ("fc2",) and features.robust_r[-1] == features.n_features
    two_layer = steps["mnist-two-layer"].settings
    assert {1000, 10000} <= set(two_layer.width) and two_layer.lr == 1e-2
    assert (two_layer.width, two_layer.epochs) == ((100, 1000, 10000, 100000), 10000)  # TK: 10⁵ epochs (see report)
    transfer = steps["mnist-transfer-ntk"].settings
    assert transfer.kernel_arch == ("fc2",) and transfer.method == "fgsm" and transfer.data.n_train == 20000
    assert [Path(t).parent.parent.name for t in transfer.target] == ["mnist-standard", "mnist-pgd"]
    for scale in ("smoke", "cpu"):
        features = steps_at(scale)["mnist-features"].settings
        assert features.threat.eps == 0.3 and features.arch == ("fc2",)


def test_loo_paper_scale_follows_loo() -> None:
    """LOO sec. 2: spawn epochs within 0 ≤ t ≤ 100, stage 2 for 100 epochs (lr 0.01, their
    code's second_lr); sec. 7: centered AT on the kernels of epoch 100 of the standard and the
    PGD-AT nets; sec. 5: the target f_stan,t=100, sources before it."""
    from ntkrobust.reproduce import loo

    assert (loo.LOO_EPOCHS, loo.STAGE2_LR) == (100, 0.01)
    steps = steps_at("paper")
    spawns = [name for name in steps if name.startswith("cifar-standard-") and name.split("-")[2] in ("linearized",
              "centered")]  # fmt: skip
    assert sorted(int(name.rsplit("-", 1)[1]) for name in spawns) == [1, 1, 10, 10, 50, 50, 100, 100]
    for name in spawns:
        spawn = steps[name].settings
        epoch = int(name.rsplit("-", 1)[1])
        assert spawn.linearize_from == OUT / "cifar-standard" / "checkpoints" / f"epoch_{epoch:03d}.pt"
        assert (spawn.epochs, spawn.lr, spawn.milestones, spawn.mode) == (100, 0.01, (), "standard")
        assert spawn.centered == ("centered" in name)
    for parent in ("standard", "pgd"):
        at = steps[f"cifar-pgd-centered-on-{parent}-100"].settings
        assert (at.mode, at.centered, at.epochs, at.lr, at.eps_warmup) == ("pgd", True, 100, 0.01, 0)
    nets = [Path(n).parent.parent.name for n in steps["cifar-evaluate-centered-at"].settings.nets]
    assert nets == ["cifar-pgd-centered-on-standard-100", "cifar-pgd", "cifar-pgd-centered-on-pgd-100"]
    transfer = steps["cifar-transfer-epochs"].settings
    epochs = [int(s[-6:-3]) for s in transfer.source if "/cifar-standard/" in s]
    assert epochs == [0, 1, 5, 15, 50] and max(epochs) < 100
    assert transfer.method == "pgd" and transfer.threat.steps == 10
    cpu = steps_at("cpu")
    assert settings_of(cpu, "mnist-pgd-centered-on-standard-10", "epochs", "eps_warmup", "lr") == (6, 2, 0.01)
    assert [int(s[-6:-3]) for s in cpu["mnist-transfer-epochs"].settings.source if "/mnist-standard/" in s] == [
        0, 1, 2, 4, 7]  # fmt: skip


def test_rat_paper_scale_follows_rat() -> None:
    """RAT sec. 3.1: ResNet-18, 200 epochs, lr 0.1 decayed at 100 and 150, weight decay 5e-4,
    batch 128, crop-flip, kernels on 500 points; fig. 5 takes TE's kernel as the baseline; sec. 4
    evaluates BatchNorm with and without running statistics; sec. 5 switches to PGD-AT after
    epoch 100 ("PGD-AT 100"), a clean epoch 25 s against an adversarial 90 s; sec. 6 compares
    FGSM-AT with its noisy variant on CIFAR-10."""
    from ntkrobust.reproduce import rat

    assert rat.RAT_CLEAN_EPOCH_PRICE == 25 / 90 and rat.METHODS == ("standard", "fgsm", "pgd", "te")
    steps = steps_at("paper")
    dynamics = steps["cifar-dynamics-methods"]
    assert dynamics.needs == ("cifar-standard", "cifar-fgsm", "cifar-pgd", "cifar-te")
    assert dynamics.settings.baseline == OUT / "cifar-te" and dynamics.settings.ksm_epochs == (0, 200)
    bn = steps["cifar-pgd-resnet18-bn"].settings
    assert (bn.model, bn.width, bn.batchnorm, bn.epochs, bn.milestones, bn.lr) == ("resnet18", 64, "both", 200,
                                                                                  (100, 150), 0.1)  # fmt: skip
    assert steps["cifar-dynamics-batchnorm"].settings.ksm_epochs == (0, 200)
    switched = steps["cifar-pgd-switch100"].settings
    assert (switched.mode, switched.switch_epoch, switched.epochs) == ("pgd", 100, 200)
    assert steps["cifar-dynamics-switch"].needs == ("cifar-pgd", "cifar-pgd-switch100")
    assert steps["cifar-dynamics-fgsm"].needs == ("cifar-fgsm", "cifar-fgsm-noise")
    for scale, at in (("smoke", 1), ("cpu", 4)):
        assert steps_at(scale)["mnist-pgd-switch" + str(at)].settings.switch_epoch == at


def test_beyond_measures_every_mode() -> None:
    """AutoAttack against PGD-20 for the three adversarially trained nets; the transfer matrix by
    PGD between all five trained nets."""
    for scale in ("smoke", "cpu", "paper"):
        family = "cifar" if scale == "paper" else "mnist"
        steps = steps_at(scale)
        nets = [Path(n).parent.parent.name for n in steps[f"{family}-evaluate"].settings.nets]
        assert nets == [f"{family}-{m}" for m in ("fgsm", "pgd", "te")]
        matrix = steps[f"{family}-transfer-matrix"].settings
        assert [Path(t).parent.parent.name for t in matrix.target] == [
            f"{family}-{m}" for m in ("standard", "fgsm", "fgsm-noise", "pgd", "te")]  # fmt: skip
        assert matrix.method == "pgd" and matrix.kernel_arch == ("fc2",)


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_every_checkpoint_a_step_reads_is_one_its_run_writes(scale: str) -> None:
    """A checkpoint path names an epoch that its run trains (the last by default)."""
    steps = steps_at(scale)
    for name, step in steps.items():
        settings = step.settings
        if step.study == "train":
            paths = [settings.linearize_from]
        elif step.study == "transfer":
            paths = [*settings.target, *settings.source]
        elif step.study == "evaluate":
            paths = list(settings.nets)
        else:
            continue
        for path in (Path(p) for p in paths if p is not None):
            run = steps[path.parent.parent.name]
            assert path.parent.name == "checkpoints" and 0 <= int(path.stem.split("_")[1]) <= run.settings.epochs
            assert run.name in step.needs, (name, run.name)


def test_cpu_estimates_follow_the_measured_run_times() -> None:
    """``_shared._MINUTES``' comment: on 2 nearly idle cores the MNIST CNN's standard run took 0.85
    min, FGSM-AT 1.06, PGD-AT 2.34, TE 2.52, the CIFAR CNN's FGSM runs 5.1-5.4. Each estimate is at
    or up to 25% above its measurement; and each paper's findings take 5 to 26 minutes at cpu
    scale (the package's docstring)."""
    from ntkrobust.reproduce.run import estimated_minutes

    steps = steps_at("cpu")
    measured = {"mnist-standard": 0.85, "mnist-fgsm": 1.06, "mnist-pgd": 2.34, "mnist-te": 2.52,
                "cifar-fgsm": 5.1, "cifar-fgsm-noise": 5.1}  # fmt: skip
    for name, minutes in measured.items():
        assert minutes <= steps[name].minutes <= 1.25 * max(minutes, 5.4 if name.startswith("cifar") else 0), name
    for paper in ("tk", "loo", "rat"):
        assert 5 <= estimated_minutes(select(paper), "cpu") <= 26, paper
