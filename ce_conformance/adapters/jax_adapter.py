"""JAX adapters: a port of torch's semantics in jax.numpy, optax's own losses, and user
functions (``--kind jax``).

Compile reuse: the built-in adapters flatten every case to rows ``(M, C)`` and pad M and C up
to a small alphabet of buckets, masking the padding out. One jitted function
computes the per-position losses, their sum and their mean, and — through ``jax.vjp`` with a
cotangent on whichever output the reduction asks for — the gradients, so reduction, weights,
smoothing and ignore_index are traced values, not recompilation triggers. Compilations are
bounded by (target mode x dtype x M bucket x C bucket), not by the number of examples;
``compilations`` counts them (traces) for the fuzz report. JAX's persistent compilation
cache (``$CE_CONFORMANCE_JAX_CACHE``, default ``~/.cache/ce-conformance/jax``; empty to disable)
makes a second run reuse the executables of the first.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import numpy as np

from ce_conformance.case import Case
from ce_conformance.dtypes import numpy_dtype
from ce_conformance.outputs import OUTPUT_OPTIONS

from .base import Adapter, Capabilities, Outcome, float64_copy, same_values
from .framework import Bridge

ROW_BUCKETS = tuple(4**k for k in range(1, 11))  # 4 .. 1M rows: padding wastes at most 4x
CLASS_BUCKETS = tuple(2 * 4**k for k in range(1, 10))  # 8 .. 524288 classes
CACHE_ENV = "CE_CONFORMANCE_JAX_CACHE"


_JITTED: dict[type, Any] = {}
_TRACES: dict[type, int] = {}


def _bucket(n: int, buckets: tuple[int, ...]) -> int:
    for size in buckets:
        if n <= size:
            return size
    return n


def _jax():
    import jax

    if not getattr(_jax, "configured", False):
        jax.config.update("jax_enable_x64", True)
        # Compiled buckets persist across runs (CI, repeated gates): a warm run compiles nothing.
        cache = os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "ce-conformance", "jax"))
        if cache:
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        _jax.configured = True
    return jax


def _jnp_dtype(name: str):
    import jax.numpy as jnp

    return getattr(jnp, name)


def _rows(values: np.ndarray, class_axis: int) -> np.ndarray:
    """(…, C, …) -> (M, C) in position order; unbatched (C,) -> (1, C)."""
    if values.ndim == 1:
        return values[None, :]
    return np.moveaxis(values, class_axis, -1).reshape(-1, values.shape[class_axis])


def _unrows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 1:
        return rows[0]
    moved = rows.reshape((shape[0], *shape[2:], shape[1]))
    return np.moveaxis(moved, -1, 1)


def _reduction(case: Case) -> str:
    return "mean" if case.reduction == "elementwise_mean" else case.reduction


class _BucketedJaxAdapter(Adapter):
    """Shared machinery: row flattening, bucketing, one jitted forward+vjp per bucket."""

    package = "jax"
    pad_classes = True

    @property
    def framework(self) -> str:  # type: ignore[override]
        return self.package

    def __init__(self) -> None:
        self.compilations = 0  # traces (= compilations) this instance triggered

    def availability(self) -> str | None:
        if importlib.util.find_spec(self.package) is None:
            return f"{self.package} is not installed (pip install 'ce-conformance[jax]')"
        return None

    def versions(self) -> dict[str, str]:
        import jax
        import jaxlib

        info = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
        if self.package == "optax":
            import optax

            info["optax"] = optax.__version__
        return info

    def variant(self, case: Case) -> Any:
        """A static (compile-time) choice per case; None where everything is traced."""
        return None

    def _per_position(self, jnp, x, target, weight, class_mask, n_classes, eps, ignore_index, mode, variant):
        raise NotImplementedError

    def _compiled(self):
        """One jitted function per adapter class and process, shared by all instances, so a new
        run (or a new adapter object) reuses every bucket already compiled."""
        cls = type(self)
        if cls not in _JITTED:
            jax = _jax()
            import jax.numpy as jnp

            def forward_backward(x, target, weight, row_mask, class_mask, scalars, ignore_index, cot_none, *,
                                 mode, variant):
                _TRACES[cls] = _TRACES.get(cls, 0) + 1  # runs once per trace, i.e. per compilation
                n_classes, eps, is_mean = scalars[0], scalars[1], scalars[4]
                cot_sum, cot_mean = scalars[2].astype(x.dtype), scalars[3].astype(x.dtype)  # exact: drawn in the dtype

                def losses(x, target):
                    per, denominator_terms = self._per_position(jnp, x, target, weight, class_mask, n_classes, eps,
                                                                ignore_index, mode, variant)
                    per = jnp.where(row_mask, per, 0)
                    acc = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
                    total = jnp.sum(per.astype(acc))
                    denominator = jnp.sum(jnp.where(row_mask, denominator_terms, 0).astype(acc))
                    # torch divides the NLL and smoothing sums separately: a zero total weight
                    # makes the NLL term 0/0 = NaN even where the smoothing term alone is inf.
                    # Other reductions divide by 1: a zero cotangent times d(total / 0) would
                    # turn their gradients into NaN (0 * inf), which torch's 'sum' never does
                    divisor = jnp.where(is_mean > 0, denominator, 1).astype(acc)
                    mean = total / divisor + jnp.where(denominator == 0, jnp.nan, 0).astype(acc)
                    return per, total.astype(x.dtype), mean.astype(x.dtype)

                if mode == "probability":
                    (per, total, mean), vjp = jax.vjp(losses, x, target)
                    grad_x, grad_t = vjp((cot_none, cot_sum, cot_mean))
                else:
                    (per, total, mean), vjp = jax.vjp(lambda x_: losses(x_, target), x)
                    (grad_x,), grad_t = vjp((cot_none, cot_sum, cot_mean)), jnp.zeros((), x.dtype)
                return per, total, mean, grad_x, grad_t

            _JITTED[cls] = jax.jit(forward_backward, static_argnames=("mode", "variant"))
        return _JITTED[cls]

    def run(self, case: Case) -> Outcome:

        dtype = case.dtype
        x = case.input
        class_axis = 0 if x.ndim == 1 else 1
        C = x.shape[class_axis]
        rows = _rows(x, class_axis)
        M = rows.shape[0]
        Mb, Cb = _bucket(M, ROW_BUCKETS), (_bucket(C, CLASS_BUCKETS) if self.pad_classes else C)
        mode = "probability" if case.is_probability_target else "index"
        np_dtype = numpy_dtype(dtype)  # NumPy arrays go straight into the jitted call: one transfer each
        x_pad = np.zeros((Mb, Cb), dtype=np_dtype)
        x_pad[:M, :C] = rows
        if mode == "probability":
            target = np.zeros((Mb, Cb), dtype=np_dtype)
            target[:M, :C] = _rows(case.target, class_axis)
        else:
            target = np.zeros(Mb, dtype=np.int32)
            target[:M] = _as_int32(case.target.reshape(-1))
        w_pad = np.zeros(Cb, dtype=np_dtype)
        w_pad[:C] = case.weight if case.weight is not None else 1.0
        reduction = _reduction(case)
        g = case.grad_output
        cot_none = np.zeros(Mb, dtype=np_dtype)
        cot_sum = cot_mean = 0.0
        if reduction == "none":
            cot_none[:M] = 1.0 if g is None else np.asarray(g).reshape(-1)
        elif reduction == "sum":
            cot_sum = 1.0 if g is None else float(g)
        else:
            cot_mean = 1.0 if g is None else float(g)
        # float32 scalars for half dtypes: in bfloat16 the class count 257 is 256 and a smoothing
        # of 0.9668 is 0.96875 (torch keeps both as exact scalars)
        scalars = np.array([C, case.label_smoothing, cot_sum, cot_mean, reduction == "mean"],
                           dtype=np.float64 if dtype == "float64" else np.float32)
        traces_before = _TRACES.get(type(self), 0)
        try:
            per, total, mean, grad_x, grad_t = self._compiled()(
                x_pad, target, w_pad, np.arange(Mb) < M, np.arange(Cb) < C, scalars,
                _as_int32(np.int64(case.ignore_index)), cot_none, mode=mode, variant=self.variant(case))
        except Exception as exc:
            return Outcome.failed(exc, "forward")
        finally:
            self.compilations += _TRACES.get(type(self), 0) - traces_before
        per64 = float64_copy(per)[:M]
        if reduction == "none":
            out_shape = () if x.ndim == 1 else (x.shape[0], *x.shape[2:])
            loss = per64.reshape(out_shape)
        else:
            loss = float64_copy(total if reduction == "sum" else mean).reshape(())
        outcome = Outcome(loss=loss, loss_dtype=dtype, loss_shape=loss.shape)
        outcome.grad_input = _unrows(float64_copy(grad_x)[:M, :C], x.shape)
        outcome.grad_input_dtype = str(grad_x.dtype)
        outcome.grad_input_shape = x.shape
        if mode == "probability" and self.capabilities.target_gradients:
            outcome.grad_target = _unrows(float64_copy(grad_t)[:M, :C], x.shape)
            outcome.grad_target_dtype = str(grad_t.dtype)
        return outcome


class JaxAdapter(_BucketedJaxAdapter):
    """torch's cross-entropy semantics written in jax.numpy (log-softmax in float32 for half
    dtypes, rounded to the input dtype, as torch's CPU kernels do)."""

    name = "jax"
    description = "torch semantics ported to jax.numpy, jit-compiled with shape buckets"
    capabilities = Capabilities(features=Capabilities().features - {"invalid_input", "legacy_reduction"})

    def _per_position(self, jnp, x, target, weight, class_mask, n_classes, eps, ignore_index, mode, variant):
        compute = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
        xf = jnp.where(class_mask, x.astype(compute), -jnp.inf)
        # as jax.nn.log_softmax: no gradient through the max, whose rounding would otherwise leak
        # (1 - sum p) into the argmax element's gradient
        row_max = _jax().lax.stop_gradient(jnp.max(xf, axis=1, keepdims=True))
        shifted = xf - row_max
        lse = jnp.log(jnp.sum(jnp.where(class_mask, jnp.exp(shifted), 0), axis=1, keepdims=True))
        logp = (shifted - lse).astype(x.dtype)
        # label_smoothing stays a float32 scalar, as torch's double scalar does in its float32 op math
        smoothing = jnp.where(eps > 0, eps, 0).astype(compute)

        def rounded(value):  # each torch op on a half tensor rounds its result to the dtype
            return value.astype(x.dtype).astype(compute)

        if mode == "probability":
            smoothed = rounded(rounded(target.astype(compute) * (1 - smoothing)) + smoothing / n_classes)
            smoothed = jnp.where(eps > 0, smoothed, target.astype(compute)).astype(x.dtype)
            # torch's order, -(logp * target * weight): with tiny class weights, weight * target
            # first rounds into float16's subnormals (1e-4 * 0.05), 1 % off, where torch's stays normal
            terms = jnp.where(class_mask, logp * smoothed * weight, 0)
            return -jnp.sum(terms.astype(compute), axis=1).astype(x.dtype), jnp.ones(x.shape[0], compute)
        valid = target != ignore_index
        safe = jnp.where(valid, target, 0)
        picked = jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
        w_target = jnp.where(valid, weight[safe], 0)
        nll = jnp.where(valid, -w_target * picked, 0)
        smooth = jnp.where(valid, -jnp.sum(jnp.where(class_mask, weight * logp, 0).astype(compute), axis=1), 0)
        smoothed_per = rounded(rounded((1 - smoothing) * nll.astype(compute))
                               + rounded((smoothing / n_classes) * rounded(smooth)))
        per = jnp.where(eps > 0, smoothed_per, nll.astype(compute))
        return per.astype(x.dtype), w_target.astype(compute)


