"""`sitq migrate SRC DST`: real SQLite files, a real PostgreSQL, real `sitq worker`
and `sitq migrate` processes (SIGKILLed halfway in one test)."""

from __future__ import annotations

import hashlib
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jobs
import pytest
from support import (
    POSTGRES_URL,
    SITQ,
    await_until,
    drop_postgres_schema,
    postgres_available,
    postgres_store_at,
    postgres_url,
    sqlite_store_at,
    subprocess_env,
    wait_until,
)
from workflow_support import items_of, run_cli, run_id_of, status_json, workflow_cmd, workflow_env

from sitq import NotASitqDatabase, TaskQueue, TaskStatus, sqlfiles
from sitq.backends.postgres import schema as postgres_schema
from sitq.backends.sqlite import schema as sqlite_schema
from sitq.batch.store import BatchStore
from sitq.migrate import TABLES

SQL = sqlfiles.load_dialects("sitq.migrate")
#: Bounds a hang; not an expected duration.
MIGRATE_TIMEOUT = 300.0


def needs_postgres() -> None:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)


@pytest.fixture
async def pg_schemas(tmp_path: Path) -> AsyncIterator[Callable[[str], str]]:
    """PostgreSQL URLs, each with its own schema, dropped at teardown."""
    needs_postgres()
    made: list[str] = []

    def url(label: str) -> str:
        schema = "m_" + hashlib.sha1(f"{tmp_path}/{label}".encode()).hexdigest()[:16]
        made.append(schema)
        return postgres_url(schema)

    yield url
    for schema in made:
        await drop_postgres_schema(schema)


