"""Outputs returned beside the loss (``return_lse`` in both families, ``return_z_loss`` in linear
cross-entropy): the case option, the reference's values against torch float64, the comparison's
checks, the torch adapter's reading of a ``(loss, *outputs)`` result and the Liger wrapper's mapping.
(quack's returned lse: ``tests/test_gpu_kernels.py``; split invariance of both: ``tests/test_split.py``.)"""

import dataclasses
import json
import sys
import types

import numpy as np
import pytest
from hypothesis import given

from ce_conformance.adapters.base import Capabilities, Outcome
from ce_conformance.adapters.torch_adapter import TorchAdapter
from ce_conformance.case import Case
from ce_conformance.compare import CHECK_FAMILIES, compare, compare_pair
from ce_conformance.errors import CaseFormatError
from ce_conformance.linear_cross_entropy import linear_cross_entropy_case
from ce_conformance.linear_strategies import linear_cross_entropy_cases
from ce_conformance.outputs import OUTPUT_OPTIONS, lse_output, requested, split_result
from ce_conformance.strategies import SizeLimits, cross_entropy_cases
from ce_conformance import reference
from ce_conformance.cross_entropy import cross_entropy_case

FAMILY = frozenset({"linear_cross_entropy"})
SMALL = SizeLimits(max_elements=1 << 11, vocab_percent=0)
CAPABILITIES = Capabilities(features=frozenset({"weights", "ignore_index", "all_ignored", "upstream_gradient",
                                                "low_precision", "linear_bias", "logit_scale", "softcap", "z_loss",
                                                "normalizer", *OUTPUT_OPTIONS}),
                            families=FAMILY, target_gradients=False)


def _case(dtype="float64", **options):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((6, 5)) * 2, rng.standard_normal((9, 5))
    return linear_cross_entropy_case(x, w, [1, 2, -100, 3, 0, 8], dtype=dtype, **options)


def _composed(torch, case):
    """The returned outputs as torch float64 composes them from the case's dtype-rounded values."""
    x = torch.tensor(case.input)
    z = x @ torch.tensor(case.tensors["linear_weight"].values).T
    if case.options.get("logit_scale"):
        z = z * case.options["logit_scale"]
    if case.options.get("softcap"):
        z = case.options["softcap"] * torch.tanh(z / case.options["softcap"])
    lse = torch.logsumexp(z, dim=1)
    target = torch.tensor(case.target)
    counted = target != -100
    terms = torch.where(counted, (case.options.get("z_loss") or 0.0) * lse ** 2, 0)
    reduction = case.options["reduction"]
    if reduction == "mean":
        z_loss = terms.sum() / counted.sum()
    elif reduction == "sum":
        z_loss = terms.sum() / (case.options.get("normalizer") or 1)
    else:
        z_loss = terms
    return lse.numpy(), z_loss.numpy()


@pytest.mark.parametrize("options", [dict(reduction="mean", z_loss=1e-2),
                                     dict(reduction="none", softcap=3.0, logit_scale=0.5, z_loss=0.1),
                                     dict(reduction="sum", normalizer=3.0, z_loss=1e-3),
                                     dict(reduction="mean")])
def test_the_reference_returns_what_torch_float64_composes(torch, options):
    case = _case(return_lse=True, return_z_loss=True, **options)
    result = case.spec.evaluate(case)
    lse, z_loss = _composed(torch, case)
    assert np.allclose(result.outputs["lse"].values, lse, rtol=1e-12, atol=0)
    assert np.allclose(result.outputs["z_loss"].values, z_loss, rtol=1e-12, atol=1e-300)
    assert result.outputs["lse"].values.shape == (6,) and np.shape(result.outputs["z_loss"].values) == \
        tuple(result.output_shape)
    assert (result.outputs["lse"].sigma > 0).all() and np.all(result.outputs["lse"].scale >= np.abs(lse) * (1 - 1e-12))


def test_the_returned_lse_follows_torch_logsumexp_on_nonfinite_rows(torch):
    z = np.array([[1.0, np.inf, 0.0], [-np.inf, -np.inf, -np.inf], [np.nan, 1.0, 2.0], [0.5, -1.0, 3.0]])
    with np.errstate(invalid="ignore"):
        z_max = np.max(z, axis=1, keepdims=True)
        normaliser = np.sum(np.exp(z - z_max), axis=1, keepdims=True)
    values, _, sigma = lse_output(z_max, normaliser, np.zeros_like(z_max), np.zeros_like(z_max), 1, 2.0 ** -24)
    expected = torch.logsumexp(torch.tensor(z), dim=1).numpy()
    assert np.array_equal(np.isnan(values), np.isnan(expected))
    assert np.array_equal(values[~np.isnan(values)], expected[~np.isnan(expected)])
    assert np.isfinite(sigma).all()


