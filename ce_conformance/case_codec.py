"""A case's JSON form: lossless, validated field by field, never a pickle.

Floating tensors up to a few thousand values are written as lists (``"nan"``, ``"inf"`` as
strings, so the file stays strict JSON), larger ones as base64 of their little-endian bytes in
their dtype. Loading checks every field and refuses what it does not know, then checks that the
case means what it says (:func:`check_consistency`): a "valid" case passes torch's argument
checks, an invalid one breaks exactly the rule it names. The :class:`~ce_conformance.case.Case`
methods (``to_json``, ``from_json``, ``save``, ``load``) are thin wrappers over this module.

>>> from ce_conformance.case import Case
>>> case = Case.cross_entropy([[0.5, float("nan")]], [1], dtype="float16")
>>> to_dict(case)["tensors"]["input"]
{'dtype': 'float16', 'shape': [1, 2], 'data': [0.5, 'nan']}
>>> from_json(to_json(case)) == case
True
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np

from .case import FAMILIES, MEMORY_LAYOUTS, Case, Tensor
from .dtypes import FLOAT_DTYPES, INTEGER_DTYPES, is_float, numpy_dtype
from .errors import CaseFormatError, InvalidInputError, Rule

SCHEMA: Final = "ce-conformance/case"
SCHEMA_VERSION: Final = 1
MAX_CASE_FILE_BYTES: Final = 512 * 1024 * 1024
_LIST_ENCODING_LIMIT: Final = 4096  # larger tensors are stored as base64 of their raw bytes
_PICKLE_MAGIC: Final = (b"\x80", b"(dp", b"(lp", b"cnumpy", b"ccopy_reg")


def payload(case: Case, *, with_data: bool = True) -> dict[str, Any]:
    encode = _encode_tensor if with_data else (lambda t: {"dtype": t.dtype, "shape": list(t.shape)})
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "family": case.family,
        "tensors": {name: encode(t) for name, t in sorted(case.tensors.items())},
        "options": {k: v for k, v in case.options.items() if not (v is None and k in case.spec.extension_options)},
        "memory_layout": case.memory_layout,
        "expected_error": case.expected_error.value if case.expected_error else None,
    }


def to_dict(case: Case) -> dict[str, Any]:
    data = payload(case)
    data["id"] = case.id
    if case.note:
        data["note"] = case.note
    return data


def to_json(case: Case, *, indent: int | None = 1) -> str:
    return json.dumps(to_dict(case), indent=indent, allow_nan=False)


def from_json(text: str | bytes, *, path: str | None = None) -> Case:
    """Parse and validate a case; any defect raises :class:`CaseFormatError` naming the field."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_CASE_FILE_BYTES:
        raise CaseFormatError(f"case file is {len(raw)} bytes, over the {MAX_CASE_FILE_BYTES}-byte limit", path=path)
    stripped = raw.lstrip()
    if stripped.startswith(_PICKLE_MAGIC):
        raise CaseFormatError("looks like a pickle payload; case files are JSON and are never unpickled", path=path)
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise CaseFormatError(f"not valid JSON ({exc})", path=path) from None
    return from_dict(payload, path=path)


