"""Twelfth mutation audit of ``studies.features``, ``studies.entk``, ``studies.dynamics`` and
``studies.attack``: the boundaries and values that the earlier tests of these studies left free.

Each test names the rule it pins and the independent reason for the expected value (a count of
the data, the documented boundary of a refusal, a plain numpy computation). The expensive steps
that a check does not need are replaced by a sentinel that stops the study right after its
checks, so a setting that passes the checks is told apart from one that is refused.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, StudyError, ThreatSettings, features
from ntkrobust.studies.features import FeaturesSettings


class _PastTheChecks(Exception):
    """Raised by a stand-in for the first expensive step: every check before it passed."""


def _stop(*args, **kwargs):
    raise _PastTheChecks


@pytest.fixture
def past_checks(monkeypatch):
    """``past_checks(study, settings, target)``: ``study.run(settings)`` reaches ``target`` (a
    dotted path, patched to raise ``_PastTheChecks``) without a ``StudyError``."""

    def check(study, settings, target):
        monkeypatch.setattr(target, _stop)
        with pytest.raises(_PastTheChecks):
            study.run(settings)

    return check


FIT = "ntkrobust.studies._common.MachineSettings.fit"  # the features study's first expensive step
BUDGET = "ntkrobust.bridge.entk.check_memory_budget"  # the entk study's, right after its points are chosen


def test_as_many_features_as_training_points_is_allowed(past_checks, refuses):
    """TK eq. 9: an NTK machine on n training points has n eigen-features, so --n-features n is the
    largest count that exists (allowed) and n + 1 the first that does not (refused)."""
    data = DataSettings(n_train=30, n_test=20)
    settings = FeaturesSettings(data=data, n_features=30, robust_r=(), threat=ThreatSettings(eps=0.1))
    past_checks(features, settings, FIT)
    too_many = FeaturesSettings(data=data, n_features=31, robust_r=(), threat=ThreatSettings(eps=0.1))
    refuses(features, too_many, "exceeds the 30 training points", compute=(FIT,))


SEED, EPS = 4, 0.3
SMALL = DataSettings(n_train=40, n_test=40, seed=SEED)


@pytest.fixture(scope="module")
def no_random_start():
    """A features run with --no-random-start, FGSM features and robust-only kernels: the start
    flag is read by the robust-only kernels' PGD alone."""
    settings = FeaturesSettings(
        data=SMALL, n_features=3, threat=ThreatSettings(eps=EPS, step=0.1, random_start=False),
        robust_r=(3, -1), robust_steps=1, top_k=2, non_robust_below=1.0,
    )  # fmt: skip
    return features.run(settings)


def test_the_robust_only_pgd_starts_where_the_flag_says(no_random_start):
    """--no-random-start reaches the robust-only kernels' PGD: their accuracies are those of
    ``robust_only_kernels`` with ``random_start=False`` (recomputed here on the evaluation half,
    the features ranked by a stable sort of their robustness), and differ from a random start's,
    so a start that ignored the flag would show."""
    from ntkrobust.attacks import ThreatModel
    from ntkrobust.bridge.data import load_dataset, stratified_halves
    from ntkrobust.kernels import fit_kernel_machine, get_architecture
    from ntkrobust.kernels.features import feature_scores
    from ntkrobust.kernels.robust_only import robust_only_kernels

    data = load_dataset("digits", n_train=40, n_test=40, seed=SEED)
    val, evaluation = stratified_halves(data.y_test, SEED)
    machine = fit_kernel_machine(get_architecture("fc2"), data.x_train, data.y_train, classes=data.classes)
    threat = ThreatModel("linf", EPS)
    scores = feature_scores(machine, data.x_test[val], data.y_test[val], threat, n_features=3, seed=SEED)
    ranking = np.concatenate([np.argsort(-scores.robustness, kind="stable"), np.arange(3, 40)])

    def robust_only(random_start: bool) -> list[dict]:
        x, y = data.x_test[evaluation], data.y_test[evaluation]
        kernels = robust_only_kernels(
            machine, ranking, [3, 40], x, y, threat, pgd_step=0.1, pgd_steps=1, random_start=random_start, seed=SEED
        )
        return [r.as_dict() for r in kernels]

    expected = robust_only(False)
    assert expected != robust_only(True)  # one step of a third of eps: the start shows
    assert no_random_start.record["architectures"]["fc2"]["robust_only"] == expected
    assert no_random_start.record["config"]["random_start"] is False


