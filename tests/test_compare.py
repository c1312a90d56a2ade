"""Comparison: each check fires on the outcome that breaks it, and only then."""

import numpy as np
import pytest

from ce_conformance.adapters.base import Capabilities, Outcome, RaisedError
from ce_conformance import Case, reference
from ce_conformance.compare import CHECK_FAMILIES, compare
from ce_conformance.errors import Rule

CASE = Case.cross_entropy([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [1, 2], dtype="float32", weight=[1.0, 2.0, 0.5])
PROB = Case.cross_entropy([[1.0, 2.0, 0.5]], [[0.2, 0.3, 0.5]], dtype="float32")
INVALID = Case.cross_entropy([[1.0, 2.0]], [5], expected_error=Rule.TARGET_OUT_OF_BOUNDS)


def good(case):
    ref = reference.evaluate(case)
    return Outcome(loss=ref.loss.copy(), loss_dtype=case.dtype, loss_shape=ref.output_shape,
                   grad_input=ref.grad_input.copy(), grad_input_dtype=case.dtype, grad_input_shape=case.input.shape,
                   grad_target=None if ref.grad_target is None else ref.grad_target.copy())


def checks(case, outcome, caps=Capabilities(), **kw):
    ref = reference.evaluate(case) if case.is_valid else None
    return [v.check for v in compare(case, outcome, ref, caps, **kw).verdicts]


def test_reference_values_pass():
    assert checks(CASE, good(CASE)) == []
    assert checks(PROB, good(PROB)) == []


def test_value_and_gradient_errors():
    bad = good(CASE)
    bad.loss = bad.loss * 1.01
    bad.grad_input = bad.grad_input * 1.01
    assert checks(CASE, bad) == ["loss_value", "grad_input_value"]


def test_contract_checks():
    bad = good(CASE)
    bad.loss_dtype, bad.loss_shape = "float64", (1,)
    assert checks(CASE, bad)[:2] == ["loss_dtype", "loss_shape"]


def test_nonfinite_pattern():
    bad = good(CASE)
    bad.loss = np.array(np.nan)
    assert checks(CASE, bad) == ["loss_nonfinite"]


def test_missing_gradients():
    bad = good(PROB)
    bad.grad_target = None
    assert checks(PROB, bad) == ["grad_target_missing"]
    bad.grad_input = None
    assert "grad_input_missing" in checks(PROB, bad)
    assert checks(PROB, bad, Capabilities(gradients=False)) == []


def test_mutation():
    outcome = good(CASE)
    outcome.mutated = ("input",)
    assert checks(CASE, outcome) == ["mutation"]


def test_errors_on_valid_and_invalid_cases():
    raised = Outcome(status="error", error=RaisedError("RuntimeError", "boom", "forward"))
    assert checks(CASE, raised) == ["error"]
    assert checks(INVALID, Outcome(loss=np.array(1.0), loss_dtype="float32", loss_shape=())) == ["missing_error"]
    right = Outcome(status="error", error=RaisedError("IndexError", "Target 5 is out of bounds.", "forward",
                                                     Rule.TARGET_OUT_OF_BOUNDS.value))
    assert checks(INVALID, right) == []
    wrong = Outcome(status="error", error=RaisedError("ValueError", "weight bad", "forward", Rule.WEIGHT_SHAPE.value))
    assert checks(INVALID, wrong) == ["wrong_error"]
    unknown = Outcome(status="error", error=RaisedError("RuntimeError", "kernel said no", "forward"))
    assert checks(INVALID, unknown) == []  # an unclassifiable refusal is still a refusal


def test_crash_and_timeout_are_findings():
    for status in ("crash", "timeout"):
        assert checks(CASE, Outcome(status=status, error=RaisedError(status, status, "forward"))) == [status]


def test_strict_documented_range():
    negative = CASE.replace(options={"label_smoothing": -0.5})
    assert checks(negative, good(negative)) == []
    assert checks(negative, good(negative), strict=True) == ["documented_range"]
    refused = Outcome(status="error", error=RaisedError("ValueError", "label_smoothing must be between 0.0 and 1.0",
                                                       "forward", Rule.LABEL_SMOOTHING_RANGE.value))
    assert checks(negative, refused, strict=True) == []


def test_torch_oracle_widens_the_budget_to_torchs_own_error():
    ref = reference.evaluate(CASE)
    off = good(CASE)
    off.loss = ref.loss + 40 * float(np.spacing(np.float32(ref.loss_scale)))
    assert "loss_value" in checks(CASE, off)
    native = good(CASE)
    native.loss = ref.loss + 39 * float(np.spacing(np.float32(ref.loss_scale)))
    assert "loss_value" not in checks(CASE, off, native=native)


@pytest.mark.parametrize("check", sorted(CHECK_FAMILIES))
def test_every_check_has_a_family(check):
    assert CHECK_FAMILIES[check] in {"errors", "contract", "values", "gradients", "mutation", "split", "determinism"}
