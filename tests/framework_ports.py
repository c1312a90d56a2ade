"""torch's cross-entropy ported to each framework kind, by us, for the framework adapters' tests.

Each port takes the classes on the last axis (``--class-axis -1``), index or probability
targets, and the three reductions, without class weights, ignore_index or smoothing (the tests
gate them on those features only). Half dtypes are computed in float32 and rounded once, which
the tolerance model accepts as more accurate than torch. ``*_bug``: the same port with a K-dim
bug a real kernel shipped — 'mean' divides by the batch size instead of the number of positions.
"""

def _port(upcast, log_softmax, picked, expected, total, count, cast_back):
    """One port from a framework's primitives: the arithmetic is shared, the API is not."""

    def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
                      bug=False):
        logp = log_softmax(upcast(input))
        per = -(expected(target, logp) if len(target.shape) == len(input.shape) else picked(target, logp))
        if reduction == "none":
            return cast_back(per, input)
        if reduction == "sum":
            return cast_back(total(per), input)
        if reduction != "mean":
            raise ValueError(f"{reduction} is not a valid value for reduction")
        positions = input.shape[0] if bug and len(input.shape) > 2 else count(per)
        return cast_back(total(per) / positions, input)

    return cross_entropy


def _paddle():
    import paddle

    half = (paddle.float16, paddle.bfloat16)
    up = lambda x: x.astype("float32") if x.dtype in half else x  # noqa: E731
    def log_softmax(x):  # not paddle.nn.functional.log_softmax: on the CPU it clamps log p at -64
        shape = list(x.shape)
        rows = x.reshape([-1, shape[-1]]) if len(shape) > 2 else x  # paddle's logsumexp takes 4 axes at most
        return x - paddle.logsumexp(rows, axis=-1, keepdim=True).reshape(shape[:-1] + [1])

    return _port(up, log_softmax,
                 lambda t, lp: paddle.take_along_axis(lp, t.unsqueeze(-1), axis=-1).squeeze(-1),
                 lambda t, lp: (up(t) * lp).sum(-1), lambda v: v.sum(), lambda v: max(v.size, 1),
                 lambda v, x: v.astype(x.dtype))


def _mlx():
    import mlx.core as mx

    up = lambda x: x.astype(mx.float32) if x.dtype in (mx.float16, mx.bfloat16) else x  # noqa: E731
    return _port(up, lambda x: x - mx.logsumexp(x, axis=-1, keepdims=True),
                 lambda t, lp: mx.take_along_axis(lp, mx.expand_dims(t, -1), -1).squeeze(-1),
                 lambda t, lp: (up(t) * lp).sum(-1), lambda v: v.sum(), lambda v: max(v.size, 1),
                 lambda v, x: v.astype(x.dtype))


def _tensorflow():
    import tensorflow as tf

    up = lambda x: tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x  # noqa: E731
    return _port(up, lambda x: tf.nn.log_softmax(x, axis=-1),
                 lambda t, lp: tf.gather(lp, t, batch_dims=len(t.shape)),
                 lambda t, lp: tf.reduce_sum(up(t) * lp, -1), tf.reduce_sum,
                 lambda v: max(int(tf.size(v)), 1), lambda v, x: tf.cast(v, x.dtype))


def _tinygrad():
    from tinygrad import Tensor, dtypes

    up = lambda x: x.cast(dtypes.float32) if x.dtype in (dtypes.float16, dtypes.bfloat16) else x  # noqa: E731
    return _port(up, lambda x: x.log_softmax(-1),
                 lambda t, lp: (t.unsqueeze(-1) == Tensor.arange(lp.shape[-1])).where(lp, 0).sum(-1),
                 lambda t, lp: (up(t) * lp).sum(-1), lambda v: v.sum(), lambda v: max(v.numel(), 1),
                 lambda v, x: v.cast(x.dtype))


def _keras():
    import keras
    from keras import ops

    def up(x):
        return ops.cast(x, "float32") if keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16") else x

    return _port(up, lambda x: ops.log_softmax(x, axis=-1),
                 lambda t, lp: ops.squeeze(ops.take_along_axis(lp, ops.expand_dims(t, -1), axis=-1), -1),
                 lambda t, lp: ops.sum(up(t) * lp, -1), ops.sum, lambda v: max(int(ops.size(v)), 1),
                 lambda v, x: ops.cast(v, x.dtype))


PORTS = {"paddle": _paddle, "mlx": _mlx, "tensorflow": _tensorflow, "tinygrad": _tinygrad, "keras": _keras}


def _entry(kind, bug):
    def call(*args, **kwargs):
        return PORTS[kind]()(*args, bug=bug, **kwargs)

    call.__name__ = f"{kind}_{'bug' if bug else 'correct'}"
    return call


paddle_correct, paddle_bug = _entry("paddle", False), _entry("paddle", True)
mlx_correct, mlx_bug = _entry("mlx", False), _entry("mlx", True)
tensorflow_correct, tensorflow_bug = _entry("tensorflow", False), _entry("tensorflow", True)
tinygrad_correct, tinygrad_bug = _entry("tinygrad", False), _entry("tinygrad", True)
keras_correct, keras_bug = _entry("keras", False), _entry("keras", True)
