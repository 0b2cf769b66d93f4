"""Mutation audit of the kernel machine (kernels.machine, _compiled, _dot_route, adversarial).

Each check takes a route that shares nothing with the code path it tests: α from a plain
numpy solve with scipy's matrix exponential (no shared eigendecomposition), input gradients by
``jax.grad`` of a loss written here on ``Architecture.kernel_fn`` (no chunks, blocks, dot route
or closed-form VJP), a training set cut into padded chunks against one chunk, Gram matrices
with eigenvalues chosen by hand for the rcond cutoff, and the attack algorithms called directly
for the dispatch of ``craft_adversarial``. Tiny seeded data (13 training points of 1×3×4),
float64 throughout; tolerances are stated where they are used.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest

from ntkrobust.kernels import IllConditionedWarning, craft_adversarial, fit_kernel_machine, get_architecture
from ntkrobust.kernels._jax import jax, jnp

N_TRAIN, SHAPE = 13, (1, 3, 4)
TIME, RIDGE, RATE = 0.7, 0.02, 1.7
#: dense nets cost 1 per kernel entry, conv1 on 3×4 images 12 (H·W): these budgets make 4-point
#: training chunks, so 13 points need 3 padding rows (α = 0 there) in the last chunk
FC_BUDGET_4 = 8 * 16 * 1 * 4 * 64
CONV_BUDGET_4 = 8 * 16 * 12 * 4 * 64


@pytest.fixture(scope="module")
def data(jax_strict):
    return tiny_data(seed=7, n_test=9)


def tiny_data(*, seed: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y3, y2): N_TRAIN seeded uniform images of SHAPE, ``n_test`` more, and
    labels of three classes (one-hot outputs) and of two (one ±1 output, 5 ↔ −1)."""
    rng = np.random.default_rng(seed)
    x_train = rng.uniform(0, 1, size=(N_TRAIN, *SHAPE))
    x_test = rng.uniform(0, 1, size=(n_test, *SHAPE))
    y3 = np.array([0, 1, 2] * 4 + [1])
    y2 = np.array([5, 9] * 6 + [9])
    return x_train, x_test, y3, y2


def _alpha(gram: np.ndarray, targets: np.ndarray, time: float, ridge_abs: float, rate: float) -> np.ndarray:
    """α_t = (Θ+ρI)⁻¹ (I − e^{−η(Θ+ρI)t}) Y by solve and scipy's expm (no eigendecomposition)."""
    import scipy.linalg

    shifted = gram + ridge_abs * np.eye(gram.shape[0])
    if math.isinf(time):
        return np.linalg.solve(shifted, targets)
    return np.linalg.solve(shifted, (np.eye(gram.shape[0]) - scipy.linalg.expm(-rate * time * shifted)) @ targets)


def _plain_loss_gradient(machine, x_train, x, index, time=TIME, ridge=RIDGE, rate=RATE):
    """∇ₓ of Σ cross-entropy by jax.grad of Θ(x, X) α written here, α from ``_alpha``:
    softplus(−y f) with y = 2·index − 1 for one output, −log softmax(f)[index] for k."""
    arch = machine.arch
    xt = arch.to_layout(jnp.asarray(x_train))
    gram = np.asarray(arch.kernel_fn(xt, xt, "ntk"))
    alpha = jnp.asarray(_alpha(gram, machine.targets, time, ridge * np.trace(gram) / len(x_train), rate))

    def loss(xb):
        f = arch.kernel_fn(arch.to_layout(xb), xt, "ntk") @ alpha
        if f.shape[1] == 1:
            return jnp.sum(jax.nn.softplus(-(2.0 * jnp.asarray(index) - 1.0) * f[:, 0]))
        return -jnp.sum(jax.nn.log_softmax(f, axis=1)[jnp.arange(f.shape[0]), jnp.asarray(index)])

    return np.asarray(jax.grad(loss)(jnp.asarray(x)))


def _fit(name, data, *, classes=3, gradient="auto", **kw):
    x_train, _, y3, y2 = data
    y = y3 if classes == 3 else y2
    kw = {"time": TIME, "ridge": RIDGE, "learning_rate": RATE} | kw
    return fit_kernel_machine(get_architecture(name), x_train, y, gradient=gradient, **kw)


