"""numba kernels of the reference (:mod:`ce_conformance.reference`) and of the summation error
model (:mod:`ce_conformance.summation`): the rows of a case, one pass set per row. Compiled
by :mod:`ce_conformance._kernels`, which documents the conventions."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._bitcast import bits_float, float_bits

_GOLDEN: np.uint64 = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing of the terms' bit patterns


@njit(cache=True, nogil=True)
def _row_root(values, keys, u, lost_weight, linear, stamp, workspace):
    """One row of ``summation_root``: the terms scaled by the row max and their sum, then
    :func:`_scaled_root`. ``workspace`` is the calling worker's :func:`_workspace`."""
    scaled = workspace[3]
    width = values.shape[0]
    top = 0.0
    for k in range(width):
        v = values[k]
        if np.isfinite(v) and v > top:
            top = v
    scale = top if top > 0 else 1.0
    total = 0.0
    for k in range(width):
        v = values[k]
        t = v / scale if np.isfinite(v) else 0.0
        if t == 0.0:
            t = 0.0  # -0.0 and 0.0 are one value
        scaled[k] = t
        total += t
    bits = scaled.view(np.int64) if keys.shape[0] == 0 else keys.view(np.int64)
    root, distinct, lost = _scaled_root(scaled, bits, total, u, lost_weight, linear, stamp, workspace)
    return root * top, distinct, lost * top


