"""Standard and adversarial training of a torch net: SGD with the modes of the three papers.

Modes (``TrainConfig.mode``), each a loss on one mini-batch (x, y):
- ``standard``: CE(f(x), y).
- ``fgsm``: FGSM-AT (Goodfellow et al. 2015; RAT sec. 6): CE(f(x̃), y), x̃ one signed step of
  size ε from x, no random start (the single-step AT that shows catastrophic overfitting).
- ``fgsm-noise``: FGSM-AT from an anisotropic, per-sample noisy start (RAT sec. 6, "add some
  anisotropy noise into every sample inside each mini-batch"). Every example draws its own
  diagonal covariance (per-pixel standard deviations uniform in [0, ε]) and a Gaussian start
  from it, so no two examples share a noise distribution; then one signed step of size ε,
  projected back onto the ε-ball.
- ``pgd``: PGD-AT (Madry et al. 2018; TK supp. E, LOO, RAT): CE(f(x̃), y), x̃ from PGD with a
  random start, ``pgd_steps`` steps of ``pgd_step``.
- ``trades``: TRADES (Zhang et al. 2019; RAT app. D): CE(f(x), y) + β·KL(p(x) ‖ p(x̃)), x̃ from
  PGD on that KL, started at x + 0.001·N(0, I).
- ``te``: PGD-AT with the temporal-ensembling regulariser of Dong et al. 2022 from epoch
  ``te_start`` on, its weight ramped up to epoch ``te_end`` (``bridge.temporal_ensembling``).
``switch_epoch = k`` trains clean for epochs 1..k and in ``mode`` afterwards (RAT sec. 5).
``augment = "crop-flip"`` augments every mini-batch before its attack (``bridge.augment``; per
example, or one draw per batch with ``augment_shared``).
``eps_warmup = w`` ramps the training attack's ε (and its PGD step with it) linearly, batch by
batch, from ε/(w·batches) to ε over the first w adversarial epochs, as Madry-style MNIST codes
do: at ε = 0.3 a net attacked at full strength from the first step can settle on a constant
prediction (the loss plateau at log C) and never leave it.

Adversarial examples are made in eval mode (BatchNorm running statistics, as TRADES' and most
AT code does) and the update runs in train mode. They come from the project's own ``attacks``
algorithms, driven by the net's loss gradient.

Determinism: the epoch's shuffle, every augmentation and every attack's random draws are seeded
by (seed, epoch) and (seed, step), never by global RNG state, so a run resumed from the checkpoint of epoch e
takes exactly the steps the uninterrupted run took.

Shapes: x (B, C, H, W) in [0, 1] on the net's device; y (B,) int64 output indices.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ntkrobust._numbers import is_real, is_whole
from ntkrobust._progress import progress_bar
from ntkrobust._upload import upload
from ntkrobust.attacks import fgsm, pgd
from ntkrobust.attacks.threat import ThreatModel
from ntkrobust.bridge import distributed
from ntkrobust.bridge._modes import kept_modes
from ntkrobust.bridge.adversarial import cross_entropy_gradient, input_gradient
from ntkrobust.bridge.augment import AUGMENTATIONS, augment
from ntkrobust.bridge.global_batchnorm import convert, shared_batch
from ntkrobust.bridge.temporal_ensembling import TE_WEIGHT, TemporalEnsemble, te_loss

__all__ = [
    "MODES",
    "TrainConfig",
    "derived_seed",
    "learning_rate",
    "make_optimizer",
    "replicated",
    "train_epoch",
    "training_loss",
]

MODES = ("standard", "fgsm", "pgd", "trades", "fgsm-noise", "te")
#: the modes whose attack is PGD, of ``pgd_steps`` steps of ``pgd_step``
PGD_MODES = ("pgd", "trades", "te")
#: TRADES's robustness weight β (Zhang et al. 2019's 6)
TRADES_BETA = 6.0
#: steps between two reads of the running loss from the device, here and in the two-layer
#: full-batch descent (a non-finite loss stops the run there): no host round trip per step on a GPU
READ_EVERY = 20


#: the largest float32: a learning rate or weight beyond it overflows in torch's float32 updates
FLOAT32_MAX = 3.4028234663852886e38


def _said(name: str) -> str:
    """A field as refusals name it: "PGD steps" for ``pgd_steps``, "batch size" for ``batch_size``."""
    return _SAID.get(name, name.replace("_", " "))


def _float32(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def _milestones_ok(milestones: Sequence[int]) -> bool:
    """Each milestone once, from epoch 1, in order: a repeated one would apply gamma twice."""
    return all(m >= 1 for m in milestones) and all(a < b for a, b in itertools.pairwise(milestones))


_WHOLE_FIELDS = ("epochs", "batch_size", "pgd_steps", "eps_warmup", "seed", "switch_epoch", "te_start", "te_end")
_OPTIONAL_FIELDS = ("switch_epoch", "te_start", "te_end")
_REAL_FIELDS = ("eps", "lr", "momentum", "weight_decay", "gamma", "pgd_step", "trades_beta", "te_weight")
#: fields named in refusals otherwise than by their words ("batch_size": "batch size")
_SAID = {
    "pgd_step": "PGD step",
    "pgd_steps": "PGD steps",
    "eps_warmup": "eps warm-up",
    "trades_beta": "TRADES beta",
    "te_weight": "TE weight",
    "te_start": "TE start",
    "te_end": "TE end",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the training trajectory (with the model's config and the data).

    Defaults: SGD with momentum 0.9, lr 0.01, no weight decay, batch 128, the MNIST ℓ∞ threat
    (ε = 0.3, PGD-40 of step 0.01; TK supp. E trains with PGD-20 of step 0.1), TRADES β = 6.
    ``milestones``: epochs after which the learning rate is multiplied by ``gamma``.
    """

    mode: str = "standard"
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1
    batch_size: int = 128
    eps: float = 0.3
    pgd_step: float = 0.01
    pgd_steps: int = 40
    trades_beta: float = TRADES_BETA
    switch_epoch: int | None = None
    eps_warmup: int = 0
    augment: str = "none"
    augment_shared: bool = False
    te_start: int | None = None
    te_end: int | None = None
    te_weight: float = TE_WEIGHT  # the regulariser's weight after the ramp (Dong et al.'s 300)
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_types()
        if self.mode not in MODES:
            raise ValueError(f"unknown training mode {self.mode!r}; choose from {', '.join(MODES)}")
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps must lie in [0, 1] (pixel units), got {self.eps}")
        if self.mode != "standard" and self.eps == 0:
            raise ValueError(f"mode {self.mode} needs eps > 0")
        checks = (
            ("epochs", self.epochs, self.epochs >= 0),
            ("seed", self.seed, self.seed >= 0),  # numpy's SeedSequence refuses a negative one
            ("lr", self.lr, _float32(self.lr) and self.lr > 0),
            ("momentum", self.momentum, 0 <= self.momentum < 1),
            ("weight decay", self.weight_decay, _float32(self.weight_decay) and self.weight_decay >= 0),
            ("gamma", self.gamma, _float32(self.gamma) and self.gamma > 0),
            ("batch size", self.batch_size, self.batch_size >= 1),
            ("PGD step", self.pgd_step, _float32(self.pgd_step) and self.pgd_step > 0),
            ("PGD steps", self.pgd_steps, self.pgd_steps >= 1),
            ("TRADES beta", self.trades_beta, _float32(self.trades_beta) and self.trades_beta >= 0),
            ("switch epoch", self.switch_epoch, self.switch_epoch is None or self.switch_epoch >= 0),
            ("eps warm-up", self.eps_warmup, self.eps_warmup >= 0),
            ("TE weight", self.te_weight, _float32(self.te_weight) and self.te_weight >= 0),
            ("augmentation", self.augment, self.augment in AUGMENTATIONS),
            ("milestones", list(self.milestones), _milestones_ok(self.milestones)),
        )
        for name, value, ok in checks:
            if not ok:
                raise ValueError(f"invalid {name} for training: {value}")
        if self.mode == "te":
            start, end = self.te_start, self.te_end
            if start is None or end is None or not 1 <= start < end <= self.epochs:
                raise ValueError(
                    f"te ramps its weight from epoch te_start to te_end, 1 <= te_start < te_end <= epochs "
                    f"({self.epochs}); got {start} and {end}"
                )

    def _check_types(self) -> None:
        """Counts are whole numbers and rates real ones, before any bound is compared: a batch size
        of 2.5 or an ``eps`` of True passed every bound below and failed (or did not) far later."""
        for name in _WHOLE_FIELDS:
            value = getattr(self, name)
            if not (is_whole(value) or (value is None and name in _OPTIONAL_FIELDS)):
                raise ValueError(f"invalid {_said(name)} for training: {value!r} (not a whole number)")
        for name in _REAL_FIELDS:
            value = getattr(self, name)
            if not is_real(value):
                raise ValueError(f"invalid {_said(name)} for training: {value!r} (not a number)")
        if not all(is_whole(m) for m in self.milestones):
            raise ValueError(f"invalid milestones for training: {list(self.milestones)} (not whole numbers)")
        if not isinstance(self.augment_shared, bool):
            raise ValueError(f"invalid augment shared for training: {self.augment_shared!r} (not True or False)")

    def mode_at(self, epoch: int) -> str:
        """The mode of epoch ``epoch`` (1-based): clean up to ``switch_epoch``, then ``mode``."""
        if self.switch_epoch is not None and epoch <= self.switch_epoch:
            return "standard"
        return self.mode

    def eps_at(self, epoch: int, batch: int, batches: int) -> float:
        """The training attack's ε at batch ``batch`` (0-based) of ``batches`` in epoch ``epoch``
        (1-based): ramped over the first ``eps_warmup`` adversarial epochs, then ``eps``."""
        if not self.eps_warmup:
            return self.eps
        done = (epoch - 1 - (self.switch_epoch or 0)) * batches + batch + 1  # adversarial batches so far
        return self.eps * min(1.0, done / (self.eps_warmup * batches))

    def at_eps(self, eps: float) -> TrainConfig:
        """This config with the attack's ε set to ``eps`` and its PGD step scaled with it."""
        if eps == self.eps:
            return self
        return replace(self, eps=eps, pgd_step=self.pgd_step * eps / self.eps)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "milestones": list(self.milestones)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**{**values, "milestones": tuple(values.get("milestones", ()))})


