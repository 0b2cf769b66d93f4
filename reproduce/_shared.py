"""The data and the runs that several papers' recipes share, at each scale.

=========  =============================================  ========================================
scale      data                                           nets and schedules
=========  =============================================  ========================================
smoke      scikit-learn's digits (offline, 8x8)           a few epochs, small probes: seconds
cpu        DATA/mnist (the official test set, cut into    the MNIST CNN, 10 epochs, lr 0.05 decayed
           5,000 train / 5,000 test) and                  ×0.1 after epoch 7; the CIFAR CNN and a
           DATA/cifar10/cifar10_subset.npz                narrow ResNet-18 on the subset
paper      DATA/mnist (train and test), DATA/cifar10      the papers': ResNet-18 on CIFAR-10 for
           (torchvision's cifar-10-batches-py)            200 epochs (RAT), the MNIST CNN on MNIST
                                                          for 200 epochs as TK supp. E trains it
=========  =============================================  ========================================

At ``cpu`` scale the kernel-dynamics findings of LOO and RAT are measured on the MNIST CNN runs
that TK's recipes train too (one run per training mode, shared by name); at ``paper`` scale they
use ResNet-18 on CIFAR-10 as the papers do.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ntkrobust.reproduce._recipe import Context, Results, Step
from ntkrobust.studies import DataSettings, MachineSettings

#: the files each data set needs at each scale, relative to --data-root (for the error message)
DATA_FILES = {
    ("mnist", "cpu"): "mnist/t10k-images-idx3-ubyte.gz and mnist/t10k-labels-idx1-ubyte.gz",
    ("cifar10", "cpu"): "cifar10/cifar10_subset.npz",
    ("mnist", "paper"): "mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    ("cifar10", "paper"): "cifar10/cifar-10-batches-py/",
}


def mnist_data(ctx: Context, *, n_train: int | None = None, n_test: int | None = None) -> DataSettings:
    """MNIST at the scale (digits at smoke scale), optionally a class-balanced subset."""
    if ctx.scale == "smoke":
        return DataSettings("digits", n_train=min(n_train or 600, 600), n_test=min(n_test or 150, 150))
    root = _root(ctx) / "mnist"
    return DataSettings("mnist", data_root=root, from_test_split=ctx.scale == "cpu", n_train=n_train, n_test=n_test)


def cifar_data(ctx: Context, *, classes: tuple[str, ...] | None = None) -> DataSettings:
    """CIFAR-10 at the scale: the 4,660-image subset at cpu scale (digits at smoke scale)."""
    if ctx.scale == "smoke":
        return DataSettings("digits", n_train=600, n_test=150, classes=None if classes is None else (0, 1))
    if ctx.scale == "cpu":
        return DataSettings(str(_root(ctx) / "cifar10" / "cifar10_subset.npz"), classes=classes)
    return DataSettings("cifar10", data_root=_root(ctx) / "cifar10", classes=classes)


def evaluation_data(ctx: Context, run: Step) -> DataSettings:
    """The test points ``evaluate`` attacks the nets of a run's family with (AutoAttack's cost
    grows with them): 30 digits at smoke scale, 200 / 1,000 class-balanced points of the run's
    data at cpu / paper scale."""
    if ctx.scale == "smoke":
        return mnist_data(ctx, n_test=30)
    return dataclasses.replace(run.settings.data, n_test={"cpu": 200, "paper": 1000}[ctx.scale])


def ntk_points(ctx: Context) -> int | None:
    """Training points of the analytic NTK machine whose examples a transfer step sets beside the
    nets': all of them below paper scale; 10,000 of CIFAR-10's 50,000 at paper scale, where all
    would make a 20 GB Gram matrix."""
    return 10000 if ctx.scale == "paper" else None


def machine(ctx: Context) -> MachineSettings:
    """Kernel machines with a Gram cache inside the reproduction (shared by its steps)."""
    return MachineSettings(cache_dir=ctx.steps_dir / "gram-cache")


def _root(ctx: Context) -> Path:
    if ctx.data_root is None:
        raise ValueError(f"scale {ctx.scale} needs a data root")  # checked by the runner before
    return ctx.data_root


#: schedules of the shared training runs (ε and steps: the standard ones of the images unless said)
_SCHEDULES: dict[str, dict[str, Any]] = {
    "smoke": {"epochs": 5, "milestones": (4,), "lr": 0.1, "batch_size": 32, "track_kernel": 40, "eval_n": 60,
              "eval_pgd_steps": 3, "full_eval_steps": 5, "width": 16, "eps": 0.1},
    "cpu": {"epochs": 10, "milestones": (7,), "lr": 0.05, "track_kernel": 200, "eval_n": 500},
    # RAT sec. 3.1: "For robustness evaluation, we choose PGD-20 to generate AEs on the test set"
    "paper": {"epochs": 200, "milestones": (100, 150), "lr": 0.1, "weight_decay": 5e-4, "track_kernel": 500,
              "eval_n": 1000, "eval_pgd_steps": 20, "augment": "crop-flip"},
}  # fmt: skip
#: minutes per run (2 cores at smoke / cpu scale; one GPU at paper scale: RAT's 5 GPU-hours per AT run,
#: an RTX 3090's). On an H200 (2026-12-04, ``benchmarks/paper_scale.py``, extrapolated from 2 epochs of
#: the CIFAR-10 subset) a PGD-AT run with its 500-point kernels and evaluations took 140 minutes, a
#: standard one 31: about half these.
#: cpu: from a run of `reproduce all --scale cpu` on 2 nearly idle cores (2026-12-03, 34 min of steps; the
#: MNIST CNN's standard run 0.85 min, FGSM-AT 1.06, PGD-AT 2.34, TE 2.52; the CIFAR CNN's FGSM runs 5.1-5.4)
_MINUTES: dict[str, float | dict[str, float]] = {
    "smoke": 0.05,
    "cpu": {"standard": 1.0, "fgsm": 1.2, "fgsm-noise": 1.2, "pgd": 2.5, "te": 2.8},
    "paper": {"standard": 60.0, "fgsm": 90.0, "fgsm-noise": 90.0, "pgd": 300.0, "te": 320.0},
}


#: TK supp. E, the MNIST CNN: "a fixed learning rate of 10^-2 for all experiments and no weight
#: decay", no augmentation, "Stochastic gradient descent ... with a batch size of 300 for MNIST"
#: (no momentum is named: plain SGD), 200 epochs, and for PGD training 20 steps of α = 0.1 at
#: ε = 0.3 (the default for grey images). TK track their kernels on "the same (first) batch": 300
#: points here, class-balanced.
_TK_MNIST: dict[str, Any] = {"lr": 0.01, "milestones": (), "weight_decay": 0.0, "momentum": 0.0, "batch_size": 300,
                             "track_kernel": 300}  # fmt: skip
#: minutes per MNIST CNN run at paper scale, one GPU: RAT's ResNet-18 times scaled down, though not by
#: the whole ratio of multiply-adds per image (4.6 M against 555 M): a net this small keeps a GPU far
#: from busy. With PGD-20; an estimate, not a measurement
_MNIST_PAPER_MINUTES = {"standard": 10.0, "fgsm": 15.0, "fgsm-noise": 15.0, "pgd": 40.0, "te": 40.0}


def dynamics_family(ctx: Context) -> str:
    """The data of the kernel-dynamics runs: MNIST below paper scale, CIFAR-10 at paper scale."""
    return "cifar" if ctx.scale == "paper" else "mnist"


def run_name(family: str, mode: str, suffix: str = "") -> str:
    return f"{family}-{mode}{suffix}"


def training_run(ctx: Context, family: str, mode: str, *, suffix: str = "", **overrides: Any) -> Step:
    """The shared run of ``mode`` on ``family`` ("mnist": the MNIST CNN; "cifar": the CIFAR CNN
    below paper scale, ResNet-18 at paper scale), named ``family-mode[suffix]``."""
    from ntkrobust.bridge.training import PGD_MODES
    from ntkrobust.studies.train import TrainSettings

    name = run_name(family, mode, suffix)
    values: dict[str, Any] = dict(_SCHEDULES[ctx.scale])
    if family == "mnist":
        values["data"] = mnist_data(ctx, n_train=60000 if ctx.scale == "paper" else None)
        values["model"] = "mnist-cnn"
        values.pop("augment", None)
        if ctx.scale == "paper":  # at paper scale only TK trains the MNIST CNN: its own schedule
            values |= _TK_MNIST
            if mode in PGD_MODES:
                values |= {"pgd_steps": 20, "pgd_step": 0.1}
        if ctx.scale == "cpu" and mode in PGD_MODES:  # PGD-AT at ε 0.3 needs the warm-up
            values |= {"pgd_steps": 10, "pgd_step": 0.075, "eps_warmup": 3}
        if ctx.scale == "cpu" and mode == "te":  # Dong et al.'s weight 300 collapsed the MNIST CNN at lr 0.05
            values["te_weight"] = 30.0  # (15 epochs: clean 0.096, PGD-10 0.100); here a tenth of it
    else:
        values["data"] = cifar_data(ctx)
        values["model"] = "resnet18" if ctx.scale == "paper" else "cifar-cnn"
        if ctx.scale == "cpu":
            # lr 0.01: at 0.05 the CIFAR CNN (no BatchNorm) fell to chance in its second FGSM-AT epoch
            values |= {"augment": "crop-flip", "weight_decay": 5e-4, "epochs": 15, "milestones": (), "eval_n": 200,
                       "track_kernel": 50, "lr": 0.01}  # fmt: skip
    if ctx.scale == "smoke" and mode in PGD_MODES:
        values |= {"pgd_steps": 3, "pgd_step": 0.04}  # 3 steps that reach ε = 0.1
    values |= overrides
    if values.get("linearize_from") is not None:  # the checkpoint has its network
        values |= {"model": None, "width": None}
    minutes = _MNIST_PAPER_MINUTES if family == "mnist" and ctx.scale == "paper" else _MINUTES[ctx.scale]
    estimate = minutes if isinstance(minutes, float) else minutes.get(mode, 5.0)
    if ctx.scale == "cpu" and family == "cifar":  # 15 epochs of the CIFAR CNN with crop-flip
        estimate *= 4.5
    return Step(name, "train", TrainSettings(out=ctx.step_dir(name), mode=mode, **values), minutes=estimate)


def dynamics_step(ctx: Context, name: str, runs: list[Step], **settings: Any) -> Step:
    """``dynamics`` over the folders of ``runs`` (``baseline``: one of them, by step)."""
    from ntkrobust.studies.dynamics import DynamicsSettings

    baseline = settings.pop("baseline", None)
    if baseline is not None:
        settings["baseline"] = ctx.step_dir(baseline.name)
    folders = tuple(ctx.step_dir(run.name) for run in runs)
    return Step(
        name, "dynamics", DynamicsSettings(runs=folders, device="cpu", **settings),
        needs=tuple(run.name for run in runs), minutes={"smoke": 0.1, "cpu": 0.1, "paper": 10.0}[ctx.scale],
    )  # fmt: skip


def checkpoint(ctx: Context, run: Step, epoch: int | None = None) -> Path:
    """A checkpoint of a training run (default: its last epoch)."""
    return ctx.step_dir(run.name) / "checkpoints" / f"epoch_{run.settings.epochs if epoch is None else epoch:03d}.pt"


def runs_by_mode(results: Results, name: str) -> dict[str, dict[str, Any]]:
    """The runs of the dynamics record of step ``name`` by their training mode: checks read them
    by mode, not by the order the study was given its folders in."""
    return {run["mode"]: run for run in results.record(name)["runs"]}
