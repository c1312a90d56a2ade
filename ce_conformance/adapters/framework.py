"""Framework kinds: a loss written in PaddlePaddle, MLX, tinygrad, TensorFlow or Keras, judged
exactly as a torch function is.

A :class:`Bridge` knows one framework and nothing about losses: exact tensor conversion both
ways (bfloat16 included, through float32, which holds it exactly), the framework's own
reverse-mode autodiff (``paddle.grad``, ``mx.vjp``, tinygrad's ``Tensor.gradient``,
``tf.GradientTape``, ``jax.vjp``, ``torch.autograd.grad``), and the same tensors written in a
repro script. :class:`FrameworkAdapter` does the rest once for every framework: the call with
``F.cross_entropy``'s keywords, the class axis (``class_axis=-1`` moves it last, as most
frameworks want, and the gradients back), the upstream cotangent, the mutation check, and a
probe per dtype, so a framework that cannot run a dtype on this machine is a skip with its
reason rather than a page of errors.

>>> sorted(BRIDGES)
['keras', 'mlx', 'paddle', 'tensorflow', 'tinygrad']
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
from typing import Any, Callable, Final

import numpy as np

from ce_conformance.case import Case
from ce_conformance.dtypes import dtype_name, numpy_dtype

from ce_conformance.outputs import OUTPUT_OPTIONS

from .base import Adapter, Capabilities, Outcome, float64_copy, same_values

TORCH_ONLY_FEATURES: Final = frozenset({"legacy_reduction", *OUTPUT_OPTIONS})
"""Features only a torch call can express here: the legacy ``size_average``/``reduce`` arguments,
and outputs returned beside the loss (:mod:`ce_conformance.outputs`; a framework's ``vjp`` of a
tuple-valued function would need each one's aux convention). (A case's strided memory layout is
a torch view; other frameworks receive contiguous tensors holding the same values, so those
cases run as contiguous ones.)"""


class Bridge(abc.ABC):
    """One framework's tensors and autodiff, as the adapters need them."""

    kind: str = ""
    package: str = ""  # what must import
    extra: str = ""  # pip extra that installs it
    distributions: tuple[str, ...] = ()  # the pip distributions that provide it (default: the package's name)
    #: lines of a repro script that define ``tensor(blob, storage, dtype, shape)`` in the framework
    repro_prelude: tuple[str, ...] = ()
    #: lines that define ``gradient(f, x, upstream) -> (f(x), the vjp as float64 NumPy)`` with the
    #: framework's autodiff (``upstream``: the cotangent, or None for ones), for gradient findings
    repro_gradient: tuple[str, ...] = ()
    #: an expression turning the tensor ``{0}`` into NumPy (bfloat16 through float32), so a repro
    #: script prints values, not a lazy tensor's repr
    repro_value: str = "np.asarray({0})"

    def availability(self) -> str | None:
        """Installed or not, without importing it: the run asks in its own process, and two
        frameworks loaded into one process can crash it (Paddle after TensorFlow segfaults on
        import). A wheel that installs but cannot load here shows in the worker, as the dtype
        probe's skip reason."""
        if importlib.util.find_spec(self.package) is None:
            return f"{self.package} is not installed (pip install 'ce-conformance[{self.extra}]')"
        return None

    def module(self) -> Any:
        return importlib.import_module(self.package)

    def conflict(self) -> str | None:
        """Why this process cannot run the framework now although it is installed (None: it can)."""
        return None

    def versions(self) -> dict[str, str]:
        """From the installed distribution's metadata, for the same reason as :meth:`availability`."""
        from importlib.metadata import PackageNotFoundError, version

        for distribution in self.distributions or (self.package,):
            try:
                return {self.package: version(distribution)}
            except PackageNotFoundError:
                continue
        return {self.package: "?"}

    @abc.abstractmethod
    def tensor(self, values: np.ndarray, dtype: str) -> Any:
        """The framework's tensor holding ``values`` (already in ``dtype``) exactly."""

    @abc.abstractmethod
    def numpy(self, tensor: Any) -> np.ndarray:
        """A NumPy copy in the tensor's own dtype (bfloat16 as ``ml_dtypes.bfloat16``)."""

    @abc.abstractmethod
    def vjp(self, fn: Callable[..., Any], primals: list[Any]) -> tuple[Any, Callable[[np.ndarray], list[Any]]]:
        """``fn(*primals)`` and its pullback: NumPy cotangent -> a gradient per primal."""

    @abc.abstractmethod
    def move_axis(self, tensor: Any, source: int, destination: int) -> Any:
        ...

    def smoke(self, x: Any) -> Any:
        """A log-sum-exp in the framework's primitives: what the dtype probe differentiates for a
        user function (a built-in probes its own loss)."""
        return (x - x.max()).exp().sum().log()


