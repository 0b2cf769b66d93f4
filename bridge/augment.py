"""Data augmentation of training mini-batches: the standard CIFAR recipe (RAT sec. 3.1 states it).

``crop-flip``: every example is zero-padded by 4 pixels on each side and cropped back to its size
at a random offset, then flipped left-right with probability 1/2 (colour images only: a flipped
digit is another symbol, so grey images are only cropped). ``shared`` draws one offset and one
flip for the whole mini-batch instead of one per example: RAT sec. 6 (fig. 9) shows that this
shortcut of temporal-ensembling code changes how adversarial training overfits.

The draws come from ``numpy.random.default_rng(seed)`` on the host, ``seed`` derived from (run seed,
epoch, step) by the trainer, so a resumed run augments exactly as the uninterrupted one did, on
any device.

Shapes: x (B, C, H, W) in [0, 1]; the result has the same shape, dtype and device.
"""

from __future__ import annotations

import numpy as np
import torch

from ntkrobust._upload import upload

__all__ = ["AUGMENTATIONS", "CROP_PADDING", "MIN_SIDE", "augment", "check_augmentation"]

AUGMENTATIONS = ("none", "crop-flip")
#: zero padding before the random crop, in pixels (the CIFAR-10 standard)
CROP_PADDING = 4
#: smallest image side the crop is allowed on: a 4-pixel shift of a smaller image moves a
#: quarter of it or more out of view
MIN_SIDE = 4 * CROP_PADDING


def check_augmentation(name: str, image_shape: tuple[int, ...]) -> None:
    """Refuse an unknown augmentation or images too small for it (``ValueError``, one line)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if name != "none" and min(image_shape[1:]) < MIN_SIDE:
        side = "x".join(str(s) for s in image_shape[1:])
        raise ValueError(
            f"{name} pads by {CROP_PADDING} and crops: the {side} images are too small for it "
            f"(sides of at least {MIN_SIDE} pixels)"
        )


def augment(x: torch.Tensor, *, seed: int, shared: bool = False) -> torch.Tensor:
    """``x`` randomly cropped after zero padding (and flipped, for colour images), per example
    or, with ``shared``, one draw for the whole batch."""
    batch, channels, height, width = x.shape
    rng = np.random.default_rng(seed)
    draws = 1 if shared else batch
    offsets = rng.integers(0, 2 * CROP_PADDING + 1, size=(draws, 2))
    flips = rng.random(draws) < 0.5 if channels > 1 else np.zeros(draws, dtype=bool)
    if shared:
        offsets, flips = np.repeat(offsets, batch, axis=0), np.repeat(flips, batch)
    padded = torch.nn.functional.pad(x, (CROP_PADDING,) * 4)
    device = x.device
    # the draws in one copy that does not wait for the GPU: this runs every training step
    top, left, flipped = upload(np.column_stack([offsets, flips]), like=x, dtype=torch.int64).unbind(1)
    rows = top[:, None] + torch.arange(height, device=device)  # (B, H)
    columns = torch.arange(width, device=device)
    columns = torch.where(flipped.bool()[:, None], columns.flip(0), columns)
    columns = left[:, None] + columns  # (B, W), reversed for flipped examples
    examples = torch.arange(batch, device=device)[:, None, None, None]
    planes = torch.arange(channels, device=device)[None, :, None, None]
    return padded[examples, planes, rows[:, None, :, None], columns[:, None, None, :]]
