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


@pytest.mark.parametrize("quiet", [[], ["--quiet"]], ids=["stages", "quiet"])
def test_the_gram_caches_warnings_read_as_warnings(tmp_path, run_cli, quiet):
    """A damaged cache entry is said as "ntkrobust: warning: ...", as the studies' warnings are,
    with --quiet too (it printed without "warning:", and under --quiet without "ntkrobust:")."""
    argv = ["attack", *DIGITS, "--cache-dir", tmp_path / "cache", *quiet]
    assert run_cli([*argv, "--out", tmp_path / "one"])[0] == 0
    (entry,) = (tmp_path / "cache").glob("gram-*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    code, _, err = run_cli([*argv, "--out", tmp_path / "two"])
    assert code == 0 and f"ntkrobust: warning: Gram cache entry {entry} is corrupt" in err, err


def test_a_fifo_or_a_loop_of_links_named_as_a_checkpoint_says_what_it_is(tmp_path, assert_refused):
    """They "did not exist" for entk's --checkpoint and evaluate's nets, where --data said "is not a
    regular file": one reason for every reader (``files.not_a_file``)."""
    import os

    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    entk = ["entk", *DIGITS, "--checkpoint"]
    assert_refused([*entk, tmp_path / "fifo.pt"], f"checkpoint {tmp_path / 'fifo.pt'} is not a regular file")
    assert_refused([*entk, tmp_path / "a.pt"], f"checkpoint {tmp_path / 'a.pt'} is a symbolic link that loops")
    assert_refused(["evaluate", *DIGITS, tmp_path / "fifo.pt"], "fifo.pt is not a regular file")
    assert_refused(["entk", *DIGITS, "--checkpoint", tmp_path / "none.pt"], "none.pt does not exist")


def test_a_torchscript_file_given_as_a_checkpoint_says_what_it_is(tmp_path, assert_refused):
    """entk --checkpoint and train --linearize-from quoted torch's paragraph on weights_only and
    PyTorch 2.6 for a TorchScript file, without saying what the file is or what they need."""
    import torch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.jit.save(torch.jit.script(net), tmp_path / "net.pt")
    said = f"{tmp_path / 'net.pt'} is a TorchScript program, not a checkpoint of this tool: this needs the weights"
    assert_refused(["entk", *DIGITS, "--checkpoint", tmp_path / "net.pt"], said)
    assert_refused(["train", *DIGITS, "--track-kernel", 10, "--linearize-from", tmp_path / "net.pt"], said)


def test_make_npz_never_replaces_a_fifo_or_a_device(tmp_path, run_cli):
    """``make-npz --out X.npz --force`` replaced a FIFO named X.npz with a regular file."""
    import os
    import stat

    os.mkfifo(tmp_path / "pipe.npz")
    code, _, err = run_cli(["make-npz", *DIGITS, "--force", "--out", tmp_path / "pipe.npz"])
    assert code == 2 and f"--out {tmp_path / 'pipe.npz'} is not a regular file" in err, err
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.npz").st_mode)
