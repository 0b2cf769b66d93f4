"""``retain_freed_memory``'s calls and opt-outs, and ``available_memory``'s arithmetic, in-process
with the C library and /proc/meminfo stood in for: the page-fault probe of ``test_allocator``
sees only the net effect of both settings together, so a wrong parameter, a wrong value or a
call skipped can pass it. The expected calls are mallopt(3)'s (glibc's malloc.h: M_TRIM_THRESHOLD
is -1, M_MMAP_MAX is -4; a trim threshold of -1 turns trimming off, an mmap maximum of 0 turns
mmap off), the expected bytes MemAvailable's kB × 1024 written out."""

from __future__ import annotations

import ctypes
import io
import os

import pytest

from ntkrobust import _allocator


class FakeLibc:
    """``ctypes.CDLL`` of a C library whose mallopt records its calls and answers ``answers``."""

    def __init__(self, answers: tuple[int, ...] = (1, 1)) -> None:
        self.answers = list(answers)
        self.opened: list[str] = []
        self.calls: list[tuple[int, int]] = []

    def __call__(self, name: str) -> FakeLibc:
        self.opened.append(name)
        return self

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answers[len(self.calls) - 1]


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    """A fresh process's state on glibc/Linux: nothing applied, no allocator variables set."""
    fake = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", fake)
    monkeypatch.setattr(_allocator, "_APPLIED", False)
    monkeypatch.setattr(_allocator.sys, "platform", "linux")
    monkeypatch.setattr(_allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for name in ("NTKROBUST_MALLOC", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    return fake


def test_trimming_and_mmap_are_turned_off_with_mallopts_own_parameters(libc):
    assert _allocator.retain_freed_memory() is True
    assert libc.opened == ["libc.so.6"]
    assert libc.calls == [(-1, -1), (-4, 0)]  # (M_TRIM_THRESHOLD, -1), (M_MMAP_MAX, 0)
    assert _allocator.freed_memory_retained() is True
    # applied once: a second call changes nothing and says it is in effect, even if the
    # opt-out is set afterwards (the allocator cannot be given back its defaults)
    os.environ["NTKROBUST_MALLOC"] = "system"
    assert _allocator.retain_freed_memory() is True and libc.calls == [(-1, -1), (-4, 0)]


@pytest.mark.parametrize("answers", [(0, 1), (1, 0)])
def test_a_refused_setting_is_not_reported_as_in_effect(libc, answers):
    """mallopt answers 0 when it refuses: either refusal means the memory is not kept."""
    libc.answers = list(answers)
    assert _allocator.retain_freed_memory() is False
    assert _allocator.freed_memory_retained() is False


@pytest.mark.parametrize(
    "variables",
    [
        {"NTKROBUST_MALLOC": "system"},
        {"NTKROBUST_MALLOC": "System"},
        {"NTKROBUST_MALLOC": "SYSTEM"},
        {"MALLOC_MMAP_MAX_": "65536"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
    ],
)
def test_opt_outs_leave_the_allocator_untouched(libc, monkeypatch, variables):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert _allocator.retain_freed_memory() is False
    assert libc.opened == [] and libc.calls == [] and _allocator.freed_memory_retained() is False


@pytest.mark.parametrize(("system", "libc_name"), [("linux", "musl"), ("linux", ""), ("darwin", "")])
def test_only_glibc_on_linux_is_touched(libc, monkeypatch, system, libc_name):
    monkeypatch.setattr(_allocator.sys, "platform", system)
    monkeypatch.setattr(_allocator.platform, "libc_ver", lambda: (libc_name, ""))
    assert _allocator.retain_freed_memory() is False and libc.opened == [] and libc.calls == []


def test_a_missing_c_library_is_no_error(libc, monkeypatch):
    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert _allocator.retain_freed_memory() is False and _allocator.freed_memory_retained() is False


def _meminfo(monkeypatch: pytest.MonkeyPatch, text: str | None) -> None:
    def fake_open(path: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert path == "/proc/meminfo"
        if text is None:
            raise FileNotFoundError(path)
        return io.StringIO(text)

    monkeypatch.setattr(_allocator, "open", fake_open, raising=False)


def test_available_memory_is_memavailable_in_bytes(monkeypatch):
    _meminfo(monkeypatch, "MemTotal:       16000 kB\nMemFree:         5000 kB\nMemAvailable:   12345 kB\n")
    assert _allocator.available_memory() == 12345 * 1024


@pytest.mark.parametrize(
    "text", [None, "MemTotal: 16000 kB\nMemFree: 5000 kB\n", "MemAvailable: many kB\n", "MemAvailable:\n"]
)
def test_available_memory_says_none_where_meminfo_does_not_say(monkeypatch, text):
    _meminfo(monkeypatch, text)
    assert _allocator.available_memory() is None


def test_available_memory_of_this_machine_is_within_its_physical_memory():
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo")
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    available = _allocator.available_memory()
    assert available is not None and 0 < available <= total
