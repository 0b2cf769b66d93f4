"""The README's Python examples run as written (in a temporary working folder)."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_python_examples_run(capsys, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no Python example"
    assert all("from ntkrobust" in block for block in blocks), "examples import the installed namespace"
    monkeypatch.chdir(tmp_path)  # the study example saves into runs/
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert sorted(p.name for p in (tmp_path / "runs" / "digits-3v8-pgd").iterdir()) == [
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
