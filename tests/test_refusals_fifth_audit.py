"""Bad input found by the fifth audit (a helper ran about 600 hostile commands): each is one
line, exit status 2, before any compute, and nothing written; each test failed before its fix.
The audit's other findings have their tests beside the code they changed: the warm-up that
divided by zero (``tests/studies/test_study_train.py``), zip members numpy cannot read
(``tests/bridge/test_data_inputs.py``) and seeds beyond torch's range
(``tests/studies/test_study_two_layer.py``, ``test_study_transfer.py``)."""

from __future__ import annotations

import pytest

DIGITS = ["--data", "digits", "--n-train", 30, "--n-test", 10]


@pytest.mark.parametrize(
    ("command", "length", "beside"),
    [(["attack", *DIGITS, "--no-cache"], 230, "staging folder"), (["train", *DIGITS], 250, "lock")],
)
def test_an_out_name_without_room_for_what_is_made_beside_it_is_refused_first(
    tmp_path, run_cli, command, length, beside
):
    """A 230-byte --out name: the attack ran in full, then the move from its staging folder
    (26 bytes longer) failed with "File name too long", naming the hidden folder. A folder name
    above 255 bytes on the way to --out was an OSError's text."""
    out = tmp_path / ("a" * length)
    code, _, err = run_cli([*command, "--out", out])
    assert code == 2 and err.count("\n") == 1, err
    assert f"--out's name is {length} bytes long" in err and f"the hidden {beside} made beside it" in err, err
    assert list(tmp_path.iterdir()) == []
    code, _, err = run_cli([*command, "--out", tmp_path / ("b" * 300) / "out"])
    assert code == 2 and "--out: the folder name bbbbbbbbbbbbbbbbbbbbbbbb… is longer than the 255 bytes" in err, err


def test_an_out_name_that_fits_still_works(tmp_path, run_cli):
    """The longest name with room for the staging folder: 255 − 26 = 229 bytes."""
    code, _, err = run_cli(["attack", *DIGITS, "--no-cache", "--quiet", "--out", tmp_path / ("a" * 229)])
    assert code == 0, err
    assert (tmp_path / ("a" * 229) / "results.json").is_file()


def test_help_on_an_ascii_terminal_escapes_greek_letters():
    """``PYTHONIOENCODING=ascii``: the help's θ, τ and Θ were a UnicodeEncodeError traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-m", "ntkrobust", "train", "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "\\u03b8" in done.stdout or "\\u0398" in done.stdout
