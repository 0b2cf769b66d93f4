"""``studies.transfer.run(settings)``: black-box NTK and eNTK-surrogate attacks against trained nets
(the two-layer nets of ``conftest.two_layer_nets``, TorchScript, a training run's epochs), the
transfer matrix and τ, the files its result saves, its summary, and the settings it refuses before
any compute."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, ThreatSettings, train, transfer
from ntkrobust.studies.transfer import TransferSettings

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

NO_COMPUTE = (
    "ntkrobust.studies._common.MachineSettings.fit",
    "ntkrobust.bridge.surrogate.fit_empirical_kernel_machine",
    "ntkrobust.bridge.transfer.evaluate_target",
)
EPS = ThreatSettings(eps=0.2)


@pytest.fixture(scope="module")
def matrix(two_layer_nets, binary_task, tmp_path_factory):
    """A checkpoint and a TorchScript net attacked by fc1 and two-layer NTK machines, an fc1 eNTK
    surrogate and a second checkpoint as a source only: (result, saved folder)."""
    import torch

    from ntkrobust.bridge.models import build_model, model_config

    folder = tmp_path_factory.mktemp("transfer")
    net = build_model(model_config("fc1", (1, 8, 8), 2, width=16, seed=0)).eval()
    torch.jit.save(torch.jit.trace(net, torch.rand(2, 1, 8, 8)), folder / "mine.ts")
    nets = two_layer_nets[1]
    settings = TransferSettings(
        target=(str(nets / "net_w300_s0.pt"), str(folder / "mine.ts")),
        source=(str(nets / "net_w300_s1.pt"),),  # a source only: its examples attack, it is not attacked
        data=binary_task,
        kernel_arch=("fc1", "two-layer"),
        surrogate=("fc1:32",),
        surrogate_n=30,
        threat=EPS,
        trust_model_code=True,  # the TorchScript net is the test's own
    )
    result = transfer.run(settings)
    return result, result.save(folder / "out")


def test_the_matrix_for_checkpoints_torchscript_and_surrogates(matrix):
    record = matrix[0].record
    assert [t["name"] for t in record["targets"]] == ["net_w300_s0", "mine"]
    first = record["targets"][0]
    assert set(first["ntk_attack_accuracy"]) == {"fc1", "two-layer"}
    assert set(first["surrogate_attack_accuracy"]) == {"fc1:32"}
    assert first["transfer_accuracy"]["net_w300_s0"] == first["white_box_accuracy"]
    assert first["transferability"]["net_w300_s0"] == pytest.approx(1.0)
    table = record["matrix"]
    assert table["columns"][:3] == ["clean", "random sign", "own white-box"]
    assert np.asarray(table["accuracy"]).shape == (2, 3 + 2 + 1 + 3) and table["columns"][-1] == "net_w300_s1"
    assert [s["kind"] for s in record["sources"]] == ["ntk", "ntk", "entk-surrogate", *["white-box"] * 3]
    assert [s["is_target"] for s in record["sources"][3:]] == [True, True, False]
    assert record["config"]["kernel_archs"] == ["fc1", "two-layer"] and record["config"]["kernel_n"] == 60
    assert record["config"]["attack"]["eps"] == 0.2 and record["config"]["surrogate_n"] == 30


def test_save_writes_the_examples_and_the_heatmap(matrix, assert_real_png):
    out = matrix[1]
    assert sorted(p.name for p in out.iterdir()) == ["examples.npz", "results.json", "transfer.png"]
    assert json.loads((out / "results.json").read_text())["matrix"]["rows"] == ["net_w300_s0", "mine"]
    with np.load(out / "examples.npz", allow_pickle=False) as arrays:
        assert {"ntk_fc1", "ntk_two_layer", "entk_fc1_32", "random_sign", "x", "y"} == set(arrays.files)
        assert arrays["ntk_fc1"].shape == arrays["x"].shape == (40, 1, 8, 8)
    assert_real_png(out / "transfer.png")


def test_summary_has_a_line_per_target(matrix):
    result = matrix[0]
    lines = result.summary().splitlines()
    assert [line.split(":")[0] for line in lines] == ["net_w300_s0", "mine"]
    first = result.record["targets"][0]
    assert lines[0].startswith(f"net_w300_s0: clean {first['clean_accuracy']:.3f}, own fgsm ")
    assert "random sign" in lines[0] and "NTK fc1 " in lines[0] and "eNTK fc1:32 " in lines[0]
    tau = {n: f"{v:.2f}" if np.isfinite(v) else "undefined" for n, v in first["transferability"].items()}  # headline
    assert lines[0].endswith(
        f"; tau NTK fc1 {tau['NTK fc1']}, NTK two-layer {tau['NTK two-layer']}, eNTK fc1:32 {tau['eNTK fc1:32']}"
    )


def test_transferability_against_the_epochs_of_a_run(binary_task, tmp_path, assert_real_png):
    run = tmp_path / "run"
    train.run(
        train.TrainSettings(
            out=run, data=binary_task, model="fc1", width=32, epochs=2, lr=0.1, batch_size=30,
            track_kernel=0, eval_n=10, eval_pgd_steps=1,
        )
    )  # fmt: skip
    checkpoints = run / "checkpoints"
    settings = TransferSettings(
        target=(str(checkpoints / "epoch_002.pt"),),
        source=(str(checkpoints / "epoch_000.pt"), str(checkpoints / "epoch_001.pt")),
        data=binary_task,
        kernel_arch=("fc1",),
        method="pgd",
        threat=ThreatSettings(eps=0.2, steps=2, step=0.1),
    )
    result = transfer.run(settings)
    assert "PGD eps 0.2 (linf, 2 steps of 0.1); accuracy" in result.figures["subtitle"]
    tau = result.record["targets"][0]["transferability"]
    assert set(tau) == {"NTK fc1", "run epoch 2", "run epoch 0", "run epoch 1"}
    assert [name for name, _, _ in result.figures["curves"]] == ["run"]
    assert_real_png(result.save(tmp_path / "transfer") / "transferability.png")


def _npz(path, side):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(20, 1, side, side)).astype(np.float32)
    np.savez(path, x_train=x, y_train=np.arange(20) % 2, x_test=x, y_test=np.arange(20) % 2)
    return DataSettings(data=str(path))


def test_refusals(two_layer_nets, binary_task, tmp_path, refuses):
    import torch

    from ntkrobust.bridge.models import build_model, model_config

    def check(message, **fields):
        settings = TransferSettings(**{"data": binary_task, "target": (ckpt,), **fields})
        refuses(transfer, settings, message, compute=NO_COMPUTE)

    ckpt = str(two_layer_nets[1] / "net_w300_s0.pt")
    (tmp_path / "junk.ts").write_bytes(b"PK\x03\x04 not a zip")
    small = _npz(tmp_path / "small.npz", 3)
    weights = f"{tmp_path / 'w.pt'}"
    check("loads only with --trust-model-code", target=(str(tmp_path / "junk.ts"),))
    check("not a torchscript that loads", target=(str(tmp_path / "junk.ts"),), trust_model_code=True)
    check("is a folder, not a model file", target=(str(tmp_path),))
    check(f"--source {tmp_path} is a folder, not a model file", source=(str(tmp_path),))  # named as its flag
    check(f"target {tmp_path} is a folder, not a model file", target=(str(tmp_path),), source=(ckpt,))
    check("unknown model 'resnet50'", target=(f"resnet50={weights}",))
    check("takes images of shape (1, 8, 8), the data has (1, 3, 3)", data=small)
    check("does not exist", data=small, surrogate=("fc1",), surrogate_n=10, target=(f"fc1={weights}",))
    check("--surrogate-n 500 exceeds the 20 training", data=small, surrogate=("fc1",), target=(f"fc1={weights}",))
    # the surrogates are checked before the targets load: before the kernel machines' fit, too
    check("mnist-cnn needs images at least 4x4", data=small, surrogate=("mnist-cnn",), target=(f"fc1={weights}",))
    torch.save(build_model(model_config("fc1", (1, 3, 3), 2, width=8)).state_dict(), weights)
    check("mnist-cnn needs images at least 4x4", data=small, surrogate=("mnist-cnn",), target=(f"fc1:8={weights}",))
    check("repeats", kernel_arch=("fc1", "fc1"))
    check("exceeds the [0, 1] pixel range", threat=ThreatSettings(eps=3.0))
    check("--surrogate-ridge must be", surrogate_ridge=-1.0)
    last_seed = dataclasses.replace(binary_task, seed=2**63 - 1)
    check("choose --seed 9223372036854775806 or less", data=last_seed, surrogate=("fc1",), surrogate_nets=2)


def test_each_black_box_source_says_when_its_examples_are_made(two_layer_nets, binary_task, caplog):
    """A line per source as it finishes: four sources of about a minute each (MNIST, 1,000 test
    points) printed nothing for three minutes, then one line for all of them."""
    import logging

    settings = TransferSettings(
        target=(str(two_layer_nets[1] / "net_w300_s0.pt"),),
        data=binary_task,
        kernel_arch=("fc1",),
        surrogate=("fc1:8",),
        surrogate_n=20,
        threat=EPS,
    )
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        transfer.run(settings)
    lines = [record.getMessage() for record in caplog.records]
    made = [line for line in lines if "black-box examples" in line]
    assert [line.split(":")[0] for line in made[:2]] == ["NTK fc1", "eNTK fc1"]
    assert "the machine's robust accuracy" in made[0] and made[2].startswith("black-box examples of 2 source(s) (")
