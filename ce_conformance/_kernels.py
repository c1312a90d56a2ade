"""numba kernels of the error model (imported lazily by :mod:`ce_conformance.summation`).

Each kernel mirrors a vectorised NumPy function that is its specification; the tests check
that the two agree. Compiled code is cached on disk (``cache=True``), so only the first use in
a fresh environment pays the compilation. Every public kernel comes twice, from one Python
function: ``NAME`` spreads its outer loop (``prange``) over threads, ``NAME_serial`` runs it in
the calling thread, which small inputs want (waking threads costs more than they save).
"""

from __future__ import annotations

import math
import types

import numpy as np
from numba import njit, prange

_GOLDEN: np.uint64 = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing of the terms' bit patterns


@njit(cache=True, nogil=True)
def _row_root(values, keys, u, lost_weight, linear, stamp, workspace):
    """One row of ``summation_root``: the terms scaled by the row max, their forward partial
    sums, then :func:`_scaled_root`. ``workspace`` is the calling worker's :func:`_workspace`."""
    scaled, forward = workspace[3], workspace[4]
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
        forward[k] = total
    bits = scaled.view(np.int64) if keys.shape[0] == 0 else keys.view(np.int64)
    root, distinct = _scaled_root(scaled, bits, forward, total, u, lost_weight, linear, stamp, workspace)
    return root * top, distinct


@njit(cache=True, nogil=True)
def _scaled_root(scaled, bits, forward, total, u, lost_weight, linear, stamp, workspace, marked=False):
    """``summation_root`` of one row of finite, non-negative ``scaled`` terms (their maximum 1,
    or all 0), given their forward partial sums and ``total``: sequential partial sums in both
    orders, terms lost below u * partial sum, equal terms (equal ``bits``: their own bit patterns,
    or keys) grouped.

    Grouping: a first pass marks, in a bit filter small enough for the L2 cache (16 bits per
    term), the hash buckets hit more than once; a term alone in its bucket is a group of its
    own. Only the others (a few percent, true repeats and bucket collisions) go through an
    exact open-addressing table, whose slot is four words (key bits, stamp, forward sum,
    backward sum) and whose stamp marks the slots this row uses, so it is never cleared.
    ``marked``: the caller has run :func:`_mark` over the row already."""
    table, filters = workspace[0], workspace[1]
    slots = workspace[2]
    width = scaled.shape[0]
    half = filters.shape[0] // 2  # words of each filter: seen once, seen again
    filter_shift = np.uint64(64 - _log2(half * 64))
    if not marked:
        _mark(bits, 0, width, filters)
    words = table.view(np.int64)
    mask = table.shape[0] // 4 - 1
    lost_forward = lost_backward = sum_forward = sum_backward = 0.0
    var_forward = var_backward = 0.0
    distinct = grouped = 0
    inverse_u = 1.0 / u  # u is a power of two: t * inverse_u is t / u exactly
    for k in range(width):
        t = scaled[k]
        f = forward[k]
        b = total - f + t
        lost = t * inverse_u
        if lost < f:
            lost_forward += lost
            f = 0.0
        if lost < b:
            lost_backward += lost
            b = 0.0
        sum_forward += f
        sum_backward += b
        key = bits[k]
        bucket = (np.uint64(key) * _GOLDEN) >> filter_shift
        if not filters[half + (bucket >> np.uint64(6))] & (np.uint64(1) << (bucket & np.uint64(63))):
            var_forward += f * f  # alone in its bucket: a group of one
            var_backward += b * b
            distinct += 1
            continue
        slot = np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(32)) & mask
        while True:
            at = 4 * slot
            if words[at + 1] != stamp:
                words[at] = key
                words[at + 1] = stamp
                table[at + 2] = f
                table[at + 3] = b
                slots[grouped] = at
                grouped += 1
                break
            if words[at] == key:
                table[at + 2] += f
                table[at + 3] += b
                break
            slot = (slot + 1) & mask
    filters[:] = 0
    if linear:
        root = max(sum_forward, sum_backward)
    else:
        for i in range(grouped):
            at = slots[i]
            var_forward += table[at + 2] * table[at + 2]
            var_backward += table[at + 3] * table[at + 3]
        root = np.sqrt(max(var_forward, var_backward))
    return root + lost_weight * max(lost_forward, lost_backward), distinct + grouped


