"""Threat models, the one attack spec and the attack algorithms shared by the kernel half and
the torch half.

Each algorithm is written once and driven by a gradient function supplied by the model
(a kernel machine's ``loss_gradient`` / ``output_jacobian``, or a torch net's), and runs on
numpy, JAX or torch arrays without leaving their device.
"""

from ntkrobust.attacks.fgsm import LossGradient, fgsm
from ntkrobust.attacks.pgd import pgd
from ntkrobust.attacks.random_sign import random_sign
from ntkrobust.attacks.spec import (
    EPOCH_PGD_STEPS,
    EVALUATION_PGD_STEPS,
    METHODS,
    NET_METHODS,
    STANDARD_THREATS,
    AttackSpec,
    evaluation_schedule,
    evaluation_steps,
    image_type,
    pgd_schedule,
    standard_threat,
)
from ntkrobust.attacks.taylor import OutputJacobian, taylor_max_l1, taylor_sum
from ntkrobust.attacks.threat import (
    EPS_SLACK,
    NORMS,
    Norm,
    ThreatModel,
    check_adversarial,
    check_batch_size,
    check_schedule,
    dual_norm,
    perturbation_norms,
    robust_accuracy,
    steepest_ascent,
    transferability,
)

__all__ = [
    "EPOCH_PGD_STEPS",
    "EPS_SLACK",
    "EVALUATION_PGD_STEPS",
    "METHODS",
    "NET_METHODS",
    "NORMS",
    "STANDARD_THREATS",
    "AttackSpec",
    "LossGradient",
    "Norm",
    "OutputJacobian",
    "ThreatModel",
    "check_adversarial",
    "check_batch_size",
    "check_schedule",
    "dual_norm",
    "evaluation_schedule",
    "evaluation_steps",
    "fgsm",
    "image_type",
    "perturbation_norms",
    "pgd",
    "pgd_schedule",
    "random_sign",
    "robust_accuracy",
    "standard_threat",
    "steepest_ascent",
    "taylor_max_l1",
    "taylor_sum",
    "transferability",
]
