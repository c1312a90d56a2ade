"""Vocabulary scale: N = 1024 rows, C = 128256 classes (Llama 3), float32 and bfloat16.

For the reference (loss + gradient) it prints the time and the peak of memory it allocates
(tracemalloc sees NumPy's buffers) as a multiple of the float64 logits (target <= 2); for the
torch and jax adapters, time and peak RSS of a fresh process each.

    python benchmarks/scale.py [--rows N] [--classes C]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc

import numpy as np

RUNNER = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
from ce_conformance import Case
import ce_conformance.adapters as adapters
name, rows, classes, dtype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
case = Case.cross_entropy(rng.standard_normal((rows, classes)), rng.integers(0, classes, rows), dtype=dtype)
adapter = adapters.load_adapter(name)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
outcome = adapter.run(case)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": outcome.status, "seconds": seconds, "peak_rss_mb": peak / 1024,
                  "rss_before_mb": before / 1024, "loss": float(outcome.loss) if outcome.loss is not None else None}))
"""


def reference_figures(rows: int, classes: int, dtype: str) -> dict:
    from ce_conformance.dtypes import numpy_dtype, round_to
    from ce_conformance.reference import cross_entropy, cross_entropy_grad

    rng = np.random.default_rng(0)
    logits = round_to(rng.standard_normal((rows, classes)), dtype).astype(numpy_dtype(dtype))
    target = rng.integers(0, classes, rows)
    fp64_bytes = rows * classes * 8
    tracemalloc.start()
    start = time.perf_counter()
    loss = float(cross_entropy(logits, target))
    grad = cross_entropy_grad(logits, target).input
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del grad
    return {"seconds": seconds, "peak_mb": peak / 2**20, "ratio": peak / fp64_bytes, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=128256)
    args = parser.parse_args()
    fp64_mb = args.rows * args.classes * 8 / 2**20
    print(f"N = {args.rows}, C = {args.classes}: float64 logits = {fp64_mb:.0f} MiB")
    for dtype in ("float32", "bfloat16"):
        ref = reference_figures(args.rows, args.classes, dtype)
        print(f"[{dtype}] reference  : {ref['seconds']:6.2f} s, peak allocated {ref['peak_mb']:7.0f} MiB = "
              f"{ref['ratio']:.2f} x the float64 logits (target <= 2), loss {ref['loss']:.4f}")
        for name in ("torch", "jax"):
            out = subprocess.run([sys.executable, "-c", RUNNER, name, str(args.rows), str(args.classes), dtype],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"[{dtype}] {name:10} : failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"[{dtype}] {name:10} : {figures['seconds']:6.2f} s (forward + backward, first call), peak RSS "
                  f"{figures['peak_rss_mb']:7.0f} MiB, status {figures['status']}, loss {figures['loss']:.4f}")


if __name__ == "__main__":
    main()
