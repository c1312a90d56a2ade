"""Typed errors: the input rules torch enforces, and the suite's own configuration errors.

Two families live here because both are *about what was passed in*:

* :class:`InvalidInputError` — raised by the reference when a call breaks one of torch's
  argument rules. Its ``rule`` says which, so an adapter's error (torch's RuntimeError, a JAX
  ValueError, a user's custom exception) can be classified with :func:`classify_error` and
  compared by rule, not by message text.
* :class:`ConfigurationError` and :class:`CaseFormatError` — bad input to the tool itself
  (unknown adapter, malformed case file). The CLI turns them into exit code 2.

>>> classify_error("IndexError", "Target 7 is out of bounds.")
<Rule.TARGET_OUT_OF_BOUNDS: 'target_out_of_bounds'>
"""

from __future__ import annotations

import enum
import re


class Rule(str, enum.Enum):
    """One argument rule of ``torch.nn.functional.cross_entropy``."""

    REDUCTION_VALUE = "reduction_value"
    INPUT_SHAPE = "input_shape"
    INPUT_DTYPE = "input_dtype"
    TARGET_DTYPE = "target_dtype"
    TARGET_SHAPE = "target_shape"
    WEIGHT_SHAPE = "weight_shape"
    LABEL_SMOOTHING_RANGE = "label_smoothing_range"
    IGNORE_INDEX_WITH_PROBABILITIES = "ignore_index_with_probabilities"
    TARGET_OUT_OF_BOUNDS = "target_out_of_bounds"


class InvalidInputError(ValueError):
    """A call that torch refuses. ``rule`` names the broken rule; the message mimics torch's."""

    def __init__(self, rule: Rule, message: str):
        super().__init__(message)
        self.rule = rule

    def __reduce__(self):  # keep picklable across worker processes
        return (type(self), (self.rule, str(self)))


class ConfigurationError(Exception):
    """Bad input to the tool (unknown adapter, unimportable --impl, bad option): exit code 2."""


class CaseFormatError(ConfigurationError):
    """A case or baseline file that cannot be trusted. ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None):
        where = f"{path}: " if path else ""
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}{what}{message}")
        self.field = field
        self.path = path


# Message patterns of torch (CPU and CUDA), JAX/NumPy ports and common hand-written kernels.
# Ordered: the first match wins, so more specific patterns come first.
_PATTERNS: tuple[tuple[Rule, re.Pattern[str]], ...] = tuple(
    (rule, re.compile(pattern, re.IGNORECASE))
    for rule, pattern in [
        (Rule.REDUCTION_VALUE, r"not a valid value for reduction|invalid reduction|unknown reduction"),
        (Rule.IGNORE_INDEX_WITH_PROBABILITIES, r"ignore_index is not supported|ignore.index.*(probabilit|floating)"),
        (Rule.LABEL_SMOOTHING_RANGE, r"label_smoothing must be|label.smoothing.*(range|between)"),
        # linear_cross_entropy's projection checks name the weight but are about the input's shape
        (Rule.INPUT_SHAPE, r"requires batched input|expected input with dimensionality|"
                           r"last dimensions \(in_features\)|expected linear_bias shape"),
        (Rule.WEIGHT_SHAPE, r"weight tensor should be defined|weight.*(size|shape|classes)"),
        (Rule.TARGET_OUT_OF_BOUNDS, r"out of bounds|out of range.*target|target.*out of range|"
                                    r"device-side assert|index .* is out of bounds|t >= 0 && t < n_classes"),
        # CUDA names the dispatch of the target's dtype: "nll_loss_forward_reduce_cuda_kernel_1d_index"
        (Rule.TARGET_DTYPE, r"_index\"? not implemented for"),
        (Rule.INPUT_DTYPE, r"not implemented for '(Long|Int|Short|Char|Byte|Bool)'|"
                           r"input.*(must be|should be|expected).*float"),
        (Rule.TARGET_DTYPE, r"expected target dtype|Expected floating point type for target|"
                            r"target.*dtype|expected scalar type Long"),
        (Rule.TARGET_SHAPE, r"batch_size|target tensor expected|target size|target must have size|"
                            r"size mismatch|Expected target|target.*shape|shape.*target"),
        (Rule.INPUT_SHAPE, r"Dimension (specified|out of range)|Expected 1 or more dimensions|input.*dim"),
    ]
)


def classify_error(type_name: str, message: str) -> Rule | None:
    """Map an exception (by type name and message) to the rule it reports, or None if unknown."""
    for rule, pattern in _PATTERNS:
        if pattern.search(message):
            return rule
    return None
