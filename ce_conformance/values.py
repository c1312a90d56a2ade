"""Array values for cases: named distributions over whole parameter domains.

Plain NumPy generators shared by the Hypothesis strategies (which pick among options with
``draw``, so shrinking moves toward the first option) and the covering phase (which picks
with a seeded generator). ``pick(options)`` returns one element of a tuple; the first option
is always the simplest.

>>> rng = np.random.default_rng(0)
>>> first = lambda options: options[0]
>>> bool(weight_values("huge", rng, 3, "float16", first).max() > 16)
True
>>> ignore_index_value("out_of_range", 10, first, rng)
10
"""

from __future__ import annotations

import math
from typing import Any, Callable, Final, Sequence

import numpy as np

from .dtypes import max_finite, round_to, smallest_normal, smallest_subnormal, ulp

Pick = Callable[[Sequence[Any]], Any]

LOGIT_DISTRIBUTIONS: Final = ("small_integers", "standard", "wide", "offset", "ties", "near_ties", "confident",
                              "neg_inf", "extremes", "max_finite", "denormal", "nan")
"""Named logit distributions. ``max_finite`` puts logits at +-the dtype's largest finite value
(torch's max-subtracted softmax survives it; a naive exp does not), ``denormal`` at
subnormal magnitudes, ``nan`` a few NaNs (their propagation must match torch's)."""

NONFINITE_DISTRIBUTIONS: Final = frozenset({"neg_inf", "nan"})
PROBABILITY_KINDS: Final = ("softmax", "one_hot", "sparse", "unnormalised", "negative", "teacher")
"""``teacher``: a distillation target, the softmax of a model's logits (a deviation of 4): peaked,
with a long tail of tiny probabilities that a sequential sum of ``t log p`` loses in every row."""
DISTRIBUTION_KINDS: Final = ("softmax", "one_hot", "teacher")
"""The probability kinds that always sum to 1 at every position ("sparse" can leave one all zero):
what is drawn when a run excludes ``unnormalised_targets``."""


def probability_kinds(exclude: frozenset[str] | set[str]) -> tuple[str, ...]:
    return DISTRIBUTION_KINDS if "unnormalised_targets" in exclude else PROBABILITY_KINDS
WEIGHT_KINDS: Final = ("positive", "integers", "with_zeros", "tiny", "huge")
"""``tiny`` weights reach the dtype's smallest normal (their products are subnormal); ``huge`` ones sit at sqrt(max finite)."""

IGNORE_INDEX_KINDS: Final = ("default", "negative", "in_range", "out_of_range")
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
NORMALIZER_KINDS: Final = ("counted", "accumulated", 1.0, 3.0, 4096.0, 65536.0)
"""External normalisers (the ``normalizer`` extension): the case's own count of counted
positions (a whole batch), that count times 8 plus 3 (one micro-batch of a gradient-accumulation
step), and fixed ones up to where float16 gradients divided by it turn subnormal."""


def normalizer_value(kind: str | float, counted: int) -> float:
    """A normaliser of ``kind`` for a case counting ``counted`` positions.

    >>> normalizer_value("accumulated", 5), normalizer_value(3.0, 5)
    (43.0, 3.0)
    """
    counted = max(1, int(counted))
    return float(counted if kind == "counted" else 8 * counted + 3 if kind == "accumulated" else kind)


def counted_positions(target: Any, ignore_index: int, positions: int) -> int:
    """The positions a 'mean' counts (and a 'counted' normaliser divides by): all ``positions``
    for probability targets (``target`` None), else the class indices other than ``ignore_index``.

    >>> counted_positions(np.array([0, -100, 2]), -100, 3), counted_positions(None, -100, 3)
    (2, 3)
    """
    if target is None:
        return int(positions)
    return int(np.count_nonzero(np.asarray(target) != ignore_index))


TINY_SMOOTHINGS: Final = (1e-6, 2.0**-24, 1e-12)
SMOOTHINGS: Final = (0.1, 0.25, 0.5, 0.05, 0.9)


