"""BatchStats: counters for the processor's lifetime, percentiles over a window."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchRecord", "BatchStats"]


@dataclass(frozen=True)
class BatchRecord:
    """One processed batch, as the statistics window keeps it."""

    size: int
    started: float
    finished: float
    processing_time: float
    queue_length: int
    queue_times: list[float]
    latencies: list[float]


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[rank]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class BatchStats:
    """Thread-safe statistics: lifetime counters, and the last ``window`` batches.

    Summaries over the window are computed on demand and cached until the next
    batch is recorded.
    """

    def __init__(self, window: int, keep_window: bool = True) -> None:
        self._lock = threading.Lock()
        self._window: deque[BatchRecord] = deque(maxlen=window)
        self._keep_window = keep_window
        self._version = 0
        self._cache: tuple[int, dict[str, float]] | None = None
        self.batch_count = 0
        self.total_processed = 0
        self.total_errors = 0

    def update(
        self,
        processing_time: float,
        batch_size: int,
        queue_time: float | Sequence[float],
        latency: float | Sequence[float],
        queue_length: int,
        *,
        finished: float | None = None,
        errors: int = 0,
    ) -> None:
        """Record one processed batch.

        ``queue_time`` and ``latency`` (seconds) are one value for the batch or
        one per item; ``queue_length`` is what was queued when it was taken;
        ``finished`` (``time.monotonic()``) defaults to now; ``errors`` of its
        items failed.
        """
        end = time.monotonic() if finished is None else finished
        record = BatchRecord(
            size=batch_size,
            started=end - processing_time,
            finished=end,
            processing_time=processing_time,
            queue_length=queue_length,
            queue_times=[queue_time] if isinstance(queue_time, (int, float)) else list(queue_time),
            latencies=[latency] if isinstance(latency, (int, float)) else list(latency),
        )
        with self._lock:
            self.batch_count += 1
            self.total_processed += batch_size
            self.total_errors += errors
            if self._keep_window:
                self._window.append(record)
                self._version += 1

    def record_error(self, count: int = 1) -> None:
        """Count ``count`` failed items that no batch record covers."""
        with self._lock:
            self.total_errors += count

    def get_stats(self) -> dict[str, float]:
        """The summary: window statistics plus lifetime counters."""
        with self._lock:
            counters = {
                "batch_count": self.batch_count,
                "total_processed": self.total_processed,
                "total_errors": self.total_errors,
                "error_rate": self.total_errors / self.total_processed
                if self.total_processed
                else 0.0,
            }
            if self._cache is None or self._cache[0] != self._version:
                self._cache = (self._version, _summarize(list(self._window)))
            return {**self._cache[1], **counters}


def _summarize(records: list[BatchRecord]) -> dict[str, Any]:
    processing = sorted(r.processing_time for r in records)
    latencies = sorted(x for r in records for x in r.latencies)
    queue_times = [x for r in records for x in r.queue_times]
    sizes = [r.size for r in records]
    lengths = [r.queue_length for r in records]
    items = sum(sizes)
    span = (records[-1].finished - records[0].started) if records else 0.0
    busy = sum(processing)
    ms = 1000.0
    return {
        "avg_processing_time_ms": _mean(processing) * ms,
        "p50_processing_time_ms": _percentile(processing, 50) * ms,
        "p95_processing_time_ms": _percentile(processing, 95) * ms,
        "p99_processing_time_ms": _percentile(processing, 99) * ms,
        "avg_batch_size": _mean(sizes),
        "max_batch_size": max(sizes, default=0),
        "min_batch_size": min(sizes, default=0),
        "avg_queue_time_ms": _mean(queue_times) * ms,
        "avg_latency_ms": _mean(latencies) * ms,
        "p50_latency_ms": _percentile(latencies, 50) * ms,
        "p95_latency_ms": _percentile(latencies, 95) * ms,
        "p99_latency_ms": _percentile(latencies, 99) * ms,
        "avg_queue_length": _mean(lengths),
        "max_queue_length": max(lengths, default=0),
        "throughput": items / span if span > 0 else 0.0,
        "system_load": min(1.0, busy / span) if span > 0 else 0.0,
    }
