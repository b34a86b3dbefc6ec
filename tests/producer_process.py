"""A producer process for the contention test: enqueues COUNT `jobs.record`
tasks into DB, half one at a time and half with enqueue_many."""

from __future__ import annotations

import asyncio
import sys

import jobs

from sitq import TaskQueue


async def main(db: str, prefix: str, count: int, log: str) -> None:
    async with TaskQueue(db) as queue:
        half = count // 2
        for i in range(half):
            await queue.enqueue(jobs.record, log, f"{prefix}{i}")
        rest = [(log, f"{prefix}{i}") for i in range(half, count)]
        for start in range(0, len(rest), 100):
            await queue.enqueue_many(jobs.record, rest[start : start + 100])
    print(f"enqueued {count}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
