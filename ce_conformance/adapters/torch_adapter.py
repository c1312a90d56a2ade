"""torch adapters: ``torch.nn.functional.cross_entropy`` on CPU or CUDA, or any function with
its signature (``--kind torch``). Gradients come from ``torch.autograd.grad`` with the case's
upstream gradient; non-contiguous layouts are real strided views."""

from __future__ import annotations

import importlib
import importlib.util
import math
import warnings
from typing import Any, Callable

import numpy as np

from ce_conformance.case import Case, Tensor
from ce_conformance.errors import ConfigurationError
from ce_conformance.outputs import requested, split_result

from .base import Adapter, Capabilities, Outcome, fingerprint, float64_copy
from .framework import Bridge

def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def to_torch(tensor: Tensor, device: str, memory_layout: str = "contiguous") -> Any:
    """A torch tensor with the tensor's exact values, laid out as the case asks."""
    import torch

    dtype = torch_dtype(tensor.dtype)
    # one conversion pass, torch's (threaded): the case's float64 (or int64) values hold every
    # value of the dtype exactly, so converting them is exact; a fresh tensor, so the case's
    # read-only array is never shared with the function under test
    view = _read_only_view(tensor.values)
    shape = tensor.shape
    if device == "cpu" and memory_layout == "contiguous" and dtype.is_floating_point:
        values = _recycled(shape, dtype)  # a vocabulary-scale input: memory already faulted in
        if values is not None:
            return values.copy_(view)
    values = view.to(dtype) if view.dtype != dtype else view.clone()
    if memory_layout == "transposed" and len(shape) >= 2:
        order = tuple(reversed(range(len(shape))))
        storage = values.permute(order).contiguous().to(device=device, dtype=dtype)
        return storage.permute(order)
    if memory_layout == "strided":
        wide = torch.zeros((*shape[:-1], 2 * shape[-1]) if shape else (2,), dtype=dtype, device=device)
        view = wide[..., ::2] if shape else wide[0]
        view.copy_(values.to(dtype))
        return view
    if memory_layout == "offset":
        flat = torch.zeros(math.prod(shape) + 3, dtype=dtype, device=device)
        flat[3:] = values.reshape(-1).to(device=device, dtype=dtype)
        return flat[3:].view(shape)
    return values.to(device=device, dtype=dtype)


