"""``ntkrobust features`` through ``main(argv)``: files, figures, numbers, and bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ntkrobust import cli

SMALL = ["--n-train", "120", "--n-test", "60", "--n-features", "20", "--eps", "0.1", "--quiet"]


@pytest.fixture(scope="module")
def two_archs(tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "run"
    args = ["features", *SMALL, "--arch", "fc2", "--arch", "two-layer", "--robust-r", "1,5,all", "--out", out]
    code = cli.main([str(a) for a in args])
    assert code == 0
    return out


def test_features_writes_csvs_figures_and_results(two_archs, assert_real_png):
    names = sorted(p.name for p in two_archs.iterdir())
    assert names == [
        "feature_gallery.png",
        "features-fc2.csv",
        "features-two-layer.csv",
        "results.json",
        "robust_only.png",
        "robustness_usefulness.png",
        "useful_non_robust.png",
    ]
    for png in two_archs.glob("*.png"):
        assert_real_png(png)
    results = json.loads((two_archs / "results.json").read_text())
    assert results["config"]["arch"] == ["fc2", "two-layer"] and results["config"]["n_features"] == 20
    assert results["config"]["robust_r"] == [1, 5, 120]
    assert results["config"]["validation_points"] + results["config"]["evaluation_points"] == 60
    for name in ("fc2", "two-layer"):
        entry = results["architectures"][name]
        with open(two_archs / f"features-{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["index"]) for r in rows] == list(range(20))
        robustness = np.array([float(r["robustness"]) for r in rows])
        usefulness = np.array([float(r["usefulness"]) for r in rows])
        assert np.all((0 <= robustness) & (robustness <= usefulness) & (usefulness <= 1))
        eigenvalues = np.array([float(r["eigenvalue"]) for r in rows])
        assert np.all(np.diff(eigenvalues) <= 0)
        assert -1 <= entry["spearman_index_robustness"] < 0  # robustness lies at the top
        assert 0 <= entry["useful_non_robust_share"] <= entry["useful_share"] <= 1
        assert [r["r"] for r in entry["robust_only"]] == [1, 5, 120]
        full = entry["robust_only"][-1]  # r = n: the full machine, attacked on the evaluation half
        assert full["fgsm_own"] == full["fgsm_transfer"] and full["clean"] > 0.8


def test_single_architecture_writes_features_csv_and_can_skip_robust_only(tmp_path, run_cli):
    out = tmp_path / "one"
    args = ["features", *SMALL, "--classes", "3,8", "--robust-r", "none", "--image-index", "7", "--out", out]
    code, stdout, stderr = run_cli(args)
    assert code == 0, stderr
    assert (out / "features.csv").exists() and not (out / "robust_only.png").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["validation_points"] == 60 and results["config"]["image_index"] == 7
    assert results["architectures"]["fc2"]["chance_usefulness"] == 0.5
    assert "Spearman" in stdout


BAD = {
    "too many features": (["--n-features", "500", "--n-train", "100"], "exceeds the 100 training points"),
    "image index": (["--image-index", "60", "--n-test", "60"], "out of range"),
    "negative image index": (["--image-index", "-1"], "out of range"),
    "unknown architecture": (["--arch", "resnet"], "invalid choice"),
    "repeated architecture": (["--arch", "fc2", "--arch", "fc2"], "repeats"),
    "bad r": (["--robust-r", "0"], "at least 1"),
    "threshold": (["--non-robust-below", "2"], "--non-robust-below"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, assert_refused):
    extra, message = BAD[case]
    assert_refused(["features", *extra], message)
