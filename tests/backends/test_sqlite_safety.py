"""SQLite backend safety: the wake-up folder in the shared temp dir, WAL growth,
one event loop per backend, and inputs that must fail clearly."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import jobs
import pytest
from support import SITQ, WorkerProcess, subprocess_env

from sitq import Result, SyncTaskQueue, TaskQueue, TaskStatus, Worker
from sitq.backends import open_backend
from sitq.backends.base import StoreTransaction
from sitq.backends.sqlite import SQLiteBackend
from sitq.backends.sqlite.wakeup import wake_directory
from sitq.errors import ConfigurationError

# -- the wake-up folder (issue 20.1) ------------------------------------------


@pytest.fixture
def temp_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private stand-in for the system temp dir, short enough for socket paths,
    so these tests never touch the real ``/tmp/sitq-<uid>`` other tests use."""
    root = Path(tempfile.mkdtemp(prefix="sq", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setenv("TMPDIR", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _victim(path: Path) -> Path:
    """A directory the sitq user can write, with files an attacker wants deleted,
    one of them named like a sitq socket."""
    path.mkdir()
    for name in ("precious.txt", "1234-deadbeef"):
        (path / name).write_text("keep me")
    return path


def _victim_files(path: Path) -> list[str]:
    return sorted(os.listdir(path))


async def _enqueue_and_run(db: Path) -> None:
    """Enqueue, have a worker in this process run it, and wait for the result:
    with the folder refused, wake-ups are off and polling still finds both."""
    async with TaskQueue(db) as queue:
        worker = Worker(db)
        await worker.start()
        try:
            task_id = await queue.enqueue(jobs.add, 2, 3)
            result = await queue.get_result(task_id, timeout=20)
        finally:
            await worker.stop(timeout=5)
    assert result is not None and result.status is TaskStatus.SUCCEEDED
    assert result.value == 5


@pytest.mark.parametrize("level", ["top", "database", "kind"])
async def test_a_symlinked_wake_folder_is_never_followed(
    level: str, temp_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another user who made the predictable path first, as a symlink to a folder
    the sitq user can write, must not get its files deleted (they were, by the
    first enqueue), and sitq must keep working."""
    db = tmp_path / "tasks.db"
    victim = _victim(tmp_path / "victim")
    kind_dir = wake_directory(str(db)) / "t"
    planted = {"top": kind_dir.parent.parent, "database": kind_dir.parent, "kind": kind_dir}[level]
    planted.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    planted.symlink_to(victim, target_is_directory=True)
    caplog.set_level(logging.WARNING, "sitq.sqlite")

    await _enqueue_and_run(db)

    assert _victim_files(victim) == ["1234-deadbeef", "precious.txt"]
    assert planted.is_symlink()
    assert "wake-ups are off" in caplog.text and "symlink" in caplog.text


@pytest.mark.parametrize("mode", [0o777, 0o770])
async def test_what_was_planted_in_an_own_folder_others_could_write_is_refused(
    mode: int, temp_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Our top folder, left writable by others: it is ours, so it is made private,
    but whatever was planted in it meanwhile (here a kind folder that is a symlink
    to the victim, and a plain file with a socket's name) stays, and nothing is
    sent into it."""
    db = tmp_path / "tasks.db"
    victim = _victim(tmp_path / "victim")
    top = wake_directory(str(db)).parent
    (top / wake_directory(str(db)).name).mkdir(parents=True)
    top.chmod(mode)
    (wake_directory(str(db)) / "t").symlink_to(victim, target_is_directory=True)
    (wake_directory(str(db)) / "r").mkdir()
    (wake_directory(str(db)) / "r" / "99-0badf00d").write_text("not a socket")
    caplog.set_level(logging.WARNING, "sitq.sqlite")

    await _enqueue_and_run(db)

    assert _victim_files(victim) == ["1234-deadbeef", "precious.txt"]
    assert (wake_directory(str(db)) / "r" / "99-0badf00d").read_text() == "not a socket"
    assert stat.S_IMODE(top.stat().st_mode) == 0o700
    assert "wake-ups are off" in caplog.text and "symlink" in caplog.text


async def test_folders_an_older_sitq_made_under_umask_002_are_tightened_and_used(
    temp_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Older sitq made ``sitq-<uid>/<digest>`` with ``mkdir(parents=True)``: 0775
    under umask 002. They are ours: made 0700 and used, with wake-ups on (they
    were refused as "writable by other users", turning wake-ups off for good)."""
    db = tmp_path / "tasks.db"
    digest_dir = wake_directory(str(db))
    old_umask = os.umask(0o002)
    try:
        digest_dir.mkdir(parents=True)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(digest_dir.stat().st_mode) == 0o775
    caplog.set_level(logging.WARNING, "sitq.sqlite")

    async with TaskQueue(db) as queue:
        worker = Worker(db)
        await worker.start()
        try:
            sockets = digest_dir / "t"  # the idle worker listens there for tasks
            deadline = time.monotonic() + 10
            while not (sockets.is_dir() and os.listdir(sockets)):
                assert time.monotonic() < deadline, "the worker bound no wake-up socket"
                await asyncio.sleep(0.01)
            for folder in (digest_dir.parent, digest_dir):
                assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            result = await queue.get_result(await queue.enqueue(jobs.add, 2, 3), timeout=20)
        finally:
            await worker.stop(timeout=5)
    assert result is not None and result.value == 5
    assert "wake-ups are off" not in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another user needs root")
async def test_a_wake_folder_owned_by_another_user_is_refused(
    temp_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "tasks.db"
    top = wake_directory(str(db)).parent
    top.mkdir(mode=0o700)
    os.chown(top, 65534, 65534)
    caplog.set_level(logging.WARNING, "sitq.sqlite")

    await _enqueue_and_run(db)

    assert os.listdir(top) == []
    assert "owned by uid 65534" in caplog.text


async def test_only_sitq_sockets_are_removed_from_the_wake_folder(
    temp_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In sitq's own folder, a dead peer's socket is tidied away; plain files,
    even with a socket's name, and foreign names are left alone."""
    db = tmp_path / "tasks.db"
    kind_dir = wake_directory(str(db)) / "t"
    kind_dir.mkdir(parents=True, mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(kind_dir / "4242-0badf00d"))
    dead.close()  # its process is gone: sending to it is refused
    (kind_dir / "4243-deadbeef").write_text("a plain file")
    (kind_dir / "notes.txt").write_text("not sitq's")
    caplog.set_level(logging.WARNING, "sitq.sqlite")

    async with TaskQueue(db) as queue:
        await queue.enqueue(jobs.noop)

    assert sorted(os.listdir(kind_dir)) == ["4243-deadbeef", "notes.txt"]
    assert "wake-ups are off" not in caplog.text


async def test_an_own_wake_folder_left_readable_is_made_private(
    temp_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older sitq made ``sitq-<uid>`` 0755: it is ours, so it is tightened to
    0700 and used, with wake-ups on."""
    db = tmp_path / "tasks.db"
    top = wake_directory(str(db)).parent
    top.mkdir()
    top.chmod(0o755)
    caplog.set_level(logging.WARNING, "sitq.sqlite")

    await _enqueue_and_run(db)

    assert stat.S_IMODE(top.stat().st_mode) == 0o700
    assert "wake-ups are off" not in caplog.text
    assert os.listdir(top) == []  # the last listener tidied its folders away


# -- the WAL stays bounded while a producer enqueues (issue 20.11) -------------


async def test_the_wal_stays_bounded_while_a_producer_enqueues(
    db_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """240 MB of payloads, enqueued by concurrent producers with a worker
    connected (idle: it serves another queue). The loop-thread commits used to
    outrun every checkpoint, so the WAL grew by all of it (10 GB of tasks left
    a 10 GB WAL); now it starts over and stays far below the data."""
    wal = Path(f"{db_path}-wal")
    async with TaskQueue(db_path) as queue:
        await queue.enqueue(jobs.noop)
        spawn_worker("--queue", "elsewhere").wait_started()
        bulk = queue.with_options(queue="bulk")
        payload = os.urandom(100_000)
        peak = 0
        for _ in range(60):  # 40 concurrent enqueues of 100 kB, committed together
            await asyncio.gather(*(bulk.enqueue(len, payload) for _ in range(40)))
            peak = max(peak, wal.stat().st_size)
        stats = await queue.stats()
    assert peak < 100_000_000, f"the WAL grew to {peak / 1e6:.0f} MB"
    assert stats["queues"]["bulk"]["queued"] == 2400


async def test_enqueues_held_back_by_a_checkpoint_are_all_stored(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enqueues that arrive while a checkpoint holds commits back, up to the
    moment the queue closes, are all stored once it lets them go.

    The restarting checkpoint is held open by the test (a real one is over in a
    millisecond, too short to enqueue into reliably), so the pause is certain."""
    monkeypatch.setattr("sitq.backends.sqlite.enqueue.CHECKPOINT_BYTES", 1)
    monkeypatch.setattr("sitq.backends.sqlite.enqueue.WAL_RESTART_BYTES", 0)
    release = asyncio.Event()
    real_checkpoint = SQLiteBackend._checkpoint

    async def held_checkpoint(self: SQLiteBackend, restart: bool = False) -> int:
        size = await real_checkpoint(self, restart)
        if restart:
            await release.wait()
        return max(size, 1)  # every passive round goes on to the (held) restart

    monkeypatch.setattr(SQLiteBackend, "_checkpoint", held_checkpoint)
    async with TaskQueue(db_path) as queue:
        wal = queue._backend._batcher._wal  # type: ignore[attr-defined]
        ids = [await queue.enqueue(jobs.add, 0, 0)]  # its commit starts the checkpoint
        deadline = time.monotonic() + 10
        while not wal.paused:
            assert time.monotonic() < deadline, "the checkpoint never held commits back"
            await asyncio.sleep(0.001)
        pending = [asyncio.ensure_future(queue.enqueue(jobs.add, i, 0)) for i in range(300)]
        await asyncio.sleep(0)  # they join the rows held back
        assert wal.paused and not any(p.done() for p in pending)
        closing = asyncio.ensure_future(queue.close())
        await asyncio.sleep(0)
        release.set()
        ids += await asyncio.gather(*pending)
        await closing
    async with TaskQueue(db_path) as queue:
        stored = await queue._backend.get_tasks(ids)
    assert len(stored) == len(ids) == 301


# -- one event loop per backend object (issue 19.9), on both backends ---------------


async def test_close_waits_for_a_transaction_in_flight(tmp_path: Path) -> None:
    """The connection closes under its lock: a transaction under way when close()
    is called commits, rather than losing the connection between its statements."""
    path = tmp_path / "tasks.db"
    backend = SQLiteBackend(path)
    await backend.connect()
    inside = asyncio.Event()

    async def body(tx: StoreTransaction) -> None:
        inside.set()
        for _ in range(20):  # statements after close() was called
            await tx.fetch("SELECT 1")
        await tx.execute("INSERT INTO sitq_paused (queue, paused_at) VALUES ('mail', 0)")

    write = asyncio.create_task(backend.store_session().transaction(body))
    await inside.wait()
    await asyncio.gather(write, backend.close())
    reopened = SQLiteBackend(path)
    await reopened.connect()
    try:
        assert await reopened.paused_queues() == ["mail"]
    finally:
        await reopened.close()


def test_a_worker_on_another_loop_is_refused_at_once(db_url: str) -> None:
    """The peer's pattern: a SyncTaskQueue and a Worker in another thread sharing
    one backend object. The worker used to log "claim failed" forever (a lock
    bound to a different event loop) while get_result hung; now its start fails
    at once with what to do, and the queue keeps working."""
    backend = open_backend(db_url)
    with SyncTaskQueue(backend) as queue:
        task_id = queue.enqueue(jobs.add, 1, 2)
        worker = Worker(backend)
        failure: list[BaseException] = []

        def run_worker() -> None:
            try:
                asyncio.run(worker.run())
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run_worker)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "the worker kept running on a backend of another loop"
        assert len(failure) == 1 and isinstance(failure[0], ConfigurationError)
        assert "one backend object serves one event loop" in str(failure[0])
        assert queue.status(task_id) is TaskStatus.QUEUED

    # Given its own backend (the path or URL), the same worker setup serves it.
    async def serve() -> Result | None:
        async with TaskQueue(db_url) as queue:
            own = Worker(db_url)
            await own.start()
            try:
                return await queue.get_result(task_id, timeout=20)
            finally:
                await own.stop(timeout=5)

    result = asyncio.run(serve())
    assert result is not None and result.value == 3


def test_a_queue_on_another_loop_than_its_worker_is_refused(db_url: str) -> None:
    """The other order: a Worker connected the backend first; a SyncTaskQueue (its
    own loop thread) on that same object is refused on first use."""
    backend = open_backend(db_url)
    started = threading.Event()
    release = threading.Event()

    async def serve() -> None:
        worker = Worker(backend)
        await worker.start()
        started.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        await worker.stop(timeout=5)

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert started.wait(20)
        with SyncTaskQueue(backend) as queue, pytest.raises(ConfigurationError, match="one"):
            queue.enqueue(jobs.add, 1, 2)
    finally:
        release.set()
        thread.join(20)


def test_a_backend_closed_on_one_loop_opens_on_the_next(db_url: str) -> None:
    """Sequential use stays allowed: after every user closed, another loop may
    connect the same object (its locks are made afresh for that loop)."""
    backend = open_backend(db_url)

    async def use() -> int:
        async with TaskQueue(backend) as queue:
            await asyncio.gather(*(queue.enqueue(jobs.add, i, 0) for i in range(20)))
            stats = await queue.stats()
        return int(stats["totals"]["queued"])

    assert asyncio.run(use()) == 20
    assert asyncio.run(use()) == 40


# -- inputs that must fail clearly (issues 19.12, 20.16) ---------------------------


@pytest.mark.parametrize("path", [":memory:", ""])
def test_an_in_memory_database_is_refused_with_the_real_reason(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to fail later with a false reason (WAL, shared memory) and leave a
    file named ':memory:' behind; now the constructor says why, as open_backend."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="shared with its workers"):
        SQLiteBackend(path)
    assert os.listdir(tmp_path) == []


def _without_root_powers() -> list[str]:
    """A command prefix under which file modes bind (root ignores them)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root's power to write read-only files")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.fixture
def read_only_db(db_path: Path) -> Path:
    """A sitq database whose files the user may read but not write."""
    subprocess.run([SITQ, "init", "--db", str(db_path)], check=True, capture_output=True)
    for path in db_path.parent.glob(f"{db_path.name}*"):
        path.chmod(0o444)
    return db_path


def test_a_worker_on_a_read_only_database_says_so_and_exits_non_zero(read_only_db: Path) -> None:
    done = subprocess.run(
        [*_without_root_powers(), SITQ, "worker", "--db", str(read_only_db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output
    assert f"cannot write sqlite database {read_only_db}" in output
    assert "write access" in output


@pytest.mark.parametrize("api", ["TaskQueue", "SyncTaskQueue"])
def test_enqueue_into_a_read_only_database_raises_a_sitq_error(
    api: str, read_only_db: Path
) -> None:
    script = f"""
import asyncio, sys
from sitq import SyncTaskQueue, TaskQueue
from sitq.errors import DatabaseError

async def with_task_queue():
    async with TaskQueue(sys.argv[1]) as queue:
        await queue.enqueue(len, "x")

def with_sync_queue():
    with SyncTaskQueue(sys.argv[1]) as queue:
        queue.enqueue(len, "x")

try:
    asyncio.run(with_task_queue()) if "{api}" == "TaskQueue" else with_sync_queue()
except DatabaseError as exc:
    print("DatabaseError:", exc)
"""
    done = subprocess.run(
        [*_without_root_powers(), sys.executable, "-c", script, str(read_only_db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert done.stdout.startswith("DatabaseError: cannot write sqlite database"), done.stderr
    assert "write access" in done.stdout


async def test_a_worker_that_cannot_hear_wake_ups_polls_every_50_ms(
    temp_root: Path, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """With its wake-up folder refused, a `sitq worker` (in its own process, so
    nothing in-process wakes it) looks at the queue every DEAF_POLL, not every
    poll_interval (1 s here): four waits of a 1 s poll would all come in under
    half a second once in 16 runs."""
    db = tmp_path / "tasks.db"
    database_dir = wake_directory(str(db))  # refused: deaf to every kind of wake-up
    database_dir.parent.mkdir(parents=True, mode=0o700)
    database_dir.symlink_to(_victim(tmp_path / "victim"), target_is_directory=True)
    async with TaskQueue(db) as queue:
        worker = spawn_worker("--import", "jobs", "--poll-interval", "1", db=db).wait_started()
        waits = []
        for _ in range(4):
            task_id = await queue.enqueue(jobs.add, 2, 3)
            result = await queue.get_result(task_id, timeout=20)
            assert result is not None and result.started_at is not None
            waits.append((result.started_at - result.enqueued_at).total_seconds())
        # Only its look for tasks polls: its heartbeat keeps its own pace (one
        # every few seconds; deaf waits for cancels once made it beat every 50 ms).
        beats = set()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                beats.add(conn.execute("SELECT heartbeat_at FROM sitq_workers").fetchone())
            conn.close()
            await asyncio.sleep(0.05)
    assert "wake-ups are off" in worker.output()
    assert max(waits) < 0.5, waits
    assert len(beats) <= 2, beats


# -- who is listening: the wake-up folder's listing -----------------------------


async def test_a_listener_bound_in_the_tick_of_a_listing_is_still_woken(
    temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender re-reads a kind's folder only when its mtime moves (one stat), but
    a folder's mtime moves in clock ticks: a listing made within a tick of the
    folder's change is not trusted, so a listener that binds in that same tick
    (its mtime unchanged, here set back by hand) is found at the next look."""
    from sitq.backends.sqlite import wakeup

    monkeypatch.setattr(wakeup, "PEER_REFRESH", 0.0)  # every notify looks
    monkeypatch.setattr(wakeup, "MTIME_TICK_NS", 3_600 * 10**9)  # every listing is "recent"
    directory = wake_directory(str(temp_root / "t.db"))
    sender, first, second = (wakeup.WakeupChannel(directory) for _ in range(3))
    try:
        heard = asyncio.create_task(first.wait("tasks", 30))
        await asyncio.sleep(0)  # it binds its socket
        sender.notify("tasks")
        await asyncio.wait_for(heard, 10)
        folder = directory / "t"
        tick = os.stat(folder).st_mtime_ns
        late = asyncio.create_task(second.wait("tasks", 30))
        await asyncio.sleep(0)
        os.utime(folder, ns=(tick, tick))  # bound in the listing's tick
        sender.notify("tasks")
        await asyncio.wait_for(late, 10)
    finally:
        for channel in (sender, first, second):
            channel.close()


async def test_an_unchanged_wake_folder_costs_one_stat_per_look(
    temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a listing is older than a tick, looking again while the folder stays
    unchanged (or stays missing) walks no folder: one stat each time."""
    from sitq.backends.sqlite import wakeup

    monkeypatch.setattr(wakeup, "PEER_REFRESH", 0.0)
    monkeypatch.setattr(wakeup, "MTIME_TICK_NS", 0)
    walks: list[Path] = []
    checked_walk = wakeup.private_dir

    def counted(path: Path, levels: int, *, create: bool = False) -> AbstractContextManager[int]:
        walks.append(path)
        return checked_walk(path, levels, create=create)

    monkeypatch.setattr(wakeup, "private_dir", counted)
    directory = wake_directory(str(temp_root / "t.db"))
    sender, listener = wakeup.WakeupChannel(directory), wakeup.WakeupChannel(directory)
    try:
        for _ in range(5):
            sender.notify("results")  # nobody listens for results: the folder is missing
        assert len(walks) == 1
        heard = asyncio.create_task(listener.wait("tasks", 30))
        await asyncio.sleep(0)
        walks.clear()
        for _ in range(5):
            sender.notify("tasks")
        assert len([p for p in walks if p.name == "t"]) == 1
        await asyncio.wait_for(heard, 10)
    finally:
        sender.close()
        listener.close()