class TorchAdapter(Adapter):
    """Runs a torch function with the signature of its family's torch function (``F.cross_entropy``,
    ``F.linear_cross_entropy``): the family's required tensors positionally, the rest by keyword."""

    framework = "torch"

    def __init__(self, fn: Callable[..., Any] | None = None, *, name: str = "torch", device: str = "cpu",
                 capabilities: Capabilities | None = None, description: str = "", family: str = "cross_entropy",
                 needs: tuple[str, ...] | None = None):
        """``needs``: dotted names of what the adapter calls in torch (default: the family's
        function when ``fn`` is not given); one this torch lacks makes the adapter unavailable."""
        self._fn = fn
        self.needs = needs if needs is not None else (() if fn is not None else (_family(family).torch_function,))
        self.name = name
        self.device = device
        self.family = family
        self.capabilities = capabilities or Capabilities(families=frozenset({family}))
        self.description = description or (f"torch.nn.functional.{family} on {device}" if fn is None else "")
        self.isolate_by_default = fn is not None or device != "cpu"

    def availability(self) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'ce-conformance[torch]')"
        missing = [name for name in self.needs if _resolve(name) is None]
        if missing:
            import torch

            return f"torch {torch.__version__} has no {', '.join(missing)} (linear cross-entropy needs torch >= 2.13)"
        if self.device != "cpu":
            return _device_unavailable(self.device)
        return None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device}

    def versions(self) -> dict[str, str]:
        import torch

        info = {"torch": torch.__version__}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            info["cuda"] = str(torch.version.cuda)
            info["gpu"] = torch.cuda.get_device_name()
        return info

    @property
    def fn(self) -> Callable[..., Any]:
        return family_function(self.family) if self._fn is None else self._fn

    def _synchronize(self) -> None:
        """Accelerator errors are asynchronous: wait here, so a device-side assert is reported
        in the phase (forward, backward) that raised it rather than at the first copy back."""
        if self.device != "cpu":
            import torch

            kind = self.device.partition(":")[0]
            if kind == "cuda":
                torch.cuda.synchronize(self.device)
            elif hasattr(getattr(torch, kind, None), "synchronize"):
                getattr(torch, kind).synchronize()

    probes = frozenset({"backward_twice"})

    def run(self, case: Case) -> Outcome:
        return self._call(case)

    def probe(self, case: Case, name: str) -> Outcome:
        if name not in self.probes:
            return super().probe(case, name)
        return self._call(case, backward_twice=True)

    def _call(self, case: Case, *, backward_twice: bool = False) -> Outcome:
        """Forward, backward with the case's upstream gradient and, with ``backward_twice``, the
        same backward again over the retained graph: its gradients go to
        ``extra["second_backward"]`` (or its error to ``extra["second_backward_error"]``); the
        first ones are copied out before it, since a kernel that writes into what it saved may
        write into what it returned."""
        import torch

        spec = case.spec
        tensors = {name: to_torch(tensor, self.device, case.memory_layout if name == "input" else "contiguous")
                   for name, tensor in case.tensors.items() if name != "grad_output"}
        before = {name: _fingerprint_before(tensor) for name, tensor in tensors.items()}
        x = tensors["input"]
        wants_grad = self.capabilities.gradients and x.is_floating_point()
        # the input, the family's parameters (a linear head's weight and bias), a probability target
        leaves = ["input"] + [name for name in spec.parameter_gradients if name in tensors]
        if wants_grad and self.capabilities.target_gradients and case.is_probability_target:
            leaves.append("target")
        if wants_grad:
            for name in leaves:
                tensor = tensors[name]
                tensor.requires_grad_(True) if tensor.is_leaf else tensor.retain_grad()
        positional = [tensors[name] for name in spec.required_tensors]
        kwargs = {**case.call_options(), **{name: tensors.get(name) for name in spec.optional_tensors
                                            if name != "grad_output" and (name in tensors or name == "weight")}}

        def mutated() -> tuple[str, ...]:
            return tuple(k for k, tensor in tensors.items()
                         if not _still_holds(tensor.detach(), case.tensors[k], self.device, before[k]))

        try:
            loss, returned = split_result(self.fn(*positional, **kwargs), requested(case.options))
            self._synchronize()
        except Exception as exc:
            return Outcome.failed(exc, "forward", mutated=mutated())
        if not isinstance(loss, torch.Tensor):
            return Outcome(status="ok", loss=float64_copy(np.asarray(loss, dtype=np.float64)),
                           loss_dtype=type(loss).__name__, loss_shape=tuple(np.shape(loss)), mutated=mutated())
        outcome = Outcome(loss=_numpy(loss.detach()), loss_dtype=str(loss.dtype).removeprefix("torch."),
                          loss_shape=tuple(loss.shape))
        for name, value in returned.items():  # copied now: a backward may write over what the kernel returned
            if isinstance(value, torch.Tensor):
                outcome.outputs[name] = _numpy(value.detach()).copy()
                outcome.output_dtypes[name] = str(value.dtype).removeprefix("torch.")
            else:
                outcome.outputs[name] = float64_copy(np.asarray(value, dtype=np.float64))
                outcome.output_dtypes[name] = type(value).__name__
        if wants_grad and case.is_valid and loss.requires_grad:
            if "grad_output" in case.tensors:
                upstream = to_torch(case.tensors["grad_output"], self.device)
                if upstream.shape != loss.shape:  # wrong output shape: seed with ones rather than crash
                    upstream = torch.ones_like(loss)
            else:
                upstream = torch.ones_like(loss)
            inputs, upstream = [tensors[name] for name in leaves], upstream.to(loss.dtype)
            try:
                grads = torch.autograd.grad(loss, inputs, grad_outputs=upstream, allow_unused=True,
                                            retain_graph=backward_twice)
                self._synchronize()
            except Exception as exc:
                if backward_twice:  # a graph that cannot be retained (torch.compile's donated buffers):
                    plain = self._call(case)  # no second backward to compare; the call as it runs
                    plain.extra["second_backward_unsupported"] = f"{type(exc).__name__}: {exc}"[:300]
                    return plain
                outcome.status = "error"
                outcome.error = Outcome.failed(exc, "backward").error
                outcome.mutated = mutated()
                return outcome
            for name, grad in zip(leaves, grads):
                if grad is None:
                    continue
                dtype = str(grad.dtype).removeprefix("torch.")
                value = _numpy(grad).copy() if backward_twice else _numpy(grad)
                if name == "input":
                    outcome.grad_input, outcome.grad_input_dtype = value, dtype
                    outcome.grad_input_shape = tuple(grad.shape)
                elif name == "target":
                    outcome.grad_target, outcome.grad_target_dtype = value, dtype
                else:
                    outcome.parameter_gradients[name] = value
                    outcome.parameter_gradient_dtypes[name] = dtype
            if backward_twice:
                try:
                    again = torch.autograd.grad(loss, inputs, grad_outputs=upstream, allow_unused=True)
                    self._synchronize()
                    outcome.extra["second_backward"] = {name: _numpy(grad) for name, grad in zip(leaves, again)
                                                        if grad is not None}
                except Exception as exc:
                    outcome.extra["second_backward_error"] = Outcome.failed(exc, "backward").error
        outcome.mutated = mutated()
        return outcome


