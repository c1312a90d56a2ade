"""Findings tables: streamed rows survive, Parquet loads with pandas, pivots are right."""

import json

import pandas as pd

from ce_conformance import Case
from ce_conformance.findings import (FINDING_COLUMNS, Recorder, case_columns, feature_pass_rates, finalize,
                                  finding_signature, load_run, pass_rates, support_matrix)

CASE = Case.cross_entropy([[1.0, 2.0]], [1], dtype="bfloat16", weight=[1.0, 2.0])


def _result(adapter, status, dtype="float32", features="weights", reason=""):
    return {"case_id": "c", "adapter": adapter, "status": status, "dtype": dtype, "layout": "(N,C)",
            "reduction": "mean", "features": features, "skip_reason": reason, "phase": "explore"}


def test_rows_are_on_disk_before_close(tmp_path):
    recorder = Recorder(tmp_path)
    recorder.finding({**case_columns(CASE), "adapter": "a", "check": "loss_value", "max_ulp_error": float("inf")})
    lines = (tmp_path / "findings.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["max_ulp_error"] == "inf"
    _, findings = load_run(tmp_path)  # a partial (unfinalized) directory loads too
    assert len(findings) == 1 and findings["max_ulp_error"].iloc[0] == float("inf")


def test_finalize_writes_csv_parquet_and_summary(tmp_path):
    recorder = Recorder(tmp_path)
    recorder.result(_result("torch", "passed"))
    recorder.result(_result("optax", "skipped", reason="weights"))
    recorder.result(_result("jax", "failed", dtype="bfloat16"))
    recorder.finding({**case_columns(CASE), "adapter": "jax", "check": "loss_value", "message": "off",
                      "max_ulp_error": 9.0, "budget": 4.0, "family": "values", "phase": "explore"})
    recorder.close()
    summary = finalize(tmp_path)
    findings = pd.read_parquet(tmp_path / "findings.parquet")
    assert list(findings.columns) == list(FINDING_COLUMNS)
    assert findings["check"].tolist() == ["loss_value"]
    assert "loss_value" in summary and "Skipped" in summary
    assert pd.read_csv(tmp_path / "results.csv").shape[0] == 3


def test_pass_rates_and_support_matrix():
    results = pd.DataFrame([_result("a", "passed"), _result("a", "failed"), _result("b", "skipped"),
                            _result("b", "passed", features="")])
    rates = pass_rates(results)
    assert rates.loc["a", "float32"] == 0.5 and rates.loc["b", "float32"] == 1.0
    assert feature_pass_rates(results).loc["a", "weights"] == 0.5
    matrix = support_matrix(results)
    assert matrix.loc["a", "weights"] == "yes" and matrix.loc["b", "weights"] == "no"


def test_signature_ignores_the_random_case():
    assert finding_signature("a", "loss_value", "float32", "weights") == \
        finding_signature("a", "loss_value", "float32", "weights")
    assert finding_signature("a", "loss_value", "float32", "weights") != \
        finding_signature("a", "loss_value", "float16", "weights")


def test_a_new_run_replaces_the_previous_tables(tmp_path):
    first = Recorder(tmp_path)
    first.result(_result("a", "passed"))
    first.close()
    finalize(tmp_path)
    second = Recorder(tmp_path)
    second.close()
    results, _ = load_run(tmp_path)
    assert results.empty and not (tmp_path / "results.parquet").exists()
