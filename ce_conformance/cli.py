"""Command line: ``ce-conformance fuzz | gate | replay | adapters | report | nightly``.

Exit codes (all commands): 0 conformant / success, 1 findings, 2 usage or configuration error
(unknown adapter, unimportable ``--impl``, malformed case file), 130 / 143 interrupted by SIGINT /
SIGTERM (the tables for what was done are written).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from ce_conformance.adapters import KINDS, default_adapters

from ._version import __version__
from .errors import ConfigurationError

EXIT_OK, EXIT_FINDINGS, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130  # 143 after SIGTERM
NIGHTLY_COMPILE_BUDGET = 90.0
"""The nightly profile's --compile-budget: a cold inductor cache compiles each new graph in ~3 s,
and a 300-example nightly spent 440 s compiling against 160 s for everything else."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep the message short
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


DEVICE_HELP = ("where --kind torch puts the --impl function's tensors: cpu (default), cuda, cuda:1, ... "
               "(a fused CUDA/Triton kernel); unavailable: exit 2 with the reason")


FAMILY_HELP = ("loss family: cross_entropy (default; --impl has F.cross_entropy's signature) or "
               "linear_cross_entropy (--impl has F.linear_cross_entropy's: input, linear_weight, target, *, "
               "linear_bias, weight, reduction, ignore_index, label_smoothing)")


ECOSYSTEM_HELP = ("also run every framework's and kernel library's own loss of the family (cross_entropy: paddle, "
                  "mlx, tinygrad, tensorflow, keras on jax, torch and tensorflow, transformers, liger, flash-attn, "
                  "quack, transformer-engine; linear_cross_entropy: cut-cross-entropy, liger-linear, quack-linear) and apply each installed version's "
                  "shipped baseline; those not installed, or needing a GPU, are listed with the reason")
RUN_BASELINE_HELP = ("known divergences (TOML, or a shipped one by name), repeatable: the findings it covers are "
                     "reported as known, with the reason, and only the others fail the run")


def _add_ecosystem_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ecosystem", action="store_true", help=ECOSYSTEM_HELP)
    p.add_argument("--baseline", action="append", default=[], metavar="FILE", help=RUN_BASELINE_HELP)


