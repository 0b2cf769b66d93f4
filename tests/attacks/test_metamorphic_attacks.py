"""Metamorphic tests of the analytic attacks (``attacks`` on a kernel machine through
``kernels.adversarial.craft_adversarial``) and of the ``attack`` study's records: relations
between two runs.

Each test attacks twice, on inputs and on a transformation of them (test points permuted with
their labels, the classes in another order, the machine's outputs scaled, ε changed, memory
budgets and batches that cut the points, a binary task as one ±1 output or two one-hot ones,
the data file permuted, the same run repeated), and checks the relation that the definitions
imply between the two sets of examples. The torch half's relations are pinned in
``tests/test_metamorphic_torch.py`` and the machine's outputs in ``tests/kernels/
test_metamorphic.py``; these are the ones of the kernel machine's attacks (JAX arrays, the
machine's gradients and Jacobians, its class order and chunks). Definitions: ``attacks.threat``
(steepest ascent, the ε-ball and the box), ``attacks.fgsm`` / ``pgd`` / ``taylor`` (TK supp.
eq. 16, 20, 22), ``kernels.machine`` (eq. 7, targets, the cross-entropy the attacks increase) and
``kernels.adversarial``. Tiny seeded float64 images (``test_machine_audit.tiny_data``: 13
training points of 1×3×4) and the scikit-learn digits; tolerances are stated where used.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from test_machine_audit import FC_BUDGET_4, N_TRAIN, tiny_data
from test_taylor_audit import _reference as taylor_reference

from ntkrobust.attacks import METHODS, AttackSpec, ThreatModel, check_adversarial, robust_accuracy

TIME, RIDGE, RATE = 0.7, 0.02, 1.7
N_TEST = 11
TOL = 1e-12  # float64 images: the same operations on rows in another order, or on scaled gradients
#: ε by norm: a few sign steps of an ℓ∞ ball, and an ℓ2 ball of about the same reach on 12 pixels
EPS = {"linf": 0.1, "l2": 0.35}
DETERMINISTIC = ("fgsm", "taylor-l1", "taylor-sum", "pgd-fixed")


@pytest.fixture(scope="module")
def data(jax_strict):
    return tiny_data(seed=31, n_test=N_TEST)


def _fit(x_train, y_train, arch: str = "fc2", **kw):
    from ntkrobust.kernels import fit_kernel_machine, get_architecture

    kw = {"time": TIME, "ridge": RIDGE, "learning_rate": RATE} | kw
    return fit_kernel_machine(get_architecture(arch), x_train, y_train, **kw)


def _spec(method: str, norm: str, eps: float | None = None, seed: int = 4) -> AttackSpec:
    """``method`` of ``METHODS``, or "pgd-fixed" (PGD from x, no random start): 4 steps of ε/3 (of 0.05
    at ε = 0, a ball of one point, where any step stays put)."""
    eps = EPS[norm] if eps is None else eps
    if method.startswith("pgd"):
        step = eps / 3 if eps > 0 else 0.05
        return AttackSpec("pgd", eps, norm, step=step, steps=4, random_start=method == "pgd", seed=seed)
    return AttackSpec(method, eps, norm)


def _attack(machine, x, labels, method: str, norm: str, **kw) -> np.ndarray:
    from ntkrobust.kernels import craft_adversarial

    eps = kw.pop("eps", None)
    return craft_adversarial(machine, x, labels, _spec(method, norm, eps), **kw)


def _moves(x_adv: np.ndarray, x: np.ndarray) -> None:
    """The precondition of every relation: the attack moved the points (an attack that does
    nothing satisfies every relation)."""
    assert np.abs(np.asarray(x_adv, dtype=np.float64) - x).max() > 0


# -- the order of the points and of the classes ------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_permuting_test_points_with_their_labels_permutes_every_deterministic_example(norm, data):
    """Each test point is attacked on its own loss (the machine's loss gradient and output Jacobian
    are per example; blocks are a matter of memory, ``kernels.machine``), so x → x[q], labels →
    labels[q] gives x_adv[q] for FGSM, both Taylor attacks and PGD from x, for a binary and a
    three-class machine, and the same robust accuracy. With a random start the relation does not
    hold by design: ``pgd`` draws the start by position in the batch (``ThreatModel.random_start``).
    1e-12 (float64)."""
    x_train, x_test, y3, y2 = data
    q = np.random.default_rng(0).permutation(N_TEST)
    for y in (y3, y2):
        machine = _fit(x_train, y)
        labels = y[:N_TEST]
        for method in DETERMINISTIC:
            adv = _attack(machine, x_test, labels, method, norm)
            _moves(adv, x_test)
            moved = _attack(machine, x_test[q], labels[q], method, norm)
            np.testing.assert_allclose(moved, adv[q], rtol=0, atol=TOL, err_msg=method)
            assert robust_accuracy(machine.predict(moved), labels[q]) == robust_accuracy(machine.predict(adv), labels)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_order_of_the_classes_changes_no_example_and_no_accuracy(norm, data):
    """``classes`` orders the machine's outputs (``fit_kernel_machine``): (2, 0, 1) permutes the
    one-hot columns and ``target_index`` maps each label to its new position, so the cross-entropy
    of each label is the same function of x and FGSM and PGD (its random start drawn from the
    seed alone) give the same examples; the Taylor attacks read z_r − z_{r*} over the wrong classes
    r (a set, whatever its order) and give the same ones too. Binary: classes (9, 5) swap y = −1 and
    +1, so f → −f and y f, the loss and eq. 16's −y·d(z) do not change. The accuracies do not
    change. 1e-12."""
    x_train, x_test, y3, y2 = data
    for y, order in ((y3, (2, 0, 1)), (y2, (9, 5))):
        labels = y[:N_TEST]
        machine = _fit(x_train, y)
        reordered = _fit(x_train, y, classes=order)
        assert reordered.classes == order != machine.classes
        for method in (*METHODS, "pgd-fixed"):
            adv = _attack(machine, x_test, labels, method, norm)
            _moves(adv, x_test)
            np.testing.assert_allclose(
                _attack(reordered, x_test, labels, method, norm), adv, rtol=0, atol=TOL, err_msg=f"{order} {method}"
            )
            np.testing.assert_array_equal(reordered.predict(adv), machine.predict(adv))


# -- scaled outputs, ε = 0, the ball and the box, a larger ε ------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_scaling_the_outputs_by_c_leaves_the_sign_and_normalised_attacks(norm, data):
    """f → c·f (c > 0; ``with_dual_coef(c·α)``): z_r → c·z_r, so the Taylor attacks' picks (an
    argmax of dual norms, each scaled by c) and steps (sign for ℓ∞, g/‖g‖₂ for ℓ2: ``steepest_ascent``
    is scale-free) do not change, on any number of outputs. On one output the loss gradient of
    softplus(−y·c·f) is −y·c·σ(−y·c·f)·∇f, a positive multiple of −y∇f: FGSM and every PGD step
    (random start included) do not change either (eq. 8 holds at every c). Softmax cross-entropy on
    k ≥ 2 outputs is not scale-free, so multiclass FGSM and PGD are left out. The c keep σ(−y·c·f)
    above float64's underflow. 1e-12."""
    x_train, x_test, y3, y2 = data
    for y, methods in ((y2, (*METHODS, "pgd-fixed")), (y3, ("taylor-l1", "taylor-sum"))):
        labels = y[:N_TEST]
        machine = _fit(x_train, y)
        for method in methods:
            adv = _attack(machine, x_test, labels, method, norm)
            _moves(adv, x_test)
            for c in (1e-3, 40.0):
                scaled = machine.with_dual_coef(c * np.asarray(machine.dual_coef))
                got = _attack(scaled, x_test, labels, method, norm)
                np.testing.assert_allclose(got, adv, rtol=0, atol=TOL, err_msg=f"{method} c={c}")


