"""The empirical-NTK surrogate: a kernel machine on the empirical NTK at initialisation, as a torch
module that FGSM / PGD differentiate through, a black-box source of transferable examples.

Tsilivis & Kempe, supp. B: "one can compute an *empirical* kernel by sampling over kernels at
initialization over a few instances and obtain the matrices A_i with autodifferentiation tools".
The machine is their eq. (11) at t = ∞, f(x) = Θ(x, X) Θ(X, X)⁻¹ Y (with an optional ridge), with
Θ the full empirical NTK (C x C blocks) of a network at its initialisation θ0, or the mean over S
independent initialisations, and Y the one-hot training targets.

Shapes, written once: X the training inputs (N, ...), x a batch (B, ...); Y and α (N, C); the full
kernel Θ(x, X) (B, N, C, C) (neural-tangents' layout); J(x) = ∇θ f(x)|θ0 (B·C, P); outputs (B, C).

Why no kernel is recomputed at attack time. With Θ̂(x, x') = J(x) J(x')ᵀ and dual coefficients α
solving (Θ̂(X, X) + ρI) vec(α) = vec(Y) (the (N·C) x (N·C) system, vec row-major over (N, C)),

    f(x) = Σ_j Θ̂(x, x_j) α_j = J(x) v,    v = J(X)ᵀ vec(α) = ∇θ Σ_j α_jᵀ f(x_j)|θ0,

so v costs one vector-Jacobian product over the training set (in batches), and f is exactly a
centered ``LinearizedNetwork`` of the initial network with θ − θ0 = v: one forward-mode ``jvp``
per batch, through which autograd gives ∇ₓ. This is the gradient TK's A_iᵀ Θ⁻¹ Y needs (supp.
eqs. 13, 15, 18): the perturbed input moves only the first argument of Θ(x̃, X), while Θ(X, X)⁻¹Y
is fixed. For S initialisations and the mean kernel Θ̄ = (1/S) Σ_s Θ̂_s, one α solves the Θ̄ system
and f(x) = (1/S) Σ_s J_s(x) J_s(X)ᵀ vec(α), the mean of S centered linearized networks.

Numerics. Θ(X, X) and α are computed in float64 (``dtype``); the module that attacks run through is
built in ``module_dtype`` (float32 by default: attacks need directions, not digits), holding
θ0 and θ0 + v, so its shift θ − θ0 carries the rounding of θ0 + v in that dtype (measured: float32
outputs within 1.5e-6 of float64's, relative to the largest, for ``mnist-cnn`` width 32, N = 500).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkrobust.bridge.entk import empirical_ntk
from ntkrobust.bridge.jacobians import as_inputs, transposed_products
from ntkrobust.bridge.linearized import LinearizedNetwork
from ntkrobust.bridge.models import ModelConfig, build_model

__all__ = [
    "EmpiricalKernelMachine",
    "KernelFit",
    "dual_coefficients",
    "empirical_gram",
    "fit_empirical_kernel_machine",
    "initial_networks",
]

VJP_BATCH = 256


def initial_networks(config: ModelConfig, count: int) -> list[nn.Module]:
    """``count`` networks of the registry model ``config``, seeded config.seed, config.seed + 1, ..."""
    if count < 1:
        raise ValueError(f"need at least one network, got count={count}")
    return [build_model(dataclasses.replace(config, seed=config.seed + s)) for s in range(count)]


def empirical_gram(
    networks: Sequence[nn.Module],
    x: np.ndarray | torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    memory_budget: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Θ̄(X, X) = (1/S) Σ_s Θ̂_s(X, X), the mean full empirical NTK (N, N, C, C) of the S networks
    (each in eval mode, BatchNorm on its running statistics; ``bridge.entk.empirical_ntk``)."""
    if not networks:
        raise ValueError("need at least one network for an empirical kernel")
    gram: np.ndarray | None = None
    for network in networks:
        kernel = empirical_ntk(network, x, kind="full", dtype=dtype, memory_budget=memory_budget, progress=progress)
        if gram is not None and kernel.shape != gram.shape:
            raise ValueError(f"the networks disagree on the kernel's shape: {kernel.shape} and {gram.shape}")
        gram = kernel if gram is None else gram + kernel
    assert gram is not None
    gram /= len(networks)
    return gram


def _system(gram: np.ndarray) -> np.ndarray:
    """(N, N, C, C) → the (N·C, N·C) matrix whose entry ((i, a), (j, b)) is Θ_ab(x_i, x_j)."""
    n, _, c, _ = gram.shape
    return gram.transpose(0, 2, 1, 3).reshape(n * c, n * c)


