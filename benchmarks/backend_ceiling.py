"""Where the drain's time goes: sitq's own SQL, with no worker around it.

    python benchmarks/backend_ceiling.py [N]

Fills N no-op tasks, then claims and finishes them through SQLiteBackend alone
(one connection, as a worker has) in batches of 16 and 128, and prints tasks/s
and the time per batch spent in claim and in finish. Compare with
raw_ceiling.py (the bare SQL) and with a real `sitq worker` (run.py).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from sitq import TaskQueue
from sitq.backends.base import Outcome
from sitq.backends.sqlite import SQLiteBackend

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tasks


async def measure(path: Path, n: int, batch: int) -> str:
    async with TaskQueue(path) as queue:
        for start in range(0, n, 10_000):
            await queue.enqueue_many(bench_tasks.noop, [() for _ in range(min(10_000, n - start))])
    backend = SQLiteBackend(path)
    await backend.connect()
    claim_time = finish_time = 0.0
    rounds = done = 0
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        claimed = await backend.claim("bench", ["default"], batch, 30)
        t1 = time.perf_counter()
        if not claimed:
            break
        await backend.finish([(t.lease, Outcome("succeeded", result=b"N.")) for t in claimed])
        finish_time += time.perf_counter() - t1
        claim_time += t1 - t0
        rounds += 1
        done += len(claimed)
    elapsed = time.perf_counter() - started
    await backend.close()
    return (
        f"batch {batch:>3}: {done / elapsed:>8,.0f} tasks/s; per batch: claim "
        f"{claim_time / rounds * 1e3:.2f} ms, finish {finish_time / rounds * 1e3:.2f} ms; "
        f"per task {(claim_time + finish_time) / done * 1e6:.1f} µs"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (16, 128):
            print(asyncio.run(measure(Path(tmp) / f"b{batch}.db", n, batch)))


if __name__ == "__main__":
    main()
