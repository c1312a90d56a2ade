"""A run's book of failures: result and finding rows, failure signatures, saved cases.

The runner decides *what* to evaluate; the ledger decides what a verdict becomes: a row in
the findings table, a new signature (adapter, check) with its first case saved beside a repro
script, and later that signature's shrunk case. Every saved case describes itself: its
``note`` and its repro script's header quote the verdict on that very case.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .case import Case
from .compare import CHECK_FAMILIES, Comparison, Verdict
from .findings import Recorder, finding_signature
from .repro import write_repro

if TYPE_CHECKING:
    from ce_conformance.adapters.base import Outcome


def slug(text: str) -> str:
    """A file-name-safe form of an adapter name, at most 60 characters (with the check and case
    id the saved file's name stays far below file-system limits).

    >>> slug("impl:my/kernel.py:ce")
    'impl-my-kernel-py-ce'
    """
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:60]


class FindingLedger:
    """Signatures (adapter, check) -> first case, shrunk case, messages, counts; and the rows."""

    def __init__(self, recorder: Recorder, cases_dir: Path, *, impl_spec: str | None = None,
                 impl_kind: str | None = None, oracle: str = "reference", started: float | None = None,
                 devices: dict[str, str] | None = None, frameworks: dict[str, Any] | None = None):
        """``frameworks``: the run's framework adapters by name, whose repro scripts are written
        in their framework's API."""
        self.recorder = recorder
        self.devices = devices or {}
        self.frameworks = frameworks or {}
        self.cases_dir = Path(cases_dir)
        self.impl_spec, self.impl_kind, self.oracle = impl_spec, impl_kind, oracle
        self.signatures: dict[tuple[str, str], dict[str, Any]] = {}
        self.first_finding_seconds: float | None = None
        self._started = time.perf_counter() if started is None else started

    def skipped(self, columns: dict[str, Any], adapter_name: str, phase: str, reasons: tuple[str, ...]) -> None:
        self.recorder.result({**result_base(columns, adapter_name, phase), "status": "skipped",
                              "skip_reason": ",".join(reasons)})

    def record(self, case: Case, columns: dict[str, Any], adapter_name: str, outcome: "Outcome",
               comparison: Comparison, phase: str, case_path: str) -> None:
        """A result row, and per failed check a finding row; a new signature saves its case."""
        status = "passed" if comparison.passed else "failed"
        self.recorder.result({**result_base(columns, adapter_name, phase), "status": status, "skip_reason": "",
                              "loss_ulp": comparison.max_ulp.get("loss"),
                              "grad_input_ulp": comparison.max_ulp.get("grad_input"),
                              "grad_target_ulp": comparison.max_ulp.get("grad_target"),
                              "budget_ratio": max(comparison.max_ratio.values(), default=None),
                              "seconds": outcome.seconds})
        for verdict in comparison.verdicts:
            key = (adapter_name, verdict.check)
            path = case_path
            if key not in self.signatures:  # a curated case too: the run keeps a copy and its repro script
                path = str(self.save_case(case, adapter_name, verdict))
                self.signatures[key] = {"count": 0, "first_case": path, "shrunk_case": "", "message": verdict.message,
                                        "shrunk_message": "", "explored": False}
            self.signatures[key]["count"] += 1
            if phase == "explore":
                self.signatures[key]["explored"] = True
            if self.first_finding_seconds is None:
                self.first_finding_seconds = time.perf_counter() - self._started
            self.recorder.finding({
                **columns, "adapter": adapter_name, "check": verdict.check,
                "family": CHECK_FAMILIES.get(verdict.check, "other"), "max_abs_error": verdict.max_abs_error,
                "max_ulp_error": verdict.max_ulp_error, "budget": verdict.budget, "message": verdict.message,
                "case_path": path, "phase": phase,
                "signature": finding_signature(adapter_name, verdict.check, columns["dtype"], columns["features"]),
            })

    def save_case(self, case: Case, adapter_name: str, verdict: Verdict) -> Path:
        """Save ``case`` (found failing ``verdict`` with ``adapter_name``) and its repro script."""
        name = f"{slug(adapter_name)}__{verdict.check}__{case.id}"
        note = f"{adapter_name}: {verdict.check}: {verdict.message}"[:1000]
        path = dataclasses.replace(case, note=note).save(self.cases_dir / f"{name}.json")
        write_repro(path.with_suffix(".py"), case, adapter_name=adapter_name, check=verdict.check,
                    message=verdict.message, case_path=path, impl_spec=self.impl_spec, impl_kind=self.impl_kind,
                    oracle=self.oracle, device=self.devices.get(adapter_name, "cpu"),
                    framework=self.frameworks.get(adapter_name))
        return path

    def save_shrunk(self, case: Case, adapter_name: str, verdict: Verdict) -> Path:
        """Save a signature's minimal case; its message replaces the first case's in reports."""
        path = self.save_case(case, adapter_name, verdict)
        info = self.signatures[(adapter_name, verdict.check)]
        info.update(shrunk_case=str(path), shrunk_message=verdict.message)
        return path


def result_base(columns: dict[str, Any], adapter: str, phase: str) -> dict[str, Any]:
    return {"case_id": columns["case_id"], "adapter": adapter, "dtype": columns["dtype"], "layout": columns["layout"],
            "reduction": columns["reduction"], "features": columns["features"], "phase": phase,
            "cell": columns["cell"], "shape": columns["shape"]}
