"""ce-conformance: conformance suite and differential fuzzer for cross-entropy implementations.

The public building blocks, one home each: :class:`~ce_conformance.case.Case` (what is run),
:mod:`ce_conformance.reference` (what the answer is), :mod:`ce_conformance.strategies` (how cases are
drawn), :mod:`ce_conformance.tolerance` and :mod:`ce_conformance.compare` (how answers are judged),
:mod:`ce_conformance.findings` (how verdicts are tabulated) and :mod:`adapters` (what is tested).
"""

from ._version import __version__
from .case import Case, Tensor
from .errors import CaseFormatError, ConfigurationError, InvalidInputError, Rule

__all__ = ["Case", "Tensor", "Rule", "InvalidInputError", "CaseFormatError", "ConfigurationError", "__version__"]
