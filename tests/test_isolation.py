"""Robustness: misbehaving implementations become findings; interrupts and bad input lose nothing."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ce_conformance.cli import main
from ce_conformance.findings import load_run

HERE = Path(__file__).parent
MISBEHAVING = HERE / "misbehaving.py"
QUICK = ["--no-progress", "--max-examples", "40", "--shrink-seconds", "10"]


def _gate(tmp_path, name, *extra):
    out = tmp_path / name
    code = main(["gate", "--impl", f"{MISBEHAVING}:{name}", "--out", str(out), *QUICK, *extra])
    results, findings = load_run(out)
    return code, results, findings


def test_abort_becomes_a_crash_finding_and_the_run_goes_on(tmp_path, torch):
    code, results, findings = _gate(tmp_path, "abort_on_weights")
    assert code == 1
    crashes = findings[findings["check"] == "crash"]
    assert len(crashes) > 0 and crashes["features"].str.contains("weights").all()
    assert Path(crashes["case_path"].iloc[0]).exists()
    assert (results["status"] == "passed").sum() > 10  # the other checks still ran
    # the worker's output went to the run's log, and the crash names what it last said
    assert crashes["message"].str.contains("its last output: Fatal Python error: Aborted").all()
    log = (tmp_path / "abort_on_weights" / "workers").glob("*.log")
    assert any("Fatal Python error: Aborted" in p.read_text() for p in log)


def test_a_worker_that_crashes_silently_is_not_blamed_for_earlier_output(tmp_path):
    from ce_conformance.isolation import _last_words

    log = tmp_path / "w.log"
    log.write_text("loaded the kernel\nFatal Python error: from an earlier crash\n")
    since = log.stat().st_size
    assert _last_words(str(log), since) == ""
    with log.open("a") as handle:
        handle.write("Fatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent call first):\n  File x\n")
    assert _last_words(str(log), since) == "Fatal Python error: Segmentation fault"


def test_hang_becomes_a_timeout_finding(tmp_path, torch):
    start = time.monotonic()
    code, results, findings = _gate(tmp_path, "hang_on_kdim", "--timeout", "1")
    assert code == 1 and set(findings["check"]) == {"timeout"}
    assert findings["layout"].str.startswith("(N,C,d").all()
    assert time.monotonic() - start < 120


def test_a_kernel_hanging_on_one_feature_is_quarantined_after_two_timeouts(tmp_path, torch):
    """Every smoothing case hangs: the run pays for a few timeouts, then skips smoothing cases
    (recorded, with the reason) and judges everything else. Wall time against a torch gate is
    measured by benchmarks/hang.py, not asserted here."""
    code, results, findings = _gate(tmp_path, "hang_on_smoothing", "--timeout", "2")
    assert code == 1 and set(findings["check"]) == {"timeout"}
    assert findings["features"].str.contains("label_smoothing").all()
    assert 2 <= len(findings) <= 6  # QUARANTINE_AFTER, then a few broadenings at most
    assert all(Path(p).exists() for p in findings["case_path"])  # a saved (or curated) case per finding
    quarantined = results[results["skip_reason"].fillna("").str.startswith("quarantined: timeout on")]
    assert len(quarantined) > 20 and quarantined["features"].str.contains("label_smoothing").all()
    assert (results["status"] == "passed").sum() > 50  # the rest was judged
    summary = (tmp_path / "hang_on_smoothing" / "summary.md").read_text()
    assert "quarantined" in summary and "timeout on label_smoothing" in summary


def test_max_time_bounds_the_run_and_writes_every_table(tmp_path, capsys, torch):
    out = tmp_path / "bounded"
    code = main(["gate", "--impl", "torch.nn.functional:cross_entropy", "--out", str(out), "--no-progress",
                 "--max-examples", "100000", "--max-time", "4"])
    text = capsys.readouterr().out
    assert code == 0 and "stopped at --max-time 4 s after" in text
    results, _ = load_run(out)
    assert 0 < len(results) and (results["phase"] == "explore").sum() < 100000
    assert "STOPPED at --max-time" in (out / "summary.md").read_text()
    assert (out / "coverage.json").exists() and (out / "findings.parquet").exists()


def test_memory_blowup_is_bounded_by_the_worker_limit(tmp_path, torch):
    code, _, findings = _gate(tmp_path, "memory_blowup_unbatched", "--worker-memory-mb", "4096")
    assert code == 1
    assert set(findings["check"]) <= {"error", "crash"} and len(findings) > 0
    assert findings["features"].str.contains("unbatched").all()


def test_raising_implementation_gives_error_findings(tmp_path, torch):
    code, _, findings = _gate(tmp_path, "raise_on_smoothing")
    assert code == 1 and set(findings["check"]) == {"error"}
    assert findings["message"].str.contains("smoothing not implemented").all()


def test_in_process_is_an_explicit_opt_in(tmp_path, torch):
    code, _, findings = _gate(tmp_path, "raise_on_smoothing", "--in-process")
    assert code == 1 and set(findings["check"]) == {"error"}


@pytest.mark.parametrize("signum,expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_keeps_the_findings(tmp_path, signum, expected, torch):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "ce_conformance", "fuzz", "--impl",
                                f"{MISBEHAVING}:slow_and_wrong", "--out", str(out), "--no-progress",
                                "--max-examples", "5000", "--in-process"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    findings_file = out / "findings.jsonl"
    while time.monotonic() < deadline:
        if findings_file.exists() and len(findings_file.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    process.send_signal(signum)
    assert process.wait(timeout=60) == expected
    findings = pd.read_parquet(out / "findings.parquet")
    assert len(findings) >= 5
    _, reloaded = load_run(out)
    assert len(reloaded) == len(findings)


def test_same_seed_gives_the_identical_findings_table(tmp_path, torch):
    tables = []
    for name in ("a", "b"):
        out = tmp_path / name
        main(["gate", "--impl", f"{HERE / 'planted_bugs.py'}:smoothing_counts_ignored_rows", "--out", str(out),
              "--no-progress", "--max-examples", "80", "--seed", "3"])
        findings = load_run(out)[1].drop(columns=["case_path"])
        tables.append(findings)
    assert len(tables[0]) > 0
    pd.testing.assert_frame_equal(tables[0], tables[1])


@pytest.mark.parametrize("content,message", [
    (b'{"schema": "ce-conformance/case", "schema_version": 1, "family": "cross_entropy", "tens', "not valid JSON"),
    (b"\x80\x05\x95\x00", "pickle"),
    (b'{"schema": "ce-conformance/case", "schema_version": 1, "family": "cross_entropy", '
     b'"tensors": {}, "options": {}, "__class__": "os.system"}', "unexpected field"),
    (b"", "not valid JSON"),
])
def test_hostile_case_files_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "case.json"
    path.write_bytes(content)
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_huge_case_files_are_refused(tmp_path, capsys, monkeypatch):
    import ce_conformance.case_codec as case_module

    monkeypatch.setattr(case_module, "MAX_CASE_FILE_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text("{" + " " * 2000 + "}")
    assert main(["replay", str(path)]) == 2
    assert "over the 1000-byte limit" in capsys.readouterr().err


def test_hostile_baseline_exits_2_before_running(tmp_path, capsys):
    path = tmp_path / "b.toml"
    path.write_bytes(b"schema_version = 1\n[[divergence]]\nreason = 'x'\n__import__ = 'os'\n")
    assert main(["gate", "--impl", "torch.nn.functional:cross_entropy", "--baseline", str(path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "__import__" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_worker_takes_the_parents_ce_settings_as_they_are_when_it_starts(monkeypatch):
    # a forkserver child inherits the server's environment, which may be an earlier command's:
    # --compile-budget (CE_TORCH_COMPILE_BUDGET) must reach the worker of this command
    import multiprocessing
    import os
    import signal
    import warnings

    from ce_conformance.isolation import _our_settings, _worker_main

    monkeypatch.setenv("CE_TORCH_COMPILE_BUDGET", "7")
    settings = _our_settings()
    assert settings["CE_TORCH_COMPILE_BUDGET"] == "7"
    monkeypatch.setenv("CE_TORCH_COMPILE_BUDGET", "from an earlier command")
    monkeypatch.setenv("CE_STALE_SETTING", "x")
    parent, child = multiprocessing.Pipe()
    parent.send(None)  # stop right after start-up
    handler = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            _worker_main(child, ("builtin", "numpy"), None, None, settings)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert parent.recv()[0] == "ready"
    assert os.environ["CE_TORCH_COMPILE_BUDGET"] == "7" and "CE_STALE_SETTING" not in os.environ
