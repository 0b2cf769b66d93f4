"""Thirteenth mutation audit of the kernel machine (kernels.machine, kernels._compiled).

Each check pins what a mutant of the machine changed while the older tests passed: the
refusals of the public entry points (target indices, picked outputs, routes, Gram matrices,
classes, ridges), the ridge in the condition number and in the rcond cutoff (the docstring's
λ + ρ ≤ rcond·(λ_max + ρ)), the ``≤`` of the cutoff, machines with other dual coefficients,
the binary cross-entropy cotangent by hand, the condition-number warning's threshold, the
closed-form reverse-mode route of an architecture without a dot route, and training chunks
made in a caller's float32 trace. Routes are independent: numpy by hand, ``Architecture.kernel_fn``
with ``jax.grad`` and no chunks, a plain solve, Gram matrices with eigenvalues chosen by hand.
Tiny seeded data (13 training points of 1×3×4), float64 unless a test says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from test_machine_audit import FC_BUDGET_4, N_TRAIN, SHAPE, tiny_data

from ntkrobust.kernels import IllConditionedWarning, fit_kernel_machine, get_architecture, loss_cotangent
from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.machine import spectral_filter

EPS = np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def data(jax_strict):
    return tiny_data(seed=13, n_test=7)


def _gram_with_spectrum(eigenvalues: np.ndarray, seed: int = 5) -> np.ndarray:
    """Q diag(λ) Qᵀ with a seeded orthogonal Q (QR of a Gaussian), exactly symmetrised."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues), len(eigenvalues))))
    gram = (q * eigenvalues) @ q.T
    return 0.5 * (gram + gram.T)


def _kernel_rows(arch, x, x_train) -> np.ndarray:
    """Θ(x, X) by ``Architecture.kernel_fn`` in one call (no blocks, chunks or jitted programs)."""
    return np.asarray(arch.kernel_fn(arch.to_layout(jnp.asarray(x)), arch.to_layout(jnp.asarray(x_train)), "ntk"))


# -- spectral data: the ridge in the condition number and the cutoff, the cutoff's ≤ ---------------


def test_spectral_filter_refuses_a_zero_learning_rate():
    """η > 0 (docstring): η = 0 gives g_t ≡ 0, a machine frozen at f = 0 for every t, so it is
    refused like a negative η (``>= 0`` let it through silently)."""
    with pytest.raises(ValueError, match="learning_rate > 0"):
        spectral_filter(np.array([2.0, 1.0]), time=1.0, ridge=0.0, learning_rate=0.0, cutoff=0.0)


def test_condition_number_and_cutoff_carry_the_ridge(data):
    """With ρ = ridge·tr(Θ)/n, the condition number of the kept directions is (λ_max+ρ)/(λ_min+ρ)
    and the cutoff is n·ε·(λ_max+ρ) (module docstring); a mutant that left ρ out of either
    reported λ_max/λ_min (100 here instead of ~1.9) or a cutoff short by a factor 1+ρ/λ_max."""
    lam = np.linspace(2.0, 0.02, N_TRAIN)
    gram = _gram_with_spectrum(lam)
    x_train, _, y3, _ = data
    machine = fit_kernel_machine(get_architecture("fc1"), x_train, y3, gram=gram, ridge=0.5)
    rho = 0.5 * lam.sum() / N_TRAIN
    assert machine.ridge == pytest.approx(rho, rel=1e-12)
    assert machine.condition_number == pytest.approx((2.0 + rho) / (0.02 + rho), rel=1e-9)
    assert machine.cutoff == pytest.approx(N_TRAIN * EPS * (2.0 + rho), rel=1e-9, abs=0)  # ~7e-15: no abs slack
    assert machine.dropped_directions == 0


def test_an_eigenvalue_at_the_cutoff_is_dropped_and_counted(data):
    """λ + ρ ≤ cutoff is left out (``≤``, docstring and ``spectral_filter``): a cutoff set exactly
    at the smallest eigenvalue drops that one direction, and ``dropped_directions`` counts exactly
    the zeros of the filter (a ``<`` there counted none while the filter dropped it)."""
    gram = _gram_with_spectrum(np.linspace(2.0, 0.1, N_TRAIN))
    x_train, _, y3, _ = data
    machine = fit_kernel_machine(get_architecture("fc1"), x_train, y3, gram=gram)
    at_edge = dataclasses.replace(machine, cutoff=float(machine.eigenvalues[-1]))
    g = spectral_filter(at_edge.eigenvalues, time=math.inf, ridge=0.0, learning_rate=1.0, cutoff=at_edge.cutoff)
    assert np.count_nonzero(g == 0.0) == 1 and g[-1] == 0.0  # the precondition: the filter drops it
    assert at_edge.dropped_directions == 1
    lam = np.linalg.eigvalsh(gram)[::-1]
    assert at_edge.condition_number == pytest.approx(lam[0] / lam[-2], rel=1e-9)