# -- training chunks with padding: equal to one chunk and to the plain formula -------------------


@pytest.mark.parametrize("name", ["fc2", "conv1"])
def test_padded_training_chunks_equal_one_chunk_and_autodiff(name, data):
    """13 points in 4-point chunks (the last padded with 3 rows of α = 0): logits and loss
    gradients equal the one-chunk machine at 1e-10 and the loss gradient equals
    jax.grad of the plain formula at 1e-8 relative. conv1 takes the reverse-mode route of several
    chunks (all logits, then one VJP per chunk), fc2 the dot route; the existing chunk tests use
    200 = 50·4 points, where no padding row exists. Chunks of one point: the logits again."""
    machine = _fit(name, data)
    budget = CONV_BUDGET_4 if name == "conv1" else FC_BUDGET_4
    small = dataclasses.replace(machine, memory_budget=budget)
    assert small._blocks().train == 4 and machine._blocks().train == N_TRAIN  # the precondition
    chunks = small._train_chunks(4)
    assert len(chunks) == 4 and {c[0].shape[0] for c in chunks} == {4}  # equal chunks, one compiled shape
    _, x_test, y3, _ = data
    index = machine.target_index(y3[:9])
    np.testing.assert_allclose(small.logits(x_test), machine.logits(x_test), rtol=1e-10, atol=1e-12)
    got = np.asarray(small.loss_gradient(x_test, index))
    scale = np.abs(got).max()
    np.testing.assert_allclose(got, np.asarray(machine.loss_gradient(x_test, index)), rtol=0, atol=1e-10 * scale)
    want = _plain_loss_gradient(machine, data[0], x_test, index)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * np.abs(want).max())
    single = dataclasses.replace(machine, memory_budget=budget // 4)  # one training point a chunk
    assert single._blocks().train == 1 and len(single._train_chunks(1)) == N_TRAIN
    np.testing.assert_allclose(single.logits(x_test), machine.logits(x_test), rtol=1e-10, atol=1e-12)


def test_closed_form_two_layer_gradient_at_finite_time_equals_autodiff(data):
    """Supp. eq. 9's closed form (dot route, binary) against jax.grad of the plain formula at a
    finite time with a ridge: 1e-8 of the largest entry."""
    machine = _fit("two-layer", data, classes=2, gradient="closed-form")
    _, x_test, _, y2 = data
    index = machine.target_index(y2[:9])
    want = _plain_loss_gradient(machine, data[0], x_test, index)
    np.testing.assert_allclose(machine.loss_gradient(x_test, index), want, rtol=0, atol=1e-8 * np.abs(want).max())


# -- output Jacobians: every route, picked outputs ------------------------------------------------


@pytest.mark.parametrize(
    "name,gradient,route",
    [("fc2", "autodiff", "cotangents"), ("fc2", "autodiff", "pairs"), ("two-layer", "closed-form", "cotangents")],
)
def test_every_jacobian_route_is_the_gradient_of_each_output(name, gradient, route, data):
    """z[b, r] = ∇ₓ f_r(x_b) by jax.grad of Θ(x, X) α written here (α by solve and expm), at
    1e-8 relative, for each route forced by name ("auto" picks only ``dots`` for dense nets, so
    the other routes had no test of their values; ``dots`` has one in test_machine)."""
    machine = _fit(name, data, gradient=gradient)
    x_train, x_test, _, _ = data
    x = x_test[:4]
    arch = machine.arch
    xt = arch.to_layout(jnp.asarray(x_train))
    gram = np.asarray(arch.kernel_fn(xt, xt, "ntk"))
    alpha = _alpha(gram, machine.targets, TIME, RIDGE * np.trace(gram) / N_TRAIN, RATE)
    z = np.asarray(machine.output_jacobian(x, route=route))
    assert z.shape == (4, 3, *SHAPE)
    for r in range(3):
        want = jax.grad(lambda xb, r=r: jnp.sum(arch.kernel_fn(arch.to_layout(xb), xt, "ntk") @ alpha[:, r]))(
            jnp.asarray(x)
        )
        np.testing.assert_allclose(z[:, r], want, rtol=0, atol=1e-8 * np.abs(want).max())


def test_picked_outputs_are_those_rows_of_the_full_jacobian(data):
    """``outputs[b]`` picks, per example and in its order, rows of the full Jacobian (the
    taylor attacks pick the true class and a wrong one); the picking is the machine's, whatever
    the route."""
    route = "cotangents"
    machine = _fit("fc2", data)
    x = data[1][:4]
    full = np.asarray(machine.output_jacobian(x, route=route))
    outputs = np.array([[2, 0], [1, 1], [0, 2], [2, 1]])
    picked = np.asarray(machine.output_jacobian(x, outputs, route=route))
    np.testing.assert_allclose(picked, full[np.arange(4)[:, None], outputs], rtol=1e-12, atol=1e-14)


# -- the spectral machinery: rcond cutoff, condition number, warnings, restrictions ---------------


def _gram_with_spectrum(eigenvalues: np.ndarray, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Q diag(λ) Qᵀ with a seeded orthogonal Q (QR of a Gaussian), exactly symmetrised."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues), len(eigenvalues))))
    gram = (q * eigenvalues) @ q.T
    return 0.5 * (gram + gram.T), q


def test_rcond_is_n_times_machine_epsilon_of_the_largest_eigenvalue(data):
    """13 eigenvalues, the last 1e-15: above ε·λ_max (2.2e-16) but below n·ε·λ_max (2.9e-15), so
    the Moore-Penrose machine leaves it out (one dropped direction, a warning) and α∞ is the
    pseudo-inverse with that rcond, by numpy's pinv; keeping it would add 1e15·vvᵀY to α. The
    condition number is that of the kept directions, 1/0.1."""
    lam = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.3, 0.25, 0.2, 0.1, 1e-15])
    assert np.finfo(np.float64).eps < lam[-1] < N_TRAIN * np.finfo(np.float64).eps
    gram, _ = _gram_with_spectrum(lam)
    x_train, _, y3, _ = data
    with pytest.warns(IllConditionedWarning, match="1 of 13"):
        machine = fit_kernel_machine(get_architecture("fc1"), x_train, y3, gram=gram)
    assert machine.dropped_directions == 1
    assert machine.condition_number == pytest.approx(10.0, rel=1e-9)
    want = np.linalg.pinv(gram, rcond=N_TRAIN * np.finfo(np.float64).eps, hermitian=True) @ machine.targets
    np.testing.assert_allclose(np.asarray(machine.dual_coef), want, rtol=1e-8, atol=1e-9)


