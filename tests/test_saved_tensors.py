"""Saved-tensor safety (ce_conformance.saved_tensors): a second backward over the same graph gives
the same gradients, or the kernel wrote into what it saved."""

from __future__ import annotations

import numpy as np

from ce_conformance import Case
from ce_conformance.adapters import function_adapter, load_adapter
from ce_conformance.adapters.base import Outcome, RaisedError
from ce_conformance.errors import Rule
from ce_conformance.saved_tensors import PROBE, probe_for, second_backward_verdict

CASE = Case.cross_entropy([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [1, 2], dtype="float32", reduction="sum",
                          grad_output=0.75)


def _loss_and_gradient(x, target):
    """A 'sum' cross-entropy and its gradient w.r.t. ``x``, computed as a fused forward does."""
    import torch

    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(leaf, target, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), gradient


def _probed(fn):
    return function_adapter(fn, "torch").probe(CASE, PROBE)


def test_torch_differentiates_twice_alike_and_the_first_gradients_are_kept(torch):
    outcome = _probed(torch.nn.functional.cross_entropy)
    assert outcome.status == "ok" and set(outcome.extra["second_backward"]) == {"input"}
    assert np.array_equal(outcome.extra["second_backward"]["input"], outcome.grad_input)
    assert second_backward_verdict(outcome) is None
    assert "second_backward" not in function_adapter(torch.nn.functional.cross_entropy, "torch").run(CASE).extra


def test_a_kept_gradient_scaled_in_place_is_caught_although_the_first_backward_is_right(torch):
    class Kept(torch.autograd.Function):  # the gradient kept out of autograd's sight, scaled in place
        @staticmethod
        def forward(ctx, x, target):
            loss, ctx.kept = _loss_and_gradient(x, target)
            return loss

        @staticmethod
        def backward(ctx, grad):
            return ctx.kept.mul_(grad), None

    outcome = _probed(lambda input, target, **options: Kept.apply(input, target))
    torch_outcome = _probed(torch.nn.functional.cross_entropy)
    assert np.array_equal(outcome.grad_input, torch_outcome.grad_input)  # copied out before the second backward
    verdict = second_backward_verdict(outcome)
    assert verdict.check == "saved_tensor_modified"
    assert "gives other gradients: grad_input in 6 of 6 element(s)" in verdict.message


def test_autograds_version_counter_refusing_the_second_backward_is_a_finding_other_errors_are_not(torch):
    class SavedScaled(torch.autograd.Function):  # save_for_backward, then written in place: autograd sees it
        @staticmethod
        def forward(ctx, x, target):
            loss, kept = _loss_and_gradient(x, target)
            ctx.save_for_backward(kept)
            return loss

        @staticmethod
        def backward(ctx, grad):
            (kept,) = ctx.saved_tensors
            return kept.mul_(grad), None

    verdict = second_backward_verdict(_probed(lambda input, target, **options: SavedScaled.apply(input, target)))
    assert verdict.check == "saved_tensor_modified" and "version counter" in verdict.message
    freed = Outcome(loss=np.array(1.0), loss_dtype="float32", grad_input=np.zeros(2), grad_input_dtype="float32")
    freed.extra["second_backward_error"] = RaisedError("RuntimeError", "Trying to backward through the graph a "
                                                                       "second time", "backward")
    assert second_backward_verdict(freed) is None


def test_only_adapters_that_can_differentiate_twice_are_asked_and_only_for_valid_cases(torch):
    assert probe_for(load_adapter("torch"), CASE) == PROBE
    assert probe_for(load_adapter("numpy"), CASE) is None
    invalid = Case.cross_entropy([[1.0, 2.0]], [5], expected_error=Rule.TARGET_OUT_OF_BOUNDS)
    assert probe_for(load_adapter("torch"), invalid) is None


def test_a_graph_that_cannot_be_retained_is_run_as_usual_and_not_a_finding(torch):
    """torch.compile's backward with donated buffers refuses ``retain_graph=True`` (cut-cross-entropy's
    ``torch_compile`` path: the probe's first backward raised, and the repeat read as another
    outcome); the probe then makes the plain call and says why there is no second backward."""
    calls = []

    class RefusesRetainedGraphs(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, target):
            loss, ctx.gradient = _loss_and_gradient(x, target)
            return loss

        @staticmethod
        def backward(ctx, grad):
            calls.append(1)
            if len(calls) == 1:  # the probe's first backward, over a retained graph
                raise RuntimeError("This backward function was compiled with non-empty donated buffers which "
                                   "requires create_graph=False and retain_graph=False")
            return ctx.gradient * grad, None

    outcome = _probed(lambda input, target, **options: RefusesRetainedGraphs.apply(input, target))
    assert outcome.status == "ok" and "donated buffers" in outcome.extra["second_backward_unsupported"]
    assert "second_backward" not in outcome.extra and second_backward_verdict(outcome) is None
    assert np.allclose(outcome.grad_input, _probed(torch.nn.functional.cross_entropy).grad_input)
