"""OpenTelemetry spans and metrics, and the trace context that links them.

sitq depends only on ``opentelemetry-api``. Until the application installs an
SDK provider (``trace.set_tracer_provider`` / ``metrics.set_meter_provider``)
every hook here returns after one check, so an unobserved queue pays nothing
worth measuring (see benchmarks/RESULTS.md).

Spans follow the OpenTelemetry messaging conventions:

- ``send {queue}`` (PRODUCER) around each enqueue; its W3C trace context is
  stored with the task (see :mod:`sitq.headers`).
- ``process {queue}`` (CONSUMER) around each attempt, a child of the enqueue
  span, so a trace reads request -> enqueue -> attempt 1 -> attempt 2 ...
  Async tasks and thread tasks run with it as the current span, so spans they
  open nest under it.

Metrics (meter ``sitq``): counters ``sitq.tasks.enqueued|started|succeeded|
failed|retried|cancelled``, histograms ``sitq.task.run_time`` and
``sitq.task.queue_wait`` (seconds), and the observable gauge
``sitq.queue.depth`` per queue and status, refreshed by each worker's heartbeat.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

SYSTEM = "sitq"

_tracer = trace.get_tracer("sitq")
_meter = metrics.get_meter("sitq")

_counters = {
    name: _meter.create_counter(f"sitq.tasks.{name}", unit="{task}", description=description)
    for name, description in (
        ("enqueued", "Tasks committed to a queue"),
        ("started", "Attempts begun by workers"),
        ("succeeded", "Tasks that succeeded"),
        ("failed", "Tasks that ended FAILED"),
        ("retried", "Failed attempts scheduled to run again"),
        ("cancelled", "Tasks cancelled"),
        ("requeued", "Failed or cancelled tasks queued again by a retry"),
    )
}
_run_time = _meter.create_histogram(
    "sitq.task.run_time", unit="s", description="How long an attempt ran"
)
_queue_wait = _meter.create_histogram(
    "sitq.task.queue_wait", unit="s", description="From available to started"
)
#: (queue, status) -> count, as last read by a worker in this process.
_depth: dict[tuple[str, str], int] = {}


def _observe_depth(_options: Any) -> Iterable[metrics.Observation]:
    for (queue, status), count in list(_depth.items()):
        yield metrics.Observation(
            count, {"messaging.destination.name": queue, "sitq.task.status": status}
        )


_meter.create_observable_gauge(
    "sitq.queue.depth",
    callbacks=[_observe_depth],
    unit="{task}",
    description="Tasks per queue and status",
)

_OFF_TRACER_PROVIDERS = (ProxyTracerProvider, NoOpTracerProvider)
_OFF_METER_PROVIDERS = ("_ProxyMeterProvider", "NoOpMeterProvider")
# The API's getters consult the environment on every call (about 1 us each),
# which is most of what an unobserved task would pay for these hooks. A
# provider can be installed only once per process, so reading the API's own
# globals is enough; the getters remain the fallback should those names change.
_metrics_api = getattr(metrics, "_internal", None)
_FAST_TRACE = hasattr(trace, "_TRACER_PROVIDER")
_FAST_METRICS = _metrics_api is not None and hasattr(_metrics_api, "_METER_PROVIDER")


def tracing_on() -> bool:
    """True once an application installed a real tracer provider."""
    if _FAST_TRACE:
        provider = trace._TRACER_PROVIDER
        return provider is not None and not isinstance(provider, _OFF_TRACER_PROVIDERS)
    return not isinstance(trace.get_tracer_provider(), _OFF_TRACER_PROVIDERS)


def metrics_on() -> bool:
    """True once an application installed a real meter provider."""
    if _FAST_METRICS:
        provider = _metrics_api._METER_PROVIDER  # type: ignore[union-attr]
        return provider is not None and type(provider).__name__ not in _OFF_METER_PROVIDERS
    return type(metrics.get_meter_provider()).__name__ not in _OFF_METER_PROVIDERS


def _task_attributes(queue: str, task_name: str) -> dict[str, AttributeValue]:
    return {"messaging.destination.name": queue, "sitq.task.name": task_name}


def _count(name: str, queue: str, task_name: str, amount: int = 1) -> None:
    if metrics_on():
        _counters[name].add(amount, _task_attributes(queue, task_name))


def _base_attributes(operation: str, queue: str, task_name: str) -> dict[str, AttributeValue]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": "enqueue" if operation == "send" else "process",
        **_task_attributes(queue, task_name),
    }


class EnqueueScope:
    """What :func:`enqueue_scope` yields: the headers to store with the tasks,
    and ``committed(ids)`` to call once they are stored."""

    def __init__(self, queue: str, task_name: str, span: trace.Span | None) -> None:
        self.queue = queue
        self.task_name = task_name
        self.span = span
        self.headers: dict[str, str] = {}
        if span is not None:
            propagate.inject(self.headers, context=trace.set_span_in_context(span))

    def committed(self, task_ids: list[str]) -> None:
        """Record the ids on the span and count them."""
        if self.span is not None:
            if len(task_ids) == 1:
                self.span.set_attribute("messaging.message.id", task_ids[0])
            else:
                self.span.set_attribute("messaging.batch.message_count", len(task_ids))
        _count("enqueued", self.queue, self.task_name, len(task_ids))

    def committed_tasks(self, tasks: Sequence[tuple[str, str, str]]) -> None:
        """Record a composition's tasks, (id, queue, task name) each, on the span
        (their number) and count each under its own queue and name."""
        if self.span is not None:
            self.span.set_attribute("messaging.batch.message_count", len(tasks))
        for _id, queue, task_name in tasks:
            _count("enqueued", queue, task_name)


@contextlib.contextmanager
def enqueue_scope(queue: str, task_name: str) -> Iterator[EnqueueScope]:
    """A PRODUCER span around one enqueue (or enqueue_many) when tracing is on."""
    if not tracing_on():
        yield EnqueueScope(queue, task_name, None)
        return
    with _tracer.start_as_current_span(
        f"send {queue}",
        kind=SpanKind.PRODUCER,
        attributes=_base_attributes("send", queue, task_name),
    ) as span:
        yield EnqueueScope(queue, task_name, span)


def start_run(
    task_id: str,
    queue: str,
    task_name: str,
    attempt: int,
    headers: dict[str, str],
    queue_wait: float,
) -> trace.Span | None:
    """Count a started attempt; open its CONSUMER span if tracing is on."""
    if metrics_on():
        attributes = _task_attributes(queue, task_name)
        _counters["started"].add(1, attributes)
        _queue_wait.record(max(0.0, queue_wait), attributes)
    if not tracing_on():
        return None
    attributes = _base_attributes("process", queue, task_name)
    attributes["messaging.message.id"] = task_id
    attributes["sitq.task.attempt"] = attempt
    return _tracer.start_span(
        f"process {queue}",
        context=propagate.extract(headers) if headers else None,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )


def end_run(
    span: trace.Span | None,
    queue: str,
    task_name: str,
    outcome: str,
    run_time: float,
    error: str | None = None,
    traceback: str | None = None,
) -> None:
    """Close an attempt: ``outcome`` is succeeded, failed, retried, cancelled or
    released (a shutdown handed it back)."""
    if metrics_on() and outcome != "released":
        attributes = _task_attributes(queue, task_name)
        _counters[outcome].add(1, attributes)
        _run_time.record(run_time, {**attributes, "sitq.task.outcome": outcome})
    if span is None:
        return
    span.set_attribute("sitq.task.outcome", outcome)
    if error is not None:
        kind, _, message = error.partition(": ")
        event = {"exception.type": kind, "exception.message": message or kind}
        if traceback:
            event["exception.stacktrace"] = traceback
        span.add_event("exception", event)
        if outcome in ("failed", "retried"):
            span.set_status(StatusCode.ERROR, error[:200])
    span.end()


def run_in_span(span: trace.Span | None, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped to run with ``span`` as the current span (in any thread)."""
    if span is None:
        return fn

    def traced(*args: Any, **kwargs: Any) -> Any:
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return fn(*args, **kwargs)
        finally:
            otel_context.detach(token)

    return traced


def cancelled(queue: str, task_name: str) -> None:
    """Count a task cancelled before it ran."""
    _count("cancelled", queue, task_name)


def requeued(queue: str, task_name: str) -> None:
    """Count a failed or cancelled task queued again by a retry."""
    _count("requeued", queue, task_name)


def set_queue_depth(counts: dict[tuple[str, str], int]) -> None:
    """Replace what the ``sitq.queue.depth`` gauge reports."""
    _depth.clear()
    _depth.update(counts)
