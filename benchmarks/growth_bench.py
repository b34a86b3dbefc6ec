"""Growth without slowdown (issue 18, item 4): draining and `sitq status` with a
million finished tasks retained, for two checkouts of sitq side by side.

    python benchmarks/growth_bench.py --before DIR --after DIR [--reps 3]
        [--retained 1000000] [--drain 20000] [--postgres URL] [--hot-reps 5]
        [--only PART ...]

DIR is a checkout whose ``sitq/`` is measured: it goes first on the PYTHONPATH of
every process that runs sitq (the benchmark itself imports none). The parts:

- ``drain``: a `sitq worker --concurrency 8` drains ``--drain`` queued no-ops, on a
  fresh file and on a file that also keeps ``--retained`` succeeded tasks (finished
  over the last 50 minutes, one second apart in turn). Timed from the worker's
  "started" log line to the last result stored.
- ``status``: cold `sitq status` at ``--retained`` tasks, after dropping the OS page
  cache (root only: ``sync; echo 3 > /proc/sys/vm/drop_caches``), as a whole fresh
  process, and the ``queue.overview()`` call alone in a fresh process on a fresh
  connection (connect timed apart).
- ``postgres``: the overview call cold (OS cache dropped; the server's own buffers
  cannot be emptied without restarting a shared server) at ``--retained`` tasks.
- ``hot``: what the counting costs SQLite's hot path, on fresh files: a drain of
  ``--drain`` no-ops by one `sitq worker --concurrency 8`, 5,000 ``await
  enqueue`` one at a time, 5,000 ``SyncTaskQueue.enqueue`` and one
  ``enqueue_many`` of 100,000 (as ``benchmarks/run.py --only drain enqueue``, with
  no baselines: just the two versions, alternating, ``--hot-reps`` times).
- ``triggers``: the counting triggers alone, on SQLite: ``--after``'s drain of
  ``--drain`` no-ops on a fresh file as it is and with the counting triggers
  dropped, alternating ``--hot-reps`` times (the rest of the code the same).
- ``sql``: the counting triggers' cost in the bare SQL (stdlib sqlite3 running
  ``--after``'s own ``insert_task``, ``claim_ready`` 8 and ``finish`` 8 per
  transaction over 30,000 tasks), kept or dropped, alternating ``--hot-reps`` times.
  From schema 12 on, SQLite counts a finish in the backend's own statement
  (``count_ended``), which neither this part nor ``triggers`` removes.
- ``pghot``: what the counting costs PostgreSQL's hot path, on fresh schemas:
  ``await enqueue`` one at a time, ``enqueue_many`` and a `sitq worker` drain.

Both versions build their stores with ``--before``'s code; ``--after`` then opens
its copy, migrating it (its migration time is printed). Repetitions alternate
before and after. Needs nothing but sitq's own dependencies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

UNFINISHED = (
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM sitq_tasks"
    " WHERE status = 'queued' AND limit_key IS NULL LIMIT 1))"
    " + (SELECT count(*) FROM (SELECT 1 FROM sitq_tasks WHERE status = 'running' LIMIT 1))"
)

# Run in a subprocess with the measured checkout first on its path.
FILL = """
import asyncio, sys, bench_tasks
from sitq import TaskQueue
db, n = sys.argv[1], int(sys.argv[2])
async def main():
    async with TaskQueue(db) as queue:
        for start in range(0, n, 50_000):
            await queue.enqueue_many(bench_tasks.noop, [() for _ in range(min(50_000, n - start))])
asyncio.run(main())
"""

# The filled tasks, succeeded: finished over the last 3,000 seconds.
FINISH_SQLITE = """
UPDATE sitq_tasks SET status = 'succeeded', attempts = 1, worker_id = 'w',
    started_at = {now} - (rowid % 3000) - 0.01, finished_at = {now} - (rowid % 3000),
    expires_at = {now} - (rowid % 3000) + 604800.0, result = x'80044e2e'
