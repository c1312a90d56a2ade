"""The one adapter interface: translate a Case into a backend call, report raw facts back.

Adapters never judge. They return an :class:`Outcome` — the loss and gradients as exact
NumPy float values (float64, or float32 for float32 and half outputs) with the dtype and shape
the backend produced, whether the caller's arrays were
mutated, or the error raised — and :mod:`ce_conformance.compare` decides what is wrong.

A new backend is a subclass of :class:`Adapter` with ``name``, ``capabilities`` and ``run``;
third-party packages register factories under the entry-point group
``ce_conformance.adapters``.
"""

from __future__ import annotations

import abc
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np

from ce_conformance.case import Case, all_features, extension_features
from ce_conformance.dtypes import FLOAT_DTYPES
from ce_conformance.errors import classify_error

ALL_FEATURES: Final = all_features()
EXTENSION_FEATURES: Final = extension_features()
TORCH_FEATURES: Final = ALL_FEATURES - EXTENSION_FEATURES
"""What torch's own functions take: every feature but the libraries' extensions."""


@dataclass(frozen=True)
class Capabilities:
    """What an adapter claims to implement; cases needing anything else are skipped, not failed.

    >>> Capabilities(features=frozenset({"weights"})).missing(Case.cross_entropy([[0.0, 1.0]], [1], weight=[1, 1]))
    ()
    """

    dtypes: frozenset[str] = frozenset(FLOAT_DTYPES)
    features: frozenset[str] = TORCH_FEATURES
    gradients: bool = True
    target_gradients: bool = True
    families: frozenset[str] = frozenset({"cross_entropy"})
    #: the reductions it computes (a library helper may have no 'none')
    reductions: frozenset[str] = frozenset({"mean", "sum", "none"})

    def missing(self, case: Case) -> tuple[str, ...]:
        """Why this adapter cannot run the case (empty when it can)."""
        if case.family not in self.families:
            return (f"family:{case.family}",)
        reasons = []
        if case.is_valid and case.dtype not in self.dtypes:
            reasons.append(f"dtype:{case.dtype}")
        reasons.extend(sorted(f for f in case.features - self.features))
        reduction = case.options.get("reduction", "mean")
        if case.is_valid and reduction not in self.reductions:  # an invalid one is the call under test
            reasons.append(f"reduction:{reduction}")
        return tuple(reasons)

    def without(self, *features: str) -> "Capabilities":
        return replace(self, features=self.features - set(features))


@dataclass(frozen=True)
class RaisedError:
    """An exception as plain data, so it survives a trip through a worker process."""

    type: str
    message: str
    stage: str  # "forward", "backward" or "setup"
    rule: str | None = None
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException, stage: str) -> "RaisedError":
        rule = getattr(exc, "rule", None)
        rule = rule.value if rule is not None else None
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else "(no message)"
        if rule is None:
            classified = classify_error(type(exc).__name__, str(exc))
            rule = classified.value if classified else None
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
        return cls(type(exc).__name__, message[:500], stage, rule, tb[-4000:])


@dataclass
class Outcome:
    """What one adapter produced for one case. Arrays hold the backend's output values exactly,
    as float64, or as float32 where that holds them (float32 and half-precision outputs)."""

    status: str = "ok"  # ok | error | crash | timeout | skipped
    loss: np.ndarray | None = None
    loss_dtype: str | None = None
    loss_shape: tuple[int, ...] | None = None
    grad_input: np.ndarray | None = None
    grad_input_dtype: str | None = None
    grad_input_shape: tuple[int, ...] | None = None
    grad_target: np.ndarray | None = None
    grad_target_dtype: str | None = None
    parameter_gradients: dict[str, np.ndarray] = field(default_factory=dict)  # a family's parameters, by tensor name
    parameter_gradient_dtypes: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # returned beside the loss (ce_conformance.outputs)
    output_dtypes: dict[str, str] = field(default_factory=dict)
    mutated: tuple[str, ...] = ()
    error: RaisedError | None = None
    skip_reason: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, exc: BaseException, stage: str, **partial: Any) -> "Outcome":
        return cls(status="error", error=RaisedError.from_exception(exc, stage), **partial)

    @classmethod
    def skipped(cls, reason: str) -> "Outcome":
        return cls(status="skipped", skip_reason=reason)


