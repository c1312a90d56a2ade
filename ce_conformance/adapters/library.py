"""Kernel libraries' losses on torch tensors: a library's function called through a small
wrapper that takes its family's torch signature (``F.cross_entropy``, ``F.linear_cross_entropy``)
and maps the case's options onto the library's own calling convention.

The wrapper is all an adapter adds: it translates, the comparison decides. What the library does
not take (class weights, smoothing, probability targets, a bias...) is left out of its
:class:`~ce_conformance.adapters.base.Capabilities`, so those cases are skipped with the reason
rather than failed; what it takes but computes differently (a float32 loss for bfloat16 logits,
filtered gradients) is reported as findings, the known ones explained by the library's shipped
baseline (``baselines/<distribution>-<major>.<minor>-<device>.toml``). Triton paths need a CUDA
GPU and say so where there is none.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any, Callable

from ce_conformance.case import Case

from .base import Capabilities, Outcome
from .torch_adapter import TorchAdapter, lift_recompile_limit


class LibraryAdapter(TorchAdapter):
    """A library's loss behind ``wrapper`` (its family's torch signature). ``package`` is the
    import name, ``distribution`` the name pip installs (also the adapter's framework, which picks
    the shipped baseline by version), ``extra`` the ce-conformance extra that installs it. The
    wrapper's source is what the repro script of a finding calls, so a library maintainer can
    run it without ce-conformance."""

    def __init__(self, wrapper: Callable[..., Any], *, name: str, package: str, distribution: str, extra: str,
                 family: str, capabilities: Capabilities, description: str, device: str = "cpu",
                 compiled: bool = False):
        """``compiled``: the library calls ``torch.compile`` itself. A training loop calls it with
        one configuration; the gate calls it with every dtype x reduction x option, each a
        recompilation, so the adapter lifts dynamo's per-function recompile limit (8) in its
        worker process rather than report the limit as the library's error."""
        super().__init__(wrapper, name=name, device=device, capabilities=capabilities, family=family,
                         description=description)
        self.compiled = compiled
        self.framework = self.distribution = distribution
        self.package = package
        self.extra = extra
        self.source = inspect.getsource(wrapper)  # (isolated in a worker process, as every function adapter)

    def availability(self) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'ce-conformance[torch]')"
        if importlib.util.find_spec(self.package) is None:
            return f"{self.distribution} is not installed (pip install 'ce-conformance[{self.extra}]')"
        reason = super().availability()
        if reason and self.device != "cpu":
            return f"{self.description} runs Triton kernels on a GPU: {reason}"
        return reason

    def run(self, case: Case) -> Outcome:
        if self.compiled:
            lift_recompile_limit()
        return super().run(case)

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            own = version(self.distribution)
        except PackageNotFoundError:  # not installed (availability says so), or a source tree on the path
            if importlib.util.find_spec(self.package) is None:
                return super().versions()
            own = str(getattr(importlib.import_module(self.package), "__version__", "unknown"))
        return {**super().versions(), self.distribution: own}


__all__ = ["LibraryAdapter"]
