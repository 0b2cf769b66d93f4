"""Hostile or corrupt run folders for ``dynamics``: each is one ``RunError`` / ``StudyError`` line
before any compute, and no file outside the folders the user named is read (the tracebacks and
silent acceptances a review found: kernels of strings, complex numbers or booleans, a history
nested 100000 deep or holding a 5001-digit integer, kernel files named ``../../etc/passwd``, and
for ``--eigenvectors``: more than the probe holds, a probe of another shape, probe pixels outside
[0, 1], a diverged network)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.bridge.run_groups import load_run_groups, seed_folders
from ntkrobust.bridge.runs import RunError, load_run, probe_images

N, C, SHAPE = 8, 2, (1, 4, 4)
STEPS = (0, 5)  # tracked steps, 5 per epoch


def make_run(folder: Path, *, checkpoints: bool = False) -> Path:
    """A tiny run folder in the format of ``train --out RUN``: two epochs of records, a probe of
    N points, two tracked kernels, the fc2 net the history records, and with ``checkpoints`` that
    net at epochs 0 and 1."""
    from ntkrobust.bridge.models import model_config

    config = model_config("fc2", SHAPE, C, width=8)
    rng = np.random.default_rng(0)
    (folder / "kernels").mkdir(parents=True)
    targets = np.arange(N) % C
    np.savez(
        folder / "kernels" / "probe.npz",
        x=rng.uniform(0, 1, (N, *SHAPE)).astype(np.float32),
        y=targets,
        targets=targets,
    )
    records = []
    for step in STEPS:
        features = rng.normal(size=(N, 3))
        name = f"kernels/step_{step:07d}.npz"
        np.savez(folder / name, clean=features @ features.T, adversarial=features @ features.T / 2)
        records.append({"step": step, "epoch": step / 5, "file": name})
    epochs = [{"epoch": e, "mode": "standard", "accuracy": {"running": {"test_clean": 0.5}}} for e in (0, 1)]
    history = {
        "label": "tiny",
        "config": {"mode": "standard", "model": config.to_dict()},
        "steps_per_epoch": 5,
        "epochs": epochs,
        "kernels": records,
    }
    (folder / "history.json").write_text(json.dumps(history))
    if checkpoints:
        from ntkrobust.bridge.checkpoint import save_checkpoint
        from ntkrobust.bridge.models import build_model

        for epoch in (0, 1):
            save_checkpoint(folder / "checkpoints" / f"epoch_{epoch:03d}.pt", build_model(config), config, epoch=epoch)
    return folder


def refused(path: Path, message: str) -> str:
    with pytest.raises(RunError, match=message) as error:
        load_run(path)
    assert "\n" not in str(error.value)
    return str(error.value)


def edit_history(run: Path, change) -> None:
    history = json.loads((run / "history.json").read_text())
    change(history)
    (run / "history.json").write_text(json.dumps(history))


# -- kernels that are not real numbers ----------------------------------------------------------


@pytest.mark.parametrize(
    "kernel, dtype",
    [
        (np.full((N, N), "a"), "<U1"),  # a TypeError from isfinite before the fix
        (np.eye(N) + 1j, "complex128"),  # its imaginary part silently dropped before the fix
        (np.eye(N) > 0, "bool"),  # accepted as 0/1 before the fix
    ],
)
def test_a_kernel_of_no_real_numbers_is_refused(tmp_path, kernel, dtype):
    run = make_run(tmp_path / "run")
    np.savez(run / "kernels" / "step_0000005.npz", clean=kernel)
    refused(run, rf"step_0000005\.npz: clean kernel has dtype {dtype}; expected real numbers")
    load_run(run, kernels=False)  # the history alone still reads


def test_a_baseline_with_a_string_kernel_is_one_line(tmp_path, assert_refused):
    run, baseline = make_run(tmp_path / "run"), make_run(tmp_path / "baseline")
    np.savez(baseline / "kernels" / "step_0000005.npz", clean=np.full((N, N), "a"))
    assert_refused(["dynamics", run, "--baseline", baseline], "clean kernel has dtype <U1")


# -- histories Python's JSON parser gives up on -------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100000 + "]" * 100000, r"unreadable JSON \(nested too deeply\)"),  # RecursionError before
        ('{"epochs": [], "n": ' + "7" * 5001 + "}", r"unreadable JSON \(Exceeds the limit \(4300 digits\)"),
    ],
)
def test_a_history_python_cannot_parse_is_one_line(tmp_path, text, message):
    run = make_run(tmp_path / "run")
    (run / "history.json").write_text(text)
    assert "set_int_max_str_digits" not in refused(run, message)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b'{"a" 1}', "unreadable JSON (Expecting ':' delimiter at line 1)"),
        (b"{\n\n  nan", "unreadable JSON (Expecting property name enclosed in double quotes at line 3)"),
        (b"[" * 100000, "unreadable JSON (nested too deeply)"),
        (
            b"1" * 5000,
            "unreadable JSON (Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits)",
        ),
        (b'{"a": "\xff"}', "not UTF-8 text"),
    ],
)
def test_every_reader_of_run_files_says_one_reason(tmp_path, content, reason):
    """``bridge.files.read_json``, which every reader of run and reproduction files shares: one
    line, no parser traceback, no advice to raise Python's limits."""
    from ntkrobust.bridge.files import JsonFileError, read_json

    path = tmp_path / "record.json"
    path.write_bytes(content)
    with pytest.raises(JsonFileError) as error:
        read_json(path)
    assert str(error.value) == reason
    with pytest.raises(JsonFileError, match="Is a directory"):
        read_json(tmp_path)
    assert read_json(_written(tmp_path / "ok.json", '{"a": [1, 2.5, null]}')) == {"a": [1, 2.5, None]}


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_seeds_listing_nested_too_deep_is_one_line(tmp_path):
    (tmp_path / "seeds.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(RunError, match=r"seeds\.json: unreadable JSON \(nested too deeply\)"):
        seed_folders(tmp_path)


# -- file names that lead out of the run folder -------------------------------------------------


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_a_kernel_file_outside_the_run_folder_is_never_read(tmp_path, where):
    run = make_run(tmp_path / "run")
    outside = tmp_path / "elsewhere.npz"  # a valid kernel: before the fix it was read as the run's
    np.savez(outside, clean=np.eye(N), adversarial=np.eye(N))
    name = "../elsewhere.npz" if where == "relative" else str(outside)
    edit_history(run, lambda history: history["kernels"][1].__setitem__("file", name))
    refused(run, re.escape(f"the kernel file of record 1, '{name}', lies outside this folder"))
    with pytest.raises(RunError, match="lies outside"):
        load_run(run, kernels=False)


def test_a_probe_linked_from_outside_the_run_folder_is_never_read(tmp_path):
    run, other = make_run(tmp_path / "run"), make_run(tmp_path / "other")
    (run / "kernels" / "probe.npz").unlink()
    os.symlink(other / "kernels" / "probe.npz", run / "kernels" / "probe.npz")
    refused(run, "the probe, 'kernels/probe.npz', lies outside this folder")
    with pytest.raises(RunError, match="lies outside"):
        probe_images(run)


def test_a_seed_folder_outside_the_seeds_folder_is_never_read(tmp_path):
    make_run(tmp_path / "elsewhere")
    (tmp_path / "seeds").mkdir()
    listing = {"runs": [{"seed": 0, "folder": "../elsewhere"}]}
    (tmp_path / "seeds" / "seeds.json").write_text(json.dumps(listing))
    with pytest.raises(RunError, match=r"the run folder of seed 0, '\.\./elsewhere', lies outside this folder"):
        load_run_groups([tmp_path / "seeds"])


# -- --eigenvectors: refused before the kernel trajectories are measured ------------------------

BEFORE_ANY_COMPUTE = ("ntkrobust.bridge.eigenvectors.ntk_eigenvectors", "ntkrobust.bridge.runs.dynamics_summary")


def eigenvectors(run: Path, top: int = 1):
    from ntkrobust.studies.dynamics import DynamicsSettings

    return DynamicsSettings(runs=(run,), eigenvectors=top, eigenvector_steps=1)


def test_more_eigenvectors_than_probe_points_are_refused(tmp_path, refuses):
    from ntkrobust.studies import dynamics

    run = make_run(tmp_path / "run", checkpoints=True)  # a ValueError of ntk_eigenvectors before the fix
    message = f"--eigenvectors 999: the probe of {run} has {N} points; ask for 1 to {N}"
    refuses(dynamics, eigenvectors(run, 999), message, compute=BEFORE_ANY_COMPUTE)


def test_a_probe_the_network_cannot_take_is_refused(tmp_path, refuses):
    from ntkrobust.studies import dynamics

    run = make_run(tmp_path / "run", checkpoints=True)
    with np.load(run / "kernels" / "probe.npz") as probe:
        arrays = dict(probe)
    np.savez(run / "kernels" / "probe.npz", **{**arrays, "x": arrays["x"][:, :, :2]})  # RuntimeError of torch before
    message = "probe images of shape (1, 2, 4), but the network epoch_000.pt takes (1, 4, 4)"
    refuses(dynamics, eigenvectors(run), message, compute=BEFORE_ANY_COMPUTE)


def test_probe_pixels_outside_the_unit_interval_are_refused(tmp_path, refuses):
    from ntkrobust.studies import dynamics

    run = make_run(tmp_path / "run", checkpoints=True)
    with np.load(run / "kernels" / "probe.npz") as probe:
        arrays = dict(probe)
    np.savez(run / "kernels" / "probe.npz", **{**arrays, "x": arrays["x"] * 7})  # pictured as if fine before
    refuses(dynamics, eigenvectors(run), "the probe images 'x' hold values in [0", compute=BEFORE_ANY_COMPUTE)
    with pytest.raises(RunError, match=r"not in \[0, 1\]"):
        probe_images(run)


def test_a_diverged_network_is_refused_before_any_eigenvector(tmp_path, refuses):
    import torch

    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.studies import dynamics

    run = make_run(tmp_path / "run", checkpoints=True)
    config = model_config("fc2", SHAPE, C, width=8)
    model = build_model(config)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_checkpoint(run / "checkpoints" / "epoch_001.pt", model, config, epoch=1)
    # before the fix: the initial network's eigenvectors computed, then a LinAlgError on the last
    refuses(dynamics, eigenvectors(run), "NaN", compute=BEFORE_ANY_COMPUTE)


def test_ntk_eigenvectors_of_a_diverged_network_name_the_cause():
    import torch

    from ntkrobust.bridge.eigenvectors import ntk_eigenvectors

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))  # NaN features: the last layer's gradients are NaN
    with pytest.raises(FloatingPointError, match=r"is not finite \(NaN or inf\)"):  # a LinAlgError before the fix
        ntk_eigenvectors(model, np.full((3, 1, 2, 2), 0.5, np.float32), output=0, top=1)


