"""Combinatorial coverage: a covering phase that reaches every pair (and triple) of option
values in a valid case, and the coverage matrix that names the cells a run did not reach.

A bug that lives in the interaction of a few options (a reduction with smoothing, an in-range
ignore_index and a partly ignored batch) is found by random draws only by luck. The covering
phase builds, before exploration, a small set of valid cases in which every combination of
``strength`` factor values occurs at least once (a constrained covering array, built greedily
as in AETG). Values come from the same generators as the Hypothesis strategies
(:mod:`ce_conformance.values`), picked with a seeded NumPy generator.

>>> rows = covering_rows(strength=2, seed=0)
>>> reached = {pair for row in rows for pair in tuples_of(row, 2)}
>>> feasible_tuples(2) <= reached
True
>>> case = build_case(rows[0], seed=0)
>>> classify(case) == rows[0]
True
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Final, Iterable, Mapping

import numpy as np
import pandas as pd

from .case import Case
from .cross_entropy import resolved_ignore_index
from .values import (LOGIT_DISTRIBUTIONS, PROBABILITY_KINDS, grad_output_values, ignore_index_value,
                     index_target_values, extreme_weights, logit_distributions_for, logit_values, output_shape, probability_values,
                     smoothing_value, weight_values)

FACTORS: Final[dict[str, tuple[str, ...]]] = {
    "dtype": ("float32", "float64", "bfloat16", "float16"),
    "input_layout": ("batched", "unbatched", "k_dim"),
    "target_kind": ("index", "probability"),
    "target_dtype": ("int64", "uint8", "float"),
    "reduction": ("mean", "sum", "none", "legacy"),
    "weight": ("none", "positive", "with_zeros", "tiny", "huge"),
    "ignore_index": ("default", "negative", "in_range", "out_of_range"),
    "ignored": ("none", "some", "all"),
    "smoothing": ("zero", "tiny", "mid", "one", "negative"),
    "classes": ("tiny", "small", "medium", "vocab"),
    "memory_layout": ("contiguous", "transposed", "strided", "offset"),
    "upstream": ("none", "given"),
}
"""The option space of a cross-entropy call, one factor per option, each value a level."""

CLASS_BUCKETS: Final = {"tiny": (1, 2, 3, 4, 5, 7, 8), "small": (10, 16, 17, 31, 32, 33, 64, 100, 127, 128, 129, 255),
                        "medium": (256, 257, 1000, 1024, 1025, 4097),
                        "vocab": (32000, 32768, 50257, 128256, 262144)}
"""Class counts per bucket; vocabulary scale covers Llama-2, GPT-2, Llama-3 and Gemma-3."""

ANCHORS: Final = (
    {"dtype": "float32", "input_layout": "batched", "target_kind": "index", "target_dtype": "int64",
     "reduction": "mean", "weight": "none", "ignore_index": "default", "ignored": "none", "smoothing": "zero",
     "classes": "vocab", "memory_layout": "contiguous", "upstream": "none"},
    {"dtype": "bfloat16", "input_layout": "batched", "target_kind": "index", "target_dtype": "int64",
     "reduction": "mean", "weight": "none", "ignore_index": "default", "ignored": "some", "smoothing": "zero",
     "classes": "vocab", "memory_layout": "contiguous", "upstream": "none"},
)
"""Rows every covering phase starts with: the configurations LLM training runs every step
(fp32 and bf16 (N, C) index targets at vocabulary scale, mean, padding ignored)."""


def conflicts(row: Mapping[str, str]) -> bool:
    """True when a (partial) assignment of factor levels cannot be a valid torch call.

    >>> conflicts({"target_kind": "probability", "ignored": "some"})
    True
    >>> conflicts({"target_kind": "index", "ignored": "some"})
    False
    """
    get = row.get
    kind, tdtype = get("target_kind"), get("target_dtype")
    if kind is not None and tdtype is not None and (kind == "probability") != (tdtype == "float"):
        return True
    if kind == "probability" and (get("ignored", "none") != "none"
                                  or get("ignore_index", "default") not in ("default", "negative")):
        return True
    if tdtype == "uint8":  # torch takes uint8 targets for (C) and (N, C) only; values up to 255
        if get("input_layout") == "k_dim" or get("classes") in ("medium", "vocab"):
            return True
        if get("ignored", "none") != "none" and get("ignore_index") in ("default", "negative"):
            return True
    if get("input_layout") == "unbatched" and (get("ignored") == "some" or get("memory_layout") == "transposed"):
        return True
    return False


def tuples_of(row: Mapping[str, str], strength: int) -> Iterable[tuple[tuple[str, str], ...]]:
    """Every ``strength``-combination of (factor, level) a row holds, in :data:`FACTORS` order."""
    items = [(f, row[f]) for f in FACTORS if f in row]
    return itertools.combinations(items, strength)


_POSITION: Final = {f: i for i, f in enumerate(FACTORS)}


def _ordered(items: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(items, key=lambda item: _POSITION[item[0]]))


FEATURE_LEVELS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "legacy_reduction": (("reduction", "legacy"),),
    "uint8_target": (("target_dtype", "uint8"),),
    "negative_smoothing": (("smoothing", "negative"),),
    "probability_targets": (("target_kind", "probability"), ("target_dtype", "float")),
    "weights": tuple(("weight", level) for level in FACTORS["weight"] if level != "none"),
    "k_dim": (("input_layout", "k_dim"),),
    "unbatched": (("input_layout", "unbatched"),),
    "non_contiguous": tuple(("memory_layout", level) for level in FACTORS["memory_layout"] if level != "contiguous"),
    "upstream_gradient": (("upstream", "given"),),
    "vocab_scale": (("classes", "vocab"),),
    "low_precision": (("dtype", "bfloat16"), ("dtype", "float16")),
    "label_smoothing": (("smoothing", "tiny"), ("smoothing", "mid"), ("smoothing", "one")),
    "ignore_index": (("ignored", "some"), ("ignored", "all")),
    "all_ignored": (("ignored", "all"),),
    "ignore_index_in_range": (("ignore_index", "in_range"),),
}
"""Which factor levels a case feature stands for: levels whose feature no adapter of a run
supports are left out of its covering array and reported as not applicable, not as gaps."""


def excluded_levels(unsupported: Iterable[str] = (), dtypes: Iterable[str] | None = None) -> frozenset[tuple[str, str]]:
    """Factor levels a run cannot exercise: its adapters' unsupported features, dtypes not asked for.

    >>> sorted(excluded_levels({"legacy_reduction"}, dtypes=["float32", "float64", "bfloat16"]))
    [('dtype', 'float16'), ('reduction', 'legacy')]
    """
    out = {level for feature in unsupported for level in FEATURE_LEVELS.get(feature, ())}
    if dtypes is not None:
        out |= {("dtype", d) for d in FACTORS["dtype"] if d not in set(dtypes)}
    return frozenset(out)


def _is_combination(entry: tuple) -> bool:
    """An excluded entry is a level ``(factor, level)`` or a combination ``((f, v), (g, w), ...)``."""
    return not isinstance(entry[0], str)


def _space(excluded: frozenset) -> dict[str, tuple[str, ...]]:
    return {f: tuple(v for v in levels if (f, v) not in excluded) for f, levels in FACTORS.items()}


def _combinations(excluded: frozenset) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(sorted(e for e in excluded if _is_combination(e)))


def _completable(partial: dict[str, str], space: Mapping[str, tuple[str, ...]] = FACTORS,
                 combinations: tuple[tuple[tuple[str, str], ...], ...] = ()) -> bool:
    """Whether a partial assignment extends to a full one without conflicts (backtracking);
    ``combinations`` are excluded combinations of levels (a loss family's own conflicts)."""
    if conflicts(partial) or any(partial[f] not in space[f] for f in partial):
        return False
    if any(all(partial.get(f) == v for f, v in combo) for combo in combinations):
        return False
    free = [f for f in FACTORS if f not in partial]
    if not free:
        return True
    factor = free[0]
    return any(_completable({**partial, factor: level}, space, combinations) for level in space[factor])


@functools.lru_cache(maxsize=16)
def feasible_tuples(strength: int, excluded: frozenset = frozenset()
                    ) -> frozenset[tuple[tuple[str, str], ...]]:
    """All ``strength``-combinations of factor levels that occur in some valid case (using no
    ``excluded`` level or combination of levels).

    >>> (("target_kind", "probability"), ("target_dtype", "uint8")) in feasible_tuples(2)
    False
    """
    space, combinations = _space(excluded), _combinations(excluded)
    found = set()
    for factors in itertools.combinations(FACTORS, strength):
        for levels in itertools.product(*(space[f] for f in factors)):
            combo = tuple(zip(factors, levels))
            if _completable(dict(combo), space, combinations):
                found.add(combo)
    return frozenset(found)


def covering_rows(strength: int = 2, seed: int = 0, anchors: Iterable[Mapping[str, str]] = ANCHORS,
                  excluded: frozenset = frozenset()) -> list[dict[str, str]]:
    """A constrained covering array: valid rows in which every feasible ``strength``-tuple of
    factor levels occurs. Greedy (AETG): each row starts from an uncovered tuple and fills the
    other factors, in a seeded random order, with the level that covers most new tuples.

    >>> len(covering_rows(2)) < 60
    True
    """
    rng = np.random.default_rng(seed)
    space, combinations = _space(excluded), _combinations(excluded)
    uncovered = set(feasible_tuples(strength, excluded))
    rows: list[dict[str, str]] = []

    def accept(row: dict[str, str]) -> None:
        rows.append(row)
        uncovered.difference_update(tuples_of(row, strength))

    for anchor in anchors:
        if _completable(dict(anchor), space, combinations):
            accept(dict(anchor))
    pending = sorted(uncovered)
    while uncovered:
        pending = [t for t in pending if t in uncovered]
        start = pending[int(rng.integers(len(pending)))]
        row = dict(start)
        order = [f for f in FACTORS if f not in row]
        rng.shuffle(order)
        for factor in order:
            best, best_gain = None, -1
            for level in rng.permutation(space[factor]):
                candidate = {**row, factor: str(level)}
                if not _completable(candidate, space, combinations):
                    continue
                others = [(f, row[f]) for f in FACTORS if f in row]
                gain = sum(1 for combo in itertools.combinations(others, strength - 1)
                           if _ordered(combo + ((factor, str(level)),)) in uncovered)
                if gain > best_gain:
                    best, best_gain = str(level), gain
            row[factor] = best
        accept(row)
    return rows


# -- from a row to a case, and back ------------------------------------------------------------
def build_case(row: Mapping[str, str], seed: int = 0, *, max_elements: int = 1 << 16, max_vocab_rows: int = 4,
               distribution: str | None = None) -> Case:
    """A valid case whose :func:`classify` is ``row``; the remaining freedom (sizes, value
    distributions) is drawn from a generator seeded by ``seed`` and the row. ``distribution``
    fixes the logits' distribution (the anchors use ``standard``, a trained model's spread)."""
    key = "|".join(f"{f}={row[f]}" for f in FACTORS)
    rng = np.random.default_rng([seed, *key.encode()])

    def pick(options):
        return options[int(rng.integers(len(options)))]

    dtype = row["dtype"]
    uint8 = row["target_dtype"] == "uint8"
    classes = [c for c in CLASS_BUCKETS[row["classes"]] if not uint8 or c <= 255]
    if uint8 and row["ignore_index"] == "out_of_range":
        classes = [c for c in classes if c < 255]
    if row["ignore_index"] == "in_range" and row["ignored"] != "all":
        classes = [c for c in classes if c > 1]  # with one class every target is the ignored one
    C = int(pick(classes))
    positions_needed = 2 if row["ignored"] == "some" else 1
    budget = max_vocab_rows * C if row["classes"] == "vocab" else max(max_elements, C * positions_needed)
    room = max(budget // C, positions_needed)
    if row["input_layout"] == "unbatched":
        shape: tuple[int, ...] = (C,)
    elif row["input_layout"] == "batched":
        shape = (int(pick([n for n in (1, 2, 3, 4, 7, 8, 16, 31, 64) if positions_needed <= n <= room] or [room])), C)
    else:
        spatial = tuple(int(pick((1, 2, 3, 4, 5))) for _ in range(int(pick((1, 2)))))
        while math.prod(spatial) > room and max(spatial) > 1:
            spatial = tuple(max(1, d // 2) for d in spatial)
        n = int(pick([k for k in (1, 2, 3, 4) if k * math.prod(spatial) <= room] or [1]))
        if n * math.prod(spatial) < positions_needed:
            spatial = spatial[:-1] + (positions_needed,)
        shape = (n, C, *spatial)
    probabilities = row["target_kind"] == "probability"
    ignore_index = ignore_index_value(row["ignore_index"], C, pick, rng, "uint8" if uint8 else "int64")
    if probabilities:
        target = probability_values(pick(PROBABILITY_KINDS), rng, shape, dtype)
    else:
        target = index_target_values(rng, shape, ignore_index, row["ignored"])
    weight = None if row["weight"] == "none" else weight_values(
        pick(("positive", "integers")) if row["weight"] == "positive" else row["weight"], rng, C, dtype, pick)
    size_average, reduce, reduction = None, None, row["reduction"]
    if reduction == "legacy":
        size_average, reduce = pick(((True, None), (False, None), (None, False), (True, True), (False, False)))
        reduction = pick(("mean", "sum", "none"))
    from .reference import resolve_reduction

    grad_output = None
    if row["upstream"] == "given":
        grad_output = grad_output_values(rng, output_shape(shape, target.shape, probabilities,
                                                           resolve_reduction(reduction, size_average, reduce)),
                                         dtype, pick)
    distributions = list(logit_distributions_for(weight, dtype, [d for d in LOGIT_DISTRIBUTIONS
                                                                 if d not in ("neg_inf", "nan")]))
    x = logit_values(distribution or pick(distributions), rng, shape, dtype, pick)
    return Case.cross_entropy(x, target, dtype=dtype, target_dtype=None if probabilities else row["target_dtype"],
                              weight=weight, ignore_index=ignore_index, reduction=reduction,
                              label_smoothing=smoothing_value(row["smoothing"], pick), size_average=size_average,
                              reduce=reduce, memory_layout=row["memory_layout"], grad_output=grad_output,
                              note="covering phase: " + key)


def class_bucket(n_classes: int) -> str:
    """The ``classes`` level of a class count: the scale a case runs at.

    >>> class_bucket(128256)
    'vocab'
    """
    return "tiny" if n_classes <= 8 else "small" if n_classes <= 255 else "medium" if n_classes < 32000 else "vocab"


def classify(case: Case) -> dict[str, str] | None:
    """The factor levels a valid case exercises, read on the logits its loss is taken over (so a
    linear cross-entropy case is classified by its projection's output); None for an invalid one.

    >>> from ce_conformance.linear_cross_entropy import linear_cross_entropy_case
    >>> row = classify(linear_cross_entropy_case([[1.0, 2.0]], [[0.5, 1.0], [1.0, 0.0]], [1]))
    >>> row["input_layout"], row["classes"], row["ignore_index"]
    ('batched', 'tiny', 'default')
    """
    if not case.is_valid:
        return None
    shape = case.spec.logits_shape(case)
    C = shape[0 if len(shape) == 1 else 1]
    probabilities = case.is_probability_target
    ignore = resolved_ignore_index(case)
    if probabilities or case.target.size == 0:
        ignored = "none"
    else:
        hits = int((case.target == ignore).sum())
        ignored = "none" if hits == 0 else "all" if hits == case.target.size else "some"
    w = case.weight
    smoothing = case.label_smoothing
    legacy = case.options.get("size_average") is not None or case.options.get("reduce") is not None
    return {
        "dtype": case.dtype,
        "input_layout": "unbatched" if len(shape) == 1 else "batched" if len(shape) == 2 else "k_dim",
        "target_kind": "probability" if probabilities else "index",
        "target_dtype": "float" if probabilities else case.target_dtype,
        "reduction": "legacy" if legacy else case.reduction,
        "weight": _weight_level(w, case.dtype),
        "ignore_index": "default" if ignore == -100 else "negative" if ignore < 0 else
                        "in_range" if ignore < C else "out_of_range",
        "ignored": ignored,
        "smoothing": "zero" if smoothing == 0 else "negative" if smoothing < 0 else "one" if smoothing == 1 else
                     "tiny" if smoothing < 1e-3 else "mid",
        "classes": class_bucket(C),
        "memory_layout": case.memory_layout,
        "upstream": "none" if case.grad_output is None else "given",
    }


def _weight_level(w: np.ndarray | None, dtype: str) -> str:
    if w is None:
        return "none"
    if w.size and (w == 0).any():
        return "with_zeros"
    if extreme_weights(w, dtype):
        return "huge" if float(np.abs(w).max()) > 1 else "tiny"
    return "positive"


def cell_key(row: Mapping[str, str] | None) -> str:
    """The compact column form of a row (``dtype=float32|input_layout=batched|...``)."""
    return "" if row is None else "|".join(f"{f}={row[f]}" for f in FACTORS)


def parse_not_applicable(item: str) -> tuple:
    """An entry of a coverage report's ``not_applicable`` list back as an excluded level or combination.

    >>> parse_not_applicable("target_kind=probability x ignore_index=negative")
    (('target_kind', 'probability'), ('ignore_index', 'negative'))
    """
    parts = tuple(tuple(part.split("=", 1)) for part in item.split(" x "))
    return parts if len(parts) > 1 else parts[0]


def parse_cell(key: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in key.split("|")) if key else {}


# -- the coverage matrix ------------------------------------------------------------------------
def coverage_report(cells: Iterable[str], strengths: tuple[int, ...] = (2, 3),
                    excluded: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """What a run reached: per-factor level counts, and per strength the feasible tuples reached
    and the ones not reached (named). ``excluded`` levels (unsupported by the run's adapters) are
    listed as not applicable and left out of the feasible tuples."""
    excluded = frozenset(tuple(tuple(part) for part in e) if _is_combination(e) else tuple(e) for e in excluded)
    rows = [parse_cell(c) for c in dict.fromkeys(c for c in cells if c)]
    counts = {f: {level: 0 for level in levels} for f, levels in FACTORS.items()}
    for row in rows:
        for f, level in row.items():
            if f in counts and level in counts[f]:
                counts[f][level] += 1
    report: dict[str, Any] = {"cases": len(rows), "levels": counts,
                              "not_applicable": sorted(" x ".join(f"{f}={v}" for f, v in e) if _is_combination(e)
                                                       else f"{e[0]}={e[1]}" for e in excluded)}
    for strength in strengths:
        feasible = feasible_tuples(strength, excluded)
        reached = {t for row in rows for t in tuples_of(row, strength)} & feasible
        missing = sorted(feasible - reached)
        report[f"strength_{strength}"] = {"feasible": len(feasible), "reached": len(reached),
                                          "unreached": [" x ".join(f"{f}={v}" for f, v in t) for t in missing]}
    return report


def coverage_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """The coverage matrix as a table: one row per factor, cells ``level: valid cases``."""
    width = max(len(levels) for levels in FACTORS.values())
    return pd.DataFrame([[f] + [f"{level}: {n}" for level, n in report["levels"][f].items()]
                         + [""] * (width - len(FACTORS[f])) for f in FACTORS],
                        columns=["factor"] + [f"level {i + 1}" for i in range(width)])


def coverage_markdown(report: Mapping[str, Any], *, limit: int = 20) -> str:
    """The coverage matrix (factor x level: valid cases) and the unreached cells, for summaries."""
    if not report.get("cases"):
        return "### Coverage\n\nNo valid case was run.\n"
    lines = ["### Coverage", "", f"{report['cases']} distinct valid cases. Valid cases per factor level "
             "(0 = never reached):", "", coverage_frame(report).set_index("factor").rename_axis(None).to_markdown(), ""]
    if report.get("not_applicable"):
        lines.append("- **not applicable** (no adapter supports them): " + ", ".join(report["not_applicable"]))
    for key in sorted(k for k in report if k.startswith("strength_")):
        info = report[key]
        strength = key.split("_")[1]
        share = info["reached"] / info["feasible"] if info["feasible"] else 1.0
        lines.append(f"- **{'pairs' if strength == '2' else 'triples' if strength == '3' else strength + '-tuples'}**: "
                     f"{info['reached']}/{info['feasible']} feasible combinations reached ({share:.1%})")
        if info["unreached"]:
            shown = info["unreached"][:limit]
            more = len(info["unreached"]) - len(shown)
            lines.append("  - not reached: " + "; ".join(shown) + (f"; ... and {more} more" if more else ""))
    if report.get("extensions"):
        lines.append("- **extension options** (cases; factor levels met): " + _extension_line(report["extensions"]))
    return "\n".join(lines) + "\n"


def _extension_line(extensions: Mapping[str, Mapping[str, Any]]) -> str:
    """Each extension option that ran: its cases and the factor levels it met of those the run
    reached (:func:`ce_conformance.covering_extensions.extension_coverage`), the missed ones named."""
    return "; ".join(f"{name} {info['cases']}, {info['levels']}/{info['feasible']}"
                     + (f" (not: {', '.join(info['unreached'][:6])}{' ...' if len(info['unreached']) > 6 else ''})"
                        if info["unreached"] else "") for name, info in extensions.items())


def coverage_text(report: Mapping[str, Any], *, limit: int = 12, levels: bool = True) -> str:
    """A compact coverage matrix for a terminal: one line per factor (unless ``levels`` is
    false), then the tuples reached and the first cells not reached."""
    if not report.get("cases"):
        return "coverage: no valid case was run"
    width = max(len(f) for f in FACTORS)
    lines = [f"coverage ({report['cases']} valid cases; cases per level):"]
    for factor in FACTORS if levels else ():
        lines.append(f"  {factor:<{width}}  " + "  ".join(f"{level} {n}" for level, n in report["levels"][factor].items()))
    if report.get("not_applicable"):
        lines.append("  not applicable (unsupported): " + ", ".join(report["not_applicable"]))
    for key in sorted(k for k in report if k.startswith("strength_")):
        info = report[key]
        name = {"strength_2": "pairs", "strength_3": "triples"}.get(key, key)
        line = f"  {name}: {info['reached']}/{info['feasible']} reached"
        if info["unreached"]:
            shown = info["unreached"][:limit]
            more = len(info["unreached"]) - len(shown)
            line += "; not reached: " + "; ".join(shown) + (f"; ... {more} more (coverage.json)" if more else "")
        lines.append(line)
    if report.get("extensions"):
        lines.append("  extensions (cases, levels met): " + _extension_line(report["extensions"]))
    return "\n".join(lines)
