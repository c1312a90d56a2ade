"""Hypothesis settings profiles: ``dev`` (quick), ``ci`` (default) and ``nightly`` (long).

One place decides how hard the suite searches; tests, the CLI and the pytest plugin load a
profile by name instead of sprinkling ``max_examples`` around.

>>> settings_for("ci").max_examples
200
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from .strategies import SIZE_LIMITS, SizeLimits

PROFILES: Final = {"dev": 40, "ci": 200, "nightly": 5000}
COVERING_STRENGTHS: Final = {"dev": 2, "ci": 3, "nightly": 3}
"""Strength of each profile's covering phase: every pair (dev) or every triple of option values."""
DEFAULT_PROFILE: Final = "ci"
DATABASE_ENV: Final = "CE_CONFORMANCE_DB"

_SUPPRESSED = (HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
               HealthCheck.large_base_example, HealthCheck.function_scoped_fixture,
               HealthCheck.differing_executors)


def _register() -> None:
    for name, examples in PROFILES.items():
        settings.register_profile(f"ce-{name}", max_examples=examples, deadline=None,
                                  suppress_health_check=_SUPPRESSED, print_blob=False)


_register()


def settings_for(profile: str = DEFAULT_PROFILE, *, database_dir: str | Path | None = None,
                 max_examples: int | None = None) -> settings:
    """Settings of a named profile, optionally with a persistent example database directory."""
    if profile not in PROFILES:
        from .errors import ConfigurationError

        raise ConfigurationError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    base = settings.get_profile(f"ce-{profile}")
    database_dir = database_dir or os.environ.get(DATABASE_ENV)
    database = DirectoryBasedExampleDatabase(str(database_dir)) if database_dir else None
    return settings(base, database=database, max_examples=max_examples or base.max_examples)


def size_limits_for(profile: str) -> SizeLimits:
    return SIZE_LIMITS.get(profile, SIZE_LIMITS[DEFAULT_PROFILE])


def covering_strength_for(profile: str) -> int:
    return COVERING_STRENGTHS.get(profile, COVERING_STRENGTHS[DEFAULT_PROFILE])
