"""Thirteenth mutation audit of ``bridge.experiment`` (the training-run driver) and
``bridge.run_groups`` (seed groups, baseline distances, spawn accuracy, switch cost).

Each test pins a behaviour that a plausible one-token bug changed while every older test still
passed. The independent routes: run folders written here by hand with known numbers, expected
values computed here in numpy or by hand from those numbers; for the training runs, the rules
the docstrings state (steps per epoch = ceil(n / batch), class-balanced points under the
documented seed, epochs of kernels = step / steps per epoch), recomputed here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_run_groups_audit import _record, _write_run  # run folders written by hand, as there

from ntkrobust.bridge import run_groups
from ntkrobust.bridge.runs import RunError, load_run

TOL = 1e-12


def _kernels(rng, steps, n=4):
    out = []
    for step in steps:
        a, b = rng.normal(size=(n, n)), rng.normal(size=(n, n))
        out.append((step, a @ a.T, b @ b.T))
    return out


def _plain_records(epochs, clean=0.5):
    return [_record(0, "init", 0.0, 0.1, 0.0)] + [_record(e, "standard", 1.0, clean, 0.1) for e in range(1, epochs + 1)]


def _seeds_json(root, seeds):
    runs = [{"seed": seed, "folder": f"seed_{seed}", "final": {}} for seed in seeds]
    (root / "seeds.json").write_text(json.dumps({"runs": runs}))


# -- seed folders -----------------------------------------------------------------------------------


def test_a_run_folder_with_seed_subfolders_is_a_plain_run(tmp_path):
    """A folder with its own ``history.json`` is a run, whatever lies below it: only a folder
    WITHOUT a history whose ``seed_*`` runs lack ``seeds.json`` is an unfinished ``train --seeds``."""
    root = _write_run(tmp_path / "run", _plain_records(1))
    _write_run(root / "seed_1", _plain_records(1))
    assert run_groups.seed_folders(root) is None
    (group,) = run_groups.load_run_groups([root], kernels=False)
    assert group.seeds is None and [run.path for run in group.runs] == [root]
    bare = tmp_path / "bare"
    _write_run(bare / "seed_1", _plain_records(1))
    with pytest.raises(RunError, match=r"seed runs without seeds\.json"):
        run_groups.seed_folders(bare)


def test_a_seeds_json_listing_no_runs_is_refused(tmp_path):
    """An empty ``runs`` list is a ``RunError`` that says so (not an IndexError later)."""
    root = tmp_path / "seeds"
    root.mkdir()
    _seeds_json(root, [])
    with pytest.raises(RunError, match="lists no runs"):
        run_groups.seed_folders(root)


def test_seeds_with_other_epoch_records_are_refused(tmp_path):
    """The mean over seeds is taken epoch by epoch: a seed with one epoch record more (same
    tracked kernels) is refused, naming the epoch records."""
    rng = np.random.default_rng(5)
    root = tmp_path / "seeds"
    kernels = _kernels(rng, (0, 10))
    _write_run(root / "seed_1", _plain_records(2), label="s", kernels=kernels)
    _write_run(root / "seed_2", _plain_records(3), label="s", kernels=kernels)
    _seeds_json(root, (1, 2))
    with pytest.raises(
        RunError, match=r"seed 2 and seed 1 differ in their epoch records \(epochs 0, 1, 2, 3 vs 0, 1, 2\)"
    ):
        run_groups.load_run_groups([root], kernels=False)


def test_number_listing_by_hand():
    """At most six numbers: the first four, an ellipsis, the last with the count; exactly six
    values are all shown."""
    assert run_groups.number_listing([0, 1, 2, 3, 4, 5]) == "0, 1, 2, 3, 4, 5"
    assert run_groups.number_listing([float(v) for v in range(10)]) == "0, 1, 2, 3, ..., 9 (10 numbers)"
    assert run_groups.number_listing([]) == "none"


# -- comparability with a baseline --------------------------------------------------------------------


def test_check_comparable_needs_one_shared_step_and_the_same_probe(tmp_path):
    """One step in common is enough (the others are skipped by ``baseline_distance``); none is
    refused; a probe of other images (same shape) is refused even when every step is shared."""
    rng = np.random.default_rng(6)
    records = _plain_records(3)
    base = load_run(_write_run(tmp_path / "base", records, kernels=_kernels(rng, (0, 10, 20))), kernels=False)
    some = load_run(_write_run(tmp_path / "some", records, kernels=_kernels(rng, (10, 15, 30))), kernels=False)
    run_groups.check_comparable(base, some)  # shares step 10
    none = load_run(_write_run(tmp_path / "none", records, kernels=_kernels(rng, (5, 15))), kernels=False)
    with pytest.raises(RunError, match="shares no tracked step"):
        run_groups.check_comparable(base, none)
    other_x = np.linspace(1, 0, 16).reshape(4, 1, 2, 2)  # the ramp reversed: other images, same shape
    moved = _write_run(tmp_path / "moved", records, kernels=_kernels(rng, (0, 10, 20)), probe_x=other_x)
    with pytest.raises(RunError, match="different probes"):
        run_groups.check_comparable(base, load_run(moved, kernels=False))


def _cosine_distance(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return 1.0 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))


def test_baseline_distance_of_a_run_without_ae_ntk(tmp_path):
    """A run whose files hold only the C-NTK against a baseline with both: the clean distance is
    1 − cos (computed here) at the shared steps, the adversarial one ``undefined`` — not a crash."""
    rng = np.random.default_rng(7)
    records = _plain_records(2)
    base_kernels = _kernels(rng, (0, 10, 20))
    run_kernels = [(step, clean, None) for step, clean, _ in _kernels(rng, (0, 20))]
    base = load_run(_write_run(tmp_path / "base", records, kernels=base_kernels))
    run = load_run(_write_run(tmp_path / "run", records, kernels=run_kernels))
    assert run.adversarial_kernels is None
    result = run_groups.baseline_distance(base, run)
    assert result["steps"] == [0, 20] and "adversarial" not in result
    assert set(result["undefined"]) == {"adversarial"}
    expected = [
        _cosine_distance(base_kernels[0][1], run_kernels[0][1]),
        _cosine_distance(base_kernels[2][1], run_kernels[1][1]),
    ]
    assert result["clean"] == pytest.approx(expected, abs=TOL)
    reverse = run_groups.baseline_distance(run, base)  # the baseline without AE-NTK: the same
    assert set(reverse["undefined"]) == {"adversarial"} and "adversarial" not in reverse


# -- bridge.experiment: a tiny synthetic run --------------------------------------------------------

SEED = 1
CLASSES = (3, 7)  # class ids that are not their task indices (0, 1)


def _synthetic_data():
    """20 training points (10 per class), 9 test points of which 6 of class 3 and 3 of class 7:
    9 class-balanced test points (5 + 4) do not exist, so eval_n = 9 must take the split whole."""
    from ntkrobust.bridge.data import Dataset

    rng = np.random.default_rng(0)
    x_train = rng.uniform(size=(20, 1, 4, 4)).astype(np.float32)
    x_test = rng.uniform(size=(9, 1, 4, 4)).astype(np.float32)
    y_train, y_test = np.array([3, 7] * 10), np.array([3] * 6 + [7] * 3)
    names = tuple(f"digit {i}" for i in range(10))
    return Dataset("synthetic", x_train, y_train, x_test, y_test, CLASSES, names)


@pytest.fixture(scope="module")
def both_modes_run(tmp_path_factory):
    """fc2 (no BatchNorm: both modes run, cheaply) trained 3 epochs of ceil(20 / 8) = 3 steps,
    evaluated and tracked under running and batch statistics, probe 4, eval_n 9, a full
    evaluation (PGD-3, step 0.04) every 2 epochs and at the last; the running tracker reports
    10 s, the batch-statistics one 1 s."""
    import torch
    from test_experiment_audit import tracked_in  # the same speed note, tracked in 10 s and 1 s

    from ntkrobust.bridge.experiment import run_training
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.bridge.tracking import KernelTracker, TrackingConfig
    from ntkrobust.bridge.training import TrainConfig

    data = _synthetic_data()
    config = model_config("fc2", data.image_shape, 2, width=8, seed=SEED)
    train = TrainConfig(
        mode="pgd", epochs=3, lr=0.1, milestones=(2,), gamma=0.5, batch_size=8,
        eps=0.1, pgd_step=0.05, pgd_steps=2, seed=SEED,
    )  # fmt: skip
    tracking = TrackingConfig(
        eps=0.1, step=0.05, steps=2, probe=4, eval_n=9, full_step=0.04, full_steps=3, full_every=2,
        batchnorm=("running", "batch"),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("both") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KernelTracker, "track", tracked_in(running=10.0, batch=1.0))
        history = run_training(
            out, build_model(config), config, data, train, tracking,
            config={"audit": 13}, label="audit", device=torch.device("cpu"),
        )  # fmt: skip
    return out, data, history


def test_an_evaluation_set_the_size_of_the_split_is_the_split(both_modes_run):
    """eval_n = 9 = the test split: all 9 points (no class-balanced draw, which could not be made
    from 6 + 3 points); the training side draws 9 of 20."""
    _, _, history = both_modes_run
    assert history["eval_points"] == {"train": 9, "test": 9}


def test_class_ids_other_than_task_indices(both_modes_run):
    """Classes (3, 7): the names are those of the class ids; the probe's targets and every
    accuracy use the task index (3 → 0, 7 → 1), recounted here from the checkpoints."""
    import torch

    from ntkrobust.bridge.checkpoint import load_checkpoint
    from ntkrobust.bridge.data import balanced_indices

    out, data, history = both_modes_run
    assert history["class_names"] == ["digit 3", "digit 7"]
    probe = balanced_indices(data.y_train, CLASSES, 4, SEED)
    with np.load(out / "kernels" / "probe.npz") as saved:
        np.testing.assert_array_equal(saved["y"], data.y_train[probe])
        np.testing.assert_array_equal(saved["targets"], (data.y_train[probe] == 7).astype(np.int64))
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        for record in history["epochs"]:
            model = load_checkpoint(out / "checkpoints" / f"epoch_{record['epoch']:03d}.pt")[0].eval()
            with torch.no_grad():
                predicted = model(torch.as_tensor(x)).numpy().argmax(axis=1)
            counted = float(np.mean(predicted == (y == 7)))
            assert record["accuracy"]["running"][f"{split}_clean"] == counted, (split, record["epoch"])


def test_kernels_under_both_statistics(both_modes_run):
    """With both BatchNorm modes every kernel file holds the running-statistics arrays and the
    same arrays suffixed ``_batch``; the record has ``batch_statistics`` (the metric keys of the
    running ones, without seconds) and the seconds of both trackers, 10 + 1."""
    out, _, history = both_modes_run
    assert [r["step"] for r in history["kernels"]] == [0, 3, 6, 9]
    for record in history["kernels"]:
        with np.load(out / record["file"]) as arrays:
            keys = set(arrays.files)
        running = {key for key in keys if not key.endswith("_batch")}
        assert {"clean", "adversarial", "x_adversarial"} <= running
        assert keys == running | {f"{key}_batch" for key in running}
        assert record["seconds"] == 11.0
        assert set(record["batch_statistics"]) == set(record) - {"step", "epoch", "file", "seconds", "batch_statistics"}
    assert [r["seconds"]["track"] for r in history["epochs"]] == [11.0] * 4


def test_full_evaluation_schedule_and_attack(both_modes_run):
    """``full_every`` 2 of 3 epochs: epochs 2 and 3 (the last), never the initialisation; the
    record names the full attack's steps (3) and step size (0.04), for both modes."""
    _, _, history = both_modes_run
    assert ["full_evaluation" in r for r in history["epochs"]] == [False, False, True, True]
    for record in history["epochs"][2:]:
        full = record["full_evaluation"]
        assert full["steps"] == 3 and full["step"] == 0.04
        assert set(full["accuracy"]) == {"running", "batch"}


