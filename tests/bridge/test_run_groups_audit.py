"""Audit of ``bridge.run_groups`` against hand-written run folders: seed groups, the mean ± std
over seeds, the kernel distance to a baseline run, the accuracy of networks spawned from a
parent's checkpoint (LOO fig. 2) and the cost of a clean-then-AT switch (RAT sec. 5, table 1).

The independent route: every run folder is written here by hand with known numbers (epoch
records, seconds, accuracies, kernels), and every expected value is computed here in numpy from
those numbers (sums, ``np.mean``, ``np.std(ddof=1)``, 1 − ⟨K₁, K₂⟩ / (‖K₁‖ ‖K₂‖)), never by
the code under test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.bridge import run_groups
from ntkrobust.bridge.runs import RunError, load_run
from ntkrobust.kernels.metrics import kernel_distance

TOL = 1e-12  # the summaries add and divide a handful of float64 numbers


def _record(epoch, mode, train_seconds, test_clean, test_pgd, *, evaluate=100.0, full=None, batch=None):
    """An epoch record as ``bridge.experiment`` writes it; ``batch``: (clean, pgd) under batch
    statistics; ``full``: the test PGD of a full evaluation of 7 steps."""
    scores = {"running": {"train_clean": 0.5, "train_pgd": 0.25, "test_clean": test_clean, "test_pgd": test_pgd}}
    if batch is not None:
        scores["batch"] = {"train_clean": 0.5, "train_pgd": 0.25, "test_clean": batch[0], "test_pgd": batch[1]}
    record = {
        "epoch": epoch,
        "step": 10 * epoch,
        "mode": mode,
        "lr": None if mode == "init" else 0.1,
        "train_loss": None if mode == "init" else 1.0,
        "accuracy": scores,
        # evaluation and tracking seconds far from the training ones: only seconds.train counts
        "seconds": {"train": train_seconds, "track": 50.0, "evaluate": evaluate},
    }
    if full is not None:
        record["full_evaluation"] = {
            "steps": 7,
            "step": 0.01,
            "accuracy": {mode_: {"train_pgd": 0.0, "test_pgd": full} for mode_ in scores},
            "seconds": 1.0,
        }
    return record


def _write_run(path, records, *, mode="standard", switch_epoch=None, batchnorm=("running",), linearization=None,
               label=None, kernels=(), steps_per_epoch=10, probe_x=None):  # fmt: skip
    """A run folder: ``history.json`` with ``records`` and, for ``kernels`` [(step, clean,
    adversarial)], the kernel files (no AE-NTK where ``adversarial`` is None) and a probe."""
    path = Path(path)
    (path / "kernels").mkdir(parents=True, exist_ok=True)
    history = {
        "command": "train",
        "label": label or path.name,
        "config": {
            "model": {"model": "fc2", "num_classes": 2},
            "train": {"mode": mode, "switch_epoch": switch_epoch, "epochs": len(records) - 1},
            "tracking": {"batchnorm": list(batchnorm), "steps": 3},
            "linearization": linearization,
        },
        "class_names": ["a", "b"],
        "steps_per_epoch": steps_per_epoch,
        "epochs": records,
        "kernels": [],
    }
    if kernels:
        n = kernels[0][1].shape[0]
        x = np.linspace(0, 1, n * 4).reshape(n, 1, 2, 2) if probe_x is None else probe_x
        np.savez(path / "kernels" / "probe.npz", x=x, y=np.arange(n) % 2, targets=np.arange(n) % 2)
    for step, clean, adversarial in kernels:
        name = f"kernels/step_{step:06d}.npz"
        np.savez(path / name, clean=clean, **({} if adversarial is None else {"adversarial": adversarial}))
        history["kernels"].append({"step": step, "epoch": step / steps_per_epoch, "file": name})
    (path / "history.json").write_text(json.dumps(history))
    return path


def _group(path, label="g"):
    return run_groups.RunGroup(Path(path), label, [load_run(path, kernels=False)])


def _seed_group(path, seeds, runs, label):
    return run_groups.RunGroup(Path(path), label, [load_run(run, kernels=False) for run in runs], list(seeds))


# -- the training seconds of clean and adversarial epochs (RAT sec. 5) ----------------------------


def _switched_records(clean, adversarial, pgd_last, *, init_train=0.0):
    """init, then clean epochs (mode standard) then PGD ones, with these training seconds."""
    records = [_record(0, "init", init_train, 0.1, 0.0)]
    modes = ["standard"] * len(clean) + ["pgd"] * len(adversarial)
    for epoch, (mode, seconds) in enumerate(zip(modes, [*clean, *adversarial], strict=True), start=1):
        last = epoch == len(modes)
        records.append(_record(epoch, mode, seconds, 0.5 + 0.01 * epoch, pgd_last if last else 0.05 * epoch))
    return records


def test_training_seconds_count_clean_and_adversarial_epochs_apart(tmp_path):
    """The init record counts in neither; 'standard' epochs are clean, every other mode is
    adversarial; the seconds are ``seconds.train`` summed, never the evaluation's."""
    records = _switched_records([1.0, 1.5], [5.0, 7.0, 9.0], 0.3)
    records[0]["seconds"]["train"] = 123.0  # an init record never trains: must not count at all
    run = load_run(_write_run(tmp_path / "r", records, mode="pgd", switch_epoch=2), kernels=False)
    spent = run_groups._training_seconds(run)
    assert spent == {"seconds_clean": 2.5, "seconds_adversarial": 21.0, "epochs_clean": 2, "epochs_adversarial": 3}


