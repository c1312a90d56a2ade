"""What a run covers and what fails it: --features / --dtypes / --checks, replay --oracle, and
saved cases that describe themselves."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from ce_conformance.case import FEATURES, Case, all_features, extension_features
from ce_conformance.cli import main
from ce_conformance.errors import ConfigurationError
from ce_conformance.selection import (CHECK_FAMILY_NAMES, DEFAULT_EXCLUDED_FEATURES, parse_checks, parse_dtypes,
                                      parse_features)

HERE = Path(__file__).parent
PLANTED = HERE / "planted_bugs.py"
FAST = ["--max-examples", "40", "--no-shrink", "--no-progress", "--covering", "0"]


# -- the grammar ----------------------------------------------------------------------------------
def test_feature_lists_add_subtract_and_start_from_default():
    torch_features = all_features() - extension_features()  # every family's: a linear kernel may claim linear_bias
    default = torch_features - DEFAULT_EXCLUDED_FEATURES
    assert parse_features(None) == parse_features("default") == default
    assert parse_features("default,-invalid_input,-weights") == default - {"invalid_input", "weights"}
    assert parse_features("-weights") == default - {"weights"}  # a leading subtraction starts from default
    assert parse_features("all,-uint8_target") == torch_features - {"uint8_target"}
    assert parse_features("weights, k_dim") == {"weights", "k_dim"}
    # a library's extensions: by name only (a function with torch's signature has no such keyword)
    assert extension_features() == {"logit_scale", "softcap", "z_loss", "normalizer", "return_lse", "return_z_loss",
                                    "smoothing_dialect"}
    assert parse_features("default,softcap") == default | {"softcap"}


@pytest.mark.parametrize("parse,text,option", [
    (parse_features, "weights,wieghts", "--features"),
    (parse_dtypes, "float32,fp8", "--dtypes"),
    (parse_checks, "values,numerics", "--checks"),
])
def test_unknown_names_are_refused_with_the_valid_ones_listed(parse, text, option):
    with pytest.raises(ConfigurationError) as refused:
        parse(text)
    message = str(refused.value)
    bad = text.split(",")[1]
    assert message.startswith(option) and repr(bad) in message
    universe = {"--features": FEATURES, "--dtypes": ("float16", "bfloat16", "float32", "float64"),
                "--checks": CHECK_FAMILY_NAMES}[option]
    assert all(name in message for name in universe)


def test_a_selection_of_nothing_is_refused():
    with pytest.raises(ConfigurationError, match="selects nothing"):
        parse_dtypes("all,-float16,-bfloat16,-float32,-float64")


def test_dtypes_come_back_in_the_suites_order():
    assert parse_dtypes("float64,bfloat16") == ("bfloat16", "float64")
    assert parse_dtypes(None) is None and parse_dtypes("") is None
    assert parse_checks(None) == frozenset(CHECK_FAMILY_NAMES) - {"determinism"}


def test_cli_refuses_an_unknown_dtype_before_running(capsys):
    assert main(["gate", "--impl", "torch.nn.functional:cross_entropy", "--dtypes", "float8"]) == 2
    err = capsys.readouterr().err
    assert "--dtypes" in err and "bfloat16" in err and "Traceback" not in err


# -- the options at work ------------------------------------------------------------------------
def test_dtypes_and_feature_subtraction_restrict_every_phase(tmp_path, capsys, torch):
    """A Triton-style kernel without float64/float16 and without input validation: curated,
    covering and drawn cases all stay inside what it claims."""
    out = tmp_path / "run"
    code = main(["gate", "--impl", "torch.nn.functional:cross_entropy", "--dtypes", "float32,bfloat16",
                 "--features", "default,-invalid_input", "--out", str(out), "--max-examples", "40", "--no-shrink",
                 "--no-progress", "--covering", "2"])
    assert code == 0, capsys.readouterr().out
    results = pd.read_parquet(out / "results.parquet")
    ran = results[results["status"] != "skipped"]
    assert set(ran["phase"]) >= {"curated", "covering", "explore"}
    assert set(ran["dtype"]) == {"float32", "bfloat16"}
    assert not ran["features"].str.contains("invalid_input").any()
    coverage = json.loads((out / "coverage.json").read_text())
    assert {"dtype=float16", "dtype=float64"} <= set(coverage["not_applicable"])


def test_checks_choose_what_fails_the_gate_and_still_report_the_rest(tmp_path, capsys, torch):
    bug = f"{PLANTED}:out_of_range_clamped"  # silently accepts out-of-range targets: 'errors' only
    assert main(["gate", "--impl", bug, "--out", str(tmp_path / "all"), *FAST]) == 1
    assert "missing_error" in capsys.readouterr().out
    junit = tmp_path / "junit.xml"
    code = main(["gate", "--impl", bug, "--checks", "all,-errors", "--out", str(tmp_path / "numerics"), *FAST,
                 "--junit", str(junit)])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("PASS")
    assert "reported, not gating (--checks contract,values,gradients,mutation,split,determinism): missing_error x" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    errors = next(case for case in suite.iter("testcase") if case.get("name") == "errors")
    assert errors.find("failure") is None and "not gating" in errors.find("skipped").get("message")
    assert suite.get("failures") == "0" and suite.get("skipped") == "1"


def test_replay_judges_with_the_oracle_it_is_given(tmp_path, capsys, torch, monkeypatch):
    """A kernel exactly as (in)accurate as the oracle passes with --oracle torch and fails with
    the float64 reference; the oracle's own result is what widens the budget."""
    import ce_conformance.adapters as adapters

    impl = tmp_path / "sloppy.py"
    impl.write_text("import torch.nn.functional as F\n\n"
                    "def cross_entropy(input, target, **kw):\n"
                    "    return F.cross_entropy(input, target, **kw) * (1 + 2 ** -8)\n")
    case = Case.cross_entropy([[1.0, 2.0, 0.5], [0.25, -1.0, 3.0]], [1, 2], dtype="float32").save(tmp_path / "c.json")
    real_load = adapters.load_adapter
    monkeypatch.setattr(adapters, "load_adapter", lambda name: adapters.user_adapter(
        f"{impl}:cross_entropy", name="sloppy-oracle") if name == "torch" else real_load(name))
    argv = ["replay", str(case), "--impl", f"{impl}:cross_entropy"]
    assert main(argv) == 1 and "loss_value" in capsys.readouterr().out
    assert main([*argv, "--oracle", "torch"]) == 0
    assert "passed" in capsys.readouterr().out


