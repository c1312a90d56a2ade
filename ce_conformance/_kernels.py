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
    """One row of ``summation_root``: scale by the row max, sequential partial sums in both
    orders, terms lost below u * partial sum, equal terms grouped.

    Grouping: a first pass marks, in a bit filter small enough for the L2 cache (16 bits per
    term), the hash buckets hit more than once; a term alone in its bucket is a group of its
    own. Only the others (a few percent, true repeats and bucket collisions) go through an
    exact open-addressing table, whose slot is four words (key bits, stamp, forward sum,
    backward sum) and whose stamp marks the slots this row uses, so it is never cleared.
    Terms are grouped by their own (scaled) value, or by ``keys`` where that row is not empty.
    ``workspace`` is the calling worker's :func:`_workspace`."""
    table, filters, slots, scaled, forward = workspace
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
    half = filters.shape[0] // 2  # words of each filter: seen once, seen again
    filter_shift = np.uint64(64 - _log2(half * 64))
    for k in range(width):
        bucket = (np.uint64(bits[k]) * _GOLDEN) >> filter_shift
        word, bit = bucket >> np.uint64(6), np.uint64(1) << (bucket & np.uint64(63))
        if filters[word] & bit:
            filters[half + word] |= bit
        else:
            filters[word] |= bit
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
    return (root + lost_weight * max(lost_forward, lost_backward)) * top, distinct + grouped


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
                    if e == 0.0 and m <= 0.0:
                        exponent = -1
                    else:
                        exponent = _binade(expected_bits[o, c, i]) if e != 0.0 else -1075
                        if m > 0.0:
                            exponent = max(exponent, _binade(magnitude_bits[o, c, i]))
                        exponent = min(exponent, top_binade)
                    unit = max(spacings[max(exponent, min_exponent) - min_exponent], floor)
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


def _index_rows(rows, target, weight, scale, u, lost_weight, grad, threads):
    """The reference's index-target rows without label smoothing, one row per pass set: the
    log-sum-exp (``log1p`` of the sum without the maximal term, compensated), the NLL, the
    probability of the target, the summation model of the exp sum (``summation_root`` and root
    sum of squares of p), the largest p |log p|, the row's maximum and, where ``grad`` has rows, the gradient row
    ``p * w_y * scale`` with ``w_y * expm1(log p_y) * scale`` at the target.
    ``finite`` is False for a row whose maximum is not finite (NaN or +-inf): the caller
    takes the NumPy path for such chunks."""
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
        p = np.empty(width)
        for r in range(worker * per, min(m, (worker + 1) * per)):
            x = rows[r]  # float32 (holding float32 or half values exactly) or float64
            top = 0
            high = np.float64(x[0])
            ok = not np.isnan(high)
            for k in range(1, width):
                v = np.float64(x[k])
                if np.isnan(v):
                    ok = False
                if v > high:
                    high = v
                    top = k
            if not ok or not np.isfinite(high):
                finite[r] = False
                continue
            tops[r] = high
            total = 0.0  # Neumaier-compensated sum of exp(x - max) without the maximal term
            compensation = 0.0
            for k in range(width):
                term = 0.0 if k == top else np.exp(np.float64(x[k]) - high)
                p[k] = term
                t = total + term
                if abs(total) >= abs(term):
                    compensation += (total - t) + term
                else:
                    compensation += (term - t) + total
                total = t
            rest = total + compensation
            lse[r] = np.log1p(rest)
            p[top] = 1.0
            denominator = rest + 1.0
            squares = 0.0
            largest = 0.0
            lse_r = lse[r]
            w_r, scale_r = weight[r], scale[r]
            out = grad[r] if want_grad else p
            for k in range(width):
                p[k] = p[k] / denominator
                squares += p[k] * p[k]
                weighted = p[k] * abs(np.float64(x[k]) - high - lse_r)
                if weighted > largest:  # a -inf logit gives 0 * inf = NaN, which never wins
                    largest = weighted
                if want_grad:
                    out[k] = p[k] * w_r * scale_r
            rss[r] = np.sqrt(squares)
            p_logp[r] = largest
            y = target[r]
            shifted_y = np.float64(x[y]) - high
            nll[r] = lse[r] - shifted_y
            p_target[r] = p[y]
            if want_grad:
                out[y] = w_r * np.expm1(shifted_y - lse[r]) * scale_r
            root[r], distinct[r] = _row_root(p, p[:0], u, lost_weight, False, r + 1, workspace)
    return lse, nll, p_target, root, rss, distinct, p_logp, tops, finite


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
                total = log_total[o, i]
                for c in range(classes):
                    w = weight[c]
                    if probability:
                        t = targets[o, c, i]
                        if smoothing > 0:
                            q = (t * (1 - smoothing) + eps_c) * w
                            parts = (abs(t) * (1 - smoothing) + eps_c) * abs(w)
                        else:
                            q = t * w
                            parts = abs(q)
                    else:
                        q = eps_c * w if smoothing > 0 else 0.0
                        if c == target[o, i]:
                            q += target_coefficient[o, i]
                        parts = abs(q)
                    e = expected[o, c, i]
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
                    q = abs(s) * parts * subtracted_relative
                    lost = absolute[o, i]
                    largest = max(a, b, q, lost)
                    if 1e-150 < largest < 1e150:  # squares within the float64 range: the plain root
                        value = np.sqrt(a * a + b * b + q * q + lost * lost)
                    else:  # a probability of 1e-258 would square to 0: the careful way
                        value = np.hypot(np.hypot(a, np.hypot(b, q)), lost)
                    size = max(proportional, abs(s) * parts)
                    if np.isfinite(size) and np.isfinite(value):
                        magnitude[o, c, i] = size
                        sigma[o, c, i] = value
                    else:
                        magnitude[o, c, i] = row_magnitude[o, i]
                        sigma[o, c, i] = row_sigma[o, i]


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
