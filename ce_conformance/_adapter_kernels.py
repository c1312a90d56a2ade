"""numba kernels of the adapters' own overhead: the check that a function under test left its
input as the case made it (``adapters.torch_adapter``). Compiled by :mod:`ce_conformance._kernels`.

At vocabulary scale torch's own bitwise comparison against a fresh conversion of the case's
values, chunk by chunk, cost 0.22 s beside a 0.5 s forward + backward: most of the adapter's
overhead; a comparison of the tensor with the case's float64 values in one threaded pass still
read 1.5 GB and cost 0.13 s. A fingerprint of the tensor taken before the call and again after
it (:func:`_fingerprint`) reads the tensor alone: 0.017 s a pass with AVX-512 (0.044 s with AVX2
alone, which multiplies 64-bit integers in three steps)."""

from __future__ import annotations

import numpy as np
from numba import prange

from .adapters.base import SPLITMIX64

_CHUNK = 1 << 16  # the fewest elements worth a thread

_GAMMA, _MIX1, _MIX2 = SPLITMIX64  # the NumPy specification's constants


def _fingerprint(bits, threads):
    """The wrapping sum over ``i`` of splitmix64's finaliser of ``bits[i] + i * gamma`` (``bits``
    a flat integer array, each element sign-extended to 64 bits): ``adapters.base.fingerprint``,
    whose NumPy body is the specification. The finaliser is a bijection, so changing any one
    element changes the sum; the sum is associative, so any split into threads gives the same."""
    n = bits.shape[0]
    workers = max(1, min(threads, (n + _CHUNK - 1) // _CHUNK))
    per = (n + workers - 1) // workers
    sums = np.zeros(workers, dtype=np.uint64)
    for worker in prange(workers):
        # a run indexed from 0: indexing bits from a start numba cannot show non-negative wraps
        # negative indices per element, which stopped LLVM vectorising the loop (4x slower)
        start = worker * per
        run = bits[start:min(n, start + per)]
        total = np.uint64(0)
        for j in range(run.shape[0]):
            z = np.uint64(np.int64(run[j])) + np.uint64(start + j) * _GAMMA
            z = (z ^ (z >> np.uint64(30))) * _MIX1
            z = (z ^ (z >> np.uint64(27))) * _MIX2
            total += z ^ (z >> np.uint64(31))
        sums[worker] = total
    total = np.uint64(0)
    for worker in range(workers):
        total += sums[worker]
    return total
