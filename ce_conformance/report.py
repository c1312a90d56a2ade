"""Nightly reports: run-to-run diffs, history, shard merging and a self-contained HTML page.

* :func:`diff_findings` keys findings by their stable ``signature`` (adapter, check, dtype,
  features), never by case id, and sorts them into new / fixed / still failing.
* ``history.parquet`` beside the dated run directories is append-only: one row per
  (run, adapter) with its counts; the report plots findings per adapter per night from it.
* :func:`merge_runs` concatenates shard directories into one run directory.
* :func:`write_html` renders one HTML file, every plot embedded as a base64 PNG, no scripts and
  no network: the conformance matrix (:mod:`ce_conformance.ecosystem`; findings the run's
  baselines cover marked known, with their reason), pass-rate heat maps, ULP-error ECDFs against
  the budget, the support matrix, the diff, the trend, each framework's findings with their
  repro scripts, the configuration and versions.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from .ecosystem import MATRIX_DTYPES, ALL_FEATURES_ROW, adapter_frameworks, conformance_matrix, explain, \
    mark_known, recorded_baselines, unreadable
from .errors import ConfigurationError
from .findings import (cell_mix, feature_pass_rates, finalize, load_run, pass_rates, read_coverage, run_coverage,
                       support_matrix)

HISTORY_FILE = "history.parquet"
DIFF_STATUSES = ("new", "fixed", "still failing")


def is_run_dir(path: Path) -> bool:
    return (path / "results.jsonl").exists() or (path / "results.parquet").exists()


def _load(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = Path(run_dir)
    if not path.is_dir() or not is_run_dir(path):
        raise ConfigurationError(f"{str(path)!r} is not a run directory (no results.jsonl / results.parquet)")
    return load_run(path)


def diff_findings(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """One row per finding signature: status new / fixed / still failing, counts and an example."""
    def summarise(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty:
            return pd.DataFrame(columns=["signature", "adapter", "check", "dtype", "features", "count", "message",
                                         "case_path"]).set_index("signature")
        return frame.groupby("signature").agg(
            adapter=("adapter", "first"), check=("check", "first"), dtype=("dtype", "first"),
            features=("features", "first"), count=("case_id", "size"), message=("message", "first"),
            case_path=("case_path", lambda s: next((p for p in s if isinstance(p, str) and p), "")))

    a, b = summarise(before), summarise(after)
    rows = []
    for signature in sorted(set(a.index) | set(b.index)):
        in_a, in_b = signature in a.index, signature in b.index
        status = "still failing" if in_a and in_b else ("new" if in_b else "fixed")
        source = b.loc[signature] if in_b else a.loc[signature]
        rows.append({"status": status, "signature": signature, "adapter": source["adapter"], "check": source["check"],
                     "dtype": source["dtype"], "features": source["features"],
                     "before": int(a.loc[signature, "count"]) if in_a else 0,
                     "after": int(b.loc[signature, "count"]) if in_b else 0,
                     "message": source["message"], "case_path": source["case_path"]})
    frame = pd.DataFrame(rows, columns=["status", "signature", "adapter", "check", "dtype", "features", "before",
                                        "after", "message", "case_path"])
    order = {status: i for i, status in enumerate(DIFF_STATUSES)}
    return frame.sort_values(["status", "adapter", "check"], key=lambda s: s.map(order) if s.name == "status" else s,
                             kind="stable").reset_index(drop=True)


def compare_runs(run_a: str | Path, run_b: str | Path) -> pd.DataFrame:
    return diff_findings(_load(run_a)[1], _load(run_b)[1])


def previous_run(out_dir: Path, current: Path) -> Path | None:
    """The latest run directory under ``out_dir`` older than ``current`` (names sort by date)."""
    runs = sorted(p for p in out_dir.iterdir() if p.is_dir() and p != current and is_run_dir(p)
                  and p.name < current.name and _config(p).get("shard") == _config(current).get("shard"))
    return runs[-1] if runs else None


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def append_history(out_dir: Path, run_dir: Path) -> pd.DataFrame:
    """Add this run's per-adapter counts to ``history.parquet`` (append-only) and return it."""
    results, findings = _load(run_dir)
    config = _config(run_dir)
    rows = []
    for adapter, group in results.groupby("adapter"):
        ran = group[group["status"] != "skipped"]
        rows.append({"run": run_dir.name, "started": config.get("started", ""), "shard": config.get("shard", ""),
                     "adapter": adapter, "cases": len(ran), "passed": int((ran["status"] == "passed").sum()),
                     "skipped": int((group["status"] == "skipped").sum()),
                     "findings": int((findings["adapter"] == adapter).sum()),
                     "signatures": int(findings.loc[findings["adapter"] == adapter, "signature"].nunique())})
    new = pd.DataFrame(rows)
    path = out_dir / HISTORY_FILE
    history = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=new.columns)
    history = history[history["run"] != run_dir.name]  # re-reporting a run replaces its rows
    history = pd.concat([history, new], ignore_index=True) if len(history) else new
    tmp = path.with_suffix(".tmp")
    history.to_parquet(tmp, index=False)
    tmp.replace(path)
    return history


