"""``transfer``: black-box NTK attacks against trained nets. Adversarial examples from the NTK
machines of analytic architectures (before any training, TK sec. 3.2) and from empirical-NTK
surrogates (a kernel machine on the eNTK of nets at initialisation, supp. B) attack trained target
nets, beside each net's own white-box attack and random-sign noise of the same ε; every net's
own examples also attack every other net (transferability τ, LOO sec. 5); examples saved by an
earlier run (``--examples``: ``attack``'s adversarial.npz, ``transfer``'s examples.npz) attack
them as further black-box sources (``_saved_examples``).

Outputs: ``results.json``, ``transfer.png``, ``transferability.png`` (LOO fig. 3, when run
folders give a series), ``examples.npz``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ntkrobust._numbers import pixel_radius
from ntkrobust._progress import progress_iter
from ntkrobust.attacks.spec import NET_METHODS
from ntkrobust.studies._base import (
    UNKEYED_AT_DEFAULT,
    Clock,
    StagedOutput,
    StudyError,
    StudyResult,
    changed_flags,
    checked_together,
    envelope,
    number_text,
    warn,
)
from ntkrobust.studies._common import (
    DataSettings,
    MachineSettings,
    ThreatSettings,
    check_counts,
    check_distinct_files,
    check_ridge,
    check_seed_count,
    check_unique,
    file_key,
    load_targets,
    torch_device,
    training_subset,
)
from ntkrobust.studies._saved_examples import KIND, check_example_files, saved_examples


@dataclass(frozen=True)
class TransferSettings:
    target: tuple[str, ...]  # checkpoints of this tool, TorchScript / .pt2 files, MODEL[:WIDTH]=STATE_DICT
    source: tuple[str, ...] = ()  # nets whose white-box examples attack the targets (same forms)
    trust_model_code: bool = False  # load TorchScript / .pt2 targets and sources (their loading runs code)
    data: DataSettings = field(default_factory=DataSettings)
    kernel_arch: tuple[str, ...] | None = None  # default fc2 unless surrogates or saved examples are given
    surrogate: tuple[str, ...] = ()  # MODEL[:WIDTH] of empirical-NTK surrogates
    kernel_n: int | None = None
    surrogate_nets: int = 1
    surrogate_ridge: float = 0.01
    surrogate_n: int = 500
    device: str = "auto"
    machine: MachineSettings = field(default_factory=MachineSettings)
    method: str = "fgsm"
    threat: ThreatSettings = field(default_factory=ThreatSettings)
    # .npz files of examples made by an earlier run: black-box sources (studies._saved_examples)
    examples: tuple[str, ...] = field(default=(), metadata=UNKEYED_AT_DEFAULT)

    COUNTS: ClassVar[dict[str, int]] = {
        "kernel_n": 1,
        "surrogate_nets": 1,
        "surrogate_n": 1,
    }  # checked by check_counts, as the parser does


@dataclass
class TransferResult(StudyResult):
    arrays: dict[str, np.ndarray]
    figures: dict[str, Any]

    def write_files(self, staged: StagedOutput) -> None:
        from ntkrobust import plots

        with open(staged.path("examples.npz"), "wb") as f:
            np.savez_compressed(f, **self.arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
        matrix, subtitle = self.record["matrix"], self.figures["subtitle"]
        plots.transfer_heatmap(
            matrix["rows"],
            matrix["columns"],
            np.asarray(matrix["accuracy"]),
            staged.path("transfer.png"),
            transferability=(matrix["transferability_columns"], np.asarray(matrix["transferability"], dtype=float)),
            subtitle=subtitle,
            own_column="own white-box",  # a target's column as a source repeats it: drawn once
        )
        if self.figures["curves"]:
            plots.transferability_curves(
                self.figures["curves"],
                staged.path("transferability.png"),
                subtitle=subtitle + f"; target {matrix['rows'][0]}",
            )

    def summary(self) -> str:
        method = self.record["config"]["attack"]["method"]
        black_box = [s["name"] for s in self.record["sources"] if s["kind"] != "white-box"]
        lines = []
        for r in self.record["targets"]:
            black = ", ".join(f"{n} {r['transfer_accuracy'][n]:.3f}" for n in black_box)
            tau = ", ".join(f"{n} {number_text(r['transferability'].get(n), 2)}" for n in black_box)
            lines.append(
                f"{r['name']}: clean {r['clean_accuracy']:.3f}, own {method} {r['white_box_accuracy']:.3f}, "
                f"random sign {r['random_accuracy']:.3f}" + (f", {black}; tau {tau}" if black else "")
            )
        return "\n".join(lines)


def _surrogate_configs(settings: TransferSettings, data: Any) -> dict[str, Any]:
    """The network config of every ``--surrogate`` MODEL[:WIDTH], checked against the data
    before any compute."""
    from ntkrobust.bridge.models import ModelError, check_fits, check_memory, model_config, parse_model_name

    check_unique(list(settings.surrogate), "--surrogate", "a surrogate")
    check_seed_count(settings.data.seed, settings.surrogate_nets, "--surrogate-nets")
    configs = {}
    for spec in settings.surrogate:
        try:
            name, width = parse_model_name(spec)
            config = model_config(name, data.image_shape, len(data.classes), width=width, seed=settings.data.seed)
            check_fits(config, data.image_shape)
            check_memory(config, copies=settings.surrogate_nets)  # the surrogate holds them all at once
            configs[spec] = config
        except ModelError as err:
            raise StudyError(f"--surrogate {spec}: {err}") from None
    return configs


def _surrogate_examples(
    settings: TransferSettings, config: Any, fit_data: Any, attack: Any, device: Any, progress: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """White-box examples of an empirical-NTK kernel machine (TK supp. B) fitted on the training
    points of ``fit_data``, and its fit record."""
    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.surrogate import fit_empirical_kernel_machine, initial_networks
    from ntkrobust.bridge.transfer import white_box_examples

    data = fit_data  # its test points are the study's
    from ntkrobust.bridge.models import ModelError

    with checked_together():  # before the kernel's collectives: a node whose memory filled stops all
        try:  # checked before any compute; the memory may have filled since
            networks = [net.to(device) for net in initial_networks(config, settings.surrogate_nets)]
        except ModelError as err:
            raise StudyError(str(err)) from None
    machine = fit_empirical_kernel_machine(
        networks,
        data.x_train,
        task_indices(data.y_train, data.classes),
        len(data.classes),
        ridge=settings.surrogate_ridge,
        progress=progress,
    )
    examples = white_box_examples(machine, data.x_test, task_indices(data.y_test, data.classes), attack, device=device)
    fit = machine.fit_info
    assert fit is not None  # set by fit_empirical_kernel_machine
    return examples, {"model": config.to_dict(), "networks": settings.surrogate_nets, **fit.to_dict()}


def _black_box_sources(
    settings: TransferSettings,
    arch_names: Sequence[str],
    surrogates: dict[str, Any],
    fit_data: dict[str, Any],
    attack: Any,
    device: Any,
    progress: bool,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]], list[str], int]:
    """Examples of every NTK machine and eNTK surrogate (``_surrogate_configs``), what made them,
    warnings, kernel n. ``fit_data``: the data with the training points of the NTK machines
    (``kernel``) and of the surrogates (``surrogate``)."""
    from ntkrobust.attacks import robust_accuracy

    kernel_data = fit_data["kernel"]
    x_test, y_test = kernel_data.x_test, kernel_data.y_test
    sources: dict[str, np.ndarray] = {}
    about: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    clock = Clock()  # a stage line per source: four sources of a minute each printed nothing for 3 min
    for arch_name in arch_names:
        from ntkrobust.kernels.adversarial import craft_adversarial  # JAX, only for an NTK machine

        machine, arch_notes, kernel = settings.machine.fit(arch_name, kernel_data, progress)
        warn(notes, *arch_notes)
        examples = craft_adversarial(machine, x_test, y_test, attack, progress=progress)
        clean = machine.predict(x_test)
        name = f"NTK {arch_name}"
        sources[name] = examples
        about[name] = {
            "kind": "ntk",
            **kernel,
            "kernel_clean_accuracy": robust_accuracy(clean, y_test),
            "kernel_robust_accuracy": robust_accuracy(machine.predict(examples), y_test, clean),
        }
        robust = about[name]["kernel_robust_accuracy"]
        clock.mark(name, f"{name}: {len(examples)} black-box examples, the machine's robust accuracy {robust:.3f}")
    for spec, config in surrogates.items():
        name = f"eNTK {spec}"
        sources[name], fit = _surrogate_examples(settings, config, fit_data["surrogate"], attack, device, progress)
        about[name] = {"kind": "entk-surrogate", **fit}
        clock.mark(name, f"{name}: {len(sources[name])} black-box examples")
    return sources, about, notes, int(kernel_data.x_train.shape[0])


def _target_row(target: Any, evaluation: Any, about: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from ntkrobust.attacks import transferability

    random_tau = transferability(evaluation.clean_accuracy, evaluation.random_accuracy, evaluation.white_box_accuracy)
    return {
        "name": target.label,
        **target.description,
        "epoch": target.epoch,
        "clean_accuracy": evaluation.clean_accuracy,
        "white_box_accuracy": evaluation.white_box_accuracy,
        "ntk_attack_accuracy": _accuracies_of(evaluation.sources, about, "ntk"),
        "surrogate_attack_accuracy": _accuracies_of(evaluation.sources, about, "entk-surrogate"),
        "file_attack_accuracy": _accuracies_of(evaluation.sources, about, KIND),
        "random_accuracy": evaluation.random_accuracy,
        "transfer_accuracy": evaluation.sources,
        "transferability": evaluation.transferability(),
        "random_transferability": random_tau if math.isfinite(random_tau) else None,
    }


def _matrix(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, Any]:
    accuracy = [
        [r["clean_accuracy"], r["random_accuracy"], r["white_box_accuracy"]]
        + [r["transfer_accuracy"][c] for c in columns]
        for r in rows
    ]
    tau = np.array([[r["transferability"][c] for c in columns] for r in rows], dtype=np.float64)
    return {
        "rows": [r["name"] for r in rows],
        "columns": ["clean", "random sign", "own white-box", *columns],
        "accuracy": accuracy,
        "transferability_columns": list(columns),
        "transferability": tau.tolist(),
    }


def _architectures(settings: TransferSettings) -> list[str]:
    """The analytic NTK machines' architectures, once the flags and files are checked."""
    arch_names = list(settings.kernel_arch or ([] if settings.surrogate or settings.examples else ["fc2"]))
    check_unique(arch_names, "--kernel-arch", "an architecture")
    check_distinct_files(settings.target, "--target")
    check_distinct_files(settings.source, "--source")
    check_example_files(settings.examples)
    targets = {file_key(spec): spec for spec in settings.target}
    for spec in settings.source:  # its column would repeat the target's own attack as a transfer (τ = 1)
        if file_key(spec) in targets:
            raise StudyError(
                f"--source {spec} is also a --target ({targets[file_key(spec)]}): every target's examples already "
                "attack the others; leave it out of --source"
            )
    check_ridge(settings.surrogate_ridge, "--surrogate-ridge")
    if not settings.surrogate:  # the surrogates' flags alone would go unread
        given = changed_flags(settings, ("surrogate_n", "surrogate_nets", "surrogate_ridge"))
        if given:
            raise StudyError(f"{given[0]} sets the eNTK surrogates: give --surrogate MODEL, or leave it out")
    if not arch_names and settings.kernel_n is not None:
        raise StudyError("--kernel-n sets the analytic NTK machines' training points; none is built: add --kernel-arch")
    settings.machine.check(arch_names)
    return arch_names


