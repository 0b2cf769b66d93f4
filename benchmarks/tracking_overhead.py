"""Kernel-tracking overhead of ``ntkrobust train`` as a share of an epoch, measured in one run.

    python benchmarks/tracking_overhead.py [--mnist ../shared/data/mnist] [--probe 300] [--n-train 5000]
        [--repeats 3] [--device cpu|cuda]

Case (the issue's): the MNIST CNN (~824K parameters) on MNIST (cut from the official test set when
present, else noise images of its shape), the default probe of 300 class-balanced training points.
One tracking point is what ``bridge.tracking.KernelTracker.track`` does: the C-NTK and AE-NTK of
the probe (their 10 class blocks (N, N, 10), train's default) and their metrics, plus PGD examples
of the probe (ℓ∞ ε = 0.3, 40 steps of 0.01). After an epoch, ``ntkrobust train`` takes those
examples from its per-epoch evaluation, whose training-point set starts with the probe (when
--eval-n >= the probe), so the tracking costs only the kernels and metrics ("shared"); with
--track-every it attacks the probe itself ("standalone"). Both are timed against one epoch of
training on the same data and machine, batch 128: standard training and PGD-AT (PGD-40, the
training mode the tracking is there to study). The per-epoch evaluation (clean accuracy on all
points, PGD accuracy on --eval-n per split) is timed too and reported apart: it is not kernel
tracking, and --eval-n sets its cost.

It also times one shared tracking point per kernel kind (the full (N, N, 10, 10) kernels, the class
blocks, and the randomized trace estimates rademacher:2 and rademacher:1 of ``--estimator``)
against one standard epoch (goal <= 1.0): epochs and tracking points in turn, --repeats pairs per
kind, the median of the pairs' ratios (this VM's speed drifts within minutes; a ratio of times
taken minutes apart does not mean much).

Prints ratios (tracking seconds / epoch seconds; goal <= 0.15) measured in one run; times are
medians of --repeats calls after one warm-up call, but for the PGD-AT epoch: the mean of
--pgd-epochs epochs (default 1, each a minute here) without a warm-up of its own (the attack's
code has run in the evaluation before it). Full MNIST has 60,000 training images, twelve
times the default 5,000 (60,000 / --n-train in general), so its epochs take that much longer and
the share falls as much: that is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

from _common import (
    ALLOCATOR,
    SHARED_MNIST,
    against_goal,
    load_mnist,
    median_seconds,
    paired_seconds,
    until_done,
    wait_for_device,
)

from ntkrobust.attacks import EPOCH_PGD_STEPS, AttackSpec, evaluation_schedule

#: Madry et al.'s MNIST attack (PGD-40 of 0.01), train's per-epoch evaluation before issue 16
MNIST_PGD = AttackSpec.standard("pgd", channels=1, seed=0)
#: train's per-epoch evaluation and AE-NTK attack now: PGD-10 of 2.5 eps / 10
EPOCH_PGD = AttackSpec("pgd", 0.3, "linf", *evaluation_schedule(1, 0.3, EPOCH_PGD_STEPS), seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=str(SHARED_MNIST))
    parser.add_argument("--probe", type=int, default=300)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--eval-n", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pgd-epochs", type=int, default=1, help="PGD-AT epochs to time (each is long)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    from ntkrobust import kernels  # noqa: F401  (TensorFlow/Triton import order: see kernels/_jax.py)
    from ntkrobust.bridge.data import balanced_indices
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.bridge.tracking import KernelTracker, clean_accuracy, pgd_accuracy
    from ntkrobust.bridge.training import TrainConfig, make_optimizer, train_epoch

    warnings.filterwarnings("ignore", message="CUDA initialization")
    from pathlib import Path

    x_train, y_train, _, _, source = load_mnist(Path(args.mnist), args.n_train, 1000)
    device = torch.device(args.device)
    x = torch.as_tensor(x_train, device=device)
    y = torch.as_tensor(y_train, device=device)
    config = model_config("mnist-cnn", (1, 28, 28), 10, seed=0)
    model = build_model(config).to(device)
    probe = torch.as_tensor(balanced_indices(y_train, tuple(range(10)), args.probe, 0, what="probe"), device=device)
    tracker = KernelTracker(x=x[probe], targets=y[probe], num_classes=10, eps=0.3, step=0.01, steps=40)
    print(
        f"data: {source}; {x.shape[0]} training points, probe {args.probe}, device {device}, "
        f"torch threads {torch.get_num_threads()}; allocator: {ALLOCATOR}"
    )

    standard = TrainConfig(mode="standard", epochs=1, batch_size=128)
    adversarial = TrainConfig(mode="pgd", epochs=1, batch_size=128, eps=0.3, pgd_step=0.01, pgd_steps=40)
    optimizer = make_optimizer(model, standard)
    # on a GPU every timed call waits for the work it queued (until_done)
    standard_epoch = until_done(lambda: train_epoch(model, optimizer, x, y, standard, 1), device)
    epoch_standard = median_seconds(standard_epoch, args.repeats)
    track = median_seconds(until_done(lambda: tracker.track(model), device), args.repeats)
    examples = pgd_accuracy(model, tracker.x, tracker.targets, MNIST_PGD)[1]
    shared = median_seconds(until_done(lambda: tracker.track(model, x_adv=examples), device), args.repeats)
    evaluation_points = torch.as_tensor(
        balanced_indices(y_train, tuple(range(10)), args.eval_n, 0, what="eval"), device=device
    )

    def evaluate(attack: AttackSpec = MNIST_PGD) -> None:
        clean_accuracy(model, x, y)
        pgd_accuracy(model, x[evaluation_points], y[evaluation_points], attack)

    evaluation = median_seconds(until_done(evaluate, device), args.repeats)
    # train's per-epoch default since issue 16: PGD-10 with steps that reach eps (the full PGD-40 runs once, at the end)
    per_epoch = median_seconds(until_done(lambda: evaluate(EPOCH_PGD), device), args.repeats)
    start = time.perf_counter()
    for _ in range(args.pgd_epochs):
        train_epoch(model, optimizer, x, y, adversarial, 1)
    wait_for_device(device)
    epoch_pgd = (time.perf_counter() - start) / args.pgd_epochs

    print(f"epoch, standard training: {epoch_standard:8.2f} s")
    print(f"epoch, PGD-40 AT:         {epoch_pgd:8.2f} s")
    print(f"one tracking point:       {track:8.2f} s  standalone (PGD-40 of the probe + C-NTK + AE-NTK + metrics)")
    print(f"one tracking point:       {shared:8.2f} s  shared (evaluation's PGD examples; C-NTK, AE-NTK, metrics)")
    print(f"evaluation, PGD-40:       {evaluation:8.2f} s  (clean on all, PGD-40 on {args.eval_n}; one split)")
    print(f"evaluation, PGD-10:       {per_epoch:8.2f} s  (train's per-epoch default; the same points)")
    print(
        f"per-epoch evaluation, PGD-10 / PGD-40: {per_epoch / evaluation:.3f}; PGD-10 evaluation of both splits / "
        f"standard epoch {2 * per_epoch / epoch_standard:.2f}, / PGD-40 AT epoch {2 * per_epoch / epoch_pgd:.3f}"
    )
    # issue 19's measure: one shared tracking point (C-NTK + AE-NTK of the probe, their metrics) per
    # kernel kind against one standard epoch on the same images (goal <= 1.0), each point timed
    # right after an epoch: the median of the pairs' ratios, and their range
    import dataclasses

    by_kind = {}
    for kind in ("full", "class-blocks", "rademacher:2", "rademacher:1"):
        other = dataclasses.replace(tracker, kind=kind)
        pairs = paired_seconds(
            standard_epoch,
            until_done(lambda: other.track(model, x_adv=examples), device),  # noqa: B023
            args.repeats,
        )
        by_kind[kind] = (statistics.median(t for _, t in pairs), sorted(t / e for e, t in pairs))
    for kind, (seconds, ratios) in by_kind.items():
        shown, met = against_goal(statistics.median(ratios), 1.0, at_most=True, digits=2, width=5)
        print(
            f"tracking point, {kind:13}: {seconds:7.2f} s = {shown} standard epochs "
            f"(pairs {ratios[0]:.2f}-{ratios[-1]:.2f}; goal <= 1.0: {met}), "
            f"{seconds / by_kind['class-blocks'][0]:.2f} of class-blocks"
        )
    scale = 60000 / x.shape[0]
    for what, cost in (("standalone", track), ("shared", shared)):
        for name, seconds in (("standard", epoch_standard), ("PGD-AT", epoch_pgd)):
            share = cost / seconds
            shown, met = against_goal(share, 0.15, at_most=True, digits=3, width=6)
            print(
                f"{what} tracking / {name} epoch: {shown}  (goal <= 0.15: {met})"
                f"; extrapolated to full MNIST (60k, epochs {scale:.3g}x longer) {share / scale:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
