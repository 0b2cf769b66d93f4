"""The dot route of loss gradients (kernels._dot_route) against the reverse-mode route it replaces.

The reference is the route every machine used before: one VJP of ``Architecture.kernel_fn`` (or
supp. eq. 9's ``kernel_vjp`` for the closed form) per block, kept as ``kernels._compiled.Compiled.loss_grad_one_pass``
and used by convolutional kernels. Tolerances: float64 gradients agree to 1e-12 of their largest
entry (measured: 2-3e-15 on MNIST); where the reference is not within that of 0, the signs (the
ℓ∞ attack direction) are identical.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ntkrobust.attacks import pgd
from ntkrobust.kernels import fit_kernel_machine, get_architecture
from ntkrobust.kernels._dot_route import programs_for
from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.machine import _compiled
from ntkrobust.kernels.relu import fully_connected_entry_ntk, fully_connected_ntk
from ntkrobust.kernels.two_layer import two_layer_dot_ntk, two_layer_dot_partials

RELATIVE = 1e-12
ROUTES = [("fc1", "autodiff"), ("fc3", "autodiff"), ("two-layer", "autodiff"), ("two-layer", "closed-form")]


def reference_gradient(machine, x, index):
    """∇ₓL by reverse-mode autodiff of the kernel rows (or eq. 9's VJP), one chunk."""
    (xc, ac), *rest = machine._train_chunks(machine.n_train)
    assert not rest
    closed = machine.gradient == "closed-form"
    g = _compiled(machine.arch).loss_grad_one_pass(
        jnp.asarray(x, xc.dtype), jnp.asarray(index, jnp.int32), xc, ac, closed
    )
    return np.asarray(g)


def assert_same_gradient(got, want, relative=RELATIVE):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=relative * scale)
    clear = np.abs(want) > relative * scale
    np.testing.assert_array_equal(np.sign(got[clear]), np.sign(want[clear]))


@pytest.fixture(scope="module")
def machines(digits_binary, digits_multiclass, jax_strict):
    out = {}
    for name, gradient in ROUTES:
        for task, data in (("binary", digits_binary), ("multiclass", digits_multiclass)):
            machine = fit_kernel_machine(get_architecture(name), data.x_train, data.y_train, gradient=gradient)
            out[name, gradient, task] = (machine, data)
    return out


@pytest.mark.parametrize("task", ["binary", "multiclass"])
@pytest.mark.parametrize("name,gradient", ROUTES)
def test_dot_route_equals_reverse_mode_route(machines, name, gradient, task):
    machine, data = machines[name, gradient, task]
    assert programs_for(machine.arch, gradient == "closed-form") is not None
    x = data.x_test[:40].astype(np.float64)
    index = machine.target_index(data.y_test[:40])
    assert_same_gradient(np.asarray(machine.loss_gradient(x, index)), reference_gradient(machine, x, index))


def test_dot_route_at_and_near_training_points(fc2_multiclass, digits_multiclass, rng):
    """At a training point every kernel entry with it sits on the kink (r = 0): both routes take
    the symmetric subgradient there; a step of 1e-9 away is smooth again."""
    x = digits_multiclass.x_train[:6].astype(np.float64)
    x = np.concatenate([x, x + 1e-9 * rng.standard_normal(x.shape)])
    index = fc2_multiclass.target_index(np.tile(digits_multiclass.y_train[:6], 2))
    got = np.asarray(fc2_multiclass.loss_gradient(x, index))
    assert np.all(np.isfinite(got))
    assert_same_gradient(got, reference_gradient(fc2_multiclass, x, index), relative=1e-10)


def test_dot_route_in_chunks_equals_one_chunk(fc2_multiclass, digits_multiclass):
    small = dataclasses.replace(fc2_multiclass, memory_budget=8 * 16 * 64 * 4)
    assert small._blocks().train < small.n_train
    x = digits_multiclass.x_test[:70].astype(np.float64)
    index = fc2_multiclass.target_index(digits_multiclass.y_test[:70])
    got = np.asarray(small.loss_gradient(x, index))
    assert_same_gradient(got, reference_gradient(fc2_multiclass, x, index), relative=1e-11)


def test_float32_dot_route_equals_float32_reverse_mode(fc2_multiclass, digits_multiclass):
    machine = fc2_multiclass.with_precision("float32")
    x = digits_multiclass.x_test[:30].astype(np.float32)
    index = machine.target_index(digits_multiclass.y_test[:30])
    got = np.asarray(machine.loss_gradient(x, index))
    assert got.dtype == np.float32
    want = reference_gradient(machine, x, index)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_pgd_takes_the_same_steps_on_both_routes(fc2_multiclass, digits_multiclass):
    """The attack through the public API: identical iterates (the signs agree at every step)."""
    machine, data = fc2_multiclass, digits_multiclass
    x = jnp.asarray(data.x_test[:40], jnp.float64)
    index = machine.target_index(data.y_test[:40])
    reference = lambda xa, ib: jnp.asarray(reference_gradient(machine, xa, ib))  # noqa: E731
    kwargs = dict(eps=0.3, step=0.02, steps=8, seed=4)
    np.testing.assert_array_equal(pgd(machine.loss_gradient, x, index, **kwargs), pgd(reference, x, index, **kwargs))


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_entry_kernel_is_the_kernel_rows(depth, digits_multiclass, jax_strict):
    x = jnp.asarray(digits_multiclass.x_train[:50].reshape(50, -1), jnp.float64)
    y = jnp.asarray(digits_multiclass.x_test[:30].reshape(30, -1), jnp.float64)
    kw = dict(depth=depth, W_std=2**0.5, b_std=0.1)
    want = fully_connected_ntk(y, x, **kw)
    sq1, sq2 = jnp.sum(y * y, axis=1)[:, None], jnp.sum(x * x, axis=1)[None, :]
    got = fully_connected_entry_ntk(y @ x.T, sq1, sq2, x.shape[1], **kw)
    np.testing.assert_allclose(got, want, rtol=1e-14)


def test_two_layer_closed_form_partials_equal_autodiff(rng, jax_strict):
    """Supp. eq. 9's partial derivatives against jax.jvp of eq. 29, smooth entries and the kink."""
    x = jnp.asarray(rng.uniform(0, 1, size=(20, 30)))
    y = jnp.concatenate([x[:4], 3.0 * x[4:6], jnp.asarray(rng.uniform(0, 1, size=(10, 30)))])  # kinks first
    dots, sq1, sq2 = y @ x.T, jnp.sum(y * y, axis=1)[:, None], jnp.sum(x * x, axis=1)[None, :]
    a, s = two_layer_dot_partials(dots, sq1, sq2, 30)
    want_a = jax.jvp(lambda d: two_layer_dot_ntk(d, sq1, sq2, 30), (dots,), (jnp.ones_like(dots),))[1]
    want_s = jax.jvp(lambda q: two_layer_dot_ntk(dots, q, sq2, 30), (sq1,), (jnp.ones_like(sq1),))[1]
    np.testing.assert_allclose(a, want_a, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(s, want_s, rtol=1e-12, atol=1e-14)
    assert float(s[0, 0]) == 0.0 and float(s[4, 4]) == 0.0  # the kink's symmetric subgradient
