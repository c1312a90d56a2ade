"""Keep freed memory for reuse in the tool's own processes.

At vocabulary scale every stage allocates arrays of hundreds of MB (the reference's float64
gradient, the adapter's converted input and saved copy, the framework's own gradient). glibc
serves each from a fresh ``mmap`` and returns it on free, so the next case's array is new pages
that the kernel zeroes (and, with transparent huge pages, compacts) on first touch. On this
project's 2-core machine that was most of the time of judging one 1024 x 128256 case: 55 s of a
64 s ``benchmarks/scale.py`` run were system time, and the whole differential took 4.7 s where the
same work on reused memory took 1.9 s (torch's own call 0.51 s -> 0.31 s).

:func:`keep_freed_memory` raises glibc's mmap and trim thresholds, so large blocks come from the
heap and stay there after ``free``: the next case reuses pages already mapped. It also stops
NumPy from asking for transparent huge pages on its large arrays: with the kernel's default
``defrag=madvise`` each such first touch may stall on memory compaction (the first vocabulary-scale
reference took 7 s of system time in the heap instead of 0.4 s; reused pages gain nothing from
being huge but TLB reach, which these streaming passes do not need). The cost is that
the process keeps its peak footprint until it exits (a nightly run's peak is what it holds
anyway). It is called by the command-line entry point and in adapter worker processes, never on
import: in a user's own process (the pytest plugin, the library API) the allocator is theirs.
``CE_KEEP_FREED_MEMORY=0`` turns it off; it does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # glibc accepts up to HEAP_MAX; 1 GiB: a float64 gradient of 1024 x 128256 is 1002 MiB

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make large allocations reusable after they are freed (glibc only); True where it applied.
    Idempotent; ``CE_KEEP_FREED_MEMORY=0`` disables it.

    >>> keep_freed_memory() in (True, False)
    True
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("CE_KEEP_FREED_MEMORY", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version  # absent from musl, whose mallopt ignores these settings
    except (OSError, AttributeError):
        return False
    del gnu
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if _applied:
        _small_pages_for_numpy()
    return _applied


def _small_pages_for_numpy() -> None:
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # NumPy 2, NumPy 1
        try:
            importlib.import_module(module)._set_madvise_hugepage(False)
        except (ImportError, AttributeError):
            continue
        return
