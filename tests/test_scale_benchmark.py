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


def test_the_instruction_sets_it_names_follow_numbas_target(torch, monkeypatch):
    # the ratios depend on them (AVX2-only code ran the comparison 1.5x slower): the header names
    # numba's target as its settings give it, which NUMBA_CPU_NAME / NUMBA_CPU_FEATURES override
    from ce_conformance import engine

    instruction_sets = load_benchmark("scale").instruction_sets
    capability = torch.backends.cpu.get_cpu_capability()
    if engine.available():
        import numba

        monkeypatch.setattr(numba.config, "CPU_NAME", "znver2")
        monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx,+avx2,+fma,-avx512f")
        assert instruction_sets() == f"kernels: numba for znver2 (AVX2); torch's CPU kernels: {capability}"
        monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+avx512f,+avx512dq")
        assert "numba for znver2 (AVX-512)" in instruction_sets()
    monkeypatch.setattr(engine, "kernels", lambda: None)
    assert instruction_sets() == f"kernels: NumPy; torch's CPU kernels: {capability}"
