"""Metamorphic tests of run folders, seed groups, baseline distances and ``dynamics``' record.

Each test reads two run folders written by hand (``test_run_groups_audit._write_run``), one a
transformation of the other, and checks the relation the docstrings imply between the two
results: the seeds of a group listed in another order, a run as its own baseline, baseline and run
swapped, every kernel file scaled by c, every other tracked step dropped, the probe points
permuted in ``probe.npz`` and in every kernel file, the runs of ``dynamics`` given in another
order or twice.

Definitions: ``kernels.metrics.kernel_distance`` d = 1 − ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F) (symmetric,
scale-free, invariant under a simultaneous permutation of rows and columns), ``kernel_velocity``
d(K_t, K_{t+1}) / (time_{t+1} − time_t), ``polar_coordinates`` TK eq. 12 (ratios of Frobenius
norms and angles: scale-free), ``bridge.runs.kernel_dynamics`` (velocity at the midpoints),
``bridge.run_groups.baseline_distance`` (paired by step, epochs the run's own) and
``plots._runs._seed_band`` (the mean, ddof-1 std, and lowest of the seeds: 0 for one seed).

Tolerances: 1e-12 absolute on distances and angles of float64 kernels (the two runs take the same
operations on reordered or rescaled numbers), exact where the two runs read the same numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_run_groups_audit import _kernels, _record, _switched_records, _write_run

from ntkrobust.bridge import run_groups
from ntkrobust.bridge.runs import RunError, dynamics_summary, json_summary, load_run
from ntkrobust.plots._runs import _dynamics_series, _seeded

TOL = 1e-12
N = 24  # at least the default top_k of 20: the top-k polar coordinates are computed too
STEPS = (0, 10, 20, 30, 40)  # 10 steps per epoch: epochs 0 to 4
SERIES = ("distance_to_final", "velocity", "polar_r", "polar_theta", "top_polar_r", "top_polar_theta")
RECORDS = [_record(e, "init" if e == 0 else "pgd", 1.0, 0.5, 0.1) for e in range(5)]


def _trajectory(seed: int, steps=STEPS):
    """(step, clean, adversarial) of random full-rank PSD (N, N) kernels."""
    return _kernels(np.random.default_rng(seed), steps, n=N)


def _run(path: Path, kernels, records=RECORDS, **options) -> Path:
    return _write_run(path, records, mode="pgd", kernels=kernels, **options)


def _assert_dynamics_equal(mine: dict, theirs: dict, *, skip=()) -> None:
    """Every number of two ``kernel_dynamics`` dicts equal to ``TOL`` (``skip``: keys left out)."""
    assert mine.keys() == theirs.keys()
    assert "undefined" not in mine
    for key in mine.keys() - set(skip):
        assert np.asarray(mine[key]) == pytest.approx(np.asarray(theirs[key]), abs=TOL), key


# -- seed groups -----------------------------------------------------------------------------


def _seed_folder(root: Path, seeds, first: int) -> Path:
    """A folder of ``train --seeds``: one run per seed (kernels drawn from ``first + i``) on the
    same probe, and its seeds.json in the order of ``seeds``."""
    for i, seed in enumerate(seeds):
        _run(root / f"seed_{seed}", _trajectory(first + i), label="fc2 pgd")
    runs = [{"seed": seed, "folder": f"seed_{seed}", "final": {}} for seed in seeds]
    (root / "seeds.json").write_text(json.dumps({"runs": runs}))
    return root


def _reordered(root: Path, to: Path, order) -> Path:
    """A copy of the seeds folder ``root`` whose seeds.json lists its seeds in ``order``."""
    shutil.copytree(root, to)
    listing = json.loads((root / "seeds.json").read_text())
    listing["runs"] = [listing["runs"][i] for i in order]
    (to / "seeds.json").write_text(json.dumps(listing))
    return to


def test_seeds_listed_in_another_order_give_the_same_mean_and_std_curves(tmp_path):
    """``_seed_band``: the mean, the sample std (ddof 1) and the lowest value over the seeds are
    symmetric functions of the seeds, so listing them in another order in seeds.json changes no
    curve; only the group's own summary (documented as the *first* seed's) and the order of
    ``seeds`` / ``seed_runs`` follow the listing. Exact up to the order of the sums (1e-12)."""
    root = _seed_folder(tmp_path / "seeds", (1, 2, 3), 4)
    other = _reordered(root, tmp_path / "other", (2, 0, 1))
    (group,) = run_groups.load_run_groups([root])
    (reordered,) = run_groups.load_run_groups([other])
    summary, permuted = run_groups.group_summary(group), run_groups.group_summary(reordered)
    assert summary["seeds"] == [1, 2, 3] and permuted["seeds"] == [3, 1, 2]
    for kind in ("clean", "adversarial"):
        for key in SERIES[:4]:
            one, two = _seeded(summary, _dynamics_series, kind, key), _seeded(permuted, _dynamics_series, kind, key)
            assert one.spread is not None and np.any(one.spread > 0)  # not 0 == 0
            for a, b in zip(one, two, strict=True):
                if isinstance(a, np.ndarray):
                    assert a == pytest.approx(b, abs=TOL), (kind, key)
                else:
                    assert a == b
    # the group's own numbers are its first seed's: seed 1 for one listing, seed 3 for the other
    assert summary["dynamics"] == summary["seed_runs"][0]["dynamics"]
    assert permuted["dynamics"] == summary["seed_runs"][2]["dynamics"]


def test_a_group_of_one_seed_has_no_spread_and_the_runs_own_curve(tmp_path):
    """``_seed_band``: "0 for a single seed"; the mean over one seed is that seed's curve, the
    same as the run folder read alone (not as a group)."""
    root = _seed_folder(tmp_path / "seeds", (5,), 5)
    (group,) = run_groups.load_run_groups([root])
    (alone,) = run_groups.load_run_groups([root / "seed_5"])
    summary, single = run_groups.group_summary(group), run_groups.group_summary(alone)
    assert "seed_runs" in summary and "seed_runs" not in single
    for key in SERIES[:4]:
        band, curve = _seeded(summary, _dynamics_series, "clean", key), _seeded(single, _dynamics_series, "clean", key)
        assert band.spread is not None and np.all(band.spread == 0), key
        assert np.array_equal(band.epochs, curve.epochs) and np.array_equal(band.values, curve.values), key


# -- the distance to a baseline --------------------------------------------------------------


def test_a_run_as_its_own_baseline_is_at_distance_zero_at_every_step(tmp_path):
    """d(K, K) = 1 − ‖K‖² / ‖K‖² = 0 (``kernel_distance``), at every tracked step, both kernels."""
    run = load_run(_run(tmp_path / "run", _trajectory(6)))
    run_groups.check_comparable(run, run)
    result = run_groups.baseline_distance(run, run)
    assert result["steps"] == list(STEPS) and "undefined" not in result
    for kind in ("clean", "adversarial"):
        assert result[kind] == pytest.approx([0.0] * len(STEPS), abs=TOL)


def test_swapping_baseline_and_run_keeps_the_distances_and_takes_the_other_runs_epochs(tmp_path):
    """KD is symmetric (⟨K₁, K₂⟩ = ⟨K₂, K₁⟩), and the pairs are matched by step: swapping the two
    runs gives the same ``steps`` and distances; ``epochs`` are documented as the *run's*, so they
    follow the run (the two runs here count 10 and 20 steps per epoch)."""
    base = load_run(_run(tmp_path / "base", _trajectory(7)))
    run = load_run(_run(tmp_path / "run", _trajectory(8, (0, 20, 30, 50)), steps_per_epoch=20))
    there, back = run_groups.baseline_distance(base, run), run_groups.baseline_distance(run, base)
    assert there["steps"] == back["steps"] == [0, 20, 30]
    assert there["epochs"] == [0.0, 1.0, 1.5] and back["epochs"] == [0.0, 2.0, 3.0]
    for kind in ("clean", "adversarial"):
        assert there[kind] == pytest.approx(back[kind], abs=TOL)
        assert min(there[kind]) > 0.01  # independent kernels: the relation is not 0 == 0


# -- kernel files scaled, steps thinned, probe points permuted --------------------------------


def test_kernels_scaled_by_c_change_no_dynamics_number_and_scale_the_kernels(tmp_path):
    """Every number of ``kernel_dynamics`` is a ratio of Frobenius inner products and norms
    (distances, velocity, TK eq. 12's r and θ, also of the top-k truncation, whose eigenvectors a
    positive c keeps), so scaling every kernel file by c > 0 changes none of them; the kernels
    ``dynamics_summary`` hands to the figures (``initial_kernel`` / ``final_kernel``) scale by c,
    and the distance to a baseline stays."""
    c = 37.5
    kernels = _trajectory(9)
    scaled = [(step, c * clean, c * adversarial) for step, clean, adversarial in kernels]
    base = load_run(_run(tmp_path / "base", _trajectory(10)))
    one, two = load_run(_run(tmp_path / "one", kernels)), load_run(_run(tmp_path / "two", scaled))
    mine, theirs = dynamics_summary(one), dynamics_summary(two)
    for kind in ("clean", "adversarial"):
        _assert_dynamics_equal(theirs["dynamics"][kind], mine["dynamics"][kind])
        assert run_groups.baseline_distance(base, two)[kind] == pytest.approx(
            run_groups.baseline_distance(base, one)[kind], abs=TOL
        )
    for key in ("initial_kernel", "final_kernel"):
        assert theirs[key] == pytest.approx(c * mine[key], rel=TOL)


def _thinned(path: Path, to: Path) -> Path:
    """A copy of the run folder ``path`` whose history keeps every other kernel record."""
    shutil.copytree(path, to)
    history = json.loads((to / "history.json").read_text())
    history["kernels"] = history["kernels"][::2]
    (to / "history.json").write_text(json.dumps(history))
    return to


def test_every_other_step_dropped_keeps_the_kept_steps_numbers_and_velocity_follows_its_gaps(tmp_path):
    """Dropping tracked steps 10 and 30 of 0..40 keeps the first and last kernel (Θ₀ and Θ_f of
    TK eq. 12), so the kept steps' distances, distances to the final kernel and polar coordinates
    are the full run's at those steps; velocity is d(Θ_t, Θ_{t+1}) / (epoch_{t+1} − epoch_t) over
    the *new* gaps (2 epochs), i.e. the full distance matrix at (2i, 2i + 2) over 2, drawn at the
    new midpoints 1, 3; the distance to a baseline is the full run's at the kept steps."""
    full_path = _run(tmp_path / "full", _trajectory(11))
    full, thin = load_run(full_path), load_run(_thinned(full_path, tmp_path / "thin"))
    base = load_run(_run(tmp_path / "base", _trajectory(12)))
    kept = [0, 2, 4]
    for kind in ("clean", "adversarial"):
        whole, part = dynamics_summary(full)["dynamics"][kind], dynamics_summary(thin)["dynamics"][kind]
        matrix = np.asarray(whole["distance_matrix"])
        assert part["epochs"] == [0.0, 2.0, 4.0]
        assert np.asarray(part["distance_matrix"]) == pytest.approx(matrix[np.ix_(kept, kept)], abs=TOL)
        for key in SERIES[:1] + SERIES[2:]:
            assert part[key] == pytest.approx([whole[key][i] for i in kept], abs=TOL), key
        assert part["velocity"] == pytest.approx([matrix[0, 2] / 2, matrix[2, 4] / 2], abs=TOL)
        assert part["velocity_epochs"] == [1.0, 3.0]
        there, kept_there = run_groups.baseline_distance(base, full), run_groups.baseline_distance(base, thin)
        assert kept_there["steps"] == [0, 20, 40]
        assert kept_there[kind] == pytest.approx([there[kind][i] for i in kept], abs=TOL)


