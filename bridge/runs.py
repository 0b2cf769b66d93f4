"""Training runs on disk (``ntkrobust train --out RUN``) and the kernel dynamics of their tracked eNTKs.

numpy only (no torch, no JAX): reading a run and measuring how its kernel moved needs neither.

A run folder (laid out as ``bridge.runfolder`` describes) holds the history (per-epoch records
under ``"epochs"``, per-tracked-kernel records under ``"kernels"``), the probe (``y`` class ids and
``targets`` output indices of the N probe points) and one kernel file per tracked kernel with the
``clean`` trace eNTK on the probe (C-NTK) and the ``adversarial`` one on its PGD examples
(AE-NTK), each (N, N).

- ``load_run`` reads and validates a run (``RunError``, one line, when it is not one);
- ``kernel_dynamics`` measures a kernel trajectory with ``kernels.metrics``: pairwise distances
  (TK fig. 3 left), velocity and distance to the final kernel (LOO fig. 1a-b), polar coordinates
  of the whole kernel and of its top-k eigenspace (TK fig. 3 right, supp. fig. 8);
- ``dynamics_summary`` gathers what ``plots.dynamics_figures`` draws for one run, as a plain dict;
- ``load_run_groups`` reads the RUNs of ``dynamics``, a folder of ``train --seeds`` as one group
  whose curves are drawn as mean ± std over its seeds (LOO n = 3, RAT), ``group_summary`` its
  summary;
- ``baseline_distance`` measures KD(Θ_t^baseline, Θ_t^run) between two runs at the steps both
  tracked (RAT sec. 5, figs. 5, 7, 9b-c, 17), after ``check_comparable``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust._messages import first_line, name_problem, shown_name
from ntkrobust._numbers import is_real, is_whole, pixel_radius
from ntkrobust.bridge.files import JsonFileError, NpzError, not_a_file, read_json, read_npz
from ntkrobust.bridge.runfolder import HISTORY_FILE, PROBE_FILE, RunFolder
from ntkrobust.kernels import metrics

KINDS = ("clean", "adversarial")
"""The kernels of a tracked step: C-NTK on the clean probe, AE-NTK on its PGD examples."""

ARRAY_KEYS = ("initial_kernel", "final_kernel")
"""The keys of a ``dynamics_summary`` that hold numpy arrays; every other value is JSON-ready."""


class RunError(ValueError):
    """The folder is not a readable training run; the message is one line naming the culprit."""


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingRun:
    """One run folder: its history and, once loaded, its tracked kernels (T of them, by step).

    ``clean_kernels`` / ``adversarial_kernels`` are None until loaded (``load_run(kernels=True)``
    or ``with_kernels()``); ``adversarial_kernels`` stays None when the files hold no AE-NTK.
    """

    path: Path
    label: str
    history: dict[str, Any]
    epochs: list[dict[str, Any]]
    kernel_records: list[dict[str, Any]]
    kernel_epochs: np.ndarray  # (T,) float, = step / steps_per_epoch
    probe_targets: np.ndarray  # (N,) int output indices 0..C-1
    probe_labels: np.ndarray  # (N,) int class ids
    class_names: list[str]
    clean_kernels: list[np.ndarray] | None = None
    adversarial_kernels: list[np.ndarray] | None = None
    #: a run tracked under both BatchNorm statistics, seen under one (``bridge.batchnorm_views``):
    #: "running" or "batch"; None for the run as its history records it first
    statistics: str | None = None
    kernel_suffix: str = ""  # its kernels' keys in the kernel files: "clean" + suffix, ...

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration, flat: ``ntkrobust train`` nests the training settings under
        ``train`` and the linearization under ``linearization``; both are lifted to the top
        (``linearize_from`` is the parent checkpoint), and ``dataset`` is the data set's name."""
        config = self.history.get("config")
        config = dict(config) if isinstance(config, dict) else {}
        train = config.get("train")
        if isinstance(train, dict):
            config = {**config, **train}
        linearization = config.get("linearization")
        if isinstance(linearization, dict):
            config.setdefault("linearize_from", linearization.get("checkpoint"))
        dataset = self.history.get("dataset")
        if isinstance(dataset, dict) and isinstance(dataset.get("name"), str):
            config.setdefault("dataset", dataset["name"])
        return config

    @property
    def mode(self) -> str | None:
        mode = self.config.get("mode")
        return None if mode is None else str(mode)

    @property
    def switch_epoch(self) -> int | None:
        switch = self.config.get("switch_epoch")
        return None if switch is None else int(switch)

    @property
    def probe_size(self) -> int:
        return int(self.probe_targets.shape[0])

    @property
    def kernel_files(self) -> list[Path]:
        return [
            inside_folder(self.path, str(record["file"]), f"kernel file of record {i}")
            for i, record in enumerate(self.kernel_records)
        ]

    def with_kernels(self) -> TrainingRun:
        """This run with its kernels read (itself if they already are)."""
        if self.clean_kernels is not None:
            return self
        clean, adversarial = _read_kernels(self.kernel_files, self.probe_size, self.kernel_suffix)
        return dataclasses.replace(self, clean_kernels=clean, adversarial_kernels=adversarial)