def test_a_mean_z_loss_over_no_counted_position_is_nan_like_the_term_itself():
    case = linear_cross_entropy_case([[1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]], [-100], dtype="float64",
                                     return_z_loss=True)
    assert np.isnan(case.spec.evaluate(case).outputs["z_loss"].values)
    summed = linear_cross_entropy_case([[1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]], [-100], dtype="float64",
                                       reduction="sum", return_z_loss=True)
    assert summed.spec.evaluate(summed).outputs["z_loss"].values == 0.0


def test_a_flag_is_stored_only_when_on_and_a_file_breach_names_the_option():
    plain = _case()
    assert _case(return_lse=False).id == plain.id and "return_lse" not in json.loads(plain.to_json())["options"]
    on = _case(return_lse=True, return_z_loss=True)
    assert on.id != plain.id and {"return_lse", "return_z_loss"} <= on.features
    assert Case.from_json(on.to_json()).id == on.id
    assert requested(on.options) == ("lse", "z_loss")
    with pytest.raises(ValueError, match="flag"):
        _case(return_lse=2)
    for value in (2, False):
        payload = json.loads(on.to_json())
        payload["options"]["return_lse"] = value
        with pytest.raises(CaseFormatError) as raised:
            Case.from_json(json.dumps(payload)).spec.evaluate(Case.from_json(json.dumps(payload)))
        assert "return_lse" in str(raised.value)


def test_a_call_that_returns_the_wrong_arity_says_what_was_expected():
    assert split_result("loss", ()) == ("loss", {})
    with pytest.raises(TypeError, match=r"expected \(loss, lse, z_loss\), got 2 values"):
        split_result((1, 2), ("lse", "z_loss"))
    with pytest.raises(TypeError, match="got a float"):
        split_result(1.0, ("lse",))


def _outcome(case, lse=None, z_loss=None, dtype="float32"):
    result = case.spec.evaluate(case)
    outputs = {"lse": result.outputs["lse"].values if lse is None else lse,
               "z_loss": result.outputs["z_loss"].values if z_loss is None else z_loss}
    outcome = Outcome(loss=np.asarray(result.loss), loss_dtype=case.dtype, loss_shape=tuple(result.output_shape),
                      outputs={k: np.asarray(v, dtype=np.float64) for k, v in outputs.items()},
                      output_dtypes={k: dtype for k in outputs})
    return outcome, result


def test_the_comparison_judges_each_output_like_the_loss():
    case = _case("float32", z_loss=1e-2, return_lse=True, return_z_loss=True)
    caps = dataclasses.replace(CAPABILITIES, gradients=False)
    good, result = _outcome(case)
    assert compare(case, good, result, caps).passed
    assert compare(case, _outcome(case, dtype="bfloat16")[0], result, caps).verdicts[0].check == "lse_dtype"
    off = result.outputs["lse"].values * (1 + 2e-6)  # 30 float32 ulps: far past a logsumexp's rounding
    checks = {v.check for v in compare(case, _outcome(case, lse=off)[0], result, caps).verdicts}
    assert checks == {"lse_value"} and CHECK_FAMILIES["lse_value"] == "values"
    short = _outcome(case, lse=result.outputs["lse"].values[:-1])[0]
    assert {v.check for v in compare(case, short, result, caps).verdicts} == {"lse_shape"}
    missing = dataclasses.replace(good, outputs={"lse": good.outputs["lse"]})
    assert {v.check for v in compare(case, missing, result, caps).verdicts} == {"z_loss_missing"}
    nan = _outcome(case, z_loss=np.float64("nan"))[0]
    assert {v.check for v in compare(case, nan, result, caps).verdicts} == {"z_loss_nonfinite"}
    # pairwise: the other side's outputs are the expectation
    assert compare_pair(case, good, _outcome(case, lse=off)[0], result, caps).verdicts[0].check == "lse_value"
    assert compare_pair(case, good, good, result, caps).passed