def test_each_gallery_figure_is_drawn_from_its_own_features(no_random_start, tmp_path, monkeypatch):
    """feature_gallery.png pictures the top --top-k features (#0, #1) under a heading naming the
    top ones; useful_non_robust.png the useful, non-robust ones (with --non-robust-below 1 every
    useful feature), under its own heading, whose caption states the mask's rule (robustness <= the threshold,
    as ``useful_non_robust`` counts it). A swap of the two would draw one's pictures under the
    other's name."""
    from ntkrobust import plots

    drawn = {}

    def record(image, rows, path, subtitle, heading):
        drawn[path.name] = ([caption.split()[0] for caption in rows[0][2]], heading, subtitle)

    monkeypatch.setattr(plots, "feature_gallery", record)
    for figure in ("robustness_usefulness", "robust_only_curves"):
        monkeypatch.setattr(plots, figure, lambda *args, **kwargs: None)
    no_random_start.save(tmp_path / "run")
    scores = no_random_start.tables["fc2"]
    weak = np.flatnonzero(scores.usefulness > scores.chance).tolist()  # robustness <= 1 always
    top_captions, top_heading, top_subtitle = drawn["feature_gallery.png"]
    assert top_captions == ["#0", "#1"] and "the top" in top_heading and "top features" in top_subtitle
    strip_captions, strip_heading, strip_subtitle = drawn["useful_non_robust.png"]
    assert strip_captions == [f"#{i}" for i in weak] and "non-robust" in strip_heading
    assert "non-robust" in strip_subtitle and "(robustness <= 1)" in strip_subtitle  # the mask: robustness <= 1


@pytest.mark.parametrize(("split", "points"), [("train", 30), ("test", 20)])
def test_entk_on_every_point_of_the_split_is_allowed(split, points, past_checks, refuses):
    """--n may be the whole split (30 train / 20 test points, two or three of each digit: a
    class-balanced choice of all of them exists); one point more is refused. The kernel is never
    computed: the memory check right after the points are chosen stops the run."""
    from ntkrobust.studies import entk
    from ntkrobust.studies.entk import EntkSettings

    data = DataSettings(n_train=30, n_test=20)
    past_checks(entk, EntkSettings(data=data, model="fc1", width=8, n=points, split=split), BUDGET)
    too_many = EntkSettings(data=data, model="fc1", width=8, n=points + 1, split=split)
    refuses(entk, too_many, f"--n {points + 1} exceeds the {points} {split} points", compute=(BUDGET,))


@pytest.mark.parametrize(("kind", "said"), [("class-blocks", True), ("full", True), ("trace", False)])
def test_the_kernel_image_says_when_it_draws_the_mean_of_the_diagonal_blocks(kind, said):
    """A full (N, N, C, C) or class-blocks (N, N, C) kernel is pictured as the mean of its C
    diagonal output blocks Θ_cc (computed here with numpy from the kernel the study returns); the
    subtitle says so for both kinds, and not for a trace kernel, which is drawn as it is."""
    from ntkrobust.studies import entk
    from ntkrobust.studies.entk import EntkSettings

    settings = EntkSettings(
        data=DataSettings(classes=(3, 8), n_train=20, n_test=10), model="fc1", width=8, n=6, kind=kind
    )
    result = entk.run(settings)
    kernel = result.arrays["kernel"]
    if kernel.ndim == 4:
        blocks = np.stack([kernel[:, :, c, c] for c in range(kernel.shape[2])])
    elif kernel.ndim == 3:
        blocks = np.moveaxis(kernel, 2, 0)
    else:
        blocks = kernel[None]
    assert blocks.shape == (1 if kind == "trace" else 2, 6, 6)
    np.testing.assert_allclose(result.picture["kernel"], blocks.mean(axis=0), rtol=1e-12)
    assert ("mean of its C diagonal output blocks" in result.picture["subtitle"]) is said


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"width": 8}, "width 8 (run: 16)"),
        ({"name": "fc1"}, "model fc1 (run: fc2)"),
        ({"num_classes": 2}, "num_classes 2 (run: 10)"),
        ({"input_shape": (1, 4, 4)}, "input_shape"),
    ],
)
def test_each_field_of_the_trained_network_tells_a_foreign_checkpoint(tmp_path, changes, said):
    """The network pictured must be the one its run's history records: the model, its
    width, its outputs and its input shape each tell two networks apart (an fc2 of width 8 in a
    run of width 16 has other kernels). The same network, read back from the JSON, passes."""
    import json

    from ntkrobust.bridge.models import model_config
    from ntkrobust.studies import dynamics

    trained = model_config("fc2", (1, 8, 8), 10, width=16)
    history = json.loads(json.dumps({"config": {"model": trained.to_dict()}}))  # as the run's history.json
    path = tmp_path / "run" / "checkpoints" / "epoch_002.pt"
    dynamics._check_same_model(path, json.loads(json.dumps(trained.to_dict())), history)  # the same: no refusal
    fields = {"name": "fc2", "input_shape": (1, 8, 8), "num_classes": 10, "width": 16} | changes
    other = model_config(fields["name"], fields["input_shape"], fields["num_classes"], width=fields["width"])
    with pytest.raises(StudyError, match="is not the network its run trained") as caught:
        dynamics._check_same_model(path, json.loads(json.dumps(other.to_dict())), history)
    assert said in str(caught.value)