def _permuted(path: Path, to: Path, order: np.ndarray) -> Path:
    """A copy of the run folder ``path`` with its probe points in ``order``: the probe's x, y and
    targets, and rows and columns of every kernel in every kernel file."""
    shutil.copytree(path, to)
    probe = dict(np.load(to / "kernels" / "probe.npz"))
    np.savez(to / "kernels" / "probe.npz", **{key: value[order] for key, value in probe.items()})
    for record in json.loads((to / "history.json").read_text())["kernels"]:
        stored = dict(np.load(to / record["file"]))
        np.savez(to / record["file"], **{key: value[np.ix_(order, order)] for key, value in stored.items()})
    return to


def test_probe_points_permuted_everywhere_change_no_summary_number(tmp_path):
    """A simultaneous permutation P of the probe points maps every kernel K to PKPᵀ, which keeps
    ⟨K₁, K₂⟩_F, ‖K‖_F and the eigenvalues (the rank-k truncation becomes P(·)Pᵀ too), so every
    number of the summary and every distance to a baseline permuted alike is unchanged; only
    ``probe_targets`` and the kernels themselves are permuted, and the unpermuted baseline is no
    longer comparable (``check_comparable`` compares the probe images by content)."""
    order = np.random.default_rng(13).permutation(N)
    x = np.random.default_rng(14).uniform(0, 1, (N, 1, 2, 2))  # distinct images: the permutation shows
    run_path = _run(tmp_path / "run", _trajectory(15), probe_x=x)
    base_path = _run(tmp_path / "base", _trajectory(16), probe_x=x)
    run, permuted = load_run(run_path), load_run(_permuted(run_path, tmp_path / "permuted", order))
    base, permuted_base = load_run(base_path), load_run(_permuted(base_path, tmp_path / "permuted_base", order))
    mine, theirs = dynamics_summary(run), dynamics_summary(permuted)
    for kind in ("clean", "adversarial"):
        _assert_dynamics_equal(theirs["dynamics"][kind], mine["dynamics"][kind])
    assert theirs["probe_targets"] == [mine["probe_targets"][i] for i in order]
    assert np.array_equal(theirs["final_kernel"], mine["final_kernel"][np.ix_(order, order)])
    permuted_keys = ("dynamics", "path", "probe_targets")
    plain = {key: value for key, value in json_summary(mine).items() if key not in permuted_keys}
    assert plain == {key: theirs[key] for key in plain}
    run_groups.check_comparable(permuted_base, permuted)
    there = run_groups.baseline_distance(base, run)
    permuted_there = run_groups.baseline_distance(permuted_base, permuted)
    for kind in ("clean", "adversarial"):
        assert permuted_there[kind] == pytest.approx(there[kind], abs=TOL)
    with pytest.raises(RunError, match="different probes"):
        run_groups.check_comparable(base, permuted)


