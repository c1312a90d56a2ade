"""Recycled memory for the judging pipeline's largest arrays (the reference's gradients, the
torch adapter's inputs).

At vocabulary scale every evaluation returns a float64 gradient of N x C elements (1 GB at
N = 1024, C = 128256), and every torch call gets a fresh input tensor (0.5 GB in float32). Fresh memory of that size comes from the kernel page by page, and on a
virtual machine faulting it in costs as much as computing it: measured on the 2-core VMs this
project develops and runs CI on, 0.1 to 1.1 s per GB, varying from call to call with what the
host did with the memory freed before (the reference took 0.95-2.75 s for the same case).
Handing the same memory back out keeps those pages resident, which is what torch's caching
allocators do for GPUs.

A buffer is free again when nothing references it any more: every array made from it (views
included) keeps it as its base, so its reference count says whether it is in use, and nothing
has to be given back by hand. Idle buffers are kept up to ``$CE_BUFFER_IDLE_BYTES`` bytes
(default 3 GiB; 0 turns recycling off); small arrays are not worth it and come from NumPy.

>>> a = empty((1024, 1024))  # 8 MiB: below the threshold, a plain array
>>> a.shape, a.dtype
((1024, 1024), dtype('float64'))
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import Any

import numpy as np

MIN_BYTES = 64 << 20
"""Arrays at least this large are recycled."""

IDLE_LIMIT_VARIABLE = "CE_BUFFER_IDLE_BYTES"
_DEFAULT_IDLE_LIMIT = 3 << 30

HUGEPAGE_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"
"""NumPy's own switch for its huge-page advice; where a user sets it, their choice stands."""

_lock = threading.Lock()
_buffers: list[np.ndarray] = []  # each a 1-d uint8 array owning its memory, oldest first


def avoid_hugepage_stalls() -> bool:
    """Turn off NumPy's huge-page advice for new arrays, unless ``$NUMPY_MADVISE_HUGEPAGE`` says
    otherwise; returns whether the advice is off.

    NumPy asks the kernel to back every array of 4 MiB or more with transparent huge pages
    (``madvise(MADV_HUGEPAGE)``). Where the kernel defragments memory for such regions (its
    default, ``/sys/kernel/mm/transparent_hugepage/defrag`` = ``madvise``), a fault may first
    compact memory, in system time, and after large torch calls that stalls: the reference of one
    N = 1024, C = 128256 float32 case on fresh memory, right after two torch calls, took 5.6 s
    and 9.4 s (6.9 s and 12.4 s of system time) with the advice and 1.4 s and 1.3 s without it;
    on recycled memory 1.04 s either way (2026-12-07, this project's 2-core VM). Recycling
    (above) hides it only where an idle buffer fits: a run's first case of a size, and every
    array NumPy allocates outside this module, still take fresh memory."""
    if os.environ.get(HUGEPAGE_VARIABLE) is not None:
        return os.environ[HUGEPAGE_VARIABLE].strip() == "0"
    switch = numpy_hugepage_switch()
    if switch is not None:  # None: a NumPy without the advice, nothing to turn off
        switch(False)
    return True


def numpy_hugepage_switch() -> Any:
    """NumPy's ``_set_madvise_hugepage(enabled)`` (it returns the previous setting), or None."""
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    return getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)


avoid_hugepage_stalls()


def idle_limit() -> int:
    """Bytes of idle buffers kept for later calls (``$CE_BUFFER_IDLE_BYTES``)."""
    value = os.environ.get(IDLE_LIMIT_VARIABLE, "").strip()
    if not value:
        return _DEFAULT_IDLE_LIMIT
    try:
        limit = int(float(value))
    except ValueError:
        raise ValueError(f"{IDLE_LIMIT_VARIABLE} must be a number of bytes, not {value!r}") from None
    return max(0, limit)


def _references(buffers: list[np.ndarray], index: int) -> int:
    return sys.getrefcount(buffers[index])


_UNREFERENCED = _references([np.empty(1, dtype=np.uint8)], 0)
"""What :func:`_references` counts for a buffer only its list holds (the interpreter's own
temporaries included, measured rather than assumed)."""


def _free_indices() -> list[int]:
    return [i for i in range(len(_buffers)) if _references(_buffers, i) <= _UNREFERENCED]


def empty(shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """An uninitialised C-contiguous array, from a recycled buffer where it is large: the
    caller writes every element (as :func:`numpy.empty`)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    limit = idle_limit()
    if nbytes < MIN_BYTES or limit == 0:
        return np.empty(shape, dtype)
    with _lock:
        fitting = [i for i in _free_indices() if _buffers[i].nbytes >= nbytes]
        if fitting:
            chosen = min(fitting, key=lambda i: _buffers[i].nbytes)
        else:
            _trim(limit - nbytes)  # the new buffer counts: it is idle once its arrays are gone
            _buffers.append(np.empty(nbytes, dtype=np.uint8))
            chosen = len(_buffers) - 1
        return _buffers[chosen][:nbytes].view(dtype).reshape(shape)


def _trim(limit: int) -> None:
    """Drop the oldest idle buffers until at most ``limit`` bytes of idle ones are left (the
    system gets their memory back once nothing references them)."""
    idle = _free_indices()
    total = sum(_buffers[i].nbytes for i in idle)
    dropped = set()
    for i in idle:
        if total <= limit:
            break
        total -= _buffers[i].nbytes
        dropped.add(i)
    _buffers[:] = [b for i, b in enumerate(_buffers) if i not in dropped]


def held() -> tuple[int, int]:
    """(bytes in use, bytes idle) of the recycled buffers: the memory recycling keeps resident."""
    with _lock:
        idle = sum(_buffers[i].nbytes for i in _free_indices())
        return sum(b.nbytes for b in _buffers) - idle, idle


def release() -> None:
    """Forget every idle buffer (their memory goes back to the system once unreferenced)."""
    with _lock:
        _trim(0)
