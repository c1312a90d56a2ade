"""LinkedIn's Liger-Kernel (``pip install liger-kernel``): its Triton cross-entropy and fused linear
cross-entropy, as ``LigerCrossEntropyLoss`` and ``LigerFusedLinearCrossEntropyLoss`` compute them,
through the functional forms ``liger_kernel.transformers.functional.liger_cross_entropy(input,
target, weight, ignore_index=..., reduction=..., label_smoothing=...)`` and
``liger_fused_linear_cross_entropy(input, weight, target, bias, ce_weight, ignore_index, ...)``.

Both take ``(BT, V)`` logits (``(BT, H)`` hidden states) with index targets: class weights, an
``ignore_index``, label smoothing, every reduction and (fused) a bias; no probability targets, no
K-dim and no unbatched inputs. The fused one takes the family's ``softcap`` and ``z_loss``
extensions too (``lse_square_scale``), and returns the z-loss where the case asks
(``return_z_loss``: Liger's ``CrossEntropyOutput.z_loss``, a ``(loss, z_loss)`` tuple in older
releases); the cross-entropy family has none. The kernels are Triton's: a CUDA GPU, else skipped
with the reason.
"""

from __future__ import annotations

from typing import Final

from .base import TORCH_FEATURES, Capabilities
from .library import LibraryAdapter

_NOT_TAKEN: Final = ("probability_targets", "unnormalised_targets", "k_dim", "unbatched", "legacy_reduction",
                     "uint8_target", "negative_smoothing", "invalid_input")
"""Invalid calls are left out: Liger checks its arguments with bare ``assert`` statements."""

LIGER_CAPABILITIES: Final = Capabilities(features=TORCH_FEATURES).without(*_NOT_TAKEN)
LIGER_LINEAR_CAPABILITIES: Final = Capabilities(features=TORCH_FEATURES | {"softcap", "z_loss", "return_z_loss"},
                                                families=frozenset({"linear_cross_entropy"})).without(*_NOT_TAKEN)


def liger_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Liger-Kernel's cross-entropy with F.cross_entropy's keywords."""
    from liger_kernel.transformers.functional import liger_cross_entropy

    return liger_cross_entropy(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)


def liger_fused_linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                                     reduction="mean", ignore_index=None, label_smoothing=0.0, softcap=None,
                                     z_loss=None, return_z_loss=False):
    """Liger-Kernel's fused linear cross-entropy with F.linear_cross_entropy's keywords (the
    family's z_loss is Liger's lse_square_scale); ``(loss, z_loss)`` with ``return_z_loss``."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    extra = {"return_z_loss": True} if return_z_loss else {}
    out = liger_fused_linear_cross_entropy(input, linear_weight, target, bias=linear_bias, ce_weight=weight,
                                           ignore_index=-100 if ignore_index is None else ignore_index,
                                           lse_square_scale=z_loss or 0.0, label_smoothing=label_smoothing,
                                           reduction=reduction, softcap=softcap, **extra)
    if not return_z_loss or isinstance(out, tuple):
        return out
    return out.loss, out.z_loss


def cross_entropy_adapter() -> LibraryAdapter:
    return LibraryAdapter(liger_cross_entropy, name="liger", package="liger_kernel", distribution="liger-kernel",
                          extra="liger", family="cross_entropy", capabilities=LIGER_CAPABILITIES, device="cuda",
                          description="liger_kernel LigerCrossEntropyLoss (liger_cross_entropy)")


def fused_linear_adapter() -> LibraryAdapter:
    return LibraryAdapter(liger_fused_linear_cross_entropy, name="liger-linear", package="liger_kernel",
                          distribution="liger-kernel", extra="liger", family="linear_cross_entropy",
                          capabilities=LIGER_LINEAR_CAPABILITIES, device="cuda",
                          description="liger_kernel LigerFusedLinearCrossEntropyLoss "
                                      "(liger_fused_linear_cross_entropy)")
