"""``two-layer``: TK supp. C, wide two-layer ReLU nets (supp. eq. 28) against their NTK through
training. Each net is trained by full-batch gradient descent on the l2 loss and, at logged
epochs, compared (as f − f0) with the closed-form NTK machine at the aligned time: cosine of
loss input-gradients (supp. eq. 30) and the net's accuracy under its own white-box attack, under
the NTK-generated examples and under random-sign noise (TK fig. 4, supp. fig. 1).

Outputs: ``results.json``, ``two_layer.png``, ``gradients.png``, ``gradients.npz``, one
checkpoint per net (``net_wWIDTH_sSEED.pt``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ntkrobust._numbers import pixel_radius
from ntkrobust.attacks.spec import NET_METHODS
from ntkrobust.studies._base import Clock, StagedOutput, StudyError, StudyResult, envelope, number_text, warn
from ntkrobust.studies._common import (
    DataSettings,
    ThreatSettings,
    check_counts,
    check_seed_count,
    check_unique,
    torch_device,
)


@dataclass(frozen=True)
class TwoLayerSettings:
    data: DataSettings = field(default_factory=DataSettings)
    width: tuple[int, ...] = (1000,)
    nets: int = 1  # per width, seeds seed, seed + 1, ...
    epochs: int = 1000
    lr: float = 1e-2
    log_every: int | None = None  # default: epochs 1, 2, 5, 10, 20, 50, ... and the last
    anchor_epoch: int | None = None  # default: epochs / 100 (supp. C anchors at 1e3 of 1e5)
    device: str = "auto"
    method: str = "fgsm"
    threat: ThreatSettings = field(default_factory=ThreatSettings)
    picture_index: int = 0

    COUNTS: ClassVar[dict[str, int]] = {
        "width": 1,
        "nets": 1,
        "epochs": 1,
        "log_every": 1,
        "anchor_epoch": 1,
        "picture_index": 0,
    }  # checked by check_counts, as the parser does


@dataclass
class TwoLayerResult(StudyResult):
    experiment: Any  # bridge.two_layer's result
    figures: dict[str, Any]

    def write_files(self, staged: StagedOutput) -> None:
        from ntkrobust import plots
        from ntkrobust.bridge.checkpoint import save_checkpoint

        result, f = self.experiment, self.figures
        nets = self.record["nets"]
        for (net_config, view), net in zip(result.networks, nets, strict=True):
            save_checkpoint(
                staged.path(net["checkpoint"]), view.cpu(), net_config, epoch=f["epochs"], source="two-layer"
            )
        arrays: dict[str, Any] = {
            "image": f["image"],
            "epochs": np.asarray(f["measured"]),
            "kernel": result.kernel_pictures,
        }
        for net, pictures in zip(result.nets, result.net_pictures, strict=True):
            arrays[f"net_w{net['width']}_s{net['seed']}"] = pictures
        with open(staged.path("gradients.npz"), "wb") as file:
            np.savez_compressed(file, **arrays)
        plots.two_layer_transfer(
            result.nets,
            {"epochs": result.kernel},
            staged.path("two_layer.png"),
            subtitle=f["subtitle"],
            method=f["method"],
            eps=f["eps"],
        )
        plots.gradient_pictures(f["image"], f["rows"], f["shown"], staged.path("gradients.png"), subtitle=f["subtitle"])

    def summary(self) -> str:
        method = self.record["config"]["attack"]["method"]
        return "\n".join(
            f"two-layer width {net['width']} seed {net['seed']} after {self.record['config']['epochs']} epochs: "
            f"gradient cosine {number_text(net['gradient_cosine'], 3)}; accuracy clean {net['clean_accuracy']:.3f}, "
            f"own {method} {net['white_box_accuracy']:.3f}, NTK {method} {net['ntk_attack_accuracy']:.3f}, "
            f"random sign {net['random_accuracy']:.3f}"
            for net in self.record["nets"]
        )


def picture_epochs(epochs: Sequence[int]) -> list[int]:
    """Three measured epochs spread evenly on a log scale, ending at the last (supp. fig. 1b)."""
    if len(epochs) <= 3:
        return list(epochs)
    last = math.log(epochs[-1])
    chosen = [min(epochs, key=lambda e: abs(math.log(e) - last * share)) for share in (1 / 3, 2 / 3, 1.0)]
    return sorted(set(chosen))


def _check(settings: TwoLayerSettings) -> int:
    """Refuse bad settings; the anchor epoch."""
    check_unique(settings.width, "--width", "a width")
    check_seed_count(settings.data.seed, settings.nets, "--nets")
    from ntkrobust.bridge.training import FLOAT32_MAX

    if not (math.isfinite(settings.lr) and 0 < settings.lr <= FLOAT32_MAX):
        raise StudyError(f"--lr must be a finite number > 0 within float32's range, got {settings.lr}")
    anchor = settings.anchor_epoch or max(1, round(settings.epochs / 100))
    if anchor > settings.epochs:
        raise StudyError(f"--anchor-epoch {anchor} is after the last epoch ({settings.epochs})")
    return anchor


def _kernel_at(machine: Any, x_test: np.ndarray, y_test: np.ndarray, spec: Any) -> Any:
    """``t -> KernelAtTime``: the NTK machine at time t, its loss gradients and its examples."""
    from ntkrobust.attacks import robust_accuracy
    from ntkrobust.bridge.two_layer import KernelAtTime
    from ntkrobust.kernels.adversarial import craft_adversarial

    def kernel_at(t: float) -> KernelAtTime:
        at_t = machine.at_time(t)
        examples = craft_adversarial(at_t, x_test, y_test, spec)
        clean = at_t.predict(x_test)
        return KernelAtTime(
            time=t,
            loss_gradient=np.asarray(at_t.loss_gradient(x_test, machine.target_index(y_test))),
            examples=examples,
            clean_accuracy=robust_accuracy(clean, y_test),
            robust_accuracy=robust_accuracy(at_t.predict(examples), y_test, clean),
        )

    return kernel_at


def run(settings: TwoLayerSettings, *, progress: bool = False, argv: list[str] | None = None) -> TwoLayerResult:
    """Train the nets and compare them with their NTK machine at every measured epoch."""
    check_counts(settings)
    anchor = _check(settings)
    clock = Clock()
    data = settings.data.load()
    if settings.picture_index >= data.x_test.shape[0]:
        raise StudyError(f"--picture-index {settings.picture_index} exceeds the {data.x_test.shape[0]} test points")
    spec = settings.threat.spec(settings.method, data.image_shape, settings.data.seed, methods=NET_METHODS)
    from ntkrobust.bridge.models import ModelError, check_memory, model_config
    from ntkrobust.kernels import output_count

    outputs = output_count(len(data.classes))  # the machine's: one ±1 output for a binary task
    for width in settings.width:  # before the NTK machine: a width too large is refused at once
        try:
            # each net is held with its initial copy (f − f₀)
            check_memory(model_config("two-layer", data.image_shape, outputs, width=width), copies=2)
        except ModelError as err:
            raise StudyError(str(err)) from None
    notes: list[str] = []
    warn(notes, *spec.notes(data.image_shape[0]))

    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.two_layer import ACCURACY_KEYS, TwoLayerConfig, log_epochs, two_layer_experiment
    from ntkrobust.kernels import fit_kernel_machine, get_architecture
    from ntkrobust.kernels.alignment import matching_time, theory_time_per_epoch

    device = torch_device(settings.device)
    measured = log_epochs(settings.epochs, settings.log_every)
    config = TwoLayerConfig(
        widths=tuple(settings.width),
        seeds=tuple(settings.data.seed + i for i in range(settings.nets)),
        epochs=settings.epochs,
        measure_at=tuple(measured),
        anchor_epoch=anchor,
        learning_rate=settings.lr,
        picture_index=settings.picture_index,
    )
    # t = 0 only to build the machine: every comparison moves it to an aligned time
    machine = fit_kernel_machine(
        get_architecture("two-layer"), data.x_train, data.y_train, classes=data.classes, time=0.0, progress=progress
    )
    clock.mark("machine", f"data and the two-layer NTK machine ({machine.n_train} train)")
    x_test, y_test = data.x_test, data.y_test
    try:
        result = two_layer_experiment(
            data.x_train,
            machine.targets,
            x_test,
            task_indices(y_test, data.classes),
            config,
            spec,
            match_time=lambda outputs: matching_time(machine, outputs),
            kernel_at=_kernel_at(machine, x_test, y_test, spec),
            device=device,
            progress=progress,
        )
    except (FloatingPointError, ModelError) as err:  # the epoch and learning rate, or the memory: one line
        raise StudyError(str(err)) from None
    clock.mark("experiment", f"{len(result.nets)} net(s) trained and compared at {len(measured)} epochs")
    theory = theory_time_per_epoch(settings.lr, machine.n_train)
    nets = [{**net, "checkpoint": f"net_w{net['width']}_s{net['seed']}.pt"} for net in result.nets]
    metrics = {
        **{key: {f"width {n['width']}, seed {n['seed']}": n[key] for n in result.nets} for key in ACCURACY_KEYS},
        "alignment": {
            "anchor_epoch": anchor,
            "anchor_time": result.anchor_time,
            "time_per_epoch": result.time_per_epoch,
            "theory_time_per_epoch": theory,
            "fitted_over_theory": result.time_per_epoch / theory,
        },
        "kernel": {"architecture": "two-layer", "outputs": machine.n_outputs, "epochs": result.kernel},
        "nets": nets,
    }
    run_config = {
        **settings.data.config(data),
        "widths": list(settings.width),
        "seeds": list(config.seeds),
        "epochs": settings.epochs,
        "lr": settings.lr,
        "loss": "mean l2 to the kernel machine's targets, (1/2n) sum_i |f(x_i) - y_i|^2",
        "measured_epochs": measured,
        "attack": spec.to_dict(),
        "picture_index": settings.picture_index,
        "device": str(device),
    }
    seconds = {
        "data_and_machine": clock.between("start", "machine"),
        "experiment": clock.between("machine", "experiment"),
    }
    record = envelope(
        "two-layer",
        metrics,
        run_config,
        seconds=seconds,
        argv=argv,
        seed=settings.data.seed,
        dataset=data.describe(),
        warnings=notes,
    )
    # an iterated attack's steps: the title's ε is its budget, which the steps may not reach
    iterated = spec.steps > 1 and spec.step
    steps = f"{spec.method.upper()}: {spec.steps} steps of {pixel_radius(spec.step)}; " if iterated else ""
    subtitle = (
        f"{steps}{data.name}, {machine.n_train} train / {x_test.shape[0]} test, full-batch GD lr {settings.lr:g}, "
        f"epoch <-> t anchored at epoch {anchor} (t = {result.time_per_epoch:.3g} x epoch; theory {theory:.3g})"
    )
    return TwoLayerResult(
        record, experiment=result, figures=_figures(settings, result, measured, x_test, spec, subtitle)
    )


def _figures(
    settings: TwoLayerSettings, result: Any, measured: list[int], x_test: np.ndarray, spec: Any, subtitle: str
) -> dict[str, Any]:
    """What the figures and the gradient arrays are drawn from."""
    shown = picture_epochs(measured)
    rows_at = [measured.index(e) for e in shown]
    rows = [
        (f"net, width {n['width']}" + (f", seed {n['seed']}" if settings.nets > 1 else ""), pictures[rows_at])
        for n, pictures in zip(result.nets, result.net_pictures, strict=True)
    ] + [("NTK", result.kernel_pictures[rows_at])]
    return {
        "image": x_test[settings.picture_index],
        "measured": measured,
        "epochs": settings.epochs,
        "shown": shown,
        "rows": rows,
        "subtitle": subtitle,
        "method": settings.method,
        "eps": spec.eps,
    }
