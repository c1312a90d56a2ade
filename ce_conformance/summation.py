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

import functools
import math
from typing import Final

import numpy as np

from . import engine
from .dtypes import dtype_name, machine_epsilon, round_to, ulp
from .tolerance import SIGMAS

LOST_WEIGHT = float(np.sqrt(3.0) / SIGMAS)
"""What a lost term (below ``u`` times the partial sum it meets) counts in ``sqrt(V)``, per unit of
``term / u``: it is a bias, not a random error, so it enters the standard deviation
``u sqrt(V / 3)`` such that the budget's ``SIGMAS`` standard deviations hold it exactly once.
Counted as a random error (v2.1) it was allowed 2.9 times: at C = 262144 (standard-normal logits
times 2, float32) 13 times what a sequential exp sum really drifts (1300-1544 u), now 4.5 times.
The threshold stays ``u s``, not the half ulp of ``s`` where a term really vanishes: that depends
on the binade of the kernel's partial sums, hence on the scale it sums in (``exp(x - max)``, or
running maxima), and with ``p``'s binades instead of ``exp(x - max)``'s a float64 sequential sum
lost more than the half-ulp bound (3177 u against 3062 u: a false alarm of the nightly run)."""


def near_equal(values: np.ndarray, bits: int = 16) -> np.ndarray:
    """Values rounded to ``bits`` significant bits (upward, so no magnitude shrinks): equal
    results mark terms whose roundings in a growing sequential sum are correlated."""
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.floor(np.log2(np.where(values > 0, values, 1.0)))
        step = np.exp2(exponent - bits)
        return np.where(values > 0, np.ceil(values / step) * step, values)


RESIDUE_BINADES: Final = 6
"""How many binades below the sum's last one :func:`residue_groups` keys residues at: terms alike
modulo the last binade's ulp ``U`` may differ modulo ``U / 2``, and the additions of the partial
sums below ``total / 2**6`` (where residues modulo a finer ulp decide) are too few and too small
to matter even if all of them rounded alike (at most ~0.1 of a random walk's sigma at C = 262144)."""


def _sum_ulp(terms: np.ndarray, u: float) -> np.ndarray:
    """Per row, the ulp of the binade a (non-negative) sum of ``terms`` ends in."""
    total = np.where(np.isfinite(terms), terms, 0).sum(axis=1)
    with np.errstate(divide="ignore"):
        return 2 * u * np.exp2(np.floor(np.log2(np.where(total > 0, total, 1.0))))


