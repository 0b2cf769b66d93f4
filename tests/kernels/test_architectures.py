"""Which architectures share compiled programs and cached Grams: registered ones by name and
hyperparameters, hand-built ones never (their fingerprint does not say which kernel they compute)."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.kernels import (
    Architecture,
    compute_gram,
    fit_kernel_machine,
    get_architecture,
    gram_cache_path,
    is_registered,
)
from ntkrobust.kernels.architectures import fully_connected
from ntkrobust.kernels.gram import cached_gram


def test_the_registry_hands_out_one_object_per_name_and_hyperparameters():
    fc2 = get_architecture("fc2")
    assert get_architecture("fc2") is fc2 and fully_connected(2) is fc2 and is_registered(fc2)
    other = fully_connected(2, W_std=1.0)
    assert other is not fc2 and other.fingerprint() != fc2.fingerprint() and is_registered(other)


def _impostor(arch: Architecture) -> Architecture:
    """Named and parameterised like ``arch``, computing Θ + 1 (still a kernel)."""
    return Architecture(
        name=arch.name,
        description="hand-built: the registered kernel plus one",
        layout=arch.layout,
        kernel_fn=lambda x1, x2, get="ntk": arch.kernel_fn(x1, x2, get) + 1.0,
        hyperparameters=dict(arch.hyperparameters),
    )


def test_a_hand_built_architecture_named_like_a_registered_one_runs_its_own_kernel(digits_multiclass, jax_strict):
    fc1 = get_architecture("fc1")
    impostor = _impostor(fc1)
    assert impostor.fingerprint() == fc1.fingerprint() and not is_registered(impostor)
    x_train, y_train = digits_multiclass.x_train[:60], digits_multiclass.y_train[:60]
    x_test = digits_multiclass.x_test[:12]
    fit_kernel_machine(fc1, x_train, y_train).logits(x_test)  # fc1's programs compiled first

    machine = fit_kernel_machine(impostor, x_train, y_train)
    gram = compute_gram(impostor, x_train)
    np.testing.assert_allclose(gram, compute_gram(fc1, x_train) + 1.0, rtol=1e-12)
    expected = compute_gram(impostor, x_test, x_train) @ np.linalg.solve(gram, machine.targets)
    np.testing.assert_allclose(np.asarray(machine.logits(x_test)), expected, rtol=1e-6, atol=1e-8)


def test_a_hand_built_architecture_is_not_cached_on_disk(digits_multiclass, tmp_path, jax_strict):
    fc1 = get_architecture("fc1")
    x = digits_multiclass.x_train[:20]
    assert cached_gram(fc1, x, cache_dir=tmp_path)[1] == "miss"
    entries = sorted(tmp_path.iterdir())
    gram, outcome = cached_gram(_impostor(fc1), x, cache_dir=tmp_path)
    assert outcome == "off" and sorted(tmp_path.iterdir()) == entries  # fc1's entry neither read nor written
    np.testing.assert_allclose(gram, compute_gram(fc1, x) + 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="hand-built"):
        gram_cache_path(_impostor(fc1), x, None, tmp_path)
