"""Fourteenth audit (mutation testing of the changes of 2026-12-06): the random starts of
``ThreatModel.random_start`` against numpy's own generator and a hand-written Box–Muller, the
progress counters of AutoAttack's parts against the net's forward passes counted by a hook, and
the part of a stopped ``evaluate`` that the command line keeps (its figure's subtitle, a refusal
or a full disk in a later net, ``--force`` over an old folder), the refusals that name a
checkpoint's classes and ``InputRangeWarning``'s range. ``test_square_counts_queries`` found a bug:
Square's lines counted "300/300 querys" (``_progress._plural``, fixed with this audit)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

# helpers and fixtures of the nearest tests (conftest puts the test folders on sys.path)
from test_autoattack_progress import _counts, shorter  # noqa: F401
from test_evaluate_stopped import TASK, nets, stopping_at  # noqa: F401

from ntkrobust.attacks.threat import ThreatModel

# --- attacks.threat: ThreatModel.random_start ---------------------------------------------------


def test_linf_start_is_numpys_uniform_draw_of_all_points_cut_at_first_row():
    """ℓ∞: row i of ``random_start(x, seed, first_row=a)`` is x + row a + i of numpy's
    ``default_rng(seed).uniform(−ε, ε)`` drawn for all a + n points at once (pixels in C order),
    clipped to [0, 1]: numpy's own generator, not the code's stream arithmetic, says where the
    draws of a batch lie."""
    x = np.random.default_rng(1).uniform(0.2, 0.8, size=(5, 2, 3, 1))
    eps, seed, first = 0.1, 11, 7
    noise = np.random.default_rng(seed).uniform(-eps, eps, size=(first + 5, 2, 3, 1))[first:]
    got = ThreatModel("linf", eps).random_start(x, seed, first)
    np.testing.assert_array_equal(got, np.clip(x + noise, 0.0, 1.0))


def _box_muller_start(x: np.ndarray, eps: float, seed: int, first_row: int) -> np.ndarray:
    """The docstring's recipe written out one point at a time: each point takes 2·⌈d/2⌉ + 1
    uniforms of ``default_rng(seed).random`` in turn (point ``first_row + i`` the i-th block); the
    first ⌈d/2⌉ give the Box–Muller lengths √(−2 ln(1 − u)), the next ⌈d/2⌉ the angles 2πu, the
    normals are the cosines then the sines (the last sine dropped for an odd d), and the last
    uniform gives the radius ε·u^(1/d)."""
    n, d = x.shape[0], int(np.prod(x.shape[1:]))
    pairs = (d + 1) // 2
    stream = np.random.default_rng(seed).random((first_row + n) * (2 * pairs + 1))
    rows = []
    for i in range(n):
        u = stream[(first_row + i) * (2 * pairs + 1) : (first_row + i + 1) * (2 * pairs + 1)]
        normals = []
        for cos_or_sin in (np.cos, np.sin):
            for k in range(pairs):
                normals.append(np.sqrt(-2.0 * np.log(1.0 - u[k])) * cos_or_sin(2.0 * np.pi * u[pairs + k]))
        direction = np.array(normals[:d])
        rows.append(direction / np.linalg.norm(direction) * eps * u[-1] ** (1.0 / d))
    return x + np.stack(rows).reshape(x.shape)


@pytest.mark.parametrize(("shape", "first_row"), [((6, 1, 2, 2), 0), ((6, 1, 1, 3), 4), ((3, 2, 3, 3), 9)])
def test_l2_start_is_box_muller_of_each_points_own_uniforms(shape, first_row):
    """ℓ2: every point's offset is the hand-written Box–Muller direction and radius of its own
    block of uniforms (``_box_muller_start``), for an even and an odd number of pixels and a batch
    that starts inside the data. Pins which draws make the direction, which the angle and which
    the radius (the radius from an angle's draw, the angles from the lengths' draws, or a block
    size other than 2·⌈d/2⌉ + 1 kept the batches consistent and passed the moment tests)."""
    x = np.full(shape, 0.5)  # ε = 0.2 < 0.5: nothing is clipped
    got = ThreatModel("l2", 0.2).random_start(x, seed=5, first_row=first_row)
    np.testing.assert_allclose(got, _box_muller_start(x, 0.2, 5, first_row), rtol=0, atol=1e-13)


# --- bridge._autoattack: the counters of AutoAttack's parts ----------------------------------------


class _Bar:
    """A progress bar that only adds up its updates."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