def _add_run_options(p: argparse.ArgumentParser, *, default_out: str) -> None:
    p.add_argument("--impl", metavar="SPEC", help="implementation under test: module.path:function or "
                   "path/to/file.py:function (a loss class such as torch.nn:CrossEntropyLoss works too)")
    p.add_argument("--kind", choices=KINDS, default="torch",
                   help="what the --impl function takes and differentiates with: torch tensors (default), jax "
                        "or numpy arrays, or paddle, mlx, tinygrad, tensorflow or keras tensors (keras: on "
                        "$KERAS_BACKEND)")
    p.add_argument("--class-axis", type=int, choices=(1, -1), default=1,
                   help="where the --impl function wants the classes: 1 (torch's layout, default) or -1 "
                        "(last, as most other frameworks; logits, probability targets and gradients are moved)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--family", default="cross_entropy", help=FAMILY_HELP)
    p.add_argument("--features", metavar="LIST", default=None,
                   help="features to test --impl on: 'default' (all but legacy args, uint8 targets and "
                        "negative smoothing), 'all', or a comma-separated list; '-name' takes one away "
                        "('default,-invalid_input,-weights')")
    p.add_argument("--dtypes", metavar="LIST", default=None,
                   help="dtypes to draw cases in (default all: float16,bfloat16,float32,float64); '-name' "
                        "takes one away ('-float64' for a kernel without float64)")
    p.add_argument("--max-examples", type=int, metavar="N",
                   help="Hypothesis examples (default: the profile's; gate: 1000 at the ci profile)")
    p.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    p.add_argument("--covering", type=int, metavar="T", default=None,
                   help="covering phase: every T-tuple of option values in a valid case before exploration "
                        "(default: the profile's, 3 for ci and nightly, 2 for dev; 0 turns it off)")
    p.add_argument("--profile", choices=("dev", "ci", "nightly"), default="ci", help="settings profile (default ci)")
    p.add_argument("--cell-share", action="append", metavar="CELL=FRACTION", default=None,
                   help="most of exploration's judging time a scale cell (tiny, small, medium, vocab) may take; "
                        "repeatable; 'none' lifts every cap (default: none, nightly profile: vocab=0.25 and "
                        "medium=0.35)")
    p.add_argument("--out", type=Path, default=Path(default_out), help=f"output directory (default {default_out})")
    p.add_argument("--cases-dir", type=Path, help="where failing cases are saved (default OUT/cases)")
    p.add_argument("--database", type=Path, metavar="DIR",
                   help="persistent Hypothesis example database (default: $CE_CONFORMANCE_DB, else none)")
    p.add_argument("--no-shrink", action="store_true", help="save failing cases without shrinking them")
    p.add_argument("--shrink-seconds", type=float, default=None,
                   help="time budget for shrinking (default 60; 30 for gate)")
    p.add_argument("--no-curated", action="store_true", help="skip the curated edge cases under cases/curated")
    p.add_argument("--strict", action="store_true",
                   help="full checks: every feature (implies --features all) and arguments outside their "
                        "documented range that are silently accepted")
    p.add_argument("--deterministic", action="store_true",
                   help="run every case twice and fail on any bit that differs between the two runs (by default "
                        "only the curated and covering cases run twice, and a difference is reported, not failing)")
    p.add_argument("--oracle", choices=("reference", "torch"), default="reference",
                   help="'reference' (default): the float64 oracle and per-dtype budgets; 'torch': no worse "
                        "than torch's own result in the same dtype plus a margin")
    p.add_argument("--invalid-percent", type=int, default=15, help="share of deliberately invalid cases (default 15)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="per-case time limit for isolated adapters (default 60); after 2 timeouts (or crashes) "
                        "whose cases share features, cases with those features are quarantined (skipped)")
    p.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="bound the whole run: stop choosing cases after SECONDS, then write every table "
                        "(shrinking gets what is left)")
    p.add_argument("--in-process", action="store_true",
                   help="run --impl in this process (trusted code: faster start, no crash/hang protection)")
    p.add_argument("--isolate-all", action="store_true", help="also run built-in adapters in worker processes")
    p.add_argument("--compile-budget", metavar="SECONDS", default=None,
                   help="seconds the torch-compile adapters may spend compiling new graphs; past it a case whose "
                        "configuration has no graph yet is skipped with the reason, never run eagerly (default: "
                        f"none; nightly profile: {NIGHTLY_COMPILE_BUDGET:g}; 'none' lifts it)")
    p.add_argument("--worker-memory-mb", type=int, default=8192, metavar="MB",
                   help="address-space limit of a worker process (default 8192; 0 for none)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ce-conformance",
                     description="Conformance suite and differential fuzzer for cross-entropy loss implementations.",
                     epilog="exit codes: 0 conformant, 1 findings, 2 configuration error, 130 interrupted")
    parser.add_argument("--version", action="version", version=f"ce-conformance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fuzz = sub.add_parser("fuzz", help="differential fuzzing of adapters against the reference")
    fuzz.add_argument("--adapters", default=None,
                      help="comma-separated adapters (default: numpy,torch,jax,optax; for --family "
                           "linear_cross_entropy torch-linear,torch-linear-chunked; see 'adapters')")
    _add_run_options(fuzz, default_out="ce-out/fuzz")
    _add_ecosystem_options(fuzz)

    gate = sub.add_parser("gate", help="CI gate: exit 0 when --impl conforms, 1 on findings, 2 on bad config")
    _add_run_options(gate, default_out="ce-out/gate")
    gate.add_argument("--markdown", type=Path, metavar="FILE", help="also write the summary (for CI job summaries)")
    gate.add_argument("--baseline", type=Path, metavar="FILE",
                      help="known divergences (TOML), or a shipped one by name (torch-2.13-cpu): only "
                           "findings it does not cover fail the gate")
    gate.add_argument("--update-baseline", type=Path, metavar="FILE",
                      help="write a baseline covering the current findings to FILE (exit 0)")
    gate.add_argument("--fail-on-stale", action="store_true", help="also fail when a baseline entry matched nothing")
    gate.add_argument("--junit", type=Path, metavar="FILE", help="JUnit XML: one test case per check family")
    gate.add_argument("--checks", metavar="FAMILIES", default=None,
                      help="check families that fail the gate (default all: errors,contract,values,gradients,"
                           "mutation); the others still run and are reported. E.g. 'values,gradients' or "
                           "'all,-errors' to gate on numerics alone")

    replay = sub.add_parser("replay", help="run saved case files through adapters")
    replay.add_argument("cases", nargs="+", type=Path, metavar="CASE.json", help="case files or directories")
    replay.add_argument("--adapters", default=None, help="comma-separated adapters (default: numpy,torch,jax,optax)")
    replay.add_argument("--impl", metavar="SPEC")
    replay.add_argument("--kind", choices=KINDS, default="torch")
    replay.add_argument("--class-axis", type=int, choices=(1, -1), default=1)
    replay.add_argument("--device", default="cpu", help=DEVICE_HELP)
    replay.add_argument("--family", default=None, help="the --impl function's loss family (default: the cases')")
    replay.add_argument("--features", default="all")
    replay.add_argument("--strict", action="store_true")
    replay.add_argument("--oracle", choices=("reference", "torch"), default="reference",
                        help="judge as the run that saved the case did: the float64 reference (default) or "
                             "torch's own result in the same dtype plus a margin")

    nightly = sub.add_parser("nightly", help="long differential run: dated directory, HTML report, history, diff")
    nightly.add_argument("--adapters", default=None, help="comma-separated adapters (default: every built-in, "
                         "torch-cuda and torch-compile included; unavailable ones are reported)")
    _add_run_options(nightly, default_out="reports")
    _add_ecosystem_options(nightly)
    nightly.set_defaults(profile="nightly")
    budget = nightly.add_mutually_exclusive_group()
    budget.add_argument("--budget-minutes", type=float, metavar="M", help="run slices of 500 examples until M minutes")
    nightly.add_argument("--shard", metavar="I/N", help="run shard I of N (disjoint seeds; merge with report --merge)")
    nightly.add_argument("--slices", type=int, metavar="K", help="seed slices in all (default N, or unbounded "
                         "with --budget-minutes)")
    nightly.add_argument("--pair", action="append", default=[], metavar="A,B",
                         help="pairwise differential: also compare adapter B against adapter A (repeatable; the "
                              "family's eager-vs-compiled pair, torch,torch-compile or torch-linear,"
                              "torch-linear-compile, is added whenever both run)")
    nightly.add_argument("--name", help="run directory name (default: UTC time and shard)")

    report = sub.add_parser("report", help="rebuild a run's tables and HTML, compare or merge runs")
    report.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR")
    report.add_argument("--compare", nargs=2, type=Path, metavar=("RUN_A", "RUN_B"),
                        help="diff two runs by finding signature: new, fixed, still failing")
    report.add_argument("--merge", nargs="+", type=Path, metavar="DIR", help="merge shard run directories")
    report.add_argument("--out", type=Path, help="where --merge writes the merged run")

    sub.add_parser("adapters", help="list adapters, their availability and capabilities")
    return parser


def _adapters(args: argparse.Namespace, defaults: tuple[str, ...] = ()) -> list[Any]:
    """--adapters (else ``defaults``), plus the --impl adapter (of ``--family``)."""
    from ce_conformance.adapters import load_adapters, user_adapter

    if getattr(args, "strict", False) and args.features is None:
        args.features = "all"  # strict: the full checks, every feature included
    names = getattr(args, "adapters", None)
    chosen = load_adapters(names) if names else load_adapters(list(defaults))
    if getattr(args, "ecosystem", False):
        from ce_conformance.adapters import FAMILY_ECOSYSTEMS
        from ce_conformance.family import family_named

        ecosystem = FAMILY_ECOSYSTEMS[family_named(args.family).name]
        chosen += load_adapters([n for n in ecosystem if n not in {a.name for a in chosen}])
    if args.impl:
        chosen.append(user_adapter(args.impl, args.kind, features=args.features, device=args.device,
                                   class_axis=getattr(args, "class_axis", 1),
                                   family=args.family))
    if not chosen:
        raise ConfigurationError("nothing to run: name --adapters or --impl")
    return chosen


def _run_baselines(args: argparse.Namespace, adapters: list[Any]) -> tuple[list[Any], list[str]]:
    """The baselines that explain a fuzz or nightly run's findings: each ``--baseline`` for every
    adapter, and under ``--ecosystem`` each framework's shipped one for its own adapters. Loaded
    here, so a bad file is refused before anything runs."""
    from .baseline import SHIPPED_DIR, Baseline, resolve_baseline
    from .ecosystem import AppliedBaseline, EcosystemBaselines

    applied = []
    for name in args.baseline:
        Baseline.load(name)
        shipped = resolve_baseline(name).parent == SHIPPED_DIR
        applied.append(AppliedBaseline(Path(name).name.removesuffix(".toml") if shipped else str(Path(name).resolve())))
    if not args.ecosystem:
        return applied, []
    shipped = EcosystemBaselines.for_adapters([a.describe() for a in adapters])
    return applied + shipped.applied, shipped.missing


DEFAULT_GATE_EXAMPLES = 1000
DEFAULT_GATE_SHRINK_SECONDS = 30.0


def _fuzz_config(args: argparse.Namespace, adapters: list[Any], title: str):
    from .runner import DEFAULT_CURATED_DIR, FuzzConfig
    from .budget import parse_shares
    from .selection import parse_dtypes

    if args.max_examples is not None and args.max_examples < 1:
        raise ConfigurationError("--max-examples must be at least 1")
    if args.max_time is not None and args.max_time <= 0:
        raise ConfigurationError(f"--max-time must be positive, got {args.max_time:g}")
    if args.covering is not None and not 0 <= args.covering <= 4:
        raise ConfigurationError(f"--covering must be 0 (off) or a strength from 1 to 4, got {args.covering}")
    if args.command == "gate":  # the gate's default budget: about 15 s for torch on 2 cores
        if args.max_examples is None and args.profile == "ci":
            args.max_examples = DEFAULT_GATE_EXAMPLES
        if args.shrink_seconds is None:
            args.shrink_seconds = DEFAULT_GATE_SHRINK_SECONDS
    if args.shrink_seconds is None:
        args.shrink_seconds = 60.0
    return FuzzConfig(adapters=adapters, profile=args.profile, max_examples=args.max_examples, seed=args.seed,
                      out_dir=args.out, cases_dir=args.cases_dir, database_dir=args.database,
                      curated_dirs=[] if args.no_curated else [DEFAULT_CURATED_DIR], shrink=not args.no_shrink,
                      shrink_seconds=args.shrink_seconds, strict=args.strict, oracle=args.oracle,
                      invalid_percent=args.invalid_percent, progress=not args.no_progress and sys.stderr.isatty(),
                      covering=args.covering, title=title, dtypes=parse_dtypes(args.dtypes),
                      cell_shares=parse_shares(args.cell_share),
                      impl_spec=args.impl, impl_kind=args.kind if args.impl else None, max_seconds=args.max_time,
                      timeout=args.timeout, memory_mb=args.worker_memory_mb or None, family=args.family,
                      deterministic=args.deterministic,
                      isolate="none" if args.in_process else ("all" if args.isolate_all else "default"))


def cmd_fuzz(args: argparse.Namespace) -> int:
    from .console import Block, show
    from .runner import FuzzRun

    adapters = _adapters(args, () if args.impl else default_adapters(args.family))
    applied, missing = _run_baselines(args, adapters)
    run = FuzzRun(_fuzz_config(args, adapters, "ce-conformance fuzz"))
    summary = run.run()
    checks = _gating_checks(args)
    unexplained = summary.gating_findings(checks)
    counts = (f"{summary.results} adapter runs, {summary.findings} findings in {summary.seconds:.1f} s; "
              f"tables in {summary.out_dir} (results/findings .csv/.parquet, summary.md)")
    lines = [summary.summary_markdown, counts]
    if applied or missing:
        unexplained, explained_line = _explained(summary.out_dir, applied, missing, checks)
        lines.append(explained_line)
    if summary.jax_compilations:
        lines.append("JAX compilations: " + ", ".join(f"{k} {v}" for k, v in summary.jax_compilations.items()))
    conformant = unexplained == 0  # with baselines: no finding they leave unexplained
    verdict = ("CONFORMANT: " if conformant else "FINDINGS: ") + counts
    blocks = [Block.markdown(summary.summary_markdown)] + [Block.text(t) for t in lines[2:]]
    show(verdict, ok=conformant, blocks=blocks, plain="\n".join(lines))
    if summary.interrupted:
        return _interrupt_code(summary.interrupted)
    return EXIT_OK if conformant else EXIT_FINDINGS


def _gating_checks(args: argparse.Namespace, chosen: frozenset[str] | None = None) -> frozenset[str]:
    """The check families whose findings fail the run: ``chosen`` (gate's ``--checks``; fuzz and
    nightly: all but ``determinism``), and ``determinism`` with ``--deterministic``."""
    from .selection import DEFAULT_CHECKS

    return (DEFAULT_CHECKS if chosen is None else chosen) | ({"determinism"} if args.deterministic else set())


def _explained(run_dir: Path, applied: list[Any], missing: list[str], checks: frozenset[str]) -> tuple[int, str]:
    """Record the baselines in the run, and say how many findings they explain and how many of
    the others fail the run (those of a family in ``checks``)."""
    from .ecosystem import explain, record_baselines
    from .findings import load_run

    record_baselines(run_dir, applied, missing)
    findings = explain(load_run(run_dir)[1], applied)
    unexplained = int(((findings["known"] == "") & findings["family"].isin(checks)).sum())
    names = ", ".join(b.name for b in applied) or "none"
    text = (f"baselines ({names}): {len(findings) - unexplained} finding(s) known, {unexplained} unexplained"
            + "".join(f"\n  {note}" for note in missing))
    return unexplained, text


def cmd_gate(args: argparse.Namespace) -> int:
    from .baseline import Baseline, baseline_from_findings
    from .findings import read_coverage
    from .gate import run_gate
    from .junit import write_junit
    from .selection import parse_checks

    if not args.impl:
        raise ConfigurationError("gate needs --impl SPEC (the implementation to gate)")
    baseline = Baseline.load(args.baseline) if args.baseline else None  # refuse a bad file before running
    checks = _gating_checks(args, parse_checks(args.checks))
    adapters = _adapters(args)
    result = run_gate(_fuzz_config(args, adapters, f"ce-conformance gate: {args.impl}"), baseline, checks)
    summary = result.summary
    if args.update_baseline:
        args.update_baseline.parent.mkdir(parents=True, exist_ok=True)
        args.update_baseline.write_text(baseline_from_findings(result.findings, implementation=args.impl))
        print(f"wrote a baseline covering {len(result.findings)} finding(s) to {args.update_baseline}; "
              "edit the reasons")
        return EXIT_OK
    text = result.baseline_text
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(summary.summary_markdown + (f"\n### Baseline\n\n```\n{text}\n```\n" if text else ""))
    coverage = read_coverage(summary.out_dir)
    if args.junit:
        write_junit(args.junit, name=args.impl, new=result.new, covered=result.covered, seconds=summary.seconds,
                    runs=summary.results, impl_spec=args.impl, impl_kind=args.kind, coverage=coverage,
                    reported=result.reported, oracle=args.oracle, devices=summary.devices, class_axis=args.class_axis)
    if summary.interrupted:
        print(f"interrupted ({summary.interrupted}); partial tables in {summary.out_dir}", file=sys.stderr)
        return _interrupt_code(summary.interrupted)
    stale_fail = args.fail_on_stale and bool(result.stale)
    stopped = (f"; stopped at --max-time {args.max_time:g} s after {summary.examples} drawn examples"
               if summary.out_of_time else "")
    if result.passed and not stale_fail:
        verdict = (f"PASS {args.impl}: {summary.results} adapter runs, no new findings "
                   f"({summary.seconds:.1f} s{stopped})")
    elif result.passed:
        verdict = f"FAIL {args.impl}: {len(result.stale)} stale baseline entries (--fail-on-stale)"
    else:
        verdict = (f"FAIL {args.impl}: {len(result.new)} new finding(s) ({summary.seconds:.1f} s{stopped}); "
                   f"tables in {summary.out_dir}")
    _show_gate(verdict, result, args, coverage, stale_only=result.passed and stale_fail)
    return EXIT_OK if result.passed and not stale_fail else EXIT_FINDINGS


def _show_gate(verdict: str, result: Any, args: argparse.Namespace, coverage: dict[str, Any], *,
               stale_only: bool) -> None:
    """The gate's verdict, failing checks, non-gating findings and coverage: rich on a terminal,
    the historical plain layout (baseline, verdict, report, coverage) when piped."""
    from .console import Block, show
    from .covering import coverage_frame, coverage_text
    from .gate import blocks_text

    failing = result.report_blocks(args.impl, args.kind, class_axis=args.class_axis)
    reported = result.reported_text()
    reported_blocks = (result.report_blocks(args.impl, args.kind, findings=result.reported, class_axis=args.class_axis)
                       if reported else [])
    plain = [result.baseline_text] if result.baseline_text else []
    plain.append(verdict)
    quarantined = "\n".join(f"quarantined for {q['adapter']}: {q['quarantine']} ({q['hits']} seen, then "
                            f"{q['skipped']} cases skipped)" for q in result.summary.quarantined)
    plain += [quarantined] if quarantined else []
    if not stale_only:
        plain += [b for b in (blocks_text(failing), reported, blocks_text(reported_blocks)) if b]
        plain.append(coverage_text(coverage))
    blocks = [Block.text(result.baseline_text, title="baseline:")] if result.baseline_text else []
    blocks += [Block.text(quarantined)] if quarantined else []
    blocks += failing
    if reported:
        blocks += [Block.text(reported)] + reported_blocks
    if not stale_only and coverage.get("cases"):
        blocks += [Block.table(coverage_frame(coverage), title="coverage (valid cases per level; 0 never reached)"),
                   Block.text("\n".join(coverage_text(coverage, levels=False).splitlines()[1:]).strip())]
    show(verdict, ok=verdict.startswith("PASS"), blocks=blocks, plain="\n".join(plain))


def cmd_nightly(args: argparse.Namespace) -> int:
    from ce_conformance.adapters import EAGER_COMPILED_PAIRS, default_adapters
    from .family import family_named
    from .nightly import parse_shard, run_nightly

    shard = parse_shard(args.shard)
    chosen = _adapters(args, default_adapters(args.family, nightly=True))  # the built-ins stay beside --impl: the diff compares nights
    names = {a.name for a in chosen}
    pairs = []
    for text in args.pair:
        parts = tuple(p.strip() for p in text.split(","))
        if len(parts) != 2 or not set(parts) <= names:
            raise ConfigurationError(f"--pair {text!r}: expected two of the run's adapters ({', '.join(sorted(names))})")
        pairs.append(parts)
    eager_compiled = EAGER_COMPILED_PAIRS[family_named(args.family).name]
    if set(eager_compiled) <= names and eager_compiled not in pairs:  # eager vs compiled parity, every night
        pairs.append(eager_compiled)
    applied, missing = _run_baselines(args, chosen)
    config = _fuzz_config(args, chosen, "ce-conformance nightly")
    result = run_nightly(config, out_root=args.out, shard=shard, slices=args.slices,
                         budget_minutes=args.budget_minutes, pairs=pairs, run_name=args.name,
                         baselines=(applied, missing))
    counts = result.diff.groupby("status").size().to_dict() if len(result.diff) else {}
    from .compare import CHECK_FAMILIES

    gating = result.diff["check"].map(lambda check: CHECK_FAMILIES.get(check, "other")).isin(
        _gating_checks(args) | {"other"}) if len(result.diff) else None
    new_unexplained = int(((result.diff["status"] == "new") & (result.diff["known"] == "") & gating).sum()) \
        if len(result.diff) else 0
    print(f"nightly run {result.run_dir.name}: {result.findings} findings in {result.seconds:.0f} s; "
          f"since {result.previous.name if result.previous else 'nothing (first run)'}: "
          + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("new", "fixed", "still failing"))
          + (f" ({counts.get('new', 0) - new_unexplained} of the new explained by baselines)" if applied else ""))
    for note in missing:
        print(note)
    print(f"report: {result.report}")
    if result.interrupted:
        return _interrupt_code(result.interrupted)
    return EXIT_FINDINGS if new_unexplained else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .findings import finalize
    from .report import compare_runs, merge_runs, previous_run, write_html, diff_findings, _load

    if args.compare:
        diff = compare_runs(*args.compare)
        print(diff.drop(columns=["signature", "case_path"]).to_string(index=False) if len(diff) else "no findings in either run")
        return EXIT_FINDINGS if (diff["status"] == "new").any() else EXIT_OK
    if args.merge:
        if not args.out:
            raise ConfigurationError("report --merge needs --out DIR")
        merged = merge_runs(list(args.merge), args.out)
        print(f"merged {len(args.merge)} run(s) into {merged}; report: {write_html(merged)}")
        return EXIT_OK
    if not args.runs:
        raise ConfigurationError("report needs RUN_DIR, --compare RUN_A RUN_B or --merge DIR...")
    for run_dir in args.runs:
        _load(run_dir)  # refuses what is not a run directory
        print(finalize(run_dir, title=f"ce-conformance report: {run_dir.name}"))
        previous = previous_run(run_dir.parent, run_dir) if run_dir.parent.is_dir() else None
        diff = diff_findings(_load(previous)[1], _load(run_dir)[1]) if previous else None
        print(f"report: {write_html(run_dir, diff=diff, previous=previous)}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    import pandas as pd

    from .case import Case
    from .compare import compare
    from .reference import evaluate
    from .runner import oracle_adapter

    files: list[Path] = []
    for target in args.cases:
        if target.is_dir():
            files.extend(sorted(target.glob("*.json")))
        elif target.exists():
            files.append(target)
        else:
            raise ConfigurationError(f"no such case file {str(target)!r}")
    cases = [(path, Case.load(path)) for path in files]  # refuse bad files before running anything
    families = sorted({case.family for _, case in cases})
    if args.family is None:
        if len(families) > 1 and args.impl:
            raise ConfigurationError(f"the cases are of several loss families ({', '.join(families)}): "
                                     "name the --impl function's with --family")
        args.family = families[0] if families else "cross_entropy"
    adapters = _adapters(args, () if args.impl else default_adapters(args.family))
    oracle = oracle_adapter(args.oracle, args.family)
    rows = []
    for path, case in cases:
        ref = evaluate(case) if case.is_valid else None
        native = oracle.timed_run(case) if oracle is not None and case.is_valid else None
        for adapter in adapters:
            reason = adapter.availability()
            missing = adapter.capabilities.missing(case)
            if reason or missing:
                rows.append((path.name, case.id, adapter.name, "skipped", reason or ",".join(missing)))
                continue
            outcome = adapter.timed_run(case)
            if outcome.status == "skipped":  # the adapter cannot run it here (a dtype its framework lacks)
                rows.append((path.name, case.id, adapter.name, "skipped", outcome.skip_reason))
                continue
            comparison = compare(case, outcome, ref, adapter.capabilities, strict=args.strict, native=native)
            if comparison.passed:
                rows.append((path.name, case.id, adapter.name, "passed", ""))
            for verdict in comparison.verdicts:
                rows.append((path.name, case.id, adapter.name, verdict.check, verdict.message[:160]))
    table = pd.DataFrame(rows, columns=["file", "case", "adapter", "result", "message"])
    print(table.to_string(index=False))
    failed = ~table["result"].isin(["passed", "skipped"])
    return EXIT_FINDINGS if failed.any() else EXIT_OK


def cmd_adapters(args: argparse.Namespace) -> int:  # noqa: ARG001
    import pandas as pd

    from ce_conformance.adapters import available_names, load_adapter

    rows = []
    for name in available_names():
        try:
            rows.append(load_adapter(name).describe())
        except ConfigurationError as exc:
            rows.append({"adapter": name, "available": False, "reason": str(exc)})
    frame = pd.DataFrame(rows)
    columns = ["adapter", "families", "available", "dtypes", "gradients", "unsupported", "reason"]
    print(frame.reindex(columns=columns).fillna("").to_string(index=False))
    return EXIT_OK


def _interrupt_code(signal_name: str) -> int:
    """130 for SIGINT, 143 for SIGTERM: 128 + the signal number, as shells report it."""
    import signal

    return 128 + getattr(signal, signal_name, signal.SIGINT).value


COMMANDS = {"fuzz": cmd_fuzz, "gate": cmd_gate, "replay": cmd_replay, "adapters": cmd_adapters,
            "nightly": cmd_nightly, "report": cmd_report}


@contextlib.contextmanager
def _compile_budget(args: argparse.Namespace):
    """--compile-budget reaches the torch-compile adapters (here and in their worker processes)
    through their environment variable, for this command only."""
    from ce_conformance.adapters.torch_adapter import COMPILE_BUDGET_VARIABLE, parse_compile_budget

    value = getattr(args, "compile_budget", None)
    if value is None and getattr(args, "profile", None) == "nightly":
        value = f"{NIGHTLY_COMPILE_BUDGET:g}"
    if value is None:
        yield
        return
    value = str(value).strip().lower()
    parse_compile_budget(value, "--compile-budget")  # refused here, before any adapter loads
    before = os.environ.get(COMPILE_BUDGET_VARIABLE)
    os.environ[COMPILE_BUDGET_VARIABLE] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(COMPILE_BUDGET_VARIABLE, None)
        else:
            os.environ[COMPILE_BUDGET_VARIABLE] = before


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        with _compile_budget(args):
            return COMMANDS[args.command](args)
    except BrokenPipeError:  # `ce-conformance ... | head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except ConfigurationError as exc:
        print(f"ce-conformance {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
