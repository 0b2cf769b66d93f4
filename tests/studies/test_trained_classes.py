"""A checkpoint's net is read under the classes it was trained on: ``train`` stores the run's
history, class names in output order, in every checkpoint (``bridge.checkpoint.trained_classes``),
and every command that reads a checkpoint checks them against the data's task
(``studies._common.check_task``): the same classes in another order are refused (each output
would be read as the other class), other classes are a warning kept in the results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntkrobust import cli
from ntkrobust.bridge.checkpoint import save_checkpoint, trained_classes
from ntkrobust.bridge.models import build_model, model_config


def _checkpoint(path: Path, **extra: object) -> Path:
    config = model_config("fc1", (1, 8, 8), 2, width=8)
    save_checkpoint(path, build_model(config), config, **extra)
    return path


@pytest.fixture
def net_of_3_and_8(tmp_path: Path) -> Path:
    return _checkpoint(tmp_path / "net.pt", epoch=1, history={"class_names": ["3", "8"], "epochs": []})


def _evaluate(net: Path, classes: str, out: Path) -> int:
    return cli.main(
        ["evaluate", str(net), "--data", "digits", "--classes", classes, "--n-test", "20", "--attacks", "pgd-20",
         "--out", str(out), "--quiet"]
    )  # fmt: skip


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ntkrobust: error: "), err
    return err


def test_the_classes_in_another_order_are_refused_by_every_command_that_reads_a_checkpoint(
    net_of_3_and_8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = str(net_of_3_and_8)
    said = "was trained on the classes (3, 8) in that order, and the data's task orders them (8, 3; its output 0 is 3"
    commands = {
        "evaluate": ["evaluate", net, "--attacks", "pgd-20"],
        "entk": ["entk", "--checkpoint", net],
        "transfer": ["transfer", "--target", net],
        "train --linearize-from": ["train", "--linearize-from", net, "--epochs", "1", "--track-kernel", "0"],
    }
    for name, argv in commands.items():
        out = tmp_path / name.replace(" ", "_")
        assert cli.main([*argv, "--data", "digits", "--classes", "8,3", "--out", str(out), "--quiet"]) == 2, name
        assert said in _one_error(capsys), name
        assert not out.exists(), name  # refused before anything is written


def test_other_classes_are_a_warning_kept_in_the_results_and_its_own_are_not(
    net_of_3_and_8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _evaluate(net_of_3_and_8, "1,7", tmp_path / "other") == 0
    warned = "was trained on the classes (3, 8), not the data's (1, 7): its numbers are those of a net of another task"
    assert warned in capsys.readouterr().err
    assert any(warned in text for text in json.loads((tmp_path / "other" / "results.json").read_text())["warnings"])
    assert _evaluate(net_of_3_and_8, "3,8", tmp_path / "own") == 0
    assert "trained on the classes" not in capsys.readouterr().err
    record = json.loads((tmp_path / "own" / "results.json").read_text())
    assert not any("trained on the classes" in text for text in record["warnings"])


def test_a_checkpoint_that_records_no_classes_is_read_as_the_data_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A two-layer net's checkpoint, or one written by hand, records no history: nothing to check."""
    assert _evaluate(_checkpoint(tmp_path / "bare.pt"), "8,3", tmp_path / "out") == 0
    assert "trained on the classes" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("payload", "classes"),
    [
        ({"history": {"class_names": ["cat", "dog"]}}, ("cat", "dog")),
        ({}, None),
        ({"history": "not a history"}, None),
        ({"history": {"class_names": []}}, None),
        ({"history": {"class_names": ["cat", 3]}}, None),
        ({"history": {"class_names": "cat,dog"}}, None),
        ({"history": {"class_names": ["cat", "dog\nerror: forged"]}}, None),  # not a name train writes
        ({"history": {"class_names": ["cat", "d" * 121]}}, None),
    ],
)
def test_trained_classes_reads_only_a_list_of_names(payload: dict, classes: tuple[str, ...] | None) -> None:
    assert trained_classes(payload) == classes


def test_many_classes_are_named_in_one_short_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A net of the ten digits in reverse order, read under the task's order: the message names the
    first ten and the first output that differs, on one line."""
    from ntkrobust.studies._common import check_task
    from ntkrobust.studies._errors import StudyError

    class Data:
        classes = tuple(range(12))

        @staticmethod
        def class_name(c: int) -> str:
            return f"class {c}"

    trained = [f"class {c}" for c in reversed(range(12))]
    with pytest.raises(StudyError) as refused:
        check_task(trained, Data(), "net x", [])
    said = str(refused.value)
    assert "\n" not in said and "... (12 classes)" in said and "its output 0 is class 11, not class 0" in said
    notes: list[str] = []
    with pytest.warns(UserWarning):
        check_task([f"other {c}" for c in range(12)], Data(), "net x", notes)
    assert len(notes) == 1 and notes[0].count("... (12 classes)") == 2
    check_task([f"other {c}" for c in range(3)], Data(), "net x", notes)  # another count: no record of these outputs
    assert len(notes) == 1
