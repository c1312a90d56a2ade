"""Properties of an implementation that one call compared with the reference cannot show, checked
after that comparison by running the adapter again: the same call twice (bitwise determinism,
:mod:`ce_conformance.determinism`; a second backward over the same graph,
:mod:`ce_conformance.saved_tensors`) and the case's batch as micro-batches over a shared
normaliser (:mod:`ce_conformance.split`). The runner asks :class:`PropertyChecks` once per
(case, adapter); which phases run what is decided here.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from ce_conformance.adapters.base import Adapter, Outcome

from . import determinism, reference, saved_tensors, split
from .case import Case
from .compare import CHECK_FAMILIES, Comparison, Verdict


class PropertyChecks:
    """The property checks of one case, shared by every adapter: the micro-batches and their
    references are built once. Further calls go through the run's ``executor`` and are counted in
    each adapter's stage of ``stage_seconds``."""

    def __init__(self, case: Case, ref: reference.ReferenceResult | None, phase: str, every_case: bool,
                 executor: Any, stage_seconds: collections.Counter[str]):
        self.case, self.ref, self.phase, self.every_case = case, ref, phase, every_case
        self._executor, self._stages = executor, stage_seconds
        self._parts: Any = None  # (micro-batch cases, their references), or () where the case has none

    def verdicts(self, adapter: Adapter, outcome: Outcome, comparison: Comparison) -> list[Verdict]:
        """Failed properties of ``adapter`` on the case, whose plain run gave ``outcome``, judged in
        ``comparison``. Split invariance is judged only where that found the values and gradients
        right, so that it names what only adding calls up shows (a known dtype finding, such as a
        float32 loss for half inputs, does not stop it)."""
        if outcome.status != "ok" or not determinism.repeats(self.phase, self.every_case):
            return []
        again = self._run(adapter, self.case, saved_tensors.probe_for(adapter, self.case))
        found = [determinism.repeat_verdict(outcome, again), saved_tensors.second_backward_verdict(again)]
        values_right = not any(CHECK_FAMILIES.get(v.check) in ("values", "gradients") for v in comparison.verdicts)
        if values_right and self.ref is not None:
            found.append(self._split_verdict(adapter))
        return [verdict for verdict in found if verdict]

    def _run(self, adapter: Adapter, case: Case, probe: str | None) -> Outcome:
        start = time.perf_counter()
        try:
            return self._executor.run(adapter, case, probe)
        finally:
            self._stages[f"adapter:{adapter.name}"] += time.perf_counter() - start

    def _split_verdict(self, adapter: Adapter) -> Verdict | None:
        if self._parts is None:
            parts = split.micro_batches(self.case)
            self._parts = () if parts is None else (parts, [reference.evaluate(part) for part in parts])
        if not self._parts:
            return None
        parts, references = self._parts
        if any(adapter.capabilities.missing(part) for part in parts):
            return None  # the adapter does not take a normaliser
        outcomes = [self._run(adapter, part, None) for part in parts]
        return split.split_verdict(self.case, self.ref, parts, outcomes, references, adapter.capabilities)
