"""Kernel regression with the NTK at any training time, and its input gradients for attacks.

Tsilivis & Kempe eq. 7 (the mean prediction of an infinitely wide net after gradient flow on
the ℓ2 loss for time t with learning rate η):
    f_t(x) = Θ(x, X) Θ⁻¹ (I − e^{−ηΘt}) Y,        f_∞(x) = Θ(x, X) Θ⁻¹ Y.
With Θ(X, X) = V diag(λ) Vᵀ, computed once, every t costs only a new spectral filter:
    f_t(x) = Θ(x, X) α_t,   α_t = V diag(g_t(λ)) Vᵀ Y,   g_t(λ) = (1 − e^{−η(λ+ρ)t}) / (λ+ρ),
and g_∞(λ) = 1/(λ+ρ). ρ is an optional ridge, given relative to tr(Θ)/n (the neural-tangents
``diag_reg`` convention); the paper's setting is ρ = 0. Eigen-directions with
λ + ρ ≤ rcond·(λ_max + ρ) (rcond = n·ε_float64, numpy's pinv default) are the Gram matrix's
numerical null space and are left out: the Moore-Penrose solution, instead of the noise a plain solve of
a singular system returns. Note neural-tangents' ``gradient_descent_mse`` divides time by
``y_train.size``; here t is the t of eq. 7.

Targets: a binary task (two classes) is one output with y = −1 for the first class and +1
for the second; k ≥ 3 classes are k one-hot outputs. The loss that attacks increase is the
cross-entropy on these outputs (supp. eq. 4 and 7): softplus(−y f) for one output, which makes
FGSM exactly eq. 8, and softmax cross-entropy for k outputs (supp. eq. 8).

Shapes: inputs are NCHW (or (N, d)) in [0, 1]; outputs ``logits`` (N, k); ``loss_gradient``
has the shape of its input; ``output_jacobian`` (N, k, C, H, W). Test points go in blocks and
the training set in chunks sized by a memory budget; each block is one jitted call, except the
loss gradients of kernels of x·x' and ‖x‖² (dense nets, two-layer): two GEMMs and three fused
elementwise passes in three calls, ~1.5x faster than reverse-mode autodiff (``kernels._dot_route``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust.kernels import _dot_route
from ntkrobust.kernels._compiled import compiled as _compiled
from ntkrobust.kernels._compiled import loss_cotangent as _loss_cotangent
from ntkrobust.kernels._host import host_array, is_torch
from ntkrobust.kernels._jax import float64, jax, jnp, point_sharding, x64_enabled
from ntkrobust.kernels.architectures import Architecture, check_architecture
from ntkrobust.kernels.gram import DEFAULT_MEMORY_BUDGET, entries_within_budget, gram_matrix

#: Condition numbers above this make the ridgeless t = ∞ solution amplify the ~1e-9 relative
#: rounding error of arc-cosine kernel entries into visible error.
CONDITION_WARNING = 1e8


PRECISIONS: tuple[str, ...] = ("float64", "float32")


class IllConditionedWarning(UserWarning):
    """The Gram matrix is (numerically) singular or badly conditioned."""


class InputRangeWarning(UserWarning):
    """Training inputs outside [0, 1]: images in 0-255, most likely (the kernel takes any real
    inputs; the attacks and feature scores take pixel units in [0, 1] and refuse others)."""


def spectral_filter(
    eigenvalues: np.ndarray, *, time: float, ridge: float, learning_rate: float, cutoff: float
) -> np.ndarray:
    """g_t(λ) of eq. 7: (1 − e^{−η(λ+ρ)t})/(λ+ρ), 1/(λ+ρ) at t = ∞, 0 where λ+ρ ≤ cutoff;
    t ≥ 0, ρ ≥ 0 and η > 0 (ValueError otherwise: a negative one turns the filter's sign)."""
    if not (time >= 0 and ridge >= 0 and learning_rate > 0):
        raise ValueError(f"need time >= 0, ridge >= 0 and learning_rate > 0, got {time}, {ridge}, {learning_rate}")
    shifted = np.maximum(eigenvalues, 0.0) + ridge
    keep = shifted > cutoff
    safe = np.where(keep, shifted, 1.0)
    if math.isinf(time):
        g = 1.0 / safe
    else:
        g = -np.expm1(-learning_rate * time * safe) / safe
    return np.where(keep, g, 0.0)


def predicted_index(f: np.ndarray) -> np.ndarray:
    """Target index predicted by outputs f (..., k): f > 0 for one output, argmax for k."""
    f = np.asarray(f)
    if f.ndim < 2:  # a binary machine's (N,) outputs squeezed would be argmax-ed over the points
        raise ValueError(
            f"outputs must be (..., k) with the k outputs last (a binary machine's are (N, 1)), got shape {f.shape}"
        )
    return (f[..., 0] > 0).astype(np.int64) if f.shape[-1] == 1 else np.argmax(f, axis=-1)


def output_count(classes: int) -> int:
    """The outputs of a machine (and of the nets compared with it) for ``classes`` classes: one ±1
    output for a binary task, one per class otherwise."""
    return 1 if classes == 2 else classes


def _binary_or_onehot(index: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return (2.0 * index - 1.0)[:, None]
    return np.eye(k)[index]


@dataclass(frozen=True)
class _Blocks:
    """How test points and training points are cut so one block fits the memory budget."""

    test: int
    train: int


@dataclass(frozen=True)
class KernelMachine:
    """f_t of eq. 7 for one architecture, training set and time; see the module docstring."""

    arch: Architecture
    classes: tuple[int, ...]
    input_shape: tuple[int, ...]
    x_train: jnp.ndarray = field(repr=False)  # (n, ...) in the architecture's layout, float64
    targets: np.ndarray = field(repr=False)  # (n, k): ±1 column or one-hot
    eigenvalues: np.ndarray = field(repr=False)  # (n,), descending
    eigenvectors: np.ndarray = field(repr=False)  # (n, n), column i belongs to eigenvalues[i]
    time: float
    ridge: float  # absolute ρ added to every eigenvalue
    learning_rate: float
    cutoff: float
    dual_coef: jnp.ndarray = field(repr=False)  # α_t, (n, k)
    gradient: str  # "autodiff" or "closed-form" (supp. eq. 9)
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    #: Arithmetic of test-time kernel rows, logits and input gradients. The Gram matrix, its
    #: eigendecomposition and α are always float64; "float32" halves the cost of attacks on a
    #: CPU (more on GPUs) at ~1e-6 relative error in the gradients.
    precision: str = "float64"

    # -- construction ---------------------------------------------------------------------

    @property
    def n_train(self) -> int:
        return int(self.targets.shape[0])

    @property
    def n_outputs(self) -> int:
        return int(self.dual_coef.shape[1])

    @property
    def condition_number(self) -> float:
        """Of the directions kept; inf when none is (a zero Gram, such as the two-layer NTK of
        all-zero images: the machine then predicts zero everywhere)."""
        kept = np.maximum(self.eigenvalues, 0.0) + self.ridge
        kept = kept[kept > self.cutoff]
        return float(kept.max() / kept.min()) if kept.size else math.inf

    @property
    def dropped_directions(self) -> int:
        return int(np.sum(np.maximum(self.eigenvalues, 0.0) + self.ridge <= self.cutoff))

    def with_precision(self, precision: str) -> KernelMachine:
        """The same machine evaluated in ``precision`` ("float64" or "float32")."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return dataclasses.replace(self, precision=precision)

    @float64
    def at_time(self, time: float) -> KernelMachine:
        """The same machine at another training time t (no new eigendecomposition)."""
        if not (time >= 0):
            raise ValueError(f"time must be >= 0 or inf, got {time}")
        g = spectral_filter(
            self.eigenvalues, time=time, ridge=self.ridge, learning_rate=self.learning_rate, cutoff=self.cutoff
        )
        coef = self.eigenvectors @ (g[:, None] * (self.eigenvectors.T @ self.targets))
        return dataclasses.replace(self, time=float(time), dual_coef=jnp.asarray(coef))

    def restricted_to(self, eigen_indices: Sequence[int] | np.ndarray) -> KernelMachine:
        """The machine built from the chosen eigen-directions of Θ(X, X) only.

        With R the chosen set, α = Σ_{i∈R} g_t(λᵢ) vᵢ vᵢᵀ Y: a single index gives the feature
        f⁽ⁱ⁾ of TK eq. 9 as a machine of its own, the r most robust give the robust-features-only
        kernel Θ'_r of supp. D.3 (original eigenvalues), and every index gives this machine back.
        The restriction survives ``at_time``.
        """
        chosen = np.unique(np.asarray(eigen_indices, dtype=np.int64))  # sorted: eigenvalues stay descending
        if chosen.size == 0 or chosen[0] < 0 or chosen[-1] >= self.eigenvalues.shape[0]:
            raise ValueError(f"eigen-indices must be in [0, {self.eigenvalues.shape[0]}) and not empty")
        restricted = dataclasses.replace(
            self, eigenvalues=self.eigenvalues[chosen], eigenvectors=self.eigenvectors[:, chosen]
        )
        return restricted.at_time(self.time)

    @float64
    def with_dual_coef(self, dual_coef: np.ndarray | jnp.ndarray) -> KernelMachine:
        """Θ(x, X) @ ``dual_coef`` as the outputs (n, k'): the machine's kernel rows, logits and
        gradients for another set of weights (e.g. eigenvectors, whose outputs are the
        projections Θ(x, X) vᵢ). Spectral data are kept; ``at_time`` would restore α_t."""
        dual_coef = jnp.asarray(dual_coef, dtype=jnp.float64)
        if dual_coef.ndim != 2 or dual_coef.shape[0] != self.n_train:
            raise ValueError(f"dual coefficients must have shape ({self.n_train}, k), got {tuple(dual_coef.shape)}")
        return dataclasses.replace(self, dual_coef=dual_coef)

    # -- labels ---------------------------------------------------------------------------

    def target_index(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        """Class ids → position among ``classes`` (for one output: 0 ↔ y = −1, 1 ↔ y = +1)."""
        return _index_of(np.asarray(labels), self.classes)

    # -- evaluation -----------------------------------------------------------------------

    def _blocks(self, per_example_outputs: int = 1) -> _Blocks:
        budget = self.memory_budget // per_example_outputs
        entries = entries_within_budget(self.arch, (1, *self.input_shape), budget)
        n = self.n_train
        if entries >= 64 * n:
            return _Blocks(test=min(entries // n, 4096), train=n)
        return _Blocks(test=64, train=max(entries // 64, 1))

    @functools.cached_property
    def _chunk_cache(self) -> dict[tuple[int, str], list[tuple[jnp.ndarray, jnp.ndarray]]]:
        return {}

    def _train_chunks(self, size: int) -> list[tuple[jnp.ndarray, jnp.ndarray]]:
        """(x_chunk, α_chunk) pairs of equal length at the evaluation precision (float32 when the
        caller traces the machine in float32 JAX, see ``kernels._jax``); padding rows carry α = 0.
        Made once per machine, size and dtype, as concrete arrays even under a caller's trace:
        PGD asks for them at every step."""
        dtype = np.dtype(self.precision) if x64_enabled() else np.dtype(np.float32)
        key = (size, dtype.name)
        if key not in self._chunk_cache:
            x, a = np.asarray(self.x_train, dtype=dtype), np.asarray(self.dual_coef, dtype=dtype)
            short = (-x.shape[0]) % size
            if short:
                x = np.concatenate([x, np.repeat(x[-1:], short, axis=0)], axis=0)
                a = np.concatenate([a, np.zeros((short, a.shape[1]), a.dtype)], axis=0)
            with jax.ensure_compile_time_eval():
                self._chunk_cache[key] = [
                    (jnp.asarray(x[i : i + size]), jnp.asarray(a[i : i + size])) for i in range(0, x.shape[0], size)
                ]
        return self._chunk_cache[key]

    @functools.cached_property
    def _norm_cache(self) -> dict[tuple[int, str], list[jnp.ndarray]]:
        return {}

    def _train_norms(self, size: int) -> list[jnp.ndarray]:
        """‖x_j‖² of each of ``_train_chunks(size)``, (1, size): made once, as the chunks are."""
        chunks = self._train_chunks(size)
        key = (size, chunks[0][0].dtype.name)
        if key not in self._norm_cache:
            with jax.ensure_compile_time_eval():
                self._norm_cache[key] = [jnp.sum(xc * xc, axis=1)[None, :] for xc, _ in chunks]
        return self._norm_cache[key]

    def _over_test_blocks(
        self, fn: Callable[..., jnp.ndarray], arrays: tuple[jnp.ndarray, ...], size: int
    ) -> jnp.ndarray:
        """``fn`` on equal-sized blocks of the ``arrays`` (last block padded), results joined.

        Equal blocks mean one compiled shape; the padding repeats the last example.
        """
        n = arrays[0].shape[0]
        if not n:
            raise ValueError("inputs hold no points (0 rows)")
        size = min(size, n)
        sharding = point_sharding(arrays)
        if sharding is not None:  # a multiple of the devices, so each holds an equal share
            devices = sharding.mesh.size
            size = -(-size // devices) * devices
        outs = []
        for start in range(0, n, size):
            blocks = [a[start : start + size] for a in arrays]
            real = blocks[0].shape[0]
            if real < size:
                blocks = [jnp.concatenate([b, jnp.repeat(b[-1:], size - real, axis=0)], axis=0) for b in blocks]
            if sharding is not None:
                blocks = [jax.device_put(b, sharding) for b in blocks]
            outs.append(fn(*blocks)[:real])
        out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
        # gathered on the first device, where the caller's other arrays live
        return out if sharding is None else jax.device_put(out, jax.local_devices()[0])

    @float64
    def logits(self, x: np.ndarray | jnp.ndarray) -> jnp.ndarray:
        """f_t(x), shape (N, k), at the machine's precision."""
        x = self._check(x)
        blocks = self._blocks()
        chunks = self._train_chunks(blocks.train)
        compiled = _compiled(self.arch)

        def block_logits(xb: jnp.ndarray) -> jnp.ndarray:
            f = compiled.logits(xb, *chunks[0])
            for xc, ac in chunks[1:]:
                f = f + compiled.logits(xb, xc, ac)
            return f

        return self._over_test_blocks(block_logits, (x,), blocks.test)

    def predict(self, x: np.ndarray | jnp.ndarray) -> np.ndarray:
        """Predicted class ids, shape (N,)."""
        return np.asarray(self.classes, dtype=np.int64)[predicted_index(np.asarray(self.logits(x)))]

    @float64
    def loss_gradient(self, x: np.ndarray | jnp.ndarray, target_index: np.ndarray | jnp.ndarray) -> jnp.ndarray:
        """∇ₓ of the cross-entropy of each example (supp. eq. 5 / 8), shape, dtype and array type
        (numpy, JAX, torch) of ``x``. ``target_index`` (N,): each example's true class as its
        position among ``classes`` (``target_index(labels)`` maps class ids; for one output 0 ↔
        y = −1, 1 ↔ y = +1); host arrays are checked (inside a JAX trace nothing can be)."""
        x_arr = self._check(x)
        # positions among the outputs the loss reads, as ``loss_cotangent``: a machine of other
        # dual coefficients (``with_dual_coef``) may have more or fewer outputs than classes
        check_target_index(target_index, max(self.n_outputs, 2), x_arr.shape[0])
        # a JAX array (a caller's tracer too) as it is: tracers cannot go through the host
        index = jnp.asarray(
            target_index if isinstance(target_index, jax.Array) else host_array(target_index), dtype=jnp.int32
        )
        blocks = self._blocks()
        chunks = self._train_chunks(blocks.train)
        compiled = _compiled(self.arch)
        closed = self.gradient == "closed-form"
        dot_programs = _dot_route.programs_for(self.arch, closed)

        def block_gradient(xb: jnp.ndarray, ib: jnp.ndarray) -> jnp.ndarray:
            if dot_programs is not None:  # two GEMMs and elementwise passes (kernels._dot_route)
                return _dot_route.loss_gradient_block(dot_programs, xb, ib, chunks, self._train_norms(blocks.train))
            if len(chunks) == 1:  # forward and backward in one pass, residuals reused
                return compiled.loss_grad_one_pass(xb, ib, *chunks[0], closed)
            # Several chunks: all logits first (the loss needs the whole sum), then one VJP
            # per chunk, which recomputes that chunk's rows instead of keeping them all.
            f = compiled.logits(xb, *chunks[0])
            for xc, ac in chunks[1:]:
                f = f + compiled.logits(xb, xc, ac)
            cot = _loss_cotangent(f, ib)
            g = compiled.rows_vjp(xb, chunks[0][0], cot @ chunks[0][1].T, closed)
            for xc, ac in chunks[1:]:
                g = g + compiled.rows_vjp(xb, xc, cot @ ac.T, closed)
            return g

        g = self._over_test_blocks(block_gradient, (x_arr, index), blocks.test)
        return _like(g, x)

    @float64
    def output_jacobian(
        self,
        x: np.ndarray | jnp.ndarray,
        outputs: np.ndarray | None = None,
        *,
        route: str = "auto",
    ) -> jnp.ndarray:
        """z[b, q] = ∇ₓ f_r(x_b) = DΘ(x_b, X)ᵀ α_r (supp. eq. 9) for r = outputs[b, q].

        ``outputs`` (N, q) picks q outputs per example (default: all k, the same for every
        example). Shape (N, q, *x.shape[1:]), dtype of ``x``. Exact routes:
        - ``cotangents``: one VJP of the kernel rows per picked output;
        - ``pairs``: the input gradient of every entry Θ(x_b, x_j) once, contracted with α: one
          backward pass whatever q is (convolutional kernels, many outputs);
        - ``dots``: for kernels of x·x' and ‖x‖² (``Architecture.dot_kernel_fn``), the partial
          derivatives of every entry once, then one matrix product with X.
        "auto" takes ``dots`` where it exists, ``pairs`` for more than 3 outputs, else ``cotangents``.
        """
        x_arr = self._check(x)
        if outputs is None:
            outputs = np.broadcast_to(np.arange(self.n_outputs), (x_arr.shape[0], self.n_outputs))
        outputs = np.asarray(outputs, dtype=np.int32)
        if outputs.ndim != 2 or outputs.shape[0] != x_arr.shape[0]:
            raise ValueError(f"outputs must have shape ({x_arr.shape[0]}, q), got {outputs.shape}")
        if outputs.size and (outputs.min() < 0 or outputs.max() >= self.n_outputs):
            raise ValueError(f"outputs must lie in [0, {self.n_outputs})")
        q = outputs.shape[1]
        if route == "auto":
            route = "dots" if self.arch.dot_kernel_fn is not None else ("pairs" if q > 3 else "cotangents")
        if route not in ("cotangents", "pairs", "dots") or (route == "dots" and self.arch.dot_kernel_fn is None):
            raise ValueError(f"route {route!r} is not available for {self.arch.name}")
        # Intermediates per kernel entry: q backward passes (cotangents); one input-sized
        # gradient, about a conv entry's intermediates (pairs); q weights (dots).
        blocks = self._blocks(per_example_outputs={"cotangents": max(q, 1), "pairs": 4, "dots": max(q // 8, 1)}[route])
        chunks = self._train_chunks(blocks.train)
        compiled = _compiled(self.arch)
        closed = self.gradient == "closed-form"
        jacobian: Callable[..., jnp.ndarray]
        if route == "pairs":
            jacobian = compiled.pair_jacobian
        elif route == "dots":
            jacobian = compiled.dot_jacobian
        else:
            jacobian = functools.partial(compiled.jacobian, closed=closed)

        def block_jacobian(xb: jnp.ndarray, ob: jnp.ndarray) -> jnp.ndarray:
            z = jacobian(xb, chunks[0][0], chunks[0][1].T[ob])
            for xc, ac in chunks[1:]:
                z = z + jacobian(xb, xc, ac.T[ob])
            return z

        z = self._over_test_blocks(block_jacobian, (x_arr, jnp.asarray(outputs)), blocks.test)
        return _like(z, x)

    def _check(self, x: np.ndarray | jnp.ndarray) -> jnp.ndarray:
        """``x`` as a JAX array (a torch tensor through the host), its shape checked; a host array
        (numpy, torch) also for NaN and inf, which every prediction would carry silently."""
        if not hasattr(x, "shape"):
            raise TypeError(f"inputs must be an array (numpy, JAX or torch), got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"inputs of shape {tuple(x.shape[1:])} do not match training inputs {self.input_shape}")
        if not isinstance(x, jax.Array):  # JAX arrays may live on a device: no transfer to check them
            x = host_array(x)
            if not np.all(np.isfinite(x)):
                raise ValueError("inputs contain NaN or inf")
        return jnp.asarray(x)


def loss_cotangent(f: jnp.ndarray, index: Any) -> jnp.ndarray:
    """∂L/∂f of the cross-entropy on outputs f (B, k) for targets ``index`` (B,), shape (B, k):
    one output, L = softplus(−y f) with y = ±1 (index 0 ↔ −1); k outputs, softmax cross-entropy.
    Host indices are checked (``check_target_index``)."""
    check_target_index(index, max(int(f.shape[1]), 2), int(f.shape[0]))
    return _loss_cotangent(f, jnp.asarray(host_array(index)) if is_torch(index) else index)


def check_target_index(index: object, classes: int, batch: int) -> None:
    """Refuse target indices that are not ``batch`` positions in [0, ``classes``): class ids given
    for positions are otherwise read silently as other classes. Only host arrays (numpy, torch on
    the CPU, lists) are checked: JAX arrays may live on a device, and tracers have no values."""
    if isinstance(index, jax.Array) or (is_torch(index) and index.device.type != "cpu"):  # type: ignore[attr-defined]
        return
    values = host_array(index)
    if values.shape != (batch,) or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"target indices must be ({batch},) integers, got {values.dtype} of shape {values.shape}")
    if values.size and (values.min() < 0 or values.max() >= classes):
        raise ValueError(
            f"target indices must lie in [0, {classes}) (positions among the classes: "
            f"machine.target_index(labels) maps class ids), got {values.min()} to {values.max()}"
        )


def _like(g: jnp.ndarray, x: object) -> Any:
    """``g`` in the dtype and array type of ``x``: a torch tensor back on ``x``'s device."""
    if is_torch(x):  # through the attacks' backend-neutral arrays: kernels/ imports no torch itself
        from ntkrobust.attacks._array import ops_for

        return ops_for(x).from_numpy(np.array(g), like=x)
    return g.astype(np.dtype(x.dtype))  # type: ignore[attr-defined]


@float64
def fit_kernel_machine(
    arch: Architecture,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    classes: Sequence[int] | None = None,
    time: float = math.inf,
    ridge: float = 0.0,
    learning_rate: float = 1.0,
    gram: np.ndarray | None = None,
    gradient: str = "auto",
    cache_dir: Path | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    precision: str = "float64",
    progress: bool = False,
) -> KernelMachine:
    """Eigendecompose Θ(X, X) once and return the machine f_t of eq. 7.

    Args:
        arch: the architecture whose NTK is Θ.
        x_train: (n, C, H, W) or (n, d) inputs in [0, 1].
        y_train: (n,) integer class ids.
        classes: the task's classes in order; two classes make a binary ±1 task (first = −1).
            Default: the sorted distinct labels of ``y_train``.
        time: t of eq. 7 (``math.inf`` for the converged machine).
        ridge: ρ relative to tr(Θ)/n (0 = the paper's ridgeless machine).
        learning_rate: η of eq. 7.
        gram: a precomputed Θ(x_train, x_train); computed (and cached) otherwise.
        gradient: "autodiff", "closed-form" (supp. eq. 9; needs an analytic VJP) or "auto".
        cache_dir: where Gram matrices are cached (None: no cache).
        memory_budget: bytes for the intermediates of one kernel block.
        precision: arithmetic of test-time evaluation ("float64" or "float32"); see KernelMachine.
        progress: show progress bars.
    """
    check_architecture(arch)
    x_train = host_array(x_train)  # a torch tensor's values, even one that requires grad
    y_train = np.asarray(y_train)
    if x_train.shape[0] != y_train.shape[0]:
        raise ValueError(f"{x_train.shape[0]} inputs but {y_train.shape[0]} labels")
    if y_train.ndim != 1 or not np.issubdtype(y_train.dtype, np.integer):
        raise ValueError(f"y_train must be (n,) integer class ids, got {y_train.dtype} of shape {y_train.shape}")
    if not np.all(np.isfinite(x_train)):
        raise ValueError("x_train contains NaN or inf")
    if not x_train.shape[0]:
        raise ValueError("no training points (x_train is empty)")
    arch.check_input(tuple(x_train.shape))
    low, high = float(x_train.min()), float(x_train.max())
    if high > 1:  # below 0 alone: centred features, more likely than images
        # just above 1 (1.0000001): rounding, not another scale
        advice = f"divide them by {_full_scale(high):g}" if high >= 2 else "clip them to [0, 1]"
        warnings.warn(
            f"x_train runs from {low:.8g} to {high:.8g}: if these are images, {advice} "
            "(pixel units in [0, 1]); the NTK of a net with biases is not scale-free, and the attacks and "
            "feature scores refuse inputs outside [0, 1]",
            InputRangeWarning,
            stacklevel=3,  # the caller's line: 2 is the @float64 wrapper's
        )
    classes = tuple(int(c) for c in (np.unique(y_train) if classes is None else classes))
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"need at least two distinct classes, got {classes}")
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    if not (learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if gradient == "auto":
        gradient = "closed-form" if arch.kernel_vjp is not None else "autodiff"
    if gradient not in ("autodiff", "closed-form") or (gradient == "closed-form" and arch.kernel_vjp is None):
        raise ValueError(f"gradient {gradient!r} is not available for {arch.name}")

    if gram is None:
        gram = gram_matrix(arch, x_train, cache_dir=cache_dir, memory_budget=memory_budget, progress=progress)
    gram = np.asarray(gram, dtype=np.float64)
    n = x_train.shape[0]
    if gram.shape != (n, n):
        raise ValueError(f"Gram matrix of shape {gram.shape} does not match {n} training points")
    if not np.all(np.isfinite(gram)):  # eigh turns NaN entries into finite, wrong eigenvalues
        raise ValueError("the Gram matrix contains NaN or inf")
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (gram + gram.T))
    eigenvalues, eigenvectors = eigenvalues[::-1].copy(), eigenvectors[:, ::-1].copy()
    absolute_ridge = ridge * float(np.trace(gram)) / n
    k = output_count(len(classes))
    untrained = KernelMachine(
        arch=arch,
        classes=classes,
        input_shape=tuple(x_train.shape[1:]),
        x_train=arch.to_layout(jnp.asarray(x_train, dtype=jnp.float64)),
        targets=_binary_or_onehot(_index_of(y_train, classes), k),
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors,
        time=0.0,
        ridge=absolute_ridge,
        learning_rate=float(learning_rate),
        cutoff=n * np.finfo(np.float64).eps * (max(float(eigenvalues[0]), 0.0) + absolute_ridge),
        dual_coef=jnp.zeros((n, k)),
        gradient=gradient,
        memory_budget=memory_budget,
    )
    machine = untrained.at_time(time).with_precision(precision)
    _warn_if_ill_conditioned(machine)
    return machine


def _index_of(labels: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1D array of class ids, got shape {labels.shape}")
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        raise ValueError(f"labels must be whole class ids, got {labels.dtype} values such as {labels[:3].tolist()}")
    lookup = {c: i for i, c in enumerate(classes)}
    missing = sorted({int(c) for c in labels} - set(lookup))
    if missing:
        raise ValueError(f"labels {missing} are not one of the classes {classes}")
    return np.array([lookup[int(c)] for c in labels], dtype=np.int64)


def _full_scale(high: float) -> float:
    """The white of images whose largest value is ``high``: 255 (8 bits), 16 (scikit-learn's
    digits) or 65535 (16 bits), else ``high`` itself."""
    return next((white for white in (16.0, 255.0, 65535.0) if high <= white), high)


def _warn_if_ill_conditioned(machine: KernelMachine) -> None:
    dropped = machine.dropped_directions
    cond = machine.condition_number
    if dropped == machine.n_train:
        warnings.warn(
            f"Gram matrix is numerically zero: all {dropped} of {machine.n_train} eigen-directions "
            f"(eigenvalue <= {machine.cutoff:.3g}) are left out and the machine predicts 0 everywhere; "
            "the two-layer NTK (no biases) of all-zero images does this",
            IllConditionedWarning,
            stacklevel=4,  # fit_kernel_machine's caller, past the @float64 wrapper
        )
    elif dropped:
        warnings.warn(
            f"Gram matrix is numerically singular: {dropped} of {machine.n_train} eigen-directions "
            f"(eigenvalue <= {machine.cutoff:.3g}) are left out (pseudo-inverse); duplicated inputs do this",
            IllConditionedWarning,
            stacklevel=4,  # fit_kernel_machine's caller, past the @float64 wrapper
        )
    elif math.isinf(machine.time) and cond > CONDITION_WARNING:
        warnings.warn(
            f"Gram matrix is ill-conditioned (condition number {cond:.3g}); the ridgeless t=inf "
            "machine amplifies rounding errors: consider a ridge or a finite time",
            IllConditionedWarning,
            stacklevel=4,  # fit_kernel_machine's caller, past the @float64 wrapper
        )


__all__ = [
    "CONDITION_WARNING",
    "PRECISIONS",
    "IllConditionedWarning",
    "InputRangeWarning",
    "KernelMachine",
    "fit_kernel_machine",
    "loss_cotangent",
    "output_count",
    "predicted_index",
    "spectral_filter",
]
