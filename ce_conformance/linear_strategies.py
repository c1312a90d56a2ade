"""Where linear cross-entropy cases come from: a Hypothesis strategy for explore and shrink, a
covering-phase case per covering-array row, and calls that break one of torch's rules.

Fused kernels break at chunk boundaries (a token block of 64/128/256/1024 rows and one past,
a vocabulary block), at vocabulary scale and in the interaction of options, so the strategy
draws batch sizes at those boundaries, vocabulary-scale heads (Llama-2 to Llama-3) in the
profile's share of draws, and every option with the value domains cross-entropy's strategy uses
(:mod:`ce_conformance.values`: weights with zeros or at the dtype's limits, in-range and int64
ignore indices, unnormalised probabilities). The covering phase lifts each row of
cross-entropy's covering array (:func:`ce_conformance.covering.build_case`) to a projection:
same targets, weights and options, logits of the same shape formed by ``X W^T + b``.

>>> case = linear_cross_entropy_cases(require={"linear_bias"}).example()
>>> "linear_bias" in case.features
True
"""

from __future__ import annotations

import math
from typing import Any, Final, Mapping, Sequence

import numpy as np
from hypothesis import assume, strategies as st

from .case import Case, Tensor
from .dtypes import FLOAT_DTYPES
from .cross_entropy import DEFAULT_IGNORE_INDEX
from .errors import Rule
from .linear_cross_entropy import LINEAR_CROSS_ENTROPY, linear_cross_entropy_case
from .outputs import OUTPUT_OPTIONS
from .strategies import LOGITS_RULES, SizeLimits, breach_of_a_logits_rule, label_smoothings
from .values import (IGNORE_INDEX_KINDS, NORMALIZER_KINDS, WEIGHT_KINDS, counted_positions, grad_output_values,
                     ignore_index_value, index_target_values, normalizer_value, output_shape, probability_kinds,
                     probability_values, weight_values)

CHUNK_BOUNDARY_ROWS: Final = (1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025)
"""Batch sizes at and one past the chunk sizes fused kernels use (and small ones for shrinking)."""
HIDDEN_SIZES: Final = (1, 2, 3, 8, 16, 17, 64, 128, 129)
CLASS_COUNTS: Final = (1, 2, 3, 5, 8, 127, 128, 129, 1024, 1025)
VOCAB_CLASS_COUNTS: Final = (32000, 32768, 50257, 128256)
"""Vocabulary sizes of Llama-2, a power of two, GPT-2 and Llama-3."""
VOCAB_HIDDEN_SIZES: Final = (1, 3, 8, 16)
"""Hidden sizes at vocabulary scale: the head's C x H weight and its gradient stay a few MB."""
MAX_VOCAB_ROWS: Final = 64
"""Most batch rows of a vocabulary-scale draw, whatever the profile allows."""
SPREADS: Final = (0.1, 1.0, 4.0, 16.0)
"""Standard deviations of the logits: flat rows to confident ones."""
SOFTCAPS: Final = (30.0, 50.0, 15.0, 3.0, 0.5)
"""Logit caps: Gemma 2's final-logit 30 and attention 50, and caps the logits' spread reaches."""
Z_LOSS_COEFFICIENTS: Final = (1e-4, 1e-3, 0.1, 1.0)
"""z-loss weights: PaLM's 1e-4, and larger ones that make the term visible in half dtypes."""
LOGIT_SCALES: Final = (0.0625, 0.5, 2.0, 8.0)
"""Logit scales: Cohere's 0.0625, and powers of two either side (exact, like most in use)."""

REQUIRABLE: Final = LINEAR_CROSS_ENTROPY.requirable
"""Features :func:`linear_cross_entropy_cases` can be asked to exercise in every draw."""

INVALID_RULES: Final = (Rule.INPUT_SHAPE, Rule.IGNORE_INDEX_WITH_PROBABILITIES, Rule.TARGET_OUT_OF_BOUNDS,
                        Rule.WEIGHT_SHAPE, Rule.LABEL_SMOOTHING_RANGE, Rule.REDUCTION_VALUE, Rule.TARGET_SHAPE)
"""The rules :func:`invalid_linear_cases` breaks (torch's projection checks and cross-entropy's)."""


