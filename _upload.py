"""Host arrays onto a tensor's device without making the host wait for the GPU.

A copy from ordinary (pageable) host memory to a GPU returns only once the GPU's queue has run
up to it: a round trip, and where it is made every training or attack step (random starts,
augmentation draws), the GPU idles while the host draws the next numbers. Through pinned memory
and ``non_blocking`` the copy joins the queue and the host goes on; torch's caching host
allocator keeps the pinned block until the copy is done. On the CPU nothing is copied; to any
other device (the meta device of the placement tests included) an ordinary copy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["upload"]


def upload(host: Any, like: Any, dtype: Any = None) -> Any:
    """``host`` (a numpy array or a CPU tensor) as a torch tensor on ``like``'s device, of
    ``dtype`` (default ``like``'s), without a round trip to a GPU."""
    import torch

    tensor = torch.as_tensor(host, dtype=like.dtype if dtype is None else dtype)
    if like.is_cuda:
        return tensor.pin_memory().to(like.device, non_blocking=True)
    return tensor if like.device.type == "cpu" else tensor.to(like.device)