def test_saved_cases_and_repro_headers_describe_the_shrunk_case(tmp_path, capsys, torch):
    """The message in a shrunk case's note and repro header is the verdict on that case, not on
    the first (bigger) failure."""
    from ce_conformance.adapters import user_adapter
    from ce_conformance.compare import compare
    from ce_conformance.reference import evaluate

    out = tmp_path / "run"
    spec = f"{PLANTED}:mean_over_n"
    assert main(["gate", "--impl", spec, "--out", str(out), "--max-examples", "60", "--no-progress",
                 "--covering", "0", "--no-curated", "--shrink-seconds", "20"]) == 1
    signatures = json.loads((out / "signatures.json").read_text())
    shrunk = [s for s in signatures if s["shrunk_case"]]
    assert shrunk, signatures
    adapter = user_adapter(spec)
    for info in shrunk:
        path = Path(info["shrunk_case"])
        case = Case.load(path)
        verdict = next(v for v in compare(case, adapter.timed_run(case), evaluate(case), adapter.capabilities).verdicts
                       if v.check == info["check"])
        assert info["shrunk_message"] == verdict.message
        assert case.note == f"{info['adapter']}: {info['check']}: {verdict.message}"
        header = path.with_suffix(".py").read_text().splitlines()
        assert header[0].startswith(f"# ce-conformance repro for Case<{case.id}>")
        assert header[1] == f"# {verdict.message[:300]}"
    assert any(s["shrunk_message"] != s["message"] for s in shrunk)  # the first failure said something else
