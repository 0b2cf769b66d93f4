"""Bad input found by the fourth audit (a helper ran about 500 hostile commands): each is one
line, exit status 2, before any compute, and nothing written; each test failed before its fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ntkrobust.bridge.checkpoint import save_checkpoint
from ntkrobust.bridge.files import NpzError, read_npz
from ntkrobust.bridge.models import build_model, model_config

TOO_MANY = 2**63  # len(range(n)) of the progress bars overflowed past 2**63 - 1


@pytest.fixture
def state_dict(tmp_path: Path) -> dict[str, torch.Tensor]:
    return build_model(model_config("fc2", (1, 8, 8), 10, width=8)).state_dict()


def test_a_symbolic_link_loop_named_as_a_net_is_one_line(tmp_path, assert_refused):
    """It met ``Path.resolve``'s RuntimeError in the check for a net named twice (a traceback)."""
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    assert_refused(
        ["evaluate", "--data", "digits", tmp_path / "a.pt"], f"net {tmp_path / 'a.pt'} is a symbolic link that loops"
    )


def test_an_unopenable_npz_says_why_not_that_it_is_damaged(tmp_path):
    """Unreadable files (permissions, a loop) read as "not an .npz (zip) archive, or a truncated one"."""
    (tmp_path / "a.npz").symlink_to(tmp_path / "b.npz")
    (tmp_path / "b.npz").symlink_to(tmp_path / "a.npz")
    with pytest.raises(NpzError, match="symbolic links"):
        read_npz(tmp_path / "a.npz", ["x_train"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["attack", "--data", "digits", "--method", "pgd", "--steps", TOO_MANY], "--steps: must be at most 2**63 - 1"),
        (["train", "--data", "digits", "--mode", "pgd", "--pgd-steps", TOO_MANY], "must be at most 2**63 - 1"),
        (["entk", "--data", "digits", "--kind", f"rademacher:{2**31}"], "rademacher:K (0 < K < 2**31"),
        (["train", "--data", "digits", "--estimator", f"rademacher:{10**20}"], "rademacher:K (0 < K < 2**31"),
    ],
)
def test_counts_past_what_torch_and_range_take_are_refused(argv, message, assert_refused):
    """Before: an OverflowError after the data and the Gram matrix (train: after writing its
    first checkpoint and kernels), or torch's randint overflow for K past 2**63."""
    assert_refused(argv, message)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["entk", "--data", "digits", "--model", "fc2", "--width", "8", "--n", "10", "--kind", "rademacher:30000"],
         "--kind rademacher:30000: 30000 draws cost more than the exact trace kernel they estimate (the net's 10 "
         "outputs): give K <= 10"),
        (["train", "--data", "digits", "--model", "fc2", "--width", "8", "--epochs", "1", "--track-kernel", "10",
          "--eval-n", "10", "--estimator", "rademacher:11"], "--estimator rademacher:11: 11 draws cost more"),
    ],
)  # fmt: skip
def test_more_rademacher_draws_than_outputs_are_refused_before_anything_runs(argv, message, assert_refused):
    """30,000 draws of a 10-output net grew past --memory-budget until the OS killed the process
    (24 GB, no line); train --estimator rademacher:10**6 left its config and probe behind."""
    assert_refused(argv, message)


def test_the_studies_refuse_the_same_counts_from_python():
    from ntkrobust.studies import StudyError
    from ntkrobust.studies._common import check_count

    check_count(TOO_MANY - 1, 1, "--steps")
    with pytest.raises(StudyError, match=r"--steps must be at most 2\*\*63 - 1"):
        check_count(TOO_MANY, 1, "--steps")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.fill_(math.nan), "holds NaN or infinite values"),
        (lambda t: t.to(torch.int64), "holds torch.int64 values"),
    ],
)
def test_a_state_dict_target_gets_the_checks_of_a_checkpoint(tmp_path, state_dict, change, message, assert_refused):
    """``MODEL:WIDTH=STATE_DICT`` loaded NaN weights (accuracy 0.1 written as a result) and
    integer ones, which the same weights in a checkpoint are refused for."""
    key = next(iter(state_dict))
    torch.save({**state_dict, key: change(state_dict[key].clone())}, tmp_path / "sd.pt")
    assert_refused(["evaluate", "--data", "digits", f"fc2:8={tmp_path / 'sd.pt'}"], message)


def test_a_stage2_checkpoint_with_an_unknown_batchnorm_mode_is_one_line(tmp_path, assert_refused):
    """``CenteredStandardNetwork``'s ValueError escaped the loaders (a traceback in evaluate,
    entk, transfer and train --linearize-from)."""
    config = model_config("fc2", (1, 8, 8), 10, width=8)
    path = save_checkpoint(tmp_path / "net.pt", build_model(config), config, epoch=1)
    payload = torch.load(path, weights_only=True)
    payload["linearization"] = {"centered": True, "kind": "standard", "batchnorm": "bogus"}
    torch.save(payload, path)
    assert_refused(["evaluate", "--data", "digits", path], "stage-2 BatchNorm is frozen or train")


def test_a_report_of_a_damaged_step_record_says_what_it_cannot_time():
    """A step record whose seconds were NaN stopped ``reproduce`` in its report (a traceback)."""
    from ntkrobust.reproduce.report import _duration

    assert [_duration(s) for s in (math.nan, -1.0, math.inf, None, 75.0)] == ["?", "?", "?", "?", "1 min 15 s"]
