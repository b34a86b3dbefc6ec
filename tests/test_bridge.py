"""sitq.bridge: the one event-loop thread behind the blocking faces."""

from __future__ import annotations

import asyncio
import contextvars
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import jobs
import pytest
from support import wait_until

from sitq import CancelOutcome, NotConnected, SyncTaskQueue, TaskQueue, bridge
from sitq.batch import SyncBatchProcessor
from sitq.bridge import LoopThread
from sitq.errors import SitqError


class Boom(Exception):
    pass


async def _raises() -> None:
    await asyncio.sleep(0)
    raise Boom("from the loop")


def test_an_error_keeps_its_type_and_its_traceback() -> None:
    loop = LoopThread("test-bridge")
    try:
        with pytest.raises(Boom, match="from the loop") as caught:
            loop.run(_raises())
        frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
        assert "_raises" in frames  # where it was raised, on the loop thread
    finally:
        loop.close()


def test_the_coroutine_sees_the_callers_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read() -> str:
        return var.get()

    loop = LoopThread("test-bridge")
    try:
        token = var.set("the caller's")
        try:
            assert loop.run(read()) == "the caller's"
        finally:
            var.reset(token)
    finally:
        loop.close()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="SIGINT")
def test_ctrl_c_while_waiting_cancels_the_coroutine_and_lets_it_unwind() -> None:
    loop = LoopThread("test-bridge")
    started = threading.Event()
    unwound: list[str] = []

    async def waits_forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            unwound.append("cancelled")
            raise

    def press_ctrl_c() -> None:
        # Once the coroutine has started, run() has launched it inside its try
        # (whether or not the main thread is already waiting on the outcome).
        assert started.wait(10)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    # Python's own Ctrl-C handler, even in a suite started with SIGINT ignored
    # (in the background, or under nohup), where Python does not install it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(waits_forever())
        assert unwound == ["cancelled"]  # it unwound before run() gave up
    finally:
        presser.join()
        loop.close()
        signal.signal(signal.SIGINT, previous)


def test_a_closed_queue_refuses_and_closes_the_coroutine(db_path: Path) -> None:
    queue = SyncTaskQueue(db_path)
    queue.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail
        with pytest.raises(NotConnected, match="closed"):
            queue.status("0" * 32)
        with pytest.raises(NotConnected, match="closed"):
            queue.enqueue(jobs.noop)


def test_sync_batch_processor_runs_on_the_queue_loop(db_path: Path) -> None:
    with SyncTaskQueue(db_path) as queue:
        queue.connect()
        before = {thread.ident for thread in threading.enumerate()}
        with SyncBatchProcessor(queue, batch_size=10) as processor:
            ids = processor.enqueue_batch(jobs.add, [(i, i) for i in range(25)])
            assert len(ids) == 25
            assert processor.progress(ids).total == 25
        assert {thread.ident for thread in threading.enumerate()} == before  # no new loop
        assert queue.status_counts(ids)["queued"] == 25  # the queue still serves
        with pytest.raises(RuntimeError, match="closed"):
            processor.batches()


def test_the_sync_face_offers_the_operator_calls(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(SitqError), SyncTaskQueue(missing, create=False) as queue:
        queue.connect()
    assert not missing.exists()
    with SyncTaskQueue(missing) as queue:
        task_id = queue.with_options(queue="mail").enqueue(jobs.noop)
        record = queue.task_record(task_id)
        assert record is not None and record.queue == "mail"
        assert queue.overview().queues["mail"].counts["queued"] == 1
        assert queue.request_cancel(task_id) is CancelOutcome.CANCELLED
        assert queue.request_cancel(task_id) is CancelOutcome.FINISHED
        assert queue.retry_failed() == 0
        assert queue.purge() == 1
        assert queue.task_record(task_id) is None
        assert "missing.db" in queue.describe()


def test_a_session_call_after_close_says_the_queue_is_closed(db_path: Path) -> None:
    queue = SyncTaskQueue(db_path)
    session = queue.store_session()
    queue.close()
    with pytest.raises(NotConnected, match="closed"):
        asyncio.run(session.fetch("SELECT 1"))


def _closes_within(queue: SyncTaskQueue, seconds: float) -> None:
    """Close ``queue`` on another thread; fail if that takes longer than ``seconds``."""
    closer = threading.Thread(target=queue.close, daemon=True)
    started = time.monotonic()
    closer.start()
    closer.join(seconds)
    assert not closer.is_alive(), f"close() still running after {seconds}s"
    assert time.monotonic() - started < seconds


def _call_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``call`` on a thread; what it returned or raised lands in the list."""
    ended: list[object] = []

    def target() -> None:
        try:
            ended.append(call())
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, ended


def test_close_stops_a_loop_held_by_blocking_code_within_its_grace(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge, "CLOSE_GRACE", 0.2)
    queue = SyncTaskQueue(db_path)
    queue.connect()
    blocking, release = threading.Event(), threading.Event()

    async def blocks_the_loop() -> None:
        blocking.set()
        release.wait(60)  # a sync call on the loop thread: nothing else runs there

    caller, ended = _call_in_thread(lambda: queue.run(blocks_the_loop()))
    try:
        assert blocking.wait(10)
        _closes_within(queue, 5.0)  # 2 x 0.2 s of grace, then it leaves the loop
        caller.join(5)
        assert len(ended) == 1 and isinstance(ended[0], NotConnected)  # answered, not hung
    finally:
        release.set()


def test_close_answers_a_caller_waiting_for_a_result(db_path: Path) -> None:
    queue = SyncTaskQueue(db_path)
    task_id = queue.enqueue(jobs.noop)  # no worker: it never finishes
    waiter, ended = _call_in_thread(lambda: queue.get_result(task_id, timeout=None))
    wait_until(lambda: queue.run(_waiting(queue.async_queue)), what="the waiter to park")
    _closes_within(queue, bridge.CLOSE_GRACE)  # no grace used: the queue answers it
    waiter.join(5)
    assert len(ended) == 1 and isinstance(ended[0], NotConnected), ended


async def _waiting(queue: TaskQueue) -> bool:
    return any(t.get_name() == "sitq-result-waiters" for t in asyncio.all_tasks())


def test_close_cancels_what_still_runs_and_answers_its_caller(db_path: Path) -> None:
    queue = SyncTaskQueue(db_path)
    queue.connect()
    started, unwound = threading.Event(), threading.Event()

    async def waits_forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()

    caller, ended = _call_in_thread(lambda: queue.run(waits_forever()))
    assert started.wait(10)
    _closes_within(queue, bridge.CLOSE_GRACE)
    caller.join(5)
    assert unwound.is_set()
    assert len(ended) == 1 and isinstance(ended[0], NotConnected), ended
