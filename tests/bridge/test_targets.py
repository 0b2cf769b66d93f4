"""Target nets of transfer studies: checkpoints, TorchScript files, state dicts, and refusals."""

from __future__ import annotations

import pytest
import torch

from ntkrobust.bridge.checkpoint import save_checkpoint
from ntkrobust.bridge.linearized import LinearizedNetwork
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.targets import TargetError, load_target
from ntkrobust.bridge.two_layer import OutputChange

torch.set_num_threads(1)
# the tests make TorchScript files as a user would; torch deprecates making them, not loading them
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
SHAPE = (1, 8, 8)


@pytest.fixture
def fc2():
    config = model_config("fc2", SHAPE, 10, width=32, seed=3)
    return config, build_model(config).eval()


def _load(spec, classes=10):
    return load_target(str(spec), image_shape=SHAPE, num_classes=classes)


def test_checkpoint_of_a_run_is_labelled_by_run_and_epoch(tmp_path, fc2):
    config, net = fc2
    path = tmp_path / "standard" / "checkpoints" / "epoch_007.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, net, config, epoch=7)
    target = _load(path)
    assert (target.label, target.epoch, target.curve) == ("standard epoch 7", 7, ("standard", 7))
    assert target.description["kind"] == "checkpoint" and target.description["model"] == "fc2"
    x = torch.rand(3, *SHAPE)
    torch.testing.assert_close(target.model(x), net(x))


def test_a_linearized_runs_checkpoint_sits_at_its_spawn_epoch(tmp_path, fc2):
    import json

    config, net = fc2
    run = tmp_path / "cen-e5"
    (run / "checkpoints").mkdir(parents=True)
    spawn = {"checkpoint": "runs/std/checkpoints/epoch_005.pt", "spawn_epoch": 5, "centered": True}
    (run / "config.json").write_text(json.dumps({"linearization": spawn}))
    save_checkpoint(run / "checkpoints" / "epoch_002.pt", LinearizedNetwork(net, centered=True), config, epoch=2)
    target = _load(run / "checkpoints" / "epoch_002.pt")
    assert target.curve == ("centered from std", 5) and target.label == "cen-e5 epoch 2"


def test_linearized_and_output_change_checkpoints_keep_their_wrappers(tmp_path, fc2):
    config, net = fc2
    save_checkpoint(tmp_path / "centered.pt", LinearizedNetwork(net, centered=True), config)
    target = _load(tmp_path / "centered.pt")
    assert isinstance(target.model, LinearizedNetwork) and target.description["centered"] is True
    two = model_config("two-layer", SHAPE, 10, width=16)
    save_checkpoint(tmp_path / "net.pt", OutputChange(build_model(two), build_model(two)), two)
    target = _load(tmp_path / "net.pt")
    assert isinstance(target.model, OutputChange) and target.description["output"] == "f - f0"


def test_torchscript_and_state_dict_targets(tmp_path, fc2):
    _, net = fc2
    x = torch.rand(4, *SHAPE)
    torch.jit.save(torch.jit.trace(net, x), tmp_path / "net.ts")
    scripted = _load(tmp_path / "net.ts")
    assert scripted.description["kind"] == "torchscript" and scripted.label == "net"
    torch.testing.assert_close(scripted.model(x), net(x))
    exported = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(exported, tmp_path / "net.pt2")
    program = _load(tmp_path / "net.pt2")
    assert program.description["kind"] == "exported program"
    torch.testing.assert_close(program.model(x), net(x))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    loaded = load_target(f"fc2:32={tmp_path / 'weights.pt'}", image_shape=SHAPE, num_classes=10)
    assert loaded.description["kind"] == "state-dict" and loaded.description["width"] == 32
    torch.testing.assert_close(loaded.model(x), net(x))


def test_binary_tasks_take_one_or_two_logits(tmp_path):
    for outputs in (1, 2):
        config = model_config("fc1", SHAPE, outputs, width=8)
        save_checkpoint(tmp_path / f"o{outputs}.pt", build_model(config), config)
        assert _load(tmp_path / f"o{outputs}.pt", classes=2).model is not None
    with pytest.raises(TargetError, match=r"needs \(2, 3\) logits"):
        _load(tmp_path / "o2.pt", classes=3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.pt", "does not exist"),
        (lambda d: _write(d / "junk.pt", b"not a model"), "not a torchscript that loads"),
        (lambda d: _checkpoint(d, (1, 28, 28)), "takes images of shape (1, 28, 28), the data has (1, 8, 8)"),
        (lambda d: _script(d, (1, 28, 28)), "does not take images of shape (1, 8, 8)"),
        (lambda d: f"fc2:64={_state(d)}", "does not fit the fc2 model"),
        (lambda d: f"fc2:x={_state(d)}", "must be a whole number"),
    ],
)
def test_bad_targets_are_refused_in_one_line(tmp_path, make, message):
    with pytest.raises(TargetError) as error:
        _load(make(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)


def _write(path, data):
    path.write_bytes(data)
    return path


def _checkpoint(folder, shape):
    config = model_config("fc1", shape, 10, width=8)
    return save_checkpoint(folder / "mnist.pt", build_model(config), config)


def _script(folder, shape):
    net = build_model(model_config("fc1", shape, 10, width=8)).eval()
    path = folder / "mnist.ts"
    torch.jit.save(torch.jit.trace(net, torch.rand(2, *shape)), path)
    return path


def _state(folder):
    path = folder / "weights.pt"
    torch.save(build_model(model_config("fc2", SHAPE, 10, width=32)).state_dict(), path)
    return path