def load_run(path: str | Path, *, kernels: bool = True) -> TrainingRun:
    """Read and validate the run folder ``path``; with ``kernels`` also read every tracked kernel.

    Raises ``RunError`` for a folder that is not a run: no history, unreadable or
    malformed JSON, a missing or unreadable kernel or probe file, one outside the folder,
    kernels that are not real numbers or whose size differs from the probe's, tracked steps
    out of order.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: not a run folder (no such directory)")
    folder = RunFolder(path)
    history_path = folder.history
    if not history_path.is_file():
        reason = not_a_file(history_path)
        raise RunError(
            f"{path}: not a run folder (no {HISTORY_FILE})"
            if reason == "does not exist"
            else f"{history_path} {reason}"
        )
    try:
        history = read_json(history_path)
    except JsonFileError as error:
        raise RunError(f"{history_path}: {error}") from None
    if not isinstance(history, dict):
        raise RunError(f"{history_path}: not a training history (expected a JSON object)")
    epochs = history.get("epochs")
    records = history.get("kernels", [])
    if not isinstance(epochs, list) or not all(isinstance(e, dict) for e in epochs):
        raise RunError(f"{history_path}: not a training history (no list of epoch records under 'epochs')")
    if not isinstance(records, list) or not all(isinstance(r, dict) and "file" in r for r in records):
        raise RunError(f"{history_path}: malformed 'kernels' (expected records with a 'file')")
    _check_epoch_records(epochs, history_path)
    kernel_epochs = _kernel_epochs(records, history, history_path)
    if records:
        targets, labels = _read_probe(inside_folder(path, PROBE_FILE, "probe"))
    else:
        targets = labels = np.zeros(0, dtype=np.int64)
    class_names = _class_names(history, targets, history_path)
    for i, record in enumerate(records):
        _kernel_file(path, record, i)
    run = TrainingRun(
        path=path,
        label=run_label(history, path),
        history=history,
        epochs=epochs,
        kernel_records=records,
        kernel_epochs=kernel_epochs,
        probe_targets=targets,
        probe_labels=labels,
        class_names=class_names,
    )
    return run.with_kernels() if kernels else run


def _kernel_file(folder: Path, record: dict[str, Any], i: int) -> Path:
    """The kernel file that record ``i`` names, inside ``folder`` and a regular file, else ``RunError``."""
    path = inside_folder(folder, str(record["file"]), f"kernel file of record {i}")
    reason = not_a_file(path)
    if reason == "does not exist":
        raise RunError(f"{folder}: missing kernel file {record['file']}")
    if reason:  # a FIFO or a folder: no kernel file, and not a missing one either
        raise RunError(f"{folder}: kernel file {record['file']} {reason}")
    return path


def check_kernel_files(folder: Path, records: Sequence[Any], probe_size: int) -> None:
    """``RunError`` unless every kernel file that the kernel ``records`` of a history name is one
    ``load_run`` reads (inside ``folder``, present, of ``probe_size`` points, real and finite;
    also the keys of a second BatchNorm statistics, ``bridge.batchnorm_views``). One file at a
    time, none kept: ``--resume`` checks the kernels tracked before its checkpoint this way, which
    it cannot take again, before it trains on (``dynamics`` refused such a run only afterwards)."""
    if not all(isinstance(r, dict) and "file" in r for r in records):
        raise RunError(f"{folder}: malformed 'kernels' (expected records with a 'file')")
    for i, record in enumerate(records):
        path = _kernel_file(folder, record, i)
        # a second BatchNorm statistics' kernels too ("batch_statistics": clean_batch, ...)
        statistics = [key.removesuffix("_statistics") for key, value in record.items()
                      if key.endswith("_statistics") and isinstance(value, dict)]  # fmt: skip
        for suffix in ["", *(f"_{mode}" for mode in statistics)]:
            _read_kernels([path], probe_size, suffix)


def load_runs(paths: Sequence[str | Path], *, kernels: bool = True) -> list[TrainingRun]:
    """Several runs, their labels made distinct (a repeated label gets its folder name appended)."""
    runs = [load_run(p, kernels=kernels) for p in paths]
    labels = distinct_labels([run.label for run in runs], [run.path for run in runs])
    return [dataclasses.replace(run, label=label) for run, label in zip(runs, labels, strict=True)]


def distinct_labels(labels: list[str], paths: Sequence[Path]) -> list[str]:
    """``labels`` with a repeated one given its folder name, and numbered if that repeats too."""
    labels = [
        f"{label} ({path.name or path})" if labels.count(label) > 1 else label
        for label, path in zip(labels, paths, strict=True)
    ]
    return [f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def run_label(history: dict[str, Any], path: Path) -> str:
    """The history's ``label``, else "<model> <mode>" from its config, else the folder name."""
    label = history.get("label")
    label = label.strip() if isinstance(label, str) else ""
    if label:
        problem = name_problem(label)
        if problem:  # it goes into legends and the summary line
            raise RunError(f"{path}: its label {shown_name(label)} {problem}")
        return label
    config = history.get("config")
    config = config if isinstance(config, dict) else {}
    model = config.get("model")
    name = model.get("model") if isinstance(model, dict) else model
    parts = [str(p) for p in (name, config.get("mode")) if p]
    return " ".join(parts) or Path(path).name


