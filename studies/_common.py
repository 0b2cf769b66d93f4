"""Settings groups shared by several studies, and the steps they share: loading the data,
fitting an NTK machine, resolving the attack spec, choosing the torch device and network.

Heavy packages (JAX, neural-tangents, torch) are imported inside the functions, so building
settings (and ``ntkrobust --help``) stays instant.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ntkrobust._messages import class_names_listed
from ntkrobust._numbers import is_whole
from ntkrobust.studies._base import StudyError, changed_flags, flags_do, warn
from ntkrobust.studies._output import check_writable


@dataclass(frozen=True)
class DataSettings:
    """Which data: ``digits`` (offline default), ``mnist``, ``cifar10``, ``cifar100`` or an .npz path, cut to a
    class-balanced, seeded subset (``--classes``, ``--n-train``, ``--n-test``, ``--seed``)."""

    data: str = "digits"
    data_root: Path | None = None
    download: bool = False
    from_test_split: bool = False
    classes: Sequence[int | str] | None = None
    n_train: int | None = None
    n_test: int | None = None
    seed: int = 0

    COUNTS: ClassVar[dict[str, int]] = {"n_train": 1, "n_test": 1, "seed": 0}

    def load(self) -> Any:
        """The ``bridge.data.Dataset``; a bad spec is a ``StudyError``."""
        from ntkrobust.bridge.data import DATASETS, DataError, load_dataset

        check_counts(self)
        classes: Any = self.classes
        if hasattr(classes, "tolist") and not isinstance(classes, Sequence):
            classes = classes.tolist()  # a numpy array of ids
        if classes is not None and (isinstance(classes, str | bytes) or not isinstance(classes, Sequence)):
            # a string would be its letters: '38' the classes 3 and 8
            raise StudyError(f"--classes must be a list of class ids or names, e.g. (3, 8), got {classes!r}")
        rooted = self.data in DATASETS and self.data != "digits"  # digits ships with scikit-learn
        if not rooted and (self.data_root is not None or self.download):
            flag = "--data-root" if self.data_root is not None else "--download"
            raise StudyError(f"{flag} applies to mnist, cifar10 and cifar100, not to {self.data}")
        try:
            return load_dataset(
                self.data,
                root=self.data_root,
                classes=classes,
                n_train=self.n_train,
                n_test=self.n_test,
                seed=self.seed,
                download=self.download,
                from_test_split=self.from_test_split,
            )
        except DataError as err:
            raise StudyError(str(err)) from None

    def config(self, data: Any) -> dict[str, Any]:
        """The data part of a results config, with the sizes actually loaded."""
        return {
            "data": self.data,
            "data_root": str(self.data_root) if self.data_root else None,
            "from_test_split": self.from_test_split,
            "classes": list(data.classes),
            "n_train": int(data.x_train.shape[0]),
            "n_test": int(data.x_test.shape[0]),
        }


#: input-gradient routes of a kernel machine (closed form: supp. eq. 9, two-layer only)
GRADIENTS = ("auto", "autodiff", "closed-form")


@dataclass(frozen=True)
class MachineSettings:
    """The NTK machine of TK eq. 7: training time ``time`` (inf = converged), ``ridge`` relative to
    tr(Θ)/n, learning rate, input-gradient route, test-time precision and the Gram cache."""

    time: float = math.inf
    ridge: float = 0.0
    learning_rate: float = 1.0
    gradient: str = "auto"
    precision: str = "float64"
    cache_dir: Path | None = None
    cache: bool = True

    def check(self, arch_names: Sequence[str]) -> None:
        """Every setting, before any compute; JAX is imported only when ``arch_names`` asks for a
        machine (a transfer run with torch surrogates alone builds none)."""
        check_choice(self.gradient, GRADIENTS, "--gradient")
        if not (self.time >= 0):
            raise StudyError(f"--time must be >= 0 or inf, got {self.time}")
        check_ridge(self.ridge, "--ridge")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise StudyError(f"--learning-rate must be a finite number > 0, got {self.learning_rate}")
        if self.gradient == "closed-form" and any(name != "two-layer" for name in arch_names):
            raise StudyError("--gradient closed-form exists only for two-layer")
        if math.isinf(self.time) and self.learning_rate != MachineSettings.learning_rate:
            raise StudyError(
                "--learning-rate is the η of a finite --time; at --time inf the machine has converged and "
                "does not read it"
            )
        if not arch_names:
            given = self.given()
            if given:  # transfer with --surrogate alone
                raise StudyError(f"{flags_do(given, 'set')} the NTK machines; none is built: add --kernel-arch")
            return
        from ntkrobust.kernels.architectures import ARCHITECTURES
        from ntkrobust.kernels.machine import PRECISIONS

        for name in arch_names:
            check_choice(name, ARCHITECTURES, "--arch")
        check_choice(self.precision, PRECISIONS, "--precision")
        if self.cache:  # a cache folder that cannot be made is found now, not after the compute
            from ntkrobust.kernels.gram import cache_dir_source, default_cache_dir

            what = "--cache-dir" if self.cache_dir else f"the Gram cache of {cache_dir_source()},"
            try:
                check_writable(self.cache_dir or default_cache_dir(), what)
            except StudyError as err:
                remedy = " (or pass --no-cache)" if self.cache_dir else ": set --cache-dir or pass --no-cache"
                raise StudyError(f"{err}{remedy}") from None

    def given(self) -> list[str]:
        """The flags of the settings that differ from their defaults."""
        names = ("time", "ridge", "learning_rate", "gradient", "precision", "cache_dir", "cache")
        return changed_flags(self, names, {"cache": "--no-cache"})

    def config(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "ridge": self.ridge,
            "learning_rate": self.learning_rate,
            "gradient": self.gradient,
            "precision": self.precision,
        }

    def fit(self, arch_name: str, data: Any, progress: bool) -> tuple[Any, list[str], dict[str, Any]]:
        """The kernel machine on ``data``'s training split, its warnings, its kernel record."""
        from ntkrobust.kernels import fit_kernel_machine, get_architecture
        from ntkrobust.kernels.gram import cached_gram, default_cache_dir

        arch = get_architecture(arch_name)
        try:
            arch.check_input((1, *data.image_shape))
        except ValueError as err:
            raise StudyError(str(err)) from None
        cache_dir = (self.cache_dir or default_cache_dir()) if self.cache else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # the cache says what it did: "hit" only for a verified entry (kernels.gram.CacheOutcome)
            gram, gram_cache = cached_gram(arch, data.x_train, cache_dir=cache_dir, progress=progress)
            machine = fit_kernel_machine(
                arch,
                data.x_train,
                data.y_train,
                classes=data.classes,
                time=self.time,
                ridge=self.ridge,
                learning_rate=self.learning_rate,
                gradient=self.gradient,  # closed-form was checked to name two-layer only
                gram=gram,
                precision=self.precision,
                progress=progress,
            )
        notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        kernel = {
            "architecture": arch.fingerprint(),
            "description": arch.description,
            "outputs": machine.n_outputs,
            "condition_number": machine.condition_number,
            "dropped_directions": machine.dropped_directions,
            "gram_cache": gram_cache,
        }
        return machine, notes, kernel