def test_the_probe_examples_are_those_of_the_running_statistics_evaluation(tmp_path):
    """A BatchNorm net evaluated under running and batch statistics (0 epochs: the initialisation
    only): the AE-NTK's examples of the probe are the first 4 of the running-statistics
    evaluation's PGD (``derived_seed(seed, 4)``) on its 9 points (the probe, then class-balanced
    points of the rest), attacked here again; the batch-statistics ones differ. The per-epoch
    ``relative_magnitude(model, x_test)`` is of the test split (9 points, not the 20 training ones)."""
    import copy

    import torch
    from torch import nn

    from ntkrobust.bridge.data import balanced_indices, task_indices
    from ntkrobust.bridge.experiment import run_training
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.bridge.tracking import TrackingConfig, pgd_accuracy
    from ntkrobust.bridge.training import TrainConfig, derived_seed

    data = _synthetic_data()
    config = model_config("fc2", data.image_shape, 2, width=8, seed=SEED)
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(1), build_model(config))
    initial = copy.deepcopy(model)
    train = TrainConfig(mode="pgd", epochs=0, lr=0.1, batch_size=8, eps=0.1, pgd_step=0.05, pgd_steps=2, seed=SEED)
    tracking = TrackingConfig(eps=0.1, step=0.05, steps=2, probe=4, eval_n=9, batchnorm=("running", "batch"))
    history = run_training(
        tmp_path / "run", model, config, data, train, tracking, config={"audit": 13}, label="bn",
        device=torch.device("cpu"), relative_magnitude=lambda net, x: float(x.shape[0]),
    )  # fmt: skip
    assert [r["epoch"] for r in history["epochs"]] == [0] and history["epochs"][0]["relative_magnitude"] == 9.0
    probe = balanced_indices(data.y_train, CLASSES, 4, SEED)
    rest = np.setdiff1d(np.arange(20), probe)
    points = np.concatenate([probe, rest[balanced_indices(data.y_train[rest], CLASSES, 5, SEED)]])
    x, y = torch.as_tensor(data.x_train[points]), torch.as_tensor(task_indices(data.y_train, CLASSES)[points])
    attack = tracking.attack(derived_seed(SEED, 4))
    running = pgd_accuracy(initial, x, y, attack, batchnorm="running")[1][:4].numpy()
    batch = pgd_accuracy(initial, x, y, attack, batchnorm="batch")[1][:4].numpy()
    assert not np.array_equal(running, batch)  # the BatchNorm mode matters for this net
    with np.load(tmp_path / "run" / history["kernels"][0]["file"]) as arrays:
        np.testing.assert_array_equal(arrays["x_adversarial"], running)