@njit(cache=True, nogil=True)
def _mark(bits, start, stop, filters):
    """The grouping's first pass over ``bits[start:stop]``: set each key's bit in the first
    half of ``filters`` (seen once), or in the second (seen again) where it is set already."""
    half = filters.shape[0] // 2
    filter_shift = np.uint64(64 - _log2(half * 64))
    for k in range(start, stop):
        bucket = (np.uint64(bits[k]) * _GOLDEN) >> filter_shift
        word, bit = bucket >> np.uint64(6), np.uint64(1) << (bucket & np.uint64(63))
        if filters[word] & bit:
            filters[half + word] |= bit
        else:
            filters[word] |= bit


@njit(cache=True, nogil=True)
def _log2(power):
    exponent = 0
    while (1 << exponent) < power:
        exponent += 1
    return exponent


@njit(cache=True, nogil=True)
def _workspace(width):
    """One worker's buffers for :func:`_row_root` on rows of ``width`` terms: the hash table
    (at most half full, zeroed), two bit filters of at least 16 bits per term (zeroed, as uint64
    words), the slots used, and the scaled terms with their forward partial sums."""
    size = 2
    while size < 2 * width:
        size *= 2
    words = 1
    while words * 64 < 16 * width:
        words *= 2
    return (np.zeros(4 * size), np.zeros(2 * words, dtype=np.uint64), np.empty(width, dtype=np.int64),
            np.empty(width), np.empty(width))


def _summation_roots(values, keys, u, lost_weight, linear, threads):
    """``summation_root`` of each row of a C-contiguous float64 (rows, width) array, with the
    number of distinct terms (or ``keys``, a C-contiguous array of the same shape, or of no
    rows: group by value) per row; rows are split into ``threads`` contiguous runs."""
    rows, width = values.shape
    roots = np.zeros(rows)
    distinct = np.zeros(rows, dtype=np.int64)
    workers = max(1, min(rows, threads))
    per = (rows + workers - 1) // workers
    no_keys = np.empty(0)
    for worker in prange(workers):
        workspace = _workspace(width)
        for r in range(worker * per, min(rows, (worker + 1) * per)):
            row_keys = keys[r] if keys.shape[0] else no_keys
            roots[r], distinct[r] = _row_root(values[r], row_keys, u, lost_weight, linear[r], r + 1, workspace)
    return roots, distinct


@njit(cache=True, nogil=True)
def _binade(bits):
    """floor(log2|x|) from float64 bits (-1023 for zero and float64 subnormals, 1024 for inf/NaN)."""
    return ((bits >> 52) & 0x7FF) - 1023


