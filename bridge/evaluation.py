"""Robust accuracy as RobustBench measures it: PGD-20, PGD-100, CW-ℓ∞ and AutoAttack.

- ``pgd-20`` / ``pgd-100``: PGD on the cross-entropy from a random start, the evaluation steps of
  ``attacks.evaluation_schedule`` (the standard step, or 2.5·ε/steps when that is longer).
- ``cw-100``: the same PGD-100 on the Carlini-Wagner margin loss −relu(z_y − max_{j≠y} z_j + κ),
  κ = 50 (the "CW∞" of the TRADES / MART evaluation code): it does not saturate where the
  cross-entropy's gradient vanishes.
- ``autoattack``: the standard version of Croce & Hein (2020), APGD-CE, APGD-T, FAB-T and Square
  (5000 queries), run by their reference code (the registry's ``pyautoattack``), with as many
  target classes as the task has wrong classes (at most 9). Where the task has too few classes
  for a part of it (``autoattack_attacks``): with 2, the untargeted APGD-CE, FAB and Square; with
  3, APGD-T's targeted DLR loss divides by z_π1 − (z_π3 + z_π4)/2 and needs a fourth logit
  (pyautoattack fails with an IndexError; fra31/auto-attack issue 70), so the untargeted APGD-DLR
  (z_π1 − z_π3, defined for 3) takes its place beside APGD-CE, FAB-T and Square. A net with one
  output (a binary task, f > 0 for the second class) is attacked through the two logits
  (−f/2, f/2), whose softmax is the same.

PGD and CW start every point from its own draws of ``seed``'s stream (``attacks.pgd``'s
``first_row``), whatever the batches. With ``restarts`` R > 1 they run R times, restart r from
the stream of ``restart_seed(seed, r)`` (restart 0: ``seed`` itself, so R = 1 is the plain
evaluation), and a point counts as robust only if every restart leaves it correct (Madry et al.
2018's restarts). A restart after the first attacks only the points every earlier one left
correct (clean-correct ones), each from its own place in the stream (``ThreatModel.random_start``'s
``places``): the verdicts of attacking every point, at the cost of the points left. AutoAttack
runs on each batch of ``batch_size`` points as a run of its own, seeded by ``seed`` + the batch's
first row. Either way a point's verdict does not depend on how many processes share the batches
(``across_processes``, under torchrun).

Every attack is judged per point: ``robust_correct`` returns boolean arrays (point still
classified correctly), and the worst case over the attacks counts a point only if it survives all
of them. Gradient masking (a net whose gradients mislead gradient attacks, e.g. by rounding its
input) shows as an AutoAttack accuracy far below the PGD accuracy, since Square needs no
gradient: ``masking_suspected`` flags a gap larger than ``gap``, as RobustBench's checks do.

Shapes: x (N, C, H, W) in [0, 1] on the model's device; y (N,) int64 output indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ntkrobust.attacks import evaluation_schedule
from ntkrobust.bridge._autoattack import autoattack_correct
from ntkrobust.bridge.adversarial import adversarial_examples, predict

__all__ = [
    "EVALUATION_ATTACKS",
    "MASKING_GAP",
    "accuracies",
    "autoattack_attacks",
    "cw_margin_loss",
    "masking_suspected",
    "restart_seed",
    "robust_correct",
]

EVALUATION_ATTACKS = ("pgd-20", "pgd-100", "cw-100", "autoattack")
#: κ of the margin loss: large enough never to bind before the point is misclassified
CW_KAPPA = 50.0
#: AutoAttack accuracy this far below PGD-20's flags gradient masking
MASKING_GAP = 0.1


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_b −relu(z_y − max_{j≠y} z_j + κ): PGD raises it until another class wins by κ."""
    correct = logits.gather(1, y[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return -F.relu(correct - others + CW_KAPPA).sum()


class _TwoLogits(nn.Module):
    """A one-output binary net as two logits (−f/2, f/2): the same softmax, for attacks that
    need one logit per class."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model(x)
        return torch.cat([-f / 2, f / 2], dim=1)


def restart_seed(seed: int, restart: int) -> int:
    """The seed of PGD's random starts in restart ``restart`` (0, 1, ...) of an evaluation seeded
    ``seed``: ``seed`` itself for restart 0, else a number drawn from numpy's SeedSequence of
    (seed, restart), below 2**63: distinct starts for every restart, and not the starts of
    another ``--seed`` (seed + restart would give seed 1's restart 0 to seed 0's restart 1)."""
    if restart == 0:
        return seed
    return int(np.random.SeedSequence([seed, restart]).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, across_processes: bool) -> np.ndarray:
    return (predict(model, x, across_processes=across_processes) == y).cpu().numpy()


def _pgd_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    channels: int,
    seed: int,
    across_processes: bool,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    places: np.ndarray | None = None,
) -> np.ndarray:
    step, steps = evaluation_schedule(channels, eps, steps)
    x_adv = adversarial_examples(
        model, x, y, method="pgd", eps=eps, step=step, steps=steps, seed=seed, loss=loss,
        across_processes=across_processes, progress=progress, places=places,
    )  # fmt: skip
    return _correct(model, x_adv, y, across_processes)


def autoattack_attacks(classes: int) -> list[str]:
    """The parts of AutoAttack's standard version (pyautoattack's names) run against a net with
    ``classes`` logits: APGD-CE, APGD-T, FAB-T and Square where the task has 4 classes or more;
    with 3, the untargeted APGD-DLR for APGD-T (whose loss needs a fourth logit); with 2, no
    class to target beyond the one wrong class: the untargeted APGD-CE, FAB and Square."""
    if classes == 2:
        return ["apgd-ce", "fab", "square"]
    return ["apgd-ce", "apgd-dlr" if classes == 3 else "apgd-t", "fab-t", "square"]


def robust_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    channels: int,
    attacks: Sequence[str] = EVALUATION_ATTACKS,
    seed: int = 0,
    batch_size: int = 250,
    on_attack: Callable[[str, float], None] | None = None,
    across_processes: bool = False,
    autoattack_parts: Sequence[str] | None = None,
    progress: bool = False,
    restarts: int = 1,
) -> dict[str, np.ndarray]:
    """Per point, whether ``model`` (eval mode) still classifies it correctly: ``clean`` and
    under each of ``attacks`` (ℓ∞, radius ``eps``); ``on_attack(name, accuracy)`` after each.
    ``across_processes``: under torchrun every attack's batches are shared between the processes,
    and every process gets every point's verdict, the one a single process finds (the batches and
    their seeds do not depend on the number of processes). ``autoattack_parts``: AutoAttack's
    attacks to run (pyautoattack's names, e.g. ``["square"]``), by default the standard version's
    for the net's classes (``autoattack_attacks``). ``progress``: PGD's steps and AutoAttack's
    iterations and queries in bars in a terminal, else in a line a minute (``bridge._autoattack``).
    ``restarts``: PGD's and CW's random starts per point (module docstring); with more than one,
    ``on_attack(f"{name} restart {r}/{restarts}", accuracy)`` after each restart, the accuracy under
    the restarts so far, and ``on_attack(name, accuracy)`` after the last."""
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    unknown = [a for a in attacks if a not in EVALUATION_ATTACKS]
    if unknown:
        raise ValueError(f"unknown evaluation attack {unknown[0]!r}: choose from {', '.join(EVALUATION_ATTACKS)}")
    model = model.eval()
    with torch.no_grad():
        outputs = int(model(x[:1]).shape[1])
    net = _TwoLogits(model).eval() if outputs == 1 else model
    y = y.long()
    result = {"clean": _correct(net, x, y, across_processes)}
    for name in attacks:
        if name == "autoattack":
            parts = autoattack_attacks(max(outputs, 2)) if autoattack_parts is None else autoattack_parts
            result[name] = autoattack_correct(
                net, x, y, classes=max(outputs, 2), eps=eps, seed=seed, batch_size=batch_size, parts=parts,
                across_processes=across_processes, progress=progress,
            )  # fmt: skip
        else:
            method, steps = name.split("-")
            loss = cw_margin_loss if method == "cw" else None
            result[name] = np.zeros(x.shape[0], dtype=bool)
            standing: np.ndarray | None = None  # the points attacked: every one in the first restart
            for restart in range(restarts):
                if restart:
                    if on_attack is not None:  # the accuracy under the restarts so far
                        so_far = float((result[name] & result["clean"]).mean())
                        on_attack(f"{name} restart {restart}/{restarts}", so_far)
                    # a later restart can only take points the earlier ones left standing: it attacks
                    # those alone, each from its own place in the stream, so with the verdicts of an
                    # attack on every point
                    standing = np.flatnonzero(result[name] & result["clean"])
                    if not standing.size:
                        continue
                rows = slice(None) if standing is None else torch.as_tensor(standing, device=x.device)
                result[name][slice(None) if standing is None else standing] = _pgd_correct(
                    net, x[rows], y[rows], eps=eps, steps=int(steps), channels=channels,
                    seed=restart_seed(seed, restart), loss=loss, across_processes=across_processes,
                    progress=progress, places=standing,
                )  # fmt: skip
        # still correct: a point wrong clean is not robust, even where its attack lands right
        result[name] &= result["clean"]
        if on_attack is not None:
            on_attack(name, float(result[name].mean()))
    return result


def accuracies(correct: dict[str, np.ndarray]) -> dict[str, float]:
    """The share of points still correct under each entry of ``robust_correct``'s result, and
    ``worst_case``: the share correct under every one of them (clean included)."""
    accuracy = {name: float(flags.mean()) for name, flags in correct.items()}
    accuracy["worst_case"] = float(np.logical_and.reduce(list(correct.values())).mean())
    return accuracy


def masking_suspected(accuracy: dict[str, float], gap: float = MASKING_GAP) -> bool:
    """Whether AutoAttack leaves the net more than ``gap`` below the best gradient attack's
    accuracy (PGD-20 / PGD-100 / CW-100): the sign that gradients mislead the gradient attacks."""
    gradient = [accuracy[name] for name in ("pgd-20", "pgd-100", "cw-100") if name in accuracy]
    return "autoattack" in accuracy and bool(gradient) and min(gradient) - accuracy["autoattack"] > gap
