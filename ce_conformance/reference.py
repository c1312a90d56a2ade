"""The reference oracle: torch's cross-entropy semantics as independent NumPy code.

This module is the one place where the semantics of ``torch.nn.functional.cross_entropy``
live (see ``shared/semantics.md`` and the README). It never imports torch.

* Values are computed in float64 from the dtype-rounded inputs, with a log-sum-exp that
  subtracts the row maximum and computes ``log(sum(exp(x - max)))`` as ``log1p`` of the sum
  without the maximal term, so confident predictions keep full relative accuracy.
* Gradients are closed form, not autodiff; ``p - 1`` at the target is ``expm1(log p)``.
* Work is chunked over rows, so vocabulary-scale inputs (C >= 128k) use bounded temporaries.
* ``exact=True`` runs the *same* kernel on mpmath numbers (60 significant digits); the
  tests use it to prove the float64 path accurate to a few ulps on extreme inputs.
* Alongside each value, :func:`evaluate` returns its *magnitude*: the size of the terms
  that make it up (the loss with absolute weights, plus one per log-sum-exp). The tolerance
  model measures errors in ulps of that magnitude, which is what a correct implementation
  in the dtype under test can actually achieve.

Results are compared in ulps, never to a last-bit literal: ``log``/``log1p``/``exp`` round
their last bit differently across CPUs and SIMD paths.

>>> import numpy as np
>>> loss = cross_entropy(np.array([[0.0, 0.0]]), np.array([1]))
>>> bool(abs(loss - np.log(2)) <= 2 * np.spacing(np.log(2)))  # log 2, within 2 float64 ulps
True
>>> cross_entropy_grad(np.array([[0.0, 0.0]]), np.array([1])).input.round(12)
array([[ 0.5, -0.5]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Final, Mapping, NamedTuple

import mpmath
import numpy as np

from .dtypes import (FLOAT_DTYPES, compute_dtype, dtype_name, is_float, machine_epsilon, numpy_dtype, round_to,
                     smallest_normal, smallest_subnormal, ulp)
from . import buffers, engine
from .errors import InvalidInputError, Rule
from .gradient_elements import CANCELLING, GradientElements, exponential_relative
from .outputs import Expectation, check_output_options, lse_output, requested
from .summation import (EQUAL_TERM_LANES, LOST_WEIGHT, MANTISSA_BINS, alike_root, alike_subnormal_bound,
                        any_order_bound, equal_terms_bound, finite_row_max, flushed_pairs, flushed_products, near_equal,
                        order_bias, pair_keys, residue_groups, root_sum_squares, step_table, subnormal_products,
                        summation_root)
from .tolerance import SIGMAS

REDUCTIONS: Final = ("none", "mean", "sum")
CHUNK_ELEMENTS: Final = 1 << 21
"""Logit elements per chunk: bounds each float64 temporary to 16 MiB at any class count."""

EXACT_DIGITS: Final = 60
_TORCH_DTYPE_NAMES: Final = {"int64": "Long", "int32": "Int", "int16": "Short", "int8": "Char", "uint8": "Byte",
                             "bool": "Bool", "float16": "Half", "bfloat16": "BFloat16", "float32": "Float",
                             "float64": "Double"}


def resolve_reduction(reduction: str, size_average: bool | None, reduce: bool | None) -> str:
    """torch.nn._reduction: legacy ``size_average``/``reduce`` override ``reduction`` when set."""
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        reduction = "mean" if (size_average and reduce) else ("sum" if reduce else "none")
    if reduction == "elementwise_mean":  # deprecated alias torch still accepts (with a warning)
        reduction = "mean"
    if reduction not in REDUCTIONS:
        raise InvalidInputError(Rule.REDUCTION_VALUE, f"{reduction} is not a valid value for reduction")
    return reduction


@dataclass(frozen=True)
class _Call:
    """A validated call, reduced to what the kernel needs."""

    mode: str  # "index" or "probability"
    input: np.ndarray  # in its own dtype, or float64 holding its values exactly (``grid``); converted chunk by chunk
    target: np.ndarray  # index: int64 positions (M,); probability: the target array
    weight: np.ndarray | None  # float64
    ignore_index: int
    reduction: str
    smoothing: float  # effective epsilon: label_smoothing if > 0 else 0
    n_classes: int
    output_shape: tuple[int, ...]
    precision: Any = None  # the dtype under test, where ``input`` holds exact float64 values of another computation
    grid: Any = None  # the dtype whose values ``input`` holds, where it holds them as float64 (a case's own copy)

    @property
    def dtype(self) -> Any:
        """The dtype whose arithmetic a correct implementation uses (the tolerance model's)."""
        return self.input.dtype if self.precision is None else self.precision

    @property
    def values_dtype(self) -> Any:
        """The dtype whose grid the logits lie on: the case's dtype, or float64 for exact
        products of another computation (:func:`evaluate_logits`)."""
        return self.input.dtype if self.grid is None else self.grid

    @property
    def positions(self) -> int:
        return math.prod(self.input.shape) // self.n_classes if self.n_classes else 0


def _torch_name(array: np.ndarray) -> str:
    return _TORCH_DTYPE_NAMES.get(dtype_name(array.dtype), dtype_name(array.dtype))


def _validate(input: Any, target: Any, weight: Any, size_average: bool | None, ignore_index: int,
              reduce: bool | None, reduction: str, label_smoothing: float) -> _Call:
    """Apply torch's argument checks in torch's order; raise InvalidInputError on the first broken rule."""
    input = np.asarray(input)
    target = np.asarray(target)
    weight = None if weight is None else np.asarray(weight)
    reduction = resolve_reduction(reduction, size_average, reduce)
    input_is_float = dtype_name(input.dtype) in FLOAT_DTYPES
    smoothing = float(label_smoothing) if label_smoothing > 0 else 0.0

    def check_input_dtype() -> None:
        if not input_is_float:
            raise InvalidInputError(Rule.INPUT_DTYPE, f'"log_softmax" not implemented for \'{_torch_name(input)}\'')

    def check_smoothing() -> None:
        if label_smoothing > 0 and label_smoothing > 1.0:
            raise InvalidInputError(Rule.LABEL_SMOOTHING_RANGE,
                                    f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")

    def check_weight(n_classes: int, prefix: str = "") -> np.ndarray | None:
        if weight is None:
            return None
        if weight.ndim != 1 or weight.size != n_classes:
            raise InvalidInputError(Rule.WEIGHT_SHAPE, f"{prefix}weight tensor should be defined either for all "
                                    f"{n_classes} classes or no classes but got weight tensor of shape: {list(weight.shape)}")
        return weight.astype(np.float64)

    if input.shape == target.shape:  # class probabilities
        if dtype_name(target.dtype) not in FLOAT_DTYPES:
            raise InvalidInputError(Rule.TARGET_DTYPE, "Expected floating point type for target with class "
                                    f"probabilities, got {_torch_name(target)}")
        if ignore_index >= 0:
            raise InvalidInputError(Rule.IGNORE_INDEX_WITH_PROBABILITIES,
                                    "ignore_index is not supported for floating point target")
        if input.ndim == 0:
            raise InvalidInputError(Rule.INPUT_SHAPE, "Dimension specified as 1 but tensor has no dimensions")
        class_axis = 0 if input.ndim == 1 else 1
        n_classes = input.shape[class_axis]
        w = check_weight(n_classes, "cross_entropy: ")
        check_input_dtype()
        check_smoothing()
        out = input.shape[:class_axis] + input.shape[class_axis + 1:] if reduction == "none" else ()
        return _Call("probability", input, target, w, ignore_index, reduction, smoothing, n_classes, out)

    # class indices
    check_smoothing()
    if input.ndim == 0:
        raise InvalidInputError(Rule.INPUT_SHAPE, "Dimension out of range (expected to be in range of [-1, 0], but got 1)")
    check_input_dtype()
    if input.ndim == 1:
        if target.ndim > 1:
            raise InvalidInputError(Rule.TARGET_SHAPE, "0D or 1D target tensor expected, multi-target not supported")
        if target.ndim == 1 and target.shape[0] != 1:
            raise InvalidInputError(Rule.TARGET_SHAPE,
                                    f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}")
        out_shape: tuple[int, ...] = ()
    else:
        if target.ndim == 0 or input.shape[0] != target.shape[0]:
            got = target.shape[0] if target.ndim else "none"
            raise InvalidInputError(Rule.TARGET_SHAPE,
                                    f"Expected input batch_size ({input.shape[0]}) to match target batch_size ({got}).")
        if input.ndim == 2 and target.ndim != 1:
            raise InvalidInputError(Rule.TARGET_SHAPE, "0D or 1D target tensor expected, multi-target not supported")
        if input.ndim > 2 and target.shape[1:] != input.shape[2:]:
            expected = [input.shape[0], *input.shape[2:]]
            raise InvalidInputError(Rule.TARGET_SHAPE, f"Expected target size {expected}, got {list(target.shape)}")
        out_shape = target.shape
    class_axis = 0 if input.ndim == 1 else 1
    n_classes = input.shape[class_axis]
    w = check_weight(n_classes)
    if dtype_name(target.dtype) not in ("int64", "uint8"):
        raise InvalidInputError(Rule.TARGET_DTYPE, f"expected target dtype to be Long or Byte, but got {_torch_name(target)}")
    if input.ndim > 2 and dtype_name(target.dtype) != "int64":  # the K-dim kernels take Long only
        raise InvalidInputError(Rule.TARGET_DTYPE, f"expected scalar type Long but found {_torch_name(target)}")
    flat = target.astype(np.int64).reshape(-1)
    counted = flat != ignore_index
    bad = counted & ((flat < 0) | (flat >= n_classes))
    if bad.any():
        raise InvalidInputError(Rule.TARGET_OUT_OF_BOUNDS, f"Target {int(flat[np.argmax(bad)])} is out of bounds.")
    return _Call("index", input, flat, w, ignore_index, reduction, smoothing, n_classes,
                 out_shape if reduction == "none" else ())


# -- arithmetic: one kernel, two number systems ------------------------------------------------
class _Float64:
    exact = False
    exp = staticmethod(np.exp)
    log1p = staticmethod(np.log1p)
    expm1 = staticmethod(np.expm1)

    @staticmethod
    def convert(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    @staticmethod
    def divide(numerator: Any, denominator: Any) -> Any:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.float64(numerator) / np.float64(denominator)

    @staticmethod
    def total(values: np.ndarray) -> Any:
        with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is NaN, as in torch
            return np.float64(np.sum(values))


class _Exact:
    exact = True
    exp = staticmethod(np.frompyfunc(mpmath.exp, 1, 1))
    log1p = staticmethod(np.frompyfunc(mpmath.log1p, 1, 1))
    expm1 = staticmethod(np.frompyfunc(mpmath.expm1, 1, 1))
    _mpf = np.frompyfunc(mpmath.mpf, 1, 1)

    @classmethod
    def convert(cls, values: np.ndarray) -> np.ndarray:
        array = np.asarray(values)
        if array.dtype == object:
            return array
        return np.asarray(cls._mpf(np.asarray(array, dtype=np.float64)), dtype=object)

    @staticmethod
    def divide(numerator: Any, denominator: Any) -> Any:
        numerator, denominator = mpmath.mpf(numerator), mpmath.mpf(denominator)
        if denominator == 0:
            if numerator == 0 or mpmath.isnan(numerator):
                return mpmath.mpf("nan")
            return mpmath.mpf("inf") if numerator > 0 else mpmath.mpf("-inf")
        return numerator / denominator

    @staticmethod
    def total(values: np.ndarray) -> Any:
        return mpmath.fsum(values.tolist()) if values.size else mpmath.mpf(0)


def _row_blocks(array: np.ndarray, class_axis: int, n_classes: int, dtype: Any = np.float64):
    """Yield (position slice, rows as (m, C) arrays of ``dtype``) chunks in position order (a view
    where no conversion or move is needed)."""
    if array.ndim == 1:
        yield slice(0, 1), np.asarray(array, dtype=dtype)[None, :]
        return
    per_item = math.prod(array.shape[2:]) if array.ndim > 2 else 1
    step = max(1, CHUNK_ELEMENTS // max(1, per_item * n_classes))
    for start in range(0, array.shape[0], step):
        block = array[start:start + step]
        rows = np.moveaxis(block, class_axis, -1).reshape(-1, n_classes).astype(dtype, copy=False)
        yield slice(start * per_item, start * per_item + rows.shape[0]), rows


def _write_rows(out: np.ndarray, positions: slice, rows: np.ndarray) -> None:
    """Inverse of :func:`_row_blocks` for one chunk: scatter (m, C) rows back into ``out``."""
    if out.ndim == 1:
        out[...] = rows[0]
        return
    per_item = math.prod(out.shape[2:]) if out.ndim > 2 else 1
    start = positions.start // per_item
    count = rows.shape[0] // per_item
    shaped = rows.reshape((count, *out.shape[2:], out.shape[1]))
    out[start:start + count] = np.moveaxis(shaped, -1, 1)


class _LogSoftmax(NamedTuple):
    shifted: np.ndarray  # x - max
    lse: np.ndarray  # log(sum(exp(x - max))), per row
    logp: np.ndarray
    p: np.ndarray  # exp(x - max) / sum: relative accuracy even for tiny probabilities
    finite_rows: np.ndarray  # False where the row max is +-inf or NaN: the whole row is NaN


def _log_softmax(rows: np.ndarray, A: Any) -> _LogSoftmax:
    with np.errstate(invalid="ignore", over="ignore"):
        row_max = rows.max(axis=1, keepdims=True)
        top = rows.argmax(axis=1)
        finite_max = np.isfinite(row_max[:, 0])
        shifted = A.convert(rows) - A.convert(row_max)
        terms = A.exp(shifted)
        r = np.arange(rows.shape[0])
        terms[r, top] = 0  # exp(0) == 1 enters through log1p
        rest = terms.sum(axis=1)
        lse = A.log1p(rest)
        terms[r, top] = 1
        p = terms / (rest + 1)[:, None]
        if not finite_max.all():  # torch: a row whose max is +-inf or NaN is NaN throughout
            lse = np.where(finite_max, lse, A.convert(np.full(rows.shape[0], np.nan)))
        logp = shifted - lse[:, None]
    return _LogSoftmax(shifted, lse, logp, p, finite_max)


@dataclass
class _Output:
    loss: Any
    loss_scale: Any
    loss_intermediate: Any
    grad_input: np.ndarray | None
    grad_input_scale: np.ndarray | None
    grad_target: np.ndarray | None
    grad_target_scale: np.ndarray | None
    sigmas: "Sigmas | None" = None
    grad_target_intermediate: np.ndarray | None = None
    elements: "dict[str, Any] | None" = None  # per-position arrays of the per-element gradient model


def _solve(call: _Call, A: Any, *, gradients: bool, grad_output: Any = None) -> _Output:
    """Loss (and closed-form gradients) of a validated call in arithmetic ``A``."""
    C, eps, M = call.n_classes, call.smoothing, call.positions
    class_axis = 0 if call.input.ndim == 1 else 1
    w = None if call.weight is None else A.convert(call.weight)
    w_abs = None if call.weight is None else np.abs(call.weight)
    want_scale = not A.exact
    g = None if grad_output is None else np.asarray(grad_output, dtype=np.float64)

    if call.mode == "index":
        y = call.target
        valid = y != call.ignore_index
        y_safe = np.where(valid, y, 0)
        wy_all = A.convert(call.weight[y_safe] if call.weight is not None else np.ones(M))
        wy_all = np.where(valid, wy_all, A.convert(np.zeros(M)))
        denominator = A.total(wy_all) if call.reduction == "mean" else None
    else:
        valid = np.ones(M, dtype=bool)
        denominator = M if call.reduction == "mean" else None

    # Upstream gradient per position (None: gradients not requested).
    if call.reduction == "none":
        upstream = A.convert(np.ones(M) if g is None else g.reshape(-1))
    else:
        g_scalar = 1.0 if g is None else float(g)
        upstream_scalar = A.divide(g_scalar, denominator) if call.reduction == "mean" else A.convert(np.float64(g_scalar))
        upstream = np.full(M, upstream_scalar, dtype=object if A.exact else np.float64)

    main_terms = A.convert(np.zeros(M))  # weighted NLL or probability cross-entropy per position
    smooth_terms = A.convert(np.zeros(M))  # the label-smoothing sum per position (index mode)
    loss_mag = np.zeros(M)
    unscaled_mag = np.zeros(M)
    # tolerance model v2: standard deviation of a correct implementation's error, per position
    # (see conformance.tolerance): u_c is the unit roundoff of the precision the kernel computes in
    u_c = _unit_roundoff(call.dtype)
    u_t = _unit_roundoff(call.dtype, internal=False)
    lse_sigma = np.zeros(M)  # absolute error of log-sum-exp (= relative error of the exp sum)
    lse_bias = np.zeros(M)  # ... its part from terms lost (toward zero in every row), as a sigma
    half_backward = gradients and u_t > u_c  # torch's half backward: p = exp(log p rounded to the dtype)
    flush_bound = np.zeros(M)  # what flushing subnormal partial products to zero may lose, per position
    compute = compute_dtype(dtype_name(call.dtype))
    repetitive = np.zeros(M, dtype=bool)  # rows of few distinct values: their errors add up linearly
    loss_sigma = np.zeros(M)
    loss_bias = np.zeros(M)  # loss_sigma's part from lse_bias: the reduction adds it linearly
    lse_rounding = np.zeros(M)  # lse_sigma's part that is one rounding (of lse, where a kernel forms it)
    # loss_sigma's parts (sigmas in quadrature) that are roundings to nearest of known size: a half dtype's
    # log p_y, lse (one rounding each, half an ulp), the probability path's products t log p (a few each)
    loss_rounding = np.zeros((M, 3))
    rounding_bound = np.zeros(M)  # ... and the most they err by together
    grad_target_coefficient = np.zeros(M)  # |d grad_target / d lse| per position
    grad_target_underflow = np.zeros(M)  # largest error of a subnormal partial product in w * log p * scale
    backward_sigma = np.zeros(M)  # error of the backward's sum of upstream terms over classes, times max p
    # per-element model of the input gradient (conformance.gradient_elements), per position
    terms_sum = np.zeros(M)  # K: the signed sum of the backward's upstream terms
    terms_abs = np.zeros(M)  # their absolute sum
    log_total = np.zeros(M)  # log S = lse - max
    lse_abs = np.zeros(M)
    backward_relative = np.zeros(M)  # the error of the sum K, relative to K: random (distinct terms)
    backward_bias = np.zeros(M)  # ... or a bias (equal terms eps / C: lost, or rounding alike)
    grad_input = grad_target = grad_input_scale = grad_target_scale = None
    if gradients:
        # every path below writes every gradient row (chunk by chunk), so float64 ones may be
        # recycled memory (buffers: at vocabulary scale fresh pages cost as much as the judging)
        new = (lambda shape: np.zeros(shape, dtype=object)) if A.exact else buffers.empty
        grad_input = new(call.input.shape)
        grad_input_scale = np.zeros(M) if want_scale else None
        if call.mode == "probability":
            grad_target = new(call.input.shape)
            grad_target_scale = np.zeros(M) if want_scale else None
            grad_target_unscaled = np.zeros(M) if want_scale else None

    target_blocks = _row_blocks(call.target, class_axis, C) if call.mode == "probability" else None
    # the fused kernel reads float32 rows as they are (half values are exact in float32)
    fusable = not A.exact and call.mode == "index" and eps == 0 and engine.available()
    narrow = fusable and dtype_name(call.input.dtype) in ("float16", "bfloat16", "float32")
    direct = gradients and call.input.ndim == 2  # (N, C): gradient rows are slices of the output
    for positions, rows in _row_blocks(call.input, class_axis, C, np.float32 if narrow else np.float64):
        fused = None if not fusable else _fused_index_rows(
            rows, y_safe[positions], wy_all[positions], upstream[positions], u_c, gradients,
            out=grad_input[positions] if direct else None)
        if fused is not None:  # the same quantities as the general path below, from one kernel
            v = valid[positions]
            wy_abs = np.abs(fused.weight)
            lse_sigma[positions] = u_c * np.hypot(fused.root, fused.rss) / np.sqrt(3.0)
            lse_bias[positions] = u_c * fused.root_lost / np.sqrt(3.0)
            repetitive[positions] = fused.distinct < C / 2
            terms_sum[positions] = np.where(v, fused.weight, 0)
            terms_abs[positions] = np.abs(terms_sum[positions])
            log_total[positions] = fused.lse
            lse_abs[positions] = np.abs(fused.top + fused.lse)
            lse_rounding[positions] = _lse_rounding(compute, lse_abs[positions], fused.lse)
            lse_sigma[positions] = np.hypot(lse_sigma[positions], lse_rounding[positions])
            with np.errstate(invalid="ignore", over="ignore"):
                main_terms[positions] = np.where(v, fused.weight * fused.nll, 0)
                loss_mag[positions] = unscaled_mag[positions] = np.where(v, wy_abs * (fused.nll + 1), 0)
                loss_sigma[positions] = np.where(v, wy_abs * np.hypot(lse_sigma[positions], _row_roundings(
                    u_c, u_t, fused.nll, fused.lse, call.weight is not None, dtype_name(call.dtype))), 0)
                loss_bias[positions] = np.where(v, wy_abs * lse_bias[positions], 0)
                loss_rounding[positions, :2] = np.where(v[:, None], wy_abs[:, None] * np.stack([_dtype_rounding(
                    u_c, u_t, fused.nll, fused.lse, dtype_name(call.dtype)), lse_rounding[positions]], axis=1), 0)
                rounding_bound[positions] = math.sqrt(3.0) * loss_rounding[positions].sum(axis=1)
                if call.weight is not None:  # w_y * nll: with subnormals flushed, a tiny product vanishes
                    flush_bound[positions] = np.where(v, flushed_pairs(wy_abs, fused.nll, compute), 0)
                if gradients:
                    if half_backward:
                        backward_sigma[positions] = np.where(v, _logp_rounding(fused.scale, wy_abs, u_t, fused.p_logp), 0)
                    fused.grad[~v] = 0
                    if not direct:
                        _write_rows(grad_input, positions, fused.grad)
                    grad_input_scale[positions] = np.where(v, np.abs(fused.scale) * wy_abs * (fused.p_target + 1), 0)
            continue
        rows = rows.astype(np.float64, copy=False)
        m = rows.shape[0]
        r = np.arange(m)
        ls = _log_softmax(rows, A)
        if want_scale:
            with np.errstate(invalid="ignore", over="ignore"):
                p64 = np.where(ls.finite_rows[:, None], ls.p, 0.0)
                root, root_lost = summation_root(p64, u_c, repetitive[positions], bias=True)
                lse_sigma[positions] = u_c * np.hypot(root, root_sum_squares(p64)) / np.sqrt(3.0)
                lse_bias[positions] = u_c * root_lost / np.sqrt(3.0)
                abs_logp = np.abs(np.where(np.isfinite(ls.logp), ls.logp, 0.0))
                p_logp = finite_row_max(p64 * abs_logp) if half_backward else None
                log_total[positions] = np.asarray(ls.lse, dtype=np.float64)
                lse_abs[positions] = np.abs(rows.max(axis=1) + log_total[positions])  # NaN or inf: a row-level row
                lse_rounding[positions] = _lse_rounding(compute, lse_abs[positions], log_total[positions])
                lse_sigma[positions] = np.hypot(lse_sigma[positions], lse_rounding[positions])
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if call.mode == "index":
                v = valid[positions]
                yb = y_safe[positions]
                wy = wy_all[positions]
                nll = ls.lse - ls.shifted[r, yb]
                main_terms[positions] = np.where(v, wy * nll, 0)
                if want_scale and call.weight is not None:  # flushed tiny products (see the probability path)
                    flushed = (1 - eps) * flushed_pairs(np.asarray(wy, dtype=np.float64), nll, compute)
                    if eps > 0:  # eps / C * w * log p: any order's first partial product may be subnormal
                        # (1.2e-38 weights times eps / C = 0.18: XLA's float32 loss 1.51 for 1.93)
                        flushed = flushed + flushed_products((np.full(ls.logp.shape, eps / C), np.broadcast_to(
                            w_abs[None, :], ls.logp.shape), np.abs(ls.logp)), compute)
                    flush_bound[positions] = np.where(v, flushed, 0)
                if eps > 0:
                    weighted_logp = ls.logp * w if w is not None else ls.logp
                    smooth_terms[positions] = np.where(v, -weighted_logp.sum(axis=1), 0)
                if want_scale:
                    wy_abs = np.abs(np.asarray(wy, dtype=np.float64))
                    mag = (1 - eps) * wy_abs * (np.asarray(nll, dtype=np.float64) + 1)
                    unscaled = mag / (1 - eps) if eps < 1 else wy_abs * (np.asarray(nll, dtype=np.float64) + 1)
                    if eps > 0:
                        abs_logp = np.abs(ls.logp) + 1
                        smooth_mag = (abs_logp * w_abs if w_abs is not None else abs_logp).sum(axis=1)
                        mag = mag + (eps / C) * smooth_mag
                        unscaled = np.maximum(unscaled, smooth_mag)
                    loss_mag[positions] = np.where(v, mag, 0)
                    unscaled_mag[positions] = np.where(v, unscaled, 0)
                    coefficient = (1 - eps) * wy_abs
                    if eps > 0:
                        w_row = w_abs if w_abs is not None else np.ones(C)
                        coefficient = coefficient + (eps / C) * w_row.sum()
                        smooth_terms_abs = abs_logp * w_row
                        groups = residue_groups(rows, smooth_terms_abs, w_row, call.values_dtype, u_c)
                        smooth_rss = root_sum_squares(smooth_terms_abs)
                        smooth_root, smooth_lost = summation_root(smooth_terms_abs, u_c, groups=groups, bias=True)
                        sigma_smooth = (eps / C * u_c / np.sqrt(3.0)) * np.hypot(smooth_root, smooth_rss)
                        if u_t > u_c:  # torch's half log-softmax rounds every log p to the dtype
                            sigma_smooth = np.hypot(sigma_smooth, eps / C * u_t / np.sqrt(3.0) * smooth_rss)
                        # the two parts scaled and added, per row (a fused kernel) or once reduced (torch);
                        # unreduced, torch's half kernels scale them, and round the smoothing sum, in the
                        # dtype (v2.5 took float32's u there: torch's bfloat16 'none' loss with smoothing
                        # was 1.07 ulps off against 1.06 allowed, found by hypothesis.target() in the CI gate)
                        in_dtype = call.reduction == "none" and u_t > u_c
                        smooth_part = eps / C * np.abs(np.asarray(smooth_terms[positions], dtype=np.float64))
                        sigma_smooth = np.hypot(sigma_smooth, (u_t if in_dtype else u_c) / np.sqrt(3.0) * np.hypot(
                            np.hypot((1 - eps) * wy_abs * np.asarray(nll, dtype=np.float64), smooth_part),
                            smooth_part if in_dtype else 0.0))
                    else:
                        sigma_smooth = np.zeros(m)
                    # log S's rounding is every log p's of the row: it goes with the whole coefficient
                    shared = coefficient * np.hypot(lse_sigma[positions], _log_rounding(u_c, log_total[positions]))
                    own = (1 - eps) * wy_abs * _row_roundings(u_c, u_t, np.asarray(nll, dtype=np.float64), log_total[positions],
                                                              call.weight is not None, dtype_name(call.dtype), log=False)
                    loss_sigma[positions] = np.where(v, np.hypot(np.hypot(sigma_smooth, shared), own), 0)
                    loss_bias[positions] = np.where(v, coefficient * lse_bias[positions] + (
                        eps / C * u_c / np.sqrt(3.0) * smooth_lost if eps > 0 else 0.0), 0)
                    loss_rounding[positions, :2] = np.where(v[:, None], np.stack([(1 - eps) * wy_abs * _dtype_rounding(
                        u_c, u_t, np.asarray(nll, dtype=np.float64), log_total[positions], dtype_name(call.dtype)),
                        coefficient * lse_rounding[positions]], axis=1), 0)
                    rounding_bound[positions] = math.sqrt(3.0) * loss_rounding[positions].sum(axis=1)
                if gradients:
                    scale = upstream[positions]
                    p = ls.p
                    grad = p * ((1 - eps) * wy)[:, None]
                    grad[r, yb] = (1 - eps) * wy * A.expm1(ls.logp[r, yb])
                    if eps > 0:
                        total_w = A.total(w) if w is not None else C
                        grad = grad + (eps / C) * (p * total_w - (w[None, :] if w is not None else 1))
                    grad = np.where(v[:, None], grad * scale[:, None], 0)
                    _write_rows(grad_input, positions, _nan_rows(grad, ls.finite_rows, A))
                    if want_scale:
                        p64 = np.asarray(p, dtype=np.float64)
                        onehot = np.zeros_like(p64)
                        onehot[r, yb] = 1
                        gmag = (1 - eps) * wy_abs[:, None] * (p64 + onehot)
                        if eps > 0:
                            w_row = w_abs if w_abs is not None else np.ones(C)
                            gmag = gmag + (eps / C) * (p64 * w_row.sum() + w_row[None, :])
                        grad_input_scale[positions] = np.where(v, np.abs(scale) * finite_row_max(gmag), 0)
                        k = (1 - eps) * np.asarray(wy, dtype=np.float64)
                        if eps > 0:
                            k = k + (eps / C) * float(total_w)
                        terms_sum[positions] = np.where(v, k, 0)
                        terms_abs[positions] = np.where(v, (1 - eps) * wy_abs + (
                            (eps / C) * (w_abs.sum() if w_abs is not None else C) if eps > 0 else 0.0), 0)
                        if eps > 0:  # log-softmax backward sums the upstream terms over classes
                            upstream_terms = np.broadcast_to((eps / C) * (w_abs if w_abs is not None else np.ones(C)), p64.shape).copy()
                            upstream_terms[r, yb] += (1 - eps) * wy_abs
                            # torch's K-dim backward sums these over a strided class axis; measured there:
                            # errors that add up linearly (20 sigma of a random walk at C = 262144): the
                            # equal terms' residues below, which hold wherever the target sits in the sum
                            strided = np.full(m, call.input.ndim > 2)
                            upstream_root = u_c * summation_root(upstream_terms, u_c, linear=strided) / np.sqrt(3.0)
                            bias_root = upstream_root  # backward_bias's: a sigma whose SIGMAS hold each bias once
                            # a kernel may sum the upstream terms scaled (g / N * eps / C) or scale their sum
                            scales = np.unique(np.append(np.abs(np.asarray(scale, dtype=np.float64)[v]), 1.0))
                            if w_abs is None and scales.size <= 9:  # 1 and at most 8 upstream scales
                                # C - 1 equal terms eps / C: the residues their additions really round away,
                                # over the orders kernels sum in, instead of the linear bound's worst ones
                                name = dtype_name(call.dtype)
                                residues = equal_terms_bound(eps / C, C - 1, (1 - eps) + eps / C, compute_dtype(name),
                                                             tuple(scales), name if u_t > u_c else None)
                                combined = (math.log2(EQUAL_TERM_LANES) + 1) * u_c * terms_abs[positions]
                                # both are bounds over the orders: the row's sigma (in quadrature with random
                                # errors) takes them as a uniform error's; the elements' bias, added linearly,
                                # holds them once (until 2026-12-06 2.9 times: float32 C = 128256 smoothed
                                # softmax, 4.19x the family's largest error, whose sequential sum realised 0.75
                                # of the bound)
                                upstream_root = np.minimum(upstream_root, np.hypot(residues, combined) / np.sqrt(3.0))
                                bias_root = np.minimum(bias_root, (residues + combined) / SIGMAS)
                            if w_abs is not None:  # tiny weights: what a flushing kernel loses of K (the
                                # probability path's note); all toward zero, so a bias
                                upstream_root = np.hypot(upstream_root, _flushed_sigma(
                                    np.full(upstream_terms.shape, eps / C), w_abs[None, :], scale, compute))
                                bias_root = upstream_root
                            backward_sigma[positions] = np.where(v, np.abs(scale) * p64.max(axis=1, initial=0)
                                                                 * upstream_root, 0)
                            if u_t > u_c:
                                # half dtypes: the upstream terms s eps / C w are formed in the dtype; below its
                                # normal range each errs by up to half a subnormal step, all alike: a bias of K
                                # (float16, C = 32000, eps = 0.1, 8 rows: 3.9e-7 rounds to 4.2e-7, torch's K 0.7 %
                                # high, and its gradient with it)
                                # — a bound, held once beside the residues (until 2026-12-06 as a uniform error's
                                # sigma in quadrature, 2.9 times: float16 C >= 128256 smoothed softmax 4.4-5.5x the
                                # family, torch realising a quarter of it)
                                formed = alike_subnormal_bound(np.abs(scale)[:, None] * upstream_terms,
                                                               dtype_name(call.dtype))
                                with np.errstate(divide="ignore", invalid="ignore"):
                                    flushed = np.nan_to_num(formed / np.abs(scale), posinf=0.0)
                                bias_root = bias_root + flushed / SIGMAS
                            # C - 1 terms eps / C (times a class weight): each lost below u times the partial
                            # sum, or rounding alike where equal, so the sum's error is a bias that
                            # gradient_elements adds linearly (with distinct weights partly random: linear
                            # is then conservative, at most sqrt 2 of that part)
                            backward_bias[positions] = np.where(v & (terms_abs[positions] > 0), bias_root
                                                                / np.where(terms_abs[positions] > 0, terms_abs[positions], 1), 0)
                        if half_backward:
                            p_coefficient = (1 - eps) * wy_abs + ((eps / C) * w_row.sum() if eps > 0 else 0.0)
                            backward_sigma[positions] = np.hypot(backward_sigma[positions], np.where(
                                v, _logp_rounding(scale, p_coefficient, u_t, p_logp), 0))
            else:
                _, t_rows = next(target_blocks)
                t = A.convert(t_rows)
                if eps > 0:
                    t = t * (1 - eps) + eps / C
                wt = t * w if w is not None else t
                main_terms[positions] = -(wt * ls.logp).sum(axis=1)
                if want_scale:
                    # a smoothed target is formed (and rounded, in the dtype) from its two parts: its
                    # magnitude is theirs, not that of a sum that may cancel to nothing (t = -eps / (C (1 - eps)))
                    t_abs = np.abs(t_rows) * (1 - eps) + eps / C if eps > 0 else np.abs(np.asarray(t, dtype=np.float64))
                    abs_wt = t_abs * w_abs[None, :] if w_abs is not None else t_abs
                    loss_mag[positions] = (abs_wt * (np.abs(ls.logp) + 1)).sum(axis=1)
                    # torch forms t * logp (and w * logp) elementwise before the weighted sum: such a
                    # product may overflow the dtype although the weighted result does not
                    partial = partial_t = t_abs
                    if w_abs is not None:
                        partial = np.maximum(partial, w_abs[None, :])
                    unscaled_mag[positions] = np.maximum(loss_mag[positions],
                                                         finite_row_max(partial * (np.abs(ls.logp) + 1)))
                    term_abs = np.asarray(abs_wt, dtype=np.float64) * abs_logp
                    # half dtypes: torch rounds log-probabilities and products to the dtype (u_t) per term
                    groups = residue_groups(rows, term_abs, abs_wt, call.values_dtype, u_c)
                    term_root, term_lost = summation_root(term_abs, u_c, groups=groups, bias=True)
                    weights_total = np.asarray(abs_wt, dtype=np.float64).sum(axis=1)
                    loss_sigma[positions] = np.hypot(np.hypot(u_c * term_root / np.sqrt(3.0),
                                                              u_t * root_sum_squares(term_abs)),
                                                     weights_total * np.hypot(
                                                         lse_sigma[positions], _log_rounding(u_c, log_total[positions])))
                    # the products' sum loses its small terms toward zero in every row, as the exp sum does
                    loss_bias[positions] = weights_total * lse_bias[positions] + u_c * term_lost / np.sqrt(3.0)
                    # products of concentrated residues (a teacher's tail times log p: 1.1 ulps of the partial
                    # sums, give or take 15 %) round alike: a bias, held once (summation.order_bias)
                    ordered = _ordered_bias(term_abs, compute, dtype_name(call.dtype) if u_t > u_c else None,
                                            np.ones(m)) / SIGMAS
                    loss_sigma[positions] += ordered
                    loss_bias[positions] += ordered
                    loss_rounding[positions, 1] = weights_total * lse_rounding[positions]
                    # each product t log p: log p's roundings (x - max and the subtraction in float32, within
                    # 2 u_c |log p|; a half dtype's rounding of it), the products with t and w, each within u
                    # of its result; sigma u_t |term| in quadrature, at most their sum (two-class soft targets:
                    # 5 sigma of two terms was 1.8 times that bound)
                    loss_rounding[positions, 2] = u_t * root_sum_squares(term_abs)
                    per_term = (2 * u_c + (u_t if u_t > u_c else 0.0)  # log p's roundings
                                + max(u_t, u_c) * (2 if w_abs is not None else 1))  # the products'
                    rounding_bound[positions] = math.sqrt(3.0) * loss_rounding[positions, 1] \
                        + per_term * (1 + 4 * u_t) * np.asarray(term_abs, dtype=np.float64).sum(axis=1)
                    if w_abs is not None:  # t * w * log p: with subnormals flushed, tiny products vanish
                        flush_bound[positions] = flushed_products(
                            (np.broadcast_to(w_abs[None, :], rows.shape), partial_t, abs_logp), compute)
                    if u_t > u_c:  # below the dtype's normal range a rounding errs by up to half a subnormal step
                        half_step = smallest_subnormal(dtype_name(call.dtype)) / 2
                        normal = smallest_normal(dtype_name(call.dtype))
                        w_factor = w_abs[None, :] if w_abs is not None else 1.0
                        if eps > 0:  # the smoothed target, formed in the dtype, times |log p|: float16
                            # eps / C = 1.2e-8 becomes 0, times |log p| = 65505 (a 0.003 loss, seen). Alike for
                            # every target, whatever its value: t (1 - eps) rounds to whole subnormal steps, to
                            # which eps / C adds the same fraction of a step, rounded the same way (float16,
                            # C = 262144, eps = 0.9: +0.4 steps on 3.4e-6, torch's loss 0.7 % high)
                            tiny = t_abs < normal
                            flush_bound[positions] += (np.where(tiny, half_step, 0.0) * w_factor * abs_logp).sum(axis=1)
                            # in the normal range each formed target errs by up to half its ulp, alike where the
                            # targets are equal (every class at eps = 1, the zero targets' eps / C otherwise): a
                            # bias of those classes' sum (float16 K-dim, C = 4097, eps = 1, weights with zeros:
                            # 1 / C rounds 0.02 % high in every class, and torch's 'mean' was 1.17 ulps off
                            # against 1.1 allowed, a false alarm the nightly family drew on 2026-12-06)
                            half_ulp = np.asarray(ulp(t_abs, dtype_name(call.dtype)), dtype=np.float64) / 2
                            flush_bound[positions] += alike_root(  # (the target's rounding, whatever the weight)
                                np.where(tiny, 0.0, half_ulp * w_factor * abs_logp), t_abs + 0.0)
                        else:  # a given target is exact: only a product t * log p below normal rounds, and
                            # nothing larger than w multiplies it (a bound of the first kind cost float16 rows of
                            # 32000 soft targets 20x the error of every correct implementation). torch forms
                            # t * log p of log p rounded to the dtype; such roundings are to nearest, alike for
                            # equal products (and weights), independent for distinct ones (alike_root), and
                            # enter flush_bound as a uniform error of that size (until 2026-12-06 half a step
                            # per product, added linearly: float16 rows of 262144 soft targets, 190000 products
                            # below normal, were allowed 6.8 times the correct family's largest loss error)
                            exact = t_abs * abs_logp
                            tiny = (exact < normal) & (exact > 0)  # a zero target's 0 * log p is exact
                            if tiny.any():  # (bfloat16 products rarely are: its normal range is float32's)
                                formed = t_abs * np.asarray(round_to(abs_logp, dtype_name(call.dtype)), dtype=np.float64)
                                flush_bound[positions] += half_step * alike_root(
                                    np.where(tiny, np.broadcast_to(w_factor, rows.shape), 0.0),
                                    pair_keys(formed, np.broadcast_to(w_factor, rows.shape)))
                if gradients:
                    scale = upstream[positions]
                    p = ls.p
                    grad = p * (wt.sum(axis=1)[:, None] - wt) + wt * A.expm1(ls.logp)
                    _write_rows(grad_input, positions, _nan_rows(grad * scale[:, None], ls.finite_rows, A))
                    factor = (1 - eps) if eps > 0 else 1.0
                    w_full = w[None, :] if w is not None else 1
                    _write_rows(grad_target, positions, -(w_full * ls.logp) * (factor * scale)[:, None])
                    if want_scale:
                        abs_scale = np.abs(scale)
                        gmag = p * (abs_wt.sum(axis=1)[:, None]) + abs_wt
                        grad_input_scale[positions] = abs_scale * finite_row_max(gmag)
                        upstream_root = u_c * summation_root(np.asarray(abs_wt, dtype=np.float64), u_c) / np.sqrt(3.0)
                        backward_sigma[positions] = abs_scale * np.nan_to_num(np.asarray(p, dtype=np.float64)).max(
                            axis=1, initial=0) * upstream_root
                        k = np.asarray(wt.sum(axis=1), dtype=np.float64)
                        terms_sum[positions] = k
                        terms_abs[positions] = np.asarray(abs_wt, dtype=np.float64).sum(axis=1)
                        # half dtypes: torch forms each upstream term (- g w t, the smoothed t) in the dtype,
                        # one rounding per product, before the backward sums K; added linearly (terms that
                        # round alike, a uniform target's, make a bias), each rounding a uniform one's sigma
                        half_terms = _term_rounding(u_t, eps, w_abs is not None) * terms_abs[positions] \
                            if u_t > u_c else 0.0
                        # a kernel that flushes subnormals (XLA on CPU) loses products w t s below the
                        # normal range whole, all toward zero: K's bias (JAX's float32 gradient with
                        # weights of 1.2e-38 on 255 soft targets: 12 % low)
                        half_terms = np.hypot(half_terms, _flushed_sigma(
                            w_abs[None, :] if w_abs is not None else 1.0, t_abs, scale, compute))
                        if u_t > u_c and (w_abs is not None or eps > 0):
                            # a product (or smoothed target) formed in the dtype below its normal range errs by
                            # up to half a subnormal step, and such terms are alike, so they round alike: a
                            # bias, added whole (float16 weights of 1e-3 on 16096 soft targets of 6e-5:
                            # products of 1.5 steps, torch's K and so its gradient 1.8 % off)
                            half_terms = np.hypot(half_terms, alike_subnormal_bound(abs_wt, dtype_name(call.dtype))
                                                  / np.sqrt(3.0))
                        # terms whose residues concentrate (a smoothed target's eps / C where t is tiny) round
                        # alike: a bias of K, held once by the elements (summation.order_bias)
                        ordered = _ordered_bias(abs_wt, compute, dtype_name(call.dtype) if u_t > u_c else None, scale)
                        backward_sigma[positions] = np.hypot(backward_sigma[positions], abs_scale * np.nan_to_num(
                            np.asarray(p, dtype=np.float64)).max(axis=1, initial=0) * ordered / np.sqrt(3.0))
                        with np.errstate(divide="ignore", invalid="ignore"):
                            backward_bias[positions] = np.nan_to_num(ordered / SIGMAS / np.abs(k), posinf=0.0)
                        with np.errstate(divide="ignore", invalid="ignore"):
                            backward_relative[positions] = np.nan_to_num(np.hypot(upstream_root, half_terms) / np.abs(k),
                                                                         posinf=0.0)
                        if half_backward:
                            backward_sigma[positions] = np.hypot(backward_sigma[positions], _logp_rounding(
                                scale, np.asarray(abs_wt, dtype=np.float64).sum(axis=1), u_t, p_logp))
                        w_row = w_abs if w_abs is not None else np.ones(C)
                        tmag = w_row[None, :] * (np.abs(ls.logp) + 1) * factor
                        grad_target_scale[positions] = abs_scale * finite_row_max(tmag)
                        # the backward multiplies log p by w and by the upstream scale, in either order;
                        # a product of a finite log p that overflows counts (inf: JAX's float64 (g log p)
                        # (1 - eps) overflowed where g ((1 - eps) log p) = 1.4e308), a -inf logit's does not
                        abs_logp_row = np.abs(ls.logp)
                        with np.errstate(over="ignore", invalid="ignore"):
                            grad_target_unscaled[positions] = np.where(np.isfinite(abs_logp_row), np.maximum(
                                w_row[None, :], np.reshape(abs_scale, (-1, 1))) * (abs_logp_row + 1), 0).max(
                                axis=1, initial=0)
                        grad_target_coefficient[positions] = abs_scale * factor * w_row.max(initial=0)
                        grad_target_underflow[positions] = subnormal_products(
                            (np.broadcast_to(w_row[None, :], p.shape), ls.logp, np.reshape(abs_scale * factor, (-1, 1))),
                            dtype_name(call.dtype))

    if call.mode == "probability":
        eps = 0.0  # smoothing already entered the targets; there is no separate smoothing term
    with np.errstate(invalid="ignore", over="ignore"):
        combined = (1 - eps) * main_terms + (eps / C) * smooth_terms if eps > 0 else main_terms
    if call.reduction == "none":
        loss = combined.reshape(call.output_shape)
        loss_scale = loss_mag.reshape(call.output_shape) if want_scale else None
    elif call.reduction == "sum":
        loss = _combine(A, eps, C, A.total(main_terms), A.total(smooth_terms), 1)
        loss_scale = np.float64(loss_mag.sum()) if want_scale else None
    else:
        loss = _combine(A, eps, C, A.total(main_terms), A.total(smooth_terms), denominator)
        loss_scale = _Float64.divide(loss_mag.sum(), abs(float(denominator))) if want_scale else None
    with np.errstate(invalid="ignore", over="ignore"):
        if call.reduction == "none":
            intermediate = unscaled_mag.reshape(call.output_shape) if want_scale else None
        elif want_scale:
            # torch divides each unscaled sum by the mean's denominator before scaling it by eps / C
            candidates = [loss_mag.sum(), unscaled_mag.sum()]
            if call.reduction == "mean" and denominator:
                candidates.append(unscaled_mag.sum() / abs(float(denominator)))
            intermediate = np.float64(max(candidates))
        else:
            intermediate = None
    sigmas = _reduced_sigmas(call, A, eps, C, u_c, u_t, main_terms, smooth_terms, loss, wy_all if call.mode == "index" else None,
                             denominator, lse_sigma, loss_sigma, loss_bias, loss_rounding, rounding_bound,
                             grad_input_scale, grad_target_coefficient,
                             grad_target_underflow, flush_bound,
                             grad_target_scale, repetitive, backward_sigma) if want_scale else None
    elements = None
    if gradients and want_scale:
        scale64 = np.asarray(upstream, dtype=np.float64)
        finite_rows = np.isfinite(lse_abs) & np.isfinite(log_total) & np.isfinite(scale64) & np.isfinite(terms_sum)
        elements = dict(scale=scale64, terms_sum=terms_sum, log_total=log_total, backward_relative=backward_relative,
                        backward_bias=backward_bias,
                        absolute=_subnormal_sigma(call, scale64, terms_abs),
                        elementwise=finite_rows & valid & (terms_abs > 0)
                        & (np.abs(terms_sum) >= CANCELLING * terms_abs),
                        unit_roundoff=u_c, half_roundoff=u_t if half_backward else 0.0,
                        subtracted_relative=_subtracted_rounding(u_t, eps, call.weight is not None),
                        target_coefficient=(1 - eps) * np.asarray(wy_all, dtype=np.float64) if call.mode == "index" else None)
    return _Output(loss, loss_scale, intermediate, grad_input, grad_input_scale, grad_target, grad_target_scale, sigmas,
                   grad_target_unscaled if call.mode == "probability" and gradients else None, elements)


def _flushed_sigma(first: Any, second: Any, scale: np.ndarray, compute: str) -> np.ndarray:
    """Per row, what a kernel flushing subnormals in ``compute`` loses of its sum of products
    ``first_c * second_c * |scale|`` (:func:`~ce_conformance.summation.flushed_products`), per unit
    of ``|scale|``, as a one-sided bound's sigma (all toward zero: a bias)."""
    scale = np.abs(np.asarray(scale, dtype=np.float64))
    shape = np.broadcast_shapes(np.shape(first), np.shape(second), scale[:, None].shape)
    lost = flushed_products(tuple(np.broadcast_to(f, shape) for f in (first, second, scale[:, None])), compute)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(lost / scale, nan=0.0, posinf=0.0) / np.sqrt(3.0)


def _lse_rounding(compute: str, lse_abs: np.ndarray, log_total: np.ndarray) -> np.ndarray:
    """Sigma of the rounding of ``lse = max + log S`` where a kernel forms it as one number
    (``log p = x - lse``, ``p = exp(x - lse)``: flash-attention's and cut-cross-entropy's Triton
    kernels): every log p shifts by up to half an ulp of ``lse`` in ``compute`` (sigma: the ulp over
    sqrt 12), and by no more than ``log S`` (``max`` itself is representable), so a confident row
    keeps its exact log-sum-exp. Until 2026-12-06 ``u |lse| / sqrt 3``, up to twice as much: a
    float64 two-class gradient was allowed 8 times the correct family's largest error."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.nan_to_num(np.minimum(_ulp_sigma(lse_abs, compute), np.abs(log_total) / math.sqrt(3.0)))


LOG_ULPS: Final = 1.0
"""How far libm's ``log`` may be from its correctly rounded result, in ulps (glibc, LLVM's and
NumPy's SIMD logs are within one)."""


def _log_rounding(u: float, log_total: np.ndarray) -> np.ndarray:
    """Sigma of the rounding of ``log S`` (up to :data:`LOG_ULPS` ulps, ``2 u |log S|`` each). Every
    log-probability of the row shares it, so it enters a loss times the row's whole coefficient."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(2 * LOG_ULPS * u * np.abs(log_total)) / math.sqrt(3.0)


def _row_roundings(u_c: float, u_t: float, nll: np.ndarray, log_total: np.ndarray, weighted: bool,
                   dtype: str, log: bool = True) -> np.ndarray:
    """Per position and unit weight, sigma of the roundings that make the target's ``-log p`` of
    ``x_y``, the maximum and ``log S``: ``x_y - max`` (``|nll| - log S`` in size), the
    subtraction (``|nll|``), ``log S`` itself where ``log``; torch's half log-softmax rounds
    ``log p`` to the dtype, and a weight's product is one more rounding. Before model v2.5 the
    base budget held them, as four ulps of the loss's magnitude whatever the batch; as roundings
    of single positions they average out over a reduction, as every correct kernel's do.

    The half dtype's rounding of ``log p`` is one rounding to nearest of a known value: its ulp
    over sqrt 12, as :func:`_rounding_sigma` charges a result in the dtype, but the ulp taken at
    the float32 value the kernel rounds, not 8 of the dtype's eps above it. Until model v2.8
    ``u |log p| / sqrt 3``, up to twice as much, beside a half base that already holds an ulp of
    the loss: the unbatched bfloat16 and float16 'mean' losses of two and 4097 classes were
    allowed 4.6-5.2 times the correct family's largest error."""
    with np.errstate(invalid="ignore"):
        nll = np.abs(np.nan_to_num(np.asarray(nll, dtype=np.float64), posinf=0.0))
        log_s = np.abs(np.nan_to_num(np.asarray(log_total, dtype=np.float64), posinf=0.0))
        # hypot, not a sum of squares: logits near float64's top make nll 1e305, whose square
        # overflows, and an infinite sigma times a zero coefficient (smoothing 1) was NaN, read as
        # no sigma at all
        root = np.hypot(u_c * np.maximum(nll - log_s, 0.0), u_c * nll)
        if log:
            root = np.hypot(root, 2 * LOG_ULPS * u_c * log_s)
        if u_t > u_c:  # in root's units (u |x|, a sigma once over sqrt 3): sqrt 3 times the sigma
            root = np.hypot(root, math.sqrt(3.0) * _dtype_rounding(u_c, u_t, nll, log_total, dtype))
        if weighted:
            root = np.hypot(root, max(u_t, u_c) * nll)
        return root / math.sqrt(3.0)


def _dtype_rounding(u_c: float, u_t: float, nll: np.ndarray, log_total: np.ndarray, dtype: str) -> np.ndarray:
    """Per position and unit weight, sigma of a half dtype's rounding of the target's ``log p``
    (torch's half log-softmax output; 0 where the kernel computes in the dtype itself). One
    rounding to nearest: its error is at most half an ulp, ``sqrt 3`` sigma, which
    :func:`_reduced_sigmas` charges where that is less than ``SIGMAS`` sigma in quadrature. The
    value the kernel rounds is within a few ``u_c`` of its terms (not a few of the dtype's eps:
    bfloat16 ``log p = 1.9`` would take 2's ulp)."""
    if u_t <= u_c:
        return np.zeros(np.shape(nll))
    with np.errstate(invalid="ignore"):
        nll = np.abs(np.nan_to_num(np.asarray(nll, dtype=np.float64), posinf=0.0))
        log_s = np.abs(np.nan_to_num(np.asarray(log_total, dtype=np.float64), posinf=0.0))
        return np.nan_to_num(_ulp_sigma(nll, dtype, slack=8 * u_c * (nll + log_s)))


def _rounding_sigma(value: float, dtype: str) -> float:
    """Sigma of one rounding to nearest of a result of size ``|value|`` in ``dtype``: its ulp over
    sqrt 12 (an error uniform within half an ulp either way), the ulp taken a little above
    ``|value|`` (a computed result that crosses a power of two keeps its budget). ``u |value| / sqrt 3``
    before 2026-12-06: the same at the bottom of a binade, twice as much at its top (a smoothed
    float32 'mean' of two classes: 5 times the correct family's largest error).

    >>> round(_rounding_sigma(1.0, "float32") / 2.0**-23, 4), round(_rounding_sigma(1.99, "float32") / 2.0**-23, 4)
    (0.2887, 0.2887)
    """
    if not math.isfinite(value):
        return abs(value)  # an overflowing part: no limit (inf); a NaN one: none needed (NaN, read as 0)
    return float(_ulp_sigma(abs(value), dtype))


def _ulp_sigma(magnitude: Any, dtype: str, slack: Any = None) -> np.ndarray:
    """ulp / sqrt 12 of ``dtype`` a little above ``magnitude`` (elementwise): one rounding's sigma.
    ``slack``: how far above ``magnitude`` the value a kernel rounds may lie; by default 8 of the
    dtype's eps relative (a result computed in the dtype), less for one computed more precisely."""
    magnitude = np.asarray(magnitude, dtype=np.float64)
    with np.errstate(over="ignore"):
        above = magnitude * (1 + 8 * machine_epsilon(dtype)) if slack is None else magnitude + slack
        return ulp(above, dtype) / math.sqrt(12.0)


def _ordered_bias(terms: np.ndarray, compute: str, term_dtype: str | None, scale: np.ndarray) -> np.ndarray:
    """Per row, :func:`summation.order_bias` of the terms as a kernel forms them (in ``compute``,
    or in ``term_dtype`` for torch's half kernels) and sums them, unscaled or times the row's
    upstream scale (a kernel that sums ``g / N * t``), the larger."""
    terms = np.abs(np.asarray(terms, dtype=np.float64))
    scale = np.abs(np.asarray(scale, dtype=np.float64)).reshape(-1, 1)
    worst = np.zeros(terms.shape[0])
    scaled_apart = not np.all(scale == 1)  # (unit scales: the same terms, the same bias)
    for formed_in in dict.fromkeys(filter(None, (compute, term_dtype))):
        worst = np.fmax(worst, order_bias(round_to(terms, formed_in), compute))
        if scaled_apart:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                scaled = order_bias(round_to(terms * scale, formed_in), compute) / scale[:, 0]
            worst = np.fmax(worst, np.nan_to_num(scaled, nan=0.0, posinf=0.0))
    return np.nan_to_num(worst, nan=0.0, posinf=0.0)


def _term_rounding(u_t: float, eps: float, weighted: bool) -> float:
    """Relative sigma of one upstream term ``g w_c t_c`` of a half-dtype probability-target
    backward, which torch forms in the dtype: the product with ``g``, the weight's, the smoothed
    target's two operations; each a rounding of at most ``u`` relative, sigma ``u / sqrt 3``. Until
    2026-12-06 one whole ``u`` (a bound, not a sigma) for every term, and ``u`` more on every ``p_c``
    (whose products torch's log-softmax backward forms in float32): the bfloat16 and float16
    gradients of two-class soft targets were allowed 9 times the correct family's largest error."""
    roundings = 1 + (1 if weighted else 0) + (2 if eps > 0 else 0)
    return u_t * math.sqrt(roundings / 3.0)


def _subtracted_rounding(u_t: float, eps: float, weighted: bool) -> float:
    """Relative sigma of the gradient's subtracted term ``s Q_c``, which torch forms in the dtype,
    one rounding per operation: ``s = g / D`` and its product, the weight, the smoothed target's
    ``t (1 - eps)`` and ``+ eps / C``. Each costs up to an ulp of the element (``u`` relative to an
    intermediate low in its binade), more than the base budget holds once they go one way: torch's
    bfloat16 gradient of a smoothed, weighted soft target 3.9 ulps off (1.3 %, base 3; seed 3 of
    the nightly correct family), its float64 gradient of a weighted soft target with an upstream
    gradient 4.0 ulps off (base 4; reached by ``hypothesis.target()`` on seed 0)."""
    roundings = 2 + (1 if weighted else 0) + (2 if eps > 0 else 0)
    return u_t * math.sqrt(roundings / 3.0)


def _subnormal_sigma(call: _Call, scale: np.ndarray, terms_abs: np.ndarray) -> np.ndarray:
    """Per position, sigma of what a gradient element loses where a partial product of its factors
    (p, w, eps / C, the target, s) falls below the normal range: up to the compute precision's
    smallest normal (a flushing kernel) times the largest product of the factors still to come;
    for half probability targets, whose products torch forms in the dtype, half a subnormal step
    of the dtype likewise. Negligible unless a factor is huge (s = 1 / D of a tiny total weight)."""
    name = dtype_name(call.dtype)
    w_max = float(np.abs(call.weight).max(initial=0)) if call.weight is not None else 1.0
    if call.mode == "index":
        w_total = float(np.abs(call.weight).sum()) if call.weight is not None else float(call.n_classes)
        others = max(1.0, w_max, w_total)
    else:
        t_max = float(np.nanmax(np.abs(call.target), initial=0)) if call.target.size else 0.0
        others = max(1.0, w_max, t_max, w_max * t_max)
    with np.errstate(over="ignore", invalid="ignore"):
        amplification = np.maximum(1.0, np.abs(scale)) * np.maximum(others, terms_abs)
        step = smallest_normal(compute_dtype(name))
        if call.mode == "probability" and compute_dtype(name) != name:
            step = math.hypot(step, smallest_subnormal(name) / 2)
        sigma = step * amplification
        if call.mode == "index" and compute_dtype(name) != name:
            # torch's half backward forms the element's own upstream term s eps / C w_c (and
            # s (1 - eps) w_y) in the dtype: a subnormal first product, times the largest remaining
            # factor (float16 'none', upstream 0.1, eps / C = 2^-20: 1.66 steps became 2, times w = 64,
            # 22 ulps; K's sum of such terms is alike_subnormal_bound's bias)
            sigma = np.hypot(sigma, smallest_subnormal(name) / 2 * np.maximum(1.0, np.maximum(np.abs(scale), w_max)))
        return np.nan_to_num(sigma / math.sqrt(3.0), posinf=np.finfo(np.float64).max)


def _logp_rounding(scale: Any, coefficient: Any, u_t: float, p_logp: np.ndarray) -> np.ndarray:
    """Per position, sigma of the gradient error torch's half-precision log-softmax backward makes:
    it recomputes p as exp of the log-probabilities *rounded to the dtype*, so p_c errs by up to
    u_t |log p_c| relative, times the coefficient of p in the gradient. Where many classes tie
    at the maximum (|log p| = 10 at 16000 of them) and smoothing makes the gradient a difference
    of nearly equal terms, that was 4 bfloat16 ulps (measured on torch 2.13)."""
    return np.abs(np.asarray(scale, dtype=np.float64)) * np.asarray(coefficient, dtype=np.float64) * u_t \
        * p_logp / math.sqrt(3.0)


class _FusedRows(NamedTuple):
    weight: np.ndarray  # w_y per row
    scale: np.ndarray  # upstream gradient per row
    nll: np.ndarray
    p_target: np.ndarray
    root: np.ndarray  # summation_root of the probabilities
    rss: np.ndarray  # their root sum of squares
    distinct: np.ndarray  # distinct probabilities per row
    p_logp: np.ndarray  # max over classes of p |log p|
    grad: np.ndarray  # gradient rows (empty when not requested)
    root_lost: np.ndarray  # root's bias part (summation_root(..., bias=True))
    lse: np.ndarray  # log S = log-sum-exp - max
    top: np.ndarray  # the row's maximum


def _fused_index_rows(rows: np.ndarray, target: np.ndarray, weight: np.ndarray, scale: np.ndarray, u: float,
                      gradients: bool, out: np.ndarray | None = None) -> _FusedRows | None:
    """Index-target rows without smoothing in one kernel (the vocabulary-scale hot path: see
    :mod:`ce_conformance.engine`), or None where the general path must judge: NumPy engine, a
    row whose maximum is not finite, or a weight so large that ``2 |w_y|`` overflows. Gradient
    rows go into ``out`` where given (C-contiguous rows), else into a new array."""
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    if not engine.available() or rows.shape[1] == 0 or not np.isfinite(2 * np.abs(weight)).all():
        return None
    scale = np.ascontiguousarray(scale, dtype=np.float64)
    grad = (out if out is not None else np.empty(rows.shape)) if gradients else np.empty((0, rows.shape[1]))
    index_rows, threads = engine.kernel("index_rows", rows.size)
    if not (rows.dtype in (np.float32, np.float64) and rows.flags.c_contiguous):
        rows = np.ascontiguousarray(rows, dtype=np.float64)
    lse, nll, p_target, root, root_lost, rss, distinct, p_logp, top, finite = index_rows(
        rows, np.ascontiguousarray(target, dtype=np.int64), weight, scale,
        float(u), LOST_WEIGHT, grad, step_table(), MANTISSA_BINS, threads)
    if not finite.all():
        return None
    return _FusedRows(weight, scale, nll, p_target, root, rss, distinct, p_logp, grad, root_lost, lse, top)


def _unit_roundoff(dtype: Any, internal: bool = True) -> float:
    """u = eps / 2 of the precision a faithful kernel computes in: float32 for half dtypes
    (torch computes their log-softmax in float32) unless ``internal`` is False."""
    name = dtype_name(np.dtype(dtype))
    return machine_epsilon(compute_dtype(name) if internal else name) / 2


class Sigmas(NamedTuple):
    """Standard deviations of a correct implementation's rounding error (tolerance model v2):
    of the loss (per output element), and of each position's gradient row."""

    loss: np.ndarray
    grad_input: np.ndarray | None
    grad_target: np.ndarray | None
    probability_relative: np.ndarray | None = None  # per position: of every p_c, from the exp sum
    scale_relative: float = 0.0  # of the upstream scale s = g / D: the mean's denominator


def _reduced_sigmas(call: _Call, A: Any, eps: float, C: int, u_c: float, u_t: float, main_terms: np.ndarray,
                    smooth_terms: np.ndarray, loss: Any, wy: np.ndarray | None, denominator: Any,
                    lse_sigma: np.ndarray, loss_sigma: np.ndarray, loss_bias: np.ndarray, loss_rounding: np.ndarray,
                    rounding_bound: np.ndarray,
                    grad_input_scale: np.ndarray | None,
                    grad_target_coefficient: np.ndarray, grad_target_underflow: np.ndarray, flush_bound: np.ndarray,
                    grad_target_scale: np.ndarray | None, repetitive: np.ndarray, backward_sigma: np.ndarray) -> Sigmas:
    """Propagate the per-position error scales through the reduction over positions.

    torch's CPU nll kernel accumulates positions (and the total weight) in the input dtype, so for
    half dtypes with index targets the position sums carry the dtype's own unit roundoff; with
    probability targets torch forms the products ``w * t * log p`` and their gradients in the
    dtype, one rounding of the dtype per term."""
    u_r = u_t if call.mode == "index" else u_c
    reduction_dtype = dtype_name(call.dtype) if call.mode == "index" else compute_dtype(dtype_name(call.dtype))
    term_unit = u_t if call.mode == "probability" and u_t > u_c else 0.0
    relative_denominator = 0.0
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if call.reduction == "none":
            # a one-sided bound B (flushed products) enters as a uniform error's sigma, B / sqrt 3
            loss_out = np.hypot(loss_sigma, flush_bound / math.sqrt(3))
            rest, bound = _without_rounding(loss_sigma, loss_rounding, rounding_bound)
            loss_out = np.fmin(loss_out, np.hypot(rest, flush_bound / math.sqrt(3)) + bound).reshape(call.output_shape)
        else:
            parts = [np.abs(np.asarray(main_terms, dtype=np.float64)) * (1 - eps)]
            if eps > 0:
                parts.append(np.abs(np.asarray(smooth_terms, dtype=np.float64)) * (eps / C))
            # positions with nearly equal losses (near-tied or repeated rows) round alike as a sequential
            # sum grows: group them at 16 significant bits, so that their errors add up linearly
            reduction_root = float(np.hypot.reduce([summation_root(near_equal(part)[None, :], u_r)[0]
                                                    for part in parts]))
            # for a few positions the bound over every order is tighter than SIGMAS of the random model
            # (torch sums each part unscaled, then scales it)
            order_free = (1 - eps) * any_order_bound(main_terms, reduction_dtype) + (
                eps / C * any_order_bound(smooth_terms, reduction_dtype) if eps > 0 else 0.0)
            reduction_sigma = min(u_r * reduction_root / math.sqrt(3), order_free / SIGMAS)
            # positions of (nearly) equal losses, repeated rows above all, round alike: their errors add
            # up linearly, within groups of losses equal to 16 significant bits, before the groups add in
            # quadrature; so do rows of few distinct values (they round alike across rows)
            per_position = sum(parts)
            # the exp sums' lost terms make every row's log-sum-exp low: those parts of the rows' sigmas
            # add up linearly, the rest in quadrature (a float32 sequential sum of 190442 exp terms of
            # logits with a deviation of 6 lost 1100 u in every row, and the 'mean' over 8 rows was
            # 1.54 times its budget until 2026-12-06: the bias had entered at 1 / sqrt 8)
            groups = near_equal(per_position).ravel()[None, :]

            def rows_total(sigma: np.ndarray) -> float:
                bias = np.where(repetitive, 0.0, np.minimum(loss_bias, sigma))
                grouped = alike_root(np.where(repetitive, 0.0, sigma - bias).ravel()[None, :], groups)
                rows_sigma = np.hypot(float(grouped[0]), float(np.sum(np.where(repetitive, sigma, 0.0))))
                return float(np.hypot(np.hypot(rows_sigma, reduction_sigma), float(flush_bound.sum()) / math.sqrt(3))) \
                    + float(bias.sum())  # (flushes all go toward zero too: their sum is one bound)

            total_sigma = rows_total(loss_sigma)
            if loss_rounding.any():  # few positions: their roundings to the dtype held by their bound
                rest, bound = _without_rounding(loss_sigma, loss_rounding, rounding_bound)
                few = rows_total(rest) + float(bound.sum())
                total_sigma = few if few < total_sigma else total_sigma
            d = abs(float(denominator)) if call.reduction == "mean" and denominator is not None else 0.0
            finishing = 0.0
            if eps > 0 and (d > 0 or call.reduction == "sum"):
                # torch reduces the two parts (and divides each by D), scales each and adds them (the
                # addition is the base's rounding): one rounding of each result, whose size is known
                reduced = [abs(float(np.sum(np.asarray(terms, dtype=np.float64)))) for terms in (main_terms, smooth_terms)]
                reduced = [r / d for r in reduced] if d > 0 else reduced
                coefficients = (1 - eps, eps / C)
                finishing = float(np.hypot.reduce([_rounding_sigma(c * r, reduction_dtype)
                                                   for c, r in zip(coefficients, reduced)]))
                if d > 0:
                    finishing = float(np.hypot.reduce([finishing] + [c * _rounding_sigma(r, reduction_dtype)
                                                                     for c, r in zip(coefficients, reduced)]))
            if call.reduction == "mean":
                weights = None if wy is None else np.abs(np.asarray(wy, dtype=np.float64))
                # integer partial sums up to 2**p = 1 / u are exact (bfloat16: 256; the bound was 2 / u,
                # and torch's bfloat16 total of 257 weights in {1, 2, 3} came out 1.3 % off)
                exact_count = weights is not None and float(weights.sum()) <= 1 / u_r \
                    and bool(np.all(weights == np.round(weights)))
                if weights is not None and d > 0 and not exact_count:
                    relative_denominator = u_r * float(summation_root(weights[None, :], u_r)[0]) / math.sqrt(3) / d
                value = abs(float(loss)) if np.isfinite(float(loss)) else 0.0
                total_sigma = total_sigma / d + value * relative_denominator if d > 0 else 0.0
            loss_out = np.asarray(math.hypot(total_sigma, finishing))
        relative = np.sqrt(lse_sigma ** 2 + relative_denominator ** 2)
        grad_input = None if grad_input_scale is None else \
            np.hypot(grad_input_scale * exponential_relative(np.hypot(relative, term_unit)), backward_sigma)
        grad_target = None
        if call.mode == "probability" and grad_target_scale is not None:
            # a subnormal partial product errs by up to half a step, uniformly: sigma = half step / sqrt 3
            # (no half-dtype products: no term, not 0 * an overflowing row's inf scale = NaN = no budget)
            half_products = term_unit * grad_target_scale if term_unit else 0.0
            grad_target = np.hypot(np.hypot(grad_target_coefficient * relative, half_products),
                                   grad_target_underflow / math.sqrt(3))

    def finite(sigma: Any) -> np.ndarray | None:  # an overflowing scale means an overflowing value: no limit
        return None if sigma is None else np.nan_to_num(np.asarray(sigma, dtype=np.float64), nan=0.0,
                                                        posinf=np.finfo(np.float64).max)

    # every p_c of a row shares the exp sum's error; torch's half backward forms K p_c in float32
    # (its products w t in the dtype are K's error, backward_relative)
    return Sigmas(finite(loss_out), finite(grad_input), finite(grad_target), lse_sigma, float(relative_denominator))


def _without_rounding(sigma: np.ndarray, rounding: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position, ``sigma`` without its parts ``rounding[:, k]`` (roundings to nearest composed
    in quadrature), and ``bound``, the most those roundings err by together (half an ulp for one),
    as a sigma that ``SIGMAS`` turn into the bound. Where few roundings make an error, their bound
    is less than ``SIGMAS`` sigma in quadrature (one rounding: sqrt 3 against 5 sigma, 2.9
    times). Until 2026-12-06 only in quadrature: one float16 loss of 262144 classes, torch's
    ``log p_y`` rounded once, was allowed 2.54 ulps, 4.7 times the correct family's largest error
    (0.54); a float64 two-class loss whose ``lse`` is 10 times the loss (a kernel that forms
    ``lse`` rounds it by up to 5 ulps of the loss) was allowed 10.3 ulps, 4.6 times that error."""
    sigma = np.asarray(sigma, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # relative: no square overflows near the dtype's top
        share = np.where(sigma[:, None] > 0, rounding / sigma[:, None], 0.0)
        rest = sigma * np.sqrt(np.maximum(1 - (share * share).sum(axis=1), 0.0))
        return np.where(np.isfinite(rest), rest, sigma), np.asarray(bound, dtype=np.float64).ravel() / SIGMAS


def _nan_rows(grad: np.ndarray, finite_rows: np.ndarray, A: Any) -> np.ndarray:
    """torch's log_softmax backward (g - exp(logp) * sum(g)) turns a NaN row of log-probabilities
    into a NaN gradient row even where g is 0, e.g. at ignored positions."""
    if finite_rows.all():
        return grad
    return np.where(finite_rows[:, None], grad, A.convert(np.full(grad.shape, np.nan)))


def _combine(A: Any, eps: float, C: int, main: Any, smooth: Any, denominator: Any) -> Any:
    """torch's (1 - eps) * NLL_red + (eps / C) * S_red, each term divided on its own (NaN rules)."""
    value = A.divide(main, denominator)
    if eps > 0:
        with np.errstate(invalid="ignore", over="ignore"):
            value = (1 - eps) * value + (eps / C) * A.divide(smooth, denominator)
    return value


def _as_array(value: Any, exact: bool) -> np.ndarray:
    if exact:
        return np.asarray(value, dtype=object)
    return np.asarray(value, dtype=np.float64)


# -- public API ----------------------------------------------------------------------------------
class Gradients(NamedTuple):
    """Gradients of the loss: w.r.t. the input, and w.r.t. probability targets (else None)."""

    input: np.ndarray
    target: np.ndarray | None


def cross_entropy(input: Any, target: Any, weight: Any = None, size_average: bool | None = None,
                  ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0, *, exact: bool = False) -> np.ndarray:
    """``torch.nn.functional.cross_entropy`` on NumPy arrays, computed in float64.

    The result is float64 (torch would return the input's dtype); with ``exact=True`` it is an
    object array of mpmath numbers. Invalid calls raise :class:`InvalidInputError`.

    >>> loss = cross_entropy(np.zeros((2, 3)), np.array([0, -100]), reduction="sum")  # log 3: one row counted
    >>> bool(abs(loss - np.log(3)) <= 2 * np.spacing(np.log(3)))
    True
    """
    call = _validate(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)
    A = _Exact if exact else _Float64
    with mpmath.workdps(EXACT_DIGITS):
        return _as_array(_solve(call, A, gradients=False).loss, exact)


def cross_entropy_grad(input: Any, target: Any, weight: Any = None, size_average: bool | None = None,
                       ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
                       label_smoothing: float = 0.0, *, grad_output: Any = None, exact: bool = False) -> Gradients:
    """Closed-form gradient of :func:`cross_entropy` for the upstream gradient ``grad_output``
    (default: ones), w.r.t. the input and, for probability targets, w.r.t. the target.

    >>> cross_entropy_grad(np.zeros(2), np.array([0.25, 0.75])).target.round(4)
    array([0.6931, 0.6931])
    """
    call = _validate(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)
    A = _Exact if exact else _Float64
    with mpmath.workdps(EXACT_DIGITS):
        out = _solve(call, A, gradients=True, grad_output=grad_output)
    return Gradients(out.grad_input, out.grad_target)


@dataclass(frozen=True)
class ReferenceResult:
    """Everything the comparison needs about one case: float64 values, their magnitudes (the
    scale an error is measured at) and the output contract (dtype and shape)."""

    loss: np.ndarray
    loss_scale: np.ndarray
    loss_intermediate: np.ndarray  # magnitude of the largest unscaled sum (before eps / C or 1 / D)
    grad_input: np.ndarray | None
    grad_input_scale: np.ndarray | None  # per position; broadcast over the class axis
    grad_target: np.ndarray | None
    grad_target_scale: np.ndarray | None
    output_dtype: str
    output_shape: tuple[int, ...]
    loss_sigma: np.ndarray | None = None  # tolerance model v2: error scale of a correct implementation
    grad_input_sigma: np.ndarray | None = None  # per position; broadcast over the class axis
    grad_target_sigma: np.ndarray | None = None
    grad_target_intermediate: np.ndarray | None = None  # per position: largest w * log p before scaling
    grad_input_elements: GradientElements | None = None  # per-element budgets of grad_input (model v2.1)
    #: terms of the loss whose subnormal roundings its unit's floor holds (None: one per class)
    loss_floor_classes: int | None = None
    #: every rounding a kernel makes before the loss's last is charged in its sigma
    #: (:func:`_plain_loss`): the loss's base budget is that last rounding's half ulp
    plain_loss: bool = False
    #: what the call returns beside the loss (ce_conformance.outputs), by name
    outputs: Mapping[str, Expectation] = field(default_factory=dict)

    @property
    def loss_quantity(self) -> str:
        """The row of the base budgets (:data:`~ce_conformance.tolerance.BUDGETS`) the loss is judged by."""
        return "plain_loss" if self.plain_loss else "loss"


def _case_call(case: Any) -> _Call:
    """torch's checks on the case's declared dtypes and shapes, with floating inputs and targets
    read from the case's own exact float64 values rather than from fresh arrays of their dtypes
    (``Case.arguments``): at vocabulary scale such a copy is half a GB of new memory for every
    evaluation, and on a virtual machine faulting new memory in costs more than the judging."""
    kwargs = case.call_options()
    stand_ins = {name: _stand_in(case.tensors[name]) for name in ("input", "target")}
    weight = case.tensors["weight"].as_numpy() if "weight" in case.tensors else None
    call = _validate(stand_ins["input"], stand_ins["target"], weight, kwargs.get("size_average"),
                     kwargs["ignore_index"], kwargs.get("reduce"), kwargs["reduction"], kwargs["label_smoothing"])
    dtype = numpy_dtype(case.tensors["input"].dtype)
    call = replace(call, input=case.tensors["input"].values, precision=dtype, grid=dtype)
    if call.mode == "probability":
        call = replace(call, target=case.tensors["target"].values)
    return call


def _stand_in(tensor: Any) -> np.ndarray:
    """What :func:`_validate` reads of a tensor: a floating one's dtype and shape only, an
    integer one's values."""
    return _typed_shape(tensor.dtype, tensor.shape) if is_float(tensor.dtype) else tensor.as_numpy()


def _typed_shape(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """An array of ``dtype`` and ``shape`` without memory (a zero-strided view): all that
    :func:`_validate` reads of floating logits."""
    return np.broadcast_to(np.zeros((), dtype=numpy_dtype(dtype)), shape)


def output_shape(case: Any) -> tuple[int, ...]:
    """Shape of the loss for a case; raises InvalidInputError for an invalid call."""
    if case.family != "cross_entropy":
        return case.spec.output_shape(case)
    return _case_call(case).output_shape


def mean_denominator(case: Any) -> float:
    """What torch's ``'mean'`` divides a case's summed loss by: the total class weight of the
    counted (not ignored) targets, or the number of positions for probability targets. Split
    invariance (:mod:`ce_conformance.split`) gives micro-batches the whole batch's.

    >>> from ce_conformance.cross_entropy import cross_entropy_case
    >>> mean_denominator(cross_entropy_case([[0.0, 1.0]] * 3, [1, -100, 0], weight=[0.5, 2.0]))
    2.5
    """
    if case.family == "cross_entropy":
        call = _case_call(case)
    else:
        from .cross_entropy import resolved_ignore_index

        call = _logits_call(case.spec.logits_shape(case), case.tensors["target"].as_numpy(), case.dtype,
                            None if case.weight is None else case.tensors["weight"].as_numpy(),
                            resolved_ignore_index(case), case.options["reduction"], case.options["label_smoothing"])
    if call.mode != "index":
        return float(call.positions)
    counted = call.target != call.ignore_index
    weights = np.ones(call.positions) if call.weight is None else np.asarray(call.weight, dtype=np.float64)[
        np.where(counted, call.target, 0)]
    return float(np.sum(np.where(counted, weights, 0.0)))


def evaluate(case: Any, *, gradients: bool = True) -> ReferenceResult:
    """Reference values, gradients and magnitudes for a case (raises InvalidInputError if invalid).
    Cases of other loss families go to their family's reference."""
    if case.family != "cross_entropy":
        return case.spec.evaluate(case, gradients=gradients)
    from .cross_entropy import check_normalizer_option

    check_normalizer_option(case)
    check_output_options(case.options)
    call = _case_call(case)  # torch's checks
    if case.options.get("smoothing_dialect") is not None:  # Megatron's alpha as torch's eps
        from .cross_entropy import dialect_smoothing

        call = replace(call, smoothing=dialect_smoothing(case, call.smoothing, call.n_classes))
    divisor = case.options.get("normalizer")
    if divisor is None:
        result = _evaluate_call(call, case.dtype, case.grad_output, gradients)
    else:
        upstream = (1.0 if case.grad_output is None else float(np.asarray(case.grad_output))) / float(divisor)
        result = normalised(_evaluate_call(call, case.dtype, upstream, gradients), float(divisor))
    if "lse" in requested(case.options):
        result = replace(result, outputs={"lse": _returned_lse(call)})
    return result


def _returned_lse(call: _Call) -> Expectation:
    """The log-sum-exp per position of a call's logits (``return_lse``, :mod:`ce_conformance.outputs`):
    exact float64 of the dtype-rounded logits, with the error model of their exp sum, log and
    maximum in the compute precision (the logits themselves are exact)."""
    x = np.asarray(call.input, dtype=np.float64)
    class_axis = 0 if x.ndim == 1 else 1
    u_c = _unit_roundoff(call.dtype)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        z_max = np.max(x, axis=class_axis, keepdims=True) if x.size else \
            np.zeros(x.shape[:class_axis] + (1,) + x.shape[class_axis + 1:])
        shifted = np.exp(x - z_max)
        normaliser = np.sum(shifted, axis=class_axis, keepdims=True)
        root = np.expand_dims(summation_root(np.moveaxis(np.nan_to_num(shifted), class_axis, -1), u_c), class_axis)
    return Expectation(*lse_output(z_max, normaliser, np.zeros(normaliser.shape), root, class_axis, u_c))


def normalised(result: ReferenceResult, divisor: float) -> ReferenceResult:
    """A ``'sum'`` case's result, evaluated under an upstream gradient of ``g / divisor``, as the
    result of ``sum / divisor`` (the ``normalizer`` extension): the loss divided, and one more
    rounding in the dtype of the loss and of every gradient element (autograd of ``sum / n``
    forms ``g / n`` in the dtype, as the mean's ``g / D``). The sum before the division keeps its
    magnitude as the loss's intermediate: it may overflow where the quotient does not."""
    u = _unit_roundoff(numpy_dtype(result.output_dtype), internal=False) / math.sqrt(3)
    loss, loss_sigma, loss_scale = normalised_loss(result.loss, result.loss_sigma, result.loss_scale, divisor,
                                                   result.output_dtype)
    changes: dict[str, Any] = dict(loss=loss, loss_sigma=loss_sigma, loss_scale=loss_scale)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        if result.grad_input_sigma is not None and result.grad_input_scale is not None:
            changes["grad_input_sigma"] = np.hypot(result.grad_input_sigma, u * result.grad_input_scale)
        if result.grad_target_sigma is not None and result.grad_target_scale is not None:
            changes["grad_target_sigma"] = np.hypot(result.grad_target_sigma, u * result.grad_target_scale)
    if result.grad_input_elements is not None:
        elements = result.grad_input_elements
        changes["grad_input_elements"] = replace(elements, scale_relative=float(np.hypot(elements.scale_relative, u)))
    return replace(result, **changes)


def normalised_loss(loss: Any, sigma: Any, scale: Any, divisor: float,
                    dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A summed loss, its sigma and magnitude divided by an external normaliser: the quotient
    rounds once more in the dtype (every family's ``normalizer``)."""
    u = _unit_roundoff(numpy_dtype(dtype), internal=False) / math.sqrt(3)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        quotient = np.asarray(loss, dtype=np.float64) / divisor
        sigma = np.hypot(np.asarray(0.0 if sigma is None else sigma, dtype=np.float64) / divisor,
                         u * np.abs(np.nan_to_num(quotient)))
        return quotient, sigma, np.asarray(scale, dtype=np.float64) / divisor


def evaluate_logits(logits: np.ndarray, target: Any, *, dtype: str, weight: Any = None, ignore_index: int = -100,
                    reduction: str = "mean", label_smoothing: float = 0.0, grad_output: Any = None,
                    gradients: bool = True) -> ReferenceResult:
    """:func:`evaluate` for exact float64 ``logits`` that a ``dtype`` computation produced (a linear
    projection): torch's argument checks as for ``dtype`` logits, values from the exact ones, and
    the tolerance model of ``dtype`` arithmetic. The logits' own error is the caller's to add."""
    call = _logits_call(np.shape(logits), target, dtype, weight, ignore_index, reduction, label_smoothing)
    call = replace(call, input=np.asarray(logits, dtype=np.float64), precision=numpy_dtype(dtype))
    return _evaluate_call(call, dtype, grad_output, gradients)


def logits_output_shape(shape: tuple[int, ...], target: Any, *, dtype: str, weight: Any = None,
                        ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0) -> tuple[int, ...]:
    """:func:`output_shape` for ``dtype`` logits of ``shape`` that are never formed (torch's checks only)."""
    return _logits_call(shape, target, dtype, weight, ignore_index, reduction, label_smoothing).output_shape


def _logits_call(shape: tuple[int, ...], target: Any, dtype: str, weight: Any, ignore_index: int, reduction: str,
                 label_smoothing: float) -> _Call:
    return _validate(_typed_shape(dtype, shape), target, weight, None, ignore_index, None, reduction, label_smoothing)


def _evaluate_call(call: _Call, dtype: str, grad_output: Any, gradients: bool) -> ReferenceResult:
    out = _solve(call, _Float64, gradients=gradients, grad_output=grad_output)

    def per_class(scale: np.ndarray | None) -> np.ndarray | None:
        if scale is None:
            return None
        if call.input.ndim == 1:
            return scale.copy()
        shape = (call.input.shape[0], *call.input.shape[2:])
        return np.expand_dims(scale.reshape(shape), 1)

    return ReferenceResult(
        loss=np.asarray(out.loss, dtype=np.float64),
        loss_scale=np.asarray(out.loss_scale, dtype=np.float64),
        loss_intermediate=np.asarray(out.loss_intermediate, dtype=np.float64),
        grad_input=out.grad_input,
        grad_input_scale=per_class(out.grad_input_scale),
        grad_target=out.grad_target,
        grad_target_scale=per_class(out.grad_target_scale),
        output_dtype=dtype,
        output_shape=call.output_shape,
        loss_sigma=out.sigmas.loss,
        grad_input_sigma=per_class(out.sigmas.grad_input) if gradients else None,
        grad_target_sigma=per_class(out.sigmas.grad_target) if gradients else None,
        grad_target_intermediate=per_class(out.grad_target_intermediate),
        grad_input_elements=_gradient_elements(call, out) if gradients and out.elements is not None else None,
        loss_floor_classes=_loss_floor_classes(call),
        plain_loss=_plain_loss(call),
    )


def _plain_loss(call: _Call) -> bool:
    """Index targets without class weights or smoothing: torch's half kernels round such a loss in
    the dtype only where the sigma charges it (each position's log-softmax output, by its bound;
    the cascade over positions, by its bound over every order) and at the end. Class weights add
    a product in the dtype per position, smoothing its scaled parts and their sum, soft targets
    their products: roundings the half dtypes' base of one ulp holds
    (:data:`~ce_conformance.tolerance.BUDGETS`)."""
    return call.mode == "index" and call.weight is None and call.smoothing == 0


def _loss_floor_classes(call: _Call) -> int | None:
    """1 where every product a half dtype's loss forms below the normal range is in its sigma,
    else None (the unit's floor: a subnormal step per class,
    :func:`~ce_conformance.tolerance.underflow_floor`). Unweighted index targets form no per-class
    product in the dtype (the smoothing sum adds log p itself); unweighted soft targets form
    ``t log p``, whose roundings ``_solve`` counts, grouped where they repeat. Weights and smoothed
    soft targets add products (``w log p``, a smoothed target's ``t log p``) that only the floor
    holds. float32/float64 keep it: there it is the compute precision's smallest normal per class,
    what a kernel flushing subnormals may lose. Until 2026-12-06 every loss had the floor: float16
    at C = 262144, 2 ulps of a loss of 14 (0.0156), beside a sigma of 0.08 ulps."""
    if _unit_roundoff(call.dtype, internal=False) <= _unit_roundoff(call.dtype) or call.weight is not None:
        return None
    if call.mode == "probability" and call.smoothing > 0:
        return None
    return 1


def _gradient_elements(call: _Call, out: _Output) -> GradientElements:
    """The per-position arrays of :class:`GradientElements` in its (outer, inner) layout."""
    shape = tuple(call.input.shape)
    grid = (1, 1) if len(shape) == 1 else (shape[0], math.prod(shape[2:]))
    arrays = out.elements

    def positions(values: Any) -> np.ndarray:
        return np.asarray(values, dtype=np.float64).reshape(grid)

    # the error of K is one number shared by every p_c of the row. Smoothing's C - 1 equal terms eps / C
    # make it a bias (terms lost below u times the partial sum, or rounding alike: one sign, held once
    # by SIGMAS sigma, summation.LOST_WEIGHT), which adds to the exp sum's error linearly. In
    # quadrature it was short: torch's float32 K-dim gradient with smoothing 1e-6 reached 0.75 of its
    # budget on random cases (0.98 for torch.compile, steered by hypothesis.target), 0.58 now. A sum of
    # distinct terms (soft targets) errs at random: in quadrature, as before.
    relative = np.hypot(out.sigmas.probability_relative, arrays["backward_relative"]) + arrays["backward_bias"]
    probabilities = None
    if call.mode == "probability":
        target = np.asarray(call.target)
        probabilities = target.reshape(1, -1, 1) if target.ndim == 1 else target.reshape(shape[0], shape[1], grid[1])
    return GradientElements(
        shape=shape, n_classes=call.n_classes, scale=positions(arrays["scale"]), scale_relative=out.sigmas.scale_relative,
        terms_sum=positions(arrays["terms_sum"]), log_total=positions(arrays["log_total"]),
        relative=positions(np.broadcast_to(relative, (grid[0] * grid[1],))), absolute=positions(arrays["absolute"]),
        elementwise=np.asarray(arrays["elementwise"]).reshape(grid),
        row_magnitude=positions(out.grad_input_scale), row_sigma=positions(out.sigmas.grad_input),
        unit_roundoff=arrays["unit_roundoff"], half_roundoff=arrays["half_roundoff"],
        subtracted_relative=arrays["subtracted_relative"], smoothing=call.smoothing,
        class_weight=None if call.weight is None else np.asarray(call.weight, dtype=np.float64),
        target=None if call.mode != "index" else np.where(  # ignored positions: any class (their Q is 0)
            (call.target >= 0) & (call.target < call.n_classes), call.target, 0).astype(np.int64).reshape(grid),
        target_coefficient=None if arrays["target_coefficient"] is None else positions(arrays["target_coefficient"]),
        probabilities=probabilities)