def test_spawn_accuracy_separates_stage_two_modes(tmp_path):
    """Two runs linearized around the same parent checkpoint, one trained clean and one with PGD
    in stage 2, are two lines (LOO table 2 compares them), each with its own point."""
    parent = _write_run(tmp_path / "parent", _plain_records(2))
    linearization = {"checkpoint": str(parent / "checkpoints" / "epoch_001.pt"), "spawn_epoch": 1}
    groups = []
    for mode, final in (("standard", 0.8), ("pgd", 0.6)):
        records = [_record(0, "init", 0.0, 0.1, 0.0), _record(1, mode, 1.0, final, final / 2)]
        path = _write_run(tmp_path / mode, records, mode=mode, linearization=linearization)
        groups.append(run_groups.RunGroup(path, mode, [load_run(path, kernels=False)]))
    lines = run_groups.spawn_accuracy(groups)["lines"]
    assert [(line["kind"], line["mode"]) for line in lines] == [("linearized", "standard"), ("linearized", "pgd")]
    assert [[p["test_clean"] for p in line["points"]] for line in lines] == [[0.8], [0.6]]


def test_a_probe_of_every_training_point_is_allowed(tmp_path):
    """Only a probe LARGER than the training set is refused: a probe of all 20 points tracks
    (class-balanced 10 + 10, i.e. every point, in dataset order)."""
    import torch

    from ntkrobust.bridge.experiment import run_training
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.bridge.tracking import TrackingConfig
    from ntkrobust.bridge.training import TrainConfig

    data = _synthetic_data()
    config = model_config("fc2", data.image_shape, 2, width=8, seed=SEED)
    train = TrainConfig(mode="pgd", epochs=0, lr=0.1, batch_size=8, eps=0.1, pgd_step=0.05, pgd_steps=2, seed=SEED)
    tracking = TrackingConfig(eps=0.1, step=0.05, steps=2, probe=20, eval_n=None)
    history = run_training(
        tmp_path / "run", build_model(config), config, data, train, tracking, config={"audit": 13}, label="all",
        device=torch.device("cpu"),
    )  # fmt: skip
    assert [r["step"] for r in history["kernels"]] == [0]
    with np.load(tmp_path / "run" / "kernels" / "probe.npz") as saved:
        np.testing.assert_array_equal(saved["x"], data.x_train)


