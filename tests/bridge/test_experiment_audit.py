"""Audit of ``bridge.experiment.run_training`` on tiny digits runs: what each epoch record, kernel
record and file holds, recomputed here from the saved checkpoints.

The independent route: the evaluation subsets are drawn again from the documented rule
(``TrackingConfig``: class-balanced ``balanced_indices`` under ``selection_seed``, else the
training seed; with kernels after every epoch and ``eval_n`` ≥ probe, the probe first, then
class-balanced points of the rest), the attacks are rebuilt from the documented seeds
(``derived_seed(seed, 4)`` per-epoch PGD, ``(seed, 5)`` full evaluation, ``(seed, 3)`` the
AE-NTK's own PGD), and the accuracies are counted here in numpy from each epoch's checkpoint.
Accuracies are shares of a handful of points: compared exactly (tolerance 0)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge import experiment
from ntkrobust.bridge.adversarial import attack_examples, pgd_examples
from ntkrobust.bridge.checkpoint import load_checkpoint
from ntkrobust.bridge.data import balanced_indices, task_indices
from ntkrobust.bridge.experiment import RunFolderError, run_training
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.tracking import KernelTracker, TrackingConfig, pgd_accuracy
from ntkrobust.bridge.training import TrainConfig, derived_seed
from ntkrobust.studies import DataSettings

SEED, SELECTION = 3, 11  # the training seed and the probe / evaluation points' seed
EPS, STEP, STEPS = 0.1, 0.05, 2


def _data(n_test):
    return DataSettings(classes=(0, 1, 2), n_train=39, n_test=n_test, seed=0).load()


def _train(out, data, *, epochs, tracking, monkeypatch=None):
    config = model_config("fc2", data.image_shape, len(data.classes), width=8, seed=SEED)
    train = TrainConfig(
        mode="pgd", epochs=epochs, lr=0.1, milestones=(1,), gamma=0.5, batch_size=16,
        eps=EPS, pgd_step=STEP, pgd_steps=STEPS, seed=SEED,
    )  # fmt: skip
    history = run_training(
        out, build_model(config), config, data, train, tracking,
        config={"audit": True}, label="audit", device=torch.device("cpu"),
    )  # fmt: skip
    return history


def _tracking(**changes):
    return TrackingConfig(**{"eps": EPS, "step": STEP, "steps": STEPS, "probe": 6, **changes})


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """Kernels after every epoch, eval_n 12 ≥ probe 6: the probe's PGD examples come from the
    evaluation; 10 test points (fewer than eval_n: all of them); a full evaluation at the end."""
    data = _data(10)
    tracking = _tracking(eval_n=12, full_step=0.04, full_steps=3, selection_seed=SELECTION)
    out = tmp_path_factory.mktemp("shared") / "run"
    return out, data, _train(out, data, epochs=2, tracking=tracking)


@pytest.fixture(scope="module")
def stepped_run(tmp_path_factory):
    """Kernels every 2 steps (3 per epoch, 3 epochs: steps 2, 4, 6, 8 and the last, 9), the
    seed of the points the training seed; each kernel takes 0.6 s more (a sleep counted in its
    seconds), so that tracking time left in the training seconds shows."""
    data = _data(12)
    original = KernelTracker.track

    def slow(self, *args, **kwargs):
        arrays, record = original(self, *args, **kwargs)
        time.sleep(0.6)
        record["seconds"] += 0.6
        return arrays, record

    out = tmp_path_factory.mktemp("stepped") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KernelTracker, "track", slow)
        history = _train(out, data, epochs=3, tracking=_tracking(eval_n=12, every=2))
    return out, data, history


@pytest.fixture(scope="module")
def probe_only_run(tmp_path_factory):
    """eval_n = probe = 6: the training evaluation is the probe itself; 6 of 10 test points."""
    data = _data(10)
    out = tmp_path_factory.mktemp("probe") / "run"
    attacked = []  # the points of every PGD accuracy, in the order taken: (train, test) per evaluation

    def recorded(model, x, y, attack, **kwargs):
        attacked.append((x.numpy().copy(), y.numpy().copy(), attack.seed))
        return pgd_accuracy(model, x, y, attack, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "pgd_accuracy", recorded)
        history = _train(out, data, epochs=1, tracking=_tracking(eval_n=6, selection_seed=SELECTION))
    return out, data, history, attacked


def _model(out, epoch):
    model = load_checkpoint(out / "checkpoints" / f"epoch_{epoch:03d}.pt")[0]
    return model.eval()


def _predicted(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).numpy().argmax(axis=1)


def _counted(model, x, y):
    return float(np.mean(_predicted(model, x) == y))


def _pgd(model, x, y, seed, step=STEP, steps=STEPS):
    """(accuracy counted here, examples) of the documented per-epoch attack."""
    spec = AttackSpec("pgd", EPS, "linf", step, steps, random_start=True, seed=seed)
    x_adv = attack_examples(model, torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y), spec)
    return float(np.mean(_predicted(model, x_adv.detach().numpy()) == y)), x_adv.detach().numpy()


def _targets(data, split):
    labels = data.y_train if split == "train" else data.y_test
    return task_indices(labels, data.classes)


def _kernel_file(out, history, step):
    (record,) = [r for r in history["kernels"] if r["step"] == step]
    with np.load(out / record["file"]) as arrays:
        return {key: arrays[key] for key in arrays.files}


def test_shared_run_records(shared_run):
    history = shared_run[2]
    assert history["steps_per_epoch"] == math.ceil(39 / 16) == 3
    assert history["eval_points"] == {"train": 12, "test": 10}
    assert [r["epoch"] for r in history["epochs"]] == [0, 1, 2]
    assert [r["step"] for r in history["epochs"]] == [0, 3, 6]
    assert [r["mode"] for r in history["epochs"]] == ["init", "pgd", "pgd"]
    # lr 0.1, halved after the milestone epoch 1: epoch 2 trains at 0.05
    assert [r["lr"] for r in history["epochs"]] == [None, 0.1, 0.05]
    assert [r["step"] for r in history["kernels"]] == [0, 3, 6]
    assert [r["epoch"] for r in history["kernels"]] == [0.0, 1.0, 2.0]
    assert history["epochs"][0]["seconds"]["train"] == 0.0  # the initialisation trains nothing
    # the full evaluation at the last epoch only, with its own steps
    assert ["full_evaluation" in r for r in history["epochs"]] == [False, False, True]
    assert history["epochs"][2]["full_evaluation"]["steps"] == 3


def _shared_train_points(data):
    """The probe (class-balanced, selection seed), then class-balanced points of the rest."""
    probe = balanced_indices(data.y_train, data.classes, 6, SELECTION)
    rest = np.setdiff1d(np.arange(data.y_train.shape[0]), probe)
    return probe, np.concatenate([probe, rest[balanced_indices(data.y_train[rest], data.classes, 6, SELECTION)]])


def test_shared_run_accuracies_recomputed(shared_run):
    out, data, history = shared_run
    probe, train_points = _shared_train_points(data)
    assert len(set(train_points.tolist())) == 12
    with np.load(out / "kernels" / "probe.npz") as saved:
        np.testing.assert_array_equal(saved["x"], data.x_train[probe].astype(np.float32))
        np.testing.assert_array_equal(saved["targets"], _targets(data, "train")[probe])
    for epoch, record in enumerate(history["epochs"]):
        model, scores = _model(out, epoch), record["accuracy"]["running"]
        for split, x in (("train", data.x_train), ("test", data.x_test)):
            # the clean accuracy over the whole split, counted here
            assert scores[f"{split}_clean"] == _counted(model, x, _targets(data, split)), (epoch, split)
        y = _targets(data, "train")
        accuracy, x_adv = _pgd(model, data.x_train[train_points], y[train_points], derived_seed(SEED, 4))
        assert scores["train_pgd"] == accuracy, epoch
        test_accuracy, _ = _pgd(model, data.x_test, _targets(data, "test"), derived_seed(SEED, 4))
        assert scores["test_pgd"] == test_accuracy, epoch
        # the AE-NTK's examples are the evaluation's of the probe: the first 6 points
        kernel = _kernel_file(out, history, record["step"])
        np.testing.assert_array_equal(kernel["x_adversarial"], x_adv[:6].astype(np.float32))
    full = history["epochs"][2]["full_evaluation"]["accuracy"]["running"]
    model = _model(out, 2)
    full_train, _ = _pgd(model, data.x_train[train_points], y[train_points], derived_seed(SEED, 5), 0.04, 3)
    full_test, _ = _pgd(model, data.x_test, _targets(data, "test"), derived_seed(SEED, 5), 0.04, 3)
    assert full == {"train_pgd": full_train, "test_pgd": full_test}


def test_probe_only_run_evaluates_the_probe(probe_only_run):
    """eval_n = probe: the training PGD accuracy is the probe's, its examples the AE-NTK's;
    the test points are 6 class-balanced ones drawn with the selection seed."""
    out, data, history, attacked = probe_only_run
    assert history["eval_points"] == {"train": 6, "test": 6}
    probe = balanced_indices(data.y_train, data.classes, 6, SELECTION)
    test_points = balanced_indices(data.y_test, data.classes, 6, SELECTION)
    y, y_test = _targets(data, "train"), _targets(data, "test")
    # the points attacked: the probe, then the 6 test points, at initialisation and after epoch 1
    assert len(attacked) == 4
    for x, labels, seed in attacked[0::2]:
        np.testing.assert_array_equal(x, data.x_train[probe].astype(np.float32))
        np.testing.assert_array_equal(labels, y[probe])
        assert seed == derived_seed(SEED, 4)
    for x, labels, seed in attacked[1::2]:
        np.testing.assert_array_equal(x, data.x_test[test_points].astype(np.float32))
        np.testing.assert_array_equal(labels, y_test[test_points])
        assert seed == derived_seed(SEED, 4)
    for epoch, record in enumerate(history["epochs"]):
        model = _model(out, epoch)
        accuracy, x_adv = _pgd(model, data.x_train[probe], y[probe], derived_seed(SEED, 4))
        assert record["accuracy"]["running"]["train_pgd"] == accuracy
        test_accuracy, _ = _pgd(model, data.x_test[test_points], y_test[test_points], derived_seed(SEED, 4))
        assert record["accuracy"]["running"]["test_pgd"] == test_accuracy
        kernel = _kernel_file(out, history, record["step"])
        np.testing.assert_array_equal(kernel["x_adversarial"], x_adv.astype(np.float32))


def test_stepped_run_tracks_on_its_grid_and_at_the_end(stepped_run):
    history = stepped_run[2]
    steps = [r["step"] for r in history["kernels"]]
    assert steps == [0, 2, 4, 6, 8, 9]
    assert [r["epoch"] for r in history["kernels"]] == [s / 3 for s in steps]
    assert [r["step"] for r in history["epochs"]] == [0, 3, 6, 9]


def test_stepped_run_seconds(stepped_run):
    """An epoch's kernel seconds are those of the kernels taken in it (steps after the previous
    epoch's last, up to its own); its training seconds leave them out (each kernel sleeps 0.6 s,
    3 steps of a width-8 net train in far less)."""
    _, _, history = stepped_run
    seconds = {r["step"]: r["seconds"] for r in history["kernels"]}
    assert min(seconds.values()) >= 0.6
    bounds = [r["step"] for r in history["epochs"]]
    assert history["epochs"][0]["seconds"]["track"] == pytest.approx(seconds[0], abs=1e-9)
    for before, record in zip(bounds, history["epochs"][1:], strict=False):
        taken = [s for s in seconds if before < s <= record["step"]]
        assert record["seconds"]["track"] == pytest.approx(sum(seconds[s] for s in taken), abs=1e-9), taken
        assert 0.0 <= record["seconds"]["train"] < 0.6, record["seconds"]


def test_stepped_run_points_and_own_attack(stepped_run):
    """Kernels every 2 steps share nothing with the evaluation: the evaluation's 12 training
    points are class-balanced under the training seed (no selection seed), all 12 test points in
    order, and the AE-NTK's examples come from the tracker's own PGD (seed (seed, 3))."""
    out, data, history = stepped_run
    y, y_test = _targets(data, "train"), _targets(data, "test")
    points = balanced_indices(data.y_train, data.classes, 12, SEED)
    probe = balanced_indices(data.y_train, data.classes, 6, SEED)
    for epoch, record in enumerate(history["epochs"]):
        model = _model(out, epoch)
        accuracy, _ = _pgd(model, data.x_train[points], y[points], derived_seed(SEED, 4))
        assert record["accuracy"]["running"]["train_pgd"] == accuracy
        test_accuracy, _ = _pgd(model, data.x_test, y_test, derived_seed(SEED, 4))
        assert record["accuracy"]["running"]["test_pgd"] == test_accuracy
    for epoch, step in ((0, 0), (3, 9)):
        model = _model(out, epoch)
        x = torch.as_tensor(data.x_train[probe], dtype=torch.float32)
        x_adv = pgd_examples(
            model, x, torch.as_tensor(y[probe]), eps=EPS, step=STEP, steps=STEPS, seed=derived_seed(SEED, 3)
        )
        kernel = _kernel_file(out, history, step)
        np.testing.assert_array_equal(kernel["x_adversarial"], x_adv.detach().numpy().astype(np.float32))


def test_a_probe_larger_than_the_training_set_is_refused(tmp_path):
    data = _data(10)
    with pytest.raises(RunFolderError, match=r"the probe set \(40\) is larger than the 39 training points"):
        _train(tmp_path / "run", data, epochs=1, tracking=_tracking(probe=40))
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def both_statistics_run(tmp_path_factory):
    """A BatchNorm net (resnet18 of stem width 2) evaluated and tracked under running and batch
    statistics, eval_n = probe = 6; the trackers report 10 s (running) and 1 s (batch statistics)."""
    data = _data(10)
    config = model_config("resnet18", data.image_shape, len(data.classes), width=2, seed=SEED)
    train = TrainConfig(mode="pgd", epochs=1, lr=0.1, batch_size=16, eps=EPS, pgd_step=STEP, pgd_steps=STEPS, seed=SEED)
    tracking = _tracking(eval_n=6, batchnorm=("running", "batch"), selection_seed=SELECTION)
    out = tmp_path_factory.mktemp("both") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KernelTracker, "track", tracked_in(running=10.0, batch=1.0))
        history = run_training(
            out, build_model(config), config, data, train, tracking,
            config={"audit": True}, label="audit", device=torch.device("cpu"),
        )  # fmt: skip
    return out, data, history


def tracked_in(*, running: float, batch: float):
    """``KernelTracker.track`` that reports ``running`` seconds for the running-statistics
    tracker and ``batch`` for the batch-statistics one (what the records' speed note reads)."""
    original = KernelTracker.track

    def timed(self, *args, **kwargs):
        arrays, record = original(self, *args, **kwargs)
        record["seconds"] = running if self.batchnorm == "running" else batch
        return arrays, record

    return timed


@pytest.mark.slow  # a BatchNorm net's kernels: ~25 s
def test_both_statistics_share_the_running_examples_and_add_their_seconds(both_statistics_run):
    """The probe's examples of the running-statistics evaluation make the first AE-NTK; the
    batch-statistics kernels attack the probe themselves (seed (seed, 3), batch statistics);
    a kernel record's seconds are those of both trackers, 10 + 1."""
    out, data, history = both_statistics_run
    probe = balanced_indices(data.y_train, data.classes, 6, SELECTION)
    y = _targets(data, "train")
    x, targets = torch.as_tensor(data.x_train[probe], dtype=torch.float32), torch.as_tensor(y[probe])
    for epoch, record in enumerate(history["epochs"]):
        model = _model(out, epoch)
        accuracy, x_adv = _pgd(model, data.x_train[probe], y[probe], derived_seed(SEED, 4))
        assert record["accuracy"]["running"]["train_pgd"] == accuracy
        kernel = _kernel_file(out, history, record["step"])
        np.testing.assert_array_equal(kernel["x_adversarial"], x_adv.astype(np.float32))
        model.train()  # batch statistics: the probe's own
        own = pgd_examples(model, x, targets, eps=EPS, step=STEP, steps=STEPS, seed=derived_seed(SEED, 3))
        np.testing.assert_array_equal(kernel["x_adversarial_batch"], own.detach().numpy().astype(np.float32))
        (kernel_record,) = [r for r in history["kernels"] if r["step"] == record["step"]]
        assert kernel_record["seconds"] == 11.0 and record["seconds"]["track"] == 11.0


def test_epoch_line():
    """The log line of an epoch, written out by hand: the ε of a warm-up only below the
    training ε, the per-epoch PGD's steps, the full evaluation's when there is one."""
    train = TrainConfig(mode="pgd", epochs=3, eps=EPS, pgd_step=STEP, pgd_steps=STEPS, seed=SEED)
    tracking = _tracking()
    record = {
        "epoch": 2,
        "eps": EPS,
        "train_loss": 0.5,
        "accuracy": {"running": {"test_clean": 0.5, "test_pgd": 0.25}},
        "seconds": {"train": 1.0, "evaluate": 2.0, "track": 3.0},
    }
    line = (
        "epoch 2/3: train loss 0.5000, test clean 0.500, PGD-2 0.250 (1.0 s training, 2.0 s evaluation, 3.0 s kernels)"
    )
    assert experiment._epoch_line(record, train, tracking, 40, 40) == line
    warming = experiment._epoch_line({**record, "eps": 0.05}, train, tracking, 40, 40)
    assert warming.startswith("epoch 2/3: eps 0.05 (warming up), train loss 0.5000,")
    full = {"steps": 7, "accuracy": {"running": {"test_pgd": 0.125}}, "seconds": 4.0}
    assert experiment._epoch_line({**record, "full_evaluation": full}, train, tracking, 40, 40) == (
        "epoch 2/3: train loss 0.5000, test clean 0.500, PGD-2 0.250, PGD-7 0.125 "
        "(1.0 s training, 2.0 s evaluation, 3.0 s kernels, 4.0 s full evaluation)"
    )
    initial = {**record, "epoch": 0, "train_loss": None}
    assert experiment._epoch_line(initial, train, tracking, 40, 40).startswith("initialisation: test clean 0.500,")
    # PGD on --eval-n of the test points, clean accuracy on all: the line says so where fewer
    shared = experiment._epoch_line(initial, train, tracking, 500, 10000)
    assert shared.startswith("initialisation: test clean 0.500, PGD-2 0.250 on 500 of 10000 points (1.0 s training")
    shared = experiment._epoch_line({**record, "full_evaluation": full}, train, tracking, 500, 10000)
    assert "PGD-2 0.250, PGD-7 0.125 on 500 of 10000 points (1.0 s" in shared  # the full evaluation's points too
