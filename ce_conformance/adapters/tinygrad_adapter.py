"""tinygrad: ``--kind tinygrad`` functions, ``Tensor.cross_entropy`` and
``Tensor.sparse_categorical_crossentropy``.

tinygrad compiles every kernel: its CPU device needs ``clang`` on the PATH (``apt-get install
clang``). Where clang cannot compile a dtype (bfloat16 on x86 with clang < 17) the dtype probe
reports it as a skip with the compiler's message.
"""

from __future__ import annotations

import shutil
from typing import Any, Callable

import numpy as np

from .base import Capabilities
from .framework import Bridge, _from_staging, _staging


class TinygradBridge(Bridge):
    kind = "tinygrad"
    package = "tinygrad"
    extra = "tinygrad"
    repro_prelude = (
        "import numpy as np",
        "from tinygrad import Tensor, dtypes",
        "",
        "def tensor(blob, storage, dtype, shape):",
        "    return Tensor(np.frombuffer(base64.b64decode(blob), dtype=storage).reshape(shape).copy())"
        ".cast(getattr(dtypes, dtype))",
    )
    repro_value = '{0}.cast(dtypes.float32 if {0}.dtype == dtypes.bfloat16 else {0}.dtype).numpy()'
    repro_gradient = (
        'def gradient(f, x, upstream):',
        '    x.requires_grad = True',
        '    loss = f(x)',
        '    up = Tensor.ones_like(loss) if upstream is None else upstream.cast(loss.dtype).reshape(loss.shape)',
        '    (g,) = loss.gradient(x, gradient=up)',
        '    return loss, g.cast(dtypes.float32).numpy().astype(np.float64)',
    )

    def availability(self) -> str | None:
        reason = super().availability()
        if reason is None and shutil.which("clang") is None:
            from tinygrad import Device

            try:
                default = Device.DEFAULT
            except RuntimeError:  # tinygrad 0.14 without a compiler: "no usable devices"
                default = "CPU"
            if default == "CPU":
                return "tinygrad's CPU device compiles with clang, which is not on the PATH (apt-get install clang)"
        return reason

    def tensor(self, values: np.ndarray, dtype: str) -> Any:
        from tinygrad import Tensor, dtypes

        staged = np.array(values, dtype=_staging(dtype), copy=True)
        tensor = Tensor(staged)
        return tensor.cast(dtypes.bfloat16) if dtype == "bfloat16" else tensor

    def numpy(self, tensor: Any) -> np.ndarray:
        from tinygrad import dtypes

        if tensor.dtype == dtypes.bfloat16:
            return _from_staging(tensor.cast(dtypes.float32).numpy(), "bfloat16")
        return np.array(tensor.numpy(), copy=True)

    def vjp(self, fn: Callable[..., Any], primals: list[Any]) -> tuple[Any, Callable[[np.ndarray], list[Any]]]:
        for primal in primals:
            primal.requires_grad = True
        output = fn(*primals)

        def pullback(cotangent: np.ndarray) -> list[Any]:
            from tinygrad import Tensor

            upstream = Tensor(np.array(cotangent, dtype=np.float32 if output.dtype.name == "bfloat16" else None))
            return list(output.gradient(*primals, gradient=upstream.cast(output.dtype)))

        return output, pullback

    def move_axis(self, tensor: Any, source: int, destination: int) -> Any:
        order = list(range(tensor.ndim))
        order.insert(destination % tensor.ndim, order.pop(source % tensor.ndim))
        return tensor.permute(*order)


def tinygrad_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Tensor.cross_entropy with torch's keywords: classes on axis 1 as in torch, index or
    probability targets; no class weights or ignore_index in tinygrad."""
    return input.cross_entropy(target, reduction=reduction, label_smoothing=label_smoothing)


def tinygrad_sparse_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                                  label_smoothing=0.0):
    """Tensor.sparse_categorical_crossentropy with torch's keywords: classes last, index targets,
    ignore_index passed through (tinygrad's default is -1, and -1 masks nothing)."""
    return input.sparse_categorical_crossentropy(target, ignore_index=ignore_index, label_smoothing=label_smoothing,
                                                 reduction=reduction)


TINYGRAD_CAPABILITIES = Capabilities().without("weights", "ignore_index", "ignore_index_in_range", "all_ignored")
TINYGRAD_SPARSE_CAPABILITIES = Capabilities().without("weights", "probability_targets")
