"""Signed payloads: a worker with a key runs only what was signed with it for
that very row (task id, function, queue; payload or result), never unpickling
anything else, and keys can be rotated. Database files are private."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import pathlib
import pickle
import sqlite3
import stat
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jobs
import pytest
from support import POSTGRES_URL, SITQ, await_until, subprocess_env, wait_until

from sitq import SyncTaskQueue, TaskQueue, TaskStatus
from sitq.batch import BatchStore
from sitq.errors import ConfigurationError, PayloadRejected, SitqError
from sitq.registry import TaskRef
from sitq.serialization import (
    CloudpickleSerializer,
    SignedSerializer,
    default_serializer,
    payload_binding,
    result_binding,
)

NEW_KEY = "n" * 32
OLD_KEY = "o" * 32


class TouchesAFile:
    """Unpickling this creates a file: proof that a payload was deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_signed_serializer_round_trip_and_refusals(tmp_path: Path) -> None:
    signed = SignedSerializer(NEW_KEY)
    data = signed.dumps({"x": [1, 2]})
    assert data.startswith(b"SQS2") and signed.loads(data) == {"x": [1, 2]}

    marker = tmp_path / "unpickled"
    evil = pickle.dumps(TouchesAFile(marker))
    with pytest.raises(PayloadRejected, match="unsigned"):
        signed.loads(evil)
    tampered = bytearray(signed.dumps(TouchesAFile(marker)))
    tampered[-3] ^= 0x01
    with pytest.raises(PayloadRejected, match="signature does not match"):
        signed.loads(bytes(tampered))
    with pytest.raises(PayloadRejected, match="key this process does not have"):
        SignedSerializer("x" * 32).loads(data)  # another key
    assert not marker.exists()

    rotated = SignedSerializer(NEW_KEY, old_secrets=[OLD_KEY])
    assert rotated.loads(SignedSerializer(OLD_KEY).dumps("old")) == "old"
    assert SignedSerializer(NEW_KEY).loads(rotated.dumps("new")) == "new"  # signs with the new

    with pytest.raises(ConfigurationError, match="at least 16 bytes"):
        SignedSerializer("short")
    with pytest.raises(ConfigurationError, match="list of keys"):
        SignedSerializer(NEW_KEY, old_secrets=OLD_KEY)  # type: ignore[arg-type]
    assert NEW_KEY not in repr(rotated) and OLD_KEY not in repr(rotated)


def _unbound_frame(key: str, obj: object) -> bytes:
    """What SignedSerializer wrote before signatures were bound to their row."""
    body = pickle.dumps(obj)
    return b"SQS1" + hmac.new(key.encode(), body, hashlib.sha256).digest() + body


