"""sitq.pipeline: templates, fields, step-wise batching, executors, signals, telemetry."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_jobs import (
    AsyncWordsBatch,
    CrashBatch,
    HangBatch,
    PidBatch,
    SlowCrashBatch,
    Words,
    WordsBatch,
)
from readme_examples import run_readme_example
from support import TESTS_DIR, WorkerProcess, subprocess_env

from sitq import SyncTaskQueue, TaskQueue, Worker
from sitq.pipeline import (
    BatchPipeline,
    FieldError,
    FieldTypeError,
    InstanceFailed,
    Pipeline,
    PipelineDefinitionError,
    PipelineTimeout,
    executors,
    telemetry,
)
from sitq.pipeline.fields import FileInputDataField, InputDataField
from sitq.pipeline.signal import SoftSignal

ROOT = TESTS_DIR.parent

# -- the seed tutorial's full example, with `nexus` replaced by `sitq.pipeline` --


class Simple(Pipeline):
    name = InputDataField(data_type=list, batch_size=5)
    book = FileInputDataField(required=True, chunk_size=1024)


class SimpleBatch(BatchPipeline):
    pipeline_template = Simple
    listen_to_signals = [SoftSignal("task_completed"), SoftSignal("task_failed")]

    def name_batch(self, data, batch_size):  # type: ignore[no-untyped-def]
        for i in range(0, len(data), batch_size or 1):
            yield data[i : i + batch_size]

    def book_batch(self, file_stream, chunk_size):  # type: ignore[no-untyped-def]
        while True:
            chunk = file_stream.read(int(chunk_size or 1024))
            if not chunk:
                break
            yield chunk


@pytest.fixture
def record() -> Iterator[Callable[[type[BatchPipeline]], dict[str, list[Any]]]]:
    """Connect a recorder to every signal a batch class sends; disconnected after."""
    connected: list[tuple[type[BatchPipeline], str, Any]] = []

    def attach(cls: type[BatchPipeline]) -> dict[str, list[Any]]:
        events: dict[str, list[Any]] = {}
        for signal in cls.listen_to_signals:
            events[signal.name] = []
            receiver = events[signal.name].append
            cls.connect(signal.name, receiver)
            connected.append((cls, signal.name, receiver))
        return events

    yield attach
    for cls, name, receiver in connected:
        cls.disconnect(name, receiver)


def test_seed_full_example(tmp_path: Path, record: Callable[..., dict[str, list[Any]]]) -> None:
    names = [f"item{i}" for i in range(23)]
    book = tmp_path / "book.csv"
    text = "".join(f"{i},line number {i}\n" for i in range(400))
    book.write_text(text)
    events = record(SimpleBatch)

    simple_batch = SimpleBatch(name=names, book=str(book))
    outcomes = simple_batch.execute()

    chunks = [text[i : i + 1024] for i in range(0, len(text), 1024)]
    batches = [names[i : i + 5] for i in range(0, len(names), 5)]
    assert len(chunks) > len(batches)  # the name batches run out first: None after
    assert outcomes == [
        {"name": batches[i] if i < len(batches) else None, "book": chunk}
        for i, chunk in enumerate(chunks)
    ]
    assert sorted(e.index for e in events["task_completed"]) == list(range(len(chunks)))
    assert events["task_failed"] == []
    first = min(events["task_completed"], key=lambda e: e.index)
    assert first.batch is simple_batch and first.instance.book == chunks[0]
    assert first.result == outcomes[0] and first.duration > 0


def test_pipeline_batch_example_runs(tmp_path: Path) -> None:
    proc = run_readme_example("examples/pipeline_batch.py", tmp_path)
    out = proc.stdout
    assert "local pool: 12 instances, 12 completed, 0 failed" in out
    assert "sitq workers: 12 instances, 12 completed, 0 failed" in out
    assert "same outcomes on both: True" in out
    assert out.rstrip().splitlines()[-1] == "Pipeline batch example completed!"
    assert list(tmp_path.rglob("*.db")) == []


# -- the step-wise batching rule ----------------------------------------------


def test_step_wise_rule_12_names_by_5_and_3_tags_by_2() -> None:
    names = [f"n{i}" for i in range(12)]
    tags = ["a", "b", "c"]
    expected = [
        {"names": names[0:5], "tags": ["a", "b"], "label": "whole"},
        {"names": names[5:10], "tags": ["c"], "label": "whole"},
        {"names": names[10:12], "tags": None, "label": "whole"},
    ]
    batch = WordsBatch(names=names, tags=tags, label="whole")
    planned = list(batch.instances())
    assert [p.batch_index for p in planned] == [0, 1, 2]
    assert [{f: getattr(p, f) for f in Words.fields} for p in planned] == expected
    # And run for real in the pool: the same instances, in order.
    outcomes = batch.execute(max_workers=2)
    assert outcomes == [{"batch": i, **e} for i, e in enumerate(expected)]


def test_batching_defaults_for_other_inputs() -> None:
    class Many(Pipeline):
        text = InputDataField(data_type=str, batch_size=4)
        table = InputDataField(data_type=dict, batch_size=2)
        stream = InputDataField(batch_size=3)
        whole = InputDataField()

    class ManyBatch(BatchPipeline):
        pipeline_template = Many

    batch = ManyBatch(
        text="abcdefghij", table={"a": 1, "b": 2, "c": 3}, stream=iter(range(5)), whole=[1, 2]
    )
    values = [{f: getattr(p, f) for f in Many.fields} for p in batch.instances()]
    assert values == [
        {"text": "abcd", "table": {"a": 1, "b": 2}, "stream": [0, 1, 2], "whole": [1, 2]},
        {"text": "efgh", "table": {"c": 3}, "stream": [3, 4], "whole": [1, 2]},
        {"text": "ij", "table": None, "stream": None, "whole": [1, 2]},
    ]

    # No batched field: one instance with everything; every batched field empty: none.
    class One(Pipeline):
        x = InputDataField()

    class OneBatch(BatchPipeline):
        pipeline_template = One

    assert OneBatch(x=3).execute(max_workers=1) == [{"x": 3}]
    assert WordsBatch(names=[], tags=[]).execute(max_workers=1) == []


def test_file_field_takes_streams_and_bytes(tmp_path: Path) -> None:
    class Blob(Pipeline):
        data = FileInputDataField(chunk_size=4, mode="rb")
        note = FileInputDataField()  # no chunking: every instance gets the whole text

    class BlobBatch(BatchPipeline):
        pipeline_template = Blob

    note = tmp_path / "note.txt"
    note.write_text("héllo")
    stream = io.BytesIO(b"0123456789")
    outcomes = BlobBatch(data=stream, note=note).execute(max_workers=1)
    assert outcomes == [
        {"data": b"0123", "note": "héllo"},
        {"data": b"4567", "note": "héllo"},
        {"data": b"89", "note": "héllo"},
    ]
    assert not stream.closed  # a stream passed in is left open


# -- failures, signals, where instances run -------------------------------------

NAMES = [f"n{i}" for i in range(5)] + ["boom"] + [f"n{i}" for i in range(6, 12)]
TAGS = ["a", "b", "c"]


def expected_words_outcomes() -> list[Any]:
    return [
        {"batch": 0, "names": NAMES[0:5], "tags": ["a", "b"], "label": "run"},
        ("ValueError: boom in batch 1",),
        {"batch": 2, "names": NAMES[10:12], "tags": None, "label": "run"},
    ]


def comparable(outcomes: list[Any]) -> list[Any]:
    """Values as they are; a failure as (its error text,)."""
    return [(o.error,) if isinstance(o, InstanceFailed) else o for o in outcomes]


def check_words_run(outcomes: list[Any], events: dict[str, list[Any]]) -> None:
    assert comparable(outcomes) == expected_words_outcomes()
    failure = outcomes[1]
    assert isinstance(failure, InstanceFailed) and failure.index == 1
    assert "boom in batch 1" in (failure.traceback or "")
    # Each instance's signal fired once, in this process, with its instance and outcome.
    assert sorted(e.index for e in events["task_completed"]) == [0, 2]
    (failed,) = events["task_failed"]
    assert failed.index == 1 and failed.exception is failure
    assert failed.instance.names == NAMES[5:10]
    for event in events["task_completed"]:
        assert event.result == outcomes[event.index]
    (started,) = events["batch_started"]
    (finished,) = events["batch_finished"]
    assert (finished.instances, finished.completed, finished.failed) == (3, 2, 1)
    assert started.batch is finished.batch


def test_failing_instance_in_local_pool(record: Callable[..., dict[str, list[Any]]]) -> None:
    events = record(WordsBatch)
    outcomes = WordsBatch(names=NAMES, tags=TAGS).execute(max_workers=2)
    check_words_run(outcomes, events)
    # In the pool the original exception travels back too.
    assert isinstance(outcomes[1].exception, ValueError)
    assert outcomes[1].__cause__ is outcomes[1].exception
    copy = pickle.loads(pickle.dumps(outcomes[1]))
    assert (copy.index, copy.error, copy.traceback) == (1, outcomes[1].error, outcomes[1].traceback)
    assert str(copy) == "pipeline instance 1 failed: ValueError: boom in batch 1"


async def test_in_process_workers(db_url: str, record: Callable[..., dict[str, list[Any]]]) -> None:
    events = record(WordsBatch)
    workers = [Worker(db_url, concurrency=2), Worker(db_url, concurrency=1)]
    async with TaskQueue(db_url) as queue:
        for worker in workers:
            await worker.start()
        try:
            outcomes = await WordsBatch(names=NAMES, tags=TAGS).execute_async(queue)
        finally:
            for worker in workers:
                await worker.stop(timeout=10)
        stats = await queue.stats()
    check_words_run(outcomes, events)
    assert outcomes[1].task_id is not None
    # Each instance was one task.
    assert stats["totals"]["succeeded"] == 2 and stats["totals"]["failed"] == 1


def test_sitq_worker_processes(
    db_path: Path,
    spawn_worker: Callable[..., WorkerProcess],
    record: Callable[..., dict[str, list[Any]]],
) -> None:
    events = record(WordsBatch)
    with SyncTaskQueue(db_path) as queue:
        queue.connect()
        for _ in range(2):
            spawn_worker("--concurrency", "2", "--import", "pipeline_jobs").wait_started()
        outcomes = WordsBatch(names=NAMES, tags=TAGS).execute(queue)
        stats = queue.stats()
    check_words_run(outcomes, events)
    assert stats["totals"]["succeeded"] == 2 and stats["totals"]["failed"] == 1


async def test_async_process_and_execute_async_in_pool() -> None:
    outcomes = await AsyncWordsBatch(names=NAMES, tags=TAGS).execute_async(max_workers=2)
    assert comparable(outcomes) == expected_words_outcomes()


async def test_sync_execute_inside_a_running_loop() -> None:
    # A notebook calls execute() with a loop running: it runs on a helper thread.
    outcomes = WordsBatch(names=NAMES, tags=TAGS).execute(max_workers=1)
    assert comparable(outcomes) == expected_words_outcomes()


async def test_async_process_on_workers(db_path: Path) -> None:
    worker = Worker(db_path, concurrency=2)
    async with TaskQueue(db_path) as queue:
        await worker.start()
        try:
            outcomes = await AsyncWordsBatch(names=NAMES, tags=TAGS).execute_async(queue)
        finally:
            await worker.stop(timeout=10)
    assert comparable(outcomes) == expected_words_outcomes()


def test_queue_given_as_a_url_with_task_options(
    db_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    with SyncTaskQueue(db_path) as queue:
        queue.connect()
    spawn_worker("--queue", "pipelines").wait_started()
    outcomes = WordsBatch(names=NAMES, tags=TAGS).execute(
        str(db_path), task_options={"queue": "pipelines", "max_retries": 1}
    )
    assert comparable(outcomes) == expected_words_outcomes()
    with SyncTaskQueue(db_path) as queue:
        stats = queue.stats()
    assert stats["queues"]["pipelines"]["succeeded"] == 2
    assert stats["queues"]["pipelines"]["failed"] == 1


def test_reaction_methods_and_soft_receivers(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, int]] = []

    class Reacting(WordsBatch):
        listen_to_signals = [SoftSignal("task_failed"), "task_completed"]  # type: ignore[list-item]

        def on_task_failed(self, event: Any) -> None:
            seen.append(("failed", event.index))

        async def on_task_completed(self, event: Any) -> None:
            seen.append(("completed", event.index))

    def broken(event: Any) -> None:
        raise RuntimeError("a receiver bug")

    Reacting.connect("task_failed", broken)
    outcomes = Reacting(names=NAMES, tags=TAGS).execute(max_workers=2)
    assert comparable(outcomes) == expected_words_outcomes()  # the broken receiver changed nothing
    assert sorted(seen) == [("completed", 0), ("completed", 2), ("failed", 1)]
    assert "a receiver bug" in caplog.text
    assert Reacting.disconnect("task_failed", broken)
    with pytest.raises(PipelineDefinitionError, match="add SoftSignal\\('batch_started'\\)"):
        Reacting.connect("batch_started", print)


def test_max_tasks_per_child() -> None:
    pids = PidBatch(items=list(range(6))).execute(max_workers=2, max_tasks_per_child=1)
    assert len(set(pids)) == 6


def test_max_tasks_per_child_without_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python 3.10's pool has no max_tasks_per_child: the pool is replaced instead.
    monkeypatch.setattr(executors, "NATIVE_MAX_TASKS_PER_CHILD", False)
    pids = PidBatch(items=list(range(6))).execute(max_workers=2, max_tasks_per_child=1)
    generations = [set(pids[i : i + 2]) for i in range(0, 6, 2)]
    for i, generation in enumerate(generations):
        for other in generations[i + 1 :]:
            assert not generation & other, pids


def test_a_dying_pool_process_fails_only_what_it_took_down() -> None:
    items = ["a", "die", "c", "d", "e"]
    outcomes = CrashBatch(items=items).execute(max_workers=1)
    assert outcomes[0] == "a" and outcomes[3:] == ["d", "e"]
    assert isinstance(outcomes[1], InstanceFailed)
    assert outcomes[1].error.startswith("BrokenProcessPool")
    assert outcomes[2] == "c" or isinstance(outcomes[2], InstanceFailed)


def test_one_crashing_instance_fails_alone_among_16_on_2_workers() -> None:
    # Instance 3 kills its pool process every time; the instances the broken pool
    # took down with it (running or only waiting) are rerun and succeed.
    items = [f"item{i}" for i in range(16)]
    items[3] = "die"
    outcomes = SlowCrashBatch(items=items).execute(max_workers=2)
    assert len(outcomes) == 16
    failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, InstanceFailed)]
    assert failed == [3], outcomes
    assert outcomes[3].error.startswith("BrokenProcessPool")
    assert "alone" in outcomes[3].error
    assert [o for i, o in enumerate(outcomes) if i != 3] == [
        item for i, item in enumerate(items) if i != 3
    ]


def test_two_crashing_instances_fail_alone_in_a_small_pool() -> None:
    items = [f"item{i}" for i in range(12)]
    items[0] = items[7] = "die"
    outcomes = SlowCrashBatch(items=items).execute(max_workers=2, max_in_flight=6)
    failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, InstanceFailed)]
    assert failed == [0, 7], outcomes
    assert all(outcomes[i] == items[i] for i in range(12) if i not in (0, 7))


def test_timeout_on_a_queue_no_worker_serves(db_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(PipelineTimeout, match="within 0.5 s") as caught:
        CrashBatch(items=["a", "b", "c"]).execute(str(db_path), timeout=0.5)
    assert time.monotonic() - started < 10
    assert (caught.value.outcomes, caught.value.unfinished) == ({}, [0, 1, 2])
    with SyncTaskQueue(db_path) as queue:  # the unfinished tasks were cancelled
        assert queue.stats()["totals"]["cancelled"] == 3


async def test_timeout_of_execute_async_on_a_queue(db_path: Path) -> None:
    async with TaskQueue(db_path) as queue:
        with pytest.raises(PipelineTimeout):
            await CrashBatch(items=["a"]).execute_async(queue, timeout=0.2)
        assert (await queue.stats())["totals"]["cancelled"] == 1
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        CrashBatch(items=["a"]).execute(timeout=0)


def test_timeout_in_the_local_pool_stops_a_hung_instance() -> None:
    started = time.monotonic()
    with pytest.raises(PipelineTimeout) as caught:
        HangBatch(items=["a", "hang", "c"]).execute(max_workers=2, timeout=3)
    assert time.monotonic() - started < 30
    assert caught.value.outcomes == {0: "a", 2: "c"}
    assert caught.value.unfinished == [1]


def test_unpicklable_values_fail_their_instance_only() -> None:
    class Holder(Pipeline):
        items = InputDataField(batch_size=1)

    class HolderBatch(BatchPipeline):
        pipeline_template = Holder

    import threading

    outcomes = HolderBatch(items=[1, threading.Lock(), 3]).execute(max_workers=1)
    assert outcomes[0] == {"items": [1]} and outcomes[2] == {"items": [3]}
    assert isinstance(outcomes[1], InstanceFailed)
    assert "could not be pickled" in outcomes[1].error


# -- streaming a large file -----------------------------------------------------


def test_200_mb_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    line = "abcdefghij" * 10 + "\n"
    block = line * ((1 << 20) // len(line))
    with open(path, "w") as f:
        for _ in range(200 * (1 << 20) // len(block)):
            f.write(block)
    size = path.stat().st_size
    assert size >= 199 * (1 << 20)
    proc = subprocess.run(
        [sys.executable, str(TESTS_DIR / "pipeline_jobs.py"), "rss", str(path)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["total"] == report["whole"] == size
    assert report["chunks"] == -(-size // (1 << 20))
    growth_mb = (report["after_kb"] - report["before_kb"]) / 1024
    assert growth_mb < 50, report
    # The control proves the measurement sees a whole read of the file.
    assert (report["control_kb"] - report["after_kb"]) / 1024 > 150, report


async def test_a_task_enqueued_under_the_old_module_name_still_runs(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sitq.pipeline.executors was sitq.pipeline.runners: tasks enqueued then name
    # sitq.pipeline.runners.run_instance in their payloads.
    instance = Words.for_batch(0, {"names": ["a"], "tags": ["t"], "label": "old"})
    async with TaskQueue(db_path) as queue:
        with monkeypatch.context() as patch:
            patch.setattr(executors.run_instance, "__module__", "sitq.pipeline.runners")
            assert b"sitq.pipeline.runners" in pickle.dumps(executors.run_instance)
            task_id = await queue.enqueue(executors.run_instance, instance)
        worker = Worker(db_path, concurrency=1)
        await worker.start()
        try:
            result = await queue.get_result(task_id, timeout=30)
        finally:
            await worker.stop(timeout=10)
    assert result is not None and result.ok, result
    assert result.value == {"batch": 0, "names": ["a"], "tags": ["t"], "label": "old"}


# -- a plain Pipeline -----------------------------------------------------------


def test_plain_pipeline_runs_one_instance_on_whole_inputs(tmp_path: Path) -> None:
    book = tmp_path / "book.txt"
    book.write_text("x" * 3000)
    assert Simple(name=["a"] * 7, book=book).execute() == {"name": ["a"] * 7, "book": "x" * 3000}
    with pytest.raises(ValueError, match="boom in batch None"):
        Words(names=["boom"], tags=[]).execute()


async def test_plain_pipeline_async() -> None:
    from pipeline_jobs import AsyncWords

    result = await AsyncWords(names=["x"], tags=["t"]).execute_async()
    assert result == {"batch": None, "names": ["x"], "tags": ["t"], "label": "run"}
    with pytest.raises(RuntimeError, match="execute_async"):
        AsyncWords(names=["x"], tags=["t"]).execute()


# -- telemetry ------------------------------------------------------------------


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """A local SDK tracer and meter provider with in-memory exporters (not global)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(telemetry, "current", telemetry.Telemetry(tracer_provider, meter_provider))
    yield spans, reader
    tracer_provider.shutdown()
    meter_provider.shutdown()