def _device_unavailable(device: str) -> str | None:
    """Why torch cannot place tensors on ``device`` here, or None."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            built = "built with CUDA" if torch.version.cuda else "a CPU-only build"
            return f"CUDA is not available (torch {torch.__version__} is {built}; no GPU visible)"
        if index and int(index) >= torch.cuda.device_count():
            return f"{device}: only {torch.cuda.device_count()} CUDA device(s) visible"
        return None
    backend = getattr(torch.backends, kind, None) if kind == "mps" else getattr(torch, kind, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        return f"torch {torch.__version__} has no usable {kind!r} device here"
    return None


def _recycled(shape: tuple[int, ...], dtype: Any) -> Any:
    """A CPU tensor of ``shape`` and floating ``dtype`` in recycled memory
    (:mod:`ce_conformance.buffers`), or None (below its size threshold, or another dtype). The
    tensor keeps its buffer busy for as long as it (or anything the function under test kept of
    it) lives."""
    import torch

    from ce_conformance import buffers

    storage = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16,
               torch.bfloat16: np.uint16}.get(dtype)  # same width: bfloat16 has no NumPy dtype
    if storage is None or math.prod(shape) * np.dtype(storage).itemsize < buffers.MIN_BYTES:
        return None
    return torch.from_numpy(buffers.empty(shape, storage)).view(dtype)


def _read_only_view(values: np.ndarray) -> Any:
    """A torch view of a case's read-only values, for reading only."""
    import torch

    source = np.require(values, requirements="C")  # (ascontiguousarray would make a 0-d array 1-d)
    with warnings.catch_warnings():  # from_numpy of a read-only array: nothing writes to this view
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(source)


MUTATION_CHECK_ELEMENTS = 1 << 20
"""Elements per chunk of :func:`_still_holds`'s comparison."""

FINGERPRINT_MIN_ELEMENTS = 1 << 25
"""Inputs at least this large are checked by fingerprints (:func:`_fingerprint_before`): there
torch's comparison costs 0.05 s and more (0.22 s at N = 1024, C = 128256). Smaller ones never
load the engine into a worker process, where loading it (0.7 s, a few seconds in a fresh
environment) would count against the first case's time limit."""


def _fingerprint_before(tensor: Any) -> int | None:
    """The fingerprint (:func:`~ce_conformance.adapters.base.fingerprint`) of a large contiguous
    CPU float tensor fresh from :func:`to_torch`, for :func:`_still_holds` after the call; None for
    any other tensor, or where the numba engine is not in use (its NumPy body would cost more
    than the comparison it saves)."""
    if (tensor.device.type != "cpu" or not tensor.is_floating_point() or not tensor.is_contiguous()
            or tensor.numel() < FINGERPRINT_MIN_ELEMENTS):
        return None
    return fingerprint(_bits(tensor.detach()).numpy(), engine_only=True)


