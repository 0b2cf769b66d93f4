"""Every finding of the three papers from one command: recipes, scales, cached steps, a report.

A *recipe* is one finding of Tsilivis & Kempe (``tk``), Loo et al. (``loo``) or "Rethinking AT
with NTK" (``rat``), or one that goes beyond them (``beyond``): the claim, the paper's number, the
study runs that measure it (``steps``) and the claim as a check on their results, which returns
a verdict: agrees, contradicts or inconclusive. ``run`` runs the recipes of a target at a
*scale* (``smoke``: digits, seconds; ``cpu``: the real MNIST and CIFAR-10 subset, 5 to 26
minutes per paper on 2 cores by ``--list``; ``paper``: the papers' sizes, on a GPU), reusing every step already
finished in OUT under the same resolved config, and the result writes ``report.html`` (one
self-contained file), ``report.md`` and ``findings.json``.

Example::

    from pathlib import Path

    from ntkrobust.reproduce import ReproduceSettings, run

    result = run(ReproduceSettings("tk", out=Path("runs/reproduce-smoke"), scale="smoke"))
    result.save("runs/reproduce-smoke")
    print(result.summary())
"""

from ntkrobust.reproduce._recipe import SCALES, VERDICTS, Recipe, Step, Verdict
from ntkrobust.reproduce.run import (
    GROUPS,
    RECIPES,
    ReproduceResult,
    ReproduceSettings,
    all_recipes,
    listing,
    run,
    select,
)

__all__ = [
    "GROUPS",
    "RECIPES",
    "SCALES",
    "VERDICTS",
    "Recipe",
    "ReproduceResult",
    "ReproduceSettings",
    "Step",
    "Verdict",
    "all_recipes",
    "listing",
    "run",
    "select",
]
