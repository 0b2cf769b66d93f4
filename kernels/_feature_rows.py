"""Pair-indexed feature scores for kernels of x·x', ‖x‖², ‖x'‖² (``Architecture.dot_kernel_fn``).

Supp. A eq. 1-2 attack every (example b, feature i) pair that feature i classifies correctly,
on the feature's own loss L(pᵢ(x) cᵢ) with pᵢ(x) = Θ(x, X) vᵢ (TK eq. 9). For a dense net
Θ(x, x_j) = F(x·x_j, ‖x‖², ‖x_j‖²) entry by entry, so with a = ∂F/∂(x·x_j), s = ∂F/∂‖x‖²
(supp. eq. 9 in these coordinates)
    ∇ₓpᵢ(x_b) = Σ_j v_ji (a_bj x_j + 2 s_bj x_b) = (a_b ⊙ vᵢ)ᵀ X + 2 (s_b · vᵢ) x_b:
the kernel derivatives of each example are computed once, and each attacked pair costs one row
of a matrix product with X, without the padding of a per-example list of features. The attacked
point x′ of a pair needs its own kernel row Θ(x′, X) (one GEMM row and the elementwise
recursion), but only its projection onto the pair's own vᵢ: a row-wise dot instead of the m
projections Θ(x′, X) V. What is left is the floor of scoring features by attacking them: two
GEMMs of pairs × pixels × training points (the pairs' gradients and their attacked rows).

Pixels that are 0 in every training image (183 of 784 on MNIST) add exact zeros to every x·x_j
and to every row of (a ⊙ vᵢ)ᵀ X, so both GEMMs run over the other, "active" pixels only. The
points are handled with their pixels permuted, active ones first: a gradient is then its GEMM
row followed by zeros (plus the 2 (s·vᵢ) x part), and an attacked point's dot products read its
first pixels. The ℓ∞ attack is pixel by pixel, so the permutation changes nothing there; an ℓ2
step's norm is summed in another order (a float32 rounding, as any other route's).

With several local JAX devices, each block's points and each chunk's pairs are split over them
(the training side whole on every device), as ``KernelMachine`` splits its test points.

Shapes: points (N, C, H, W) or (N, d), flattened; X (n, d); V (n, m); pairs (P,).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np

from ntkrobust._progress import progress_bar
from ntkrobust.attacks import ThreatModel, fgsm, pgd
from ntkrobust.kernels._jax import jax, jnp, point_sharding
from ntkrobust.kernels.architectures import Architecture, per_architecture
from ntkrobust.kernels.gram import entries_within_budget
from ntkrobust.kernels.machine import KernelMachine, loss_cotangent, predicted_index
from ntkrobust.kernels.relu import dot_kernel_partials, dot_kernel_rows, pairwise_dots

#: Pair chunks are padded to a multiple of this, so calls with different pair counts share a
#: few compiled shapes instead of compiling one program per count.
_PAIR_QUANTUM = 16

#: At most this many pairs per chunk: ~1000 ran 5-10% faster than 3000-6000 on a 2-core CPU
#: (MNIST fc2, 1000 training points), the intermediates staying closer to the caches.
_MAX_PAIRS = 1024

T = TypeVar("T")
_G = TypeVar("_G", bound=Callable[..., Any])


class _Train(NamedTuple):
    """The training side of every program (a pytree: jit arguments, not constants)."""

    x: jnp.ndarray  # (n, A) training points on the active pixels
    sq: jnp.ndarray  # (n,) ‖x_j‖²
    v: jnp.ndarray  # (n, m) eigenvectors of the scored features
    vt: jnp.ndarray  # (m, n) the same, one row per feature (gathered per pair)


@dataclass(frozen=True)
class _Programs:
    """Jitted programs of one architecture (α-free: X and V are arguments)."""

    clean: Callable[..., tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]]
    fgsm_projection: Callable[..., jnp.ndarray]
    moving_gradient: Callable[..., jnp.ndarray]
    projection: Callable[..., jnp.ndarray]


def _build(arch: Architecture) -> _Programs:
    dot_kernel = arch.dot_kernel_fn
    assert dot_kernel is not None and arch.layout == "flat"

    # Θ(z, X) = F(z Xᵀ, ‖z‖², ‖X‖²): one GEMM over the active pixels (z's first A), then F entry
    # by entry: equal to ``arch.kernel_fn`` to rounding (2e-16 relative on MNIST fc2) and ~2x
    # faster on a CPU for fc2, whose elementwise recursion outweighs the GEMM.
    def entries(z: jnp.ndarray, tr: _Train) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, int]:
        return pairwise_dots(z[:, : tr.x.shape[1]], tr.x), jnp.sum(z * z, axis=1), tr.sq, z.shape[1]

    def rows(z: jnp.ndarray, tr: _Train) -> jnp.ndarray:
        return dot_kernel_rows(dot_kernel, *entries(z, tr))

    def rows_and_partials(z: jnp.ndarray, tr: _Train) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        return dot_kernel_partials(dot_kernel, *entries(z, tr))

    def gradient_rows(a, sv, z, v, tr):  # type: ignore[no-untyped-def]
        # ∇ₓpᵢ = (a ⊙ vᵢ)ᵀ X + 2 (s·vᵢ) x, one row per pair: the GEMM of pairs × train × pixels,
        # zero beyond the active pixels. The barrier keeps a ⊙ vᵢ out of the GEMM: fused into
        # it, XLA's CPU backend leaves its GEMM routine for a loop ~1.4x slower.
        along_train = jax.lax.optimization_barrier(a * v) @ tr.x
        short = z.shape[1] - along_train.shape[1]
        if short:
            along_train = jnp.concatenate([along_train, jnp.zeros((z.shape[0], short), z.dtype)], axis=1)
        return along_train + (2.0 * sv)[:, None] * z

    def loss_weight(p, ci, target):  # type: ignore[no-untyped-def]
        # ∇ₓL(pᵢ cᵢ) = (cᵢ·∂L/∂f) ∇ₓpᵢ: one scalar per pair.
        return jnp.sum(loss_cotangent(p[:, None] * ci, target) * ci, axis=1)

    def clean(x, tr):  # type: ignore[no-untyped-def]
        """pᵢ(x_b) (B, m), the derivatives a (B, n) and s·vᵢ (B, m) at the clean points."""
        k, a, s = rows_and_partials(x.astype(tr.x.dtype), tr)
        return k @ tr.v, a, s @ tr.v

    def fgsm_projection(a, sv, p, x, tr, c, rows_, cols, target, eps, norm):  # type: ignore[no-untyped-def]
        """p_{cols[q]} at the FGSM point of pair q (example rows_[q]) on that feature's loss."""
        ci, x0 = c[cols], x[rows_]
        g = gradient_rows(a[rows_], sv[rows_, cols], x0.astype(tr.x.dtype), tr.vt[cols], tr)
        g = loss_weight(p[rows_, cols], ci, target)[:, None] * g
        # As the machine hands FGSM its gradient: in the input's dtype; the step is the shared one,
        # traced here. ℓ∞: x + ε·sign(g) has an exact product, so fused it rounds as numpy does.
        x_adv = fgsm(functools.partial(fixed_gradient, g.astype(x0.dtype)), x0, target, eps=eps, norm=norm)
        return projection(x_adv, tr, cols)

    def moving_gradient(x, tr, cols, c, target):  # type: ignore[no-untyped-def]
        """∇ₓL(p_{cols[q]} c) at points of their own (PGD): rows, derivatives, one GEMM."""
        z = x.astype(tr.x.dtype)
        k, a, s = rows_and_partials(z, tr)
        v = tr.vt[cols]
        g = gradient_rows(a, jnp.sum(s * v, axis=1), z, v, tr)
        return loss_weight(jnp.sum(k * v, axis=1), c, target)[:, None] * g

    def projection(x, tr, cols):  # type: ignore[no-untyped-def]
        """p_{cols[q]}(x_q): the kernel row of each point, dotted with its own feature's vᵢ."""
        return jnp.sum(rows(x.astype(tr.x.dtype), tr) * tr.vt[cols], axis=1)

    return _Programs(
        clean=jax.jit(clean),
        fgsm_projection=jax.jit(fgsm_projection, static_argnames=("eps", "norm")),
        moving_gradient=jax.jit(moving_gradient),
        projection=jax.jit(projection),
    )


