"""Misbehaving implementations for the robustness tests: each breaks the harness a different way."""

import os
import time

import torch.nn.functional as F


def abort_on_weights(input, target, weight=None, **options):
    if weight is not None:
        os.abort()
    return F.cross_entropy(input, target, weight=weight, **options)


def hang_on_kdim(input, target, **options):
    if input.dim() > 2:
        time.sleep(600)
    return F.cross_entropy(input, target, **options)


def memory_blowup_unbatched(input, target, **options):
    if input.dim() == 1:
        hog = bytearray(64 * 1024**3)  # far over the worker's address-space limit
        del hog
    return F.cross_entropy(input, target, **options)


def raise_on_smoothing(input, target, label_smoothing=0.0, **options):
    if label_smoothing > 0:
        raise RuntimeError("smoothing not implemented in this kernel")
    return F.cross_entropy(input, target, label_smoothing=label_smoothing, **options)


def slow_and_wrong(input, target, **options):
    time.sleep(0.05)
    return F.cross_entropy(input, target, **options) * 1.01


def hang_on_smoothing(input, target, label_smoothing=0.0, **options):
    if label_smoothing > 0:
        time.sleep(10**6)
    return F.cross_entropy(input, target, label_smoothing=label_smoothing, **options)


_calls = [0]


def nondeterministic_loss(input, target, **options):
    """Within budget on every call, but every other call's float32 loss is an ulp or two higher
    (its gradients untouched): the signature of a reduction whose order depends on which thread
    finishes first. (Scaling the whole loss by 1 + 2^-22 scaled the gradients too, 2-4 ulps on
    top of torch's own error: a teacher-target case's grad_target went over its 4.9-ulp budget.)"""
    loss = F.cross_entropy(input, target, **options)
    _calls[0] += 1
    if _calls[0] % 2 and loss.dtype.is_floating_point and loss.dtype.itemsize == 4:
        return loss + (loss * 2.0**-23).detach()
    return loss