"""
FINISH_PG = """
UPDATE {s}.sitq_tasks SET status = 'succeeded', attempts = 1, worker_id = 'w',
    started_at = {now} - (seq % 3000) - 0.01, finished_at = {now} - (seq % 3000),
    expires_at = {now} - (seq % 3000) + 604800.0, result = decode('80044e2e', 'hex')
"""

OPEN = """
import asyncio, sys, time
from sitq import TaskQueue
async def main():
    began = time.perf_counter()
    async with TaskQueue(sys.argv[1]) as queue:
        print(time.perf_counter() - began)
"""

OVERVIEW = """
import asyncio, sys, time
from sitq import TaskQueue
async def main():
    began = time.perf_counter()
    async with TaskQueue(sys.argv[1]) as queue:
        connected = time.perf_counter()
        view = await queue.overview()
        cold = time.perf_counter()
        await queue.overview()
        warm = time.perf_counter() - cold
        total = sum(view.totals.values())
        print(connected - began, cold - connected, warm, total)
asyncio.run(main())
"""


def env(code: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{code}{os.pathsep}{HERE}", PYTHONUNBUFFERED="1")


def python(code: Path, script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env(code),
        cwd=HERE,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(out.stderr)
    return out.stdout


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def checkpoint(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def build_retained(code: Path, db: Path, n: int) -> None:
    python(code, FILL, str(db), str(n))
    with sqlite3.connect(db) as conn:
        conn.execute(FINISH_SQLITE.format(now=time.time()))
    checkpoint(db)


def timed_open(code: Path, target: str) -> float:
    """Open (and so migrate) a store with ``code``; the seconds it took."""
    return float(python(code, OPEN + "asyncio.run(main())\n", target).split()[0])


def copy(db: Path, to: Path) -> Path:
    shutil.copyfile(db, to)
    return to


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: CPU µs per task of each drain_once's worker, which a shared machine's load
#: disturbs far less than the wall-clock rate.
LAST_CPU: list[float] = []


def drain_once(code: Path, db: Path, n: int, tmp: Path) -> float:
    python(code, FILL, str(db), str(n))
    log = tmp / f"worker-{time.monotonic_ns()}.log"
    worker = subprocess.Popen(
        [str(BIN / "sitq"), "worker", "--db", str(db), "--import", "bench_tasks", "-c", "8"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env(code),
        cwd=HERE,
    )
    try:
        deadline = time.monotonic() + 60
        while " started: " not in log.read_text():
            if time.monotonic() > deadline:
                raise TimeoutError(log.read_text())
            time.sleep(0.002)
        started = time.perf_counter()
        cpu = cpu_seconds(worker.pid)
        deadline = time.monotonic() + 600
        while True:
            with sqlite3.connect(db, timeout=30) as conn:
                if conn.execute(UNFINISHED).fetchone()[0] == 0:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("drain did not finish")
            time.sleep(0.02)
        rate = n / (time.perf_counter() - started)
        LAST_CPU.append((cpu_seconds(worker.pid) - cpu) / n * 1e6)
        return rate
    finally:
        worker.terminate()
        worker.wait(30)


def median(samples: list[float]) -> str:
    return f"{statistics.median(samples):,.3f} (min {min(samples):,.3f}, max {max(samples):,.3f})"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_drain(versions: dict[str, Path], templates: dict[str, Path], args, tmp: Path) -> None:
    rates: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps):
        for name, code in versions.items():
            for base in ("empty", "retained"):
                db = tmp / f"drain-{name}-{base}-{rep}.db"
                if base == "retained":
                    copy(templates[name], db)
                rate = drain_once(code, db, args.drain, tmp)
                rates.setdefault((name, base), []).append(rate)
                print(
                    f"  drain {name} {base} rep {rep}: {rate:,.0f} tasks/s ({load()})", flush=True
                )
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
    print(f"\n### Drain of {args.drain:,} no-ops, one `sitq worker --concurrency 8` (tasks/s)\n")
    print("| version | empty file | with retained | retained / empty |")
    print("| --- | ---: | ---: | ---: |")
    for name in versions:
        empty = statistics.median(rates[name, "empty"])
        kept = statistics.median(rates[name, "retained"])
        print(f"| {name} | {empty:,.0f} | {kept:,.0f} | {kept / empty:.3f} |")
    print()


def bench_status(versions: dict[str, Path], templates: dict[str, Path], args) -> None:
    whole: dict[str, list[float]] = {}
    calls: dict[str, list[list[float]]] = {}
    for rep in range(args.reps):
        for name, code in versions.items():
            db = str(templates[name])
            drop_caches()
            began = time.perf_counter()
            subprocess.run(
                [str(BIN / "sitq"), "status", "--db", db],
                env=env(code),
                cwd=HERE,
                capture_output=True,
                check=True,
            )
            whole.setdefault(name, []).append(time.perf_counter() - began)
            drop_caches()
            parts = [float(x) for x in python(code, OVERVIEW, db).split()]
            calls.setdefault(name, []).append(parts)
            print(
                f"  status {name} rep {rep}: process {whole[name][-1]:.3f} s, "
                f"overview cold {parts[1] * 1000:.1f} ms ({load()})",
                flush=True,
            )
    report("SQLite", whole, calls, args.retained)


def report(
    title: str, whole: dict[str, list[float]], calls: dict[str, list[list[float]]], n: int
) -> None:
    print(f"\n### `sitq status` at {n:,} retained tasks, {title}, cold (medians)\n")
    print(
        "| version | whole `sitq status` process | connect | overview() cold | "
        "overview() again | tasks counted |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in calls:
        cols = list(zip(*calls[name], strict=True))
        process = f"{statistics.median(whole[name]) * 1000:,.0f} ms" if name in whole else "-"
        print(
            f"| {name} | {process} | {statistics.median(cols[0]) * 1000:,.1f} ms "
            f"| {statistics.median(cols[1]) * 1000:,.1f} ms "
            f"| {statistics.median(cols[2]) * 1000:,.1f} ms | {int(cols[3][0]):,} |"
        )
    print()


def bench_postgres(versions: dict[str, Path], args) -> None:
    before = versions["before"]
    urls = {}
    for name in versions:
        schema = f"growth_{name}"
        url = f"{args.postgres}?sitq_schema={schema}"
        python(before, DROP_PG, args.postgres, schema)
        began = time.perf_counter()
        python(before, FILL, url, str(args.retained))
        python(before, FINISH_PG_SCRIPT, args.postgres, schema, str(time.time()))
        print(f"  postgres {name}: built in {time.perf_counter() - began:.1f} s", flush=True)
        if name != "before":
            print(f"  postgres {name}: migrated in {timed_open(versions[name], url):.1f} s")
        urls[name] = url
    calls: dict[str, list[list[float]]] = {}
    for rep in range(args.reps):
        for name, code in versions.items():
            drop_caches()
            parts = [float(x) for x in python(code, OVERVIEW, urls[name]).split()]
            calls.setdefault(name, []).append(parts)
            print(
                f"  postgres {name} rep {rep}: overview cold {parts[1] * 1000:.1f} ms ({load()})",
                flush=True,
            )
    report("PostgreSQL", {}, calls, args.retained)
    for name in versions:
        python(before, DROP_PG, args.postgres, f"growth_{name}")


SQLITE_ENQUEUE = """
import asyncio, sys, time, bench_tasks
from sitq import SyncTaskQueue, TaskQueue
async def main():
    async with TaskQueue(sys.argv[1]) as queue:
        await queue.enqueue(bench_tasks.noop)
        began = time.perf_counter()
        for _ in range(5000):
            await queue.enqueue(bench_tasks.noop)
        one = 5000 / (time.perf_counter() - began)
        began = time.perf_counter()
        await queue.enqueue_many(bench_tasks.noop, [() for _ in range(100_000)])
        many = 100_000 / (time.perf_counter() - began)
    return one, many
