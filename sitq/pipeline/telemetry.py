"""OpenTelemetry for pipelines: a span per batch-pipeline run and per instance,
counters of completed and failed instances, and a histogram of instance time.

Everything goes through the OpenTelemetry API (the tracer and meter are
``"sitq.pipeline"``); without an SDK configured it costs next to nothing.
Spans and metrics are made in the process that runs ``execute()``: an
instance's span lasts from its submission to its outcome.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, Status, StatusCode

__all__ = ["InstanceTrace", "Telemetry", "current"]

NAME_ATTR = "sitq.pipeline.name"
INDEX_ATTR = "sitq.pipeline.batch_index"


class InstanceTrace:
    """One instance's span and clock; call exactly one of ``completed``, ``failed``
    or ``abandoned``."""

    def __init__(self, telemetry: Telemetry, span: Span, name: str) -> None:
        self._telemetry = telemetry
        self.span = span
        self._name = name
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the instance was submitted."""
        return time.monotonic() - self._start

    def _end(self, outcome: str, status: Status) -> None:
        attrs = {NAME_ATTR: self._name}
        self._telemetry.counters[outcome].add(1, attrs)
        self._telemetry.duration.record(self.elapsed, {**attrs, "outcome": outcome})
        self.span.set_status(status)
        self.span.end()

    def completed(self) -> None:
        """Record a success and end the span."""
        self._end("completed", Status(StatusCode.OK))

    def failed(self, exc: BaseException, error: str | None = None) -> None:
        """Record a failure (``error`` is its text, if not ``str(exc)``) and end the span."""
        self.span.record_exception(exc)
        self._end("failed", Status(StatusCode.ERROR, error or f"{type(exc).__name__}: {exc}"))

    def abandoned(self) -> None:
        """End the span of an instance whose outcome the run never saw (it stopped)."""
        self.span.set_status(Status(StatusCode.ERROR, "the run stopped before its outcome"))
        self.span.end()


class Telemetry:
    """The tracer and instruments the pipeline layer reports to.

    Built from the global providers by default; pass providers to report
    elsewhere (the tests give an SDK provider with in-memory exporters).
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("sitq.pipeline")
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("sitq.pipeline")
        self.counters = {
            outcome: meter.create_counter(
                f"sitq.pipeline.instances.{outcome}", unit="{instance}", description=description
            )
            for outcome, description in (
                ("completed", "Pipeline instances that returned a result"),
                ("failed", "Pipeline instances that raised or could not run"),
            )
        }
        self.duration = meter.create_histogram(
            "sitq.pipeline.instance.duration",
            unit="s",
            description="Time from an instance's submission to its outcome",
        )

    def run_span(self, name: str, **attributes: Any) -> AbstractContextManager[Span]:
        """The span of one batch-pipeline run (current while the run lasts)."""
        return self.tracer.start_as_current_span(
            "sitq.pipeline.batch", attributes={NAME_ATTR: name, **attributes}
        )

    def start_instance(self, name: str, index: int | None, parent: Span | None) -> InstanceTrace:
        """Start an instance's span, a child of ``parent`` (the current span if None)."""
        context = trace.set_span_in_context(parent) if parent is not None else None
        attributes: dict[str, Any] = {NAME_ATTR: name}
        if index is not None:
            attributes[INDEX_ATTR] = index
        span = self.tracer.start_span(
            "sitq.pipeline.instance", context=context, attributes=attributes
        )
        return InstanceTrace(self, span, name)

    @contextlib.contextmanager
    def observe_instance(self, name: str, index: int | None) -> Iterator[InstanceTrace]:
        """Trace an instance run inline: completed on exit, failed on an exception."""
        instance = self.start_instance(name, index, None)
        try:
            yield instance
        except Exception as exc:
            instance.failed(exc)
            raise
        instance.completed()


#: What the pipeline layer reports to; replace it to report elsewhere.
current = Telemetry()