def test_ill_conditioning_warns_only_for_the_ridgeless_machine_at_infinity(data):
    """Condition number 1e10 and nothing dropped: t = ∞ (no ridge) warns; a finite time, whose
    filter is bounded by ηt, does not, and neither does a ridge."""
    gram, _ = _gram_with_spectrum(np.geomspace(1.0, 1e-10, N_TRAIN))
    x_train, _, y3, _ = data
    with pytest.warns(IllConditionedWarning, match="ill-conditioned"):
        fit_kernel_machine(get_architecture("fc1"), x_train, y3, gram=gram)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)
        fit_kernel_machine(get_architecture("fc1"), x_train, y3, gram=gram, time=5.0)
        fit_kernel_machine(get_architecture("fc1"), x_train, y3, gram=gram, ridge=1e-3)


def test_a_precomputed_gram_is_read_as_its_symmetric_part(data):
    """A Gram off symmetry by 1e-6 (a user's float32 round trip, say) gives the machine of
    (G + Gᵀ)/2, not of one of its triangles: α against a solve at 1e-9 relative."""
    gram, _ = _gram_with_spectrum(np.linspace(2.0, 0.5, N_TRAIN))
    skew = 1e-6 * np.triu(np.random.default_rng(1).standard_normal(gram.shape), 1)
    x_train, _, y3, _ = data
    machine = fit_kernel_machine(get_architecture("fc1"), x_train, y3, gram=gram + skew)
    want = np.linalg.solve(gram + 0.5 * (skew + skew.T), machine.targets)
    np.testing.assert_allclose(np.asarray(machine.dual_coef), want, rtol=1e-9, atol=1e-12)