def run(settings: TransferSettings, *, progress: bool = False, argv: list[str] | None = None) -> TransferResult:
    """Attack every target with every source; the accuracy and τ matrices."""
    check_counts(settings)
    # under torchrun every process checks its flags and files, then loads its data and nets, each
    # on all of them before a collective (a download waits for rank 0's; the surrogate's kernel):
    # one process that fails stops them all, the first says why
    with checked_together():
        arch_names = _architectures(settings)
    clock = Clock()
    with checked_together():
        data = settings.data.load()
        attack = settings.threat.spec(settings.method, data.image_shape, settings.data.seed, methods=NET_METHODS)
        attack_notes: list[str] = []
        warn(attack_notes, *attack.notes(data.image_shape[0]))
        surrogates = _surrogate_configs(settings, data)
        fit_data = {  # cut once, and refused now rather than after the nets load
            "kernel": training_subset(data, settings.kernel_n, settings.data.seed, "--kernel-n"),
            "surrogate": training_subset(data, settings.surrogate_n, settings.data.seed, "--surrogate-n")
            if surrogates
            else None,
        }

        from ntkrobust.bridge.data import task_indices
        from ntkrobust.bridge.transfer import evaluate_target, random_sign_examples, white_box_examples

        device = torch_device(settings.device)
        specs = [*settings.target, *settings.source]  # one namespace of labels
        nets = load_targets(
            specs, data, device, trust_code=settings.trust_model_code, sources=len(settings.source), notes=attack_notes
        )
        targets, extra_sources = nets[: len(settings.target)], nets[len(settings.target) :]
        x_test, y_test = data.x_test, data.y_test
        made_here = [*(f"NTK {a}" for a in arch_names), *(f"eNTK {s}" for s in surrogates), *(n.label for n in nets)]
        saved, saved_about = saved_examples(settings.examples, x_test, y_test, attack, taken=made_here)
        y_index = task_indices(y_test, data.classes)
        clock.mark("targets", f"data and {len(nets)} net(s) loaded")
    sources, about, notes, kernel_n = _black_box_sources(
        settings, arch_names, surrogates, fit_data, attack, device, progress
    )
    notes[:0] = attack_notes
    sources.update(saved)  # after the ones made here, before the nets' own
    about.update(saved_about)
    clock.mark("black_box", f"black-box examples of {len(sources)} source(s)")
    for i, net in enumerate(progress_iter(nets, "white-box examples", "net", show=progress)):
        sources[net.label] = white_box_examples(net.model, x_test, y_index, attack, device=device)
        about[net.label] = {"kind": "white-box", "is_target": i < len(targets), "net": net.description}
    noisy = random_sign_examples(x_test, attack)
    black_box = [name for name, a in about.items() if a["kind"] != "white-box"]
    rows = [
        _target_row(
            t,
            evaluate_target(
                t.model, x_test, y_index, attack, sources, random_examples=noisy, own_examples=sources[t.label],
                device=device,
            ),
            about,
        )
        for t in progress_iter(targets, "transfer to targets", "target", show=progress)
    ]  # fmt: skip
    clock.mark("evaluation", f"{len(targets)} target(s) against {len(sources)} source(s)")
    metrics = {
        "targets": rows,
        "sources": [{"name": name, **about[name]} for name in sources],
        "matrix": _matrix(rows, list(sources)),
    }
    run_config = {
        **settings.data.config(data),
        "kernel_archs": arch_names,
        "kernel_n": kernel_n,
        **settings.machine.config(),
        "trust_model_code": settings.trust_model_code,
        "surrogates": list(settings.surrogate),
        "surrogate_nets": settings.surrogate_nets,
        "surrogate_n": settings.surrogate_n,
        "surrogate_ridge": settings.surrogate_ridge,
        "examples": list(settings.examples),
        "attack": attack.to_dict(),
        "device": str(device),
    }
    seconds = {
        "data_and_targets": clock.between("start", "targets"),
        "black_box_examples": clock.between("targets", "black_box"),
        "evaluation": clock.between("black_box", "evaluation"),
    }
    record = envelope(
        "transfer", metrics, run_config, seconds=seconds, argv=argv, seed=settings.data.seed,
        dataset=data.describe(), warnings=notes,
    )  # fmt: skip
    steps = f", {attack.steps} steps of {pixel_radius(attack.step)}" if attack.method == "pgd" and attack.step else ""
    subtitle = (
        f"{data.name}, {x_test.shape[0]} test points, {attack.method.upper()} "
        f"eps {pixel_radius(attack.eps)} ({attack.norm}"
        f"{steps}); accuracy = share still correct"
    )
    if saved:  # the attack named above made the other columns; a file's made its own, within this ε
        subtitle += f"; '{KIND}' columns: examples read from files, made by their own attacks within this eps"
    arrays = {"x": x_test, "y": y_test, "random_sign": noisy, **{_array_name(n): sources[n] for n in black_box}}
    curves = transferability_series(targets, extra_sources, rows)
    return TransferResult(record, arrays=arrays, figures={"subtitle": subtitle, "curves": curves})