def test_a_fgsm_epoch_is_adversarial(tmp_path):
    records = [
        _record(0, "init", 0.0, 0.1, 0.0),
        _record(1, "standard", 2.0, 0.5, 0.1),
        _record(2, "fgsm", 3.0, 0.6, 0.2),
    ]
    run = load_run(_write_run(tmp_path / "r", records, mode="fgsm", switch_epoch=1), kernels=False)
    spent = run_groups._training_seconds(run)
    assert (spent["epochs_clean"], spent["epochs_adversarial"]) == (1, 1)
    assert (spent["seconds_clean"], spent["seconds_adversarial"]) == (2.0, 3.0)


def test_switch_cost_by_hand(tmp_path):
    """Four runs of 5 epochs (PGD unless said): a switched one (2 clean, 3 PGD epochs), the full
    AT run it compares with, a full TRADES run and a full PGD run of 4 epochs listed first (neither
    of the same mode and epochs), and a standard run (no adversarial epochs: not listed)."""
    switched = _switched_records([1.0, 1.5], [5.0, 7.0, 9.0], 0.31)
    full_pgd = _switched_records([], [4.0, 6.0, 6.0, 8.0, 8.0], 0.42)
    trades = [_record(0, "init", 0.0, 0.1, 0.0)] + [_record(e, "trades", 100.0, 0.5, 0.2) for e in range(1, 6)]
    short_pgd = _switched_records([], [50.0, 50.0, 50.0, 50.0], 0.2)
    standard = [_record(0, "init", 0.0, 0.1, 0.0)] + [_record(e, "standard", 1.0, 0.9, 0.0) for e in range(1, 6)]
    groups = [
        _group(_write_run(tmp_path / "trades", trades, mode="trades"), "trades"),
        _group(_write_run(tmp_path / "short", short_pgd, mode="pgd"), "short"),
        _group(_write_run(tmp_path / "switched", switched, mode="pgd", switch_epoch=2), "switched"),
        _group(_write_run(tmp_path / "full", full_pgd, mode="pgd"), "full"),
        _group(_write_run(tmp_path / "standard", standard, mode="standard"), "standard"),
    ]
    entries = {entry["label"]: entry for entry in run_groups.switch_cost(groups)["runs"]}
    assert sorted(entries) == ["full", "short", "switched", "trades"]
    entry = entries["switched"]
    clean, adversarial = 1.0 + 1.5, 5.0 + 7.0 + 9.0
    assert entry["seconds_clean"] == clean and entry["seconds_adversarial"] == adversarial
    assert entry["seconds_total"] == clean + adversarial
    assert (entry["epochs_clean"], entry["epochs_adversarial"]) == (2, 3)
    assert entry["switch_epoch"] == 2 and entry["mode"] == "pgd"
    # the last epoch's test accuracy (no full evaluation: the per-epoch PGD)
    assert entry["test_clean"] == pytest.approx(0.55, abs=TOL) and entry["test_pgd"] == 0.31
    # against the full PGD run of the same 5 epochs: 23.5 / 32
    assert entry["full_at"] == "full"
    assert entry["cost_of_full_at"] == pytest.approx((clean + adversarial) / 32.0, abs=TOL)
    # its own epoch times: every one of 5 epochs at the mean adversarial epoch's 7 s
    assert entry["estimated_cost_of_full_at"] == pytest.approx((clean + adversarial) / (5 * adversarial / 3), abs=TOL)
    for name in ("full", "short", "trades"):  # full AT runs are the reference, not compared
        assert "cost_of_full_at" not in entries[name] and "estimated_cost_of_full_at" not in entries[name]
        assert entries[name]["switch_epoch"] is None and entries[name]["epochs_clean"] == 0


