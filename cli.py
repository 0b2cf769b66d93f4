"""ntkrobust command line: parse, call the packages, write outputs.

    ntkrobust attack   --data digits --arch fc2 --method fgsm --out runs/digits-fc2
    ntkrobust entk     --data digits --model mnist-cnn --n 100 --kind full --out runs/digits-entk
    ntkrobust two-layer --data digits --width 1000 --width 10000 --epochs 1000 --out runs/two-layer
    ntkrobust transfer --data digits --kernel-arch fc2 --target runs/cnn/checkpoints/epoch_010.pt --out runs/transfer
    ntkrobust make-npz --data mnist --data-root DIR --from-test-split --n-train 1000 --out mnist.npz

Every command writes into ``--out`` atomically (files are staged, then renamed into place), so
a failure leaves nothing half-written. Bad input prints one line on stderr and exits with
status 2. Heavy imports (JAX, neural-tangents, torch) happen inside the commands, so
``ntkrobust --help`` is instant.
"""

from __future__ import annotations

import argparse
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
MODELS = (*ARCHITECTURES, "mnist-cnn", "cifar-cnn", "resnet18")  # = bridge.models.MODELS
TRAINING_MODES = ("standard", "fgsm", "pgd", "trades", "fgsm-noise")  # = bridge.training.MODES

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


def _int_at_least(minimum: int):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _int_list(text: str) -> tuple[int, ...]:
    """'50,75' → (50, 75), each at least 1."""
    return tuple(_positive_int(item.strip()) for item in text.split(",") if item.strip())


DEFAULT_ROBUST_R = (1, 2, 5, 10, 20, 50, 100, -1)  # -1: every feature (the full machine)


def _r_list(text: str) -> tuple[int, ...]:
    """'1,5,all' → (1, 5, -1); 'none' → ()."""
    if text.strip().lower() == "none":
        return ()
    values = []
    for item in (t.strip().lower() for t in text.split(",") if t.strip()):
        if item == "all":
            values.append(-1)
            continue
        values.append(_positive_int(item))
    if not values:
        raise argparse.ArgumentTypeError("--robust-r needs at least one value (or 'none')")
    return tuple(values)


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


def _add_machine_flags(g: argparse._ArgumentGroup) -> None:
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