def test_every_analytic_attack_stays_in_the_ball_and_the_box_and_eps_zero_is_the_clean_input(data):
    """``attacks.threat``: ‖x_adv − x‖ ≤ ε and 0 ≤ x_adv ≤ 1 for every method and norm, also where
    ε reaches beyond the box (ℓ∞ 0.7, ℓ2 3.0 on 12 pixels) and the clip binds on most pixels; at
    ε = 0 the ball is the point x and every method (PGD's random start included, clipped to the
    box) returns x exactly, on both machines. Inputs on the box's faces (0 and 1) too."""
    x_train, x_test, y3, y2 = data
    x = x_test.copy()
    x[0, 0, 0, :2], x[1, 0, 1, :2] = 0.0, 1.0
    for y in (y3, y2):
        machine = _fit(x_train, y)
        labels = y[:N_TEST]
        for method, norm in itertools.product((*METHODS, "pgd-fixed"), ("linf", "l2")):
            for eps in (0.0, EPS[norm], 0.7 if norm == "linf" else 3.0):
                adv = _attack(machine, x, labels, method, norm, eps=eps)
                check_adversarial(adv, x, ThreatModel(norm, eps))
                if eps == 0:
                    np.testing.assert_array_equal(adv, x, err_msg=f"{method} {norm}")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_step_examples_move_further_along_one_direction_as_eps_grows(norm, data):
    """FGSM and the Taylor attacks take one step x̃ = clip(x + ε·d) along a direction d that does
    not depend on ε (it is read at x). So for ε₁ < ε₂ every pixel moves the same way and no less
    far, |δ(ε₁)| ≤ |δ(ε₂)| with δ(ε₁)·δ(ε₂) ≥ 0: the linear gain dᵀδ of the attack never falls as
    ε grows. ℓ∞: the ε₁ example is moreover the ε₂ example projected onto the ε₁-ball (both are
    x + min(ε, room to the box)·sign d pixel by pixel). 1e-12."""
    x_train, x_test, y3, y2 = data
    for y in (y3, y2):
        machine = _fit(x_train, y)
        labels = y[:N_TEST]
        for method in ("fgsm", "taylor-l1", "taylor-sum"):
            radii = EPS[norm] * np.array([0.25, 0.5, 1.0, 2.0, 4.0])
            deltas = [_attack(machine, x_test, labels, method, norm, eps=float(e)) - x_test for e in radii]
            _moves(deltas[0] + x_test, x_test)
            for (e1, d1), (_, d2) in itertools.pairwise(zip(radii, deltas, strict=True)):
                assert np.all(d1 * d2 >= 0), f"{method}: a pixel turned between eps {e1} and the next"
                assert np.all(np.abs(d1) <= np.abs(d2) + TOL), f"{method}: a pixel moved back after eps {e1}"
                if norm == "linf":
                    projected = ThreatModel("linf", float(e1)).project(x_test + d2, x_test)
                    np.testing.assert_allclose(projected, x_test + d1, rtol=0, atol=TOL, err_msg=method)
            assert np.abs(deltas[-1]).sum() > np.abs(deltas[0]).sum()  # the larger balls do move further


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_kernel_scaled_by_c_is_the_machine_at_c_times_the_learning_rate_and_is_attacked_alike(norm, data):
    """Θ → cΘ: the NTK of a bias-free ReLU net is homogeneous of degree 4 in W_std for one hidden
    layer (Σ₁ = W²x·x'/d, Σ₂ = W²·T(Σ₁), Θ = Σ₂ + W²·Ṫ(Σ₁)·Σ₁), so W_std = 2 gives c = 16. Eq. 7 with
    a ridge relative to tr(Θ)/n (scaled by c too) reads g_t(cλ + cρ) = g_{ct}(λ + ρ)/c, so the machine
    of cΘ at (t, η) is the machine of Θ at (t, cη), and at t = ∞ it is the same machine: every
    attack (PGD's random start included), every prediction equal. A ridge taken in absolute units,
    or a learning rate that ignored the kernel's scale, breaks it. 1e-9 (logits), 1e-10 (examples:
    the two kernels round differently, the steps are signs and unit vectors)."""
    from ntkrobust.kernels import fit_kernel_machine
    from ntkrobust.kernels.architectures import fully_connected

    x_train, x_test, y3, _ = data
    labels = y3[:N_TEST]
    one, two = fully_connected(1, W_std=1.0, b_std=0.0), fully_connected(1, W_std=2.0, b_std=0.0)
    kw = {"time": TIME, "ridge": RIDGE}
    scaled = fit_kernel_machine(two, x_train, y3, learning_rate=RATE, **kw)
    plain = fit_kernel_machine(one, x_train, y3, learning_rate=16 * RATE, **kw)
    np.testing.assert_allclose(scaled.eigenvalues, 16 * plain.eigenvalues, rtol=1e-10)  # the precondition
    for a, b in ((scaled, plain), (scaled.at_time(np.inf), plain.at_time(np.inf))):
        want = np.asarray(b.logits(x_test))
        np.testing.assert_allclose(a.logits(x_test), want, rtol=0, atol=1e-9 * np.abs(want).max())
        for method in (*METHODS, "pgd-fixed"):
            adv = _attack(b, x_test, labels, method, norm)
            _moves(adv, x_test)
            np.testing.assert_allclose(_attack(a, x_test, labels, method, norm), adv, rtol=0, atol=1e-10)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_step_attacks_that_must_agree_do(norm, data):
    """Three routes to one step, on machines at a finite time: PGD of one step of ε from x (no
    random start) is FGSM (x + ε·d(∇L) is on the sphere of the ball, the projection keeps it); on a
    binary machine FGSM is eq. 8, −yε·d(∇ₓf), and both Taylor attacks are eq. 16, −yε·d(z) with
    z = ∇ₓf: the same example at every time, in both norms (``test_kernel_attacks`` pins ℓ∞ at
    t = ∞). 1e-12."""
    from ntkrobust.kernels import craft_adversarial

    x_train, x_test, y3, y2 = data
    eps = EPS[norm]
    for y in (y3, y2):
        labels = y[:N_TEST]
        machine = _fit(x_train, y)
        fgsm = _attack(machine, x_test, labels, "fgsm", norm)
        _moves(fgsm, x_test)
        one_step = AttackSpec("pgd", eps, norm, step=eps, steps=1, random_start=False)
        got = craft_adversarial(machine, x_test, labels, one_step)
        np.testing.assert_allclose(got, fgsm, rtol=0, atol=TOL)
        if y is y2:
            for method in ("taylor-l1", "taylor-sum"):
                got = _attack(machine, x_test, labels, method, norm)
                np.testing.assert_allclose(got, fgsm, rtol=0, atol=TOL, err_msg=method)


