"""Transfer evaluation: how far adversarial examples made elsewhere drive a trained net down.

Tsilivis & Kempe sec. 3.2 and supp. C: examples crafted on the NTK machine of an architecture,
before any training, against the finite nets that the kernel describes; Loo et al. sec. 5: the
transferability τ = (Acc_b − Acc_other) / (Acc_b − Acc_own) of examples made by one net (or
dynamics) to another. For every target net the same four numbers frame a transfer attack:
clean accuracy, the net's own white-box attack (the ceiling a transfer attack can reach), a
random-sign perturbation of the same ε (the floor), and the accuracy under each source's
examples. Accuracies under attack are the share *still* correct (RobustBench), so they never
exceed the clean accuracy and τ ≤ 1 up to the own attack's strength.

This module is torch-only: sources arrive as numpy arrays (NCHW float32 in [0, 1]), made by the
kernel machines of ``kernels`` or by other nets, and the CLI composes the two halves.

Shapes, written once: x (N, C, H, W) in [0, 1]; y (N,) output indices (class positions in the
task); every source's examples have the shape of x.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ntkrobust.attacks import AttackSpec, random_sign, robust_accuracy, transferability
from ntkrobust.bridge.adversarial import attack_examples, predict


def random_sign_examples(x: np.ndarray, attack: AttackSpec) -> np.ndarray:
    """The random-sign baseline of ``attack``'s ε and norm (seeded by its seed)."""
    return random_sign(x, eps=attack.eps, norm=attack.norm, seed=attack.seed)


@dataclass
class TargetEvaluation:
    """One target net against every attack; ``sources`` maps a source name to the accuracy
    under its examples, ``white_box_examples`` are the net's own (numpy, for other targets)."""

    clean_accuracy: float
    white_box_accuracy: float
    random_accuracy: float
    sources: dict[str, float]
    white_box_examples: np.ndarray

    def transferability(self) -> dict[str, float]:
        """τ of every source (Loo et al. sec. 5); NaN where the own attack causes no drop."""
        return {
            name: transferability(self.clean_accuracy, acc, self.white_box_accuracy)
            for name, acc in self.sources.items()
        }


def evaluate_target(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    attack: AttackSpec,
    sources: Mapping[str, np.ndarray],
    *,
    random_examples: np.ndarray | None = None,
    own_examples: np.ndarray | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 256,
) -> TargetEvaluation:
    """Clean, own white-box, random-sign and every source's accuracy of ``model`` (eval mode).

    ``own_examples``: the net's white-box examples if already made (``white_box_examples``).
    ``device``: where the inputs go (default: where the model's tensors are)."""
    model = model.eval()
    device = device or _model_device(model)
    dtype = _input_dtype(model)
    own = white_box_examples(model, x, y, attack, device=device) if own_examples is None else own_examples
    noisy = random_sign_examples(x, attack) if random_examples is None else random_examples

    def predicted(a: np.ndarray) -> np.ndarray:
        if a.shape != x.shape:
            raise ValueError(f"examples of shape {a.shape} do not match the inputs' {x.shape}")
        return predict(model, torch.as_tensor(a).to(device, dtype), batch_size=batch_size).cpu().numpy()

    clean = predicted(x)
    return TargetEvaluation(
        clean_accuracy=robust_accuracy(clean, y),
        white_box_accuracy=robust_accuracy(predicted(own), y, clean),
        random_accuracy=robust_accuracy(predicted(noisy), y, clean),
        sources={name: robust_accuracy(predicted(a), y, clean) for name, a in sources.items()},
        white_box_examples=own,
    )


def _model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters and buffers are (the CPU if it has none)."""
    return next((t.device for t in itertools.chain(model.parameters(), model.buffers())), torch.device("cpu"))


def _input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype inputs take to ``model``: that of its floating-point state (float32 if none)."""
    return next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), torch.float32)


def white_box_examples(
    model: nn.Module, x: np.ndarray, y: np.ndarray, attack: AttackSpec, *, device: torch.device | str | None = None
) -> np.ndarray:
    """``attack`` against ``model`` (eval mode) on (x, y), as numpy examples like ``x``; the
    inputs on ``device`` (default: where the model's tensors are)."""
    device = device or _model_device(model)
    inputs = torch.as_tensor(x).to(device, _input_dtype(model))
    own = attack_examples(model.eval(), inputs, torch.as_tensor(y).to(device), attack)
    return own.detach().cpu().numpy().astype(x.dtype)


def gradient_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-example cosine similarity of two gradient batches (N, ...) (TK supp. eq. 30); NaN
    where either gradient is zero."""
    a = np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1)
    b = np.asarray(b, dtype=np.float64).reshape(b.shape[0], -1)
    if a.shape != b.shape:
        raise ValueError(f"gradients of shapes {a.shape} and {b.shape} cannot be compared")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.nan)


def cosine_summary(cosines: np.ndarray) -> dict[str, float | None]:
    """Mean, median and quartiles of per-example cosines (NaN ones left out; None if none)."""
    finite = cosines[np.isfinite(cosines)]
    if finite.size == 0:
        return {"mean": None, "median": None, "q25": None, "q75": None}
    q25, median, q75 = np.quantile(finite, [0.25, 0.5, 0.75])
    return {"mean": float(finite.mean()), "median": float(median), "q25": float(q25), "q75": float(q75)}