def _add_threat_flags(g: argparse._ArgumentGroup, *, steps_help: str, between: Sequence[Any] = ()) -> None:
    """--norm, --eps, (``between``: extra (args, kwargs) flags), --step, --steps, --no-random-start."""
    g.add_argument("--norm", default="linf", choices=("linf", "l2"), help="threat model (default linf)")
    g.add_argument("--eps", type=_number, help="radius in pixel units, e.g. 0.3 or 8/255 (default: standard)")
    for flag_args, flag_kwargs in between:
        g.add_argument(*flag_args, **flag_kwargs)
    g.add_argument("--step", type=_number, help="PGD step size (default: standard, scaled with --eps)")
    g.add_argument("--steps", type=_positive_int, help=steps_help)
    g.add_argument("--no-random-start", action="store_true", help="start PGD at x instead of a random point")


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
    _add_machine_flags(g)
    g = p.add_argument_group("attack")
    g.add_argument("--method", default="fgsm", choices=METHODS, help="attack (default fgsm)")
    _add_threat_flags(g, steps_help="PGD steps (default: 40 grey-scale, 10 colour)")
    _add_output_flags(p, what="output folder: adversarial.npz, results.json")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser(
        "features",
        help="eigen-features of NTK machines: robustness vs usefulness, pictures, robust-only kernels",
        description="Decompose NTK machines into eigen-features (Tsilivis & Kempe eq. 9), score each "
        "feature's usefulness and robustness on held-out data (supp. A), draw them (fig. 2, fig. 5) and "
        "test kernels built from the most robust features only (supp. D.3).",
    )
    _add_data_flags(p)
    g = p.add_argument_group("kernel machines")
    g.add_argument(
        "--arch",
        action="append",
        choices=ARCHITECTURES,
        help="infinite-width architecture; repeat for several (default fc2)",
    )
    _add_machine_flags(g)
    g = p.add_argument_group("features")
    g.add_argument("--n-features", type=_positive_int, default=100, help="features scored, from the top (default 100)")
    feature_attack = {"default": "fgsm", "choices": ("fgsm", "pgd"), "help": "attack on each feature (default fgsm)"}
    _add_threat_flags(
        g,
        steps_help="PGD steps of --feature-attack pgd (default: standard)",
        between=[(("--feature-attack",), feature_attack)],
    )
    g.add_argument("--image-index", type=int, default=0, help="held-out image whose feature gradients are drawn")
    g.add_argument("--top-k", type=_positive_int, default=5, help="features in the gallery (default 5)")
    g.add_argument(
        "--non-robust-below",
        type=_number,
        default=0.05,
        help="robustness at or below which a useful feature counts as non-robust (default 0.05)",
    )
    g.add_argument(
        "--robust-r",
        type=_r_list,
        default=DEFAULT_ROBUST_R,
        help="r values of the robust-features-only kernels, comma-separated, 'all' = every feature, or "
        "'none' to skip (default 1,2,5,10,20,50,100,all; values above --n-features are dropped)",
    )
    g.add_argument(
        "--robust-steps",
        type=_positive_int,
        default=10,
        help="PGD steps against f'_r, of size --step or 2.5·eps/steps (default 10)",
    )
    _add_output_flags(p, what="output folder: features.csv, PNG figures, results.json")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "entk",
        help="empirical NTK of a torch net (registry model or checkpoint) on data, with kernel metrics",
        description="The empirical NTK of a torch network on a class-balanced set of points, clean (C-NTK) "
        "or on the net's own PGD examples (AE-NTK), with the kernel metrics of kernels/metrics.py and a "
        "class-sorted kernel image.",
    )
    _add_data_flags(p)
    g = p.add_argument_group("network")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--model", help=f"registry model at initialisation (default fc2): {', '.join(MODELS)}")
    which.add_argument("--checkpoint", type=Path, help="a checkpoint written by ntkrobust (rebuilds its own model)")
    g.add_argument("--width", type=_positive_int, help="hidden width / base channels of --model (default: the model's)")
    g.add_argument(
        "--batch-stats",
        action="store_true",
        help="BatchNorm with the statistics of the kernel's points (RAT 'w/o buffer') instead of running ones",
    )
    g = p.add_argument_group("kernel")
    g.add_argument("--n", type=_positive_int, default=100, help="class-balanced points from --split (default 100)")
    g.add_argument("--split", choices=("train", "test"), default="train", help="where the points come from")
    g.add_argument("--kind", default="trace", help="full (N,N,C,C), trace (N,N) or class:C (N,N) (default trace)")
    g.add_argument(
        "--adversarial-eps",
        type=_number,
        help="AE-NTK: the kernel on the net's own PGD examples of this linf radius (pixel units)",
    )
    g.add_argument("--pgd-steps", type=_positive_int, help="PGD steps (default: 40 grey / 10 colour images)")
    g.add_argument("--pgd-step", type=_number, help="PGD step (default: the standard step scaled to the eps)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="compute dtype (default float32)")
    g.add_argument(
        "--memory-budget",
        type=_positive_int,
        help="working memory for Jacobian chunks in MiB, beside the kernel itself (default: 40%% of the free "
        "memory of the device, at least 1024); more memory means fewer passes over the points",
    )
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    _add_output_flags(p, what="output folder: kernel.npz, metrics.json, kernel.png")
    p.set_defaults(func=cmd_entk)

    p = sub.add_parser(
        "train",
        help="train a torch net (standard or adversarial) while tracking its empirical NTK",
        description="SGD training in a standard or adversarial mode (TK supp. E, LOO, RAT), with the empirical "
        "NTK of a fixed probe set on clean inputs (C-NTK) and on PGD examples (AE-NTK) tracked at initialisation "
        "and after every epoch, clean and PGD accuracies per epoch, a checkpoint per epoch, and --resume. "
        "With --linearize-from, trains the linearized (or --centered) network around a checkpoint (LOO sec. 2).",
    )
    _add_data_flags(p)
    g = p.add_argument_group("network")
    g.add_argument(
        "--model", help=f"registry model (default mnist-cnn for 1-channel images, else cifar-cnn): {', '.join(MODELS)}"
    )
    g.add_argument("--width", type=_positive_int, help="hidden width / base channels of --model (default: the model's)")
    g.add_argument(
        "--linearize-from",
        type=Path,
        metavar="CHECKPOINT",
        help="train f_lin = f_θt + J(θ − θt) around this checkpoint's weights θt, BatchNorm frozen (LOO sec. 2)",
    )
    g.add_argument("--centered", action="store_true", help="with --linearize-from: train J(θ − θt) alone (centered)")
    g = p.add_argument_group("training")
    g.add_argument("--mode", default="standard", choices=TRAINING_MODES, help="training mode (default standard)")
    g.add_argument("--epochs", type=_non_negative_int, default=10, help="epochs (default 10)")
    g.add_argument("--lr", type=_number, default=0.01, help="SGD learning rate (default 0.01)")
    g.add_argument("--momentum", type=_number, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=_number, default=0.0, help="SGD weight decay (default 0)")
    g.add_argument(
        "--milestones", type=_int_list, default=(), help="epochs after which the learning rate drops, e.g. 50,75"
    )
    g.add_argument("--gamma", type=_number, default=0.1, help="learning-rate factor at each milestone (default 0.1)")
    g.add_argument("--batch-size", type=_positive_int, default=128, help="mini-batch size (default 128)")
    g.add_argument(
        "--eps", type=_number, help="linf radius of training and evaluation attacks (default: 0.3 grey, 8/255 colour)"
    )
    g.add_argument(
        "--pgd-steps", type=_positive_int, help="PGD steps of pgd / trades training (default: 40 grey, 10 colour)"
    )
    g.add_argument("--pgd-step", type=_number, help="PGD step (default: 0.01 grey, 2/255 colour, scaled to --eps)")
    g.add_argument("--trades-beta", type=_number, default=6.0, help="TRADES robustness weight beta (default 6)")
    g.add_argument(
        "--switch-epoch",
        type=_non_negative_int,
        help="train clean for this many epochs, then in --mode (RAT sec. 5)",
    )
    g = p.add_argument_group("tracking")
    g.add_argument(
        "--track-kernel",
        type=_non_negative_int,
        default=300,
        metavar="N",
        help="class-balanced training points of the tracked eNTKs (default 300; 0: no kernels)",
    )
    g.add_argument(
        "--track-every", type=_positive_int, metavar="STEPS", help="track every STEPS steps, not every epoch"
    )
    g.add_argument(
        "--eval-n",
        type=_positive_int,
        default=500,
        help="class-balanced points per split for the per-epoch PGD accuracy (default 500; clean accuracy uses all)",
    )
    g.add_argument(
        "--eval-pgd-steps",
        type=_positive_int,
        help="PGD steps of the evaluation and AE-NTK (default: 40 grey, 20 colour)",
    )
    g.add_argument(
        "--batchnorm",
        choices=("running", "batch", "both"),
        default="running",
        help="BatchNorm statistics at evaluation: running ('w buffer'), batch ('w/o buffer') or both (RAT sec. 4)",
    )
    g.add_argument("--memory-budget", type=_positive_int, help="eNTK working memory in MiB (default: 40%% of free)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (same configuration)")
    _add_output_flags(p, what="run folder: config.json, history.json, checkpoints/, kernels/")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "dynamics",
        help="figures of how the kernels of training runs moved (TK fig. 3, 6; LOO fig. 1, 4)",
        description="Read the run folders of ntkrobust train and draw, the runs overlaid: kernel-distance "
        "heatmaps, polar trajectories of the whole kernel and of its top-20 space, Frobenius norm and "
        "concentration, kernel velocity and distance to the final kernel, effective rank and mean "
        "specialization, class-sorted kernel images, accuracy curves, the relative magnitude of linearized "
        "runs, and pictures of the top NTK eigenvectors at initialisation and at the end of every run.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders written by ntkrobust train")
    g = p.add_argument_group("eigenvector pictures (LOO sec. 8)")
    g.add_argument(
        "--eigenvectors",
        type=_non_negative_int,
        default=4,
        metavar="K",
        help="top eigenvectors of the probe kernel to picture (default 4; 0: no pictures)",
    )
    g.add_argument("--eigenvector-class", type=_non_negative_int, default=0, help="output whose kernel (default 0)")
    g.add_argument("--eigenvector-steps", type=_positive_int, default=200, help="optimisation steps (default 200)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    _add_output_flags(p, what="output folder: PNG figures and results.json")
    p.set_defaults(func=cmd_dynamics)

    p = sub.add_parser(
        "two-layer",
        help="TK supp. C: wide two-layer nets against their NTK through training (gradient cosine, transfer)",
        description="Train two-layer ReLU nets of supp. eq. 28 (full-batch gradient descent on the l2 loss) and, "
        "at logged epochs, compare each net (as f - f0) with the closed-form NTK machine at the aligned time: "
        "cosine similarity of loss input-gradients (supp. eq. 30) and the net's accuracy under its own white-box "
        "attack, under the NTK-generated examples and under random-sign noise (TK fig. 4, supp. fig. 1).",
    )
    _add_data_flags(p)
    g = p.add_argument_group("networks")
    g.add_argument(
        "--width", type=_positive_int, action="append", help="hidden width m; repeat for several (default 1000)"
    )
    g.add_argument("--nets", type=_positive_int, default=1, help="networks per width, seeds --seed, --seed+1, ...")
    g.add_argument("--epochs", type=_positive_int, default=1000, help="full-batch epochs (default 1000)")
    g.add_argument("--lr", type=_number, default=1e-2, help="gradient-descent learning rate (default 1e-2, supp. C)")
    g.add_argument(
        "--log-every",
        type=_positive_int,
        metavar="EPOCHS",
        help="compare every EPOCHS epochs (default: epochs 1, 2, 5, 10, 20, 50, ... and the last)",
    )
    g.add_argument(
        "--anchor-epoch",
        type=_positive_int,
        help="epoch whose best-matching kernel time fixes the linear epoch <-> t map (default: epochs/100, "
        "as supp. C anchors at epoch 1e3 of 1e5)",
    )
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    g = p.add_argument_group("attack")
    g.add_argument("--method", default="fgsm", choices=("fgsm", "pgd"), help="white-box and NTK attack (default fgsm)")
    _add_threat_flags(g, steps_help="PGD steps (default: 40 grey-scale, 10 colour)")
    g.add_argument("--picture-index", type=_non_negative_int, default=0, help="test point of the gradient pictures")
    _add_output_flags(p, what="output folder: results.json, figures, gradients.npz, one checkpoint per net")
    p.set_defaults(func=cmd_two_layer)

    p = sub.add_parser(
        "transfer",
        help="black-box NTK attacks against trained nets: transfer matrix, transferability tau",
        description="Adversarial examples from the NTK machines of analytic architectures (before any training, "
        "TK sec. 3.2) and from empirical-NTK surrogates (a kernel machine on the eNTK of nets at initialisation, "
        "supp. B), against trained target nets (checkpoints of train / two-layer, TorchScript files, or state "
        "dicts of registry models), beside each net's own white-box attack and random-sign noise of the same "
        "eps; every net's own examples also attack every other net (transferability tau, LOO sec. 5).",
    )
    _add_data_flags(p)
    g = p.add_argument_group("targets and sources")
    g.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="CHECKPOINT",
        help="a net to attack: a checkpoint of this tool, a TorchScript file, or MODEL[:WIDTH]=STATE_DICT; repeat",
    )
    g.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="a net whose white-box examples attack the targets, not itself a target (same forms); repeat",
    )
    g.add_argument(
        "--kernel-arch",
        action="append",
        choices=ARCHITECTURES,
        help="analytic NTK whose machine crafts black-box examples; repeat (default fc2 unless --surrogate)",
    )
    g.add_argument(
        "--surrogate",
        action="append",
        default=[],
        metavar="MODEL[:WIDTH]",
        help="empirical-NTK surrogate: a kernel machine on the eNTK of this registry model at initialisation",
    )
    g.add_argument(
        "--kernel-n", type=_positive_int, help="class-balanced training points of the NTK machines (default: all)"
    )
    g.add_argument("--surrogate-nets", type=_positive_int, default=1, help="initialisations averaged (default 1)")
    g.add_argument(
        "--surrogate-ridge",
        type=_number,
        default=0.01,
        help="ridge of the surrogate relative to tr/(N*C) (default 0.01: an empirical kernel is far worse "
        "conditioned than an analytic one; --ridge sets the NTK machines')",
    )
    g.add_argument(
        "--surrogate-n",
        type=_positive_int,
        default=500,
        help="class-balanced training points of the surrogate (default 500)",
    )
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    g = p.add_argument_group("kernel machines")
    _add_machine_flags(g)
    g = p.add_argument_group("attack")
    g.add_argument("--method", default="fgsm", choices=("fgsm", "pgd"), help="attack of every source (default fgsm)")
    _add_threat_flags(g, steps_help="PGD steps (default: 40 grey-scale, 10 colour)")
    _add_output_flags(p, what="output folder: results.json, transfer.png, examples.npz")
    p.set_defaults(func=cmd_transfer)

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
    from ntkrobust.bridge.data import DataError, load_dataset

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


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from ntkrobust.bridge.files import write_json

    write_json(path, payload)


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


# -- attack ---------------------------------------------------------------------------------


def _standard_threat(channels: int, norm: str) -> tuple[float, float, int]:
    return STANDARD_THREATS[("grey" if channels == 1 else "colour", norm)]


