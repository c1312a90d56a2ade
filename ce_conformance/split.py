"""Split invariance: micro-batches divided by the whole batch's normaliser add up to the whole batch.

Gradient accumulation runs a batch as micro-batches, each reduced with ``'sum'`` and divided by
the whole batch's token count (transformers' ``num_items_in_batch``, the family's ``normalizer``
extension), and adds their losses and parameter gradients. A kernel that keeps state across
calls (a gradient buffer reused per head shape and never zeroed, a cached normaliser, a
workspace another call overwrote) is right on every single call the comparison judges and wrong
the moment two calls are added up. So where an adapter takes the ``normalizer`` extension, the
runner splits a passing batched case's rows in two (a third and the rest, so the parts differ),
runs each part as ``reduction='sum'`` with ``normalizer`` the whole batch's ``'mean'`` divisor (or
the case's own normaliser for a ``'sum'``), adds the losses and parameter gradients, stacks the
input gradients, and judges that against the whole case's reference. The budgets are the whole
case's, plus the rounding of each part's returned value to the dtype (two values added where
one was rounded). The ``split_variant`` check belongs to the ``split`` family; it runs in the
phases whose cases run twice (:data:`ce_conformance.determinism.REPEATED_PHASES`; every case with
``--deterministic``).

>>> from ce_conformance.linear_cross_entropy import linear_cross_entropy_case
>>> case = linear_cross_entropy_case([[1.0, 0.0]] * 3, [[1.0, 2.0], [0.5, -1.0]], [0, 1, -100])
>>> [(part.tensors["input"].shape[0], part.options["reduction"], part.options["normalizer"])
...  for part in micro_batches(case)]
[(1, 'sum', 2.0), (2, 'sum', 2.0)]
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Final

import numpy as np

from .adapters.base import Capabilities, Outcome
from .case import Case, Tensor
from .compare import CHECK_FAMILIES, Verdict, compare
from .dtypes import machine_epsilon
from .reference import ReferenceResult, mean_denominator

CHECK: Final = "split_variant"  # of the "split" family (ce_conformance.compare.CHECK_FAMILIES)
OPTION: Final = "normalizer"


def micro_batches(case: Case) -> tuple[Case, Case] | None:
    """The case's rows as two ``'sum'`` micro-batches over the whole batch's normaliser, or None
    where the case has no such split: its family has no ``normalizer``, it is invalid, unbatched,
    of fewer than two rows, ``'none'``, a legacy reduction, a ``'mean'`` over nothing, or a
    ``'mean'`` whose z-loss has another divisor than its cross-entropy (class weights)."""
    family = case.spec
    if OPTION not in family.extension_options or not case.is_valid:
        return None
    options = case.options
    reduction = options.get("reduction")
    if reduction not in ("mean", "sum") or options.get("size_average") is not None or options.get("reduce") is not None:
        return None
    logits = family.logits_shape(case)
    if len(logits) < 2 or logits[0] < 2:
        return None
    if reduction == "mean":
        if options.get("z_loss") is not None and "weight" in case.tensors:
            return None  # the z-loss's 'mean' divides by the counted positions, the loss by their weight
        divisor = mean_denominator(case)
        if not (math.isfinite(divisor) and divisor > 0):
            return None
    else:
        divisor = options.get(OPTION)
    rows = logits[0]
    cut = max(1, rows // 3)
    parts = []
    for part in (slice(0, cut), slice(cut, rows)):
        tensors = {name: Tensor(tensor.values[part], tensor.dtype) if name in ("input", "target") else tensor
                   for name, tensor in case.tensors.items()}
        part_options = {**options, "reduction": "sum", OPTION: None if divisor is None else float(divisor)}
        parts.append(Case(case.family, tensors, part_options, case.memory_layout, None,
                          f"rows [{part.start}, {part.stop}) of {case.id}"))
    return parts[0], parts[1]


STACKED_OUTPUTS: Final = frozenset({"lse"})
"""Returned outputs (:mod:`ce_conformance.outputs`) that are per position, so the parts' stack along
the batch; the others (the z-loss) are reduced like the loss and add up like it."""


def combined(outcomes: list[Outcome]) -> Outcome:
    """The micro-batches' outcomes as one batch's: losses, parameter gradients and reduced outputs
    added (in float64), input and target gradients and per-position outputs stacked along the batch."""
    def stacked(arrays: list[Any]) -> np.ndarray | None:
        return None if any(a is None for a in arrays) else np.concatenate([np.asarray(a) for a in arrays], axis=0)

    first = outcomes[0]
    names = set(first.parameter_gradients).intersection(*(o.parameter_gradients for o in outcomes[1:]))
    loss = np.sum([np.asarray(o.loss, dtype=np.float64) for o in outcomes], axis=0)
    grad_input = stacked([o.grad_input for o in outcomes])
    returned = set(first.outputs).intersection(*(o.outputs for o in outcomes[1:]))
    outputs = {name: stacked([o.outputs[name] for o in outcomes]) if name in STACKED_OUTPUTS else
               np.sum([np.asarray(o.outputs[name], dtype=np.float64) for o in outcomes], axis=0) for name in returned}
    return Outcome(loss=loss, loss_dtype=first.loss_dtype, loss_shape=first.loss_shape, grad_input=grad_input,
                   grad_input_dtype=first.grad_input_dtype,
                   grad_input_shape=None if grad_input is None else grad_input.shape,
                   grad_target=stacked([o.grad_target for o in outcomes]), grad_target_dtype=first.grad_target_dtype,
                   parameter_gradients={name: np.sum([np.asarray(o.parameter_gradients[name], dtype=np.float64)
                                                      for o in outcomes], axis=0) for name in sorted(names)},
                   parameter_gradient_dtypes={name: first.parameter_gradient_dtypes.get(name) for name in names},
                   outputs=outputs, output_dtypes={name: first.output_dtypes.get(name) for name in returned})


def widened(reference: ReferenceResult, parts: list[ReferenceResult], dtype: str) -> ReferenceResult:
    """The whole case's reference with each added output's budget grown by its parts' roundings
    to the dtype (each part is returned in it; their sum is ours, in float64)."""
    u = machine_epsilon(dtype) / 2

    def grown(sigma: Any, values: list[np.ndarray]) -> np.ndarray:
        rounding = np.sqrt(np.sum([np.square(np.nan_to_num(np.asarray(v, dtype=np.float64))) for v in values], axis=0))
        return np.hypot(np.asarray(0.0 if sigma is None else sigma, dtype=np.float64), u / math.sqrt(3) * rounding)

    gradients = {name: replace(expected, sigma=grown(expected.sigma, [p.parameter_gradients[name].values for p in parts]))
                 for name, expected in getattr(reference, "parameter_gradients", {}).items()}
    widened_reference = replace(reference, loss_sigma=grown(reference.loss_sigma, [p.loss for p in parts]))
    if gradients:
        widened_reference = replace(widened_reference, parameter_gradients=gradients)
    if reference.outputs:  # the added ones round in each part; stacked ones are each part's own
        widened_reference = replace(widened_reference, outputs={
            name: expected if name in STACKED_OUTPUTS else
            replace(expected, sigma=grown(expected.sigma, [p.outputs[name].values for p in parts]))
            for name, expected in reference.outputs.items()})
    return widened_reference


def split_verdict(case: Case, reference: ReferenceResult, parts: tuple[Case, ...], outcomes: list[Outcome],
                  part_references: list[ReferenceResult], capabilities: Capabilities) -> Verdict | None:
    """A ``split_variant`` verdict where the micro-batches' values or gradients added up are not the
    whole batch's (a part that failed to run is one too), else None. Dtypes and shapes are not
    judged here: a part returns what the whole call returns, and the plain check reports that."""
    cut = parts[0].tensors["input"].shape[0]
    rows = [f"[0, {cut})", f"[{cut}, {cut + parts[1].tensors['input'].shape[0]})"]
    divisor = parts[0].options.get(OPTION)
    how = (f"micro-batches of rows {' and '.join(rows)}, each reduction='sum'"
           + ("" if divisor is None else f" with normalizer={divisor:g}"))
    if any(outcome.status == "skipped" for outcome in outcomes):
        return None  # the adapter cannot run a part here (it said why on the part): nothing to add up
    for part, outcome in zip(rows, outcomes):
        if outcome.status != "ok":
            reason = outcome.error.message if outcome.error else outcome.skip_reason or outcome.status
            return Verdict(CHECK, f"{how}: rows {part} did not run ({outcome.status}): {reason}")
    with np.errstate(all="ignore"):
        judged = compare(case, combined(outcomes), widened(reference, part_references, case.dtype), capabilities)
    # values only: a dtype or shape the parts share with the whole call is the plain check's finding
    differing = [v for v in judged.verdicts if CHECK_FAMILIES.get(v.check) in ("values", "gradients")]
    if not differing:
        return None
    first = differing[0]
    return Verdict(CHECK, f"{how}, add up to other values than the whole batch: "
                          + "; ".join(f"{v.check}: {v.message}" for v in differing),
                   max_abs_error=first.max_abs_error, max_ulp_error=first.max_ulp_error, budget=first.budget)