def test_float32_images_get_the_float64_examples_rounded(data):
    """The machine computes in float64 whatever the images' dtype (``KernelMachine.precision``), and
    the examples keep the images' dtype (``attacks.threat``): float32 images (what the studies load)
    give the examples of the same images in float64, rounded to float32, for every method whose
    start is x (the ℓ∞ steps are signs; the ℓ2 steps unit vectors of gradients that differ by the
    rounding of x). 1e-6: float32's rounding of values in [0, 1]."""
    x_train, x_test, y3, y2 = data
    x32 = x_test.astype(np.float32)
    x64 = x32.astype(np.float64)  # the same points, so only the arithmetic differs
    for y in (y3, y2):
        labels = y[:N_TEST]
        machine = _fit(x_train, y)
        for method, norm in itertools.product(("fgsm", "taylor-l1", "pgd-fixed"), ("linf", "l2")):
            adv = _attack(machine, x32, labels, method, norm)
            assert adv.dtype == np.float32
            want = _attack(machine, x64, labels, method, norm)
            _moves(want, x64)
            np.testing.assert_allclose(adv, want, rtol=0, atol=1e-6, err_msg=f"{method} {norm}")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_flattened_images_are_attacked_as_the_images(norm, data):
    """A dense net flattens its input first, so its NTK machine on (N, d) rows (``kernels.machine``:
    "inputs are NCHW (or (N, d))") is the same function as on (N, C, H, W) images; the threat model
    measures ‖·‖ over all non-batch axes and the random start is drawn in C order over x's shape
    (``ThreatModel.random_start``): every method, PGD's random start included, gives the images'
    examples flattened. 1e-12."""
    x_train, x_test, y3, y2 = data
    flat_train, flat_test = x_train.reshape(N_TRAIN, -1), x_test.reshape(N_TEST, -1)
    for y in (y3, y2):
        labels = y[:N_TEST]
        images, rows = _fit(x_train, y), _fit(flat_train, y)
        assert rows.input_shape == (12,)
        for method in (*METHODS, "pgd-fixed"):
            adv = _attack(images, x_test, labels, method, norm)
            _moves(adv, x_test)
            got = _attack(rows, flat_test, labels, method, norm)
            np.testing.assert_allclose(got, adv.reshape(N_TEST, -1), rtol=0, atol=TOL, err_msg=method)


