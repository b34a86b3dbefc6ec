"""What the producer API tells observers: the ``task_enqueued``, ``task_cancelled``
and ``task_requeued`` signals and their OpenTelemetry counters. Every surface
(``TaskQueue``, its sync face, ``sitq`` commands, the dashboard) goes through
these, so a cancel or a retry is announced the same way wherever it comes from."""

from __future__ import annotations

from collections.abc import Sequence

from sitq import signals, telemetry
from sitq.backends.base import Backend, NewTask
from sitq.signals import TaskEvent
from sitq.task import TaskStatus


def observed() -> bool:
    """True when anyone listens: a tracer or meter provider, or a signal receiver."""
    return (
        signals.task_enqueued.has_receivers
        or signals.task_cancelled.has_receivers
        or signals.task_requeued.has_receivers
        or telemetry.tracing_on()
        or telemetry.metrics_on()
    )


def announce_enqueued(tasks: Sequence[NewTask]) -> None:
    """Signal ``task_enqueued`` for each of ``tasks`` (committed)."""
    if signals.task_enqueued.has_receivers:
        for task in tasks:
            signals.task_enqueued.send_nowait(TaskEvent(task.id, task.func_name, task.queue))


#: The statuses a retry queues again.
RETRIABLE = frozenset({TaskStatus.FAILED.value, TaskStatus.CANCELLED.value})


async def announce_cancelled(backend: Backend, task_ids: Sequence[str]) -> None:
    """Count and signal tasks cancelled before they ran (a running one is
    reported by its worker)."""
    for record in (await backend.get_tasks(task_ids, with_result=False)).values():
        telemetry.cancelled(record.queue, record.func_name)
        signals.task_cancelled.send_nowait(
            TaskEvent(record.id, record.func_name, record.queue, record.attempts)
        )


async def announce_requeued(backend: Backend, task_ids: Sequence[str]) -> None:
    """Count and signal the tasks of ``task_ids`` that a retry queued again."""
    if not task_ids:
        return
    for record in (await backend.get_tasks(task_ids, with_result=False)).values():
        if record.status != TaskStatus.QUEUED.value:
            continue  # not retried (it ran again meanwhile, or was not retriable)
        telemetry.requeued(record.queue, record.func_name)
        signals.task_requeued.send_nowait(
            TaskEvent(record.id, record.func_name, record.queue, record.attempts)
        )