def kernel_dynamics(kernels: Sequence[np.ndarray], epochs: np.ndarray, *, top_k: int = 20) -> dict[str, Any]:
    """How a kernel trajectory (T kernels, tracked at ``epochs``) moved, as JSON-ready lists.

    Keys, all computed with ``kernels.metrics``:
    - ``epochs`` (T,);
    - ``distance_matrix`` (T, T): d(Θ_s, Θ_t), symmetric with a zero diagonal (TK fig. 3 left);
    - ``velocity`` (T − 1,): d(Θ_t, Θ_{t+1}) / (epoch_{t+1} − epoch_t), LOO's dS/dt per epoch by
      finite differences, plotted at ``velocity_epochs`` (T − 1,), the *midpoints*
      (epoch_t + epoch_{t+1}) / 2 of the intervals (empty lists when T = 1);
    - ``distance_to_final`` (T,): d(Θ_t, Θ_{T−1}), 0 for the last (LOO fig. 1b);
    - ``polar_r`` / ``polar_theta`` (T,): TK eq. 12, r_t = ‖Θ_t − Θ₀‖_F / ‖Θ_f − Θ₀‖_F and θ_t
      the angle (radians) between Θ_t and Θ₀ (TK fig. 3 right);
    - ``top_k`` and ``top_polar_r`` / ``top_polar_theta``: the same for the rank-``top_k``
      truncation of every kernel (TK supp. fig. 8);
    - ``undefined``: {name: reason} for what could not be computed (velocity of a single kernel,
      polar coordinates when Θ_f = Θ₀, the top-k space of a probe smaller than ``top_k``, any
      metric of a zero kernel); those keys are then absent.
    Invalid input (kernels of different shapes, NaN, epochs not strictly increasing) raises ValueError.
    """
    ks = [np.asarray(k, dtype=np.float64) for k in kernels]
    t = np.asarray(epochs, dtype=np.float64).reshape(-1)
    if not ks:
        raise ValueError("kernel_dynamics needs at least one kernel")
    if t.shape != (len(ks),):
        raise ValueError(f"{len(ks)} kernels but {t.shape[0]} epochs")
    if not np.all(np.diff(t) > 0):
        raise ValueError("epochs must be strictly increasing")
    for i, k in enumerate(ks):
        if not np.all(np.isfinite(k)):
            raise ValueError(f"kernel {i} (epoch {t[i]:g}) contains NaN or inf")
    result: dict[str, Any] = {"epochs": t.tolist(), "top_k": int(top_k)}
    undefined: dict[str, str] = {}

    def record(names: tuple[str, ...], compute: Callable[[], tuple[Any, ...]]) -> None:
        try:
            values = compute()
        except metrics.UndefinedMetricError as reason:
            undefined[names[0].removesuffix("_r")] = str(reason)
            return
        for name, value in zip(names, values, strict=True):
            result[name] = np.asarray(value, dtype=np.float64).tolist()

    record(("distance_matrix",), lambda: (metrics.distance_matrix(ks),))
    if len(ks) >= 2:
        record(("velocity",), lambda: (metrics.kernel_velocity(ks, t),))
        if "velocity" in result:
            result["velocity_epochs"] = ((t[:-1] + t[1:]) / 2).tolist()
    else:
        undefined["velocity"] = "kernel velocity needs at least two tracked kernels"
    record(("distance_to_final",), lambda: (metrics.distance_to_final(ks),))
    record(("polar_r", "polar_theta"), lambda: metrics.polar_coordinates(ks))
    n = ks[0].shape[0]
    if n < top_k:
        undefined["top_polar"] = f"the top-{top_k} space needs at least {top_k} probe points, the probe has {n}"
    else:
        record(("top_polar_r", "top_polar_theta"), lambda: metrics.polar_coordinates(ks, top_k=top_k))
    if undefined:
        result["undefined"] = undefined
    return result


