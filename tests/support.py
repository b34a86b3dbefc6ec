"""Helpers the tests share: real `sitq worker` processes, and polling with deadlines."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
SITQ = str(Path(sys.executable).with_name("sitq"))


def task_ids_for(backend: Any, count: int = 1) -> list[str]:
    """Ids for new tasks in the form ``backend`` keeps (integer row ids in a new
    SQLite file, text elsewhere), made as a producer makes them."""
    ids = backend.task_ids(count)
    if ids is None:
        ids = backend.reserve_task_ids_blocking(count)
    assert ids is not None
    return list(ids)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: `jobs` importable, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def until_listening(backend: Any, kind: str = "tasks", timeout: float = 15.0) -> None:
    """Return once ``backend`` hears wake-ups of ``kind``: once a wait runs its
    whole timeout (while deaf, or just after it starts to listen, a wait for
    tasks returns within DEAF_POLL). Earlier wake-ups are drained too."""
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        await backend.wait_for_change(kind, 0.2)
        if time.monotonic() - started >= 0.15:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{backend.describe()} never heard {kind} wake-ups")


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


async def await_until(
    predicate: Callable[[], Awaitable[object]], timeout: float = 15.0, what: str = ""
) -> None:
    """Async ``wait_until``."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


class WorkerProcess:
    """A real `sitq worker` process, started the way users start it."""

    def __init__(
        self,
        db: Path | str,
        log_dir: Path,
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [SITQ, "worker", "--db", str(db), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=subprocess_env(**(env or {})),
            cwd=cwd or log_dir,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self, timeout: float = 20.0) -> WorkerProcess:
        wait_until(
            lambda: " started: " in self.output() or self.process.poll() is not None,
            timeout,
            "the worker to start",
        )
        assert self.process.poll() is None, f"worker exited early:\n{self.output()}"
        return self

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


class ServingWorker:
    """A worker serving ``db_path`` for a test, in this process or as `sitq worker`."""

    def __init__(self, kind: str, in_process: object = None, process: WorkerProcess | None = None):
        self.kind = kind
        self.in_process = in_process
        self.process = process

    def ran(self, worker_id: str | None) -> bool:
        """True if ``worker_id`` (from a Result) is this worker."""
        if self.process is not None:
            return f"-{self.process.pid}-" in (worker_id or "")
        return worker_id == getattr(self.in_process, "id", None)


POSTGRES_URL = os.environ.get("SITQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_available() -> str | None:
    """None if the test PostgreSQL answers, else why not. In CI its absence is an
    error, not a reason to skip: Postgres tests must run there."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(POSTGRES_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2).close()
    except OSError as exc:
        reason = f"PostgreSQL at {parts.hostname}:{parts.port} is not reachable ({exc})"
        if os.environ.get("CI"):
            raise RuntimeError(f"{reason}; CI must run the PostgreSQL tests") from exc
        return reason + "; set SITQ_TEST_POSTGRES to run these tests"
    return None


def postgres_url(schema: str) -> str:
    """The test server's URL with sitq's tables in ``schema``."""
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}sitq_schema={schema}"


async def drop_postgres_schema(schema: str) -> None:
    """Drop ``schema`` and everything in it. A test stops the workers on it
    first; a deadlock with a connection still closing is retried, as
    PostgreSQL advises for a deadlock's victim."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        for attempt in range(5):
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except asyncpg.DeadlockDetectedError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
    finally:
        await conn.close()


def sqlite_store_at(path: Path, version: int) -> sqlite3.Connection:
    """An SQLite file as sitq's schema ``version`` left it (its migrations only,
    as sitq runs them): the open autocommit connection, for the caller to add
    rows through and close."""
    from sitq.backends.sqlite import schema

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for target in range(1, version + 1):
        for statement in schema.MIGRATIONS[target]:
            conn.execute(statement)
    conn.execute(schema.SQL.write_schema_version, (str(version),))
    return conn


async def postgres_store_at(schema: str, version: int) -> Any:
    """``schema`` (dropped first) as sitq's schema ``version`` left it: an open
    asyncpg connection to the test server, for the caller to add rows through
    and close."""
    import asyncpg

    from sitq.backends.postgres import schema as postgres_schema

    def named(sql: str) -> str:
        return sql.replace("{s}", f'"{schema}"')

    await drop_postgres_schema(schema)
    conn = await asyncpg.connect(POSTGRES_URL)
    await conn.execute(named(postgres_schema.SQL.create_schema))
    for target in range(1, version + 1):
        for statement in postgres_schema.MIGRATIONS[target]:
            await conn.execute(named(statement))
    await conn.execute(named(postgres_schema.SQL.write_schema_version), str(version))
    return conn
