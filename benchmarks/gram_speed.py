"""Gram matrices: ``kernels.gram.compute_gram`` against a plain jitted neural-tangents stax
``kernel_fn`` on the same inputs, as ratios measured in one run.

    python benchmarks/gram_speed.py [--mnist ../shared/data/mnist] [--repeats 3]

Cases (issue 20): fc2 on 1500 MNIST images (1500 x 1500, float64), conv2 on 120 MNIST images and
on 80 CIFAR-like 32x32x3 images. For each it prints the seconds of
1. ``compute_gram`` (the package's route: its own vectorised recursion; a symmetric Gram of many
   points block pair by block pair, i <= j only, mirrored);
2. stax's ``kernel_fn`` jitted whole (one call, the whole matrix at once);
3. the package's whole-matrix program (``kernels.gram._whole_gram``: for fc2 the GEMM, then the
   recursion entry by entry on plain arrays; the same one-call shape as 2, which isolates the
   recursion from the symmetry);
and the speed-ups of 1 and 3 over 2 (goal >= 1.5 for fc2, >= 2.5 for conv2). For fc2 it also
profiles the whole-matrix route: the GEMM x·x' alone and the elementwise recursion alone (on
the GEMM's output, ``Architecture.dot_kernel_fn``), which bound any route that computes every
entry. Every number is the
median of --repeats after one warm-up call (compilation excluded); the matrices are checked equal
before anything is timed (float64: 1e-12 between our two routes, 1e-7 against stax, whose
diagonal takes the arc-cosine of a rounded cosine). Real MNIST when the folder exists, else uniform noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import SHARED_MNIST, against_goal, load_mnist, median_seconds

from ntkrobust.kernels import get_architecture
from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.gram import _whole_gram, compute_gram

GOALS = {"fc2": 1.5, "conv2": 2.5}


def case(name: str, x: np.ndarray, repeats: int) -> None:
    arch = get_architecture(name)
    with jax.experimental.enable_x64(True):
        a = arch.to_layout(jnp.asarray(x, dtype=jnp.float64))
        stax = jax.jit(lambda u: arch.reference_kernel_fn(u, u, "ntk"))
        whole_program = _whole_gram(arch)
        ours_whole = jax.jit(lambda u: whole_program(u, u))
        reference = np.asarray(stax(a))
        # stax's diagonal takes the arc-cosine of a rounded cosine (~1e-8 off); ours is exact there
        np.testing.assert_allclose(compute_gram(arch, x), reference, rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(np.asarray(ours_whole(a)), compute_gram(arch, x), rtol=1e-12, atol=1e-12)
        t_ours = median_seconds(lambda: compute_gram(arch, x), repeats)
        t_stax = median_seconds(lambda: stax(a).block_until_ready(), repeats)
        t_whole = median_seconds(lambda: ours_whole(a).block_until_ready(), repeats)
        profile = _profile(arch, a, repeats, t_stax) if arch.dot_kernel_fn is not None else ""
    goal = GOALS[name]
    shown, met = against_goal(t_stax / t_ours, goal, at_most=False, digits=2, width=5)
    print(
        f"{name} {x.shape[0]}x{x.shape[0]} {tuple(x.shape[1:])}: compute_gram {t_ours * 1e3:8.1f} ms, stax jitted "
        f"{t_stax * 1e3:8.1f} ms, our whole-matrix program {t_whole * 1e3:8.1f} ms; compute_gram / stax speed-up "
        f"{shown}x (goal >= {goal}: {met}), "
        f"whole-matrix program {t_stax / t_whole:5.2f}x{profile}"
    )


def _profile(arch, a, repeats: int, t_stax: float) -> str:  # type: ignore[no-untyped-def]
    """The two parts of a whole-matrix FC Gram: the GEMM and the elementwise recursion."""
    from ntkrobust.kernels.relu import pairwise_dots

    gemm = jax.jit(lambda u: pairwise_dots(u, u))
    dots = gemm(a)
    sq = jnp.sum(a * a, axis=1)
    s1, s2 = jnp.broadcast_to(sq[:, None], dots.shape), jnp.broadcast_to(sq[None, :], dots.shape)
    recursion = jax.jit(lambda d, p, q: arch.dot_kernel_fn(d, p, q, a.shape[1]))
    t_gemm = median_seconds(lambda: gemm(a).block_until_ready(), repeats)
    t_rec = median_seconds(lambda: recursion(dots, s1, s2).block_until_ready(), repeats)
    return (
        f"\n  profile of one whole matrix: GEMM {t_gemm * 1e3:.1f} ms + elementwise recursion {t_rec * 1e3:.1f} ms "
        f"= {(t_gemm + t_rec) * 1e3:.1f} ms, {(t_gemm + t_rec) / t_stax:.2f} of stax's time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x, _, _, _, source = load_mnist(args.mnist, 1500, 100)
    print(f"data: {source}; float64; jax devices {jax.devices()}")
    case("fc2", x, args.repeats)
    case("conv2", x[:120], args.repeats)
    rng = np.random.default_rng(0)
    case("conv2", rng.uniform(0, 1, size=(80, 3, 32, 32)), args.repeats)


if __name__ == "__main__":
    main()
