"""Speed of scoring eigen-features, as ratios measured in one run (this machine is noisy).

    python benchmarks/feature_speed.py [--mnist ../shared/data/mnist] [--arch fc2] [--repeats 5] [--profile]

On 1000 training and --n-test held-out points of MNIST (all ten classes) it times
- one FGSM evaluation of the full machine: clean predictions, the attack, predictions under it;
- ``feature_scores`` for the first m = 100 features (usefulness and FGSM robustness of each);
- the plain per-feature loop: one machine per feature (``restricted_to([i])``), attacked and
  evaluated exactly like the full machine (timed on --loop-features features, scaled to m);
and prints [1] features / one FGSM (goal <= 5) and [2] loop / features (goal >= 10x), after
checking that both routes give the same scores on the features the loop timed. FGSM and
features are timed in alternation and [1] is the median of the per-round ratios, so a change
of load on the machine during the run moves both sides of a ratio.
--profile adds where the time of ``feature_scores`` goes (``kernels._feature_rows.Stopwatch``
stages, each waited for; a cProfile of the host side), the general Jacobian route on the same
inputs (its scores must be equal), and the floor: the bare GEMM of pairs × pixels × training
points that the pair gradients and the attacked rows each need once.
Uses real MNIST (cut from the official test set) when the folder exists, else noise images;
compile time is excluded (one warm-up call), every number is a median of --repeats.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import SHARED_MNIST, against_goal, load_mnist, median_seconds

from ntkrobust.attacks import AttackSpec, ThreatModel, robust_accuracy
from ntkrobust.kernels import feature_scores, fit_kernel_machine, get_architecture
from ntkrobust.kernels.adversarial import craft_adversarial

GOAL_FGSM_RATIO = 5.0
GOAL_LOOP_SPEEDUP = 10.0


def alternating_seconds(fns: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Wall times of each of ``fns`` over ``repeats`` rounds, called in turn, after a warm-up."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST)
    parser.add_argument("--arch", default="fc2")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--precision", default="float64", choices=("float64", "float32"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-features", type=int, default=10, help="features timed in the per-feature loop")
    parser.add_argument("--profile", action="store_true", help="where the time of feature_scores goes")
    args = parser.parse_args()

    x_tr, y_tr, x_te, y_te, source = load_mnist(args.mnist, args.n_train, args.n_test)
    print(f"data: {source}; {x_tr.shape[0]} train, {x_te.shape[0]} held out, inputs {x_te.shape[1:]}")
    machine = fit_kernel_machine(get_architecture(args.arch), x_tr, y_tr, precision=args.precision)
    threat = ThreatModel("linf", args.eps)
    fgsm = AttackSpec("fgsm", threat.eps, threat.norm)
    m = args.n_features

    def one_fgsm(mach=machine) -> tuple[float, float]:
        clean = mach.predict(x_te)
        adv = mach.predict(craft_adversarial(mach, x_te, y_te, fgsm))
        return robust_accuracy(clean, y_te), robust_accuracy(adv, y_te, clean)

    def features() -> object:
        return feature_scores(machine, x_te, y_te, threat, n_features=m)

    looped = list(range(min(args.loop_features, m)))
    singles = [machine.restricted_to([i]) for i in looped]

    def loop() -> list[tuple[float, float]]:
        return [one_fgsm(single) for single in singles]

    fgsm_times, feature_times = alternating_seconds([one_fgsm, features], args.repeats)
    t_fgsm, t_features = statistics.median(fgsm_times), statistics.median(feature_times)
    ratio = statistics.median(f / g for f, g in zip(feature_times, fgsm_times, strict=True))
    t_loop = median_seconds(loop, max(1, args.repeats // 2)) * m / len(looped)

    scores = features()
    agree = all((scores.usefulness[i], scores.robustness[i]) == pair for i, pair in zip(looped, loop(), strict=True))
    print(f"arch {args.arch}, precision {args.precision}, eps {args.eps:g}, m = {m} features")
    print(f"one FGSM on the full machine (clean + attack + attacked predictions): {t_fgsm * 1e3:.0f} ms")
    print(f"feature_scores, {m} features: {t_features * 1e3:.0f} ms")
    print(f"per-feature loop ({len(looped)} timed, scaled to {m}): {t_loop * 1e3:.0f} ms")
    print(f"loop and vectorised scores agree on the timed features: {agree}")
    if args.profile:
        profile(machine, x_te, y_te, threat, m, t_fgsm, args.repeats)
    speedup = t_loop / t_features
    shown, met = against_goal(ratio, GOAL_FGSM_RATIO, at_most=True, digits=1)
    print(f"[1] features / one FGSM = {shown}   goal <= {GOAL_FGSM_RATIO:g}: {met}")
    shown, met = against_goal(speedup, GOAL_LOOP_SPEEDUP, at_most=False, digits=1)
    print(f"[2] speed-up over the per-feature loop = {shown}x   goal >= {GOAL_LOOP_SPEEDUP:g}x: {met}")


def profile(machine, x, y, threat, m: int, t_fgsm: float, repeats: int) -> None:  # type: ignore[no-untyped-def]
    """Stages of the pair route, the host side, the general route and the GEMM floor (in ms and
    in units of one FGSM of the full machine, measured above)."""
    from ntkrobust.kernels._feature_rows import Stopwatch, pair_scores
    from ntkrobust.kernels._jax import float64, jax, jnp
    from ntkrobust.kernels.features import feature_coefficients

    print(f"profile (one FGSM = {t_fgsm * 1e3:.0f} ms = 1.0):")
    if machine.arch.dot_kernel_fn is None:
        print("  no dot_kernel_fn: feature_scores takes the general Jacobian route")
        return
    target, c = machine.target_index(y), feature_coefficients(machine, np.arange(m))

    @float64
    def staged() -> dict[str, float]:
        watch = Stopwatch(enabled=True)
        pair_scores(machine, x, target, c, threat, attack="fgsm", stopwatch=watch)
        return watch.seconds

    runs = [staged() for _ in range(repeats + 1)][1:]
    for name in runs[0]:
        t = statistics.median(run[name] for run in runs)
        print(f"  {name:<40} {t * 1e3:7.0f} ms  {t / t_fgsm:5.2f}")
    total = statistics.median(sum(run.values()) for run in runs)
    print(f"  {'all stages, each waited for':<40} {total * 1e3:7.0f} ms  {total / t_fgsm:5.2f}")

    host = cProfile.Profile()
    host.enable()
    scores = feature_scores(machine, x, y, threat, n_features=m)
    host.disable()
    text = io.StringIO()
    pstats.Stats(host, stream=text).sort_stats("tottime").print_stats(6)
    print("  cProfile of one call, by own time (numpy.asarray = waiting for JAX):")
    lines = text.getvalue().splitlines()
    table = lines[next(i for i, line in enumerate(lines) if "ncalls" in line) :]
    print("\n".join("    " + line for line in table if line.strip()))

    def general() -> object:
        return feature_scores(machine, x, y, threat, n_features=m, route="jacobian")

    t_general = median_seconds(general, max(1, repeats // 2))
    same = general()
    equal = np.array_equal(same.usefulness, scores.usefulness) and np.array_equal(same.robustness, scores.robustness)
    print(
        f"  general Jacobian route (before): {t_general * 1e3:.0f} ms  {t_general / t_fgsm:.2f}; same scores: {equal}"
    )

    pairs = round(scores.usefulness.sum() * x.shape[0])
    active = int(np.any(np.asarray(machine.x_train) != 0, axis=0).sum())
    gemm = jax.jit(lambda a, b: a @ b)

    @float64
    def bare_gemm() -> float:
        w = jnp.asarray(np.random.default_rng(0).random((pairs, machine.n_train)))
        xa = jnp.asarray(np.random.default_rng(1).random((machine.n_train, active)))
        return median_seconds(lambda: gemm(w, xa).block_until_ready(), repeats)

    t_gemm = bare_gemm()
    print(
        f"  floor: {pairs} attacked pairs; one bare GEMM pairs x {active} active pixels x {machine.n_train} train: "
        f"{t_gemm * 1e3:.0f} ms = {t_gemm / t_fgsm:.2f}; gradients + attacked rows need two: "
        f"{2 * t_gemm / t_fgsm:.2f}, before the recursion of the attacked rows and the clean pass"
    )
    # The same floor counted in GEMM work: one FGSM multiplies test points × pixels × training
    # points four times (clean rows, the gradient's two GEMMs, attacked rows); scoring multiplies
    # the clean points once and every attacked pair twice, over the active pixels only.
    n_test, pixels = x.shape[0], int(np.prod(x.shape[1:]))
    ratio = (n_test + 2 * pairs) * active / (4 * n_test * pixels)
    print(
        f"  GEMM work: scoring ({n_test} clean + 2 x {pairs} pairs) x {active} pixels / one FGSM (4 x {n_test}) x "
        f"{pixels} pixels = {ratio:.2f}: the ratio [1] reaches at equal GEMM speed and free elementwise work"
    )


if __name__ == "__main__":
    main()
