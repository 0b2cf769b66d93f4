"""The pair-indexed feature route (``kernels._feature_rows``) against the general one and the
per-feature machines.

Independent routes: ``feature_scores(route="jacobian")`` (projection machine, padded Jacobians,
full logits); one machine per feature (``restricted_to([i])``) with its own logits and loss
gradients. Scores are accuracies and must be equal; kernel values and gradients are compared in
float64 at 1e-12 of their largest entry (α of a ridgeless machine is large and its sums cancel).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from ntkrobust.attacks import ThreatModel, fgsm
from ntkrobust.kernels import _feature_rows as rows_module
from ntkrobust.kernels import feature_coefficients, feature_scores, fit_kernel_machine, get_architecture
from ntkrobust.kernels._jax import float64, jnp

CASES = [
    ("binary", "linf", 0.1, "fgsm"),
    ("multiclass", "linf", 0.1, "fgsm"),
    ("multiclass", "l2", 1.0, "fgsm"),
    ("binary", "l2", 1.0, "pgd"),
    ("multiclass", "linf", 0.1, "pgd"),
]


def _pick(task, fc2_binary, fc2_multiclass, digits_binary, digits_multiclass):  # type: ignore[no-untyped-def]
    return (fc2_binary, digits_binary) if task == "binary" else (fc2_multiclass, digits_multiclass)


@pytest.mark.parametrize(("task", "norm", "eps", "attack"), CASES)
@pytest.mark.parametrize("budget", [None, 2**16])
def test_pair_route_gives_the_jacobian_routes_scores(
    task, norm, eps, attack, budget, fc2_binary, fc2_multiclass, digits_binary, digits_multiclass
):
    """budget 2**16 bytes: several example blocks and pair chunks, each padded."""
    machine, data = _pick(task, fc2_binary, fc2_multiclass, digits_binary, digits_multiclass)
    if budget is not None:
        machine = dataclasses.replace(machine, memory_budget=budget)
    x, y = data.x_test[:60], data.y_test[:60]
    kwargs = {"n_features": 30, "attack": attack}
    if attack == "pgd":
        kwargs |= {"step": eps / 4, "steps": 4, "seed": 5}
    threat = ThreatModel(norm, eps)
    fast = feature_scores(machine, x, y, threat, route="dots", **kwargs)
    general = feature_scores(machine, x, y, threat, route="jacobian", **kwargs)
    np.testing.assert_array_equal(fast.usefulness, general.usefulness)
    np.testing.assert_array_equal(fast.robustness, general.robustness)
    assert fast.robustness.sum() < fast.usefulness.sum()  # the attacks do bite


def test_every_pixel_active_and_two_layer(digits_multiclass):
    """Training images without an all-zero pixel (no padding of gradients with zeros), and the
    closed-form two-layer kernel's dot route."""
    data = digits_multiclass
    x_train = data.x_train[:80] * 0.9 + 0.05  # no pixel is 0 in every image
    for name in ("fc1", "two-layer"):
        machine = fit_kernel_machine(get_architecture(name), x_train, data.y_train[:80], classes=range(10))
        x, y = data.x_test[:40] * 0.9 + 0.05, data.y_test[:40]
        threat = ThreatModel("linf", 0.1)
        fast = feature_scores(machine, x, y, threat, n_features=20, route="dots")
        general = feature_scores(machine, x, y, threat, n_features=20, route="jacobian")
        np.testing.assert_array_equal(fast.usefulness, general.usefulness)
        np.testing.assert_array_equal(fast.robustness, general.robustness)


@float64
def _programs_against_single_machines(machine, x, labels, features):  # type: ignore[no-untyped-def]
    """(pair route, per-feature machines) for: clean projections, loss gradients of the pairs at
    x, projections at the FGSM points (whose every pixel's step follows the gradient's sign)."""
    programs = rows_module._programs(machine.arch)
    m = max(features) + 1
    tr, order = rows_module._train_side(machine, m)
    c = feature_coefficients(machine, np.arange(m))
    target = machine.target_index(labels)
    xp = jnp.asarray(x.reshape(x.shape[0], -1)[:, order])
    p, a, sv = programs.clean(xp, tr)
    rows = np.repeat(np.arange(x.shape[0]), len(features))
    cols = np.tile(np.asarray(features), x.shape[0])
    rows_j, cols_j, t_j = jnp.asarray(rows), jnp.asarray(cols), jnp.asarray(target[rows])
    c_j = jnp.asarray(c)
    gradient = np.asarray(programs.moving_gradient(xp[rows_j], tr, cols_j, c_j[cols_j], t_j))
    unpermuted = np.empty_like(gradient)
    unpermuted[:, order] = gradient
    attacked = np.asarray(programs.fgsm_projection(a, sv, p, xp, tr, c_j, rows_j, cols_j, t_j, eps=0.1, norm="linf"))
    ours = {"clean": np.asarray(p)[rows, cols], "gradient": unpermuted.reshape(rows.size, *x.shape[1:])}
    ours["attacked"] = attacked
    theirs: dict[str, list[np.ndarray]] = {"clean": [], "gradient": [], "attacked": []}
    for q, (b, i) in enumerate(zip(rows, cols, strict=True)):
        single = machine.restricted_to([i])  # f = pᵢ cᵢ: its logits / cᵢ are pᵢ (up to the sign of cᵢ)
        scale = c[i][np.argmax(np.abs(c[i]))]
        g = np.asarray(single.loss_gradient(x[b : b + 1], target[b : b + 1]))
        step = fgsm(functools.partial(rows_module.fixed_gradient, g), x[b : b + 1], target[b : b + 1], eps=0.1)
        theirs["clean"].append(np.asarray(single.logits(x[b : b + 1]))[0, np.argmax(np.abs(c[i]))] / scale)
        theirs["gradient"].append(g[0])
        theirs["attacked"].append(np.asarray(single.logits(step))[0, np.argmax(np.abs(c[i]))] / scale)
        assert q < rows.size
    return ours, {k: np.stack(v) for k, v in theirs.items()}


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_pair_programs_equal_the_per_feature_machines(
    task, fc2_binary, fc2_multiclass, digits_binary, digits_multiclass
):
    machine, data = _pick(task, fc2_binary, fc2_multiclass, digits_binary, digits_multiclass)
    x, y = data.x_test[:5].astype(np.float64), data.y_test[:5]
    ours, theirs = _programs_against_single_machines(machine, x, y, [0, 3, 11])
    for name in ("clean", "gradient", "attacked"):
        scale = np.abs(theirs[name]).max()
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-12 * scale, err_msg=name)


def test_convolutional_kernels_take_the_general_route(digits_multiclass):
    data = digits_multiclass
    machine = fit_kernel_machine(get_architecture("conv1"), data.x_train[:40], data.y_train[:40], classes=range(10))
    threat = ThreatModel("linf", 0.1)
    with pytest.raises(ValueError, match="route 'dots' is not available"):
        feature_scores(machine, data.x_test[:5], data.y_test[:5], threat, n_features=4, route="dots")
    auto = feature_scores(machine, data.x_test[:10], data.y_test[:10], threat, n_features=6)
    general = feature_scores(machine, data.x_test[:10], data.y_test[:10], threat, n_features=6, route="jacobian")
    np.testing.assert_array_equal(auto.robustness, general.robustness)
    with pytest.raises(ValueError, match="route 'rows' is not available"):
        feature_scores(machine, data.x_test[:5], data.y_test[:5], threat, n_features=4, route="rows")
