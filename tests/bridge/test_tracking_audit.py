"""Kernel tracking, audited by recomputing what ``KernelTracker.track`` stores from its parts:
the PGD examples of the probe (``pgd_examples`` with the tracker's seed), the nets' predictions
on them by hand (argmax of the logits), the class blocks of ``empirical_ntk`` on the clean and on
the adversarial points, and their trace kernel by hand (numpy mean of the C blocks). Which
metrics go with which kernel and which labels is checked against ``kernel_metrics`` of those
recomputed kernels; the preconditions (adversarial points differ from the clean ones, their
predicted labels differ from the clean predictions and from the targets) are asserted, so that
a swap cannot pass unseen."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

from ntkrobust.bridge.adversarial import pgd_examples
from ntkrobust.bridge.entk import BudgetError, check_memory_budget, empirical_ntk
from ntkrobust.bridge.tracking import KernelTracker, TrackingConfig
from ntkrobust.kernels.metrics import kernel_metrics

CLASSES = 4
EPS, STEP, STEPS = 0.5, 0.2, 4  # strong enough to move most predictions of an untrained net


def _probe(n_per_class: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(CLASSES * n_per_class, 1, 4, 4, generator=generator)
    y = torch.arange(CLASSES).repeat(n_per_class)
    return x, y


def _mlp(seed: int = 0) -> nn.Module:
    """An MLP fitted to the probe (an untrained one predicts one class everywhere, and its PGD
    examples would change no prediction)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, CLASSES))
    x, y = _probe()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()


def _bn_net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 2), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(27, CLASSES))
    with torch.no_grad():
        net[1].running_mean.fill_(0.3)
        net[1].running_var.fill_(2.0)
    return net.eval()


def _tracker(x, y, **changes) -> KernelTracker:
    return KernelTracker(x=x, targets=y, num_classes=CLASSES, eps=EPS, step=STEP, steps=STEPS, **changes)


