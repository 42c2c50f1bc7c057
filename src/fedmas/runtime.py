"""Process-wide settings for training on CPU: thread count and how freed memory is kept.

Training allocates and frees tensors of the same sizes on every batch (activations,
gradients; a lookahead batch of the affinity measurement many more). glibc's malloc
serves large blocks with ``mmap`` and hands them back to the operating system on
``free`` (and trims the heap top above a threshold), so the next batch page-faults
the same memory in again. Measured here on the ResNet-18 model: the batch after a
lookahead batch ran 1.6–1.9× slower than its neighbours and a lookahead batch in
the middle of an epoch ~30% slower than one in a run of them (docs/benchmarks.md).
Raising the mmap and trim thresholds keeps freed memory in the heap for reuse, as
the jemalloc/tcmalloc allocators that PyTorch's CPU performance guide suggests do;
the cost is that the process keeps its peak footprint.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit); blocks larger
# than that still come from mmap, which is fine: they are few.
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (once per process).

    Returns whether it is in effect. No-op off Linux/glibc, and when the environment
    variable ``FEDMAS_MALLOC=default`` asks to leave the allocator alone.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("FEDMAS_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied


def configure_cpu(threads: int) -> None:
    """Settings for a process that trains: intra-op threads and :func:`keep_freed_memory`."""
    torch.set_num_threads(threads)
    keep_freed_memory()


def resolve_device(name: str) -> str:
    """The torch device a config's ``device`` names: ``auto`` is the first CUDA GPU when there is one, else
    Apple's ``mps``, else the CPU. A named device that is not here is a ValueError saying what is."""
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda:0" if cuda else ("mps" if mps else "cpu")
    if name.startswith("cuda"):
        index = int(name.split(":")[1]) if ":" in name else 0
        if not cuda or index >= torch.cuda.device_count():
            have = f"{torch.cuda.device_count()} CUDA device(s)" if cuda else "no CUDA device"
            raise ValueError(f"device {name}: this machine has {have}; use device: auto or cpu")
        return f"cuda:{index}"
    if name == "mps" and not mps:
        raise ValueError("device mps: not available here; use device: auto or cpu")
    return name


def deterministic(device: str) -> None:
    """CUDA's settings for repeatable results on one GPU (a resume continues exactly); no effect on the CPU."""
    if device.startswith("cuda"):
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one), at least 1."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
