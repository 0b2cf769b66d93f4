"""Torch models of the finite-net half, in one registry shared with the CLI.

Three families:

- **Twins of the analytic kernels** (``fc1``..``fc5``, ``conv1``, ``conv2``; ``kernels/
  architectures.py``): the same layers in the NTK parameterisation with the same W_std = √2,
  b_std = 0.1. A layer computes ``W_std/√fan_in · W h + b_std · b`` with W, b ~ N(0, 1), so as
  the width grows the empirical NTK of each output approaches the analytic kernel Θ(x, x′)
  (Jacot et al. 2018) and the full kernel approaches Θ ⊗ I_C.
- **The two-layer net of Tsilivis & Kempe, supp. eq. 28**: f(x) = m^{-1/2} Aᵀ relu(W x),
  W ~ N(0, 0.01²) trained, A ∈ {±1}^{m×k} frozen (a buffer, so the NTK is over W only: eq. 29).
- **The paper nets**: the MNIST CNN of TK supp. E (conv 32, conv 64, each 3x3 + ReLU + 2x2 average
  pooling, fc 256, linear), the CIFAR CNN of TK supp. E (3x3 convs of 32, 32, 64, 64, 128, 128
  channels, 2x2 max pooling after the second, 2x2 average pooling after the last, linear), and
  ResNet-18 with a 3x3 stride-1 stem and no max-pool (the usual CIFAR ResNet-18; LOO and RAT name
  only "ResNet-18"), built from torchvision's
  ``BasicBlock`` with torchvision's module names, so at width 64 its state dict has the keys and
  shapes of ``torchvision.models.resnet18`` apart from the stem.

``width`` is the hidden width of the twins and of the two-layer net, and the base channel count of
the paper nets (32 for the CNNs: channels w, 2w, ... as above; 64 for ResNet-18). Normalisation,
when wanted, lives inside the model (``mean`` / ``std`` per input channel), so inputs stay NCHW in
[0, 1] and ε stays in pixel units. A model is fully described by its ``ModelConfig``; checkpoints
store that config (``bridge.checkpoint``), so a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkrobust._allocator import available_memory
from ntkrobust._numbers import is_real, is_whole
from ntkrobust.attacks.threat import looks_channels_last
from ntkrobust.bridge.initialisation import INITIALISATIONS, initialise

W_STD = math.sqrt(2.0)  # the analytic kernels' defaults (kernels/architectures.py)
B_STD = 0.1
TWO_LAYER_W_STD = 0.01  # supp. eq. 28


class ModelError(ValueError):
    """Unknown model, bad constructor arguments, or a model that does not fit the data."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: registry name and constructor arguments."""

    model: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    width: int
    seed: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    init: str = "default"  # bridge.initialisation.INITIALISATIONS
    running_stats: bool = True  # False: BatchNorm keeps no running statistics (RAT's "w/o buffer")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only: safe for ``torch.load(weights_only=True)`` and JSON."""
        data = asdict(self)
        for key in ("input_shape", "mean", "std"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config a checkpoint records, its types checked as written: ``int()`` and ``bool()``
        would read a width of 8.5 as 8, a seed of 1.9 as 1 (the f₀ an ``OutputChange`` rebuilds)
        and ``running_stats: "false"`` as True."""
        if not isinstance(data, dict):
            raise ModelError(f"not a model config: {type(data).__name__}")
        missing = [key for key in ("model", "input_shape", "num_classes", "width") if key not in data]
        if missing:
            raise ModelError(f"not a model config: no {', '.join(missing)}")
        words = {"model": data["model"], "init": data.get("init", "default")}
        for key, value in [*words.items(), ("running_stats", data.get("running_stats", True))]:
            if not isinstance(value, bool if key == "running_stats" else str):
                raise ModelError(f"not a model config: {key} is {value!r}")
        return cls(
            model=words["model"],
            input_shape=tuple(_wholes(data["input_shape"], "input_shape")),  # type: ignore[arg-type]
            num_classes=_wholes([data["num_classes"]], "num_classes")[0],
            width=_wholes([data["width"]], "width")[0],
            seed=_wholes([data.get("seed", 0)], "seed")[0],
            mean=_reals(data.get("mean"), "mean"),
            std=_reals(data.get("std"), "std"),
            init=words["init"],
            running_stats=data.get("running_stats", True),
        )


def _wholes(values: Any, key: str) -> list[int]:
    if not isinstance(values, (list, tuple)) or not all(is_whole(v) for v in values):
        raise ModelError(f"not a model config: {key} must be whole numbers, got {values!r}")
    return [int(v) for v in values]


def _reals(values: Any, key: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or not all(is_real(v) for v in values):
        raise ModelError(f"not a model config: {key} must be real numbers, got {values!r}")
    return tuple(float(v) for v in values)


# --- layers -------------------------------------------------------------------------------


class NTKLinear(nn.Module):
    """Dense layer in the NTK parameterisation: W_std/√fan_in · W h + b_std · b, W, b ~ N(0, 1)."""

    def __init__(self, in_features: int, out_features: int, *, W_std: float = W_STD, b_std: float = B_STD):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.randn(out_features))
        self.w_scale = W_std / math.sqrt(in_features)
        self.b_scale = b_std

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight) * self.w_scale + self.bias * self.b_scale


class NTKConv2d(nn.Module):
    """3x3 'SAME' convolution in the NTK parameterisation (fan_in = channels · 9), as stax.Conv."""

    def __init__(self, in_channels: int, out_channels: int, *, W_std: float = W_STD, b_std: float = B_STD):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.randn(out_channels))
        self.w_scale = W_std / math.sqrt(in_channels * 9)
        self.b_scale = b_std

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, self.weight, padding=1) * self.w_scale + (self.bias * self.b_scale)[:, None, None]


class Normalize(nn.Module):
    """(x − mean) / std per channel: normalisation inside the model, so ε stays in pixel units."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # in torch's default dtype, as the layers' weights: a float64 net (the float64 checks) read
        # 0.4 as float32's 0.4000000059
        dtype = torch.get_default_dtype()
        self.register_buffer("mean", torch.tensor(mean, dtype=dtype)[:, None, None])
        self.register_buffer("std", torch.tensor(std, dtype=dtype)[:, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TwoLayerNet(nn.Module):
    """Supp. eq. 28: f(x) = m^{-1/2} Aᵀ relu(W x); only W is a parameter, A ∈ {±1} is frozen."""

    readout: torch.Tensor

    def __init__(self, in_features: int, width: int, num_classes: int):
        super().__init__()
        self.hidden = nn.Linear(in_features, width, bias=False)  # W, drawn from N(0, 0.01²)
        nn.init.normal_(self.hidden.weight, std=TWO_LAYER_W_STD)
        signs = torch.randint(0, 2, (width, num_classes)).to(torch.float32) * 2 - 1
        self.register_buffer("readout", signs)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.hidden(x.flatten(1)))
        return hidden @ self.readout.to(hidden.dtype) / math.sqrt(self.width)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) for small images: 3x3 stride-1 stem, no max-pool.

    torchvision's ``BasicBlock`` and module names; channels width·(1, 2, 4, 8).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        from torchvision.models.resnet import BasicBlock, conv1x1

        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        inplanes = width
        for index, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride, downsample), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- builders -----------------------------------------------------------------------------


