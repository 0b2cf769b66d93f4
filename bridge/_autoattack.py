"""AutoAttack (Croce & Hein, 2020) by its reference code, with progress a user can see.

``autoattack_correct`` runs the registry's ``pyautoattack`` on batches of points, each batch a run
of its own (``bridge.evaluation`` says why). Its runs take minutes on a CPU (APGD-T: 9 target
classes × 100 iterations; Square: 5000 queries), and the reference code reports only when a part
ends. Here each part of each run is a progress loop (``_progress.progress_bar``: a bar in a
terminal, a plain line every minute when stderr is a file) counting the part's own steps:

- APGD-CE / APGD-DLR / APGD-T: iterations, ``n_iter`` per run (× target classes for APGD-T),
  counted as the net's forward passes inside ``attack_single_run`` (one per iteration and EOT
  draw, after the ``eot_iter`` passes of the starting point);
- FAB / FAB-T: iterations, one logit-difference gradient each (``get_diff_logits_grads_batch``);
- Square: queries, ``n_queries`` per run, one ``margin_and_loss`` each after the starting one.

A run that ends early (every point fooled: APGD-T skips its remaining target classes, Square
stops) leaves its loop short of its total. The counters wrap methods of the one ``AutoAttack``
instance made here, for the length of a run; its results are those of the unwrapped code.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkrobust._progress import progress_bar
from ntkrobust.bridge.adversarial import in_batches, predict

#: what each part counts, its unit, and how many it counts per run (``_PARTS[part](attack)``)
_PARTS: dict[str, tuple[str, str, Callable[[Any], int]]] = {
    "apgd-ce": ("apgd", "iteration", lambda a: a.n_iter * a.n_restarts),
    "apgd-dlr": ("apgd", "iteration", lambda a: a.n_iter * a.n_restarts),
    "apgd-t": ("apgd_targeted", "iteration", lambda a: a.n_iter * a.n_restarts * a.n_target_classes),
    "fab": ("fab", "iteration", lambda a: a.n_iter * a.n_restarts),
    "fab-t": ("fab", "iteration", lambda a: a.n_iter * a.n_target_classes),  # AutoAttack sets 1 restart
    "square": ("square", "query", lambda a: a.n_queries * a.n_restarts),
}


class _Steps:
    """The steps one part has taken in one run: whole single runs done, and the current one's."""

    def __init__(self, per_run: int, skipped: int, per_step: int = 1) -> None:
        self.per_run, self.skipped, self.per_step = per_run, skipped, per_step
        self.runs, self.calls = 0, 0

    @property
    def taken(self) -> int:
        current = min(max(self.calls - self.skipped, 0) // self.per_step, self.per_run)
        return self.runs * self.per_run + current


@contextlib.contextmanager
def _counted(part: str, attack: Any, bar: Any) -> Iterator[None]:
    """While open: the steps of ``attack`` (a part of AutoAttack, e.g. its ``apgd_targeted``)
    advance ``bar``. Its ``attack_single_run`` and its per-step method are wrapped on the
    instance and restored on leaving."""
    if part.startswith("apgd"):  # the net's forward passes: eot_iter at the start, eot_iter per iteration
        steps, name = _Steps(attack.n_iter, attack.eot_iter, attack.eot_iter), "model"
    elif part.startswith("fab"):
        steps, name = _Steps(attack.n_iter, 0), "get_diff_logits_grads_batch" + ("_targeted" if part == "fab-t" else "")
    else:  # square: one margin of the starting point, then one per query
        steps, name = _Steps(attack.n_queries, 1), "margin_and_loss"
    shown = 0

    def show() -> None:
        nonlocal shown
        if steps.taken > shown:
            bar.update(steps.taken - shown)
            shown = steps.taken

    inner, single_run = getattr(attack, name), attack.attack_single_run

    def counted_step(*args: Any, **kwargs: Any) -> Any:
        steps.calls += 1
        show()
        return inner(*args, **kwargs)

    def counted_run(*args: Any, **kwargs: Any) -> Any:
        steps.calls = 0
        try:
            return single_run(*args, **kwargs)
        finally:
            steps.runs, steps.calls = steps.runs + 1, 0
            show()

    with _replaced(attack, name, counted_step), _replaced(attack, "attack_single_run", counted_run):
        yield


@contextlib.contextmanager
def _replaced(instance: Any, name: str, value: Any) -> Iterator[None]:
    """``instance.name`` is ``value`` while open; then what it was: the instance's own attribute
    again (the net, APGD's "model"), or none, so that the class's method shows through."""
    own = vars(instance)
    had, before = name in own, own.get(name)
    setattr(instance, name, value)
    try:
        yield
    finally:
        if had:
            setattr(instance, name, before)
        else:
            delattr(instance, name)


@contextlib.contextmanager
def _parts_counted(attack: Any, where: str, show: bool) -> Iterator[None]:
    """Each part's ``perturb`` of ``attack`` (an ``AutoAttack``) opens a progress loop over its
    steps, named "AutoAttack PART" and ``where``."""
    with contextlib.ExitStack() as wrapped:
        # apgd-ce and apgd-dlr share one instance: wrapped once, each call names its own part
        for member in dict.fromkeys(_PARTS[part][0] for part in attack.attacks_to_run):
            instance = getattr(attack, member)

            def counted_perturb(
                *args: Any, _instance: Any = instance, _perturb: Any = instance.perturb, **kw: Any
            ) -> Any:
                name = _running(attack, _instance)
                label = f"AutoAttack {name.upper()}{where}"
                total = _PARTS[name][2](_instance)
                with progress_bar(total, label, _PARTS[name][1], show=show) as bar, _counted(name, _instance, bar):
                    return _perturb(*args, **kw)

            wrapped.enter_context(_replaced(instance, "perturb", counted_perturb))
        yield


def _running(attack: Any, instance: Any) -> str:
    """The part of AutoAttack that is calling ``instance``'s ``perturb`` now."""
    if instance is attack.apgd:
        return "apgd-ce" if instance.loss == "ce" else "apgd-dlr"
    if instance is attack.apgd_targeted:
        return "apgd-t"
    if instance is attack.fab:
        return "fab-t" if instance.targeted else "fab"
    return "square"


def autoattack_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    classes: int,
    eps: float,
    seed: int,
    batch_size: int,
    parts: Sequence[str],
    across_processes: bool,
    progress: bool = False,
) -> np.ndarray:
    """AutoAttack's ``parts`` (pyautoattack's names) against ``model``'s ``classes`` logits, on each
    batch of ``batch_size`` points as a run of its own, seeded by ``seed`` + its first row: a
    point's verdict depends on its batch alone, so the batches can be shared between the
    processes of a torchrun launch (each of AutoAttack's attacks reseeds torch's generator per
    batch anyway). For at most ``batch_size`` points, one run with ``seed``: exactly AutoAttack's
    ``run_standard_evaluation``.
    ``progress``: bars in a terminal, else timed lines (module docstring)."""
    from pyautoattack import AutoAttack

    attack = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device=x.device)
    attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = min(9, classes - 1)
    attack.attacks_to_run = list(parts)

    def survived(rows: slice) -> torch.Tensor:
        attack.seed = seed + rows.start  # each attack takes its seed from here (AutoAttack.get_seed)
        several = x.shape[0] > batch_size
        points = f"points {rows.start}-{rows.start + x[rows].shape[0] - 1} of {x.shape[0]}"
        with (
            _autoattack_lines(points if several else None),
            _parts_counted(attack, f" ({points})" if several else "", progress),
        ):
            x_adv, _ = attack.run_standard_evaluation(x[rows], y[rows], batch_size=batch_size)
        return (predict(model, x_adv) == y[rows]).long()

    flags = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return in_batches(survived, flags, batch_size=batch_size, across_processes=across_processes).bool().cpu().numpy()


class _Forward(logging.Handler):
    """AutoAttack's own account of its attacks (a line per attack and batch, at DEBUG level),
    passed on as progress lines of the ``ntkrobust`` logger."""

    def __init__(self, points: str | None) -> None:
        super().__init__()
        self.prefix = "AutoAttack" if points is None else f"AutoAttack, {points}"

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "successfully perturbed" in message or message.startswith("robust accuracy after"):
            logging.getLogger("ntkrobust").info(f"{self.prefix}: {message}")


@contextlib.contextmanager
def _autoattack_lines(points: str | None) -> Iterator[None]:
    """AutoAttack's lines as the ``ntkrobust`` logger's, labelled with the ``points`` a run
    attacks when it is one of several."""
    logger = logging.getLogger("auto-attack")
    handler, saved = _Forward(points), (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # its other lines (checks, versions) are not the user's business
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