def logit_values(name: str, rng: np.random.Generator, shape: tuple[int, ...], dtype: str, pick: Pick) -> np.ndarray:
    """Logits (float64, exactly representable in ``dtype``) from the named distribution."""
    class_axis = 0 if len(shape) == 1 else 1
    size = math.prod(shape)
    if name == "small_integers":
        values = rng.integers(-3, 4, size=shape).astype(np.float64)
    elif name == "standard":
        values = rng.standard_normal(shape)
    elif name == "wide":  # 4: a language model's logits, whose exp sums at vocabulary scale lose terms in
        # every row (a float32 sequential sum's 'mean' over 8 rows was 1.2x its budget, unseen until 2026-12-06)
        values = rng.standard_normal(shape) * pick((4.0, 10.0, 30.0, 100.0))
    elif name == "offset":
        offsets = (1e3, -1e3, 1e4) if dtype == "float16" else (1e3, -1e4, 1e8, -1e8)
        values = rng.standard_normal(shape) + pick(offsets)
    elif name == "ties":
        values = np.full(shape, pick((0.0, 1.0, -2.5)))
    elif name == "near_ties":  # a common value per row, nudged by a few ulps of the dtype
        base = round_to(rng.standard_normal(shape[:class_axis] + (1,) + shape[class_axis + 1:]), dtype)
        values = base + rng.integers(-2, 3, size=shape) * ulp(base, dtype)
    elif name == "confident":
        values = rng.standard_normal(shape)
        gap = pick((30.0, 100.0, 1000.0))
        if size:
            hot = rng.integers(0, shape[class_axis], size=np.delete(np.array(shape), class_axis).tolist() or None)
            np.put_along_axis(values, np.expand_dims(np.asarray(hot), class_axis), gap, axis=class_axis)
    elif name == "neg_inf":
        values = rng.standard_normal(shape)
        values[rng.random(shape) < pick((0.1, 0.5, 1.0))] = -np.inf
    elif name == "extremes":
        big = max_finite(dtype) * 2.0**-12  # exp() overflows in every dtype; sums keep headroom
        values = rng.choice(np.array([big, -big, smallest_normal(dtype), 0.0, -1.0]), size=shape)
    elif name == "max_finite":  # float64: a quarter of the top, so that the float64 reference can hold 2 |x|
        top = max_finite(dtype) * (0.25 if dtype == "float64" else 1.0)
        # one sign per case: x - max(x) then stays finite (a row holding both +max and -max has
        # log-probabilities of -2 max, beyond the dtype, where any NaN/inf pattern is arithmetic)
        values = rng.choice(np.array(pick(([top, 0.0, -1.0], [-top, 0.0, 1.0]))), size=shape)
    elif name == "denormal":
        values = rng.integers(-4, 5, size=shape) * smallest_subnormal(dtype)
    elif name == "nan":
        values = rng.standard_normal(shape)
        values[rng.random(shape) < pick((0.05, 0.5))] = np.nan
    else:
        raise ValueError(f"unknown logit distribution {name!r}; known: {LOGIT_DISTRIBUTIONS}")
    return round_to(values, dtype)


def index_target_values(rng: np.random.Generator, input_shape: tuple[int, ...], ignore_index: int = -100,
                        pattern: str = "none") -> np.ndarray:
    """Class indices for ``input_shape``; ``pattern`` ignores ``none``, ``some`` or ``all`` positions.

    ``some`` ignores at least one position and keeps at least one whenever there are two.
    """
    class_axis = 0 if len(input_shape) == 1 else 1
    C = input_shape[class_axis]
    shape = () if len(input_shape) == 1 else (input_shape[0], *input_shape[2:])
    if 0 <= ignore_index < C and C > 1:  # kept positions avoid an in-range ignore_index
        values = rng.integers(0, C - 1, size=shape)
        values = values + (values >= ignore_index)
    else:
        values = rng.integers(0, C, size=shape) if C else np.zeros(shape, dtype=np.int64)
    if pattern == "all":
        values = np.full(shape, ignore_index)
    elif pattern == "some" and values.size:
        mask = rng.random(shape) < 0.4
        flat = mask.reshape(-1)
        flat[rng.integers(0, flat.size)] = True
        if flat.all() and flat.size > 1:
            flat[rng.integers(0, flat.size)] = False
        values = np.where(mask, ignore_index, values)
    return np.asarray(values, dtype=np.int64)


def ignore_index_value(kind: str, n_classes: int, pick: Pick, rng: np.random.Generator,
                       target_dtype: str = "int64") -> int:
    """An ``ignore_index`` of the given kind over the whole int64 domain.

    ``negative`` (not -100) and ``out_of_range`` (>= C) include the int64 extremes; a uint8
    target can only carry values up to 255, so only those are offered there.
    """
    if kind == "default":
        return -100
    if kind == "in_range":
        return int(rng.integers(0, n_classes))
    if kind == "negative":
        return int(pick((-1, -2, -7, INT64_MIN)))
    if target_dtype == "uint8":
        return 255
    return int(pick(tuple(dict.fromkeys((n_classes, n_classes + 1, max(255, n_classes + 2), INT64_MAX)))))


