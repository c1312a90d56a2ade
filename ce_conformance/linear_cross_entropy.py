"""The linear cross-entropy family: torch 2.13's ``F.linear_cross_entropy``.

``linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
reduction='mean', ignore_index=None, label_smoothing=0.0)`` is defined as
``cross_entropy(linear(input, linear_weight, linear_bias), target, ...)``: ``input`` is
``(N, H)`` or ``(H,)``, ``linear_weight`` is ``(C, H)`` or, for a K-dimensional loss,
``(C, d_1, ..., d_K, H)`` (logits ``(N, C, d_1, ..., d_K)``), ``ignore_index=None`` means -100
for index targets and is required for probability targets. This is what fused kernels
(Liger-Kernel, cut-cross-entropy, chunked heads) compute without materialising the logits.

The reference forms the logits exactly (float64 products of the dtype-rounded inputs, whose
sum over H errs by far less than any dtype's ulp), takes cross-entropy's reference on them
(:func:`ce_conformance.reference.evaluate_logits`) and gives closed-form gradients for the
input, the linear weight and bias through ``G = dL/dlogits``:
``grad_input = G W``, ``grad_linear_weight = G^T X``, ``grad_linear_bias = sum_n G``.

Tolerance: a correct kernel's logits err by their accumulation over H (in its compute precision)
and, where it materialises them as torch's reference path does, by a rounding to the dtype; that
error moves the loss by ``G . dz`` and the gradient of the logits by ``p (dz - p . dz)``, and
the three gradient products add the accumulation of their own sums (over C, N and N). Each is a
standard deviation under random rounding, added in quadrature to cross-entropy's model, so the
loss budget of an exact projection is cross-entropy's plus the logits' own rounding.

>>> case = linear_cross_entropy_case([[1.0, 2.0]], [[0.5, -1.0], [2.0, 0.0]], [1], dtype="float64")
>>> result = case.spec.evaluate(case)
>>> round(float(result.loss), 6)  # logits (-1.5, 2): -log softmax at class 1
0.02975
>>> sorted(result.parameter_gradients)
['linear_weight']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Mapping

import numpy as np

from .case import Case, LossFamily, Tensor, register_family
from .cross_entropy import check_normalizer_option, checked_normalizer, logits_features, resolved_ignore_index
from .dtypes import is_float, numpy_dtype, smallest_subnormal
from .errors import CaseFormatError, InvalidInputError, Rule
from .linear_extensions import LogitTransform, ZLoss, z_loss, z_loss_output
from .outputs import (OUTPUT_OPTIONS, Expectation, check_output_options, checked_flag, lse_output, lse_sigma,
                      requested)

FAMILY: Final = "linear_cross_entropy"
VALUED_OPTIONS: Final = ("logit_scale", "softcap", "z_loss", "normalizer")
EXTENSION_OPTIONS: Final = (*VALUED_OPTIONS, *OUTPUT_OPTIONS)
"""The fused kernels' options torch's ``linear_cross_entropy`` lacks, each off (``None``) by default:

* ``logit_scale`` — every logit multiplied by it before anything else (Cohere's and flash-attn's
  cross-entropy ``logit_scale``); the gradient w.r.t. the logits times the scale.
* ``softcap`` — logit soft-capping, ``z -> softcap * tanh(z / softcap)`` on every logit before
  the loss (Gemma 2; cut-cross-entropy's and Liger-Kernel's ``softcap``, flash-attn's
  cross-entropy): the log-sum-exp, the loss and its gradient are those of the capped logits, the
  gradient w.r.t. the logits times ``1 - tanh^2(z / softcap)``.
* ``z_loss`` — the z-loss of PaLM (Chowdhery et al., 2022, sec. 5): ``z_loss * lse^2`` added to
  each counted (not ignored) position's loss, ``lse`` the log-sum-exp of its (capped) logits,
  reduced with the loss; ``'mean'`` divides the z-loss term by the number of counted positions
  (Liger-Kernel's ``lse_square_scale`` and flash-attn's do, even with class weights, where the
  cross-entropy term is divided by their sum). Its gradient w.r.t. a logit: ``2 z_loss lse p_c``.
