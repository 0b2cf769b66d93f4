"""The pair route's bookkeeping (``kernels._feature_rows``), against explicit loops: chunks that
cover every item once in order, none above the size asked, each padded to a multiple of the
quantum by repeating its last entry; the profile's stopwatch summing laps; and the progress lines
of PGD feature scores naming the pairs done so far of all the block's correct pairs (counted
from the returned usefulness) and the block (from 1, only where there are several)."""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pytest

from ntkrobust import _progress
from ntkrobust.attacks import ThreatModel
from ntkrobust.kernels import _feature_rows as rows_module
from ntkrobust.kernels.features import feature_scores


@pytest.mark.parametrize("quantum", [1, 3, 16])
def test_chunks_cover_every_item_once_within_size_padded_to_the_quantum(quantum):
    for count in range(1, 90):
        for size in range(1, 40):
            chunks = rows_module._chunks(count, size, quantum)
            covered = [i for start, stop, _ in chunks for i in range(start, stop)]
            assert covered == list(range(count)), (count, size)
            assert len(chunks) == -(-count // size)  # as few chunks as the size allows
            lengths = [stop - start for start, stop, _ in chunks]
            assert max(lengths) <= size and max(lengths) - min(lengths) < len(chunks), (count, size)
            (padded,) = {p for _, _, p in chunks}  # one compiled shape
            assert padded % quantum == 0 and max(lengths) <= padded < max(lengths) + quantum


def test_padding_repeats_the_last_entry():
    a = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(rows_module._padded(a, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    assert rows_module._padded(a, 3) is a and rows_module._padded(a, 2) is a


def test_the_stopwatch_sums_each_stages_laps_after_waiting_for_them(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(rows_module.time, "perf_counter", lambda: now[0])
    waited = []
    monkeypatch.setattr(rows_module.jax, "block_until_ready", lambda value: waited.append(value) or value)
    watch = rows_module.Stopwatch(enabled=True)
    laps = []
    for name, value, at in (("a", "x", 1.0), ("b", "y", 3.0), ("a", "z", 6.0)):
        now[0] = at
        laps.append(watch.lap(name, value))
    assert laps == ["x", "y", "z"]
    assert watch.seconds == {"a": 1.0 + 3.0, "b": 2.0}  # a: 0 → 1 and 3 → 6; b: 1 → 3
    assert waited == ["x", "y", "z"]
    off = rows_module.Stopwatch()
    assert off.lap("a", "x") == "x" and off.seconds == {} and waited == ["x", "y", "z"]


def _pgd_lines(machine, data, caplog, n_points: int) -> tuple[list[str], int]:
    x, y = data.x_test[:n_points], data.y_test[:n_points]
    with caplog.at_level(logging.INFO, logger="ntkrobust"):
        scores = feature_scores(
            machine, x, y, ThreatModel("linf", 0.1), n_features=4, attack="pgd", step=0.05, steps=2, route="dots"
        )
    pairs = round(float(np.sum(scores.usefulness)) * n_points)  # correct (example, feature) pairs
    return [r.getMessage() for r in caplog.records], pairs


def test_pgd_lines_count_the_pairs_attacked_of_one_block(fc2_multiclass, digits_multiclass, monkeypatch, caplog):
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    lines, pairs = _pgd_lines(fc2_multiclass, digits_multiclass, caplog, 20)
    during = [line for line in lines if line.startswith("feature pgd: 0/1 blocks") and ", PGD step " in line]
    assert 0 < pairs <= 1024 and len(during) == 2  # one chunk of pairs, two steps
    assert all(f", pairs attacked {pairs:,}/{pairs:,}, PGD step " in line for line in during), lines
    assert not any(" in block " in line for line in lines)


def test_pgd_lines_name_each_block_from_one(fc2_multiclass, digits_multiclass, monkeypatch, caplog):
    """A budget of 2**16 bytes: blocks of 16 points over 40 points, each with pairs to attack."""
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    machine = dataclasses.replace(fc2_multiclass, memory_budget=2**16)
    lines, pairs = _pgd_lines(machine, digits_multiclass, caplog, 40)
    blocks = {int(m.group(1)) for line in lines if (m := re.search(r"feature pgd: \d+/(\d+) blocks", line))}
    (n_blocks,) = blocks
    named = [int(m.group(1)) for line in lines if (m := re.search(r" in block (\d+), PGD step", line))]
    assert n_blocks > 1 and sorted(set(named)) == list(range(1, n_blocks + 1)), lines
    # each block's last line of pairs says all of that block's pairs; together they are all pairs
    last = {}
    for line in lines:
        if m := re.search(r"pairs attacked ([\d,]+)/([\d,]+) in block (\d+)", line):
            done, total, block = (int(g.replace(",", "")) for g in m.groups())
            last[block] = (done, total)
    assert all(done == total for done, total in last.values()) and sum(t for _, t in last.values()) == pairs