@dataclass(frozen=True)
class ThreatSettings:
    """The threat model and PGD schedule as asked; None takes the standard value of the images
    (``attacks.spec``), the step scaled to ``eps``."""

    norm: str = "linf"
    eps: float | None = None
    step: float | None = None
    steps: int | None = None
    random_start: bool = True

    COUNTS: ClassVar[dict[str, int]] = {"steps": 1}  # checked by check_counts, as the parser does

    def resolve(self, image_shape: tuple[int, ...]) -> tuple[float, float, int]:
        """(eps, PGD step, PGD steps) for images of ``image_shape`` (C, H, W)."""
        from ntkrobust.attacks import NORMS, standard_threat

        check_choice(self.norm, NORMS, "--norm")
        channels = image_shape[0]
        eps = standard_threat(channels, self.norm)[0] if self.eps is None else self.eps
        if not math.isfinite(eps) or eps <= 0:  # eps = 0 is no attack: its PGD step would be 0 too
            raise StudyError(f"--eps must be a finite number > 0 (pixel units), got {eps}")
        # beyond the [0, 1] box's extent every image is within reach: a radius in 0-255 units?
        extent = 1.0 if self.norm == "linf" else math.sqrt(math.prod(image_shape))
        if eps > extent:
            meant = _in_255_units(eps, extent)
            where = (
                "the [0, 1] pixel range"
                if self.norm == "linf"
                else f"{extent:.3g}, the l2 diameter of the [0, 1] box of {'x'.join(map(str, image_shape))} images"
            )
            raise StudyError(f"--eps {eps:g} exceeds {where} (pixel units{meant})")
        return (eps, *pgd_schedule(channels, self.norm, eps, self.step, self.steps, flags=("--step", "--steps")))

    def spec(
        self, method: str, image_shape: tuple[int, ...], seed: int, *, methods: Sequence[str] | None = None
    ) -> Any:
        """The ``attacks.AttackSpec`` of ``method`` (one of ``methods``, default every attack of
        ``attacks.METHODS``) in this threat model."""
        from ntkrobust.attacks import METHODS, AttackSpec

        check_choice(method, METHODS if methods is None else methods, "--method")
        eps, step, steps = self.resolve(image_shape)
        iterative = method == "pgd"
        given = [flag for flag, value in (("--step", self.step), ("--steps", self.steps)) if value is not None]
        if not iterative and given:  # they would go unread
            them = "them" if len(given) > 1 else "it"
            raise StudyError(f"{flags_do(given, 'set')} PGD's schedule; --method {method} takes none: leave {them} out")
        if not iterative and not self.random_start:
            raise StudyError(f"--no-random-start sets where PGD starts; --method {method} starts at x: leave it out")
        return AttackSpec(
            method,
            eps,
            self.norm,  # type: ignore[arg-type]  # checked by the spec
            step=step if iterative else None,
            steps=steps if iterative else 1,
            random_start=self.random_start,
            seed=seed,
        )


