"""No host round trip per step: attacks, training and the two-layer trainer keep their tensors on
the device and read them back a bounded number of times, however many steps they take.

On a GPU each read of a tensor's value (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``,
``float(t)``, ``bool(t)``, ``int(t)``) waits for every queued kernel. Here, on the CPU, the reads
are counted by wrapping those methods; the counts must not grow with the number of steps.
(Syncs that these methods do not make, such as boolean-mask indexing, are not counted.)

The other way round, a copy from ordinary host memory to a GPU waits for the GPU's queue as
well: ``blocking_uploads`` counts the calls that would make one (``.to(device)`` without
``non_blocking``, ``torch.as_tensor`` / ``torch.tensor`` with a device); on the CPU they copy
nothing, but a count that grows with the steps is a round trip per step on a GPU.
"""

from __future__ import annotations

import collections
import functools
import traceback
from pathlib import Path

import pytest
import torch

from ntkrobust.bridge.adversarial import accuracy, adversarial_examples
from ntkrobust.bridge.data import load_dataset, task_indices
from ntkrobust.bridge.evaluation import robust_correct
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble
from ntkrobust.bridge.training import READ_EVERY, TrainConfig, make_optimizer, train_epoch
from ntkrobust.bridge.two_layer import train_full_batch

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture
def host_reads(monkeypatch):
    """A counter of tensor reads to the host, by method name, while the test runs."""
    counts: collections.Counter[str] = collections.Counter()

    def counted(name):
        method = getattr(torch.Tensor, name)

        @functools.wraps(method)
        def read(self, *args, **kwargs):
            counts[name] += 1
            return method(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    # the counter sees the implicit conversions too, or every count below would pass vacuously
    assert float(torch.ones(())) == 1.0 and bool(torch.ones(())) and counts == {"__float__": 1, "__bool__": 1}
    counts.clear()
    return counts


@pytest.fixture
def blocking_uploads(monkeypatch):
    """A counter of the calls that would copy to a GPU from pageable memory, by caller line."""
    counts: collections.Counter[str] = collections.Counter()

    def count() -> None:
        caller = traceback.extract_stack(limit=3)[0]
        counts[f"{Path(caller.filename).name}:{caller.lineno}"] += 1

    to = torch.Tensor.to

    def counted_to(self, *args, **kwargs):
        if not kwargs.get("non_blocking") and any(
            isinstance(a, (str, torch.device)) for a in (*args, kwargs.get("device"))
        ):
            count()
        return to(self, *args, **kwargs)

    def with_device(make):
        @functools.wraps(make)
        def counted(*args, **kwargs):
            if kwargs.get("device") is not None:
                count()
            return make(*args, **kwargs)

        return counted

    monkeypatch.setattr(torch.Tensor, "to", counted_to)
    monkeypatch.setattr(torch, "as_tensor", with_device(torch.as_tensor))
    monkeypatch.setattr(torch, "tensor", with_device(torch.tensor))
    # the counter sees each way in, or the count below would pass vacuously
    torch.zeros(1).to("cpu"), torch.as_tensor([1], device="cpu"), torch.tensor([1], device="cpu")
    assert sum(counts.values()) == 3, counts
    torch.zeros(1).to("cpu", non_blocking=True)
    assert sum(counts.values()) == 3, counts
    counts.clear()
    return counts


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", n_train=160, n_test=40, seed=0)
    x = torch.as_tensor(data.x_train)
    return data, x, torch.as_tensor(task_indices(data.y_train, data.classes))


def _cnn(data):
    return build_model(model_config("mnist-cnn", data.image_shape, len(data.classes), width=8, seed=0))


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_white_box_attacks_read_nothing(digits, host_reads, blocking_uploads, method):
    data, x, y = digits
    model = _cnn(data).eval()
    uploads = []
    for steps in (3, 9):
        adversarial_examples(model, x, y, method=method, eps=0.1, step=0.02, steps=steps, batch_size=64)
        assert sum(host_reads.values()) == 0, (steps, host_reads)
        uploads.append(dict(blocking_uploads))
        blocking_uploads.clear()
    assert uploads[0] == uploads[1], uploads  # per batch at most, not per step


def test_accuracy_reads_once_with_its_label_check(digits, host_reads):
    """The share and the labels' range come back in one read, however many batches."""
    data, x, y = digits
    model = _cnn(data).eval()
    for batch_size in (16, 160):
        accuracy(model, x, y, batch_size=batch_size)
        assert host_reads == {"tolist": 1}, (batch_size, host_reads)
        host_reads.clear()


def test_evaluation_reads_once_per_attack(digits, host_reads):
    """PGD-20 and PGD-100 make the same reads: the per-point flags of each attack, once."""
    data, x, y = digits
    model = _cnn(data).eval()
    counts = []
    for attack in ("pgd-20", "pgd-100"):
        robust_correct(model, x[:64], y[:64], eps=0.1, channels=1, attacks=(attack,), batch_size=32)
        counts.append(sum(host_reads.values()))
        host_reads.clear()
    assert counts[0] == counts[1] <= 4, counts  # the clean and the attacked flags, each .cpu().numpy()


@pytest.mark.parametrize(
    ("mode", "augment"),
    [*[(mode, "none") for mode in ("standard", "pgd", "trades", "fgsm-noise", "te")], ("pgd", "crop-flip")],
)
def test_a_training_epoch_reads_its_loss_every_read_every_steps(digits, host_reads, mode, augment):
    data, x, y = digits
    reads = {}
    for batch_size in (160 // 4, 160 // (READ_EVERY + 4)):  # 4 steps, then READ_EVERY + 4 (rounded up)
        model = _cnn(data)
        ramp = {"te_start": 1, "te_end": 2} if mode == "te" else {}  # TE's regulariser on from epoch 1
        config = TrainConfig(
            mode=mode, eps=0.1, pgd_step=0.03, pgd_steps=3, batch_size=batch_size, epochs=2, augment=augment, **ramp
        )
        ensemble = TemporalEnsemble.empty(x.shape[0], len(data.classes), 1, 2) if mode == "te" else None
        steps = train_epoch(model, make_optimizer(model, config), x, y, config, 1, ensemble=ensemble)["steps"]
        reads[steps] = sum(host_reads.values())
        host_reads.clear()
    assert len(reads) == 2 and max(reads) > READ_EVERY, reads
    assert reads == {steps: -(-steps // READ_EVERY) for steps in reads}  # one per READ_EVERY steps, and the last


@pytest.mark.parametrize(
    ("mode", "augment"),
    [*[(mode, "none") for mode in ("standard", "pgd", "trades", "fgsm-noise", "te")], ("trades", "crop-flip")],
)
def test_a_training_epoch_uploads_without_waiting(digits, blocking_uploads, mode, augment):
    """Random starts and augmentation draws, made on the host every step, reach the GPU by
    non-blocking copies from pinned memory: the blocking uploads are the epoch's, not the steps'
    (TRADES', fgsm-noise's and the crops' were one to three a step)."""
    data, x, y = digits
    uploads = []
    for batch_size in (160 // 4, 160 // 9):  # 4 steps, then 9
        model = _cnn(data)
        ramp = {"te_start": 1, "te_end": 2} if mode == "te" else {}
        config = TrainConfig(
            mode=mode, eps=0.1, pgd_step=0.03, pgd_steps=3, batch_size=batch_size, augment=augment, **ramp
        )
        ensemble = TemporalEnsemble.empty(x.shape[0], len(data.classes), 1, 2) if mode == "te" else None
        train_epoch(model, make_optimizer(model, config), x, y, config, 1, ensemble=ensemble)
        uploads.append(dict(blocking_uploads))
        blocking_uploads.clear()
    assert uploads[0] == uploads[1] and sum(uploads[0].values()) <= 1, uploads  # the epoch's shuffle


def test_full_batch_gradient_descent_reads_its_losses_every_read_every_epochs(digits, host_reads):
    data, x, _ = digits
    model = build_model(model_config("fc1", data.image_shape, 1, width=32, seed=0))
    targets = torch.randn(x.shape[0], 1)
    epochs = 2 * READ_EVERY + 3
    losses = train_full_batch(model, x, targets, learning_rate=0.1, epochs=epochs)
    assert len(losses) == epochs and host_reads == {"tolist": 3}  # at READ_EVERY, 2 READ_EVERY and the end
    host_reads.clear()
    seen = []
    train_full_batch(model, x, targets, learning_rate=0.1, epochs=epochs, on_epoch=seen.append, measure_at=[0, 5])
    assert seen == [0, 5] and host_reads == {"tolist": 4}  # and once before the measurement at epoch 5


def test_full_batch_divergence_names_its_epoch_though_read_later(digits):
    data, x, _ = digits
    model = build_model(model_config("fc1", data.image_shape, 1, width=16, seed=0))
    with pytest.raises(FloatingPointError, match=r"the loss diverged at epoch 1 \("):  # (1e20)² overflows float32
        train_full_batch(model, x, torch.full((x.shape[0], 1), 1e20), learning_rate=1.0, epochs=READ_EVERY + 5)


@pytest.mark.usefixtures("one_process_sharing")
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_over_a_shared_batch_reads_nothing(host_reads, momentum):
    """GlobalBatchNorm keeps the count of the rows of every process on the device: a training
    step of a ResNet-18 on a shared batch (here in one process, the gather its one row)
    reads nothing back, however many steps; with momentum None (a cumulative average) its
    factor 1/batches too (torch's own layer reads the batch count: float(num_batches_tracked))."""
    from ntkrobust.bridge import global_batchnorm

    model = global_batchnorm.convert(build_model(model_config("resnet18", (3, 8, 8), 4, width=2, seed=0))).train()
    for layer in model.modules():
        if isinstance(layer, global_batchnorm.GlobalBatchNorm):
            layer.momentum = momentum
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % 4
    for _ in range(3):
        with global_batchnorm.shared_batch():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
    assert sum(host_reads.values()) == 0, host_reads
    assert all(m.num_batches_tracked == 3 for m in model.modules() if isinstance(m, global_batchnorm.GlobalBatchNorm))
