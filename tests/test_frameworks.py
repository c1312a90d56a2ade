"""Framework kinds (paddle, mlx, tinygrad, tensorflow, keras): exact tensor conversion, the
framework's own autodiff through a correct port (passes) and a planted bug (fails), built-in
losses, repro scripts in the framework's API. Each test skips with the reason where its
framework is not installed here."""

import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ce_conformance.adapters as adapters
from ce_conformance import Case
from ce_conformance.adapters.framework import BRIDGES, FrameworkAdapter, bridge_for
from ce_conformance.dtypes import FLOAT_DTYPES, numpy_dtype
from ce_conformance.repro import write_repro
from ce_conformance.runner import FuzzConfig, FuzzRun
from ce_conformance.selection import parse_dtypes

HERE = Path(__file__).parent
KINDS = (*[k for k in BRIDGES if k != "keras"], "keras-jax")
PORT_FEATURES = ("default,-weights,-ignore_index,-ignore_index_in_range,-all_ignored,-label_smoothing,-empty_batch,"
                 "-invalid_input")
"""What the ports in framework_ports.py implement (they check no arguments)."""


def _bridge_or_skip(kind):
    bridge = bridge_for(kind)
    reason = bridge.availability()
    if reason:
        pytest.skip(reason)
    return bridge


def _runnable_dtypes(kind, bridge):
    probe = FrameworkAdapter(lambda *a, **k: None, bridge, name=f"probe-{kind}")
    return [d for d in FLOAT_DTYPES if probe.dtype_reason(d) is None]


