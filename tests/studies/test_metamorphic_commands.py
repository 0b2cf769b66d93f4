"""Metamorphic tests of the commands' records, run through ``ntkrobust.cli.main`` in-process.

Each test runs one command twice (or more) on inputs that are a transformation of each other and
checks the relation the docstrings imply between the results folders:

- ``evaluate NET_A NET_B`` against ``evaluate NET_B NET_A``, against a symlink and a renamed copy
  of the same files, and against the same weights as a state dict and a TorchScript program: the
  per-net numbers follow the nets (each net's attacks are seeded by ``--seed`` alone,
  ``bridge.evaluation.robust_correct``), only the labels follow the file names; ``--attacks`` listed
  in another order: the same verdicts per attack;
- a flag set to its default explicitly against the flag left out (``evaluate``, ``transfer``,
  ``attack``, ``features``, ``entk``, ``two-layer``): the same config and numbers (the settings
  hold the default; the refusals of unread flags compare with the default);
- ``entk --split test`` on a data file whose test points are permuted: the kernel permuted on both
  point axes, the same metrics (Θ(x_i, x_j) depends on the two points only); ``entk --checkpoint``
  of a training run's epoch: the kernel that run tracked on its probe at that epoch;
- ``make-npz`` then ``entk`` / ``attack --data FILE`` against the command with the same selection
  flags (README: the file "freezes any data selection"): the same files; a data file's
  ``--classes`` in another order: the same examples (the machine's outputs permuted with the
  targets, or the binary signs flipped);
- ``attack --method fgsm`` on permuted test points: the examples permuted;
- ``attack`` / ``features`` / ``two-layer`` run twice into two folders, the second time with the
  flags in another order and the Gram cache hit (or off): byte-identical arrays and an equal record
  but for the timings, the argv and the cache outcome; a second ``two-layer`` net leaves the
  first's numbers.

Tolerances: exact where both runs do the same operations on the same numbers; 1e-10 relative on
float64 kernel metrics where only the order of the sums changes; 1e-6 on FGSM examples (float32
pixels) and on a float32 kernel checked against its stored float64 copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ntkrobust import cli
from ntkrobust.attacks import standard_threat

#: keys of a record that may differ between two runs of the same computation: wall-clock times, the
#: command line as typed, and whether the Gram cache was hit (``kernels.gram.CacheOutcome``)
VOLATILE = {"seconds", "argv", "gram_cache"}
TASK = ["--classes", "3,8", "--n-train", "40", "--n-test", "16"]


def _run(argv) -> Path:
    """``cli.main(argv)`` must succeed; the folder of ``--out``."""
    argv = [str(a) for a in argv]
    assert cli.main(argv) == 0, argv
    return Path(argv[argv.index("--out") + 1])


def _record(folder: Path, name: str = "results.json") -> dict:
    return json.loads((folder / name).read_text())


def _stable(value):
    """``value`` without the ``VOLATILE`` keys, at any depth."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as file:
        return {key: file[key] for key in file.files}


def _assert_same_arrays(one: Path, two: Path) -> None:
    """Two .npz files holding the same keys, dtypes and bytes."""
    mine, theirs = _arrays(one), _arrays(two)
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert mine[key].dtype == theirs[key].dtype and mine[key].shape == theirs[key].shape, key
        assert mine[key].tobytes() == theirs[key].tobytes(), key


def _shuffled_pairs(argv: list[str]) -> list[str]:
    """The ``--flag value`` pairs of ``argv`` (a command first, no lone switches) in reverse order."""
    command, rest = argv[0], argv[1:]
    pairs = [rest[i : i + 2] for i in range(0, len(rest), 2)]
    assert all(p[0].startswith("--") and not p[1].startswith("--") for p in pairs), rest
    return [command, *[token for pair in reversed(pairs) for token in pair]]


# -- evaluate: the numbers follow the nets ---------------------------------------------------------


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, small_training):
    """Two checkpoints of a small fc2 standard run (epochs 1 and 2, told apart by their accuracy),
    its kernels tracked on a probe of 20 training points (``SMALL_TRAINING``)."""
    from ntkrobust.studies import DataSettings, train

    out = tmp_path_factory.mktemp("metamorphic-evaluate") / "run"
    train.run(small_training(out, data=DataSettings(n_train=100, n_test=30), epochs=2))
    return out / "checkpoints" / "epoch_001.pt", out / "checkpoints" / "epoch_002.pt"


