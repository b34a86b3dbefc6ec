"""Where pipeline instances run: a local process pool, or sitq workers via a queue.

An executor submits instances and reports finished ones; ``BatchPipeline``
keeps at most ``executor.limit`` in flight, so a large input streams through
in bounded memory. Either way an outcome is ``(True, value)`` or
``(False, InstanceFailed)``, with the same error text wherever it ran.
:mod:`sitq.workflow.executors` is the same idea for a workflow's items.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import multiprocessing
import sys
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle

from sitq import Result, SerializationError, SyncTaskQueue, TaskQueue
from sitq.pipeline.errors import InstanceFailed
from sitq.pipeline.template import Pipeline

__all__ = [
    "InstanceExecutor",
    "PoolExecutor",
    "QueueExecutor",
    "run_instance",
    "run_instance_async",
    "run_pickled",
]

logger = logging.getLogger("sitq.pipeline")

Outcome = tuple[bool, Any]
#: ``(handle, outcome)`` for each instance that finished.
Finished = list[tuple[Any, Outcome]]

#: ProcessPoolExecutor(max_tasks_per_child=) exists from Python 3.11.
NATIVE_MAX_TASKS_PER_CHILD = sys.version_info >= (3, 11)


def _error_text(exc: BaseException) -> str:
    # The same "ExcType: message" a sitq worker records, so outcomes match.
    return f"{type(exc).__name__}: {exc}"


def run_instance(instance: Pipeline) -> Any:
    """Run one instance's ``process`` to its result: the task a sitq worker runs."""
    value = instance.process()
    if inspect.isawaitable(value):
        # The task body on a worker's thread (no loop runs there, and no queue
        # is in hand): a fresh loop for the awaitable ``process`` returned.
        value = asyncio.run(_await(value))
    return value


async def run_instance_async(instance: Pipeline) -> Any:
    """``run_instance`` for a coroutine ``process``, run on the worker's event loop."""
    value = instance.process()
    if inspect.isawaitable(value):
        value = await value
    return value


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _error_reply(text: str, tb: str | None = None, exc: BaseException | None = None) -> bytes:
    try:
        return cloudpickle.dumps(("error", text, tb, exc))
    except Exception:
        return cloudpickle.dumps(("error", text, tb, None))


def run_pickled(payload: bytes) -> bytes:
    """In a pool child: load an instance, run it, and pickle a tagged reply.

    The reply is ``("ok", value)`` or ``("error", text, traceback, exception)``
    (the exception only if it pickles). cloudpickle carries classes defined in
    ``__main__`` or inside functions both ways.
    """
    try:
        instance = cloudpickle.loads(payload)
    except BaseException as exc:
        return _error_reply(
            "SerializationError: the instance could not be loaded in a pool process "
            f"({_error_text(exc)})",
            traceback.format_exc(),
        )
    try:
        value = run_instance(instance)
    except BaseException as exc:
        return _error_reply(_error_text(exc), traceback.format_exc(), exc)
    try:
        return cloudpickle.dumps(("ok", value))
    except Exception as exc:
        return _error_reply(
            f"SerializationError: the result of {instance!r}, a {type(value).__name__}, "
            f"could not be pickled ({_error_text(exc)})"
        )


class _Unsendable(Exception):
    """An instance (or one of a group) would not serialize; ``args[0]`` says why."""


class InstanceExecutor:
    """Where instances run: ``submit`` them, ``wait`` for outcomes.

    A subclass sends a group with ``_send``, raising :class:`_Unsendable` when
    an instance will not serialize.
    """

    kind: str
    limit: int  # most instances in flight
    group = 1  # most instances submitted together

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    def abandon(self) -> None:
        """The run timed out and gives up on its unfinished instances."""

    async def cancel(self, handles: list[Any]) -> None:
        """The run stopped with these unfinished: best effort, they need not run."""

    async def _send(self, group: Sequence[Pipeline]) -> list[Any]:
        raise NotImplementedError

    async def wait(self, pending: Mapping[Any, Pipeline], timeout: float | None) -> Finished:
        """``(handle, outcome)`` for each instance that finished, waiting at most
        ``timeout`` seconds for one (none if nothing did)."""
        raise NotImplementedError

    async def submit(self, group: Sequence[Pipeline]) -> list[Any]:
        """A handle per instance, or an InstanceFailed for one that cannot be sent."""
        try:
            return await self._send(group)
        except _Unsendable:
            pass
        # Somebody's values would not pickle: find out whose, and send the others.
        handles: list[Any] = []
        for instance in group:
            try:
                handles.extend(await self._send([instance]))
            except _Unsendable as exc:
                handles.append(_unpicklable(instance, exc.args[0]))
        return handles