class OptaxAdapter(_BucketedJaxAdapter):
    """optax's softmax cross-entropy losses. They have no class weights, no ignore_index and no
    argument validation; label smoothing goes through ``optax.smooth_labels``. Classes are not
    padded (smooth_labels spreads over the array's width), so compilations follow the class
    alphabet of the strategies."""

    name = "optax"
    package = "optax"
    pad_classes = False
    description = "optax.softmax_cross_entropy(_with_integer_labels), smoothing via optax.smooth_labels"
    capabilities = Capabilities(features=Capabilities().features - {
        "weights", "ignore_index", "ignore_index_in_range", "all_ignored", "invalid_input", "legacy_reduction",
        "negative_smoothing"})

    def variant(self, case: Case) -> Any:
        return case.label_smoothing > 0

    def _per_position(self, jnp, x, target, weight, class_mask, n_classes, eps, ignore_index, mode, variant):
        import optax

        if mode == "index" and not variant:
            per = optax.softmax_cross_entropy_with_integer_labels(x, target)
        else:
            labels = jax_one_hot(jnp, target, x.shape[1], x.dtype) if mode == "index" else target
            if variant:
                labels = optax.smooth_labels(labels, eps)
            per = optax.softmax_cross_entropy(x, labels)
        return per.astype(x.dtype), jnp.ones(x.shape[0], jnp.float32)