DIGITS = ["--n-train", "100", "--n-test", "30"]
#: a radius at which PGD-20 takes some points and not others, so a point's verdict depends on its
#: random start: a run that seeded a net's or an attack's start otherwise is seen
EVALUATE = [*DIGITS, "--attacks", "pgd-20", "--eps", "0.04"]


def _by_label(folder: Path) -> dict[str, dict]:
    return {row["label"]: row for row in _record(folder)["nets"]}


def test_evaluate_numbers_follow_the_nets_in_any_order_and_under_any_file_name(two_checkpoints, tmp_path):
    """``evaluate``: each net is attacked alone (``robust_correct(model, ..., seed=--seed)``, a
    fresh seeded random start per net), so listing the nets B, A instead of A, B reorders the rows
    and changes no net's numbers; a net named through a symbolic link or as a renamed copy is the
    same file's net: its numbers are the original's, and its label is the copy's stem (outside a
    run folder: ``bridge.targets._label``) or, for a link, the run and epoch it points to. The two
    checkpoints differ in their accuracy, so a row that took the other net's numbers is seen."""
    first, second = two_checkpoints
    ab = _by_label(_run(["evaluate", first, second, *EVALUATE, "--out", tmp_path / "ab"]))
    ba_record = _record(_run(["evaluate", second, first, *EVALUATE, "--out", tmp_path / "ba"]))
    ba = {row["label"]: row for row in ba_record["nets"]}
    assert [row["label"] for row in ba_record["nets"]] == ["run epoch 2", "run epoch 1"]
    assert ab == ba
    assert ab["run epoch 1"]["accuracy"] != ab["run epoch 2"]["accuracy"]  # not equal by chance
    link, copy = tmp_path / "link.pt", tmp_path / "elsewhere" / "copy.pt"
    link.symlink_to(second)
    copy.parent.mkdir()
    shutil.copyfile(first, copy)
    renamed = _by_label(_run(["evaluate", link, copy, *EVALUATE, "--out", tmp_path / "renamed"]))
    assert set(renamed) == {"run epoch 2", "copy"}  # a link to a run's checkpoint names it (ba89180)
    for name, original in (("run epoch 2", "run epoch 2"), ("copy", "run epoch 1")):
        assert renamed[name]["accuracy"] == ab[original]["accuracy"], name
        assert renamed[name]["masking_suspected"] == ab[original]["masking_suspected"], name


def test_evaluate_gives_a_checkpoint_its_state_dict_and_its_torchscript_program_the_same_numbers(
    two_checkpoints, tmp_path
):
    """``evaluate``'s nets "are named as transfer's targets": a checkpoint, the same weights as
    ``MODEL:WIDTH=STATE_DICT`` (the registry model rebuilt for the data) and, trusted, the same net
    as a TorchScript program compute the same logits (``bridge.targets``), so each attack's
    verdicts and the accuracies are the same for the three; only the label and the description
    (the kind of file) differ."""
    import torch

    from ntkrobust.bridge.checkpoint import load_checkpoint

    _, second = two_checkpoints
    net, config, _ = load_checkpoint(second)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    torch.jit.save(torch.jit.script(net.eval()), tmp_path / "program.pt")
    state_dict = f"{config.model}:{config.width}={tmp_path / 'weights.pt'}"
    argv = ["evaluate", second, state_dict, tmp_path / "program.pt", *EVALUATE, "--trust-model-code"]
    rows = _record(_run([*argv, "--out", tmp_path / "out"]))["nets"]
    assert [row["label"] for row in rows] == ["run epoch 2", "weights", "program"]
    assert [row["net"]["kind"] for row in rows[1:]] == ["state-dict", "torchscript"]
    for row in rows[1:]:
        assert row["accuracy"] == rows[0]["accuracy"], row["label"]
    assert 0 < rows[0]["accuracy"]["pgd-20"] < rows[0]["accuracy"]["clean"]