def _error_summary(actual, expected, magnitude, sigma, native, use_native, top, floor, spacings, min_exponent,
                  base, sigmas, scale, margin, threads):
    """``compare._value_check``'s figures over (outer, classes, inner) arrays, in one pass: worst
    ulp error, worst error-to-allowed ratio with its flat index and the ulps and budget there,
    worst absolute error. ``ok`` is False (and the figures unset) when any element is not
    finite: the NaN/inf rules are the NumPy path's. The unit is ``tolerance.ulp_units``: the
    dtype's spacing (``spacings[exponent - min_exponent]``) at min(max(|expected|, magnitude),
    top), at least ``floor``, an exact zero counting as 0.5's binade, as ``dtypes.ulp`` does;
    the binade is read from the float64 bits, since max and min preserve it."""
    expected_bits = expected.view(np.int64)
    magnitude_bits = magnitude.view(np.int64)
    top_binade = math.frexp(top)[1] - 1
    outer, classes, inner = expected.shape
    workers = max(1, min(outer, threads))
    per = (outer + workers - 1) // workers
    best_ratio = np.full(workers, -1.0)
    best_index = np.zeros(workers, dtype=np.int64)
    best_ulps = np.zeros(workers)
    best_budget = np.zeros(workers)
    worst_ulps = np.zeros(workers)
    worst_error = np.zeros(workers)
    finite = np.ones(workers, dtype=np.bool_)
    for worker in prange(workers):
        # per-worker figures live in locals: writing the shared arrays per element would make the
        # threads fight over one cache line
        ratio_best, index_best, ulps_best, budget_best = -1.0, 0, 0.0, 0.0
        ulps_worst = error_worst = 0.0
        all_finite = True
        for o in range(worker * per, min(outer, (worker + 1) * per)):
            for c in range(classes):
                for i in range(inner):
                    a = actual[o, c, i]
                    e = expected[o, c, i]
                    m = magnitude[o, c, i]
                    s = sigma[o, c, i]
                    n = native[o, c, i] if use_native else 0.0
                    if not (np.isfinite(a) and np.isfinite(e) and np.isfinite(m) and np.isfinite(s)
                            and np.isfinite(n)):
                        all_finite = False
                        continue
                    unit = _unit(e, expected_bits[o, c, i], m, _binade(magnitude_bits[o, c, i]), top_binade,
                                 spacings, min_exponent, floor)
                    error = abs(a - e)
                    allowed = scale * (base * unit + sigmas * s)
                    if use_native:
                        allowed = max(allowed, abs(n - e) + margin * unit)
                    ratio = error / allowed
                    ulps = error / unit
                    if ratio > ratio_best:
                        ratio_best = ratio
                        index_best = (o * classes + c) * inner + i
                        ulps_best = ulps
                        budget_best = allowed / unit
                    ulps_worst = max(ulps_worst, ulps)
                    error_worst = max(error_worst, error)
        best_ratio[worker] = ratio_best
        best_index[worker] = index_best
        best_ulps[worker] = ulps_best
        best_budget[worker] = budget_best
        worst_ulps[worker] = ulps_worst
        worst_error[worker] = error_worst
        finite[worker] = all_finite
    ok = True
    for worker in range(workers):
        ok = ok and finite[worker]
    pick = 0
    for worker in range(1, workers):  # the first worst element, as np.argmax finds it
        if best_ratio[worker] > best_ratio[pick]:
            pick = worker
    return (ok, max(worst_ulps.max(), 0.0), max(best_ratio[pick], 0.0), best_index[pick], best_ulps[pick],
            best_budget[pick], worst_error.max())


_LOG2E = 1.4426950408889634
_LN2_HIGH = 6.93147180369123816490e-01  # ln 2 in 32 bits (fdlibm's split): k * _LN2_HIGH is exact
_LN2_LOW = 1.90821492927058770002e-10
_ROUNDER = 6755399441055744.0  # 1.5 * 2**52: adding and subtracting it rounds to an integer
_ROUNDER_BITS = np.int64(0x4338000000000000)
_EXPONENT_BIAS = 1023.0 + _ROUNDER
_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(14))
_EXP_BLOCK = 512


@njit(cache=True, nogil=True)
def _exp_block(x, start, stop, high, out, first, second):
    """``out[k] = exp(x[k] - high)`` for k in [start, stop), at most ``_EXP_BLOCK`` of them, in
    float64 and vectorised (libm's exp is a call per element: most of the reference's time at
    vocabulary scale). ``x - high = k ln 2 + r`` with ``|r| <= ln 2 / 2``, ``exp(r)`` by its Taylor
    polynomial of degree 13 (truncation below 1e-17) in Estrin's scheme, and ``2^k`` as two
    factors built from their exponent bits, so results down to the subnormal range round once.
    At most 2 float64 ulps from the correctly rounded value (``tests/test_engine.py``);
    ``x - high <= 0`` (the row's maximum subtracted), ``-inf`` gives 0. ``first`` and
    ``second`` are scratch of ``_EXP_BLOCK`` float64s."""
    first_bits = first.view(np.int64)
    second_bits = second.view(np.int64)
    n = stop - start
    c2, c3, c4, c5, c6, c7 = _TAYLOR[2], _TAYLOR[3], _TAYLOR[4], _TAYLOR[5], _TAYLOR[6], _TAYLOR[7]
    c8, c9, c10, c11, c12, c13 = _TAYLOR[8], _TAYLOR[9], _TAYLOR[10], _TAYLOR[11], _TAYLOR[12], _TAYLOR[13]
    for j in range(n):
        t = max(np.float64(x[start + j]) - high, -1400.0)  # exp(-1400) is 0: keeps 2^k's halves normal
        k = (t * _LOG2E + _ROUNDER) - _ROUNDER
        r = (t - k * _LN2_HIGH) - k * _LN2_LOW
        r2 = r * r
        r4 = r2 * r2
        low = (1.0 + r) + (c2 + c3 * r) * r2 + ((c4 + c5 * r) + (c6 + c7 * r) * r2) * r4
        high_part = (c8 + c9 * r) + (c10 + c11 * r) * r2 + (c12 + c13 * r) * r4
        out[start + j] = low + high_part * (r4 * r4)
        half = (k * 0.5 + _ROUNDER) - _ROUNDER
        first[j] = half + _EXPONENT_BIAS  # the integer k / 2 + 1023 in the low bits
        second[j] = (k - half) + _EXPONENT_BIAS
    for j in range(n):
        first_bits[j] = (first_bits[j] - _ROUNDER_BITS) << 52  # 2^(k/2) as a float64
        second_bits[j] = (second_bits[j] - _ROUNDER_BITS) << 52
    for j in range(n):
        out[start + j] = out[start + j] * first[j] * second[j]


