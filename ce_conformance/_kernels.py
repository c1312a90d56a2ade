"""numba kernels of the judging pipeline (imported lazily through :mod:`ce_conformance.engine`):
the reference's and the summation model's in :mod:`._reference_kernels`, the comparison's in
:mod:`._compare_kernels`, the adapters' input check in :mod:`._adapter_kernels`.

Each kernel mirrors a vectorised NumPy function that is its specification; the tests check
that the two agree. Compiled code is cached on disk (``cache=True``), so only the first use in
a fresh environment pays the compilation. Every public kernel comes twice, from one Python
function: ``NAME`` spreads its outer loop (``prange``) over threads, ``NAME_serial`` runs it in
the calling thread, which small inputs want (waking threads costs more than they save).
"""

from __future__ import annotations

import types

from numba import njit

from ._adapter_kernels import _fingerprint  # noqa: F401
from ._compare_kernels import _element_bounds, _element_figures, _error_summary, _floor_roots  # noqa: F401
from ._reference_kernels import (_exp_row, _index_rows, _order_biases, _row_max,  # noqa: F401
                                 _summation_roots, _workspace)


def _variants(function):
    """The threaded and the serial kernel of one Python function. The serial one is compiled from
    a renamed copy: numba's disk cache is keyed by the function's name and line, not by its
    options, so the two would otherwise load each other's machine code."""
    serial = types.FunctionType(function.__code__, function.__globals__, f"{function.__name__}_serial",
                                function.__defaults__, function.__closure__)
    serial.__qualname__ = f"{function.__qualname__}_serial"
    return njit(parallel=True, cache=True)(function), njit(cache=True, nogil=True)(serial)


summation_roots, summation_roots_serial = _variants(_summation_roots)
error_summary, error_summary_serial = _variants(_error_summary)
index_rows, index_rows_serial = _variants(_index_rows)
element_bounds, element_bounds_serial = _variants(_element_bounds)
element_figures, element_figures_serial = _variants(_element_figures)
order_biases, order_biases_serial = _variants(_order_biases)
fingerprint, fingerprint_serial = _variants(_fingerprint)
