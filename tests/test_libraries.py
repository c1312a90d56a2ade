"""Kernel libraries' losses (cut-cross-entropy, Liger-Kernel) behind the built-in adapters.

On a CPU: cut-cross-entropy's ``torch_compile`` implementation runs (where the package is
installed) and its known divergences are explained by its shipped baseline; the Triton paths are
reported unavailable with the reason. On a CUDA GPU with the packages installed, the Triton
paths run through the same fuzz and their findings come with repro scripts that call the library.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pandas as pd
import pytest

from ce_conformance import Case
from ce_conformance.adapters import FAMILY_ECOSYSTEMS, load_adapter
from ce_conformance.adapters.library import LibraryAdapter
from ce_conformance.adapters.liger_adapter import LIGER_CAPABILITIES, liger_cross_entropy
from ce_conformance.cli import main
from ce_conformance.ecosystem import explain, recorded_baselines
from ce_conformance.findings import load_run
from ce_conformance.linear_cross_entropy import linear_cross_entropy_case


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


needs_cce = pytest.mark.skipif(importlib.util.find_spec("cut_cross_entropy") is None or
                               importlib.util.find_spec("torch") is None,
                               reason="cut-cross-entropy is not installed (pip install 'ce-conformance[cut-cross-entropy]')")
needs_gpu_libraries = pytest.mark.skipif(
    not _cuda() or importlib.util.find_spec("liger_kernel") is None or importlib.util.find_spec("cut_cross_entropy") is None,
    reason="Liger-Kernel and cut-cross-entropy's Triton kernels need a CUDA GPU and both packages")


def test_each_family_names_its_libraries_and_each_says_why_it_cannot_run_here():
    assert {"cut-cross-entropy", "cut-cross-entropy-cce", "liger-linear"} <= set(FAMILY_ECOSYSTEMS["linear_cross_entropy"])
    assert "liger" in FAMILY_ECOSYSTEMS["cross_entropy"]
    for name in ("cut-cross-entropy", "cut-cross-entropy-cce", "liger", "liger-linear"):
        adapter = load_adapter(name)
        assert isinstance(adapter, LibraryAdapter) and adapter.source.startswith("def ")
        reason = adapter.availability()
        info = adapter.describe()
        assert info["framework"] == adapter.distribution and info["available"] == (reason is None)
        if reason is not None:  # never a bare failure: what to install, or that a GPU is needed
            assert "pip install 'ce-conformance[" in reason or "runs Triton kernels on a GPU" in reason, reason
    missing = LibraryAdapter(liger_cross_entropy, name="x", package="no_such_kernel_library", distribution="nskl",
                             extra="nskl", family="cross_entropy", capabilities=LIGER_CAPABILITIES, description="x")
    assert missing.availability() == "nskl is not installed (pip install 'ce-conformance[nskl]')"


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA")
def test_ecosystem_lists_the_triton_paths_as_unavailable_with_the_reason_on_a_cpu():
    from ce_conformance.cli import _adapters, build_parser

    args = build_parser().parse_args(["fuzz", "--family", "linear_cross_entropy", "--ecosystem"])
    described = {a.name: a.describe() for a in _adapters(args)}
    for name in ("cut-cross-entropy-cce", "liger-linear"):
        reason = described[name]["reason"]
        assert not described[name]["available"] and ("CUDA is not available" in reason or "is not installed" in reason)
    assert "liger" in {a.name for a in _adapters(build_parser().parse_args(["fuzz", "--ecosystem"]))}


def test_a_library_skips_what_it_does_not_take():
    case = linear_cross_entropy_case([[1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0], [2.0, 2.0]], [2], label_smoothing=0.1,
                                     linear_bias=[0.0, 0.5, 1.0])
    assert load_adapter("cut-cross-entropy").capabilities.missing(case) == ("label_smoothing", "linear_bias")
    assert load_adapter("liger-linear").capabilities.missing(case) == ()
    soft = Case.cross_entropy([[1.0, 2.0]], [[0.5, 0.5]])
    assert load_adapter("liger").capabilities.missing(soft) == ("probability_targets",)
    assert load_adapter("liger").capabilities.missing(linear_cross_entropy_case([[1.0]], [[1.0]], [0])) == (
        "family:linear_cross_entropy",)


@needs_cce
def test_cut_cross_entropy_torch_compile_runs_on_the_cpu_and_its_baseline_explains_its_dialect(tmp_path, capsys):
    """Its ``.float()`` upcast gives a float32 loss for bfloat16 inputs (and downcasts float64):
    both in ``cut-cross-entropy-25.1-cpu``; everything else it computes conforms."""
    code = main(["fuzz", "--family", "linear_cross_entropy", "--adapters", "cut-cross-entropy", "--baseline",
                 "cut-cross-entropy-25.1-cpu", "--dtypes", "float32,bfloat16", "--max-examples", "40", "--out",
                 str(tmp_path), "--no-progress", "--no-shrink"])
    out = capsys.readouterr().out
    results, findings = load_run(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    mine = results[results["adapter"] == "cut-cross-entropy"]
    assert (mine["status"] == "passed").sum() >= 3, out
    explained = explain(findings, recorded_baselines(config))
    assert set(explained["check"]) <= {"loss_dtype"}, out
    assert explained["known"].ne("").all() and code == 0, out
    # a finding's repro script calls the library through the adapter's wrapper, no ce-conformance needed
    script = next(iter(sorted((tmp_path / "cases").glob("cut-cross-entropy__loss_dtype__*.py"))))
    text = script.read_text()
    assert "def cut_cross_entropy_torch_compile" in text and "fn = cut_cross_entropy_torch_compile" in text
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "torch.float32" in run.stdout, run.stdout  # the dtype the finding is about


# -- on a GPU --------------------------------------------------------------------------------
@needs_gpu_libraries
@pytest.mark.parametrize("name,family", [("liger", "cross_entropy"), ("liger-linear", "linear_cross_entropy"),
                                         ("cut-cross-entropy-cce", "linear_cross_entropy")])
def test_the_triton_libraries_run_on_a_gpu_and_each_finding_replays_there(name, family, tmp_path, capsys):
    main(["fuzz", "--family", family, "--adapters", name, "--max-examples", "150", "--out", str(tmp_path),
          "--no-progress", "--no-shrink"])
    out = capsys.readouterr().out
    results, findings = load_run(tmp_path)
    ran = results[results["adapter"] == name]
    assert (ran["status"] != "skipped").sum() >= 50, out
    assert load_adapter(name).versions().get("gpu")
    for script in sorted((tmp_path / "cases").glob("*.py"))[:2]:
        text = script.read_text()
        assert "DEVICE = 'cuda'" in text and f"fn = {load_adapter(name).fn.__name__}" in text
    pd.set_option("display.width", 250)
    print(findings.groupby(["check", "dtype"]).size().to_string() if not findings.empty else "no findings")