def grid_aligned(rows: np.ndarray, sum_ulp: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows whose logits lie on a grid at least as coarse as ``sum_ulp``, the ulp of a row's sum
    of terms (large offsets; half dtypes summed in float32): every log-probability is then a grid
    value minus the same log-sum-exp, and terms with one multiplier (a target, a weight) round away
    the same residue: see :func:`residue_groups`.

    >>> rows = np.array([[9.0, 0.0, -9.0, 1.0]])  # a grid of 2**-20 in float32: coarser than the sum's ulp
    >>> bool(grid_aligned(rows, _sum_ulp(np.array([[0.1, 1.0, 2.0, 3.0]]), 2.0**-24), np.float32)[0])
    True
    """
    x = np.abs(np.asarray(rows, dtype=np.float64))
    return ulp(np.where(np.isfinite(x), x, 0).max(axis=1, initial=0), dtype_name(dtype)) >= sum_ulp


def residue_groups(rows: np.ndarray, terms: np.ndarray, multipliers: np.ndarray, dtype: np.dtype,
                   u: float) -> np.ndarray | None:
    """``summation_root``'s ``groups`` for terms ``multipliers * |log p|`` (per row, or per class
    for all rows). In :func:`grid_aligned` rows a term is ``w (L - a_c)``, ``a_c = x_c - max`` on
    the logits' grid and ``L`` the row's log-sum-exp, so what an addition rounds away depends on
    ``w a_c`` modulo the partial sum's ulp: terms of one multiplier whose ``w a_c`` agree there
    round alike and add up linearly (one group for the smoothing sum of an unweighted row on a
    coarse grid: the linear bound), terms that differ there make a random walk. Keyed by the
    multiplier and ``w a_c`` modulo the ulp :data:`RESIDUE_BINADES` binades below the sum's last
    (where residues agree at a coarser ulp they agree at every finer one). Until 2026-12-06 keyed
    by the multiplier alone: float16 soft targets (a few hundred distinct subnormal values at C =
    262144) made groups of ~300 terms whose products' residues were all distinct, and their
    loss was allowed 40 times a random walk, 6.8 times the correct family's largest error. Rows
    not aligned keep their terms' values as keys (equal terms round alike). None where no row
    is aligned. (v2.1 took the linear bound for every aligned row: 1000-2400 times the error of a
    sequential float32 sum of 128256-262144 random soft targets.)

    >>> rows = np.array([[9.0, 0.0, -9.0, 1.0]])
    >>> groups = residue_groups(rows, np.array([[0.1, 1.0, 2.0, 3.0]]), np.array([0.5, 0.5, 0.25, 0.5]),
    ...                         np.float32, 2.0**-24)
    >>> bool(groups[0, 0] == groups[0, 1] == groups[0, 3] != groups[0, 2])
    True
    """
    sum_ulp = _sum_ulp(terms, u)
    aligned = grid_aligned(rows, sum_ulp, dtype)
    if not aligned.any():
        return None
    keys = np.broadcast_to(np.asarray(multipliers, dtype=np.float64), np.shape(terms))
    keys = np.where(np.isfinite(keys), keys, 0.0)
    x = np.asarray(rows, dtype=np.float64)
    finite = np.isfinite(x)
    top = np.where(finite, x, -np.inf).max(axis=1, initial=-np.inf)
    quantum = (sum_ulp / 2.0 ** RESIDUE_BINADES)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        offsets = np.where(finite & np.isfinite(top)[:, None], x - top[:, None], 0.0)
        residues = np.nan_to_num(np.mod(keys * offsets, quantum) / quantum)  # in [0, 1)
    return np.where(aligned[:, None], pair_keys(keys, residues), terms)


def pair_keys(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One float64 key per pair of (finite, broadcastable) values: equal pairs give equal keys,
    distinct pairs distinct ones but for a 52-bit hash's collisions, which merge two groups of
    terms that round alike (more conservative, never less)."""
    # + 0.0 makes each a new contiguous array, and -0.0 into 0.0 (its bits would be a key of their own)
    first, second = (v + 0.0 for v in np.broadcast_arrays(np.asarray(first, dtype=np.float64),
                                                           np.asarray(second, dtype=np.float64)))
    mixed = (first.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ second.view(np.uint64)
    return ((mixed * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(12)).astype(np.float64)


def alike_root(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per row, ``sqrt(sum over groups g of (sum_{c in g} values_c)**2)``, the groups being the
    equal ``keys``: roundings of one value that repeat (a bias within a group) and differ between
    groups (a random walk across them), as one rounding's ``values`` add up.

    >>> alike_root(np.array([[1.0, 1.0, 1.0, 0.0]]), np.array([[5.0, 5.0, 7.0, 5.0]])).round(4).tolist()
    [2.2361]
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=np.finfo(np.float64).max)
    rows = int(np.prod(values.shape[:-1]))
    keys = np.broadcast_to(np.asarray(keys, dtype=np.float64), values.shape).reshape(rows, values.shape[-1])
    flat = values.reshape(rows, values.shape[-1])
    out = np.zeros(flat.shape[0])
    for r in range(flat.shape[0]):
        used = flat[r] != 0
        if not used.any():
            continue
        _, group = np.unique(keys[r][used], return_inverse=True)
        with np.errstate(over="ignore"):
            sums = np.abs(np.bincount(group.ravel(), weights=flat[r][used]))
        out[r] = root_sum_squares(np.minimum(sums, np.finfo(np.float64).max)[None, :])[0]
    return out.reshape(values.shape[:-1])


def summation_root(magnitudes: np.ndarray, u: float, repetitive: np.ndarray | None = None,
                   linear: np.ndarray | None = None, groups: np.ndarray | None = None, *, bias: bool = False
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Per row, ``sqrt(V)`` where ``(u**2 / 3) * V`` is the rounding variance of a sequential sum of
    the (finite, non-negative) magnitudes, for the worse of the forward and the reverse order.

    Each addition k errs by at most min(half ulp(s_k), t_k): a term below half an ulp of its
    partial sum is lost, not more, and always toward zero, so lost terms add up linearly, as a
    bias (:data:`LOST_WEIGHT`). Additions of *different* values err independently, each uniformly
    within half an ulp (V = sum_k s_k**2 h_k, where half an ulp of s_k is ``u s_k sqrt(h_k)``,
    ``1/4 < h_k <= 1`` by where s_k falls in its binade); additions of the *same* value err alike
    (within a binade the rounding of s + t repeats), so the partial sums of equal terms add up
    before squaring: (sum_{k: t_k = v} s_k)**2 per distinct value v, with h = 1 and lost below
    u s_k. All terms distinct gives the random-rounding model, all equal the worst-case linear
    bound. Where a partial sum falls in its binade, and so what is lost, depends on the scale the
    kernel sums in (``exp(x - max)``, a running maximum, ``exp2``): the row is judged at its worst
    scale, in :data:`SCALE_STEPS` steps (:func:`step_table`); until v2.10 every ``h_k`` was 1 and
    every term below ``u s_k`` lost, the worst place in the binade for every partial sum at once,
    1.22 times the worst scale's sigma on rows of distinct terms. Tree, blocked, compensated
    and strided orders stay below the sequential ones. Computed on magnitudes scaled by their
    row maximum, so values near the dtype's top do not overflow. ``repetitive`` (optional, one
    flag per row) is set where a row holds fewer distinct values than half its length: such rows
    round alike, also across rows, and the reduction over positions adds their errors linearly.
    ``linear`` (one flag per row) makes a row one group. ``groups`` (optional, the shape of
    ``magnitudes``) groups the terms by these keys instead of by their values: terms whose
    roundings repeat for another reason (:func:`grid_aligned`: equal multipliers of log-probabilities
    that share one residue). With ``bias``, also the root's bias part: ``LOST_WEIGHT`` times the most
    the lost terms weigh at any scale, in either order (at most the root). Lost terms err toward
    zero in every row, so a sum over rows (the reduction over positions) adds these parts
    linearly where the rest of the roots add in quadrature."""
    if engine.available() and np.ndim(magnitudes) >= 1 and np.size(magnitudes) > 0:
        flat = np.ascontiguousarray(np.asarray(magnitudes, dtype=np.float64).reshape(-1, np.shape(magnitudes)[-1]))
        flags = np.zeros(flat.shape[0], dtype=bool) if linear is None else \
            np.ascontiguousarray(np.broadcast_to(linear, np.shape(magnitudes)[:-1]).reshape(-1))
        keys = np.empty((0, flat.shape[1])) if groups is None else np.ascontiguousarray(
            np.broadcast_to(np.asarray(groups, dtype=np.float64), np.shape(magnitudes)).reshape(flat.shape)) + 0.0
        summation_roots, threads = engine.kernel("summation_roots", flat.size)
        root, distinct, lost = summation_roots(flat, keys, float(u), LOST_WEIGHT, flags, step_table(),
                                               MANTISSA_BINS, threads)
        if repetitive is not None:
            repetitive[...] = (distinct < flat.shape[1] / 2).reshape(repetitive.shape)
        shape = np.shape(magnitudes)[:-1]
        return (root.reshape(shape), lost.reshape(shape)) if bias else root.reshape(shape)
    root, lost = _summation_root_numpy(magnitudes, u, repetitive, linear, groups)
    return (root, lost) if bias else root


def _summation_root_numpy(magnitudes: np.ndarray, u: float, repetitive: np.ndarray | None,
                          linear: np.ndarray | None, groups: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`summation_root` (the root and its bias part) in vectorised NumPy: the readable
    specification of the numba kernel (a per-row sort groups the equal terms), and the engine where
    numba is missing."""
    finite = np.where(np.isfinite(magnitudes), magnitudes, 0.0)
    if finite.shape[-1] == 0 or finite.size == 0:
        return np.zeros(finite.shape[:-1]), np.zeros(finite.shape[:-1])
    top = finite.max(axis=-1, keepdims=True)
    finite = finite / np.where(top > 0, top, 1.0)
    width = finite.shape[-1]
    rows = finite.size // width
    finite = finite.reshape(rows, width)
    forward = np.cumsum(finite, axis=-1)
    backward = forward[:, -1:] - forward + finite
    # groups of equal terms (or keys) within a row: a per-row sort (SIMD in NumPy >= 2; a global
    # np.unique over every element cost 10x more at vocabulary scale), then runs of equal values
    flat = finite if groups is None else \
        np.broadcast_to(np.asarray(groups, dtype=np.float64), np.shape(magnitudes)).reshape(rows, width) + 0.0
    order = np.argsort(flat, axis=-1)
    ordered = np.take_along_axis(flat, order, axis=-1)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    del ordered
    distinct = starts.sum(axis=-1)
    group_starts = np.flatnonzero(starts)
    group_row = np.repeat(np.arange(rows), distinct)
    sizes = np.diff(np.append(group_starts, rows * width))
    del starts
    alone = np.empty((rows, width), dtype=bool)  # terms whose value (or key) no other term of the row has
    np.put_along_axis(alone, order, np.repeat(sizes == 1, sizes).reshape(rows, width), axis=-1)
    several = sizes > 1
    row_of = np.repeat(np.arange(rows)[:, None], width, axis=1)
    terms = finite / u  # u is a power of two: exact
    if repetitive is not None:
        repetitive[...] = (distinct < width / 2).reshape(repetitive.shape)

    def direction(partial: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
        """This order's stepped root and bias part, its continuous variance and lost terms (the
        linear rows')."""
        # the continuous rule: a term below u * (partial sum) may be lost whole, always toward zero
        # (a long tail of tiny probabilities after a dominant one adds up linearly, not as a walk)
        lost = terms < partial
        kept = np.where(lost, 0.0, partial)
        lost_terms = np.where(lost, terms, 0.0)
        sums = np.add.reduceat(np.take_along_axis(kept, order, axis=-1).ravel(), group_starts)
        repeated = np.bincount(group_row[several], weights=sums[several] ** 2, minlength=rows)
        repeated_lost = np.where(alone, 0.0, lost_terms).sum(axis=-1)
        statistics, always = _stepped_statistics(partial[alone], terms[alone], row_of[alone], rows)
        return _stepped_root(statistics, always, repeated, repeated_lost), kept.sum(axis=-1), lost_terms.sum(axis=-1)

    ((root_forward, bias_forward), linear_forward, lost_forward), \
        ((root_backward, bias_backward), linear_backward, lost_backward) = direction(forward), direction(backward)
    root = np.maximum(root_forward, root_backward)
    bias = np.maximum(bias_forward, bias_backward)
    if linear is not None and np.any(linear):  # correlated roundings: one group per row
        linear = np.broadcast_to(linear, np.shape(magnitudes)[:-1]).reshape(rows)
        linear_bias = LOST_WEIGHT * np.maximum(lost_forward, lost_backward)
        root = np.where(linear, np.maximum(linear_forward, linear_backward) + linear_bias, root)
        bias = np.where(linear, linear_bias, bias)
    shape = np.shape(magnitudes)[:-1]
    return (root * top.reshape(rows)).reshape(shape), (bias * top.reshape(rows)).reshape(shape)


SCALE_STEPS: Final = 32
"""How finely the stepped model divides the binade of a kernel's scale (:func:`step_table`)."""

MANTISSA_BINS: Final = 32
"""How finely the stepped model places a partial sum within its binade: by the top five bits of
its significand."""

LOSS_BANDS: Final = 16
"""How finely the stepped model divides the band ``u s / 2 <= t < u s`` where whether a term is lost
depends on the kernel's scale."""

_STEP_CELLS: Final = MANTISSA_BINS * LOSS_BANDS


def _step_extremes(steps: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, bins)``: the largest and the smallest ``h = (half ulp(lambda s) / (u lambda s))**2``
    for a kernel scale ``lambda`` in ``[2**(j/steps), 2**((j+1)/steps)]`` and a significand of ``s`` in
    bin ``b``; ``h`` is 1 where ``lambda s`` is a power of two and falls towards 1/4 below the next."""
    j = np.arange(steps)[:, None]
    b = np.arange(bins)[None, :]
    low = np.exp2(j / steps) * (1 + b / bins)
    high = np.exp2((j + 1) / steps) * (1 + (b + 1) / bins)
    binade = np.exp2(np.floor(np.log2(low)))
    crosses = high >= 2 * binade * (1 - 2.0**-40)
    return np.where(crosses, 1.0, (binade / low) ** 2), np.where(crosses, 0.25, (binade / high) ** 2)


@functools.lru_cache(maxsize=None)
def step_table() -> np.ndarray:
    """``(MANTISSA_BINS + 2 * MANTISSA_BINS * LOSS_BANDS, SCALE_STEPS)``: the weights of a row's
    stepped statistics (:func:`_stepped_statistics`) at each step ``j`` of the kernel's scale:
    partial sums never lost by bin (``h``'s largest), those in a loss band by cell (where the term
    may be kept at that scale ``h``'s largest, at most the band's top ``(t / (u s))**2``, else 0), and
    their terms by cell (1 where the term may be lost at that scale, else 0: a cell that straddles
    the threshold counts both ways).

    >>> table = step_table()
    >>> float(table[0, 0]), round(float(table[16, 0]), 3)  # s at 1 in the kernel's scale; s at 1.5: (1 / 1.5)**2
    (1.0, 0.444)
    """
    largest, smallest = _step_extremes(SCALE_STEPS, MANTISSA_BINS)
    band = np.arange(LOSS_BANDS)
    low_ratio = (0.5 + band / (2 * LOSS_BANDS)) ** 2  # (t / (u s))**2 at a band's edges
    high_ratio = (0.5 + (band + 1) / (2 * LOSS_BANDS)) ** 2
    # kept at that scale means h <= (t / (u s))**2, so the band's top bounds h too
    kept = np.where(high_ratio[None, None, :] >= smallest[:, :, None],
                    np.minimum(largest[:, :, None], high_ratio[None, None, :]), 0.0)
    lost = (low_ratio[None, None, :] < largest[:, :, None]).astype(np.float64)
    table = np.concatenate([largest, kept.reshape(SCALE_STEPS, -1), lost.reshape(SCALE_STEPS, -1)], axis=1)
    return np.ascontiguousarray(table.T)


def _significand_bins(partials: np.ndarray) -> np.ndarray:
    """The :data:`MANTISSA_BINS` bin of each (positive, normal) partial sum's significand."""
    significand, _ = np.frexp(partials)
    return ((2 * significand - 1) * MANTISSA_BINS).astype(np.int64)


def _stepped_statistics(partials: np.ndarray, terms: np.ndarray, rows: np.ndarray, n_rows: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, what the stepped model needs of the additions that round on their own: the squared
    partial sums ``s`` by significand bin (terms ``t >= u s``, never lost), by (bin, band) those whose
    term is lost at some scales only (``u s / 2 <= t < u s``) and their terms in units of ``u``; and
    the terms always lost (``t < u s / 2``: below half an ulp at every scale), in units of ``u``.
    ``terms`` are ``t / u``."""
    used = partials > 0
    partials, terms, rows = partials[used], terms[used], rows[used]
    bins = _significand_bins(partials)
    kept = terms >= partials
    always = terms < 0.5 * partials
    band = np.clip(((terms / partials - 0.5) * (2 * LOSS_BANDS)).astype(np.int64), 0, LOSS_BANDS - 1)
    cell = bins * LOSS_BANDS + band
    width = MANTISSA_BINS + 2 * _STEP_CELLS
    squares = partials * partials
    banded = ~kept & ~always
    columns = np.concatenate([rows[kept] * width + bins[kept], rows[banded] * width + MANTISSA_BINS + cell[banded],
                              rows[banded] * width + MANTISSA_BINS + _STEP_CELLS + cell[banded]])
    statistics = np.bincount(columns, weights=np.concatenate([squares[kept], squares[banded], terms[banded]]),
                             minlength=n_rows * width)
    return statistics.reshape(n_rows, width), np.bincount(rows[always], weights=terms[always], minlength=n_rows)


def _stepped_root(statistics: np.ndarray, always_lost: np.ndarray, grouped_variance: np.ndarray,
                  grouped_lost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``max_j sqrt(V_j) + LOST_WEIGHT * L_j`` over the kernel's scale steps ``j``: the
    stepped statistics weighted by :func:`step_table`, plus what the grouped terms add at every
    scale (their roundings repeat, so they keep the continuous model); and the bias part,
    ``max_j LOST_WEIGHT * L_j``."""
    table = step_table()
    split = MANTISSA_BINS + _STEP_CELLS
    variance = grouped_variance[:, None] + statistics[:, :split] @ table[:split]
    lost = (grouped_lost + always_lost)[:, None] + statistics[:, split:] @ table[split:]
    return (np.sqrt(variance) + LOST_WEIGHT * lost).max(axis=1), LOST_WEIGHT * lost.max(axis=1)


EQUAL_TERM_LANES: Final = 4096
"""The most running sums (SIMD lanes, GPU threads, a Triton block, chunks of a split reduction:
any count up to it) and the largest tree-summed block (powers of two up to it)
:func:`equal_terms_bound` considers."""


def _addition_errors(start: float, value: float, count: int, dtype: np.dtype) -> np.ndarray:
    """Prefix sums of ``|rounding error|`` of the additions of a running sum in ``dtype`` that
    starts at ``start`` and adds ``value`` ``count`` times: element ``n`` is the first ``n``
    additions' total. Realised, not bounded: NumPy's cumsum is sequential, and each addition's
    error is exact in float64 (float32 operands), or by TwoSum (float64)."""
    terms = np.full(count + 1, value, dtype=dtype)
    terms[0] = start
    partial = np.cumsum(terms, dtype=dtype)
    before, added = partial[:-1].astype(np.float64), float(terms[1]) if count else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        exact = before + added
        if dtype == np.float64:
            back = exact - before
            errors = (before - (exact - back)) + (added - back)
        else:
            errors = partial[1:].astype(np.float64) - exact
    return np.concatenate([[0.0], np.cumsum(np.abs(np.nan_to_num(errors, nan=0.0, posinf=0.0, neginf=0.0)))])


@functools.lru_cache(maxsize=256)  # the same for every block of rows of a case
def equal_terms_bound(value: float, count: int, first: float, dtype: str, scales: tuple[float, ...] = (1.0,),
                      term_dtype: str | None = None) -> float:
    """A bound on the rounding error of ``first + value + value + ...`` (``count`` equal terms,
    as the backward's sum of a smoothed row's upstream terms ``eps / C``), in units of the
    unscaled terms, over the orders kernels sum in: one running sum; ``L`` interleaved running
    sums or chunks (any ``L`` up to :data:`EQUAL_TERM_LANES`: 48 cores split a row in 48),
    ``first`` met anywhere in its sum (the residues before it are those of a sum from zero, after
    it those of a sum from ``first``, each at most their whole path's: a K-dim kernel meets the
    target at its class index); blocks of ``B`` terms summed as a tree (exact for equal terms,
    ``B`` a power of two) whose sums are accumulated likewise. Each addition of one value to a
    partial sum in one binade rounds away the same residue, so the error is the sum of those
    residues along the partial sums' path — realised here for each order (``|residue|`` summed, so it bounds the order
    whatever the signs), not the linear bound ``u * sum of partial sums``, which holds the worst
    residue of every binade (179 times the family's error on float64 C = 4097, smoothing 0.1).
    The terms are taken as given and times each of ``scales`` (a kernel summing ``g / N *
    eps / C``; the scale 1 for one that scales the sum, as autograd's log-softmax backward),
    rounded to ``dtype`` and to ``term_dtype`` (torch's half kernels form the terms in the input
    dtype).

    >>> bound = equal_terms_bound(0.1 / 4097, 4096, 0.9 + 0.1 / 4097, "float64")
    >>> 0 < bound < 4096 * 0.9 * 2.0**-53 / 100  # a hundredth of the linear bound u * sum of partial sums
    True
    """
    compute = np.dtype(dtype)
    worst = 0.0
    if count <= 0 or not np.isfinite(value) or not np.isfinite(first):
        return worst
    for scale in dict.fromkeys(abs(float(s)) for s in scales if np.isfinite(s) and s != 0):
        rounded = {float(compute.type(value * scale))}
        if term_dtype is not None:
            rounded.add(float(round_to(np.array(value * scale), term_dtype)))
        for term in rounded:
            block = 1
            while block <= min(count, EQUAL_TERM_LANES):
                sums = -(-count // block)
                from_zero = _addition_errors(0.0, term * block, sums, compute)
                from_first = _addition_errors(first * scale, term * block, sums, compute)
                lanes = np.arange(1, min(sums, EQUAL_TERM_LANES) + 1)
                each = -(-sums // lanes)  # the longest lane's additions; the others' paths are its prefixes
                worst = max(worst, float((lanes * from_zero[each] + from_first[each]).max()) / scale)
                block *= 2
    return float(worst)


BIAS_NOISE: Final = 3.0
"""Standard errors of a binade's mean rounding error that :func:`order_bias` takes as chance (a
row's residues spread evenly: the random model's part), not as a bias."""


def order_bias(magnitudes: np.ndarray, dtype: str) -> np.ndarray:
    """Per row, the rounding bias of a sequential sum of the (finite, non-negative) terms in
    ``dtype``, in the worst order that does not pick terms by their residues.

    An addition of ``x`` to a partial sum in binade ``e`` (ulp ``U``) errs by ``round(x / U) U - x``;
    where the terms' residues modulo ``U`` spread evenly these errors average out, but where they
    concentrate — terms near one value (a soft target smoothed as ``t (1 - eps) + eps / C``, ``t``
    tiny: ``eps / C``) or near one size compared with ``U`` (a distillation teacher's tail times
    ``log p``: 1.1 ``U`` give or take 15 %) — they average to ``mu_e``, alike in every addition. An
    order puts ``n_e`` additions in binade ``e``: at most the smallest terms that fit in its width,
    times the running sums that reach it (lanes, up to :data:`EQUAL_TERM_LANES`); the worst order
    puts them where ``|mu_e|`` is largest, the bias ``sum_e n_e |mu_e|``. Summing terms in
    descending order realises it (within 3 % on 128256 smoothed teacher targets); forward and
    reverse index orders reach a third to two thirds of it. Until 2026-12-07 the random model
    alone: a float32 sequential sum of such targets was 3226-7650 ulps off (of its total), 4-8
    times 5 sigma of that model, and torch's K-dim gradient of 4097 of them 1.02 of its budget.

    >>> x = np.full((1, 4096), 1.1 * 2.0**-24)  # each 1.1 ulp of the partial sums in [0.5, 1)
    >>> bias = order_bias(np.concatenate([[[0.5]], x], axis=1), "float32")[0]
    >>> bool(380 < bias / 2.0**-24 <= 410)  # 4096 additions, each 0.1 ulp off, all one way (less chance's share)
    True
    """
    rows = np.asarray(magnitudes, dtype=np.float64)
    rows = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, 1)
    compute = np.dtype(dtype)
    if engine.available() and rows.size:
        info = np.finfo(compute)
        order_biases, threads = engine.kernel("order_biases", rows.size)
        bias = order_biases(np.ascontiguousarray(rows), int(info.nmant), int(math.log2(float(info.smallest_subnormal))),
                            float(info.max), EQUAL_TERM_LANES, BIAS_NOISE, threads)
        return bias.reshape(np.shape(magnitudes)[:-1]) if np.ndim(magnitudes) > 1 else bias
    bias = np.zeros(rows.shape[0])
    largest = float(np.finfo(compute).max)
    for row_index, row in enumerate(rows):
        x = np.sort(row[np.isfinite(row) & (row > 0)])
        if x.size < 2:
            continue
        cumulative = np.cumsum(x)
        reach = float(cumulative[-1])
        if not reach <= largest:  # a sum that overflows has no budget to bias
            continue
        # the partial sums reach the total, and past it by the bias itself (the second pass, where
        # that crosses into the next binade)
        for _ in range(2):
            bias[row_index] = _binade_bias(x, cumulative, reach, compute)
            beyond = float(cumulative[-1]) + bias[row_index]
            if not math.isfinite(beyond) or math.floor(math.log2(beyond)) == math.floor(math.log2(reach)):
                break
            reach = beyond
    return bias.reshape(np.shape(magnitudes)[:-1]) if np.ndim(magnitudes) > 1 else bias


def _binade_bias(x: np.ndarray, cumulative: np.ndarray, reach: float, compute: np.dtype) -> float:
    """:func:`order_bias` of one row's sorted terms, whose partial sums stay below ``reach``.
    Each binade's mean error counts beyond :data:`BIAS_NOISE` standard errors only (of the errors'
    spread, and at least a uniform rounding's, ``U / sqrt 12``): the mean of residues spread evenly,
    or of a few terms, is that much off zero by chance, which the random model holds."""
    top = math.floor(math.log2(reach))
    slots = []
    for e in range(max(math.floor(math.log2(x[0])), top - 200), top + 1):
        low = 2.0 ** e
        step = float(np.spacing(compute.type(low)))
        staying = int(np.searchsorted(x, low))  # larger terms leave the binade at once
        if staying == 0:
            continue
        lost = int(np.searchsorted(x, step / 2))  # below half an ulp: lost whole (a tie: either way)
        units = x[:staying] / step  # errors in ulps: their squares stay finite near the dtype's top
        errors = np.concatenate([-units[:lost], np.round(units[lost:]) - units[lost:]])
        mean = float(np.sum(errors)) / staying
        spread = max(float(np.sum(errors * errors)) / staying - mean * mean, 1 / 12)  # at least a uniform one's
        noise = BIAS_NOISE * math.sqrt(spread / staying)
        lanes = min(float(EQUAL_TERM_LANES), math.floor(reach / low))
        width = (min(reach, 2 * low) - low) * lanes
        capacity = int(np.searchsorted(cumulative, width, side="right")) + lanes
        slots.append((max(abs(mean) - noise, 0.0) * step, capacity))
    bias, left = 0.0, x.size
    for mean_error, capacity in sorted(slots, reverse=True):
        taken = min(capacity, left)
        bias += taken * mean_error
        left -= taken
        if left <= 0:
            break
    return bias


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


def alike_subnormal_bound(terms: np.ndarray, dtype: str) -> np.ndarray:
    """Per row, a bound on what a sum of ``terms`` formed in ``dtype`` loses where they fall below
    its normal range: each errs by up to half a subnormal step, and such terms are alike, so they
    round alike — a bias, which the caller holds whole (once, beside a bias; as a uniform error's
    sigma, bound / sqrt 3, where it joins random errors in quadrature). float16 upstream terms
    ``s eps / C`` of 3.9e-7 all became 4.2e-7 (torch's K 0.7 % high).

    >>> round(float(alike_subnormal_bound(np.array([[3.9e-7, 3.9e-7, 0.5]]), "float16")[0]) / 2.0**-25, 3)
    2.0
    """
    from .dtypes import smallest_normal, smallest_subnormal

    magnitudes = np.abs(np.asarray(terms, dtype=np.float64))
    tiny = np.count_nonzero((magnitudes > 0) & (magnitudes < smallest_normal(dtype)), axis=-1)
    return smallest_subnormal(dtype) / 2 * tiny


def flushed_products(factors: tuple[np.ndarray, np.ndarray, np.ndarray], compute_dtype: str) -> np.ndarray:
    """Per row, how much a sum of three-factor products ``sum_k a_k * b_k * c_k`` can lose in a
    kernel that flushes subnormals to zero in ``compute_dtype`` (XLA on CPU, fast-math GPU
    builds: correct arithmetic): a first partial product below the normal range becomes 0, and
    the term with it: it loses itself, less than the smallest normal times the remaining factor;
    all such losses go toward zero, so they add up. Tiny weights times small probabilities times
    log p: a JAX loss of 6e-307 came back as 0; ``eps / C * w * log p`` with weights of 1.2e-38,
    XLA's float32 loss 1.51 for 1.93.

    >>> "%.3g" % flushed_products((np.array([[1e-310, 1.0]]), np.array([[0.5, 0.5]]), np.array([[3.0, 3.0]])), "float64")[0]
    '1.5e-310'
    """
    from .dtypes import smallest_normal

    normal = smallest_normal(compute_dtype)
    remainders = _underflow_remainders(factors, normal)
    if remainders.ndim == 0 or remainders.shape[-1] == 0:
        return np.zeros(remainders.shape[:-1])
    a, b, c = (np.nan_to_num(np.abs(np.asarray(f, dtype=np.float64)), nan=0.0, posinf=0.0) for f in factors)
    with np.errstate(over="ignore", invalid="ignore"):
        terms = np.where(remainders > 0, np.minimum(a * b * c, normal * remainders), 0.0)
    return terms.sum(axis=-1)


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


def any_order_bound(terms: np.ndarray, dtype: str) -> float:
    """The largest rounding error a sum of ``terms`` can make in ``dtype`` in *any* order:
    sequential, reversed, a tree, a cascade, blocks. Each addition errs by at most half an ulp of
    its result, the sum of a subset of the terms; the chain that adds the magnitudes largest
    first has, at every rank, the largest such subset sum, so its half ulps bound every order's.

    For a few terms this bound is tighter than ``SIGMAS`` standard deviations of the random
    model (a sum of 8 losses: 8 + 16 + 16 + 4 * 32 = 168 u for terms of 6.6 in float32, where
    5 sigma of :func:`summation_root` is 270 u); the reduction over positions takes the smaller.

    >>> any_order_bound(np.array([1.0, 1.0, 1.0, 1.0]), "float32") / 2.0**-24  # 2 + 3 + 4: (2 + 2 + 4) u
    8.0
    """
    magnitudes = np.abs(np.asarray(terms, dtype=np.float64).ravel())
    magnitudes = np.sort(magnitudes[np.isfinite(magnitudes)])[::-1]
    if magnitudes.size < 2:
        return 0.0
    prefix = np.cumsum(magnitudes)[1:]
    # a computed partial sum exceeds the exact one by the terms' own errors (a loss rounded to the
    # dtype: u) and the additions' so far, and may cross into the next binade there
    drift = 1.0 + np.arange(3, magnitudes.size + 2) * machine_epsilon(dtype) / 2
    with np.errstate(over="ignore"):
        return float(np.sum(ulp(prefix * drift, dtype)) / 2)


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