@pytest.fixture(scope="module")
def small_attack():
    """pyautoattack's AutoAttack on a seeded linear net of 8×8 images (digits in [0, 1]), 6 points
    labelled by the net's own predictions, at a radius too small to fool them all: APGD with 5
    iterations, Square with 6 queries."""
    from pyautoattack import AutoAttack

    from ntkrobust.bridge.data import load_dataset

    data = load_dataset("digits", n_train=10, n_test=6, seed=0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    x = torch.as_tensor(data.x_test, dtype=torch.float32)
    with torch.no_grad():
        y = net(x).argmax(1)
    attack = AutoAttack(net, norm="Linf", eps=0.002, version="standard", seed=0, device="cpu")
    attack.apgd.n_iter, attack.square.n_queries = 5, 6
    return net, x, y, attack


def _bar_at_each_forward(net, run) -> tuple[list[int], int]:
    """The bar's count at each of the net's forward passes during ``run(bar)`` (a forward hook,
    which knows nothing of the counters), and its count at the end."""
    bar, seen = _Bar(), []
    handle = net.register_forward_hook(lambda *_: seen.append(bar.n))
    try:
        run(bar)
    finally:
        handle.remove()
    return seen, bar.n


def test_apgd_counts_an_iteration_per_forward_pass_after_the_starting_one(small_attack):
    """APGD-CE's ``perturb``: one forward pass of its own (the clean predictions), then
    ``attack_single_run``'s pass at the starting point (eot_iter = 1) and one per iteration. The
    bar stands at 0 through the first two and at k during iteration k's pass, and ends at n_iter:
    a counter that skipped no starting pass showed an iteration before any was taken."""
    from ntkrobust.bridge._autoattack import _counted

    net, x, y, attack = small_attack

    def run(bar):
        with _counted("apgd-ce", attack.apgd, bar):
            attack.apgd.perturb(x, y)

    seen, end = _bar_at_each_forward(net, run)
    assert (seen, end) == ([0, 0, 1, 2, 3, 4, 5], 5)


def test_square_counts_a_query_per_margin_after_the_starting_one(small_attack):
    """Square's ``perturb``: the clean predictions, then ``attack_single_run``'s margin of the
    starting point and one margin per query (6), then the predictions of its result. At the
    starting margin the bar is at 0, at query k's at k, and it ends at n_queries: a counter that
    took the starting margin for a query reached its total a query early."""
    from ntkrobust.bridge._autoattack import _counted

    net, x, y, attack = small_attack

    def run(bar):
        with _counted("square", attack.square, bar):
            attack.square.perturb(x, y)

    seen, end = _bar_at_each_forward(net, run)
    assert (seen, end) == ([0, 0, 1, 2, 3, 4, 5, 6, 6], 6)


# --- evaluate stopped part way: what the command line keeps --------------------------------------


KEPT = "; the nets evaluated before it stopped are saved in {out} (results.json lists the others)"


def test_the_figure_of_a_stopped_run_says_how_many_nets_it_finished(nets, tmp_path, run_cli, monkeypatch):  # noqa: F811
    """Stopped in the second of three nets: the figure's subtitle ends with 'stopped after 1 of 3
    nets (not evaluated: run epoch 1, run epoch 2)', counted from the command line's three
    checkpoints, and the figure is still drawn."""
    from ntkrobust import plots

    drawn, real = [], plots.robust_accuracy_bars

    def bars(rows, path, *, subtitle):
        drawn.append(subtitle)
        return real(rows, path, subtitle=subtitle)

    monkeypatch.setattr(plots, "robust_accuracy_bars", bars)
    stopping_at(monkeypatch, 2, KeyboardInterrupt())
    out = tmp_path / "evaluated"
    assert run_cli(["evaluate", *nets, *TASK, "--out", out])[0] == 130
    (subtitle,) = drawn
    assert subtitle.endswith("; stopped after 1 of 3 nets (not evaluated: run epoch 1, run epoch 2)"), subtitle
    assert (out / "robust_accuracy.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("stop", "said"),
    [
        ("refusal", "ntkrobust: error: the second net refuses"),
        ("disk", "ntkrobust: error: No space left on device"),
        ("memory", "ntkrobust: error: out of memory ("),
    ],
)
def test_a_refusal_a_full_disk_or_memory_in_a_later_net_keeps_the_earlier_one(
    nets,  # noqa: F811
    tmp_path,
    run_cli,
    monkeypatch,
    stop,
    said,
):
    """The one-line exits of ``main`` (a StudyError, an OSError, a MemoryError) raised in the
    second net: exit status 2, the first net saved in --out with the other two named in
    results.json, and the line says so (``_kept``). Only the traceback and interrupt exits were
    tested."""
    from ntkrobust.studies._base import StudyError

    error = {
        "refusal": StudyError("the second net refuses"),
        "disk": OSError(28, "No space left on device"),
        "memory": MemoryError(),
    }[stop]
    stopping_at(monkeypatch, 2, error)
    out = tmp_path / "evaluated"
    code, _, stderr = run_cli(["evaluate", *nets, *TASK, "--out", out])
    last = stderr.strip().splitlines()[-1]
    assert code == 2 and last.startswith(said) and last.endswith(KEPT.format(out=out)), stderr
    record = json.loads((out / "results.json").read_text())
    assert [net["label"] for net in record["nets"]] == ["run epoch 0"]
    assert record["nets_not_evaluated"] == ["run epoch 1", "run epoch 2"]


def test_force_over_an_old_folder_keeps_the_nets_of_the_stopped_run(nets, tmp_path, run_cli, monkeypatch):  # noqa: F811
    """--force over the folder of an earlier, whole run (3 nets), stopped in the second net: the
    folder then holds the new run's first net, not the old record (the finished part replaces what
    --force allowed to replace, as a whole run's result does)."""
    out = tmp_path / "evaluated"
    assert run_cli(["evaluate", *nets, *TASK, "--out", out])[0] == 0
    stopping_at(monkeypatch, 2, KeyboardInterrupt())
    code, _, stderr = run_cli(["evaluate", *nets[1:], *TASK, "--out", out, "--force"])
    assert code == 130 and stderr.strip().splitlines()[-1] == "ntkrobust: interrupted" + KEPT.format(out=out)
    record = json.loads((out / "results.json").read_text())
    assert [net["label"] for net in record["nets"]] == ["run epoch 1"]
    assert record["nets_not_evaluated"] == ["run epoch 2"]


def test_a_finished_part_that_cannot_be_saved_is_not_said_to_be(nets, tmp_path, run_cli, monkeypatch):  # noqa: F811
    """Saving the finished part fails too (a full disk): the user hears of the interrupt alone,
    with no claim that anything was saved, and --out does not exist ("saved all or nothing")."""
    from ntkrobust.studies.evaluate import EvaluateResult

    def full_disk(self, out, *, overwrite=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EvaluateResult, "save", full_disk)
    stopping_at(monkeypatch, 2, KeyboardInterrupt())
    out = tmp_path / "evaluated"
    code, _, stderr = run_cli(["evaluate", *nets, *TASK, "--out", out])
    assert code == 130 and stderr.strip().splitlines()[-1] == "ntkrobust: interrupted"
    assert not out.exists()


@pytest.mark.parametrize(
    ("classes", "loops"),
    [
        ([0, 1], {"APGD-CE": 20, "FAB": 20, "SQUARE": 300}),
        ([0, 1, 2], {"APGD-CE": 20, "APGD-DLR": 20, "FAB-T": 40, "SQUARE": 300}),
    ],
)
def test_two_and_three_class_runs_count_each_of_their_parts(shorter, caplog, monkeypatch, classes, loops):  # noqa: F811
    """A net of 2 or 3 classes (digits) and AutoAttack's standard parts for it
    (``autoattack_attacks``: the untargeted FAB for 2 classes, APGD-DLR for APGD-T with 3; 20
    iterations, 300 queries), at a radius too small to fool a point: every part has loops of its
    own name, counted one by one from 1 to its total. With 3 classes FAB-T targets the 2 classes
    beyond the true one, 2 × 20 iterations across both runs (one run's count did not carry into the
    next; FAB-T's count moved only at a run's end); with 2, FAB is no FAB-T."""
    from ntkrobust import _progress
    from ntkrobust.bridge.data import load_dataset
    from ntkrobust.bridge.evaluation import robust_correct

    data = load_dataset("digits", classes=classes, n_train=10, n_test=4, seed=0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, len(classes))).eval()
    x = torch.as_tensor(data.x_test, dtype=torch.float32)
    with torch.no_grad():
        y = net(x).argmax(1)
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    with caplog.at_level("INFO", logger="ntkrobust"):
        kept = robust_correct(net, x, y, eps=0.001, channels=1, attacks=("autoattack",), seed=1, progress=False)
    assert kept["autoattack"].all()  # nothing fooled: every part ran on every point
    for part, total in loops.items():
        assert [(c, t) for _, c, t in _counts(caplog.messages, part)] == [(c, total) for c in range(1, total + 1)], part
    if len(classes) == 2:
        assert not _counts(caplog.messages, "FAB-T")
    assert any(m.startswith("AutoAttack APGD-CE: 20/20 iterations (100%)") for m in caplog.messages)