def test_switch_cost_picks_the_first_full_run_of_the_same_mode_and_epochs(tmp_path):
    switched = _switched_records([1.0], [3.0, 3.0], 0.3)
    first = _switched_records([], [2.0, 2.0, 2.0], 0.4)
    second = _switched_records([], [20.0, 20.0, 20.0], 0.4)
    groups = [
        _group(_write_run(tmp_path / "s", switched, mode="pgd", switch_epoch=1), "s"),
        _group(_write_run(tmp_path / "a", first, mode="pgd"), "a"),
        _group(_write_run(tmp_path / "b", second, mode="pgd"), "b"),
    ]
    entry = run_groups.switch_cost(groups)["runs"][0]
    assert entry["full_at"] == "a" and entry["cost_of_full_at"] == pytest.approx(7.0 / 6.0, abs=TOL)


def test_a_switch_at_epoch_0_is_full_at(tmp_path):
    """``--switch-epoch 0`` trains no clean epoch (``TrainConfig.epoch_mode``), so the run is full
    AT: the reference a switched run is costed against, and not costed itself."""
    switched = _switched_records([1.0], [3.0, 3.0], 0.3)
    zero = _switched_records([], [2.0, 2.0, 2.0], 0.4)
    groups = [
        _group(_write_run(tmp_path / "s", switched, mode="pgd", switch_epoch=1), "s"),
        _group(_write_run(tmp_path / "z", zero, mode="pgd", switch_epoch=0), "z"),
    ]
    entries = {entry["label"]: entry for entry in run_groups.switch_cost(groups)["runs"]}
    assert entries["s"]["full_at"] == "z" and entries["s"]["cost_of_full_at"] == pytest.approx(7.0 / 6.0, abs=TOL)
    assert entries["z"]["switch_epoch"] == 0 and entries["z"]["epochs_clean"] == 0
    assert "cost_of_full_at" not in entries["z"] and "estimated_cost_of_full_at" not in entries["z"]


