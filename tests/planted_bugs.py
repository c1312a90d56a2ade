"""Planted-bug cross-entropy implementations: one correct from-scratch torch implementation,
and one wrong variant per bug class of ``shared/bug-classes.md``, each a single deviation.

Every public function has the signature of ``torch.nn.functional.cross_entropy`` so that
``ce-conformance gate --impl tests/planted_bugs.py:NAME`` can gate it. ``CORRECT`` lists the
implementations the gate must pass, ``BUGS`` maps each wrong one to its bug class and to the
checks that may legitimately report it.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

HALF = (torch.float16, torch.bfloat16)


def _legacy(reduction, size_average, reduce):
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        return "mean" if (size_average and reduce) else ("sum" if reduce else "none")
    return "mean" if reduction == "elementwise_mean" else reduction


class _ScalarUpstream(torch.autograd.Function):
    """Identity whose backward replaces a per-element upstream gradient by its mean (bug 12)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, grad.mean()) if grad.numel() else grad


class _LogSoftmaxFastBackwardExp(torch.autograd.Function):
    """log_softmax whose backward recomputes p with a "fast" exp good to 13 bits (a polynomial of
    too low a degree, switched on for large vocabularies; the forward is exact): every p is off
    by up to 2^-13 relative, below the budget of a vocabulary row's largest term (the row-level
    model of v2) but about a thousand ulps of each probability (bug 15)."""

    @staticmethod
    def forward(ctx, x):
        logp = torch.log_softmax(x, -1)
        ctx.save_for_backward(logp)
        return logp

    @staticmethod
    def backward(ctx, grad):
        (logp,) = ctx.saved_tensors
        p = torch.exp(logp)
        p = (p.view(torch.int32) & ~0x3FF).view(torch.float32)  # 13 significant bits, truncated
        return grad - p * grad.sum(-1, keepdim=True)


class _KeptGradient(torch.autograd.Function):
    """The gradient computed in the forward and kept (as fused kernels do to free the logits);
    the backward scales the kept buffer in place by ``grad_output`` and returns it: right once,
    scaled again by a second backward over the same graph (bug 12). Kept as a ``ctx`` attribute,
    out of autograd's sight, as a Triton kernel writing through a pointer is."""

    @staticmethod
    def forward(ctx, x, value, gradient):
        ctx.kept = gradient
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.kept.mul_(grad.to(ctx.kept.dtype)), None, None


class _FlushedGradient(torch.autograd.Function):
    """Identity whose backward stores the gradient with subnormals flushed to zero, as the
    vocabulary-scale path of a kernel whose half-precision store runs with flush-to-zero (bug 9):
    the non-target gradient of a float16 row of 16384 classes or more (p / N near 1e-6, where the
    steps are 6e-8) is gone. Model v2.2's underflow floor (C subnormal steps per element, 0.006 at
    C = 32000) passed it."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.where(grad.abs() < torch.finfo(grad.dtype).tiny, torch.zeros_like(grad), grad)


def _sequential_half_sum(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Sum over the last axis one element at a time, rounding to ``dtype`` after every add
    (what a kernel with a low-precision accumulator does), forward value only."""
    import ml_dtypes

    np_dtype = np.float16 if dtype == torch.float16 else ml_dtypes.bfloat16
    flat = values.detach().to(torch.float64).reshape(-1, values.shape[-1]).numpy()
    acc = np.zeros(flat.shape[0], dtype=np_dtype)
    for column in flat.T.astype(np_dtype):
        acc = (acc + column).astype(np_dtype)
    return torch.from_numpy(acc.astype(np.float64)).reshape(values.shape[:-1])


