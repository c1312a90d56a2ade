"""Split invariance (ce_conformance.split): micro-batches over the whole batch's normaliser add up
to the whole batch, in the reference (exactly) and in a kernel's results (within the budgets);
a kernel that is right on every single call but keeps state across calls is caught."""

import collections

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from ce_conformance import reference
from ce_conformance.compare import CHECK_FAMILIES, Comparison, Verdict, compare
from ce_conformance.cross_entropy import cross_entropy_case
from ce_conformance.errors import Rule
from ce_conformance.linear_cross_entropy import linear_cross_entropy_case
from ce_conformance.linear_strategies import linear_cross_entropy_cases
from ce_conformance.properties import PropertyChecks
from ce_conformance.run_config import Executor
from ce_conformance.split import CHECK, combined, micro_batches, split_verdict
from ce_conformance.strategies import SizeLimits

DRAWN = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))
SMALL = SizeLimits(max_elements=1 << 12, vocab_percent=0)
X = np.arange(12.0).reshape(6, 2) / 7 - 0.5
W = np.array([[1.0, 2.0], [0.5, -1.0], [-0.25, 0.75]])


def test_a_mean_splits_over_its_own_divisor_and_a_sum_keeps_its_normaliser():
    case = linear_cross_entropy_case(X, W, [0, 1, -100, 2, 2, 1], weight=[0.5, 2.0, 1.0])
    parts = micro_batches(case)
    assert [p.tensors["input"].shape[0] for p in parts] == [2, 4]
    assert [p.tensors["target"].values.tolist() for p in parts] == [[0, 1], [-100, 2, 2, 1]]
    assert {(p.options["reduction"], p.options["normalizer"]) for p in parts} == {("sum", 0.5 + 2 + 1 + 1 + 2)}
    assert all("normalizer" in p.features and p.is_valid for p in parts)
    summed = linear_cross_entropy_case(X, W, [0, 1, 2, 2, 1, 0], reduction="sum", normalizer=96.0)
    assert {p.options["normalizer"] for p in micro_batches(summed)} == {96.0}
    plain_sum = linear_cross_entropy_case(X, W, [0, 1, 2, 2, 1, 0], reduction="sum")
    assert {p.options["normalizer"] for p in micro_batches(plain_sum)} == {None}


@pytest.mark.parametrize("case", [
    linear_cross_entropy_case(X, W, [0, 1, 2, 2, 1, 0], reduction="none"),  # nothing to add up
    linear_cross_entropy_case(X[:1], W, [0]),  # one row
    linear_cross_entropy_case(X[0], W, 1),  # unbatched
    linear_cross_entropy_case(X, W, [-100] * 6),  # a 'mean' over nothing: NaN, no divisor to share
    linear_cross_entropy_case(X, W, [0, 1, 2, 2, 1, 0], weight=[1.0, 2.0, 3.0], z_loss=0.1),  # two divisors
    linear_cross_entropy_case(X, W[:, :1], [0] * 6, expected_error=Rule.INPUT_SHAPE),  # invalid (in_features)
    cross_entropy_case(X, [0, 1, 1, 0, 1, 0], size_average=False),  # a legacy reduction
], ids=["none", "one_row", "unbatched", "all_ignored", "weighted_z_loss", "invalid", "legacy"])
def test_cases_without_a_split(case):
    assert micro_batches(case) is None


@DRAWN
@given(linear_cross_entropy_cases(dtypes=["float64"], limits=SMALL, extensions={"z_loss", "softcap", "normalizer"}))
def test_the_references_of_the_micro_batches_add_up_to_the_whole_batch(case):
    parts = micro_batches(case)
    if parts is None:
        return
    whole, pieces = reference.evaluate(case), [reference.evaluate(p) for p in parts]
    np.testing.assert_allclose(sum(p.loss for p in pieces), whole.loss, rtol=1e-11, atol=1e-300)
    np.testing.assert_allclose(np.concatenate([p.grad_input for p in pieces]), whole.grad_input, rtol=1e-11,
                               atol=1e-14 * max(1.0, float(np.abs(whole.grad_input).max(initial=0))))
    for name, expected in whole.parameter_gradients.items():
        np.testing.assert_allclose(sum(p.parameter_gradients[name].values for p in pieces), expected.values,
                                   rtol=1e-11, atol=1e-14 * max(1.0, float(np.abs(expected.values).max(initial=0))))


