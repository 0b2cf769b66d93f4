"""Audit of ``bridge.augment``'s crop-flip: the law of the draws, not only their shape.

Independent route: images whose every pixel codes its own position, so that (top, left, flip) of
each augmented example is read off its pixels (no search over crops), and the example rebuilt
by numpy (np.pad, slicing, [::-1]) from what was read. Then the draws are counted: top and left
each uniform on the 9 offsets 0..8 (χ² test, p > 1e-3 on fixed seeds, every offset seen),
independent of each other, flips ~ Bernoulli(1/2) (within 4 standard deviations), no flip for grey
images, and ``shared`` one draw per batch whose flips are still fair across batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from ntkrobust.bridge.augment import CROP_PADDING, augment

SIDE = 16
OFFSETS = 2 * CROP_PADDING + 1  # 0..8


def _coded(batch: int, channels: int) -> torch.Tensor:
    """Pixel (i, c, h, w) = 1 + h·SIDE + w + 1000·c (+ 10⁵·i): every value names its place."""
    h, w = np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")
    plane = 1.0 + h * SIDE + w
    x = plane[None, None] + 1000.0 * np.arange(channels)[None, :, None, None]
    x = x + 1e5 * np.arange(batch)[:, None, None, None]
    return torch.as_tensor(x, dtype=torch.float64)


def _read_draws(x: torch.Tensor, out: torch.Tensor) -> np.ndarray:
    """(B, 3): top, left, flipped, read from the coded pixels, each example checked against its
    numpy rebuild (zero padding, crop, left-right flip)."""
    xs, outs = x.numpy(), out.numpy()
    padded = np.pad(xs, ((0, 0), (0, 0), (CROP_PADDING,) * 2, (CROP_PADDING,) * 2))
    draws = []
    for i in range(xs.shape[0]):
        rows, cols = np.nonzero(outs[i, 0])
        r, c = rows[0], cols[0]
        code = int(outs[i, 0, r, c] - 1 - 1e5 * i)
        h, w = divmod(code, SIDE)
        top = h + CROP_PADDING - r
        # c <= 4 (at most 4 padded columns), so pixel c + 1 is in the image too; a flipped
        # example reads its row backwards: that pixel codes w - 1 instead of w + 1
        flipped = bool(outs[i, 0, r, c + 1] < outs[i, 0, r, c])
        left = w + CROP_PADDING - (SIDE - 1 - c) if flipped else w + CROP_PADDING - c
        crop = padded[i, :, top : top + SIDE, left : left + SIDE]
        np.testing.assert_array_equal(outs[i], crop[:, :, ::-1] if flipped else crop)
        draws.append((top, left, flipped))
    return np.array(draws, dtype=np.int64)


def test_per_example_offsets_are_uniform_on_zero_to_eight_and_flips_fair():
    x = _coded(256, 3)
    draws = np.concatenate([_read_draws(x, augment(x, seed=s)) for s in range(4)])
    n = draws.shape[0]  # 1024 examples
    for axis in (0, 1):
        counts = np.bincount(draws[:, axis], minlength=OFFSETS)
        assert counts.shape == (OFFSETS,) and counts.min() > 0, counts  # 0 and 8 both reached
        assert stats.chisquare(counts).pvalue > 1e-3, counts
    # top and left drawn independently: equal in ~1/9 of the examples, the 81 pairs all uniform
    assert abs(np.mean(draws[:, 0] == draws[:, 1]) - 1 / 9) < 4 * np.sqrt((1 / 9) * (8 / 9) / n)
    assert stats.chisquare(np.bincount(draws[:, 0] * OFFSETS + draws[:, 1], minlength=OFFSETS**2)).pvalue > 1e-3
    assert abs(draws[:, 2].mean() - 0.5) < 4 * 0.5 / np.sqrt(n)  # Bernoulli(1/2)
    assert len({tuple(d) for d in draws[:256]}) > 100  # one draw per example


def test_grey_images_are_cropped_uniformly_and_never_flipped():
    x = _coded(512, 1)
    draws = _read_draws(x, augment(x, seed=9))
    assert not draws[:, 2].any()
    assert stats.chisquare(np.bincount(draws[:, 0], minlength=OFFSETS)).pvalue > 1e-3


def test_shared_draws_are_one_per_batch_and_fair_across_batches():
    """``shared`` (RAT sec. 6): every example of a batch the same crop and flip; over batches the
    same law as the per-example draws (the flip is not dropped, the offsets still cover 0..8)."""
    x = _coded(8, 3)
    per_batch = []
    for seed in range(300):
        draws = _read_draws(x, augment(x, seed=seed, shared=True))
        assert (draws == draws[0]).all(), draws
        per_batch.append(draws[0])
    batches = np.array(per_batch)
    assert abs(batches[:, 2].mean() - 0.5) < 4 * 0.5 / np.sqrt(300)
    for axis in (0, 1):
        counts = np.bincount(batches[:, axis], minlength=OFFSETS)
        assert counts.min() > 0 and stats.chisquare(counts).pvalue > 1e-3, counts


@pytest.mark.parametrize("shared", [False, True])
def test_the_augmented_batch_keeps_dtype_and_the_zero_padding_is_zero(shared):
    x = torch.rand(32, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) + 0.5  # no zero pixel
    out = augment(x, seed=1, shared=shared)
    assert out.dtype == x.dtype and out.shape == x.shape
    # a pixel is zero exactly where the crop left the image: at most 4 rows and 4 columns of it
    zero = out == 0
    rows = zero.all(dim=3).sum(dim=2)  # whole zero rows per example and channel
    cols = zero.all(dim=2).sum(dim=2)
    assert int(rows.max()) <= CROP_PADDING and int(cols.max()) <= CROP_PADDING
    assert torch.equal(zero.sum(dim=(2, 3)), (rows * SIDE + cols * SIDE - rows * cols))