@njit(cache=True, nogil=True)
def _scaled_root(scaled, bits, total, u, lost_weight, linear, stamp, workspace, out=None, factor=0.0, marked=-1):
    """``summation_root`` of one row of finite, non-negative ``scaled`` terms (their maximum 1,
    or all 0), given ``total``, their sum in order: sequential partial sums in both
    orders, equal terms (equal ``bits``: their own bit patterns, or keys) grouped under the
    continuous model (a term below u * partial sum lost), terms of their own under the stepped
    one (``summation._stepped_statistics``, ``summation._stepped_root``).

    Grouping: a first pass marks, in a bit filter small enough for the L2 cache (16 bits per
    term), the hash buckets hit more than once; a term alone in its bucket is a group of its
    own. Only the others (``candidates``: a few percent, true repeats and bucket collisions) go
    through an exact open-addressing table, whose slot is six words (key bits, stamp, count, the
    first term and the two orders' partial sums: raw while the key has one term, a slot that ends
    so being a term of its own, the sums of the kept ones once it has two) and whose stamp marks
    the slots this row uses, so it is never cleared. The table's first power of two of slots above
    twice the candidates is all a row uses: a region that stays in cache, where the whole table made
    each candidate a cache miss (a quarter of the reference kernel's time on rows of distinct
    terms). The stepped statistics of the terms of their own go to ``workspace[4]`` by bin and
    cell, the cells used listed in ``workspace[5]``; a partial sum in the same bin as the last one
    (the partial sums of one order are monotone) adds to a running register instead. Those
    updates are written out in the loop, not called: a numba call that takes arrays counts their
    references on every call, and as helpers they cost the kernel a quarter of its time (the
    model's whole cost at vocabulary scale is now ~10 %). The marking is :func:`_mark`'s pass,
    or the caller's: ``marked`` >= 0 says the filter is marked already and how many candidates it
    found (``_index_rows`` marks in its summing loop, which waits on its additions anyway). The forward partial sums are summed again in the caller's order
    (the same additions, so the same values; an array of them cost a write and a read of the row).
    ``out``: a row that gets ``scaled * factor`` on the way (the reference's gradient row; a pass
    over the terms saved). Returns the
    root, the distinct terms and the root's bias part, ``lost_weight`` times the most the lost
    terms weigh at any scale in either order (at most the root)."""
    table, filters = workspace[0], workspace[1]
    slots, statistics, touched, steps = workspace[2], workspace[4], workspace[5], workspace[7]
    mantissa_bins = workspace[6][0]
    size = statistics.shape[0] // 2  # one order's statistics: bins, cells' squares, cells' terms
    width = scaled.shape[0]
    half = filters.shape[0] // 2  # words of each filter: seen once, seen again
    filter_shift = np.uint64(64 - _log2(half * 64))
    candidates = _mark(bits, filters) if marked < 0 else marked
    words = table.view(np.int64)
    region = 2
    while region < 2 * candidates:
        region *= 2
    mask = min(region, table.shape[0] // 6) - 1
    cleared = workspace[6][1]  # the table is zeroed as far as a row has needed it
    if mask + 1 > cleared:
        table[6 * cleared:6 * (mask + 1)] = 0.0
        workspace[6][1] = mask + 1
    lost_forward = lost_backward = sum_forward = sum_backward = 0.0
    distinct = grouped = 0
    grouped_lost_f = grouped_lost_b = 0.0
    inverse_u = 1.0 / u  # u is a power of two: t * inverse_u is t / u exactly
    forward = 0.0
    # per order: the current bin's bounds, index and running sum of squares, the terms always lost,
    # and how many cells it touched
    low_f = high_f = low_b = high_b = run_f = run_b = always_f = always_b = 0.0
    bin_f = bin_b = 0
    touched_f = touched_b = 0
    cells = (size - mantissa_bins) // 2  # one order's (bin, band) cells
    bands = cells // mantissa_bins
    for k in range(width):
        t = scaled[k]
        if out is not None:  # pruned at compile time where no row is given
            out[k] = t * factor
        forward += t
        f = forward
        b = total - f + t
        term = t * inverse_u
        key = bits[k]
        bucket = (np.uint64(key) * _GOLDEN) >> filter_shift
        alone = not filters[half + (bucket >> np.uint64(6))] & (np.uint64(1) << (bucket & np.uint64(63)))
        if alone and not linear:  # a term of its own: the stepped model; the common cases inline
            distinct += 1
            if term >= f and f < high_f:  # kept, in the current bin (forward partial sums never fall)
                run_f += f * f
            elif term < 0.5 * f:  # lost at every scale
                always_f += term
            elif f > 0.0:  # a new bin, or a term lost at some scales only (numba calls with arrays cost)
                if not (low_f <= f < high_f):
                    if run_f > 0.0:
                        if statistics[bin_f] == 0.0:
                            touched[touched_f] = bin_f
                            touched_f += 1
                        statistics[bin_f] += run_f
                    run_f = 0.0
                    low_f, high_f, bin_f = _bin_bounds(f, mantissa_bins)
                if term >= f:
                    run_f += f * f
                else:
                    index = mantissa_bins + bin_f * bands + min(int((term / f - 0.5) * (2 * bands)), bands - 1)
                    if statistics[index] == 0.0 and statistics[index + cells] == 0.0:
                        touched[touched_f] = index
                        touched_f += 1
                    statistics[index] += f * f
                    statistics[index + cells] += term
            if term >= b and low_b <= b < high_b:
                run_b += b * b
            elif term < 0.5 * b:
                always_b += term
            elif b > 0.0:
                if not (low_b <= b < high_b):
                    if run_b > 0.0:
                        if statistics[size + bin_b] == 0.0:
                            touched[size + touched_b] = size + bin_b
                            touched_b += 1
                        statistics[size + bin_b] += run_b
                    run_b = 0.0
                    low_b, high_b, bin_b = _bin_bounds(b, mantissa_bins)
                if term >= b:
                    run_b += b * b
                else:
                    index = size + mantissa_bins + bin_b * bands + min(int((term / b - 0.5) * (2 * bands)), bands - 1)
                    if statistics[index] == 0.0 and statistics[index + cells] == 0.0:
                        touched[size + touched_b] = index
                        touched_b += 1
                    statistics[index] += b * b
                    statistics[index + cells] += term
            continue
        # the continuous model: a term below u * partial sum lost whole
        kept_f = 0.0 if term < f else f
        kept_b = 0.0 if term < b else b
        lost_f = term if term < f else 0.0
        lost_b = term if term < b else 0.0
        if linear:
            lost_forward += lost_f
            lost_backward += lost_b
            sum_forward += kept_f
            sum_backward += kept_b
            if alone:
                distinct += 1
                continue
        slot = np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(32)) & mask
        while True:
            at = 6 * slot
            if words[at + 1] != stamp:  # a new key: its term and raw partial sums, in case it stays alone
                words[at] = key
                words[at + 1] = stamp
                words[at + 2] = 1
                table[at + 3] = term
                table[at + 4] = f
                table[at + 5] = b
                slots[grouped] = at
                grouped += 1
                break
            if words[at] == key:
                if words[at + 2] == 1:  # a group after all: its first term under the continuous model
                    first = table[at + 3]
                    grouped_lost_f += first if first < table[at + 4] else 0.0
                    grouped_lost_b += first if first < table[at + 5] else 0.0
                    table[at + 4] = 0.0 if first < table[at + 4] else table[at + 4]
                    table[at + 5] = 0.0 if first < table[at + 5] else table[at + 5]
                words[at + 2] += 1
                table[at + 4] += kept_f
                table[at + 5] += kept_b
                grouped_lost_f += lost_f
                grouped_lost_b += lost_b
                break
            slot = (slot + 1) & mask
    filters[:] = 0
    if linear:
        lost = lost_weight * max(lost_forward, lost_backward)
        return max(sum_forward, sum_backward) + lost, distinct + grouped, lost
    var_f = var_b = 0.0
    shift = 52 - _log2(mantissa_bins)  # the significand's top bits
    for i in range(grouped):
        at = slots[i]
        if words[at + 2] == 1:  # a term of its own after all (its bucket was shared)
            term = table[at + 3]
            for direction in range(2):
                s = table[at + 4 + direction]
                if s <= 0.0:
                    continue
                if term < 0.5 * s:
                    if direction == 0:
                        always_f += term
                    else:
                        always_b += term
                    continue
                s_bits = words[at + 4 + direction]
                if (s_bits >> 52) & 0x7FF:
                    bin_ = np.int64((s_bits >> shift) & (mantissa_bins - 1))
                else:  # subnormal: the significand's bits are not its top bits
                    significand, _ = math.frexp(s)
                    bin_ = int((2.0 * significand - 1.0) * mantissa_bins)
                offset = direction * size
                if term >= s:
                    if s * s == 0.0:  # adds nothing (and must not list its bin again)
                        continue
                    index = offset + bin_
                    second = -1
                else:  # term >= s / 2 > 0: the cell's term sum is positive once listed
                    band = min(int((term / s - 0.5) * (2 * bands)), bands - 1)
                    index = offset + mantissa_bins + bin_ * bands + band
                    second = index + cells
                if statistics[index] == 0.0 and (second < 0 or statistics[second] == 0.0):
                    if direction == 0:
                        touched[touched_f] = index
                        touched_f += 1
                    else:
                        touched[offset + touched_b] = index
                        touched_b += 1
                statistics[index] += s * s
                if second >= 0:
                    statistics[second] += term
        else:
            var_f += table[at + 4] * table[at + 4]
            var_b += table[at + 5] * table[at + 5]
    touched_f = _flush(run_f, bin_f, statistics, 0, touched, touched_f)
    touched_b = _flush(run_b, bin_b, statistics, size, touched, touched_b)
    root_f, lost_f = _stepped_order(statistics, 0, touched, touched_f, steps, mantissa_bins, var_f,
                                    grouped_lost_f + always_f, lost_weight, workspace[8])
    root_b, lost_b = _stepped_order(statistics, size, touched, touched_b, steps, mantissa_bins, var_b,
                                    grouped_lost_b + always_b, lost_weight, workspace[8])
    return max(root_f, root_b), distinct + grouped, max(lost_f, lost_b)