def _adapter(name):
    from ce_conformance.adapters import user_adapter
    from tests import planted_linear

    return user_adapter(f"tests.planted_linear:{name}", family="linear_cross_entropy",
                        features=",".join(sorted(planted_linear.SUPPORTED_FEATURES)))


def _split(adapter, case):
    parts = micro_batches(case)
    outcomes = [adapter.timed_run(p) for p in parts]
    return split_verdict(case, reference.evaluate(case), parts, outcomes, [reference.evaluate(p) for p in parts],
                         adapter.capabilities)


def _kernel_cases():
    from tests import planted_linear
    from ce_conformance.case import FAMILIES

    everything = set(FAMILIES["linear_cross_entropy"].own_features) | {
        "probability_targets", "label_smoothing", "k_dim", "unbatched", "non_contiguous", "uint8_target"}
    return linear_cross_entropy_cases(limits=SMALL, exclude=everything - planted_linear.SUPPORTED_FEATURES,
                                      extensions={"z_loss", "softcap", "logit_scale", "normalizer", "return_lse",
                                                  "return_z_loss"})


def test_our_chunked_kernels_micro_batches_add_up_in_every_dtype(torch):
    adapter = _adapter("chunked")
    seen = collections.Counter()

    @settings(DRAWN, max_examples=80)
    @given(_kernel_cases())
    def check(case):
        if micro_batches(case) is None:
            return
        seen[case.dtype] += 1
        assert _split(adapter, case) is None, case

    check()
    assert set(seen) == {"float16", "bfloat16", "float32", "float64"}, seen


def test_a_kernel_right_on_every_call_but_keeping_state_across_calls_breaks_split_invariance(torch):
    """A weight-gradient buffer kept per head shape and never zeroed: the first call of a shape is
    right (the plain comparison passes); the micro-batches add the first's gradient twice."""
    from tests import planted_linear

    planted_linear._REUSED_BUFFERS.clear()
    adapter = _adapter("grad_weight_buffer_reused")
    case = linear_cross_entropy_case(X, W, [0, 1, 2, 2, 1, 0], dtype="float32")
    assert compare(case, adapter.timed_run(case), reference.evaluate(case), adapter.capabilities).passed
    planted_linear._REUSED_BUFFERS.clear()
    verdict = _split(adapter, case)
    assert verdict.check == CHECK and CHECK_FAMILIES[CHECK] == "split"
    assert "micro-batches of rows [0, 2) and [2, 6), each reduction='sum' with normalizer=6" in verdict.message
    assert "grad_linear_weight_value" in verdict.message and "loss_value" not in verdict.message


def test_a_micro_batch_that_raises_is_a_split_finding_not_a_crash(torch):
    adapter = _adapter("chunked")
    case = linear_cross_entropy_case(X, W, [0, 1, 2, 2, 1, 0])
    parts = micro_batches(case)
    failed = adapter.timed_run(linear_cross_entropy_case(X, W[:, :1], [0] * 6, expected_error=Rule.INPUT_SHAPE))
    ok = adapter.timed_run(parts[1])
    verdict = split_verdict(case, reference.evaluate(case), parts, [failed, ok],
                            [reference.evaluate(p) for p in parts], adapter.capabilities)
    assert verdict.check == CHECK and "rows [0, 2) did not run (error)" in verdict.message


