"""Health monitoring: stuck batches, memory pressure and queue growth.

A daemon thread runs :meth:`HealthMonitor.check` every
``health_check_interval`` seconds. Findings are logged (on ``sitq.adaptive``)
when a state changes, acted on through the processor's health hooks, and
visible in ``get_stats()``. Without a memory source (see ``memory_usage_func``)
the memory checks are off, which is logged once and shown as
``memory_source: "unavailable"``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sitq.adaptive.config import AdaptiveBatchConfig

if TYPE_CHECKING:
    from sitq.adaptive.processor import AdaptiveBatchProcessor

__all__ = ["HealthMonitor"]

logger = logging.getLogger("sitq.adaptive")

MemoryProbe = Callable[[], "float | None"]


def _proc_meminfo() -> float | None:
    fields: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable"):
            fields[name] = int(rest.split()[0])
    total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    if not total or available is None:
        return None
    return 100.0 * (1.0 - available / total)


def _memory_probe(config: AdaptiveBatchConfig) -> tuple[MemoryProbe | None, str]:
    """The best available source of memory use, and its name."""
    if config.memory_usage_func is not None:
        return config.memory_usage_func, "memory_usage_func"
    try:
        import psutil
    except ImportError:
        pass
    else:
        return (lambda: float(psutil.virtual_memory().percent)), "psutil"
    if Path("/proc/meminfo").exists():
        return _proc_meminfo, "/proc/meminfo"
    return None, "unavailable"


def _level(value: float, warning: float, critical: float) -> str:
    if value >= critical:
        return "critical"
    if value >= warning:
        return "warning"
    return "ok"


class HealthMonitor:
    """Runs the health checks on a daemon thread and keeps what they found."""

    def __init__(self, config: AdaptiveBatchConfig, processor: AdaptiveBatchProcessor) -> None:
        self.config = config
        self.processor = processor
        self.memory_probe, self.memory_source = _memory_probe(config)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported_batch: int | None = None
        self._last_queue: tuple[float, int] | None = None
        self._state: dict[str, Any] = {
            "health_checks": 0,
            "memory_source": self.memory_source,
            "memory_percent": None,
            "memory_state": "ok" if self.memory_probe else "unavailable",
            "queue_state": "ok",
            "queue_growth_per_s": 0.0,
            "stuck_batches": 0,
            "stuck_batch_reports": 0,
        }

    def start(self) -> None:
        """Start the checks on their own daemon thread."""
        if self.memory_probe is None:
            logger.info(
                "memory health checks are off: neither psutil nor /proc/meminfo is "
                "available (pip install 'sitq[adaptive]', or pass memory_usage_func)"
            )
        self._thread = threading.Thread(target=self._run, name="sitq-adaptive-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the checks and wait for the thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def snapshot(self) -> dict[str, Any]:
        """What the last checks found."""
        with self._lock:
            return dict(self._state)

    def _run(self) -> None:
        while not self._stop.wait(self.config.health_check_interval):
            try:
                self.check()
            except Exception:
                logger.exception("adaptive batch health check failed; the next one will retry")

    def check(self) -> None:
        """Run every check once."""
        self._check_stuck_batches()
        self._check_memory_usage()
        self._check_queue_growth()
        with self._lock:
            self._state["health_checks"] += 1

    def _check_stuck_batches(self) -> None:
        call = self.processor.current_call()
        stuck = 0
        if call is not None:
            batch_id, started, items = call
            running = time.monotonic() - started
            if running > self.config.stuck_batch_timeout:
                stuck = 1
                if self._reported_batch != batch_id:
                    self._reported_batch = batch_id
                    with self._lock:
                        self._state["stuck_batch_reports"] += 1
                    logger.warning(
                        "batch %d (%d items) has been in process_func for %.1fs, over "
                        "stuck_batch_timeout=%gs: process_func may be stuck",
                        batch_id,
                        items,
                        running,
                        self.config.stuck_batch_timeout,
                    )
        with self._lock:
            self._state["stuck_batches"] = stuck

    def _check_memory_usage(self) -> None:
        if self.memory_probe is None:
            return
        try:
            percent = self.memory_probe()
        except Exception as exc:
            logger.warning("memory probe %s failed: %r", self.memory_source, exc)
            percent = None
        if percent is None:
            with self._lock:
                self._state["memory_percent"] = None
            return
        cfg = self.config
        level = _level(percent, cfg.memory_warning_threshold, cfg.memory_critical_threshold)
        with self._lock:
            previous = self._state["memory_state"]
            self._state["memory_percent"] = percent
            self._state["memory_state"] = level
        if level != previous:
            log = logger.info if level == "ok" else logger.warning
            log(
                "memory use %.1f%% (%s): now %s (warning at %g%%, critical at %g%%)",
                percent,
                self.memory_source,
                level,
                cfg.memory_warning_threshold,
                cfg.memory_critical_threshold,
            )
        self.processor.on_memory_level(level, entering=level != previous)
        if level != "ok":
            gc.collect(2 if level == "critical" else 1)
            self.processor.count_gc()

    def _check_queue_growth(self) -> None:
        length = self.processor.queue_length()
        now = time.monotonic()
        growth = 0.0
        if self._last_queue is not None and now > self._last_queue[0]:
            growth = (length - self._last_queue[1]) / (now - self._last_queue[0])
        self._last_queue = (now, length)
        cfg = self.config
        warning, critical = cfg.queue_thresholds
        level = _level(length, warning, critical)
        with self._lock:
            previous = self._state["queue_state"]
            self._state["queue_state"] = level
            self._state["queue_growth_per_s"] = growth
        if level != previous:
            log = logger.info if level == "ok" else logger.warning
            log(
                "adaptive batch queue holds %d items (growing %.0f/s): now %s (warning at %d, "
                "critical at %d, max_queue_size %d)",
                length,
                growth,
                level,
                warning,
                critical,
                cfg.max_queue_size,
            )
        self.processor.on_queue_level(level == "critical")
