"""The worker side of sitq: :class:`Worker` claims tasks, runs them and reports
their outcomes."""

from sitq.worker.worker import MAX_PREFETCH, POOLS, PREFETCH_HORIZON, Worker

__all__ = ["MAX_PREFETCH", "POOLS", "PREFETCH_HORIZON", "Worker"]
