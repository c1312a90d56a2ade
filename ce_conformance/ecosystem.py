"""The ecosystem view of a run: each adapter's framework and version, the shipped baseline of
each installed framework version, and the conformance matrix (framework x feature x dtype) a
report opens with.

A framework's shipped baseline is ``baselines/<framework>-<major>.<minor>-<device>.toml``: the
divergences from torch that version is known to have, each with its reason. A run over the
ecosystem applies them, so its report separates *known* divergences (explained, with the
entry's reason) from *unexplained* ones, and a framework upgrade without a baseline says so.

>>> shipped_baseline_name("paddle", "3.3.1")
'paddle-3.3-cpu'
>>> shipped_baseline_name("torch", "2.11.0+cu128", "cuda:1")
'torch-2.11-cuda'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pandas as pd

from .baseline import SHIPPED_DIR, Baseline

MATRIX_DTYPES: Final = ("float16", "bfloat16", "float32", "float64")
ECOSYSTEM_FRAMEWORKS: Final = ("paddle", "mlx", "tinygrad", "tensorflow", "keras", "transformers", "cut-cross-entropy",
                                "megatron-core", "liger-kernel", "flash-attn", "quack-kernels", "transformer-engine", "torch")
"""The frameworks whose built-in adapters pick up a shipped baseline by version."""
ALL_FEATURES_ROW: Final = "(all cases)"


def shipped_baseline_name(framework: str, version: str, device: str = "cpu") -> str:
    """The shipped baseline's name for a framework version (major.minor) on a device kind."""
    parts = re.findall(r"\d+", version)[:2]
    return f"{framework}-{'.'.join(parts)}-{device.split(':')[0]}"


@dataclass
class AppliedBaseline:
    """A baseline and the adapters it speaks for (``None``: every adapter of the run). ``path``
    is a shipped baseline's name (so a run reported after an upgrade or from another install
    still finds it) or a file's path."""

    path: str
    adapters: list[str] | None = None

    def load(self) -> Baseline | None:
        """The baseline, or None when it cannot be read any more (see :func:`unreadable`)."""
        from .errors import CaseFormatError

        try:
            return Baseline.load(self.path)
        except CaseFormatError:
            return None

    @property
    def name(self) -> str:
        return Path(self.path).name.removesuffix(".toml")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "adapters": self.adapters}

    @classmethod
    def from_dict(cls, data: Any) -> "AppliedBaseline":
        if isinstance(data, str):
            return cls(data)
        return cls(str(data["path"]), data.get("adapters"))


@dataclass
class EcosystemBaselines:
    """The shipped baselines a run over these adapters applies, each to its framework's adapters
    only, and the framework versions that have none (their findings stay unexplained)."""

    applied: list[AppliedBaseline] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @classmethod
    def for_adapters(cls, descriptions: list[dict[str, Any]]) -> "EcosystemBaselines":
        """``descriptions``: :meth:`Adapter.describe` of each adapter. Built-in adapters only: a
        user's ``--impl`` port must not inherit the divergences of the framework it is written in."""
        chosen: dict[str, AppliedBaseline] = {}
        missing: list[str] = []
        for info in descriptions:
            framework, version = info.get("framework", ""), info.get("version", "")
            if framework not in ECOSYSTEM_FRAMEWORKS or not version or str(info.get("adapter", "")).startswith("impl:"):
                continue
            name = shipped_baseline_name(framework, version, info.get("device") or "cpu")
            path = SHIPPED_DIR / f"{name}.toml"
            if path.exists():
                chosen.setdefault(name, AppliedBaseline(name, [])).adapters.append(info["adapter"])
            else:
                note = f"{framework} {version}: no shipped baseline ({name}.toml), its findings count as unexplained"
                missing += [note] if note not in missing else []
        return cls(list(chosen.values()), missing)


def explain(findings: pd.DataFrame, applied: list[AppliedBaseline]) -> pd.DataFrame:
    """``findings`` with ``known``: the reason of the baseline entry that covers each one
    ("" where none does), and ``known_in``: that entry's file."""
    known = pd.Series("", index=findings.index, dtype=object)
    source = pd.Series("", index=findings.index, dtype=object)
    for scope in applied:
        baseline = scope.load()
        if findings.empty or baseline is None:
            continue
        mine = findings if scope.adapters is None else findings[findings["adapter"].isin(scope.adapters)]
        open_rows = mine[known.loc[mine.index] == ""]  # the first file that explains a finding wins
        covered = baseline.apply(open_rows).covered["baseline_entry"].astype(int)
        known.loc[covered.index] = [baseline.entries[i].reason for i in covered]
        source.loc[covered.index] = [scope.name] * len(covered)
    return findings.assign(known=known, known_in=source)


