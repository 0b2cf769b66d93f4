"""Threat models: the ε-ball, the [0, 1] pixel box, steepest-ascent steps and random starts.

Conventions (torchattacks / RobustBench): inputs are NCHW in [0, 1], ε is in pixel units, and
every adversarial example satisfies ``‖x_adv − x‖ ≤ ε`` (ℓ∞ or ℓ2 over all non-batch axes),
``0 ≤ x_adv ≤ 1``, is finite and keeps the shape and dtype of ``x``.

The steepest-ascent direction of a linear gain gᵀη over the unit ball is the dual-norm
maximiser: ``sign(g)`` for ℓ∞ (gain ‖g‖₁) and ``g/‖g‖₂`` for ℓ2 (gain ‖g‖₂). FGSM, PGD and the
Taylor attacks of Tsilivis & Kempe (supp. eq. 16, 20, 22) all step along it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ntkrobust._numbers import is_real, is_whole
from ntkrobust.attacks._array import _TINY, Array, ops_for

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")

#: Slack allowed by the ε-ball invariant: float32 rounding of x ± ε.
EPS_SLACK = 1e-6


@dataclass(frozen=True)
class ThreatModel:
    """An ℓ∞ or ℓ2 ball of radius ``eps`` around each input, intersected with the [0, 1] box."""

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if not is_real(self.eps, finite=True) or self.eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")

    def check_inputs(self, x: Array) -> None:
        """Refuse inputs that are not floating-point images in [0, 1]: the clip to the box would
        move a clean point of 0-255 images by more than ε (254 for ε = 0.1), integer images
        would round every step away, and a NaN spreads through its example. numpy arrays and
        host tensors are read; a GPU tensor gets an assertion queued on its device (no host
        round trip per attack), which stops the process at its next synchronisation; JAX
        device arrays are not read (``kernels.craft_adversarial`` checks its host array)."""
        if isinstance(x, np.ndarray):
            check_floating(x)
            if x.size and (np.isnan(x).any() or x.min() < 0 or x.max() > 1):
                raise ValueError(outside_box_message(x.min(), x.max()))
        elif type(x).__module__.startswith("torch"):
            _check_tensor_inputs(x)

    def project(self, x_adv: Array, x: Array) -> Array:
        """Nearest point of the ε-ball around ``x`` (then clipped to [0, 1])."""
        ops = ops_for(x)
        delta = x_adv - x
        if self.norm == "linf":
            delta = ops.clip(delta, -self.eps, self.eps)
        else:
            norms = ops.sqrt(ops.reduce(delta * delta, "sum"))
            delta = delta * ops.clip(self.eps / ops.maximum(norms, _TINY), 0.0, 1.0)
        # Clipping to the box after the projection only shrinks |δ| coordinate-wise, since x
        # itself lies in [0, 1]: the result stays inside the ball.
        return ops.clip(x + delta, 0.0, 1.0)

    def random_start(self, x: Array, seed: int, first_row: int = 0, places: np.ndarray | None = None) -> Array:
        """A point drawn uniformly from the ε-ball around ``x``, clipped to [0, 1].

        The noise is drawn on the host from numpy's generator seeded by ``seed`` and moved to
        ``x``'s device once, so every backend sees the same start for the same seed. Row i of
        ``x`` takes the draws of point ``first_row + i`` of that generator's stream (PCG64's
        ``advance`` skips to them): a data set gets the same starts whether it is attacked in one
        call or in batches, of any size, shared between any number of processes. ``places``
        (whole numbers >= 0, one per row) puts row i at point ``places[i]`` instead, for rows
        picked out of a data set (e.g. the points an attack's earlier restarts left unbroken):
        each run of consecutive places is drawn as one. ℓ∞: ε·(2u − 1) per pixel (one draw
        each, as ``uniform(−ε, ε)``); ℓ2: a Gaussian direction by Box–Muller (two draws per pair
        of coordinates) and the radius ε·u^(1/d) (one draw), a fixed number of draws per point.
        The ℓ2 draws are turned into noise a block of points at a time (the stream read in
        order, so the same numbers): Box–Muller's temporaries cost a block's memory, and the peak
        is about 3 times the starts' size instead of 6.
        """
        check_first_row(first_row)
        ops = ops_for(x)
        shape = tuple(x.shape)
        rows, size = shape[0], int(np.prod(shape[1:], dtype=np.int64))
        runs = _runs(first_row, places, rows)
        if len(runs) == 1:  # the whole batch in one run: no second buffer
            noise = self._noise(seed, runs[0][1], rows, size)
        else:
            noise = np.empty((rows, size))
            for at, first, count in runs:
                noise[at : at + count] = self._noise(seed, first, count, size)
        return ops.clip(x + ops.from_numpy(noise.reshape(shape), like=x), 0.0, 1.0)

    def _noise(self, seed: int, first: int, count: int, size: int) -> np.ndarray:
        """(count, size) start noise of points ``first`` .. ``first + count - 1`` of ``seed``'s stream."""
        pairs = (size + 1) // 2
        per_point = size if self.norm == "linf" else 2 * pairs + 1
        bits = np.random.PCG64(seed)  # numpy's default_rng(seed), with its place in the stream
        bits.advance(int(first) * per_point)  # advance takes Python ints, not numpy's
        rng = np.random.Generator(bits)
        if self.norm == "linf":
            return rng.uniform(-self.eps, self.eps, size=(count, size))
        noise = np.empty((count, size))
        block = max(1, START_BLOCK_VALUES // per_point)
        for at in range(0, count, block):
            noise[at : at + block] = _l2_noise(rng.random(size=(min(block, count - at), per_point)), self.eps, size)
        return noise


def _runs(first_row: int, places: np.ndarray | None, rows: int) -> list[tuple[int, int, int]]:
    """(row, place, count) of each run of rows whose places follow one another: one run from
    ``first_row`` without ``places``."""
    if places is None:
        return [(0, int(first_row), rows)]
    places = np.asarray(places)
    if places.shape != (rows,) or not np.issubdtype(places.dtype, np.integer) or (rows and places.min() < 0):
        raise ValueError(f"places must be {rows} whole numbers >= 0, one per row, got {places!r}")
    breaks = np.flatnonzero(np.diff(places) != 1) + 1
    edges = [0, *breaks.tolist(), rows]
    return [(a, int(places[a]), b - a) for a, b in itertools.pairwise(edges) if b > a]


#: values of uniforms per block of points whose ℓ2 start noise is made at once (2**20: 8 MiB)
START_BLOCK_VALUES = 2**20


def _l2_noise(u: np.ndarray, eps: float, size: int) -> np.ndarray:
    """(points, d = ``size``) noise uniform in the ε-ball from each point's 2⌈d/2⌉ + 1 uniforms
    (points, 2⌈d/2⌉ + 1): Box–Muller normals from the first 2⌈d/2⌉ (lengths, then angles), the
    radius ε·u^(1/d) from the last."""
    pairs = (size + 1) // 2
    length = np.sqrt(-2.0 * np.log1p(-u[:, :pairs]))  # 1 − u lies in (0, 1]
    angle = 2.0 * np.pi * u[:, pairs : 2 * pairs]
    direction = np.concatenate([length * np.cos(angle), length * np.sin(angle)], axis=1)[:, :size]
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), _TINY)
    return direction * (eps * u[:, -1:] ** (1.0 / size))