def _staging(dtype: str) -> np.dtype:
    """How a dtype's values travel into a framework: bfloat16 as float32 (exact), the rest as is."""
    return np.dtype(np.float32) if dtype == "bfloat16" else numpy_dtype(dtype)


def _from_staging(array: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(array).astype(numpy_dtype(dtype)) if dtype == "bfloat16" else np.asarray(array)


def _bridge_classes() -> dict[str, Callable[[], Bridge]]:
    from .keras_adapter import KerasBridge
    from .mlx_adapter import MlxBridge
    from .paddle_adapter import PaddleBridge
    from .tensorflow_adapter import TensorFlowBridge
    from .tinygrad_adapter import TinygradBridge

    return {"paddle": PaddleBridge, "mlx": MlxBridge, "tinygrad": TinygradBridge, "tensorflow": TensorFlowBridge,
            "keras": KerasBridge}


BRIDGES: Final = ("paddle", "mlx", "tinygrad", "tensorflow", "keras")
"""The framework kinds beside ``torch``, ``jax`` and ``numpy``."""


def bridge_for(kind: str, **options: Any) -> Bridge:
    """The bridge of a framework kind (``keras`` takes ``backend=``, default ``$KERAS_BACKEND``;
    ``keras-jax`` names it)."""
    if kind.startswith("keras-"):
        kind, options = "keras", {**options, "backend": kind.removeprefix("keras-")}
    return _bridge_classes()[kind](**options)


class FrameworkAdapter(Adapter):
    """A cross-entropy written in another framework, called with ``F.cross_entropy``'s keywords
    (``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``) on that framework's
    tensors, and differentiated with that framework's autodiff.

    ``class_axis``: 1 (torch's layout, the default for ``--kind``) or -1 (classes last, as
    Paddle, MLX, TensorFlow, Keras and tinygrad's sparse loss expect): the adapter moves the
    class axis of the logits and of probability targets before the call and moves the gradients
    back, so the case and its verdict stay in torch's layout.
    """

    isolate_by_default = True  # foreign runtimes: thread pools, aborts, hangs stay in a worker

    def __init__(self, fn: Callable[..., Any], bridge: Bridge, *, name: str, class_axis: int = 1,
                 capabilities: Capabilities | None = None, description: str = "", probe_loss: bool = False,
                 source: str | None = None):
        """``probe_loss``: probe each dtype with ``fn`` itself (a framework's own loss) instead of
        the bridge's primitives (a user function: its own failures are findings, not skips).
        ``source``: the function's code for repro scripts (a built-in's, in the framework's API)."""
        if class_axis not in (1, -1):
            raise ValueError(f"class_axis must be 1 or -1, got {class_axis}")
        self.fn = fn
        self.bridge = bridge
        self.name = name
        self.class_axis = class_axis
        self.probe_loss = probe_loss
        self.source = source
        caps = capabilities or Capabilities()
        self.capabilities = caps.without(*TORCH_ONLY_FEATURES)
        self.description = description or f"{bridge.kind} function"
        self._dtype_reasons: dict[str, str | None] = {}

    def availability(self) -> str | None:
        return self.bridge.availability()

    def versions(self) -> dict[str, str]:
        return self.bridge.versions()

    @property
    def framework(self) -> str:  # type: ignore[override]
        return self.bridge.package

    # -- the call -------------------------------------------------------------------------------
    def _to_call_layout(self, values: np.ndarray) -> np.ndarray:
        return values if self.class_axis == 1 or values.ndim < 2 else np.moveaxis(values, 1, -1)

    def _from_call_layout(self, tensor: Any) -> Any:
        shape_rank = len(tuple(getattr(tensor, "shape", ())))
        return tensor if self.class_axis == 1 or shape_rank < 2 else self.bridge.move_axis(tensor, -1, 1)

    def _tensors(self, case: Case) -> tuple[list[Any], Callable[..., Any], list[tuple[np.ndarray, Any]]]:
        """The primals (the logits, and probability targets when their gradient is checked), the
        call taking them, and each array handed over beside its tensor (for the mutation check)."""
        bridge = self.bridge
        (x_np, t_np), kwargs = case.arguments()
        x_call = self._to_call_layout(x_np)
        t_call = self._to_call_layout(t_np) if case.is_probability_target else t_np
        x = bridge.tensor(x_call, case.dtype)
        t = bridge.tensor(t_call, case.target_dtype)
        weight_np = kwargs.pop("weight")
        weight = None if weight_np is None else bridge.tensor(weight_np, dtype_name(weight_np.dtype))
        handed = [x_call, t_call] + ([] if weight_np is None else [weight_np])
        tensors = [x, t] + ([] if weight is None else [weight])
        differentiate_target = case.is_probability_target and self.capabilities.target_gradients

        def call(*primals: Any) -> Any:
            target = primals[1] if differentiate_target else t
            return self.fn(primals[0], target, weight=weight, **kwargs)

        return ([x, t] if differentiate_target else [x]), call, list(zip(handed, tensors))

    def dtype_reason(self, dtype: str) -> str | None:
        """Why this framework cannot run ``dtype`` here (None when it can), probed once."""
        if dtype not in self._dtype_reasons:
            self._dtype_reasons[dtype] = self._probe(dtype)
        return self._dtype_reasons[dtype]

    def _probe(self, dtype: str) -> str | None:
        if self.bridge.availability() is not None or self.bridge.conflict() is not None:
            return None
        values = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]]).astype(numpy_dtype(dtype))
        try:
            if self.probe_loss:
                probe_case = Case.cross_entropy(values, np.array([0, 2]), dtype=dtype)
                primals, call, _ = self._tensors(probe_case)
            else:
                primals, call = [self.bridge.tensor(values, dtype)], self.bridge.smoke
            loss, pullback = self.bridge.vjp(call, primals)
            self.bridge.numpy(loss)
            for grad in pullback(np.ones(np.shape(self.bridge.numpy(loss)), numpy_dtype(dtype))):
                self.bridge.numpy(grad)
        except Exception as exc:
            message = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            # one reason per skip: the tables join several with commas
            return f"{self.bridge.kind} cannot run {dtype} here ({type(exc).__name__}: {message})".replace(",", ";")
        return None

    def run(self, case: Case) -> Outcome:
        if reason := self.bridge.conflict():
            return Outcome.skipped(reason)
        if case.is_valid and (reason := self.dtype_reason(case.dtype)):
            return Outcome.skipped(reason)
        bridge = self.bridge
        primals, call, handed = self._tensors(case)
        try:
            loss, pullback = bridge.vjp(call, primals)
            loss_np = bridge.numpy(loss)
        except Exception as exc:
            return Outcome.failed(exc, "forward", mutated=self._mutated(handed))
        outcome = Outcome(loss=float64_copy(loss_np), loss_dtype=dtype_name(loss_np.dtype),
                          loss_shape=tuple(loss_np.shape))
        if case.is_valid and self.capabilities.gradients:
            upstream = case.grad_output if case.grad_output is not None else np.ones(loss_np.shape)
            if np.shape(upstream) != loss_np.shape:  # torch's upstream gradient has torch's loss shape
                outcome.status, outcome.mutated = "error", self._mutated(handed)
                outcome.error = Outcome.failed(ValueError(
                    f"the upstream gradient of shape {tuple(np.shape(upstream))} (torch's loss shape) cannot be "
                    f"applied to a loss of shape {tuple(loss_np.shape)}"), "backward").error
                return outcome
            try:
                cotangent = np.asarray(upstream).astype(loss_np.dtype)
                grads = [None if g is None else bridge.numpy(self._from_call_layout(g)) for g in pullback(cotangent)]
            except Exception as exc:
                outcome.status, outcome.error = "error", Outcome.failed(exc, "backward").error
                outcome.mutated = self._mutated(handed)
                return outcome
            for name, grad in zip(("input", "target"), grads):
                if grad is None:  # no gradient flowed: the framework says zero, torch gives zeros
                    grad = np.zeros(case.input.shape, numpy_dtype(case.dtype))
                setattr(outcome, f"grad_{name}", float64_copy(grad))
                setattr(outcome, f"grad_{name}_dtype", dtype_name(grad.dtype))
                if name == "input":
                    outcome.grad_input_shape = tuple(grad.shape)
        outcome.mutated = self._mutated(handed)
        return outcome

    def _mutated(self, handed: list[tuple[np.ndarray, Any]]) -> tuple[str, ...]:
        """The arguments whose framework tensors no longer hold what was handed over."""
        names = ("input", "target", "weight")
        changed = []
        for name, (original, tensor) in zip(names, handed):
            try:
                now = self.bridge.numpy(tensor)
            except Exception:
                continue
            if not same_values(now, original):
                changed.append(name)
        return tuple(changed)


def builtin_adapter(fn: Callable[..., Any], kind: str, *, name: str, description: str, capabilities: Capabilities,
                    class_axis: int = -1, **bridge_options: Any) -> FrameworkAdapter:
    """A framework's own cross-entropy (``fn`` maps ``F.cross_entropy``'s keywords onto its API);
    its source goes into repro scripts, so they need only that framework."""
    import inspect

    return FrameworkAdapter(fn, bridge_for(kind, **bridge_options), name=name, class_axis=class_axis,
                            capabilities=capabilities, description=description, probe_loss=True,
                            source=inspect.getsource(fn))


__all__ = ["Bridge", "FrameworkAdapter", "BRIDGES", "bridge_for", "builtin_adapter", "TORCH_ONLY_FEATURES"]