def _index_rows(rows, target, weight, scale, u, lost_weight, grad, threads):
    """The reference's index-target rows without label smoothing: the log-sum-exp (``log1p`` of
    the sum without the maximal term, compensated), the NLL, the probability of the target, the
    summation model of the exp sum (``summation_root`` and root sum of squares of p), the
    largest p |log p|, the row's maximum and, where ``grad`` has rows, the gradient row
    ``p * w_y * scale`` with ``w_y * expm1(log p_y) * scale`` at the target.

    Three passes over a row's C logits and one over the exp terms: the maximum, the terms
    ``e = exp(x - max)`` (:func:`_exp_block`) with their compensated sum, their forward partial
    sums and their sum of squares, then :func:`_scaled_root` on the terms themselves (their
    maximum is 1: they are ``p / max p``) and the gradient row. ``p |log p| = e (max - x + lse)
    / S`` is largest at the maximal term where ``lse >= 1`` (it decreases in ``max - x`` there),
    so only rows with ``lse < 1`` scan for it. ``finite`` is False for a row whose maximum is not
    finite (NaN or +-inf): the caller takes the NumPy path for such chunks."""
    m, width = rows.shape
    lse = np.zeros(m)
    nll = np.zeros(m)
    p_target = np.zeros(m)
    root = np.zeros(m)
    rss = np.zeros(m)
    distinct = np.zeros(m, dtype=np.int64)
    p_logp = np.zeros(m)
    tops = np.zeros(m)
    finite = np.ones(m, dtype=np.bool_)
    want_grad = grad.shape[0] == m and m > 0
    workers = max(1, min(m, threads))
    per = (m + workers - 1) // workers
    for worker in prange(workers):
        workspace = _workspace(width)
        forward = workspace[4]
        e = workspace[3]
        e_bits = e.view(np.int64)
        filters = workspace[1]
        first = np.empty(_EXP_BLOCK)
        second = np.empty(_EXP_BLOCK)
        for r in range(worker * per, min(m, (worker + 1) * per)):
            x = rows[r]  # float32 (holding float32 or half values exactly) or float64
            high = np.float64(x[0])
            ok = not np.isnan(high)
            for k in range(1, width):
                v = np.float64(x[k])
                ok = ok and not np.isnan(v)
                high = max(high, v)
            if not ok or not np.isfinite(high):
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
            for start in range(0, width, _EXP_BLOCK):
                stop = min(width, start + _EXP_BLOCK)
                _exp_block(x, start, stop, high, e, first, second)
                for k in range(start, stop):
                    term = e[k]
                    running += term
                    forward[k] = running
                    squares += term * term
                    if k == top:
                        continue
                    t = total + term
                    if abs(total) >= abs(term):
                        compensation += (total - t) + term
                    else:
                        compensation += (term - t) + total
                    total = t
                _mark(e_bits, start, stop, filters)  # while the block is in L1
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
            if want_grad:
                out = grad[r]
                factor = weight[r] * scale[r] / denominator
                for k in range(width):
                    out[k] = e[k] * factor
                out[y] = weight[r] * np.expm1(shifted_y - lse_r) * scale[r]
            root_r, distinct[r] = _scaled_root(e, e_bits, forward, running, u, lost_weight, False, r + 1, workspace,
                                               True)
            root[r] = root_r / denominator
    return lse, nll, p_target, root, rss, distinct, p_logp, tops, finite


