"""The gate against our own wrong implementations (one per bug class) and correct ones."""

from pathlib import Path

import pytest

import ce_conformance.adapters as adapters
from ce_conformance.baseline import Baseline
from ce_conformance.findings import load_run
from ce_conformance.runner import FuzzConfig, FuzzRun

from .planted_bugs import BUGS, CORRECT

HERE = Path(__file__).parent
BUG_CLASSES = {number for number, _ in BUGS.values()}


def _gate(spec, tmp_path, seed=0):
    adapter = adapters.user_adapter(spec.replace("tests/", f"{HERE}/"))
    return FuzzRun(FuzzConfig(adapters=[adapter], out_dir=tmp_path, seed=seed, shrink=False, progress=False)).run()


def test_every_bug_class_is_planted():
    assert BUG_CLASSES == set(range(1, 18))  # 18 (fused linear) belongs to its loss family


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_gate_fails_each_planted_bug_on_its_check(bug, tmp_path, torch):
    summary = _gate(f"tests/planted_bugs.py:{bug}", tmp_path)
    assert not summary.conformant
    checks = {check for _, check in summary.signatures}
    _, expected = BUGS[bug]
    assert checks & expected, f"{bug}: found {checks}, expected one of {expected}"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("spec", sorted(CORRECT))
def test_gate_passes_correct_implementations(spec, seed, tmp_path, torch):
    summary = _gate(spec, tmp_path, seed)
    if spec.startswith("torch."):  # torch itself: up to its known divergences (the shipped baseline)
        _, findings = load_run(tmp_path)
        new = Baseline.load("torch-2.13-cpu").apply(findings).new
        assert new.empty, new.to_string()
        return
    assert summary.conformant, summary.summary_markdown


def test_a_kernel_that_assumes_normalised_targets_passes_once_it_declares_so(tmp_path, torch):
    spec = f"{HERE}/planted_bugs.py:probability_grad_assumes_normalised"
    adapter = adapters.user_adapter(spec, features="all,-unnormalised_targets")
    summary = FuzzRun(FuzzConfig(adapters=[adapter], out_dir=tmp_path, shrink=False, progress=False)).run()
    assert summary.conformant, summary.summary_markdown  # the bug lives only where targets do not sum to 1