class _Job:
    """One instance in the local pool: a stable handle whose future may be replaced."""

    __slots__ = ("future", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.future: asyncio.Future[bytes] | None = None


class PoolExecutor(InstanceExecutor):
    """Runs instances in a local ``ProcessPoolExecutor``.

    ``max_tasks_per_child`` replaces a child after that many instances; Python's
    pool then starts children with "spawn" unless ``mp_context`` says otherwise
    ("fork" cannot be combined with it). Python 3.10's pool has no such option;
    there the whole pool is replaced after every ``max_workers *
    max_tasks_per_child`` instances instead, which bounds what children
    accumulate on average but not per child.

    When a child dies abruptly (a crash, ``os._exit``, the OOM killer) the pool
    fails every instance it held, running or only waiting, and nothing tells
    which one killed it. Those instances are *suspects*: they are rerun, one at
    a time, each alone in a one-process pool of its own (the run goes on in a
    fresh main pool meanwhile); an instance that kills its process again while
    alone is the one that fails, with ``BrokenProcessPool``.
    """

    kind = "pool"

    def __init__(
        self,
        max_workers: int,
        max_tasks_per_child: int | None = None,
        mp_context: Any = None,
    ) -> None:
        self.max_workers = max_workers
        self.max_tasks_per_child = max_tasks_per_child
        if isinstance(mp_context, str):
            mp_context = multiprocessing.get_context(mp_context)
        if (
            max_tasks_per_child is not None
            and NATIVE_MAX_TASKS_PER_CHILD
            and mp_context is not None
            and mp_context.get_start_method() == "fork"
        ):
            raise ValueError(
                "max_tasks_per_child cannot replace forked pool processes: drop "
                "mp_context='fork' (the pool then uses 'spawn') or max_tasks_per_child"
            )
        self.mp_context = mp_context
        self.limit = 2 * max_workers  # one running and one queued per child
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0  # instances given to the current executor
        self._retired: list[ProcessPoolExecutor] = []
        self._owner: dict[asyncio.Future[bytes], ProcessPoolExecutor] = {}
        # Suspects waiting to run alone, the one running alone, and its pool.
        self._suspects: deque[_Job] = deque()
        self._alone: _Job | None = None
        self._isolation: ProcessPoolExecutor | None = None
        self._abandoned = False

    def _new_executor(self, max_workers: int) -> ProcessPoolExecutor:
        kwargs: dict[str, Any] = {"max_workers": max_workers, "mp_context": self.mp_context}
        if self.max_tasks_per_child is not None and NATIVE_MAX_TASKS_PER_CHILD:
            kwargs["max_tasks_per_child"] = self.max_tasks_per_child
        return ProcessPoolExecutor(**kwargs)

    def _pool(self, alone: bool) -> ProcessPoolExecutor:
        """The pool for the next instance: the isolation pool, or the main one."""
        if alone:
            if self._isolation is None:
                self._isolation = self._new_executor(1)
            return self._isolation
        if (
            self._executor is not None
            and self.max_tasks_per_child is not None
            and not NATIVE_MAX_TASKS_PER_CHILD
            and self._generation >= self.max_workers * self.max_tasks_per_child
        ):
            self._retire()
        if self._executor is None:
            self._executor = self._new_executor(self.max_workers)
            self._generation = 0
        self._generation += 1
        return self._executor

    def _retire(self, alone: bool = False) -> None:
        # The old pool finishes what it was given, then its children exit.
        executor = self._isolation if alone else self._executor
        if executor is not None:
            executor.shutdown(wait=False)
            self._retired.append(executor)
        if alone:
            self._isolation = None
        else:
            self._executor = None

    def abandon(self) -> None:
        """Stop the pool's processes on exit: a hung instance must not hold the run up."""
        self._abandoned = True

    async def __aexit__(self, *exc_info: object) -> None:
        # The executor serves one run: nothing is started after this.
        executors = [*self._retired, *(e for e in (self._executor, self._isolation) if e)]
        if self._abandoned:
            for future in self._owner:  # nobody waits on these any more
                future.cancel()
            self._owner.clear()
        for executor in executors:
            if self._abandoned:
                for process in list((getattr(executor, "_processes", None) or {}).values()):
                    with contextlib.suppress(Exception):
                        process.terminate()
            # cancel_futures: after an error, queued instances are not run for nothing.
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def _send(self, group: Sequence[Pipeline]) -> list[Any]:
        try:
            jobs = [_Job(cloudpickle.dumps(instance)) for instance in group]
        except Exception as exc:
            raise _Unsendable(exc) from exc
        for job in jobs:
            self._start(job)
        return jobs

    def _start(self, job: _Job, alone: bool = False) -> None:
        loop = asyncio.get_running_loop()
        executor = self._pool(alone)
        try:
            future = loop.run_in_executor(executor, run_pickled, job.payload)
        except BrokenProcessPool:
            self._retire(alone)  # a child died earlier: go on in a fresh pool
            executor = self._pool(alone)
            future = loop.run_in_executor(executor, run_pickled, job.payload)
        self._owner[future] = executor
        job.future = future

    async def wait(self, pending: Mapping[Any, Pipeline], timeout: float | None) -> Finished:
        # Suspects are only reported once they have an outcome of their own.
        if self._alone is None and self._suspects:
            self._alone = self._suspects.popleft()
            self._start(self._alone, alone=True)
        running = {job.future: job for job in pending if job.future is not None}
        if not running:
            raise RuntimeError("the local pool has nothing running for the pending instances")
        done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finished = [(running[f], self._outcome(running[f], f, pending)) for f in done]
        return [(job, outcome) for job, outcome in finished if outcome is not None]

    def _outcome(
        self, job: _Job, future: asyncio.Future[bytes], pending: Mapping[Any, Pipeline]
    ) -> Outcome | None:
        index = _index(pending[job])
        exc = future.exception()
        owner = self._owner.pop(future, None)
        job.future = None
        alone = job is self._alone
        if alone:
            self._alone = None
        if isinstance(exc, BrokenProcessPool):
            if alone:
                # It killed its process with nothing else in the pool: the culprit.
                self._retire(alone=True)
                return False, InstanceFailed(
                    index,
                    "BrokenProcessPool: a process of the local pool died abruptly while "
                    "running this instance (a crash, os._exit or the OOM killer), also when "
                    "it was rerun alone; the rest of the run went on",
                    exception=exc,
                )
            if owner is self._executor:  # not a pool already replaced for the same death
                self._retire()
            self._suspects.append(job)
            return None
        if exc is not None:
            return False, InstanceFailed(index, _error_text(exc), exception=exc)
        reply = cloudpickle.loads(future.result())
        if reply[0] == "ok":
            return True, reply[1]
        _, text, tb, original = reply
        return False, InstanceFailed(index, text, tb, exception=original)


class QueueExecutor(InstanceExecutor):
    """Runs each instance as one sitq task, on whatever workers serve the queue.

    Instances are enqueued in groups (one transaction each) while fewer than
    ``limit`` are unfinished; finished results are collected in bulk.
    """

    kind = "queue"

    #: How often the unfinished tasks are checked in bulk while waiting on the oldest.
    POLL = 0.05

    def __init__(
        self,
        queue: TaskQueue | SyncTaskQueue,
        limit: int,
        task_options: dict[str, Any] | None = None,
        close: bool = False,
    ) -> None:
        self.queue = queue
        self.limit = limit
        self.group = min(32, limit)
        self._close = close
        # Fail fast on a bad option, before anything is enqueued.
        self._enqueuer: Any = queue.with_options(**task_options) if task_options else queue

    async def _call(self, target: Any, method: str, *args: Any) -> Any:
        if isinstance(self.queue, SyncTaskQueue):
            return await asyncio.to_thread(getattr(target, method), *args)
        return await getattr(target, method)(*args)

    async def __aenter__(self) -> QueueExecutor:
        if isinstance(self.queue, TaskQueue):
            await self.queue.connect()  # a no-op when it is connected
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._close and isinstance(self.queue, TaskQueue):
            await self.queue.close()

    async def _send(self, group: Sequence[Pipeline]) -> list[Any]:
        process = type(group[0]).process
        fn = run_instance_async if inspect.iscoroutinefunction(process) else run_instance
        try:
            ids = await self._call(self._enqueuer, "enqueue_many", fn, [(i,) for i in group])
        except SerializationError as exc:
            raise _Unsendable(exc) from exc
        return list(ids)

    async def cancel(self, handles: list[Any]) -> None:
        """Cancel the unfinished tasks, one by one; a failure is logged."""
        for task_id in handles:
            try:
                await self._call(self.queue, "cancel", task_id)
            except Exception:
                logger.warning("could not cancel pipeline task %s", task_id, exc_info=True)

    async def wait(self, pending: Mapping[Any, Pipeline], timeout: float | None) -> Finished:
        task_ids = list(pending)
        results: dict[str, Result] = await self._call(self.queue, "get_results", task_ids)
        if results:
            return [
                (task_id, _result_outcome(result, _index(pending[task_id])))
                for task_id, result in results.items()
            ]
        wait = self.POLL if timeout is None else min(self.POLL, timeout)
        if wait > 0:
            # Returns as soon as the oldest finishes, or after POLL to look at the rest.
            await self._call(self.queue, "get_result", task_ids[0], wait)
        return []


def _result_outcome(result: Result, index: int) -> Outcome:
    if result.ok:
        return True, result.value
    return False, InstanceFailed(
        index,
        result.error or f"the task ended {result.status.value}",
        result.traceback,
        task_id=result.task_id,
    )


def _index(instance: Pipeline) -> int:
    return instance.batch_index or 0


def _unpicklable(instance: Pipeline, exc: Exception) -> InstanceFailed:
    return InstanceFailed(
        _index(instance),
        f"SerializationError: {instance!r} could not be pickled to send it to another "
        f"process ({_error_text(exc)}); its field values and template must be picklable",
        exception=exc,
    )