def scratch_cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                          reduction="mean", label_smoothing=0.0, *, bug=None, upcast=False):
    """A correct cross-entropy written from the semantics, or a planted ``bug`` variant."""
    reduction = _legacy(reduction, size_average, reduce)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    eps = float(label_smoothing)
    if eps > 1.0 and bug != "smoothing_range_unchecked":
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {eps}")
    eps = eps if eps > 0 else 0.0
    if not input.is_floating_point():
        raise TypeError(f"log_softmax not implemented for '{input.dtype}'")
    if input.dim() == 0:
        raise ValueError("Expected 1 or more dimensions (got 0)")
    class_dim = 0 if input.dim() == 1 else 1
    C = input.shape[class_dim]
    probabilities = input.shape == target.shape
    if weight is not None and (weight.dim() != 1 or weight.numel() != C):
        raise ValueError(f"weight tensor should be defined either for all {C} classes or no classes")
    compute = torch.float64 if upcast else (torch.float32 if input.dtype in HALF else input.dtype)
    x = input
    if bug == "half_gradient_flushed" and input.dtype in HALF and input.shape[0 if input.dim() == 1 else 1] >= 16384:
        x = _FlushedGradient.apply(input)
    if bug == "strides_ignored" and not input.is_contiguous():
        x = torch.as_strided(input, input.shape, torch.empty(input.shape).stride())
    x = x.to(compute).movedim(class_dim, -1) if input.dim() > 1 else x.to(compute)
    if bug == "neg_inf_clamped":
        x = x.clamp(min=-1e4)
    w = (weight.to(compute) if weight is not None else torch.ones(C, dtype=compute, device=input.device))
    if bug == "no_max_subtraction":
        lse = torch.log(torch.exp(x).sum(-1, keepdim=True))
        logp = x - lse
    elif bug == "offset_cancellation":
        m = x.max(-1, keepdim=True).values.to(input.dtype)
        lse = (m + torch.log(torch.exp(x - m).sum(-1, keepdim=True)).to(input.dtype)).to(input.dtype)
        logp = x.to(input.dtype).to(compute) - lse.to(compute)
    elif bug == "partial_block_dropped" and C > 128 and C % 128:
        kept = (C // 128) * 128
        logp = x - torch.logsumexp(x[..., :kept], -1, keepdim=True)
    elif bug == "vocab_fast_exp" and compute == torch.float32 and C >= 16384:
        # a "fast" exp keeping 13 mantissa bits, switched on for large vocabularies only
        m = x.max(-1, keepdim=True).values.detach()
        e = torch.exp(x - m)
        truncated = (e.view(torch.int32) & ~0x3FF).view(torch.float32)
        e = e + (truncated - e).detach()
        logp = x - m - torch.log(e.sum(-1, keepdim=True))
    elif bug == "vocab_fast_backward_exp" and compute == torch.float32 and C >= 16384:
        logp = _LogSoftmaxFastBackwardExp.apply(x)
    else:
        logp = torch.log_softmax(x, -1)
    if bug == "log_prob_floor":
        logp = logp.clamp(min=-100.0)  # "saturated" losses, as binary cross-entropy clamps its logs
    if bug == "low_precision_accumulation" and input.dtype in HALF:
        m = x.max(-1, keepdim=True).values
        bad_lse = m + torch.log(_sequential_half_sum(torch.exp(x - m), input.dtype).unsqueeze(-1).to(compute))
        logp = logp + (x - bad_lse - logp).detach()  # forward as the bad kernel, gradient untouched

    if probabilities:
        if target.is_floating_point() is False:
            raise TypeError(f"Expected floating point type for target with class probabilities, got {target.dtype}")
        if ignore_index >= 0:
            raise ValueError("ignore_index is not supported for floating point target")
        t = target if bug != "no_target_gradient" else target.detach()
        t = t.to(compute).movedim(class_dim, -1) if input.dim() > 1 else t.to(compute)
        if eps > 0 and bug != "probability_smoothing_skipped":
            t = t * (1 - eps) + eps / C
        w_row = torch.ones_like(w) if bug == "probability_weights_dropped" else w
        if bug == "probability_zero_log_zero":
            per = -torch.where(t == 0, torch.zeros_like(logp), w_row * t * logp).sum(-1)
        else:
            per = -(w_row * t * logp).sum(-1)
        if bug == "probability_grad_assumes_normalised" and weight is None:
            # the input gradient softmax - t, right only where the targets sum to 1 (the targets' stays right)
            surrogate = torch.logsumexp(x, -1) - (t.detach() * x).sum(-1)
            per = -(t * logp.detach()).sum(-1) + (surrogate - surrogate.detach())
        positions = per.numel()
        if reduction == "none":
            out = per
        elif reduction == "sum":
            out = per.sum()
        else:
            denominator = (t.sum(-1) * 0 + w[t.argmax(-1)]).sum() if bug == "probability_mean_by_weight" else positions
            out = per.sum() / denominator if positions else per.sum() * float("nan")
        return out.to(input.dtype)

    if target.dtype not in (torch.int64, torch.uint8) or (input.dim() > 2 and target.dtype != torch.int64):
        raise TypeError(f"expected target dtype to be Long or Byte, but got {target.dtype}")
    if input.dim() == 1:
        if target.dim() > 1 or (target.dim() == 1 and target.numel() != 1):
            raise ValueError("For 1D input, 1D target must have size 1")
    elif target.dim() == 0 or target.shape[0] != input.shape[0] or tuple(target.shape[1:]) != tuple(input.shape[2:]):
        raise ValueError(f"Expected target size {[input.shape[0], *input.shape[2:]]}, got {list(target.shape)}")
    y = target.long().reshape(logp.shape[:-1])
    if bug == "ignore_only_nonnegative":
        valid = (y != ignore_index) if ignore_index >= 0 else torch.ones_like(y, dtype=torch.bool)
    elif bug == "ignore_hardcoded":
        valid = y != -100
    elif bug == "negative_ignore_means_none" and ignore_index < 0 and ignore_index != -100:
        valid = torch.ones_like(y, dtype=torch.bool)  # "-1 means no ignore index"
    else:
        valid = y != ignore_index
    out_of_range = valid & ((y < 0) | (y >= C))
    if bug == "out_of_range_clamped":
        y = y.clamp(0, C - 1)
    elif bug in ("ignore_only_nonnegative", "ignore_hardcoded"):
        y = torch.where(valid, y.clamp(0, C - 1), y)  # the sentinel is used as an index
    elif out_of_range.any():
        raise IndexError(f"Target {int(y[out_of_range][0])} is out of bounds.")
    y_safe = torch.where(valid, y, torch.zeros_like(y)).clamp(0, C - 1)
    nll = -logp.gather(-1, y_safe.unsqueeze(-1)).squeeze(-1)
    w_target = torch.where(valid, w[y_safe], torch.zeros((), dtype=compute))
    if bug == "weights_missing_from_gradient":
        unweighted = torch.where(valid, nll, torch.zeros((), dtype=compute))
        weighted = torch.where(valid, w_target * nll, torch.zeros((), dtype=compute))
        nll_w = unweighted + (weighted - unweighted).detach()
    else:
        nll_w = torch.where(valid, w_target * nll, torch.zeros((), dtype=compute))
    smooth = torch.zeros_like(nll_w)
    if eps > 0:
        if bug == "smoothing_by_target_weight":
            smooth = -(logp.sum(-1)) * w_target
        else:
            smooth = -(logp * w).sum(-1)
        # the fused 'mean' path masks its smoothing sum with target >= 0 (right for -100 only);
        # it needs four options at once: mean, smoothing, ignore_index >= 0, some rows ignored
        interaction = (bug == "mean_smoothing_in_range_ignore" and reduction == "mean" and 0 <= ignore_index < C)
        if bug != "smoothing_counts_ignored_rows":
            smooth = torch.where((y >= 0) if interaction else valid, smooth, torch.zeros((), dtype=compute))
    if bug == "smoothing_over_c_minus_1" and eps > 0 and C > 1:
        # eps/(C-1) on the other classes, 1 - eps on the target
        other = -(logp * w).sum(-1) + w[y_safe] * logp.gather(-1, y_safe.unsqueeze(-1)).squeeze(-1)
        per = torch.where(valid, (1 - eps) * nll_w + eps / (C - 1) * other, torch.zeros((), dtype=compute))
        nll_w, smooth, eps_used = per, torch.zeros_like(per), 0.0
    else:
        eps_used = eps
    if reduction == "none":
        out = (1 - eps_used) * nll_w + (eps_used / C) * smooth if eps_used else nll_w
        if bug == "scalar_upstream_gradient":
            out = _ScalarUpstream.apply(out)
        if bug == "wrong_none_shape":
            out = out.reshape(-1)
    else:
        if reduction == "sum":
            denominator = torch.ones((), dtype=compute)
        elif bug == "mean_over_n":
            denominator = torch.tensor(float(y.numel()), dtype=compute)
        else:
            denominator = w_target.sum()
        if bug == "all_ignored_returns_zero" and not valid.any():
            return torch.zeros((), dtype=input.dtype) + 0 * input.sum()
        out = (1 - eps_used) * nll_w.sum() / denominator
        if eps_used:
            out = out + (eps_used / C) * smooth.sum() / denominator
    if bug == "mutates_input":
        with torch.no_grad():
            input.mul_(0.5)
    if bug == "fp32_output" and input.dtype in HALF:
        return out.to(torch.float32)
    if bug == "gradient_kept_in_place" and out.dim() == 0 and input.requires_grad:
        value = out.to(input.dtype)
        (gradient,) = torch.autograd.grad(value, input)
        return _KeptGradient.apply(input, value.detach(), gradient)
    return out.to(input.dtype)


def _variant(bug):
    fn = functools.partial(scratch_cross_entropy, bug=bug)
    functools.update_wrapper(fn, scratch_cross_entropy)
    fn.__name__ = bug
    return fn


correct_from_scratch = functools.partial(scratch_cross_entropy)
fp64_upcast = functools.partial(scratch_cross_entropy, upcast=True)

CORRECT = {
    "torch.nn.functional:cross_entropy": None,
    "torch.nn:CrossEntropyLoss": None,
    "tests/planted_bugs.py:correct_from_scratch": None,
    "tests/planted_bugs.py:fp64_upcast": None,
}

BUGS = {
    # name: (bug class number, checks that may report it)
    "mean_over_n": (1, {"loss_value", "grad_input_value"}),
    "ignore_only_nonnegative": (2, {"loss_value", "grad_input_value", "loss_nonfinite", "error"}),
    "ignore_hardcoded": (2, {"loss_value", "grad_input_value", "loss_nonfinite"}),
    "all_ignored_returns_zero": (3, {"loss_nonfinite"}),
    "smoothing_over_c_minus_1": (4, {"loss_value", "grad_input_value"}),
    "smoothing_counts_ignored_rows": (5, {"loss_value", "grad_input_value", "loss_nonfinite"}),
    "smoothing_by_target_weight": (6, {"loss_value", "grad_input_value"}),
    "probability_mean_by_weight": (7, {"loss_value", "grad_input_value", "grad_target_value"}),
    "probability_weights_dropped": (7, {"loss_value", "grad_input_value", "grad_target_value"}),
    "probability_smoothing_skipped": (7, {"loss_value", "grad_input_value", "grad_target_value"}),
    "probability_zero_log_zero": (7, {"loss_nonfinite", "loss_value"}),
    "no_target_gradient": (7, {"grad_target_missing"}),
    "probability_grad_assumes_normalised": (7, {"grad_input_value"}),
    "no_max_subtraction": (8, {"loss_nonfinite", "loss_value", "grad_input_nonfinite", "grad_input_value"}),
    "offset_cancellation": (8, {"loss_value", "grad_input_value"}),
    "low_precision_accumulation": (9, {"loss_value"}),
    "half_gradient_flushed": (9, {"grad_input_value"}),
    "neg_inf_clamped": (10, {"loss_value", "loss_nonfinite", "grad_input_value"}),
    "out_of_range_clamped": (11, {"missing_error"}),
    "weights_missing_from_gradient": (12, {"grad_input_value"}),
    "scalar_upstream_gradient": (12, {"grad_input_value"}),
    "mutates_input": (12, {"mutation"}),
    "gradient_kept_in_place": (12, {"saved_tensor_modified"}),
    "strides_ignored": (12, {"loss_value", "grad_input_value", "loss_nonfinite"}),
    "partial_block_dropped": (13, {"loss_value", "grad_input_value"}),
    "fp32_output": (14, {"loss_dtype"}),
    "wrong_none_shape": (14, {"loss_shape"}),
    "smoothing_range_unchecked": (14, {"missing_error"}),
    "vocab_fast_exp": (15, {"loss_value", "grad_input_value"}),
    "vocab_fast_backward_exp": (15, {"grad_input_value"}),
    "mean_smoothing_in_range_ignore": (16, {"loss_value", "grad_input_value", "loss_nonfinite"}),
    "negative_ignore_means_none": (17, {"error", "loss_value"}),
    "log_prob_floor": (17, {"loss_value", "grad_input_value", "loss_nonfinite"}),
}

for _name in BUGS:
    globals()[_name] = _variant(_name)