def _accuracies_of(accuracies: dict[str, float], about: dict[str, dict[str, Any]], kind: str) -> dict[str, float]:
    """Accuracies under the sources of one kind, keyed without the kind's prefix ('NTK fc2' -> 'fc2')."""
    return {name.split(" ", 1)[1]: acc for name, acc in accuracies.items() if about[name]["kind"] == kind}


def _array_name(source: str) -> str:
    """A source name as an .npz key: 'NTK fc2' -> 'ntk_fc2'."""
    return "".join(c if c.isalnum() else "_" for c in source.lower())


def transferability_series(
    targets: Sequence[Any], extra: Sequence[Any], rows: Sequence[dict[str, Any]]
) -> list[tuple[str, list[int], list[float]]]:
    """LOO fig. 3: τ against the first target of the net sources from run folders, one series per
    dynamics (a standard run by epoch; linearized / centered runs by spawn epoch, each at its
    latest checkpoint); series of at least two points."""
    latest: dict[tuple[str, int], tuple[int, float]] = {}
    for net in [*targets[1:], *extra]:
        if net.curve is None:
            continue
        epoch, tau = net.epoch or 0, rows[0]["transferability"][net.label]
        if net.curve not in latest or latest[net.curve][0] <= epoch:
            latest[net.curve] = (epoch, tau)
    series: dict[str, list[tuple[int, float]]] = {}
    for (name, position), (_, tau) in sorted(latest.items()):
        series.setdefault(name, []).append((position, tau))
    return [
        (name, [p for p, _ in points], [t for _, t in points]) for name, points in series.items() if len(points) > 1
    ]
