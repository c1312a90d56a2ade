"""Saved-tensor safety: differentiating the same graph twice must give the same gradients.

Fused kernels save memory by computing the gradient in the forward pass and keeping it, or by
writing gradients over a buffer they saved for backward (Liger-Kernel's fused linear
cross-entropy scales its stored gradients in place by ``grad_output``). Done through torch
operations, autograd's version counters catch the write at the next backward ("one of the
variables needed for gradient computation has been modified by an inplace operation"); done
through a Triton or CUDA kernel, nothing does, and a second backward over the retained graph
(several losses sharing one graph, gradient penalties, a debugging re-run) silently returns
other gradients. A single call checked against the reference cannot see it: the first backward
is right.

So where an adapter can (``"backward_twice"`` in its
:attr:`~ce_conformance.adapters.base.Adapter.probes`: every torch adapter), the runner's second
run of a case (:data:`ce_conformance.determinism.REPEATED_PHASES`, or every case with
``--deterministic``) differentiates it twice with ``retain_graph=True``, and this module
compares the two. The ``saved_tensor_modified`` check belongs to the ``mutation`` family: it
fails a run by default. A second backward that raises is a finding only where autograd's version
counter raised (a kernel that frees its buffers after the first backward is a contract choice,
not a corruption).

>>> import numpy as np
>>> from ce_conformance.adapters.base import Outcome
>>> outcome = Outcome(loss=np.array(0.5, dtype=np.float32), loss_dtype="float32",
...                   grad_input=np.array([0.25, -0.25], dtype=np.float32), grad_input_dtype="float32")
>>> outcome.extra["second_backward"] = {"input": np.array([0.25, -0.25], dtype=np.float32)}
>>> second_backward_verdict(outcome) is None
True
>>> outcome.extra["second_backward"] = {"input": np.array([0.5, -0.5], dtype=np.float32)}
>>> print(second_backward_verdict(outcome).message)
a second backward over the same graph (retain_graph=True) gives other gradients: grad_input in 2 of 2 element(s), most at [0]: 0.25 then 0.5 (4.19e+06 float32 ulp apart)
"""

from __future__ import annotations

import re
from typing import Any, Final

import numpy as np

from ce_conformance.adapters.base import Outcome, same_values

from .compare import Verdict
from .determinism import value_difference

CHECK: Final = "saved_tensor_modified"  # of the "mutation" family (ce_conformance.compare.CHECK_FAMILIES)
PROBE: Final = "backward_twice"
_VERSION_COUNTER = re.compile(r"modified by an inplace operation")


def probe_for(adapter: Any, case: Any) -> str | None:
    """The probe the runner's second run of ``case`` asks of ``adapter``: a second backward
    where the adapter can make one and the case has gradients to compare."""
    wanted = PROBE in getattr(adapter, "probes", ()) and case.is_valid and adapter.capabilities.gradients
    return PROBE if wanted else None


def _first_gradients(outcome: Outcome) -> dict[str, tuple[np.ndarray | None, str | None]]:
    """The first backward's gradients by leaf name (``input``, ``target``, a family's parameters)."""
    return {"input": (outcome.grad_input, outcome.grad_input_dtype),
            "target": (outcome.grad_target, outcome.grad_target_dtype),
            **{name: (value, outcome.parameter_gradient_dtypes.get(name))
               for name, value in outcome.parameter_gradients.items()}}


def second_backward_verdict(outcome: Outcome) -> Verdict | None:
    """A ``saved_tensor_modified`` verdict where ``outcome`` (a ``backward_twice`` probe) holds a
    second backward whose gradients differ in any bit from the first, or that autograd's version
    counter refused; None otherwise."""
    if outcome.status != "ok":
        return None
    error = outcome.extra.get("second_backward_error")
    if error is not None:
        if not _VERSION_COUNTER.search(error.message):
            return None
        return Verdict(CHECK, f"a second backward over the same graph (retain_graph=True) raised {error.type}: "
                              f"{error.message} (autograd's version counter: the kernel wrote into a tensor it "
                              f"saved for backward)")
    first = _first_gradients(outcome)
    for name, again in sorted(outcome.extra.get("second_backward", {}).items()):
        value, dtype = first.get(name, (None, None))
        if value is None:
            return Verdict(CHECK, f"a second backward over the same graph (retain_graph=True) returned grad_{name}, "
                                  f"the first none")
        again = np.asarray(again)
        if same_values(np.asarray(value), again):
            continue
        if np.shape(value) != again.shape:
            return Verdict(CHECK, f"a second backward over the same graph (retain_graph=True) returned grad_{name} of "
                                  f"shape {list(again.shape)}, the first {list(np.shape(value))}")
        return value_difference(f"grad_{name}", np.asarray(value), again, dtype or str(again.dtype), check=CHECK,
                              what="a second backward over the same graph (retain_graph=True) gives other gradients")
    return None
