"""The reference for fused kernels' extension options (``logit_scale``, ``softcap``, ``z_loss``; see
:data:`ce_conformance.linear_cross_entropy.EXTENSION_OPTIONS`): their values, gradients and what
a correct kernel's arithmetic may cost on them, as pieces the family's reference composes.

Error model, in the terms of the family's (each a standard deviation, added in quadrature):

* logit_scale and softcap ``z' = c tanh(s z / c)``: the logits' own error is carried through the
  derivative ``d = s (1 - tanh^2(s z / c))``, and the transform adds its roundings (the product
  by ``s``; ``/ c``, ``tanh``, the product, and the logit materialised) of the transformed
  logit, in the dtype's unit: cut-cross-entropy caps bfloat16 logits in bfloat16. The chain
  rule's factor errs by the capped logit's error through ``2 t (1 - t^2) s / c`` and by its own
  roundings (``t^2`` and ``1 - t^2``, relative ``u`` each, cancelling where ``|t|`` is near 1:
  ``2 t^2 u`` absolute); a scale alone by its rounding to the compute precision.
* z-loss ``k lse^2`` per counted position: ``lse`` errs by the capped logits' error seen through
  ``p`` (the same ``p . dz`` as the loss) and by its own sum and logarithm in the compute
  precision; the term by ``2 k |lse|`` times that and two products' roundings. Its gradient
  ``2 k lse p_c`` by the relative errors of ``lse`` and of ``p_c`` (``exp`` of a rounded
  difference: ``u (2 + |z_c - lse|)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .outputs import lse_sigma


@dataclass(frozen=True)
class LogitTransform:
    """``z -> cap tanh(scale z / cap)`` (either part optional): the transformed logits, the chain
    rule's factor ``scale (1 - t^2)`` and their error scales (all in the logits' shape)."""

    values: np.ndarray
    derivative: np.ndarray
    tanh: np.ndarray | None
    scale: float
    cap: float | None

    @classmethod
    def of(cls, logits: np.ndarray, scale: float | None = None, cap: float | None = None) -> "LogitTransform":
        scale = 1.0 if scale is None else float(scale)
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = logits * scale
            if cap is None:
                return cls(scaled, np.full(np.shape(logits), scale), None, scale, None)
            t = np.tanh(scaled / cap)
            return cls(cap * t, scale * (1.0 - np.square(t)), t, scale, float(cap))

    @property
    def _roundings(self) -> int:
        """Roundings of a transformed logit: the product by the scale; ``/ cap``, ``tanh``, ``* cap``
        and the result materialised."""
        return (self.scale != 1.0) + (4 if self.cap is not None else 0)

    def logits_sigma(self, sigma: np.ndarray, u_t: float) -> np.ndarray:
        """The transformed logits' error from the raw logits' ``sigma`` and the transform's roundings."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.sqrt(np.square(self.derivative * sigma)
                           + self._roundings / 3 * u_t ** 2 * np.square(self.values))

    def gradient_sigma(self, grad_capped: np.ndarray, sigma_capped: np.ndarray, sigma_logits: np.ndarray,
                       u_t: float) -> np.ndarray:
        """The error of ``grad_capped * d`` (the gradient w.r.t. the raw logits) from the transformed
        logits' gradient's ``sigma_capped``, the factor's error and the product's rounding."""
        scale = abs(self.scale)
        with np.errstate(over="ignore", invalid="ignore"):
            if self.tanh is None:  # the scale, rounded to the compute precision
                sigma_d = np.full(np.shape(self.derivative), scale * u_t)
            else:
                t, slope = self.tanh, 1.0 - np.square(self.tanh)
                sigma_d = scale * np.sqrt(np.square(2 * np.abs(t) * slope * scale * sigma_logits / self.cap)
                                          + u_t ** 2 * (16 / 3 * np.square(np.square(t)) + np.square(slope)))
            grad = np.nan_to_num(grad_capped)
            return np.sqrt(np.square(self.derivative * sigma_capped) + np.square(grad * sigma_d)
                           + u_t ** 2 / 3 * np.square(grad * self.derivative))


