"""Meta-tests: the suite must pass on any CPU, whichever way libm rounds its last bit.

``log``, ``log1p``, ``exp`` and ``expm1`` are correctly rounded on some machines and one ulp
off (either way) on others (SIMD paths, other libm builds). These tests re-run the numeric
doctests and the reference's accuracy checks with NumPy's transcendental functions nudged one
ulp down and one ulp up, so that no test or doctest can depend on one machine's last bit.
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from ce_conformance import reference
from ce_conformance.case import Case

from . import test_reference

NUDGED = ("log", "log1p", "exp", "expm1")
PLAIN = {name: getattr(np, name) for name in NUDGED}  # this machine's, before any test nudges them
NUMERIC_MODULES = ("ce_conformance.reference", "ce_conformance.tolerance", "ce_conformance.dtypes",
                   "ce_conformance.case", "ce_conformance.compare")


def _nudged(function, direction: float):
    def nudge(*args, **kwargs):
        result = function(*args, **kwargs)
        array = np.asarray(result)
        if array.dtype.kind != "f":
            return result
        moved = np.where(np.isfinite(array) & (array != 0), np.nextafter(array, direction * np.inf), array)
        return moved if isinstance(result, np.ndarray) else array.dtype.type(moved)
    return nudge


@pytest.fixture(params=[-1.0, 1.0], ids=["one_ulp_low", "one_ulp_high"])
def nudged_libm(request, monkeypatch):
    direction = request.param
    for name in NUDGED:
        monkeypatch.setattr(np, name, _nudged(getattr(np, name), direction))
    for name in ("exp", "log1p", "expm1"):
        monkeypatch.setattr(reference._Float64, name, staticmethod(getattr(np, name)))
    return direction


def test_nudge_really_moves_log1p(nudged_libm):
    plain = PLAIN["log1p"](2.0)  # log(3): correctly rounded (1.0986122886681098) or, here and there, an ulp off
    assert abs(plain - 1.0986122886681098) <= np.spacing(plain)
    assert np.log1p(2.0) == np.nextafter(plain, nudged_libm * np.inf)
    assert reference._Float64.log1p(np.array([2.0]))[0] == np.nextafter(plain, nudged_libm * np.inf)


@pytest.mark.parametrize("module", NUMERIC_MODULES)
def test_doctests_pass_with_either_neighbour(nudged_libm, module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) of {module} depend on libm's last bit"


@pytest.mark.parametrize("option", sorted(test_reference.OPTIONS))
@pytest.mark.parametrize("name", sorted(test_reference.EXTREME_INPUTS))
def test_reference_ulp_promise_holds_with_either_neighbour(nudged_libm, name, option):
    """The float64 path stays within its promised EXACT_MODE_ULPS of the 60-digit path (mpmath is not nudged)."""
    test_reference.test_float64_reference_within_12_ulps_of_mpmath(name, option)


def test_comparison_passes_torch_like_result_with_either_neighbour(nudged_libm):
    """A result one libm ulp away from the reference is never a finding."""
    from ce_conformance.adapters.base import Capabilities, Outcome
    from ce_conformance.compare import compare

    case = Case.cross_entropy(np.zeros((2, 3)), [0, 1], dtype="float64", reduction="sum")
    ref = reference.evaluate(case)
    loss = np.nextafter(ref.loss, -nudged_libm * np.inf)  # the other neighbour
    grad = ref.grad_input.copy()
    outcome = Outcome(loss=loss, loss_dtype="float64", loss_shape=(), grad_input=grad,
                      grad_input_dtype="float64", grad_input_shape=grad.shape)
    assert compare(case, outcome, ref, Capabilities()).passed
