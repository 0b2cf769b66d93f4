"""Audit of ``train``'s checks before any training (``studies._train_settings``): the last
mini-batch against BatchNorm, the warnings for flags the other flags leave unread, TE's ramp,
the run folder and the BatchNorm modes.

The independent routes: the sizes of the mini-batches written out by hand from n and the batch
size, and torch itself (a training-mode forward pass of one example through the net raises where
a BatchNorm sees one value per channel); whether a milestone or ``--full-eval-every`` is read,
from the training's own schedule (``training.learning_rate``, ``TrackingConfig.full_due``) run
over every epoch with and without the flag; TE's ramp from the authors' 90 and 150 of 200
epochs, rounded here by hand; the warnings' texts written out in full. No training runs."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest

from ntkrobust.studies import DataSettings, StudyError, train
from ntkrobust.studies import _train_settings as settings_module
from ntkrobust.studies.train import TrainSettings

#: the modes whose training attack is a PGD (bridge.training.PGD_MODES), written out
PGD_MODES = ("pgd", "trades", "te")


def _settings(tmp_path, **changes):
    return TrainSettings(out=Path(tmp_path) / "run", data=DataSettings(n_train=100, n_test=20, seed=4), **changes)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """resnet18 of width 2 (1 × 1 maps at layer4 on 8 × 8 digits: its BatchNorm there sees one
    value per channel per example) and fc2 (no BatchNorm), on 100 training points."""
    root = tmp_path_factory.mktemp("nets")
    data = _settings(root).data.load()
    built = {name: train._network(_settings(root, model=name, width=w), data)["model"]
             for name, w in (("resnet18", 2), ("fc2", 8))}  # fmt: skip
    return built, data


def _batch_sizes(n: int, b: int) -> list[int]:
    """The mini-batches of one epoch over n points in batches of b, the last one partial."""
    return [b] * (n // b) + ([n % b] if n % b else [])


def _one_example_raises(model, x) -> bool:
    """Whether torch refuses a training-mode forward pass of one example (a BatchNorm that
    normalises over a single value per channel)."""
    import copy

    import torch

    net = copy.deepcopy(model).train()
    try:
        net(torch.as_tensor(x[:1]))
    except ValueError as err:
        assert "Expected more than 1 value per channel when training" in str(err)
        return True
    return False


@pytest.mark.parametrize("batch_size", [1, 2, 3, 25, 33, 98, 99, 100, 101, 150])
def test_a_batch_of_one_example_through_batchnorm_is_refused_before_training(tmp_path, nets, batch_size):
    """n = 100: a batch of one example comes with b = 1 (every batch) and where 100 mod b = 1
    (3, 33, 99); none with 2, 25, 98 (a last batch of 2), 100, 101 and 150 (one batch of 100).
    Refused exactly where torch would raise mid-run: the net has a BatchNorm on 1 × 1 maps and
    some batch holds one example. ``--batch-size 1`` was let through before the fix (100 mod 1
    is 0), and the run died on its first step with torch's ValueError."""
    built, data = nets
    n = data.x_train.shape[0]
    assert n == 100
    one_example = 1 in _batch_sizes(n, batch_size)
    assert one_example == (batch_size in (1, 3, 33, 99))
    for name, model in built.items():
        refused = one_example and _one_example_raises(model, data.x_train)
        assert refused == (name == "resnet18" and batch_size in (1, 3, 33, 99))
        settings = _settings(tmp_path, model=name, batch_size=batch_size)
        if not refused:
            settings_module.check_last_batch(settings, model, data)
            continue
        said = ("trains on batches of one example" if batch_size == 1
                else "leaves a last batch of one of the 100 training points")  # fmt: skip
        with pytest.raises(StudyError, match=f"^--batch-size {batch_size} {said}, and BatchNorm layer4.0.bn1 "):
            settings_module.check_last_batch(settings, model, data)


