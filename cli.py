"""ntkrobust command line: parse, call the packages, write outputs.

    ntkrobust attack   --data digits --arch fc2 --method fgsm --out runs/digits-fc2
    ntkrobust make-npz --data mnist --data-root DIR --from-test-split --n-train 1000 --out mnist.npz

Every command writes into ``--out`` atomically (files are staged, then renamed into place), so
a failure leaves nothing half-written. Bad input prints one line on stderr and exits with
status 2. Heavy imports (JAX, neural-tangents, torch) happen inside the commands, so
``ntkrobust --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from fractions import Fraction
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

PROG = "ntkrobust"
ARCHITECTURES = ("fc1", "fc2", "fc3", "fc4", "fc5", "conv1", "conv2", "two-layer")  # = kernels.ARCHITECTURES
METHODS = ("fgsm", "pgd", "taylor-l1", "taylor-sum")  # = kernels.adversarial.METHODS

#: Standard threat models (eps, PGD step, PGD steps) by image type and norm: MNIST-like
#: grey-scale images use Madry et al.'s ℓ∞ 0.3 / 0.01 / 40, colour images CIFAR-10's
#: 8/255 / 2/255 / 10; ℓ2 uses ε = 2.0 (grey) / 0.5 (colour, RobustBench) with step 2.5ε/steps.
STANDARD_THREATS = {
    ("grey", "linf"): (0.3, 0.01, 40),
    ("colour", "linf"): (8 / 255, 2 / 255, 10),
    ("grey", "l2"): (2.0, 0.125, 40),
    ("colour", "l2"): (0.5, 0.125, 10),
}


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


def _number(text: str) -> float:
    """A float, 'inf', or a fraction such as 8/255."""
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _class_list(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if len(items) < 2:
        raise argparse.ArgumentTypeError(f"--classes needs at least two comma-separated classes, got {text!r}")
    return items


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", help="digits (default, offline), mnist, cifar10, or a path to an .npz")
    g.add_argument("--data-root", type=Path, help="folder holding the mnist / cifar10 files")
    g.add_argument("--download", action="store_true", help="download mnist / cifar10 into --data-root (online)")
    g.add_argument(
        "--from-test-split",
        action="store_true",
        help="use only the official test split, cut into train (--n-train) and test (the rest)",
    )
    g.add_argument("--classes", type=_class_list, help="task classes, ids or names: 'a,b' is a binary task")
    g.add_argument("--n-train", type=_positive_int, help="class-balanced training subset size (default: all)")
    g.add_argument("--n-test", type=_positive_int, help="class-balanced test subset size (default: all)")
    g.add_argument("--seed", type=int, default=0, help="seed of subsets and random starts (default 0)")


def _add_output_flags(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument("--out", type=Path, required=True, help=what)
    p.add_argument("--force", action="store_true", help="overwrite an existing, non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Adversarial robustness through neural tangent kernels.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "attack",
        help="black-box NTK attack: adversarial examples from the analytic kernel alone",
        description="Craft adversarial examples against the infinite-width NTK machine of an "
        "architecture (Tsilivis & Kempe eq. 7-8) and report its clean and robust accuracy.",
    )
    _add_data_flags(p)
    g = p.add_argument_group("kernel machine")
    g.add_argument("--arch", default="fc2", choices=ARCHITECTURES, help="infinite-width architecture (default fc2)")
    g.add_argument("--time", type=_number, default=math.inf, help="training time t of eq. 7 (default inf)")
    g.add_argument("--ridge", type=_number, default=0.0, help="ridge relative to tr(Θ)/n (default 0)")
    g.add_argument("--learning-rate", type=_number, default=1.0, help="η of eq. 7 (default 1)")
    g.add_argument(
        "--gradient",
        default="auto",
        choices=("auto", "autodiff", "closed-form"),
        help="input gradients: closed form (supp. eq. 9, two-layer only) or autodiff (default auto)",
    )
    g.add_argument(
        "--precision",
        default="float64",
        choices=("float64", "float32"),
        help="arithmetic of test-time kernel rows and gradients; the Gram matrix is always float64 (default float64)",
    )
    g.add_argument("--cache-dir", type=Path, help="Gram-matrix cache (default $NTKROBUST_CACHE or ~/.cache/ntkrobust)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the Gram-matrix cache")
    g = p.add_argument_group("attack")
    g.add_argument("--method", default="fgsm", choices=METHODS, help="attack (default fgsm)")
    g.add_argument("--norm", default="linf", choices=("linf", "l2"), help="threat model (default linf)")
    g.add_argument("--eps", type=_number, help="radius in pixel units, e.g. 0.3 or 8/255 (default: standard)")
    g.add_argument("--step", type=_number, help="PGD step size (default: standard, scaled with --eps)")
    g.add_argument("--steps", type=_positive_int, help="PGD steps (default: 40 grey-scale, 10 colour)")
    g.add_argument("--no-random-start", action="store_true", help="start PGD at x instead of a random point")
    _add_output_flags(p, what="output folder: adversarial.npz, results.json")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser(
        "make-npz",
        help="write a dataset (after --classes / subsets / --from-test-split) as an .npz",
        description="Resolve the data flags and save the result as an .npz that --data accepts.",
    )
    _add_data_flags(p)
    _add_output_flags(p, what="the .npz file to write")
    p.set_defaults(func=cmd_make_npz)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return int(args.func(args))
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# -- shared helpers -----------------------------------------------------------------------


def _load_data(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from bridge.data import DataError, load_dataset

    try:
        return load_dataset(
            args.data,
            root=args.data_root,
            classes=args.classes,
            n_train=args.n_train,
            n_test=args.n_test,
            seed=args.seed,
            download=args.download,
            from_test_split=args.from_test_split,
        )
    except DataError as err:
        raise UsageError(str(err)) from None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("ntkrobust", "numpy", "jax", "jaxlib", "neural-tangents", "scikit-learn", "torch", "torchvision"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} exists and is not empty (use --force to overwrite)")


class _StagedOutput:
    """Files written into a hidden staging folder beside ``out`` and moved in on ``commit``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))

    def path(self, name: str) -> Path:
        return self.stage / name

    def commit(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for f in sorted(self.stage.iterdir()):
            os.replace(f, self.out / f.name)
        self.stage.rmdir()

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)


