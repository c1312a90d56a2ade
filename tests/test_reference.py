"""The reference against torch 2.13 float64, against mpmath, and against each semantics row."""

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings

from ce_conformance import Case, reference
from ce_conformance.errors import InvalidInputError, Rule
from ce_conformance.reference import cross_entropy, cross_entropy_grad
from ce_conformance.strategies import cross_entropy_cases

RTOL = 1e-10


def _effective_reduction(case):
    return reference.resolve_reduction(case.reduction, case.size_average, case.reduce)


def _torch_bug(case):
    """torch 2.13 CPU crashes in gather() for uint8 targets with weights and label smoothing
    (a bug, not semantics): the reference keeps uint8 targets valid there."""
    return case.target_dtype == "uint8" and case.weight is not None and case.label_smoothing > 0


def _at_range_limit(case):
    """Logits or weights near float64's top: sums overflow float64 itself, in the reference as in
    torch, in order-dependent ways (inf or NaN); compare.py judges those with its overflow rules."""
    from ce_conformance.dtypes import max_finite

    x = case.input[np.isfinite(case.input)]
    w = case.weight if case.weight is not None else np.ones(1)
    return bool((x.size and np.abs(x).max() * np.abs(w).max() > max_finite("float64") / 2**16))


def assert_close_to_scale(actual, expected, scale, what):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    assert np.array_equal(np.isnan(actual), np.isnan(expected)) or what != "loss", (what, actual, expected)
    assert np.array_equal(np.isfinite(actual), np.isfinite(expected)), (what, actual, expected)
    finite = np.isfinite(expected)
    # at least float64's smallest normal: a subnormal gradient (tiny weights over a large
    # normaliser) keeps only an absolute accuracy, in torch as in the reference
    unit = np.maximum(np.maximum(np.abs(expected), np.broadcast_to(scale, expected.shape)),
                      np.finfo(np.float64).tiny)[finite]
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(actual - expected)[finite] / np.where(unit > 0, unit, 1.0)
    assert err.size == 0 or err.max() <= RTOL, (what, float(err.max()))


@given(cross_entropy_cases(dtypes=["float64"], invalid_percent=25))
def test_matches_torch_float64(torch, case):
    from ce_conformance.adapters.torch_adapter import TorchAdapter

    if _torch_bug(case) or (case.is_valid and _at_range_limit(case)):
        return
    outcome = TorchAdapter().run(case)
    if not case.is_valid:
        assert outcome.status == "error" and outcome.error.rule == case.expected_error.value, outcome.error
        with pytest.raises(InvalidInputError) as raised:
            reference.evaluate(case)
        assert raised.value.rule == case.expected_error
        return
    assert outcome.status == "ok", outcome.error
    ref = reference.evaluate(case)
    assert outcome.loss_shape == ref.output_shape
    assert_close_to_scale(outcome.loss, ref.loss, ref.loss_scale, "loss")
    assert_close_to_scale(outcome.grad_input, ref.grad_input, ref.grad_input_scale, "grad_input")
    if case.is_probability_target:
        assert_close_to_scale(outcome.grad_target, ref.grad_target, ref.grad_target_scale, "grad_target")


def test_torch_uint8_weight_smoothing_crash_is_a_torch_bug(torch):
    """Documents the one place the reference knowingly differs from torch 2.13 (see README)."""
    import torch.nn.functional as F

    x = torch.zeros(2, 3, dtype=torch.float64)
    target = torch.tensor([1, 2], dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="gather"):
        F.cross_entropy(x, target, weight=torch.ones(3, dtype=torch.float64), label_smoothing=0.1)
    assert math.isfinite(float(cross_entropy(x.numpy(), target.numpy(), weight=np.ones(3), label_smoothing=0.1)))


# -- semantics rows, one test each --------------------------------------------------------------
X = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -3.0, 2.0, 1.0], [4.0, 4.0, -2.0, 0.0]])
W = np.array([0.5, 2.0, 1.0, 3.0])


def _nll_rows(x, y):
    lse = np.log(np.exp(x).sum(axis=1))
    return lse - x[np.arange(len(y)), y]


def test_weighted_mean_divides_by_sum_of_target_weights():
    y = np.array([1, 3, 0])
    expected = (W[y] * _nll_rows(X, y)).sum() / W[y].sum()
    assert cross_entropy(X, y, weight=W) == pytest.approx(expected, rel=1e-14)


