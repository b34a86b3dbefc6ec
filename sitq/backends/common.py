"""Logic both SQL backends run alike, written once.

Pure Python over what a query returned: each backend keeps its own SQL and
driver calls, and hands the rows here. (The listing's cursor and window helpers
that predate this module live in ``sitq.backends.base``.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sitq.backends.base import ListingSource, TaskPage, TaskRecord


def listing_window_size(
    source: ListingSource, queue: str | None, status: str | None, limit: int, scan_limit: int
) -> int:
    """How many rows a listing scans from its source's index.

    Without filters left to apply (the source already is the filter), the page
    is the window's first ``limit`` rows; otherwise up to ``scan_limit`` rows are
    read and filtered, so a page reads no more than that however rare its rows.
    """
    prefiltered = queue is None and (status is None or source in ("failed", "running"))
    return limit if prefiltered else max(limit, scan_limit)


def listing_page(
    ids: Sequence[str], found: Iterable[TaskRecord], next_cursor: str | None
) -> TaskPage:
    """The page of ``ids`` in listing order, from the records loaded for them.

    A task deleted between the window's scan and the load is left out.
    """
    records = {record.id: record for record in found}
    return TaskPage([records[task_id] for task_id in ids if task_id in records], next_cursor)


class Every:
    """A deadline that comes round every ``interval`` seconds: work the backends
    do at most that often (reclaiming expired leases, re-reading whether any
    limit exists), on the claim path.
    """

    __slots__ = ("_interval", "_next")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0

    def due(self, now: float) -> bool:
        """True at most once per interval; the next time is set from ``now``."""
        if now < self._next:
            return False
        self._next = now + self._interval
        return True

    def reset(self) -> None:
        """Be due at the next check (what it guards has changed)."""
        self._next = 0.0
