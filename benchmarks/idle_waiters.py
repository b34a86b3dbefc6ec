"""CPU used by idle ``get_result`` waiters in one process (issue 20, item 12).

Enqueues N tasks that no worker runs, starts N ``get_result(timeout=...)``
waiters on them, and reports the process's CPU time per second of wall time
while they wait. Usage: ``python benchmarks/idle_waiters.py [--waiters 1000]
[--seconds 5] [--db URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from sitq import TaskQueue


def noop() -> None:
    """The task nobody runs."""


async def measure(db: str, waiters: int, seconds: float) -> float:
    """Fraction of a core used while ``waiters`` get_result calls wait."""
    async with TaskQueue(db) as queue:
        ids = await queue.enqueue_many(noop, [() for _ in range(waiters)])
        tasks = [asyncio.ensure_future(queue.get_result(i, timeout=seconds + 30)) for i in ids]
        await asyncio.sleep(1.0)  # let every waiter settle into waiting
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        used = (time.process_time() - cpu) / (time.monotonic() - wall)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--db", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "tasks.db")
        used = asyncio.run(measure(db, args.waiters, args.seconds))
    print(f"{args.waiters} idle get_result waiters: {used * 100:.1f}% of a core")


if __name__ == "__main__":
    main()
