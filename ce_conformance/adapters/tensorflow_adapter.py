"""TensorFlow: ``--kind tensorflow`` functions and TensorFlow's own softmax cross-entropies,
``tf.nn.sparse_softmax_cross_entropy_with_logits`` (index targets) and
``tf.nn.softmax_cross_entropy_with_logits`` (probability targets).

Both return per-position losses with the classes last and take no class weights, ignore_index
or smoothing; the built-in reduces them as a TensorFlow user does (``tf.reduce_sum`` /
``tf.reduce_mean`` in the loss dtype). Gradients come from ``tf.GradientTape``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .base import Capabilities
from .framework import Bridge, _from_staging, _staging


class TensorFlowBridge(Bridge):
    kind = "tensorflow"
    package = "tensorflow"
    extra = "tensorflow"
    distributions = ("tensorflow-cpu", "tensorflow")
    repro_prelude = (
        "import numpy as np",
        "import tensorflow as tf",
        "",
        "def tensor(blob, storage, dtype, shape):",
        "    return tf.cast(tf.constant(np.frombuffer(base64.b64decode(blob), dtype=storage).reshape(shape)), dtype)",
    )
    repro_value = '({0}.numpy() if {0}.dtype != tf.bfloat16 else tf.cast({0}, tf.float32).numpy())'
    repro_gradient = (
        'def gradient(f, x, upstream):',
        '    with tf.GradientTape() as tape:',
        '        tape.watch(x)',
        '        loss = f(x)',
        '    up = tf.ones_like(loss) if upstream is None else tf.reshape(tf.cast(upstream, loss.dtype), loss.shape)',
        '    g = tape.gradient(loss, x, output_gradients=up)',
        '    return loss, None if g is None else tf.cast(g, tf.float64).numpy()',
    )

    def module(self) -> Any:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner is not a result
        import tensorflow

        return tensorflow

    def tensor(self, values: np.ndarray, dtype: str) -> Any:
        tf = self.module()
        constant = tf.constant(np.array(values, dtype=_staging(dtype), copy=True))
        return tf.cast(constant, tf.bfloat16) if dtype == "bfloat16" else constant

    def numpy(self, tensor: Any) -> np.ndarray:
        tf = self.module()
        if tensor.dtype == tf.bfloat16:
            return _from_staging(tf.cast(tensor, tf.float32).numpy(), "bfloat16")
        return np.array(tensor.numpy(), copy=True)

    def vjp(self, fn: Callable[..., Any], primals: list[Any]) -> tuple[Any, Callable[[np.ndarray], list[Any]]]:
        tf = self.module()
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(primals)
            output = fn(*primals)

        def pullback(cotangent: np.ndarray) -> list[Any]:
            upstream = tf.cast(tf.constant(np.asarray(cotangent, dtype=np.float64)), output.dtype)
            return list(tape.gradient(output, primals, output_gradients=upstream))

        return output, pullback

    def move_axis(self, tensor: Any, source: int, destination: int) -> Any:
        tf = self.module()
        order = list(range(tensor.shape.rank))
        order.insert(destination % len(order), order.pop(source % len(order)))
        return tf.transpose(tensor, order)

    def smoke(self, x: Any) -> Any:
        tf = self.module()
        return tf.reduce_logsumexp(x)


def tensorflow_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """TensorFlow's softmax cross-entropies with torch's keywords (classes last), reduced with
    tf.reduce_sum / tf.reduce_mean; no class weights, ignore_index or smoothing in tf.nn."""
    import tensorflow as tf

    if target.dtype.is_floating:
        per_position = tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=input, axis=-1)
    else:
        per_position = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=input)
    reducers = {"none": lambda losses: losses, "sum": tf.reduce_sum, "mean": tf.reduce_mean}
    if reduction not in reducers:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return reducers[reduction](per_position)


TENSORFLOW_CAPABILITIES = Capabilities().without("weights", "ignore_index", "ignore_index_in_range", "all_ignored",
                                                 "label_smoothing", "negative_smoothing")
