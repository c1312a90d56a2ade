"""The ``Case``: one fully described call of a loss function, and its lossless JSON form.

A case is what flows through the whole suite: strategies draw it, adapters run it, the
reference judges it, findings cite it by id and ``cases/`` stores it. It is immutable, holds
every array as exact float64 (floating tensors) or int64 (integer tensors) values together
with the dtype they are meant to have, and is loaded from JSON only, never from pickles.

Loss families: a case names its family (``cross_entropy``, ``linear_cross_entropy``); tensors
and options are named mappings checked against the family's declared fields. Each family is a
module that registers a :class:`LossFamily` (:mod:`ce_conformance.cross_entropy`,
:mod:`ce_conformance.linear_cross_entropy`); the JSON form lives in :mod:`ce_conformance.case_codec`.

>>> case = Case.cross_entropy([[0.5, -1.0, 2.0]], [2], dtype="bfloat16", reduction="sum")
>>> case.reduction, case.dtype, case.input.shape
('sum', 'bfloat16', (1, 3))
>>> Case.from_json(case.to_json()) == case
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from .dtypes import INTEGER_DTYPES, is_float, numpy_dtype, round_to
from .errors import CaseFormatError, Rule
from .family import FAMILIES, LossFamily, register_family  # noqa: F401  (re-exported: families register here)

MEMORY_LAYOUTS: Final = ("contiguous", "transposed", "strided", "offset")
"""How the input tensor is laid out in memory: a plain tensor or one of three non-contiguous views."""


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
    def cross_entropy(cls, input: Any, target: Any, **options: Any) -> "Case":
        """A cross-entropy case (keywords as :func:`ce_conformance.cross_entropy.cross_entropy_case`)."""
        from .cross_entropy import cross_entropy_case

        return cross_entropy_case(input, target, **options)

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
            header = _codec().payload(self, with_data=False)
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

    # -- JSON (ce_conformance.case_codec) ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _codec().to_dict(self)

    def to_json(self, *, indent: int | None = 1) -> str:
        return _codec().to_json(self, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes, *, path: str | None = None) -> "Case":
        """Parse and validate a case; any defect raises :class:`CaseFormatError` naming the field."""
        return _codec().from_json(text, path=path)

    @classmethod
    def from_dict(cls, payload: Any, *, path: str | None = None) -> "Case":
        return _codec().from_dict(payload, path=path)

    def save(self, path: str | Path) -> Path:
        return _codec().save(self, path)

    @classmethod
    def load(cls, path: str | Path) -> "Case":
        return _codec().load(path)


def _codec():
    from . import case_codec  # the codec builds Cases: imported on use

    return case_codec


VOCAB_SCALE_CLASSES: Final = 32000
"""Class counts from here on are vocabulary scale (Llama-2's 32000 and up)."""


# the families register themselves when imported, after everything above is defined
from .cross_entropy import FEATURES  # noqa: E402  (cross-entropy's features: what adapters declare)
from . import linear_cross_entropy as _linear_cross_entropy  # noqa: E402,F401


def all_features() -> frozenset[str]:
    """Every family's features: cross-entropy's, read on the logits, and each family's own."""
    return frozenset(FEATURES).union(*(family.own_features for family in FAMILIES.values()))


def extension_features() -> frozenset[str]:
    """The features of options torch's functions do not have (a library's softcap, z-loss): an
    adapter or ``--features`` names them to take them; ``all`` does not."""
    return frozenset().union(*(family.extension_features for family in FAMILIES.values()))