def _unit_gradient(x, y):
    return x * 0 + 1


def _unit_jacobian(x):
    return np.ones((x.shape[0], 3, *x.shape[1:])) * np.arange(3.0).reshape(1, 3, 1, 1, 1)


def _refusal(attack, x) -> tuple[object, str]:
    """(the error's type, its message), or ("returned", how far the example moved) if it ran."""
    try:
        x_adv = attack(x)
    except (ValueError, TypeError) as err:
        return type(err), str(err)
    return "returned", f"moved by {np.abs(np.asarray(x_adv, dtype=np.float64) - x).max():.4g}, dtype {x_adv.dtype}"


def test_the_attacks_that_agree_on_images_agree_on_what_is_no_image():
    """On a binary machine FGSM is eq. 8 and the Taylor attacks eq. 16, the same step (``test_one_step_
    attacks_that_must_agree_do``); every attack of ``attacks`` takes "inputs, NCHW, values in [0, 1]"
    and promises ‖x_adv − x‖ ≤ ε in x's dtype (``attacks.threat``). So the inputs that FGSM, PGD and
    random sign refuse (0-255 images, images shifted below 0, a NaN pixel: ValueError; integer images:
    TypeError, ``ThreatModel.check_inputs``) must be refused by both Taylor attacks with the same error,
    not clipped into the box: a 0-255 image came back moved by 231 at ε = 0.1, an integer one as
    float64.

    A bug this round found (fixed in 1be99f9): ``attacks.taylor._taylor`` never called
    ``threat.check_inputs(x)``, so a 0-255 image moved by about 231 at ε = 0.1."""
    from ntkrobust.attacks import fgsm, pgd, random_sign, taylor_max_l1, taylor_sum

    images = np.random.default_rng(3).uniform(size=(4, 1, 3, 3))
    nan = images.copy()
    nan[2, 0, 1, 1] = np.nan
    index = np.array([0, 1, 2, 1])
    attacks = {
        "fgsm": lambda x: fgsm(_unit_gradient, x, None, eps=0.1),
        "pgd": lambda x: pgd(_unit_gradient, x, None, eps=0.1, step=0.05, steps=2),
        "random sign": lambda x: random_sign(x, eps=0.1),
        "taylor-l1": lambda x: taylor_max_l1(_unit_jacobian, x, index, eps=0.1),
        "taylor-sum": lambda x: taylor_sum(_unit_jacobian, x, index, eps=0.1),
    }
    for attack in attacks.values():
        check_adversarial(attack(images), images, ThreatModel("linf", 0.1))  # the precondition: images pass
    for what, bad in (("0-255", images * 255), ("shifted", images - 0.5), ("NaN", nan), ("integer", images > 0.5)):
        bad = bad.astype(np.uint8) if what == "integer" else bad
        refusals = {name: _refusal(attack, bad) for name, attack in attacks.items()}
        assert refusals["fgsm"][0] in (ValueError, TypeError), refusals
        assert len(set(refusals.values())) == 1, f"{what}: {refusals}"