def test_a_switch_is_described_and_marked_after_its_last_clean_epoch(tmp_path):
    """``switch_epoch = k`` trains clean in epochs 1..k (``TrainConfig.epoch_mode``): the run's
    description says "after epoch k" (it said "from epoch k", one epoch early), and the figures'
    dotted mark stands at k; a switch at epoch 0 is full AT, described and drawn as one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ntkrobust.bridge.runs import describe_run
    from ntkrobust.plots._runs import _mark_switches

    two = load_run(_write_run(tmp_path / "two", _switched_records([1.0, 1.0], [2.0], 0.3), mode="pgd",
                              switch_epoch=2), kernels=False)  # fmt: skip
    zero = load_run(_write_run(tmp_path / "zero", _switched_records([], [2.0, 2.0], 0.3), mode="pgd",
                               switch_epoch=0), kernels=False)  # fmt: skip
    assert "standard then pgd after epoch 2 training for 3 epochs" in describe_run(two)
    assert "zero: fc2, pgd training for 2 epochs" in describe_run(zero)
    fig, ax = plt.subplots()
    try:
        assert _mark_switches(ax, [{"switch_epoch": 0}, {"switch_epoch": None}]) is False and not ax.lines
        assert _mark_switches(ax, [{"switch_epoch": 0}, {"switch_epoch": 2}]) is True
        assert [list(line.get_xdata()) for line in ax.lines] == [[2.0, 2.0]]
    finally:
        plt.close(fig)


def test_switch_cost_of_seeds_is_their_mean_and_sample_std(tmp_path):
    """Three seeds whose seconds and accuracies differ (1, 2, 6: mean 3, median 2): numbers as
    their mean with ``_std`` the sample standard deviation (ddof 1), shared counts as ints."""
    adversarial = [(1.0, 2.0), (2.0, 2.0), (6.0, 6.0)]
    pgd = [0.1, 0.2, 0.6]
    folders = [
        _write_run(tmp_path / "seeds" / f"seed_{s}", _switched_records([0.5], adv, p), mode="pgd", switch_epoch=1)
        for s, adv, p in zip((4, 5, 6), adversarial, pgd, strict=True)
    ]
    group = _seed_group(tmp_path / "seeds", (4, 5, 6), folders, "three")
    entry = run_groups.switch_cost([group])["runs"][0]
    seconds = np.array([sum(a) for a in adversarial])
    assert entry["seconds_adversarial"] == pytest.approx(np.mean(seconds), abs=TOL)
    assert entry["seconds_adversarial_std"] == pytest.approx(np.std(seconds, ddof=1), abs=TOL)
    assert entry["test_pgd"] == pytest.approx(np.mean(pgd), abs=TOL)
    assert entry["test_pgd_std"] == pytest.approx(np.std(pgd, ddof=1), abs=TOL)
    assert entry["seconds_total"] == pytest.approx(0.5 + np.mean(seconds), abs=TOL)
    assert entry["epochs_clean"] == 1 and entry["epochs_adversarial"] == 2 and entry["seeds"] == 3
    assert isinstance(entry["epochs_adversarial"], int) and "epochs_adversarial_std" not in entry


def test_seed_mean_of_counts_that_differ_and_of_text():
    """Counts the seeds do not share are averaged like any number; text that differs is joined."""
    merged = run_groups._seed_mean(
        [{"n": 1, "x": 1.0, "pgd": "PGD-7", "none": None}, {"n": 2, "x": 4.0, "pgd": "PGD-9", "none": None}]
    )
    assert merged["n"] == 1.5 and merged["n_std"] == pytest.approx(np.std([1, 2], ddof=1), abs=TOL)
    assert merged["x"] == 2.5 and merged["pgd"] == "PGD-7 / PGD-9" and merged["none"] is None
    assert merged["seeds"] == 2
    one = run_groups._seed_mean([{"n": 3, "x": 1.0}])
    assert one == {"n": 3, "x": 1.0}  # a single seed: no std, no seed count


# -- the accuracy of an epoch record --------------------------------------------------------------


def test_epoch_accuracy_reads_the_first_batchnorm_mode_and_the_full_evaluation(tmp_path):
    records = [
        _record(0, "init", 0.0, 0.1, 0.0, batch=(0.9, 0.9)),
        _record(1, "pgd", 1.0, 0.6, 0.3, batch=(0.7, 0.4), full=0.25),
        _record(2, "pgd", 1.0, 0.65, 0.35, batch=(0.75, 0.45)),
    ]
    run = load_run(_write_run(tmp_path / "r", records, mode="pgd", batchnorm=("running", "batch")), kernels=False)
    assert run_groups.epoch_accuracy(run, 1) == {
        "test_clean": 0.6, "test_pgd": 0.25, "pgd": "full evaluation, PGD-7"
    }  # fmt: skip
    assert run_groups.epoch_accuracy(run, 1, full=False) == {
        "test_clean": 0.6,
        "test_pgd": 0.3,
        "pgd": "per-epoch PGD-3",
    }
    assert run_groups._final(run) == {"test_clean": 0.65, "test_pgd": 0.35, "pgd": "per-epoch PGD-3"}
    batch_first = _write_run(tmp_path / "b", records, mode="pgd", batchnorm=("batch", "running"))
    assert run_groups._final(load_run(batch_first, kernels=False))["test_clean"] == 0.75


# -- networks spawned from a parent's checkpoint (LOO fig. 2) -------------------------------------


def _parent(tmp_path):
    records = [
        _record(0, "init", 0.0, 0.1, 0.0),
        _record(1, "standard", 1.0, 0.5, 0.05, full=0.9),
        _record(2, "standard", 1.0, 0.6, 0.07, full=0.9),
        _record(3, "standard", 1.0, 0.7, 0.09, full=0.9),
    ]
    return _write_run(tmp_path / "parent", records, mode="standard")


def _spawned(path, parent, epoch, final, *, centered=False, named_only=False):
    linearization = {"checkpoint": str(parent / "checkpoints" / f"epoch_{epoch:03d}.pt"), "centered": centered}
    if not named_only:
        linearization["spawn_epoch"] = epoch
    records = [_record(0, "init", 0.0, 0.1, 0.0), _record(1, "standard", 1.0, final, final / 2)]
    return _write_run(path, records, mode="standard", linearization=linearization)


def test_spawned_from_names_kind_parent_and_epoch(tmp_path):
    parent = _parent(tmp_path)
    plain = load_run(_spawned(tmp_path / "lin", parent, 2, 0.5), kernels=False)
    assert run_groups.spawned_from(plain) == ("linearized", parent, 2)
    centered = load_run(_spawned(tmp_path / "cen", parent, 0, 0.5, centered=True), kernels=False)
    assert run_groups.spawned_from(centered) == ("centered", parent, 0)  # t' = 0: at initialisation
    named = load_run(_spawned(tmp_path / "old", parent, 3, 0.5, named_only=True), kernels=False)
    assert run_groups.spawned_from(named) == ("linearized", parent, 3)  # from the checkpoint's name
    assert run_groups.spawned_from(load_run(parent, kernels=False)) is None


def test_spawn_accuracy_by_hand(tmp_path):
    """Points by spawn epoch in increasing order, each the final accuracy of its run; the parent's
    line is its per-epoch accuracy (never the full evaluation's)."""
    parent = _parent(tmp_path)
    groups = [
        _group(_spawned(tmp_path / "t3", parent, 3, 0.8), "t3"),
        _group(_spawned(tmp_path / "t1", parent, 1, 0.6), "t1"),
        _group(_spawned(tmp_path / "t2", parent, 2, 0.7), "t2"),
        _group(parent, "parent"),
    ]
    result = run_groups.spawn_accuracy(groups)
    (line,) = result["lines"]
    assert line["kind"] == "linearized" and line["mode"] == "standard" and line["parent_label"] == "parent"
    assert [p["spawn_epoch"] for p in line["points"]] == [1, 2, 3]
    assert [p["label"] for p in line["points"]] == ["t1", "t2", "t3"]
    assert [p["test_clean"] for p in line["points"]] == [0.6, 0.7, 0.8]
    assert [p["test_pgd"] for p in line["points"]] == pytest.approx([0.3, 0.35, 0.4], abs=TOL)
    (record,) = result["parents"]
    assert record["epochs"] == [0.0, 1.0, 2.0, 3.0]
    assert record["test_clean"] == [0.1, 0.5, 0.6, 0.7] and record["test_pgd"] == [0.0, 0.05, 0.07, 0.09]
    assert record["pgd"] == "per-epoch PGD-3"


# -- seed groups and the distance to a baseline ---------------------------------------------------


def _kernels(rng, steps, n=4):
    out = []
    for step in steps:
        a, b = rng.normal(size=(n, n)), rng.normal(size=(n, n))
        out.append((step, a @ a.T, b @ b.T))
    return out


def _seed_folder(root, seeds, kernel_steps, rng, *, epochs=2):
    root.mkdir(parents=True)
    for seed, steps in zip(seeds, kernel_steps, strict=True):
        records = [_record(0, "init", 0.0, 0.1, 0.0)] + [
            _record(e, "standard", 1.0, 0.5 + 0.01 * seed, 0.1) for e in range(1, epochs + 1)
        ]
        _write_run(root / f"seed_{seed}", records, mode="standard", label="fc2 standard", kernels=_kernels(rng, steps))
    runs = [{"seed": seed, "folder": f"seed_{seed}", "final": {}} for seed in seeds]
    (root / "seeds.json").write_text(json.dumps({"runs": runs}))
    return root


def test_seed_groups_name_their_seeds_in_order(tmp_path):
    rng = np.random.default_rng(0)
    root = _seed_folder(tmp_path / "seeds", (7, 3, 5), [(0, 10, 20)] * 3, rng)
    (group,) = run_groups.load_run_groups([root], kernels=False)
    assert group.label == "fc2 standard (3 seeds)" and group.seeds == [7, 3, 5]
    assert [run.label for run in group.runs] == [f"fc2 standard (3 seeds), seed {s}" for s in (7, 3, 5)]
    assert [run.path.name for run in group.runs] == ["seed_7", "seed_3", "seed_5"]


@pytest.mark.parametrize("other", [(0, 10), (0, 10, 20, 30)], ids=["fewer kernels", "more kernels"])
@pytest.mark.parametrize("which", [1, 2], ids=["second seed", "third seed"])
def test_a_seed_tracked_at_other_steps_is_refused(tmp_path, other, which):
    rng = np.random.default_rng(1)
    steps = [(0, 10, 20)] * 3
    steps[which] = other
    root = _seed_folder(tmp_path / "seeds", (1, 2, 3), steps, rng)
    with pytest.raises(RunError, match=f"seed {which + 1} and seed 1 differ in their tracked kernels"):
        run_groups.load_run_groups([root], kernels=False)


def test_group_summary_is_the_first_seeds_with_every_seeds_baseline_distance(tmp_path):
    """Each seed's ``baseline_distance`` is of its own kernels: computed here with the closed form."""
    rng = np.random.default_rng(2)
    root = _seed_folder(tmp_path / "seeds", (1, 2), [(0, 10, 20)] * 2, rng)
    records = [_record(e, "init" if e == 0 else "standard", 1.0, 0.5, 0.1) for e in range(3)]
    base = _write_run(tmp_path / "base", records, mode="standard", kernels=_kernels(rng, (0, 10, 20)))
    baseline = load_run(base)
    (group,) = run_groups.load_run_groups([root])
    summary = run_groups.group_summary(group, baseline=baseline)
    assert summary["label"] == group.label and summary["seeds"] == [1, 2] and len(summary["seed_runs"]) == 2
    assert summary["path"] == str(root)
    for run, seed_summary in zip(group.runs, summary["seed_runs"], strict=True):
        expected = [_cosine_distance(b, r) for b, r in zip(baseline.clean_kernels, run.clean_kernels, strict=True)]
        assert seed_summary["baseline_distance"]["clean"] == pytest.approx(expected, abs=TOL)
    first = summary["seed_runs"][0]
    assert summary["baseline_distance"] == first["baseline_distance"]
    assert summary["epochs"] == first["epochs"] if "epochs" in first else True


def _cosine_distance(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return 1.0 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))


