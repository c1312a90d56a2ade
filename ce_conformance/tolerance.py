"""The tolerance model: errors in ULPs of the output dtype, at the magnitude of the value.

For every compared element the unit is ``ulp(dtype, max(|expected|, magnitude))``, where
``magnitude`` comes from the reference:

* for a loss: the sum of the absolute values of the terms it is made of, plus one per
  log-sum-exp (``log(sum(exp))`` of a sum >= 1 has an absolute error of about one epsilon);
* for a gradient: the largest term magnitude in its row — the "absolute floor scaled to the
  gradient's magnitude", so that a probability of 1e-30 next to a gradient of 0.5 is judged
  against 0.5.

An implementation passes a check when its worst element is within the dtype's budget. The
budgets below were set from torch 2.13 CPU's own error distribution
(``benchmarks/tolerance_survey.py``, figures in the README): above torch's worst case, and
far below what a low-precision accumulation or an unshifted log-sum-exp produces. Budgets grow
with the class count C, because a correct recursive sum over C terms errs by up to ~C epsilons
of the precision it is computed in.

>>> float(ulp_errors(np.array([1.0 + 2**-7]), np.array([1.0]), np.array([1.0]), "bfloat16")[0])
1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

import math

from .dtypes import machine_epsilon, max_finite, smallest_subnormal, ulp


@dataclass(frozen=True)
class Budget:
    """Largest accepted error, in ULPs of the output dtype, before growth with the class count."""

    loss: float
    grad_input: float
    grad_target: float


BUDGETS: Final = {
    "float64": Budget(loss=8.0, grad_input=8.0, grad_target=8.0),
    "float32": Budget(loss=8.0, grad_input=8.0, grad_target=8.0),
    "bfloat16": Budget(loss=4.0, grad_input=5.0, grad_target=5.0),
    "float16": Budget(loss=4.0, grad_input=8.0, grad_target=8.0),
}
"""Base budgets per dtype (see module docstring and README for the measurements behind them)."""

SUMMATION_GROWTH: Final = 0.5
"""Extra ULPs per class, in units of the *compute* precision: the recursive-summation bound
(n - 1) * u with u = eps / 2. torch sums over the class axis recursively in strided layouts;
measured errors reach 0.44 * C ulps (float32 backward) and 0.18 * C (float64 forward)."""

REDUCTION_GROWTH: Final = 0.5
"""Extra ULPs per sqrt(positions) for 'sum' and 'mean' losses, in units of the output dtype:
torch's K-dim kernels accumulate the batch reduction in the input dtype (measured: 5.3 bf16
ulps for 500 positions)."""

_COMPUTE_DTYPE: Final = {"float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float64"}

RELATIVE_ORACLE_MARGIN: Final = 2.0
"""For the opt-in ``torch`` oracle: ULPs an implementation may exceed torch's own error by."""


def budget_for(dtype: str, quantity: str, n_classes: int = 1, reduced_positions: int = 0) -> float:
    """The budget in ULPs of ``dtype`` for ``quantity`` (loss, grad_input, grad_target) at C
    classes; ``reduced_positions`` is the number of positions a 'sum'/'mean' loss adds up.

    >>> budget_for("bfloat16", "loss", 32000)  # fp32 internals: growth is a fraction of a bf16 ulp
    4.244140625
    """
    base = getattr(BUDGETS.get(dtype, BUDGETS["float64"]), quantity)
    compute = _COMPUTE_DTYPE.get(dtype, dtype)
    growth = SUMMATION_GROWTH * n_classes * machine_epsilon(compute) / machine_epsilon(dtype)
    if quantity == "loss" and reduced_positions > 1:
        growth += REDUCTION_GROWTH * math.sqrt(reduced_positions)
    return base + growth


def underflow_floor(dtype: str, n_classes: int) -> float:
    """Absolute error floor: products of tiny weights and probabilities underflow below the
    subnormal range (float16: 6e-8), each term losing up to one subnormal step."""
    return n_classes * smallest_subnormal(dtype)


def expected_overflows(expected: np.ndarray, dtype: str) -> np.ndarray:
    """Elements whose true value rounds to +-inf in the dtype (torch would return inf there)."""
    top = max_finite(dtype)
    return np.isfinite(expected) & (np.abs(expected) >= top + float(ulp(top, dtype)) / 2)


def ulp_errors(actual: np.ndarray, expected: np.ndarray, magnitude: np.ndarray, dtype: str,
               n_classes: int = 1) -> np.ndarray:
    """Elementwise |actual - expected| in ULPs of ``dtype`` at max(|expected|, magnitude), with
    the :func:`underflow_floor` as the smallest unit.

    Elements where either side is NaN or infinite give 0: the NaN/inf pattern, overflow
    included, is judged by :func:`nonfinite_mismatch` alone.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    magnitude = np.broadcast_to(np.asarray(magnitude, dtype=np.float64), expected.shape)
    both_finite = np.isfinite(actual) & np.isfinite(expected)
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.minimum(np.maximum(np.abs(np.where(both_finite, expected, 0)),
                                      np.nan_to_num(magnitude, nan=0, posinf=0)), max_finite(dtype))
        unit = np.maximum(ulp(scale, dtype), underflow_floor(dtype, n_classes))
        errors = np.abs(np.where(both_finite, actual - expected, 0)) / unit
    return np.where(np.isfinite(errors), errors, 0.0)


def nonfinite_mismatch(actual: np.ndarray, expected: np.ndarray, dtype: str, *, exact_kind: bool,
                       intermediate: np.ndarray | None = None) -> np.ndarray:
    """Elements whose NaN/inf class differs from the expected one.

    ``exact_kind`` (losses): NaN, +inf, -inf and finite must match exactly. Otherwise
    (gradients, undefined at such points) only finite vs non-finite must match.
    An expected value that overflows the dtype may come back as inf or as the largest finite;
    so may one whose ``intermediate`` (an unscaled sum: a 'mean' before its division, the
    smoothing sum before its eps / C) overflows the dtype.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    overflow = expected_overflows(expected, dtype)
    if intermediate is not None:
        overflow = overflow | (np.broadcast_to(np.asarray(intermediate, dtype=np.float64), expected.shape)
                               >= max_finite(dtype) / 2)
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
    return mismatch & ~saturated
