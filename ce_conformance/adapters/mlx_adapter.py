"""MLX: ``--kind mlx`` functions and ``mlx.nn.losses.cross_entropy`` itself (on Linux, the CPU
backend from ``mlx[cpu]``).

``mlx.nn.losses.cross_entropy`` has no class weights (its ``weights`` multiply each position's
loss) and no ignore_index; its default reduction is ``'none'``, so the built-in passes the
case's reduction explicitly.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .base import Capabilities
from .framework import Bridge, _from_staging, _staging


class MlxBridge(Bridge):
    kind = "mlx"
    package = "mlx"
    extra = "mlx"
    repro_prelude = (
        "import numpy as np",
        "import mlx.core as mx",
        "",
        "def tensor(blob, storage, dtype, shape):",
        "    return mx.array(np.frombuffer(base64.b64decode(blob), dtype=storage).reshape(shape)).astype(getattr(mx, dtype))",
    )
    repro_value = 'np.array({0}.astype(mx.float32) if {0}.dtype == mx.bfloat16 else {0})'
    repro_gradient = (
        'def gradient(f, x, upstream):',
        '    loss = f(x)',
        '    up = mx.ones_like(loss) if upstream is None else upstream.astype(loss.dtype).reshape(loss.shape)',
        '    _, (g,) = mx.vjp(f, [x], [up])',
        '    return loss, np.array(g.astype(mx.float32), dtype=np.float64)',
    )

    def module(self) -> Any:
        import mlx.core

        return mlx.core

    def tensor(self, values: np.ndarray, dtype: str) -> Any:
        import mlx.core as mx

        staged = np.array(values, dtype=_staging(dtype), copy=True)
        if dtype == "bfloat16":
            return mx.array(staged).astype(mx.bfloat16)
        return mx.array(staged, dtype=getattr(mx, dtype))  # mx.array alone narrows float64 to float32

    def numpy(self, tensor: Any) -> np.ndarray:
        import mlx.core as mx

        if tensor.dtype == mx.bfloat16:
            return _from_staging(np.array(tensor.astype(mx.float32)), "bfloat16")
        return np.array(tensor, copy=True)

    def vjp(self, fn: Callable[..., Any], primals: list[Any]) -> tuple[Any, Callable[[np.ndarray], list[Any]]]:
        import mlx.core as mx

        output = fn(*primals)
        mx.eval(output)

        def pullback(cotangent: np.ndarray) -> list[Any]:
            _, grads = mx.vjp(fn, primals, [mx.array(cotangent).astype(output.dtype)])
            return list(grads)

        return output, pullback

    def move_axis(self, tensor: Any, source: int, destination: int) -> Any:
        import mlx.core as mx

        return mx.moveaxis(tensor, source, destination)


def mlx_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """mlx.nn.losses.cross_entropy with torch's keywords (classes last; no class weights or
    ignore_index in MLX, so those cases are not sent)."""
    import mlx.nn

    return mlx.nn.losses.cross_entropy(input, target, axis=-1, label_smoothing=label_smoothing, reduction=reduction)


MLX_CAPABILITIES = Capabilities().without("weights", "ignore_index", "ignore_index_in_range", "all_ignored")
