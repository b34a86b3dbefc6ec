"""Benchmark of sitq.batch on SQLite: enqueue_batch and collecting finished results.

Prints a Markdown table of medians over repetitions, with the command that
produced it. Each figure is compared with a baseline measured in the same run:

- enqueue: ``BatchProcessor.enqueue_batch`` of N items against the same chunks
  stored by a plain loop of ``TaskQueue.enqueue_many`` (what the layer adds);
- collect: ``BatchProcessor.collect_results`` of N finished tasks against one
  ``TaskQueue.get_results`` call over the same ids (the bare bulk read).

The task is ``abs`` (pickled by reference, as a function in an importable
module is), so the figures measure sitq rather than the pickling of a
``__main__`` function by value. Finished tasks for the collect runs are made
by claiming and finishing them through the backend directly (a benchmark
set-up, not the batch layer), each with a small int result.

    python benchmarks/batch_bench.py [--items 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sitq import TaskQueue
from sitq.backends.base import Outcome
from sitq.batch import BatchProcessor

TARGET_ENQUEUE_RATE = 50_000.0  # tasks/s, enqueue_batch of 50,000 items
TARGET_COLLECT_SECONDS = 2.0  # collecting 50,000 finished results


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    began = time.perf_counter()
    await action()
    return time.perf_counter() - began


async def enqueue_run(directory: Path, items: int, chunk: int, mode: str, repetition: int) -> float:
    """Seconds to store ``items`` tasks on a fresh database, one way."""
    path = directory / f"enqueue-{mode}-{chunk}-{repetition}.db"
    async with TaskQueue(path) as queue:
        await queue.enqueue(abs, 0)  # the schema and connections are ready
        processor = BatchProcessor(queue, batch_size=chunk)
        data = range(items)

        async def baseline() -> None:
            for start in range(0, items, chunk):
                await queue.enqueue_many(abs, data[start : start + chunk])

        if mode == "enqueue_many loop (baseline)":
            return await timed(baseline)
        if mode == "enqueue_batch":
            return await timed(lambda: processor.enqueue_batch(abs, data))
        return await timed(lambda: processor.enqueue_batch(abs, data, batch_id="bench"))


async def finish_all(queue: TaskQueue, count: int) -> None:
    """Claim and finish every queued task, with small results."""
    backend = queue._backend
    done = 0
    while done < count:
        claimed = await backend.claim("bench", ["default"], 1000, 600.0)
        if not claimed:
            raise RuntimeError(f"only {done} of {count} tasks could be claimed")
        outcomes = [
            (task.lease, Outcome("succeeded", queue.serializer.dumps(i)))
            for i, task in enumerate(claimed)
        ]
        await backend.finish(outcomes)
        done += len(claimed)


async def collect_runs(directory: Path, items: int, repeat: int) -> dict[str, list[float]]:
    """Seconds to collect ``items`` finished results, each way, ``repeat`` times."""
    times: dict[str, list[float]] = {}
    async with TaskQueue(directory / "collect.db") as queue:
        ids = await BatchProcessor(queue, batch_size=1000).enqueue_batch(
            abs, range(items), batch_id="finished"
        )
        await finish_all(queue, items)
        for _ in range(repeat):
            processor = BatchProcessor(queue)
            runs = {
                "get_results (baseline)": lambda: queue.get_results(ids),
                "collect_results(ids)": lambda p=processor: p.collect_results(ids),
                "collect_results('finished')": lambda p=processor: p.collect_results("finished"),
                "progress(ids)": lambda p=processor: p.progress(ids),
                "progress('finished')": lambda p=processor: p.progress("finished"),
            }
            for name, run in runs.items():
                times.setdefault(name, []).append(await timed(run))
        got = await BatchProcessor(queue).collect_results(ids)
        if len(got) != items or not all(result.ok for result in got.values()):
            raise RuntimeError("collection is incomplete: the benchmark is wrong")
    return times


async def main(items: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sitq-batch-bench-") as tmp:
        directory = Path(tmp)
        enqueue: dict[str, list[float]] = {}
        modes = ["enqueue_many loop (baseline)", "enqueue_batch", "enqueue_batch, named"]
        for repetition in range(repeat):
            for chunk in (100, 1000):
                for mode in modes:
                    seconds = await enqueue_run(directory, items, chunk, mode, repetition)
                    enqueue.setdefault(f"{mode}, batch_size={chunk}", []).append(seconds)
        collect = await collect_runs(directory, items, repeat)

    command = "python benchmarks/batch_bench.py " + " ".join(sys.argv[1:])
    print(
        f"`{command.strip()}`: {items:,} items, median of {repeat}, SQLite, "
        f"{os.cpu_count()} cores\n"
    )
    print("| enqueue | tasks/s | vs baseline | target |")
    print("| --- | ---: | ---: | --- |")
    for chunk in (100, 1000):
        base = statistics.median(enqueue[f"{modes[0]}, batch_size={chunk}"])
        for mode in modes:
            median = statistics.median(enqueue[f"{mode}, batch_size={chunk}"])
            rate = items / median
            target = (
                ""
                if mode == modes[0]
                else (
                    f">= {TARGET_ENQUEUE_RATE:,.0f}: "
                    + ("met" if rate >= TARGET_ENQUEUE_RATE else "MISSED")
                )
            )
            print(f"| {mode}, batch_size={chunk} | {rate:,.0f} | {base / median:.2f}x | {target} |")
    print()
    print("| collect (all finished) | seconds | vs baseline | target |")
    print("| --- | ---: | ---: | --- |")
    base = statistics.median(collect["get_results (baseline)"])
    for name, values in collect.items():
        median = statistics.median(values)
        target = ""
        if name.startswith("collect_results"):
            met = "met" if median < TARGET_COLLECT_SECONDS else "MISSED"
            target = f"< {TARGET_COLLECT_SECONDS:g} s: {met}"
        print(f"| {name} | {median:.3f} | {median / base:.2f}x | {target} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.items, arguments.repeat))
