"""What is particular to the PostgreSQL backend: errors, schemas, LISTEN/NOTIFY.

The shared contract runs on PostgreSQL in tests/backends and in the tests that
take ``db_url``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import jobs
import pytest
from support import (
    POSTGRES_URL,
    SITQ,
    TESTS_DIR,
    await_until,
    drop_postgres_schema,
    postgres_available,
    postgres_url,
    subprocess_env,
)

from sitq import TaskQueue, Worker
from sitq.backends.postgres import PostgresBackend
from sitq.errors import ConfigurationError, DatabaseError, SchemaVersionError


@pytest.fixture
async def schema(tmp_path: Path) -> AsyncIterator[str]:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    name = f"t_{abs(hash(str(tmp_path))):x}"[:30]
    await drop_postgres_schema(name)
    yield name
    await drop_postgres_schema(name)


async def test_unreachable_server_names_host_and_port_never_the_password() -> None:
    backend = PostgresBackend("postgresql://postgres:s3cret-pw@127.0.0.1:1/test")
    with pytest.raises(DatabaseError) as info:
        await backend.connect()
    message = str(info.value)
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in message
    assert "s3cret-pw" not in message


async def test_refused_user_and_missing_database(schema: str) -> None:
    host = POSTGRES_URL.split("@", 1)[1].split("/", 1)[0]
    backend = PostgresBackend(f"postgresql://no_such_role:s3cret-pw@{host}/test")
    with pytest.raises(DatabaseError, match="refused user 'no_such_role'") as info:
        await backend.connect()
    assert "s3cret-pw" not in str(info.value)
    backend = PostgresBackend(f"postgresql://postgres@{host}/no_such_database")
    with pytest.raises(DatabaseError, match="no database 'no_such_database'"):
        await backend.connect()


async def test_incompatible_schema_version(schema: str) -> None:
    async with TaskQueue(postgres_url(schema)):
        pass
    conn = await asyncpg.connect(POSTGRES_URL)
    await conn.execute(f"UPDATE \"{schema}\".sitq_meta SET value = '99'")
    await conn.close()
    with pytest.raises(SchemaVersionError, match="schema version 99.*upgrade sitq"):
        await TaskQueue(postgres_url(schema)).connect()


def test_bad_schema_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="schema name"):
        PostgresBackend("postgresql://localhost/test?sitq_schema=x;drop")


@pytest.mark.parametrize(
    "url", ["postgresql://bob:s3cr/et@localhost/test", "postgresql://bob:1234/s3cret@localhost/t"]
)
def test_unencoded_password_is_an_error_that_does_not_show_it(url: str) -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        PostgresBackend(url)
    assert "s3cr" not in str(info.value)


async def test_schema_argument_wins_over_the_url_parameter(schema: str) -> None:
    backend = PostgresBackend(postgres_url("ignored_schema"), schema=schema)
    await backend.connect()
    try:
        assert backend.schema == schema
    finally:
        await backend.close()


async def test_schemas_keep_apps_apart(schema: str) -> None:
    other = schema + "_b"
    await drop_postgres_schema(other)
    try:
        async with TaskQueue(postgres_url(schema)) as a, TaskQueue(postgres_url(other)) as b:
            await a.enqueue(jobs.noop)
            assert (await a.stats())["totals"]["queued"] == 1
            assert (await b.stats())["totals"]["queued"] == 0
    finally:
        await drop_postgres_schema(other)


def test_cli_refuses_a_missing_schema_and_init_creates_it(schema: str) -> None:
    url = postgres_url(schema)
    run = subprocess.run([SITQ, "status", "--db", url], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "no sitq schema" in run.stderr
    assert (
        subprocess.run([SITQ, "init", "--db", url], capture_output=True, timeout=60).returncode == 0
    )
    run = subprocess.run([SITQ, "status", "--db", url], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_missing_extra_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['asyncpg'] = None\n"
        "from sitq import TaskQueue\n"
        "TaskQueue('postgresql://localhost/test')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env()
    )
    assert run.returncode == 1
    assert "pip install 'sitq[postgres]'" in run.stderr


async def _listener_pids(schema: str) -> set[int]:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            f"sitq-listen-{schema}",
        )
        return {row["pid"] for row in rows}
    finally:
        await conn.close()


async def test_listener_reconnects_after_its_connection_is_killed(schema: str) -> None:
    url = postgres_url(schema)
    async with TaskQueue(url) as queue:
        worker = Worker(url)
        await worker.start()
        try:
            first = await queue.enqueue(jobs.add, 1, 1)  # the worker is listening by now
            assert (await queue.get_result(first, timeout=10)).value == 2  # type: ignore[union-attr]

            async def listening() -> bool:
                return bool(await _listener_pids(schema))

            await await_until(listening, 10, "a LISTEN session")
            old = await _listener_pids(schema)
            conn = await asyncpg.connect(POSTGRES_URL)
            for pid in old:
                await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
            await conn.close()

            async def relistening() -> bool:
                pids = await _listener_pids(schema)
                return bool(pids) and not pids & old

            await await_until(relistening, 15, "the listener to reconnect")
            after = await queue.enqueue(jobs.add, 2, 2)
            result = await queue.get_result(after, timeout=5)
            assert result is not None and result.value == 4
        finally:
            await worker.stop(timeout=5)


@pytest.mark.slow
async def test_many_hosts_simulated_one_worker_killed(
    schema: str, tmp_path: Path, spawn_worker: Any
) -> None:
    """4 worker processes (each its own pool, as on separate hosts) and 2 producers
    on one server; one worker is SIGKILLed mid-run. Nothing is lost, every task has
    exactly one result, and only tasks the killed worker had started ran twice."""
    url = postgres_url(schema)
    log = tmp_path / "runs.log"
    per_producer = 5000
    async with TaskQueue(url):
        pass  # create the schema before the workers look for it
    workers = [spawn_worker("--concurrency", "4", "--lease", "2", db=url) for _ in range(4)]
    for worker in workers:
        worker.wait_started()
    producers = [
        subprocess.Popen(
            [
                sys.executable,
                str(TESTS_DIR / "producer_process.py"),
                url,
                prefix,
                str(per_producer),
                str(log),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
        for prefix in ("a", "b")
    ]
    try:
        async with TaskQueue(url) as queue:

            async def some_done() -> bool:
                return (await queue.stats())["totals"]["succeeded"] >= 1500

            await await_until(some_done, 60, "1,500 tasks to finish")
            victim = workers[0]
            victim.send(signal.SIGKILL)
            assert victim.wait(10) == -signal.SIGKILL
            for producer in producers:
                out, _ = producer.communicate(timeout=180)
                assert producer.returncode == 0, out.decode()

            async def all_done() -> bool:
                return (await queue.stats())["totals"]["succeeded"] == 2 * per_producer

            await await_until(all_done, 180, "every task to succeed")
            totals = (await queue.stats())["totals"]
    finally:
        for producer in producers:
            if producer.poll() is None:
                producer.kill()
    assert totals["failed"] == 0 and totals["queued"] == 0 and totals["running"] == 0
    starts: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        kind, marker, pid = line.split()
        if kind == "S":
            starts.setdefault(marker, []).append(int(pid))
    assert len(starts) == 2 * per_producer
    reran = {marker for marker, pids in starts.items() if len(pids) > 1}
    assert all(victim.pid in starts[marker] for marker in reran), reran