def test_check_kernel_files_reads_each_statistics_a_record_names(tmp_path: Path) -> None:
    """``train --resume``'s check (``check_kernel_files``): the kernels of a second BatchNorm
    statistics are read only where the record names them (``batch_statistics``)."""
    from ntkrobust.bridge.runs import check_kernel_files

    kernel = np.eye(N)
    broken = kernel.copy()
    broken[0, 1] = np.nan
    (tmp_path / "kernels").mkdir()
    np.savez(tmp_path / "kernels" / "step_0000000.npz", clean=kernel, adversarial=kernel, clean_batch=broken)
    record = {"step": 0, "file": "kernels/step_0000000.npz"}
    check_kernel_files(tmp_path, [record], N)  # the running statistics' kernels are sound
    with pytest.raises(RunError, match="clean_batch kernel contains NaN or inf"):
        check_kernel_files(tmp_path, [{**record, "batch_statistics": {"trace": 1.0}}], N)
    with pytest.raises(RunError, match="probe size mismatch"):
        check_kernel_files(tmp_path, [record], N + 1)
    with pytest.raises(RunError, match=r"missing kernel file kernels/step_0000005\.npz"):
        check_kernel_files(tmp_path, [record, {"step": 5, "file": "kernels/step_0000005.npz"}], N)
    with pytest.raises(RunError, match="lies outside this folder"):
        check_kernel_files(tmp_path, [{"step": 0, "file": "../elsewhere.npz"}], N)


