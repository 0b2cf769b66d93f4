"""The reproduction report at its edges: durations at the minute and hour boundaries (written out
by hand), every warning of a step listed in order, and a failed write that leaves the earlier
report whole and no temporary file behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ntkrobust.reproduce import report as report_module
from ntkrobust.reproduce.report import render_html, render_markdown, write_report


def finding(recipe: str, verdict: str) -> dict[str, Any]:
    """A finding with two steps, shaped as ``reproduce.run`` writes it."""
    steps = [
        {"name": "mnist-features", "study": "features", "config": {}, "seconds": 12.3, "reused": True},
        {"name": "mnist-train", "study": "train", "config": {}, "seconds": 1.5, "reused": False},
    ]
    return {"recipe": recipe, "paper": "TK", "paper_title": "TK 2022", "reference": "fig. 2", "claim": "c",
            "paper_number": None, "measured": "m", "numbers": {}, "verdict": verdict, "rule": "r", "figures": [],
            "steps": steps, "seconds": 13.8}  # fmt: skip


def make_report(findings: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    return {"reproduction": {"target": "tk", "scale": "smoke", "out": str(out)}, "findings": findings}


def sections(text: str, start: str) -> dict[str, str]:
    """Each finding's section by its recipe name (``start``: "## " or '<section id="')."""
    parts = text.split("\n" + start)[1:]
    return {part.split("\n", 1)[0].split('"', 1)[0]: part for part in parts}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0 s"),
        (59.9, "59.9 s"),
        (60, "1 min 0 s"),
        (61.4, "1 min 1 s"),
        (3599, "59 min 59 s"),
        (3599.6, "1 h 0 min"),  # rounds to 3600 s
        (3600, "1 h 0 min"),
        (3660, "1 h 1 min"),
        (90061, "25 h 1 min"),
        (-1, "?"),
        (float("inf"), "?"),
        (float("nan"), "?"),
        (None, "?"),
    ],
)
def test_durations_at_the_boundaries(seconds: float | None, text: str) -> None:
    assert report_module._duration(seconds) == text


def test_every_warning_of_a_step_is_listed_in_order(tmp_path: Path) -> None:
    warned = finding("tk-a", "agrees")
    warned["steps"][0]["warnings"] = ["first & <one>", "second"]
    warned["steps"][1]["warnings"] = ["third"]
    report = make_report([warned], tmp_path)
    md = sections(render_markdown(report, tmp_path), "## ")["tk-a"]
    assert "- mnist-features: first & \\<one>\n- mnist-features: second\n- mnist-train: third\n" in md
    html = sections(render_html(report, tmp_path), '<section id="')["tk-a"]
    assert (
        "<ul><li><b>mnist-features</b>: first &amp; &lt;one&gt;</li><li><b>mnist-features</b>: second</li>"
        "<li><b>mnist-train</b>: third</li></ul>"
    ) in html


def test_a_failed_write_keeps_the_earlier_report_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_report(tmp_path, make_report([finding("tk-a", "agrees")], tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_report(tmp_path, make_report([finding("tk-a", "contradicts")], tmp_path))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert json.loads((tmp_path / "findings.json").read_text())["findings"][0]["verdict"] == "agrees"
    assert os.replace is not full_disk
