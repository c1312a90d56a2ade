"""A correct chunked linear cross-entropy of ours and planted bugs real fused kernels have shipped.

``chunked`` computes the loss and every gradient in the forward, chunk by chunk over the batch
(as Liger-Kernel's fused linear cross-entropy does), in float32 for half dtypes, on the input's
device (the gate runs it with ``--device cuda`` too); each planted
variant changes one line of it. Index targets, ``ignore_index`` (default -100), class weights,
'mean' / 'sum' / 'none', an optional bias, and the family's extensions ``logit_scale``, ``softcap``,
``z_loss`` (the z-loss's 'mean' by the counted rows, as Liger-Kernel's), ``normalizer`` (a
'sum' divided by it, as transformers' ``num_items_in_batch``) and the returned outputs
``return_lse`` / ``return_z_loss`` (float32 for half dtypes, as quack's and flash-attn's).
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 4
_REUSED_BUFFERS: dict = {}  # grad_weight_buffer_reused: one weight-gradient buffer per head shape, kept across calls


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, target, weight, ignore_index, reduction, bug, softcap=None, z_loss=None,
                logit_scale=None, normalizer=None):
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        n = x.shape[0]
        lse_rows = torch.zeros(n, dtype=compute, device=x.device)  # returned, not differentiated (as flash-attn's)
        if bug == "z_loss_unrequested" and z_loss is None:
            z_loss = 1e-4  # "always on": PaLM's default weight added where the caller asked for none
        losses = torch.zeros(n, dtype=compute, device=x.device)
        z_losses = torch.zeros(n, dtype=compute, device=x.device)
        grad_logits = []
        rows = range(0, n, CHUNK_ROWS)
        if bug == "dropped_last_chunk":
            rows = range(0, n - n % CHUNK_ROWS if n > CHUNK_ROWS else n, CHUNK_ROWS)
        class_weight = torch.ones(w.shape[0], dtype=compute, device=x.device) if weight is None else weight.to(compute)
        for start in rows:
            xs, ts = x[start:start + CHUNK_ROWS].to(compute), target[start:start + CHUNK_ROWS]
            z = xs @ w.to(compute).T
            if b is not None:
                z = z + b.to(compute)
            slope = None
            if logit_scale is not None:  # z -> s z, the gradient times s
                z, slope = z * logit_scale, torch.full_like(z, logit_scale if bug != "logit_scale_not_in_gradient" else 1)
            raw = z
            if softcap is not None:  # z -> c tanh(z / c), the gradient through 1 - tanh^2
                t = torch.tanh(z / softcap)
                z, slope = softcap * t, (1 - t * t) * (1 if slope is None else slope)
            valid = ts != ignore_index
            safe = torch.where(valid, ts, 0)
            lse = torch.logsumexp(raw if bug == "softcap_after_lse" else z, dim=1, keepdim=True)
            lse_rows[start:start + len(ts)] = torch.logsumexp(xs @ w.to(compute).T + (0 if b is None else b.to(compute)),
                                                             dim=1) if bug == "lse_output_uncapped" else lse[:, 0]
            logp = z - lse
            wy = torch.where(valid, class_weight[safe], 0)
            losses[start:start + len(ts)] = -wy * logp.gather(1, safe[:, None])[:, 0]
            p = torch.exp(logp)
            g = p * wy[:, None]
            g[torch.arange(len(ts), device=x.device), safe] -= wy
            g_z = torch.zeros_like(g)
            if z_loss is not None:  # z_loss lse^2 per counted row; its gradient 2 z_loss lse p
                z_losses[start:start + len(ts)] = torch.where(valid, z_loss * lse[:, 0] ** 2, 0)
                if bug != "z_loss_missing_from_gradient":
                    g_z = torch.where(valid[:, None], 2 * z_loss * lse * p, 0)
            if slope is not None:
                g, g_z = g * slope, g_z * slope
            grad_logits.append((start, g, g_z, valid))
        total_weight = sum(torch.where(target[s:s + CHUNK_ROWS] != ignore_index,
                                       class_weight[torch.where(target[s:s + CHUNK_ROWS] != ignore_index,
                                                                target[s:s + CHUNK_ROWS], 0)], 0).sum()
                           for s in range(0, n, CHUNK_ROWS)) if n else torch.zeros((), dtype=compute, device=x.device)
        counted = (target != ignore_index).sum().to(compute)
        if reduction == "mean":  # the z-loss by the counted rows (as Liger-Kernel), the loss by their weight
            denominator = total_weight * (total_weight if bug == "normaliser_twice" else 1)
            z_loss_out = z_losses.sum() / (1 if bug == "z_loss_output_summed" else counted)
            out = losses.sum() / denominator + z_losses.sum() / counted
        elif reduction == "sum":
            z_loss_out = z_losses.sum() / (1 if normalizer is None else normalizer)
            out = (losses.sum() + z_losses.sum()) / (1 if normalizer is None else normalizer)
        else:
            z_loss_out = z_losses
            out = losses + z_losses
        ctx.save_for_backward(x, w)
        ctx.grad_logits, ctx.reduction, ctx.has_bias, ctx.bug = grad_logits, reduction, b is not None, bug
        ctx.denominator = total_weight if reduction == "mean" else None
        if reduction == "sum" and normalizer is not None and bug != "normalizer_not_in_gradient":
            ctx.denominator = normalizer
        ctx.counted = counted
        ctx.mark_non_differentiable(lse_rows, z_loss_out)
        return out.to(x.dtype), lse_rows, z_loss_out

    @staticmethod
    def backward(ctx, grad_output, _grad_lse, _grad_z_loss):
        x, w = ctx.saved_tensors
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        accumulate = x.dtype if ctx.bug == "weight_grad_in_dtype" else compute
        grad_x = torch.zeros(x.shape, dtype=compute, device=x.device)
        grad_w = torch.zeros(w.shape, dtype=accumulate, device=x.device)
        if ctx.bug == "grad_weight_buffer_reused":  # kept per head shape and never zeroed: calls accumulate
            grad_w = _REUSED_BUFFERS.setdefault((tuple(w.shape), accumulate, str(x.device)), grad_w)
        grad_b = torch.zeros(w.shape[0], dtype=compute, device=x.device)
        if ctx.bug == "weight_grad_in_dtype":  # one row at a time, as a kernel adding per token would
            ctx.grad_logits = [(start + i, g[i:i + 1], g_z[i:i + 1], valid[i:i + 1])
                               for start, g, g_z, valid in ctx.grad_logits for i in range(len(g))]
        for start, g, g_z, valid in ctx.grad_logits:
            if ctx.reduction == "none":
                scale = z_scale = grad_output[start:start + len(g)].to(compute)[:, None]
                if ctx.bug == "first_grad_output":
                    scale = z_scale = grad_output[0].to(compute)
            else:  # 'sum' over an external normaliser divides both parts by it
                scale = grad_output.to(compute) / (1 if ctx.denominator is None else ctx.denominator)
                z_scale = grad_output.to(compute) / (ctx.counted if ctx.reduction == "mean" else
                                                     1 if ctx.denominator is None else ctx.denominator)
            # as torch: an ignored row gets no gradient, a counted one over a zero total weight 0/0 = NaN
            if ctx.bug == "grad_scaled_in_place":  # over the kept chunk: a second backward scales it again
                g = torch.where(valid[:, None], g.mul_(scale), 0)
            else:
                g = torch.where(valid[:, None], g * scale, 0)
            if g_z.any():  # the z-loss's part, with its own normaliser
                g = g + torch.where(valid[:, None], g_z * z_scale, 0)
            grad_x[start:start + len(g)] = g @ w.to(compute)
            if ctx.bug == "grad_weight_buffer_reused":
                grad_w += (g.T @ x[start:start + len(g)].to(compute)).to(accumulate)
            else:
                grad_w = (grad_w.to(compute) + g.T @ x[start:start + len(g)].to(compute)).to(accumulate)
            grad_b += g.sum(0)
        bias_grad = None if not ctx.has_bias or ctx.bug == "bias_grad_missing" else grad_b.to(x.dtype)
        return grad_x.to(x.dtype), grad_w.to(x.dtype), bias_grad, None, None, None, None, None, None, None, None, None


def _make(bug):
    def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None, reduction="mean",
                             ignore_index=None, label_smoothing=0.0, logit_scale=None, softcap=None, z_loss=None,
                             normalizer=None, return_lse=False, return_z_loss=False):
        if label_smoothing or target.is_floating_point() or input.dim() != 2 or linear_weight.dim() != 2:
            raise NotImplementedError("index targets, (N, H) inputs and (C, H) weights without smoothing only")
        ignore = -100 if ignore_index is None else ignore_index
        loss, lse, z_loss_out = _ChunkedLinearCrossEntropy.apply(input, linear_weight, linear_bias, target, weight,
                                                                 ignore, reduction, bug, softcap, z_loss, logit_scale,
                                                                 normalizer)
        returned = [value for value, wanted in ((lse, return_lse), (z_loss_out, return_z_loss)) if wanted]
        return (loss, *returned) if returned else loss

    linear_cross_entropy.__name__ = bug or "chunked"
    return linear_cross_entropy


chunked = _make(None)
PLANTED = ("dropped_last_chunk", "first_grad_output", "weight_grad_in_dtype", "bias_grad_missing", "normaliser_twice",
           "grad_scaled_in_place", "softcap_after_lse", "z_loss_missing_from_gradient", "z_loss_unrequested",
           "logit_scale_not_in_gradient", "normalizer_not_in_gradient", "grad_weight_buffer_reused",
           "lse_output_uncapped", "z_loss_output_summed")
(dropped_last_chunk, first_grad_output, weight_grad_in_dtype, bias_grad_missing, normaliser_twice,
 grad_scaled_in_place, softcap_after_lse, z_loss_missing_from_gradient, z_loss_unrequested,
 logit_scale_not_in_gradient, normalizer_not_in_gradient, grad_weight_buffer_reused,
 lse_output_uncapped, z_loss_output_summed) = map(_make, PLANTED)
SUPPORTED_FEATURES = frozenset({"weights", "ignore_index", "all_ignored", "upstream_gradient", "low_precision",
                                "linear_bias", "empty_batch", "single_class", "vocab_scale", "logit_scale", "softcap",
                                "z_loss", "normalizer", "return_lse", "return_z_loss"})
