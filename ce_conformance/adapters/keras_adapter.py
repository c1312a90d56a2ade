"""Keras 3: ``--kind keras`` functions and Keras's own losses, on each of its backends.

Keras picks its backend once per process, when it is first imported (``KERAS_BACKEND``: jax,
torch or tensorflow), and has no autodiff of its own: a Keras loss is differentiated with its
backend's (``jax.vjp``, ``torch.autograd.grad``, ``tf.GradientTape``). :class:`KerasBridge`
therefore sets the backend before importing Keras and delegates tensors and gradients to that
backend's bridge; adapters on different backends each run in their own worker process.

Built-ins: ``SparseCategoricalCrossentropy(from_logits=True)`` (index targets, ``ignore_class``
for ignore_index) and ``CategoricalCrossentropy(from_logits=True)`` (probability targets, index
targets one-hot encoded, ``label_smoothing``), with the loss ``dtype`` set to the input's (Keras
otherwise computes in ``floatx``, float32) and torch's reductions mapped to Keras's
(``'mean'`` is ``'sum_over_batch_size'``).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import numpy as np

from .base import Capabilities
from .framework import Bridge

BACKENDS = ("jax", "torch", "tensorflow")


class KerasBridge(Bridge):
    kind = "keras"
    package = "keras"
    extra = "keras"

    def __init__(self, backend: str | None = None):
        self.backend = backend or os.environ.get("KERAS_BACKEND", "tensorflow")
        if self.backend not in BACKENDS:
            raise ValueError(f"Keras backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        self._inner: Bridge | None = None

    @property
    def inner(self) -> Any:
        if self._inner is None:
            from .framework import bridge_for

            if self.backend == "jax":
                from .jax_adapter import JaxBridge

                self._inner = JaxBridge()
            elif self.backend == "torch":
                from .torch_adapter import TorchBridge

                self._inner = TorchBridge()
            else:
                self._inner = bridge_for("tensorflow")
        return self._inner

    @property
    def repro_prelude(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"import os; os.environ['KERAS_BACKEND'] = {self.backend!r}", "import keras",
                *self.inner.repro_prelude)

    @property
    def repro_gradient(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.repro_gradient

    @property
    def repro_value(self) -> str:  # type: ignore[override]
        return self.inner.repro_value

    def availability(self) -> str | None:
        """Installed packages only: importing Keras here would fix this process's backend, and
        each Keras adapter runs in its own worker (see :meth:`conflict`)."""
        import importlib.util

        for package in ("keras", self.backend):
            if importlib.util.find_spec(package) is None:
                return f"{package} is not installed (pip install 'ce-conformance[{package}]')"
        return None

    def conflict(self) -> str | None:
        loaded = sys.modules.get("keras")
        if loaded is not None and (current := loaded.backend.backend()) != self.backend:
            return (f"keras is already imported in this process with the {current} backend; the {self.backend} "
                    "backend needs its own process (run isolated, the default)")
        return None

    def module(self) -> Any:
        if "keras" not in sys.modules:
            os.environ["KERAS_BACKEND"] = self.backend
            if self.backend == "jax":
                from .jax_adapter import _jax

                _jax()  # float64 arrays stay float64 (jax_enable_x64), as in the jax adapters
        import keras

        return keras

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "keras_backend": self.backend, **self.inner.versions()}

    def tensor(self, values: np.ndarray, dtype: str) -> Any:
        self.module()
        return self.inner.tensor(values, dtype)

    def numpy(self, tensor: Any) -> np.ndarray:
        return self.inner.numpy(tensor)

    def vjp(self, fn: Callable[..., Any], primals: list[Any]) -> tuple[Any, Callable[[np.ndarray], list[Any]]]:
        return self.inner.vjp(fn, primals)

    def move_axis(self, tensor: Any, source: int, destination: int) -> Any:
        return self.module().ops.moveaxis(tensor, source, destination)

    def smoke(self, x: Any) -> Any:
        return self.module().ops.logsumexp(x)


def keras_sparse_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                               label_smoothing=0.0):
    """keras.losses.SparseCategoricalCrossentropy(from_logits=True) with torch's keywords
    (classes last; ignore_index as ignore_class; no class weights or smoothing in Keras's
    sparse loss)."""
    import keras

    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=ignore_index, dtype=keras.backend.standardize_dtype(input.dtype),
        reduction={"none": None, "sum": "sum", "mean": "sum_over_batch_size"}[reduction])
    return loss(target, input)


def keras_categorical_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                                    label_smoothing=0.0):
    """keras.losses.CategoricalCrossentropy(from_logits=True) with torch's keywords (classes
    last; index targets one-hot encoded; no class weights or ignore_index in Keras's loss)."""
    import keras

    dtype = keras.backend.standardize_dtype(input.dtype)
    if len(target.shape) != len(input.shape):  # class indices
        target = keras.ops.one_hot(target, input.shape[-1], dtype=dtype)
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, axis=-1, dtype=dtype,
        reduction={"none": None, "sum": "sum", "mean": "sum_over_batch_size"}[reduction])
    return loss(target, input)


KERAS_SPARSE_CAPABILITIES = Capabilities().without("weights", "probability_targets", "label_smoothing",
                                                   "negative_smoothing")
KERAS_CATEGORICAL_CAPABILITIES = Capabilities().without("weights", "ignore_index", "ignore_index_in_range",
                                                        "all_ignored")