@njit(cache=True, nogil=True)
def _bin_bounds(s, mantissa_bins):
    """The bounds ``[low, high)`` and index of the significand bin of a positive ``s``."""
    significand, exponent = math.frexp(s)
    bin_ = int((2.0 * significand - 1.0) * mantissa_bins)
    base = math.ldexp(1.0, exponent - 1)
    return base * (1.0 + bin_ / mantissa_bins), base * (1.0 + (bin_ + 1) / mantissa_bins), bin_


@njit(cache=True, nogil=True, inline="always")
def _flush(run, bin_, statistics, offset, touched, n_touched):
    """Add a running sum of squares to its bin's statistic."""
    if run > 0.0:
        index = offset + bin_
        if statistics[index] == 0.0:
            touched[offset + n_touched] = index
            n_touched += 1
        statistics[index] += run
    return n_touched


@njit(cache=True, nogil=True)
def _stepped_order(statistics, offset, touched, n_touched, steps, mantissa_bins, variance, lost, lost_weight,
                   scratch):
    """``summation._stepped_root`` of one order: the largest ``sqrt(V_j) + lost_weight * L_j`` over
    the scale steps ``j`` (the columns of ``steps``, ``summation.step_table``) and the largest
    ``lost_weight * L_j``; clears the statistics it read. ``scratch``: two rows of one float64 per
    step."""
    cells = (statistics.shape[0] // 2 - mantissa_bins) // 2
    n_steps = steps.shape[1]
    variances, losts = scratch[0], scratch[1]
    variances[:] = variance
    losts[:] = lost
    for n in range(n_touched):
        index = touched[offset + n]
        column = index - offset
        value = statistics[index]
        for j in range(n_steps):
            variances[j] += value * steps[column, j]
        statistics[index] = 0.0
        if column >= mantissa_bins:
            value = statistics[index + cells]
            for j in range(n_steps):
                losts[j] += value * steps[column + cells, j]
            statistics[index + cells] = 0.0
    best = most_lost = 0.0
    for j in range(n_steps):
        best = max(best, np.sqrt(variances[j]) + lost_weight * losts[j])
        most_lost = max(most_lost, lost_weight * losts[j])
    return best, most_lost


@njit(cache=True, nogil=True)
def _mark(bits, filters):
    """The grouping's first pass over ``bits``: set each key's bit in the first
    half of ``filters`` (seen once), or in the second (seen again) where it is set already.
    Returns how many terms joined a bucket seen again (two for the bucket's second term: the
    first one joins with it)."""
    half = filters.shape[0] // 2
    filter_shift = np.uint64(64 - _log2(half * 64))
    joined = 0
    for k in range(bits.shape[0]):
        joined += _mark_one(bits[k], filters, half, filter_shift)
    return joined


@njit(cache=True, nogil=True, inline="always")
def _mark_one(key, filters, half, filter_shift):
    """:func:`_mark` of one key: how many terms it adds to the candidates (0, or 2 for a bucket's
    second term, 1 for a later one). Inlined in numba's IR, where its callers' loops need it."""
    bucket = (np.uint64(key) * _GOLDEN) >> filter_shift
    word, bit = bucket >> np.uint64(6), np.uint64(1) << (bucket & np.uint64(63))
    if filters[word] & bit:
        joined = 1 if filters[half + word] & bit else 2
        filters[half + word] |= bit
        return joined
    filters[word] |= bit
    return 0


@njit(cache=True, nogil=True)
def _log2(power):
    exponent = 0
    while (1 << exponent) < power:
        exponent += 1
    return exponent


@njit(cache=True, nogil=True)
def _workspace(width, steps, mantissa_bins):
    """One worker's buffers for :func:`_row_root` on rows of ``width`` terms: the hash table
    (at most half full; zeroed by :func:`_scaled_root` as far as a row's region reaches: zeroing
    all of it, 12 MB per worker at vocabulary scale, cost a tenth of the reference's time on
    blocks of 16 rows), two bit filters of at least 16 bits per term (zeroed, as uint64
    words), the slots used, the scaled terms, both orders' stepped statistics (zeroed) and the
    cells they touched, ``mantissa_bins`` with the table's zeroed slots, the ``steps`` table
    (``summation.step_table``) and scratch for :func:`_stepped_order`."""
    size = 2
    while size < 2 * width:
        size *= 2
    words = 1
    while words * 64 < 16 * width:
        words *= 2
    columns = steps.shape[0]
    sizes = np.zeros(2, dtype=np.int64)
    sizes[0] = mantissa_bins
    return (np.empty(6 * size), np.zeros(2 * words, dtype=np.uint64), np.empty(width, dtype=np.int64),
            np.empty(width), np.zeros(2 * columns), np.empty(2 * columns, dtype=np.int64),
            sizes, steps, np.empty((2, steps.shape[1])))


def _summation_roots(values, keys, u, lost_weight, linear, steps, mantissa_bins, threads):
    """``summation_root`` of each row of a C-contiguous float64 (rows, width) array, with the
    number of distinct terms (or ``keys``, a C-contiguous array of the same shape, or of no
    rows: group by value) and the root's bias part per row; rows are split into ``threads``
    contiguous runs."""
    rows, width = values.shape
    roots = np.zeros(rows)
    losts = np.zeros(rows)
    distinct = np.zeros(rows, dtype=np.int64)
    workers = max(1, min(rows, threads))
    per = (rows + workers - 1) // workers
    no_keys = np.empty(0)
    for worker in prange(workers):
        workspace = _workspace(width, steps, mantissa_bins)
        for r in range(worker * per, min(rows, (worker + 1) * per)):
            row_keys = keys[r] if keys.shape[0] else no_keys
            roots[r], distinct[r], losts[r] = _row_root(values[r], row_keys, u, lost_weight, linear[r], r + 1,
                                                        workspace)
    return roots, distinct, losts


@njit(cache=True, nogil=True)
def _binade_bias(x, cumulative, reach, mantissa_bits, min_exponent, lanes_max, noise_sigmas):
    """``summation._binade_bias`` of one row's sorted positive terms."""
    top = math.floor(math.log2(reach))
    bottom = max(math.floor(math.log2(x[0])), top - 200)
    count = top - bottom + 1
    means = np.zeros(count)
    capacities = np.zeros(count)
    for slot in range(count):
        e = bottom + slot
        low = math.ldexp(1.0, e)
        step = math.ldexp(1.0, max(e - mantissa_bits, min_exponent))
        staying = np.searchsorted(x, low)
        if staying == 0:
            continue
        lost = np.searchsorted(x, step / 2)
        error = 0.0
        squares = 0.0
        for i in range(staying):  # in ulps: the squares stay finite near the dtype's top
            units = x[i] / step
            term_error = -units if i < lost else np.rint(units) - units
            error += term_error
            squares += term_error * term_error
        mean = error / staying
        noise = noise_sigmas * math.sqrt(max(squares / staying - mean * mean, 1 / 12) / staying)
        lanes = min(float(lanes_max), np.floor(reach / low))  # a float: reach / low may pass 2**63
        width = (min(reach, 2 * low) - low) * lanes
        means[slot] = max(abs(mean) - noise, 0.0) * step
        capacities[slot] = np.searchsorted(cumulative, width, side="right") + lanes
    bias = 0.0
    left = float(x.shape[0])
    for slot in np.argsort(-means, kind="mergesort"):
        taken = min(capacities[slot], left)
        bias += taken * means[slot]
        left -= taken
        if left <= 0:
            break
    return bias


def _order_biases(values, mantissa_bits, min_exponent, largest, lanes_max, noise_sigmas, threads):
    """``summation.order_bias`` of each row of a C-contiguous float64 (rows, width) array, in a
    dtype of ``mantissa_bits`` whose smallest step is ``2**min_exponent`` and largest value ``largest``."""
    rows = values.shape[0]
    bias = np.zeros(rows)
    workers = max(1, min(rows, threads))
    per = (rows + workers - 1) // workers
    for worker in prange(workers):
        for r in range(worker * per, min(rows, (worker + 1) * per)):
            row = values[r]
            keep = np.isfinite(row) & (row > 0)
            x = np.sort(row[keep])
            if x.shape[0] < 2:
                continue
            cumulative = np.cumsum(x)
            reach = cumulative[-1]
            if not reach <= largest:  # a sum that overflows has no budget to bias
                continue
            for _ in range(2):
                bias[r] = _binade_bias(x, cumulative, reach, mantissa_bits, min_exponent, lanes_max, noise_sigmas)
                beyond = cumulative[-1] + bias[r]
                if not np.isfinite(beyond) or math.floor(math.log2(beyond)) == math.floor(math.log2(reach)):
                    break
                reach = beyond
    return bias


_LOG2E = 1.4426950408889634
_LN2_HIGH = 6.93147180369123816490e-01  # ln 2 in 32 bits (fdlibm's split): k * _LN2_HIGH is exact
_LN2_LOW = 1.90821492927058770002e-10
_ROUNDER = 6755399441055744.0  # 1.5 * 2**52: adding and subtracting it rounds to an integer
_ROUNDER_BITS = np.int64(0x4338000000000000)
_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(14))


