"""Stopping a run cleanly: on a signal (SIGINT/SIGTERM) or at ``--max-time``.

Both stops are BaseExceptions, so Hypothesis never takes them for a failing example and shrinks
them; the run catches them and still writes every table for what was done.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Iterator


class Interrupted(BaseException):
    """SIGINT/SIGTERM during a run: tables are still written for what was done. A BaseException,
    so that Hypothesis does not take it for a failing example and shrink it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class OutOfTime(BaseException):
    """``--max-time`` reached: the run stops choosing cases and writes its tables. A BaseException
    for the same reason as :class:`Interrupted`."""


@contextmanager
def interrupt_guard() -> Iterator[list[bool]]:
    """Turn SIGINT/SIGTERM into :class:`Interrupted` at a safe point, restoring handlers after."""
    flag = [False]
    previous: dict[int, Any] = {}

    def handler(signum, frame):  # noqa: ARG001
        flag[0] = True
        raise Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not in the main thread: no signal handling
            pass
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
