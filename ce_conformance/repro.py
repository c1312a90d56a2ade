"""Standalone repro scripts for saved cases: only torch (or jax) needed to see the divergence.

Each saved failing case ``X.json`` gets ``X.py`` beside it. The script rebuilds the tensors
from exact bytes (base64), calls the implementation under test (the case family's torch function,
``F.cross_entropy`` or ``F.linear_cross_entropy``, with that family's signature, for a built-in
torch adapter; the user's function for ``--impl``) and prints its result next to the
reference value computed by ce-conformance when the case was saved.
"""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from .case import Case
from .dtypes import numpy_dtype
from .errors import InvalidInputError
from .outputs import requested


def replay_command(case_path: str | Path, adapter_name: str, impl_spec: str | None = None,
                   impl_kind: str | None = None, oracle: str = "reference", *, device: str = "cpu",
                   class_axis: int = 1) -> str:
    """The one-line CLI command that replays a saved case against the same adapter, on the same
    device, judged by the same oracle (a built-in adapter's name names its device already).

    >>> replay_command("c.json", "torch", oracle="torch")
    'ce-conformance replay c.json --adapters torch --oracle torch'
    >>> replay_command("c.json", "impl:k.py:ce", "k.py:ce", "torch", device="cuda")
    'ce-conformance replay c.json --impl k.py:ce --device cuda'
    """
    parts = ["ce-conformance", "replay", str(case_path)]
    if impl_spec:
        parts += ["--impl", impl_spec] + (["--kind", impl_kind] if impl_kind and impl_kind != "torch" else [])
        parts += ["--device", device] if device != "cpu" else []
        parts += ["--class-axis", str(class_axis)] if class_axis != 1 else []
    else:
        parts += ["--adapters", adapter_name]
    if oracle != "reference":
        parts += ["--oracle", oracle]
    return " ".join(shlex.quote(p) for p in parts)


def _blob(values: np.ndarray, dtype: str) -> str:
    raw = np.ascontiguousarray(values.astype(numpy_dtype(dtype).newbyteorder("<")) if dtype != "bfloat16"
                               else values.astype(np.float32).astype("<f4"))
    return base64.b64encode(raw.tobytes()).decode("ascii")


def _framework_lines(adapter: Any, case: Case, impl_spec: str | None) -> list[str]:
    """The case's call in the adapter's framework: its tensors (classes moved last where the
    function takes them so), the function (a built-in's own source, or the user's import), and
    the loss printed."""
    lines = [*adapter.bridge.repro_prelude, ""]
    if adapter.class_axis == -1:
        lines.append("# classes on the last axis, as the function takes them")
    for name, tensor in case.tensors.items():
        if name == "grad_output":
            continue
        values = tensor.values
        moves = adapter.class_axis == -1 and values.ndim >= 2 and (name == "input" or tensor.shape == case.input.shape)
        values = np.moveaxis(values, 1, -1) if moves else values
        storage = _storage_dtype(tensor.dtype)
        lines.append(f"{name} = tensor({_blob(values, tensor.dtype)!r}, {storage!r}, {tensor.dtype!r}, "
                     f"{list(values.shape)!r})")
    if "weight" not in case.tensors:
        lines.append("weight = None")
    if adapter.source is None:  # a user's function: imported as the run did
        lines += _import_lines(impl_spec or adapter.name.removeprefix("impl:"))
    else:
        lines += ["", *adapter.source.rstrip().splitlines(), "", f"fn = {adapter.fn.__name__}"]
    options = ", ".join(f"{k}={v!r}" for k, v in case.call_options().items())
    lines += [f"{_results(case)} = fn(input, target, weight=weight, {options})",
              f"print('got     ', ({adapter.bridge.repro_value.format('loss')}), loss.dtype)"]
    return lines + _output_lines(case)


def _results(case: Case) -> str:
    """The names a call's result unpacks into: the loss, then the outputs the case asks for."""
    return ", ".join(("loss", *requested(case.options)))


def _output_lines(case: Case) -> list[str]:
    """Print each output the call returned beside the loss (:mod:`ce_conformance.outputs`)."""
    return [f"print('got {name}', {name}, getattr({name}, 'dtype', ''))" for name in requested(case.options)]


