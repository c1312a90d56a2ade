"""The covering phase and the coverage matrix: meta-tests of the test machinery."""

import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings

import ce_conformance.adapters as adapters
from ce_conformance import phases, reference
from ce_conformance.covering import (ANCHORS, FACTORS, build_case, cell_key, classify, conflicts, coverage_report,
                                     covering_rows, feasible_tuples, tuples_of)
from ce_conformance.findings import load_run
from ce_conformance.runner import FuzzConfig, FuzzRun
from ce_conformance.strategies import cross_entropy_cases

HERE = Path(__file__).parent
SEEDS = range(5) if os.environ.get("CE_PROFILE") == "nightly" else range(1)


@pytest.mark.parametrize("strength", [2, 3])
@pytest.mark.parametrize("seed", [0, 3])
def test_rows_cover_every_feasible_tuple_and_build_valid_cases(strength, seed):
    rows = covering_rows(strength, seed=seed)
    reached = {t for row in rows for t in tuples_of(row, strength)}
    assert feasible_tuples(strength) <= reached
    for row in rows:
        assert set(row) == set(FACTORS) and not conflicts(row)
        case = build_case(row, seed=seed)
        assert case.is_valid and classify(case) == row, row
        reference.evaluate(case)  # a torch-valid call: the reference accepts it


def test_anchors_come_first_and_reach_vocabulary_scale():
    rows = covering_rows(3, seed=1)
    assert rows[:len(ANCHORS)] == [dict(a) for a in ANCHORS]
    case = build_case(rows[0], seed=1, distribution="standard")
    assert case.dtype == "float32" and case.input.ndim == 2 and case.input.shape[1] >= 32000
    assert case.target_dtype == "int64"


def test_infeasible_combinations_are_excluded_not_silently_dropped():
    pairs = feasible_tuples(2)
    assert (("input_layout", "k_dim"), ("target_dtype", "uint8")) not in pairs  # torch refuses uint8 K-dim
    assert (("target_kind", "probability"), ("ignored", "some")) not in pairs
    assert (("ignore_index", "negative"), ("ignored", "some")) in pairs
    total = sum(len(a) * len(b) for a, b in itertools.combinations(FACTORS.values(), 2))
    assert 0.8 * total < len(pairs) < total


@settings(max_examples=60)
@given(cross_entropy_cases())
def test_every_drawn_valid_case_classifies_into_known_levels(case):
    row = classify(case)
    if row is None:
        assert not case.is_valid
        return
    assert all(row[f] in levels for f, levels in FACTORS.items()), row
    assert not conflicts(row)


def test_coverage_report_names_unreached_cells():
    rows = covering_rows(2, seed=0)
    full = coverage_report([cell_key(r) for r in rows], strengths=(2,))
    assert full["strength_2"]["unreached"] == []
    partial = coverage_report([cell_key(r) for r in rows if r["classes"] != "vocab"], strengths=(2,))
    assert partial["levels"]["classes"]["vocab"] == 0
    assert "classes=vocab x dtype=float16" in " ".join(partial["strength_2"]["unreached"]) or \
        "dtype=float16 x classes=vocab" in partial["strength_2"]["unreached"]


def test_gate_runs_the_covering_phase_and_reports_the_matrix(tmp_path, torch):
    adapter = adapters.user_adapter(f"{HERE}/planted_bugs.py:correct_from_scratch")
    config = FuzzConfig(adapters=[adapter], out_dir=tmp_path, max_examples=10, shrink=False, progress=False)
    summary = FuzzRun(config).run()
    results, _ = load_run(tmp_path)
    covering = results[results["phase"] == "covering"]
    unsupported = phases.excluded(config, [adapter])  # --impl's default features: no legacy, uint8, negative eps
    assert ("reduction", "legacy") in unsupported
    assert len(covering) == len(covering_rows(3, seed=0, excluded=unsupported))
    assert (covering["status"] != "skipped").all()  # every row is one the adapter supports
    report = json.loads((tmp_path / "coverage.json").read_text())
    assert report["strength_3"]["unreached"] == [] and "reduction=legacy" in report["not_applicable"]
    anchor = covering.iloc[0]
    assert anchor["layout"] == "(N,C)" and "vocab_scale" in anchor["features"] and anchor["dtype"] == "float32"
    assert "### Coverage" in summary.summary_markdown and "triples" in summary.summary_markdown
    assert (tmp_path / "coverage.json").exists()