def test_evaluate_flags_set_to_their_defaults_change_no_config_and_no_number(two_checkpoints, tmp_path):
    """``evaluate --eps 0.3 --masking-gap 0.1 --batch-size 250 --seed 0`` on grey images is the run
    without those flags: 0.3 is the standard grey radius (``attacks.standard_threat``), the others
    are ``EvaluateSettings``' defaults. The refusals of ``--masking-gap`` / ``--batch-size`` without
    the attacks that read them compare the value with the default (so an explicit default is no
    refusal), and the config records what ran, not what was typed."""
    first, _ = two_checkpoints
    eps = standard_threat(1, "linf")[0]
    argv = ["evaluate", first, *DIGITS, "--attacks", "pgd-20"]
    plain = _record(_run([*argv, "--out", tmp_path / "plain"]))
    explicit_argv = ["--eps", eps, "--masking-gap", "0.1", "--batch-size", "250", "--seed", "0"]
    explicit = _record(_run([*argv, *explicit_argv, "--out", tmp_path / "explicit"]))
    assert _stable(plain) == _stable(explicit)
    assert plain["config"]["eps"] == eps and plain["config"]["masking_gap"] is None


def test_evaluate_attacks_listed_in_another_order_give_each_attack_the_same_verdicts(two_checkpoints, tmp_path):
    """``robust_correct`` runs each attack of ``--attacks`` from its own seed (``seed=--seed`` for
    every attack, none drawing from a generator another attack advanced), so ``--attacks
    cw-100,pgd-20`` gives every attack, the worst case (a conjunction over them) and the masking
    flag the numbers of ``--attacks pgd-20,cw-100``; only the recorded list keeps the order given."""
    _, second = two_checkpoints
    data = [*DIGITS, "--eps", "0.08"]  # PGD-20 from seed 0 takes one point fewer than from seed 1 here
    one = _record(_run(["evaluate", second, *data, "--attacks", "pgd-20,cw-100", "--out", tmp_path / "one"]))
    two = _record(_run(["evaluate", second, *data, "--attacks", "cw-100,pgd-20", "--out", tmp_path / "two"]))
    assert one["config"].pop("attacks") == ["pgd-20", "cw-100"] and two["config"].pop("attacks") == ["cw-100", "pgd-20"]
    assert _stable(one) == _stable(two)
    assert one["nets"][0]["accuracy"]["clean"] > one["nets"][0]["accuracy"]["worst_case"]  # the attacks took points


def test_transfer_flags_set_to_their_defaults_change_no_config_and_no_number(two_checkpoints, tmp_path):
    """``transfer --kernel-arch fc2 --kernel-n N_TRAIN --surrogate-ridge 0.01 --surrogate-n 500
    --surrogate-nets 1 --method fgsm --norm linf`` is ``transfer`` without them: fc2 is the default
    machine without surrogates, ``training_subset`` returns the data itself for n = every training
    point, and the surrogates' flags at their defaults are "not given" (``changed_flags``), so they
    are not refused without ``--surrogate``."""
    first, second = two_checkpoints
    argv = ["transfer", "--target", first, "--source", second, *DIGITS, "--eps", "0.2"]
    plain = _record(_run([*argv, "--out", tmp_path / "plain"]))
    defaults = ["--kernel-arch", "fc2", "--kernel-n", "100", "--surrogate-ridge", "0.01", "--surrogate-n", "500"]
    defaults += ["--surrogate-nets", "1", "--method", "fgsm", "--norm", "linf"]
    explicit = _record(_run([*argv, *defaults, "--out", tmp_path / "explicit"]))
    assert _stable(plain) == _stable(explicit)
    names = ["run epoch 1", "run epoch 2"]  # the target's own examples attack the others too
    assert plain["matrix"]["columns"] == ["clean", "random sign", "own white-box", "NTK fc2", *names]


# -- entk: the kernel follows the points -------------------------------------------------------------


#: the memory budget is given: by default it is 40% of the free memory, recorded, and differs run to run
ENTK = ["--model", "fc1", "--width", "8", "--dtype", "float64", "--kind", "full", "--memory-budget", "1024"]