def _gradient_lines(adapter: Any, case: Case, check: str, message: str, result: Any) -> list[str]:
    """For a gradient finding: that gradient from the framework's own autodiff with the run's
    upstream gradient, printed at the element the finding names beside ``result``'s (the
    reference's, gradients included)."""
    if result is None or not (check.startswith("grad_") and case.is_valid and adapter.capabilities.gradients):
        return []
    options = ", ".join(f"{k}={v!r}" for k, v in case.call_options().items())
    which = "target" if check.startswith("grad_target") else "input"
    lines = ["", *adapter.bridge.repro_gradient, ""]
    upstream = case.tensors.get("grad_output")
    if upstream is None:
        lines.append("grad_output = None  # ones")
    else:
        lines.append(f"grad_output = tensor({_blob(upstream.values, upstream.dtype)!r}, "
                     f"{_storage_dtype(upstream.dtype)!r}, {upstream.dtype!r}, {list(upstream.shape)!r})")
    call = ("lambda t: fn(input, t, weight=weight, " if which == "target" else "lambda x: fn(x, target, weight=weight, ")
    lines += [f"loss, grad = gradient({call}{options}), {which}, grad_output)",
              "if grad is None:  # no gradient flowed: zeros, as the run counted it",
              f"    grad = np.zeros({list(_call_shape(adapter, case))!r})"]
    if adapter.class_axis == -1 and case.input.ndim >= 2:
        lines.append("grad = np.moveaxis(grad, -1, 1)  # back to torch's layout: classes on axis 1")
    expected = getattr(result, f"grad_{which}")
    found = re.search(r"at \[([\d, ]*)\]", message)
    index = tuple(int(i) for i in found.group(1).split(",") if i.strip()) if found else None
    if expected is not None and index is not None and len(index) == expected.ndim:
        lines += [f"print('got      grad_{which}{list(index)}', grad[{index!r}])",
                  f"print('expected grad_{which}{list(index)}', {_literal(float(expected[index]))}, '(float64 reference)')"]
    else:
        lines.append(f"print('got      grad_{which}', grad)")
        if expected is not None and expected.size <= 64:
            lines.append(f"print('expected grad_{which}', np.array({_literal(expected.tolist())}), '(float64 reference)')")
    return lines


def _call_shape(adapter: Any, case: Case) -> tuple[int, ...]:
    """The input's shape as the adapter's function receives it (classes last for class_axis -1)."""
    shape = tuple(case.input.shape)
    return shape[:1] + shape[2:] + shape[1:2] if adapter.class_axis == -1 and len(shape) >= 2 else shape


def _literal(value: Any) -> str:
    """Python source for a float or nested list of floats, NaN and infinities included.

    >>> _literal([1.5, float("nan"), -float("inf")])
    "[1.5, float('nan'), float('-inf')]"
    """
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value) if np.isfinite(value) else f"float({str(value)!r})"


def _import_lines(impl_spec: str) -> list[str]:
    module, _, attr = impl_spec.rpartition(":")
    if module.endswith(".py"):
        return ["import importlib.util", f"_spec = importlib.util.spec_from_file_location('impl', {module!r})",
                "_mod = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(_mod)", f"fn = _mod.{attr}"]
    return [f"from {module} import {attr.split('.')[0]} as fn"]


def _defined_name(source: str) -> str:
    """The function a wrapper's source defines.

    >>> _defined_name("def liger_cross_entropy(input, target):\\n    pass")
    'liger_cross_entropy'
    """
    return re.search(r"^def (\w+)", source, re.MULTILINE).group(1)


def _storage_dtype(dtype: str) -> str:
    return "float32" if dtype == "bfloat16" else dtype