def _counter(reader: Any, name: str) -> int:
    data = reader.get_metrics_data()
    return sum(
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    )


def test_spans_and_metrics(otel: tuple[Any, Any]) -> None:
    spans, reader = otel
    WordsBatch(names=NAMES, tags=TAGS).execute(max_workers=2)
    finished = spans.get_finished_spans()
    (run,) = [s for s in finished if s.name == "sitq.pipeline.batch"]
    instances = [s for s in finished if s.name == "sitq.pipeline.instance"]
    assert run.attributes["sitq.pipeline.name"] == "WordsBatch"
    assert (run.attributes["sitq.pipeline.instances"], run.attributes["sitq.pipeline.failed"]) == (
        3,
        1,
    )
    assert sorted(s.attributes["sitq.pipeline.batch_index"] for s in instances) == [0, 1, 2]
    assert all(s.parent.span_id == run.context.span_id for s in instances)
    (failed,) = [s for s in instances if not s.status.is_ok]
    assert failed.attributes["sitq.pipeline.batch_index"] == 1
    assert "boom in batch 1" in (failed.status.description or "")
    assert _counter(reader, "sitq.pipeline.instances.completed") == 2
    assert _counter(reader, "sitq.pipeline.instances.failed") == 1


# -- bad input ------------------------------------------------------------------


