"""The one attack spec of both halves: which attack, in which threat model, on which schedule.

A kernel machine (``kernels.adversarial.craft_adversarial``), a torch net
(``bridge.adversarial.attack_examples``), adversarial training and the command line all take an
:class:`AttackSpec`. The conventions are those of torchattacks and RobustBench: inputs NCHW in
[0, 1], ε in pixel units, robust accuracy = share still correct.

Standard threat models, by image type and norm (``STANDARD_THREATS``):

- grey-scale (MNIST-like) ℓ∞: Madry et al.'s ε = 0.3, PGD step 0.01, 40 steps;
- colour (CIFAR-10-like) ℓ∞: ε = 8/255, step 2/255, 10 steps;
- ℓ2: ε = 2.0 (grey) / 0.5 (colour, RobustBench), step 0.125.

A step size given for the standard ε scales with the ε actually asked for (``pgd_schedule``), so
``--eps 0.1`` on MNIST runs 40 steps of 0.01/3.

Evaluation attacks (``evaluation_schedule``) take the standard step scaled to ε or 2.5·ε/steps
(the rule of Madry et al.'s ``robustness`` library), whichever is longer, so every number of
steps can cross the ball. A training run's per-epoch robust accuracy and AE-NTK run
``EPOCH_PGD_STEPS`` = 10 steps (cheap enough for every epoch: 0.075 each at MNIST's ε = 0.3,
CIFAR-10's standard PGD-10 of 2/255), its full evaluation 40 on grey images (0.01875 each) and
20 on colour ones (2/255; ``EVALUATION_PGD_STEPS``). On an MNIST CNN after 10 epochs of PGD-AT,
PGD-40 of 0.01875 left 0.362 of 500 test points correct, as PGD-100 of 0.01 did (0.360), where
PGD-40 of the training step 0.01 left 0.398.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ntkrobust._numbers import is_whole, pixel_radius
from ntkrobust.attacks.threat import NORMS, Norm, ThreatModel, check_schedule, check_seed

#: Attacks on kernel machines: FGSM, PGD and the first-order output attacks of TK supp. eq. 20 / 22.
METHODS: tuple[str, ...] = ("fgsm", "pgd", "taylor-l1", "taylor-sum")
#: Attacks on torch nets (and in transfer studies, where both halves attack).
NET_METHODS: tuple[str, ...] = ("fgsm", "pgd")

ImageType = Literal["grey", "colour"]

#: (eps, PGD step, PGD steps) by image type and norm.
STANDARD_THREATS: dict[tuple[ImageType, str], tuple[float, float, int]] = {
    ("grey", "linf"): (0.3, 0.01, 40),
    ("colour", "linf"): (8 / 255, 2 / 255, 10),
    ("grey", "l2"): (2.0, 0.125, 40),
    ("colour", "l2"): (0.5, 0.125, 10),
}

#: PGD steps of a full evaluation (robust accuracy at the end of training), by image type.
EVALUATION_PGD_STEPS: dict[ImageType, int] = {"grey": 40, "colour": 20}
#: PGD steps of the per-epoch robust accuracy and the AE-NTK of a training run.
EPOCH_PGD_STEPS = 10
#: an evaluation PGD step is this many ε over the steps (Madry et al.'s ``robustness`` library)
EVALUATION_STEP_FACTOR = 2.5


def image_type(channels: int) -> ImageType:
    """'grey' for one channel, else 'colour' (ValueError for fewer than one)."""
    if not is_whole(channels) or channels < 1:
        raise ValueError(f"images have one channel or more, got {channels!r}")
    return "grey" if channels == 1 else "colour"


def standard_threat(channels: int, norm: str = "linf") -> tuple[float, float, int]:
    """(eps, PGD step, PGD steps) of the standard threat model of these images and norm."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
    return STANDARD_THREATS[(image_type(channels), norm)]


def pgd_schedule(
    channels: int, norm: str, eps: float, step: float | None = None, steps: int | None = None
) -> tuple[float, int]:
    """PGD (step, steps): the given ones, else the standard ones with the step scaled to ``eps``."""
    std_eps, std_step, std_steps = standard_threat(channels, norm)
    ThreatModel("linf", eps)  # eps checked (the norm was): a negative one scales to a negative step
    # ε = 0 (the clean accuracy as an attack, e.g. the first point of a curve over ε) makes a
    # ball of one point: any step stays in it; the standard one keeps the schedule valid
    step = (std_step * eps / std_eps if eps > 0 else std_step) if step is None else step
    steps = std_steps if steps is None else steps
    check_schedule(step, steps)
    return step, steps


