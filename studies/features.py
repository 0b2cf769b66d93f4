"""``features``: eigen-features of NTK machines (Tsilivis & Kempe eq. 9), each feature's
usefulness and robustness on held-out data (supp. A), their pictures (fig. 2, fig. 5) and the
kernels built from the most robust features only (supp. D.3).

Features are ranked on one half of the held-out data and the robust-only kernels evaluated on the
other, so the ranking never sees the points that judge it.

Outputs: ``features.csv`` (``features-ARCH.csv`` for several architectures),
``robustness_usefulness.png``, ``feature_gallery.png``, ``useful_non_robust.png``,
``robust_only.png`` (with robust-only kernels), ``results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ntkrobust._numbers import pixel_radius
from ntkrobust.attacks.spec import NET_METHODS, AttackSpec
from ntkrobust.studies._base import Clock, StagedOutput, StudyError, StudyResult, envelope, warn
from ntkrobust.studies._common import (
    DataSettings,
    MachineSettings,
    ThreatSettings,
    check_choice,
    check_counts,
    check_unique,
)

#: r values of the robust-features-only kernels; -1: every feature (the full machine)
DEFAULT_ROBUST_R = (1, 2, 5, 10, 20, 50, 100, -1)
#: PGD steps against the robust-only kernels f'_r (step 2.5·eps/steps unless --step)
ROBUST_STEPS = 10

_DEFINITIONS = {
    "usefulness": "held-out accuracy of the feature alone (supp. A eq. 1)",
    "robustness": "share of held-out points the feature classifies correctly at x and at its own attack",
    "useful": "usefulness above chance_usefulness, the share of the most frequent class",
    "spearman_index_robustness": "Spearman correlation of eigen-index (0 = largest) and robustness",
}


@dataclass(frozen=True)
class FeaturesSettings:
    data: DataSettings = field(default_factory=DataSettings)
    arch: tuple[str, ...] = ("fc2",)
    machine: MachineSettings = field(default_factory=MachineSettings)
    n_features: int = 100
    feature_attack: str = "fgsm"
    threat: ThreatSettings = field(default_factory=ThreatSettings)
    image_index: int = 0
    top_k: int = 5
    non_robust_below: float = 0.05
    robust_r: tuple[int, ...] = DEFAULT_ROBUST_R
    robust_steps: int | None = None  # default ROBUST_STEPS; only with robust_r

    COUNTS: ClassVar[dict[str, int]] = {
        "n_features": 1,
        "top_k": 1,
        "robust_steps": 1,
        "image_index": 0,
    }  # checked by check_counts, as the parser does


@dataclass
class FeaturesResult(StudyResult):
    tables: dict[str, Any]  # architecture -> kernels.FeatureScores
    figures: dict[str, Any]  # what the plots are drawn from

    def write_files(self, staged: StagedOutput) -> None:
        from ntkrobust import plots

        for name, scores in self.tables.items():
            csv = "features.csv" if len(self.tables) == 1 else f"features-{name}.csv"
            rows = ["index,eigenvalue,usefulness,robustness"] + [
                f"{i},{lam:.17g},{u:.6g},{r:.6g}"
                for i, lam, u, r in zip(
                    scores.index, scores.eigenvalue, scores.usefulness, scores.robustness, strict=True
                )
            ]
            staged.path(csv).write_text("\n".join(rows) + "\n")
        f = self.figures
        plots.robustness_usefulness(
            f["panels"],
            staged.path("robustness_usefulness.png"),
            subtitle=f["subtitle"],
            useful_non_robust_below=f["non_robust_below"],
        )
        for gallery, name, text, which in (
            ("gallery", "feature_gallery.png", "gallery_text", "the top"),
            ("strips", "useful_non_robust.png", "strip_text", "useful, non-robust"),
        ):
            heading = f"Input gradients of {which} eigen-features"
            plots.feature_gallery(f["image"], f[gallery], staged.path(name), subtitle=f[text], heading=heading)
        if f["curves"]:
            plots.robust_only_curves(f["curves"], staged.path("robust_only.png"), subtitle=f["curve_text"])

    def summary(self) -> str:
        n = self.record["config"]["n_features"]
        return "\n".join(
            f"{name}: Spearman(index, robustness) = {entry['spearman_index_robustness']:.2f}, "
            f"useful non-robust {entry['useful_non_robust_share']:.2f} of {n} features, "
            f"full machine clean {entry['full_machine']['clean_accuracy']:.3f} / "
            f"FGSM {entry['full_machine']['fgsm_accuracy']:.3f}"
            for name, entry in self.record["architectures"].items()
        )


def resolve_r(requested: Sequence[int], n_features: int, n_train: int) -> list[int]:
    """The --robust-r values that apply: at most --n-features (the ranked ones), -1 = all n."""
    return sorted({n_train if r == -1 else r for r in requested if r == -1 or r <= n_features})


def _captions(scores: Any, indices: Sequence[int]) -> list[str]:
    return [f"#{i} u={scores.usefulness[i]:.2f} r={scores.robustness[i]:.2f}" for i in indices]


def _early_and_late(mask: np.ndarray, each: int) -> list[int]:
    """Up to ``each`` of the first and ``each`` of the last features where ``mask`` holds (TK fig. 5)."""
    hits = [int(i) for i in mask.nonzero()[0]]
    return hits if len(hits) <= 2 * each else hits[:each] + hits[-each:]


def _check_unread(settings: FeaturesSettings) -> None:
    """Refuse the PGD flags that no attack of the run reads: the feature attack's (pgd only) and
    the robust-only kernels' (``--step`` and the random start are shared; not with --robust-r none)."""
    attack = settings.feature_attack
    if settings.robust_steps is not None and not settings.robust_r:
        raise StudyError("--robust-steps sets the PGD of the robust-only kernels, which --robust-r none skips")
    if attack == "pgd":
        return
    if settings.threat.steps is not None:
        raise StudyError(
            f"--steps sets the PGD of --feature-attack pgd; {attack} takes none (the robust-only kernels': "
            "--robust-steps)"
        )
    shared = {"--step": settings.threat.step is not None, "--no-random-start": not settings.threat.random_start}
    for flag, given in shared.items():
        if given and not settings.robust_r:
            raise StudyError(
                f"{flag} sets the PGD of --feature-attack pgd and of the robust-only kernels; --feature-attack "
                f"{attack} with --robust-r none runs neither"
            )