@njit(cache=True, nogil=True)
def _row_max(x):
    """The largest of a row and whether it holds a NaN (then the largest is meaningless). Eight
    running maxima: one ``max`` chain waits on each comparison (1 ns per element), and LLVM does
    not vectorise a float maximum that must see NaN; NumPy's SIMD ``max`` is as fast but runs
    in one thread."""
    n = x.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = -np.inf
    nan = False
    j = 0
    while j + 8 <= n:
        v0, v1, v2, v3 = np.float64(x[j]), np.float64(x[j + 1]), np.float64(x[j + 2]), np.float64(x[j + 3])
        v4, v5, v6, v7 = np.float64(x[j + 4]), np.float64(x[j + 5]), np.float64(x[j + 6]), np.float64(x[j + 7])
        a0, a1, a2, a3 = max(a0, v0), max(a1, v1), max(a2, v2), max(a3, v3)
        a4, a5, a6, a7 = max(a4, v4), max(a5, v5), max(a6, v6), max(a7, v7)
        nan |= (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3) | (v4 != v4) | (v5 != v5) | (v6 != v6) | (v7 != v7)
        j += 8
    while j < n:
        v = np.float64(x[j])
        a0 = max(a0, v)
        nan |= v != v
        j += 1
    return max(max(max(a0, a1), max(a2, a3)), max(max(a4, a5), max(a6, a7))), nan


