"""Registry of infinite-width architectures and their NTKs.

Tsilivis & Kempe, supp. D.2 (and the reference notebook): fully connected FC1..FC5 and fully
convolutional CONV1, CONV2 networks in neural-tangents stax, NTK parameterisation,
W_std = √2, b_std = 0.1, ReLU, 3x3 'SAME' convolutions with a Flatten readout (global average
pooling costs ~0.4 s per Gram entry on a CPU: out of reach here). ``two-layer`` is the
closed-form kernel of supp. eq. 29 (``kernels.two_layer``). Fully connected and convolutional
kernels are defined by stax and evaluated by the equal, vectorised recursions of
``kernels.relu`` and ``kernels.conv``; ``reference_kernel_fn`` keeps stax's route for the tests.

Conventions (written once):
- Every ``kernel_fn(x1, x2, get='ntk')`` returns the scalar NTK Θ of shape (N1, N2): at
  infinite width the output dimensions are independent, so one scalar kernel serves binary
  (one output) and k-class (k outputs) machines alike.
- Inputs reach ``kernel_fn`` in the architecture's layout: ``flat`` (N, C·H·W) or ``nhwc``
  (N, H, W, C). Data everywhere else is NCHW; ``to_layout`` converts.
- ``entry_cost`` is the number of intermediate floats per Gram entry (H·W for flatten-readout
  convolutions, whose kernels keep one covariance per pixel; 1 for dense nets). It sizes
  batches under a memory budget.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ntkrobust._numbers import is_real, is_whole
from ntkrobust.attacks.threat import looks_channels_last
from ntkrobust.kernels._jax import jnp, stax
from ntkrobust.kernels.conv import convolutional_kernel_fn
from ntkrobust.kernels.relu import (
    fully_connected_dot_kernel_fn,
    fully_connected_entry_kernel_fn,
    fully_connected_kernel_fn,
)
from ntkrobust.kernels.two_layer import (
    two_layer_dot_ntk,
    two_layer_dot_partials,
    two_layer_ntk,
    two_layer_ntk_vjp,
    two_layer_stax_ntk,
)

T = TypeVar("T")
KernelFn = Callable[..., jnp.ndarray]
KernelVjp = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]
DotKernelFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, int], jnp.ndarray]
DotPartialsFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, int], tuple[jnp.ndarray, jnp.ndarray]]

W_STD = math.sqrt(2.0)
B_STD = 0.1


class UnknownArchitectureError(KeyError):
    """Raised for an architecture name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True, eq=False)