@njit(cache=True, nogil=True)
def _subtracted(probability, targets, target, target_coefficient, smoothing, eps_c, w, o, c, i):
    """``GradientElements.subtracted`` of one element: ``Q_c`` and the magnitude of its parts."""
    if probability:
        t = targets[o, c, i]
        if smoothing > 0:
            return (t * (1 - smoothing) + eps_c) * w, (abs(t) * (1 - smoothing) + eps_c) * abs(w)
        return t * w, abs(t * w)
    q = eps_c * w if smoothing > 0 else 0.0
    if c == target[o, i]:
        q += target_coefficient[o, i]
    return q, abs(q)


@njit(cache=True, nogil=True)
def _element_bound(e, s, q, parts, denominator, base, total, lost, u, u_half, sigmas, scale_relative,
                   subtracted_relative, row_magnitude, row_sigma):
    """``GradientElements.bounds`` of one element of an element-wise row: (magnitude, sigma)."""
    proportional = abs(e + s * q)
    ratio = proportional / denominator if denominator > 0 else (np.inf if proportional > 0 else np.nan)
    log_p = 0.0
    if not np.isnan(ratio):
        p = min(ratio, 1.0)
        if p > 0:
            log_p = np.log(p)
    relative_sq = (base + (u * u / 3) * ((log_p + total) ** 2 + total * total + log_p * log_p + 1)
                   + (u_half * u_half / 3) * log_p * log_p)
    root = np.sqrt(relative_sq)
    x = sigmas * root
    # expm1(x) / sigmas; its series where x is small (nearly always: expm1 is slow)
    grown = root * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x / 24.0))) if x < 1e-3 else np.expm1(x) / sigmas
    a = proportional * grown
    b = abs(e) * scale_relative
    c = abs(s) * parts * subtracted_relative
    largest = max(a, b, c, lost)
    if 1e-150 < largest < 1e150:  # squares within the float64 range: the plain root
        value = np.sqrt(a * a + b * b + c * c + lost * lost)
    else:  # a probability of 1e-258 would square to 0: the careful way
        value = np.hypot(np.hypot(a, np.hypot(b, c)), lost)
    size = max(proportional, abs(s) * parts)
    if np.isfinite(size) and np.isfinite(value):
        return size, value
    return row_magnitude, row_sigma


def _element_bounds(expected, scale, terms_sum, log_total, relative, absolute, elementwise, row_magnitude,
                    row_sigma, scale_relative, subtracted_relative, u, u_half, sigmas, probability, targets, target,
                    target_coefficient, smoothing, weight, magnitude, sigma, threads):
    """``GradientElements.bounds`` (its NumPy body is the specification) in one pass over an
    (outer, classes, inner) block: each element's magnitude and sigma into ``magnitude`` and
    ``sigma``. ``targets`` holds probability targets (``probability``), else ``target`` and
    ``target_coefficient`` the index targets' class and ``(1 - eps) w_y``."""
    outer, classes, inner = expected.shape
    eps_c = smoothing / classes if classes else 0.0
    workers = max(1, min(outer, threads))
    per = (outer + workers - 1) // workers
    for worker in prange(workers):
        for o in range(worker * per, min(outer, (worker + 1) * per)):
            for i in range(inner):
                if not elementwise[o, i]:
                    for c in range(classes):
                        magnitude[o, c, i] = row_magnitude[o, i]
                        sigma[o, c, i] = row_sigma[o, i]
                    continue
                s = scale[o, i]
                denominator = abs(s * terms_sum[o, i])
                base = relative[o, i] * relative[o, i]
                for c in range(classes):
                    q, parts = _subtracted(probability, targets, target, target_coefficient, smoothing, eps_c,
                                           weight[c], o, c, i)
                    magnitude[o, c, i], sigma[o, c, i] = _element_bound(
                        expected[o, c, i], s, q, parts, denominator, base, log_total[o, i], absolute[o, i], u,
                        u_half, sigmas, scale_relative, subtracted_relative, row_magnitude[o, i], row_sigma[o, i])


