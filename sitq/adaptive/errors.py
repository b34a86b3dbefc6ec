"""The errors :mod:`sitq.adaptive` raises or hands to callers' futures."""

from __future__ import annotations

from sitq.errors import SitqError


class QueueFullError(SitqError):
    """``enqueue``/``submit`` found the queue full for longer than its timeout."""


class ProcessorStoppedError(SitqError, RuntimeError):
    """The processor is stopping or stopped (or its batch thread died).

    Raised by ``enqueue`` after ``stop()``, and set on the futures of items that
    ``stop(timeout)`` could not process in time.
    """


class BatchOutputError(SitqError, ValueError):
    """``process_func`` returned something that cannot be split back per item.

    For numpy batches the output's first dimension must equal the number of
    stacked rows; otherwise the output must hold one result per item, in order.
    """