# -- other dual coefficients --------------------------------------------------------------------


def test_with_dual_coef_gives_rows_times_the_weights_and_their_gradients(data):
    """``with_dual_coef(W)`` has outputs Θ(x, X) W with as many outputs as W has columns (4 here,
    the machine itself 3): logits against ``kernel_fn`` rows times W, the default output Jacobian
    against ``jax.grad`` of each column; W with the wrong number of rows is refused."""
    x_train, x_test, y3, _ = data
    machine = fit_kernel_machine(get_architecture("fc2"), x_train, y3, time=0.8)
    w = np.random.default_rng(2).standard_normal((N_TRAIN, 4))
    other = machine.with_dual_coef(w)
    arch = machine.arch
    rows = _kernel_rows(arch, x_test, x_train)
    np.testing.assert_allclose(np.asarray(other.logits(x_test)), rows @ w, rtol=1e-10, atol=1e-12)
    assert other.n_outputs == 4
    z = np.asarray(other.output_jacobian(x_test[:3]))
    assert z.shape == (3, 4, *SHAPE)
    xt = arch.to_layout(jnp.asarray(x_train))
    for r in range(4):
        want = jax.grad(lambda xb, r=r: jnp.sum(arch.kernel_fn(arch.to_layout(xb), xt, "ntk") @ jnp.asarray(w[:, r])))(
            jnp.asarray(x_test[:3])
        )
        np.testing.assert_allclose(z[:, r], want, rtol=0, atol=1e-9 * np.abs(want).max())
    with pytest.raises(ValueError, match=r"dual coefficients must have shape \(13, k\)"):
        machine.with_dual_coef(w[:-1])


def test_loss_gradient_of_other_dual_coefficients_indexes_their_outputs(data):
    """The loss of a ``with_dual_coef`` machine is over its own outputs (``loss_cotangent``): with 4
    outputs on a 3-class task index 3 is the fourth output's softmax cross-entropy (checked
    against ``jax.grad`` of it), and with one output only 0 and 1 (y = ∓1) exist, so 2 is refused
    (it was checked against the 3 classes and read as y = +3)."""
    x_train, x_test, y3, _ = data
    machine = fit_kernel_machine(get_architecture("fc1"), x_train, y3, time=0.8)
    w = np.random.default_rng(4).standard_normal((N_TRAIN, 4))
    four = machine.with_dual_coef(w)
    index = np.array([3, 0, 3])
    got = np.asarray(four.loss_gradient(x_test[:3], index))
    arch = machine.arch
    xt = arch.to_layout(jnp.asarray(x_train))

    def loss(xb):
        f = arch.kernel_fn(arch.to_layout(xb), xt, "ntk") @ jnp.asarray(w)
        return -jnp.sum(jax.nn.log_softmax(f)[jnp.arange(3), jnp.asarray(index)])

    want = np.asarray(jax.grad(loss)(jnp.asarray(x_test[:3])))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())
    one = machine.with_dual_coef(w[:, :1])
    assert np.all(np.isfinite(np.asarray(one.loss_gradient(x_test[:2], np.array([0, 1])))))
    with pytest.raises(ValueError, match=r"target indices must lie in \[0, 2\)"):
        one.loss_gradient(x_test[:2], np.array([0, 2]))


# -- refusals of the evaluation entry points ------------------------------------------------------


def test_output_jacobian_refuses_outputs_out_of_range_or_rows_and_unavailable_routes(data):
    """Picked outputs index α's columns inside JAX, which clamps an index past the end and wraps a
    negative one: k (one past the last) and −1 must be refused, not read as output k−1; so must
    an ``outputs`` with a row count other than the batch's, and the ``dots`` route of a kernel
    that has no x·x' form (conv1)."""
    x_train, x_test, y3, _ = data
    machine = fit_kernel_machine(get_architecture("fc2"), x_train, y3)
    x = x_test[:2]
    for bad in ([[0], [3]], [[-1], [0]]):
        with pytest.raises(ValueError, match=r"outputs must lie in \[0, 3\)"):
            machine.output_jacobian(x, np.array(bad))
    with pytest.raises(ValueError, match=r"outputs must have shape \(2, q\)"):
        machine.output_jacobian(x, np.array([[0], [1], [2]]))
    conv = fit_kernel_machine(get_architecture("conv1"), x_train[:5], y3[:5])
    with pytest.raises(ValueError, match="route 'dots' is not available"):
        conv.output_jacobian(x, route="dots")