def test_train_refuses_batches_of_one_through_batchnorm_before_it_trains(tmp_path, monkeypatch):
    from ntkrobust.bridge import experiment

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(experiment, "run_training", never)
    settings = _settings(tmp_path, model="resnet18", width=2, batch_size=1, epochs=1, track_kernel=0)
    with pytest.raises(StudyError, match="--batch-size 1 trains on batches of one example, and BatchNorm"):
        train.run(settings)
    assert not settings.out.exists() and not (tmp_path / ".run.lock").exists()


# --- the flags other flags leave unread --------------------------------------------------------


@pytest.mark.parametrize("mode", settings_module.TRAINING_MODES)
def test_pgd_and_trades_flags_are_warned_of_exactly_where_the_mode_does_not_read_them(tmp_path, mode):
    reads_pgd, reads_beta = mode in PGD_MODES, mode == "trades"
    pgd_modes = "--mode pgd, trades, te"
    one = settings_module.unread_flags(_settings(tmp_path, mode=mode, pgd_step=0.01))
    assert one == ([] if reads_pgd else [f"--pgd-step sets the PGD of {pgd_modes}; --mode {mode} does not read it"])
    both = settings_module.unread_flags(_settings(tmp_path, mode=mode, pgd_steps=3, pgd_step=0.01))
    said = f"--pgd-steps / --pgd-step set the PGD of {pgd_modes}; --mode {mode} does not read them"
    assert both == ([] if reads_pgd else [said])
    beta = settings_module.unread_flags(_settings(tmp_path, mode=mode, trades_beta=3.0))
    said = f"--trades-beta weighs the robust loss of --mode trades; --mode {mode} does not read it"
    assert beta == ([] if reads_beta else [said])
    assert settings_module.unread_flags(_settings(tmp_path, mode=mode, trades_beta=6.0)) == []  # the default


def _rate_read(milestone: int, epochs: int) -> bool:
    """Whether the training's learning rate of some epoch 1..epochs changes with ``milestone``."""
    from ntkrobust.bridge.training import learning_rate

    def rates(milestones):
        config = types.SimpleNamespace(lr=1.0, gamma=0.5, milestones=milestones)
        return [learning_rate(config, epoch) for epoch in range(1, epochs + 1)]

    return rates((milestone,)) != rates(())


def _full_every_read(every: int, epochs: int) -> bool:
    """Whether the full evaluation's epochs 0..epochs change with ``--full-eval-every every``."""
    from ntkrobust.bridge.tracking import TrackingConfig

    def due(full_every):
        config = types.SimpleNamespace(full_steps=1, full_every=full_every)
        return [TrackingConfig.full_due(config, epoch, epochs) for epoch in range(epochs + 1)]

    return due(every) != due(None)


@pytest.mark.parametrize("epochs", [1, 3, 4])
def test_a_milestone_or_full_evaluation_period_is_warned_of_where_no_epoch_reads_it(tmp_path, epochs):
    for value in range(1, epochs + 3):
        milestone = settings_module.unread_flags(_settings(tmp_path, epochs=epochs, milestones=(value,)))
        late = [f"--milestones {value} comes at or after the last of --epochs {epochs}: only a --resume to more "
                "epochs reads it"]  # fmt: skip
        assert milestone == ([] if _rate_read(value, epochs) else late), value
        every = settings_module.unread_flags(_settings(tmp_path, epochs=epochs, full_eval_every=value))
        late = [f"--full-eval-every {value} comes at or after the last of --epochs {epochs}: only a --resume to "
                "more epochs reads it"]  # fmt: skip
        assert every == ([] if _full_every_read(value, epochs) else late), value