def test_field_validation_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(FieldTypeError, match="field 'names' of Words must be a list, got str"):
        WordsBatch(names="n1 n2", tags=[])
    with pytest.raises(FieldError, match="field 'book' of Simple is required") as info:
        SimpleBatch(name=["a"])
    assert info.value.field == "book"
    with pytest.raises(FieldError, match="field 'book' of Simple cannot read .*missing.csv"):
        SimpleBatch(name=["a"], book=tmp_path / "missing.csv")
    with pytest.raises(FieldError, match="cannot read"):
        Simple(name=["a"], book=tmp_path)
    with pytest.raises(FieldError, match="has no field 'nmae'.*its fields: name, book"):
        SimpleBatch(nmae=["a"], book=tmp_path / "x")
    closed = io.StringIO("x")
    closed.close()
    with pytest.raises(FieldError, match="closed stream"):
        Simple(name=[], book=closed)
    with pytest.raises(FieldTypeError, match="must be a file path or an open stream"):
        Simple(name=[], book=42)

    class Loose(Pipeline):
        items = InputDataField(batch_size=2)

    class LooseBatch(BatchPipeline):
        pipeline_template = Loose

    with pytest.raises(FieldTypeError, match="cannot be split into batches"):
        LooseBatch(items=7)


def test_field_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        InputDataField(batch_size=0)
    with pytest.raises(TypeError, match="data_type must be a type"):
        InputDataField(data_type="list")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only reads"):
        FileInputDataField(mode="w")
    with pytest.raises(ValueError, match="bytes mode has no encoding"):
        FileInputDataField(mode="rb", encoding="utf-8")
    with pytest.raises(PipelineDefinitionError, match="cannot be named 'execute'"):

        class Clash(Pipeline):
            execute = InputDataField()


