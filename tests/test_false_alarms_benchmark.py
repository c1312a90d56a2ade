"""The adversarial false-alarm sweep's own machinery (``benchmarks/false_alarms.py``): its cases
replay from their seeds and reach every kind it promises. The sweep itself runs for minutes; its
findings are in the README."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from .benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("false_alarms")


def test_docstring_examples(sweep):
    assert doctest.testmod(sweep).failed == 0


def test_a_case_replays_from_its_seed(sweep):
    first, again = sweep.adversarial_case(7), sweep.adversarial_case(7)
    assert first.dtype == again.dtype and np.array_equal(first.input, again.input, equal_nan=True)
    assert np.array_equal(np.asarray(first.target), np.asarray(again.target))


def test_the_draws_reach_every_dtype_layout_reduction_and_target_kind(sweep):
    cases = [sweep.adversarial_case(seed) for seed in range(150)]
    assert {case.dtype for case in cases} == set(sweep.DTYPES)
    assert {case.input.ndim for case in cases} == {1, 2, 3}
    assert {case.reduction for case in cases} == {"none", "mean", "sum"}
    assert {case.is_probability_target for case in cases} == {True, False}
    assert any(case.label_smoothing == 1.0 for case in cases) and any(case.weight is not None for case in cases)
    assert max(case.input.size for case in cases) <= 4 * sweep.MAX_ELEMENTS
    # the offsets that make lse far larger than the loss
    assert max(float(np.max(np.abs(case.input))) for case in cases) > 1000
