"""The tolerance model (v2): a per-case budget from the error a correct implementation makes.

Every compared element gets an **allowed absolute error**

    allowed = base(dtype, quantity) * unit  +  SIGMAS * sigma

* ``unit`` is ``ulp(dtype, max(|expected|, magnitude))``, where the reference supplies the
  magnitude (for a loss: the sum of the absolute values of its terms plus one per log-sum-exp;
  for the input gradient: the element's own terms, :mod:`ce_conformance.gradient_elements`; for
  other gradients: the largest term in the row), with the float16 :func:`underflow_floor`. The
  base budget covers the last few roundings every implementation makes (exp, log, the final
  rounding to the dtype): a handful of ulps, independent of the case's size. A loss's base is
  its final rounding alone (half an ulp in float32/float64 since v2.6, one in the half dtypes, whose
  torch kernels round in the dtype on the way, but half an ulp there too for a plain loss since
  v2.13, :data:`BUDGETS`): the reference counts the roundings of each
  position's log-probability (``x_y - max``, ``log S``, the subtraction, a weight's product, a
  half dtype's log p) and of the smoothing's combination in ``sigma``, where they average out
  over a reduction as a correct kernel's do, instead of four ulps of the magnitude whatever
  the batch.
* ``sigma`` is the standard deviation of the rounding error of the sums the case really
  contains, computed by the reference from the case's own terms
  (:class:`ce_conformance.reference.Sigmas`): a sequential sum of terms ``t_k`` with partial sums
  ``s_k`` errs by ``sum_k s_k delta_k`` with ``|delta_k| <= u`` (the unit roundoff of the
  precision the kernel computes in: float32 for half dtypes), whose standard deviation under
  random rounding is ``u * sqrt(sum_k s_k**2 / 3)``. The reference takes the larger of the
  forward and the reverse order, so every tree, blocked, compensated or strided order a kernel
  uses stays below it; the exp sum's relative error becomes the log-sum-exp's absolute error,
  scales every probability in the gradient, and adds up (in quadrature, over independent rows)
  through smoothing sums, weights and the reduction over positions — whose sums torch runs in
  the input dtype for half dtypes with index targets.

So the budget grows like ``sqrt(C)`` where the case really sums C terms of similar size (and
not at all for a confident row, whose sum is one term), instead of the worst-case recursive
bound ``C * u`` of every layout that v1 used (16008 fp32 ulps at C = 32000). An implementation
more accurate than torch always passes: torch's own error is a fraction of ``sigma``.

>>> float(ulp_errors(np.array([1.0 + 2**-7]), np.array([1.0]), np.array([1.0]), "bfloat16")[0])
1.0
>>> allowed_errors(np.array([2**-23]), np.array([1e-6]), "float32", "grad_input").round(9).tolist()  # 2 ulps + 5 sigma
[5.238e-06]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np

from . import engine
from .dtypes import compute_dtype, max_finite, spacing_table, smallest_normal, smallest_subnormal, ulp


@dataclass(frozen=True)
class Budget:
    """Base budget in ULPs of the output dtype: the last roundings of any implementation."""

    loss: float
    grad_input: float
    grad_target: float
    #: a loss whose every rounding before the last the reference charges: index targets without
    #: class weights or smoothing (``ReferenceResult.plain_loss``)
    plain_loss: float


BUDGETS: Final = {
    "float64": Budget(loss=0.5, grad_input=2.0, grad_target=4.0, plain_loss=0.5),
    "float32": Budget(loss=0.5, grad_input=2.0, grad_target=4.0, plain_loss=0.5),
    "bfloat16": Budget(loss=1.0, grad_input=3.0, grad_target=3.0, plain_loss=0.5),
    "float16": Budget(loss=1.0, grad_input=3.0, grad_target=3.0, plain_loss=0.5),
}
"""Base budgets per dtype, from the correct family's and torch's worst errors at small C
(``benchmarks/sensitivity.py``, ``benchmarks/tolerance_survey.py``; figures in the README). The
loss's is its final rounding, at most half an ulp: every rounding before it is in the reference's
sigma (v2.5; v2.6 halved the base from one ulp). In the half dtypes it stays one ulp: torch's half
kernels round in the dtype on the way (the log-softmax output, the weighted products, the
smoothing's scaled parts and their sum), and with half an ulp torch's own arithmetic (the correct
family's ``compiled`` member) was 0.53-0.76 ulps off against 0.51-0.64 allowed, on each of the
nightly family's five seeds. A *plain* loss (index targets, no class weights, no smoothing) has half
an ulp in every dtype since v2.13: torch's half kernels round it in the dtype only at the
log-softmax output (one rounding per position, charged by its bound since v2.12), the cascade over
positions (charged by its bound over every order) and at the end. With half an ulp for every half
loss the adversarial sweep (``benchmarks/false_alarms.py``: 4000 cases of every kind, and the 5660
half index-target cases of 20000 more seeds) failed torch's weighted float16 and bfloat16 losses
(1.07-1.20 of the budget) and soft-target losses of torch and the family (1.04-1.38), and no plain
one (largest 0.90). The input gradient's is two ulps in float32/float64 (v2.7; four before): its
element model (:mod:`ce_conformance.gradient_elements`) holds every rounding on the way to ``p_c``
and those of the subtracted term in sigma, which leaves the last three operations (``K p_c - Q_c``,
the product with ``s``, the rounding to the dtype), each within half an ulp of the element's terms.
In the half dtypes it stays three: torch's half backward rounds ``p``, ``K p`` and the difference to
the dtype, three roundings of the element's size (its bfloat16 gradient of a confident row,
p = 0.97, was 1.6 ulps off: 0.76 of a base of two, 0.52 of three)."""

SIGMAS: Final = 5.0
"""How many standard deviations of a correct implementation's summation error a result may be
off. Measured over the correct family (``tests/correct_family.py``) on 5 seeds x 1000 gate cases:
worst z-score below 3 (figures in the README); 5 leaves headroom for orders the family lacks."""

RELATIVE_ORACLE_MARGIN: Final = 2.0
"""For the opt-in ``torch`` oracle: ULPs an implementation may exceed torch's own error by."""


def base_budget(dtype: str, quantity: str) -> float:
    """The base budget in ULPs of ``dtype`` for ``quantity`` (loss, grad_input, grad_target).

    >>> base_budget("bfloat16", "grad_input"), base_budget("bfloat16", "loss"), base_budget("bfloat16", "plain_loss")
    (3.0, 1.0, 0.5)
    """
    return getattr(BUDGETS.get(dtype, BUDGETS["float64"]), quantity)


def allowed_errors(unit: np.ndarray, sigma: np.ndarray | float | None, dtype: str, quantity: str,
                   scale: float = 1.0) -> np.ndarray:
    """Elementwise allowed absolute error: ``scale * (base * unit + SIGMAS * sigma)``."""
    unit = np.asarray(unit, dtype=np.float64)
    sigma = np.zeros_like(unit) if sigma is None else np.broadcast_to(np.asarray(sigma, dtype=np.float64), unit.shape)
    with np.errstate(over="ignore"):  # an unbounded sigma (an overflowing row) allows anything: inf
        return scale * (base_budget(dtype, quantity) * unit + SIGMAS * sigma)


def underflow_floor(dtype: str, n_classes: int) -> float:
    """Absolute error floor: products of tiny weights and probabilities underflow below the
    subnormal range (float16: 6e-8), each term losing up to one subnormal step; and a kernel that
    flushes subnormals to zero in its compute precision (XLA on CPU, fast-math GPU builds) loses
    up to one smallest normal per term (float32: 1.2e-38, invisible at any normal magnitude).
    ``n_classes`` counts the terms: one for a gradient element (one product) and for a half
    loss whose products below normal the reference counts in sigma
    (``ReferenceResult.loss_floor_classes``), the class count otherwise."""
    return n_classes * max(smallest_subnormal(dtype), smallest_normal(compute_dtype(dtype)))


def expected_overflows(expected: np.ndarray, dtype: str) -> np.ndarray:
    """Elements whose true value rounds to +-inf in the dtype (torch would return inf there)."""
    top = max_finite(dtype)
    return np.isfinite(expected) & (np.abs(expected) >= top + float(ulp(top, dtype)) / 2)


def ulp_units(expected: np.ndarray, magnitude: np.ndarray, dtype: str, n_classes: int = 1) -> np.ndarray:
    """The unit of each element: ``ulp(dtype, max(|expected|, magnitude))``, at least the
    :func:`underflow_floor`."""
    expected = np.asarray(expected, dtype=np.float64)
    magnitude = np.broadcast_to(np.asarray(magnitude, dtype=np.float64), expected.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.abs(expected)
        if not np.isfinite(scale).all():  # skip the masking passes in the common all-finite case
            scale = np.where(np.isfinite(scale), scale, 0)
        if not np.isfinite(magnitude).all():
            magnitude = np.nan_to_num(magnitude, nan=0, posinf=0)
        scale = np.minimum(np.maximum(scale, magnitude), max_finite(dtype))
        return np.maximum(ulp(scale, dtype), underflow_floor(dtype, n_classes))


def absolute_errors(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """|actual - expected| where both are finite, else 0 (the NaN/inf pattern, overflow
    included, is judged by :func:`nonfinite_mismatch` alone)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        difference = actual - expected
    if np.isfinite(difference).all():  # then both sides are finite everywhere: the common case
        return np.abs(difference)
    both_finite = np.isfinite(actual) & np.isfinite(expected)
    with np.errstate(invalid="ignore", over="ignore"):
        errors = np.abs(np.where(both_finite, actual - expected, 0))
    return np.where(np.isfinite(errors), errors, 0.0)


def ulp_errors(actual: np.ndarray, expected: np.ndarray, magnitude: np.ndarray, dtype: str,
               n_classes: int = 1) -> np.ndarray:
    """Elementwise |actual - expected| in ULPs of ``dtype`` at max(|expected|, magnitude), with
    the :func:`underflow_floor` as the smallest unit; 0 where either side is NaN or infinite."""
    return absolute_errors(actual, expected) / ulp_units(expected, magnitude, dtype, n_classes)


def nonfinite_mismatch(actual: np.ndarray, expected: np.ndarray, dtype: str, *, exact_kind: bool,
                       intermediate: np.ndarray | None = None) -> np.ndarray:
    """Elements whose NaN/inf class differs from the expected one.

    ``exact_kind`` (losses): NaN, +inf, -inf and finite must match exactly. Otherwise
    (gradients, undefined at such points) only finite vs non-finite must match.
    An expected value that overflows the dtype may come back as inf or as the largest finite;
    so may one whose ``intermediate`` (an unscaled sum: a 'mean' before its division, the
    smoothing sum before its eps / C) overflows the dtype, and where that intermediate made the
    expected value infinite, a finite value of the same sign (a kernel that scales first) passes
    this check; its digits are not judged, as the reference has none there. Where it made the
    expected value NaN (inf - inf), an infinite or near-top value passes too; and where it
    overflows, an infinity of either sign (products of both signs overflow: the first sets it).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if np.isfinite(actual).all() and np.isfinite(expected).all():  # the common case, one pass each
        return np.zeros(expected.shape, dtype=bool)
    overflow = expected_overflows(expected, dtype)
    partial_overflow = None
    if intermediate is not None:
        partial_overflow = np.broadcast_to(np.asarray(intermediate, dtype=np.float64), expected.shape) \
            >= max_finite(dtype) / 2
        overflow = overflow | partial_overflow
    if exact_kind:
        def kind(v):
            return np.where(np.isnan(v), 3, np.where(np.isposinf(v), 1, np.where(np.isneginf(v), 2, 0)))
        mismatch = kind(actual) != kind(expected)
    else:
        mismatch = np.isfinite(actual) != np.isfinite(expected)
    near_top = np.abs(actual) >= max_finite(dtype) / 2
    same_sign = np.sign(actual) == np.sign(expected)
    # the true value overflows the dtype (or float64 itself): inf or a value near the top are both fine
    saturated = (overflow | np.isinf(expected)) & same_sign & (np.isinf(actual) | near_top)
    if intermediate is not None:
        # once a partial sum or product is infinite, inf - inf and 0 * inf make NaN: arithmetic, not a bug
        saturated = saturated | (overflow & np.isnan(actual))
        # the reverse: torch's unscaled sum overflowed (so does the reference's, which follows it)
        # although the scaled result is finite; a kernel that scales before it sums (a mean of
        # log p, sums relative to one logit) returns that finite value, more accurate than torch.
        # Seen: a Triton kernel, float64 logits near 1e304, 32768 classes, smoothing 1: 4.4e304.
        saturated = saturated | (overflow & np.isinf(expected) & np.isfinite(actual) & same_sign)
        # and where torch's overflowed sum met inf - inf (smoothing 1, float64 logits of -4e307 and 0:
        # NaN), a kernel that kept its sum finite longer saturates instead (a Triton kernel: inf)
        saturated = saturated | (overflow & np.isnan(expected) & (np.isinf(actual) | near_top))
        # products of either sign overflow where the true result is huge: the first to reach inf sets
        # the sign (torch's float16 'none' loss of negative soft targets times log p = -65504: -inf,
        # for a true +1.3e5 that overflows too)
        saturated = saturated | (partial_overflow & np.isinf(actual))
    return mismatch & ~saturated


class ErrorFigures(NamedTuple):
    """What a value check reports about one array: the worst error in ulps, the worst ratio of
    error to allowed error, where that ratio peaks (with the ulps and the budget in ulps there)
    and the largest absolute error."""

    max_ulp: float
    max_ratio: float
    worst_index: tuple[int, ...]
    worst_ulp: float
    worst_budget: float
    max_abs_error: float


FUSED_MIN_ELEMENTS: Final = 1 << 15
"""Arrays at least this large are judged by the fused kernel (one pass instead of about twenty);
smaller ones are cheap either way and keep the kernel's compiled variants few."""


def error_figures(actual: np.ndarray, expected: np.ndarray, magnitude: np.ndarray, sigma: np.ndarray | None,
                  dtype: str, quantity: str, n_classes: int = 1, *, scale: float = 1.0,
                  native: np.ndarray | None = None, ignore: np.ndarray | None = None) -> ErrorFigures:
    """Errors of ``actual`` against ``expected`` in ulps (:func:`ulp_units`) and against the
    allowed error (:func:`allowed_errors`, widened to ``native``'s own error plus
    :data:`RELATIVE_ORACLE_MARGIN` ulps where given); elements in ``ignore`` count as exact.

    >>> error_figures(np.array([1.0 + 2**-22]), np.array([1.0]), np.array([1.0]), None, "float32", "loss").max_ulp
    2.0
    """
    actual = np.asarray(actual, dtype=np.float64)
    unit = ulp_units(expected, magnitude, dtype, n_classes)
    errors = absolute_errors(actual, expected)
    if ignore is not None:
        errors = np.where(ignore, 0.0, errors)
    allowed = allowed_errors(unit, sigma, dtype, quantity, scale)
    if native is not None:
        native_errors = absolute_errors(np.asarray(native, dtype=np.float64), expected)
        allowed = np.maximum(allowed, native_errors + RELATIVE_ORACLE_MARGIN * unit)
    if errors.size == 0:
        return ErrorFigures(0.0, 0.0, (), 0.0, 0.0, 0.0)
    ulps = errors / unit
    ratio = errors / allowed
    index = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if ratio.ndim else ()
    return ErrorFigures(float(ulps.max()), float(ratio.max()), tuple(int(i) for i in index), float(ulps[index]),
                        float(allowed[index] / unit[index]), float(errors.max()))


def fused_error_figures(actual: np.ndarray, expected: np.ndarray, magnitude: np.ndarray, sigma: np.ndarray | None,
                        dtype: str, quantity: str, n_classes: int = 1, *, scale: float = 1.0,
                        native: np.ndarray | None = None, min_elements: int = FUSED_MIN_ELEMENTS) -> ErrorFigures | None:
    """:func:`error_figures` in one pass of the numba kernel, for arrays of at least
    ``min_elements`` whose every element is finite; None otherwise (numba engine off, small
    array, or a NaN/inf anywhere: the caller takes the NumPy path and its NaN/inf rules)."""
    expected = np.asarray(expected, dtype=np.float64)
    if not engine.available() or expected.size < max(1, min_elements):
        return None
    shape = expected.shape
    outer = shape[0] if len(shape) >= 2 else 1
    classes = shape[1] if len(shape) >= 2 else (shape[0] if shape else 1)
    inner = expected.size // max(1, outer * classes)

    def canonical(array, keep_float32=False):  # (outer, classes, inner) views; broadcasts keep zero strides
        array = np.asarray(array)
        if not (keep_float32 and array.dtype == np.float32):
            array = array.astype(np.float64, copy=False)
        return np.broadcast_to(array, shape).reshape(outer, classes, inner)

    zeros = np.broadcast_to(np.zeros(()), shape)
    error_summary, threads = engine.kernel("error_summary", expected.size)
    top, floor, spacings, min_exponent, base = kernel_units(dtype, quantity, n_classes)
    figures = error_summary(
        canonical(actual, keep_float32=True), canonical(expected), canonical(magnitude), canonical(zeros if sigma is None else sigma),
        canonical(zeros if native is None else native), native is not None, top, floor, spacings, min_exponent, base,
        SIGMAS, float(scale), RELATIVE_ORACLE_MARGIN, threads)
    return kernel_figures(figures, shape)


def kernel_units(dtype: str, quantity: str, n_classes: int) -> tuple[float, float, np.ndarray, int, float]:
    """What the numba kernels need to form :func:`ulp_units` and the base budget: the dtype's
    largest finite value, the underflow floor, the spacing table and its first binary exponent,
    the base budget in ulps."""
    return (max_finite(dtype), underflow_floor(dtype, n_classes), spacing_table(dtype),
            math.frexp(smallest_normal(dtype))[1] - 1, base_budget(dtype, quantity))


def kernel_figures(figures: tuple, shape: tuple[int, ...]) -> ErrorFigures | None:
    """A figures kernel's tuple (ok, max ulp, max ratio, flat index, ulps and budget there, max
    absolute error) as :class:`ErrorFigures` of an array of ``shape``; None where not ``ok``."""
    ok, max_ulp, max_ratio, flat, worst_ulp, worst_budget, max_abs = figures
    if not ok:
        return None
    index = tuple(int(i) for i in np.unravel_index(int(flat), shape)) if shape else ()
    return ErrorFigures(float(max_ulp), float(max_ratio), index, float(worst_ulp), float(worst_budget), float(max_abs))


def shifted(index: tuple[int, ...], first: int) -> tuple[int, ...]:
    """A block's index as an index of the whole array: ``first`` added on the first axis.

    >>> shifted((0, 2), 4), shifted((), 4)
    ((4, 2), ())
    """
    return (index[0] + first, *index[1:]) if index else index


def merge_figures(blocks: "list[tuple[ErrorFigures, int]]") -> ErrorFigures:
    """The figures of an array judged in blocks along its first axis, each given with the index
    of its first row there (the worst ratio's block supplies the index, its ulps and budget).

    >>> a, b = ErrorFigures(2.0, 0.5, (1, 3), 2.0, 4.0, 1e-6), ErrorFigures(1.0, 0.7, (0, 2), 1.0, 1.4, 2e-6)
    >>> merge_figures([(a, 0), (b, 4)]).worst_index
    (4, 2)
    """
    if not blocks:
        return ErrorFigures(0.0, 0.0, (), 0.0, 0.0, 0.0)
    worst, first = max(blocks, key=lambda block: block[0].max_ratio)
    return ErrorFigures(max(f.max_ulp for f, _ in blocks), worst.max_ratio, shifted(worst.worst_index, first),
                        worst.worst_ulp, worst.worst_budget, max(f.max_abs_error for f, _ in blocks))
