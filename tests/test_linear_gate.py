"""The linear cross-entropy family in runs: its strategy and covering cases, ``--family`` in
fuzz, gate and replay, and the planted fused-kernel bugs failing the default gate."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from ce_conformance import Case
from ce_conformance.case import FAMILIES
from ce_conformance.cli import main
from ce_conformance.covering import classify, covering_rows, feasible_tuples
from ce_conformance.errors import Rule, classify_error
from ce_conformance.linear_cross_entropy import INAPPLICABLE_LEVELS
from ce_conformance.linear_strategies import (REQUIRABLE, covering_case, invalid_linear_cases,
                                              linear_cross_entropy_cases)
from ce_conformance.strategies import SizeLimits

HERE = Path(__file__).parent
PLANTED = HERE / "planted_linear.py"
SMALL = SizeLimits(max_elements=1 << 12, vocab_percent=0)
DRAWN = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))


# -- where the cases come from -------------------------------------------------------------------
@DRAWN
@given(linear_cross_entropy_cases(limits=SMALL, invalid_percent=40))
def test_drawn_cases_survive_their_json_and_mean_what_they_say(case):
    # loading re-checks a case against torch's rules: a valid case passes them, an invalid one
    # breaks exactly the rule it names
    assert Case.from_json(case.to_json()) == case


@DRAWN
@given(invalid_linear_cases())
def test_invalid_cases_break_the_rule_they_name(case):
    from ce_conformance import reference
    from ce_conformance.errors import InvalidInputError

    with pytest.raises(InvalidInputError) as raised:
        reference.evaluate(case)
    assert raised.value.rule == case.expected_error


@pytest.mark.parametrize("feature", sorted(REQUIRABLE - {"invalid_input"}))
def test_a_required_feature_is_in_every_draw_and_an_excluded_one_in_none(feature):
    @settings(DRAWN, max_examples=15)
    @given(linear_cross_entropy_cases(limits=SizeLimits(max_elements=1 << 12, vocab_percent=0, max_vocab_rows=1),
                                      require={feature}),
           linear_cross_entropy_cases(limits=SMALL, exclude={feature}, invalid_percent=30))
    def check(required, excluded):
        assert feature in required.features
        assert feature not in excluded.features

    check()


@settings(DRAWN, max_examples=30)
@given(linear_cross_entropy_cases(limits=SMALL, plain=True))
def test_a_plain_draw_exercises_no_optional_feature(case):
    assert case.features <= {"single_class"}
    assert case.dtype in ("float32", "float64") and case.input.ndim == 2


def test_cases_cannot_require_what_the_family_does_not_have():
    with pytest.raises(ValueError, match="non_contiguous"):
        linear_cross_entropy_cases(require={"non_contiguous"}).example()


def test_every_covering_row_lifts_to_a_projection_with_the_same_options():
    """The covering phase's promise holds for the family: the lifted case exercises its row."""
    rows = covering_rows(2, seed=3, excluded=INAPPLICABLE_LEVELS)
    assert rows
    for row in rows:
        case = covering_case(row, 3, max_elements=1 << 12, max_vocab_rows=2)
        assert case.family == "linear_cross_entropy" and classify(case) == row, row


def test_the_familys_inapplicable_combinations_leave_the_feasible_tuples():
    feasible = feasible_tuples(2, INAPPLICABLE_LEVELS)
    assert (("target_kind", "probability"), ("ignore_index", "negative")) not in feasible
    assert (("target_kind", "probability"), ("ignore_index", "default")) in feasible
    assert not any(("reduction", "legacy") in pair for pair in feasible)


def test_torchs_projection_messages_name_the_input_shape_rule():
    for message in ["K-dimensional loss defined by linear_weight shape (1, 1, 2) requires batched input, (N, 2)",
                    "expected equal input and linear_weight last dimensions (in_features), got 3 and 2, respectively",
                    "expected linear_bias shape (3,), got (4,)"]:
        assert classify_error("RuntimeError", message) is Rule.INPUT_SHAPE
    # cross-entropy's own weight message keeps its rule
    assert classify_error("RuntimeError", "weight tensor should be defined either for all 3 classes") is Rule.WEIGHT_SHAPE


