"""Throughput: bare Hypothesis generation vs the end-to-end differential run, in one process.

Prints the generation rate of the case strategy alone, the end-to-end rate with the numpy,
torch and jax adapters (forward + gradients + comparison + recording), their ratio (target:
>= 0.40 after warm-up), the per-stage time breakdown and the JAX compilation count at two run
lengths (it must stay bounded by the shape buckets, not grow with the examples).

    python benchmarks/throughput.py [--examples N] [--seed S]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

from hypothesis import HealthCheck, given, seed, settings

import ce_conformance.adapters as adapters
from ce_conformance.profiles import size_limits_for
from ce_conformance.runner import FuzzConfig, FuzzRun
from ce_conformance.strategies import cross_entropy_cases


def bare_rate(examples: int, seed_value: int) -> float:
    count = 0

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(cross_entropy_cases(limits=size_limits_for("ci"), invalid_percent=15))
    def generate(case):
        nonlocal count
        count += 1

    start = time.perf_counter()
    generate()
    return count / (time.perf_counter() - start)


def differential(examples: int, seed_value: int, names: list[str]):
    chosen = adapters.load_adapters(names)
    with tempfile.TemporaryDirectory() as out:
        run = FuzzRun(FuzzConfig(adapters=chosen, out_dir=out, max_examples=examples, seed=seed_value,
                                 shrink=False, curated_dirs=[], progress=False))
        summary = run.run()
    return summary, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapters", default="numpy,torch,jax")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = args.adapters.split(",")

    warm, _ = differential(args.examples, args.seed, names)  # warm-up: imports, JAX compilations of its buckets
    bare = bare_rate(args.examples, args.seed)
    summary, chosen = differential(args.examples, args.seed, names)
    e2e = summary.examples / summary.seconds
    stages = dict(summary.stage_seconds)
    generation = summary.seconds - sum(stages.values())
    print(f"examples: {args.examples} (seed {args.seed}), adapters: {', '.join(names)}")
    print(f"bare generation    : {bare:8.1f} examples/s")
    print(f"end-to-end         : {e2e:8.1f} examples/s")
    print(f"ratio              : {e2e / bare:8.2f}   (target >= 0.40)")
    print("per-stage time (s) :")
    print(f"  {'generate + hypothesis':24} {generation:7.2f}  {generation / summary.seconds:6.1%}")
    for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:24} {seconds:7.2f}  {seconds / summary.seconds:6.1%}")
    if "jax" in names:
        from ce_conformance.adapters.jax_adapter import _TRACES, CLASS_BUCKETS, ROW_BUCKETS, JaxAdapter

        bound = 2 * 4 * len(ROW_BUCKETS) * len(CLASS_BUCKETS)
        print(f"JAX compilations   : {warm.jax_compilations.get('jax', 0)} in the warm-up "
              f"({stages_of(warm, 'adapter:jax'):.1f} s of JAX time), {summary.jax_compilations.get('jax', 0)} "
              f"in the measured run (compiled functions are shared per process)")
        seen, counts = 2 * args.examples, [f"{_TRACES.get(JaxAdapter, 0)} after {2 * args.examples}"]
        for factor in (2, 4):
            differential(args.examples * factor, args.seed + factor, ["jax"])
            seen += args.examples * factor
            counts.append(f"{_TRACES.get(JaxAdapter, 0)} after {seen}")
        print(f"JAX compilations, cumulative in this process: {', '.join(counts)} examples "
              f"(bound: modes x dtypes x row x class buckets = {bound})")


def stages_of(summary, stage: str) -> float:
    return summary.stage_seconds.get(stage, 0.0)


if __name__ == "__main__":
    main()