def test_covering_off_and_plain_runs_skip_it(tmp_path, torch):
    adapter = adapters.load_adapter("numpy")
    FuzzRun(FuzzConfig(adapters=[adapter], out_dir=tmp_path, max_examples=5, shrink=False, progress=False,
                       covering=0, curated_dirs=[])).run()
    results, _ = load_run(tmp_path)
    assert "covering" not in set(results["phase"])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bug", ["vocab_fast_exp", "vocab_fast_backward_exp", "half_gradient_flushed",
                                 "mean_smoothing_in_range_ignore"])
def test_scale_and_interaction_bugs_fail_the_default_gate(bug, seed, tmp_path, torch):
    """Acceptance of issue 9: precision lost only at vocabulary scale in fp32 (in the forward, or
    only in the small probabilities of the backward, which the row-level model of v2 passed), a
    float16 gradient whose subnormals a vocabulary-scale path flushes (the underflow floor of
    v2.2 passed it), and a bug that needs four options at once, fail the default gate on every
    seed (0-4 under nightly)."""
    adapter = adapters.user_adapter(f"{HERE}/planted_bugs.py:{bug}")
    summary = FuzzRun(FuzzConfig(adapters=[adapter], out_dir=tmp_path, seed=seed, shrink=False,
                                 progress=False)).run()
    assert not summary.conformant


# -- extension options in the covering phase ---------------------------------------------------
LINEAR_EXTENSIONS = frozenset({"logit_scale", "softcap", "z_loss", "normalizer", "return_lse", "return_z_loss"})


def test_the_extension_plan_reaches_every_pair_cheaply_and_keeps_a_normaliser_on_sums():
    from ce_conformance.covering_extensions import _pairs, plan, reachable

    rows = covering_rows(3, seed=0)
    chosen = plan(rows, LINEAR_EXTENSIONS)
    reached = set().union(*(_pairs(options, row) for options, row in zip(chosen, rows)))
    assert reached == reachable(rows, LINEAR_EXTENSIONS)
    # every option meets every level the array has (the normaliser: only 'sum' among reductions)
    for option in LINEAR_EXTENSIONS:
        levels = {(f, level) for f, values in FACTORS.items() for level in values
                  if option != "normalizer" or f != "reduction" or level == "sum"}
        assert {(f, level) for (o, *rest) in reached if o == option and len(rest) == 2 for f, level in [rest]} == levels
    assert all(row["reduction"] == "sum" for options, row in zip(chosen, rows) if "normalizer" in options)
    again = [row for options, row in zip(chosen, rows) if options]
    assert len(again) <= len(rows) // 5, len(again)  # 19 of 190 at seed 0
    assert sum(row["classes"] == "vocab" for row in again) <= 2  # vocabulary scale only for its own level


def test_covering_runs_rows_again_with_the_extensions_an_adapter_claims_and_leaves_the_others_alone(torch):
    from tests import planted_linear

    config = FuzzConfig(adapters=[], family="linear_cross_entropy", out_dir=Path("unused"))
    plain = adapters.load_adapter("torch-linear")
    kernel = adapters.user_adapter(f"{HERE}/planted_linear.py:chunked", family="linear_cross_entropy",
                                   features=",".join(sorted(planted_linear.SUPPORTED_FEATURES)))
    alone = phases.covering_cases(config, [plain])
    assert not any(case.features & LINEAR_EXTENSIONS for case in alone)
    both = phases.covering_cases(config, [plain, kernel])
    varied = [case for case in both if case.features & LINEAR_EXTENSIONS]
    assert {c.id for c in both} - {c.id for c in varied} >= {c.id for c in alone}  # every plain row still runs
    assert set().union(*(case.features for case in varied)) >= LINEAR_EXTENSIONS
    for case in varied:  # valid, and each takes its options as the reference reads them
        assert case.is_valid and "covering row with" in case.note
        case.spec.evaluate(case, gradients=False)


def test_the_covering_phase_alone_fails_planted_returned_output_bugs(tmp_path, torch):
    from ce_conformance.cli import main
    from tests import planted_linear

    for bug in ("lse_output_uncapped", "z_loss_output_summed"):
        code = main(["gate", "--family", "linear_cross_entropy", "--impl", f"{HERE}/planted_linear.py:{bug}",
                     "--features", ",".join(sorted(planted_linear.SUPPORTED_FEATURES)), "--max-examples", "1",
                     "--covering", "2", "--no-shrink", "--in-process", "--out", str(tmp_path / bug)])
        assert code == 1
        results, findings = load_run(tmp_path / bug)
        assert set(findings["phase"]) == {"covering"}, findings[["check", "phase"]]
        coverage = json.loads((tmp_path / bug / "coverage.json").read_text())
        assert set(coverage["extensions"]) == LINEAR_EXTENSIONS
        assert all(info["unreached"] == [] for info in coverage["extensions"].values()), coverage["extensions"]
