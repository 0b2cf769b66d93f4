"""AutoAttack's parts count their iterations and queries as progress (``bridge._autoattack``),
without changing what AutoAttack finds."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ntkrobust import _progress
from ntkrobust.bridge import _autoattack
from ntkrobust.bridge.evaluation import robust_correct


@pytest.fixture(scope="module")
def digits_net():
    """A linear classifier of sklearn's 8×8 digits in [0, 1], fitted for a few hundred steps, and
    30 test points."""
    digits = load_digits()
    x = torch.as_tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.as_tensor(digits.target, dtype=torch.long)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:1500]), y[:1500]).backward()
        optimizer.step()
    return net.eval(), x[1500:1530], y[1500:1530]


def _counts(messages: list[str], part: str) -> list[tuple[str, int, int]]:
    """(points, count, total) of every progress line of ``part``."""
    pattern = re.compile(rf"AutoAttack {re.escape(part)}(?: \((points [^)]*)\))?: (\d+)/(\d+) \w+")
    return [(m[1] or "", int(m[2]), int(m[3])) for line in messages if (m := pattern.search(line))]


@pytest.fixture
def shorter(monkeypatch):
    """AutoAttack with 20 iterations per run and 300 Square queries (the standard's 100 and 5000
    take a minute on these 30 points): the AutoAttack instances made, in order."""
    from pyautoattack import AutoAttack

    made = []

    def short(*args, **kwargs):
        attack = AutoAttack(*args, **kwargs)
        attack.apgd.n_iter = attack.apgd_targeted.n_iter = attack.fab.n_iter = 20
        attack.square.n_queries = 300
        made.append(attack)
        return attack

    monkeypatch.setattr("pyautoattack.AutoAttack", short)
    return made


def test_each_part_counts_its_own_steps_and_the_verdicts_do_not_change(digits_net, shorter, caplog, monkeypatch):
    net, x, y = digits_net
    plain = robust_correct(net, x, y, eps=0.1, channels=1, attacks=("autoattack",), seed=3, batch_size=10)
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)  # a line at every step
    with caplog.at_level("INFO", logger="ntkrobust"):
        counted = robust_correct(
            net, x, y, eps=0.1, channels=1, attacks=("autoattack",), seed=3, batch_size=10, progress=False
        )
    np.testing.assert_array_equal(counted["autoattack"], plain["autoattack"])
    assert 0 < plain["autoattack"].sum() < plain["clean"].sum()  # it attacked, and not every point fell

    apgd = _counts(caplog.messages, "APGD-CE")
    # the three batches of 10, each 20 iterations (APGD runs all of them), counted one by one
    assert [count for points, count, _ in apgd if count == 20] == [20, 20, 20]
    assert {total for _, _, total in apgd} == {20}
    assert [c for p, c, _ in apgd if p == "points 0-9 of 30"] == list(range(1, 21))
    targeted = _counts(caplog.messages, "APGD-T")
    assert targeted and {total for _, _, total in targeted} == {180}  # 9 target classes × 20
    # one target class's 20 iterations at a time: a batch's count ends on a whole class
    ends = [c for i, (p, c, _) in enumerate(targeted) if i + 1 == len(targeted) or targeted[i + 1][0] != p]
    assert len(ends) == 3 and all(count % 20 == 0 and 0 < count <= 180 for count in ends)
    for part, total in (("FAB-T", 180), ("SQUARE", 300)):
        counts = _counts(caplog.messages, part)
        assert counts and all(t == total and 0 < c <= total for _, c, t in counts)


def test_the_counters_leave_autoattack_as_they_found_it(digits_net, shorter):
    """The wrapped methods are the instance's for the length of a run only."""
    net, x, y = digits_net
    _autoattack.autoattack_correct(
        net, x[:5], y[:5], classes=10, eps=0.05, seed=0, batch_size=5, parts=["apgd-ce", "apgd-t", "fab-t", "square"],
        across_processes=False, progress=True,  # tqdm's bars
    )  # fmt: skip
    (attack,) = shorter
    for instance in (attack.apgd, attack.apgd_targeted, attack.fab, attack.square):
        methods = {"perturb", "attack_single_run", "margin_and_loss", "get_diff_logits_grads_batch_targeted"}
        assert not methods & set(vars(instance))  # the class's methods again
    assert attack.apgd.model is attack.model and attack.apgd_targeted.model is attack.model


def test_a_part_with_no_point_left_opens_no_loop(digits_net, caplog, monkeypatch):
    """At a radius that fools every point, APGD-CE takes them all: AutoAttack skips the other
    parts, and no loop of theirs says anything."""
    net, x, y = digits_net
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    with caplog.at_level("INFO", logger="ntkrobust"):
        kept = robust_correct(net, x[:10], y[:10], eps=0.5, channels=1, attacks=("autoattack",), progress=False)
    assert not kept["autoattack"].any()
    assert _counts(caplog.messages, "APGD-CE")[-1][1:] == (100, 100)
    assert not any(_counts(caplog.messages, part) for part in ("APGD-T", "FAB-T", "SQUARE"))