def migrate_cli(*args: str, timeout: float = MIGRATE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SITQ, "migrate", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stderr


async def dump(target: str | Path) -> dict[str, Any]:
    """Every row sitq migrates, per table in key order (booleans as 0/1), and the
    task ids in enqueue order."""
    async with TaskQueue(str(target), create=False) as queue:
        session = queue.store_session()
        sql = SQL[session.dialect]
        out: dict[str, Any] = {}
        for table in TABLES:
            if table.key == 0:
                rows = await session.fetch(sql[f"read_{table.name}"])
            elif table.key == -1:
                rows = [r[1:] for r in await session.fetch(sql["read_tasks"], (0, 10**9))]
                out["order"] = [r[0] for r in rows]
            else:
                rows = await session.fetch(sql[f"read_{table.name}"], (*table.start, 10**9))
            out[table.name] = sorted(tuple(r) for r in rows)
        return out


async def results_of(target: str | Path, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    async with TaskQueue(str(target), create=False) as queue:
        found = {}
        for start in range(0, len(ids), 5000):  # in bulk: one at a time took 25 s of 100k
            found.update(await queue.get_results(ids[start : start + 5000]))
        out = {}
        for task_id in ids:
            r = found.get(task_id)
            assert r is not None, task_id
            out[task_id] = (
                r.status,
                r.value,
                r.error,
                r.traceback,
                r.attempts,
                r.enqueued_at,
                r.started_at,
                r.finished_at,
                r.worker_id,
            )
        return out


def run_burst(db: str | Path, tmp_path: Path, *queues: str) -> None:
    """A real `sitq worker --burst` until nothing on ``queues`` is ready."""
    args = [a for q in queues for a in ("-q", q)]
    subprocess.run(
        [SITQ, "worker", "--db", str(db), "--burst", "--concurrency", "4", *args],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        timeout=300,
    )


CRASH_WORKFLOW = """
steps:
  - name: append
    task: batch
    inputs:
      items: "{{ range(120) | list }}"
      batch_size: 10
      parallel: true
      max_parallel: 4
      task:
        type: python
        code: |
          import time
          with open(params['log'], 'a') as log:
              log.write(f"{item}\\n")
          time.sleep(0.05)
          result = item * 2
"""

SHORT_WORKFLOW = """
steps:
  - name: double
    task: batch
    inputs:
      items: "{{ range(5) | list }}"
      task:
        type: python
        code: |
          result = item * 2
"""


def _count(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def make_workflow_runs(db: Path, work: Path, tmp_path: Path) -> tuple[str, str, set[int]]:
    """Two workflow runs recorded in ``db``: one finished, one SIGKILLed mid-step.
    Returns their ids and the items the killed one had not finished."""
    env = workflow_env(tmp_path, SITQ_DB=str(db))
    short = work / "short.yaml"
    short.write_text(SHORT_WORKFLOW)
    proc = run_cli("run", str(short), "--executor", "local", cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    done_id = run_id_of(proc.stdout)

    crash = work / "crash.yaml"
    crash.write_text(CRASH_WORKFLOW)
    log = work / "log.txt"
    out_path = work / "run.out"
    with open(out_path, "w") as out:
        run = subprocess.Popen(
            workflow_cmd("run", str(crash), "-p", f"log={log}", "--executor", "local"),
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: _count(log) >= 40 or run.poll() is not None, 60, "items to run")
        assert run.poll() is None, out_path.read_text()
        run.send_signal(signal.SIGKILL)
        run.wait(30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
    killed_id = run_id_of(out_path.read_text())
    status = status_json(killed_id, work, env)
    assert status["run"]["status"] == "running"
    unfinished = {i["index"] for i in items_of(status, "append") if i["status"] != "succeeded"}
    assert 0 < len(unfinished) < 120
    return done_id, killed_id, unfinished


async def build_source(db: Path, tmp_path: Path, n: int) -> dict[str, Any]:
    """A SQLite database with tasks in every status (finished by a real worker),
    20 schedules, limits, a paused queue, 3 named batches and a chain of
    dependencies. ``n``: about how many tasks."""
    made: dict[str, Any] = {}
    async with TaskQueue(str(db)) as queue:
        done = await queue.enqueue_many(jobs.add, [(i, i) for i in range(n // 2)])
        failed = await queue.enqueue_many(jobs.fail, [(f"boom {i}",) for i in range(n // 20)])
        to_cancel = await queue.enqueue_many(jobs.add, [(i, 1) for i in range(n // 20)])
        for task_id in to_cancel:
            assert await queue.cancel(task_id)
    run_burst(db, tmp_path, "default")
    async with TaskQueue(str(db)) as queue:
        assert await queue.status(done[0]) == TaskStatus.SUCCEEDED
        assert await queue.status(failed[0]) == TaskStatus.FAILED
        # Queued: priorities, retries, a unique key, a limit key, delayed ones.
        ready = []
        for p in (0, 5, -3):
            ready += await queue.with_options(priority=p, max_retries=2).enqueue_many(
                jobs.add, [(i, 1000) for i in range(n // 10)]
            )
        unique = await queue.with_options(unique_key="the-one").enqueue(jobs.add, 1, 1)
        await queue.set_limit("lk", max_running=2)
        await queue.set_limit("rate", max_starts=10, per=60)
        limited = await queue.with_options(limit_key="lk").enqueue_many(
            jobs.add, [(i, 7) for i in range(20)]
        )
        delayed = await queue.with_options(delay=2.0).enqueue_many(
            jobs.add, [(i, 3) for i in range(n // 20)]
        )
        held = await queue.with_options(queue="held").enqueue(jobs.add, 40, 2)
        await queue.pause("held")
        # A chain: b and c wait for their parents (dependencies, v10).
        a = await queue.with_options(delay=1.0).enqueue(jobs.add, 1, 2)
        b = await queue.with_options(depends_on=[a]).enqueue(jobs.add, 10, 20)
        c = await queue.with_options(depends_on=[a, b]).enqueue(jobs.add, 100, 200)
        batches = BatchStore.of(queue)
        members = {}
        for k in range(3):
            members[f"nightly-{k}"] = await batches.enqueue_in_batch(
                queue, f"nightly-{k}", jobs.add, [(k, j) for j in range(50)]
            )
        for k in range(20):
            sched = queue.schedule(jobs.noop, every=3600 + k, name=f"sched-{k}")
            await queue.advance_schedule(sched, time.time() - 10, time.time() + 3600, first=True)
        made.update(
            done=done,
            failed=failed,
            cancelled=to_cancel,
            ready=ready,
            unique=unique,
            limited=limited,
            delayed=delayed,
            held=held,
            chain=(a, b, c),
            members=members,
        )
    return made


async def check_finished_on(target: str, made: dict[str, Any], before: dict[str, Any]) -> None:
    """Everything left on ``target`` finishes (the paused queue once resumed) with
    the values expected, and the results finished before read the same."""
    async with TaskQueue(target, create=False) as queue:
        assert await queue.paused() == ["held"]
        open_ids = (
            made["ready"]
            + made["limited"]
            + made["delayed"]
            + list(made["chain"])
            + [made["unique"]]
            + [i for m in made["members"].values() for i in m]
        )

        async def all_done() -> bool:
            counts = await queue.status_counts(open_ids)
            return counts.get("succeeded", 0) == len(open_ids)

        await await_until(all_done, 180, "the destination's worker to finish every task")
        assert await queue.status(made["held"]) == TaskStatus.QUEUED  # still paused
        await queue.resume("held")
        held = await queue.get_result(made["held"], timeout=60)
        assert held is not None and held.value == 42
        results = await queue.get_results(made["chain"])
        assert [results[i].value for i in made["chain"]] == [3, 30, 300]
        values = await queue.get_results(made["ready"])
        assert all(values[i].value >= 1000 for i in made["ready"])
    assert await results_of(target, list(before)) == before


async def migrate_everything(tmp_path: Path, pg_url: str, n: int, spawn_worker: Any) -> None:
    src = tmp_path / "src.db"
    work = tmp_path / "work"
    work.mkdir()
    done_run, killed_run, unfinished = make_workflow_runs(src, work, tmp_path)
    made = await build_source(src, tmp_path, n)
    finished = made["done"] + made["failed"] + made["cancelled"]

    # A live worker runs a task while `sitq migrate --wait` starts: the migration
    # pauses the source's queues, waits for that task, then copies.
    started, release = tmp_path / "started", tmp_path / "release"
    async with TaskQueue(str(src)) as queue:
        running = await queue.with_options(queue="slow").enqueue(
            jobs.wait_for_file, str(started), str(release), 120
        )
    worker = spawn_worker("-q", "slow", db=src).wait_started()
    wait_until(started.exists, 60, "the slow task to start")
    source_before = await dump(src)
    out = tmp_path / "migrate.out"
    with open(out, "w") as log:
        proc = subprocess.Popen(
            [SITQ, "migrate", str(src), pg_url, "--wait", "--chunk-size", "700"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
    try:
        wait_until(lambda: "waiting for 1 running task" in out.read_text(), 60, "--wait to wait")
        assert proc.poll() is None
        release.touch()
        assert proc.wait(MIGRATE_TIMEOUT) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert "verified" in text and "still paused on the source" in text, text
    worker.stop()

    # The source is as it was, but for the slow task's end and the queues --wait paused.
    source_after = await dump(src)
    assert sorted(q for q, _ in source_after["paused"]) == ["default", "held", "slow"]
    for name in ("dependencies", "batches", "batch_tasks", "workflow_runs", "schedules"):
        assert source_after[name] == source_before[name]
    assert source_after["order"] == source_before["order"]

    # The destination holds exactly the source's rows (not the pauses of --wait).
    copied = await dump(pg_url)
    for table in TABLES:
        if table.name != "paused":
            assert copied[table.name] == source_after[table.name], table.name
    assert [q for q, _ in copied["paused"]] == ["held"]
    assert copied["order"] == source_after["order"]

    before = await results_of(src, [*finished, running])
    assert await results_of(pg_url, list(before)) == before

    spawn_worker("-q", "default", "-q", "held", "--concurrency", "4", db=pg_url).wait_started()
    await check_finished_on(pg_url, made, before)

    # The interrupted workflow resumes on PostgreSQL and redoes only its unfinished items.
    env = workflow_env(tmp_path, SITQ_DB=pg_url)
    log = work / "log.txt"
    ran_before = _count(log)
    proc2 = run_cli(
        "run", str(work / "crash.yaml"), "--resume", killed_run, "--executor", "local",
        cwd=work, env=env,
    )  # fmt: skip
    assert proc2.returncode == 0, proc2.stderr
    seen = [int(x) for x in log.read_text().split()][ran_before:]
    assert sorted(seen) == sorted(unfinished)
    status = status_json(killed_run, work, env)
    assert status["run"]["status"] == "succeeded"
    assert [i["result"] for i in items_of(status, "append")] == [repr(2 * k) for k in range(120)]
    assert status_json(done_run, work, env)["run"]["status"] == "succeeded"


async def test_sqlite_to_postgres_then_workers_finish_everything(
    tmp_path: Path, pg_schemas: Callable[[str], str], spawn_worker: Any
) -> None:
    """A few thousand tasks in every status, schedules, limits, a paused queue,
    batches, two workflow runs (one killed mid-step) and a chain: migrated with
    --wait while a worker runs a task, identical on PostgreSQL, finished there."""
    await migrate_everything(tmp_path, pg_schemas("dst"), 3000, spawn_worker)


@pytest.mark.slow
async def test_sqlite_to_postgres_100k_tasks(
    tmp_path: Path, pg_schemas: Callable[[str], str], spawn_worker: Any
) -> None:
    await migrate_everything(tmp_path, pg_schemas("dst"), 100_000, spawn_worker)


async def test_sqlite_to_sqlite_to_postgres_to_sqlite_keeps_every_row(
    tmp_path: Path, pg_schemas: Callable[[str], str]
) -> None:
    """SQLite to SQLite (a move), then to PostgreSQL and back: every row, the
    enqueue order and every result the same at each step; then --delete-source."""
    src = tmp_path / "src.db"
    made = await build_source(src, tmp_path, 400)
    finished = made["done"] + made["failed"] + made["cancelled"]
    original = await dump(src)
    results = await results_of(src, finished)
    moved, pg, back = tmp_path / "moved.db", pg_schemas("pg"), tmp_path / "back.db"
    ok(migrate_cli(str(src), str(moved), "--chunk-size", "64"))
    ok(migrate_cli(str(moved), pg, "--chunk-size", "64", "--no-progress"))
    ok(migrate_cli(pg, str(back), "--chunk-size", "64"))
    for target in (moved, pg, back):
        assert await dump(target) == original, target
        assert await results_of(target, finished) == results
    assert await dump(src) == original  # untouched without --delete-source
    last = tmp_path / "last.db"
    ok(migrate_cli(str(back), str(last), "--delete-source"))
    assert await dump(last) == original
    emptied = await dump(back)
    assert all(emptied[t.name] == [] for t in TABLES)
    # Run again: already done, nothing doubled.
    assert "already holds a verified migration" in ok(migrate_cli(str(src), str(moved)))
    assert await dump(moved) == original


async def _blocked_insert(pid: int) -> bool:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> $1 AND pid <> $2 "
                "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO %sitq_tasks%'",
                pid,
                conn.get_server_pid(),
            )
        )
    finally:
        await conn.close()


async def test_sigkill_halfway_then_rerun_gives_the_clean_result(
    tmp_path: Path, pg_schemas: Callable[[str], str]
) -> None:
    """`sitq migrate` SIGKILLed in the middle of the tasks (its chunk held by a row
    lock the test takes), then run again: the same destination as a clean run."""
    import asyncpg

    src = tmp_path / "src.db"
    made = await build_source(src, tmp_path, 2000)
    clean, killed = pg_schemas("clean"), pg_schemas("killed")
    ok(migrate_cli(str(src), clean, "--chunk-size", "100"))
    expected = await dump(clean)
    order = expected["order"]

    async with TaskQueue(killed):  # an empty destination, created first
        pass
    schema = killed.rsplit("sitq_schema=", 1)[1]
    blocker = await asyncpg.connect(POSTGRES_URL)
    try:
        tx = blocker.transaction()
        await tx.start()
        # The same id as a task halfway: the migration's insert of that chunk waits.
        await blocker.execute(
            f'INSERT INTO "{schema}".sitq_tasks (id, queue, func_name, payload, status, '
            "enqueued_at, available_at) VALUES ($1, 'x', 'x', '', 'queued', 0, 0)",
            order[len(order) // 2],
        )
        proc = subprocess.Popen(
            [SITQ, "migrate", str(src), killed, "--chunk-size", "100", "--no-progress"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=subprocess_env(),
        )
        try:
            own = blocker.get_server_pid()
            await await_until(lambda: _blocked_insert(own), 60, "the migration to block")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        await tx.rollback()
    finally:
        await blocker.close()
    partial = await dump(killed)
    assert 0 < len(partial["tasks"]) < len(order)
    assert partial["order"] == order[: len(partial["order"])]

    err = ok(migrate_cli(str(src), killed, "--chunk-size", "100", "--no-progress"))
    assert "continuing the migration" in err
    assert await dump(killed) == expected
    finished = made["done"] + made["failed"]
    assert await results_of(killed, finished) == await results_of(clean, finished)


def dead_id(pid: int, worker_id: str) -> str:
    """``worker_id`` if it names the worker of process ``pid``."""
    assert f"-{pid}-" in worker_id, worker_id
    return worker_id


async def test_a_task_a_dead_worker_held_is_copied_running_and_runs_again_there(
    tmp_path: Path, pg_schemas: Callable[[str], str], spawn_worker: Any
) -> None:
    """A worker SIGKILLed mid-task leaves the task running under its lease: it is
    copied so, and a worker on the destination runs it again once the lease ends."""
    src, pg = tmp_path / "src.db", pg_schemas("dst")
    started, release = tmp_path / "started", tmp_path / "release"
    async with TaskQueue(str(src)) as queue:
        task_id = await queue.enqueue(jobs.wait_for_file, str(started), str(release), 60)
    dead = spawn_worker("--lease", "1", db=src).wait_started()
    wait_until(started.exists, 60, "the task to start")
    dead.send(signal.SIGKILL)
    dead.wait()
    # Until its heartbeat is WORKER_STALE_AFTER (30 s) old the worker counts as alive
    # and the migration is refused: move its last heartbeat back instead of waiting.
    with sqlite3.connect(src) as conn:
        conn.execute("UPDATE sitq_workers SET heartbeat_at = heartbeat_at - 3600")
    conn.close()
    ok(migrate_cli(str(src), pg))
    held = [row for row in (await dump(pg))["tasks"] if row[0] == task_id]
    assert held == [row for row in (await dump(src))["tasks"] if row[0] == task_id]
    assert held[0][4] == "running" and held[0][14] == dead_id(dead.pid, held[0][14])
    async with TaskQueue(pg, create=False) as queue:
        release.touch()
        again = spawn_worker(db=pg).wait_started()
        result = await queue.get_result(task_id, timeout=60)
        assert result is not None and result.value == "released"
        assert f"-{again.pid}-" in (result.worker_id or "")  # ran again, there


# -- bad inputs: each a clear error, nothing changed -------------------------------


async def test_a_non_empty_destination_is_refused_unless_into_existing_without_collisions(
    tmp_path: Path,
) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    await build_source(src, tmp_path, 200)
    async with TaskQueue(str(dst)) as queue:
        theirs = await queue.enqueue(jobs.add, 5, 5)
    source, before = await dump(src), await dump(dst)

    proc = migrate_cli(str(src), str(dst))
    assert proc.returncode == 1
    assert "is not empty" in proc.stderr and "--into-existing" in proc.stderr
    assert await dump(dst) == before and await dump(src) == source

    # A destination holding the same ids (a copy of the source's file) is refused.
    twin = tmp_path / "twin.db"
    shutil.copy(src, twin)
    twin_before = await dump(twin)
    proc = migrate_cli(str(src), str(twin), "--into-existing")
    assert proc.returncode == 1
    assert "--into-existing refused" in proc.stderr
    assert f"sitq_tasks {source['order'][0]!r}" in proc.stderr or "sitq_tasks '" in proc.stderr
    assert await dump(twin) == twin_before and await dump(src) == source

    # So is one where a live task holds a unique key a live source task holds.
    uniq = tmp_path / "uniq.db"
    async with TaskQueue(str(uniq)) as queue:
        await queue.with_options(unique_key="the-one").enqueue(jobs.add, 2, 2)
    uniq_before = await dump(uniq)
    proc = migrate_cli(str(src), str(uniq), "--into-existing")
    assert proc.returncode == 1
    assert "--into-existing refused" in proc.stderr and "unique_key 'the-one'" in proc.stderr
    assert await dump(uniq) == uniq_before

    # Without collisions it adds the source's rows to the destination's.
    ok(migrate_cli(str(src), str(dst), "--into-existing"))
    merged = await dump(dst)
    assert theirs in merged["order"]
    assert len(merged["tasks"]) == len(source["tasks"]) + 1
    # The source's tasks keep their order (where ids are integers, the rows' order
    # is the ids', so the destination's own task sits wherever its id falls).
    assert [task_id for task_id in merged["order"] if task_id != theirs] == source["order"]


async def test_live_workers_on_the_source_are_named_and_nothing_is_created(
    tmp_path: Path, spawn_worker: Any
) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    async with TaskQueue(str(src)) as queue:
        await queue.enqueue_many(jobs.add, [(i, i) for i in range(10)])
    worker = spawn_worker("-q", "other", db=src).wait_started()
    before = await dump(src)
    proc = migrate_cli(str(src), str(dst))
    assert proc.returncode == 1
    assert "1 worker(s) are alive" in proc.stderr and f"pid {worker.pid}" in proc.stderr
    assert "--wait" in proc.stderr
    assert not dst.exists()
    assert await dump(src) == before


async def test_differing_schema_versions_are_refused(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    async with TaskQueue(str(src)) as queue:
        await queue.enqueue(jobs.add, 1, 1)
    async with TaskQueue(str(dst)):
        pass
    with sqlite3.connect(dst) as conn:  # as a newer sitq would leave it
        conn.execute("UPDATE sitq_meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    before = await dump(src)
    proc = migrate_cli(str(src), str(dst))
    assert proc.returncode == 1
    assert "version" in proc.stderr and "99" in proc.stderr, proc.stderr
    with sqlite3.connect(dst) as conn:
        assert conn.execute("SELECT count(*) FROM sitq_tasks").fetchone() == (0,)
        assert conn.execute(
            "SELECT value FROM sitq_meta WHERE key='schema_version'"
        ).fetchone() == ("99",)
    conn.close()
    assert await dump(src) == before


# -- schema versions: read before anything opens either database -----------------

#: This sitq's schema versions, and one older (what a previous release left).
SQLITE_NOW = sqlite_schema.SCHEMA_VERSION
POSTGRES_NOW = postgres_schema.SCHEMA_VERSION


def older_sqlite(path: Path, *, with_task: bool) -> int:
    """An SQLite database as the previous sitq release left it: only its
    migrations run (as sitq runs them), optionally one task queued. Returns its
    version."""
    version = SQLITE_NOW - 1
    conn = sqlite_store_at(path, version)
    try:
        if with_task:
            conn.execute(
                "INSERT INTO sitq_tasks (id, queue, func_name, payload, status, enqueued_at, "
                "available_at) VALUES ('old-task', 'default', 'x', x'00', 'queued', 1, 1)"
            )
    finally:
        conn.close()
    return version


async def older_postgres(schema: str, *, with_task: bool) -> int:
    """``schema`` as the previous sitq release left it (see :func:`older_sqlite`)."""
    version = POSTGRES_NOW - 1
    conn = await postgres_store_at(schema, version)
    try:
        if with_task:
            await conn.execute(
                f'INSERT INTO "{schema}".sitq_tasks (id, queue, func_name, payload, status, '
                "enqueued_at, available_at) "
                "VALUES ('old-task', 'default', 'x', '\\x00', 'queued', 1, 1)"
            )
    finally:
        await conn.close()
    return version


def files_in(folder: Path) -> dict[str, str]:
    """Every file in ``folder`` with its SHA-256: a database byte for byte, and no
    file created (a destination, a -wal or -shm left behind)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


async def postgres_contents(schema: str) -> dict[str, Any]:
    """Everything in ``schema``: its tables' columns, indexes and rows (the stored
    schema version among them), its functions and triggers."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        tables = [
            r[0]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
                "ORDER BY 1",
                schema,
            )
        ]
        out: dict[str, Any] = {
            "columns": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = $1 ORDER BY 1, 2",
                    schema,
                )
            ],
            "indexes": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY 1",
                    schema,
                )
            ],
            "functions": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
                    "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 "
                    "ORDER BY 1, 2",
                    schema,
                )
            ],
            "triggers": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT event_object_table, trigger_name, action_statement "
                    "FROM information_schema.triggers WHERE trigger_schema = $1 ORDER BY 1, 2, 3",
                    schema,
                )
            ],
        }
        for table in tables:
            rows = await conn.fetch(f'SELECT * FROM "{schema}"."{table}"')
            out[table] = sorted(repr(tuple(r)) for r in rows)
        return out
    finally:
        await conn.close()


def with_password(url: str) -> tuple[str, str]:
    """``url`` with a password in it (the test server trusts any), and the password."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    secret = "hunter2-s3cret"
    user, host = parts.netloc.rsplit("@", 1) if "@" in parts.netloc else ("postgres", parts.netloc)
    return urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}")), secret


def sitq_status(db: str) -> None:
    """What the refusal says to do for an older database: open it once with this sitq."""
    proc = subprocess.run(
        [SITQ, "status", "--db", db], capture_output=True, text=True, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("side", ["source", "destination"])
async def test_an_older_sqlite_schema_is_refused_not_upgraded(tmp_path: Path, side: str) -> None:
    """An SQLite source or destination at the previous schema version is refused
    before it is opened: not upgraded in place, byte for byte as it was, and no
    destination created; the message names both, both versions and what to do."""
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    if side == "source":
        old, version = src, older_sqlite(src, with_task=True)  # dst: new
    else:
        async with TaskQueue(str(src)) as queue:
            await queue.enqueue(jobs.add, 1, 1)
        old, version = dst, older_sqlite(dst, with_task=False)
    before = files_in(tmp_path)

    proc = migrate_cli(str(src), str(dst))
    assert proc.returncode == 1, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "schema versions differ" in err
    assert f"source sqlite database {src} is at version " in err
    assert f"destination sqlite database {dst} " in err
    assert f"version {version}" in err and f"version {SQLITE_NOW}" in err
    assert f"Upgrade the {side} first" in err and f"`sitq status --db {old}`" in err
    assert "Nothing was changed" in err
    assert files_in(tmp_path) == before

    # Doing what it says works: open it once with this sitq, then migrate.
    sitq_status(str(old))
    ok(migrate_cli(str(src), str(dst)))
    if side == "source":
        assert (await dump(dst))["order"] == ["old-task"]
    else:
        assert (await dump(dst))["order"] == (await dump(src))["order"]


@pytest.mark.parametrize("side", ["source", "destination"])
async def test_an_older_postgres_schema_is_refused_not_upgraded(
    tmp_path: Path, pg_schemas: Callable[[str], str], side: str
) -> None:
    """The same on PostgreSQL: its tables, indexes and rows (the stored version
    among them) unchanged, and the password never printed."""
    url, password = with_password(pg_schemas("old"))
    schema = url.rsplit("sitq_schema=", 1)[1]
    version = await older_postgres(schema, with_task=side == "source")
    local = tmp_path / "local.db"
    if side == "destination":
        async with TaskQueue(str(local)) as queue:
            await queue.enqueue(jobs.add, 1, 1)
    src, dst = (url, str(local)) if side == "source" else (str(local), url)
    before, files_before = await postgres_contents(schema), files_in(tmp_path)

    proc = migrate_cli(src, dst)
    assert proc.returncode == 1, proc.stderr
    err = " ".join(proc.stderr.split())
    assert password not in proc.stdout + proc.stderr
    assert "schema versions differ" in err
    assert f"(schema {schema}) is at version {version}" in err
    assert f"sqlite database {local}" in err and f"version {SQLITE_NOW}" in err
    assert f"Upgrade the {side} first" in err
    assert f"`sitq status --db` with the {side}'s URL" in err
    assert await postgres_contents(schema) == before
    assert files_in(tmp_path) == files_before

    sitq_status(url)
    ok(migrate_cli(src, dst))
    if side == "source":
        assert (await dump(dst))["order"] == ["old-task"]
    else:
        assert (await dump(dst))["order"] == (await dump(src))["order"]


async def test_a_newer_source_is_refused_naming_both_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    async with TaskQueue(str(src)) as queue:
        await queue.enqueue(jobs.add, 1, 1)
    newer = SQLITE_NOW + 1
    with sqlite3.connect(src) as conn:  # as a newer sitq would leave it
        conn.execute("UPDATE sitq_meta SET value = ? WHERE key = 'schema_version'", (str(newer),))
    conn.close()
    before = files_in(tmp_path)
    proc = migrate_cli(str(src), str(dst))
    assert proc.returncode == 1
    err = " ".join(proc.stderr.split())
    assert f"source sqlite database {src} is at version {newer}" in err
    assert f"destination sqlite database {dst} is new" in err
    assert "written by a newer sitq: upgrade sitq" in err
    assert files_in(tmp_path) == before


async def test_a_file_of_other_tables_or_none_is_refused_byte_for_byte(tmp_path: Path) -> None:
    """An application's own SQLite file as the destination (or the source), and a
    missing source: refused in migrate's words, nothing created or changed (the
    destination was switched to WAL mode before it was found not to be sitq's)."""
    src, app = tmp_path / "src.db", tmp_path / "app.db"
    async with TaskQueue(str(src)) as queue:
        await queue.enqueue(jobs.add, 1, 1)
    with sqlite3.connect(app) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.close()
    before = files_in(tmp_path)
    proc = migrate_cli(str(src), str(app))
    assert proc.returncode == 1
    err = " ".join(proc.stderr.split())
    assert f"the destination sqlite database {app} holds tables that are not sitq's" in err
    assert "migrate into a new file" in err and "--db" not in err
    proc = migrate_cli(str(app), str(tmp_path / "new.db"))
    assert proc.returncode == 1
    assert f"the source sqlite database {app} holds tables that are not sitq's" in " ".join(
        proc.stderr.split()
    )
    proc = migrate_cli(str(tmp_path / "missing.db"), str(tmp_path / "new.db"))
    assert proc.returncode == 1
    assert "no sitq database at the source" in proc.stderr and "nothing was created" in proc.stderr
    assert files_in(tmp_path) == before


async def test_peek_schema_reads_without_creating_or_upgrading(
    tmp_path: Path, pg_schemas: Callable[[str], str]
) -> None:
    """What the migration's check stands on: ``TaskQueue.peek_schema``."""
    missing, old, foreign = tmp_path / "missing.db", tmp_path / "old.db", tmp_path / "app.db"
    version = older_sqlite(old, with_task=True)
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.close()
    before = files_in(tmp_path)
    state = await TaskQueue(str(missing)).peek_schema()
    assert (state.stored, state.current, state.up_to_date) == (None, SQLITE_NOW, False)
    state = await TaskQueue(str(old)).peek_schema()
    assert (state.stored, state.database) == (version, f"sqlite database {old}")
    with pytest.raises(NotASitqDatabase, match="tables that are not sitq's"):
        await TaskQueue(str(foreign)).peek_schema()
    assert files_in(tmp_path) == before
    async with TaskQueue(str(old)) as queue:  # connecting upgrades; peeking still works
        assert (await queue.peek_schema()).up_to_date

    url = pg_schemas("peek")
    schema = url.rsplit("sitq_schema=", 1)[1]
    assert (await TaskQueue(url).peek_schema()).stored is None
    assert not any((await postgres_contents(schema)).values())
    pg_version = await older_postgres(schema, with_task=False)
    assert (await TaskQueue(url).peek_schema()).stored == pg_version


async def test_an_unreachable_destination_never_shows_its_password(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    async with TaskQueue(str(src)) as queue:
        await queue.enqueue(jobs.add, 1, 1)
    before = await dump(src)
    proc = migrate_cli(str(src), "postgresql://sitq:hunter2-s3cret@127.0.0.1:1/app")
    assert proc.returncode == 1
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
    assert await dump(src) == before


def test_the_command_is_wired_with_its_options() -> None:
    proc = subprocess.run([SITQ, "migrate", "--help"], capture_output=True, text=True, check=True)
    for option in ("--wait", "--into-existing", "--delete-source", "--chunk-size"):
        assert option in proc.stdout
