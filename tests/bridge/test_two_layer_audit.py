"""Audit of ``bridge.two_layer`` (TK sec. 3.2, supp. C) by an independent route.

Every net of a small experiment (3 digit classes, one-hot targets, 2 seeds) is re-trained here by
a plain loop: f − f₀ with f₀ the same seed's net, full-batch gradient descent on
(1/2n) Σᵢ ‖f(xᵢ) − f₀(xᵢ) − yᵢ‖² with the configured rate, the gradient by autograd of that sum
written out (not ``train_full_batch`` nor ``regression_loss``). The experiment's nets must hold
the same weights (float32, tolerance 1e-6), the outputs it hands to ``match_time`` at the anchor
must be this net's, and every recorded number of the last epoch must be what this net gives:
clean accuracy, the share still correct under the stub kernel's examples, under FGSM written by
hand (x + ε·sign ∇ₓCE, clipped to [0, 1]) and under the random-sign baseline, the training loss,
the input gradient of the picture point (autograd of CE(f − f₀)) and the cosine with the kernel's.
The stub kernel's gradients and examples are seeded noise, different per point, so a wrong index
or a wrong model shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.transfer import random_sign_examples
from ntkrobust.bridge.two_layer import KernelAtTime, TwoLayerConfig, regression_loss, two_layer_experiment

CONFIG = TwoLayerConfig(
    widths=(24,), seeds=(2, 5), epochs=6, measure_at=(1, 3, 6), anchor_epoch=2, learning_rate=0.5, picture_index=3
)
ATTACK = AttackSpec("fgsm", eps=0.3)


@dataclass
class _Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int, int] = (1, 6, 6)


def _synthetic() -> _Data:
    """Three classes of 6x6 images in [0, 1]: class c brightens the c-th third of the rows by 0.2 over noise of 0.8 (the
    net learns something in 6 steps, so its accuracies move between the measured epochs)."""
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        x = 0.8 * rng.random((n, 1, 6, 6))
        for i, c in enumerate(y):
            x[i, 0, 2 * c : 2 * c + 2] += 0.2
        return x.astype(np.float32), y

    (x_train, y_train), (x_test, y_test) = draw(45), draw(30)
    return _Data(x_train, y_train, x_test, y_test)


@pytest.fixture(scope="module")
def experiment():
    data = _synthetic()
    targets = np.eye(3)[data.y_train]
    y_test = data.y_test
    rng = np.random.default_rng(0)
    gradients = {e: rng.standard_normal(data.x_test.shape) for e in CONFIG.measure_at}
    examples = np.roll(data.x_test, 1, axis=0)  # "adversarial examples" that are other test images
    seen: list[np.ndarray] = []

    def match_time(outputs: np.ndarray) -> float:
        seen.append(outputs.copy())
        return float(np.abs(outputs).sum())  # depends on the outputs it is given

    def kernel_at(t: float) -> KernelAtTime:  # called once per measured epoch, in order
        epoch = CONFIG.measure_at[len(calls)]
        calls.append(t)
        return KernelAtTime(t, gradients[epoch], examples, 0.9, 0.1)

    calls: list[float] = []
    result = two_layer_experiment(
        data.x_train, targets, data.x_test, y_test, CONFIG, ATTACK, match_time=match_time, kernel_at=kernel_at
    )
    return data, targets, y_test, gradients, examples, seen, result


def _train_by_hand(data, targets: np.ndarray, seed: int, epochs: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    config = model_config("two-layer", data.image_shape, 3, width=CONFIG.widths[0], seed=seed)
    net, initial = build_model(config), build_model(config)
    x = torch.as_tensor(data.x_train)
    y = torch.as_tensor(targets, dtype=torch.float32)
    n = x.shape[0]
    for _ in range(epochs):
        loss = ((net(x) - initial(x).detach() - y) ** 2).sum() / (2 * n)
        (grad,) = torch.autograd.grad(loss, [net.hidden.weight])
        with torch.no_grad():
            net.hidden.weight -= CONFIG.learning_rate * grad
    return net, initial


def _change(net, initial, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return net(torch.as_tensor(x)) - initial(torch.as_tensor(x))


def test_every_net_is_the_seeds_net_trained_by_plain_gradient_descent(experiment):
    data, targets, *_, result = experiment
    assert [(n["width"], n["seed"]) for n in result.nets] == [(24, 2), (24, 5)]
    for (config, view), seed in zip(result.networks, CONFIG.seeds, strict=True):
        assert config == model_config("two-layer", data.image_shape, 3, width=24, seed=seed)
        net, _initial = _train_by_hand(data, targets, seed, CONFIG.epochs)
        fresh = build_model(config)
        torch.testing.assert_close(view.initial.hidden.weight, fresh.hidden.weight, rtol=0, atol=0)
        torch.testing.assert_close(view.network.readout, fresh.readout, rtol=0, atol=0)
        torch.testing.assert_close(view.network.hidden.weight, net.hidden.weight, rtol=1e-5, atol=1e-6)
        assert not torch.equal(net.hidden.weight, fresh.hidden.weight)  # it did train


def test_the_anchor_is_the_first_net_after_the_anchor_epoch(experiment):
    data, targets, _, _, _, seen, result = experiment
    net, initial = _train_by_hand(data, targets, CONFIG.seeds[0], CONFIG.anchor_epoch)
    np.testing.assert_allclose(seen[0], _change(net, initial, data.x_train).double().numpy(), rtol=1e-5, atol=1e-6)
    assert result.anchor_time == pytest.approx(float(np.abs(seen[0]).sum()))
    assert result.time_per_epoch == pytest.approx(result.anchor_time / CONFIG.anchor_epoch)


def _share_still_correct(net, initial, x_adv: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    clean = _change(net, initial, x).argmax(1).numpy() == y
    return float(np.mean(clean & (_change(net, initial, x_adv).argmax(1).numpy() == y)))


def _input_gradient(net, initial, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    inputs = torch.as_tensor(x).clone().requires_grad_(True)
    loss = F.cross_entropy(net(inputs) - initial(inputs), torch.as_tensor(y), reduction="sum")
    return torch.autograd.grad(loss, inputs)[0].numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_last_epochs_numbers_are_the_trained_nets(experiment):
    data, targets, y_test, gradients, examples, _seen, result = experiment
    pick, last = CONFIG.picture_index, CONFIG.epochs
    for index, seed in enumerate(CONFIG.seeds):
        net, initial = _train_by_hand(data, targets, seed, last)
        rows = result.nets[index]["epochs"]
        assert [r["epoch"] for r in rows] == list(CONFIG.measure_at)
        row = rows[-1]
        outputs = _change(net, initial, data.x_train).double().numpy()
        assert row["train_loss"] == pytest.approx(0.5 * np.sum((outputs - targets) ** 2) / len(targets), rel=1e-5)
        assert row["matched_time"] == pytest.approx(float(np.abs(outputs).sum()), rel=1e-5)
        clean = _change(net, initial, data.x_test).argmax(1).numpy() == y_test
        assert row["clean_accuracy"] == pytest.approx(clean.mean())
        assert row["ntk_attack_accuracy"] < row["clean_accuracy"]  # the stub examples change predictions
        assert row["random_accuracy"] < row["clean_accuracy"] and row["white_box_accuracy"] < row["random_accuracy"]
        assert row["ntk_attack_accuracy"] == pytest.approx(
            _share_still_correct(net, initial, examples, data.x_test, y_test)
        )
        noisy = random_sign_examples(data.x_test, ATTACK)
        assert row["random_accuracy"] == pytest.approx(_share_still_correct(net, initial, noisy, data.x_test, y_test))
        gradient = _input_gradient(net, initial, data.x_test, y_test)
        fgsm = np.clip(data.x_test + ATTACK.eps * np.sign(gradient), 0, 1).astype(np.float32)
        assert row["white_box_accuracy"] == pytest.approx(_share_still_correct(net, initial, fgsm, data.x_test, y_test))
        # cosines of 0.003-0.008 that the two routes give within 5e-10: abs=1e-4 passed a 1% error
        assert row["gradient_cosine"] == pytest.approx(
            float(np.mean(_cosines(gradients[last], gradient))), rel=1e-5, abs=0
        )
        picture = result.net_pictures[index][-1]
        assert _cosines(picture[None], gradient[pick][None])[0] > 1 - 1e-5
        np.testing.assert_allclose(picture, gradient[pick], rtol=1e-3, atol=1e-6)
        final = result.nets[index]
        for key in (
            "clean_accuracy",
            "white_box_accuracy",
            "ntk_attack_accuracy",
            "random_accuracy",
            "gradient_cosine",
        ):
            assert final[key] == row[key], key
        assert rows[0]["gradient_cosine"] != row["gradient_cosine"]  # the first row is not the last
    np.testing.assert_array_equal(result.kernel_pictures, np.stack([gradients[e][pick] for e in CONFIG.measure_at]))
    assert [k["time"] for k in result.kernel] == pytest.approx([e * result.time_per_epoch for e in CONFIG.measure_at])


def test_regression_loss_is_half_the_mean_over_examples_of_the_squared_norm():
    """(1/2n) Σᵢ ‖fᵢ − yᵢ‖² over n = 2 rows of k = 3: not a mean over all n·k entries, not without ½."""
    outputs = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert float(regression_loss(outputs, targets)) == pytest.approx((4 + 9 + 1 + 1) / 4)


@pytest.mark.parametrize(
    "changes",
    [{"measure_at": (0, 6)}, {"measure_at": (1, 7)}, {"anchor_epoch": 0}, {"anchor_epoch": 7}, {"widths": (0,)}],
)
def test_inconsistent_experiment_configs_are_refused(changes):
    arguments = {"widths": (8,), "seeds": (0,), "epochs": 6, "measure_at": (1, 6), "anchor_epoch": 2, **changes}
    with pytest.raises(ValueError):
        TwoLayerConfig(**arguments)


@pytest.mark.parametrize("rate", [0.0, -0.1, float("inf"), float("nan")])
def test_gradient_descent_refuses_a_rate_that_is_not_finite_and_positive(rate):
    from ntkrobust.bridge.two_layer import train_full_batch

    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        train_full_batch(model, torch.zeros(3, 2), torch.zeros(3, 1), learning_rate=rate, epochs=1)