@njit(cache=True, nogil=True)
def _unit(e, e_bits, m, m_binade, top_binade, spacings, min_exponent, floor):
    """``tolerance.ulp_units`` of one element: the dtype's spacing at min(max(|e|, m), top), at
    least ``floor``, an exact zero counting as 0.5's binade (binades read from the float64 bits,
    which max and min preserve)."""
    if e == 0.0 and m <= 0.0:
        exponent = -1
    else:
        exponent = _binade(e_bits) if e != 0.0 else -1075
        if m > 0.0:
            exponent = max(exponent, m_binade)
        exponent = min(exponent, top_binade)
    return max(spacings[max(exponent, min_exponent) - min_exponent], floor)


_SCREEN: float = 1.0 - 2.0**-40  # keeps a lower bound below the exact value it is rounded near


@njit(cache=True, nogil=True)
def _position_figures(actual, expected, expected_bits, o, i, state, scale, terms_sum, log_total, relative, absolute,
                      elementwise, row_magnitude, row_sigma, scale_relative, subtracted_relative, u, u_half, sigmas,
                      probability, targets, target, target_coefficient, smoothing, eps_c, weight, native, use_native,
                      top_binade, floor, spacings, min_exponent, base_ulps, budget_scale, margin, scratch):
    """:func:`_element_figures` over the classes of one position (o, i): ``state`` is the running
    (ratio, flat index, ulps, budget) at the worst ratio, the worst ulps and absolute error, and
    whether every element was finite; returns it updated."""
    ratio_best, index_best, ulps_best, budget_best, ulps_worst, error_worst, all_finite = state
    classes, inner = expected.shape[1], expected.shape[2]
    scratch_bits = scratch.view(np.int64)
    wise = elementwise[o, i]
    s = scale[o, i]
    denominator = abs(s * terms_sum[o, i])
    base = relative[o, i] * relative[o, i]
    total = log_total[o, i]
    lost = absolute[o, i]
    row_m = row_magnitude[o, i]
    row_s = row_sigma[o, i]
    # the relative sigma without the terms in log p: (log p + T)^2 + log p^2 >= T^2 / 2
    floor_root = np.sqrt(base + (u * u / 3) * (1.5 * total * total + 1))
    half_root = u_half / np.sqrt(3.0) if denominator > 0 else 0.0
    scratch[1] = denominator
    denominator_binade = _binade(scratch_bits[1])
    for c in range(classes):
        a = actual[o, c, i]
        e = expected[o, c, i]
        n = native[o, c, i] if use_native else 0.0
        if not (np.isfinite(a) and np.isfinite(e) and np.isfinite(n)):
            all_finite = False
            continue
        error = abs(a - e)
        q = 0.0
        parts = 0.0
        proportional = 0.0
        sigma = row_s
        m = row_m
        exact = True
        if wise:
            q, parts = _subtracted(probability, targets, target, target_coefficient, smoothing, eps_c, weight[c],
                                   o, c, i)
            proportional = abs(e + s * q)
            m = max(proportional, abs(s) * parts)
            exact = not np.isfinite(m)
            if exact:  # falls back to its row's figures
                m, sigma = _element_bound(e, s, q, parts, denominator, base, total, lost, u, u_half, sigmas,
                                          scale_relative, subtracted_relative, row_m, row_s)
        scratch[0] = m
        unit = _unit(e, expected_bits[o, c, i], m, _binade(scratch_bits[0]), top_binade, spacings, min_exponent,
                     floor)
        if error > ulps_worst * unit:
            ulps_worst = error / unit
        error_worst = max(error_worst, error)
        if not exact:  # a lower bound of the allowed error first
            root = floor_root
            if half_root > 0 and proportional > 0:
                # p = proportional / denominator < 2^(binade difference + 1), so |log p| is above
                # that many ln 2 (no division: the binades of the two), and sqrt(a + b) >= sqrt(b)
                scratch[1] = proportional
                below = denominator_binade - _binade(scratch_bits[1]) - 1
                if below > 0:
                    root = max(root, half_root * below * 0.6931471805599453)
            least = max(proportional * root, abs(e) * scale_relative,
                        abs(s) * parts * subtracted_relative, lost)
            bound = budget_scale * (base_ulps * unit + sigmas * least) * _SCREEN
            if use_native:
                bound = max(bound, (abs(n - e) + margin * unit) * _SCREEN)
            if ratio_best >= 0 and not error > ratio_best * bound:
                continue
            m, sigma = _element_bound(e, s, q, parts, denominator, base, total, lost, u, u_half, sigmas,
                                      scale_relative, subtracted_relative, row_m, row_s)
        allowed = budget_scale * (base_ulps * unit + sigmas * sigma)
        if use_native:
            allowed = max(allowed, abs(n - e) + margin * unit)
        ratio = error / allowed
        if ratio > ratio_best:
            ratio_best = ratio
            index_best = (o * classes + c) * inner + i
            ulps_best = error / unit
            budget_best = allowed / unit
    return ratio_best, index_best, ulps_best, budget_best, ulps_worst, error_worst, all_finite


