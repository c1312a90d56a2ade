"""Megatron-core's ``vocab_parallel_cross_entropy`` behind the ``megatron`` adapter, and the
``smoothing_dialect`` option that states Megatron's label smoothing in torch's terms.

The dialect's reference needs no Megatron; the adapter's tests run where megatron-core is
installed (the ``ecosystem`` extra, so in CI) and skip with the reason elsewhere."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from ce_conformance import reference
from ce_conformance.adapters import ECOSYSTEM_ADAPTERS, load_adapter
from ce_conformance.adapters.megatron_adapter import MEGATRON_CAPABILITIES, megatron_cross_entropy
from ce_conformance.cli import main
from ce_conformance.compare import compare
from ce_conformance.cross_entropy import cross_entropy_case
from ce_conformance.ecosystem import explain, recorded_baselines
from ce_conformance.errors import CaseFormatError
from ce_conformance.findings import load_run

needs_megatron = pytest.mark.skipif(importlib.util.find_spec("megatron") is None
                                    or importlib.util.find_spec("torch") is None,
                                    reason="megatron-core is not installed (pip install 'ce-conformance[megatron]')")
RNG = np.random.default_rng(11)
X = RNG.standard_normal((6, 9)) * 2
T = [0, 8, 3, 3, 1, 5]


def test_megatrons_alpha_is_torchs_eps_times_c_over_c_minus_one(torch):
    """Megatron spreads alpha over the C - 1 other classes: torch's smoothing with eps = alpha C / (C - 1)."""
    case = cross_entropy_case(X, T, dtype="float64", label_smoothing=0.3, smoothing_dialect="megatron",
                              reduction="none")
    x = torch.tensor(X, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(x, torch.tensor(T), label_smoothing=0.3 * 9 / 8, reduction="none")
    expected.sum().backward()
    result = reference.evaluate(case)
    np.testing.assert_allclose(result.loss, expected.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(result.grad_input, x.grad.numpy(), rtol=1e-12, atol=1e-15)
    # written out as Megatron's source does it: (1 - s) nll - s mean(log p), s = alpha C / (C - 1)
    logp = torch.log_softmax(torch.tensor(X), dim=1)
    s = 0.3 * 9 / 8
    megatron = (1 - s) * -logp[range(6), T] - s * logp.mean(dim=1)
    np.testing.assert_allclose(result.loss, megatron.numpy(), rtol=1e-13)
    assert "smoothing_dialect" in case.features


@pytest.mark.parametrize("change,words", [(dict(label_smoothing=1.0), "label_smoothing < 1"),
                                          (dict(smoothing_dialect="nemo"), "expected one of megatron"),
                                          (dict(input=X[:, :1], target=[0] * 6), "C >= 2")])
def test_a_case_the_dialect_cannot_take_is_refused_when_built_and_when_read(change, words):
    arguments = {**dict(input=X, target=T, label_smoothing=0.2, smoothing_dialect="megatron"), **change}
    with pytest.raises(ValueError, match=words):
        cross_entropy_case(arguments.pop("input"), arguments.pop("target"), **arguments)
    good = cross_entropy_case(change.get("input", X), change.get("target", T), label_smoothing=0.2)
    bad = good.replace(options={"smoothing_dialect": change.get("smoothing_dialect", "megatron"),
                                "label_smoothing": change.get("label_smoothing", 0.2)})
    with pytest.raises(CaseFormatError, match=words):
        reference.evaluate(type(bad).from_json(bad.to_json()))


def test_the_dialect_is_drawn_only_where_asked_and_the_adapter_claims_it():
    from hypothesis import given, settings

    from ce_conformance.strategies import cross_entropy_cases

    assert "smoothing_dialect" in cross_entropy_cases(require={"smoothing_dialect"}).example().features

    @settings(max_examples=50, database=None)
    @given(cross_entropy_cases())
    def never(case):
        assert "smoothing_dialect" not in case.features

    never()
    assert "smoothing_dialect" in MEGATRON_CAPABILITIES.features and "megatron" in ECOSYSTEM_ADAPTERS


def test_without_megatron_the_adapter_says_how_to_install_it(monkeypatch):
    adapter = load_adapter("megatron")
    adapter.package = "no_such_megatron_package"
    assert adapter.availability() == "megatron-core is not installed (pip install 'ce-conformance[megatron]')"


@needs_megatron
def test_megatron_conforms_in_float32_in_both_dialects_and_its_known_divergences_are_explained(tmp_path, capsys):
    code = main(["fuzz", "--adapters", "megatron", "--baseline", "megatron-core-0.16-cpu", "--max-examples", "80",
                 "--out", str(tmp_path), "--no-progress", "--no-shrink"])
    out = capsys.readouterr().out
    results, findings = load_run(tmp_path)
    explained = explain(findings, recorded_baselines(json.loads((tmp_path / "config.json").read_text())))
    assert code == 0 and explained["known"].ne("").all(), out
    ran = results[(results["adapter"] == "megatron") & (results["status"] != "skipped")]
    assert ran["features"].fillna("").str.contains("smoothing_dialect").sum() >= 3, out  # the covering rows
    clean = findings[(findings["dtype"] == "float32") & ~findings["check"].isin(
        ["mutation", "saved_tensor_modified", "loss_nonfinite"])]
    assert clean.empty, clean[["check", "message"]]


@needs_megatron
def test_the_wrapper_maps_torchs_eps_and_passing_it_unmapped_is_a_finding(torch):
    adapter = load_adapter("megatron")
    for case in (cross_entropy_case(X, T, label_smoothing=0.3),
                 cross_entropy_case(X, T, label_smoothing=0.3, smoothing_dialect="megatron")):
        outcome = adapter.run(case)
        checks = {v.check for v in compare(case, outcome, reference.evaluate(case), adapter.capabilities).verdicts}
        assert checks <= {"mutation"}, checks  # float32: Megatron shifts the caller's logits in place

    def unmapped(input, target, label_smoothing=0.0, **kwargs):  # torch's eps handed over as Megatron's alpha
        return megatron_cross_entropy(input, target, label_smoothing=label_smoothing, smoothing_dialect="megatron",
                                      **{k: v for k, v in kwargs.items() if k != "smoothing_dialect"})

    from ce_conformance.adapters.torch_adapter import TorchAdapter

    wrong = TorchAdapter(unmapped, name="unmapped", capabilities=MEGATRON_CAPABILITIES)
    case = cross_entropy_case(X, T, label_smoothing=0.3)
    assert "loss_value" in {v.check for v in compare(case, wrong.run(case), reference.evaluate(case),
                                                      wrong.capabilities).verdicts}


@needs_megatron
def test_megatrons_smoothed_loss_is_infinite_where_a_probability_underflows(torch):
    """Its smoothing term is torch.log of the normalised float32 probabilities: one logit 120
    below the row maximum underflows to p = 0, log p = -inf, where torch's log-softmax is finite."""
    x = np.zeros((2, 5))
    x[:, 0] = 120.0
    case = cross_entropy_case(x, [0, 1], label_smoothing=0.1)
    adapter = load_adapter("megatron")
    verdicts = compare(case, adapter.run(case), reference.evaluate(case), adapter.capabilities).verdicts
    assert "loss_nonfinite" in {v.check for v in verdicts}
    assert np.isfinite(reference.evaluate(case).loss)
