"""Task functions that misbehave on purpose, for tests/test_worker_faults.py.

Imported by real `sitq worker` processes (tests/ is on their PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path


async def async_raise_base(kind: str) -> None:
    """Raise a BaseException that is not an Exception, from a coroutine."""
    await asyncio.sleep(0)
    raise SystemExit(3) if kind == "SystemExit" else KeyboardInterrupt()


def sync_raise_base(kind: str) -> None:
    """Raise a BaseException that is not an Exception, from a plain function."""
    raise SystemExit(3) if kind == "SystemExit" else KeyboardInterrupt()


def kill_own_worker(how: str) -> None:
    """Kill the process running this task: ``exit`` (os._exit) or ``sigkill``."""
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(9)


def note_and_sleep(log: str, marker: str, seconds: float) -> str:
    """Append ``marker`` to ``log`` (one line per run), then sleep."""
    with open(log, "a") as f:
        f.write(marker + "\n")
    time.sleep(seconds)
    return marker


def write_pid_and_sleep(pid_file: str, seconds: float) -> int:
    """Record this process's pid, then sleep (a long task in a pool child)."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def raise_text(text: str) -> None:
    """Fail with ``text`` as the error (NUL characters, lone surrogates...)."""
    raise ValueError(text)


def sized_result(size: int) -> bytes:
    """Return ``size`` bytes."""
    return b"x" * size


def timed_sleep(log: str, marker: str, seconds: float) -> None:
    """Sleep ``seconds``, noting in ``log`` when this run started and ended
    ("start|end MARKER PID TIME" lines, PID the process running it)."""
    with open(log, "a") as f:
        f.write(f"start {marker} {os.getpid()} {time.time()}\n")
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"end {marker} {os.getpid()} {time.time()}\n")
