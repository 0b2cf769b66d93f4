"""Audit of what a training checkpoint stores and what ``--resume`` restores (``bridge._resume``,
``bridge.checkpoint``, ``bridge.experiment``): the resumed run against the uninterrupted one
(weights and SGD momentum buffers bitwise, the history record by record), across a milestone,
the clean-then-AT switch and weight decay, from the initialisation's checkpoint too; and the
checkpoints a run could not have written refused."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from ntkrobust.bridge.data import load_dataset
from ntkrobust.bridge.experiment import RunFolderError, run_training
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.tracking import TrackingConfig
from ntkrobust.bridge.training import TrainConfig, learning_rate

warnings.filterwarnings("ignore", message="CUDA initialization")

#: 3 epochs of 3 steps (40 points in batches of 16, the last one of 8); the rate halves after
#: epoch 1, epoch 1 is clean and FGSM with anisotropic noise follows (RAT secs. 5-6)
TRAIN = {
    "mode": "fgsm-noise", "epochs": 3, "lr": 0.2, "momentum": 0.9, "weight_decay": 0.01, "milestones": (1,),
    "gamma": 0.5, "batch_size": 16, "eps": 0.1, "switch_epoch": 1, "seed": 4,
}  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=40, n_test=20, seed=0)


def _run(out, data, *, resume=False, interrupt=None, **changes):
    """The run of ``TRAIN`` (with ``changes``) into ``out``; ``interrupt = (epoch, step)`` stops it
    with KeyboardInterrupt after that global step of that epoch."""
    config = model_config("fc2", data.image_shape, len(data.classes), width=16, seed=0)
    train = TrainConfig(**{**TRAIN, **changes})
    tracking = TrackingConfig(eps=0.1, step=0.03, steps=1, probe=0, eval_n=10)
    run_config = {"model": config.to_dict(), "train": train.to_dict(), "tracking": tracking.to_dict(), "device": "cpu"}
    import ntkrobust.bridge.experiment as experiment

    real = experiment.train_epoch

    def interrupted(*args, **kwargs):
        if interrupt is not None and args[5] == interrupt[0]:
            after = kwargs["after_step"]

            def stop(step: int) -> None:
                after(step)
                if step == interrupt[1]:
                    raise KeyboardInterrupt

            kwargs["after_step"] = stop
        return real(*args, **kwargs)

    experiment.train_epoch = interrupted
    try:
        return run_training(
            out,
            build_model(config),
            config,
            data,
            train,
            tracking,
            config=run_config,
            label="audit",
            device=torch.device("cpu"),
            resume=resume,
        )
    finally:
        experiment.train_epoch = real


def _without_times(history):
    history = json.loads(json.dumps(history))
    for record in history["epochs"]:
        record.pop("seconds", None)
    return history


def _last(out, epoch=3):
    return torch.load(out / "checkpoints" / f"epoch_{epoch:03d}.pt", weights_only=True)


def _assert_same_state(a, b):
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"]), index


@pytest.mark.parametrize("cut", [(2, 4), (1, 2)], ids=["in-epoch-2", "in-epoch-1"])
def test_a_resumed_run_is_the_uninterrupted_one_bitwise(tmp_path, digits, cut):
    """Interrupted in epoch 2 (after the milestone and the switch to FGSM: the resume must set the
    halved rate and the adversarial mode from the epoch, and carry the momentum buffers that the
    weight decay fed), or in epoch 1 (from the initialisation's checkpoint, epoch 0): the resumed
    run's last checkpoint holds the uninterrupted run's weights and momentum buffers bitwise, and
    its history the same records (times aside)."""
    reference = _run(tmp_path / "whole", digits)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", digits, interrupt=cut)
    stored = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [record["epoch"] for record in stored["epochs"]] == list(range(cut[0]))
    resumed = _run(tmp_path / "cut", digits, resume=True)
    assert _without_times(resumed) == _without_times(reference)
    assert [record["lr"] for record in resumed["epochs"][1:]] == [0.2, 0.1, 0.1]
    assert [record["mode"] for record in resumed["epochs"]] == ["init", "standard", "fgsm-noise", "fgsm-noise"]
    _assert_same_state(_last(tmp_path / "whole"), _last(tmp_path / "cut"))


def test_each_checkpoint_holds_its_epoch_step_history_and_optimizer(tmp_path, digits):
    """epoch_k.pt: epoch k, step 3k, the history of epochs 0..k, and an optimizer state whose
    momentum buffers are there from the first step on (none at the initialisation) and whose rate
    is the schedule's for epoch k."""
    _run(tmp_path, digits)
    for epoch in range(4):
        payload = _last(tmp_path, epoch)
        assert (payload["epoch"], payload["step"]) == (epoch, 3 * epoch)
        assert [record["epoch"] for record in payload["history"]["epochs"]] == list(range(epoch + 1))
        buffers = [state.get("momentum_buffer") for state in payload["optimizer"]["state"].values()]
        assert len(buffers) == (len(payload["state_dict"]) if epoch else 0)  # fc2: no buffers
        assert all(b is not None for b in buffers)
        if epoch:
            assert payload["optimizer"]["param_groups"][0]["lr"] == learning_rate(TrainConfig(**TRAIN), epoch)


def _edited(tmp_path, digits, change):
    _run(tmp_path, digits, epochs=2)
    path = tmp_path / "checkpoints" / "epoch_002.pt"
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def _reordered(payload):
    records = payload["history"]["epochs"]
    records[1]["epoch"], records[2]["epoch"] = 2, 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_reordered, "claims epoch 2, but its history holds 3 epoch records"),
        (lambda payload: payload.update(step=5), "its step 5 is not 6, the step count at the end of epoch 2"),
    ],
    ids=["history-out-of-order", "step-of-another-epoch"],
)
def test_a_checkpoint_its_run_could_not_have_written_is_refused(tmp_path, digits, change, message):
    """A history whose epochs are out of order, or a step count that is not 3 per epoch, would
    resume onto another trajectory (the tracking every k steps and the attack seeds follow the
    step count)."""
    _edited(tmp_path, digits, change)
    with pytest.raises(RunFolderError, match=re.escape(message)):
        _run(tmp_path, digits, resume=True)


def test_a_resume_with_another_learning_rate_is_refused(tmp_path, digits):
    """Only the epochs (and the device, the memory budget) may change on resume: another rate is
    another trajectory."""
    _run(tmp_path, digits, epochs=1)
    with pytest.raises(RunFolderError, match=re.escape("different configuration: train.lr was 0.2, now 0.3")):
        _run(tmp_path, digits, resume=True, lr=0.3)


@pytest.mark.parametrize("tag", [None, "ntkrobust-checkpoint-v0"], ids=["no-tag", "another-tag"])
def test_a_checkpoint_without_this_tools_format_tag_is_refused(tmp_path, tag):
    """A dict that torch loads but that lacks the format tag (another tool's state dict file, or
    another format version) is not ours: refused, not read as if it were."""
    from ntkrobust.bridge.checkpoint import CheckpointError, read_checkpoint, save_checkpoint

    config = model_config("fc2", (1, 8, 8), 10, width=4, seed=0)
    path = save_checkpoint(tmp_path / "model.pt", build_model(config), config, epoch=0)
    payload = torch.load(path, weights_only=True)
    assert read_checkpoint(path)["epoch"] == 0
    payload.pop("format") if tag is None else payload.update(format=tag)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="no 'ntkrobust-checkpoint-v1' format tag"):
        read_checkpoint(path)