def derived_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed from ``seed`` and integer keys (epoch, step): independent streams per key."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The step schedule: epoch ``epoch`` (1-based) trains at lr·γ^(milestones passed), a
    milestone m lowering the rate after epoch m. A pure function of the epoch, so a resumed
    run needs no scheduler state."""
    return config.lr * config.gamma ** sum(m < epoch for m in config.milestones)


def _kl_gradient(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x̃, p_clean) -> ∇ KL(p_clean ‖ p(x̃))``, summed over examples (TRADES' inner loss)."""
    return input_gradient(model, lambda logits, clean: F.kl_div(F.log_softmax(logits, dim=1), clean, reduction="sum"))


def _anisotropic_start(x: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """x + σ ⊙ z with a per-example, per-pixel σ ~ U(0, ε) and z ~ N(0, I) (drawn on the host)."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.0, eps, size=tuple(x.shape))
    noise = sigma * rng.standard_normal(size=tuple(x.shape))
    return x + upload(noise, like=x)


#: TE's regulariser on a batch: the normalised moving averages t (B, C), or None, and the weight
TERegulariser = tuple[torch.Tensor | None, float]


def training_inputs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str,
    config: TrainConfig,
    seed: int,
    te: TERegulariser = (None, 0.0),
    part: slice | None = None,
) -> torch.Tensor:
    """The inputs the loss of ``mode`` is taken on (x̃; x for standard and TRADES' clean term).

    ``part``: the rows of the batch this process attacks (distributed training). Every example
    starts where it would in one process: PGD's uniform starts are this process's rows' own draws
    of the seed's stream (``first_row``, no draws for the other rows), the noise of FGSM-noise
    and TRADES is drawn for the whole batch and cut."""
    part = part or slice(None)
    if mode == "standard":
        return x[part]
    with kept_modes(model):
        model.eval()
        gradient = cross_entropy_gradient(model)
        xs, ys = x[part], y[part]
        if mode == "fgsm":
            return fgsm(gradient, xs, ys, eps=config.eps)
        threat = ThreatModel(norm="linf", eps=config.eps)
        if mode == "fgsm-noise":
            start = threat.project(_anisotropic_start(x, config.eps, seed), x)[part]
            return threat.project(fgsm(gradient, start, ys, eps=config.eps), xs)
        if mode in ("pgd", "te"):
            if mode == "te":
                targets, weight = te
                targets = None if targets is None else targets[part]
                gradient = input_gradient(model, lambda logits, labels: te_loss(logits, labels, targets, weight))
            start = threat.random_start(xs, seed, first_row=part.start or 0)
            return pgd(gradient, xs, ys, eps=config.eps, step=config.pgd_step, steps=config.pgd_steps, start=start)
        if mode == "trades":
            with torch.no_grad():
                clean = F.softmax(model(xs), dim=1)
            generator = torch.Generator().manual_seed(seed)
            start = x + 0.001 * upload(torch.randn(x.shape, generator=generator, dtype=x.dtype), like=x)
            return pgd(
                _kl_gradient(model),
                xs,
                clean,
                eps=config.eps,
                step=config.pgd_step,
                steps=config.pgd_steps,
                start=start[part],
            )
        raise ValueError(f"unknown training mode {mode!r}")


def training_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str,
    config: TrainConfig,
    seed: int,
    te: TERegulariser = (None, 0.0),
    *,
    part: slice | None = None,
    replicas: int = 1,
    forward: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss of ``mode`` on the batch, logits on the inputs it was taken on); ``model``
    should be in train mode. ``te``: TE's targets and weight for this batch.

    Distributed training: this process takes the rows ``part`` of the batch through ``forward``
    (the DistributedDataParallel wrapper of ``model``, which averages the gradients of the
    ``replicas`` processes), so its loss is its rows' sum × replicas / batch: the average over
    the processes is the batch's mean loss, exactly as in one process. Its attack and forwards run
    inside ``global_batchnorm.shared_batch``: BatchNorm on batch statistics takes them over the
    whole batch, every process's rows (a net converted by ``global_batchnorm.convert``)."""
    with shared_batch(replicas > 1):
        inputs = training_inputs(model, x, y, mode, config, seed, te, part).detach()
        forward = forward or model
        part = part or slice(None)
        ys, scale = y[part], replicas / y.shape[0]
        if mode == "te":
            targets, weight = te
            logits = forward(inputs)
            return te_loss(logits, ys, None if targets is None else targets[part], weight) * scale, logits
        if mode != "trades":
            logits = forward(inputs)
            return F.cross_entropy(logits, ys, reduction="sum") * scale, logits
        logits_clean = forward(x[part])
        logits_adversarial = forward(inputs)
        robust = F.kl_div(F.log_softmax(logits_adversarial, dim=1), F.softmax(logits_clean, dim=1), reduction="sum")
        return (
            F.cross_entropy(logits_clean, ys, reduction="sum") + config.trades_beta * robust
        ) * scale, logits_adversarial


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of epoch ``epoch``: a permutation of range(n) fixed by (seed, epoch)."""
    return np.random.default_rng(derived_seed(seed, 1, epoch)).permutation(n)


def _te_regulariser(
    model: nn.Module, x: torch.Tensor, index: torch.Tensor, ensemble: TemporalEnsemble | None, epoch: int
) -> TERegulariser:
    """TE's targets and weight for a batch: the averages updated with its clean predictions (eval
    mode, as the authors' code) once the ramp has started; none before."""
    if ensemble is None:
        raise ValueError("mode te needs the run's TemporalEnsemble")
    if not ensemble.active(epoch):
        return None, 0.0
    with kept_modes(model), torch.no_grad():
        model.eval()
        targets = ensemble.update(index, model(x))
    return targets, ensemble.weight(epoch)


def replicated(model: nn.Module, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(the net, its DistributedDataParallel wrapper) to train under torchrun: every BatchNorm
    replaced by one whose training-step statistics are the whole batch's
    (``global_batchnorm.convert``), and the wrapper whose backward averages the processes'
    gradients (parameters broadcast from rank 0 at the start; the buffers too where torch has
    ``forward_sync_buffers``, and they are equal anyway: every process builds the net from the
    same seed or checkpoint). Pass the wrapper to ``train_epoch``.

    The buffers are not broadcast again before every forward (DDP's default): every process
    updates its running statistics from the same all-reduced moments, and the evaluations leave
    them as they are (``tracking.batch_statistics``), so they stay equal; the broadcast would
    copy rank 0's equal values every step, and a linearized net's whole θt with them."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    model = convert(model)
    device_ids = [device.index] if device.type == "cuda" else None
    # torch 2.14 names it forward_sync_buffers (and deprecates broadcast_buffers, which skipped the
    # buffers' broadcast at the start as well); the cuda extra's torch 2.10 has only the old name
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync: dict[str, Any] = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return model, DistributedDataParallel(model, device_ids=device_ids, **no_sync)


def _finite_share(model: nn.Module, rows: torch.Tensor, replicas: int) -> torch.Tensor:
    """(1,) float64: 1/replicas when the net's outputs on this process's ``rows`` are finite, else
    0, so that the sum over the processes is 1 when all of them are. The last update can
    overflow the net though the loss before it was finite (one step at lr 1e30 left weights of
    1e27 and inf logits, and the run ended on a near-chance warning); read with the epoch's last
    loss sums, so it costs one forward pass of a share of a batch and no host round trip of its
    own.

    The forward runs inside ``shared_batch`` of the processes, as the training step's: a BatchNorm
    on batch statistics in eval mode (one without running statistics, ``train --batchnorm batch``)
    takes the whole batch's, as in one process; a share's own would be one row's (torch refuses a
    single value per channel: a last batch of 3 rows on 2 processes stopped the launch) or none.
    So every process forwards its rows, an empty share too (an empty batch gives no non-finite
    output), and their collectives match."""
    with kept_modes(model), torch.no_grad(), shared_batch(replicas > 1):
        model.eval()
        finite = torch.isfinite(model(rows)).all()
    return finite.double()[None] / replicas


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    epoch: int,
    *,
    first_step: int = 0,
    after_step: Callable[[int], None] | None = None,
    progress: bool = False,
    ensemble: TemporalEnsemble | None = None,
    replica: nn.Module | None = None,
) -> dict[str, Any]:
    """One epoch (1-based ``epoch``) of mini-batch SGD in the epoch's mode over (x, y).

    Under torchrun, ``replica`` is the DistributedDataParallel wrapper of ``model``: every process
    draws the same shuffle, augmentation and random starts for the whole mini-batch and takes its
    contiguous share of the rows (``bridge.distributed.rows``), and the gradients are averaged, so
    the updates are those of one process with the same global batch.

    ``first_step`` is the global step count before this epoch; ``after_step(step)`` is called
    after every update with the new global step (for tracking every k steps); ``ensemble``
    holds TE's per-example averages (mode ``te``), indexed like ``x``. Returns the mean
    training loss, the accuracy on the training inputs (x̃ for AT: the running robust training
    accuracy), the step count, the attack's ε at the last batch and the seconds.
    """
    mode = config.mode_at(epoch)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, epoch)
    order = torch.as_tensor(epoch_order(x.shape[0], config.seed, epoch), device=x.device)
    batches = math.ceil(x.shape[0] / config.batch_size)
    model.train()
    replicas = distributed.world_size()
    # the loss sum and the correct count stay on the device, read every READ_EVERY steps: no
    # host round trip per step on a GPU
    sums = torch.zeros(2, dtype=torch.float64, device=x.device)
    total_loss, correct, seen, step = 0.0, 0.0, 0, first_step
    eps = config.eps
    start = time.perf_counter()
    with progress_bar(batches, f"epoch {epoch} ({mode})", "batch", show=progress) as bar:
        for b in range(batches):
            index = order[b * config.batch_size : (b + 1) * config.batch_size]
            xb, yb = x[index], y[index]
            if config.augment != "none":
                xb = augment(xb, seed=derived_seed(config.seed, 6, step), shared=config.augment_shared)
            eps = config.eps_at(epoch, b, batches) if mode != "standard" else config.eps
            seed = derived_seed(config.seed, 2, step)
            te = _te_regulariser(model, xb, index, ensemble, epoch) if mode == "te" else (None, 0.0)
            part = distributed.rows(yb.shape[0])
            loss, logits = training_loss(
                model, xb, yb, mode, config.at_eps(eps), seed, te, part=part, replicas=replicas, forward=replica
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            # this process's share of the batch's loss sum, and its correct predictions
            sums += torch.stack([loss.detach().double() * yb.shape[0] / replicas, (logits.argmax(1) == yb[part]).sum()])
            seen += yb.shape[0]
            if step % READ_EVERY == 0 or b == batches - 1:
                # the sums over every process's rows (the same reads on each: one decides as all do
                # whether the loss diverged), reduced where they live: NCCL reduces GPU tensors only
                read = sums.clone() if b < batches - 1 else torch.cat([sums, _finite_share(model, xb[part], replicas)])
                total_loss, correct, *finite = (distributed.all_reduce_sum(read) if replicas > 1 else read).tolist()
                if not math.isfinite(total_loss):
                    raise FloatingPointError(f"the training loss became {total_loss} by step {step} (epoch {epoch})")
                if finite and finite[0] < 1 - 0.5 / replicas:  # some process's share was not finite
                    raise FloatingPointError(
                        f"the net's outputs became NaN or inf after the last update of epoch {epoch}"
                    )
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
            bar.update(1)
            if after_step is not None:
                after_step(step)
                model.train()
    return {
        "mode": mode,
        "train_loss": total_loss / max(seen, 1),
        "train_accuracy_running": correct / max(seen, 1),
        "steps": step - first_step,
        "eps": None if mode == "standard" else eps,  # of the last batch (below the config's while ε warms up)
        "seconds": time.perf_counter() - start,
    }