def _permuted_file(tmp_path: Path, order_seed: int) -> tuple[Path, Path]:
    """A digits 3-vs-8 data file, and a copy whose test points are permuted (train points kept)."""
    from ntkrobust.bridge.data import load_dataset, save_dataset_npz

    data = load_dataset("digits", classes=[3, 8], n_train=20, n_test=12, seed=4)
    plain = tmp_path / "plain.npz"
    save_dataset_npz(data, plain)
    order = np.random.default_rng(order_seed).permutation(data.x_test.shape[0])
    assert not np.array_equal(order, np.arange(order.size))
    arrays = _arrays(plain) | {"x_test": data.x_test[order], "y_test": data.y_test[order]}
    permuted = tmp_path / "permuted.npz"
    np.savez_compressed(permuted, **arrays)
    return plain, permuted


def _matching(x_one: np.ndarray, x_two: np.ndarray) -> np.ndarray:
    """``p`` with ``x_two[p[i]] == x_one[i]`` (every point distinct)."""
    where = {row.tobytes(): j for j, row in enumerate(x_two.reshape(len(x_two), -1))}
    assert len(where) == len(x_two)
    return np.array([where[row.tobytes()] for row in x_one.reshape(len(x_one), -1)])


def test_entk_flags_set_to_their_defaults_change_no_config_and_no_number(tmp_path):
    """``entk --model fc2 --kind trace --split train --n 100 --dtype float32 --seed 0`` are
    ``EntkSettings``' defaults (the default network is fc2 at initialisation), so the run writes the
    kernel and the record of ``entk`` without them."""
    argv = ["entk", "--n-train", "100", "--width", "16", "--memory-budget", "1024"]
    plain = _run([*argv, "--out", tmp_path / "plain"])
    defaults = ["--model", "fc2", "--kind", "trace", "--split", "train", "--n", "100", "--dtype", "float32"]
    explicit = _run([*argv, *defaults, "--seed", "0", "--out", tmp_path / "explicit"])
    _assert_same_arrays(plain / "kernel.npz", explicit / "kernel.npz")
    record = _record(plain, "metrics.json")
    assert _stable(record) == _stable(_record(explicit, "metrics.json"))
    assert record["network"]["model"] == "fc2" and record["shape"] == [100, 100]


def test_entk_of_a_checkpoint_is_the_kernel_its_training_run_tracked_at_that_epoch(two_checkpoints, tmp_path):
    """``train --track-kernel 20`` tracks the C-NTK's class blocks on a probe of 20 training points
    drawn by ``balanced_indices(y_train, classes, 20, --seed)`` and stores their mean, the trace
    kernel (``bridge.experiment``, ``bridge.tracking``); ``entk --checkpoint`` of that run's epoch,
    with the run's data flags, ``--n 20`` and ``--kind class-blocks``, draws its points with the
    same call (``entk._points``) from the same split and computes the same kernel of the same net:
    the probe's points, its labels and, exactly, the tracked kernel and its metrics
    (README: the run's data flags score "the same test points that run did"; the same holds of the
    training split's probe)."""
    run = two_checkpoints[0].parent.parent
    probe = _arrays(run / "kernels" / "probe.npz")
    tracked = {entry["epoch"]: entry for entry in json.loads((run / "history.json").read_text())["kernels"]}
    for epoch, checkpoint in enumerate(two_checkpoints, start=1):
        argv = ["entk", "--checkpoint", checkpoint, *DIGITS, "--n", "20", "--kind", "class-blocks"]
        out = _run([*argv, "--memory-budget", "1024", "--out", tmp_path / f"epoch-{epoch}"])
        kernel = _arrays(out / "kernel.npz")
        np.testing.assert_array_equal(kernel["x"], probe["x"])
        np.testing.assert_array_equal(kernel["y"], probe["y"])
        entry = tracked[float(epoch)]
        stored = _arrays(run / entry["file"])["clean"]
        np.testing.assert_allclose(kernel["kernel"].astype(np.float64).mean(axis=-1), stored, rtol=1e-6, atol=0)
        metrics = _record(out, "metrics.json")["metrics"]
        for key in ("effective_rank", "centered_alignment", "mean_specialization"):
            assert metrics[key] == pytest.approx(entry["clean"][key], rel=1e-5), (epoch, key)
    assert not np.allclose(_arrays(run / tracked[1.0]["file"])["clean"], _arrays(run / tracked[2.0]["file"])["clean"])