def _json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats (t = inf) become the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


# -- attack ---------------------------------------------------------------------------------


def _resolve_threat(args: argparse.Namespace, channels: int) -> tuple[float, float, int]:
    kind = "grey" if channels == 1 else "colour"
    std_eps, std_step, std_steps = STANDARD_THREATS[(kind, args.norm)]
    eps = std_eps if args.eps is None else args.eps
    steps = std_steps if args.steps is None else args.steps
    step = (std_step * eps / std_eps) if args.step is None else args.step
    if not math.isfinite(eps) or eps < 0:
        raise UsageError(f"--eps must be a finite number >= 0, got {eps}")
    if args.norm == "linf" and eps > 1:
        raise UsageError(f"--eps {eps:g} exceeds the [0, 1] pixel range (pixel units: did you mean {eps:g}/255?)")
    if not math.isfinite(step) or step <= 0:
        raise UsageError(f"--step must be a finite number > 0, got {step}")
    return eps, step, steps


def cmd_attack(args: argparse.Namespace) -> int:
    if not (args.time >= 0):
        raise UsageError(f"--time must be >= 0 or inf, got {args.time}")
    if not (math.isfinite(args.ridge) and args.ridge >= 0):
        raise UsageError(f"--ridge must be a finite number >= 0, got {args.ridge}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise UsageError(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    if args.gradient == "closed-form" and args.arch != "two-layer":
        raise UsageError(f"--gradient closed-form exists only for two-layer, not {args.arch}")
    _check_out_dir(args.out, args.force)
    clock = {"start": time.perf_counter()}
    data = _load_data(args)
    eps, step, steps = _resolve_threat(args, data.image_shape[0])
    clock["data"] = time.perf_counter()

    from attacks import ThreatModel, perturbation_norms, robust_accuracy
    from kernels import fit_kernel_machine, get_architecture
    from kernels.adversarial import AttackConfig, craft_adversarial
    from kernels.gram import default_cache_dir, gram_cache_path

    arch = get_architecture(args.arch)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    cache_hit = cache_dir is not None and gram_cache_path(arch, data.x_train, None, cache_dir).exists()
    progress = _progress(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        machine = fit_kernel_machine(
            arch,
            data.x_train,
            data.y_train,
            classes=data.classes,
            time=args.time,
            ridge=args.ridge,
            learning_rate=args.learning_rate,
            gradient=args.gradient,
            cache_dir=cache_dir,
            precision=args.precision,
            progress=progress,
        )
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if args.method == "pgd" and step * steps < eps:
        notes.append(
            f"PGD can move at most step*steps = {step * steps:.4g} from its start, less than eps = {eps:.4g}: "
            "raise --steps or --step to use the whole budget"
        )
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    clock["machine"] = time.perf_counter()

    clean_pred = machine.predict(data.x_test)
    config = AttackConfig(
        method=args.method,
        threat=ThreatModel(norm=args.norm, eps=eps),
        step=step,
        steps=steps,
        random_start=not args.no_random_start,
        seed=args.seed,
    )
    x_adv = craft_adversarial(machine, data.x_test, data.y_test, config, progress=progress)
    clock["attack"] = time.perf_counter()
    adv_pred = machine.predict(x_adv)
    sizes = perturbation_norms(x_adv, data.x_test)

    iterative = args.method == "pgd"
    results = {
        "command": "attack",
        "clean_accuracy": robust_accuracy(clean_pred, data.y_test),
        "robust_accuracy": robust_accuracy(adv_pred, data.y_test),
        "config": {
            "data": args.data,
            "data_root": str(args.data_root) if args.data_root else None,
            "from_test_split": args.from_test_split,
            "classes": list(data.classes),
            "n_train": int(data.x_train.shape[0]),
            "n_test": int(data.x_test.shape[0]),
            "arch": args.arch,
            "time": args.time,
            "ridge": args.ridge,
            "learning_rate": args.learning_rate,
            "gradient": machine.gradient,
            "precision": machine.precision,
            "method": args.method,
            "norm": args.norm,
            "eps": eps,
            "step": step if iterative else None,
            "steps": steps if iterative else 1,
            "random_start": (not args.no_random_start) if iterative else False,
        },
        "seed": args.seed,
        "dataset": data.describe(),
        "kernel": {
            "architecture": arch.fingerprint(),
            "description": arch.description,
            "outputs": machine.n_outputs,
            "condition_number": machine.condition_number,
            "dropped_directions": machine.dropped_directions,
            "gram_cache": "off" if cache_dir is None else ("hit" if cache_hit else "miss"),
        },
        "perturbation": {
            "linf_max": float(sizes["linf"].max()),
            "l2_mean": float(sizes["l2"].mean()),
        },
        "warnings": notes,
        "seconds": {
            "data": clock["data"] - clock["start"],
            "kernel_machine": clock["machine"] - clock["data"],
            "attack": clock["attack"] - clock["machine"],
        },
        "versions": _versions(),
        "argv": args.argv,
    }

    import numpy as np

    staged = _StagedOutput(args.out)
    try:
        with open(staged.path("adversarial.npz"), "wb") as f:
            np.savez_compressed(f, x_adv=x_adv.astype(np.float32), x=data.x_test, y=data.y_test)
        _write_json(staged.path("results.json"), results)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    print(
        f"{arch.name} NTK machine on {data.name} ({results['config']['n_train']} train, "
        f"{results['config']['n_test']} test): clean accuracy {results['clean_accuracy']:.3f}, "
        f"{args.method} {args.norm} eps={eps:.4g}: robust accuracy {results['robust_accuracy']:.3f} -> {args.out}"
    )
    return 0


# -- make-npz -------------------------------------------------------------------------------


def cmd_make_npz(args: argparse.Namespace) -> int:
    if args.out.suffix != ".npz":
        raise UsageError(f"--out must name an .npz file, got {args.out}")
    if args.out.exists() and not args.force:
        raise UsageError(f"--out {args.out} exists (use --force to overwrite)")
    from bridge.data import save_dataset_npz

    data = _load_data(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.out.name}.", suffix=".partial", dir=args.out.parent)
    os.close(fd)
    try:
        save_dataset_npz(data, Path(tmp))
        os.replace(tmp, args.out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    sizes = f"{data.x_train.shape[0]} train, {data.x_test.shape[0]} test"
    print(f"{data.name}: {sizes}, classes {list(data.classes)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