def _in_subprocess(code):
    """Frameworks run in their own process, as the adapters do: Paddle and TensorFlow (or two
    Keras backends) loaded into one process can crash it."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=HERE.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_tensors_cross_into_each_framework_and_back_bit_for_bit(kind):
    _bridge_or_skip(kind)
    _in_subprocess(f"from tests.test_frameworks import check_round_trip; check_round_trip({kind!r})")


def check_round_trip(kind):
    bridge = bridge_for(kind)
    runnable = _runnable_dtypes(kind, bridge)
    assert "float32" in runnable
    for dtype in runnable:
        info = ml_dtypes.finfo(numpy_dtype(dtype))
        values = np.array([0.0, -0.0, 1.0, float(info.max), -float(info.max), float(info.smallest_normal),
                           float(info.smallest_subnormal), 1 + float(info.eps), np.inf, -np.inf]).astype(numpy_dtype(dtype))
        back = bridge.numpy(bridge.tensor(values, dtype))
        assert back.dtype == values.dtype, (dtype, back.dtype)
        assert np.array_equal(back.view(f"u{values.itemsize}"), values.view(f"u{values.itemsize}")), dtype
    targets = np.array([0, 3, 1], dtype=np.int64)
    assert np.array_equal(bridge.numpy(bridge.tensor(targets, "int64")), targets)


def _gate(kind, function, tmp_path):
    _bridge_or_skip(kind)
    adapter = adapters.user_adapter(f"{HERE}/framework_ports.py:{function}", kind, class_axis=-1,
                                    features=PORT_FEATURES)
    # MLX's CPU float64 exp/log are float32-accurate (found by this gate: 1e9 float64 ulps), so
    # no MLX function can be correct in float64 there
    dtypes = parse_dtypes("-float64" if kind == "mlx" else None)
    config = FuzzConfig(adapters=[adapter], out_dir=tmp_path, shrink=False, progress=False, dtypes=dtypes)
    return FuzzRun(config).run()


@pytest.mark.parametrize("kind", KINDS)
def test_a_correct_port_passes_with_gradients_from_the_frameworks_autodiff(kind, tmp_path):
    summary = _gate(kind, f"{kind.partition('-')[0]}_correct", tmp_path)
    assert summary.conformant, summary.summary_markdown
    import pandas as pd

    results = pd.read_parquet(tmp_path / "results.parquet")
    ran = results[results["status"] != "skipped"]
    assert len(ran) > 50 and ran["grad_input_ulp"].notna().sum() > 25  # gradients were checked


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_k_dim_mean_bug_fails(kind, tmp_path):
    summary = _gate(kind, f"{kind.partition('-')[0]}_bug", tmp_path)
    assert not summary.conformant
    assert {check for _, check in summary.signatures} & {"loss_value", "grad_input_value"}


def test_a_dtype_the_framework_cannot_run_is_a_skip_with_its_reason():
    _bridge_or_skip("paddle")
    reason = _in_subprocess(
        "from ce_conformance import Case; from ce_conformance.adapters import load_adapter\n"
        "outcome = load_adapter('paddle').run(Case.cross_entropy([[0.5, 1.0, -1.0]], [2], dtype='float16'))\n"
        "print(outcome.status, outcome.skip_reason)").strip().splitlines()[-1]  # Paddle may print first
    assert reason.startswith("skipped paddle cannot run float16") and "not registered" in reason


def test_class_axis_moves_the_classes_last_and_the_gradient_back():
    bridge = _bridge_or_skip("mlx")  # MLX runs beside anything: in this process
    seen = {}

    def port(input, target, weight=None, **options):
        import mlx.core as mx

        seen["shape"] = tuple(input.shape)
        logp = input - mx.logsumexp(input, axis=-1, keepdims=True)
        return -(mx.take_along_axis(logp, mx.expand_dims(target, -1), -1).squeeze(-1)).sum()

    adapter = adapters.function_adapter(port, "mlx", class_axis=-1)
    case = Case.cross_entropy(np.arange(24.0).reshape(2, 3, 4) / 7, np.array([[0, 1, 2, 0], [2, 2, 1, 0]]),
                              reduction="sum")
    outcome = adapter.run(case)
    from ce_conformance import reference

    expected = reference.evaluate(case)
    assert seen["shape"] == (2, 4, 3) and outcome.grad_input_shape == (2, 3, 4)
    assert np.allclose(outcome.grad_input, expected.grad_input, rtol=1e-5, atol=1e-6)
    assert bridge.kind == "mlx"


def test_a_framework_builtins_repro_script_runs_in_that_framework_alone(tmp_path):
    _bridge_or_skip("mlx")
    adapter = adapters.load_adapter("mlx")
    case = Case.cross_entropy([[0.5, 1.0, -1.0], [2.0, 0.0, 0.25]], [2, 0], label_smoothing=1.0)
    assert adapter.run(case).status == "error"  # MLX refuses a smoothing of 1 that torch accepts
    path = case.save(tmp_path / "case.json")
    script = write_repro(tmp_path / "case.py", case, adapter_name="mlx", check="error", message="m", case_path=path,
                         framework=adapter)
    text = script.read_text()
    assert "import mlx.core as mx" in text and "import torch" not in text and "ce_conformance" not in text
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ""}, cwd=tmp_path)
    assert "Label smoothing must be in [0, 1)" in run.stderr


def test_ecosystem_adds_every_frameworks_builtin():
    from ce_conformance.cli import _adapters, build_parser

    args = build_parser().parse_args(["fuzz", "--ecosystem", "--adapters", "numpy"])
    names = [a.name for a in _adapters(args)]
    assert names == ["numpy", *adapters.ECOSYSTEM_ADAPTERS]
    described = {a.name: a.describe() for a in _adapters(args)}
    assert all(info["description"] for info in described.values())


def test_tinygrad_without_clang_is_unavailable_with_the_reason(monkeypatch):
    """tinygrad 0.14 with no compiler raises "no usable devices" from ``Device.DEFAULT``; the
    adapter says what to install instead of crashing the run."""
    pytest.importorskip("tinygrad")
    from ce_conformance.adapters import tinygrad_adapter

    monkeypatch.setattr(tinygrad_adapter.shutil, "which", lambda name: None)
    reason = adapters.load_adapter("tinygrad").availability()
    assert reason is None or "apt-get install clang" in reason  # None only where tinygrad has a non-CPU device


def test_class_axis_minus_one_needs_a_framework_kind():
    from ce_conformance.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="needs a framework kind"):
        adapters.user_adapter("torch.nn.functional:cross_entropy", "torch", class_axis=-1)


def test_asking_the_framework_adapters_about_themselves_loads_no_framework():
    """The run asks every adapter for its availability, versions and description in its own
    process; loading Paddle there after TensorFlow segfaults it, so nothing may be imported."""
    loaded = _in_subprocess(
        "import sys\n"
        "from ce_conformance.adapters import ECOSYSTEM_ADAPTERS, load_adapters\n"
        "for adapter in load_adapters(list(ECOSYSTEM_ADAPTERS)):\n"
        "    adapter.availability(); adapter.versions(); adapter.describe()\n"
        "print(sorted(m for m in ('paddle', 'tensorflow', 'mlx', 'keras') if m in sys.modules))")
    assert loaded.strip().splitlines()[-1] == "[]"


GRADIENT_SCRIPT_ADAPTERS = ("paddle", "mlx", "tinygrad", "tensorflow", "keras-sparse-jax", "keras-categorical-torch",
                            "keras-sparse-tensorflow")
SOFT_TARGET_CASE = dict(input=np.array([[1.0, 2.0, 3.0], [0.5, 0.1, -1.0]]),
                        target=np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]), dtype="float32")


def _repro_run(name, case, check, message, tmp_path):
    """Write the repro script of a ``check`` finding of built-in ``name`` on ``case`` and run it
    with nothing but the framework importable; its stdout."""
    adapter = adapters.load_adapter(name)
    if reason := adapter.availability():
        pytest.skip(reason)
    path = case.save(tmp_path / "case.json")
    script = write_repro(tmp_path / "case.py", case, adapter_name=name, check=check, case_path=path, message=message,
                         framework=adapter)
    assert "ce_conformance" not in script.read_text()
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ""}, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def _got_and_expected(stdout, element):
    """The script's two printed values of a gradient element, e.g. ``grad_input[1, 2]``."""
    values = [float(line.split("]", 1)[1].split()[0]) for line in stdout.splitlines()
              if line.startswith((f"got      {element}", f"expected {element}"))]
    assert len(values) == 2, stdout
    return values


