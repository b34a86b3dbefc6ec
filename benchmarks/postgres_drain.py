"""Drain rate on PostgreSQL: sitq against pgqueuer and Procrastinate, in the same run.

    python benchmarks/postgres_drain.py [--reps N] [--db URL] [--tasks N]

Each repetition queues the same number of no-op tasks (20,000 by default) for
each system in a schema of its own, starts one worker process with a
concurrency of 8, and times from the worker's start-up line to the moment the
database says every task is done. Every schema is dropped afterwards. Prints a
Markdown table (median, min, max over the repetitions) and the ratios.

The database defaults to $SITQ_BENCH_PG, else postgresql://postgres@127.0.0.1:5432/test.
The baselines need the dev packages `pgqueuer` and `procrastinate` (with psycopg).

This file is also its own helper: `postgres_drain.py _child KIND ...` is how the
benchmark runs the baselines' fill and worker steps in separate processes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BIN, ENV, Table, machine  # noqa: E402

DEFAULT_DB = os.environ.get("SITQ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
CONCURRENCY = 8
# pgqueuer, (jobs fetched per dequeue, cap on jobs held at once; it requires the
# cap to be at least twice the batch): in flight comparable to sitq's 8 slots,
# and batches as large as the 128 that a sitq worker claims at once for short tasks.
PGQ_SETTINGS = ((8, 16), (128, 256))
STARTED = "bench worker started"
START_TIMEOUT = 60.0
FILL_TIMEOUT = 300.0
DRAIN_TIMEOUT = 600.0
POLL = 0.02


# -- helpers --------------------------------------------------------------------


def with_query(url: str, query: str) -> str:
    parts = urlsplit(url)
    joined = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit(parts._replace(query=joined))


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=HERE)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    interval: float,
    what: str,
    proc: subprocess.Popen[bytes],
    log: Path,
) -> float:
    """Poll `check` until true; perf_counter() then. Fails if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not await check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: worker exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s:\n{tail(log)}")
        await asyncio.sleep(interval)
    return time.perf_counter()


def child_args(kind: str, db: str, schema: str, n: int, *extra: int) -> list[str]:
    return [sys.executable, __file__, "_child", kind, db, schema, str(n), *map(str, extra)]