def test_target_indices_must_be_whole_and_not_negative(data):
    """``loss_gradient`` reads positions in [0, k): a negative index (JAX's one_hot of −1 is all
    zeros, a wrapped index another class) and a float one (truncated by the int32 cast) are refused."""
    x_train, x_test, y3, _ = data
    machine = fit_kernel_machine(get_architecture("fc1"), x_train, y3)
    x = x_test[:3]
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        machine.loss_gradient(x, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"must be \(3,\) integers"):
        machine.loss_gradient(x, np.array([0.0, 1.5, 2.0]))


def test_binary_loss_cotangent_by_hand():
    """One output: ∂ softplus(−y f)/∂f = −y·σ(−y f) = −y/(1+e^{y f}) with y = 2·index − 1, index 1
    allowed (the check's class count is max(k, 2): a binary machine has one output but two
    classes); k outputs: softmax(f) − onehot by numpy."""
    f = np.array([[0.3], [-1.2], [2.0]])
    index = np.array([0, 1, 1])
    y = 2.0 * index - 1.0
    want = -y / (1.0 + np.exp(y * f[:, 0]))
    np.testing.assert_allclose(np.asarray(loss_cotangent(jnp.asarray(f), index))[:, 0], want, rtol=1e-13)
    f3 = np.array([[0.1, 2.0, -1.0], [0.5, 0.5, 0.0]])
    soft = np.exp(f3) / np.exp(f3).sum(axis=1, keepdims=True)
    want3 = soft - np.eye(3)[[2, 0]]
    np.testing.assert_allclose(np.asarray(loss_cotangent(jnp.asarray(f3), np.array([2, 0]))), want3, rtol=1e-13)


def test_fit_refuses_mismatched_inputs_grams_and_classes(data):
    """Refused before any fit: more labels than inputs, an infinite ridge (a zero machine
    otherwise), fewer than two classes, a repeated class (its first output would never be a
    target), a Gram of the wrong shape and one with a NaN (eigh turns it into finite nonsense)."""
    x_train, _, y3, _ = data
    arch = get_architecture("fc1")
    with pytest.raises(ValueError, match="13 inputs but 12 labels"):
        fit_kernel_machine(arch, x_train, y3[:12])
    with pytest.raises(ValueError, match="ridge must be a finite number"):
        fit_kernel_machine(arch, x_train, y3, ridge=math.inf)
    with pytest.raises(ValueError, match="at least two distinct classes"):
        fit_kernel_machine(arch, x_train, np.zeros(N_TRAIN, np.int64), classes=(0,))
    with pytest.raises(ValueError, match="at least two distinct classes"):
        fit_kernel_machine(arch, x_train, y3, classes=(0, 1, 1, 2))
    gram = _gram_with_spectrum(np.linspace(2.0, 0.5, N_TRAIN))
    with pytest.raises(ValueError, match="does not match 13 training points"):
        fit_kernel_machine(arch, x_train, y3, gram=gram[:-1, :-1])
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_kernel_machine(arch, x_train, y3, gram=np.where(np.eye(N_TRAIN) > 0, np.nan, gram))


def test_labels_must_be_one_dimensional_whole_class_ids(data):
    """``target_index`` maps whole class ids (floats such as 9.0 too); 5.5 would be truncated to
    class 5 and a 2-D array is not a list of labels: both refused."""
    x_train, _, _, y2 = data
    machine = fit_kernel_machine(get_architecture("fc1"), x_train, y2)
    np.testing.assert_array_equal(machine.target_index(np.array([9.0, 5.0])), [1, 0])
    with pytest.raises(ValueError, match="whole class ids"):
        machine.target_index(np.array([5.5, 9.0]))
    with pytest.raises(ValueError, match="1D array"):
        machine.target_index(np.array([[5], [9]]))


def test_auto_gradient_is_the_closed_form_where_the_architecture_has_one(data):
    """gradient="auto" (docstring: supp. eq. 9 where an analytic VJP exists) is "closed-form" for
    the two-layer net and "autodiff" for fc2, which has none."""
    x_train, _, y3, _ = data
    assert fit_kernel_machine(get_architecture("two-layer"), x_train, y3).gradient == "closed-form"
    assert fit_kernel_machine(get_architecture("fc2"), x_train, y3).gradient == "autodiff"