@njit(cache=True, nogil=True)
def _exp_row(x, high, out):
    """``out[k] = exp(x[k] - high)`` for a row ``x``, in float64 and vectorised (libm's exp
    is a call per element: most of the reference's time at vocabulary scale). ``x - high = k ln 2
    + r`` with ``|r| <= ln 2 / 2``, ``exp(r)`` by its Taylor polynomial of degree 13 (truncation
    below 1e-17) in Estrin's scheme, and ``2^k`` as two factors built from their exponent bits,
    so results down to the subnormal range round once. At most 2 float64 ulps from the correctly
    rounded value (``tests/test_engine.py``); ``x - high <= 0`` (the row's maximum subtracted),
    ``-inf`` gives 0. One loop over the whole row with the bits cast in registers
    (:mod:`._bitcast`): through scratch arrays it took three loops, and called on blocks of the
    row the same loop took 1.8 times as long."""
    c2, c3, c4, c5, c6, c7 = _TAYLOR[2], _TAYLOR[3], _TAYLOR[4], _TAYLOR[5], _TAYLOR[6], _TAYLOR[7]
    c8, c9, c10, c11, c12, c13 = _TAYLOR[8], _TAYLOR[9], _TAYLOR[10], _TAYLOR[11], _TAYLOR[12], _TAYLOR[13]
    for j in range(x.shape[0]):
        t = max(np.float64(x[j]) - high, -1400.0)  # exp(-1400) is 0: keeps 2^k's halves normal
        rounded = t * _LOG2E + _ROUNDER  # k in the low bits of its significand
        k = rounded - _ROUNDER
        r = (t - k * _LN2_HIGH) - k * _LN2_LOW
        r2 = r * r
        r4 = r2 * r2
        low = (1.0 + r) + (c2 + c3 * r) * r2 + ((c4 + c5 * r) + (c6 + c7 * r) * r2) * r4
        high_part = (c8 + c9 * r) + (c10 + c11 * r) * r2 + (c12 + c13 * r) * r4
        power = float_bits(rounded) - _ROUNDER_BITS  # k as an integer
        half = power >> 1  # floor(k / 2)
        first = bits_float((half + 1023) << 52)  # 2^floor(k/2) and 2^ceil(k/2): both normal
        second = bits_float((power - half + 1023) << 52)
        out[j] = (low + high_part * (r4 * r4)) * first * second


