"""Audit of how ``train``'s settings become its configuration (``studies._train_settings``,
``studies.train``): the standard attacks by image type, every flag passed through to the
``TrainConfig`` / ``TrackingConfig``, TE's ramp, the seeds, the linearization record, the
summary over seeds and the warnings computed from the settings.

The independent route: the expected numbers are written here from the papers' threat models
(ℓ∞ ε = 0.3, step 0.01, 40 steps for MNIST; 8/255, 2/255, 10 steps for CIFAR; evaluation
steps of max(standard step scaled to ε, 2.5 ε / steps)) and from numpy (mean, ``std(ddof=1)``),
not read from the code under test. No training: the network and the data are only built."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, StudyError, train
from ntkrobust.studies import _train_settings as settings_module
from ntkrobust.studies.train import TrainSettings


def _settings(tmp_path, **changes):
    return TrainSettings(out=Path(tmp_path) / "run", data=DataSettings(n_train=30, n_test=20, seed=4), **changes)


def test_default_threats_by_image_type(tmp_path):
    """MNIST-like (1 channel): ε 0.3, PGD-40 of step 0.01; evaluation PGD-10 of step
    max(0.01, 2.5·0.3/10) = 0.075, full PGD-40 of step max(0.01, 2.5·0.3/40) = 0.01875.
    CIFAR-like (3 channels): ε 8/255, PGD-10 of step 2/255; evaluation PGD-10 and full PGD-20,
    both of step max(2/255, 2.5·(8/255)/steps) = 2/255."""
    grey = settings_module.resolve_threat(_settings(tmp_path), 1)
    assert grey == pytest.approx((0.3, 0.01, 40, 0.075, 10, 0.01875, 40), abs=1e-15)
    colour = settings_module.resolve_threat(_settings(tmp_path), 3)
    assert colour == pytest.approx((8 / 255, 2 / 255, 10, 2 / 255, 10, 2 / 255, 20), abs=1e-15)


def test_given_attack_settings_are_used(tmp_path):
    """ε 0.2 on grey images: the training step given (0.02, 3 steps); evaluation PGD-4 of step
    max(0.01·0.2/0.3, 2.5·0.2/4) = 0.125; full PGD-5 of step max(0.01·0.2/0.3, 2.5·0.2/5) = 0.1."""
    settings = _settings(tmp_path, mode="pgd", eps=0.2, pgd_step=0.02, pgd_steps=3, eval_pgd_steps=4, full_eval_steps=5)
    threat = settings_module.resolve_threat(settings, 1)
    assert threat == pytest.approx((0.2, 0.02, 3, 0.125, 4, 0.1, 5), abs=1e-15)
    scaled = settings_module.resolve_threat(_settings(tmp_path, eps=0.15), 1)
    assert scaled.step == pytest.approx(0.01 * 0.15 / 0.3, abs=1e-15) and scaled.steps == 40
    assert settings_module.resolve_threat(_settings(tmp_path, full_eval_steps=0), 1).full_steps == 0


def test_every_setting_reaches_the_configs(tmp_path):
    """Each flag set away from its default shows in the config it sets."""
    settings = _settings(
        tmp_path, mode="trades", epochs=6, lr=0.05, momentum=0.8, weight_decay=1e-4, milestones=(3,), gamma=0.5,
        batch_size=32, eps=0.2, pgd_step=0.02, pgd_steps=3, trades_beta=3.0, switch_epoch=2, eps_warmup=1,
        augment="crop-flip", augment_shared=True, track_kernel=7, track_every=3, track_full=True, eval_n=40,
        eval_pgd_steps=5, full_eval_steps=6, full_eval_every=2, batchnorm="both", memory_budget=5, run_seed=9,
    )  # fmt: skip
    threat = settings_module.resolve_threat(settings, 1)
    config, tracking = train._configs(settings, threat)
    assert (config.mode, config.epochs, config.lr) == ("trades", 6, 0.05)
    assert (config.momentum, config.weight_decay) == (0.8, 1e-4)
    assert (config.milestones, config.gamma, config.batch_size) == ((3,), 0.5, 32)
    assert (config.eps, config.pgd_step, config.pgd_steps, config.trades_beta) == (0.2, 0.02, 3, 3.0)
    assert (config.switch_epoch, config.eps_warmup, config.augment, config.augment_shared) == (2, 1, "crop-flip", True)
    assert config.seed == 9  # the run's own seed
    # the per-epoch PGD: 5 steps of max(0.01·0.2/0.3, 2.5·0.2/5) = 0.1; full PGD-6 of 2.5·0.2/6
    assert (tracking.eps, tracking.step, tracking.steps) == (0.2, pytest.approx(0.1, abs=1e-15), 5)
    assert (tracking.full_steps, tracking.full_every) == (6, 2)
    assert tracking.full_step == pytest.approx(2.5 * 0.2 / 6, abs=1e-15)
    assert (tracking.probe, tracking.every, tracking.eval_n, tracking.track_full) == (7, 3, 40, True)
    assert tracking.batchnorm == ("running", "batch") and tracking.memory_budget == 5 * 1024 * 1024
    assert tracking.selection_seed == 4  # the data's seed: every seed of --seeds shares the probe
    estimated = train._configs(_settings(tmp_path, estimator="rademacher:4"), threat)[1]
    assert estimated.estimator == "rademacher:4" and estimated.memory_budget is None


def test_run_seed(tmp_path):
    assert settings_module.run_seed(_settings(tmp_path)) == 4
    assert settings_module.run_seed(_settings(tmp_path, run_seed=9)) == 9


def test_te_ramp_rounds_the_authors_epochs(tmp_path):
    """90 and 150 of 200 epochs (45 %, 75 %) scaled to 13: round(5.85) = 6, round(9.75) = 10."""
    ramp = settings_module.te_ramp(_settings(tmp_path, mode="te", epochs=13))
    assert ramp == {"te_start": 6, "te_end": 10, "te_weight": 300.0}
    with pytest.raises(StudyError, match="from epoch 3 to 3"):
        settings_module.te_ramp(_settings(tmp_path, mode="te", epochs=13, te_start=3, te_end=3))


def test_a_switch_at_the_last_epoch_is_refused(tmp_path):
    with pytest.raises(StudyError, match="--switch-epoch 3 is not before the last of --epochs 3"):
        train._check_schedule(_settings(tmp_path, mode="pgd", epochs=3, switch_epoch=3), 1000)
    train._check_schedule(_settings(tmp_path, mode="pgd", epochs=3, switch_epoch=2), 1000)


def test_a_warmup_longer_than_the_adversarial_epochs_is_warned(tmp_path):
    """5 epochs, 3 clean: 2 adversarial ones reach 2/3 of a 3-epoch ramp, ε·2/3."""
    note = train._short_warmup(_settings(tmp_path, mode="pgd", epochs=5, switch_epoch=3, eps_warmup=3), 0.3)
    assert note is not None and "more than the 2 adversarial epochs" in note and "eps 0.2," in note
    assert train._short_warmup(_settings(tmp_path, mode="pgd", epochs=5, switch_epoch=2, eps_warmup=3), 0.3) is None


def test_near_chance_is_within_five_points_of_one_over_c():
    def history(clean):
        scores = {"test_clean": clean, "test_pgd": 0.0, "train_clean": 0.5, "train_pgd": 0.0}
        return {
            "epochs": [{"epoch": 2, "accuracy": {"running": scores}}],
            "config": {"tracking": {"batchnorm": ["running"]}},
        }

    assert train._near_chance(history(1 / 3 + 0.04), 3) is not None  # 0.373 < 1/3 + 0.05
    assert train._near_chance(history(1 / 3 + 0.06), 3) is None


def test_the_default_network_by_image_type(tmp_path, monkeypatch):
    """mnist-cnn for one channel, cifar-cnn for three, built from the run's own seed."""
    asked = []

    class Built(Exception):
        pass

    def network(data, **kwargs):
        asked.append((data.image_shape[0], kwargs["model"], kwargs["seed"]))
        raise Built

    monkeypatch.setattr(train, "torch_network", network)
    for channels in (1, 3):
        data = type("Data", (), {"image_shape": (channels, 8, 8)})()
        with pytest.raises(Built):
            train._network(_settings(tmp_path, run_seed=9), data)
    assert asked == [(1, "mnist-cnn", 9), (3, "cifar-cnn", 9)]