def test_condition_warning_starts_at_1e8(data):
    """CONDITION_WARNING = 1e8 (the ~1e-9 relative rounding of arc-cosine entries times 1e8 is
    ~0.1, visible): a ridgeless t = ∞ machine of condition number 3e8 warns, one of 3e7 does not."""
    x_train, _, y3, _ = data
    with pytest.warns(IllConditionedWarning, match="ill-conditioned"):
        fit_kernel_machine(get_architecture("fc1"), x_train, y3, gram=_gram_with_spectrum(np.geomspace(1, 1 / 3e8, 13)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)
        fit_kernel_machine(get_architecture("fc1"), x_train, y3, gram=_gram_with_spectrum(np.geomspace(1, 1 / 3e7, 13)))


# -- the closed form without a dot route: _compiled's one-pass and per-chunk VJPs ----------------


def test_closed_form_without_a_dot_route_equals_autodiff(data):
    """An architecture with an analytic VJP but no ``dot_partials_fn`` keeps the reverse-mode
    programs (``_dot_route.programs_for``): the closed-form one-pass gradient (one chunk) and the
    per-chunk ``rows_vjp`` (4-point chunks) against ``jax.grad`` of Σ softplus(−y Θ(x, X) α),
    α by a plain solve, at 1e-9 of the largest entry. The shipped two-layer net takes the dot
    route, so these programs had no test of their closed branch."""
    arch = dataclasses.replace(get_architecture("two-layer"), dot_partials_fn=None)
    x_train, x_test, _, y2 = data
    machine = fit_kernel_machine(arch, x_train, y2, gradient="closed-form")
    assert machine.gradient == "closed-form"
    index = machine.target_index(np.array([5, 9, 9, 5, 9, 5, 5]))
    xt = arch.to_layout(jnp.asarray(x_train))
    alpha = jnp.asarray(np.linalg.solve(_kernel_rows(arch, x_train, x_train), machine.targets))

    def loss(xb):
        f = arch.kernel_fn(arch.to_layout(xb), xt, "ntk") @ alpha
        return jnp.sum(jax.nn.softplus(-(2.0 * jnp.asarray(index) - 1.0) * f[:, 0]))

    want = np.asarray(jax.grad(loss)(jnp.asarray(x_test)))
    chunked = dataclasses.replace(machine, memory_budget=FC_BUDGET_4)
    assert machine._blocks().train == N_TRAIN and chunked._blocks().train == 4  # the precondition
    for m in (machine, chunked):
        np.testing.assert_allclose(np.asarray(m.loss_gradient(x_test, index)), want, atol=1e-9 * np.abs(want).max())


# -- chunks made in a caller's float32 trace ----------------------------------------------------------


def test_float32_chunks_of_a_callers_trace_do_not_leak_into_float64_calls(data):
    """A caller's jit in float32 (x64 off) makes float32 training chunks; the same machine called
    afterwards in float64 must use float64 chunks of its own: logits equal a fresh machine's at
    1e-12 (float32 chunks are ~1e-7 off) and are float64."""
    from jax.experimental import disable_x64

    x_train, x_test, y3, _ = data
    arch = get_architecture("fc2")
    machine = fit_kernel_machine(arch, x_train, y3)
    fresh = fit_kernel_machine(arch, x_train, y3)
    with disable_x64():
        low = jax.jit(machine.logits)(jnp.asarray(x_test, dtype=jnp.float32))
    assert low.dtype == jnp.float32  # the precondition: the trace ran in float32
    got = np.asarray(machine.logits(x_test))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.asarray(fresh.logits(x_test)), rtol=1e-12, atol=1e-13)


# -- BUGS on current main (they fail until /tmp/mut13a/fix.patch is applied) -------------------------


@pytest.mark.parametrize("name", ["fc2", "conv1"])
def test_bug_loss_gradient_takes_a_traced_target_index(name, data):
    """A bug this audit found, fixed with the test: ``loss_gradient`` documents that inside a JAX trace its
    indices cannot be checked, and ``check_target_index`` lets JAX arrays through for that, but the
    index then went through the host (``np.asarray`` of a tracer: TracerArrayConversionError), so
    ``jax.jit(machine.loss_gradient)(x, index)`` failed. It must equal the eager call (dot route
    for fc2, reverse mode for conv1) at 1e-12 of the largest entry."""
    x_train, x_test, y3, _ = data
    machine = fit_kernel_machine(get_architecture(name), x_train, y3)
    index = machine.target_index(y3[:4])
    want = np.asarray(machine.loss_gradient(x_test[:4], index))
    got = np.asarray(jax.jit(machine.loss_gradient)(jnp.asarray(x_test[:4]), jnp.asarray(index)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_bug_no_picked_outputs_give_an_empty_jacobian_on_every_route(data):
    """A bug this audit found, fixed with the test: ``output_jacobian`` accepts q = 0 picked outputs (its
    range check skips an empty ``outputs``) and the dots route returns (N, 0, ...), but the
    cotangents route divided the memory budget by q: ZeroDivisionError."""
    x_train, x_test, y3, _ = data
    machine = fit_kernel_machine(get_architecture("fc2"), x_train, y3)
    none = np.zeros((2, 0), np.int64)
    for route in ("dots", "cotangents", "pairs"):
        assert machine.output_jacobian(x_test[:2], none, route=route).shape == (2, 0, *SHAPE)
