"""Repeated-run determinism (ce_conformance.determinism): the same call twice, bit for bit;
reported by default, failing with --deterministic (or --checks all)."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ce_conformance.adapters.base import Outcome, RaisedError
from ce_conformance.cli import main
from ce_conformance.determinism import repeat_verdict, repeats

HERE = Path(__file__).parent
FLAKY = f"{HERE / 'misbehaving.py'}:nondeterministic_loss"
FAST = ["--max-examples", "30", "--no-shrink", "--no-progress", "--covering", "0"]


def _outcome(grad, loss=0.5, dtype="bfloat16", **fields):
    return Outcome(loss=np.array(loss, dtype=np.float32), loss_dtype=dtype, grad_input=np.asarray(grad, np.float32),
                   grad_input_dtype=dtype, **fields)


def test_identical_runs_agree_and_any_differing_bit_is_named():
    first = _outcome([0.5, -0.5, np.nan])
    assert repeat_verdict(first, _outcome([0.5, -0.5, np.nan])) is None
    moved = repeat_verdict(first, _outcome([0.5, -0.50390625, np.nan]))  # one bfloat16 ulp at 0.5
    assert moved.check == "nondeterministic"
    assert "grad_input in 1 of 3 element(s), most at [1]" in moved.message and "(1 bfloat16 ulp apart)" in moved.message
    assert np.isclose(moved.max_ulp_error, 1.0)
    nan = repeat_verdict(first, _outcome([0.5, np.nan, np.nan]))  # NaN in one run only: the worst difference
    assert "most at [1]" in nan.message
    signed_zero = repeat_verdict(_outcome([0.5, 0.0, 0.0]), _outcome([0.5, 0.0, -0.0]))  # equal as numbers, not as bits
    assert signed_zero is not None and "1 of 3 element(s), most at [2]" in signed_zero.message
    payload = np.array([np.nan], dtype=np.float32)
    payload.view(np.uint32)[0] |= 1
    assert "1 of 1" in repeat_verdict(_outcome([np.nan]), _outcome(payload)).message


def test_a_scalar_loss_that_alone_differs_is_named():
    # a 0-d loss: its differing element has no index (the check once indexed it as 1-d and crashed)
    moved = repeat_verdict(_outcome([0.5], loss=0.5), _outcome([0.5], loss=0.50390625))
    assert moved.check == "nondeterministic"
    assert "loss in 1 of 1 element(s), most at []" in moved.message and "(1 bfloat16 ulp apart)" in moved.message


def test_a_different_status_shape_or_output_set_is_a_difference():
    first = _outcome([0.5, -0.5])
    raised = Outcome(status="error", error=RaisedError("RuntimeError", "CUDA error: an illegal memory access", "forward"))
    assert "the first was ok, the second error: CUDA error" in repeat_verdict(first, raised).message
    assert "bfloat16[2] then bfloat16[3]" in repeat_verdict(first, _outcome([0.5, -0.5, 0.0])).message
    assert "float32" in repeat_verdict(first, _outcome([0.5, -0.5], dtype="float32")).message
    no_grad = Outcome(loss=first.loss, loss_dtype="bfloat16")
    assert "grad_input returned by one run only" in repeat_verdict(first, no_grad).message


def test_which_phases_run_twice():
    assert repeats("curated", False) and repeats("covering", False) and not repeats("explore", False)
    assert repeats("explore", True) and not repeats("shrink", True) and not repeats("shrunk", True)


def test_a_nondeterministic_kernel_is_reported_and_fails_only_when_asked(tmp_path, capsys, torch):
    junit = tmp_path / "junit.xml"
    assert main(["gate", "--impl", FLAKY, "--out", str(tmp_path / "default"), "--junit", str(junit), *FAST]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "reported, not gating" in out and "nondeterministic" in out
    family = next(case for case in ET.parse(junit).getroot().iter("testcase") if case.get("name") == "determinism")
    assert family.find("skipped") is not None and family.find("failure") is None
    assert main(["fuzz", "--impl", FLAKY, "--out", str(tmp_path / "fuzz"), *FAST]) == 0  # reported, not failing
    capsys.readouterr()
    assert main(["gate", "--impl", FLAKY, "--out", str(tmp_path / "strict"), "--deterministic", *FAST]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "two runs of the same call differ" in out
    assert main(["gate", "--impl", "torch.nn.functional:cross_entropy", "--out", str(tmp_path / "torch"),
                 "--deterministic", *FAST]) == 0  # torch on the CPU: every call the same bits


def test_a_run_with_only_determinism_findings_is_conformant(tmp_path):
    from ce_conformance.run_config import RunSummary

    def summary(families):
        return RunSummary(tmp_path, results=4, findings=sum(families.values()), signatures={}, interrupted=None,
                          summary_markdown="", seconds=0.0, jax_compilations={}, finding_families=families)

    assert summary({"determinism": 2}).conformant
    assert summary({"determinism": 2}).gating_findings(frozenset({"determinism"})) == 2
    assert not summary({"determinism": 2, "values": 1}).conformant
    assert not summary({"other": 1}).conformant  # a check of no known family fails, as before