def test_baseline_distance_at_the_shared_steps_by_hand(tmp_path):
    """A run tracked at steps 0, 20, 30 (20 steps per epoch) against a baseline tracked at
    0, 10, 20, 40 (10 per epoch): shared steps 0 and 20, paired by step, epochs the run's own."""
    rng = np.random.default_rng(3)
    records = [_record(e, "init" if e == 0 else "pgd", 1.0, 0.5, 0.1) for e in range(3)]
    base_kernels = _kernels(rng, (0, 10, 20, 40))
    run_kernels = _kernels(rng, (0, 20, 30))
    base = load_run(_write_run(tmp_path / "base", records, mode="pgd", kernels=base_kernels))
    run = load_run(_write_run(tmp_path / "run", records, mode="pgd", kernels=run_kernels, steps_per_epoch=20))
    result = run_groups.baseline_distance(base, run)
    assert result["steps"] == [0, 20] and result["epochs"] == [0.0, 1.0]
    assert result["baseline"] == str(base.path) and "undefined" not in result
    for kind, index in (("clean", 1), ("adversarial", 2)):
        expected = [
            _cosine_distance(base_kernels[0][index], run_kernels[0][index]),
            _cosine_distance(base_kernels[2][index], run_kernels[1][index]),
        ]
        assert result[kind] == pytest.approx(expected, abs=TOL)
        assert result[kind][0] == pytest.approx(kernel_distance(base_kernels[0][index], run_kernels[0][index]), abs=TOL)
