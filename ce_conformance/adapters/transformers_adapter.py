"""Hugging Face transformers' causal-LM loss helper, ``transformers.loss.loss_utils.ForCausalLMLoss``,
as every ``*ForCausalLM`` model computes its training loss.

The helper upcasts the logits to float32 ("to avoid potential precision issues"), flattens them
to ``(-1, vocab_size)`` with the classes last, and reduces with ``'mean'`` or, given
``num_items_in_batch``, the sum divided by it (gradient accumulation's normaliser). The adapter
passes the case's targets as ``shift_labels`` (so nothing is shifted: the case's rows are the
predicting positions) and the family's ``normalizer`` extension as ``num_items_in_batch`` (1 for
a plain ``'sum'``), so its micro-batches are checked for split invariance
(:mod:`ce_conformance.split`). There is no ``'none'``, no class weights, no label smoothing and
no probability targets.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

from .base import Capabilities
from .torch_adapter import TorchAdapter, TorchBridge


def transformers_causal_lm_loss(input, target, weight=None, ignore_index=-100, reduction="mean",
                                label_smoothing=0.0, normalizer=None):
    """ForCausalLMLoss with torch's keywords (``normalizer``: its ``num_items_in_batch``). K-dim
    logits get their classes moved last into a contiguous (batch, ..., vocab) tensor, the layout
    a causal LM hands it."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits = input.movedim(1, -1).contiguous() if input.dim() > 2 else input
    return ForCausalLMLoss(logits, None, vocab_size=logits.shape[-1], ignore_index=ignore_index,
                           num_items_in_batch=(normalizer or 1) if reduction == "sum" else None, shift_labels=target)


TRANSFORMERS_CAPABILITIES = Capabilities(reductions=frozenset({"mean", "sum"}),
                                         features=Capabilities().features | {"normalizer"}).without(
    "weights", "label_smoothing", "negative_smoothing", "probability_targets", "legacy_reduction", "invalid_input")
"""What ForCausalLMLoss takes; invalid calls are left out (it checks no arguments of its own)."""


class TransformersAdapter(TorchAdapter):
    """A transformers loss helper on torch tensors (judged as torch's F.cross_entropy). Its
    ``bridge``, ``source`` and ``class_axis`` make its repro scripts call the helper itself
    (:func:`ce_conformance.repro.write_repro`), not F.cross_entropy."""

    framework = "transformers"
    class_axis = 1

    def __init__(self) -> None:
        super().__init__(transformers_causal_lm_loss, name="transformers", capabilities=TRANSFORMERS_CAPABILITIES,
                         description="transformers.loss.loss_utils.ForCausalLMLoss (shift_labels = the targets; "
                                     "the normalizer as num_items_in_batch, 1 for a plain 'sum')")
        self.bridge = TorchBridge()
        self.source = inspect.getsource(transformers_causal_lm_loss)

    def availability(self) -> str | None:
        if importlib.util.find_spec("transformers") is None:
            return "transformers is not installed (pip install 'ce-conformance[transformers]')"
        return super().availability()

    def versions(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {**super().versions(), "transformers": version("transformers")}
