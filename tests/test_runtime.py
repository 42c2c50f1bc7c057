"""The process-wide CPU settings: malloc keeps freed memory for the next batch."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, ctypes.util, sys
import torch
from fedmas.runtime import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory()
t = torch.empty(4 * 1024 * 1024)  # 16 MiB, the size of a large gradient
t.fill_(1.0)
del t
print(applied, libc.mallinfo2().fordblks)  # free bytes kept in the heap after the tensor is gone
"""


def _glibc() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2")
    except OSError:
        return False


def _probe(env_extra: dict[str, str]) -> tuple[bool, int]:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, free = out.stdout.split()
    return applied == "True", int(free)


@pytest.mark.skipif(not _glibc(), reason="glibc malloc only")
def test_freed_tensor_memory_stays_in_the_heap():
    applied, kept = _probe({"FEDMAS_MALLOC": ""})
    assert applied
    assert kept >= 16 * 1024 * 1024  # the 16 MiB block is kept for reuse
    default_applied, default_kept = _probe({"FEDMAS_MALLOC": "default"})
    assert not default_applied
    assert default_kept < 16 * 1024 * 1024  # glibc's default gives it back to the system


def test_keep_freed_memory_asks_malloc_once_and_can_be_turned_off(monkeypatch):
    import ctypes

    from fedmas import runtime

    calls: list[tuple[int, int]] = []

    class Mallopt:  # a C function: callable, with argtypes and restype set by the caller
        def __call__(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    class FakeLibc:
        mallopt = Mallopt()

    fake = FakeLibc()
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda *_: fake)
    monkeypatch.delenv("FEDMAS_MALLOC", raising=False)
    monkeypatch.setattr(runtime, "_applied", None)
    assert runtime.keep_freed_memory() is True and len(calls) == 2  # the mmap and the trim thresholds
    assert runtime.keep_freed_memory() is True and len(calls) == 2  # once per process
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv("FEDMAS_MALLOC", "default")
    assert runtime.keep_freed_memory() is False and len(calls) == 2  # left alone when asked