def test_ignored_rows_leave_the_denominator_and_sum():
    y = np.array([1, -100, 0])
    kept = np.array([0, 2])
    rows = _nll_rows(X[kept], y[kept])
    assert cross_entropy(X, y, weight=W) == pytest.approx((W[y[kept]] * rows).sum() / W[y[kept]].sum(), rel=1e-14)
    assert cross_entropy(X, y, reduction="sum") == pytest.approx(rows.sum(), rel=1e-14)
    none = cross_entropy(X, y, reduction="none")
    assert none[1] == 0.0 and none.shape == (3,)


def test_weight_cancels_for_a_single_sample():
    assert cross_entropy(X[:1], np.array([2]), weight=W) == pytest.approx(cross_entropy(X[:1], np.array([2])), rel=1e-15)


def test_all_ignored_mean_is_nan_sum_is_zero_and_gradient_is_zero():
    y = np.full(3, -100)
    assert math.isnan(cross_entropy(X, y))
    assert cross_entropy(X, y, reduction="sum") == 0.0
    assert np.array_equal(cross_entropy_grad(X, y).input, np.zeros_like(X))
    assert np.array_equal(cross_entropy_grad(X, y, weight=W, label_smoothing=0.2).input, np.zeros_like(X))


def test_empty_batch():
    empty = np.zeros((0, 4))
    assert math.isnan(cross_entropy(empty, np.zeros(0, dtype=np.int64)))
    assert cross_entropy(empty, np.zeros(0, dtype=np.int64), reduction="sum") == 0.0
    assert math.isnan(cross_entropy(empty, np.zeros((0, 4))))


def test_zero_total_weight_gives_nonfinite_gradient_only_at_counted_rows():
    y = np.array([0, -100, 0])
    grad = cross_entropy_grad(X, y, weight=np.array([0.0, 1.0, 1.0, 1.0])).input
    assert np.isnan(grad[[0, 2]]).all() and np.array_equal(grad[1], np.zeros(4))


def test_in_range_ignore_index_stays_in_softmax_and_smoothing():
    y = np.array([2, 1, 1])
    loss = cross_entropy(X, y, ignore_index=1, label_smoothing=0.3, reduction="sum")
    logp = X[0] - np.log(np.exp(X[0]).sum())
    expected = 0.7 * -logp[2] + 0.3 / 4 * -logp.sum()
    assert loss == pytest.approx(expected, rel=1e-14)


def test_out_of_range_ignore_index_and_uint8_targets():
    y = np.array([255, 1, 2], dtype=np.uint8)
    assert cross_entropy(X, y, ignore_index=255) == pytest.approx(cross_entropy(X[1:], y[1:].astype(np.int64)), rel=1e-15)
    with pytest.raises(InvalidInputError) as raised:
        cross_entropy(X, y)
    assert raised.value.rule is Rule.TARGET_OUT_OF_BOUNDS and "Target 255 is out of bounds" in str(raised.value)


def test_smoothing_with_weights_weights_each_class_and_shares_the_denominator():
    y = np.array([1, -100, 3])
    eps, C = 0.2, 4
    kept = [0, 2]
    logp = X - np.log(np.exp(X).sum(axis=1, keepdims=True))
    nll = -(W[y[kept]] * logp[kept, y[kept]]).sum()
    smooth = -(logp[kept] * W).sum()
    expected = ((1 - eps) * nll + eps / C * smooth) / W[y[kept]].sum()
    assert cross_entropy(X, y, weight=W, label_smoothing=eps) == pytest.approx(expected, rel=1e-14)


def test_negative_label_smoothing_acts_as_zero():
    y = np.array([1, 3, 0])
    assert cross_entropy(X, y, label_smoothing=-0.5) == cross_entropy(X, y)


def test_neg_inf_logit_with_smoothing_is_inf():
    x = np.array([[0.0, -np.inf, 1.0]])
    assert cross_entropy(x, np.array([0]), label_smoothing=0.1) == np.inf
    assert math.isfinite(cross_entropy(x, np.array([0])))