def mark_known(diff: pd.DataFrame, explained: pd.DataFrame) -> pd.DataFrame:
    """A run diff (:func:`ce_conformance.report.diff_findings`) with ``known``: the baseline reason
    of each signature's findings in ``explained`` ("" where a finding of it is unexplained)."""
    if explained.empty or "known" not in explained:
        return diff.assign(known="")
    unexplained = explained.groupby("signature")["known"].apply(lambda s: (s == "").any())
    reason = explained.groupby("signature")["known"].first().where(~unexplained, "")
    return diff.assign(known=diff["signature"].map(reason).fillna(""))


def adapter_frameworks(config: dict[str, Any]) -> dict[str, str]:
    """Adapter name -> "framework version" as the run's config recorded them."""
    labels = {}
    for info in config.get("adapters", []):
        if isinstance(info, dict) and info.get("adapter"):
            labels[info["adapter"]] = " ".join(filter(None, (info.get("framework"), info.get("version")))) or "?"
    return labels


def conformance_matrix(results: pd.DataFrame, findings: pd.DataFrame) -> pd.DataFrame:
    """One row per (adapter, feature, dtype) that ran: runs, pass rate, the worst error in ulps
    and as a share of its budget, findings, and those no baseline explains. ``feature`` is
    :data:`ALL_FEATURES_ROW` for the adapter's every case; a case counts once per feature.
    ``findings`` may carry ``known`` (from :func:`explain`).

    >>> results = pd.DataFrame({"case_id": ["a", "b"], "adapter": ["mlx", "mlx"], "status": ["passed", "failed"],
    ...     "dtype": ["float32", "float32"], "features": ["weights", ""], "loss_ulp": [2.0, 90.0],
    ...     "grad_input_ulp": [1.0, None], "grad_target_ulp": [None, None], "budget_ratio": [0.1, 3.0]})
    >>> m = conformance_matrix(results, results.iloc[0:0].assign(check=[]))
    >>> row = m[m["feature"] == "(all cases)"].iloc[0]
    >>> int(row["runs"]), float(row["pass_rate"]), float(row["worst_ulp"]), float(row["worst_budget"])
    (2, 0.5, 90.0, 3.0)
    """
    columns = ["adapter", "feature", "dtype", "runs", "pass_rate", "worst_ulp", "worst_budget", "findings",
               "unexplained"]
    ran = results[results["status"] != "skipped"]
    if ran.empty:
        return pd.DataFrame(columns=columns)
    ulp_columns = [c for c in ("loss_ulp", "grad_input_ulp", "grad_target_ulp") if c in ran]
    ran = ran.assign(worst=ran[ulp_columns].astype(float).max(axis=1, skipna=True), passed=ran["status"] == "passed")
    table = _per_feature(ran).groupby(["adapter", "feature", "dtype"]).agg(
        runs=("case_id", "size"), pass_rate=("passed", "mean"), worst_ulp=("worst", "max"),
        worst_budget=("budget_ratio", "max")).reset_index()
    counts = _finding_counts(findings)
    table = table.merge(counts, on=["adapter", "feature", "dtype"], how="left")
    table[["findings", "unexplained"]] = table[["findings", "unexplained"]].fillna(0).astype(int)
    return table[columns]


def _per_feature(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row once as :data:`ALL_FEATURES_ROW` and once per feature in its ``features``."""
    split = frame.assign(feature=frame["features"].fillna("").str.split(",")).explode("feature")
    return pd.concat([frame.assign(feature=ALL_FEATURES_ROW), split[split["feature"] != ""]], ignore_index=True)


def _finding_counts(findings: pd.DataFrame) -> pd.DataFrame:
    keys = ["adapter", "feature", "dtype"]
    if findings.empty:
        return pd.DataFrame(columns=keys + ["findings", "unexplained"])
    known = findings["known"] if "known" in findings else pd.Series("", index=findings.index)
    marked = findings.assign(unexplained=known.fillna("") == "")
    return _per_feature(marked).groupby(keys).agg(findings=("check", "size"),
                                                  unexplained=("unexplained", "sum")).reset_index()


def unreadable(applied: list[AppliedBaseline]) -> list[str]:
    """The recorded baselines that can no longer be read: a report says so, and shows their
    findings as unexplained, rather than failing."""
    return [scope.path for scope in applied if scope.load() is None]


def record_baselines(run_dir: Path, applied: list[AppliedBaseline], missing: list[str]) -> None:
    """Note in the run's config.json which baselines explain its findings (``report`` re-reads it)."""
    import json

    path = Path(run_dir) / "config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config.update(baselines=[scope.to_dict() for scope in applied], baselines_missing=missing)
    path.write_text(json.dumps(config, indent=1, default=str))


def recorded_baselines(config: dict[str, Any]) -> list[AppliedBaseline]:
    return [AppliedBaseline.from_dict(item) for item in config.get("baselines") or []]


__all__ = ["ECOSYSTEM_FRAMEWORKS", "AppliedBaseline", "EcosystemBaselines", "conformance_matrix", "explain", "mark_known", "adapter_frameworks",
           "shipped_baseline_name", "record_baselines", "recorded_baselines", "unreadable"]
