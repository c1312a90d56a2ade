"""Adversarial sweep for false alarms: the correct family and torch on cases built to stress the
tolerance model, where a gate's draws are thin.

The gate draws its cases from Hypothesis strategies with coverage of every option pair; this sweep
instead aims at what a budget may have left out: few positions (a lone rounding is not averaged
away), logits offset by up to 1e4 (an ``lse`` far larger than the loss), wide logits, the target at
the first or last class or at the row maximum (the backward's worst summation paths), smoothing
from 1e-6 to 1, class weights with zeros, distillation-teacher soft targets (a long tail of tiny
targets: sums whose residues concentrate), three layouts and every reduction. Each case runs on
every member of ``tests/correct_family.py`` (``compiled`` with ``--compiled``) and torch, and is
judged against the reference: any failure is a false alarm, saved under ``--out`` as a replayable
case. Prints the failures as they come, then the largest error-to-budget ratio per member, dtype
and quantity (how close correct arithmetic comes to its budget).

It found, on 2026-12-06/07: torch's float32 K-dim gradient of smoothed teacher targets at 1.02 of
its budget, a sequential float32 loss of 128256 of them at 6.6 times (``summation.order_bias``),
and the earlier lost-terms false alarms of model v2.11 (``'mean'`` over rows of wide logits).

    python benchmarks/false_alarms.py [--cases N] [--seed S] [--members a,b,...] [--out DIR] [--compiled]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ("float16", "bfloat16", "float32", "float64")
CLASSES = (2, 3, 5, 16, 127, 1000, 4097, 32000)
LAYOUTS = ("c", "nc", "kdim")
OFFSETS = (0.0, 10.0, 100.0, 1e3, 1e4)
SPREADS = (0.5, 1.0, 2.0, 4.0)
SMOOTHINGS = (0.0, 0.0, 0.1, 1e-6, 1.0)
TARGETS = ("first", "last", "random", "max", "softmax", "teacher", "one_hot")
MAX_ELEMENTS = 1 << 17
"""Logits per case: vocabulary-scale rows come one or two at a time."""


def adversarial_case(seed: int):
    """One case of the sweep, from ``seed`` alone (a failure replays from its seed).

    >>> case = adversarial_case(41)
    >>> case.dtype in DTYPES and case.input.ndim in (1, 2, 3)
    True
    """
    from ce_conformance import Case
    from ce_conformance.values import probability_values

    rng = np.random.default_rng(seed)
    dtype = str(rng.choice(DTYPES))
    C = int(rng.choice(CLASSES))
    layout = str(rng.choice(LAYOUTS))
    rows = max(1, min(int(rng.integers(1, 5)), MAX_ELEMENTS // C))
    shape = {"c": (C,), "nc": (rows, C), "kdim": (max(1, rows // 2), C, int(rng.integers(1, 3)))}[layout]
    offsets = OFFSETS[:-1] if dtype == "float16" else OFFSETS  # float16 tops out at 65504
    x = rng.standard_normal(shape) * float(rng.choice(SPREADS)) + float(rng.choice(offsets))
    class_axis = 0 if len(shape) == 1 else 1
    target_kind = str(rng.choice(TARGETS))
    if target_kind in ("softmax", "teacher", "one_hot"):
        target = probability_values(target_kind, rng, shape, dtype)
    else:
        index_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
        target = {"first": lambda: np.zeros(index_shape, dtype=np.int64),
                  "last": lambda: np.full(index_shape, C - 1, dtype=np.int64),
                  "max": lambda: np.argmax(x, axis=class_axis),
                  "random": lambda: rng.integers(0, C, size=index_shape)}[target_kind]()
    weight = None
    if rng.random() < 0.4:
        weight = rng.uniform(0.1, 3.0, C) * (rng.random(C) > 0.3 if rng.random() < 0.5 else 1.0)
    return Case.cross_entropy(x, target, dtype=dtype, reduction=str(rng.choice(["none", "mean", "sum"])),
                              label_smoothing=float(rng.choice(SMOOTHINGS)), weight=weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="first case's seed; case k uses seed + k")
    parser.add_argument("--members", default="", help="comma-separated family members (default: all)")
    parser.add_argument("--compiled", action="store_true", help="also the torch.compile member (slow to compile)")
    parser.add_argument("--out", type=Path, default=None, help="save each failing case here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    np.seterr(all="ignore")
    sys.path.insert(0, str(ROOT))
    from ce_conformance import reference
    from ce_conformance.adapters import load_adapter, user_adapter
    from ce_conformance.compare import compare
    from tests.correct_family import MEMBERS

    wanted = [m for m in args.members.split(",") if m] or [m for m in MEMBERS if m != "compiled" or args.compiled]
    adapters = {name: user_adapter(f"{ROOT / 'tests' / 'correct_family.py'}:{name}") for name in wanted}
    adapters["torch"] = load_adapter("torch")
    worst: dict[tuple[str, str, str], float] = defaultdict(float)
    failures = 0
    started = time.perf_counter()
    for seed in range(args.seed, args.seed + args.cases):
        case = adversarial_case(seed)
        expected = reference.evaluate(case)
        for name, adapter in adapters.items():
            comparison = compare(case, adapter.timed_run(case), expected, adapter.capabilities)
            for quantity, ratio in comparison.max_ratio.items():
                worst[name, case.dtype, quantity] = max(worst[name, case.dtype, quantity], ratio)
            if not comparison.passed:
                failures += 1
                checks = ", ".join(v.check for v in comparison.verdicts)
                print(f"FALSE ALARM seed {seed}: {name} {case.dtype} {tuple(case.input.shape)} {case.reduction} "
                      f"smoothing {case.label_smoothing}: {checks} {comparison.max_ratio}", flush=True)
                if args.out:
                    args.out.mkdir(parents=True, exist_ok=True)
                    case.save(args.out / f"seed{seed}_{name}.json")
    print(f"\n{args.cases} cases x {len(adapters)} implementations in {time.perf_counter() - started:.0f} s: "
          f"{failures} false alarms")
    print("largest error / budget (1 fails):")
    for (name, dtype, quantity), ratio in sorted(worst.items(), key=lambda item: -item[1])[:20]:
        print(f"  {name:16s} {dtype:9s} {quantity:11s} {ratio:.3f}")


if __name__ == "__main__":
    main()
