"""The pytest plugin, run for real with pytester: fixtures, options, ini, baselines, xdist."""

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
HERE = Path(__file__).parent
FAST = ["--ce-max-examples", "25", "-p", "no:cacheprovider"]


@pytest.fixture
def project(pytester):
    shutil.copy(HERE / "planted_bugs.py", pytester.path / "planted_bugs.py")
    return pytester


def test_options_have_their_own_help_group(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*cross-entropy conformance (ce-conformance)*", "*--ce-impl=CE_IMPL*",
                                 "*ce_profile (string)*"])


def test_ce_check_fails_a_planted_bug_with_the_shrunk_case_and_passes_torch(project, torch):
    project.makepyfile(test_x="""
        import torch.nn.functional as F
        from planted_bugs import all_ignored_returns_zero

        def test_bug(ce_check):
            ce_check(all_ignored_returns_zero)

        def test_torch(ce_check):
            ce_check(F.cross_entropy, dtypes=["float32"], features=["weights", "label_smoothing"])
    """)
    result = project.runpytest_subprocess(*FAST)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*all_ignored_returns_zero diverges from torch.nn.functional.cross_entropy*",
                                 "*loss_nonfinite*", "*minimal case(s):*", "*Case<*>(cross_entropy:*",
                                 "*ce-conformance replay*"])


def test_ce_impl_runs_one_test_per_feature_family(project, torch):
    result = project.runpytest_subprocess("--ce-impl", "planted_bugs.py:mean_over_n", "-k", "weights or basics or k_dim",
                               *FAST)
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(["*FAILED*test_feature_family[[]weights[]]*"])


def test_ce_impl_passes_torch(project, torch):
    result = project.runpytest_subprocess("--ce-impl", "torch.nn.functional:cross_entropy", "-k",
                               "basics or probability or invalid", *FAST)
    result.assert_outcomes(passed=3)


def test_ini_options_work(project, torch):
    project.makeini("[pytest]\nce_impl = planted_bugs.py:fp32_output\nce_max_examples = 20\nce_profile = dev\n")
    result = project.runpytest_subprocess("-k", "low_precision or basics", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*loss_dtype*loss dtype float32, expected bfloat16*",
                                 "FAILED *test_feature_family[[]low_precision[]]*"])


def test_checks_and_dtypes_choose_what_fails_and_what_is_drawn(project, torch):
    """fp32_output breaks only the contract family: with ce_checks=values,gradients it passes
    with a ConformanceReported warning; ce_dtypes=float32 draws no half case to break it on."""
    project.makepyfile(test_z="""
        import pandas as pd
        from planted_bugs import fp32_output

        def test_numerics_only(ce_check):
            result = ce_check(fp32_output, checks="values,gradients")
            assert result.passed and set(result.reported["check"]) == {"loss_dtype"}

        def test_fp32_only(ce_check, ce_session):
            result = ce_check(fp32_output)
            ran = pd.read_parquet(result.summary.out_dir / "results.parquet")
            assert set(ran.loc[ran["status"] != "skipped", "dtype"]) <= {"float32", "int64"}
            assert result.passed
    """)
    project.makeini("[pytest]\nce_dtypes = float32\n")
    result = project.runpytest_subprocess("-k", "numerics_only", *FAST, "--ce-dtypes", "bfloat16,float16")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ConformanceReported*fp32_output: reported, not gating*loss_dtype x*"])
    result = project.runpytest_subprocess("-k", "fp32_only", *FAST)
    result.assert_outcomes(passed=1)


def test_baseline_covers_known_divergences(project, torch):
    project.makefile(".toml", known="""
        schema_version = 1
        [[divergence]]
        check = "loss_dtype"
        reason = "our kernel returns fp32 losses for half inputs on purpose"
    """)
    result = project.runpytest_subprocess("--ce-impl", "planted_bugs.py:fp32_output", "--ce-baseline", "known.toml",
                               "-k", "low_precision", *FAST)
    result.assert_outcomes(passed=1)


def test_outputs_go_to_the_configured_directory(project, torch):
    project.makepyfile(test_y="""
        from planted_bugs import wrong_none_shape
        def test_bug(ce_check):
            ce_check(wrong_none_shape)
    """)
    out = project.path / "ce-results"
    project.runpytest_subprocess("--ce-out", str(out), *FAST)
    assert list(out.rglob("findings.parquet")) and list(out.rglob("cases/*.json"))


def _outcomes(junit: Path) -> dict[str, str]:
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        state = "failed" if case.find("failure") is not None else "passed"
        outcomes[case.get("name")] = state
    return outcomes


def test_xdist_gives_the_same_results(project, torch):
    pytest.importorskip("xdist")
    args = ["--ce-impl", "planted_bugs.py:smoothing_counts_ignored_rows", "-k",
            "weights or ignore_index or k_dim or label_smoothing", *FAST]
    serial = project.runpytest_subprocess(*args, f"--junitxml={project.path / 'serial.xml'}")
    parallel = project.runpytest_subprocess(*args, "-n", "2", f"--junitxml={project.path / 'parallel.xml'}")
    assert _outcomes(project.path / "serial.xml") == _outcomes(project.path / "parallel.xml")
    assert "failed" in _outcomes(project.path / "serial.xml").values()
    assert serial.ret == parallel.ret == 1
