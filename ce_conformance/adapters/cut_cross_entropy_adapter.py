"""Apple's cut-cross-entropy (``pip install cut-cross-entropy``): ``linear_cross_entropy(e, c,
targets, ignore_index=-100, softcap=None, reduction='mean', shift=False, filter_eps='high',
impl=...)``, the fused linear cross-entropy that never materialises the logits, judged as
torch's ``F.linear_cross_entropy(input=e, linear_weight=c, target=targets)``.

Two implementations behind one function: ``impl='torch_compile'`` (``e @ c.T``, the logits upcast
with ``.float()``, ``F.cross_entropy`` under ``torch.compile``; runs on the CPU) and ``impl='cce'``
(its Triton kernels; a CUDA GPU), the latter with the library's default gradient filter
(``filter_eps='high'``: gradient blocks whose softmax stays below the dtype's eps / 32 are
skipped). The library takes ``(..., H)`` inputs with index targets of the batch shape and a
``softcap`` (the ``softcap`` extension of the family); no class
weights, no label smoothing, no bias, no probability targets and no K-dim head of torch's kind;
those cases are skipped. ``ignore_index=None`` (torch's "-100") is passed as -100.
"""

from __future__ import annotations

from typing import Final

from .base import TORCH_FEATURES, Capabilities
from .library import LibraryAdapter

CUT_CROSS_ENTROPY_CAPABILITIES: Final = Capabilities(features=TORCH_FEATURES | {"softcap"},
                                                     families=frozenset({"linear_cross_entropy"})).without(
    "weights", "label_smoothing", "negative_smoothing", "probability_targets", "unnormalised_targets", "k_dim",
    "unbatched", "linear_bias", "legacy_reduction", "uint8_target", "invalid_input")
"""What ``cut_cross_entropy.linear_cross_entropy`` takes, its ``softcap`` included. Invalid calls
are left out: it checks shapes with bare ``assert`` statements, not torch's errors."""


def cut_cross_entropy_torch_compile(input, linear_weight, target, *, linear_bias=None, weight=None,
                                    reduction="mean", ignore_index=None, label_smoothing=0.0, softcap=None):
    """cut-cross-entropy's torch.compile implementation with F.linear_cross_entropy's keywords."""
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(input, linear_weight, target, ignore_index=-100 if ignore_index is None else ignore_index,
                                softcap=softcap, reduction=reduction, impl="torch_compile")


def cut_cross_entropy_triton(input, linear_weight, target, *, linear_bias=None, weight=None,
                             reduction="mean", ignore_index=None, label_smoothing=0.0, softcap=None):
    """cut-cross-entropy's Triton kernels (impl='cce', its default gradient filter) with
    F.linear_cross_entropy's keywords."""
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(input, linear_weight, target, ignore_index=-100 if ignore_index is None else ignore_index,
                                softcap=softcap, reduction=reduction, impl="cce")


def torch_compile_adapter() -> LibraryAdapter:
    return LibraryAdapter(cut_cross_entropy_torch_compile, name="cut-cross-entropy", package="cut_cross_entropy",
                          distribution="cut-cross-entropy", extra="cut-cross-entropy", family="linear_cross_entropy",
                          capabilities=CUT_CROSS_ENTROPY_CAPABILITIES, compiled=True,
                          description="cut_cross_entropy.linear_cross_entropy(impl='torch_compile')")


def triton_adapter() -> LibraryAdapter:
    return LibraryAdapter(cut_cross_entropy_triton, name="cut-cross-entropy-cce", package="cut_cross_entropy",
                          distribution="cut-cross-entropy", extra="cut-cross-entropy", family="linear_cross_entropy",
                          capabilities=CUT_CROSS_ENTROPY_CAPABILITIES, device="cuda",
                          description="cut_cross_entropy.linear_cross_entropy(impl='cce')")
