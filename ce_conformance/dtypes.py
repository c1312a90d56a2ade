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


def compute_dtype(name: str) -> str:
    """The precision a faithful kernel computes a dtype's loss in: float32 for the half dtypes
    (torch's CPU and CUDA kernels accumulate them in float32), the dtype itself otherwise.

    >>> compute_dtype("bfloat16"), compute_dtype("float64")
    ('float32', 'float64')
    """
    return "float32" if name in ("float16", "bfloat16") else name


def machine_epsilon(name: str) -> float:
    """Distance from 1.0 to the next larger value of the dtype."""
    return math.ldexp(1.0, -_MANTISSA_BITS[name])


def ulp(magnitude: np.ndarray | float, name: str) -> np.ndarray:
    """Spacing of the dtype's values at ``|magnitude|`` (subnormal spacing near zero, inf at inf
    and NaN).

    This is the unit the tolerance model counts errors in: an error of 1 ulp is the distance
    between adjacent representable values at the size of the expected result.
    """
    mag = np.abs(np.asarray(magnitude, dtype=np.float64))
    # floor(log2(mag)) straight from float64's exponent field (frexp + ldexp cost 4x more at
    # vocabulary scale): 0 for zero and float64 subnormals, 2047 for inf and NaN
    field = (mag.view(np.uint64) >> np.uint64(52)).astype(np.int16)  # same itemsize: any strides
    # an exact zero counts as 0.5's binade, as frexp's exponent did: its unit is what the
    # budgets were measured with (ulp_units floors it by underflow_floor anyway)
    exponent = np.maximum(np.where(mag == 0, -1, field - 1023), _MIN_NORMAL_EXPONENT[name])
    return _SPACINGS[name][exponent - _MIN_NORMAL_EXPONENT[name]]


def _spacings(name: str) -> np.ndarray:
    """ulp at each binary exponent from the dtype's smallest normal up, inf for the inf/NaN field."""
    low = _MIN_NORMAL_EXPONENT[name]
    table = np.ldexp(1.0, np.arange(low, 1025) - _MANTISSA_BITS[name])
    table[-1] = np.inf  # exponent field 2047 (inf, NaN) maps to 1024
    return table


_SPACINGS: Final = {name: _spacings(name) for name in FLOAT_DTYPES}


def spacing_table(name: str) -> np.ndarray:
    """:func:`ulp` as a table: entry k is the spacing at binary exponent k + (smallest normal's)."""
    return _SPACINGS[name]


def max_finite(name: str) -> float:
    info = ml_dtypes.finfo(numpy_dtype(name)) if name == "bfloat16" else np.finfo(numpy_dtype(name))
    return float(info.max)


def smallest_subnormal(name: str) -> float:
    return math.ldexp(1.0, _MIN_NORMAL_EXPONENT[name] - _MANTISSA_BITS[name])


def smallest_normal(name: str) -> float:
    return math.ldexp(1.0, _MIN_NORMAL_EXPONENT[name])
