"""``attack``: black-box adversarial examples from the analytic NTK alone (Tsilivis & Kempe
sec. 3, eq. 7-8), and the NTK machine's clean and robust accuracy under them.

Outputs: ``adversarial.npz`` (x_adv, x, y), ``results.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ntkrobust._numbers import pixel_radius
from ntkrobust.studies._base import Clock, StagedOutput, StudyResult, envelope, warn
from ntkrobust.studies._common import DataSettings, MachineSettings, ThreatSettings, check_counts


@dataclass(frozen=True)
class AttackSettings:
    data: DataSettings = field(default_factory=DataSettings)
    arch: str = "fc2"
    machine: MachineSettings = field(default_factory=MachineSettings)
    method: str = "fgsm"
    threat: ThreatSettings = field(default_factory=ThreatSettings)


@dataclass
class AttackResult(StudyResult):
    x_adv: np.ndarray
    x: np.ndarray
    y: np.ndarray
    description: str

    def write_files(self, staged: StagedOutput) -> None:
        with open(staged.path("adversarial.npz"), "wb") as f:
            np.savez_compressed(f, x_adv=self.x_adv.astype(np.float32), x=self.x, y=self.y)

    def summary(self) -> str:
        return self.description


def run(settings: AttackSettings, *, progress: bool = False, argv: list[str] | None = None) -> AttackResult:
    """Fit the NTK machine of ``settings.arch`` and attack it on the test split."""
    check_counts(settings)
    settings.machine.check([settings.arch])
    clock = Clock()
    data = settings.data.load()
    seed = settings.data.seed
    spec = settings.threat.spec(settings.method, data.image_shape, seed)
    notes: list[str] = []
    warn(notes, *spec.notes(data.image_shape[0]))
    clock.mark("data", f"data: {data.name}, {data.x_train.shape[0]} train, {data.x_test.shape[0]} test")

    from ntkrobust.attacks import perturbation_norms, robust_accuracy
    from ntkrobust.kernels.adversarial import craft_adversarial

    machine, fit_notes, kernel = settings.machine.fit(settings.arch, data, progress)
    warn(notes, *fit_notes)
    clock.mark("machine", f"{settings.arch} NTK machine (Gram cache {kernel['gram_cache']})")
    clean_pred = machine.predict(data.x_test)
    x_adv = craft_adversarial(machine, data.x_test, data.y_test, spec, progress=progress)
    clock.mark("attack", f"{spec.method} on {data.x_test.shape[0]} test points")
    adv_pred = machine.predict(x_adv)
    sizes = perturbation_norms(x_adv, data.x_test)
    if spec.eps > 0 and not sizes["linf"].max() > 0:  # a robust accuracy that measures nothing
        warn(
            notes,
            "the attack moved no pixel: the machine's input gradients vanished (a --time near 0 or a large "
            "--ridge scales them below float precision), so the robust accuracy is the clean one",
        )
    attack = {key: value for key, value in spec.to_dict().items() if key != "seed"}
    config: dict[str, Any] = {
        **settings.data.config(data),
        "arch": settings.arch,
        **settings.machine.config(),
        "gradient": machine.gradient,
        **attack,
    }
    record = {
        "clean_accuracy": robust_accuracy(clean_pred, data.y_test),
        "robust_accuracy": robust_accuracy(adv_pred, data.y_test, clean_pred),
        "kernel": kernel,
        "perturbation": {"linf_max": float(sizes["linf"].max()), "l2_mean": float(sizes["l2"].mean())},
    }
    seconds = {
        "data": clock.between("start", "data"),
        "kernel_machine": clock.between("data", "machine"),
        "attack": clock.between("machine", "attack"),
    }
    description = (
        f"{machine.arch.name} NTK machine on {data.name} ({config['n_train']} train, {config['n_test']} test): "
        f"clean accuracy {record['clean_accuracy']:.3f}, {spec.method} {spec.norm} eps={pixel_radius(spec.eps)}: "
        f"robust accuracy {record['robust_accuracy']:.3f}"
    )
    return AttackResult(
        envelope(
            "attack", record, config, seconds=seconds, argv=argv, seed=seed, dataset=data.describe(), warnings=notes
        ),
        x_adv=x_adv,
        x=data.x_test,
        y=data.y_test,
        description=description,
    )
