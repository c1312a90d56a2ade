"""Time shares per scale cell, so that vocabulary-scale cases cannot eat a night.

Judging one N x 128256 case costs as much as thousands of small ones, and Hypothesis draws
sizes without knowing their price: left alone, a few vocabulary-scale draws take most of a
long run. A :class:`CellBudget` caps the share of exploration's judging time each scale cell
(the covering factor ``classes``: tiny, small, medium, vocab) may take. A drawn case whose
cell is over its share is *deferred*: not run, recorded as skipped with the reason, and
counted in the run's table of examples per cell (summary.md, report.html), so the mix a run
actually got is visible. The first :data:`WARMUP_SECONDS` of judging are free: short runs keep
Hypothesis's own mix, and every cell is reached before any is capped.

>>> budget = CellBudget({"vocab": 0.25}, warmup_seconds=1.0)
>>> budget.charge("small", 3.0); budget.charge("vocab", 1.5)
>>> budget.admits("vocab"), budget.admits("small")
(False, True)
"""

from __future__ import annotations

from collections import defaultdict
from typing import Final, Mapping

from .case import Case
from .covering import FACTORS, class_bucket
from .errors import ConfigurationError

SCALE_CELLS: Final = FACTORS["classes"]
NIGHTLY_SHARES: Final = {"vocab": 0.25, "medium": 0.35}
"""The nightly mix: vocabulary-scale cases at most a quarter of the judging time, medium ones
(256 to 31999 classes) at most a third; tiny and small cases take the rest and most examples."""

WARMUP_SECONDS: Final = 20.0
DEFER_REASON: Final = "cell budget"


def scale_cell(case: Case) -> str:
    """The scale cell of a case, valid or not (an invalid case still costs its size)."""
    return scale_of_shape(case.input.shape)


def scale_of_shape(shape: tuple[int, ...]) -> str:
    """The scale cell of an input shape: its class axis is the first of (C) and the second of
    (N, C, ...).

    >>> scale_of_shape((4, 128256)), scale_of_shape((300,))
    ('vocab', 'medium')
    """
    n_classes = shape[1] if len(shape) >= 2 else shape[0] if shape else 1
    return class_bucket(int(n_classes))


def parse_shares(items: list[str] | None) -> dict[str, float] | None:
    """``--cell-share CELL=FRACTION`` options (``none`` turns the budget off); None: the profile's.

    >>> parse_shares(["vocab=0.1", "medium=0.5"])
    {'vocab': 0.1, 'medium': 0.5}
    >>> parse_shares(["none"])
    {}
    """
    if not items:
        return None
    shares: dict[str, float] = {}
    for item in items:
        if item.strip().lower() == "none":
            return {}
        cell, _, fraction = item.partition("=")
        if cell not in SCALE_CELLS:
            raise ConfigurationError(f"--cell-share {item!r}: unknown cell {cell!r}; cells: {', '.join(SCALE_CELLS)}")
        try:
            value = float(fraction)
        except ValueError:
            raise ConfigurationError(f"--cell-share {item!r}: expected CELL=FRACTION, e.g. vocab=0.25") from None
        if not 0 < value <= 1:
            raise ConfigurationError(f"--cell-share {item!r}: the fraction must be in (0, 1]")
        shares[cell] = value
    return shares


class CellBudget:
    """Judging seconds per scale cell against each cell's maximal share of the total."""

    def __init__(self, shares: Mapping[str, float] | None, *, warmup_seconds: float = WARMUP_SECONDS):
        self.shares = dict(shares or {})
        self.warmup_seconds = warmup_seconds
        self.seconds: dict[str, float] = defaultdict(float)
        self.deferred: dict[str, int] = defaultdict(int)

    def admits(self, cell: str) -> bool:
        share = self.shares.get(cell)
        if share is None:
            return True
        total = sum(self.seconds.values())
        return self.seconds[cell] <= share * max(total, self.warmup_seconds)

    def charge(self, cell: str, seconds: float) -> None:
        self.seconds[cell] += seconds

    def defer(self, cell: str) -> str:
        """Count a deferral; the skip reason recorded for it."""
        self.deferred[cell] += 1
        return f"{DEFER_REASON}: {cell} over {self.shares[cell]:.0%} of judging time"
