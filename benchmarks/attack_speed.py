"""Speed of the black-box NTK attack, as ratios measured in one run (this machine is noisy).

    python benchmarks/attack_speed.py [--mnist ../shared/data/mnist] [--repeats 5]

On 2000 training and 500 test points of 28x28 images with the FC2 kernel it prints:
1. one batched NTK-PGD step / the forward kernel rows Θ(x_test, X) (goal <= 3, the autodiff bound);
2. one batched loss gradient vs a per-example Python loop of the same gradient (goal >= 20x);
both for float64 (the default) and float32 test-time evaluation;
3. the two-layer kernel's closed-form gradient (supp. eq. 9) vs autodiff of the same kernel.
Uses real MNIST (cut from the official test set) when the folder exists, else uniform noise
images; compile time is excluded (one warm-up call), every number is the median of --repeats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import SHARED_MNIST, load_mnist, median_seconds

from ntkrobust.attacks import pgd
from ntkrobust.kernels import fit_kernel_machine, get_architecture

GOAL_STEP_RATIO = 3.0
GOAL_LOOP_SPEEDUP = 20.0


def block(x):  # wait for JAX's asynchronous dispatch
    return x.block_until_ready() if hasattr(x, "block_until_ready") else x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-examples", type=int, default=100, help="examples timed in the per-example loop")
    args = parser.parse_args()

    from ntkrobust.kernels._jax import jnp

    x_tr, y_tr, x_te, y_te, source = load_mnist(args.mnist, args.n_train, args.n_test)
    print(f"data: {source}; {x_tr.shape[0]} train, {x_te.shape[0]} test, inputs {x_te.shape[1:]}")
    machine = fit_kernel_machine(get_architecture("fc2"), x_tr, y_tr)
    x = jnp.asarray(x_te)
    index = machine.target_index(y_te)

    m = min(args.loop_examples, x_te.shape[0])
    steps = 5  # PGD steps per timing; the step time is their mean
    for precision in ("float64", "float32"):
        machine_p = machine.with_precision(precision)
        t_rows = median_seconds(lambda mp=machine_p: block(mp.logits(x)), args.repeats)
        t_pgd = (
            median_seconds(
                lambda mp=machine_p: block(
                    pgd(mp.loss_gradient, x, index, eps=0.3, step=0.01, steps=steps, random_start=False)
                ),
                args.repeats,
            )
            / steps
        )
        t_grad = median_seconds(lambda mp=machine_p: block(mp.loss_gradient(x, index)), args.repeats)

        def loop(mp=machine_p) -> None:
            for i in range(m):
                block(mp.loss_gradient(x[i : i + 1], index[i : i + 1]))

        t_loop = median_seconds(loop, max(1, args.repeats // 2)) * x_te.shape[0] / m
        ratio, speedup = t_pgd / t_rows, t_loop / t_grad
        print(f"-- {precision} kernel rows and gradients")
        print(f"forward kernel rows Θ(x_test, X) {x_te.shape[0]}x{x_tr.shape[0]}: {t_rows * 1e3:.1f} ms")
        print(f"one batched NTK-PGD step: {t_pgd * 1e3:.1f} ms  (loss gradient alone {t_grad * 1e3:.1f} ms)")
        print(f"per-example gradient loop ({m} timed, scaled to {x_te.shape[0]}): {t_loop * 1e3:.0f} ms")
        print(
            f"[1] PGD step / forward rows = {ratio:.2f}   goal <= {GOAL_STEP_RATIO:g}: "
            f"{'met' if ratio <= GOAL_STEP_RATIO else 'NOT met'}"
        )
        print(
            f"[2] batched speed-up over the loop = {speedup:.1f}x   goal >= {GOAL_LOOP_SPEEDUP:g}x: "
            f"{'met' if speedup >= GOAL_LOOP_SPEEDUP else 'NOT met'}"
        )

    arch = get_architecture("two-layer")
    closed = fit_kernel_machine(arch, x_tr, y_tr, gradient="closed-form")
    auto = fit_kernel_machine(arch, x_tr, y_tr, gradient="autodiff")
    t_closed = median_seconds(lambda: block(closed.loss_gradient(x, index)), args.repeats)
    t_auto = median_seconds(lambda: block(auto.loss_gradient(x, index)), args.repeats)
    diff = float(np.abs(np.asarray(closed.loss_gradient(x, index)) - np.asarray(auto.loss_gradient(x, index))).max())
    print("-- two-layer kernel, float64")
    print(f"two-layer loss gradient: closed form {t_closed * 1e3:.1f} ms, autodiff {t_auto * 1e3:.1f} ms")
    print(f"[3] closed-form / autodiff time = {t_closed / t_auto:.2f} (max abs difference {diff:.2e})")


if __name__ == "__main__":
    main()
