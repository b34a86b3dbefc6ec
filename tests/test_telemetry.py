"""OpenTelemetry: spans linked from enqueue to execution (across a real worker
process), retries in the same trace, exceptions recorded, and the metrics."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jobs
import pytest
from click.testing import CliRunner
from opentelemetry import baggage, context, metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.testclient import TestClient
from support import await_until, subprocess_env, wait_until

from sitq import TaskQueue, TaskStatus, Worker, chord, cli, signals, telemetry
from sitq.dashboard import DashboardConfig, create_app
from sitq.signals import TaskEvent
from sitq.testing import TemporaryQueue

LOCAL = "http://127.0.0.1:8765"


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()

    def finished(self, kind: SpanKind | None = None) -> list:
        return [s for s in self.spans.get_finished_spans() if kind is None or s.kind == kind]

    def metric_points(self) -> dict[str, list]:
        data = self.reader.get_metrics_data()
        points: dict[str, list] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points

    def counter(self, name: str) -> int:
        return sum(p.value for p in self.metric_points().get(name, []))


@pytest.fixture(scope="module")
def installed() -> Iterator[Telemetry]:
    """SDK providers for this module only (the rest of the suite runs unobserved)."""
    observed = Telemetry()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(observed.spans))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[observed.reader]))
    assert telemetry.tracing_on() and telemetry.metrics_on()
    yield observed
    # The API allows one provider per process; tests put the unset state back.
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    metrics._internal._METER_PROVIDER = None
    metrics._internal._METER_PROVIDER_SET_ONCE._done = False
    assert not telemetry.tracing_on() and not telemetry.metrics_on()


@pytest.fixture
def observed(installed: Telemetry) -> Telemetry:
    installed.spans.clear()
    return installed


def _attributes(span: object) -> dict:
    return dict(span.attributes or {})  # type: ignore[attr-defined]


async def test_trace_context_reaches_a_worker_process(
    observed: Telemetry, queue: TaskQueue, spawn_worker, tmp_path: Path
) -> None:
    spans_file = tmp_path / "worker-spans.jsonl"
    spawn_worker(
        "--import", "telemetry_setup", env={"SITQ_TEST_SPANS": str(spans_file)}
    ).wait_started()
    with trace.get_tracer("app").start_as_current_span("request") as request:
        task_id = await queue.enqueue(jobs.add, 2, 3)
    assert (await queue.get_result(task_id, timeout=30)).value == 5

    producer = observed.finished(SpanKind.PRODUCER)
    assert len(producer) == 1
    send = producer[0]
    assert send.name == "send default"
    assert send.parent.span_id == request.get_span_context().span_id
    assert _attributes(send) == {
        "messaging.system": "sitq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "enqueue",
        "messaging.destination.name": "default",
        "messaging.message.id": task_id,
        "sitq.task.name": "jobs.add",
    }

    def consumer_spans() -> list[dict]:
        if not spans_file.exists():
            return []
        lines = spans_file.read_text().splitlines()
        return [s for s in map(json.loads, lines) if s["kind"] == "CONSUMER"]

    wait_until(consumer_spans, 15, "the worker's CONSUMER span")
    (process,) = consumer_spans()
    assert process["name"] == "process default"
    assert process["trace_id"] == format(request.get_span_context().trace_id, "032x")
    assert process["parent_id"] == format(send.get_span_context().span_id, "016x")
    assert process["attributes"]["messaging.message.id"] == task_id
    assert process["attributes"]["messaging.operation.type"] == "process"
    assert process["attributes"]["sitq.task.attempt"] == 1
    assert process["attributes"]["sitq.task.outcome"] == "succeeded"


async def test_retries_share_the_trace_and_record_the_exception(
    observed: Telemetry, queue: TaskQueue, db_path: Path, tmp_path: Path
) -> None:
    worker = Worker(db_path, concurrency=2)
    await worker.start()
    try:
        retried = queue.with_options(max_retries=1, retry_backoff=0.01)
        task_id = await retried.enqueue(jobs.fail_first_attempt, str(tmp_path / "marker"))
        failing = await queue.enqueue(jobs.fail, "always")
        nested = await queue.enqueue(jobs.traced_child_span)
        assert (await queue.get_result(task_id, timeout=30)).value == "second attempt"
        assert (await queue.get_result(failing, timeout=30)).status is TaskStatus.FAILED
        assert (await queue.get_result(nested, timeout=30)).value == "traced"
    finally:
        await worker.stop()

    send = {_attributes(s)["messaging.message.id"]: s for s in observed.finished(SpanKind.PRODUCER)}
    runs = observed.finished(SpanKind.CONSUMER)
    attempts = [s for s in runs if _attributes(s)["messaging.message.id"] == task_id]
    attempts.sort(key=lambda s: _attributes(s)["sitq.task.attempt"])
    assert [_attributes(s)["sitq.task.outcome"] for s in attempts] == ["retried", "succeeded"]
    for span in attempts:
        assert span.context.trace_id == send[task_id].context.trace_id
        assert span.parent.span_id == send[task_id].context.span_id
    first = attempts[0]
    assert first.status.status_code is StatusCode.ERROR
    (event,) = first.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "first attempt fails"
    assert "fail_first_attempt" in event.attributes["exception.stacktrace"]

    (failed,) = [s for s in runs if _attributes(s)["messaging.message.id"] == failing]
    assert _attributes(failed)["sitq.task.outcome"] == "failed"
    assert failed.status.status_code is StatusCode.ERROR

    (inner,) = [s for s in observed.finished() if s.name == "inside the task"]
    (run,) = [s for s in runs if _attributes(s)["messaging.message.id"] == nested]
    assert inner.parent.span_id == run.context.span_id


async def test_a_submitted_chord_is_one_span_and_every_step_joins_its_trace(
    observed: Telemetry, queue: TaskQueue, db_path: Path
) -> None:
    before = observed.counter("sitq.tasks.enqueued")
    members = [queue.signature(jobs.add, i, i) for i in range(3)]
    with trace.get_tracer("app").start_as_current_span("request") as request:
        callback = await queue.submit(chord(members, queue.signature(jobs.total)))
    worker = Worker(db_path, concurrency=2)
    await worker.start()
    try:
        assert (await queue.get_result(callback, timeout=30)).value == 6
    finally:
        await worker.stop()

    (send,) = observed.finished(SpanKind.PRODUCER)
    assert send.name == "send default" and send.parent.span_id == request.get_span_context().span_id
    assert _attributes(send)["sitq.task.name"] == "chord"
    assert _attributes(send)["messaging.batch.message_count"] == 4
    runs = observed.finished(SpanKind.CONSUMER)
    assert len(runs) == 4
    for run in runs:  # the members and the callback, each a child of the submit
        assert run.parent.span_id == send.context.span_id
        assert run.context.trace_id == request.get_span_context().trace_id
    assert observed.counter("sitq.tasks.enqueued") - before == 4


async def test_oversized_trace_context_never_fails_an_enqueue(
    observed: Telemetry, queue: TaskQueue, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Two legal baggage entries (each under the propagator's 4 KB per entry),
    # over sitq's 4 KB for all headers together.
    ctx = baggage.set_baggage("first", "x" * 3000)
    token = context.attach(baggage.set_baggage("second", "y" * 3000, context=ctx))
    try:
        task_id = await queue.enqueue(jobs.add, 1, 1)
    finally:
        context.detach(token)
    assert "sent without trace context" in caplog.text
    worker = Worker(db_path)
    await worker.start()
    try:
        assert (await queue.get_result(task_id, timeout=30)).value == 2
    finally:
        await worker.stop()


async def test_metrics_count_every_outcome(
    observed: Telemetry, queue: TaskQueue, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sitq.worker.claiming.DEPTH_INTERVAL", 0.1)
    before = {
        name: observed.counter(f"sitq.tasks.{name}")
        for name in ("enqueued", "started", "succeeded", "failed", "cancelled")
    }
    await queue.enqueue_many(jobs.add, [(1, 1), (2, 2), (3, 3)])
    failing = await queue.enqueue(jobs.fail, "no")
    cancelled = await queue.with_options(delay=3600).enqueue(jobs.noop)
    assert await queue.cancel(cancelled)
    worker = Worker(db_path, concurrency=2, lease_seconds=0.3)  # heartbeat every 0.1 s
    await worker.start()
    try:
        assert (await queue.get_result(failing, timeout=30)).status is TaskStatus.FAILED

        def delta(name: str) -> int:
            return observed.counter(f"sitq.tasks.{name}") - before[name]

        async def all_succeeded() -> bool:
            return delta("succeeded") == 3

        await await_until(all_succeeded, 15, "3 successes counted")
        assert delta("enqueued") == 5
        assert delta("started") == 4
        assert delta("failed") == 1
        assert delta("cancelled") == 1

        async def depth_reported() -> bool:
            points = observed.metric_points().get("sitq.queue.depth", [])
            depth = {p.attributes["sitq.task.status"]: p.value for p in points}
            return depth.get("succeeded", 0) >= 3

        await await_until(depth_reported, 15, "the depth gauge")
        points = observed.metric_points()
        run_time = points["sitq.task.run_time"]
        assert sum(p.count for p in run_time) >= 4
        assert {p.attributes["sitq.task.outcome"] for p in run_time} >= {"succeeded", "failed"}
        assert sum(p.count for p in points["sitq.task.queue_wait"]) >= 4
    finally:
        await worker.stop()


def test_nothing_breaks_without_the_sdk(tmp_path: Path) -> None:
    """sitq needs only the API: with the SDK unimportable, a full round trip works."""
    script = """
