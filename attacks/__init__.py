"""Threat models and attack algorithms shared by the kernel half and the torch half.

Each algorithm is written once and driven by a gradient function supplied by the model
(a kernel machine's ``loss_gradient`` / ``output_jacobian``, or a torch net's), and runs on
numpy, JAX or torch arrays without leaving their device.
"""

from attacks.fgsm import LossGradient, fgsm
from attacks.pgd import pgd
from attacks.random_sign import random_sign
from attacks.taylor import OutputJacobian, taylor_max_l1, taylor_sum
from attacks.threat import (
    EPS_SLACK,
    NORMS,
    Norm,
    ThreatModel,
    check_adversarial,
    dual_norm,
    perturbation_norms,
    robust_accuracy,
    steepest_ascent,
    transferability,
)

__all__ = [
    "EPS_SLACK",
    "NORMS",
    "LossGradient",
    "Norm",
    "OutputJacobian",
    "ThreatModel",
    "check_adversarial",
    "dual_norm",
    "fgsm",
    "perturbation_norms",
    "pgd",
    "random_sign",
    "robust_accuracy",
    "steepest_ascent",
    "taylor_max_l1",
    "taylor_sum",
    "transferability",
]
