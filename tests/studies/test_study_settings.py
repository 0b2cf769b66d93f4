"""Settings that the command line's parser would refuse are refused by the studies too, with the
one domain error, before any data is loaded or compute starts."""

from __future__ import annotations

import warnings

import pytest

from ntkrobust.studies import MachineSettings, StudyError, ThreatSettings, attack, entk, features, transfer, two_layer

CASES = [
    (attack, attack.AttackSettings(arch="resnet"), "--arch 'resnet'"),
    (attack, attack.AttackSettings(method="cw"), "--method 'cw'"),
    (attack, attack.AttackSettings(threat=ThreatSettings(norm="l1")), "--norm 'l1'"),
    (attack, attack.AttackSettings(machine=MachineSettings(precision="half")), "--precision 'half'"),
    (attack, attack.AttackSettings(machine=MachineSettings(gradient="numeric")), "--gradient 'numeric'"),
    (entk, entk.EntkSettings(split="val"), "--split 'val'"),
    (entk, entk.EntkSettings(dtype="float16"), "--dtype 'float16'"),
    (entk, entk.EntkSettings(model="fc2", checkpoint="x.pt"), "choose one"),
    (features, features.FeaturesSettings(feature_attack="cw"), "--feature-attack 'cw'"),
    (two_layer, two_layer.TwoLayerSettings(method="taylor-l1", epochs=2), "--method 'taylor-l1'"),
    (transfer, transfer.TransferSettings(target=("x.pt",), method="taylor-sum"), "--method 'taylor-sum'"),
]


@pytest.mark.parametrize(("study", "settings", "message"), CASES, ids=[c[2] for c in CASES])
def test_choices_are_checked_by_the_study(study, settings, message, monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("compute started before the settings were checked")

    # the kernel machine and the torch device come after every check of the settings
    monkeypatch.setattr(MachineSettings, "fit", no_compute)
    monkeypatch.setattr(study, "torch_device", no_compute, raising=False)
    with pytest.raises(StudyError, match=message.replace("(", r"\(")) as error:
        study.run(settings)
    assert "\n" not in str(error.value)


def test_eps_zero_is_named_as_such():
    with pytest.raises(StudyError, match="--eps must be a finite number > 0"):
        ThreatSettings(eps=0.0).resolve((1, 8, 8))


def test_a_subset_larger_than_the_data_is_refused(monkeypatch):
    from ntkrobust.studies import DataSettings

    settings = transfer.TransferSettings(target=("x.pt",), kernel_n=100_000, data=DataSettings(n_train=50))
    monkeypatch.setattr(transfer, "load_targets", lambda *args, **kwargs: [])  # no nets needed
    monkeypatch.setattr(MachineSettings, "fit", lambda *args: pytest.fail("compute before the check"))
    with pytest.raises(StudyError, match="--kernel-n 100000 exceeds the 50 training points"):
        transfer.run(settings)


def test_a_folder_given_as_a_checkpoint_says_so(tmp_path):
    with pytest.raises(StudyError, match="is a folder, not a checkpoint file"):
        entk.run(entk.EntkSettings(checkpoint=tmp_path, n=10))


def test_every_attacking_study_warns_of_a_budget_pgd_cannot_use(small_training, tmp_path):
    """step x steps < eps is said (and recorded) by every command that attacks, before its compute."""
    from ntkrobust.studies import DataSettings, StudyWarning, train

    tiny = DataSettings(n_train=40, n_test=20)
    budget = "PGD can move at most"
    settings = small_training(tmp_path / "run", mode="pgd", epochs=0, eps=0.3, pgd_step=0.01, pgd_steps=2)
    with pytest.warns(StudyWarning, match=f"training PGD: {budget}.*raise --pgd-steps or --pgd-step"):
        result = train.run(settings)
    assert any(budget in note for note in result.record["warnings"])
    with pytest.warns(StudyWarning, match=f"AE-NTK PGD: {budget}.*raise --pgd-steps"):
        entk.run(entk.EntkSettings(data=tiny, n=10, adversarial_eps=0.3, pgd_steps=1))
    threat = ThreatSettings(eps=0.3, steps=2)
    with pytest.warns(StudyWarning, match=budget):
        two_layer.run(two_layer.TwoLayerSettings(data=tiny, width=(20,), epochs=1, method="pgd", threat=threat))
    with pytest.warns(StudyWarning, match=f"feature attack: {budget}"):
        features.run(
            features.FeaturesSettings(data=tiny, n_features=2, feature_attack="pgd", threat=threat, robust_r=())
        )
    with pytest.warns(StudyWarning, match=f"robust-only kernels' PGD: {budget}.*raise --robust-steps"):
        settings = features.FeaturesSettings(
            data=tiny, n_features=2, threat=ThreatSettings(step=0.001), robust_r=(1,), robust_steps=2
        )
        features.run(settings)


@pytest.mark.parametrize(
    ("channels", "eps", "steps", "step"),
    [(1, 0.3, 10, 0.075), (1, 0.3, 40, 0.01875), (1, 0.1, 200, 0.01 / 3), (3, 8 / 255, 20, 2 / 255)],
)
def test_evaluation_steps_are_the_standard_step_or_long_enough_to_cross_the_ball(channels, eps, steps, step):
    from ntkrobust.attacks import evaluation_schedule

    assert evaluation_schedule(channels, eps, steps) == (pytest.approx(step), steps)


def test_train_scales_its_evaluation_attacks_to_reach_eps(small_training, tmp_path):
    """Two evaluation steps of the standard 0.01 could not leave 0.02 of the start: evaluation
    steps are 2.5 eps / steps long when that is longer than the standard step."""
    from ntkrobust.studies import train

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn of in the settings
        warnings.filterwarnings("ignore", message=".*near chance")  # one epoch of 2 steps learns little
        result = train.run(small_training(tmp_path / "run", epochs=1, eps=0.3, eval_pgd_steps=2, full_eval_steps=40))
    tracking = result.record["config"]["tracking"]
    assert tracking["steps"] == 2 and tracking["step"] == pytest.approx(2.5 * 0.3 / 2)
    assert (tracking["full_steps"], tracking["full_step"]) == (40, pytest.approx(2.5 * 0.3 / 40))
    last = result.record["epochs"][-1]
    assert last["full_evaluation"]["steps"] == 40
    assert set(last["full_evaluation"]["accuracy"]["running"]) == {"train_pgd", "test_pgd"}
    assert "full_evaluation" not in result.record["epochs"][0]
    assert "PGD-2 " in result.summary() and "PGD-40 " in result.summary()


@pytest.mark.parametrize(("channels", "eps", "hint"), [(1, 8 / 255, "colour-image radius"), (3, 0.3, "grey-image")])
def test_an_eps_made_for_the_other_image_type_is_hinted(channels, eps, hint):
    from ntkrobust.attacks import AttackSpec

    assert hint in AttackSpec("fgsm", eps).eps_hint(channels)
    assert AttackSpec("fgsm", 0.1).eps_hint(1) is None and AttackSpec("fgsm", 8 / 255).eps_hint(3) is None


# -- whole numbers: the parser's minimums, and the studies' --------------------------------------

# a valid command line per command: parsed, then one count set below its minimum from Python
VALID_ARGV = {
    "attack": ["attack"],
    "features": ["features"],
    "entk": ["entk"],
    "train": ["train"],
    "dynamics": ["dynamics", "RUN"],
    "two-layer": ["two-layer"],
    "transfer": ["transfer", "--target", "x.pt"],
    "evaluate": ["evaluate", "x.pt"],
    "make-npz": ["make-npz"],
}


def _parser_minimums(command: str) -> dict[str, int]:
    """dest: minimum of every whole-number flag of ``command`` (``_int_at_least``, ``_seed``)."""
    import argparse

    from ntkrobust import cli

    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for action in subparsers.choices[command]._actions:
        name = getattr(action.type, "__qualname__", "")
        if name.startswith("_int_at_least"):
            found[action.dest] = action.type.__closure__[0].cell_contents
        elif name.startswith(("_seed", "_seed_list")):
            found[action.dest] = 0
    return found


def _settings_minimums(cls: type) -> dict[str, int]:
    import dataclasses
    import typing

    found = dict(getattr(cls, "COUNTS", {}))
    for hint in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint):
            found.update(_settings_minimums(hint))
    return found