def jax_one_hot(jnp, labels, width, dtype):
    return (labels[:, None] == jnp.arange(width)[None, :]).astype(dtype)


class JaxFunctionAdapter(Adapter):
    """A user function with the keywords of ``F.cross_entropy`` on jax arrays (``--kind jax``).
    Called at the case's exact shapes (no padding: that would change a user's mean)."""

    isolate_by_default = True
    framework = "jax"

    def __init__(self, fn: Callable[..., Any], *, name: str, capabilities: Capabilities | None = None):
        self.fn = fn
        self.name = name
        # outputs beside the loss are read from torch calls only (a vjp of a tuple needs has_aux)
        self.capabilities = (capabilities or Capabilities()).without(*OUTPUT_OPTIONS)

    def availability(self) -> str | None:
        return None if importlib.util.find_spec("jax") else "jax is not installed"

    def run(self, case: Case) -> Outcome:
        jax = _jax()
        import jax.numpy as jnp

        args, kwargs = case.arguments()
        x = jnp.asarray(args[0])
        target = jnp.asarray(args[1])
        weight = None if kwargs["weight"] is None else jnp.asarray(kwargs["weight"])
        options = {k: v for k, v in kwargs.items() if k != "weight"}
        float_target = case.is_probability_target and self.capabilities.target_gradients
        try:
            if float_target:
                loss, vjp = jax.vjp(lambda a, b: self.fn(a, b, weight=weight, **options), x, target)
            else:
                loss, vjp = jax.vjp(lambda a: self.fn(a, target, weight=weight, **options), x)
        except Exception as exc:
            return Outcome.failed(exc, "forward")
        loss_np = float64_copy(loss)
        outcome = Outcome(loss=loss_np, loss_dtype=str(loss.dtype), loss_shape=tuple(loss.shape))
        if case.is_valid and self.capabilities.gradients:
            upstream = case.grad_output if case.grad_output is not None else np.ones(loss.shape)
            try:
                grads = vjp(jnp.asarray(np.broadcast_to(upstream, loss.shape), dtype=loss.dtype))
            except Exception as exc:
                outcome.status, outcome.error = "error", Outcome.failed(exc, "backward").error
                return outcome
            outcome.grad_input = float64_copy(grads[0])
            outcome.grad_input_dtype = str(grads[0].dtype)
            outcome.grad_input_shape = tuple(grads[0].shape)
            if float_target:
                outcome.grad_target = float64_copy(grads[1])
                outcome.grad_target_dtype = str(grads[1].dtype)
        outcome.mutated = tuple(n for n, a, b in zip(("input", "target"), args, case.arguments()[0])
                                if not same_values(a, b))
        return outcome


