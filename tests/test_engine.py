"""The numba engine against its NumPy specification: the summation error model, the fused
comparison and the reference's fused index-target rows give the same figures, so which engine
judged a case never changes a verdict."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from ce_conformance import Case, engine, reference, summation, tolerance
from ce_conformance.strategies import cross_entropy_cases

pytestmark = pytest.mark.skipif(engine.kernels() is None, reason="the numba engine is not available here "
                                "(numba missing or CE_CONFORMANCE_ENGINE=numpy)")

RTOL = 1e-12


@pytest.fixture
def numpy_engine(monkeypatch):
    """Run the code under test on the NumPy engine (the kernels' specification)."""
    def use_numpy(fn, *args, **kwargs):
        with monkeypatch.context() as patched:
            patched.setattr(engine, "kernels", lambda: None)
            return fn(*args, **kwargs)
    return use_numpy


@pytest.fixture(params=["serial", "threaded"])
def variant(request, monkeypatch):
    """Each kernel comes serial (small inputs) and threaded (large ones): test both at any size."""
    monkeypatch.setattr(engine, "PARALLEL_MIN_ELEMENTS", 1 if request.param == "threaded" else 1 << 62)
    return request.param


def _rows(rng, rows, width, repeats):
    values = rng.random((rows, width)) * rng.choice([1e-300, 1e-5, 1.0, 1e300], size=(rows, 1))
    if repeats:  # runs of equal terms, the case the grouping exists for
        values[:, ::2] = values[:, :1]
        values[-1] = 0.25
    return values


@pytest.mark.parametrize("width", [1, 2, 7, 1000, 4097])
@pytest.mark.parametrize("repeats", [False, True])
def test_summation_root_kernel_matches_the_numpy_specification(numpy_engine, variant, width, repeats):
    rng = np.random.default_rng(width)
    values = _rows(rng, 5, width, repeats)
    values[0, 0] = np.inf  # non-finite terms count as zero in both
    values[1, -1] = np.nan
    linear = np.array([False, True, False, True, False])
    flags_kernel, flags_numpy = np.zeros(5, dtype=bool), np.zeros(5, dtype=bool)
    fast = summation.summation_root(values, 2.0**-24, flags_kernel, linear=linear)
    spec = numpy_engine(summation.summation_root, values, 2.0**-24, flags_numpy, linear=linear)
    np.testing.assert_allclose(fast, spec, rtol=RTOL)
    assert flags_kernel.tolist() == flags_numpy.tolist()
    groups = np.round(rng.random((5, width)) * 3) - 0.0 * values  # a few keys, -0.0 among them
    np.testing.assert_allclose(summation.summation_root(values, 2.0**-24, groups=groups),
                               numpy_engine(summation.summation_root, values, 2.0**-24, groups=groups), rtol=RTOL)
    # the bias part (lost terms), which the reduction over positions adds linearly
    root, bias = summation.summation_root(values, 2.0**-24, linear=linear, bias=True)
    np.testing.assert_allclose(root, fast, rtol=RTOL)
    np.testing.assert_allclose(bias, numpy_engine(summation.summation_root, values, 2.0**-24, linear=linear,
                                                  bias=True)[1], rtol=RTOL, atol=1e-300)
    assert np.all(bias <= root) and np.all(bias >= 0)
    if repeats and width > 2:
        assert flags_kernel[-1]  # one value throughout


def test_summation_root_kernel_matches_the_specification_where_partial_sums_are_subnormal(numpy_engine, variant):
    # terms far below their row's maximum: once scaled by it, the partial sums of the reverse order
    # are subnormal (their significand bins from frexp, not from their bits; their squares 0), and
    # the stepped statistics list each bin and cell once
    rng = np.random.default_rng(3)
    values = rng.random((3, 5000)) * 1e-310
    values[:, 0] = 1.0
    values[1, 1000:] = 0.0
    values[2, ::7] = values[2, 1]  # repeats among them: the grouped path
    np.testing.assert_allclose(summation.summation_root(values, 2.0**-24, bias=True),
                               numpy_engine(summation.summation_root, values, 2.0**-24, bias=True), rtol=RTOL)


def test_summation_root_keeps_leading_shape_and_zero_width(numpy_engine):
    values = np.random.default_rng(0).random((2, 3, 50))
    np.testing.assert_allclose(summation.summation_root(values, 2.0**-11),
                               numpy_engine(summation.summation_root, values, 2.0**-11), rtol=RTOL)
    assert summation.summation_root(np.zeros((4, 0)), 2.0**-24).shape == (4,)


def _figures_both_ways(numpy_engine, actual, expected, magnitude, sigma, dtype, **kwargs):
    fused = tolerance.fused_error_figures(actual, expected, magnitude, sigma, dtype, "grad_input", 100,
                                          min_elements=1, **kwargs)
    spec = numpy_engine(tolerance.error_figures, actual, expected, magnitude, sigma, dtype, "grad_input", 100,
                        **kwargs)
    return fused, spec


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("shape", [(300,), (4, 300), (3, 50, 2, 5)])
def test_fused_comparison_matches_the_numpy_path(numpy_engine, variant, dtype, shape):
    rng = np.random.default_rng(len(shape))
    expected = rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 3, shape)
    expected.flat[::7] = 0.0  # zeros count as 0.5's binade
    actual = expected + rng.standard_normal(shape) * 1e-6
    per_class = (shape[0], 1, *shape[2:]) if len(shape) > 1 else (1,)
    magnitude = np.abs(rng.standard_normal(per_class))  # broadcast over classes, as the reference's scales are
    sigma = np.abs(rng.standard_normal(per_class)) * 1e-7
    native = expected + rng.standard_normal(shape) * 1e-5
    for kwargs in ({}, {"native": native, "scale": 2.0}):
        fused, spec = _figures_both_ways(numpy_engine, actual, expected, magnitude, sigma, dtype, **kwargs)
        assert fused.worst_index == spec.worst_index
        np.testing.assert_allclose(fused[:2] + fused[3:], spec[:2] + spec[3:], rtol=RTOL)


