"""``BatchPipeline``: run one template instance per batch of the inputs, in parallel."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from sitq import SyncTaskQueue, TaskQueue
from sitq.pipeline import telemetry
from sitq.pipeline.errors import InstanceFailed, PipelineDefinitionError, PipelineTimeout
from sitq.pipeline.executors import InstanceExecutor, PoolExecutor, QueueExecutor
from sitq.pipeline.fields import InputDataField
from sitq.pipeline.signal import BatchEvent, InstanceEvent, SoftSignal
from sitq.pipeline.template import Pipeline, validate_inputs

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["BatchPipeline", "RunOptions"]

logger = logging.getLogger("sitq.pipeline")

#: A ``{field}_batch`` method, unbound: (batch pipeline, data, size) -> batches.
Batcher = Callable[[Any, Any, "int | None"], Iterator[Any]]

#: Instances in flight on a queue unless ``max_in_flight`` says otherwise.
DEFAULT_QUEUE_IN_FLIGHT = 64


class RunOptions(TypedDict, total=False):
    """The keyword options of :meth:`BatchPipeline.execute` (see there)."""

    max_workers: int | None
    max_tasks_per_child: int | None
    mp_context: Any
    max_in_flight: int | None
    task_options: dict[str, Any] | None
    timeout: float | None


class BatchPipeline:
    """Split the inputs of a :class:`Pipeline` template into batches and run an
    instance per batch, in parallel.

    ::

        class SimpleBatch(BatchPipeline):
            pipeline_template = Simple
            listen_to_signals = [SoftSignal("task_completed"), SoftSignal("task_failed")]

            def name_batch(self, data, batch_size):      # optional: replaces the default
                for i in range(0, len(data), batch_size or 1):
                    yield data[i:i + batch_size]

        outcomes = SimpleBatch(name=names, book="book.txt").execute()

    ``{field}_batch(self, data, size)`` methods must be generators; a file
    field's method gets the open stream. See :meth:`instances` for how
    batches become instances, and :mod:`sitq.pipeline.signal` for the signals.

    Class attributes ``max_workers`` and ``max_tasks_per_child`` set defaults
    for the local process pool.
    """

    #: The Pipeline subclass each instance is made from.
    pipeline_template: ClassVar[type[Pipeline] | None] = None
    #: The signals this batch pipeline sends (SoftSignal objects, or their names).
    listen_to_signals: ClassVar[list[SoftSignal]] = []
    #: Local pool size (default: the number of CPUs).
    max_workers: ClassVar[int | None] = None
    #: Replace a local pool process after this many instances (default: never).
    max_tasks_per_child: ClassVar[int | None] = None

    _batchers: ClassVar[dict[str, Batcher]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        template = cls.pipeline_template
        if template is not None and not (
            isinstance(template, type) and issubclass(template, Pipeline)
        ):
            raise PipelineDefinitionError(
                f"{cls.__name__}.pipeline_template must be a Pipeline subclass, got "
                f"{template!r}; set it to the template class itself"
            )
        if "listen_to_signals" in vars(cls):
            cls.listen_to_signals = _signals(cls.__name__, cls.listen_to_signals)
        cls._batchers = _batchers(cls, template) if template is not None else {}

    def __init__(self, **values: Any) -> None:
        """Give the template's fields their whole inputs by name; validated now."""
        template = type(self).pipeline_template
        if template is None:
            raise PipelineDefinitionError(
                f"{type(self).__name__} has no pipeline_template: set "
                "`pipeline_template = YourPipeline` on the class"
            )
        self.template: type[Pipeline] = template
        self.inputs = validate_inputs(template, values)
        for name, field in template.fields.items():
            if isinstance(field, InputDataField) and field.size and name not in self._batchers:
                field.check_batchable(self.inputs[name])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.template.__name__}>"

    # -- signals ----------------------------------------------------------------

    @classmethod
    def signal(cls, name: str) -> SoftSignal:
        """The SoftSignal called ``name`` in this class's ``listen_to_signals``."""
        for signal in cls.listen_to_signals:
            if signal.name == name:
                return signal
        SoftSignal(name)  # an unknown name gets the error that lists the known ones
        raise PipelineDefinitionError(
            f"{cls.__name__} does not send {name!r}: add SoftSignal({name!r}) to its "
            "listen_to_signals"
        )

    @classmethod
    def connect(cls, name: str, receiver: Callable[[Any], Any] | None = None) -> Any:
        """Call ``receiver(event)`` each time this class sends signal ``name``; returns
        the receiver. Without ``receiver``, returns a decorator."""
        signal = cls.signal(name)
        return signal.connect if receiver is None else signal.connect(receiver)

    @classmethod
    def disconnect(cls, name: str, receiver: Callable[[Any], Any]) -> bool:
        """Stop calling ``receiver`` for signal ``name``; returns whether it was connected."""
        return cls.signal(name).disconnect(receiver)

    async def _send(self, name: str, event: Any) -> None:
        signal = next((s for s in self.listen_to_signals if s.name == name), None)
        if signal is None:
            return
        await signal.send(event)
        if (reaction := getattr(self, f"on_{name}", None)) is not None:
            try:
                outcome = reaction(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("%s.on_%s raised", type(self).__name__, name)

    # -- running ----------------------------------------------------------------

    def instances(self) -> Generator[Pipeline, None, None]:
        """The template instances ``execute()`` runs, made lazily as they are needed.

        Each batched field gets a generator of batches: the class's
        ``{field}_batch`` method if it defines one, else the field's default
        batching. They advance in step: instance ``i`` gets batch ``i`` of every
        batched field (None for one whose batches ran out) and the other fields
        whole. With no batched field there is one instance; when every batched
        field is empty, none. Close the generator (or exhaust it) to close the
        files it opened.
        """
        with contextlib.ExitStack() as files:
            whole: dict[str, Any] = {}
            streams: dict[str, Iterator[Any]] = {}
            for name, field in self.template.fields.items():
                value, batcher = self.inputs[name], self._batchers.get(name)
                if batcher is None and field.size is None:
                    whole[name] = field.whole(value)
                elif value is None:
                    streams[name] = iter(())
                elif batcher is None:
                    streams[name] = field.batches(files.enter_context(field.source(value)))
                else:
                    source = files.enter_context(field.source(value))
                    streams[name] = batches = batcher(self, source, field.size)
                    if not isinstance(batches, Iterator):
                        raise PipelineDefinitionError(
                            f"{type(self).__name__}.{name}_batch returned a "
                            f"{type(batches).__name__}, not a generator: write it with "
                            "`yield`, one batch per yield"
                        )
            if not streams:
                yield self.template.for_batch(0, whole)
                return
            steps = itertools.zip_longest(*streams.values(), fillvalue=None)
            for index, step in enumerate(steps):
                batch = dict(zip(streams, step, strict=True))
                yield self.template.for_batch(index, {**whole, **batch})

    def execute(
        self,
        queue: TaskQueue | SyncTaskQueue | str | os.PathLike[str] | None = None,
        **options: Unpack[RunOptions],
    ) -> list[Any]:
        """Run every instance and return their outcomes in batch order: the value
        each returned, or an :class:`InstanceFailed` for each that failed.

        :param queue: run each instance as a task on sitq workers: a
            ``SyncTaskQueue``, a ``TaskQueue`` (connected for the run and
            closed after it), or a database URL/path. None runs instances in a
            local process pool.
        :param max_workers: local pool size (default: the class attribute, else
            the number of CPUs).
        :param max_tasks_per_child: replace a pool process after this many instances.
        :param mp_context: the pool's multiprocessing context or start method
            name (default: the platform's). With "spawn" or "forkserver" the
            script needs an ``if __name__ == "__main__":`` guard.
        :param max_in_flight: most instances submitted but unfinished (default:
            twice the pool size; 64 on a queue). Bounds memory on large inputs.
        :param task_options: ``with_options`` for the tasks on a queue (``queue``,
            ``priority``, ``max_retries``, ``timeout``, ...).
        :param timeout: most seconds the whole run may take (default: no limit).
            When it runs out, :class:`PipelineTimeout` is raised with the outcomes
            of the instances that finished; the unfinished tasks are cancelled (on
            a queue) or their pool processes stopped. Without it, a run on a queue
            that no live worker serves waits for one forever.

        Inside a running event loop use ``await execute_async()``; called from
        one anyway (a notebook), this runs the pipeline on a helper thread.
        """
        close = isinstance(queue, (str, os.PathLike, TaskQueue))
        if isinstance(queue, (str, os.PathLike)):
            queue = TaskQueue(queue)
        run_on: Callable[[Coroutine[Any, Any, list[Any]]], list[Any]]
        if isinstance(queue, SyncTaskQueue):
            # The run goes to the queue's own event loop (the one sync bridge), on
            # the TaskQueue that loop serves.
            run, run_on = self._run(queue.async_queue, options, close), queue.run
        else:
            # No loop to share: a local pool, or a TaskQueue this run connects and
            # closes itself. A fresh loop on this thread, which Ctrl-C cancels.
            run, run_on = self._run(queue, options, close), asyncio.run
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run_on(run)
        # A loop runs here (a notebook) and must not be blocked from its own thread.
        with ThreadPoolExecutor(1, thread_name_prefix="sitq-pipeline") as helper:
            return helper.submit(run_on, run).result()

    async def execute_async(
        self, queue: TaskQueue | SyncTaskQueue | None = None, **options: Unpack[RunOptions]
    ) -> list[Any]:
        """:meth:`execute` for async code (``timeout`` included). A ``TaskQueue`` is
        connected if it is not, and left open."""
        return await self._run(queue, options, False)

    def _executor(self, queue: Any, options: RunOptions, close: bool) -> InstanceExecutor:
        unknown = sorted(set(options) - set(RunOptions.__annotations__))
        if unknown:
            raise TypeError(
                f"unexpected keyword argument {unknown[0]!r}; the run options are "
                f"{', '.join(RunOptions.__annotations__)}"
            )
        timeout, in_flight = options.get("timeout"), options.get("max_in_flight")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        _check_count("max_in_flight", in_flight, "instances submitted and unfinished")
        task_options = options.get("task_options")
        if queue is not None:
            if not isinstance(queue, (TaskQueue, SyncTaskQueue)):
                raise TypeError(
                    f"queue must be a TaskQueue, a SyncTaskQueue or a database URL, got "
                    f"{type(queue).__name__}; pass None to run in a local process pool"
                )
            if task_options is not None and not isinstance(task_options, dict):
                raise TypeError(
                    f"task_options must be a dict of with_options(), got {task_options!r}"
                )
            limit = _first(in_flight, DEFAULT_QUEUE_IN_FLIGHT)
            return QueueExecutor(queue, limit, task_options, close=close)
        if task_options:
            raise TypeError("task_options apply to tasks on a queue; pass a queue, or drop them")
        workers = _first(options.get("max_workers"), self.max_workers, os.cpu_count() or 1)
        per_child = _first(options.get("max_tasks_per_child"), self.max_tasks_per_child)
        _check_count("max_workers", workers, "processes in the local pool")
        _check_count("max_tasks_per_child", per_child, "instances a pool process runs")
        executor = PoolExecutor(workers, per_child, options.get("mp_context"))
        if in_flight is not None:
            executor.limit = in_flight
        return executor

    async def _run(self, queue: Any, options: RunOptions, close: bool) -> list[Any]:
        try:
            executor = self._executor(queue, options, close)
        except BaseException:
            if close and isinstance(queue, TaskQueue):
                await queue.close()
            raise
        start = time.monotonic()
        with telemetry.current.run_span(
            type(self).__qualname__,
            **{
                "sitq.pipeline.template": self.template.__qualname__,
                # The attribute keeps its first name: dashboards may query it.
                "sitq.pipeline.runner": executor.kind,
            },
        ) as span:
            await self._send("batch_started", BatchEvent("batch_started", self))
            async with executor:
                with contextlib.closing(self.instances()) as instances:
                    outcomes, counts = await self._drive(
                        executor, instances, span, options.get("timeout")
                    )
            completed, failed = counts["task_completed"], counts["task_failed"]
            span.set_attributes(
                {
                    "sitq.pipeline.instances": len(outcomes),
                    "sitq.pipeline.completed": completed,
                    "sitq.pipeline.failed": failed,
                }
            )
            elapsed = time.monotonic() - start
            event = BatchEvent("batch_finished", self, len(outcomes), completed, failed, elapsed)
            await self._send("batch_finished", event)
        return outcomes

    async def _drive(
        self,
        executor: InstanceExecutor,
        instances: Iterator[Pipeline],
        span: Any,
        timeout: float | None,
    ) -> tuple[list[Any], Counter[str]]:
        """Keep up to ``executor.limit`` instances in flight; settle each outcome once.

        Returns the outcomes, and how many instances sent each signal."""
        name = self.template.__qualname__
        deadline = None if timeout is None else time.monotonic() + timeout
        outcomes: list[Any] = []
        counts: Counter[str] = Counter()
        pending: dict[Any, Pipeline] = {}
        traces: dict[int, telemetry.InstanceTrace] = {}
        exhausted = False

        async def settle(instance: Pipeline, ok: bool, value: Any) -> None:
            index = instance.batch_index or 0
            outcomes[index] = value
            trace = traces.pop(index)
            if ok:
                trace.completed()
            else:
                trace.failed(value, getattr(value, "error", None))
            signal = "task_completed" if ok else "task_failed"
            counts[signal] += 1
            result, exception = (value, None) if ok else (None, value)
            event = InstanceEvent(signal, self, instance, index, result, exception, trace.elapsed)
            await self._send(signal, event)

        try:
            while True:
                while not exhausted and len(pending) < executor.limit:
                    room = min(executor.group, executor.limit - len(pending))
                    group = list(itertools.islice(instances, room))
                    if len(group) < room:
                        exhausted = True
                    if not group:
                        break
                    for instance in group:
                        outcomes.append(None)
                        traces[instance.batch_index or 0] = telemetry.current.start_instance(
                            name, instance.batch_index, span
                        )
                    handles = await executor.submit(group)
                    for instance, handle in zip(group, handles, strict=True):
                        if isinstance(handle, InstanceFailed):
                            await settle(instance, False, handle)
                        else:
                            pending[handle] = instance
                if not pending:
                    return outcomes, counts
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                finished = await executor.wait(pending, left)
                if not finished and deadline is not None and time.monotonic() >= deadline:
                    executor.abandon()
                    waiting = {instance.batch_index or 0 for instance in pending.values()}
                    done = {i: outcome for i, outcome in enumerate(outcomes) if i not in waiting}
                    raise PipelineTimeout(float(timeout or 0), done, sorted(waiting))
                for handle, (ok, value) in finished:
                    await settle(pending.pop(handle), ok, value)
        finally:
            for trace in traces.values():  # the run was interrupted
                trace.abandoned()
            if pending:
                await executor.cancel(list(pending))


def _first(*values: Any) -> Any:
    """The first value that is not None (0 is a value, and an error later)."""
    return next((v for v in values if v is not None), None)


def _check_count(name: str, value: Any, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 ({what}), got {value!r}")


def _signals(owner: str, declared: Any) -> list[SoftSignal]:
    if not isinstance(declared, (list, tuple)):
        raise PipelineDefinitionError(
            f"{owner}.listen_to_signals must be a list of SoftSignal, got {declared!r}"
        )
    signals: list[SoftSignal] = []
    for item in declared:
        signal = SoftSignal(item) if isinstance(item, str) else item
        if not isinstance(signal, SoftSignal):
            raise PipelineDefinitionError(
                f"{owner}.listen_to_signals holds {item!r}; list SoftSignal('task_completed') "
                "and the like"
            )
        if any(s.name == signal.name for s in signals):
            raise PipelineDefinitionError(
                f"{owner}.listen_to_signals lists {signal.name!r} twice; list it once"
            )
        signals.append(signal)
    return signals


def _batchers(cls: type[BatchPipeline], template: type[Pipeline]) -> dict[str, Batcher]:
    """The class's ``{field}_batch`` methods, checked: a generator per known field."""
    found: dict[str, Batcher] = {}
    for attr in dir(cls):
        if not attr.endswith("_batch") or attr.startswith("_") or hasattr(BatchPipeline, attr):
            continue
        method = inspect.getattr_static(cls, attr)
        if isinstance(method, (staticmethod, classmethod)) or not callable(method):
            continue
        field = attr[: -len("_batch")]
        if field not in template.fields:
            raise PipelineDefinitionError(
                f"{cls.__name__}.{attr} matches no field of {template.__name__} (its fields: "
                f"{', '.join(template.fields) or 'none'}); name it after a field, "
                "as `{field}_batch`"
            )
        if not inspect.isgeneratorfunction(inspect.unwrap(method)):
            raise PipelineDefinitionError(
                f"{cls.__name__}.{attr} must be a generator function (use `yield` to give "
                f"each batch of {field!r}), with the signature (self, data, batch_size)"
            )
        found[field] = method
    return found
