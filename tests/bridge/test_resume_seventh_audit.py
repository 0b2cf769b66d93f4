"""Seventh audit of ``bridge._resume``: ``start_state`` on run folders written by hand (a
``config.json`` of json.dumps, a checkpoint of ``torch.save`` of a hand-made dict, kernel and probe
files of ``np.savez``), not by a training run. Which configuration changes a resume takes, the one
line that names a difference, the checkpoint entries and optimizer states its run could not have
written (refused, the folder left byte for byte), the probe file, and the stale kernel files of an
interrupted epoch. Each test failed on a mutant of the code that the earlier tests let through."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ntkrobust.bridge._resume import RunFolderError, RunState, start_state
from ntkrobust.bridge.runfolder import RunFolder
from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble

TAG = "ntkrobust-checkpoint-v1"  # the format tag of this tool's checkpoints, written out by hand
STEPS = 3  # steps per epoch of the hand-made run
CONFIG = {
    "device": "cpu",
    "model": {"name": "hand", "width": 4},
    "tracking": {"every": 2, "memory_budget": 1000, "probe": 3},
    "train": {"epochs": 3, "lr": 0.1, "seed": 0},
}


def _net() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _sgd(net: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)


def _payload(number: int = 1, **changes):
    """The checkpoint of epoch ``number`` as a run of ``STEPS`` steps per epoch writes it (weights,
    SGD momentum buffers of the weight and the bias, epoch, step, the history of epochs 0 to
    ``number``), with the entries ``changes`` instead."""
    net = _net()
    optimizer = {
        "state": {0: {"momentum_buffer": torch.full((2, 3), 0.5)}, 1: {"momentum_buffer": torch.full((2,), -0.25)}},
        "param_groups": _sgd(net).state_dict()["param_groups"],
    }
    history = {"epochs": [{"epoch": e} for e in range(number + 1)], "kernels": []}
    payload = {
        "format": TAG,
        "state_dict": {key: value + 1 for key, value in net.state_dict().items()},
        "optimizer": optimizer,
        "epoch": number,
        "step": number * STEPS,
        "history": history,
    }
    return {**payload, **changes}


def _folder(tmp_path: Path, payload=None, config=CONFIG, epoch: int = 1) -> Path:
    """A run folder holding ``config`` and, unless None, ``payload`` as its checkpoint of ``epoch``."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    if payload is not None:
        torch.save(payload, run / "checkpoints" / f"epoch_{epoch:03d}.pt")
    return run


def _start(run: Path, config=CONFIG, *, epochs: int = 3, ensemble=None, probe=None):
    """``(state, net, optimizer)`` of ``--resume`` on ``run`` with ``config``."""
    net = _net()
    optimizer = _sgd(net)
    state = start_state(
        RunFolder(run),
        copy.deepcopy(config),
        True,
        model=net,
        optimizer=optimizer,
        device=torch.device("cpu"),
        epochs=epochs,
        steps_per_epoch=STEPS,
        ensemble=ensemble,
        probe=probe,
    )
    return state, net, optimizer


def _files(run: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}


def _refused(run: Path, message: str, config=CONFIG, **kwargs) -> str:
    """``--resume`` refuses ``run`` with a one-line ``RunFolderError`` holding ``message`` and
    leaves every file of the folder as it was; the error's text."""
    before = _files(run)
    with pytest.raises(RunFolderError, match=re.escape(message)) as error:
        _start(run, config, **kwargs)
    assert "\n" not in str(error.value)
    assert _files(run) == before
    return str(error.value)


def _changed(path: str, value):
    """``CONFIG`` with the entry at the dotted ``path`` set to ``value``."""
    config = copy.deepcopy(CONFIG)
    *holders, key = path.split(".")
    holder = config
    for name in holders:
        holder = holder[name]
    holder[key] = value
    return config


