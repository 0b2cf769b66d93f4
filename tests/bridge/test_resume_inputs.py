"""Bad input to ``train --resume`` and to checkpoint loading: one line, exit status 2, and the run
folder left as it was (nothing rewritten before the checkpoint is read and checked)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from ntkrobust.bridge import checkpoint as checkpoint_module
from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from ntkrobust.bridge.models import ModelConfig, ModelError, build_model, model_config
from ntkrobust.bridge.runs import load_run

#: a tiny run of two epochs: fc2 of width 16 on 40 digits, kernels of 10 probe points
TRAIN = [
    "train", "--data", "digits", "--n-train", 40, "--n-test", 20, "--model", "fc2", "--width", 16,
    "--batch-size", 20, "--epochs", 2, "--track-kernel", 10, "--eval-n", 10, "--eval-pgd-steps", 2,
    "--full-eval-steps", 0, "--device", "cpu", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-epoch run (read only: copy it to change it)."""
    from ntkrobust import cli

    out = tmp_path_factory.mktemp("resume") / "run"
    assert cli.main([str(a) for a in [*TRAIN, "--out", out]]) == 0
    return out


def _edit_checkpoint(run, change, epoch=2):
    path = run / "checkpoints" / f"epoch_{epoch:03d}.pt"
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def _config_file(run, text):
    (run / "config.json").write_text(text)


def _train_int(run):
    config = json.loads((run / "config.json").read_text())
    config["train"] = 5
    _config_file(run, json.dumps(config))


def _fifo(path):
    path.unlink()
    os.mkfifo(path)


def _truncated(run):
    path = run / "checkpoints" / "epoch_002.pt"
    path.write_bytes(path.read_bytes()[:100])


def _folder_for_the_last_checkpoint(run):
    """A folder where the last checkpoint was: the resume took the one before, trained the epoch
    again and failed only when it wrote the checkpoint, naming its temporary file."""
    path = run / "checkpoints" / "epoch_002.pt"
    path.unlink()
    path.mkdir()


def _nan_weights(payload):
    payload["state_dict"] = {key: torch.full_like(value, float("nan")) for key, value in payload["state_dict"].items()}


def _wrong_momentum(payload, nan=False):
    """Every momentum buffer of shape (2,), or of its own shape and NaN."""
    for state in payload["optimizer"]["state"].values():
        buffer = state["momentum_buffer"]
        state["momentum_buffer"] = torch.full_like(buffer, float("nan")) if nan else torch.zeros(2)


def _cut(path, keep=100):
    path.write_bytes(path.read_bytes()[:keep])


def _nan_kernel(run):
    path = run / "kernels" / "step_0000004.npz"
    arrays = dict(np.load(path))
    arrays["clean"][0, 0] = np.nan
    np.savez(path, **arrays)


def _other_probe(run):
    path = run / "kernels" / "probe.npz"
    arrays = dict(np.load(path))
    arrays["x"] = arrays["x"][::-1].copy()
    np.savez(path, **arrays)


