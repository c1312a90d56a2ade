"""Extension options in the covering phase: every option an adapter of the run claims (softcap,
z-loss, a normaliser, a returned lse...) meets every level of every factor of the covering array
and every other option it claims, in a case of its own.

The covering array (:mod:`ce_conformance.covering`) is built over torch's options, which every
adapter of the run takes. Its rows stay as they are — an adapter without extensions still gets
all of them — and, per set of options an adapter claims, a greedy pass picks rows to run again
with some of those options on: each row gets the subset of options that reaches the most
(option, factor level) and (option, option) pairs not yet reached, until none is left. A
normaliser divides a ``'sum'``, so it meets only the rows whose reduction is ``'sum'``, and
Megatron's smoothing dialect only index targets with a smoothing in (0, 1) (:func:`feasible`).
Values come from the strategies' lists, picked with a seeded generator.

>>> rows = [{"reduction": "sum", "dtype": "float16"}, {"reduction": "mean", "dtype": "float32"}]
>>> [sorted(options) for options in plan(rows, {"softcap", "normalizer"})]
[['normalizer', 'softcap'], ['softcap']]
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Final, Iterable, Mapping, Sequence

import numpy as np

from .case import Case
from .cross_entropy import SMOOTHING_DIALECT, SMOOTHING_DIALECTS, resolved_ignore_index, smoothing_dialect_problem
from .outputs import OUTPUT_OPTIONS
from .values import NORMALIZER_KINDS, counted_positions, normalizer_value


def _values() -> dict[str, tuple[Any, ...]]:
    from .linear_strategies import LOGIT_SCALES, SOFTCAPS, Z_LOSS_COEFFICIENTS

    return {"logit_scale": LOGIT_SCALES, "softcap": SOFTCAPS, "z_loss": Z_LOSS_COEFFICIENTS,
            **{flag: (True,) for flag in OUTPUT_OPTIONS}, SMOOTHING_DIALECT: SMOOTHING_DIALECTS}


ONLY_WITH: Final[Mapping[str, Mapping[str, frozenset[str]]]] = {
    "normalizer": {"reduction": frozenset({"sum"})},
    SMOOTHING_DIALECT: {"target_kind": frozenset({"index"}), "target_dtype": frozenset({"int64", "uint8"}),
                        "smoothing": frozenset({"tiny", "mid"})},
}
"""Options that some factor's levels refuse: the levels each may meet (a normaliser divides a
``'sum'``; Megatron's smoothing takes index targets and a smoothing in (0, 1))."""


def feasible(option: str, factor: str, level: str) -> bool:
    """Whether a case with ``factor`` at ``level`` can take ``option``.

    >>> feasible("normalizer", "reduction", "mean"), feasible("softcap", "reduction", "mean")
    (False, True)
    """
    allowed = ONLY_WITH.get(option, {}).get(factor)
    return allowed is None or level in allowed


def _row_takes(option: str, row: Mapping[str, str]) -> bool:
    return all(feasible(option, factor, level) for factor, level in row.items())


def _pairs(options: Iterable[str], row: Mapping[str, str]) -> set[tuple[str, ...]]:
    """What a row with ``options`` on reaches: each option with each of the row's levels, and each
    two options together."""
    chosen = sorted(options)
    reached: set[tuple[str, ...]] = {(o, f, level) for o in chosen for f, level in row.items()}
    return reached | set(itertools.combinations(chosen, 2))


def reachable(rows: Sequence[Mapping[str, str]], options: Iterable[str]) -> set[tuple[str, ...]]:
    """Every (option, factor, level) and (option, option) pair some row can reach."""
    targets: set[tuple[str, ...]] = set()
    for row in rows:
        targets |= _pairs([o for o in options if _row_takes(o, row)], row)
    return targets


_COST: Final = {"tiny": 0, "small": 1, "medium": 2, "vocab": 3}
"""Rows are considered smallest class bucket first, so a vocabulary-scale row runs again only for
the pairs no smaller row reaches (its own level)."""