# -- the configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [("train.epochs", 5), ("device", "cuda:1"), ("tracking.memory_budget", None)],
    ids=["more-epochs", "another-device", "another-memory-budget"],
)
def test_more_epochs_another_device_or_memory_budget_resume_and_are_stored(tmp_path, path, value):
    """The three changes a resume takes (more epochs continue the trajectory; the machine and the
    kernels' working memory are not part of the experiment): the checkpoint's state is taken up,
    its weights and momentum loaded, and config.json holds the new configuration afterwards (the
    next resume compares against it)."""
    config = _changed(path, value)
    run = _folder(tmp_path, _payload())
    state, net, optimizer = _start(run, config)
    assert (state.epoch, state.step, state.write_probe) == (1, 3, True)
    assert torch.equal(net.bias.detach(), _net().bias.detach() + 1)
    assert torch.equal(optimizer.state[net.bias]["momentum_buffer"], torch.full((2,), -0.25))
    assert json.loads((run / "config.json").read_text()) == config


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (_changed("tracking.every", 3), "tracking.every was 2, now 3"),
        (_changed("model.width", 5), "model.width was 4, now 5"),
        (_changed("train.seed", 1), "train.seed was 0, now 1"),
        ({**CONFIG, "data": "digits"}, "data was None, now 'digits'"),
        ({**CONFIG, "model": {"name": "hand"}}, "model.width was 4, now None"),
        (_changed("tracking.selection_seed", 7), "tracking.selection_seed was None, now 7"),
    ],
    ids=["tracking-every", "width", "seed", "a-new-entry", "an-entry-gone", "a-new-nested-entry"],
)
def test_any_other_change_of_the_configuration_is_refused_naming_it(tmp_path, config, said):
    """Every other entry is part of the trajectory, the tracking schedule too: changed, added or
    dropped (the stored config lacks it, or the new one does), the resume is refused naming the
    entry with its old and new value."""
    run = _folder(tmp_path, _payload())
    text = _refused(run, f"--resume: {run} was made with a different configuration: {said}", config)
    assert "more)" not in text


def test_a_whole_section_that_differs_is_cut_to_80_characters_and_the_others_counted(tmp_path):
    """A differing value longer than 80 characters (repr) is cut there with " ...", so that the
    message stays one short line; the first difference in key order is named and the others
    counted ("and 2 more")."""
    run = _folder(tmp_path, _payload())
    config = {**_changed("train.lr", 0.2), "model": "m" * 100, "tracking": 5}
    text = _refused(run, "different configuration", config)
    assert text == (
        f"--resume: {run} was made with a different configuration: model was {{'name': 'hand', 'width': 4}}, "
        f"now '{'m' * 79} ... (and 2 more)"
    )


def test_a_folder_without_a_configuration_holds_no_run(tmp_path):
    """On one process (rank 0) the refusal says the folder holds no run, without the torchrun
    advice about shared storage, which is for the other ranks."""
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(RunFolderError) as error:
        _start(run)
    assert str(error.value) == f"--resume: {run} holds no run (no config.json)"
    assert list(run.iterdir()) == []


# -- the epochs asked, the stale kernels, a folder without a checkpoint ------------------------


def test_a_run_resumed_to_as_many_epochs_as_it_trained_is_taken_up_and_fewer_refused(tmp_path):
    """A finished run of 3 epochs resumed with 3 epochs trains nothing more, and is no error (a
    study's resume of runs already done); with 2 it is refused, naming the epochs to give."""
    run = _folder(tmp_path, _payload(3), epoch=3)
    state, _, _ = _start(run, epochs=3)
    assert (state.epoch, state.step) == (3, 9)
    _refused(run, f"{run} has trained 3 epochs already, more than the 2 asked: give --epochs 3 or more", epochs=2)


