"""Task functions of the composition tests; importable by `sitq worker` processes
(the tests put this folder on their PYTHONPATH). Side effects go to an
append-only log (O_APPEND, one write per line), so concurrent writers never
interleave and the log proves what ran, how often and in what order."""

from __future__ import annotations

import os
import time


def log(path: str, line: str) -> None:
    """Append one line atomically."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def step(value: int, path: str, name: str, fail_unless: str | None = None) -> int:
    """value + 1, logged; fails while the file ``fail_unless`` does not exist."""
    log(path, f"ran {name}")
    if fail_unless is not None and not os.path.exists(fail_unless):
        raise RuntimeError(f"{name} failed: {fail_unless} is missing")
    return (value or 0) + 1


def start(path: str, name: str) -> int:
    log(path, f"ran {name}")
    return 0


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def total(values: list[int]) -> int:
    return sum(values)


def member(i: int, path: str, work: float = 0.0) -> int:
    """A chord member: works ``work`` seconds, then logs when it finished."""
    time.sleep(work)
    log(path, f"member {i} {time.time():.6f}")
    return i * 2


def callback(values: list[int], path: str) -> int:
    """A chord callback: logs that it started and what it received."""
    log(path, f"callback-start {time.time():.6f} {len(values)} {','.join(map(str, values))}")
    return len(values)


def noop() -> None:
    return None


def noop_callback(values: list[None]) -> int:
    return len(values)
