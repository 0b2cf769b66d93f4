"""Target nets of transfer studies: checkpoints, TorchScript files, state dicts, and refusals."""

from __future__ import annotations

import pytest
import torch

from ntkrobust.bridge.checkpoint import save_checkpoint
from ntkrobust.bridge.linearized import LinearizedNetwork
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.targets import TargetError, load_target
from ntkrobust.bridge.two_layer import OutputChange

# the tests make TorchScript files as a user would; torch deprecates making them, not loading them
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
SHAPE = (1, 8, 8)


@pytest.fixture
def fc2():
    config = model_config("fc2", SHAPE, 10, width=32, seed=3)
    return config, build_model(config).eval()


def _load(spec, classes=10, *, trust_code=False):
    return load_target(str(spec), image_shape=SHAPE, num_classes=classes, trust_code=trust_code)


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
    with pytest.raises(TargetError) as refused:  # without the trust flag: one whole sentence, no torch paragraph
        _load(tmp_path / "net.ts")
    said = f"target {tmp_path / 'net.ts'} is a TorchScript program, which carries code and loads only with "
    assert str(refused.value) == said + "--trust-model-code"
    scripted = _load(tmp_path / "net.ts", trust_code=True)
    assert scripted.description["kind"] == "torchscript" and scripted.label == "net"
    torch.testing.assert_close(scripted.model(x), net(x))
    exported = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(exported, tmp_path / "net.pt2")
    program = _load(tmp_path / "net.pt2", trust_code=True)
    assert program.description["kind"] == "exported program"
    torch.testing.assert_close(program.model(x), net(x))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    loaded = load_target(f"fc2:32={tmp_path / 'weights.pt'}", image_shape=SHAPE, num_classes=10)
    assert loaded.description["kind"] == "state-dict" and loaded.description["width"] == 32
    torch.testing.assert_close(loaded.model(x), net(x))


def test_every_kind_of_target_goes_to_the_commands_device(tmp_path, fc2):
    """``--device cuda`` puts every target on the GPU; checked here on the meta device, which no
    tensor left on the CPU can meet (an exported program's weights sit outside the wrapper's
    module tree: ``.to()`` alone left them on the CPU). Not TorchScript: it cannot go to the meta
    device at all; ``.to()`` moves it to a GPU like any module."""
    config, net = fc2
    x = torch.rand(4, *SHAPE)
    save_checkpoint(tmp_path / "net.pt", net, config)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    exported = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(exported, tmp_path / "net.pt2")
    for spec in ("net.pt", "net.pt2", "fc2:32=weights.pt"):
        name, _, file = spec.rpartition("=")
        path = f"{name}={tmp_path / file}" if name else str(tmp_path / file)
        target = load_target(path, image_shape=SHAPE, num_classes=10, device="meta", trust_code=True)
        assert target.model(x.to("meta")).device.type == "meta", spec


def test_binary_tasks_take_one_or_two_logits(tmp_path):
    for outputs in (1, 2):
        config = model_config("fc1", SHAPE, outputs, width=8)
        save_checkpoint(tmp_path / f"o{outputs}.pt", build_model(config), config)
        assert _load(tmp_path / f"o{outputs}.pt", classes=2).model is not None
    with pytest.raises(TargetError, match=r"needs \(2, 3\) logits"):
        _load(tmp_path / "o2.pt", classes=3)
    for outputs in (1, 2):  # a state dict too (two-layer writes one-logit nets for binary tasks)
        torch.save(build_model(model_config("two-layer", SHAPE, outputs, width=16)).state_dict(), tmp_path / "w.pt")
        target = _load(f"two-layer:16={tmp_path / 'w.pt'}", classes=2)
        assert target.description["num_classes"] == outputs
    with pytest.raises(TargetError, match="does not fit the two-layer model: size mismatch for "):
        _load(f"two-layer:16={tmp_path / 'w.pt'}", classes=3)
    with pytest.raises(TargetError, match=r"model \(tried with 2 outputs and with 1\): size mismatch for "):
        _load(f"two-layer:32={tmp_path / 'w.pt'}", classes=2)


