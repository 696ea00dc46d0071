"""The per-task time limit (``--timeout``): a hard stop by SIGALRM where the process allows it, and the time left.

A task past its limit raises :class:`TaskTimeout` (a ``BaseException``, so a certifier's own ``except Exception``
does not swallow it); the runner records it as ``unknown`` with the reason. Certifiers that run external code
(Marabou, VNN-COMP tools) read :func:`remaining` and give the tool no more than that.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import signal
import threading
import time
from collections.abc import Iterator

_DEADLINE: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar("gcert_deadline",
                                                                                        default=None)


class TaskTimeout(BaseException):  # noqa: N818 - it is what a task is stopped by, not a bug
    """A task ran past its ``--timeout``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"timed out after {seconds:g} s (--timeout)")


def remaining() -> float | None:
    """Seconds left of the current task's limit (None: no limit); never below 0."""
    current = _DEADLINE.get()
    return None if current is None else max(0.0, current[0] - time.monotonic())


def limit() -> float | None:
    """The current task's limit in seconds, as given (None: no limit)."""
    current = _DEADLINE.get()
    return None if current is None else current[1]


def check() -> None:
    """Raise :class:`TaskTimeout` if the current task's limit has passed (for cooperative loops)."""
    current = _DEADLINE.get()
    if current is not None and time.monotonic() >= current[0]:
        raise TaskTimeout(current[1])


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Run the block under a limit of ``seconds`` (None: no limit).

    In the main thread of a process with SIGALRM the block is interrupted when the limit passes (Python code
    only: a call into native code is stopped when it returns). Elsewhere the limit is cooperative
    (:func:`check`, :func:`remaining`) and is checked once more when the block ends.
    """
    if seconds is None:
        yield
        return
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a time limit must be a finite number of seconds > 0, got {seconds}")
    token = _DEADLINE.set((time.monotonic() + seconds, seconds))
    hard = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    previous = None
    if hard:
        def expire(signum: int, frame: object) -> None:
            raise TaskTimeout(seconds)

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
        check()
    finally:
        if hard:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        _DEADLINE.reset(token)