import asyncio, sys
sys.modules["opentelemetry.sdk"] = None  # as if opentelemetry-sdk were not installed
from sitq import TaskQueue, Worker
import jobs

async def main():
    async with TaskQueue("tasks.db") as queue:
        worker = Worker("tasks.db")
        await worker.start()
        result = await queue.get_result(await queue.enqueue(jobs.add, 20, 22), timeout=30)
        await worker.stop()
        print(result.value)

asyncio.run(main())
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"


# -- every surface cancels and retries through TaskQueue: same signals, same counters --


class Heard:
    """Records ``task_cancelled`` and ``task_requeued`` (sync receivers: a surface
    may send them from another thread, as the dashboard's test client does)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._receivers = [
            (signal, signal.connect(self._receiver(signal.name)))
            for signal in (signals.task_cancelled, signals.task_requeued)
        ]

    def _receiver(self, name: str) -> Callable[[TaskEvent], None]:
        def receive(event: TaskEvent) -> None:
            self.events.append((name, event.task_id))

        return receive

    def disconnect(self) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)


@pytest.fixture
def heard() -> Iterator[Heard]:
    heard = Heard()
    yield heard
    heard.disconnect()


def _delayed_task(db_path: Path) -> str:
    async def enqueue() -> str:
        async with TaskQueue(db_path) as queue:
            return await queue.with_options(delay=3600).enqueue(jobs.noop)

    return asyncio.run(enqueue())


def _failed_tasks(db_path: Path, n: int, queue: str = "default") -> list[str]:
    async def fail() -> list[str]:
        async with TemporaryQueue(db_path) as tasks:
            ids = await tasks.with_options(queue=queue).enqueue_many(jobs.fail, ["no"] * n)
            assert (await tasks.run_all(queues=(queue,))).failed == n
            return ids

    return asyncio.run(fail())


def _sitq(*args: str) -> str:
    result = CliRunner().invoke(cli.main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def test_sitq_cancel_sends_the_signal_and_counts(
    observed: Telemetry, heard: Heard, db_path: Path
) -> None:
    task_id = _delayed_task(db_path)
    before = observed.counter("sitq.tasks.cancelled")
    assert "cancelled" in _sitq("cancel", "--db", str(db_path), task_id)
    assert heard.events == [("task_cancelled", task_id)]
    assert observed.counter("sitq.tasks.cancelled") - before == 1


def test_sitq_retry_sends_the_signal_and_counts(
    observed: Telemetry, heard: Heard, db_path: Path
) -> None:
    one, *others = _failed_tasks(db_path, 3, queue="mail")
    before = observed.counter("sitq.tasks.requeued")
    assert "queued 1 task(s) again" in _sitq("retry", "--db", str(db_path), one)
    assert "queued 2 task(s) again" in _sitq(
        "retry", "--db", str(db_path), "--failed", "--queue", "mail"
    )
    assert sorted(heard.events) == sorted(("task_requeued", t) for t in [one, *others])
    assert observed.counter("sitq.tasks.requeued") - before == 3


def test_dashboard_cancel_sends_the_signal_and_counts(
    observed: Telemetry, heard: Heard, db_path: Path
) -> None:
    task_id = _delayed_task(db_path)
    before = observed.counter("sitq.tasks.cancelled")
    with TestClient(create_app(DashboardConfig(db=str(db_path))), base_url=LOCAL) as client:
        page = client.get(f"/tasks/{task_id}").text
        done = client.post(f"/tasks/{task_id}/cancel", data={"csrf": _csrf(page)})
    assert "Cancelled." in done.text
    assert heard.events == [("task_cancelled", task_id)]
    assert observed.counter("sitq.tasks.cancelled") - before == 1


def test_dashboard_retry_sends_the_signal_and_counts(
    observed: Telemetry, heard: Heard, db_path: Path
) -> None:
    one, *others = _failed_tasks(db_path, 3, queue="mail")
    before = observed.counter("sitq.tasks.requeued")
    with TestClient(create_app(DashboardConfig(db=str(db_path))), base_url=LOCAL) as client:
        page = client.get(f"/tasks/{one}").text
        done = client.post(f"/tasks/{one}/retry", data={"csrf": _csrf(page)})
        assert "Queued again." in done.text
        page = client.get("/").text
        done = client.post("/queues/mail/retry-failed", data={"csrf": _csrf(page)})
        assert "Failed tasks of the queue queued again." in done.text
    assert sorted(heard.events) == sorted(("task_requeued", t) for t in [one, *others])
    assert observed.counter("sitq.tasks.requeued") - before == 3


async def test_queue_retry_paths_send_the_signal_and_count(
    observed: Telemetry, heard: Heard, queue: TaskQueue
) -> None:
    ids = await queue.with_options(queue="q").enqueue_many(jobs.noop, [(), (), ()])
    assert await queue.cancel_many(ids) == ids
    before = observed.counter("sitq.tasks.requeued")
    assert await queue.retry(ids[0]) is True
    assert await queue.retry_many(ids[1:]) == 2
    assert await queue.retry_many(ids) == 0  # queued already: nothing to announce
    assert [name for name, _ in heard.events] == ["task_cancelled"] * 3 + ["task_requeued"] * 3
    assert observed.counter("sitq.tasks.requeued") - before == 3
