"""AdaptiveBatchConfig (the options, validated) and BatchPriority."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from sitq.errors import ConfigurationError

__all__ = ["AdaptiveBatchConfig", "BatchPriority", "check_seconds"]


class BatchPriority(IntEnum):
    """How urgent an item is; higher first when ``enable_priority_queue`` is on."""

    LOW = 0
    NORMAL = 1
    HIGH = 2

    @classmethod
    def coerce(cls, value: object) -> BatchPriority:
        """``value`` as a BatchPriority, or a TypeError/ValueError that lists the choices."""
        if isinstance(value, cls):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"priority must be a BatchPriority (LOW, NORMAL, HIGH), not {value!r}")
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"priority {value!r} is not a BatchPriority: use BatchPriority.LOW (0), "
                "NORMAL (1) or HIGH (2)"
            ) from None


@dataclass(frozen=True)
class AdaptiveBatchConfig:
    """Options of an :class:`~sitq.adaptive.AdaptiveBatchProcessor`; checked on creation.

    Sizes count items. Times are seconds. Defaults suit low-latency inference:
    batches of up to 256 items, each item waiting at most 10 ms for its batch
    to fill.

    Attributes:
        initial_batch_size: the batch size to start with (adapted from then on).
        min_batch_size: the adaptive size never goes below this. A batch sent
            because its oldest item timed out, or during ``stop``, may be smaller.
        max_batch_size: no batch is ever larger.
        max_queue_size: items waiting at most; a full queue blocks ``enqueue``.
        batch_timeout: the longest the oldest queued item waits for its batch to
            fill; also the latency budget the adaptive size aims for. ``0`` sends
            whatever is queued at once (and lifts the latency cap on the size).
        min_batch_interval: batches start at least this far apart.
        max_retries: times a failed batch is retried before it is bisected.
        retry_delay: the pause before each retry.
        enable_priority_queue: serve ``BatchPriority.HIGH`` before ``NORMAL``
            before ``LOW`` (FIFO within a priority). Off: FIFO, priority ignored.
        enable_monitoring: keep per-batch statistics (latency and processing
            percentiles, throughput) over the last ``monitoring_window`` batches.
            Counters and the live state are kept either way.
        monitoring_window: how many recent batches the statistics cover.
        enable_health_monitoring: run the health thread (stuck batches, memory,
            queue growth) every ``health_check_interval`` seconds.
        health_check_interval: seconds between health checks.
        memory_warning_threshold: system memory use (percent) at which growth
            stops and a garbage collection runs.
        memory_critical_threshold: memory use (percent) at which the batch size
            is halved at every check and a full garbage collection runs.
        queue_warning_threshold: queued items at which a warning is logged;
            default half of ``max_queue_size``.
        queue_critical_threshold: queued items at which the batch size doubles
            at every check (the latency cap is lifted: the backlog already costs
            more than it); default 80% of ``max_queue_size``.
        enable_memory_optimization: stack numpy batches into a reused buffer
            (the array given to ``process_func`` is then only valid during the
            call: copy it to keep it), and run a young-generation ``gc`` between
            batches every ``gc_batch_threshold`` processed items.
        gc_batch_threshold: processed items between those collections.
        stuck_batch_timeout: a ``process_func`` call running longer than this is
            reported as stuck (logged once per batch, counted in the stats).
        memory_usage_func: returns memory use in percent (0-100), or None when
            unknown, for the memory checks. Default: the system's memory use via
            psutil, else ``/proc/meminfo``; with neither the checks are off.
            Point it at a container limit or a GPU's memory as needed.
    """

    initial_batch_size: int = 32
    min_batch_size: int = 1
    max_batch_size: int = 256
    max_queue_size: int = 10_000
    batch_timeout: float = 0.01
    min_batch_interval: float = 0.0
    max_retries: int = 2
    retry_delay: float = 0.05
    enable_priority_queue: bool = False
    enable_monitoring: bool = True
    monitoring_window: int = 100
    enable_health_monitoring: bool = True
    health_check_interval: float = 5.0
    memory_warning_threshold: float = 80.0
    memory_critical_threshold: float = 90.0
    queue_warning_threshold: int | None = None
    queue_critical_threshold: int | None = None
    enable_memory_optimization: bool = False
    gc_batch_threshold: int = 1000
    stuck_batch_timeout: float = 30.0
    memory_usage_func: Callable[[], float | None] | None = None

    def __post_init__(self) -> None:
        for name in (
            "initial_batch_size",
            "min_batch_size",
            "max_batch_size",
            "max_queue_size",
            "monitoring_window",
            "gc_batch_threshold",
        ):
            _int(self, name, minimum=1)
        _int(self, "max_retries", minimum=0)
        for name in ("batch_timeout", "min_batch_interval", "retry_delay"):
            check_seconds(name, getattr(self, name))
        for name in ("health_check_interval", "stuck_batch_timeout"):
            check_seconds(name, getattr(self, name), allow_zero=False)
        for name in (
            "enable_priority_queue",
            "enable_monitoring",
            "enable_health_monitoring",
            "enable_memory_optimization",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if not self.min_batch_size <= self.initial_batch_size <= self.max_batch_size:
            raise ConfigurationError(
                "batch sizes must satisfy min_batch_size <= initial_batch_size <= "
                f"max_batch_size, got {self.min_batch_size} <= {self.initial_batch_size} <= "
                f"{self.max_batch_size}: adjust one of them"
            )
        if self.max_queue_size < self.max_batch_size:
            raise ConfigurationError(
                f"max_queue_size ({self.max_queue_size}) is smaller than max_batch_size "
                f"({self.max_batch_size}): a batch could never fill; raise max_queue_size"
            )
        for name in ("memory_warning_threshold", "memory_critical_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a percentage (a number), not {value!r}")
            if not 0 < value <= 100:
                raise ConfigurationError(f"{name} must be a percentage in (0, 100], got {value}")
        if self.memory_warning_threshold > self.memory_critical_threshold:
            raise ConfigurationError(
                f"memory_warning_threshold ({self.memory_warning_threshold}) must not exceed "
                f"memory_critical_threshold ({self.memory_critical_threshold})"
            )
        # Unset thresholds are derived from max_queue_size; locals keep the
        # resolved values typed as ints.
        warning = self.queue_warning_threshold
        if warning is None:
            warning = max(1, self.max_queue_size // 2)
            object.__setattr__(self, "queue_warning_threshold", warning)
        critical = self.queue_critical_threshold
        if critical is None:
            critical = max(warning, self.max_queue_size * 4 // 5)
            object.__setattr__(self, "queue_critical_threshold", critical)
        _int(self, "queue_warning_threshold", minimum=1)
        _int(self, "queue_critical_threshold", minimum=1)
        if not (warning <= critical <= self.max_queue_size):
            raise ConfigurationError(
                "queue thresholds must satisfy queue_warning_threshold <= "
                f"queue_critical_threshold <= max_queue_size, got {warning}"
                f" <= {critical} <= {self.max_queue_size}"
            )
        if self.memory_usage_func is not None and not callable(self.memory_usage_func):
            raise TypeError(
                "memory_usage_func must be a callable returning a percentage, not "
                f"{self.memory_usage_func!r}"
            )

    @property
    def queue_thresholds(self) -> tuple[int, int]:
        """The (warning, critical) queue lengths, as resolved at construction."""
        warning, critical = self.queue_warning_threshold, self.queue_critical_threshold
        # __post_init__ replaces None by the default derived from max_queue_size.
        assert warning is not None and critical is not None
        return warning, critical


def _int(config: AdaptiveBatchConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")


def check_seconds(name: str, value: object, *, allow_zero: bool = True, call: bool = False) -> None:
    """A TypeError or ConfigurationError unless ``value`` is a usable number of seconds.

    ``call``: a per-call timeout, which may also be None (wait for as long as it takes).
    """
    if call and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds{' or None' if call else ''}, not {value!r}"
        )
    if not (value >= 0 if allow_zero else value > 0) or (not call and math.isinf(value)):
        bound = ">= 0" if allow_zero else "> 0"
        hint = " (or None to wait)" if call else ", finite"
        raise ConfigurationError(f"{name} must be {bound} seconds{hint}, got {value}")
