"""Infinite-width NTKs, kernel machines and Gram-matrix tools (the analytic half).

Public names load lazily: ``import kernels`` costs nothing, and ``kernels.metrics`` (pure
numpy) never pulls in JAX or neural-tangents.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "ARCHITECTURES": "kernels.architectures",
    "Architecture": "kernels.architectures",
    "UnknownArchitectureError": "kernels.architectures",
    "get_architecture": "kernels.architectures",
    "two_layer_ntk": "kernels.two_layer",
    "two_layer_ntk_vjp": "kernels.two_layer",
    "two_layer_stax_ntk": "kernels.two_layer",
    "compute_gram": "kernels.gram",
    "default_cache_dir": "kernels.gram",
    "gram_cache_path": "kernels.gram",
    "gram_matrix": "kernels.gram",
    "CONDITION_WARNING": "kernels.machine",
    "IllConditionedWarning": "kernels.machine",
    "KernelMachine": "kernels.machine",
    "PRECISIONS": "kernels.machine",
    "fit_kernel_machine": "kernels.machine",
    "spectral_filter": "kernels.machine",
    "loss_cotangent": "kernels.machine",
    "predicted_index": "kernels.machine",
    "ATTACKS": "kernels.features",
    "FeatureScores": "kernels.features",
    "feature_coefficients": "kernels.features",
    "feature_gradients": "kernels.features",
    "feature_outputs": "kernels.features",
    "feature_scores": "kernels.features",
    "loss_gradient_weights": "kernels.features",
    "projection_machine": "kernels.features",
    "robustness_ranking": "kernels.features",
    "spearman_correlation": "kernels.features",
    "RobustOnlyResult": "kernels.robust_only",
    "robust_only_kernels": "kernels.robust_only",
    "aligned_times": "kernels.alignment",
    "matching_time": "kernels.alignment",
    "theory_time_per_epoch": "kernels.alignment",
    "training_outputs": "kernels.alignment",
    "METHODS": "kernels.adversarial",
    "AttackConfig": "kernels.adversarial",
    "craft_adversarial": "kernels.adversarial",
    "UndefinedMetricError": "kernels.metrics",
    "trace_kernel": "kernels.metrics",
    "class_kernel": "kernels.metrics",
    "kernel_distance": "kernels.metrics",
    "kernel_alignment": "kernels.metrics",
    "distance_matrix": "kernels.metrics",
    "kernel_velocity": "kernels.metrics",
    "distance_to_final": "kernels.metrics",
    "top_eigenspace": "kernels.metrics",
    "polar_coordinates": "kernels.metrics",
    "frobenius_norm": "kernels.metrics",
    "eigenvalues": "kernels.metrics",
    "eigenvalue_concentration": "kernels.metrics",
    "effective_rank": "kernels.metrics",
    "one_hot": "kernels.metrics",
    "kernel_target_alignment": "kernels.metrics",
    "centered_alignment": "kernels.metrics",
    "specialization_matrix": "kernels.metrics",
    "mean_specialization": "kernels.metrics",
    "kernel_metrics": "kernels.metrics",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return __all__
