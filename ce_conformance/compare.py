"""Judging one adapter's outcome on one case against the reference: a list of findings.

Checks, by family (the family names the failing feature area in CI output):

============  ===========================================================================
family        checks
============  ===========================================================================
errors        ``error`` (a valid case raised), ``missing_error`` (an invalid case returned a
              number), ``wrong_error`` (raised, but for another rule), ``crash``, ``timeout``
contract      ``loss_dtype``, ``loss_shape``, ``grad_input_dtype``, ``grad_input_shape``,
              ``documented_range`` (strict mode: an argument outside its documented range
              accepted silently)
values        ``loss_value``, ``loss_nonfinite``
gradients     ``grad_input_value``, ``grad_input_nonfinite``, ``grad_input_missing``,
              ``grad_target_value``, ``grad_target_nonfinite``, ``grad_target_missing``; for a
              family's parameters (a linear head) ``grad_<name>_value``, ``_nonfinite``,
              ``_missing``, ``_dtype``, ``_shape``
mutation      ``mutation`` (the caller's input, target or weight changed)
============  ===========================================================================

An output returned beside the loss (:mod:`ce_conformance.outputs`: ``lse``, ``z_loss``) is
judged like the loss: ``<name>_value`` and ``_nonfinite`` (values), ``_missing``, ``_dtype`` and
``_shape`` (contract).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np

from ce_conformance.adapters.base import Capabilities, Outcome
from ce_conformance.case import FAMILIES, Case
from ce_conformance.reference import ReferenceResult

from .errors import Rule
from .gradient_elements import FLOOR_CLASSES, GradientElements
from .outputs import OUTPUT_OPTIONS, accepted_dtypes
from .tolerance import ErrorFigures, error_figures, fused_error_figures, merge_figures, nonfinite_mismatch, shifted

CHECK_FAMILIES: Final = {
    "error": "errors", "missing_error": "errors", "wrong_error": "errors", "crash": "errors", "timeout": "errors",
    "loss_dtype": "contract", "loss_shape": "contract", "grad_input_dtype": "contract",
    "grad_input_shape": "contract", "documented_range": "contract",
    "loss_value": "values", "loss_nonfinite": "values",
    "grad_input_value": "gradients", "grad_input_nonfinite": "gradients", "grad_input_missing": "gradients",
    "grad_target_value": "gradients", "grad_target_nonfinite": "gradients", "grad_target_missing": "gradients",
    "mutation": "mutation", "saved_tensor_modified": "mutation", "error_parity": "errors",
    "nondeterministic": "determinism", "split_variant": "split",
}
CHECK_FAMILIES.update({f"grad_{name}_{check}": "gradients" for family in FAMILIES.values()
                       for name in family.parameter_gradients
                       for check in ("value", "nonfinite", "missing", "dtype", "shape")})
CHECK_FAMILIES.update({f"{name}_{check}": "values" if check in ("value", "nonfinite") else "contract"
                       for name in OUTPUT_OPTIONS.values() for check in ("value", "nonfinite", "missing", "dtype",
                                                                           "shape")})


@dataclass
class Verdict:
    """One failed check: the raw material of a findings-table row."""

    check: str
    message: str
    max_abs_error: float = float("nan")
    max_ulp_error: float = float("nan")
    budget: float = float("nan")


@dataclass
class Comparison:
    """All verdicts for one (case, adapter) plus the worst errors seen (also when passing)."""

    verdicts: list[Verdict] = field(default_factory=list)
    max_ulp: dict[str, float] = field(default_factory=dict)
    max_ratio: dict[str, float] = field(default_factory=dict)  # worst error / allowed error

    @property
    def passed(self) -> bool:
        return not self.verdicts


def _value_check(name: str, actual: np.ndarray | None, expected: np.ndarray, magnitude: np.ndarray | None,
                 dtype: str, comparison: Comparison, *, exact_kind: bool, n_classes: int,
                 sigma: np.ndarray | None = None, native: np.ndarray | None = None,
                 intermediate: np.ndarray | None = None, budget_scale: float = 1.0, quantity: str | None = None,
                 elements: GradientElements | None = None) -> None:
    """Judge ``actual`` against ``expected``; with ``elements`` (an input gradient's per-element
    model) a block of positions at a time, each element in units of its own terms."""
    actual = np.asarray(actual)
    if actual.dtype not in (np.float32, np.float64):  # float32 stays: the fused kernel reads it as is
        actual = actual.astype(np.float64)
    if actual.shape != expected.shape:
        try:
            actual = np.broadcast_to(actual, expected.shape)
        except ValueError:
            return  # the shape check reports it
    native = None if native is None else np.asarray(native, dtype=np.float64)
    quantity = quantity or name  # the base budget's row (a parameter's gradient is budgeted as the input's)
    judge = functools.partial(_block_figures, dtype=dtype, quantity=quantity, n_classes=n_classes,
                              scale=budget_scale, exact_kind=exact_kind)
    if elements is None:
        figures, mismatch = judge(actual, expected, np.abs(expected) if magnitude is None else magnitude, sigma,
                                  native=native, intermediate=intermediate)
        mismatches = [(mismatch, 0)] if mismatch is not None else []
    else:
        # the kernel judges the whole gradient in one call where it applies (its row screen
        # settles a row against the worst ratio found before it; each block would start afresh)
        whole = elements.figures(actual, expected, 0, elements.outer, dtype=dtype, quantity=quantity,
                                 scale=budget_scale, native=native)
        blocks, mismatches = ([(whole, 0)], []) if whole is not None else ([], [])
        for start, stop, part, first in elements.blocks() if whole is None else ():
            block_native = None if native is None else native[part]
            block, mismatch = elements.figures(actual[part], expected[part], start, stop, dtype=dtype, quantity=quantity,
                                               scale=budget_scale, native=block_native), None
            if block is None:
                block_magnitude, block_sigma = elements.bounds(expected[part], start, stop)
                block, mismatch = judge(actual[part], expected[part], block_magnitude, block_sigma,
                                        native=block_native, intermediate=None)
            blocks.append((block, first))
            if mismatch is not None:
                mismatches.append((mismatch, first))
        figures = merge_figures(blocks)
    count = sum(int(m.sum()) for m, _ in mismatches)
    if count:
        mismatch, first = next((m, f) for m, f in mismatches if m.any())
        where = shifted(tuple(int(i) for i in np.argwhere(mismatch)[0]) if mismatch.ndim else (), first)
        comparison.verdicts.append(Verdict(
            f"{name}_nonfinite",
            f"{name} NaN/inf pattern differs at {count} element(s), first at {list(where)}: "
            f"got {np.float64(actual[where])!r}, expected {expected[where]!r}"))
    comparison.max_ulp[name] = figures.max_ulp
    comparison.max_ratio[name] = figures.max_ratio
    if figures.max_ratio > 1.0:
        index = figures.worst_index
        comparison.verdicts.append(Verdict(
            f"{name}_value",
            f"{name} off by {figures.worst_ulp:.3g} ulp ({dtype}; budget {figures.worst_budget:.3g}) at "
            f"{list(index)}: got {np.float64(actual[index])!r}, expected {expected[index]!r}",
            max_abs_error=figures.max_abs_error, max_ulp_error=figures.worst_ulp, budget=figures.worst_budget))


def _block_figures(actual: np.ndarray, expected: np.ndarray, magnitude: np.ndarray, sigma: np.ndarray | None, *,
                   dtype: str, quantity: str, n_classes: int, scale: float, exact_kind: bool,
                   native: np.ndarray | None, intermediate: np.ndarray | None) -> tuple[ErrorFigures, np.ndarray | None]:
    """Figures of one array (or block): the fused kernel where every element is finite, else the
    NumPy path with its NaN/inf rules, whose mismatching elements it also returns."""
    figures = fused_error_figures(actual, expected, magnitude, sigma, dtype, quantity, n_classes, scale=scale,
                                  native=native)
    if figures is not None:
        return figures, None
    mismatch = nonfinite_mismatch(actual, expected, dtype, exact_kind=exact_kind, intermediate=intermediate)
    return error_figures(actual, expected, magnitude, sigma, dtype, quantity, n_classes, scale=scale,
                         native=native, ignore=mismatch), mismatch


def compare(case: Case, outcome: Outcome, reference: ReferenceResult | None, capabilities: Capabilities, *,
            strict: bool = False, native: Outcome | None = None, budget_scale: float = 1.0) -> Comparison:
    """Findings for one outcome. ``reference`` is None exactly when the case is invalid.

    ``native`` (opt-in relative oracle): torch's own outcome on the case, whose error widens
    the budget to "no worse than torch plus a margin".
    """
    comparison = Comparison()
    verdicts = comparison.verdicts
    if outcome.status in ("crash", "timeout"):
        verdicts.append(Verdict(outcome.status, outcome.error.message if outcome.error else outcome.status))
        return comparison
    if outcome.mutated:
        verdicts.append(Verdict("mutation", f"the call modified the caller's {', '.join(outcome.mutated)}"))

    documented_range = strict and case.label_smoothing < 0
    if not case.is_valid or documented_range:
        expected_rule = case.expected_error or Rule.LABEL_SMOOTHING_RANGE
        if outcome.status == "error":
            raised = outcome.error
            if raised.rule is not None and raised.rule != expected_rule.value:
                verdicts.append(Verdict("wrong_error", f"expected a {expected_rule.value} error, got {raised.type} "
                                                       f"({raised.rule}): {raised.message}"))
            return comparison
        if not case.is_valid:
            verdicts.append(Verdict("missing_error", f"accepted a call torch refuses ({expected_rule.value}); "
                                                     f"returned {np.asarray(outcome.loss).ravel()[:3]!r}"))
            return comparison
        verdicts.append(Verdict("documented_range", f"accepted label_smoothing={case.label_smoothing} outside the "
                                                    "documented range [0, 1] (torch treats it as 0)"))
    if outcome.status == "error":  # a valid call raised
        verdicts.append(Verdict("error", f"{outcome.error.type} in {outcome.error.stage}: {outcome.error.message}"))
        return comparison
    assert reference is not None
    dtype = reference.output_dtype
    logits = case.spec.logits_shape(case)
    n_classes = logits[0 if len(logits) == 1 else 1] if logits else 1
    if outcome.loss_dtype != dtype:
        verdicts.append(Verdict("loss_dtype", f"loss dtype {outcome.loss_dtype}, expected {dtype}"))
    if tuple(outcome.loss_shape or ()) != tuple(reference.output_shape):
        verdicts.append(Verdict("loss_shape", f"loss shape {list(outcome.loss_shape or ())}, "
                                              f"expected {list(reference.output_shape)}"))
    loss_floor = reference.loss_floor_classes if reference.loss_floor_classes is not None else n_classes
    _value_check("loss", outcome.loss, reference.loss, reference.loss_scale, dtype, comparison, exact_kind=True, n_classes=loss_floor,
                 sigma=reference.loss_sigma, intermediate=reference.loss_intermediate,
                 budget_scale=budget_scale, quantity=reference.loss_quantity,
                 native=native.loss if native is not None and native.status == "ok" else None)
    if capabilities.gradients and reference.grad_input is not None:
        if outcome.grad_input is None:
            verdicts.append(Verdict("grad_input_missing", "no gradient w.r.t. the input (backward not supported?)"))
        else:
            if outcome.grad_input_dtype not in (None, dtype):
                verdicts.append(Verdict("grad_input_dtype", f"gradient dtype {outcome.grad_input_dtype}, expected {dtype}"))
            if tuple(outcome.grad_input.shape) != tuple(reference.grad_input.shape):
                verdicts.append(Verdict("grad_input_shape", f"gradient shape {list(outcome.grad_input.shape)}, "
                                                            f"expected {list(reference.grad_input.shape)}"))
            else:
                elementwise = reference.grad_input_elements is not None  # one product per element
                _value_check("grad_input", outcome.grad_input, reference.grad_input, reference.grad_input_scale,
                             dtype, comparison, exact_kind=False,
                             n_classes=FLOOR_CLASSES if elementwise else n_classes,
                             budget_scale=budget_scale,
                             sigma=reference.grad_input_sigma, elements=reference.grad_input_elements,
                             native=native.grad_input if native is not None and native.grad_input is not None else None)
    if capabilities.gradients and capabilities.target_gradients and reference.grad_target is not None:
        if outcome.grad_target is None:
            verdicts.append(Verdict("grad_target_missing", "no gradient w.r.t. the probability target"))
        elif tuple(outcome.grad_target.shape) == tuple(reference.grad_target.shape):
            _value_check("grad_target", outcome.grad_target, reference.grad_target, reference.grad_target_scale,
                         dtype, comparison, exact_kind=False, n_classes=n_classes, budget_scale=budget_scale,
                         sigma=reference.grad_target_sigma,
                         intermediate=reference.grad_target_intermediate)  # w * log p may overflow before scaling
    _output_checks(outcome, reference, dtype, comparison, n_classes, budget_scale, native)
    if capabilities.gradients:
        _parameter_checks(outcome, reference, dtype, comparison, n_classes, budget_scale, native)
    return comparison


def _output_checks(outcome: Outcome, reference: ReferenceResult, dtype: str, comparison: Comparison,
                   n_classes: int, budget_scale: float, native: Outcome | None) -> None:
    """The outputs returned beside the loss, each judged like the loss in the unit of the dtype it
    came in (the compute precision or the input's: :func:`ce_conformance.outputs.accepted_dtypes`)."""
    for name, expected in reference.outputs.items():
        actual = outcome.outputs.get(name)
        if actual is None:
            comparison.verdicts.append(Verdict(f"{name}_missing", f"the call returned no {name}"))
            continue
        got_dtype = outcome.output_dtypes.get(name)
        accepted = accepted_dtypes(dtype)
        if got_dtype not in accepted:
            comparison.verdicts.append(Verdict(f"{name}_dtype", f"{name} dtype {got_dtype}, expected "
                                                                f"{' or '.join(accepted)}"))
        if tuple(np.shape(actual)) != tuple(np.shape(expected.values)):
            comparison.verdicts.append(Verdict(f"{name}_shape", f"{name} shape {list(np.shape(actual))}, "
                                                                f"expected {list(np.shape(expected.values))}"))
            continue
        theirs = None if native is None else native.outputs.get(name)
        _value_check(name, actual, np.asarray(expected.values, dtype=np.float64), expected.scale,
                     got_dtype if got_dtype in accepted else dtype, comparison, exact_kind=True, n_classes=n_classes,
                     sigma=expected.sigma, budget_scale=budget_scale, native=theirs, quantity="loss")


def _parameter_checks(outcome: Outcome, reference: ReferenceResult, dtype: str, comparison: Comparison,
                      n_classes: int, budget_scale: float, native: Outcome | None) -> None:
    """The gradients of a family's parameters (a linear head's weight and bias), each judged
    like the input's: presence, dtype, shape, NaN/inf pattern and value."""
    for name, expected in getattr(reference, "parameter_gradients", {}).items():
        check = f"grad_{name}"
        actual = outcome.parameter_gradients.get(name)
        if actual is None:
            comparison.verdicts.append(Verdict(f"{check}_missing", f"no gradient w.r.t. {name}"))
            continue
        got_dtype = outcome.parameter_gradient_dtypes.get(name)
        if got_dtype not in (None, dtype):
            comparison.verdicts.append(Verdict(f"{check}_dtype", f"{name} gradient dtype {got_dtype}, expected {dtype}"))
        if tuple(np.shape(actual)) != tuple(expected.values.shape):
            comparison.verdicts.append(Verdict(f"{check}_shape", f"{name} gradient shape {list(np.shape(actual))}, "
                                                                 f"expected {list(expected.values.shape)}"))
            continue
        theirs = None if native is None else native.parameter_gradients.get(name)
        _value_check(check, actual, expected.values, expected.scale, dtype, comparison, exact_kind=False,
                     n_classes=n_classes, sigma=expected.sigma, budget_scale=budget_scale, native=theirs,
                     quantity="grad_input")


PAIR_BUDGET_SCALE: Final = 2.0
"""In pairwise mode both sides carry rounding error, so each may be a full budget off the truth."""


def compare_pair(case: Case, expected: Outcome, actual: Outcome, reference: ReferenceResult | None,
                 capabilities: Capabilities) -> Comparison:
    """Parity of two adapters on one case: ``actual`` judged against ``expected`` (not against the
    reference) with the same tolerance model — the reference supplies only the magnitudes — and
    twice the budget. Used for torch CPU vs CUDA, eager vs compiled, torch vs jax."""
    comparison = Comparison()
    failed = {o.status for o in (expected, actual)} - {"ok"}
    if failed:
        if expected.status != actual.status:
            comparison.verdicts.append(Verdict(
                "error_parity", f"one side {expected.status}, the other {actual.status}: "
                f"{(expected.error or actual.error).message if (expected.error or actual.error) else ''}"))
        return comparison
    if reference is None:  # an invalid call both sides accepted: parity holds, the oracle run reports it
        return comparison
    def values(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else np.asarray(array, dtype=np.float64)

    # the reference's magnitudes and error scales (of its family's own type), A's values
    fields = dict(loss=values(expected.loss), grad_input=values(expected.grad_input),
                  grad_target=values(expected.grad_target), output_dtype=expected.loss_dtype or reference.output_dtype,
                  output_shape=tuple(expected.loss_shape or ()))
    parameters = getattr(reference, "parameter_gradients", None)
    if parameters:  # a linear head's weight and bias: A's where A returned them (the oracle run reports a missing one)
        fields["parameter_gradients"] = {name: replace(expectation, values=values(expected.parameter_gradients[name]))
                                         for name, expectation in parameters.items()
                                         if name in expected.parameter_gradients}
    if reference.outputs:  # the outputs returned beside the loss: A's where A returned them
        fields["outputs"] = {name: replace(expectation, values=values(expected.outputs[name]))
                             for name, expectation in reference.outputs.items() if name in expected.outputs}
    return compare(case, actual, replace(reference, **fields), capabilities, budget_scale=PAIR_BUDGET_SCALE)