* ``normalizer`` — an external normaliser, with ``reduction='sum'`` only: the summed loss (z-loss
  included) divided by it, and so every gradient. It is gradient accumulation's token count,
  transformers' ``num_items_in_batch`` (``fixed_cross_entropy``: ``reduction = 'sum'``, then
  ``loss / num_items_in_batch``): micro-batches each divided by the whole batch's count add up to
  the whole batch's ``'mean'`` (:mod:`ce_conformance.split` checks that they do).
* ``return_lse``, ``return_z_loss`` — flags: the call returns ``(loss, lse)``, ``(loss, z_loss)`` or
  ``(loss, lse, z_loss)``, the per-position log-sum-exp of the (scaled, capped) logits and the
  z-loss's share of the loss (:mod:`ce_conformance.outputs`).
"""
OWN_FEATURES: Final = ("linear_bias", *EXTENSION_OPTIONS)
"""Features only linear cross-entropy cases have (the rest are cross-entropy's, read on the
logits): a bias, and each extension option in use (named like its option)."""


# -- cases ---------------------------------------------------------------------------------------
def linear_cross_entropy_case(input: Any, linear_weight: Any, target: Any, *, dtype: str = "float32",
                              target_dtype: str | None = None, linear_bias: Any = None, weight: Any = None,
                              ignore_index: int | None = None, reduction: str = "mean",
                              label_smoothing: float = 0.0, grad_output: Any = None,
                              logit_scale: float | None = None, softcap: float | None = None,
                              z_loss: float | None = None, normalizer: float | None = None,
                              return_lse: bool | None = None, return_z_loss: bool | None = None,
                              expected_error: Rule | str | None = None, note: str = "") -> Case:
    """A linear cross-entropy case; floating values are rounded to ``dtype``.

    ``target_dtype`` defaults to int64 for integer-valued targets, ``dtype`` for float ones.
    ``logit_scale``, ``softcap``, ``z_loss`` and ``normalizer`` are the extensions of
    :data:`EXTENSION_OPTIONS` (positive, or ``None`` for off; ``normalizer`` with ``reduction='sum'``);
    ``return_lse`` and ``return_z_loss`` its flags (:mod:`ce_conformance.outputs`).

    >>> linear_cross_entropy_case([[1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0], [2.0, 2.0]], [2]).features
    frozenset()
    """
    target_values = np.asarray(target)
    if target_dtype is None:
        target_dtype = dtype if target_values.dtype.kind == "f" else "int64"
    tensors = {
        "input": Tensor(np.asarray(input, dtype=np.float64), dtype),
        "linear_weight": Tensor(np.asarray(linear_weight, dtype=np.float64), dtype),
        "target": Tensor(np.asarray(target_values, dtype=np.float64 if is_float(target_dtype) else np.int64),
                         target_dtype),
    }
    for name, value in (("linear_bias", linear_bias), ("weight", weight), ("grad_output", grad_output)):
        if value is not None:
            tensors[name] = Tensor(np.asarray(value, dtype=np.float64), dtype)
    options = {"reduction": str(reduction), "ignore_index": None if ignore_index is None else int(ignore_index),
               "label_smoothing": float(label_smoothing)}
    for name, value in (("logit_scale", logit_scale), ("softcap", softcap), ("z_loss", z_loss)):
        if value is not None:
            if not float(value) > 0:
                raise ValueError(f"{name} must be positive (or None for off), got {value!r}")
            options[name] = float(value)
    if normalizer is not None:
        options["normalizer"] = checked_normalizer(normalizer, options)
    for name, flag in (("return_lse", return_lse), ("return_z_loss", return_z_loss)):
        if checked_flag(name, flag):
            options[name] = True
    return Case(FAMILY, tensors, options, "contiguous", expected_error, note)


def logits_shape(case: Case) -> tuple[int, ...]:
    """``(*batch, C, d_1, ..., d_K)`` from ``input`` ``(*batch, H)`` and ``linear_weight`` ``(C, ..., H)``."""
    x, w = case.tensors["input"].shape, case.tensors["linear_weight"].shape
    if len(w) < 1:
        return x[:-1]
    return (*x[:-1], w[0], *w[1:-1])


def _features(case: Case) -> frozenset[str]:
    found = set(logits_features(case))
    found |= {"linear_bias"} if "linear_bias" in case.tensors else set()
    return frozenset(found | {name for name in EXTENSION_OPTIONS if case.options.get(name) is not None})


# -- the reference -------------------------------------------------------------------------------
def _check(case: Case) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """torch's own checks of ``linear_cross_entropy``, in its order, before cross-entropy's.
    Returns (logits shape, out_features)."""
    for name in VALUED_OPTIONS:
        value = case.options.get(name)
        if value is not None and not float(value) > 0:
            raise CaseFormatError(f"{name} must be positive (or null for off), got {value!r}", field=f"options.{name}")
    check_normalizer_option(case)
    check_output_options(case.options)
    x = case.tensors["input"].shape
    w = case.tensors["linear_weight"].shape
    if len(x) < 1 or len(x) > 2:
        raise InvalidInputError(Rule.INPUT_SHAPE, f"expected input with dimensionality 1 or 2, got {len(x)}")
    if len(w) < 2:
        raise InvalidInputError(Rule.INPUT_SHAPE,
                                f"expected linear_weight with dimensionality at least 2, got {len(w)}")
    if x[-1] != w[-1]:
        raise InvalidInputError(Rule.INPUT_SHAPE, "expected equal input and linear_weight last dimensions "
                                f"(in_features), got {x[-1]} and {w[-1]}, respectively")
    out_features = tuple(w[1:-1])
    bias = case.tensors.get("linear_bias")
    if bias is not None and tuple(bias.shape) != (w[0], *out_features):
        raise InvalidInputError(Rule.INPUT_SHAPE,
                                f"expected linear_bias shape {(w[0], *out_features)}, got {tuple(bias.shape)}")
    if out_features and len(x) == 1:
        raise InvalidInputError(Rule.INPUT_SHAPE, f"K-dimensional loss defined by linear_weight shape {tuple(w)} "
                                f"requires batched input, (N, {x[-1]}), got unbatched input with shape {tuple(x)}")
    shape = logits_shape(case)
    if case.tensors["target"].shape == shape and case.options["ignore_index"] is not None:
        raise InvalidInputError(Rule.IGNORE_INDEX_WITH_PROBABILITIES,
                                "ignore_index cannot be specified when target contains probabilities")
    return shape, out_features


def exact_logits(case: Case) -> np.ndarray:
    """The logits in float64 from the dtype-rounded input, weight and bias, in the logits' shape.

    Each product of two float32 (or half) values is exact in float64; their sum over H errs by
    at most H * 2**-53 relative, far below any tested dtype's unit."""
    shape, _ = _check(case)
    x = case.input
    w = case.tensors["linear_weight"].values
    flat_w = w.reshape(-1, w.shape[-1])
    z = x @ flat_w.T
    if "linear_bias" in case.tensors:
        z = z + case.tensors["linear_bias"].values.reshape(-1)
    return z.reshape(shape)


