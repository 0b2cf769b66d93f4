"""Per-example Jacobians of a torch net, one parameter group at a time, for ``bridge.entk``.

- ``plan_parameter_groups`` cuts the trainable parameters into groups that fit a memory budget;
- ``JacobianEngine.jacobian`` is ``vmap(jacrev(f))`` of the selected outputs with respect to one
  group, for a sub-batch of examples: (B, C′, P_group);
- ``dense_layers`` finds the dense layers whose per-example gradient is an outer product
  s·g hᵀ (``nn.Linear``, the twins' ``NTKLinear``, applied to one vector per example), and
  ``JacobianEngine.factors`` returns their factors g (B, C′, out) and h (B, in), which
  ``bridge.entk`` contracts without forming the gradients (the structured derivatives of
  neural-tangents, Novak et al. 2022), together with the Jacobian rows of the plain
  convolutions, g Pᵀ from the same backward pass, or for convolutions of few output positions
  their g and patches, whose Grams give their share (``bridge.convolutions``);
  ``used_outside`` notes the operations that take a structured layer's weight outside its call, and
  ``JacobianEngine.unfaithful_layers`` checks at one example that a structured layer's gradient is
  the net's (a weight also used outside its module's call is not): the engine leaves such layers to
  the groups;
- ``transposed_products`` gives Jᵀw = ∇θ Σ_n w_nᵀ f(x_n) for weights w on the outputs of a set,
  without forming J (NTK eigenvectors, empirical-NTK kernel machines).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntkrobust import _load_order  # noqa: F401  (Triton before TensorFlow, before any torch.func)
from ntkrobust.bridge._observed import forward_pass, used_outside
from ntkrobust.bridge.convolutions import ConvLayer, conv_factors, conv_layers, conv_rows


class BudgetError(ValueError):
    """The memory budget cannot hold even the smallest chunk; the message says what is needed."""


# A group is a list of (parameter name, start, stop) over the flattened parameter.
Group = list[tuple[str, int, int]]


def plan_parameter_groups(sizes: dict[str, int], capacity: int) -> list[Group]:
    """Cut parameters (name → element count, in order) into consecutive groups of at most
    ``capacity`` elements. A tensor that fits in a group is never split (the gradient of a slice
    costs as much as the whole tensor's); one larger than ``capacity`` is cut into slices."""
    if capacity < 1:
        raise BudgetError("memory budget too small for even one parameter's Jacobian column")
    groups: list[Group] = []
    current: Group = []
    room = capacity
    for name, size in sizes.items():
        if size <= capacity and size > room:  # start a new group rather than split this tensor
            groups.append(current)
            current, room = [], capacity
        start = 0
        while start < size:
            stop = min(size, start + room)
            current.append((name, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                groups.append(current)
                current, room = [], capacity
    if current:
        groups.append(current)
    return [group for group in groups if group]


def activation_elements(model: nn.Module, example: torch.Tensor) -> int:
    """Elements of every leaf module's output for one example: the activations a backward keeps."""
    total = 0

    def count(_module: nn.Module, _args: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    forward_pass(model, example, hooks)
    return max(total, example.numel())


@dataclass(frozen=True)
class DenseLayer:
    """A dense layer handled by its structure: y = w_scale·W h + b_scale·b."""

    module: nn.Module
    weight: str  # parameter names
    bias: str | None
    w_scale: float
    b_scale: float


def dense_layers(model: nn.Module, example: torch.Tensor, trainable: set[str]) -> dict[str, DenseLayer]:
    """``nn.Linear`` / ``NTKLinear`` modules with a trainable weight, called exactly once per
    forward pass on a single vector per example (shape (1, in) for one example)."""
    from ntkrobust.bridge.models import NTKLinear

    candidates = {
        name: module
        for name, module in model.named_modules()
        if type(module) in (nn.Linear, NTKLinear) and f"{name}.weight" in trainable
    }
    calls: dict[str, list[tuple[int, ...] | None]] = {name: [] for name in candidates}

    def seen(name: str, args: tuple[Any, ...]) -> None:
        # an input given by keyword (``self.fc(input=h)``) is not the one the taps keep: generic route
        calls[name].append(tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None)

    hooks = [
        module.register_forward_pre_hook(lambda m, args, name=name: seen(name, args))
        for name, module in candidates.items()
    ]
    forward_pass(model, example, hooks)
    layers = {}
    for name, module in candidates.items():
        if calls[name] != [(1, module.weight.shape[1])]:
            continue
        bias = f"{name}.bias" if f"{name}.bias" in trainable else None
        layers[name] = DenseLayer(
            module,
            f"{name}.weight",
            bias,
            float(getattr(module, "w_scale", 1.0)),
            float(getattr(module, "b_scale", 1.0)),
        )
    return layers


@contextlib.contextmanager
def _without_tf32() -> Iterator[None]:
    """cuDNN convolutions and CUDA matrix products in full float32 inside, as they were after."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


class JacobianEngine:
    """Per-example Jacobians of the selected outputs with respect to one parameter group, and
    the structured layers' share: the factors (g, h) of the dense layers and the Jacobian rows (or
    Gram factors) of the convolutions, whose parameters the groups leave out. ``convolutions``:
    ``"all"``, ``"gram"`` (only the Gram layers; the others go through the groups) or ``"none"``;
    ``paired``: for a kernel that pairs every two outputs (the full kind); ``unsound``: the layers
    an earlier engine of the same net and example sent to the groups (its checks are not rerun)."""

    def __init__(
        self,
        model: nn.Module,
        output_index: int | None,
        example: torch.Tensor,
        *,
        structured: bool = True,
        convolutions: str = "all",
        paired: bool = False,
        unsound: frozenset[str] | None = None,
    ):
        self.model = model
        self.params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        self.frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
        self.buffers = {name: b.detach() for name, b in model.named_buffers()}
        self.output_index = output_index
        # a parameter that two modules hold (tied weights) has the gradients of both uses, and each
        # module's factors or rows hold one: the layers of a shared tensor take the generic groups
        uses: dict[int, int] = {}
        for _, p in model.named_parameters(remove_duplicate=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
        trainable = {name for name, p in model.named_parameters() if p.requires_grad and uses[id(p)] == 1}
        self.dense = dense_layers(model, example, trainable) if structured else {}
        outputs = None if output_index is None else 1
        found = conv_layers(model, example, trainable, outputs, paired=paired) if structured else {}
        self.convs: dict[str, ConvLayer] = {
            name: layer
            for name, layer in found.items()
            if convolutions == "all" or (convolutions == "gram" and layer.gram)
        }
        # a module's hooks see only its own calls: a weight also used outside them (F.linear(h,
        # self.a.weight) in a forward) would lose that use's gradient; such layers take the groups.
        # Seen by the operations that take it (a use a ReLU switches off at the first example too)
        # and by the numbers at the first example (the meta device has none to compare)
        if unsound is None:
            outside = set(used_outside(model, example, {name: layer.module for name, layer in self._named()}))
            self._leave_to_groups(outside)
            wrong = self.unfaithful_layers(example) if example.device.type != "meta" else []
            unsound = frozenset(outside.union(wrong))
        #: the layers the checks sent to the groups: an engine of the same net and example with
        #: fewer convolutions takes them as ``unsound`` instead of checking again (a few seconds
        #: each on ResNet-18)
        self.unsound = unsound
        self._leave_to_groups(unsound)

    def _leave_to_groups(self, names: Iterable[str]) -> None:
        for name in names:
            self.dense.pop(name, None)
            self.convs.pop(name, None)

    def _named(self) -> list[tuple[str, DenseLayer | ConvLayer]]:
        return [*self.dense.items(), *self.convs.items()]

    def sizes(self) -> dict[str, int]:
        """Element counts of the parameters left to the generic Jacobian groups."""
        structured = {name for layer in self._structured() for name in (layer.weight, layer.bias) if name}
        return {name: p.numel() for name, p in self.params.items() if name not in structured}

    def _outputs(
        self, params: dict[str, torch.Tensor], example: torch.Tensor, output: int | None = None
    ) -> torch.Tensor:
        out = functional_call(self.model, (params, self.frozen, self.buffers), (example.unsqueeze(0),))[0]
        index = self.output_index if output is None else output
        return out if index is None else out[index : index + 1]

    def factors(self, x: torch.Tensor) -> dict[str, dict[str, Any]]:
        """For a sub-batch ``x``: ``"dense"``, per dense layer g (B, C′, out), the output's gradient
        at the layer's output, and h (B, in), the layer's input; ``"conv"``, per convolution its
        Jacobian rows (B, C′, P_layer); ``"gram"``, per Gram convolution its g (B, C′, O, S) and
        patches (B, K, S). One forward and one backward pass per output for all."""
        grads, inputs = self._tapped(x)
        rows, grams = {}, {}
        for name, layer in self.convs.items():
            if layer.gram:
                grams[name] = conv_factors(layer, grads[name], inputs[name])
                continue
            rows[name] = self._conv_rows(name, grads[name], inputs[name])
        dense = {name: (grads[name], inputs[name]) for name in self.dense}
        return {"dense": dense, "conv": rows, "gram": grams}

    def _conv_rows(self, name: str, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        layer = self.convs[name]
        # the module's own bias, even frozen or named after another module that holds it: it still shifts
        bias = None if layer.module.bias is None else layer.module.bias.detach()
        return conv_rows(layer, self.params[layer.weight], bias, g, a)

    def unfaithful_layers(self, example: torch.Tensor) -> list[str]:
        """The structured layers whose gradient, from their module's calls, is not the net's.

        At the first example of ``example`` and for one random combination v of the outputs, each
        layer's ∇(v·f) from its factors (s·g hᵀ, s_b·g) or rows against ``torch.func.grad``'s,
        from one forward and one backward pass: apart by more than √eps of the dtype relative to
        the larger norm (float64 1.5e-8, float32 3.5e-4; a use the hooks missed was 7-66% off in
        the tests), the layer is named. Both routes run in full float32: a GPU's TF32 (cuDNN's
        convolutions take it by default from Ampere on, 10 bits of mantissa) would put them about
        1e-3 apart and send sound convolutions to the groups."""
        if not (self.dense or self.convs):
            return []
        with _without_tf32():
            return self._unfaithful_layers(example)

    def _unfaithful_layers(self, example: torch.Tensor) -> list[str]:
        x = example[:1]
        names = [name for layer in self._structured() for name in (layer.weight, layer.bias) if name]

        def mixed(shifts: dict[str, torch.Tensor], pieces: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
            out, inputs = self._tapped_outputs(shifts, {**self.params, **pieces}, x[0])
            v = torch.randn(out.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            return out @ v.to(out), inputs

        pieces = {name: self.params[name] for name in names}
        (taps, autograd), inputs = torch.func.grad(mixed, argnums=(0, 1), has_aux=True)(self._zero_shifts(x), pieces)
        tolerance = torch.finfo(x.dtype).eps ** 0.5
        unfaithful = []
        for name, layer in self._named():
            if isinstance(layer, DenseLayer):
                g, h = taps[name], inputs[name]
                mine = [layer.w_scale * torch.outer(g, h)] + ([layer.b_scale * g[:, None]] if layer.bias else [])
                ours = torch.cat(mine, dim=1)
            else:
                rows = self._conv_rows(name, taps[name][None, None], inputs[name][None])
                ours = rows.reshape(layer.module.weight.shape[0], -1)
            reference = [autograd[layer.weight].flatten(1)] + ([autograd[layer.bias][:, None]] if layer.bias else [])
            torch_grad = torch.cat(reference, dim=1)
            scale = max(float(torch.linalg.vector_norm(ours)), float(torch.linalg.vector_norm(torch_grad)))
            if float(torch.linalg.vector_norm(ours - torch_grad)) > tolerance * scale:
                unfaithful.append(name)
        return unfaithful

    def _structured(self) -> list[DenseLayer | ConvLayer]:
        return [layer for _, layer in self._named()]

    def _zero_shifts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One example's zero at every tap, whose gradient is the output's at the tap."""
        zeros = {
            name: torch.zeros(self.params[layer.weight].shape[0], dtype=x.dtype, device=x.device)
            for name, layer in self.dense.items()
        }
        zeros.update({name: x.new_zeros(layer.tap_shape) for name, layer in self.convs.items()})
        return zeros

    def _tapped_outputs(
        self, shifts: dict[str, torch.Tensor], params: dict[str, torch.Tensor], example: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The selected outputs of one example with ``shifts`` added at the taps' outputs, and each
        structured layer's input (of the example, without its batch axis)."""
        # the shift that each tap adds to its output, and the module whose input it keeps
        taps = [(name, layer.module, layer.module) for name, layer in self.dense.items()]
        taps += [(name, layer.tap, layer.module) for name, layer in self.convs.items()]
        inputs: dict[str, torch.Tensor] = {}

        def shift(name: str):  # type: ignore[no-untyped-def]
            def hook(_module: nn.Module, _args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
                return output + shifts[name]

            return hook

        def keep(name: str):  # type: ignore[no-untyped-def]
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                inputs[name] = args[0][0]

            return hook

        hooks = [tapped.register_forward_hook(shift(name)) for name, tapped, _ in taps]
        hooks += [layer.register_forward_pre_hook(keep(name)) for name, _, layer in taps]
        try:
            return self._outputs(params, example), inputs
        finally:
            for hook in hooks:
                hook.remove()

    def _tapped(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The gradients (B, C′, *tap output) of the selected outputs at every structured layer's
        tap, and each layer's input (B, ...), for a sub-batch ``x``: one forward and one backward
        pass per output."""

        def outputs(shifts: dict[str, torch.Tensor], example: torch.Tensor):  # type: ignore[no-untyped-def]
            return self._tapped_outputs(shifts, self.params, example)

        grads, inputs = vmap(jacrev(outputs, has_aux=True), in_dims=(None, 0))(self._zero_shifts(x), x)
        return grads, inputs

    def jacobian(self, group: Group, x: torch.Tensor, output: int | None = None) -> torch.Tensor:
        """(B, C′, P_group) for a sub-batch ``x`` (B, ...); (B, 1, P_group) for one ``output``."""
        pieces = {f"{name}:{start}": self.params[name].reshape(-1)[start:stop] for name, start, stop in group}

        def outputs(pieces: dict[str, torch.Tensor], example: torch.Tensor) -> torch.Tensor:
            params = dict(self.params)
            for name, start, stop in group:
                flat = self.params[name].reshape(-1)
                piece = pieces[f"{name}:{start}"]
                if stop - start < flat.numel():  # rebuild the tensor around the differentiated slice
                    piece = torch.cat([flat[:start], piece, flat[stop:]])
                params[name] = piece.reshape(self.params[name].shape)
            return self._outputs(params, example, output)

        jac = vmap(jacrev(outputs), in_dims=(None, 0))(pieces, x)
        return torch.cat([jac[key].flatten(2) for key in pieces], dim=2)


def transposed_products(
    model: nn.Module, x: torch.Tensor, weights: torch.Tensor, params: Sequence[torch.Tensor], *, batch_size: int
) -> list[list[torch.Tensor]]:
    """Jᵀ w_i = ∇θ Σ_n w_i[n]ᵀ f(x_n) for every w_i of ``weights`` (k, N, C), one tensor per
    parameter of ``params``: one forward pass per sub-batch of ``x``, one backward pass per w_i
    through it (the graph retained between them), summed over sub-batches. ``model`` should be in
    eval mode, so that the sum over sub-batches is the sum over x. Memory: one sub-batch."""
    k = weights.shape[0]
    totals = [[torch.zeros_like(p) for p in params] for _ in range(k)]
    for start in range(0, x.shape[0], batch_size):
        batch = slice(start, start + batch_size)
        with torch.enable_grad():
            out = model(x[batch])
            for i in range(k):
                grads = torch.autograd.grad((out * weights[i, batch]).sum(), params, retain_graph=i < k - 1)
                for total, g in zip(totals[i], grads, strict=True):
                    total += g
    return totals


def as_inputs(x: Any, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Inputs (numpy, torch or nested lists) as a tensor of the net's device and dtype."""
    return torch.as_tensor(x if isinstance(x, torch.Tensor) else np.asarray(x)).to(device, dtype)
