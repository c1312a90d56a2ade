"""The ecosystem view: each framework version's shipped baseline, applied to that framework's
adapters only; findings split into known and unexplained; the conformance matrix a report opens
with; the framework adapters' upstream-gradient shape check."""

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ce_conformance import Case
from ce_conformance.adapters import ECOSYSTEM_ADAPTERS, LINEAR_ECOSYSTEM_ADAPTERS, load_adapter
from ce_conformance.adapters.framework import FrameworkAdapter
from ce_conformance.baseline import SHIPPED_DIR, Baseline
from ce_conformance.cli import main
from ce_conformance.ecosystem import (ALL_FEATURES_ROW, ECOSYSTEM_FRAMEWORKS, AppliedBaseline, EcosystemBaselines, conformance_matrix,
                                      explain, mark_known, shipped_baseline_name)
from ce_conformance.findings import FINDING_COLUMNS, finding_signature, load_run
from ce_conformance.repro import write_repro

HERE = Path(__file__).parent
SMALL = ["--profile", "ci", "--max-examples", "40", "--no-progress", "--no-shrink", "--covering", "0"]


def _finding(adapter, check, features="", dtype="float32", message="m"):
    row = {column: None for column in FINDING_COLUMNS}
    row.update(case_id="c", adapter=adapter, check=check, dtype=dtype, features=features, message=message,
               signature=finding_signature(adapter, check, dtype, features))
    return row


def _findings(*rows):
    return pd.DataFrame(list(rows), columns=list(FINDING_COLUMNS))


def test_a_framework_version_picks_its_shipped_baseline_for_its_own_adapters_only():
    described = [{"adapter": "paddle", "framework": "paddle", "version": "3.3.1"},
                 {"adapter": "keras-sparse-jax", "framework": "keras", "version": "3.15.1"},
                 {"adapter": "keras-categorical-jax", "framework": "keras", "version": "3.15.1"},
                 {"adapter": "mlx", "framework": "mlx", "version": "9.1.0"},
                 {"adapter": "torch", "framework": "torch", "version": "2.13.0", "device": "cpu"},
                 {"adapter": "torch-cuda", "framework": "torch", "version": "2.13.0", "device": "cuda"},
                 {"adapter": "impl:port.py:ce", "framework": "paddle", "version": "3.3.1"},  # a user's port inherits none
                 {"adapter": "tinygrad", "framework": "tinygrad", "version": ""}]  # not installed
    chosen = EcosystemBaselines.for_adapters(described)
    assert {b.path: b.adapters for b in chosen.applied} == {  # shipped ones by name: found after an upgrade too
        "paddle-3.3-cpu": ["paddle"], "keras-3.15-cpu": ["keras-sparse-jax", "keras-categorical-jax"],
        "torch-2.13-cpu": ["torch"]}
    assert chosen.missing == ["mlx 9.1.0: no shipped baseline (mlx-9.1-cpu.toml), its findings count as unexplained",
                              "torch 2.13.0: no shipped baseline (torch-2.13-cuda.toml), its findings count as "
                              "unexplained"]
    assert shipped_baseline_name("tensorflow", "2.21.0rc1") == "tensorflow-2.21-cpu"


def test_a_baseline_explains_only_the_adapters_it_was_applied_to():
    findings = _findings(_finding("mlx", "grad_target_value", "probability_targets"),
                         _finding("impl:port.py:ce", "grad_target_value", "probability_targets"),
                         _finding("mlx", "loss_value", "weights"))
    mlx = AppliedBaseline(str(SHIPPED_DIR / "mlx-0.32-cpu.toml"), ["mlx"])
    explained = explain(findings, [mlx])
    assert explained["known"].str.contains("log-sum-exp").tolist() == [True, False, False]
    assert explained["known_in"].tolist() == ["mlx-0.32-cpu", "", ""]
    everyone = explain(findings, [AppliedBaseline(str(SHIPPED_DIR / "mlx-0.32-cpu.toml"))])
    assert (everyone["known"] != "").tolist() == [True, False, False]  # the file names its adapter, too


def test_a_baseline_that_can_no_longer_be_read_leaves_its_findings_unexplained_and_is_named(tmp_path):
    from ce_conformance.ecosystem import unreadable

    gone = AppliedBaseline(str(tmp_path / "moved.toml"), ["mlx"])
    shipped = AppliedBaseline("mlx-0.32-cpu", ["mlx"])
    findings = _findings(_finding("mlx", "grad_target_value", "probability_targets"))
    assert explain(findings, [gone])["known"].tolist() == [""]
    assert explain(findings, [gone, shipped])["known_in"].tolist() == ["mlx-0.32-cpu"]
    assert unreadable([gone, shipped]) == [gone.path]