def output_shape(case: Case) -> tuple[int, ...]:
    shape, _ = _check(case)
    from . import reference

    return reference.logits_output_shape(shape, case.tensors["target"].as_numpy(), dtype=case.dtype,
                                         weight=_weight(case), ignore_index=resolved_ignore_index(case),
                                         reduction=case.options["reduction"],
                                         label_smoothing=case.options["label_smoothing"])


def _weight(case: Case) -> np.ndarray | None:
    tensor = case.tensors.get("weight")
    return None if tensor is None else tensor.as_numpy()


def _sum_root_squared(abs_terms_squared_sum: np.ndarray, total: np.ndarray, count: int) -> np.ndarray:
    """``sum_k s_k**2`` of a sequential sum of ``count`` terms (see :mod:`ce_conformance.summation`):
    a random walk of the terms (``count / 2`` times the sum of their squares) plus the drift of a
    sum that grows to ``total`` (``count / 3`` times its square). Either order, blocked or tree
    sums stay below it."""
    return count / 2 * abs_terms_squared_sum + count / 3 * np.square(total)


def evaluate(case: Case, *, gradients: bool = True):
    """Reference values, gradients, magnitudes and error scales of a linear cross-entropy case.

    Returns cross-entropy's :class:`~ce_conformance.reference.ReferenceResult` for the logits,
    with ``grad_input`` (w.r.t. the input ``X``), the projection's error folded into every
    sigma, and ``parameter_gradients`` for ``linear_weight`` (and ``linear_bias``)."""
    from . import reference
    from .reference import _unit_roundoff

    raw = exact_logits(case)  # torch's checks first
    cap, z_coefficient, scale = case.options.get("softcap"), case.options.get("z_loss"), case.options.get("logit_scale")
    transform = None if cap is None and scale is None else LogitTransform.of(raw, scale, cap)
    z = raw if transform is None else transform.values  # the logits the loss is taken over (scaled, capped)
    shape = z.shape
    dtype = case.dtype
    logits_result = reference.evaluate_logits(
        z, case.tensors["target"].as_numpy(), dtype=dtype, weight=_weight(case),
        ignore_index=resolved_ignore_index(case), reduction=case.options["reduction"],
        label_smoothing=case.options["label_smoothing"], gradients=True)  # upstream 1: G1 = dL/dz
    u_c = _unit_roundoff(numpy_dtype(dtype))  # the compute precision: float32 for half dtypes
    u_t = _unit_roundoff(numpy_dtype(dtype), internal=False)  # the dtype's own
    x = case.input
    w = case.tensors["linear_weight"].values
    hidden = w.shape[-1]
    flat_w = w.reshape(-1, hidden)
    batched = x.ndim == 2
    x2 = x if batched else x[None, :]
    rows = x2.shape[0]

    # the logits' error: their sum over H in the compute precision, and a rounding to the dtype
    with np.errstate(over="ignore", invalid="ignore"):
        terms_sq = np.square(x2) @ np.square(flat_w).T  # sum_h (x_h w_ch)^2, (rows, C*D)
        z_flat = raw.reshape(rows, flat_w.shape[0])
        dot = z_flat - case.tensors["linear_bias"].values.reshape(-1) if "linear_bias" in case.tensors else z_flat
        sigma_z = np.sqrt(u_c ** 2 / 3 * _sum_root_squared(terms_sq, dot, hidden) + u_t ** 2 / 3 * np.square(z_flat))
    sigma_z = np.nan_to_num(sigma_z, nan=0.0, posinf=np.finfo(np.float64).max)

    def by_position(flat: np.ndarray) -> np.ndarray:  # (rows, C*D) -> the logits' shape
        return flat.reshape(shape)

    sigma_raw = by_position(sigma_z)  # the projection's error; a scale or cap carries it through its derivative
    if transform is not None:
        sigma_z = _finite(transform.logits_sigma(sigma_raw, u_t)).reshape(sigma_z.shape)

    class_axis = 0 if not batched else 1
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        z_max = np.max(z, axis=class_axis, keepdims=True) if z.size else z
        shifted = np.exp(z - z_max)
        normaliser = np.sum(shifted, axis=class_axis, keepdims=True)
        p = np.nan_to_num(shifted / normaliser, nan=0.0)
        lse = np.nan_to_num(z_max + np.log(normaliser), nan=0.0, posinf=0.0, neginf=0.0)
        sz = by_position(sigma_z)
        mixed = np.sqrt(np.sum(np.square(p * sz), axis=class_axis, keepdims=True))  # sigma of p . dz
        sigma_dlogp = np.hypot(sz, mixed)  # sigma of d log p_c = dz_c - p . dz

    upstream = _upstream(case, logits_result.output_shape)
    divisor = case.options.get("normalizer")
    if divisor is not None:  # sum / n: the 'sum' loss's gradients under an upstream of g / n
        upstream = upstream / divisor
    abs_upstream = np.abs(upstream)
    g1 = logits_result.grad_input  # dL/dz for an upstream gradient of one
    ce_grad_logits = _scale_positions(g1, upstream, class_axis)
    wanted = requested(case.options)
    if not z.size:  # an empty batch: the maximum has no positions to keep the class axis of
        z_max = np.zeros(normaliser.shape)
    root = None  # the exp sum's summation model, per position
    if z_coefficient is not None or wanted:
        from .summation import summation_root

        root = np.expand_dims(summation_root(np.moveaxis(np.nan_to_num(shifted), class_axis, -1), u_c), class_axis)
    zl = returned_zl = None
    if z_coefficient is not None or "z_loss" in wanted:  # a returned z-loss without a coefficient: 0, reduced
        returned_zl = _z_loss(case, z_coefficient or 0.0, z, z_max, normaliser, p, mixed, sigma_dlogp, root,
                              class_axis, u_c)
    if z_coefficient is not None:  # the z-loss of the (capped) logits, added to each counted position
        zl = returned_zl
        g1 = g1 + zl.grad  # a NaN gradient (a 'mean' over zero total weight) stays NaN
    grad_logits = _scale_positions(g1, upstream, class_axis)

    # the loss: G1 . dz, per output element (summed over classes, and over positions unless 'none')
    with np.errstate(over="ignore", invalid="ignore"):
        moved = np.square(np.nan_to_num(g1) * sz)
        if case.options["reduction"] == "none" or logits_result.output_shape:
            loss_from_z = np.sqrt(np.sum(moved, axis=class_axis))
        else:
            loss_from_z = np.sqrt(np.sum(moved))
    loss_sigma = np.hypot(_or_zero(logits_result.loss_sigma), loss_from_z)
    loss, loss_scale, loss_intermediate = logits_result.loss, logits_result.loss_scale, logits_result.loss_intermediate
    if zl is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            loss = np.asarray(loss) + zl.loss
            loss_sigma = np.hypot(loss_sigma, zl.loss_sigma)
            loss_scale = np.maximum(loss_scale, zl.loss_scale)
            loss_intermediate = np.maximum(loss_intermediate, zl.loss_scale)
    if divisor is not None:  # the sum before the division keeps its intermediate: it may overflow
        loss, loss_sigma, loss_scale = reference.normalised_loss(loss, loss_sigma, loss_scale, divisor, dtype)
    outputs = {}  # what the call returns beside the loss (ce_conformance.outputs)
    if "lse" in wanted:
        outputs["lse"] = Expectation(*lse_output(z_max, normaliser, mixed, root, class_axis, u_c))
    if "z_loss" in wanted:
        z_value, z_scale, z_sigma = z_loss_output(returned_zl, sz, class_axis, case.options["reduction"])
        if divisor is not None:
            z_value, z_sigma, z_scale = reference.normalised_loss(z_value, z_sigma, z_scale, divisor, dtype)
        outputs["z_loss"] = Expectation(z_value, z_scale, _finite(z_sigma))

    # the gradient of the logits: cross-entropy's error, the logits' error through p, and the
    # rounding to the dtype of a materialised gradient (torch's reference path)
    g_scale = _scale_positions(_broadcast(logits_result.grad_input_scale, shape), abs_upstream, class_axis)
    g_sigma_ce = _scale_positions(_broadcast(logits_result.grad_input_sigma, shape), abs_upstream, class_axis)
    with np.errstate(over="ignore", invalid="ignore"):
        # autograd of sum / n forms g / n in the dtype: every element one more relative rounding
        roundings = 1 if divisor is None else 2
        sigma_g = np.sqrt(np.square(g_sigma_ce) + np.square(g_scale * p * sigma_dlogp)
                          + roundings * u_t ** 2 / 3 * np.square(np.nan_to_num(grad_logits)))
        if zl is not None:
            sigma_g = np.hypot(sigma_g, _scale_positions(zl.grad_sigma, abs_upstream, class_axis))
    sigma_g = np.nan_to_num(sigma_g, nan=0.0, posinf=np.finfo(np.float64).max)

    z_mass = None if zl is None else _scale_positions(zl.p_coefficient, abs_upstream, class_axis)
    coherent = _coherent_normaliser_sigma(case, ce_grad_logits, p, shifted, normaliser, lse, class_axis, u_c, u_t,
                                          extra_mass=z_mass)
    with np.errstate(over="ignore", invalid="ignore"):  # per class too: rows err independently
        sigma_g = _finite(np.hypot(sigma_g, coherent * p))
    p_chained = p  # how a class's p reaches the raw logits' gradient (the shared error's path)
    if transform is not None:  # the chain rule through the scale and cap: G_raw = G d
        sigma_g = _finite(transform.gradient_sigma(grad_logits, sigma_g, sigma_raw, u_t))
        with np.errstate(invalid="ignore", over="ignore"):  # NaN stays NaN (a 'mean' over zero total weight)
            grad_logits = grad_logits * transform.derivative
        p_chained = p * transform.derivative
    g_flat = grad_logits.reshape(rows, flat_w.shape[0])
    abs_g = np.abs(np.nan_to_num(g_flat))
    sg_flat = sigma_g.reshape(rows, flat_w.shape[0])
    # a gradient materialised in the dtype (torch's reference path) rounds its subnormals by up to half
    # a step, and flushes the smallest to zero: all toward zero, so a product sums this bound
    # linearly (float16 'mean' over 1025 rows: every G_nc flushed, a bias gradient of 0 for -1e-5)
    flushed = np.minimum(abs_g, smallest_subnormal(dtype) / 2) / math.sqrt(3)  # a one-sided bound's sigma
    with np.errstate(over="ignore", invalid="ignore"):
        grad_x = g_flat @ flat_w
        # the unit: the largest term (bounded by the largest factors), as for cross-entropy's gradient
        grad_x_scale = np.outer(abs_g.max(axis=1, initial=0), np.abs(flat_w).max(axis=0, initial=0))
        grad_x_sigma = np.sqrt(np.square(sg_flat) @ np.square(flat_w) + u_c ** 2 / 3 * _sum_root_squared(
            np.square(g_flat) @ np.square(flat_w), grad_x, flat_w.shape[0]) + np.square(flushed @ np.abs(flat_w)))
        # per position, the classes' shared error adds up linearly: |s Q| e |sum_c p_c W_c| (summed
        # over a row's K-dim positions, whose sums may round alike)
        classes = shape[class_axis]
        spatial = math.prod(shape[class_axis + 1:])
        pw = np.einsum("ncd,cdh->ndh", p_chained.reshape(rows, classes, spatial), w.reshape(classes, spatial, hidden))
        grad_x_sigma = np.hypot(grad_x_sigma, np.sum(coherent.reshape(rows, spatial)[:, :, None] * np.abs(pw), axis=1))
        grad_w = g_flat.T @ x2
        grad_w_scale = np.outer(abs_g.max(axis=0, initial=0), np.abs(x2).max(axis=0, initial=0))
        grad_w_sigma = np.sqrt(np.square(sg_flat).T @ np.square(x2) + u_c ** 2 / 3 * _sum_root_squared(
            np.square(g_flat).T @ np.square(x2), grad_w, rows) + np.square(flushed.T @ np.abs(x2)))
    parameter_gradients = {"linear_weight": Expectation(
        grad_w.reshape(w.shape), grad_w_scale.reshape(w.shape), _finite(grad_w_sigma).reshape(w.shape))}
    if "linear_bias" in case.tensors:
        bias_shape = case.tensors["linear_bias"].shape
        with np.errstate(over="ignore", invalid="ignore"):
            grad_b = g_flat.sum(axis=0)
            grad_b_sigma = np.sqrt(np.square(sg_flat).sum(axis=0) + u_c ** 2 / 3 * _sum_root_squared(
                np.square(g_flat).sum(axis=0), grad_b, rows) + np.square(flushed.sum(axis=0)))
        parameter_gradients["linear_bias"] = Expectation(
            grad_b.reshape(bias_shape), abs_g.max(axis=0, initial=0).reshape(bias_shape),
            _finite(grad_b_sigma).reshape(bias_shape))

    grad_target = grad_target_scale = grad_target_sigma = None
    if logits_result.grad_target is not None:
        grad_target = _scale_positions(logits_result.grad_target, upstream, class_axis)
        grad_target_scale = _scale_positions(_broadcast(logits_result.grad_target_scale, shape), abs_upstream, class_axis)
        target_sigma = _scale_positions(_broadcast(logits_result.grad_target_sigma, shape), abs_upstream, class_axis)
        weights = _class_weights(case, shape, class_axis)
        factor = 1 - case.options["label_smoothing"] if case.options["label_smoothing"] > 0 else 1.0
        per_position = np.expand_dims(abs_upstream, class_axis) if abs_upstream.ndim else abs_upstream
        grad_target_sigma = _finite(np.hypot(target_sigma, per_position * factor * weights * sigma_dlogp))

    return LinearReferenceResult(
        loss=np.asarray(loss), loss_scale=loss_scale, loss_intermediate=loss_intermediate,
        grad_input=grad_x.reshape(x.shape) if gradients else None,
        grad_input_scale=grad_x_scale.reshape(x.shape) if gradients else None,
        grad_target=grad_target if gradients else None, grad_target_scale=grad_target_scale,
        output_dtype=logits_result.output_dtype, output_shape=logits_result.output_shape,
        loss_sigma=_finite(loss_sigma), grad_input_sigma=_finite(grad_x_sigma).reshape(x.shape) if gradients else None,
        grad_target_sigma=grad_target_sigma, grad_target_intermediate=logits_result.grad_target_intermediate,
        parameter_gradients=MappingProxyType(parameter_gradients if gradients else {}),
        logits=z, logits_sigma=by_position(sigma_z), outputs=MappingProxyType(outputs))


