"""The fuzz loop: one case at a time through every adapter, compared, recorded.

Data flows one way: case -> adapters -> comparison -> findings (streamed) -> tables. The
phases that choose the cases (curated, covering, explore, shrink) live in
:mod:`ce_conformance.phases`, what a verdict becomes (rows, signatures, saved cases) in
:mod:`ce_conformance.ledger`, what a run is given and returns (:class:`FuzzConfig`,
:class:`RunSummary`) in :mod:`ce_conformance.run_config`; this module owns evaluation and the
run's summary.
"""

from __future__ import annotations

import collections
import json
import math
import time

import numpy as np
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ce_conformance.adapters.base import Adapter, Outcome

from . import phases, reference
from .budget import NIGHTLY_SHARES, CellBudget
from .case import Case
from .control import Interrupted, OutOfTime, interrupt_guard
from .compare import Comparison, compare, compare_pair
from .errors import ConfigurationError, InvalidInputError
from .findings import Recorder, case_columns, finalize
from .ledger import FindingLedger
from .profiles import settings_for
from .properties import PropertyChecks
from .quarantine import Quarantine, case_traits
from .run_config import (DEFAULT_CURATED_DIR, Executor, FuzzConfig, RunSummary, write_config,  # noqa: F401  (the run's API)
                         check_family, oracle_adapter)

GUARDED_PHASES = ("curated", "covering", "explore")
"""Phases that choose cases, and so skip quarantined ones; shrinking must reproduce instead."""



