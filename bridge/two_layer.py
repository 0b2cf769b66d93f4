"""The two-layer transfer experiment of Tsilivis & Kempe sec. 3.2 and supp. C, torch half.

The net of supp. eq. 28 (``bridge.models.TwoLayerNet``, registry name ``two-layer``) is trained
"in a regression fashion": full-batch gradient descent with a fixed learning rate (10⁻²) on the
ℓ2 loss to the kernel machine's targets (one-hot for k ≥ 3 classes, a ±1 column for a binary
task: ``kernels.machine``'s convention, so net and machine have the same outputs). The loss is
the mean over examples, L = (1/2n) Σᵢ ‖f(xᵢ) − yᵢ‖², the normalisation under which each epoch
advances the kernel time of eq. 7 by η/n (``kernels.alignment``); a sum would make the step n
times larger and diverge on MNIST-sized data.

"When we measure quantities from the neural net, we subtract the initial prediction f₀":
``OutputChange`` is the net seen as f − f₀, the model that is attacked, evaluated and compared
with the kernel machine (whose f_t starts at 0).

Shapes, written once: x (N, C, H, W) in [0, 1]; targets (N, k) float; outputs (N, k).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkrobust._progress import progress_iter
from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge.adversarial import cross_entropy_gradient
from ntkrobust.bridge.models import ModelConfig, build_model, model_config
from ntkrobust.bridge.training import READ_EVERY
from ntkrobust.bridge.transfer import cosine_summary, evaluate_target, gradient_cosine, random_sign_examples

#: The four numbers every transfer target reports (results.json).
ACCURACY_KEYS = ("clean_accuracy", "white_box_accuracy", "ntk_attack_accuracy", "random_accuracy")


class OutputChange(nn.Module):
    """f(x) − f₀(x): a net's output minus that of its initial weights (TK supp. C).

    ``initial`` is copied and frozen; gradients (training, attacks) flow through both terms,
    the frozen one contributing only its input gradient.
    """

    def __init__(self, network: nn.Module, initial: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.initial = copy.deepcopy(initial).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> OutputChange:
        super().train(mode)
        self.initial.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) - self.initial(x)


def regression_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(1/2n) Σᵢ ‖f(xᵢ) − yᵢ‖² over the n rows (the time normalisation of the module docstring)."""
    return 0.5 * torch.sum((outputs - targets) ** 2) / outputs.shape[0]