def _by_hand_predictions(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net(x).numpy().argmax(axis=1)


def _same_metrics(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert got[key] == value
        else:
            as_float = functools.partial(np.asarray, dtype=np.float64)  # null columns of a KSM: NaN
            np.testing.assert_allclose(as_float(got[key]), as_float(value), rtol=1e-6, atol=1e-9, err_msg=key)


@pytest.fixture(scope="module")
def tracked():
    """An MLP's tracked kernels on a 12-point probe, with the tracker's seed 7."""
    x, y = _probe()
    net = _mlp()
    arrays, record = _tracker(x, y, seed=7).track(net)
    return net, x, y, arrays, record


def test_the_ae_ntk_is_taken_on_the_nets_own_pgd_examples_of_the_probe(tracked):
    """x_adv is the PGD of the probe with the tracker's seed (not seed 0); the C-NTK is the trace
    of the clean points' class blocks and the AE-NTK the trace of the adversarial points' (numpy
    mean over the C blocks), not the clean kernel twice."""
    net, x, y, arrays, _ = tracked
    x_adv = pgd_examples(net, x, y, eps=EPS, step=STEP, steps=STEPS, seed=7)
    np.testing.assert_array_equal(arrays["x_adversarial"], x_adv.numpy())
    assert not torch.equal(x_adv, pgd_examples(net, x, y, eps=EPS, step=STEP, steps=STEPS, seed=0))
    assert (x_adv - x).abs().max() > 0.1 and (x_adv - x).abs().max() <= EPS + 1e-6
    clean = empirical_ntk(net, x, kind="class-blocks")
    adversarial = empirical_ntk(net, x_adv, kind="class-blocks")
    assert clean.shape == (12, 12, CLASSES)
    np.testing.assert_allclose(arrays["clean"], clean.mean(axis=2), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(arrays["adversarial"], adversarial.mean(axis=2), rtol=1e-10, atol=1e-12)
    assert np.abs(arrays["clean"] - arrays["adversarial"]).max() > 1e-3 * np.abs(arrays["clean"]).max()
    assert arrays["clean"].dtype == arrays["adversarial"].dtype == np.float64


def test_adversarial_labels_are_the_predictions_on_the_adversarial_examples(tracked):
    """The "adversarial labels" (RAT sec. 4) are argmax f(x_adv), by hand, stored as int64 and used
    for the third set of metrics; the clean and the AE-NTK's first metrics use the targets."""
    net, x, y, arrays, record = tracked
    x_adv = torch.from_numpy(arrays["x_adversarial"])
    predicted_adv = _by_hand_predictions(net, x_adv)
    predicted_clean = _by_hand_predictions(net, x)
    assert (predicted_adv != predicted_clean).any() and (predicted_adv != y.numpy()).any()
    np.testing.assert_array_equal(arrays["predicted_adversarial"], predicted_adv)
    assert arrays["predicted_adversarial"].dtype == np.int64
    clean = empirical_ntk(net, x, kind="class-blocks")
    adversarial = empirical_ntk(net, x_adv, kind="class-blocks")
    labels = y.numpy()
    _same_metrics(record["clean"], kernel_metrics(clean, labels, num_classes=CLASSES))
    _same_metrics(record["adversarial"], kernel_metrics(adversarial, labels, num_classes=CLASSES))
    _same_metrics(record["adversarial_labels"], kernel_metrics(adversarial, predicted_adv, num_classes=CLASSES))
    # the three records differ: a swap of kernels or labels would show
    assert record["adversarial"]["kernel_target_alignment"] != record["adversarial_labels"]["kernel_target_alignment"]
    assert record["adversarial"]["frobenius_norm"] != record["clean"]["frobenius_norm"]
    assert "mean_specialization" in record["clean"]  # the class blocks give the specialization
    assert record["probe_accuracy"]["clean"] == pytest.approx(float((predicted_clean == labels).mean()), abs=1e-12)
    assert record["probe_accuracy"]["pgd"] == pytest.approx(float((predicted_adv == labels).mean()), abs=1e-12)
    assert record["probe_accuracy"]["pgd"] != record["probe_accuracy"]["clean"]
    assert record["seconds"] > 0


def test_a_kernel_network_gives_the_kernels_and_the_model_the_attack_and_the_labels():
    """Linearized dynamics: the eNTK is the ``kernel_network``'s (here another net), while the PGD
    examples and the predictions are the model's."""
    x, y = _probe()
    model, parent = _mlp(0), _mlp(1)
    arrays, record = _tracker(x, y).track(model, parent)
    x_adv = pgd_examples(model, x, y, eps=EPS, step=STEP, steps=STEPS, seed=0)
    np.testing.assert_array_equal(arrays["x_adversarial"], x_adv.numpy())
    np.testing.assert_array_equal(arrays["predicted_adversarial"], _by_hand_predictions(model, x_adv))
    np.testing.assert_allclose(
        arrays["clean"], empirical_ntk(parent, x, kind="class-blocks").mean(axis=2), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        arrays["adversarial"], empirical_ntk(parent, x_adv, kind="class-blocks").mean(axis=2), rtol=1e-10, atol=1e-12
    )
    accuracy = float((_by_hand_predictions(model, x) == y.numpy()).mean())
    assert record["probe_accuracy"]["clean"] == pytest.approx(accuracy)


def _train_mode_predictions(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Predictions with every BatchNorm normalising by the batch's own statistics (a train-mode copy)."""
    copied = copy.deepcopy(net).train()
    with torch.no_grad():
        return copied(x).numpy().argmax(axis=1)


def test_batch_statistics_tracking_uses_the_batchs_statistics_everywhere():
    """batchnorm="batch" (RAT's "w/o buffer"): predictions and the attack with the batch's own
    statistics, the kernels with the statistics of their own point set (``batch_stats=True``); the
    running statistics are left as they were. "running" differs."""
    x, y = _probe()
    net = _bn_net()
    before = {key: value.clone() for key, value in net.state_dict().items()}
    arrays, record = _tracker(x, y, batchnorm="batch").track(net)
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())
    x_adv = torch.from_numpy(arrays["x_adversarial"])
    np.testing.assert_array_equal(arrays["predicted_adversarial"], _train_mode_predictions(net, x_adv))
    clean_predictions = _train_mode_predictions(net, x)
    assert record["probe_accuracy"]["clean"] == pytest.approx(float((clean_predictions == y.numpy()).mean()))
    assert (clean_predictions != _by_hand_predictions(net, x)).any()  # the two modes differ here
    for key, points in (("clean", x), ("adversarial", x_adv)):
        expected = empirical_ntk(net, points, kind="class-blocks", batch_stats=True).mean(axis=2)
        np.testing.assert_allclose(arrays[key], expected, rtol=1e-10, atol=1e-12)
        running = empirical_ntk(net, points, kind="class-blocks").mean(axis=2)
        assert np.abs(arrays[key] - running).max() > 1e-3 * np.abs(running).max()
    running_arrays, _ = _tracker(x, y).track(net)
    np.testing.assert_allclose(
        running_arrays["clean"], empirical_ntk(net, x, kind="class-blocks").mean(axis=2), rtol=1e-10, atol=1e-12
    )


def test_an_estimated_trace_is_tracked_without_the_specialization():
    """kind="rademacher:3": the stored kernels are the estimate itself (seed 0 of ``bridge.entk``),
    and the metrics that need the class blocks are absent."""
    x, y = _probe()
    net = _mlp()
    arrays, record = _tracker(x, y, kind="rademacher:3").track(net)
    np.testing.assert_allclose(arrays["clean"], empirical_ntk(net, x, kind="rademacher:3"), rtol=1e-10, atol=1e-12)
    assert "mean_specialization" not in record["clean"] and "frobenius_norm" in record["clean"]
    assert "clean_full" not in arrays


def test_the_budget_check_is_the_kernels_own_for_its_kind_and_batchnorm_mode(monkeypatch):
    """``check_budget`` asks ``check_memory_budget`` about the tracked kind, BatchNorm mode and
    budget (a spy records the call), and refuses a budget too small for the probe's kernel."""
    from ntkrobust.bridge import tracking

    x, y = _probe()
    net = _bn_net()
    with pytest.raises(BudgetError, match="too small"):
        _tracker(x, y, kind="full", batchnorm="batch", memory_budget=3_000).check_budget(net)
    _tracker(x, y, kind="full", batchnorm="batch", memory_budget=2**24).check_budget(net)
    calls = []

    def spy(network, points, **options):
        calls.append((network, points, options))
        return check_memory_budget(network, points, **options)

    monkeypatch.setattr(tracking, "check_memory_budget", spy)
    _tracker(x, y, kind="full", batchnorm="batch", memory_budget=123_456).check_budget(net)
    _tracker(x, y, kind="rademacher:2", memory_budget=654_321).check_budget(net)
    assert [(network is net, points is x) for network, points, _ in calls] == [(True, True)] * 2
    assert [options for _, _, options in calls] == [
        {"kind": "full", "batch_stats": True, "memory_budget": 123_456},
        {"kind": "rademacher:2", "batch_stats": False, "memory_budget": 654_321},
    ]


def test_the_tracked_kind_follows_the_configuration():
    base = {"eps": 0.1, "step": 0.03, "steps": 2}
    assert TrackingConfig(**base).kernel_kind == "class-blocks"
    assert TrackingConfig(**base, track_full=True).kernel_kind == "full"
    assert TrackingConfig(**base, estimator="rademacher:5").kernel_kind == "rademacher:5"
    for bad in ("rademacher:0", "rademacher", "trace", "class:1", "full"):
        with pytest.raises(ValueError, match="--estimator must be exact or rademacher:K"):
            TrackingConfig(**base, estimator=bad)
    with pytest.raises(ValueError, match="--track-full"):
        TrackingConfig(**base, estimator="rademacher:5", track_full=True)


@pytest.mark.parametrize("every", [None, 1, 2, 3])
def test_the_full_evaluation_is_due_at_the_last_epoch_and_every_k(every):
    """By hand: never without full steps; at the last epoch (epoch 0 only for a run of 0 epochs);
    and at every multiple of ``full_every`` after the initialisation."""
    config = TrackingConfig(eps=0.1, step=0.03, steps=2, full_step=0.01, full_steps=5, full_every=every)
    for last in (0, 1, 4, 6):
        for epoch in range(last + 1):
            expected = epoch == last or (epoch > 0 and every is not None and epoch % every == 0)
            assert config.full_due(epoch, last) == expected, (epoch, last)
    never = TrackingConfig(eps=0.1, step=0.03, steps=2, full_every=every)
    assert not any(never.full_due(epoch, 4) for epoch in range(5))


def test_a_run_stores_per_epoch_the_kernels_of_its_checkpoints_on_a_balanced_probe(tmp_path):
    """A one-epoch run on digits: the probe is class-balanced training points (2 of each of the 10
    classes); each kernel file holds the trace C-NTK of that epoch's checkpoint on the probe and
    its AE-NTK on the stored PGD examples (within ε of the probe), recomputed here from the
    checkpoint (float32 nets: relative 1e-5), and the record's metrics are those kernels' under the
    targets and under the checkpoint's predictions on the PGD examples."""
    from ntkrobust.bridge.data import load_dataset, task_indices
    from ntkrobust.bridge.experiment import run_training
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.bridge.training import TrainConfig

    data = load_dataset("digits", n_train=60, n_test=30, seed=0)
    config = model_config("fc2", data.image_shape, len(data.classes), width=16, seed=0)
    train = TrainConfig(mode="pgd", epochs=1, lr=0.3, batch_size=30, eps=0.1, pgd_step=0.03, pgd_steps=2)
    tracking = TrackingConfig(eps=0.1, step=0.03, steps=2, probe=20, eval_n=20)
    history = run_training(
        tmp_path, build_model(config), config, data, train, tracking, config={}, label="t", device=torch.device("cpu")
    )
    with np.load(tmp_path / "kernels" / "probe.npz") as probe:
        x, targets = probe["x"], probe["targets"]
    np.testing.assert_array_equal(np.bincount(targets, minlength=10), np.full(10, 2))
    train_targets = task_indices(data.y_train, data.classes)
    rows = [int(np.flatnonzero((data.x_train == point).all(axis=(1, 2, 3)))[0]) for point in x]
    assert len(set(rows)) == 20 and (train_targets[rows] == targets).all()
    assert [record["file"] for record in history["kernels"]] == ["kernels/step_0000000.npz", "kernels/step_0000002.npz"]
    x = torch.from_numpy(x)
    for epoch, record in enumerate(history["kernels"]):
        net = build_model(config)
        checkpoint = torch.load(tmp_path / "checkpoints" / f"epoch_{epoch:03d}.pt", weights_only=True)
        net.load_state_dict(checkpoint["state_dict"])
        net.eval()
        with np.load(tmp_path / record["file"]) as arrays:
            stored = {key: arrays[key] for key in arrays.files}
        x_adv = torch.from_numpy(stored["x_adversarial"])
        assert 0 < float((x_adv - x).abs().max()) <= 0.1 + 1e-6 and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1
        clean = empirical_ntk(net, x, kind="class-blocks")
        adversarial = empirical_ntk(net, x_adv, kind="class-blocks")
        for key, blocks in (("clean", clean), ("adversarial", adversarial)):
            np.testing.assert_allclose(stored[key], blocks.mean(axis=2), rtol=1e-5, atol=1e-6 * np.abs(blocks).max())
        predicted = _by_hand_predictions(net, x_adv)
        np.testing.assert_array_equal(stored["predicted_adversarial"], predicted)
        for key, kernel, labels in (
            ("clean", clean, targets),
            ("adversarial", adversarial, targets),
            ("adversarial_labels", adversarial, predicted),
        ):
            expected = kernel_metrics(kernel, labels, num_classes=10)
            assert record[key].keys() == expected.keys()
            for name in {"frobenius_norm", "kernel_target_alignment", "mean_specialization"} & expected.keys():
                assert record[key][name] == pytest.approx(expected[name], rel=1e-4), (epoch, key, name)
    assert history["kernels"][0]["clean"]["frobenius_norm"] != history["kernels"][1]["clean"]["frobenius_norm"]