def dynamics_summary(run: TrainingRun, *, top_k: int = 20) -> dict[str, Any]:
    """What ``plots.dynamics_figures`` draws for one run, as a plain dict (reads the kernels if needed).

    Keys: ``label``, ``path``, ``mode``, ``switch_epoch`` (int or None), ``milestones`` (the
    epochs after which the learning rate decays), ``linearized`` (bool),
    ``description`` (one line: model, training, probe), ``dataset`` (str or None, from the config's
    ``dataset`` / ``data``), ``model`` ("<name> (width w)" or None), ``eps`` (the config's PGD radius,
    for training and for the AE-NTK's probe attack, or None), ``probe_size``, ``estimator`` (the
    tracked trace kernel's: "exact" or "rademacher:K"),
    ``class_names``, ``probe_targets`` (list of N output indices), ``epochs`` (the history's epoch
    records), ``kernels`` (its kernel records, each with ``epoch``, ``clean``, ``adversarial``,
    ``adversarial_labels`` metric dicts as written), ``kernel_epochs`` (T,),
    ``dynamics`` ({"clean": kernel_dynamics, "adversarial": kernel_dynamics when the AE-NTK was
    tracked}), and the numpy arrays ``initial_kernel`` / ``final_kernel``, the first and last
    clean (N, N) kernels (None without tracked kernels); for one BatchNorm statistics of a run
    tracked under both (``bridge.batchnorm_views``), ``statistics`` ("running" or "batch"). Only
    the ``ARRAY_KEYS`` are not JSON-ready; ``json_summary`` leaves them out.
    """
    run = run.with_kernels()
    config = run.config
    dynamics: dict[str, Any] = {}
    assert run.clean_kernels is not None
    if run.clean_kernels:
        dynamics["clean"] = kernel_dynamics(run.clean_kernels, run.kernel_epochs, top_k=top_k)
        if run.adversarial_kernels:
            dynamics["adversarial"] = kernel_dynamics(run.adversarial_kernels, run.kernel_epochs, top_k=top_k)
    records = [
        {**record, "epoch": float(epoch)}
        for record, epoch in zip(run.kernel_records, run.kernel_epochs.tolist(), strict=True)
    ]
    return {
        "label": run.label,
        "path": str(run.path),
        "mode": run.mode,
        "switch_epoch": run.switch_epoch,
        "milestones": _milestones(config),
        "linearized": config.get("linearize_from") is not None,
        "description": describe_run(run),
        "dataset": _dataset(config),
        "model": _model(config),
        "eps": None if config.get("eps") is None else float(config["eps"]),
        "probe_size": run.probe_size,
        "estimator": _estimator(config),
        "class_names": list(run.class_names),
        "probe_targets": run.probe_targets.tolist(),
        "epochs": run.epochs,
        "kernels": records,
        "kernel_epochs": run.kernel_epochs.tolist(),
        "dynamics": dynamics,
        "initial_kernel": run.clean_kernels[0] if run.clean_kernels else None,
        "final_kernel": run.clean_kernels[-1] if run.clean_kernels else None,
    } | ({} if run.statistics is None else {"statistics": run.statistics})


