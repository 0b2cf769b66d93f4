"""``retain_freed_memory``: a large block freed and allocated again comes back without page faults
(glibc), and the user's own allocator settings are left alone. Each case runs in a process of its
own: the setting lasts for the process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)

# 64 MB blocks, above glibc's largest mmap threshold (32 MB): allocated, written, freed, four times
_PROBE = """
import resource, sys
from ntkrobust import retain_freed_memory
from ntkrobust._allocator import freed_memory_retained
assert not freed_memory_retained()  # nothing is changed at import
applied = retain_freed_memory()
assert freed_memory_retained() is applied  # what the empirical NTK's CPU sub-batch size reads
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = bytearray(64 << 20); del block  # the first time, the pages are new either way
start = faults()
for _ in range(4):
    block = bytearray(64 << 20)  # zero-filled: every page is written
    del block
print(applied, faults() - start)
"""


def _probe(**env: str) -> tuple[bool, int]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "NTKROBUST_MALLOC"))}
    environment = inherited | env
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=environment, check=True, timeout=120
    )
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = _probe()
    assert applied
    assert faults < 1000  # 4 x 16,384 pages of 4 KB when every block is mapped afresh
    default_applied, default_faults = _probe(NTKROBUST_MALLOC="system")
    assert not default_applied and default_faults > 4 * 10_000


def test_the_users_own_allocator_settings_win():
    assert _probe(MALLOC_MMAP_MAX_="65536")[0] is False
    assert _probe(MALLOC_TRIM_THRESHOLD_="131072")[0] is False
