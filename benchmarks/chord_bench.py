"""The fan-in, measured: a 10,000-member chord against draining 10,000 plain tasks.

    python benchmarks/chord_bench.py [--reps 3] [--tasks 10000] [--db URL]

Each repetition stores, in a fresh SQLite file (or PostgreSQL schema with
``--db postgresql://...``): (a) 10,000 no-op tasks with one ``enqueue_many``;
(b) one ``chord`` of 10,000 no-op members and a callback that counts the results
it receives, with one ``queue.submit``. Then one ``sitq worker --concurrency 8``
process runs it, timed from the worker's start-up line to the moment the last
task (for the chord: its callback) has finished. The two alternate, so a noisy
moment of the machine hits both. Prints a Markdown table (median, min, max) and
the ratio of the medians; the target is a chord within 1.25x of the plain drain.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_tasks  # noqa: E402
from run import Table, fresh, sitq_worker, wait_for  # noqa: E402

from sitq import TaskQueue, TaskStatus, chord  # noqa: E402


async def _store(db: str, n: int, as_chord: bool) -> tuple[str, float]:
    """Store the work; return the id that ends it and the seconds storing took."""
    async with TaskQueue(db) as queue:
        started = time.perf_counter()
        if as_chord:
            members = [queue.signature(bench_tasks.noop) for _ in range(n)]
            last = await queue.submit(chord(members, queue.signature(bench_tasks.count_results)))
        else:
            last = (await queue.enqueue_many(bench_tasks.noop, [() for _ in range(n)]))[-1]
        return last, time.perf_counter() - started


async def _wait_finished(db: str, task_id: str, timeout: float) -> float:
    """perf_counter() once ``task_id`` has succeeded: one row read every 20 ms on
    one open queue (opening one per poll would load the machine being measured)."""
    async with TaskQueue(db) as queue:
        deadline = time.monotonic() + timeout
        while await queue.status(task_id) != TaskStatus.SUCCEEDED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} did not finish in {timeout} s")
            await asyncio.sleep(0.02)
        return time.perf_counter()


def run_once(tmp: Path, db_url: str | None, n: int, as_chord: bool) -> tuple[float, float]:
    """(seconds to store, seconds from worker start to the last task finished)."""
    db = db_url or str(fresh(tmp, "chord" if as_chord else "plain"))
    schema = ""
    if db_url:
        schema = f"bench_chord_{time.monotonic_ns()}"
        db = f"{db_url}{'&' if '?' in db_url else '?'}sitq_schema={schema}"
    last, stored = asyncio.run(_store(db, n, as_chord))
    log = tmp / f"worker-{time.monotonic_ns()}.log"
    worker = sitq_worker(Path(db) if not db_url else db, log, "--concurrency", "8")  # type: ignore[arg-type]
    try:
        started = wait_for(lambda: " started: " in log.read_text(), 60, 0.002)
        done = asyncio.run(_wait_finished(db, last, 600))
    finally:
        worker.terminate()
        worker.wait(30)
    if as_chord:
        result = asyncio.run(_result(db, last))
        if result != n:
            raise RuntimeError(f"the callback received {result} results, not {n}")
    if db_url:
        asyncio.run(_drop_schema(db_url, schema))
    return stored, done - started


async def _drop_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _result(db: str, task_id: str) -> object:
    async with TaskQueue(db) as queue:
        result = await queue.get_result(task_id, timeout=10)
        return None if result is None else result.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--db", default=None, help="a postgresql:// URL (default: SQLite files)")
    args = parser.parse_args()
    command = f"python benchmarks/chord_bench.py --reps {args.reps} --tasks {args.tasks}"
    if args.db:
        command += " --db URL"
    table = Table(f"A {args.tasks:,}-member chord vs {args.tasks:,} plain tasks", command)
    plain_run: list[float] = []
    chord_run: list[float] = []
    plain_store: list[float] = []
    chord_store: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.reps):
            stored, ran = run_once(Path(tmp), args.db, args.tasks, False)
            plain_store.append(stored)
            plain_run.append(ran)
            stored, ran = run_once(Path(tmp), args.db, args.tasks, True)
            chord_store.append(stored)
            chord_run.append(ran)
    table.add(
        f"drain {args.tasks:,} plain no-op tasks (one `sitq worker --concurrency 8`)",
        plain_run,
        "s",
    )
    table.add(
        f"run a {args.tasks:,}-member chord to its callback's end (same worker)", chord_run, "s"
    )
    table.add("store the plain tasks (`enqueue_many`)", plain_store, "s")
    table.add("store the chord (`submit`, one transaction)", chord_store, "s")
    ratio = statistics.median(chord_run) / statistics.median(plain_run)
    table.notes.append(f"chord / plain drain, medians: {ratio:.2f}x (target: at most 1.25x)")
    print(table.render())


if __name__ == "__main__":
    main()
