"""The waiting items: one Request per item, in FIFO or priority order.

:class:`PendingQueue` is a plain data structure; the processor guards it with
its own lock, which also guards the conditions that producers and the batch
thread wait on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

__all__ = ["PendingQueue", "Request"]


@dataclass(slots=True, eq=False)
class Request:
    """One queued item and the future its caller waits on (None: fire and forget)."""

    item: Any
    #: A concurrent future (threads), an asyncio future of ``loop`` (``submit``), or None.
    future: Future[Any] | asyncio.Future[Any] | None
    priority: int
    enqueued_at: float
    #: None for a generic item; ("ndarray", row shape) for a numpy one.
    key: tuple[Any, ...] | None
    #: The rows the item adds to a stacked numpy batch (1 for generic items).
    rows: int
    loop: asyncio.AbstractEventLoop | None = None
    taken: bool = False


class PendingQueue:
    """Requests in arrival order, or by priority (then arrival) when ``prioritized``.

    Priority is strict: under sustained overload lower priorities wait.
    ``oldest_enqueued_at`` is the arrival time of the oldest request still
    waiting, whichever order requests leave in.
    """

    def __init__(self, prioritized: bool) -> None:
        self.prioritized = prioritized
        self._arrivals: deque[Request] = deque()
        self._heap: list[tuple[int, int, Request]] = []
        self._seq = itertools.count()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, request: Request) -> int:
        """Add one request; returns how many now wait."""
        self._arrivals.append(request)
        if self.prioritized:
            heapq.heappush(self._heap, (-request.priority, next(self._seq), request))
        self._count += 1
        return self._count

    def pop_many(self, limit: int) -> list[Request]:
        """Remove and return up to ``limit`` requests, in serving order."""
        n = min(limit, self._count)
        if self.prioritized:
            batch = [heapq.heappop(self._heap)[2] for _ in range(n)]
            for request in batch:
                request.taken = True
            if len(self._arrivals) > 2 * (self._count - n) + 64:
                # Taken requests stuck behind a long-waiting one: drop them so the
                # arrival order stays bounded by what waits.
                self._arrivals = deque(r for r in self._arrivals if not r.taken)
        else:
            popleft = self._arrivals.popleft
            batch = [popleft() for _ in range(n)]
        self._count -= n
        return batch

    def oldest_enqueued_at(self) -> float | None:
        """When the oldest waiting request arrived, or None if none waits."""
        arrivals = self._arrivals
        if self.prioritized:
            while arrivals and arrivals[0].taken:
                arrivals.popleft()
        return arrivals[0].enqueued_at if arrivals else None