def test_kernel_files_after_the_checkpoints_step_are_removed_and_the_others_kept(tmp_path):
    """The kernels of the interrupted epoch (steps after the checkpoint's step 3) are stale: they
    are removed. The kernels up to step 3, the checkpoint's own step among them, are the run's
    and stay (``dynamics`` reads them)."""
    run = _folder(tmp_path, _payload(1))
    (run / "kernels").mkdir()
    for step in (0, 2, 3, 4, 5, 12):
        (run / "kernels" / f"step_{step:07d}.npz").write_bytes(b"kernel")
    _start(run)
    assert sorted(path.name for path in (run / "kernels").iterdir()) == [
        "step_0000000.npz",
        "step_0000002.npz",
        "step_0000003.npz",
    ]


def test_a_folder_with_no_checkpoint_starts_afresh_whatever_its_probe_file_holds(tmp_path):
    """A run killed before its initialisation's checkpoint left config.json (and perhaps a probe
    file): the resume starts it afresh and writes the probe again, without comparing the old
    one (the run's history has no kernel it could disagree with)."""
    run = _folder(tmp_path)
    (run / "kernels").mkdir()
    np.savez(run / "kernels" / "probe.npz", x=np.ones((3, 2), np.float32), y=np.zeros(3), targets=np.zeros(3))
    state, _, _ = _start(run, probe=_probe())
    assert state == RunState()


# -- the checkpoint's entries ------------------------------------------------------------------


def _other_history(**history):
    return {"epochs": [{"epoch": 0}, {"epoch": 1}], "kernels": [], **history}


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"epoch": 1.0}, "its epoch 1.0 is not a whole number >= 0"),
        ({"epoch": True}, "its epoch True is not a whole number >= 0"),
        ({"step": 3.0}, "its step 3.0 is not 3, the step count at the end of epoch 1"),
        ({"step": 4}, "its step 4 is not 3, the step count at the end of epoch 1"),
        ({"history": {"epochs": [{"epoch": 0}, {"epoch": 1}]}}, "its history is not a training run's"),
        ({"history": _other_history(epochs=[{"epoch": 0}, 1])}, "it claims epoch 1, but its history holds 2"),
        (
            {"history": _other_history(epochs=[{"epoch": 0}, {"epoch": 1.0}])},
            "its history's epoch records are not numbered 0 to 1 in whole numbers",
        ),
        (
            {"history": _other_history(epochs=[{"epoch": False}, {"epoch": True}])},
            "its history's epoch records are not numbered 0 to 1 in whole numbers",
        ),
    ],
    ids=[
        "float-epoch",
        "bool-epoch",
        "float-step",
        "step-beyond",
        "no-kernels",
        "record-not-a-dict",
        "float-record-epoch",
        "bool-record-epochs",
    ],
)
def test_a_checkpoint_entry_its_run_could_not_have_written_is_refused(tmp_path, changes, said):
    """A run writes whole numbers for epoch and step (step = epoch x steps per epoch, no more and
    no fewer), a history with lists of epoch records (dicts) and kernel records: anything else
    is refused in one line naming the checkpoint, before anything is written. Let through, a
    float epoch fails later as a TypeError traceback, and a float or larger step puts the
    tracking and the attacks' seeds (both follow the step count) off the uninterrupted run's."""
    run = _folder(tmp_path, _payload(**changes))
    checkpoint = run / "checkpoints" / "epoch_001.pt"
    _refused(run, f"--resume: cannot resume from {checkpoint} ({said}")


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (
            {**_payload(), "format": "ntkrobust-checkpoint-v0"},
            f" is not a checkpoint of this tool (no '{TAG}' format tag)",
        ),
        (
            _payload(
                state_dict={"weight": torch.tensor([[0.0, 1.0, 2.0], [3.0, float("nan"), 5.0]]), "bias": torch.zeros(2)}
            ),
            ": weight holds NaN or infinite values",
        ),
        (
            _payload(state_dict={"weight": torch.zeros(2, 3)}),
            ": cannot rebuild its model (its state dict lacks 'bias')",
        ),
        (
            _payload(state_dict={"weight": torch.empty(2, 3, device="meta"), "bias": torch.zeros(2)}),
            ": weight is not a dense tensor of values (layout torch.strided, device meta)",
        ),
    ],
    ids=["another-format", "one-nan-weight", "a-weight-missing", "meta-weights"],
)
def test_a_checkpoint_of_another_format_or_unusable_weights_is_refused_in_the_checkpoints_words(
    tmp_path, payload, said
):
    """The checkpoint's own refusal (it names the file) is said once, after "--resume: ", not
    wrapped again as "cannot resume from FILE (FILE: ...)"; the folder is left as it was."""
    run = _folder(tmp_path, payload)
    assert _refused(run, said) == f"--resume: {run / 'checkpoints' / 'epoch_001.pt'}{said}"


