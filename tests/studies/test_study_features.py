"""``studies.features.run(settings)``: eigen-features of NTK machines (TK eq. 9), their usefulness
and robustness, the robust-features-only kernels, the files and figures its result saves, its
summary, and the settings it refuses before any compute."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, ThreatSettings, features
from ntkrobust.studies.features import FeaturesSettings

SMALL = {"n_features": 20, "threat": ThreatSettings(eps=0.1)}
NO_FIT = ("ntkrobust.studies._common.MachineSettings.fit",)


@pytest.fixture(scope="module")
def two_archs():
    settings = FeaturesSettings(
        data=DataSettings(n_train=120, n_test=60), arch=("fc2", "two-layer"), robust_r=(1, 5, -1), **SMALL
    )
    return features.run(settings)


@pytest.fixture(scope="module")
def saved(two_archs, tmp_path_factory):
    return two_archs.save(tmp_path_factory.mktemp("features") / "run")


def test_two_architectures_record(two_archs):
    record = two_archs.record
    assert record["command"] == "features" and list(record["architectures"]) == ["fc2", "two-layer"]
    config = record["config"]
    assert config["arch"] == ["fc2", "two-layer"] and config["n_features"] == 20
    assert config["robust_r"] == [1, 5, 120]  # 'all' (-1) is every training point
    assert config["validation_points"] + config["evaluation_points"] == 60
    for entry in record["architectures"].values():
        assert -1 <= entry["spearman_index_robustness"] < 0  # robustness lies at the top
        assert 0 <= entry["useful_non_robust_share"] <= entry["useful_share"] <= 1
        assert [r["r"] for r in entry["robust_only"]] == [1, 5, 120]
        full = entry["robust_only"][-1]  # r = n: the full machine, attacked on the evaluation half
        assert full["fgsm_own"] == full["fgsm_transfer"] and full["clean"] > 0.8


def test_save_writes_csvs_and_figures(two_archs, saved, assert_real_png):
    assert sorted(p.name for p in saved.iterdir()) == [
        "feature_gallery.png",
        "features-fc2.csv",
        "features-two-layer.csv",
        "results.json",
        "robust_only.png",
        "robustness_usefulness.png",
        "useful_non_robust.png",
    ]
    for png in saved.glob("*.png"):
        assert_real_png(png)
    for name in ("fc2", "two-layer"):
        with open(saved / f"features-{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["index"]) for r in rows] == list(range(20))
        robustness = np.array([float(r["robustness"]) for r in rows])
        usefulness = np.array([float(r["usefulness"]) for r in rows])
        assert np.all((0 <= robustness) & (robustness <= usefulness) & (usefulness <= 1))
        eigenvalues = np.array([float(r["eigenvalue"]) for r in rows])
        assert np.all(np.diff(eigenvalues) <= 0)
        assert robustness.tolist() == [float(f"{r:.6g}") for r in two_archs.tables[name].robustness]


@pytest.mark.parametrize(
    ("r", "everything", "labels"),
    [
        ((1, 2, 5, 10, 20, 100, 300), 300, ["1", "2", "5", "10", "20", "all (300)"]),  # 100 would meet "all (300)"
        (tuple(range(1, 13)), None, ["1", "10"]),  # too many to name: the powers of ten
        ((1, 10, 1000), 1000, ["1", "10", "all (1000)"]),
    ],
)
def test_the_robust_only_axis_names_the_r_drawn(r, everything, labels):
    import matplotlib.pyplot as plt
    import numpy as np

    from ntkrobust.plots.features import _r_ticks

    fig, ax = plt.subplots()
    ax.set_xscale("log")
    _r_ticks(ax, np.asarray(r), everything)
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    plt.close(fig)


def test_figures_zoom_to_the_features_and_name_r_all(two_archs, tmp_path, monkeypatch):
    """Multiclass features crowd a corner of [0, 1]²: the axes zoom to them, chance in view; the
    robust-only curves name r = n (every training point) "all (n)"; each figure has a title of
    one line, the details in its subtitle."""
    from matplotlib.figure import Figure

    drawn, save = {}, Figure.savefig

    def record(fig, path, *args, **kwargs):
        drawn[Path(path).name] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    two_archs.save(tmp_path / "again")
    assert [len(panel) for panel in two_archs.figures["curves"]] == [3, 3]
    assert {panel[2] for panel in two_archs.figures["curves"]} == {120}
    for name, scores in two_archs.figures["panels"]:
        (ax,) = [ax for ax in drawn["robustness_usefulness.png"].axes if ax.get_title().startswith(f"{name}:")]
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert x1 - x0 < 0.5 and y1 - y0 < 0.5  # not the fixed [0, 1]: these features span 0.2
        assert x0 <= scores.robustness.min() and scores.robustness.max() <= x1
        assert y0 <= min(scores.usefulness.min(), scores.chance) and max(scores.usefulness.max(), scores.chance) <= y1
    for ax in [ax for ax in drawn["robust_only.png"].axes if ax.get_title()]:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "5", "all (120)"]  # r = 1, 5, 120
    for fig in drawn.values():
        assert fig.get_suptitle().strip() and "\n" not in fig.get_suptitle().strip()
        assert [a.get_gid() for a in fig.artists] == ["subtitle"]


def test_summary_has_a_line_per_architecture(two_archs):
    lines = two_archs.summary().splitlines()
    assert [line.split(":")[0] for line in lines] == ["fc2", "two-layer"]
    fc2 = two_archs.record["architectures"]["fc2"]
    assert lines[0].startswith(f"fc2: Spearman(index, robustness) = {fc2['spearman_index_robustness']:.2f}, ")
    assert "of 20 features" in lines[0] and "full machine clean" in lines[0]


def test_single_architecture_writes_features_csv_and_can_skip_robust_only(tmp_path):
    settings = FeaturesSettings(
        data=DataSettings(classes=(3, 8), n_train=120, n_test=60), robust_r=(), image_index=7, **SMALL
    )
    result = features.run(settings)
    config = result.record["config"]
    assert config["validation_points"] == 60 and config["evaluation_points"] == 0 and config["robust_r"] == []
    assert config["image_index"] == 7 and config["robust_step"] is None
    entry = result.record["architectures"]["fc2"]
    assert entry["chance_usefulness"] == 0.5 and entry["robust_only"] == []
    out = result.save(tmp_path / "one")
    assert (out / "features.csv").exists() and not (out / "robust_only.png").exists()
    assert "Spearman" in result.summary() and "\n" not in result.summary()


#: FeaturesSettings fields (the data as DataSettings fields) -> the refusal
BAD = {
    "too many features": ({"n_features": 500, "n_train": 100}, "exceeds the 100 training points"),
    "image index": ({"image_index": 60, "n_test": 60}, "out of range"),
    "negative image index": ({"image_index": -1}, "--image-index must be a whole number >= 0, got -1"),
    "repeated architecture": ({"arch": ("fc2", "fc2")}, "repeats"),
    "threshold": ({"non_robust_below": 2.0}, "--non-robust-below"),
    "no r applies": ({"n_features": 20, "robust_r": (50,)}, "no --robust-r value is at most --n-features 20"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_settings_are_refused_before_the_machine_is_fit(case, refuses):
    changes, message = BAD[case]
    data = DataSettings(**{key: value for key, value in changes.items() if key in ("n_train", "n_test")})
    fields = {key: value for key, value in changes.items() if key not in ("n_train", "n_test")}
    refuses(features, FeaturesSettings(data=data, **fields), message, compute=NO_FIT)
