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