@pytest.mark.parametrize(
    ("averages", "said"),
    [
        ([[0.0, 0.0]] * 4, "its te_averages are not a tensor of shape (4, 2)"),
        (torch.zeros(2, 4), "its te_averages are not a tensor of shape (4, 2)"),
        (None, "its te_averages are not a tensor of shape (4, 2)"),
        (torch.tensor([[0.5, 0.5]] * 3 + [[float("nan"), 0.5]]), "its te_averages hold NaN or infinite values"),
    ],
    ids=["a-list", "transposed", "missing", "one-nan"],
)
def test_te_averages_that_are_missing_or_no_finite_tensor_of_the_ensembles_shape_are_refused(tmp_path, averages, said):
    """TE's per-example averages are an (examples, classes) tensor of finite values, in every
    checkpoint of a te run: a list, or a tensor of the same size and another shape, would train on
    other examples' averages (or fail as a traceback); a NaN would spread into the loss. Without
    them the resume went on from averages of zero, and its weights parted from the uninterrupted
    run's (by 0.06 after one epoch of fc2 on digits): refused now, as the other entries are."""
    payload = _payload() if averages is None else _payload(te_averages=averages)
    run = _folder(tmp_path, payload)
    _refused(run, said, ensemble=TemporalEnsemble.empty(4, 2, 1, 2))
    averages = torch.full((4, 2), 0.5, dtype=torch.float64)
    torch.save(_payload(te_averages=averages), run / "checkpoints" / "epoch_001.pt")
    assert torch.equal(_start(run, ensemble=TemporalEnsemble.empty(4, 2, 1, 2))[0].te_averages, averages)


# -- the optimizer state -----------------------------------------------------------------------


def _momentum(weight=None, bias=None, step=None):
    """A payload whose momentum buffers for the weight and the bias are the ones given, after a
    ``step`` count entry (as Adam's state holds one) in the weight's state if one is given."""
    payload = _payload()
    state = payload["optimizer"]["state"]
    if step is not None:
        state[0] = {"step": step, **state[0]}
    if weight is not None:
        state[0]["momentum_buffer"] = weight
    if bias is not None:
        state[1]["momentum_buffer"] = bias
    return payload


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (_momentum(weight=torch.zeros(3, 2)), "momentum_buffer of shape (3, 2) (torch.float32) is not one for a"),
        (_momentum(bias=torch.tensor([0.5, float("nan")])), "momentum_buffer holds NaN or infinite values"),
        (_momentum(bias=torch.zeros(3)), "momentum_buffer of shape (3,) (torch.float32) is not one for a"),
        (_momentum(weight=torch.tensor([[0.0, 1.0, float("-inf")]] * 2)), "momentum_buffer holds NaN or infinite"),
        (
            _momentum(weight=torch.zeros(3, 2), step=torch.tensor(4.0)),
            "momentum_buffer of shape (3, 2) (torch.float32) is not one for a",
        ),
    ],
    ids=["transposed-weight-buffer", "one-nan-in-the-bias-buffer", "bias-buffer-too-long", "one-inf", "after-a-step"],
)
def test_momentum_buffers_of_another_shape_or_with_one_non_finite_value_are_refused(tmp_path, payload, said):
    """``load_state_dict`` takes any tensors as momentum: a transposed buffer (as many values, its
    parameter's shape the other way round) failed at the first step as a traceback, and a single
    NaN among finite values would have spread into the weights at the first step."""
    run = _folder(tmp_path, payload)
    _refused(run, f"--resume: cannot resume from {run / 'checkpoints' / 'epoch_001.pt'} (its optimizer's {said}")