def test_a_fifo_or_a_folder_for_a_runs_files_is_named_for_what_it_is(tmp_path):
    """A FIFO at history.json read as "no history.json", a folder at a kernel file as a "missing"
    one; each is named for what it is (``files.not_a_file``), and nothing of it is read."""
    run = make_run(tmp_path / "run")
    (run / "history.json").rename(run / "history.kept")
    os.mkfifo(run / "history.json")
    refused(run, re.escape(f"{run / 'history.json'} is not a regular file"))
    (run / "history.json").unlink()
    (run / "history.kept").rename(run / "history.json")
    (run / "kernels" / "step_0000005.npz").unlink()
    (run / "kernels" / "step_0000005.npz").mkdir()
    refused(run, r"kernel file kernels/step_0000005\.npz is a folder")


def test_more_class_names_than_the_net_has_outputs_are_refused(tmp_path):
    """A history naming 100,000 classes for a net of 10 kept ``dynamics`` busy for minutes."""
    run = make_run(tmp_path / "run")
    history = json.loads((run / "history.json").read_text())
    history["config"]["model"] = {"model": "fc2", "num_classes": C}
    for names, refused in ((["a", "b"], False), (["a", "b", "c"], True)):
        (run / "history.json").write_text(json.dumps({**history, "class_names": names}))
        if refused:
            with pytest.raises(RunError, match=r"history.json: 3 class names for a net of 2 outputs"):
                load_run(run)
        else:
            assert load_run(run).class_names == names


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("label", "x" * 100_000, "is 100000 characters long, more than the 120"),
        ("label", "x\n\x1b[31mEVIL\x1b[0m", "is not printable text on one line"),
        ("class_names", ["a", "b\x1b[31m"], "is not printable text on one line"),
        ("class_names", ["a", "b" * 121], "is 121 characters long"),
    ],
    ids=["long label", "escape sequence in the label", "escape sequence in a class name", "long class name"],
)
def test_labels_and_class_names_fit_a_legend_and_one_line(tmp_path, field, value, reason):
    """A label of 100,000 characters took ``dynamics`` 112 s instead of 3 s (matplotlib's
    layout); one holding an escape sequence reached the terminal raw in matplotlib's warnings."""
    run = make_run(tmp_path / "run")
    history = json.loads((run / "history.json").read_text())
    (run / "history.json").write_text(json.dumps({**history, field: value}))
    with pytest.raises(RunError, match=re.escape(reason)) as error:
        load_run(run)
    assert "\n" not in str(error.value) and "\x1b" not in str(error.value).replace("\\x1b", "")


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("label", "a\x1b[31m", r"its label 'a\x1b[31m' is not printable"),
        ("label", "y" * 130, "its label 'yyyyyyyyyyyyyyyyyyyyyyyy'… is 130 characters long"),
        ("class_names", ["a", "b\n"], r"the class name 'b\n' is not printable"),
    ],
    ids=["short label whole", "long label cut", "short class name whole"],
)
def test_a_refused_name_is_shown_whole_when_short_and_cut_at_24_characters(tmp_path, field, value, shown):
    """The same rule as ``--data``'s ``label_names`` (``_messages.shown_name``): no "…" after a
    name that was shown whole."""
    run = make_run(tmp_path / "run")
    history = json.loads((run / "history.json").read_text())
    (run / "history.json").write_text(json.dumps({**history, field: value}))
    with pytest.raises(RunError) as error:
        load_run(run)
    assert shown in str(error.value), str(error.value)