def test_entk_on_permuted_points_is_the_permuted_kernel_with_the_same_metrics(tmp_path):
    """``entk --split test --n N`` with N every test point of the file takes the same set of points
    whatever their order in the file; Θ(x_i, x_j)_{cc'} = ⟨∂f_c(x_i), ∂f_c'(x_j)⟩ depends on the
    two points alone (``bridge.entk.empirical_ntk``), so the (N, N, C, C) kernel of the permuted
    file is the first kernel with rows and columns permuted, the labels follow their points, and
    every metric (effective rank, concentration, centred alignment, specialization: functions of
    the kernel's spectrum and of the labels' blocks) and the clean accuracy are unchanged. The net
    is the same (its initialisation depends on the seed and the task only)."""
    plain, permuted = _permuted_file(tmp_path, 1)
    args = [*ENTK, "--split", "test", "--n", "12"]
    one = _run(["entk", "--data", plain, *args, "--out", tmp_path / "one"])
    two = _run(["entk", "--data", permuted, *args, "--out", tmp_path / "two"])
    a, b = _arrays(one / "kernel.npz"), _arrays(two / "kernel.npz")
    p = _matching(a["x"], b["x"])
    assert not np.array_equal(p, np.arange(p.size))  # the runs did see the points in other orders
    np.testing.assert_array_equal(b["y"][p], a["y"])
    assert a["kernel"].shape == (12, 12, 2, 2)
    np.testing.assert_allclose(b["kernel"][np.ix_(p, p)], a["kernel"], rtol=1e-12, atol=1e-12)
    mine, theirs = _record(one, "metrics.json"), _record(two, "metrics.json")
    assert mine["accuracy_clean"] == theirs["accuracy_clean"]
    assert mine["metrics"].keys() == theirs["metrics"].keys()
    for key, value in mine["metrics"].items():
        assert np.asarray(theirs["metrics"][key], dtype=float) == pytest.approx(
            np.asarray(value, dtype=float), rel=1e-10, abs=1e-12
        ), key


def test_entk_on_a_make_npz_file_is_entk_with_the_same_selection_flags(tmp_path):
    """README: ``make-npz`` "freezes any data selection": ``entk --data FILE`` on the file written
    by ``make-npz --classes 8,3 --n-train 20 --n-test 12 --seed 1`` draws its ``--n`` points from the
    same training split with the same seed, on the same task (8 first), as ``entk`` given those
    selection flags itself: the same points, net, kernel and metrics; only the data's name differs.
    (The dataset itself is pinned by ``test_make_npz_freezes_the_selection_it_resolved``; this is
    the command that reads it.)"""
    selection = ["--classes", "8,3", "--n-train", "20", "--n-test", "12", "--seed", "1"]
    frozen = _run(["make-npz", *selection, "--out", tmp_path / "frozen.npz"])
    args = [*ENTK, "--n", "10", "--seed", "1"]
    direct = _run(["entk", *selection, *args, "--out", tmp_path / "direct"])
    via_file = _run(["entk", "--data", frozen, *args, "--out", tmp_path / "via-file"])
    _assert_same_arrays(direct / "kernel.npz", via_file / "kernel.npz")
    mine, theirs = _stable(_record(direct, "metrics.json")), _stable(_record(via_file, "metrics.json"))
    assert mine["config"].pop("data") == "digits" and theirs["config"].pop("data") == str(frozen)
    for record in (mine, theirs):
        record.pop("dataset")
    assert mine == theirs
    assert mine["config"]["classes"] == [8, 3]


# -- the same command twice: identical files ---------------------------------------------------------


ATTACK = ["attack", *TASK, "--method", "pgd", "--steps", "3", "--eps", "0.1"]


def test_attack_twice_with_its_flags_reordered_and_the_cache_off_writes_the_same_files(tmp_path):
    """``attack`` is seeded (``--seed``: the subsets and PGD's random start) and the Gram matrix of a
    cache hit is the matrix computed (``kernels.gram``: a hit is a verified entry), so a second
    run with the flags in another order (argparse reads them into the same settings) and a third
    with ``--no-cache`` write byte-identical ``adversarial.npz`` files and the same record but for
    the timings, the argv and the cache outcome."""
    argv = [*ATTACK, "--step", "0.05"]  # 3 steps reach the whole eps: the attack takes some points
    first = _run([*argv, "--out", tmp_path / "first"])
    again = _run([*_shuffled_pairs(argv), "--out", tmp_path / "again"])
    uncached = _run([*argv, "--no-cache", "--out", tmp_path / "uncached"])
    records = [_record(folder) for folder in (first, again, uncached)]
    assert records[1]["kernel"]["gram_cache"] == "hit" and records[0]["argv"] != records[1]["argv"]
    for folder, record in ((again, records[1]), (uncached, records[2])):
        _assert_same_arrays(first / "adversarial.npz", folder / "adversarial.npz")
        assert _stable(record) == _stable(records[0])
    assert 0 < records[0]["robust_accuracy"] < records[0]["clean_accuracy"]  # the attack did something


