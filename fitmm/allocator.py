"""The CPU allocator's settings for training: keep freed memory for the next batch.

By default glibc serves every allocation above 128 KiB-32 MiB (its threshold adapts) with a fresh `mmap`, and
gives freed memory back to the system. A training step allocates and frees the same few-MB tensors (a layer of
the 16k-node graph is 4 MB at 64 dimensions) on every batch, so each one is page-faulted in again: measured on
TikTok, one thread, that is about 45 % of a LightGCN step and 8 % of a FITMM step. `reuse_freed_memory` raises
the mmap threshold to its maximum and turns trimming off (glibc `mallopt`), so freed blocks stay in the heap
and are reused; values are unchanged, only where tensors live. `release_freed_memory` hands the kept memory
back (`malloc_trim`), so a run's peak-memory window opens at what is really in use. No-ops off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
MMAP_THRESHOLD_MAX = 32 * 2**20               # glibc's cap on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
NEVER_TRIM = 2**31 - 1                        # mallopt takes an int


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def reuse_freed_memory() -> bool:
    """Keep freed heap memory for reuse (see the module's docstring); True when the settings took effect."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def release_freed_memory() -> None:
    """Return the heap's free memory to the system."""
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
