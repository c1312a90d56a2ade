"""pytest plugin (entry point ``pytest11``): conformance tests inside a kernel project's suite.

* ``pytest --ce-impl SPEC`` adds the packaged conformance suite: one test per feature family
  (``test_feature_family[weights]``, ``[ignore_index]``, ``[probability_targets]`` ...), so a
  failing test id names the broken feature.
* The ``ce_check`` fixture checks a function from a user test:
  ``ce_check(my_cross_entropy, features=["weights"], dtypes=["bfloat16"])``; a failure message
  holds the shrunk case, the error in ULPs and the replay command.

Options live in their own ``ce-conformance`` group of ``pytest --help``; every option has an
ini-file twin (``ce_impl``, ``ce_kind``, ``ce_device``, ``ce_profile``, ``ce_baseline``, ``ce_features``,
``ce_dtypes``, ``ce_checks``, ``ce_seed``, ``ce_max_examples``, ``ce_out``, ``ce_database``). The fixture and the suite are thin
layers over :func:`conformance.gate.run_gate`; runs are deterministic per seed, so they give the
same findings under ``pytest -n auto``.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

FEATURE_FAMILIES: dict[str, tuple[frozenset[str], bool]] = {
    # test id: (features every case exercises, plain: every other optional feature off)
    "basics": (frozenset(), True),
    "weights": (frozenset({"weights"}), False),
    "ignore_index": (frozenset({"ignore_index"}), False),
    "all_ignored": (frozenset({"all_ignored"}), False),
    "label_smoothing": (frozenset({"label_smoothing"}), False),
    "probability_targets": (frozenset({"probability_targets"}), False),
    "k_dim": (frozenset({"k_dim"}), True),
    "unbatched": (frozenset({"unbatched"}), True),
    "low_precision": (frozenset({"low_precision"}), True),
    "vocab_scale": (frozenset({"vocab_scale"}), True),
    "gradients": (frozenset({"upstream_gradient"}), True),
    "non_contiguous": (frozenset({"non_contiguous"}), True),
    "nonfinite_logits": (frozenset({"nonfinite_logits"}), True),
    "invalid_inputs": (frozenset({"invalid_input"}), False),
}
"""Test id -> (features every case of that test exercises, whether all other optional features
are off). The semantic options (weights, ignore_index, smoothing, soft targets) mix with the
rest, since their bugs live in their interactions; the structural families (shapes, dtypes,
layouts, upstream gradients, -inf logits) vary one thing, so a failing id names the culprit."""

SUITE_PATH = Path(__file__).with_name("conformance_suite.py")
_OPTIONS = {
    # name: (help, default)
    "impl": ("implementation to test: module.path:function or path/to/file.py:function", None),
    "kind": ("what the implementation takes: torch (default), jax or numpy", "torch"),
    "family": ("the implementation's loss family: cross_entropy (default) or linear_cross_entropy "
               "(F.linear_cross_entropy's signature)", "cross_entropy"),
    "device": ("where a torch implementation's tensors live: cpu (default), cuda, cuda:1 ...; tests skip with "
               "the reason where that device is missing", "cpu"),
    "profile": ("settings profile: dev, ci (default) or nightly", None),
    "baseline": ("known-divergence baseline (TOML path or shipped name) for --ce-impl", None),
    "features": ("features to test: default, all, or a comma-separated list ('-name' takes one away)", None),
    "dtypes": ("dtypes to draw cases in (default all; e.g. float32,bfloat16 or -float64)", None),
    "checks": ("check families that fail a test (default: errors,contract,values,gradients,mutation; 'all' adds "
               "determinism); the others are still run and reported", None),
    "seed": ("Hypothesis seed (default 0)", "0"),
    "max-examples": ("examples per feature family (default: the profile's)", None),
    "out": ("directory for run tables and saved cases (default: <rootdir>/.ce-conformance)", None),
    "database": ("persistent Hypothesis example database directory", None),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ce-conformance", "cross-entropy conformance (ce-conformance)")
    for name, (help_text, _) in _OPTIONS.items():
        group.addoption(f"--ce-{name}", dest=f"ce_{name.replace('-', '_')}", default=None, help=help_text)
        parser.addini(f"ce_{name.replace('-', '_')}", help_text, default=None)


def _setting(config: pytest.Config, name: str) -> Any:
    key = f"ce_{name.replace('-', '_')}"
    value = config.getoption(key, default=None)
    if value is None:
        value = config.getini(key) or None
    if value is None and name == "profile":
        value = os.environ.get("CE_PROFILE")
    return value if value is not None else _OPTIONS[name][1]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ce_conformance: a ce-conformance feature-family test")
    if _setting(config, "impl") and str(SUITE_PATH) not in config.args:
        config.args.append(str(SUITE_PATH))


class ConformanceSession:
    """What the suite and the fixture share: resolved options and the run machinery."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.profile = _setting(config, "profile") or "ci"
        self.seed = int(_setting(config, "seed"))
        max_examples = _setting(config, "max-examples")
        hypothesis_profile = config.getoption("hypothesis_profile", default=None)
        if max_examples is None and hypothesis_profile:
            from hypothesis import settings

            if hypothesis_profile in ("dev", "ci", "nightly"):
                self.profile = hypothesis_profile
            else:
                max_examples = settings.get_profile(hypothesis_profile).max_examples
        self.max_examples = int(max_examples) if max_examples is not None else None
        out = _setting(config, "out")
        self.out_dir = Path(out) if out else Path(config.rootpath) / ".ce-conformance"
        database = _setting(config, "database")
        self.database = Path(database) if database else None
        from .selection import parse_checks, parse_dtypes

        self.dtypes = parse_dtypes(_setting(config, "dtypes"))
        self.checks = parse_checks(_setting(config, "checks"))

    def run(self, adapter: Any, *, name: str, require: frozenset[str] = frozenset(), plain: bool = False,
            family: str = "cross_entropy",
            dtypes: Sequence[str] | None = None, baseline: Any = None, impl_spec: str | None = None,
            impl_kind: str | None = None, max_examples: int | None = None, seed: int | None = None,
            checks: Sequence[str] | str | None = None):
        """Gate ``adapter``; ``dtypes`` and ``checks`` default to the session's options."""
        from .gate import run_gate
        from .runner import DEFAULT_CURATED_DIR, FuzzConfig
        from .selection import parse_checks, parse_dtypes

        config = FuzzConfig(adapters=[adapter], profile=self.profile,
                            max_examples=max_examples or self.max_examples, seed=self.seed if seed is None else seed,
                            out_dir=self.out_dir / _slug(name), database_dir=self.database, progress=False,
                            curated_dirs=[DEFAULT_CURATED_DIR], require=frozenset(require), plain=plain,
                            dtypes=parse_dtypes(dtypes) if dtypes else self.dtypes, shrink_seconds=30.0,
                            title=f"ce-conformance: {name}", impl_spec=impl_spec, impl_kind=impl_kind, family=family)
        return run_gate(config, baseline, parse_checks(checks) if checks else self.checks)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80] or "run"