def _pgd_schedule(
    channels: int, norm: str, eps: float, step: float | None, steps: int | None, *, step_flag: str
) -> tuple[float, int]:
    """PGD (step, steps): the given ones, else the standard ones with the step scaled to ``eps``."""
    std_eps, std_step, std_steps = _standard_threat(channels, norm)
    step = (std_step * eps / std_eps) if step is None else step
    if not math.isfinite(step) or step <= 0:
        raise UsageError(f"{step_flag} must be a finite number > 0, got {step}")
    return step, std_steps if steps is None else steps


def _resolve_threat(args: argparse.Namespace, channels: int) -> tuple[float, float, int]:
    eps = _standard_threat(channels, args.norm)[0] if args.eps is None else args.eps
    if not math.isfinite(eps) or eps < 0:
        raise UsageError(f"--eps must be a finite number >= 0, got {eps}")
    if args.norm == "linf" and eps > 1:
        raise UsageError(f"--eps {eps:g} exceeds the [0, 1] pixel range (pixel units: did you mean {eps:g}/255?)")
    step, steps = _pgd_schedule(channels, args.norm, eps, args.step, args.steps, step_flag="--step")
    return eps, step, steps


def _check_machine_args(args: argparse.Namespace, arch_names: Sequence[str]) -> None:
    if not (args.time >= 0):
        raise UsageError(f"--time must be >= 0 or inf, got {args.time}")
    if not (math.isfinite(args.ridge) and args.ridge >= 0):
        raise UsageError(f"--ridge must be a finite number >= 0, got {args.ridge}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise UsageError(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    if args.gradient == "closed-form" and any(name != "two-layer" for name in arch_names):
        raise UsageError("--gradient closed-form exists only for two-layer")


def _fit_machine(args: argparse.Namespace, arch_name: str, data: Any, progress: bool):  # type: ignore[no-untyped-def]
    """The kernel machine of the machine flags, its warnings, and its kernel diagnostics."""
    from ntkrobust.kernels import fit_kernel_machine, get_architecture
    from ntkrobust.kernels.gram import default_cache_dir, gram_cache_path

    arch = get_architecture(arch_name)
    try:
        arch.check_input((1, *data.image_shape))
    except ValueError as err:
        raise UsageError(str(err)) from None
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    cache_hit = cache_dir is not None and gram_cache_path(arch, data.x_train, None, cache_dir).exists()
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
            gradient=args.gradient,  # closed-form was checked to name two-layer only
            cache_dir=cache_dir,
            precision=args.precision,
            progress=progress,
        )
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    kernel = {
        "architecture": arch.fingerprint(),
        "description": arch.description,
        "outputs": machine.n_outputs,
        "condition_number": machine.condition_number,
        "dropped_directions": machine.dropped_directions,
        "gram_cache": "off" if cache_dir is None else ("hit" if cache_hit else "miss"),
    }
    return machine, notes, kernel


def _data_config(args: argparse.Namespace, data: Any) -> dict[str, Any]:
    return {
        "data": args.data,
        "data_root": str(args.data_root) if args.data_root else None,
        "from_test_split": args.from_test_split,
        "classes": list(data.classes),
        "n_train": int(data.x_train.shape[0]),
        "n_test": int(data.x_test.shape[0]),
    }


def _machine_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "time": args.time,
        "ridge": args.ridge,
        "learning_rate": args.learning_rate,
        "gradient": args.gradient,
        "precision": args.precision,
    }


def _write_outputs(out: Path, write) -> None:  # type: ignore[no-untyped-def]
    """``write(staged)`` fills a staging folder; its files move into ``out`` only if all succeed."""
    staged = _StagedOutput(out)
    try:
        write(staged)
        staged.commit()
    except BaseException:
        staged.discard()
        raise


