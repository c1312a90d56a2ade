"""Quarantine: stop feeding an implementation the cases it hangs or crashes on.

Each timeout costs the full ``--timeout`` plus a worker restart, and a kernel that hangs on
every label-smoothing case would otherwise spend the whole run (and the CI job's own time
limit) re-discovering one bug. After :data:`QUARANTINE_AFTER` timeouts (or crashes) whose
cases share *traits* — their features plus their dtype — the run quarantines the shared traits
for that adapter: later cases that have all of them are skipped for it, recorded as skipped
with the reason, and the finding is reported once with its saved case. A later timeout outside
the quarantine that still shares traits with it broadens the quarantine to the common part, so
a first guess of ``{label_smoothing, dtype=float32}`` becomes ``{label_smoothing}`` at the
next float16 hang.

>>> q = Quarantine()
>>> q.observe("impl", "timeout", {"label_smoothing", "weights", "dtype=float32"})
>>> q.observe("impl", "timeout", {"label_smoothing", "k_dim", "dtype=float32"})
'timeout on dtype=float32, label_smoothing'
>>> q.blocks("impl", {"label_smoothing", "dtype=float32", "unbatched"})
'quarantined: timeout on dtype=float32, label_smoothing'
>>> q.observe("impl", "timeout", {"label_smoothing", "dtype=float16"})
'timeout on label_smoothing'
>>> q.blocks("impl", {"weights", "dtype=float16"}) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Iterable

QUARANTINE_AFTER: Final = 2
"""Timeouts (or crashes) sharing a trait before the shared traits are quarantined: one can be
chance (a machine stall), two with a common feature are a pattern."""

QUARANTINE_EVERYTHING_AFTER: Final = 6
"""Timeouts (or crashes) with no trait in common before the adapter is quarantined outright: it
hangs on everything, and each further case would only cost another timeout."""

STATUSES: Final = ("timeout", "crash")


def case_traits(features: Iterable[str], dtype: str) -> frozenset[str]:
    """What a quarantine can be about: a case's features and its dtype.

    >>> sorted(case_traits({"weights"}, "bfloat16"))
    ['dtype=bfloat16', 'weights']
    """
    return frozenset(features) | {f"dtype={dtype}"}


@dataclass
class _Signature:
    status: str
    traits: frozenset[str]
    hits: int = 0  # timeouts/crashes that formed or broadened it
    skipped: int = 0  # cases skipped because of it

    def describe(self) -> str:
        return f"{self.status} on {', '.join(sorted(self.traits)) if self.traits else 'every case'}"


@dataclass
class Quarantine:
    """Per adapter: timeouts/crashes not yet explained, and the quarantined trait sets."""

    after: int = QUARANTINE_AFTER
    pending: dict[tuple[str, str], list[frozenset[str]]] = field(default_factory=dict)
    signatures: dict[str, list[_Signature]] = field(default_factory=dict)

    def blocks(self, adapter: str, traits: Iterable[str]) -> str | None:
        """The skip reason when a case with ``traits`` is quarantined for ``adapter``."""
        traits = frozenset(traits)
        for signature in self.signatures.get(adapter, ()):
            if signature.traits <= traits:
                signature.skipped += 1
                return f"quarantined: {signature.describe()}"
        return None

    def observe(self, adapter: str, status: str, traits: Iterable[str]) -> str | None:
        """Record a timeout or crash; returns the description of a new or broadened quarantine."""
        if status not in STATUSES:
            return None
        traits = frozenset(traits)
        mine = [s for s in self.signatures.setdefault(adapter, []) if s.status == status]
        overlapping = [s for s in mine if s.traits & traits]
        if overlapping:  # broaden the closest quarantine to what both share
            closest = max(overlapping, key=lambda s: len(s.traits & traits))
            closest.traits &= traits
            closest.hits += 1
            return closest.describe()
        pending = self.pending.setdefault((adapter, status), [])
        others = sorted((p for p in pending if p & traits), key=lambda p: len(p & traits), reverse=True)
        group = others[:self.after - 1]
        common = traits.intersection(*group) if len(group) == self.after - 1 else frozenset()
        if common:  # the earlier ones sharing most with this one, and this one: a pattern
            for member in group:
                pending.remove(member)
            signature = _Signature(status, common, hits=self.after)
            self.signatures[adapter].append(signature)
            return signature.describe()
        pending.append(traits)
        if len(pending) >= QUARANTINE_EVERYTHING_AFTER:
            signature = _Signature(status, frozenset(), hits=len(pending))
            pending.clear()
            self.signatures[adapter].append(signature)
            return signature.describe()
        return None

    def summary(self) -> list[dict[str, object]]:
        """One row per quarantine: adapter, what it is about, timeouts that formed it, cases skipped."""
        return [{"adapter": adapter, "quarantine": s.describe(), "hits": s.hits, "skipped": s.skipped}
                for adapter, signatures in self.signatures.items() for s in signatures]