def test_batch_pipeline_declarations_are_checked() -> None:
    with pytest.raises(PipelineDefinitionError, match="name_batch must be a generator"):

        class NotAGenerator(BatchPipeline):
            pipeline_template = Simple

            def name_batch(self, data, batch_size):  # type: ignore[no-untyped-def]
                return [data]

    with pytest.raises(PipelineDefinitionError, match="nmae_batch matches no field of Simple"):

        class Typo(BatchPipeline):
            pipeline_template = Simple

            def nmae_batch(self, data, batch_size):  # type: ignore[no-untyped-def]
                yield data

    with pytest.raises(PipelineDefinitionError, match="must be a Pipeline subclass"):

        class NoTemplate(BatchPipeline):
            pipeline_template = dict  # type: ignore[assignment]

    with pytest.raises(ValueError, match="unknown signal; a batch pipeline sends task_completed"):
        SoftSignal("task_done")
    with pytest.raises(PipelineDefinitionError, match="lists 'task_failed' twice"):

        class Twice(BatchPipeline):
            pipeline_template = Simple
            listen_to_signals = [SoftSignal("task_failed"), SoftSignal("task_failed")]

    class Abstract(BatchPipeline):
        pass

    with pytest.raises(PipelineDefinitionError, match="has no pipeline_template"):
        Abstract()


