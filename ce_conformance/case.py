"""The ``Case``: one fully described call of a loss function, and its lossless JSON form.

A case is what flows through the whole suite: strategies draw it, adapters run it, the
reference judges it, findings cite it by id and ``cases/`` stores it. It is immutable, holds
every array as exact float64 (floating tensors) or int64 (integer tensors) values together
with the dtype they are meant to have, and is loaded from JSON only, never from pickles.

Loss families: a case names its family (``cross_entropy`` today); tensors and options are
named mappings checked against the family's declared fields, so binary cross-entropy with
``pos_weight`` can join by registering a second :class:`LossFamily`.

>>> case = Case.cross_entropy([[0.5, -1.0, 2.0]], [2], dtype="bfloat16", reduction="sum")
>>> case.reduction, case.dtype, case.input.shape
('sum', 'bfloat16', (1, 3))
>>> Case.from_json(case.to_json()) == case
True
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from .dtypes import FLOAT_DTYPES, INTEGER_DTYPES, is_float, numpy_dtype, round_to
from .errors import CaseFormatError, InvalidInputError, Rule

SCHEMA: Final = "ce-conformance/case"
SCHEMA_VERSION: Final = 1
MEMORY_LAYOUTS: Final = ("contiguous", "transposed", "strided", "offset")
"""How the input tensor is laid out in memory: a plain tensor or one of three non-contiguous views."""

MAX_CASE_FILE_BYTES: Final = 512 * 1024 * 1024
_LIST_ENCODING_LIMIT: Final = 4096  # larger tensors are stored as base64 of their raw bytes
_PICKLE_MAGIC: Final = (b"\x80", b"(dp", b"(lp", b"cnumpy", b"ccopy_reg")


@dataclass(frozen=True)
class Tensor:
    """An array's exact values (float64 or int64) and the dtype it is meant to have."""

    values: np.ndarray
    dtype: str

    def __post_init__(self) -> None:
        if is_float(self.dtype):
            values = round_to(self.values, self.dtype)
        elif self.dtype in INTEGER_DTYPES or self.dtype == "bool":
            values = np.array(self.values, dtype=np.int64, copy=True)
        else:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        values.setflags(write=False)
        object.__setattr__(self, "values", values)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def as_numpy(self) -> np.ndarray:
        """A fresh, writable array in the declared dtype (bfloat16 through ml_dtypes)."""
        return self.values.astype(numpy_dtype(self.dtype))


@dataclass(frozen=True)
class LossFamily:
    """What a loss family's cases may hold, and how to describe them.

    ``features`` maps a case to the semantic features it exercises; adapters declare the
    features they support, and findings are tabulated by them.
    """

    name: str
    torch_function: str
    required_tensors: tuple[str, ...]
    optional_tensors: tuple[str, ...]
    option_defaults: Mapping[str, Any]
    features: Callable[["Case"], frozenset[str]]
    #: the shape of the logits a case's loss is taken over (a probability target has it)
    logits_shape: Callable[["Case"], tuple[int, ...]] = lambda case: case.tensors["input"].shape
    #: the family's reference: ``evaluate(case, gradients=...)`` and ``output_shape(case)`` (cross-entropy's
    #: own live in :mod:`ce_conformance.reference`, which every other family's builds on)
    evaluate: Callable[..., Any] | None = None
    output_shape: Callable[["Case"], tuple[int, ...]] | None = None
    #: gradients the family judges besides the input's and a probability target's, by tensor name
    parameter_gradients: tuple[str, ...] = ()
    #: features only this family's cases have (adapters of other families never claim them)
    own_features: tuple[str, ...] = ()

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return self.required_tensors + self.optional_tensors


FAMILIES: dict[str, LossFamily] = {}


def register_family(family: LossFamily) -> LossFamily:
    FAMILIES[family.name] = family
    return family


