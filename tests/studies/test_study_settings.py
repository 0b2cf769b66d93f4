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
        ThreatSettings(eps=0.0).resolve(channels=1)


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
