"""NumPy adapters: the reference itself (a sanity baseline for the whole pipeline), and user
functions with the signature of ``F.cross_entropy`` on NumPy arrays (``--kind numpy``, forward
only: NumPy has no autodiff)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ce_conformance import reference
from ce_conformance.case import Case
from ce_conformance.dtypes import dtype_name, round_to
from ce_conformance.outputs import requested, split_result

from .base import Adapter, Capabilities, Outcome, float64_copy, same_values


class NumpyAdapter(Adapter):
    """Calls ``fn(input, target, weight=..., ...)`` on NumPy arrays in the case's dtypes."""

    framework = "numpy"

    def __init__(self, fn: Callable[..., Any] | None = None, *, name: str = "numpy",
                 capabilities: Capabilities | None = None, description: str = ""):
        self._fn = fn
        self.name = name
        self.isolate_by_default = fn is not None
        default_caps = Capabilities() if fn is None else Capabilities(gradients=False, target_gradients=False)
        self.capabilities = capabilities or default_caps
        self.description = description or ("the float64 reference (conformance.reference), output cast to the "
                                            "input dtype" if fn is None else "")

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__}

    def run(self, case: Case) -> Outcome:
        args, kwargs = case.arguments()
        snapshots = [a.copy() for a in args] + ([kwargs["weight"].copy()] if kwargs["weight"] is not None else [])

        def mutated() -> tuple[str, ...]:
            now = list(args) + ([kwargs["weight"]] if kwargs["weight"] is not None else [])
            names = ["input", "target", "weight"]
            return tuple(names[i] for i, (a, b) in enumerate(zip(now, snapshots)) if not same_values(a, b))

        if self._fn is not None:
            try:
                loss, returned = split_result(self._fn(*args, **kwargs), requested(case.options))
                loss = np.asarray(loss)
            except Exception as exc:
                return Outcome.failed(exc, "forward", mutated=mutated())
            outputs = {name: np.asarray(value) for name, value in returned.items()}
            return Outcome(loss=float64_copy(loss), loss_dtype=dtype_name(loss.dtype), loss_shape=loss.shape,
                           outputs={name: float64_copy(value) for name, value in outputs.items()},
                           output_dtypes={name: dtype_name(value.dtype) for name, value in outputs.items()},
                           mutated=mutated())
        try:
            result = reference.evaluate(case, gradients=self.capabilities.gradients)
        except reference.InvalidInputError as exc:
            return Outcome.failed(exc, "forward")
        cast = lambda values: round_to(values, case.dtype)  # noqa: E731 - the torch output contract
        outcome = Outcome(loss=cast(result.loss), loss_dtype=result.output_dtype, loss_shape=result.output_shape)
        if result.grad_input is not None:
            outcome.grad_input = cast(result.grad_input)
            outcome.grad_input_dtype = case.dtype
            outcome.grad_input_shape = result.grad_input.shape
        if result.grad_target is not None:
            outcome.grad_target = cast(result.grad_target)
            outcome.grad_target_dtype = case.dtype
        outcome.mutated = mutated()
        return outcome
