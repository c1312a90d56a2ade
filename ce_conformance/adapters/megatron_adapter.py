"""NVIDIA's Megatron-core (``pip install megatron-core``): ``megatron.core.tensor_parallel.
vocab_parallel_cross_entropy(vocab_parallel_logits, target, label_smoothing=0.0)``, the
cross-entropy of Megatron-LM and NeMo training, on one tensor-parallel rank.

It takes logits with the classes last (``[*, V]``) and index targets of the batch shape, upcasts
them with ``.float()`` and returns the float32 loss per position: no class weights, no
``ignore_index`` (Megatron-LM masks the per-token loss with its own loss mask; a target outside
the vocabulary gets the log-sum-exp as its loss), no probability targets, no reduction (the
wrapper sums or averages the per-position losses, as a training loop over an unmasked batch
does). Its label smoothing is the ``'megatron'`` dialect (:data:`ce_conformance.cross_entropy.
SMOOTHING_DIALECT`): ``α`` spread over the other ``C - 1`` classes, so a torch case's ``ε`` is
passed as ``α = ε (C - 1) / C`` and a Megatron-dialect case's ``α`` as it is. The function
all-reduces over the tensor-parallel group, so the wrapper sets up a one-process gloo group (and
Megatron's model-parallel state) once per process: it runs on the CPU.
"""

from __future__ import annotations

from typing import Final

from .base import TORCH_FEATURES, Capabilities
from .library import LibraryAdapter

MEGATRON_CAPABILITIES: Final = Capabilities(features=TORCH_FEATURES | {"smoothing_dialect"}).without(
    "weights", "ignore_index", "ignore_index_in_range", "all_ignored", "probability_targets", "unnormalised_targets",
    "negative_smoothing", "legacy_reduction", "uint8_target", "invalid_input", "single_class")
"""What ``vocab_parallel_cross_entropy`` takes. Invalid calls are left out (it checks nothing of
torch's), and so is one class: its smoothing divides by ``C - 1``."""


def megatron_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                           smoothing_dialect=None):
    """Megatron-core's vocab_parallel_cross_entropy on one rank, with F.cross_entropy's keywords."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    if not dist.is_initialized():  # one rank, an in-memory store: the all-reduces are no-ops
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    classes = input.shape[0 if input.dim() == 1 else 1]
    logits = input.movedim(1, -1).contiguous() if input.dim() > 2 else input  # [*, V], as an LM head gives it
    alpha = label_smoothing if smoothing_dialect == "megatron" or not label_smoothing \
        else label_smoothing * (classes - 1) / classes  # torch's eps in Megatron's terms
    losses = vocab_parallel_cross_entropy(logits, target, alpha)
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses


def megatron_adapter() -> LibraryAdapter:
    return LibraryAdapter(megatron_cross_entropy, name="megatron", package="megatron",
                          distribution="megatron-core", extra="megatron", family="cross_entropy",
                          capabilities=MEGATRON_CAPABILITIES,
                          description="megatron.core.tensor_parallel.vocab_parallel_cross_entropy (one rank)")
