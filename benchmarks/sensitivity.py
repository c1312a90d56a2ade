"""Sensitivity of the tolerance model: the smallest error the gate detects, against what correct
arithmetic costs on the same cases.

For each dtype, class count C and layout it draws cases (``--seeds``; by default as many as
:func:`cases_per_cell` affords: in (N, C), 1000 at C <= 127, 20 at vocabulary scale) of each of three
configurations (index targets with 'mean', without and with label smoothing 0.1, probability
targets with 'none'; logits 2 * standard normal), runs the correct family on them
(tests/correct_family.py, every member: sequential, reversed, pairwise, blocked 1024/4096, Kahan,
np.sum, lse formed as one number, autograd's order, log-probabilities saved in the dtype, fp64
upcast, torch.compile) and torch, and records each one's largest error in ulps of the dtype. Then
it injects a relative error d into one stage of an otherwise exact implementation (float64;
extended precision for float64 cases), rounds its outputs to the dtype and asks the comparison
whether it fails on any of the cases:

- ``lse``        the log-sum-exp (shifts the loss and, through p = exp(x - lse), the gradient)
- ``softmax``    the probabilities of the backward pass
- ``gradient``   the gradient w.r.t. the input
- ``reduction``  the reduced loss (or each element of a 'none' loss)

The smallest detected d (bisection over d = 2**-k, k in steps of 1/16: 4 % apart) is printed with the
error, in ulps, that the injected implementation makes at that d, and that error as a multiple
of the correct family's largest error on the same quantity and cases ("x family"; target: at
most 4). An injection the gate never detects (d up to 1/2) is a miss: its multiple is inf.
torch's own error is printed beside it.

Why several cases per cell: on one case the family's largest error is one draw of a random
variable (on float32 (8, 32000) 'mean' losses it ranged from 0.20 to 1.69 of the model's sigma,
median 0.63, over 20 seeds); a budget within 4x of the luckiest draw would fail correct code on
the next case, and a gate judges a thousand. The largest error over 20 cases is what correct
arithmetic costs on the cases a short gate draws (over 5, the default until 2026-12-06, the float32
C = 127 'mean' reduction cell read 6.2x; over 20, 3.0x, with the same budgets), and where cases
are cheap a cell draws as many as one gate judges (since 2026-12-06: at C = 2 a few roundings
make the error, and their largest realisation needs hundreds of cases to show);
``--seeds 1`` gives the single-case figures. The multiple compares largest errors on both sides: the injected
implementation's over every element of the cases, at the smallest d any element fails.

    python benchmarks/sensitivity.py [--dtypes float32,...] [--classes 2,127,...] [--layouts nc,c,kdim] [--seeds N]
        [--configurations index/mean,index/mean/smoothed,probability/none]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CLASSES = (2, 127, 4097, 32000, 128256, 262144)
DTYPES = ("float32", "float64", "bfloat16", "float16")
LAYOUTS = ("nc", "c", "kdim")
STAGES = ("lse", "softmax", "gradient", "reduction")
CONFIGURATIONS = ("index/mean", "index/mean/smoothed", "probability/none")
"""The configurations of :func:`cases_for`, by the name the table prints."""
MAX_ELEMENTS = 1 << 19
SEEDS = 20
GATE_CASES = 1000
"""A default gate's case budget: a cell never gets more cases than one gate judges."""
CELL_ELEMENTS = 1 << 23
"""Logits per cell that set its case count where :data:`SEEDS` cases are cheap (see
:func:`cases_per_cell`)."""
WIDE = np.longdouble
"""The precision of the injected implementation for float64 cases: x86's 80-bit extended (64-bit
significand; 11 bits more than float64). Where ``long double`` is float64 (MSVC, Apple silicon) the
float64 cells are float64's, as before 2026-12-06."""
STEP = 1 / 16
"""Resolution of the bisection in log2(d): detected thresholds are at most 4 % above the true
one (quarter steps, until 2026-12-05, inflated a multiple by up to 19 %)."""


def cases_for(dtype: str, C: int, layout: str, seed: int = 0):
    from ce_conformance.case import Case

    rng = np.random.default_rng([seed, C, LAYOUTS.index(layout), DTYPES.index(dtype)])
    shape = input_shape(C, layout)
    x = rng.standard_normal(shape) * 2.0
    class_axis = 0 if len(shape) == 1 else 1
    index_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    y = rng.integers(0, C, size=index_shape)
    t = np.exp(rng.standard_normal(shape))
    t /= t.sum(axis=class_axis, keepdims=True)
    return [Case.cross_entropy(x, y, dtype=dtype, reduction="mean"),  # the configuration of LLM training
            Case.cross_entropy(x, y, dtype=dtype, reduction="mean", label_smoothing=0.1),
            Case.cross_entropy(x, t, dtype=dtype, reduction="none")]


