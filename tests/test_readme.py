"""The README's Python examples run as written (in a temporary working folder)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from readme_commands import commands, without_install  # tests/ is on sys.path (pytest's prepend import mode)

from ntkrobust import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _official_files_stand_in(monkeypatch) -> list[tuple[str, bool]]:
    """``bridge.data.load_raw`` answers mnist and cifar10 with arrays of the official files'
    shapes (no download here): CIFAR-10's training image i carries its index as its label, so
    the README's recipe for ``cifar10_subset.npz`` can be checked to take 932 of each batch."""
    import numpy as np

    from ntkrobust.bridge import data

    asked: list[tuple[str, bool]] = []
    real = data.load_raw

    def stand_in(spec, **kwargs):
        if spec not in ("mnist", "cifar10"):
            return real(spec, **kwargs)
        asked.append((spec, kwargs["download"]))
        Path(kwargs["root"]).mkdir(parents=True, exist_ok=True)  # as the download makes it
        train, test = (60_000, 10_000) if spec == "mnist" else (50_000, 10_000)
        shape = (1, 28, 28) if spec == "mnist" else (3, 32, 32)
        return {
            "x_train": np.zeros((train, *shape), np.uint8),
            "y_train": np.arange(train),
            "x_test": np.zeros((test, *shape), np.uint8),
            "y_test": np.arange(test),
            "label_names": [f"class {i}" for i in range(10)],
        }

    monkeypatch.setattr(data, "load_raw", stand_in)
    return asked


def test_readme_python_examples_run(capsys, tmp_path, monkeypatch):
    import numpy as np

    readme = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no Python example"
    assert all("from ntkrobust" in block for block in blocks), "examples import the installed namespace"
    checkout = tmp_path / "checkout"  # the data snippet writes ../shared/data, beside the checkout
    checkout.mkdir()
    monkeypatch.chdir(checkout)  # the study example saves into runs/
    asked = _official_files_stand_in(monkeypatch)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert asked == [("mnist", True), ("cifar10", True)]
    with np.load(tmp_path / "shared" / "data" / "cifar10" / "cifar10_subset.npz") as subset:
        assert subset["x_train"].shape == (4660, 3, 32, 32) and subset["x_test"].shape == (932, 3, 32, 32)
        chosen = [i for batch in range(5) for i in range(batch * 10_000, batch * 10_000 + 932)]
        assert subset["y_train"].tolist() == chosen and subset["y_test"].tolist() == list(range(932))
        assert len(subset["label_names"]) == 10
    assert sorted(p.name for p in (checkout / "runs" / "digits-3v8-pgd").iterdir()) == [
        "adversarial.npz",
        "results.json",
    ]
    lines = capsys.readouterr().out.strip().splitlines()
    study = lines[0].split()
    assert study[:2] == ["fc2", "NTK"] and "pgd linf eps=0.1" in lines[0]  # the study's summary
    robust, steps = lines[1].split()
    assert 0.0 <= float(robust) < 0.95 and int(steps) == 40  # the standard grey-scale PGD-40
    accuracy = float(lines[-1])
    assert 0.0 <= accuracy < 0.95  # an attacked 3-vs-8 machine


def _readme_command_lines() -> list[tuple[list[str], list[str]]]:
    """``(launcher words, ntkrobust argv)`` of every ``ntkrobust`` command in the README's ``bash``
    and ``sh`` blocks (the ``sh`` ones need GPUs and are never run by the tests): each line cut
    into its commands at ``&&``, ``|`` and ``;``, trailing comments dropped."""
    readme = README.read_text()
    found = []
    for line in commands(readme, ("bash", "sh")):
        command: list[str] = []
        for word in [*shlex.split(line, comments=True), ";"]:
            if word not in ("&&", "|", ";"):
                command.append(word)
                continue
            program = next((i for i, w in enumerate(command) if w.split("/")[-1] == "ntkrobust"), None)
            if program is not None:
                found.append((command[:program], command[program + 1 :]))
            command = []
    return found


def test_readme_command_lines_parse_into_settings():
    """Every command line the README shows, the GPU-only ones of "Running at paper scale" included,
    names real flags with values their parsers accept and builds its study's settings, and
    torchrun's own flags pass torchrun's parser. Nothing runs: the checks a study makes before its
    compute (a kernel kind's spelling, the data's presence) are the CLI tests' business."""
    from torch.distributed.run import get_args_parser

    lines = _readme_command_lines()
    launched = [(launcher, argv) for launcher, argv in lines if launcher[:1] == ["torchrun"]]
    assert len(lines) >= 25 and len(launched) >= 4, (len(lines), len(launched))
    for launcher, argv in lines:
        if launcher[:1] == ["torchrun"]:
            assert launcher[-1] == "-m", launcher
            options = get_args_parser().parse_args([*launcher[1:-1], "-m", "ntkrobust"])
            assert options.module and options.training_script == "ntkrobust"
            assert argv[0] in cli.DISTRIBUTED_COMMANDS, argv[0]
        if argv == ["--version"] or argv[:2] == ["reproduce", "--list"]:
            continue
        args = cli.parse(argv)
        _, settings = cli.study_settings(args)
        assert type(settings).__name__ == cli.COMMANDS[args.command][1]


def _heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, every character but letters, digits,
    spaces, ``-`` and ``_`` dropped, each space a ``-`` (so ``` `--scale cpu` ``` keeps its dashes)."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def test_readme_links_within_the_page_name_its_headings():
    readme = README.read_text()
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)  # a '#' line inside a code block is no heading
    anchors = {_heading_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", prose, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", prose)
    assert len(links) >= 10, "the contents line at the top links every section"
    assert [link for link in links if link not in anchors] == []


def test_skipping_the_install_keeps_what_the_quick_start_runs_after_it():
    """``readme_commands.py --skip-install`` drops the venv and pip steps of a line and keeps the
    rest: the quick start's first line is also its first attack (the README's first quoted output)."""
    quick_start = [c for c in commands(README.read_text()) if c.startswith("python3 -m venv")]
    kept = [without_install(c) for c in quick_start]
    assert kept[0] == ".venv/bin/ntkrobust attack --out runs/digits-fc2"
    assert kept[1].startswith(".venv/bin/python -m pytest")
    assert without_install("python3 -m venv .venv && pip install -e .") == ""
