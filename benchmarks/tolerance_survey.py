"""Measure torch's own CPU error against the reference, in the tolerance model's ULPs.

The per-dtype budgets in ce_conformance/tolerance.py are set from this distribution: a budget
must sit above torch's worst case (torch itself must pass) and below the errors of known
precision bugs. Run: ``python benchmarks/tolerance_survey.py [--examples N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import collections
import warnings

import numpy as np
from hypothesis import HealthCheck, given, seed, settings

from ce_conformance.adapters.torch_adapter import TorchAdapter
from ce_conformance import reference
from ce_conformance.strategies import SizeLimits, cross_entropy_cases
from ce_conformance.compare import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    adapter = TorchAdapter()
    errors: dict[tuple[str, str], list[float]] = collections.defaultdict(list)  # error / budget
    worst: dict[tuple[str, str], tuple[float, str]] = {}

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(cross_entropy_cases(limits=SizeLimits(vocab_percent=10)))
    def survey(case):
        if case.target_dtype == "uint8" and case.weight is not None and case.label_smoothing > 0:
            return
        outcome = adapter.run(case)
        if outcome.status != "ok":
            return
        comparison = compare(case, outcome, reference.evaluate(case), adapter.capabilities)
        for name, value in comparison.max_ratio.items():  # worst error / allowed error, per quantity
            errors[(case.dtype, name)].append(value)
            if value >= worst.get((case.dtype, name), (-1.0, ""))[0]:
                worst[(case.dtype, name)] = (value, repr(case))

    survey()
    print(f"torch {__import__('torch').__version__} CPU error vs the reference, as a fraction of the allowed error "
          f"(the tolerance model's per-case budget; torch passes while max < 1) — {args.examples} examples, seed {args.seed}")
    print(f"{'dtype':9} {'quantity':12} {'n':>5} {'p50':>8} {'p99':>8} {'max':>8}")
    for (dtype, name), values in sorted(errors.items()):
        v = np.array(values)
        print(f"{dtype:9} {name:12} {v.size:5d} {np.median(v):8.4f} {np.quantile(v, 0.99):8.4f} {v.max():8.4f}")
    for key, (value, text) in sorted(worst.items()):
        print(f"worst {key}: {value:.3f} of budget in {text}")


if __name__ == "__main__":
    main()