def pgd_schedule(
    channels: int, norm: str, eps: float, step: float | None, steps: int | None, *, flags: tuple[str, str]
) -> tuple[float, int]:
    """``attacks.pgd_schedule`` with its refusals phrased for the flags (step, steps) that set them."""
    from ntkrobust.attacks import spec

    check_count(steps, 1, flags[1])  # before the step's refusal, which would be said of the step
    try:
        return spec.pgd_schedule(channels, norm, eps, step, steps)
    except ValueError:
        raise StudyError(f"{flags[0]} must be a finite number > 0, got {step}") from None


def quiet_torch_warnings() -> None:
    """Silence torch's warnings that are not the user's business."""
    # the registry's torch is a CUDA build; on a machine without a GPU it says so at every backward
    warnings.filterwarnings("ignore", message="CUDA initialization")
    # torch's own forward-mode decompositions (first torch.func.jvp) still use torch.jit.script:
    # a DeprecationWarning in torch 2.10, a FutureWarning later, so any category
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")


def torch_device(name: str) -> Any:
    """``auto`` (cuda when available), ``cpu`` or ``cuda`` as a torch device."""
    import torch

    quiet_torch_warnings()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise StudyError("--device cuda: no CUDA device is available here")
    return torch.device(name)


def torch_network(
    data: Any,
    *,
    model: str | None,
    width: int | None,
    checkpoint: Path | None,
    seed: int,
    init: str = "default",
    running_stats: bool = True,
    notes: list[str] | None = None,
) -> tuple[Any, Any]:
    """The registry model (at initialisation) or the checkpoint's, checked against the data (its
    classes too: ``check_task``, warnings in ``notes``)."""
    from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint, trained_classes
    from ntkrobust.bridge.models import ModelError, build_model, check_fits, model_config

    classes = len(data.classes)
    try:
        if checkpoint is not None:
            if width is not None:
                raise StudyError("--width applies to --model; a checkpoint brings its own")
            net, config, payload = load_checkpoint(checkpoint)
            check_one_output_per_class(
                config.num_classes, classes, f"checkpoint {checkpoint}", trained_classes(payload)
            )
            check_task(trained_classes(payload), data, f"--checkpoint {checkpoint}", notes)
        else:
            config = model_config(
                model or "fc2",
                data.image_shape,
                classes,
                width=width,
                seed=seed,
                init=init,
                running_stats=running_stats,
            )
            net = build_model(config)
        check_fits(config, data.image_shape)
    except (ModelError, CheckpointError) as err:
        raise StudyError(str(err)) from None
    return net, config


def check_one_output_per_class(outputs: int, classes: int, what: str, trained: Sequence[str] | None = None) -> None:
    """A net whose kernel or linearization is taken needs one output per class of the data. A
    one-logit binary net (``two-layer`` writes them; ``evaluate`` and ``transfer`` attack them
    through two logits) is told apart from a net of another task, whose classes are named where
    its checkpoint records them (``trained``: ``bridge.checkpoint.trained_classes``)."""
    if outputs == classes:
        return
    if outputs == 1 and classes == 2:
        raise StudyError(
            f"{what} has 1 output, a one-logit binary net (as two-layer writes); this command needs one output per "
            "class, 2 here (evaluate and transfer take it)"
        )
    from ntkrobust.bridge.checkpoint import trained_on

    said = f"{outputs} output" + ("" if outputs == 1 else "s")
    raise StudyError(f"{what} has {said}, the data has {classes} classes{trained_on(trained, outputs)}")