def test_execute_options_are_checked(tmp_path: Path) -> None:
    batch = WordsBatch(names=NAMES, tags=TAGS)
    with pytest.raises(ValueError, match="max_workers must be an int >= 1"):
        batch.execute(max_workers=0)
    with pytest.raises(ValueError, match="max_tasks_per_child must be an int >= 1"):
        batch.execute(max_tasks_per_child=-1)
    with pytest.raises(TypeError, match="queue must be a TaskQueue"):
        batch.execute(queue=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="task_options apply to tasks on a queue"):
        batch.execute(task_options={"priority": 1})
    with pytest.raises(ValueError, match="cannot replace forked pool processes"):
        batch.execute(max_tasks_per_child=2, mp_context="fork")
    with pytest.raises(ValueError, match="max_in_flight must be an int >= 1"):
        batch.execute(max_in_flight=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_worker'"):
        batch.execute(max_worker=2)  # type: ignore[call-arg]


def test_a_batcher_that_raises_stops_the_run(
    tmp_path: Path, record: Callable[..., dict[str, list[Any]]]
) -> None:
    class Halting(BatchPipeline):
        pipeline_template = Simple
        listen_to_signals = [SoftSignal("task_completed"), SoftSignal("batch_finished")]

        def name_batch(self, data, batch_size):  # type: ignore[no-untyped-def]
            yield data[:1]
            yield data[1:2]
            raise OSError("the source went away")

    events = record(Halting)
    book = tmp_path / "book.txt"
    book.write_text("y" * 5000)
    with pytest.raises(OSError, match="the source went away"):
        Halting(name=["a", "b", "c"], book=book).execute(max_workers=1)
    # The error surfaces at once (instances still in flight are not waited for),
    # and the run does not claim to have finished.
    assert {e.index for e in events["task_completed"]} <= {0, 1}
    assert events["batch_finished"] == []


def test_a_batcher_returning_a_non_iterator_is_refused() -> None:
    import functools

    def not_yielding(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(self: Any, data: Any, size: Any) -> Any:
            return [data]

        wrapper.__wrapped__ = fn  # claims to wrap a generator function
        return wrapper

    class Sneaky(BatchPipeline):
        pipeline_template = Simple

        @not_yielding
        def name_batch(self, data, batch_size):  # type: ignore[no-untyped-def]
            yield data

    with pytest.raises(PipelineDefinitionError, match="returned a list, not a generator"):
        list(Sneaky(name=["a"], book=io.StringIO("x")).instances())
