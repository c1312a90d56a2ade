"""Per-element budgets for the gradient w.r.t. the input (tolerance model v2.1).

Every element of a cross-entropy input gradient is the difference of two parts,

    g_c = s (K p_c - Q_c),

where ``s`` is the position's upstream scale (``grad_output``, ``1 / D``), ``K`` the sum of the
upstream terms of its log-softmax backward (index targets: ``(1 - eps) w_y + eps / C sum(w)``;
probability targets: ``sum_k w_k t_k``) and ``Q_c`` the subtracted term (``(1 - eps) w_y`` at
the target and ``eps / C w_c``; ``w_c t_c``). The mean denominator's error scales the whole
element; every other error a correct implementation makes in ``p_c`` is *relative* to ``p_c``:
the exp sum's error (one per row, the reference's sigmas), the sum of the upstream terms, and the roundings on the way to
``log p_c`` (``x_c - max``, ``log S``, the subtraction, ``exp``; the rounding of ``lse`` in
kernels that form ``p_c = exp(x_c - lse)`` is one of the row's errors), each at most ``u`` times
the size of its operand. So the element's unit is the ulp of its own terms,
``max(|s K p_c|, |s Q_c|)``, and its sigma ``|s K p_c|`` times the root sum of squares of those
relative errors — plus the mean denominator's error (of the whole element), the roundings of
``s Q_c`` formed in the dtype, and one absolute term: a partial product below the normal
range (tiny weights, a tiny ``p``) loses up to the smallest normal (flushed to zero), times the
factors still to come (``1 / D`` of a tiny total weight is 1e38).

The row-level model (v2) measured every element of a row in ulps of the row's largest term: a
relative error on the small probabilities of a vocabulary row stayed invisible until it reached
thousands of their ulps. Rows where ``p`` cannot be read back from the gradient (a sum of
targets that nearly cancels, an ignored or non-finite row) keep the row-level budget.

The reference does not keep ``p`` (at vocabulary scale it would be another gigabyte): it keeps
per position ``s``, ``K``, ``log S`` and the row errors, and the comparison recovers
``p_c = (g_c + s Q_c) / (s K)`` from the expected gradient, a block of positions at a time.

>>> import numpy as np
>>> from ce_conformance import reference
>>> from ce_conformance.case import Case
>>> case = Case.cross_entropy(np.array([[0.0, 3.0, -9.0]]), np.array([1]), dtype="float32")
>>> elements = reference.evaluate(case).grad_input_elements
>>> magnitude, sigma = elements.bounds(reference.evaluate(case).grad_input, 0, 1)
>>> bool(magnitude[0, 2] < 1e-4 < magnitude[0, 1])  # the tiny probability has its own unit
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from . import engine
from .tolerance import RELATIVE_ORACLE_MARGIN, SIGMAS, ErrorFigures, kernel_figures, kernel_units

CANCELLING: Final = 1.0 / 16
"""A row whose signed sum of upstream terms is below this fraction of their absolute sum keeps
the row-level budget: ``p`` read back from the gradient would carry the cancellation."""

KERNEL_MIN_ELEMENTS: Final = 1 << 14
"""Blocks at least this large get their bounds from the numba kernel (one pass instead of about
fifteen); smaller ones from NumPy, keeping the kernel's compilations for cases that pay them back."""

FLOOR_CLASSES: Final = 1
"""The class count of an element's underflow floor (:func:`~ce_conformance.tolerance.underflow_floor`):
one subnormal step, as an element is one product, not a sum over the classes; what its partial
products lose below the normal range is in its sigma. C steps (v2.2) allowed 0.006 per float16
element at C = 32000 and passed a gradient whose subnormals were flushed to zero."""

BLOCK_ELEMENTS: Final = 1 << 20
"""Elements per block of positions the comparison judges at a time (a few arrays of 8 MB)."""


def exponential_relative(sigma: np.ndarray) -> np.ndarray:
    """The relative sigma of ``p = exp(log p)`` whose ``log p`` errs with sigma ``sigma``, such
    that :data:`~ce_conformance.tolerance.SIGMAS` of them are ``expm1`` of as many of ``sigma``:
    linear for small errors, and a shift of ``log p`` by 2 (a ``lse`` rounded at 1e35) multiplies
    ``p`` by e^2, not by 3.

    >>> round(float(exponential_relative(np.array(1e-8))) / 1e-8, 6), round(float(exponential_relative(np.array(0.4))), 2)
    (1.0, 1.28)
    """
    with np.errstate(over="ignore"):
        return np.expm1(SIGMAS * np.asarray(sigma, dtype=np.float64)) / SIGMAS


