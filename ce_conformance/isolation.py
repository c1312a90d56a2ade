"""Running untrusted adapters in a worker process: timeouts, crashes, memory limits.

A fuzzer exists to meet broken code. :class:`WorkerExecutor` runs each isolated adapter in a
persistent worker process (spawned once, reused for every case, so the cost per case stays at a
pipe round trip), under an address-space limit, and waits at most ``timeout`` seconds per case.

* the adapter raises               -> an ``error`` outcome (as in-process)
* the worker dies (``os.abort()``, segfault, OOM kill) -> a ``crash`` outcome; worker restarted
* no answer within the timeout     -> a ``timeout`` outcome; worker killed and restarted
* a CUDA error (device-side assert poisons the context) -> the outcome, then a fresh worker

Workers are rebuilt from a *recipe*, never from data out of a case file: a built-in adapter's
name, a user implementation's ``--impl`` spec, or (for function objects, e.g. ``ce_check``) the
pickled adapter passed from this process to its own child.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import pickle
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ce_conformance.adapters.base import Adapter, Outcome, RaisedError

DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_MB = 8192
STARTUP_TIMEOUT = 180.0
_CUDA_POISON = re.compile(r"CUDA error|device-side assert|cudaError|CUBLAS_STATUS|illegal memory access", re.I)


def _worker_context() -> Any:
    """A forkserver with the heavy imports preloaded: a restart after a crash is a fork of a warm
    server (tens of milliseconds) instead of a fresh interpreter importing torch (seconds). The
    server itself starts clean (no threads), so forking it is safe; spawn where unavailable."""
    try:
        context = multiprocessing.get_context("forkserver")
    except ValueError:
        return multiprocessing.get_context("spawn")
    import importlib.util

    preload = ["ce_conformance.isolation", "ce_conformance.adapters.base", "numpy"]
    preload += [m for m in ("torch",) if importlib.util.find_spec(m) is not None]
    context.set_forkserver_preload(preload)
    return context


def recipe_of(adapter: Adapter) -> tuple[Any, ...] | None:
    """How a worker rebuilds the adapter, or None when it cannot be sent to another process."""
    recipe = getattr(adapter, "recipe", None)
    if recipe is not None:
        return tuple(recipe)
    try:
        return ("pickle", pickle.dumps(adapter))
    except Exception:
        return None


def build_adapter(recipe: tuple[Any, ...]) -> Adapter:
    """The adapter a worker process runs, rebuilt from the parent's recipe (see :func:`recipe_of`)."""
    kind = recipe[0]
    if kind == "builtin":
        from ce_conformance.adapters import load_adapter

        return load_adapter(recipe[1])
    if kind == "user":
        from ce_conformance.adapters import user_adapter

        _, spec, impl_kind, features, name, device, family, class_axis = recipe
        return user_adapter(spec, impl_kind, features=features, name=name, device=device, family=family,
                            class_axis=class_axis)
    if kind == "pickle":  # produced by recipe_of() in the parent process, never read from a file
        return pickle.loads(recipe[1])
    raise ValueError(f"unknown adapter recipe {kind!r}")


def _limit_memory(megabytes: int | None) -> None:
    if not megabytes:
        return
    try:
        import resource

        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not on this platform: run unlimited
        pass


def _our_settings() -> dict[str, str]:
    """The parent's ``CE_*`` environment variables (the adapters' settings, such as the
    torch-compile backend and compile budget) as they are now: a forkserver child inherits the
    server's environment from when the server started, which may be an earlier command's."""
    return {name: value for name, value in os.environ.items() if name.startswith("CE_")}


