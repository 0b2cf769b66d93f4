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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ntkrobust._numbers import pixel_radius
from ntkrobust.studies._base import (
    StudyError,
    StudyResult,
    check_out_dir,
    checked_together,
    envelope,
    gpu_record,
    log,
    restart_gpu_peak,
    versions,
    warn,
    warned_after_checks,
)
from ntkrobust.studies._common import (
    check_counts,
    check_draws,
    check_one_output_per_class,
    check_task,
    torch_device,
    torch_network,
)
from ntkrobust.studies._output import OutputLock
from ntkrobust.studies._train_settings import (
    AUGMENTATIONS,
    INITIALISATIONS,
    TRAINING_MODES,
    Threat,
    TrainSettings,
    attack_notes,
    check_augmentation,
    check_batchnorm,
    check_folder,
    check_last_batch,
    resolve_threat,
    run_seed,
    te_ramp,
    unread_flags,
)

__all__ = ["AUGMENTATIONS", "INITIALISATIONS", "TRAINING_MODES", "SeedsResult", "TrainResult", "TrainSettings", "run"]


@dataclass
class TrainResult(StudyResult):
    out: Path
    label: str

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """The run folder is complete once ``run`` returns; it cannot move elsewhere (``overwrite``:
        nothing to overwrite)."""
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
            f"PGD-{steps} {scores['test_pgd']:.3f}{strong} (eps {pixel_radius(eps)}){growth}"
        )