def _projection(rng: np.random.Generator, logits_shape: tuple[int, ...], hidden: int, spread: float,
                bias: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``X`` and ``W`` (and ``b``) whose logits ``X W^T + b`` have ``logits_shape`` and about ``spread``
    standard deviation: ``(C,)`` from ``(H,)``, ``(N, C, d...)`` from ``(N, H)`` and ``(C, d..., H)``."""
    unbatched = len(logits_shape) == 1
    classes, extra = logits_shape[0 if unbatched else 1], tuple(logits_shape[2:])
    x = rng.standard_normal((hidden,) if unbatched else (logits_shape[0], hidden))
    w = rng.standard_normal((classes, *extra, hidden)) * spread / math.sqrt(hidden)
    b = rng.standard_normal((classes, *extra)) * spread if bias else None
    return x, w, b


@st.composite
def linear_cross_entropy_cases(draw, dtypes: Sequence[str] = FLOAT_DTYPES, limits: SizeLimits = SizeLimits(),
                               invalid_percent: int = 0, require: frozenset[str] | set[str] = frozenset(),
                               plain: bool = False, exclude: frozenset[str] | set[str] = frozenset(),
                               extensions: frozenset[str] | set[str] = frozenset()) -> Case:
    """A linear cross-entropy case over torch 2.13's whole signature: K-dim heads, unbatched
    inputs, bias, class weights, ignored targets, smoothing, probability targets, every
    reduction and an upstream gradient; batch sizes at chunk boundaries, vocabulary-scale heads
    in ``limits.vocab_percent`` of draws. The keywords mean what they mean for
    :func:`ce_conformance.strategies.cross_entropy_cases` (``require`` from :data:`REQUIRABLE`);
    ``extensions`` names the extension options (``logit_scale``, ``softcap``, ``z_loss``, ``normalizer``, the
    flags ``return_lse`` and ``return_z_loss``) it may draw too, in half the draws each: never by
    default, since torch's own function takes none of them.

    >>> linear_cross_entropy_cases(require={"softcap", "z_loss"}).example().features >= {"softcap", "z_loss"}
    True

    >>> case = linear_cross_entropy_cases(exclude={"k_dim", "unbatched"}).example()
    >>> case.family, case.input.ndim
    ('linear_cross_entropy', 2)
    >>> linear_cross_entropy_cases(require={"vocab_scale"}).example().tensors["linear_weight"].shape[0] >= 32000
    True
    """
    require = frozenset(require)
    unknown = require - REQUIRABLE
    if unknown:
        raise ValueError(f"cannot require {sorted(unknown)} of a linear cross-entropy case; "
                         f"requirable: {sorted(REQUIRABLE)}")
    exclude = frozenset(exclude) - require

    def wants(feature: str, chance: st.SearchStrategy[bool] = st.booleans()) -> bool:
        """Required: always; excluded or a plain draw: never; otherwise drawn."""
        return feature in require or (not plain and feature not in exclude and draw(chance))

    def one_in(n: int) -> st.SearchStrategy[bool]:  # shrinks toward False: the simpler case
        return st.integers(0, n - 1).map(lambda roll: roll == n - 1)

    def percent(share: int) -> bool:
        return draw(st.integers(0, 99)) >= 100 - share

    low = ("float16", "bfloat16")
    allowed = [d for d in dtypes if d in low] if "low_precision" in require else \
        [d for d in dtypes if d not in low] if plain or "low_precision" in exclude else list(dtypes)
    dtype = draw(st.sampled_from(allowed or (list(low) if "low_precision" in require else ["float32"])))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    pick = lambda options: draw(st.sampled_from(tuple(options)))  # noqa: E731

    unbatched = "k_dim" not in require and wants("unbatched", one_in(8))
    vocab = "vocab_scale" in require or (not plain and "vocab_scale" not in exclude and percent(limits.vocab_percent))
    if vocab:
        classes, hidden = pick(VOCAB_CLASS_COUNTS), pick(VOCAB_HIDDEN_SIZES)
        # the reference holds the logits and a few arrays like them in float64: 64 rows of 128256 classes
        # are 66 MB each, nightly's 1024 would be a gigabyte apiece
        rows = 0 if unbatched else pick(range(1, min(max(limits.max_vocab_rows, 1), MAX_VOCAB_ROWS) + 1))
    else:
        classes = pick(c for c in CLASS_COUNTS if c > 1 or "single_class" not in exclude)
        hidden = pick(HIDDEN_SIZES)
        rows = 0 if unbatched else pick(CHUNK_BOUNDARY_ROWS)
        if not unbatched and not require & {"ignore_index", "all_ignored"} and wants("empty_batch", one_in(16)):
            rows = 0
    extra = (pick((1, 2, 3)),) if not unbatched and wants("k_dim", one_in(5)) else ()
    if not vocab:
        while max(rows, 1) * classes * math.prod(extra) > limits.max_elements and classes > 8:
            classes //= 8
    logits = (classes,) if unbatched else (rows, classes, *extra)

    probabilities = not require & {"ignore_index", "all_ignored"} and wants("probability_targets", one_in(4))
    ignore_index: int | None = None
    target_dtype = None
    if probabilities:
        target = probability_values(pick(probability_kinds(exclude)), rng, logits, dtype)
    else:
        pattern = "none"
        if wants("ignore_index") or "all_ignored" in require:
            kinds = [k for k in IGNORE_INDEX_KINDS if k != "in_range" or "ignore_index_in_range" not in exclude]
            kind = pick(kinds)
            ignore_index = None if kind == "default" and draw(st.booleans()) else \
                ignore_index_value(kind, classes, pick, rng)
            positions = math.prod(logits) // classes
            patterns = ["some", "all"] if "all_ignored" not in exclude else ["some"] if positions > 1 else []
            pattern = "all" if "all_ignored" in require else pick(patterns) if patterns else "none"
            if positions == 1 and pattern == "some":  # some of one position is all of it
                pattern = "all" if "all_ignored" not in exclude or "ignore_index" in require else "none"
            if pattern == "none" and "ignore_index" in require:
                pattern = "all"
            if kind == "in_range" and classes == 1 and "all_ignored" in exclude:
                ignore_index, pattern = None, "none"  # one class in range: every target is the ignored one
        resolved = DEFAULT_IGNORE_INDEX if ignore_index is None else ignore_index
        target = index_target_values(rng, logits, resolved, pattern)
        # byte-sized vocabularies; the ignore_index must be a byte too (-100 would wrap to 156)
        if classes <= 255 and not extra and 0 <= resolved <= 255 and wants("uint8_target", one_in(5)):
            target_dtype = "uint8"

    x, w, b = _projection(rng, logits, hidden, pick(SPREADS), wants("linear_bias"))
    weight = weight_values(pick(WEIGHT_KINDS), rng, classes, dtype, pick) if wants("weights") else None
    smoothing = draw(label_smoothings(allow_negative="negative_smoothing" not in exclude)) \
        if wants("label_smoothing") else 0.0
    if "label_smoothing" in require and smoothing <= 0:
        smoothing = pick((0.1, 0.5, 1.0))
    # a library's extension options: only where asked for (a kernel with torch's signature has none)
    softcap = pick(SOFTCAPS) if "softcap" in extensions | require and wants("softcap", one_in(2)) else None
    z_loss = pick(Z_LOSS_COEFFICIENTS) if "z_loss" in extensions | require and wants("z_loss", one_in(2)) else None
    scale = pick(LOGIT_SCALES) if "logit_scale" in extensions | require and wants("logit_scale", one_in(2)) else None
    normalizer = None
    if "normalizer" in extensions | require and wants("normalizer", one_in(2)):
        reduction = "sum"  # the external normaliser divides a sum (transformers' num_items_in_batch)
        counted = counted_positions(None if probabilities else target,
                                    DEFAULT_IGNORE_INDEX if ignore_index is None else ignore_index,
                                    math.prod(logits) // classes)
        normalizer = normalizer_value(pick(NORMALIZER_KINDS), counted)
    else:
        reduction = pick(("mean", "sum", "none"))
    # the outputs returned beside the loss (ce_conformance.outputs), where the kernel returns them
    returns = {name: True for name in OUTPUT_OPTIONS if name in extensions | require and wants(name, one_in(2))}
    grad_output = None
    if wants("upstream_gradient"):
        grad_output = grad_output_values(rng, output_shape(logits, target.shape, probabilities, reduction), dtype, pick)
    case = linear_cross_entropy_case(x, w, target, dtype=dtype, target_dtype=target_dtype, linear_bias=b,
                                     weight=weight, ignore_index=ignore_index, reduction=reduction,
                                     label_smoothing=smoothing, grad_output=grad_output, logit_scale=scale,
                                     softcap=softcap, z_loss=z_loss, normalizer=normalizer, **returns)
    if "invalid_input" in require or (invalid_percent and "invalid_input" not in exclude and percent(invalid_percent)):
        rules = [r for r in INVALID_RULES if not (r is Rule.WEIGHT_SHAPE and "weights" in exclude)
                 and not (r is Rule.LABEL_SMOOTHING_RANGE and "label_smoothing" in exclude)]
        return draw(invalid_linear_cases(case, rules=rules))
    return case


@st.composite
def invalid_linear_cases(draw, base: Case | None = None, rules: Sequence[Rule] = INVALID_RULES) -> Case:
    """A linear cross-entropy case that breaks exactly one of torch's rules, ``expected_error`` set:
    a hidden size that differs between input and weight, a bias of the wrong shape, a K-dim head
    on an unbatched input (``input_shape``), ``ignore_index`` with probabilities, a target class
    out of bounds, a wrong-length class weight, smoothing above 1, an unknown reduction, or a
    target whose batch size differs.

    >>> invalid_linear_cases(rules=[Rule.INPUT_SHAPE]).example().expected_error.value
    'input_shape'
    """
    if base is None:
        base = draw(linear_cross_entropy_cases(limits=SizeLimits(max_elements=1 << 12, vocab_percent=0)))
    base = base.replace(tensors={"grad_output": None}, options={"label_smoothing": max(0.0, base.label_smoothing)})
    x, w = base.tensors["input"], base.tensors["linear_weight"]
    classes = w.shape[0]
    probabilities = base.is_probability_target
    index_targets = not probabilities and base.target.size > 0
    feasible = [r for r in rules if (r is not Rule.IGNORE_INDEX_WITH_PROBABILITIES or probabilities)
                and (r is not Rule.TARGET_OUT_OF_BOUNDS or index_targets)
                and (r is not Rule.TARGET_SHAPE or (not probabilities and len(x.shape) == 2))]
    assume(feasible)
    rule = draw(st.sampled_from(feasible))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    changes: dict[str, Any] = {"expected_error": rule}
    dtype = base.dtype
    if rule is Rule.INPUT_SHAPE:
        how = draw(st.sampled_from(("hidden", "bias") + (("k_dim_unbatched",) if len(x.shape) == 1 else ())))
        if how == "hidden":  # input (..., H + 1) against weight (C, ..., H)
            changes["tensors"] = {"input": Tensor(rng.standard_normal((*x.shape[:-1], x.shape[-1] + 1)), dtype)}
        elif how == "bias":
            changes["tensors"] = {"linear_bias": Tensor(rng.standard_normal(math.prod(w.shape[:-1]) + 1), dtype)}
        else:  # a (C, d, H) head needs a batch
            changes["tensors"] = {"linear_weight": Tensor(w.values.reshape(classes, 1, x.shape[-1]), dtype),
                                  "linear_bias": None}
    elif rule is Rule.IGNORE_INDEX_WITH_PROBABILITIES:
        changes["options"] = {"ignore_index": draw(st.sampled_from((-100, 0, -1)))}
    elif rule in LOGITS_RULES:
        changes.update(breach_of_a_logits_rule(draw, rule, base, classes, rng))
    else:  # TARGET_SHAPE: one target more than inputs
        target = np.clip(base.target, 0, classes - 1) if base.target.size else base.target
        one_more = np.zeros((1, *target.shape[1:]), dtype=np.int64)
        changes["tensors"] = {"target": Tensor(np.concatenate([target, one_more]), "int64")}
        changes["options"] = {"ignore_index": None}
    return base.replace(**changes)


def covering_case(row: Mapping[str, str], seed: int = 0, **options: Any) -> Case:
    """The linear cross-entropy case of a covering-array row: cross-entropy's case for the row
    (:func:`ce_conformance.covering.build_case`, ``options`` passed on), its logits replaced by a
    projection of the same shape and spread.

    >>> from ce_conformance.covering import ANCHORS, classify
    >>> case = covering_case(ANCHORS[0], max_vocab_rows=2)
    >>> case.family, classify(case) == ANCHORS[0]
    ('linear_cross_entropy', True)
    """
    from .covering import build_case

    base = build_case(row, seed, **options)
    logits = base.input
    rng = np.random.default_rng([seed, *base.id.encode()])
    finite = logits[np.isfinite(logits)]
    with np.errstate(over="ignore", invalid="ignore"):  # logits at the dtype's limits: their spread is inf
        spread = float(np.nan_to_num(np.clip(finite.std() if finite.size > 1 else 1.0, 0.1, 16.0), nan=16.0))
    classes = logits.shape[0 if logits.ndim == 1 else 1]
    sizes = VOCAB_HIDDEN_SIZES if classes >= VOCAB_CLASS_COUNTS[0] else HIDDEN_SIZES
    x, w, b = _projection(rng, logits.shape, int(rng.choice(sizes)), spread, bool(rng.integers(0, 2)))
    ignore_index = base.ignore_index
    if base.is_probability_target or (ignore_index == -100 and rng.integers(0, 2)):
        ignore_index = None  # torch's default; probabilities refuse any explicit ignore_index
    target = base.tensors["target"]
    return linear_cross_entropy_case(x, w, target.values, dtype=base.dtype, target_dtype=target.dtype, linear_bias=b,
                                     weight=base.weight, ignore_index=ignore_index, reduction=base.reduction,
                                     label_smoothing=base.label_smoothing, grad_output=base.grad_output,
                                     note=base.note)

