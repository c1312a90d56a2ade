"""The vocabulary-scale benchmark's own machinery (``benchmarks/scale.py``) on a small case: every
stage it prints is measured, the first reference call among them, and torch passes the comparison.
Its figures at vocabulary scale are in the README; no timing is asserted here."""

from __future__ import annotations

from .benchmark_scripts import load_benchmark


def test_every_stage_is_measured_on_a_small_case(torch):
    figures = load_benchmark("scale").figures(4, 300, "float32")
    stages = ("native", "adapter", "first reference", "reference", "compare", "differential", "peak")
    assert all(figures[stage] > 0 for stage in stages), figures
    assert figures["differential"] == figures["adapter"] + figures["reference"] + figures["compare"]
    assert figures["passed"]
