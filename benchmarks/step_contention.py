"""What a statement of many rows costs the database thread beside a busy thread.

    python benchmarks/step_contention.py [--tasks 20000] [--batch 32] [--reps 3]

Python's sqlite3 lets go of the GIL around every ``sqlite3_step``, and a step
gives one row: ``executemany`` steps once per row, a ``RETURNING`` or a SELECT
once per row it returns. After each step the thread must take the GIL back, and
a thread that holds it (a busy event loop) keeps it up to its switch interval
(5 ms). This times, on a fresh file of sitq's schema, stdlib ``sqlite3`` running
sitq's own statements in a thread, alone and beside a thread that spins in
Python (the worst case of a busy loop), per task:

- finish, ``executemany`` of ``finish`` (one step per outcome), against
  ``finish_rows`` (one statement and one step per batch, what a worker runs);
- claim, ``claim_ready`` with its ``RETURNING`` rows fetched (one step per row).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks

from sitq import TaskQueue
from sitq.backends.sqlite.schema import SQL

RESULT = b"\x80\x04N."  # a pickled None


async def _fill(db: Path, tasks: int) -> None:
    async with TaskQueue(db) as queue:
        for start in range(0, tasks, 10_000):
            count = min(10_000, tasks - start)
            await queue.enqueue_many(bench_tasks.noop, [() for _ in range(count)])


def _finish_rows_sql(rows: int) -> str:
    return SQL.finish_rows.replace("{values}", ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows))


def finish(conn: sqlite3.Connection, tasks: int, batch: int, one_statement: bool) -> None:
    """Finish every task, ``batch`` outcomes a transaction."""
    ids = [row[0] for row in conn.execute("SELECT id FROM sitq_tasks ORDER BY rowid")]
    conn.execute("UPDATE sitq_tasks SET status = 'running', worker_id = 'w', attempts = 1")
    for start in range(0, tasks, batch):
        now = time.time()
        rows = [
            ("succeeded", RESULT, None, None, now, 604800.0, now, task_id, "w", 1)
            for task_id in ids[start : start + batch]
        ]
        conn.execute("BEGIN IMMEDIATE")
        if one_statement:
            conn.execute(_finish_rows_sql(len(rows)), [value for row in rows for value in row])
        else:
            conn.executemany(SQL.finish, rows)
        conn.execute("COMMIT")


def claim(conn: sqlite3.Connection, tasks: int, batch: int) -> None:
    """Claim every task, ``batch`` a transaction, fetching the claim's rows."""
    sql = SQL.claim_ready.format(queues="?")
    taken = 0
    while taken < tasks:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(sql, ["w", time.time() + 60, "default", time.time(), batch]).fetchall()
        conn.execute("COMMIT")
        taken += len(rows)


def timed(
    base: Path, work: Callable[[sqlite3.Connection], None], tasks: int, spin: bool
) -> tuple[float, float]:
    """(wall, CPU) µs a task of ``work`` on a copy of ``base``, in a thread of its own."""
    db = base.with_name(f"copy-{time.monotonic_ns()}.db")
    shutil.copy(base, db)
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous = NORMAL")
    stop = threading.Event()

    def spinner() -> None:
        while not stop.is_set():
            sum(range(100))

    spinning = threading.Thread(target=spinner)
    if spin:
        spinning.start()
    out: dict[str, float] = {}

    def run() -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        work(conn)
        out["wall"] = (time.perf_counter() - wall) / tasks * 1e6
        out["cpu"] = (time.thread_time() - cpu) / tasks * 1e6

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    stop.set()
    if spin:
        spinning.join()
    conn.close()
    return out["wall"], out["cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    n, batch = args.tasks, args.batch
    cases: dict[str, Callable[[sqlite3.Connection], None]] = {
        f"finish, executemany of {batch}": lambda c: finish(c, n, batch, False),
        f"finish, one statement of {batch}": lambda c: finish(c, n, batch, True),
        f"claim of {batch * 4}, RETURNING fetched": lambda c: claim(c, n, batch * 4),
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.db"
        asyncio.run(_fill(base, n))
        samples: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for _ in range(args.reps):
            for name, work in cases.items():
                for spin in (False, True):
                    samples.setdefault((name, spin), []).append(timed(base, work, n, spin))
    print(f"| {n:,} tasks, µs a task (medians of {args.reps}) | wall | CPU |")
    print("| --- | ---: | ---: |")
    for (name, spin), values in samples.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        where = "beside a spinning thread" if spin else "alone"
        print(f"| {name}, {where} | {wall:,.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
