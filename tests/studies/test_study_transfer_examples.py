"""``transfer --examples FILE``: examples saved by an earlier run attack the targets as black-box
sources. The independent route: the NTK machine's examples saved by ``attack`` and those that
``transfer`` crafts itself from the same data, seed and ε are the same arrays, so their columns
must agree to the digit; a file that does not fit the run is refused before any compute."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from ntkrobust.studies import ThreatSettings, attack, transfer
from ntkrobust.studies.attack import AttackSettings
from ntkrobust.studies.transfer import TransferSettings

EPS = ThreatSettings(eps=0.2)
NO_COMPUTE = (
    "ntkrobust.studies._common.MachineSettings.fit",
    "ntkrobust.bridge.transfer.evaluate_target",
    "ntkrobust.bridge.transfer.white_box_examples",
)


@pytest.fixture(scope="module")
def saved(two_layer_nets, binary_task, tmp_path_factory):
    """``attack``'s fc1 NTK examples saved, and a transfer run that crafts the same ones itself
    beside reading them: (attack folder, transfer result, transfer folder)."""
    folder = tmp_path_factory.mktemp("saved")
    made = attack.run(AttackSettings(data=binary_task, arch="fc1", threat=EPS)).save(folder / "fc1-attack")
    nets = two_layer_nets[1]
    settings = TransferSettings(
        target=(str(nets / "net_w300_s0.pt"), str(nets / "net_w300_s1.pt")),
        data=binary_task,
        kernel_arch=("fc1",),
        examples=(str(made / "adversarial.npz"),),
        threat=EPS,
    )
    result = transfer.run(settings)
    return made, result, result.save(folder / "transfer")


def test_attack_files_examples_give_the_column_of_the_same_ntk_machine(saved):
    made, result, out = saved
    for row in result.record["targets"]:
        assert row["file_attack_accuracy"] == {"fc1-attack": row["ntk_attack_accuracy"]["fc1"]}
        assert row["transferability"]["file fc1-attack"] == row["transferability"]["NTK fc1"]
    with np.load(made / "adversarial.npz") as file, np.load(out / "examples.npz") as written:
        np.testing.assert_array_equal(file["x_adv"], written["ntk_fc1"])  # the same examples, to the bit
        np.testing.assert_array_equal(written["file_fc1_attack"], written["ntk_fc1"])
    source = result.record["sources"][1]
    digest = hashlib.sha256((made / "adversarial.npz").read_bytes()).hexdigest()
    assert source == {
        "name": "file fc1-attack",
        "kind": "file",
        "file": str(made / "adversarial.npz"),
        "array": "x_adv",
        "sha256": digest,
        "linf_max": pytest.approx(0.2, abs=1e-6),
        "l2_mean": source["l2_mean"],
        "made_by": {"command": "attack", "config": json.loads((made / "results.json").read_text())["config"]},
    }
    assert source["made_by"]["config"]["method"] == "fgsm" and source["made_by"]["config"]["arch"] == "fc1"
    assert result.record["config"]["examples"] == [str(made / "adversarial.npz")]
    assert result.record["matrix"]["columns"][3:5] == ["NTK fc1", "file fc1-attack"]
    assert "file fc1-attack" in result.summary()
    assert result.figures["subtitle"].endswith(
        "FGSM eps 0.2 (linf); accuracy = share still correct; 'file' columns: examples read from files, made by "
        "their own attacks within this eps"
    )


def test_a_transfer_runs_examples_file_feeds_another_run_without_the_default_machine(
    saved, two_layer_nets, binary_task
):
    _, first, out = saved
    settings = TransferSettings(
        target=(str(two_layer_nets[1] / "net_w300_s0.pt"),),
        data=binary_task,
        examples=(str(out / "examples.npz"),),
        threat=EPS,
    )
    record = transfer.run(settings).record
    assert record["config"]["kernel_archs"] == []  # no fc2 machine unless asked for
    row, before = record["targets"][0], first.record["targets"][0]
    assert row["file_attack_accuracy"] == {
        "transfer ntk_fc1": before["ntk_attack_accuracy"]["fc1"],
        "transfer file_fc1_attack": before["file_attack_accuracy"]["fc1-attack"],
    }
    assert [s["array"] for s in record["sources"] if s["kind"] == "file"] == ["ntk_fc1", "file_fc1_attack"]
    assert {s["made_by"]["command"] for s in record["sources"] if s["kind"] == "file"} == {"transfer"}


def test_names_that_repeat_are_numbered(saved, two_layer_nets, binary_task, tmp_path):
    made = saved[0]
    copy = tmp_path / "fc1-attack"
    copy.mkdir()
    shutil.copy(made / "adversarial.npz", copy / "adversarial.npz")
    settings = TransferSettings(
        target=(str(two_layer_nets[1] / "net_w300_s0.pt"),),
        data=binary_task,
        examples=(str(made / "adversarial.npz"), str(copy / "adversarial.npz")),
        threat=EPS,
    )
    row = transfer.run(settings).record["targets"][0]
    assert list(row["file_attack_accuracy"]) == ["fc1-attack", "fc1-attack (2)"]
    assert len(set(row["file_attack_accuracy"].values())) == 1


def _file(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return str(path)


def test_refusals(saved, two_layer_nets, binary_task, tmp_path, refuses):
    with np.load(saved[0] / "adversarial.npz") as made:
        x, y, x_adv = made["x"], made["y"], made["x_adv"]
    target = (str(two_layer_nets[1] / "net_w300_s0.pt"),)

    def refused(examples, message, **changes):
        settings = TransferSettings(target=target, data=binary_task, examples=examples, **{"threat": EPS, **changes})
        return refuses(transfer, settings, message, NO_COMPUTE)

    good = _file(tmp_path / "good.npz", x=x, y=y, x_adv=x_adv)
    refused((str(tmp_path / "none.npz"),), f"--examples {tmp_path / 'none.npz'} does not exist")
    refused((str(tmp_path),), f"--examples {tmp_path} is a folder")
    refused((good, str(tmp_path / "." / "good.npz")), "is named twice (also as")
    (tmp_path / "text.npz").write_text("not an archive")
    refused((str(tmp_path / "text.npz"),), "text.npz: not an .npz (zip) archive")
    pickled = tmp_path / "pickled.npz"
    with open(pickled, "wb") as f:
        np.savez(f, x=x, y=y, x_adv=np.array([{"a": 1}], dtype=object))
    refused((str(pickled),), "pickled Python objects")
    refused((_file(tmp_path / "no_y.npz", x=x, x_adv=x_adv),), "lacks array(s) y")
    refused((_file(tmp_path / "bare.npz", x=x, y=y),), "holds no examples, only x, y")
    refused(
        (_file(tmp_path / "fewer.npz", x=x[:30], y=y[:30], x_adv=x_adv[:30]),),
        "its x holds points of shape (30, 1, 8, 8), this run's test points (40, 1, 8, 8): give the data flags",
    )
    swapped = np.arange(len(x))
    swapped[[3, 5]] = [5, 3]
    refused(
        (_file(tmp_path / "order.npz", x=x[swapped], y=y[swapped], x_adv=x_adv),),
        "its x differs from this run's test points at 2 of 40 points (the first at 3)",
    )
    other = y.copy()
    other[7] = 9
    refused(
        (_file(tmp_path / "labels.npz", x=x, y=other, x_adv=x_adv),),
        "its y differs from this run's test labels at 1 of 40 points (the first at 7)",
    )
    refused((_file(tmp_path / "float_y.npz", x=x, y=y.astype(float), x_adv=x_adv),), "its y is float64 of shape (40,)")
    refused(
        (_file(tmp_path / "shape.npz", x=x, y=y, x_adv=x_adv[:, :, :4]),), "its array x_adv has shape (40, 1, 4, 8)"
    )
    refused(
        (_file(tmp_path / "ints.npz", x=x, y=y, x_adv=(x_adv * 255).astype(np.uint8)),), "its array x_adv holds uint8"
    )
    nan = x_adv.copy()
    nan[0, 0, 0, 0] = np.nan
    refused((_file(tmp_path / "nan.npz", x=x, y=y, x_adv=nan),), "holds values outside [0, 1]")
    refused((_file(tmp_path / "high.npz", x=x, y=y, x_adv=x_adv + 2),), "holds values outside [0, 1]")
    refused(
        (good,),
        "its array x_adv moves a point 0.2 from it in linf, beyond this run's --eps 0.1",
        threat=ThreatSettings(eps=0.1),
    )
    far = np.clip(x + 0.2 + 1e-4, 0, 1).astype(np.float32)
    refused((_file(tmp_path / "far.npz", x=x, y=y, x_adv=far),), "its array x_adv moves a point 0.2001 from it in linf")


def test_examples_within_the_slack_of_eps_are_taken(saved, two_layer_nets, binary_task, tmp_path):
    """The attacks' own contract allows ``EPS_SLACK`` beyond ε (float32 rounding of the projection)."""
    with np.load(saved[0] / "adversarial.npz") as made:
        x, y = made["x"], made["y"]
    edge = np.clip(x.astype(np.float64) + 0.2 + 5e-7, 0, 1)  # float64: the check reads x's dtype
    settings = TransferSettings(
        target=(str(two_layer_nets[1] / "net_w300_s0.pt"),),
        data=binary_task,
        examples=(_file(tmp_path / "edge.npz", x=x, y=y, x_adv=edge),),
        threat=EPS,
    )
    record = transfer.run(settings).record
    assert record["sources"][0]["linf_max"] <= 0.2 + 1e-6