def test_fgsm_attack_on_permuted_test_points_writes_the_permuted_examples(tmp_path):
    """``attack --method fgsm`` on a data file whose test points are permuted: the NTK machine is
    fitted on the same training points, and each test point's FGSM example x + ε·sign(∇ℓ(x)) is
    a function of that point alone (eq. 8; no random start), so ``adversarial.npz`` holds the same
    examples permuted and the clean and robust accuracies (counts over points) are unchanged."""
    plain, permuted = _permuted_file(tmp_path, 2)
    argv = ["attack", "--eps", "0.1"]
    one = _run([*argv, "--data", plain, "--out", tmp_path / "one"])
    two = _run([*argv, "--data", permuted, "--out", tmp_path / "two"])
    a, b = _arrays(one / "adversarial.npz"), _arrays(two / "adversarial.npz")
    p = _matching(a["x"], b["x"])
    assert not np.array_equal(p, np.arange(p.size))
    np.testing.assert_array_equal(b["y"][p], a["y"])
    np.testing.assert_allclose(b["x_adv"][p], a["x_adv"], rtol=0, atol=1e-6)
    mine, theirs = _record(one), _record(two)
    for key in ("clean_accuracy", "robust_accuracy"):
        assert mine[key] == theirs[key], key
    assert mine["robust_accuracy"] < mine["clean_accuracy"]


def test_attack_on_a_make_npz_file_of_a_test_split_selection_is_attack_with_that_selection(tmp_path):
    """README: ``make-npz`` "freezes any data selection", ``--from-test-split`` (the official test
    split cut into train and test) included: ``attack --data FILE`` writes the examples of
    ``attack --from-test-split --classes 3,8 --n-train 40``, byte for byte, and the same numbers;
    only the data's name and ``from_test_split`` differ in the record."""
    selection = ["--classes", "3,8", "--from-test-split", "--n-train", "40"]
    frozen = _run(["make-npz", *selection, "--out", tmp_path / "frozen.npz"])
    argv = [*ATTACK[:1], *ATTACK[7:], "--step", "0.05"]
    direct = _run([*argv, *selection, "--out", tmp_path / "direct"])
    via_file = _run([*argv, "--data", frozen, "--out", tmp_path / "via-file"])
    _assert_same_arrays(direct / "adversarial.npz", via_file / "adversarial.npz")
    mine, theirs = _stable(_record(direct)), _stable(_record(via_file))
    assert (mine["config"].pop("data"), theirs["config"].pop("data")) == ("digits", str(frozen))
    assert (mine["config"].pop("from_test_split"), theirs["config"].pop("from_test_split")) == (True, False)
    for record in (mine, theirs):
        record.pop("dataset")
    assert mine == theirs


