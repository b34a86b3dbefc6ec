"""What a producer sees when the storage fails for real (issue 20, items 9 and 12):
a full disk, a PostgreSQL server that goes away and comes back, and the cost of
many idle ``get_result`` waiters."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import jobs
import pytest
from support import POSTGRES_URL, await_until, drop_postgres_schema, postgres_available

from sitq import SyncTaskQueue, TaskQueue, TaskStatus, Worker
from sitq.errors import DatabaseUnavailable, SitqError, StorageError

# -- a full disk ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB file system of its own (a tmpfs; mounting one needs root)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def stored_ids(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT CAST(id AS TEXT) FROM sitq_tasks")}


async def test_a_full_disk_is_named_on_every_enqueue_path(small_disk: Path) -> None:
    db = small_disk / "tasks.db"
    blob = os.urandom(16_000)  # random: nothing compresses it away
    acknowledged: list[str] = []
    errors: list[BaseException] = []
    async with TaskQueue(db) as queue:

        async def one() -> None:
            try:
                acknowledged.append(await queue.enqueue(jobs.echo_kwargs, blob))
            except Exception as exc:
                errors.append(exc)

        async def many(count: int) -> None:
            try:
                acknowledged.extend(await queue.enqueue_many(jobs.echo_kwargs, [blob] * count))
            except Exception as exc:
                errors.append(exc)

        # Alone, in groups committed together, and in batches large enough for
        # the database thread, until the disk has been full many times over.
        for _ in range(40):
            await one()
            await asyncio.gather(*(one() for _ in range(5)))
            await many(300)
            await many(3)
        assert len(errors) > 20, "the disk never filled"
        with SyncTaskQueue(db) as sync_queue:

            def sync_enqueue() -> None:
                for _ in range(10):
                    try:
                        acknowledged.append(sync_queue.enqueue(jobs.echo_kwargs, blob))
                    except Exception as exc:
                        errors.append(exc)

            await asyncio.to_thread(sync_enqueue)
        for error in errors:
            assert isinstance(error, StorageError), repr(error)
            assert "the disk is full" in str(error) and "free some space" in str(error)
            assert isinstance(error.__cause__, sqlite3.Error)
        # Every acknowledged enqueue is stored, and the database still reads.
        assert set(acknowledged) <= stored_ids(db)
        assert await queue.status(acknowledged[0]) is TaskStatus.QUEUED
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- PostgreSQL going away and coming back --------------------------------------------


class TcpProxy:
    """Forwards a local port to the PostgreSQL server; ``stop()`` closes the port
    and cuts every connection, as a server restart does, and ``start()`` opens
    the same port again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links.difference_update((writer, up_writer))


@pytest.fixture
async def postgres_schema(tmp_path: Path) -> AsyncIterator[str]:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
    await drop_postgres_schema(schema)
    yield schema
    await drop_postgres_schema(schema)


def via(port: int, schema: str) -> str:
    """The test server's URL through another port, with sitq's tables in ``schema``."""
    parts = urlsplit(POSTGRES_URL)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    return parts._replace(netloc=netloc, query=f"sitq_schema={schema}").geturl()


async def until_waiting(queue: TaskQueue, task_ids: list[str]) -> None:
    """Until a ``get_result`` waits for each of ``task_ids`` in the queue's shared
    poll loop (its future parked there, the loop running): acting before that
    would test the first look-up instead of the loop."""

    async def waiting() -> bool:
        waiters = queue._waiters
        poller = waiters._poller
        parked = all(task_id in waiters._waiting for task_id in task_ids)
        return parked and poller is not None and not poller.done()

    await await_until(waiting, 10, "the waiters to wait in the shared poll loop")


async def test_get_result_waits_out_a_postgres_outage_within_its_timeout(
    postgres_schema: str,
) -> None:
    parts = urlsplit(POSTGRES_URL)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    direct = via(parts.port or 5432, postgres_schema)
    async with TaskQueue(via(proxy.port, postgres_schema)) as queue:
        task_id = await queue.enqueue(jobs.add, 2, 3)
        waiting = asyncio.ensure_future(queue.get_result(task_id, timeout=60))
        await until_waiting(queue, [task_id])  # nothing runs the task yet
        await proxy.stop()
        outage_ends = time.monotonic() + 3.0
        while time.monotonic() < outage_ends:  # the server is gone for 3 s
            assert not waiting.done(), waiting.exception()
            await asyncio.sleep(0.1)
        # Within the outage, a call without a wait names the cause.
        with pytest.raises(DatabaseUnavailable, match="unreachable") as caught:
            await queue.status(task_id)
        assert caught.value.__cause__ is not None
        with pytest.raises(DatabaseUnavailable, match="try again once it is back"):
            await queue.enqueue(jobs.noop)
        await proxy.start()
        worker = Worker(direct)
        await worker.start()
        try:
            result = await asyncio.wait_for(waiting, 20)
        finally:
            await worker.stop()
        assert result is not None and result.value == 5
        # Unreachable past the timeout: it says so instead of "not finished".
        other = await queue.enqueue(jobs.noop)
        await proxy.stop()
        with pytest.raises(DatabaseUnavailable):
            await queue.get_result(other, timeout=1.0)
        await proxy.start()


# -- many idle waiters ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_thousand_idle_waiters_share_one_poll_loop(backend: str, tmp_path: Path) -> None:
    db, schema = str(tmp_path / "tasks.db"), ""
    if backend == "postgres":
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
        await drop_postgres_schema(schema)
        db = via(urlsplit(POSTGRES_URL).port or 5432, schema)
    try:
        async with TaskQueue(db) as queue:
            ids = await queue.enqueue_many(jobs.noop, [() for _ in range(1000)])
            waiters = [asyncio.ensure_future(queue.get_result(i, timeout=60)) for i in ids]
            await until_waiting(queue, ids)
            cpu, wall = time.process_time(), time.monotonic()
            await asyncio.sleep(2.0)
            used = (time.process_time() - cpu) / (time.monotonic() - wall)
            assert not any(w.done() for w in waiters)
            # Before: each waiter looked up its own task 20 times a second (86% of
            # a core on SQLite, 69% on PostgreSQL).
            assert used < 0.15, f"1,000 idle waiters used {used:.0%} of a core"
            worker = Worker(db, concurrency=8)
            await worker.start()
            try:
                results = await asyncio.wait_for(asyncio.gather(*waiters), 60)
            finally:
                await worker.stop()
            assert all(r is not None and r.ok for r in results)
    finally:
        if backend == "postgres":
            await drop_postgres_schema(schema)


async def test_a_waiter_of_a_task_purged_meanwhile_is_told(db_path: Path) -> None:
    async with TaskQueue(db_path) as queue:
        task_id = await queue.enqueue(jobs.noop)
        waiting = asyncio.ensure_future(queue.get_result(task_id, timeout=30))
        await until_waiting(queue, [task_id])  # the shared loop must find it gone
        with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute("DELETE FROM sitq_tasks WHERE id = ?", (task_id,))
        with pytest.raises(SitqError, match=task_id):
            await asyncio.wait_for(waiting, 10)
