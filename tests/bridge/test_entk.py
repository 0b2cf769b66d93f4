"""Empirical NTK: against explicit per-example gradients, neural-tangents, and the analytic kernels."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from ntkrobust.bridge.convolutions import conv_layers
from ntkrobust.bridge.entk import BudgetError, KernelKind, check_memory_budget, empirical_ntk, with_batch_statistics
from ntkrobust.bridge.jacobians import plan_parameter_groups
from ntkrobust.bridge.models import build_model, model_config

TOL = 1e-11  # float64 throughout; the routes differ only in summation order

CASES = {  # name: (input shape, width)
    "fc2": ((1, 4, 4), 12),
    "conv1": ((1, 5, 5), 3),
    "two-layer": ((1, 4, 4), 16),
    "mnist-cnn": ((1, 8, 8), 2),
    "cifar-cnn": ((3, 8, 8), 2),
    "resnet18": ((3, 6, 6), 2),
}


def explicit_gradient_gram(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> np.ndarray:
    """Θ[i, j, c, d] = ∇θ f_c(x1_i) · ∇θ f_d(x2_j), one autograd call per example and output."""
    model = model.double().eval()
    params = [p for p in model.parameters() if p.requires_grad]

    def gradients(x: torch.Tensor) -> torch.Tensor:
        rows = []
        for example in x.double():
            out = model(example[None])[0]
            per_output = [torch.autograd.grad(out[c], params, retain_graph=True) for c in range(out.shape[0])]
            rows.append(torch.stack([torch.cat([g.reshape(-1) for g in grads]) for grads in per_output]))
        return torch.stack(rows)

    g1, g2 = gradients(x1), gradients(x2)
    return torch.einsum("iap,jbp->ijab", g1, g2).numpy()


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    shape, width = CASES[request.param]
    model = build_model(model_config(request.param, shape, 3, width=width, seed=1))
    generator = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(4, *shape, generator=generator), torch.rand(3, *shape, generator=generator)
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model.train()  # give the running statistics non-trivial values
        with torch.no_grad():
            model(torch.rand(8, *shape, generator=generator))
    return model.eval(), x1, x2, explicit_gradient_gram(model, x1, x2)


def test_full_kernel_is_the_gram_matrix_of_per_example_gradients(case):
    model, x1, x2, reference = case
    full = empirical_ntk(model, x1, x2, kind="full", dtype=torch.float64)
    assert full.shape == (4, 3, 3, 3) and full.dtype == np.float64
    assert relative_error(full, reference) < TOL


def test_trace_and_class_kernels_are_the_diagonal_blocks(case):
    model, x1, x2, reference = case
    trace = empirical_ntk(model, x1, x2, kind="trace", dtype=torch.float64)
    assert relative_error(trace, np.einsum("ijcc->ij", reference) / 3) < TOL
    for c in range(3):
        block = empirical_ntk(model, x1, x2, kind=f"class:{c}", dtype=torch.float64)
        assert relative_error(block, reference[:, :, c, c]) < TOL


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "generic"])
def test_chunked_over_parameters_and_examples_equals_unchunked(case, monkeypatch, structured):
    """Groups of a fifth of the generic parameters (tensors sliced on the generic route), sub-batches
    of 2; with and without the structured route of the dense layers and convolutions."""
    from ntkrobust.bridge import _entk_plan as entk_plan

    model, x1, x2, reference = case
    plans = []

    def small_groups(sizes, capacity):
        plans.append(plan_parameter_groups(sizes, min(capacity, max(sum(sizes.values()) // 5, 1))))
        return plans[-1]

    monkeypatch.setattr(entk_plan, "plan_parameter_groups", small_groups)
    monkeypatch.setattr(entk_plan, "_MAX_SUB_BATCH", 2)
    options = {"kind": "full", "dtype": torch.float64, "structured": structured}
    chunked = empirical_ntk(model, x1, x2, **options)
    if plans:
        sizes = {name: p.numel() for name, p in model.named_parameters()}
        assert len(plans[0]) >= 5
        sliced = any(stop - start < sizes[name] for g in plans[0] for name, start, stop in g)
        assert sliced or structured  # left to the groups, the convolutions' BatchNorms may all fit whole
    else:
        assert structured  # every parameter went the structured route (fc twins, the MNIST CNN)
    assert relative_error(chunked, reference) < TOL
    symmetric = empirical_ntk(model, x1, **options)
    np.testing.assert_allclose(symmetric, symmetric.transpose(1, 0, 3, 2), rtol=0, atol=1e-12 * np.abs(symmetric).max())
    assert relative_error(symmetric, explicit_gradient_gram(model, x1, x1)) < TOL


@pytest.mark.parametrize("kind", ["full", "class-blocks", "trace"])
def test_a_symmetric_kernel_from_the_block_triangle_equals_the_gradient_gram(case, monkeypatch, kind):
    """Blocks of one row (4 points: 4 row blocks in the C-batched products, and in the full
    kind's N·C rows) mirrored below the diagonal, against one autograd call per example."""
    from ntkrobust.bridge import entk

    model, x1, _, _ = case
    monkeypatch.setattr(entk, "_MIN_BLOCK_ROWS", 1)
    kernel = empirical_ntk(model, x1, kind=kind, dtype=torch.float64)
    reference = explicit_gradient_gram(model, x1, x1)
    expected = {
        "full": reference,
        "class-blocks": np.einsum("ijcc->ijc", reference),
        "trace": np.einsum("ijcc->ij", reference) / 3,
    }[kind]
    assert relative_error(kernel, expected) < TOL
    a = torch.rand(2, 11, 5, dtype=torch.float64)
    torch.testing.assert_close(entk._products(a, a), a @ a.transpose(-1, -2), rtol=1e-14, atol=0)


def test_dense_layers_take_the_structured_route_only_where_it_is_exact():
    from ntkrobust.bridge.jacobians import dense_layers

    def dense(model, shape):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        return sorted(dense_layers(model.eval(), torch.rand(1, *shape), trainable))

    assert dense(build_model(model_config("fc2", (1, 4, 4), 3, width=4)), (1, 4, 4)) == ["1", "3", "5"]
    assert dense(build_model(model_config("mnist-cnn", (1, 8, 8), 3, width=2)), (1, 8, 8)) == ["7", "9"]
    assert dense(build_model(model_config("two-layer", (1, 4, 4), 3, width=4)), (1, 4, 4)) == ["hidden"]
    assert dense(build_model(model_config("resnet18", (3, 6, 6), 3, width=2)), (3, 6, 6)) == ["fc"]

    class Tokens(torch.nn.Module):  # a Linear applied to several vectors per example, and one reused
        def __init__(self):
            super().__init__()
            self.mix, self.twice = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.twice(self.twice(self.mix(x.reshape(-1, 4, 4)).mean(1)))

    assert dense(Tokens(), (1, 4, 4)) == []


def test_parameter_groups_cover_every_element_once_within_capacity():
    sizes = {"a": 5, "b": 12, "c": 1, "d": 7}
    for capacity in (1, 3, 4, 6, 25, 100):
        groups = plan_parameter_groups(sizes, capacity)
        assert all(sum(stop - start for _, start, stop in group) <= capacity for group in groups)
        covered = {name: np.zeros(size, dtype=int) for name, size in sizes.items()}
        for group in groups:
            for name, start, stop in group:
                covered[name][start:stop] += 1
        assert all((count == 1).all() for count in covered.values())
        pieces = [(name, start, stop) for group in groups for name, start, stop in group]
        assert all(stop - start == sizes[name] for name, start, stop in pieces if sizes[name] <= capacity)
    assert len(plan_parameter_groups(sizes, 25)) == 1
    assert plan_parameter_groups(sizes, 13) == [[("a", 0, 5)], [("b", 0, 12), ("c", 0, 1)], [("d", 0, 7)]]
    with pytest.raises(BudgetError):
        plan_parameter_groups(sizes, 0)


def test_cpu_sub_batches_stay_within_the_working_set_and_give_the_same_kernel(monkeypatch):
    """On a CPU a sub-batch holds about _CPU_WORKING_BYTES (_RETAINED with freed memory kept);
    elsewhere only the budget limits it. The kernel does not depend on it."""
    from ntkrobust.bridge import _entk_plan as entk_plan

    model = build_model(model_config("mnist-cnn", (1, 8, 8), 3, width=4))
    x = torch.rand(12, 1, 8, 8, dtype=torch.float64)
    sizes: list[tuple[bool, int]] = []
    original = entk_plan._sub_batch_size

    def spy(*args, **kwargs):
        sizes.append((kwargs["cpu"], original(*args, **kwargs)))
        return sizes[-1][1]

    monkeypatch.setattr(entk_plan, "_sub_batch_size", spy)
    reference = empirical_ntk(model, x, kind="class-blocks", dtype=torch.float64)
    assert sizes and all(cpu and size == entk_plan._MAX_SUB_BATCH for cpu, size in sizes)  # tiny examples
    sizes.clear()
    monkeypatch.setattr(entk_plan, "_CPU_WORKING_BYTES", 1)  # one example per sub-batch on a CPU
    monkeypatch.setattr(entk_plan, "_CPU_WORKING_BYTES_RETAINED", 1)
    capped = empirical_ntk(model, x, kind="class-blocks", dtype=torch.float64)
    assert sizes and all(cpu and size == 1 for cpu, size in sizes)
    np.testing.assert_allclose(capped, reference, rtol=0, atol=1e-12 * np.abs(reference).max())
    # not on a CPU: the budget's size
    kept = 3 * sum(p.numel() for p in model.parameters())  # all outputs' Jacobian of every parameter
    assert original(kept, 100, 3, 4, 2**30, cpu=False) == entk_plan._MAX_SUB_BATCH
    assert original(kept, 100, 3, 4, 2**30, cpu=True) == 1
    # the allocator decides the CPU's size: small sub-batches under glibc's defaults, larger ones
    # when freed memory is kept
    per_example = 4 * (100 * (2 + 3) + kept + 3 * 3)  # activations and 3 backward copies, Jacobian, cotangents
    monkeypatch.setattr(entk_plan, "_CPU_WORKING_BYTES", 3 * per_example)
    monkeypatch.setattr(entk_plan, "_CPU_WORKING_BYTES_RETAINED", 7 * per_example)
    for retained, expected in ((False, 3), (True, 7)):
        monkeypatch.setattr(entk_plan, "freed_memory_retained", lambda retained=retained: retained)
        assert original(kept, 100, 3, 4, 2**30, cpu=True) == expected


@pytest.mark.parametrize("kind", ["class-blocks", "trace", "rademacher:3"])
def test_many_groups_take_one_output_at_a_time_to_the_same_kernel(kind, monkeypatch):
    """A budget that needs many groups for all outputs at once: the class blocks and the trace
    (also the Rademacher estimate's) go one output at a time, through larger groups, and give
    the kernel of one unchunked pass (float64, 1e-12 relative), symmetric and with x2."""
    from ntkrobust.bridge import _entk_plan as entk_plan
    from ntkrobust.bridge import convolutions

    model = build_model(model_config("resnet18", (3, 8, 8), 10, width=4, seed=0))
    monkeypatch.setattr(convolutions, "_gram_pays", lambda *_: False)  # rows, which this budget sends to the groups
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    options = {"kind": kind, "dtype": torch.float64, "seed": 3}
    references = [empirical_ntk(model, x, **options), empirical_ntk(model, x, x[:2], **options)]
    plans = []
    original = entk_plan._plan_passes
    monkeypatch.setattr(entk_plan, "_plan_passes", lambda *args: plans.append(original(*args)) or plans[-1])
    chunked = [empirical_ntk(model, x, memory_budget=3_000_000, **options)]
    chunked.append(empirical_ntk(model, x, x[:2], memory_budget=3_000_000, **options))
    outputs = 3 if kind.startswith("rademacher") else 10
    # every output's own passes (and the dense layer's pass, None, that the kernel adds first)
    assert {step.output for step in plans[0]} == {None, *range(outputs)} and len(plans[0]) > outputs + 1
    for got, reference in zip(chunked, references, strict=True):
        assert relative_error(got, reference) < 1e-12
    # the full kernel pairs outputs: all at once, and this budget is too small for that
    with pytest.raises(BudgetError):
        empirical_ntk(model, x, kind="full", dtype=torch.float64, memory_budget=3_000_000)


def test_one_group_keeps_every_output_in_one_pass():
    from ntkrobust.bridge import _entk_plan as entk_plan

    sizes = {"a": 100, "b": 50}
    for kind in ("class-blocks", "trace", "full"):
        plan = entk_plan._plan_passes(KernelKind.parse(kind), sizes, 10, 10 * 150)
        assert [step.output for step in plan] == [None]
    # 15 groups of all outputs (>= C = 10): the class blocks go one output at a time; full never
    many = entk_plan._plan_passes(KernelKind("class-blocks"), sizes, 10, 100)
    assert len(many) == 10 * 2 and {step.output for step in many} == set(range(10))
    assert {step.output for step in entk_plan._plan_passes(KernelKind("full"), sizes, 10, 100)} == {None}
    # no parameter outside the dense layers: no pass, whatever the budget
    assert entk_plan._plan_passes(KernelKind("full"), {}, 10, 0) == []


def test_a_budget_too_small_for_one_chunk_is_refused():
    model = build_model(model_config("mnist-cnn", (1, 8, 8), 10, width=2))
    with pytest.raises(BudgetError, match="too small") as error:
        empirical_ntk(model, torch.rand(3, 1, 8, 8), memory_budget=2_000)
    assert "\n" not in str(error.value)
    # the check alone says the same, computing nothing, and passes every budget the kernel takes
    with pytest.raises(BudgetError, match="too small") as checked:
        check_memory_budget(model, torch.rand(3, 1, 8, 8), memory_budget=2_000)
    assert str(checked.value) == str(error.value)
    for kind in ("full", "class-blocks", "trace"):
        check_memory_budget(model, torch.rand(3, 1, 8, 8), kind=kind, batch_stats=True, memory_budget=2**20)
        empirical_ntk(model, torch.rand(3, 1, 8, 8), kind=kind, batch_stats=True, memory_budget=2**20)


def _stax_twin(name: str, x: np.ndarray, stax, jax):  # type: ignore[no-untyped-def]
    """A stax net, its parameters, and the torch twin carrying the same weights."""
    dense = {"W_std": float(np.sqrt(2.0)), "b_std": 0.1, "parameterization": "ntk"}
    model = build_model(model_config(name, x.shape[1:], 3, width=6)).double()
    if name == "fc2":
        layers = [stax.Flatten(), stax.Dense(6, **dense), stax.Relu(), stax.Dense(6, **dense), stax.Relu()]
        stax_x = x.reshape(x.shape[0], -1)
    else:  # conv1: stax is NHWC and flattens (h, w, c); torch is NCHW and flattens (c, h, w)
        layers = [stax.Conv(6, (3, 3), padding="SAME", **dense), stax.Relu(), stax.Flatten()]
        stax_x = x.transpose(0, 2, 3, 1)
    init_fn, apply_fn, _ = stax.serial(*layers, stax.Dense(3, **dense))
    _, params = init_fn(jax.random.PRNGKey(0), stax_x.shape)
    weights = [(np.array(w), np.array(b).reshape(-1)) for w, b in (p for p in params if p)]
    targets = [m for m in model.modules() if hasattr(m, "w_scale")]
    if name == "conv1":
        (conv_w, conv_b), (dense_w, dense_b) = weights
        height, width = x.shape[2:]
        dense_w = dense_w.reshape(height, width, 6, 3).transpose(2, 0, 1, 3).reshape(-1, 3)
        weights = [(conv_w.transpose(3, 2, 0, 1), conv_b), (dense_w.T, dense_b)]
    else:
        weights = [(w.T, b) for w, b in weights]
    with torch.no_grad():
        for layer, (weight, bias) in zip(targets, weights, strict=True):
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            layer.bias.copy_(torch.from_numpy(bias))
    return apply_fn, params, stax_x, model


@pytest.mark.parametrize("name", ["fc2", "conv1"])
def test_matches_neural_tangents_on_an_identical_net(jax_strict, name):
    """Cross-framework: stax's NTK-parameterised net and the torch twin with the same weights."""
    from ntkrobust.kernels._jax import jnp, nt, stax

    x = np.random.default_rng(0).random((5, 1, 5, 5))
    apply_fn, params, stax_x, model = _stax_twin(name, x, stax, jax_strict)
    stax_x = jnp.asarray(stax_x)
    outputs = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(outputs, np.asarray(apply_fn(params, stax_x)), atol=1e-13)
    ntk_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(), implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION)
    reference = np.asarray(ntk_fn(stax_x, None, params))
    assert reference.shape == (5, 5, 3, 3)
    assert relative_error(empirical_ntk(model, x, kind="full"), reference) < TOL