@pytest.fixture(scope="session")
def ce_session(request: pytest.FixtureRequest) -> ConformanceSession:
    return ConformanceSession(request.config)


@pytest.fixture
def ce_check(ce_session: ConformanceSession, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``ce_check(fn, *, kind="torch", device=None, features=None, dtypes=None, checks=None,
    max_examples=None, seed=None, baseline=None, family="cross_entropy")``: fuzz ``fn`` against the
    reference of its loss family (``linear_cross_entropy`` for a fused head); fail the
    test with the shrunk case, the error in ULPs and the replay command when it diverges. Returns
    the :class:`GateResult`.

    ``device`` puts a torch ``fn``'s tensors on that device (``"cuda"`` for a CUDA/Triton kernel;
    default ``--ce-device``, else the CPU); the test skips with the reason where it is missing.
    ``features`` restricts the features ``fn`` is tested on ("default", "all", a list, "-name"
    to subtract); ``dtypes`` the dtypes; ``checks`` the check families that fail the test (the
    others are reported in ``result.reported``)."""
    from ce_conformance.adapters import function_adapter
    from .baseline import Baseline

    def check(fn: Callable[..., Any], *, kind: str = "torch", device: str | None = None,
              features: str | Sequence[str] | None = None, dtypes: Sequence[str] | str | None = None,
              checks: Sequence[str] | str | None = None, max_examples: int | None = None, seed: int | None = None,
              baseline: str | Path | None = None, family: str = "cross_entropy"):
        spec = _spec_of(fn)
        feature_text = ",".join(features) if isinstance(features, (list, tuple, set, frozenset)) else features
        device = device or (_setting(request.config, "device") if kind == "torch" else "cpu")
        adapter = function_adapter(fn, kind, features=feature_text, name=f"impl:{spec or fn.__name__}",
                                   device=device, family=family)
        skip_unavailable(adapter)
        result = ce_session.run(adapter, name=f"{request.node.name}-{fn.__name__}", dtypes=dtypes,
                                baseline=Baseline.load(baseline) if baseline else None, impl_spec=spec,
                                impl_kind=kind, max_examples=max_examples, seed=seed, checks=checks, family=family)
        if not result.passed:
            from .case import FAMILIES

            pytest.fail(f"{getattr(fn, '__name__', fn)} diverges from {FAMILIES[family].torch_function}: "
                        f"{len(result.new)} finding(s)\n\n{result.report(spec, kind)}", pytrace=False)
        warn_reported(result, getattr(fn, "__name__", str(fn)))
        return result

    return check


def skip_unavailable(adapter: Any) -> None:
    """Skip the test, with the reason, where the adapter cannot run here (no GPU, no torch)."""
    reason = adapter.availability()
    if reason:
        pytest.skip(f"{adapter.name}: {reason}")


class ConformanceReported(UserWarning):
    """Findings of check families a test does not gate on (``--ce-checks``): shown, not failing."""


def warn_reported(result: Any, name: str) -> None:
    """Surface non-gating findings in pytest's warnings summary."""
    import warnings

    text = result.reported_text()
    if text:
        warnings.warn(ConformanceReported(f"{name}: {text}"), stacklevel=2)


def _spec_of(fn: Callable[..., Any]) -> str | None:
    """``path/to/file.py:qualname`` when the function can be imported back, for replay commands."""
    try:
        source = inspect.getsourcefile(fn)
    except TypeError:
        return None
    qualname = getattr(fn, "__qualname__", "")
    if not source or not qualname or "<locals>" in qualname:
        return None
    return f"{source}:{qualname}"
