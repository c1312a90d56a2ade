"""The findings schema and the run directory: streamed JSON Lines, then pandas tables.

Two tables, one schema each:

* ``results`` — one row per (case, adapter): passed, failed, skipped (with the reason) or
  errored, with the worst ULP errors seen. Pass rates and the support matrix come from it.
* ``findings`` — one row per failed check (see :mod:`ce_conformance.compare`).

Rows are appended to ``results.jsonl`` / ``findings.jsonl`` and flushed as they happen, so an
interrupted or crashed run loses nothing; :func:`finalize` turns a run directory (complete or
partial) into CSV, Parquet and a Markdown summary.

>>> sorted(FINDING_COLUMNS)[:4]
['adapter', 'budget', 'case_id', 'case_path']
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Final, Iterable

import pandas as pd

from .case import Case, extension_features
from .covering import cell_key, classify, coverage_markdown, coverage_report, parse_cell, parse_not_applicable
from .covering_extensions import extension_coverage

FINDING_COLUMNS: Final = {
    "case_id": "string", "adapter": "string", "check": "string", "family": "string", "dtype": "string",
    "layout": "string", "shape": "string", "memory_layout": "string", "reduction": "string",
    "features": "string", "max_abs_error": "float64", "max_ulp_error": "float64", "budget": "float64",
    "message": "string", "case_path": "string", "signature": "string", "phase": "string", "cell": "string",
}
RESULT_COLUMNS: Final = {
    "case_id": "string", "adapter": "string", "status": "string", "dtype": "string", "layout": "string",
    "reduction": "string", "features": "string", "skip_reason": "string", "loss_ulp": "float64",
    "grad_input_ulp": "float64", "grad_target_ulp": "float64", "budget_ratio": "float64", "seconds": "float64", "phase": "string",
    "cell": "string", "shape": "string",
}
STATUSES: Final = ("passed", "failed", "skipped")
RUN_FILES: Final = ("results.jsonl", "findings.jsonl", "results.csv", "results.parquet", "findings.csv",
                    "findings.parquet", "pass_rates_dtype.csv", "pass_rates_feature.csv", "support_matrix.csv",
                    "summary.md", "signatures.json", "coverage.json")


def layout_of(case: Case) -> str:
    """Shape class of a case: ``(C)``, ``(N,C)`` or ``(N,C,d1..dK)`` with K spelled out."""
    ndim = case.input.ndim
    if ndim <= 1:
        return "(C)"
    if ndim == 2:
        return "(N,C)"
    return "(N,C," + ",".join(f"d{i}" for i in range(1, ndim - 1)) + ")"


def case_columns(case: Case) -> dict[str, Any]:
    from .reference import resolve_reduction

    try:
        reduction = resolve_reduction(case.reduction, case.size_average, case.reduce)
    except Exception:
        reduction = str(case.reduction)
    return {
        "case_id": case.id, "dtype": case.dtype, "layout": layout_of(case),
        "shape": "x".join(map(str, case.input.shape)) or "scalar", "memory_layout": case.memory_layout,
        "reduction": reduction, "features": ",".join(sorted(case.features)),
        "cell": cell_key(classify(case)),  # the case's levels of the coverage factors (ce_conformance.covering)
    }


def finding_signature(adapter: str, check: str, dtype: str, features: str) -> str:
    """Stable identity of a finding *kind*, independent of the random case that showed it:
    used to diff runs (new / fixed / still failing) and to match baselines."""
    text = "|".join((adapter, check, dtype, features))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class Recorder:
    """Appends result and finding rows to a run directory, flushing each line."""

    def __init__(self, out_dir: str | Path, *, append: bool = False):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if not append:  # a new run replaces the tables of an earlier run in the same directory
            for name in RUN_FILES:
                (self.out_dir / name).unlink(missing_ok=True)
        mode = "a" if append else "w"
        self._results = open(self.out_dir / "results.jsonl", mode, encoding="utf-8")
        self._findings = open(self.out_dir / "findings.jsonl", mode, encoding="utf-8")
        self.result_count = 0
        self.finding_count = 0
        self.family_counts: dict[str, int] = {}

    def _write(self, handle, row: dict[str, Any]) -> None:
        handle.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        handle.flush()
        os.fsync(handle.fileno()) if os.environ.get("CE_CONFORMANCE_FSYNC") else None

    def result(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._write(self._results, row)
            self.result_count += 1

    def finding(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._write(self._findings, row)
            self.finding_count += 1
            family = str(row.get("family") or "other")
            self.family_counts[family] = self.family_counts.get(family, 0) + 1

    def close(self) -> None:
        with self._lock:
            for handle in (self._results, self._findings):
                if not handle.closed:
                    handle.close()


def _read_jsonl(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a hard kill: everything before it is kept
    frame = pd.DataFrame(rows, columns=list(columns))
    for name, dtype in columns.items():
        if dtype == "float64":
            frame[name] = pd.to_numeric(frame[name].replace({"inf": math.inf, "-inf": -math.inf}), errors="coerce")
        frame[name] = frame[name].astype(dtype)
    return frame


def load_run(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, findings) of a run directory, from Parquet if finalized, else from the streams."""
    run_dir = Path(run_dir)
    if (run_dir / "findings.parquet").exists() and (run_dir / "results.parquet").exists():
        return pd.read_parquet(run_dir / "results.parquet"), pd.read_parquet(run_dir / "findings.parquet")
    return (_read_jsonl(run_dir / "results.jsonl", RESULT_COLUMNS),
            _read_jsonl(run_dir / "findings.jsonl", FINDING_COLUMNS))


