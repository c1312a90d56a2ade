"""Built-in and user adapters: correct translations, honest capabilities, compile reuse."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

import ce_conformance.adapters as adapters
from ce_conformance.adapters.base import Capabilities
from ce_conformance import Case, ConfigurationError, reference
from ce_conformance.compare import compare
from ce_conformance.strategies import SizeLimits, cross_entropy_cases

SMALL = SizeLimits(max_elements=1 << 12, vocab_percent=0)


def _assert_conforms(adapter, case):
    missing = adapter.capabilities.missing(case)
    if missing:
        return
    outcome = adapter.run(case)
    ref = reference.evaluate(case) if case.is_valid else None
    verdicts = compare(case, outcome, ref, adapter.capabilities).verdicts
    assert not verdicts, (case, [v.message for v in verdicts])


@given(cross_entropy_cases(limits=SMALL, invalid_percent=20))
def test_numpy_adapter_is_the_reference(case):
    _assert_conforms(adapters.load_adapter("numpy"), case)


@given(cross_entropy_cases(limits=SMALL, invalid_percent=20))
def test_torch_adapter_conforms(torch, case):
    if case.target_dtype == "uint8" and case.weight is not None and case.label_smoothing > 0:
        return  # torch 2.13 bug, see test_reference.py
    _assert_conforms(adapters.load_adapter("torch"), case)


@settings(max_examples=60)
@given(cross_entropy_cases(limits=SMALL))
def test_jax_port_conforms(case):
    pytest.importorskip("jax")
    _assert_conforms(JAX, case)


@settings(max_examples=60)
@given(cross_entropy_cases(dtypes=["float32", "float64"], limits=SMALL))
def test_optax_conforms_away_from_large_offsets(case):
    pytest.importorskip("optax")
    if np.abs(case.input[np.isfinite(case.input)]).max(initial=0) > 100:
        return  # optax's integer-label loss cancels at large offsets: a real finding, see README
    if case.options["label_smoothing"] == 1.0 and np.isneginf(case.input).any():
        return  # a -inf target logit at smoothing 1: torch's 0 * inf is NaN, optax's inf (README)
    _assert_conforms(OPTAX, case)


def test_optax_returns_inf_where_torch_forms_zero_times_inf():
    """The known optax finding the property test above steps around: smoothing 1 and a -inf
    target logit (drawn by that test on 2026-12-07)."""
    pytest.importorskip("optax")
    logits = np.array([[0.5, -np.inf, 1.0, -0.25]])
    case = Case.cross_entropy(logits, np.array([1]), dtype="float32", label_smoothing=1.0)
    assert np.isnan(reference.evaluate(case).loss)
    outcome = OPTAX.run(case)
    assert outcome.status == "ok" and np.isposinf(outcome.loss)
    assert [v.check for v in compare(case, outcome, reference.evaluate(case), OPTAX.capabilities).verdicts] == [
        "loss_nonfinite"]


JAX = adapters.load_adapter("jax")
OPTAX = adapters.load_adapter("optax")


def test_jax_compiles_once_per_shape_bucket():
    pytest.importorskip("jax")
    from ce_conformance.adapters.jax_adapter import _TRACES, CLASS_BUCKETS, ROW_BUCKETS, JaxAdapter, _bucket

    rng = np.random.default_rng(0)
    cases, keys = [], set()
    for i in range(40):
        C = int(rng.choice([3, 5, 9, 100]))
        N = int(rng.choice([1, 4, 20, 30]))
        cases.append(Case.cross_entropy(rng.standard_normal((N, C)), rng.integers(0, C, N), dtype="float32",
                                        reduction=["mean", "sum", "none"][i % 3], label_smoothing=0.1 * (i % 2),
                                        weight=rng.uniform(0.5, 1, C) if i % 4 == 0 else None))
        keys.add((_bucket(max(N, 1), ROW_BUCKETS), _bucket(C, CLASS_BUCKETS)))
    before = _TRACES.get(JaxAdapter, 0)
    adapter = JaxAdapter()
    assert all(adapter.run(case).status == "ok" for case in cases)
    # reductions, weights and smoothing are traced values: at most one compilation per bucket
    assert _TRACES.get(JaxAdapter, 0) - before <= len(keys) <= 8
    again = JaxAdapter()  # a new adapter object reuses the compiled buckets of this process
    assert all(again.run(case).status == "ok" for case in cases)
    assert again.compilations == 0


def test_optax_declares_its_narrow_capabilities():
    assert {"weights", "ignore_index", "invalid_input"}.isdisjoint(OPTAX.capabilities.features)
    case = Case.cross_entropy([[1.0, 2.0]], [1], weight=[1.0, 2.0])
    assert OPTAX.capabilities.missing(case) == ("weights",)


def test_torch_cuda_skips_with_a_reason_without_a_gpu(torch):
    adapter = adapters.load_adapter("torch-cuda")
    if torch.cuda.is_available():
        assert adapter.availability() is None
    else:
        assert "CUDA is not available" in adapter.availability()


def test_unknown_adapter_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="unknown adapter 'nope'"):
        adapters.load_adapter("nope")


@pytest.mark.parametrize("spec,message", [
    ("no_colon", "expected 'module.path:function'"),
    ("no_such_module_xyz:f", "ModuleNotFoundError"),
    ("math:no_such_function", "has no attribute"),
    ("missing/file.py:f", "no such file"),
])
def test_bad_impl_specs(spec, message):
    with pytest.raises(ConfigurationError, match=message):
        adapters.resolve_function(spec)


def test_impl_file_with_a_broken_import_reports_the_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import not_a_real_package_xyz\n")
    with pytest.raises(ConfigurationError, match="not_a_real_package_xyz"):
        adapters.resolve_function(f"{path}:f")


def test_loss_classes_are_called_per_case(torch):
    adapter = adapters.user_adapter("torch.nn:CrossEntropyLoss")
    _assert_conforms(adapter, Case.cross_entropy([[1.0, 2.0, 0.0]], [2], weight=[1, 2, 3], label_smoothing=0.2))


def test_numpy_and_jax_user_functions(tmp_path):
    pytest.importorskip("jax")
    path = tmp_path / "impls.py"
    path.write_text(
        "import numpy as np\n"
        "import jax.numpy as jnp, jax\n"
        "def np_ce(x, t, weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0):\n"
        "    x = x.astype(np.float64); lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)\n"
        "    return np.asarray((lse - x[np.arange(len(t)), t]).mean(), dtype=np.float32)\n"
        "def jax_ce(x, t, weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0):\n"
        "    logp = jax.nn.log_softmax(x.astype(jnp.float32), axis=1)\n"
        "    return (-jnp.take_along_axis(logp, t[:, None], 1)[:, 0]).mean().astype(x.dtype)\n")
    case = Case.cross_entropy([[1.0, 2.0, 0.5], [0.0, 1.0, 2.0]], [1, 2], dtype="float32")
    numpy_adapter = adapters.user_adapter(f"{path}:np_ce", "numpy")
    assert not numpy_adapter.capabilities.gradients
    _assert_conforms(numpy_adapter, case)
    _assert_conforms(adapters.user_adapter(f"{path}:jax_ce", "jax"), case)


def test_user_features_default_excludes_rare_corners():
    caps = adapters.user_capabilities()
    assert "legacy_reduction" not in caps.features and "weights" in caps.features
    assert adapters.user_capabilities("all") == Capabilities()
    with pytest.raises(ConfigurationError, match="unknown name"):
        adapters.user_capabilities("weights,nope")


def test_adapter_bugs_become_outcomes_not_crashes():
    class Broken(adapters.Adapter):
        name = "broken"

        def run(self, case):
            raise RuntimeError("adapter bug")

    outcome = Broken().timed_run(Case.cross_entropy([[1.0, 2.0]], [1]))
    assert outcome.status == "error" and outcome.error.stage == "setup"


def test_entry_point_adapters_are_loaded(monkeypatch):
    class FakeEntryPoint:
        name, value = "vendor-ce", "vendor.module:factory"

        def load(self):
            return lambda: adapters.load_adapter("numpy")

    monkeypatch.setattr(adapters, "_entry_points", lambda: {"vendor-ce": FakeEntryPoint()})
    assert "vendor-ce" in adapters.available_names()
    assert adapters.load_adapter("vendor-ce").name == "numpy"


def test_broken_entry_point_is_a_configuration_error(monkeypatch):
    class Broken:
        name, value = "broken", "vendor:nope"

        def load(self):
            raise ImportError("vendor missing")

    monkeypatch.setattr(adapters, "_entry_points", lambda: {"broken": Broken()})
    with pytest.raises(ConfigurationError, match="vendor missing"):
        adapters.load_adapter("broken")


def test_torch_compile_adapter_matches_eager(torch, monkeypatch):
    monkeypatch.setenv("CE_TORCH_COMPILE_BACKEND", "aot_eager")  # graph capture without a C++ build
    compiled = adapters.load_adapter("torch-compile")
    case = Case.cross_entropy([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]], [1, 2], weight=[1.0, 2.0, 0.5],
                              label_smoothing=0.1, reduction="none", grad_output=[1.0, -2.0])
    _assert_conforms(compiled, case)
    assert compiled.compilations >= 1 and compiled.compile_seconds > 0
    # past dynamo's default of 8 graphs it would run every further configuration eagerly: a
    # compiled adapter passing compiled code it never ran (uint8 targets fail to compile, for one)
    assert torch._dynamo.config.recompile_limit >= 256


def test_torch_compile_refuses_uint8_targets_that_eager_takes_and_the_baseline_says_so(torch, monkeypatch):
    from ce_conformance.baseline import Baseline
    from ce_conformance.findings import findings_frame

    monkeypatch.setenv("CE_TORCH_COMPILE_BACKEND", "aot_eager")
    compiled = adapters.load_adapter("torch-compile")
    case = Case.cross_entropy([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]], np.array([1, 2], dtype=np.uint8), target_dtype="uint8")
    assert adapters.load_adapter("torch").run(case).status == "ok"
    outcome = compiled.run(case)
    assert outcome.status == "error" and "fake tensor" in outcome.error.message
    verdicts = compare(case, outcome, reference.evaluate(case), compiled.capabilities).verdicts
    findings = findings_frame([dict(adapter="torch-compile", check=v.check, dtype=case.dtype,
                                    features=",".join(sorted(case.features)), message=v.message) for v in verdicts])
    assert Baseline.load("torch-2.13-cpu").apply(findings).new.empty


def test_jax_port_keeps_label_smoothing_exact_in_half_dtypes():
    # the port once passed its scalars (smoothing, class count) in the input dtype: bfloat16 made
    # smoothing 0.9668 into 0.96875, so (1 - eps) was 6 % off; with uniform logits and an unlikely
    # target that is 4 bf16 ulps on the target's gradient
    pytest.importorskip("jax")
    x = np.zeros(64)
    x[54] = -8.0
    _assert_conforms(JAX, Case.cross_entropy(x, np.array(54), dtype="bfloat16", label_smoothing=0.966796875))


def test_jax_port_multiplies_soft_targets_in_torchs_order():
    # drawn by test_jax_port_conforms: the port formed weight * target first, which with class
    # weights of 1e-4 rounds into float16's subnormals (1 % off) where torch's -(logp * target *
    # weight) stays normal; the loss was 1.02 of its budget (2.62 ulps), torch's order 0.24
    pytest.importorskip("jax")
    case = Case.load(Path(__file__).parent / "cases" / "float16_soft_tiny_weights_jax_port_order.json")
    _assert_conforms(JAX, case)


def test_jax_port_sum_with_zero_total_weight_has_zero_gradient():
    # the port differentiates its mean too: 0 * d(total / 0) once made this gradient NaN
    pytest.importorskip("jax")
    case = Case.cross_entropy(np.array([[2.0, 1.0]]), np.array([1]), weight=np.array([0.0, 0.0]), dtype="float32",
                              reduction="sum")
    outcome = JAX.run(case)
    assert np.array_equal(outcome.grad_input, np.zeros((1, 2)))
    _assert_conforms(JAX, case)


@pytest.mark.parametrize("dtype, held", [("float32", np.float32), ("bfloat16", np.float32), ("float16", np.float32),
                                         ("float64", np.float64)])
def test_torch_outcomes_hold_values_exactly_in_float32_or_float64(torch, dtype, held):
    case = Case.cross_entropy(np.random.default_rng(0).standard_normal((3, 5)), np.array([0, 4, 2]), dtype=dtype,
                              reduction="none")
    outcome = adapters.load_adapter("torch").run(case)
    assert outcome.grad_input.dtype == held and outcome.loss.dtype == held
    x = torch.tensor(case.input, dtype=getattr(torch, dtype), requires_grad=True)
    torch.nn.functional.cross_entropy(x, torch.tensor(case.target), reduction="none").sum().backward()
    assert np.array_equal(outcome.grad_input, x.grad.to(torch.float64).numpy())  # exact, no rounding


def test_a_target_gradient_whose_intermediate_product_overflows_may_be_inf():
    # JAX forms (g log p) (1 - eps): 6.1 * 4.5e307 overflows although the result, 1.4e308, does not;
    # the reference's intermediate bound skipped the overflowing product (a finite-only row max)
    pytest.importorskip("jax")
    case = Case.cross_entropy(np.array([[-1.0, 0.0], [0.0, 4.49423284e+307]]),
                              np.array([[0.56410403, 0.43589597], [0.63077023, 0.36922977]]), dtype="float64",
                              reduction="sum", label_smoothing=0.5, grad_output=np.array(6.12275736))
    outcome = JAX.timed_run(case)
    assert np.isinf(outcome.grad_target[1, 0])
    _assert_conforms(JAX, case)


def test_a_flushed_smoothing_term_of_tiny_weights_is_correct_arithmetic():
    # XLA flushes subnormals: eps / C * w = 0.18 * 1.2e-38 is one, so every smoothing term of the
    # loss vanishes (1.51 for 1.93); the flush bound took only w * log p, never subnormal here
    pytest.importorskip("jax")
    weight = np.array([1.92423923e-38, 1.49262711e-38, 1.22365852e-38, 1.19492251e-38, 2.13148889e-38])
    case = Case.cross_entropy(np.array([2.0, 1.0, 0.0, -2.0, -1.0]), np.array(4), dtype="float32", weight=weight,
                              label_smoothing=0.9)
    assert abs(float(JAX.timed_run(case).loss) - float(reference.evaluate(case).loss)) > 0.1
    _assert_conforms(JAX, case)


def test_torch_compile_budget_skips_configurations_without_a_graph_and_never_runs_them_eagerly(torch, monkeypatch):
    from ce_conformance.adapters.torch_adapter import TorchCompileAdapter, compile_configuration

    monkeypatch.delenv("CE_TORCH_COMPILE_BUDGET", raising=False)
    compiled = TorchCompileAdapter(backend="aot_eager", compile_budget=1e-9)  # spent by the first graph
    first = Case.cross_entropy([[1.0, 2.0, 0.5]], [1])
    another_shape = Case.cross_entropy([[1.0, 2.0, 0.5, 3.0], [0.0, 1.0, 3.0, 2.0]], [1, 3])
    smoothed = Case.cross_entropy([[1.0, 2.0, 0.5]], [1], label_smoothing=0.1)  # a float option: its own graph
    assert compile_configuration(first) == compile_configuration(another_shape) != compile_configuration(smoothed)
    assert compile_configuration(first) != compile_configuration(Case.cross_entropy([[1.0, 2.0, 0.5]], [1],
                                                                                     dtype="bfloat16"))
    assert compiled.run(first).status == "ok" and compiled.compile_seconds > 0
    skipped = compiled.run(smoothed)
    assert skipped.status == "skipped" and "compile budget" in skipped.skip_reason and "not run eagerly" in skipped.skip_reason
    _assert_conforms(compiled, another_shape)  # a configuration that ran keeps running: shapes are symbolic
    assert compiled.budget_skips == 1
    assert TorchCompileAdapter(backend="aot_eager").compile_budget is None  # no budget unless asked


def test_torch_compile_budget_from_the_environment(torch, monkeypatch):
    monkeypatch.setenv("CE_TORCH_COMPILE_BUDGET", "45")
    assert adapters.load_adapter("torch-compile").compile_budget == 45.0
    monkeypatch.setenv("CE_TORCH_COMPILE_BUDGET", "none")
    assert adapters.load_adapter("torch-compile").compile_budget is None
    monkeypatch.setenv("CE_TORCH_COMPILE_BUDGET", "soon")
    with pytest.raises(ConfigurationError, match="CE_TORCH_COMPILE_BUDGET"):
        adapters.load_adapter("torch-compile")


@pytest.fixture(params=["fresh", "recycled"])
def input_memory(request, monkeypatch):
    """The torch adapter's tensors in fresh memory, or (as at vocabulary scale) in recycled buffers."""
    from ce_conformance import buffers

    if request.param == "recycled":
        monkeypatch.setattr(buffers, "MIN_BYTES", 0)
        monkeypatch.setattr(buffers, "_buffers", [])
    return request.param


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided", "offset"])
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("check", ["compared", "fingerprinted"])
def test_torch_adapter_sees_a_write_into_any_chunk_of_its_input(torch, monkeypatch, layout, where, input_memory,
                                                                 check):
    """The mutation check compares the input with the case's values chunk by chunk (no clone), or
    (large contiguous inputs) compares its fingerprints before and after the call: a write
    anywhere, in any memory layout, fresh or recycled, is seen, and an untouched input is not
    flagged."""
    from ce_conformance import engine
    from ce_conformance.adapters import torch_adapter

    if check == "fingerprinted":
        if not engine.available():
            pytest.skip("the numba engine is not available here: inputs are compared, never fingerprinted")
        monkeypatch.setattr(torch_adapter, "FINGERPRINT_MIN_ELEMENTS", 1)
    monkeypatch.setattr(torch_adapter, "MUTATION_CHECK_ELEMENTS", 8)  # rows of 3 classes: chunks of 2 rows
    rng = np.random.default_rng(0)
    case = Case.cross_entropy(rng.standard_normal((7, 3)), rng.integers(0, 3, 7), dtype="bfloat16",
                              memory_layout=layout)

    def writes(input, target, **kwargs):
        loss = torch.nn.functional.cross_entropy(input, target, **kwargs)
        with torch.no_grad():
            input[0 if where == "first" else -1, 1] += 1
        return loss

    written = torch_adapter.TorchAdapter(writes, name="writes").run(case)
    assert written.mutated == ("input",)
    assert torch_adapter.TorchAdapter(torch.nn.functional.cross_entropy).run(case).mutated == ()


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_torch_adapter_fingerprints_only_large_contiguous_inputs(torch, monkeypatch, dtype):
    """On CPU a large contiguous float input is checked by its fingerprints before and after the
    call, one read of the tensor each: torch's chunk-by-chunk comparison with the case's values
    (40 % of the native call at vocabulary scale) is for everything else. Small inputs never use
    the engine (a worker process would load it within a case's time limit)."""
    from ce_conformance import engine
    from ce_conformance.adapters import base, torch_adapter

    if not engine.available():
        pytest.skip("the numba engine is not available here: torch's comparison is the only one")
    rng = np.random.default_rng(0)
    case = Case.cross_entropy(rng.standard_normal((5, 4)), rng.integers(0, 4, 5), dtype=dtype)
    compared = []
    monkeypatch.setattr(torch_adapter, "_bitwise_equal", lambda a, b: compared.append(a.dtype) or torch.equal(a, b))
    taken = []
    monkeypatch.setattr(torch_adapter, "fingerprint",
                        lambda bits, **kwargs: taken.append(bits.dtype) or base.fingerprint(bits, **kwargs))
    assert torch_adapter.TorchAdapter(torch.nn.functional.cross_entropy).run(case).mutated == ()
    assert taken == [] and len(compared) == 2  # below the threshold: torch compares input and target
    compared.clear()
    monkeypatch.setattr(torch_adapter, "FINGERPRINT_MIN_ELEMENTS", 20)
    assert torch_adapter.TorchAdapter(torch.nn.functional.cross_entropy).run(case).mutated == ()
    width = {"float64": np.int64, "float32": np.int32}.get(dtype, np.int16)
    assert taken == [np.dtype(width)] * 2 and compared == [torch.int64]  # before, after; the target is torch's


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_torch_adapter_on_recycled_memory_conforms_and_never_shares_it(torch, monkeypatch, dtype):
    """Vocabulary-scale inputs come from recycled buffers: the values torch sees are the case's,
    and a buffer a live tensor uses is never handed out again."""
    from ce_conformance import buffers
    from ce_conformance.adapters.torch_adapter import to_torch

    monkeypatch.setattr(buffers, "MIN_BYTES", 0)
    monkeypatch.setattr(buffers, "_buffers", [])
    rng = np.random.default_rng(1)
    case = Case.cross_entropy(rng.standard_normal((6, 5)) * 4, rng.integers(0, 5, 6), dtype=dtype,
                              weight=rng.random(5), label_smoothing=0.1)
    _assert_conforms(adapters.load_adapter("torch"), case)
    first = to_torch(case.tensors["input"], "cpu")
    second = to_torch(case.tensors["input"], "cpu")
    assert first.data_ptr() != second.data_ptr()
    assert torch.equal(first, second) and str(first.dtype) == f"torch.{dtype}"
    address = first.data_ptr()
    del first
    assert to_torch(case.tensors["input"], "cpu").data_ptr() == address
    adapter = adapters.load_adapter("torch")
    one, two = adapter.run(case), adapter.run(case)  # a half gradient is widened into recycled memory
    assert not np.shares_memory(one.grad_input, two.grad_input)
    assert dtype in ("float64", "float32") or any(np.shares_memory(one.grad_input, held) for held in buffers._buffers)
    assert np.array_equal(one.grad_input, two.grad_input) and one.grad_input.dtype == np.dtype(
        np.float64 if dtype == "float64" else np.float32)
