"""Composable Hypothesis strategies for cross-entropy cases.

Hypothesis draws the *structure* of a case (dtype, shape, target kind, ignore pattern,
weights, smoothing, reduction, memory layout ...); array *values* come from a seeded NumPy
generator and a named distribution. That keeps generation fast at vocabulary scale and makes
shrinking move toward small shapes, simple distributions and default options.

Shapes come from small alphabets (class counts such as 1, 7, 128, 129, 4097, 32000, 128256),
so backends that compile per shape (JAX, torch.compile, user kernels) compile a bounded
number of times, while odd sizes still hit partial blocks of blocked kernels.

>>> from hypothesis import given
>>> @given(cross_entropy_cases(dtypes=["float64"]))
... def test_mean_is_finite(case): ...

Every public strategy documents one example; :func:`cross_entropy_cases` combines them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Sequence

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from .case import Case
from .cross_entropy import CROSS_ENTROPY, unnormalised
from .dtypes import FLOAT_DTYPES
from .errors import Rule
from .values import (IGNORE_INDEX_KINDS, LOGIT_DISTRIBUTIONS, NONFINITE_DISTRIBUTIONS, NORMALIZER_KINDS,
                     PROBABILITY_KINDS, counted_positions, normalizer_value, probability_kinds,
                     SMOOTHINGS, TINY_SMOOTHINGS, WEIGHT_KINDS, grad_output_values, ignore_index_value,
                     index_target_values, logit_distributions_for, logit_values, output_shape, probability_values,
                     weight_values)

CLASS_COUNTS: Final = (2, 3, 1, 4, 5, 7, 8, 10, 16, 17, 31, 32, 33, 64, 100, 127, 128, 129, 255, 256, 257,
                       1000, 1024, 1025, 4097)
"""Class counts drawn for ordinary cases: tiny, powers of two and their neighbours."""

VOCAB_CLASS_COUNTS: Final = (32000, 32768, 50257, 128256, 262144)
"""Vocabulary-scale class counts (Llama-2, GPT-2, Llama-3, Gemma-3), drawn rarely."""

BATCH_SIZES: Final = (1, 2, 3, 4, 5, 7, 8, 16, 31, 64, 100, 257, 1024, 2049)
SPATIAL_SIZES: Final = (1, 2, 3, 4, 5, 7)
INVALID_RULES: Final = tuple(r for r in Rule if r is not Rule.INPUT_SHAPE)


@dataclass(frozen=True)
class SizeLimits:
    """How big drawn cases may get; profiles choose these (ci small, nightly large)."""

    max_elements: int = 1 << 16
    vocab_percent: int = 4
    max_vocab_rows: int = 4


SIZE_LIMITS: Final = {
    "dev": SizeLimits(max_elements=1 << 14, vocab_percent=2, max_vocab_rows=2),
    "ci": SizeLimits(),
    "nightly": SizeLimits(max_elements=1 << 20, vocab_percent=6, max_vocab_rows=1024),
}


def dtypes(allowed: Sequence[str] = FLOAT_DTYPES) -> st.SearchStrategy[str]:
    """A floating dtype name to test in.

    >>> dtypes(["bfloat16"]).example()
    'bfloat16'
    """
    order = [d for d in ("float32", "float64", "bfloat16", "float16") if d in allowed]
    return st.sampled_from(order)


_dtype_strategy = dtypes


def class_counts(limits: SizeLimits = SizeLimits()) -> st.SearchStrategy[int]:
    """A class count C: usually small, vocabulary scale in ``limits.vocab_percent`` % of draws.

    >>> class_counts(SizeLimits(vocab_percent=100)).example() >= 32000
    True
    """
    return st.integers(0, 99).flatmap(
        lambda roll: st.sampled_from(VOCAB_CLASS_COUNTS) if roll >= 100 - limits.vocab_percent
        else st.sampled_from([c for c in CLASS_COUNTS if c <= limits.max_elements]))


@st.composite
def input_shapes(draw, n_classes: int | None = None, limits: SizeLimits = SizeLimits(),
                 allow_empty: bool = True, kinds: Sequence[str] = ("batched", "unbatched", "k_dim")) -> tuple[int, ...]:
    """An input shape: unbatched ``(C,)``, ``(N, C)`` or K-dim ``(N, C, d1..dK)`` with K <= 3.

    >>> len(input_shapes(n_classes=5).example()) in (1, 2, 3, 4, 5)
    True
    """
    C = draw(class_counts(limits)) if n_classes is None else n_classes
    kind = draw(st.sampled_from(tuple(kinds)))
    if kind == "unbatched":
        return (C,)
    spatial: tuple[int, ...] = ()
    budget = limits.max_vocab_rows * C if C >= VOCAB_CLASS_COUNTS[0] else limits.max_elements
    if kind == "k_dim":
        for _ in range(draw(st.integers(1, 3))):
            room = budget // (C * math.prod(spatial))
            spatial += (draw(st.sampled_from([d for d in SPATIAL_SIZES if d <= room] or [1])),)
    per_item = C * math.prod(spatial)
    if allow_empty and draw(st.integers(0, 19)) == 19:
        return (0, C, *spatial)
    fitting = [n for n in BATCH_SIZES if n * per_item <= budget] or [1]
    return (draw(st.sampled_from(fitting)), C, *spatial)


def _picker(draw):
    return lambda options: draw(st.sampled_from(tuple(options)))


@st.composite
def logits(draw, shape: tuple[int, ...], dtype: str = "float32",
           distributions: Sequence[str] = LOGIT_DISTRIBUTIONS) -> np.ndarray:
    """Logit values (float64, exactly representable in ``dtype``) from a named distribution.

    >>> logits((2, 3), "float16", ["ties"]).example().tolist()[0] in ([0.0] * 3, [1.0] * 3, [-2.5] * 3)
    True
    """
    name = draw(st.sampled_from(tuple(distributions)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return logit_values(name, rng, shape, dtype, _picker(draw))


@st.composite
def index_targets(draw, input_shape: tuple[int, ...], ignore_index: int = -100,
                  ignore_pattern: str = "none") -> np.ndarray:
    """Class indices for ``input_shape``; ``ignore_pattern`` is ``none``, ``some`` or ``all``.

    >>> index_targets((4, 3), ignore_pattern="all").example().tolist()
    [-100, -100, -100, -100]
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return index_target_values(rng, input_shape, ignore_index, ignore_pattern)


