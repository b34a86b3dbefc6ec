"""Benchmark of progress reports: a task calling ``current_task().report_progress``
on each of 100,000 items against the same task not reporting, side by side.

Each run enqueues one ``bench_tasks.hash_items`` task (hashing a 4 KB block per
item, about 3 us) on a fresh SQLite database and runs it on a worker in this
process (a thread slot, or a process-pool child). Two figures per run: the
task's own loop time (measured inside it) and enqueue-to-result time. Medians
of ``--repeat`` runs, the modes interleaved so both see the same machine.
Target: reporting every item costs at most 10% of the loop.

    python benchmarks/progress_bench.py [--items 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_tasks

from sitq import TaskQueue, Worker

TARGET = 1.10  # reporting every item: at most 10% slower


async def one_run(
    directory: Path, pool: str, report: bool, items: int, n: int
) -> tuple[float, float]:
    """(loop seconds inside the task, enqueue-to-result seconds)."""
    path = directory / f"{pool}-{report}-{n}.db"
    async with TaskQueue(path) as queue:
        worker = Worker(path, pool=pool, concurrency=1, imports=("bench_tasks",))
        await worker.start()
        try:
            began = time.perf_counter()
            task_id = await queue.enqueue(bench_tasks.hash_items, items, report)
            result = await queue.get_result(task_id, timeout=600)
            total = time.perf_counter() - began
            assert result is not None and result.ok, result and result.error
            if report:
                progress = await queue.progress(task_id)
                assert progress is not None and progress.done == items, progress
            return float(result.value), total
        finally:
            await worker.stop()


async def main(items: int, repeat: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pool in ("thread", "process"):
            figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for n in range(repeat):
                for report in (False, True):
                    figures[report].append(await one_run(Path(tmp), pool, report, items, n))
            base_loop = statistics.median(f[0] for f in figures[False])
            base_total = statistics.median(f[1] for f in figures[False])
            for report in (False, True):
                loop = statistics.median(f[0] for f in figures[report])
                total = statistics.median(f[1] for f in figures[report])
                ratio = loop / base_loop
                verdict = "" if not report else ("met" if ratio <= TARGET else "MISSED")
                label = "report_progress every item" if report else "no reports (baseline)"
                rows.append(
                    f"| {pool} | {label} | {loop:.3f} | {ratio:.3f}x | {total:.3f} "
                    f"| {total / base_total:.3f}x | {verdict} |"
                )
    print(f"`python benchmarks/progress_bench.py --items {items} --repeat {repeat}`\n")
    print(
        "| pool | task | loop s (median) | vs baseline "
        "| enqueue to result s | vs baseline | <= 1.10x |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    asyncio.run(main(options.items, options.repeat))