def test_eigenvector_rows_keep_the_maximising_and_minimising_pictures_apart(monkeypatch, tmp_path):
    """LOO fig. 4: each row holds the images that maximise, then those that minimise, each top
    eigenvector's projection, with their cosines in the same order and under the names
    cosine_max / cosine_min; the class, the count, the steps and the probe's image shape given
    reach the library. The library is replaced by stand-ins whose outputs say which call made
    them, so a swapped pair shows without minutes of optimisation."""
    from types import SimpleNamespace

    from ntkrobust.bridge import eigenvectors
    from ntkrobust.studies import dynamics
    from ntkrobust.studies.dynamics import DynamicsSettings

    calls = []

    def fake_eigenvectors(network, x, *, output, top):
        calls.append(("eigen", network, output, top))
        return SimpleNamespace(eigenvalues=np.array([5.0, 2.0]))

    def fake_images(network, eigen, *, maximize, steps, image_shape, seed, progress):
        calls.append(("images", maximize, steps, image_shape))
        sign = 1.0 if maximize else -1.0
        return np.full((2, *image_shape), sign, dtype=np.float32), sign * np.array([0.9, 0.8])

    monkeypatch.setattr(eigenvectors, "ntk_eigenvectors", fake_eigenvectors)
    monkeypatch.setattr(eigenvectors, "eigenvector_images", fake_images)
    settings = DynamicsSettings(runs=(tmp_path,), eigenvectors=2, eigenvector_class=1, eigenvector_steps=7)
    x = np.zeros((4, 1, 3, 5), dtype=np.float32)
    rows, cosines, summary = dynamics.eigenvector_rows(settings, [("end of a", tmp_path / "e.pt", "net", x)], False)
    ((label, maximising, minimising),) = rows
    assert label == "end of a" and (maximising == 1).all() and (minimising == -1).all()
    ((cos_max, cos_min),) = cosines
    assert cos_max.tolist() == [0.9, 0.8] and cos_min.tolist() == [-0.9, -0.8]
    assert summary["end of a"] == {
        "checkpoint": str(tmp_path / "e.pt"),
        "eigenvalues": [5.0, 2.0],
        "cosine_max": [0.9, 0.8],
        "cosine_min": [-0.9, -0.8],
    }
    assert calls[0] == ("eigen", "net", 1, 2)
    assert sorted(calls[1:]) == [("images", False, 7, (1, 3, 5)), ("images", True, 7, (1, 3, 5))]


def test_a_specialization_epoch_must_be_one_tracked_up_to_rounding():
    """--ksm-epochs picks tracked kernels: with kernels at steps 0, 1, 3 of 5 steps per epoch
    (epochs 0, 0.2, 0.6) epoch 3 * 0.2 = 0.6000000000000001 is the step-3 kernel (float rounding
    only), while 0.4, the untracked step 2 one interval away, is refused; only the first seed's
    epochs are read (the seed pictured)."""
    from types import SimpleNamespace

    from ntkrobust.studies import dynamics

    tracked = np.array([0, 1, 3]) / 5
    first = SimpleNamespace(kernel_epochs=tracked)
    other = SimpleNamespace(kernel_epochs=np.array([0.4]))
    groups = [SimpleNamespace(label="run a", runs=[first, other])]
    dynamics._check_ksm_epochs([0.0, 3 * 0.2, 0.2], groups)
    for epoch in (0.4, 0.1, 0.8):
        with pytest.raises(StudyError, match=f"--ksm-epochs {epoch:g}: run a tracked no kernel at epoch {epoch:g}"):
            dynamics._check_ksm_epochs([epoch], groups)


