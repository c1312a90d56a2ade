"""Gating a kernel that hangs (or crashes) on one feature, against gating a correct one.

Runs the default gate (``ce-conformance gate --impl ... --timeout T``) on torch's
``F.cross_entropy`` and on each misbehaving kernel of tests/misbehaving.py, in one process run,
and prints each wall time as a ratio to the torch gate (target <= 2x), with the timeouts paid
and the cases the quarantine skipped.

    python benchmarks/hang.py [--timeout 2] [--seed 0] [--kernels hang_on_smoothing,...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ("hang_on_smoothing", "hang_on_kdim", "abort_on_weights")


def _gate(spec: str, out: Path, timeout: float, seed: int) -> tuple[float, int, int, int]:
    from ce_conformance.cli import main
    from ce_conformance.findings import load_run

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["gate", "--impl", spec, "--out", str(out), "--timeout", str(timeout), "--seed", str(seed),
                     "--no-progress"])
    seconds = time.perf_counter() - start
    results, findings = load_run(out)
    paid = int(findings["check"].isin(["timeout", "crash"]).sum())
    skipped = int(results["skip_reason"].fillna("").str.startswith("quarantined").sum())
    return seconds, code, paid, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernels", default=",".join(KERNELS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        base, code, _, _ = _gate("torch.nn.functional:cross_entropy", Path(tmp) / "torch", args.timeout, args.seed)
        print(f"{'kernel':22} {'exit':>4} {'wall':>8} {'vs torch':>9} {'timeouts/crashes':>17} {'quarantined':>12}")
        print(f"{'F.cross_entropy':22} {code:4d} {base:7.1f}s {1.0:8.2f}x {'-':>17} {'-':>12}")
        worst = 0.0
        for name in [k for k in args.kernels.split(",") if k]:
            spec = f"{ROOT / 'tests' / 'misbehaving.py'}:{name}"
            seconds, code, paid, skipped = _gate(spec, Path(tmp) / name, args.timeout, args.seed)
            worst = max(worst, seconds / base)
            print(f"{name:22} {code:4d} {seconds:7.1f}s {seconds / base:8.2f}x {paid:17d} {skipped:12d}")
    print(f"\nworst ratio {worst:.2f}x (target <= 2x) at --timeout {args.timeout:g}")
    sys.exit(0)


if __name__ == "__main__":
    main()
