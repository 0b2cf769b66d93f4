"""Keep freed memory in the process: large tensors reuse pages instead of mapping fresh ones.

glibc serves every allocation above its mmap threshold (128 KB, rising with use to at most
32 MB) with a mapping of its own and unmaps it when freed, so each of an empirical NTK's
Jacobian sub-batches (hundreds of MB to GB for ResNet-18) arrives as fresh pages that the kernel
faults in and zeroes one 4 KB page at a time: system time, not arithmetic.
``retain_freed_memory`` turns both off through ``mallopt`` (``M_MMAP_MAX`` 0: large blocks come
from the heap; ``M_TRIM_THRESHOLD`` -1: the heap is never given back), the in-process form of
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=…``, doing the job that PyTorch's CPU tuning guide
gives jemalloc or tcmalloc through ``LD_PRELOAD``.

Measured on this project's 2-core VM, one process each way: ResNet-18 class blocks of 150
CIFAR-10 points 225 s → 114 s (CPU 417 s → 224 s; peak resident memory 8.05 → 8.07 GB); one
MNIST-CNN tracking point 1.50-1.59 s → 1.32-1.43 s (system time 0.24-0.42 s → 0.01 s).

The price: memory a process frees stays with it (its resident size stays near its peak) until it
exits, and freed blocks of other sizes can fragment the heap and raise the peak (the ResNet-18
full kind of 500 points 10.2 → 12.0 GB while each pass's Jacobian was a list of parts and their
concatenation; 5.9 GB since ``bridge.entk`` writes it into one array of one size per pass).
``freed_memory_retained`` tells the empirical NTK to take larger CPU sub-batches.
The command line applies it to every process it runs; ``NTKROBUST_MALLOC=system`` (or the
user's own ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_``) leaves the allocator as it is. Only
glibc on Linux is touched; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["available_memory", "freed_memory_retained", "retain_freed_memory"]

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_APPLIED = False


def retain_freed_memory() -> bool:
    """Make this process keep and reuse the memory it frees (glibc); True when it is in effect."""
    global _APPLIED
    if _APPLIED:
        return True
    if os.environ.get("NTKROBUST_MALLOC", "").lower() == "system":
        return False
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user's own allocator settings win
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # -1: "disables trimming completely" (mallopt(3)); 0: no mmap for large requests
    _APPLIED = libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1 and libc.mallopt(_M_MMAP_MAX, 0) == 1
    return _APPLIED


def freed_memory_retained() -> bool:
    """Whether ``retain_freed_memory`` is in effect in this process (its CPU tuning, e.g. the
    empirical NTK's sub-batch size, depends on it)."""
    return _APPLIED


def available_memory() -> int | None:
    """Bytes of this machine's memory that a process could still take (Linux's MemAvailable:
    free pages and caches it can drop), None where /proc/meminfo does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):  # IndexError: a field with no value
        return None