def _index_rows(rows, target, weight, scale, u, lost_weight, grad, steps, mantissa_bins, threads):
    """The reference's index-target rows without label smoothing: the log-sum-exp (``log1p`` of
    the sum without the maximal term, compensated), the NLL, the probability of the target, the
    summation model of the exp sum (``summation_root``, its bias part, and root sum of squares of p), the
    largest p |log p|, the row's maximum and, where ``grad`` has rows, the gradient row
    ``p * w_y * scale`` with ``w_y * expm1(log p_y) * scale`` at the target.

    Two passes over a row's C logits and two over the exp terms: the maximum (:func:`_row_max`),
    the terms ``e = exp(x - max)`` (:func:`_exp_row`) with their compensated sum, their plain
    sum, their sum of squares and the marking of the grouping's bit filter (``_mark``'s pass,
    done here where the loop waits on its sums' additions anyway: a quarter less time than a pass
    of its own), then :func:`_scaled_root` on the terms themselves (their maximum is 1:
    they are ``p / max p``; its marking pass and its summing pass), writing the gradient row on
    the way. ``p |log p| = e (max - x + lse)
    / S`` is largest at the maximal term where ``lse >= 1`` (it decreases in ``max - x`` there),
    so only rows with ``lse < 1`` scan for it. ``finite`` is False for a row whose maximum is not
    finite (NaN or +-inf): the caller takes the NumPy path for such chunks."""
    m, width = rows.shape
    lse = np.zeros(m)
    nll = np.zeros(m)
    p_target = np.zeros(m)
    root = np.zeros(m)
    root_lost = np.zeros(m)
    rss = np.zeros(m)
    distinct = np.zeros(m, dtype=np.int64)
    p_logp = np.zeros(m)
    tops = np.zeros(m)
    finite = np.ones(m, dtype=np.bool_)
    want_grad = grad.shape[0] == m and m > 0
    workers = max(1, min(m, threads))
    per = (m + workers - 1) // workers
    for worker in prange(workers):
        workspace = _workspace(width, steps, mantissa_bins)
        e = workspace[3]
        e_bits = e.view(np.int64)
        filters = workspace[1]
        half = filters.shape[0] // 2
        filter_shift = np.uint64(64 - _log2(half * 64))
        for r in range(worker * per, min(m, (worker + 1) * per)):
            x = rows[r]  # float32 (holding float32 or half values exactly) or float64
            high, has_nan = _row_max(x)
            if has_nan or not np.isfinite(high):
                finite[r] = False
                continue
            top = 0
            while np.float64(x[top]) != high:
                top += 1
            tops[r] = high
            total = 0.0  # Neumaier-compensated sum of the terms without the maximal one
            compensation = 0.0
            running = 0.0  # plain sum of every term, for the partial-sum model
            squares = 0.0
            marked = 0
            _exp_row(x, high, e)
            for k in range(width):
                term = e[k]
                marked += _mark_one(e_bits[k], filters, half, filter_shift)
                running += term
                squares += term * term
                if k == top:
                    continue
                t = total + term
                if abs(total) >= abs(term):
                    compensation += (total - t) + term
                else:
                    compensation += (term - t) + total
                total = t
            rest = total + compensation
            lse_r = np.log1p(rest)
            lse[r] = lse_r
            denominator = rest + 1.0
            rss[r] = np.sqrt(squares) / denominator
            if lse_r >= 1.0:
                p_logp[r] = lse_r / denominator
            else:
                largest = 0.0
                for k in range(width):
                    weighted = e[k] / denominator * abs(np.float64(x[k]) - high - lse_r)
                    if weighted > largest:  # a -inf logit gives 0 * inf = NaN, which never wins
                        largest = weighted
                p_logp[r] = largest
            y = target[r]
            shifted_y = np.float64(x[y]) - high
            nll[r] = lse_r - shifted_y
            p_target[r] = e[y] / denominator
            if want_grad:  # the row, written by _scaled_root's pass, then its target element
                root_r, distinct[r], lost_r = _scaled_root(e, e_bits, running, u, lost_weight, False, r + 1,
                                                           workspace, grad[r], weight[r] * scale[r] / denominator, marked)
                grad[r, y] = weight[r] * np.expm1(shifted_y - lse_r) * scale[r]
            else:
                root_r, distinct[r], lost_r = _scaled_root(e, e_bits, running, u, lost_weight, False, r + 1,
                                                           workspace, None, 0.0, marked)
            root[r] = root_r / denominator
            root_lost[r] = lost_r / denominator
    return lse, nll, p_target, root, root_lost, rss, distinct, p_logp, tops, finite
