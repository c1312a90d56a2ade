"""Adapters: one small module per backend behind one interface (:class:`adapters.base.Adapter`).

Built in: ``numpy`` (the reference itself), ``torch`` (CPU), ``torch-cuda``, ``jax`` (a port of
torch's semantics), ``optax``; for the linear cross-entropy family ``torch-linear``
(``F.linear_cross_entropy``'s reference path), ``torch-linear-chunked`` (its chunked path) and
``torch-linear-compile``; and the other frameworks' and kernel libraries' own cross-entropies
(:data:`FAMILY_ECOSYSTEMS`, ``--ecosystem``). User functions come in through :func:`user_adapter` (the CLI's ``--impl SPEC
--kind K``, K one of :data:`KINDS`); third-party packages register factories under the
entry-point group ``ce_conformance.adapters`` (a callable returning an :class:`Adapter`).

>>> sorted(set(BUILTIN) - set(ECOSYSTEM_ADAPTERS) - set(LINEAR_ECOSYSTEM_ADAPTERS))
['jax', 'numpy', 'optax', 'torch', 'torch-compile', 'torch-cuda', 'torch-linear', 'torch-linear-chunked', 'torch-linear-compile']
>>> ECOSYSTEM_ADAPTERS[:4]
('paddle', 'mlx', 'tinygrad', 'tinygrad-sparse')
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Final

from ce_conformance.errors import ConfigurationError
from ce_conformance.selection import parse_features

from .base import Adapter, Capabilities, Outcome, RaisedError

ENTRY_POINT_GROUP: Final = "ce_conformance.adapters"
KINDS: Final = ("torch", "jax", "numpy", "paddle", "mlx", "tinygrad", "tensorflow", "keras", "keras-jax",
                "keras-torch", "keras-tensorflow")
"""What an ``--impl`` function takes: torch tensors, jax or NumPy arrays, or another framework's
tensors (``keras``: on ``$KERAS_BACKEND``'s tensors; ``keras-jax`` etc. name the backend)."""

ECOSYSTEM_ADAPTERS: Final = (
    "paddle", "mlx", "tinygrad", "tinygrad-sparse", "tensorflow",
    "keras-sparse-jax", "keras-categorical-jax", "keras-sparse-torch", "keras-categorical-torch",
    "keras-sparse-tensorflow", "keras-categorical-tensorflow", "transformers", "megatron", "liger", "flash-attn",
    "quack", "transformer-engine",
)
"""Each framework's and kernel library's own cross-entropy (``--ecosystem`` adds them; those not
installed, or needing a GPU there is not, are reported with the reason)."""

LINEAR_ECOSYSTEM_ADAPTERS: Final = ("cut-cross-entropy", "cut-cross-entropy-cce", "liger-linear", "quack-linear")
"""The kernel libraries' fused linear cross-entropies (``--ecosystem --family linear_cross_entropy``)."""

FAMILY_ECOSYSTEMS: Final = {"cross_entropy": ECOSYSTEM_ADAPTERS, "linear_cross_entropy": LINEAR_ECOSYSTEM_ADAPTERS}
"""What ``--ecosystem`` adds for each loss family."""

DEFAULT_ADAPTERS: Final = ("numpy", "torch", "jax", "optax")
"""What ``fuzz`` runs when no adapter is named: the built-ins that run on a CPU."""

NIGHTLY_ADAPTERS: Final = ("numpy", "torch", "torch-cuda", "torch-compile", "jax", "optax")
"""What ``nightly`` runs when no adapter is named (unavailable ones are reported and skipped)."""

FAMILY_ADAPTERS: Final = {
    "cross_entropy": (DEFAULT_ADAPTERS, NIGHTLY_ADAPTERS),
    "linear_cross_entropy": (("torch-linear", "torch-linear-chunked"),
                             ("torch-linear", "torch-linear-chunked", "torch-linear-compile")),
}
"""Each loss family's (fuzz, nightly) built-ins."""

EAGER_COMPILED_PAIRS: Final = {"cross_entropy": ("torch", "torch-compile"),
                               "linear_cross_entropy": ("torch-linear", "torch-linear-compile")}
"""Each family's eager-vs-compiled parity pair: ``nightly`` judges the compiled side against the
eager one (``--pair``) whenever both run."""

TORCH_ORACLES: Final = {"cross_entropy": "torch", "linear_cross_entropy": "torch-linear"}
"""The built-in that runs torch's own function of each family on the CPU (``--oracle torch``)."""


def default_adapters(family: str = "cross_entropy", *, nightly: bool = False) -> tuple[str, ...]:
    """The built-ins ``fuzz`` (or ``nightly``) runs for a family when no adapter is named.

    >>> default_adapters("linear_cross_entropy")
    ('torch-linear', 'torch-linear-chunked')
    """
    from ce_conformance.family import family_named

    return FAMILY_ADAPTERS[family_named(family).name][1 if nightly else 0]


def _torch(**kwargs: Any) -> Adapter:
    from .torch_adapter import TorchAdapter

    return TorchAdapter(**kwargs)


def _numpy() -> Adapter:
    from .numpy_adapter import NumpyAdapter

    return NumpyAdapter()


def _jax() -> Adapter:
    from .jax_adapter import JaxAdapter

    return JaxAdapter()


def _optax() -> Adapter:
    from .jax_adapter import OptaxAdapter

    return OptaxAdapter()


def _torch_compile(**kwargs: Any) -> Adapter:
    from .torch_adapter import TorchCompileAdapter

    return TorchCompileAdapter(**kwargs)


BUILTIN: Final[dict[str, Callable[[], Adapter]]] = {
    "torch-compile": _torch_compile,
    "numpy": _numpy,
    "torch": _torch,
    "torch-cuda": lambda: _torch(name="torch-cuda", device="cuda"),
    "jax": _jax,
    "optax": _optax,
    "torch-linear": lambda: _torch(name="torch-linear", family="linear_cross_entropy"),
    "torch-linear-chunked": lambda: _linear_chunked(),
    "torch-linear-compile": lambda: _torch_compile(name="torch-linear-compile", family="linear_cross_entropy"),
}


def _framework_builtin(module: str, function: str, capabilities: str, *, name: str, description: str,
                       class_axis: int = -1, **bridge_options: Any) -> Callable[[], Adapter]:
    """A factory for a framework's own loss: importing its module needs nothing but NumPy."""

    def build() -> Adapter:
        from .framework import builtin_adapter

        loaded = importlib.import_module(f"{__name__}.{module}")
        return builtin_adapter(getattr(loaded, function), module.removesuffix("_adapter"), name=name,
                               description=description, capabilities=getattr(loaded, capabilities),
                               class_axis=class_axis, **bridge_options)

    return build


BUILTIN.update({
    "paddle": _framework_builtin("paddle_adapter", "paddle_cross_entropy", "PADDLE_CAPABILITIES", name="paddle",
                                 description="paddle.nn.functional.cross_entropy (axis=-1; soft_label for "
                                             "probability targets)"),
    "mlx": _framework_builtin("mlx_adapter", "mlx_cross_entropy", "MLX_CAPABILITIES", name="mlx",
                              description="mlx.nn.losses.cross_entropy (axis=-1)"),
    "tinygrad": _framework_builtin("tinygrad_adapter", "tinygrad_cross_entropy", "TINYGRAD_CAPABILITIES",
                                   name="tinygrad", class_axis=1, description="tinygrad Tensor.cross_entropy"),
    "tinygrad-sparse": _framework_builtin("tinygrad_adapter", "tinygrad_sparse_cross_entropy",
                                          "TINYGRAD_SPARSE_CAPABILITIES", name="tinygrad-sparse",
                                          description="tinygrad Tensor.sparse_categorical_crossentropy"),
    "tensorflow": _framework_builtin("tensorflow_adapter", "tensorflow_cross_entropy", "TENSORFLOW_CAPABILITIES",
                                     name="tensorflow", description="tf.nn.(sparse_)softmax_cross_entropy_with_logits, "
                                                                    "reduced with tf.reduce_sum/mean"),
})
def _transformers() -> Adapter:
    from .transformers_adapter import TransformersAdapter

    return TransformersAdapter()


BUILTIN["transformers"] = _transformers


def _library(module: str, factory: str) -> Callable[[], Adapter]:
    """A kernel library's adapter: its module imports nothing of the library until it runs."""
    return lambda: getattr(importlib.import_module(f"{__name__}.{module}"), factory)()


BUILTIN.update({
    "cut-cross-entropy": _library("cut_cross_entropy_adapter", "torch_compile_adapter"),
    "cut-cross-entropy-cce": _library("cut_cross_entropy_adapter", "triton_adapter"),
    "megatron": _library("megatron_adapter", "megatron_adapter"),
    "liger": _library("liger_adapter", "cross_entropy_adapter"),
    "liger-linear": _library("liger_adapter", "fused_linear_adapter"),
    "flash-attn": _library("gpu_kernels_adapter", "flash_attn_adapter"),
    "quack": _library("gpu_kernels_adapter", "quack_adapter"),
    "quack-linear": _library("gpu_kernels_adapter", "quack_linear_adapter"),
    "transformer-engine": _library("gpu_kernels_adapter", "transformer_engine_adapter"),
})
for _backend in ("jax", "torch", "tensorflow"):
    BUILTIN[f"keras-sparse-{_backend}"] = _framework_builtin(
        "keras_adapter", "keras_sparse_cross_entropy", "KERAS_SPARSE_CAPABILITIES", name=f"keras-sparse-{_backend}",
        backend=_backend, description=f"keras.losses.SparseCategoricalCrossentropy(from_logits=True) on {_backend}")
    BUILTIN[f"keras-categorical-{_backend}"] = _framework_builtin(
        "keras_adapter", "keras_categorical_cross_entropy", "KERAS_CATEGORICAL_CAPABILITIES",
        name=f"keras-categorical-{_backend}", backend=_backend,
        description=f"keras.losses.CategoricalCrossentropy(from_logits=True) on {_backend}")


def _linear_chunked() -> Adapter:
    from .torch_adapter import TorchAdapter, chunked_linear_cross_entropy

    return TorchAdapter(chunked_linear_cross_entropy, name="torch-linear-chunked", family="linear_cross_entropy",
                        description="F.linear_cross_entropy, chunked (LinearCrossEntropyOptions, 3 rows per chunk)",
                        needs=("torch.nn.functional.linear_cross_entropy", "torch.nn.LinearCrossEntropyOptions"))


def _entry_points() -> dict[str, Any]:
    try:
        return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # a broken environment must not break the built-ins
        return {}


def available_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_entry_points()))


