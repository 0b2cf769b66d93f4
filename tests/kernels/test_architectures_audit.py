"""Mutation audit of the architecture registry (``kernels.architectures``), eighth round: each
test fails on a mutation of ``kernels/architectures.py`` that survived the earlier tests.

Independent routes: the closed-form arc-cosine NTK of a ReLU net in numpy float64 (Cho & Saul;
Jacot et al.; ``_arc_cosine_ntk`` of the neighbouring audit) for fully connected nets of scales
other than the paper's, stax nets built in the tests for convolutional ones, layouts and costs
written out index by index, the registry's names and messages as the docstrings state them.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from test_kernels_audit import _arc_cosine_ntk, _stax_conv

from ntkrobust.kernels import ARCHITECTURES, UnknownArchitectureError, get_architecture, is_registered
from ntkrobust.kernels.architectures import convolutional, fully_connected, per_architecture

# Scales that differ in the second digit only: a fingerprint that rounds them (or leaves one
# argument out) hands one net's object, and kernel, to the other.
FC_CONFIGS = [(2, 1.3, 0.4), (2, 1.31, 0.4), (2, 1.3, 0.41), (3, 1.3, 0.4)]


@pytest.fixture
def pair(rng):
    # mixed signs: angles across (0, π), so the π − θ factor and the sine part both matter
    return rng.standard_normal((6, 10)), rng.standard_normal((5, 10))


def test_each_depth_and_scale_is_its_own_registered_net_with_its_own_closed_form(pair, jax_strict):
    """fully_connected(depth, W_std, b_std) for four nets one argument apart: four objects, four
    fingerprints, and each kernel route (``kernel_fn``, ``dot_kernel_fn``, ``entry_kernel_fn``)
    the arc-cosine NTK of its own depth and scales at rtol 1e-12. The entry route (the loss
    gradients of ``kernels._dot_route``) was only ever compared at the paper's scales, where
    W_std and b_std swapped in it, or its depth off by one, survived the earlier tests."""
    from ntkrobust.kernels._jax import jnp

    x1, x2 = pair
    archs = [fully_connected(depth, W_std=w, b_std=b) for depth, w, b in FC_CONFIGS]
    assert len({id(a) for a in archs}) == len({a.fingerprint() for a in archs}) == len(FC_CONFIGS)
    dots = jnp.asarray(x1 @ x2.T)
    sq1 = jnp.asarray(np.sum(x1 * x1, axis=1))[:, None]
    sq2 = jnp.asarray(np.sum(x2 * x2, axis=1))[None, :]
    for arch, (depth, w, b) in zip(archs, FC_CONFIGS, strict=True):
        assert is_registered(arch) and arch is fully_connected(depth, W_std=w, b_std=b)
        assert dict(arch.hyperparameters) == {"depth": depth, "W_std": w, "b_std": b}
        want = _arc_cosine_ntk(x1, x2, depth, w, b)
        got = np.asarray(arch.kernel_fn(jnp.asarray(x1), jnp.asarray(x2), "ntk"))
        np.testing.assert_allclose(got, want, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(arch.entry_kernel_fn(dots, sq1, sq2, 10)), want, rtol=1e-12)
        full = (jnp.broadcast_to(sq1, dots.shape), jnp.broadcast_to(sq2, dots.shape))
        np.testing.assert_allclose(np.asarray(arch.dot_kernel_fn(dots, *full, 10)), want, rtol=1e-12)


def test_a_convolutional_net_of_other_scales_is_its_own_net(rng, jax_strict):
    """convolutional(1, 1.2, b) for b = 0.3 and 0.35: two objects, each stax's kernel of a net
    built here with its own b_std (rtol 1e-12), on non-square NHWC images."""
    from ntkrobust.kernels._jax import jnp

    x1 = jnp.asarray(rng.standard_normal((2, 4, 3, 2)))
    x2 = jnp.asarray(rng.standard_normal((3, 4, 3, 2)))
    archs = {b: convolutional(1, W_std=1.2, b_std=b) for b in (0.3, 0.35)}
    assert archs[0.3] is not archs[0.35] and archs[0.3].fingerprint() != archs[0.35].fingerprint()
    for b, arch in archs.items():
        np.testing.assert_allclose(arch.kernel_fn(x1, x2, "ntk"), _stax_conv(1, 1.2, b)(x1, x2, "ntk"), rtol=1e-12)


def test_every_registered_name_names_its_net():
    """``arch.name`` is what results, the cache and the CLI record: ``get_architecture(n).name``
    is n for every n, and a description states the depth and the scales (√2 as 1.414, 0.1).
    Names without their depth ('fc', 'conv': the fingerprint still told them apart) and a
    description with W_std and b_std swapped survived the earlier tests."""
    for name in ARCHITECTURES:
        assert get_architecture(name).name == name
    assert get_architecture("fc3").description == "fully connected, 3 hidden ReLU layer(s), W_std=1.414, b_std=0.1"
    assert fully_connected(2, W_std=1.3, b_std=0.4).description.endswith("2 hidden ReLU layer(s), W_std=1.3, b_std=0.4")
    assert get_architecture("conv2").description.startswith("fully convolutional, 2 3x3 ReLU conv layer(s)")


def test_an_unknown_name_is_an_unknown_architecture_error_that_reads_as_one_line():
    """A KeyError (callers catch it as such) whose text is the message itself: KeyError's own
    ``str`` quotes it, and the quoted text still matched every earlier test."""
    with pytest.raises(UnknownArchitectureError) as error:
        get_architecture("fc6")
    assert isinstance(error.value, KeyError)
    assert str(error.value) == (
        "unknown architecture 'fc6': choose one of fc1, fc2, fc3, fc4, fc5, conv1, conv2, two-layer"
    )


def test_layouts_move_each_pixel_where_the_index_says_and_back():
    """Non-square NCHW images numbered 0..N·C·H·W − 1: the convolutional layout holds x[n, c, h, w]
    at [n, h, w, c], the flat one at [n, (c·H + h)·W + w], written out index by index;
    ``from_layout`` undoes each. A transpose to (N, W, H, C) (conv kernels give the same Θ for
    both inputs transposed alike) and a gradient transposed back to (N, C, W, H) survived."""
    from ntkrobust.kernels._jax import jnp

    n, c, h, w = 2, 3, 4, 5
    x = np.arange(n * c * h * w, dtype=np.float64).reshape(n, c, h, w)
    conv, fc = get_architecture("conv1"), get_architecture("fc1")
    nhwc, flat = np.asarray(conv.to_layout(jnp.asarray(x))), np.asarray(fc.to_layout(jnp.asarray(x)))
    assert nhwc.shape == (n, h, w, c) and flat.shape == (n, c * h * w)
    for i, k, r, s in itertools.product(range(n), range(c), range(h), range(w)):
        assert nhwc[i, r, s, k] == x[i, k, r, s] == flat[i, (k * h + r) * w + s]
    np.testing.assert_array_equal(np.asarray(conv.from_layout(jnp.asarray(nhwc), x.shape)), x)
    np.testing.assert_array_equal(np.asarray(fc.from_layout(jnp.asarray(flat), x.shape)), x)


def test_entry_costs_are_one_per_dense_entry_and_one_per_pixel_for_convolutions():
    """The module docstring: H·W intermediate floats per Gram entry for flatten-readout
    convolutions (one covariance per pixel), 1 for dense nets, whatever the channels: (N, 3, 4,
    7) costs 28. W² and a dense cost of 2 survived the earlier tests (they only size batches)."""
    assert get_architecture("conv2").entry_cost((5, 3, 4, 7)) == 28
    assert get_architecture("conv1").entry_cost((1, 1, 6, 2)) == 12
    for name in ("fc1", "fc5", "two-layer"):
        assert get_architecture(name).entry_cost((5, 3, 4, 7)) == 1


def test_convolutional_nets_refuse_images_without_four_axes():
    """(N, H, W) images have no channel axis for a conv layout: refused by name (the transpose
    of ``to_layout`` failed with JAX's axes error when either check was dropped); dense nets take them."""
    with pytest.raises(ValueError, match=r"architecture conv1 needs NCHW images, got shape \(4, 8, 8\)"):
        get_architecture("conv1").check_input((4, 8, 8))
    with pytest.raises(ValueError, match=r"conv1 needs NCHW images, got shape \(4, 8, 8\)"):
        get_architecture("conv1").to_layout(np.zeros((4, 8, 8)))
    get_architecture("fc1").check_input((4, 8, 8))


def test_programs_are_built_once_per_architecture_object_and_options():
    """``per_architecture``: a second call with the same object and options returns the first
    programs without building (compiling) them again; other options or another object build
    anew. A build on every call survived the earlier tests (it only costs compile time)."""
    built = []

    def build(arch, *options):
        built.append((arch.name, options))
        return object()

    get = per_architecture(build)
    fc1, fc2 = get_architecture("fc1"), get_architecture("fc2")
    first = get(fc1, True)
    assert get(fc1, True) is first and built == [("fc1", (True,))]
    assert get(fc1, False) is not first and get(fc2, True) is not first
    assert built == [("fc1", (True,)), ("fc1", (False,)), ("fc2", (True,))]


def _eq29(s, q1, q2):
    """Supp. eq. 29 as a function of x·x', ‖x‖², ‖x'‖²: (1/2 − arccos(u)/(2π))·x·x', written here
    with jnp's arccos (angles away from 0 and π: no kink) so that JAX can differentiate it."""
    from ntkrobust.kernels._jax import jnp

    return (0.5 - jnp.arccos(s / jnp.sqrt(q1 * q2)) / (2 * np.pi)) * s


def test_the_two_layer_entry_carries_its_closed_form_kernel_gradient_and_partials(rng, jax_strict):
    """The registry's two-layer net, every route it hands out against eq. 29 written here: the
    kernel, the closed-form input VJP (supp. eq. 9) against autodiff of eq. 29 in x, and the
    closed-form partials in x·x' and ‖x‖² against autodiff of eq. 29 in those (rtol 1e-10).
    Without ``kernel_vjp`` or ``dot_partials_fn`` the machines fall back to autodiff routes of
    equal values, so leaving either out of the registry's object survived the earlier tests."""
    from ntkrobust.kernels._jax import jax, jnp

    arch = get_architecture("two-layer")
    x1, x2 = jnp.asarray(rng.standard_normal((4, 7))), jnp.asarray(rng.standard_normal((3, 7)))
    cotangent = jnp.asarray(rng.standard_normal((4, 3)))

    def kernel(z):
        return _eq29(z @ x2.T, jnp.sum(z * z, axis=1)[:, None], jnp.sum(x2 * x2, axis=1)[None, :])

    np.testing.assert_allclose(arch.kernel_fn(x1, x2, "ntk"), kernel(x1), rtol=1e-12)
    assert arch.kernel_vjp is not None and arch.dot_partials_fn is not None
    np.testing.assert_allclose(arch.kernel_vjp(x1, x2, cotangent), jax.vjp(kernel, x1)[1](cotangent)[0], rtol=1e-10)
    dots = x1 @ x2.T
    sq1 = jnp.broadcast_to(jnp.sum(x1 * x1, axis=1)[:, None], dots.shape)
    sq2 = jnp.broadcast_to(jnp.sum(x2 * x2, axis=1)[None, :], dots.shape)
    along_dots, along_norm = arch.dot_partials_fn(dots, sq1, sq2, 7)
    want_dots, want_norm = jax.vmap(jax.vmap(jax.grad(_eq29, argnums=(0, 1))))(dots, sq1, sq2)
    np.testing.assert_allclose(along_dots, want_dots, rtol=1e-10)
    np.testing.assert_allclose(along_norm, want_norm, rtol=1e-10)


def test_a_registered_architecture_cannot_be_changed_in_place():
    """Programs are compiled once per object and Grams cached by its fingerprint: an object whose
    ``kernel_fn`` or hyperparameters could be reassigned afterwards would keep the programs and
    the cache entries of the kernel it no longer computes. Frozen, every field refuses
    assignment; a mutable dataclass survived the earlier tests."""
    import dataclasses

    fc2 = get_architecture("fc2")
    for name, value in (("kernel_fn", fc2.reference_kernel_fn), ("hyperparameters", {}), ("name", "fc3")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(fc2, name, value)
    assert fc2.name == "fc2" and fc2.hyperparameters["depth"] == 2 and get_architecture("fc2") is fc2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"depth": 0}, "depth must be a whole number of layers >= 1, got 0"),
        ({"depth": -1}, "depth must be a whole number of layers >= 1, got -1"),
        ({"depth": 2.0}, "depth must be a whole number of layers >= 1, got 2.0"),
        ({"depth": True}, "depth must be a whole number of layers >= 1, got True"),
        ({"depth": 2, "W_std": 0.0}, "W_std must be a finite number > 0, got 0.0"),
        ({"depth": 2, "W_std": float("nan")}, "W_std must be a finite number > 0, got nan"),
        ({"depth": 2, "b_std": -0.1}, "b_std must be a finite number >= 0, got -0.1"),
        ({"depth": 2, "b_std": float("inf")}, "b_std must be a finite number >= 0, got inf"),
        ({"depth": 2, "b_std": "0.1"}, "b_std must be a finite number >= 0, got '0.1'"),
    ],
)
@pytest.mark.parametrize("factory", [fully_connected, convolutional])
def test_a_depth_or_scale_that_names_no_net_is_refused(factory, arguments, message):
    """Before, fully_connected(-1) built "fc-1" (a linear readout only, named as if it had layers),
    depth 2.0 raised a TypeError from range(), and a NaN or negative scale built a kernel of NaNs
    or of the wrong sign under a registered name."""
    scales = {key: value for key, value in arguments.items() if key != "depth"}
    with pytest.raises(ValueError, match=re.escape(message)):
        factory(arguments["depth"], **scales)


def test_equal_scales_written_as_int_float_or_numpy_name_one_registered_net():
    """W_std=1, 1.0 and np.float64(1.0), and depth 2 or np.int64(2), are one kernel: one object
    (one set of compiled programs, one Gram cache key), named alike. Before, the fingerprint was
    the arguments' repr, so each spelling registered a net of its own."""
    nets = {id(fully_connected(d, W_std=w, b_std=0.2)) for d in (2, np.int64(2)) for w in (1, 1.0, np.float64(1.0))}
    assert len(nets) == 1
    net = fully_connected(2, W_std=1, b_std=0.2)
    assert net.hyperparameters == {"depth": 2, "W_std": 1.0, "b_std": 0.2} and net.name == "fc2"
    assert convolutional(np.int64(1), W_std=1, b_std=0) is convolutional(1, W_std=1.0, b_std=0.0)


def test_a_convolutional_description_states_its_scales_as_the_dense_one_does():
    """Two convolutional nets of other scales read alike before: only the dense nets' descriptions
    named W_std and b_std."""
    assert get_architecture("conv2").description.endswith("flatten readout, W_std=1.414, b_std=0.1")
    assert convolutional(1, W_std=1.2, b_std=0.3).description.endswith("W_std=1.2, b_std=0.3")