def _element_figures(actual, expected, scale, terms_sum, log_total, relative, absolute, elementwise, row_magnitude,
                     row_sigma, scale_relative, subtracted_relative, u, u_half, sigmas, probability, targets, target,
                     target_coefficient, smoothing, weight, native, use_native, top, floor, spacings, min_exponent,
                     base_ulps, budget_scale, margin, threads):
    """:func:`_element_bounds` and :func:`_error_summary` in one pass, with no magnitude or sigma
    array in between: ``_error_summary``'s figures of an input-gradient block judged element by
    element. An element's magnitude (so its unit and ulps) is cheap and computed for every
    element; its sigma costs a log and two square roots, so it is computed only where a lower
    bound of the allowed error (the row's relative error without the element's log-probability
    terms; for half dtypes, ``|log p|`` bounded below from ``p``'s binade) leaves the element a
    chance of beating the worst ratio found so far. The figures are the unscreened ones exactly.
    The caller checks that the rows' own figures (``relative``, ``absolute``, the row-level
    magnitude and sigma) are finite, so an element's sigma is finite wherever its magnitude is."""
    outer, classes, inner = expected.shape
    expected_bits = expected.view(np.int64)
    top_binade = math.frexp(top)[1] - 1
    eps_c = smoothing / classes if classes else 0.0
    workers = max(1, min(outer, threads))
    per = (outer + workers - 1) // workers
    best_ratio = np.full(workers, -1.0)
    best_index = np.zeros(workers, dtype=np.int64)
    best_ulps = np.zeros(workers)
    best_budget = np.zeros(workers)
    worst_ulps = np.zeros(workers)
    worst_error = np.zeros(workers)
    finite = np.ones(workers, dtype=np.bool_)
    for worker in prange(workers):
        scratch = np.empty(2)  # a float64 whose bits are read back: the binade of a computed value
        state = (-1.0, 0, 0.0, 0.0, 0.0, 0.0, True)
        for o in range(worker * per, min(outer, (worker + 1) * per)):
            for i in range(inner):
                state = _position_figures(
                    actual, expected, expected_bits, o, i, state, scale, terms_sum, log_total, relative, absolute,
                    elementwise, row_magnitude, row_sigma, scale_relative, subtracted_relative, u, u_half, sigmas,
                    probability, targets, target, target_coefficient, smoothing, eps_c, weight, native, use_native,
                    top_binade, floor, spacings, min_exponent, base_ulps, budget_scale, margin, scratch)
        best_ratio[worker], best_index[worker], best_ulps[worker], best_budget[worker] = state[0], state[1], \
            state[2], state[3]
        worst_ulps[worker], worst_error[worker], finite[worker] = state[4], state[5], state[6]
    ok = True
    for worker in range(workers):
        ok = ok and finite[worker]
    pick = 0
    for worker in range(1, workers):  # the first worst element, as np.argmax finds it
        if best_ratio[worker] > best_ratio[pick]:
            pick = worker
    return (ok, max(worst_ulps.max(), 0.0), max(best_ratio[pick], 0.0), best_index[pick], best_ulps[pick],
            best_budget[pick], worst_error.max())


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