@dataclass(frozen=True)
class GradientElements:
    """What the comparison needs to budget every element of an input gradient on its own.

    Per-position arrays have shape (outer, inner): the positions of a gradient of shape
    (N, C, d...) as (N, prod(d)), of a (C,) gradient as (1, 1)."""

    shape: tuple[int, ...]
    n_classes: int
    scale: np.ndarray  # s, signed
    terms_sum: np.ndarray  # K, signed
    log_total: np.ndarray  # log S = lse - max
    relative: np.ndarray  # sigma of the row-level relative error of every p_c
    scale_relative: float  # sigma of the relative error of s (the mean's denominator): of the whole element
    absolute: np.ndarray  # sigma of what subnormal partial products lose, amplified by the other factors
    elementwise: np.ndarray  # bool: rows budgeted per element
    row_magnitude: np.ndarray  # the row-level model's magnitude and sigma, for the other rows
    row_sigma: np.ndarray
    unit_roundoff: float  # of the compute precision
    half_roundoff: float  # of a half dtype whose log-probabilities the backward re-reads (else 0)
    subtracted_relative: float = 0.0  # sigma of the relative error of s Q_c, formed in the dtype
    smoothing: float = 0.0
    class_weight: np.ndarray | None = None
    target: np.ndarray | None = None  # index targets: class per position (outer, inner)
    target_coefficient: np.ndarray | None = None  # (1 - eps) w_y per position
    probabilities: np.ndarray | None = None  # probability targets, as (outer, C, inner)

    @property
    def outer(self) -> int:
        return self.scale.shape[0]

    def canonical(self, array: np.ndarray) -> np.ndarray:
        """``array`` (the gradient's shape, or a block of its first axis) as (outer, C, inner)."""
        array = np.asarray(array)
        if len(self.shape) == 1:
            return array.reshape(1, self.n_classes, 1)
        return array.reshape(array.shape[0], self.n_classes, self.scale.shape[1])

    def subtracted(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``Q`` for the positions of outer rows [start, stop), as (rows, C, inner), and the
        magnitude of its parts: a smoothed target ``t (1 - eps) + eps / C`` is formed (and
        rounded) from two terms that may cancel."""
        inner = self.scale.shape[1]
        w = np.ones(self.n_classes) if self.class_weight is None else self.class_weight
        if self.probabilities is not None:
            t = np.asarray(self.probabilities[start:stop], dtype=np.float64)
            if self.smoothing <= 0:
                q = t * w[None, :, None]
                return q, np.abs(q)
            eps_c = self.smoothing / self.n_classes
            parts = (np.abs(t) * (1 - self.smoothing) + eps_c) * np.abs(w)[None, :, None]
            return (t * (1 - self.smoothing) + eps_c) * w[None, :, None], parts
        q = np.zeros((stop - start, self.n_classes, inner))
        if self.smoothing > 0:
            q += (self.smoothing / self.n_classes) * w[None, :, None]
        rows, inner_index = np.meshgrid(np.arange(stop - start), np.arange(inner), indexing="ij")
        q[rows, self.target[start:stop], inner_index] += self.target_coefficient[start:stop]
        return q, np.abs(q)

    def bounds(self, expected: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(magnitude, sigma) of every element of ``expected`` (the gradient's outer rows
        [start, stop)), in its shape."""
        e = self.canonical(np.asarray(expected, dtype=np.float64))
        if engine.available() and e.size >= KERNEL_MIN_ELEMENTS:
            return self._kernel_bounds(e, start, stop, np.shape(expected))
        s = self.scale[start:stop, None, :]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            q, q_parts = self.subtracted(start, stop)
            sq = s * q
            proportional = np.abs(e + sq)  # |s K p_c|
            p = np.clip(proportional / np.abs(s * self.terms_sum[start:stop, None, :]), 0.0, 1.0)
            log_p = np.where(p > 0, np.log(p), 0.0)
            log_total = self.log_total[start:stop, None, :]
            u = self.unit_roundoff
            relative_sq = (self.relative[start:stop, None, :] ** 2
                           + (u * u / 3) * ((log_p + log_total) ** 2 + log_total ** 2 + log_p ** 2 + 1)
                           + (self.half_roundoff ** 2 / 3) * log_p ** 2)
            whole = np.hypot(np.abs(e) * self.scale_relative, np.abs(s) * q_parts * self.subtracted_relative)
            sigma = np.hypot(np.hypot(proportional * exponential_relative(np.sqrt(relative_sq)), whole),
                             self.absolute[start:stop, None, :])
            magnitude = np.maximum(proportional, np.abs(s) * q_parts)
        keep = self.elementwise[start:stop, None, :] & np.isfinite(magnitude) & np.isfinite(sigma)
        magnitude = np.where(keep, magnitude, self.row_magnitude[start:stop, None, :])
        sigma = np.where(keep, sigma, self.row_sigma[start:stop, None, :])
        block_shape = np.shape(expected)
        return magnitude.reshape(block_shape), sigma.reshape(block_shape)

    def _kernel_bounds(self, e: np.ndarray, start: int, stop: int, shape: tuple[int, ...]):
        """:meth:`bounds` in one pass of the numba kernel."""
        magnitude, sigma = np.empty(e.shape), np.empty(e.shape)
        element_bounds, threads = engine.kernel("element_bounds", e.size)
        element_bounds(np.ascontiguousarray(e), *self._kernel_model(start, stop, e.shape[0]), magnitude, sigma, threads)
        return magnitude.reshape(shape), sigma.reshape(shape)

    def _kernel_model(self, start: int, stop: int, rows: int) -> tuple:
        """The element model of outer rows [start, stop) (``rows`` of them) as the element kernels
        take it: the per-position arrays, the scalars, the targets and the class weights."""
        part = slice(start, stop)
        probability = self.probabilities is not None
        weight = np.ones(self.n_classes) if self.class_weight is None else np.ascontiguousarray(self.class_weight)
        return (*(np.ascontiguousarray(a[part]) for a in (
                    self.scale, self.terms_sum, self.log_total, self.relative, self.absolute, self.elementwise,
                    self.row_magnitude, self.row_sigma)),
                float(self.scale_relative), float(self.subtracted_relative), float(self.unit_roundoff),
                float(self.half_roundoff), float(SIGMAS), probability,
                np.ascontiguousarray(self.probabilities[part], dtype=np.float64) if probability else np.zeros((rows, 0, 0)),
                np.zeros((rows, 0), dtype=np.int64) if probability else np.ascontiguousarray(self.target[part]),
                np.zeros((rows, 0)) if probability else np.ascontiguousarray(self.target_coefficient[part]),
                float(self.smoothing), weight)

    def figures(self, actual: np.ndarray, expected: np.ndarray, start: int, stop: int, *, dtype: str, quantity: str,
                scale: float = 1.0, native: np.ndarray | None = None) -> ErrorFigures | None:
        """``error_figures(actual, expected, *self.bounds(expected, start, stop), ...)`` of the
        gradient's outer rows [start, stop) in one pass of the numba kernel, with no per-element
        magnitude or sigma array and the costly part of each sigma only where the element could be
        the worst (the vocabulary-scale comparison: about a third of the two passes' time); None
        where it does not apply (NumPy engine, a small block, a NaN or inf anywhere, a row whose
        own figures are not finite): then the caller takes the two passes."""
        judged = self.one_pass(actual, expected, start, stop, dtype=dtype, quantity=quantity, scale=scale, native=native)
        return None if judged is None else kernel_figures(judged[0], np.shape(expected))

    def one_pass(self, actual: np.ndarray, expected: np.ndarray, start: int, stop: int, *, dtype: str, quantity: str,
                 scale: float = 1.0, native: np.ndarray | None = None) -> tuple[tuple, int] | None:
        """:meth:`figures` as the kernel gives them (its raw tuple), with how many rows it judged
        element by element (the others its row screen settled), or None where it does not apply."""
        e = np.asarray(expected)
        if not engine.available() or e.size < KERNEL_MIN_ELEMENTS:
            return None
        part = slice(start, stop)
        rows = (self.relative[part], self.absolute[part], self.row_magnitude[part], self.row_sigma[part])
        if not all(np.isfinite(a).all() for a in rows) or not (
                np.isfinite(self.scale_relative) and np.isfinite(self.subtracted_relative)) or (rows[0] >= 1).any():
            return None  # (a relative sigma of 1 or more could overflow an element's sigma: the two passes' rules)
        a = np.asarray(actual)
        if a.dtype != np.float32:
            a = a.astype(np.float64, copy=False)
        element_figures, threads = engine.kernel("element_figures", e.size)
        top, floor, spacings, min_exponent, base = kernel_units(dtype, quantity, FLOOR_CLASSES)
        # C-contiguous: the kernel reads a position's classes as a row
        canonical = np.ascontiguousarray(self.canonical(np.asarray(e, dtype=np.float64)))
        figures = element_figures(
            np.ascontiguousarray(self.canonical(a)), canonical, *self._kernel_model(start, stop, canonical.shape[0]),
            canonical if native is None else np.ascontiguousarray(self.canonical(np.asarray(native, dtype=np.float64))),
            native is not None,
            top, floor, spacings, min_exponent, base, float(scale), RELATIVE_ORACLE_MARGIN, threads)
        return figures[:7], int(figures[7])

    def blocks(self):
        """(start, stop, part, first) for outer rows [start, stop) of about :data:`BLOCK_ELEMENTS`
        elements each: ``part`` selects them from the gradient, ``first`` is what a block's index
        adds on the gradient's first axis (an unbatched (C,) gradient is one block, its axis the
        classes')."""
        per_row = max(1, math.prod(self.shape) // max(1, self.outer))
        step = max(1, BLOCK_ELEMENTS // per_row)
        for start in range(0, self.outer, step):
            stop = min(self.outer, start + step)
            if len(self.shape) == 1:
                yield start, stop, slice(None), 0
            else:
                yield start, stop, slice(start, stop), start
