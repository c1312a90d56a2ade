"""What a run covers and what fails it: ``--features``, ``--dtypes`` and ``--checks`` lists.

One grammar for all three, so a kernel author learns it once: comma-separated names, the
keywords ``all`` and ``default``, and ``-name`` to take one away. A list that starts with a
subtraction starts from the default. Unknown names are refused with the valid ones listed.

>>> sorted(parse_checks("default,-errors"))
['contract', 'gradients', 'mutation', 'split', 'values']
>>> parse_dtypes("bfloat16,float32")
('bfloat16', 'float32')
>>> "invalid_input" in parse_features("default,-invalid_input")
False
"""

from __future__ import annotations

from typing import Final, Iterable

from .case import all_features, extension_features
from .dtypes import FLOAT_DTYPES
from .errors import ConfigurationError

DEFAULT_EXCLUDED_FEATURES: Final = frozenset({"legacy_reduction", "uint8_target", "negative_smoothing"})
"""Corners most kernels do not claim (deprecated ``size_average``/``reduce``, uint8 targets,
negative smoothing): ``default`` leaves them out, ``all`` takes them in."""

CHECK_FAMILY_NAMES: Final = ("errors", "contract", "values", "gradients", "mutation", "split", "determinism")
"""Check families, in report order (:data:`ce_conformance.compare.CHECK_FAMILIES` maps checks to them)."""

DEFAULT_CHECKS: Final = frozenset(CHECK_FAMILY_NAMES) - {"determinism"}
"""What fails a run unless told otherwise: every family but ``determinism`` (two runs of one call
giving different bits is reported, and gates only with ``--deterministic`` or ``all``)."""


def parse_selection(text: str | Iterable[str] | None, *, universe: Iterable[str], default: Iterable[str],
                    option: str, everything: Iterable[str] | None = None) -> frozenset[str]:
    """Resolve a selection list against ``universe``; ``None`` or empty means ``default``, ``all``
    means ``everything`` (default: the universe; names outside it are taken only by name).

    >>> sorted(parse_selection("-b", universe="abc", default="ab", option="--letters"))
    ['a']
    >>> parse_selection("a,x", universe="abc", default="a", option="--letters")
    Traceback (most recent call last):
    ...
    ce_conformance.errors.ConfigurationError: --letters: unknown name(s) 'x'; valid: a, b, c, all, default
    """
    universe, default = tuple(universe), frozenset(default)
    everything = frozenset(universe if everything is None else everything)
    tokens = [t.strip() for t in (text.split(",") if isinstance(text, str) else (text or ())) if t.strip()]
    if not tokens:
        return default
    unknown = [t for t in tokens if t.lstrip("-") not in (*universe, "all", "default")]
    if unknown:
        raise ConfigurationError(f"{option}: unknown name(s) {', '.join(repr(u) for u in unknown)}; "
                                 f"valid: {', '.join((*universe, 'all', 'default'))}")
    chosen: set[str] = set(default) if tokens[0].startswith("-") else set()
    for token in tokens:
        name = token.lstrip("-")
        names = set(everything) if name == "all" else set(default) if name == "default" else {name}
        if token.startswith("-"):
            chosen -= names
        else:
            chosen |= names
    if not chosen:
        raise ConfigurationError(f"{option} {','.join(tokens)!r} selects nothing")
    return frozenset(chosen)


def parse_features(text: str | Iterable[str] | None) -> frozenset[str]:
    """Features an implementation claims: ``default`` (everything but the rare corners), ``all``
    (every feature of torch's functions), names, ``-name`` to subtract. A library's extensions
    (``logit_scale``, ``softcap``, ``z_loss``) only by name: a kernel with torch's signature has no such keyword.

    >>> sorted(parse_features("weights,ignore_index"))
    ['ignore_index', 'weights']
    >>> "softcap" in parse_features("all"), "softcap" in parse_features("default,softcap")
    (False, True)
    """
    universe = sorted(all_features())  # every family's: a linear kernel may claim linear_bias
    torch_features = frozenset(universe) - extension_features()
    return parse_selection(text, universe=universe, default=torch_features - DEFAULT_EXCLUDED_FEATURES,
                           option="--features", everything=torch_features)


def parse_dtypes(text: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Dtypes a run draws cases in, in the suite's order; ``None`` (all) when not given.

    >>> parse_dtypes("-float64")
    ('float16', 'bfloat16', 'float32')
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    chosen = parse_selection(text, universe=FLOAT_DTYPES, default=FLOAT_DTYPES, option="--dtypes")
    return tuple(d for d in FLOAT_DTYPES if d in chosen)


def parse_checks(text: str | Iterable[str] | None) -> frozenset[str]:
    """Check families that fail a gate (the others are still run and reported); by default
    :data:`DEFAULT_CHECKS`.

    >>> sorted(parse_checks("values,gradients"))
    ['gradients', 'values']
    >>> "determinism" in parse_checks(None), "determinism" in parse_checks("all")
    (False, True)
    """
    return parse_selection(text, universe=CHECK_FAMILY_NAMES, default=DEFAULT_CHECKS, option="--checks")