one, many = asyncio.run(main())
with SyncTaskQueue(sys.argv[2]) as queue:
    queue.enqueue(bench_tasks.noop)
    began = time.perf_counter()
    for _ in range(5000):
        queue.enqueue(bench_tasks.noop)
    sync = 5000 / (time.perf_counter() - began)
print(one, sync, many)
"""


def bench_hot(versions: dict[str, Path], args, tmp: Path) -> None:
    keys = ("drain", "cpu", "one", "sync", "many")
    rates: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.hot_reps):
        for name, code in versions.items():
            db = tmp / f"hot-{name}-{rep}.db"
            drain = drain_once(code, db, args.drain, tmp)
            cpu = LAST_CPU[-1]
            a, b = tmp / f"enq-{name}-{rep}.db", tmp / f"sync-{name}-{rep}.db"
            one, sync, many = (
                float(x) for x in python(code, SQLITE_ENQUEUE, str(a), str(b)).split()
            )
            for key, value in zip(keys, (drain, cpu, one, sync, many), strict=True):
                rates.setdefault((name, key), []).append(value)
            print(
                f"  hot {name} rep {rep}: drain {drain:,.0f}/s ({cpu:.1f} µs CPU a task), "
                f"enqueue {one:,.0f}/s, "
                f"sync {sync:,.0f}/s, enqueue_many {many:,.0f}/s ({load()})",
                flush=True,
            )
            for path in (db, a, b):
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    print(f"\n### SQLite hot path, fresh files (tasks/s, medians of {args.hot_reps})\n")
    print(
        f"| version | drain of {args.drain:,}, one `sitq worker -c 8` | its worker's CPU "
        "µs a task | `await enqueue` one at a time | `SyncTaskQueue.enqueue` "
        "| `enqueue_many` of 100,000 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in versions:
        cells = " | ".join(
            f"{statistics.median(rates[name, key]):,.{1 if key == 'cpu' else 0}f}" for key in keys
        )
        print(f"| {name} | {cells} |")
    ratios = " | ".join(
        f"{statistics.median(rates['after', k]) / statistics.median(rates['before', k]):.3f}"
        for k in keys
    )
    print(f"| after / before | {ratios} |")
    print()


#: Schema 11's counting triggers; schema 12 has one trigger on finished_at
#: (sitq_tasks_ended, which a finish of a plain task never runs) and counts a
#: finish in its own statements, so dropping them there measures only the trigger.
COUNTING_TRIGGERS = (
    "sitq_tasks_count_end",
    "sitq_tasks_count_unend",
    "sitq_tasks_count_delete",
    "sitq_tasks_ended",
)


def bench_triggers(code: Path, args, tmp: Path) -> None:
    rates: dict[str, list[float]] = {"kept": [], "dropped": []}
    cpus: dict[str, list[float]] = {"kept": [], "dropped": []}
    for rep in range(args.hot_reps):
        for kind in rates:
            db = tmp / f"triggers-{kind}-{rep}.db"
            python(code, OPEN + "asyncio.run(main())\n", str(db))
            if kind == "dropped":
                with sqlite3.connect(db) as conn:
                    for name in COUNTING_TRIGGERS:
                        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            rates[kind].append(drain_once(code, db, args.drain, tmp))
            cpus[kind].append(LAST_CPU[-1])
            print(
                f"  triggers {kind} rep {rep}: {rates[kind][-1]:,.0f} tasks/s, "
                f"{cpus[kind][-1]:.1f} µs CPU a task ({load()})",
                flush=True,
            )
    print(
        f"\n### Drain of {args.drain:,} no-ops, counting triggers kept or dropped "
        f"(medians of {args.hot_reps})\n"
    )
    print("| triggers | tasks/s | min | max | worker CPU a task |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, samples in rates.items():
        print(
            f"| {kind} | {statistics.median(samples):,.0f} | {min(samples):,.0f} "
            f"| {max(samples):,.0f} | {statistics.median(cpus[kind]):.1f} µs |"
        )
    rate = statistics.median(rates["kept"]) / statistics.median(rates["dropped"])
    cpu = statistics.median(cpus["kept"]) / statistics.median(cpus["dropped"])
    print(f"\nkept / dropped: {rate:.3f} by rate, {cpu:.3f} by worker CPU a task\n")


SQL_PROBE = """
import asyncio, os, sqlite3, statistics, sys, time
from sitq.backends.sqlite import SQLiteBackend
from sitq.backends.sqlite.schema import SQL
TRIGGERS = ("sitq_tasks_count_end", "sitq_tasks_count_unend", "sitq_tasks_count_delete",
            "sitq_tasks_ended")
