"""A finding kept from an earlier report is shown as findings.json holds it, and that file may
come with a folder someone handed over: one the report could not show is refused before any
step runs (one line, exit status 2 from the command line), never found when the report is
written after hours of compute. Found by the seventh audit: each damaged finding below used to
crash ``write_report`` (ValueError, AttributeError, TypeError) after the target's steps ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_run_audit import Study, reproduce, study  # noqa: F401  (the fixture, by name)

from ntkrobust.reproduce.report import check_finding, write_report
from ntkrobust.studies._base import StudyError

DAMAGED = [
    ({"verdict": "maybe"}, "verdict 'maybe' is not one of"),
    ({"figures": [1]}, "its figures are not a list of objects"),
    ({"figures": "ab"}, "its figures are not a list of objects"),
    ({"steps": ["x"]}, "its steps are not a list of objects"),
    ({"seconds": "5"}, "it took '5' seconds, not a number"),
    ({"steps": [{"name": "s3", "seconds": "5"}]}, "step 's3' took '5' seconds, not a number"),
    ({"steps": [{"name": "s3", "warnings": 7}]}, "step 's3' has warnings 7, not a list"),
]


@pytest.mark.parametrize(("change", "message"), DAMAGED)
def test_a_damaged_kept_finding_is_refused_before_any_step_runs(
    study: Study,  # noqa: F811
    tmp_path: Path,
    change: dict[str, Any],
    message: str,
) -> None:
    """fake-b's finding, damaged in findings.json, then fake-a reproduced into the same folder:
    refused naming the finding and what is wrong, no step run, the earlier report untouched."""
    out = tmp_path / "out"
    reproduce("fake-b", out)
    findings = json.loads((out / "findings.json").read_text())
    findings["findings"][0].update(change)
    (out / "findings.json").write_text(json.dumps(findings))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    calls = list(study.calls)
    with pytest.raises(StudyError, match=r"findings\.json, the report of the reproduction there, is unreadable") as err:
        reproduce("fake-a", out)
    assert f"(finding fake-b: {message}" in str(err.value) and "\n" not in str(err.value)
    assert study.calls == calls
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(("change", "message"), DAMAGED)
def test_each_refused_finding_is_one_the_report_cannot_show(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """The refusal is not stricter than the report: without it each of these findings makes
    ``write_report`` fail, and a whole finding of the same fields with sound values passes and renders."""
    sound: dict[str, Any] = {"recipe": "r", "verdict": "agrees", "figures": [], "steps": [], "seconds": 1.5}
    check_finding(sound)
    report = {"reproduction": {"target": "t", "scale": "smoke"}, "findings": [{**sound, **change}]}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_finding({**sound, **change})
    with pytest.raises((ValueError, TypeError, AttributeError)):
        write_report(tmp_path / "report", report)


def test_a_finding_that_is_not_an_object_is_refused() -> None:
    """A list or a string in findings.json's findings: refused by name, not by an AttributeError."""
    for finding in ([1], "agrees", None):
        with pytest.raises(ValueError, match=f"a finding is {type(finding).__name__}, not an object"):
            check_finding(finding)