def _milestones(config: dict[str, Any]) -> list[int]:
    """The epochs after which the run's learning rate decays (``--milestones``; none where the
    configuration does not say them as whole numbers)."""
    milestones = config.get("milestones")
    if not isinstance(milestones, list) or not all(map(is_whole, milestones)):
        return []
    return [int(m) for m in milestones]


def _estimator(config: dict[str, Any]) -> str:
    """How the run tracked its trace kernel (``--estimator``): "exact" for runs from before the
    option, and for a configuration that does not say it as text."""
    tracking = config.get("tracking")
    estimator = tracking.get("estimator") if isinstance(tracking, dict) else None
    return estimator if isinstance(estimator, str) else "exact"


def json_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """A ``dynamics_summary`` (or ``group_summary``) without its numpy arrays, ready for ``json.dump``."""
    plain = {key: value for key, value in summary.items() if key not in ARRAY_KEYS}
    if "seed_runs" in plain:
        plain["seed_runs"] = [json_summary(seed) for seed in plain["seed_runs"]]
    return plain


def describe_run(run: TrainingRun) -> str:
    """One line: "<label>: <model> (width w), <mode> training for E epochs, eps ε, probe of N points"."""
    config = run.config
    parts = [p for p in (_dataset(config), _model(config)) if p]
    mode = run.mode or "?"
    if run.switch_epoch:  # 0: adversarial from the first epoch
        mode = f"standard then {mode} after epoch {run.switch_epoch}"
    if config.get("linearize_from") is not None:
        mode = f"linearized {mode}"
    epochs = config.get("epochs", max((int(e.get("epoch", 0)) for e in run.epochs), default=0))
    parts.append(f"{mode} training for {epochs} epochs")
    if config.get("eps") is not None and _adversarial(run):
        parts.append(f"eps {pixel_radius(float(config['eps']))}")
    parts.append(f"probe of {run.probe_size} points")
    return f"{run.label}: " + ", ".join(parts)