def dual_coefficients(gram: np.ndarray, targets: np.ndarray, *, ridge: float = 0.0) -> np.ndarray:
    """α (N, C) solving (Θ + ρ·tr(Θ)/(N·C)·I) vec(α) = vec(Y): Θ the full Gram (N, N, C, C), Y
    ``targets`` (N, C), ``ridge`` ρ relative to the mean eigenvalue (neural-tangents' ``diag_reg``).

    A plain solve, unless the matrix is singular to working precision: the solve fails, or its
    solution proves the condition number above 1/(N·C·eps) (maxᵢ Aᵢᵢ·‖α‖/‖Y‖ ≤ λmax/λmin).
    Then the pseudo-inverse: eigh, dropping eigenvalues ≤ N·C·eps·λmax (least squares, least norm).
    """
    gram = np.asarray(gram, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if gram.ndim != 4 or gram.shape[0] != gram.shape[1] or gram.shape[2] != gram.shape[3]:
        raise ValueError(f"the Gram matrix must be a full kernel (N, N, C, C), got shape {gram.shape}")
    if targets.shape != (gram.shape[0], gram.shape[2]):
        raise ValueError(
            f"targets must be (N, C) = {(gram.shape[0], gram.shape[2])} for this Gram, got {targets.shape}"
        )
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    n, _, c, _ = gram.shape
    matrix = _system(gram)
    if ridge:
        matrix = matrix + ridge * np.trace(matrix) / (n * c) * np.eye(n * c)
    y = targets.reshape(n * c)
    limit = n * c * np.finfo(np.float64).eps
    try:
        alpha = np.linalg.solve(matrix, y)
        if np.all(np.isfinite(alpha)) and matrix.diagonal().max() * np.linalg.norm(alpha) * limit < np.linalg.norm(y):
            return alpha.reshape(n, c)
    except np.linalg.LinAlgError:
        pass
    values, vectors = np.linalg.eigh(matrix)
    keep = values > limit * values[-1]
    alpha = vectors[:, keep] @ ((vectors[:, keep].T @ y) / values[keep])
    return alpha.reshape(n, c)


@dataclass(frozen=True)
class KernelFit:
    """What a results.json records about a fitted machine (``to_dict``: JSON-ready)."""

    n_train: int
    n_networks: int
    num_classes: int
    ridge: float  # relative, as passed
    ridge_absolute: float  # added to the diagonal: ridge · tr(Θ)/(N·C)
    eigenvalue_min: float | None  # of Θ̄(X, X) as an (N·C) x (N·C) matrix, without the ridge
    eigenvalue_max: float | None  # (these four None when fitted with spectrum=False)
    condition_number: float | None  # of the solved matrix, (λmax + ρ)/(λmin + ρ); inf if singular
    numerical_rank: int | None  # eigenvalues + ρ above N·C·eps·(λmax + ρ)
    train_accuracy: float  # of the machine on its own training set
    train_max_residual: float  # max |f(x_j) − y_j| over the training set
    dtype: str  # of the Gram, the solve and v
    module_dtype: str  # of the module attacks run through

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class EmpiricalKernelMachine(nn.Module):
    """f(x) = (1/S) Σ_s f_s(x), the mean of S centered ``LinearizedNetwork``s; each f_s(x) = J_s(x) v_s.

    Always in eval mode (``train()`` is a no-op; the linearized nets freeze BatchNorm anyway), its
    θ frozen (no gradients but the input's). ``forward`` casts x to the module's dtype
    (differentiably) and returns (B, C) in that dtype. ``fit_info`` and ``alpha`` (float64 numpy, (N, C))
    are set by ``fit_empirical_kernel_machine``.
    """

    def __init__(self, networks: Sequence[LinearizedNetwork]) -> None:
        super().__init__()
        if not networks:
            raise ValueError("an empirical kernel machine needs at least one linearized network")
        if not all(isinstance(net, LinearizedNetwork) and net.centered for net in networks):
            raise ValueError("an empirical kernel machine is made of centered LinearizedNetworks")
        self.networks = nn.ModuleList(networks)
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.fit_info: KernelFit | None = None
        self.alpha: np.ndarray | None = None
        super().train(False)

    def train(self, mode: bool = True) -> EmpiricalKernelMachine:
        """Stays in eval mode whatever is asked: the machine has no training behaviour."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(next(self.parameters()).dtype)
        outputs = [network(x) for network in self.networks]
        return outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(0)


def _linearized(network: nn.Module, tangent: list[torch.Tensor], dtype: torch.dtype) -> LinearizedNetwork:
    """The centered linearization of ``network`` (at its parameters θ0) with θ = θ0 + v, in ``dtype``."""
    anchors = [p.detach() for p in network.parameters() if p.requires_grad]
    linearized = LinearizedNetwork(copy.deepcopy(network).to(dtype), centered=True)
    with torch.no_grad():  # θ: the parent's trainable parameters, in its order (bridge.linearized)
        for theta, anchor, shift in zip(linearized.parameters(), anchors, tangent, strict=True):
            theta.copy_((anchor + shift).to(dtype))
    return linearized


def fit_empirical_kernel_machine(
    networks: Sequence[nn.Module],
    x_train: np.ndarray | torch.Tensor,
    y_index: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    ridge: float = 0.0,
    dtype: torch.dtype = torch.float64,
    module_dtype: torch.dtype = torch.float32,
    memory_budget: int | None = None,
    progress: bool = False,
    spectrum: bool = True,
) -> EmpiricalKernelMachine:
    """The kernel machine of the mean empirical NTK of ``networks`` (at their current parameters,
    their initialisation for ``initial_networks``), fitted at t = ∞ to one-hot targets.

    Args:
        networks: S ≥ 1 networks mapping x_train's images to ``num_classes`` outputs; not modified.
        x_train: (N, ...) inputs, NCHW in [0, 1]; y_index: (N,) int class ids in [0, num_classes).
        ridge: relative ridge ρ (``dual_coefficients``); 0 is ridgeless.
        dtype: of the Gram, the solve and v (float64: Θ(X, X) is often ill-conditioned).
        module_dtype: of the returned module, which attacks run through.
        memory_budget, progress: for ``bridge.entk.empirical_ntk``.
        spectrum: record the extreme eigenvalues, condition number and numerical rank of Θ̄(X, X)
            (``eigvalsh`` of the (N·C) x (N·C) matrix: about half the Gram's time for
            ``mnist-cnn`` width 32 at N·C = 5000 on one CPU thread; False skips it).

    The module lives on the first network's device; ``.fit_info`` holds the ``KernelFit`` record and
    ``.alpha`` the dual coefficients (N, C).
    """
    if not networks:
        raise ValueError("need at least one network for an empirical kernel")
    labels = np.asarray(y_index.cpu() if isinstance(y_index, torch.Tensor) else y_index).astype(np.int64)
    n = len(x_train)
    if labels.shape != (n,):
        raise ValueError(f"y_index must hold one class id per training input ({n}), got shape {labels.shape}")
    if n == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"y_index must hold class ids in [0, {num_classes}) for a non-empty training set")
    gram = empirical_gram(networks, x_train, dtype=dtype, memory_budget=memory_budget, progress=progress)
    if gram.shape[2] != num_classes:
        raise ValueError(f"the networks have {gram.shape[2]} outputs but num_classes is {num_classes}")
    targets = np.eye(num_classes)[labels]
    alpha = dual_coefficients(gram, targets, ridge=ridge)

    device = next(iter(networks[0].parameters())).device
    inputs = as_inputs(x_train, device, dtype)
    alpha_t = torch.as_tensor(alpha, device=device, dtype=dtype)
    linearized = []
    for network in networks:
        net = copy.deepcopy(network).to(device=device, dtype=dtype).eval()
        params = [p for p in net.parameters() if p.requires_grad]
        (tangent,) = transposed_products(net, inputs, alpha_t[None], params, batch_size=VJP_BATCH)  # v = J(X)ᵀα
        linearized.append(_linearized(net, tangent, module_dtype))
    machine = EmpiricalKernelMachine(linearized)

    matrix = _system(gram)
    shift = ridge * np.trace(matrix) / matrix.shape[0]
    low: float | None = None
    high: float | None = None
    condition: float | None = None
    rank: int | None = None
    if spectrum:
        eigenvalues = np.linalg.eigvalsh(matrix)
        low, high = float(eigenvalues[0]), float(eigenvalues[-1])
        condition = float((high + shift) / (low + shift)) if low + shift > 0 else float("inf")
        rank = int(np.sum(eigenvalues + shift > matrix.shape[0] * np.finfo(np.float64).eps * (high + shift)))
    outputs = np.einsum("ijab,jb->ia", gram, alpha)
    machine.fit_info = KernelFit(
        n_train=n,
        n_networks=len(networks),
        num_classes=num_classes,
        ridge=float(ridge),
        ridge_absolute=float(shift),
        eigenvalue_min=low,
        eigenvalue_max=high,
        condition_number=condition,
        numerical_rank=rank,
        train_accuracy=float(np.mean(outputs.argmax(1) == labels)),
        train_max_residual=float(np.abs(outputs - targets).max()),
        dtype=str(dtype).removeprefix("torch."),
        module_dtype=str(module_dtype).removeprefix("torch."),
    )
    machine.alpha = alpha
    return machine
