"""What the public API says about stored tasks: statuses read from records,
Results made from them, the three-way answer of a cancel, and the checks of
task ids and listing filters. Kept apart from ``queue.py`` so the producer
API's module holds the API and not its helpers."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

from sitq.backends.base import TaskRecord
from sitq.errors import ConfigurationError, CorruptRow, InvalidTask
from sitq.registry import TaskRef
from sitq.serialization import Serializer, loads_checked, result_binding
from sitq.task import Result, TaskStatus, to_datetime

#: The most tasks one listing page may hold.
MAX_PAGE_SIZE = 1000


class CancelOutcome(str, enum.Enum):
    """What a cancel did. Its truth value is what ``TaskQueue.cancel`` returns:
    true when the task was cancelled or its worker was asked to stop it."""

    #: It was queued (not held by a worker): it is cancelled and will not run.
    CANCELLED = "cancelled"
    #: A worker holds it (running, or claimed and not started): that worker was
    #: asked to stop it, or to end it cancelled if it has not started yet.
    REQUESTED = "requested"
    #: It had already finished (succeeded, failed or cancelled): nothing changed.
    FINISHED = "finished"

    def __bool__(self) -> bool:
        return self is not CancelOutcome.FINISHED


def task_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a callable, for display (a registered task's name)."""
    if isinstance(fn, TaskRef):
        return fn.name
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return f"{module}.{name}" if name else repr(fn)


def check_callable(fn: Any) -> None:
    """Refuse a task that is not a callable, saying what to pass instead."""
    if not callable(fn):
        raise InvalidTask(
            f"a task must be a callable (a function or coroutine function), got "
            f"{type(fn).__name__} {fn!r:.80}; pass the function itself, not its result"
        )


def check_task_id(task_id: Any) -> None:
    """Refuse a task id that is not a str."""
    if not isinstance(task_id, str):
        raise ConfigurationError(
            f"a task id is a str (as enqueue returns it), got {type(task_id).__name__} "
            f"{task_id!r:.80}"
        )


def check_task_ids(task_ids: Sequence[Any]) -> None:
    """Refuse task ids that are not all str."""
    for task_id in task_ids:
        check_task_id(task_id)


def task_status(record: TaskRecord) -> TaskStatus:
    """The record's status; a value sitq never writes raises CorruptRow."""
    return stored_status(record.id, record.status)


#: Stored status -> TaskStatus: a dict lookup, several times cheaper than the
#: enum's call (collecting 50,000 results reads 100,000 statuses).
_STATUSES = {status.value: status for status in TaskStatus}
_FINISHED = frozenset(status.value for status in TaskStatus if status.finished)


def stored_status(task_id: str, status: str) -> TaskStatus:
    """``status`` as a TaskStatus; a value sitq never writes raises CorruptRow."""
    found = _STATUSES.get(status)
    if found is None:
        known = ", ".join(s.value for s in TaskStatus)
        raise CorruptRow(
            f"task {task_id} has status {status!r}, which sitq never writes (was the row "
            f"edited by hand?): set it to one of {known}, or delete the task"
        )
    return found


def is_finished(task_id: str, status: str) -> bool:
    """Whether a stored status is a final one."""
    return status in _FINISHED or stored_status(task_id, status).finished


def record_to_result(
    record: TaskRecord, serializer: Serializer, status: TaskStatus | None = None
) -> Result:
    """A Result from a finished task's stored record (``status``: its
    ``task_status``, when the caller has read it already)."""
    value = None
    if record.result is not None:
        value = loads_checked(
            serializer,
            record.result,
            f"the result of task {record.id}",
            result_binding(record.id, record.func_name),
        )
    return Result(
        task_id=record.id,
        status=task_status(record) if status is None else status,
        value=value,
        error=record.error,
        traceback=record.traceback,
        attempts=record.attempts,
        enqueued_at=to_datetime(record.enqueued_at),
        started_at=to_datetime(record.started_at),
        finished_at=to_datetime(record.finished_at),
        worker_id=record.worker_id,
        func_name=record.func_name,
    )


def check_listing(queue: Any, status: Any, batch_id: Any, cursor: Any, limit: Any) -> None:
    """Refuse listing filters that cannot match anything, with what to pass instead."""
    for name, value in (("queue", queue), ("batch_id", batch_id), ("cursor", cursor)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(f"{name} must be a non-empty string or None, got {value!r}")
    if status is not None:
        try:
            TaskStatus(status)
        except ValueError:
            known = ", ".join(s.value for s in TaskStatus)
            raise ConfigurationError(
                f"unknown status {status!r}; use one of {known}, or None for every status"
            ) from None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ConfigurationError(f"limit must be an int from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