def findings_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(FINDING_COLUMNS))
    return frame.astype(FINDING_COLUMNS)


def pass_rates(results: pd.DataFrame, by: tuple[str, ...] = ("adapter", "dtype")) -> pd.DataFrame:
    """Pass rate of executed (non-skipped) runs, pivoted adapter x dtype (or any columns)."""
    ran = results[results["status"] != "skipped"]
    if ran.empty:
        return pd.DataFrame()
    rate = ran.assign(passed=ran["status"] == "passed").groupby(list(by))["passed"].mean()
    return rate.unstack(by[-1]) if len(by) > 1 else rate.to_frame()


def feature_pass_rates(results: pd.DataFrame) -> pd.DataFrame:
    """Pass rate per adapter x feature (a case counts once for each feature it exercises)."""
    ran = results[results["status"] != "skipped"]
    if ran.empty:
        return pd.DataFrame()
    exploded = ran.assign(feature=ran["features"].fillna("").str.split(",")).explode("feature")
    exploded["feature"] = exploded["feature"].replace("", "plain")
    rate = exploded.assign(passed=exploded["status"] == "passed").groupby(["adapter", "feature"])["passed"].mean()
    return rate.unstack("feature")


def support_matrix(results: pd.DataFrame) -> pd.DataFrame:
    """Which adapter supports which feature: share of cases with the feature that it ran."""
    if results.empty:
        return pd.DataFrame()
    exploded = results.assign(feature=results["features"].fillna("").str.split(",")).explode("feature")
    exploded = exploded[exploded["feature"] != ""]
    ran = exploded.assign(ran=exploded["status"] != "skipped").groupby(["adapter", "feature"])["ran"].mean()
    def label(value: Any) -> str:
        if pd.isna(value):
            return ""  # the adapter never met a case with this feature
        return "yes" if value == 1 else ("no" if value == 0 else f"{value:.0%}")

    return ran.unstack("feature").astype(object).map(label)


def cell_mix(results: pd.DataFrame) -> pd.DataFrame:
    """Examples per scale cell (:mod:`ce_conformance.budget`): distinct cases run, cases the cell
    budget deferred, adapter seconds and their share. Empty when nothing ran.

    >>> rows = pd.DataFrame({"case_id": ["a", "b"], "shape": ["4x128256", "3x5"], "status": ["passed", "passed"],
    ...                      "skip_reason": ["", ""], "seconds": [3.0, 1.0]})
    >>> cell_mix(rows)["cases"].to_dict()
    {'tiny': 1, 'small': 0, 'medium': 0, 'vocab': 1}
    """
    from .budget import DEFER_REASON, SCALE_CELLS, scale_of_shape

    if results.empty or "shape" not in results:  # runs recorded before the column existed
        return pd.DataFrame()

    def scale(shape: str) -> str:  # the shape column spells (4, 128256) as "4x128256"
        return scale_of_shape(tuple(int(d) for d in str(shape).split("x") if d.isdigit()))

    frame = results.assign(scale=results["shape"].map(scale))
    ran = frame[frame["status"] != "skipped"]
    deferred = frame[frame["skip_reason"].fillna("").str.startswith(DEFER_REASON)]
    seconds = ran.groupby("scale")["seconds"].sum()
    table = pd.DataFrame({"cases": ran.groupby("scale")["case_id"].nunique(),
                          "deferred": deferred.groupby("scale")["case_id"].nunique(),
                          "adapter seconds": seconds}).reindex(list(SCALE_CELLS)).fillna(0)
    table[["cases", "deferred"]] = table[["cases", "deferred"]].astype(int)
    total = float(table["adapter seconds"].sum())
    table["time share"] = table["adapter seconds"] / total if total > 0 else 0.0
    table.index.name = "scale cell"
    return table


