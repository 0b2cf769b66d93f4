"""``evaluate``: the robust accuracy of trained nets as RobustBench measures it (clean, PGD-20,
PGD-100, CW-ℓ∞ and AutoAttack; ``bridge.evaluation``), on the class-balanced test points of the
data, with a flag where AutoAttack finds the gradient attacks misled (gradient masking).
``restarts`` repeats PGD and CW from that many random starts per point (``bridge.evaluation``): a
point counts as robust only if it survives every one.

Nets are named as ``transfer``'s targets: checkpoints of this tool, ``MODEL[:WIDTH]=STATE_DICT``,
and, with ``trust_model_code``, TorchScript / .pt2 files. Outputs: ``results.json`` and
``robust_accuracy.png`` (``plots.robust_accuracy_bars``). Stopped part way (an interrupt, an error
in a later net), the nets finished so far are the result the command line saves
(``_base.kept_if_stopped``): ``results.json`` lists the others under ``nets_not_evaluated`` and the
figure's subtitle says "stopped after k of n nets".

Under torchrun every process loads the data and the nets, attacks its share of every attack's
batches and gets every point's verdict (``bridge.evaluation``): the accuracies of one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ntkrobust._numbers import pixel_radius
from ntkrobust._progress import progress_iter
from ntkrobust.studies._base import (
    UNKEYED_AT_DEFAULT,
    Clock,
    StagedOutput,
    StudyError,
    StudyResult,
    checked_together,
    envelope,
    kept_if_stopped,
    log,
    warn,
)
from ntkrobust.studies._common import (
    DataSettings,
    check_counts,
    check_distinct_files,
    check_linf_eps,
    check_unique,
    load_targets,
    torch_device,
)

EVALUATION_ATTACKS = ("pgd-20", "pgd-100", "cw-100", "autoattack")  # = bridge.evaluation.EVALUATION_ATTACKS


@dataclass(frozen=True)
class EvaluateSettings:
    nets: tuple[str, ...]
    data: DataSettings = field(default_factory=DataSettings)
    eps: float | None = None  # default: the standard linf radius of the image type
    attacks: tuple[str, ...] = EVALUATION_ATTACKS
    masking_gap: float = 0.1  # bridge.evaluation.MASKING_GAP
    batch_size: int = 250
    # PGD's and CW's random starts per point, robust only if every one fails (added after reproduce's
    # evaluate steps were recorded: their keys leave it out at 1)
    restarts: int = field(default=1, metadata=UNKEYED_AT_DEFAULT)
    device: str = "auto"
    trust_model_code: bool = False

    COUNTS: ClassVar[dict[str, int]] = {"batch_size": 1, "restarts": 1}  # checked by check_counts, as the parser does


@dataclass
class EvaluateResult(StudyResult):
    def write_files(self, staged: StagedOutput) -> None:
        from ntkrobust import plots

        config, data = self.record["config"], self.record["config"]["data"]
        points = f", {data['n_test']} test points" if data.get("n_test") else ""
        subtitle = f"{Path(str(data['data'])).name}{points}; ℓ∞ ε = {pixel_radius(config['eps'])}"
        if config.get("restarts", 1) > 1:  # records from before restarts have no key: one start
            restarted = ", ".join(name.upper() for name in config["attacks"] if name != "autoattack")
            subtitle += f"; {restarted}: {config['restarts']} random starts per point"
        if left := self.record.get("nets_not_evaluated"):  # a run stopped early: the nets it finished
            done = len(self.record["nets"])
            subtitle += f"; stopped after {done} of {done + len(left)} nets (not evaluated: {', '.join(left)})"
        plots.robust_accuracy_bars(self.record["nets"], staged.path("robust_accuracy.png"), subtitle=subtitle)

    def summary(self) -> str:
        lines = []
        for net in self.record["nets"]:
            scores = ", ".join(f"{name} {value:.3f}" for name, value in net["accuracy"].items())
            flag = "  [AutoAttack far below PGD: gradient masking suspected]" if net["masking_suspected"] else ""
            lines.append(f"{net['label']}: {scores}{flag}")
        return "\n".join(lines)


def _checked(settings: EvaluateSettings, channels: int) -> float:
    """The eps, after refusing what the evaluation cannot run."""
    from ntkrobust.attacks import standard_threat

    unknown = [a for a in settings.attacks if a not in EVALUATION_ATTACKS]
    if unknown:
        import difflib

        # "pgd20" for "pgd-20": the attack of the same letters and digits, else a near spelling
        plain = {name.replace("-", ""): name for name in EVALUATION_ATTACKS}
        close = [plain[key]] if (key := unknown[0].lower().replace("-", "")) in plain else []
        close = close or difflib.get_close_matches(unknown[0].lower(), EVALUATION_ATTACKS, n=1)
        meant = f" (did you mean {close[0]}?)" if close else ""
        raise StudyError(f"--attacks {unknown[0]!r}: choose from {', '.join(EVALUATION_ATTACKS)}{meant}")
    if not settings.nets:
        raise StudyError("name at least one net to evaluate")
    check_unique(list(settings.attacks), "--attacks", "an attack")
    check_distinct_files(settings.nets, "net")
    if settings.batch_size < 1:
        raise StudyError(f"--batch-size must be >= 1, got {settings.batch_size}")
    if not (math.isfinite(settings.masking_gap) and settings.masking_gap >= 0):
        raise StudyError(f"--masking-gap must be a finite number >= 0, got {settings.masking_gap}")
    eps = standard_threat(channels, "linf")[0] if settings.eps is None else settings.eps
    check_linf_eps(eps, "--eps")
    return eps


def run(settings: EvaluateSettings, *, progress: bool = False, argv: list[str] | None = None) -> EvaluateResult:
    """Evaluate every net on the data's test points; refusals come before any attack."""
    check_counts(settings)
    import torch

    from ntkrobust.attacks import AttackSpec
    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.evaluation import accuracies, autoattack_attacks, masking_suspected, robust_correct

    compared = "autoattack" in settings.attacks and bool({"pgd-20", "pgd-100", "cw-100"} & set(settings.attacks))
    clock = Clock()
    with checked_together():  # under torchrun: every process's data and nets, before the attacks' collectives
        if settings.masking_gap != EvaluateSettings.masking_gap and not compared:
            raise StudyError(
                "--masking-gap compares AutoAttack with PGD-20 / PGD-100 / CW-100: --attacks needs autoattack and "
                "one of them"
            )
        if settings.batch_size != EvaluateSettings.batch_size and "autoattack" not in settings.attacks:
            raise StudyError("--batch-size sets AutoAttack's runs (PGD and CW run in 256s): --attacks needs autoattack")
        if settings.restarts > 1 and set(settings.attacks) <= {"autoattack"}:
            raise StudyError(
                "--restarts repeats PGD and CW from new random starts (AutoAttack has its own): "
                "--attacks needs pgd-20, pgd-100 or cw-100"
            )
        data = settings.data.load()
        channels = data.image_shape[0]
        eps = _checked(settings, channels)
        device = torch_device(settings.device)
        notes: list[str] = []
        nets = load_targets(settings.nets, data, device, trust_code=settings.trust_model_code, notes=notes)
    warn(notes, AttackSpec("pgd", eps, "linf", 1.0, 1).eps_hint(channels))
    x = torch.as_tensor(data.x_test, device=device)
    y = torch.as_tensor(task_indices(data.y_test, data.classes), device=device)
    clock.mark("nets", f"data and {len(nets)} net(s) loaded")
    config: dict[str, Any] = {
        "data": settings.data.config(data),
        "eps": eps,
        "norm": "linf",
        "attacks": list(settings.attacks),
        # AutoAttack's parts for this many classes (bridge.evaluation.autoattack_attacks)
        "autoattack_attacks": autoattack_attacks(len(data.classes)) if "autoattack" in settings.attacks else None,
        # points per AutoAttack run, each seeded by its first row: a point's verdict depends on it
        "autoattack_batch_size": settings.batch_size if "autoattack" in settings.attacks else None,
        "masking_gap": settings.masking_gap if compared else None,  # None: no comparison ran
        # PGD's and CW's random starts per point (bridge.evaluation.restart_seed); 1: one start
        "restarts": settings.restarts,
        "device": str(device),
    }
    rows: list[dict[str, Any]] = []

    def result() -> EvaluateResult:
        stopped = {"nets_not_evaluated": [net.label for net in nets[len(rows) :]]} if len(rows) < len(nets) else {}
        record = envelope(
            "evaluate", {"nets": list(rows), **stopped}, config, seconds={"total": clock.since_start()}, argv=argv,
            seed=settings.data.seed, dataset=data.describe(), warnings=notes,
        )  # fmt: skip
        return EvaluateResult(record)

    # stopped by an interrupt or an error: the nets evaluated so far are saved (cli.py), the rest named
    with kept_if_stopped(lambda: result() if rows else None):
        for net in progress_iter(nets, "evaluate", "net", show=progress):
            model = net.model.to(device=device, dtype=torch.float32).eval()

            def said(name: str, accuracy: float, label: str = net.label) -> None:
                log.info(f"{label}: {name} {accuracy:.3f}")

            correct = robust_correct(
                model, x.float(), y, eps=eps, channels=channels, attacks=settings.attacks, on_attack=said,
                seed=settings.data.seed, batch_size=settings.batch_size, restarts=settings.restarts,
                across_processes=True, progress=progress,
            )  # fmt: skip
            accuracy = accuracies(correct)
            rows.append(
                {
                    "label": net.label,
                    "net": net.description,
                    "accuracy": accuracy,
                    "masking_suspected": masking_suspected(accuracy, settings.masking_gap),
                }
            )
            clock.mark(net.label, f"{net.label} evaluated")
    return result()