class Adapter(abc.ABC):
    """A backend under test. Subclasses set ``name`` and ``capabilities`` and implement ``run``."""

    name: str = "adapter"
    description: str = ""
    #: the framework whose semantics it runs (torch, jax, paddle...): a report's matrix groups by it,
    #: and its installed version picks the shipped baseline (ce_conformance.ecosystem)
    framework: str = ""
    capabilities: Capabilities = Capabilities()
    #: Whether the runner should isolate this adapter in a worker process by default.
    isolate_by_default: bool = False
    #: How a worker process rebuilds this adapter (see conformance.isolation); None: pickle it.
    recipe: tuple | None = None
    #: The extra facts it can report about one call beyond ``run`` (see :meth:`probe`):
    #: ``"backward_twice"`` differentiates the same graph a second time, the second gradients in
    #: ``Outcome.extra["second_backward"]`` (a kernel that writes into a tensor autograd saved
    #: for backward returns other ones).
    probes: frozenset[str] = frozenset()

    def availability(self) -> str | None:
        """None when usable here, else a human-readable reason (missing package, no GPU...)."""
        return None

    @abc.abstractmethod
    def run(self, case: Case) -> Outcome:
        """Run the case (forward and, if supported, backward); never raise for backend errors."""

    def probe(self, case: Case, name: str) -> Outcome:
        """``run`` with the probe ``name`` (one of :attr:`probes`): the same outcome, plus what
        the probe saw in ``Outcome.extra``."""
        raise NotImplementedError(f"{self.name} has no probe {name!r}")

    def timed_run(self, case: Case, probe: str | None = None) -> Outcome:
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # backend deprecation chatter is not a finding
                warnings.simplefilter("ignore")
                outcome = self.run(case) if probe is None else self.probe(case, probe)
        except Exception as exc:  # an adapter bug still becomes an outcome, never a lost run
            outcome = Outcome.failed(exc, "setup")
        outcome.seconds = time.perf_counter() - start
        return outcome

    def versions(self) -> dict[str, str]:
        """Versions of the backend packages, for reports."""
        return {}

    def describe(self) -> dict[str, Any]:
        caps = self.capabilities
        reason = self.availability()
        return {
            "adapter": self.name,
            "families": ",".join(sorted(caps.families)),
            "available": reason is None,
            "reason": reason or "",
            "dtypes": ",".join(d for d in FLOAT_DTYPES if d in caps.dtypes),
            "gradients": caps.gradients,
            "target_gradients": caps.target_gradients,
            "unsupported": ",".join(sorted(ALL_FEATURES - caps.features)
                                    + [f"reduction:{r}" for r in ("mean", "sum", "none") if r not in caps.reductions]),
            "description": self.description,
            "framework": self.framework,
            "version": self._framework_version() if reason is None else "",
        }

    def _framework_version(self) -> str:
        if not self.framework:
            return ""
        try:
            return str(self.versions().get(self.framework, ""))
        except Exception:  # a report line, never a reason to fail
            return ""


def float64_copy(array: Any) -> np.ndarray:
    """A float64 NumPy copy of any array-like (bfloat16 included)."""
    return np.array(np.asarray(array), dtype=np.float64, copy=True)


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality of two snapshots in their own dtype (NaN payloads included), used for
    mutation checks: any change to the caller's memory is a change."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.itemsize in (1, 2, 4, 8) and a.dtype.kind in "fVbiu" or a.dtype.kind == "V":
        unsigned = np.dtype(f"u{a.dtype.itemsize}")
        return bool(np.array_equal(np.ascontiguousarray(a).view(unsigned), np.ascontiguousarray(b).view(unsigned)))
    return bool(np.array_equal(a, b))


SPLITMIX64: Final = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
"""splitmix64's increment and its finaliser's two multipliers (Steele, Lea, Flood 2014): the
constants of :func:`fingerprint`, which its numba kernel (``_adapter_kernels``) reads from here."""
_GAMMA, _MIX1, _MIX2 = SPLITMIX64


def fingerprint(bits: np.ndarray, *, engine_only: bool = False) -> int | None:
    """A 64-bit fingerprint of an integer array (a tensor's raw bits, as integers of its width):
    the wrapping sum over the flat index ``i`` of splitmix64's finaliser of ``bits[i] + i * gamma``,
    each element sign-extended to 64 bits. Taken of an input before and after the call under
    test, it shows a mutation by reading the input alone (at vocabulary scale a third of a
    comparison with the case's float64 values): the finaliser is a bijection, so any one changed
    element always changes it; several change it but for a chance of about 2^-64 that the changes
    cancel. With ``engine_only``, None where the numba engine is not in use (this NumPy body is
    the kernel's specification, several times slower).

    >>> bits = np.arange(6, dtype=np.int32)
    >>> changed = bits.copy(); changed[4] = -1
    >>> fingerprint(bits) == fingerprint(bits.copy()), fingerprint(bits) == fingerprint(changed)
    (True, False)
    """
    from ce_conformance import engine

    flat = np.ascontiguousarray(bits).reshape(-1)
    if engine.available():
        kernel, threads = engine.kernel("fingerprint", flat.size)
        return int(kernel(flat, threads))
    if engine_only:
        return None
    with np.errstate(over="ignore"):
        z = flat.astype(np.int64).view(np.uint64) + np.arange(flat.size, dtype=np.uint64) * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return int(np.sum(z ^ (z >> np.uint64(31)), dtype=np.uint64))
