"""PaddlePaddle: ``--kind paddle`` functions and ``paddle.nn.functional.cross_entropy`` itself.

Paddle's CPU build registers its fused softmax-with-cross-entropy kernel for float32 and
float64 only; the float16/bfloat16 probe turns that into a skip with Paddle's own message.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .base import Capabilities
from .framework import Bridge, _from_staging, _staging


class PaddleBridge(Bridge):
    kind = "paddle"
    package = "paddle"
    extra = "paddle"
    distributions = ("paddlepaddle", "paddlepaddle-gpu")
    repro_prelude = (
        "import numpy as np",
        "import paddle",
        "",
        "def tensor(blob, storage, dtype, shape):",
        "    return paddle.to_tensor(np.frombuffer(base64.b64decode(blob), dtype=storage).reshape(shape)).astype(dtype)",
    )
    repro_value = "{0}.astype('float32' if str({0}.dtype).endswith('bfloat16') else {0}.dtype).numpy()"
    repro_gradient = (
        'def gradient(f, x, upstream):',
        '    x.stop_gradient = False',
        '    loss = f(x)',
        '    up = paddle.ones_like(loss) if upstream is None else upstream.astype(loss.dtype).reshape(loss.shape)',
        '    (g,) = paddle.grad([loss], [x], grad_outputs=[up], allow_unused=True)',
        "    return loss, None if g is None else g.astype('float64').numpy()",
    )

    def tensor(self, values: np.ndarray, dtype: str) -> Any:
        import paddle

        staged = np.array(values, dtype=_staging(dtype), copy=True)
        return paddle.to_tensor(staged).astype(dtype) if dtype == "bfloat16" else paddle.to_tensor(staged)

    def numpy(self, tensor: Any) -> np.ndarray:
        name = str(tensor.dtype).removeprefix("paddle.")
        if name == "bfloat16":
            return _from_staging(tensor.astype("float32").numpy(), "bfloat16")
        return np.array(tensor.numpy(), copy=True)

    def vjp(self, fn: Callable[..., Any], primals: list[Any]) -> tuple[Any, Callable[[np.ndarray], list[Any]]]:
        import paddle

        for primal in primals:
            primal.stop_gradient = False
        output = fn(*primals)

        def pullback(cotangent: np.ndarray) -> list[Any]:
            return list(paddle.grad([output], primals, grad_outputs=[self.tensor(cotangent, str(output.dtype)
                                                                                  .removeprefix("paddle."))],
                                    allow_unused=True))

        return output, pullback

    def move_axis(self, tensor: Any, source: int, destination: int) -> Any:
        import paddle

        return paddle.moveaxis(tensor, source, destination)


def paddle_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """paddle.nn.functional.cross_entropy with torch's keywords (classes on the last axis)."""
    import paddle

    soft = paddle.is_floating_point(target)
    return paddle.nn.functional.cross_entropy(input, target, weight=weight, ignore_index=ignore_index,
                                              reduction=reduction, soft_label=soft, axis=-1,
                                              label_smoothing=label_smoothing)


PADDLE_CAPABILITIES = Capabilities().without("invalid_input")
"""Everything torch's call takes; invalid calls are left out (Paddle's argument checks are its own)."""