def test_a_resumed_run_records_its_new_configuration(tmp_path):
    """Resuming with more epochs (a change ``resume`` accepts) continues the run, and the history
    then holds the configuration it was resumed with (3 epochs, not the first call's 1) and the
    new metadata: ``history.json`` describes the run as it now stands."""
    import json as json_module

    import torch

    from ntkrobust.bridge.experiment import run_training
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.bridge.tracking import TrackingConfig
    from ntkrobust.bridge.training import TrainConfig

    data = _synthetic_data()
    config = model_config("fc2", data.image_shape, 2, width=8, seed=SEED)
    tracking = TrackingConfig(eps=0.1, step=0.05, steps=1, probe=0, eval_n=4)
    for epochs, resume in ((1, False), (3, True)):
        train = TrainConfig(mode="standard", epochs=epochs, lr=0.1, batch_size=8, seed=SEED)
        history = run_training(
            tmp_path / "run", build_model(config), config, data, train, tracking,
            config={"train": {"epochs": epochs}, "device": "cpu"}, label="resumed", device=torch.device("cpu"),
            resume=resume, metadata={"argv": [f"--epochs={epochs}"]},
        )  # fmt: skip
    assert [r["epoch"] for r in history["epochs"]] == [0, 1, 2, 3]
    stored = json_module.loads((tmp_path / "run" / "history.json").read_text())
    for written in (history, stored):
        assert written["config"] == {"train": {"epochs": 3}, "device": "cpu"}
        assert written["argv"] == ["--epochs=3"]


