"""What the telemetry and signal hooks cost when nothing listens.

    python benchmarks/telemetry_overhead.py [--reps N] [--tasks N]

Each repetition runs, in fresh processes and interleaved so machine noise hits
every variant alike, one-at-a-time `await enqueue` and an in-process Worker
draining no-op tasks, for:

- ``bypassed``: the hooks' "is anyone listening?" checks replaced by a
  constant False, as if the hooks were not there;
- ``off``: as shipped, with no OpenTelemetry provider and no signal receiver
  (the default for users);
- ``on``: with an SDK tracer and meter provider installed (spans exported to
  nowhere), to show what observing costs.

Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import asyncio, json, os, sys, tempfile, time
mode = sys.argv[1]
if mode == "on":
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())  # no exporter: measure sitq's side
    metrics.set_meter_provider(MeterProvider())
import sitq.enqueuer, sitq.worker.execution
from sitq import TaskQueue, Worker
if mode == "bypassed":
    sitq.enqueuer.observed = sitq.worker.execution.observed = lambda: False
import bench_tasks

UNFINISHED = (
    # (limit_key IS NULL: the benchmarks set no limits, and it matches the index)
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM sitq_tasks"
    " WHERE status = 'queued' AND limit_key IS NULL LIMIT 1))"
    " + (SELECT count(*) FROM (SELECT 1 FROM sitq_tasks WHERE status = 'running' LIMIT 1))"
)

async def main(n):
    import sqlite3
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "t.db")
        async with TaskQueue(db) as queue:
            await queue.enqueue(bench_tasks.noop)
            started = time.perf_counter()
            for _ in range(n):
                await queue.enqueue(bench_tasks.noop)
            enqueue = n / (time.perf_counter() - started)
            worker = Worker(db, concurrency=4)
            check = sqlite3.connect(db)
            started = time.perf_counter()
            await worker.start()
            while check.execute(UNFINISHED).fetchone()[0]:
                await asyncio.sleep(0.01)
            drain = (n + 1) / (time.perf_counter() - started)
            await worker.stop()
    print(json.dumps({"enqueue": enqueue, "drain": drain}))

asyncio.run(main(int(sys.argv[2])))
"""

VARIANTS = (
    ("bypassed", "hooks bypassed"),
    ("off", "as shipped, nothing listening"),
    ("on", "SDK tracer and meter providers set"),
)


def run_child(mode: str, tasks: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(tasks)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.reps):
        for mode, _label in VARIANTS:
            result = run_child(mode, args.tasks)
            for metric in ("enqueue", "drain"):
                samples.setdefault((mode, metric), []).append(result[metric])
    command = f"python benchmarks/telemetry_overhead.py --reps {args.reps} --tasks {args.tasks}"
    print("### Telemetry and signal hooks: cost\n")
    print(f"`{command}`\n")
    print("| variant | enqueue one at a time (tasks/s) | drain, in-process worker (tasks/s) |")
    print("| --- | ---: | ---: |")
    for mode, label in VARIANTS:
        enqueue = statistics.median(samples[(mode, "enqueue")])
        drain = statistics.median(samples[(mode, "drain")])
        print(f"| {label} | {enqueue:,.0f} | {drain:,.0f} |")
    print()
    for metric in ("enqueue", "drain"):
        ratio = statistics.median(samples[("off", metric)]) / statistics.median(
            samples[("bypassed", metric)]
        )
        print(f"- {metric}: as shipped / hooks bypassed = {ratio:.3f}")


if __name__ == "__main__":
    main()