def test_one_initialisation_needs_the_same_weights_and_the_same_probe():
    """Runs that start from the same weights on the same probe share one picture row,
    "initialisation"; the same weights on another probe (its kernel is another matrix) or other
    weights each keep their own "initialisation of ..." row; the end rows follow unchanged."""
    import torch

    from ntkrobust.studies import dynamics

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    twin = torch.nn.Linear(4, 2)
    twin.load_state_dict(net.state_dict())
    other = torch.nn.Linear(4, 2)
    probe = np.arange(8, dtype=np.float32).reshape(2, 4)
    ends = [("end of a", "ea", net, probe), ("end of b", "eb", twin, probe)]

    def starts(second_net, second_probe):
        loaded = [("initialisation of a", "a", net, probe), ("initialisation of b", "b", second_net, second_probe)]
        return [row[0] for row in dynamics._distinct_starts(loaded + ends, 2)]

    assert starts(twin, probe.copy()) == ["initialisation", "end of a", "end of b"]
    both = ["initialisation of a", "initialisation of b", "end of a", "end of b"]
    assert starts(twin, probe + 1) == both
    assert starts(other, probe.copy()) == both


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_network_with_non_finite_weights_is_refused_before_its_eigenvectors(tmp_path, bad):
    """A diverged run's network (one NaN or inf weight) has no kernel to decompose: it is refused
    by the checks made before any eigenvector, while the same network with finite weights, all
    probe points asked for (one more is refused: N points have N eigenvectors) and the last
    output passes them."""
    import torch

    from ntkrobust.bridge.models import build_model, model_config
    from ntkrobust.studies import dynamics
    from ntkrobust.studies.dynamics import DynamicsSettings

    config = model_config("fc1", (1, 4, 4), 3, width=4)
    model = build_model(config)
    x = np.zeros((5, 1, 4, 4), dtype=np.float32)
    settings = DynamicsSettings(runs=(tmp_path,), eigenvectors=5, eigenvector_class=2)
    path = tmp_path / "net.pt"
    run = types.SimpleNamespace(history={"config": {"model": config.to_dict()}})  # the run that trained it
    dynamics._check_pictured(settings, path, run, model, config, x)
    one_more = DynamicsSettings(runs=(tmp_path,), eigenvectors=6, eigenvector_class=2)  # 5 points: 5 eigenvectors
    with pytest.raises(StudyError, match=r"--eigenvectors 6: the probe of .* has 5 points; ask for 1 to 5"):
        dynamics._check_pictured(one_more, path, run, model, config, x)
    with torch.no_grad():
        next(p for p in model.parameters() if p.is_floating_point()).view(-1)[0] = bad
    with pytest.raises(StudyError, match="the network's weights hold NaN or inf"):
        dynamics._check_pictured(settings, path, run, model, config, x)


@pytest.mark.parametrize(
    ("draws", "said"), [(1, "Rademacher estimate of 1 draw"), (2, "Rademacher estimate of 2 draws")]
)
def test_the_kernel_image_counts_the_rademacher_draws(draws, said):
    """A Rademacher trace estimate's title names its number of draws (the index of the kind, not
    an output), with the plural only for more than one (at most two draws for two outputs)."""
    from ntkrobust.studies import entk
    from ntkrobust.studies.entk import EntkSettings

    settings = EntkSettings(
        data=DataSettings(classes=(3, 8), n_train=20, n_test=10), model="fc1", width=8, n=6, kind=f"rademacher:{draws}"
    )
    title = entk.run(settings).picture["title"]
    assert title.endswith(said) and title.startswith("Empirical C-NTK: trace kernel")


def test_the_memory_budget_is_recorded_in_the_mib_it_was_given_in():
    """--memory-budget is given in MiB and recorded as memory_budget_mib: 64 MiB given (one
    process: the budget every process agrees on is this one) is recorded as 64, not in KiB."""
    from ntkrobust.studies import entk
    from ntkrobust.studies.entk import EntkSettings

    settings = EntkSettings(
        data=DataSettings(classes=(3, 8), n_train=20, n_test=10), model="fc1", width=8, n=6, memory_budget=64
    )
    assert entk.run(settings).record["config"]["memory_budget_mib"] == 64


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        (
            {"eigenvector_steps": 5},
            "--eigenvector-steps sets the eigenvector pictures: give --eigenvectors K, or leave it out",
        ),
        (
            {"eigenvector_class": 1, "eigenvector_steps": 5},
            "--eigenvector-class / --eigenvector-steps set the eigenvector pictures: give --eigenvectors K, or leave "
            "them out",
        ),
    ],
)
def test_picture_flags_without_pictures_are_refused_in_words_that_count_them(tmp_path, fields, said, refuses):
    """Without --eigenvectors the picture flags are unread and refused before any run folder is
    read; the message's verb and pronoun agree with the number of flags given (one: "sets ...
    it", two: "set ... them")."""
    from ntkrobust.studies import dynamics
    from ntkrobust.studies.dynamics import DynamicsSettings

    refuses(dynamics, DynamicsSettings(runs=(tmp_path / "nothing",), **fields), said)