def _check(settings: FeaturesSettings, data: Any) -> list[int]:
    """Refuse settings that do not fit the data; the robust-only r values that apply."""
    n_train, n_test = data.x_train.shape[0], data.x_test.shape[0]
    if settings.n_features > n_train:
        raise StudyError(f"--n-features {settings.n_features} exceeds the {n_train} training points (one feature each)")
    if not 0 <= settings.image_index < n_test:
        raise StudyError(
            f"--image-index {settings.image_index} is out of range: {n_test} held-out images (0..{n_test - 1})"
        )
    r_values = resolve_r(settings.robust_r, settings.n_features, n_train)
    if settings.robust_r and not r_values:
        raise StudyError(f"no --robust-r value is at most --n-features {settings.n_features} (or 'all')")
    return r_values


def _one_architecture(
    settings: FeaturesSettings, name: str, data: Any, split: dict[str, Any], progress: bool
) -> dict[str, Any]:
    """Scores, pictures and robust-only kernels of one architecture's machine."""
    from ntkrobust.attacks import AttackSpec, ThreatModel, robust_accuracy
    from ntkrobust.kernels.adversarial import craft_adversarial
    from ntkrobust.kernels.features import feature_gradients, feature_scores, robustness_ranking
    from ntkrobust.kernels.robust_only import robust_only_kernels

    clock = Clock()
    eps, step, steps = split["threat"]
    x_val, y_val, image, label = split["x_val"], split["y_val"], split["image"], split["label"]
    machine, notes, kernel = settings.machine.fit(name, data, progress)
    part_notes: list[str] = []
    warn(part_notes, *(f"{name}: {note}" for note in notes))
    clock.mark("machine", f"{name}: NTK machine (Gram cache {kernel['gram_cache']})")
    clean = machine.predict(x_val)
    threat = ThreatModel(settings.threat.norm, eps)  # type: ignore[arg-type]  # checked by the settings
    adv = machine.predict(craft_adversarial(machine, x_val, y_val, AttackSpec("fgsm", eps, threat.norm)))
    scores = feature_scores(
        machine,
        x_val,
        y_val,
        threat,
        n_features=settings.n_features,
        attack=settings.feature_attack,
        step=step,
        steps=steps,
        random_start=settings.threat.random_start,
        seed=settings.data.seed,
        progress=progress,
    )
    clock.mark("features", f"{name}: {settings.n_features} eigen-features scored")
    top = list(range(min(settings.top_k, settings.n_features)))
    weak = scores.useful_non_robust(settings.non_robust_below)
    shown = _early_and_late(weak, 3)
    strip = feature_gradients(machine, image[None], label[None], shown)[0] if shown else np.zeros((0, *image.shape))
    robust_only: list[Any] = []
    if split["r_values"]:
        robust_only = robust_only_kernels(
            machine,
            robustness_ranking(scores, data.x_train.shape[0]),
            split["r_values"],
            split["x_eval"],
            split["y_eval"],
            threat,
            pgd_step=split["robust_step"],
            pgd_steps=split["robust_steps"],
            random_start=settings.threat.random_start,
            seed=settings.data.seed,
            progress=progress,
        )
    clock.mark("robust_only", f"{name}: robust-only kernels r = {split['r_values']}" if split["r_values"] else None)
    useful = scores.useful()
    head = min(10, settings.n_features)
    entry = {
        "spearman_index_robustness": scores.spearman_index_robustness(),
        "useful_non_robust_share": float(weak.mean()),
        "useful_non_robust_share_of_useful": float(weak.sum() / useful.sum()) if useful.any() else None,
        "useful_share": float(useful.mean()),
        "mean_robustness_top10": float(scores.robustness[:head].mean()),
        "mean_robustness_rest": float(scores.robustness[head:].mean()) if settings.n_features > head else None,
        "chance_usefulness": scores.chance,
        "full_machine": {
            "clean_accuracy": robust_accuracy(clean, y_val),
            "fgsm_accuracy": robust_accuracy(adv, y_val, clean),
        },
        "useful_non_robust_features": [int(i) for i in weak.nonzero()[0]],
        "robust_only": [res.as_dict() for res in robust_only],
        "kernel": kernel,
        "seconds": {
            "kernel_machine": clock.between("start", "machine"),
            "features": clock.between("machine", "features"),
            "robust_only": clock.between("features", "robust_only"),
        },
    }
    gallery = (name, feature_gradients(machine, image[None], label[None], top)[0], _captions(scores, top))
    return {
        "entry": entry,
        "notes": part_notes,
        "scores": scores,
        "gallery": gallery,
        "strip": (name, strip, _captions(scores, shown)),
        "curve": (name, robust_only) if split["r_values"] else None,
    }