def test_only_the_late_milestones_are_named_and_two_late_flags_read_as_plural(tmp_path):
    said = settings_module.unread_flags(_settings(tmp_path, epochs=3, milestones=(1, 3, 5), full_eval_every=4))
    assert said == ["--milestones 3,5 and --full-eval-every 4 come at or after the last of --epochs 3: only a "
                    "--resume to more epochs reads them"]  # fmt: skip
    # --epochs 0 trains nothing: no schedule is read, and none is warned of
    assert settings_module.unread_flags(_settings(tmp_path, epochs=0, milestones=(1,), full_eval_every=1)) == []


def test_gamma_is_warned_of_only_without_milestones(tmp_path):
    said = ["--gamma scales the learning rate at --milestones; there are none, so it is not read"]
    assert settings_module.unread_flags(_settings(tmp_path, gamma=0.5)) == said
    assert settings_module.unread_flags(_settings(tmp_path, gamma=0.5, milestones=(2,))) == []
    assert settings_module.unread_flags(_settings(tmp_path, gamma=0.1)) == []  # the default


@pytest.mark.parametrize(
    ("changes", "flags"),
    [
        ({"track_every": 2}, "--track-every shapes"),
        ({"track_full": True}, "--track-full shapes"),
        ({"estimator": "rademacher:2"}, "--estimator shapes"),
        ({"memory_budget": 5}, "--memory-budget shapes"),
        ({"track_every": 2, "track_full": True, "estimator": "rademacher:2", "memory_budget": 5},
         "--track-every / --track-full / --estimator / --memory-budget shape"),
    ],
)  # fmt: skip
def test_each_tracking_flag_is_warned_of_only_when_nothing_is_tracked(tmp_path, changes, flags):
    untracked = settings_module.unread_flags(_settings(tmp_path, track_kernel=0, **changes))
    assert untracked == [f"{flags} the tracked kernels; --track-kernel 0 tracks none"]
    assert settings_module.unread_flags(_settings(tmp_path, track_kernel=7, **changes)) == []
    assert settings_module.unread_flags(_settings(tmp_path, track_kernel=0)) == []


# --- TE's ramp ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epochs", "start", "end"),
    # round(0.45 E) (at least 1) and round(0.75 E): the authors' 90 and 150 of 200
    [(2, 1, 2), (3, 1, 2), (4, 2, 3), (20, 9, 15), (200, 90, 150)],
)
def test_te_ramp_by_default_is_the_authors_scaled_to_the_epochs(tmp_path, epochs, start, end):
    ramp = settings_module.te_ramp(_settings(tmp_path, mode="te", epochs=epochs))
    assert ramp == {"te_start": start, "te_end": end, "te_weight": 300.0}


def test_te_ramp_takes_every_given_ramp_within_the_epochs_and_no_other(tmp_path):
    """1 <= start < end <= epochs, tried over every pair for 5 epochs (and a step past each side)."""
    for start in range(0, 7):
        for end in range(0, 7):
            settings = _settings(tmp_path, mode="te", epochs=5, te_start=start, te_end=end, te_weight=50.0)
            if 1 <= start < end <= 5:
                assert settings_module.te_ramp(settings) == {"te_start": start, "te_end": end, "te_weight": 50.0}
            else:
                with pytest.raises(StudyError, match=f"from epoch {start} to {end}: it needs 1 <= --te-start"):
                    settings_module.te_ramp(settings)


@pytest.mark.parametrize("mode", [m for m in settings_module.TRAINING_MODES if m != "te"])
def test_te_flags_without_te_are_refused_one_by_one(tmp_path, mode):
    for changes in ({"te_start": 2}, {"te_end": 3}, {"te_weight": 100.0}):
        with pytest.raises(StudyError, match="--te-start / --te-end / --te-weight set the regulariser of --mode te"):
            settings_module.te_ramp(_settings(tmp_path, mode=mode, **changes))
    assert settings_module.te_ramp(_settings(tmp_path, mode=mode, te_weight=300.0)) == {}


# --- the run folder and the BatchNorm modes -----------------------------------------------------


