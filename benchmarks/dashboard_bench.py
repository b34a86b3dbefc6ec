"""What the dashboard costs per refresh as data it does not show grows (issue 20.14).

Three scenarios, each in a fresh process (so peak memory is its own):

- ``batches``: 200,000 named batches; the overview's live fragment, per refresh.
- ``queues``: 2,142 queues with a task each; the overview's size and time.
- ``result``: a task whose result is 200 MB; its page and live fragment.

Run: ``python benchmarks/dashboard_bench.py [batches|queues|result]`` (all three
without an argument). The database is built with the public API, except the
200,000 batches, inserted in one statement to keep the setup short.
"""

from __future__ import annotations

import asyncio
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from starlette.testclient import TestClient

from sitq import TaskQueue
from sitq.backends.base import Outcome
from sitq.dashboard import DashboardConfig, create_app

LOCAL = "http://127.0.0.1:8765"
REPS = 7


def noop() -> None:
    """The task every scenario enqueues (never run)."""


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(client: TestClient, url: str) -> tuple[float, int]:
    """Median milliseconds of REPS GETs of ``url``, and the body's size."""
    times = []
    size = 0
    for _ in range(REPS):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text[:500]
        size = len(response.content)
    return statistics.median(times), size


async def build(db: Path, scenario: str) -> str | None:
    async with TaskQueue(db) as queue:
        if scenario == "queues":
            for i in range(2142):
                await queue.with_options(queue=f"queue-{i:04d}").enqueue(noop)
        elif scenario == "result":
            task_id = await queue.enqueue(noop)
            [claimed] = await queue._backend.claim("bench", ["default"], 1, 600.0)
            result = queue.serializer.dumps(b"x" * 200_000_000)
            await queue._backend.finish([(claimed.lease, Outcome("succeeded", result=result))])
            return task_id
    if scenario == "batches":
        with sqlite3.connect(db) as conn:
            conn.executemany(
                "INSERT INTO sitq_batches (id, created_at, size) VALUES (?, ?, 0)",
                ((f"batch-{i:06d}", 1_700_000_000.0 + i) for i in range(200_000)),
            )
    return None


def measure(scenario: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        task_id = asyncio.run(build(db, scenario))
        app = create_app(DashboardConfig(db=str(db)))
        with TestClient(app, base_url=LOCAL) as client:
            client.get("/")  # the first count sample
            before = rss_mb()
            if scenario == "result":
                urls = [f"/tasks/{task_id}", f"/live/tasks/{task_id}"]
            else:
                urls = ["/live/overview"]
            for url in urls:
                ms, size = timed(client, url)
                print(
                    f"{scenario:8} {url:45} {ms:8.1f} ms  {size / 1e6:7.3f} MB page  "
                    f"peak RSS +{rss_mb() - before:.0f} MB"
                )


def main() -> None:
    scenarios = sys.argv[1:] or ["batches", "queues", "result"]
    if len(scenarios) == 1:
        measure(scenarios[0])
        return
    for scenario in scenarios:
        subprocess.run([sys.executable, __file__, scenario], check=True)


if __name__ == "__main__":
    main()