def merge_runs(run_dirs: list[Path], out: Path) -> Path:
    """Concatenate shard run directories into ``out`` (streams, saved cases, combined config)."""
    if not run_dirs:
        raise ConfigurationError("report --merge needs at least one run directory")
    out.mkdir(parents=True, exist_ok=True)
    configs = []
    with open(out / "results.jsonl", "w") as results, open(out / "findings.jsonl", "w") as findings:
        for run_dir in run_dirs:
            _load(run_dir)  # validates
            for name, handle in (("results.jsonl", results), ("findings.jsonl", findings)):
                source = run_dir / name
                if source.exists():
                    handle.write(source.read_text())
                else:  # a finalized directory without streams: rebuild them from Parquet
                    frame = pd.read_parquet(run_dir / name.replace(".jsonl", ".parquet"))
                    for row in frame.to_dict("records"):
                        handle.write(json.dumps({k: (None if pd.isna(v) else v) for k, v in row.items()}) + "\n")
            if (run_dir / "cases").is_dir():
                shutil.copytree(run_dir / "cases", out / "cases", dirs_exist_ok=True)
            configs.append(_config(run_dir))
    merged = dict(configs[0]) if configs else {}
    merged.update(shard="merged", merged_from=[str(p) for p in run_dirs],
                  seeds=[c.get("seeds", c.get("seed")) for c in configs])
    (out / "config.json").write_text(json.dumps(merged, indent=1, default=str))
    finalize(out, title="ce-conformance merged run")
    return out


# -- plots ----------------------------------------------------------------------------------------
def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _heatmap(frame: pd.DataFrame, title: str) -> str | None:
    if frame is None or frame.empty:
        return None
    import matplotlib.pyplot as plt

    values = frame.astype(float)
    figure, axis = plt.subplots(figsize=(max(5, 0.55 * values.shape[1] + 2), max(2, 0.45 * values.shape[0] + 1.2)))
    image = axis.imshow(values.to_numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(values.shape[1]), values.columns, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(values.shape[0]), values.index, fontsize=8)
    for (i, j), v in pd.DataFrame(values.to_numpy()).stack().items():
        axis.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=6)
    axis.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.03)
    return _png(figure)