# -- memory budgets and batches; the binary task two ways -------------------------------------------


def test_memory_budgets_that_cut_the_points_change_no_example(data):
    """Memory is a plan, not a result: a budget of 4-point training chunks (the last padded with
    α = 0) and 64-point test blocks (70 points: the last block padded with copies) gives every
    method, PGD's random start included (it depends on ``craft_adversarial``'s ``batch_size`` alone,
    whose cuts ``test_kernel_attacks.test_batches_attack_their_own_points`` pins), the examples of
    the roomy machine (one block, one chunk), on a three-class and a binary machine. 1e-10 (chunk
    sums round differently; the steps are signs or unit vectors of the same gradients)."""
    x_train, _, y3, y2 = data
    x = tiny_data(seed=32, n_test=70)[1]
    for y in (y3, y2):
        labels = np.resize(y, 70)
        machine = _fit(x_train, y)
        small = dataclasses.replace(machine, memory_budget=FC_BUDGET_4)
        assert small._blocks().test == 64 and small._blocks().train == 4  # the precondition: both cut
        assert machine._blocks().test >= 70 and machine._blocks().train == N_TRAIN
        for method, norm in itertools.product(METHODS, ("linf", "l2")):
            adv = _attack(machine, x, labels, method, norm)
            _moves(adv, x)
            got = _attack(small, x, labels, method, norm)
            np.testing.assert_allclose(got, adv, rtol=0, atol=1e-10, err_msg=f"{method} {norm}")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_binary_task_as_two_one_hot_outputs_is_attacked_as_its_one_output_machine(norm, data):
    """The binary task as one ±1 output and as two one-hot outputs (f_± = f₁ − f₀, eq. 7 is
    linear in Y) has one loss, softmax CE(f₀, f₁) = softplus(−y(f₁ − f₀)), so FGSM and PGD (same
    seed) give the same examples; and with k = 2 the one wrong class r of eq. 20 / 22 gives
    z_r − z_{r*} = −y·∇f_±, which is eq. 16's direction: the Taylor attacks of the two machines
    agree too ("with one output both multiclass variants reduce to eq. 16", ``attacks.taylor``).
    The predictions and accuracies agree. 1e-12 (the difference f₁ − f₀ rounds)."""
    x_train, x_test, _, y2 = data
    labels = y2[:N_TEST]
    binary = _fit(x_train, y2)
    two = dataclasses.replace(binary, targets=np.eye(2)[binary.target_index(y2)]).at_time(TIME)
    assert (binary.n_outputs, two.n_outputs) == (1, 2)
    for method in (*METHODS, "pgd-fixed"):
        adv = _attack(binary, x_test, labels, method, norm)
        _moves(adv, x_test)
        got = _attack(two, x_test, labels, method, norm)
        np.testing.assert_allclose(got, adv, rtol=0, atol=TOL, err_msg=method)
        np.testing.assert_array_equal(two.predict(got), binary.predict(adv))