def run(settings: FeaturesSettings, *, progress: bool = False, argv: list[str] | None = None) -> FeaturesResult:
    """Score the top eigen-features of every architecture's NTK machine on held-out data."""
    check_counts(settings)
    from ntkrobust.bridge.data import stratified_halves

    arch_names = list(settings.arch)
    check_unique(arch_names, "--arch", "an architecture")
    settings.machine.check(arch_names)
    check_choice(settings.feature_attack, NET_METHODS, "--feature-attack")
    _check_unread(settings)
    robust_steps = ROBUST_STEPS if settings.robust_steps is None else settings.robust_steps
    if not (0 <= settings.non_robust_below <= 1):
        raise StudyError(f"--non-robust-below must lie in [0, 1], got {settings.non_robust_below}")
    clock = Clock()
    data = settings.data.load()
    eps, step, steps = settings.threat.resolve(data.image_shape)
    r_values = _check(settings, data)
    n_test = data.x_test.shape[0]
    if r_values:
        val_idx, eval_idx = stratified_halves(data.y_test, settings.data.seed)
        if eval_idx.size == 0:  # one held-out point per class: all of them rank, none evaluate
            raise StudyError(
                f"--robust-r ranks the features on half of the {n_test} held-out points and evaluates on the "
                "other half, which is empty: give --n-test at least two points per class"
            )
    else:
        val_idx, eval_idx = np.arange(n_test), np.arange(0)
    image, label = data.x_test[settings.image_index], data.y_test[settings.image_index]
    split = {
        "threat": (eps, step, steps),
        "x_val": data.x_test[val_idx],
        "y_val": data.y_test[val_idx],
        "x_eval": data.x_test[eval_idx],
        "y_eval": data.y_test[eval_idx],
        "image": image,
        "label": label,
        "r_values": r_values,
        # PGD against f'_r: --step if given, else Madry et al.'s 2.5·ε/steps (2/255 for CIFAR's PGD-10)
        "robust_step": step if settings.threat.step is not None else 2.5 * eps / robust_steps,
        "robust_steps": robust_steps,
    }
    notes: list[str] = []
    channels = data.image_shape[0]
    feature_attack = AttackSpec(settings.feature_attack, eps, settings.threat.norm, step, steps)  # type: ignore[arg-type]
    robust_attack = AttackSpec("pgd", eps, settings.threat.norm, split["robust_step"], robust_steps)  # type: ignore[arg-type]
    warn(notes, *feature_attack.notes(channels, "feature attack: "))
    budget = robust_attack.budget_warning(("--robust-steps", "--step"))
    if r_values:  # its eps hint is the feature attack's: only the budget can differ
        warn(notes, budget and f"robust-only kernels' PGD: {budget}")
    clock.mark("data", f"data: {data.name}, {data.x_train.shape[0]} train, {n_test} held out")
    parts = {name: _one_architecture(settings, name, data, split, progress) for name in arch_names}
    pgd = settings.feature_attack == "pgd"
    config = {
        **settings.data.config(data),
        "arch": arch_names,
        **settings.machine.config(),
        "n_features": settings.n_features,
        "norm": settings.threat.norm,
        "eps": eps,
        "feature_attack": settings.feature_attack,
        "step": step if pgd else None,
        "steps": steps if pgd else 1,
        "random_start": settings.threat.random_start if pgd or r_values else None,  # None: no PGD ran
        "robust_steps": robust_steps if r_values else None,
        "robust_step": split["robust_step"] if r_values else None,
        "robust_r": r_values,
        "non_robust_below": settings.non_robust_below,
        "image_index": settings.image_index,
        "top_k": min(settings.top_k, settings.n_features),  # the features pictured
        "validation_points": int(val_idx.size),
        "evaluation_points": int(eval_idx.size),
    }
    metrics = {"architectures": {name: part["entry"] for name, part in parts.items()}, "definitions": _DEFINITIONS}
    seconds = {"data": clock.between("start", "data"), "total": clock.since_start()}
    notes += [note for part in parts.values() for note in part["notes"]]
    record = envelope(
        "features", metrics, config, seconds=seconds, argv=argv, seed=settings.data.seed,
        dataset=data.describe(), warnings=notes,
    )  # fmt: skip
    return FeaturesResult(
        record,
        tables={name: part["scores"] for name, part in parts.items()},
        figures=_figures(settings, data, parts, config),
    )