def test_the_linearization_record_names_the_spawn_epoch(tmp_path):
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config

    settings = _settings(tmp_path)
    data = settings.data.load()
    config = model_config("fc2", data.image_shape, len(data.classes), width=8)
    checkpoint = tmp_path / "parent" / "checkpoints" / "epoch_002.pt"
    save_checkpoint(checkpoint, build_model(config), config, epoch=2)
    for changes, centered in (({}, False), ({"centered": True}, True), ({"centered_standard": True}, True)):
        net = train._network(dataclasses.replace(settings, linearize_from=checkpoint, **changes), data)
        linearization = net["linearization"]
        assert linearization["checkpoint"] == str(checkpoint) and linearization["spawn_epoch"] == 2
        assert linearization["centered"] is centered


def test_seeds_run_with_their_own_seed_and_are_summarised_by_hand(tmp_path, monkeypatch):
    """``--seeds 5,6,7``: each run gets its seed as run seed and the folder seed_S; the record's
    mean and std (ddof 1) are numpy's over the seeds' last epochs, in the first BatchNorm mode."""
    seen = []
    finals = {5: (0.5, 0.1), 6: (0.7, 0.2), 7: (0.9, 0.6)}

    def fake_train(settings, progress, argv):
        seen.append((settings.out.name, settings.run_seed, settings.seeds))
        clean, pgd = finals[settings.run_seed]
        scores = {"test_clean": clean, "test_pgd": pgd, "train_clean": 1.0, "train_pgd": 0.5}
        other = {key: 0.0 for key in scores}  # the second BatchNorm mode: never the one reported
        history = {
            "epochs": [{"epoch": 1, "accuracy": {"batch": scores, "running": other}}],
            "config": {"tracking": {"batchnorm": ["batch", "running"]}},
        }
        return train.TrainResult(history, out=settings.out, label="x")

    monkeypatch.setattr(train, "_train", fake_train)
    result = train.run(_settings(tmp_path, seeds=(5, 6, 7)))
    assert seen == [("seed_5", 5, ()), ("seed_6", 6, ()), ("seed_7", 7, ())]
    record = result.record
    assert [run["folder"] for run in record["runs"]] == ["seed_5", "seed_6", "seed_7"]
    clean, pgd = np.array([finals[s][0] for s in (5, 6, 7)]), np.array([finals[s][1] for s in (5, 6, 7)])
    assert record["mean"]["test_clean"] == pytest.approx(np.mean(clean), abs=1e-12)
    assert record["std"]["test_clean"] == pytest.approx(np.std(clean, ddof=1), abs=1e-12)
    assert record["mean"]["test_pgd"] == pytest.approx(np.mean(pgd), abs=1e-12)
    assert record["std"]["test_pgd"] == pytest.approx(np.std(pgd, ddof=1), abs=1e-12)


