"""Audit of ``studies.entk.run``: the points it takes, the AE-NTK's examples, the kernel and every
number it records, recomputed by hand.

The independent route: the points are redrawn from the documented rule (``bridge.data``'s
class-balanced ``balanced_indices`` with --seed, on the split asked for), the net rebuilt from the
registry with --seed, its PGD examples made with ``bridge.adversarial.pgd_examples`` with the
schedule written out here, and the full empirical NTK Θ[i, j, a, b] = Σ_p ∂f_a(x_i)/∂p ∂f_b(x_j)/∂p
taken from per-example parameter Jacobians with ``torch.func`` (not ``bridge.entk``), in float64.
Labels and accuracies are counted with numpy. Every setting is off its default (seed 6, the test
split, 12 points, eps 0.2, 3 steps of 0.05, the full kernel).
"""

from __future__ import annotations

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, entk
from ntkrobust.studies.entk import EntkSettings

SEED, N, EPS, STEP, STEPS = 6, 12, 0.2, 0.05, 3
DATA = DataSettings(classes=(3, 8), n_train=40, n_test=30, seed=SEED)


@pytest.fixture(scope="module")
def study():
    settings = EntkSettings(
        data=DATA, model="fc2", width=16, n=N, split="test", kind="full", adversarial_eps=EPS,
        pgd_steps=STEPS, pgd_step=STEP, dtype="float64", device="cpu",
    )  # fmt: skip
    return entk.run(settings), DATA.load()


def _full_kernel(net, x):
    """Θ (N, N, C, C) from per-example Jacobians of the outputs in the parameters."""
    import torch
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}

    def output(p, xi):
        return functional_call(net, p, (xi[None],))[0]

    jac = vmap(jacrev(output), in_dims=(None, 0))(params, x)  # name -> (N, C, *shape)
    flat = torch.cat([j.reshape(x.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)  # (N, C, P)
    return torch.einsum("iap,jbp->ijab", flat, flat).numpy()


def _same_metrics(recorded, mine):
    assert sorted(recorded) == sorted(mine)
    for key, value in mine.items():
        np.testing.assert_allclose(np.asarray(recorded[key], float), np.asarray(value, float), rtol=1e-9, err_msg=key)


def test_the_kernel_is_the_nets_on_its_own_pgd_examples_of_the_seeded_test_points(study):
    import torch

    from ntkrobust.bridge.adversarial import pgd_examples
    from ntkrobust.bridge.data import balanced_indices, task_indices
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.kernels.metrics import kernel_metrics

    result, data = study
    chosen = balanced_indices(data.y_test, data.classes, N, SEED)
    x_clean, y = data.x_test[chosen], data.y_test[chosen]
    arrays = result.arrays
    np.testing.assert_array_equal(arrays["x_clean"], x_clean)
    np.testing.assert_array_equal(arrays["y"], y)  # class ids, as the data has them
    net = build_model(model_config("fc2", (1, 8, 8), 2, width=16, seed=SEED)).double().eval()
    labels = torch.as_tensor(task_indices(y, data.classes))
    inputs = torch.as_tensor(x_clean, dtype=torch.float64)
    x_adv = pgd_examples(net, inputs, labels, eps=EPS, step=STEP, steps=STEPS, seed=SEED)
    np.testing.assert_allclose(arrays["x"], x_adv.numpy().astype(np.float32), atol=1e-7)
    kernel = _full_kernel(net, x_adv)
    np.testing.assert_allclose(arrays["kernel"], kernel, rtol=1e-9, atol=1e-12 * np.abs(kernel).max())

    with torch.no_grad():
        clean_pred, adv_pred = net(inputs).argmax(1).numpy(), net(x_adv).argmax(1).numpy()
    record = result.record
    assert record["accuracy_clean"] == pytest.approx(np.mean(clean_pred == labels.numpy()), abs=1e-15)
    assert record["accuracy_adversarial"] == pytest.approx(np.mean(adv_pred == labels.numpy()), abs=1e-15)
    np.testing.assert_array_equal(arrays["y_adversarial"], np.asarray(data.classes)[adv_pred])
    _same_metrics(record["metrics"], kernel_metrics(kernel, labels.numpy(), num_classes=2))
    _same_metrics(record["metrics_adversarial_labels"], kernel_metrics(kernel, adv_pred, num_classes=2))
    assert not np.array_equal(adv_pred, labels.numpy())  # the two label sets differ: the test can tell them apart


def test_the_config_holds_the_attack_that_ran(study):
    result, _ = study
    config = result.record["config"]
    assert config["adversarial"] == {"eps": EPS, "step": STEP, "steps": STEPS, "norm": "linf", "random_start": True}
    assert (config["split"], config["n"], config["kind"], config["dtype"]) == ("test", N, "full", "float64")
    assert result.record["network"]["seed"] == SEED and result.record["seed"] == SEED
    assert result.record["shape"] == [N, N, 2, 2]


def test_the_ae_ntks_default_schedule_is_recorded_as_it_ran():
    """Without --pgd-steps / --pgd-step the AE-NTK's PGD takes the standard schedule of the image
    type (``attacks.spec.pgd_schedule``), and the config says so, not None."""
    from ntkrobust.attacks import spec

    settings = EntkSettings(data=DATA, model="fc2", width=8, n=4, adversarial_eps=0.1, device="cpu")
    adversarial = entk.run(settings).record["config"]["adversarial"]
    step, steps = spec.pgd_schedule(1, "linf", 0.1, None, None)
    assert (adversarial["step"], adversarial["steps"]) == (step, steps) and isinstance(steps, int)
