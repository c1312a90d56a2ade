"""A family of *correct* cross-entropy implementations that differ only in their arithmetic.

Each member computes torch's semantics from scratch (log-softmax, smoothing, weights,
ignore_index, probability targets, reductions, closed-form gradients) in NumPy, with its own
summation order and accumulator precision — the choices real kernels make:

=====================  ============================================================================
member                 arithmetic
=====================  ============================================================================
``sequential``         left-to-right sums over classes and over positions in the compute precision
                       (float32 for half dtypes)
``reversed_order``     the same, classes and positions summed right-to-left
``pairwise``           recursive halving (a tree reduction, as ``tl.sum`` does inside a block)
``blocked_1024``       online softmax over chunks of 1024 classes: running max and rescaled running
                       sum across chunks, tree sums inside a chunk (flash-attention style)
``blocked_4096``       the same with chunks of 4096
``kahan``              compensated (Kahan) sequential sums
``fp32_accumulate``    NumPy's own ``np.sum`` (eight interleaved accumulators, pairwise blocks of 128)
                       in the compute precision: float32 for half dtypes
``fp64_upcast``        everything in float64, rounded once at the end (more accurate than torch)
``autograd_order``     index-target gradients as autograd forms them through log-softmax:
                       ``g - p * sum(g)`` with the upstream terms ``g`` summed sequentially
                       (classes and positions sequential, as ``sequential``)
``lse_form``           the log-sum-exp formed as one number, ``lse = max + log(sum)``, and
                       ``log p = x - lse``, ``p = exp(x - lse)`` (flash-attention's and
                       cut-cross-entropy's Triton kernels): ``lse``'s rounding shifts every ``p``
``saved_logp``         the log-probabilities rounded to the input dtype between forward and backward,
                       and the backward's ``p = exp`` of them: ``F.nll_loss(F.log_softmax(x))`` as
                       eager autograd runs it in a half dtype (``log_softmax``'s output is what it
                       saves), and torch's own half kernels; in float32/float64 it is ``sequential``
``dtype_positions``    index targets in a half dtype: each position's weighted NLL rounded to the dtype
                       and summed in it by torch's CPU ``nll_loss`` cascade (``cascade_sum``), divided
                       by the total weight summed so (or the count rounded to the dtype); the
                       smoothing's part reduced in float32, its mean rounded to the dtype; the parts
                       scaled and added in the dtype (scaled in float32 first where the mean
                       itself overflows the dtype: float16, C >= 6300). torch's own half reduction
                       without the overflow of its unscaled smoothing sums (float16 at C = 4097 and
                       8 positions: inf). Elsewhere ``sequential``
``compiled``           ``torch.compile(F.cross_entropy)`` (aot_eager: no C compiler needed)
=====================  ============================================================================

Argument validation is delegated to ``F.cross_entropy`` (called first, its value discarded):
the family varies arithmetic, not semantics. Their errors define what "correct arithmetic" may
cost on a case; ``tests/test_correct_family.py`` gates every member and
``benchmarks/sensitivity.py`` measures detection thresholds against their worst error.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ce_conformance.dtypes import numpy_dtype
from ce_conformance.reference import resolve_reduction

HALF = (torch.float16, torch.bfloat16)
SUMMATIONS = ("sequential", "reversed", "pairwise", "blocked_1024", "blocked_4096", "kahan")


# -- summation orders over the last axis, in the array's own dtype ------------------------------
def sequential_sum(values: np.ndarray) -> np.ndarray:
    """Left to right, rounding after every addition (NumPy's cumsum is strictly sequential)."""
    if values.shape[-1] == 0:
        return np.zeros(values.shape[:-1], dtype=values.dtype)
    return np.cumsum(values, axis=-1, dtype=values.dtype)[..., -1]


def reversed_sum(values: np.ndarray) -> np.ndarray:
    return sequential_sum(values[..., ::-1])


def pairwise_sum(values: np.ndarray) -> np.ndarray:
    """Recursive halving: add the two halves elementwise until one column is left."""
    dtype = values.dtype
    while values.shape[-1] > 1:
        n = values.shape[-1]
        half = n // 2
        paired = (values[..., :half] + values[..., half:2 * half]).astype(dtype)
        values = np.concatenate([paired, values[..., 2 * half:]], axis=-1) if n % 2 else paired
    return values[..., 0] if values.shape[-1] else np.zeros(values.shape[:-1], dtype=dtype)


def kahan_sum(values: np.ndarray) -> np.ndarray:
    """Compensated sequential sums, by the numba kernel where it applies (the loop below costs
    about a second per call at C = 262144: most of the sensitivity benchmark's time)."""
    kernel = _kahan_kernel()
    if kernel is not None and values.dtype in (np.float32, np.float64) and values.size > 0:
        rows = np.ascontiguousarray(values.reshape(-1, values.shape[-1]))
        return kernel(rows).reshape(values.shape[:-1])
    return kahan_loop(values)


def kahan_loop(values: np.ndarray) -> np.ndarray:
    """:func:`kahan_sum` in NumPy, one class at a time over every row: the kernel's specification."""
    dtype = values.dtype
    total = np.zeros(values.shape[:-1], dtype=dtype)
    carry = np.zeros_like(total)
    with np.errstate(invalid="ignore", over="ignore"):
        for k in range(values.shape[-1]):
            y = (values[..., k] - carry).astype(dtype)
            t = (total + y).astype(dtype)
            carry = ((t - total).astype(dtype) - y).astype(dtype)
            carry = np.where(np.isfinite(carry), carry, 0).astype(dtype)
            total = t
    return total


@functools.cache
def _kahan_kernel():
    try:
        import numba
    except ImportError:  # the loop computes the same sums
        return None

    # no on-disk cache: the gate loads this file as a module of a made-up name, which a cached
    # function's module lookup cannot import in the next process (ModuleNotFoundError)
    @numba.njit
    def kahan_rows(rows):
        out = np.zeros(rows.shape[0], dtype=rows.dtype)
        zero = np.zeros(1, dtype=rows.dtype)[0]  # the dtype's 0: float32 stays float32 throughout
        for r in range(rows.shape[0]):
            total, carry = zero, zero
            for k in range(rows.shape[1]):
                y = rows[r, k] - carry
                t = total + y
                carry = (t - total) - y
                if not np.isfinite(carry):
                    carry = zero
                total = t
            out[r] = total
        return out

    return kahan_rows


def numpy_sum(values: np.ndarray) -> np.ndarray:
    return values.sum(axis=-1, dtype=values.dtype)


SUMS = {"sequential": sequential_sum, "reversed": reversed_sum, "pairwise": pairwise_sum, "kahan": kahan_sum,
        "blocked_1024": pairwise_sum, "blocked_4096": pairwise_sum, "fp32_accumulate": numpy_sum,
        "fp64_upcast": pairwise_sum, "lse_form": pairwise_sum, "autograd_order": sequential_sum,
        "saved_logp": sequential_sum, "dtype_positions": sequential_sum}


def _block(summation: str) -> int | None:
    return int(summation.split("_")[1]) if summation.startswith("blocked_") else None


# -- log-softmax with a chosen summation -------------------------------------------------------
def log_softmax_rows(rows: np.ndarray, summation: str) -> tuple[np.ndarray, np.ndarray]:
    """(log-probabilities, probabilities) of (M, C) rows in ``rows.dtype``."""
    dtype = rows.dtype
    block = _block(summation)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if block is None or rows.shape[-1] <= block:
            top = rows.max(axis=-1, keepdims=True) if rows.shape[-1] else np.zeros(rows.shape[:-1] + (1,), dtype)
            shifted = (rows - top).astype(dtype)
            log_total = np.log(SUMS[summation](np.exp(shifted).astype(dtype))).astype(dtype)
        else:  # online softmax: a running max and a running sum rescaled when the max grows
            run_max = np.full(rows.shape[:-1], -np.inf, dtype=dtype)
            run_sum = np.zeros(rows.shape[:-1], dtype=dtype)
            for start in range(0, rows.shape[-1], block):
                chunk = rows[..., start:start + block]
                new_max = np.maximum(run_max, chunk.max(axis=-1))
                rescale = np.where(run_max == new_max, 1, np.exp((run_max - new_max).astype(dtype))).astype(dtype)
                local = pairwise_sum(np.exp((chunk - new_max[..., None]).astype(dtype)).astype(dtype))
                run_sum = (run_sum * rescale + local).astype(dtype)
                run_max = new_max
            top = run_max[..., None]
            shifted = (rows - top).astype(dtype)
            log_total = np.log(run_sum).astype(dtype)
        if summation == "lse_form":
            lse = (top + log_total[..., None]).astype(dtype)
            logp = (rows - lse).astype(dtype)
        else:
            logp = (shifted - log_total[..., None]).astype(dtype)
        # torch: a row whose max is +-inf or NaN is NaN throughout
        logp = np.where(np.isfinite(top), logp, np.nan).astype(dtype)
        p = np.exp(logp).astype(dtype)
    return logp, p


def _numpy(tensor: torch.Tensor, dtype) -> np.ndarray:
    return tensor.detach().to(torch.float64).cpu().numpy().astype(dtype)


def _rows(array: np.ndarray) -> np.ndarray:
    """(N, C, d...) or (C,) -> (M, C) with positions in torch's order."""
    if array.ndim == 1:
        return array[None, :]
    return np.moveaxis(array, 1, -1).reshape(-1, array.shape[1])


def _unrows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 1:
        return rows[0]
    moved = rows.reshape((shape[0], *shape[2:], shape[1]))
    return np.moveaxis(moved, -1, 1)


class _FamilyCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, eps, summation):
        dtype = input.dtype
        compute = np.float64 if (summation == "fp64_upcast" or dtype == torch.float64) else np.float32
        reduce_dtype = compute  # position sums in the compute precision (float32 for half dtypes)
        add = SUMS[summation]
        position_add = add if _block(summation) is None else pairwise_sum
        shape = tuple(input.shape)
        C = shape[0] if len(shape) == 1 else shape[1]
        rows = _rows(_numpy(input, compute))
        M = rows.shape[0]
        logp, p = log_softmax_rows(rows, summation)
        if summation == "saved_logp" and dtype in HALF:  # the saved log-softmax output is a half tensor
            logp = _numpy(torch.from_numpy(logp).to(dtype), compute)
            with np.errstate(over="ignore"):
                p = np.exp(logp).astype(compute)
        w = np.ones(C, dtype=compute) if weight is None else _numpy(weight, compute)
        probability = target.is_floating_point()
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if probability:
                t = _rows(_numpy(target, compute))
                if eps > 0:
                    t = (t * compute(1 - eps) + compute(eps / C)).astype(compute)
                wt = (t * w).astype(compute)
                losses = -add((wt * logp).astype(compute))
                valid = np.ones(M, dtype=bool)
                weights_of_rows = np.ones(M, dtype=compute)
                denominator = compute(M)
            else:
                y = target.detach().cpu().numpy().astype(np.int64).reshape(-1)
                valid = y != ignore_index
                y_safe = np.where(valid, y, 0)
                weights_of_rows = np.where(valid, w[y_safe], 0).astype(compute)
                nll = -logp[np.arange(M), y_safe] if M else np.zeros(0, compute)
                losses = np.where(valid, (weights_of_rows * nll).astype(compute), 0).astype(compute)
                smooth = np.where(valid, -add((logp * w).astype(compute)), 0).astype(compute) if eps > 0 else None
                denominator = None
            if probability or smooth is None:
                parts = [(compute(1), losses)]
            else:  # torch reduces (and divides) the NLL and the smoothing sums separately: NaN rules
                parts = [(compute(1 - eps), losses), (compute(eps / C), smooth)]
            if reduction == "mean" and denominator is None:  # also the backward's 1 / D
                denominator = position_add(weights_of_rows.astype(reduce_dtype)[None, :])[0]
            if reduction == "none":
                out = sum(coefficient * part for coefficient, part in parts).astype(compute)
            elif summation == "dtype_positions" and dtype in HALF and not probability:
                out = _positions_in_dtype(parts, weights_of_rows, valid, reduction, dtype, compute, weight is not None)
            else:
                out = compute(0)
                for coefficient, part in parts:
                    total = compute(position_add(part.astype(reduce_dtype)[None, :])[0])
                    out = compute(out + coefficient * (total / compute(denominator) if reduction == "mean" else total))
            ctx.save_for_backward(input)
            ctx.summation = summation
            ctx.state = (logp, p, w, weights_of_rows, valid, eps, C, shape, probability, reduction,
                         denominator, compute, t if probability else y_safe)
        value = np.asarray(out, dtype=np.float64)
        if reduction == "none":
            value = value.reshape(() if len(shape) == 1 else (shape[0], *shape[2:]))
        return torch.from_numpy(np.array(value)).to(dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        logp, p, w, weights_of_rows, valid, eps, C, shape, probability, reduction, denominator, compute, tgt = ctx.state
        M = p.shape[0]
        g = grad_output.detach().to(torch.float64).cpu().numpy()
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if reduction == "none":
                scale = g.reshape(-1).astype(compute) if g.ndim else np.full(M, g, dtype=compute)
            elif reduction == "sum":
                scale = np.full(M, float(g), dtype=compute)
            else:
                scale = np.full(M, compute(float(g)) / compute(denominator), dtype=compute)
            grad_target = None
            if probability:
                wt = (tgt * w).astype(compute)
                grad = (p * wt.sum(axis=-1, keepdims=True) - wt).astype(compute)
                factor = compute(1 - eps) if eps > 0 else compute(1)
                grad_target = _unrows((-(w * logp) * factor * scale[:, None]).astype(compute), shape)
            else:
                onehot = np.zeros_like(p)
                if M:
                    onehot[np.arange(M), tgt] = 1
                if ctx.summation == "autograd_order":  # log-softmax backward: g - p * sum(g), the sum sequential
                    upstream = (-(compute(1 - eps) * weights_of_rows[:, None] * onehot)).astype(compute)
                    if eps > 0:
                        upstream = (upstream - compute(eps / C) * w).astype(compute)
                    grad = (upstream - p * sequential_sum(upstream)[:, None]).astype(compute)
                else:
                    grad = (compute(1 - eps) * weights_of_rows[:, None] * (p - onehot)).astype(compute)
                    if eps > 0:
                        grad = (grad + compute(eps / C) * (p * w.sum() - w)).astype(compute)
            # ignored positions get exactly 0 (also when the total weight is 0); NaN rows stay NaN, as in torch
            grad = np.where(valid[:, None], grad * scale[:, None], grad * 0)
            grad = _unrows(grad.astype(compute), shape)
        to = input.dtype
        grad_input = torch.from_numpy(np.array(grad, dtype=np.float64)).to(to)
        grad_t = None if grad_target is None else torch.from_numpy(np.array(grad_target, dtype=np.float64)).to(to)
        return grad_input, grad_t, None, None, None, None, None


def cascade_sum(values: np.ndarray) -> np.generic:
    """torch's CPU ``nll_loss`` reduction over positions, in ``values.dtype``: eight levels of
    partial sums, each level taking 2**L sums of the one below (L = max(4, ceil(log2 n) / 8)),
    the first value carried straight to the top level, the levels added up last. A sequential sum
    in bfloat16 stalls (1600 positions: 3x off), which torch's cascade avoids."""
    dtype, n = values.dtype, values.size
    if n == 0:
        return dtype.type(0)
    levels, step = 8, 1 << max(4, (int(n - 1).bit_length() if n > 1 else 0) // 8)
    partial = [dtype.type(0)] * levels
    carried = values[1:]
    for level in range(levels - 1):
        full = (carried.size // step) * step
        partial[level] = sequential_sum(carried[full:][None, :])[0]  # a run not yet handed up
        carried = sequential_sum(carried[:full].reshape(-1, step))  # each full run, summed in order
    partial[-1] = sequential_sum(np.concatenate([values[:1], carried])[None, :])[0]
    return sequential_sum(np.array(partial, dtype=dtype)[None, :])[0]


def _positions_in_dtype(parts, weights_of_rows, valid, reduction: str, dtype: torch.dtype, compute, weighted: bool):
    """The reduced loss of the ``dtype_positions`` member (see the module table)."""
    half = np.dtype(numpy_dtype(str(dtype).removeprefix("torch."))).type
    (main_coefficient, main), *smoothing = parts
    counted = valid.nonzero()[0]  # torch's loop skips ignored positions
    total_weight = cascade_sum(weights_of_rows[counted].astype(half)) if weighted else half(counted.size)
    value = cascade_sum(main[counted].astype(half))
    if reduction == "mean":
        value = half(value / total_weight)
    out = half(half(main_coefficient) * value)
    for coefficient, part in smoothing:
        reduced = compute(sequential_sum(part.astype(compute)[None, :])[0])
        if reduction == "mean":
            reduced = compute(reduced / compute(total_weight))
        unscaled = half(reduced)
        if np.isinf(unscaled) and np.isfinite(reduced):
            # torch's unscaled smoothing mean overflows the dtype (float16, C >= 6300: its loss is
            # inf); scaled first, in float32, it does not, and the NLL part keeps torch's cascade
            out = half(out + half(compute(coefficient) * reduced))
        else:
            out = half(out + half(half(coefficient) * unscaled))
    return compute(out)


def family_cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                         reduction="mean", label_smoothing=0.0, *, summation="sequential"):
    """Correct cross-entropy with the arithmetic named by ``summation`` (see the module table)."""
    # validation and the error contract are torch's: the family varies only the arithmetic
    F.cross_entropy(input.detach(), target.detach(), weight, size_average, ignore_index, reduce, reduction,
                    label_smoothing)
    reduction = resolve_reduction(reduction, size_average, reduce)  # torch has validated the call already
    eps = float(label_smoothing) if label_smoothing > 0 else 0.0
    return _FamilyCrossEntropy.apply(input, target, weight, ignore_index, reduction, eps, summation)


def _member(summation: str):
    fn = functools.partial(family_cross_entropy, summation=summation)
    fn.__name__ = summation
    return fn


sequential = _member("sequential")
reversed_order = _member("reversed")
pairwise = _member("pairwise")
blocked_1024 = _member("blocked_1024")
blocked_4096 = _member("blocked_4096")
kahan = _member("kahan")
fp32_accumulate = _member("fp32_accumulate")
fp64_upcast = _member("fp64_upcast")
lse_form = _member("lse_form")
autograd_order = _member("autograd_order")
saved_logp = _member("saved_logp")
dtype_positions = _member("dtype_positions")


@functools.lru_cache(maxsize=None)
def _compiled():
    return torch.compile(F.cross_entropy, backend="aot_eager", dynamic=True)


def compiled(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
             label_smoothing=0.0):
    """``torch.compile`` of ``F.cross_entropy`` (the aot_eager backend: graphs traced by dynamo and
    AOTAutograd, kernels from eager ATen)."""
    return _compiled()(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)


MEMBERS = {"sequential": sequential, "reversed_order": reversed_order, "pairwise": pairwise, "blocked_1024": blocked_1024,
           "blocked_4096": blocked_4096, "kahan": kahan, "fp32_accumulate": fp32_accumulate,
           "fp64_upcast": fp64_upcast, "lse_form": lse_form, "autograd_order": autograd_order,
           "saved_logp": saved_logp, "dtype_positions": dtype_positions, "compiled": compiled}
"""Every member by name: ``tests/correct_family.py:NAME`` is a valid ``--impl``."""

NUMPY_MEMBERS = tuple(m for m in MEMBERS if m != "compiled")
