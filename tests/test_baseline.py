"""Baselines: matching, stale entries, round trip of --update-baseline, refusal of bad files."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from ce_conformance import CaseFormatError
from ce_conformance.baseline import Baseline, Divergence, baseline_from_findings, shipped_baselines
from ce_conformance.cli import main

HERE = Path(__file__).parent
FINDINGS = pd.DataFrame([
    {"adapter": "impl:x", "check": "loss_dtype", "dtype": "bfloat16", "features": "low_precision", "message": "dt"},
    {"adapter": "impl:x", "check": "error", "dtype": "float32", "features": "label_smoothing,uint8_target,weights",
     "message": "gather(): Expected dtype int32/int64 for index"},
    {"adapter": "impl:x", "check": "loss_value", "dtype": "float32", "features": "weights", "message": "off"},
])


def test_entries_match_on_attributes_and_report_stale():
    baseline = Baseline([
        Divergence(reason="fp32 out", check="loss_dtype", features=("low_precision",)),
        Divergence(reason="torch bug", check="error", features=("uint8_target", "weights"), message=r"gather\("),
        Divergence(reason="never seen", check="mutation"),
    ])
    applied = baseline.apply(FINDINGS)
    assert applied.new["check"].tolist() == ["loss_value"]
    assert len(applied.covered) == 2
    assert [e.reason for e in applied.stale] == ["never seen"]
    assert "stale entry" in applied.describe()


def test_absent_features_and_globs():
    entry = Divergence(reason="r", adapter="impl:*", check="loss_*", absent_features=("weights",))
    assert entry.matches(FINDINGS.iloc[0].to_dict())
    assert not entry.matches(FINDINGS.iloc[2].to_dict())


def test_generated_baseline_round_trips(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text(baseline_from_findings(FINDINGS, implementation="x"))
    baseline = Baseline.load(path)
    assert baseline.apply(FINDINGS).new.empty and len(baseline.entries) == 3


@pytest.mark.parametrize("text,field", [
    ("schema_version = 2\n", "schema_version"),
    ("schema_version = 1\n[[divergence]]\ncheck = 'x'\n", "divergence[0].reason"),
    ("schema_version = 1\n[[divergence]]\nreason = 'r'\ncommand = 'rm -rf /'\n", "divergence[0].command"),
    ("schema_version = 1\n[[divergence]]\nreason = 'r'\nmessage = '('\n", "divergence[0].message"),
    ("schema_version = [\n", None),
])
def test_bad_baselines_are_refused_with_the_field(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CaseFormatError) as raised:
        Baseline.load(path)
    assert raised.value.field == field


def test_shipped_torch_baseline_gates_torch_strictly(tmp_path, capsys, torch):
    assert "torch-2.13-cpu" in shipped_baselines()
    args = ["gate", "--impl", "torch.nn.functional:cross_entropy", "--strict", "--no-shrink", "--no-progress",
            "--max-examples", "60"]
    assert main([*args, "--out", str(tmp_path / "a"), "--baseline", "torch-2.13-cpu"]) == 0
    assert "known finding(s) covered, 0 new" in capsys.readouterr().out
    shipped = Path(Baseline.load("torch-2.13-cpu").path).read_text()
    reduced = tmp_path / "reduced.toml"
    reduced.write_text(shipped[:shipped.index('[[divergence]]\ncheck = "error"')])
    assert main([*args, "--out", str(tmp_path / "b"), "--baseline", str(reduced)]) == 1
    assert "gather()" in capsys.readouterr().out


def test_update_baseline_then_gate_passes(tmp_path, capsys, torch):
    impl = f"{HERE / 'planted_bugs.py'}:fp32_output"
    common = ["gate", "--impl", impl, "--no-shrink", "--no-progress", "--max-examples", "40"]
    assert main([*common, "--out", str(tmp_path / "a"), "--update-baseline", str(tmp_path / "b.toml")]) == 0
    assert "loss_dtype" in (tmp_path / "b.toml").read_text()
    assert main([*common, "--out", str(tmp_path / "c"), "--baseline", str(tmp_path / "b.toml")]) == 0
    # a stale entry fails only with --fail-on-stale
    (tmp_path / "b.toml").write_text((tmp_path / "b.toml").read_text()
                                     + '\n[[divergence]]\ncheck = "mutation"\nreason = "old"\n')
    assert main([*common, "--out", str(tmp_path / "d"), "--baseline", str(tmp_path / "b.toml")]) == 0
    assert main([*common, "--out", str(tmp_path / "e"), "--baseline", str(tmp_path / "b.toml"),
                 "--fail-on-stale"]) == 1


def test_junit_has_one_case_per_family_and_failures_carry_replays(tmp_path, torch):
    impl = f"{HERE / 'planted_bugs.py'}:mutates_input"
    junit = tmp_path / "gate.xml"
    assert main(["gate", "--impl", impl, "--no-progress", "--max-examples", "30", "--out", str(tmp_path / "o"),
                 "--junit", str(junit)]) == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"errors", "contract", "values", "gradients", "mutation", "split", "determinism", "coverage"}
    assert cases["coverage"].find("failure") is None and "triples" in cases["coverage"].find("system-out").text
    failure = cases["mutation"].find("failure")
    assert failure is not None and "ce-conformance replay" in failure.text
    assert cases["values"].find("failure") is None
    assert suite.get("failures") == "1"
