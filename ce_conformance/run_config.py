"""What a fuzz run is given and what it returns: :class:`FuzzConfig`, :class:`RunSummary`, the
executor protocol, and the checks a configuration must pass before anything runs (the loss
family and its adapters, the ``--oracle``). :mod:`ce_conformance.runner` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ce_conformance.adapters.base import Adapter, Outcome

from .case import Case
from .errors import ConfigurationError

DEFAULT_CURATED_DIR = Path(__file__).resolve().parent.parent / "cases" / "curated"


class Executor:
    """Runs one adapter on one case. The in-process executor calls it directly; isolating
    executors (worker processes with timeouts) implement the same method."""

    def run(self, adapter: Adapter, case: Case, probe: str | None = None) -> Outcome:
        """``probe``: one of the adapter's :attr:`~ce_conformance.adapters.base.Adapter.probes`."""
        return adapter.timed_run(case, probe)

    def close(self) -> None:
        pass


@dataclass
class FuzzConfig:
    adapters: list[Adapter]
    profile: str = "ci"
    max_examples: int | None = None
    seed: int = 0
    out_dir: Path = Path("ce-out")
    cases_dir: Path | None = None
    curated_dirs: list[Path] = field(default_factory=lambda: [DEFAULT_CURATED_DIR])
    explore: bool = True
    shrink: bool = True
    shrink_seconds: float = 60.0
    strict: bool = False
    oracle: str = "reference"
    database_dir: Path | None = None
    invalid_percent: int = 15
    progress: bool = True
    executor: Executor | None = None
    timeout: float = 60.0
    memory_mb: int | None = 8192
    isolate: str = "default"
    title: str = "ce-conformance fuzz"
    extra_cases: list[Case] = field(default_factory=list)
    impl_spec: str | None = None
    impl_kind: str | None = None
    require: frozenset[str] = frozenset()
    plain: bool = False
    partition: tuple[int, int] | None = None  # (r, n): evaluate only drawn cases whose id % n == r
    dtypes: tuple[str, ...] | None = None
    covering: int | None = None  # strength of the covering phase; None: the profile's, 0: off
    max_seconds: float | None = None  # --max-time: the whole run, tables included
    cell_shares: dict[str, float] | None = None  # --cell-share; None: the profile's (budget.NIGHTLY_SHARES)
    family: str = "cross_entropy"  # --family: the loss family whose cases are drawn
    deterministic: bool = False  # --deterministic: every case runs twice (else the curated and covering ones)


@dataclass
class RunSummary:
    out_dir: Path
    results: int
    findings: int
    signatures: dict[tuple[str, str], dict[str, Any]]
    interrupted: str | None
    summary_markdown: str
    seconds: float
    jax_compilations: dict[str, int]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    examples: int = 0
    first_finding_seconds: float | None = None
    oracle: str = "reference"
    out_of_time: bool = False  # stopped at --max-time
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)  # adapter -> torch device, where not the CPU
    finding_families: dict[str, int] = field(default_factory=dict)  # findings per check family

    def gating_findings(self, checks: "frozenset[str] | None" = None) -> int:
        """Findings of the check families that fail a run (default: all but ``determinism``)."""
        from .selection import DEFAULT_CHECKS

        checks = DEFAULT_CHECKS if checks is None else checks
        return sum(n for family, n in self.finding_families.items() if family in checks or family == "other")

    @property
    def conformant(self) -> bool:
        """No finding of a family that fails a run by default (``determinism`` is reported)."""
        return self.gating_findings() == 0


def oracle_adapter(oracle: str, family: str = "cross_entropy") -> Adapter | None:
    """The adapter whose result widens the budgets (``--oracle torch``: torch's own function of
    the loss family, on the CPU), None for the reference."""
    if oracle not in ("reference", "torch"):
        raise ConfigurationError(f"unknown oracle {oracle!r}; expected 'reference' or 'torch'")
    if oracle == "reference":
        return None
    from ce_conformance.adapters import TORCH_ORACLES, load_adapter

    adapter = load_adapter(TORCH_ORACLES[family])
    if adapter.availability():
        raise ConfigurationError(f"--oracle torch needs torch: {adapter.availability()}")
    return adapter


def check_family(config: FuzzConfig) -> None:
    """Every adapter of a run must run its loss family: a cross-entropy kernel handed linear
    cross-entropy cases would only skip them, and a gate that skips everything must not pass."""
    from .family import family_named

    family_named(config.family)
    wrong = [f"{a.name} ({', '.join(sorted(a.capabilities.families))})" for a in config.adapters
             if config.family not in a.capabilities.families]
    if wrong:
        raise ConfigurationError(f"--family {config.family}: adapter(s) of another loss family: {'; '.join(wrong)}")


def write_config(out_dir: Path, config: FuzzConfig, devices: dict[str, str], cell_shares: Any) -> None:
    """``config.json`` of a run: what it was given and the versions it ran with (reports and
    ``nightly`` diffs read it)."""
    import json
    import platform
    import time

    import hypothesis
    import numpy

    from . import engine
    from ._version import __version__

    versions: dict[str, str] = {"ce-conformance": __version__, "python": platform.python_version(),
                                "numpy": numpy.__version__, "hypothesis": hypothesis.__version__}
    for adapter in config.adapters:
        try:
            versions.update(adapter.versions())
        except Exception:  # a report line, never a reason to fail the run
            pass
    written = {"family": config.family, "seed": config.seed, "profile": config.profile,
               "max_examples": config.max_examples, "adapters": [a.describe() for a in config.adapters],
               "strict": config.strict, "deterministic": config.deterministic, "oracle": config.oracle,
               "impl": config.impl_spec, "kind": config.impl_kind, "devices": devices, "versions": versions,
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "engine": engine.name(),
               "cell_shares": cell_shares}
    (out_dir / "config.json").write_text(json.dumps(written, indent=1, default=str))
