"""The tool's own processes reuse freed memory (ce_conformance.allocator): page faults, not time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys
import numpy as np
from ce_conformance.allocator import keep_freed_memory
applied = keep_freed_memory()
faults = []
for _ in range(3):  # a 256 MiB array written, freed, and allocated again: the reference's gradient
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(1 << 25)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(**env: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                            env={**os.environ, **env}, timeout=120)
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_large_array_is_reused_without_new_page_faults():
    kept = _probe()
    if not kept["applied"]:
        pytest.skip("this C library is not glibc: keep_freed_memory does nothing here")
    fresh = _probe(CE_KEEP_FREED_MEMORY="0")
    assert fresh["applied"] is False
    # without it every allocation maps new pages (65536 of 4 KiB, 128 where they are 2 MiB huge pages);
    # with it the second and third allocations reuse the pages the first one mapped
    assert min(fresh["faults"][1:]) >= 1
    assert 10 * max(kept["faults"][1:]) < min(fresh["faults"][1:]), (kept, fresh)


def test_it_is_never_applied_on_import():
    # the pytest plugin and the library API run in the user's process: its allocator is theirs
    code = ("import ce_conformance, ce_conformance.reference, ce_conformance.pytest_plugin;"
            "import ce_conformance.allocator as a; print(a._applied)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "None"
