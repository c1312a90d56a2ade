"""The numerical engine of the judging pipeline: numba kernels, or plain NumPy.

At vocabulary scale (C = 128256) judging a case took 30-50x the native call in vectorised
float64 NumPy: about twenty passes over the logits where torch makes three. The hot loops (the
summation error model, the reference's index-target rows, the comparison of large arrays)
therefore have numba kernels
(:mod:`ce_conformance._kernels`) that make one pass per row and spread rows over threads. Each
kernel has a NumPy twin that is its readable specification, the engine where numba is missing,
and what the tests check the kernel against.

Why numba and not a C extension or threads over NumPy: numba ships wheels wherever NumPy does,
needs no compiler on the user's machine, caches compiled code on disk (only the first use in a
fresh environment pays a few seconds of compilation), and releases the GIL. Threads over NumPy
chunks would still make every pass.

``CE_CONFORMANCE_ENGINE=numpy`` forces the NumPy engine; ``NUMBA_NUM_THREADS`` sets the threads.

>>> name() in ("numba", "numpy")
True
"""

from __future__ import annotations

import functools
import os


def _wanted() -> str:
    wanted = os.environ.get("CE_CONFORMANCE_ENGINE", "numba").strip().lower()
    if wanted not in ("numba", "numpy"):
        raise ValueError(f"CE_CONFORMANCE_ENGINE must be 'numba' or 'numpy', not {wanted!r}")
    return wanted


@functools.cache
def kernels():
    """The compiled kernels module, or None under the NumPy engine (numba not wanted, not
    installed, or not importable with this NumPy). Imported on first use: numba costs ~0.3 s."""
    if _wanted() == "numpy":
        return None
    try:
        from . import _kernels
    except ImportError:
        return None
    return _kernels


PARALLEL_MIN_ELEMENTS = 1 << 16
"""Inputs at least this large run on all threads; smaller ones in the calling thread."""


def kernel(name: str, elements: int):
    """The kernel ``name`` for an input of ``elements`` elements, with the number of threads to
    pass it: the threaded variant for large inputs, the serial one (1 thread) for small ones.
    Only call when :func:`kernels` is not None."""
    module = kernels()
    if elements >= PARALLEL_MIN_ELEMENTS:
        return getattr(module, name), threads()
    return getattr(module, f"{name}_serial"), 1


def available() -> bool:
    """Whether the numba kernels are in use."""
    return kernels() is not None


def name() -> str:
    """'numba' or 'numpy': the engine in use."""
    return "numba" if available() else "numpy"


def threads() -> int:
    """Threads for the kernels: numba's own setting (``NUMBA_NUM_THREADS``, default: all cores)."""
    import numba

    return max(1, int(numba.get_num_threads()))
