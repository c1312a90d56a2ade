"""Recycled buffers: a live array never shares memory with another, a dead one's memory comes
back, idle memory stays under its limit, and the reference judges the same on recycled
(garbage-filled) memory as on fresh memory."""

import numpy as np
import pytest
from hypothesis import given

from ce_conformance import buffers, reference
from ce_conformance.strategies import cross_entropy_cases

ROWS = 1 << 10  # float64 rows of 8 KiB


@pytest.fixture
def small_buffers(monkeypatch):
    """Recycle arrays from 64 KiB, starting from an empty pool."""
    monkeypatch.setattr(buffers, "MIN_BYTES", 1 << 16)
    monkeypatch.setattr(buffers, "_buffers", [])
    monkeypatch.delenv(buffers.IDLE_LIMIT_VARIABLE, raising=False)


def _address(array):
    return array.__array_interface__["data"][0]


def test_a_dead_arrays_memory_is_handed_out_again(small_buffers):
    first = buffers.empty((16, ROWS))
    where = _address(first)
    del first
    again = buffers.empty((8, ROWS))  # smaller: the idle buffer fits it
    assert _address(again) == where
    assert again.shape == (8, ROWS) and again.dtype == np.float64 and again.flags.c_contiguous


def test_a_live_array_or_any_view_of_it_keeps_its_memory_from_others(small_buffers):
    first = buffers.empty((16, ROWS))
    view = first[3:5, ::2]
    del first
    second = buffers.empty((16, ROWS))
    assert not np.shares_memory(view, second)
    assert buffers.held() == (2 * 16 * ROWS * 8, 0)
    del view, second
    assert buffers.held() == (0, 2 * 16 * ROWS * 8)


def test_idle_memory_stays_under_its_limit_newest_kept(small_buffers, monkeypatch):
    size = 16 * ROWS * 8
    monkeypatch.setenv(buffers.IDLE_LIMIT_VARIABLE, str(3 * size))
    arrays = [buffers.empty((16, ROWS)) for _ in range(3)]
    newest = _address(arrays[2])
    del arrays
    assert buffers.held() == (0, 3 * size)
    big = buffers.empty((32, ROWS))  # fits no idle buffer: new memory, counted against the limit
    assert buffers.held() == (2 * size, size)
    del big
    assert buffers.held() == (0, 3 * size)
    assert _address(buffers.empty((16, ROWS))) == newest  # the smallest idle buffer that fits


def test_recycling_is_off_at_a_zero_limit_and_a_bad_limit_is_named(small_buffers, monkeypatch):
    monkeypatch.setenv(buffers.IDLE_LIMIT_VARIABLE, "0")
    buffers.empty((16, ROWS))
    assert buffers.held() == (0, 0)
    monkeypatch.setenv(buffers.IDLE_LIMIT_VARIABLE, "lots")
    with pytest.raises(ValueError, match=buffers.IDLE_LIMIT_VARIABLE):
        buffers.empty((16, ROWS))


@given(case=cross_entropy_cases())
def test_the_reference_writes_every_gradient_element_of_recycled_memory(case):
    """Every gradient the reference returns on fresh memory it returns on memory full of NaN."""
    saved_minimum = buffers.MIN_BYTES
    buffers.MIN_BYTES = 0
    try:
        buffers.release()
        garbage = [buffers.empty((1 << 16,)) for _ in range(2)]  # 512 KiB each: fits any drawn case
        for array in garbage:
            array.fill(np.nan)
        del garbage, array
        recycled = reference.evaluate(case)
        assert buffers.held()[0] > 0  # the gradients are recycled memory
    finally:
        buffers.MIN_BYTES = saved_minimum
        buffers.release()
    fresh = reference.evaluate(case)
    for name in ("grad_input", "grad_target"):
        a, b = getattr(recycled, name), getattr(fresh, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_numpys_huge_page_advice_is_off_unless_its_variable_is_set(monkeypatch):
    # after large torch calls, faults of madvised memory compacted memory first: the reference's
    # first calls on fresh memory took 4-7 times as long (buffers.avoid_hugepage_stalls)
    advice = buffers.numpy_hugepage_switch()
    assert advice(False) is False  # turned off when ce_conformance was imported
    try:
        advice(True)
        monkeypatch.setenv(buffers.HUGEPAGE_VARIABLE, "1")
        assert buffers.avoid_hugepage_stalls() is False
        assert advice(True) is True  # the user's choice stands
        monkeypatch.delenv(buffers.HUGEPAGE_VARIABLE)
        assert buffers.avoid_hugepage_stalls() is True
        assert advice(False) is False
    finally:
        advice(False)
