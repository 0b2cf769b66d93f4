"""A net's train/eval flags, put back module by module after a stretch in another mode.

``model.train(was_training)`` sets one flag on every sub-module: a net trained with one part held
in eval mode (a frozen BatchNorm, a fixed feature extractor) came back from an evaluation with
that part in train mode, and its running statistics moved at the next step. Restoring each
module's own flag returns the net exactly as it was, whatever mixture of modes it held.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """``model``, its modules' ``training`` flags restored one by one on leaving (even on an error)."""
    saved = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        # set directly, not through ``train()``: an override of it (a linearized net keeping its
        # parent in eval mode) would otherwise decide again what was already recorded
        for module, training in saved:
            module.training = training
