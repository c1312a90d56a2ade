"""numba kernels of the comparison (:mod:`ce_conformance.tolerance`,
:mod:`ce_conformance.gradient_elements`): an array judged against the reference in one pass.
Compiled by :mod:`ce_conformance._kernels`, which documents the conventions."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._bitcast import float_bits

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
    best_ratio, best_index, best_ulps, best_budget, worst_ulps, worst_error, finite = _worker_figures(workers)
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
                    allowed = _allowed(unit, s, e, n, use_native, base, sigmas, scale, margin)
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
    return _merged_figures(best_ratio, best_index, best_ulps, best_budget, worst_ulps, worst_error, finite)


@njit(cache=True, nogil=True)
def _subtracted(probability, t, c, y, y_coefficient, smoothing, eps_c, w):
    """``GradientElements.subtracted`` of one element of class ``c``: ``Q_c`` and the magnitude of
    its parts. ``t`` is the element's probability target (any value for index targets), which the
    caller loads whatever the targets: a load under ``if probability`` stops a loop from
    vectorising. Index targets come as the position's class ``y`` and coefficient, read once per
    position by the caller (read here per element, they were 40 % of ``_element_figures`` at
    C = 128256)."""
    if probability:
        if smoothing > 0:
            return (t * (1 - smoothing) + eps_c) * w, (abs(t) * (1 - smoothing) + eps_c) * abs(w)
        return t * w, abs(t * w)
    q = eps_c * w if smoothing > 0 else 0.0
    if c == y:
        q += y_coefficient
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
                y = target[o, i] if not probability else -1
                y_coefficient = target_coefficient[o, i] if not probability else 0.0
                for c in range(classes):
                    t = targets[o, c, i] if probability else 0.0
                    q, parts = _subtracted(probability, t, c, y, y_coefficient, smoothing, eps_c, weight[c])
                    magnitude[o, c, i], sigma[o, c, i] = _element_bound(
                        expected[o, c, i], s, q, parts, denominator, base, log_total[o, i], absolute[o, i], u,
                        u_half, sigmas, scale_relative, subtracted_relative, row_magnitude[o, i], row_sigma[o, i])


@njit(cache=True, nogil=True)
def _worker_figures(workers):
    """Each worker's running figures, written once at its end (per-element writes to shared
    arrays would make the threads fight over one cache line): ratio, flat index, ulps and budget
    at its worst ratio, its worst ulps and absolute error, whether every element was finite."""
    return (np.full(workers, -1.0), np.zeros(workers, dtype=np.int64), np.zeros(workers), np.zeros(workers),
            np.zeros(workers), np.zeros(workers), np.ones(workers, dtype=np.bool_))


@njit(cache=True, nogil=True)
def _merged_figures(best_ratio, best_index, best_ulps, best_budget, worst_ulps, worst_error, finite):
    """The workers' figures as one: (ok, max ulps, max ratio, its flat index, ulps and budget
    there, max absolute error), the first worst element winning ties, as np.argmax finds it."""
    ok = True
    for worker in range(finite.shape[0]):
        ok = ok and finite[worker]
    pick = 0
    for worker in range(1, best_ratio.shape[0]):
        if best_ratio[worker] > best_ratio[pick]:
            pick = worker
    return (ok, max(worst_ulps.max(), 0.0), max(best_ratio[pick], 0.0), best_index[pick], best_ulps[pick],
            best_budget[pick], worst_error.max())


@njit(cache=True, nogil=True)
def _allowed(unit, sigma, e, n, use_native, base, sigmas, scale, margin):
    """``tolerance.allowed_errors`` of one element (widened to the native result's own error
    plus ``margin`` ulps under ``--oracle torch``): one formula for both figure kernels, so the
    one-pass comparison's figures are the two passes'."""
    allowed = scale * (base * unit + sigmas * sigma)
    return max(allowed, abs(n - e) + margin * unit) if use_native else allowed


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
_FLOOR_LEVELS = 64  # |log p| bounded below in steps of ln 2 up to 63 ln 2 (p < 2^-63 takes the last)


@njit(cache=True, nogil=True)
def _floor_roots(roots, base, total, u, u_half, classes):
    """Lower bounds of an element's relative root (:func:`_element_bound`'s ``sqrt(relative_sq)``)
    where ``|log p| >= L = b ln 2``, into ``roots[b]``: ``(log p + T)^2 + log p^2`` is least at
    ``|log p| = T / 2``, so at ``L`` where ``L > T / 2``. Returns how many levels it filled: up to
    :data:`_FLOOR_LEVELS`, fewer for positions of few classes (a square root each, per position)."""
    levels = min(_FLOOR_LEVELS, max(1, classes // 8))
    for b in range(levels):
        lowest = b * 0.6931471805599453
        log_terms = (total - lowest) ** 2 + lowest * lowest if lowest > total / 2 else 0.5 * total * total
        roots[b] = np.sqrt(base + (u * u / 3) * (log_terms + total * total + 1) + (u_half * u_half / 3) * lowest * lowest)
    return levels


@njit(cache=True, nogil=True)
def _denominator_binade(denominator):
    """The binade of a position's ``|s K|``, for :func:`_floor_level`; 2000 where it is not normal
    (its bits' binade would be above its own, so no level is claimed)."""
    return _binade(float_bits(denominator)) if denominator >= 2.2250738585072014e-308 else 2000


@njit(cache=True, nogil=True)
def _floor_level(denominator_binade, proportional, levels):
    """The :func:`_floor_roots` level of an element: ``p = proportional / denominator`` is below
    2^(binade difference + 1), so ``|log p|`` is above that many ln 2 (no division: the binades),
    at most the last level filled. Scalars only: a helper that takes arrays counts their
    references on every call, which keeps the screen's loop from vectorising."""
    below = denominator_binade - _binade(float_bits(proportional)) - 1 if proportional > 0 else 0
    return min(max(below, 0), levels - 1)


@njit(cache=True, nogil=True)
def _row_screen(actual, expected, native, o, ratio_best, ulps_worst, error_worst, wise, row_m, row_s, s, denominator,
                lost, roots, levels, scale_relative, subtracted_relative, probability, targets, target_row, y,
                y_coefficient, smoothing, eps_c, weight, use_native, top_binade, floor, spacings, min_exponent,
                base_ulps, sigmas, budget_scale, margin):
    """Whether row ``o`` (one position's classes: ``actual``, ``expected``, ``native`` and, at
    ``target_row``, ``targets`` are (rows, classes) arrays) may change the running figures of
    :func:`_position_figures`: an element not finite, above ``error_worst`` or ``ulps_worst``,
    or whose error may beat ``ratio_best`` — then that function judges the row; most rows of a
    passing gradient change nothing. An element's sigma is bounded below by
    :func:`_element_bound`'s root sum of squares with its relative root at ``roots``'s floor
    (:func:`_floor_roots`), compared squared (no square root per element); in a row budgeted as
    a whole (not ``wise``) it is the row's ``row_s``, its magnitude ``row_m``. The loop has no branch
    out of it, no load under a condition, no short-circuit (``and`` branches; ``&`` does not), no
    running maximum, and a conditional expression only between values already computed (over a
    call such as ``max`` it stays a branch): LLVM vectorises it (about a third of the one-by-one
    loop's time), where with the figures' maxima in it, it did not; with ``wise``'s choice made
    over the element's ``max``, it did with AVX-512 but not with AVX2 alone (0.46 s against
    0.28 s for a float32 gradient of 1024 rows at C = 128256)."""
    classes = expected.shape[1]
    denominator_binade = _denominator_binade(denominator)
    # error > ratio_best * budget_scale * (base_ulps * unit + sigmas * sigma), with sigma^2 >= low^2:
    # error * reach - base_ulps * unit > 0 and its square above sigmas^2 low^2
    reach = 1.0 / (ratio_best * budget_scale * _SCREEN) if ratio_best > 0 else np.inf
    native_reach = 1.0 / (ratio_best * _SCREEN) if ratio_best > 0 else np.inf
    sigmas_sq = sigmas * sigmas * _SCREEN
    no_native = not use_native
    row_sq = row_s * row_s
    changes = False
    for c in range(classes):
        a = np.float64(actual[o, c])
        e = expected[o, c]
        n = native[o, c]
        q, parts = _subtracted(probability, targets[target_row, c], c, y, y_coefficient, smoothing, eps_c, weight[c])
        proportional = abs(e + s * q)
        element_m = max(proportional, abs(s) * parts)  # computed either way: see the docstring
        m = element_m if wise else row_m
        error = abs(a - e)
        unit = _unit(e, float_bits(e), m, _binade(float_bits(m)), top_binade, spacings, min_exponent, floor)
        a_part = proportional * roots[_floor_level(denominator_binade, proportional, levels)]
        b_part = abs(e) * scale_relative
        c_part = abs(s) * parts * subtracted_relative
        element_sq = a_part * a_part + b_part * b_part + c_part * c_part + lost * lost
        low_sq = element_sq if wise else row_sq
        spare = error * reach - base_ulps * unit
        # an overflowing square settles nothing; NaN compares False
        beats = ((spare > 0) & (spare * spare > sigmas_sq * low_sq)) | (not low_sq < np.inf)
        beats &= no_native | (error * native_reach > abs(n - e) + margin * unit)
        finite = (error < np.inf) & (m < np.inf) & (abs(n) < np.inf)
        changes |= beats | (not finite) | (error > error_worst) | (error > ulps_worst * unit)
    return changes


@njit(cache=True, nogil=True)
def _position_figures(actual, expected, expected_bits, o, i, state, scale, terms_sum, log_total, relative, absolute,
                      elementwise, row_magnitude, row_sigma, scale_relative, subtracted_relative, u, u_half, sigmas,
                      probability, targets, target, target_coefficient, smoothing, eps_c, weight, native, use_native,
                      top_binade, floor, spacings, min_exponent, base_ulps, budget_scale, margin, roots):
    """:func:`_element_figures` over the classes of one position (o, i): ``state`` is the running
    (ratio, flat index, ulps, budget) at the worst ratio, the worst ulps and absolute error, and
    whether every element was finite; returns it updated."""
    ratio_best, index_best, ulps_best, budget_best, ulps_worst, error_worst, all_finite = state
    classes, inner = expected.shape[1], expected.shape[2]
    wise = elementwise[o, i]
    s = scale[o, i]
    denominator = abs(s * terms_sum[o, i])
    base = relative[o, i] * relative[o, i]
    total = log_total[o, i]
    lost = absolute[o, i]
    row_m = row_magnitude[o, i]
    row_s = row_sigma[o, i]
    levels = _floor_roots(roots, base, total, u, u_half, classes)
    y = target[o, i] if not probability else -1
    y_coefficient = target_coefficient[o, i] if not probability else 0.0
    denominator_binade = _denominator_binade(denominator)
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
            t = targets[o, c, i] if probability else 0.0
            q, parts = _subtracted(probability, t, c, y, y_coefficient, smoothing, eps_c, weight[c])
            proportional = abs(e + s * q)
            m = max(proportional, abs(s) * parts)
            exact = not np.isfinite(m)
            if exact:  # falls back to its row's figures
                m, sigma = _element_bound(e, s, q, parts, denominator, base, total, lost, u, u_half, sigmas,
                                          scale_relative, subtracted_relative, row_m, row_s)
        unit = _unit(e, expected_bits[o, c, i], m, _binade(float_bits(m)), top_binade, spacings, min_exponent,
                     floor)
        if error > ulps_worst * unit:
            ulps_worst = error / unit
        error_worst = max(error_worst, error)
        if not exact:  # a lower bound of the allowed error first
            root = roots[_floor_level(denominator_binade, proportional, levels)]
            least = max(proportional * root, abs(e) * scale_relative,
                        abs(s) * parts * subtracted_relative, lost)
            bound = budget_scale * (base_ulps * unit + sigmas * least) * _SCREEN
            if use_native:
                bound = max(bound, (abs(n - e) + margin * unit) * _SCREEN)
            if ratio_best >= 0 and not error > ratio_best * bound:
                continue
            m, sigma = _element_bound(e, s, q, parts, denominator, base, total, lost, u, u_half, sigmas,
                                      scale_relative, subtracted_relative, row_m, row_s)
        allowed = _allowed(unit, sigma, e, n, use_native, base_ulps, sigmas, budget_scale, margin)
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
    bound of the allowed error (the row's relative error with ``|log p|`` bounded below from the
    binades of ``p``'s two parts, :func:`_floor_roots`) leaves the element a chance of beating the
    worst ratio found so far. Where a position's classes are a row (``inner`` 1: every layout but
    K-dim), :func:`_row_screen` first settles, in a vectorised loop, the rows that cannot change
    the running figures (at C = 128256, 0.58 -> 0.40 s for a float32 gradient of 1024 rows). The
    figures are the unscreened ones exactly; an eighth value counts the rows judged one by one
    (the screen's yield, for the tests). The caller checks that the rows' own figures
    (``relative``, ``absolute``, the row-level magnitude and sigma) are finite, so an element's
    sigma is finite wherever its magnitude is."""
    outer, classes, inner = expected.shape
    expected_bits = expected.view(np.int64)
    top_binade = math.frexp(top)[1] - 1
    eps_c = smoothing / classes if classes else 0.0
    workers = max(1, min(outer, threads))
    per = (outer + workers - 1) // workers
    best_ratio, best_index, best_ulps, best_budget, worst_ulps, worst_error, finite = _worker_figures(workers)
    rows_2d = inner == 1  # a position's classes contiguous: a row that _row_screen reads as a vector
    actual_2d = actual.reshape(outer, classes * inner)
    expected_2d = expected.reshape(outer, classes * inner)
    native_2d = native.reshape(outer, classes * inner)
    # probability targets as rows, or one row of zeros that index targets read instead
    targets_2d = targets.reshape(outer, classes) if probability and rows_2d else np.zeros((1, classes))
    judged = np.zeros(workers, dtype=np.int64)
    for worker in prange(workers):
        roots = np.empty(_FLOOR_LEVELS)
        state = (-1.0, 0, 0.0, 0.0, 0.0, 0.0, True)
        one_by_one = 0
        for o in range(worker * per, min(outer, (worker + 1) * per)):
            if rows_2d and state[0] >= 0:
                s = scale[o, 0]
                denominator = abs(s * terms_sum[o, 0])
                levels = _floor_roots(roots, relative[o, 0] ** 2, log_total[o, 0], u, u_half, classes)
                y = target[o, 0] if not probability else -1
                y_coefficient = target_coefficient[o, 0] if not probability else 0.0
                target_row = o if probability else 0
                if not _row_screen(
                        actual_2d, expected_2d, native_2d, o, state[0], state[4], state[5], elementwise[o, 0],
                        row_magnitude[o, 0], row_sigma[o, 0], s, denominator,
                        absolute[o, 0], roots, levels, scale_relative, subtracted_relative, probability, targets_2d,
                        target_row, y, y_coefficient, smoothing, eps_c, weight, use_native, top_binade, floor,
                        spacings, min_exponent, base_ulps, sigmas, budget_scale, margin):
                    continue
            one_by_one += 1
            for i in range(inner):
                state = _position_figures(
                    actual, expected, expected_bits, o, i, state, scale, terms_sum, log_total, relative, absolute,
                    elementwise, row_magnitude, row_sigma, scale_relative, subtracted_relative, u, u_half, sigmas,
                    probability, targets, target, target_coefficient, smoothing, eps_c, weight, native, use_native,
                    top_binade, floor, spacings, min_exponent, base_ulps, budget_scale, margin, roots)
            if not state[6]:  # an element not finite: the caller takes the NumPy path, so stop here
                break
        best_ratio[worker], best_index[worker], best_ulps[worker], best_budget[worker] = state[0], state[1], \
            state[2], state[3]
        worst_ulps[worker], worst_error[worker], finite[worker] = state[4], state[5], state[6]
        judged[worker] = one_by_one
    return _merged_figures(best_ratio, best_index, best_ulps, best_budget, worst_ulps, worst_error, finite) + (
        judged.sum(),)