def log_epochs(epochs: int, every: int | None = None) -> list[int]:
    """The epochs at which a run is measured: every ``every`` epochs, or (None) the 1-2-5
    sequence 1, 2, 5, 10, 20, ... (TK fig. 4 has a log epoch axis); the last epoch always."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if every is not None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        chosen = set(range(every, epochs + 1, every))
    else:
        chosen = {m * 10**p for p in range(int(math.log10(epochs)) + 1) for m in (1, 2, 5)}
    return sorted(e for e in chosen | {epochs} if e <= epochs)


def train_full_batch(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    learning_rate: float,
    epochs: int,
    on_epoch: Callable[[int], None] | None = None,
    measure_at: Iterable[int] = (),
    chunk: int = 4096,
    progress: bool = False,
    description: str = "gradient descent",
) -> list[float]:
    """Full-batch gradient descent on ``regression_loss``; returns the loss before each step.

    One step per epoch on the gradient of the whole set, accumulated over chunks of ``chunk``
    points (the same gradient, bounded memory). ``on_epoch(e)`` runs after epoch e for every
    e in ``measure_at`` (epoch 0: before training). The losses stay on the device and are read
    every ``READ_EVERY`` epochs, at every measured one and at the end (no host round trip per
    step); a non-finite one raises ``FloatingPointError`` naming its epoch, there.
    """
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate}")
    if targets.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {targets.shape[0]} targets")
    measure = set(measure_at)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model.train()
    n = x.shape[0]
    losses = []
    if on_epoch is not None and 0 in measure:
        on_epoch(0)
    unread: list[torch.Tensor] = []  # the losses of the epochs since the last read, on the device

    def read(epoch: int) -> None:
        """Move the unread losses to ``losses``: one host round trip per READ_EVERY epochs."""
        values = torch.stack(unread).tolist()
        unread.clear()
        for at, value in enumerate(values, start=epoch - len(values) + 1):
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss diverged at epoch {at} (learning rate {learning_rate} too large)")
        losses.extend(values)

    for epoch in progress_iter(range(1, epochs + 1), description, "epoch", show=progress):
        optimizer.zero_grad(set_to_none=True)
        parts = []
        for start in range(0, n, chunk):
            # each chunk's share of the mean loss, so the accumulated gradient is the full one
            part = regression_loss(model(x[start : start + chunk]), targets[start : start + chunk])
            part = part * (min(chunk, n - start) / n)
            part.backward()
            parts.append(part.detach().double())
        unread.append(torch.stack(parts).sum())
        optimizer.step()
        if epoch in measure or epoch % READ_EVERY == 0 or epoch == epochs:  # nothing is measured on a diverged net
            read(epoch)
        if on_epoch is not None and epoch in measure:
            on_epoch(epoch)
    return losses


@dataclass(frozen=True)
class KernelAtTime:
    """What the kernel machine f_t says at one time t, as numpy arrays (from ``kernels``)."""

    time: float
    loss_gradient: np.ndarray  # ∇ₓ CE(f_t(x), y) of the test points, (N, C, H, W)
    examples: np.ndarray  # the machine's adversarial examples of the test points (NTK attack)
    clean_accuracy: float  # of the machine itself
    robust_accuracy: float  # of the machine under its own examples (share still correct)


@dataclass(frozen=True)
class TwoLayerConfig:
    """A two-layer experiment: nets of every width × seed, trained as in supp. C."""

    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    epochs: int
    measure_at: tuple[int, ...]  # epochs ≥ 1 at which nets and kernel are compared
    anchor_epoch: int  # the epoch whose matched kernel time fixes the epoch ↔ t slope
    learning_rate: float = 1e-2
    picture_index: int = 0  # the test point whose loss gradients are kept for pictures

    def __post_init__(self) -> None:
        if not self.widths or min(self.widths) < 1 or not self.seeds:
            raise ValueError("need at least one width (>= 1) and one seed")
        if not self.measure_at or min(self.measure_at) < 1 or max(self.measure_at) > self.epochs:
            raise ValueError(f"measured epochs must lie in [1, {self.epochs}]")
        if not 1 <= self.anchor_epoch <= self.epochs:
            raise ValueError(f"the anchor epoch must lie in [1, {self.epochs}], got {self.anchor_epoch}")


@dataclass
class TwoLayerResult:
    """Per net, per measured epoch: the comparison with the kernel; and the nets themselves."""

    time_per_epoch: float  # the fitted slope of epoch ↔ t
    anchor_time: float
    kernel: list[dict[str, Any]]  # per measured epoch: time, the machine's own accuracies
    nets: list[dict[str, Any]]  # per net: width, seed, final numbers, "epochs": [...]
    networks: list[tuple[ModelConfig, OutputChange]]  # the trained nets as f − f₀
    kernel_pictures: np.ndarray  # (epochs measured, C, H, W): the machine's gradient of the picture point
    net_pictures: list[np.ndarray]  # per net, the same for the net


def _log_net(net: dict[str, Any], epochs: int) -> None:
    """One line per trained net, for logs (the command line shows it on stderr unless --quiet)."""
    cosine = net["gradient_cosine"]  # None where no example's gradients are both non-zero
    logging.getLogger("ntkrobust").info(
        f"two-layer width {net['width']} seed {net['seed']}: {epochs} epochs, gradient cosine "
        f"{'undefined' if cosine is None else f'{cosine:.3f}'}, clean {net['clean_accuracy']:.3f}, own attack "
        f"{net['white_box_accuracy']:.3f}, NTK attack {net['ntk_attack_accuracy']:.3f}"
    )


def two_layer_experiment(
    x_train: np.ndarray,
    targets: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    config: TwoLayerConfig,
    attack: AttackSpec,
    *,
    match_time: Callable[[np.ndarray], float],
    kernel_at: Callable[[float], KernelAtTime],
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> TwoLayerResult:
    """Train every net and compare it with the kernel machine at the aligned times.

    ``match_time(outputs)`` returns the kernel time whose training outputs best match the net's
    (``kernels.alignment.matching_time``); the first net (first width and seed), trained to the
    anchor epoch, fixes the slope t/epoch for all nets, as TK supp. C aligns by hand at one
    epoch. ``kernel_at(t)`` gives the machine's gradients and adversarial examples at t; it is
    called once per measured epoch and shared by all nets. Every net also records the kernel
    time matched to itself at each measured epoch (``matched_time``), to check the linearity.
    """
    k = targets.shape[1]
    image_shape = tuple(int(v) for v in x_train.shape[1:])
    x = torch.as_tensor(x_train, dtype=torch.float32, device=device)
    y_regression = torch.as_tensor(targets, dtype=torch.float32, device=device)
    x_eval = torch.as_tensor(x_test, dtype=torch.float32, device=device)
    y_eval = torch.as_tensor(y_test, device=device)

    def fresh(width: int, seed: int) -> tuple[ModelConfig, OutputChange]:
        net_config = model_config("two-layer", image_shape, k, width=width, seed=seed)
        return net_config, OutputChange(build_model(net_config), build_model(net_config)).to(device)

    def train_outputs(view: OutputChange) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([view(x[i : i + 4096]) for i in range(0, x.shape[0], 4096)]).double().cpu().numpy()

    _, first = fresh(config.widths[0], config.seeds[0])
    train_full_batch(first, x, y_regression, learning_rate=config.learning_rate, epochs=config.anchor_epoch)
    anchor_time = match_time(train_outputs(first))
    per_epoch = anchor_time / config.anchor_epoch
    kernel = {
        e: kernel_at(e * per_epoch) for e in progress_iter(config.measure_at, "kernel", "measurement", show=progress)
    }
    noisy = random_sign_examples(x_test, attack)
    pick = config.picture_index

    nets, networks, net_pictures = [], [], []
    for width in config.widths:
        for seed in config.seeds:
            net_config, view = fresh(width, seed)
            rows: list[dict[str, Any]] = []
            pictures: list[np.ndarray] = []

            def measure(epoch: int, view: OutputChange = view, rows: list = rows, pictures: list = pictures) -> None:
                view.eval()
                at = kernel[epoch]
                outputs = train_outputs(view)
                evaluation = evaluate_target(
                    view, x_test, y_test, attack, {"ntk": at.examples}, random_examples=noisy, device=device
                )
                gradient = cross_entropy_gradient(view)(x_eval, y_eval).cpu().numpy()
                cosines = gradient_cosine(at.loss_gradient, gradient)
                summary = cosine_summary(cosines)
                rows.append(
                    {
                        "epoch": epoch,
                        "time": at.time,
                        "matched_time": match_time(outputs),
                        "train_loss": float(regression_loss(torch.from_numpy(outputs), torch.from_numpy(targets))),
                        "gradient_cosine": summary["mean"],
                        **{f"gradient_cosine_{key}": value for key, value in summary.items() if key != "mean"},
                        "clean_accuracy": evaluation.clean_accuracy,
                        "white_box_accuracy": evaluation.white_box_accuracy,
                        "ntk_attack_accuracy": evaluation.sources["ntk"],
                        "random_accuracy": evaluation.random_accuracy,
                    }
                )
                pictures.append(gradient[pick])
                view.train()

            label = f"width {width}, seed {seed}"
            train_full_batch(
                view,
                x,
                y_regression,
                learning_rate=config.learning_rate,
                epochs=config.epochs,
                on_epoch=measure,
                measure_at=config.measure_at,
                progress=progress,
                description=label,
            )
            final = rows[-1]
            nets.append(
                {
                    "width": width,
                    "seed": seed,
                    **{key: final[key] for key in ACCURACY_KEYS},
                    "gradient_cosine": final["gradient_cosine"],
                    "epochs": rows,
                }
            )
            networks.append((net_config, view.eval()))
            net_pictures.append(np.stack(pictures))
            _log_net(nets[-1], config.epochs)

    return TwoLayerResult(
        time_per_epoch=per_epoch,
        anchor_time=anchor_time,
        kernel=[
            {
                "epoch": e,
                "time": kernel[e].time,
                "clean_accuracy": kernel[e].clean_accuracy,
                "robust_accuracy": kernel[e].robust_accuracy,
            }
            for e in config.measure_at
        ],
        nets=nets,
        networks=networks,
        kernel_pictures=np.stack([kernel[e].loss_gradient[pick] for e in config.measure_at]),
        net_pictures=net_pictures,
    )
