"""Cross-entropy kernels that run only on a CUDA GPU: flash-attn's Triton cross-entropy, quack's
CuTe-DSL cross-entropy and chunked linear cross-entropy, and TransformerEngine's
``parallel_cross_entropy``. Each is called through a small wrapper with its family's torch
signature that maps the case onto the library's own convention and nothing else (as
:mod:`ce_conformance.adapters.liger_adapter` does for Liger-Kernel); where there is no GPU, or
the package is not installed, the adapter is listed as unavailable with the reason.

Calling conventions (read from each library's source, 2026-08):

* **flash-attn** ``flash_attn.losses.cross_entropy.CrossEntropyLoss(ignore_index=-100,
  reduction='mean', label_smoothing=0.0, logit_scale=1.0, lse_square_scale=0.0, ...)`` on
  ``(batch, vocab)`` logits and ``(batch,)`` labels, CUDA tensors only; losses in float32,
  ``'mean'`` by the counted labels; no class weights. Its ``logit_scale`` and
  ``lse_square_scale`` (z-loss) stay at 1 and 0: they are the linear family's extensions, and
  flash-attn has no linear head.
* **quack** (``pip install quack-kernels``) ``quack.cross_entropy.cross_entropy(x, target,
  lse_partial=None, weight=None, ignore_index=-100, reduction='mean')`` on ``(M, N)`` logits:
  class weights, no smoothing; the log-sum-exp per row, where a case asks for it (``return_lse``),
  from its forward ``cross_entropy_fwd(x, target, weight=..., ignore_index=..., return_lse=True)``
  (float32, not differentiable); ``quack.linear_cross_entropy.chunked_linear_cross_entropy(x,
  weight, target, chunk_size=4096, ignore_index=-100, reduction='mean')``: ``(B*L, d)`` inputs, a
  ``(V, d)`` head, no bias, no class weights, ``'mean'`` or ``'sum'``.
* **TransformerEngine** ``transformer_engine.pytorch.cross_entropy.parallel_cross_entropy(inp,
  target, label_smoothing=0.0, reduce_loss=False, dist_process_group=None, ignore_idx=-100)`` on
  ``(B, SQ, V)`` logits with the classes last: bfloat16 or float32, a float32 loss,
  ``reduce_loss=True`` the mean over the counted positions (``'mean'``), else per position
  (``'none'``); no ``'sum'``, no class weights.
"""

from __future__ import annotations

from typing import Final

from .base import TORCH_FEATURES, Capabilities
from .library import LibraryAdapter

_INDEX_ONLY: Final = ("probability_targets", "unnormalised_targets", "legacy_reduction", "uint8_target",
                      "negative_smoothing", "invalid_input")
"""What none of them takes; invalid calls are left out (they check arguments with asserts, or not at all)."""

FLASH_ATTN_CAPABILITIES: Final = Capabilities(features=TORCH_FEATURES).without(
    *_INDEX_ONLY, "weights", "k_dim", "unbatched")
QUACK_CAPABILITIES: Final = Capabilities(features=TORCH_FEATURES | {"return_lse"}).without(
    *_INDEX_ONLY, "label_smoothing", "k_dim", "unbatched")
QUACK_LINEAR_CAPABILITIES: Final = Capabilities(
    features=TORCH_FEATURES, families=frozenset({"linear_cross_entropy"}),
    reductions=frozenset({"mean", "sum"})).without(*_INDEX_ONLY, "label_smoothing", "weights", "linear_bias",
                                                   "k_dim", "unbatched")
TRANSFORMER_ENGINE_CAPABILITIES: Final = Capabilities(
    features=TORCH_FEATURES, dtypes=frozenset({"bfloat16", "float32"}),
    reductions=frozenset({"mean", "none"})).without(*_INDEX_ONLY, "weights", "unbatched")


def flash_attn_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """flash-attn's CrossEntropyLoss with F.cross_entropy's keywords."""
    from flash_attn.losses.cross_entropy import CrossEntropyLoss

    return CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)(
        input, target)


def quack_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                        return_lse=False):
    """quack's cross_entropy with F.cross_entropy's keywords; ``(loss, lse)`` with ``return_lse``,
    the lse from its forward function (the autograd one keeps it to itself)."""
    from quack.cross_entropy import cross_entropy, cross_entropy_fwd

    loss = cross_entropy(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction)
    if not return_lse:
        return loss
    _, lse = cross_entropy_fwd(input.detach(), target, weight=weight, ignore_index=ignore_index, return_lse=True)
    return loss, lse


def quack_chunked_linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                                       reduction="mean", ignore_index=None, label_smoothing=0.0):
    """quack's chunked_linear_cross_entropy with F.linear_cross_entropy's keywords."""
    from quack.linear_cross_entropy import chunked_linear_cross_entropy

    return chunked_linear_cross_entropy(input, linear_weight, target,
                                        ignore_index=-100 if ignore_index is None else ignore_index,
                                        reduction=reduction)


def transformer_engine_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                                     label_smoothing=0.0):
    """TransformerEngine's parallel_cross_entropy with F.cross_entropy's keywords: the logits'
    positions (rows, and K-dim positions) as one sequence of a batch of one, classes last."""
    from transformer_engine.pytorch.cross_entropy import parallel_cross_entropy

    classes = input.shape[1]
    logits = input.movedim(1, -1).reshape(1, -1, classes).contiguous()
    loss = parallel_cross_entropy(logits, target.reshape(1, -1), label_smoothing=label_smoothing,
                                  reduce_loss=reduction == "mean", ignore_idx=ignore_index)
    return loss if reduction == "mean" else loss.reshape(target.shape)


def flash_attn_adapter() -> LibraryAdapter:
    return LibraryAdapter(flash_attn_cross_entropy, name="flash-attn", package="flash_attn", distribution="flash-attn",
                          extra="flash-attn", family="cross_entropy", capabilities=FLASH_ATTN_CAPABILITIES,
                          device="cuda", description="flash_attn.losses.cross_entropy.CrossEntropyLoss")


def quack_adapter() -> LibraryAdapter:
    return LibraryAdapter(quack_cross_entropy, name="quack", package="quack", distribution="quack-kernels",
                          extra="quack", family="cross_entropy", capabilities=QUACK_CAPABILITIES, device="cuda",
                          description="quack.cross_entropy.cross_entropy")


def quack_linear_adapter() -> LibraryAdapter:
    return LibraryAdapter(quack_chunked_linear_cross_entropy, name="quack-linear", package="quack",
                          distribution="quack-kernels", extra="quack", family="linear_cross_entropy",
                          capabilities=QUACK_LINEAR_CAPABILITIES, device="cuda",
                          description="quack.linear_cross_entropy.chunked_linear_cross_entropy")


def transformer_engine_adapter() -> LibraryAdapter:
    return LibraryAdapter(transformer_engine_cross_entropy, name="transformer-engine", package="transformer_engine",
                          distribution="transformer-engine", extra="transformer-engine", family="cross_entropy",
                          capabilities=TRANSFORMER_ENGINE_CAPABILITIES, device="cuda",
                          description="transformer_engine.pytorch.cross_entropy.parallel_cross_entropy")