def cmd_attack(args: argparse.Namespace) -> int:
    _check_machine_args(args, [args.arch])
    _check_out_dir(args.out, args.force)
    clock = {"start": time.perf_counter()}
    data = _load_data(args)
    eps, step, steps = _resolve_threat(args, data.image_shape[0])
    clock["data"] = time.perf_counter()

    from ntkrobust.attacks import AttackSpec, perturbation_norms, robust_accuracy
    from ntkrobust.kernels.adversarial import craft_adversarial

    progress = _progress(args)
    machine, notes, kernel = _fit_machine(args, args.arch, data, progress)
    arch = machine.arch
    if args.method == "pgd" and step * steps < eps:
        notes.append(
            f"PGD can move at most step*steps = {step * steps:.4g} from its start, less than eps = {eps:.4g}: "
            "raise --steps or --step to use the whole budget"
        )
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    clock["machine"] = time.perf_counter()

    clean_pred = machine.predict(data.x_test)
    config = AttackSpec(
        method=args.method,
        eps=eps,
        norm=args.norm,
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
        "robust_accuracy": robust_accuracy(adv_pred, data.y_test, clean_pred),
        "config": {
            **_data_config(args, data),
            "arch": args.arch,
            **_machine_config(args),
            "gradient": machine.gradient,
            "method": args.method,
            "norm": args.norm,
            "eps": eps,
            "step": step if iterative else None,
            "steps": steps if iterative else 1,
            "random_start": (not args.no_random_start) if iterative else False,
        },
        "seed": args.seed,
        "dataset": data.describe(),
        "kernel": kernel,
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

    def write(staged: _StagedOutput) -> None:
        with open(staged.path("adversarial.npz"), "wb") as f:
            np.savez_compressed(f, x_adv=x_adv.astype(np.float32), x=data.x_test, y=data.y_test)
        _write_json(staged.path("results.json"), results)

    _write_outputs(args.out, write)
    print(
        f"{arch.name} NTK machine on {data.name} ({results['config']['n_train']} train, "
        f"{results['config']['n_test']} test): clean accuracy {results['clean_accuracy']:.3f}, "
        f"{args.method} {args.norm} eps={eps:.4g}: robust accuracy {results['robust_accuracy']:.3f} -> {args.out}"
    )
    return 0


# -- features -------------------------------------------------------------------------------


def _resolve_r(requested: Sequence[int], n_features: int, n_train: int) -> list[int]:
    """--robust-r values that apply: at most --n-features (the ranked ones), -1 = all n."""
    values = sorted({n_train if r == -1 else r for r in requested if r == -1 or r <= n_features})
    return values


def _feature_captions(scores: Any, indices: Sequence[int]) -> list[str]:
    return [f"#{i} u={scores.usefulness[i]:.2f} r={scores.robustness[i]:.2f}" for i in indices]


def _early_and_late(mask: Any, each: int) -> list[int]:
    """Up to ``each`` of the first and ``each`` of the last features where ``mask`` holds (TK fig. 5)."""
    hits = [int(i) for i in mask.nonzero()[0]]
    return hits if len(hits) <= 2 * each else hits[:each] + hits[-each:]


def cmd_features(args: argparse.Namespace) -> int:
    arch_names = args.arch or ["fc2"]
    if len(set(arch_names)) != len(arch_names):
        raise UsageError(f"--arch repeats an architecture: {', '.join(arch_names)}")
    _check_machine_args(args, arch_names)
    if not (0 <= args.non_robust_below <= 1):
        raise UsageError(f"--non-robust-below must lie in [0, 1], got {args.non_robust_below}")
    _check_out_dir(args.out, args.force)
    clock = {"start": time.perf_counter()}
    data = _load_data(args)
    eps, step, steps = _resolve_threat(args, data.image_shape[0])
    n_train, n_test = data.x_train.shape[0], data.x_test.shape[0]
    if args.n_features > n_train:
        raise UsageError(f"--n-features {args.n_features} exceeds the {n_train} training points (one feature each)")
    if not 0 <= args.image_index < n_test:
        raise UsageError(
            f"--image-index {args.image_index} is out of range: {n_test} held-out images (0..{n_test - 1})"
        )
    r_values = _resolve_r(args.robust_r, args.n_features, n_train)
    # PGD against f'_r: --step if given, else Madry et al.'s 2.5·ε/steps (2/255 for CIFAR's PGD-10).
    robust_step = step if args.step is not None else 2.5 * eps / args.robust_steps
    if args.robust_r and not r_values:
        raise UsageError(f"no --robust-r value is at most --n-features {args.n_features} (or 'all')")

    import numpy as np

    from ntkrobust import plots
    from ntkrobust.attacks import AttackSpec, ThreatModel, robust_accuracy
    from ntkrobust.bridge.data import stratified_halves
    from ntkrobust.kernels.adversarial import craft_adversarial
    from ntkrobust.kernels.features import feature_gradients, feature_scores, robustness_ranking
    from ntkrobust.kernels.robust_only import robust_only_kernels

    progress = _progress(args)
    threat = ThreatModel(norm=args.norm, eps=eps)
    # Features are ranked on one half of the held-out data and robust-only kernels evaluated on
    # the other, so the ranking never sees the points that judge it.
    if r_values:
        val_idx, eval_idx = stratified_halves(data.y_test, args.seed)
    else:
        val_idx, eval_idx = np.arange(n_test), np.arange(0)
    x_val, y_val = data.x_test[val_idx], data.y_test[val_idx]
    image, label = data.x_test[args.image_index], data.y_test[args.image_index]
    clock["data"] = time.perf_counter()

    per_arch: dict[str, Any] = {}
    panels, gallery, strips, curves, tables = [], [], [], [], {}
    notes: list[str] = []
    for name in arch_names:
        t0 = time.perf_counter()
        machine, arch_notes, kernel = _fit_machine(args, name, data, progress)
        notes += [f"{name}: {note}" for note in arch_notes]
        t1 = time.perf_counter()
        clean = machine.predict(x_val)
        adv = machine.predict(craft_adversarial(machine, x_val, y_val, AttackSpec("fgsm", eps, args.norm)))
        scores = feature_scores(
            machine,
            x_val,
            y_val,
            threat,
            n_features=args.n_features,
            attack=args.feature_attack,
            step=step,
            steps=steps,
            random_start=not args.no_random_start,
            seed=args.seed,
            progress=progress,
        )
        t2 = time.perf_counter()
        top = list(range(min(args.top_k, args.n_features)))
        gallery.append(
            (name, feature_gradients(machine, image[None], label[None], top)[0], _feature_captions(scores, top))
        )
        weak = scores.useful_non_robust(args.non_robust_below)
        shown = _early_and_late(weak, 3)
        strip = feature_gradients(machine, image[None], label[None], shown)[0] if shown else np.zeros((0, *image.shape))
        strips.append((name, strip, _feature_captions(scores, shown)))
        panels.append((name, scores))
        robust_only: list[Any] = []
        if r_values:
            robust_only = robust_only_kernels(
                machine,
                robustness_ranking(scores, n_train),
                r_values,
                data.x_test[eval_idx],
                data.y_test[eval_idx],
                threat,
                pgd_step=robust_step,
                pgd_steps=args.robust_steps,
                random_start=not args.no_random_start,
                seed=args.seed,
                progress=progress,
            )
            curves.append((name, robust_only))
        t3 = time.perf_counter()
        tables[name] = scores
        useful = scores.useful()
        head = min(10, args.n_features)
        per_arch[name] = {
            "spearman_index_robustness": scores.spearman_index_robustness(),
            "useful_non_robust_share": float(weak.mean()),
            "useful_non_robust_share_of_useful": float(weak.sum() / useful.sum()) if useful.any() else None,
            "useful_share": float(useful.mean()),
            "mean_robustness_top10": float(scores.robustness[:head].mean()),
            "mean_robustness_rest": float(scores.robustness[head:].mean()) if args.n_features > head else None,
            "chance_usefulness": scores.chance,
            "full_machine": {
                "clean_accuracy": robust_accuracy(clean, y_val),
                "fgsm_accuracy": robust_accuracy(adv, y_val, clean),
            },
            "useful_non_robust_features": [int(i) for i in weak.nonzero()[0]],
            "robust_only": [res.as_dict() for res in robust_only],
            "kernel": kernel,
            "seconds": {"kernel_machine": t1 - t0, "features": t2 - t1, "robust_only": t3 - t2},
        }

    names = [str(data.class_name(c)) for c in data.classes]
    what = f"{data.name}, {' vs '.join(names) if len(names) == 2 else f'{len(names)} classes'}"
    threat_text = f"{args.feature_attack.upper()} {args.norm} eps={eps:.4g}"
    results = {
        "command": "features",
        "architectures": per_arch,
        "config": {
            **_data_config(args, data),
            "arch": arch_names,
            **_machine_config(args),
            "n_features": args.n_features,
            "norm": args.norm,
            "eps": eps,
            "feature_attack": args.feature_attack,
            "step": step if args.feature_attack == "pgd" else None,
            "steps": steps if args.feature_attack == "pgd" else 1,
            "random_start": not args.no_random_start,
            "robust_steps": args.robust_steps,
            "robust_step": robust_step if r_values else None,
            "robust_r": r_values,
            "non_robust_below": args.non_robust_below,
            "image_index": args.image_index,
            "top_k": args.top_k,
            "validation_points": int(val_idx.size),
            "evaluation_points": int(eval_idx.size),
        },
        "definitions": {
            "usefulness": "held-out accuracy of the feature alone (supp. A eq. 1)",
            "robustness": "share of held-out points the feature classifies correctly at x and at its own attack",
            "useful": "usefulness above chance_usefulness, the share of the most frequent class",
            "spearman_index_robustness": "Spearman correlation of eigen-index (0 = largest) and robustness",
        },
        "seed": args.seed,
        "dataset": data.describe(),
        "warnings": notes,
        "seconds": {"data": clock["data"] - clock["start"], "total": time.perf_counter() - clock["start"]},
        "versions": _versions(),
        "argv": args.argv,
    }

    def write(staged: _StagedOutput) -> None:
        for name, scores in tables.items():
            csv = "features.csv" if len(tables) == 1 else f"features-{name}.csv"
            rows = ["index,eigenvalue,usefulness,robustness"] + [
                f"{i},{lam:.17g},{u:.6g},{r:.6g}"
                for i, lam, u, r in zip(
                    scores.index, scores.eigenvalue, scores.usefulness, scores.robustness, strict=True
                )
            ]
            staged.path(csv).write_text("\n".join(rows) + "\n")
        subtitle = f"{what}: {n_train} train, {val_idx.size} held out; {threat_text}"
        plots.robustness_usefulness(
            panels,
            staged.path("robustness_usefulness.png"),
            subtitle=subtitle,
            useful_non_robust_below=args.non_robust_below,
        )
        image_text = f"held-out image {args.image_index} (class {data.class_name(int(label))})"
        plots.feature_gallery(
            image,
            gallery,
            staged.path("feature_gallery.png"),
            subtitle=f"{what}: gradients of the top features' scores for {image_text}",
        )
        plots.feature_gallery(
            image,
            strips,
            staged.path("useful_non_robust.png"),
            subtitle=f"useful but non-robust features (robustness <= {args.non_robust_below:g}), earliest and latest; "
            f"u = usefulness, r = robustness; {image_text}",
        )
        if curves:
            plots.robust_only_curves(
                curves,
                staged.path("robust_only.png"),
                subtitle=f"{what}: ranked on {val_idx.size}, evaluated on {eval_idx.size} held-out points; "
                f"{args.norm} eps={eps:.4g}, PGD-{args.robust_steps}",
            )
        _write_json(staged.path("results.json"), results)

    _write_outputs(args.out, write)
    for name, entry in per_arch.items():
        print(
            f"{name}: Spearman(index, robustness) = {entry['spearman_index_robustness']:.2f}, "
            f"useful non-robust {entry['useful_non_robust_share']:.2f} of {args.n_features} features, "
            f"full machine clean {entry['full_machine']['clean_accuracy']:.3f} / "
            f"FGSM {entry['full_machine']['fgsm_accuracy']:.3f}"
        )
    print(f"-> {args.out}")
    return 0


# -- entk -----------------------------------------------------------------------------------


def _quiet_torch_warnings() -> None:
    """Silence torch's warnings that are not the user's business."""
    # the registry's torch is a CUDA build; on a machine without a GPU it says so at every backward
    warnings.filterwarnings("ignore", message="CUDA initialization")
    # torch's own forward-mode decompositions (first torch.func.jvp) still use torch.jit.script
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)


def _torch_device(name: str):  # type: ignore[no-untyped-def]
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    return torch.device(name)


def _torch_network(args: argparse.Namespace, data: Any):  # type: ignore[no-untyped-def]
    """The registry model (at initialisation) or the checkpoint's, checked against the data."""
    from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint
    from ntkrobust.bridge.models import ModelError, build_model, check_fits, model_config

    classes = len(data.classes)
    try:
        if getattr(args, "checkpoint", None) is not None:
            if args.width is not None:
                raise UsageError("--width applies to --model; a checkpoint brings its own")
            model, config, _ = load_checkpoint(args.checkpoint)
            if config.num_classes != classes:
                raise UsageError(
                    f"checkpoint {args.checkpoint} has {config.num_classes} outputs, the data has {classes} classes"
                )
        else:
            config = model_config(args.model or "fc2", data.image_shape, classes, width=args.width, seed=args.seed)
            model = build_model(config)
        check_fits(config, data.image_shape)
    except (ModelError, CheckpointError) as err:
        raise UsageError(str(err)) from None
    return model, config


