"""Kernels on an accelerator: ``--device``, the ``torch-cuda`` adapter, a Triton kernel.

The CPU half runs everywhere (the device option's plumbing, its messages, repro scripts that put
tensors on the failing device); the GPU half needs CUDA (and Triton for the example kernel) and
skips with the reason elsewhere.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from ce_conformance import Case
from ce_conformance.adapters import function_adapter, load_adapter, user_adapter
from ce_conformance.baseline import Baseline
from ce_conformance.cli import main
from ce_conformance.errors import ConfigurationError
from ce_conformance.findings import load_run
from ce_conformance.isolation import build_adapter
from ce_conformance.repro import replay_command, write_repro

pytest_plugins = ["pytester"]
ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "triton_cross_entropy.py"
EXAMPLE_FEATURES = "default,-weights,-probability_targets,-invalid_input,-nonfinite_logits"
FAST = ["--no-progress", "--shrink-seconds", "20"]  # the default gate: covering phase included


def _cuda_reason() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    return None if torch.cuda.is_available() else "CUDA is not available (no GPU here)"


needs_cuda = pytest.mark.skipif(_cuda_reason() is not None, reason=str(_cuda_reason()))
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None or _cuda_reason() is not None,
                                  reason="Triton on a CUDA GPU is not available here")


# -- everywhere ------------------------------------------------------------------------------
def test_device_needs_the_torch_kind_and_a_torch_device_name():
    with pytest.raises(ConfigurationError, match="needs --kind torch"):
        function_adapter(lambda *a, **k: None, "jax", device="cuda")
    with pytest.raises(ConfigurationError, match="expected a torch device"):
        function_adapter(lambda *a, **k: None, "torch", device="gpu0")


def test_each_device_kind_says_why_it_is_unavailable(torch):
    from ce_conformance.adapters.torch_adapter import TorchAdapter

    if not torch.cuda.is_available():
        assert "CUDA is not available" in TorchAdapter(device="cuda:3").availability()
    else:
        assert "CUDA device(s) visible" in TorchAdapter(device=f"cuda:{torch.cuda.device_count()}").availability()
    if not torch.backends.mps.is_available():
        assert "no usable 'mps' device" in TorchAdapter(device="mps").availability()
    assert TorchAdapter(device="cpu").availability() is None


def test_an_unavailable_device_is_a_configuration_error_with_the_reason(tmp_path, capsys, torch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["gate", "--impl", "torch.nn.functional:cross_entropy", "--device", "cuda",
                 "--out", str(tmp_path), "--max-examples", "5", *FAST])
    assert code == 2  # never a PASS for a kernel that did not run
    assert "CUDA is not available" in capsys.readouterr().err


def test_the_device_travels_to_worker_processes_and_repro_scripts(tmp_path, torch):
    adapter = user_adapter("torch.nn.functional:cross_entropy", device="cuda:0")
    assert adapter.device == "cuda:0" and build_adapter(adapter.recipe).device == "cuda:0"
    assert replay_command("c.json", adapter.name, "torch.nn.functional:cross_entropy", "torch",
                          device="cuda:0").endswith("--device cuda:0")
    case = Case.cross_entropy([[1.0, 2.0, 0.5]], [1], dtype="float16", memory_layout="offset")
    script = write_repro(tmp_path / "r.py", case, adapter_name="torch-cuda", check="loss_value", message="m",
                         case_path=tmp_path / "r.json", device="cuda")
    text = script.read_text()
    assert "DEVICE = 'cuda'" in text and "device=DEVICE" in text
    if not torch.cuda.is_available():
        return
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "device='cuda:0'" in out.stdout


def test_ce_check_skips_where_the_device_is_missing(pytester, torch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    pytester.makepyfile("""
        import torch.nn.functional as F

        def test_kernel(ce_check):
            ce_check(F.cross_entropy, device="cuda", max_examples=5)
    """)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*CUDA is not available*"])
    # the packaged suite for --ce-impl on a missing device: every family skips, with the reason
    suite = pytester.runpytest_subprocess("--ce-impl", "torch.nn.functional:cross_entropy", "--ce-device", "cuda",
                                          "-rs", "-p", "no:cacheprovider", "-k", "basics")
    suite.assert_outcomes(skipped=1)
    suite.stdout.fnmatch_lines(["*CUDA is not available*"])


# -- on a GPU --------------------------------------------------------------------------------
@needs_cuda
def test_torch_cuda_conforms(tmp_path, capsys):
    """CUDA's kernels sum in other orders than the CPU's: correct arithmetic, so no finding but
    torch's own known CUDA divergences (the shipped ``torch-2.11-cuda`` baseline, each confirmed by
    direct calls); its device-side asserts on invalid targets and its messages for int32 targets
    are matched to torch's errors."""
    main(["fuzz", "--adapters", "torch-cuda", "--out", str(tmp_path), "--max-examples", "300",
          "--covering", "2", "--no-progress", "--no-shrink"])
    out = capsys.readouterr().out
    results, findings = load_run(tmp_path)
    assert (results["status"] == "passed").sum() > 250
    new = Baseline.load("torch-2.11-cuda").apply(findings).new
    assert new.empty, out + new[["check", "dtype", "features", "message"]].to_string()


@needs_cuda
def test_a_torch_function_on_cuda_passes_the_gate_and_a_planted_bug_fails(tmp_path, capsys):
    ok = main(["gate", "--impl", "torch.nn.functional:cross_entropy", "--device", "cuda", "--baseline",
               "torch-2.11-cuda", "--out", str(tmp_path / "ok"), "--max-examples", "200", *FAST])
    assert ok == 0, capsys.readouterr().out
    planted = Path(__file__).with_name("planted_bugs.py")
    bad = main(["gate", "--impl", f"{planted}:fp32_output", "--device", "cuda", "--out", str(tmp_path / "bad"),
                "--max-examples", "100", *FAST])
    out = capsys.readouterr().out
    assert bad == 1 and "--device cuda" in out  # the replay command runs it where it failed
    scripts = sorted((tmp_path / "bad" / "cases").glob("*.py"))
    assert scripts and all("DEVICE = 'cuda'" in s.read_text() for s in scripts)


@needs_triton
def test_the_example_triton_kernel_passes_the_gate(tmp_path, capsys):
    code = main(["gate", "--impl", f"{EXAMPLE}:cross_entropy", "--device", "cuda", "--features", EXAMPLE_FEATURES,
                 "--out", str(tmp_path), "--max-examples", "400", *FAST])
    assert code == 0, capsys.readouterr().out


@needs_triton
@pytest.mark.parametrize("bug,check", [("stale_sum", "loss_value"), ("first_grad_output", "grad_input_value"),
                                       ("absolute_lse", "loss_value")])
def test_planted_triton_bugs_fail_the_gate(bug, check, tmp_path, capsys):
    code = main(["gate", "--impl", f"{EXAMPLE}:{bug}", "--device", "cuda", "--features", EXAMPLE_FEATURES,
                 "--out", str(tmp_path), "--max-examples", "400", *FAST])
    out = capsys.readouterr().out
    assert code == 1 and check in out, out


@needs_cuda
def test_torch_cuda_adapter_reports_its_gpu():
    adapter = load_adapter("torch-cuda")
    assert adapter.availability() is None and adapter.versions().get("gpu")