def test_signatures_are_bound_to_task_function_queue_and_label(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    signed = SignedSerializer(NEW_KEY)
    mine = payload_binding("task-a", "jobs.add", "default")
    data = signed.dumps_bound((TouchesAFile(marker), (), {}), mine)
    others = [
        payload_binding("task-b", "jobs.add", "default"),  # copied into another row
        payload_binding("task-a", "jobs.fail", "default"),  # shown as another function
        payload_binding("task-a", "jobs.add", "urgent"),  # moved to another queue
        result_binding("task-a", "jobs.add"),  # a payload read as a result
        (),  # read as an unbound value (workflow state)
    ]
    for other in others:
        with pytest.raises(PayloadRejected, match="signature does not match") as refused:
            signed.loads_bound(data, other)
        assert "not deserialized" in str(refused.value)
    with pytest.raises(PayloadRejected, match="signature does not match"):
        signed.loads(data)
    result = signed.dumps_bound(3, result_binding("task-a", "jobs.add"))
    with pytest.raises(PayloadRejected, match="the payload of task task-a"):
        signed.loads_bound(result, mine)  # a result read as a payload
    with pytest.raises(PayloadRejected, match="the result of task task-b"):
        signed.loads_bound(result, result_binding("task-b", "jobs.add"))  # swapped
    assert not marker.exists()
    assert signed.loads_bound(result, result_binding("task-a", "jobs.add")) == 3

    # Rotation: old-key bindings verify with the old key, and still bind.
    rotated = SignedSerializer(NEW_KEY, old_secrets=[OLD_KEY])
    by_old = SignedSerializer(OLD_KEY).dumps_bound("old", mine)
    assert rotated.loads_bound(by_old, mine) == "old"
    with pytest.raises(PayloadRejected, match="signature does not match"):
        rotated.loads_bound(by_old, others[0])
    with pytest.raises(PayloadRejected, match="key this process does not have.*OLD_SECRET"):
        SignedSerializer(NEW_KEY).loads_bound(by_old, mine)

    # The format before bindings: refused unless accepted for a transition.
    legacy = _unbound_frame(NEW_KEY, (TouchesAFile(marker), (), {}))
    with pytest.raises(PayloadRejected, match="old unbound format.*ACCEPT_UNBOUND") as refused:
        signed.loads_bound(legacy, mine)
    assert "sitq retry --failed" in str(refused.value)
    assert not marker.exists()
    accepting = SignedSerializer(NEW_KEY, accept_unbound=True)
    assert accepting.loads_bound(_unbound_frame(NEW_KEY, "v1"), mine) == "v1"
    with pytest.raises(PayloadRejected, match="old unbound format.*does not match"):
        accepting.loads_bound(_unbound_frame(OLD_KEY, "v1"), mine)


def test_the_environment_can_accept_the_unbound_format_for_a_transition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SITQ_SECRET_KEY", NEW_KEY)
    legacy = _unbound_frame(NEW_KEY, "v1")
    with pytest.raises(PayloadRejected):
        default_serializer().loads(legacy)
    monkeypatch.setenv("SITQ_ACCEPT_UNBOUND_SIGNATURES", "1")
    assert default_serializer().loads(legacy) == "v1"
    # The setting travels to process-pool children with the serializer.
    assert pickle.loads(pickle.dumps(default_serializer())).loads(legacy) == "v1"


def _write_payload(db_path: Path, task_id: str, payload: bytes) -> None:
    """Rewrite a stored task directly in the database, and make it due now."""
    with sqlite3.connect(db_path) as db:
        db.execute(
            "UPDATE sitq_tasks SET payload = ?, available_at = 0 WHERE id = ?",
            (payload, task_id),
        )


async def test_worker_with_a_key_refuses_unsigned_and_tampered_rows(
    db_path: Path, tmp_path: Path, spawn_worker
) -> None:
    marker = tmp_path / "unpickled"
    async with TaskQueue(db_path, SignedSerializer(NEW_KEY)) as queue:
        spawn_worker("--pool", "auto", env={"SITQ_SECRET_KEY": NEW_KEY}).wait_started()
        good = await queue.enqueue(jobs.add, 40, 2)
        assert (await queue.get_result(good, timeout=30)).value == 42

        later = queue.with_options(delay=3600)
        unsigned, tampered = await later.enqueue(jobs.noop), await later.enqueue(jobs.noop)
        _write_payload(db_path, unsigned, pickle.dumps(TouchesAFile(marker)))
        signed = bytearray(SignedSerializer(NEW_KEY).dumps(TouchesAFile(marker)))
        signed[-3] ^= 0x01
        _write_payload(db_path, tampered, bytes(signed))

        for task_id, reason in ((unsigned, "unsigned"), (tampered, "signature does not match")):
            result = await queue.get_result(task_id, timeout=30)
            assert result.status is TaskStatus.FAILED
            assert result.error.startswith("PayloadRejected: ")
            assert reason in result.error and task_id in result.error
            assert result.attempts == 1  # refused for good, not retried
        assert not marker.exists()

    # A producer without the key: the worker refuses its tasks too.
    async with TaskQueue(db_path, CloudpickleSerializer()) as plain:
        result = await plain.get_result(await plain.enqueue(jobs.add, 1, 1), timeout=30)
        assert result.status is TaskStatus.FAILED and "unsigned" in result.error


async def test_keys_rotate_without_losing_tasks(db_path: Path, spawn_worker) -> None:
    async with TaskQueue(db_path, SignedSerializer(OLD_KEY)) as old_producer:
        before = await old_producer.enqueue(jobs.add, 1, 2)
    spawn_worker(
        "--pool", "process", env={"SITQ_SECRET_KEY": NEW_KEY, "SITQ_OLD_SECRET_KEYS": OLD_KEY}
    ).wait_started()
    async with TaskQueue(db_path, SignedSerializer(NEW_KEY, [OLD_KEY])) as producer:
        after = await producer.enqueue(jobs.add, 3, 4)
        assert (await producer.get_result(before, timeout=30)).value == 3
        assert (await producer.get_result(after, timeout=30)).value == 7


async def test_database_and_its_wal_files_are_owner_only(db_path: Path) -> None:
    async with TaskQueue(db_path) as queue:
        await queue.enqueue(jobs.noop)
        files = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
        for path in files:
            assert path.exists(), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# -- bound to the row ---------------------------------------------------------------


async def _sql(db: str, statement: str, *args: object) -> list[tuple]:
    """Run one statement directly on the database, as someone with write access
    would: sqlite3 on the file, asyncpg on PostgreSQL (``?`` placeholders)."""
    if "://" not in db:
        with sqlite3.connect(db) as conn:
            return conn.execute(statement, args).fetchall()
    import asyncpg

    schema = parse_qs(urlsplit(db).query)["sitq_schema"][0]
    parts = statement.replace("sitq_tasks", f'"{schema}".sitq_tasks').split("?")
    statement = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        return [tuple(row) for row in await conn.fetch(statement, *args)]
    finally:
        await conn.close()


async def _column(db: str, column: str, task_id: str) -> bytes:
    ((value,),) = await _sql(db, f"SELECT {column} FROM sitq_tasks WHERE id = ?", task_id)
    return bytes(value)


async def _set(db: str, task_id: str, **values: object) -> None:
    """Overwrite columns of one task row, and make it due now."""
    columns = ", ".join(f"{name} = ?" for name in values)
    await _sql(
        db,
        f"UPDATE sitq_tasks SET {columns}, available_at = 0 WHERE id = ?",
        *values.values(),
        task_id,
    )


@pytest.mark.parametrize("pool", ["auto", "process"])
async def test_a_payload_copied_moved_or_relabelled_is_refused_never_unpickled(
    db_url: str, tmp_path: Path, spawn_worker, pool: str
) -> None:
    marker = tmp_path / "unpickled"
    async with TaskQueue(db_url, SignedSerializer(NEW_KEY)) as queue:
        spawn_worker("--pool", pool, db=db_url, env={"SITQ_SECRET_KEY": NEW_KEY}).wait_started()
        done = await queue.enqueue(jobs.add, 1, 2)
        assert (await queue.get_result(done, timeout=30)).value == 3

        later = queue.with_options(delay=3600)
        # A legitimate call, signed by the producer; unpickling it touches the marker.
        source = await later.enqueue(jobs.echo_kwargs, TouchesAFile(marker))
        copied = await later.enqueue(jobs.noop)  # gets source's payload: a replay
        relabelled = await later.enqueue(jobs.noop)  # gets a result as its payload
        moved = await queue.with_options(queue="elsewhere").enqueue(
            jobs.echo_kwargs, TouchesAFile(marker)
        )  # moved by UPDATE to the worker's queue: same id, same bytes
        await _set(db_url, copied, payload=await _column(db_url, "payload", source))
        await _set(db_url, relabelled, payload=await _column(db_url, "result", done))
        await _set(db_url, moved, queue="default")

        for task_id in (copied, relabelled, moved):
            result = await queue.get_result(task_id, timeout=30)
            assert result.status is TaskStatus.FAILED, task_id
            assert result.error.startswith("PayloadRejected: "), result.error
            assert task_id in result.error
            assert "signature does not match" in result.error
            assert "copied from another row" in result.error
            assert "enqueue the call again" in result.error
            assert result.attempts == 1  # refused for good, not retried
        assert not marker.exists()
        assert await queue.status(source) is TaskStatus.QUEUED


async def test_swapped_or_relabelled_results_are_refused_by_get_result(
    db_url: str, spawn_worker
) -> None:
    async with TaskQueue(db_url, SignedSerializer(NEW_KEY)) as queue:
        spawn_worker("--pool", "auto", db=db_url, env={"SITQ_SECRET_KEY": NEW_KEY}).wait_started()
        ids = await queue.enqueue_many(jobs.add, [(1, 1), (2, 2), (3, 3)])
        first, second, third = ids
        for task_id, value in zip(ids, (2, 4, 6), strict=True):
            assert (await queue.get_result(task_id, timeout=30)).value == value
        one, two = await _column(db_url, "result", first), await _column(db_url, "result", second)
        await _sql(db_url, "UPDATE sitq_tasks SET result = ? WHERE id = ?", two, first)
        await _sql(db_url, "UPDATE sitq_tasks SET result = ? WHERE id = ?", one, second)
        payload = await _column(db_url, "payload", third)
        await _sql(db_url, "UPDATE sitq_tasks SET result = ? WHERE id = ?", payload, third)

        for task_id in ids:
            with pytest.raises(PayloadRejected) as refused:
                await queue.get_result(task_id, timeout=5)
            assert isinstance(refused.value, SitqError)
            message = str(refused.value)
            assert message.startswith(f"the result of task {task_id}: "), message
            assert "signature does not match" in message and "swapped" in message
            assert "run the task again" in message
        with pytest.raises(PayloadRejected):
            await queue.get_results(ids)


async def test_tasks_signed_in_the_old_unbound_format_run_only_when_accepted(
    db_path: Path, spawn_worker
) -> None:
    key = {"SITQ_SECRET_KEY": NEW_KEY}
    async with TaskQueue(db_path, SignedSerializer(NEW_KEY)) as queue:
        # Queued before the upgrade: payloads as the previous sitq signed them.
        strict = await queue.with_options(queue="strict", delay=3600).enqueue(jobs.noop)
        moving = await queue.with_options(queue="moving", delay=3600).enqueue(jobs.noop)
        for task_id in (strict, moving):
            _write_payload(db_path, task_id, _unbound_frame(NEW_KEY, (jobs.add, (20, 22), {})))
        spawn_worker("-q", "strict", env=key).wait_started()
        transition = spawn_worker(
            "-q", "moving", env={**key, "SITQ_ACCEPT_UNBOUND_SIGNATURES": "1"}
        ).wait_started()

        refused = await queue.get_result(strict, timeout=30)
        assert refused.status is TaskStatus.FAILED
        assert refused.error.startswith(f"PayloadRejected: task {strict} ")
        assert "old unbound format" in refused.error
        assert "SITQ_ACCEPT_UNBOUND_SIGNATURES=1" in refused.error
        assert (await queue.get_result(moving, timeout=30)).value == 42  # result signed bound
        wait_until(lambda: "accepted data signed in the old unbound" in transition.output())


async def test_every_way_of_creating_a_task_signs_it_for_its_row(
    db_path: Path, tmp_path: Path, spawn_worker
) -> None:
    """enqueue_many, batches, unique keys, registered tasks, SyncTaskQueue,
    retries and schedules (enqueued by the worker) all run under a key."""
    ticks = tmp_path / "ticks.log"
    env = {"SITQ_SECRET_KEY": NEW_KEY, "SITQ_TEST_PERIODIC_LOG": str(ticks)}
    async with TaskQueue(db_path, SignedSerializer(NEW_KEY)) as queue:
        spawn_worker("--import", "registered_jobs", "-c", "4", env=env).wait_started()
        ids = await queue.enqueue_many(jobs.add, [(1, 2), (3, 4)])
        ids += await BatchStore.of(queue).enqueue_in_batch(queue, "b1", jobs.async_add, [(5, 6)])
        ids.append(await queue.with_options(unique_key="once").enqueue(jobs.add, 7, 8))
        ids.append(await queue.enqueue(TaskRef("greet"), "ada"))
        retried = queue.with_options(max_retries=1, retry_backoff=0)
        ids.append(await retried.enqueue(jobs.fail_first_attempt, str(tmp_path / "failed")))

        def enqueue_sync() -> str:
            with SyncTaskQueue(db_path, SignedSerializer(NEW_KEY)) as sync_queue:
                return sync_queue.enqueue(jobs.add, 9, 10)

        ids.append(await asyncio.to_thread(enqueue_sync))
        values = [(await queue.get_result(task_id, timeout=30)).value for task_id in ids]
        assert values == [3, 7, 11, 15, "hello ada!", "second attempt", 19]
        assert (await queue.get_result(ids[-2])).attempts == 2

        wait_until(ticks.exists, 30, "a scheduled run")  # it ran: its payload verified
    with sqlite3.connect(db_path) as db:
        statuses = db.execute("SELECT DISTINCT status FROM sitq_tasks").fetchall()
    assert ("failed",) not in statuses


async def test_inspect_and_the_dashboard_load_signed_calls_only_in_their_own_row(
    db_path: Path, tmp_path: Path, spawn_worker
) -> None:
    from sitq.dashboard.queries import task_detail

    marker = tmp_path / "unpickled"
    env = subprocess_env(SITQ_SECRET_KEY=NEW_KEY)
    async with TaskQueue(db_path, SignedSerializer(NEW_KEY)) as queue:
        spawn_worker(env={"SITQ_SECRET_KEY": NEW_KEY}).wait_started()
        done = await queue.enqueue(jobs.add, 20, 22)
        assert (await queue.get_result(done, timeout=30)).value == 42
        later = queue.with_options(delay=3600)
        source = await later.enqueue(jobs.echo_kwargs, TouchesAFile(marker))
        copied = await later.enqueue(jobs.noop)
        await _sql(
            str(db_path),
            "UPDATE sitq_tasks SET payload = ? WHERE id = ?",
            await _column(str(db_path), "payload", source),
            copied,
        )

        shown = await asyncio.to_thread(
            subprocess.run,
            [SITQ, "inspect", "--db", str(db_path), done],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert "jobs.add(20, 22)" in shown.stdout and "42" in shown.stdout, shown.stdout
        refused = await asyncio.to_thread(
            subprocess.run,
            [SITQ, "inspect", "--db", str(db_path), copied],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert "PayloadRejected" in refused.stdout, refused.stdout

        detail = await task_detail(queue, done, with_call=True)
        assert detail is not None and detail.call == "jobs.add(20, 22)" and detail.result == "42"
        detail = await task_detail(queue, copied, with_call=True)
        assert detail is not None and detail.call is None
        assert "signature does not match" in (detail.call_error or "")
        assert not marker.exists()


async def test_task_completed_carries_the_signed_result(db_path: Path) -> None:
    from sitq import Worker, signals

    values: dict[str, object] = {}

    def completed(event: signals.TaskEvent) -> None:
        values[event.task_id] = event.value

    async def both_reported() -> bool:
        return len(values) == 2

    receiver = signals.task_completed.connect(completed)
    key = SignedSerializer(NEW_KEY)
    worker = Worker(db_path, key, concurrency=2)
    try:
        async with TaskQueue(db_path, key) as queue:  # observed: the span/signal enqueue path
            in_thread = await queue.enqueue(jobs.add, 1, 2)
            on_loop = await queue.enqueue(jobs.async_add, 3, 4)
            await worker.start()
            for task_id in (in_thread, on_loop):
                assert (await queue.get_result(task_id, timeout=30)).status is TaskStatus.SUCCEEDED
            await await_until(both_reported, 15, "both task_completed signals")
        assert values == {in_thread: 3, on_loop: 7}
    finally:
        await worker.stop()
        assert signals.task_completed.disconnect(receiver)