def test_square_counts_queries(shorter, caplog, monkeypatch):  # noqa: F811
    """BUG (fails on main until /tmp/mut14/fix.patch, ``_progress._plural``): Square's lines
    count its 300 queries as '300/300 querys'; the module docstring and the README say
    queries."""
    from ntkrobust import _progress
    from ntkrobust.bridge.evaluation import robust_correct

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(3, 1, 2, 2)
    y = net(x).argmax(1)
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    with caplog.at_level("INFO", logger="ntkrobust"):
        robust_correct(net, x, y, eps=0.001, channels=1, attacks=("autoattack",), autoattack_parts=["square"])
    assert any(m.startswith("AutoAttack SQUARE: 1/300 queries (0%)") for m in caplog.messages), caplog.messages[:3]


def test_each_batch_is_a_run_seeded_by_its_first_row_and_the_logger_is_given_back(monkeypatch, caplog):
    """``autoattack_correct`` on 10 points in batches of 4: three runs seeded 7, 11, 15 (seed + the
    batch's first row, as its docstring and ``bridge.evaluation``'s say), each line of AutoAttack's
    own naming its points; on 4 points in one batch, one run seeded 7 whose line names no points.
    AutoAttack's logger ("auto-attack") is left as it was found (propagating, at WARNING). The
    runs themselves are replaced by one that records its seed and says one line."""
    import logging

    from pyautoattack import AutoAttack

    from ntkrobust.bridge._autoattack import autoattack_correct

    seeds = []

    def run_standard_evaluation(self, x, y, batch_size):
        seeds.append(self.seed)
        logging.getLogger("auto-attack").debug("robust accuracy after APGD-CE: 50.00%")
        return x.clone(), None

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", run_standard_evaluation)
    logger = logging.getLogger("auto-attack")
    # a state of the user's own, set here: an earlier run that failed to restore it cannot hide here
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.WARNING)
    before = (logger.level, logger.propagate, list(logger.handlers))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(10, 1, 2, 2)
    y = net(x).argmax(1)
    kw = {"classes": 3, "eps": 0.1, "seed": 7, "batch_size": 4, "parts": ["apgd-ce"], "across_processes": False}
    with caplog.at_level("INFO", logger="ntkrobust"):
        assert autoattack_correct(net, x, y, **kw).all()
        assert autoattack_correct(net, x[:4], y[:4], **kw).all()
    assert seeds == [7, 11, 15, 7]
    said = [m for m in caplog.messages if "robust accuracy after" in m]
    assert said == [
        "AutoAttack, points 0-3 of 10: robust accuracy after APGD-CE: 50.00%",
        "AutoAttack, points 4-7 of 10: robust accuracy after APGD-CE: 50.00%",
        "AutoAttack, points 8-9 of 10: robust accuracy after APGD-CE: 50.00%",
        "AutoAttack: robust accuracy after APGD-CE: 50.00%",
    ]
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