class FuzzRun:
    def __init__(self, config: FuzzConfig, *, append: bool = False, pairs: list[tuple[str, str]] | None = None):
        """``append``: add to the run directory's streams (nightly slices) instead of replacing them.
        ``pairs``: adapter name pairs (a, b) also compared with each other (pairwise mode)."""
        self.config = config
        self.append = append
        check_family(config)
        self.pairs = [tuple(p) for p in (pairs or [])]
        unavailable = {a.name: a.availability() for a in config.adapters if a.availability()}
        self.unavailable = unavailable
        self.adapters = [a for a in config.adapters if a.name not in unavailable]
        self.devices = {a.name: str(a.device) for a in self.adapters if str(getattr(a, "device", "cpu")) != "cpu"}
        if not self.adapters:
            reasons = "; ".join(f"{k}: {v}" for k, v in unavailable.items())
            raise ConfigurationError(f"no usable adapter ({reasons})")
        self.out_dir = Path(config.out_dir)
        self.cases_dir = Path(config.cases_dir) if config.cases_dir else self.out_dir / "cases"
        if config.executor is not None:
            self.executor = config.executor
        else:
            from .isolation import WorkerExecutor

            self.executor = WorkerExecutor(timeout=config.timeout, memory_mb=config.memory_mb, isolate=config.isolate,
                                           log_dir=config.out_dir / "workers")
        self.recorder: Recorder | None = None
        self.ledger: FindingLedger | None = None  # signatures and saved cases, from run()
        self._native_cache: dict[str, Outcome] = {}
        self._torch_reference = oracle_adapter(config.oracle, config.family)
        self._progress: Callable[[], None] = lambda: None
        self.stage_seconds: collections.Counter[str] = collections.Counter()
        self._curated: list[tuple[Case, str]] | None = None
        self._covering: list[Case] | None = None
        self.examples = 0
        self._started = time.perf_counter()
        self.quarantine = Quarantine()
        shares = config.cell_shares
        self.cell_budget = CellBudget(NIGHTLY_SHARES if shares is None and config.profile == "nightly" else shares)
        self._deadline = math.inf

    @property
    def signatures(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(adapter, check) -> first case, shrunk case, messages, counts (see :mod:`.ledger`)."""
        return self.ledger.signatures if self.ledger else {}

    # -- evaluation of one case ----------------------------------------------------------------
    def _reference(self, case: Case) -> reference.ReferenceResult | None:
        if not case.is_valid:
            return None
        try:
            return reference.evaluate(case)
        except InvalidInputError as exc:  # a suite bug: generated "valid" case the reference refuses
            raise RuntimeError(f"reference refused a case marked valid: {case!r}: {exc}") from exc

    def _native(self, case: Case) -> Outcome | None:
        if self._torch_reference is None or not case.is_valid:
            return None
        if case.id not in self._native_cache:
            self._native_cache = {case.id: self._torch_reference.timed_run(case)}
        return self._native_cache[case.id]

    def check_time(self) -> None:
        """Raise :class:`OutOfTime` once ``--max-time`` is spent (called between cases)."""
        if time.perf_counter() > self._deadline:
            raise OutOfTime()

    def time_left(self) -> float:
        return self._deadline - time.perf_counter()

    def evaluate(self, case: Case, phase: str, adapters: list[Adapter] | None = None,
                 record: bool = True, case_path: str = "") -> list[tuple[Adapter, Comparison]]:
        """Run ``case`` through the adapters and judge it. In the case-choosing phases (curated,
        covering, explore) quarantined traits are skipped and timeouts/crashes feed the quarantine;
        shrinking must reproduce, so it ignores the quarantine."""
        clock = time.perf_counter
        guarded = phase in GUARDED_PHASES
        traits = case_traits(case.features, case.dtype)
        stages = self.stage_seconds
        start = clock()
        with np.errstate(all="ignore"):  # overflow in magnitudes is expected at the dtype's edges
            ref = self._reference(case)
        columns = case_columns(case)
        stages["reference"] += clock() - start
        compared = []
        outcomes: dict[str, tuple[Adapter, Outcome]] = {}
        properties = PropertyChecks(case, ref, phase, self.config.deterministic, self.executor, stages)
        paired = {name for pair in self.pairs for name in pair} if record else set()
        for adapter in adapters or self.adapters:
            missing = adapter.capabilities.missing(case)
            quarantined = self.quarantine.blocks(adapter.name, traits) if guarded and not missing else None
            if quarantined:
                missing = (quarantined,)
            if missing:
                if record:
                    self.ledger.skipped(columns, adapter.name, phase, missing)
                continue
            start = clock()
            outcome = self.executor.run(adapter, case)
            if paired and adapter.name in paired:  # kept for the pairwise comparison only: at vocabulary
                outcomes[adapter.name] = (adapter, outcome)  # scale each outcome holds a gigabyte
            if guarded:
                self.quarantine.observe(adapter.name, outcome.status, traits)
            stages[f"adapter:{adapter.name}"] += clock() - start
            if outcome.status == "skipped":  # the adapter cannot run it here (a dtype its framework lacks)
                if record:
                    self.ledger.skipped(columns, adapter.name, phase, (outcome.skip_reason,))
                continue
            start = clock()
            with np.errstate(all="ignore"):
                comparison = compare(case, outcome, ref, adapter.capabilities, strict=self.config.strict,
                                     native=self._native(case))
            stages["compare"] += clock() - start
            comparison.verdicts += properties.verdicts(adapter, outcome, comparison)
            compared.append((adapter, comparison))
            if record:
                start = clock()
                self.ledger.record(case, columns, adapter.name, outcome, comparison, phase, case_path)
                stages["record"] += clock() - start
        if record:
            for a, b in self.pairs:
                if a in outcomes and b in outcomes:
                    first, second = outcomes[a][1], outcomes[b][1]
                    unrun = [o.skip_reason for o in (first, second) if o.status == "skipped"]
                    if unrun:  # one side did not run (a compile budget, a dtype): nothing to compare
                        self.ledger.skipped(columns, f"{a}~{b}", phase, tuple(unrun))
                        continue
                    comparison = compare_pair(case, first, second, ref, outcomes[b][0].capabilities)
                    self.ledger.record(case, columns, f"{a}~{b}", second, comparison, phase, case_path)
        return compared

    def defer(self, case: Case, reason: str) -> None:
        """Record a drawn case the cell budget left out, as skipped for every adapter."""
        columns = case_columns(case)
        for adapter in self.adapters:
            self.ledger.skipped(columns, adapter.name, "explore", (reason,))

    # -- phases (ce_conformance.phases) ------------------------------------------------------
    def _curated_cases(self) -> list[tuple[Case, str]]:
        if self._curated is None:
            self._curated = phases.load_curated(self.config)
        return self._curated

    def _covering_cases(self) -> list[Case]:
        if self._covering is None:
            self._covering = phases.covering_cases(self.config, self.adapters)
        return self._covering

    def run(self) -> RunSummary:
        start = self._started = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.recorder = Recorder(self.out_dir, append=self.append)
        self.ledger = FindingLedger(self.recorder, self.cases_dir, impl_spec=self.config.impl_spec,
                                    impl_kind=self.config.impl_kind, oracle=self.config.oracle, started=start,
                                    devices=self.devices,
                                    frameworks={a.name: a for a in self.adapters
                                                if hasattr(a, "bridge") or getattr(a, "source", None)})
        write_config(self.out_dir, self.config, self.devices, self.cell_budget.shares)
        if self.config.max_seconds is not None:
            self._deadline = start + self.config.max_seconds
        interrupted: str | None = None
        out_of_time = False
        probe_state: dict[str, Any] = {}
        try:
            with interrupt_guard(), self._progress_bar() as advance:
                self._progress = advance
                try:
                    for case, path in self._curated_cases():
                        self.check_time()
                        self.evaluate(case, "curated", case_path=path)
                        advance()
                    for case in self._covering_cases():
                        self.check_time()
                        self.evaluate(case, "covering")
                        advance()
                    if self.config.explore:
                        phases.explore(self, probe_state)
                except OutOfTime:
                    out_of_time = True
                if self.config.shrink and self.config.explore and self.time_left() > 0:
                    phases.shrink_all(self, probe_state)
        except Interrupted as exc:
            interrupted = exc.signal_name
        finally:
            self.executor.close()
            self.recorder.close()
        compilations = {a.name: a.compilations for a in self.adapters if hasattr(a, "compilations")}
        extra = {"family": self.config.family, "seed": self.config.seed, "profile": self.config.profile,
                 "adapters": ", ".join(a.name for a in self.adapters)}
        if self.unavailable:
            extra["unavailable"] = "; ".join(f"{k} ({v})" for k, v in self.unavailable.items())
        if compilations:
            extra["JAX compilations"] = ", ".join(f"{k}: {v}" for k, v in compilations.items())
        if interrupted:
            extra["status"] = f"INTERRUPTED ({interrupted}) — tables hold what was done before the signal"
        elif out_of_time:
            extra["status"] = (f"STOPPED at --max-time {self.config.max_seconds:g} s after {self.examples} drawn "
                               "examples — tables hold what was done")
        quarantined = self.quarantine.summary()
        if quarantined:
            extra["quarantined"] = "; ".join(f"{q['adapter']}: {q['quarantine']} ({q['hits']} seen, then "
                                             f"{q['skipped']} cases skipped)" for q in quarantined)
        restarts = getattr(self.executor, "restarts", {})
        if restarts:
            extra["worker restarts"] = ", ".join(f"{k}: {v}" for k, v in restarts.items())
        not_isolated = getattr(self.executor, "not_isolated", {})
        if not_isolated:
            extra["ran in-process"] = "; ".join(f"{k} ({v})" for k, v in not_isolated.items())
        summary = finalize(self.out_dir, title=self.config.title, extra=extra,
                           not_applicable=phases.excluded(self.config, self.adapters))
        (self.out_dir / "signatures.json").write_text(json.dumps(
            [{"adapter": k[0], "check": k[1], **v} for k, v in self.signatures.items()], indent=1))
        return RunSummary(self.out_dir, self.recorder.result_count, self.recorder.finding_count, self.signatures,
                          interrupted, summary, time.perf_counter() - start, compilations,
                          dict(self.stage_seconds), self.examples, self.ledger.first_finding_seconds,
                          self.config.oracle, out_of_time, quarantined, self.devices,
                          dict(self.recorder.family_counts))

    @contextmanager
    def _progress_bar(self) -> Iterator[Callable[[], None]]:
        if not self.config.progress:
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        total = settings_for(self.config.profile, max_examples=self.config.max_examples).max_examples
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("findings: {task.fields[findings]}"), TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("fuzzing", total=total + len(self._curated_cases()) + len(self._covering_cases()),
                                findings=0)
            yield lambda: bar.update(task, advance=1, findings=self.recorder.finding_count if self.recorder else 0)