def test_probability_targets_with_weights_and_smoothing():
    t = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0], [0.5, -0.5, 2.0, 0.0]])
    eps, C = 0.1, 4
    logp = X - np.log(np.exp(X).sum(axis=1, keepdims=True))
    smoothed = t * (1 - eps) + eps / C
    rows = -(W * smoothed * logp).sum(axis=1)
    assert cross_entropy(X, t, weight=W, label_smoothing=eps) == pytest.approx(rows.mean(), rel=1e-14)
    grad_t = cross_entropy_grad(X, t, weight=W, label_smoothing=eps).target
    np.testing.assert_allclose(grad_t, -(W * logp) * (1 - eps) / 3, rtol=1e-13)


def test_probability_zero_times_log_zero_is_nan():
    x = np.array([[0.0, -np.inf, 1.0]])
    assert math.isnan(cross_entropy(x, np.array([[0.5, 0.0, 0.5]])))


def test_unbatched_and_kdim_shapes():
    assert cross_entropy(X[0], np.array(2), reduction="none").shape == ()
    assert cross_entropy(X[0], np.array([2]), reduction="none").shape == ()
    x3 = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3) / 7
    y3 = np.array([[0, 1, 3], [2, 2, -100]])
    none = cross_entropy(x3, y3, reduction="none")
    assert none.shape == (2, 3)
    flat = cross_entropy(np.moveaxis(x3, 1, -1).reshape(-1, 4), y3.reshape(-1), reduction="none")
    np.testing.assert_allclose(none.reshape(-1), flat, rtol=1e-15)
    assert cross_entropy(x3, np.full(x3.shape, 0.25), reduction="none").shape == (2, 3)


@pytest.mark.parametrize("size_average,reduce,expected", [
    (None, None, "mean"), (True, None, "mean"), (False, None, "sum"), (None, False, "none"), (False, False, "none"),
])
def test_legacy_arguments_override_reduction(size_average, reduce, expected):
    assert reference.resolve_reduction("sum" if expected == "mean" else "mean", size_average, reduce) == expected \
        or (size_average is None and reduce is None)
    y = np.array([1, 3, 0])
    got = cross_entropy(X, y, size_average=size_average, reduce=reduce, reduction="mean")
    np.testing.assert_array_equal(got, cross_entropy(X, y, reduction=expected))


def test_gradient_formula_with_weights_smoothing_and_upstream():
    y = np.array([1, -100, 3])
    g = np.array([0.5, 7.0, -2.0])
    eps, C = 0.3, 4
    grad = cross_entropy_grad(X, y, weight=W, label_smoothing=eps, reduction="none", grad_output=g).input
    p = np.exp(X) / np.exp(X).sum(axis=1, keepdims=True)
    for i in (0, 2):
        onehot = np.eye(C)[y[i]]
        expected = (1 - eps) * W[y[i]] * (p[i] - onehot) + eps / C * (p[i] * W.sum() - W)
        np.testing.assert_allclose(grad[i], g[i] * expected, rtol=1e-13)
    assert np.array_equal(grad[1], np.zeros(C))