@pytest.mark.parametrize("command", list(VALID_ARGV))
def test_the_studies_check_the_whole_numbers_the_parser_checks(command, tmp_path, monkeypatch):
    """One table each side (the parser's types, the settings' COUNTS), found equal here; and each
    count below its minimum, given from Python, is a StudyError naming its flag before any compute
    (0 / -1 / 2.5 met range() and numpy inside the compute before: a ZeroDivisionError for
    ``features`` with robust_steps=0 after its machine was fitted)."""
    import dataclasses

    from ntkrobust import cli

    monkeypatch.chdir(tmp_path)
    args = cli.parse([*VALID_ARGV[command], "--out", str(tmp_path / "out")])
    module, settings = cli.study_settings(args)
    minimums = _parser_minimums(command)
    assert _settings_minimums(type(settings)) == minimums
    for dest, minimum in minimums.items():
        for bad in (minimum - 1, 2.5):
            if dest == "seeds":
                bad = (0, bad)
            setattr(args, dest, bad)
            try:
                with pytest.raises(StudyError) as error:
                    module.run(cli.settings_from(type(settings), args))
            finally:
                setattr(args, dest, None)
            flag = "--" + dest.replace("_", "-")
            assert str(error.value).startswith(f"{flag} must be a whole number >= {minimum}, got "), error.value
    assert dataclasses.is_dataclass(settings)


@pytest.mark.parametrize(
    "classes, message",
    [("38", "got '38'"), (38, "got 38")],
)
def test_classes_are_a_list(classes, message):
    from ntkrobust.studies import DataSettings

    with pytest.raises(StudyError, match=f"--classes must be a list of class ids or names, e.g. \\(3, 8\\), {message}"):
        DataSettings(classes=classes).load()  # '38' was the classes 3 and 8


def test_classes_may_be_a_numpy_array():
    import numpy as np

    from ntkrobust.studies import DataSettings

    assert DataSettings(classes=np.array([3, 8]), n_train=10, n_test=10).load().classes == (3, 8)