def _model(config: dict[str, Any]) -> str | None:
    """ "<model> (width w)" from a config's model dict (or the model's name as given)."""
    model = config.get("model")
    if isinstance(model, dict):
        if not model.get("model"):
            return None
        width = f" (width {model['width']})" if model.get("width") is not None else ""
        return f"{model['model']}{width}"
    return None if model is None else str(model)


def _dataset(config: dict[str, Any]) -> str | None:
    for key in ("dataset", "data"):
        if isinstance(config.get(key), str) and config[key]:
            return str(config[key])
    return None


def _adversarial(run: TrainingRun) -> bool:
    """Whether the run trained adversarially at some point (its eps then matters)."""
    return run.mode not in (None, "standard") or run.switch_epoch is not None


# -- reading ---------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return value is None or is_real(value)


def _check_epoch_records(epochs: list[dict[str, Any]], where: Path) -> None:
    """Epoch records whose fields have the types ``bridge.experiment`` writes: a number ``epoch``,
    numbers (or null) for the scalars, and ``accuracy`` as {mode: {split: number}}."""
    for i, record in enumerate(epochs):
        bad = [key for key in ("train_loss", "lr", "relative_magnitude") if not _is_number(record.get(key))]
        if not _is_number(record.get("epoch")) or record.get("epoch") is None:
            bad.append("epoch")
        accuracy = record.get("accuracy", {})
        if not isinstance(accuracy, dict) or not all(
            isinstance(scores, dict) and all(_is_number(v) for v in scores.values()) for scores in accuracy.values()
        ):
            bad.append("accuracy")
        if bad:
            raise RunError(f"{where}: epoch record {i} has malformed {', '.join(bad)}")


def _kernel_epochs(records: list[dict[str, Any]], history: dict[str, Any], where: Path) -> np.ndarray:
    steps_per_epoch = history.get("steps_per_epoch")
    epochs, steps = [], []
    for i, record in enumerate(records):
        try:
            step = int(record["step"]) if "step" in record else None
            if record.get("epoch") is not None:
                epoch = float(record["epoch"])
            elif step is not None and steps_per_epoch:
                epoch = step / float(steps_per_epoch)
            else:
                raise KeyError("epoch")
        except (KeyError, TypeError, ValueError) as error:
            raise RunError(f"{where}: kernel record {i} has no usable step/epoch ({first_line(error)})") from None
        if not math.isfinite(epoch):
            raise RunError(f"{where}: kernel record {i} has epoch {epoch}")
        epochs.append(epoch)
        steps.append(step if step is not None else epoch)
    if any(b <= a for a, b in itertools.pairwise(epochs)) or any(b <= a for a, b in itertools.pairwise(steps)):
        raise RunError(f"{where}: kernel records are not in strictly increasing step order")
    return np.asarray(epochs, dtype=np.float64)