N, BATCH = 30_000, 8
def fresh(path, kept):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    async def create():
        backend = SQLiteBackend(path)
        await backend.connect()
        await backend.close()
    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=normal")
    if not kept:
        for name in TRIGGERS:
            conn.execute("DROP TRIGGER IF EXISTS " + name)
    return conn
def run(path, kept):
    conn = fresh(path, kept)
    rows = [("id%d" % i, "default", "f", b"x" * 50, 0, 1.0, 1.0, 0, 1.0, None, None, None, None)
            for i in range(N)]
    conn.execute("BEGIN")
    conn.executemany(SQL.insert_task, rows)
    conn.execute("COMMIT")
    claim = SQL.claim_ready.replace("{queues}", "?")
    began = time.perf_counter()
    while True:
        conn.execute("BEGIN IMMEDIATE")
        got = conn.execute(claim, ("w", 1e12, "default", 1e12, BATCH)).fetchall()
        if not got:
            conn.execute("COMMIT")
            break
        conn.executemany(SQL.finish, [
            ("succeeded", b"r", None, None, 5.0 + i * 1e-4, 3600.0, 4.0, r[0], "w", r[4])
            for i, r in enumerate(got)])
        conn.execute("COMMIT")
    conn.close()
    return (time.perf_counter() - began) / N * 1e6
