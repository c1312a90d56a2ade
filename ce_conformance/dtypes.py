"""Floating-point formats under test: names, NumPy dtypes, rounding and ULPs.

Every other module names dtypes by these strings, so that a case file, a findings table and a
torch/JAX adapter all agree on what "bfloat16" means. bfloat16 values live in NumPy through
``ml_dtypes``; all arithmetic of the suite itself happens in float64 on values that are exactly
representable in the dtype under test.

>>> round_to([1.0 + 2**-9], "bfloat16")   # bfloat16 keeps 8 significant bits
array([1.])
>>> float(ulp(1.0, "float16"))
0.0009765625
"""

from __future__ import annotations

import math
from typing import Final

import ml_dtypes
import numpy as np

FLOAT_DTYPES: Final = ("float16", "bfloat16", "float32", "float64")
"""Floating formats the suite generates cases in, from least to most precise."""

INDEX_DTYPES: Final = ("int64", "uint8")
"""Integer formats torch accepts for class-index targets."""

INTEGER_DTYPES: Final = ("int64", "int32", "int16", "int8", "uint8")
"""Integer formats a case may carry (the non-index ones only in deliberately invalid cases)."""

LOW_PRECISION: Final = frozenset({"float16", "bfloat16"})

_MANTISSA_BITS: Final = {"float16": 10, "bfloat16": 7, "float32": 23, "float64": 52}
_MIN_NORMAL_EXPONENT: Final = {"float16": -14, "bfloat16": -126, "float32": -126, "float64": -1022}


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a dtype name (``bfloat16`` comes from ``ml_dtypes``)."""
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    if name in FLOAT_DTYPES or name in INTEGER_DTYPES or name == "bool":
        return np.dtype(name)
    raise ValueError(f"unknown dtype {name!r}; expected one of {FLOAT_DTYPES + INTEGER_DTYPES}")


def dtype_name(dtype: np.dtype | type) -> str:
    """Inverse of :func:`numpy_dtype`."""
    dtype = np.dtype(dtype)
    if dtype == np.dtype(ml_dtypes.bfloat16):
        return "bfloat16"
    return dtype.name


def is_float(name: str) -> bool:
    return name in FLOAT_DTYPES


def round_to(values: np.ndarray | list | float, name: str) -> np.ndarray:
    """Round float64 values to the nearest value of ``name`` and return them as float64.

    Rounding is round-to-nearest-even, as torch's ``.to(dtype)`` does; overflow gives inf.
    """
    array = np.asarray(values, dtype=np.float64)
    if name == "float64":
        return array.copy()
    with np.errstate(over="ignore"):
        return array.astype(numpy_dtype(name)).astype(np.float64)


def is_representable(values: np.ndarray, name: str) -> bool:
    """True when every value survives a round trip through ``name`` unchanged (NaN included)."""
    array = np.asarray(values, dtype=np.float64)
    rounded = round_to(array, name)
    return bool(np.array_equal(rounded, array, equal_nan=True))


def mantissa_bits(name: str) -> int:
    return _MANTISSA_BITS[name]


def machine_epsilon(name: str) -> float:
    """Distance from 1.0 to the next larger value of the dtype."""
    return math.ldexp(1.0, -_MANTISSA_BITS[name])


def ulp(magnitude: np.ndarray | float, name: str) -> np.ndarray:
    """Spacing of the dtype's values at ``|magnitude|`` (subnormal spacing near zero, inf at inf).

    This is the unit the tolerance model counts errors in: an error of 1 ulp is the distance
    between adjacent representable values at the size of the expected result.
    """
    mag = np.abs(np.asarray(magnitude, dtype=np.float64))
    bits = _MANTISSA_BITS[name]
    _, exponent = np.frexp(mag)  # mag = m * 2**exponent, m in [0.5, 1)
    exponent = np.maximum(exponent.astype(np.int64) - 1, _MIN_NORMAL_EXPONENT[name])
    spacing = np.ldexp(1.0, exponent - bits)
    return np.where(np.isfinite(mag), spacing, np.inf)


def max_finite(name: str) -> float:
    info = ml_dtypes.finfo(numpy_dtype(name)) if name == "bfloat16" else np.finfo(numpy_dtype(name))
    return float(info.max)


def smallest_subnormal(name: str) -> float:
    return math.ldexp(1.0, _MIN_NORMAL_EXPONENT[name] - _MANTISSA_BITS[name])


def smallest_normal(name: str) -> float:
    return math.ldexp(1.0, _MIN_NORMAL_EXPONENT[name])
