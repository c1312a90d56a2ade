"""Time to detect: the gate, at its default budget, on every planted bug.

For each bug in tests/planted_bugs.py it runs the gate as ``ce-conformance gate --impl`` does
(isolated worker, curated cases, Hypothesis, shrinking) and records the time from the start of
the run to the first finding. Prints each, then the median (target <= 5 s) and max (<= 60 s).

    python benchmarks/detect.py [--seed S] [--bugs a,b,...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bugs", default="")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT / "tests"))
    import planted_bugs

    from ce_conformance.adapters import user_adapter
    from ce_conformance.runner import FuzzConfig, FuzzRun

    names = [b for b in args.bugs.split(",") if b] or sorted(planted_bugs.BUGS)
    detect, totals, missed = [], [], []
    print(f"{'bug':34} {'class':>5} {'first finding':>14} {'whole gate':>11}  checks")
    for name in names:
        adapter = user_adapter(f"{ROOT / 'tests' / 'planted_bugs.py'}:{name}")
        with tempfile.TemporaryDirectory() as out:
            summary = FuzzRun(FuzzConfig(adapters=[adapter], out_dir=Path(out), seed=args.seed, progress=False,
                                         impl_spec=name, impl_kind="torch")).run()
        first = summary.first_finding_seconds
        checks = ",".join(sorted({check for _, check in summary.signatures}))
        if first is None:
            missed.append(name)
            print(f"{name:34} {planted_bugs.BUGS[name][0]:5d} {'MISSED':>14} {summary.seconds:10.1f}s")
            continue
        detect.append(first)
        totals.append(summary.seconds)
        print(f"{name:34} {planted_bugs.BUGS[name][0]:5d} {first:13.2f}s {summary.seconds:10.1f}s  {checks}")
    print(f"\ntime to first finding over {len(detect)} bugs: median {statistics.median(detect):.2f} s "
          f"(target <= 5), max {max(detect):.2f} s (target <= 60); missed: {missed or 'none'}")
    print(f"whole gate (incl. shrinking): median {statistics.median(totals):.1f} s, max {max(totals):.1f} s")


if __name__ == "__main__":
    main()