def _error_ecdfs(results: pd.DataFrame) -> str | None:
    """ECDF of each adapter's worst error per case, as a fraction of its budget, by dtype."""
    if "budget_ratio" not in results:
        return None
    ran = results[(results["status"] != "skipped") & results["budget_ratio"].notna()]
    if ran.empty:
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    dtypes = [d for d in ("float16", "bfloat16", "float32", "float64") if d in set(ran["dtype"])]
    figure, axes = plt.subplots(1, len(dtypes), figsize=(4 * len(dtypes), 3.2), squeeze=False, sharey=True)
    for axis, dtype in zip(axes[0], dtypes):
        subset = ran[ran["dtype"] == dtype]
        for adapter, group in subset.groupby("adapter"):
            ratio = np.sort(group["budget_ratio"].to_numpy(dtype=float))
            ratio = np.maximum(ratio, 1e-4)
            axis.step(ratio, np.arange(1, len(ratio) + 1) / len(ratio), where="post", label=adapter)
        axis.axvline(1.0, color="red", linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.set_title(f"{dtype}", fontsize=9)
        axis.set_xlabel("worst error / budget (log)", fontsize=8)
    axes[0][0].set_ylabel("share of cases", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.suptitle("Worst error per case against its budget (red: the budget)", fontsize=10)
    return _png(figure)


def _trend(history: pd.DataFrame | None) -> str | None:
    if history is None or history.empty or history["run"].nunique() < 1:
        return None
    import matplotlib.pyplot as plt

    table = history.pivot_table(index="run", columns="adapter", values="findings", aggfunc="sum").sort_index()
    figure, axis = plt.subplots(figsize=(7, 3))
    for adapter in table.columns:
        axis.plot(range(len(table)), table[adapter].to_numpy(), marker="o", label=adapter)
    axis.set_xticks(range(len(table)), [r[:16] for r in table.index], rotation=30, ha="right", fontsize=7)
    axis.set_ylabel("findings", fontsize=8)
    axis.set_title("Findings per adapter per night", fontsize=10)
    axis.legend(fontsize=7)
    return _png(figure)


# -- HTML -------------------------------------------------------------------------------------------
def _table(frame: pd.DataFrame | None, *, index: bool = True, limit: int = 200) -> str:
    if frame is None or frame.empty:
        return "<p><em>none</em></p>"
    return frame.head(limit).to_html(index=index, escape=True, na_rep="", border=0, classes="grid")


def _image(data: str | None, alt: str) -> str:
    if not data:
        return f"<p><em>{html.escape(alt)}: no data</em></p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_html(run_dir: Path, *, diff: pd.DataFrame | None = None, previous: Path | None = None,
               history: pd.DataFrame | None = None, top: int = 15) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise ConfigurationError("HTML reports need matplotlib: pip install 'ce-conformance[report]'") from None
    matplotlib.use("Agg")
    results, findings = _load(run_dir)
    config = _config(run_dir)
    findings = explain(findings, recorded_baselines(config))
    parts = [f"<h1>ce-conformance nightly — {html.escape(run_dir.name)}</h1>"]
    parts += ["<h2>Conformance matrix</h2>", _matrix_html(conformance_matrix(results, findings),
                                                          adapter_frameworks(config), config)]
    counts = results.groupby(["adapter", "status"]).size().unstack("status").fillna(0).astype(int) \
        if not results.empty else pd.DataFrame()
    if not counts.empty:
        counts["findings"] = findings.groupby("adapter").size().reindex(counts.index).fillna(0).astype(int)
    parts += ["<h2>Outcomes</h2>", _table(counts)]
    parts += ["<h2>Changes since the previous run</h2>",
              f"<p>previous: {html.escape(previous.name) if previous else 'none (first run)'}</p>"]
    if diff is not None:
        diff = mark_known(diff, findings)
        summary = diff.groupby("status").size().reindex(list(DIFF_STATUSES)).fillna(0).astype(int)
        parts.append("<p>" + ", ".join(f"<b>{k}</b>: {v}" for k, v in summary.items()) + "</p>")
        parts.append(_table(diff.drop(columns=["signature"]), index=False))
    parts += ["<h2>Trend</h2>", _image(_trend(history), "findings per adapter per night")]
    parts += ["<h2>Pass rate: adapter × feature</h2>",
              _image(_heatmap(feature_pass_rates(results), "pass rate by feature"), "pass-rate heat map (features)"),
              "<h2>Pass rate: adapter × dtype</h2>",
              _image(_heatmap(pass_rates(results), "pass rate by dtype"), "pass-rate heat map (dtypes)")]
    for dtype in sorted(set(results["dtype"].dropna())):
        subset = results[results["dtype"] == dtype]
        image = _heatmap(feature_pass_rates(subset), f"pass rate by feature, {dtype}")
        if image:
            parts.append(f"<h3>{html.escape(dtype)}</h3>" + _image(image, f"pass rate {dtype}"))
    parts += ["<h2>Error distributions</h2>", _image(_error_ecdfs(results), "ULP error ECDFs")]
    parts += ["<h2>Support matrix</h2>", _table(support_matrix(results))]
    coverage = read_coverage(run_dir) or run_coverage(results)
    parts += ["<h2>Coverage</h2>", _coverage_html(coverage)]
    mix = cell_mix(results)
    if not mix.empty:
        parts += ["<h2>Examples per scale cell</h2>",
                  f"<p>Cell budget (time shares): {html.escape(_shares_text(config))}. Deferred: drawn cases the "
                  "budget left out because their cell was over its share of judging time.</p>",
                  _table(mix.assign(**{"adapter seconds": mix["adapter seconds"].round(1),
                                       "time share": mix["time share"].map(lambda v: f"{v:.0%}")}))]
    parts += ["<h2>Findings by framework</h2>", _findings_html(findings, adapter_frameworks(config), top)]
    parts += ["<h2>Configuration and versions</h2>",
              f"<pre>{html.escape(json.dumps(config, indent=1, default=str))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
             "table.grid{border-collapse:collapse;font-size:12px}"
             "table.grid td,table.grid th{border:1px solid #ccc;padding:2px 6px}"
             "pre{background:#f6f6f6;padding:.5em;overflow:auto;font-size:11px}img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ce-conformance {html.escape(run_dir.name)}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["diff_findings", "compare_runs", "merge_runs", "append_history", "write_html", "previous_run"]


def _findings_html(findings: pd.DataFrame, frameworks: dict[str, str], top: int) -> str:
    """Each framework's findings, grouped by (adapter, check), unexplained ones first, at most
    ``top`` groups per framework: count, known reason or unexplained, message, minimal case and
    its repro script (in that framework's own API)."""
    if findings.empty:
        return "<p>No findings.</p>"
    grouped = findings.groupby(["adapter", "check"]).agg(
        count=("case_id", "size"), message=("message", "first"),
        known=("known", lambda s: "; ".join(dict.fromkeys(r for r in s if r))),
        unexplained=("known", lambda s: int((s == "").sum())),
        case_path=("case_path", lambda s: next((p for p in s if isinstance(p, str) and p), ""))).reset_index()
    grouped["framework"] = grouped["adapter"].map(lambda a: frameworks.get(a, "?"))
    parts = []
    for framework, mine in grouped.groupby("framework", sort=True):
        mine = mine.sort_values(["unexplained", "count"], ascending=False)
        parts.append(f"<h3>{html.escape(framework)}: {int(mine['count'].sum())} findings, "
                     f"{int(mine['unexplained'].sum())} unexplained</h3>")
        for row in mine.head(top).itertuples():
            repro = Path(row.case_path).with_suffix(".py") if row.case_path else None
            snippet = repro.read_text()[:6000] if repro and repro.exists() else ""
            status = (f"<p><b>unexplained</b>: {row.unexplained} of {row.count} no baseline covers</p>"
                      if row.unexplained else "")
            status += f"<p>known divergence: {html.escape(row.known)}</p>" if row.known else ""
            parts.append(f"<h4>{html.escape(row.adapter)} — {html.escape(row.check)} ({row.count})</h4>{status}"
                         f"<p>{html.escape(str(row.message))}</p><p>case: <code>{html.escape(row.case_path)}</code></p>"
                         + (f"<details><summary>repro script</summary><pre>{html.escape(snippet)}</pre></details>"
                            if snippet else ""))
        if len(mine) > top:
            parts.append(f"<p>… and {len(mine) - top} more (adapter, check) groups in findings.parquet</p>")
    return "\n".join(parts)


def _matrix_html(matrix: pd.DataFrame, frameworks: dict[str, str], config: dict) -> str:
    """Adapter x dtype (pass rate, worst error against its budget), grouped by framework, each
    adapter's feature x dtype table folded under it; findings split into known and unexplained."""
    if matrix.empty:
        return "<p><em>nothing ran</em></p>"
    intro = ("<p>Each cell: share of runs that passed · the worst error of any run as a share of its budget "
             "(hover for runs and ulps). <b>Outlined</b>: findings no baseline explains.</p>")
    notes = [f"<li>{html.escape(n)}</li>" for n in config.get("baselines_missing") or []]
    recorded = recorded_baselines(config)
    applied = [f"<li>baseline {html.escape(b.name)} for {html.escape(', '.join(b.adapters or ['every adapter']))}"
               "</li>" for b in recorded]
    notes += [f"<li><b>baseline {html.escape(p)} can no longer be read</b>: its findings show as unexplained</li>"
              for p in unreadable(recorded)]
    dtypes = [d for d in MATRIX_DTYPES if d in set(matrix["dtype"])]
    overall = matrix[matrix["feature"] == ALL_FEATURES_ROW]
    order = sorted(overall["adapter"].unique(), key=lambda a: (frameworks.get(a, "?"), a))
    head = "<tr><th>framework</th><th>adapter</th>" + "".join(f"<th>{d}</th>" for d in dtypes) + \
        "<th>findings: known / unexplained</th></tr>"
    rows, details = [], []
    for adapter in order:
        mine = overall[overall["adapter"] == adapter].set_index("dtype")
        found, unexplained = int(mine["findings"].sum()), int(mine["unexplained"].sum())
        rows.append(f"<tr><td>{html.escape(frameworks.get(adapter, '?'))}</td><td>{html.escape(adapter)}</td>"
                    + "".join(_matrix_cell(mine.loc[d] if d in mine.index else None) for d in dtypes)
                    + f"<td>{found - unexplained} / <b>{unexplained}</b></td></tr>")
        features = matrix[(matrix["adapter"] == adapter) & (matrix["feature"] != ALL_FEATURES_ROW)]
        if features.empty:
            continue
        body = []
        for feature, group in features.groupby("feature"):
            cells = group.set_index("dtype")
            body.append(f"<tr><td>{html.escape(feature)}</td>"
                        + "".join(_matrix_cell(cells.loc[d] if d in cells.index else None) for d in dtypes) + "</tr>")
        details.append(f"<details><summary>{html.escape(adapter)}: feature × dtype</summary><table class='grid'>"
                       f"<tr><th>feature</th>{''.join(f'<th>{d}</th>' for d in dtypes)}</tr>{''.join(body)}"
                       "</table></details>")
    listed = f"<ul>{''.join(applied + notes)}</ul>" if applied or notes else ""
    return intro + listed + f"<table class='grid'>{head}{''.join(rows)}</table>" + "".join(details)


def _matrix_cell(row: pd.Series | None) -> str:
    if row is None:
        return "<td></td>"
    rate, budget = float(row["pass_rate"]), row["worst_budget"]
    text = f"{rate:.0%}" + ("" if pd.isna(budget) else f" · {budget:.2g}×")
    worst = "" if pd.isna(row["worst_ulp"]) else f"; worst {row['worst_ulp']:.3g} ulp"
    tip = f"{int(row['runs'])} runs{worst}; {int(row['findings'])} findings, {int(row['unexplained'])} unexplained"
    outline = ";outline:2px solid #b00;outline-offset:-2px" if row["unexplained"] else ""
    return (f"<td title='{html.escape(tip)}' style='background:hsl({120 * rate:.0f},65%,82%){outline}'>"
            f"{html.escape(text)}</td>")


def _shares_text(config: dict) -> str:
    shares = config.get("cell_shares")
    if shares is None:
        return "not recorded"
    return ", ".join(f"{cell} at most {share:.0%}" for cell, share in shares.items()) or "none (no cell capped)"


def _coverage_html(report: dict) -> str:
    """Factor x level counts of the valid cases run, then every unreached pair and triple."""
    if not report.get("cases"):
        return "<p>No valid case was run.</p>"
    levels = pd.DataFrame({f: pd.Series(counts) for f, counts in report["levels"].items()}).T
    parts = [f"<p>{report['cases']} distinct valid cases; valid cases per factor level (empty: not a level "
             "of that factor, 0: never reached).</p>", _table(levels.astype("Int64"))]
    for key in sorted(k for k in report if k.startswith("strength_")):
        info = report[key]
        name = {"strength_2": "pairs", "strength_3": "triples"}.get(key, key)
        parts.append(f"<p><b>{name}</b>: {info['reached']}/{info['feasible']} feasible combinations reached</p>")
        if info["unreached"]:
            parts.append("<details><summary>not reached</summary><ul>"
                         + "".join(f"<li>{html.escape(cell)}</li>" for cell in info["unreached"]) + "</ul></details>")
    return "\n".join(parts)