def test_force_refuses_a_data_file_among_what_it_clears(tmp_path):
    """``--force`` clears config.json, history.json, checkpoints/ and kernels/ of --out: a --data
    file there is refused; one elsewhere in --out is not cleared and passes."""
    out = tmp_path / "run"
    (out / "kernels").mkdir(parents=True)
    cleared, kept = out / "kernels" / "d.npz", out / "mine.npz"
    for path in (cleared, kept):
        path.write_bytes(b"x")
    settings = _settings(tmp_path, force=True)
    with pytest.raises(StudyError, match=f"--data {cleared} lies in --out {out}, which --force clears"):
        settings_module.check_folder(dataclasses.replace(settings, data=DataSettings(data=str(cleared))))
    settings_module.check_folder(dataclasses.replace(settings, data=DataSettings(data=str(kept))))


def test_the_two_centerings_and_the_stage2_batchnorm_modes(tmp_path):
    parent = tmp_path / "parent.pt"
    with pytest.raises(StudyError, match="--centered trains J\\(θ − θt\\), --centered-standard f_θ − f_θt: choose one"):
        settings_module.check_folder(_settings(tmp_path, linearize_from=parent, centered=True, centered_standard=True))
    with pytest.raises(StudyError, match="--stage2-batchnorm 'running': choose frozen or train"):
        settings_module.check_folder(_settings(tmp_path, stage2_batchnorm="running"))
    for stage2 in ("frozen", "train"):
        settings_module.check_folder(
            _settings(tmp_path, linearize_from=parent, centered_standard=True, stage2_batchnorm=stage2)
        )


@pytest.mark.parametrize("mode", ["running", "batch", "both"])
def test_batchnorm_modes_other_than_running_need_batchnorm_layers(tmp_path, nets, mode):
    built, _ = nets
    settings = _settings(tmp_path, batchnorm=mode)
    settings_module.check_batchnorm(settings, built["resnet18"], "resnet18")
    if mode == "running":
        settings_module.check_batchnorm(settings, built["fc2"], "fc2")
    else:
        with pytest.raises(StudyError, match=f"--batchnorm {mode}: fc2 has no BatchNorm layers"):
            settings_module.check_batchnorm(settings, built["fc2"], "fc2")


@pytest.mark.parametrize("mode", settings_module.TRAINING_MODES)
def test_the_training_pgds_budget_is_noted_only_in_modes_that_run_it(tmp_path, mode):
    """ε 0.1 with 2 steps of 0.01: PGD moves at most 2 · 0.01 = 0.02 < 0.1, said (prefixed
    "training PGD: ") in the PGD modes only; ε 8/255 on grey images is a colour radius, said in
    every mode; 10 steps of 0.01 reach 0.1 exactly, and MNIST's 0.3 is no colour radius: silence."""
    settings = _settings(tmp_path, mode=mode, eps=0.1, pgd_step=0.01, pgd_steps=2)
    notes = settings_module.attack_notes(settings, settings_module.resolve_threat(settings, 1), 1)
    budget = ("training PGD: PGD can move at most step*steps = 0.02 from its start, less than eps = 0.1: raise "
              "--pgd-steps or --pgd-step to use the whole budget")  # fmt: skip
    assert notes == ([budget] if mode in PGD_MODES else [])
    colour = _settings(tmp_path, mode=mode, eps=8 / 255)
    notes = settings_module.attack_notes(colour, settings_module.resolve_threat(colour, 1), 1)
    hint = "eps 8/255 on grey-scale images is a colour-image radius (CIFAR-10's standard is 8/255; MNIST's is 0.3)"
    assert notes == [f"training PGD: {hint}" if mode in PGD_MODES else hint]
    reached = _settings(tmp_path, mode=mode, eps=0.1, pgd_step=0.01, pgd_steps=10)
    assert settings_module.attack_notes(reached, settings_module.resolve_threat(reached, 1), 1) == []
