"""numba kernels of the adapters' own overhead: the check that a function under test left its
input as the case made it (``adapters.torch_adapter``). Compiled by :mod:`ce_conformance._kernels`.

At vocabulary scale torch's own bitwise comparison against a fresh conversion of the case's
values, chunk by chunk, cost 0.22 s beside a 0.5 s forward + backward: most of the adapter's
overhead. Here each value's bits in the tensor's dtype are derived in registers and compared
with the tensor's, on every thread, in one read of each array.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bitcast import float32_bits, float_bits

FLOAT64, FLOAT32, BFLOAT16, FLOAT16 = 0, 1, 2, 3
"""The ``kind`` codes of :func:`_holds_bits`."""

_CHUNK = 1 << 16  # the fewest elements worth a thread


def _holds_bits(bits, values, kind, threads):
    """Whether every element of ``bits`` (a flat integer array of the dtype's width: the tensor's
    bits) is the bit pattern of the same element of ``values`` (flat float64, each exact in the
    dtype ``kind``). False also wherever a value is NaN, whose payload a conversion may change:
    the caller then compares the slow way. Never True for a tensor that differs. The elements
    are split into ``threads`` contiguous runs."""
    n = values.shape[0]
    workers = max(1, min(threads, (n + _CHUNK - 1) // _CHUNK))
    per = (n + workers - 1) // workers
    differs = np.zeros(workers, dtype=np.bool_)
    for worker in prange(workers):
        bad = False
        for i in range(worker * per, min(n, (worker + 1) * per)):
            v = values[i]
            if kind == FLOAT64:
                expected = float_bits(v)
            else:
                single = np.int64(float32_bits(np.float32(v)))  # exact: v is a value of the dtype
                if kind == FLOAT32:
                    expected = single
                elif kind == BFLOAT16:
                    expected = single >> 16  # arithmetic: the sign-extended top half, as int16 reads
                    bad |= (single & 0xFFFF) != 0
                else:
                    expected = _half_bits(single)
            bad |= (v != v) | (np.int64(bits[i]) != expected)
        differs[worker] = bad
    return not differs.any()


@njit(cache=True, nogil=True, inline="always")
def _half_bits(single):
    """The float16 bits (sign-extended, as int16 reads them) of a float16 value given as the
    bits of its float32: exponents below float16's normal range become subnormal units of 2^-24.
    NaN is the caller's to exclude."""
    sign = (single >> 31) & 1
    exponent = (single >> 23) & 0xFF
    mantissa = single & 0x7FFFFF
    if exponent == 0:  # zero (a float16 value is never float32-subnormal)
        magnitude = 0
    elif exponent == 0xFF:  # infinity
        magnitude = 0x7C00
    elif exponent >= 127 - 14:
        magnitude = ((exponent - 127 + 15) << 10) | (mantissa >> 13)
    else:
        magnitude = (0x800000 | mantissa) >> (126 - exponent)
    return magnitude - 0x8000 if sign else magnitude