_programs = per_architecture(_build)


def _train_side(machine: KernelMachine, m: int) -> tuple[_Train, np.ndarray]:
    """``_Train`` at the machine's precision (``KernelMachine.precision``) and the pixel order
    (active pixels first, each group in its original order)."""
    dtype = np.dtype(machine.precision)
    x = np.asarray(machine.x_train, dtype=dtype)
    used = np.any(x != 0, axis=0)
    order = np.concatenate([np.flatnonzero(used), np.flatnonzero(~used)])
    v = machine.eigenvectors[:, :m].astype(dtype)
    train = _Train(
        x=jnp.asarray(x[:, order[: used.sum()]]),
        sq=jnp.sum(jnp.asarray(x) ** 2, axis=1),
        v=jnp.asarray(v),
        vt=jnp.asarray(np.ascontiguousarray(v.T)),
    )
    return train, order


def _chunks(count: int, size: int, quantum: int = _PAIR_QUANTUM) -> list[tuple[int, int, int]]:
    """(start, stop, padded length) of near-equal chunks of at most ~``size`` items: equal chunks
    waste less padding than ``size``-sized ones with a short last one. Lengths are multiples of
    ``quantum`` (few compiled shapes; an equal share for every device)."""
    n_chunks = -(-count // size)
    length = -(-count // n_chunks)
    padded = -(-length // quantum) * quantum
    return [(start, min(start + length, count), padded) for start in range(0, count, length)]


def _padded(a: np.ndarray, length: int) -> np.ndarray:
    """``a`` with its last entry repeated up to ``length`` (one compiled shape per chunk size)."""
    short = length - a.shape[0]
    return a if short <= 0 else np.concatenate([a, np.repeat(a[-1:], short, axis=0)], axis=0)


class _Placement:
    """Where a block's points and a chunk's pairs go: split over every local JAX device along
    their first axis (``kernels._jax.point_sharding``), or onto the one device. The
    training side stays whole on every device, so each device's sums are the one-device sums."""

    def __init__(self) -> None:
        self.sharding = point_sharding((jnp.zeros(1),))
        devices = 1 if self.sharding is None else self.sharding.mesh.size
        self.quantum = math.lcm(_PAIR_QUANTUM, devices)

    def put(self, a: np.ndarray) -> jnp.ndarray:
        return jnp.asarray(a) if self.sharding is None else jax.device_put(a, self.sharding)


def fixed_gradient(gradient: np.ndarray, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A loss gradient computed beforehand (FGSM asks for it once, at the clean points)."""
    return gradient


class Stopwatch:
    """Wall time per stage of ``pair_scores``, for the benchmark's profile (``--profile``).

    ``lap(name, value)`` waits for ``value`` (JAX dispatches asynchronously) and adds the time
    since the previous lap to ``name``; disabled (the default), it returns ``value`` untouched
    and nothing waits.
    """

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str, value: T) -> T:
        if self.enabled:
            jax.block_until_ready(value)
            now = time.perf_counter()
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
            self._last = now
        return value


def pair_scores(
    machine: KernelMachine,
    x: np.ndarray,
    target: np.ndarray,
    c: np.ndarray,
    threat: ThreatModel,
    *,
    attack: str,
    pgd_step: float | None = None,
    pgd_steps: int = 10,
    starts: np.ndarray | None = None,
    progress: bool = False,
    stopwatch: Stopwatch | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per feature (m = c.shape[0]): how many of x are correct, and correct also when attacked.

    Supp. A eq. 1-2 for a machine with ``dot_kernel_fn``; see the module docstring. ``starts``
    are PGD's random starts per example (shared by all of that example's features).
    """
    watch = stopwatch or Stopwatch()
    programs = _programs(machine.arch)
    m = c.shape[0]
    tr, order = _train_side(machine, m)
    c_dev = jnp.asarray(c, dtype=tr.v.dtype)
    x = np.asarray(x).reshape(x.shape[0], -1)[:, order]  # flat, active pixels first
    starts = None if starts is None else np.asarray(starts).reshape(x.shape[0], -1)[:, order]
    # Points per block: every array of a block is (points × training points).
    entries = entries_within_budget(machine.arch, (1, x.shape[1]), machine.memory_budget)
    per_block = max(entries // machine.n_train, 16)
    correct, robust = np.zeros(m), np.zeros(m)
    place = _Placement()
    blocks = _chunks(x.shape[0], per_block, place.quantum)
    watch.lap("setup", tr)
    with progress_bar(len(blocks), f"feature {attack}", "block", show=progress) as bar:
        for block, (start, stop, length) in enumerate(blocks, 1):
            xb = place.put(_padded(x[start:stop], length))
            p_dev, a, sv = watch.lap("clean rows, derivatives, projections", programs.clean(xb, tr))
            p = np.asarray(p_dev, dtype=np.float64)[: stop - start]
            tb = target[start:stop]
            hit = predicted_index(p[:, :, None] * c[None]) == tb[:, None]  # (B, m)
            correct += hit.sum(axis=0)
            rows, cols = np.nonzero(hit)
            for lo, hi, width in _chunks(rows.size, min(per_block, _MAX_PAIRS), place.quantum) if rows.size else []:
                r, q, t = rows[lo:hi], cols[lo:hi], tb[rows[lo:hi]]
                r_dev, q_dev, t_dev = watch.lap("host", [place.put(_padded(u, width)) for u in (r, q, t)])
                if attack == "fgsm":
                    args = (a, sv, p_dev, xb, tr, c_dev, r_dev, q_dev, t_dev)
                    p_adv = programs.fgsm_projection(*args, eps=threat.eps, norm=threat.norm)
                else:
                    assert pgd_step is not None
                    pairs = f"{hi:,}/{rows.size:,}" + (f" in block {block}" if len(blocks) > 1 else "")
                    x_adv = pgd(
                        counted_steps(
                            _moving_loss_gradient(programs, tr, q_dev, c_dev[q_dev], t_dev), bar, pairs, pgd_steps
                        ),
                        place.put(_padded(x[start:stop][r], width)),
                        t_dev,
                        eps=threat.eps,
                        norm=threat.norm,
                        step=pgd_step,
                        steps=pgd_steps,
                        start=None if starts is None else place.put(_padded(starts[start:stop][r], width)),
                        random_start=False,
                    )
                    p_adv = programs.projection(x_adv, tr, q_dev)
                p_adv = watch.lap(f"{attack} pairs: gradients, attack, own projections", p_adv)
                still = predicted_index(np.asarray(p_adv)[: hi - lo, None] * c[q]) == t
                np.add.at(robust, q, still.astype(np.float64))
            watch.lap("host", robust)
            bar.update(1)
    return correct, robust


def counted_steps(loss_gradient: _G, bar: Any, pairs: str, steps: int) -> _G:
    """``loss_gradient``, telling ``bar`` (it counts blocks of examples) at each call which PGD
    step of which pairs it is at: one block's pairs under PGD-200 run for minutes, and a bar that
    moved only between blocks printed no line for all of them (``_progress``: a line a minute
    comes from an update)."""
    step = 0

    def counted(x_: Any, target: Any) -> Any:
        nonlocal step
        step += 1
        bar.set_postfix(**{"pairs attacked": pairs, "PGD step": f"{step}/{steps}"})
        bar.update(0)
        return loss_gradient(x_, target)

    return cast(_G, counted)


def _moving_loss_gradient(programs: _Programs, tr: _Train, cols, c, target):  # type: ignore[no-untyped-def]
    """PGD's loss gradient of the pairs (x_q, feature cols[q]) at the points it moves to, in the
    points' dtype (as ``KernelMachine.loss_gradient``); pairs and points padded alike."""

    def loss_gradient(x_: jnp.ndarray, _target: jnp.ndarray) -> jnp.ndarray:
        return programs.moving_gradient(x_, tr, cols, c, target).astype(x_.dtype)

    return loss_gradient


__all__ = ["Stopwatch", "counted_steps", "pair_scores"]
