"""Speed of scoring eigen-features, as ratios measured in one run (this machine is noisy).

    python benchmarks/feature_speed.py [--mnist ../shared/data/mnist] [--arch fc2] [--repeats 3]

On 1000 training and --n-test held-out points of MNIST (all ten classes) it times
- one FGSM evaluation of the full machine: clean predictions, the attack, predictions under it;
- ``feature_scores`` for the first m = 100 features (usefulness and FGSM robustness of each);
- the plain per-feature loop: one machine per feature (``restricted_to([i])``), attacked and
  evaluated exactly like the full machine (timed on --loop-features features, scaled to m);
and prints [1] features / one FGSM (goal <= 5) and [2] loop / features (goal >= 10x), after
checking that both routes give the same scores on the features the loop timed.
Uses real MNIST (cut from the official test set) when the folder exists, else noise images;
compile time is excluded (one warm-up call), every number is the median of --repeats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import SHARED_MNIST, load_mnist, median_seconds

from ntkrobust.attacks import AttackSpec, ThreatModel, robust_accuracy
from ntkrobust.kernels import feature_scores, fit_kernel_machine, get_architecture
from ntkrobust.kernels.adversarial import craft_adversarial

GOAL_FGSM_RATIO = 5.0
GOAL_LOOP_SPEEDUP = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST)
    parser.add_argument("--arch", default="fc2")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--precision", default="float64", choices=("float64", "float32"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-features", type=int, default=10, help="features timed in the per-feature loop")
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

    t_fgsm = median_seconds(one_fgsm, args.repeats)
    t_features = median_seconds(features, args.repeats)
    t_loop = median_seconds(loop, max(1, args.repeats // 2)) * m / len(looped)

    scores = features()
    agree = all((scores.usefulness[i], scores.robustness[i]) == pair for i, pair in zip(looped, loop(), strict=True))
    print(f"arch {args.arch}, precision {args.precision}, eps {args.eps:g}, m = {m} features")
    print(f"one FGSM on the full machine (clean + attack + attacked predictions): {t_fgsm * 1e3:.0f} ms")
    print(f"feature_scores, {m} features: {t_features * 1e3:.0f} ms")
    print(f"per-feature loop ({len(looped)} timed, scaled to {m}): {t_loop * 1e3:.0f} ms")
    print(f"loop and vectorised scores agree on the timed features: {agree}")
    ratio, speedup = t_features / t_fgsm, t_loop / t_features
    print(
        f"[1] features / one FGSM = {ratio:.1f}   goal <= {GOAL_FGSM_RATIO:g}: "
        f"{'met' if ratio <= GOAL_FGSM_RATIO else 'NOT met'}"
    )
    print(
        f"[2] speed-up over the per-feature loop = {speedup:.1f}x   goal >= {GOAL_LOOP_SPEEDUP:g}x: "
        f"{'met' if speedup >= GOAL_LOOP_SPEEDUP else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
