"""What the telemetry and signal hooks cost: this tree against a tree without them.

    python benchmarks/telemetry_overhead.py [--base COMMIT] [--reps N] [--tasks N]

Each repetition runs, in fresh processes and interleaved so machine noise hits
every variant alike, one-at-a-time `await enqueue` and an in-process Worker
draining no-op tasks, for:

- ``base``: the code at ``--base`` (default: the commit before the hooks),
  checked out into a temporary git worktree;
- ``off``: this tree with no OpenTelemetry provider (the default for users);
- ``on``: this tree with an SDK tracer and meter provider installed (spans
  exported to nowhere), to show what observing costs.

Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The last commit before the telemetry and signal hooks went in.
DEFAULT_BASE = "50ce72a"

CHILD = r"""
import asyncio, json, os, sys, tempfile, time
mode = sys.argv[1]
if mode == "on":
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())  # no exporter: measure sitq's side
    metrics.set_meter_provider(MeterProvider())
import sitq
from sitq import TaskQueue, Worker
import bench_tasks

async def main(n):
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "t.db")
        async with TaskQueue(db) as queue:
            await queue.enqueue(bench_tasks.noop)
            started = time.perf_counter()
            for _ in range(n):
                await queue.enqueue(bench_tasks.noop)
            enqueue = n / (time.perf_counter() - started)
            worker = Worker(db, concurrency=4)
            started = time.perf_counter()
            await worker.start()
            while True:
                stats = await queue.stats()
                if stats["totals"]["succeeded"] == n + 1:
                    break
                await asyncio.sleep(0.01)
            drain = (n + 1) / (time.perf_counter() - started)
            await worker.stop()
    print(json.dumps({"where": sitq.__file__, "enqueue": enqueue, "drain": drain}))

asyncio.run(main(int(sys.argv[2])))
"""


def run_child(tree: Path, mode: str, tasks: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(HERE)]))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(tasks)],
        env=env,
        cwd=tree.parent,  # not the repository: sitq must come from $PYTHONPATH
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["where"].startswith(str(tree)), f"imported the wrong sitq: {result['where']}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
            check=True,
            capture_output=True,
        )
        try:
            samples: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.reps):
                for label, tree, mode in (
                    ("base", base, "off"),
                    ("off", ROOT, "off"),
                    ("on", ROOT, "on"),
                ):
                    result = run_child(tree, mode, args.tasks)
                    for metric in ("enqueue", "drain"):
                        samples.setdefault((label, metric), []).append(result[metric])
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                check=False,
            )
    command = f"python benchmarks/telemetry_overhead.py --reps {args.reps} --tasks {args.tasks}"
    print("### Telemetry and signal hooks: cost\n")
    print(f"`{command}` (base = {args.base})\n")
    print("| variant | enqueue one at a time (tasks/s) | drain, in-process worker (tasks/s) |")
    print("| --- | ---: | ---: |")
    for label, what in (
        ("base", "before the hooks"),
        ("off", "hooks, no provider"),
        ("on", "hooks, SDK providers set"),
    ):
        enqueue = statistics.median(samples[(label, "enqueue")])
        drain = statistics.median(samples[(label, "drain")])
        print(f"| {what} | {enqueue:,.0f} | {drain:,.0f} |")
    for metric in ("enqueue", "drain"):
        ratio = statistics.median(samples[("off", metric)]) / statistics.median(
            samples[("base", metric)]
        )
        print(f"\n- {metric}: no provider / before the hooks = {ratio:.3f}")


if __name__ == "__main__":
    main()