def test_combined_adds_losses_and_parameter_gradients_and_stacks_input_gradients(torch):
    adapter = _adapter("chunked")
    case = linear_cross_entropy_case(X, W, [0, 1, 2, 2, 1, 0], dtype="float64")
    outcomes = [adapter.timed_run(p) for p in micro_batches(case)]
    together = combined(outcomes)
    whole = adapter.timed_run(case)
    np.testing.assert_allclose(together.loss, whole.loss, rtol=1e-14)
    np.testing.assert_allclose(together.grad_input, whole.grad_input, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(together.parameter_gradients["linear_weight"],
                               whole.parameter_gradients["linear_weight"], rtol=1e-14, atol=1e-16)


def test_combined_stacks_the_returned_lse_and_adds_the_returned_z_loss(torch):
    adapter = _adapter("chunked")
    case = linear_cross_entropy_case(X, W, [0, 1, -100, 2, 1, 0], dtype="float64", z_loss=0.1, return_lse=True,
                                     return_z_loss=True)
    parts = micro_batches(case)
    together = combined([adapter.timed_run(p) for p in parts])
    whole = adapter.timed_run(case)
    np.testing.assert_allclose(together.outputs["lse"], whole.outputs["lse"], rtol=1e-14)
    np.testing.assert_allclose(together.outputs["z_loss"], whole.outputs["z_loss"], rtol=1e-14)
    assert _split(adapter, case) is None
    # a z-loss returned over the part's own counted rows, not the shared normaliser, does not add up
    halved = [adapter.timed_run(p) for p in parts]
    halved[0].outputs["z_loss"] = halved[0].outputs["z_loss"] * 2
    verdict = split_verdict(case, reference.evaluate(case), parts, halved, [reference.evaluate(p) for p in parts],
                            adapter.capabilities)
    assert verdict.check == CHECK and "z_loss_value" in verdict.message


class _Counting(Executor):
    def __init__(self):
        self.calls = []

    def run(self, adapter, case, probe=None):
        self.calls.append((adapter.name, case.options["reduction"], probe))
        return super().run(adapter, case, probe)


@pytest.mark.parametrize("phase,calls", [("covering", 3), ("curated", 3), ("explore", 0)])
def test_split_runs_where_cases_run_twice_and_only_for_adapters_taking_a_normaliser(torch, phase, calls):
    from ce_conformance.adapters import load_adapter

    case = linear_cross_entropy_case(X, W, [0, 1, 2, 2, 1, 0])
    executor, stages = _Counting(), collections.Counter()
    checks = PropertyChecks(case, reference.evaluate(case), phase, False, executor, stages)
    ours = _adapter("chunked")
    assert checks.verdicts(ours, ours.timed_run(case), Comparison()) == []
    assert len(executor.calls) == calls  # the repeat, then the two micro-batches
    assert [c[1] for c in executor.calls[1:]] == ["sum"] * (calls - 1 if calls else 0)
    torchs = load_adapter("torch-linear")  # torch's function takes no normaliser: the repeat only
    executor.calls.clear()
    checks.verdicts(torchs, torchs.timed_run(case), Comparison())
    assert len(executor.calls) == (1 if calls else 0)
    assert (stages[f"adapter:{ours.name}"] > 0) == bool(calls)  # further calls count in the adapter's stage
    executor.calls.clear()
    wrong = Comparison([Verdict("loss_value", "off")])  # a case with wrong values is not split: the repeat only
    checks.verdicts(ours, ours.timed_run(case), wrong)
    assert len(executor.calls) == (1 if calls else 0)
    executor.calls.clear()
    checks.verdicts(ours, ours.timed_run(case), Comparison([Verdict("loss_dtype", "float32")]))  # values right
    assert len(executor.calls) == calls


def test_cross_entropy_splits_its_rows_and_k_dim_positions_alike():
    case = cross_entropy_case(np.zeros((4, 3, 2)), [[0, 1], [2, -100], [1, 1], [0, 2]], weight=[1.0, 2.0, 0.5])
    parts = micro_batches(case)
    assert [p.tensors["input"].shape for p in parts] == [(1, 3, 2), (3, 3, 2)]
    assert {p.options["normalizer"] for p in parts} == {1.0 + 2.0 + 0.5 + 2.0 + 2.0 + 1.0 + 0.5}
    whole, pieces = reference.evaluate(case), [reference.evaluate(p) for p in parts]
    np.testing.assert_allclose(sum(p.loss for p in pieces), whole.loss, rtol=1e-13)
    np.testing.assert_allclose(np.concatenate([p.grad_input for p in pieces]), whole.grad_input, rtol=1e-13, atol=1e-16)


def test_transformers_num_items_in_batch_adds_up_over_micro_batches(torch):
    """transformers' ForCausalLMLoss takes the normaliser as num_items_in_batch (the fix of its
    gradient-accumulation loss): its micro-batches add up to its whole batch in every dtype it
    keeps (half logits are upcast: a float32 loss, a known dtype finding, not a split one)."""
    pytest.importorskip("transformers")
    from ce_conformance.adapters import load_adapter

    adapter = load_adapter("transformers")
    assert "normalizer" in adapter.capabilities.features
    rng = np.random.default_rng(3)
    for dtype in ("float32", "bfloat16", "float16"):
        case = cross_entropy_case(rng.normal(size=(9, 50)), rng.integers(0, 50, size=9), dtype=dtype)
        summed = cross_entropy_case(case.input, case.target, dtype=dtype, reduction="sum", normalizer=7.0)
        judged = compare(summed, adapter.timed_run(summed), reference.evaluate(summed), adapter.capabilities)
        assert {v.check for v in judged.verdicts} <= {"loss_dtype"}, judged.verdicts
        assert _split(adapter, case) is None, dtype