def _as_int32(values: np.ndarray) -> np.ndarray:
    """Indices as int32 (one compiled signature): an int64 sentinel beyond int32 (ignore_index at
    the int64 extremes, and the targets equal to it) saturates to the int32 extreme of its sign,
    which keeps it equal to itself, negative or past every class."""
    info = np.iinfo(np.int32)
    return np.clip(values, info.min, info.max).astype(np.int32)


class JaxBridge(Bridge):
    """jax arrays and ``jax.vjp`` for the framework adapters (Keras on its JAX backend)."""

    kind = "jax"
    package = "jax"
    extra = "jax"
    repro_prelude = (
        "import numpy as np",
        "import jax",
        "jax.config.update('jax_enable_x64', True)",
        "import jax.numpy as jnp",
        "",
        "def tensor(blob, storage, dtype, shape):",
        "    return jnp.asarray(np.frombuffer(base64.b64decode(blob), dtype=storage).reshape(shape), dtype=dtype)",
    )
    repro_gradient = (
        'def gradient(f, x, upstream):',
        '    loss, pullback = jax.vjp(f, x)',
        '    up = jnp.ones_like(loss) if upstream is None else jnp.asarray(upstream, loss.dtype).reshape(loss.shape)',
        '    (g,) = pullback(up)',
        '    return loss, np.asarray(g.astype(jnp.float32) if g.dtype == jnp.bfloat16 else g, dtype=np.float64)',
    )

    def module(self) -> Any:
        return _jax()

    def versions(self) -> dict[str, str]:
        import jaxlib

        return {"jax": _jax().__version__, "jaxlib": jaxlib.__version__}

    def tensor(self, values: np.ndarray, dtype: str) -> Any:
        _jax()
        import jax.numpy as jnp

        return jnp.asarray(np.array(values, copy=True))

    def numpy(self, tensor: Any) -> np.ndarray:
        return np.array(tensor, copy=True)

    def vjp(self, fn: Callable[..., Any], primals: list[Any]) -> tuple[Any, Callable[[np.ndarray], list[Any]]]:
        import jax.numpy as jnp

        output, pullback = _jax().vjp(fn, *primals)
        return output, lambda cotangent: list(pullback(jnp.asarray(cotangent, dtype=output.dtype)))

    def move_axis(self, tensor: Any, source: int, destination: int) -> Any:
        import jax.numpy as jnp

        return jnp.moveaxis(tensor, source, destination)

    def smoke(self, x: Any) -> Any:
        return _jax().nn.logsumexp(x)