# -- an independent route: autodiff of the machine's outputs ----------------------------------------


#: the Jacobian route each case takes (``KernelMachine.output_jacobian``'s "auto"): fc2 has a dot
#: kernel ("dots"); conv1 none: "pairs" for more than 3 outputs, "cotangents" for one
ROUTES = {"fc2": ((3, (2, 0, 1)), (2, (9, 5))), "conv1": ((4, (3, 1, 0, 2)), (2, (5, 9)))}


@pytest.mark.parametrize("arch", list(ROUTES))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_analytic_attacks_step_along_autodiff_of_the_machines_own_outputs(arch, norm, data):
    """The Taylor attacks from z = ∇ₓf_r by ``jax.jacrev`` of ``machine.logits`` (not the machine's
    ``output_jacobian`` routes: dots for fc2, pairs and cotangents for conv1) through the per-example
    equations (``test_taylor_audit``'s reference), and multiclass FGSM as clip(x + ε·d(∇ₓ CE)) with
    the softmax cross-entropy of the logits written here and ``jax.grad`` (the binary eq. 8 is
    ``test_kernel_attacks``'), equal ``craft_adversarial``'s examples; classes in a shuffled order,
    so a label read as a position shows. conv1 also under a budget of 4-point training chunks (the
    Jacobians and loss gradients summed over padded chunks). 1e-12 (1e-10 with chunks)."""
    from test_machine_audit import CONV_BUDGET_4

    from ntkrobust.attacks import steepest_ascent
    from ntkrobust.kernels._jax import jax, jnp

    x_train, x_test, _, _ = data
    eps = EPS[norm]
    for k, classes in ROUTES[arch]:
        y = np.array(classes)[np.arange(N_TRAIN) % k]
        labels = np.array(classes)[np.random.default_rng(k).integers(0, k, N_TEST)]
        machine = _fit(x_train, y, classes=classes, arch=arch)
        index = machine.target_index(labels)
        jac = jax.jacrev(lambda xb, m=machine: m.logits(xb))(jnp.asarray(x_test))  # (N, k, N, 1, 3, 4)
        z = np.asarray(jac)[np.arange(N_TEST), :, np.arange(N_TEST)]  # each point's own rows
        g = None
        if machine.n_outputs > 1:

            def loss(xb, m=machine, i=index):
                return -jnp.sum(jax.nn.log_softmax(m.logits(xb), axis=1)[jnp.arange(N_TEST), jnp.asarray(i)])

            g = np.asarray(jax.grad(loss)(jnp.asarray(x_test)))
        machines = {"one chunk": (machine, TOL)}
        if arch == "conv1":
            machines["chunks"] = (dataclasses.replace(machine, memory_budget=CONV_BUDGET_4), 1e-10)
            assert machines["chunks"][0]._blocks().train == 4  # the precondition
        for what, (attacked, tol) in machines.items():
            for method, variant in (("taylor-l1", "max-l1"), ("taylor-sum", "sum")):
                want = taylor_reference(z, x_test, index, eps, norm, variant)
                got = _attack(attacked, x_test, labels, method, norm)
                np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=f"{k} {what} {method}")
            if g is not None:
                want = np.clip(x_test + eps * np.asarray(steepest_ascent(g, norm)), 0, 1)
                got = _attack(attacked, x_test, labels, "fgsm", norm)
                np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=f"{k} {what} fgsm")