def test_a_file_level_adapter_pattern_scopes_every_entry(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('schema_version = 1\nadapter = "keras-*"\n[[divergence]]\ncheck = "loss_shape"\nreason = "r"\n'
                    '[[divergence]]\nadapter = "*"\ncheck = "error"\nreason = "everyone"\n')
    entries = Baseline.load(path).entries
    assert [e.adapter for e in entries] == ["keras-*", "*"]
    assert entries[0].matches(_finding("keras-sparse-jax", "loss_shape"))
    assert not entries[0].matches(_finding("paddle", "loss_shape"))
    path.write_text('schema_version = 1\nadapter = 3\n')
    with pytest.raises(Exception, match="adapter pattern"):
        Baseline.load(path)


def _framework_of(baseline: str) -> str | None:
    """The framework a shipped baseline belongs to (its name's prefix; torch's is torch's own)."""
    return next((f for f in ECOSYSTEM_FRAMEWORKS[:-1] if baseline.startswith(f"{f}-")), None)


@pytest.mark.parametrize("name", sorted(p.stem for p in SHIPPED_DIR.glob("*.toml") if _framework_of(p.stem)))
def test_each_shipped_framework_baseline_speaks_only_for_that_frameworks_builtins(name):
    framework = _framework_of(name)
    builtins = (*ECOSYSTEM_ADAPTERS, *LINEAR_ECOSYSTEM_ADAPTERS)
    mine = [a for a in builtins if load_adapter(a).framework == framework]
    others = [a for a in builtins if a not in mine] + ["torch", "jax", "numpy", f"impl:{framework}_port.py:ce"]
    assert mine, name
    for entry in Baseline.load(name).entries:
        assert any(fnmatch.fnmatchcase(a, entry.adapter) for a in mine), entry
        assert not any(fnmatch.fnmatchcase(a, entry.adapter) for a in others), entry
        assert len(entry.reason) > 40, entry  # a reason a reader can act on


def test_a_signature_is_known_only_when_every_finding_of_it_is_explained():
    explained = _findings(_finding("mlx", "error", message="Received empty array"),
                          _finding("mlx", "missing_error", "invalid_input", message="x"))
    explained = explain(explained, [AppliedBaseline(str(SHIPPED_DIR / "mlx-0.32-cpu.toml"), ["mlx"])])
    diff = pd.DataFrame({"status": ["new", "new", "fixed"], "signature": [*explained["signature"], "gone"]})
    assert [bool(k) for k in mark_known(diff, explained)["known"]] == [True, False, False]


def test_the_matrix_counts_runs_pass_rates_worst_errors_and_unexplained_findings_per_feature_and_dtype():
    results = pd.DataFrame({
        "case_id": list("abcd"), "adapter": ["paddle"] * 3 + ["torch"], "status": ["passed", "failed", "skipped", "passed"],
        "dtype": ["float32", "float32", "float16", "float64"], "features": ["weights", "weights,k_dim", "", ""],
        "loss_ulp": [1.0, 500.0, None, 0.5], "grad_input_ulp": [3.0, 2.0, None, None], "grad_target_ulp": [None] * 4,
        "budget_ratio": [0.3, 40.0, None, 0.05]})
    findings = explain(_findings(_finding("paddle", "loss_value", "weights,k_dim")), [])
    matrix = conformance_matrix(results, findings).set_index(["adapter", "feature", "dtype"])
    overall = matrix.loc[("paddle", ALL_FEATURES_ROW, "float32")]
    assert (overall["runs"], overall["pass_rate"], overall["worst_ulp"], overall["worst_budget"]) == (2, 0.5, 500.0, 40.0)
    assert (overall["findings"], overall["unexplained"]) == (1, 1)
    assert matrix.loc[("paddle", "k_dim", "float32"), "pass_rate"] == 0.0
    assert matrix.loc[("paddle", "weights", "float32"), "runs"] == 2
    assert ("paddle", ALL_FEATURES_ROW, "float16") not in matrix.index  # skipped runs are not runs
    assert matrix.loc[("torch", ALL_FEATURES_ROW, "float64"), "findings"] == 0


def test_fuzz_and_nightly_report_known_divergences_and_fail_only_on_unexplained_ones(tmp_path, capsys, torch):
    impl = f"{HERE / 'planted_bugs.py'}:smoothing_by_target_weight"
    args = ["fuzz", "--impl", impl, *SMALL, "--features", "default"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 1
    _, found = load_run(tmp_path / "plain")
    baseline = tmp_path / "known.toml"
    baseline.write_text("schema_version = 1\n" + "".join(
        f'[[divergence]]\ncheck = "{check}"\nreason = "the planted smoothing bug, accepted for this test"\n'
        for check in sorted(set(found["check"]))))
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "known"), "--baseline", str(baseline)]) == 0
    _, again = load_run(tmp_path / "known")
    assert len(again) and f"{len(again)} finding(s) known, 0 unexplained" in capsys.readouterr().out
    run = tmp_path / "nightly"
    assert main(["nightly", "--impl", impl, "--adapters", "numpy", *SMALL, "--features", "default", "--out", str(run),
                 "--name", "2026-01-01-a", "--baseline", str(baseline)]) == 0
    page = (run / "2026-01-01-a" / "report.html").read_text()
    assert page.index("Conformance matrix") < page.index("<h2>Outcomes")
    assert "known divergence: the planted smoothing bug" in page and "known.toml" in page
    assert page.index("<h2>Findings by framework") < page.index("<h3>torch 2.") < page.index("known divergence: the planted")
    baseline.unlink()  # reported again after the file went away: named, its findings unexplained
    assert main(["report", str(run / "2026-01-01-a")]) == 0
    page = (run / "2026-01-01-a" / "report.html").read_text()
    assert "can no longer be read" in page and "known divergence" not in page
    assert (pd.read_csv(run / "2026-01-01-a" / "diff.csv")["known"].notna()).all()


