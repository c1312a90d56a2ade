"""The sensitivity benchmark's own machinery (``benchmarks/sensitivity.py``): how many cases a
cell draws. The measure itself runs for minutes and is recorded in the README, not asserted."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from .benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def sensitivity():
    return load_benchmark("sensitivity")


def test_docstring_examples(sensitivity):
    assert doctest.testmod(sensitivity).failed == 0


@pytest.mark.parametrize("layout", ["nc", "c", "kdim"])
def test_cheap_cells_draw_as_many_cases_as_a_gate_and_costly_ones_at_least_twenty(sensitivity, layout):
    counts = [sensitivity.cases_per_cell(C, layout) for C in sensitivity.CLASSES]
    assert counts[0] == sensitivity.GATE_CASES  # two classes: a gate's worth
    assert counts == sorted(counts, reverse=True)
    assert all(sensitivity.SEEDS <= count <= sensitivity.GATE_CASES for count in counts)
    for C, count in zip(sensitivity.CLASSES, counts):
        logits = sensitivity.cases_for("float32", C, layout)[0].input.size
        # no cell costs more than its logit budget, except where the floor of 20 cases says so
        assert count == sensitivity.SEEDS or count * logits <= sensitivity.CELL_ELEMENTS


def test_each_configuration_is_named_as_the_option_takes_it(sensitivity):
    # --configurations filters by these names: a name no case has would measure nothing
    names = [sensitivity.configuration(case) for case in sensitivity.cases_for("float16", 127, "nc")]
    assert names == list(sensitivity.CONFIGURATIONS)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant,
                    reason="long double is float64 on this platform: no wider injection")
@pytest.mark.parametrize("stage", ["lse", "reduction"])
def test_a_float64_injection_below_its_unit_roundoff_is_not_lost(sensitivity, stage):
    # in float64, 1 + d is 1 for d below 2**-53, so the smallest injection was an ulp of lse and
    # the float64 lse cells read the error of that ulp, not the gate's threshold
    from ce_conformance import Case, reference

    case = Case.cross_entropy(np.array([[40.0, 39.3], [0.25, -1.5]]), np.array([0, 1]), dtype="float64",
                              reduction="none")
    exact = reference.evaluate(case).loss
    clean = sensitivity.injected_outcome(case, stage, 0.0).loss
    shifted = sensitivity.injected_outcome(case, stage, 2.0 ** -56).loss
    assert np.all(np.abs(clean - exact) <= np.spacing(np.abs(exact)))  # exact to the final rounding
    # lse = 40.4 moves by 2**-56 * 40.4 = 5.6e-16, 8 ulps of the loss 0.40: the injection really lands
    moved = np.abs(shifted - clean) / np.spacing(np.abs(exact))
    assert (moved[0] >= 6) if stage == "lse" else (moved.max() <= 1)