# -- --family in the CLI ------------------------------------------------------------------------
FAST = ["--max-examples", "25", "--no-progress", "--covering", "0", "--no-curated", "--shrink-seconds", "20"]


def _gate(tmp_path, spec, *extra):
    return main(["gate", "--family", "linear_cross_entropy", "--impl", spec, "--out", str(tmp_path / "out"),
                 "--in-process", *FAST, *extra])


def _features():
    from tests import planted_linear

    return ",".join(sorted(planted_linear.SUPPORTED_FEATURES))


def test_the_gate_passes_our_correct_chunked_kernel(tmp_path, torch, capsys):
    code = _gate(tmp_path, f"{PLANTED}:chunked", "--features", _features(), "--max-examples", "120")
    out = capsys.readouterr().out
    assert code == 0, out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["family"] == "linear_cross_entropy"


@pytest.mark.parametrize("bug", ["dropped_last_chunk", "first_grad_output", "bias_grad_missing", "normaliser_twice",
                                 "grad_scaled_in_place", "softcap_after_lse", "z_loss_missing_from_gradient",
                                 "z_loss_unrequested", "logit_scale_not_in_gradient", "normalizer_not_in_gradient",
                                 "grad_weight_buffer_reused", "lse_output_uncapped", "z_loss_output_summed"])
def test_the_default_gate_fails_planted_fused_kernel_bugs(tmp_path, torch, capsys, bug):
    code = _gate(tmp_path, f"{PLANTED}:{bug}", "--features", _features(), "--max-examples", "200", "--covering", "2",
                 "--no-shrink")
    out = capsys.readouterr().out
    assert code == 1, out
    if bug == "grad_scaled_in_place":  # right on the first backward: only the second one shows it
        assert "saved_tensor_modified" in out and "grad_input_value" not in out, out
    if bug == "grad_weight_buffer_reused":  # right on a head shape's first call: adding calls up shows it
        assert "split_variant" in out, out


def test_the_gate_runs_torchs_own_linear_cross_entropy_and_saves_loadable_cases(tmp_path, torch, capsys):
    code = _gate(tmp_path, "torch.nn.functional:linear_cross_entropy", "--covering", "2", "--no-shrink")
    out = capsys.readouterr().out
    assert code in (0, 1), out  # torch 2.13 has real findings here (see the README); a run, not a refusal
    for path in (tmp_path / "out" / "cases").glob("*.json"):
        case = Case.load(path)
        assert case.family == "linear_cross_entropy"
        # replay infers the family from the case files
        assert main(["replay", str(path), "--impl", "torch.nn.functional:linear_cross_entropy"]) in (0, 1)
        assert "family" not in capsys.readouterr().err


def test_an_adapter_of_another_family_is_a_configuration_error(tmp_path, capsys):
    code = main(["fuzz", "--family", "linear_cross_entropy", "--adapters", "numpy", "--out", str(tmp_path), *FAST])
    assert code == 2
    assert "numpy (cross_entropy)" in capsys.readouterr().err


def test_an_unknown_family_is_a_configuration_error(tmp_path, capsys):
    code = main(["fuzz", "--family", "binary_cross_entropy", "--out", str(tmp_path), *FAST])
    assert code == 2
    assert "unknown loss family 'binary_cross_entropy'" in capsys.readouterr().err


def test_fuzz_runs_the_familys_built_ins_by_default(tmp_path, torch, capsys):
    code = main(["fuzz", "--family", "linear_cross_entropy", "--out", str(tmp_path), *FAST, "--max-examples", "10",
                 "--no-shrink"])
    assert code in (0, 1)
    config = json.loads((tmp_path / "config.json").read_text())
    assert [a["adapter"] for a in config["adapters"]] == ["torch-linear", "torch-linear-chunked"]
    assert {a["families"] for a in config["adapters"]} == {"linear_cross_entropy"}
    assert set(FAMILIES) >= {"cross_entropy", "linear_cross_entropy"}


