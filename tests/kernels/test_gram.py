"""Batched Gram matrices against the unbatched kernel, and the disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.kernels import ARCHITECTURES, UnknownArchitectureError, compute_gram, get_architecture, gram_matrix
from ntkrobust.kernels.gram import gram_cache_path


@pytest.fixture
def images(rng):
    return rng.uniform(0, 1, size=(23, 1, 6, 6)).astype(np.float32), rng.uniform(0, 1, size=(17, 1, 6, 6)).astype(
        np.float32
    )


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_batched_padded_gram_equals_one_unbatched_call(name, images, jax_strict):
    """Chunked (block side 8, ragged sizes 23 x 17 padded) against one call of kernel_fn."""
    from ntkrobust.kernels._jax import jnp

    arch = get_architecture(name)
    x1, x2 = images
    budget = 8 * 16 * arch.entry_cost(x1.shape) * 8 * 8  # a block side of exactly 8
    chunked = compute_gram(arch, x1, x2, memory_budget=budget)
    whole = np.asarray(
        arch.kernel_fn(
            arch.to_layout(jnp.asarray(x1, jnp.float64)), arch.to_layout(jnp.asarray(x2, jnp.float64)), "ntk"
        )
    )
    assert chunked.shape == (23, 17) and chunked.dtype == np.float64
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)
    in_budget = compute_gram(arch, x1, x2)  # within the default budget: one jitted call, no blocks
    np.testing.assert_allclose(in_budget, whole, rtol=1e-12)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_symmetric_block_pairs_equal_the_whole_matrix(name, images, jax_strict):
    """Θ(X, X) from the block pairs i <= j (side 8 on 23 points: 3 blocks, the last one padded)
    against one call of kernel_fn on the whole set; and, above 256 points within the budget, the
    same route with at least six blocks. float64, 1e-12."""
    from ntkrobust.kernels import gram as gram_module
    from ntkrobust.kernels._jax import jnp

    arch = get_architecture(name)
    x = images[0]
    budget = 8 * 16 * arch.entry_cost(x.shape) * 8 * 8  # a block side of exactly 8
    whole = np.asarray(arch.kernel_fn(*[arch.to_layout(jnp.asarray(x, jnp.float64))] * 2, "ntk"))
    blocked = compute_gram(arch, x, memory_budget=budget)
    np.testing.assert_array_equal(blocked, blocked.T)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12)
    calls = []
    kernel = gram_module._whole_gram(arch)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gram_module, "_whole_gram", lambda arch_: lambda u, v: calls.append(u.shape[0]) or kernel(u, v))
        patch.setattr(gram_module, "_SYMMETRIC_WHOLE_BELOW", 20)  # 23 points count as many
        many = compute_gram(arch, x)
    assert calls == [4] * 21  # ceil(23 / 6) = 4 rows per block, 6 blocks: 21 pairs i <= j
    np.testing.assert_allclose(many, whole, rtol=1e-12)


def test_symmetric_gram_is_exactly_symmetric_and_psd(images):
    gram = compute_gram(get_architecture("fc3"), images[0])
    np.testing.assert_array_equal(gram, gram.T)
    assert np.linalg.eigvalsh(gram).min() > -1e-10 * np.abs(gram).max()


def test_cache_reuses_and_distinguishes(images, tmp_path, monkeypatch):
    arch = get_architecture("fc2")
    x = images[0]
    first = gram_matrix(arch, x, cache_dir=tmp_path)
    path = gram_cache_path(arch, x, None, tmp_path)
    assert path.exists()

    import ntkrobust.kernels.gram as gram_module

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(gram_module, "compute_gram", fail)
    np.testing.assert_array_equal(gram_matrix(arch, x, cache_dir=tmp_path), first)
    # Different data, or a different architecture, is a different file.
    other = x.copy()
    other[0, 0, 0, 0] += 0.01
    assert gram_cache_path(arch, other, None, tmp_path) != path
    assert gram_cache_path(get_architecture("fc3"), x, None, tmp_path) != path


def test_corrupt_cache_file_is_recomputed(images, tmp_path):
    arch = get_architecture("fc1")
    x = images[0]
    path = gram_cache_path(arch, x, None, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an npz")
    np.testing.assert_allclose(gram_matrix(arch, x, cache_dir=tmp_path), compute_gram(arch, x), rtol=1e-12)
    with np.load(path, allow_pickle=False) as f:
        assert f["gram"].shape == (23, 23)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(UnknownArchitectureError, match="fc1, fc2"):
        get_architecture("resnet")


def test_inputs_with_nan_or_of_two_shapes_are_refused(images):
    arch, x = get_architecture("fc2"), images[0]
    with pytest.raises(ValueError, match="NaN or inf"):
        compute_gram(arch, np.where(x > 0.5, np.nan, x))
    with pytest.raises(ValueError, match=r"inputs of shapes \(1, 6, 6\) and \(1, 7, 7\): one kernel takes one"):
        compute_gram(arch, x, np.zeros((3, 1, 7, 7)))
    with pytest.raises(TypeError, match="inputs must be arrays"):
        compute_gram(arch, x.tolist())