def test_an_output_may_come_in_the_inputs_dtype_and_is_judged_in_its_unit():
    case = _case("bfloat16", z_loss=1e-2, return_lse=True, return_z_loss=True)
    caps = dataclasses.replace(CAPABILITIES, gradients=False)
    result = case.spec.evaluate(case)
    import ml_dtypes  # noqa: F401 (jax's dependency; bfloat16 rounding)

    rounded = result.outputs["lse"].values.astype("bfloat16").astype(np.float64)
    outcome = _outcome(case, lse=rounded, dtype="bfloat16")[0]
    assert compare(case, outcome, result, caps).passed


def _chunked(torch):
    from tests import planted_linear

    return planted_linear


def test_the_torch_adapter_reads_the_returned_outputs_and_a_missing_one_is_the_calls_error(torch):
    planted = _chunked(torch)
    adapter = TorchAdapter(planted.chunked, name="chunked", capabilities=CAPABILITIES, family="linear_cross_entropy")
    case = _case("bfloat16", z_loss=1e-2, softcap=4.0, return_lse=True, return_z_loss=True)
    outcome = adapter.run(case)
    assert outcome.status == "ok" and outcome.output_dtypes == {"lse": "float32", "z_loss": "float32"}
    assert compare(case, outcome, case.spec.evaluate(case), CAPABILITIES).passed
    loss_only = TorchAdapter(lambda *args, return_lse=False, return_z_loss=False, **kwargs:
                             planted.chunked(*args, **kwargs), name="loss-only", capabilities=CAPABILITIES,
                             family="linear_cross_entropy")
    failed = loss_only.run(case)
    assert failed.status == "error" and "expected (loss, lse, z_loss)" in failed.error.message


@given(linear_cross_entropy_cases(limits=SMALL, require={"return_lse", "return_z_loss"}, extensions=CAPABILITIES.features,
                                  exclude={"k_dim", "unbatched", "label_smoothing", "probability_targets",
                                           "negative_smoothing", "vocab_scale", "uint8_target"}))
def test_our_chunked_kernels_outputs_pass_and_the_planted_ones_fail(case):
    import torch  # noqa: F401 (the fixture cannot serve a Hypothesis test)

    from tests import planted_linear

    if CAPABILITIES.missing(case) or not case.is_valid:
        return
    result = case.spec.evaluate(case)
    adapter = TorchAdapter(planted_linear.chunked, name="chunked", capabilities=CAPABILITIES,
                           family="linear_cross_entropy")
    outcome = adapter.run(case)
    assert compare(case, outcome, result, CAPABILITIES).passed, compare(case, outcome, result, CAPABILITIES).verdicts


def test_the_liger_wrapper_returns_its_z_loss_as_the_second_output(torch, monkeypatch):
    """Against a stand-in with Liger's signature and documented semantics (liger_kernel/ops/
    fused_linear_cross_entropy.py: the z-loss reduced as the loss, ``CrossEntropyOutput``)."""
    from ce_conformance.adapters import liger_adapter

    F = torch.nn.functional

    @dataclasses.dataclass
    class CrossEntropyOutput:
        loss: object
        z_loss: object = None

    def liger_fused_linear_cross_entropy(input, weight, target, bias=None, ce_weight=None, ignore_index=-100,
                                         lse_square_scale=0.0, label_smoothing=0.0, reduction="mean", softcap=None,
                                         return_z_loss=False):
        logits = F.linear(input, weight, bias).float()
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        valid = target != ignore_index
        lse = torch.logsumexp(logits, dim=1)
        z_terms = torch.where(valid, lse_square_scale * lse ** 2, 0)
        loss = F.cross_entropy(logits, target, weight=ce_weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)
        z = {"mean": z_terms.sum() / valid.sum(), "sum": z_terms.sum(), "none": z_terms}[reduction]
        loss = (loss + z).to(input.dtype)
        return CrossEntropyOutput(loss, z) if return_z_loss else loss

    if "liger_kernel" in sys.modules or __import__("importlib").util.find_spec("liger_kernel"):
        pytest.skip("liger-kernel installed: the real module is not replaced")
    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = liger_fused_linear_cross_entropy
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    caps = dataclasses.replace(liger_adapter.LIGER_LINEAR_CAPABILITIES, dtypes=frozenset({"float32", "float64"}))
    adapter = TorchAdapter(liger_adapter.liger_fused_linear_cross_entropy, name="liger-stand-in", capabilities=caps,
                           family="linear_cross_entropy")
    for options in (dict(z_loss=1e-2, return_z_loss=True), dict(reduction="none", z_loss=1e-3, softcap=5.0,
                                                                return_z_loss=True), dict(return_z_loss=True)):
        case = _case("float32", **options)
        outcome = adapter.run(case)
        assert outcome.status == "ok", outcome.error
        assert compare(case, outcome, case.spec.evaluate(case), caps).passed
    assert "return_z_loss" in caps.features and "return_lse" not in caps.features


