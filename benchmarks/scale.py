"""Vocabulary scale: one N = 1024, C = 128256 (Llama 3) case, judged end to end.

In one run, for float32 and bfloat16: torch's native forward + backward (warm, the best of
two; so is every stage, with the numba engine's kernels loaded first), the torch adapter on the case (conversions, mutation checks), the reference
(``reference.evaluate``: loss, gradients and the per-case error model), the comparison, and
the whole differential (adapter + reference + comparison), each as a ratio to the native call
(issue targets: reference <= 2x, adapter <= 1.5x, differential <= 3x), with the reference's
peak allocation (recycled gradient memory included) as a multiple of the float64 logits
(target <= 2), and the reference's first call on the case (fresh memory for its gradient, after
the adapter's torch calls: what a run pays where no idle buffer fits, its first case of a size).
Its header names the vector instructions numba compiled for and torch's kernels use: the ratios
depend on them.

    python benchmarks/scale.py [--rows N] [--classes C]
"""

from __future__ import annotations

import argparse
import warnings
import time
import tracemalloc

import numpy as np

def _best(fn, repeat: int = 2) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        value = None  # the last call's result goes before the next call, as a run drops a judged case's
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def figures(rows: int, classes: int, dtype: str) -> dict:
    import torch

    from ce_conformance import Case, buffers
    from ce_conformance.adapters import load_adapter
    from ce_conformance.compare import compare
    from ce_conformance.reference import evaluate

    rng = np.random.default_rng(0)
    case = Case.cross_entropy(rng.standard_normal((rows, classes)), rng.integers(0, classes, rows), dtype=dtype)
    x = torch.tensor(case.input.astype(np.float32)).to(getattr(torch, dtype)).requires_grad_()
    t = torch.tensor(case.target)

    def native():
        x.grad = None
        torch.nn.functional.cross_entropy(x, t).backward()

    native()  # warm-up: first-call allocations are not the kernel's cost
    out = {"native": _best(native)[0]}
    adapter = load_adapter("torch")
    adapter.timed_run(case)  # warm-up, as the native call's: torch's first backward on fresh memory is slower
    out["adapter"], outcome = _best(lambda: adapter.timed_run(case))
    # the engine's kernels load (or compile, in a fresh environment) on first use: a one-off per
    # process, like torch's first-call allocations, so a small case takes it before timing
    evaluate(Case.cross_entropy(case.input[:2], case.target[:2], dtype=dtype))
    # its first call takes fresh memory for its gradient, as a run's first case of this size does;
    # later calls recycle it (buffers.py)
    out["first reference"] = _best(lambda: evaluate(case), repeat=1)[0]
    out["reference"], reference = _best(lambda: evaluate(case))
    tracemalloc.start()
    before = buffers.held()
    kept = evaluate(case)
    after = buffers.held()
    # its gradients may be recycled memory (ce_conformance.buffers), which tracemalloc saw only
    # when it was new: the bytes the call took from idle buffers are added
    reused = (after[0] - before[0]) - (sum(after) - sum(before))
    out["peak"] = (tracemalloc.get_traced_memory()[1] + reused) / (rows * classes * 8)
    tracemalloc.stop()
    del kept
    out["compare"], comparison = _best(lambda: compare(case, outcome, reference, adapter.capabilities))
    out["differential"] = out["adapter"] + out["reference"] + out["compare"]
    out["passed"] = comparison.passed
    return out


def instruction_sets() -> str:
    """The vector instructions the stages run on: the same code compiled for AVX2 alone ran the
    comparison 1.5x slower than with AVX-512 (README, *Performance*), so the ratios depend on them."""
    import torch

    from ce_conformance import engine

    kernels = "NumPy"
    if engine.available():
        import llvmlite.binding as llvm
        import numba

        llvm.initialize_native_target()
        features = (numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()).split(",")
        vector = "AVX-512" if "+avx512f" in features else "AVX2" if "+avx2" in features else "neither AVX2 nor AVX-512"
        kernels = f"numba for {numba.config.CPU_NAME or llvm.get_host_cpu_name()} ({vector})"
    return f"kernels: {kernels}; torch's CPU kernels: {torch.backends.cpu.get_cpu_capability()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=128256)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from ce_conformance import engine

    print(f"N = {args.rows}, C = {args.classes}: float64 logits = {args.rows * args.classes * 8 / 2**20:.0f} MiB; "
          f"engine {engine.name()}")
    print(instruction_sets())
    print(f"{'dtype':9} {'native':>8} {'adapter':>13} {'reference':>13} {'compare':>13} {'differential':>14} "
          f"{'ref. peak':>10} {'first reference':>16}")
    for dtype in ("float32", "bfloat16"):
        f = figures(args.rows, args.classes, dtype)
        cells = [f"{f[k]:5.2f}s {f[k] / f['native']:5.1f}x" for k in ("adapter", "reference", "compare")]
        print(f"{dtype:9} {f['native']:7.2f}s " + " ".join(f"{c:>13}" for c in cells)
              + f" {f['differential']:6.2f}s {f['differential'] / f['native']:5.1f}x {f['peak']:8.2f}x"
              + f" {f['first reference']:5.2f}s {f['first reference'] / f['native']:5.1f}x"
              + ("" if f["passed"] else "  (torch FAILED the comparison)"))
    print("targets: adapter <= 1.5x, reference <= 2x, differential <= 3x the native call; peak <= 2x the "
          "float64 logits")


if __name__ == "__main__":
    main()