def training_subset(data: Any, n: int | None, seed: int, flag: str) -> Any:
    """``data`` with a class-balanced, seeded subset of ``n`` training points (all if None)."""
    from ntkrobust.bridge.data import DataError, balanced_indices

    if n is not None and n > data.x_train.shape[0]:
        raise StudyError(f"{flag} {n} exceeds the {data.x_train.shape[0]} training points of the data")
    if n is not None and n < len(data.classes):  # a class without points would drop out of the machine
        raise StudyError(f"{flag} {n} is fewer than the {len(data.classes)} classes: each needs a training point")
    if n is None or n == data.x_train.shape[0]:
        return data
    try:
        chosen = balanced_indices(data.y_train, data.classes, n, seed, what=f"{flag} training")
    except DataError as err:
        raise StudyError(str(err)) from None
    return dataclasses.replace(data, x_train=data.x_train[chosen], y_train=data.y_train[chosen])


#: the largest ridge, relative to the Gram matrix's mean eigenvalue: beyond it a machine is its
#: kernel's scale alone, its outputs and their gradients near underflow (1e308 overflowed)
MAX_RIDGE = 1e6


def check_counts(settings: Any) -> None:
    """Refuse a field of ``settings`` (or of the settings inside it) named in its class's
    ``COUNTS`` (field: minimum) whose value, or any value of its tuple, is not a whole number >=
    the minimum (None: not given). The command line's parser takes whole numbers of those minimums
    only (tested to be the same table); a study called from Python met ``range()`` and numpy with
    0, -1 or 2.5 deep inside its compute, some after minutes of it."""
    counts: Mapping[str, int] = getattr(type(settings), "COUNTS", {})
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            check_counts(value)
            continue
        if f.name not in counts:
            continue
        for item in value if isinstance(value, tuple) else (value,):
            check_count(item, counts[f.name], "--" + f.name.replace("_", "-"))


#: The largest count or seed taken: torch's and numpy's generators and ``len(range(n))`` (the
#: progress bars) take no more; 2**63 steps met an OverflowError after the compute had started.
MAX_WHOLE = 2**63 - 1


def check_count(value: Any, minimum: int, flag: str) -> None:
    """Refuse a ``value`` of ``flag`` that is not a whole number from ``minimum`` to ``MAX_WHOLE``
    (None: not given)."""
    if value is not None and (not is_whole(value) or value < minimum):
        raise StudyError(f"{flag} must be a whole number >= {minimum}, got {value!r}")
    if value is not None and int(value) > MAX_WHOLE:
        raise StudyError(f"{flag} must be at most 2**63 - 1, got {value}")


def check_ridge(ridge: float, flag: str) -> None:
    """A ridge relative to the mean eigenvalue (neural-tangents' ``diag_reg``): 0 to ``MAX_RIDGE``."""
    if not (math.isfinite(ridge) and 0 <= ridge <= MAX_RIDGE):
        raise StudyError(f"{flag} must be from 0 to {MAX_RIDGE:g} (relative to the mean eigenvalue), got {ridge}")


def check_choice(value: Any, choices: Sequence[Any], flag: str) -> None:
    """Refuse a value that is not one of ``choices`` (argparse does this for the command line)."""
    if value not in choices:
        raise StudyError(f"{flag} {value!r}: choose one of {', '.join(map(str, choices))}")


def _in_255_units(eps: float, extent: float) -> str:
    """ "; did you mean 8/255?" for a radius beyond the [0, 1] box's ``extent`` that fits it in 0-255 units."""
    return f"; did you mean {eps:g}/255?" if eps / 255 <= extent else ""


def check_linf_eps(eps: float, flag: str) -> None:
    """Refuse an ℓ∞ radius outside (0, 1] pixel units: 0 is no attack (the per-epoch PGD accuracy
    and the AE-NTK need one), above 1 every image is within reach."""
    if not 0 < eps <= 1:
        meant = _in_255_units(eps, 1.0) if eps > 1 else ""
        raise StudyError(f"{flag} must lie in (0, 1] (pixel units), got {eps}{meant}")


def check_seed_count(seed: int, count: int, flag: str) -> None:
    """Refuse ``count`` nets seeded ``seed``, ``seed`` + 1, ... whose last seed is beyond torch's
    2**63 − 1: the first net trained, then the second was refused with a seed never given."""
    last = seed + count - 1
    if last >= 2**63:
        raise StudyError(
            f"{flag} {count} seeds its nets --seed to --seed + {count - 1}, and {last} is beyond 2**63 - 1: "
            f"choose --seed {2**63 - count} or less"
        )


