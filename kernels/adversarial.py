"""Black-box NTK attacks: adversarial examples crafted from the analytic kernel alone.

Tsilivis & Kempe sec. 3: for a fixed architecture and training set, the kernel machine f_t of
eq. 7 is (the mean of) what the infinitely wide net learns, so attacking f_t needs no trained
network and no weights. Methods:
- ``fgsm``: one step on the cross-entropy of f_t (eq. 8 binary; supp. eq. 7-8 multiclass);
- ``pgd``: the iterated, projected version with a random start;
- ``taylor-l1`` / ``taylor-sum``: the first-order output attacks of supp. eq. 20 / 22
  (both are eq. 16 on a binary task).
The algorithms are the shared ones of ``attacks``; the machine supplies the gradients.

Shapes: x (N, C, H, W) float32 in [0, 1], labels (N,) class ids → x_adv like x (numpy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from attacks import ThreatModel, fgsm, pgd, taylor_max_l1, taylor_sum
from kernels._jax import jnp
from kernels.machine import KernelMachine

METHODS: tuple[str, ...] = ("fgsm", "pgd", "taylor-l1", "taylor-sum")


@dataclass(frozen=True)
class AttackConfig:
    """What to run: method, threat model and the PGD schedule (ignored by one-step methods)."""

    method: str
    threat: ThreatModel
    step: float | None = None
    steps: int = 1
    random_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown attack method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.method == "pgd" and (self.step is None or not self.step > 0 or self.steps < 1):
            raise ValueError("pgd needs step > 0 and steps >= 1")


def craft_adversarial(
    machine: KernelMachine,
    x: np.ndarray,
    labels: np.ndarray,
    config: AttackConfig,
    *,
    batch_size: int = 1000,
    progress: bool = False,
) -> np.ndarray:
    """Attack ``machine`` on (x, labels); batches of ``batch_size`` stay on the JAX device."""
    index = machine.target_index(labels)
    out = np.empty_like(x)
    starts = range(0, x.shape[0], batch_size)
    for start in tqdm(starts, desc=f"NTK-{config.method}", unit="batch", disable=not progress, leave=False):
        xb = jnp.asarray(x[start : start + batch_size])
        ib = index[start : start + batch_size]
        x_adv = _attack_batch(machine, xb, ib, config, seed_offset=start, progress=progress)
        out[start : start + batch_size] = np.asarray(x_adv)
    return out


def _attack_batch(
    machine: KernelMachine, xb: jnp.ndarray, ib: np.ndarray, config: AttackConfig, *, seed_offset: int, progress: bool
) -> jnp.ndarray:
    eps, norm = config.threat.eps, config.threat.norm
    if config.method == "fgsm":
        return fgsm(machine.loss_gradient, xb, ib, eps=eps, norm=norm)
    if config.method == "pgd":
        assert config.step is not None
        return pgd(
            machine.loss_gradient,
            xb,
            ib,
            eps=eps,
            norm=norm,
            step=config.step,
            steps=config.steps,
            random_start=config.random_start,
            seed=config.seed + seed_offset,
            progress=progress,
        )
    taylor = taylor_max_l1 if config.method == "taylor-l1" else taylor_sum
    return taylor(machine.output_jacobian, xb, ib, eps=eps, norm=norm)
