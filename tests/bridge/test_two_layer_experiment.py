"""The two-layer experiment of TK supp. C, torch half: f − f₀, full-batch GD, the time alignment
with the kernel machine, and the gradient cosine of a very wide net."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge.adversarial import cross_entropy_gradient
from ntkrobust.bridge.checkpoint import load_checkpoint, save_checkpoint
from ntkrobust.bridge.data import load_dataset, task_indices
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.transfer import gradient_cosine
from ntkrobust.bridge.two_layer import (
    KernelAtTime,
    OutputChange,
    TwoLayerConfig,
    log_epochs,
    regression_loss,
    train_full_batch,
    two_layer_experiment,
)


@pytest.fixture(scope="module")
def three_vs_eight():
    return load_dataset("digits", classes=[3, 8], n_train=60, n_test=40, seed=0)


@pytest.fixture(scope="module")
def machine(three_vs_eight):
    from ntkrobust.kernels import fit_kernel_machine, get_architecture

    data = three_vs_eight
    return fit_kernel_machine(get_architecture("two-layer"), data.x_train, data.y_train, classes=data.classes, time=0.0)


def _view(shape, outputs, width, seed=0):
    config = model_config("two-layer", shape, outputs, width=width, seed=seed)
    return config, OutputChange(build_model(config), build_model(config))


def test_output_change_is_zero_at_initialisation_and_trains_only_the_net(three_vs_eight):
    _, view = _view(three_vs_eight.image_shape, 3, 64)
    x = torch.as_tensor(three_vs_eight.x_train[:5])
    assert torch.equal(view(x), torch.zeros(5, 3))
    assert [name for name, p in view.named_parameters() if p.requires_grad] == ["network.hidden.weight"]
    view.train()
    assert not view.initial.training


def test_output_change_checkpoint_rebuilds_f0_from_the_seed(tmp_path, three_vs_eight):
    config, view = _view(three_vs_eight.image_shape, 2, 32, seed=5)
    x = torch.as_tensor(three_vs_eight.x_train[:40])
    train_full_batch(view, x, torch.randn(40, 2), learning_rate=0.5, epochs=3)
    save_checkpoint(tmp_path / "net.pt", view, config, epoch=3)
    loaded, loaded_config, payload = load_checkpoint(tmp_path / "net.pt")
    assert isinstance(loaded, OutputChange) and payload["minus_initial"] and loaded_config == config
    assert set(payload["state_dict"]) == {"hidden.weight", "readout"}  # the net only: f0 comes from the seed
    torch.testing.assert_close(loaded(x), view(x), rtol=0, atol=0)


def test_log_epochs():
    assert log_epochs(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert log_epochs(30) == [1, 2, 5, 10, 20, 30]
    assert log_epochs(10, every=4) == [4, 8, 10]
    with pytest.raises(ValueError):
        log_epochs(0)


def test_chunked_full_batch_gradient_descent_equals_one_chunk(three_vs_eight):
    x = torch.as_tensor(three_vs_eight.x_train, dtype=torch.float64)
    targets = torch.randn(60, 1, dtype=torch.float64)
    nets = [_view(three_vs_eight.image_shape, 1, 50)[1].double() for _ in range(2)]
    seen: list[int] = []
    losses = [
        train_full_batch(nets[0], x, targets, learning_rate=0.3, epochs=4, chunk=60),
        train_full_batch(
            nets[1], x, targets, learning_rate=0.3, epochs=4, chunk=7, on_epoch=seen.append, measure_at=[0, 2, 4]
        ),
    ]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-12)
    torch.testing.assert_close(nets[0].network.hidden.weight, nets[1].network.hidden.weight, rtol=1e-12, atol=1e-14)
    assert seen == [0, 2, 4] and losses[0][-1] < losses[0][0]
    assert losses[0][0] == pytest.approx(float(regression_loss(torch.zeros(60, 1, dtype=torch.float64), targets)))


def test_divergence_is_reported(three_vs_eight):
    _, view = _view(three_vs_eight.image_shape, 1, 16)
    with pytest.raises(FloatingPointError, match="diverged"):  # (1e20)² overflows float32
        train_full_batch(
            view, torch.as_tensor(three_vs_eight.x_train), torch.full((60, 1), 1e20), learning_rate=1.0, epochs=2
        )


def test_epoch_and_kernel_time_align_on_a_tiny_case(three_vs_eight, machine):
    # gradient descent on (1/2n) Σ ‖f − y‖² with rate η advances the kernel time by η/n per epoch
    from ntkrobust.kernels.alignment import matching_time

    lr, n = 0.01, three_vs_eight.x_train.shape[0]
    _, view = _view(three_vs_eight.image_shape, 1, 20000)
    x = torch.as_tensor(three_vs_eight.x_train)
    ratios = []

    def measure(epoch: int) -> None:
        with torch.no_grad():
            ratios.append(matching_time(machine, view(x).double().numpy()) / (lr * epoch / n))

    train_full_batch(
        view,
        x,
        torch.as_tensor(machine.targets, dtype=torch.float32),
        learning_rate=lr,
        epochs=20,
        on_epoch=measure,
        measure_at=[1, 5, 20],
    )
    np.testing.assert_allclose(ratios, 1.0, atol=0.03)  # measured 1.005, 1.003, 0.996


def test_very_wide_net_has_the_kernels_loss_gradient_early(three_vs_eight, machine):
    # TK supp. eq. 30: cos(∇ₓL(f_t), ∇ₓL(f − f₀)) near 1 for a wide net, at the aligned time
    lr, n = 0.01, three_vs_eight.x_train.shape[0]
    _, view = _view(three_vs_eight.image_shape, 1, 20000)
    train_full_batch(
        view,
        torch.as_tensor(three_vs_eight.x_train),
        torch.as_tensor(machine.targets, dtype=torch.float32),
        learning_rate=lr,
        epochs=5,
    )
    y = task_indices(three_vs_eight.y_test, three_vs_eight.classes)
    kernel_gradient = np.asarray(machine.at_time(5 * lr / n).loss_gradient(three_vs_eight.x_test, y))
    net_gradient = cross_entropy_gradient(view)(torch.as_tensor(three_vs_eight.x_test), torch.as_tensor(y)).numpy()
    cosines = gradient_cosine(kernel_gradient, net_gradient)
    assert np.mean(cosines) > 0.95 and np.min(cosines) > 0.8  # measured mean 0.976
    # an unrelated net of the same width does not share the direction
    _, other = _view(three_vs_eight.image_shape, 1, 20000, seed=1)
    train_full_batch(
        other,
        torch.as_tensor(three_vs_eight.x_train),
        -torch.as_tensor(machine.targets, dtype=torch.float32),
        learning_rate=lr,
        epochs=5,
    )
    flipped = cross_entropy_gradient(other)(torch.as_tensor(three_vs_eight.x_test), torch.as_tensor(y)).numpy()
    assert np.mean(gradient_cosine(kernel_gradient, flipped)) < 0


def test_experiment_shares_the_kernel_across_nets_and_reports_every_epoch(three_vs_eight, machine):
    data = three_vs_eight
    y = task_indices(data.y_test, data.classes)
    calls: list[float] = []

    def kernel_at(t: float) -> KernelAtTime:
        calls.append(t)
        return KernelAtTime(t, np.ones_like(data.x_test), data.x_test.copy(), 0.9, 0.1)

    config = TwoLayerConfig(
        widths=(40,), seeds=(0, 1), epochs=6, measure_at=(1, 2, 6), anchor_epoch=2, learning_rate=0.05
    )
    result = two_layer_experiment(
        data.x_train,
        machine.targets,
        data.x_test,
        y,
        config,
        AttackSpec("fgsm", eps=0.1),
        match_time=lambda outputs: 0.25,
        kernel_at=kernel_at,
    )
    assert calls == [0.125, 0.25, 0.75]  # once per measured epoch, linear through (2, 0.25)
    assert [(n["width"], n["seed"]) for n in result.nets] == [(40, 0), (40, 1)]
    rows = result.nets[0]["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2, 6] and rows[-1]["matched_time"] == 0.25
    # the "NTK examples" here are the clean points, so they leave the net's clean accuracy
    assert all(r["ntk_attack_accuracy"] == r["clean_accuracy"] for r in rows)
    assert all(r["white_box_accuracy"] <= r["clean_accuracy"] for r in rows)
    assert result.net_pictures[0].shape == (3, *data.image_shape) and result.kernel_pictures.shape == (
        3,
        *data.image_shape,
    )
    assert result.time_per_epoch == 0.125