def _z_loss(case: Case, coefficient: float, z: np.ndarray, z_max: np.ndarray, normaliser: np.ndarray,
            p: np.ndarray, mixed: np.ndarray, sigma_dlogp: np.ndarray, root: np.ndarray, class_axis: int,
            u_c: float) -> ZLoss:
    """The z-loss of the case's (capped) logits: counted positions are those not ignored (every
    position of probability targets). ``root``: the exp sum's summation model per position."""
    shape = z.shape
    if case.is_probability_target:
        counted = np.ones(shape[:class_axis] + (1,) + shape[class_axis + 1:], dtype=bool)
    else:
        counted = np.expand_dims(case.target != resolved_ignore_index(case), class_axis)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        lse = z_max + np.log(normaliser)
        own = lse_sigma(np.zeros_like(mixed), lse, normaliser, root, u_c)
        with_logits = lse_sigma(mixed, lse, normaliser, root, u_c)
        return z_loss(coefficient, lse, p, counted, case.options["reduction"], own, with_logits, sigma_dlogp, z - lse,
                      class_axis, u_c)


def _coherent_normaliser_sigma(case: Case, grad_logits: np.ndarray, p: np.ndarray, shifted: np.ndarray,
                               normaliser: np.ndarray, lse: np.ndarray, class_axis: int, u_c: float,
                               u_t: float, extra_mass: np.ndarray | None = None) -> np.ndarray:
    """Per position, the sigma of the error every class's logit gradient shares.

    The gradient of the logits is ``G_c = s (Q p_c - q_c)``, ``q`` the (weighted, smoothed)
    target mass and ``Q`` its sum. The normaliser ``sum_c exp(z_c - max)`` and the sum ``Q`` (in
    the compute precision), the normaliser and the log-sum-exp where they are materialised in the
    dtype each err once per position, and that one relative error ``e`` moves every ``p_c``
    alike: ``dG_c = e s Q p_c``. Per class it is far below the gradient's own rounding, but a
    projection sums it over C classes coherently. Measured on torch 2.13's reference path:
    float64 softmax backward over 262144 classes, ``e = 3.5e-12`` in every position (2e4 ulps of
    ``grad_input``); float16 rounds the normaliser ``1.00549`` to ``1.00586``, so ``p_y - 1`` of a
    confident row is 7 % off. Returns ``|s| Q e`` per position; ``extra_mass``: a further
    coefficient of ``p`` per position (a z-loss's ``2 k lse``, upstream-scaled) that shares ``e``."""
    from .summation import summation_root

    shape = p.shape
    q = _target_mass(case, shape, class_axis)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        total = np.sum(q, axis=class_axis, keepdims=True)
        shape_of_g = total * p - q  # G = s * this
        s = np.nan_to_num(np.sum(np.nan_to_num(grad_logits) * shape_of_g, axis=class_axis, keepdims=True)
                          / np.sum(np.square(shape_of_g), axis=class_axis, keepdims=True), nan=0.0)
        last = (lambda a: np.moveaxis(a, class_axis, -1))
        root_q = np.expand_dims(summation_root(last(q), u_c), class_axis)
        root_z = np.expand_dims(summation_root(last(np.nan_to_num(shifted)), u_c), class_axis)
        relative = np.sqrt(u_c ** 2 / 3 * (np.square(np.nan_to_num(root_q / total)) +
                                           np.square(np.nan_to_num(root_z / normaliser)))
                           + u_t ** 2 / 3 * (1 + np.square(lse)))  # normaliser and lse each in the dtype
        mass = np.abs(s) * total + (0.0 if extra_mass is None else extra_mass)
        return _finite(mass * relative)