def ignore_indices(n_classes: int, kinds: Sequence[str] = IGNORE_INDEX_KINDS,
                   target_dtype: str = "int64") -> st.SearchStrategy[int]:
    """An ``ignore_index`` over the int64 domain: -100, other negatives, in-range, >= C.

    >>> ignore_indices(10, ["out_of_range"]).example() >= 10
    True
    """
    @st.composite
    def build(draw):
        kind = draw(st.sampled_from(tuple(kinds)))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        return ignore_index_value(kind, n_classes, _picker(draw), rng, target_dtype)

    return build()


@st.composite
def probability_targets(draw, input_shape: tuple[int, ...], dtype: str = "float32",
                        kinds: Sequence[str] = PROBABILITY_KINDS) -> np.ndarray:
    """Class-probability targets of the input's shape (normalised or deliberately not).

    >>> probability_targets((2, 4), kinds=["one_hot"]).example().sum(axis=1).tolist()
    [1.0, 1.0]
    """
    kind = draw(st.sampled_from(tuple(kinds)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return probability_values(kind, rng, input_shape, dtype)


@st.composite
def weights(draw, n_classes: int, dtype: str = "float32", kinds: Sequence[str] = WEIGHT_KINDS) -> np.ndarray:
    """Per-class weights: positive reals, small integers, exact zeros, tiny (to subnormal) or huge.

    >>> bool((weights(6, kinds=["positive"]).example() > 0).all())
    True
    """
    kind = draw(st.sampled_from(tuple(kinds)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return weight_values(kind, rng, n_classes, dtype, _picker(draw))


def label_smoothings(allow_negative: bool = True) -> st.SearchStrategy[float]:
    """Label smoothing: usually 0, else exactly 1, tiny (down to 1e-12), a value in (0, 1), or
    rarely negative (torch treats it as 0).

    >>> 0.0 <= label_smoothings(allow_negative=False).example() <= 1.0
    True
    """
    def pick(roll: int) -> st.SearchStrategy[float]:
        if roll < 5:
            return st.just(0.0)
        if roll == 9 and allow_negative:
            return st.sampled_from((-0.1, -0.5))
        return st.one_of(st.sampled_from(SMOOTHINGS + (1.0,) + TINY_SMOOTHINGS), st.floats(0.0, 1.0, width=32))

    return st.integers(0, 9).flatmap(pick)


def reductions() -> st.SearchStrategy[str]:
    """One of torch's reductions.

    >>> reductions().example() in ("mean", "sum", "none")
    True
    """
    return st.sampled_from(("mean", "sum", "none"))


def legacy_reduction_arguments() -> st.SearchStrategy[tuple[bool | None, bool | None]]:
    """``(size_average, reduce)`` pairs, mostly ``(None, None)``.

    >>> legacy_reduction_arguments().example() in [(None, None), (True, None), (False, None), (None, False), (True, True), (False, False)]
    True
    """
    legacy = ((True, None), (False, None), (None, False), (True, True), (False, False))
    return st.integers(0, 9).flatmap(lambda roll: st.sampled_from(legacy) if roll == 9 else st.just((None, None)))


REQUIRABLE: Final = CROSS_ENTROPY.requirable
"""Features :func:`cross_entropy_cases` can be asked to exercise in every draw."""


@st.composite
def cross_entropy_cases(draw, dtypes: Sequence[str] = FLOAT_DTYPES, limits: SizeLimits = SizeLimits(),
                        target_kinds: Sequence[str] = ("index", "probability"), invalid_percent: int = 0,
                        require: frozenset[str] | set[str] = frozenset(), plain: bool = False,
                        exclude: frozenset[str] | set[str] = frozenset(),
                        extensions: frozenset[str] | set[str] = frozenset()) -> Case:
    """A complete cross-entropy case reaching every parameter of the semantics.

    ``invalid_percent`` of draws break exactly one argument rule (see :func:`invalid_cases`);
    ``require`` names features (from :data:`REQUIRABLE`) every draw must exercise; with
    ``plain=True`` every other optional feature is switched off (a plain fp32/fp64 ``(N, C)``
    call with index targets), so a failure points at the required feature alone. ``exclude``
    names features never to draw: those no adapter of the run supports, whose draws would only be
    skipped (a kernel without weights or soft targets lost nine draws in ten to them).
    ``extensions={"normalizer"}`` draws the external normaliser too, in half the draws (a
    ``'sum'`` divided by it), ``{"return_lse"}`` the flag asking for the log-sum-exp beside the
    loss, ``{"smoothing_dialect"}`` Megatron's meaning of a drawn smoothing; never by default,
    since torch's own function takes none of them.

    >>> "weights" in cross_entropy_cases(require={"weights"}).example().features
    True
    >>> "weights" in cross_entropy_cases(exclude={"weights"}).example().features
    False

    >>> case = cross_entropy_cases(dtypes=["float64"]).example()
    >>> case.dtype
    'float64'
    """
    require = frozenset(require)
    unknown = require - REQUIRABLE
    if unknown:
        raise ValueError(f"cannot require {sorted(unknown)}; requirable: {sorted(REQUIRABLE)}")
    exclude = frozenset(exclude) - require
    if "low_precision" in exclude:
        dtypes = [d for d in dtypes if d not in ("float16", "bfloat16")] or list(dtypes)
    if "vocab_scale" in exclude:
        limits = SizeLimits(limits.max_elements, 0, limits.max_vocab_rows)
    if "probability_targets" in exclude:
        target_kinds = tuple(k for k in target_kinds if k != "probability") or ("index",)
    if "invalid_input" in exclude:
        invalid_percent = 0
    if "low_precision" in require:
        dtypes = [d for d in dtypes if d in ("float16", "bfloat16")] or ["bfloat16", "float16"]
    elif plain:
        dtypes = [d for d in dtypes if d in ("float32", "float64")] or ["float32"]
    if "vocab_scale" in require:
        limits = SizeLimits(limits.max_elements, 100, limits.max_vocab_rows)
    elif plain:
        limits = SizeLimits(limits.max_elements, 0, limits.max_vocab_rows)
    if plain and not require & {"probability_targets"}:
        target_kinds = ("index",)
    if "probability_targets" in require:
        target_kinds = ("probability",)
    elif require & {"ignore_index", "all_ignored"}:
        target_kinds = ("index",)
    kinds = ("k_dim",) if "k_dim" in require else ("unbatched",) if "unbatched" in require else \
        ("batched",) if plain else tuple(k for k in ("batched", "unbatched", "k_dim") if k not in exclude)
    dtype = draw(_dtype_strategy(dtypes))
    shape = draw(input_shapes(limits=limits, kinds=kinds,
                              allow_empty=not plain and not require & {"all_ignored", "ignore_index"}
                              and "empty_batch" not in exclude))
    class_axis = 0 if len(shape) == 1 else 1
    C = shape[class_axis]
    if len(target_kinds) == 2:
        use_probabilities = draw(st.integers(0, 9)) >= 7
    else:
        use_probabilities = tuple(target_kinds) == ("probability",)
    ignore_index = -100
    target_dtype: str | None = None
    if use_probabilities:
        target = draw(probability_targets(shape, dtype, probability_kinds(exclude)))
        ignore_index = draw(ignore_indices(C, ("default", "negative")))
    else:
        if not plain or require & {"ignore_index", "all_ignored"}:
            # an in-range ignore_index of a single class ignores every target, whatever the pattern
            no_in_range = "ignore_index_in_range" in exclude or (C == 1 and exclude & {"ignore_index", "all_ignored"})
            ignore_index = draw(ignore_indices(C, [k for k in IGNORE_INDEX_KINDS if k != "in_range"]) if no_in_range
                                else ignore_indices(C))
        # ignoring "some" of a single position ignores all of them
        patterns = ["none", "some", "all"] if "all_ignored" not in exclude else \
            ["none", "some"] if math.prod(shape[:class_axis] + shape[class_axis + 1:]) > 1 else ["none"]
        if "all_ignored" in require:
            pattern = "all"
        elif "ignore_index" in require:
            pattern = draw(st.sampled_from(("some", "all")))
        elif plain or "ignore_index" in exclude:
            pattern = "none"
        else:
            pattern = draw(st.sampled_from(patterns) if draw(st.booleans()) else st.just("none"))
        target = draw(index_targets(shape, ignore_index, pattern))
        if not plain and C <= 255 and len(shape) <= 2 and 0 <= ignore_index <= 255 and \
                "uint8_target" not in exclude and draw(st.integers(0, 4)) == 0:
            target_dtype = "uint8"
    weight = draw(weights(C, dtype)) if "weights" in require or \
        (not plain and "weights" not in exclude and draw(st.booleans())) else None
    smoothing = 0.0 if plain or "label_smoothing" in exclude else draw(label_smoothings())
    if "label_smoothing" in require and smoothing <= 0:
        smoothing = draw(st.sampled_from(SMOOTHINGS + (1.0,)))
    if smoothing < 0 and "negative_smoothing" in exclude:
        smoothing = 0.0
    reduction = draw(reductions())
    size_average, reduce = (None, None) if plain or "legacy_reduction" in exclude else \
        draw(legacy_reduction_arguments())
    normalizer = None
    if "normalizer" in require or ("normalizer" in extensions and not plain and draw(st.booleans())):
        reduction, size_average, reduce = "sum", None, None  # the normaliser divides a sum
        counted = counted_positions(None if use_probabilities else target, ignore_index,
                                    math.prod(shape[:class_axis] + shape[class_axis + 1:]))
        normalizer = normalizer_value(draw(st.sampled_from(NORMALIZER_KINDS)), counted)
    layouts = ["contiguous", "strided", "offset"] + (["transposed"] if len(shape) >= 2 else [])
    if "non_contiguous" in require:
        layouts.remove("contiguous")
    layout = draw(st.sampled_from(layouts)) if "non_contiguous" in require or \
        (not plain and "non_contiguous" not in exclude and draw(st.integers(0, 4)) == 0) else "contiguous"
    grad_output = None
    if "upstream_gradient" in require or (not plain and "upstream_gradient" not in exclude and draw(st.booleans())):
        out_shape = output_shape(shape, target.shape, use_probabilities,
                                 _effective_reduction(reduction, size_average, reduce))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        grad_output = grad_output_values(rng, out_shape, dtype, _picker(draw))
    distributions = tuple(sorted(NONFINITE_DISTRIBUTIONS)) if "nonfinite_logits" in require else \
        tuple(d for d in LOGIT_DISTRIBUTIONS if d not in NONFINITE_DISTRIBUTIONS) \
        if plain or "nonfinite_logits" in exclude else LOGIT_DISTRIBUTIONS
    x = draw(logits(shape, dtype, logit_distributions_for(weight, dtype, distributions)))
    case = Case.cross_entropy(x, target, dtype=dtype, target_dtype=target_dtype, weight=weight,
                              ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing,
                              size_average=size_average, reduce=reduce, memory_layout=layout, grad_output=grad_output,
                              normalizer=normalizer,
                              return_lse="return_lse" in require or ("return_lse" in extensions and not plain
                                                                     and draw(st.booleans())),
                              smoothing_dialect=_smoothing_dialect(draw, require, extensions, plain,
                                                                   use_probabilities, C, smoothing))
    if "invalid_input" in require or (invalid_percent and draw(st.integers(0, 99)) < invalid_percent):
        # a rule whose breach brings an excluded feature in (a wrong-shaped weight, smoothing > 1)
        rules = [r for r in INVALID_RULES if not _RULE_FEATURES.get(r, frozenset()) & exclude]
        return draw(invalid_cases(case, rules=rules))
    return case


_RULE_FEATURES: Final = {Rule.WEIGHT_SHAPE: frozenset({"weights"}), Rule.LABEL_SMOOTHING_RANGE: frozenset({"label_smoothing"})}
"""Features a case breaking the rule has whatever its base case had."""


def _effective_reduction(reduction: str, size_average: bool | None, reduce: bool | None) -> str:
    from .reference import resolve_reduction

    return resolve_reduction(reduction, size_average, reduce)


def _smoothing_dialect(draw: st.DrawFn, require: frozenset[str], extensions: frozenset[str] | set[str], plain: bool,
                       use_probabilities: bool, classes: int, smoothing: float) -> str | None:
    """Megatron's smoothing dialect where the case can take it (index targets, C >= 2, a smoothing
    in [0, 1)) and it is required or, among the extensions, drawn."""
    feasible = not use_probabilities and classes >= 2 and 0 <= smoothing < 1
    if "smoothing_dialect" in require:
        assume(feasible and smoothing > 0)
        return "megatron"
    if feasible and smoothing > 0 and "smoothing_dialect" in extensions and not plain and draw(st.booleans()):
        return "megatron"
    return None


@st.composite
def invalid_cases(draw, base: Case | None = None, rules: Sequence[Rule] = INVALID_RULES) -> Case:
    """A case that breaks exactly one of torch's argument rules, with ``expected_error`` set.

    >>> invalid_cases(rules=[Rule.LABEL_SMOOTHING_RANGE]).example().expected_error.value
    'label_smoothing_range'
    """
    if base is None:
        needs = {Rule.IGNORE_INDEX_WITH_PROBABILITIES: ("probability",), Rule.TARGET_SHAPE: ("index",),
                 Rule.TARGET_OUT_OF_BOUNDS: ("index",)}
        kinds = {k for r in rules for k in needs.get(r, ("index", "probability"))}
        base = draw(cross_entropy_cases(limits=SizeLimits(max_elements=1 << 12, vocab_percent=0),
                                        target_kinds=sorted(kinds)))
    base = base.replace(options={"size_average": None, "reduce": None,
                                 "label_smoothing": max(0.0, base.label_smoothing),
                                 "reduction": base.reduction if base.reduction in ("none", "mean", "sum") else "mean"},
                        tensors={"grad_output": None})
    x = base.input
    class_axis = 0 if x.ndim == 1 else 1
    C = x.shape[class_axis]
    prob = base.is_probability_target
    feasible = [r for r in rules if _feasible(r, base, C, prob)]
    assume(feasible)
    rule = draw(st.sampled_from(feasible))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    changes: dict = {"expected_error": rule}
    if rule in LOGITS_RULES:
        changes.update(breach_of_a_logits_rule(draw, rule, base, C, rng))
    elif rule is Rule.IGNORE_INDEX_WITH_PROBABILITIES:
        changes["options"] = {"ignore_index": draw(st.integers(0, max(0, C - 1)))}
    elif rule is Rule.TARGET_DTYPE:
        if prob:
            changes["tensors"] = {"target": _tensor(np.zeros(x.shape, dtype=np.int64), "int64")}
        else:
            changes["tensors"] = {"target": _tensor(np.clip(base.target, 0, C - 1), draw(st.sampled_from(("int32", "int16"))))}
    elif rule is Rule.INPUT_DTYPE:
        changes["tensors"] = {"input": _tensor(np.zeros(x.shape, dtype=np.int64), "int64"), "weight": None}
        if prob:
            target = base.target
            if not unnormalised(target, class_axis, base.target_dtype) and unnormalised(target, class_axis, "float32"):
                # a half-dtype distribution, judged in float32's rounding, would become an
                # unnormalised target: a feature the run may have excluded
                target = target / target.sum(axis=class_axis, keepdims=True)
            changes["tensors"]["target"] = _tensor(target, "float32")
    else:  # TARGET_SHAPE: a batch-size mismatch, a wrong K-dim extent, or an extra target axis
        target = np.clip(base.target, 0, C - 1) if base.target.size else base.target
        if x.ndim == 1:
            new = np.zeros((draw(st.sampled_from(tuple(k for k in (2, 3, 4) if k != C))),), dtype=np.int64)
        elif x.ndim == 2 and draw(st.booleans()):
            new = np.zeros((x.shape[0], C + 1), dtype=np.int64)
        elif x.ndim > 2 and draw(st.booleans()):
            new = np.zeros((x.shape[0], *[d + 1 for d in x.shape[2:]]), dtype=np.int64)
        else:
            new = np.zeros((x.shape[0] + 1, *target.shape[1:]), dtype=np.int64)
        changes["tensors"] = {"target": _tensor(new, "int64")}
        changes["options"] = {"ignore_index": -100}
    return base.replace(**changes)


LOGITS_RULES: Final = (Rule.TARGET_OUT_OF_BOUNDS, Rule.WEIGHT_SHAPE, Rule.LABEL_SMOOTHING_RANGE, Rule.REDUCTION_VALUE)
"""Rules every family whose loss is cross-entropy of some logits breaks alike."""


def breach_of_a_logits_rule(draw, rule: Rule, base: Case, classes: int, rng: np.random.Generator) -> dict | None:
    """The changes (``tensors``, ``options``) that make ``base`` break one of :data:`LOGITS_RULES`
    over its ``classes``: a target class out of bounds, a class weight of the wrong length,
    smoothing above 1, an unknown reduction; None for any other rule. Shared by the families'
    invalid-case strategies.

    >>> case = Case.cross_entropy([[0.0, 1.0]], [1])
    >>> changes = breach_of_a_logits_rule(lambda strategy: strategy.example(), Rule.WEIGHT_SHAPE, case, 2, None)
    >>> changes["tensors"]["weight"].shape[0] in (1, 3, 4)
    True
    """
    if rule is Rule.TARGET_OUT_OF_BOUNDS:
        from .cross_entropy import resolved_ignore_index

        target = base.target.copy().reshape(-1)
        bad = draw(st.sampled_from(tuple(v for v in (classes, -1, classes + 7) if v != resolved_ignore_index(base))))
        target[rng.integers(0, target.size)] = bad
        return {"tensors": {"target": _tensor(target.reshape(base.target.shape), "int64")}}
    if rule is Rule.WEIGHT_SHAPE:
        n = draw(st.sampled_from(tuple(k for k in (classes + 1, classes - 1, 2 * classes) if k > 0 and k != classes)))
        return {"tensors": {"weight": _tensor(np.ones(n), base.dtype)}}
    if rule is Rule.LABEL_SMOOTHING_RANGE:
        return {"options": {"label_smoothing": draw(st.sampled_from((1.5, 1.0001, 2.0)))}}
    if rule is Rule.REDUCTION_VALUE:
        return {"options": {"reduction": draw(st.sampled_from(("avg", "average", "", "MEAN")))}}
    return None


def _tensor(values: np.ndarray, dtype: str):
    from .case import Tensor

    return Tensor(np.asarray(values), dtype)


def _feasible(rule: Rule, base: Case, C: int, prob: bool) -> bool:
    if rule is Rule.TARGET_OUT_OF_BOUNDS:
        return not prob and base.target.size > 0 and base.target_dtype == "int64"
    if rule is Rule.IGNORE_INDEX_WITH_PROBABILITIES:
        return prob
    if rule is Rule.TARGET_SHAPE:
        return not prob
    if rule is Rule.INPUT_DTYPE:  # torch skips the dtype check for empty probability-mode input
        return base.input.size > 0
    return True