def load_adapter(name: str) -> Adapter:
    """A built-in or entry-point adapter by name; unknown names are a ConfigurationError."""
    if name in BUILTIN:
        adapter = BUILTIN[name]()
        adapter.recipe = ("builtin", name)
        return adapter
    entry_points = _entry_points()
    if name in entry_points:
        try:
            factory = entry_points[name].load()
            adapter = factory() if callable(factory) and not isinstance(factory, Adapter) else factory
        except Exception as exc:
            raise ConfigurationError(f"adapter {name!r} from entry point {entry_points[name].value!r} failed to "
                                     f"load: {type(exc).__name__}: {exc}") from None
        if not isinstance(adapter, Adapter):
            raise ConfigurationError(f"entry point {name!r} did not produce an Adapter")
        return adapter
    raise ConfigurationError(f"unknown adapter {name!r}; available: {', '.join(available_names())}")


def load_adapters(names: str | list[str]) -> list[Adapter]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [load_adapter(n) for n in names]


def resolve_function(spec: str) -> Callable[..., Any]:
    """``module.path:function`` or ``path/to/file.py:function`` -> the callable.

    Errors (no colon, missing file, import failure, missing attribute, not callable) are
    ConfigurationErrors carrying the import error's own message.
    """
    if ":" not in spec:
        raise ConfigurationError(f"--impl {spec!r}: expected 'module.path:function' or 'path/to/file.py:function'")
    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        raise ConfigurationError(f"--impl {spec!r}: expected 'module.path:function' or 'path/to/file.py:function'")
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            path = Path(target).resolve()
            if not path.is_file():
                raise ConfigurationError(f"--impl {spec!r}: no such file {str(path)!r}")
            module_name = f"ce_conformance_user_{abs(hash(str(path)))}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            if module_spec is None or module_spec.loader is None:
                raise ConfigurationError(f"--impl {spec!r}: cannot import {str(path)!r}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ConfigurationError:
        raise
    except BaseException as exc:  # SystemExit/KeyboardInterrupt in user import code included
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ConfigurationError(f"--impl {spec!r}: importing {target!r} failed: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"--impl {spec!r}: {target!r} has no attribute {attribute!r}") from None
    if inspect.isclass(obj):
        obj = _module_loss(obj)
    if not callable(obj):
        raise ConfigurationError(f"--impl {spec!r}: {attribute!r} is not callable")
    return obj


def _module_loss(cls: type) -> Callable[..., Any]:
    """A loss *class* configured at construction (``torch.nn.CrossEntropyLoss(weight=...,
    ignore_index=..., reduction=..., label_smoothing=...)``) called as a function: each call
    builds the module with the case's options and applies it."""

    def call(input: Any, target: Any, weight: Any = None, **options: Any) -> Any:
        return cls(weight=weight, **options)(input, target)

    call.__name__ = call.__qualname__ = f"{cls.__name__}(...)"
    return call


def user_capabilities(features: str | None = None) -> Capabilities:
    """Capabilities for a user implementation: ``default`` (everything but the rarely-wanted
    corners), ``all``, a comma-separated list, ``-name`` to subtract (``default,-weights``)."""
    return Capabilities(features=parse_features(features))


def user_adapter(spec: str, kind: str = "torch", *, features: str | None = None, name: str | None = None,
                 device: str = "cpu", family: str = "cross_entropy", class_axis: int = 1) -> Adapter:
    """An adapter around a user function (by SPEC) with the signature of its family's torch
    function (``F.cross_entropy``, ``F.linear_cross_entropy``)."""
    if kind not in KINDS:
        raise ConfigurationError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    check_device(kind, device)
    _check_class_axis(kind, class_axis)
    adapter = function_adapter(resolve_function(spec), kind, features=features, name=name or f"impl:{spec}",
                               device=device, family=family, class_axis=class_axis)
    # how a worker rebuilds it
    adapter.recipe = ("user", spec, kind, features, name or f"impl:{spec}", device, family, class_axis)
    return adapter


def _check_class_axis(kind: str, class_axis: int) -> None:
    """``--class-axis -1`` (classes last) is for the framework kinds; torch, jax and NumPy
    functions take torch's layout.

    >>> _check_class_axis("paddle", -1)
    >>> _check_class_axis("torch", -1)
    Traceback (most recent call last):
    ...
    ce_conformance.errors.ConfigurationError: --class-axis -1 needs a framework kind (paddle, mlx, tinygrad, tensorflow, keras); --kind torch functions take torch's layout (classes on axis 1)
    """
    from .framework import BRIDGES

    if class_axis not in (1, -1):
        raise ConfigurationError(f"--class-axis {class_axis}: expected 1 (torch's layout) or -1 (classes last)")
    if class_axis == -1 and kind.partition("-")[0] not in BRIDGES:
        raise ConfigurationError(f"--class-axis -1 needs a framework kind ({', '.join(BRIDGES)}); --kind {kind} "
                                 "functions take torch's layout (classes on axis 1)")


def check_device(kind: str, device: str) -> None:
    """``--device`` places a torch function's tensors (``cuda``, ``cuda:1``, ``mps``); JAX puts its
    arrays on its default device (``JAX_PLATFORMS``) and NumPy has only the CPU.

    >>> check_device("torch", "cuda:1")
    >>> check_device("jax", "cuda")
    Traceback (most recent call last):
    ...
    ce_conformance.errors.ConfigurationError: --device 'cuda' needs --kind torch (JAX uses its default device: set JAX_PLATFORMS)
    """
    if device == "cpu":
        return
    if kind != "torch":
        hint = " (JAX uses its default device: set JAX_PLATFORMS)" if kind == "jax" else ""
        raise ConfigurationError(f"--device {device!r} needs --kind torch{hint}")
    if not re.fullmatch(r"(cpu|cuda|mps|xpu|hpu|npu)(:\d+)?", device):
        raise ConfigurationError(f"--device {device!r}: expected a torch device such as cpu, cuda or cuda:1")


def function_adapter(fn: Callable[..., Any], kind: str = "torch", *, features: str | None = None,
                     name: str | None = None, device: str = "cpu", family: str = "cross_entropy",
                     class_axis: int = 1) -> Adapter:
    """An adapter around a function object (``--kind`` semantics as for :func:`user_adapter`;
    ``device`` as for :func:`check_device`)."""
    from ce_conformance.family import family_named

    if kind not in KINDS:
        raise ConfigurationError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    family_named(family)
    if family != "cross_entropy" and kind != "torch":
        raise ConfigurationError(f"the {family} family runs torch functions only (--kind torch), not --kind {kind}")
    check_device(kind, device)
    _check_class_axis(kind, class_axis)
    if inspect.isclass(fn):
        fn = _module_loss(fn)
    capabilities = replace(user_capabilities(features), families=frozenset({family}))
    label = name or f"impl:{getattr(fn, '__qualname__', repr(fn))}"
    spec = label.removeprefix("impl:")
    if kind == "torch":
        from .torch_adapter import TorchAdapter

        where = "" if device == "cpu" else f" on {device}"
        return TorchAdapter(fn, name=label, device=device, capabilities=capabilities, family=family,
                            description=f"user function {spec} (torch{where})")
    if kind == "jax":
        from .jax_adapter import JaxFunctionAdapter

        return JaxFunctionAdapter(fn, name=label, capabilities=capabilities)
    if kind != "numpy":
        from .framework import FrameworkAdapter, bridge_for

        axis = "" if class_axis == 1 else ", classes last"
        return FrameworkAdapter(fn, bridge_for(kind), name=label, class_axis=class_axis, capabilities=capabilities,
                                description=f"user function {spec} ({kind}{axis})")
    from .numpy_adapter import NumpyAdapter

    return NumpyAdapter(fn, name=label, capabilities=replace(capabilities, gradients=False, target_gradients=False),
                        description=f"user function {spec} (numpy, forward only)")


__all__ = ["Adapter", "Capabilities", "Outcome", "RaisedError", "BUILTIN", "DEFAULT_ADAPTERS", "ECOSYSTEM_ADAPTERS", "LINEAR_ECOSYSTEM_ADAPTERS", "FAMILY_ECOSYSTEMS", "EAGER_COMPILED_PAIRS", "KINDS", "default_adapters", "load_adapter",
           "load_adapters", "user_adapter", "function_adapter", "check_device", "resolve_function", "available_names", "ENTRY_POINT_GROUP"]
