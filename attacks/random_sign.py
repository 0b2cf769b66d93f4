"""Random-sign noise: the baseline every transfer attack is compared with.

Paper:
    the "random perturbation of the same size" baseline of transfer studies (e.g. Papernot et
    al. 2016); Tsilivis & Kempe sec. 3.2 compare NTK-crafted examples with a net's own attack,
    and this is the floor below both: a perturbation of the full budget that knows nothing.

Threat model:
    ℓ∞ (default): x̃ = clip(x + ε·s), s uniform in {−1, +1}^d, a corner of the ε-cube, as far
    from x as FGSM goes; ℓ2: x̃ = clip(x + ε·u), u uniform on the unit sphere.

Arguments:
    x: inputs, NCHW (any shape with the batch first), values in [0, 1].
    eps: radius of the ball, ≥ 0.
    norm: ``"linf"`` (default) or ``"l2"``.
    seed: seeds the draw (numpy generator), so every backend gets the same noise.

Shapes:
    x: (B, C, H, W) → x_adv: (B, C, H, W), same dtype and array type (numpy, JAX, torch).

Example:
    >>> x_noisy = random_sign(x, eps=0.3, seed=0)
"""

from __future__ import annotations

import numpy as np

from ntkrobust.attacks._array import Array, ops_for
from ntkrobust.attacks.fgsm import fgsm
from ntkrobust.attacks.threat import Norm


def random_sign(x: Array, *, eps: float, norm: Norm = "linf", seed: int = 0) -> Array:
    """FGSM driven by a Gaussian "gradient" that ignores the model: a random full-size step."""
    noise = np.random.default_rng(seed).standard_normal(size=tuple(x.shape))
    ops = ops_for(x)
    return fgsm(lambda x_, _: ops.from_numpy(noise, like=x_), x, None, eps=eps, norm=norm)