class Architecture:
    """An infinite-width architecture: its NTK function and how inputs reach it.

    Compared and hashed by identity: compiled programs are kept per object (``per_architecture``),
    and the registry's factories make one object per name and hyperparameters (``is_registered``).
    """

    name: str
    description: str
    layout: Literal["flat", "nhwc"]
    kernel_fn: KernelFn = field(repr=False)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    kernel_vjp: KernelVjp | None = field(default=None, repr=False)
    #: The independent route ``kernel_fn`` is verified against (neural-tangents stax), if different.
    reference_kernel_fn: KernelFn | None = field(default=None, repr=False)
    #: For kernels of x·x', ‖x‖², ‖x'‖² only (dense nets): ``(dots, sq1, sq2, dim) -> Θ`` entry by
    #: entry on arrays of one shape; gives cheap input Jacobians for many outputs.
    dot_kernel_fn: DotKernelFn | None = field(default=None, repr=False)
    #: The same function of x·x', ‖x‖², ‖x'‖², broadcasting ((N1, N2), (N1, 1), (1, N2)) and open to
    #: forward-mode autodiff (no custom VJPs): ``jax.jvp`` along one argument gives that partial
    #: derivative of every entry in one fused pass (the loss gradients of ``kernels._dot_route``).
    entry_kernel_fn: DotKernelFn | None = field(default=None, repr=False)
    #: (∂Θ/∂(x·x'), ∂Θ/∂‖x‖²) entry by entry in closed form (supp. eq. 9), for ``kernel_vjp``'s kernels.
    dot_partials_fn: DotPartialsFn | None = field(default=None, repr=False)

    def to_layout(self, x_nchw: jnp.ndarray) -> jnp.ndarray:
        """NCHW (or already flat (N, d)) inputs → this architecture's layout."""
        if self.layout == "flat":
            return x_nchw.reshape(x_nchw.shape[0], -1)
        if x_nchw.ndim != 4:
            raise ValueError(f"{self.name} needs NCHW images, got shape {tuple(x_nchw.shape)}")
        return jnp.transpose(x_nchw, (0, 2, 3, 1))

    def from_layout(self, g: jnp.ndarray, nchw_shape: tuple[int, ...]) -> jnp.ndarray:
        """Inverse of ``to_layout`` (for gradients), back to ``nchw_shape``."""
        if self.layout == "flat":
            return g.reshape(nchw_shape)
        return jnp.transpose(g, (0, 3, 1, 2))

    def entry_cost(self, nchw_shape: tuple[int, ...]) -> int:
        if self.layout == "flat":
            return 1
        return int(nchw_shape[-2] * nchw_shape[-1])

    def check_input(self, nchw_shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if images of this shape cannot enter the architecture."""
        if self.layout == "nhwc" and len(nchw_shape) != 4:
            raise ValueError(f"architecture {self.name} needs NCHW images, got shape {nchw_shape}")
        if self.layout == "nhwc" and looks_channels_last(tuple(nchw_shape[1:])):  # another kernel
            raise ValueError(
                f"images of shape {nchw_shape[1:]} look like NHWC (channels last): architecture {self.name} "
                "takes NCHW; transpose them with x.transpose(0, 3, 1, 2)"
            )

    def fingerprint(self) -> str:
        """Name and hyperparameters. They determine the kernel only for ``is_registered`` objects:
        a hand-built architecture may share both with a registered one and compute another kernel."""
        params = ",".join(f"{k}={v!r}" for k, v in sorted(self.hyperparameters.items()))
        return f"{self.name}({params})"


def check_architecture(arch: object) -> None:
    """Raise ``TypeError`` unless ``arch`` is an ``Architecture``: a name passed where the object
    belongs would fail deep inside with an AttributeError."""
    if isinstance(arch, str):
        raise TypeError(f"expected an Architecture, got the string {arch!r}: pass get_architecture({arch!r})")
    if not isinstance(arch, Architecture):
        raise TypeError(f"expected an Architecture (from get_architecture), got {type(arch).__name__}")


def per_architecture(build: Callable[..., T]) -> Callable[..., T]:
    """``build(arch, *options)`` made once per architecture object and options: a module's jitted
    programs, compiled once however many machines use them (the registry hands every caller of a
    name the same object). Keyed by identity, never by name: a hand-built architecture named like a
    registered one gets programs of its own kernel functions."""
    made: weakref.WeakKeyDictionary[Architecture, dict[tuple[Any, ...], T]] = weakref.WeakKeyDictionary()

    def get(arch: Architecture, *options: Any) -> T:
        programs = made.setdefault(arch, {})
        if options not in programs:
            programs[options] = build(arch, *options)
        return programs[options]

    return get


_REGISTERED: dict[str, Architecture] = {}


def _one_per_fingerprint(factory: Callable[..., Architecture]) -> Callable[..., Architecture]:
    """The factory returns the first object it made for these hyperparameters: one set of compiled
    programs per kernel, and a fingerprint that names the kernel (``is_registered``)."""

    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> Architecture:
        arch = factory(*args, **kwargs)
        return _REGISTERED.setdefault(arch.fingerprint(), arch)

    return make


def is_registered(arch: Architecture) -> bool:
    """Whether ``arch`` came from this module's factories, so that its fingerprint determines its
    kernel (the Gram disk cache keys by it; hand-built architectures are not cached on disk)."""
    return _REGISTERED.get(arch.fingerprint()) is arch


def _checked(depth: int, W_std: float, b_std: float) -> tuple[int, float, float]:
    """The factories' arguments as plain values, checked: a whole depth >= 1, a finite W_std > 0
    and b_std >= 0 as floats, so that W_std=1 and W_std=1.0 name one kernel (one registered
    object, one set of compiled programs, one Gram cache key) and "fc-1" is never built."""
    if not is_whole(depth) or depth < 1:
        raise ValueError(f"depth must be a whole number of layers >= 1, got {depth!r}")
    for name, value, least in (("W_std", W_std, "> 0"), ("b_std", b_std, ">= 0")):
        if not is_real(value, finite=True) or value < 0 or (value == 0 and name == "W_std"):
            raise ValueError(f"{name} must be a finite number {least}, got {value!r}")
    return int(depth), float(W_std), float(b_std)


@_one_per_fingerprint
def fully_connected(depth: int, *, W_std: float = W_STD, b_std: float = B_STD) -> Architecture:
    """FC{depth}: Flatten, depth × (Dense, ReLU), Dense readout; NTK parameterisation.

    Defined by stax; evaluated by ``kernels.relu``'s vectorised recursion of the same kernel
    (equal in float64, several times faster on CPUs), stax's own ``kernel_fn`` kept as reference.
    """
    depth, W_std, b_std = _checked(depth, W_std, b_std)
    layers = [stax.Flatten()]
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=W_std, b_std=b_std, parameterization="ntk"), stax.Relu()]
    layers.append(stax.Dense(1, W_std=W_std, b_std=b_std, parameterization="ntk"))
    _, _, kernel_fn = stax.serial(*layers)
    return Architecture(
        name=f"fc{depth}",
        description=f"fully connected, {depth} hidden ReLU layer(s), W_std={W_std:.4g}, b_std={b_std:g}",
        layout="flat",
        kernel_fn=fully_connected_kernel_fn(depth, W_std, b_std),
        hyperparameters={"depth": depth, "W_std": W_std, "b_std": b_std},
        reference_kernel_fn=kernel_fn,
        dot_kernel_fn=fully_connected_dot_kernel_fn(depth, W_std, b_std),
        entry_kernel_fn=fully_connected_entry_kernel_fn(depth, W_std, b_std),
    )


@_one_per_fingerprint
def convolutional(depth: int, *, W_std: float = W_STD, b_std: float = B_STD) -> Architecture:
    """CONV{depth}: depth × (3x3 SAME Conv, ReLU), Flatten, Dense readout; NTK parameterisation.

    Defined by stax; evaluated by ``kernels.conv``'s per-pixel vectorised recursion of the same
    kernel (equal in float64; kernel blocks and their input gradients 4-7x faster on CPUs),
    stax's own ``kernel_fn`` kept as reference.
    """
    depth, W_std, b_std = _checked(depth, W_std, b_std)
    layers = []
    for _ in range(depth):
        layers += [
            stax.Conv(64, (3, 3), padding="SAME", W_std=W_std, b_std=b_std, parameterization="ntk"),
            stax.Relu(),
        ]
    layers += [stax.Flatten(), stax.Dense(1, W_std=W_std, b_std=b_std, parameterization="ntk")]
    _, _, kernel_fn = stax.serial(*layers)
    return Architecture(
        name=f"conv{depth}",
        description=f"fully convolutional, {depth} 3x3 ReLU conv layer(s), flatten readout, W_std={W_std:.4g}, "
        f"b_std={b_std:g}",
        layout="nhwc",
        kernel_fn=convolutional_kernel_fn(depth, W_std, b_std),
        hyperparameters={"depth": depth, "W_std": W_std, "b_std": b_std},
        reference_kernel_fn=kernel_fn,
    )


@_one_per_fingerprint
def two_layer() -> Architecture:
    """Supp. eq. 28-29: the closed-form NTK of a two-layer ReLU net with a frozen ±1 readout."""
    return Architecture(
        name="two-layer",
        description="two-layer ReLU net of supp. eq. 28, closed-form NTK of eq. 29",
        layout="flat",
        kernel_fn=two_layer_ntk,
        hyperparameters={},
        kernel_vjp=two_layer_ntk_vjp,
        reference_kernel_fn=lambda x1, x2, get="ntk": two_layer_stax_ntk(x1, x2),
        dot_kernel_fn=two_layer_dot_ntk,
        entry_kernel_fn=two_layer_dot_ntk,
        dot_partials_fn=two_layer_dot_partials,
    )


_FACTORIES: dict[str, Callable[[], Architecture]] = {
    **{f"fc{d}": functools.partial(fully_connected, d) for d in range(1, 6)},
    **{f"conv{d}": functools.partial(convolutional, d) for d in range(1, 3)},
    "two-layer": two_layer,
}

#: Names accepted by ``get_architecture`` and the CLI's ``--arch``.
ARCHITECTURES: tuple[str, ...] = tuple(_FACTORIES)


def get_architecture(name: str) -> Architecture:
    """The registered architecture called ``name`` (``fc1``..``fc5``, ``conv1``, ``conv2``, ``two-layer``)."""
    if not isinstance(name, str):
        raise TypeError(f"an architecture is named by a string ({', '.join(ARCHITECTURES)}), got {type(name).__name__}")
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}: choose one of {', '.join(ARCHITECTURES)}"
        ) from None
    return factory()
