"""The summation error model: how far a correct implementation's sums may drift, per row.

The tolerance model v2 (see :mod:`ce_conformance.tolerance`) needs, for every sum a kernel may
form over classes or positions, the standard deviation of its rounding error over all reasonable
summation orders. :func:`summation_root` is that model; it groups equal terms, so at vocabulary
scale it dominated the reference's cost (a per-row sort of 128256 values, twice per case).

With the numba engine (:mod:`ce_conformance.engine`) it runs as one pass per row, equal terms
grouped in a hash table instead of a sort, rows spread over threads; the vectorised NumPy
version below is its specification and the fallback.

>>> float(summation_root(np.full((1, 4), 1.0), 2.0**-24)[0])  # equal terms: the linear bound 1+2+3+4
10.0
"""

from __future__ import annotations

import numpy as np

from . import engine
from .dtypes import dtype_name, ulp
from .tolerance import SIGMAS

LOST_WEIGHT = float(np.sqrt(3.0) / SIGMAS)
"""What a lost term (at most half an ulp of the partial sum it meets) counts in ``sqrt(V)``, per
unit of ``term / u``: it is a bias, not a random error, so it enters the standard deviation
``u sqrt(V / 3)`` such that the budget's ``SIGMAS`` standard deviations hold it exactly once.
Counted as a random error with the threshold ``u * s`` (v2.1) it was allowed 2.9 times, on twice
the terms: at C = 262144 (standard-normal logits times 2, float32) 13 times what a sequential
exp sum really drifts (1300-1544 u; the lost terms' bound 2900 u, half of which terms between
half an ulp and an ulp give back by rounding up)."""


def near_equal(values: np.ndarray, bits: int = 16) -> np.ndarray:
    """Values rounded to ``bits`` significant bits (upward, so no magnitude shrinks): equal
    results mark terms whose roundings in a growing sequential sum are correlated."""
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.floor(np.log2(np.where(values > 0, values, 1.0)))
        step = np.exp2(exponent - bits)
        return np.where(values > 0, np.ceil(values / step) * step, values)


def grid_aligned(rows: np.ndarray, terms: np.ndarray, dtype: np.dtype, u: float,
                 multipliers: np.ndarray | None = None) -> np.ndarray:
    """Rows whose logits lie on a grid at least as coarse as the ulp of the sum of ``terms``
    (large offsets; half dtypes summed in float32): every log-probability is then a grid value
    minus the same log-sum-exp, each addition rounds away the same residue, and the errors of
    a sequential sum add up linearly instead of as a random walk.

    ``terms`` are ``multipliers * |log p|`` (targets, weights; per row, or per class for all
    rows): the residues repeat only where the multipliers do. Distinct multipliers (random soft
    targets in float32) give each product its own residue, a random walk again: at C = 262144
    the linear bound was 2400 times the error of a sequential float32 sum of such a row.

    >>> rows = np.array([[9.0, 0.0, -9.0, 1.0]])  # a grid of 2**-20 in float32: coarser than the sum's ulp
    >>> bool(grid_aligned(rows, np.array([[0.1, 1.0, 2.0, 3.0]]), np.float32, 2.0**-24)[0])
    True
    >>> bool(grid_aligned(rows, np.array([[0.1, 1.0, 2.0, 3.0]]), np.float32, 2.0**-24,
    ...                   multipliers=np.array([[0.1, 0.2, 0.3, 0.4]]))[0])
    False
    """
    x = np.abs(np.asarray(rows, dtype=np.float64))
    quantum = ulp(np.where(np.isfinite(x), x, 0).max(axis=1, initial=0), dtype_name(dtype))
    total = np.where(np.isfinite(terms), terms, 0).sum(axis=1)
    with np.errstate(divide="ignore"):
        sum_ulp = 2 * u * np.exp2(np.floor(np.log2(np.where(total > 0, total, 1.0))))
    aligned = quantum >= sum_ulp
    if multipliers is not None and aligned.any():
        aligned &= repeated_values(multipliers, aligned)
    return aligned


