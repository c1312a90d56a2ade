"""Test-suite configuration: Hypothesis profile from CE_PROFILE (ci by default, nightly for long runs)."""

import os
import warnings

import pytest
from hypothesis import settings

import ce_conformance.profiles  # noqa: F401 - registers the ce-* profiles

PROFILE = os.environ.get("CE_PROFILE", "ci")
settings.load_profile(f"ce-{PROFILE}")
warnings.filterwarnings("ignore", message=".*size_average and reduce args will be deprecated.*")


def pytest_collection_modifyitems(config, items):
    if PROFILE == "nightly":
        return
    skip = pytest.mark.skip(reason="slow test: run with CE_PROFILE=nightly")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")