def test_a_switched_run_is_labelled_with_its_clean_epochs(tmp_path, monkeypatch):
    """The label says how many clean epochs came before AT (RAT's switch); training is replaced
    by a stand-in that keeps what it was given."""
    from ntkrobust.bridge import experiment

    given = {}

    def stand_in(out, model, model_config, data, train_config, tracking, **kwargs):
        given.update(kwargs, train=train_config)
        scores = {"test_clean": 0.9, "test_pgd": 0.5, "train_clean": 0.9, "train_pgd": 0.5}
        return {
            "epochs": [{"epoch": 0, "accuracy": {"running": scores}}],
            "config": {"tracking": {"batchnorm": ["running"]}},
            "warnings": [],
        }

    monkeypatch.setattr(experiment, "run_training", stand_in)
    settings = _settings(tmp_path, model="fc2", width=8, mode="pgd", epochs=3, switch_epoch=2, track_kernel=0)
    result = train.run(settings)
    assert result.label == given["label"] == "fc2 pgd after 2 clean"
    assert given["train"].switch_epoch == 2 and given["config"]["train"]["switch_epoch"] == 2


def test_the_final_evaluation_attacks_the_data_seeds_test_points(tmp_path, monkeypatch):
    """--final-eval takes --eval-n class-balanced test points drawn with the data's seed (the
    per-epoch evaluation's), not the run's seed."""
    import torch

    from ntkrobust.bridge import evaluation
    from ntkrobust.bridge.data import balanced_indices

    class Attacked(Exception):
        pass

    def robust_correct(model, x, y, **kwargs):
        raise Attacked(x.numpy().copy())

    monkeypatch.setattr(evaluation, "robust_correct", robust_correct)
    settings = _settings(tmp_path, eval_n=10, run_seed=9)
    data = settings.data.load()
    with pytest.raises(Attacked) as attacked:
        train._final_evaluation(settings, torch.nn.Identity(), data, 0.3, torch.device("cpu"))
    chosen = balanced_indices(data.y_test, data.classes, 10, 4)
    np.testing.assert_array_equal(attacked.value.args[0], data.x_test[chosen])