def _still_holds(tensor: Any, source: Tensor, device: str, before: int | None = None) -> bool:
    """Whether a tensor :func:`to_torch` made of ``source`` still holds its values bit for bit.
    Given ``before``, its fingerprint fresh from the conversion, and still contiguous on CPU: by
    its fingerprint now (one read of the tensor, 0.017 s at N = 1024, C = 128256, where comparing
    it with the case's float64 values read three times the bytes and cost 0.13 s, and torch's
    comparison below 0.22 s); a changed element is always seen, several changed ones but for a
    chance of about 2^-64. Otherwise compared with a fresh conversion, a chunk of leading-axis
    slices at a time (a clone taken before the call did the same with a full copy: half a GB of
    new memory at vocabulary scale)."""
    dtype = torch_dtype(source.dtype)
    if tuple(tensor.shape) != source.shape or tensor.dtype != dtype:
        return False
    values = source.values
    if before is not None and tensor.device.type == "cpu" and tensor.is_contiguous():
        return fingerprint(_bits(tensor).numpy()) == before
    if tensor.dim() == 0:
        return _bitwise_equal(tensor, _read_only_view(values).to(device, dtype))
    step = max(1, MUTATION_CHECK_ELEMENTS // max(1, math.prod(source.shape[1:])))
    return all(_bitwise_equal(tensor[start:start + step], _read_only_view(values[start:start + step]).to(device, dtype))
               for start in range(0, source.shape[0], step))


def _bitwise_equal(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two tensors (NaN payloads included), without leaving torch."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(torch.equal(_bits(a), _bits(b)))
    return bool(torch.equal(a, b))


def _bits(tensor: Any) -> Any:
    """A float tensor's bits as integers of its width (a view where it is contiguous)."""
    import torch

    return tensor.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def _numpy(tensor: Any) -> np.ndarray:
    """NumPy array of a torch output of any dtype, values exact: float32 for float32 and the half
    dtypes (bfloat16 has no NumPy dtype; float32 holds every half value), float64 for float64,
    int64 for integers. Shares memory only with outputs this adapter owns (the loss and the
    gradients autograd returned), which nothing writes to afterwards; at vocabulary scale a
    float64 copy of the gradient cost a third of the adapter's overhead."""
    import torch

    if tensor is None:
        return np.zeros(0)
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        if tensor.dtype != wide:  # a half gradient widened: at vocabulary scale into recycled pages
            out = _recycled(tuple(tensor.shape), wide)  # (fresh ones cost 0.13 s of 0.35 s in bfloat16)
            if out is not None:
                return out.copy_(tensor).numpy()
        return tensor.to(wide).numpy()
    return tensor.to(torch.int64).numpy()


def family_function_name(family: str) -> str:
    """``F.cross_entropy``, ``F.linear_cross_entropy``: the family's torch function, as users write it."""
    return _family(family).torch_function.replace("torch.nn.functional.", "F.")


def family_function(family: str) -> Callable[..., Any]:
    """torch's own function of a loss family (``F.cross_entropy``, ``F.linear_cross_entropy``)."""
    function = _resolve(_family(family).torch_function)
    if function is None:
        raise AttributeError(f"this torch has no {_family(family).torch_function}")
    return function


def _family(name: str) -> Any:
    from ce_conformance.family import family_named

    return family_named(name)


def _resolve(dotted: str) -> Any:
    """``torch.nn.functional.linear_cross_entropy`` -> the object, None where this torch lacks it."""
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


RECOMPILE_LIMIT = 256
"""Graphs per compiled function a run may build: every dtype, reduction and option set of a
family, twice over. dynamo's own default is 8, past which it runs the function *eagerly* (or,
with ``fullgraph=True``, raises): a compiled adapter would pass compiled code it never ran."""


def lift_recompile_limit() -> None:
    """Let dynamo compile a graph for every configuration a run draws (in the adapter's worker process)."""
    import torch._dynamo

    config = torch._dynamo.config  # torch < 2.6 names the limit cache_size_limit
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))