# -- the runs of dynamics ----------------------------------------------------------------------


def _dynamics_record(runs, baseline):
    from ntkrobust.studies.dynamics import DynamicsSettings, run

    return run(DynamicsSettings(runs=tuple(runs), baseline=baseline)).record


def _by_label(entries):
    keyed = {entry["label"]: entry for entry in entries}
    assert len(keyed) == len(entries)
    return keyed


def test_runs_given_to_dynamics_in_another_order_give_the_same_records(tmp_path):
    """``dynamics`` measures every run on its own (``group_summary``) and every run against the
    same baseline, so giving RUNs in another order only reorders results.json's ``runs`` and
    ``baseline_distance.runs`` and ``switch_cost.runs``: keyed by label (distinct here) the records
    are equal, except the run order that ``config.runs`` echoes and the switch cost's reference
    run (``switch_cost``: "the first full AT run"). A seeds folder is one of the runs."""
    paths = [
        _run(tmp_path / "a", _trajectory(17)),
        _seed_folder(tmp_path / "b", (1, 2), 30),
        _run(tmp_path / "c", _trajectory(19, (0, 20, 40))),
        _run(tmp_path / "d", _trajectory(31), _switched_records([1.0, 1.5], [5.0, 7.0], 0.3), switch_epoch=2),
    ]
    baseline = _run(tmp_path / "base", _trajectory(20))
    one = _dynamics_record(paths, baseline)
    two = _dynamics_record(paths[::-1], baseline)
    assert [run["label"] for run in two["runs"]] == [run["label"] for run in one["runs"]][::-1]
    assert _by_label(two["runs"]) == _by_label(one["runs"])
    entries = {(e["label"], e["seed"]): e for e in one["baseline_distance"]["runs"]}
    assert {(e["label"], e["seed"]): e for e in two["baseline_distance"]["runs"]} == entries
    assert len(entries) == 5
    # RAT's switch cost of d: a, b and c are full AT runs of d's mode and epochs, and the reference
    # is documented as the *first* of them given, so only ``full_at`` follows the order (their
    # seconds are equal here, so ``cost_of_full_at`` does not)
    mine, theirs = _by_label(one["switch_cost"]["runs"]), _by_label(two["switch_cost"]["runs"])
    assert (mine["d"].pop("full_at"), theirs["d"].pop("full_at")) == ("a", "c")
    assert theirs == mine
    assert {key: value for key, value in one["baseline_distance"].items() if key != "runs"} == {
        key: value for key, value in two["baseline_distance"].items() if key != "runs"
    }
    assert one["config"]["runs"] == [str(p) for p in paths] and two["config"]["runs"] == [str(p) for p in paths[::-1]]


