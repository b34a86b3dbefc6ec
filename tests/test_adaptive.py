"""sitq.adaptive: AdaptiveBatchProcessor, each promise of its contract (issue 8).

Timing assertions are one-sided or relative (a batch is not sent *before* its
timeout; it is sent well before a much longer one), with generous deadlines,
so a loaded machine slows the tests down without failing them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from readme_examples import run_readme_example
from support import wait_until

from sitq import SitqError
from sitq.adaptive import (
    AdaptiveBatchConfig,
    AdaptiveBatchProcessor,
    BatchOutputError,
    BatchPriority,
    BatchStats,
    ProcessorStoppedError,
    QueueFullError,
)
from sitq.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 30.0  # bounds a hang; never an expected duration

pytestmark = pytest.mark.timeout(120)

SEED_STATS_KEYS = {
    "avg_processing_time_ms",
    "p95_processing_time_ms",
    "avg_batch_size",
    "max_batch_size",
    "min_batch_size",
    "avg_queue_time_ms",
    "avg_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
    "avg_queue_length",
    "max_queue_length",
    "error_rate",
    "throughput",
    "batch_count",
    "total_processed",
    "current_batch_size",
    "system_load",
    "active_batches",
    "queue_size",
    "is_paused",
    "is_stopping",
}


class Recorder:
    """A batch function that records each call (its batch and start time)."""

    def __init__(self, fn: Callable[[Any], Any] = lambda batch: batch) -> None:
        self.fn = fn
        self.batches: list[Any] = []
        self.starts: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, batch: Any) -> Any:
        with self.lock:
            self.starts.append(time.monotonic())
            self.batches.append(batch.copy() if isinstance(batch, np.ndarray) else list(batch))
        return self.fn(batch)

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


@pytest.fixture
def make() -> Iterator[Callable[..., AdaptiveBatchProcessor]]:
    """Processors that are always stopped at the end of the test."""
    made: list[AdaptiveBatchProcessor] = []

    def factory(**options: Any) -> AdaptiveBatchProcessor:
        options.setdefault("enable_health_monitoring", False)
        processor = AdaptiveBatchProcessor(AdaptiveBatchConfig(**options))
        made.append(processor)
        return processor

    yield factory
    for processor in made:
        processor.stop(timeout=5)


def results(futures: list[Future[Any]]) -> list[Any]:
    return [f.result(timeout=DEADLINE) for f in futures]


# -- configuration and bad input ---------------------------------------------------


def test_config_defaults_are_valid_and_derived() -> None:
    config = AdaptiveBatchConfig(max_queue_size=1000)
    assert config.min_batch_size <= config.initial_batch_size <= config.max_batch_size
    assert config.queue_warning_threshold == 500
    assert config.queue_critical_threshold == 800


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        (dict(min_batch_size=10, initial_batch_size=5), ConfigurationError, "min_batch_size <="),
        (dict(initial_batch_size=300, max_batch_size=256), ConfigurationError, "max_batch_size"),
        (dict(max_queue_size=10, max_batch_size=20, initial_batch_size=5), ConfigurationError,
         "max_queue_size"),
        (dict(batch_timeout=-1), ConfigurationError, "batch_timeout"),
        (dict(batch_timeout="fast"), TypeError, "batch_timeout"),
        (dict(max_retries=1.5), TypeError, "max_retries"),
        (dict(health_check_interval=0), ConfigurationError, "health_check_interval"),
        (dict(memory_warning_threshold=95, memory_critical_threshold=90), ConfigurationError,
         "memory_warning_threshold"),
        (dict(queue_warning_threshold=900, queue_critical_threshold=800), ConfigurationError,
         "queue_warning_threshold"),
        (dict(enable_priority_queue="yes"), TypeError, "enable_priority_queue"),
        (dict(memory_usage_func=42), TypeError, "memory_usage_func"),
    ],
)  # fmt: skip
def test_config_rejects_bad_values(options: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        AdaptiveBatchConfig(**options)


def test_config_errors_are_sitq_errors() -> None:
    with pytest.raises(SitqError):
        AdaptiveBatchConfig(min_batch_size=0)


def test_bad_calls_are_refused_clearly(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    processor = make()
    with pytest.raises(TypeError, match="callable"):
        processor.start(42)  # type: ignore[arg-type]

    async def coroutine_function(batch: list) -> list:
        return batch

    with pytest.raises(TypeError, match="plain function"):
        processor.start(coroutine_function)
    with pytest.raises(TypeError, match="BatchPriority"):
        processor.enqueue(1, priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="BatchPriority"):
        processor.enqueue(1, priority=7)
    with pytest.raises(ValueError, match="0-d numpy array"):
        processor.enqueue(np.array(1.0))
    with pytest.raises(ValueError, match=">= 0 seconds"):
        processor.enqueue(1, timeout=-1)
    with pytest.raises(ValueError, match=r"outside \[min_batch_size=1"):
        processor.update_batch_size(10_000)
    with pytest.raises(TypeError, match="either"):
        AdaptiveBatchProcessor(AdaptiveBatchConfig(), batch_timeout=1)
    processor.start(lambda batch: batch)
    with pytest.raises(ProcessorStoppedError, match="start"):
        processor.start(lambda batch: batch)


def test_keyword_options_build_the_config() -> None:
    processor = AdaptiveBatchProcessor(batch_timeout=0.5, max_batch_size=64)
    assert processor.config.batch_timeout == 0.5
    assert processor.config.max_batch_size == 64
    processor.stop()


# -- batching, results, numpy ----------------------------------------------------------


def test_each_caller_gets_its_own_result(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    recorder = Recorder(lambda items: [x * 10 for x in items])
    processor = make(initial_batch_size=4, batch_timeout=0.05)
    processor.start(recorder)
    futures = [processor.enqueue_predict(i) for i in range(10)]
    assert results(futures) == [i * 10 for i in range(10)]
    assert all(isinstance(b, list) for b in recorder.batches)
    assert sum(recorder.sizes) == 10
    assert max(recorder.sizes) > 1


def test_numpy_rows_are_stacked_and_split_back(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    recorder = Recorder(lambda batch: batch * 2)
    processor = make(initial_batch_size=3, min_batch_size=3, max_batch_size=3, batch_timeout=5)
    processor.pause()  # queue all three first, so they share one batch
    one_row = np.array([1.0, 2.0, 3.0])
    two_rows = np.array([[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    futures = [
        processor.enqueue_predict(one_row),
        processor.enqueue_predict(two_rows),
        processor.enqueue_predict(np.array([10, 11, 12])),
    ]
    processor.start(recorder)
    processor.resume()
    first, second, third = results(futures)
    assert recorder.sizes == [4]  # vstack: 1 + 2 + 1 rows
    assert recorder.batches[0].shape == (4, 3)
    np.testing.assert_array_equal(first, one_row * 2)
    assert first.shape == (3,)
    np.testing.assert_array_equal(second, two_rows * 2)
    assert second.shape == (2, 3)
    np.testing.assert_array_equal(third, [20, 22, 24])


def test_numpy_output_with_wrong_rows_is_a_clear_error(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    recorder = Recorder(lambda batch: batch[:-1])  # drops a row
    processor = make(initial_batch_size=1, min_batch_size=1, max_batch_size=1, max_retries=3)
    processor.start(recorder)
    future = processor.enqueue_predict(np.ones(4))
    with pytest.raises(BatchOutputError, match="first dimension must equal") as info:
        future.result(timeout=DEADLINE)
    assert "0 rows" in str(info.value) or "shape (0, 4)" in str(info.value)
    assert len(recorder.batches) == 1, "a contract error is not retried"


def test_generic_output_must_have_one_result_per_item(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(initial_batch_size=1, max_retries=0)
    processor.start(lambda items: None)
    with pytest.raises(BatchOutputError, match="sequence with one result per item"):
        processor.enqueue_predict("x").result(timeout=DEADLINE)
    other = make(initial_batch_size=2, min_batch_size=2, max_batch_size=2, max_retries=0)
    other.pause()
    futures = [other.enqueue_predict(i) for i in range(2)]
    other.start(lambda items: [*items, "extra"])
    other.resume()
    for future in futures:
        with pytest.raises(BatchOutputError, match="2 results for a batch of 1 items"):
            future.result(timeout=DEADLINE)


def test_rows_of_different_shapes_go_to_separate_calls(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    recorder = Recorder(lambda batch: batch.sum(axis=1) if isinstance(batch, np.ndarray) else batch)
    processor = make(initial_batch_size=4, min_batch_size=4, max_batch_size=4, batch_timeout=5)
    processor.pause()
    items = [np.ones(2), np.ones(3), np.ones(2), "text"]
    futures = [processor.enqueue_predict(item) for item in items]
    processor.start(recorder)
    processor.resume()
    assert results(futures) == [2.0, 3.0, 2.0, "text"]
    calls = {str(b.shape) if isinstance(b, np.ndarray) else f"list of {len(b)}"
             for b in recorder.batches}  # fmt: skip
    assert calls == {"(2, 2)", "(1, 3)", "list of 1"}
    assert len(recorder.batches) == 3


def test_reused_buffer_never_leaks_into_results(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(
        enable_memory_optimization=True,
        gc_batch_threshold=4,
        initial_batch_size=2,
        min_batch_size=2,
        max_batch_size=2,
    )
    processor.start(lambda batch: batch)  # returns the reused input buffer itself
    futures = [processor.enqueue_predict(np.full(3, float(i))) for i in range(8)]
    for i, value in enumerate(results(futures)):
        np.testing.assert_array_equal(value, np.full(3, float(i)))
    assert processor.get_stats()["gc_collections"] >= 1


# -- when batches are sent ---------------------------------------------------------------


def test_full_batch_is_sent_without_waiting_for_the_timeout(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    recorder = Recorder()
    processor = make(initial_batch_size=4, min_batch_size=4, max_batch_size=4, batch_timeout=60)
    processor.start(recorder)
    futures = [processor.enqueue_predict(i) for i in range(4)]
    assert results(futures) == [0, 1, 2, 3]  # well before the 60 s timeout
    assert recorder.sizes == [4]


def test_partial_batch_is_sent_when_its_oldest_item_times_out(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    recorder = Recorder()
    processor = make(initial_batch_size=100, batch_timeout=0.3)
    processor.start(recorder)
    first_enqueued = time.monotonic()
    futures = [processor.enqueue_predict(i) for i in range(3)]
    assert results(futures) == [0, 1, 2]
    assert recorder.sizes == [3]
    assert recorder.starts[0] - first_enqueued >= 0.3


def test_batches_are_never_closer_than_min_batch_interval(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    recorder = Recorder()
    processor = make(
        initial_batch_size=1, min_batch_size=1, max_batch_size=1, min_batch_interval=0.05
    )
    processor.start(recorder)
    assert results([processor.enqueue_predict(i) for i in range(6)]) == list(range(6))
    gaps = [b - a for a, b in zip(recorder.starts, recorder.starts[1:], strict=False)]
    assert len(gaps) == 5
    assert min(gaps) >= 0.05 - 1e-3


def test_eight_producer_threads(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    recorder = Recorder(lambda batch: batch * 3)
    processor = make(batch_timeout=0.01, initial_batch_size=4, max_queue_size=64,
                     max_batch_size=64)  # fmt: skip
    processor.start(recorder)
    per_thread = 250
    outcomes: dict[int, list[Any]] = {}
    errors: list[BaseException] = []
    start_line = threading.Barrier(8)

    def producer(t: int) -> None:
        try:
            start_line.wait()
            futures = [
                processor.enqueue_predict(np.array([t, i], dtype=np.int64))
                for i in range(per_thread)
            ]
            outcomes[t] = results(futures)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not errors, errors
    for t in range(8):
        assert [list(r) for r in outcomes[t]] == [[3 * t, 3 * i] for i in range(per_thread)]
    stats = processor.get_stats()
    assert stats["total_processed"] == 8 * per_thread
    assert sum(recorder.sizes) == 8 * per_thread
    assert stats["batch_count"] < 8 * per_thread / 2, "items were batched together"


# -- priorities -----------------------------------------------------------------------


def _queue_mixed(processor: AdaptiveBatchProcessor) -> list[Future[Any]]:
    order = [
        ("low-1", BatchPriority.LOW),
        ("normal-1", BatchPriority.NORMAL),
        ("high-1", BatchPriority.HIGH),
        ("low-2", BatchPriority.LOW),
        ("high-2", BatchPriority.HIGH),
        ("normal-2", 1),
    ]
    return [processor.enqueue_predict(name, priority=level) for name, level in order]


def test_priorities_are_served_high_first(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    recorder = Recorder()
    processor = make(enable_priority_queue=True, initial_batch_size=2, min_batch_size=2,
                     max_batch_size=2, batch_timeout=5)  # fmt: skip
    processor.start(recorder)
    processor.pause()
    futures = _queue_mixed(processor)
    processor.resume()
    results(futures)
    assert recorder.batches == [["high-1", "high-2"], ["normal-1", "normal-2"], ["low-1", "low-2"]]


def test_priority_queue_tracks_the_oldest_item_in_bounded_memory() -> None:
    from sitq.adaptive.pending import PendingQueue, Request

    queue = PendingQueue(prioritized=True)
    queue.push(Request("old low", None, BatchPriority.LOW, 1.0, None, 1))
    for i in range(10_000):  # high-priority traffic overtakes the low item
        queue.push(Request(i, None, BatchPriority.HIGH, 2.0 + i, None, 1))
        assert queue.pop_many(1)[0].item == i
    assert queue.oldest_enqueued_at() == 1.0
    assert len(queue._arrivals) < 200
    assert queue.pop_many(5)[0].item == "old low"
    assert queue.oldest_enqueued_at() is None


def test_without_priority_queue_order_is_fifo(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    recorder = Recorder()
    processor = make(initial_batch_size=6, min_batch_size=6, max_batch_size=6, batch_timeout=5)
    processor.start(recorder)
    processor.pause()
    futures = _queue_mixed(processor)
    processor.resume()
    results(futures)
    assert recorder.batches == [["low-1", "normal-1", "high-1", "low-2", "high-2", "normal-2"]]


# -- errors: retries and bisection ------------------------------------------------------------


def test_failed_batch_is_retried_after_retry_delay(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    failures = iter([True, False])

    def flaky(items: list[int]) -> list[int]:
        if next(failures):
            raise ConnectionError("model server blinked")
        return [x + 1 for x in items]

    recorder = Recorder(flaky)
    processor = make(initial_batch_size=3, min_batch_size=3, max_batch_size=3, batch_timeout=5,
                     max_retries=2, retry_delay=0.1)  # fmt: skip
    processor.pause()
    futures = [processor.enqueue_predict(i) for i in range(3)]
    processor.start(recorder)
    processor.resume()
    assert results(futures) == [1, 2, 3]
    assert recorder.sizes == [3, 3]
    assert recorder.starts[1] - recorder.starts[0] >= 0.1
    stats = processor.get_stats()
    assert stats["retries"] == 1
    assert stats["error_rate"] == 0.0


def test_bisection_isolates_the_bad_item(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    def strict(items: list[int]) -> list[int]:
        if 11 in items:
            raise ValueError("cannot score item 11")
        return [x * x for x in items]

    recorder = Recorder(strict)
    processor = make(initial_batch_size=16, min_batch_size=16, max_batch_size=16, batch_timeout=5,
                     max_retries=1, retry_delay=0.01)  # fmt: skip
    processor.pause()
    futures = [processor.enqueue_predict(i) for i in range(16)]
    processor.start(recorder)
    processor.resume()
    for i, future in enumerate(futures):
        if i == 11:
            with pytest.raises(ValueError, match="cannot score item 11"):
                future.result(timeout=DEADLINE)
        else:
            assert future.result(timeout=DEADLINE) == i * i
    # 1 try + 1 retry of 16, then halves down to the one item: 2 calls per level.
    assert recorder.sizes[:2] == [16, 16]
    assert len(recorder.sizes) == 2 + 2 * 4
    stats = processor.get_stats()
    assert stats["bisections"] == 1
    assert stats["total_errors"] == 1
    assert stats["error_rate"] == pytest.approx(1 / 16)


def test_numpy_bisection_restacks_the_halves(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    def model(batch: np.ndarray) -> np.ndarray:
        if np.isnan(batch).any():
            raise FloatingPointError("NaN in input")
        return batch.sum(axis=1)

    processor = make(initial_batch_size=8, min_batch_size=8, max_batch_size=8, batch_timeout=5,
                     max_retries=0)  # fmt: skip
    processor.pause()
    rows = [np.full(2, float(i)) for i in range(8)]
    rows[5] = np.array([np.nan, 1.0])
    futures = [processor.enqueue_predict(row) for row in rows]
    processor.start(model)
    processor.resume()
    for i, future in enumerate(futures):
        if i == 5:
            with pytest.raises(FloatingPointError):
                future.result(timeout=DEADLINE)
        else:
            assert future.result(timeout=DEADLINE) == 2.0 * i


def test_a_size_related_failure_halves_the_batch_size(
    make: Callable[..., AdaptiveBatchProcessor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sitq.adaptive")

    def small_batches_only(items: list[int]) -> list[int]:
        if len(items) > 4:
            raise MemoryError("batch too large for the device")
        return items

    processor = make(initial_batch_size=16, batch_timeout=5, max_retries=0)
    processor.pause()
    futures = [processor.enqueue_predict(i) for i in range(16)]
    processor.start(small_batches_only)
    processor.resume()
    assert results(futures) == list(range(16))  # settled during the bisection...
    # ...which then halves the size.
    wait_until(lambda: processor.get_stats()["current_batch_size"] <= 8, DEADLINE, "halving")
    wait_until(lambda: "size-related" in caplog.text, DEADLINE, "the halving logged")


def test_batch_stats_take_the_seeds_update_arguments() -> None:
    stats = BatchStats(window=10)
    stats.update(0.010, 4, [0.001, 0.002, 0.003, 0.004], [0.011, 0.012, 0.013, 0.014], 7)
    stats.update(0.030, 2, 0.005, 0.035, 2)
    stats.record_error(1)
    summary = stats.get_stats()
    assert summary["batch_count"] == 2
    assert summary["total_processed"] == 6
    assert summary["max_batch_size"] == 4 and summary["min_batch_size"] == 2
    assert summary["avg_processing_time_ms"] == pytest.approx(20.0)
    assert summary["p99_latency_ms"] == pytest.approx(35.0)
    assert summary["max_queue_length"] == 7
    assert summary["error_rate"] == pytest.approx(1 / 6)


def test_fire_and_forget_failures_are_logged(
    make: Callable[..., AdaptiveBatchProcessor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sitq.adaptive")
    processor = make(initial_batch_size=1, max_retries=0)

    def boom(items: list[Any]) -> list[Any]:
        raise RuntimeError("broken item")

    processor.start(boom)
    processor.enqueue("x")
    wait_until(lambda: processor.get_stats()["total_errors"] == 1, DEADLINE, "the failure")
    wait_until(lambda: "broken item" in caplog.text, DEADLINE, "the log line")


def test_a_cancelled_future_is_skipped(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    recorder = Recorder()
    processor = make(initial_batch_size=3, min_batch_size=3, max_batch_size=3, batch_timeout=5)
    processor.pause()
    futures = [processor.enqueue_predict(i) for i in range(3)]
    assert futures[1].cancel()
    processor.start(recorder)
    processor.resume()
    assert futures[0].result(timeout=DEADLINE) == 0
    assert futures[2].result(timeout=DEADLINE) == 2
    assert recorder.batches == [[0, 2]]
    assert processor.get_stats()["total_cancelled"] == 1


# -- full queue, pause, stop --------------------------------------------------------------


def test_full_queue_blocks_up_to_timeout_then_raises(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(max_queue_size=2, initial_batch_size=2, max_batch_size=2, batch_timeout=0.05)
    processor.start(lambda items: items)
    processor.pause()
    futures = [processor.enqueue_predict(i) for i in range(2)]
    began = time.monotonic()
    with pytest.raises(QueueFullError, match="full \\(2 items\\)"):
        processor.enqueue_predict(2, timeout=0.2)
    assert time.monotonic() - began >= 0.2
    with pytest.raises(QueueFullError):
        processor.enqueue(3, timeout=0)

    # A producer blocked without a timeout proceeds once a batch makes room.
    late: list[Future[Any]] = []
    blocked = threading.Thread(target=lambda: late.append(processor.enqueue_predict(9)))
    blocked.start()
    assert not late
    processor.resume()
    blocked.join(DEADLINE)
    assert results(futures + late) == [0, 1, 9]


def test_pause_holds_batches_and_resume_releases_them(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(initial_batch_size=1, batch_timeout=0.01)
    processor.start(lambda items: items)
    processor.pause()
    future = processor.enqueue_predict("waiting")
    # Many batch timeouts pass without the item being processed.
    done, _ = wait_futures([future], timeout=0.3)
    assert not done
    stats = processor.get_stats()
    assert stats["is_paused"] is True
    assert stats["queue_size"] == 1
    processor.resume()
    assert future.result(timeout=DEADLINE) == "waiting"
    assert processor.get_stats()["is_paused"] is False


def test_stop_processes_what_is_queued_without_waiting_for_timeouts(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(initial_batch_size=64, batch_timeout=60)
    processor.start(lambda items: [x + 1 for x in items])
    processor.pause()  # stop drains even a paused processor
    futures = [processor.enqueue_predict(i) for i in range(10)]
    began = time.monotonic()
    processor.stop(timeout=DEADLINE)
    assert time.monotonic() - began < DEADLINE
    assert results(futures) == list(range(1, 11))
    assert processor.get_stats()["state"] == "stopped"
    with pytest.raises(ProcessorStoppedError, match="stopped"):
        processor.enqueue(1)
    processor.stop()  # again: nothing happens


def test_stop_timeout_fails_what_is_left(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow(items: list[int]) -> list[int]:
        entered.set()
        release.wait(DEADLINE)
        return items

    processor = make(initial_batch_size=1, min_batch_size=1, max_batch_size=1)
    processor.start(slow)
    running = processor.enqueue_predict("in process_func")
    assert entered.wait(DEADLINE)
    queued = [processor.enqueue_predict(i) for i in range(3)]
    began = time.monotonic()
    processor.stop(timeout=0.2)
    assert time.monotonic() - began < DEADLINE
    for future in [running, *queued]:
        with pytest.raises(ProcessorStoppedError, match=r"stop\(timeout=0.2\) expired"):
            future.result(timeout=DEADLINE)
    assert processor.get_stats()["total_unprocessed"] == 4
    release.set()  # the late result of the stuck call is dropped quietly


def test_stop_wakes_a_producer_blocked_on_a_full_queue(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(max_queue_size=1, initial_batch_size=1, max_batch_size=1)
    processor.pause()  # never started: the queue cannot drain
    processor.enqueue_predict(0)
    outcome: list[BaseException] = []

    def producer() -> None:
        try:
            processor.enqueue_predict(1)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=producer)
    thread.start()
    processor.stop(timeout=1)
    thread.join(DEADLINE)
    assert len(outcome) == 1
    assert isinstance(outcome[0], ProcessorStoppedError)


def test_stop_before_start_fails_queued_items(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    processor = make()
    future = processor.enqueue_predict(1)
    processor.stop(timeout=1)
    with pytest.raises(ProcessorStoppedError, match="before start"):
        future.result(timeout=DEADLINE)


def test_a_dying_batch_thread_fails_everything_clearly(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(initial_batch_size=1, min_batch_size=1, max_batch_size=1)

    def fatal(items: list[Any]) -> list[Any]:
        raise SystemExit("model process exited")

    processor.pause()
    futures = [processor.enqueue_predict(i) for i in range(3)]
    processor.start(fatal)
    processor.resume()
    for future in futures:
        with pytest.raises(ProcessorStoppedError, match="batch thread died"):
            future.result(timeout=DEADLINE)
    with pytest.raises(ProcessorStoppedError, match="batch thread died"):
        processor.enqueue(4)


def test_process_func_cannot_deadlock_on_its_own_processor(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(max_queue_size=1, initial_batch_size=1, max_batch_size=1)
    entered, queue_filled = threading.Event(), threading.Event()
    seen: list[BaseException] = []

    def reentrant(items: list[Any]) -> list[Any]:
        if not entered.is_set():
            entered.set()
            assert queue_filled.wait(DEADLINE)
            for attempt in (lambda: processor.enqueue("more"), lambda: processor.stop()):
                try:
                    attempt()
                except (QueueFullError, ProcessorStoppedError) as exc:
                    seen.append(exc)
        return items

    processor.start(reentrant)
    first = processor.enqueue_predict("first")
    assert entered.wait(DEADLINE)
    filler = processor.enqueue_predict("fills the queue")
    queue_filled.set()
    assert results([first, filler]) == ["first", "fills the queue"]
    assert [type(e) for e in seen] == [QueueFullError, ProcessorStoppedError]
    assert "process_func itself is enqueueing" in str(seen[0])
    assert "from process_func" in str(seen[1])


# -- asyncio --------------------------------------------------------------------------------


async def test_submit_from_many_coroutines(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    recorder = Recorder(lambda items: [x * 2 for x in items])
    processor = make(initial_batch_size=8, batch_timeout=0.01)
    processor.start(recorder)
    values = await asyncio.gather(*(processor.submit(i) for i in range(200)))
    assert values == [i * 2 for i in range(200)]
    assert len(recorder.batches) < 100


async def test_threads_and_coroutines_at_once(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(initial_batch_size=8, batch_timeout=0.01, max_queue_size=32,
                     max_batch_size=32)  # fmt: skip
    processor.start(lambda items: [(tag, n * 2) for tag, n in items])
    thread_results: dict[int, list[Any]] = {}

    def producer(t: int) -> None:
        futures = [processor.enqueue_predict((f"t{t}", i)) for i in range(200)]
        thread_results[t] = results(futures)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()

    async def coroutine(c: int) -> list[Any]:
        return [await processor.submit((f"c{c}", i)) for i in range(20)]

    coroutine_results = await asyncio.gather(*(coroutine(c) for c in range(40)))
    for thread in threads:
        await asyncio.to_thread(thread.join, DEADLINE)
    for t in range(4):
        assert thread_results[t] == [(f"t{t}", 2 * i) for i in range(200)]
    for c in range(40):
        assert coroutine_results[c] == [(f"c{c}", 2 * i) for i in range(20)]
    assert processor.get_stats()["total_processed"] == 4 * 200 + 40 * 20


async def test_submit_waits_for_room_without_blocking_the_loop(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    processor = make(max_queue_size=2, initial_batch_size=2, max_batch_size=2, batch_timeout=0.01)
    processor.start(lambda items: items)
    processor.pause()
    first = [asyncio.ensure_future(processor.submit(i)) for i in range(2)]
    waiting = asyncio.ensure_future(processor.submit(2, priority=BatchPriority.HIGH))
    ticks = 0
    for _ in range(20):  # the loop keeps running while `waiting` waits for room
        await asyncio.sleep(0.005)
        ticks += 1
    assert ticks == 20
    assert not waiting.done()
    with pytest.raises(QueueFullError):
        await processor.submit(3, timeout=0.05)
    processor.resume()
    assert await asyncio.wait_for(asyncio.gather(*first, waiting), DEADLINE) == [0, 1, 2]


async def test_submit_raises_the_items_own_error_and_stop_errors(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    def picky(items: list[int]) -> list[int]:
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return items

    processor = make(initial_batch_size=4, min_batch_size=4, max_batch_size=4, batch_timeout=5,
                     max_retries=0)  # fmt: skip
    processor.start(picky)
    outcomes = await asyncio.gather(
        *(processor.submit(x) for x in (1, -2, 3, 4)), return_exceptions=True
    )
    assert outcomes[0] == 1 and outcomes[2:] == [3, 4]
    assert isinstance(outcomes[1], ValueError)

    stuck = make(initial_batch_size=1, min_batch_size=1, max_batch_size=1)
    stuck.pause()
    pending = asyncio.ensure_future(stuck.submit("never started"))
    while stuck.get_stats()["queue_size"] < 1:
        await asyncio.sleep(0.001)
    stuck.stop(timeout=1)
    with pytest.raises(ProcessorStoppedError, match="before start"):
        await asyncio.wait_for(pending, DEADLINE)


async def test_cancelled_submit_skips_its_item(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    recorder = Recorder()
    processor = make(initial_batch_size=2, min_batch_size=2, max_batch_size=2, batch_timeout=5)
    processor.start(recorder)
    processor.pause()
    kept = asyncio.ensure_future(processor.submit("kept"))
    dropped = asyncio.ensure_future(processor.submit("dropped"))
    while processor.get_stats()["queue_size"] < 2:  # both get queued
        await asyncio.sleep(0.001)
    dropped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dropped  # cancelling the task cancelled its item's future first
    processor.resume()
    assert await asyncio.wait_for(kept, DEADLINE) == "kept"
    assert recorder.batches == [["kept"]]


# -- adaptive size ---------------------------------------------------------------------------


def _costly(fixed: float, per_item: float) -> Callable[[list[int]], list[int]]:
    def work(items: list[int]) -> list[int]:
        time.sleep(fixed + per_item * len(items))  # the simulated model's cost
        return items

    return work


def test_size_grows_under_backlog_up_to_the_latency_cap(
    make: Callable[..., AdaptiveBatchProcessor],
) -> None:
    # t(n) = 2 ms + 1 ms * n: within batch_timeout = 60 ms only up to ~58 items.
    recorder = Recorder(_costly(0.002, 0.001))
    processor = make(initial_batch_size=2, max_batch_size=500, batch_timeout=0.06)
    processor.start(recorder)
    futures = [processor.enqueue_predict(i) for i in range(1500)]
    results(futures)
    stats = processor.get_stats()
    assert max(recorder.sizes) > 8, "the backlog made batches grow"
    # Sleeps only ever take longer, so the measured cap can only be lower than 58.
    assert stats["current_batch_size"] <= 58
    assert max(recorder.sizes[len(recorder.sizes) // 2 :]) <= 58 * 2
    assert stats["per_item_cost_ms"] == pytest.approx(1.0, rel=2.0)


def test_size_shrinks_to_what_arrives(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    processor = make(initial_batch_size=64, batch_timeout=0.02)
    processor.start(lambda items: items)
    stop = threading.Event()

    def producer() -> None:  # closed loop: one item in flight per producer
        while not stop.is_set():
            processor.enqueue_predict(1).result(timeout=DEADLINE)

    threads = [threading.Thread(target=producer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: processor.get_stats()["current_batch_size"] <= 3, DEADLINE,
                   "the batch size to shrink to the 3 producers")  # fmt: skip
    finally:
        stop.set()
        for thread in threads:
            thread.join(DEADLINE)


def test_update_batch_size_sets_the_size(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    recorder = Recorder()
    processor = make(initial_batch_size=50, batch_timeout=60)
    processor.start(recorder)
    processor.update_batch_size(3)
    assert processor.get_stats()["current_batch_size"] == 3
    assert results([processor.enqueue_predict(i) for i in range(3)]) == [0, 1, 2]
    assert recorder.sizes == [3]


# -- health monitoring ----------------------------------------------------------------------


def test_stuck_batch_is_reported(
    make: Callable[..., AdaptiveBatchProcessor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sitq.adaptive")
    release = threading.Event()
    processor = make(enable_health_monitoring=True, health_check_interval=0.02,
                     stuck_batch_timeout=0.1, initial_batch_size=1)  # fmt: skip
    processor.start(lambda items: release.wait(DEADLINE) and items)
    future = processor.enqueue_predict("slow")
    wait_until(lambda: processor.get_stats()["stuck_batches"] == 1, DEADLINE, "a stuck report")
    assert processor.get_stats()["active_batches"] == 1
    wait_until(lambda: "may be stuck" in caplog.text, DEADLINE, "the report logged")
    release.set()
    assert future.result(timeout=DEADLINE) == "slow"
    wait_until(lambda: processor.get_stats()["stuck_batches"] == 0, DEADLINE, "recovery")
    assert processor.get_stats()["stuck_batch_reports"] == 1


def test_memory_pressure_shrinks_batches_and_collects(
    make: Callable[..., AdaptiveBatchProcessor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sitq.adaptive")
    memory = [50.0]
    processor = make(enable_health_monitoring=True, health_check_interval=0.02,
                     initial_batch_size=64, memory_usage_func=lambda: memory[0])  # fmt: skip
    processor.start(lambda items: items)
    wait_until(lambda: processor.get_stats()["memory_percent"] == 50.0, DEADLINE, "a check")
    assert processor.get_stats()["memory_state"] == "ok"
    memory[0] = 95.0
    wait_until(lambda: processor.get_stats()["current_batch_size"] <= 8, DEADLINE, "shrinking")
    stats = processor.get_stats()
    assert stats["memory_state"] == "critical"
    assert stats["gc_collections"] >= 1
    assert stats["memory_source"] == "memory_usage_func"
    wait_until(lambda: "now critical" in caplog.text, DEADLINE, "the pressure logged")
    memory[0] = 50.0
    wait_until(lambda: processor.get_stats()["memory_state"] == "ok", DEADLINE, "recovery")
    wait_until(lambda: "now ok" in caplog.text, DEADLINE, "the recovery logged")


def test_queue_growth_is_reported_and_grows_batches(
    make: Callable[..., AdaptiveBatchProcessor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sitq.adaptive")
    processor = make(enable_health_monitoring=True, health_check_interval=0.02,
                     initial_batch_size=4, max_queue_size=300, queue_warning_threshold=10,
                     queue_critical_threshold=20)  # fmt: skip
    processor.start(lambda items: items)
    processor.pause()
    for i in range(25):
        processor.enqueue(i)
    wait_until(lambda: processor.get_stats()["queue_state"] == "critical", DEADLINE, "critical")
    wait_until(lambda: processor.get_stats()["current_batch_size"] >= 16, DEADLINE, "growth")
    wait_until(lambda: "now critical" in caplog.text, DEADLINE, "the backlog logged")
    processor.resume()
    wait_until(lambda: processor.get_stats()["queue_state"] == "ok", DEADLINE, "drained")


def test_memory_checks_fall_back_without_psutil() -> None:
    """Without numpy and psutil the module imports and works; memory via /proc or off."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("numpy", "psutil"):
                    raise ImportError(f"{name} is blocked for this test")
        sys.meta_path.insert(0, Block())
        from sitq.adaptive import AdaptiveBatchProcessor
        p = AdaptiveBatchProcessor(health_check_interval=0.01, initial_batch_size=2)
        p.start(lambda items: [x * 2 for x in items])
        assert p.enqueue_predict(21).result(timeout=30) == 42
        import time
        deadline = time.monotonic() + 30
        while p.get_stats()["health_checks"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = p.get_stats()
        p.stop()
        assert "numpy" not in sys.modules and "psutil" not in sys.modules
        print(stats["memory_source"], stats["memory_state"], stats["memory_percent"] is not None)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    source, state, known = proc.stdout.split()
    if Path("/proc/meminfo").exists():
        assert (source, known) == ("/proc/meminfo", "True")
        assert state in ("ok", "warning", "critical")
    else:
        assert (source, state) == ("unavailable", "unavailable")


# -- statistics and the example -----------------------------------------------------------------


def test_get_stats_has_the_documented_keys(make: Callable[..., AdaptiveBatchProcessor]) -> None:
    processor = make(initial_batch_size=4, batch_timeout=0.01)
    processor.start(lambda items: items)
    assert results([processor.enqueue_predict(i) for i in range(20)]) == list(range(20))
    stats = processor.get_stats()
    assert set(stats) >= SEED_STATS_KEYS, SEED_STATS_KEYS - set(stats)
    assert stats["total_processed"] == 20
    assert 0 < stats["avg_batch_size"] <= 20
    assert stats["p99_latency_ms"] >= stats["p95_latency_ms"] >= 0
    assert stats["p95_processing_time_ms"] >= 0
    assert stats["throughput"] > 0
    assert 0 <= stats["system_load"] <= 1
    assert stats["queue_size"] == 0
    assert stats["is_stopping"] is False
    sent = stats["batches_sent_full"] + stats["batches_sent_on_timeout"]
    assert sent == stats["batch_count"]
    processor.stop()
    assert processor.get_stats()["is_stopping"] is True


def test_adaptive_inference_example_runs(tmp_path: Path) -> None:
    proc = run_readme_example("examples/adaptive_inference.py", tmp_path)
    out = proc.stdout
    assert re.search(r"Processed 1021 items in \d+ batches \(0 failed, 0 left unprocessed\)", out)
    assert "enqueue_predict([4 5 6]) -> [ 8 10 12]" in out
    assert "Processing Statistics:" in out
    assert "high-priority results all correct" in out
    assert out.rstrip().splitlines()[-1] == "Adaptive inference example completed!"