def test_every_refusal_names_the_nets_role_once(tmp_path):
    missing = tmp_path / "missing.pt"
    for role in ("target", "--source"):
        for spec in (missing, f"fc2:32={missing}", f"nonet={missing}"):
            with pytest.raises(TargetError) as error:
                load_target(str(spec), image_shape=SHAPE, num_classes=10, role=role)
            message = str(error.value)
            assert message.startswith(f"{role} ") and not message.startswith(f"{role} target"), message


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.pt", "does not exist"),
        (lambda d: d, "is a folder, not a model file"),
        (lambda d: f"nosuchmodel={_state(d)}", "unknown model 'nosuchmodel'"),
        (lambda d: _write(d / "junk.pt", b"not a model"), "loads only with --trust-model-code"),
        (lambda d: _script(d, (1, 8, 8)), "loads only with --trust-model-code"),
        (lambda d: _checkpoint(d, (1, 28, 28)), "takes images of shape (1, 28, 28), the data has (1, 8, 8)"),
        # what does not fit, not load_state_dict's heading alone (the message ended at its colon)
        (lambda d: f"fc2:64={_state(d)}", "does not fit the fc2 model: size mismatch for "),
        (lambda d: f"fc2:x={_state(d)}", "must be a whole number"),
        (lambda d: "fc2=", "fc2=: no weights file after '='"),  # it said "target . is a folder"
    ],
)
def test_bad_targets_are_refused_in_one_line(tmp_path, make, message):
    with pytest.raises(TargetError) as error:
        _load(make(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_damaged_checkpoint_of_ours_is_not_taken_for_a_code_file(tmp_path, fc2):
    """A checkpoint with NaN weights is ours: the refusal names the tensor, and neither suggests
    --trust-model-code nor, with it, tries the file as TorchScript."""
    config, net = fc2
    with torch.no_grad():
        next(net.parameters())[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", net, config)
    for trust_code in (False, True):
        with pytest.raises(TargetError) as error:
            _load(tmp_path / "nan.pt", trust_code=trust_code)
        message = str(error.value)
        assert message.endswith("holds NaN or infinite values") and "torchscript" not in message.lower(), message
        assert "trust-model-code" not in message and "\n" not in message


def test_an_exported_program_of_a_fixed_batch_is_refused_before_it_runs(tmp_path, fc2):
    """Its graph asserts the batch size: the check's batch of 2 could pass and an attack's
    batch of 500 fail mid-run with an AssertionError."""
    _, net = fc2
    for batch in (2, 4):
        torch.export.save(torch.export.export(net, (torch.rand(batch, *SHAPE),)), tmp_path / f"b{batch}.pt2")
        with pytest.raises(
            TargetError, match=f"exported for batches of exactly {batch} images; export it with a dynamic"
        ):
            _load(tmp_path / f"b{batch}.pt2", trust_code=True)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _write(d / "junk.pt", b"not a model"), "not a torchscript that loads"),
        (lambda d: _script(d, (1, 28, 28)), "does not take images of shape (1, 8, 8)"),
        # both were tracebacks from the first attack step, in transfer after its NTK machine was fitted
        (lambda d: _scripted(d, _IntegerLogits()), "returns torch.int64 logits; attacks need floating-point ones"),
        (lambda d: _scripted(d, _DetachedLogits()), "returns logits without a gradient to the images"),
    ],
)
def test_bad_trusted_files_are_refused_in_one_line(tmp_path, make, message):
    with pytest.raises(TargetError) as error:
        _load(make(tmp_path), trust_code=True)
    assert message in str(error.value) and "\n" not in str(error.value)


class _Payload:
    """Unpickling this creates the marker file (builtins.open in write mode): the only effect."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_pt2(folder, marker):
    """A real exported program whose sample-input blob is a pickle that creates ``marker``:
    torch.export.load falls back to a full unpickle of such a blob."""
    import io
    import zipfile

    net = build_model(model_config("fc1", SHAPE, 10, width=4)).eval()
    torch.export.save(torch.export.export(net, (torch.rand(2, *SHAPE),)), folder / "good.pt2")
    blob = io.BytesIO()
    torch.save((_Payload(marker),), blob)
    path = folder / "evil.pt2"
    with zipfile.ZipFile(folder / "good.pt2") as good, zipfile.ZipFile(path, "w") as evil:
        for item in good.infolist():
            hostile = item.filename.endswith("sample_inputs/model.pt")
            evil.writestr(item, blob.getvalue() if hostile else good.read(item.filename))
    return path


def test_a_hostile_pt2_never_runs_without_trust(tmp_path):
    marker = tmp_path / "payload-ran"
    path = _hostile_pt2(tmp_path, marker)
    with pytest.raises(TargetError, match="loads only with --trust-model-code"):
        _load(path)
    with pytest.raises(TargetError, match="not a state dict that loads safely"):
        _load(f"fc2={path}")  # as a state dict: torch.load(weights_only=True) never unpickles code
    assert not marker.exists()
    # the same file, trusted, is what torch.export.load makes of it: the payload runs (which is
    # why trusting is the user's explicit decision)
    with pytest.raises(TargetError):
        _load(path, trust_code=True)
    assert marker.exists()


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


class _IntegerLogits(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1)[:, :10] * 10).long()


class _DetachedLogits(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10].detach()


def _scripted(folder, net):
    path = folder / "scripted.pt"
    torch.jit.script(net).save(str(path))
    return path


def _state(folder):
    path = folder / "weights.pt"
    torch.save(build_model(model_config("fc2", SHAPE, 10, width=32)).state_dict(), path)
    return path


class _Flat(torch.nn.Module):
    """A net whose outputs are one number per image, (B,): no logits, so no width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(1)


def test_outputs_without_a_width_name_no_trained_classes():
    """A refusal of outputs that are not (B, C) logits says nothing of the classes the net was
    trained on: there is no width to compare them with. A width of -1 was read as one output,
    hence two classes, and a checkpoint of a binary task was said to be trained on them."""
    from ntkrobust.bridge.targets import Target, _check_outputs

    target = Target("flat", _Flat(), {"path": "flat.pt"}, class_names=("3", "8"))
    with pytest.raises(TargetError) as error:
        _check_outputs(target, SHAPE, 10, "cpu")
    assert str(error.value) == "flat.pt returns (2,) for 2 images; the task needs (2, 10) logits"