@pytest.mark.parametrize("name", GRADIENT_SCRIPT_ADAPTERS)
def test_a_gradient_findings_repro_script_differentiates_with_the_frameworks_autodiff(name, tmp_path):
    case = Case.cross_entropy(np.array([[0.5, 1.0, -1.0, 0.25], [2.0, 0.0, 0.25, -3.0], [1.0, 1.5, 0.0, 0.5]]),
                              np.array([2, 0, 3]), dtype="float32", reduction="none",
                              grad_output=np.array([1.0, -2.0, 0.5], np.float32))
    stdout = _repro_run(name, case, "grad_input_value",
                        "grad_input off by 9 ulp (float32; budget 4) at [1, 2]: got 0.1, expected 0.2", tmp_path)
    got, expected = _got_and_expected(stdout, "grad_input[1, 2]")
    assert got == pytest.approx(expected, rel=1e-5), stdout


def test_the_mlx_soft_target_gradient_divergence_reproduces_in_its_script(tmp_path):
    stdout = _repro_run("mlx", Case.cross_entropy(**SOFT_TARGET_CASE), "grad_target_value",
                        "grad_target off by 1.7e+06 ulp (float32; budget 6.11) at [1, 1]: got 0.5", tmp_path)
    got, expected = _got_and_expected(stdout, "grad_target[1, 1]")
    assert abs(got - expected) > 0.1  # MLX leaves out the log-sum-exp term; the script shows it


def test_the_gates_replay_lines_keep_the_class_axis(tmp_path, capsys):
    _bridge_or_skip("mlx")
    from ce_conformance.cli import main

    junit = tmp_path / "gate.xml"
    code = main(["gate", "--impl", f"{HERE}/framework_ports.py:mlx_bug", "--kind", "mlx", "--class-axis", "-1",
                 "--features", PORT_FEATURES, "--dtypes", "float32", "--max-examples", "40", "--no-progress",
                 "--shrink-seconds", "5", "--covering", "2", "--out", str(tmp_path / "gate"), "--junit", str(junit)])
    out = capsys.readouterr().out
    assert code == 1, out  # the covering phase draws a K-dim 'mean' case, where the planted bug lives
    replays = [line for line in out.splitlines() if "ce-conformance replay" in line]
    assert replays and all("--kind mlx" in line and "--class-axis -1" in line for line in replays), out
    assert "--class-axis -1" in junit.read_text()


def test_a_gradient_the_framework_does_not_give_is_shown_as_zeros_as_the_run_judged_it(tmp_path):
    stdout = _repro_run("paddle", Case.cross_entropy(**SOFT_TARGET_CASE), "grad_target_value",
                        "grad_target off by 1e+07 ulp (float32; budget 6.11) at [1, 2]: got 0.0", tmp_path)
    got, expected = _got_and_expected(stdout, "grad_target[1, 2]")
    assert got == 0.0 and expected > 0.5  # Paddle's soft labels get no gradient: the script shows it
    assert "Tensor(shape" not in stdout  # values, not the framework's tensor repr
