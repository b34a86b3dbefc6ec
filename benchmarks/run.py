"""sitq benchmarks, with Huey and the raw sqlite3 ceiling measured in the same run.

    python benchmarks/run.py [--reps N] [--only NAME ...] [--quick]

Prints one Markdown table per scenario (median, min, max over the repetitions)
and writes them to benchmarks/last_run.md. RESULTS.md records a run and what
it means. Every repetition uses fresh database files in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))

import bench_tasks  # noqa: E402

from sitq import SyncTaskQueue, TaskQueue  # noqa: E402

# An inherited PYTHONPATH stays (after this folder): PYTHONPATH=CHECKOUT measures
# that checkout's sitq, in this process and in the workers it starts.
ENV = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    PYTHONUNBUFFERED="1",
)


class Table:
    """Rows of (label, samples, unit) rendered as median/min/max."""

    def __init__(self, title: str, command: str) -> None:
        self.title = title
        self.command = command
        self.rows: list[tuple[str, list[float], str]] = []
        self.notes: list[str] = []

    def add(self, label: str, samples: list[float], unit: str) -> float:
        self.rows.append((label, samples, unit))
        return statistics.median(samples)

    def render(self) -> str:
        lines = [f"### {self.title}", "", f"`{self.command}`", ""]
        lines += ["| what | median | min | max | unit |", "| --- | ---: | ---: | ---: | --- |"]
        for label, samples, unit in self.rows:
            lines.append(
                f"| {label} | {_fmt(statistics.median(samples))} | {_fmt(min(samples))} "
                f"| {_fmt(max(samples))} | {unit} |"
            )
        lines += [""] + [f"- {note}" for note in self.notes] + [""]
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def fresh(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}-{time.monotonic_ns()}.db"
    return path


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish in time")
        time.sleep(interval)
    return time.perf_counter()


# "Nothing queued or running", read through the partial indexes: cheap to poll
# every 20 ms, where counting every finished row would load the machine that
# does the draining. Each drain then checks once that every task succeeded.
UNFINISHED = (
    # (limit_key IS NULL: the benchmarks set no limits, and it matches the index)
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM sitq_tasks"
    " WHERE status = 'queued' AND limit_key IS NULL LIMIT 1))"
    " + (SELECT count(*) FROM (SELECT 1 FROM sitq_tasks WHERE status = 'running' LIMIT 1))"
)
SUCCEEDED = "SELECT count(*) FROM sitq_tasks WHERE status = 'succeeded'"


def drained(db: Path) -> bool:
    """True once no task of ``db`` is queued or running."""
    return count(db, UNFINISHED) == 0


def count(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0


# -- enqueue ------------------------------------------------------------------


async def sitq_enqueue_rates(db: Path, n: int, many: int) -> dict[str, float]:
    async with TaskQueue(db) as queue:
        started = time.perf_counter()
        for _ in range(n):
            await queue.enqueue(bench_tasks.noop)
        one = n / (time.perf_counter() - started)

        async def producer(k: int) -> None:
            for _ in range(k):
                await queue.enqueue(bench_tasks.noop)

        started = time.perf_counter()
        await asyncio.gather(*(producer(n // 100) for _ in range(100)))
        concurrent = n / (time.perf_counter() - started)

        items = [() for _ in range(many)]
        started = time.perf_counter()
        await queue.enqueue_many(bench_tasks.noop, items)
        bulk = many / (time.perf_counter() - started)

        backend = queue._backend
        conn = backend._connection()  # type: ignore[attr-defined]
        started = time.perf_counter()
        for _ in range(n):
            await conn.execute_fetchall("SELECT 1")
        hop = (time.perf_counter() - started) / n * 1e6
    return {"one": one, "concurrent": concurrent, "many": bulk, "hop_us": hop}


def sync_enqueue_rate(db: Path, n: int) -> float:
    with SyncTaskQueue(db) as queue:
        queue.enqueue(bench_tasks.noop)
        started = time.perf_counter()
        for _ in range(n):
            queue.enqueue(bench_tasks.noop)
        return n / (time.perf_counter() - started)


def huey_enqueue_rate(db: Path, n: int) -> float:
    code = (
        "import time, huey_app\n"
        f"n = {n}\n"
        "huey_app.noop()\n"
        "t = time.perf_counter()\n"
        "for _ in range(n): huey_app.noop()\n"
        "print(n / (time.perf_counter() - t))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(ENV, HUEY_DB=str(db)),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def bench_enqueue(tmp: Path, reps: int, quick: bool) -> Table:
    n, many = (1000, 20_000) if quick else (5000, 100_000)
    table = Table("Enqueue (tasks/s)", "python benchmarks/run.py --only enqueue")
    results: dict[str, list[float]] = {k: [] for k in ("one", "concurrent", "many", "hop_us")}
    sync, huey = [], []
    for _ in range(reps):
        for key, value in asyncio.run(sitq_enqueue_rates(fresh(tmp, "enq"), n, many)).items():
            results[key].append(value)
        sync.append(sync_enqueue_rate(fresh(tmp, "sync"), n))
        huey.append(huey_enqueue_rate(fresh(tmp, "huey"), n))
    h = table.add(f"Huey: {n:,} enqueues one at a time (baseline)", huey, "tasks/s")
    one = table.add(f"sitq: {n:,} `await enqueue` one at a time", results["one"], "tasks/s")
    conc = table.add(
        f"sitq: {n:,} `await enqueue` from 100 coroutines", results["concurrent"], "tasks/s"
    )
    sync_rate = table.add(f"sitq: {n:,} `SyncTaskQueue.enqueue`", sync, "tasks/s")
    bulk = table.add(f"sitq: `enqueue_many` of {many:,}", results["many"], "tasks/s")
    hop = table.add("loop-to-database-thread hop (`SELECT 1`)", results["hop_us"], "µs")
    table.notes += [
        f"one at a time: {one / h:.2f}x Huey (target >= 0.5x); the hop alone is {hop:.0f} µs, "
        f"{1e6 / one:.0f} µs per enqueue in all",
        f"100 coroutines: {conc / h:.2f}x Huey (target >= 1.5x)",
        f"SyncTaskQueue: {sync_rate / h:.2f}x Huey (target >= 1x)",
        f"enqueue_many: {bulk:,.0f} tasks/s (target >= 100,000)",
    ]
    return table


# -- drain --------------------------------------------------------------------


def fill_sitq(db: Path, n: int) -> None:
    async def fill() -> None:
        async with TaskQueue(db) as queue:
            for start in range(0, n, 10_000):
                await queue.enqueue_many(
                    bench_tasks.noop, [() for _ in range(min(10_000, n - start))]
                )

    asyncio.run(fill())


def start_process(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=HERE
    )


def sitq_worker(db: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return start_process(
        [str(BIN / "sitq"), "worker", "--db", str(db), "--import", "bench_tasks", *extra],
        log,
        ENV,
    )


def drain_sitq(tmp: Path, n: int, processes: int, supervised: bool = False) -> float:
    """``processes`` worker processes drain ``n`` no-ops: separate `sitq worker`
    commands, or (``supervised``) one `sitq worker --processes N` whose children
    all write to its one log."""
    db = fresh(tmp, "drain")
    fill_sitq(db, n)
    if supervised:
        logs = [tmp / f"sup-{time.monotonic_ns()}.log"]
        workers = [sitq_worker(db, logs[0], "--concurrency", "8", "--processes", str(processes))]
    else:
        logs = [tmp / f"w{i}-{time.monotonic_ns()}.log" for i in range(processes)]
        workers = [sitq_worker(db, log, "--concurrency", "8") for log in logs]
    per_log = 1 if not supervised else processes
    try:
        started = wait_for(
            lambda: all(log.read_text().count(" started: ") >= per_log for log in logs), 60, 0.002
        )
        done = wait_for(lambda: drained(db), 300)
        if count(db, SUCCEEDED) != n:
            raise RuntimeError(f"drain ended with {count(db, SUCCEEDED)} of {n} tasks succeeded")
        text = "".join(log.read_text() for log in logs)
        if "locked" in text.lower():
            raise RuntimeError(f"'database is locked' surfaced:\n{text}")
        return n / (done - started)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(30)


def drain_huey(tmp: Path, n: int) -> float:
    db = fresh(tmp, "huey")
    code = f"import huey_app\nfor _ in range({n}): huey_app.noop()\n"
    subprocess.run([sys.executable, "-c", code], env=dict(ENV, HUEY_DB=str(db)), check=True)
    log = tmp / f"huey-{time.monotonic_ns()}.log"
    consumer = start_process(
        [
            str(BIN / "huey_consumer"),
            "huey_app.huey",
            "-k",
            "thread",
            "-w",
            "8",
            "-d",
            "0.001",
            "-m",
            "0.001",
            "-b",
            "1.0",
            "-n",
        ],
        log,
        dict(ENV, HUEY_DB=str(db)),
    )
    try:
        started = wait_for(lambda: "consumer started" in log.read_text(), 60, 0.002)
        done = wait_for(lambda: count(db, "SELECT count(*) FROM kv") >= n, 600)
        return n / (done - started)
    finally:
        consumer.terminate()
        consumer.wait(30)


def drain_raw(tmp: Path, n: int) -> float:
    db = fresh(tmp, "raw")
    script = str(HERE / "raw_ceiling.py")
    subprocess.run([sys.executable, script, "fill", str(db), str(n)], check=True)
    out = subprocess.run(
        [sys.executable, script, "drain", str(db)], capture_output=True, text=True, check=True
    )
    return n / float(out.stdout)


def bench_drain(tmp: Path, reps: int, quick: bool) -> Table:
    n = 5000 if quick else 20_000
    table = Table(
        f"Drain of {n:,} queued no-op tasks (tasks/s)", "python benchmarks/run.py --only drain"
    )
    raw, huey, one, two, sup = [], [], [], [], []
    for _ in range(reps):
        raw.append(drain_raw(tmp, n))
        huey.append(drain_huey(tmp, n))
        one.append(drain_sitq(tmp, n, 1))
        two.append(drain_sitq(tmp, n, 2))
        sup.append(drain_sitq(tmp, n, 2, supervised=True))
    r = table.add("raw sqlite3 ceiling (claim 100 / mark done)", raw, "tasks/s")
    h = table.add("Huey, thread consumer, 8 workers", huey, "tasks/s")
    s1 = table.add("sitq, one `sitq worker --concurrency 8`", one, "tasks/s")
    s2 = table.add("sitq, two `sitq worker --concurrency 8` on one file", two, "tasks/s")
    sp = table.add("sitq, `sitq worker --processes 2 --concurrency 8`", sup, "tasks/s")
    table.notes += [
        f"one process: {s1 / h:.2f}x Huey (target >= 2x), {s1 / r:.0%} of the raw ceiling "
        "(target >= 30%)",
        f"two processes: {s2 / s1:.2f}x one process (target > 1x); no 'database is locked' "
        "in any worker's output (checked)",
        f"--processes 2: {sp / s1:.2f}x one process (issue 18 target >= 1.6x)",
        "timed from the worker's 'started' log line (the last of them) to the last result stored",
    ]
    return table


# -- latency and idle cost ------------------------------------------------------


async def latency_samples(db: Path, samples: int) -> list[float]:
    async with TaskQueue(db) as queue:
        out = []
        for _ in range(samples):
            started = time.perf_counter()
            task_id = await queue.enqueue(bench_tasks.noop)
            await queue.get_result(task_id, timeout=10)
            out.append((time.perf_counter() - started) * 1000)
        return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_latency(tmp: Path, reps: int, quick: bool) -> Table:
    samples, idle = (200, 3.0) if quick else (500, 10.0)
    table = Table(
        "Enqueue-to-result latency, idle worker in another process",
        "python benchmarks/run.py --only latency",
    )
    p50, p90, p99, cpu = [], [], [], []
    for _ in range(reps):
        db = fresh(tmp, "lat")
        fill_sitq(db, 0)
        log = tmp / f"lat-{time.monotonic_ns()}.log"
        worker = sitq_worker(db, log)
        try:
            wait_for(lambda log=log: " started: " in log.read_text(), 60)
            time.sleep(0.5)  # let start-up work settle before measuring idle cost
            before = cpu_seconds(worker.pid)
            time.sleep(idle)
            cpu.append((cpu_seconds(worker.pid) - before) / idle * 100)
            lat = sorted(asyncio.run(latency_samples(db, samples)))
            p50.append(lat[len(lat) // 2])
            p90.append(lat[int(len(lat) * 0.9)])
            p99.append(lat[int(len(lat) * 0.99)])
        finally:
            worker.terminate()
            worker.wait(30)
    a = table.add(f"p50 of {samples} samples", p50, "ms")
    table.add("p90", p90, "ms")
    c = table.add("p99", p99, "ms")
    d = table.add(f"idle worker CPU over {idle:.0f} s", cpu, "% of a core")
    table.notes.append(
        f"targets: p50 <= 2 ms ({a:.2f}), p99 <= 10 ms ({c:.2f}), idle < 2% of a core ({d:.2f})"
    )
    return table


# -- memory -------------------------------------------------------------------


def bench_memory(tmp: Path, reps: int, quick: bool) -> Table:
    n = 20_000 if quick else 100_000
    table = Table(
        f"Worker memory while draining {n:,} tasks", "python benchmarks/run.py --only memory"
    )
    peaks, starts = [], []
    for _ in range(reps):
        db = fresh(tmp, "mem")
        fill_sitq(db, n)
        log = tmp / f"mem-{time.monotonic_ns()}.log"
        worker = sitq_worker(db, log, "--concurrency", "8")
        try:
            wait_for(lambda log=log: " started: " in log.read_text(), 60)
            starts.append(_rss_mb(worker.pid, "VmRSS"))
            wait_for(
                lambda db=db: count(db, SUCCEEDED) >= n,
                600,
                0.2,
            )
            peaks.append(_rss_mb(worker.pid, "VmHWM"))
        finally:
            worker.terminate()
            worker.wait(30)
    table.add("RSS once started", starts, "MB")
    peak = table.add("peak RSS (VmHWM) over the drain", peaks, "MB")
    table.notes.append(f"target < 100 MB and flat: peak {peak:.1f} MB")
    return table


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


# -- backlog ------------------------------------------------------------------


async def claim_cost(db: Path, rounds: int) -> float:
    from sitq.backends.base import Outcome
    from sitq.backends.sqlite import SQLiteBackend

    backend = SQLiteBackend(db)
    await backend.connect()
    try:
        started = time.perf_counter()
        for _ in range(rounds):
            claimed = await backend.claim("bench", ["default"], 8, 30)
            await backend.finish([(t.lease, Outcome("succeeded", result=b"N.")) for t in claimed])
        return (time.perf_counter() - started) / rounds * 1e6
    finally:
        await backend.close()


def bench_backlog(tmp: Path, reps: int, quick: bool) -> Table:
    big = 200_000 if quick else 1_000_000
    rounds = 200
    table = Table(
        "Claim cost with a backlog (claim 8 + finish 8, per round)",
        "python benchmarks/run.py --only backlog",
    )
    small_costs, big_costs = [], []
    db_big = fresh(tmp, "backlog")
    fill_sitq(db_big, big)
    for _ in range(reps):
        db_small = fresh(tmp, "small")
        fill_sitq(db_small, rounds * 8)
        small_costs.append(asyncio.run(claim_cost(db_small, rounds)))
        big_costs.append(asyncio.run(claim_cost(db_big, rounds)))
    s = table.add(f"{rounds * 8:,} tasks waiting", small_costs, "µs")
    b = table.add(f"{big:,} tasks waiting", big_costs, "µs")
    table.notes.append(f"{big:,} waiting costs {b / s:.2f}x the small queue (target within 2x)")
    return table


def bench_postgres(tmp: Path, reps: int, quick: bool) -> Table:
    # The PostgreSQL backend against pgqueuer and Procrastinate (postgres_drain.py).
    import postgres_drain

    n = 5000 if quick else 20_000
    # Every system, sitq with --processes 2 too, as postgres_drain.py runs them.
    return asyncio.run(postgres_drain.bench(postgres_drain.DEFAULT_DB, reps, n, 2, set()))


SCENARIOS = {
    "enqueue": bench_enqueue,
    "drain": bench_drain,
    "latency": bench_latency,
    "memory": bench_memory,
    "backlog": bench_backlog,
    "postgres": bench_postgres,
}


def machine() -> str:
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    chosen = args.only or list(SCENARIOS)
    out = [f"Machine: {machine()}; {args.reps} repetitions each.", ""]
    print(out[0], flush=True)
    with tempfile.TemporaryDirectory(prefix="sitq-bench-") as tmp:
        for name in chosen:
            table = SCENARIOS[name](Path(tmp), args.reps, args.quick)
            text = table.render()
            print(text, flush=True)
            out.append(text)
    (HERE / "last_run.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