# -- the attack study --------------------------------------------------------------------------------


def _study(path, method: str, cache_dir, **threat):
    from ntkrobust.studies import DataSettings, MachineSettings, ThreatSettings, attack
    from ntkrobust.studies.attack import AttackSettings

    settings = AttackSettings(
        data=DataSettings(data=str(path)),
        machine=MachineSettings(time=50.0, ridge=0.01, learning_rate=0.5, cache_dir=cache_dir),
        method=method,
        threat=ThreatSettings(eps=0.2, **threat),
    )
    return attack.run(settings)


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory, jax_strict):
    """Digits 3 vs 8 (40 train, 24 test) and digits 1, 4, 7 (36 train, 18 test) as .npz files of
    ``save_dataset_npz`` (binary.npz, three.npz), and their folder."""
    from ntkrobust.bridge.data import load_dataset, save_dataset_npz

    folder = tmp_path_factory.mktemp("attack-data")
    data = load_dataset("digits", classes=[3, 8], n_train=40, n_test=24, seed=2)
    save_dataset_npz(data, folder / "binary.npz")
    three = load_dataset("digits", classes=[1, 4, 7], n_train=36, n_test=18, seed=3)
    save_dataset_npz(three, folder / "three.npz")
    return data, three, folder


def _numbers(record: dict) -> dict:
    """The record's numbers that do not name the file or the classes' order, the cache or the
    clock, but for the sums (``_sums``: the condition number, the mean ℓ2 size)."""
    kernel = {key: value for key, value in record["kernel"].items() if key not in ("gram_cache", "condition_number")}
    return {
        "clean": record["clean_accuracy"],
        "robust": record["robust_accuracy"],
        "kernel": kernel,
        "linf_max": record["perturbation"]["linf_max"],
        "warnings": record["warnings"],
        "config": {key: value for key, value in record["config"].items() if key not in ("data", "classes")},
    }


