"""One bad task, payload or fault must not break a worker (issue 20), and the
worker's lifecycle (issue 19.10): real `sitq worker` processes, real faults."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import cloudpickle
import fault_jobs
import jobs
import pytest
from support import POSTGRES_URL, WorkerProcess, await_until, subprocess_env, wait_until

from sitq import Result, SyncTaskQueue, TaskQueue, TaskStatus, Worker, WorkerCrashed
from sitq.backends.base import LOST_LEASE_LIMIT


@pytest.mark.parametrize("pool", ["auto", "thread"])
async def test_a_base_exception_fails_only_its_task(
    db_path: Path, spawn_worker: Callable[..., WorkerProcess], pool: str
) -> None:
    """SystemExit and KeyboardInterrupt raised by a task (async or not, with a
    timeout or without) fail that task; the worker serves on (20.3)."""
    async with TaskQueue(db_path) as queue:
        worker = spawn_worker("--pool", pool, "--concurrency", "2").wait_started()
        bad = [
            await queue.with_options(timeout=5).enqueue(fault_jobs.async_raise_base, "SystemExit"),
            await queue.with_options(timeout=5).enqueue(
                fault_jobs.async_raise_base, "KeyboardInterrupt"
            ),
            await queue.enqueue(fault_jobs.async_raise_base, "SystemExit"),
            await queue.enqueue(fault_jobs.async_raise_base, "KeyboardInterrupt"),
            await queue.with_options(timeout=5).enqueue(fault_jobs.sync_raise_base, "SystemExit"),
            await queue.enqueue(fault_jobs.sync_raise_base, "KeyboardInterrupt"),
        ]
        results = [await queue.get_result(task_id, timeout=20) for task_id in bad]
        after = await queue.enqueue(jobs.add, 2, 3)
        result_after = await queue.get_result(after, timeout=20)
        assert worker.process.poll() is None, worker.output()
    for result in results:
        assert result is not None and result.status is TaskStatus.FAILED, worker.output()
        assert result.error and result.error.split(":")[0] in ("SystemExit", "KeyboardInterrupt")
    assert result_after is not None and result_after.value == 5


def _overwrite_payloads(db_path: Path, payloads: dict[str, object]) -> None:
    """Store ``payloads`` (task id -> value) as written outside sitq, with sqlite3."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        for task_id, value in payloads.items():
            conn.execute("UPDATE sitq_tasks SET payload = ? WHERE id = ?", (value, task_id))


@pytest.mark.parametrize("pool", ["auto", "process"])
async def test_a_payload_that_is_not_a_call_fails_only_its_task(
    db_path: Path, spawn_worker: Callable[..., WorkerProcess], pool: str
) -> None:
    """A payload that unpickles to something else fails its task with a clear
    error, and the worker keeps claiming (20.4)."""
    shapes = [42, (jobs.add, (1, 2)), (jobs.add, [1, 2], {}), (5, (), {}), "text"]
    async with TaskQueue(db_path) as queue:
        bad = await queue.enqueue_many(jobs.noop, [() for _ in shapes])
        _overwrite_payloads(
            db_path, {i: cloudpickle.dumps(s) for i, s in zip(bad, shapes, strict=True)}
        )
        worker = spawn_worker("--pool", pool, "--concurrency", "2").wait_started()
        results = [await queue.get_result(task_id, timeout=20) for task_id in bad]
        after = await queue.enqueue(jobs.add, 2, 3)
        result_after = await queue.get_result(after, timeout=20)
        assert worker.process.poll() is None, worker.output()
    for result in results:
        assert result is not None and result.status is TaskStatus.FAILED, worker.output()
        assert result.error and "SerializationError" in result.error, result.error
        assert "not a call" in result.error, result.error
    assert result_after is not None and result_after.value == 5


