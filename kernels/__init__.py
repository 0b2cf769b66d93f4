"""Infinite-width NTKs, kernel machines and Gram-matrix tools (the analytic half).

Public names load lazily: ``import kernels`` costs nothing, and ``kernels.metrics`` (pure
numpy) never pulls in JAX or neural-tangents.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "ARCHITECTURES": "ntkrobust.kernels.architectures",
    "Architecture": "ntkrobust.kernels.architectures",
    "UnknownArchitectureError": "ntkrobust.kernels.architectures",
    "get_architecture": "ntkrobust.kernels.architectures",
    "two_layer_ntk": "ntkrobust.kernels.two_layer",
    "two_layer_ntk_vjp": "ntkrobust.kernels.two_layer",
    "two_layer_stax_ntk": "ntkrobust.kernels.two_layer",
    "compute_gram": "ntkrobust.kernels.gram",
    "default_cache_dir": "ntkrobust.kernels.gram",
    "gram_cache_path": "ntkrobust.kernels.gram",
    "gram_matrix": "ntkrobust.kernels.gram",
    "CONDITION_WARNING": "ntkrobust.kernels.machine",
    "IllConditionedWarning": "ntkrobust.kernels.machine",
    "KernelMachine": "ntkrobust.kernels.machine",
    "PRECISIONS": "ntkrobust.kernels.machine",
    "fit_kernel_machine": "ntkrobust.kernels.machine",
    "spectral_filter": "ntkrobust.kernels.machine",
    "loss_cotangent": "ntkrobust.kernels.machine",
    "predicted_index": "ntkrobust.kernels.machine",
    "ATTACKS": "ntkrobust.kernels.features",
    "FeatureScores": "ntkrobust.kernels.features",
    "feature_coefficients": "ntkrobust.kernels.features",
    "feature_gradients": "ntkrobust.kernels.features",
    "feature_outputs": "ntkrobust.kernels.features",
    "feature_scores": "ntkrobust.kernels.features",
    "loss_gradient_weights": "ntkrobust.kernels.features",
    "projection_machine": "ntkrobust.kernels.features",
    "robustness_ranking": "ntkrobust.kernels.features",
    "spearman_correlation": "ntkrobust.kernels.features",
    "RobustOnlyResult": "ntkrobust.kernels.robust_only",
    "robust_only_kernels": "ntkrobust.kernels.robust_only",
    "aligned_times": "ntkrobust.kernels.alignment",
    "matching_time": "ntkrobust.kernels.alignment",
    "theory_time_per_epoch": "ntkrobust.kernels.alignment",
    "training_outputs": "ntkrobust.kernels.alignment",
    "craft_adversarial": "ntkrobust.kernels.adversarial",
    "UndefinedMetricError": "ntkrobust.kernels.metrics",
    "trace_kernel": "ntkrobust.kernels.metrics",
    "class_kernel": "ntkrobust.kernels.metrics",
    "kernel_distance": "ntkrobust.kernels.metrics",
    "kernel_alignment": "ntkrobust.kernels.metrics",
    "distance_matrix": "ntkrobust.kernels.metrics",
    "kernel_velocity": "ntkrobust.kernels.metrics",
    "distance_to_final": "ntkrobust.kernels.metrics",
    "top_eigenspace": "ntkrobust.kernels.metrics",
    "polar_coordinates": "ntkrobust.kernels.metrics",
    "frobenius_norm": "ntkrobust.kernels.metrics",
    "eigenvalues": "ntkrobust.kernels.metrics",
    "eigenvalue_concentration": "ntkrobust.kernels.metrics",
    "effective_rank": "ntkrobust.kernels.metrics",
    "one_hot": "ntkrobust.kernels.metrics",
    "kernel_target_alignment": "ntkrobust.kernels.metrics",
    "centered_alignment": "ntkrobust.kernels.metrics",
    "specialization_matrix": "ntkrobust.kernels.metrics",
    "mean_specialization": "ntkrobust.kernels.metrics",
    "kernel_metrics": "ntkrobust.kernels.metrics",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return __all__