def test_restriction_takes_a_set_of_valid_indices(data):
    """restricted_to(R) is the machine of the set R: a repeated index counts once, and an index
    outside [0, n) (a negative one too: numpy would wrap it to the smallest eigenvalue) is refused."""
    machine = _fit("fc1", data)
    x = data[1]
    np.testing.assert_allclose(
        machine.restricted_to([2, 0, 2, 2]).logits(x), machine.restricted_to([0, 2]).logits(x), rtol=1e-13
    )
    for bad in ([-1], [0, N_TRAIN], []):
        with pytest.raises(ValueError, match="eigen-indices must be in"):
            machine.restricted_to(bad)


# -- labels, predictions, dtypes -------------------------------------------------------------------


def test_a_zero_output_predicts_the_first_class(data):
    """f > 0 is the second class (y = +1), so f = 0 (every point at t = 0) is the first (y = −1)."""
    from ntkrobust.kernels import predicted_index

    assert predicted_index(np.array([[0.0], [1e-300], [-0.0]])).tolist() == [0, 1, 0]
    machine = _fit("fc1", data, classes=2)
    assert machine.classes == (5, 9)
    np.testing.assert_array_equal(machine.at_time(0.0).predict(data[1]), np.full(9, 5))


def test_precision_and_the_callers_dtype_are_kept(data):
    """``precision`` of fit_kernel_machine reaches the machine (float32 logits); the gradients come
    back in the caller's dtype (float32 input of a float64 machine gives float32, float64 input
    float64) and agree with the float64 ones at 1e-5 of their largest entry."""
    _, x_test, y3, _ = data
    machine = _fit("fc2", data)
    fast = _fit("fc2", data, precision="float32")
    assert fast.precision == "float32" and np.asarray(fast.logits(x_test)).dtype == np.float32
    index = machine.target_index(y3[:9])
    g64 = np.asarray(machine.loss_gradient(x_test, index))
    g32 = machine.loss_gradient(x_test.astype(np.float32), index)
    assert g32.dtype == np.float32 and g64.dtype == np.float64
    np.testing.assert_allclose(np.asarray(g32), g64, rtol=0, atol=1e-5 * np.abs(g64).max())
    assert machine.output_jacobian(x_test[:2].astype(np.float32)).dtype == np.float32


# -- craft_adversarial passes the spec through ------------------------------------------------------


def test_craft_adversarial_runs_the_spec_it_is_given(data):
    """PGD with 3 steps of 0.03, no random start, in ℓ2, and both taylor attacks in ℓ2, against the
    algorithms of ``attacks`` called directly with the same arguments; the two taylor variants
    differ on these points (so a swap shows), and inputs outside [0, 1] are refused."""
    from ntkrobust.attacks import AttackSpec, pgd, taylor_max_l1, taylor_sum

    machine = _fit("fc2", data)
    _, x_test, y3, _ = data
    x, labels = x_test.astype(np.float32), y3[:9]
    index = machine.target_index(labels)
    spec = AttackSpec("pgd", 0.5, "l2", step=0.03, steps=3, random_start=False, seed=2)
    want = pgd(machine.loss_gradient, jnp.asarray(x), index, eps=0.5, norm="l2", step=0.03, steps=3, random_start=False)
    np.testing.assert_allclose(craft_adversarial(machine, x, labels, spec), np.asarray(want), rtol=0, atol=1e-6)
    direct = {
        "taylor-l1": np.asarray(taylor_max_l1(machine.output_jacobian, jnp.asarray(x), index, eps=0.5, norm="l2")),
        "taylor-sum": np.asarray(taylor_sum(machine.output_jacobian, jnp.asarray(x), index, eps=0.5, norm="l2")),
    }
    assert np.abs(direct["taylor-l1"] - direct["taylor-sum"]).max() > 1e-3  # the precondition
    for method, want in direct.items():
        got = craft_adversarial(machine, x, labels, AttackSpec(method, 0.5, "l2"))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    for method in ("fgsm", "taylor-sum"):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            craft_adversarial(machine, x + 1.0, labels, AttackSpec(method, 0.1))
