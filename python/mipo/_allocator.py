"""glibc malloc settings for PyTorch on the CPU.

With glibc's defaults, every tensor over the dynamic mmap threshold (at most 32 MiB) is a fresh
``mmap`` and goes back to the kernel with ``munmap`` when freed, and the top of the heap is
trimmed back as soon as 128 KiB lie free there. A CPU training step on a small model allocates
and frees gigabytes of logits and activations, so every step faults the same pages in again: on
2 cores, DPO steps spent nearly as much time in the kernel as in the maths. Serving such blocks
from the heap (mmap threshold 1 GiB) and never trimming it makes them reused pages instead:
``benches/bench_malloc.py`` measures the effect side by side (train steps, generation, scoring)
and writes it to ``benches/RESULTS.md``. The price is that freed memory stays with the process
(reused by its next allocations) instead of going back to the system.

It is applied once per process, the first time a model is trained or loaded for scoring on the
CPU (generation gains nothing from it: its tensors are small); CUDA runs are left alone.
``MIPO_MALLOC_TUNING=0`` keeps glibc's defaults. On other C libraries (musl, macOS, Windows) it
does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30
"""Blocks at least this large still get their own mmap (1 GiB: above any one activation here)."""
TRIM_THRESHOLD = -1
"""-1: never give the top of the heap back to the kernel (see ``man mallopt``)."""

ENV = "MIPO_MALLOC_TUNING"

_applied: bool | None = None
"""Whether this process runs with the settings; ``None`` until a CPU caller asked."""


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname (musl's is libc.so)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def tune_cpu_allocator(device: str = "cpu") -> bool:
    """Apply the settings above if ``device`` is the CPU, glibc is the C library and
    ``MIPO_MALLOC_TUNING`` is not ``0``. Returns whether they are in effect in this process.

    Raises :class:`~mipo.errors.ConfigError` if glibc refuses a setting (fails closed: a silently
    half-applied setting would make the benchmark lie).

    >>> isinstance(tune_cpu_allocator("cuda"), bool)
    True
    """
    global _applied
    if _applied is not None:
        return _applied
    if not str(device).startswith("cpu"):
        return False
    libc = None if os.environ.get(ENV, "1").strip() == "0" else _glibc()
    if libc is None:
        _applied = False
        return False
    for option, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(option, value) != 1:
            from mipo.errors import ConfigError

            raise ConfigError(f"glibc refused mallopt({option}, {value}); set {ENV}=0 to skip it")
    _applied = True
    return True