def test_a_run_given_twice_to_dynamics_is_refused(tmp_path):
    """``check_distinct_files``: a run named twice (also through another path to the same folder)
    would be drawn twice under two labels; refused in either order."""
    from ntkrobust.studies._base import StudyError

    path = _run(tmp_path / "a", _trajectory(21, (0, 10)))
    other = _run(tmp_path / "b", _trajectory(22, (0, 10)))
    for runs in ([path, other, path], [tmp_path / "b" / ".." / "a", path]):
        with pytest.raises(StudyError, match="named twice"):
            _dynamics_record(runs, None)


# -- time rescaled, BatchNorm statistics listed the other way ----------------------------------


def test_twice_the_steps_per_epoch_halves_the_epochs_and_doubles_the_velocity(tmp_path):
    """Without an ``epoch`` in its kernel records a run's epochs are step / steps_per_epoch
    (``_kernel_epochs``), so counting twice the steps per epoch halves every epoch: distances and
    polar coordinates stay (they do not see time), velocity d / Δepoch doubles and its midpoints
    halve; the distance to a baseline is paired by step and stays."""
    kernels = _trajectory(23)
    slow, fast = _run(tmp_path / "slow", kernels), _run(tmp_path / "fast", kernels, steps_per_epoch=20)
    for path in (slow, fast):
        history = json.loads((path / "history.json").read_text())
        for record in history["kernels"]:
            del record["epoch"]
        (path / "history.json").write_text(json.dumps(history))
    one, two = dynamics_summary(load_run(slow)), dynamics_summary(load_run(fast))
    assert two["kernel_epochs"] == [e / 2 for e in one["kernel_epochs"]]
    for kind in ("clean", "adversarial"):
        mine, theirs = one["dynamics"][kind], two["dynamics"][kind]
        _assert_dynamics_equal(theirs, mine, skip=("epochs", "velocity", "velocity_epochs"))
        assert theirs["velocity"] == pytest.approx([2 * v for v in mine["velocity"]], abs=TOL)
        assert theirs["velocity_epochs"] == pytest.approx([e / 2 for e in mine["velocity_epochs"]], abs=TOL)
    base = load_run(_run(tmp_path / "base", _trajectory(24)))
    assert run_groups.baseline_distance(base, load_run(fast))["clean"] == pytest.approx(
        run_groups.baseline_distance(base, load_run(slow))["clean"], abs=TOL
    )


