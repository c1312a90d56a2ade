"""A loss family: what its cases hold, how they are described, judged and drawn.

Each family is a module that registers one :class:`LossFamily` (cross-entropy in
:mod:`ce_conformance.cross_entropy`, linear cross-entropy in
:mod:`ce_conformance.linear_cross_entropy`); the rest of the suite reads a case's family through
these hooks instead of branching on its name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .case import Case


@dataclass(frozen=True)
class LossFamily:
    """What a loss family's cases may hold, and how to describe them.

    ``features`` maps a case to the semantic features it exercises; adapters declare the
    features they support, and findings are tabulated by them.
    """

    name: str
    torch_function: str
    required_tensors: tuple[str, ...]
    optional_tensors: tuple[str, ...]
    option_defaults: Mapping[str, Any]
    features: Callable[["Case"], frozenset[str]]
    #: the JSON types an option may take where its default does not say (``ignore_index=None``
    #: that may be an int); other options take their default's type
    option_types: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    #: the shape of the logits a case's loss is taken over (a probability target has it)
    logits_shape: Callable[["Case"], tuple[int, ...]] = lambda case: case.tensors["input"].shape
    #: the family's reference: ``evaluate(case, gradients=...)`` and ``output_shape(case)`` (cross-entropy's
    #: own live in :mod:`ce_conformance.reference`, which every other family's builds on)
    evaluate: Callable[..., Any] | None = None
    output_shape: Callable[["Case"], tuple[int, ...]] | None = None
    #: gradients the family judges besides the input's and a probability target's, by tensor name
    parameter_gradients: tuple[str, ...] = ()
    #: features only this family's cases have (adapters of other families never claim them)
    own_features: tuple[str, ...] = ()
    #: explore and shrink's Hypothesis strategy, called with ``dtypes=, limits=, invalid_percent=,
    #: require=, plain=, exclude=`` (see :func:`ce_conformance.strategies.cross_entropy_cases`)
    strategy: Callable[..., Any] | None = None
    #: the covering phase's case for a covering-array row: ``covering_case(row, seed, max_elements=,
    #: max_vocab_rows=, distribution=)`` (see :func:`ce_conformance.covering.build_case`)
    covering_case: Callable[..., "Case"] | None = None
    #: features the family's strategy can put in every draw (``require=``; a pytest feature test needs one)
    requirable: frozenset[str] = frozenset()
    #: covering-array levels ``(factor, level)`` and combinations of them ``((f, v), (g, w))`` the
    #: family's calls cannot take (no legacy reduction in a newer signature)
    inapplicable_levels: frozenset[tuple] = frozenset()
    #: options that are not the torch function's (a library's extensions: softcap, z-loss), each
    #: off at its ``None`` default; off, a case neither stores nor passes them, so its file, its id
    #: and the call keep torch's signature
    extension_options: tuple[str, ...] = ()
    #: the features those options give a case; no adapter claims them unless it says so
    extension_features: tuple[str, ...] = ()

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return self.required_tensors + self.optional_tensors


FAMILIES: dict[str, LossFamily] = {}


def family_named(name: str) -> LossFamily:
    """The registered family of that name; an unknown one is a configuration error (``--family``).

    >>> family_named("linear_cross_entropy").torch_function
    'torch.nn.functional.linear_cross_entropy'
    """
    from .errors import ConfigurationError

    if name not in FAMILIES:
        raise ConfigurationError(f"unknown loss family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def register_family(family: LossFamily) -> LossFamily:
    """Make ``family`` known by name (case files, ``--family``); its module calls this on import."""
    FAMILIES[family.name] = family
    return family