def cmd_entk(args: argparse.Namespace) -> int:
    _check_out_dir(args.out, args.force)
    from ntkrobust.bridge.entk import BudgetError, KernelKind

    try:
        kind = KernelKind.parse(args.kind)
    except ValueError as err:
        raise UsageError(f"--kind: {err}") from None
    if args.adversarial_eps is not None and not 0 < args.adversarial_eps <= 1:
        raise UsageError(f"--adversarial-eps must lie in (0, 1] (pixel units), got {args.adversarial_eps:g}")
    clock = {"start": time.perf_counter()}
    data = _load_data(args)
    x_all, y_all = (data.x_train, data.y_train) if args.split == "train" else (data.x_test, data.y_test)
    if args.n > x_all.shape[0]:
        raise UsageError(f"--n {args.n} exceeds the {x_all.shape[0]} {args.split} points of the data")

    import numpy as np
    import torch

    from ntkrobust.bridge.adversarial import pgd_examples, predict
    from ntkrobust.bridge.data import DataError, balanced_indices, task_indices
    from ntkrobust.bridge.entk import auto_memory_budget, empirical_ntk, with_batch_statistics
    from ntkrobust.bridge.models import parameter_count
    from ntkrobust.kernels.metrics import kernel_metrics

    _quiet_torch_warnings()
    device = _torch_device(args.device)
    model, config = _torch_network(args, data)
    try:
        kind.outputs(config.num_classes)
        chosen = balanced_indices(y_all, data.classes, args.n, args.seed, what=args.split)
    except (ValueError, DataError) as err:
        raise UsageError(str(err)) from None
    x_clean, y = x_all[chosen], y_all[chosen]
    targets = task_indices(y, data.classes)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    net = model.to(device=device, dtype=dtype).eval()
    inputs = torch.as_tensor(x_clean, device=device, dtype=dtype)
    labels = torch.as_tensor(targets, device=device)
    if args.batch_stats:
        net = with_batch_statistics(net, inputs)
    clean_pred = predict(net, inputs)
    adversarial: dict[str, Any] | None = None
    x_kernel, kernel_pred = inputs, clean_pred
    if args.adversarial_eps is not None:
        eps = args.adversarial_eps
        step, steps = _pgd_schedule(
            data.image_shape[0], "linf", eps, args.pgd_step, args.pgd_steps, step_flag="--pgd-step"
        )
        x_kernel = pgd_examples(net, inputs, labels, eps=eps, step=step, steps=steps, seed=args.seed)
        kernel_pred = predict(net, x_kernel)
        adversarial = {"eps": eps, "step": step, "steps": steps, "norm": "linf", "random_start": True}
    clock["inputs"] = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    budget = auto_memory_budget(device) if args.memory_budget is None else args.memory_budget * 2**20
    try:
        kernel = empirical_ntk(net, x_kernel, kind=kind, memory_budget=budget, progress=_progress(args))
    except BudgetError as err:
        raise UsageError(f"--memory-budget {args.memory_budget}: {err}") from None
    clock["kernel"] = time.perf_counter()

    adversarial_labels = kernel_pred.cpu().numpy()
    metrics = kernel_metrics(kernel, targets, num_classes=config.num_classes)
    results: dict[str, Any] = {
        "command": "entk",
        "kind": str(kind),
        "shape": list(kernel.shape),
        "metrics": metrics,
        "network": {
            **config.to_dict(),
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "parameters": parameter_count(model),
            # with --adversarial-eps too, the statistics are those of the clean points, held fixed
            "batchnorm": "batch statistics of the clean points" if args.batch_stats else "running statistics",
        },
        "accuracy_clean": float((clean_pred == labels).double().mean()),
        "config": {
            **_data_config(args, data),
            "split": args.split,
            "n": args.n,
            "kind": str(kind),
            "adversarial": adversarial,
            "dtype": args.dtype,
            "memory_budget_mib": budget // 2**20,
            "device": str(device),
        },
        "seed": args.seed,
        "dataset": data.describe(),
        "seconds": {"inputs": clock["inputs"] - clock["start"], "kernel": clock["kernel"] - clock["inputs"]},
        "versions": _versions(),
        "argv": args.argv,
    }
    if device.type == "cuda":
        results["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if adversarial is not None:
        # RAT sec. 4: AE-NTK specialization under clean labels (above) and adversarial labels
        results["accuracy_adversarial"] = float((kernel_pred == labels).double().mean())
        results["metrics_adversarial_labels"] = kernel_metrics(
            kernel, adversarial_labels, num_classes=config.num_classes
        )

    from ntkrobust import plots

    picture = kernel if kernel.ndim == 2 else np.einsum("ijcc->ij", kernel) / kernel.shape[2]
    which = "AE-NTK" if adversarial else "C-NTK"
    label = "trace kernel" if kind.index is None else f"kernel of class {data.class_name(data.classes[kind.index])}"
    subtitle = (
        f"{config.model} (width {config.width}), {args.n} {data.name} {args.split} points"
        + (f", PGD eps={adversarial['eps']:.4g}" if adversarial else "")
        + (f", from {args.checkpoint.name}" if args.checkpoint else ", at initialisation")
    )

    def write(staged: _StagedOutput) -> None:
        with open(staged.path("kernel.npz"), "wb") as f:
            arrays = {"kernel": kernel, "x": x_kernel.cpu().numpy().astype(np.float32), "y": y}
            if adversarial is not None:
                arrays |= {"x_clean": x_clean, "y_adversarial": np.asarray(data.classes)[adversarial_labels]}
            np.savez_compressed(f, **arrays)
        _write_json(staged.path("metrics.json"), results)
        plots.kernel_image(
            picture,
            targets,
            staged.path("kernel.png"),
            class_names=[data.class_name(c) for c in data.classes],
            title=f"empirical {which}, {label}",
            subtitle=subtitle,
        )

    _write_outputs(args.out, write)
    summary = ", ".join(
        f"{key.replace('_', ' ')} {metrics[key]:.3g}"
        for key in ("effective_rank", "concentration_top20", "centered_alignment", "mean_specialization")
        if key in metrics
    )
    print(
        f"{kind} {which} of {config.model} ({results['network']['parameters']:,} parameters) on {args.n} "
        f"{data.name} points in {results['seconds']['kernel']:.1f} s: {summary} -> {args.out}"
    )
    return 0


# -- train ----------------------------------------------------------------------------------


def _training_threat(args: argparse.Namespace, channels: int) -> tuple[float, float, int, int]:
    """(eps, PGD step, PGD training steps, PGD evaluation steps): the standard ones of the image
    type unless given; evaluation uses 40 steps on grey images and 20 on colour (RobustBench)."""
    eps = _standard_threat(channels, "linf")[0] if args.eps is None else args.eps
    # eps = 0 is refused too: the per-epoch PGD accuracy and the AE-NTK need an attack
    if not (math.isfinite(eps) and 0 < eps <= 1):
        raise UsageError(f"--eps must lie in (0, 1] (pixel units), got {eps:g}")
    step, steps = _pgd_schedule(channels, "linf", eps, args.pgd_step, args.pgd_steps, step_flag="--pgd-step")
    evaluation = args.eval_pgd_steps or (40 if channels == 1 else 20)
    return eps, step, steps, evaluation


def _linearization_parent(args: argparse.Namespace, data: Any):  # type: ignore[no-untyped-def]
    """The parent network and config of --linearize-from, checked against the data."""
    from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint
    from ntkrobust.bridge.models import ModelError, check_fits

    if args.model is not None or args.width is not None:
        raise UsageError("--model / --width do not apply with --linearize-from: the checkpoint brings its network")
    try:
        parent, config, payload = load_checkpoint(args.linearize_from)
        check_fits(config, data.image_shape)
    except (CheckpointError, ModelError) as err:
        raise UsageError(str(err)) from None
    if "linearization" in payload:
        raise UsageError(f"--linearize-from {args.linearize_from} is itself a linearized network")
    if config.num_classes != len(data.classes):
        raise UsageError(
            f"--linearize-from {args.linearize_from} has {config.num_classes} outputs, "
            f"the data has {len(data.classes)} classes"
        )
    return parent, config, payload


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume and args.force:
        raise UsageError("--resume continues the run in --out; --force would start it over: choose one")
    if args.resume:
        if not (args.out / "config.json").is_file():
            raise UsageError(f"--resume: {args.out} holds no run to continue (no config.json)")
    else:
        _check_out_dir(args.out, args.force)
    if args.centered and args.linearize_from is None:
        raise UsageError("--centered needs --linearize-from CHECKPOINT (the network it is centered on)")
    data = _load_data(args)
    channels = data.image_shape[0]
    eps, step, steps, eval_steps = _training_threat(args, channels)
    if args.track_kernel > data.x_train.shape[0]:
        raise UsageError(f"--track-kernel {args.track_kernel} exceeds the {data.x_train.shape[0]} training points")
    if args.switch_epoch is not None and args.mode == "standard":
        raise UsageError("--switch-epoch switches from clean training to an adversarial --mode; --mode is standard")

    from ntkrobust.bridge.data import DataError
    from ntkrobust.bridge.experiment import RunFolderError, TrackingConfig, run_training
    from ntkrobust.bridge.models import parameter_count
    from ntkrobust.bridge.training import TrainConfig

    _quiet_torch_warnings()
    device = _torch_device(args.device)
    linearization: dict[str, Any] | None = None
    kernel_network: Any = None  # linearized runs: the network whose eNTK is tracked, and LOO sec. 4 magnitude
    magnitude: Any = None
    if args.linearize_from is not None:
        from ntkrobust.bridge.linearized import LinearizedNetwork, relative_magnitude

        parent, config, payload = _linearization_parent(args, data)
        model = LinearizedNetwork(parent, centered=args.centered)
        linearization = {
            "checkpoint": str(args.linearize_from),
            "spawn_epoch": payload.get("epoch"),
            "centered": args.centered,
        }
        kernel_network = LinearizedNetwork.tangent_network  # its kernel is the frozen parent's
        magnitude = relative_magnitude
    else:
        args.model = args.model or ("mnist-cnn" if channels == 1 else "cifar-cnn")
        model, config = _torch_network(args, data)
    try:
        train = TrainConfig(
            mode=args.mode,
            epochs=args.epochs,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            milestones=args.milestones,
            gamma=args.gamma,
            batch_size=args.batch_size,
            eps=eps,
            pgd_step=step,
            pgd_steps=steps,
            trades_beta=args.trades_beta,
            switch_epoch=args.switch_epoch,
            seed=args.seed,
        )
        tracking = TrackingConfig(
            eps=eps,
            step=step,
            steps=eval_steps,
            probe=args.track_kernel,
            every=args.track_every,
            eval_n=args.eval_n,
            batchnorm=("running", "batch") if args.batchnorm == "both" else (args.batchnorm,),
            memory_budget=None if args.memory_budget is None else args.memory_budget * 2**20,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    label = f"{config.model} {args.mode}" + (f" after {args.switch_epoch} clean" if args.switch_epoch else "")
    if linearization is not None:
        label = f"{config.model} {'centered' if args.centered else 'linearized'} {args.mode}"
    run_config = {
        "data": _data_config(args, data),
        "model": {**config.to_dict(), "parameters": parameter_count(model)},
        "linearization": linearization,
        "train": train.to_dict(),
        "tracking": tracking.to_dict(),
        "device": str(device),
    }
    if args.force and not args.resume:  # start over: a previous run's files must not mix with this one's
        for stale in ("checkpoints", "kernels"):
            shutil.rmtree(args.out / stale, ignore_errors=True)
        for stale in ("config.json", "history.json"):
            (args.out / stale).unlink(missing_ok=True)
    try:
        history = run_training(
            args.out,
            model,
            config,
            data,
            train,
            tracking,
            config=run_config,
            label=label,
            device=device,
            resume=args.resume,
            kernel_network=kernel_network,
            relative_magnitude=magnitude,
            metadata={"dataset": data.describe(), "versions": _versions(), "argv": args.argv},
            progress=_progress(args),
        )
    except (RunFolderError, DataError) as err:
        raise UsageError(str(err)) from None
    last = history["epochs"][-1]
    scores = last["accuracy"][tracking.batchnorm[0]]
    kernels = history["kernels"]
    growth = (
        f", C-NTK Frobenius norm x{kernels[-1]['clean']['frobenius_norm'] / kernels[0]['clean']['frobenius_norm']:.3g}"
        if len(kernels) > 1
        else ""
    )
    print(
        f"{label}: {last['epoch']} epochs, test clean {scores['test_clean']:.3f}, PGD {scores['test_pgd']:.3f} "
        f"(eps {eps:.4g}){growth} -> {args.out}"
    )
    return 0


# -- dynamics -------------------------------------------------------------------------------


def _eigenvector_rows(args: argparse.Namespace, runs: Sequence[Any], progress: bool) -> tuple[list, list, dict]:  # type: ignore[type-arg]
    """LOO fig. 4: pictures of the top eigenvectors of the class kernel on the probe, for the
    network at initialisation (the first run's) and at the end of every run."""
    import numpy as np

    from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint
    from ntkrobust.bridge.eigenvectors import eigenvector_images, ntk_eigenvectors

    _quiet_torch_warnings()
    device = _torch_device(args.device)
    networks = [("initialisation", runs[0].path / "checkpoints" / "epoch_000.pt")]
    for run in runs:
        if not (run.path / "kernels" / "probe.npz").is_file():
            raise UsageError(f"{run.path} tracked no kernels: no probe to picture eigenvectors on (--eigenvectors 0)")
        found = sorted((run.path / "checkpoints").glob("epoch_*.pt"))
        if not found:
            raise UsageError(f"{run.path} has no checkpoints to picture its kernel's eigenvectors")
        networks.append((f"end of {run.label}", found[-1]))
    rows, cosines, summary = [], [], {}
    for label, path in networks:
        try:
            model, config, _ = load_checkpoint(path)
        except CheckpointError as err:
            raise UsageError(str(err)) from None
        if not 0 <= args.eigenvector_class < config.num_classes:
            raise UsageError(
                f"--eigenvector-class {args.eigenvector_class}: the nets have {config.num_classes} outputs"
            )
        from ntkrobust.bridge.linearized import LinearizedNetwork

        # a linearized net's kernel is its parent's at θt, for every θ
        network = model.tangent_network() if isinstance(model, LinearizedNetwork) else model
        network = network.to(device).eval()
        with np.load(path.parents[1] / "kernels" / "probe.npz", allow_pickle=False) as probe:
            x = probe["x"]
        eigen = ntk_eigenvectors(network, x, output=args.eigenvector_class, top=args.eigenvectors)
        pictures = []
        for maximize in (True, False):
            pictures.append(
                eigenvector_images(
                    network,
                    eigen,
                    maximize=maximize,
                    steps=args.eigenvector_steps,
                    image_shape=tuple(x.shape[1:]),
                    seed=0,
                    progress=progress,
                )
            )
        rows.append((label, pictures[0][0], pictures[1][0]))
        cosines.append((pictures[0][1], pictures[1][1]))
        summary[label] = {
            "checkpoint": str(path),
            "eigenvalues": [float(v) for v in eigen.eigenvalues],
            "cosine_max": [float(c) for c in pictures[0][1]],
            "cosine_min": [float(c) for c in pictures[1][1]],
        }
    return rows, cosines, summary


def cmd_dynamics(args: argparse.Namespace) -> int:
    _check_out_dir(args.out, args.force)
    from ntkrobust.bridge.runs import RunError, dynamics_summary, json_summary, load_runs

    try:
        runs = load_runs(args.runs)
        summaries = [dynamics_summary(run) for run in runs]
    except RunError as err:
        raise UsageError(str(err)) from None
    from ntkrobust import plots

    eigenvectors: tuple[list, list, dict] | None = None  # type: ignore[type-arg]
    if args.eigenvectors:
        eigenvectors = _eigenvector_rows(args, runs, _progress(args))
    results: dict[str, Any] = {
        "command": "dynamics",
        "runs": [json_summary(summary) for summary in summaries],
        "config": {
            "runs": [str(path) for path in args.runs],
            "eigenvectors": args.eigenvectors,
            "eigenvector_class": args.eigenvector_class,
            "eigenvector_steps": args.eigenvector_steps,
        },
        "versions": _versions(),
        "argv": args.argv,
    }

    def write(staged: _StagedOutput) -> None:
        results["figures"] = plots.dynamics_figures(summaries, staged.stage)
        if eigenvectors is not None:
            rows, cosines, summary = eigenvectors
            name = "eigenvectors.png"
            plots.eigenvector_pictures(
                rows,
                staged.path(name),
                cosines=cosines,
                subtitle=f"top {args.eigenvectors} eigenvectors of the class-{args.eigenvector_class} eNTK "
                f"on the probe set; {plots.dynamics_subtitle(summaries)}",
            )
            results["figures"]["eigenvectors"] = name
            results["eigenvectors"] = summary
        _write_json(staged.path("results.json"), results)

    _write_outputs(args.out, write)
    print(f"{len(runs)} run(s): {', '.join(sorted(results['figures'].values()))} -> {args.out}")
    return 0


# -- two-layer ------------------------------------------------------------------------------


def _white_box_attack(args: argparse.Namespace, channels: int):  # type: ignore[no-untyped-def]
    """The --method attack of the threat flags, for nets and kernel machines alike."""
    from ntkrobust.attacks import AttackSpec

    eps, step, steps = _resolve_threat(args, channels)
    iterative = args.method == "pgd"
    attack = AttackSpec(
        method=args.method,
        eps=eps,
        norm=args.norm,
        step=step if iterative else None,
        steps=steps if iterative else 1,
        random_start=not args.no_random_start,
        seed=args.seed,
    )
    return attack, attack


def _picture_epochs(epochs: Sequence[int]) -> list[int]:
    """Three measured epochs spread evenly on a log scale, ending at the last (supp. fig. 1b)."""
    if len(epochs) <= 3:
        return list(epochs)
    last = math.log(epochs[-1])
    chosen = [min(epochs, key=lambda e: abs(math.log(e) - last * share)) for share in (1 / 3, 2 / 3, 1.0)]
    return sorted(set(chosen))


def cmd_two_layer(args: argparse.Namespace) -> int:
    _check_out_dir(args.out, args.force)
    widths = tuple(args.width or [1000])
    if len(set(widths)) != len(widths):
        raise UsageError(f"--width repeats a width: {', '.join(map(str, widths))}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {args.lr}")
    anchor = args.anchor_epoch or max(1, round(args.epochs / 100))
    if anchor > args.epochs:
        raise UsageError(f"--anchor-epoch {anchor} is after the last epoch ({args.epochs})")
    clock = {"start": time.perf_counter()}
    data = _load_data(args)
    if args.picture_index >= data.x_test.shape[0]:
        raise UsageError(f"--picture-index {args.picture_index} exceeds the {data.x_test.shape[0]} test points")
    attack, kernel_attack = _white_box_attack(args, data.image_shape[0])

    import numpy as np

    from ntkrobust.attacks import robust_accuracy
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.two_layer import ACCURACY_KEYS, KernelAtTime, TwoLayerConfig, log_epochs, two_layer_experiment
    from ntkrobust.kernels import fit_kernel_machine, get_architecture
    from ntkrobust.kernels.adversarial import craft_adversarial
    from ntkrobust.kernels.alignment import matching_time, theory_time_per_epoch

    _quiet_torch_warnings()
    device = _torch_device(args.device)
    progress = _progress(args)
    measured = log_epochs(args.epochs, args.log_every)
    config = TwoLayerConfig(
        widths=widths,
        seeds=tuple(args.seed + i for i in range(args.nets)),
        epochs=args.epochs,
        measure_at=tuple(measured),
        anchor_epoch=anchor,
        learning_rate=args.lr,
        picture_index=args.picture_index,
    )
    # t = 0 only to build the machine: every comparison moves it to an aligned time
    machine = fit_kernel_machine(
        get_architecture("two-layer"), data.x_train, data.y_train, classes=data.classes, time=0.0, progress=progress
    )
    clock["machine"] = time.perf_counter()
    x_test, y_test = data.x_test, data.y_test
    y_index = task_indices(y_test, data.classes)

    def kernel_at(t: float) -> KernelAtTime:
        at_t = machine.at_time(t)
        examples = craft_adversarial(at_t, x_test, y_test, kernel_attack)
        clean = at_t.predict(x_test)
        return KernelAtTime(
            time=t,
            loss_gradient=np.asarray(at_t.loss_gradient(x_test, machine.target_index(y_test))),
            examples=examples,
            clean_accuracy=robust_accuracy(clean, y_test),
            robust_accuracy=robust_accuracy(at_t.predict(examples), y_test, clean),
        )

    result = two_layer_experiment(
        data.x_train,
        machine.targets,
        x_test,
        y_index,
        config,
        attack,
        match_time=lambda outputs: matching_time(machine, outputs),
        kernel_at=kernel_at,
        device=device,
        progress=progress,
    )
    clock["experiment"] = time.perf_counter()
    theory = theory_time_per_epoch(args.lr, machine.n_train)
    checkpoints = [f"net_w{net['width']}_s{net['seed']}.pt" for net in result.nets]
    results = {
        "command": "two-layer",
        **{key: {f"width {n['width']}, seed {n['seed']}": n[key] for n in result.nets} for key in ACCURACY_KEYS},
        "alignment": {
            "anchor_epoch": anchor,
            "anchor_time": result.anchor_time,
            "time_per_epoch": result.time_per_epoch,
            "theory_time_per_epoch": theory,
            "fitted_over_theory": result.time_per_epoch / theory,
        },
        "kernel": {"architecture": "two-layer", "outputs": machine.n_outputs, "epochs": result.kernel},
        "nets": [{**net, "checkpoint": name} for net, name in zip(result.nets, checkpoints, strict=True)],
        "config": {
            **_data_config(args, data),
            "widths": list(widths),
            "seeds": list(config.seeds),
            "epochs": args.epochs,
            "lr": args.lr,
            "loss": "mean l2 to the kernel machine's targets, (1/2n) sum_i |f(x_i) - y_i|^2",
            "measured_epochs": measured,
            "attack": attack.to_dict(),
            "picture_index": args.picture_index,
            "device": str(device),
        },
        "seed": args.seed,
        "dataset": data.describe(),
        "seconds": {
            "data_and_machine": clock["machine"] - clock["start"],
            "experiment": clock["experiment"] - clock["machine"],
        },
        "versions": _versions(),
        "argv": args.argv,
    }

    from ntkrobust import plots

    shown = _picture_epochs(measured)
    rows_at = [measured.index(e) for e in shown]
    picture_rows = [
        (f"net, width {n['width']}" + (f", seed {n['seed']}" if args.nets > 1 else ""), pictures[rows_at])
        for n, pictures in zip(result.nets, result.net_pictures, strict=True)
    ] + [("NTK", result.kernel_pictures[rows_at])]
    subtitle = (
        f"{data.name}, {machine.n_train} train / {x_test.shape[0]} test, full-batch GD lr {args.lr:g}, "
        f"epoch <-> t anchored at epoch {anchor} (t = {result.time_per_epoch:.3g} x epoch; theory {theory:.3g})"
    )

    def write(staged: _StagedOutput) -> None:
        for (net_config, view), name in zip(result.networks, checkpoints, strict=True):
            save_checkpoint(staged.path(name), view.cpu(), net_config, epoch=args.epochs, source="two-layer")
        arrays: dict[str, Any] = {
            "image": x_test[args.picture_index],
            "epochs": np.asarray(measured),
            "kernel": result.kernel_pictures,
        }
        for net, pictures in zip(result.nets, result.net_pictures, strict=True):
            arrays[f"net_w{net['width']}_s{net['seed']}"] = pictures
        with open(staged.path("gradients.npz"), "wb") as f:
            np.savez_compressed(f, **arrays)
        _write_json(staged.path("results.json"), results)
        plots.two_layer_transfer(
            result.nets,
            {"epochs": result.kernel},
            staged.path("two_layer.png"),
            subtitle=subtitle,
            method=args.method,
            eps=attack.eps,
        )
        plots.gradient_pictures(
            x_test[args.picture_index], picture_rows, shown, staged.path("gradients.png"), subtitle=subtitle
        )

    _write_outputs(args.out, write)
    for net in result.nets:
        print(
            f"two-layer width {net['width']} seed {net['seed']} after {args.epochs} epochs: gradient cosine "
            f"{net['gradient_cosine']:.3f}; accuracy clean {net['clean_accuracy']:.3f}, own {args.method} "
            f"{net['white_box_accuracy']:.3f}, NTK {args.method} {net['ntk_attack_accuracy']:.3f}, "
            f"random sign {net['random_accuracy']:.3f}"
        )
    print(f"-> {args.out}")
    return 0


# -- transfer -------------------------------------------------------------------------------


def _load_targets(specs: Sequence[str], data: Any, device: Any) -> list:  # type: ignore[type-arg]
    """The targets of ``specs``, with labels made unique; a bad one stops everything (exit 2)."""
    from ntkrobust.bridge.targets import TargetError, load_target

    targets: list[Any] = []
    for spec in specs:
        try:
            target = load_target(spec, image_shape=data.image_shape, num_classes=len(data.classes), device=device)
        except TargetError as err:
            raise UsageError(str(err)) from None
        taken = {t.label for t in targets}
        base, i = target.label, 2
        while target.label in taken:
            target.label, i = f"{base} ({i})", i + 1
        targets.append(target)
    return targets


def _training_subset(data: Any, n: int | None, seed: int, flag: str):  # type: ignore[no-untyped-def]
    """``data`` with a class-balanced, seeded subset of ``n`` training points (all if None)."""
    import dataclasses

    from ntkrobust.bridge.data import DataError, balanced_indices

    if n is None or n >= data.x_train.shape[0]:
        return data
    try:
        chosen = balanced_indices(data.y_train, data.classes, n, seed, what=f"{flag} training")
    except DataError as err:
        raise UsageError(str(err)) from None
    return dataclasses.replace(data, x_train=data.x_train[chosen], y_train=data.y_train[chosen])


def _surrogate_examples(args: argparse.Namespace, spec: str, data: Any, attack: Any, device: Any):  # type: ignore[no-untyped-def]
    """White-box examples of an empirical-NTK kernel machine (TK supp. B) and its fit record."""
    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.models import ModelError, check_fits, model_config, parse_model_name
    from ntkrobust.bridge.surrogate import fit_empirical_kernel_machine, initial_networks
    from ntkrobust.bridge.transfer import white_box_examples

    try:
        name, width = parse_model_name(spec)
        config = model_config(name, data.image_shape, len(data.classes), width=width, seed=args.seed)
        check_fits(config, data.image_shape)
    except ModelError as err:
        raise UsageError(str(err)) from None
    fit_data = _training_subset(data, args.surrogate_n, args.seed, "--surrogate-n")
    networks = [net.to(device) for net in initial_networks(config, args.surrogate_nets)]
    machine = fit_empirical_kernel_machine(
        networks,
        fit_data.x_train,
        task_indices(fit_data.y_train, data.classes),
        len(data.classes),
        ridge=args.surrogate_ridge,
        progress=_progress(args),
    )
    examples = white_box_examples(machine, data.x_test, task_indices(data.y_test, data.classes), attack, device=device)
    fit = machine.fit_info
    assert fit is not None  # set by fit_empirical_kernel_machine
    return examples, {"model": config.to_dict(), "networks": args.surrogate_nets, **fit.to_dict()}


def cmd_transfer(args: argparse.Namespace) -> int:
    arch_names = args.kernel_arch or ([] if args.surrogate else ["fc2"])
    if len(set(arch_names)) != len(arch_names):
        raise UsageError(f"--kernel-arch repeats an architecture: {', '.join(arch_names)}")
    if not (math.isfinite(args.surrogate_ridge) and args.surrogate_ridge >= 0):
        raise UsageError(f"--surrogate-ridge must be a finite number >= 0, got {args.surrogate_ridge}")
    _check_machine_args(args, arch_names)
    _check_out_dir(args.out, args.force)
    clock = {"start": time.perf_counter()}
    data = _load_data(args)
    attack, kernel_attack = _white_box_attack(args, data.image_shape[0])

    import numpy as np

    from ntkrobust.attacks import robust_accuracy, transferability
    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.transfer import evaluate_target, random_sign_examples, white_box_examples
    from ntkrobust.kernels.adversarial import craft_adversarial

    _quiet_torch_warnings()
    device = _torch_device(args.device)
    progress = _progress(args)
    nets = _load_targets([*args.target, *args.source], data, device)  # one namespace of labels
    targets, extra_sources = nets[: len(args.target)], nets[len(args.target) :]
    x_test, y_test = data.x_test, data.y_test
    y_index = task_indices(y_test, data.classes)
    clock["targets"] = time.perf_counter()

    sources: dict[str, Any] = {}  # name -> examples of x_test
    about: dict[str, dict[str, Any]] = {}  # name -> what made them
    notes: list[str] = []
    kernel_data = _training_subset(data, args.kernel_n, args.seed, "--kernel-n")
    for arch_name in arch_names:
        machine, arch_notes, kernel = _fit_machine(args, arch_name, kernel_data, progress)
        notes += arch_notes
        examples = craft_adversarial(machine, x_test, y_test, kernel_attack, progress=progress)
        clean = machine.predict(x_test)
        name = f"NTK {arch_name}"
        sources[name] = examples
        about[name] = {
            "kind": "ntk",
            **kernel,
            "kernel_clean_accuracy": robust_accuracy(clean, y_test),
            "kernel_robust_accuracy": robust_accuracy(machine.predict(examples), y_test, clean),
        }
    for spec in args.surrogate:
        name = f"eNTK {spec}"
        sources[name], fit = _surrogate_examples(args, spec, data, attack, device)
        about[name] = {"kind": "entk-surrogate", **fit}
    clock["black_box"] = time.perf_counter()
    for i, net in enumerate(nets):
        sources[net.label] = white_box_examples(net.model, x_test, y_index, attack, device=device)
        about[net.label] = {"kind": "white-box", "is_target": i < len(targets), "net": net.description}
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)

    noisy = random_sign_examples(x_test, attack)
    black_box = [name for name, a in about.items() if a["kind"] != "white-box"]
    evaluations = {
        t.label: evaluate_target(
            t.model,
            x_test,
            y_index,
            attack,
            sources,
            random_examples=noisy,
            own_examples=sources[t.label],
            device=device,
        )
        for t in targets
    }
    clock["evaluation"] = time.perf_counter()

    rows = []
    for target in targets:
        evaluation = evaluations[target.label]
        rows.append(
            {
                "name": target.label,
                **target.description,
                "epoch": target.epoch,
                "clean_accuracy": evaluation.clean_accuracy,
                "white_box_accuracy": evaluation.white_box_accuracy,
                "ntk_attack_accuracy": _accuracies_of(evaluation.sources, about, "ntk"),
                "surrogate_attack_accuracy": _accuracies_of(evaluation.sources, about, "entk-surrogate"),
                "random_accuracy": evaluation.random_accuracy,
                "transfer_accuracy": evaluation.sources,
                "transferability": evaluation.transferability(),
                "random_transferability": _finite_or_none(
                    transferability(
                        evaluation.clean_accuracy, evaluation.random_accuracy, evaluation.white_box_accuracy
                    )
                ),
            }
        )
    columns = list(sources)
    accuracy = np.array(
        [
            [r["clean_accuracy"], r["random_accuracy"], r["white_box_accuracy"]]
            + [r["transfer_accuracy"][c] for c in columns]
            for r in rows
        ]
    )
    tau = np.array([[r["transferability"][c] for c in columns] for r in rows], dtype=np.float64)
    results = {
        "command": "transfer",
        "targets": rows,
        "sources": [{"name": name, **about[name]} for name in columns],
        "matrix": {
            "rows": [r["name"] for r in rows],
            "columns": ["clean", "random sign", "own white-box", *columns],
            "accuracy": accuracy.tolist(),
            "transferability_columns": columns,
            "transferability": tau.tolist(),
        },
        "config": {
            **_data_config(args, data),
            "kernel_archs": arch_names,
            "kernel_n": int(kernel_data.x_train.shape[0]),
            **_machine_config(args),
            "surrogates": args.surrogate,
            "surrogate_nets": args.surrogate_nets,
            "surrogate_n": args.surrogate_n,
            "surrogate_ridge": args.surrogate_ridge,
            "attack": attack.to_dict(),
            "device": str(device),
        },
        "seed": args.seed,
        "dataset": data.describe(),
        "warnings": notes,
        "seconds": {
            "data_and_targets": clock["targets"] - clock["start"],
            "black_box_examples": clock["black_box"] - clock["targets"],
            "evaluation": clock["evaluation"] - clock["black_box"],
        },
        "versions": _versions(),
        "argv": args.argv,
    }

    from ntkrobust import plots

    subtitle = (
        f"{data.name}, {data.x_test.shape[0]} test points, {args.method.upper()} eps {attack.eps:.4g} ({args.norm}); "
        f"accuracy = share still correct"
    )
    curves = _transferability_series(targets, extra_sources, rows)

    def write(staged: _StagedOutput) -> None:
        with open(staged.path("examples.npz"), "wb") as f:
            np.savez_compressed(
                f, x=x_test, y=y_test, random_sign=noisy, **{_array_name(n): sources[n] for n in black_box}
            )
        _write_json(staged.path("results.json"), results)
        plots.transfer_heatmap(
            results["matrix"]["rows"],
            results["matrix"]["columns"],
            accuracy,
            staged.path("transfer.png"),
            transferability=(columns, tau),
            subtitle=subtitle,
        )
        if curves:
            plots.transferability_curves(
                curves, staged.path("transferability.png"), subtitle=subtitle + f"; target {rows[0]['name']}"
            )

    _write_outputs(args.out, write)
    for r in rows:
        black = ", ".join(f"{n} {r['transfer_accuracy'][n]:.3f}" for n in black_box)
        print(
            f"{r['name']}: clean {r['clean_accuracy']:.3f}, own {args.method} {r['white_box_accuracy']:.3f}, "
            f"random sign {r['random_accuracy']:.3f}" + (f", {black}" if black else "")
        )
    print(f"-> {args.out}")
    return 0


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _accuracies_of(accuracies: dict[str, float], about: dict[str, dict[str, Any]], kind: str) -> dict[str, float]:
    """Accuracies under the sources of one kind, keyed without the kind's prefix ('NTK fc2' -> 'fc2')."""
    return {name.split(" ", 1)[1]: acc for name, acc in accuracies.items() if about[name]["kind"] == kind}


def _array_name(source: str) -> str:
    """A source name as an .npz key: 'NTK fc2' -> 'ntk_fc2'."""
    return "".join(c if c.isalnum() else "_" for c in source.lower())


def _transferability_series(targets: Sequence[Any], extra: Sequence[Any], rows: Sequence[dict]) -> list:  # type: ignore[type-arg]
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


# -- make-npz -------------------------------------------------------------------------------


def cmd_make_npz(args: argparse.Namespace) -> int:
    if args.out.suffix != ".npz":
        raise UsageError(f"--out must name an .npz file, got {args.out}")
    if args.out.exists() and not args.force:
        raise UsageError(f"--out {args.out} exists (use --force to overwrite)")
    from ntkrobust.bridge.data import save_dataset_npz
    from ntkrobust.bridge.files import write_atomically

    data = _load_data(args)
    write_atomically(args.out, lambda temporary: save_dataset_npz(data, temporary))
    sizes = f"{data.x_train.shape[0]} train, {data.x_test.shape[0]} test"
    print(f"{data.name}: {sizes}, classes {list(data.classes)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
