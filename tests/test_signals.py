"""Signals: each fires once, where documented, to sync and async receivers; a
receiver that raises never breaks the worker or loses a result."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import jobs
import pytest
from support import await_until

from sitq import TaskQueue, TaskStatus, Worker, signals
from sitq.signals import Signal, TaskEvent, WorkerEvent

ALL = (
    signals.task_enqueued,
    signals.task_started,
    signals.task_completed,
    signals.task_failed,
    signals.task_retrying,
    signals.task_cancelled,
    signals.worker_started,
    signals.worker_stopping,
)


class Recorder:
    """Connects a sync receiver to half the signals and an async one to the rest."""

    def __init__(self) -> None:
        self.events: list[tuple[str, TaskEvent | WorkerEvent]] = []
        self.connected: list[tuple[Signal, object]] = []
        for index, signal in enumerate(ALL):
            self.connected.append((signal, signal.connect(self._receiver(signal, index % 2))))

    def _receiver(self, signal: Signal, is_async: int) -> object:
        def sync_receiver(event: TaskEvent | WorkerEvent) -> None:
            self.events.append((signal.name, event))

        async def async_receiver(event: TaskEvent | WorkerEvent) -> None:
            await asyncio.sleep(0)
            self.events.append((signal.name, event))

        return async_receiver if is_async else sync_receiver

    def names(self, task_id: str) -> list[str]:
        return [n for n, e in self.events if isinstance(e, TaskEvent) and e.task_id == task_id]

    def of(self, name: str) -> list:
        return [e for n, e in self.events if n == name]

    def disconnect(self) -> None:
        for signal, receiver in self.connected:
            assert signal.disconnect(receiver)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.disconnect()
    assert not any(signal.has_receivers for signal in ALL)


async def test_each_signal_fires_once_with_its_event(
    recorder: Recorder, queue: TaskQueue, db_path: Path, tmp_path: Path
) -> None:
    ok = await queue.enqueue(jobs.add, 1, 2)
    retried = await queue.with_options(max_retries=1, retry_backoff=0.01).enqueue(
        jobs.fail_first_attempt, str(tmp_path / "marker")
    )
    failed = await queue.enqueue(jobs.fail, "bad input")
    cancelled = await queue.with_options(delay=3600).enqueue(jobs.noop)
    assert await queue.cancel(cancelled)
    worker = Worker(db_path, concurrency=2)
    await worker.start()
    try:
        for task_id in (ok, retried, failed):
            assert await queue.get_result(task_id, timeout=30) is not None

        async def all_reported() -> bool:
            return len(recorder.of("task_completed")) == 2 and bool(recorder.of("task_failed"))

        await await_until(all_reported, 15, "the outcome signals")
    finally:
        await worker.stop()

    assert recorder.names(ok) == ["task_enqueued", "task_started", "task_completed"]
    assert recorder.names(retried) == [
        "task_enqueued",
        "task_started",
        "task_retrying",
        "task_started",
        "task_completed",
    ]
    assert recorder.names(failed) == ["task_enqueued", "task_started", "task_failed"]
    assert recorder.names(cancelled) == ["task_enqueued", "task_cancelled"]

    (done,) = [e for e in recorder.of("task_completed") if e.task_id == ok]
    assert (done.task_name, done.queue, done.value, done.attempt) == ("jobs.add", "default", 3, 1)
    assert done.worker_id == worker.id and done.duration is not None
    (retry,) = recorder.of("task_retrying")
    assert retry.error == "RuntimeError: first attempt fails" and retry.retry_at is not None
    (failure,) = recorder.of("task_failed")
    assert failure.error == "ValueError: bad input" and "Traceback" in failure.traceback
    assert [e.worker_id for e in recorder.of("worker_started")] == [worker.id]
    (stopping,) = recorder.of("worker_stopping")
    assert stopping == WorkerEvent(worker.id, ("default",), 2)


async def test_a_raising_receiver_is_logged_and_changes_nothing(
    queue: TaskQueue, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: TaskEvent) -> None:
        raise RuntimeError("receiver bug")

    async def broken_async(event: TaskEvent) -> None:
        raise RuntimeError("async receiver bug")

    hooked = [
        (signal, receiver)
        for signal in (signals.task_enqueued, signals.task_started, signals.task_completed)
        for receiver in (broken, broken_async)
    ]
    for signal, receiver in hooked:
        signal.connect(receiver)
    worker = Worker(db_path)
    try:
        with caplog.at_level(logging.ERROR, logger="sitq.signals"):
            await worker.start()
            task_ids = [await queue.enqueue(jobs.add, i, i) for i in range(5)]
            for i, task_id in enumerate(task_ids):
                result = await queue.get_result(task_id, timeout=30)
                assert result.status is TaskStatus.SUCCEEDED and result.value == 2 * i
            assert worker.running
    finally:
        await worker.stop()
        for signal, receiver in hooked:
            signal.disconnect(receiver)
    assert "receiver bug" in caplog.text and "async receiver bug" in caplog.text


def test_signal_contract() -> None:
    signal: Signal[TaskEvent] = Signal("demo")
    seen: list[str] = []
    with pytest.raises(TypeError, match="demo.connect"):
        signal.connect("not callable")  # type: ignore[arg-type]

    @signal.connect
    def first(event: TaskEvent) -> None:
        seen.append("first " + event.task_id)

    signal.connect(first)  # connecting twice calls it once
    signal.connect(lambda event: seen.append("second"))
    signal.send_nowait(TaskEvent("t1", "fn", "default"))
    assert seen == ["first t1", "second"]

    async def later(event: TaskEvent) -> None:
        seen.append("async " + event.task_id)

    signal.connect(later)
    signal.send_nowait(TaskEvent("t2", "fn", "default"))  # no loop: run to completion here
    assert seen[-1] == "async t2"
    assert signal.disconnect(first) and not signal.disconnect(first)