def _sums(record: dict) -> list[float]:
    return [record["kernel"]["condition_number"], record["perturbation"]["l2_mean"]]


def test_the_attack_study_of_permuted_points_or_reordered_classes_records_the_same_numbers(digits_file):
    """``attack`` on one data file and on the file with its training and test points permuted (each
    with its label) or the task's classes in another order (``save_dataset_npz``'s ``classes``: (8, 3)
    makes 8 the −1 class; (7, 1, 4) reorders the one-hot outputs). The machine is the same function
    (eq. 7 sums over training points; f → −f with y, or its outputs permuted with the labels'
    positions), FGSM is per example and PGD's start is drawn by the point's position alone, and the
    accuracies are shares: the clean and robust accuracies, the perturbation sizes, the kernel record
    and the warnings are equal, and the examples are the first run's, permuted (FGSM, binary) or the
    same (PGD, three classes). The condition number and the mean ℓ2 size are sums in another order
    (1e-9 relative); the examples 1e-6 (float32 images)."""
    from ntkrobust.bridge.data import save_dataset_npz

    data, three, folder = digits_file
    p = np.random.default_rng(5).permutation(data.x_train.shape[0])
    q = np.random.default_rng(6).permutation(data.x_test.shape[0])
    permuted = dataclasses.replace(
        data, x_train=data.x_train[p], y_train=data.y_train[p], x_test=data.x_test[q], y_test=data.y_test[q]
    )
    save_dataset_npz(permuted, folder / "permuted.npz")
    save_dataset_npz(dataclasses.replace(data, classes=(8, 3)), folder / "swapped.npz")
    save_dataset_npz(dataclasses.replace(three, classes=(7, 1, 4)), folder / "reordered.npz")
    cases = {
        "permuted": ("binary", "fgsm", q),
        "swapped": ("binary", "fgsm", np.arange(len(q))),
        "reordered": ("three", "pgd", np.arange(three.x_test.shape[0])),
    }
    for name, (original, method, order) in cases.items():
        steps = {"steps": 3} if method == "pgd" else {}
        base = _study(folder / f"{original}.npz", method, folder / "cache", **steps)
        other = _study(folder / f"{name}.npz", method, folder / "cache", **steps)
        _moves(base.x_adv, base.x)
        assert other.record["config"]["classes"] != base.record["config"]["classes"] or name == "permuted"
        np.testing.assert_array_equal(other.x, base.x[order])
        np.testing.assert_allclose(other.x_adv, base.x_adv[order], rtol=0, atol=1e-6, err_msg=name)
        assert _numbers(other.record) == _numbers(base.record), name
        assert _sums(other.record) == pytest.approx(_sums(base.record), rel=1e-9), name


def test_the_attack_study_run_again_into_a_new_folder_writes_the_same_bytes(digits_file):
    """A run is a function of its settings: PGD with its seeded random start run twice, the first
    time computing the Gram matrix (cache miss) and the second reading it from the cache (hit),
    saves arrays that are byte for byte the same and a results JSON that differs only in the
    seconds and in the cache's word on itself."""
    _, _, folder = digits_file
    cache = folder / "fresh-cache"
    runs = [_study(folder / "binary.npz", "pgd", cache, steps=3) for _ in range(2)]
    assert [run.record["kernel"]["gram_cache"] for run in runs] == ["miss", "hit"]
    saved = [run.save(folder / f"run{i}") for i, run in enumerate(runs)]
    with np.load(saved[0] / "adversarial.npz") as first, np.load(saved[1] / "adversarial.npz") as second:
        assert first.files == second.files == ["x_adv", "x", "y"]
        for key in first.files:
            assert first[key].tobytes() == second[key].tobytes(), key
        _moves(first["x_adv"], first["x"])
    records = [json.loads((path / "results.json").read_text()) for path in saved]
    for record in records:
        del record["seconds"]
        record["kernel"].pop("gram_cache")
    assert records[0] == records[1]
