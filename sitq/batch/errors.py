"""The errors of the batch layer."""

from __future__ import annotations

from typing import Any

from sitq.errors import SitqError, TaskNotFound


class BatchSizeChanged(SitqError):
    """An append to a named batch expected a size the batch no longer has
    (another producer appended first); nothing was stored."""

    def __init__(self, batch_id: str, expected_size: int) -> None:
        super().__init__(batch_id, expected_size)
        self.batch_id = batch_id
        self.expected_size = expected_size

    def __str__(self) -> str:
        return (
            f"batch {self.batch_id!r} no longer has {self.expected_size} tasks: another "
            "producer appended to it first; nothing was stored"
        )


class BatchExists(SitqError, ValueError):
    """A new batch was asked for under a name that is already taken."""

    def __init__(self, batch_id: str, size: int) -> None:
        super().__init__(batch_id, size)
        self.batch_id = batch_id
        self.size = size

    def __str__(self) -> str:
        name = self.batch_id
        return (
            f"batch {name!r} already exists with {self.size} tasks: open it with "
            f"bp.open({name!r}) to collect it, pass if_exists='resume' to enqueue only the "
            "items it does not have yet, if_exists='append' to add these items to it, or "
            f"forget it first with bp.delete({name!r})"
        )


class BatchNotFound(SitqError, KeyError):
    """No batch has the given name (it never existed, or it was deleted)."""

    def __init__(self, batch_id: str, known: list[str] | None = None) -> None:
        super().__init__(batch_id)
        self.batch_id = batch_id
        self.known = known or []

    def __str__(self) -> str:
        text = f"no batch named {self.batch_id!r}"
        if self.known:
            text += f"; known batches include {', '.join(map(repr, self.known))}"
        return text + " (bp.batches() lists them)"


class TaskExpired(TaskNotFound):
    """The task at ``position`` of named batch ``batch_id`` is no longer stored (its
    result was pruned after its ``result_ttl``, or it was purged), so neither its
    id nor its result is known any more.

    :meth:`BatchProcessor.gather` over a named batch puts one in each such
    position (with ``return_exceptions=True``), so the values still line up
    with the input items. A :class:`~sitq.TaskNotFound` with ``task_id`` "".
    """

    def __init__(self, batch_id: str, position: int) -> None:
        super().__init__("")
        self.args = (batch_id, position)
        self.batch_id = batch_id
        self.position = position

    def __str__(self) -> str:
        return (
            f"the task at position {self.position} of batch {self.batch_id!r} is no longer "
            "stored: its result was pruned after its result_ttl (or it was purged)"
        )


class BatchTimeout(SitqError, TimeoutError):
    """Some tasks of a batch had not finished when the timeout ran out.

    ``pending`` holds their ids and ``results`` the Results collected so far,
    so nothing is lost: collect the rest later with ``collect_results``.
    """

    def __init__(self, pending: list[str], results: dict[str, Any], timeout: float) -> None:
        super().__init__(len(pending), timeout)
        self.pending = pending
        self.results = results
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"{len(self.pending)} tasks had not finished after {self.timeout:g} s "
            f"({len(self.results)} had); they keep running: collect them later with "
            "bp.collect_results(...) or bp.gather(...), or give a longer timeout"
        )
