"""A fused Triton cross-entropy kernel, the kind ce-conformance is built to gate.

One program per row: an online softmax over blocks of up to 1024 classes (running max, rescaled
running sum), the loss relative to the maximum (as torch's log_softmax: the ``lse - x_y`` of
some fused kernels fails the gate at logits near 1e4), and the gradient row written in the same
launch (as Liger-Kernel does);
the backward only scales the saved gradient by the upstream gradient. Accumulation is float32
(float64 for float64 inputs). Supports index targets of any shape torch does ((C,), (N, C),
(N, C, d1, ...)), ``ignore_index``, ``label_smoothing`` and every reduction; no class weights,
no probability targets, no argument validation, finite logits only. Gate it with::

    ce-conformance gate --impl examples/triton_cross_entropy.py:cross_entropy --device cuda \\
        --features default,-weights,-probability_targets,-invalid_input,-nonfinite_logits

``PLANTED`` names bugs that real kernels have shipped, for the suite's own tests:
``stale_sum`` (the running sum is not rescaled when a later block raises the maximum: only wrong
when C > 1024 and the maximum is not in the first block) and ``first_grad_output`` (the backward
of reduction='none' scales every row by ``grad_output[0]``) and ``absolute_lse`` (the loss as
``(m + log d) - x_y``: correct in exact arithmetic, hundreds of ulps off for logits near 1e4).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 1024
PLANTED = ("stale_sum", "first_grad_output", "absolute_lse")


@triton.jit(do_not_specialize=["n_classes", "stride_x", "stride_g", "ignore_index"])
def _forward_rows(X, stride_x, Y, LOSS, GRAD, stride_g, PARAMS, n_classes, ignore_index,
                  BLOCK: tl.constexpr, STALE_SUM: tl.constexpr, ABSOLUTE_LSE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    g_row = GRAD + row * stride_g
    y = tl.load(Y + row)
    cols = tl.arange(0, BLOCK)
    smoothing = tl.load(PARAMS)  # in the accumulation dtype: float64 cases keep torch's double eps
    scale = tl.load(PARAMS + 1)  # 1 / (non-ignored rows) for 'mean', else 1
    first = tl.load(x_row).to(smoothing.dtype)
    if y != ignore_index:
        m = first  # any element is a valid starting maximum; keeps the accumulator's dtype
        d = first * 0.0
        shifted = first * 0.0  # mean of (x - first): a mean near 1e4 would cancel against the lse
        for start in range(0, n_classes, BLOCK):
            offs = start + cols
            mask = offs < n_classes
            x = tl.load(x_row + offs, mask=mask, other=float("-inf")).to(smoothing.dtype)
            m_new = tl.maximum(m, tl.max(x, 0))
            if STALE_SUM:
                d = d + tl.sum(tl.exp(x - m_new), 0)
            else:
                d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
            # scaled by 2**-11 (exact) before subtracting and summing a block: logits 3e38 apart
            # would overflow x - first, and 1024 such differences their sum
            block = tl.sum(tl.where(mask, x * 0.00048828125 - first * 0.00048828125, 0.0), 0)
            shifted += block / n_classes
            m = m_new
        # relative to the maximum, as torch's log_softmax: lse - x_y would lose the digits of the
        # lse's rounding when the logits sit far from 0 (805 fp32 ulps at an offset of 1e4)
        log_d = tl.log(d)
        x_y = tl.load(x_row + y).to(smoothing.dtype)
        if ABSOLUTE_LSE:
            lse = m + log_d
            nll = lse - x_y
            uniform = lse - (shifted * 2048.0 + first)
        else:
            nll = log_d - (x_y - m)
            uniform = log_d - (shifted * 2048.0 + (first - m))
        # without smoothing the uniform term must not enter at all: logits 3e38 apart make
        # x - first overflow, and 0 * inf is NaN (the gate drew it: a 1 x 5 float32 'mean')
        loss = tl.where(smoothing > 0, (1.0 - smoothing) * nll + smoothing * uniform, nll)
        tl.store(LOSS + row, loss)
        for start in range(0, n_classes, BLOCK):
            offs = start + cols
            mask = offs < n_classes
            x = tl.load(x_row + offs, mask=mask, other=0.0).to(smoothing.dtype)
            if ABSOLUTE_LSE:
                p = tl.exp(x - (m + log_d))
            else:
                p = tl.exp((x - m) - log_d)
            g = p - smoothing / n_classes
            g = tl.where(offs == y, g - (1.0 - smoothing), g)
            tl.store(g_row + offs, g * scale, mask=mask)
    else:
        tl.store(LOSS + row, first * 0.0)
        for start in range(0, n_classes, BLOCK):
            offs = start + cols
            tl.store(g_row + offs, tl.zeros([BLOCK], dtype=smoothing.dtype), mask=offs < n_classes)


class _TritonCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, ignore_index, reduction, label_smoothing, planted):
        shape = input.shape
        classes = shape[0] if input.dim() == 1 else shape[1]
        rows = (input.reshape(1, classes) if input.dim() == 1 else input.movedim(1, -1).reshape(-1, classes)).contiguous()
        labels = target.reshape(-1).contiguous()
        accumulate = torch.float64 if input.dtype == torch.float64 else torch.float32
        count = int((labels != ignore_index).sum()) if reduction == "mean" else 1
        params = torch.tensor([label_smoothing, 1.0 / count if count else float("inf")], dtype=accumulate,
                              device=input.device)
        losses = torch.empty(rows.shape[0], dtype=accumulate, device=input.device)
        grad = torch.empty(rows.shape, dtype=accumulate, device=input.device)
        if rows.shape[0]:
            block = min(MAX_BLOCK, triton.next_power_of_2(classes))
            _forward_rows[(rows.shape[0],)](rows, rows.stride(0), labels, losses, grad, grad.stride(0), params,
                                            classes, ignore_index, BLOCK=block, STALE_SUM=planted == "stale_sum",
                                            ABSOLUTE_LSE=planted == "absolute_lse")
        ctx.save_for_backward(grad)
        ctx.shape, ctx.dtype, ctx.reduction, ctx.planted = shape, input.dtype, reduction, planted
        if reduction == "none":
            out = losses.reshape(target.shape)
        elif reduction == "sum":
            out = losses.sum()
        else:
            out = losses.sum() / count  # every row ignored: 0 / 0 = NaN, as torch
        return out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        upstream = grad_output.to(grad.dtype)
        if ctx.reduction == "none":
            upstream = upstream.reshape(-1, 1)
            if ctx.planted == "first_grad_output" and upstream.numel():
                upstream = upstream[:1].expand_as(upstream)
        grad = grad * upstream
        shape = ctx.shape
        if len(shape) == 1:
            grad = grad.reshape(shape)
        else:
            moved = (shape[0], *shape[2:], shape[1])
            grad = grad.reshape(moved).movedim(-1, 1)
        return grad.to(ctx.dtype), None, None, None, None, None


def _cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                   *, planted=None):
    if weight is not None:
        raise NotImplementedError("this kernel takes no class weights")
    if target.is_floating_point():
        raise NotImplementedError("this kernel takes class indices, not probabilities")
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return _TritonCrossEntropy.apply(input, target, int(ignore_index), reduction, float(label_smoothing), planted)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """``F.cross_entropy`` for index targets on CUDA tensors, computed by one Triton launch."""
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)


def stale_sum(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Planted bug: the online softmax forgets to rescale its running sum."""
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, planted="stale_sum")


def first_grad_output(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Planted bug: reduction='none' backward scales every row by grad_output[0]."""
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                          planted="first_grad_output")


def absolute_lse(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Planted inaccuracy: the loss as lse - x_y, cancelling the lse's rounding error."""
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, planted="absolute_lse")