def test_the_examples_flag_reaches_the_command_line(saved, two_layer_nets, tmp_path):
    from ntkrobust.cli import main

    argv = [
        "transfer", "--classes", "3,8", "--n-train", "60", "--n-test", "40", "--eps", "0.2",
        "--target", str(two_layer_nets[1] / "net_w300_s0.pt"), "--examples", str(saved[0] / "adversarial.npz"),
        "--out", str(tmp_path / "out"), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(record["targets"][0]["file_attack_accuracy"]) == ["fc1-attack"]


@pytest.mark.parametrize(
    "record",
    [None, "{not json", '["attack"]', '{"command": "attack"}', '{"command": 3, "config": {}}', "fifo", "large"],
)
def test_a_file_without_a_record_of_this_tool_beside_it_has_its_path_and_digest_alone(
    saved, two_layer_nets, binary_task, tmp_path, record
):
    import os

    folder = tmp_path / "elsewhere"
    folder.mkdir()
    shutil.copy(saved[0] / "adversarial.npz", folder / "adversarial.npz")
    beside = folder / "results.json"
    if record == "fifo":  # would block a reader that opened it
        os.mkfifo(beside)
    elif record == "large":  # a record of this tool's form, but over the bound read for provenance
        beside.write_text(json.dumps({"command": "attack", "config": {"pad": "x" * (1 << 20)}}))
    elif record is not None:
        beside.write_text(record)
    settings = TransferSettings(
        target=(str(two_layer_nets[1] / "net_w300_s0.pt"),),
        data=binary_task,
        examples=(str(folder / "adversarial.npz"),),
        threat=EPS,
    )
    source = transfer.run(settings).record["sources"][0]
    assert source["kind"] == "file" and "made_by" not in source
    assert source["sha256"] == hashlib.sha256((folder / "adversarial.npz").read_bytes()).hexdigest()