@pytest.mark.parametrize("shape,target", [((4, 7), [1, -100, 6, 0]), ((7,), 3), ((3, 5, 2), [[0, 4], [1, -100], [2, 2]])],
                         ids=["batched", "unbatched", "k_dim"])
def test_cross_entropy_returns_the_lse_of_its_logits_per_position(torch, shape, target):
    rng = np.random.default_rng(5)
    case = cross_entropy_case(rng.standard_normal(shape) * 4, target, dtype="float32", return_lse=True,
                              reduction="sum", normalizer=3.0)
    assert cross_entropy_case(case.input, target, dtype="float32", reduction="sum", normalizer=3.0,
                              return_lse=False).id != case.id and "return_lse" in case.features
    result = reference.evaluate(case)
    x = torch.tensor(case.input)
    expected = torch.logsumexp(x, dim=0 if x.ndim == 1 else 1).numpy()
    assert result.outputs["lse"].values.shape == expected.shape
    np.testing.assert_allclose(result.outputs["lse"].values, expected, rtol=1e-13)
    caps = Capabilities(features=Capabilities().features | {"return_lse", "normalizer"})

    def with_lse(input, target, *, return_lse=False, normalizer=None, **kwargs):
        loss = torch.nn.functional.cross_entropy(input, target, **kwargs) / normalizer
        return (loss, torch.logsumexp(input.float(), dim=0 if input.ndim == 1 else 1)) if return_lse else loss

    outcome = TorchAdapter(with_lse, name="with-lse", capabilities=caps).run(case)
    assert outcome.output_dtypes == {"lse": "float32"} and compare(case, outcome, result, caps).passed
    shifted = dataclasses.replace(outcome, outputs={"lse": outcome.outputs["lse"] + 1e-4})
    assert {v.check for v in compare(case, shifted, result, caps).verdicts} == {"lse_value"}


def test_cross_entropy_draws_the_flag_only_where_asked():
    assert "return_lse" in cross_entropy_cases(require={"return_lse"}).example().features

    @given(cross_entropy_cases())
    def never(case):
        assert "return_lse" not in case.features

    never()


def test_a_numpy_function_returns_its_outputs_and_other_frameworks_leave_them_to_torch():
    from ce_conformance.adapters import function_adapter

    def numpy_loss(input, target, weight=None, reduction="mean", return_lse=False, **kwargs):
        x = input.astype(np.float64)
        lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
        loss = (lse - x[np.arange(len(target)), target]).mean().astype(input.dtype)
        return (loss, lse.astype(np.float32)) if return_lse else loss

    adapter = function_adapter(numpy_loss, "numpy", features="return_lse")
    case = cross_entropy_case(np.random.default_rng(0).standard_normal((5, 9)), [0, 3, 8, 1, 2], dtype="float32",
                              return_lse=True)
    outcome = adapter.run(case)
    assert outcome.output_dtypes == {"lse": "float32"}
    assert compare(case, outcome, reference.evaluate(case), adapter.capabilities).passed
    for kind in ("jax", "paddle"):
        assert "return_lse" not in function_adapter(numpy_loss, kind, features="default,return_lse").capabilities.features


def test_a_returned_output_findings_repro_script_prints_that_output(tmp_path, torch):
    import subprocess
    import sys
    from pathlib import Path

    from ce_conformance.cli import main
    from tests import planted_linear

    planted = Path(planted_linear.__file__)
    code = main(["gate", "--family", "linear_cross_entropy", "--impl", f"{planted}:lse_output_uncapped",
                 "--features", ",".join(sorted(planted_linear.SUPPORTED_FEATURES)), "--max-examples", "1",
                 "--covering", "2", "--in-process", "--out", str(tmp_path)])
    assert code == 1
    script = next(iter(sorted(tmp_path.glob("cases/*lse_value*.py"))))
    text = script.read_text()
    assert "loss, lse" in text and "return_lse=True" in text
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(planted.parent.parent)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "got lse" in run.stdout, run.stdout