def from_dict(payload: Any, *, path: str | None = None) -> Case:
    def fail(message: str, field: str | None = None) -> CaseFormatError:
        return CaseFormatError(message, field=field, path=path)

    if not isinstance(payload, dict):
        raise fail("top level must be a JSON object")
    allowed = {"schema", "schema_version", "family", "tensors", "options", "memory_layout", "expected_error", "id", "note"}
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise fail(f"unexpected field(s) {unknown}; object payloads are not accepted", unknown[0])
    if payload.get("schema") != SCHEMA:
        raise fail(f"expected {SCHEMA!r}, got {payload.get('schema')!r}", "schema")
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise fail(f"unsupported schema version {payload.get('schema_version')!r} (this tool reads {SCHEMA_VERSION})",
                   "schema_version")
    family = payload.get("family")
    if family not in FAMILIES:
        raise fail(f"unknown loss family {family!r}", "family")
    spec = FAMILIES[family]
    tensors_raw = payload.get("tensors")
    if not isinstance(tensors_raw, dict):
        raise fail("must be an object of named tensors", "tensors")
    tensors = {}
    for name, raw in tensors_raw.items():
        if name not in spec.tensor_names:
            raise fail(f"unknown tensor {name!r} for family {family!r}", f"tensors.{name}")
        tensors[name] = _decode_tensor(raw, f"tensors.{name}", fail)
    for name in spec.required_tensors:
        if name not in tensors:
            raise fail("required tensor is missing", f"tensors.{name}")
    options = payload.get("options", {})
    if not isinstance(options, dict):
        raise fail("must be an object", "options")
    for key, value in options.items():
        default = spec.option_defaults.get(key, KeyError)
        if default is KeyError:
            raise fail(f"unknown option {key!r}", f"options.{key}")
        if not _option_type_ok(default, value, spec.option_types.get(key)):
            raise fail(f"value {value!r} has the wrong type", f"options.{key}")
    layout = payload.get("memory_layout", "contiguous")
    if layout not in MEMORY_LAYOUTS:
        raise fail(f"unknown memory layout {layout!r}; expected one of {MEMORY_LAYOUTS}", "memory_layout")
    expected = payload.get("expected_error")
    if expected is not None and expected not in {r.value for r in Rule}:
        raise fail(f"unknown rule {expected!r}", "expected_error")
    note = payload.get("note", "")
    if not isinstance(note, str):
        raise fail("must be a string", "note")
    case = Case(family, tensors, options, layout, Rule(expected) if expected else None, note)
    check_consistency(case, fail)
    return case