def _figures(settings: FeaturesSettings, data: Any, parts: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """What the figures are drawn from, with their captions."""
    names = [str(data.class_name(c)) for c in data.classes]
    what = f"{data.name}, {' vs '.join(names) if len(names) == 2 else f'{len(names)} classes'}"
    threat_text = f"{settings.feature_attack.upper()} {config['norm']} eps={pixel_radius(config['eps'])}"
    label = data.y_test[settings.image_index]
    image_text = f"held-out image {settings.image_index} (class {data.class_name(int(label))})"
    n_val, n_eval = config["validation_points"], config["evaluation_points"]
    return {
        "panels": [(name, part["scores"]) for name, part in parts.items()],
        "subtitle": f"{what}: {config['n_train']} train, {n_val} held out; {threat_text}",
        "non_robust_below": settings.non_robust_below,
        "image": data.x_test[settings.image_index],
        "gallery": [part["gallery"] for part in parts.values()],
        "gallery_text": f"{what}: gradients of the top features' scores for {image_text}",
        "strips": [part["strip"] for part in parts.values()],
        "strip_text": f"useful but non-robust features (robustness <= {settings.non_robust_below:g}), earliest and "
        f"latest; u = usefulness, r = robustness; {image_text}",
        # r = n (all the features, the full machine) is named "all (n)" on the figure's axis
        "curves": [(*part["curve"], data.x_train.shape[0]) for part in parts.values() if part["curve"] is not None],
        "curve_text": f"{what}: ranked on {n_val}, evaluated on {n_eval} held-out points; "
        f"{config['norm']} eps={pixel_radius(config['eps'])}, PGD-{config['robust_steps']}",
    }
