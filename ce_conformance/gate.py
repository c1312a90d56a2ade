"""Gating one implementation: run, apply the baseline, explain failures.

The CLI's ``gate`` command and the pytest plugin (``--ce-impl`` and the ``ce_check`` fixture)
are thin layers over :func:`run_gate` and :meth:`GateResult.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from .baseline import Baseline, Divergence
from .findings import load_run
from .repro import replay_command
from .runner import FuzzConfig, FuzzRun, RunSummary
from .selection import CHECK_FAMILY_NAMES, DEFAULT_CHECKS

if TYPE_CHECKING:
    from .console import Block


@dataclass
class GateResult:
    """``new``: findings that fail the gate (not covered by the baseline, in a gating check
    family); ``reported``: new findings of the families left out by ``--checks``, shown but not
    failing; ``covered``: findings the baseline explains."""

    summary: RunSummary
    findings: pd.DataFrame
    new: pd.DataFrame
    covered: pd.DataFrame
    stale: list[Divergence] = field(default_factory=list)
    baseline_text: str = ""
    reported: pd.DataFrame | None = None
    gating: frozenset[str] = DEFAULT_CHECKS

    @property
    def passed(self) -> bool:
        return self.new.empty

    def reported_text(self) -> str:
        """One line naming the findings that ran but do not gate (empty when there are none)."""
        if self.reported is None or self.reported.empty:
            return ""
        counts = self.reported.groupby("check").size().to_dict()
        return (f"reported, not gating (--checks {','.join(f for f in CHECK_FAMILY_NAMES if f in self.gating)}): "
                + ", ".join(f"{check} x{n}" for check, n in sorted(counts.items())))

    def report(self, impl_spec: str | None, impl_kind: str | None, *, findings: pd.DataFrame | None = None,
               class_axis: int = 1) -> str:
        """A table of the failing checks (count, worst ULP error, the minimal case's message,
        minimal case) followed by the minimal cases and one replay command per case;
        ``findings`` defaults to ``new``."""
        return blocks_text(self.report_blocks(impl_spec, impl_kind, findings=findings, class_axis=class_axis))

    def report_blocks(self, impl_spec: str | None, impl_kind: str | None, *,
                      findings: pd.DataFrame | None = None, class_axis: int = 1) -> "list[Block]":
        """:meth:`report` as console blocks (a table, the minimal cases, the replay commands)."""
        from .console import Block

        findings = self.new if findings is None else findings
        if findings.empty:
            return []
        rows, replays = [], []
        for (adapter, check), group in findings.groupby(["adapter", "check"], sort=True):
            info = self.summary.signatures.get((adapter, check), {})
            case = info.get("shrunk_case") or info.get("first_case") or next(
                (p for p in group["case_path"] if isinstance(p, str) and p), "")
            worst = group["max_ulp_error"].max()
            message = info.get("shrunk_message") or info.get("message", group["message"].iloc[0])
            rows.append((check, len(group), "" if pd.isna(worst) else f"{worst:.3g}", str(message)[:110], case))
            if case:
                replays.append(replay_command(case, adapter, impl_spec, impl_kind, self.summary.oracle,
                                              device=self.summary.devices.get(adapter, "cpu"), class_axis=class_axis))
        blocks = [Block.table(pd.DataFrame(rows, columns=["check", "findings", "worst ulp", "message", "minimal case"]))]
        minimal = [r[4] for r in rows if r[4]]
        if minimal:
            from .case import Case

            unique = {case.id: case for case in (Case.load(p) for p in dict.fromkeys(minimal))}
            blocks.append(Block.text("\n".join(repr(case) for case in unique.values()), title="minimal case(s):"))
        if replays:
            blocks.append(Block.text("\n".join(dict.fromkeys(replays)), title="replay:"))
        return blocks


def blocks_text(blocks: "list[Block]") -> str:
    """Report blocks as the plain text of :meth:`GateResult.report` (tables aligned, titled
    blocks indented under their title)."""
    return "\n\n".join(_indented(block) for block in blocks)


def _indented(block: "Block") -> str:
    if block.kind == "table":
        return block.content.to_string(index=False)
    return f"{block.title}\n" + "\n".join(f"  {line}" for line in str(block.content).splitlines())


def run_gate(config: FuzzConfig, baseline: Baseline | None = None,
             checks: frozenset[str] = DEFAULT_CHECKS) -> GateResult:
    """Run ``config`` and judge it: findings the baseline covers pass, as do (reported, not
    failing) findings whose check family is not in ``checks``."""
    summary = FuzzRun(config).run()
    _, findings = load_run(summary.out_dir)
    if baseline is None:
        new, covered, stale, text = findings, findings.iloc[0:0], [], ""
    else:
        applied = baseline.apply(findings)
        new, covered, stale, text = applied.new, applied.covered, applied.stale, applied.describe()
    gating = new["family"].isin(checks)
    return GateResult(summary, findings, new[gating], covered, stale, text, reported=new[~gating],
                      gating=frozenset(checks))
