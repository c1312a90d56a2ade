"""Outputs a fused kernel returns beside the loss: the per-position log-sum-exp and the z-loss.

Kernels hand them back for logging or for a later stage (quack's ``cross_entropy_fwd(...,
return_lse=True)``, flash-attn's ``cross_entropy_loss`` -> ``(losses, z_losses)``, Liger-Kernel's
``return_z_loss=True``). A case asks for them with a flag option (``return_lse=True``,
``return_z_loss=True``, off by default: a case without them neither stores nor passes them), and
the call then returns a tuple: the loss first, then each requested output in the order of
:data:`OUTPUT_OPTIONS`. Each is judged like the loss (:func:`ce_conformance.compare.compare`:
``<name>_value``, ``_nonfinite``, ``_missing``, ``_dtype``, ``_shape``).

* ``lse`` — per position (the shape of a ``'none'`` loss), ignored positions included, the
  log-sum-exp of the logits the loss is taken over (after ``logit_scale`` and ``softcap``), with
  ``torch.logsumexp``'s rules for non-finite rows (``+inf`` where some logit is ``+inf``).
* ``z_loss`` — the z-loss's share of the returned loss, reduced like it (per position for
  ``'none'``, ``0`` at ignored ones; ``'mean'`` by the counted positions; divided by the
  ``normalizer``), ``0`` where the case has no ``z_loss`` coefficient.

Their dtype is the compute precision (float32 for half-precision inputs, as every library that
returns them) or the input's own; the budget is in units of the dtype returned. None of these
libraries differentiates through them (flash-attn marks its ``z_losses`` non-differentiable,
quack's lse comes from a forward-only function, Liger-Kernel's backward drops the second
upstream gradient), so the gradients checked are the loss's: asking for an output must leave
them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Mapping

import numpy as np

from .dtypes import compute_dtype
from .errors import CaseFormatError

@dataclass(frozen=True)
class Expectation:
    """The reference for one array beside the loss and the input's gradient (a returned output, a
    linear head's parameter gradient): values, their magnitudes (the unit's scale) and sigma."""

    values: np.ndarray
    scale: np.ndarray
    sigma: np.ndarray


OUTPUT_OPTIONS: Final = {"return_lse": "lse", "return_z_loss": "z_loss"}
"""Each flag option and the output it adds to the call's result, in the order they follow the loss."""


def checked_flag(name: str, value: Any) -> bool | None:
    """A flag option as stored: ``True``, or ``None`` for off (``False`` is off, so a case that says
    ``return_lse=False`` is the case without it, with the same id).

    >>> checked_flag("return_lse", False) is None, checked_flag("return_lse", True)
    (True, True)
    """
    if value is None or value is False:
        return None
    if value is True:
        return True
    raise ValueError(f"{name} is a flag: True, or False / None for off; got {value!r}")


def check_output_options(options: Mapping[str, Any]) -> None:
    """:func:`checked_flag` on a case read from a file: a non-flag value is a
    :class:`~ce_conformance.errors.CaseFormatError` of that option."""
    for name in OUTPUT_OPTIONS:
        if options.get(name) not in (None, True):
            raise CaseFormatError(f"{name} is a flag: true, or null for off; got {options.get(name)!r}",
                                  field=f"options.{name}")


def requested(options: Mapping[str, Any]) -> tuple[str, ...]:
    """The outputs a call with these options returns after the loss, in order.

    >>> requested({"return_z_loss": True, "return_lse": True})
    ('lse', 'z_loss')
    """
    return tuple(output for option, output in OUTPUT_OPTIONS.items() if options.get(option))


def accepted_dtypes(dtype: str) -> tuple[str, ...]:
    """The dtypes an output may come in for inputs of ``dtype``: the compute precision or the
    input's own (libraries differ; each is judged in the unit of the dtype it returns).

    >>> accepted_dtypes("bfloat16")
    ('float32', 'bfloat16')
    """
    return tuple(dict.fromkeys((compute_dtype(dtype), dtype)))


def split_result(result: Any, names: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """The loss and the named outputs of a call that returned ``(loss, *outputs)`` (or the loss
    alone where ``names`` is empty); a result of another arity raises a :class:`TypeError` that
    says what was expected, as the call's own error would.

    >>> split_result((1.0, 2.0), ("lse",))
    (1.0, {'lse': 2.0})
    """
    if not names:
        return result, {}
    if not isinstance(result, (tuple, list)) or len(result) != 1 + len(names):
        got = f"{len(result)} values" if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
        raise TypeError(f"the case asks for {', '.join(names)}: expected (loss, {', '.join(names)}), got {got}")
    return result[0], dict(zip(names, result[1:]))


def lse_sigma(mixed: np.ndarray, lse: np.ndarray, normaliser: np.ndarray, root: np.ndarray, u_c: float) -> np.ndarray:
    """The log-sum-exp's error per position: the capped logits' error through ``p`` (``mixed``),
    the exp sum's relative error (``root / normaliser``, :func:`ce_conformance.summation.summation_root`),
    the logarithm's and the maximum's addition."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return np.nan_to_num(np.sqrt(np.square(mixed) + u_c ** 2 / 3 * (np.square(root / normaliser)
                                                                          + 2 * np.square(lse) + 1)), nan=0.0)


def lse_output(z_max: np.ndarray, normaliser: np.ndarray, mixed: np.ndarray, root: np.ndarray,
               class_axis: int, u_c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The returned log-sum-exp per position (:mod:`ce_conformance.outputs`), from the row maximum
    and the exp sum ``normaliser`` the caller formed: values with ``torch.logsumexp``'s rules for
    non-finite rows (an infinite maximum is not subtracted: a ``+inf`` logit gives ``+inf``, all
    ``-inf`` gives ``-inf``, a NaN NaN), their magnitude (the largest of ``|lse|``, ``|max|`` and
    ``log S``: each rounding's unit) and sigma (:func:`lse_sigma`: the logits' error through ``p``,
    the exp sum's, the log's, the addition's)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        log_sum = np.log(normaliser)
        values = np.squeeze(np.where(np.isinf(z_max), z_max, z_max + log_sum), class_axis)
        lse = np.nan_to_num(z_max + log_sum, nan=0.0, posinf=0.0, neginf=0.0)
        scale = np.maximum(np.abs(lse), np.maximum(np.abs(np.nan_to_num(z_max)), np.abs(np.nan_to_num(log_sum))))
        sigma = lse_sigma(mixed, lse, normaliser, root, u_c)
    return values, np.squeeze(scale, class_axis), np.squeeze(sigma, class_axis)