def test_fused_comparison_declines_nonfinite_and_small_arrays():
    expected = np.ones(100)
    assert tolerance.fused_error_figures(expected, expected, expected, None, "float32", "loss") is None  # small
    actual = expected.copy()
    actual[3] = np.nan
    assert tolerance.fused_error_figures(actual, expected, expected, None, "float32", "loss", min_elements=1) is None
    assert tolerance.fused_error_figures(expected, expected, expected, None, "float32", "loss",
                                         min_elements=1).max_ratio == 0.0


def _assert_same_result(fast, spec, sigma_rtol=1e-11, value_rtol=1e-11):
    for field in ("loss", "loss_scale", "loss_intermediate", "grad_input", "grad_input_scale", "loss_sigma",
                  "grad_input_sigma"):
        a, b = getattr(fast, field), getattr(spec, field)
        if a is None or b is None:
            assert a is None and b is None, field
            continue
        rtol = sigma_rtol if field.endswith("sigma") else value_rtol
        if field == "grad_input":  # p_c S - q_c cancels: a last-bit exp moves it relative to its row's scale
            scale = np.broadcast_to(np.nan_to_num(np.asarray(spec.grad_input_scale, dtype=np.float64)), np.shape(b))
            close = np.isclose(a, b, rtol=rtol, atol=0, equal_nan=True) | (np.abs(a - b) <= 1e-10 * scale)
            assert close.all(), (field, np.asarray(a)[~close][:5], np.asarray(b)[~close][:5])
            continue
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0, equal_nan=True, err_msg=field)


def _vocabulary_case(rng, dtype, **options):
    return Case.cross_entropy(rng.standard_normal((3, 5000)) * 4, rng.integers(0, 5000, 3), dtype=dtype, **options)


@pytest.mark.parametrize("options", [
    {}, {"reduction": "sum"}, {"reduction": "none", "grad_output": [0.5, -2.0, 0.0]},
    {"weight": np.linspace(0, 3, 5000)}, {"ignore_index": 7},
])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_fused_reference_rows_match_the_general_path(numpy_engine, variant, options, dtype):
    rng = np.random.default_rng(1)
    case = _vocabulary_case(rng, dtype, **options)
    if "ignore_index" in options:
        case = Case.cross_entropy(case.input, np.array([7, 1, 7]), dtype=dtype, ignore_index=7)
    _assert_same_result(reference.evaluate(case), numpy_engine(reference.evaluate, case))


@given(cross_entropy_cases())
def test_fused_reference_matches_the_general_path_on_drawn_cases(case):
    if not case.is_valid:
        return
    fast = reference.evaluate(case)
    original = engine.kernels
    engine.kernels = lambda: None
    try:
        spec = reference.evaluate(case)
    finally:
        engine.kernels = original
    # the error model groups *equal* probabilities: logits one ulp apart give probabilities that
    # tie or not depending on how exp rounds (NumPy's SIMD exp and libm's differ in the last bit),
    # which moves a sigma by up to sqrt(2); values and scales agree to 1e-11, or to what z - lse
    # keeps of logits far from zero (u |z| absolute in each log-probability: 2.7e-11 was seen)
    finite = np.abs(case.input[np.isfinite(case.input)])
    value_rtol = max(1e-11, 16 * 2.0 ** -53 * float(finite.max(initial=0.0)))
    _assert_same_result(fast, spec, sigma_rtol=0.5, value_rtol=value_rtol)