def _worker_main(conn: Any, recipe: tuple[Any, ...], memory_mb: int | None, log_path: str | None = None,
                 settings: dict[str, str] | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    if settings is not None:
        for name in [n for n in os.environ if n.startswith("CE_") and n not in settings]:
            del os.environ[name]
        os.environ.update(settings)
    warnings.simplefilter("ignore")
    if log_path is not None:  # the framework's own chatter (C++ logs, compilers) goes to the run's log
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = os.fdopen(os.dup(1), "w", buffering=1)
        sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
        faulthandler.enable(file=sys.stderr)  # a segfault leaves its Python stack there
    try:
        adapter = build_adapter(recipe)
    except BaseException as exc:  # noqa: BLE001 - report anything, the parent decides
        conn.send(("init-error", RaisedError.from_exception(exc, "setup")))
        return
    if str(getattr(adapter, "device", "cpu")) == "cpu":
        # accelerator runtimes reserve far more virtual address space than any limit on it could
        # allow (cudaGetDeviceCount fails under RLIMIT_AS); device memory is bounded by the device
        _limit_memory(memory_mb)
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        case, probe = message
        try:
            outcome = adapter.timed_run(case, probe)
        except MemoryError as exc:
            outcome = Outcome.failed(exc, "forward")
        conn.send(("outcome", outcome))


@dataclass
class _Worker:
    process: Any
    conn: Any
    log: str | None = None
    log_offset: int = 0  # the log's size when the current case was sent: what it wrote since is its own


class WorkerExecutor:
    """Runs isolated adapters in worker processes; others in-process (see ``isolate``)."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, memory_mb: int | None = DEFAULT_MEMORY_MB,
                 isolate: str = "default", log_dir: Path | None = None):
        """``log_dir``: where each worker's stdout and stderr go (``<adapter>.log``, appended);
        None leaves them on this process's terminal."""
        if isolate not in ("default", "all", "none"):
            raise ValueError(f"isolate must be 'default', 'all' or 'none', not {isolate!r}")
        self.log_dir = log_dir
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.isolate = isolate
        self._context = _worker_context()
        self._workers: dict[str, _Worker] = {}
        self.restarts: dict[str, int] = {}
        self.not_isolated: dict[str, str] = {}

    def isolated(self, adapter: Adapter) -> bool:
        if self.isolate == "none" or adapter.name in self.not_isolated:
            return False
        return self.isolate == "all" or adapter.isolate_by_default

    def run(self, adapter: Adapter, case: Any, probe: str | None = None) -> Outcome:
        if not self.isolated(adapter):
            return adapter.timed_run(case, probe)
        worker = self._workers.get(adapter.name) or self._start(adapter)
        if worker is None:
            return adapter.timed_run(case, probe)  # could not be sent to a worker: noted in not_isolated
        if isinstance(worker, Outcome):
            return worker
        start = time.perf_counter()
        if worker.log is not None:
            try:
                worker.log_offset = os.path.getsize(worker.log)
            except OSError:
                worker.log_offset = 0
        try:
            worker.conn.send((case, probe))
        except (BrokenPipeError, OSError):
            return self._crashed(adapter, worker, start)
        if not worker.conn.poll(self.timeout):
            self._kill(adapter.name)
            return Outcome(status="timeout", seconds=time.perf_counter() - start, error=RaisedError(
                "Timeout", f"no answer within {self.timeout:g} s (worker killed and restarted)", "forward"))
        try:
            kind, outcome = worker.conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            return self._crashed(adapter, worker, start)
        outcome.seconds = time.perf_counter() - start
        if outcome.error is not None and _CUDA_POISON.search(outcome.error.message):
            self._kill(adapter.name)  # the CUDA context is unusable after a device-side assert
        return outcome

    def _start(self, adapter: Adapter) -> _Worker | Outcome | None:
        recipe = recipe_of(adapter)
        if recipe is None:
            self.not_isolated[adapter.name] = "the adapter cannot be sent to a worker process (not picklable)"
            return None
        parent, child = self._context.Pipe()
        log = self._log_path(adapter.name)
        process = self._context.Process(target=_worker_main,
                                        args=(child, recipe, self.memory_mb, log, _our_settings()),
                                        daemon=True, name=f"ce-conformance worker: {adapter.name}")
        process.start()
        child.close()
        if not parent.poll(STARTUP_TIMEOUT):
            process.kill()
            return Outcome(status="timeout", error=RaisedError("Timeout", "worker did not start", "setup"))
        try:
            kind, payload = parent.recv()
        except (EOFError, OSError):
            process.join(1)
            return Outcome(status="crash", error=RaisedError("WorkerCrash", f"worker died while starting "
                                                             f"({_exit_text(process.exitcode)})", "setup"))
        if kind != "ready":
            process.join(1)
            return Outcome.failed(RuntimeError(f"worker could not build the adapter: {payload.message}"), "setup")
        worker = _Worker(process, parent, log)
        self._workers[adapter.name] = worker
        return worker

    def _crashed(self, adapter: Adapter, worker: _Worker, start: float) -> Outcome:
        worker.process.join(5)
        code = worker.process.exitcode
        self._kill(adapter.name)
        last = _last_words(worker.log, worker.log_offset)
        return Outcome(status="crash", seconds=time.perf_counter() - start, error=RaisedError(
            "WorkerCrash", f"the implementation killed its worker process ({_exit_text(code)}); "
                           "worker restarted" + (f"; its last output: {last}" if last else ""), "forward"))

    def _log_path(self, name: str) -> str | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return str(self.log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[:120]}.log")

    def _kill(self, name: str) -> None:
        worker = self._workers.pop(name, None)
        if worker is None:
            return
        self.restarts[name] = self.restarts.get(name, 0) + 1
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(5)
        worker.conn.close()

    def close(self) -> None:
        for name, worker in list(self._workers.items()):
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            worker.process.join(2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(2)
            worker.conn.close()
            self._workers.pop(name, None)


def _last_words(log_path: str | None, since: int = 0, limit: int = 300) -> str:
    """What a dead worker wrote while running its last case (from byte ``since`` on): the fatal
    error line when the faulthandler wrote one ("Fatal Python error: Segmentation fault"),
    else its last line."""
    if log_path is None:
        return ""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(since, handle.tell() - 16384))
            lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    fatal = [line for line in lines if line.startswith("Fatal Python error")]
    return (fatal[-1] if fatal else lines[-1] if lines else "")[:limit]


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
