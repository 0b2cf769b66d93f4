"""Speed of the black-box NTK attack, as ratios measured in one run (this machine is noisy).

    python benchmarks/attack_speed.py [--mnist ../shared/data/mnist] [--repeats 7] [--profile]

On 2000 training and 500 test points of 28x28 images with the FC2 kernel it prints, for
float64 (the default, where the goals apply) and float32 test-time evaluation:
1. one batched NTK-PGD step / the forward kernel rows Θ(x_test, X) (goal <= 2.5; the floor is
   ~2.2: the gradient is one more GEMM of the same size plus two more passes of the
   elementwise recursion, see ``kernels._dot_route``);
2. one batched loss gradient vs a per-example Python loop of the same gradient (goal >= 20x in
   float64; out of reach here: one example's gradient is two GEMVs over the training set (12.5
   MB, which stays in the CPU's cache across the loop), ~0.8 ms; the batch's two GEMMs alone take
   longer than 1/20 of 500 of them (``--profile`` prints the bound));
then 3. the two-layer kernel's closed-form gradient (supp. eq. 9) vs autodiff of the same kernel
(goal >= 1.5x, or no speed claim for the closed form), and the reverse-mode route both replaced.
``--profile`` adds each part of a step timed alone (the GEMMs, the elementwise passes).
Uses real MNIST (cut from the official test set) when the folder exists, else uniform noise
images; compile time is excluded (one warm-up call); the functions compared in one row are
called in turn, ``--repeats`` rounds, and every number is a median over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import SHARED_MNIST, against_goal, load_mnist

from ntkrobust.attacks import pgd
from ntkrobust.kernels import fit_kernel_machine, get_architecture

GOAL_STEP_RATIO = 2.5
GOAL_LOOP_SPEEDUP = 20.0
GOAL_CLOSED_FORM_SPEEDUP = 1.5


def block(x):  # wait for JAX's asynchronous dispatch (an array or a tuple of them)
    for leaf in x if isinstance(x, tuple) else (x,):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return x


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, called in turn for ``repeats`` rounds after a warm-up:
    load from other processes then falls on all of them alike, which keeps their ratios."""
    for fn in fns.values():
        block(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def attack_rows(machine, x, index, args) -> float:  # type: ignore[no-untyped-def]
    """Rows [1] and [2] at the machine's precision; returns the per-example loop's seconds."""
    m = min(args.loop_examples, x.shape[0])
    steps = 5  # PGD steps per timing; the step time is their mean

    def loop() -> None:
        for i in range(m):
            block(machine.loss_gradient(x[i : i + 1], index[i : i + 1]))

    t = interleaved_medians(
        {
            "rows": lambda: machine.logits(x),
            "pgd": lambda: pgd(machine.loss_gradient, x, index, eps=0.3, step=0.01, steps=steps, random_start=False),
            "grad": lambda: machine.loss_gradient(x, index),
            "loop": loop,
        },
        args.repeats,
    )
    t_pgd, t_loop = t["pgd"] / steps, t["loop"] * x.shape[0] / m
    ratio, speedup = t_pgd / t["rows"], t_loop / t["grad"]
    n_test, n_train = x.shape[0], machine.n_train
    print(f"-- {machine.precision} kernel rows and gradients")
    print(f"forward kernel rows Θ(x_test, X) {n_test}x{n_train} (logits): {t['rows'] * 1e3:.1f} ms")
    print(f"one batched NTK-PGD step: {t_pgd * 1e3:.1f} ms  (loss gradient alone {t['grad'] * 1e3:.1f} ms)")
    print(f"per-example gradient loop ({m} timed, scaled to {n_test}): {t_loop * 1e3:.0f} ms")
    goals = machine.precision == "float64"  # the goals are set for float64
    note = "" if goals else " (informative: the goal is for float64)"
    shown, met = against_goal(ratio, GOAL_STEP_RATIO, at_most=True, digits=2)
    print(f"[1] PGD step / forward rows = {shown}   goal <= {GOAL_STEP_RATIO:g}: {met}{note}")
    shown, met = against_goal(speedup, GOAL_LOOP_SPEEDUP, at_most=False, digits=1)
    print(f"[2] batched speed-up over the loop = {shown}x   goal >= {GOAL_LOOP_SPEEDUP:g}x: {met}{note}")
    return t_loop


def profile_rows(machine, x, index, args, t_loop: float) -> None:  # type: ignore[no-untyped-def]
    """Each part of one float64 step alone: why the step costs what it costs."""
    from ntkrobust.kernels import _dot_route
    from ntkrobust.kernels._jax import float64, jax, jnp
    from ntkrobust.kernels.relu import pairwise_dots

    @float64
    def parts() -> dict[str, float]:
        programs = _dot_route.programs_for(machine.arch, machine.gradient == "closed-form")
        assert programs is not None
        xc, ac = machine._train_chunks(machine.n_train)[0]
        sq2 = machine._train_norms(machine.n_train)[0]
        xb, ib = jnp.asarray(x, xc.dtype), jnp.asarray(index, jnp.int32)
        z = xb.reshape(xb.shape[0], -1)
        d, f = programs.forward(xb, xc, sq2, ac)
        v = programs.norm_weights(d, sq2, xb, ib, f, ac)
        w = jnp.ones_like(d)
        gemm, gemm_nn = jax.jit(pairwise_dots), jax.jit(jnp.matmul)
        return interleaved_medians(
            {
                "GEMM x·Xᵀ alone": lambda: gemm(z, xc),
                "GEMM W X alone": lambda: gemm_nn(w, xc),
                "forward program: GEMM, a pass of F, f = Kα": lambda: programs.forward(xb, xc, sq2, ac),
                "gradient program: a pass of F for W∘a, GEMM": lambda: programs.gradient(d, sq2, xb, ib, f, xc, ac, v),
                "norm program: a pass of F for Σ W∘s": lambda: programs.norm_weights(d, sq2, xb, ib, f, ac),
                "the whole loss gradient": lambda: _dot_route.loss_gradient_block(programs, xb, ib, [(xc, ac)], [sq2]),
            },
            args.repeats,
        )

    print("-- profile of one float64 loss gradient (each part alone)")
    t = parts()
    for name, seconds in t.items():
        print(f"   {seconds * 1e3:7.1f} ms  {name}")
    forward, pass_f = t["forward program: GEMM, a pass of F, f = Kα"], t["norm program: a pass of F for Σ W∘s"]
    gemms = t["GEMM x·Xᵀ alone"] + t["GEMM W X alone"]
    print(
        f"floor of [1]: (2 GEMMs + 3 passes of F) / (1 GEMM + 1 pass) = {(gemms + 3 * pass_f) / forward:.2f}; "
        f"with free elementwise work, 2 GEMMs / 1 GEMM + 1 pass = {gemms / forward:.2f}"
    )
    print(
        f"bound on [2]: per-example loop (two GEMVs over X each) / 2 GEMMs alone = {t_loop / gemms:.1f}x, "
        "before any elementwise work in the batch"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loop-examples", type=int, default=100, help="examples timed in the per-example loop")
    parser.add_argument("--profile", action="store_true", help="time each part of a float64 step alone")
    args = parser.parse_args()

    from ntkrobust.kernels._jax import float64, jnp
    from ntkrobust.kernels.machine import _compiled

    x_tr, y_tr, x_te, y_te, source = load_mnist(args.mnist, args.n_train, args.n_test)
    print(f"data: {source}; {x_tr.shape[0]} train, {x_te.shape[0]} test, inputs {x_te.shape[1:]}")
    machine = fit_kernel_machine(get_architecture("fc2"), x_tr, y_tr)
    x = jnp.asarray(x_te)
    index = machine.target_index(y_te)
    t_loop = attack_rows(machine, x, index, args)
    attack_rows(machine.with_precision("float32"), x, index, args)
    if args.profile:
        profile_rows(machine, x, index, args, t_loop)

    arch = get_architecture("two-layer")
    closed = fit_kernel_machine(arch, x_tr, y_tr, gradient="closed-form")
    auto = fit_kernel_machine(arch, x_tr, y_tr, gradient="autodiff")
    old = _compiled(arch)

    @float64
    def reverse_mode():  # the route before kernels._dot_route: one VJP of the kernel rows
        xc, ac = auto._train_chunks(auto.n_train)[0]
        return old.loss_grad_one_pass(jnp.asarray(x, xc.dtype), jnp.asarray(index, jnp.int32), xc, ac, False)

    t = interleaved_medians(
        {
            "closed": lambda: closed.loss_gradient(x, index),
            "auto": lambda: auto.loss_gradient(x, index),
            "reverse": reverse_mode,
        },
        args.repeats,
    )
    x64 = np.asarray(x_te, np.float64)  # x is float32: its gradients are rounded to float32
    g_closed, g_auto = np.asarray(closed.loss_gradient(x64, index)), np.asarray(auto.loss_gradient(x64, index))
    diff = float(np.abs(g_closed - g_auto).max())
    speedup = t["auto"] / t["closed"]
    print("-- two-layer kernel, float64")
    print(
        f"two-layer loss gradient: closed form {t['closed'] * 1e3:.1f} ms, autodiff {t['auto'] * 1e3:.1f} ms, "
        f"reverse-mode VJP of the kernel rows (the former route) {t['reverse'] * 1e3:.1f} ms"
    )
    shown, met = against_goal(speedup, GOAL_CLOSED_FORM_SPEEDUP, at_most=False, digits=2)
    print(
        f"[3] closed-form speed-up over autodiff = {shown}x (float64 max abs difference {diff:.2e})   "
        f"goal >= {GOAL_CLOSED_FORM_SPEEDUP:g}x: {met}"
        + ("" if met == "met" else " -> no speed claim: the closed form is a cross-check")
    )


if __name__ == "__main__":
    main()