@dataclass(frozen=True)
class ZLoss:
    """The z-loss of one case: its reduced value and error, its gradient (upstream one) w.r.t. the
    capped logits and that gradient's error, and the per-position coefficient of ``p`` it adds
    to the gradient (for the normaliser's shared error)."""

    loss: np.ndarray
    loss_scale: np.ndarray
    loss_sigma: np.ndarray
    grad: np.ndarray
    grad_sigma: np.ndarray
    p_coefficient: np.ndarray


def z_loss(coefficient: float, lse: np.ndarray, p: np.ndarray, counted: np.ndarray, reduction: str,
           lse_sigma: np.ndarray, lse_sigma_with_logits: np.ndarray, dlogp_sigma: np.ndarray, log_p: np.ndarray,
           class_axis: int, u_c: float) -> ZLoss:
    """``lse``, ``counted`` and the two sigmas of ``lse`` per position with the class axis kept
    (size 1): its own arithmetic's (for the loss, whose movement with the logits the caller
    adds through the whole gradient) and with the logits' error (for the gradient); ``p``,
    ``dlogp_sigma`` (the sigma of ``d log p_c``) and ``log_p`` per logit."""
    from .linear_cross_entropy import _sum_root_squared

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        term = np.where(counted, coefficient * np.square(lse), 0.0)
        term_sigma = np.where(counted, np.sqrt(np.square(2 * coefficient * np.abs(lse) * lse_sigma)
                                               + u_c ** 2 * np.square(term)), 0.0)
        terms, sigmas = np.squeeze(term, class_axis), np.squeeze(term_sigma, class_axis)
        count = int(np.count_nonzero(counted))
        if reduction == "none":
            value, sigma, per = terms, sigmas, np.ones_like(lse)
        else:
            total = terms.sum()
            rounding = u_c / math.sqrt(3) * math.sqrt(float(_sum_root_squared(np.square(terms).sum(), total,
                                                                              max(count, 1))))
            sigma = np.sqrt(np.square(sigmas).sum()) + rounding
            if reduction == "sum":
                value, per = total, np.ones_like(lse)
            else:
                value = total / count if count else np.float64("nan")
                sigma = sigma / count + u_c * abs(value) / math.sqrt(3) if count else np.float64(0.0)
                per = np.full_like(lse, 1.0 / count if count else 0.0)
        scale = np.abs(value)
        coefficient_of_p = np.where(counted, 2 * coefficient * lse * per, 0.0)
        grad = coefficient_of_p * p
        relative_p = np.hypot(dlogp_sigma, u_c * (2 + np.abs(np.nan_to_num(log_p))))
        grad_sigma = np.sqrt(np.square(2 * coefficient * per * p * lse_sigma_with_logits) * counted
                             + np.square(grad) * (np.square(relative_p) + u_c ** 2))
    return ZLoss(np.asarray(value, dtype=np.float64), np.asarray(scale, dtype=np.float64),
                 np.nan_to_num(np.asarray(sigma, dtype=np.float64), nan=0.0), np.nan_to_num(grad, nan=0.0),
                 np.nan_to_num(grad_sigma, nan=0.0), np.abs(np.nan_to_num(coefficient_of_p)))


def z_loss_output(zl: ZLoss, logits_sigma: np.ndarray, class_axis: int,
                  reduction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The returned z-loss (values, magnitude, sigma) before any normaliser: the z-loss term of the
    loss (a coefficient of 0 where the case has none: zeros, and NaN for a ``'mean'`` over no
    counted position, as the term's own division gives), its own arithmetic's error and the
    logits' error through its gradient, summed over the classes (and the positions, unless
    ``'none'``) as the loss's."""
    with np.errstate(over="ignore", invalid="ignore"):
        moved = np.square(zl.grad * logits_sigma)
        from_logits = np.sqrt(np.sum(moved, axis=class_axis) if reduction == "none" else np.sum(moved))
        sigma = np.nan_to_num(np.hypot(zl.loss_sigma, from_logits), nan=0.0)
    return np.asarray(zl.loss, dtype=np.float64), np.asarray(zl.loss_scale, dtype=np.float64), sigma