class TorchCompileAdapter(TorchAdapter):
    """``torch.compile(F.cross_entropy, dynamic=True)`` (or the family's function): eager vs
    compiled parity (nightly).

    Shapes are symbolic, so recompilations follow the guards (dtype, weight present, reduction,
    ...) rather than every shape; ``compilations`` counts the graphs compiled and
    ``compile_seconds`` the time the first call of each new graph took (the amortised cost).
    The backend is ``$CE_TORCH_COMPILE_BACKEND`` (default ``inductor``).

    ``compile_budget`` (seconds, ``$CE_TORCH_COMPILE_BUDGET``; ``--compile-budget``): once that
    much time went into new graphs, a case whose configuration (:func:`compile_configuration`)
    has not run yet is skipped with the reason instead of compiled: on a cold inductor cache each
    new graph costs ~3 s and a 300-example nightly spent 440 s compiling. Never run eagerly: a
    compiled adapter must not pass code it did not compile."""

    def __init__(self, backend: str | None = None, *, family: str = "cross_entropy", name: str = "torch-compile",
                 compile_budget: float | None = None):
        import os

        function = family_function_name(family)
        super().__init__(name=name, family=family, description=f"torch.compile({function}, dynamic=True)")
        self.backend = backend or os.environ.get("CE_TORCH_COMPILE_BACKEND", "inductor")
        self.compile_budget = compile_budget if compile_budget is not None else _budget_from_environment()
        self._configurations: set[tuple[Any, ...]] = set()
        self.budget_skips = 0
        # in a worker process: an inductor kernel can abort the process (an out-of-range target
        # raised a C++ exception past Python in a nightly run), and the lifted recompile limit stays there
        self.isolate_by_default = True
        self._compiled = None
        self.compilations = 0
        self.compile_seconds = 0.0

    def availability(self) -> str | None:
        reason = super().availability()
        if reason:
            return reason
        import torch

        if not hasattr(torch, "compile"):
            return f"torch {torch.__version__} has no torch.compile"
        return None

    @property
    def fn(self):
        if self._compiled is None:
            import torch

            self._compiled = torch.compile(family_function(self.family), dynamic=True, backend=self.backend)
        return self._compiled

    def run(self, case: Case) -> Outcome:
        import time

        from torch._dynamo.utils import counters

        configuration = compile_configuration(case)
        if configuration not in self._configurations:
            if self.compile_budget is not None and self.compile_seconds >= self.compile_budget:
                self.budget_skips += 1
                return Outcome.skipped(
                    f"compile budget: {self.compile_seconds:.0f} s of {self.compile_budget:g} s spent compiling "
                    f"{self.compilations} graphs; this configuration has none yet (not run eagerly)")
            self._configurations.add(configuration)
        lift_recompile_limit()
        before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        outcome = super().run(case)
        new = counters["stats"]["unique_graphs"] - before
        if new:
            self.compilations += new
            self.compile_seconds += time.perf_counter() - start
        return outcome


COMPILE_BUDGET_VARIABLE = "CE_TORCH_COMPILE_BUDGET"


def parse_compile_budget(value: str | None, source: str = COMPILE_BUDGET_VARIABLE) -> float | None:
    """Seconds of a compile budget as given (``--compile-budget`` or its environment variable):
    None for unset or 'none'; ``source`` names the setting in the error."""
    value = (value or "").strip().lower()
    if value in ("", "none"):
        return None
    try:
        budget = float(value)
    except ValueError:
        raise ConfigurationError(f"{source} must be a number of seconds or 'none', not {value!r}") from None
    if budget < 0:
        raise ConfigurationError(f"{source} must not be negative, got {value}")
    return budget


def _budget_from_environment() -> float | None:
    import os

    return parse_compile_budget(os.environ.get(COMPILE_BUDGET_VARIABLE))


