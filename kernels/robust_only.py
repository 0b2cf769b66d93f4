"""Robust-features-only kernels: are the robust eigen-features alone a robust classifier?

Tsilivis & Kempe supp. D.3 (figs. 4-5): rank the features f⁽ⁱ⁾ by their robustness on a
validation set (``kernels.features``), keep the r most robust with their original eigenvalues,
    Θ'_r = Σ_{i ∈ R_r} λᵢ vᵢ vᵢᵀ,   f'_r(x) = Θ(x, X) Θ'_r⁺ Y = Σ_{i ∈ R_r} f⁽ⁱ⁾(x)
(at t = ∞; at a finite time each kept feature keeps the machine's filter g_t(λᵢ) in place of
1/λᵢ, so f'_r is still the sum of its features), and measure f'_r clean, under its own FGSM
and PGD, and under the FGSM and PGD examples of the full machine (attacks that transfer from
all features to the robust few). With r = n, f'_r is the full machine.

Accuracies under attack count the examples still correct (correct at x and at the attack).
Shapes: x (N, C, H, W) in [0, 1], labels (N,); one ``RobustOnlyResult`` per r.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ntkrobust._progress import progress_iter
from ntkrobust.attacks import AttackSpec, ThreatModel, robust_accuracy
from ntkrobust.kernels.adversarial import craft_adversarial
from ntkrobust.kernels.machine import KernelMachine


@dataclass(frozen=True)
class RobustOnlyResult:
    """Accuracies of f'_r on the evaluation set (supp. figs. 4-5, one x-position)."""

    r: int
    clean: float
    fgsm_own: float
    pgd_own: float
    fgsm_transfer: float
    pgd_transfer: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def robust_only_kernels(
    machine: KernelMachine,
    ranking: np.ndarray,
    r_values: Sequence[int],
    x: np.ndarray,
    labels: np.ndarray,
    threat: ThreatModel,
    *,
    pgd_step: float,
    pgd_steps: int = 10,
    random_start: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> list[RobustOnlyResult]:
    """f'_r for every r in ``r_values``, built from the first r eigen-indices of ``ranking``.

    ``ranking`` orders eigen-indices from most to least robust (``features.robustness_ranking``);
    the paper's setting is FGSM and PGD-10 at the standard ε.
    """
    ranking = np.asarray(ranking, dtype=np.int64)
    if np.unique(ranking).size != ranking.size:  # f'_r would keep fewer than r features
        raise ValueError("ranking repeats eigen-indices: it must order distinct ones (features.robustness_ranking)")
    bad = [r for r in r_values if not 1 <= r <= ranking.size]
    if bad:
        raise ValueError(f"r must be in [1, {ranking.size}], got {bad}")
    fgsm_config = AttackSpec("fgsm", threat.eps, threat.norm)
    pgd_config = AttackSpec("pgd", threat.eps, threat.norm, pgd_step, pgd_steps, random_start, seed)
    transferred = {
        "fgsm": craft_adversarial(machine, x, labels, fgsm_config),
        "pgd": craft_adversarial(machine, x, labels, pgd_config),
    }
    results = []
    for r in progress_iter(r_values, "robust-only", "kernel", show=progress):
        kept = machine.restricted_to(ranking[:r])
        clean = kept.predict(x)
        own_fgsm = craft_adversarial(kept, x, labels, fgsm_config)
        own_pgd = craft_adversarial(kept, x, labels, pgd_config)
        results.append(
            RobustOnlyResult(
                r=int(r),
                clean=robust_accuracy(clean, labels),
                fgsm_own=robust_accuracy(kept.predict(own_fgsm), labels, clean),
                pgd_own=robust_accuracy(kept.predict(own_pgd), labels, clean),
                fgsm_transfer=robust_accuracy(kept.predict(transferred["fgsm"]), labels, clean),
                pgd_transfer=robust_accuracy(kept.predict(transferred["pgd"]), labels, clean),
            )
        )
    return results


__all__ = ["RobustOnlyResult", "robust_only_kernels"]