async def test_a_dead_claim_loop_stops_the_worker_instead_of_hiding(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A defect that ends the claim loop stops the worker, logged, and run()
    raises; its tasks are not heartbeated forever (20.4). The defect is injected:
    the known ones are fixed, this guards against the next."""
    async with TaskQueue(db_path) as queue:
        task_id = await queue.enqueue(jobs.noop)
        worker = Worker(db_path, prefetch=0)

        def defect(self: Worker) -> int:
            raise RuntimeError("an injected defect")

        monkeypatch.setattr(Worker, "_prefetch_now", defect)
        with pytest.raises(WorkerCrashed, match="claim loop died"):
            await asyncio.wait_for(worker.run(), 10)
        assert not worker.running
        assert "its claim loop died (RuntimeError: an injected defect)" in caplog.text
        assert (await queue.stats())["workers_alive"] == 0
        assert await queue.status(task_id) is TaskStatus.QUEUED


async def test_a_payload_stored_as_text_fails_only_its_own_task(
    db_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """A payload stored with the wrong type (TEXT, with sqlite3) fails that task
    with a clear error; the good tasks claimed in the same batch run (20.10)."""
    async with TaskQueue(db_path) as queue:
        ids = await queue.enqueue_many(jobs.add, [(i, 1) for i in range(4)])
        _overwrite_payloads(db_path, {ids[1]: "not a pickle"})
        worker = spawn_worker("--concurrency", "4").wait_started()
        results = [await queue.get_result(task_id, timeout=5) for task_id in ids]
        assert worker.process.poll() is None, worker.output()
    bad = results.pop(1)
    assert bad is not None and bad.status is TaskStatus.FAILED and bad.attempts == 1
    assert bad.error and "stored payload is a str, not bytes" in bad.error, bad.error
    for i, result in zip((0, 2, 3), results, strict=True):
        assert result is not None and result.value == i + 1 and result.attempts == 1


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
async def test_pool_children_die_with_a_sigkilled_worker(
    db_path: Path, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A process-pool child running a task dies with its SIGKILLed worker (20.15)."""
    pid_file = tmp_path / "child.pid"
    async with TaskQueue(db_path) as queue:
        worker = spawn_worker("--pool", "process", "--concurrency", "2").wait_started()
        await queue.enqueue(fault_jobs.write_pid_and_sleep, str(pid_file), 60)
        wait_until(pid_file.exists, 20, "the task to start in a child")
        wait_until(lambda: pid_file.read_text().strip(), 5, "the pid to be written")
        child = int(pid_file.read_text())
        assert _alive(child)
        worker.send(signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
        try:
            wait_until(lambda: not _alive(child), 5, "the orphaned child to die")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


async def test_start_after_stop_runs_the_worker_again(db_path: Path) -> None:
    """start() after stop() restarts the worker; before, it did nothing (19.10)."""
    async with TaskQueue(db_path) as queue:
        worker = Worker(db_path)
        await worker.start()
        await worker.stop(timeout=1)
        assert not worker.running
        await worker.start()
        try:
            assert worker.running
            task_id = await queue.enqueue(jobs.add, 1, 2)
            result = await queue.get_result(task_id, timeout=10)
            assert (await queue.stats())["workers_alive"] == 1
        finally:
            await worker.stop(timeout=1)
    assert result is not None and result.value == 3


_LOOP_ENDS = """
import asyncio, logging, sys
logging.basicConfig(level=logging.INFO)
import jobs
from sitq import SyncTaskQueue, TaskQueue, TaskStatus, Worker
from sitq.backends.base import LOST_LEASE_LIMIT

async def main():
    worker = Worker(sys.argv[1])
    async with TaskQueue(sys.argv[1]) as queue:
        task_id = await queue.enqueue(jobs.async_sleep, 30)
        await worker.start()
        while await queue.status(task_id) is not TaskStatus.RUNNING:
            await asyncio.sleep(0.01)
    return worker  # the loop ends, the worker never stopped

worker = asyncio.run(main())
print("running after the loop ended:", worker.running)
"""


async def test_a_worker_whose_loop_ended_unregisters_and_releases(
    db_path: Path, tmp_path: Path
) -> None:
    """A worker whose event loop ends without stop() logs it, hands its task
    back, and is no longer counted alive (19.10)."""
    script = tmp_path / "loop_ends.py"
    script.write_text(_LOOP_ENDS)
    done = subprocess.run(
        [sys.executable, str(script), str(db_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "running after the loop ended: False" in done.stdout
    assert "its event loop is ending without stop(); releasing" in done.stderr
    async with TaskQueue(db_path) as queue:
        assert (await queue.stats())["workers_alive"] == 0
        [task] = (await queue.list_tasks()).tasks
        assert task.status == "queued" and task.attempts == 0


def test_a_worker_runs_in_a_thread_and_stops_from_another(db_path: Path) -> None:
    """The README's recipe: run() in a thread of its own, stopped from another (19.10)."""
    worker = Worker(db_path)
    thread = threading.Thread(target=asyncio.run, args=(worker.run(),))
    thread.start()
    try:
        with SyncTaskQueue(db_path) as queue:
            task_id = queue.enqueue(jobs.add, 2, 2)
            result = queue.get_result(task_id, timeout=10)
        assert result is not None and result.value == 4
        worker.request_stop()
        thread.join(10)
        assert not thread.is_alive() and not worker.running
    finally:
        if thread.is_alive():
            worker.request_stop(timeout=0)
            thread.join(10)


async def _results(queue: TaskQueue, task_ids: list[str], timeout: float) -> dict[str, Result]:
    """The results of ``task_ids``, each waited for within ``timeout`` of the call."""
    deadline = time.monotonic() + timeout
    results = {}
    for task_id in task_ids:
        result = await queue.get_result(task_id, timeout=max(0.0, deadline - time.monotonic()))
        assert result is not None, f"task {task_id} did not finish within {timeout} s"
        results[task_id] = result
    return results


def _async(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``predicate`` for ``await_until`` (which awaits it)."""

    async def check() -> bool:
        return predicate()

    return check


def _schema(db_url: str) -> str | None:
    """The PostgreSQL schema of ``db_url``; None for an SQLite file."""
    return db_url.split("sitq_schema=", 1)[1] if "://" in db_url else None


async def test_an_outcome_is_written_after_an_outage_shorter_than_its_lease(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome writer keeps trying while the lease holds: a finished task is
    recorded once the database is back, and never runs twice (20.8). The outage
    is real: on SQLite another connection holds the write lock (the backend's
    patience with locks cut to 0.3 s), on PostgreSQL every connection is cut."""
    from test_producer_faults import TcpProxy, via

    import sitq.backends.sqlite.backend
    from sitq.backends.sqlite import SQLiteBackend

    caplog.set_level(logging.WARNING, logger="sitq")
    log = tmp_path / "runs.log"
    schema = _schema(db_url)
    proxy = None
    if schema is None:
        monkeypatch.setattr(sitq.backends.sqlite.backend, "LOCKED_DEADLINE", 0.3)
        backend: object = SQLiteBackend(db_url, busy_timeout=0.05)
    else:
        parts = urlsplit(POSTGRES_URL)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        await proxy.start()
        backend = via(proxy.port, schema)
    worker = Worker(backend, lease_seconds=20)  # type: ignore[arg-type]
    # Taken and let go off the event loop: a blocking wait for the lock there would
    # stall the worker in this process, midway through a transaction of its own.
    lock = (
        sqlite3.connect(db_url, isolation_level=None, check_same_thread=False)
        if schema is None
        else None
    )
    async with TaskQueue(db_url) as queue:
        await worker.start()
        try:
            task_id = await queue.enqueue(fault_jobs.note_and_sleep, str(log), "ran", 1.0)
            await await_until(_async(log.exists), 20, "the task to start")
            if lock is not None:
                await asyncio.to_thread(lock.execute, "BEGIN IMMEDIATE")  # the write lock, held
            else:
                assert proxy is not None
                await proxy.stop()
            try:
                # Past the point where the writer used to give up (5 tries, ~1.5 s).
                await await_until(_async(lambda: "(try 6)" in caplog.text), 30, "6 failed writes")
            finally:
                if lock is not None:
                    await asyncio.to_thread(lock.execute, "ROLLBACK")
                elif proxy is not None:
                    await proxy.start()
            result = await queue.get_result(task_id, timeout=20)
        finally:
            await worker.stop()
            if lock is not None:
                lock.close()
            if proxy is not None:
                await proxy.stop()
    assert "could not record" not in caplog.text
    assert "could not be stored" not in caplog.text
    assert result is not None and result.ok and result.attempts == 1, caplog.text
    assert log.read_text().splitlines() == ["ran"]


async def test_an_error_the_database_refuses_fails_only_its_task(
    db_url: str, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """A task's error text with NUL (which PostgreSQL text refuses) or a lone
    surrogate (which no driver encodes) is stored escaped; the ordinary tasks
    around them get their results at once rather than waiting forever behind
    them (20.8)."""
    async with TaskQueue(db_url) as queue:
        spawn_worker("--concurrency", "4", db=db_url).wait_started()
        nul = await queue.enqueue(fault_jobs.raise_text, "a\x00b")
        surrogate = await queue.enqueue(fault_jobs.raise_text, "c\ud800d")
        ordinary = await queue.enqueue_many(jobs.add, [(i, 1) for i in range(10)])
        results = await _results(queue, [nul, surrogate, *ordinary], 15)
        later = await queue.get_result(await queue.enqueue(jobs.add, 2, 3), timeout=15)
    assert [results[task_id].value for task_id in ordinary] == [i + 1 for i in range(10)]
    assert later is not None and later.value == 5
    assert results[nul].status is TaskStatus.FAILED
    assert results[nul].error == "ValueError: a\\x00b"
    assert results[nul].traceback and "\x00" not in results[nul].traceback
    assert results[surrogate].status is TaskStatus.FAILED
    assert results[surrogate].error == "ValueError: c\\ud800d"
    assert results[surrogate].traceback and "c\\ud800d" in results[surrogate].traceback


async def test_an_error_with_a_lone_surrogate_keeps_its_retries(
    db_url: str, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """An error no driver can encode as it is (a lone surrogate, as an OSError on
    an undecodable file name has) is stored escaped, and the task's retries are
    kept rather than lost to a refused write (20.8)."""
    async with TaskQueue(db_url) as queue:
        spawn_worker("--concurrency", "2", db=db_url).wait_started()
        task_id = await queue.with_options(max_retries=2, retry_backoff=0.01).enqueue(
            fault_jobs.raise_text, "missing /tmp/\udcff"
        )
        result = await queue.get_result(task_id, timeout=20)
    assert result is not None and result.status is TaskStatus.FAILED
    assert result.attempts == 3, result
    assert result.error == "ValueError: missing /tmp/\\udcff"


def _transient_errors() -> list[tuple[str, Callable[[], BaseException]]]:
    import asyncpg

    errors = asyncpg.exceptions
    return [
        ("deadlock 40P01", lambda: errors.DeadlockDetectedError("deadlock detected")),
        ("serialization 40001", lambda: errors.SerializationError("could not serialize")),
        ("read-only 25006", lambda: errors.ReadOnlySQLTransactionError("read-only")),
        ("lock timeout 55P03", lambda: errors.LockNotAvailableError("lock timeout")),
        ("statement timeout 57014", lambda: errors.QueryCanceledError("statement timeout")),
        ("disk full 53100", lambda: errors.DiskFullError("could not extend file")),
        ("sqlite disk I/O", lambda: sqlite3.OperationalError("disk I/O error")),
    ]


@pytest.mark.parametrize(
    "make_error", [make for _, make in _transient_errors()], ids=[n for n, _ in _transient_errors()]
)
async def test_an_outcome_survives_transient_write_errors(
    db_url: str, make_error: Callable[[], BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """Errors of a write that may pass (a deadlock, a serialization failure, a
    failover's read-only transaction, a timeout, a full disk...) are retried
    while the lease holds: twice in a row, they leave the task's real outcome
    in place of "could not be stored" (20.8)."""
    from sitq.backends import open_backend

    caplog.set_level(logging.WARNING, logger="sitq")
    backend = open_backend(db_url)
    real_finish = backend.finish
    left = [2]

    async def flaky_finish(items, started=()):  # type: ignore[no-untyped-def]
        if items and left[0] > 0:
            left[0] -= 1
            raise make_error()
        return await real_finish(items, started)

    backend.finish = flaky_finish  # type: ignore[method-assign]
    async with TaskQueue(db_url) as queue:
        worker = Worker(backend, lease_seconds=30)
        await worker.start()
        try:
            task_id = await queue.enqueue(jobs.add, 20, 22)
            result = await queue.get_result(task_id, timeout=20)
        finally:
            await worker.stop()
    assert left == [0]
    assert result is not None and result.status is TaskStatus.SUCCEEDED, result
    assert result.value == 42 and result.attempts == 1
    assert "could not be stored" not in caplog.text


async def test_a_result_the_database_refuses_fails_only_its_task(
    db_url: str, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """The database refuses one task's result (a size rule, as a server's limit
    on values does): that task ends FAILED with the reason, and the tasks
    finishing beside it keep their results (20.8)."""
    schema = _schema(db_url)
    async with TaskQueue(db_url) as queue:  # creates the tables
        if schema is None:
            with contextlib.closing(sqlite3.connect(db_url)) as conn, conn:
                conn.execute(
                    "CREATE TRIGGER fault_size BEFORE UPDATE ON sitq_tasks "
                    "WHEN length(NEW.result) > 100000 "
                    "BEGIN SELECT RAISE(ABORT, 'result too big for this database'); END"
                )
        else:
            import asyncpg

            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                await conn.execute(
                    f"ALTER TABLE {schema}.sitq_tasks ADD CONSTRAINT fault_size "
                    "CHECK (octet_length(result) <= 100000)"
                )
            finally:
                await conn.close()
        spawn_worker("--concurrency", "4", db=db_url).wait_started()
        ordinary = await queue.enqueue_many(fault_jobs.sized_result, [(10,)] * 5)
        big = await queue.enqueue(fault_jobs.sized_result, 200_000)
        ordinary += await queue.enqueue_many(fault_jobs.sized_result, [(10,)] * 5)
        results = await _results(queue, [big, *ordinary], 15)
    assert [results[task_id].value for task_id in ordinary] == [b"x" * 10] * 10
    assert results[big].status is TaskStatus.FAILED
    assert (results[big].error or "").startswith("the outcome could not be stored:")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "sigkill"])
async def test_a_task_that_kills_its_worker_fails_no_bystander(
    db_url: str, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path, how: str
) -> None:
    """One task kills its worker (os._exit / SIGKILL of itself) beside 40 ordinary
    tasks, with -c 8 and workers restarted as a service manager would: it ends
    FAILED as WorkerLost, and not one ordinary task fails (20.5)."""
    log = tmp_path / "runs.log"
    async with TaskQueue(db_url) as queue:
        ordinary = await queue.enqueue_many(
            fault_jobs.note_and_sleep, [(str(log), f"t{i}", 0.2) for i in range(40)]
        )
        killer = await queue.enqueue(fault_jobs.kill_own_worker, how)
        ordinary += await queue.enqueue_many(
            fault_jobs.note_and_sleep, [(str(log), f"t{i}", 0.2) for i in range(40, 44)]
        )
        deaths = 0
        worker = spawn_worker("--concurrency", "8", "--lease", "1", db=db_url)

        async def all_done() -> bool:
            nonlocal worker, deaths
            if worker.process.poll() is not None:  # restarted, as systemd would
                deaths += 1
                worker = spawn_worker("--concurrency", "8", "--lease", "1", db=db_url)
            statuses = await queue._backend.task_statuses([killer, *ordinary])
            return all(status in ("succeeded", "failed") for status in statuses.values())

        await await_until(all_done, 120, "every task to finish")
        results = await queue.get_results([killer, *ordinary])
    assert results[killer].status is TaskStatus.FAILED
    assert results[killer].error and "WorkerLost" in results[killer].error
    failed = [r.error for i, r in results.items() if i != killer and not r.ok]
    assert failed == [], failed
    assert deaths >= 1 + LOST_LEASE_LIMIT


def _spans(log: Path, pid: int) -> dict[str, tuple[float, float]]:
    """marker -> (start, end) of the runs in process ``pid`` that ended."""
    starts: dict[str, float] = {}
    spans = {}
    for line in log.read_text().splitlines():
        kind, marker, run_pid, when = line.split()
        if int(run_pid) != pid:
            continue
        if kind == "start":
            starts[marker] = float(when)
        else:
            spans[marker] = (starts[marker], float(when))
    return spans


async def test_tasks_prefetched_behind_a_suspect_run_beside_it(
    db_url: str, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Tasks a dead worker had claimed come back suspect (one of them may be what
    killed it): each has its start recorded and runs with no other suspect, but
    the ordinary tasks claimed after them run beside it, in the free slots,
    instead of waiting for every suspect to end one by one (20.5)."""
    log = tmp_path / "runs.log"
    async with TaskQueue(db_url) as queue:
        suspects = await queue.enqueue_many(
            fault_jobs.timed_sleep, [(str(log), f"s{i}", 0.6) for i in range(3)]
        )
        first = spawn_worker("--concurrency", "1", "--prefetch", "5", "--lease", "1", db=db_url)

        async def all_claimed() -> bool:
            records = (await queue._backend.get_tasks(suspects, with_result=False)).values()
            return all(record.worker_id is not None for record in records)

        await await_until(all_claimed, 20, "the first worker to claim the tasks")
        first.send(signal.SIGKILL)  # the dead predecessor: one started, two prefetched
        first.wait()
        second = spawn_worker("--concurrency", "4", "--lease", "5", db=db_url).wait_started()
        await await_until(
            _async(lambda: log.exists() and f" {second.pid} " in log.read_text()),
            20,
            "the second worker to take the suspects over",
        )
        ordinary = await queue.enqueue_many(
            fault_jobs.timed_sleep, [(str(log), f"o{i}", 0.5) for i in range(12)]
        )
        results = await _results(queue, [*suspects, *ordinary], 30)
    assert all(result.ok and result.attempts == 1 for result in results.values()), results
    spans = _spans(log, second.pid)
    ran_suspects = sorted(spans[f"s{i}"] for i in range(3))
    for (_, end), (start, _) in itertools.pairwise(ran_suspects):
        assert end <= start, "two suspects ran at once"
    beside = [
        marker
        for marker, (start, end) in spans.items()
        if marker.startswith("o") and any(s < end and start < e for s, e in ran_suspects)
    ]
    # Three free slots over three suspects of 0.6 s hold about 9 runs of 0.5 s.
    assert len(beside) >= 3, spans


async def test_a_refused_retry_still_retries(
    db_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """The database refuses a failed attempt's error (a trigger, as a rule on
    values would): the plain failure stored instead keeps the retry, so the task
    still gets all its attempts (20.8)."""
    async with TaskQueue(db_path) as queue:  # creates the tables
        with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute(
                "CREATE TRIGGER fault_error BEFORE UPDATE ON sitq_tasks "
                "WHEN NEW.error LIKE 'ValueError: refuse-me%' "
                "BEGIN SELECT RAISE(ABORT, 'error refused by this database'); END"
            )
        spawn_worker("--concurrency", "2").wait_started()
        task_id = await queue.with_options(max_retries=2, retry_backoff=0.01).enqueue(
            fault_jobs.raise_text, "refuse-me"
        )
        result = await queue.get_result(task_id, timeout=20)
    assert result is not None and result.status is TaskStatus.FAILED
    assert result.attempts == 3, result
    assert (result.error or "").startswith("the outcome could not be stored: IntegrityError")


@pytest.mark.parametrize(
    ("error", "recurs"),
    [
        (sqlite3.IntegrityError("constraint failed"), True),
        (sqlite3.DataError("string or blob too big"), True),
        (sqlite3.OperationalError("database is locked"), False),
        (sqlite3.OperationalError("disk I/O error"), False),
        (UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"), True),
        (ConnectionResetError(), False),
        (RuntimeError("anything else"), False),
    ],
)
def test_which_write_errors_recur(error: BaseException, recurs: bool) -> None:
    """Only errors that say the value is at fault give up an outcome at once."""
    import asyncpg

    from sitq.worker import outcomes

    assert outcomes.recurs(error) is recurs
    for cls, expected in [
        (asyncpg.exceptions.CheckViolationError, True),  # 23514
        (asyncpg.exceptions.CharacterNotInRepertoireError, True),  # 22021
        (asyncpg.exceptions.ProgramLimitExceededError, True),  # 54000
        (asyncpg.exceptions.DeadlockDetectedError, False),  # 40P01
        (asyncpg.exceptions.ReadOnlySQLTransactionError, False),  # 25006
        (asyncpg.exceptions.DiskFullError, False),  # 53100
        (asyncpg.exceptions.AdminShutdownError, False),  # 57P01
    ]:
        assert outcomes.recurs(cls("x")) is expected, cls