def evaluation_steps(channels: int, steps: int | None = None) -> int:
    """PGD steps of a full evaluation attack: ``steps`` if given, else the standard ones."""
    return EVALUATION_PGD_STEPS[image_type(channels)] if steps is None else steps


def evaluation_schedule(channels: int, eps: float, steps: int) -> tuple[float, int]:
    """(step, steps) of an ℓ∞ evaluation PGD of ``steps`` steps: the standard step scaled to
    ``eps`` or 2.5·ε/steps, whichever is longer, so the attack can use its whole budget."""
    if steps < 1:
        raise ValueError(f"an evaluation PGD needs steps >= 1, got {steps}")
    standard, _ = pgd_schedule(channels, "linf", eps)
    return max(standard, EVALUATION_STEP_FACTOR * eps / steps), steps


@dataclass(frozen=True)
class AttackSpec:
    """What to run: ``method`` in the ``norm`` ball of radius ``eps`` (pixel units); PGD takes
    ``steps`` of ``step`` from a random start unless told otherwise (a one-step method drops the
    schedule and the start it is given: its spec holds step None, steps 1, random_start False).
    ``seed`` seeds the random starts (and the random-sign baseline)."""

    method: str
    eps: float
    norm: Norm = "linf"
    step: float | None = None
    steps: int = 1
    random_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown attack method {self.method!r}: choose one of {', '.join(METHODS)}")
        ThreatModel(self.norm, self.eps)  # checks the norm and eps
        if self.iterative:
            check_schedule(self.step, self.steps)
        else:  # one step from x: no schedule and no random start, as the record says
            for name, value in (("step", None), ("steps", 1), ("random_start", False)):
                object.__setattr__(self, name, value)
        check_seed(self.seed)

    @classmethod
    def standard(
        cls,
        method: str,
        channels: int,
        *,
        norm: Norm = "linf",
        eps: float | None = None,
        step: float | None = None,
        steps: int | None = None,
        random_start: bool = True,
        seed: int = 0,
    ) -> AttackSpec:
        """The spec with every value not given taken from the standard threat model of images
        with ``channels`` channels (the step scaled to ``eps``)."""
        eps = standard_threat(channels, norm)[0] if eps is None else eps
        step, steps = pgd_schedule(channels, norm, eps, step, steps)
        return cls(method, eps, norm, step, steps, random_start, seed)

    @property
    def iterative(self) -> bool:
        return self.method == "pgd"

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)

    def budget_warning(self, flags: tuple[str, str] = ("--steps", "--step")) -> str | None:
        """Why PGD cannot use its whole budget (step × steps < ε), or None; ``flags`` name the
        steps and the step of the command that set them."""
        if self.iterative and self.step is not None and self.step * self.steps < self.eps:
            return (
                f"PGD can move at most step*steps = {self.step * self.steps:.4g} from its start, less than "
                f"eps = {pixel_radius(self.eps)}: raise {flags[0]} or {flags[1]} to use the whole budget"
            )
        return None

    def eps_hint(self, channels: int) -> str | None:
        """A hint when an ℓ∞ ε looks made for the other image type (8/255 on MNIST, 0.3 on CIFAR)."""
        if self.norm != "linf" or self.eps == 0:
            return None
        grey, colour = STANDARD_THREATS[("grey", "linf")][0], STANDARD_THREATS[("colour", "linf")][0]
        if image_type(channels) == "grey" and self.eps <= 2 * colour:
            return (
                f"eps {pixel_radius(self.eps)} on grey-scale images is a colour-image radius (CIFAR-10's standard "
                f"is {pixel_radius(colour)}; MNIST's is {pixel_radius(grey)})"
            )
        if image_type(channels) == "colour" and self.eps >= 0.1:
            return (
                f"eps {pixel_radius(self.eps)} on colour images is a grey-image radius (MNIST's standard is "
                f"{pixel_radius(grey)}; CIFAR-10's is {pixel_radius(colour)})"
            )
        return None

    def notes(self, channels: int, what: str = "", flags: tuple[str, str] = ("--steps", "--step")) -> list[str]:
        """What a user should hear about this attack on these images (budget, ε), each prefixed
        with ``what`` (e.g. "evaluation PGD: ")."""
        return [f"{what}{note}" for note in (self.budget_warning(flags), self.eps_hint(channels)) if note]

    def to_dict(self) -> dict[str, Any]:
        """The spec as recorded in results (one-step methods hold no schedule and no start)."""
        return asdict(self)