EDITS = {
    "config a list": (lambda run: _config_file(run, "[1, 2]"), "is not a run's configuration"),
    "config train an int": (_train_int, "different configuration: train was 5"),
    # Python's JSON parser recurses per level: 100,000 levels raised RecursionError, a traceback
    "config nested too deeply": (
        lambda run: _config_file(run, "[" * 100_000),
        "config.json: unreadable JSON (nested too deeply)",
    ),
    "config an integer of 5,000 digits": (  # without Python's advice to call sys.set_int_max_str_digits
        lambda run: _config_file(run, "9" * 5000),
        "config.json: unreadable JSON (Exceeds the limit (4300 digits) for integer string conversion: "
        "value has 5000 digits)\n",
    ),
    # a FIFO blocked the reader for good (``files.read_json``), a device never ended
    "config a FIFO": (
        lambda run: _fifo(run / "config.json"),
        "holds no run to continue (its config.json is not a regular file)",
    ),
    "history a FIFO": (lambda run: _fifo(run / "history.json"), "history.json is not"),
    "negative epoch": (lambda run: _edit_checkpoint(run, lambda p: p.update(epoch=-3)), "epoch -3 is not"),
    "negative step": (lambda run: _edit_checkpoint(run, lambda p: p.update(step=-1)), "its step -1 is not 4"),
    "history a list": (lambda run: _edit_checkpoint(run, lambda p: p.update(history=[1])), "its history is not"),
    "history empty": (lambda run: _edit_checkpoint(run, lambda p: p.update(history={})), "its history is not"),
    "epoch beyond its history": (
        lambda run: _edit_checkpoint(run, lambda p: p.update(epoch=10**6)),
        "claims epoch 1000000, but its history holds 3",
    ),
    "truncated checkpoint": (_truncated, "is not a checkpoint of this tool"),
    "a folder for a checkpoint": (_folder_for_the_last_checkpoint, "epoch_002.pt is not a file, and the run writes"),
    "a folder for the history": (
        lambda run: ((run / "history.json").unlink(), (run / "history.json").mkdir()),
        "history.json is not a file",
    ),
    "bad optimizer state": (
        lambda run: _edit_checkpoint(run, lambda p: p.update(optimizer={"state": {}, "param_groups": []})),
        "parameter groups",
    ),
    "optimizer state of the wrong types": (  # TypeError inside torch's load_state_dict: a traceback
        lambda run: _edit_checkpoint(run, lambda p: p.update(optimizer={"state": 5, "param_groups": "x"})),
        "cannot resume from",
    ),
    "momentum buffers of the wrong shape": (  # loaded as they were, and a traceback at the first step
        lambda run: _edit_checkpoint(run, _wrong_momentum),
        "its optimizer's momentum_buffer of shape (2,) (torch.float32) is not one for a parameter of shape",
    ),
    "NaN momentum": (
        lambda run: _edit_checkpoint(run, lambda p: _wrong_momentum(p, nan=True)),
        "its optimizer's momentum_buffer holds NaN or infinite values",
    ),
    "NaN weights": (lambda run: _edit_checkpoint(run, _nan_weights), "holds NaN or infinite values"),
    # the kernels and probe of the steps before the checkpoint: trained on, then refused by dynamics
    "truncated kernel file": (
        lambda run: _cut(run / "kernels" / "step_0000002.npz"),
        "step_0000002.npz: not an .npz (zip) archive, or a truncated one; a kernel tracked before",
    ),
    "missing kernel file": (
        lambda run: (run / "kernels" / "step_0000000.npz").unlink(),
        "missing kernel file kernels/step_0000000.npz; a kernel tracked before the checkpoint",
    ),
    "NaN kernel": (_nan_kernel, "step_0000004.npz: clean kernel contains NaN or inf; a kernel tracked"),
    "probe of other points": (_other_probe, "probe.npz holds other probe points than this configuration draws"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_resume_from_an_edited_run_is_refused_and_writes_nothing(tmp_path, finished_run, run_cli, edit):
    change, message = EDITS[edit]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    change(run)
    before = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    code, _, stderr = run_cli([*TRAIN, "--epochs", 3, "--out", run, "--resume"])
    assert code == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    assert "Traceback" not in stderr
    after = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    assert after == before  # config.json keeps its 2 epochs: nothing is written before the checks


def test_a_resume_to_fewer_epochs_than_trained_is_refused(tmp_path, finished_run, run_cli):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    code, _, stderr = run_cli([*TRAIN, "--epochs", 1, "--out", run, "--resume"])
    assert code == 2 and stderr.count("\n") == 1 and "has trained 2 epochs already" in stderr, stderr
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2


def test_a_sound_resume_still_continues(tmp_path, finished_run, run_cli):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    code, _, stderr = run_cli([*TRAIN, "--epochs", 3, "--out", run, "--resume"])
    assert code == 0, stderr
    history = json.loads((run / "history.json").read_text())
    assert [record["epoch"] for record in history["epochs"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_resume_writes_a_missing_or_damaged_probe_again(damage, tmp_path, finished_run, run_cli):
    """The probe is drawn from the configuration alone: the resumed run's is the one it began with."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    probe = run / "kernels" / "probe.npz"
    (probe.unlink if damage == "missing" else lambda: _cut(probe))()
    code, _, stderr = run_cli([*TRAIN, "--epochs", 3, "--out", run, "--resume"])
    assert code == 0, stderr
    assert probe.read_bytes() == (finished_run / "kernels" / "probe.npz").read_bytes()
    assert load_run(run).clean_kernels is not None  # dynamics reads the run


def test_te_averages_of_the_wrong_shape_are_refused():
    from ntkrobust.bridge._resume import _checkpoint_state
    from ntkrobust.bridge.temporal_ensembling import TemporalEnsemble

    payload = {"epoch": 0, "step": 0, "history": {"epochs": [{"epoch": 0}], "kernels": []}}
    ensemble = TemporalEnsemble.empty(4, 2, 1, 2)
    assert _checkpoint_state({**payload, "te_averages": torch.zeros(4, 2)}, 3, ensemble).epoch == 0
    with pytest.raises(ValueError, match=r"te_averages are not a tensor of shape \(4, 2\)"):
        _checkpoint_state({**payload, "te_averages": torch.zeros(3)}, 3, ensemble)


def test_a_memory_budget_too_small_for_the_probe_kernel_is_one_line_and_writes_nothing(assert_refused, monkeypatch):
    from ntkrobust.bridge import experiment

    def evaluated(*args, **kwargs):
        raise AssertionError("the budget is checked before the first evaluation")

    monkeypatch.setattr(experiment, "clean_accuracy", evaluated)
    argv = [*TRAIN, "--model", "mnist-cnn", "--width", 64, "--epochs", 1, "--memory-budget", 1]
    assert_refused(argv, "--memory-budget 1: memory budget of 1 MiB is too small")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (TRAIN, "fc2 of width 16 has 1,482 parameters"),
        (
            ["two-layer", "--data", "digits", "--width", 16, "--epochs", 2],
            "two-layer of width 16 has 1,024 parameters; the 2 copies held at once take 0.0 GiB, more than",
        ),
        (
            ["transfer", "--data", "digits", "--target", "missing.pt", "--surrogate", "fc2:16", "--surrogate-nets", 3],
            "fc2 of width 16 has 1,482 parameters; the 3 copies held at once take 0.0 GiB, more than",
        ),
    ],
)
def test_a_width_larger_than_the_free_memory_is_one_line_before_any_compute(argv, message, assert_refused, monkeypatch):
    import ntkrobust.kernels
    from ntkrobust.bridge import models

    def fitted(*args, **kwargs):
        raise AssertionError("the width is checked before the NTK machine is fitted")

    monkeypatch.setattr(models, "available_memory", lambda: 1000)
    monkeypatch.setattr(ntkrobust.kernels, "fit_kernel_machine", fitted)
    assert_refused(argv, message if "copies" in message else f"{message} (0.0 GiB), more than the 0.0 GiB")
    assert_refused(argv, "of memory free: choose a smaller width")


# -- checkpoints ------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    """``(path, payload)`` of a checkpoint of fc2 (width 16) on 8x8 images."""
    config = model_config("fc2", (1, 8, 8), 3, width=16)
    path = save_checkpoint(tmp_path / "fc2.pt", build_model(config), config, epoch=1)
    return path, read_checkpoint(path)


def _changed_weights(payload, key, value):
    return {**payload, "state_dict": {**payload["state_dict"], key: value}}


@pytest.mark.parametrize(
    "value, message",
    [
        (float("nan"), "1.weight holds NaN or infinite values"),
        (float("inf"), "1.weight holds NaN or infinite values"),
        ("int64", "1.weight holds torch.int64 values, the model's are torch.float32"),
    ],
)
def test_unusable_weights_are_refused_naming_the_tensor(tmp_path, saved, value, message):
    path, payload = saved
    weight = payload["state_dict"]["1.weight"]
    bad = weight.to(torch.int64) if value == "int64" else torch.full_like(weight, value)
    torch.save(_changed_weights(payload, "1.weight", bad), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(error.value)
    load_checkpoint(path)  # the untouched one loads


@pytest.mark.parametrize("seed", [2**70, 2**63, -1])
def test_a_seed_out_of_the_generators_range_is_refused(tmp_path, saved, seed):
    _, payload = saved
    torch.save({**payload, "config": {**payload["config"], "seed": seed}}, tmp_path / "seed.pt")
    with pytest.raises(CheckpointError, match=r"seed must lie in \[0, 2\*\*63\)"):
        load_checkpoint(tmp_path / "seed.pt")
    with pytest.raises(ModelError, match="seed must lie"):
        model_config("fc2", (1, 8, 8), 3, width=16, seed=seed)


def test_a_config_claiming_a_huge_width_is_refused_before_its_model_is_built(tmp_path, saved, monkeypatch):
    _, payload = saved
    # 2000 units: a wide claim, yet one a regression could still build here without harm
    torch.save({**payload, "config": {**payload["config"], "width": 2000}}, tmp_path / "wide.pt")
    built: list[bool] = []
    real = checkpoint_module.build_model

    def spy(config: ModelConfig, *, meta: bool = False):
        built.append(meta)
        return real(config, meta=meta)

    monkeypatch.setattr(checkpoint_module, "build_model", spy)
    with pytest.raises(CheckpointError, match=r"1\.weight has shape \(16, 64\), its config's model needs \(2000, 64\)"):
        load_checkpoint(tmp_path / "wide.pt")
    assert built == [True]  # only the shapes-only build, no real one


def test_a_state_dict_with_a_missing_or_foreign_entry_is_refused(tmp_path, saved):
    _, payload = saved
    weights = dict(payload["state_dict"])
    del weights["1.bias"]
    torch.save({**payload, "state_dict": weights}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"its state dict lacks '1\.bias'"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save(_changed_weights(payload, "extra", torch.zeros(1)), tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="its state dict has 'extra'"):
        load_checkpoint(tmp_path / "extra.pt")


def test_weights_that_overflow_the_kernel_are_one_line_and_write_nothing(tmp_path, assert_refused):
    """Finite weights (so the checkpoint loads) a million million times too large: the net's
    outputs overflow float32 and its empirical NTK holds inf. It was a traceback from the
    kernel's metrics, and ``train`` left its configuration and probe behind."""
    config = model_config("fc2", (1, 8, 8), 10, width=16)
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1e12)
    path = save_checkpoint(tmp_path / "huge.pt", model, config, epoch=1)
    entk = ["entk", "--data", "digits", "--checkpoint", path, "--n", 10, "--device", "cpu", "--quiet"]
    assert_refused(entk, "the empirical NTK of 10 points is not finite (NaN or inf)")
    linearized = [*TRAIN[:7], "--epochs", 1, "--track-kernel", 10, "--eval-n", 10, "--full-eval-steps", 0]
    assert_refused([*linearized, "--linearize-from", path], "at initialisation, the empirical NTK")


def test_a_run_whose_weights_overflow_after_an_epoch_says_it_diverged_and_keeps_the_epochs_before(tmp_path, run_cli):
    """lr 1e30 and one step (a batch of all 40 points): its loss is finite, the weights after it
    make the net's outputs overflow (the loss of a second step would have been NaN, and the
    probe's kernel is not finite either). The epoch's end checks the outputs on its last batch,
    before the kernel is tracked."""
    out = tmp_path / "run"
    code, _, stderr = run_cli([*TRAIN, "--epochs", 1, "--batch-size", 40, "--lr", "1e30", "--out", out])
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "outputs became NaN or inf after the last update of epoch 1" in stderr
    assert "the run diverged; try a smaller --lr" in stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch_000.pt"]