def test_an_upstream_gradient_that_does_not_fit_the_loss_is_named_not_a_numpy_broadcast_error():
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from ce_conformance.adapters.jax_adapter import JaxBridge

    def keeps_a_class_axis(input, target, weight=None, reduction="mean", **_):  # 'none' as (N, 1)
        losses = -jnp.take_along_axis(input - jnp.log(jnp.exp(input).sum(-1, keepdims=True)), target[:, None], -1)
        return losses if reduction == "none" else losses.mean()

    adapter = FrameworkAdapter(keeps_a_class_axis, JaxBridge(), name="axis-kept")
    case = Case.cross_entropy(np.array([[0.5, 1.0], [2.0, -1.0]], np.float32), np.array([0, 1]), dtype="float32",
                              reduction="none", grad_output=np.array([1.0, 2.0], np.float32))
    outcome = adapter.run(case)
    assert outcome.status == "error" and outcome.error.stage == "backward"
    assert "upstream gradient of shape (2,)" in outcome.error.message and "(2, 1)" in outcome.error.message
    assert outcome.loss_shape == (2, 1)  # the forward result is kept, so the shape check still reports it


def test_transformers_causal_lm_loss_conforms_in_float32_and_shows_its_float_upcast(tmp_path):
    pytest.importorskip("torch")
    from ce_conformance.adapters import load_adapter
    from ce_conformance.runner import FuzzConfig, FuzzRun

    adapter = load_adapter("transformers")
    if reason := adapter.availability():
        pytest.skip(reason)
    case = Case.cross_entropy(np.arange(24.0).reshape(2, 3, 4) / 7, np.array([[0, 1, 2, 0], [2, -100, 1, 0]]),
                              dtype="float64", reduction="sum")
    outcome = adapter.run(case)
    assert outcome.loss_dtype == "float32"  # .float(): float64 logits computed in float32
    script = write_repro(tmp_path / "case.py", case, adapter_name="transformers", check="loss_dtype",
                         message="loss dtype float32, expected float64", case_path=case.save(tmp_path / "case.json"),
                         framework=adapter)
    assert "ForCausalLMLoss" in script.read_text() and "ce_conformance" not in script.read_text()
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ""}, cwd=tmp_path)
    assert ran.returncode == 0 and "torch.float32" in ran.stdout, ran.stdout + ran.stderr[-2000:]
    assert adapter.capabilities.missing(case.replace(options={"reduction": "none"})) == ("reduction:none",)
    run = FuzzRun(FuzzConfig(adapters=[adapter], out_dir=tmp_path, shrink=False, progress=False, max_examples=60,
                             dtypes=("float32",), covering=0)).run()
    results = pd.read_parquet(tmp_path / "results.parquet")
    ran = results[results["status"] != "skipped"]
    assert run.conformant and len(ran) > 20 and ran["grad_input_ulp"].notna().any(), run.summary_markdown