def _tracked_both_ways(path: Path, first: str, kernels: dict) -> Path:
    """A run of ``train --batchnorm both`` listing ``first`` first: its top-level kernel records
    and the files' ``clean`` / ``adversarial`` are that statistics' kernels, the other's under
    ``<other>_statistics`` and ``clean_<other>`` / ``adversarial_<other>``."""
    second = "batch" if first == "running" else "running"
    _write_run(path, RECORDS, mode="pgd", batchnorm=(first, second), kernels=kernels[first])
    history = json.loads((path / "history.json").read_text())
    for record, (_, clean, adversarial) in zip(history["kernels"], kernels[second], strict=True):
        record[f"{second}_statistics"] = {}
        stored = dict(np.load(path / record["file"]))
        np.savez(path / record["file"], **stored, **{f"clean_{second}": clean, f"adversarial_{second}": adversarial})
    (path / "history.json").write_text(json.dumps(history))
    return path


def test_batchnorm_statistics_listed_the_other_way_give_the_same_two_views_reversed(tmp_path):
    """``statistics_views``: a run tracked both ways is one view per statistics, "in the order the
    run tracked them", each with that statistics' kernels; a history that lists "batch" first
    (its top-level records and plain keys the batch kernels) holds the same two trajectories, so
    its views are the same two summaries in the other order, labelled alike."""
    from ntkrobust.bridge.batchnorm_views import statistics_groups

    kernels = {"running": _trajectory(25), "batch": _trajectory(26)}
    one = _tracked_both_ways(tmp_path / "one" / "run", "running", kernels)
    two = _tracked_both_ways(tmp_path / "two" / "run", "batch", kernels)
    views = [statistics_groups(run_groups.load_run_groups([path])) for path in (one, two)]
    summaries = [[run_groups.group_summary(group) for group in groups] for groups in views]
    assert [s["statistics"] for s in summaries[0]] == ["running", "batch"]
    assert [s["statistics"] for s in summaries[1]] == ["batch", "running"]
    for mine, theirs in zip(summaries[0], summaries[1][::-1], strict=True):
        assert mine["label"] == theirs["label"]
        for kind in ("clean", "adversarial"):
            _assert_dynamics_equal(theirs["dynamics"][kind], mine["dynamics"][kind])
    assert summaries[0][0]["dynamics"]["clean"] != summaries[0][1]["dynamics"]["clean"]  # not one trajectory twice


