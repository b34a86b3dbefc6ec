"""How long `sitq migrate` takes to move 1,000,000 tasks from SQLite to PostgreSQL.

Builds a SQLite database with half the tasks finished (succeeded, each with a
pickled result) and half queued, then runs the real command, `sitq migrate
SRC postgresql://...`, as a user would (a fresh PostgreSQL schema, dropped
afterwards), and reports the wall time of the whole command (process start,
copy, and verification of the counts).

The finished half is made the quick way: the tasks are enqueued with
``enqueue_many`` and then marked succeeded, with a result, by one SQL UPDATE (a
worker draining 500,000 no-op tasks would only make the set-up slow; the rows
are the same shape as a worker's).

    .venv/bin/python benchmarks/migrate_bench.py [--tasks 1000000] [--chunk-size 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sitq import TaskQueue

POSTGRES_URL = os.environ.get("SITQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "sitq_migrate_bench"
SITQ = str(Path(sys.executable).with_name("sitq"))


def work(n: int) -> int:
    return n


async def build(db: Path, tasks: int) -> None:
    async with TaskQueue(str(db)) as queue:
        step = 50_000
        for start in range(0, tasks, step):
            await queue.enqueue_many(work, [(i,) for i in range(start, min(tasks, start + step))])
    finished = tasks // 2
    result = pickle.dumps({"ok": True, "value": 12345})
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE sitq_tasks SET status = 'succeeded', attempts = 1, started_at = enqueued_at, "
            "finished_at = enqueued_at + 0.01, expires_at = enqueued_at + 604800, result = ?, "
            "worker_id = 'bench-worker' WHERE rowid <= ?",
            (result, finished),
        )
    conn.close()


async def drop_schema() -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=5000)
    args = parser.parse_args()
    separator = "&" if "?" in POSTGRES_URL else "?"
    destination = f"{POSTGRES_URL}{separator}sitq_schema={SCHEMA}"
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "src.db"
        began = time.perf_counter()
        asyncio.run(build(db, args.tasks))
        print(
            f"built {args.tasks:,} tasks ({db.stat().st_size / 1e6:.0f} MB) in "
            f"{time.perf_counter() - began:.1f} s"
        )
        asyncio.run(drop_schema())
        try:
            chunk = str(args.chunk_size)
            began = time.perf_counter()
            proc = subprocess.run(
                [SITQ, "migrate", str(db), destination, "--no-progress", "--chunk-size", chunk],
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - began
            print(proc.stderr.strip())
            if proc.returncode != 0:
                raise SystemExit(f"sitq migrate failed (exit {proc.returncode})")
            print(
                f"sitq migrate: {args.tasks:,} tasks SQLite -> PostgreSQL in {seconds:.1f} s "
                f"({args.tasks / seconds:,.0f} tasks/s), chunk size {args.chunk_size}"
            )
        finally:
            asyncio.run(drop_schema())


if __name__ == "__main__":
    main()
