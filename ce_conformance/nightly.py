"""The nightly job: a long, sharded differential run with a dated report, history and diff.

Seeds: the run's base seed and a shard count ``n`` define sub-seeds ``k = 0, 1, ...``; shard
``i/n`` runs the slices with ``k % n == i - 1`` and, within them, only the drawn cases whose id
is ``i - 1`` modulo ``n`` (Hypothesis tries its simplest examples under every seed), so n
machines cover disjoint cases and merging their directories gives exactly what one machine
running all the slices finds.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .ecosystem import explain, mark_known, record_baselines
from .errors import ConfigurationError
from .findings import Recorder, finalize
from .report import append_history, diff_findings, previous_run, write_html, _load
from .runner import FuzzConfig, FuzzRun

SLICE_EXAMPLES = 500
"""Examples per sub-seed when running against a time budget."""


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 1, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigurationError(f"--shard {text!r}: expected I/N, e.g. 2/4") from None
    if not 1 <= index <= count:
        raise ConfigurationError(f"--shard {text!r}: need 1 <= I <= N")
    return index, count


def sub_seed(base: int, k: int) -> int:
    """Deterministic, well-spread seed of slice ``k`` (independent of the shard layout)."""
    return int.from_bytes(hashlib.sha256(f"{base}:{k}".encode()).digest()[:4], "little")


@dataclass
class NightlyResult:
    run_dir: Path
    report: Path
    diff: object
    previous: Path | None
    findings: int
    interrupted: str | None
    seconds: float


def run_nightly(config: FuzzConfig, *, out_root: Path, shard: tuple[int, int] = (1, 1), slices: int | None = None,
                budget_minutes: float | None = None, pairs: list[tuple[str, str]] | None = None,
                run_name: str | None = None, baselines: tuple[list, list[str]] = ([], [])) -> NightlyResult:
    """Run the shard's slices into ``out_root/<date>-shard-i-of-n``, then report. ``baselines``:
    the :class:`~ce_conformance.ecosystem.AppliedBaseline` list that explains findings, and the
    notes on frameworks without one; the diff's ``known`` column carries their reasons."""
    index, count = shard
    start = time.monotonic()
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    run_dir = out_root / (run_name or f"{stamp}-shard-{index}-of-{count}")
    run_dir.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(run_dir)  # one stream for all slices of this shard
    recorder.close()
    if slices is None:
        slices = count if budget_minutes is None else 10**6
    deadline = None if budget_minutes is None else start + budget_minutes * 60
    seeds, interrupted, findings = [], None, 0
    for k in range(slices):
        if k % count != index - 1:
            continue
        if deadline is not None and time.monotonic() > deadline:
            break
        left = None if config.max_seconds is None else config.max_seconds - (time.monotonic() - start)
        if left is not None and left <= 0:
            break  # --max-time bounds the whole shard: every slice gets what is left
        seed = sub_seed(config.seed, k)
        seeds.append(seed)
        examples = config.max_examples if deadline is None else SLICE_EXAMPLES
        modulus = count if budget_minutes is not None else slices  # every bounded slice owns one residue
        slice_config = replace(config, seed=seed, max_examples=examples, out_dir=run_dir,
                               partition=(k % modulus, modulus),
                               curated_dirs=config.curated_dirs if index == 1 and not seeds[:-1] else [],
                               title=f"ce-conformance nightly {run_dir.name}", max_seconds=left)
        run = FuzzRun(slice_config, append=True, pairs=pairs or [])
        summary = run.run()
        findings += summary.findings
        if summary.interrupted:
            interrupted = summary.interrupted
            break
    meta = json.loads((run_dir / "config.json").read_text())
    meta.update(shard=f"{index}/{count}", seeds=seeds, base_seed=config.seed, pairs=pairs or [],
                budget_minutes=budget_minutes)
    (run_dir / "config.json").write_text(json.dumps(meta, indent=1, default=str))
    finalize(run_dir, title=f"ce-conformance nightly {run_dir.name}")
    record_baselines(run_dir, *baselines)
    previous = previous_run(out_root, run_dir)
    diff = diff_findings(_load(previous)[1] if previous else _load(run_dir)[1].iloc[0:0], _load(run_dir)[1])
    diff = mark_known(diff, explain(_load(run_dir)[1], baselines[0]))
    diff.to_csv(run_dir / "diff.csv", index=False)
    history = append_history(out_root, run_dir)
    report = write_html(run_dir, diff=diff, previous=previous, history=history)
    return NightlyResult(run_dir, report, diff, previous, findings, interrupted, time.monotonic() - start)
