"""Repeated-run determinism: the same call, run twice, must give the same bits.

A kernel whose reduction order depends on thread scheduling (atomics in a backward pass, a
split-K sum whose partial results arrive in any order) passes every tolerance check and still
breaks bitwise reproducibility, which training runs rely on to bisect a divergence. The
comparison against the reference cannot see it: both runs are within budget. So the runner
runs a case a second time and compares the two outcomes bit for bit (NaN payloads included):
the loss, every gradient, the status.

Nondeterminism is a property some kernels trade away on purpose (torch's own CUDA
``index_add`` without ``torch.use_deterministic_algorithms``), so it is *reported*: the
``nondeterministic`` check belongs to the ``determinism`` family, which gates only when asked
(``--deterministic``, or ``--checks all``). By default the curated and covering cases — every
configuration once — run twice; ``--deterministic`` runs every case twice.

>>> import numpy as np
>>> from ce_conformance.adapters.base import Outcome
>>> def run(g):
...     return Outcome(loss=np.array(0.5, dtype=np.float32), loss_dtype="float32",
...                    grad_input=np.array([0.25, g], dtype=np.float32), grad_input_dtype="float32")
>>> first, second = run(-0.25), run(-0.2500001)
>>> repeat_verdict(first, first) is None
True
>>> print(repeat_verdict(first, second).message)
two runs of the same call differ: grad_input in 1 of 2 element(s), most at [1]: -0.25 then -0.2500001 (3 float32 ulp apart)
"""

from __future__ import annotations

from typing import Final

import numpy as np

from ce_conformance.adapters.base import Outcome, same_values

from .compare import Verdict
from .dtypes import FLOAT_DTYPES, ulp

CHECK: Final = "nondeterministic"  # of the "determinism" family (ce_conformance.compare.CHECK_FAMILIES)

REPEATED_PHASES: Final = frozenset({"curated", "covering"})
"""Phases whose cases run twice by default: every configuration once, at a few percent of a run."""


def repeats(phase: str, every_case: bool) -> bool:
    """Whether a case of ``phase`` runs twice (``every_case``: ``--deterministic``). Shrinking
    never repeats: it reproduces the finding it shrinks, and a nondeterministic one is kept as
    first seen."""
    return phase not in ("shrink", "shrunk") and (every_case or phase in REPEATED_PHASES)


def _outputs(outcome: Outcome) -> dict[str, tuple[np.ndarray, str]]:
    """Each output with the dtype it was returned in (half dtypes arrive as float32 arrays)."""
    arrays = {"loss": (outcome.loss, outcome.loss_dtype), "grad_input": (outcome.grad_input, outcome.grad_input_dtype),
              "grad_target": (outcome.grad_target, outcome.grad_target_dtype),
              **{name: (value, outcome.parameter_gradient_dtypes.get(name)) for name, value
                 in outcome.parameter_gradients.items()}}
    return {name: (np.asarray(value), dtype or str(np.asarray(value).dtype)) for name, (value, dtype) in arrays.items()
            if value is not None}


def repeat_verdict(first: Outcome, second: Outcome) -> Verdict | None:
    """A ``nondeterministic`` verdict where ``second`` (the same call run again) differs from
    ``first`` in any bit of any output, or in its status; None where they agree."""
    if first.status != second.status:
        said = f": {second.error.message}" if second.error else ""
        return Verdict(CHECK, f"two runs of the same call differ: the first was {first.status}, the second "
                              f"{second.status}{said}")
    ours, theirs = _outputs(first), _outputs(second)
    for name in sorted(set(ours) | set(theirs)):
        if name not in ours or name not in theirs:
            return Verdict(CHECK, f"two runs of the same call differ: {name} returned by one run only")
        (a, dtype), (b, other) = ours[name], theirs[name]
        if same_values(a, b) and dtype == other:
            continue
        if a.shape != b.shape or a.dtype != b.dtype or dtype != other:
            return Verdict(CHECK, f"two runs of the same call differ: {name} {dtype}{list(a.shape)} then "
                                  f"{other}{list(b.shape)}")
        return value_difference(name, a, b, dtype)
    return None


def value_difference(name: str, a: np.ndarray, b: np.ndarray, dtype: str, check: str = CHECK,
                   what: str = "two runs of the same call differ") -> Verdict:
    """The elements whose bits differ, and the one that differs most as a number (a NaN in one
    run only counts as infinitely far; a signed zero or a NaN payload differs in bits only);
    ``check`` and ``what`` name the comparison (:mod:`ce_conformance.saved_tensors` uses it too)."""
    unsigned = np.dtype(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else None
    wide_a, wide_b = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(wide_a) & np.isnan(wide_b)
    if unsigned is not None:
        # np.require keeps a 0-d loss 0-d (ascontiguousarray makes it 1-d, and its index then
        # did not fit the loss: a kernel whose scalar loss alone varied crashed the check)
        differs = np.require(a, requirements="C").view(unsigned) != np.require(b, requirements="C").view(unsigned)
    else:
        differs = ~((wide_a == wide_b) | both_nan)
    with np.errstate(invalid="ignore"):
        gap = np.where(differs & ~both_nan, np.abs(wide_a - wide_b), 0.0)
    gap = np.where(np.isnan(gap), np.inf, gap)  # a NaN in one run only: the worst difference
    flat = int(np.argmax(gap)) if gap.max(initial=0.0) > 0 else int(np.argmax(differs))
    index = np.unravel_index(flat, gap.shape) if gap.ndim else ()
    known = dtype in FLOAT_DTYPES and np.isfinite(gap[index])
    spacing = float(ulp(max(abs(float(a[index])), abs(float(b[index]))), dtype)) if known else float("nan")
    ulps = float(gap[index]) / spacing if spacing > 0 else float("nan")
    apart = f" ({ulps:.3g} {dtype} ulp apart)" if np.isfinite(ulps) else ""
    return Verdict(check, f"{what}: {name} in {int(differs.sum())} of {a.size} element(s), "
                          f"most at {[int(i) for i in index]}: {str(a[index])} then {str(b[index])}{apart}",
                   max_abs_error=float(gap[index]), max_ulp_error=ulps)