samples = {True: [], False: []}
for _ in range(int(sys.argv[2])):
    for kept in (True, False):
        samples[kept].append(run(sys.argv[1], kept))
kept, dropped = statistics.median(samples[True]), statistics.median(samples[False])
print("### Bare SQL per task: claim %d + finish %d per transaction (medians of %s)" % (
    BATCH, BATCH, sys.argv[2]))
print()
print("| counting triggers | µs a task |")
print("| --- | ---: |")
print("| kept | %.2f |" % kept)
print("| dropped | %.2f |" % dropped)
print()
print("kept - dropped: %+.2f µs a task (%+.1f%%)" % (kept - dropped, (kept / dropped - 1) * 100))
"""


ENQUEUE_RATES = """
import asyncio, sys, time, bench_tasks
from sitq import TaskQueue
async def main():
    async with TaskQueue(sys.argv[1]) as queue:
        began = time.perf_counter()
        for _ in range(2000):
            await queue.enqueue(bench_tasks.noop)
        one = 2000 / (time.perf_counter() - began)
        began = time.perf_counter()
        await queue.enqueue_many(bench_tasks.noop, [() for _ in range(50_000)])
        print(one, 50_000 / (time.perf_counter() - began))
asyncio.run(main())
"""

PG_UNFINISHED = """
import asyncio, sys, asyncpg
SQL = 'SELECT count(*) FROM "' + sys.argv[2] + '".sitq_tasks WHERE status IN ($1, $2)'
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    while await conn.fetchval(SQL, 'queued', 'running'):
        await asyncio.sleep(0.02)
    await conn.close()