def summary_markdown(results: pd.DataFrame, findings: pd.DataFrame, *, title: str = "ce-conformance run",
                     extra: dict[str, Any] | None = None, top: int = 20) -> str:
    lines = [f"## {title}", ""]
    for key, value in (extra or {}).items():
        lines.append(f"- **{key}**: {value}")
    if extra:
        lines.append("")
    if results.empty:
        lines.append("No cases were run.")
        return "\n".join(lines) + "\n"
    counts = results.groupby(["adapter", "status"]).size().unstack("status").reindex(columns=list(STATUSES)).fillna(0)
    counts = counts.astype(int)
    counts["findings"] = findings.groupby("adapter").size().reindex(counts.index).fillna(0).astype(int)
    lines += ["### Outcomes per adapter", "", counts.to_markdown(), ""]
    rates = pass_rates(results)
    if not rates.empty:
        lines += ["### Pass rate (adapter x dtype)", "", rates.map(lambda v: "" if pd.isna(v) else f"{v:.0%}").to_markdown(), ""]
    skipped = results[results["status"] == "skipped"]
    if not skipped.empty:
        reasons = skipped.assign(reason=skipped["skip_reason"].str.split(",")).explode("reason")
        table = reasons.groupby(["adapter", "reason"]).size().rename("skipped cases").reset_index()
        lines += ["### Skipped (unsupported by the adapter, never counted as failures)", "",
                  table.to_markdown(index=False), ""]
    mix = cell_mix(results)
    if not mix.empty:
        shown = mix.assign(**{"adapter seconds": mix["adapter seconds"].map(lambda v: f"{v:.1f}"),
                              "time share": mix["time share"].map(lambda v: f"{v:.0%}")})
        lines += ["### Examples per scale cell (deferred: over the cell's --cell-share of judging time)", "",
                  shown.to_markdown(), ""]
    if not findings.empty:
        grouped = (findings.groupby(["adapter", "check"])
                   .agg(count=("case_id", "size"), dtypes=("dtype", lambda s: ",".join(sorted(set(s)))),
                        worst_ulp=("max_ulp_error", "max"), example=("message", "first"),
                        case=("case_path", lambda s: next((p for p in s if isinstance(p, str) and p), "")))
                   .reset_index().sort_values("count", ascending=False).head(top))
        grouped["example"] = grouped["example"].str.slice(0, 140)
        lines += ["### Findings", "", grouped.to_markdown(index=False), ""]
    else:
        lines += ["### Findings", "", "None: every executed check passed.", ""]
    return "\n".join(lines) + "\n"


def finalize(run_dir: str | Path, *, title: str = "ce-conformance run", extra: dict[str, Any] | None = None,
             not_applicable: Iterable[tuple[str, str]] | None = None) -> str:
    """Write CSV, Parquet, pivots and summary.md for a run directory; return the summary."""
    run_dir = Path(run_dir)
    results, findings = _read_jsonl(run_dir / "results.jsonl", RESULT_COLUMNS), \
        _read_jsonl(run_dir / "findings.jsonl", FINDING_COLUMNS)
    results.to_csv(run_dir / "results.csv", index=False)
    results.to_parquet(run_dir / "results.parquet", index=False)
    findings.to_csv(run_dir / "findings.csv", index=False)
    findings.to_parquet(run_dir / "findings.parquet", index=False)
    if not results.empty:
        feature_pass_rates(results).to_csv(run_dir / "pass_rates_feature.csv")
        pass_rates(results).to_csv(run_dir / "pass_rates_dtype.csv")
        support_matrix(results).to_csv(run_dir / "support_matrix.csv")
    summary = summary_markdown(results, findings, title=title, extra=extra)
    if not_applicable is None:  # re-finalized later: keep the run's own
        not_applicable = [parse_not_applicable(item) for item in read_coverage(run_dir).get("not_applicable", [])]
    coverage = run_coverage(results, not_applicable or ())
    (run_dir / "coverage.json").write_text(json.dumps(coverage, indent=1), encoding="utf-8")
    summary += "\n" + coverage_markdown(coverage)
    (run_dir / "summary.md").write_text(summary, encoding="utf-8")
    return summary


def run_coverage(results: pd.DataFrame, not_applicable: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """The coverage matrix of the valid cases some adapter actually ran (skips do not count)."""
    if results.empty or "cell" not in results:
        return coverage_report([], excluded=not_applicable)
    ran = results[(results["status"] != "skipped") & results["cell"].notna()]
    report = coverage_report(ran["cell"].astype(str), excluded=not_applicable)
    if "features" in ran:  # the extension options that ran, and the factor levels each met
        cases = ran.drop_duplicates("case_id") if "case_id" in ran else ran
        features = [str(f).split(",") if isinstance(f, str) else [] for f in cases["features"]]
        extensions = extension_coverage([parse_cell(str(c)) for c in cases["cell"]], features,
                                        {f for found in features for f in found} & extension_features())
        if extensions:
            report["extensions"] = extensions
    return report


def read_coverage(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``coverage.json`` (written by :func:`finalize`), empty when absent."""
    path = Path(run_dir) / "coverage.json"
    return json.loads(path.read_text()) if path.exists() else {}
