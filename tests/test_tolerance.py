"""The tolerance model: ULP units, magnitude floors, budgets, NaN/inf and overflow rules."""

import numpy as np
import pytest

from ce_conformance.dtypes import max_finite, ulp
from ce_conformance.tolerance import BUDGETS, budget_for, nonfinite_mismatch, ulp_errors, underflow_floor


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("k", [1, 3, 17])
def test_k_ulps_off_is_k_ulps(dtype, k):
    expected = np.array([1.5, -7.25, 300.0])
    actual = expected + k * ulp(expected, dtype)
    np.testing.assert_allclose(ulp_errors(actual, expected, np.abs(expected), dtype), k)


def test_magnitude_sets_the_unit_for_small_values():
    # a gradient entry of 1e-9 next to a row magnitude of 1: judged in ulps of 1
    errors = ulp_errors(np.array([1e-9 + 2**-23]), np.array([1e-9]), np.array([1.0]), "float32")
    assert errors[0] == pytest.approx(1.0, rel=1e-6)


def test_underflow_floor_only_matters_for_float16():
    assert underflow_floor("float16", 1000) == pytest.approx(1000 * 2**-24)
    assert underflow_floor("float32", 128256) < 1e-38


def test_budgets_grow_with_classes_in_compute_precision():
    assert budget_for("float32", "loss", 1) == pytest.approx(BUDGETS["float32"].loss + 0.5)
    assert budget_for("float32", "loss", 32000) == pytest.approx(8 + 16000)
    assert budget_for("bfloat16", "loss", 32000) < BUDGETS["bfloat16"].loss + 0.25  # fp32 internals
    assert budget_for("bfloat16", "loss", 1, reduced_positions=400) == pytest.approx(4 + 0.5 * 2**-16 + 10)


def test_nonfinite_kinds_must_match_for_losses():
    expected = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert not nonfinite_mismatch(expected, expected, "float32", exact_kind=True).any()
    swapped = np.array([np.inf, np.nan, -np.inf, np.nan])
    assert nonfinite_mismatch(swapped, expected, "float32", exact_kind=True).tolist() == [True, True, False, True]
    assert nonfinite_mismatch(swapped, expected, "float32", exact_kind=False).tolist() == [False, False, False, True]


def test_overflow_to_inf_is_accepted_when_the_true_value_overflows():
    expected = np.array([1e6, 60000.0])  # 1e6 overflows float16; 60000 does not
    actual = np.array([np.inf, np.inf])
    assert nonfinite_mismatch(actual, expected, "float16", exact_kind=True).tolist() == [False, True]
    # ... and when the undivided intermediate of a mean overflows
    assert not nonfinite_mismatch(actual[1:], expected[1:], "float16", exact_kind=True,
                                  intermediate=np.array([3e5])).any()


def test_float64_reference_overflow_accepts_the_top_of_the_range():
    assert not nonfinite_mismatch(np.array([max_finite("float64")]), np.array([np.inf]), "float64",
                                  exact_kind=True).any()


def test_nonfinite_elements_carry_no_ulp_error():
    assert ulp_errors(np.array([np.inf, np.nan, 1.0]), np.array([1.0, 1.0, np.nan]), np.ones(3), "float32").tolist() \
        == [0.0, 0.0, 0.0]
