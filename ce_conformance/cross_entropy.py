"""The cross-entropy family: ``torch.nn.functional.cross_entropy``, the suite's first and the
one every other family builds on (linear cross-entropy is cross-entropy on projected logits).

Its semantics live in :mod:`ce_conformance.reference`; this module says what its cases hold,
which features a case exercises (what adapters declare and findings are tabulated by), and
where its cases come from (:func:`ce_conformance.strategies.cross_entropy_cases` for explore
and shrink, :func:`ce_conformance.covering.build_case` for the covering phase).

>>> case = cross_entropy_case([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], [2, -100], weight=[1.0, 2.0, 0.5])
>>> sorted(case.features)
['ignore_index', 'weights']
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final, Mapping

import numpy as np

from .case import VOCAB_SCALE_CLASSES, Case, LossFamily, Tensor, register_family
from .dtypes import is_float
from .errors import CaseFormatError, Rule
from .outputs import checked_flag

FAMILY: Final = "cross_entropy"

FEATURES: Final = (
    "weights", "ignore_index", "ignore_index_in_range", "all_ignored", "label_smoothing", "negative_smoothing",
    "probability_targets", "unnormalised_targets", "k_dim", "unbatched", "empty_batch", "single_class", "legacy_reduction",
    "upstream_gradient", "non_contiguous", "low_precision", "vocab_scale", "nonfinite_logits", "uint8_target",
    "invalid_input",
)
"""Semantic features a cross-entropy case can exercise; adapters declare the ones they support."""


DEFAULT_IGNORE_INDEX: Final = -100
"""torch's default ``ignore_index``; linear cross-entropy's ``ignore_index=None`` means it."""


def resolved_ignore_index(case: Case) -> int:
    """The class index a case's loss ignores: its ``ignore_index``, or -100 where that is ``None``.

    >>> resolved_ignore_index(cross_entropy_case([[0.0, 1.0]], [1], ignore_index=3))
    3
    """
    value = case.options.get("ignore_index")
    return DEFAULT_IGNORE_INDEX if value is None else int(value)


def unnormalised(target: np.ndarray, class_axis: int, dtype: str) -> bool:
    """Probability targets that are not a distribution at some position: a negative value, or
    classes summing away from 1 by more than rounding to ``dtype`` explains. torch takes them as
    given (``-sum_c t_c log q_c``); a kernel whose gradient is ``softmax - t`` assumes they sum
    to 1.

    >>> unnormalised(np.array([[0.25, 0.75], [1.0, 0.0]]), 1, "float32")
    False
    >>> unnormalised(np.array([[0.5, 0.75]]), 1, "float32"), unnormalised(np.array([[1.5, -0.5]]), 1, "float32")
    (True, True)
    """
    values = np.asarray(target, dtype=np.float64)
    if values.size == 0:
        return False
    if (values < 0).any():
        return True
    epsilon = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}.get(dtype, 2.0**-52)
    slack = 1e-3 + 16 * epsilon  # softmax targets rounded to a half dtype stay within it
    return bool((np.abs(values.sum(axis=class_axis) - 1.0) > slack).any())


def logits_features(case: Case) -> frozenset[str]:
    """The features of a case read on the logits its loss is taken over (the input of
    ``cross_entropy``; a projection's output for ``linear_cross_entropy``): every family whose
    loss is cross-entropy of some logits shares them."""
    found = set()
    x, t = case.input, case.target
    options = case.options
    shape = case.spec.logits_shape(case)
    class_axis = 0 if len(shape) == 1 else 1
    n_classes = shape[class_axis] if shape else 0
    ignore_index = resolved_ignore_index(case)
    if not case.is_valid:
        found.add("invalid_input")
    if "weight" in case.tensors:
        found.add("weights")
    if case.is_probability_target:
        found.add("probability_targets")
        if unnormalised(t, class_axis, case.target_dtype):
            found.add("unnormalised_targets")
    elif t.size and is_float(case.target_dtype) is False:
        ignored = t == ignore_index
        if ignored.any():
            found.add("ignore_index")
            if 0 <= ignore_index < n_classes:
                found.add("ignore_index_in_range")
            if ignored.all():
                found.add("all_ignored")
    if options["label_smoothing"] > 0:
        found.add("label_smoothing")
    elif options["label_smoothing"] < 0:
        found.add("negative_smoothing")
    if len(shape) >= 3:
        found.add("k_dim")
    if len(shape) == 1:
        found.add("unbatched")
    if len(shape) >= 2 and shape[0] == 0:
        found.add("empty_batch")
    if n_classes == 1:
        found.add("single_class")
    if n_classes >= VOCAB_SCALE_CLASSES:
        found.add("vocab_scale")
    if options.get("size_average") is not None or options.get("reduce") is not None:
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


def cross_entropy_case(
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
    normalizer: float | None = None,
    return_lse: bool | None = None,
    smoothing_dialect: str | None = None,
    expected_error: Rule | str | None = None,
    note: str = "",
) -> Case:
    """A cross-entropy case. Floating values are rounded to ``dtype`` on construction.

    ``target_dtype`` defaults to int64 for integer-valued targets whose shape differs from
    the input, and to ``dtype`` (probabilities) when the shapes are equal. ``normalizer``, the
    ``return_lse`` flag and ``smoothing_dialect`` are the family's extensions (:data:`EXTENSION_OPTIONS`).
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
    if normalizer is not None:
        options["normalizer"] = checked_normalizer(normalizer, options)
    if checked_flag(RETURN_LSE, return_lse):
        options[RETURN_LSE] = True
    case = Case(FAMILY, tensors, options, memory_layout, expected_error, note)
    if smoothing_dialect is not None:
        case = case.replace(options={SMOOTHING_DIALECT: smoothing_dialect})
        problem = smoothing_dialect_problem(case)
        if problem:
            raise ValueError(problem)
    return case


NORMALIZER: Final = "normalizer"
"""An extension option of cross-entropy (linear cross-entropy has it too): an external
normaliser, with ``reduction='sum'`` only — the summed loss and every gradient divided by it,
as transformers' ``fixed_cross_entropy`` does with ``num_items_in_batch`` (``'sum'``, then
``loss / num_items_in_batch``). Off (``None``) unless a case sets it; micro-batches each divided
by the whole batch's count add up to its ``'mean'`` (:mod:`ce_conformance.split`)."""
RETURN_LSE: Final = "return_lse"
"""A flag: the call returns ``(loss, lse)``, the per-position log-sum-exp (quack's
``cross_entropy_fwd(..., return_lse=True)``; :mod:`ce_conformance.outputs`)."""
SMOOTHING_DIALECT: Final = "smoothing_dialect"
"""Whose label smoothing ``label_smoothing`` means: torch's (``None``: ``ε / C`` on every class and
``1 - ε`` more on the target) or ``'megatron'``, Megatron-core's ``vocab_parallel_cross_entropy``
(and NeMo's): ``α`` spread over the ``C - 1`` other classes, ``1 - α`` on the target — torch's
with ``ε = α C / (C - 1)``, as its source derives. Index targets, ``C >= 2`` and ``α < 1`` only
(Megatron asserts ``0 < α < 1``); :func:`dialect_smoothing` is the one place the reference reads it."""
SMOOTHING_DIALECTS: Final = ("megatron",)
EXTENSION_OPTIONS: Final = (NORMALIZER, RETURN_LSE, SMOOTHING_DIALECT)
"""Cross-entropy's options that torch's function lacks, each off (``None``) unless a case sets it."""


def checked_normalizer(value: Any, options: Mapping[str, Any]) -> float:
    """``value`` as a normaliser for a case with ``options``; a ``ValueError`` where it is not
    positive or the reduction is not a plain ``'sum'``.

    >>> checked_normalizer(8, {"reduction": "sum"})
    8.0
    """
    if not float(value) > 0:
        raise ValueError(f"normalizer must be positive (or None for off), got {value!r}")
    legacy = options.get("size_average") is not None or options.get("reduce") is not None
    if options.get("reduction") in ("mean", "none") or legacy:
        raise ValueError(f"normalizer divides a 'sum'; reduction={options.get('reduction')!r}"
                         f"{' with legacy size_average/reduce' if legacy else ''} takes none")
    return float(value)


def check_normalizer_option(case: Case) -> None:
    """:func:`checked_normalizer` on a case read from a file: its breach is a
    :class:`~ce_conformance.errors.CaseFormatError` of ``options.normalizer`` (every family's reference asks)."""
    value = case.options.get(NORMALIZER)
    if value is None:
        return
    try:
        checked_normalizer(value, case.options)
    except ValueError as exc:
        raise CaseFormatError(str(exc), field=f"options.{NORMALIZER}") from None


def smoothing_dialect_problem(case: Case) -> str | None:
    """Why a case cannot take its ``smoothing_dialect`` (None when it can).

    >>> smoothing_dialect_problem(cross_entropy_case([[0.0, 1.0]], [1], label_smoothing=0.1, smoothing_dialect="megatron"))
    """
    dialect = case.options.get(SMOOTHING_DIALECT)
    if dialect is None:
        return None
    if dialect not in SMOOTHING_DIALECTS:
        return f"smoothing_dialect {dialect!r}: expected one of {', '.join(SMOOTHING_DIALECTS)} (or null for torch's)"
    if case.is_probability_target:
        return "smoothing_dialect 'megatron' takes index targets only (Megatron-core has no probability targets)"
    if not 0 <= case.options["label_smoothing"] < 1:
        return f"smoothing_dialect 'megatron' takes 0 <= label_smoothing < 1 (Megatron asserts it), " \
               f"got {case.options['label_smoothing']}"
    classes = case.input.shape[0 if case.input.ndim == 1 else 1] if case.input.ndim else 0
    if classes < 2:
        return f"smoothing_dialect 'megatron' spreads the smoothing over C - 1 classes: C >= 2, got {classes}"
    return None


def dialect_smoothing(case: Case, smoothing: float, classes: int) -> float:
    """The torch ``ε`` a case's ``label_smoothing`` stands for in its dialect (a file's breach of
    :func:`smoothing_dialect_problem` is a :class:`~ce_conformance.errors.CaseFormatError`).

    >>> dialect_smoothing(cross_entropy_case([[0.0, 1.0, 2.0]], [1], label_smoothing=0.5,
    ...                                      smoothing_dialect="megatron"), 0.5, 3)
    0.75
    """
    problem = smoothing_dialect_problem(case)
    if problem:
        raise CaseFormatError(problem, field=f"options.{SMOOTHING_DIALECT}")
    if case.options.get(SMOOTHING_DIALECT) == "megatron" and smoothing > 0:
        return smoothing * classes / (classes - 1)
    return smoothing


def _features(case: Case) -> frozenset[str]:
    return logits_features(case) | {name for name in EXTENSION_OPTIONS if case.options.get(name) is not None}


def _strategy(**options: Any):
    from .strategies import cross_entropy_cases

    return cross_entropy_cases(**options)


def _covering_case(row: Mapping[str, str], seed: int, **options: Any) -> Case:
    from .covering import build_case

    return build_case(row, seed, **options)


CROSS_ENTROPY: Final = register_family(LossFamily(
    name=FAMILY,
    torch_function="torch.nn.functional.cross_entropy",
    required_tensors=("input", "target"),
    optional_tensors=("weight", "grad_output"),
    option_defaults=MappingProxyType({"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0,
                                      "size_average": None, "reduce": None, NORMALIZER: None, RETURN_LSE: None,
                                      SMOOTHING_DIALECT: None}),
    option_types=MappingProxyType({NORMALIZER: (float, int, type(None)), RETURN_LSE: (bool, type(None)),
                                   SMOOTHING_DIALECT: (str, type(None))}),
    features=_features,
    strategy=_strategy,
    covering_case=_covering_case,
    requirable=frozenset({"weights", "ignore_index", "all_ignored", "label_smoothing", "probability_targets", "k_dim",
                          "unbatched", "low_precision", "vocab_scale", "upstream_gradient", "non_contiguous",
                          "nonfinite_logits", "invalid_input", *EXTENSION_OPTIONS}),
    own_features=EXTENSION_OPTIONS,
    extension_options=EXTENSION_OPTIONS,
    extension_features=EXTENSION_OPTIONS,
))