@pytest.mark.parametrize(("classes", "reordered"), [("3,8", "8,3"), ("0,1,2", "2,0,1")])
def test_attack_on_a_file_with_its_classes_in_another_order_writes_the_same_examples(tmp_path, classes, reordered):
    """``--classes`` given with a data file picks the same records in file order (README: "a
    ``--classes`` given with the file still picks its own"; a selection by set), so reordering them
    only permutes the machine's one-hot outputs (binary: flips the ±1 signs, the first class −1) and
    the targets with them: the loss, its input gradient and every prediction are unchanged
    (``kernels.machine``), and PGD's examples, seeded by ``--seed``, are the same bytes. The record
    differs in the order of its classes and of their names only (config and dataset)."""
    frozen = _run(["make-npz", "--classes", classes, "--n-train", "45", "--n-test", "30", "--out", tmp_path / "f.npz"])
    argv = [*ATTACK[:1], *ATTACK[7:], "--step", "0.05", "--data", frozen]
    one = _run([*argv, "--out", tmp_path / "one"])
    two = _run([*argv, "--classes", reordered, "--out", tmp_path / "two"])
    _assert_same_arrays(one / "adversarial.npz", two / "adversarial.npz")
    mine, theirs = _stable(_record(one)), _stable(_record(two))
    ids = {order: [int(c) for c in order.split(",")] for order in (classes, reordered)}
    names = dict(zip(ids[classes], mine["dataset"]["class_names"], strict=True))
    for record, order in ((mine, classes), (theirs, reordered)):  # the names follow their classes
        assert record["config"].pop("classes") == record["dataset"].pop("classes") == ids[order]
        assert record["dataset"].pop("class_names") == [names[c] for c in ids[order]]
    assert mine == theirs
    assert mine["robust_accuracy"] < mine["clean_accuracy"]


def test_attack_flags_set_to_their_defaults_change_no_config_and_no_number(tmp_path):
    """``--arch fc2 --time inf --ridge 0 --learning-rate 1 --gradient auto --precision float64
    --norm linf --seed 0`` are ``AttackSettings``' / ``MachineSettings``' defaults, and ``--step``
    equal to the standard step scaled to ``--eps`` (``attacks.spec.pgd_schedule``) is the step
    PGD takes without it: the same config and numbers. (``--learning-rate 1`` at ``--time inf`` is
    read as "not given": the refusal compares it with the default.)"""
    eps = 0.1
    std_eps, std_step, _ = standard_threat(1, "linf")
    step = std_step * eps / std_eps
    plain = _record(_run([*ATTACK, "--out", tmp_path / "plain"]))
    defaults = ["--arch", "fc2", "--time", "inf", "--ridge", "0", "--learning-rate", "1", "--gradient", "auto"]
    defaults += ["--precision", "float64", "--norm", "linf", "--seed", "0", "--step", repr(step)]
    explicit = _record(_run([*ATTACK, *defaults, "--out", tmp_path / "explicit"]))
    assert _stable(plain) == _stable(explicit)
    assert plain["config"]["step"] == step


def test_features_flags_set_to_their_defaults_change_no_config_and_no_number(tmp_path):
    """``features --arch fc2 --feature-attack fgsm --norm linf --top-k 5 --non-robust-below 0.05
    --image-index 0 --robust-steps 10 --seed 0`` are ``FeaturesSettings``' defaults (the robust-only
    kernels' steps: ``ROBUST_STEPS`` when not given, read here since ``--robust-r`` is given), so
    the run is the run without them: the same ``features.csv`` and record."""
    argv = ["features", *TASK, "--n-features", "5", "--eps", "0.1", "--robust-r", "1,2"]
    plain = _run([*argv, "--out", tmp_path / "plain"])
    defaults = ["--arch", "fc2", "--feature-attack", "fgsm", "--norm", "linf", "--top-k", "5"]
    defaults += ["--non-robust-below", "0.05", "--image-index", "0", "--robust-steps", "10", "--seed", "0"]
    explicit = _run([*argv, *defaults, "--out", tmp_path / "explicit"])
    assert (plain / "features.csv").read_bytes() == (explicit / "features.csv").read_bytes()
    assert _stable(_record(plain)) == _stable(_record(explicit))
    assert _record(plain)["config"]["robust_steps"] == 10


def test_features_twice_with_its_flags_reordered_and_the_cache_off_writes_the_same_files(tmp_path):
    """``features``: the eigen-decomposition, the feature attacks and the robust-only kernels' PGD
    are seeded by ``--seed`` (``kernels.features.feature_scores``, ``robust_only_kernels``), so a
    second run with the flags in another order (``--robust-r 2,1`` for ``1,2``: ``resolve_r`` takes
    them as a set) and a third without the Gram cache write the same
    ``features.csv`` and the same record but for the timings, the argv and the cache outcome."""
    argv = ["features", *TASK, "--n-features", "5", "--eps", "0.1", "--robust-r", "1,2", "--robust-steps", "2"]
    first = _run([*argv, "--out", tmp_path / "first"])
    reordered = _shuffled_pairs(argv)
    reordered[reordered.index("1,2")] = "2,1"  # a set of r values (``resolve_r`` sorts them)
    again = _run([*reordered, "--out", tmp_path / "again"])
    uncached = _run([*argv, "--no-cache", "--out", tmp_path / "uncached"])
    record = _record(first)
    assert record["architectures"]["fc2"]["robust_only"]  # the robust-only kernels ran
    for folder in (again, uncached):
        assert (folder / "features.csv").read_bytes() == (first / "features.csv").read_bytes()
        assert _stable(_record(folder)) == _stable(record)