@pytest.mark.parametrize(
    "buffer", [torch.empty(2, 3, device="meta"), torch.eye(2, 3).to_sparse()], ids=["meta", "sparse"]
)
def test_a_momentum_buffer_without_dense_values_is_refused_in_one_line(tmp_path, buffer):
    """A momentum buffer on the meta device (no values) or of a sparse layout: torch's
    ``load_state_dict`` or the finiteness check raise NotImplementedError, a RuntimeError, which
    the resume says in one line naming the checkpoint, not as a traceback."""
    run = _folder(tmp_path, _momentum(weight=buffer))
    _refused(run, f"--resume: cannot resume from {run / 'checkpoints' / 'epoch_001.pt'} (")


def test_a_checkpoint_without_optimizer_state_is_refused_in_one_line(tmp_path):
    """A checkpoint without its optimizer entry (one saved by ``save_checkpoint`` for evaluation,
    say) cannot continue the run's momentum: refused, not a KeyError traceback."""
    payload = _payload()
    del payload["optimizer"]
    run = _folder(tmp_path, payload)
    _refused(run, f"--resume: cannot resume from {run / 'checkpoints' / 'epoch_001.pt'} ('optimizer')")


# -- the probe file ----------------------------------------------------------------------------


def _probe(shift: float = 0.0):
    return {
        "x": np.arange(6, dtype=np.float32).reshape(3, 2) + np.float32(shift),
        "y": np.array([0, 1, 0]),
        "targets": np.array([0, 1, 0]),
    }


def test_a_probe_file_that_lacks_an_array_is_written_again(tmp_path):
    """A probe file without its ``targets`` (damaged, or written by hand) is no probe the run can
    compare: flagged to be written again, as a missing one is, not a KeyError traceback; one
    that holds all three and agrees is kept."""
    run = _folder(tmp_path, _payload())
    (run / "kernels").mkdir()
    probe = _probe()
    np.savez(run / "kernels" / "probe.npz", x=probe["x"], y=probe["y"])
    assert _start(run, probe=probe)[0].write_probe
    np.savez(run / "kernels" / "probe.npz", **probe)
    assert not _start(run, probe=probe)[0].write_probe


@pytest.mark.parametrize("key", ["y", "targets"])
def test_a_probe_file_with_the_same_points_and_other_labels_is_refused(tmp_path, key):
    """The probe's labels and output indices are compared too, not only its points: the same
    images with other labels (a relabelled data set, another class order) are another probe."""
    run = _folder(tmp_path, _payload())
    (run / "kernels").mkdir()
    stored = _probe()
    stored[key] = np.array([1, 1, 0])
    np.savez(run / "kernels" / "probe.npz", **stored)
    _refused(run, "probe.npz holds other probe points than this configuration draws", probe=_probe())


def test_a_probe_file_that_differs_in_the_last_bits_is_refused(tmp_path):
    """The probe is drawn again from the data: equal bit for bit, or the data changed. Points
    that differ by one float32 step at 5.0 (5e-7: inside any tolerance) are other points."""
    run = _folder(tmp_path, _payload())
    (run / "kernels").mkdir()
    stored = _probe()
    stored["x"][2, 1] = np.nextafter(np.float32(5.0), np.float32(6.0))
    np.savez(run / "kernels" / "probe.npz", **stored)
    _refused(run, "probe.npz holds other probe points than this configuration draws", probe=_probe())
