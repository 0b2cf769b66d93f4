"""What ``train`` is asked (``TrainSettings``) and its checks that come before any training:
the run folder, the attacks of the run (``resolve_threat``), the flags that the other flags leave
unread (warned: a sweep over modes passes one schedule to every mode), TE's ramp, the
augmentation and the last mini-batch against the network's BatchNorm layers.

Imports no torch at module level: the command line reads the choices below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from ntkrobust.studies._base import StudyError, check_out_dir, flags_do, warn
from ntkrobust.studies._common import DataSettings, check_linf_eps, pgd_schedule

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
    trades_beta: float = 6.0  # = bridge.training.TRADES_BETA (tested)
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

    COUNTS: ClassVar[dict[str, int]] = {  # checked by check_counts, as the parser does
        "width": 1, "epochs": 0, "batch_size": 1, "pgd_steps": 1, "switch_epoch": 0, "te_start": 1, "te_end": 1,
        "eps_warmup": 0, "track_kernel": 0, "track_every": 1, "eval_n": 1, "eval_pgd_steps": 1,
        "full_eval_steps": 0, "full_eval_every": 1, "memory_budget": 1, "seeds": 0,
    }  # fmt: skip


def check_folder(settings: TrainSettings) -> None:
    from ntkrobust.bridge.files import not_a_file
    from ntkrobust.bridge.runfolder import RunFolder

    if settings.resume and settings.force:
        raise StudyError("--resume continues the run in --out; --force would start it over: choose one")
    if settings.resume:
        run = RunFolder(settings.out)
        if not run.exists():
            reason = not_a_file(run.config)
            what = "no config.json" if reason == "does not exist" else f"its config.json {reason}"
            raise StudyError(f"--resume: {settings.out} holds no run to continue ({what})")
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


class Threat(NamedTuple):
    """The run's ℓ∞ attacks: training PGD, per-epoch evaluation PGD (also the AE-NTK's), full
    evaluation PGD (``full_steps`` 0: none)."""

    eps: float
    step: float
    steps: int
    eval_step: float
    eval_steps: int
    full_step: float | None
    full_steps: int


def resolve_threat(settings: TrainSettings, channels: int) -> Threat:
    """The standard attacks of the image type, as far as the settings leave them (``attacks.spec``)."""
    from ntkrobust.attacks import EPOCH_PGD_STEPS, evaluation_schedule, evaluation_steps, standard_threat

    eps = standard_threat(channels, "linf")[0] if settings.eps is None else settings.eps
    check_linf_eps(eps, "--eps")
    step, steps = pgd_schedule(
        channels, "linf", eps, settings.pgd_step, settings.pgd_steps, flags=("--pgd-step", "--pgd-steps")
    )
    eval_step, eval_steps = evaluation_schedule(channels, eps, settings.eval_pgd_steps or EPOCH_PGD_STEPS)
    full_steps = evaluation_steps(channels, settings.full_eval_steps)
    full_step = evaluation_schedule(channels, eps, full_steps)[0] if full_steps else None
    return Threat(eps, step, steps, eval_step, eval_steps, full_step, full_steps)


def attack_notes(settings: TrainSettings, threat: Threat, channels: int) -> list[str]:
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


def unread_flags(settings: TrainSettings) -> list[str]:
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


def check_batchnorm(settings: TrainSettings, model: Any, name: str) -> None:
    from ntkrobust.bridge.tracking import has_batchnorm

    if settings.batchnorm != "running" and not has_batchnorm(model):
        raise StudyError(f"--batchnorm {settings.batchnorm}: {name} has no BatchNorm layers")


def check_augmentation(settings: TrainSettings, image_shape: tuple[int, ...]) -> None:
    from ntkrobust.bridge.augment import check_augmentation

    if settings.augment_shared and settings.augment == "none":
        raise StudyError("--augment-shared shares the draws of an augmentation: give --augment crop-flip")
    try:
        check_augmentation(settings.augment, image_shape)
    except ValueError as err:
        raise StudyError(f"--augment {err}") from None


def check_last_batch(settings: TrainSettings, model: Any, data: Any) -> None:
    """A last mini-batch of one example is refused before training where a BatchNorm layer would
    normalise it over a single value per channel (torch raises there, mid-run); so is
    ``--batch-size 1``, whose every mini-batch is of one example."""
    n = data.x_train.shape[0]
    if n % settings.batch_size != 1 and settings.batch_size != 1:
        return
    import torch

    from ntkrobust.bridge.tracking import single_value_batchnorms

    layers = single_value_batchnorms(model, torch.as_tensor(data.x_train[:2]))
    if layers:
        if settings.batch_size == 1:
            batches = "trains on batches of one example"
        else:
            batches = f"leaves a last batch of one of the {n} training points"
        raise StudyError(
            f"--batch-size {settings.batch_size} {batches}, and BatchNorm {layers[0]} would normalise it over one "
            "value per channel: choose another --batch-size"
        )


def te_ramp(settings: TrainSettings) -> dict[str, Any]:
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


def run_seed(settings: TrainSettings) -> int:
    return settings.data.seed if settings.run_seed is None else settings.run_seed