def check_draws(kind: str, flag: str, num_outputs: int) -> None:
    """Refuse ``rademacher:K`` with more draws than the net has outputs: it costs more than the
    exact trace kernel it estimates (K signed outputs against C, and K² numbers per example that
    the memory budget then refuses: 30,000 draws of a 10-output net had taken all 24 GB here)."""
    from ntkrobust.bridge.entk import KernelKind

    parsed = KernelKind.parse(kind)
    if parsed.name == "rademacher" and parsed.index is not None and parsed.index > num_outputs:
        raise StudyError(
            f"{flag} {kind}: {parsed.index} draws cost more than the exact trace kernel they estimate "
            f"(the net's {num_outputs} outputs): give K <= {num_outputs}"
        )


def check_unique(values: Sequence[Any], flag: str, what: str) -> None:
    if len(set(values)) != len(values):
        raise StudyError(f"{flag} repeats {what}: {', '.join(map(str, values))}")


def check_distinct_files(specs: Sequence[str], what: str) -> None:
    """Refuse a net or run named twice (as written or through another path to the same file):
    it would be evaluated, drawn or attacked twice under two labels."""
    seen: dict[str, str] = {}
    for spec in specs:
        try:
            key = file_key(spec)
        except StudyError as error:  # named as every other refusal of this net or run names it
            raise StudyError(f"{what} {error}") from None
        if key in seen:
            raise StudyError(f"{what} {spec} is named twice (also as {seen[key]})")
        seen[key] = spec


def file_key(spec: str) -> str:
    """What a net or run named on the command line is, however written: ``MODEL=`` (if any) and
    the file's resolved path."""
    head, sep, tail = spec.rpartition("=")
    path = Path(tail if sep and not Path(spec).exists() else spec)
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # a loop: RuntimeError, OSError(ELOOP) from Python 3.13
        raise StudyError(f"{spec} is a symbolic link that loops") from None
    return f"{head if sep and not Path(spec).exists() else ''}={resolved}"


def check_task(trained: Sequence[str] | None, data: Any, what: str, notes: list[str] | None = None) -> None:
    """A net's outputs are read as the data's task's classes, in order: a checkpoint of ``train``
    records the classes it was trained on (``bridge.checkpoint.trained_classes``). The same classes
    in another order would read every output as another class (a binary net's labels swapped,
    accepted without a word before): refused. Other classes are a warning in ``notes``: its
    numbers are those of another task, which a user may mean (the same digits from another source
    named otherwise; without ``notes``, only said)."""
    task = [data.class_name(c) for c in data.classes]
    if trained is None or list(trained) == task or len(trained) != len(task):
        return  # a count that differs is no record of these outputs (the net's own were checked)
    if sorted(trained) == sorted(task):
        first = next(i for i, (a, b) in enumerate(zip(trained, task, strict=True)) if a != b)
        raise StudyError(
            f"{what} was trained on the classes ({class_names_listed(trained)}) in that order, and the data's task "
            f"orders them ({class_names_listed(task)}; its output {first} is {trained[first]}, not {task[first]}): "
            "give --classes in the net's order"
        )
    said = (
        f"{what} was trained on the classes ({class_names_listed(trained)}), "
        f"not the data's ({class_names_listed(task)})"
    )
    warn([] if notes is None else notes, f"{said}: its numbers are those of a net of another task")


def load_targets(
    specs: Sequence[str],
    data: Any,
    device: Any,
    *,
    trust_code: bool = False,
    sources: int = 0,
    notes: list[str] | None = None,
) -> list[Any]:
    """The nets of ``specs``, with labels made unique; a bad one stops everything. TorchScript and
    .pt2 files load only with ``trust_code`` (``bridge.targets``). The last ``sources`` specs are
    transfer's ``--source`` nets: their refusals say so. A checkpoint trained on the data's
    classes in another order is refused, one of other classes warned of in ``notes``
    (``check_task``)."""
    from ntkrobust.bridge.targets import TargetError, load_target

    targets: list[Any] = []
    for i, spec in enumerate(specs):
        role = "--source" if i >= len(specs) - sources else "target"
        try:
            target = load_target(
                spec,
                image_shape=data.image_shape,
                num_classes=len(data.classes),
                device=device,
                trust_code=trust_code,
                role=role,
            )
        except TargetError as err:
            raise StudyError(str(err)) from None
        check_task(target.class_names, data, f"{role} {spec}", notes)
        taken = {t.label for t in targets}
        base, i = target.label, 2
        while target.label in taken:
            target.label, i = f"{base} ({i})", i + 1
        targets.append(target)
    return targets
