"""Black-box NTK attacks: adversarial examples crafted from the analytic kernel alone.

Tsilivis & Kempe sec. 3: for a fixed architecture and training set, the kernel machine f_t of
eq. 7 is (the mean of) what the infinitely wide net learns, so attacking f_t needs no trained
network and no weights. Methods:
- ``fgsm``: one step on the cross-entropy of f_t (eq. 8 binary; supp. eq. 7-8 multiclass);
- ``pgd``: the iterated, projected version with a random start;
- ``taylor-l1`` / ``taylor-sum``: the first-order output attacks of supp. eq. 20 / 22
  (both are eq. 16 on a binary task).
The algorithms and the attack spec (``attacks.AttackSpec``) are the shared ones of ``attacks``;
the machine supplies the gradients.

Shapes: x (N, C, H, W) float32 in [0, 1], labels (N,) class ids → x_adv like x (numpy).
"""

from __future__ import annotations

import numpy as np

from ntkrobust._progress import progress_iter
from ntkrobust.attacks import AttackSpec, check_batch_size, fgsm, pgd, taylor_max_l1, taylor_sum
from ntkrobust.kernels._jax import float64, jnp
from ntkrobust.kernels.machine import KernelMachine


@float64
def craft_adversarial(
    machine: KernelMachine,
    x: np.ndarray,
    labels: np.ndarray,
    spec: AttackSpec,
    *,
    batch_size: int = 1000,
    progress: bool = False,
) -> np.ndarray:
    """Attack ``machine`` on (x, labels) with any method of ``attacks.METHODS``; batches of
    ``batch_size`` stay on the JAX device."""
    check_batch_size(batch_size)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array of images, got {type(x).__name__}")
    if len(labels) != x.shape[0]:
        raise ValueError(f"{len(labels)} labels for {x.shape[0]} inputs")
    # here, on the host array: each batch becomes a JAX array, which the attacks do not read
    spec.threat.check_inputs(x)
    index = machine.target_index(labels)
    out = np.empty_like(x)
    starts = range(0, x.shape[0], batch_size)
    for start in progress_iter(starts, f"NTK-{spec.method}", "batch", show=progress):
        xb = jnp.asarray(x[start : start + batch_size])
        ib = index[start : start + batch_size]
        x_adv = _attack_batch(machine, xb, ib, spec, first_row=start, progress=progress)
        out[start : start + batch_size] = np.asarray(x_adv)
    return out


def _attack_batch(
    machine: KernelMachine, xb: jnp.ndarray, ib: np.ndarray, spec: AttackSpec, *, first_row: int, progress: bool
) -> jnp.ndarray:
    eps, norm = spec.eps, spec.norm
    if spec.method == "fgsm":
        return fgsm(machine.loss_gradient, xb, ib, eps=eps, norm=norm)
    if spec.method == "pgd":
        assert spec.step is not None
        return pgd(
            machine.loss_gradient,
            xb,
            ib,
            eps=eps,
            norm=norm,
            step=spec.step,
            steps=spec.steps,
            random_start=spec.random_start,
            seed=spec.seed,
            first_row=first_row,  # the starts of one call on all of x, whatever the batch size
            progress=progress,
        )
    taylor = taylor_max_l1 if spec.method == "taylor-l1" else taylor_sum
    return taylor(machine.output_jacobian, xb, ib, eps=eps, norm=norm)