def _target_mass(case: Case, shape: tuple[int, ...], class_axis: int) -> np.ndarray:
    """``q_c = w_c ((1 - eps) t_c + eps / C)`` per logit (``t`` one-hot for index targets, 0 where
    a position is ignored): what the log-probabilities' gradient is made of."""
    classes = shape[class_axis]
    eps = max(case.options["label_smoothing"], 0.0)
    weights = _class_weights(case, shape, class_axis)
    if case.is_probability_target:
        return weights * ((1 - eps) * np.abs(np.nan_to_num(case.target)) + eps / classes)
    target = np.expand_dims(case.target, class_axis)
    valid = target != resolved_ignore_index(case)
    one_hot = (np.arange(classes).reshape(weights.shape) == target).astype(np.float64)
    return np.where(valid, weights * ((1 - eps) * one_hot + eps / classes), 0.0)


def _class_weights(case: Case, shape: tuple[int, ...], class_axis: int) -> np.ndarray:
    """The class weights' magnitudes (ones without ``weight``), shaped to broadcast over the logits."""
    weight = np.ones(shape[class_axis]) if case.weight is None else np.abs(case.weight)
    return weight.reshape((-1,) + (1,) * (len(shape) - class_axis - 1))


def _or_zero(value: np.ndarray | None) -> np.ndarray:
    return np.zeros(()) if value is None else np.asarray(value, dtype=np.float64)