def repeated_values(values: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Per row of ``values`` (a 1-D array is one row shared by all), whether its nonzero finite
    values take fewer distinct values than half their count (as in :func:`summation_root`'s
    ``repetitive``); only ``rows`` (a mask, optional) are examined, the others are False.

    >>> repeated_values(np.array([[0.5, 0.5, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]])).tolist()
    [True, False]
    """
    values = np.abs(np.asarray(values, dtype=np.float64))
    if values.ndim == 1:
        values = values[None, :]
    shared = values.shape[0] == 1
    wanted = np.ones(values.shape[0], dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    repeated = np.zeros(wanted.shape[0] if rows is not None else values.shape[0], dtype=bool)
    picked = values if shared else values[wanted]
    if picked.shape[0] == 0:
        return repeated
    ordered = np.sort(np.where(np.isfinite(picked) & (picked > 0), picked, 0.0), axis=1)
    present = ordered > 0
    new = present.copy()
    new[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
    verdict = new.sum(axis=1) < present.sum(axis=1) / 2
    if shared:
        repeated[:] = verdict[0]
        repeated &= wanted
    else:
        repeated[wanted] = verdict
    return repeated


def summation_root(magnitudes: np.ndarray, u: float, repetitive: np.ndarray | None = None,
                   linear: np.ndarray | None = None) -> np.ndarray:
    """Per row, ``sqrt(V)`` where ``(u**2 / 3) * V`` is the rounding variance of a sequential sum of
    the (finite, non-negative) magnitudes, for the worse of the forward and the reverse order.

    Each addition k errs by at most min(u * s_k, t_k): a term of at most half an ulp of the
    partial sum is lost, not more, and always toward zero, so lost terms add up linearly, as a
    bias (:data:`LOST_WEIGHT`). Additions of *different*
    values err independently (V = sum_k s_k**2); additions of the *same* value err alike
    (within a binade the rounding of s + t repeats), so the partial sums of equal terms add up
    before squaring: (sum_{k: t_k = v} s_k)**2 per distinct value v. All terms distinct gives the
    random-rounding model, all equal the worst-case linear bound. Tree, blocked, compensated
    and strided orders stay below the sequential ones. Computed on magnitudes scaled by their
    row maximum, so values near the dtype's top do not overflow. ``repetitive`` (optional, one
    flag per row) is set where a row holds fewer distinct values than half its length: such rows
    round alike, also across rows, and the reduction over positions adds their errors linearly."""
    if engine.available() and np.ndim(magnitudes) >= 1 and np.size(magnitudes) > 0:
        flat = np.ascontiguousarray(np.asarray(magnitudes, dtype=np.float64).reshape(-1, np.shape(magnitudes)[-1]))
        flags = np.zeros(flat.shape[0], dtype=bool) if linear is None else \
            np.ascontiguousarray(np.broadcast_to(linear, np.shape(magnitudes)[:-1]).reshape(-1))
        summation_roots, threads = engine.kernel("summation_roots", flat.size)
        root, distinct = summation_roots(flat, float(u), LOST_WEIGHT, flags, threads)
        if repetitive is not None:
            repetitive[...] = (distinct < flat.shape[1] / 2).reshape(repetitive.shape)
        return root.reshape(np.shape(magnitudes)[:-1])
    return _summation_root_numpy(magnitudes, u, repetitive, linear)


def _summation_root_numpy(magnitudes: np.ndarray, u: float, repetitive: np.ndarray | None,
                          linear: np.ndarray | None) -> np.ndarray:
    """:func:`summation_root` in vectorised NumPy: the readable specification of the numba kernel
    (a per-row sort groups the equal terms), and the engine where numba is missing."""
    finite = np.where(np.isfinite(magnitudes), magnitudes, 0.0)
    if finite.shape[-1] == 0 or finite.size == 0:
        return np.zeros(finite.shape[:-1])
    top = finite.max(axis=-1, keepdims=True)
    # a power of two keeps every partial sum's binade (which decides what a sum loses)
    top = np.where(top > 0, np.exp2(np.frexp(top)[1] - 1.0), 1.0)
    finite = finite / top
    forward = np.cumsum(finite, axis=-1)
    backward = forward[..., -1:] - forward + finite
    # a term of at most half an ulp of the partial sum is lost whole, always toward zero: such
    # errors add up linearly (a long tail of tiny probabilities after a dominant one), not as a
    # random walk
    def lost_in(partial: np.ndarray) -> np.ndarray:
        half_ulp = np.exp2(np.frexp(partial)[1] - 1.0)
        return (partial > 0) & (finite / u <= half_ulp)

    lost_forward, lost_backward = lost_in(forward), lost_in(backward)
    lost = np.maximum(np.where(lost_forward, finite / u, 0).sum(axis=-1),
                      np.where(lost_backward, finite / u, 0).sum(axis=-1))
    forward = np.where(lost_forward, 0.0, forward)
    backward = np.where(lost_backward, 0.0, backward)
    # groups of equal terms within a row: a per-row sort (SIMD in NumPy >= 2; a global
    # np.unique over every element cost 10x more at vocabulary scale), then runs of equal values
    width = finite.shape[-1]
    flat = finite.reshape(-1, width)
    rows = flat.shape[0]
    order = np.argsort(flat, axis=-1)
    ordered = np.take_along_axis(flat, order, axis=-1)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    del ordered
    distinct = starts.sum(axis=-1)
    group_starts = np.flatnonzero(starts)
    group_row = np.repeat(np.arange(rows), distinct)
    del starts

    def grouped(partial: np.ndarray) -> np.ndarray:
        sums = np.add.reduceat(np.take_along_axis(partial.reshape(rows, width), order, axis=-1).ravel(), group_starts)
        return np.bincount(group_row, weights=sums * sums, minlength=rows).reshape(finite.shape[:-1])

    if repetitive is not None:
        repetitive[...] = (distinct < width / 2).reshape(repetitive.shape)
    root = np.sqrt(np.maximum(grouped(forward), grouped(backward)))
    if linear is not None and np.any(linear):  # correlated roundings: one group per row
        root = np.where(linear, np.maximum(forward.sum(axis=-1), backward.sum(axis=-1)), root)
    return (root + LOST_WEIGHT * lost) * top[..., 0]


def _underflow_remainders(factors: tuple[np.ndarray, np.ndarray, np.ndarray], normal: float) -> np.ndarray:
    """Per element of a product ``a * b * c``: the largest factor that can multiply a first
    partial product (of the other two) lying below ``normal``; 0 where none can. Non-finite
    factors count as zero."""
    a, b, c = (np.nan_to_num(np.abs(np.asarray(f, dtype=np.float64)), nan=0.0, posinf=0.0) for f in factors)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.maximum.reduce([np.where(a * b < normal, c, 0.0), np.where(b * c < normal, a, 0.0),
                                  np.where(a * c < normal, b, 0.0)])


def subnormal_products(factors: tuple[np.ndarray, np.ndarray, np.ndarray], dtype: str) -> np.ndarray:
    """Per row, the largest absolute error a three-factor product ``a * b * c`` (per element) can
    pick up when, in the order a kernel chooses, its first partial product falls below the dtype's
    normal range: that product loses up to half a subnormal step, which the remaining factor then
    scales. In float16 ``w * g / N`` is easily subnormal (2e-6: steps of 6e-8, 3 % of it) and a
    log-probability of -36 multiplies the loss.

    >>> float(subnormal_products((np.array([[1e-3]]), np.array([[36.0]]), np.array([[1e-3]])), "float16")[0])
    1.0728836059570312e-06
    """
    from .dtypes import smallest_normal, smallest_subnormal

    remainders = _underflow_remainders(factors, smallest_normal(dtype))
    if remainders.ndim == 0 or remainders.shape[-1] == 0:
        return np.zeros(remainders.shape[:-1])
    return 0.5 * smallest_subnormal(dtype) * remainders.max(axis=-1)


def flushed_products(factors: tuple[np.ndarray, np.ndarray, np.ndarray], compute_dtype: str) -> np.ndarray:
    """Per row, how much a sum of three-factor products ``sum_k a_k * b_k * c_k`` can lose in a
    kernel that flushes subnormals to zero in ``compute_dtype`` (XLA on CPU, fast-math GPU
    builds: correct arithmetic): a first partial product below the normal range becomes 0,
    losing less than the smallest normal times the remaining factor; all such losses go toward
    zero, so they add up. Tiny weights times small probabilities times log p: a JAX loss of
    6e-307 came back as 0.

    >>> float(flushed_products((np.array([[1e-310, 1.0]]), np.array([[0.5, 0.5]]), np.array([[3.0, 3.0]])), "float64")[0])
    6.675221575521604e-308
    """
    from .dtypes import smallest_normal

    normal = smallest_normal(compute_dtype)
    remainders = _underflow_remainders(factors, normal)
    if remainders.ndim == 0 or remainders.shape[-1] == 0:
        return np.zeros(remainders.shape[:-1])
    return normal * remainders.sum(axis=-1)


def flushed_pairs(a: np.ndarray, b: np.ndarray, compute_dtype: str) -> np.ndarray:
    """Elementwise, what a product ``a * b`` can lose in a kernel that flushes subnormals to zero
    in ``compute_dtype``: a factor below the normal range vanishes with the product (less than
    the smallest normal times the other factor), a product below it vanishes (less than the
    smallest normal). A weight of 1.5e-38 times an NLL of 0.69 is subnormal in float32: flushed,
    a 'mean' loss of log 2 comes back as 0 / 1.5e-38 = 0.

    >>> float(flushed_pairs(np.array([1.5e-38]), np.array([0.69]), "float32")[0]) > 0
    True
    """
    from .dtypes import smallest_normal

    normal = smallest_normal(compute_dtype)
    a, b = (np.nan_to_num(np.abs(np.asarray(f, dtype=np.float64)), nan=0.0, posinf=0.0) for f in (a, b))
    with np.errstate(over="ignore", invalid="ignore"):
        return normal * np.maximum.reduce([np.where(a * b < normal, 1.0, 0.0), np.where(a < normal, b, 0.0),
                                           np.where(b < normal, a, 0.0)])


def root_sum_squares(magnitudes: np.ndarray) -> np.ndarray:
    """Per row, sqrt(sum_k t_k**2) without overflow: independent roundings of each term."""
    finite = np.where(np.isfinite(magnitudes), magnitudes, 0.0)
    if finite.shape[-1] == 0 or finite.size == 0:
        return np.zeros(finite.shape[:-1])
    top = finite.max(axis=-1, keepdims=True)
    scaled = finite / np.where(top > 0, top, 1.0)
    return np.sqrt(np.einsum("...k,...k->...", scaled, scaled)) * top[..., 0]


def finite_row_max(magnitudes: np.ndarray) -> np.ndarray:
    """Largest finite magnitude per row: an infinite term (a -inf logit's log-probability)
    must not turn the whole row's error floor into infinity."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(magnitudes), magnitudes, 0).max(axis=1, initial=0)


