"""Nightly runs and reports: HTML with embedded plots, run diffs, history, shards, pairwise mode."""

from html.parser import HTMLParser
from pathlib import Path
import base64
import json
import os

import numpy as np
import pandas as pd

import ce_conformance.adapters as adapters
from ce_conformance.cli import main
from ce_conformance.findings import load_run
from ce_conformance.report import diff_findings

HERE = Path(__file__).parent
SMALL = ["--profile", "ci", "--max-examples", "60", "--no-progress", "--no-shrink"]


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.external = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])


def _nightly(out, name, *extra):
    return main(["nightly", "--adapters", "numpy,torch", "--out", str(out), "--name", name, *SMALL, *extra])


def test_nightly_report_is_self_contained_with_embedded_plots(tmp_path, torch):
    _nightly(tmp_path, "2026-01-01-a")
    run = tmp_path / "2026-01-01-a"
    page = (run / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert len(parser.images) >= 3 and not parser.external
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for heading in ("Pass rate: adapter × feature", "Error distributions", "Support matrix", "Findings by framework",
                    "Configuration and versions"):
        assert heading in page
    assert "torch" in page and "&quot;versions&quot;" in page
    assert pd.read_parquet(run / "findings.parquet") is not None


def test_a_planted_regression_is_exactly_the_new_findings(tmp_path, torch):
    impl = f"{HERE / 'planted_bugs.py'}:smoothing_by_target_weight"
    assert _nightly(tmp_path, "2026-01-01-a") == 1  # first run: everything is new (torch's uint8 crash)
    assert _nightly(tmp_path, "2026-01-02-b", "--impl", impl) == 1
    diff = pd.read_csv(tmp_path / "2026-01-02-b" / "diff.csv")
    _, findings = load_run(tmp_path / "2026-01-02-b")
    planted = set(findings.loc[findings["adapter"] == f"impl:{impl}", "signature"])
    assert planted and set(diff.loc[diff["status"] == "new", "signature"]) == planted
    assert (diff["status"] != "fixed").all()
    history = pd.read_parquet(tmp_path / "history.parquet")
    assert set(history["run"]) == {"2026-01-01-a", "2026-01-02-b"}
    # the same diff on demand
    assert main(["report", "--compare", str(tmp_path / "2026-01-01-a"), str(tmp_path / "2026-01-02-b")]) == 1


def test_fixed_findings_are_reported():
    before = pd.DataFrame([{"signature": "s1", "adapter": "a", "check": "loss_value", "dtype": "float32",
                            "features": "", "case_id": "c", "message": "m", "case_path": ""}])
    diff = diff_findings(before, before.iloc[0:0])
    assert diff["status"].tolist() == ["fixed"]


def test_merged_shards_equal_a_single_run_over_the_same_seeds(tmp_path, torch):
    impl = f"{HERE / 'planted_bugs.py'}:mean_over_n"
    for index in (1, 2):
        _nightly(tmp_path / "shards", f"s{index}", "--shard", f"{index}/2", "--impl", impl)
    _nightly(tmp_path / "single", "all", "--slices", "2", "--impl", impl)
    assert main(["report", "--merge", str(tmp_path / "shards" / "s1"), str(tmp_path / "shards" / "s2"),
                 "--out", str(tmp_path / "merged")]) == 0
    merged_results, merged_findings = load_run(tmp_path / "merged")
    single_results, single_findings = load_run(tmp_path / "single" / "all")
    key = ["case_id", "adapter", "status"]
    pd.testing.assert_frame_equal(merged_results[key].sort_values(key).reset_index(drop=True),
                                  single_results[key].sort_values(key).reset_index(drop=True))
    fkey = ["case_id", "adapter", "check"]
    pd.testing.assert_frame_equal(merged_findings[fkey].sort_values(fkey).reset_index(drop=True),
                                  single_findings[fkey].sort_values(fkey).reset_index(drop=True))
    assert (tmp_path / "merged" / "report.html").exists()


def test_shards_are_disjoint(tmp_path, torch):
    for index in (1, 2):
        _nightly(tmp_path, f"s{index}", "--shard", f"{index}/2", "--no-curated")
    a, b = (set(load_run(tmp_path / f"s{i}")[0]["case_id"]) for i in (1, 2))
    assert a and b and not a & b


def test_pairwise_mode_compares_two_adapters(tmp_path, torch):
    impl = f"{HERE / 'planted_bugs.py'}:offset_cancellation"
    main(["nightly", "--adapters", "torch", "--impl", impl, "--pair", f"torch,impl:{impl}", "--out", str(tmp_path),
          "--name", "p", *SMALL])
    results, findings = load_run(tmp_path / "p")
    pair = f"torch~impl:{impl}"
    assert pair in set(results["adapter"])
    assert (findings["adapter"] == pair).any()


def test_nightly_judges_the_compiled_side_against_eager_whenever_both_run(tmp_path, torch):
    main(["nightly", "--adapters", "torch,torch-compile", "--out", str(tmp_path), "--name", "p", *SMALL[:2],
          "--max-examples", "20", "--dtypes", "float32", "--covering", "0", *SMALL[4:]])  # few graphs to compile
    results, _ = load_run(tmp_path / "p")
    assert (results["adapter"] == "torch~torch-compile").sum() > 0
    assert json.loads((tmp_path / "p" / "config.json").read_text())["pairs"] == [["torch", "torch-compile"]]


def test_a_spent_compile_budget_skips_the_compiled_side_and_its_pair_with_the_reason(tmp_path, torch, monkeypatch):
    monkeypatch.setenv("CE_TORCH_COMPILE_BACKEND", "aot_eager")
    assert main(["nightly", "--adapters", "torch,torch-compile", "--out", str(tmp_path), "--name", "p", *SMALL[:2],
                 "--max-examples", "10", "--dtypes", "float32", "--covering", "0", "--compile-budget", "0",
                 *SMALL[4:]]) in (0, 1)
    results, findings = load_run(tmp_path / "p")
    compiled = results[results["adapter"].isin(["torch-compile", "torch~torch-compile"])]
    assert len(compiled) > 0 and (compiled["status"] == "skipped").all()
    assert compiled["skip_reason"].str.contains("compile budget").all()
    assert not findings["adapter"].isin(["torch-compile", "torch~torch-compile"]).any()
    assert "CE_TORCH_COMPILE_BUDGET" not in os.environ  # the option holds for its command only


def test_a_linear_pair_judges_the_heads_gradients_too(torch):
    """Pairwise parity of a linear cross-entropy case covers the weight and bias gradients, each
    against the first side's, with the reference's magnitudes and error scales."""
    from ce_conformance import reference
    from ce_conformance.compare import compare_pair
    from ce_conformance.linear_cross_entropy import linear_cross_entropy_case

    case = linear_cross_entropy_case([[1.0, 0.5], [-0.5, 2.0]], [[1.0, 0.0], [0.5, 0.5], [0.0, -1.0]], [0, 2],
                                     linear_bias=[0.0, 0.25, -0.25])
    eager = adapters.load_adapter("torch-linear")
    first = eager.run(case)
    second = eager.run(case)
    ref = reference.evaluate(case)
    assert compare_pair(case, first, second, ref, eager.capabilities).verdicts == []
    second.parameter_gradients["linear_bias"] = second.parameter_gradients["linear_bias"] * np.float32(1.01)
    checks = [v.check for v in compare_pair(case, first, second, ref, eager.capabilities).verdicts]
    assert checks == ["grad_linear_bias_value"]


def test_bad_pair_and_shard_are_configuration_errors(tmp_path, capsys):
    assert main(["nightly", "--adapters", "numpy", "--pair", "numpy,jax", "--out", str(tmp_path)]) == 2
    assert main(["nightly", "--adapters", "numpy", "--shard", "3/2", "--out", str(tmp_path)]) == 2
    assert "--shard" in capsys.readouterr().err


def test_report_rebuilds_a_partial_run_directory(tmp_path, torch):
    _nightly(tmp_path, "r")
    run = tmp_path / "r"
    for name in ("results.parquet", "findings.parquet", "report.html", "summary.md"):
        (run / name).unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").exists() and (run / "findings.parquet").exists()


def test_report_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
