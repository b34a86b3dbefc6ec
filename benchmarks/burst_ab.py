"""Worker CPU per task, two (or more) checkouts side by side, alternating.

    python benchmarks/burst_ab.py CHECKOUT [CHECKOUT ...] [--kind sync|async]
        [--tasks 60000] [--reps 3] [-- EXTRA WORKER OPTIONS]

Each round fills a fresh file with no-op tasks (sync ``bench_tasks.noop`` or
``async_noop``), then times `sitq worker --concurrency 8 --burst` of each
checkout draining it, start-up included, and reads the worker's CPU (user +
system) from the kernel. CPU per task is the steadier figure on a shared
machine: other processes stretch the elapsed time, much less the CPU a worker
spends. Each checkout needs its own `.venv` (`make install`).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILL = """
import sys
sys.path.insert(0, {bench!r})
from pathlib import Path
import bench_tasks, run
if {kind!r} == "async":
    bench_tasks.noop = bench_tasks.async_noop
run.fill_sitq(Path({db!r}), {tasks})
"""


def drain(checkout: Path, db: Path, kind: str, tasks: int, extra: list[str]) -> tuple[float, float]:
    """Fill ``db`` and drain it with ``checkout``'s worker: (elapsed s, CPU s)."""
    bench = str(checkout / "benchmarks")
    python = checkout / ".venv" / "bin" / "python"
    code = FILL.format(bench=bench, kind=kind, db=str(db), tasks=tasks)
    # Run from the database's folder: `python -c` puts the current directory first
    # on sys.path, where another checkout's sitq/ would win over this one's.
    subprocess.run([str(python), "-c", code], check=True, cwd=db.parent)
    command = [str(checkout / ".venv" / "bin" / "sitq"), "worker", "--db", str(db)]
    command += ["--import", "bench_tasks", "--concurrency", "8", "--burst", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command,
        env=dict(os.environ, PYTHONPATH=bench),
        capture_output=True,
        text=True,
        cwd=db.parent,
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # One "burst done" line per worker process (--processes N prints N).
    succeeded = sum(int(n) for n in re.findall(r"burst done: (\d+) succeeded", done.stdout))
    if succeeded != tasks:
        raise RuntimeError(f"{checkout}: the drain did not finish:\n{done.stdout}{done.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--kind", choices=("sync", "async"), default="sync")
    parser.add_argument("--tasks", type=int, default=60_000)
    parser.add_argument("--reps", type=int, default=3)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    figures: dict[Path, list[tuple[float, float]]] = {c: [] for c in args.checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = args.checkouts if rep % 2 == 0 else list(reversed(args.checkouts))
            for number, checkout in enumerate(order):
                db = Path(tmp) / f"r{rep}-{number}.db"
                figures[checkout].append(drain(checkout, db, args.kind, args.tasks, extra))
    for checkout, runs in figures.items():
        elapsed = statistics.median(e for e, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(
            f"{args.kind} {checkout}: {args.tasks / elapsed:,.0f} tasks/s with start-up, "
            f"CPU {cpu / args.tasks * 1e6:.1f} µs a task (medians of {len(runs)})"
        )


if __name__ == "__main__":
    sys.exit(main())