def _finite(sigma: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(sigma, dtype=np.float64), nan=0.0, posinf=np.finfo(np.float64).max)


def _broadcast(per_position: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape) if per_position is None else np.broadcast_to(per_position, shape)


def _upstream(case: Case, out_shape: tuple[int, ...]) -> np.ndarray:
    """The upstream gradient per output element (a scalar for 'mean' and 'sum')."""
    g = case.grad_output
    return np.ones(out_shape) if g is None else np.asarray(g, dtype=np.float64).reshape(out_shape)


def _scale_positions(per_logit: np.ndarray | None, upstream: np.ndarray, class_axis: int) -> np.ndarray | None:
    """Multiply per-logit values by their position's upstream gradient (one scalar, or one per
    position of a 'none' loss, broadcast over the class axis)."""
    if per_logit is None:
        return None
    factor = np.expand_dims(upstream, class_axis) if np.ndim(upstream) else upstream
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(per_logit, dtype=np.float64) * factor


INAPPLICABLE_LEVELS: Final = frozenset({
    ("reduction", "legacy"), ("memory_layout", "transposed"), ("memory_layout", "strided"),
    ("memory_layout", "offset"), (("target_kind", "probability"), ("ignore_index", "negative")),
})
"""Covering-array levels (and combinations) a linear cross-entropy call cannot take: torch 2.13's
signature has no legacy ``size_average``/``reduce``, fused kernels read a contiguous input, and
probability targets take no ``ignore_index`` at all."""


