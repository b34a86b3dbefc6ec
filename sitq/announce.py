"""What the producer API tells observers: the ``task_enqueued``, ``task_cancelled``
and ``task_requeued`` signals and their OpenTelemetry counters. Every surface
(``TaskQueue``, its sync face, ``sitq`` commands, the dashboard) goes through
these, so a cancel or a retry is announced the same way wherever it comes from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sitq import signals, telemetry
from sitq.backends.base import Backend, NewTask
from sitq.signals import TaskEvent


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


_CHANGES = {
    "cancelled": (signals.task_cancelled, telemetry.cancelled),
    "requeued": (signals.task_requeued, telemetry.requeued),
}


async def announce(
    backend: Backend, change: Literal["cancelled", "requeued"], task_ids: Sequence[str]
) -> None:
    """Count and signal the tasks of ``task_ids`` that this call cancelled before
    they ran (a running one is reported by its worker) or queued again."""
    if not task_ids or not observed():
        return
    signal, count = _CHANGES[change]
    for record in (await backend.get_tasks(task_ids, with_result=False)).values():
        count(record.queue, record.func_name)
        signal.send_nowait(TaskEvent(record.id, record.func_name, record.queue, record.attempts))