# --- refusals naming the classes a checkpoint was trained on ---------------------------------------


def test_linearize_from_a_net_of_another_task_names_the_classes_it_was_trained_on(tmp_path, assert_refused):
    """``train --linearize-from`` a 2-output checkpoint that records the classes (3, 8), on a
    3-class task: refused before anything is written, naming those classes and the flag to give
    (the same line ``entk --checkpoint`` gives; this path's own call was untested)."""
    from test_trained_classes import _checkpoint

    net = _checkpoint(tmp_path / "net.pt", epoch=1, history={"class_names": ["3", "8"], "epochs": []})
    argv = ["train", "--linearize-from", net, "--data", "digits", "--classes", "0,1,2", "--epochs", "1"]
    assert_refused(
        [*argv, "--track-kernel", "0", "--quiet"],
        f"--linearize-from {net} has 2 outputs, the data has 3 classes; it was trained on the classes (3, 8): "
        "give that task's --classes",
    )


def test_a_checkpoint_of_more_than_ten_classes_is_named_by_its_first_ten_and_its_count():
    """``trained_on`` of a 12-class checkpoint (CIFAR-100's hundred would run on for a line): the
    first ten names, then '... (12 classes)'; with as many outputs as names only (11 outputs for 12
    names: nothing)."""
    from ntkrobust.bridge.checkpoint import trained_on

    names = [f"c{i}" for i in range(12)]
    assert trained_on(names, 12) == (
        "; it was trained on the classes (c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, ... (12 classes)): "
        "give that task's --classes"
    )
    assert trained_on(names, 11) == "" and trained_on(None, 12) == ""


# --- kernels.machine: InputRangeWarning ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "white"), [(3.0, 203.0, "255"), (1.0, 1001.0, "65535"), (5.0, 70005.0, "70005")]
)
def test_the_warning_says_the_range_of_the_inputs_and_the_white_above_it(digits_binary, low, high, white):
    """Training inputs stretched to [low, high] (none at 0): the warning gives their range as it
    is (its low end too, not a 0 assumed) and the smallest white of 255, 65535 at or above the
    largest value, else that value itself."""
    import re

    from ntkrobust.kernels import InputRangeWarning, fit_kernel_machine, get_architecture

    x, y = digits_binary.x_train[:12], digits_binary.y_train[:12]
    stretched = low + (x - x.min()) / (x.max() - x.min()) * (high - low)
    said = f"x_train runs from {low:g} to {high:g}: if these are images, divide them by {white} (pixel units"
    with pytest.warns(InputRangeWarning, match=re.escape(said)):
        fit_kernel_machine(get_architecture("fc2"), stretched, y)