# imported late: the result type extends cross-entropy's (reference imports nothing from here)
from .reference import ReferenceResult  # noqa: E402


@dataclass(frozen=True)
class LinearReferenceResult(ReferenceResult):
    """Cross-entropy's result on the exact logits, with the input's gradient w.r.t. ``X`` and the
    parameters' gradients; ``logits`` and their error scale for diagnostics."""

    parameter_gradients: Mapping[str, Expectation] = field(default_factory=dict)
    logits: np.ndarray | None = None
    logits_sigma: np.ndarray | None = None


LINEAR_CROSS_ENTROPY: Final = register_family(LossFamily(
    name=FAMILY,
    torch_function="torch.nn.functional.linear_cross_entropy",
    required_tensors=("input", "linear_weight", "target"),
    optional_tensors=("linear_bias", "weight", "grad_output"),
    option_defaults=MappingProxyType({"reduction": "mean", "ignore_index": None, "label_smoothing": 0.0,
                                      **{name: None for name in EXTENSION_OPTIONS}}),
    option_types=MappingProxyType({"ignore_index": (int, type(None)),
                                   **{name: (float, int, type(None)) for name in VALUED_OPTIONS},
                                   **{name: (bool, type(None)) for name in OUTPUT_OPTIONS}}),
    extension_options=EXTENSION_OPTIONS,
    extension_features=EXTENSION_OPTIONS,
    features=_features,
    logits_shape=logits_shape,
    evaluate=evaluate,
    output_shape=output_shape,
    parameter_gradients=("linear_weight", "linear_bias"),
    own_features=OWN_FEATURES,
    strategy=lambda **options: _strategies().linear_cross_entropy_cases(**options),
    covering_case=lambda row, seed, **options: _strategies().covering_case(row, seed, **options),
    inapplicable_levels=INAPPLICABLE_LEVELS,
    requirable=frozenset({"weights", "ignore_index", "all_ignored", "label_smoothing", "probability_targets", "k_dim",
                          "unbatched", "low_precision", "vocab_scale", "upstream_gradient", "linear_bias",
                          "invalid_input", *EXTENSION_OPTIONS}),
))


def _strategies():
    from . import linear_strategies  # builds on cross-entropy's strategies, which import the case

    return linear_strategies