def configuration(case) -> str:
    """The name of a case's configuration, as the table prints it and ``--configurations`` takes it."""
    target = "probability" if case.is_probability_target else "index"
    return f"{target}/{case.reduction}" + ("/smoothed" if case.label_smoothing > 0 else "")


def cases_per_cell(C: int, layout: str) -> int:
    """Cases a cell draws: :data:`CELL_ELEMENTS` logits' worth, at least :data:`SEEDS` and at most
    :data:`GATE_CASES`. The budget a gate needs is set by the largest error correct arithmetic
    makes over the thousand cases it judges; at C = 2 that error is a handful of roundings whose
    largest realisation 20 cases rarely show (float64 two-class smoothed lse: 11.3x the family
    over 20 cases, 3.8x over 200, 1.5x over 1000, the same budgets), so where cases are cheap a
    cell draws as many as a gate does.

    >>> [cases_per_cell(C, "nc") for C in (2, 127, 4097, 32000, 128256)]
    [1000, 1000, 255, 32, 20]
    """
    return int(min(GATE_CASES, max(SEEDS, CELL_ELEMENTS // math.prod(input_shape(C, layout)))))


def input_shape(C: int, layout: str) -> tuple[int, ...]:
    """The logits' shape of a cell's cases: up to 8 rows, at most :data:`MAX_ELEMENTS` logits."""
    rows = max(1, min(8, MAX_ELEMENTS // C))
    return {"nc": (rows, C), "c": (C,), "kdim": (max(1, rows // 2), C, 2)}[layout]


def injected_outcome(case, stage: str, d: float):
    """Outputs of an implementation exact to well below the case's ulp, with a relative error d
    in one stage, rounded to the case's dtype. Float64 cases are computed in extended precision
    (:data:`WIDE`): in float64 a d below its unit roundoff vanished in ``1 + d`` and the smallest
    injection was an ulp of ``lse``, on top of the float64 arithmetic's own roundings, so every
    float64 two-class ``lse`` cell read the error of that ulp (up to 10 ulps of a loss whose ``lse``
    is 20 times larger), not the gate's threshold (4.0-4.55 until 2026-12-06)."""
    from ce_conformance.adapters.base import Outcome
    from ce_conformance.dtypes import round_to

    wide = WIDE if case.dtype == "float64" else np.float64
    factor = wide(1) + wide(d)
    x = np.asarray(case.input, dtype=wide)
    class_axis = 0 if x.ndim == 1 else 1
    rows = np.moveaxis(x, class_axis, -1).reshape(-1, x.shape[class_axis])
    top = rows.max(axis=1, keepdims=True)
    lse = top + np.log(np.exp(rows - top).sum(axis=1, keepdims=True))
    if stage == "lse":
        lse = lse * factor
    logp = rows - lse
    p = np.exp(logp) * (factor if stage == "softmax" else 1)
    eps, C = case.label_smoothing, rows.shape[1]
    if case.is_probability_target:
        t = np.moveaxis(np.asarray(case.target, dtype=wide), class_axis, -1).reshape(rows.shape)
        t = t * (1 - eps) + eps / C if eps > 0 else t
        per = -(t * logp).sum(axis=1)
        grad_rows = p * t.sum(axis=1, keepdims=True) - t
        scale = np.ones(len(per), dtype=wide)
    else:
        y = case.target.reshape(-1)
        r = np.arange(len(y))
        per = (1 - eps) * -logp[r, y] + eps / C * -logp.sum(axis=1)
        grad_rows = p.copy()
        grad_rows[r, y] -= 1 - eps
        grad_rows -= eps / C
        scale = np.full(len(per), wide(1) / len(per))
    if case.reduction == "none":
        loss = per.reshape(x.shape[:class_axis] + x.shape[class_axis + 1:]) * (factor if stage == "reduction" else 1)
    else:
        loss = (per.mean() if case.reduction == "mean" else per.sum()) * (factor if stage == "reduction" else 1)
    grad_rows = grad_rows * scale[:, None] * (factor if stage == "gradient" else 1)
    moved = grad_rows.reshape(tuple(np.delete(np.array(x.shape), class_axis)) + (C,))
    grad = np.moveaxis(moved, -1, class_axis) if x.ndim > 1 else moved.reshape(x.shape)
    grad_target = None
    if case.is_probability_target:
        gt = -logp * (1 - eps)
        grad_target = np.moveaxis(gt.reshape(moved.shape), -1, class_axis) if x.ndim > 1 else gt.reshape(x.shape)
        grad_target = round_to(grad_target, case.dtype)
    return Outcome(status="ok", loss=round_to(loss, case.dtype), loss_dtype=case.dtype,
                   loss_shape=tuple(np.shape(loss)), grad_input=round_to(grad, case.dtype),
                   grad_input_dtype=case.dtype, grad_target=grad_target)


def quantity_errors(comparison) -> dict[str, float]:
    return dict(comparison.max_ulp)


def smallest_detected(cases, refs, capabilities, stage: str) -> tuple[float, dict[str, float]]:
    """Bisection over k (d = 2**-k, steps of 1/16): the smallest d any case fails at, and the
    worst per-quantity ulp errors the injected implementation makes there."""
    from ce_conformance.compare import compare

    def detected(k: float):
        d = 2.0 ** -k
        errors: dict[str, float] = {}
        ratios: dict[str, float] = {}
        failed = False
        for case, ref in zip(cases, refs):
            comparison = compare(case, injected_outcome(case, stage, d), ref, capabilities)
            failed = failed or bool(comparison.verdicts)
            for q, e in quantity_errors(comparison).items():
                errors[q] = max(errors.get(q, 0.0), e)
                ratios[q] = max(ratios.get(q, 0.0), comparison.max_ratio.get(q, 0.0))
        errors["_failing"] = max(ratios, key=ratios.get) if ratios else "loss"
        return failed, errors

    low, high = 1.0, 64.0  # detected at 2**-1; assume undetected at 2**-64
    ok, errors = detected(low)
    if not ok:
        return float("nan"), errors
    while high - low > STEP:
        mid = (low + high) / 2
        if detected(mid)[0]:
            low = mid
        else:
            high = mid
    return 2.0 ** -low, detected(low)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--classes", default=",".join(map(str, CLASSES)))
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--configurations", default=",".join(CONFIGURATIONS),
                        help="which of the three configurations to measure (a model change that touches one)")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"cases per cell (default: by cost, {SEEDS} to {GATE_CASES}; see cases_per_cell)")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    np.seterr(all="ignore")
    from ce_conformance import reference
    from ce_conformance.adapters import load_adapter, user_adapter

    sys.path.insert(0, str(ROOT))
    from tests.correct_family import MEMBERS

    family = {name: user_adapter(f"{ROOT / 'tests' / 'correct_family.py'}:{name}") for name in MEMBERS}
    torch_adapter = load_adapter("torch")
    rows = []
    started = time.perf_counter()
    for dtype in args.dtypes.split(","):
        for C in map(int, args.classes.split(",")):
            for layout in args.layouts.split(","):
                count = args.seeds or cases_per_cell(C, layout)
                drawn = [cases_for(dtype, C, layout, seed) for seed in range(count)]
                for kind_cases in zip(*drawn):  # one configuration, count cases of it
                    cases = list(kind_cases)
                    first_case = cases[0]
                    kind = configuration(first_case)
                    if kind not in args.configurations.split(","):
                        continue
                    refs = [reference.evaluate(case) for case in cases]
                    fam = worst_errors(family.values(), cases, refs)
                    native = worst_errors([torch_adapter], cases, refs)
                    first = len(rows)
                    for stage in args.stages.split(","):
                        d, errors = smallest_detected(cases, refs, torch_adapter.capabilities, stage)
                        # the quantity whose budget the injection breaks first; the family's error on
                        # it is floored at half an ulp (a correctly rounded result's error)
                        quantity = errors.pop("_failing", "loss")
                        error = errors.get(quantity, np.nan) if np.isfinite(d) else np.inf  # never detected: a miss
                        rows.append({"dtype": dtype, "C": C, "layout": layout, "case": kind, "cases": count,
                                     "stage": stage,
                                     "smallest d": d, "quantity": quantity, "detected at (ulp)": error,
                                     "family max (ulp)": fam.get(quantity, np.nan),
                                     "x family": error / max(fam.get(quantity, 0.0), 0.5),
                                     "torch (ulp)": native.get(quantity, np.nan)})
                    print(pd.DataFrame(rows[first:]).to_string(index=False, header=first == 0,
                                                               float_format=lambda v: f"{v:.3g}"), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    multiples = table["x family"]
    missed = int(np.isinf(multiples).sum())
    print(f"\nworst detection threshold: {multiples.max():.2f}x the correct family's largest error "
          f"(target <= 4); median {multiples.median():.2f}x; {(multiples <= 4).mean():.0%} of cells at most 4x; "
          f"{missed} cells never detected (d up to 1/2); {len(table)} cells, {table['cases'].min()} to "
          f"{table['cases'].max()} cases each, in "
          f"{time.perf_counter() - started:.0f} s")
    for dtype, part in table.groupby("dtype", sort=False):
        print(f"  {dtype:9s} median {part['x family'].median():.2f}x, {(part['x family'] <= 4).mean():.0%} at most 4x, "
              f"worst {part['x family'].max():.2f}x")
    if args.csv:
        table.to_csv(args.csv, index=False)


def worst_errors(adapters, cases, refs) -> dict[str, float]:
    """Per quantity, the largest error in ulps any of ``adapters`` makes on any of ``cases``."""
    from ce_conformance.compare import compare

    worst: dict[str, float] = {}
    for adapter in adapters:
        for case, ref in zip(cases, refs):
            for q, e in quantity_errors(compare(case, adapter.timed_run(case), ref, adapter.capabilities)).items():
                worst[q] = max(worst.get(q, 0.0), e)
    return worst


if __name__ == "__main__":
    main()
