"""Metamorphic tests of the analytic Gram matrices: relations between two runs of one kernel.

Each test computes Θ on inputs and on a transformation of them (points permuted or repeated,
the two sides swapped, inputs scaled, negated, flipped, rotated, their channels permuted or
duplicated, W_std scaled, the memory budget or the input's container changed, the cache asked
for a permutation of what it holds) and checks the relation that the definitions imply. Such
relations catch what one input misses: a row of one block mixed with another's, a pixel or
channel order assumed, a fan-in normalisation by the wrong count, a cache key blind to order.

Definitions: the recursions in the docstrings of ``kernels.relu`` (dense nets) and
``kernels.conv`` (3x3 SAME convolutions, flatten readout), supp. eq. 29 in ``kernels.two_layer``,
the routes and the cache key in ``kernels.gram``. Where a relation holds for the network, it is
checked on both of an architecture's routes: ``compute_gram`` (the vectorised recursions through
every Gram route) and ``reference_kernel_fn`` (neural-tangents' stax, the independent route).
Tiny seeded float64 images; every tolerance is relative to the largest entry and stated.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_gram_audit import _budget, recorded  # noqa: F401  (recorded: a fixture)

from ntkrobust.kernels import compute_gram, get_architecture
from ntkrobust.kernels._jax import jax, jnp
from ntkrobust.kernels.architectures import convolutional, fully_connected
from ntkrobust.kernels.gram import cached_gram

TOL = 1e-12  # float64 routes of one kernel part by rounding (a few ulps of the largest entry)
SHAPE = (2, 4, 5)  # two channels of 4x5: neither side symmetric, so a flip is no identity
N1, N2 = 7, 5
NAMES = ["fc2", "conv1", "two-layer"]
#: (route, entries one kernel block may hold on (N1, N2) or (N1, N1)): one call of the whole
#: matrix, nt.batch with blocks of side 3 (both sides padded), symmetric block pairs of side 2
ROUTES = [("whole", None), ("batch", 9), ("pairs", 4)]


@pytest.fixture(scope="module")
def images(jax_strict):
    """(x1, x2): N1 and N2 seeded uniform images of SHAPE, float64."""
    rng = np.random.default_rng(11)
    return rng.uniform(0, 1, size=(N1, *SHAPE)), rng.uniform(0, 1, size=(N2, *SHAPE))


def _close(got, want, tol: float = TOL) -> None:
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=tol * np.abs(want).max())


def _gram(arch, x1, x2=None, entries: int | None = None) -> np.ndarray:
    """``compute_gram`` with a budget of ``entries`` kernel entries per block (None: the default)."""
    if entries is None:
        return compute_gram(arch, x1, x2)
    return compute_gram(arch, x1, x2, memory_budget=_budget(arch, x1.shape, entries))


def _routes(arch, x1, x2=None) -> list[np.ndarray]:
    """Θ(x1, x2) on both of ``arch``'s routes: ``compute_gram`` and stax's ``reference_kernel_fn``."""
    reference = arch.reference_kernel_fn
    a = arch.to_layout(jnp.asarray(x1, jnp.float64))
    b = a if x2 is None else arch.to_layout(jnp.asarray(x2, jnp.float64))
    return [compute_gram(arch, x1, x2), np.asarray(reference(a, b, "ntk"), dtype=np.float64)]


def _kinds(calls: list[tuple]) -> set[str]:
    return {call[0] for call in calls}


# -- points: permutations, transposition, rows and diagonals on every route -------------------------


@pytest.mark.parametrize("route, entries", ROUTES)
@pytest.mark.parametrize("name", NAMES)
def test_permuted_points_permute_the_gram_on_both_axes_and_swapped_sides_transpose_it(
    name,
    route,
    entries,
    images,
    recorded,  # noqa: F811  (the imported fixture)
):
    """Θ(x, x') is a function of the pair alone, so Θ(P x1, Q x2) = P Θ(x1, x2) Qᵀ with P and Q
    drawn independently, Θ(x2, x1) = Θ(x1, x2)ᵀ (every kernel of ``kernels.architectures`` is
    symmetric in its arguments) and Θ(P x, P x) = P Θ(x, x) Pᵀ, on each route of ``compute_gram``
    (one call, ``nt.batch`` with padded blocks, symmetric block pairs with the last one padded: the
    recorded calls show the route taken). A row written to another block's place, padding that
    leaks, or a mirror (j, i) ← (i, j) without its transpose breaks one of them. 1e-12."""
    arch = get_architecture(name)
    x1, x2 = images
    rng = np.random.default_rng(5)
    p, q = rng.permutation(N1), rng.permutation(N2)
    if route != "pairs":
        gram = _gram(arch, x1, x2, entries)
        _close(_gram(arch, x1[p], x2[q], entries), gram[np.ix_(p, q)])
        _close(_gram(arch, x2, x1, entries).T, gram)
    square = _gram(arch, x1, None, entries)
    moved = _gram(arch, x1[p], None, entries)
    np.testing.assert_array_equal(moved, moved.T)
    _close(moved, square[np.ix_(p, p)])
    assert _kinds(recorded) == ({"batch", "whole"} if route == "batch" else {"whole"}), recorded
    if route != "whole":
        assert len(recorded) > 2, recorded  # blocks, not one call per matrix


@pytest.mark.parametrize("name", NAMES)
def test_each_entry_is_the_gram_of_its_own_pair_whatever_the_rest_of_the_inputs(name, images):
    """Θ(x1, x2)[S, T] = Θ(x1[S], x2[T]) for any rows S and columns T, repeated ones included, and
    the diagonal of Θ(x, x) is the 1x1 Gram of each point alone: no entry depends on which other
    points share its block, pad it, or are mirrored into it. The same inputs on the blocked routes
    (a budget of 4 entries) and as an asymmetric call Θ(x, x) give the symmetric call's matrix,
    which is exactly symmetric with eigenvalues >= -1e-12 of the largest. 1e-12."""
    arch = get_architecture(name)
    x1, x2 = images
    gram = _gram(arch, x1, x2)
    rows, cols = np.array([6, 0, 3, 3]), np.array([4, 1, 1])
    _close(_gram(arch, x1[rows], x2[cols]), gram[np.ix_(rows, cols)])
    _close(_gram(arch, x1[rows], x2[cols], entries=4), gram[np.ix_(rows, cols)])
    doubled = np.concatenate([x1, x1])
    _close(_gram(arch, doubled, x2, entries=4), np.concatenate([gram, gram]))
    square = _gram(arch, x1)
    np.testing.assert_array_equal(square, square.T)
    assert np.linalg.eigvalsh(square).min() >= -TOL * np.abs(square).max()
    _close(np.diag(square), [_gram(arch, x1[i : i + 1])[0, 0] for i in range(N1)])
    _close(_gram(arch, x1, x1.copy()), square)
    _close(_gram(arch, x1, None, entries=4), square)


# -- scales: positive homogeneity and W_std ---------------------------------------------------------

NO_BIAS = [(fully_connected, 1), (fully_connected, 3), (convolutional, 1), (convolutional, 2)]


@pytest.mark.parametrize("factory, depth", NO_BIAS)
def test_without_bias_the_ntk_is_bilinear_in_positive_input_scales_and_scales_with_w_std(factory, depth, images):
    """b_std = 0: the first layer's Σ = σ_w² x·x'/d (per pixel: σ_w² B[x·x'/C]/9) is bilinear in
    the two inputs' scales and ReLU is positively homogeneous (its layer maps (Σ, Σ₁₁, Σ₂₂) to
    s/(2π) + κΣ with κ scale-free, ``kernels.relu``'s recursion), so Θ(a x, b x') = ab Θ(x, x')
    for a, b > 0, at any depth. And every Dense or Conv layer multiplies Σ by σ_w² (no σ_b² to
    add) while Θ ← σ_w²Θ + Σ keeps Θ and Σ of one order: with depth + 1 weight layers (the
    readout included), Θ at c·σ_w is c^(2(depth+1)) Θ at σ_w. Both routes. 1e-12."""
    x1, x2 = images
    arch = factory(depth, W_std=1.3, b_std=0.0)
    wider = factory(depth, W_std=1.3 * 1.7, b_std=0.0)
    for gram, scaled, stretched in zip(
        _routes(arch, x1, x2), _routes(arch, 2.5 * x1, 0.3 * x2), _routes(wider, x1, x2), strict=True
    ):
        _close(scaled, 0.75 * gram)
        _close(stretched, 1.7 ** (2 * (depth + 1)) * gram)


def test_the_two_layer_ntk_is_bilinear_in_positive_input_scales():
    """Supp. eq. 29: Θ = (1/2 − arccos(u)/(2π)) x·x' with u = x·x'/(‖x‖‖x'‖) scale-free, so
    Θ(a x, b x') = ab Θ(x, x') for a, b > 0 (and no bias term anywhere). Both routes. 1e-12."""
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal((N1, 12)), rng.standard_normal((N2, 12))
    arch = get_architecture("two-layer")
    for gram, scaled in zip(_routes(arch, x1, x2), _routes(arch, 4.0 * x1, 0.02 * x2), strict=True):
        _close(scaled, 0.08 * gram)


def test_the_odd_part_of_a_one_layer_relu_ntk_is_the_linear_kernel():
    """relu(z) − relu(−z) = z and relu'(z) + relu'(−z) = 1: negating x turns θ into π − θ and
    κ = E[relu'(u) relu'(v)] = 1/2 − θ/(2π) into θ/(2π) = 1/2 − κ (their sum is E[relu'(v)] = 1/2),
    and s/(2π) + κΣ₁ (odd part Σ₁/2). So for eq. 29 Θ(x, x') − Θ(−x, x') = x·x'/2, and for fc1
    without bias (Σ₁ = σ_w² x·x'/d, Θ = σ_w² κ Σ₁ + σ_w²(s/(2π) + κΣ₁)) Θ(x, x') − Θ(−x, x') =
    σ_w²Σ₁ = σ_w⁴ x·x'/d, whatever σ_w. A κ or an angle off its definition (θ against π − θ,
    1/(2π) against 1/π) breaks it. Both routes (the two-layer reference is eq. 29 through stax).
    1e-12 of the largest entry of Θ."""
    rng = np.random.default_rng(4)
    x1, x2 = rng.standard_normal((N1, 12)), rng.standard_normal((N2, 12))
    linear = x1 @ x2.T
    w = 1.3
    cases = [(get_architecture("two-layer"), linear / 2), (fully_connected(1, W_std=w, b_std=0.0), w**4 * linear / 12)]
    for arch, odd in cases:
        for gram, negated in zip(_routes(arch, x1, x2), _routes(arch, -x1, x2), strict=True):
            np.testing.assert_allclose(gram - negated, odd, rtol=0, atol=TOL * np.abs(gram).max())


# -- coordinates: symmetries of the first layer and the fan-in normalisation -----------------------


@pytest.mark.parametrize("name", ["fc1", "fc3", "two-layer"])
def test_dense_kernels_are_invariant_under_one_rotation_of_every_input(name, images):
    """A dense net's Θ depends on x·x', ‖x‖², ‖x'‖² alone (``Architecture.dot_kernel_fn``: its
    first layer's iid Gaussian weights are rotation invariant), so Θ(x1 Q, x2 Q) = Θ(x1, x2) for
    any orthogonal Q acting on the flattened inputs: a seeded rotation, and a permutation of the
    coordinates (a horizontal flip of every image among them). Both routes. 1e-12."""
    arch = get_architecture(name)
    x1, x2 = (x.reshape(x.shape[0], -1) for x in images)
    d = x1.shape[1]
    rotation, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((d, d)))
    shuffle = np.random.default_rng(7).permutation(d)
    flip = np.arange(d).reshape(SHAPE)[:, :, ::-1].reshape(-1)
    wants = _routes(arch, x1, x2)
    for moved in (
        _routes(arch, x1 @ rotation, x2 @ rotation),
        *(_routes(arch, x1[:, c], x2[:, c]) for c in (shuffle, flip)),
    ):
        for got, want in zip(moved, wants, strict=True):
            _close(got, want)


@pytest.mark.parametrize("depth", [1, 2])
def test_convolutional_kernels_are_invariant_under_flips_transposes_and_channel_permutations(depth, images):
    """CONV{depth} (``kernels.conv``): the 3x3 window of B is symmetric under left-right,
    up-down and diagonal reflection, zero 'SAME' padding is too, and the flatten readout takes
    the mean over all pixels, so flipping every image horizontally or vertically, or transposing
    every image (H ↔ W: 4x5 into 5x4, one-pixel rows into columns), leaves Θ unchanged; the
    first layer sums x·x' over channels with iid weights, so permuting the channels of every
    image does too. A patch sum that is not
    centred, a pixel mean over one axis, or a channel weighted apart breaks one of them. Both
    routes. 1e-12."""
    arch = get_architecture(f"conv{depth}")
    x1, x2 = images
    wants = _routes(arch, x1, x2)
    moves = [lambda x: x[:, :, :, ::-1], lambda x: x[:, :, ::-1, :], lambda x: x[:, ::-1]]
    for move in moves:
        for got, want in zip(_routes(arch, move(x1), move(x2)), wants, strict=True):
            _close(got, want)
    transpose = lambda x: x.transpose(0, 1, 3, 2)  # noqa: E731
    for got, want in zip(_routes(arch, transpose(x1), transpose(x2)), wants, strict=True):  # 4x5 → 5x4
        _close(got, want)
    draw = np.random.default_rng(13)  # two sides of distinct images: stax's Θ(x, x) is off by ~1e-9
    rows = [draw.uniform(0, 1, size=(n, 3, 1, 6)) for n in (N1, N2)]  # 1x6 rows of RGB
    for got, want in zip(_routes(arch, *map(transpose, rows)), _routes(arch, *rows), strict=True):
        _close(got, want)


@pytest.mark.parametrize("name", ["fc2", "conv1", "conv2"])
def test_every_input_coordinate_twice_leaves_the_ntk_parameterised_kernels_unchanged(name, images):
    """NTK parameterisation divides each first-layer product by its fan-in: x·x'/d for dense nets,
    B[x·x'/C]/9 per pixel for convolutions (``kernels.relu``, ``kernels.conv``). Every channel
    written twice doubles both the products and the fan-in, so Θ does not change, with the
    default bias (σ_b = 0.1) as well; a normalisation by a count other than the fan-in (pixels
    for channels, a fixed d) breaks it. Both routes. 1e-12."""
    arch = get_architecture(name)
    x1, x2 = images
    twice = [np.concatenate([x, x], axis=1) for x in images]
    for got, want in zip(_routes(arch, *twice), _routes(arch, x1, x2), strict=True):
        _close(got, want)


def test_every_input_coordinate_twice_doubles_the_two_layer_ntk(images):
    """Eq. 29 has no fan-in normalisation: Θ = κ(u)·x·x' with u unchanged when every coordinate
    appears twice, while x·x' doubles, so Θ doubles (the two-layer net of eq. 28 scales its
    readout by m^(-1/2), not its input layer by d^(-1/2)). Both routes. 1e-12."""
    arch = get_architecture("two-layer")
    twice = [np.concatenate([x, x], axis=1) for x in images]
    for got, want in zip(_routes(arch, *twice), _routes(arch, *images), strict=True):
        _close(got, 2.0 * want)


# -- containers: dtype, layout, framework ------------------------------------------------------------


@pytest.mark.parametrize("name", ["fc2", "conv1"])
def test_the_container_of_the_inputs_changes_no_entry(name, images):
    """``compute_gram`` computes in float64 from NCHW host or device arrays: float32 images give
    exactly the Gram of their float64 copies, a CPU torch tensor and a JAX array exactly that of
    the numpy array, and for a dense net flat (N, C·H·W) rows that of the images
    (``Architecture.to_layout``)."""
    arch = get_architecture(name)
    x1, x2 = (x.astype(np.float32) for x in images)
    want = compute_gram(arch, x1.astype(np.float64), x2.astype(np.float64))
    np.testing.assert_array_equal(compute_gram(arch, x1, x2), want)
    np.testing.assert_array_equal(compute_gram(arch, torch.from_numpy(x1), torch.from_numpy(x2)), want)
    np.testing.assert_array_equal(compute_gram(arch, jnp.asarray(x1), jnp.asarray(x2)), want)
    if arch.layout == "flat":
        np.testing.assert_array_equal(compute_gram(arch, x1.reshape(N1, -1), x2.reshape(N2, -1)), want)


# -- the cache: what it serves for a transformation of what it holds ---------------------------------


@pytest.mark.parametrize("name", ["fc2", "conv1"])
def test_the_cache_serves_a_permutation_or_a_swap_of_its_inputs_their_own_gram(name, images, tmp_path):
    """The key hashes the exact input bytes and shapes (``gram_cache_key``): an entry computed for
    x, asked for P x, is a miss whose Gram is P Θ Pᵀ (never the entry's unpermuted matrix); the
    same for Θ(x2, x1) after Θ(x1, x2) (the transpose) and for Θ(x, x) after Θ(x, None) (equal
    values). A hit returns the stored array bit for bit whatever the memory budget of the run that
    asks, and the stored entry of P x is then a hit too."""
    arch = get_architecture(name)
    x1, x2 = images
    p = np.random.default_rng(8).permutation(N1)
    gram, outcome = cached_gram(arch, x1, cache_dir=tmp_path)
    assert outcome == "miss"
    moved, outcome = cached_gram(arch, x1[p], cache_dir=tmp_path)
    assert outcome == "miss"
    _close(moved, gram[np.ix_(p, p)])
    assert not np.array_equal(moved, gram)
    again, outcome = cached_gram(arch, x1[p], cache_dir=tmp_path, memory_budget=_budget(arch, x1.shape, 4))
    assert outcome == "hit"
    np.testing.assert_array_equal(again, moved)
    cross, outcome = cached_gram(arch, x1, x2, cache_dir=tmp_path)
    assert outcome == "miss"
    swapped, outcome = cached_gram(arch, x2, x1, cache_dir=tmp_path)
    assert outcome == "miss" and swapped.shape == (N2, N1)
    _close(swapped, cross.T)
    asymmetric, outcome = cached_gram(arch, x1, x1, cache_dir=tmp_path)
    assert outcome == "miss"
    _close(asymmetric, gram)
    for x, want in ((x1, gram), (x1[p], moved)):
        hit, outcome = cached_gram(arch, x, cache_dir=tmp_path)
        assert outcome == "hit"
        np.testing.assert_array_equal(hit, want)
    assert len(list(tmp_path.glob("gram-*.npz"))) == 5


def test_both_routes_give_one_kernel_on_the_inputs_and_scales_of_these_relations(images):
    """Guard for the relations above: on these inputs, at the default scales and at the bias-free
    ones of the homogeneity test, ``compute_gram`` equals stax's ``reference_kernel_fn`` (1e-10),
    so a relation that holds on one route and fails on the other points at that route's code."""
    x1, x2 = images
    archs = [get_architecture(name) for name in ("fc1", "fc2", "fc3", "conv1", "conv2", "two-layer")]
    archs += [factory(depth, W_std=w, b_std=0.0) for factory, depth in NO_BIAS for w in (1.3, 1.3 * 1.7)]
    for arch in archs:
        got, want = _routes(arch, x1, x2)
        _close(got, want, 1e-10)


# -- input gradients: the hand-written VJPs follow the same symmetries --------------------------------


def _input_gradient(arch, x1, x2, cotangent, closed: bool = False) -> np.ndarray:
    """Σ_j c_ij ∇_{x1_i} Θ(x1_i, x2_j) in NCHW: ``kernel_vjp`` (closed form) or reverse mode through
    ``kernel_fn`` (the hand-written VJPs of ``relu.relu_step`` and ``conv._patch_sum``)."""
    z = arch.to_layout(jnp.asarray(x1, jnp.float64))
    zc = arch.to_layout(jnp.asarray(x2, jnp.float64))
    cot = jnp.asarray(cotangent, jnp.float64)
    if closed:
        g = arch.kernel_vjp(z, zc, cot)
    else:
        _, vjp = jax.vjp(lambda z_: arch.kernel_fn(z_, zc, "ntk"), z)
        (g,) = vjp(cot)
    return np.asarray(arch.from_layout(g, x1.shape))


GRADIENTS = [
    (lambda: get_architecture("two-layer"), True),
    (lambda: get_architecture("two-layer"), False),
    (lambda: fully_connected(2, W_std=1.3, b_std=0.0), False),
    (lambda: convolutional(1, W_std=1.3, b_std=0.0), False),
]


@pytest.mark.parametrize(
    "make, closed", GRADIENTS, ids=["two-layer-closed", "two-layer", "fc2-no-bias", "conv1-no-bias"]
)
def test_input_gradients_permute_with_the_points_and_follow_the_scales_of_the_kernel(make, closed, images):
    """G(x1, x2, C) = Σ_j C_ij ∇_{x1_i} Θ(x1_i, x2_j) (supp. eq. 9's DΘ(x, X)ᵀ α): permuting x1 and
    x2 with the rows and columns of C permutes G's rows alike (each row reads its own point);
    Θ(a x, b x') = ab Θ(x, x') (bias-free nets, eq. 29) makes G(a x1, b x2, C) = b G(x1, x2, C);
    and for the convolution, whose kernel is invariant under a horizontal flip of every image,
    G of the flipped images is the flipped G. The closed form of eq. 9 and the hand-written VJPs
    (``relu_step``, ``_patch_sum``) are held to these, not only to autodiff. 1e-12."""
    arch = make()
    x1, x2 = images
    cot = np.random.default_rng(10).standard_normal((N1, N2))
    grad = _input_gradient(arch, x1, x2, cot, closed)
    rng = np.random.default_rng(12)
    p, q = rng.permutation(N1), rng.permutation(N2)
    _close(_input_gradient(arch, x1[p], x2[q], cot[np.ix_(p, q)], closed), grad[p])
    _close(_input_gradient(arch, 2.5 * x1, 0.3 * x2, cot, closed), 0.3 * grad)
    if arch.layout == "nhwc":
        flip = lambda x: x[:, :, :, ::-1]  # noqa: E731
        _close(_input_gradient(arch, flip(x1), flip(x2), cot, closed), flip(grad))


# -- alignment: the matched time of a net's outputs ---------------------------------------------------


def test_the_matched_time_ignores_the_order_of_the_training_points_and_of_the_classes(jax_strict):
    """``alignment.matching_time`` minimises ‖f_t(X) − outputs‖² summed over points and outputs,
    with f_t(X) = V diag(λ₊ g_t(λ)) Vᵀ Y (``alignment``'s docstring): fitting the machine on
    (X[p], Y[p]) permutes f_t(X) (eigenvectors permuted, spectrum unchanged) and the net's outputs
    are permuted alike, and relabelling the classes permutes the columns of Y and of the outputs,
    so neither changes the matched time; ``training_outputs`` permutes with them. The outputs are
    the machine's at t = 0.3 plus seeded noise (a net that is not exactly a machine). 1e-9 for the
    outputs, 1e-6 relative for the time (a golden-section search on a rounding-equal residual)."""
    from test_machine_audit import tiny_data

    from ntkrobust.kernels import fit_kernel_machine
    from ntkrobust.kernels.alignment import matching_time, training_outputs

    x_train, _, y3, _ = tiny_data(seed=7, n_test=1)
    arch = get_architecture("fc2")
    machine = fit_kernel_machine(arch, x_train, y3, time=0.0, ridge=0.01)
    rng = np.random.default_rng(9)
    clean = training_outputs(machine, 0.3)
    outputs = clean + 0.05 * np.abs(clean).max() * rng.standard_normal(clean.shape)
    want = matching_time(machine, outputs)
    assert want > 0
    p = rng.permutation(len(y3))
    moved = fit_kernel_machine(arch, x_train[p], y3[p], time=0.0, ridge=0.01)
    _close(training_outputs(moved, 0.3), clean[p], 1e-9)
    assert matching_time(moved, outputs[p]) == pytest.approx(want, rel=1e-6)
    relabel = np.array([2, 0, 1])  # class c is called relabel[c]: one-hot column c moves to relabel[c]
    renamed = fit_kernel_machine(arch, x_train, relabel[y3], time=0.0, ridge=0.01)
    columns = np.argsort(relabel)  # column j of the renamed task is the old class columns[j]
    _close(training_outputs(renamed, 0.3), clean[:, columns], 1e-9)
    assert matching_time(renamed, outputs[:, columns]) == pytest.approx(want, rel=1e-6)


def test_a_torch_tensor_that_requires_grad_gives_the_gram_of_its_values(images, tmp_path):
    """A bug this round found (fixed with ``kernels._host``, which every kernel entry point now
    reads torch tensors through): ``compute_gram`` takes "arrays (numpy, JAX or torch)", and a CPU
    tensor gives exactly the Gram of its values (the test above); the same tensor with
    ``requires_grad`` set (an attack's input, a net's batch) raised torch's "Can't call numpy() on
    Tensor that requires grad" from ``jnp.asarray``, from the cache key's ``np.ascontiguousarray``
    and from ``fit_kernel_machine``, while ``KernelMachine.predict`` and the kernel metrics read
    such a tensor as its values. Relation: Θ(t) = Θ(t.detach()) on every entry point, cached or not."""
    from ntkrobust.kernels import fit_kernel_machine, gram_matrix

    arch = get_architecture("fc2")
    x1, x2 = images
    want = compute_gram(arch, x1, x2)
    t1, t2 = (torch.tensor(x, requires_grad=True) for x in images)
    np.testing.assert_array_equal(compute_gram(arch, t1, t2), want)
    np.testing.assert_array_equal(gram_matrix(arch, t1, t2, cache_dir=tmp_path), want)
    np.testing.assert_array_equal(gram_matrix(arch, t1, cache_dir=tmp_path), compute_gram(arch, x1))
    labels = np.arange(N1) % 2
    np.testing.assert_array_equal(
        fit_kernel_machine(arch, t1, labels).eigenvalues, fit_kernel_machine(arch, x1, labels).eigenvalues
    )
