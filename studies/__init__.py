"""The studies: one module per command, each ``run(settings) -> result``.

Typed settings in (frozen dataclasses whose fields are the command's flags), a result out with
``result.save(out_dir)`` (files staged and moved in atomically) and ``result.summary()`` (the line
the command prints). This is the only package that imports both halves (``kernels`` and
``bridge``); the command line (``ntkrobust.cli``) only parses, calls and prints.

=============  ===================================  ===========================================
module         settings                             what it runs
=============  ===================================  ===========================================
attack         ``AttackSettings``                   black-box NTK attack (TK eq. 7-8)
features       ``FeaturesSettings``                 eigen-feature robustness / usefulness (TK)
entk           ``EntkSettings``                     empirical NTK of a torch net, with metrics
train          ``TrainSettings``                    training with kernel tracking (LOO, RAT)
dynamics       ``DynamicsSettings``                 figures of how the kernels moved
two_layer      ``TwoLayerSettings``                 TK supp. C: two-layer nets vs their NTK
transfer       ``TransferSettings``                 transfer matrix and τ (TK, LOO sec. 5)
evaluate       ``EvaluateSettings``                 PGD-20/100, CW, AutoAttack (RobustBench)
make_npz       ``MakeNpzSettings``                  a resolved dataset as an .npz
=============  ===================================  ===========================================

Example::

    from ntkrobust.studies import attack
    from ntkrobust.studies import DataSettings

    result = attack.run(attack.AttackSettings(data=DataSettings("digits", classes=(3, 8)), method="pgd"))
    result.save("runs/digits-pgd")
    print(result.summary())

Bad settings raise ``StudyError`` before any compute.
"""

from ntkrobust.studies._base import StudyError, StudyResult, StudyWarning
from ntkrobust.studies._common import DataSettings, MachineSettings, ThreatSettings

__all__ = ["DataSettings", "MachineSettings", "StudyError", "StudyResult", "StudyWarning", "ThreatSettings"]