def test_fused_reference_declines_rows_with_a_nonfinite_maximum(numpy_engine):
    x = np.zeros((2, 300))
    x[1, 5] = np.inf  # torch: the whole row is NaN; the general path handles it
    case = Case.cross_entropy(x, np.array([1, 2]), dtype="float32")
    fast = reference.evaluate(case)
    assert np.isnan(fast.grad_input[1]).all() and np.isfinite(fast.grad_input[0]).all()
    _assert_same_result(fast, numpy_engine(reference.evaluate, case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_row_maximum_sees_every_element_and_every_nan(dtype):
    # eight running maxima and a tail loop: the largest element and a NaN must count at every
    # position modulo eight, in both tails
    from ce_conformance import _kernels

    for width in (1, 7, 8, 9, 23):
        for position in range(width):
            row = np.linspace(-3.0, -1.0, width).astype(dtype)
            row[position] = 2.5
            assert _kernels._row_max(row) == (2.5, False)
            row[position] = np.nan
            assert _kernels._row_max(row)[1]
    assert _kernels._row_max(np.array([-np.inf, -np.inf], dtype=dtype)) == (-np.inf, False)


@pytest.mark.parametrize("width", [np.int64, np.int32, np.int16])
def test_the_fingerprint_kernel_is_its_numpy_specification_and_sees_any_changed_element(variant, monkeypatch, width):
    from ce_conformance.adapters.base import fingerprint

    rng = np.random.default_rng(3)
    info = np.iinfo(width)
    # negative integers (a float's sign bit) sign-extend; three times a thread's least share
    # (2^16 elements), so the threaded kernel splits it in runs, each counting its positions on
    bits = rng.integers(info.min, info.max, 3 * (1 << 16) + 4, dtype=width)
    kernel = fingerprint(bits)
    with monkeypatch.context() as numpy_engine:
        numpy_engine.setattr(engine, "kernels", lambda: None)
        assert fingerprint(bits) == kernel
        assert fingerprint(bits, engine_only=True) is None
    assert fingerprint(bits.reshape(-1, 4)) == kernel  # the flat order
    for position in (0, 1, 1 << 16, len(bits) - 1, int(rng.integers(len(bits)))):
        for bit in (0, 8 * bits.itemsize - 1, int(rng.integers(8 * bits.itemsize))):
            flipped = bits.copy()
            flipped[position] ^= width(1) << width(bit)
            assert fingerprint(flipped) != kernel, (position, bit)
    swapped = bits.copy()
    swapped[[0, -1]] = bits[[-1, 0]]  # the same values elsewhere: the positions count
    assert bits[0] != bits[-1] and fingerprint(swapped) != kernel


def test_the_engine_is_chosen_by_the_environment():
    def engine_in(value):
        env = {**os.environ, "CE_CONFORMANCE_ENGINE": value}
        return subprocess.run([sys.executable, "-c", "from ce_conformance import engine; print(engine.name())"],
                              env=env, capture_output=True, text=True)

    assert engine_in("numpy").stdout.strip() == "numpy"
    assert engine_in("numba").stdout.strip() == "numba"
    wrong = engine_in("fortran")
    assert wrong.returncode != 0 and "must be 'numba' or 'numpy'" in wrong.stderr


def test_the_vectorised_exp_is_within_two_ulps_down_to_the_subnormal_range():
    # the reference's exp terms at vocabulary scale come from this kernel, not libm: its error
    # must stay far below what it judges (float64 kernels are allowed 4 ulps and more)
    from ce_conformance import _kernels

    rng = np.random.default_rng(0)
    high = 3.5
    x = np.concatenate([high - np.linspace(0, 760, 200_001), high - rng.exponential(20, 100_000),
                        [high, -np.inf, high - 1e-300, high - 708.4, high - 745.1, high - 745.2, high - 1e4]])
    out = np.empty(x.size)
    _kernels._exp_row(x, high, out)
    exact = np.exp(x - high)  # libm: correctly rounded or within half an ulp of it
    spacing = np.spacing(np.abs(exact))
    ulps = np.abs(out - exact) / np.where(spacing > 0, spacing, 5e-324)
    assert ulps.max() <= 2.0, x[np.argmax(ulps)] - high
    assert out[-6] == 0.0 and out[-1] == 0.0 and out[-7] == 1.0  # -inf, far below, the maximum itself
    assert 0 < out[-4] < 2.3e-308  # subnormal results round once


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 2), (64, 16), (4, 4097), (2, 50000)])
def test_order_bias_kernel_matches_the_numpy_specification(numpy_engine, variant, dtype, shape):
    rng = np.random.default_rng(list(shape))
    # clustered terms (a smoothed target's eps / C where t is tiny), a few large ones, zeros
    values = np.abs(rng.standard_normal(shape)) ** 4 * 1e-3 + rng.choice([0.0, 2.44e-5], size=shape)
    values[:, 0] = 0.5
    values[0, 1:] = 0.0  # one positive term: no bias
    kernel = summation.order_bias(values, dtype)
    specification = numpy_engine(summation.order_bias, values, dtype)
    np.testing.assert_allclose(kernel, specification, rtol=RTOL, atol=0)
    assert kernel.shape == shape[:1] and kernel[0] == 0
