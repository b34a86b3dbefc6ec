"""The worker side of sitq: :class:`Worker` claims tasks, runs them and reports
their outcomes (each module's docstring says which part it is)."""

from sitq.worker.claiming import MAX_PREFETCH, PREFETCH_BYTES, PREFETCH_HORIZON
from sitq.worker.worker import POOLS, Worker

__all__ = ["MAX_PREFETCH", "POOLS", "PREFETCH_BYTES", "PREFETCH_HORIZON", "Worker"]
