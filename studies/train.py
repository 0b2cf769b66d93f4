"""``train``: SGD training of a torch net, standard or adversarial (TK supp. E, LOO, RAT), with
the empirical NTK of a fixed probe set tracked on clean inputs (C-NTK) and on PGD examples
(AE-NTK) at initialisation and after every epoch, clean and PGD accuracies per epoch, a
checkpoint per epoch and ``resume``. With ``linearize_from``, trains the linearized (or
``centered``) network around a checkpoint (LOO sec. 2).

A training run writes its run folder (``bridge.runfolder``) as it goes, so ``run`` takes the
folder in its settings and ``TrainResult.save`` has nothing left to write.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from ntkrobust.studies._base import (
    StudyError,
    StudyResult,
    check_out_dir,
    envelope,
    flags_do,
    log,
    peak_gpu_memory,
    versions,
    warn,
)
from ntkrobust.studies._common import DataSettings, pgd_schedule, torch_device, torch_network
from ntkrobust.studies._output import OutputLock

# the choices of the command line, which must not import torch (tested equal to the bridge's)
TRAINING_MODES = ("standard", "fgsm", "pgd", "trades", "fgsm-noise", "te")  # = bridge.training.MODES
AUGMENTATIONS = ("none", "crop-flip")  # = bridge.augment.AUGMENTATIONS
INITIALISATIONS = ("default", "normal", "truncated-normal", "uniform")  # = bridge.initialisation.INITIALISATIONS


@dataclass(frozen=True)
class TrainSettings:
    out: Path
    data: DataSettings = field(default_factory=DataSettings)
    model: str | None = None  # default: mnist-cnn for 1-channel images, else cifar-cnn
    width: int | None = None
    init: str = "default"  # bridge.initialisation
    linearize_from: Path | None = None
    centered: bool = False
    centered_standard: bool = False  # f_θ − f_θt around --linearize-from (LOO table 1)
    stage2_batchnorm: str = "frozen"  # frozen | train (centered_standard only)
    mode: str = "standard"
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    batch_size: int = 128
    eps: float | None = None
    pgd_steps: int | None = None
    pgd_step: float | None = None
    trades_beta: float = 6.0  # = bridge.training.TRADES_BETA
    switch_epoch: int | None = None
    eps_warmup: int = 0
    augment: str = "none"  # bridge.augment
    augment_shared: bool = False
    te_start: int | None = None  # default: 45% of the epochs (the authors' 90 of 200)
    te_end: int | None = None  # default: 75% of the epochs (150 of 200)
    te_weight: float = 300.0  # Dong et al.'s weight after the ramp
    track_kernel: int = 300
    track_every: int | None = None
    track_full: bool = False  # full (N, N, C, C) kernels (default: their class blocks, 1/C of the cost)
    estimator: str = "exact"  # or rademacher:K: the trace kernel from K random-sign draws (bridge.entk)
    eval_n: int = 500
    eval_pgd_steps: int | None = None  # per epoch and AE-NTK (default attacks.EPOCH_PGD_STEPS)
    full_eval_steps: int | None = None  # at the end (default attacks.EVALUATION_PGD_STEPS; 0: none)
    full_eval_every: int | None = None
    batchnorm: str = "running"
    memory_budget: int | None = None  # MiB
    device: str = "auto"
    resume: bool = False
    force: bool = False
    final_eval: str = "none"  # autoattack: evaluate's PGD-20/100, CW-100 and AutoAttack after the last epoch
    seeds: tuple[int, ...] = ()  # one run per seed in out/seed_S, all on the data and probe of data.seed
    run_seed: int | None = None  # the net's initialisation, shuffles and attacks (None: data.seed)


@dataclass
class TrainResult(StudyResult):
    out: Path
    label: str

    def save(self, out: str | Path) -> Path:
        """The run folder is complete once ``run`` returns; it cannot move elsewhere."""
        if Path(out).resolve() != self.out.resolve():
            raise StudyError(f"a training run lives in its own folder {self.out}, not in {out}")
        return self.out

    def summary(self) -> str:
        history = self.record
        last = history["epochs"][-1]
        mode = history["config"]["tracking"]["batchnorm"][0]
        scores = last["accuracy"][mode]
        kernels = history["kernels"]
        growth = (
            f", C-NTK Frobenius norm x"
            f"{kernels[-1]['clean']['frobenius_norm'] / kernels[0]['clean']['frobenius_norm']:.3g}"
            if len(kernels) > 1
            else ""
        )
        eps = history["config"]["train"]["eps"]
        full = last.get("full_evaluation")
        strong = f", PGD-{full['steps']} {full['accuracy'][mode]['test_pgd']:.3f}" if full else ""
        steps = history["config"]["tracking"]["steps"]
        return (
            f"{self.label}: {last['epoch']} epochs, test clean {scores['test_clean']:.3f}, "
            f"PGD-{steps} {scores['test_pgd']:.3f}{strong} (eps {eps:.4g}){growth}"
        )


def _check_folder(settings: TrainSettings) -> None:
    from ntkrobust.bridge.runfolder import RunFolder

    if settings.resume and settings.force:
        raise StudyError("--resume continues the run in --out; --force would start it over: choose one")
    if settings.resume:
        if not RunFolder(settings.out).exists():
            raise StudyError(f"--resume: {settings.out} holds no run to continue (no config.json)")
    else:
        check_out_dir(settings.out, settings.force)
    if settings.force and not settings.resume:  # --force clears the run's files: never an input
        cleared = RunFolder(settings.out)
        inputs = {"--linearize-from": settings.linearize_from, "--data": Path(settings.data.data)}
        for flag, path in inputs.items():
            if path is not None and path.exists() and cleared.clears(path):
                raise StudyError(f"{flag} {path} lies in --out {settings.out}, which --force clears: choose another")
    if (settings.centered or settings.centered_standard) and settings.linearize_from is None:
        flag = "--centered" if settings.centered else "--centered-standard"
        raise StudyError(f"{flag} needs --linearize-from CHECKPOINT (the network it is centered on)")
    if settings.centered and settings.centered_standard:
        raise StudyError("--centered trains J(θ − θt), --centered-standard f_θ − f_θt: choose one")
    if settings.stage2_batchnorm not in ("frozen", "train"):
        raise StudyError(f"--stage2-batchnorm {settings.stage2_batchnorm!r}: choose frozen or train")
    if settings.stage2_batchnorm == "train" and not settings.centered_standard:
        raise StudyError(
            "--stage2-batchnorm train applies to --centered-standard (linearized nets keep θt's statistics)"
        )


class _Threat(NamedTuple):
    """The run's ℓ∞ attacks: training PGD, per-epoch evaluation PGD (also the AE-NTK's), full
    evaluation PGD (``full_steps`` 0: none)."""

    eps: float
    step: float
    steps: int
    eval_step: float
    eval_steps: int
    full_step: float | None
    full_steps: int


def _threat(settings: TrainSettings, channels: int) -> _Threat:
    """The standard attacks of the image type, as far as the settings leave them (``attacks.spec``)."""
    from ntkrobust.attacks import EPOCH_PGD_STEPS, evaluation_schedule, evaluation_steps, standard_threat

    eps = standard_threat(channels, "linf")[0] if settings.eps is None else settings.eps
    # eps = 0 is refused too: the per-epoch PGD accuracy and the AE-NTK need an attack
    if not (0 < eps <= 1):
        raise StudyError(f"--eps must lie in (0, 1] (pixel units), got {eps:g}")
    step, steps = pgd_schedule(channels, "linf", eps, settings.pgd_step, settings.pgd_steps, flag="--pgd-step")
    eval_step, eval_steps = evaluation_schedule(channels, eps, settings.eval_pgd_steps or EPOCH_PGD_STEPS)
    full_steps = evaluation_steps(channels, settings.full_eval_steps)
    full_step = evaluation_schedule(channels, eps, full_steps)[0] if full_steps else None
    return _Threat(eps, step, steps, eval_step, eval_steps, full_step, full_steps)


def _attack_notes(settings: TrainSettings, threat: _Threat, channels: int) -> list[str]:
    """Warnings about the training attack (budget, eps), said before training; the evaluation
    attacks take steps that reach eps by construction (``attacks.evaluation_schedule``)."""
    from ntkrobust.attacks import AttackSpec
    from ntkrobust.bridge.training import PGD_MODES

    notes: list[str] = []
    attack = AttackSpec("pgd", threat.eps, "linf", threat.step, threat.steps)
    if settings.mode in PGD_MODES:
        warn(notes, *attack.notes(channels, "training PGD: ", ("--pgd-steps", "--pgd-step")))
    else:
        warn(notes, attack.eps_hint(channels))
    return notes


def _unread_flags(settings: TrainSettings) -> list[str]:
    """Warnings for flags that the other flags leave unread. Warned, not refused: a sweep over
    modes or probes passes one schedule to every run (as ``reproduce``'s smoke schedule once did)."""
    from ntkrobust.bridge.training import PGD_MODES

    given = [flag for flag, value in (("--pgd-steps", settings.pgd_steps), ("--pgd-step", settings.pgd_step))
             if value is not None]  # fmt: skip
    unread = []
    if given and settings.mode not in PGD_MODES:
        unread.append(f"{flags_do(given, 'set')} the PGD of --mode {', '.join(PGD_MODES)}; "
                      f"--mode {settings.mode} does not read {'them' if len(given) > 1 else 'it'}")  # fmt: skip
    if settings.trades_beta != TrainSettings.trades_beta and settings.mode != "trades":
        unread.append(f"--trades-beta weighs the robust loss of --mode trades; --mode {settings.mode} does not read it")
    if settings.gamma != TrainSettings.gamma and not settings.milestones:
        unread.append("--gamma scales the learning rate at --milestones; there are none, so it is not read")
    late = [m for m in settings.milestones if m >= settings.epochs]
    too_late = [f"--milestones {','.join(map(str, late))}"] if late else []
    if settings.full_eval_every is not None and settings.full_eval_every >= settings.epochs:
        too_late.append(f"--full-eval-every {settings.full_eval_every}")
    if too_late and settings.epochs:  # --epochs 0 trains nothing: no schedule is read
        verb, pronoun = ("comes", "it") if len(too_late) == 1 else ("come", "them")
        unread.append(f"{' and '.join(too_late)} {verb} at or after the last of --epochs {settings.epochs}: only "
                      f"a --resume to more epochs reads {pronoun}")  # fmt: skip
    tracking = {"--track-every": settings.track_every is not None, "--track-full": settings.track_full,
                "--estimator": settings.estimator != TrainSettings.estimator,
                "--memory-budget": settings.memory_budget is not None}  # fmt: skip
    shaped = [flag for flag, set_ in tracking.items() if set_]
    if shaped and not settings.track_kernel:
        unread.append(f"{flags_do(shaped, 'shape')} the tracked kernels; --track-kernel 0 tracks none")
    return unread


def _check_batchnorm(settings: TrainSettings, model: Any, name: str) -> None:
    from ntkrobust.bridge.tracking import has_batchnorm

    if settings.batchnorm != "running" and not has_batchnorm(model):
        raise StudyError(f"--batchnorm {settings.batchnorm}: {name} has no BatchNorm layers")


def _check_augmentation(settings: TrainSettings, image_shape: tuple[int, ...]) -> None:
    from ntkrobust.bridge.augment import check_augmentation

    if settings.augment_shared and settings.augment == "none":
        raise StudyError("--augment-shared shares the draws of an augmentation: give --augment crop-flip")
    try:
        check_augmentation(settings.augment, image_shape)
    except ValueError as err:
        raise StudyError(f"--augment {err}") from None


def _check_last_batch(settings: TrainSettings, model: Any, data: Any) -> None:
    """A last mini-batch of one example is refused before training where a BatchNorm layer would
    normalise it over a single value per channel (torch raises there, mid-run)."""
    n = data.x_train.shape[0]
    if n % settings.batch_size != 1:
        return
    import torch

    from ntkrobust.bridge.tracking import single_value_batchnorms

    layers = single_value_batchnorms(model, torch.as_tensor(data.x_train[:2]))
    if layers:
        raise StudyError(
            f"--batch-size {settings.batch_size} leaves a last batch of one of the {n} training points, and "
            f"BatchNorm {layers[0]} would normalise it over one value per channel: choose another --batch-size"
        )


def _linearization_parent(settings: TrainSettings, data: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The parent network, config and checkpoint payload of ``linearize_from``, checked."""
    from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint
    from ntkrobust.bridge.models import ModelError, check_fits

    path = settings.linearize_from
    assert path is not None  # called only with --linearize-from
    if settings.batchnorm == "batch":
        raise StudyError("--batchnorm batch trains without running statistics; --linearize-from freezes the parent's")
    if settings.model is not None or settings.width is not None or settings.init != "default":
        raise StudyError(
            "--model / --width / --init do not apply with --linearize-from: the checkpoint has its network"
        )
    try:
        parent, config, payload = load_checkpoint(path)
        check_fits(config, data.image_shape)
    except (CheckpointError, ModelError) as err:
        raise StudyError(str(err)) from None
    if "linearization" in payload:
        raise StudyError(f"--linearize-from {path} is itself a linearized network")
    if config.num_classes != len(data.classes):
        raise StudyError(
            f"--linearize-from {path} has {config.num_classes} outputs, the data has {len(data.classes)} classes"
        )
    return parent, config, payload


def _network(settings: TrainSettings, data: Any) -> dict[str, Any]:
    """The model to train, its config, and for linearized runs what tracking needs."""
    if settings.linearize_from is None:
        default = "mnist-cnn" if data.image_shape[0] == 1 else "cifar-cnn"
        model, config = torch_network(
            data,
            model=settings.model or default,
            width=settings.width,
            checkpoint=None,
            seed=_run_seed(settings),
            init=settings.init,
            # RAT's "w/o buffer" model: no running statistics anywhere in the run
            running_stats=settings.batchnorm != "batch",
        )
        _check_batchnorm(settings, model, config.model)
        return {"model": model, "config": config, "linearization": None, "kernel_network": None, "magnitude": None}
    from ntkrobust.bridge.linearized import CenteredStandardNetwork, LinearizedNetwork, relative_magnitude

    parent, config, payload = _linearization_parent(settings, data)
    linearization = {
        "checkpoint": str(settings.linearize_from),
        "spawn_epoch": payload.get("epoch"),
        "centered": settings.centered or settings.centered_standard,
    }
    if settings.centered_standard:  # LOO table 1: the full net minus its spawn; its kernel moves
        linearization |= {"standard": True, "batchnorm": settings.stage2_batchnorm}
        model = CenteredStandardNetwork(parent, batchnorm=settings.stage2_batchnorm)
        return {
            "model": model,
            "config": config,
            "linearization": linearization,
            "kernel_network": CenteredStandardNetwork.tangent_network,
            "magnitude": None,
        }
    return {
        "model": LinearizedNetwork(parent, centered=settings.centered),
        "config": config,
        "linearization": linearization,
        "kernel_network": LinearizedNetwork.tangent_network,  # its kernel is the frozen parent's
        "magnitude": relative_magnitude,  # LOO sec. 4
    }


def _configs(settings: TrainSettings, threat: _Threat) -> tuple[Any, Any]:
    from ntkrobust.bridge.experiment import TrackingConfig
    from ntkrobust.bridge.training import TrainConfig

    try:
        train = TrainConfig(
            mode=settings.mode,
            epochs=settings.epochs,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            milestones=tuple(settings.milestones),
            gamma=settings.gamma,
            batch_size=settings.batch_size,
            eps=threat.eps,
            pgd_step=threat.step,
            pgd_steps=threat.steps,
            trades_beta=settings.trades_beta,
            switch_epoch=settings.switch_epoch,
            eps_warmup=settings.eps_warmup,
            augment=settings.augment,
            augment_shared=settings.augment_shared,
            **_te_ramp(settings),
            seed=_run_seed(settings),
        )
        tracking = TrackingConfig(
            eps=threat.eps,
            step=threat.eval_step,
            steps=threat.eval_steps,
            probe=settings.track_kernel,
            every=settings.track_every,
            eval_n=settings.eval_n,
            batchnorm=("running", "batch") if settings.batchnorm == "both" else (settings.batchnorm,),
            memory_budget=None if settings.memory_budget is None else settings.memory_budget * 2**20,
            full_step=threat.full_step,
            full_steps=threat.full_steps or None,
            full_every=settings.full_eval_every,
            selection_seed=settings.data.seed,
            track_full=settings.track_full,
            estimator=settings.estimator,
        )
    except ValueError as err:
        raise StudyError(str(err)) from None
    return train, tracking


def _te_ramp(settings: TrainSettings) -> dict[str, Any]:
    """TE's ramp epochs: as given, else the authors' 90 and 150 of 200 scaled to the epochs."""
    from ntkrobust.bridge.temporal_ensembling import TE_RAMP, TE_WEIGHT

    if settings.mode != "te":
        if settings.te_start is not None or settings.te_end is not None or settings.te_weight != TE_WEIGHT:
            raise StudyError("--te-start / --te-end / --te-weight set the regulariser of --mode te")
        return {}

    start = max(1, round(TE_RAMP[0] * settings.epochs)) if settings.te_start is None else settings.te_start
    end = round(TE_RAMP[1] * settings.epochs) if settings.te_end is None else settings.te_end
    if not 1 <= start < end <= settings.epochs:
        raise StudyError(
            f"--mode te ramps its regulariser from epoch {start} to {end}: it needs 1 <= --te-start < --te-end <= "
            f"--epochs ({settings.epochs}); give more epochs or the two epochs"
        )
    return {"te_start": start, "te_end": end, "te_weight": settings.te_weight}


def _run_seed(settings: TrainSettings) -> int:
    return settings.data.seed if settings.run_seed is None else settings.run_seed


def run(settings: TrainSettings, *, progress: bool = False, argv: list[str] | None = None) -> TrainResult | SeedsResult:
    """Train into the run folder ``settings.out`` (locked while it runs); the result's record is
    its history. With ``seeds``, one run per seed in ``out/seed_S``, one after the other."""
    from ntkrobust.bridge.runfolder import RunFolder

    if settings.seeds:
        return _run_seeds(settings, progress, argv)
    from ntkrobust.bridge import distributed

    if not distributed.is_main():  # under torchrun rank 0 checks, locks and writes the folder
        return _train(settings, progress=False, argv=argv)
    _check_folder(settings)
    with OutputLock(settings.out):
        if settings.resume:  # a kill during an atomic write leaves its hidden temporary behind
            RunFolder(settings.out).remove_temporaries()
        return _train(settings, progress, argv)


def _run_seeds(settings: TrainSettings, progress: bool, argv: list[str] | None) -> SeedsResult:
    """One run per seed in ``out/seed_S``; with ``resume``, finished runs are continued (to more
    epochs) and the seeds not reached yet are started."""
    from ntkrobust.bridge.runfolder import RunFolder

    seeds = settings.seeds
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds {','.join(map(str, seeds))} names a seed twice")
    if settings.run_seed is not None:
        raise StudyError("--seeds gives every run its own seed; run_seed is for a single run")
    if settings.resume and not RunFolder(settings.out / f"seed_{seeds[0]}").exists():
        raise StudyError(f"--resume: {settings.out} holds no seed_{seeds[0]} run to continue")
    from ntkrobust.bridge import distributed

    main = distributed.is_main()  # under torchrun rank 0 checks, locks and writes the folder
    if not settings.resume and main:
        check_out_dir(settings.out, settings.force)
    # which runs to continue, decided once from rank 0's view before it writes anything: a
    # process that looked later would see the folders rank 0 has started since
    resumes = distributed.from_main([settings.resume and RunFolder(settings.out / f"seed_{s}").exists() for s in seeds])
    results: list[TrainResult] = []
    with OutputLock(settings.out) if main else contextlib.nullcontext():
        for seed, resume in zip(seeds, resumes, strict=True):
            folder = settings.out / f"seed_{seed}"
            one = replace(settings, out=folder, seeds=(), run_seed=seed, resume=resume)
            log.info(f"seed {seed} ({len(results) + 1} of {len(seeds)}) -> {folder}")
            result = run(one, progress=progress, argv=argv)
            assert isinstance(result, TrainResult)
            results.append(result)
    return SeedsResult(_seeds_record(settings, results, argv), out=settings.out, runs=results)


_FINAL = ("test_clean", "test_pgd", "train_clean", "train_pgd")


def _final_scores(history: dict[str, Any]) -> dict[str, float]:
    """The last epoch's accuracies (BatchNorm mode of the first evaluation), with the full
    evaluation's as ``full_test_pgd`` / ``full_train_pgd`` when there is one."""
    last = history["epochs"][-1]
    mode = history["config"]["tracking"]["batchnorm"][0]
    scores = {key: float(last["accuracy"][mode][key]) for key in _FINAL}
    full = last.get("full_evaluation")
    if full:
        scores |= {f"full_{key}": float(value) for key, value in full["accuracy"][mode].items()}
    return scores


def _seeds_record(settings: TrainSettings, results: list[TrainResult], argv: list[str] | None) -> dict[str, Any]:
    import numpy as np

    finals = [_final_scores(result.record) for result in results]
    keys = [key for key in finals[0] if all(key in final for final in finals)]
    metrics = {
        "seeds": list(settings.seeds),
        "runs": [
            {"seed": seed, "folder": f"seed_{seed}", "final": final}
            for seed, final in zip(settings.seeds, finals, strict=True)
        ],
        # the spread over seeds, as LOO (n = 3) and RAT report it: mean and sample standard deviation
        "mean": {key: float(np.mean([f[key] for f in finals])) for key in keys},
        "std": {key: float(np.std([f[key] for f in finals], ddof=1)) if len(finals) > 1 else 0.0 for key in keys},
    }
    config = {"seeds": list(settings.seeds), "run": results[0].record["config"]}
    return envelope("train", metrics, config, seconds=None, argv=argv, seed=settings.data.seed)


@dataclass
class SeedsResult(StudyResult):
    out: Path
    runs: list[TrainResult]

    def save(self, out: str | Path) -> Path:
        """Every run is in place once ``run`` returns; ``seeds.json`` summarises them."""
        from ntkrobust.bridge.files import write_json

        if Path(out).resolve() != self.out.resolve():
            raise StudyError(f"runs of several seeds live in their own folder {self.out}, not in {out}")
        write_json(self.out / "seeds.json", self.record)
        return self.out

    def summary(self) -> str:
        mean, std = self.record["mean"], self.record["std"]
        full = [key for key in ("full_test_pgd",) if key in mean]
        shown = ["test_clean", "test_pgd", *full]
        spread = ", ".join(f"{key} {mean[key]:.3f} ± {std[key]:.3f}" for key in shown)
        lines = [result.summary() for result in self.runs]
        return "\n".join([*lines, f"{len(self.runs)} seeds: {spread} (mean ± std)"])


def _train(settings: TrainSettings, progress: bool, argv: list[str] | None) -> TrainResult:
    data = settings.data.load()
    threat = _threat(settings, data.image_shape[0])
    notes = _attack_notes(settings, threat, data.image_shape[0])
    warn(notes, *_unread_flags(settings))
    if settings.track_kernel > data.x_train.shape[0]:
        raise StudyError(f"--track-kernel {settings.track_kernel} exceeds the {data.x_train.shape[0]} training points")
    if settings.switch_epoch is not None and settings.mode == "standard":
        raise StudyError("--switch-epoch switches from clean training to an adversarial --mode; --mode is standard")
    if settings.switch_epoch is not None and settings.switch_epoch >= settings.epochs:
        raise StudyError(
            f"--switch-epoch {settings.switch_epoch} is not before the last of --epochs {settings.epochs}: "
            "the run would never train adversarially"
        )
    if settings.full_eval_every is not None and settings.full_eval_steps == 0:
        raise StudyError("--full-eval-every repeats the full evaluation that --full-eval-steps 0 turns off")
    if settings.final_eval not in ("none", "autoattack"):
        raise StudyError(f"--final-eval {settings.final_eval!r}: choose none or autoattack")
    if settings.eps_warmup and settings.mode == "standard":
        raise StudyError("--eps-warmup ramps the training attack's eps; --mode standard has no attack")
    _check_augmentation(settings, data.image_shape)

    from ntkrobust.bridge.data import DataError
    from ntkrobust.bridge.distributed import is_main
    from ntkrobust.bridge.entk import BudgetError
    from ntkrobust.bridge.experiment import RunFolderError, run_training
    from ntkrobust.bridge.models import parameter_count
    from ntkrobust.bridge.runfolder import RunFolder

    device = torch_device(settings.device)
    net = _network(settings, data)
    _check_last_batch(settings, net["model"], data)
    config = net["config"]
    train, tracking = _configs(settings, threat)
    label = f"{config.model} {settings.mode}" + (
        f" after {settings.switch_epoch} clean" if settings.switch_epoch else ""
    )
    if net["linearization"] is not None:
        kind = "centered-standard" if settings.centered_standard else "centered" if settings.centered else "linearized"
        label = f"{config.model} {kind} {settings.mode}"
    run_config = {
        "data": settings.data.config(data),
        "model": {**config.to_dict(), "parameters": parameter_count(net["model"])},
        "linearization": net["linearization"],
        "train": train.to_dict(),
        "tracking": tracking.to_dict(),
        "device": str(device),
    }
    if settings.force and not settings.resume and is_main():  # start over: no previous run's files mixed in
        RunFolder(settings.out).clear()
    existed = settings.out.exists()
    try:
        history = run_training(
            settings.out,
            net["model"],
            config,
            data,
            train,
            tracking,
            config=run_config,
            label=label,
            device=device,
            resume=settings.resume,
            kernel_network=net["kernel_network"],
            relative_magnitude=net["magnitude"],
            metadata={"dataset": data.describe(), "warnings": notes, "versions": versions(), "argv": argv},
            progress=progress,
        )
    except (RunFolderError, DataError) as err:
        raise StudyError(str(err)) from None
    except BudgetError as err:  # refused before the first evaluation (the trainer's check_budget)
        if not settings.resume and is_main():
            _discard_unfinished(RunFolder(settings.out), existed)
        raise StudyError(f"--memory-budget {settings.memory_budget}: {err}") from None
    except FloatingPointError as err:  # diverged: the epochs before it are saved, the message says so
        raise StudyError(f"{err}: the run diverged; try a smaller --lr (the finished epochs are kept)") from None
    if settings.final_eval == "autoattack":
        history["final_evaluation"] = _final_evaluation(settings, net["model"], data, threat.eps, device)
    peak = peak_gpu_memory()
    if peak is not None or settings.final_eval == "autoattack":
        from ntkrobust.bridge.files import write_json

        if peak is not None:
            history["peak_gpu_memory_mib"] = peak
        write_json(RunFolder(settings.out).history, history)
    return TrainResult(history, out=settings.out, label=label, results_file="history.json")


def _discard_unfinished(run: Any, existed: bool) -> None:
    """Remove what a fresh run refused before its first checkpoint wrote (its configuration and
    probe), and its folder when the run made it: a refusal leaves nothing half-written. A run with
    a finished epoch keeps it, as a diverged one does.

    The trainer checks the budget before its first evaluation (``entk.check_memory_budget``),
    so nothing of the run exists yet when it is refused; the cleanup stays for a refusal that
    comes later (a rank whose budget differs under torchrun)."""
    if run.latest_checkpoint() is not None:
        return
    run.clear()
    if not existed and run.path.is_dir() and not any(run.path.iterdir()):
        run.path.rmdir()


def _final_evaluation(settings: TrainSettings, model: Any, data: Any, eps: float, device: Any) -> dict[str, Any]:
    """RobustBench's attacks (``bridge.evaluation``) on --eval-n class-balanced test points."""
    import torch

    from ntkrobust.bridge.data import balanced_indices, task_indices
    from ntkrobust.bridge.evaluation import EVALUATION_ATTACKS, accuracies, masking_suspected, robust_correct

    n = min(settings.eval_n, data.x_test.shape[0])
    chosen = balanced_indices(data.y_test, data.classes, n, settings.data.seed, what="test")
    x = torch.as_tensor(data.x_test[chosen], device=device)
    y = torch.as_tensor(task_indices(data.y_test[chosen], data.classes), device=device)
    correct = robust_correct(
        model, x, y, eps=eps, channels=data.image_shape[0], seed=settings.data.seed,
        on_attack=lambda name, accuracy: log.info(f"final evaluation: {name} {accuracy:.3f}"),
    )  # fmt: skip
    accuracy = accuracies(correct)
    return {
        "points": int(n),
        "eps": eps,
        "attacks": list(EVALUATION_ATTACKS),
        "accuracy": accuracy,
        "masking_suspected": masking_suspected(accuracy),
    }