def run_child(kind: str, db: str, schema: str, n: int, env: dict[str, str]) -> None:
    out = subprocess.run(
        child_args(kind, db, schema, n),
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=FILL_TIMEOUT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


class Admin:
    """One asyncpg connection for creating, counting and dropping schemas."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.conn = None

    async def __aenter__(self) -> Admin:
        import asyncpg

        self.conn = await asyncpg.connect(self.db)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    async def count(self, sql: str) -> int:
        return int(await self.conn.fetchval(sql))

    async def drop(self, schema: str) -> None:
        await self.conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    async def create(self, schema: str) -> None:
        await self.drop(schema)
        await self.conn.execute(f'CREATE SCHEMA "{schema}"')


async def drain(
    admin: Admin,
    args: list[str],
    env: dict[str, str],
    log: Path,
    started_marker: str,
    done: Callable[[], Awaitable[bool]],
    n: int,
    starts: int = 1,
) -> float:
    """Start one worker process, time from its (last) start-up line to `done`; tasks/s."""
    proc = start(args, log, env)
    try:
        started = await wait_until(
            lambda: _has(log, started_marker, starts), START_TIMEOUT, 0.002, "start", proc, log
        )
        finished = await wait_until(done, DRAIN_TIMEOUT, POLL, "drain", proc, log)
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            raise RuntimeError(f"the worker logged a traceback:\n{tail(log)}")
        return n / (finished - started)
    finally:
        stop(proc)


async def _has(log: Path, marker: str, times: int = 1) -> bool:
    try:
        return log.read_text(errors="replace").count(marker) >= times
    except OSError:
        return False


# -- the three systems ----------------------------------------------------------


async def drain_sitq(
    admin: Admin, tmp: Path, db: str, schema: str, n: int, processes: int = 1
) -> float:
    import bench_tasks

    from sitq import TaskQueue

    url = with_query(db, f"sitq_schema={schema}")
    await admin.drop(schema)
    try:
        async with TaskQueue(url) as queue:
            for first in range(0, n, 10_000):
                await queue.enqueue_many(
                    bench_tasks.async_noop, [() for _ in range(min(10_000, n - first))]
                )
        table = f'"{schema}".sitq_tasks'

        async def done() -> bool:
            # Probes the partial indexes of queued and running tasks: cheap while
            # draining, unlike counting 20,000 finished rows every 20 ms (which the
            # server would spend its CPU on, as with pgqueuer's shrinking table).
            left = await admin.count(
                f"SELECT (SELECT count(*) FROM (SELECT 1 FROM {table} WHERE status = 'queued' "
                "AND limit_key IS NULL LIMIT 1) AS q) "
                f"+ (SELECT count(*) FROM (SELECT 1 FROM {table} "
                "WHERE status = 'running' LIMIT 1) AS r)"
            )
            return left == 0

        args = [str(BIN / "sitq"), "worker", "--db", url, "--import", "bench_tasks"]
        args += ["--concurrency", str(CONCURRENCY)]
        if processes > 1:
            args += ["--processes", str(processes)]
        log = tmp / f"sitq-{time.monotonic_ns()}.log"
        rate = await drain(admin, args, ENV, log, " started: ", done, n, processes)
        succeeded = await admin.count(f"SELECT count(*) FROM {table} WHERE status='succeeded'")
        if succeeded != n:
            raise RuntimeError(f"sitq drained with {succeeded} of {n} tasks succeeded")
        return rate
    finally:
        await admin.drop(schema)


async def drain_pgqueuer(
    admin: Admin, tmp: Path, db: str, schema: str, n: int, batch: int, most: int
) -> float:
    env = dict(ENV, PGQUEUER_SCHEMA=schema)
    await admin.drop(schema)
    try:
        run_child("pgqueuer-fill", db, schema, n, env)
        table = f'"{schema}".pgqueuer'
        queued = await admin.count(f"SELECT count(*) FROM {table}")
        if queued != n:
            raise RuntimeError(f"pgqueuer: {queued} jobs queued, expected {n}")

        async def done() -> bool:
            # a finished job is deleted from the queue table (and logged)
            return await admin.count(f"SELECT count(*) FROM {table}") == 0

        args = child_args("pgqueuer-worker", db, schema, n, batch, most)
        log = tmp / f"pgqueuer-{time.monotonic_ns()}.log"
        return await drain(admin, args, env, log, STARTED, done, n)
    finally:
        await admin.drop(schema)


async def drain_procrastinate(admin: Admin, tmp: Path, db: str, schema: str, n: int) -> float:
    await admin.create(schema)
    try:
        run_child("procrastinate-fill", db, schema, n, ENV)
        table = f'"{schema}".procrastinate_jobs'
        queued = await admin.count(f"SELECT count(*) FROM {table} WHERE status='todo'")
        if queued != n:
            raise RuntimeError(f"procrastinate: {queued} jobs queued, expected {n}")

        async def done() -> bool:
            return await admin.count(f"SELECT count(*) FROM {table} WHERE status='succeeded'") >= n

        args = child_args("procrastinate-worker", db, schema, n)
        log = tmp / f"procrastinate-{time.monotonic_ns()}.log"
        return await drain(admin, args, ENV, log, STARTED, done, n)
    finally:
        await admin.drop(schema)


# -- the baselines' child processes ---------------------------------------------


async def pgqueuer_noop(job: object) -> None:
    return None


async def procrastinate_noop() -> None:
    return None


async def child_pgqueuer(role: str, db: str, n: int, batch: int, most: int) -> None:
    # PGQUEUER_SCHEMA (set by the parent) puts every pgqueuer object in the schema.
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    conn = await asyncpg.connect(db)
    queries = Queries(AsyncpgDriver(conn))
    if role == "fill":
        await queries.install()
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        await conn.close()
        return
    from datetime import timedelta

    manager = QueueManager(queries)
    manager.entrypoint("noop")(pgqueuer_noop)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, manager.shutdown.set)
    print(STARTED, flush=True)
    await manager.run(
        batch_size=batch,
        max_concurrent_tasks=most,
        dequeue_timeout=timedelta(seconds=1),
    )


async def child_procrastinate(role: str, db: str, schema: str, n: int) -> None:
    import procrastinate

    connector = procrastinate.PsycopgConnector(
        conninfo=db,
        kwargs={"options": f"-c search_path={schema}"},
        min_size=2,
        max_size=CONCURRENCY + 2,
    )
    app = procrastinate.App(connector=connector)
    noop = app.task(name="noop")(procrastinate_noop)
    async with app.open_async():
        if role == "fill":
            await app.schema_manager.apply_schema_async()
            for first in range(0, n, 10_000):
                await noop.batch_defer_async(*({} for _ in range(min(10_000, n - first))))
            return
        print(STARTED, flush=True)
        await app.run_worker_async(concurrency=CONCURRENCY, wait=True)


def child_main(argv: list[str]) -> None:
    kind, db, schema, n = argv[0], argv[1], argv[2], int(argv[3])
    batch, most = (int(x) for x in argv[4:6]) if len(argv) >= 6 else (0, 0)
    system, role = kind.split("-")
    if system == "pgqueuer":
        # uvloop, as pgqueuer's own `pgq run` uses when it is installed
        import uvloop

        uvloop.run(child_pgqueuer(role, db, n, batch, most))
    else:
        asyncio.run(child_procrastinate(role, db, schema, n))


# -- main -----------------------------------------------------------------------


def systems(processes: int) -> dict[str, Callable[[Admin, Path, str, str, int], Awaitable[float]]]:
    out: dict[str, Callable[[Admin, Path, str, str, int], Awaitable[float]]] = {"sitq": drain_sitq}
    if processes > 1:
        out[f"sitq-p{processes}"] = functools.partial(drain_sitq, processes=processes)
    for batch, most in PGQ_SETTINGS:
        out[f"pgqueuer-{batch}"] = functools.partial(drain_pgqueuer, batch=batch, most=most)
    out["procrastinate"] = drain_procrastinate
    return out


async def bench(db: str, reps: int, n: int, processes: int, only: set[str]) -> Table:
    runs = {
        name: run
        for name, run in systems(processes).items()
        if not only or name in only or name.split("-")[0] in only
    }
    samples: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="sitq-pgbench-") as tmp:
        async with Admin(db) as admin:
            for rep in range(reps):
                for name, run in runs.items():
                    schema = f"bench_{name.replace('-', '_')}_{os.getpid()}_{rep}"
                    rate = await run(admin, Path(tmp), db, schema, n)
                    samples[name].append(rate)
                    print(f"  rep {rep + 1}/{reps} {name}: {rate:,.0f} tasks/s", flush=True)
    table = Table(
        f"PostgreSQL drain of {n:,} queued no-op tasks (tasks/s)",
        "python benchmarks/postgres_drain.py",
    )
    labels = {
        "sitq": f"sitq, one `sitq worker --concurrency {CONCURRENCY}` (async noop)",
        f"sitq-p{processes}": f"sitq, `sitq worker --processes {processes} --concurrency "
        f"{CONCURRENCY}` (async noop)",
        "procrastinate": f"Procrastinate, one worker (async noop, concurrency {CONCURRENCY})",
    }
    for batch, most in PGQ_SETTINGS:
        labels[f"pgqueuer-{batch}"] = (
            f"pgqueuer, one QueueManager (async noop, uvloop, batch {batch}, "
            f"at most {most} in flight)"
        )
    medians = {name: table.add(labels[name], samples[name], "tasks/s") for name in runs}
    targets = {8: " (target >= 2x)", 128: " (issue 18: >= 1.5x; >= 2x with --processes 2)"}
    for mine in [name for name in medians if name.startswith("sitq")]:
        for batch, most in PGQ_SETTINGS:
            if f"pgqueuer-{batch}" in medians:
                table.notes.append(
                    f"{mine} / pgqueuer with batch {batch}, {most} in flight: "
                    f"{medians[mine] / medians[f'pgqueuer-{batch}']:.2f}x{targets[batch]}"
                )
        if "procrastinate" in medians:
            table.notes.append(
                f"{mine} / Procrastinate: {medians[mine] / medians['procrastinate']:.2f}x "
                "(target >= 10x)"
            )
    table.notes += [
        "timed from the worker's start-up line (with --processes, the last child's) to the "
        "database showing every task done "
        "(sitq: none queued or running, then checked all succeeded; Procrastinate: status "
        "'succeeded'; pgqueuer: queue table empty), "
        f"polled every {POLL * 1000:.0f} ms; each system in a fresh schema, dropped after",
    ]
    return table


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--db", default=DEFAULT_DB, help="PostgreSQL URL")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain")
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="also time `sitq worker --processes N` (1: only one process)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated systems to run (sitq, sitq-p2, pgqueuer, pgqueuer-128, ...)",
    )
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    print(f"Machine: {machine()}; {args.reps} repetitions each.", flush=True)
    table = asyncio.run(bench(args.db, args.reps, args.tasks, args.processes, only))
    print(table.render(), flush=True)


if __name__ == "__main__":
    main()
