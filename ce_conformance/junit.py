"""JUnit XML for the gate: one test case per check family, so CI shows which area broke.

A family fails when any finding of its checks is not covered by the baseline; the failure
carries the findings table and the replay commands. Covered findings are listed in the test
case's ``system-out``. A family left out of ``--checks`` whose checks found something is
*skipped* with the count in its message: visible in CI, not failing it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from .compare import CHECK_FAMILIES
from .covering import coverage_markdown
from .repro import replay_command
from .selection import CHECK_FAMILY_NAMES

FAMILIES = CHECK_FAMILY_NAMES


def _table(findings: pd.DataFrame) -> str:
    columns = ["check", "dtype", "features", "max_ulp_error", "budget", "message", "case_path"]
    return findings.reindex(columns=columns).to_string(index=False, max_colwidth=120)


def write_junit(path: str | Path, *, name: str, new: pd.DataFrame, covered: pd.DataFrame, seconds: float,
                runs: int, impl_spec: str | None = None, impl_kind: str | None = None,
                coverage: dict | None = None, reported: pd.DataFrame | None = None,
                oracle: str = "reference", devices: dict[str, str] | None = None, class_axis: int = 1) -> Path:
    """``coverage`` (a run's coverage.json) adds a ``coverage`` test case, passing, whose output
    is the coverage matrix with the unreached cells named, and pairs/triples properties."""
    suite = ET.Element("testsuite", name=f"ce-conformance gate: {name}", tests=str(len(FAMILIES)),
                       failures="0", errors="0", skipped="0", time=f"{seconds:.3f}")
    failures = skipped = 0
    reported = reported if reported is not None else new.iloc[0:0]
    for family in FAMILIES:
        checks = {c for c, f in CHECK_FAMILIES.items() if f == family}
        case = ET.SubElement(suite, "testcase", classname=f"ce-conformance.{name}", name=family,
                             time=f"{seconds / len(FAMILIES):.3f}")
        mine = new[new["check"].isin(checks)]
        known = covered[covered["check"].isin(checks)]
        if len(mine):
            failures += 1
            worst = mine.groupby("check").size().to_dict()
            failure = ET.SubElement(case, "failure", type="ConformanceFailure",
                                    message=f"{len(mine)} finding(s): " + ", ".join(f"{k} x{v}" for k, v in worst.items()))
            replays = sorted({replay_command(p, a, impl_spec, impl_kind, oracle, device=(devices or {}).get(a, "cpu"),
                                             class_axis=class_axis)
                              for p, a in zip(mine["case_path"], mine["adapter"]) if isinstance(p, str) and p})
            failure.text = _table(mine) + "\n\nreplay:\n" + "\n".join(f"  {r}" for r in replays)
        shown = reported[reported["check"].isin(checks)]
        if len(shown):
            skipped += 1
            ET.SubElement(case, "skipped", message=f"{len(shown)} finding(s) reported, not gating (--checks)")
        out = [f"{len(known)} finding(s) covered by the baseline:\n" + _table(known)] if len(known) else []
        out += [f"{len(shown)} finding(s) reported, not gating:\n" + _table(shown)] if len(shown) else []
        if out:
            ET.SubElement(case, "system-out").text = "\n\n".join(out)
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="adapter_runs", value=str(runs))
    ET.SubElement(properties, "property", name="baseline_covered", value=str(len(covered)))
    tests = len(FAMILIES)
    if coverage:
        tests += 1
        case = ET.SubElement(suite, "testcase", classname=f"ce-conformance.{name}", name="coverage", time="0.000")
        ET.SubElement(case, "system-out").text = coverage_markdown(coverage, limit=10**6)
        for key in sorted(k for k in coverage if k.startswith("strength_")):
            ET.SubElement(properties, "property", name=f"coverage_{key}",
                          value=f"{coverage[key]['reached']}/{coverage[key]['feasible']}")
        suite.set("tests", str(tests))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("testsuites", tests=str(tests), failures=str(failures), skipped=str(skipped))
    root.append(suite)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
