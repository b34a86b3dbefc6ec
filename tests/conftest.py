"""Shared fixtures: temporary databases, and real `sitq worker` processes."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from support import (
    ServingWorker,
    WorkerProcess,
    drop_postgres_schema,
    postgres_available,
    postgres_url,
)

from sitq import TaskQueue


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tasks.db"


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database on each backend: an SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "tasks.db")
        return
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
    await drop_postgres_schema(schema)
    yield postgres_url(schema)
    await drop_postgres_schema(schema)


@pytest.fixture
async def queue(db_path: Path) -> AsyncIterator[TaskQueue]:
    async with TaskQueue(db_path) as q:
        yield q


@pytest.fixture
def spawn_worker(db_path: Path, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `sitq worker` processes on ``db_path``; all are killed at teardown."""
    started: list[WorkerProcess] = []

    def spawn(
        *args: str,
        db: Path | str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        worker = WorkerProcess(db or db_path, tmp_path, *args, cwd=cwd, env=env)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()


@pytest.fixture
def sigkill_on_teardown() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes appended here are killed at teardown."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)


@pytest.fixture(params=["in-process", "sitq-worker"])
async def worker(
    request: pytest.FixtureRequest,
    db_path: Path,
    spawn_worker: Callable[..., WorkerProcess],
) -> AsyncIterator[ServingWorker]:
    """The contract's tests run twice: with an in-process Worker, and with a real
    `sitq worker` process (concurrency 4, 5 s lease) on the same file."""
    from sitq import Worker

    if request.param == "in-process":
        w = Worker(db_path, concurrency=4, lease_seconds=5)
        await w.start()
        yield ServingWorker("in-process", in_process=w)
        await w.stop(timeout=5)
    else:
        async with TaskQueue(db_path):
            pass  # the worker needs the database to exist
        yield ServingWorker(
            "sitq-worker", process=spawn_worker("--concurrency", "4", "--lease", "5").wait_started()
        )
