"""The enqueue path: :class:`Enqueuer`, what ``TaskQueue`` is (with the default
options) and what ``TaskQueue.with_options`` returns, and the task rows it
makes of calls (serialized, signed and bound to their rows when the serializer
signs)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from sitq import telemetry
from sitq.announce import announce_enqueued, observed
from sitq.backends.base import Backend, Dependency, NewTask, TaskWriter
from sitq.backends.common import translate_error
from sitq.bridge import RunOnLoop
from sitq.canvas import PARENT_RESULTS_HEADER, Composable, Signature, plan
from sitq.errors import ConfigurationError, InvalidComposition, SerializationError
from sitq.headers import encode as encode_headers
from sitq.records import check_callable, task_name
from sitq.registry import TaskHandle
from sitq.serialization import Serializer, payload_binding
from sitq.store import StoreTransaction
from sitq.task import (
    OPTION_NAMES,
    Call,
    TaskId,
    TaskOptions,
    check_arguments,
    check_option_keywords,
)

logger = logging.getLogger("sitq.queue")

#: A layer's statements run in the transaction that stores an enqueue_many's tasks:
#: called with the transaction and the new tasks' ids.
Alongside = Callable[[StoreTransaction, Sequence[str]], Awaitable[Any]]


def raise_translated(exc: Exception, backend: TaskWriter) -> None:
    """Raise the SitqError for a raw database error (``exc`` chained as its cause);
    return if ``exc`` is not one (or is one already), for the caller to re-raise it."""
    error = translate_error(exc, backend)
    if error is not None and error is not exc:
        raise error from exc


class Enqueuer:
    """``enqueue`` and ``enqueue_many`` with a fixed set of options (``options``).

    A :class:`~sitq.TaskQueue` is one, with the default options;
    ``with_options(...)`` returns another on the same queue. Not made directly.
    """

    #: How calls become bytes (the queue's; set by TaskQueue).
    serializer: Serializer

    def __init__(
        self,
        root: Enqueuer | None = None,
        options: TaskOptions | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self._root = root or self  # the queue, which owns the backend and serializer
        self.options = options or TaskOptions()
        # The options given to with_options, kept so a TaskHandle passed as the
        # callable gets its registered options with just these applied on top.
        self._overrides = overrides or {}

    def _backend_checked(self) -> Backend:
        """The queue's backend, refusing a queue not connected (TaskQueue's own)."""
        return self._root._backend_checked()

    def _writer(self) -> TaskWriter:
        """Where this enqueuer stores tasks: the root's (``_root_writer``)."""
        return self._root._root_writer()

    def _root_writer(self) -> TaskWriter:
        """The queue's backend; an application's connection for ``queue.using``."""
        return self._backend_checked()

    def with_options(self, **options: Any) -> Enqueuer:
        """The same queue with these options: ``queue, priority, delay, eta,
        max_retries, retry_backoff, timeout, unique_key, result_ttl, limit_key``
        (see :class:`~sitq.TaskOptions`)."""
        merged = self.options.merged(**options)
        return Enqueuer(self._root, merged, {**self._overrides, **options})

    async def enqueue(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Store a call of ``fn(*args, **kwargs)``; return its task id once committed.

        Every keyword argument goes to ``fn``: set options with ``with_options``.
        With a ``unique_key``, the id is a :class:`~sitq.task.TaskId` that says
        whether it is new. A TaskHandle is sent by name with its registered options.
        """
        if isinstance(fn, TaskHandle):
            return await self._for_handle(fn, kwargs).enqueue(fn.ref, *args, **kwargs)
        if self.options.unique_key is not None:
            self._refuse_unique_dependent()
            return await self._enqueue_unique(fn, args, kwargs)
        return (await self._enqueue(fn, [(args, kwargs)]))[0]

    def signature(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Signature:
        """A call of ``fn(*args, **kwargs)`` to compose (chain, group, chord) and
        ``submit`` later, with this queue's ``with_options`` (more with ``.set``)."""
        if isinstance(fn, TaskHandle):
            return Signature(fn.ref, args, kwargs, dict(self._overrides), fn.options)
        check_callable(fn)
        return Signature(fn, args, kwargs, dict(self._overrides))

    async def submit(self, composition: Composable) -> str:
        """Store a signature, chain, group or chord (nested as you like) in one
        transaction; return the id of the task whose result is the composition's:
        a chain's last call, a chord's callback, a group's collector (its value is
        the members' results in order). With ``depends_on``, its first tasks wait
        for those. A bad composition is refused and nothing is stored."""
        if not observed():
            return await self._store_plan(*await self._planned(composition))
        # One PRODUCER span for the whole composition; each step carries its
        # context, so every run joins the submitter's trace.
        what = composition_name(composition)
        with telemetry.enqueue_scope(self.options.queue, what) as scope:
            tasks, deps, result_id = await self._planned(composition, scope.headers)
            await self._store_plan(tasks, deps, result_id)
            scope.committed_tasks([(task.id, task.queue, task.func_name) for task in tasks])
        return result_id

    async def _planned(
        self, composition: Composable, trace_headers: dict[str, str] | None = None
    ) -> tuple[list[NewTask], list[Dependency], str]:
        backend = self._writer()
        steps = plan(composition, self.options.depends_on)
        ids = await reserved_ids(backend, len(steps.steps))
        default = replace(self.options, depends_on=())
        now = backend.now()
        tasks: list[NewTask] = []
        deps: list[Dependency] = []
        # A registered task's signature keeps its own options, with the submitter's
        # with_options on top (as enqueueing the handle through it would).
        over = {k: v for k, v in self._overrides.items() if k != "depends_on"}
        for step, task_id in zip(steps.steps, ids, strict=True):
            sig = step.sig
            if sig.base is None:
                options = sig.options(default)
            else:
                options = sig.base.merged(**{**over, **sig.overrides})
            if options.unique_key is not None:
                raise InvalidComposition(
                    f"{step.sig!r} has a unique_key: a task in a composition cannot be unique "
                    "(it waits for its parents); set the key on a task enqueued alone"
                )
            headers = dict(trace_headers or {})
            if step.pass_results:
                headers[PARENT_RESULTS_HEADER] = step.pass_results
            (task,) = new_tasks(
                self._root.serializer,
                options,
                step.sig.fn,
                [(step.sig.args, step.sig.kwargs)],
                now,
                [task_id],
                headers or None,
            )
            tasks.append(task)
            parents = tuple(tasks[p].id if isinstance(p, int) else p for p in step.parents)
            parents += tuple(p for p in options.depends_on if p not in parents)
            if parents:
                deps.append(Dependency(task.id, parents, options.on_parent_failure))
        return tasks, deps, tasks[steps.result].id

    async def _store_plan(
        self, tasks: list[NewTask], deps: list[Dependency], result_id: str
    ) -> str:
        backend = self._writer()
        try:
            await backend.enqueue_dependent(tasks, deps)
        except Exception as exc:
            raise_translated(exc, backend)
            raise
        if observed():
            announce_enqueued(tasks)
        return result_id

    async def enqueue_many(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        /,
        *,
        alongside: Alongside | None = None,
    ) -> list[str]:
        """Store one call of ``fn`` per item in one transaction; return their ids in order.

        Each item is a tuple of positional arguments, or a single argument.
        ``alongside(tx, task_ids)``, for sitq's layers and extensions, runs inside
        that transaction (their own rows, which commit with the tasks or not at all).
        """
        if isinstance(fn, TaskHandle):
            return await self._for_handle(fn).enqueue_many(fn.ref, items, alongside=alongside)
        self._refuse_unique()
        return await self._enqueue(fn, as_calls(items), alongside)

    def enqueue_blocking(
        self, run: RunOnLoop, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> str:
        """:meth:`enqueue` for plain code (SyncTaskQueue); ``run`` runs a coroutine
        on the queue's loop. Stored on the caller's thread when the backend can
        (SQLite: a trip through the loop's thread costs more than the INSERT)."""
        if isinstance(fn, TaskHandle):
            return self._for_handle(fn, kwargs).enqueue_blocking(run, fn.ref, *args, **kwargs)
        if self.options.unique_key is not None:
            self._refuse_unique_dependent()
            return run(self._enqueue_unique(fn, args, kwargs))
        return self._blocking(run, fn, [(args, kwargs)])[0]

    def enqueue_many_blocking(
        self,
        run: RunOnLoop,
        fn: Callable[..., Any],
        items: Iterable[Any],
        /,
        *,
        alongside: Alongside | None = None,
    ) -> list[str]:
        """:meth:`enqueue_many` for plain code; ``run`` as for :meth:`enqueue_blocking`."""
        if isinstance(fn, TaskHandle):
            handle = self._for_handle(fn)
            return handle.enqueue_many_blocking(run, fn.ref, items, alongside=alongside)
        self._refuse_unique()
        if alongside is not None:  # a layer's rows in the same transaction: on the loop
            return run(self._enqueue(fn, as_calls(items), alongside))
        return self._blocking(run, fn, as_calls(items))

    def _blocking(self, run: RunOnLoop, fn: Callable[..., Any], calls: list[Call]) -> list[str]:
        if observed() or self.options.depends_on:
            return run(self._enqueue(fn, calls))
        backend = self._backend_checked()
        try:
            ids = backend.task_ids(len(calls))
            if ids is None:
                ids = backend.reserve_task_ids_blocking(len(calls))
            if ids is None:
                ids = run(backend.reserve_task_ids(len(calls)))
            tasks = new_tasks(self._root.serializer, self.options, fn, calls, backend.now(), ids)
            if not backend.enqueue_blocking(tasks):
                run(backend.enqueue(tasks))
        except Exception as exc:
            raise_translated(exc, backend)
            raise
        return [task.id for task in tasks]

    def _for_handle(
        self, handle: TaskHandle[Any, Any], kwargs: dict[str, Any] | None = None
    ) -> Enqueuer:
        """The enqueuer for a TaskHandle passed as the callable: the handle is sent
        by name (never pickled: it holds the queue) with its registered options,
        overridden by the ones given to with_options, as ``handle.enqueue`` would."""
        if kwargs and not OPTION_NAMES.isdisjoint(kwargs):
            check_option_keywords(handle.fn, kwargs)
        return Enqueuer(self._root, handle.options.merged(**self._overrides))

    def _refuse_unique_dependent(self) -> None:
        if self.options.depends_on:
            raise ConfigurationError(
                "unique_key and depends_on cannot be combined: a unique task is one at a "
                "time, a dependent waits; enqueue the dependent without a unique_key"
            )

    def _refuse_unique(self) -> None:
        if self.options.unique_key is not None:
            raise ConfigurationError(
                "unique_key applies to one task at a time: use enqueue(), not enqueue_many() "
                "(every task of the call would share the key, so only one could exist)"
            )

    async def _enqueue(
        self, fn: Callable[..., Any], calls: Sequence[Call], alongside: Alongside | None = None
    ) -> list[str]:
        """Store the calls (with ``alongside`` in their transaction); their ids."""
        backend = self._writer()
        store: Callable[[list[NewTask]], Awaitable[None]] = backend.enqueue
        if alongside is not None:
            store = _storing_alongside(self._backend_checked(), alongside)
        if self.options.depends_on:
            if alongside is not None:
                raise ConfigurationError("depends_on cannot be combined with a layer's rows")
            store = _storing_dependent(backend, self.options)
        serializer = self._root.serializer
        try:
            ids = backend.task_ids(len(calls))
            if ids is None:
                ids = await backend.reserve_task_ids(len(calls))
            if not observed():
                tasks = new_tasks(serializer, self.options, fn, calls, backend.now(), ids)
                await store(tasks)
                return [task.id for task in tasks]
            # With a span, metrics and the task_enqueued signal.
            check_callable(fn)
            with telemetry.enqueue_scope(self.options.queue, task_name(fn)) as scope:
                now = backend.now()
                tasks = new_tasks(serializer, self.options, fn, calls, now, ids, scope.headers)
                await store(tasks)
                scope.committed([task.id for task in tasks])
        except Exception as exc:
            raise_translated(exc, backend)
            raise
        announce_enqueued(tasks)
        return [task.id for task in tasks]

    async def _enqueue_unique(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> TaskId:
        """Enqueue unless a queued or running task holds the unique key."""
        backend = self._writer()
        check_callable(fn)
        try:
            ids = await reserved_ids(backend, 1)
            with telemetry.enqueue_scope(self.options.queue, task_name(fn)) as scope:
                (task,) = new_tasks(
                    self._root.serializer,
                    self.options,
                    fn,
                    [(args, kwargs)],
                    backend.now(),
                    ids,
                    scope.headers,
                )
                task_id, created = await backend.enqueue_unique(task)
                if created:
                    scope.committed([task_id])
        except Exception as exc:
            raise_translated(exc, backend)
            raise
        if created:
            announce_enqueued([task])
            return TaskId(task_id)
        key = self.options.unique_key
        logger.info("unique key %r is held by task %s: not enqueued again", key, task_id)
        return TaskId.existing(task_id)


def _storing_alongside(
    backend: Backend, alongside: Alongside
) -> Callable[[list[NewTask]], Awaitable[None]]:
    """What stores tasks and runs ``alongside`` in one transaction."""

    async def store(tasks: list[NewTask]) -> None:
        async def body(tx: StoreTransaction) -> None:
            await tx.insert_tasks(tasks)
            await alongside(tx, [task.id for task in tasks])

        await backend.store_session().transaction(body)

    return store


def _storing_dependent(
    backend: TaskWriter, options: TaskOptions
) -> Callable[[list[NewTask]], Awaitable[None]]:
    """What stores tasks that each wait for ``options.depends_on``."""

    async def store(tasks: list[NewTask]) -> None:
        parents, mode = options.depends_on, options.on_parent_failure
        await backend.enqueue_dependent(
            tasks, [Dependency(task.id, parents, mode) for task in tasks]
        )

    return store


def composition_name(composition: Any) -> str:
    """What a submit's span names: the task of a lone signature, else the kind
    of composition ("chain", "group", "chord")."""
    if isinstance(composition, Signature):
        return task_name(composition.fn)
    return type(composition).__name__


def as_calls(items: Iterable[Any]) -> list[Call]:
    """enqueue_many's items as calls: a tuple is the arguments, anything else one argument."""
    try:
        iterator = iter(items)
    except TypeError:
        raise ConfigurationError(
            f"enqueue_many needs an iterable of items (each a tuple of arguments, or one "
            f"argument), got {type(items).__name__} {items!r:.80}; for a single call use "
            "enqueue(fn, ...)"
        ) from None
    empty: dict[str, Any] = {}
    return [(item if isinstance(item, tuple) else (item,), empty) for item in iterator]


async def reserved_ids(writer: TaskWriter, count: int) -> list[str]:
    """Ids for ``count`` new tasks from ``writer``: from what it holds, else reserved
    now. Made before the rows: a signed payload is bound to its row's id, and a
    composition's tasks name each other."""
    ids = writer.task_ids(count)
    return await writer.reserve_task_ids(count) if ids is None else ids


def new_tasks(
    serializer: Serializer,
    options: TaskOptions,
    fn: Callable[..., Any],
    calls: Sequence[Call],
    now: float,
    ids: Sequence[str],
    headers: dict[str, str] | None = None,
) -> list[NewTask]:
    """The task rows of calls of ``fn``, with the ``ids`` given (one a call, from
    the backend: :func:`reserved_ids`): each call serialized (signed and bound to
    its row when ``serializer`` signs); what is the same for every call is done once.

    ``headers`` (trace context) are framed in front of each payload."""
    check_callable(fn)
    if calls and calls[0][1] and not OPTION_NAMES.isdisjoint(calls[0][1]):
        check_option_keywords(fn, calls[0][1])  # only enqueue() passes keywords
    check_arguments(fn, calls, 1 if headers and PARENT_RESULTS_HEADER in headers else 0)
    name = task_name(fn)
    available_at = options.available_at(now)
    retry_backoff = float(options.retry_backoff)
    timeout = None if options.timeout is None else float(options.timeout)
    result_ttl = None if options.result_ttl is None else float(options.result_ttl)
    bound = getattr(serializer, "dumps_bound", None)
    try:
        if bound is None:  # not signing: nothing more per task than the pickling
            dumps = serializer.dumps
            payloads = [dumps((fn, args, kwargs)) for args, kwargs in calls]
        else:
            payloads = [
                bound((fn, args, kwargs), payload_binding(task_id, name, options.queue))
                for task_id, (args, kwargs) in zip(ids, calls, strict=True)
            ]
    except Exception as exc:
        raise SerializationError(
            f"cannot enqueue {name}: {_unserializable(serializer, fn, calls, exc)}"
        ) from exc
    prefix = encode_headers(headers) if headers else None
    if prefix is not None:
        payloads = [prefix + payload for payload in payloads]
    queue, priority, unique_key = options.queue, options.priority, options.unique_key
    max_retries, limit_key = options.max_retries, options.limit_key
    return [
        NewTask(
            task_id,
            queue,
            name,
            payload,
            priority,
            now,
            available_at,
            max_retries,
            retry_backoff,
            timeout,
            unique_key,
            result_ttl,
            limit_key,
        )
        for task_id, payload in zip(ids, payloads, strict=True)
    ]


def _unserializable(serializer: Serializer, fn: Any, calls: Sequence[Call], exc: Exception) -> str:
    """Name the first part of the calls that will not serialize."""
    for args, kwargs in calls:
        parts: list[tuple[str, Any]] = [(f"the callable {task_name(fn)}", fn)]
        parts += [(f"argument {i + 1}", arg) for i, arg in enumerate(args)]
        parts += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
        for label, value in parts:
            try:
                serializer.dumps(value)
            except Exception as error:
                return (
                    f"{label} ({type(value).__name__}) cannot be serialized: {error}; pass "
                    "only picklable values (no open files, sockets, locks or connections)"
                )
    # It failed once but not again: report what it said.
    return f"{type(exc).__name__}: {exc}"