def test_chunked_rows_match_a_single_chunk(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 5, 3))
    y = rng.integers(0, 5, (9, 3))
    whole = cross_entropy_grad(x, y, label_smoothing=0.1, reduction="none", grad_output=np.ones((9, 3))).input
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 7)
    chunked = cross_entropy_grad(x, y, label_smoothing=0.1, reduction="none", grad_output=np.ones((9, 3))).input
    np.testing.assert_array_equal(whole, chunked)


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule,call", [
    (Rule.REDUCTION_VALUE, lambda: cross_entropy(X, np.array([0, 1, 2]), reduction="avg")),
    (Rule.WEIGHT_SHAPE, lambda: cross_entropy(X, np.array([0, 1, 2]), weight=np.ones(3))),
    (Rule.WEIGHT_SHAPE, lambda: cross_entropy(X, np.full(X.shape, 0.25), weight=np.ones(5))),
    (Rule.LABEL_SMOOTHING_RANGE, lambda: cross_entropy(X, np.array([0, 1, 2]), label_smoothing=1.5)),
    (Rule.LABEL_SMOOTHING_RANGE, lambda: cross_entropy(X, np.full(X.shape, 0.25), label_smoothing=1.5)),
    (Rule.INPUT_DTYPE, lambda: cross_entropy(X.astype(np.int64), np.array([0, 1, 2]))),
    (Rule.TARGET_DTYPE, lambda: cross_entropy(X, np.array([0, 1, 2], dtype=np.int32))),
    (Rule.TARGET_DTYPE, lambda: cross_entropy(X, np.zeros(X.shape, dtype=np.int64))),
    (Rule.TARGET_DTYPE, lambda: cross_entropy(np.zeros((2, 3, 2)), np.zeros((2, 2), dtype=np.uint8))),
    (Rule.IGNORE_INDEX_WITH_PROBABILITIES, lambda: cross_entropy(X, np.full(X.shape, 0.25), ignore_index=0)),
    (Rule.TARGET_SHAPE, lambda: cross_entropy(X, np.array([0, 1]))),
    (Rule.TARGET_SHAPE, lambda: cross_entropy(X, np.zeros((3, 2), dtype=np.int64))),
    (Rule.TARGET_SHAPE, lambda: cross_entropy(X[0], np.array([0, 1]))),
    (Rule.TARGET_SHAPE, lambda: cross_entropy(np.zeros((2, 4, 3)), np.zeros((2, 4), dtype=np.int64))),
    (Rule.TARGET_OUT_OF_BOUNDS, lambda: cross_entropy(X, np.array([0, 4, 1]))),
    (Rule.TARGET_OUT_OF_BOUNDS, lambda: cross_entropy(X, np.array([0, -1, 1]))),
    (Rule.INPUT_SHAPE, lambda: cross_entropy(np.float64(1.0), np.float64(0.5))),
    (Rule.TARGET_DTYPE, lambda: cross_entropy(np.float64(1.0), np.int64(0))),
])
def test_each_rule_raises_its_typed_error(rule, call):
    with pytest.raises(InvalidInputError) as raised:
        call()
    assert raised.value.rule is rule


def test_elementwise_mean_alias_is_accepted():
    np.testing.assert_array_equal(cross_entropy(X, np.array([0, 1, 2]), reduction="elementwise_mean"),
                                  cross_entropy(X, np.array([0, 1, 2])))


# -- exact mode: the float64 path is within a few ulps of 60-digit arithmetic --------------------
EXACT_MODE_ULPS = 12
"""The float64 path's promise: 4.5 ulps measured worst with a correctly rounded libm, 8.5 with every
exp/log1p/expm1 one ulp low (tests/test_portability.py), so 12 holds on any CPU."""
EXTREME_INPUTS = {
    "offset_1e8": (np.array([[1e8, 1e8 + 1, 1e8 - 2.5], [1e8 + 3, 1e8, 1e8]]), np.array([0, 2])),
    "gap_1e3": (np.array([[1000.0, 0.0, -3.0], [0.0, 1000.0, 1.0]]), np.array([0, 1])),
    "gap_30": (np.array([[30.0, 0.0, -3.0], [0.0, 30.0, 1.0]]), np.array([0, 1])),
    "neg_inf": (np.array([[-np.inf, 0.0, 1.0], [0.0, -np.inf, 2.0]]), np.array([2, 0])),
    "one_class": (np.array([[3.0], [-7.0]]), np.array([0, 0])),
    "near_tie": (np.array([[1.0, np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0)]]), np.array([1])),
    "prob_offset": (np.array([[1e8, 1e8 + 1, 1e8 - 2.5]]), np.array([[0.2, 0.3, 0.5]])),
    "prob_confident": (np.array([[30.0, 0.0, -1.0]]), np.array([[1.0, 0.0, 0.0]])),
}
OPTIONS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "tiny_weights": {"weight": "tiny"},
    "none": {"reduction": "none"},
    "sum_weighted_smoothing": {"reduction": "sum", "label_smoothing": 0.3, "weight": "mixed"},
}


def _ulps(approx, exact):
    worst = 0.0
    for a, e in zip(np.asarray(approx, dtype=np.float64).reshape(-1), np.asarray(exact, dtype=object).reshape(-1)):
        if mpmath.isnan(e):
            assert math.isnan(a)
            continue
        if mpmath.isinf(e):
            assert a == float(e)
            continue
        error = abs(mpmath.mpf(a) - e)
        if error <= mpmath.mpf("1e-300"):
            continue
        worst = max(worst, float(error / mpmath.mpf(np.spacing(abs(float(e))))))
    return worst


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("name", sorted(EXTREME_INPUTS))
def test_float64_reference_within_12_ulps_of_mpmath(name, option):
    x, t = EXTREME_INPUTS[name]
    kwargs = dict(OPTIONS[option])
    C = x.shape[1]
    if kwargs.get("weight") == "tiny":
        kwargs["weight"] = np.array([1e-30, 2e-30, 3e-30][:C])
    elif kwargs.get("weight") == "mixed":
        kwargs["weight"] = np.array([0.5, 1.0, 2.0][:C])
    assert _ulps(cross_entropy(x, t, **kwargs), cross_entropy(x, t, exact=True, **kwargs)) <= EXACT_MODE_ULPS
    approx, exact = cross_entropy_grad(x, t, **kwargs), cross_entropy_grad(x, t, exact=True, **kwargs)
    assert _ulps(approx.input, exact.input) <= EXACT_MODE_ULPS
    if approx.target is not None:
        assert _ulps(approx.target, exact.target) <= EXACT_MODE_ULPS


