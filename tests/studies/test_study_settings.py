"""Settings that the command line's parser would refuse are refused by the studies too, with the
one domain error, before any data is loaded or compute starts."""

from __future__ import annotations

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
