"""Signed payloads: a worker with a key runs only what was signed with it, never
unpickling anything else, and keys can be rotated. Database files are private."""

from __future__ import annotations

import pathlib
import pickle
import sqlite3
import stat
from pathlib import Path

import jobs
import pytest

from sitq import TaskQueue, TaskStatus
from sitq.errors import ConfigurationError, PayloadRejected
from sitq.serialization import CloudpickleSerializer, SignedSerializer

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
    assert data.startswith(b"SQS1") and signed.loads(data) == {"x": [1, 2]}

    marker = tmp_path / "unpickled"
    evil = pickle.dumps(TouchesAFile(marker))
    with pytest.raises(PayloadRejected, match="unsigned"):
        signed.loads(evil)
    tampered = bytearray(signed.dumps(TouchesAFile(marker)))
    tampered[-3] ^= 0x01
    with pytest.raises(PayloadRejected, match="signature does not match"):
        signed.loads(bytes(tampered))
    with pytest.raises(PayloadRejected, match="signature"):
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
