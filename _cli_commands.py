"""The commands of the command line: what each one is (help texts), its flags, and the study that
runs it (``COMMANDS``). Shared flag groups and value types come from ``_cli_flags``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ntkrobust._cli_flags import (
    ARCHITECTURES,
    MODELS,
    _add_attack_flags,
    _add_data_flags,
    _add_device_flag,
    _add_machine_flags,
    _add_output_flags,
    _add_threat_flags,
    _attack_list,
    _int_list,
    _items,
    _non_negative_int,
    _number,
    _out_path,
    _positive_int,
    _r_list,
    _seed_list,
)
from ntkrobust.attacks.spec import METHODS, NET_METHODS
from ntkrobust.studies.evaluate import EVALUATION_ATTACKS
from ntkrobust.studies.features import DEFAULT_ROBUST_R
from ntkrobust.studies.train import AUGMENTATIONS, INITIALISATIONS, TRAINING_MODES

_ABOUT = {
    "attack": (
        "black-box NTK attack: adversarial examples from the analytic kernel alone",
        "Craft adversarial examples against the infinite-width NTK machine of an "
        "architecture (Tsilivis & Kempe eq. 7-8) and report its clean and robust accuracy.",
    ),
    "features": (
        "eigen-features of NTK machines: robustness vs usefulness, pictures, robust-only kernels",
        "Decompose NTK machines into eigen-features (Tsilivis & Kempe eq. 9), score each "
        "feature's usefulness and robustness on held-out data (supp. A), draw them (fig. 2, fig. 5) and "
        "test kernels built from the most robust features only (supp. D.3).",
    ),
    "entk": (
        "empirical NTK of a torch net (registry model or checkpoint) on data, with kernel metrics",
        "The empirical NTK of a torch network on a class-balanced set of points, clean (C-NTK) "
        "or on the net's own PGD examples (AE-NTK), with the kernel metrics of kernels/metrics.py and a "
        "class-sorted kernel image.",
    ),
    "train": (
        "train a torch net (standard or adversarial) while tracking its empirical NTK",
        "SGD training in a standard or adversarial mode (TK supp. E, LOO, RAT), with the empirical "
        "NTK of a fixed probe set on clean inputs (C-NTK) and on PGD examples (AE-NTK) tracked at initialisation "
        "and after every epoch, clean and PGD accuracies per epoch, a checkpoint per epoch, and --resume. "
        "With --linearize-from, trains the linearized (or --centered) network around a checkpoint (LOO sec. 2).",
    ),
    "dynamics": (
        "figures of how the kernels of training runs moved (TK fig. 3, 6; LOO fig. 1, 4)",
        "Read the run folders of ntkrobust train and draw, the runs overlaid: kernel-distance "
        "heatmaps, polar trajectories of the whole kernel and of its top-20 space, Frobenius norm and "
        "concentration, kernel velocity and distance to the final kernel, effective rank and mean "
        "specialization, class-sorted kernel images, accuracy curves, the relative magnitude of linearized "
        "runs, the kernel specialization matrices at --ksm-epochs (RAT), with --baseline RUN the kernel distance "
        "of every run to that run (RAT), and with --eigenvectors K pictures of the top NTK eigenvectors at "
        "initialisation and at the end of every run. The folder of a train --seeds run is drawn as one run: "
        "mean +- std over its seeds in the curves, its first seed in the pictures.",
    ),
    "two-layer": (
        "TK supp. C: wide two-layer nets against their NTK through training (gradient cosine, transfer)",
        "Train two-layer ReLU nets of supp. eq. 28 (full-batch gradient descent on the l2 loss) and, "
        "at logged epochs, compare each net (as f - f0) with the closed-form NTK machine at the aligned time: "
        "cosine similarity of loss input-gradients (supp. eq. 30) and the net's accuracy under its own white-box "
        "attack, under the NTK-generated examples and under random-sign noise (TK fig. 4, supp. fig. 1).",
    ),
    "transfer": (
        "black-box NTK attacks against trained nets: transfer matrix, transferability tau",
        "Adversarial examples from the NTK machines of analytic architectures (before any training, "
        "TK sec. 3.2) and from empirical-NTK surrogates (a kernel machine on the eNTK of nets at initialisation, "
        "supp. B), against trained target nets (checkpoints of train / two-layer, TorchScript files, or state "
        "dicts of registry models), beside each net's own white-box attack and random-sign noise of the same "
        "eps; every net's own examples also attack every other net (transferability tau, LOO sec. 5).",
    ),
    "evaluate": (
        "robust accuracy as RobustBench measures it: clean, PGD-20, PGD-100, CW, AutoAttack",
        "Evaluate trained nets (checkpoints of train / two-layer, MODEL=STATE_DICT files, or with "
        "--trust-model-code TorchScript / .pt2 files) on the test points of the data: clean accuracy, PGD-20 and "
        "PGD-100 on the cross-entropy, PGD-100 on the CW margin loss and the standard AutoAttack (APGD-CE, APGD-T, "
        "FAB-T, Square, by pyautoattack), per net the worst case over them, and a flag where AutoAttack lies far "
        "below the gradient attacks (gradient masking).",
    ),
    "reproduce": (
        "every finding of the three papers from one command, with a report that says paper vs here",
        "Run the recipes of TARGET (tk, loo, rat, beyond, all, or one recipe of --list) at --scale smoke "
        "(digits, seconds), cpu (the real MNIST and CIFAR-10 subset under --data-root, 5 to 26 minutes "
        "per paper on 2 cores by --list) or paper (the papers' sizes, on a GPU); every step already finished in "
        "--out under the same config is reused, so an interrupted reproduction resumes. Writes report.html "
        "(self-contained), report.md and findings.json: per finding the claim, the paper's number, the measured "
        "number and the verdict.",
    ),
    "make-npz": (
        "write a dataset (after --classes / subsets / --from-test-split) as an .npz",
        "Resolve the data flags and save the result as an .npz that --data accepts.",
    ),
}


def _attack_parser(p: argparse.ArgumentParser) -> None:
    _add_data_flags(p)
    g = p.add_argument_group("kernel machine")
    g.add_argument("--arch", default="fc2", choices=ARCHITECTURES, help="infinite-width architecture (default fc2)")
    _add_machine_flags(g)
    g = _add_attack_flags(p, choices=METHODS, method_help="attack (default fgsm)")
    _add_output_flags(p, what="output folder: adversarial.npz, results.json")


def _features_parser(p: argparse.ArgumentParser) -> None:
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
        step_help="PGD step of --feature-attack pgd (default: standard, scaled with --eps) and of the robust-only "
        "kernels (default: 2.5·eps/--robust-steps)",
        between=[(("--feature-attack",), feature_attack)],
    )
    g.add_argument(
        "--image-index",
        type=_non_negative_int,
        default=0,
        help="held-out image whose feature gradients are drawn (default 0)",
    )
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
        help="PGD steps against f'_r, of size --step or 2.5·eps/steps (default 10)",
    )
    _add_output_flags(p, what="output folder: features.csv, PNG figures, results.json")


def _entk_parser(p: argparse.ArgumentParser) -> None:
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
    g.add_argument(
        "--n",
        "--points",
        dest="n",
        type=_positive_int,
        default=100,
        help="class-balanced points from --split (default 100; --points under torchrun, whose parser takes --n)",
    )
    g.add_argument(
        "--split", choices=("train", "test"), default="train", help="where the points come from (default train)"
    )
    g.add_argument(
        "--kind",
        default="trace",
        help="full (N,N,C,C), class-blocks (N,N,C: the diagonal blocks), trace (N,N), class:I (N,N: output I's "
        "block) or rademacher:K (N,N: unbiased trace estimate from K random-sign draws) (default trace)",
    )
    g.add_argument(
        "--adversarial-eps",
        type=_number,
        help="AE-NTK: the kernel on the net's own PGD examples of this linf radius (pixel units)",
    )
    g.add_argument(
        "--pgd-steps", type=_positive_int, help="PGD steps of --adversarial-eps (default: 40 grey / 10 colour images)"
    )
    g.add_argument(
        "--pgd-step", type=_number, help="PGD step of --adversarial-eps (default: the standard step scaled to the eps)"
    )
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="compute dtype (default float32)")
    g.add_argument(
        "--memory-budget",
        type=_positive_int,
        help="working memory for Jacobian chunks in MiB, beside the kernel itself (default: 40%% of the free "
        "memory of the device, at least 1024); more memory means fewer passes over the points",
    )
    _add_device_flag(g)
    _add_output_flags(p, what="output folder: kernel.npz, metrics.json, kernel.png")


def _train_parser(p: argparse.ArgumentParser) -> None:
    _add_data_flags(p)
    _train_network_flags(p)
    _train_training_flags(p)
    _train_tracking_flags(p)
    _add_output_flags(p, what="run folder: config.json, history.json, checkpoints/, kernels/")


def _train_network_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("network")
    g.add_argument(
        "--model", help=f"registry model (default mnist-cnn for 1-channel images, else cifar-cnn): {', '.join(MODELS)}"
    )
    g.add_argument("--width", type=_positive_int, help="hidden width / base channels of --model (default: the model's)")
    g.add_argument(
        "--init",
        choices=INITIALISATIONS,
        default="default",
        help="conv / linear weights: the model's own, or normal, truncated-normal or uniform of variance "
        "2/fan_in (RAT app. B; not for the NTK twins fc*, conv*, two-layer)",
    )
    g.add_argument(
        "--linearize-from",
        type=Path,
        metavar="CHECKPOINT",
        help="train f_lin = f_θt + J(θ − θt) around this checkpoint's weights θt, BatchNorm frozen (LOO sec. 2)",
    )
    g.add_argument("--centered", action="store_true", help="with --linearize-from: train J(θ − θt) alone (centered)")
    g.add_argument(
        "--centered-standard",
        action="store_true",
        help="with --linearize-from: train the full net f_θ − f_θt from θt (LOO table 1's centered standard net)",
    )
    g.add_argument(
        "--stage2-batchnorm",
        choices=("frozen", "train"),
        default="frozen",
        help="--centered-standard: BatchNorm at θt's running statistics (default) or trained on each batch",
    )


def _train_training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--mode", default="standard", choices=TRAINING_MODES, help="training mode (default standard)")
    g.add_argument(
        "--epochs",
        type=_non_negative_int,
        default=10,
        help="epochs (default 10; 0: only the evaluation, kernels and checkpoint at initialisation)",
    )
    g.add_argument("--lr", type=_number, default=0.01, help="SGD learning rate (default 0.01)")
    g.add_argument("--momentum", type=_number, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=_number, default=0.0, help="SGD weight decay (default 0)")
    g.add_argument(
        "--milestones", type=_int_list, default=(), help="epochs after which the learning rate drops, e.g. 50,75"
    )
    g.add_argument("--gamma", type=_number, default=0.1, help="learning-rate factor at each milestone (default 0.1)")
    g.add_argument("--batch-size", type=_positive_int, default=128, help="mini-batch size (default 128)")
    g.add_argument(
        "--eps",
        type=_number,
        help="linf radius of training and evaluation attacks, pixel units, e.g. 0.3 or 8/255 (default: 0.3 grey, "
        "8/255 colour)",
    )
    g.add_argument(
        "--pgd-steps", type=_positive_int, help="PGD steps of pgd / trades / te training (default: 40 grey, 10 colour)"
    )
    g.add_argument(
        "--pgd-step",
        type=_number,
        help="PGD step of pgd / trades / te training (default: 0.01 grey, 2/255 colour, scaled to --eps)",
    )
    g.add_argument("--trades-beta", type=_number, default=6.0, help="TRADES robustness weight beta (default 6)")
    g.add_argument(
        "--switch-epoch",
        type=_non_negative_int,
        help="train clean for this many epochs, then in --mode (RAT sec. 5)",
    )
    g.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default="none",
        help="crop-flip: random crop after 4-pixel zero padding, plus a random flip on colour images (images of 16 "
        "pixels a side or more; default none)",
    )
    g.add_argument(
        "--augment-shared", action="store_true", help="one crop / flip draw per mini-batch, not per example (RAT 6)"
    )
    g.add_argument(
        "--te-start",
        type=_positive_int,
        metavar="EPOCH",
        help="--mode te: first epoch of the regulariser (default 45%%)",
    )
    g.add_argument(
        "--te-end", type=_positive_int, metavar="EPOCH", help="--mode te: epoch its weight is reached (default 75%%)"
    )
    g.add_argument(
        "--te-weight",
        type=_number,
        help="--mode te: the regulariser's weight after the ramp (default 300, Dong et al.)",
    )
    g.add_argument(
        "--eps-warmup",
        type=_non_negative_int,
        default=0,
        metavar="EPOCHS",
        help="ramp the training attack's eps (and step) linearly from 0 over the first EPOCHS adversarial epochs",
    )


def _train_tracking_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking")
    g.add_argument(
        "--track-kernel",
        type=_non_negative_int,
        default=300,
        metavar="N",
        help="class-balanced training points of the tracked eNTKs (default 300; 0: no kernels)",
    )
    g.add_argument(
        "--track-every",
        type=_positive_int,
        metavar="STEPS",
        help="track every STEPS steps (and the last), not every epoch",
    )
    g.add_argument(
        "--track-full",
        action="store_true",
        help="compute the full C x C kernels and store them (clean_full, adversarial_full in each kernel file; "
        "default: the C class blocks, all the metrics need, 1/C of the cost)",
    )
    g.add_argument(
        "--estimator",
        help="exact (default) or rademacher:K: an unbiased estimate of the trace kernel from K random-sign "
        "combinations of the outputs, at K/C of the cost, without the specialization metrics",
    )
    g.add_argument(
        "--eval-n",
        type=_positive_int,
        default=500,
        help="class-balanced points per split for the PGD accuracies (default 500; clean accuracy uses all)",
    )
    g.add_argument(
        "--eval-pgd-steps",
        type=_positive_int,
        help="PGD steps of the per-epoch robust accuracy and the AE-NTK (default 10, steps that reach --eps)",
    )
    g.add_argument(
        "--full-eval-steps",
        type=_non_negative_int,
        help="PGD steps of the full evaluation after the last epoch (default: 40 grey, 20 colour; 0: none)",
    )
    g.add_argument(
        "--final-eval",
        choices=("none", "autoattack"),
        default="none",
        help="autoattack: after the last epoch, evaluate's PGD-20/100, CW-100 and AutoAttack on --eval-n test points",
    )
    g.add_argument(
        "--full-eval-every",
        type=_positive_int,
        metavar="EPOCHS",
        help="also run the full evaluation every EPOCHS epochs",
    )
    g.add_argument(
        "--batchnorm",
        choices=("running", "batch", "both"),
        default="running",
        help="running ('w buffer'); batch: no running statistics anywhere in the run ('w/o buffer'); both: a "
        "running run also evaluated with batch statistics (RAT sec. 4)",
    )
    g.add_argument("--memory-budget", type=_positive_int, help="eNTK working memory in MiB (default: 40%% of free)")
    _add_device_flag(g)
    g.add_argument(
        "--seeds",
        type=_seed_list,
        default=(),
        help="one run per seed in OUT/seed_S (initialisation, shuffles, attacks; the data and probe of --seed)",
    )
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (same configuration)")


def _dynamics_parser(p: argparse.ArgumentParser) -> None:
    def epochs(text: str) -> tuple[float, ...]:
        """'0,5,10' -> (0.0, 5.0, 10.0): tracked epochs, each given once."""
        values = [_number(item) for item in _items(text)]
        if not values or min(values) < 0:
            raise argparse.ArgumentTypeError(f"expected epochs (numbers >= 0) separated by commas, got {text!r}")
        return tuple(dict.fromkeys(values))

    p.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run folders written by ntkrobust train; the folder of a train --seeds run is one run, its curves "
        "the mean +- std over its seeds",
    )
    g = p.add_argument_group("comparisons (RAT sec. 4-6)")
    g.add_argument(
        "--baseline",
        type=Path,
        metavar="RUN_DIR",
        help="draw the kernel distance of every run to this run, C-NTK and AE-NTK, at the steps both tracked on "
        "the same probe (baseline_distance.png; RAT figs. 5, 7, 17); a train --seeds folder: its first seed",
    )
    g.add_argument(
        "--ksm-epochs",
        type=epochs,
        metavar="E1,E2,...",
        help="tracked epochs of the kernel specialization heatmaps (specialization_*.png; RAT figs. 3, 4, 8; "
        "default: each run's first and last tracked epoch)",
    )
    g = p.add_argument_group("eigenvector pictures (LOO sec. 8)")
    g.add_argument(
        "--eigenvectors",
        type=_non_negative_int,
        default=0,
        metavar="K",
        help="picture the top K eigenvectors of the probe kernel (default 0: none; each picture is an optimisation "
        "of --eigenvector-steps steps, minutes on a CPU)",
    )
    g.add_argument(
        "--eigenvector-class", type=_non_negative_int, default=0, help="output index 0..C-1 whose kernel (default 0)"
    )
    g.add_argument("--eigenvector-steps", type=_positive_int, default=200, help="optimisation steps (default 200)")
    _add_device_flag(g)
    _add_output_flags(p, what="output folder: PNG figures and results.json")


def _two_layer_parser(p: argparse.ArgumentParser) -> None:
    _add_data_flags(p)
    g = p.add_argument_group("networks")
    g.add_argument(
        "--width", type=_positive_int, action="append", help="hidden width m; repeat for several (default 1000)"
    )
    g.add_argument(
        "--nets", type=_positive_int, default=1, help="networks per width, seeds --seed, --seed+1, ... (default 1)"
    )
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
    _add_device_flag(g)
    g = _add_attack_flags(p, choices=NET_METHODS, method_help="white-box and NTK attack (default fgsm)")
    g.add_argument(
        "--picture-index", type=_non_negative_int, default=0, help="test point of the gradient pictures (default 0)"
    )
    _add_output_flags(p, what="output folder: results.json, figures, gradients.npz, one checkpoint per net")


def _transfer_parser(p: argparse.ArgumentParser) -> None:
    _add_data_flags(p)
    g = p.add_argument_group("targets and sources")
    g.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="CHECKPOINT",
        help="a net to attack: a checkpoint of this tool, MODEL[:WIDTH]=STATE_DICT, or (with --trust-model-code) "
        "a TorchScript or .pt2 file; repeat",
    )
    g.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="a net whose white-box examples attack the targets, not itself a target (same forms); repeat",
    )
    g.add_argument(
        "--examples",
        action="append",
        default=[],
        metavar="NPZ",
        help="examples saved by an earlier run on the same test points and within --eps (attack's adversarial.npz, "
        "transfer's examples.npz) attack the targets as black-box sources; repeat",
    )
    g.add_argument(
        "--trust-model-code",
        action="store_true",
        help="also load TorchScript and .pt2 files as targets and sources: loading them runs code from the file "
        "(a .pt2 can unpickle arbitrary objects), so only for files you made or trust; without it only this "
        "tool's checkpoints and MODEL=STATE_DICT files load, with weights_only",
    )
    g.add_argument(
        "--kernel-arch",
        action="append",
        choices=ARCHITECTURES,
        help="analytic NTK whose machine crafts black-box examples; repeat (default fc2 unless --surrogate or "
        "--examples)",
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
    _add_device_flag(g)
    g = p.add_argument_group("kernel machines")
    _add_machine_flags(g)
    g = _add_attack_flags(p, choices=NET_METHODS, method_help="attack of every source (default fgsm)")
    _add_output_flags(
        p, what="output folder: results.json, transfer.png, examples.npz, transferability.png (τ by epoch, LOO fig. 3)"
    )


def _evaluate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "nets", nargs="+", metavar="NET", help="checkpoint, MODEL[:WIDTH]=STATE_DICT, or (trusted) .pt / .pt2"
    )
    _add_data_flags(p)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eps", type=_number, help="linf radius, pixel units, e.g. 8/255 (default: 0.3 grey, 8/255 colour)")
    g.add_argument(
        "--attacks",
        type=_attack_list,
        default=EVALUATION_ATTACKS,
        help=f"comma-separated, of {','.join(EVALUATION_ATTACKS)} (default: all)",
    )
    g.add_argument(
        "--masking-gap",
        type=_number,
        default=0.1,
        help="flag a net whose AutoAttack accuracy lies more than this below every gradient attack's (default 0.1)",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=250,
        help="points per AutoAttack run (default 250), each seeded by its first row; PGD and CW run in 256s",
    )
    g.add_argument(
        "--restarts",
        type=_positive_int,
        default=1,
        help="random starts per point for PGD and CW (default 1); a point is robust only if none succeeds",
    )
    g.add_argument(
        "--trust-model-code",
        action="store_true",
        help="also load TorchScript and .pt2 files: loading them runs code from the file",
    )
    _add_device_flag(g)
    _add_output_flags(p, what="output folder: results.json, robust_accuracy.png")


def _make_npz_parser(p: argparse.ArgumentParser) -> None:
    _add_data_flags(p)
    _add_output_flags(p, what="the .npz file to write")


def _reproduce_parser(p: argparse.ArgumentParser) -> None:
    from ntkrobust.reproduce._recipe import SCALES

    p.add_argument("target", nargs="?", metavar="TARGET", help="tk, loo, rat, beyond, all, or a recipe name")
    p.add_argument("--scale", choices=SCALES, help=f"{', '.join(SCALES)} (default smoke)")
    p.add_argument("--data-root", type=Path, help="folder holding mnist/ and cifar10/ (cpu and paper scales)")
    p.add_argument(
        "--list", action="store_true", help="print the recipes (of TARGET, if given) with their estimated cost and exit"
    )
    p.add_argument("--out", type=_out_path, help="reproduction folder: steps/, report.html, report.md, findings.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage / epoch lines")


#: command -> (study module, settings class); a dotted module is a package of its own

COMMANDS = {
    "attack": ("attack", "AttackSettings", _attack_parser),
    "features": ("features", "FeaturesSettings", _features_parser),
    "entk": ("entk", "EntkSettings", _entk_parser),
    "train": ("train", "TrainSettings", _train_parser),
    "dynamics": ("dynamics", "DynamicsSettings", _dynamics_parser),
    "two-layer": ("two_layer", "TwoLayerSettings", _two_layer_parser),
    "transfer": ("transfer", "TransferSettings", _transfer_parser),
    "evaluate": ("evaluate", "EvaluateSettings", _evaluate_parser),
    "make-npz": ("make_npz", "MakeNpzSettings", _make_npz_parser),
    "reproduce": ("ntkrobust.reproduce.run", "ReproduceSettings", _reproduce_parser),
}