def _linearization_parent(
    settings: TrainSettings, data: Any, notes: list[str] | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """The parent network, config and checkpoint payload of ``linearize_from``, checked (its
    classes too: ``check_task``, warnings in ``notes``)."""
    from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint, trained_classes
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
    check_one_output_per_class(
        config.num_classes, len(data.classes), f"--linearize-from {path}", trained_classes(payload)
    )
    check_task(trained_classes(payload), data, f"--linearize-from {path}", notes)
    return parent, config, payload


def _network(settings: TrainSettings, data: Any, notes: list[str] | None = None) -> dict[str, Any]:
    """The model to train, its config, and for linearized runs what tracking needs."""
    if settings.linearize_from is None:
        default = "mnist-cnn" if data.image_shape[0] == 1 else "cifar-cnn"
        model, config = torch_network(
            data,
            model=settings.model or default,
            width=settings.width,
            checkpoint=None,
            seed=run_seed(settings),
            init=settings.init,
            # RAT's "w/o buffer" model: no running statistics anywhere in the run
            running_stats=settings.batchnorm != "batch",
        )
        check_batchnorm(settings, model, config.model)
        return {"model": model, "config": config, "linearization": None, "kernel_network": None, "magnitude": None}
    from ntkrobust.bridge.linearized import CenteredStandardNetwork, LinearizedNetwork, relative_magnitude

    parent, config, payload = _linearization_parent(settings, data, notes)
    linearization = {
        "checkpoint": str(settings.linearize_from),
        "spawn_epoch": payload.get("epoch"),
        "centered": settings.centered or settings.centered_standard,
    }
    if settings.centered_standard:  # LOO table 1: the full net minus its spawn; its kernel moves
        from ntkrobust.bridge.tracking import has_batchnorm

        if settings.stage2_batchnorm == "train" and not has_batchnorm(parent):
            raise StudyError(f"--stage2-batchnorm train: {config.model} has no BatchNorm layers")
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


def _configs(settings: TrainSettings, threat: Threat) -> tuple[Any, Any]:
    from ntkrobust.bridge.tracking import TrackingConfig
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
            **te_ramp(settings),
            seed=run_seed(settings),
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


def run(settings: TrainSettings, *, progress: bool = False, argv: list[str] | None = None) -> TrainResult | SeedsResult:
    """Train into the run folder ``settings.out`` (locked while it runs); the result's record is
    its history. With ``seeds``, one run per seed in ``out/seed_S``, one after the other."""
    check_counts(settings)
    from ntkrobust.bridge.runfolder import RunFolder

    if settings.seeds:
        return _run_seeds(settings, progress, argv)
    from ntkrobust.bridge import distributed

    main = distributed.is_main()  # under torchrun rank 0 checks, locks and writes the folder
    with contextlib.ExitStack() as locked:
        with checked_together():
            if main:
                check_folder(settings)
                locked.enter_context(OutputLock(settings.out))
                if settings.resume:  # a kill during an atomic write leaves its hidden temporary behind
                    RunFolder(settings.out).remove_temporaries()
        return _train(settings, progress and main, argv)


def _run_seeds(settings: TrainSettings, progress: bool, argv: list[str] | None) -> SeedsResult:
    """One run per seed in ``out/seed_S``; with ``resume``, finished runs are continued (to more
    epochs) and the seeds not reached yet are started."""
    from ntkrobust.bridge import distributed
    from ntkrobust.bridge.runfolder import RunFolder

    seeds = settings.seeds
    main = distributed.is_main()  # under torchrun rank 0 checks, locks and writes the folder
    with checked_together():
        if len(set(seeds)) != len(seeds):
            raise StudyError(f"--seeds {','.join(map(str, seeds))} names a seed twice")
        if settings.run_seed is not None:
            raise StudyError("--seeds gives every run its own seed; run_seed is for a single run")
        if settings.resume and main and not RunFolder(settings.out / f"seed_{seeds[0]}").exists():
            raise StudyError(f"--resume: {settings.out} holds no seed_{seeds[0]} run to continue")
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
    record = envelope("train", metrics, config, seconds=None, argv=argv, seed=settings.data.seed)
    peaks = [result.record["peak_gpu_memory_mib"] for result in results if "peak_gpu_memory_mib" in result.record]
    if peaks:  # the envelope read the last seed's (each seed's run counts its own): the largest of them
        record["peak_gpu_memory_mib"] = max(peaks)
    return record


@dataclass
class SeedsResult(StudyResult):
    out: Path
    runs: list[TrainResult]

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Every run is in place once ``run`` returns; ``seeds.json`` summarises them (``overwrite``:
        the folder is theirs)."""
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


def _check_schedule(settings: TrainSettings, n_train: int) -> None:
    """The flags that contradict each other or the data's ``n_train`` training points."""
    if settings.track_kernel > n_train:
        raise StudyError(f"--track-kernel {settings.track_kernel} exceeds the {n_train} training points")
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


def _short_warmup(settings: TrainSettings, eps: float) -> str | None:
    """A warning when ``--eps-warmup`` ramps over more epochs than train adversarially: the
    attack then never reaches its ε. Not refused, as a later ``--resume`` with more ``--epochs``
    can finish the ramp."""
    adversarial = settings.epochs - (settings.switch_epoch or 0)
    if settings.mode == "standard" or settings.eps_warmup <= adversarial:
        return None
    reached = eps * adversarial / settings.eps_warmup
    return (
        f"--eps-warmup {settings.eps_warmup} ramps over more than the {adversarial} adversarial epochs: "
        f"the training attack ends at eps {pixel_radius(reached)}, not {pixel_radius(eps)}"
    )


def _train(settings: TrainSettings, progress: bool, argv: list[str] | None) -> TrainResult:
    from ntkrobust.bridge.data import DataError
    from ntkrobust.bridge.distributed import is_main
    from ntkrobust.bridge.entk import BudgetError
    from ntkrobust.bridge.experiment import RunFolderError, run_training
    from ntkrobust.bridge.models import parameter_count
    from ntkrobust.bridge.runfolder import RunFolder

    restart_gpu_peak()  # each seed's history holds its own peak (--seeds runs them in one process)
    # every process's own inputs (data, the net, a linearization's checkpoint), checked on all
    # of them before the first collective: one that fails stops them all (the first says why)
    with checked_together(), warned_after_checks():
        data = settings.data.load()
        threat = resolve_threat(settings, data.image_shape[0])
        notes = attack_notes(settings, threat, data.image_shape[0])
        _check_schedule(settings, data.x_train.shape[0])  # first: the warm-up's warning divides by its epochs
        warn(notes, *unread_flags(settings), _short_warmup(settings, threat.eps))
        check_augmentation(settings, data.image_shape)

        device = torch_device(settings.device)
        net = _network(settings, data, notes)
        check_last_batch(settings, net["model"], data)
        config = net["config"]
        train, tracking = _configs(settings, threat)
        if settings.track_kernel and settings.estimator != "exact":
            check_draws(settings.estimator, "--estimator", config.num_classes)
    label = f"{config.model} {settings.mode}" + (
        f" after {settings.switch_epoch} clean" if settings.switch_epoch else ""
    )
    if net["linearization"] is not None:
        kind = "centered-standard" if settings.centered_standard else "centered" if settings.centered else "linearized"
        # "fc2 centered (standard)": the training mode apart, never read as LOO's centered standard net
        label = f"{config.model} {kind} ({settings.mode})"
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
        run = RunFolder(settings.out)
        if run.latest_checkpoint() is None:  # at initialisation: the starting weights overflow
            if not settings.resume and is_main():
                _discard_unfinished(run, existed)
            raise StudyError(f"at initialisation, {err}: the starting weights do this; nothing was written") from None
        raise StudyError(f"{err}: the run diverged; try a smaller --lr (the finished epochs are kept)") from None
    if settings.final_eval == "autoattack":
        history["final_evaluation"] = _final_evaluation(settings, net["model"], data, threat.eps, device, progress)
    untrained = _near_chance(history, len(data.classes))
    warn(history["warnings"], untrained)
    on_gpu = gpu_record()  # the history's own: each seed of --seeds counts its peak from its start
    if on_gpu or settings.final_eval == "autoattack" or untrained:  # rank 0 writes (files.py)
        from ntkrobust.bridge.files import write_json

        history |= on_gpu
        write_json(RunFolder(settings.out).history, history)
    return TrainResult(history, out=settings.out, label=label, results_file="history.json")


def _near_chance(history: dict[str, Any], classes: int) -> str | None:
    """A warning when the trained net's clean test accuracy is within 0.05 of chance (1/C): the
    run's kernels and robust accuracies then describe a net that has not learned (the default lr
    of 0.01, TK supp. E's for MNIST, takes more than 100 steps to move fc2 or the MNIST CNN on
    digits; a too large lr can leave a net at chance as well)."""
    last = history["epochs"][-1]
    clean = _final_scores(history)["test_clean"]
    if last["epoch"] == 0 or clean >= 1 / classes + 0.05:
        return None
    return (
        f"test clean accuracy {clean:.3f} after {last['epoch']} epochs is near chance ({1 / classes:.3f} for "
        f"{classes} classes): the net has not learned (try another --lr or more --epochs)"
    )


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


def _final_evaluation(
    settings: TrainSettings, model: Any, data: Any, eps: float, device: Any, progress: bool = False
) -> dict[str, Any]:
    """RobustBench's attacks (``bridge.evaluation``) on --eval-n class-balanced test points."""
    import torch

    from ntkrobust.bridge.data import balanced_indices, task_indices
    from ntkrobust.bridge.evaluation import (
        EVALUATION_ATTACKS,
        accuracies,
        autoattack_attacks,
        masking_suspected,
        robust_correct,
    )

    n = min(settings.eval_n, data.x_test.shape[0])
    chosen = balanced_indices(data.y_test, data.classes, n, settings.data.seed, what="test")
    x = torch.as_tensor(data.x_test[chosen], device=device)
    y = torch.as_tensor(task_indices(data.y_test[chosen], data.classes), device=device)
    correct = robust_correct(
        model, x, y, eps=eps, channels=data.image_shape[0], seed=settings.data.seed,
        on_attack=lambda name, accuracy: log.info(f"final evaluation: {name} {accuracy:.3f}"),
        across_processes=True,  # under torchrun each process attacks its share of the batches
        progress=progress,
    )  # fmt: skip
    accuracy = accuracies(correct)
    return {
        "points": int(n),
        "eps": eps,
        "attacks": list(EVALUATION_ATTACKS),
        "autoattack_attacks": autoattack_attacks(len(data.classes)),
        "accuracy": accuracy,
        "masking_suspected": masking_suspected(accuracy),
    }