def test_torch_compile_runs_the_familys_function(torch):
    from ce_conformance.adapters import load_adapter

    adapter = load_adapter("torch-linear-compile")
    assert adapter.family == "linear_cross_entropy"
    assert "F.linear_cross_entropy" in adapter.description
    assert adapter.capabilities.families == frozenset({"linear_cross_entropy"})


# -- the pytest plugin --------------------------------------------------------------------------
pytest_plugins = ["pytester"]


def test_the_plugin_gates_a_fused_kernel_by_family(pytester, torch):
    """``ce_check(fn, family=...)`` and ``--ce-family``: a feature test the family has no
    variant of (non-contiguous logits) skips, the others run against the family's reference."""
    import shutil

    shutil.copy(PLANTED, pytester.path / "planted_linear.py")
    pytester.makepyfile(test_fused="""
        from planted_linear import SUPPORTED_FEATURES, chunked, normaliser_twice

        def test_correct(ce_check):
            ce_check(chunked, family="linear_cross_entropy", features=sorted(SUPPORTED_FEATURES))

        def test_bug(ce_check):
            ce_check(normaliser_twice, family="linear_cross_entropy", features=sorted(SUPPORTED_FEATURES))
    """)
    result = pytester.runpytest_subprocess("--ce-max-examples", "60", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*normaliser_twice diverges from torch.nn.functional.linear_cross_entropy*",
                                 "*Case<*>(linear_cross_entropy:*"])
    suite = pytester.runpytest_subprocess("--ce-impl", "planted_linear.py:chunked", "--ce-family",
                                          "linear_cross_entropy", "--ce-features", _features(), "-rs",
                                          "-k", "basics or weights or non_contiguous", "--ce-max-examples", "30",
                                          "-p", "no:cacheprovider")
    suite.assert_outcomes(passed=2, skipped=1)
    suite.stdout.fnmatch_lines(["*linear_cross_entropy cases have no non_contiguous variant*"])


def test_a_torch_without_the_familys_function_makes_its_adapters_unavailable(torch):
    """torch < 2.13 has no F.linear_cross_entropy: its adapters skip with the reason, never fail."""
    from ce_conformance.adapters.torch_adapter import TorchAdapter

    adapter = TorchAdapter(family="linear_cross_entropy", needs=("torch.nn.functional.linear_cross_entropy_v9",))
    assert "has no torch.nn.functional.linear_cross_entropy_v9" in adapter.availability()
    assert TorchAdapter(family="linear_cross_entropy").availability() is None  # torch 2.13 here
    assert TorchAdapter(lambda *a, **k: None, family="linear_cross_entropy").needs == ()  # a user's kernel needs none


def test_a_saved_linear_case_gets_a_repro_script_with_the_familys_signature(tmp_path, torch):
    import subprocess
    import sys

    from ce_conformance.linear_cross_entropy import linear_cross_entropy_case
    from ce_conformance.repro import write_repro

    case = linear_cross_entropy_case([[1.0, 2.0], [0.5, -1.0]], [[0.5, -1.0], [2.0, 0.0], [1.0, 1.0]], [2, 0],
                                     linear_bias=[0.1, 0.2, 0.3], weight=[1.0, 2.0, 0.5], dtype="float64")
    script = write_repro(tmp_path / "r.py", case, adapter_name="torch-linear", check="loss_value", message="m",
                         case_path=tmp_path / "r.json")
    text = script.read_text()
    assert "fn = torch.nn.functional.linear_cross_entropy" in text
    assert "fn(input, linear_weight, target, linear_bias=linear_bias, weight=weight, " in text
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    got, expected = ran.stdout.splitlines()[:2]
    assert ran.returncode == 0 and got.startswith("got") and expected.startswith("expected")
    assert float(got.split("tensor(")[1].split(",")[0].rstrip(")")) == pytest.approx(
        float(expected.split()[1]), rel=1e-3)  # torch prints four digits