def test_two_layer_twice_with_its_flags_reordered_writes_the_same_arrays_and_nets(tmp_path):
    """``two-layer``: every net is initialised and trained from ``--seed`` + i, full batch on the
    CPU, and the NTK machine is deterministic, so a second run with the flags in another order
    writes the same ``gradients.npz``, the same weights in every checkpoint and the same record but
    for the timings and the argv."""
    import torch

    argv = ["two-layer", *TASK, "--width", "40", "--epochs", "4", "--eps", "0.2", "--device", "cpu"]
    first = _run([*argv, "--out", tmp_path / "first"])
    again = _run([*_shuffled_pairs(argv), "--out", tmp_path / "again"])
    _assert_same_arrays(first / "gradients.npz", again / "gradients.npz")
    record = _record(first)
    assert _stable(_record(again)) == _stable(record)
    (net,) = record["nets"]
    mine = torch.load(first / net["checkpoint"], map_location="cpu", weights_only=True)
    theirs = torch.load(again / net["checkpoint"], map_location="cpu", weights_only=True)
    state = "state_dict"
    assert mine[state].keys() == theirs[state].keys()
    for key in mine[state]:
        assert torch.equal(mine[state][key], theirs[state][key]), key


def test_two_layer_flags_set_to_their_defaults_change_no_config_and_no_number(tmp_path):
    """``two-layer --nets 1 --lr 0.01 --anchor-epoch 1 --method fgsm --picture-index 0`` at 4
    epochs are the defaults (the anchor: ``max(1, round(epochs / 100))``, ``_check``), so the run
    writes the arrays and the record of the run without them."""
    argv = ["two-layer", *TASK, "--width", "40", "--epochs", "4", "--eps", "0.2", "--device", "cpu"]
    plain = _run([*argv, "--out", tmp_path / "plain"])
    defaults = ["--nets", "1", "--lr", "0.01", "--anchor-epoch", "1", "--method", "fgsm", "--picture-index", "0"]
    explicit = _run([*argv, *defaults, "--out", tmp_path / "explicit"])
    _assert_same_arrays(plain / "gradients.npz", explicit / "gradients.npz")
    record = _record(plain)
    assert _stable(record) == _stable(_record(explicit))
    assert record["alignment"]["anchor_epoch"] == 1


def test_a_second_two_layer_net_leaves_the_first_nets_numbers(tmp_path):
    """``two-layer --nets 2`` trains the nets of seeds s and s + 1; the epoch ↔ t alignment is
    fixed by the first width's first seed (``bridge.two_layer.two_layer_experiment``: the anchor
    net), and every net is trained and compared on its own, so the net of seed s has the numbers
    and gradient pictures it has with ``--nets 1``, and the NTK's (``kernel``) are unchanged."""
    argv = ["two-layer", *TASK, "--width", "40", "--epochs", "4", "--eps", "0.2", "--device", "cpu"]
    one = _run([*argv, "--out", tmp_path / "one"])
    two = _run([*argv, "--nets", "2", "--out", tmp_path / "two"])
    mine, theirs = _record(one), _record(two)
    name = "width 40, seed 0"
    assert set(theirs["clean_accuracy"]) == {name, "width 40, seed 1"}
    assert mine["nets"][0] == theirs["nets"][0]
    assert mine["alignment"] == theirs["alignment"] and mine["kernel"] == theirs["kernel"]
    for key, values in mine.items():
        if isinstance(values, dict) and name in values:
            assert values[name] == theirs[key][name], key
    a, b = _arrays(one / "gradients.npz"), _arrays(two / "gradients.npz")
    for key in ("image", "epochs", "kernel", "net_w40_s0"):
        assert a[key].tobytes() == b[key].tobytes(), key
    assert "net_w40_s1" in b
