"""The analytic half on each JAX platform against the CPU: seconds and the largest differences, in one run.

    python benchmarks/analytic_devices.py [--platforms cpu,cuda] [--mnist ../shared/data/mnist]
        [--n-train 1000] [--n-test 200] [--n-features 100]

For a GPU owner (issue 19, part 3: the analytic half on every local device). Each platform runs in
a process of its own with ``JAX_PLATFORMS`` set, since JAX chooses its backend once, when it
starts; the library splits its work over every local device of that platform. The work, in
float64 on real MNIST (cut from its test set when the folder exists, else scikit-learn's digits):
the fc2 Gram matrix of the training points; fitting the fc2 kernel machine and then, each from a
machine of its own (a machine keeps its kernel rows and eigenvectors), its test logits, the
black-box NTK-PGD attack (ℓ∞ ε = 0.1, 40 steps of 0.01, seeded random start) and 100 eigen-feature
scores (FGSM, ε = 0.1); and a conv2 Gram matrix of 100 × 100 points.

Prints each stage's seconds on each platform (the first call, with JAX's compilation, and a second
call), its ratio to the CPU's, and how far each result is from the CPU's: the largest difference
relative to the CPU result's largest entry for kernels and logits (float64: the CPU run twice
gives exactly 0; a GPU's reductions sum in another order, so expect rounding), and for the
attack the share of pixels that differ by more than 1e-6 and both robust accuracies (an iterate
of PGD takes the sign of the gradient, so an entry within rounding of zero can step the other
way).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import SHARED_MNIST

STAGES = ("gram_fc2", "fit_and_logits", "ntk_pgd", "feature_scores", "gram_conv2")


def _data(mnist: Path, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    """Real MNIST cut from its test set when the folder exists, else scikit-learn's digits, in float64."""
    from ntkrobust.bridge.data import load_dataset

    if mnist.exists():
        data = load_dataset("mnist", root=mnist, from_test_split=True, n_train=n_train, n_test=n_test)
    else:
        data = load_dataset("digits", n_train=n_train, n_test=n_test)
    return data.x_train.astype(np.float64), data.y_train, data.x_test.astype(np.float64), data.y_test


def _child(out: Path, mnist: Path, n_train: int, n_test: int, n_features: int) -> None:
    """One platform's stages, each called twice: arrays to ``out``.npz, seconds to ``out``.json."""
    import jax

    try:
        jax.devices()
    except (RuntimeError, AssertionError) as error:  # a backend this JAX lacks (0.4.38: a bare assert)
        reason = str(error).splitlines()[0] if str(error) else "no such backend (for cuda: the cuda extra)"
        sys.exit(f"JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')}: {reason}")

    from ntkrobust.attacks import AttackSpec
    from ntkrobust.attacks.threat import ThreatModel
    from ntkrobust.kernels import craft_adversarial, feature_scores, fit_kernel_machine, get_architecture
    from ntkrobust.kernels.gram import compute_gram

    x_train, y_train, x_test, y_test = _data(mnist, n_train, n_test)
    fc2, conv2 = get_architecture("fc2"), get_architecture("conv2")
    pgd = AttackSpec("pgd", 0.1, "linf", 0.01, 40, random_start=True, seed=0)

    def fit() -> Any:  # a new machine for every call: a machine keeps its kernel rows and eigenvectors
        return fit_kernel_machine(fc2, x_train, y_train, classes=tuple(range(10)))

    stages = {
        "gram_fc2": lambda: np.asarray(compute_gram(fc2, x_train)),
        "fit_and_logits": lambda: np.asarray(fit().logits(x_test)),
        "ntk_pgd": lambda: craft_adversarial(fit(), x_test, y_test, pgd),
        "feature_scores": lambda: (
            feature_scores(fit(), x_test, y_test, ThreatModel(norm="linf", eps=0.1), n_features=n_features).robustness
        ),
        "gram_conv2": lambda: np.asarray(compute_gram(conv2, x_train[:100])),
    }
    arrays, seconds = {}, {}
    for name, stage in stages.items():
        times = []
        for _ in range(2):
            start = time.perf_counter()
            arrays[name] = stage()
            times.append(time.perf_counter() - start)
        seconds[name] = times
        print(f"  {jax.default_backend()}: {name} {times[0]:.2f} s, then {times[1]:.2f} s", file=sys.stderr, flush=True)
    arrays["robust_accuracy"] = np.asarray((fit().predict(arrays["ntk_pgd"]) == y_test).mean())
    np.savez(out.with_suffix(".npz"), **arrays)
    devices = [str(d) for d in jax.local_devices()]
    out.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "devices": devices}))


def _compare(name: str, cpu: np.ndarray, other: np.ndarray) -> str:
    if name == "ntk_pgd":
        return f"pixels differing > 1e-6: {np.mean(np.abs(cpu - other) > 1e-6):.2%}"
    if name == "feature_scores":
        return f"largest robustness difference {np.max(np.abs(cpu - other)):.3g}"
    return f"largest difference / largest entry {np.max(np.abs(cpu - other)) / np.max(np.abs(cpu)):.2e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platforms", default="cpu,cuda")
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.mnist, args.n_train, args.n_test, args.n_features)
        return 0
    platforms = args.platforms.split(",")
    if platforms[0] != "cpu":
        parser.error("--platforms must start with cpu: the others are compared with it")
    source = f"real MNIST from {args.mnist}" if args.mnist.exists() else "scikit-learn's digits"
    print(f"data: {source}; {args.n_train} training and {args.n_test} test points, float64")
    found = []  # (platform, arrays, record) of each platform that ran
    with tempfile.TemporaryDirectory() as folder:
        for i, platform in enumerate(platforms):
            out = Path(folder) / f"{i}-{platform}"
            command = [sys.executable, __file__, "--child", str(out), "--mnist", str(args.mnist)]
            command += ["--n-train", str(args.n_train), "--n-test", str(args.n_test)]
            command += ["--n-features", str(args.n_features)]
            done = subprocess.run(command, env=dict(os.environ, JAX_PLATFORMS=platform), check=False)
            if done.returncode != 0:
                print(f"{platform}: FAILED (exit {done.returncode}); see its output above")
                if i == 0:
                    return 1
                continue
            with np.load(out.with_suffix(".npz"), allow_pickle=False) as arrays:
                found.append((platform, dict(arrays), json.loads(out.with_suffix(".json").read_text())))
    _, cpu_arrays, cpu_record = found[0]
    for i, (platform, arrays, record) in enumerate(found):
        print(f"{platform}: devices {record['devices']}; robust accuracy under NTK-PGD {arrays['robust_accuracy']:.3f}")
        for name in STAGES:
            first, second = record["seconds"][name]
            line = f"  {name:15} {first:8.2f} s with compilation, {second:8.2f} s"
            if i:
                line += f" = {second / cpu_record['seconds'][name][1]:.3f} of the CPU's; "
                line += _compare(name, cpu_arrays[name], arrays[name])
            print(line)
    return 0 if len(found) == len(platforms) else 1


if __name__ == "__main__":
    sys.exit(main())