def test_a_run_tracked_both_ways_as_its_own_baseline_is_at_distance_zero_in_both_views(tmp_path):
    """d(K, K) = 0, so ``dynamics RUN --baseline RUN`` must give distance 0 at every step to every
    view of RUN. Before the fix (``studies.dynamics._same_statistics``) the batch-statistics view of
    a run tracked both ways was compared with the baseline's *running*-statistics kernels (the
    baseline was always read as its history records it first), so a run was ~0.5 away from itself
    and every batch view's curve mixed the BatchNorm mode's difference into the training's."""
    path = _tracked_both_ways(tmp_path / "run", "running", {"running": _trajectory(28), "batch": _trajectory(29)})
    record = _dynamics_record([path], path)
    entries = record["baseline_distance"]["runs"]
    assert [entry["label"] for entry in entries] == ["run, BatchNorm running stats", "run, BatchNorm batch stats"]
    for entry in entries:
        for kind in ("clean", "adversarial"):
            assert entry[kind] == pytest.approx([0.0] * len(STEPS), abs=TOL), (entry["label"], kind)


def test_a_run_tracked_under_batch_statistics_only_is_compared_with_the_baselines_batch_kernels(tmp_path):
    """The same fix as above: a run of ``--batchnorm batch``
    whose kernels are the batch-statistics kernels of a baseline tracked both ways is at distance
    0 from it; before the fix it was compared with the baseline's running-statistics kernels. The
    other relation of the pair: the run of ``--batchnorm running`` with the running kernels was at
    0 already."""
    kernels = {"running": _trajectory(32), "batch": _trajectory(33)}
    baseline = _tracked_both_ways(tmp_path / "base", "running", kernels)
    records = [_record(e, "init" if e == 0 else "pgd", 1.0, 0.5, 0.1, batch=(0.5, 0.1)) for e in range(5)]
    for statistics in ("running", "batch"):
        path = _run(tmp_path / statistics, kernels[statistics], records, batchnorm=(statistics,))
        (entry,) = _dynamics_record([path], baseline)["baseline_distance"]["runs"]
        for kind in ("clean", "adversarial"):
            assert entry[kind] == pytest.approx([0.0] * len(STEPS), abs=TOL), (statistics, kind)


# -- transfer's matrix -------------------------------------------------------------------------


def test_transfer_matrix_of_targets_and_sources_permuted_is_the_matrix_permuted():
    """``studies.transfer._matrix``: row r is target r's accuracies (clean, random sign, own
    white-box, then one per source column) and τ per source column, so permuting the targets
    permutes the rows and permuting the sources permutes the source columns (the three fixed
    columns stay first). Exact: the same numbers are copied."""
    from ntkrobust.studies.transfer import _matrix

    rng = np.random.default_rng(27)
    sources = ["NTK fc2", "NTK cnn", "net a", "net b"]
    rows = [
        {
            "name": f"target {i}",
            "clean_accuracy": float(rng.uniform()),
            "random_accuracy": float(rng.uniform()),
            "white_box_accuracy": float(rng.uniform()),
            "transfer_accuracy": {s: float(rng.uniform()) for s in sources},
            "transferability": {s: float(rng.uniform()) for s in sources},
        }
        for i in range(3)
    ]
    rows_order, columns_order = [2, 0, 1], [3, 1, 0, 2]
    matrix = _matrix(rows, sources)
    permuted = _matrix([rows[i] for i in rows_order], [sources[j] for j in columns_order])
    accuracy, tau = np.asarray(matrix["accuracy"]), np.asarray(matrix["transferability"])
    assert permuted["rows"] == [matrix["rows"][i] for i in rows_order]
    assert permuted["columns"] == matrix["columns"][:3] + [sources[j] for j in columns_order]
    columns = [0, 1, 2, *(3 + j for j in columns_order)]
    assert np.array_equal(permuted["accuracy"], accuracy[np.ix_(rows_order, columns)])
    assert np.array_equal(permuted["transferability"], tau[np.ix_(rows_order, columns_order)])