def compile_configuration(case: Case) -> tuple[Any, ...]:
    """What decides whether dynamo needs a new graph for a case, as near as the case tells: each
    tensor's dtype and rank, the options (floats are specialised: every smoothing value is its
    own graph), the memory layout. Shapes are symbolic. A coarser key would compile past the
    budget, a finer one skip a case whose graph exists; either only moves the budget's edge."""
    tensors = tuple(sorted((name, t.dtype, len(t.shape)) for name, t in case.tensors.items()))
    options = tuple(sorted((k, repr(v)) for k, v in case.options.items()))
    return case.family, tensors, options, case.memory_layout


LINEAR_CHUNK_ROWS = 3
"""Rows per chunk of the ``torch-linear-chunked`` adapter: small, so that drawn batches cross
several chunk boundaries and end in a partial chunk."""


def chunked_linear_cross_entropy(*args: Any, **kwargs: Any) -> Any:
    """torch's chunked ``linear_cross_entropy`` path (``LinearCrossEntropyOptions``), which never
    materialises the logits, with torch's default accumulation policy (what a user gets).
    Where torch does not support chunking (K-dim, smoothing, non-int64 targets, other reductions)
    it falls back to its reference path with a warning."""
    import torch.nn.functional as F
    from torch.nn import LinearCrossEntropyOptions

    options = LinearCrossEntropyOptions(batch_chunk_size=LINEAR_CHUNK_ROWS, chunking_method=None)
    return F.linear_cross_entropy(*args, options=options, **kwargs)


class TorchBridge(Bridge):
    """torch tensors and ``torch.autograd.grad`` for the framework adapters (Keras on its torch
    backend)."""

    kind = "torch"
    package = "torch"
    extra = "torch"
    repro_prelude = (
        "import numpy as np",
        "import torch",
        "",
        "def tensor(blob, storage, dtype, shape):",
        "    return torch.from_numpy(np.frombuffer(base64.b64decode(blob), dtype=storage).reshape(shape).copy())"
        ".to(getattr(torch, dtype))",
    )
    repro_value = '{0}.detach().float().numpy() if {0}.dtype == torch.bfloat16 else {0}.detach().numpy()'
    repro_gradient = (
        'def gradient(f, x, upstream):',
        '    x = x.detach().requires_grad_(True)',
        '    loss = f(x)',
        '    up = torch.ones_like(loss) if upstream is None else upstream.to(loss.dtype).reshape(loss.shape)',
        '    (g,) = torch.autograd.grad(loss, x, up, allow_unused=True)',
        '    return loss, None if g is None else g.double().numpy()',
    )

    def module(self) -> Any:
        return importlib.import_module("torch")

    def versions(self) -> dict[str, str]:
        return {"torch": self.module().__version__}

    def tensor(self, values: np.ndarray, dtype: str) -> Any:
        torch = self.module()
        staging = np.float32 if dtype == "bfloat16" else None
        return torch.from_numpy(np.array(values, dtype=staging, copy=True)).to(torch_dtype(dtype))

    def numpy(self, tensor: Any) -> np.ndarray:
        torch = self.module()
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            import ml_dtypes

            return tensor.to(torch.float32).numpy().astype(ml_dtypes.bfloat16)
        return tensor.numpy().copy()

    def vjp(self, fn: Callable[..., Any], primals: list[Any]) -> tuple[Any, Callable[[np.ndarray], list[Any]]]:
        torch = self.module()
        primals = [p.requires_grad_(True) for p in primals]
        output = fn(*primals)

        def pullback(cotangent: np.ndarray) -> list[Any]:
            upstream = torch.from_numpy(np.asarray(cotangent, dtype=np.float64)).to(output.dtype)
            return list(torch.autograd.grad(output, primals, upstream, allow_unused=True))

        return output, pullback

    def move_axis(self, tensor: Any, source: int, destination: int) -> Any:
        return tensor.movedim(source, destination)

    def smoke(self, x: Any) -> Any:
        return x.logsumexp(dim=tuple(range(x.dim())))