def write_repro(path: Path, case: Case, *, adapter_name: str, check: str, message: str, case_path: Path,
                impl_spec: str | None = None, impl_kind: str | None = None, oracle: str = "reference",
                device: str = "cpu", framework: Any = None) -> Path:
    """``message`` is the verdict on ``case`` itself (the saved, shrunk case), never another
    case's: the header must describe what the script reproduces. ``device``: where the failing
    run put the torch tensors (``torch-cuda``, ``--device cuda``); the script does the same.
    ``framework``: the :class:`~ce_conformance.adapters.framework.FrameworkAdapter` that failed,
    whose script is written in its framework's own API, or a kernel library's adapter
    (:class:`~ce_conformance.adapters.library.LibraryAdapter`), whose script calls its wrapper."""
    from . import reference

    kind = impl_kind or ("jax" if adapter_name in ("jax", "optax") else "torch")
    library_source = getattr(framework, "source", None) if framework is not None and kind == "torch" else None
    framework = framework if hasattr(framework, "bridge") else None  # a kernel library's is torch's script
    gradients = framework is not None and check.startswith("grad_")  # the script prints one (_gradient_lines)
    try:
        result = reference.evaluate(case, gradients=gradients) if case.is_valid else None
    except InvalidInputError:
        result = None
    expected = None if result is None else repr(result.loss.tolist())
    class_axis = getattr(framework, "class_axis", 1) if impl_spec else 1
    lines = [
        f"# ce-conformance repro for Case<{case.id}> — adapter {adapter_name!r}, check {check!r}",
        f"# {message[:300]}",
        f"# replay: {replay_command(case_path, adapter_name, impl_spec, impl_kind, oracle, device=device, class_axis=class_axis)}",
        "import base64",
        "",
    ]
    if framework is not None:
        lines += (_framework_lines(framework, case, impl_spec) + _expectation_lines(case, expected)
                  + _gradient_lines(framework, case, check, message, result))
        path.write_text("\n".join(lines) + "\n")
        return path
    if kind == "jax":
        lines += ["import numpy as np", "import jax", "jax.config.update('jax_enable_x64', True)", "import jax.numpy as jnp", "",
                  "def tensor(blob, storage, dtype, shape):",
                  "    return jnp.asarray(np.frombuffer(base64.b64decode(blob), dtype=storage).reshape(shape), dtype=dtype)", ""]
    else:
        lines += ["import torch", "", f"DEVICE = {device!r}", "", "def tensor(blob, storage, dtype, shape):",
                  "    flat = torch.frombuffer(bytearray(base64.b64decode(blob)), dtype=getattr(torch, storage))",
                  "    host = flat.reshape(shape).to(getattr(torch, dtype)) if flat.numel() else "
                  "torch.zeros(shape, dtype=getattr(torch, dtype))",
                  "    return host.to(DEVICE)", ""]
    for name, tensor in case.tensors.items():
        if name == "grad_output":
            continue
        storage = _storage_dtype(tensor.dtype)
        lines.append(f"{name} = tensor({_blob(tensor.values, tensor.dtype)!r}, {storage!r}, {tensor.dtype!r}, "
                     f"{list(tensor.shape)!r})")
    if case.memory_layout != "contiguous" and kind != "jax":
        lines.append(f"# the failing run used a non-contiguous ({case.memory_layout}) view of the input:")
        if case.memory_layout == "transposed" and case.input.ndim >= 2:
            lines.append("input = input.permute(*reversed(range(input.dim()))).contiguous()"
                         ".permute(*reversed(range(input.dim())))")
        elif case.memory_layout == "strided":
            lines.append("wide = torch.zeros(*input.shape[:-1], 2 * input.shape[-1], dtype=input.dtype, device=DEVICE); "
                         "wide[..., ::2] = input; input = wide[..., ::2]")
        else:
            lines.append("flat = torch.zeros(input.numel() + 3, dtype=input.dtype, device=DEVICE); flat[3:] = input.reshape(-1); "
                         "input = flat[3:].view(input.shape)")
    options = case.call_options()
    spec = case.spec  # the family's signature: its required tensors positional, the optional ones by keyword
    positional = ", ".join(spec.required_tensors)
    keywords = [f"{name}={name if name in case.tensors else None}" for name in spec.optional_tensors
                if name != "grad_output"]
    if impl_spec:
        lines += _import_lines(impl_spec)
    elif library_source is not None:  # a kernel library's loss: the adapter's own wrapper, which calls it
        lines += ["", *library_source.rstrip().splitlines(), "", f"fn = {_defined_name(library_source)}"]
    elif kind == "jax":
        lines += ["from ce_conformance.adapters.jax_adapter import JaxAdapter  # the built-in port; needs ce-conformance",
                  "from ce_conformance import Case",
                  f"print(JaxAdapter().run(Case.load({str(case_path)!r})).loss)", ""]
        path.write_text("\n".join(lines) + "\n")
        return path
    else:
        lines += [f"fn = {spec.torch_function}"]
    lines += [f"{_results(case)} = fn({positional}, " + ", ".join(keywords + [f"{k}={v!r}" for k, v in options.items()])
              + ")", "print('got     ', loss, getattr(loss, 'dtype', ''))", *_output_lines(case)]
    lines += _expectation_lines(case, expected)
    path.write_text("\n".join(lines) + "\n")
    return path


def _expectation_lines(case: Case, expected: str | None) -> list[str]:
    """What the script prints beside the result: the reference loss, or the error torch raises."""
    if expected is not None:
        return [f"print('expected', {expected!r}, '(float64 reference, before rounding to {case.dtype})')"]
    if case.expected_error is not None:
        return [f"print('expected an error:', {case.expected_error.value!r})"]
    return []