@pytest.mark.parametrize("name", ["fc1", "two-layer", "conv1"])
def test_twin_approaches_the_analytic_kernel_as_width_grows(digits_multiclass, jax_strict, name):
    from ntkrobust.kernels import compute_gram, get_architecture

    x = digits_multiclass.x_train[:12]
    analytic = np.asarray(compute_gram(get_architecture(name), x))

    def error(width: int) -> float:
        errors = []
        for seed in range(3):
            model = build_model(model_config(name, x.shape[1:], 2, width=width, seed=seed))
            trace = empirical_ntk(model, x, kind="trace", dtype=torch.float64)
            errors.append(np.linalg.norm(trace - analytic) / np.linalg.norm(analytic))
        return float(np.mean(errors))

    narrow, wide = error(32), error(2048)
    assert wide < narrow / 3  # ~1/√width: 8x expected for a 64x wider net
    assert wide < 0.1


def test_full_kernel_of_a_wide_twin_is_block_diagonal_across_outputs(digits_multiclass):
    x = digits_multiclass.x_train[:6]
    model = build_model(model_config("fc1", x.shape[1:], 3, width=4096))
    full = empirical_ntk(model, x, kind="full", dtype=torch.float64)
    diagonal = np.einsum("ijcc->ijc", full)
    off = full.copy()
    for c in range(3):
        off[:, :, c, c] = 0
    assert np.abs(off).max() < 0.02 * np.abs(diagonal).max()


