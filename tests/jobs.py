"""Task functions the tests enqueue; importable by `sitq worker` subprocesses
(the tests put this folder on their PYTHONPATH)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path


def noop() -> None:
    return None


def discard(value: object) -> None:
    """Takes an argument (say a large one) and returns nothing."""


def total(values: list[int]) -> int:
    """A chord's callback: the sum of its members' results."""
    return sum(values)


def add(a: int, b: int) -> int:
    return a + b


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def keyword_only(a: int, *, key: int) -> int:
    return a + key


class Counter:
    """A bound method as a task (pickled with its instance)."""

    def __init__(self) -> None:
        self.count = 0

    def bump(self, by: int) -> int:
        self.count += by
        return self.count


def echo_kwargs(*args: object, **kwargs: object) -> dict[str, object]:
    return {"args": list(args), "kwargs": kwargs}


def append_line(path: str, line: str) -> None:
    """One atomic append (O_APPEND, one write) so concurrent writers never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def record(log: str, marker: str, seconds: float = 0.0) -> str:
    """Log 'S marker pid' at start and 'D marker pid' at the end."""
    append_line(log, f"S {marker} {os.getpid()}")
    if seconds:
        await asyncio.sleep(seconds)
    append_line(log, f"D {marker} {os.getpid()}")
    return marker


def record_sync(log: str, marker: str, seconds: float = 0.0) -> str:
    append_line(log, f"S {marker} {os.getpid()}")
    if seconds:
        time.sleep(seconds)
    append_line(log, f"D {marker} {os.getpid()}")
    return marker


def flaky(counter: str, failures: int) -> int:
    """Raise on the first ``failures`` calls (counted in a file), then succeed."""
    path = Path(counter)
    count = int(path.read_text()) if path.exists() else 0
    path.write_text(str(count + 1))
    if count < failures:
        raise RuntimeError(f"flaky failure number {count + 1}")
    return count + 1


def fail(message: str) -> None:
    raise ValueError(message)


async def async_sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


def sync_sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def getpid() -> int:
    return os.getpid()


def thread_name() -> str:
    return threading.current_thread().name


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def unpicklable_result() -> object:
    return threading.Lock()


def raise_timeout_error() -> None:
    raise TimeoutError("the task's own timeout, not sitq's")


async def raise_cancelled() -> None:
    """Await a future someone cancelled: CancelledError from the task's own code."""
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


async def ignore_cancellation(seconds: float) -> str:
    """Keep running when cancelled (misbehaving code the worker must survive)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
    return "finished anyway"


def fail_first_attempt(marker: str) -> str:
    """Raises the first time (creating ``marker``), succeeds on the retry."""
    if not os.path.exists(marker):
        Path(marker).touch()
        raise RuntimeError("first attempt fails")
    return "second attempt"


async def traced_child_span() -> str:
    """Opens a span of its own, which must nest under the worker's CONSUMER span."""
    from opentelemetry import trace

    with trace.get_tracer("jobs").start_as_current_span("inside the task"):
        await asyncio.sleep(0)
    return "traced"


async def wait_for_file(started: str, release: str, limit: float) -> str:
    """Creates ``started``, then waits (at most ``limit`` s) until ``release`` exists."""
    Path(started).touch()
    deadline = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return "released"


def record_times(log: str, marker: str, seconds: float) -> str:
    """Log 'S marker time' at the start and 'D marker time' at the end."""
    append_line(log, f"S {marker} {time.time():.6f}")
    time.sleep(seconds)
    append_line(log, f"D {marker} {time.time():.6f}")
    return marker
