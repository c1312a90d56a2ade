"""Known-divergence baselines: accepted findings, matched on finding attributes.

A baseline is a human-edited TOML file. Each ``[[divergence]]`` entry matches findings by
adapter, check and dtype (shell-style patterns), by features the finding's case must have (and
optionally must not have), and optionally by a regular expression on the message; it carries the
reason and an optional upstream link. ``gate --baseline`` fails only on findings no entry
covers and reports entries that matched nothing (stale). A top-level ``adapter`` pattern is
every entry's default: a framework's shipped file (:mod:`ce_conformance.ecosystem`) names its
adapters once.

.. code-block:: toml

    schema_version = 1

    [[divergence]]
    check = "documented_range"
    features = ["negative_smoothing"]
    reason = "torch treats label_smoothing < 0 as 0; its documentation says [0, 1]"
    link = "https://github.com/pytorch/pytorch/issues/134767"

>>> entry = Divergence(check="loss_dtype", dtype="bfloat16", reason="r")
>>> entry.matches({"adapter": "impl:x", "check": "loss_dtype", "dtype": "bfloat16", "features": "", "message": ""})
True
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pandas as pd

from .errors import CaseFormatError

BASELINE_SCHEMA_VERSION: Final = 1
MAX_BASELINE_BYTES: Final = 4 * 1024 * 1024
SHIPPED_DIR: Final = Path(__file__).resolve().parent / "baselines"
_ENTRY_KEYS: Final = {"adapter", "check", "dtype", "features", "absent_features", "message", "reason", "link"}


def shipped_baselines() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in SHIPPED_DIR.glob("*.toml"))


def resolve_baseline(name_or_path: str | Path) -> Path:
    """A path as given, or the shipped baseline of that name when no such file exists."""
    path = Path(name_or_path)
    name = path.name.removesuffix(".toml")
    if not path.exists() and len(path.parts) == 1 and (SHIPPED_DIR / f"{name}.toml").exists():
        return SHIPPED_DIR / f"{name}.toml"
    return path


@dataclass(frozen=True)
class Divergence:
    """One accepted divergence. Patterns default to ``*`` (anything)."""

    reason: str
    adapter: str = "*"
    check: str = "*"
    dtype: str = "*"
    features: tuple[str, ...] = ()
    absent_features: tuple[str, ...] = ()
    message: str = ""
    link: str = ""

    def matches(self, finding: dict[str, Any]) -> bool:
        present = set(filter(None, str(finding.get("features") or "").split(",")))
        return (fnmatch.fnmatchcase(str(finding.get("adapter", "")), self.adapter)
                and fnmatch.fnmatchcase(str(finding.get("check", "")), self.check)
                and fnmatch.fnmatchcase(str(finding.get("dtype", "")), self.dtype)
                and set(self.features) <= present
                and not (set(self.absent_features) & present)
                and (not self.message or re.search(self.message, str(finding.get("message", ""))) is not None))

    def describe(self) -> str:
        parts = [f"check={self.check}"]
        if self.adapter != "*":
            parts.append(f"adapter={self.adapter}")
        if self.dtype != "*":
            parts.append(f"dtype={self.dtype}")
        if self.features:
            parts.append("features=" + "+".join(self.features))
        return " ".join(parts)


@dataclass
class Baseline:
    entries: list[Divergence] = field(default_factory=list)
    path: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "Baseline":
        """Load a baseline file, or a shipped one by name (``torch-2.13-cpu``)."""
        path = resolve_baseline(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CaseFormatError(f"cannot read baseline ({exc.strerror})", path=str(path)) from None
        if len(raw) > MAX_BASELINE_BYTES:
            raise CaseFormatError(f"baseline is {len(raw)} bytes, over the {MAX_BASELINE_BYTES}-byte limit",
                                  path=str(path))
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise CaseFormatError(f"not valid TOML ({exc})", path=str(path)) from None
        return cls.from_dict(data, path=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> "Baseline":
        def fail(message: str, where: str) -> CaseFormatError:
            return CaseFormatError(message, field=where, path=path or None)

        unknown = sorted(set(data) - {"schema_version", "divergence", "implementation", "note", "adapter"})
        if unknown:
            raise fail(f"unexpected key(s) {unknown}", unknown[0])
        if data.get("schema_version") != BASELINE_SCHEMA_VERSION:
            raise fail(f"unsupported schema version {data.get('schema_version')!r} "
                       f"(this tool reads {BASELINE_SCHEMA_VERSION})", "schema_version")
        default_adapter = data.get("adapter", "*")  # a framework's file names its adapters once
        if not isinstance(default_adapter, str):
            raise fail("must be a string (an adapter pattern)", "adapter")
        raw_entries = data.get("divergence", [])
        if not isinstance(raw_entries, list):
            raise fail("must be an array of tables ([[divergence]])", "divergence")
        entries = []
        for index, raw in enumerate(raw_entries):
            where = f"divergence[{index}]"
            if not isinstance(raw, dict):
                raise fail("must be a table", where)
            bad = sorted(set(raw) - _ENTRY_KEYS)
            if bad:
                raise fail(f"unexpected key(s) {bad}", f"{where}.{bad[0]}")
            if not isinstance(raw.get("reason"), str) or not raw["reason"].strip():
                raise fail("every divergence needs a reason", f"{where}.reason")
            for key in ("adapter", "check", "dtype", "message", "link"):
                if key in raw and not isinstance(raw[key], str):
                    raise fail("must be a string", f"{where}.{key}")
            for key in ("features", "absent_features"):
                if key in raw and not (isinstance(raw[key], list) and all(isinstance(f, str) for f in raw[key])):
                    raise fail("must be a list of feature names", f"{where}.{key}")
            if raw.get("message"):
                try:
                    re.compile(raw["message"])
                except re.error as exc:
                    raise fail(f"invalid regular expression ({exc})", f"{where}.message") from None
            entries.append(Divergence(
                reason=raw["reason"], adapter=raw.get("adapter", default_adapter), check=raw.get("check", "*"),
                dtype=raw.get("dtype", "*"), features=tuple(raw.get("features", ())),
                absent_features=tuple(raw.get("absent_features", ())), message=raw.get("message", ""),
                link=raw.get("link", "")))
        return cls(entries, path)

    def apply(self, findings: pd.DataFrame) -> "BaselineResult":
        """Split findings into covered (with the covering entry) and new; list stale entries."""
        covered_by: list[int | None] = []
        used = [0] * len(self.entries)
        for row in findings.to_dict("records"):
            hit = next((i for i, entry in enumerate(self.entries) if entry.matches(row)), None)
            covered_by.append(hit)
            if hit is not None:
                used[hit] += 1
        marked = findings.assign(baseline_entry=pd.array(covered_by, dtype="Int64"))
        new = marked[marked["baseline_entry"].isna()].drop(columns="baseline_entry")
        covered = marked[marked["baseline_entry"].notna()]
        stale = [entry for entry, count in zip(self.entries, used) if count == 0]
        return BaselineResult(new, covered, stale, used)


@dataclass
class BaselineResult:
    new: pd.DataFrame
    covered: pd.DataFrame
    stale: list[Divergence]
    counts: list[int]

    def describe(self) -> str:
        lines = [f"baseline: {len(self.covered)} known finding(s) covered, {len(self.new)} new"]
        for entry in self.stale:
            lines.append(f"  stale entry (matched nothing this run): {entry.describe()} — {entry.reason}")
        return "\n".join(lines)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def baseline_from_findings(findings: pd.DataFrame, *, implementation: str = "") -> str:
    """TOML text with one entry per distinct check (and dtype, when all its findings share one),
    matching the features that every finding of that check has in common."""
    lines = ["# ce-conformance known divergences. Edit the reasons; every entry needs one.",
             f"schema_version = {BASELINE_SCHEMA_VERSION}"]
    if implementation:
        lines.append(f"implementation = {_toml_string(implementation)}")
    for check, group in findings.groupby("check", sort=True):
        feature_sets = [set(filter(None, str(f or "").split(","))) for f in group["features"]]
        common = sorted(set.intersection(*feature_sets)) if feature_sets else []
        dtypes = sorted(set(group["dtype"]))
        lines += ["", "[[divergence]]", f"check = {_toml_string(str(check))}"]
        if len(dtypes) == 1:
            lines.append(f"dtype = {_toml_string(dtypes[0])}")
        if common:
            lines.append("features = [" + ", ".join(_toml_string(f) for f in common) + "]")
        example = str(group["message"].iloc[0])[:160]
        lines.append(f"reason = {_toml_string('TODO: explain. ' + str(len(group)) + ' finding(s), e.g. ' + example)}")
    return "\n".join(lines) + "\n"
