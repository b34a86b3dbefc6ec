"""A model of worker processes sharing one SQLite file, with no worker around it.

    python benchmarks/handover_model.py [BATCH] [PYTHON_US] [REPS]

Fills 60,000 no-op tasks, then has processes run sitq's own ``claim_ready`` of
BATCH and ``finish`` of each claimed task (stdlib sqlite3, a transaction each),
spinning PYTHON_US µs per task between them for the Python a worker spends:

- one process;
- two processes that wait for the write lock in SQLite's busy handler;
- two processes that take turns through sitq's hand-over lock
  (``sitq.backends.sqlite.writelock``) before each transaction.

Prints tasks/s (medians of REPS) and the worker CPU per task.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sitq.backends.sqlite import SQLiteBackend
from sitq.backends.sqlite.schema import SQL
from sitq.backends.sqlite.wakeup import wake_directory
from sitq.backends.sqlite.writelock import WriteLock

TASKS = 60_000


def fill(path: str) -> None:
    async def create() -> None:
        backend = SQLiteBackend(path)
        await backend.connect()
        await backend.close()

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    rows = [
        (f"id{i}", "default", "f", b"x" * 50, 0, 1.0, 1.0, 0, 1.0, None, None, None, None)
        for i in range(TASKS)
    ]
    conn.execute("BEGIN")
    conn.executemany(SQL.insert_task, rows)
    conn.execute("COMMIT")
    conn.close()


def spin(microseconds: float) -> None:
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


def work(path: str, turns: bool, batch: int, python_us: float, go: Any, done: Any) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    conn.execute("PRAGMA synchronous = NORMAL")
    lock = WriteLock(wake_directory(path)) if turns else None
    claim = SQL.claim_ready.replace("{queues}", "?")
    worker = f"w{os.getpid()}"

    def transaction(body: Callable[..., Any], *args: Any) -> Any:
        if lock is not None:
            lock.wait(0.1)
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = body(*args)
            conn.execute("COMMIT")
            return value
        finally:
            if lock is not None:
                lock.release()

    def claim_rows() -> list[Any]:
        return conn.execute(claim, (worker, 1e12, "default", 1e12, batch)).fetchall()

    go.wait()
    count = 0
    while True:
        got = transaction(claim_rows)
        if not got:
            break
        spin(python_us * len(got))
        ok = ("succeeded", b"r", None, None, 5.0, 3600.0, 4.0)
        transaction(conn.executemany, SQL.finish, [(*ok, r[0], worker, r[4]) for r in got])
        count += len(got)
    if lock is not None:
        lock.close()
    done.put(count)


def measure(
    path: str, processes: int, turns: bool, batch: int, python_us: float
) -> tuple[float, float]:
    """Tasks/s and CPU µs a task of ``processes`` processes draining a fresh file."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    fill(path)
    go, done = multiprocessing.Event(), multiprocessing.Queue()
    children = [
        multiprocessing.Process(target=work, args=(path, turns, batch, python_us, go, done))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    time.sleep(0.3)  # let them import and connect: the drain is timed from `go`
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    go.set()
    for child in children:
        child.join()
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    drained = sum(done.get() for _ in children)
    if drained != TASKS:
        raise RuntimeError(f"drained {drained} of {TASKS}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return TASKS / elapsed, cpu / TASKS * 1e6


def main() -> None:
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    python_us = float(sys.argv[2]) if len(sys.argv) > 2 else 15.0
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    setups = {
        "one process": (1, False),
        "two, SQLite's busy handler": (2, False),
        "two, taking turns (writelock)": (2, True),
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.db")
        for _ in range(reps):
            for name, (processes, turns) in setups.items():
                figures[name].append(measure(path, processes, turns, batch, python_us))
    print(f"claim {batch} + finish {batch}, {python_us:g} µs of Python a task, medians of {reps}")
    for name, runs in figures.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"  {name}: {rate:,.0f} tasks/s, CPU {cpu:.1f} µs a task")


if __name__ == "__main__":
    main()