def test_batch_statistics_are_those_of_the_input_set():
    model = build_model(model_config("resnet18", (3, 6, 6), 4, width=2, seed=0))
    x = torch.rand(10, 3, 6, 6, dtype=torch.float64)
    model = model.double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = with_batch_statistics(model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    with torch.no_grad():
        train_mode = model.train()(x)  # train-mode BatchNorm normalises with the batch's own statistics
        model.eval()
        torch.testing.assert_close(frozen(x), train_mode, rtol=1e-12, atol=1e-12)
        assert (frozen(x[:3]) - train_mode[:3]).abs().max() < 1e-12  # fixed: sub-batches see the same stats
    with_stats = empirical_ntk(model, x[:4], kind="full", batch_stats=True)
    running = empirical_ntk(model, x[:4], kind="full")
    assert relative_error(with_stats, explicit_gradient_gram(with_batch_statistics(model, x[:4]), x[:4], x[:4])) < TOL
    # between two sets, the statistics are those of both together
    cross = empirical_ntk(model, x[:4], x[4:7], kind="full", batch_stats=True)
    assert relative_error(cross, explicit_gradient_gram(with_batch_statistics(model, x[:7]), x[:4], x[4:7])) < TOL
    assert relative_error(with_stats, running) > 1e-3


@pytest.mark.parametrize(("text", "expected"), [("full", KernelKind("full")), ("class:7", KernelKind("class", 7))])
def test_kernel_kinds_parse(text, expected):
    assert KernelKind.parse(text) == expected and str(expected) == text


@pytest.mark.parametrize("text", ["diag", "class:", "class:-1", "class:x", "trace:1", "rademacher:0", "rademacher"])
def test_bad_kernel_kinds_are_refused(text):
    with pytest.raises(ValueError, match=r"full, class-blocks, trace, class:C .* or rademacher:K"):
        KernelKind.parse(text)


@pytest.mark.parametrize("kind", [("bogus",), ("rademacher",), ("trace", 2), ("full", 1), ("class", -1)])
def test_a_kernel_kind_built_directly_is_checked(kind):
    """``KernelKind("bogus")`` drew C times the trace, ``("rademacher",)`` NaN: as ``parse`` refuses."""
    with pytest.raises(ValueError, match=r"full, class-blocks, trace, class:C .* or rademacher:K"):
        KernelKind(*kind)


def test_inputs_with_nan_of_two_shapes_or_that_the_net_does_not_take_are_refused():
    model = build_model(model_config("fc1", (1, 4, 4), 3, width=4))
    x = torch.rand(3, 1, 4, 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        empirical_ntk(model, torch.where(x > 0.5, torch.nan, x))
    with pytest.raises(ValueError, match=r"inputs of shapes \(1, 4, 4\) and \(1, 5, 5\)"):
        empirical_ntk(model, x, torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match=r"the model does not take inputs of shape \(1, 5, 5\): "):
        empirical_ntk(model, torch.rand(2, 1, 5, 5))


def test_channels_last_images_that_the_net_refuses_are_named_as_such():
    """NHWC images: the conv's own message ("expected input[1, 8, 8, 3] to have 3 channels, but got
    8 channels") and the layout named, as ``compute_gram`` names it; a net's other refusals not."""
    model = build_model(model_config("cifar-cnn", (3, 8, 8), 10, width=2))
    with pytest.raises(ValueError, match=r"to have 3 channels.*look like NHWC \(channels last\): transpose them"):
        empirical_ntk(model, torch.rand(2, 8, 8, 3), kind="trace")
    with pytest.raises(ValueError, match="inputs of shape") as refused:
        empirical_ntk(model, torch.rand(2, 3, 6, 6), kind="trace")
    assert "NHWC" not in str(refused.value)


class _Reshaped(torch.nn.Module):
    """A net whose output is not (batch, outputs): a map, a vector or a tuple of scores."""

    def __init__(self, shape: tuple[int, ...] | None) -> None:
        super().__init__()
        self.linear, self.shape = torch.nn.Linear(4, 6), shape

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.linear(x.flatten(1))
        return (out,) if self.shape is None else out.reshape(-1, *self.shape)


@pytest.mark.parametrize(("shape", "got"), [((3, 2), "shape (1, 3, 2)"), ((), "shape (6,)"), (None, "tuple")])
def test_a_net_whose_output_is_not_batch_by_outputs_is_refused(shape, got):
    """Before: "too many values to unpack (expected 3)" from a contraction, an IndexError or an
    AttributeError; now one line saying what the net gave."""
    message = f"the model must map a batch to (batch, outputs) scores, got {got} for one input"
    for kind in ("trace", "full"):
        with pytest.raises(ValueError, match=re.escape(message)):
            empirical_ntk(_Reshaped(shape), torch.rand(2, 1, 2, 2), kind=kind)


def test_class_index_must_be_an_output():
    model = build_model(model_config("fc1", (1, 4, 4), 3, width=4))
    with pytest.raises(ValueError, match="class 3 is not an output"):
        empirical_ntk(model, torch.rand(2, 1, 4, 4), kind="class:3")


def test_a_net_without_running_statistics_takes_the_kernel_of_its_points_statistics():
    """RAT's "w/o buffer" net: its kernel is the buffered twin's with batch_stats (float64, 1e-12)."""

    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    buffered = build_model(model_config("resnet18", (3, 8, 8), 3, width=2, seed=1))
    free = build_model(model_config("resnet18", (3, 8, 8), 3, width=2, seed=1, running_stats=False))
    expected = empirical_ntk(buffered, x, kind="full", batch_stats=True, dtype=torch.float64)
    np.testing.assert_allclose(
        empirical_ntk(free, x, kind="full", dtype=torch.float64), expected, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("structured", [True, False])
def test_class_blocks_are_the_diagonal_blocks_of_the_full_kernel(structured):
    """class-blocks (N, N, C) = full[:, :, c, c] for every c, dense layers and generic ones (float64)."""
    from ntkrobust.kernels.metrics import kernel_metrics

    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    net = build_model(model_config("mnist-cnn", (1, 8, 8), 4, width=2, seed=0))
    full = empirical_ntk(net, x, kind="full", dtype=torch.float64, structured=structured)
    blocks = empirical_ntk(net, x, kind="class-blocks", dtype=torch.float64, structured=structured)
    assert blocks.shape == (7, 7, 4)
    np.testing.assert_allclose(blocks, np.einsum("nmcc->nmc", full), rtol=1e-12, atol=1e-12)
    labels = np.array([0, 1, 2, 3, 0, 1, 2])
    a, b = kernel_metrics(full, labels), kernel_metrics(blocks, labels)
    assert a.keys() == b.keys() and a["mean_specialization"] == pytest.approx(b["mean_specialization"], rel=1e-12)
    np.testing.assert_allclose(a["specialization_matrix"], b["specialization_matrix"], rtol=1e-12)


def _signed_blocks(full: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Per draw k, Σ_cd v_kc v_kd Θ_cd: the kernel of the signed output v_k·f."""
    return np.einsum("nmcd,kc,kd->knm", full, signs, signs)


def test_the_rademacher_estimate_is_the_signed_outputs_kernel():
    """rademacher:K = (1/KC) Σ_k v_k Θ v_kᵀ for its drawn signs (float64, 1e-12), dense and generic layers."""
    from ntkrobust.bridge.entk import rademacher_signs

    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    net = build_model(model_config("mnist-cnn", (1, 8, 8), 4, width=2, seed=0))
    full = empirical_ntk(net, x, kind="full", dtype=torch.float64)
    estimate = empirical_ntk(net, x, kind="rademacher:6", dtype=torch.float64, seed=11)
    signs = rademacher_signs(6, 4, 11).numpy()
    np.testing.assert_allclose(estimate, _signed_blocks(full, signs).mean(0) / 4, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(estimate, estimate.T, rtol=1e-12, atol=1e-12)  # one set of signs: a kernel
    cross = empirical_ntk(net, x[:2], x[2:], kind="rademacher:6", dtype=torch.float64, seed=11)
    np.testing.assert_allclose(cross, estimate[:2, 2:], rtol=1e-12, atol=1e-12)


def test_the_rademacher_estimator_is_unbiased_with_the_documented_variance():
    """Over all 2^C sign patterns the estimate is the trace kernel exactly (E v_c v_d = δ_cd); the
    variance of one draw is (1/C²) Σ_{c≠d} Θ_cd (Θ_cd + Θ_dc); and K = 4000 draws land within 4
    standard errors of the exact trace kernel."""
    import itertools

    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    net = build_model(model_config("mnist-cnn", (1, 8, 8), 3, width=2, seed=1))
    full = empirical_ntk(net, x, kind="full", dtype=torch.float64)
    trace = empirical_ntk(net, x, kind="trace", dtype=torch.float64)
    patterns = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
    draws = _signed_blocks(full, patterns) / 3
    np.testing.assert_allclose(draws.mean(0), trace, rtol=1e-12, atol=1e-12)
    off = full * (1 - np.eye(3))[None, None]
    variance = np.einsum("nmcd,nmcd->nm", off, off + off.transpose(0, 1, 3, 2)) / 9
    np.testing.assert_allclose(draws.var(0), variance, rtol=1e-10, atol=1e-12)
    estimate = empirical_ntk(net, x, kind="rademacher:4000", dtype=torch.float64, seed=0)
    assert np.all(np.abs(estimate - trace) <= 4 * np.sqrt(variance / 4000) + 1e-12)


def test_the_rademacher_draws_one_hot_cotangents_count_against_the_memory_budget():
    """jacrev holds K one-hot cotangents of K numbers for every example under vmap: 5,000 draws
    of 20 examples took 1.2 GB past a 50 MiB budget. Now the budget refuses one example's 200 MB."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)).double()
    x = torch.rand(20, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(BudgetError, match="too small for one example"):
        empirical_ntk(net, x, kind="rademacher:5000", memory_budget=50 * 2**20)


# Convolutions' Jacobian rows as g Pᵀ (``bridge.convolutions``): which layers take the route, and
# kernels equal to explicit per-example gradients (float64, TOL) on every variant.


def routes(
    model: nn.Module, shape: tuple[int, ...], outputs: int | None = None, *, paired: bool = False
) -> dict[str, int | str]:
    """Layer name → pooling p (1: plain g Pᵀ) or "gram" of the convolutions that take the
    structured route, for a Jacobian of ``outputs`` outputs (default all)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    example = torch.rand(1, *shape, dtype=next(model.parameters()).dtype)
    layers = conv_layers(model.eval(), example, trainable, outputs, paired=paired)
    return {name: "gram" if layer.gram else layer.pool for name, layer in layers.items()}


def test_plain_convolutions_take_the_route_and_a_pooled_first_one_its_shortcut():
    mnist = build_model(model_config("mnist-cnn", (1, 8, 8), 10, width=2))
    assert routes(mnist, (1, 8, 8)) == {"0": 2, "3": 1}  # conv2 is pooled too but does not see the input
    # the shortcut's pooled patches cost as much for any number of outputs: from K/2 outputs on
    assert routes(mnist, (1, 8, 8), outputs=5) == {"0": 2, "3": 1}
    assert routes(mnist, (1, 8, 8), outputs=4) == routes(mnist, (1, 8, 8), outputs=1) == {"0": 1, "3": 1}
    cifar = build_model(model_config("cifar-cnn", (3, 8, 8), 3, width=2))
    assert set(routes(cifar, (3, 8, 8)).values()) == {1} and len(routes(cifar, (3, 8, 8))) == 6
    resnet = build_model(model_config("resnet18", (3, 32, 32), 10))
    convolutions = [name for name, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    # CIFAR's 32 x 32: the last stage's 3 x 3 convolutions (S = 16) by their Grams, S²(C′O + K) <
    # C′OK; its 1 x 1 shortcut (K = 256) and every earlier stage (S >= 64) by their rows
    grams = {name for name in convolutions if name.startswith("layer4") and "downsample" not in name}
    expected = {name: "gram" if name in grams else 1 for name in convolutions}
    assert routes(resnet, (3, 32, 32)) == routes(resnet, (3, 32, 32), paired=True) == expected
    twin = build_model(model_config("conv1", (1, 5, 5), 3, width=3))
    assert routes(twin, (1, 5, 5)) == {}  # NTK-parametrised convolutions stay generic


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        return self.head(self.conv(self.conv(x)).flatten(1))


def test_convolutions_that_unfold_cannot_reproduce_stay_generic():
    assert routes(Reused(), (2, 6, 6)) == {}  # called twice per forward pass
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 16, 3))
    assert routes(grouped, (2, 6, 6)) == {}
    same = nn.Sequential(nn.Conv2d(2, 4, 3, padding="same"), nn.Flatten(), nn.Linear(4 * 36, 3))
    assert routes(same, (2, 6, 6)) == {}
    circular = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"), nn.Flatten(), nn.Linear(144, 3))
    assert routes(circular, (2, 6, 6)) == {}
    frozen = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 16, 3))
    frozen[0].weight.requires_grad_(False)
    assert routes(frozen, (2, 6, 6)) == {}
    # overlapping cells, or a pooling not right after the ReLU: the plain route, not the shortcut.
    # 5 outputs, so that the shortcut is weighed at all (from C' >= K/2, K = 10 here; with 3 outputs
    # these checks held whatever the pooling rule said)
    overlapping = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AvgPool2d(3, stride=2), nn.Flatten(), nn.Linear(12, 5)
    )
    assert routes(overlapping, (1, 7, 7)) == {"0": 1}
    late = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5))
    assert routes(late, (1, 6, 6)) == {"0": 1}
    cells = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 5))
    assert routes(cells, (1, 6, 6)) != {"0": 1}  # the control: disjoint cells right after the ReLU take it


def test_a_convolution_takes_its_grams_when_they_take_fewer_products_than_its_rows():
    """S = 2 positions, O = 2 channels, K = 5: Grams 4(2p + 5) against rows 10p products per pair,
    with p = C′ output products for the diagonal kinds, C′² for the full kernel."""
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(4, 4))
    assert routes(net, (1, 2, 3)) == {"0": 1}  # p = 4: 52 against 40
    assert routes(net, (1, 2, 3), paired=True) == {"0": "gram"}  # p = 16: 148 against 160
    assert routes(net, (1, 2, 3), outputs=1, paired=True) == {"0": 1}


def nets() -> dict[str, tuple[nn.Module, tuple[int, ...], dict[str, int | str]]]:
    """Variants of both routes: name → (net, input shape, expected routes)."""
    torch.manual_seed(0)
    cropped = nn.Sequential(  # 7 × 7 pooled in 2 × 2 cells drops a row and a column
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 2, stride=2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 1 * 1, 10),  # patches of 2·3·3 + 1: the shortcut from 10 outputs
    )
    thirds = nn.Sequential(nn.Conv2d(1, 3, 2, padding=1), nn.ReLU(), nn.AvgPool2d(3), nn.Flatten(), nn.Linear(27, 3))
    thirds[0].bias.requires_grad_(False)  # a frozen bias: not in the rows
    dilated = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=2, dilation=2), nn.Tanh(), nn.Conv2d(3, 2, 1), nn.Flatten(), nn.Linear(2 * 25, 3)
    )
    strided = nn.Sequential(  # 6 x 6 → 2 x 2 in steps of 3: S = 4, O = 16, K = 28 (with the bias)
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 16, 3, stride=3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    return {
        "gram-strided": (strided, (2, 6, 6), {"0": 1, "2": "gram"}),
        "pooled-cropped": (cropped, (2, 7, 7), {"0": 2, "3": "gram"}),  # "3": one position (S = 1)
        "pooled-3-frozen-bias": (thirds, (1, 8, 8), {"0": 3}),
        "dilated": (dilated, (2, 5, 5), {"0": 1, "2": 1}),
    }


@pytest.mark.parametrize("name", list(nets()))
def test_kernels_from_convolution_rows_equal_explicit_gradients(name):
    net, shape, expected = nets()[name]
    net = net.double().eval()
    assert routes(net, shape) == expected
    generator = torch.Generator().manual_seed(1)
    x1 = torch.rand(5, *shape, generator=generator, dtype=torch.float64)
    x2 = torch.rand(3, *shape, generator=generator, dtype=torch.float64)
    full = empirical_ntk(net, x1, x2, kind="full", dtype=torch.float64)
    reference = explicit_gradient_gram(net, x1, x2)
    assert relative_error(full, reference) < TOL
    blocks = empirical_ntk(net, x1, kind="class-blocks", dtype=torch.float64)
    assert relative_error(blocks, np.einsum("ijcc->ijc", explicit_gradient_gram(net, x1, x1))) < TOL


@pytest.mark.parametrize("kind", ["full", "class-blocks", "trace", "class:1", "rademacher:2"])
def test_every_kind_from_gram_convolutions_equals_the_generic_route(kind):
    net = build_model(model_config("resnet18", (3, 8, 8), 3, width=2, seed=0)).double().eval()
    assert "gram" in routes(net, (3, 8, 8)).values() and 1 in routes(net, (3, 8, 8)).values()
    generator = torch.Generator().manual_seed(2)
    x1 = torch.rand(5, 3, 8, 8, generator=generator, dtype=torch.float64)
    x2 = torch.rand(3, 3, 8, 8, generator=generator, dtype=torch.float64)
    for inputs in ((x1,), (x1, x2)):
        structured = empirical_ntk(net, *inputs, kind=kind, dtype=torch.float64)
        generic = empirical_ntk(net, *inputs, kind=kind, dtype=torch.float64, structured=False)
        assert relative_error(structured, generic) < TOL


def test_gram_blocks_of_a_few_rows_give_the_same_kernel(monkeypatch):
    from ntkrobust.bridge import convolutions

    net, shape, _ = nets()["gram-strided"]
    x = torch.rand(7, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    whole = {kind: empirical_ntk(net.double(), x, kind=kind, dtype=torch.float64) for kind in ("full", "class-blocks")}
    monkeypatch.setattr(convolutions, "_GRAM_BLOCK_ELEMENTS", 1)  # one kernel row per block
    for kind, kernel in whole.items():
        assert relative_error(empirical_ntk(net.double(), x, kind=kind, dtype=torch.float64), kernel) < TOL


@pytest.fixture
def generic_sizes(monkeypatch) -> list[set[str]]:
    """The parameters that each empirical_ntk call leaves to the generic groups, call by call."""
    from ntkrobust.bridge import _entk_plan as entk_plan

    seen: list[set[str]] = []
    original = entk_plan._plan_passes

    def spy(kind, sizes, *rest):
        seen.append(set(sizes))
        return original(kind, sizes, *rest)

    monkeypatch.setattr(entk_plan, "_plan_passes", spy)
    return seen


def test_rows_that_crowd_the_budget_go_through_the_groups_before_the_grams(generic_sizes):
    """Rows and Gram factors of every example above a quarter of the budget: first the rows'
    convolutions go through the groups, then, if still too much, the Gram ones; the same kernel."""
    net, shape, _ = nets()["gram-strided"]
    net = net.double()
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    roomy = empirical_ntk(net, x, kind="class-blocks", dtype=torch.float64)
    per_example = {"rows": 3 * 3 * 19, "gram": 4 * (3 * 16 + 28), "dense": 3 * 3 + 64}  # numbers kept
    structured_bytes = 6 * 8 * sum(per_example.values())
    without_rows = 6 * 8 * (per_example["gram"] + per_example["dense"])
    for budget in (4 * (structured_bytes + without_rows) // 2, 4 * without_rows - 8, 8 * structured_bytes):
        tight = empirical_ntk(net, x, kind="class-blocks", dtype=torch.float64, memory_budget=budget)
        assert relative_error(tight, roomy) < 1e-12
    assert generic_sizes == [set(), {"0.weight", "0.bias"}, {"0.weight", "0.bias", "2.weight", "2.bias"}, set()]
    assert relative_error(roomy, np.einsum("ijcc->ijc", explicit_gradient_gram(net, x, x))) < TOL


def test_rows_that_crowd_the_budget_go_through_the_groups_to_the_same_kernel(generic_sizes):
    """Convolution rows of every example above a quarter of the budget: the convolutions are
    chunked with the groups instead; the kernel is the same."""
    model = build_model(model_config("mnist-cnn", (1, 8, 8), 10, width=4, seed=0))
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    roomy = empirical_ntk(model, x, kind="class-blocks", dtype=torch.float64)
    rows_bytes = 6 * 8 * 10 * sum(p.numel() for name, p in model.named_parameters() if name[0] in "03")
    tight = empirical_ntk(model, x, kind="class-blocks", dtype=torch.float64, memory_budget=3 * rows_bytes)
    assert generic_sizes == [set(), {"0.weight", "0.bias", "3.weight", "3.bias"}]
    assert relative_error(tight, roomy) < 1e-12
    assert relative_error(roomy, np.einsum("ijcc->ijc", explicit_gradient_gram(model, x, x))) < TOL


def test_the_route_checks_run_once_when_the_convolutions_fall_back(monkeypatch):
    """A budget that sends the rows, then the Gram convolutions, to the groups builds three engines;
    the route checks (a forward pass noting outside uses, a gradient per structured layer) run at
    the first only, and the later engines leave the same layers to the groups. Was three runs:
    1-4 s each on ResNet-18."""
    from ntkrobust.bridge import jacobians

    net, shape, _ = nets()["gram-strided"]
    net = net.double()
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    checks = {"outside": 0, "gradients": 0}
    outside, gradients = jacobians.used_outside, jacobians.JacobianEngine.unfaithful_layers

    def counted_outside(*args):
        checks["outside"] += 1
        return outside(*args)

    def counted_gradients(self, example):
        checks["gradients"] += 1
        return gradients(self, example)

    monkeypatch.setattr(jacobians, "used_outside", counted_outside)
    monkeypatch.setattr(jacobians.JacobianEngine, "unfaithful_layers", counted_gradients)
    roomy = empirical_ntk(net, x, kind="class-blocks", dtype=torch.float64)
    assert checks == {"outside": 1, "gradients": 1}
    engines = []
    built = jacobians.JacobianEngine.__init__

    def counted_engine(self, *args, **kwargs):
        engines.append(kwargs["convolutions"])
        built(self, *args, **kwargs)

    monkeypatch.setattr(jacobians.JacobianEngine, "__init__", counted_engine)
    without_rows = 6 * 8 * (4 * (3 * 16 + 28) + 3 * 3 + 64)  # the Gram factors and dense numbers kept
    tight = empirical_ntk(net, x, kind="class-blocks", dtype=torch.float64, memory_budget=4 * without_rows - 8)
    assert engines == ["all", "gram", "none"] and checks == {"outside": 2, "gradients": 2}
    assert relative_error(tight, roomy) < 1e-12