def inside_folder(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, or ``RunError`` unless it resolves (symbolic links followed) inside
    ``folder``: the file names in a history or a seeds.json are data, and one such as
    ``../../../etc/passwd`` or an absolute path must not make the tool read a file the user
    never named."""
    path = folder / name
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError, RuntimeError):  # a NUL in the name, a symbolic link loop
        inside = False
    if not inside:
        raise RunError(f"{folder}: the {what}, {name!r}, lies outside this folder")
    return path


def _load_npz(path: Path, keys: Sequence[str], *, required: Sequence[str]) -> dict[str, np.ndarray]:
    if not path.exists():
        raise RunError(f"{path}: missing")
    try:
        return read_npz(path, keys, required=required)
    except NpzError as error:
        raise RunError(f"{path}: {error}") from None


def probe_images(run: str | Path) -> np.ndarray:
    """The probe images (N, C, H, W) of the run folder ``run`` (``RunError`` if unreadable)."""
    path = inside_folder(Path(run), PROBE_FILE, "probe")
    x = _load_npz(path, ("x",), required=("x",))["x"]
    if x.ndim != 4 or 0 in x.shape or not np.issubdtype(x.dtype, np.floating):
        raise RunError(f"{path}: 'x' must be non-empty float images (N, C, H, W), got {x.dtype} {x.shape}")
    if not np.all(np.isfinite(x)):
        raise RunError(f"{path}: the probe images 'x' hold NaN or inf")
    if x.min() < 0 or x.max() > 1:  # every image of the data contract is in [0, 1]
        raise RunError(f"{path}: the probe images 'x' hold values in [{x.min():.3g}, {x.max():.3g}], not in [0, 1]")
    return x


def _read_probe(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = _load_npz(path, ("targets", "y"), required=("targets",))
    targets = arrays["targets"]
    if targets.ndim != 1 or targets.size == 0 or not np.issubdtype(targets.dtype, np.integer):
        raise RunError(f"{path}: 'targets' must be a non-empty 1D int array, got {targets.dtype} {targets.shape}")
    if targets.min() < 0:
        raise RunError(f"{path}: negative output index {targets.min()} in 'targets'")
    labels = arrays.get("y", targets)
    if labels.shape != targets.shape:
        raise RunError(f"{path}: probe size mismatch: {labels.shape[0]} labels 'y' for {targets.shape[0]} targets")
    return targets.astype(np.int64), labels.astype(np.int64)


def _class_names(history: dict[str, Any], targets: np.ndarray, where: Path) -> list[str]:
    names = history.get("class_names")
    needed = int(targets.max()) + 1 if targets.size else 0
    if names is None:
        return [str(i) for i in range(needed)]
    if not isinstance(names, list):
        raise RunError(f"{where}: 'class_names' must be a list")
    if len(names) < needed:
        raise RunError(f"{where}: {len(names)} class names but the probe has output index {needed - 1}")
    model = history.get("config", {}).get("model") if isinstance(history.get("config"), dict) else None
    outputs = model.get("num_classes") if isinstance(model, dict) else None
    # a binary net may have one output for its two classes; 100,000 names kept dynamics busy for minutes
    if is_whole(outputs) and len(names) > max(outputs, 2):
        raise RunError(f"{where}: {len(names)} class names for a net of {outputs} outputs")
    names = [str(n) for n in names]
    for name in names:
        problem = name_problem(name)
        if problem:
            raise RunError(f"{where}: the class name {shown_name(name)} {problem}")
    return names


def _read_kernels(files: Sequence[Path], n: int, suffix: str = "") -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    clean: list[np.ndarray] = []
    adversarial: list[np.ndarray] = []
    for path in files:
        stored = _load_npz(path, [kind + suffix for kind in KINDS], required=("clean" + suffix,))
        arrays = {kind: stored[kind + suffix] for kind in KINDS if kind + suffix in stored}
        for kind, kernel in arrays.items():
            # real numbers only: strings fail isfinite, complex kernels would lose their imaginary
            # part in the cast below, booleans are no kernel
            if kernel.dtype.kind not in "fiu":
                raise RunError(f"{path}: {kind + suffix} kernel has dtype {kernel.dtype}; expected real numbers")
            if kernel.shape != (n, n):
                raise RunError(
                    f"{path}: probe size mismatch: {kind + suffix} kernel of shape {kernel.shape}, probe of {n} points"
                )
            if not np.all(np.isfinite(kernel)):
                raise RunError(f"{path}: {kind + suffix} kernel contains NaN or inf")
        clean.append(arrays["clean"].astype(np.float64))
        if "adversarial" in arrays:
            adversarial.append(arrays["adversarial"].astype(np.float64))
    if adversarial and len(adversarial) != len(clean):
        raise RunError(f"{files[0].parent}: only {len(adversarial)} of {len(clean)} kernel files hold an AE-NTK")
    return clean, adversarial or None