def test_a_budget_too_small_is_refused_before_the_run_starts(tmp_path):
    """``memory_budget`` of 1 byte cannot hold any kernel: ``run_training`` refuses it before it
    writes anything (no configuration, probe, checkpoint or history in the folder), not after
    the first evaluation (``bridge.entk.check_memory_budget``'s promise)."""
    import torch

    from ntkrobust.bridge.entk import BudgetError
    from ntkrobust.bridge.experiment import run_training
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.bridge.tracking import TrackingConfig
    from ntkrobust.bridge.training import TrainConfig

    data = _synthetic_data()
    config = model_config("fc2", data.image_shape, 2, width=8, seed=SEED)
    train = TrainConfig(mode="standard", epochs=1, lr=0.1, batch_size=8, seed=SEED)
    tracking = TrackingConfig(eps=0.1, step=0.05, steps=1, probe=4, eval_n=4, memory_budget=1)
    with pytest.raises(BudgetError):
        run_training(
            tmp_path / "run", build_model(config), config, data, train, tracking, config={"audit": 13},
            label="budget", device=torch.device("cpu"),
        )  # fmt: skip
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()] if (tmp_path / "run").exists() else []
    assert written == []


def test_a_resumed_te_run_continues_its_ensemble(tmp_path):
    """Temporal ensembling keeps per-point averages of past predictions (saved in every
    checkpoint): a run of 3 epochs interrupted after epoch 2 and resumed must end with the very
    weights and records of the uninterrupted run (every draw is seeded by seed, epoch, step), which
    needs the averages restored (``te_start`` 1: every epoch adds to and learns from them)."""
    import torch

    from ntkrobust.bridge.checkpoint import load_checkpoint
    from ntkrobust.bridge.experiment import run_training
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.bridge.tracking import TrackingConfig
    from ntkrobust.bridge.training import TrainConfig

    data = _synthetic_data()
    config = model_config("fc2", data.image_shape, 2, width=8, seed=SEED)
    tracking = TrackingConfig(eps=0.1, step=0.05, steps=1, probe=0, eval_n=4)

    def run(out, epochs, resume=False):
        train = TrainConfig(
            mode="te", epochs=epochs, lr=0.5, batch_size=8, eps=0.1, pgd_step=0.05, pgd_steps=1, seed=SEED,
            te_start=1, te_end=2, te_weight=30.0,
        )  # fmt: skip
        return run_training(
            out, build_model(config), config, data, train, tracking, config={"train": {"epochs": epochs}},
            label="te", device=torch.device("cpu"), resume=resume,
        )  # fmt: skip

    whole = run(tmp_path / "whole", 3)
    run(tmp_path / "cut", 2)
    resumed = run(tmp_path / "cut", 3, resume=True)
    for key in ("train_loss", "accuracy"):
        assert [r[key] for r in resumed["epochs"]] == [r[key] for r in whole["epochs"]], key
    for a, b in zip(
        load_checkpoint(tmp_path / "whole" / "checkpoints" / "epoch_003.pt")[0].state_dict().values(),
        load_checkpoint(tmp_path / "cut" / "checkpoints" / "epoch_003.pt")[0].state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