def test_exact_mode_returns_mpmath_numbers():
    value = cross_entropy(np.zeros((1, 3)), np.array([0]), exact=True)
    assert isinstance(value[()], mpmath.mpf)
    with mpmath.workdps(60):
        assert abs(value[()] - mpmath.log(3)) < mpmath.mpf("1e-50")


def test_evaluate_reports_magnitudes_and_contract():
    case = Case.cross_entropy(X, [1, 3, 0], dtype="bfloat16", reduction="none")
    result = reference.evaluate(case)
    assert result.output_dtype == "bfloat16" and result.output_shape == (3,)
    assert (result.loss_scale >= np.abs(result.loss)).all()
    assert result.grad_input_scale.shape == (3, 1)


@settings(max_examples=30)
@given(cross_entropy_cases(dtypes=["float32"]))
def test_magnitude_bounds_the_value(case):
    result = reference.evaluate(case)
    finite = np.isfinite(result.loss)
    assert (result.loss_scale[finite] + 1e-12 >= np.abs(result.loss[finite]) * (1 - 1e-12)).all()


@settings(max_examples=40)
@given(cross_entropy_cases(dtypes=["float64"], require={"normalizer"}))
def test_an_external_normaliser_divides_torchs_sum_and_its_gradients(torch, case):
    """The ``normalizer`` extension is ``F.cross_entropy(..., reduction='sum') / n`` (transformers'
    ``num_items_in_batch``): the reference agrees with torch's float64 autograd of it."""
    import torch.nn.functional as F

    from ce_conformance.adapters import function_adapter

    def divided(input, target, normalizer=None, **options):
        return F.cross_entropy(input, target, **options) / normalizer

    if _torch_bug(case) or _at_range_limit(case):
        return
    assert case.options["reduction"] == "sum" and "normalizer" in case.features
    outcome = function_adapter(divided, features="all,normalizer").run(case)
    assert outcome.status == "ok", outcome.error
    ref = reference.evaluate(case)
    assert_close_to_scale(outcome.loss, ref.loss, ref.loss_scale, "loss")
    assert_close_to_scale(outcome.grad_input, ref.grad_input, ref.grad_input_scale, "grad_input")
    if case.is_probability_target:
        assert_close_to_scale(outcome.grad_target, ref.grad_target, ref.grad_target_scale, "grad_target")


def test_a_normaliser_divides_a_sum_only():
    from ce_conformance import CaseFormatError

    with pytest.raises(ValueError, match="normalizer divides a 'sum'"):
        Case.cross_entropy([[0.0, 1.0]], [1], normalizer=2.0)  # 'mean'
    with pytest.raises(ValueError, match="legacy"):
        Case.cross_entropy([[0.0, 1.0]], [1], reduction="sum", size_average=False, normalizer=2.0)
    with pytest.raises(ValueError, match="positive"):
        Case.cross_entropy([[0.0, 1.0]], [1], reduction="sum", normalizer=0.0)
    case = Case.cross_entropy([[0.0, 1.0]], [1], reduction="sum", normalizer=2.0)
    assert Case.from_json(case.to_json()) == case and "normalizer" in case.features
    text = case.to_json().replace('"reduction": "sum"', '"reduction": "mean"')
    with pytest.raises(CaseFormatError, match="normalizer"):
        reference.evaluate(Case.from_json(text))
    # off, it is neither stored nor passed: a case's file, id and call keep torch's signature
    plain = Case.cross_entropy([[0.0, 1.0]], [1], reduction="sum")
    assert "normalizer" not in plain.to_json() and "normalizer" not in plain.call_options()