def save(case: Case, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(to_json(case) + "\n")
    tmp.replace(path)
    return path


def load(path: str | Path) -> Case:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CaseFormatError(f"cannot read case file ({exc.strerror})", path=str(path)) from None
    if size > MAX_CASE_FILE_BYTES:
        raise CaseFormatError(f"case file is {size} bytes, over the {MAX_CASE_FILE_BYTES}-byte limit", path=str(path))
    return from_json(path.read_bytes(), path=str(path))


# -- tensor codec ----------------------------------------------------------------------------
def _encode_tensor(tensor: Tensor) -> dict[str, Any]:
    shape = list(tensor.shape)
    if tensor.values.size > _LIST_ENCODING_LIMIT:
        raw = np.ascontiguousarray(tensor.as_numpy()).astype(numpy_dtype(tensor.dtype).newbyteorder("<")).tobytes()
        return {"dtype": tensor.dtype, "shape": shape, "base64": base64.b64encode(raw).decode("ascii")}
    flat = tensor.values.reshape(-1)
    if is_float(tensor.dtype):
        data = [v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
                for v in flat.tolist()]
    else:
        data = flat.tolist()
    return {"dtype": tensor.dtype, "shape": shape, "data": data}


def _decode_tensor(raw: Any, where: str, fail: Callable[..., CaseFormatError]) -> Tensor:
    if not isinstance(raw, dict):
        raise fail("must be an object with dtype, shape and data", where)
    unknown = sorted(set(raw) - {"dtype", "shape", "data", "base64"})
    if unknown:
        raise fail(f"unexpected field(s) {unknown}", f"{where}.{unknown[0]}")
    dtype = raw.get("dtype")
    if dtype not in FLOAT_DTYPES + INTEGER_DTYPES:
        raise fail(f"unknown dtype {dtype!r}", f"{where}.dtype")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise fail("must be a list of non-negative integers", f"{where}.shape")
    count = math.prod(shape)
    if ("data" in raw) == ("base64" in raw):
        raise fail("exactly one of 'data' and 'base64' is required", where)
    if "base64" in raw:
        try:
            blob = base64.b64decode(raw["base64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise fail(f"invalid base64 ({exc})", f"{where}.base64") from None
        item = numpy_dtype(dtype).newbyteorder("<")
        if len(blob) != count * item.itemsize:
            raise fail(f"holds {len(blob) // item.itemsize} values but shape {shape} needs {count}", f"{where}.base64")
        array = np.frombuffer(blob, dtype=item).astype(np.float64 if is_float(dtype) else np.int64)
        return Tensor(array.reshape(shape), dtype)
    data = raw["data"]
    if not isinstance(data, list):
        raise fail("must be a flat list of numbers", f"{where}.data")
    if len(data) != count:
        raise fail(f"holds {len(data)} values but shape {shape} needs {count} (mismatched shape)", f"{where}.data")
    if is_float(dtype):
        values = []
        for v in data:
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise fail(f"non-numeric value {v!r}", f"{where}.data")
            if isinstance(v, str):
                if v not in ("inf", "-inf", "nan"):
                    raise fail(f"string value {v!r}; only 'inf', '-inf' and 'nan' are allowed", f"{where}.data")
                v = float(v)
            values.append(float(v))
        return Tensor(np.array(values, dtype=np.float64).reshape(shape), dtype)
    for v in data:
        if isinstance(v, bool) or not isinstance(v, int):
            raise fail(f"non-integer value {v!r} in an integer ({dtype}) tensor", f"{where}.data")
    array = np.array(data, dtype=object)
    info = np.iinfo(numpy_dtype(dtype))
    if array.size and (min(data) < info.min or max(data) > info.max):
        raise fail(f"value outside the range of {dtype}", f"{where}.data")
    return Tensor(np.array(data, dtype=np.int64).reshape(shape), dtype)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"bare {name} is not JSON; write the string 'nan', 'inf' or '-inf'")


def _option_type_ok(default: Any, value: Any, types: tuple[type, ...] | None = None) -> bool:
    if types is not None:  # declared by the family; a bool is never an int here
        return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if default is None:  # legacy size_average / reduce: a bool or null
        return value is None or isinstance(value, bool)
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


_RULE_FIELDS: Final = {
    Rule.TARGET_SHAPE: "tensors.target.shape",
    Rule.TARGET_DTYPE: "tensors.target.dtype",
    Rule.TARGET_OUT_OF_BOUNDS: "tensors.target.data",
    Rule.WEIGHT_SHAPE: "tensors.weight.shape",
    Rule.INPUT_SHAPE: "tensors.input.shape",
    Rule.INPUT_DTYPE: "tensors.input.dtype",
    Rule.LABEL_SMOOTHING_RANGE: "options.label_smoothing",
    Rule.IGNORE_INDEX_WITH_PROBABILITIES: "options.ignore_index",
    Rule.REDUCTION_VALUE: "options.reduction",
}


def check_consistency(case: Case, fail: Callable[..., CaseFormatError]) -> None:
    """A loaded case must mean what it says: valid cases pass the reference's argument checks,
    invalid ones break exactly the rule they name, and grad_output fits the output."""
    from . import reference  # local: reference imports nothing from here at module level

    try:
        output_shape = reference.output_shape(case)
    except InvalidInputError as exc:
        if case.expected_error is None:
            raise fail(f"inconsistent with a valid call: {exc}", _RULE_FIELDS.get(exc.rule)) from None
        if exc.rule != case.expected_error:
            raise fail(f"declares {case.expected_error.value!r} but the call breaks {exc.rule.value!r}: {exc}",
                       "expected_error") from None
        return
    if case.expected_error is not None:
        raise fail(f"declares {case.expected_error.value!r} but the call is valid", "expected_error")
    grad_output = case.tensors.get("grad_output")
    if grad_output is not None and grad_output.shape != output_shape:
        raise fail(f"shape {list(grad_output.shape)} does not match the output shape {list(output_shape)}",
                   "tensors.grad_output.shape")
