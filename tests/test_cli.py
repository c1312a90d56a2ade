"""The command line, through main(): exit codes, outputs and messages."""

from pathlib import Path

import pandas as pd
import pytest

from ce_conformance.baseline import Baseline
from ce_conformance.cli import main

HERE = Path(__file__).parent
FAST = ["--max-examples", "40", "--no-shrink", "--no-progress", "--covering", "0"]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and "ce-conformance" in capsys.readouterr().out
    assert main([]) == 0


def test_gate_passes_torch_and_fails_a_planted_bug(tmp_path, capsys, torch):
    assert main(["gate", "--impl", "torch.nn.functional:cross_entropy", "--out", str(tmp_path / "ok"), *FAST]) == 0
    assert "PASS" in capsys.readouterr().out
    code = main(["gate", "--impl", f"{HERE / 'planted_bugs.py'}:fp32_output", "--out", str(tmp_path / "bad"), *FAST,
                 "--markdown", str(tmp_path / "summary.md")])
    out = capsys.readouterr().out
    assert code == 1 and "loss_dtype" in out and "ce-conformance replay" in out
    assert "loss_dtype" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["gate", "--impl", "not_a_module_xyz:f"], "ModuleNotFoundError"),
    (["gate", "--impl", "no-colon"], "expected 'module.path:function'"),
    (["gate"], "gate needs --impl"),
    (["fuzz", "--adapters", "nope"], "unknown adapter 'nope'"),
    (["replay", "missing.json"], "no such case file"),
])
def test_configuration_errors_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["fuzz", "--profile", "weekly"])
    assert exited.value.code == 2


def test_fuzz_writes_tables(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fuzz", "--adapters", "numpy,torch", "--out", str(out), "--no-curated", *FAST]) in (0, 1)
    assert "Pass rate" in capsys.readouterr().out
    findings = pd.read_parquet(out / "findings.parquet")
    results = pd.read_parquet(out / "results.parquet")
    assert set(results["adapter"]) == {"numpy", "torch"}
    assert Baseline.load("torch-2.13-cpu").apply(findings).new.empty  # only torch's known divergences
    for name in ("summary.md", "results.csv", "findings.csv", "support_matrix.csv", "config.json"):
        assert (out / name).exists()


def test_replay_refuses_a_pickle_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "evil.json"
    bad.write_bytes(b"\x80\x04\x95cos\nsystem\n.")
    assert main(["replay", str(bad)]) == 2
    assert "pickle" in capsys.readouterr().err


def test_replay_curated_cases(capsys, torch):
    curated = HERE.parent / "cases" / "curated"
    assert main(["replay", str(curated), "--adapters", "numpy"]) == 0
    assert "vocab_bf16_mean.json" in capsys.readouterr().out
    # torch 2.13 fails exactly one curated case: its uint8 + weight + smoothing crash
    assert main(["replay", str(curated), "--adapters", "torch"]) == 1
    failing = [line for line in capsys.readouterr().out.splitlines() if " error " in line]
    assert len(failing) == 1 and "uint8_weights_smoothing.json" in failing[0]


def test_adapters_lists_capabilities(capsys):
    assert main(["adapters"]) == 0
    out = capsys.readouterr().out
    assert "optax" in out and "weights" in out and "torch-cuda" in out


def test_torch_oracle_mode(tmp_path, torch):
    common = ["gate", "--oracle", "torch", "--no-progress", "--max-examples", "40", "--no-shrink"]
    assert main([*common, "--impl", "torch.nn.functional:cross_entropy", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--impl", f"{HERE / 'planted_bugs.py'}:offset_cancellation",
                 "--out", str(tmp_path / "b")]) == 1


def test_compile_budget_is_checked_and_the_nightly_profile_has_one(monkeypatch, tmp_path):
    import argparse
    import os

    from ce_conformance.cli import NIGHTLY_COMPILE_BUDGET, _compile_budget, main

    monkeypatch.delenv("CE_TORCH_COMPILE_BUDGET", raising=False)
    assert main(["fuzz", "--adapters", "numpy", "--compile-budget", "soon", "--out", str(tmp_path)]) == 2
    assert main(["fuzz", "--adapters", "numpy", "--compile-budget", "-1", "--out", str(tmp_path)]) == 2
    with _compile_budget(argparse.Namespace(profile="nightly", compile_budget=None)):
        assert float(os.environ["CE_TORCH_COMPILE_BUDGET"]) == NIGHTLY_COMPILE_BUDGET
    with _compile_budget(argparse.Namespace(profile="nightly", compile_budget="none")):
        assert os.environ["CE_TORCH_COMPILE_BUDGET"] == "none"
    with _compile_budget(argparse.Namespace(profile="ci", compile_budget=None)):
        assert "CE_TORCH_COMPILE_BUDGET" not in os.environ
    assert "CE_TORCH_COMPILE_BUDGET" not in os.environ