@dataclass(frozen=True, eq=False)
class Case:
    """One call: family, named tensors, keyword options, input memory layout, expected error."""

    family: str
    tensors: Mapping[str, Tensor]
    options: Mapping[str, Any]
    memory_layout: str = "contiguous"
    expected_error: Rule | None = None
    note: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        spec = FAMILIES.get(self.family)
        if spec is None:
            raise CaseFormatError(f"unknown loss family {self.family!r}", field="family")
        missing = [n for n in spec.required_tensors if n not in self.tensors]
        unknown = [n for n in self.tensors if n not in spec.tensor_names]
        if missing or unknown:
            raise CaseFormatError(f"missing {missing} / unknown {unknown} tensors", field="tensors")
        bad_options = [k for k in self.options if k not in spec.option_defaults]
        if bad_options:
            raise CaseFormatError(f"unknown options {bad_options}", field="options")
        if self.memory_layout not in MEMORY_LAYOUTS:
            raise CaseFormatError(f"unknown memory layout {self.memory_layout!r}", field="memory_layout")
        options = {**spec.option_defaults, **self.options}
        object.__setattr__(self, "options", MappingProxyType(options))
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))
        if self.expected_error is not None:
            object.__setattr__(self, "expected_error", Rule(self.expected_error))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def cross_entropy(
        cls,
        input: Any,
        target: Any,
        *,
        dtype: str = "float32",
        target_dtype: str | None = None,
        weight: Any = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        size_average: bool | None = None,
        reduce: bool | None = None,
        memory_layout: str = "contiguous",
        grad_output: Any = None,
        expected_error: Rule | str | None = None,
        note: str = "",
    ) -> "Case":
        """A cross-entropy case. Floating values are rounded to ``dtype`` on construction.

        ``target_dtype`` defaults to int64 for integer-valued targets whose shape differs from
        the input, and to ``dtype`` (probabilities) when the shapes are equal.
        """
        input_values = np.asarray(input, dtype=np.float64)
        target_values = np.asarray(target)
        if target_dtype is None:
            same_shape = target_values.shape == input_values.shape
            target_dtype = dtype if same_shape or target_values.dtype.kind == "f" else "int64"
        tensors = {
            "input": Tensor(input_values, dtype),
            "target": Tensor(np.asarray(target_values, dtype=np.float64 if is_float(target_dtype) else np.int64), target_dtype),
        }
        if weight is not None:
            tensors["weight"] = Tensor(np.asarray(weight, dtype=np.float64), dtype)
        if grad_output is not None:
            tensors["grad_output"] = Tensor(np.asarray(grad_output, dtype=np.float64), dtype)
        options = {
            "ignore_index": int(ignore_index),
            "reduction": str(reduction),
            "label_smoothing": float(label_smoothing),
            "size_average": size_average,
            "reduce": reduce,
        }
        return cls("cross_entropy", tensors, options, memory_layout, expected_error, note)

    def replace(self, **changes: Any) -> "Case":
        """A copy with some fields changed (tensors and options are merged, not replaced)."""
        tensors = dict(self.tensors)
        for name, value in changes.pop("tensors", {}).items():
            if value is None:
                tensors.pop(name, None)
            else:
                tensors[name] = value
        options = {**self.options, **changes.pop("options", {})}
        fields = dict(family=self.family, tensors=tensors, options=options, memory_layout=self.memory_layout,
                      expected_error=self.expected_error, note=self.note)
        fields.update(changes)
        return Case(**fields)

    # -- accessors ---------------------------------------------------------------------------
    @property
    def spec(self) -> LossFamily:
        return FAMILIES[self.family]

    @property
    def dtype(self) -> str:
        """The dtype under test (the input's)."""
        return self.tensors["input"].dtype

    @property
    def input(self) -> np.ndarray:
        return self.tensors["input"].values

    @property
    def target(self) -> np.ndarray:
        return self.tensors["target"].values

    @property
    def target_dtype(self) -> str:
        return self.tensors["target"].dtype

    def _optional(self, name: str) -> np.ndarray | None:
        tensor = self.tensors.get(name)
        return None if tensor is None else tensor.values

    @property
    def weight(self) -> np.ndarray | None:
        return self._optional("weight")

    @property
    def grad_output(self) -> np.ndarray | None:
        return self._optional("grad_output")

    def __getattr__(self, name: str) -> Any:
        # Options read as attributes: case.reduction, case.ignore_index, case.label_smoothing ...
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(name)

    @property
    def is_valid(self) -> bool:
        return self.expected_error is None

    @property
    def is_probability_target(self) -> bool:
        return self.tensors["target"].shape == self.spec.logits_shape(self) and is_float(self.target_dtype)

    @property
    def features(self) -> frozenset[str]:
        cached = self.__dict__.get("_features")
        if cached is None:
            cached = self.spec.features(self)
            object.__setattr__(self, "_features", cached)
        return cached

    def call_options(self) -> dict[str, Any]:
        """Keyword options for a call. Options left at a ``None`` default (the legacy
        ``size_average``/``reduce``) are omitted, so implementations without them still work."""
        return {k: v for k, v in self.options.items() if not (v is None and self.spec.option_defaults.get(k) is None)}

    def arguments(self) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
        """Positional and keyword arguments for a NumPy call with the torch signature.

        Arrays come in their declared dtypes; ``grad_output`` is not an argument of the loss.
        """
        args = (self.tensors["input"].as_numpy(), self.tensors["target"].as_numpy())
        kwargs: dict[str, Any] = self.call_options()
        kwargs["weight"] = self.tensors["weight"].as_numpy() if "weight" in self.tensors else None
        return args, kwargs

    # -- identity ----------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """Stable content hash (16 hex digits) of the schema header, options and each tensor's raw
    little-endian bytes in its dtype: same values, dtypes and options, same id."""
        cached = self.__dict__.get("_id")
        if cached is None:
            header = {key: value for key, value in self._payload(with_data=False).items()}
            digest = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
            for name, tensor in sorted(self.tensors.items()):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(tensor.as_numpy()).astype(
                    numpy_dtype(tensor.dtype).newbyteorder("<")).tobytes())
            cached = digest.hexdigest()[:16]
            object.__setattr__(self, "_id", cached)
        return cached

    def __reduce__(self):  # for worker processes; case *files* are JSON, never pickles
        return (Case, (self.family, dict(self.tensors), dict(self.options), self.memory_layout,
                       self.expected_error, self.note))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Case) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={v.dtype}{list(v.shape)}" for k, v in self.tensors.items())
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if v != self.spec.option_defaults.get(k))
        extra = f", layout={self.memory_layout}" if self.memory_layout != "contiguous" else ""
        err = f", expects={self.expected_error.value}" if self.expected_error else ""
        return f"Case<{self.id}>({self.family}: {shapes}{', ' + opts if opts else ''}{extra}{err})"

    # -- JSON --------------------------------------------------------------------------------
    def _payload(self, *, with_data: bool = True) -> dict[str, Any]:
        encode = _encode_tensor if with_data else (lambda t: {"dtype": t.dtype, "shape": list(t.shape)})
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "family": self.family,
            "tensors": {name: encode(t) for name, t in sorted(self.tensors.items())},
            "options": dict(self.options),
            "memory_layout": self.memory_layout,
            "expected_error": self.expected_error.value if self.expected_error else None,
        }

    def to_dict(self) -> dict[str, Any]:
        payload = self._payload()
        payload["id"] = self.id
        if self.note:
            payload["note"] = self.note
        return payload

    def to_json(self, *, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes, *, path: str | None = None) -> "Case":
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
        return cls.from_dict(payload, path=path)

    @classmethod
    def from_dict(cls, payload: Any, *, path: str | None = None) -> "Case":
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
            if not _option_type_ok(default, value):
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
        case = cls(family, tensors, options, layout, Rule(expected) if expected else None, note)
        _check_consistency(case, fail)
        return case

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Case":
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CaseFormatError(f"cannot read case file ({exc.strerror})", path=str(path)) from None
        if size > MAX_CASE_FILE_BYTES:
            raise CaseFormatError(f"case file is {size} bytes, over the {MAX_CASE_FILE_BYTES}-byte limit", path=str(path))
        return cls.from_json(path.read_bytes(), path=str(path))


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


def _option_type_ok(default: Any, value: Any) -> bool:
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


def _check_consistency(case: Case, fail: Callable[..., CaseFormatError]) -> None:
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


# -- the cross-entropy family ----------------------------------------------------------------
VOCAB_SCALE_CLASSES: Final = 32000

FEATURES: Final = (
    "weights", "ignore_index", "ignore_index_in_range", "all_ignored", "label_smoothing", "negative_smoothing",
    "probability_targets", "k_dim", "unbatched", "empty_batch", "single_class", "legacy_reduction",
    "upstream_gradient", "non_contiguous", "low_precision", "vocab_scale", "nonfinite_logits", "uint8_target",
    "invalid_input",
)
"""Semantic features a cross-entropy case can exercise; adapters declare the ones they support."""


def _cross_entropy_features(case: Case) -> frozenset[str]:
    found = set()
    x, t = case.input, case.target
    options = case.options
    class_axis = 0 if x.ndim == 1 else 1
    n_classes = x.shape[class_axis] if x.ndim else 0
    if not case.is_valid:
        found.add("invalid_input")
    if "weight" in case.tensors:
        found.add("weights")
    if case.is_probability_target:
        found.add("probability_targets")
    elif t.size and is_float(case.target_dtype) is False:
        ignored = t == options["ignore_index"]
        if ignored.any():
            found.add("ignore_index")
            if 0 <= options["ignore_index"] < n_classes:
                found.add("ignore_index_in_range")
            if ignored.all():
                found.add("all_ignored")
    if options["label_smoothing"] > 0:
        found.add("label_smoothing")
    elif options["label_smoothing"] < 0:
        found.add("negative_smoothing")
    if x.ndim >= 3:
        found.add("k_dim")
    if x.ndim == 1:
        found.add("unbatched")
    if x.ndim >= 2 and x.shape[0] == 0:
        found.add("empty_batch")
    if n_classes == 1:
        found.add("single_class")
    if n_classes >= VOCAB_SCALE_CLASSES:
        found.add("vocab_scale")
    if options["size_average"] is not None or options["reduce"] is not None:
        found.add("legacy_reduction")
    if "grad_output" in case.tensors:
        found.add("upstream_gradient")
    if case.memory_layout != "contiguous":
        found.add("non_contiguous")
    if case.dtype in ("float16", "bfloat16"):
        found.add("low_precision")
    if x.size and not np.isfinite(x).all():
        found.add("nonfinite_logits")
    if case.target_dtype == "uint8":
        found.add("uint8_target")
    return frozenset(found)


CROSS_ENTROPY: Final = register_family(LossFamily(
    name="cross_entropy",
    torch_function="torch.nn.functional.cross_entropy",
    required_tensors=("input", "target"),
    optional_tensors=("weight", "grad_output"),
    option_defaults=MappingProxyType({"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0,
                                      "size_average": None, "reduce": None}),
    features=_cross_entropy_features,
))


# other families register themselves when imported, after everything above is defined
from . import linear_cross_entropy as _linear_cross_entropy  # noqa: E402,F401


def all_features() -> frozenset[str]:
    """Every family's features: cross-entropy's, read on the logits, and each family's own."""
    return frozenset(FEATURES).union(*(family.own_features for family in FAMILIES.values()))