def _fully_connected(depth: int) -> Callable[[ModelConfig], nn.Module]:
    def build(config: ModelConfig) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(config.input_shape)
        for _ in range(depth):
            layers += [NTKLinear(fan_in, config.width), nn.ReLU()]
            fan_in = config.width
        layers.append(NTKLinear(fan_in, config.num_classes))
        return nn.Sequential(*layers)

    return build


def _convolutional(depth: int) -> Callable[[ModelConfig], nn.Module]:
    def build(config: ModelConfig) -> nn.Module:
        channels, height, width = config.input_shape
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [NTKConv2d(channels, config.width), nn.ReLU()]
            channels = config.width
        layers += [nn.Flatten(), NTKLinear(channels * height * width, config.num_classes)]
        return nn.Sequential(*layers)

    return build


def _two_layer(config: ModelConfig) -> nn.Module:
    return TwoLayerNet(math.prod(config.input_shape), config.width, config.num_classes)


def _mnist_cnn(config: ModelConfig) -> nn.Module:
    channels, height, width = config.input_shape
    w = config.width
    return nn.Sequential(
        nn.Conv2d(channels, w, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * w * (height // 4) * (width // 4), 8 * w),
        nn.ReLU(),
        nn.Linear(8 * w, config.num_classes),
    )


def _cifar_cnn(config: ModelConfig) -> nn.Module:
    channels, height, width = config.input_shape
    w = config.width
    layers: list[nn.Module] = []
    for index, out in enumerate((w, w, 2 * w, 2 * w, 4 * w, 4 * w)):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
        channels = out
        if index == 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AvgPool2d(2), nn.Flatten(), nn.Linear(channels * (height // 4) * (width // 4), config.num_classes)]
    # He initialisation (weights N(0, 2/fan_in), zero biases), as for any deep ReLU stack. torch's
    # default (variance 1/(3·fan_in)) shrinks the signal at each of the six layers: the logits start
    # at std ~0.009 on CIFAR-10 and SGD sits at loss log 10 for epochs (measured: 2.302 after two
    # epochs at lr 0.01, against 1.88 with He initialisation). The two-layer MNIST CNN trains from
    # torch's default and keeps it.
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def _resnet18(config: ModelConfig) -> nn.Module:
    return ResNet18(config.input_shape[0], config.num_classes, config.width)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and what it is."""

    name: str
    description: str
    build: Callable[[ModelConfig], nn.Module] = field(repr=False)
    default_width: int
    analytic_twin: str | None = None  # the kernels.ARCHITECTURES entry it converges to
    min_side: int = 1  # smallest image height and width it accepts


def _twin(name: str, layers: str, build: Callable[[ModelConfig], nn.Module], width: int) -> ModelSpec:
    return ModelSpec(name, f"twin of the {name} kernel: {layers}", build, default_width=width, analytic_twin=name)


MODELS: dict[str, ModelSpec] = {
    **{
        f"fc{d}": _twin(f"fc{d}", f"{d} NTK-parameterised dense ReLU layer(s)", _fully_connected(d), 512)
        for d in range(1, 6)
    },
    **{
        f"conv{d}": _twin(f"conv{d}", f"{d} NTK-parameterised 3x3 SAME conv(s), flatten", _convolutional(d), 64)
        for d in (1, 2)
    },
    "two-layer": ModelSpec(
        "two-layer",
        "TK supp. eq. 28: m^-1/2 A relu(Wx), W ~ N(0, 0.01^2) trained, A in {+-1} frozen",
        _two_layer,
        default_width=1024,
        analytic_twin="two-layer",
    ),
    "mnist-cnn": ModelSpec(
        "mnist-cnn",
        "TK supp. E MNIST CNN: conv32-avgpool, conv64-avgpool, fc256, linear (width = first conv's channels)",
        _mnist_cnn,
        default_width=32,
        min_side=4,
    ),
    "cifar-cnn": ModelSpec(
        "cifar-cnn",
        "TK supp. E CIFAR CNN: 3x3 convs 32,32 | maxpool | 64,64,128,128 | avgpool, linear (He init)",
        _cifar_cnn,
        default_width=32,
        min_side=4,
    ),
    "resnet18": ModelSpec(
        "resnet18",
        "ResNet-18, 3x3 stride-1 stem, no max-pool (torchvision BasicBlocks; width = stem channels)",
        _resnet18,
        default_width=64,
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


def parse_model_name(text: str) -> tuple[str, int | None]:
    """``MODEL`` or ``MODEL:WIDTH`` (as the CLI writes a registry model) → (name, width or None)."""
    name, _, width = text.partition(":")
    if width and not width.isdigit():
        raise ModelError(f"{text!r}: the width after {name}: must be a whole number")
    return name, int(width) if width else None


def model_config(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    width: int | None = None,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    init: str = "default",
    running_stats: bool = True,
) -> ModelConfig:
    """A checked ``ModelConfig`` (``width`` defaults to the model's own)."""
    spec = get_model_spec(name)
    whole = {"input_shape": tuple(input_shape), "num_classes": (num_classes,), "width": (width,), "seed": (seed,)}
    for what, values in whole.items():  # int() truncated 2.5 classes to 2 outputs
        if any(v is not None and not is_whole(v) for v in values):
            raise ModelError(f"{what} must be whole numbers, got {values if len(values) > 1 else values[0]}")
    config = ModelConfig(
        model=name,
        input_shape=tuple(int(v) for v in input_shape),  # type: ignore[arg-type]
        num_classes=int(num_classes),
        width=spec.default_width if width is None else int(width),
        seed=int(seed),
        mean=None if mean is None else tuple(float(v) for v in mean),
        std=None if std is None else tuple(float(v) for v in std),
        init=init,
        running_stats=running_stats,
    )
    check_config(config)
    return config


def check_config(config: ModelConfig) -> None:
    """Refuse, in one line, a config its model cannot be built from."""
    spec = get_model_spec(config.model)
    if len(config.input_shape) != 3 or min(config.input_shape) < 1:
        raise ModelError(f"input shape must be (channels, height, width), got {config.input_shape}")
    channels, height, width = config.input_shape
    if looks_channels_last(config.input_shape):  # resnet18 took (28, 28, 1) as 28 channels of 28x1
        raise ModelError(f"input shape {config.input_shape} looks like (height, width, channels): give (C, H, W)")
    if min(height, width) < spec.min_side:
        raise ModelError(f"{config.model} needs images at least {spec.min_side}x{spec.min_side}, got {height}x{width}")
    if config.num_classes < 1 or config.width < 1:
        raise ModelError(f"num_classes and width must be positive, got {config.num_classes} and {config.width}")
    if not 0 <= config.seed < 2**63:  # torch's and numpy's generators take no more (as the CLI's --seed)
        raise ModelError(f"seed must lie in [0, 2**63), got {config.seed}")
    for key in ("mean", "std"):
        value = getattr(config, key)
        if value is not None and len(value) != channels:
            raise ModelError(f"{key} needs one value per input channel ({channels}), got {len(value)}")
        if value is not None and not all(math.isfinite(v) for v in value):  # NaN passed "std > 0"
            raise ModelError(f"{key} must be finite, got {list(value)}")
    if (config.mean is None) != (config.std is None):
        raise ModelError("give both mean and std, or neither")
    if config.std is not None and min(config.std) <= 0:
        raise ModelError("std must be positive")
    if config.init not in INITIALISATIONS:
        raise ModelError(f"unknown initialisation {config.init!r}: choose one of {', '.join(INITIALISATIONS)}")
    if config.init != "default" and spec.analytic_twin is not None:
        raise ModelError(
            f"--init {config.init}: {config.model} draws its weights as its analytic kernel assumes (--init default)"
        )


def build_model(config: ModelConfig, *, meta: bool = False) -> nn.Module:
    """The model of ``config``, initialised from ``config.seed`` (global RNG state untouched), in
    torch's default dtype: under a float64 default, the float32 net's values in float64.

    ``meta``: on the meta device, without initialisation: the names, shapes and dtypes of its
    parameters and buffers at no memory cost, so a checkpoint's state dict can be checked against
    what its config implies before a config of absurd width allocates gigabytes."""
    check_config(config)
    if not meta:
        check_memory(config)
    default = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else contextlib.nullcontext():
        torch.set_default_dtype(torch.float32)  # a seed's draws are float32's whatever the default
        try:
            model = _built(config, meta)
        finally:
            torch.set_default_dtype(default)
        if default != torch.float32:  # a float64 default (the float64 checks) gets the float32 net's values
            model = model.to(default)
        if config.mean is not None and config.std is not None:  # in the default dtype: 0.4 stays 0.4 in float64
            model = nn.Sequential(Normalize(config.mean, config.std), model)
    return model


def _built(config: ModelConfig, meta: bool) -> nn.Module:
    """``config``'s model drawn from its seed, before any normalisation layer."""
    torch.manual_seed(config.seed)
    try:
        model = get_model_spec(config.model).build(config)
    except (RuntimeError, TypeError) as error:  # a size past 2**63 - 1: torch cannot count it
        if "overflow" not in str(error).lower():
            raise
        raise ModelError(
            f"{config.model} of width {config.width} has a weight of more elements than torch can "
            "count (2^63 - 1): choose a smaller width"
        ) from None
    if not meta:  # re-drawing values changes no shape
        initialise(model, config.init, torch.Generator().manual_seed(config.seed))
    if not config.running_stats:
        without_running_statistics(model)
    return model


def check_memory(config: ModelConfig, *, copies: int = 1) -> None:
    """Refuse (``ModelError``) a model whose weights alone (``copies`` of them: a command that
    holds several nets at once) exceed the memory free now, before they are allocated: with
    overcommitted memory a huge allocation can succeed and the process die later, killed when
    initialisation first touches the pages."""
    shapes = build_model(config, meta=True)
    needed = copies * sum(t.numel() * t.element_size() for t in (*shapes.parameters(), *shapes.buffers()))
    free = available_memory()
    if free is not None and needed > free:
        count = sum(p.numel() for p in shapes.parameters())
        gib = f"{needed / 2**30:.1f} GiB"
        size = f"; the {copies} copies held at once take {gib}" if copies > 1 else f" ({gib})"
        raise ModelError(
            f"{config.model} of width {config.width} has {count:,} parameters{size}, "
            f"more than the {free / 2**30:.1f} GiB of memory free: choose a smaller width"
        )


def without_running_statistics(model: nn.Module) -> nn.Module:
    """Every BatchNorm of ``model`` without running statistics (in place): it normalises each
    batch with the batch's own statistics in training, attacks, evaluation and kernels alike, and
    its state dict has no buffers (RAT sec. 4's "w/o buffer" model)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
    return model


def check_fits(config: ModelConfig, image_shape: Sequence[int]) -> None:
    """Refuse data whose image shape is not the model's input shape."""
    if tuple(image_shape) != tuple(config.input_shape):
        raise ModelError(
            f"the {config.model} model takes images of shape {tuple(config.input_shape)}, "
            f"the data has {tuple(image_shape)}"
        )


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