asyncio.run(main())
"""


def pg_drain_once(code: Path, url: str, base: str, schema: str, n: int, tmp: Path) -> float:
    python(code, FILL, url, str(n))
    log = tmp / f"pgworker-{time.monotonic_ns()}.log"
    worker = subprocess.Popen(
        [str(BIN / "sitq"), "worker", "--db", url, "--import", "bench_tasks", "-c", "8"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env(code),
        cwd=HERE,
    )
    try:
        deadline = time.monotonic() + 60
        while " started: " not in log.read_text():
            if time.monotonic() > deadline:
                raise TimeoutError(log.read_text())
            time.sleep(0.002)
        started = time.perf_counter()
        python(code, PG_UNFINISHED, base, schema)
        return n / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(30)


def bench_postgres_hot(versions: dict[str, Path], args, tmp: Path) -> None:
    rates: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps):
        for name, code in versions.items():
            schema = f"growth_hot_{name}"
            url = f"{args.postgres}?sitq_schema={schema}"
            python(code, DROP_PG, args.postgres, schema)
            one, many = (float(x) for x in python(code, ENQUEUE_RATES, url).split())
            python(code, DROP_PG, args.postgres, schema)
            drain = pg_drain_once(code, url, args.postgres, schema, args.drain, tmp)
            python(code, DROP_PG, args.postgres, schema)
            for key, value in (("one", one), ("many", many), ("drain", drain)):
                rates.setdefault((name, key), []).append(value)
            print(
                f"  pghot {name} rep {rep}: enqueue {one:,.0f}/s, enqueue_many {many:,.0f}/s, "
                f"drain {drain:,.0f}/s ({load()})",
                flush=True,
            )
    print("\n### PostgreSQL hot path, fresh schema (tasks/s, medians)\n")
    print(
        "| version | `await enqueue` one at a time | `enqueue_many` of 50,000 | "
        f"drain of {args.drain:,}, one `sitq worker -c 8` |"
    )
    print("| --- | ---: | ---: | ---: |")
    for name in versions:
        cells = " | ".join(
            f"{statistics.median(rates[name, key]):,.0f}" for key in ("one", "many", "drain")
        )
        print(f"| {name} | {cells} |")
    ratios = " | ".join(
        f"{statistics.median(rates['after', k]) / statistics.median(rates['before', k]):.3f}"
        for k in ("one", "many", "drain")
    )
    print(f"| after / before | {ratios} |")
    print()


DROP_PG = """
import asyncio, sys, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    await conn.execute(f'DROP SCHEMA IF EXISTS "{sys.argv[2]}" CASCADE')
    await conn.close()
asyncio.run(main())
"""

FINISH_PG_SCRIPT = (
    """
import asyncio, sys, asyncpg
FINISH = '''"""
    + FINISH_PG
    + """'''
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    await conn.execute(FINISH.format(s='"' + sys.argv[2] + '"', now=sys.argv[3]))
    await conn.execute('VACUUM ANALYZE "' + sys.argv[2] + '".sitq_tasks')
    await conn.close()
asyncio.run(main())
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--retained", type=int, default=1_000_000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--postgres", default=PG_URL)
    parser.add_argument(
        "--only",
        nargs="*",
        choices=["drain", "status", "postgres", "hot", "triggers", "sql", "pghot"],
    )
    parser.add_argument("--hot-reps", type=int, default=5)
    args = parser.parse_args()
    parts = args.only or ["drain", "status", "postgres", "hot", "triggers", "sql", "pghot"]
    versions = {"before": args.before.resolve(), "after": args.after.resolve()}
    print(f"{os.cpu_count()} cores, SQLite {sqlite3.sqlite_version}; {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sitq-growth-") as folder:
        tmp = Path(folder)
        templates: dict[str, Path] = {}
        if {"drain", "status"} & set(parts):
            began = time.perf_counter()
            templates["before"] = tmp / "retained-before.db"
            build_retained(versions["before"], templates["before"], args.retained)
            print(f"  built {args.retained:,} retained in {time.perf_counter() - began:.1f} s")
            templates["after"] = copy(templates["before"], tmp / "retained-after.db")
            seconds = timed_open(versions["after"], str(templates["after"]))
            checkpoint(templates["after"])
            print(f"  after: opened (migrated) the retained file in {seconds:.2f} s", flush=True)
        if "drain" in parts:
            bench_drain(versions, templates, args, tmp)
        if "status" in parts:
            bench_status(versions, templates, args)
        if "postgres" in parts:
            bench_postgres(versions, args)
        if "hot" in parts:
            bench_hot(versions, args, tmp)
        if "triggers" in parts:
            bench_triggers(versions["after"], args, tmp)
        if "sql" in parts:
            print(python(versions["after"], SQL_PROBE, str(tmp / "probe.db"), str(args.hot_reps)))
        if "pghot" in parts:
            bench_postgres_hot(versions, args, tmp)
    print(f"done; {load()}")


if __name__ == "__main__":
    main()