def check_schedule(step: Any, steps: Any) -> None:
    """Refuse a PGD step that is not a finite number > 0 (an infinite step times a zero gradient
    is NaN) and a number of steps that is not a whole number >= 1."""
    if not is_real(step, finite=True) or step <= 0:
        raise ValueError(f"the PGD step must be a finite number > 0, got {step!r}")
    if not is_whole(steps) or steps < 1:
        raise ValueError(f"the PGD steps must be a whole number >= 1, got {steps!r}")


def check_batch_size(batch_size: Any) -> None:
    """Refuse a batch size that is not a whole number >= 1: a loop over ``range(0, N, -1)``
    never runs, and its zero-filled (or uninitialised) output would be returned as the result."""
    if not is_whole(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


def check_first_row(first_row: Any) -> None:
    """Refuse a place in the seed's stream that is not a whole number >= 0."""
    if not is_whole(first_row) or first_row < 0:
        raise ValueError(f"first_row must be a whole number >= 0, got {first_row!r}")


def check_seed(seed: Any) -> None:
    """Refuse a seed that numpy's generators do not take (a whole number >= 0)."""
    if not is_whole(seed) or seed < 0:
        raise ValueError(f"the seed must be a whole number >= 0, got {seed!r}")


def check_floating(x: Array) -> None:
    """Refuse images of an integer (or boolean) dtype, from the dtype alone (no read)."""
    if type(x).__module__.startswith("torch"):
        floating = x.is_floating_point()
    else:
        floating = np.issubdtype(x.dtype, np.floating)
    if not floating:
        raise TypeError(f"inputs must be floating-point images in [0, 1], got dtype {x.dtype}")


def looks_channels_last(image_shape: tuple[int, ...]) -> bool:
    """Whether one image's (C, H, W) shape reads as an (H, W, C) one: a grey or colour channel
    count last and, first, more channels than any image format holds (grey, grey and alpha, RGB,
    RGBA: 1-4), so a height (8x8 grey images taken channels last are 8 channels of 8x1). Two or
    four channels first stay NCHW, whatever the width: (2, 6, 3) is two channels of 6x3."""
    return len(image_shape) == 3 and image_shape[0] > 4 and image_shape[-1] in (1, 3)


def outside_box_message(low: float, high: float) -> str:
    """Why images whose values run from ``low`` to ``high`` (NaN: some are NaN) are refused."""
    return f"inputs must lie in [0, 1] (pixel units), got values from {low:g} to {high:g}"


def _check_tensor_inputs(x: Any) -> None:
    """``ThreatModel.check_inputs`` of a torch tensor, as ``bridge.adversarial`` checks labels."""
    import torch

    check_floating(x)
    if not x.numel():
        return
    with torch.no_grad():
        try:  # NaN fails both comparisons
            torch._assert_async(((x >= 0) & (x <= 1)).all())
        except RuntimeError:  # raised at once for host tensors; reading them costs nothing
            low, high = torch.stack((x.min(), x.max())).tolist()
            raise ValueError(outside_box_message(low, high)) from None


def steepest_ascent(gradient: Array, norm: Norm) -> Array:
    """Unit-ball maximiser of ⟨gradient, η⟩: sign(g) for ℓ∞, g/‖g‖₂ for ℓ2 (zero if g = 0).

    The ℓ2 direction is a unit vector for every non-zero gradient, however small: g is first
    divided by its largest entry, so that ‖g‖² can neither underflow (float32's g² is 0 below
    about 1e-23) nor meet a floor. A confident net's cross-entropy gradient is often below
    1e-12 (it shrinks as e^-margin); a floor on ‖g‖ there (torchattacks',
    foolbox's and this package's before: 1e-10 to 1e-12) shortens the step to ε‖g‖/floor and
    overstates ℓ2 robust accuracy (200 digits, a confident linear net in float32, ε = 2:
    FGSM 0.665 with the floor, 0.020 without; PGD-10 0.510 and 0.000).
    """
    ops = ops_for(gradient)
    if norm == "linf":
        return ops.sign(gradient)
    if norm != "l2":  # any other name took the l2 step
        raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
    largest = ops.reduce(ops.abs(gradient), "max")
    scaled = gradient / ops.where(largest > 0, largest, 1.0)  # entries in [-1, 1], one of them ±1
    norms = ops.sqrt(ops.reduce(scaled * scaled, "sum"))  # >= 1 unless g = 0, whose step is 0
    return scaled / ops.maximum(norms, 1.0)


def dual_norm(gradient: Array, norm: Norm) -> Array:
    """Per-example dual norm, the gain of a steepest-ascent step: ‖g‖₁ for ℓ∞, ‖g‖₂ for ℓ2, shape
    (B, 1, ..., 1) so that it broadcasts against the batch (``attacks._array``)."""
    ops = ops_for(gradient)
    if norm == "linf":
        return ops.reduce(ops.abs(gradient), "sum")
    return ops.sqrt(ops.reduce(gradient * gradient, "sum"))


def perturbation_norms(x_adv: Array, x: Array) -> dict[str, np.ndarray]:
    """Per-example ℓ∞ and ℓ2 sizes of ``x_adv − x`` as numpy vectors."""
    d = np.asarray(ops_for(x).to_numpy(x_adv), dtype=np.float64) - np.asarray(ops_for(x).to_numpy(x), dtype=np.float64)
    flat = d.reshape(d.shape[0], -1)
    return {"linf": np.abs(flat).max(axis=1), "l2": np.linalg.norm(flat, axis=1)}


def check_adversarial(x_adv: Array, x: Array, threat: ThreatModel) -> None:
    """Raise ``AssertionError`` unless ``x_adv`` satisfies every invariant of the attack contract."""
    ops = ops_for(x)
    assert tuple(x_adv.shape) == tuple(x.shape), f"shape {tuple(x_adv.shape)} != {tuple(x.shape)}"
    assert x_adv.dtype == x.dtype, f"dtype {x_adv.dtype} != {x.dtype}"
    adv = ops.to_numpy(x_adv)
    assert np.all(np.isfinite(adv)), "non-finite values in x_adv"
    assert adv.min() >= 0.0 and adv.max() <= 1.0, f"x_adv outside [0, 1]: [{adv.min()}, {adv.max()}]"
    size = perturbation_norms(x_adv, x)[threat.norm].max(initial=0.0)
    assert size <= threat.eps + EPS_SLACK, f"perturbation {size} exceeds eps {threat.eps}"


def robust_accuracy(predictions: np.ndarray, labels: np.ndarray, clean_predictions: np.ndarray | None = None) -> float:
    """Share of examples whose prediction equals the label: clean accuracy, or under attack.

    With ``clean_predictions`` an example counts only if it is correct both clean and under
    attack, the share *still* correct (RobustBench's convention; the robustness of supp. A eq. 2
    takes the worst case over a ball that contains x itself).
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    if labels.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    correct = predictions == labels
    if clean_predictions is not None:
        clean_predictions = np.asarray(clean_predictions)
        if clean_predictions.shape != labels.shape:
            raise ValueError(f"clean predictions {clean_predictions.shape} and labels {labels.shape} differ in shape")
        correct &= clean_predictions == labels
    return float(np.mean(correct))


def transferability(clean_accuracy: float, transfer_accuracy: float, own_accuracy: float) -> float:
    """Loo et al. sec. 5: τ = (Acc_b − Acc_other) / (Acc_b − Acc_own).

    The accuracy drop that examples made on another model cause, as a share of the drop the
    model's own (white-box) examples cause: 1 = as effective as the model's own attack, 0 = no
    effect, NaN when the own attack causes no drop (τ is undefined).

    LOO's Acc is the plain accuracy on the examples; the callers here pass ``robust_accuracy``
    with the clean predictions (a point counts only if also correct clean), which differs from it
    by at most the clean error rate.
    """
    for name, value in (("clean", clean_accuracy), ("transfer", transfer_accuracy), ("own", own_accuracy)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} accuracy must lie in [0, 1], got {value}")
    drop = clean_accuracy - own_accuracy
    return float("nan") if drop <= 0 else (clean_accuracy - transfer_accuracy) / drop
