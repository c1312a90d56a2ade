"""Meta-tests of the generators: every feature is reachable, invalid cases break their rule."""

import collections

import numpy as np
import pytest
from hypothesis import find, given, settings

from ce_conformance import reference
from ce_conformance.case import FEATURES
from ce_conformance.dtypes import is_representable
from ce_conformance.errors import InvalidInputError
from ce_conformance.strategies import (INVALID_RULES, SizeLimits, cross_entropy_cases, invalid_cases, logits,
                                    probability_targets)


@pytest.mark.parametrize("feature", sorted(set(FEATURES) - {"invalid_input"}))
def test_every_feature_is_reachable(feature):
    find(cross_entropy_cases(), lambda case: feature in case.features, settings=settings(max_examples=3000))


EXCLUDABLE = sorted(set(FEATURES) - {"single_class"})  # a single class is a shape, not an option


@pytest.mark.parametrize("feature", EXCLUDABLE)
def test_excluded_features_are_never_drawn(feature):
    @settings(max_examples=150, database=None)
    @given(cross_entropy_cases(exclude={feature}, invalid_percent=30))
    def check(case):
        assert feature not in case.features

    check()


@pytest.mark.parametrize("rule", INVALID_RULES, ids=lambda r: r.value)
def test_every_invalid_rule_is_reachable_and_raises_that_rule(rule):
    case = find(invalid_cases(rules=[rule]), lambda c: True, settings=settings(max_examples=500))
    assert case.expected_error is rule
    with pytest.raises(InvalidInputError) as raised:
        reference.evaluate(case)
    assert raised.value.rule is rule


@given(cross_entropy_cases(invalid_percent=30))
def test_cases_are_consistent_with_the_reference(case):
    if case.is_valid:
        result = reference.evaluate(case, gradients=False)
        if case.grad_output is not None:
            assert case.grad_output.shape == result.output_shape
    else:
        with pytest.raises(InvalidInputError) as raised:
            reference.evaluate(case, gradients=False)
        assert raised.value.rule == case.expected_error


@given(cross_entropy_cases())
def test_values_are_exact_in_their_dtype(case):
    assert is_representable(case.input, case.dtype)
    if case.weight is not None:
        assert is_representable(case.weight, case.dtype)


@given(cross_entropy_cases(limits=SizeLimits(max_elements=1 << 12, vocab_percent=0)))
def test_size_limits_are_respected(case):
    assert case.input.size <= 1 << 12


def test_distributions_cover_special_values():
    seen = collections.Counter()
    for dist in ("neg_inf", "ties", "extremes", "offset"):
        values = find(logits((4, 8), "float32", [dist]), lambda v: True)
        seen[dist] = values
    assert np.isneginf(seen["neg_inf"]).any()
    assert (seen["ties"] == seen["ties"].flat[0]).all()
    assert np.abs(seen["offset"]).max() > 100


def test_one_hot_probabilities_are_normalised():
    t = find(probability_targets((3, 5), kinds=["one_hot"]), lambda v: True)
    np.testing.assert_array_equal(t.sum(axis=1), np.ones(3))


def test_an_invalid_input_dtype_keeps_a_half_dtype_distribution_normalised():
    """The INPUT_DTYPE breach declares a soft target float32: a bfloat16 distribution, summing to
    1 only within bfloat16's rounding, must not turn into an (excluded) unnormalised target."""
    from ce_conformance import Case
    from ce_conformance.errors import Rule

    base = Case.cross_entropy(np.array([[0.25, -1.0]]), np.array([[0.5625, 0.43554688]]), dtype="bfloat16")
    assert "unnormalised_targets" not in base.features

    @settings(max_examples=10, database=None)
    @given(invalid_cases(base=base, rules=[Rule.INPUT_DTYPE]))
    def check(case):
        assert case.target_dtype == "float32" and "unnormalised_targets" not in case.features

    check()
