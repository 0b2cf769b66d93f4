"""Weight initialisations of the paper nets (RAT app. B, figs. 11-18).

RAT compares the kernel dynamics of ResNet-18 under the Gaussian, truncated-Gaussian and uniform
initialisations that different frameworks default to (JAX's are Gaussian or truncated Gaussian,
PyTorch's uniform). The paper gives no variances; here all three have He et al.'s (2015) fan-in
variance 2/fan_in for every ``nn.Conv2d`` and ``nn.Linear`` weight, with zero biases, so they
differ in the shape of the distribution only:

- ``normal``: N(0, 2/fan_in);
- ``truncated-normal``: N(0, σ²) cut at ±2σ, with σ raised by 1/0.87962566 so the truncated
  distribution keeps the variance 2/fan_in (as ``jax.nn.initializers.variance_scaling`` does);
- ``uniform``: U(−√(6/fan_in), √(6/fan_in));
- ``default``: what the model's constructor does (torch's own defaults; He normal for the CIFAR
  CNN, see ``bridge.models``).

BatchNorm layers keep weight 1 and bias 0. The NTK-parameterised twins of the analytic kernels
have their own N(0, 1) parameters (their scale lives in the forward pass) and take ``default`` only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["INITIALISATIONS", "TRUNCATED_STD_CORRECTION", "initialise"]

INITIALISATIONS = ("default", "normal", "truncated-normal", "uniform")
#: the standard deviation of N(0, 1) truncated at ±2, by which the truncated draw is divided
TRUNCATED_STD_CORRECTION = 0.87962566103423978


def _fan_in(weight: torch.Tensor) -> int:
    return math.prod(weight.shape[1:])


def initialise(model: nn.Module, name: str, generator: torch.Generator) -> nn.Module:
    """Re-draw every conv and linear layer of ``model`` from ``name`` (in place; returns it).
    ``ValueError`` for an unknown name or a model without such layers."""
    if name not in INITIALISATIONS:
        raise ValueError(f"unknown initialisation {name!r}: choose one of {', '.join(INITIALISATIONS)}")
    if name == "default":
        return model
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if not layers:
        raise ValueError(f"--init {name} re-draws conv and linear layers; this model has none (NTK twins: default)")
    with torch.no_grad():
        for layer in layers:
            weight = layer.weight
            std = math.sqrt(2.0 / _fan_in(weight))
            if name == "normal":
                draw = torch.randn(weight.shape, generator=generator, dtype=weight.dtype) * std
            elif name == "uniform":
                bound = math.sqrt(3.0) * std
                draw = (torch.rand(weight.shape, generator=generator, dtype=weight.dtype) * 2 - 1) * bound
            else:
                draw = torch.empty(weight.shape, dtype=weight.dtype)
                nn.init.trunc_normal_(draw, std=1.0, a=-2.0, b=2.0, generator=generator)
                draw *= std / TRUNCATED_STD_CORRECTION
            weight.copy_(draw)
            if layer.bias is not None:
                layer.bias.zero_()
    return model