def plan(rows: Sequence[Mapping[str, str]], options: Iterable[str]) -> list[frozenset[str]]:
    """Per row, the options to run it again with (empty: not again), greedily, cheapest rows
    first: each row the subset of the options it can take reaching the most pairs not yet
    reached (the smallest on a tie), until every reachable pair is reached."""
    options = sorted(set(options))
    remaining = reachable(rows, options)
    chosen: list[frozenset[str]] = [frozenset()] * len(rows)
    for index in sorted(range(len(rows)), key=lambda i: _COST.get(rows[i].get("classes", ""), 0)):
        row = rows[index]
        takes = [o for o in options if _row_takes(o, row)]
        best, gain = frozenset(), 0
        for size in range(1, len(takes) + 1):
            for subset in itertools.combinations(takes, size):
                new = len(_pairs(subset, row) & remaining)
                if new > gain:
                    best, gain = frozenset(subset), new
        remaining -= _pairs(best, row)
        chosen[index] = best
    return chosen


def with_extensions(case: Case, options: Iterable[str], seed: int = 0) -> Case:
    """``case`` with ``options`` on, their values picked with a generator seeded by the case and
    ``seed`` (a normaliser: one of :data:`~ce_conformance.values.NORMALIZER_KINDS` for the case's
    counted positions)."""
    rng = np.random.default_rng([seed, *case.id.encode()])
    values = _values()
    chosen: dict[str, Any] = {}
    for option in sorted(options):
        if option == "normalizer":
            chosen[option] = normalizer_value(NORMALIZER_KINDS[int(rng.integers(len(NORMALIZER_KINDS)))],
                                              _counted(case))
        else:
            chosen[option] = values[option][int(rng.integers(len(values[option])))]
    note = f"{case.note}; " if case.note else ""
    varied = case.replace(options=chosen, note=note + "covering row with " + ", ".join(sorted(chosen)))
    if SMOOTHING_DIALECT in chosen and smoothing_dialect_problem(varied):  # one class: nothing to spread over
        del chosen[SMOOTHING_DIALECT]
        varied = case.replace(options=chosen, note=note + "covering row with " + ", ".join(sorted(chosen)))
    return varied


def _counted(case: Case) -> int:
    shape = case.spec.logits_shape(case)
    positions = math.prod(shape) // max(1, shape[0 if len(shape) == 1 else 1]) if shape else 0
    target = None if case.is_probability_target else case.target
    return counted_positions(target, resolved_ignore_index(case), positions)


def extension_cases(rows: Sequence[Mapping[str, str]], cases: Sequence[Case], profiles: Iterable[frozenset[str]],
                    seed: int = 0) -> list[Case]:
    """The covering rows run again with extension options, one plan per set of options an
    adapter claims (``cases[i]`` built from ``rows[i]``), without repeats."""
    extra: dict[str, Case] = {}
    for profile in sorted({frozenset(p) for p in profiles if p}, key=sorted):
        for case, options in zip(cases, plan(rows, profile)):
            if options:
                varied = with_extensions(case, options, seed)
                if varied.id != case.id:  # (an option the built case cannot take is dropped)
                    extra.setdefault(varied.id, varied)
    return list(extra.values())


def extension_coverage(cells: Sequence[Mapping[str, str]], features: Sequence[Iterable[str]],
                       options: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per extension option that ran: its cases, and the feasible factor levels it met and did not
    meet (``cells[i]``: the levels of the case whose features are ``features[i]``)."""
    from .covering import FACTORS

    report: dict[str, dict[str, Any]] = {}
    for option in sorted(set(options)):
        met = [cell for cell, found in zip(cells, features) if option in set(found)]
        if not met:
            continue
        levels = {(f, level) for cell in met for f, level in cell.items()}
        wanted = [(f, level) for f, values in FACTORS.items() for level in values if feasible(option, f, level)
                  and any(cell.get(f) == level for cell in cells)]
        report[option] = {"cases": len(met), "levels": len([w for w in wanted if w in levels]),
                          "feasible": len(wanted), "unreached": [f"{f}={level}" for f, level in wanted
                                                                  if (f, level) not in levels]}
    return report