def probability_values(kind: str, rng: np.random.Generator, input_shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Class-probability targets of the input's shape (normalised or deliberately not)."""
    class_axis = 0 if len(input_shape) == 1 else 1
    if kind == "one_hot":
        hot = rng.integers(0, input_shape[class_axis],
                           size=np.delete(np.array(input_shape), class_axis).tolist() or None)
        values = (np.arange(input_shape[class_axis]).reshape([-1 if a == class_axis else 1 for a in range(len(input_shape))])
                  == np.expand_dims(np.asarray(hot), class_axis)).astype(np.float64)
    elif kind in ("softmax", "sparse", "teacher"):
        raw = np.exp(rng.standard_normal(input_shape) * (4.0 if kind == "teacher" else 1.0))
        if kind == "sparse":
            raw[rng.random(input_shape) < 0.5] = 0.0
        total = raw.sum(axis=class_axis, keepdims=True)
        values = np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)
    elif kind == "unnormalised":
        values = rng.uniform(0.0, 2.0, size=input_shape)
    elif kind == "negative":
        values = rng.standard_normal(input_shape)
    else:
        raise ValueError(f"unknown probability kind {kind!r}; known: {PROBABILITY_KINDS}")
    return round_to(values, dtype)


def weight_values(kind: str, rng: np.random.Generator, n_classes: int, dtype: str, pick: Pick) -> np.ndarray:
    """Per-class weights of the named kind."""
    if kind == "positive":
        values = rng.uniform(0.1, 2.0, n_classes)
    elif kind == "integers":
        values = rng.integers(1, 4, n_classes).astype(np.float64)
    elif kind == "with_zeros":
        values = np.where(rng.random(n_classes) < 0.3, 0.0, rng.uniform(0.1, 2.0, n_classes))
        if n_classes:
            values[rng.integers(0, n_classes)] = 0.0
    elif kind == "tiny":  # down to the smallest normal: products w * p underflow into subnormals
        values = rng.uniform(1.0, 2.0, n_classes) * pick((2.0 ** -20 if dtype != "float16" else 2.0 ** -10,
                                                          smallest_normal(dtype)))
    elif kind == "huge":
        values = rng.uniform(1.0, 2.0, n_classes) * 2.0 ** math.floor(math.log2(max_finite(dtype)) / 2 - 2)
    else:
        raise ValueError(f"unknown weight kind {kind!r}; known: {WEIGHT_KINDS}")
    return round_to(values, dtype)


def smoothing_value(kind: str, pick: Pick) -> float:
    """A label smoothing of the named kind: ``zero``, ``tiny``, ``mid``, ``one`` or ``negative``
    (torch accepts negative values and treats them as 0)."""
    if kind == "zero":
        return 0.0
    if kind == "one":
        return 1.0
    if kind == "tiny":
        return float(pick(TINY_SMOOTHINGS))
    if kind == "negative":
        return float(pick((-0.1, -0.5)))
    return float(pick(SMOOTHINGS))


def grad_output_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, pick: Pick) -> np.ndarray:
    """An upstream gradient of the loss's output shape."""
    return round_to(rng.standard_normal(shape) * pick((1.0, 0.5, 3.0)), dtype)


def output_shape(input_shape: tuple[int, ...], target_shape: tuple[int, ...], probabilities: bool,
                 reduction: str) -> tuple[int, ...]:
    """Shape of the loss (the shape an upstream gradient must have)."""
    if reduction != "none" or len(input_shape) == 1:
        return ()
    return input_shape[:1] + input_shape[2:] if probabilities else target_shape


def extreme_weights(weight: np.ndarray | None, dtype: str) -> bool:
    """Weights near the dtype's range limits (the ``tiny`` and ``huge`` kinds)."""
    if weight is None or not weight.size:
        return False
    top = float(np.abs(weight).max())
    return top > (16.0 if dtype == "float16" else 1024.0) or 0 < top <= (2.0 ** -9 if dtype in ("float16", "bfloat16")
                                                                        else 2.0 ** -16)


def logit_distributions_for(weight: np.ndarray | None, dtype: str, allowed=LOGIT_DISTRIBUTIONS) -> tuple[str, ...]:
    """Logit distributions that make sense with these weights: extreme weights times logits at
    the dtype's limits make every product over- or underflow depending on the order in which a
    kernel multiplies (w * (g / N) underflows before * log p), so the pair is not drawn."""
    if extreme_weights(weight, dtype):
        return tuple(d for d in allowed if d not in ("max_finite", "extremes")) or tuple(allowed)
    return tuple(allowed)
