"""Gating one implementation: run, apply the baseline, explain failures.

The CLI's ``gate`` command and the pytest plugin (``--ce-impl`` and the ``ce_check`` fixture)
are thin layers over :func:`run_gate` and :meth:`GateResult.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .baseline import Baseline, Divergence
from .findings import load_run
from .repro import replay_command
from .runner import FuzzConfig, FuzzRun, RunSummary


@dataclass
class GateResult:
    summary: RunSummary
    findings: pd.DataFrame
    new: pd.DataFrame
    covered: pd.DataFrame
    stale: list[Divergence] = field(default_factory=list)
    baseline_text: str = ""

    @property
    def passed(self) -> bool:
        return self.new.empty

    def report(self, impl_spec: str | None, impl_kind: str | None) -> str:
        """A table of the failing checks (count, first message, worst ULP error, minimal case)
        followed by one replay command per case."""
        if self.new.empty:
            return ""
        rows, replays = [], []
        for (adapter, check), group in self.new.groupby(["adapter", "check"], sort=True):
            info = self.summary.signatures.get((adapter, check), {})
            case = info.get("shrunk_case") or info.get("first_case") or next(
                (p for p in group["case_path"] if isinstance(p, str) and p), "")
            worst = group["max_ulp_error"].max()
            rows.append((check, len(group), "" if pd.isna(worst) else f"{worst:.3g}",
                         str(info.get("message", group["message"].iloc[0]))[:110], case))
            if case:
                replays.append(replay_command(case, adapter, impl_spec, impl_kind))
        table = pd.DataFrame(rows, columns=["check", "findings", "worst ulp", "first message", "minimal case"])
        lines = [table.to_string(index=False)]
        minimal = [r[4] for r in rows if r[4]]
        if minimal:
            from .case import Case

            unique = {case.id: case for case in (Case.load(p) for p in dict.fromkeys(minimal))}
            lines += ["", "minimal case(s):"] + [f"  {case!r}" for case in unique.values()]
        if replays:
            lines += ["", "replay:"] + [f"  {r}" for r in dict.fromkeys(replays)]
        return "\n".join(lines)


def run_gate(config: FuzzConfig, baseline: Baseline | None = None) -> GateResult:
    summary = FuzzRun(config).run()
    _, findings = load_run(summary.out_dir)
    if baseline is None:
        return GateResult(summary, findings, findings, findings.iloc[0:0])
    applied = baseline.apply(findings)
    return GateResult(summary, findings, applied.new, applied.covered, applied.stale, applied.describe())
